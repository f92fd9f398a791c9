//! The host layer: parties and their deploys, the registry of room actors,
//! the alarm loop, and shutdown. It may use the room, cluster and store
//! layers and the leaves; only the edge uses it.
//!
//! Here: the `Host`, its start and its loops. `registry.rs`: room actors
//! (dispatch, retire, least-recent) and room-to-room calls. `deploys/`:
//! upload, rollback, delete, following the cluster's deploys, version files.
//! `follow.rs`: hand-offs, eviction, leaving the cluster. `views.rs`: what
//! the admin API shows. `lobby.rs`: PartyKit's static hooks. `crons.rs`:
//! the party's crons.
//!
//! A room actor exists while the room has connections or work; a room with
//! neither retires (see [`Registry::retire`]), so the registry holds only
//! live rooms. Lookups hold a std `Mutex` for a map access, never across
//! `.await`. Rooms reach the host only through the narrow [`Shared`] and
//! [`Registry`] (and guest code through [`Capabilities`]).

mod crons;
pub mod deploys;
mod follow;
mod lobby;
mod registry;
mod views;

pub use crons::CronInfo;
pub use deploys::Deployed;
pub use views::RoomInfo;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alarms::{Alarms, Attempt};
use crate::clock::{Ticker, now_ms};
use crate::cluster::Cluster;
use crate::config::{Config, Limits};
use crate::host::deploys::versions::Versions;
use crate::lock::lock;
use crate::logs::Logs;
use crate::metrics::Metrics;
use crate::room::instance::{Before, Party, Runtime};
use crate::room::state::{Capabilities, RoomCalls, RoomStatus};
use crate::room::{Event, Registry, RoomTx, Shared};
use crate::route::RoomKey;
use crate::store::Storage;
use crate::store::deploys::Deploys;
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
    /// Every party's crons, with what this node knows of their ticks.
    crons: Mutex<Vec<crons::CronState>>,
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
        let cron_states = crons::from_config(&config);
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
                crons: Mutex::new(cron_states),
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
        self.tasks.spawn(self.clone().fire_crons());
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
    /// (see `host/lobby.rs`): `Ok` goes on with that request.
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

    /// A fresh serial number, to tell connections with the same id apart.
    pub fn next_serial(&self) -> u64 {
        self.serial.fetch_add(1, Relaxed)
    }
}
