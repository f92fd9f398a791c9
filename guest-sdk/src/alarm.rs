//! `dormouse:room/alarm`: the room's one alarm, stored with its storage.
//!
//! The alarm is committed with the hook's other writes. Firing it (waking
//! the room to run [`crate::Room::on_alarm`]) is the scheduler's job.

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
