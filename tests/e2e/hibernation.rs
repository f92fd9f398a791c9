//! Hibernation: the instance goes, the sockets stay, the next event wakes it.

use std::time::Duration;

use dormouse_tests::*;

const HIBERNATED: &str = "dormouse_rooms{party=\"main\",state=\"hibernated\"}";
const AWAKE: &str = "dormouse_rooms{party=\"main\",state=\"awake\"}";
const WAKES: &str = "dormouse_wakes_total{party=\"main\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_room_hibernates_and_wakes_without_clients_noticing() {
    let server = Server::start(Options::main("relay").idle(100)).await;
    let mut a = server.ws("/parties/main/sleepy").await;
    let mut b = server.ws("/parties/main/sleepy").await;
    send_text(&mut a, "before").await;
    assert_eq!(recv_text(&mut b).await, "before");

    server.wait_metric(HIBERNATED, 1.0).await;
    server.wait_metric(AWAKE, 0.0).await;
    let wakes = server.metric(WAKES).await;

    // Both clients are still connected and served while it sleeps, and a
    // ping (answered by the host) does not wake the room.
    ping(&mut a).await.expect("a open");
    ping(&mut b).await.expect("b open");
    assert_eq!(server.metric(WAKES).await, wakes);
    assert_eq!(server.metric(HIBERNATED).await, 1.0);

    send_text(&mut b, "after").await;
    assert_eq!(recv_text(&mut a).await, "after");
    assert_eq!(server.metric(WAKES).await, wakes + 1.0);
    server.wait_metric(HIBERNATED, 1.0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_start_runs_again_after_every_wake() {
    let server = Server::start(Options::main("probe").idle(100)).await;
    let mut a = server.ws("/parties/main/starts").await;
    send_text(&mut a, "starts").await;
    assert_eq!(recv_text(&mut a).await, "1");
    send_text(&mut a, "starts").await;
    assert_eq!(recv_text(&mut a).await, "1", "no wake while awake");
    server.wait_metric(HIBERNATED, 1.0).await;
    send_text(&mut a, "starts").await;
    assert_eq!(recv_text(&mut a).await, "2");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_zero_hibernates_after_every_event() {
    let server = Server::start(Options::main("probe").idle(0)).await;
    let mut a = server.ws("/parties/main/z").await;
    for expected in 1..=3 {
        send_text(&mut a, "starts").await;
        // Each message woke a fresh instance, whose on-start counted itself.
        assert_eq!(recv_text(&mut a).await, (expected + 1).to_string());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_state_survives_hibernation() {
    let server = Server::start(Options::main("probe").idle(50)).await;
    let mut a = server.ws("/parties/main/stateful").await;
    let mut b = server.ws("/parties/main/stateful").await;
    send_text(&mut a, "state=alice").await;
    assert_eq!(recv_text(&mut a).await, "ok");
    send_text(&mut b, "state=bob").await;
    assert_eq!(recv_text(&mut b).await, "ok");
    server.wait_metric(HIBERNATED, 1.0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    send_text(&mut a, "state?").await;
    assert_eq!(recv_text(&mut a).await, "alice");
    send_text(&mut b, "state?").await;
    assert_eq!(recv_text(&mut b).await, "bob");

    // Over the 16 KiB limit: refused with a WIT error, the old state kept.
    let big = format!("state={}", "x".repeat(17 << 10));
    send_text(&mut a, &big).await;
    let refusal = recv_text(&mut a).await;
    assert!(
        refusal.contains("TooLarge") && refusal.contains("16384"),
        "{refusal}"
    );
    send_text(&mut a, "state?").await;
    assert_eq!(recv_text(&mut a).await, "alice");
    server.stop().await;
}

/// Past `awake_rooms`, a wake waits for the least recently used room to
/// hibernate and takes its slot: every room answers, no more than the pool
/// holds are awake at once, and each wait is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_awake_room_limit_wakes_wait_for_a_slot() {
    let mut options = Options::main("probe");
    options.limits.awake_rooms = 2;
    let server = Server::start(options).await;
    let mut clients = Vec::new();
    for round in 0..2 {
        for r in 0..5 {
            if round == 0 {
                clients.push(server.ws(&format!("/parties/main/pool-{r}")).await);
            }
            let c = &mut clients[r];
            send_text(c, "whoami").await;
            assert_eq!(recv_text(c).await, format!("main/pool-{r}"));
            let awake = server
                .metric("dormouse_rooms{party=\"main\",state=\"awake\"}")
                .await;
            assert!(awake <= 2.0, "{awake} rooms awake with a pool of 2");
        }
    }
    let waits = server.metric("dormouse_pool_full_waits_total").await;
    assert!(
        waits >= 8.0,
        "{waits} waits counted for 10 wakes past the pool"
    );
    server.stop().await;
}

/// The lobby's one-call instance takes a slot like a wake: with every slot
/// busy, a first request waits for one (it used to get 503 at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lobby_call_waits_for_a_slot_like_a_wake() {
    let mut options = Options::main("probe");
    options.limits.awake_rooms = 1;
    options.limits.hook_cpu_ms = 20_000;
    let server = Server::start(options).await;
    // b's connect asks the lobby once (a Rust room answers `none`); then b
    // holds the only slot for 3 s.
    let mut b = server.ws("/parties/main/b").await;
    send_text(&mut b, "bulk:1:3000").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The first request of the party asks the lobby again (another hook).
    let (status, body) = server.http("GET", "/parties/main/a", "").await;
    assert_eq!((status, body.trim()), (200, "probe main/a"));
    assert_eq!(recv_text(&mut b).await, "b");
    assert!(server.metric("dormouse_pool_full_waits_total").await >= 1.0);
    server.stop().await;
}
