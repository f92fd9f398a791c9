//! Races in a room's life: rooms that retire while clients connect, and
//! deploys of one party that overlap.

use std::time::Duration;

use dormouse_tests::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// Rooms that retire all the time: with idle timeout 0 every event drops the
/// instance, and a room with no connection left retires at once. Clients
/// connect, send one message, read its echo and close, across 50 rooms from
/// several tasks at once, so connects keep landing on rooms that are
/// retiring. Every echo must come back (a socket left talking to a retired
/// actor gets none), and every room must retire at the end (an actor that
/// kept a connection whose socket talks elsewhere never would).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_racing_retiring_rooms_lose_nothing() {
    const TASKS: usize = 8;
    const ROOMS: usize = 50;
    let cycles: usize = std::env::var("DORMOUSE_RETIRE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let server = Server::start(Options::main("probe").idle(0)).await;
    let addr = server.addr;
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        tasks.push(tokio::spawn(async move {
            // Each task walks the rooms in its own pseudo-random order, so
            // tasks keep meeting in the same room: one closing the room's
            // last connection while another connects.
            let mut seed = 0x9E37_79B9_u64.wrapping_mul(t as u64 + 1);
            for c in 0..cycles {
                seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                let room = (seed >> 33) as usize % ROOMS;
                let url = format!("ws://{addr}/parties/main/r{room}?_pk=t{t}c{c}");
                let (mut ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
                    .await
                    .expect("connect in time")
                    .expect("connect");
                let text = format!("hello from {t}/{c}");
                ws.send(Message::text(text.clone())).await.expect("send");
                match recv(&mut ws).await {
                    Message::Text(echo) => assert_eq!(echo.as_str(), text),
                    other => panic!("cycle {t}/{c} in room r{room}: no echo, got {other:?}"),
                }
                ws.close(None).await.expect("close");
                // Wait for the server's close answer, so the room hears on-close.
                while let Some(Ok(_)) = futures_util::StreamExt::next(&mut ws).await {}
            }
        }));
    }
    for t in tasks {
        t.await.expect("a client task failed");
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.host.live_rooms() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} rooms never retired",
            server.host.live_rooms()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.stop().await;
}
