//! `dormouse bench`: the load generator behind BENCHMARKS.md, a crate of its
//! own so the server library carries none of it. Runs inside the `dormouse`
//! binary, which it calls back as child processes: `dormouse build` for the
//! rooms, `dormouse serve` for the servers it measures (so their RSS is
//! theirs alone), and `dormouse bench-worker` to hold connections past one
//! process's file descriptors. Drives them over real WebSockets from many
//! loopback source addresses. The caller raises the file-descriptor limit.
//!
//! Every figure is one line, `scenario figure value unit`, or a JSON object
//! per line with `--json`. Wasm is compared with the builtin relay (the same
//! logic in plain Rust, same host stack) in the same run.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod broadcast;
mod languages;
mod sql;
mod yjs;
mod yjs_peers;

pub use broadcast::{FloorArgs, floor};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{WebSocketStream, client_async};

/// What `dormouse bench` measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// C idle connections in one room: server RSS per connection.
    Connections,
    /// C clients relaying in lockstep rounds: deliveries/s and latency, Wasm vs builtin.
    Relay,
    /// Messages into a room that hibernates after every event vs an awake one.
    Wake,
    /// One sender, C receivers: time until the last receiver has it, Wasm vs builtin.
    Fanout,
    /// R rooms with one connection each, hibernated; then A rooms awake: RSS per room.
    Rooms,
    /// Many rooms writing one key per message (output gate on): durable writes/s
    /// vs one SQLite transaction per write.
    Storage,
    /// One sender, 49 and 199 receivers, unloaded: time to the first and the
    /// last receiver, against a minimal tokio-tungstenite relay (the floor)
    /// and a Node `ws` relay (when node is present).
    Broadcast,
    /// Yjs documents of 10 KB, 1 MB and 10 MB that hibernate: a client's
    /// sync step 1 to the room's step 2, new and returning clients; then
    /// --rooms documents with two clients each, 20,000 small inserts and
    /// A-to-B throughput, beside Hocuspocus and the y-websocket server.
    Yjs,
    /// The relay in Rust and in TypeScript side by side: deploy time (first
    /// and second), wake, private memory per awake room, relay throughput.
    Languages,
    /// SQL storage beside key-value storage in one run: a request to a
    /// hibernated room with a 10 MB SQL database vs a key-value room, and
    /// durable writes/s across --rooms rooms, SQL inserts vs key-value puts.
    Sql,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    pub scenario: Scenario,
    /// Connections (connections: 1000), clients (relay: 100), receivers (fanout: 1000).
    #[arg(long)]
    pub clients: Option<usize>,
    /// Rooms (rooms: hibernated ones; storage: writing ones).
    #[arg(long, default_value_t = 1000)]
    pub rooms: usize,
    /// Rooms awake at once (rooms).
    #[arg(long, default_value_t = 1000)]
    pub awake: usize,
    /// Measured rounds (relay, fanout: per party; wake: per room).
    #[arg(long, default_value_t = 200)]
    pub rounds: usize,
    /// Seconds of load (storage).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Message payload, bytes (relay, fanout; at least 16).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// The examples folder, whose relay and counter rooms are built and served.
    #[arg(long, default_value = "examples")]
    pub examples: PathBuf,
    /// One JSON object per figure instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Connections one worker process opens (its own fds stay under the limit).
const PER_WORKER: usize = 9_000;

pub async fn run(mut args: BenchArgs) -> anyhow::Result<()> {
    let default_clients = match args.scenario {
        Scenario::Relay | Scenario::Languages => 100,
        _ => 1000,
    };
    // Broadcast runs 49 and 199 receivers unless told a number.
    if args.scenario != Scenario::Broadcast {
        args.clients = Some(args.clients.unwrap_or(default_clients));
    }
    if args.size < 16 {
        bail!(
            "--size must be at least 16 bytes (the payload carries a sequence number and a timestamp)"
        );
    }
    let mut out = Report { json: args.json };
    match args.scenario {
        Scenario::Connections => connections(&args, &mut out).await,
        Scenario::Relay => relay(&args, &mut out).await,
        Scenario::Wake => wake(&args, &mut out).await,
        Scenario::Fanout => fanout(&args, &mut out).await,
        Scenario::Rooms => rooms(&args, &mut out).await,
        Scenario::Storage => storage(&args, &mut out).await,
        Scenario::Broadcast => broadcast::broadcast(&args, &mut out).await,
        Scenario::Yjs => yjs::yjs(&args, &mut out).await,
        Scenario::Languages => languages::languages(&args, &mut out).await,
        Scenario::Sql => sql::sql(&args, &mut out).await,
    }
}

/// `--clients`, after `run` filled in the scenario's default.
fn clients(args: &BenchArgs) -> usize {
    args.clients.unwrap_or(1000)
}

/// Prints figures, as text or JSON lines.
struct Report {
    json: bool,
}

impl Report {
    fn figure(&mut self, scenario: &str, name: &str, value: f64, unit: &str) {
        if self.json {
            let line = serde_json::json!({
                "scenario": scenario, "figure": name, "value": value, "unit": unit,
            });
            println!("{line}");
        } else {
            println!("{scenario:<12} {name:<40} {value:>14.2} {unit}");
        }
    }

    fn latencies(&mut self, scenario: &str, name: &str, h: &Histogram<u64>) {
        for (q, label) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p99.9")] {
            let us = h.value_at_quantile(q) as f64 / 1e3;
            self.figure(scenario, &format!("{name}_{label}"), us, "us");
        }
    }
}

// ---------------------------------------------------------------- servers

/// A `dormouse serve` child process on a free loopback port.
struct Server {
    child: Child,
    addr: SocketAddr,
    pid: u32,
    dir: PathBuf,
}

/// The parties every bench server serves, built from `examples`.
struct Parties {
    relay: PathBuf,
    counter: PathBuf,
}

impl Parties {
    fn build(examples: &Path) -> anyhow::Result<Parties> {
        let build = |name: &str| {
            dormouse_build(&examples.join(name)).with_context(|| {
                format!("building {name} (is --examples the repo's examples folder?)")
            })
        };
        Ok(Parties {
            relay: build("relay")?,
            counter: build("counter")?,
        })
    }
}

/// The `dormouse` that serves: this one, or `DORMOUSE_BENCH_SERVER` (another
/// build, to measure two servers with one load generator, side by side).
fn server_binary() -> anyhow::Result<PathBuf> {
    match std::env::var_os("DORMOUSE_BENCH_SERVER") {
        Some(path) => Ok(PathBuf::from(path)),
        None => Ok(std::env::current_exe()?),
    }
}

/// Build a room crate with this binary's `dormouse build`; the component.
fn dormouse_build(dir: &Path) -> anyhow::Result<PathBuf> {
    let out = std::process::Command::new(std::env::current_exe()?)
        .arg("build")
        .arg(dir)
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run `dormouse build`")?;
    if !out.status.success() {
        bail!("`dormouse build {}` failed", dir.display());
    }
    let path = String::from_utf8_lossy(&out.stdout);
    let path = path
        .lines()
        .last()
        .context("`dormouse build` printed no path")?;
    Ok(PathBuf::from(path.trim()))
}

impl Server {
    /// Start a server; `extra` is appended to its `dormouse.toml`.
    async fn start(parties: &Parties, idle_timeout_ms: u64, extra: &str) -> anyhow::Result<Server> {
        let dir = std::env::temp_dir().join(format!("dormouse-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let config = format!(
            "listen = \"{addr}\"\ndata_dir = \"data\"\nidle_timeout_ms = {idle_timeout_ms}\n{extra}\n\
             [parties.relay]\ncomponent = {relay:?}\n\
             [parties.counter]\ncomponent = {counter:?}\n\
             [parties.native]\nbuiltin = \"relay\"\n",
            relay = parties.relay,
            counter = parties.counter,
        );
        std::fs::write(dir.join("dormouse.toml"), config)?;
        let (child, pid) = Server::spawn(&dir, addr).await?;
        Ok(Server {
            child,
            addr,
            pid,
            dir,
        })
    }

    /// Run `dormouse serve` on `dir`'s config; once it answers.
    async fn spawn(dir: &Path, addr: SocketAddr) -> anyhow::Result<(Child, u32)> {
        let child = Command::new(server_binary()?)
            .arg("serve")
            .arg("--config")
            .arg(dir.join("dormouse.toml"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the server")?;
        let pid = child.id().context("the server exited at once")?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(addr, "/_dormouse/health").await.is_err() {
            if Instant::now() > deadline {
                bail!("the server did not answer within 60 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok((child, pid))
    }

    /// Kill the server (SIGKILL) and start it again on the same data and
    /// port: what its rooms then read comes from disk.
    async fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill().await;
        (self.child, self.pid) = Server::spawn(&self.dir, self.addr).await?;
        Ok(())
    }

    /// Resident memory, bytes (`VmRSS` of `/proc/PID/status`).
    fn rss(&self) -> anyhow::Result<u64> {
        self.status_bytes("VmRSS")
    }

    /// A memory figure of `/proc/PID/status` (`VmRSS`, `RssAnon`, ...), bytes.
    fn status_bytes(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/PID/status"))?;
        Ok(kib * 1024)
    }

    async fn metric(&self, series: &str) -> f64 {
        let text = get(self.addr, "/_dormouse/metrics")
            .await
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Wait until a metric reaches `value` (within a minute).
    async fn settle(&self, series: &str, value: f64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.metric(series).await;
            if v == value {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{series} stayed {v}, wanted {value}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// RSS once the server is quiet: after a moment for freed memory to go.
    async fn quiet_rss(&self) -> anyhow::Result<u64> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.rss()
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// CPU time a process has used, seconds (utime + stime of `/proc/PID/stat`,
/// in clock ticks of 1/100 s, as Linux reports them to user space).
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .context("no command in /proc/PID/stat")?
        .1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Resident memory of a process, bytes (`VmRSS` of `/proc/PID/status`).
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")?;
    Ok(kib * 1024)
}

/// A plain HTTP GET over a fresh connection; the body.
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    request(addr, "GET", path, "").await
}

/// One HTTP request over a fresh connection; the body of a 200 answer.
async fn request(addr: SocketAddr, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
    let mut tcp = TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    tcp.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no HTTP answer")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{path}: {head}");
    }
    Ok(body.to_owned())
}

// ---------------------------------------------------------------- clients

type Ws = WebSocketStream<TcpStream>;

/// The loopback source address of the n-th connection: spread over
/// 127.0.0.2..=127.0.0.17, so no single address runs out of ephemeral ports.
fn source(n: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (n % 16) as u8)
}

async fn connect(addr: SocketAddr, path: &str, n: usize) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source(n), 0)))?;
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let (ws, _) = client_async(format!("ws://{addr}{path}"), tcp).await?;
    Ok(ws)
}

/// Open `count` connections, 256 at a time; `path(i)` names each one's room.
async fn connect_many(
    addr: SocketAddr,
    count: usize,
    path: impl Fn(usize) -> String,
) -> anyhow::Result<Vec<Ws>> {
    let mut all = Vec::with_capacity(count);
    let mut pending = futures_util::stream::iter((0..count).map(|i| {
        let p = path(i);
        async move { connect(addr, &p, i).await }
    }))
    .buffered(256);
    while let Some(ws) = pending.next().await {
        all.push(ws?);
    }
    Ok(all)
}

/// `dormouse bench-worker`: hold connections for the parent bench.
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    #[arg(long)]
    pub addr: SocketAddr,
    /// Room path; `{}` is replaced by the connection's number, `{pk}` by a
    /// fresh UUID (as partysocket's `?_pk=` carries).
    #[arg(long)]
    pub path: String,
    #[arg(long)]
    pub first: usize,
    #[arg(long)]
    pub count: usize,
}

/// Open the connections, print `held N`, keep them (answering pings) until
/// stdin closes.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let path = args.path.clone();
    let first = args.first;
    let clients = connect_many(args.addr, args.count, |i| {
        path.replace("{}", &(first + i).to_string())
            .replace("{pk}", &uuid::Uuid::new_v4().to_string())
    })
    .await?;
    let held = clients.len();
    for mut ws in clients {
        tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
    }
    println!("held {held}");
    let mut rest = Vec::new();
    let _ = tokio::io::stdin().read_to_end(&mut rest).await;
    Ok(())
}

/// Connections held by worker processes, for the idle-memory scenarios.
struct Workers(Vec<Child>);

impl Workers {
    /// Hold `count` connections to `path` (`{}` = connection number, from
    /// `offset`); the number held.
    async fn hold(
        addr: SocketAddr,
        path: &str,
        offset: usize,
        count: usize,
    ) -> anyhow::Result<(Workers, usize)> {
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        let mut lines = Vec::new();
        for start in (0..count).step_by(PER_WORKER) {
            let n = PER_WORKER.min(count - start);
            let first = offset + start;
            let mut child = Command::new(&exe)
                .args(["bench-worker", "--addr", &addr.to_string(), "--path", path])
                .args(["--first", &first.to_string(), "--count", &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a bench worker")?;
            let stdout = child.stdout.take().context("piped")?;
            lines.push(BufReader::new(stdout).lines());
            children.push(child);
        }
        let mut held = 0;
        for mut l in lines {
            let line = l
                .next_line()
                .await?
                .context("a worker failed (see its error above)")?;
            held += line
                .strip_prefix("held ")
                .and_then(|n| n.parse::<usize>().ok())
                .context("a worker said something odd")?;
        }
        Ok((Workers(children), held))
    }

    async fn stop(self) {
        for mut c in self.0 {
            drop(c.stdin.take());
            let _ = c.kill().await;
        }
    }
}

/// A payload of `size` bytes: sequence number, send time (ns since `epoch`), padding.
fn payload(seq: u64, epoch: Instant, size: usize) -> Message {
    let mut b = vec![0u8; size];
    b[..8].copy_from_slice(&seq.to_le_bytes());
    b[8..16].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_le_bytes());
    Message::binary(b)
}

fn parse_payload(m: &Message) -> Option<(u64, u64)> {
    let Message::Binary(b) = m else { return None };
    let seq = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let sent = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

// -------------------------------------------------------------- scenarios

async fn connections(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    let per = per_connection(&parties, clients(args), out, IDLE).await?;
    out.figure(
        "connections",
        "server_rss_per_connection",
        per as f64,
        "bytes",
    );
    // The way partysocket connects: its own id in `?_pk=`.
    let per = per_connection(&parties, clients(args), out, IDLE_PK).await?;
    out.figure(
        "connections",
        "server_rss_per_connection_pk",
        per as f64,
        "bytes",
    );
    Ok(())
}

/// The idle room, with server-made ids and with partysocket's `?_pk=`.
const IDLE: &str = "/parties/relay/idle";
const IDLE_PK: &str = "/parties/relay/idle?_pk={pk}";

/// Hold `count` idle connections in one (hibernated) room; RSS per connection.
async fn per_connection(
    parties: &Parties,
    count: usize,
    out: &mut Report,
    path: &str,
) -> anyhow::Result<u64> {
    let held = Held::measure(parties, 1000, "", path, count, false).await?;
    out.figure("connections", "held", held.count as f64, "connections");
    out.figure(
        "connections",
        "server_rss_before",
        held.before as f64 / 1024.0,
        "KiB",
    );
    out.figure(
        "connections",
        "server_rss_after",
        held.after as f64 / 1024.0,
        "KiB",
    );
    Ok(held.per())
}

/// A server's RSS before and after worker processes opened `count` idle
/// connections (and the rooms settled).
struct Held {
    count: usize,
    before: u64,
    after: u64,
}

impl Held {
    /// Start a server, hold the connections to `path` (`{}` = connection
    /// number), wait until every room is hibernated (or, with `awake`, until
    /// each connection's room is awake), and read the RSS.
    async fn measure(
        parties: &Parties,
        idle_timeout_ms: u64,
        extra: &str,
        path: &str,
        count: usize,
        awake: bool,
    ) -> anyhow::Result<Held> {
        let server = Server::start(parties, idle_timeout_ms, extra).await?;
        let before = server.quiet_rss().await?;
        let (workers, held) = Workers::hold(server.addr, path, 0, count).await?;
        server
            .settle("dormouse_connections{party=\"relay\"}", held as f64)
            .await?;
        let awake_rooms = if awake { held } else { 0 };
        server
            .settle(
                "dormouse_rooms{party=\"relay\",state=\"awake\"}",
                awake_rooms as f64,
            )
            .await?;
        let after = server.quiet_rss().await?;
        workers.stop().await;
        server.stop().await;
        Ok(Held {
            count: held,
            before,
            after,
        })
    }

    /// Bytes of RSS each held connection added.
    fn per(&self) -> u64 {
        self.after.saturating_sub(self.before) / self.count.max(1) as u64
    }

    /// What one more hibernated room costs once the host's fixed costs are
    /// paid (the awake-room pool's slots, each keeping the pages its last
    /// room touched): RSS added by the second half of `count` rooms, per room.
    async fn marginal(parties: &Parties, path: &str, count: usize) -> anyhow::Result<u64> {
        let server = Server::start(parties, 1000, "").await?;
        let half = count / 2;
        let mut workers = Vec::new();
        let mut rss = Vec::new();
        for step in 0..2 {
            let (w, _) = Workers::hold(server.addr, path, step * half, half).await?;
            workers.push(w);
            let want = ((step + 1) * half) as f64;
            server
                .settle("dormouse_connections{party=\"relay\"}", want)
                .await?;
            server
                .settle("dormouse_rooms{party=\"relay\",state=\"awake\"}", 0.0)
                .await?;
            rss.push(server.quiet_rss().await?);
        }
        for w in workers {
            w.stop().await;
        }
        server.stop().await;
        Ok(rss[1].saturating_sub(rss[0]) / half.max(1) as u64)
    }
}

async fn rooms(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    // What a connection costs alone (all in one room), to subtract.
    let per_conn = per_connection(&parties, args.rooms, out, IDLE).await? as f64;
    out.figure("rooms", "server_rss_per_connection", per_conn, "bytes");

    let path = "/parties/relay/room-{}";
    let hibernated = Held::measure(&parties, 1000, "", path, args.rooms, false).await?;
    let per_room = hibernated.per() as f64;
    out.figure(
        "rooms",
        "hibernated_rooms",
        hibernated.count as f64,
        "rooms",
    );
    out.figure("rooms", "server_rss_per_hibernated_room", per_room, "bytes");
    out.figure(
        "rooms",
        "beyond_its_connection",
        per_room - per_conn,
        "bytes",
    );
    let marginal = Held::marginal(&parties, path, args.rooms).await? as f64;
    out.figure("rooms", "marginal_per_hibernated_room", marginal, "bytes");
    out.figure(
        "rooms",
        "marginal_beyond_its_connection",
        marginal - per_conn,
        "bytes",
    );

    let extra = format!("[limits]\nawake_rooms = {}\n", args.awake.max(1));
    let path = "/parties/relay/awake-{}";
    let awake = Held::measure(&parties, 600_000, &extra, path, args.awake, true).await?;
    let per_awake = awake.per() as f64;
    out.figure("rooms", "awake_rooms", awake.count as f64, "rooms");
    out.figure("rooms", "server_rss_per_awake_room", per_awake, "bytes");
    out.figure(
        "rooms",
        "awake_beyond_its_connection",
        per_awake - per_conn,
        "bytes",
    );
    Ok(())
}

/// Lockstep relay rounds in one room of `party`: every client sends one
/// message, and the next round starts once every client has the others'.
/// Deliveries per second and the latency of each delivery.
async fn relay_rounds(
    server: &Server,
    party: &str,
    args: &BenchArgs,
) -> anyhow::Result<(f64, Histogram<u64>)> {
    let c = clients(args).max(2);
    let clients = connect_many(server.addr, c, |_| format!("/parties/{party}/relay")).await?;
    let epoch = Instant::now();
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (round_tx, round_rx) = tokio::sync::watch::channel(0u64);
    let mut readers = Vec::new();
    let mut senders = Vec::new();
    let want_per_round = (c * (c - 1)) as u64;
    for (i, ws) in clients.into_iter().enumerate() {
        let (mut sink, mut stream) = ws.split();
        let (delivered, done) = (delivered.clone(), done.clone());
        readers.push(tokio::spawn(async move {
            let mut h = histogram();
            while let Some(Ok(m)) = stream.next().await {
                if let Some((_, sent)) = parse_payload(&m) {
                    let now = epoch.elapsed().as_nanos() as u64;
                    let _ = h.record(now.saturating_sub(sent).max(1));
                    let n = delivered.fetch_add(1, Relaxed) + 1;
                    if n % want_per_round == 0 {
                        done.notify_one();
                    }
                }
            }
            h
        }));
        let mut rounds = round_rx.clone();
        let size = args.size;
        senders.push(tokio::spawn(async move {
            while rounds.changed().await.is_ok() {
                let r = *rounds.borrow_and_update();
                if sink
                    .send(payload(r * 1_000_000 + i as u64, epoch, size))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = sink.close().await;
        }));
    }
    // Two warm-up rounds, then the measured ones.
    let warm = 2;
    let mut started = Instant::now();
    for r in 1..=(warm + args.rounds) as u64 {
        if r == warm as u64 + 1 {
            started = Instant::now();
        }
        round_tx.send(r)?;
        tokio::time::timeout(Duration::from_secs(60), async {
            while delivered.load(Relaxed) < want_per_round * r {
                done.notified().await;
            }
        })
        .await
        .with_context(|| format!("{party}: round {r} never completed (clients closed?)"))?;
    }
    let took = started.elapsed();
    drop(round_tx);
    for s in senders {
        s.await?;
    }
    let mut h = histogram();
    for r in readers {
        h.add(r.await?)?;
    }
    let rate = (want_per_round * args.rounds as u64) as f64 / took.as_secs_f64();
    Ok((rate, h))
}

async fn relay(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    let server = Server::start(&parties, 10_000, "").await?;
    // Two passes each, alternating, so machine noise hits both alike.
    let half = BenchArgs {
        rounds: args.rounds.div_ceil(2),
        ..args.clone()
    };
    let (mut wasm, mut native) = ((0.0, histogram()), (0.0, histogram()));
    for _ in 0..2 {
        let (r, h) = relay_rounds(&server, "relay", &half).await?;
        wasm.0 += r / 2.0;
        wasm.1.add(h)?;
        let (r, h) = relay_rounds(&server, "native", &half).await?;
        native.0 += r / 2.0;
        native.1.add(h)?;
    }
    out.figure("relay", "clients", clients(args) as f64, "clients");
    out.figure("relay", "wasm_deliveries_per_s", wasm.0, "msg/s");
    out.figure("relay", "builtin_deliveries_per_s", native.0, "msg/s");
    out.figure("relay", "wasm_over_builtin", wasm.0 / native.0, "x");
    out.latencies("relay", "wasm_delivery", &wasm.1);
    out.latencies("relay", "builtin_delivery", &native.1);
    server.stop().await;
    Ok(())
}

/// One sender, `args.clients` receivers in a room of `party`: per message,
/// the time until the last receiver has it.
async fn fanout_party(
    server: &Server,
    party: &str,
    args: &BenchArgs,
) -> anyhow::Result<Histogram<u64>> {
    let path = format!("/parties/{party}/fanout");
    let receivers = connect_many(server.addr, clients(args), |_| path.clone()).await?;
    let mut sender = connect(server.addr, &path, clients(args)).await?;
    let epoch = Instant::now();
    let got = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let n = clients(args) as u64;
    let mut tasks = Vec::new();
    for mut ws in receivers {
        let (got, last, done) = (got.clone(), last.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while let Some(Ok(m)) = ws.next().await {
                if parse_payload(&m).is_some() {
                    last.fetch_max(epoch.elapsed().as_nanos() as u64, Relaxed);
                    if got.fetch_add(1, Relaxed) + 1 == n {
                        done.notify_one();
                    }
                }
            }
        }));
    }
    let mut h = histogram();
    for seq in 0..(args.rounds + 2) as u64 {
        got.store(0, Relaxed);
        let message = payload(seq, epoch, args.size);
        let (_, sent) = parse_payload(&message).context("own payload")?;
        sender.send(message).await?;
        tokio::time::timeout(Duration::from_secs(60), done.notified())
            .await
            .with_context(|| format!("{party}: message {seq} never reached every receiver"))?;
        if seq >= 2 {
            let _ = h.record(last.load(Relaxed).saturating_sub(sent).max(1));
        }
    }
    drop(sender);
    for t in &tasks {
        t.abort();
    }
    Ok(h)
}

async fn fanout(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    let server = Server::start(&parties, 600_000, "").await?;
    let wasm = fanout_party(&server, "relay", args).await?;
    let native = fanout_party(&server, "native", args).await?;
    out.figure("fanout", "receivers", clients(args) as f64, "connections");
    out.latencies("fanout", "wasm_last_receiver", &wasm);
    out.latencies("fanout", "builtin_last_receiver", &native);
    let ratio = wasm.value_at_quantile(0.5) as f64 / native.value_at_quantile(0.5).max(1) as f64;
    out.figure("fanout", "wasm_over_builtin_p50", ratio, "x");
    server.stop().await;
    Ok(())
}

/// Messages through a relay room that hibernates after every event (idle
/// timeout 0) and through one that stays awake, interleaved: A sends, B
/// receives. The relay writes nothing, so no fsync hides the wake.
async fn wake(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    let sleepy = Server::start(&parties, 0, "").await?;
    let awake = Server::start(&parties, 600_000, "").await?;
    let path = "/parties/relay/wake";
    let mut s = (
        connect(sleepy.addr, path, 0).await?,
        connect(sleepy.addr, path, 1).await?,
    );
    let mut a = (
        connect(awake.addr, path, 2).await?,
        connect(awake.addr, path, 3).await?,
    );
    for _ in 0..50 {
        relay_trip(&mut s).await?;
        relay_trip(&mut a).await?;
    }
    let before = buckets(&sleepy, "dormouse_wake_seconds").await;
    let (mut hs, mut ha) = (histogram(), histogram());
    for _ in 0..args.rounds {
        hs.record(relay_trip(&mut s).await?)?;
        ha.record(relay_trip(&mut a).await?)?;
    }
    let wakes = since(&buckets(&sleepy, "dormouse_wake_seconds").await, &before);
    out.latencies("wake", "hibernating_room", &hs);
    out.latencies("wake", "awake_room", &ha);
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let added = hs.value_at_quantile(q) as f64 - ha.value_at_quantile(q) as f64;
        out.figure("wake", &format!("added_by_wake_{label}"), added / 1e3, "us");
    }
    for (q, label) in [(0.5, "p50"), (0.99, "p99")] {
        let v = bucket_quantile(&wakes, q) * 1e6;
        out.figure("wake", &format!("dormouse_wake_seconds_{label}"), v, "us");
    }
    sleepy.stop().await;
    awake.stop().await;
    Ok(())
}

/// A sends one message, B has it; nanoseconds.
async fn relay_trip((a, b): &mut (Ws, Ws)) -> anyhow::Result<u64> {
    let t = Instant::now();
    a.send(Message::text("wake")).await?;
    next_text(b).await?;
    Ok(t.elapsed().as_nanos() as u64)
}

/// Every client sends `command` and waits for its answer (sent after the
/// write is durable), for `seconds`; acknowledged writes and the time taken.
async fn hammer(
    clients: Vec<Ws>,
    command: &'static str,
    seconds: u64,
) -> anyhow::Result<(f64, f64)> {
    let acked = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let stop = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for mut ws in clients {
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let _ = ws.next().await; // what on-connect sends
            while Instant::now() < stop {
                if ws.send(Message::text(command)).await.is_err()
                    || next_text(&mut ws).await.is_err()
                {
                    return;
                }
                acked.fetch_add(1, Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    Ok((acked.load(Relaxed) as f64, started.elapsed().as_secs_f64()))
}

/// Wait for the next text message (pings and pongs skipped).
async fn next_text(ws: &mut Ws) -> anyhow::Result<()> {
    loop {
        match ws.next().await.context("closed")?? {
            Message::Text(_) => return Ok(()),
            Message::Close(_) => bail!("closed"),
            _ => {}
        }
    }
}

/// The cumulative buckets of a histogram metric: (upper bound, count), `+Inf` last.
async fn buckets(server: &Server, name: &str) -> Vec<(f64, f64)> {
    let text = get(server.addr, "/_dormouse/metrics")
        .await
        .unwrap_or_default();
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.parse().ok()?))
        })
        .collect()
}

/// What a histogram's cumulative buckets gained between two readings.
fn since(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .zip(before)
        .map(|((le, n), (_, m))| (*le, n - m))
        .collect()
}

/// Prometheus' `histogram_quantile`: linear interpolation inside the bucket.
fn bucket_quantile(buckets: &[(f64, f64)], q: f64) -> f64 {
    let rank = q * buckets.last().map_or(0.0, |(_, n)| *n);
    let mut prev = (0.0, 0.0);
    for &(le, n) in buckets {
        if n >= rank {
            if le.is_infinite() {
                return prev.0;
            }
            let width = n - prev.1;
            let within = if width > 0.0 {
                (rank - prev.1) / width
            } else {
                0.0
            };
            return prev.0 + (le - prev.0) * within;
        }
        prev = (le, n);
    }
    prev.0
}

async fn storage(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    let server = Server::start(&parties, 600_000, "").await?;
    let clients = connect_many(server.addr, args.rooms, |i| {
        format!("/parties/counter/w-{i}")
    })
    .await?;
    let commits_before = server.metric("dormouse_storage_commits_total").await;
    let (acked, took) = hammer(clients, "inc", args.seconds).await?;
    let commits = server.metric("dormouse_storage_commits_total").await - commits_before;
    let writes = acked / took;
    let baseline = one_transaction_per_write(&server.dir, args.seconds)?;
    out.figure("storage", "rooms", args.rooms as f64, "rooms");
    out.figure("storage", "durable_writes_per_s", writes, "writes/s");
    out.figure(
        "storage",
        "sqlite_commits_per_s",
        commits / took,
        "commits/s",
    );
    out.figure(
        "storage",
        "baseline_one_transaction_per_write",
        baseline,
        "writes/s",
    );
    out.figure(
        "storage",
        "durable_writes_over_baseline",
        writes / baseline,
        "x",
    );
    server.stop().await;
    Ok(())
}

/// The baseline: one SQLite transaction per write, same settings as the
/// host's store (WAL, `synchronous=FULL`), same disk; writes per second.
fn one_transaction_per_write(dir: &Path, seconds: u64) -> anyhow::Result<f64> {
    let db = rusqlite::Connection::open(dir.join("baseline.sqlite"))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(None, "synchronous", "FULL")?;
    db.execute("CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB)", [])?;
    let started = Instant::now();
    let mut n: u64 = 0;
    let mut counts: BTreeMap<u64, u64> = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let key = n % 1000;
        let c = counts.entry(key).or_default();
        *c += 1;
        db.execute(
            "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
            rusqlite::params![format!("w-{key}"), c.to_string()],
        )?;
        n += 1;
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_quantile_interpolates_like_prometheus() {
        let b = [(0.001, 50.0), (0.002, 100.0), (f64::INFINITY, 100.0)];
        assert!((bucket_quantile(&b, 0.5) - 0.001).abs() < 1e-9);
        assert!((bucket_quantile(&b, 0.75) - 0.0015).abs() < 1e-9);
    }

    #[test]
    fn payload_round_trips() {
        let epoch = Instant::now();
        let m = payload(7, epoch, 64);
        let (seq, _) = parse_payload(&m).expect("parses");
        assert_eq!((seq, m.len()), (7, 64));
    }
}
