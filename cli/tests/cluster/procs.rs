//! The cluster tests' processes: a PostgreSQL of their own (initdb into a
//! temporary dir, on its own port, as the `postgres` user when run as root),
//! HAProxy with the repo's `deploy/haproxy.cfg`, and `dormouse serve
//! --cluster` nodes. Each can be killed, paused and restarted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_owned()
}

/// Fail with one line naming what is missing.
pub fn require(program: &str, package: &str) {
    let found = std::process::Command::new(program)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "{program} is missing: install Debian's {package} (scripts/test.sh does)"
    );
}

/// A free port on 127.0.0.1 (bound, then let go).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// PostgreSQL refuses to run as root: as root, run it as `postgres`
/// (set on the process itself, with no wrapper in between, so that a
/// signal reaches the postmaster).
fn as_pg_user(program: &str) -> Command {
    let mut c = Command::new(program);
    if is_root() {
        let id = |flag: &str| -> u32 {
            let out = std::process::Command::new("id")
                .args([flag, "postgres"])
                .output()
                .expect("id runs");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .expect("the postgres user exists (Debian's postgresql makes it)")
        };
        c.uid(id("-u")).gid(id("-g"));
    }
    c
}

/// Debian puts the server programs outside PATH.
fn pg_bin(program: &str) -> String {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return program.to_owned();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    versions.sort();
    let bin = versions
        .last()
        .map(|v| v.join("bin").join(program))
        .filter(|p| p.exists());
    match bin {
        Some(p) => p.display().to_string(),
        None => panic!("{program} is missing: install Debian's postgresql (scripts/test.sh does)"),
    }
}

pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Postgres {
    pub async fn start() -> Postgres {
        let dir = std::env::temp_dir().join(format!("dormouse-pg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("pg dir");
        if is_root() {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "cannot give {} to the postgres user", dir.display());
        }
        let out = as_pg_user(&pg_bin("initdb"))
            .args(["-A", "trust", "-U", "dormouse", "--no-sync", "-D"])
            .arg(dir.join("data"))
            .output()
            .await
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            dir,
            port: free_port(),
            child: None,
        };
        pg.restart().await;
        pg
    }

    pub fn url(&self) -> String {
        format!("postgres://dormouse@127.0.0.1:{}/postgres", self.port)
    }

    /// Start the server (again) on the same data dir and port.
    pub async fn restart(&mut self) {
        let log =
            std::fs::File::create(self.dir.join(format!("log-{}", self.port))).expect("pg log");
        let spawn = || {
            as_pg_user(&pg_bin("postgres"))
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-p", &self.port.to_string(), "-k"])
                .arg(&self.dir)
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "max_connections=200",
                ])
                .stdout(Stdio::null())
                .stderr(log.try_clone().expect("pg log"))
                .kill_on_drop(true)
                .spawn()
                .expect("postgres starts")
        };
        let mut child = spawn();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            // After a kill -9, the old backends may hold the data dir for
            // a moment: start again until it stays up.
            if child.try_wait().is_ok_and(|s| s.is_some()) {
                tokio::time::sleep(Duration::from_millis(300)).await;
                child = spawn();
            }
            if tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
                .await
                .is_ok()
            {
                self.child = Some(child);
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "postgres did not start (log in {})",
                self.dir.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGSTOP the server and every backend: PostgreSQL hangs with its
    /// connections open (a stall, which no error reports), until
    /// [`Postgres::resume`].
    pub fn pause(&self) {
        for pid in self.family() {
            kill(pid, "STOP");
        }
    }

    pub fn resume(&self) {
        for pid in self.family() {
            kill(pid, "CONT");
        }
    }

    /// The postmaster and its children (the backends), from `/proc`.
    fn family(&self) -> Vec<u32> {
        let Some(root) = self.child.as_ref().and_then(|c| c.id()) else {
            return Vec::new();
        };
        let mut pids = vec![root];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // After the command name's closing parenthesis: state, then ppid.
            let ppid = stat
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(root) {
                pids.push(pid);
            }
        }
        pids
    }

    /// kill -9 the postmaster: its backends exit, as in a crash.
    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "KILL");
            let _ = c.wait().await;
        }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test's postgres");
        tokio::spawn(conn);
        client
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            signal(c, "KILL");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Send a signal by name to a child.
pub fn signal(child: &Child, name: &str) {
    if let Some(pid) = child.id() {
        kill(pid, name);
    }
}

fn kill(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

pub struct Haproxy {
    pub port: u16,
    _child: Child,
    _dir: tempdir::Dir,
}

impl Haproxy {
    /// HAProxy with `deploy/haproxy.cfg`, listening on a port of its own,
    /// in front of `nodes`.
    pub async fn start(nodes: &[String]) -> Haproxy {
        require("haproxy", "haproxy");
        let shipped =
            std::fs::read_to_string(repo().join("deploy/haproxy.cfg")).expect("deploy/haproxy.cfg");
        let port = free_port();
        let mut cfg = String::new();
        for line in shipped.lines() {
            let t = line.trim_start();
            if t.starts_with("server ") {
                continue;
            }
            if t.starts_with("bind ") {
                cfg += &format!("    bind 127.0.0.1:{port}\n");
                continue;
            }
            cfg += line;
            cfg.push('\n');
        }
        for (i, addr) in nodes.iter().enumerate() {
            cfg += &format!("    server n{} {addr} check\n", i + 1);
        }
        let dir = tempdir::Dir::new("dormouse-haproxy");
        let path = dir.0.join("haproxy.cfg");
        std::fs::write(&path, cfg).expect("write haproxy.cfg");
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("haproxy starts");
        wait_port(port).await;
        Haproxy {
            port,
            _child: child,
            _dir: dir,
        }
    }
}

/// Wait until something accepts on 127.0.0.1:port.
pub async fn wait_port(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on 127.0.0.1:{port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a node is run.
#[derive(Clone)]
pub struct NodeSpec {
    pub id: String,
    pub port: u16,
    /// Where the other nodes reach it (its peer link's proxy).
    pub advertise: String,
    pub database: String,
    pub component: PathBuf,
    pub lease_ttl_ms: u64,
    /// The negative control: no epoch fence, no lease check.
    pub unfenced: bool,
    /// `false`: the rejected design, each node on its own SQLite.
    pub clustered: bool,
    /// Run under libfaketime with this `FAKETIME` (a skewed clock).
    pub faketime: Option<String>,
    /// Keep `commit_log` and `ownership_log` for the checker.
    pub audit: bool,
}

/// Debian's libfaketime (package faketime), for a node with a skewed clock.
pub fn libfaketime() -> String {
    let path = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
    assert!(
        Path::new(path).exists(),
        "{path} is missing: install Debian's faketime (scripts/test.sh does)"
    );
    path.to_owned()
}

pub struct Node {
    pub spec: NodeSpec,
    child: Option<Child>,
    dir: PathBuf,
}

impl Node {
    pub async fn start(spec: NodeSpec) -> Node {
        let mut node = Node::stopped(spec);
        node.restart().await;
        node
    }

    /// A node not started yet ([`Node::restart`] starts it).
    pub fn stopped(spec: NodeSpec) -> Node {
        let dir = std::env::temp_dir().join(format!(
            "dormouse-node-{}-{}",
            spec.id,
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).expect("node dir");
        Node {
            spec,
            child: None,
            dir,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.spec.port)
    }

    pub async fn restart(&mut self) {
        let s = &self.spec;
        let mut toml = format!(
            "listen = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\nidle_timeout_ms = 1000\nping_interval_ms = 1000\nversions_kept = 2\ncompile_cache_dir = \"{}\"\n\
             [parties.ledger]\ncomponent = \"{}\"\nvars = {{ node = \"{}\" }}\n\
             [[parties.ledger.crons]]\nname = \"minute\"\nschedule = \"* * * * *\"\n",
            s.port,
            self.dir.join("data").display(),
            repo().join("target/test-compile-cache").display(),
            s.component.display(),
            s.id,
        );
        if s.clustered {
            toml += &format!(
                "[cluster]\ndatabase = \"{}\"\nnode_id = \"{}\"\nadvertise = \"{}\"\nlease_ttl_ms = {}\naudit = {}\nunfenced_writes = {}\n",
                s.database, s.id, s.advertise, s.lease_ttl_ms, s.audit, s.unfenced
            );
        }
        std::fs::create_dir_all(&self.dir).expect("node dir");
        let config = self.dir.join("dormouse.toml");
        std::fs::write(&config, toml).expect("node config");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("node log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_dormouse"));
        if let Some(skew) = &s.faketime {
            command
                .env("LD_PRELOAD", libfaketime())
                .env("FAKETIME", skew)
                .env("FAKETIME_NO_CACHE", "1");
        }
        let child = command
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env("DORMOUSE_TOKEN", "test:secret")
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().expect("node log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("dormouse serve starts");
        self.child = Some(child);
        wait_port(self.spec.port).await;
    }

    /// The node's resident memory, from /proc.
    pub fn rss_bytes(&self) -> u64 {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the node runs");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    }

    /// The files of this node's component versions.
    pub fn version_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("data/versions"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    pub async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "KILL");
            let _ = c.wait().await;
        }
    }

    /// SIGTERM: in a cluster, the node drains (releases its rooms).
    pub async fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(&c, "TERM");
            let _ = tokio::time::timeout(Duration::from_secs(15), c.wait()).await;
        }
    }

    /// SIGSTOP, and wait until every thread has stopped: `kill` returns
    /// before threads running on other cores have, and a node that reads
    /// a client's frame in that gap starts work the test meant to find
    /// waiting in its socket.
    pub fn pause(&self) {
        let Some(c) = &self.child else { return };
        signal(c, "STOP");
        let Some(pid) = c.id() else { return };
        let stopped = || {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                return true;
            };
            tasks.flatten().all(|t| {
                let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                // The state follows the command name's closing parenthesis.
                let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
                matches!(state, Some(Some('T' | 't')) | None)
            })
        };
        for _ in 0..400 {
            if stopped() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("node {pid} did not stop within 2 s of SIGSTOP");
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            signal(c, "CONT");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            signal(c, "CONT");
            signal(c, "KILL");
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!(
                "node {} kept its dir for a look: {}",
                self.spec.id,
                self.dir.display()
            );
        }
    }
}

mod tempdir {
    use std::path::PathBuf;

    /// A temporary dir, removed on drop.
    pub struct Dir(pub PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("{prefix}-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&p).expect("temp dir");
            Dir(p)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// A TCP proxy on one link of the test's topology (node to PostgreSQL,
/// HAProxy to node, node to node), which can cut the link: while cut, it
/// moves no byte either way on existing connections and connects new ones
/// nowhere, as a network partition does (no reset, no FIN: peers time out).
pub struct Proxy {
    pub port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a proxy");
        let port = listener.local_addr().expect("proxy addr").port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (c, target) = (c.clone(), target.clone());
                tokio::spawn(async move {
                    while c.load(Relaxed) {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    let Ok(server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        () = pump(cr, sw, &c) => {}
                        () = pump(sr, cw, &c) => {}
                    }
                });
            }
        });
        Proxy { port, cut, task }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn heal(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copy one direction, holding the bytes while the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: &std::sync::atomic::AtomicBool,
) {
    use std::sync::atomic::Ordering::Relaxed;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        while cut.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Read before the cut, delivered after it heals: never while cut.
        while cut.load(Relaxed) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
