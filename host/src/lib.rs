//! Dormouse: a self-hosted realtime room server whose rooms are Wasm
//! components that hibernate.
//!
//! # Layout
//!
//! Layers from the edge inwards. A module uses only modules in the rows
//! below its own (`python3 ../shared/tools/modcycles.py host/src` checks
//! that no two import each other, even through others).
//!
//! | layer | module | owns |
//! | --- | --- | --- |
//! | edge | [`server`] | accept loops, routing, WebSocket upgrade, on-request, health, metrics, static files |
//! | edge | `admin` | the admin API under `/_dormouse/`: deploy, versions, rollback, rooms, logs |
//! | edge | [`socket`] | one task per WebSocket: frames in, what the room could not write straight out, pings, lingering close |
//! | host | [`host`] | parties and deploys, the registry of room actors, the alarm loop, the ping tick, shutdown |
//! | host | [`forward`] | in a cluster: a room's socket, request or room-to-room call goes to the node that holds it |
//! | host | `lobby` | PartyKit's static hooks, in an instance of their own before the room |
//! | host | [`versions`] | deployed components and their precompiled forms on disk |
//! | room | [`room`] | the room actor: events in order, wake, hibernate, output gate; what it may use of the host ([`room::Shared`], [`room::Registry`]) |
//! | room | [`instance`] | engine, compiled parties, an instance with its deadline and memory cap |
//! | room | `imports` | the WIT imports, one file per interface, implemented on `RoomState` |
//! | room | [`room_state`] | what a room keeps across hibernation; what guest code may reach ([`room_state::Capabilities`]) |
//! | store | [`storage`] | room data in SQLite (or, in a cluster, a claimed room's rows): per-hook batches, group commit, sizes, alarms |
//! | store | [`cluster`] | several nodes on PostgreSQL: the lease, room claims, epoch-fenced group commit |
//! | store | [`deploys`] | deploy metadata in SQLite: versions, the active one |
//! | tools | [`client`] | the CLI's side of the admin API |
//! | tools | [`admin_token`] | the token `serve` makes in its data dir, where the CLI finds it; making and comparing secrets |
//! | leaf | [`config`] | `dormouse.toml` and limits |
//! | leaf | [`compile_cache`] | compiled function bodies on disk (Cranelift's incremental cache) |
//! | leaf | [`project`], [`project_js`], [`project_py`], [`scaffold`] | building rooms (Rust crates; TypeScript/JavaScript and Python packages) to components; `dormouse new` |
//! | leaf | [`alarms`] | the alarm index the host's alarm loop fires from |
//! | leaf | [`route`] | URL parsing, room keys, the rules for names (and the headers only nodes send) |
//! | leaf | [`logs`], [`metrics`] | room log lines for `dormouse tail`; Prometheus names, hook and failure kinds |
//! | leaf | [`outbound`] | a connection's bounded way out: frames the room writes straight to the socket, or queues |
//! | leaf | `presence` | presence the host keeps without waking a room: Yjs awareness renewals |
//! | leaf | [`ws`] | WebSocket <-> WIT messages |
//! | leaf | [`wit`], [`http`] | the one `bindgen!` site; the host's own HTTP answers |
//! | leaf | [`clock`], [`sync`] | the wall clock and a shared tick; locks that survive a panic |
//!
//! The command line is the binary's (`main.rs`, `cli.rs`); the load
//! generator is its own crate, `dormouse-bench`.
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
pub mod client;
pub mod clock;
pub mod cluster;
pub mod compile_cache;
pub mod config;
pub mod deploys;
pub mod forward;
pub mod host;
pub mod http;
mod imports;
pub mod instance;
mod lobby;
pub mod logs;
pub mod metrics;
pub mod outbound;
mod presence;
pub mod project;
pub mod project_js;
pub mod project_py;
pub mod room;
pub mod room_state;
pub mod route;
pub mod scaffold;
pub mod server;
pub mod socket;
pub mod storage;
pub mod sync;
pub mod versions;
pub mod wit;
pub mod ws;
