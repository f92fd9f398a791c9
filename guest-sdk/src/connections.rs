//! `dormouse:room/connections`: the room's WebSockets, owned by the host.
//!
//! Connections stay open while the room hibernates, and so do their state
//! and tags. Messages sent from a hook leave after it returns and its
//! storage writes are durable.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::dormouse::room::connections as wit;
use crate::bindings::dormouse::room::types::ConnectionInfo;
use crate::{Error, Message};

/// One connection of the room, by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    id: String,
}

impl Connection {
    /// The connection with this id (it may have closed since).
    ///
    /// ```no_run
    /// let c = dormouse_sdk::Connection::new("abc");
    /// let _ = c.send_text("hi");
    /// ```
    pub fn new(id: impl Into<String>) -> Self {
        Connection { id: id.into() }
    }

    /// The id: the client's `_pk`, or one the host made.
    ///
    /// ```
    /// assert_eq!(dormouse_sdk::Connection::new("abc").id(), "abc");
    /// ```
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Send a message to this connection.
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// conn.send(dormouse_sdk::Message::Binary(vec![1, 2])).ok();
    /// ```
    pub fn send(&self, message: Message) -> Result<(), Error> {
        wit::send(&self.id, &message)
    }

    /// Send a text message to this connection.
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// conn.send_text("welcome").ok();
    /// ```
    pub fn send_text(&self, text: &str) -> Result<(), Error> {
        self.send(Message::Text(text.to_owned()))
    }

    /// Close with a code (1000, or 3000..=4999) and a reason.
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// conn.close(4000, "bye").ok();
    /// ```
    pub fn close(&self, code: u16, reason: &str) -> Result<(), Error> {
        wit::close(&self.id, code, reason)
    }

    /// The path and query of the upgrade request, and the tags; `None` once closed.
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// let uri = conn.info().map(|i| i.uri);
    /// ```
    pub fn info(&self) -> Option<ConnectionInfo> {
        wit::get(&self.id)
    }

    /// The state blob the host keeps for this connection, across hibernation
    /// (and still readable in its own `on_close`).
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// let raw: Option<Vec<u8>> = conn.state().ok().flatten();
    /// ```
    pub fn state(&self) -> Result<Option<Vec<u8>>, Error> {
        wit::get_state(&self.id)
    }

    /// Replace the state blob (16 KiB at most by default).
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// conn.set_state(Some(b"x")).ok();
    /// ```
    pub fn set_state(&self, state: Option<&[u8]>) -> Result<(), Error> {
        wit::set_state(&self.id, state)
    }

    /// The state as a JSON-decoded value; `None` when unset or not that type.
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// let name: Option<String> = conn.state_json();
    /// ```
    pub fn state_json<T: DeserializeOwned>(&self) -> Option<T> {
        let bytes = self.state().ok()??;
        serde_json::from_slice(&bytes).ok()
    }

    /// Store a value as the state, JSON-encoded.
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// conn.set_state_json(&"alice").ok();
    /// ```
    pub fn set_state_json<T: Serialize>(&self, value: &T) -> Result<(), Error> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Invalid(e.to_string()))?;
        self.set_state(Some(&bytes))
    }

    /// Replace the tags (at most 10, each 1..=256 bytes); see [`list`].
    ///
    /// ```no_run
    /// # let conn = dormouse_sdk::Connection::new("a");
    /// conn.set_tags(&["admin".into()]).ok();
    /// ```
    pub fn set_tags(&self, tags: &[String]) -> Result<(), Error> {
        wit::set_tags(&self.id, tags)
    }
}

/// Send a message to every connection except those in `except`.
///
/// ```no_run
/// use dormouse_sdk::{connections, Message};
/// connections::broadcast(Message::Text("hi all".into()), &[]).ok();
/// ```
pub fn broadcast(message: Message, except: &[&str]) -> Result<(), Error> {
    let except: Vec<String> = except.iter().map(|s| (*s).to_owned()).collect();
    wit::broadcast(&message, &except)
}

/// Every open connection, or those carrying `tag`.
///
/// ```no_run
/// let admins = dormouse_sdk::connections::list(Some("admin"));
/// ```
pub fn list(tag: Option<&str>) -> Vec<Connection> {
    wit::list(tag)
        .into_iter()
        .map(|i| Connection { id: i.id })
        .collect()
}

/// Every open connection with its uri and tags.
///
/// ```no_run
/// for info in dormouse_sdk::connections::infos(None) { let _ = info.uri; }
/// ```
pub fn infos(tag: Option<&str>) -> Vec<ConnectionInfo> {
    wit::list(tag)
}

/// Have the host answer `request` with `response` by itself, without waking
/// the room, for every connection (text or binary, each <= 2048 bytes).
/// `None` clears it. Lasts across hibernation while the host runs; set it
/// again in [`crate::Room::on_start`] to have it after a restart too.
///
/// ```no_run
/// use dormouse_sdk::{connections, Message};
/// connections::set_auto_response(Some((Message::Text("ping".into()), Message::Text("pong".into())))).ok();
/// ```
pub fn set_auto_response(pair: Option<(Message, Message)>) -> Result<(), Error> {
    let pair = pair.map(|(request, response)| wit::AutoResponse { request, response });
    wit::set_auto_response(pair.as_ref())
}

/// The room's auto-response pair, if set.
///
/// ```no_run
/// let pair = dormouse_sdk::connections::auto_response();
/// ```
pub fn auto_response() -> Option<(Message, Message)> {
    wit::get_auto_response().map(|p| (p.request, p.response))
}

/// Presence the host keeps for the room by itself, without waking it.
pub use wit::Presence;

/// Set (or with `None`, clear) the room's presence rule: messages it
/// covers are handled by the host and never reach `on_message`.
/// [`crate::yjs`] sets [`Presence::YjsAwareness`], so a client's awareness
/// heartbeat is kept and relayed without a wake.
///
/// ```no_run
/// use dormouse_sdk::connections::{self, Presence};
/// connections::set_presence(Some(Presence::YjsAwareness));
/// ```
pub fn set_presence(rule: Option<Presence>) {
    wit::set_presence(rule);
}
