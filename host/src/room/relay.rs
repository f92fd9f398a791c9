//! The builtin relay (`builtin = "relay"`): every message goes to every
//! other connection, with no guest at all; the baseline the benchmarks
//! compare rooms with.

use super::instance::{Call, Reply};
use super::state::Outgoing;
use super::{Room, idle};
use crate::http::text_response;
use crate::ws::to_ws;

impl Room {
    /// The builtin party: the relay example's logic in plain Rust, on the
    /// same actor, queues and sockets, with no instance (and so no wake).
    /// Only `dormouse bench` uses it, to measure what Wasm costs.
    pub(super) fn builtin_relay(&mut self, call: Call) -> Reply {
        let metrics = self.shared.metrics.clone();
        let idle = idle(&self.rx, self.idle_before);
        let state = self.state();
        match call {
            Call::Connect(..) => Reply::Connect(Ok(())),
            Call::Message(id, message) => {
                state
                    .hook()
                    .outbox
                    .push(Outgoing::All(to_ws(message), vec![id]));
                state.release(&metrics, idle);
                Reply::Done
            }
            Call::Request(_) => Reply::Response(text_response(200, "builtin relay")),
            Call::Start
            | Call::Close(..)
            | Call::Error(..)
            | Call::Alarm(_)
            | Call::Timer
            | Call::Cron(..)
            | Call::Answer(..) => Reply::Done,
            Call::Lobby(..) => Reply::Lobby(None),
        }
    }
}
