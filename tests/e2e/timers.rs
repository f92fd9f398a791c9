//! Timers (`timers.set`, `setTimeout` in the SDKs): a pending timer keeps
//! its room awake, in the same instance, until it fires; the room hibernates
//! when none is pending, and at the latest `timers_awake_ms` after its last
//! event that was not a timer. The TypeScript side is in `typescript.rs`;
//! Python's is the last test here.

use std::time::Duration;

use dormouse_host::config::Limits;
use dormouse_tests::*;

const HIBERNATED: &str = "dormouse_rooms{party=\"main\",state=\"hibernated\"}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_timer_keeps_the_room_awake_until_it_fires() {
    // Each timer is due well past the idle timeout: only the timer keeps
    // the instance (and the count in its memory) alive.
    let server = Server::start(Options::main("probe").idle(50)).await;
    let mut client = server.ws("/parties/main/t").await;
    send_text(&mut client, "timer:200:3").await;
    assert_eq!(recv_text(&mut client).await, "timer set");
    for n in 1..=3 {
        assert_eq!(recv_text(&mut client).await, format!("tick:{n}"));
    }
    // None pending: the room hibernates, and no tick comes after.
    server.wait_metric(HIBERNATED, 1.0).await;
    silent(&mut client, Duration::from_millis(400)).await;
    // One on-start before the ticks, one for this wake; and the last
    // on-timer's write was committed.
    send_text(&mut client, "starts").await;
    assert_eq!(recv_text(&mut client).await, "2");
    send_text(&mut client, "has:ticks").await;
    assert_eq!(recv_text(&mut client).await, "true");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_keep_a_room_awake_no_longer_than_their_cap() {
    let mut options = Options::main("probe").idle(50);
    options.limits = Limits {
        timers_awake_ms: 700,
        ..options.limits
    };
    let server = Server::start(options).await;
    let mut client = server.ws("/parties/main/t").await;
    // Every 100 ms for ever: a forgotten setInterval.
    send_text(&mut client, "timer:100:0").await;
    assert_eq!(recv_text(&mut client).await, "timer set");
    // Past the idle timeout, so the timer kept the room awake.
    assert_eq!(recv_text(&mut client).await, "tick:1");
    assert_eq!(recv_text(&mut client).await, "tick:2");
    server.wait_metric(HIBERNATED, 1.0).await;
    // The ticks that were on their way, then nothing.
    while tokio::time::timeout(Duration::from_millis(300), recv_text(&mut client))
        .await
        .is_ok()
    {}
    silent(&mut client, Duration::from_millis(400)).await;
    send_text(&mut client, "starts").await;
    assert_eq!(recv_text(&mut client).await, "2");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_timer_is_quiet_and_a_failing_one_costs_only_the_instance() {
    let server = Server::start(Options::main("probe")).await;
    let mut logs = server.host.logs().subscribe();
    let mut client = server.ws("/parties/main/t").await;
    send_text(&mut client, "timer:150:1").await;
    assert_eq!(recv_text(&mut client).await, "timer set");
    send_text(&mut client, "timer-off").await;
    assert_eq!(recv_text(&mut client).await, "timer off");
    silent(&mut client, Duration::from_millis(400)).await;

    send_text(&mut client, "timer-panic").await;
    assert_eq!(recv_text(&mut client).await, "armed");
    send_text(&mut client, "timer:20:1").await;
    assert_eq!(recv_text(&mut client).await, "timer set");
    server
        .wait_metric(
            "dormouse_guest_traps_total{party=\"main\",kind=\"trap\"}",
            1.0,
        )
        .await;
    // The panic's message reached the room's log (`dormouse tail`).
    logged(&mut logs, "on-timer was asked to panic").await;
    // Its socket is still open, and the next event makes a new instance.
    send_text(&mut client, "starts").await;
    assert_eq!(recv_text(&mut client).await, "2");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_room_keeps_its_memory_for_its_timer() {
    let server = Server::start(Options::main("ticker-py").idle(50)).await;
    let mut client = server.ws("/parties/main/t").await;
    send_text(&mut client, "tick:200:2").await;
    assert_eq!(recv_text(&mut client).await, "timer set");
    assert_eq!(recv_text(&mut client).await, "tick 1");
    assert_eq!(recv_text(&mut client).await, "tick 2");
    server.wait_metric(HIBERNATED, 1.0).await;
    send_text(&mut client, "starts").await;
    assert_eq!(recv_text(&mut client).await, "2");
    server.stop().await;
}
