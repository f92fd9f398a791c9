//! `dormouse:room/rooms`: a room calls another room's on-request.
//!
//! The one async import: the caller's hook waits (its instance parked on a
//! fiber, its worker thread free) while the callee handles the request.

use std::sync::Arc;
use std::time::Duration;

use crate::room::state::RoomState;
use crate::route::{self, RoomKey};
use crate::wit::dormouse::room::rooms::Host;
use crate::wit::{Error, Request, Response};

impl Host for RoomState {
    async fn fetch(
        &mut self,
        party: String,
        room: String,
        mut request: Request,
    ) -> wasmtime::Result<Result<Response, Error>> {
        let Some(rooms) = self.caps.rooms.upgrade() else {
            return Ok(Err(Error::Unavailable("the host is shutting down".into())));
        };
        if !route::valid_party_name(&party) || !rooms.serves(&party) {
            return Ok(Err(Error::Invalid(format!(
                "no party named {party:?} is deployed"
            ))));
        }
        if !route::valid_room_id(&room) {
            return Ok(Err(Error::Invalid(
                "room ids are 1 to 256 bytes and hold no '/' and no NUL".into(),
            )));
        }
        // Only nodes send `x-dormouse-*` headers to each other.
        request
            .headers
            .retain(|(name, _)| !route::node_header(name));
        if request.body.len() > self.limits.message_bytes {
            return Ok(Err(Error::TooLarge(format!(
                "request bodies are limited to {} bytes",
                self.limits.message_bytes
            ))));
        }
        let target: RoomKey = (Arc::from(party.as_str()), Arc::from(room.as_str()));
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
                "this call would deadlock: {}",
                path.join(" -> ")
            ))));
        }
        if request.uri.is_empty() {
            request.uri = format!("/parties/{party}/{room}");
        }
        let mut chain = waiting.to_vec();
        if !self.lobby {
            chain.push(me);
        }
        // Two chains that wait on each other cannot be seen from one chain;
        // the timeout ends that case with an error instead of a hang.
        let timeout = Duration::from_millis(self.limits.hook_cpu_ms);
        let call = rooms.call(target, request, chain);
        Ok(match tokio::time::timeout(timeout, call).await {
            Ok(Some(response)) => Ok(response),
            Ok(None) => Err(Error::Unavailable("the room is unavailable".into())),
            Err(_) => Err(Error::Unavailable(format!(
                "{party}/{room} did not answer within {} ms",
                timeout.as_millis()
            ))),
        })
    }
}
