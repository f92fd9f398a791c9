//! The host: parties and their deploys, the registry of room actors, the
//! alarm loop, and shutdown.
//!
//! A room actor exists while the room has connections or work; a room with
//! neither retires (see [`Registry::retire`]), so the registry holds only
//! live rooms. Lookups hold a std `Mutex` for a map access, never across
//! `.await`. Rooms reach the host only through the narrow [`Shared`] and
//! [`Registry`] (and guest code through [`Capabilities`]).

pub mod deploys;
mod lobby;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::alarms::{Alarms, Attempt};
use crate::clock::{Ticker, now_ms};
use crate::cluster::forward;
use crate::cluster::{Cluster, Owner};
use crate::config::{Config, Limits};
use crate::host::deploys::versions::Versions;
use crate::lock::lock;
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::room::instance::{Before, Party, Runtime};
use crate::room::state::{Capabilities, RoomCalls, RoomStatus};
use crate::room::{self, Event, Registry, RoomRx, RoomTx, Shared};
use crate::route::RoomKey;
use crate::store::Storage;
use crate::store::deploys::{Deploys, Version};
use crate::wit;

/// How often, at most, the host gives freed memory back after rooms
/// hibernated (a trim walks every arena: milliseconds on a large heap).
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Host {
    config: Config,
    /// The host's limits; [`Host::limits_for`] gives a party's.
    limits: Arc<Limits>,
    party_limits: HashMap<String, Arc<Limits>>,
    /// What rooms share (runtime, storage, metrics, logs, alarms, shutdown).
    shared: Arc<Shared>,
    deploys: Deploys,
    versions: Versions,
    /// Every task the host spawned, to wait for them at shutdown.
    tasks: TaskTracker,
    parties: Mutex<HashMap<String, Arc<Party>>>,
    /// One lock per party name: its deploys, rollbacks and delete run one
    /// at a time, so storage's active version and the served one agree.
    deploying: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    rooms: Mutex<HashMap<RoomKey, RoomEntry>>,
    serial: AtomicU64,
    /// This host, for room-to-room calls ([`RoomCalls`] dispatches as it).
    me: Weak<Host>,
    /// Every socket pings its client on this tick (`ping_interval_ms`).
    pings: Arc<Ticker>,
}

struct RoomEntry {
    tx: RoomTx,
    generation: u64,
    status: Arc<RoomStatus>,
}

/// Why an admin operation failed: the caller's fault, or the host's.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A bad upload, an unknown version: nothing changed (HTTP 400).
    #[error("{0}")]
    Refused(String),
    /// No such party (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The disk or the database failed (HTTP 500; logged).
    #[error("{0:#}")]
    Failed(#[from] anyhow::Error),
}

/// One line of `GET /_dormouse/rooms`.
#[derive(serde::Serialize)]
pub struct RoomInfo {
    pub party: String,
    pub room: String,
    pub state: &'static str,
    pub connections: u64,
    pub last_event_ms: u64,
    pub storage_bytes: u64,
    /// In a cluster: the node that holds the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// What a deploy did, for the one who deployed.
#[derive(serde::Serialize)]
pub struct Deployed {
    pub party: String,
    pub version: u32,
    pub hash: String,
    pub size: usize,
    /// Live rooms of the party: each picks the version up at its next wake.
    pub rooms: usize,
}

impl Host {
    /// Open storage, make the engine and compile the configured parties.
    /// Nothing runs until [`Host::start`]. A `[cluster]` config needs
    /// [`Host::open`], which joins the cluster first.
    pub fn new(config: Config) -> anyhow::Result<Arc<Host>> {
        if config.cluster.is_some() {
            anyhow::bail!("a clustered host is made with Host::open (it joins the cluster first)");
        }
        Host::build(config, None)
    }

    /// As [`Host::new`]; with `[cluster]`, join the cluster first (this
    /// waits out this node's previous lease, up to its TTL).
    pub async fn open(config: Config) -> anyhow::Result<Arc<Host>> {
        config.validate()?;
        let cluster = match &config.cluster {
            Some(c) => Some(Cluster::join(c.resolved(config.listen)?).await?),
            None => None,
        };
        // Compiling the parties takes a while: off the runtime's workers.
        let host = tokio::task::spawn_blocking(move || Host::build(config, cluster)).await??;
        // Serve what the cluster has deployed before taking any client.
        host.follow_deploys().await?;
        Ok(host)
    }

    fn build(config: Config, cluster: Option<Arc<Cluster>>) -> anyhow::Result<Arc<Host>> {
        config.validate()?;
        let limits = Arc::new(config.limits.clone());
        let metrics = Arc::new(Metrics::default());
        let cache = config
            .compile_cache_dir
            .clone()
            .unwrap_or_else(|| config.data_dir.join("versions"));
        let runtime = Runtime::new(&limits, Some(cache.join("functions")))?;
        let storage = Storage::open(&config.data_dir, metrics.clone())?;
        let deploys = Deploys::open(&config.data_dir)?;
        let compiler = config
            .compiler
            .clone()
            .map(|exe| (exe, config.limits.clone()));
        let versions = Versions::open(
            &config.data_dir,
            config.compile_cache_dir.as_deref(),
            compiler,
        )?;
        let mut parties = HashMap::new();
        for (name, p) in &config.parties {
            if p.builtin.is_some() {
                metrics.party(name);
                continue;
            }
            let component = config.component(name)?;
            let bytes = std::fs::read(&component).map_err(|e| {
                anyhow::anyhow!(
                    "party {name}: cannot read component {}: {e}",
                    component.display()
                )
            })?;
            let party = versions.compile(&runtime, &metrics, name, &bytes, p.vars.clone())?;
            metrics.party(name);
            parties.insert(name.clone(), Arc::new(party));
        }
        // Versions deployed through the admin API win over the config file.
        for (name, active) in deploys.deployed()? {
            let (all, _) = deploys.versions(&name)?;
            // The active version first, then the earlier ones, newest first:
            // a torn or missing file costs that party its newest version,
            // never the host its start.
            let candidates = all.iter().rev().filter(|v| v.version <= active);
            let mut loaded = None;
            for v in candidates {
                let vars = config.vars(&name);
                match versions.load(&runtime, &metrics, &name, &v.hash, vars) {
                    Ok(mut party) => {
                        party.version = Some(v.version);
                        loaded = Some((party, v.version));
                        break;
                    }
                    Err(e) => tracing::error!(
                        party = name,
                        version = v.version,
                        "version {} of party {name} cannot be loaded, trying the one before: {e:#}",
                        v.version
                    ),
                }
            }
            let Some((party, version)) = loaded else {
                tracing::error!(
                    party = name,
                    "no version of party {name} can be loaded; it is not served"
                );
                continue;
            };
            metrics.party(&name);
            tracing::info!(party = name, version, "serving the deployed version");
            parties.insert(name, Arc::new(party));
        }
        let alarms = Alarms::default();
        // In a cluster, a room's holder schedules its alarm when it claims
        // the room, and a sweeper claims rooms whose holder died.
        if cluster.is_none() {
            for (party, room, at) in storage.alarms()? {
                alarms.set((party.into(), room.into()), at, Attempt::default());
            }
        }
        let party_limits = config
            .parties
            .keys()
            .map(|name| (name.clone(), Arc::new(config.party_limits(name))))
            .collect();
        let logs = Arc::new(Logs::default());
        let ping_interval = std::time::Duration::from_millis(config.ping_interval_ms);
        Ok(Arc::new_cyclic(|host: &Weak<Host>| {
            let registry: Weak<dyn Registry> = host.clone();
            let rooms: Weak<dyn RoomCalls> = host.clone();
            let shared = Arc::new(Shared {
                runtime,
                storage,
                cluster,
                metrics,
                alarms: Arc::new(alarms),
                caps: Arc::new(Capabilities { logs, rooms }),
                idle_timeout: config.idle_timeout(),
                alarm_retry_ms: limits.alarm_retry_ms,
                shutdown: CancellationToken::new(),
                slot_freed: tokio::sync::Notify::new(),
                registry,
            });
            Host {
                config,
                limits,
                party_limits,
                shared,
                deploys,
                versions,
                tasks: TaskTracker::new(),
                parties: Mutex::new(parties),
                deploying: Mutex::default(),
                rooms: Mutex::new(HashMap::new()),
                serial: AtomicU64::new(1),
                me: host.clone(),
                pings: Arc::new(Ticker::new(ping_interval)),
            }
        }))
    }

    /// Start what runs beside the rooms: the alarm loop and the ping tick.
    pub fn start(self: &Arc<Self>) {
        self.tasks.spawn(self.clone().fire_alarms());
        if let Some(cluster) = &self.shared.cluster {
            self.follow_cluster(cluster);
        }
        let (pings, stop) = (self.pings.clone(), self.shared.shutdown.clone());
        self.tasks.spawn(async move { pings.run(stop).await });
        self.tasks.spawn(self.clone().trim_after_hibernations());
    }

    /// Hibernation gives memory back: what rooms' instances freed is
    /// returned to the kernel (glibc would keep it in its arenas), at most
    /// every [`TRIM_EVERY`], and only after rooms hibernated.
    async fn trim_after_hibernations(self: Arc<Self>) {
        let mut tick = tokio::time::interval(TRIM_EVERY);
        let mut seen = 0;
        loop {
            tokio::select! {
                () = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.shared.metrics.hibernations.load(Relaxed);
            if now != seen {
                seen = now;
                let _ = tokio::task::spawn_blocking(
                    crate::host::deploys::versions::release_freed_memory,
                )
                .await;
            }
        }
    }

    /// The tick every socket pings its client on.
    pub fn pings(&self) -> &Arc<Ticker> {
        &self.pings
    }

    /// The alarm loop: send each room its due alarm, until shutdown.
    async fn fire_alarms(self: Arc<Self>) {
        let alarms = self.shared.alarms.clone();
        loop {
            for (key, attempt) in alarms.take_due(now_ms()) {
                let host = self.clone();
                self.tasks.spawn(async move {
                    host.dispatch(&key, Event::Alarm { attempt }).await;
                });
            }
            // Sleep until the next alarm, or until an earlier one is set.
            tokio::select! {
                () = self.shared.shutdown.cancelled() => return,
                () = alarms.changed() => {}
                () = tokio::time::sleep(alarms.until_next(now_ms())) => {}
            }
        }
    }

    /// In a cluster: close every room's sockets with 1012 when this node
    /// self-fences (its clients reconnect to the room's next holder), serve
    /// what other nodes deploy, and each second claim rooms whose alarm is
    /// due while their holder is gone and hand quiet rooms off. Three tasks,
    /// so that a slow compile never delays a fence.
    fn follow_cluster(self: &Arc<Self>, cluster: &Arc<Cluster>) {
        let (host, c) = (self.clone(), cluster.clone());
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = host.shared.shutdown.cancelled() => return,
                    () = c.fenced() => host.evict_all(1012, "this node left the cluster; reconnect").await,
                }
            }
        });
        let (host, mut deploys) = (self.clone(), cluster.deploys());
        self.tasks.spawn(async move {
            loop {
                let party = tokio::select! {
                    () = host.shared.shutdown.cancelled() => return,
                    Some(party) = deploys.recv() => party,
                };
                let followed = match party {
                    Some(name) => host.follow_deploy(&name).await,
                    None => host.follow_deploys().await,
                };
                if let Err(e) = followed {
                    tracing::error!("cannot follow the cluster's deploys: {e}");
                }
            }
        });
        let (host, c) = (self.clone(), cluster.clone());
        self.tasks.spawn(async move {
            let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = host.shared.shutdown.cancelled() => return,
                    _ = sweep.tick() => {}
                }
                host.hand_off_quiet_rooms();
                match c.orphaned_alarms(now_ms()).await {
                    Ok(keys) => {
                        for key in keys {
                            let attempt = Attempt::default();
                            host.dispatch(&key, Event::Alarm { attempt }).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot look for orphaned alarms"),
                }
            }
        });
    }

    /// Ask quiet rooms whose every socket came through one other node to
    /// move there (a few per tick, so a node that joins takes rooms over
    /// gradually). The balancer's hash decides where clients go; this node
    /// learns it from where forwarded sockets come from.
    fn hand_off_quiet_rooms(&self) {
        /// How long a room must have had no event to be handed off.
        const QUIET_MS: u64 = 2000;
        /// Hand-offs per tick (per second), at most.
        const PER_TICK: usize = 16;
        let now = now_ms();
        let rooms = lock(&self.rooms);
        let quiet = rooms.values().filter(|e| {
            let s = &e.status;
            let all = s.connections.load(Relaxed);
            all > 0
                && s.forwarded.load(Relaxed) == all
                && now.saturating_sub(s.last_event_ms.load(Relaxed)) >= QUIET_MS
        });
        for e in quiet.take(PER_TICK) {
            if e.tx.try_send(Event::HandOff)
                && let Some(c) = &self.shared.cluster
            {
                c.metrics.hand_offs.fetch_add(1, Relaxed);
            }
        }
    }

    /// Close every live room's sockets with `code` and stop its actor.
    async fn evict_all(&self, code: u16, reason: &'static str) {
        let evicted: Vec<RoomTx> = lock(&self.rooms).drain().map(|(_, e)| e.tx).collect();
        for tx in evicted {
            let _ = tx.send(Event::Evict { code, reason }).await;
        }
    }

    /// In a cluster, after shutdown: give up every room this node holds, so
    /// that the other nodes may claim them at once rather than after the
    /// lease. Rooms have stopped, so no commit of theirs is in flight.
    pub async fn leave(&self) {
        if let Some(cluster) = &self.shared.cluster {
            for (key, epoch) in cluster.owned() {
                cluster.release(&key, epoch).await;
            }
        }
    }

    /// The Prometheus text: the host's series, and a cluster node's.
    pub fn render_metrics(&self) -> String {
        let mut out = self.shared.metrics.render();
        if let Some(c) = &self.shared.cluster {
            out += &c.metrics.render();
        }
        out
    }

    /// This node's cluster, when it is in one.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.shared.cluster.as_ref()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    pub fn logs(&self) -> &Logs {
        &self.shared.caps.logs
    }

    pub fn alarms(&self) -> &Alarms {
        &self.shared.alarms
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.shared.runtime
    }

    /// Compile a party as deploys do: through the compile cache, in a child
    /// process when the config names a compiler (`dormouse dev`'s rebuilds).
    pub fn compile(
        &self,
        name: &str,
        bytes: &[u8],
        vars: std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Party> {
        self.versions
            .compile(self.runtime(), self.metrics(), name, bytes, vars)
    }

    /// Cancel it to shut down: the accept loop, the sockets and the rooms stop.
    pub fn shutdown(&self) -> &CancellationToken {
        &self.shared.shutdown
    }

    /// Every task the host and its server spawned, to wait for at shutdown.
    pub fn tasks(&self) -> &TaskTracker {
        &self.tasks
    }

    /// The current version of a party.
    pub fn party(&self, name: &str) -> Option<Arc<Party>> {
        lock(&self.parties).get(name).cloned()
    }

    /// Whether the party is served, by a component or built in.
    pub fn serves(&self, party: &str) -> bool {
        self.is_builtin(party) || self.party(party).is_some()
    }

    /// Whether the party is the builtin relay (no Wasm; for benchmarks).
    pub fn is_builtin(&self, party: &str) -> bool {
        self.config
            .parties
            .get(party)
            .is_some_and(|p| p.builtin.is_some())
    }

    /// PartyKit's lobby, before a connect or request reaches its room
    /// (see [`crate::host::lobby`]): `Ok` goes on with that request.
    pub async fn lobby(
        &self,
        key: &RoomKey,
        before: Before,
        request: wit::Request,
    ) -> Result<wit::Request, wit::Response> {
        let Some(party) = self.party(&key.0) else {
            return Ok(request);
        };
        let limits = self.limits_for(&key.0);
        crate::host::lobby::run(&self.shared, &party, limits, key, before, request).await
    }

    /// A party's limits: its `[parties.NAME.limits]` over the host's.
    pub fn limits_for(&self, party: &str) -> Arc<Limits> {
        self.party_limits.get(party).unwrap_or(&self.limits).clone()
    }

    /// Serve a new version of a party. Awake rooms of the party finish their
    /// current event and hibernate; their next wake runs the new version.
    /// No connection is touched.
    /// Returns how many live rooms will pick it up.
    pub async fn deploy(&self, party: Party) -> usize {
        let name = party.name.clone();
        self.metrics().party(&name);
        lock(&self.parties).insert(name.clone(), Arc::new(party));
        let rooms = self.rooms_of(&name);
        let n = rooms.len();
        for tx in rooms {
            let _ = tx.send(Event::Hibernate).await;
        }
        n
    }

    /// A fresh serial number, to tell connections with the same id apart.
    pub fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Relaxed)
    }

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

    /// Hold a party's deploy lock.
    async fn deploying(&self, party: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock_ = lock(&self.deploying)
            .entry(party.to_owned())
            .or_default()
            .clone();
        lock_.lock_owned().await
    }

    /// Validate, store and serve an uploaded component as the party's next
    /// version. A refusal changes nothing: the old version keeps serving.
    pub async fn upload(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        token: &str,
    ) -> Result<Deployed, AdminError> {
        if !crate::route::valid_party_name(name) {
            return Err(AdminError::Refused(
                "party names match ^[a-z0-9_-]{1,64}$".into(),
            ));
        }
        let _deploying = self.deploying(name).await;
        let vars = self.config.vars(name);
        let host = self.clone();
        let (name_, token_) = (name.to_owned(), token.to_owned());
        let clustered = self.shared.cluster.is_some();
        // Compiling takes a while: keep it off the event loop.
        let (mut party, hash, bytes) = tokio::task::spawn_blocking(move || {
            let mut party = host
                .versions
                .compile(host.runtime(), host.metrics(), &name_, &bytes, vars)
                .map_err(|e| AdminError::Refused(format!("{e:#}")))?;
            let hash = crate::host::deploys::versions::hash(&bytes);
            host.versions.save(&hash, &bytes)?;
            if !clustered {
                let version = host
                    .deploys
                    .add_version(&name_, &hash, bytes.len(), &token_)?;
                party.version = Some(version);
            }
            Ok::<_, AdminError>((party, hash, bytes))
        })
        .await
        .map_err(anyhow::Error::from)??;
        let size = party.size;
        // In a cluster the version is the cluster's: stored with its bytes in
        // PostgreSQL and announced, so every node loads it (this one too).
        if let Some(cluster) = &self.shared.cluster {
            let v = cluster
                .add_version(name, &hash, &bytes, token)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?;
            party.version = Some(v);
            self.mirror(name).await?;
        }
        let version = party.version.unwrap_or_default();
        let rooms = self.deploy(party).await;
        Ok(Deployed {
            party: name.to_owned(),
            version,
            hash,
            size,
            rooms,
        })
    }

    /// Serve an earlier version again (the one before the active one by default).
    pub async fn rollback(
        self: &Arc<Self>,
        name: &str,
        to: Option<u32>,
    ) -> Result<Deployed, AdminError> {
        let _deploying = self.deploying(name).await;
        let (versions, active) = match &self.shared.cluster {
            Some(c) => c
                .versions(name)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?,
            None => self.deploys.versions(name)?,
        };
        let target = match to {
            Some(v) => versions.iter().find(|x| x.version == v),
            None => versions.iter().rev().find(|x| Some(x.version) < active),
        };
        let Some(target) = target.cloned() else {
            return Err(AdminError::Refused(format!(
                "party {name} has no such earlier version"
            )));
        };
        let vars = self.config.vars(name);
        let host = self.clone();
        let (name_, hash) = (name.to_owned(), target.hash.clone());
        let mut party = tokio::task::spawn_blocking(move || {
            host.versions
                .load(host.runtime(), host.metrics(), &name_, &hash, vars)
        })
        .await
        .map_err(anyhow::Error::from)??;
        party.version = Some(target.version);
        match &self.shared.cluster {
            Some(c) => {
                c.activate(name, target.version)
                    .await
                    .map_err(|e| AdminError::Failed(e.into()))?;
                self.mirror(name).await?;
            }
            None => self.deploys.activate(name, target.version)?,
        }
        let rooms = self.deploy(party).await;
        Ok(Deployed {
            party: name.to_owned(),
            version: target.version,
            hash: target.hash,
            size: target.size,
            rooms,
        })
    }

    /// Stop serving a party and forget it: its rooms close their
    /// connections (1001) and leave the registry, and its storage, alarms
    /// and version files are deleted. Hooks still running cannot commit
    /// after this (storage fences them), so a redeploy starts empty.
    pub async fn delete_party(&self, name: &str) -> Result<(), AdminError> {
        let _deploying = self.deploying(name).await;
        if !lock(&self.parties).contains_key(name) {
            return Err(AdminError::NotFound(format!(
                "no party named {name:?} is deployed"
            )));
        }
        if let Some(c) = &self.shared.cluster {
            c.delete_party(name)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?;
        }
        self.forget_party(name).await
    }

    /// A party's local side of a delete: its rooms, alarms, data, versions
    /// and files on this node.
    async fn forget_party(&self, name: &str) -> Result<(), AdminError> {
        lock(&self.parties).remove(name);
        // Out of the registry first: a later connect starts a fresh actor.
        let evicted: Vec<RoomTx> = lock(&self.rooms)
            .extract_if(|(p, _), _| **p == *name)
            .map(|(_, e)| e.tx)
            .collect();
        for tx in evicted {
            let _ = tx
                .send(Event::Evict {
                    code: 1001,
                    reason: "party deleted",
                })
                .await;
        }
        self.shared.alarms.clear_party(name);
        self.shared
            .storage
            .delete_party(name)
            .map_err(anyhow::Error::from)?;
        let orphans = self.deploys.delete(name)?;
        self.versions.remove(&orphans)?;
        Ok(())
    }

    /// In a cluster: copy a party's versions from the cluster into this
    /// node's deploy metadata (for `dormouse versions`, and for the next start).
    async fn mirror(&self, name: &str) -> Result<Option<(Vec<Version>, u32)>, AdminError> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(None);
        };
        let (versions, active) = cluster
            .versions(name)
            .await
            .map_err(|e| AdminError::Failed(e.into()))?;
        self.deploys.mirror(name, &versions, active)?;
        Ok(active.map(|a| (versions, a)))
    }

    /// In a cluster: serve what the cluster says is a party's active version
    /// (after an announcement, or at start). A party deleted in the cluster
    /// is forgotten here; the component comes from PostgreSQL when this node
    /// has not got its file.
    async fn follow_deploy(self: &Arc<Self>, name: &str) -> Result<(), AdminError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(());
        };
        let _deploying = self.deploying(name).await;
        let Some((versions, active)) = self.mirror(name).await? else {
            if self.party(name).is_some_and(|p| p.version.is_some()) {
                tracing::info!(party = name, "party deleted in the cluster");
                self.forget_party(name).await?;
            }
            return Ok(());
        };
        if self.party(name).and_then(|p| p.version) == Some(active) {
            return Ok(());
        }
        let Some(v) = versions.into_iter().find(|v| v.version == active) else {
            return Ok(());
        };
        if !self.versions.has(&v.hash) {
            let bytes = cluster
                .component(&v.hash)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?;
            self.versions.save(&v.hash, &bytes)?;
        }
        let host = self.clone();
        let (name_, hash) = (name.to_owned(), v.hash.clone());
        let vars = self.config.vars(name);
        let mut party = tokio::task::spawn_blocking(move || {
            host.versions
                .load(host.runtime(), host.metrics(), &name_, &hash, vars)
        })
        .await
        .map_err(anyhow::Error::from)??;
        party.version = Some(active);
        tracing::info!(
            party = name,
            version = active,
            "serving the cluster's version"
        );
        self.deploy(party).await;
        Ok(())
    }

    /// In a cluster: follow every party the cluster has deployed.
    pub async fn follow_deploys(self: &Arc<Self>) -> Result<(), AdminError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(());
        };
        let mut names = cluster
            .deployed()
            .await
            .map_err(|e| AdminError::Failed(e.into()))?;
        names.extend(self.deploys.deployed()?.into_iter().map(|(n, _)| n));
        names.sort();
        names.dedup();
        for name in names {
            if let Err(e) = self.follow_deploy(&name).await {
                tracing::error!(party = name, "cannot load the cluster's version: {e}");
            }
        }
        Ok(())
    }

    fn rooms_of(&self, party: &str) -> Vec<RoomTx> {
        lock(&self.rooms)
            .iter()
            .filter(|((p, _), _)| **p == *party)
            .map(|(_, e)| e.tx.clone())
            .collect()
    }

    /// The live rooms and their state. Storage sizes come from one query,
    /// off the async runtime.
    pub async fn rooms(self: &Arc<Self>) -> Result<Vec<RoomInfo>, AdminError> {
        let host = self.clone();
        let sizes = tokio::task::spawn_blocking(move || host.shared.storage.room_sizes())
            .await
            .map_err(anyhow::Error::from)?
            .map_err(anyhow::Error::from)?;
        let live: Vec<(RoomKey, Arc<RoomStatus>)> = lock(&self.rooms)
            .iter()
            .map(|(k, e)| (k.clone(), e.status.clone()))
            .collect();
        let mut out: Vec<RoomInfo> = live
            .into_iter()
            .map(|((party, room), s)| RoomInfo {
                storage_bytes: sizes
                    .get(&(party.to_string(), room.to_string()))
                    .copied()
                    .unwrap_or(0),
                party: party.to_string(),
                room: room.to_string(),
                state: if s.awake.load(Relaxed) {
                    "awake"
                } else {
                    "hibernated"
                },
                connections: s.connections.load(Relaxed),
                last_event_ms: s.last_event_ms.load(Relaxed),
                node: None,
            })
            .collect();
        if let Some(cluster) = &self.shared.cluster {
            self.cluster_rooms(cluster, &mut out).await?;
        }
        out.sort_by(|a, b| (&a.party, &a.room).cmp(&(&b.party, &b.room)));
        Ok(out)
    }

    /// In a cluster, `rooms` covers every node: this node's live rooms get
    /// their holder and stored size from PostgreSQL, and the rooms other
    /// nodes hold are added (their state is theirs: `elsewhere` here).
    async fn cluster_rooms(
        &self,
        cluster: &Cluster,
        out: &mut Vec<RoomInfo>,
    ) -> Result<(), AdminError> {
        let held = cluster
            .held_rooms()
            .await
            .map_err(|e| AdminError::Failed(e.into()))?;
        let mut by_key: HashMap<(String, String), (String, u64)> = held
            .into_iter()
            .map(|(p, r, node, bytes)| ((p, r), (node, bytes)))
            .collect();
        for info in out.iter_mut() {
            info.node = Some(cluster.node_id().to_owned());
            if let Some((_, bytes)) = by_key.remove(&(info.party.clone(), info.room.clone())) {
                info.storage_bytes = bytes;
            }
        }
        out.extend(
            by_key
                .into_iter()
                .map(|((party, room), (node, bytes))| RoomInfo {
                    party,
                    room,
                    state: "elsewhere",
                    connections: 0,
                    last_event_ms: 0,
                    storage_bytes: bytes,
                    node: Some(node),
                }),
        );
        Ok(())
    }

    /// Deployed and configured parties with their versions.
    pub fn parties(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut names: Vec<String> = lock(&self.parties).keys().cloned().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let (versions, active) = self.deploys.versions(&name)?;
                let served = self.party(&name);
                Ok(serde_json::json!({
                    "party": name,
                    "active": active,
                    // What serves: the active version, unless its file was
                    // found torn at start and an earlier one took over.
                    "serving": served.as_ref().and_then(|p| p.version),
                    "size": served.map_or(0, |p| p.size),
                    "source": if active.is_some() { "deployed" } else { "config" },
                    "versions": versions,
                }))
            })
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
