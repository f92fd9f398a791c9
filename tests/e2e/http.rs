//! Plain HTTP: on-request, host endpoints, and clear 4xx answers.

use dormouse_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_request_and_host_endpoints() {
    let server = Server::start(Options {
        parties: vec![("main", "counter"), ("chat", "chat")],
        ..Options::main("counter")
    })
    .await;
    assert_eq!(
        server.http("GET", "/_dormouse/health", "").await,
        (200, "ok\n".into())
    );
    assert_eq!(
        server.http("GET", "/parties/main/h", "").await,
        (200, "0".into())
    );
    assert_eq!(server.http("POST", "/party/h", "").await, (200, "1".into()));
    assert_eq!(
        server.http("PUT", "/parties/main/h/sub/path", "").await.0,
        405
    );
    assert_eq!(
        server.http("GET", "/parties/chat/h", "").await,
        (200, "[]".into())
    );

    let (status, body) = server.http("GET", "/parties/nope/h", "").await;
    assert_eq!(status, 404);
    assert!(body.contains("no party named \"nope\""), "{body}");
    let (status, body) = server.http("GET", "/parties/Bad!/h", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("party names"), "{body}");
    let (status, _) = server.http("GET", "/parties/main/a%2Fb", "").await;
    assert_eq!(status, 400);
    // A NUL could not be stored in a cluster's PostgreSQL: refused the same
    // way on every node.
    let (status, body) = server.http("GET", "/parties/main/a%00b", "").await;
    assert_eq!(status, 400);
    assert!(body.contains("no NUL"), "{body}");
    let (status, _) = server.http("GET", "/_dormouse/nothing", "").await;
    assert_eq!(status, 404);

    let (status, metrics) = server.http("GET", "/_dormouse/metrics", "").await;
    assert_eq!(status, 200);
    for name in [
        "dormouse_connections",
        "dormouse_rooms",
        "dormouse_wakes_total",
        "dormouse_wake_seconds_bucket",
        "dormouse_hook_seconds_bucket",
        "dormouse_messages_total",
        "dormouse_guest_traps_total",
        "dormouse_storage_commits_total",
    ] {
        assert!(metrics.contains(name), "metrics lack {name}");
    }
    assert!(server.metric("dormouse_storage_commits_total").await >= 1.0);
    server.stop().await;
}

in_each_language!(chat_keeps_history_and_names_across_hibernation: rust => "chat", ts => "chat-ts");
async fn chat_keeps_history_and_names_across_hibernation(guest: &'static str) {
    let server = Server::start(Options::main(guest).idle(50)).await;
    let mut ada = server.ws("/parties/main/lobby?name=Ada%20L").await;
    assert_eq!(
        recv_text(&mut ada).await,
        r#"{"messages":[],"type":"history"}"#
    );
    send_text(&mut ada, "hi").await;
    assert_eq!(
        recv_text(&mut ada).await,
        r#"{"seq":1,"name":"Ada L","text":"hi"}"#
    );
    server
        .wait_metric("dormouse_rooms{party=\"main\",state=\"hibernated\"}", 1.0)
        .await;
    // After a wake the name still comes from the connection's state.
    send_text(&mut ada, "again").await;
    assert_eq!(
        recv_text(&mut ada).await,
        r#"{"seq":2,"name":"Ada L","text":"again"}"#
    );
    let mut bob = server.ws("/parties/main/lobby").await;
    let history = recv_text(&mut bob).await;
    assert!(
        history.contains(r#""text":"hi""#) && history.contains(r#""text":"again""#),
        "{history}"
    );
    server.stop().await;
}

/// `metrics_listen`: a private port serves metrics and health alone; the
/// public one keeps health (for load balancers) and stops serving metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_live_on_a_private_port() {
    let config = dormouse_host::config::Config {
        data_dir: data_dir(),
        ..dormouse_host::config::Config::default()
    };
    let host = dormouse_host::host::Host::new(config).expect("host starts");
    let public = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let private = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let (pa, ma) = (
        public.local_addr().expect("addr"),
        private.local_addr().expect("addr"),
    );
    let task = tokio::spawn(dormouse_host::edge::server::run_with_metrics(
        public,
        private,
        host.clone(),
    ));
    let get = |addr, path: &'static str| async move {
        http(addr, "GET", path, "").await.expect("http request")
    };
    assert_eq!(get(pa, "/_dormouse/metrics").await.0, 404);
    assert_eq!(get(pa, "/_dormouse/health").await.0, 200);
    let (status, body) = get(ma, "/_dormouse/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("dormouse_storage_commits_total"), "{body}");
    assert_eq!(get(ma, "/_dormouse/health").await.0, 200);
    assert_eq!(get(ma, "/_dormouse/parties").await.0, 404);
    assert_eq!(get(ma, "/parties/main/x").await.0, 404);
    host.shutdown().cancel();
    let stopped = tokio::time::timeout(WAIT, task).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "server stops cleanly");
}

/// The `public` folder: GET and HEAD only, ranges, entity tags and their
/// conditional requests, and no way out of the folder or into hidden files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_files_have_ranges_validators_and_no_way_out() {
    let data = data_dir();
    let public = data.join("public");
    std::fs::create_dir_all(public.join("sub")).expect("public dir");
    std::fs::write(public.join("index.html"), "<h1>hi</h1>").expect("write");
    std::fs::write(public.join("app.js"), "0123456789").expect("write");
    std::fs::write(public.join(".env"), "SECRET").expect("write");
    std::fs::write(data.join("outside.txt"), "outside").expect("write");
    let config = dormouse_host::config::Config {
        data_dir: data.clone(),
        public: Some(public),
        ..dormouse_host::config::Config::default()
    };
    let host = dormouse_host::host::Host::new(config).expect("host starts");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(dormouse_host::edge::server::run(listener, host.clone()));
    // One request; its status line and headers (lowercased), and its body.
    let ask = |method: &str, path: &str, extra: &str| {
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\r\n");
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
            tcp.write_all(request.as_bytes()).await.expect("write");
            let mut raw = Vec::new();
            tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
                .await
                .expect("an answer in time")
                .expect("read");
            let text = String::from_utf8_lossy(&raw).into_owned();
            let (head, body) = text.split_once("\r\n\r\n").expect("a head");
            (head.to_lowercase(), body.to_owned())
        }
    };
    let (head, body) = ask("GET", "/", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert_eq!(body, "<h1>hi</h1>");
    let (head, body) = ask("HEAD", "/app.js", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 10"), "{head}");
    assert_eq!(body, "");
    let (head, body) = ask("GET", "/app.js", "Range: bytes=2-4\r\n").await;
    assert!(head.starts_with("http/1.1 206"), "{head}");
    assert!(head.contains("content-range: bytes 2-4/10"), "{head}");
    assert_eq!(body, "234");
    let (head, _) = ask("GET", "/app.js", "").await;
    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .expect("an etag")
        // The head was lowercased; a weak tag's prefix is `W/`.
        .replacen("w/", "W/", 1);
    let (head, body) = ask("GET", "/app.js", &format!("If-None-Match: {etag}\r\n")).await;
    assert!(head.starts_with("http/1.1 304"), "{head}");
    assert_eq!(body, "");
    let (head, _) = ask("GET", "/app.js", "If-None-Match: \"other\"\r\n").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let (head, _) = ask("POST", "/app.js", "Content-Length: 0\r\n").await;
    assert!(head.starts_with("http/1.1 405"), "{head}");
    for path in [
        "/.env",
        "/../outside.txt",
        "/%2e%2e/outside.txt",
        "/sub/../../outside.txt",
        "/sub/%2e%2e/%2e%2e/outside.txt",
        "/..%2foutside.txt",
    ] {
        let (head, body) = ask("GET", path, "").await;
        assert!(
            !head.starts_with("http/1.1 200")
                && !body.contains("outside")
                && !body.contains("SECRET"),
            "{path}: {head}\n{body}"
        );
    }
    host.shutdown().cancel();
    let stopped = tokio::time::timeout(WAIT, task).await;
    assert!(matches!(stopped, Ok(Ok(Ok(())))), "server stops cleanly");
}
