//! Alarms: durable across restarts, delivered into hibernated and empty
//! rooms, retried with backoff when on-alarm traps.

use std::time::Duration;

use dormouse_host::config::Limits;
use dormouse_tests::*;

/// Poll an HTTP GET until its body is `want`.
async fn wait_body(server: &Server, path: &str, want: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (_, body) = server.http("GET", path, "").await;
        if body == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} stayed {body:?}, wanted {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_survives_a_restart_and_fires_once_into_a_hibernated_room() {
    let server = Server::start(Options::main("alarm-clock").idle(50)).await;
    // Far enough ahead that a stop and a start on a loaded machine come
    // first: the client must be connected when it rings.
    let (status, _) = server
        .http("POST", "/parties/main/kitchen?in_ms=3000", "")
        .await;
    assert_eq!(status, 202);
    // Stopped (as SIGTERM does) before the alarm is due.
    let options = server.stop().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = Server::start(options).await;
    let mut client = server.ws("/parties/main/kitchen").await;
    server
        .wait_metric("dormouse_rooms{party=\"main\",state=\"hibernated\"}", 1.0)
        .await;
    assert_eq!(recv_text(&mut client).await, "ring");
    assert_eq!(
        server.http("GET", "/parties/main/kitchen", "").await,
        (200, "1".into())
    );
    // Once: no second ring.
    silent(&mut client, Duration::from_millis(700)).await;
    assert_eq!(
        server.http("GET", "/parties/main/kitchen", "").await,
        (200, "1".into())
    );
    assert!(server.host.alarms().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alarm_fires_in_a_room_with_no_connections() {
    let server = Server::start(Options::main("alarm-clock").idle(50)).await;
    let (status, _) = server
        .http("POST", "/parties/main/empty?in_ms=500", "")
        .await;
    assert_eq!(status, 202);
    // The room retires once it has no connections and no instance.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.host.live_rooms() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the room did not retire"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wakes = "dormouse_wakes_total{party=\"main\"}";
    server.wait_metric(wakes, 2.0).await;
    wait_body(&server, "/parties/main/empty", "1").await;
    server.stop().await;
}

fn retry_options() -> Options {
    Options {
        limits: Limits {
            alarm_retry_ms: 50,
            awake_rooms: 50,
            ..Limits::default()
        },
        ..Options::main("probe").idle(50)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trapping_on_alarm_is_retried_with_its_retry_count() {
    let server = Server::start(retry_options()).await;
    let (status, _) = server
        .http("POST", "/parties/main/r?op=alarm&in_ms=0&fail=3", "")
        .await;
    assert_eq!(status, 202);
    // Attempts 0, 1 and 2 trap; attempt 3 succeeds and clears the alarm.
    wait_body(&server, "/parties/main/r?op=alarm-state", "ok=3 at=none").await;
    let traps = "dormouse_guest_traps_total{party=\"main\",kind=\"trap\"}";
    assert_eq!(server.metric(traps).await, 3.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_that_always_traps_is_dropped_after_six_retries() {
    let server = Server::start(retry_options()).await;
    let (status, _) = server
        .http("POST", "/parties/main/r?op=alarm&in_ms=0&fail=100", "")
        .await;
    assert_eq!(status, 202);
    let traps = "dormouse_guest_traps_total{party=\"main\",kind=\"trap\"}";
    // 50 + 100 + ... + 1600 ms of backoff: the first try and six retries.
    server.wait_metric(traps, 7.0).await;
    wait_body(&server, "/parties/main/r?op=alarm-state", "ok=none at=none").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.metric(traps).await, 7.0);
    assert!(server.host.alarms().is_empty());
    server.stop().await;
}

/// An alarm that falls due while its party is left out of the config (one
/// restart without it) is the host's failure, not the guest's: it waits,
/// spending none of the six retries, and rings once the party is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_outlives_a_restart_without_its_party() {
    let mut options = Options::main("alarm-clock").idle(50);
    // Six retries of the guest's would be spent in 1.3 s.
    options.limits.alarm_retry_ms = 20;
    let server = Server::start(options).await;
    let (status, _) = server
        .http("POST", "/parties/main/kitchen?in_ms=200", "")
        .await;
    assert_eq!(status, 202);
    let mut options = server.stop().await;
    let parties = std::mem::replace(&mut options.parties, vec![("other", "probe")]);
    let server = Server::start(options).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.host.alarms().len(), 1, "the alarm is still there");
    let mut options = server.stop().await;
    options.parties = parties;
    let server = Server::start(options).await;
    wait_body(&server, "/parties/main/kitchen", "1").await;
    server.stop().await;
}

/// An alarm whose party's only deployed version is found torn at a start
/// (a crash mid-write, a disk fault) waits for the party, spending no retry,
/// and rings once a restart finds the file whole again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_outlives_a_torn_component_file() {
    let token = "alarm-token";
    let mut options = Options {
        parties: Vec::new(),
        admin_token: Some(token.into()),
        ..Options::main("alarm-clock").idle(50)
    };
    options.limits.alarm_retry_ms = 20;
    let server = Server::start(options).await;
    let bytes = std::fs::read(guest("alarm-clock")).expect("component built");
    let (status, body) = server
        .admin("PUT", "/_dormouse/parties/clock", &bytes, Some(token))
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = server
        .http("POST", "/parties/clock/kitchen?in_ms=300", "")
        .await;
    assert_eq!(status, 202);
    let options = server.stop().await;
    tear_version(&options.data_dir, &bytes);
    let server = Server::start(options).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.host.alarms().len(), 1, "the alarm is still there");
    let options = server.stop().await;
    let hash = dormouse_host::host::deploys::versions::hash(&bytes);
    let file = options
        .data_dir
        .join("versions")
        .join(format!("{hash}.wasm"));
    std::fs::write(file, &bytes).expect("mend");
    let server = Server::start(options).await;
    wait_body(&server, "/parties/clock/kitchen", "1").await;
    server.stop().await;
}

/// An alarm that falls due while every awake-room slot is busy (a long hook
/// in the only slot) fails to wake for the host's reason: it spends no
/// retry, and rings as a first try once the slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alarm_waits_out_a_full_pool_without_spending_a_retry() {
    let mut options = retry_options();
    options.limits.awake_rooms = 1;
    options.limits.alarm_retry_ms = 20;
    options.limits.hook_cpu_ms = 20_000;
    let server = Server::start(options).await;
    let (status, _) = server
        .http("POST", "/parties/main/b?op=alarm&in_ms=1000&fail=0", "")
        .await;
    assert_eq!(status, 202);
    // b hibernates (idle 50 ms), so a's connect finds the slot free.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Room a takes the only slot and works for 8 s: longer than a wake
    // waits for a slot (5 s), so b's first wake fails.
    let mut a = server.ws("/parties/main/a").await;
    send_text(&mut a, "bulk:1:8000").await;
    let waits = "dormouse_pool_full_waits_total";
    server.wait_metric(waits, 1.0).await;
    assert_eq!(recv_text(&mut a).await, "b");
    // The success's retry count is 0: the pool's failure spent none.
    wait_body(&server, "/parties/main/b?op=alarm-state", "ok=0 at=none").await;
    server.stop().await;
}
