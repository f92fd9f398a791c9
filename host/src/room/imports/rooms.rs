//! `dormouse:room/rooms`: a room calls another room's on-request, waiting
//! (`fetch`) or not (`start`, with `defer` and `respond`; see
//! [`crate::room::calls`]).
//!
//! `fetch` is the one async import: the caller's hook waits (its instance
//! parked on a fiber, its worker thread free) while the callee handles the
//! request.

use std::sync::Arc;
use std::time::Duration;

use crate::room::calls::{self, Started};
use crate::room::state::RoomState;
use crate::route::{self, RoomKey};
use crate::wit::dormouse::room::rooms::Host;
use crate::wit::{Error, Request, Response};

impl RoomState {
    /// The room a call goes to and its request, checked.
    fn call_to(
        &self,
        party: String,
        room: String,
        mut request: Request,
    ) -> Result<(RoomKey, Request), Error> {
        let Some(rooms) = self.caps.rooms.upgrade() else {
            return Err(Error::Unavailable("the host is shutting down".into()));
        };
        if !route::valid_party_name(&party) || !rooms.serves(&party) {
            return Err(Error::Invalid(format!(
                "no party named {party:?} is deployed"
            )));
        }
        if !route::valid_room_id(&room) {
            return Err(Error::Invalid(
                "room ids are 1 to 256 bytes and hold no '/' and no NUL".into(),
            ));
        }
        // Only nodes send `x-dormouse-*` headers to each other.
        request
            .headers
            .retain(|(name, _)| !route::node_header(name));
        if request.body.len() > self.limits.message_bytes {
            return Err(Error::TooLarge(format!(
                "request bodies are limited to {} bytes",
                self.limits.message_bytes
            )));
        }
        if request.uri.is_empty() {
            request.uri = format!("/parties/{party}/{room}");
        }
        Ok((
            (Arc::from(party.as_str()), Arc::from(room.as_str())),
            request,
        ))
    }
}

impl Host for RoomState {
    async fn fetch(
        &mut self,
        party: String,
        room: String,
        request: Request,
    ) -> wasmtime::Result<Result<Response, Error>> {
        let (target, request) = match self.call_to(party, room, request) {
            Ok(checked) => checked,
            Err(e) => return Ok(Err(e)),
        };
        let me: RoomKey = (self.party.clone(), self.id.clone());
        // The callee would wait on a room that waits on it: refuse. (The
        // lobby is not its room, and nothing waits on it.)
        let waiting = self.hook_ref().map_or(&[][..], |h| &h.chain[..]);
        if !self.lobby && (target == me || waiting.contains(&target)) {
            let path: Vec<String> = waiting
                .iter()
                .chain([&me, &target])
                .map(|(p, r)| format!("{p}/{r}"))
                .collect();
            return Ok(Err(Error::Invalid(format!(
                "this call would deadlock: {} (rooms.start does not wait)",
                path.join(" -> ")
            ))));
        }
        let mut chain = waiting.to_vec();
        if !self.lobby {
            chain.push(me);
        }
        // Two chains that wait on each other cannot be seen from one chain;
        // the timeout ends that case with an error instead of a hang.
        let timeout = Duration::from_millis(self.limits.hook_cpu_ms);
        Ok(calls::call(&self.caps.rooms, target, request, chain, timeout).await)
    }

    fn start(
        &mut self,
        party: String,
        room: String,
        request: Request,
    ) -> wasmtime::Result<Result<u64, Error>> {
        if let Err(e) = self.in_room("rooms.start (the lobby and crons use fetch)") {
            return Ok(Err(e));
        }
        let (target, request) = match self.call_to(party, room, request) {
            Ok(checked) => checked,
            Err(e) => return Ok(Err(e)),
        };
        // Bounded as a hook's sends are: past this, a loop that starts
        // calls fails instead of growing host memory.
        let hook = self.hook();
        if hook.calls.len() >= MAX_STARTED {
            return Ok(Err(Error::TooLarge(format!(
                "a hook may start at most {MAX_STARTED} calls"
            ))));
        }
        let id = calls::next_id();
        hook.calls.push(Started {
            id,
            target,
            request,
        });
        Ok(Ok(id))
    }

    fn defer(&mut self) -> wasmtime::Result<Result<u64, Error>> {
        if let Err(e) = self.in_room("rooms.defer (the lobby and crons use fetch)") {
            return Ok(Err(e));
        }
        let hook = self.hook();
        if !hook.answering {
            return Ok(Err(Error::Invalid(
                "only on-request can defer its answer".into(),
            )));
        }
        Ok(Ok(*hook.deferred.get_or_insert_with(calls::next_id)))
    }

    fn respond(&mut self, id: u64, response: Response) -> wasmtime::Result<()> {
        let hook = self.hook();
        // An id answered twice in one hook: the first answer stands.
        if hook.responses.len() < MAX_STARTED && !hook.responses.iter().any(|(i, _)| *i == id) {
            hook.responses.push((id, response));
        }
        Ok(())
    }
}

/// The most calls one hook may start, and answers it may give.
const MAX_STARTED: usize = 1024;
