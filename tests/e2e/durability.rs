//! Nothing acknowledged is lost: a host killed with SIGKILL under load comes
//! back with every count any client ever saw (the output gate at work).
//!
//! The host runs in a child process, so it can really be killed: the child
//! is this test binary re-run on the ignored test `serve_until_killed`,
//! which serves the counter through `dormouse_host::edge::server::run`, the same
//! library call `dormouse serve` makes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dormouse_host::config::{Config, PartyConfig};
use dormouse_host::host::Host;
use dormouse_tests::*;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

/// Set (to the data dir) only in the child.
const CHILD: &str = "DORMOUSE_KILL_TEST_DATA";
const COMPONENT: &str = "DORMOUSE_KILL_TEST_COMPONENT";
/// Rounds of load-then-kill; `DORMOUSE_KILL_ROUNDS=100` for a long run.
const ROUNDS: &str = "DORMOUSE_KILL_ROUNDS";
const ROOMS: usize = 3;
const CLIENTS_PER_ROOM: usize = 2;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the host process of every_count_a_client_saw_survives_kill_9; not a test alone"]
async fn serve_until_killed() {
    let (Ok(data), Ok(component)) = (std::env::var(CHILD), std::env::var(COMPONENT)) else {
        return;
    };
    let mut config = Config {
        data_dir: data.into(),
        compile_cache_dir: Some(compile_cache()),
        ..Config::default()
    };
    config.parties.insert(
        "main".into(),
        PartyConfig {
            component: Some(component.into()),
            krate: None,
            builtin: None,
            vars: Default::default(),
            limits: Default::default(),
            crons: Vec::new(),
        },
    );
    let host = Host::new(config).expect("host starts");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    println!("listening {}", listener.local_addr().expect("addr"));
    dormouse_host::edge::server::run(listener, host)
        .await
        .expect("serves");
}

/// Start a child host serving `guest` as party `main` on `data`; its
/// address. (Also the Yjs test's host to kill.)
pub(crate) async fn spawn_host(data: &Path, guest_name: &str) -> (Child, SocketAddr) {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "durability::serve_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD, data)
        .env(COMPONENT, guest(guest_name))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("child host starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stdout).lines();
    // The child may be the first host of this run to compile the component
    // (a TypeScript room takes ~12 s in a debug build): more than WAIT.
    let addr = tokio::time::timeout(WAIT * 6, async {
        while let Some(line) = lines.next_line().await.expect("child stdout") {
            if let Some(addr) = line.strip_prefix("listening ") {
                return addr.parse().expect("an address");
            }
        }
        panic!("the child host exited before listening");
    })
    .await
    .expect("child host listens in time");
    // Keep draining its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// A client that sends `inc` as fast as counts come back, recording the
/// highest count it received, until its socket dies.
async fn hammer(addr: SocketAddr, room: usize, seen: Arc<Mutex<HashMap<usize, u64>>>) {
    let url = format!("ws://{addr}/parties/main/kill-{room}");
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await else {
        return;
    };
    loop {
        if ws.send(Message::text("inc")).await.is_err() {
            return;
        }
        let Some(Ok(Message::Text(t))) = ws.next().await else {
            return;
        };
        let n: u64 = t.parse().expect("the counter sends numbers");
        let mut seen = seen.lock().expect("not poisoned");
        let max = seen.entry(room).or_default();
        *max = (*max).max(n);
    }
}

/// A pseudo-random delay, different every round.
fn random_ms(lo: u64, hi: u64) -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    lo + u64::from(nanos) % (hi - lo)
}

// In TypeScript and Python too: the TypeScript counter's hooks `await` their
// storage calls, and what they send after still waits for the commit.
in_each_language!(every_count_a_client_saw_survives_kill_9: rust => "counter", ts => "counter-ts", py => "counter-py");
async fn every_count_a_client_saw_survives_kill_9(guest: &'static str) {
    let rounds: usize = std::env::var(ROUNDS)
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let data = data_dir();
    let seen: Arc<Mutex<HashMap<usize, u64>>> = Arc::default();
    for round in 0..=rounds {
        let (mut child, addr) = spawn_host(&data, guest).await;
        // Every count any client received before the last kill is stored.
        for room in 0..ROOMS {
            let (status, body) = http(addr, "GET", &format!("/parties/main/kill-{room}"), "")
                .await
                .expect("GET the count");
            assert_eq!(status, 200);
            let stored: u64 = body.parse().expect("a number");
            let max = seen
                .lock()
                .expect("not poisoned")
                .get(&room)
                .copied()
                .unwrap_or(0);
            assert!(
                stored >= max,
                "round {round}, room {room}: a client saw {max}, storage has {stored}"
            );
        }
        if round == rounds {
            child.start_kill().expect("kill");
            break;
        }
        let clients: Vec<_> = (0..ROOMS * CLIENTS_PER_ROOM)
            .map(|i| tokio::spawn(hammer(addr, i % ROOMS, seen.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(random_ms(100, 600))).await;
        // SIGKILL: no shutdown, no flush, no close frames.
        child.start_kill().expect("kill");
        child.wait().await.expect("the child is reaped");
        for c in clients {
            c.await.expect("client task");
        }
    }
    let total: u64 = seen.lock().expect("not poisoned").values().sum();
    println!("{rounds} kills; {total} increments acknowledged, none lost");
    assert!(total > 0, "the load ran");
}
