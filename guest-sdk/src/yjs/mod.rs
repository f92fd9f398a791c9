//! Yjs documents that hibernate: the y-websocket protocol, as y-partykit's
//! and y-websocket's providers speak it, over the room's storage
//! (feature `yjs`).
//!
//! ```no_run
//! use dormouse_sdk::yjs::{Access, Y, YRoom};
//! use dormouse_sdk::{Connection, Request};
//!
//! #[derive(Default)]
//! struct Notes;
//!
//! impl YRoom for Notes {
//!     fn on_connect(&mut self, _conn: &Connection, request: &Request) -> Access {
//!         match request.query("mode") {
//!             Some("view") => Access::ReadOnly,
//!             _ => Access::Write,
//!         }
//!     }
//! }
//!
//! dormouse_sdk::export!(Y<Notes>);
//! ```
//!
//! What the room does, message by message (y-protocols' `sync`,
//! `awareness` and `auth` messages):
//! - on connect it sends its sync step 1 and everyone's awareness;
//! - a client's sync step 1 gets a sync step 2 (the document it lacks);
//! - a client's sync step 2 or update is checked, appended to storage as one
//!   small put, and relayed to the others; the output gate means a client
//!   sees its edit relayed only once it is durable;
//! - awareness updates are kept in the sender's connection state (they
//!   survive hibernation) and relayed to everyone, the sender too (see
//!   `awareness::apply`); a heartbeat that changes nothing but clocks is
//!   kept and relayed by the host without waking the room
//!   ([`connections::Presence::YjsAwareness`]), and one that reaches the
//!   room anyway is [`context::quiet`];
//!   a closed connection's clients are broadcast as removed;
//! - y-partykit's custom messages (text frames starting `__YPS:`) go to
//!   [`YRoom::on_custom_message`];
//! - a message that does not decode closes only its sender, with code 4400
//!   and the reason; the document is untouched.
//!
//! The room owns the alarm: it compacts the updates into a snapshot
//! ([`Compaction`]), then calls [`YRoom::on_change`] with the document.

mod awareness;
mod document;

use yrs::encoding::read::Cursor;
use yrs::sync::{Message as YMessage, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;

pub use document::{Document, Refused};
pub use yrs;

use crate::{Connection, Level, Message, Request, Response, Room, connections, context};

/// The tag on read-only connections (kept by the host across hibernation).
const READ_ONLY: &str = "y:read-only";
/// y-partykit's prefix for custom string messages.
const CUSTOM: &str = "__YPS:";
/// The close code for a message that does not decode.
pub const MALFORMED: u16 = 4400;
/// y-partykit's provider sends a message over 1 MB as chunks between two
/// text markers that start with this.
const BATCH: &str = "y-pk-batch#";
/// The largest chunked message put back together.
const MAX_BATCH: usize = 64 << 20;

/// What a connecting client may do.
pub enum Access {
    /// Read and edit.
    Write,
    /// Read, and see presence; its edits are dropped (as y-partykit's
    /// `readOnly`), though its own awareness is shared.
    ReadOnly,
    /// Refuse the upgrade with this response.
    Deny(Response),
}

/// When updates are folded into a snapshot.
pub struct Compaction {
    /// This long after the first update since the last compaction
    /// (y-partykit's callback debounce is 2 s by default).
    pub after_ms: u64,
    /// At once when this many updates are waiting...
    pub updates: u64,
    /// ...or when one update is at least this large.
    pub bytes: usize,
}

impl Default for Compaction {
    fn default() -> Self {
        Compaction {
            after_ms: 2_000,
            updates: 500,
            bytes: 256 << 10,
        }
    }
}

/// A Yjs room's own logic. Every method has a default; export it as
/// `dormouse_sdk::export!(Y<MyRoom>)`.
pub trait YRoom: Default + 'static {
    /// When to compact.
    fn compaction(&self) -> Compaction {
        Compaction::default()
    }

    /// Who may connect, and whether they may edit. Default: everyone edits.
    fn on_connect(&mut self, conn: &Connection, request: &Request) -> Access {
        let _ = (conn, request);
        Access::Write
    }

    /// The document after updates were folded into it (debounced by
    /// [`Compaction`]): save a copy elsewhere, index it, and so on.
    fn on_change(&mut self, doc: &yrs::Doc) {
        let _ = doc;
    }

    /// A y-partykit custom message (`provider.sendMessage(...)`), without
    /// its prefix. Answer with [`send_custom`] or [`broadcast_custom`].
    fn on_custom_message(&mut self, conn: &Connection, message: &str) {
        let _ = (conn, message);
    }

    /// A plain HTTP request. Default: `GET` answers with the whole document
    /// as one Yjs v1 update (`Y.applyUpdate` reads it); anything else is 405.
    fn on_request(&mut self, request: Request, document: &mut Document) -> Response {
        if request.method != "GET" {
            return Response::text(405, "a Yjs room answers GET with its document");
        }
        match document.update() {
            Ok(bytes) => Response::with_type(200, "application/octet-stream", bytes),
            Err(e) => Response::text(503, format!("the document could not be read: {e:?}")),
        }
    }
}

/// Send a y-partykit custom message to one connection.
pub fn send_custom(conn: &Connection, message: &str) {
    let _ = conn.send_text(&format!("{CUSTOM}{message}"));
}

/// Send a y-partykit custom message to every connection but `except`.
pub fn broadcast_custom(message: &str, except: &[&str]) {
    let _ = connections::broadcast(Message::Text(format!("{CUSTOM}{message}")), except);
}

/// The [`Room`] that runs a [`YRoom`]: export this type.
#[derive(Default)]
pub struct Y<R: YRoom> {
    room: R,
    document: Document,
    /// Chunked messages being put back together, by connection. Guest
    /// memory: a wake in the middle of one loses it, and the end marker
    /// then closes the client, which resyncs when it reconnects.
    batches: std::collections::HashMap<String, Vec<u8>>,
}

/// Send to one connection. A refusal (a closed connection is only late;
/// anything else is a bound) is logged, never dropped in silence.
fn send(conn: &Connection, message: &YMessage) {
    match conn.send(Message::Binary(message.encode_v1())) {
        Ok(()) | Err(crate::Error::UnknownConnection(_)) => {}
        Err(e) => context::log(Level::Error, &format!("yjs: send to {}: {e:?}", conn.id())),
    }
}

fn broadcast(message: &YMessage, except: &[&str]) {
    if let Err(e) = connections::broadcast(Message::Binary(message.encode_v1()), except) {
        context::log(Level::Error, &format!("yjs: broadcast: {e:?}"));
    }
}

/// Close a client whose message is not y-protocols (reasons are cut to fit
/// a close frame).
fn malformed(conn: &Connection, why: &str) {
    let mut reason = why.to_owned();
    if reason.len() > 120 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    context::log(Level::Warn, &format!("yjs: closing {}: {why}", conn.id()));
    let _ = conn.close(MALFORMED, &reason);
}

impl<R: YRoom> Y<R> {
    fn answer_step1(&mut self, conn: &Connection, sv: &yrs::StateVector) {
        match self.document.answer(sv) {
            Ok(answer) => {
                send(conn, &YMessage::Sync(SyncMessage::SyncStep2(answer.step2)));
                for update in answer.updates {
                    send(conn, &YMessage::Sync(SyncMessage::Update(update)));
                }
            }
            Err(e) => context::log(Level::Error, &format!("yjs: sync step 2 failed: {e:?}")),
        }
    }

    fn take_update(&mut self, conn: &Connection, update: Vec<u8>) -> Result<(), ()> {
        let read_only = conn
            .info()
            .is_some_and(|i| i.tags.iter().any(|t| t == READ_ONLY));
        if read_only {
            return Ok(());
        }
        let policy = self.room.compaction();
        match self.document.append(&update, &policy) {
            Ok(true) => {
                broadcast(&YMessage::Sync(SyncMessage::Update(update)), &[conn.id()]);
                Ok(())
            }
            Ok(false) => Ok(()),
            Err(e @ Refused::Malformed(_)) => {
                malformed(conn, &e.to_string());
                Err(())
            }
            Err(e @ Refused::Storage(_)) => {
                // Not the client's fault, and not relayed: the client keeps
                // the edit and sends it again when it reconnects.
                context::log(Level::Error, &format!("yjs: {e}"));
                let _ = conn.close(1011, "the edit could not be stored");
                Err(())
            }
        }
    }
}

impl<R: YRoom> Room for Y<R> {
    fn on_connect(&mut self, conn: &Connection, request: &Request) -> Result<(), Response> {
        match self.room.on_connect(conn, request) {
            Access::Deny(response) => return Err(response),
            Access::ReadOnly => {
                let _ = conn.set_tags(&[READ_ONLY.to_owned()]);
            }
            Access::Write => {}
        }
        // Awareness heartbeats are the host's to keep and relay (they
        // change nothing but clocks): they never wake the room.
        connections::set_presence(Some(connections::Presence::YjsAwareness));
        match self.document.state_vector() {
            Ok(sv) => match yrs::StateVector::decode_v1(&sv) {
                Ok(sv) => send(conn, &YMessage::Sync(SyncMessage::SyncStep1(sv))),
                Err(e) => context::log(Level::Error, &format!("yjs: stored state vector: {e}")),
            },
            Err(e) => context::log(Level::Error, &format!("yjs: document unreadable: {e:?}")),
        }
        if let Some(all) = awareness::all() {
            send(conn, &YMessage::Awareness(all));
        }
        Ok(())
    }

    fn on_message(&mut self, conn: &Connection, message: Message) {
        let bytes = match message {
            Message::Text(text) => {
                if let Some(custom) = text.strip_prefix(CUSTOM) {
                    self.room.on_custom_message(conn, custom);
                } else if let Some(marker) = text.strip_prefix(BATCH) {
                    self.batch_marker(conn, marker);
                }
                return;
            }
            Message::Binary(bytes) => match self.batches.get_mut(conn.id()) {
                Some(batch) if batch.len() + bytes.len() > MAX_BATCH => {
                    self.batches.remove(conn.id());
                    return malformed(conn, "chunked Yjs message over 64 MiB");
                }
                Some(batch) => return batch.extend_from_slice(&bytes),
                None => bytes,
            },
        };
        self.handle(conn, &bytes);
    }

    fn on_close(&mut self, conn: &Connection, _code: u16, _reason: &str, _was_clean: bool) {
        self.batches.remove(conn.id());
        if let Some(gone) = awareness::removal(conn) {
            broadcast(&YMessage::Awareness(gone), &[]);
        }
    }

    fn on_request(&mut self, request: Request) -> Response {
        self.room.on_request(request, &mut self.document)
    }

    fn on_alarm(&mut self, _retry_count: u32) {
        match self.document.compact() {
            Ok(Some(doc)) => self.room.on_change(&doc),
            Ok(None) => {}
            // Trapping rolls the compaction back, and the alarm retries it.
            Err(e) => panic!("yjs: compaction failed: {e:?}"),
        }
    }
}

impl<R: YRoom> Y<R> {
    /// A y-partykit batch marker: `{"type":"start"|"end",...}`.
    fn batch_marker(&mut self, conn: &Connection, marker: &str) {
        if marker.contains(r#""type":"start""#) {
            self.batches.insert(conn.id().to_owned(), Vec::new());
        } else if marker.contains(r#""type":"end""#) {
            match self.batches.remove(conn.id()) {
                Some(bytes) => self.handle(conn, &bytes),
                None => malformed(conn, "a chunked Yjs message was interrupted; reconnect"),
            }
        }
    }

    /// One binary frame (or a put-together batch) of y-protocols messages.
    fn handle(&mut self, conn: &Connection, bytes: &[u8]) {
        let mut decoder = DecoderV1::new(Cursor::new(bytes));
        let mut quiet = true;
        // A frame may carry several messages; each is taken in turn, and
        // the first that does not decode ends the connection. (The clients
        // send one per frame, so a truncated frame fails on its first.)
        for n in 0.. {
            let message = match YMessage::decode(&mut decoder) {
                Ok(m) => m,
                Err(yrs::encoding::read::Error::EndOfBuffer(_)) if n > 0 => break,
                Err(e) => return malformed(conn, &format!("malformed Yjs message: {e}")),
            };
            match message {
                YMessage::Sync(SyncMessage::SyncStep1(sv)) => {
                    quiet = false;
                    self.answer_step1(conn, &sv);
                }
                YMessage::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u)) => {
                    quiet = false;
                    if self.take_update(conn, u).is_err() {
                        return;
                    }
                }
                YMessage::Awareness(update) => {
                    let applied = awareness::apply(conn, &update);
                    quiet &= !applied.changed;
                    if let Some(relay) = applied.relay {
                        broadcast(&YMessage::Awareness(relay), &[]);
                    }
                }
                YMessage::AwarenessQuery => {
                    if let Some(all) = awareness::all() {
                        send(conn, &YMessage::Awareness(all));
                    }
                }
                // Auth is sent by servers, not clients; other tags are
                // extensions this room does not speak.
                YMessage::Auth(_) | YMessage::Custom(..) => {}
            }
        }
        if quiet {
            context::quiet();
        }
    }
}
