//! The cluster suite: real PostgreSQL, real HAProxy, real `dormouse serve
//! --cluster` nodes on loopback, clients over WebSockets, faults by signal,
//! and a checker over the recorded history (`checker.rs`). Needs Debian's
//! postgresql and haproxy; `scripts/test.sh` installs them.
//!
//! `DORMOUSE_CLUSTER_SECONDS=N cargo test -p dormouse --test cluster -- --ignored long_run`
//! runs randomized seeds of the fault run for N seconds.

mod checker;
mod procs;
mod workload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use procs::{Haproxy, Node, NodeSpec, Postgres, free_port, repo};
use workload::{Kind, Op, Rng, Workload, ask, room_name};

/// Short, so that the suite's failovers take seconds.
const TTL_MS: u64 = 3000;

fn ledger() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            dormouse::project::build(&repo().join("tests/guests/ledger"))
                .expect("the ledger guest builds")
        })
        .clone()
}

struct Rig {
    pg: Postgres,
    nodes: Vec<Node>,
    lb: Haproxy,
}

impl Rig {
    async fn start(n: usize, clustered: bool, unfenced: bool) -> Rig {
        let component = ledger();
        let pg = Postgres::start().await;
        let mut nodes = Vec::new();
        for i in 0..n {
            let spec = NodeSpec {
                id: format!("n{}", i + 1),
                port: free_port(),
                database: pg.url(),
                component: component.clone(),
                lease_ttl_ms: TTL_MS,
                unfenced,
                clustered,
            };
            nodes.push(Node::start(spec).await);
        }
        let addrs: Vec<String> = nodes.iter().map(Node::addr).collect();
        let lb = Haproxy::start(&addrs).await;
        Rig { pg, nodes, lb }
    }

    /// Every room's list as read through HAProxy once everything is up.
    async fn final_lists(&self, rooms: usize) -> HashMap<String, Vec<String>> {
        let mut out = HashMap::new();
        for i in 0..rooms {
            let room = room_name(i);
            out.insert(room.clone(), read(self.lb.port, &room).await);
        }
        out
    }

    async fn audit(&self) -> (Vec<checker::Commit>, Vec<checker::Claim>) {
        let pg = self.pg.client().await;
        let commits = pg
            .query("SELECT room, epoch, seq, node_id, inc FROM commit_log", &[])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| checker::Commit {
                        room: r.get(0),
                        epoch: r.get(1),
                        seq: r.get(2),
                        node: r.get(3),
                        inc: r.get(4),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let claims = pg
            .query("SELECT room, epoch, node_id, inc FROM ownership_log", &[])
            .await
            .map(|rows| {
                rows.iter()
                    .map(|r| checker::Claim {
                        room: r.get(0),
                        epoch: r.get(1),
                        node: r.get(2),
                        inc: r.get(3),
                    })
                    .collect()
            })
            .unwrap_or_default();
        (commits, claims)
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("--- {}\n{}", n.spec.id, tail(&n.log(), 40)))
            .collect()
    }
}

fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Read a room's list through `port`, retrying until it answers (C6: the
/// room must become available again after healing).
async fn read(port: u16, room: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_millis(TTL_MS) + Duration::from_secs(20);
    loop {
        let url = format!("ws://127.0.0.1:{port}/parties/ledger/{room}");
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await
            && let Some(a) = ask(&mut ws, "read x", "list x").await
        {
            let items = a.trim_start_matches("list x").trim();
            return items
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "C6: room {room} did not answer after healing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const ROOMS: usize = 30;
const CLIENTS: usize = 60;

/// The fault run: every fault once, while the clients write. Returns the
/// checker's violations and a summary line.
async fn fault_run(seed: u64) -> (Vec<String>, String, Rig) {
    let mut rig = Rig::start(3, true, false).await;
    let load = Workload::start(rig.lb.port, ROOMS, CLIENTS, seed);
    let mut rng = Rng::new(seed);
    let ttl = Duration::from_millis(TTL_MS);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // 1. kill -9 a node; restart it after a while.
    let victim = rng.below(3);
    rig.nodes[victim].kill9().await;
    tokio::time::sleep(ttl + Duration::from_secs(2)).await;
    rig.nodes[victim].restart().await;
    // 2. a zombie: pause a node for twice the TTL.
    let zombie = rng.below(3);
    rig.nodes[zombie].pause();
    tokio::time::sleep(ttl * 2).await;
    rig.nodes[zombie].resume();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 6. kill -9 PostgreSQL; restart it.
    rig.pg.kill9().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rig.pg.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // 9. a graceful leave (SIGTERM drains) and a return.
    let leaver = rng.below(3);
    rig.nodes[leaver].stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.nodes[leaver].restart().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let acked_during = load.acked();
    let history = load.stop().await;
    // Healed: everything is up again.
    let fin = rig.final_lists(ROOMS).await;
    let (commits, claims) = rig.audit().await;
    let violations = checker::check(&history, &fin, &commits, &claims);
    let summary = summary(&history, acked_during, &commits, &claims);
    (violations, summary, rig)
}

fn summary(
    history: &[Op],
    acked: usize,
    commits: &[checker::Commit],
    claims: &[checker::Claim],
) -> String {
    let reads = history
        .iter()
        .filter(|o| matches!(o.kind, Kind::Read { .. }))
        .count();
    let unknown = history.iter().filter(|o| o.complete.is_none()).count();
    format!(
        "{} operations ({acked} acknowledged appends, {reads} reads, {unknown} unanswered), {} commits, {} claims",
        history.len(),
        commits.len(),
        claims.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_behind_haproxy_lose_nothing_through_every_fault() {
    let (violations, summary, rig) = fault_run(1).await;
    eprintln!("fault run: {summary}");
    assert!(
        violations.is_empty(),
        "{} violations:\n{}\n{}",
        violations.len(),
        violations[..violations.len().min(20)].join("\n"),
        rig.logs()
    );
    let (commits, claims) = rig.audit().await;
    assert!(
        commits.len() > 100,
        "the run committed too little to show anything: {summary}"
    );
    // Every fault moved rooms: there were claims beyond the first ones.
    assert!(claims.len() > ROOMS, "no room ever moved: {summary}");
}

/// A socket to one node directly (not through HAProxy), and its first answer.
async fn direct(node: &Node, room: &str) -> workload::Ws {
    let url = format!("ws://{}/parties/ledger/{room}", node.addr());
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to a node");
    ws
}

/// Scenario 2, the zombie: node 1 holds a room and is paused for twice the
/// TTL; node 2 claims the room meanwhile and acknowledges appends; then node
/// 1 resumes with appends waiting in its socket. Returns the checker's
/// violations and how many appends node 1 acknowledged after it resumed.
async fn zombie(unfenced: bool) -> (Vec<String>, usize, Rig) {
    let rig = Rig::start(2, true, unfenced).await;
    let room = "z";
    let mut history = Vec::new();
    fn append(history: &mut Vec<Op>, room: &str, value: &str, invoke: Instant, acked: bool) {
        history.push(Op {
            room: room.into(),
            kind: Kind::Append {
                value: value.into(),
            },
            invoke,
            complete: acked.then(Instant::now),
        });
    }
    let mut old = direct(&rig.nodes[0], room).await;
    let t = Instant::now();
    let first = ask(&mut old, "append x a1 a1", "ok").await;
    assert!(first.is_some(), "node 1 serves the room");
    append(&mut history, room, "a1", t, true);
    rig.nodes[0].pause();
    // Waiting in node 1's socket while it is paused.
    for v in ["z1", "z2", "z3"] {
        use futures_util::SinkExt;
        old.send(tokio_tungstenite::tungstenite::Message::text(format!(
            "append x {v} {v}"
        )))
        .await
        .expect("the kernel takes the frame");
        append(&mut history, room, v, Instant::now(), false);
    }
    tokio::time::sleep(Duration::from_millis(TTL_MS * 2)).await;
    // Node 2 takes over the room and acknowledges writes.
    let mut new = None;
    for _ in 0..50 {
        let mut ws = direct(&rig.nodes[1], room).await;
        let t = Instant::now();
        if ask(&mut ws, "append x b1 b1", "ok").await.is_some() {
            append(&mut history, room, "b1", t, true);
            new = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut new = new.expect("node 2 claims the room after node 1's lease");
    let t = Instant::now();
    assert!(ask(&mut new, "append x b2 b2", "ok").await.is_some());
    append(&mut history, room, "b2", t, true);
    rig.nodes[0].resume();
    // What node 1 acknowledges now, from the appends that waited.
    let mut zombie_acks = 0;
    {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, old.next()).await {
            if m.to_text().is_ok_and(|t| t.starts_with("ok")) {
                zombie_acks += 1;
            }
        }
    }
    for (i, op) in history.iter_mut().enumerate() {
        if (1..=3).contains(&i) && i <= zombie_acks {
            op.complete = Some(Instant::now());
        }
    }
    let t = Instant::now();
    let after = ask(&mut new, "append x b3 b3", "ok").await.is_some();
    append(&mut history, room, "b3", t, after);
    let fin = HashMap::from([(room.to_owned(), read(rig.lb.port, room).await)]);
    let (commits, claims) = rig.audit().await;
    let violations = checker::check(&history, &fin, &commits, &claims);
    (violations, zombie_acks, rig)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_owner_commits_and_acknowledges_nothing_once_replaced() {
    let (violations, zombie_acks, rig) = zombie(false).await;
    assert_eq!(
        zombie_acks,
        0,
        "the zombie acknowledged appends\n{}",
        rig.logs()
    );
    assert!(violations.is_empty(), "{violations:#?}\n{}", rig.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_writes_without_the_epoch_fence() {
    let (violations, zombie_acks, rig) = zombie(true).await;
    assert!(
        zombie_acks > 0,
        "without the fence the zombie should have acknowledged\n{}",
        rig.logs()
    );
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("C3") || v.starts_with("C4")),
        "the checker missed the stale writer: {violations:#?}"
    );
    assert!(
        violations.iter().any(|v| v.starts_with("C1")),
        "the checker missed the lost acknowledged appends: {violations:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_local_sqlite_behind_the_hash() {
    // The rejected design: three single nodes, each on its own SQLite,
    // behind the same HAProxy. A node dies, its rooms' clients move to
    // another node (which has none of their data), the node comes back.
    let mut rig = Rig::start(3, false, false).await;
    let load = Workload::start(rig.lb.port, ROOMS, CLIENTS / 2, 7);
    tokio::time::sleep(Duration::from_secs(3)).await;
    rig.nodes[0].kill9().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    rig.nodes[0].restart().await;
    // HAProxy sees it up again (rise 2 at 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let history = load.stop().await;
    let fin = rig.final_lists(ROOMS).await;
    let violations = checker::check(&history, &fin, &[], &[]);
    assert!(
        violations
            .iter()
            .any(|v| v.starts_with("C1") || v.starts_with("C5")),
        "the checker missed the lost writes of local SQLite: {violations:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long run: DORMOUSE_CLUSTER_SECONDS=N cargo test -p dormouse --test cluster -- --ignored long_run"]
async fn long_run() {
    let seconds: u64 = std::env::var("DORMOUSE_CLUSTER_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let started = Instant::now();
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let mut runs = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        let (violations, summary, rig) = fault_run(seed).await;
        runs += 1;
        eprintln!("seed {seed}: {summary}; {} violations", violations.len());
        assert!(
            violations.is_empty(),
            "seed {seed}: {violations:#?}\n{}",
            rig.logs()
        );
        seed += 1;
    }
    eprintln!(
        "long run: {runs} runs in {:?}, no violations",
        started.elapsed()
    );
}

/// Median round trip of `rounds` reads on one socket.
async fn median_rtt(ws: &mut workload::Ws, rounds: usize) -> Duration {
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        ask(ws, "read x", "list x").await.expect("a read answers");
        times.push(t.elapsed());
    }
    times.sort();
    times[rounds / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_on_any_node_reaches_the_rooms_holder() {
    let rig = Rig::start(2, true, false).await;
    let mut on_holder = direct(&rig.nodes[0], "f").await;
    assert!(ask(&mut on_holder, "append x a a", "ok").await.is_some());
    // Node 2 forwards this socket to node 1, which holds the room.
    let mut forwarded = direct(&rig.nodes[1], "f").await;
    let seen = ask(&mut forwarded, "read x", "list x").await;
    assert_eq!(seen.as_deref(), Some("list x a"), "{}", rig.logs());
    assert!(ask(&mut forwarded, "append x b b", "ok").await.is_some());
    let seen = ask(&mut on_holder, "read x", "list x").await;
    assert_eq!(seen.as_deref(), Some("list x a,b"));
    // Only node 1 ever claimed the room.
    let (_, claims) = rig.audit().await;
    assert!(claims.iter().all(|c| c.node == "n1"), "{claims:?}");
    // The figure for BENCHMARKS.md (not asserted: this machine is shared).
    let direct_rtt = median_rtt(&mut on_holder, 300).await;
    let forwarded_rtt = median_rtt(&mut forwarded, 300).await;
    eprintln!(
        "read round trip, median of 300: on the holder {direct_rtt:?}, forwarded {forwarded_rtt:?}"
    );
}

/// Acknowledged appends per second from `clients` clients on `rooms` rooms
/// through `port`, over `secs` seconds.
async fn append_rate(port: u16, rooms: usize, clients: usize, secs: u64) -> f64 {
    let load = Workload::start(port, rooms, clients, 99);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = load.acked();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = load.acked();
    load.stop().await;
    (after - before) as f64 / secs as f64
}

/// The figures of BENCHMARKS.md's cluster section, side by side in one run:
/// `cargo test --release -p dormouse --test cluster -- --ignored figures --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "figures, not a test: cargo test --release -p dormouse --test cluster -- --ignored figures --nocapture"]
async fn figures() {
    let (rooms, clients, secs) = (30, 60, 10);
    let single = Rig::start(1, false, false).await;
    let sqlite = append_rate(single.lb.port, rooms, clients, secs).await;
    drop(single);
    let one_pg = Rig::start(1, true, false).await;
    let pg1 = append_rate(one_pg.lb.port, rooms, clients, secs).await;
    drop(one_pg);
    let mut three = Rig::start(3, true, false).await;
    let pg3 = append_rate(three.lb.port, rooms, clients, secs).await;
    eprintln!(
        "durable appends/s through HAProxy, {clients} clients, {rooms} rooms: one node on SQLite {sqlite:.0}, one node on PostgreSQL {pg1:.0} ({:.2}x), three nodes on PostgreSQL {pg3:.0} ({:.2}x)",
        pg1 / sqlite,
        pg3 / sqlite
    );
    // Failover: kill the holder of a room, time until it takes a write again.
    let mut holder = direct(&three.nodes[0], "fail").await;
    assert!(ask(&mut holder, "append x a a", "ok").await.is_some());
    three.nodes[0].kill9().await;
    let killed = Instant::now();
    let mut n = 0;
    loop {
        n += 1;
        let url = format!("ws://127.0.0.1:{}/parties/ledger/fail", three.lb.port);
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url).await
            && ask(&mut ws, &format!("append x f{n} f{n}"), "ok")
                .await
                .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "a killed holder's room took a write again after {:?} (lease TTL {TTL_MS} ms)",
        killed.elapsed()
    );
}
