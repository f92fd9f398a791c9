//! The one `bindgen!` site: Rust types and traits generated from `wit/`.
//!
//! Imports are plain (not async) functions: they touch only host memory or a
//! local SQLite page, and a sync host call is cheaper than an async one. The
//! exception is `rooms.fetch`, which waits for another room (`rooms.start`
//! does not wait: the room sends the call after the hook). All
//! are `trappable` so a host function can end a guest that breaks the
//! contract beyond what a WIT error can say. Exports are async so hooks run on
//! a fiber that yields to tokio at every epoch tick (see `instance.rs`).
//!
//! The host binds `room-core`, the world without the optional hooks
//! (`timer-hooks`, `lobby-hooks`, `cron-hooks`, `answer-hooks`), so a
//! component built before them still loads; `instance.rs` looks their
//! functions up by name.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "room-core",
    imports: {
        "dormouse:room/rooms.fetch": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

/// The WIT files themselves, for toolchains that read WIT (componentize-js).
pub const SOURCES: [(&str, &str); 12] = [
    ("alarm.wit", include_str!("../../wit/alarm.wit")),
    ("connections.wit", include_str!("../../wit/connections.wit")),
    ("context.wit", include_str!("../../wit/context.wit")),
    ("crons.wit", include_str!("../../wit/crons.wit")),
    ("hooks.wit", include_str!("../../wit/hooks.wit")),
    ("lobby.wit", include_str!("../../wit/lobby.wit")),
    ("rooms.wit", include_str!("../../wit/rooms.wit")),
    ("sql.wit", include_str!("../../wit/sql.wit")),
    ("storage.wit", include_str!("../../wit/storage.wit")),
    ("timers.wit", include_str!("../../wit/timers.wit")),
    ("types.wit", include_str!("../../wit/types.wit")),
    ("world.wit", include_str!("../../wit/world.wit")),
];

pub use self::dormouse::room::types::{ConnectionInfo, Error, Level, Message, Request, Response};
pub use self::exports::dormouse::room::hooks;
