//! The room layer: the room actor, one task per live room, handling its
//! events one at a time, and everything a room is made of. It may use the
//! cluster and store layers and the leaves; the host and the edge use it.
//!
//! Here: the actor loop. `queue.rs` and `event.rs`: what it is sent.
//! `calls.rs`: calls to other rooms that do not hold the room.
//! `hooks.rs`: the wake, the hook runner and the output gate, alarm
//! retries. `holding.rs`: a room in a cluster. `instance.rs`: the engine and
//! an instance. `state.rs`: what a room keeps across hibernation.
//! `imports/`: the WIT imports. `outbound.rs`: a connection's way out.
//! `presence.rs`: presence the host keeps. `relay.rs`: the builtin relay.
//!
//! # Hibernation
//!
//! A room is `Awake` (it has an [`Instance`]) or `Hibernated` (it has only its
//! [`RoomState`]: connections, their state and tags, its storage handle). An
//! event for a hibernated room wakes it: a fresh instance from the party's
//! current version, on-start, then the event. When no event arrives for
//! `idle_timeout`, the instance is dropped and the state taken back. Sockets
//! belong to their own tasks, so clients notice nothing either way.
//!
//! # The output gate
//!
//! A hook's sends wait in the state's outbox. When the hook returns, its
//! storage batch is committed and awaited; only then is the outbox released
//! to the sockets. If the hook traps or the commit fails, both are dropped,
//! so no client ever sees a state that a crash could lose.
//!
//! While more messages wait in the queue, a message's hook does not commit
//! alone: its writes and output are settled (a savepoint) and the next
//! message's hook runs, reading them, until the queue holds something else
//! or the group reaches its bound (`Room::joins_group`); then one commit
//! makes the whole group durable and every output leaves, in order. A hook
//! that fails takes back only what it did since the savepoint; the group's
//! earlier hooks still commit. So a burst of N small updates costs one
//! commit per group instead of N commits in series, and nothing leaves
//! before it is durable.

pub(crate) mod calls;
mod event;
mod holding;
pub(crate) mod hooks;
mod imports;
pub mod instance;
pub(crate) mod outbound;
mod presence;
mod queue;
mod relay;
pub(crate) mod state;

pub use event::{Accepted, ConnRef, Connect, Event};
use hooks::{Fault, failed_response};
pub use queue::{RoomRx, RoomTx, queue};

use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use self::instance::{Call, Instance, Party, Reply, Runtime};
use self::state::{Capabilities, Connection, RoomState, RoomStatus};
use crate::alarms::Alarms;
use crate::clock::now_ms;
use crate::cluster::{ClaimedRoom, Cluster};
use crate::config::Limits;
use crate::http::text_response;
use crate::metrics::{Hook, Metrics};
use crate::route::RoomKey;
use crate::store::{Committed, RoomStorage, Storage};
use crate::wit::dormouse::room::connections::Presence;
use crate::wit::{self, ConnectionInfo};
use crate::ws::to_ws;

/// What a room actor may use of the host: the services rooms share, and the
/// few registry operations of [`Registry`]; never the host itself. One per
/// host, shared by every room.
pub struct Shared {
    pub runtime: Arc<Runtime>,
    pub storage: Arc<Storage>,
    /// In a cluster: this node's lease and the room claims (`None` alone).
    pub cluster: Option<Arc<Cluster>>,
    pub metrics: Arc<Metrics>,
    pub alarms: Arc<Alarms>,
    /// What guest-facing code may reach (handed to each room's state); its
    /// log is the rooms' log too.
    pub caps: Arc<Capabilities>,
    pub idle_timeout: Duration,
    /// The first retry of a failed on-alarm waits this long, then doubles.
    pub alarm_retry_ms: u64,
    /// Cancelled at shutdown: every room stops after its current event.
    pub shutdown: CancellationToken,
    /// Notified whenever an instance is dropped, for wakes waiting on a slot.
    pub slot_freed: Notify,
    pub registry: Weak<dyn Registry>,
}

/// The registry operations a room actor needs; the host implements them.
pub trait Registry: Send + Sync {
    /// A party's current version.
    fn party(&self, name: &str) -> Option<Arc<Party>>;
    /// Leave the registry unless an event is waiting; `false` keeps the
    /// actor serving. A `true` closes `rx`.
    fn retire(&self, key: &RoomKey, generation: u64, rx: &mut RoomRx) -> bool;
    /// Ask the least recently used awake room to hibernate.
    fn hibernate_least_recent(&self);
}

/// What woke the actor loop.
enum Step {
    Event(Box<Event>),
    /// The guest's timer is due.
    Timer,
    Idle,
    Stop,
}

/// Wait out a timer, if there is one.
async fn idle_wait(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.as_mut().await,
        None => std::future::pending().await,
    }
}

enum Life {
    Hibernated(RoomState),
    Awake(Instance),
    /// Only while moving between the two.
    Moving,
}

/// Set a timer to `deadline`, reusing its allocation.
fn rearm(timer: &mut Option<Pin<Box<tokio::time::Sleep>>>, deadline: tokio::time::Instant) {
    match timer {
        Some(t) => t.as_mut().reset(deadline),
        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
    }
}

pub struct Room {
    shared: Arc<Shared>,
    key: RoomKey,
    generation: u64,
    /// This actor's own queue, handed to the sockets it accepts.
    tx: RoomTx,
    rx: RoomRx,
    life: Life,
    /// The builtin relay party: hooks run in Rust, nothing wakes.
    builtin: bool,
    /// When the last event ended.
    last_event: Instant,
    /// How long the room was idle before this event: whether it may write
    /// its output to the sockets itself ([`outbound::write_now`]).
    idle_before: Duration,
    /// Hooks that ran since the last commit and wait to share the next
    /// one (see [`Room::joins_group`]).
    group: u16,
    /// The guest's pending timer (`timers.set`): only while awake.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Calls the instance started and requests it deferred: only while
    /// awake (see [`calls`]).
    waiting: Option<Box<calls::Waiting>>,
    /// When the last event that counts as activity ended (not a timer, not
    /// a quiet one): the idle timeout, and the timers' cap, run from here.
    last_active: tokio::time::Instant,
}

impl Room {
    /// A room actor, hibernated. `builtin` runs the relay in plain Rust
    /// (no Wasm; `dormouse bench`'s baseline).
    pub fn new(
        shared: Arc<Shared>,
        key: RoomKey,
        generation: u64,
        (tx, rx): (RoomTx, RoomRx),
        status: Arc<RoomStatus>,
        limits: Arc<Limits>,
        builtin: bool,
    ) -> Room {
        let party_metrics = shared.metrics.party(&key.0);
        party_metrics.rooms_hibernated.fetch_add(1, Relaxed);
        // The storage seam: on one node the room's data is SQLite's, in a
        // cluster it is the room's claim on PostgreSQL.
        let committed: Box<dyn Committed> = match &shared.cluster {
            Some(cluster) => Box::new(ClaimedRoom::new(
                cluster.clone(),
                key.clone(),
                shared.storage.clone(),
            )),
            None => Box::new(shared.storage.room(key.0.clone(), key.1.clone())),
        };
        let storage = RoomStorage::new(committed, limits.clone());
        let state = RoomState::new(
            key.0.clone(),
            key.1.clone(),
            shared.caps.clone(),
            status,
            limits,
            storage,
            party_metrics,
        );
        Room {
            builtin,
            shared,
            key,
            generation,
            tx,
            rx,
            life: Life::Hibernated(state),
            last_event: Instant::now(),
            idle_before: Duration::ZERO,
            group: 0,
            timer: None,
            waiting: None,
            last_active: tokio::time::Instant::now(),
        }
    }

    fn state(&mut self) -> &mut RoomState {
        match &mut self.life {
            Life::Hibernated(s) => s,
            Life::Awake(i) => i.state(),
            Life::Moving => unreachable!("a room is never observed while moving"),
        }
    }

    /// The actor loop. The room is boxed: an async fn's future keeps its
    /// argument and the body's copy of it side by side, and every room,
    /// hibernated or not, would pay for the room twice.
    pub async fn serve(mut self: Box<Self>) {
        let idle = self.shared.idle_timeout;
        let shutdown = self.shared.shutdown.clone();
        // Only while awake: a hibernated room carries no timer.
        let mut idle_timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => Step::Stop,
                event = self.rx.recv() => match event {
                    Some(event) => Step::Event(event),
                    None => Step::Stop,
                },
                () = idle_wait(&mut self.timer) => Step::Timer,
                () = idle_wait(&mut idle_timer) => Step::Idle,
            };
            match next {
                Step::Stop => break,
                Step::Event(event) if matches!(*event, Event::Evict { .. }) => {
                    if let Event::Evict { code, reason } = *event {
                        self.evict(code, reason);
                    }
                    break;
                }
                Step::Event(event) => {
                    self.idle_before = self.last_event.elapsed();
                    // Boxed like `handle`: in a cluster a claim awaits
                    // PostgreSQL, whose futures are large (6 KB held by
                    // every hibernated room when this was inline).
                    let Some(event) = Box::pin(self.claimed(*event)).await else {
                        continue;
                    };
                    self.state().quiet = false;
                    // Boxed: the hook futures (instantiation included) are
                    // large, and an idle actor should not carry their space.
                    Box::pin(self.handle(event)).await;
                    // A group whose next event turned out not to run a
                    // hook (a stale socket's) commits now.
                    if self.group > 0 && !self.rx.next_joins_group() {
                        let _ = Box::pin(self.flush(Hook::Message)).await;
                    }
                    self.last_event = Instant::now();
                    // A quiet event keeps the deadline it found; one that
                    // woke the room ends its wake at once, unless it left
                    // a timer or a call pending.
                    let quiet = std::mem::take(&mut self.state().quiet);
                    if self.group == 0
                        && self.timer.is_none()
                        && !self.waits()
                        && (idle.is_zero() || (quiet && idle_timer.is_none()))
                    {
                        // Let the sockets this event woke write first:
                        // dropping the instance takes longer than sending.
                        tokio::task::yield_now().await;
                        self.hibernate();
                    }
                    let state = self.state();
                    let connections = state.connections.len() as u64;
                    state.status.connections.store(connections, Relaxed);
                    state.status.last_event_ms.store(now_ms(), Relaxed);
                    if !quiet {
                        self.last_active = tokio::time::Instant::now();
                    }
                    if !self.awake() {
                        idle_timer = None;
                    } else if !quiet || idle_timer.is_none() {
                        rearm(&mut idle_timer, self.last_active + idle);
                    }
                }
                Step::Timer => {
                    self.timer = None;
                    Box::pin(self.hook(Call::Timer)).await.ok();
                    self.last_event = Instant::now();
                    self.state().quiet = false;
                    // The timers are done: the room is idle from its last
                    // activity, as if they had never been set.
                    if self.timer.is_none() && self.awake() {
                        rearm(&mut idle_timer, self.last_active + idle);
                    }
                }
                Step::Idle => {
                    // Pending timers keep the room awake, up to their cap;
                    // calls, up to their deadline.
                    let limits = self.state().limits.clone();
                    let timer = self.timer.is_some().then_some(limits.timers_awake_ms);
                    let call = self.waits().then_some(limits.hook_cpu_ms);
                    let cap = timer.max(call).unwrap_or(0);
                    let until = self.last_active + idle.max(Duration::from_millis(cap));
                    if cap > 0 && tokio::time::Instant::now() < until {
                        rearm(&mut idle_timer, until);
                        continue;
                    }
                    self.hibernate();
                    idle_timer = None;
                }
            }
            if !self.awake() && self.state().connections.is_empty() && self.retire() {
                return;
            }
        }
        // Shutdown between two hooks of a group: theirs commit first.
        if self.group > 0 {
            let _ = Box::pin(self.flush(Hook::Message)).await;
        }
        self.hibernate();
        self.state()
            .party_metrics
            .rooms_hibernated
            .fetch_sub(1, Relaxed);
    }

    /// A line of this room's log (`dormouse tail`).
    fn log(&self, level: &'static str, line: impl Into<String>) {
        self.shared
            .caps
            .logs
            .emit(&self.key.0, &self.key.1, level, line);
    }

    fn awake(&self) -> bool {
        matches!(self.life, Life::Awake(_))
    }

    /// Leave the registry, unless an event is waiting (see `Host::retire`).
    fn retire(&mut self) -> bool {
        let Some(registry) = self.shared.registry.upgrade() else {
            return false;
        };
        if !registry.retire(&self.key, self.generation, &mut self.rx) {
            return false;
        }
        self.state().storage.release();
        self.state()
            .party_metrics
            .rooms_hibernated
            .fetch_sub(1, Relaxed);
        true
    }

    /// Drop the instance, keep the state. A no-op when already hibernated.
    fn hibernate(&mut self) {
        if !self.awake() {
            return;
        }
        let Life::Awake(instance) = std::mem::replace(&mut self.life, Life::Moving) else {
            unreachable!("checked awake above")
        };
        let mut state = instance.into_state();
        state.forget_hook();
        // The SQL database goes with the instance's memory; a checkpoint
        // makes its file durable on the way.
        state.storage.close_sql();
        // Timers and calls live in the instance; a deferred request's
        // caller is answered with a failure.
        self.timer = None;
        self.waiting = None;
        self.shared.slot_freed.notify_waiters();
        self.shared.metrics.hibernations.fetch_add(1, Relaxed);
        state.status.awake.store(false, Relaxed);
        state.status.hibernate_asked.store(false, Relaxed);
        self.log("host", "hibernated");
        state.party_metrics.rooms_awake.fetch_sub(1, Relaxed);
        state.party_metrics.rooms_hibernated.fetch_add(1, Relaxed);
        self.life = Life::Hibernated(state);
    }

    async fn handle(&mut self, event: Event) {
        match event {
            Event::Connect(c) => self.connect(*c).await,
            Event::Message { conn, message } => {
                if self.current(&conn) {
                    self.shared.metrics.messages_in.fetch_add(1, Relaxed);
                    if self.presence_renewal(&conn, &message) {
                        return;
                    }
                    let _ = self.hook(Call::Message(conn.id.to_string(), message)).await;
                }
            }
            Event::Closed {
                conn,
                code,
                reason,
                was_clean,
            } => {
                if self.current(&conn) {
                    let state = self.state();
                    state.closing = state.remove(&conn.id).map(|c| (conn.id.clone(), c));
                    let line = format!("connection {} closed: {code} {reason}", conn.id);
                    self.log("host", line);
                    let call = Call::Close(conn.id.to_string(), code, reason, was_clean);
                    let _ = self.hook(call).await;
                    self.state().closing = None;
                }
            }
            Event::Error { conn, description } => {
                if self.current(&conn) {
                    let _ = self
                        .hook(Call::Error(conn.id.to_string(), description))
                        .await;
                }
            }
            Event::Request {
                request,
                chain,
                reply,
            } => {
                let hook = self.state().hook();
                hook.chain = chain;
                hook.answering = true;
                let result = self.hook(Call::Request(*request)).await;
                let hook = self.state().hook();
                hook.chain.clear();
                hook.answering = false;
                match result {
                    Ok(Reply::Response(r)) => {
                        let _ = reply.send(r);
                    }
                    Ok(Reply::Deferred(id)) => self.defer(id, reply),
                    _ => {
                        let _ = reply.send(failed_response());
                    }
                }
            }
            Event::Answer { id, answer } => self.answer(id, answer).await,
            Event::Alarm { attempt } => self.alarm(attempt).await,
            Event::Hibernate => self.hibernate(),
            Event::HandOff => self.hand_off().await,
            Event::Evict { code, reason } => self.evict(code, reason),
        }
    }

    /// A presence renewal the room asked the host to keep (see
    /// [`self::presence`]): taken into the sender's state and relayed to
    /// every connection, without a hook or a wake; or an echo of what the
    /// room holds, dropped. Not while a group waits for its commit, whose
    /// output must leave first.
    fn presence_renewal(&mut self, conn: &ConnRef, message: &wit::Message) -> bool {
        let idle = idle(&self.rx, self.idle_before);
        let metrics = self.shared.metrics.clone();
        let group = self.group;
        let state = self.state();
        let (Some(Presence::YjsAwareness), wit::Message::Binary(bytes), 0) =
            (state.presence, message, group)
        else {
            return false;
        };
        let max = state.limits.connection_state_bytes;
        let held = state
            .connections
            .get(&*conn.id)
            .and_then(|c| c.state.as_deref());
        let others = state
            .connections
            .iter()
            .filter(|(id, _)| **id != conn.id)
            .filter_map(|(_, c)| c.state.as_deref());
        let renewed = match presence::yjs_awareness(bytes, held, others) {
            Some(presence::Awareness::Renewal(renewed)) if renewed.len() <= max => renewed,
            Some(presence::Awareness::Echo) => {
                state.quiet = true;
                return true;
            }
            _ => return false,
        };
        let Some(c) = state.connections.get_mut(&*conn.id) else {
            return false;
        };
        c.state = Some(renewed);
        let now = outbound::write_now(idle, state.connections.len());
        let sent = state.broadcast_now(&to_ws(message.clone()), &[], now);
        metrics.messages_out.fetch_add(sent, Relaxed);
        state.quiet = true;
        true
    }

    /// Whether an event comes from the socket that holds the id now.
    fn current(&mut self, conn: &ConnRef) -> bool {
        self.state()
            .connections
            .get(&*conn.id)
            .is_some_and(|c| c.serial == conn.serial)
    }

    async fn connect(&mut self, c: Connect) {
        let id = c.conn.id.to_string();
        let state = self.state();
        if let Some(max) = state.limits.connections_per_room
            && state.connections.len() >= max
            && !state.connections.contains_key(id.as_str())
        {
            let line = format!("this room is full ({max} connections)");
            let _ = c.reply.send(Err(text_response(503, &line)));
            return;
        }
        let connection = Connection {
            serial: c.conn.serial,
            uri: c.request.uri.clone(),
            tags: Vec::new(),
            state: None,
            outbound: c.outbound,
            forwarded: c.forwarded,
        };
        // A client that reconnects with the same `_pk` (partysocket does)
        // replaces its old socket: the old one is closed and the room hears
        // on-close for it before on-connect for the new one.
        if let Some(old) = self.state().insert(c.conn.id.clone(), connection) {
            old.outbound
                .close(1000, "replaced by a new connection with the same id");
            // The new socket holds the id now; the old one's state is not
            // readable in this on-close (get-state sees the listed one).
            let call = Call::Close(id.clone(), 1000, "replaced".into(), true);
            let _ = self.hook(call).await;
        }
        let info = ConnectionInfo {
            id: id.clone(),
            uri: c.request.uri.clone(),
            tags: Vec::new(),
        };
        let verdict = match self.hook(Call::Connect(info, c.request)).await {
            Ok(Reply::Connect(v)) => v,
            _ => Err(failed_response()),
        };
        if verdict.is_err() {
            self.state().remove(&id);
        }
        let line = match &verdict {
            Ok(()) => format!("connection {id} opened"),
            Err(r) => format!("connection {id} refused with {}", r.status),
        };
        self.log("host", line);
        let accepted = Accepted {
            room: self.tx.clone(),
            status: self.state().status.clone(),
        };
        let _ = c.reply.send(verdict.map(|()| accepted));
    }
}

/// How idle a room is as its output leaves: not at all while events wait,
/// else how long it was idle before this event.
fn idle(rx: &RoomRx, idle_before: Duration) -> Duration {
    if rx.is_empty() {
        idle_before
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of what `f` returns, without calling it.
    fn returned_size<A, F>(_: &impl Fn(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// Every hibernated room keeps its actor: the loop's future and the
    /// boxed room. What any `.await` in the loop holds inline, and every
    /// field of the room, every room pays for, awake or not.
    #[test]
    fn an_idle_actor_is_small() {
        let size = returned_size(&Room::serve) + std::mem::size_of::<Room>();
        // 696 bytes here (288 + 408). It was 6,448 when a cluster claim was
        // awaited inline, and 1,200 with the room unboxed (kept twice).
        assert!(size <= 768, "an idle actor is {size} bytes: box what grew");
    }
}
