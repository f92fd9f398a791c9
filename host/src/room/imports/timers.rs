//! `dormouse:room/timers`: the room's one in-memory timer.
//!
//! The time is kept with the running hook's output; when the hook returns,
//! the room arms it (see `Room::run`), and it goes with the instance.

use crate::room::state::RoomState;
use crate::wit::dormouse::room::timers::Host;

impl Host for RoomState {
    fn set(&mut self, after_ms: Option<u32>) -> wasmtime::Result<()> {
        self.hook().timer = Some(after_ms);
        Ok(())
    }
}
