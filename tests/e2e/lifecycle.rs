//! Close and error delivery, auto-responses, refusals before the upgrade,
//! vars, and calls between rooms.

use std::time::Duration;

use dormouse_tests::*;
use tokio_tungstenite::tungstenite;

const HIBERNATED: &str = "dormouse_rooms{party=\"main\",state=\"hibernated\"}";
const WAKES: &str = "dormouse_wakes_total{party=\"main\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_tcp_connection_reaches_on_close_in_a_hibernated_room() {
    let server = Server::start(Options::main("probe").idle(50)).await;
    let mut a = server.ws("/parties/main/cut?_pk=a").await;
    let mut b = server.ws("/parties/main/cut?_pk=b").await;
    send_text(&mut a, "list").await;
    assert_eq!(recv_text(&mut a).await, "a,b");
    server.wait_metric(HIBERNATED, 1.0).await;
    let wakes = server.metric(WAKES).await;

    // Drop the TCP connection without a close frame.
    drop(a);
    server.wait_metric(WAKES, wakes + 1.0).await;
    send_text(&mut b, "last-close").await;
    assert_eq!(recv_text(&mut b).await, "a:1006:false");
    send_text(&mut b, "list").await;
    assert_eq!(recv_text(&mut b).await, "b");

    // And again after another hibernation: no ghost connection.
    server.wait_metric(HIBERNATED, 1.0).await;
    send_text(&mut b, "list").await;
    assert_eq!(recv_text(&mut b).await, "b");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_half_open_client_is_timed_out() {
    let server = Server::start(Options {
        ping_interval_ms: 100,
        ..Options::main("probe")
    })
    .await;
    let mut b = server.ws("/parties/main/half?_pk=b").await;
    // `a` completes the handshake, then never reads: it never answers a ping.
    let silent_client = server.ws("/parties/main/half?_pk=a").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        send_text(&mut b, "list").await;
        if recv_text(&mut b).await == "b" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a was never timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_text(&mut b, "last-close").await;
    assert_eq!(recv_text(&mut b).await, "a:1006:false");
    drop(silent_client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_response_is_answered_without_waking_the_room() {
    let server = Server::start(Options::main("probe").idle(50)).await;
    let mut a = server.ws("/parties/main/auto").await;
    let mut b = server.ws("/parties/main/auto").await;
    send_text(&mut a, "auto=ping>pong").await;
    assert_eq!(recv_text(&mut a).await, "ok");
    server.wait_metric(HIBERNATED, 1.0).await;
    let wakes = server.metric(WAKES).await;
    for _ in 0..20 {
        send_text(&mut a, "ping").await;
        assert_eq!(recv_text(&mut a).await, "pong");
    }
    // Every connection of the room gets the same answer.
    send_text(&mut b, "ping").await;
    assert_eq!(recv_text(&mut b).await, "pong");
    assert_eq!(server.metric(WAKES).await, wakes);
    // Anything else still reaches (and wakes) the room.
    send_text(&mut a, "pingx").await;
    assert_eq!(recv_text(&mut a).await, "pingx");
    assert_eq!(server.metric(WAKES).await, wakes + 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_connect_refuses_with_an_http_401_and_tags_at_connect() {
    let server = Server::start(Options::main("probe")).await;
    let url = format!("ws://{}/parties/main/door?reject=1", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401);
            let body = response.body().clone().unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&body), "go away");
        }
        other => panic!("expected an HTTP 401, got {other:?}"),
    }
    let mut admin = server.ws("/parties/main/door?_pk=ann&tag=admin").await;
    let _guest = server.ws("/parties/main/door?_pk=gus").await;
    send_text(&mut admin, "list:admin").await;
    assert_eq!(recv_text(&mut admin).await, "ann");
    send_text(&mut admin, "list").await;
    assert_eq!(recv_text(&mut admin).await, "ann,gus");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_know_their_party_id_and_vars() {
    let server = Server::start(Options {
        parties: vec![("main", "probe"), ("second", "probe")],
        vars: vec![("GREETING", "hello")],
        ..Options::main("probe")
    })
    .await;
    let mut a = server.ws("/parties/second/room%20one").await;
    send_text(&mut a, "whoami").await;
    assert_eq!(recv_text(&mut a).await, "second/room one");
    send_text(&mut a, "var:GREETING").await;
    assert_eq!(recv_text(&mut a).await, "hello");
    send_text(&mut a, "var:NOPE").await;
    assert_eq!(recv_text(&mut a).await, "none");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_calls_another_and_a_cycle_fails_instead_of_deadlocking() {
    let server = Server::start(Options {
        parties: vec![("main", "probe"), ("other", "probe")],
        ..Options::main("probe")
    })
    .await;
    assert_eq!(
        server
            .http("GET", "/parties/main/a?op=call&party=other&room=b", "")
            .await,
        (200, "probe other/b".into())
    );
    // a -> b -> a: b's call back into a is refused, and a answers with that.
    let (status, body) = server
        .http(
            "GET",
            "/parties/main/a?op=call&party=other&room=b&next=main%2Fa",
            "",
        )
        .await;
    assert_eq!(status, 508, "{body}");
    assert!(
        body.contains("deadlock: main/a -> other/b -> main/a"),
        "{body}"
    );
    // Both rooms still serve.
    assert_eq!(server.http("GET", "/parties/other/b", "").await.0, 200);
    assert_eq!(server.http("GET", "/parties/main/a", "").await.0, 200);
    server.stop().await;
}
