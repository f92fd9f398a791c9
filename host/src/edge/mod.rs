//! The edge: everything a client or another node reaches over the network.
//! The accept loops and routing, the WebSocket upgrade, on-request, health,
//! metrics and static files (`server`); the admin API (`admin`); one task per
//! WebSocket (`socket`). It may use every layer below it: host, room,
//! cluster, store and the leaves.

mod admin;
pub mod server;
mod socket;
