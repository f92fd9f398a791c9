//! Dormouse: a self-hosted realtime room server whose rooms are Wasm
//! components that hibernate.
//!
//! # Layout
//!
//! Folders by layer, from the edge inwards; a layer uses only the layers
//! below it, and the leaves use no other module of the crate but leaves
//! (`python3 ../shared/tools/modcycles.py host/src` checks that no two
//! modules import each other, even through others). `ARCHITECTURE.md` at
//! the top of the repository walks through them.
//!
//! | layer | folder | owns |
//! | --- | --- | --- |
//! | edge | [`edge`] | accept loops, routing, the WebSocket upgrade, on-request, health, metrics, static files; the admin API; one task per socket |
//! | host | [`host`] | parties and deploys, the registry of room actors, following the cluster, the alarm loop, the ping tick, shutdown, the lobby |
//! | room | [`room`] | the room actor: events in order, wake, hibernate, output gate; the instance; room state; the WIT imports; a connection's way out; presence |
//! | cluster | `cluster` | several nodes on PostgreSQL: the lease, room claims, the epoch-fenced group commit, deploy metadata there, forwarding to a room's node |
//! | store | `store` | room data in SQLite: per-hook batches, group commit, sizes, alarms; deploy metadata; the compile cache |
//! | leaf | [`config`], `cron`, `route`, `alarms`, [`logs`], `metrics`, [`clock`], `lock`, [`wit`], `ws`, [`http`], [`admin_token`] | settings and limits; cron schedules; URLs and names; the alarm index; room logs; Prometheus names; time; poison-proof locks; the one `bindgen!` site; WebSocket <-> WIT messages; the host's own HTTP answers; the admin token |
//!
//! The command line, the admin client and the build tooling are the
//! `dormouse` crate's (`cli/`); the load generator is `dormouse-bench`.
//!
//! Run a server in-process the way the binary does:
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let host = dormouse_host::host::Host::new(dormouse_host::config::Config::default())?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! dormouse_host::edge::server::run(listener, host).await
//! # }
//! ```

// The public surface is what the `dormouse` binary and the tests use: the
// config, the `Host` and `edge::server::run`, the compiled parties and
// version hashes (`dormouse build`, `dormouse compile`), the admin token,
// log lines, the WIT sources and NDJSON lines. The rest is the crate's own.
pub mod admin_token;
mod alarms;
pub mod clock;
mod cluster;
pub mod config;
mod cron;
pub mod edge;
pub mod host;
pub mod http;
mod lock;
pub mod logs;
mod metrics;
pub mod room;
mod route;
mod store;
pub mod wit;
mod ws;
