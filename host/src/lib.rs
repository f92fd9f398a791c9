//! Dormouse: a self-hosted realtime room server whose rooms are Wasm
//! components that hibernate.
//!
//! # Layout
//!
//! Layers from the edge inwards; each talks only to the next.
//!
//! | module | owns |
//! | --- | --- |
//! | [`cli`] | the command line (`serve`, `build`, `dev`); `main.rs` only calls it |
//! | [`server`] | accept loop, routing, WebSocket upgrade, on-request, health, metrics, static files |
//! | `admin` | the admin API under `/_dormouse/`: deploy, versions, rollback, rooms, logs |
//! | [`admin_token`] | the token `serve` makes in its data dir, and where the CLI finds it |
//! | [`client`] | the CLI's side of the admin API |
//! | [`route`] | URL parsing: party, room, `_pk` |
//! | [`socket`] | one task per WebSocket: frames in, outbound queue out |
//! | [`host`] | parties and the registry of room actors; shutdown |
//! | [`room`] | the room actor: events in order, wake, hibernate, output gate |
//! | [`room_state`] | what a room keeps across hibernation: connections, state, tags, outbox |
//! | [`instance`] | engine, compiled parties, an instance with its deadline and memory cap |
//! | [`wit`] | the one `bindgen!` site |
//! | `imports` | the WIT imports, one file per interface, implemented on `RoomState` |
//! | [`storage`] | SQLite: per-hook batches, group commit, alarms, version metadata |
//! | [`versions`] | deployed components and their precompiled forms on disk |
//! | [`logs`] | room log lines for `dormouse tail` |
//! | [`alarms`] | the one scheduler that fires every room's alarm |
//! | [`project`] | building room crates to components |
//! | [`scaffold`] | `dormouse new`: a room crate that builds as it is |
//! | [`bench`] | `dormouse bench`: the load generator behind BENCHMARKS.md |
//! | [`config`], [`metrics`] | `dormouse.toml` and limits; Prometheus names |
//!
//! Run a server in-process the way `main` does:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let host = dormouse::host::Host::new(dormouse::config::Config::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! dormouse::server::run(listener, host).await
//! # }
//! ```

mod admin;
pub mod admin_token;
pub mod alarms;
pub mod bench;
pub mod cli;
pub mod client;
pub mod config;
pub mod host;
mod imports;
pub mod instance;
pub mod logs;
pub mod metrics;
pub mod project;
pub mod room;
pub mod room_state;
pub mod route;
pub mod scaffold;
pub mod server;
pub mod socket;
pub mod storage;
pub mod versions;
pub mod wit;
