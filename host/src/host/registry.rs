//! The registry of room actors: dispatching an event to a room's actor
//! (making it when the room has none), retiring an actor with nothing left
//! to do, hibernating the least recently used room under memory pressure,
//! and room-to-room calls ([`RoomCalls`]), which dispatch as this host.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::oneshot;
use tracing::Instrument;

use super::{Host, RoomEntry};
use crate::cluster::Owner;
use crate::cluster::forward;
use crate::lock::lock;
use crate::room::instance::Party;
use crate::room::state::{RoomCalls, RoomStatus};
use crate::room::{self, Event, Registry, RoomRx, RoomTx};
use crate::route::RoomKey;
use crate::wit;

impl Host {
    /// Deliver an event to a room, starting its actor if needed; `false`
    /// when the host is shutting down. A socket learns which actor to talk
    /// to from its connect's reply ([`crate::room::Accepted`]): the actor
    /// that ran its on-connect.
    pub async fn dispatch(self: &Arc<Self>, key: &RoomKey, mut event: Event) -> bool {
        loop {
            if self.shared.shutdown.is_cancelled() {
                return false;
            }
            let (tx, generation) = self.room(key);
            match tx.send(event).await {
                Ok(()) => return true,
                Err(back) => {
                    // The actor retired (or died) after we looked it up:
                    // forget that entry and start a fresh actor.
                    event = back;
                    let mut rooms = lock(&self.rooms);
                    if rooms.get(key).is_some_and(|e| e.generation == generation) {
                        rooms.remove(key);
                    }
                }
            }
        }
    }

    pub(super) fn rooms_of(&self, party: &str) -> Vec<RoomTx> {
        lock(&self.rooms)
            .iter()
            .filter(|((p, _), _)| **p == *party)
            .map(|(_, e)| e.tx.clone())
            .collect()
    }

    fn room(self: &Arc<Self>, key: &RoomKey) -> (RoomTx, u64) {
        let mut rooms = lock(&self.rooms);
        if let Some(e) = rooms.get(key) {
            return (e.tx.clone(), e.generation);
        }
        let (tx, rx) = room::queue();
        let generation = self.next_serial();
        let status = Arc::new(RoomStatus::default());
        rooms.insert(
            key.clone(),
            RoomEntry {
                tx: tx.clone(),
                generation,
                status: status.clone(),
            },
        );
        let actor = room::Room::new(
            self.shared.clone(),
            key.clone(),
            generation,
            (tx.clone(), rx),
            status,
            self.limits_for(&key.0),
            self.is_builtin(&key.0),
        );
        // Every log line of the room (hook failures, guest logs) carries this span.
        let span = tracing::info_span!("room", party = %key.0, room = %key.1);
        self.tasks.spawn(Box::new(actor).serve().instrument(span));
        (tx, generation)
    }

    /// How many room actors are live (for tests and `rooms` later).
    pub fn live_rooms(&self) -> usize {
        lock(&self.rooms).len()
    }
}

impl Registry for Host {
    fn party(&self, name: &str) -> Option<Arc<Party>> {
        Host::party(self, name)
    }

    /// Called by a room with no connections and no instance: remove it from
    /// the registry unless an event is waiting. Runs under the registry lock,
    /// so no new sender is handed out meanwhile; a sender handed out before
    /// either landed its event first (and the room stays) or finds the
    /// queue closed, and `dispatch` starts a new actor. The check and the
    /// close are one step under the queue's lock, so nothing lands between
    /// them: no event is ever left in a retired queue.
    fn retire(&self, key: &RoomKey, generation: u64, rx: &mut RoomRx) -> bool {
        let mut rooms = lock(&self.rooms);
        if !rx.close_if_empty() {
            return false;
        }
        if rooms.get(key).is_some_and(|e| e.generation == generation) {
            rooms.remove(key);
        }
        true
    }

    /// Ask the awake room with the oldest last event to hibernate (it does
    /// after its current event), unless it was asked already. For a wake
    /// that found the pool full.
    fn hibernate_least_recent(&self) {
        let rooms = lock(&self.rooms);
        let lru = rooms
            .values()
            .filter(|e| e.status.awake.load(Relaxed) && !e.status.hibernate_asked.load(Relaxed))
            .min_by_key(|e| e.status.last_event_ms.load(Relaxed));
        if let Some(e) = lru
            && !e.status.hibernate_asked.swap(true, Relaxed)
            && !e.tx.try_send(Event::Hibernate)
        {
            // Its queue is full: it is busy, and will be asked again.
            e.status.hibernate_asked.store(false, Relaxed);
        }
    }
}

impl RoomCalls for Host {
    fn serves(&self, party: &str) -> bool {
        Host::serves(self, party)
    }

    fn call(
        &self,
        target: RoomKey,
        request: wit::Request,
        chain: Vec<RoomKey>,
    ) -> Pin<Box<dyn Future<Output = Option<wit::Response>> + Send>> {
        let host = self.me.upgrade();
        Box::pin(async move {
            let host = host?;
            if let Some(cluster) = host.cluster() {
                match cluster.owner(&target).await {
                    Ok(Owner::Local) => {}
                    Ok(Owner::Remote(addr)) => {
                        cluster.metrics.forwards.fetch_add(1, Relaxed);
                        return forward::call(&addr, &target, request, &chain, cluster).await;
                    }
                    Err(_) => return None,
                }
            }
            let (reply, answer) = oneshot::channel();
            let event = Event::Request {
                request: Box::new(request),
                chain,
                reply,
            };
            if !host.dispatch(&target, event).await {
                return None;
            }
            answer.await.ok()
        })
    }
}
