//! Room-to-room calls that do not hold the room (`rooms.start`, `defer`,
//! `respond`): what an awake room waits for between its hooks, the calls'
//! deadline, and the answers' way back.
//!
//! A Durable Object takes new events while it awaits a fetch (its input
//! gate closes only around storage); a room here does too. A hook that
//! starts a call hands it to the room, which sends it once the hook's
//! writes commit: a call is output, and the output gate holds it as it
//! holds a message. The answer comes back through the room's own queue as
//! an [`Event::Answer`] and runs `on-answer`. Meanwhile the room's other
//! events run, calls back into it included, so a cycle of rooms (A -> B ->
//! A) makes progress where `rooms.fetch`, which holds the room, has to be
//! refused. An on-request that needs such a call defers its answer
//! (`rooms.defer`) and a later hook gives it (`rooms.respond`).
//!
//! What a room waits for belongs to its instance. It keeps the room awake
//! (a call ends by its deadline, the hook CPU limit; a deferred request by
//! its caller's), and it goes with the instance: after a trap or
//! hibernation no answer runs, and a deferred caller gets a failure.

use std::collections::{HashMap, HashSet};
use std::sync::Weak;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::oneshot;

use super::instance::{Call, Reply};
use super::state::RoomCalls;
use super::{Event, Room};
use crate::route::RoomKey;
use crate::wit::{Error, Request, Response};

/// A call a hook started, waiting for the hook to commit.
pub struct Started {
    pub id: u64,
    pub target: RoomKey,
    pub request: Request,
}

/// The ids of calls and deferred requests: unique in the process, so an
/// answer meant for an instance that is gone never reaches the next one.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Relaxed)
}

/// What an awake room waits for between its hooks.
#[derive(Default)]
pub struct Waiting {
    /// Calls sent, by id, whose answer has not come.
    calls: HashSet<u64>,
    /// Requests deferred, by id: their callers' replies.
    replies: HashMap<u64, oneshot::Sender<Response>>,
}

/// Run a call to `target`'s on-request within `timeout`: what
/// `rooms.fetch` returns, and what `on-answer` is given.
pub async fn call(
    rooms: &Weak<dyn RoomCalls>,
    target: RoomKey,
    request: Request,
    chain: Vec<RoomKey>,
    timeout: Duration,
) -> Result<Response, Error> {
    let Some(rooms) = rooms.upgrade() else {
        return Err(Error::Unavailable("the host is shutting down".into()));
    };
    let (party, room) = (target.0.clone(), target.1.clone());
    let call = rooms.call(target, request, chain);
    // The host is not kept alive by a call in flight.
    drop(rooms);
    match tokio::time::timeout(timeout, call).await {
        Ok(Some(response)) => Ok(response),
        Ok(None) => Err(Error::Unavailable("the room is unavailable".into())),
        Err(_) => Err(Error::Unavailable(format!(
            "{party}/{room} did not answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

impl Room {
    /// A hook committed: send the calls it started and the answers it gave
    /// to deferred requests, and keep the request it deferred. `reply` is
    /// what the hook returned; a request it deferred and answered itself
    /// is answered with that.
    pub(super) fn after_commit(&mut self, reply: Reply) -> Reply {
        let Some(hook) = self.state().hook_mut() else {
            return reply;
        };
        if hook.calls.is_empty() && hook.responses.is_empty() && hook.deferred.is_none() {
            return reply;
        }
        let calls = std::mem::take(&mut hook.calls);
        let responses = std::mem::take(&mut hook.responses);
        let deferred = hook.deferred.take();
        let timeout = Duration::from_millis(self.state().limits.hook_cpu_ms);
        let mut reply = deferred.map_or(reply, Reply::Deferred);
        let waiting = self.waiting.get_or_insert_with(Box::default);
        for Started {
            id,
            target,
            request,
        } in calls
        {
            waiting.calls.insert(id);
            let tx = self.tx.clone();
            let rooms = self.shared.caps.rooms.clone();
            tokio::spawn(async move {
                // Nobody waits on this call: its chain is empty.
                let answer = call(&rooms, target, request, Vec::new(), timeout).await;
                let _ = tx.send(Event::Answer { id, answer }).await;
            });
        }
        for (id, response) in responses {
            if deferred == Some(id) {
                reply = Reply::Response(response);
            } else if let Some(caller) = waiting.replies.remove(&id) {
                let _ = caller.send(response);
            }
        }
        reply
    }

    /// Keep a deferred request's caller until a hook responds.
    pub(super) fn defer(&mut self, id: u64, caller: oneshot::Sender<Response>) {
        let waiting = self.waiting.get_or_insert_with(Box::default);
        waiting.replies.insert(id, caller);
    }

    /// Whether the room waits for an answer or owes one to a caller that
    /// still waits.
    pub(super) fn waits(&mut self) -> bool {
        let Some(waiting) = self.waiting.as_deref_mut() else {
            return false;
        };
        waiting.replies.retain(|_, caller| !caller.is_closed());
        !waiting.calls.is_empty() || !waiting.replies.is_empty()
    }

    /// A call's answer came: on-answer runs if the instance that started
    /// the call is still the room's.
    pub(super) async fn answer(&mut self, id: u64, answer: Result<Response, Error>) {
        let started_here = self.awake()
            && self
                .waiting
                .as_deref_mut()
                .is_some_and(|w| w.calls.remove(&id));
        if started_here {
            let _ = self.hook(Call::Answer(id, answer)).await;
        }
    }
}
