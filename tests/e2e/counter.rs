//! The counter example, in each language: storage that survives
//! hibernation and a restart.

use dormouse_tests::*;

in_each_language!(count_survives_hibernation_and_restart: rust => "counter", ts => "counter-ts", py => "counter-py");
async fn count_survives_hibernation_and_restart(guest: &'static str) {
    let server = Server::start(Options::main(guest).idle(50)).await;
    let mut a = server.ws("/parties/main/c1").await;
    assert_eq!(recv_text(&mut a).await, "0");
    let mut b = server.ws("/parties/main/c1").await;
    assert_eq!(recv_text(&mut b).await, "0");
    send_text(&mut a, "inc").await;
    assert_eq!(recv_text(&mut a).await, "1");
    assert_eq!(recv_text(&mut b).await, "1");

    server
        .wait_metric("dormouse_rooms{party=\"main\",state=\"hibernated\"}", 1.0)
        .await;
    send_text(&mut b, "inc").await;
    assert_eq!(recv_text(&mut a).await, "2");
    assert_eq!(recv_text(&mut b).await, "2");

    // Restart: a new host process state on the same data dir and port.
    let options = server.stop().await;
    // The old sockets were closed with 1001 (going away).
    match recv(&mut a).await {
        tokio_tungstenite::tungstenite::Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1001)
        }
        other => panic!("expected a 1001 close, got {other:?}"),
    }
    let server = Server::start(options).await;
    assert_eq!(
        server.http("GET", "/parties/main/c1", "").await,
        (200, "2".into())
    );
    assert_eq!(
        server.http("POST", "/parties/main/c1", "").await,
        (200, "3".into())
    );
    let mut c = server.ws("/parties/main/c1").await;
    assert_eq!(recv_text(&mut c).await, "3");
    // Other rooms have their own count.
    assert_eq!(
        server.http("GET", "/parties/main/c2", "").await,
        (200, "0".into())
    );
    server.stop().await;
}

in_each_language!(http_post_is_broadcast_to_connected_clients: rust => "counter", ts => "counter-ts", py => "counter-py");
async fn http_post_is_broadcast_to_connected_clients(guest: &'static str) {
    let server = Server::start(Options::main(guest)).await;
    let mut a = server.ws("/parties/main/shared").await;
    assert_eq!(recv_text(&mut a).await, "0");
    assert_eq!(
        server.http("POST", "/parties/main/shared", "").await,
        (200, "1".into())
    );
    assert_eq!(recv_text(&mut a).await, "1");
    server.stop().await;
}
