//! Crons: a party's on-cron runs once per tick, outside any room, with the
//! party's vars and calls into rooms; a tick is claimed before it runs, so
//! a second look or a restart never runs it again; the latest tick missed
//! while the host was down runs once when it starts. The clock is the test's
//! (`Host::run_due_crons`), not a minute-long sleep.

use dormouse_tests::*;

/// The leap days ahead (00:00 UTC, Unix ms): the schedules here tick on
/// them, so the host's own cron loop, on the real clock, never finds a tick
/// of theirs due while the test drives the crons with its own clock.
const LEAP_DAYS: [u64; 5] = [
    1_835_395_200_000, // 2028-02-29
    1_961_625_600_000, // 2032-02-29
    2_087_856_000_000, // 2036-02-29
    2_214_086_400_000, // 2040-02-29
    2_340_316_800_000, // 2044-02-29
];
const HOUR: u64 = 3_600_000;

/// The first of [`LEAP_DAYS`] at least a day away.
fn next_leap_day() -> usize {
    let now = dormouse_host::clock::now_ms();
    LEAP_DAYS
        .iter()
        .position(|d| *d > now + 24 * HOUR)
        .expect("a leap day ahead")
}

/// The series counting the party `main`'s cron runs with `result`.
fn runs(result: &str) -> String {
    format!("dormouse_cron_runs_total{{party=\"main\",result=\"{result}\"}}")
}

/// Room `crons` records what the probe's crons posted; the list, in order.
async fn records(server: &Server) -> Vec<String> {
    let (status, body) = server
        .http("GET", "/parties/main/crons?op=records", "")
        .await;
    assert_eq!(status, 200, "{body}");
    body.split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_runs_once_per_tick_and_a_missed_one_once_at_start() {
    let mut options = Options::main("probe");
    options.vars = vec![("K", "v1")];
    options.crons = vec![
        ("main", "leap", "0 0 29 2 *"),
        ("main", "panic", "0 12 29 2 *"),
    ];
    let server = Server::start(options).await;
    let mut logs = server.host.logs().subscribe();
    // The first leap day at least a day away, and the one two after it.
    let i = next_leap_day();
    let (first, third) = (LEAP_DAYS[i], LEAP_DAYS[i + 2]);

    // Nothing is due before the tick, however often the host looks.
    assert_eq!(server.host.run_due_crons(first - 60_000).await, 0);
    assert_eq!(server.host.run_due_crons(first - 1).await, 0);
    // At the tick `leap` runs once: it read the party's var and called a room.
    assert_eq!(server.host.run_due_crons(first + 5).await, 1);
    assert_eq!(server.host.run_due_crons(first + HOUR).await, 0);
    assert_eq!(records(&server).await, vec![format!("leap@{first}:v1")]);

    // `panic` fails: counted, its message in the party's log (`dormouse
    // tail`), and not run again for that tick.
    assert_eq!(server.host.run_due_crons(first + 12 * HOUR + 1).await, 1);
    assert_eq!(server.host.run_due_crons(first + 12 * HOUR + 2).await, 0);
    logged(&mut logs, "cron panic ran").await;
    assert_eq!(server.metric(&runs("failed")).await, 1.0);
    assert_eq!(server.metric(&runs("ok")).await, 1.0);
    let listed = server.host.crons();
    let leap = listed.iter().find(|c| c.name == "leap").expect("listed");
    assert_eq!(
        (leap.last_run_ms, leap.last_result),
        (Some(first), Some("ok"))
    );
    let panic = listed.iter().find(|c| c.name == "panic").expect("listed");
    assert_eq!(panic.last_result, Some("failed"));
    // What `dormouse crons` shows: the admin API's list.
    let (status, body) = server.admin("GET", "/_dormouse/crons", b"", None).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let leap = json
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "leap"))
        .expect("leap is listed");
    assert_eq!(leap["schedule"], "0 0 29 2 *");
    assert_eq!(leap["last_run_ms"], first);
    assert_eq!(leap["last_result"], "ok");

    // A restart: what was claimed stays claimed, and of the ticks missed
    // while the host was down (two leap days) only the latest runs, once.
    let options = server.stop().await;
    let server = Server::start(options).await;
    assert_eq!(server.host.run_due_crons(first + 12 * HOUR + 3).await, 0);
    assert_eq!(server.host.run_due_crons(third + 5).await, 1);
    assert_eq!(server.host.run_due_crons(third + 6).await, 0);
    assert_eq!(
        records(&server).await,
        vec![format!("leap@{first}:v1"), format!("leap@{third}:v1")]
    );
    server.stop().await;
}

#[test]
fn bad_cron_schedules_are_refused_at_load() {
    let text = "[parties.main]\ncomponent = \"x.wasm\"\n[[parties.main.crons]]\nname = \"n\"\nschedule = \"61 * * * *\"\n";
    let dir = data_dir();
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("dormouse.toml");
    std::fs::write(&path, text).expect("write");
    let e = dormouse_host::config::Config::load(&path).expect_err("refused");
    assert!(format!("{e:#}").contains("minute"), "{e:#}");
}

/// PartyKit's `static onCron(cron, lobby, ctx)` in a TypeScript room: run
/// once per tick, outside the room, calling into a room through
/// `lobby.parties`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_on_cron_runs_in_a_typescript_room() {
    let mut options = Options::main("surface-ts");
    options.crons = vec![("main", "leap", "0 0 29 2 *")];
    let server = Server::start(options).await;
    let first = LEAP_DAYS[next_leap_day()];
    assert_eq!(server.host.run_due_crons(first - 1).await, 0);
    assert_eq!(server.host.run_due_crons(first + 5).await, 1);
    assert_eq!(server.host.run_due_crons(first + 6).await, 0);
    let (status, body) = server.http("GET", "/parties/main/crons/records", "").await;
    assert_eq!((status, body), (200, format!("leap@{first}")));
    assert_eq!(server.metric(&runs("ok")).await, 1.0);
    server.stop().await;
}

/// A Python room's `Server.on_cron`: run once per tick; a raise is a failed
/// run whose traceback reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_cron_runs_in_a_python_room() {
    let mut options = Options::main("ticker-py");
    options.crons = vec![
        ("main", "leap", "0 0 29 2 *"),
        ("main", "raise", "0 6 29 2 *"),
    ];
    let server = Server::start(options).await;
    let mut logs = server.host.logs().subscribe();
    let first = LEAP_DAYS[next_leap_day()];
    assert_eq!(server.host.run_due_crons(first - 1).await, 0);
    assert_eq!(server.host.run_due_crons(first + 5).await, 1);
    assert_eq!(server.host.run_due_crons(first + 6 * HOUR).await, 1);
    assert_eq!(server.host.run_due_crons(first + 6 * HOUR + 1).await, 0);
    // In the order they ran: the run's own line, then the raise's.
    logged(&mut logs, &format!("cron leap at {first}")).await;
    logged(&mut logs, "the cron was asked to raise").await;
    assert_eq!(server.metric(&runs("ok")).await, 1.0);
    assert_eq!(server.metric(&runs("failed")).await, 1.0);
    server.stop().await;
}
