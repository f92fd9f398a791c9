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

    // Bad uploads are refused with one sentence; v2 keeps serving.
    let (status, body) = upload(&server, "main", b"hello, not wasm").await;
    assert_eq!(status, 400);
    assert!(body.contains("not WebAssembly"), "{body}");
    let core_module = b"\0asm\x01\0\0\0";
    let (status, body) = upload(&server, "main", core_module).await;
    assert_eq!(status, 400);
    assert!(body.contains("core Wasm module, not a component"), "{body}");
    let mut broken = component("counter");
    broken.truncate(broken.len() / 2);
    let (status, body) = upload(&server, "main", &broken).await;
    assert_eq!(status, 400);
    assert!(body.contains("does not compile"), "{body}");
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
