//! The `dormouse` command line: argument parsing and the commands' wiring,
//! over `dormouse-host` (the server) and `dormouse-bench`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::project;
use crate::remote::{crons, deploy, rollback, rooms, tail, versions};
use crate::serve::{ServeArgs, ServerArgs, dev, raise_fd_limit, serve};
use dormouse_host::config::Limits;
use dormouse_host::room::instance::{Party, Runtime};

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
    /// List a server's crons: schedule, next tick, this node's last run.
    Crons {
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
        Command::Crons { server } => crons(&server).await,
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
