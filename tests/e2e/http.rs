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
