//! `dormouse serve` and `dormouse dev`: a config and its parties (built
//! first when given as crates), a host, its listener, and a clean shutdown;
//! `dev` also rebuilds and redeploys a room when its sources change.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::project;
use dormouse_host::config::{ClusterConfig, Config, PartyConfig};
use dormouse_host::host::Host;

#[derive(Args)]
pub(crate) struct ServeArgs {
    /// Configuration file (default: ./dormouse.toml when it exists).
    #[arg(long)]
    pub(crate) config: Option<PathBuf>,
    /// A party to serve, as NAME=FILE.wasm (repeatable; adds to the config).
    #[arg(long = "party", value_name = "NAME=FILE.wasm")]
    pub(crate) parties: Vec<String>,
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
}

/// `serve`'s cluster mode (docs/cluster.md); each overrides `[cluster]`.
#[derive(Args)]
pub(crate) struct ClusterArgs {
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
    pub(crate) fn apply(self, config: &mut Config) {
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
pub(crate) struct ServerArgs {
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
    pub(crate) fn apply(self, config: &mut Config) {
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

pub(crate) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
                crons: Vec::new(),
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

/// Build every party the config names by its `crate`: the host gets its
/// `component` instead (a party has one source). A room folder with a
/// PartyKit `partykit.json` gives the party its `"crons"`, unless the
/// config names crons of its own.
pub(crate) fn build_crates(mut config: Config) -> anyhow::Result<Config> {
    for (name, party) in &mut config.parties {
        if party.component.is_none()
            && let Some(dir) = party.krate.take()
        {
            if party.crons.is_empty() {
                party.crons = project::partykit_crons(&dir)
                    .with_context(|| format!("party {name}: cannot read {}", dir.display()))?;
            }
            let wasm = project::build(&dir)
                .with_context(|| format!("party {name}: cannot build {}", dir.display()))?;
            party.component = Some(wasm);
        }
    }
    config.validate()?;
    Ok(config)
}

/// The admin token: the config's, `DORMOUSE_TOKEN`, or the one in the data
/// dir (made now if there is none), which the CLI run from the same folder
/// finds by itself.
pub(crate) fn admin_token(config: &mut Config) -> anyhow::Result<()> {
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
pub(crate) async fn dev(dir: PathBuf, server: ServerArgs) -> anyhow::Result<()> {
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
                crons: Vec::new(),
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
pub(crate) async fn watch(party: String, dir: PathBuf, host: Arc<Host>) {
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

/// Bind, serve until Ctrl-C or SIGTERM, shut down cleanly.
pub(crate) async fn serve_host(
    host: Arc<Host>,
    start: impl FnOnce(&Arc<Host>),
) -> anyhow::Result<()> {
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

pub(crate) async fn shutdown_signal() {
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
