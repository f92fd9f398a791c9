//! End-to-end tests: one binary, one module per capability. Each test runs a
//! real host on 127.0.0.1 with real compiled components and its own SQLite
//! files, and talks to it with real WebSocket and HTTP clients.

mod alarms;
mod calls;
mod close_codes;
mod counter;
mod crons;
mod deploy;
mod durability;
mod guests;
mod hibernation;
mod hostile;
mod http;
mod lifecycle;
mod partysocket;
mod races;
mod relay;
mod sql;
mod timers;
mod typescript;
mod yjs;
