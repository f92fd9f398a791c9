//! `dormouse:room/context`: who this room is, its party's vars, and its log.

use crate::Level;
use crate::bindings::dormouse::room::context as wit;

/// The party (deployed component) this room belongs to, e.g. `main`.
///
/// ```no_run
/// let party = dormouse_sdk::context::party();
/// ```
pub fn party() -> String {
    wit::party()
}

/// The room id from the URL, percent-decoded.
///
/// ```no_run
/// let room = dormouse_sdk::context::id();
/// ```
pub fn id() -> String {
    wit::id()
}

/// One of the party's vars (from `dormouse.toml`), if set.
///
/// ```no_run
/// let greeting = dormouse_sdk::context::var("GREETING").unwrap_or_else(|| "hello".into());
/// ```
pub fn var(name: &str) -> Option<String> {
    wit::var(name)
}

/// All of the party's vars.
///
/// ```no_run
/// for (name, value) in dormouse_sdk::context::vars() { let _ = (name, value); }
/// ```
pub fn vars() -> Vec<(String, String)> {
    wit::vars()
}

/// Write a line to the host's log, tagged with party and room.
///
/// ```no_run
/// use dormouse_sdk::{context, Level};
/// context::log(Level::Info, "room started");
/// ```
pub fn log(level: Level, message: &str) {
    wit::log(level, message)
}

/// Say that the event being handled is not activity (a presence heartbeat,
/// say): it does not push back the room's idle timeout, and a room woken
/// only by quiet events hibernates as soon as each is handled.
pub fn quiet() {
    wit::quiet();
}
