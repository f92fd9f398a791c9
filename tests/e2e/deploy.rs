//! Deploys through the admin API: no connection dropped, bad uploads
//! refused, rollback, restarts without compiling, tokens enforced.

use std::time::Instant;

use dormouse_tests::*;

const TOKEN: &str = "ci:s3cret";

fn options() -> Options {
    Options {
        parties: Vec::new(),
        admin_token: Some(TOKEN.into()),
        ..Options::main("counter")
    }
}

fn component(guest_name: &str) -> Vec<u8> {
    std::fs::read(guest(guest_name)).expect("component built")
}

async fn upload(server: &Server, party: &str, bytes: &[u8]) -> (u16, String) {
    server
        .admin(
            "PUT",
            &format!("/_dormouse/parties/{party}"),
            bytes,
            Some(TOKEN),
        )
        .await
}

/// `inc` in each room from its first client; every client of the room must
/// see `want` next (a close instead fails the test).
async fn inc_everywhere(rooms: &mut [Vec<Client>], want: &str) {
    for clients in rooms.iter_mut() {
        send_text(&mut clients[0], "inc").await;
        for c in clients.iter_mut() {
            assert_eq!(recv_text(c).await, want);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_drops_no_connection_and_v2_takes_over() {
    let server = Server::start(options()).await;
    let (status, body) = upload(&server, "main", &component("counter")).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\": 1"), "{body}");

    // 200 clients in 20 rooms.
    let mut rooms: Vec<Vec<Client>> = Vec::new();
    for r in 0..20 {
        let mut clients = Vec::new();
        for _ in 0..10 {
            let mut c = server.ws(&format!("/parties/main/room-{r}")).await;
            assert_eq!(recv_text(&mut c).await, "0");
            clients.push(c);
        }
        rooms.push(clients);
    }
    inc_everywhere(&mut rooms, "1").await;

    let (status, body) = upload(&server, "main", &component("counter-ten")).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"version\": 2") && body.contains("\"rooms\": 20"),
        "{body}"
    );
    // Handled by v2 (adds 10), on the storage v1 left.
    inc_everywhere(&mut rooms, "11").await;
    server
        .wait_metric("dormouse_connections{party=\"main\"}", 200.0)
        .await;

    inc_everywhere(&mut rooms, "21").await;

    // Tokens: none or a wrong one is refused, and nothing changes.
    let bytes = component("counter");
    let (status, _) = server
        .admin("PUT", "/_dormouse/parties/main", &bytes, None)
        .await;
    assert_eq!(status, 401);
    let (status, _) = server
        .admin("PUT", "/_dormouse/parties/main", &bytes, Some("ci:wrong"))
        .await;
    assert_eq!(status, 401);
    let (status, _) = server.admin("GET", "/_dormouse/parties", b"", None).await;
    assert_eq!(status, 401);
    inc_everywhere(&mut rooms, "31").await;

    // Rollback to v1: the next wake runs it.
    let (status, body) = server
        .admin("POST", "/_dormouse/parties/main/rollback", b"", Some(TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"version\": 1"), "{body}");
    inc_everywhere(&mut rooms, "32").await;

    let (_, parties) = server
        .admin("GET", "/_dormouse/parties", b"", Some(TOKEN))
        .await;
    assert!(
        parties.contains("\"active\": 1") && parties.contains("\"token\": \"ci\""),
        "{parties}"
    );
    let (_, listed) = server
        .admin("GET", "/_dormouse/rooms", b"", Some(TOKEN))
        .await;
    assert_eq!(
        listed.matches("\"party\": \"main\"").count(),
        20,
        "{listed}"
    );
    assert!(listed.contains("\"connections\": 10"), "{listed}");

    // A restart serves the deployed version from the precompiled cache.
    drop(rooms);
    let options = server.stop().await;
    let started = Instant::now();
    let server = Server::start(options).await;
    eprintln!("restart with 1 deployed party took {:?}", started.elapsed());
    assert_eq!(
        server
            .metric("dormouse_component_cache_total{result=\"hit\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("dormouse_component_cache_total{result=\"miss\"}")
            .await,
        0.0
    );
    assert_eq!(
        server.http("GET", "/parties/main/room-3", "").await,
        (200, "32".into())
    );
    assert_eq!(
        server.http("POST", "/parties/main/room-3", "").await,
        (200, "33".into())
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_party_closes_its_rooms() {
    let server = Server::start(options()).await;
    assert_eq!(
        upload(&server, "doomed", &component("counter")).await.0,
        200
    );
    let mut c = server.ws("/parties/doomed/r").await;
    assert_eq!(recv_text(&mut c).await, "0");
    let (status, _) = server
        .admin("DELETE", "/_dormouse/parties/doomed", b"", Some(TOKEN))
        .await;
    assert_eq!(status, 200);
    match recv(&mut c).await {
        tokio_tungstenite::tungstenite::Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1001)
        }
        other => panic!("expected a close, got {other:?}"),
    }
    assert_eq!(server.http("GET", "/parties/doomed/r", "").await.0, 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_in_one_sentence_and_the_old_version_serves_on() {
    let server = Server::start(options()).await;
    let (status, body) = upload(&server, "main", &component("counter")).await;
    assert_eq!(status, 200, "{body}");
    let mut rooms = vec![vec![server.ws("/parties/main/steady").await]];
    assert_eq!(recv_text(&mut rooms[0][0]).await, "0");

    let wat = |text: &str| wat::parse_str(text).expect("valid text format");
    let mut truncated = component("counter");
    truncated.truncate(truncated.len() / 2);
    let cases: [(&str, Vec<u8>, &str); 6] = [
        ("empty", Vec::new(), "the file is not WebAssembly"),
        (
            "text",
            b"hello, not wasm".to_vec(),
            "the file is not WebAssembly",
        ),
        (
            "core module",
            wat("(module)"),
            "a core Wasm module, not a component",
        ),
        ("truncated", truncated, "the component is malformed"),
        (
            "wrong world",
            wat("(component)"),
            "the component does not export dormouse:room/hooks@0.1.0",
        ),
        (
            "unknown import",
            wat(r#"(component (import "acme:rocket/launch" (instance (export "fire" (func)))))"#),
            "the component imports acme:rocket/launch, which the host does not give",
        ),
    ];
    for (n, (case, bytes, want)) in cases.into_iter().enumerate() {
        let (status, body) = upload(&server, "main", &bytes).await;
        assert_eq!(status, 400, "{case}: {body}");
        assert!(body.contains(want), "{case}: {body}");
        assert_eq!(
            body.trim_end().lines().count(),
            1,
            "{case}: one line: {body}"
        );
        // Version 1 still serves, on the same socket.
        inc_everywhere(&mut rooms, &(n + 1).to_string()).await;
    }
    let (_, body) = upload(
        &server,
        "main",
        &wat(r#"(component (import "acme:rocket/launch" (instance (export "fire" (func)))))"#),
    )
    .await;
    assert!(
        body.contains("acme:rocket/launch"),
        "the refusal names the import: {body}"
    );
    let (_, parties) = server
        .admin("GET", "/_dormouse/parties", b"", Some(TOKEN))
        .await;
    assert!(parties.contains("\"active\": 1"), "{parties}");
    server.stop().await;
}

/// One party's entry in `/_dormouse/parties`.
async fn listed(server: &Server, party: &str) -> serde_json::Value {
    let (status, body) = server
        .admin("GET", "/_dormouse/parties", b"", Some(TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    let parties: serde_json::Value = serde_json::from_str(&body).expect("json");
    parties
        .as_array()
        .expect("a list")
        .iter()
        .find(|p| p["party"] == party)
        .expect("the party is listed")
        .clone()
}

/// The active version, per `/_dormouse/parties`.
async fn active_version(server: &Server, party: &str) -> (u64, String) {
    let p = listed(server, party).await;
    let active = p["active"].as_u64().expect("an active version");
    let hash = p["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .find(|v| v["version"] == active)
        .expect("the active version is listed")["hash"]
        .as_str()
        .expect("a hash")
        .to_owned();
    (active, hash)
}

/// What one POST adds in a fresh room: 1 (counter) or 10 (counter-ten).
async fn step(server: &Server, room: &str) -> u64 {
    let path = format!("/parties/main/{room}");
    let (status, body) = server.http("POST", &path, "").await;
    assert_eq!(status, 200, "{body}");
    body.trim().parse().expect("a count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_and_rollbacks_leave_storage_and_serving_agreeing() {
    let server = Server::start(options()).await;
    let (one, ten) = (component("counter"), component("counter-ten"));
    let hash_of = |bytes: &[u8]| dormouse_host::host::deploys::versions::hash(bytes);
    let steps = |hash: &str| if hash == hash_of(&ten) { 10 } else { 1 };
    assert_eq!(upload(&server, "main", &one).await.0, 200);
    for round in 0..6 {
        // Two uploads and a rollback at once; whichever lands last must be
        // both the active version in storage and the one that serves.
        let (a, b, c) = tokio::join!(
            upload(&server, "main", &one),
            upload(&server, "main", &ten),
            server.admin("POST", "/_dormouse/parties/main/rollback", b"", Some(TOKEN)),
        );
        assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
        assert!(c.0 == 200 || c.0 == 400, "{c:?}");
        let (version, hash) = active_version(&server, "main").await;
        assert_eq!(
            step(&server, &format!("round-{round}")).await,
            steps(&hash),
            "round {round}: version {version} is active but another serves"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_party_leaves_nothing_behind() {
    let server = Server::start(options()).await;
    let probe = component("probe");
    assert_eq!(upload(&server, "gone", &probe).await.0, 200);
    let mut c = server.ws("/parties/gone/r").await;
    send_text(&mut c, "starts").await;
    assert_eq!(recv_text(&mut c).await, "1");
    let (status, _) = server
        .http("GET", "/parties/gone/r?op=alarm&in_ms=600000", "")
        .await;
    assert_eq!(status, 202);
    assert_eq!(server.host.alarms().len(), 1);
    let versions = server.options.data_dir.join("versions");
    let files = || std::fs::read_dir(&versions).expect("versions dir").count();
    // The component (its precompiled form is in the tests' shared compile
    // cache, which a delete leaves alone).
    assert!(files() >= 1, "the component is kept");

    let (status, body) = server
        .admin("DELETE", "/_dormouse/parties/gone", b"", Some(TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        matches!(recv(&mut c).await, tokio_tungstenite::tungstenite::Message::Close(Some(f)) if u16::from(f.code) == 1001)
    );
    assert_eq!(server.host.alarms().len(), 0, "the alarm index forgot it");
    assert_eq!(files(), 0, "the version files are gone");
    assert_eq!(server.host.live_rooms(), 0);
    let (status, _) = server
        .admin("DELETE", "/_dormouse/parties/gone", b"", Some(TOKEN))
        .await;
    assert_eq!(status, 404);

    // The same name deployed again starts empty.
    assert_eq!(upload(&server, "gone", &probe).await.0, 200);
    let mut c = server.ws("/parties/gone/r").await;
    send_text(&mut c, "starts").await;
    assert_eq!(recv_text(&mut c).await, "1");
    let (_, state) = server
        .http("GET", "/parties/gone/r?op=alarm-state", "")
        .await;
    assert_eq!(state.trim(), "ok=none at=none");
    let (_, listed) = server
        .admin("GET", "/_dormouse/parties", b"", Some(TOKEN))
        .await;
    assert!(
        listed.contains("\"active\": 1"),
        "versions start again: {listed}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_version_file_costs_that_version_not_the_host() {
    let server = Server::start(options()).await;
    let (one, ten) = (component("counter"), component("counter-ten"));
    assert_eq!(upload(&server, "main", &one).await.0, 200);
    assert_eq!(upload(&server, "main", &ten).await.0, 200);
    assert_eq!(upload(&server, "other", &component("probe")).await.0, 200);
    assert_eq!(step(&server, "before").await, 10);
    let options = server.stop().await;

    tear_version(&options.data_dir, &ten);
    let server = Server::start(options).await;
    let (status, body) = server.http("GET", "/parties/other/r", "").await;
    assert_eq!(
        (status, body.trim()),
        (200, "probe other/r"),
        "the other party serves"
    );
    assert_eq!(step(&server, "after").await, 1, "main serves version 1");
    let main = listed(&server, "main").await;
    assert_eq!(
        (&main["active"], &main["serving"]),
        (&serde_json::json!(2), &serde_json::json!(1)),
        "the listing tells the active version from the one serving"
    );
    server.stop().await;
}

/// A web page of another origin can neither upload room code nor read
/// anything under `/_dormouse/`, even on loopback with no token set (a
/// browser sends a cross-site `text/plain` POST without a preflight).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_web_page_of_another_origin_reaches_no_admin_endpoint() {
    let server = Server::start(Options::main("counter")).await;
    let other = component("relay");
    let mut request = format!(
        "POST /_dormouse/parties/main HTTP/1.1\r\nHost: {}\r\nOrigin: http://evil.example\r\n\
         Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        server.addr,
        other.len()
    )
    .into_bytes();
    request.extend_from_slice(&other);
    let (status, body) = raw_http(server.addr, &request).await.expect("an answer");
    assert_eq!(status, 403, "{body}");
    let read = format!(
        "GET /_dormouse/logs HTTP/1.1\r\nHost: evil.example:{}\r\nOrigin: http://evil.example:{}\r\n\
         Connection: close\r\n\r\n",
        server.addr.port(),
        server.addr.port()
    );
    let (status, _) = raw_http(server.addr, read.as_bytes())
        .await
        .expect("an answer");
    assert_eq!(status, 403);
    // The counter still counts: nothing was replaced.
    let mut a = server.ws("/parties/main/c").await;
    assert_eq!(recv_text(&mut a).await, "0");
    server.stop().await;
}

/// Past `versions_kept`, an upload forgets the party's oldest version: its
/// row, and its file once no version uses it. Rollback reaches only the
/// kept ones, and they still serve after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_forgets_versions_past_the_bound() {
    let server = Server::start(Options {
        versions_kept: 2,
        ..options()
    })
    .await;
    let (one, ten, probe) = (
        component("counter"),
        component("counter-ten"),
        component("probe"),
    );
    for bytes in [&one, &ten, &probe] {
        assert_eq!(upload(&server, "main", bytes).await.0, 200);
    }
    let files = |dir: &std::path::Path, bytes: &[u8]| {
        let hash = dormouse_host::host::deploys::versions::hash(bytes);
        std::fs::read_dir(dir)
            .expect("versions dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&hash))
            .count()
    };
    let versions = server.options.data_dir.join("versions");
    assert_eq!(files(&versions, &one), 0, "version 1's files are gone");
    assert!(files(&versions, &ten) > 0 && files(&versions, &probe) > 0);
    let rollback = "/_dormouse/parties/main/rollback?version=";
    let (status, body) = server
        .admin("POST", &format!("{rollback}1"), b"", Some(TOKEN))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = server
        .admin("POST", &format!("{rollback}2"), b"", Some(TOKEN))
        .await;
    assert_eq!(status, 200, "{body}");
    let options = server.stop().await;
    let server = Server::start(options).await;
    assert_eq!(step(&server, "kept").await, 10, "version 2 serves");
    server.stop().await;
}
