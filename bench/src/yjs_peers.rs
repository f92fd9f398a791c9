//! `dormouse bench yjs`, second part: the shapes users have, against the
//! peers users compare with, in the same run. Yjs's own Node clients
//! (`bench/yjs-peers/clients.mjs`: y-websocket's provider, and
//! Hocuspocus's own for Hocuspocus) against Dormouse's Rust room
//! (`examples/yjs`), its TypeScript room (`examples/yjs-ts`), Hocuspocus and
//! the y-websocket reference server (`bench/yjs-peers/server.mjs`, npm
//! versions pinned in its `package.json`), one server at a time:
//!
//! - `--rooms` documents of ~10 KB typed in 100 inserts, two clients each
//!   with presence; then every Dormouse room hibernated (its metrics say
//!   so): server RSS per document, sockets included, and server CPU over
//!   30 s of presence renewals alone;
//! - 20,000 single-character inserts, each its own update: until a second
//!   client has them all; new clients' sync while the writer stays; and on
//!   Dormouse, after a SIGKILL and restart, a new client's sync (the peers
//!   keep documents in memory only here, so they have no such figure);
//! - 5,000 inserts from A until B has them all; and the clients' own
//!   share of that with no server at all (`floor`), which no server beats.
//!
//! Then each Dormouse figure over each peer's, as a ratio.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::{BenchArgs, Parties, Report, Server, cpu_seconds, dormouse_build, rss_of};

/// The idle timeout of the Dormouse servers: short, so that the bench need
/// not wait 10 s (the default) for every room to hibernate.
const IDLE_MS: u64 = 2_000;
/// Inserts of the typing workload, and of the A-to-B one.
const TYPED: usize = 20_000;
const A_TO_B: usize = 5_000;
/// How long presence alone is measured for (renewals come every 15 s).
const IDLE_WINDOW: Duration = Duration::from_secs(30);

/// A server under test.
enum Contender {
    Dormouse(Server),
    Peer { child: Child, pid: u32 },
}

impl Contender {
    fn pid(&self) -> u32 {
        match self {
            Contender::Dormouse(s) => s.pid,
            Contender::Peer { pid, .. } => *pid,
        }
    }

    async fn stop(self) {
        match self {
            Contender::Dormouse(s) => s.stop().await,
            Contender::Peer { mut child, .. } => {
                let _ = child.kill().await;
            }
        }
    }
}

/// Where the Node side lives; installed with `npm ci` on first use.
fn peers_dir(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let dir = args.examples.join("../bench/yjs-peers");
    let ok = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!("node is needed for the Yjs peers (install Node.js 20 or later)");
    }
    if !dir.join("node_modules").is_dir() {
        let status = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .context("cannot run npm")?;
        if !status.success() {
            bail!("npm ci in {} failed", dir.display());
        }
    }
    Ok(dir)
}

/// A Node peer server on a free port, once it says it listens.
async fn start_peer(dir: &Path, kind: &str) -> anyhow::Result<(Contender, SocketAddr)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .arg(kind)
        .arg(port.to_string())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {kind}"))?;
    let pid = child.id().context("the peer exited at once")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .with_context(|| format!("{kind} did not start in 30 s"))??;
    if line.as_deref() != Some("listening") {
        bail!("{kind} did not start: {line:?}");
    }
    Ok((
        Contender::Peer { child, pid },
        SocketAddr::from(([127, 0, 0, 1], port)),
    ))
}

/// The figures one `clients.mjs` run printed, by name.
type Figures = BTreeMap<String, f64>;

/// Read `figure NAME VALUE UNIT` lines until `stop` (or the end).
async fn read_figures(
    lines: &mut Lines<BufReader<ChildStdout>>,
    stop: Option<&str>,
    into: &mut Figures,
) -> anyhow::Result<()> {
    while let Some(line) = lines.next_line().await? {
        if Some(line.as_str()) == stop {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        if let (Some("figure"), Some(name), Some(value)) =
            (parts.next(), parts.next(), parts.next())
        {
            into.insert(name.to_owned(), value.parse()?);
        }
    }
    match stop {
        Some(stop) => bail!("the clients ended before {stop:?}"),
        None => Ok(()),
    }
}

fn clients(dir: &Path, kind: &str, base: &str, workload: &[&str]) -> anyhow::Result<Child> {
    Command::new("node")
        .arg(dir.join("clients.mjs"))
        .arg(kind)
        .arg(base)
        .args(workload)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the Node clients")
}

/// Run a workload to its end; its figures.
async fn run_clients(
    dir: &Path,
    kind: &str,
    base: &str,
    workload: &[&str],
) -> anyhow::Result<Figures> {
    let mut child = clients(dir, kind, base, workload)?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut figures = Figures::new();
    read_figures(&mut lines, None, &mut figures).await?;
    let status = child.wait().await?;
    if !status.success() {
        bail!("clients.mjs {workload:?} against {base} failed ({status})");
    }
    Ok(figures)
}

/// Everything measured on one contender.
async fn measure(
    args: &BenchArgs,
    dir: &Path,
    contender: &mut Contender,
    kind: &str,
    base: &str,
) -> anyhow::Result<Figures> {
    let pid = contender.pid();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = rss_of(pid)?;

    // Many documents, two clients each, then all idle.
    let docs = args.rooms;
    let mut child = clients(dir, kind, base, &["docs", &docs.to_string()])?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let mut figures = Figures::new();
    read_figures(&mut lines, Some("ready"), &mut figures).await?;
    if let Contender::Dormouse(server) = &*contender {
        server
            .settle("dormouse_rooms{party=\"yjs\",state=\"awake\"}", 0.0)
            .await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_of(pid)?;
    figures.insert(
        "docs_rss_per_doc_kb".into(),
        rss.saturating_sub(rss_before) as f64 / docs as f64 / 1e3,
    );
    let wakes = "dormouse_wakes_total{party=\"yjs\"}";
    let wakes_before = match &*contender {
        Contender::Dormouse(s) => s.metric(wakes).await,
        Contender::Peer { .. } => 0.0,
    };
    let cpu = cpu_seconds(pid)?;
    tokio::time::sleep(IDLE_WINDOW).await;
    figures.insert("docs_idle_cpu_s_per_30s".into(), cpu_seconds(pid)? - cpu);
    if let Contender::Dormouse(s) = &*contender {
        figures.insert(
            "docs_idle_wakes".into(),
            s.metric(wakes).await - wakes_before,
        );
        figures.insert(
            "docs_rss_per_doc_after_idle_kb".into(),
            rss_of(pid)?.saturating_sub(rss_before) as f64 / docs as f64 / 1e3,
        );
    }
    drop(child.stdin.take());
    read_figures(&mut lines, None, &mut figures).await?;
    let _ = child.wait().await;

    // Many small inserts, and A to B. A workload that fails (a server
    // that never syncs a client, say) is reported, and the others still run.
    let typed = TYPED.to_string();
    let a_to_b = A_TO_B.to_string();
    for workload in [["typing", "typed", &typed], ["typing", "a-to-b", &a_to_b]] {
        match run_clients(dir, kind, base, &workload).await {
            Ok(more) => figures.extend(more),
            Err(e) => println!("# yjs-peers: {base}: {workload:?} failed: {e:#}"),
        }
    }

    // The typed document after a restart, cold.
    if let Contender::Dormouse(server) = contender {
        server.restart().await?;
        match run_clients(dir, kind, base, &["sync", "typed", &typed]).await {
            Ok(more) => figures.extend(more),
            Err(e) => println!("# yjs-peers: {base}: sync after a restart failed: {e:#}"),
        }
    }
    Ok(figures)
}

/// One contender's figures, as soon as it is done.
fn report(out: &mut Report, name: &str, figures: &Figures) {
    for (figure, value) in figures {
        out.figure("yjs-peers", &format!("{name}_{figure}"), *value, "");
    }
}

pub(super) async fn peers(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let dir = peers_dir(args)?;
    let parties = Parties::build(&args.examples)?;
    let mut all: Vec<(&str, Figures)> = Vec::new();
    // `DORMOUSE_BENCH_YJS=dormouse_rust,hocuspocus` runs only those (a
    // "before" server, say, that cannot serve today's TypeScript SDK).
    let chosen = std::env::var("DORMOUSE_BENCH_YJS").ok();
    let run = |name: &str| {
        chosen
            .as_deref()
            .is_none_or(|c| c.split(',').any(|n| n == name))
    };
    for (name, example) in [("dormouse_rust", "yjs"), ("dormouse_ts", "yjs-ts")] {
        if !run(name) {
            continue;
        }
        let component = dormouse_build(&args.examples.join(example))?;
        let extra = format!("[parties.yjs]\ncomponent = {component:?}\n");
        let server = Server::start(&parties, IDLE_MS, &extra).await?;
        let base = format!("ws://{}/parties/yjs", server.addr);
        let mut contender = Contender::Dormouse(server);
        let figures = measure(args, &dir, &mut contender, "y-websocket", &base).await;
        contender.stop().await;
        let figures = figures?;
        report(out, name, &figures);
        all.push((name, figures));
    }
    for (name, kind, client) in [
        ("hocuspocus", "hocuspocus", "hocuspocus"),
        ("y_websocket", "y-websocket", "y-websocket"),
    ] {
        if !run(name) {
            continue;
        }
        let (mut contender, addr) = start_peer(&dir, kind).await?;
        let base = format!("ws://{addr}");
        let figures = measure(args, &dir, &mut contender, client, &base).await;
        contender.stop().await;
        let figures = figures?;
        report(out, name, &figures);
        all.push((name, figures));
    }
    // The clients' own share of A to B, in a fresh process with no server
    // and no socket: the floor under every contender's A-to-B figure.
    if run("floor") {
        match run_clients(&dir, "y-websocket", "-", &["floor", &A_TO_B.to_string()]).await {
            Ok(figures) => report(out, "clients", &figures),
            Err(e) => println!("# yjs-peers: the clients' floor failed: {e:#}"),
        }
    }
    // Each Dormouse figure over each peer's (lower is better for all but
    // none of them: every figure is a time, a size or a count).
    for (ours, our_figures) in all.iter().filter(|(n, _)| n.starts_with("dormouse")) {
        for (peer, peer_figures) in all.iter().filter(|(n, _)| !n.starts_with("dormouse")) {
            for (figure, value) in our_figures {
                if let Some(theirs) = peer_figures.get(figure).filter(|t| **t > 0.0) {
                    let name = format!("{ours}_over_{peer}_{figure}");
                    out.figure("yjs-peers", &name, value / theirs, "x");
                }
            }
        }
    }
    Ok(())
}
