//! The host side of the WIT imports: one file per interface, each
//! implementing the generated `Host` trait on [`RoomState`].
//!
//! Misuse a guest can recover from (an unknown connection, a value over its
//! limit) is answered with the WIT `error` variant, never a trap: a guest
//! that sends to a connection that just closed is not broken, only late.

mod alarm;
mod connections;
mod context;
mod rooms;
mod sql;
mod storage;
mod timers;

use crate::room::state::RoomState;
use crate::wit::Error;

impl crate::wit::dormouse::room::types::Host for RoomState {}

impl RoomState {
    /// What the room's own hooks may do and the lobby's may not: the
    /// lobby's and the crons' hooks run outside any room.
    fn in_room(&self, what: &str) -> Result<(), Error> {
        if self.lobby {
            return Err(Error::Invalid(format!(
                "{what} is for a room's own hooks; the lobby and the crons run outside any room"
            )));
        }
        Ok(())
    }
}

/// `Err(too-large)` when `len` is over `max`.
fn check_size(what: &str, len: usize, max: usize) -> Result<(), Error> {
    if len > max {
        return Err(Error::TooLarge(format!(
            "{what} is {len} bytes; the limit is {max}"
        )));
    }
    Ok(())
}
