//! `dormouse:room/connections`: send, broadcast, close, list, state and tags.
//!
//! Sends are queued in the room's outbox and leave after the hook's writes
//! commit (the output gate, see `room/hooks.rs`).

use std::sync::Arc;

#[cfg(test)]
use tokio_tungstenite::tungstenite;

use super::check_size;
use crate::config::MAX_MESSAGE_BYTES;
use crate::room::state::{Connection, MAX_OUTBOX_BYTES, Outgoing, RoomState, Undo};
use crate::wit::dormouse::room::connections::{AutoResponse as AutoResponsePair, Host, Presence};
use crate::wit::{ConnectionInfo, Error, Message};
use crate::ws::{from_ws, len as message_len, to_ws};

impl RoomState {
    fn known(&self, id: &str) -> Result<(), Error> {
        if self.connections.contains_key(id) {
            Ok(())
        } else {
            Err(Error::UnknownConnection(id.to_owned()))
        }
    }

    /// An open connection, to change it; `unknown-connection` otherwise.
    fn connection_mut(&mut self, id: &str) -> Result<&mut Connection, Error> {
        self.connections
            .get_mut(id)
            .map(|c| &mut **c)
            .ok_or_else(|| Error::UnknownConnection(id.to_owned()))
    }

    /// Charge `len` bytes to the outbox, or refuse.
    fn reserve(&mut self, len: usize) -> Result<(), Error> {
        check_size("message", len, MAX_MESSAGE_BYTES)?;
        let hook = self.hook();
        if hook.outbox_bytes + len > MAX_OUTBOX_BYTES {
            return Err(Error::TooLarge(format!(
                "one hook may send at most {MAX_OUTBOX_BYTES} bytes"
            )));
        }
        hook.outbox_bytes += len;
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

/// The longest auto-response request or response, as Durable Objects allow.
const MAX_AUTO_RESPONSE: usize = 2048;

impl Host for RoomState {
    fn set_auto_response(
        &mut self,
        pair: Option<AutoResponsePair>,
    ) -> wasmtime::Result<Result<(), Error>> {
        Ok((|| {
            let Some(pair) = pair else {
                self.hook().auto_response = Some(None);
                return Ok(());
            };
            check_size(
                "auto-response request",
                message_len(&pair.request),
                MAX_AUTO_RESPONSE,
            )?;
            check_size(
                "auto-response response",
                message_len(&pair.response),
                MAX_AUTO_RESPONSE,
            )?;
            let pair = (to_ws(pair.request), to_ws(pair.response));
            self.hook().auto_response = Some(Some(pair));
            Ok(())
        })())
    }

    fn get_auto_response(&mut self) -> wasmtime::Result<Option<AutoResponsePair>> {
        let pair = match self.hook_ref().and_then(|h| h.auto_response.as_ref()) {
            Some(pending) => pending.clone(),
            None => self.status.auto_response(),
        };
        Ok(pair.and_then(|(request, response)| {
            Some(AutoResponsePair {
                request: from_ws(&request)?,
                response: from_ws(&response)?,
            })
        }))
    }

    fn set_presence(&mut self, rule: Option<Presence>) -> wasmtime::Result<()> {
        self.presence = rule;
        Ok(())
    }

    fn send(&mut self, id: String, message: Message) -> wasmtime::Result<Result<(), Error>> {
        Ok((|| {
            self.known(&id)?;
            self.reserve(message_len(&message))?;
            self.hook().outbox.push(Outgoing::To(id, to_ws(message)));
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
            self.hook()
                .outbox
                .push(Outgoing::All(to_ws(message), except));
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
            self.hook().outbox.push(Outgoing::Close(id, code, reason));
            Ok(())
        })())
    }

    fn get(&mut self, id: String) -> wasmtime::Result<Option<ConnectionInfo>> {
        Ok(self.info(&id))
    }

    fn list(&mut self, tag: Option<String>) -> wasmtime::Result<Vec<ConnectionInfo>> {
        let mut ids: Vec<&Arc<str>> = self
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
        let closing = self
            .closing
            .as_ref()
            .filter(|(closing, _)| **closing == *id)
            .map(|(_, c)| c);
        Ok(match self.connections.get(id.as_str()).or(closing) {
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
        Ok((|| {
            check_size("connection state", state.as_ref().map_or(0, Vec::len), max)?;
            let old = std::mem::replace(&mut self.connection_mut(&id)?.state, state);
            self.hook().undo.push(Undo::State(id, old));
            Ok(())
        })())
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
            let old = std::mem::replace(&mut self.connection_mut(&id)?.tags, tags);
            self.hook().undo.push(Undo::Tags(id, old));
            Ok(())
        })())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::metrics::Metrics;
    use crate::room::state::test_support::{connect, room_state};

    fn text(s: &str) -> Message {
        Message::Text(s.into())
    }

    #[test]
    fn sends_wait_for_release_and_respect_except() {
        let mut s = room_state();
        let a = connect(&mut s, "a");
        let b = connect(&mut s, "b");
        s.broadcast(text("all"), vec!["a".into()])
            .expect("no trap")
            .expect("ok");
        s.send("a".into(), text("just a"))
            .expect("no trap")
            .expect("ok");
        // Nothing leaves before the output gate releases it.
        assert!(a.try_recv().is_none() && b.try_recv().is_none());
        s.release(&Metrics::default(), Duration::MAX);
        assert_eq!(
            a.try_recv().expect("a got"),
            tungstenite::Message::text("just a")
        );
        assert!(a.try_recv().is_none());
        assert_eq!(
            b.try_recv().expect("b got"),
            tungstenite::Message::text("all")
        );
    }

    #[test]
    fn a_closing_connection_keeps_its_state_readable_only_while_closing() {
        let mut s = room_state();
        let _a = connect(&mut s, "a");
        s.set_state("a".into(), Some(b"awareness".to_vec()))
            .expect("no trap")
            .expect("ok");
        let gone = s.remove("a").expect("listed");
        s.closing = Some(("a".into(), gone));
        assert!(s.list(None).expect("no trap").is_empty());
        let state = s.get_state("a".into()).expect("no trap").expect("ok");
        assert_eq!(state.as_deref(), Some(&b"awareness"[..]));
        assert!(s.get_state("b".into()).expect("no trap").is_err());
        s.closing = None;
        assert!(s.get_state("a".into()).expect("no trap").is_err());
    }

    #[test]
    fn discard_drops_unsent_messages() {
        let mut s = room_state();
        let a = connect(&mut s, "a");
        s.send("a".into(), text("lost"))
            .expect("no trap")
            .expect("ok");
        s.discard();
        s.release(&Metrics::default(), Duration::MAX);
        assert!(a.try_recv().is_none());
    }

    /// Hooks that share a commit: the failed one's messages and state go,
    /// the settled one's stay and leave at the release, in order; and if
    /// the shared commit fails, everything goes.
    #[test]
    fn discard_after_settle_keeps_the_settled_hooks_output() {
        let mut s = room_state();
        let a = connect(&mut s, "a");
        s.send("a".into(), text("first"))
            .expect("no trap")
            .expect("ok");
        s.set_state("a".into(), Some(b"one".to_vec()))
            .expect("no trap")
            .expect("ok");
        s.settle();
        s.send("a".into(), text("lost"))
            .expect("no trap")
            .expect("ok");
        s.set_state("a".into(), Some(b"two".to_vec()))
            .expect("no trap")
            .expect("ok");
        s.discard();
        assert_eq!(
            s.get_state("a".into()).expect("no trap").expect("ok"),
            Some(b"one".to_vec())
        );
        s.send("a".into(), text("second"))
            .expect("no trap")
            .expect("ok");
        s.release(&Metrics::default(), Duration::MAX);
        let frames: Vec<_> = std::iter::from_fn(|| a.try_recv()).collect();
        assert_eq!(frames.len(), 2, "first and second, not lost");

        s.send("a".into(), text("gone"))
            .expect("no trap")
            .expect("ok");
        s.set_state("a".into(), Some(b"three".to_vec()))
            .expect("no trap")
            .expect("ok");
        s.settle();
        s.send("a".into(), text("gone too"))
            .expect("no trap")
            .expect("ok");
        s.discard_all();
        s.release(&Metrics::default(), Duration::MAX);
        assert!(a.try_recv().is_none());
        assert_eq!(
            s.get_state("a".into()).expect("no trap").expect("ok"),
            Some(b"one".to_vec())
        );
    }

    #[test]
    fn discard_undoes_state_tags_and_auto_response() {
        let mut s = room_state();
        let _a = connect(&mut s, "a");
        s.set_state("a".into(), Some(b"kept".to_vec()))
            .expect("no trap")
            .expect("ok");
        s.set_tags("a".into(), vec!["old".into()])
            .expect("no trap")
            .expect("ok");
        s.release(&Metrics::default(), Duration::MAX);
        // A failed hook changes state twice, tags and the auto-response.
        s.set_state("a".into(), Some(b"x".to_vec()))
            .expect("no trap")
            .expect("ok");
        s.set_state("a".into(), Some(b"y".to_vec()))
            .expect("no trap")
            .expect("ok");
        s.set_tags("a".into(), vec!["new".into()])
            .expect("no trap")
            .expect("ok");
        let pair = AutoResponsePair {
            request: text("ping"),
            response: text("pong"),
        };
        s.set_auto_response(Some(pair))
            .expect("no trap")
            .expect("ok");
        // The hook sees its own auto-response; the sockets do not yet.
        assert!(s.get_auto_response().expect("no trap").is_some());
        assert!(s.status.auto_response().is_none());
        s.discard();
        assert_eq!(
            s.get_state("a".into()).expect("no trap").expect("ok"),
            Some(b"kept".to_vec())
        );
        assert_eq!(s.connections["a"].tags, ["old"]);
        assert!(s.get_auto_response().expect("no trap").is_none());
        // A hook that succeeds keeps what it set.
        s.set_auto_response(Some(AutoResponsePair {
            request: text("ping"),
            response: text("pong"),
        }))
        .expect("no trap")
        .expect("ok");
        s.release(&Metrics::default(), Duration::MAX);
        assert!(s.status.auto_response().is_some());
    }

    #[test]
    fn misuse_is_a_wit_error_not_a_trap() {
        let mut s = room_state();
        let _a = connect(&mut s, "a");
        assert!(matches!(
            s.send("ghost".into(), text("x")).expect("no trap"),
            Err(Error::UnknownConnection(id)) if id == "ghost"
        ));
        assert!(matches!(
            s.close("a".into(), 1006, String::new()).expect("no trap"),
            Err(Error::Invalid(_))
        ));
        // A room may send more than a client may (a large document's
        // sync answer), up to the protocol's ceiling.
        let large = "x".repeat(crate::config::Limits::default().message_bytes + 1);
        assert!(matches!(
            s.send("a".into(), text(&large)).expect("no trap"),
            Ok(())
        ));
        let big = "x".repeat(MAX_MESSAGE_BYTES + 1);
        assert!(matches!(
            s.send("a".into(), text(&big)).expect("no trap"),
            Err(Error::TooLarge(_))
        ));
        let state = vec![0u8; 16 * 1024 + 1];
        assert!(matches!(
            s.set_state("a".into(), Some(state)).expect("no trap"),
            Err(Error::TooLarge(_))
        ));
        let eleven: Vec<String> = (0..11).map(|i| i.to_string()).collect();
        assert!(matches!(
            s.set_tags("a".into(), eleven).expect("no trap"),
            Err(Error::TooLarge(_))
        ));
        assert!(matches!(
            s.set_tags("a".into(), vec!["t".repeat(257)])
                .expect("no trap"),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn state_tags_and_list_by_tag() {
        let mut s = room_state();
        let _a = connect(&mut s, "a");
        let _b = connect(&mut s, "b");
        s.set_tags("b".into(), vec!["admin".into()])
            .expect("no trap")
            .expect("ok");
        s.set_state("a".into(), Some(b"alice".to_vec()))
            .expect("no trap")
            .expect("ok");
        let admins = s.list(Some("admin".into())).expect("no trap");
        assert_eq!(admins.len(), 1);
        assert_eq!(admins[0].id, "b");
        assert_eq!(admins[0].tags, ["admin"]);
        let all: Vec<String> = s
            .list(None)
            .expect("no trap")
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(
            s.get_state("a".into()).expect("no trap").expect("ok"),
            Some(b"alice".to_vec())
        );
        assert!(s.get("c".into()).expect("no trap").is_none());
    }
}
