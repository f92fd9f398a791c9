//! The `dormouse` command line: argument parsing and the commands' wiring,
//! over the `dormouse` library (the server) and `dormouse-bench`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::client::Admin;
use crate::project;
use dormouse_host::config::{ClusterConfig, Config, Limits, PartyConfig};
use dormouse_host::host::Host;
use dormouse_host::room::instance::{Party, Runtime};
use hyper::Method;

#[derive(Parser)]
#[command(
    name = "dormouse",
    version,
    about = "Realtime rooms as Wasm components that hibernate"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (reads dormouse.toml when present).
    Serve(ServeArgs),
    /// Compile a room crate to a component, check it, print its path.
    Build {
        /// The room crate (default: the current directory).
        dir: Option<PathBuf>,
    },
    /// Upload a room (a crate folder, built first, or a .wasm file) to a running server.
    Deploy {
        /// A room crate folder or a .wasm component [default: .].
        path: Option<PathBuf>,
        #[arg(long)]
        party: String,
        #[arg(long, default_value = "http://127.0.0.1:1999")]
        server: String,
    },
    /// List a server's live rooms: state, connections, last event, storage.
    Rooms {
        #[arg(long, default_value = "http://127.0.0.1:1999")]
        server: String,
    },
    /// Stream room logs (guest `log` calls and host events), live.
    Tail {
        #[arg(long, default_value = "http://127.0.0.1:1999")]
        server: String,
        #[arg(long)]
        party: Option<String>,
        #[arg(long)]
        room: Option<String>,
    },
    /// List a server's parties and their versions.
    Versions {
        #[arg(long, default_value = "http://127.0.0.1:1999")]
        server: String,
    },
    /// Serve an earlier version of a party again (the previous one by default).
    Rollback {
        #[arg(long)]
        party: String,
        #[arg(long)]
        version: Option<u32>,
        #[arg(long, default_value = "http://127.0.0.1:1999")]
        server: String,
    },
    /// Make a new room crate that builds and deploys as it is.
    New {
        /// The room's name (and folder).
        name: String,
        /// rust, ts, js or py.
        #[arg(long, default_value = "rust")]
        lang: crate::scaffold::Lang,
    },
    /// Load a server and report figures (see BENCHMARKS.md).
    Bench(dormouse_bench::BenchArgs),
    /// Hold connections for `dormouse bench` (started by it).
    #[command(hide = true)]
    BenchWorker(dormouse_bench::WorkerArgs),
    /// The minimal tokio-tungstenite relay `dormouse bench broadcast` measures against.
    #[command(hide = true)]
    BenchFloor(dormouse_bench::FloorArgs),
    /// Compile a component (stdin) to its precompiled form (stdout), for a
    /// server that compiles in a child process.
    #[command(hide = true)]
    CompileComponent {
        #[arg(long)]
        memory_bytes: usize,
        #[arg(long)]
        awake_rooms: u32,
        #[arg(long)]
        functions: PathBuf,
    },
    /// Build and serve a room crate as party `main` (or a project's
    /// dormouse.toml with `crate = ...` parties), rebuilding on change.
    Dev {
        /// The room crate (default: the current directory).
        dir: Option<PathBuf>,
        #[command(flatten)]
        server: ServerArgs,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Configuration file (default: ./dormouse.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A party to serve, as NAME=FILE.wasm (repeatable; adds to the config).
    #[arg(long = "party", value_name = "NAME=FILE.wasm")]
    parties: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// `serve`'s cluster mode (docs/cluster.md); each overrides `[cluster]`.
#[derive(Args)]
struct ClusterArgs {
    /// Join a cluster whose store of record is this PostgreSQL database
    /// (postgres://USER@HOST:PORT/DB); several nodes on one database form one cluster.
    #[arg(long, value_name = "POSTGRES_URL")]
    cluster: Option<String>,
    /// This node's name in the cluster [default: the advertised address].
    #[arg(long)]
    node_id: Option<String>,
    /// Where the other nodes reach this one [default: the listen address].
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Milliseconds a node's lease lasts without renewal [default: 10000].
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
}

impl ClusterArgs {
    fn apply(self, config: &mut Config) {
        if let Some(database) = self.cluster {
            let c = config.cluster.get_or_insert_with(|| ClusterConfig {
                database: database.clone(),
                node_id: String::new(),
                advertise: String::new(),
                lease_ttl_ms: 10_000,
                audit: false,
                unfenced_writes: false,
            });
            c.database = database;
        }
        // Left empty, they default when the node joins (`ClusterConfig::resolved`).
        let Some(c) = &mut config.cluster else { return };
        if let Some(v) = self.advertise {
            c.advertise = v;
        }
        if let Some(v) = self.node_id {
            c.node_id = v;
        }
        if let Some(v) = self.lease_ttl_ms {
            c.lease_ttl_ms = v;
        }
    }
}

/// Settings shared by `serve` and `dev`; each overrides the config file.
#[derive(Args)]
struct ServerArgs {
    /// Address to listen on [default: 127.0.0.1:1999].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Where storage lives [default: ./.dormouse].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Milliseconds without an event before a room hibernates [default: 10000].
    #[arg(long)]
    idle_timeout_ms: Option<u64>,
    /// A folder served at / for paths that name no room.
    #[arg(long)]
    public: Option<PathBuf>,
}

impl ServerArgs {
    fn apply(self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.data_dir {
            config.data_dir = v;
        }
        if let Some(v) = self.idle_timeout_ms {
            config.idle_timeout_ms = v;
        }
        if let Some(v) = self.public {
            config.public = Some(v);
        }
    }
}

/// Run the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Bench(args) => {
            raise_fd_limit();
            dormouse_bench::run(args).await
        }
        Command::BenchWorker(args) => {
            raise_fd_limit();
            dormouse_bench::worker(args).await
        }
        Command::BenchFloor(args) => {
            raise_fd_limit();
            dormouse_bench::floor(args).await
        }
        Command::CompileComponent {
            memory_bytes,
            awake_rooms,
            functions,
        } => {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut bytes)?;
            let limits = Limits {
                instance_memory_bytes: memory_bytes,
                awake_rooms,
                ..Limits::default()
            };
            let compiled = dormouse_host::host::deploys::versions::compile_component(
                &limits, functions, &bytes,
            )?;
            std::io::Write::write_all(&mut std::io::stdout(), &compiled)?;
            Ok(())
        }
        Command::Build { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let wasm = build_and_check(&dir).await?;
            println!("{}", wasm.display());
            Ok(())
        }
        Command::Dev { dir, server } => {
            dev(dir.unwrap_or_else(|| PathBuf::from(".")), server).await
        }
        Command::Deploy {
            path,
            party,
            server,
        } => deploy(path.unwrap_or_else(|| PathBuf::from(".")), &party, &server).await,
        Command::Rooms { server } => rooms(&server).await,
        Command::Tail {
            server,
            party,
            room,
        } => tail(&server, party, room).await,
        Command::Versions { server } => versions(&server).await,
        Command::Rollback {
            party,
            version,
            server,
        } => rollback(&server, &party, version).await,
        Command::New { name, lang } => {
            let dir = crate::scaffold::new_room(&name, lang)?;
            println!(
                "made {}: build it with `dormouse build {name}`, serve it with `dormouse dev {name}`",
                dir.display()
            );
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let fds = raise_fd_limit();
    info!(open_files = fds, "file descriptor limit");
    let default = Path::new("dormouse.toml");
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None if default.is_file() => Config::load(default)?,
        None => Config::default(),
    };
    for p in &args.parties {
        let Some((name, file)) = p.split_once('=') else {
            bail!("--party takes NAME=FILE.wasm, got {p:?}");
        };
        config.parties.insert(
            name.to_owned(),
            PartyConfig {
                component: Some(file.into()),
                krate: None,
                builtin: None,
                vars: Default::default(),
                limits: Default::default(),
            },
        );
    }
    args.server.apply(&mut config);
    args.cluster.apply(&mut config);
    config.compiler = std::env::current_exe().ok();
    admin_token(&mut config)?;
    let config = tokio::task::spawn_blocking(move || build_crates(config)).await??;
    let host = Host::open(config).await?;
    if host.parties()?.is_empty() {
        info!("no parties yet: `dormouse deploy DIR --party NAME` uploads one");
    }
    serve_host(host, |_| {}).await
}

/// Build every party the config names by its `crate`, so the host finds
/// its `component`.
fn build_crates(mut config: Config) -> anyhow::Result<Config> {
    for (name, party) in &mut config.parties {
        if let (None, Some(dir)) = (&party.component, &party.krate) {
            let wasm = project::build(dir)
                .with_context(|| format!("party {name}: cannot build {}", dir.display()))?;
            party.component = Some(wasm);
        }
    }
    Ok(config)
}

/// The admin token: the config's, `DORMOUSE_TOKEN`, or the one in the data
/// dir (made now if there is none), which the CLI run from the same folder
/// finds by itself.
fn admin_token(config: &mut Config) -> anyhow::Result<()> {
    if config.admin_token.is_none() {
        config.admin_token = std::env::var("DORMOUSE_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
    }
    if config.admin_token.is_none() {
        let (token, path) = dormouse_host::admin_token::ensure(&config.data_dir)?;
        info!(
            file = %path.display(),
            "admin token: in this file, readable by this user only (the CLI here finds it; elsewhere set DORMOUSE_TOKEN)"
        );
        config.admin_token = Some(token);
    }
    Ok(())
}

/// `dormouse dev DIR`: DIR is a room crate (served as party `main`), or a
/// project with a `dormouse.toml` whose parties name room crates (`crate =
/// "rooms/chat"`). Every crate is rebuilt and redeployed when it changes.
async fn dev(dir: PathBuf, server: ServerArgs) -> anyhow::Result<()> {
    raise_fd_limit();
    let project = dir.join("dormouse.toml");
    let mut config = if project.is_file() {
        Config::load(&project)?
    } else {
        let mut config = Config::default();
        let public = dir.join("public");
        if public.is_dir() {
            config.public = Some(public);
        }
        config.parties.insert(
            "main".into(),
            PartyConfig {
                component: None,
                krate: Some(dir.clone()),
                builtin: None,
                vars: Default::default(),
                limits: Default::default(),
            },
        );
        config
    };
    server.apply(&mut config);
    config.compiler = std::env::current_exe().ok();
    // As closed as `serve`: without a token, any web page the user opens
    // could upload room code to it (a cross-site "simple" POST needs no
    // preflight), or read its logs through a rebound DNS name.
    admin_token(&mut config)?;
    let crates: Vec<(String, PathBuf)> = config
        .parties
        .iter()
        .filter_map(|(name, p)| Some((name.clone(), p.krate.clone()?)))
        .collect();
    let host = tokio::task::spawn_blocking(move || Host::new(build_crates(config)?)).await??;
    serve_host(host, move |host| {
        for (name, dir) in crates {
            host.tasks().spawn(watch(name, dir, host.clone()));
        }
    })
    .await
}

/// Rebuild a party's crate when its sources change and deploy the result.
async fn watch(party: String, dir: PathBuf, host: Arc<Host>) {
    let mut seen = project::last_change(&dir);
    loop {
        tokio::select! {
            () = host.shutdown().cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = project::last_change(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        info!(party, "change seen; rebuilding {}", dir.display());
        let d = dir.clone();
        let vars = host.config().vars(&party);
        let (h, name) = (host.clone(), party.clone());
        // Building and compiling take seconds: off the event loop.
        let loaded = tokio::task::spawn_blocking(move || {
            let wasm = project::build(&d)?;
            let bytes = std::fs::read(&wasm)?;
            h.compile(&name, &bytes, vars)
        })
        .await
        .unwrap_or_else(|e| Err(e.into()));
        match loaded {
            Ok(p) => {
                host.deploy(p).await;
                info!(
                    party,
                    "new version is live; rooms pick it up on their next wake"
                );
            }
            Err(e) => error!(
                party,
                "rebuild failed, the old version keeps serving: {e:#}"
            ),
        }
    }
}

async fn rooms(server: &str) -> anyhow::Result<()> {
    let body = Admin::new(server)?
        .call(Method::GET, "/_dormouse/rooms", Vec::new())
        .await?;
    let rooms: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    // A cluster's node names each room's holder.
    let clustered = rooms.iter().any(|r| r.get("node").is_some());
    let node_header = if clustered {
        format!("{:<10} ", "NODE")
    } else {
        String::new()
    };
    println!(
        "{:<12} {:<24} {node_header}{:<11} {:>6} {:>10} LAST EVENT",
        "PARTY", "ROOM", "STATE", "CONNS", "STORAGE"
    );
    for r in rooms {
        let last = r["last_event_ms"].as_u64().unwrap_or(0);
        let ago = if last == 0 {
            "-".to_owned()
        } else {
            let ms = dormouse_host::clock::now_ms().saturating_sub(last);
            format!("{:.1}s ago", ms as f64 / 1000.0)
        };
        let node = if clustered {
            format!("{:<10} ", r["node"].as_str().unwrap_or(""))
        } else {
            String::new()
        };
        println!(
            "{:<12} {:<24} {node}{:<11} {:>6} {:>10} {ago}",
            r["party"].as_str().unwrap_or(""),
            r["room"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["connections"].as_u64().unwrap_or(0),
            r["storage_bytes"].as_u64().unwrap_or(0),
        );
    }
    Ok(())
}

async fn tail(server: &str, party: Option<String>, room: Option<String>) -> anyhow::Result<()> {
    let encode = |v: &str| {
        percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut path = "/_dormouse/logs?".to_owned();
    if let Some(p) = party {
        path += &format!("party={}&", encode(&p));
    }
    if let Some(r) = room {
        path += &format!("room={}&", encode(&r));
    }
    eprintln!("dormouse: tailing {server} (Ctrl-C to stop)");
    Admin::new(server)?
        .stream(&path, |line| {
            match serde_json::from_str::<serde_json::Value>(line) {
                Ok(l) if l.get("message").is_some() => println!(
                    "{:<5} {}{}/{} {}",
                    l["level"].as_str().unwrap_or(""),
                    // A cluster's lines name their node.
                    l["node"]
                        .as_str()
                        .map_or(String::new(), |n| format!("[{n}] ")),
                    l["party"].as_str().unwrap_or(""),
                    l["room"].as_str().unwrap_or(""),
                    l["message"].as_str().unwrap_or("")
                ),
                _ => println!("{line}"),
            }
        })
        .await
}

/// The first 12 hex digits of a version's hash.
fn short(hash: &serde_json::Value) -> &str {
    let h = hash.as_str().unwrap_or("");
    &h[..h.len().min(12)]
}

async fn versions(server: &str) -> anyhow::Result<()> {
    let body = Admin::new(server)?
        .call(Method::GET, "/_dormouse/parties", Vec::new())
        .await?;
    let parties: Vec<serde_json::Value> = serde_json::from_slice(&body)?;
    for p in parties {
        let name = p["party"].as_str().unwrap_or("");
        println!("party {name} ({})", p["source"].as_str().unwrap_or(""));
        for v in p["versions"].as_array().into_iter().flatten() {
            let active = if v["version"] == p["active"] {
                "*"
            } else {
                " "
            };
            println!(
                "  {active} v{:<4} {} {:>9} bytes  by {}",
                v["version"].as_u64().unwrap_or(0),
                short(&v["hash"]),
                v["size"].as_u64().unwrap_or(0),
                v["token"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

async fn rollback(server: &str, party: &str, version: Option<u32>) -> anyhow::Result<()> {
    let path = match version {
        Some(v) => format!("/_dormouse/parties/{party}/rollback?version={v}"),
        None => format!("/_dormouse/parties/{party}/rollback"),
    };
    let body = Admin::new(server)?
        .call(Method::POST, &path, Vec::new())
        .await?;
    let d: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "party {party} is back on version {}; {} live rooms pick it up at their next wake",
        d["version"], d["rooms"]
    );
    Ok(())
}

/// `dormouse deploy`: build when given a crate, upload, report.
async fn deploy(path: PathBuf, party: &str, server: &str) -> anyhow::Result<()> {
    let admin = Admin::new(server)?;
    let wasm = if path.extension().is_some_and(|e| e == "wasm") {
        path
    } else {
        eprintln!("dormouse: building {}", path.display());
        let p = path.clone();
        tokio::task::spawn_blocking(move || project::build(&p)).await??
    };
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    eprintln!(
        "dormouse: uploading {} ({} KiB) to {server}; it compiles there",
        wasm.display(),
        bytes.len() / 1024
    );
    let body = admin
        .call(Method::PUT, &format!("/_dormouse/parties/{party}"), bytes)
        .await?;
    let d: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "party {party} version {} ({}) is live; {} live rooms pick it up at their next wake, no connection dropped",
        d["version"],
        short(&d["hash"]),
        d["rooms"]
    );
    Ok(())
}

/// Bind, serve until Ctrl-C or SIGTERM, shut down cleanly.
async fn serve_host(host: Arc<Host>, start: impl FnOnce(&Arc<Host>)) -> anyhow::Result<()> {
    let listener = TcpListener::bind(host.config().listen)
        .await
        .with_context(|| format!("cannot listen on {}", host.config().listen))?;
    let metrics = match host.config().metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (metrics_listen)"))?,
        ),
        None => None,
    };
    start(&host);
    let token = host.shutdown().clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down: closing sockets with 1001");
        token.cancel();
    });
    match metrics {
        Some(metrics) => {
            dormouse_host::edge::server::run_with_metrics(listener, metrics, host).await
        }
        None => dormouse_host::edge::server::run(listener, host).await,
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Raise this process's open-file soft limit to its hard limit: a server
/// (or a load generator) holds a socket per connection. The limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        let _ = setrlimit(Resource::Nofile, limit);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// `dormouse build`: compile, then load the component as the server would.
async fn build_and_check(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.to_owned();
    let wasm = tokio::task::spawn_blocking(move || project::build(&d)).await??;
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let limits = Limits {
        awake_rooms: 1,
        ..Limits::default()
    };
    // Compiled bodies are cached in the user's cache, so checking a second
    // TypeScript or Python room compiles only what is its own.
    let functions = crate::project_js::cache_dir()
        .ok()
        .map(|c| c.join("compiled-functions"));
    tokio::task::spawn_blocking(move || {
        let runtime = Runtime::new(&limits, functions)?;
        Party::load(&runtime, "main", &bytes, Default::default()).map(drop)
    })
    .await??;
    Ok(wasm)
}
