//! The relay example between several clients, text and binary, in each
//! language; and the builtin relay (`dormouse bench`'s baseline), which must
//! behave the same.

use std::time::Duration;

use dormouse_tests::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

in_each_language!(relays_text_and_binary_to_every_other_client: rust => "relay", ts => "relay-ts", py => "relay-py");
async fn relays_text_and_binary_to_every_other_client(guest: &'static str) {
    let server = Server::start(Options::main(guest)).await;
    relays(&server, "main").await;
    // `/party/:room` is `/parties/main/:room`.
    let mut alias = server.ws("/party/room-9").await;
    let mut full = server.ws("/parties/main/room-9").await;
    send_text(&mut full, "via the alias").await;
    assert_eq!(recv_text(&mut alias).await, "via the alias");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_relay_behaves_like_the_example() {
    let server = Server::start(Options {
        builtins: vec!["native"],
        ..Options::main("relay")
    })
    .await;
    relays(&server, "native").await;
    assert_eq!(
        server
            .metric("dormouse_wakes_total{party=\"native\"}")
            .await,
        0.0,
        "nothing to wake"
    );
    server.stop().await;
}

async fn relays(server: &Server, party: &str) {
    let mut a = server.ws(&format!("/parties/{party}/room-1")).await;
    let mut b = server.ws(&format!("/parties/{party}/room-1?_pk=bee")).await;
    let mut c = server.ws(&format!("/parties/{party}/room-1")).await;
    let mut elsewhere = server.ws(&format!("/parties/{party}/room-2")).await;

    send_text(&mut a, "hello").await;
    assert_eq!(recv_text(&mut b).await, "hello");
    assert_eq!(recv_text(&mut c).await, "hello");

    b.send(Message::binary(vec![0u8, 159, 146, 150]))
        .await
        .expect("send");
    assert_eq!(
        recv(&mut a).await,
        Message::binary(vec![0u8, 159, 146, 150])
    );
    assert_eq!(
        recv(&mut c).await,
        Message::binary(vec![0u8, 159, 146, 150])
    );

    // The sender never hears its own message; another room hears nothing.
    silent(&mut b, Duration::from_millis(200)).await;
    silent(&mut elsewhere, Duration::from_millis(50)).await;
    let connections = format!("dormouse_connections{{party=\"{party}\"}}");
    server.wait_metric(&connections, 4.0).await;
}

in_each_language!(closed_clients_leave_the_room: rust => "relay", ts => "relay-ts", py => "relay-py");
async fn closed_clients_leave_the_room(guest: &'static str) {
    let server = Server::start(Options::main(guest)).await;
    let mut a = server.ws("/parties/main/r").await;
    let mut b = server.ws("/parties/main/r").await;
    b.close(None).await.expect("close");
    // The close handshake is answered: the client sees a close frame back.
    assert!(matches!(recv(&mut b).await, Message::Close(_)));
    server
        .wait_metric("dormouse_connections{party=\"main\"}", 1.0)
        .await;
    send_text(&mut a, "anyone?").await;
    ping(&mut a).await.expect("a still served");
    server.stop().await;
}
