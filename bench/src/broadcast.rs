//! `dormouse bench broadcast`: one sender and N receivers in a room, unloaded,
//! on four servers side by side: the Wasm relay, the builtin relay, a
//! minimal tokio-tungstenite relay (the floor, `dormouse bench-floor`) and a
//! Node `ws` relay.
//!
//! The receivers are read on one thread with epoll (mio), each costing the
//! client one readiness event and one read, and not with a task and a
//! WebSocket parser each: with 199 receiver tasks in the client on the same
//! two cores, the time to the last receiver was ~10 us a receiver of the
//! client's own work, which hid the servers' difference under its noise.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::{
    BenchArgs, Parties, Report, Server, Ws, connect, connect_many, histogram, parse_payload,
    payload,
};

/// `dormouse bench-floor`: a minimal tokio-tungstenite relay, the floor the
/// broadcast scenario measures Dormouse against: a task per socket, an
/// unbounded channel per socket, every message to every other socket of the
/// same path. No storage, no rooms, no limits.
#[derive(clap::Args, Debug)]
pub struct FloorArgs {
    #[arg(long)]
    pub addr: SocketAddr,
}

type Peers = Arc<
    std::sync::Mutex<BTreeMap<String, Vec<(u64, tokio::sync::mpsc::UnboundedSender<Message>)>>>,
>;

pub async fn floor(args: FloorArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    let rooms: Peers = Arc::default();
    let mut next_id = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        next_id += 1;
        let (id, rooms) = (next_id, rooms.clone());
        tokio::spawn(async move {
            let mut path = String::new();
            #[allow(clippy::result_large_err, reason = "tungstenite's callback type")]
            let callback = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                            resp| {
                path = req.uri().path().to_owned();
                Ok(resp)
            };
            let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                return;
            };
            let (mut sink, mut stream) = ws.split();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            rooms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(path.clone())
                .or_default()
                .push((id, tx));
            let writer = tokio::spawn(async move {
                while let Some(m) = rx.recv().await {
                    if sink.send(m).await.is_err() {
                        break;
                    }
                }
            });
            while let Some(Ok(m)) = stream.next().await {
                if !(m.is_text() || m.is_binary()) {
                    continue;
                }
                let peers = rooms.lock().unwrap_or_else(|e| e.into_inner());
                for (peer, tx) in peers.get(&path).into_iter().flatten() {
                    if *peer != id {
                        let _ = tx.send(m.clone());
                    }
                }
            }
            if let Some(peers) = rooms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&path)
            {
                peers.retain(|(peer, _)| *peer != id);
            }
            writer.abort();
        });
    }
}

/// A Node `ws` relay: the same as the floor, as Node users write it.
const NODE_RELAY: &str = r#"
const { WebSocketServer } = require(process.argv[2]);
const rooms = new Map();
const wss = new WebSocketServer({ host: "127.0.0.1", port: Number(process.argv[3]) });
wss.on("connection", (ws, req) => {
  const room = req.url.split("?")[0];
  if (!rooms.has(room)) rooms.set(room, new Set());
  const peers = rooms.get(room);
  peers.add(ws);
  ws.on("message", (data, isBinary) => {
    for (const peer of peers) if (peer !== ws && peer.readyState === 1) peer.send(data, { binary: isBinary });
  });
  ws.on("close", () => peers.delete(ws));
});
wss.on("listening", () => console.log("listening"));
"#;

/// A baseline relay in a child process, on a free loopback port.
struct Baseline {
    child: Child,
    addr: SocketAddr,
}

impl Baseline {
    async fn start(mut command: Command, addr: SocketAddr) -> anyhow::Result<Baseline> {
        let child = command
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a baseline relay")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("the baseline relay on {addr} never listened");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Baseline { child, addr })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// What one audience's receivers have had of the current message.
struct Tally {
    receivers: u64,
    got: AtomicU64,
    first: AtomicU64,
    last: AtomicU64,
    done: Notify,
}

impl Tally {
    fn new(receivers: usize) -> Tally {
        Tally {
            receivers: receivers as u64,
            got: AtomicU64::new(0),
            first: AtomicU64::new(u64::MAX),
            last: AtomicU64::new(0),
            done: Notify::new(),
        }
    }

    fn reset(&self) {
        self.got.store(0, Relaxed);
        self.first.store(u64::MAX, Relaxed);
        self.last.store(0, Relaxed);
    }

    fn arrived(&self, now: u64) {
        self.first.fetch_min(now, Relaxed);
        self.last.fetch_max(now, Relaxed);
        if self.got.fetch_add(1, Relaxed) + 1 == self.receivers {
            self.done.notify_one();
        }
    }
}

/// One receiving socket on the reader thread, with the bytes of a frame
/// that has not wholly arrived.
struct Receiver {
    tcp: mio::net::TcpStream,
    tally: Arc<Tally>,
    buf: Vec<u8>,
}

impl Receiver {
    /// Take every whole frame from `buf`; tally each of our payloads.
    fn frames(&mut self, now: u64) {
        let mut at = 0;
        loop {
            let b = &self.buf[at..];
            if b.len() < 2 {
                break;
            }
            // Servers send unmasked frames.
            let (header, len) = match b[1] & 0x7F {
                126 if b.len() >= 4 => (4, usize::from(u16::from_be_bytes([b[2], b[3]]))),
                127 if b.len() >= 10 => (
                    10,
                    u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                ),
                126 | 127 => break,
                n => (2, usize::from(n)),
            };
            if b.len() < header + len {
                break;
            }
            let opcode = b[0] & 0x0F;
            // Binary, ours (pings and anything else are skipped).
            if opcode == 0x2 && len >= 16 {
                self.tally.arrived(now);
            }
            at += header + len;
        }
        self.buf.drain(..at);
    }
}

/// The thread that reads every receiver of every audience.
struct Reader {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn start(receivers: Vec<Receiver>, epoch: Instant) -> anyhow::Result<Reader> {
        let poll = mio::Poll::new()?;
        let mut receivers = receivers;
        for (i, r) in receivers.iter_mut().enumerate() {
            poll.registry()
                .register(&mut r.tcp, mio::Token(i), mio::Interest::READABLE)?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut poll = poll;
            let mut events = mio::Events::with_capacity(1024);
            let mut chunk = vec![0u8; 64 << 10];
            while !stopping.load(Relaxed) {
                if poll
                    .poll(&mut events, Some(Duration::from_millis(100)))
                    .is_err()
                {
                    continue;
                }
                for event in &events {
                    let r = &mut receivers[event.token().0];
                    // Edge-triggered: read until it would block.
                    loop {
                        match r.tcp.read(&mut chunk) {
                            Ok(0) => break,
                            Ok(n) => {
                                let now = epoch.elapsed().as_nanos() as u64;
                                r.buf.extend_from_slice(&chunk[..n]);
                                r.frames(now);
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                }
            }
        });
        Ok(Reader {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One sender and its receivers in one room of one server.
struct Audience {
    name: &'static str,
    sender: Ws,
    tally: Arc<Tally>,
    first_h: Histogram<u64>,
    last_h: Histogram<u64>,
}

impl Audience {
    /// Connect the receivers (handed back, for the reader thread) and the sender.
    async fn join(
        name: &'static str,
        addr: SocketAddr,
        path: &str,
        n: usize,
    ) -> anyhow::Result<(Audience, Vec<Receiver>)> {
        let tally = Arc::new(Tally::new(n));
        let mut receivers = Vec::with_capacity(n);
        for ws in connect_many(addr, n, |_| path.to_owned()).await? {
            // No server says anything before the first broadcast, so
            // tungstenite holds no bytes of ours.
            let tcp = ws.into_inner().into_std()?;
            receivers.push(Receiver {
                tcp: mio::net::TcpStream::from_std(tcp),
                tally: tally.clone(),
                buf: Vec::new(),
            });
        }
        let sender = connect(addr, path, n).await?;
        let audience = Audience {
            name,
            sender,
            tally,
            first_h: histogram(),
            last_h: histogram(),
        };
        Ok((audience, receivers))
    }

    /// One message to every receiver; records the times after warm-up.
    async fn round(&mut self, seq: u64, epoch: Instant, size: usize) -> anyhow::Result<()> {
        self.tally.reset();
        let message = payload(seq, epoch, size);
        let (_, sent) = parse_payload(&message).context("own payload")?;
        self.sender.send(message).await?;
        tokio::time::timeout(Duration::from_secs(60), self.tally.done.notified())
            .await
            .with_context(|| {
                format!("{}: message {seq} never reached every receiver", self.name)
            })?;
        if seq >= 5 {
            let first = self.tally.first.load(Relaxed);
            let last = self.tally.last.load(Relaxed);
            let _ = self.first_h.record(first.saturating_sub(sent).max(1));
            let _ = self.last_h.record(last.saturating_sub(sent).max(1));
        }
        Ok(())
    }
}

pub(crate) async fn broadcast(args: &BenchArgs, out: &mut Report) -> anyhow::Result<()> {
    let parties = Parties::build(&args.examples)?;
    let server = Server::start(&parties, 600_000, "").await?;
    let floor_addr = free_addr()?;
    let mut command = Command::new(std::env::current_exe()?);
    command.args(["bench-floor", "--addr", &floor_addr.to_string()]);
    let floor = Baseline::start(command, floor_addr).await?;
    let ws_module = args.examples.join("../tests/node/node_modules/ws");
    let node = if ws_module.is_dir()
        && std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_ok()
    {
        let addr = free_addr()?;
        let script =
            std::env::temp_dir().join(format!("dormouse-node-relay-{}.cjs", uuid::Uuid::new_v4()));
        std::fs::write(&script, NODE_RELAY)?;
        let mut command = Command::new("node");
        command
            .arg(&script)
            .arg(std::fs::canonicalize(&ws_module)?)
            .arg(addr.port().to_string());
        Some(Baseline::start(command, addr).await?)
    } else {
        println!(
            "# broadcast: no node, or no tests/node/node_modules/ws (npm ci there): the Node baseline is left out"
        );
        None
    };
    let counts = match args.clients {
        Some(n) => vec![n],
        None => vec![49, 199],
    };
    for n in counts {
        let epoch = Instant::now();
        let path = format!("/parties/relay/broadcast-{n}");
        let native_path = format!("/parties/native/broadcast-{n}");
        let mut servers = vec![
            ("wasm", server.addr, &path),
            ("builtin", server.addr, &native_path),
            ("floor", floor.addr, &path),
        ];
        if let Some(node) = &node {
            servers.push(("node_ws", node.addr, &path));
        }
        let mut audiences = Vec::new();
        let mut receivers = Vec::new();
        for (name, addr, path) in servers {
            let (audience, mut theirs) = Audience::join(name, addr, path, n).await?;
            audiences.push(audience);
            receivers.append(&mut theirs);
        }
        let reader = Reader::start(receivers, epoch)?;
        // In turn, message by message, so noise hits every server alike.
        for seq in 0..(args.rounds + 5) as u64 {
            for a in &mut audiences {
                a.round(seq, epoch, args.size).await?;
            }
        }
        drop(reader);
        let scenario = format!("broadcast{n}");
        out.figure(&scenario, "receivers", n as f64, "connections");
        for a in &audiences {
            out.latencies(&scenario, &format!("{}_first", a.name), &a.first_h);
            out.latencies(&scenario, &format!("{}_last", a.name), &a.last_h);
        }
        if let Some(node) = audiences.iter().find(|a| a.name == "node_ws") {
            for a in audiences.iter().filter(|a| a.name != "node_ws") {
                let ratio = |h: &Histogram<u64>, base: &Histogram<u64>| {
                    h.value_at_quantile(0.5) as f64 / base.value_at_quantile(0.5).max(1) as f64
                };
                out.figure(
                    &scenario,
                    &format!("{}_last_over_node_p50", a.name),
                    ratio(&a.last_h, &node.last_h),
                    "x",
                );
                out.figure(
                    &scenario,
                    &format!("{}_first_over_node_p50", a.name),
                    ratio(&a.first_h, &node.first_h),
                    "x",
                );
            }
        }
    }
    floor.stop().await;
    if let Some(node) = node {
        node.stop().await;
    }
    server.stop().await;
    Ok(())
}
