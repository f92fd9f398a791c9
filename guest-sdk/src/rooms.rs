//! `dormouse:room/rooms`: call another room's on-request, waking it if
//! needed, and wait (`fetch`) or not (`start`, answered in
//! [`crate::Room::on_answer`]; `defer` and `respond`).

use crate::bindings::dormouse::room::rooms as wit;
use crate::{Error, Request, Response};

/// Send `request` to room `room` of party `party` and wait for its
/// response. A call back into a room already waiting in this chain
/// (A -> B -> A) fails with [`Error::Invalid`] instead of deadlocking.
///
/// ```no_run
/// use dormouse_sdk::{rooms, Request};
/// let request = Request { method: "GET".into(), uri: String::new(), headers: vec![], body: vec![] };
/// let count = rooms::fetch("counter", "lobby", request).map(|r| r.body);
/// ```
pub fn fetch(party: &str, room: &str, request: Request) -> Result<Response, Error> {
    wit::fetch(party, room, &request)
}

/// Send `request` as [`fetch`] does, without waiting: it leaves when this
/// hook returns (after its writes commit), and the answer comes to
/// [`crate::Room::on_answer`] with the id returned here. Meanwhile the room
/// takes its other events, calls back into it included (A -> B -> A). Not
/// in [`crate::Room::on_cron`], which has no later hook: use [`fetch`].
///
/// ```no_run
/// use dormouse_sdk::{rooms, Request};
/// let request = Request { method: "POST".into(), uri: String::new(), headers: vec![], body: b"hi".to_vec() };
/// let id = rooms::start("counter", "lobby", request);
/// ```
pub fn start(party: &str, room: &str, request: Request) -> Result<u64, Error> {
    wit::start(party, room, &request)
}

/// In [`crate::Room::on_request`]: answer this request later, with
/// [`respond`], from this hook or a later one (what `on_request` returns is
/// then ignored).
pub fn defer() -> Result<u64, Error> {
    wit::defer()
}

/// Answer the request deferred as `id`; it leaves when this hook's writes
/// commit.
pub fn respond(id: u64, response: Response) {
    wit::respond(id, &response)
}

/// A `GET` to another room: the shortest way to read its state.
///
/// ```no_run
/// let r = dormouse_sdk::rooms::get("counter", "lobby");
/// ```
pub fn get(party: &str, room: &str) -> Result<Response, Error> {
    fetch(
        party,
        room,
        Request {
            method: "GET".into(),
            uri: String::new(),
            headers: Vec::new(),
            body: Vec::new(),
        },
    )
}
