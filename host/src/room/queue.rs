//! A room's event queue: bounded, many senders, one receiver (the actor).
//! Hand-written rather than a tokio channel, which allocates a block of 32
//! slots and pads its halves to cache lines: every live room has one,
//! hibernated or not (see [`Queue`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::Notify;

use super::Event;
use crate::lock::lock;

/// How many events may wait for a room before senders wait too.
pub(super) const ROOM_QUEUE: usize = 64;

/// A room's event queue: bounded, many senders, one receiver (the actor).
/// Lighter than a tokio channel, which allocates a block of 32 slots and
/// pads its halves to cache lines: an empty queue here is one allocation of
/// ~150 bytes, and every live room has one, hibernated or not.
struct Queue {
    events: std::sync::Mutex<VecDeque<Box<Event>>>,
    /// Wakes the actor: an event came, or the queue closed.
    ready: Notify,
    /// Wakes a sender waiting for space.
    space: Notify,
    /// Set under the `events` lock: no send succeeds after it.
    closed: AtomicBool,
}

/// A room's event queue, sending side.
#[derive(Clone)]
pub struct RoomTx(Arc<Queue>);

/// A room's event queue, receiving side: the actor's. Dropping it closes
/// the queue.
pub struct RoomRx(Arc<Queue>);

/// A new room queue.
pub fn queue() -> (RoomTx, RoomRx) {
    let q = Arc::new(Queue {
        events: std::sync::Mutex::new(VecDeque::new()),
        ready: Notify::new(),
        space: Notify::new(),
        closed: AtomicBool::new(false),
    });
    (RoomTx(q.clone()), RoomRx(q))
}

impl RoomTx {
    /// Queue an event, waiting while the queue is full; the event comes
    /// back when the queue is closed (the actor is gone).
    pub async fn send(&self, event: Event) -> Result<(), Event> {
        let mut event = Box::new(event);
        loop {
            // Registered before looking, so space freed meanwhile is seen.
            let space = self.0.space.notified();
            match self.push(event) {
                Ok(()) => return Ok(()),
                Err((back, true)) => return Err(*back),
                Err((back, false)) => event = back,
            }
            space.await;
        }
    }

    /// Queue an event if there is room now.
    pub fn try_send(&self, event: Event) -> bool {
        self.push(Box::new(event)).is_ok()
    }

    /// Queue an event if there is room now; else the event back, and
    /// whether the queue is closed (the actor is gone) rather than full.
    pub fn offer(&self, event: Event) -> Result<(), (Event, bool)> {
        self.push(Box::new(event))
            .map_err(|(event, closed)| (*event, closed))
    }

    /// `Err((event, closed))` when closed or full.
    #[allow(clippy::type_complexity, reason = "a private helper's two refusals")]
    fn push(&self, event: Box<Event>) -> Result<(), (Box<Event>, bool)> {
        let mut events = lock(&self.0.events);
        if self.0.closed.load(Relaxed) {
            return Err((event, true));
        }
        if events.len() >= ROOM_QUEUE {
            return Err((event, false));
        }
        events.push_back(event);
        drop(events);
        self.0.ready.notify_one();
        Ok(())
    }
}

impl RoomRx {
    /// The next event; `None` once the queue is closed and drained.
    pub async fn recv(&mut self) -> Option<Box<Event>> {
        loop {
            if let Some(event) = self.try_recv() {
                return Some(event);
            }
            if self.0.closed.load(Relaxed) {
                return None;
            }
            // A notify_one before this point left a permit: no lost wakeup.
            self.0.ready.notified().await;
        }
    }

    /// Whether no event waits: the room has nothing else to do.
    pub fn is_empty(&self) -> bool {
        lock(&self.0.events).is_empty()
    }

    /// Whether the next event is one whose hook may share a commit with
    /// the hook before it (see `Room::joins_group`). Only the actor takes
    /// events, so what it sees here is what it takes next.
    pub(super) fn next_joins_group(&self) -> bool {
        matches!(
            lock(&self.0.events).front().map(|e| &**e),
            Some(Event::Message { .. } | Event::Closed { .. } | Event::Error { .. })
        )
    }

    pub fn try_recv(&mut self) -> Option<Box<Event>> {
        let mut events = lock(&self.0.events);
        let event = events.pop_front()?;
        // Give a burst's memory back once it has drained.
        if events.is_empty() && events.capacity() > 8 {
            *events = VecDeque::new();
        }
        drop(events);
        self.0.space.notify_one();
        Some(event)
    }

    /// Close the queue if nothing waits in it, in one step: a send lands
    /// before (and this refuses) or finds the queue closed.
    pub fn close_if_empty(&mut self) -> bool {
        self.close_when(|events| events.is_empty())
    }

    /// Refuse every later send; what is queued stays to be drained.
    pub fn close(&mut self) {
        self.close_when(|_| true);
    }

    fn close_when(&mut self, ok: impl FnOnce(&VecDeque<Box<Event>>) -> bool) -> bool {
        let events = lock(&self.0.events);
        if !ok(&events) {
            return false;
        }
        self.0.closed.store(true, Relaxed);
        drop(events);
        // Senders waiting for space find the queue closed.
        self.0.space.notify_waiters();
        true
    }
}

impl Drop for RoomRx {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_room_queue_is_bounded_and_closes_only_when_empty() {
        let (tx, mut rx) = queue();
        for _ in 0..ROOM_QUEUE {
            assert!(tx.try_send(Event::Hibernate));
        }
        assert!(!tx.try_send(Event::Hibernate), "full");
        // A sender waits for space and gets it when the actor takes one.
        let waiting = tokio::spawn({
            let tx = tx.clone();
            async move {
                tx.send(Event::Evict {
                    code: 1001,
                    reason: "party deleted",
                })
                .await
                .is_ok()
            }
        });
        tokio::task::yield_now().await;
        assert!(rx.try_recv().is_some());
        assert!(waiting.await.expect("sender"));
        assert!(!rx.close_if_empty(), "events wait: the room must stay");
        while rx.try_recv().is_some() {}
        assert!(rx.close_if_empty());
        // After the close, an event comes back to its sender.
        assert!(matches!(
            tx.send(Event::Hibernate).await,
            Err(Event::Hibernate)
        ));
        assert!(rx.recv().await.is_none());
    }

    #[tokio::test]
    async fn closing_wakes_a_sender_waiting_for_space() {
        let (tx, rx) = queue();
        for _ in 0..ROOM_QUEUE {
            assert!(tx.try_send(Event::Hibernate));
        }
        let waiting = tokio::spawn(async move {
            tx.send(Event::Evict {
                code: 1001,
                reason: "party deleted",
            })
            .await
            .is_err()
        });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(waiting.await.expect("sender"), "the event came back");
    }
}
