//! The end-to-end test harness: builds the real guest components once, runs
//! a real host on 127.0.0.1, and talks to it over real sockets.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use dormouse_host::config::{Config, Limits, PartyConfig, PartyLimits};
use dormouse_host::host::Host;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A WebSocket client.
pub type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// The guests the tests use: the examples and the test guests.
const GUESTS: [&str; 8] = [
    "relay",
    "counter",
    "chat",
    "alarm-clock",
    "probe",
    "counter-ten",
    "yjs",
    "todos-sql",
];

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// Tear a deployed version's component file in a stopped server's data dir
/// (a third of it is left, as after a crash mid-write) and drop its
/// precompiled form.
pub fn tear_version(data_dir: &Path, component: &[u8]) {
    let hash = dormouse_host::host::deploys::versions::hash(component);
    for entry in std::fs::read_dir(data_dir.join("versions"))
        .expect("versions dir")
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == format!("{hash}.wasm") {
            std::fs::write(entry.path(), &component[..component.len() / 3]).expect("tear");
        } else if name.starts_with(&hash) {
            std::fs::remove_file(entry.path()).expect("remove");
        }
    }
}

/// The component of a guest, built once per test run through the same code
/// as `dormouse build` (into its own target dir, so it never waits on the
/// outer cargo's lock).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = repo();
        dormouse::project::build_packages(
            &root.join("Cargo.toml"),
            &GUESTS,
            &root.join("target").join("test-guests"),
        )
        .map(|v| v.into_iter().collect())
        .map_err(|e| format!("{e:#}"))
    });
    if name.ends_with("-ts") || name.ends_with("-py") {
        return other_language_guest(name);
    }
    match built {
        Ok(map) => map
            .get(name)
            .unwrap_or_else(|| panic!("guest {name} was not built"))
            .clone(),
        Err(e) => panic!("building the guests failed: {e}"),
    }
}

/// A TypeScript or Python guest (`examples/NAME` or `tests/guests/NAME`),
/// built once per test run through `dormouse build`'s own code (esbuild and
/// componentize-js, or componentize-py; seconds each).
fn other_language_guest(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Option<HashMap<String, Result<PathBuf, String>>>> =
        std::sync::Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let built = built.get_or_insert_with(HashMap::new);
    let result = built.entry(name.to_owned()).or_insert_with(|| {
        let example = repo().join("examples").join(name);
        let dir = if example.is_dir() {
            example
        } else {
            repo().join("tests").join("guests").join(name)
        };
        dormouse::project::build(&dir).map_err(|e| format!("{e:#}"))
    });
    match result {
        Ok(path) => path.clone(),
        Err(e) => panic!("building {name} failed: {e}"),
    }
}

/// Where the test hosts share compiled components: each compiles once per
/// run (a TypeScript room takes seconds to compile).
pub fn compile_cache() -> PathBuf {
    repo().join("target").join("test-compile-cache")
}

/// A fresh directory for a test's SQLite files.
pub fn data_dir() -> PathBuf {
    let dir = repo()
        .join("target")
        .join("test-data")
        .join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&dir).expect("test data dir");
    dir
}

/// What a test server serves.
#[derive(Clone)]
pub struct Options {
    /// (party name, guest name).
    pub parties: Vec<(&'static str, &'static str)>,
    pub idle_timeout_ms: u64,
    pub data_dir: PathBuf,
    /// Bind this address (to restart on the same port); default: port 0.
    pub listen: Option<SocketAddr>,
    pub limits: Limits,
    /// Builtin relay parties (no Wasm), by name.
    pub builtins: Vec<&'static str>,
    /// Limits of one party, over `limits`.
    pub party_limits: Vec<(&'static str, PartyLimits)>,
    /// Vars given to every party.
    pub vars: Vec<(&'static str, &'static str)>,
    pub ping_interval_ms: u64,
    pub admin_token: Option<String>,
    /// Versions of each party kept (`versions_kept`).
    pub versions_kept: u32,
    /// Crons: (party, name, schedule).
    pub crons: Vec<(&'static str, &'static str, &'static str)>,
}

impl Options {
    /// One party `main` running `guest`.
    pub fn main(guest: &'static str) -> Options {
        Options {
            parties: vec![("main", guest)],
            idle_timeout_ms: 10_000,
            data_dir: data_dir(),
            listen: None,
            limits: Limits {
                awake_rooms: 50,
                ..Limits::default()
            },
            builtins: Vec::new(),
            party_limits: Vec::new(),
            vars: Vec::new(),
            ping_interval_ms: 30_000,
            admin_token: None,
            versions_kept: Config::default().versions_kept,
            crons: Vec::new(),
        }
    }

    pub fn idle(mut self, ms: u64) -> Options {
        self.idle_timeout_ms = ms;
        self
    }
}

/// A host running in this process, serving on 127.0.0.1.
pub struct Server {
    pub addr: SocketAddr,
    pub host: Arc<Host>,
    pub options: Options,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Panics on the runtime's worker threads: the host's own tasks. The host
/// must never panic, and tokio would otherwise swallow a task's panic.
static HOST_PANICS: AtomicUsize = AtomicUsize::new(0);

fn watch_for_host_panics() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let on_worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("tokio-"));
            if on_worker {
                HOST_PANICS.fetch_add(1, Ordering::SeqCst);
            }
            default(info);
        }));
    });
}

impl Server {
    pub async fn start(options: Options) -> Server {
        watch_for_host_panics();
        let mut config = Config {
            idle_timeout_ms: options.idle_timeout_ms,
            data_dir: options.data_dir.clone(),
            compile_cache_dir: Some(compile_cache()),
            limits: options.limits.clone(),
            ping_interval_ms: options.ping_interval_ms,
            admin_token: options.admin_token.clone(),
            versions_kept: options.versions_kept,
            ..Config::default()
        };
        for (party, g) in &options.parties {
            config.parties.insert(
                (*party).to_owned(),
                PartyConfig {
                    component: Some(guest(g)),
                    krate: None,
                    builtin: None,
                    vars: options
                        .vars
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                    limits: options
                        .party_limits
                        .iter()
                        .find(|(p, _)| p == party)
                        .map(|(_, l)| l.clone())
                        .unwrap_or_default(),
                    crons: options
                        .crons
                        .iter()
                        .filter(|(p, _, _)| p == party)
                        .map(|(_, name, schedule)| dormouse_host::config::CronConfig {
                            name: (*name).to_owned(),
                            schedule: (*schedule).to_owned(),
                        })
                        .collect(),
                },
            );
        }
        for name in &options.builtins {
            let party = PartyConfig {
                component: None,
                krate: None,
                builtin: Some(dormouse_host::config::BUILTIN_RELAY.into()),
                vars: Default::default(),
                limits: Default::default(),
                crons: Vec::new(),
            };
            config.parties.insert((*name).to_owned(), party);
        }
        let host = Host::new(config).expect("host starts");
        let listen = options
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener = TcpListener::bind(listen).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(dormouse_host::edge::server::run(listener, host.clone()));
        Server {
            addr,
            host,
            options,
            task,
        }
    }

    /// Shut down as SIGTERM would, and wait for it.
    pub async fn stop(self) -> Options {
        self.host.shutdown().cancel();
        let r = tokio::time::timeout(WAIT, self.task).await;
        assert!(matches!(r, Ok(Ok(Ok(())))), "server stops cleanly");
        assert_eq!(
            HOST_PANICS.load(Ordering::SeqCst),
            0,
            "a host task panicked (see the output above)"
        );
        let mut options = self.options;
        options.listen = Some(self.addr);
        options
    }

    /// Open a WebSocket to `path` (e.g. `/parties/main/room`).
    pub async fn ws(&self, path: &str) -> Client {
        let url = format!("ws://{}{}", self.addr, path);
        let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("connect");
        ws
    }

    /// One HTTP/1.1 request; the status and body.
    pub async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        http(self.addr, method, path, body)
            .await
            .expect("http request")
    }

    /// An admin API request with a bearer token (or none); status and body.
    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        token: Option<&str>,
    ) -> (u16, String) {
        let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        raw_http(self.addr, &request).await.expect("admin request")
    }

    /// The value of one metric line (name with labels, as printed).
    pub async fn metric(&self, series: &str) -> f64 {
        let (_, text) = self.http("GET", "/_dormouse/metrics", "").await;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Wait until a metric has a value.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let v = self.metric(series).await;
            if v == value {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{series} stayed {v}, wanted {value}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A raw HTTP/1.1 request over a fresh TCP connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    raw_http(addr, req.as_bytes()).await
}

/// Send raw request bytes; the status and body of the answer.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request).await?;
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw))
        .await
        .context("response in time")??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").context("no header end")?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("no status")?;
    Ok((status, body.to_owned()))
}

/// Wait (up to [`WAIT`]) for a line of the host's log whose message holds
/// `needle`; a log stream from `server.host.logs().subscribe()`.
pub async fn logged(
    logs: &mut tokio::sync::broadcast::Receiver<Arc<dormouse_host::logs::LogLine>>,
    needle: &str,
) {
    tokio::time::timeout(WAIT, async {
        while !logs
            .recv()
            .await
            .expect("log stream open")
            .message
            .contains(needle)
        {}
    })
    .await
    .unwrap_or_else(|_| panic!("no log line says {needle:?}"));
}

/// Send a text command and return the next text message: the answer.
pub async fn ask(ws: &mut Client, command: &str) -> String {
    send_text(ws, command).await;
    recv_text(ws).await
}

/// The next text message, within [`WAIT`].
pub async fn recv_text(ws: &mut Client) -> String {
    match recv(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// The next data or close message (pongs skipped), within [`WAIT`].
pub async fn recv(ws: &mut Client) -> Message {
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a message in time")
            .expect("socket open")
            .expect("no socket error");
        if !matches!(next, Message::Pong(_) | Message::Ping(_)) {
            return next;
        }
    }
}

/// Assert nothing arrives for a moment.
pub async fn silent(ws: &mut Client, for_: Duration) {
    if let Ok(m) = tokio::time::timeout(for_, ws.next()).await {
        panic!("expected silence, got {m:?}");
    }
}

pub async fn send_text(ws: &mut Client, text: &str) {
    ws.send(Message::text(text)).await.expect("send");
}

/// A ping answered with a pong: the socket is open and served.
pub async fn ping(ws: &mut Client) -> anyhow::Result<()> {
    ws.send(Message::Ping(b"p".to_vec().into())).await?;
    loop {
        let next = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("pong in time")?
            .context("socket closed")??;
        match next {
            Message::Pong(_) => return Ok(()),
            Message::Close(f) => bail!("closed: {f:?}"),
            _ => {}
        }
    }
}

/// The bytes of a WebSocket upgrade request for `path`.
pub fn upgrade_request(server: &Server, path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        server.addr
    )
}

/// A WebSocket handshake by hand, so the test can then write any bytes at all.
pub async fn raw_ws(server: &Server, path: &str) -> TcpStream {
    let mut tcp = TcpStream::connect(server.addr).await.expect("connect");
    let request = upgrade_request(server, path);
    tcp.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte).await.expect("handshake answer");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A client frame: FIN, the given opcode and extra first-byte bits, masked
/// unless `mask` is false.
pub fn frame(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut f = vec![first];
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => f.push(m | n as u8),
        n if n <= 0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(m | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if mask {
        let key = [0x12, 0x34, 0x56, 0x78];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        f.extend_from_slice(payload);
    }
    f
}

/// The server's close frame, code and reason (data frames before it skipped).
pub async fn close_frame(tcp: &mut TcpStream) -> (u16, String) {
    let read = async {
        loop {
            let mut head = [0u8; 2];
            tcp.read_exact(&mut head)
                .await
                .expect("a frame, not a reset");
            let len = match head[1] & 0x7f {
                126 => u64::from(tcp.read_u16().await.expect("len")),
                127 => tcp.read_u64().await.expect("len"),
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            tcp.read_exact(&mut payload).await.expect("payload");
            if head[0] & 0x0f == 0x8 {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .expect("a close frame in time")
}

/// `npm install` in tests/node once, when its packages are missing.
async fn npm_install() {
    let dir = repo().join("tests").join("node");
    let packages = [
        "partysocket",
        "ws",
        "yjs",
        "y-protocols",
        "y-websocket",
        "y-partykit",
    ];
    if packages
        .iter()
        .all(|p| dir.join("node_modules").join(p).is_dir())
    {
        return;
    }
    let status = tokio::process::Command::new("npm")
        .args(["install", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .status()
        .await
        .expect("npm runs (node and npm are required for this test)");
    assert!(status.success(), "npm install failed");
}

/// Run a script of tests/node (its packages installed first) with `args`;
/// the process (killed when dropped) and its stdout's lines.
pub async fn node(
    script: &str,
    args: &[&str],
) -> (
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) {
    npm_install().await;
    let mut child = tokio::process::Command::new("node")
        .arg(repo().join("tests").join("node").join(script))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node runs (node is required for this test)");
    let stdout = child.stdout.take().expect("stdout is piped");
    (
        child,
        tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout)),
    )
}

/// One test per language a room is written in: `in_each_language!(NAME:
/// rust => "relay", ts => "relay-ts")` makes the tests `NAME::rust` and
/// `NAME::ts`, each running `async fn NAME(guest: &'static str)`.
#[macro_export]
macro_rules! in_each_language {
    ($name:ident: $($lang:ident => $guest:literal),+ $(,)?) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $lang() {
                    super::$name($guest).await
                }
            )+
        }
    };
}

/// Run a script of tests/node to its end (within three waits); the lines it
/// printed. It must exit with success.
pub async fn node_lines(script: &str, args: &[&str]) -> Vec<String> {
    let (mut child, mut lines) = node(script, args).await;
    let mut out = Vec::new();
    let read = async {
        while let Some(line) = lines.next_line().await.expect("node stdout") {
            out.push(line);
        }
    };
    tokio::time::timeout(WAIT * 3, read)
        .await
        .unwrap_or_else(|_| panic!("{script} {args:?} ended in time"));
    let status = child.wait().await.expect("node exits");
    assert!(status.success(), "{script} {args:?} failed after: {out:?}");
    out
}
