//! A room in a cluster: an event runs only once this node holds the room
//! (its claim), a quiet room is handed off to the node its sockets come
//! through, and a node that self-fenced evicts its rooms' sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tracing::warn;

use super::{Event, Fault, Room};
use crate::alarms::Attempt;
use crate::http::text_response;
use crate::store::{Claiming, StorageError};

impl Room {
    /// Close and forget every connection (the party was deleted, or the
    /// room is no longer this node's).
    pub(super) fn evict(&mut self, code: u16, reason: &str) {
        // Output never sent was never seen: a group still open goes too.
        if self.group > 0 {
            self.group = 0;
            self.state().discard_all();
        }
        self.hibernate();
        let state = self.state();
        state.storage.drop_claim();
        let ids: Vec<Arc<str>> = state.connections.keys().cloned().collect();
        for id in ids {
            if let Some(c) = state.remove(&id) {
                c.outbound.close(code, reason);
            }
        }
    }

    /// Give the room up to the node its clients now come through (the host
    /// asked: see [`Event::HandOff`]), unless a direct socket came meanwhile.
    pub(super) async fn hand_off(&mut self) {
        let state = self.state();
        let all = state.connections.len() as u64;
        if all == 0 || state.status.forwarded.load(Relaxed) != all {
            return;
        }
        self.log(
            "host",
            "handing the room off to the node its clients come through",
        );
        self.hibernate();
        // Given up in PostgreSQL before the sockets hear of it: a client
        // that reconnected sooner would find this node still the holder.
        self.state().storage.hand_off().await;
        self.evict(1012, "this room is moving to another node; reconnect");
    }

    /// In a cluster, an event runs only once this node holds the room
    /// (claimed now if need be). When another node holds it, the event is
    /// answered here: a connect or request gets 503 (the client retries
    /// and lands on the owner), a socket of this room is closed with 1012.
    pub(super) async fn claimed(&mut self, event: Event) -> Option<Event> {
        // An answer runs only on the instance that started its call, which
        // claimed the room then (and its commit checks it still holds it).
        if self.builtin
            || matches!(
                event,
                Event::Hibernate | Event::HandOff | Event::Answer { .. }
            )
        {
            return Some(event);
        }
        // An event of a socket the room no longer has is dropped by
        // `handle`: no reason to claim the room for it.
        if let Event::Message { conn, .. } | Event::Closed { conn, .. } | Event::Error { conn, .. } =
            &event
            && !self.current(conn)
        {
            return Some(event);
        }
        let claiming = self.state().storage.claim().await;
        let e = match claiming {
            Ok(Claiming::Held) => return Some(event),
            Ok(Claiming::Claimed { alarm }) => {
                if let Some(at) = alarm {
                    self.shared
                        .alarms
                        .set(self.key.clone(), at, Attempt::default());
                }
                return Some(event);
            }
            Err(e) => e,
        };
        warn!(error = %e, "cannot claim the room here");
        let line = match e {
            StorageError::Moved => "this room is served by another node; retry",
            _ => "this room is unavailable; retry",
        };
        match event {
            Event::Connect(c) => {
                let _ = c.reply.send(Err(text_response(503, line)));
            }
            Event::Request { reply, .. } => {
                let _ = reply.send(text_response(503, line));
            }
            // Not lost: tried again later (a node that holds the room has
            // it scheduled itself).
            Event::Alarm { attempt } if !matches!(e, StorageError::Moved) => {
                self.retry_alarm(attempt, Fault::Host).await;
            }
            _ => self.evict(1012, "this room moved to another node; reconnect"),
        }
        None
    }
}
