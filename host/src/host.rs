//! The host: parties, the registry of room actors, and what they share
//! (runtime, storage, metrics, shutdown).
//!
//! A room actor exists while the room has connections or work; a room with
//! neither retires (see [`Host::retire`]), so the registry holds only live
//! rooms. Lookups hold a std `Mutex` for a map access, never across `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::alarms::Alarms;
use crate::config::{Config, Limits};
use crate::instance::{Party, Runtime};
use crate::metrics::Metrics;
use crate::room::{self, Event};
use crate::storage::Storage;

/// A room's key in the registry: (party, room id).
pub type RoomKey = (Arc<str>, Arc<str>);

/// How many events may wait for a room before senders wait too.
const ROOM_QUEUE: usize = 64;

pub struct Host {
    pub config: Config,
    pub limits: Arc<Limits>,
    pub runtime: Arc<Runtime>,
    pub storage: Arc<Storage>,
    pub metrics: Arc<Metrics>,
    pub alarms: Alarms,
    /// Cancelled to shut down: the accept loop, the sockets and the rooms stop.
    pub shutdown: CancellationToken,
    /// Every task the host spawned, to wait for them at shutdown.
    pub tasks: TaskTracker,
    parties: Mutex<HashMap<String, Arc<Party>>>,
    rooms: Mutex<HashMap<RoomKey, RoomEntry>>,
    serial: AtomicU64,
}

struct RoomEntry {
    tx: mpsc::Sender<Event>,
    generation: u64,
}

impl Host {
    /// Open storage, make the engine and compile the configured parties.
    pub fn new(config: Config) -> anyhow::Result<Arc<Host>> {
        config.validate()?;
        let limits = Arc::new(config.limits.clone());
        let metrics = Arc::new(Metrics::default());
        let runtime = Runtime::new(limits.clone())?;
        let storage = Storage::open(&config.data_dir, metrics.clone())?;
        let mut parties = HashMap::new();
        for (name, p) in &config.parties {
            let component = config.component(name)?;
            let bytes = std::fs::read(&component).map_err(|e| {
                anyhow::anyhow!(
                    "party {name}: cannot read component {}: {e}",
                    component.display()
                )
            })?;
            let party = Party::load(&runtime, name, &bytes, p.vars.clone())?;
            metrics.party(name);
            parties.insert(name.clone(), Arc::new(party));
        }
        let alarms = Alarms::default();
        for (party, room, at) in storage.alarms()? {
            alarms.set((party.into(), room.into()), at, 0);
        }
        Ok(Arc::new(Host {
            config,
            limits,
            runtime,
            storage,
            metrics,
            alarms,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            parties: Mutex::new(parties),
            rooms: Mutex::new(HashMap::new()),
            serial: AtomicU64::new(1),
        }))
    }

    /// The current version of a party.
    pub fn party(&self, name: &str) -> Option<Arc<Party>> {
        lock(&self.parties).get(name).cloned()
    }

    /// Serve a new version of a party. Awake rooms of the party finish their
    /// current event and hibernate; their next wake runs the new version.
    /// No connection is touched.
    pub async fn deploy(&self, party: Party) {
        let name = party.name.clone();
        self.metrics.party(&name);
        lock(&self.parties).insert(name.clone(), Arc::new(party));
        let rooms: Vec<mpsc::Sender<Event>> = lock(&self.rooms)
            .iter()
            .filter(|((p, _), _)| **p == *name)
            .map(|(_, e)| e.tx.clone())
            .collect();
        for tx in rooms {
            let _ = tx.send(Event::Hibernate).await;
        }
    }

    /// A fresh serial number, to tell connections with the same id apart.
    pub fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Relaxed)
    }

    /// Deliver an event to a room, starting its actor if needed. Returns the
    /// room's sender (sockets keep it for their later events), or `None` when
    /// the host is shutting down.
    pub async fn dispatch(
        self: &Arc<Self>,
        key: &RoomKey,
        mut event: Event,
    ) -> Option<mpsc::Sender<Event>> {
        loop {
            if self.shutdown.is_cancelled() {
                return None;
            }
            let (tx, generation) = self.room(key);
            match tx.send(event).await {
                Ok(()) => return Some(tx),
                Err(mpsc::error::SendError(back)) => {
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

    fn room(self: &Arc<Self>, key: &RoomKey) -> (mpsc::Sender<Event>, u64) {
        let mut rooms = lock(&self.rooms);
        if let Some(e) = rooms.get(key) {
            return (e.tx.clone(), e.generation);
        }
        let (tx, rx) = mpsc::channel(ROOM_QUEUE);
        let generation = self.next_serial();
        rooms.insert(
            key.clone(),
            RoomEntry {
                tx: tx.clone(),
                generation,
            },
        );
        let actor = room::Room::new(self.clone(), key.clone(), generation, rx);
        // Every log line of the room (hook failures, guest logs) carries this span.
        let span = tracing::info_span!("room", party = %key.0, room = %key.1);
        self.tasks.spawn(actor.serve().instrument(span));
        (tx, generation)
    }

    /// Called by a room with no connections and no instance: remove it from
    /// the registry unless an event is waiting. Runs under the registry lock,
    /// so no new sender can be handed out meanwhile; a sender handed out
    /// before finds the channel closed and `dispatch` starts a new actor.
    pub(crate) fn retire(
        &self,
        key: &RoomKey,
        generation: u64,
        rx: &mut mpsc::Receiver<Event>,
    ) -> bool {
        let mut rooms = lock(&self.rooms);
        if !rx.is_empty() {
            return false;
        }
        if rooms.get(key).is_some_and(|e| e.generation == generation) {
            rooms.remove(key);
        }
        rx.close();
        true
    }

    /// How many room actors are live (for tests and `rooms` later).
    pub fn live_rooms(&self) -> usize {
        lock(&self.rooms).len()
    }
}

/// Lock a mutex; a panic elsewhere while holding it does not poison the host.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
