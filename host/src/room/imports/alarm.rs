//! `dormouse:room/alarm`: the room's one alarm, committed with its storage.
//!
//! The time is stored with the hook's other writes; after the commit the room
//! tells the scheduler (`alarms.rs`), which fires it.

use crate::room::state::RoomState;
use crate::wit::Error;
use crate::wit::dormouse::room::alarm::Host;

impl Host for RoomState {
    fn get(&mut self) -> wasmtime::Result<Result<Option<u64>, Error>> {
        Ok(self.storage.alarm().map_err(Error::from))
    }

    fn set(&mut self, at_ms: u64) -> wasmtime::Result<Result<(), Error>> {
        self.storage.set_alarm(Some(at_ms));
        Ok(Ok(()))
    }

    fn delete(&mut self) -> wasmtime::Result<Result<(), Error>> {
        self.storage.set_alarm(None);
        Ok(Ok(()))
    }
}
