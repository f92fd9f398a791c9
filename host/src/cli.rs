//! The `dormouse` command line: argument parsing and the commands' wiring.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::config::{Config, Limits, PartyConfig};
use crate::host::Host;
use crate::instance::{Party, Runtime};
use crate::project;

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
        Command::Build { dir } => {
            let dir = dir.unwrap_or_else(|| PathBuf::from("."));
            let wasm = build_and_check(&dir).await?;
            println!("{}", wasm.display());
            Ok(())
        }
        Command::Dev { dir, server } => {
            dev(dir.unwrap_or_else(|| PathBuf::from(".")), server).await
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
                vars: Default::default(),
            },
        );
    }
    args.server.apply(&mut config);
    if config.parties.is_empty() {
        bail!(
            "no parties to serve: add [parties.NAME] to dormouse.toml or pass --party NAME=FILE.wasm"
        );
    }
    let host = Host::new(config)?;
    serve_host(host, |_| {}).await
}

/// `dormouse dev DIR`: DIR is a room crate (served as party `main`), or a
/// project with a `dormouse.toml` whose parties name room crates (`crate =
/// "rooms/chat"`). Every crate is rebuilt and redeployed when it changes.
async fn dev(dir: PathBuf, server: ServerArgs) -> anyhow::Result<()> {
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
                vars: Default::default(),
            },
        );
        config
    };
    server.apply(&mut config);
    let crates: Vec<(String, PathBuf)> = config
        .parties
        .iter()
        .filter_map(|(name, p)| Some((name.clone(), p.krate.clone()?)))
        .collect();
    let host = tokio::task::spawn_blocking(move || Host::new(config)).await??;
    serve_host(host, move |host| {
        for (name, dir) in crates {
            host.tasks.spawn(watch(name, dir, host.clone()));
        }
    })
    .await
}

/// Rebuild a party's crate when its sources change and deploy the result.
async fn watch(party: String, dir: PathBuf, host: Arc<Host>) {
    let mut seen = project::last_change(&dir);
    loop {
        tokio::select! {
            () = host.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let now = project::last_change(&dir);
        if now == seen {
            continue;
        }
        seen = now;
        info!(party, "change seen; rebuilding {}", dir.display());
        let d = dir.clone();
        let built = tokio::task::spawn_blocking(move || project::build(&d)).await;
        let vars = host
            .config
            .parties
            .get(&party)
            .map(|p| p.vars.clone())
            .unwrap_or_default();
        let loaded = match built {
            Ok(Ok(wasm)) => std::fs::read(&wasm)
                .map_err(anyhow::Error::from)
                .and_then(|bytes| Party::load(&host.runtime, &party, &bytes, vars)),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(e.into()),
        };
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
async fn serve_host(host: Arc<Host>, start: impl FnOnce(&Arc<Host>)) -> anyhow::Result<()> {
    let listener = TcpListener::bind(host.config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", host.config.listen))?;
    start(&host);
    let token = host.shutdown.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down: closing sockets with 1001");
        token.cancel();
    });
    crate::server::run(listener, host).await
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

/// `dormouse build`: compile, then load the component as the server would.
async fn build_and_check(dir: &Path) -> anyhow::Result<PathBuf> {
    let d = dir.to_owned();
    let wasm = tokio::task::spawn_blocking(move || project::build(&d)).await??;
    let bytes = std::fs::read(&wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let limits = Limits {
        awake_rooms: 1,
        ..Limits::default()
    };
    let runtime = Runtime::new(Arc::new(limits))?;
    Party::load(&runtime, "main", &bytes, Default::default())?;
    Ok(wasm)
}
