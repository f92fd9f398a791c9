//! `dormouse:room/connections`: send, broadcast, close, list, state and tags.
//!
//! Sends are queued in the room's outbox and leave after the hook's writes
//! commit (the output gate, see `room.rs`).

use tokio_tungstenite::tungstenite;

use super::check_size;
use crate::room_state::{MAX_OUTBOX_BYTES, Outgoing, RoomState};
use crate::wit::dormouse::room::connections::Host;
use crate::wit::{ConnectionInfo, Error, Message};

impl RoomState {
    fn known(&self, id: &str) -> Result<(), Error> {
        if self.connections.contains_key(id) {
            Ok(())
        } else {
            Err(Error::UnknownConnection(id.to_owned()))
        }
    }

    /// Charge `len` bytes to the outbox, or refuse.
    fn reserve(&mut self, len: usize) -> Result<(), Error> {
        check_size("message", len, self.limits.message_bytes)?;
        if self.outbox_bytes + len > MAX_OUTBOX_BYTES {
            return Err(Error::TooLarge(format!(
                "one hook may send at most {MAX_OUTBOX_BYTES} bytes"
            )));
        }
        self.outbox_bytes += len;
        Ok(())
    }

    fn info(&self, id: &str) -> Option<ConnectionInfo> {
        self.connections.get(id).map(|c| ConnectionInfo {
            id: id.to_owned(),
            uri: c.uri.clone(),
            tags: c.tags.clone(),
        })
    }
}

/// The WebSocket form of a WIT message.
pub fn to_ws(message: Message) -> tungstenite::Message {
    match message {
        Message::Text(t) => tungstenite::Message::text(t),
        Message::Binary(b) => tungstenite::Message::binary(b),
    }
}

fn message_len(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
    }
}

impl Host for RoomState {
    fn send(&mut self, id: String, message: Message) -> wasmtime::Result<Result<(), Error>> {
        Ok((|| {
            self.known(&id)?;
            self.reserve(message_len(&message))?;
            self.outbox.push(Outgoing::To(id, to_ws(message)));
            Ok(())
        })())
    }

    fn broadcast(
        &mut self,
        message: Message,
        except: Vec<String>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok((|| {
            self.reserve(message_len(&message) + except.iter().map(String::len).sum::<usize>())?;
            self.outbox.push(Outgoing::All(to_ws(message), except));
            Ok(())
        })())
    }

    fn close(
        &mut self,
        id: String,
        code: u16,
        reason: String,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok((|| {
            self.known(&id)?;
            if code != 1000 && !(3000..=4999).contains(&code) {
                return Err(Error::Invalid(format!(
                    "close code {code}: use 1000 or 3000..=4999"
                )));
            }
            // A close frame carries at most 123 bytes of reason.
            check_size("close reason", reason.len(), 123)?;
            self.reserve(reason.len())?;
            self.outbox.push(Outgoing::Close(id, code, reason));
            Ok(())
        })())
    }

    fn get(&mut self, id: String) -> wasmtime::Result<Option<ConnectionInfo>> {
        Ok(self.info(&id))
    }

    fn list(&mut self, tag: Option<String>) -> wasmtime::Result<Vec<ConnectionInfo>> {
        let mut ids: Vec<&String> = self
            .connections
            .iter()
            .filter(|(_, c)| tag.as_ref().is_none_or(|t| c.tags.contains(t)))
            .map(|(id, _)| id)
            .collect();
        // Stable order for guests (and tests): by id.
        ids.sort();
        Ok(ids.into_iter().filter_map(|id| self.info(id)).collect())
    }

    fn get_state(&mut self, id: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok(match self.connections.get(&id) {
            Some(c) => Ok(c.state.clone()),
            None => Err(Error::UnknownConnection(id)),
        })
    }

    fn set_state(
        &mut self,
        id: String,
        state: Option<Vec<u8>>,
    ) -> wasmtime::Result<Result<(), Error>> {
        let max = self.limits.connection_state_bytes;
        Ok(match self.connections.get_mut(&id) {
            None => Err(Error::UnknownConnection(id)),
            Some(c) => check_size("connection state", state.as_ref().map_or(0, Vec::len), max)
                .map(|()| c.state = state),
        })
    }

    fn set_tags(&mut self, id: String, tags: Vec<String>) -> wasmtime::Result<Result<(), Error>> {
        let (max_tags, max_len) = (self.limits.tags_per_connection, self.limits.tag_bytes);
        Ok((|| {
            if tags.len() > max_tags {
                return Err(Error::TooLarge(format!(
                    "{} tags; the limit is {max_tags}",
                    tags.len()
                )));
            }
            for t in &tags {
                if t.is_empty() {
                    return Err(Error::Invalid("a tag may not be empty".into()));
                }
                check_size("tag", t.len(), max_len)?;
            }
            let c = self
                .connections
                .get_mut(&id)
                .ok_or_else(|| Error::UnknownConnection(id.clone()))?;
            c.tags = tags;
            Ok(())
        })())
    }
}
