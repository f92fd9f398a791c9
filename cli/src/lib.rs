//! The `dormouse` command's library: what the binary does besides serving,
//! and what the tests call directly. The server itself is `dormouse-host`.
//!
//! - [`project`], [`project_js`], [`project_py`]: building a room (a Rust
//!   crate, a TypeScript/JavaScript or a Python package) to a component;
//! - [`scaffold`]: `dormouse new`;
//! - [`client`]: the CLI's side of the admin API;
//! - [`commands`]: argument parsing and dispatch; `serve.rs` (`serve`,
//!   `dev`) and `remote.rs` (the commands that call a server's admin API).

pub mod client;
pub mod commands;
pub mod project;
pub mod project_js;
pub mod project_py;
mod remote;
pub mod scaffold;
mod serve;
