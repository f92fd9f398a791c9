//! `dormouse:room/alarm`: the room's one alarm, stored with its storage.
//!
//! The alarm is committed with the hook's other writes. When it is due the
//! host runs [`crate::Room::on_alarm`], waking the room if it sleeps (or has
//! no connections at all); if that hook panics it is retried after 2 s, 4 s,
//! ... up to 6 times. Delivery is at least once: make on-alarm idempotent.
//! An alarm that on-alarm does not set again is cleared once it succeeds.
//!
//! ```no_run
//! use dormouse_sdk::{alarm, Room};
//! #[derive(Default)]
//! struct Heartbeat;
//! impl Room for Heartbeat {
//!     fn on_alarm(&mut self, _retry_count: u32) {
//!         let now = std::time::SystemTime::now()
//!             .duration_since(std::time::UNIX_EPOCH)
//!             .map_or(0, |d| d.as_millis() as u64);
//!         alarm::set(now + 60_000).ok(); // again in a minute
//!     }
//! }
//! # dormouse_sdk::export!(Heartbeat);
//! ```

use crate::Error;
use crate::bindings::dormouse::room::alarm as wit;

/// When the alarm is set for, in milliseconds since the Unix epoch.
///
/// ```no_run
/// let at = dormouse_sdk::alarm::get().ok().flatten();
/// ```
pub fn get() -> Result<Option<u64>, Error> {
    wit::get()
}

/// Set (or replace) the alarm; a time in the past fires at once.
///
/// ```no_run
/// dormouse_sdk::alarm::set(1_900_000_000_000).expect("alarm set");
/// ```
pub fn set(at_ms: u64) -> Result<(), Error> {
    wit::set(at_ms)
}

/// Cancel the alarm, if any.
///
/// ```no_run
/// dormouse_sdk::alarm::delete().expect("alarm deleted");
/// ```
pub fn delete() -> Result<(), Error> {
    wit::delete()
}
