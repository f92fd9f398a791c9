//! `dormouse:room/timers`: the room's timer, kept in memory.
//!
//! Unlike the [`crate::alarm`], a timer is not stored: it lives in the
//! instance. While it is pending the room stays awake (up to the host's
//! `timers_awake_ms`, 5 minutes by default, past the last event that was
//! not a timer), so the fields of your room are still there when
//! [`crate::Room::on_timer`] runs: batch cursor updates and flush them
//! every 16 ms, say. It goes with the instance (hibernation, a panic, a
//! deploy, a restart). A room holds one time; set it again from on-timer
//! for a repeating one.
//!
//! ```no_run
//! use std::time::Duration;
//! use dormouse_sdk::{connections, timers, Connection, Message, Room};
//!
//! #[derive(Default)]
//! struct Cursors {
//!     pending: Vec<String>,
//! }
//!
//! impl Room for Cursors {
//!     fn on_message(&mut self, _conn: &Connection, message: Message) {
//!         if let Message::Text(text) = message {
//!             if self.pending.is_empty() {
//!                 timers::set(Duration::from_millis(16));
//!             }
//!             self.pending.push(text);
//!         }
//!     }
//!     fn on_timer(&mut self) {
//!         let batch = format!("[{}]", self.pending.join(","));
//!         self.pending.clear();
//!         connections::broadcast(Message::Text(batch), &[]).ok();
//!     }
//! }
//! # dormouse_sdk::export!(Cursors);
//! ```

use std::time::Duration;

use crate::bindings::dormouse::room::timers as wit;

/// Run [`crate::Room::on_timer`] once, `after` from now (at most ~49 days),
/// replacing the time set before. Takes effect when the hook returns.
pub fn set(after: Duration) {
    wit::set(Some(u32::try_from(after.as_millis()).unwrap_or(u32::MAX)));
}

/// Cancel the timer, if one is set.
pub fn cancel() {
    wit::set(None);
}
