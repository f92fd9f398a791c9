//! A guest that traps, spins or hoards memory costs only its own instance.

use std::time::Duration;

use dormouse::config::Limits;
use dormouse_tests::*;

fn options() -> Options {
    Options {
        parties: vec![("main", "probe"), ("relay", "relay")],
        limits: Limits {
            hook_cpu_ms: 300,
            instance_memory_bytes: 32 << 20,
            awake_rooms: 50,
            ..Limits::default()
        },
        ..Options::main("probe")
    }
}

async fn misbehave(command: &str, kind: &str) {
    let server = Server::start(options()).await;
    let mut bad = server.ws("/parties/main/bad").await;
    let mut n1 = server.ws("/parties/relay/neighbour").await;
    let mut n2 = server.ws("/parties/relay/neighbour").await;
    send_text(&mut bad, "starts").await;
    assert_eq!(recv_text(&mut bad).await, "1");

    send_text(&mut bad, command).await;
    // The neighbour room keeps relaying while the bad room misbehaves.
    for i in 0..5 {
        send_text(&mut n1, &format!("n{i}")).await;
        assert_eq!(recv_text(&mut n2).await, format!("n{i}"));
    }
    let series = format!("dormouse_guest_traps_total{{party=\"main\",kind=\"{kind}\"}}");
    server.wait_metric(&series, 1.0).await;

    // The bad room's socket is still open, and its next event gets a fresh
    // instance (on-start ran again).
    ping(&mut bad).await.expect("socket kept");
    send_text(&mut bad, "starts").await;
    assert_eq!(recv_text(&mut bad).await, "2");
    silent(&mut n2, Duration::from_millis(50)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_drops_only_that_instance() {
    misbehave("panic", "trap").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_hits_the_deadline() {
    misbehave("loop", "deadline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_hits_the_cap() {
    misbehave("grow", "memory").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_awake_limit_the_least_recent_room_hibernates_early() {
    let server = Server::start(Options {
        limits: Limits {
            awake_rooms: 2,
            ..Limits::default()
        },
        ..Options::main("relay")
    })
    .await;
    // Three rooms, two slots, a long idle timeout: every wake past the
    // second must push another room to hibernate, and no message is lost.
    let mut rooms = Vec::new();
    for r in 0..3 {
        let a = server.ws(&format!("/parties/main/slot-{r}")).await;
        let b = server.ws(&format!("/parties/main/slot-{r}")).await;
        rooms.push((a, b));
    }
    for round in 0..4 {
        for (a, b) in rooms.iter_mut() {
            let text = format!("round {round}");
            send_text(a, &text).await;
            assert_eq!(recv_text(b).await, text);
        }
    }
    assert!(
        server
            .metric("dormouse_rooms{party=\"main\",state=\"awake\"}")
            .await
            <= 2.0
    );
    let instantiate = "dormouse_guest_traps_total{party=\"main\",kind=\"instantiate\"}";
    assert_eq!(server.metric(instantiate).await, 0.0);
    server.stop().await;
}
