//! The cluster tests' clients: list-append and read operations on the
//! ledger guest over WebSockets, each recorded with its invoke and complete
//! times (one machine, one clock). An append whose answer never came is
//! retried with the same idempotency id on a new socket, as a client that
//! cannot tell a lost request from a lost answer must.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long a client waits for an answer before it takes the socket as lost.
const ANSWER: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub enum Kind {
    Append {
        value: String,
    },
    /// What the read saw (`None`: no answer).
    Read {
        seen: Option<Vec<String>>,
    },
}

/// One operation of the history. Times are the wall clock, which the
/// nodes' PostgreSQL shares (the checker compares them with claim times).
#[derive(Debug, Clone)]
pub struct Op {
    pub room: String,
    pub kind: Kind,
    pub invoke: SystemTime,
    /// When the answer came; `None` when it never did (outcome unknown).
    pub complete: Option<SystemTime>,
    /// The node that answered.
    pub node: Option<String>,
}

/// A read's answer, `list KEY NODE V1,V2,...`: the node and the values.
pub fn parse_list(answer: &str) -> (String, Vec<String>) {
    let mut words = answer.splitn(4, ' ').skip(2);
    let node = words.next().unwrap_or_default().to_owned();
    let values = words
        .next()
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    (node, values)
}

/// An append's answer, `ok IDEM NODE`: the node.
pub fn answered_by(answer: &str) -> String {
    answer.rsplit(' ').next().unwrap_or_default().to_owned()
}

/// A tiny deterministic generator (xorshift), seeded per client.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

pub struct Workload {
    pub history: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Workload {
    /// `clients` clients on `rooms` rooms through `port` (HAProxy's), each
    /// pausing `pause` between operations, until stopped.
    pub fn start(port: u16, rooms: usize, clients: usize, pause: Duration, seed: u64) -> Workload {
        let history = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let clients = (0..clients)
            .map(|c| {
                let (h, s) = (history.clone(), stop.clone());
                tokio::spawn(client(port, rooms, c, seed, pause, h, s))
            })
            .collect();
        Workload {
            history,
            stop,
            clients,
        }
    }

    /// Stop the clients; each finishes (or gives up on) its current operation.
    pub async fn stop(self) -> Vec<Op> {
        self.stop.store(true, Relaxed);
        for c in self.clients {
            let _ = c.await;
        }
        std::mem::take(&mut *self.history.lock().expect("history"))
    }

    /// Appends acknowledged so far.
    pub fn acked(&self) -> usize {
        let h = self.history.lock().expect("history");
        h.iter()
            .filter(|o| matches!(o.kind, Kind::Append { .. }) && o.complete.is_some())
            .count()
    }
}

/// Every other room keeps its lists in SQL (the ledger's `sql` rooms), so
/// every run checks SQL storage beside key-value storage.
pub fn room_name(i: usize) -> String {
    if i % 2 == 1 {
        format!("sql{i}")
    } else {
        format!("r{i}")
    }
}

async fn connect(port: u16, room: &str) -> Option<Ws> {
    let url = format!("ws://127.0.0.1:{port}/parties/ledger/{room}");
    match tokio::time::timeout(ANSWER, tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((ws, _))) => Some(ws),
        _ => None,
    }
}

/// Send one command and wait for the answer that starts with `expect`.
pub async fn ask(ws: &mut Ws, command: &str, expect: &str) -> Option<String> {
    ws.send(Message::text(command)).await.ok()?;
    let deadline = tokio::time::Instant::now() + ANSWER;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) if t.starts_with(expect) => return Some(t.to_string()),
            Ok(Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)))) => {}
            _ => return None,
        }
    }
}

/// Ask until answered (each try on a fresh socket after the first), or
/// until the workload stops. The invoke time is the first try's.
async fn until_answered(
    port: u16,
    room: &str,
    ws: &mut Option<Ws>,
    command: &str,
    expect: &str,
    stop: &AtomicBool,
) -> Option<String> {
    loop {
        if ws.is_none() {
            *ws = connect(port, room).await;
        }
        if let Some(s) = ws.as_mut()
            && let Some(answer) = ask(s, command, expect).await
        {
            return Some(answer);
        }
        *ws = None;
        if stop.load(Relaxed) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn client(
    port: u16,
    rooms: usize,
    c: usize,
    seed: u64,
    pause: Duration,
    history: Arc<Mutex<Vec<Op>>>,
    stop: Arc<AtomicBool>,
) {
    let mut rng = Rng::new(seed ^ (c as u64 + 1));
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        let room = room_name(rng.below(rooms));
        let mut ws = None;
        for _ in 0..8 {
            if stop.load(Relaxed) {
                break;
            }
            n += 1;
            let invoke = SystemTime::now();
            let op = if rng.below(4) == 0 {
                let answer = until_answered(port, &room, &mut ws, "read x", "list x", &stop).await;
                let parsed = answer.as_deref().map(parse_list);
                Op {
                    complete: parsed.as_ref().map(|_| SystemTime::now()),
                    node: parsed.as_ref().map(|(node, _)| node.clone()),
                    kind: Kind::Read {
                        seen: parsed.map(|(_, seen)| seen),
                    },
                    room: room.clone(),
                    invoke,
                }
            } else {
                let value = format!("s{seed}c{c}n{n}");
                let command = format!("append x {value} {value}");
                let answer = until_answered(port, &room, &mut ws, &command, "ok", &stop).await;
                Op {
                    complete: answer.as_ref().map(|_| SystemTime::now()),
                    node: answer.as_deref().map(answered_by),
                    kind: Kind::Append { value },
                    room: room.clone(),
                    invoke,
                }
            };
            history.lock().expect("history").push(op);
            tokio::time::sleep(pause).await;
        }
    }
}
