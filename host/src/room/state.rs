//! What a room keeps in the host, across hibernation: its connections (with
//! their state and tags), its storage handle, and the current hook's outbox.
//!
//! While the room is awake this value lives inside the instance's `Store`
//! (the host imports in `imports/` work on it); when the room hibernates it is
//! taken back out and the `Store` is dropped. Guest memory goes; this stays.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio_tungstenite::tungstenite::Message;

use crate::config::Limits;
use crate::lock::{read, write};
use crate::logs::Logs;
use crate::metrics::{Metrics, PartyMetrics};
use crate::room::calls::Started;
use crate::room::outbound::{self, Frame, Outbound};
use crate::route::RoomKey;
use crate::store::RoomStorage;
use crate::wit::dormouse::room::connections::Presence;
use crate::wit::{Request, Response};

/// The most bytes one hook may queue for sending (all messages, all
/// recipients counted once). Past it, sends fail with `too-large` instead of
/// growing host memory without bound.
pub const MAX_OUTBOX_BYTES: usize = 64 << 20;

/// One open connection, as the room sees it.
pub struct Connection {
    /// Tells this socket apart from an earlier one with the same id (`_pk` reuse).
    pub serial: u64,
    pub uri: String,
    pub tags: Vec<String>,
    pub state: Option<Vec<u8>>,
    pub outbound: Outbound,
    /// In a cluster: the socket came through another node (the balancer
    /// sent it there), so that node is where its room would rather be.
    pub forwarded: bool,
}

/// A message a hook sent, held until the hook's writes are durable.
pub enum Outgoing {
    To(String, Message),
    All(Message, Vec<String>),
    Close(String, u16, String),
}

/// What a room publishes about itself, shared with the registry (for
/// `dormouse rooms`, and to choose which room hibernates when the pool is
/// full) and with its sockets (which answer its auto-response without
/// waking it). One small allocation per live room.
#[derive(Default)]
pub struct RoomStatus {
    pub awake: AtomicBool,
    /// A wake waiting for a pool slot asked this room to hibernate early
    /// (at most one such request waits in its queue).
    pub hibernate_asked: AtomicBool,
    pub connections: AtomicU64,
    /// How many of the connections came through another node.
    pub forwarded: AtomicU64,
    pub last_event_ms: AtomicU64,
    /// The auto-response pair (request -> response); boxed, as most rooms
    /// never set one.
    auto_response: RwLock<Option<Box<(Message, Message)>>>,
}

impl RoomStatus {
    /// The auto-response, when `message` is its request.
    pub fn answer(&self, message: &Message) -> Option<Message> {
        let pair = read(&self.auto_response);
        match pair.as_deref() {
            Some((request, response)) if request == message => Some(response.clone()),
            _ => None,
        }
    }

    pub fn auto_response(&self) -> Option<(Message, Message)> {
        let pair = read(&self.auto_response);
        pair.as_deref().cloned()
    }

    pub fn set_auto_response(&self, pair: Option<(Message, Message)>) {
        *write(&self.auto_response) = pair.map(Box::new);
    }
}

/// What a hook changed in a connection, with the value before: a hook is
/// all-or-nothing, so a failed one puts these back.
pub enum Undo {
    State(String, Option<Vec<u8>>),
    Tags(String, Vec<String>),
}

/// What guest-facing code may reach beyond its own room, and no more: the
/// log `dormouse tail` reads, and other rooms' on-request. Never the host:
/// an import cannot deploy, delete or list anything. One per host, shared.
pub struct Capabilities {
    pub logs: Arc<Logs>,
    pub rooms: Weak<dyn RoomCalls>,
}

/// Calls from one room to another (`rooms.fetch`); the host implements it.
pub trait RoomCalls: Send + Sync {
    /// Whether a party is served here.
    fn serves(&self, party: &str) -> bool;
    /// Run `request` through a room's on-request. `chain` is the rooms
    /// waiting on it, outermost first. `None` when the room is unavailable.
    fn call(
        &self,
        target: RoomKey,
        request: Request,
        chain: Vec<RoomKey>,
    ) -> Pin<Box<dyn Future<Output = Option<Response>> + Send>>;
}

/// What the hook running now has done that waits for its end: released
/// together when its writes commit, or undone together when it fails.
/// Boxed in the room and made on a wake's first use, so a hibernated room
/// carries 8 bytes of it.
#[derive(Default)]
pub struct HookEffects {
    /// Messages, released by [`RoomState::release`].
    pub outbox: Vec<Outgoing>,
    pub outbox_bytes: usize,
    /// Connection changes, undone by [`RoomState::discard`].
    pub undo: Vec<Undo>,
    /// The auto-response the hook set: the sockets answer with it only
    /// once the hook's writes commit.
    pub auto_response: Option<Option<(Message, Message)>>,
    /// The rooms waiting on the request being handled now, outermost first
    /// (empty unless the hook is on-request called by a room).
    pub chain: Vec<RoomKey>,
    /// The timer the hook set (`timers.set`), for the room to arm when it
    /// returns: `Some(None)` cancels.
    pub timer: Option<Option<u32>>,
    /// The hook is on-request, which may defer its answer.
    pub answering: bool,
    /// Calls to other rooms the hook started, sent once it commits;
    /// responses to deferred requests, sent then too; the request this
    /// hook deferred (see [`crate::room::calls`]). A hook that did any of
    /// these commits alone, so a failure discards only its own.
    pub calls: Vec<Started>,
    pub responses: Vec<(u64, Response)>,
    pub deferred: Option<u64>,
    /// Where the running hook began, when the hooks before it wait to
    /// share its commit (see [`RoomState::settle`]).
    mark: Option<HookMark>,
}

/// The outbox, undo log and auto-response as the running hook found them
/// (the default: all empty, as with no earlier hook in the group).
#[derive(Default)]
struct HookMark {
    outbox: usize,
    outbox_bytes: usize,
    undo: usize,
    auto_response: Option<Option<(Message, Message)>>,
}

/// The room's host-side state.
pub struct RoomState {
    pub(crate) party: Arc<str>,
    pub(crate) id: Arc<str>,
    /// The log sink and calls to other rooms.
    pub(crate) caps: Arc<Capabilities>,
    /// Shared with the registry and the sockets.
    pub(crate) status: Arc<RoomStatus>,
    pub(crate) vars: Arc<BTreeMap<String, String>>,
    pub(crate) limits: Arc<Limits>,
    /// By id; the id is the socket's own `Arc` (no second copy), and each
    /// connection is boxed so a room's map stays small while it has few.
    pub(crate) connections: HashMap<Arc<str>, Box<Connection>>,
    pub(crate) storage: RoomStorage,
    /// The current hook's pending output; `None` while hibernated.
    hook: Option<Box<HookEffects>>,
    pub(crate) party_metrics: Arc<PartyMetrics>,
    /// The connection whose on-close runs now: no longer listed, but its
    /// state can still be read (as a Durable Object reads a closing
    /// socket's attachment), so a room can tell the others what it held.
    pub(crate) closing: Option<(Arc<str>, Box<Connection>)>,
    /// The hook being run called `context.quiet`: it does not count as
    /// activity for the idle timeout. Reset by the room before each event.
    pub(crate) quiet: bool,
    /// What presence the host keeps for the room without waking it
    /// ([`crate::room::presence`]).
    pub(crate) presence: Option<Presence>,
    /// This is the state of the room's lobby (PartyKit's static hooks, run
    /// by the host before the room), not the room's: a call from it into
    /// the room is an ordinary call.
    pub(crate) lobby: bool,
}

impl RoomState {
    /// A hibernated room's state.
    #[allow(
        clippy::too_many_arguments,
        reason = "one constructor, each field named at its call"
    )]
    pub fn new(
        party: Arc<str>,
        id: Arc<str>,
        caps: Arc<Capabilities>,
        status: Arc<RoomStatus>,
        limits: Arc<Limits>,
        storage: RoomStorage,
        party_metrics: Arc<PartyMetrics>,
    ) -> RoomState {
        RoomState {
            party,
            id,
            caps,
            status,
            vars: Arc::default(),
            limits,
            connections: HashMap::new(),
            storage,
            hook: None,
            party_metrics,
            closing: None,
            quiet: false,
            presence: None,
            lobby: false,
        }
    }

    /// The current hook's pending output, made on first use.
    pub fn hook(&mut self) -> &mut HookEffects {
        self.hook.get_or_insert_with(Box::default)
    }

    /// The current hook's pending output, if it has any.
    pub fn hook_ref(&self) -> Option<&HookEffects> {
        self.hook.as_deref()
    }

    /// The same, to change.
    pub fn hook_mut(&mut self) -> Option<&mut HookEffects> {
        self.hook.as_deref_mut()
    }

    /// Free what the hooks of this wake used (the room is hibernating).
    pub fn forget_hook(&mut self) {
        self.hook = None;
    }

    /// The hook that ran last is done, but its output waits for the next
    /// hook's writes to share one commit: a later [`RoomState::discard`]
    /// takes back only what comes after this.
    pub fn settle(&mut self) {
        self.storage.savepoint();
        let hook = self.hook();
        hook.mark = Some(HookMark {
            outbox: hook.outbox.len(),
            outbox_bytes: hook.outbox_bytes,
            undo: hook.undo.len(),
            auto_response: hook.auto_response.clone(),
        });
    }

    /// Hand the outbox to the connections. Called only once the hooks'
    /// writes are committed: this is the output gate's release. `idle`: how
    /// idle the room is, which decides whether it writes to the sockets
    /// itself ([`outbound::write_now`]).
    pub fn release(&mut self, metrics: &Metrics, idle: Duration) {
        let Some(hook) = self.hook.as_deref_mut() else {
            return;
        };
        let mut outbox = std::mem::take(&mut hook.outbox);
        let now = outbound::write_now(idle, self.connections.len());
        let mut sent = 0u64;
        for out in outbox.drain(..) {
            match out {
                Outgoing::To(id, m) => {
                    if let (Some(c), Some(frame)) =
                        (self.connections.get(id.as_str()), Frame::new(&m))
                    {
                        sent += u64::from(c.outbound.push(&frame, now));
                    }
                }
                Outgoing::All(m, except) => sent += self.broadcast_now(&m, &except, now),
                Outgoing::Close(id, code, reason) => {
                    if let Some(c) = self.connections.get(id.as_str()) {
                        c.outbound.close(code, &reason);
                    }
                }
            }
        }
        let Some(hook) = self.hook.as_deref_mut() else {
            return;
        };
        // Kept, empty, for the next hook's sends.
        hook.outbox = outbox;
        hook.outbox_bytes = 0;
        hook.mark = None;
        metrics.messages_out.fetch_add(sent, Relaxed);
        hook.undo = Vec::new();
        if let Some(pair) = hook.auto_response.take() {
            self.status.set_auto_response(pair);
        }
    }

    /// Send `message` to every connection but `except`, now (not through
    /// the outbox: the caller has nothing waiting for a commit). Encoded
    /// once for every recipient; how many it reached.
    pub fn broadcast_now(&self, message: &Message, except: &[String], now: bool) -> u64 {
        let Some(frame) = Frame::new(message) else {
            return 0;
        };
        let mut sent = 0;
        for (id, c) in &self.connections {
            if !except.iter().any(|e| **e == **id) {
                sent += u64::from(c.outbound.push(&frame, now));
            }
        }
        sent
    }

    /// Undo everything the running hook did (it failed): its messages,
    /// writes, connection state and tags, and auto-response. What the hooks
    /// before it did (see [`RoomState::settle`]) stays, to be committed.
    pub fn discard(&mut self) {
        self.storage.rollback();
        let Some(hook) = self.hook.as_deref_mut() else {
            return;
        };
        let mark = hook.mark.take().unwrap_or_default();
        hook.outbox.truncate(mark.outbox);
        hook.outbox_bytes = mark.outbox_bytes;
        hook.auto_response = mark.auto_response;
        let undo = hook.undo.split_off(mark.undo.min(hook.undo.len()));
        hook.calls.clear();
        hook.responses.clear();
        hook.deferred = None;
        self.undo(undo);
    }

    /// Undo everything every hook since the last commit did (their commit
    /// failed).
    pub fn discard_all(&mut self) {
        self.storage.rollback_all();
        if let Some(hook) = self.hook.as_deref_mut() {
            hook.mark = None;
        }
        self.discard();
    }

    /// Put connection state and tags back, newest change first.
    fn undo(&mut self, undo: Vec<Undo>) {
        for undo in undo.into_iter().rev() {
            match undo {
                Undo::State(id, old) => {
                    if let Some(c) = self.connections.get_mut(id.as_str()) {
                        c.state = old;
                    }
                }
                Undo::Tags(id, old) => {
                    if let Some(c) = self.connections.get_mut(id.as_str()) {
                        c.tags = old;
                    }
                }
            }
        }
    }

    /// Remove a connection; the metrics follow.
    pub fn remove(&mut self, id: &str) -> Option<Box<Connection>> {
        let c = self.connections.remove(id)?;
        self.party_metrics.connections.fetch_sub(1, Relaxed);
        if c.forwarded {
            self.status.forwarded.fetch_sub(1, Relaxed);
        }
        Some(c)
    }

    /// Add a connection, returning one it replaces (same id).
    pub fn insert(&mut self, id: Arc<str>, c: Connection) -> Option<Box<Connection>> {
        self.party_metrics.connections.fetch_add(1, Relaxed);
        if c.forwarded {
            self.status.forwarded.fetch_add(1, Relaxed);
        }
        let old = self.connections.insert(id, Box::new(c));
        if let Some(o) = &old {
            self.party_metrics.connections.fetch_sub(1, Relaxed);
            if o.forwarded {
                self.status.forwarded.fetch_sub(1, Relaxed);
            }
        }
        old
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A `RoomState` on a temporary SQLite file, for testing the imports
    //! through their generated `Host` traits without Wasm.

    use super::*;
    use crate::room::outbound::OutboundQueue;
    use crate::store::Storage;

    /// No other rooms: these tests call no room.
    struct NoRooms;

    impl RoomCalls for NoRooms {
        fn serves(&self, _: &str) -> bool {
            false
        }

        fn call(
            &self,
            _: RoomKey,
            _: Request,
            _: Vec<RoomKey>,
        ) -> Pin<Box<dyn Future<Output = Option<Response>> + Send>> {
            Box::pin(async { None })
        }
    }

    pub fn room_state() -> RoomState {
        let dir = std::env::temp_dir().join(format!("dormouse-room-{}", uuid::Uuid::new_v4()));
        let storage = Storage::open(&dir, Arc::default()).expect("storage opens");
        let (party, id): (Arc<str>, Arc<str>) = ("main".into(), "test".into());
        let limits = Arc::new(Limits::default());
        let caps = Arc::new(Capabilities {
            logs: Arc::default(),
            rooms: Weak::<NoRooms>::new(),
        });
        let mut state = RoomState::new(
            party.clone(),
            id.clone(),
            caps,
            Arc::default(),
            limits.clone(),
            RoomStorage::new(Box::new(storage.room(party, id)), limits),
            Arc::default(),
        );
        state.vars = Arc::new(BTreeMap::from([("K".into(), "v".into())]));
        state
    }

    /// Add a connection; its outbound queue's receiver.
    pub fn connect(state: &mut RoomState, id: &str) -> OutboundQueue {
        let (outbound, rx) = Outbound::new(1 << 20);
        let c = Connection {
            serial: 1,
            uri: format!("/parties/main/test?_pk={id}"),
            tags: Vec::new(),
            state: None,
            outbound,
            forwarded: false,
        };
        state.insert(id.into(), c);
        rx
    }
}
