//! `dormouse:room/rooms`: call another room's on-request, waking it if needed.

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
