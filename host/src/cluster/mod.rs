//! The cluster layer: it may use the store layer and the leaves; the room,
//! host and edge layers use it.
//!
//! Several nodes on one PostgreSQL (the "PG-lease" design of
//! `docs/cluster.md`): this node's lease, room claims that bump an epoch,
//! room data loaded at claim, and group commits fenced by that epoch.
//!
//! Routing is only a hint; the fence is the storage. Every write runs
//! `UPDATE rooms ... WHERE epoch = mine` in its transaction, so a node that
//! lost a room (to a claim after its lease lapsed) commits nothing for it,
//! whatever it believes. The lease only keeps two nodes from *serving* one
//! room at once: a node that cannot renew it in time stops serving
//! (self-fences) before any other node may claim its rooms.
//!
//! No SQL leaves this module. `rooms.rs` holds claims and the group commit,
//! `claimed.rs` a claimed room's storage (the store's backend in a
//! cluster), `deploys.rs` the components and their announcements (the host
//! calls it for deploys), `forward.rs` a request's way to the node that
//! holds its room, `crons.rs` the claim of a cron's tick.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;
use tokio_postgres::{Client, NoTls};
use tracing::{error, info, warn};

use crate::admin_token::random_secret;
use crate::clock::BootInstant;
use crate::config::ClusterConfig;
use crate::lock::lock;
use crate::metrics::ClusterMetrics;
use crate::route::RoomKey;

mod claimed;
mod crons;
mod deploys;
pub mod forward;
mod rooms;

pub use claimed::ClaimedRoom;
use rooms::GroupedCommit;
pub use rooms::{Claimed, Writes};

/// Why a cluster storage call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Another node holds the room now (its epoch moved on), or this node
    /// is not in the cluster (its lease lapsed): nothing was written.
    #[error("this node no longer owns the room")]
    Fenced,
    /// PostgreSQL failed or did not answer in time; the outcome of a
    /// commit is unknown.
    #[error("cluster storage unavailable: {0}")]
    Unavailable(String),
}

impl From<tokio_postgres::Error> for ClusterError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The server's own message says more than the client's "db error".
        let line = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        ClusterError::Unavailable(line)
    }
}

/// Where a room's events should go.
#[derive(Debug, PartialEq)]
pub enum Owner {
    /// Here: this node owns the room, or nobody live does (it will claim).
    Local,
    /// Another live node owns it: forward to this address.
    Remote(String),
}

/// The schema, created once by whichever node gets the lock first.
const SCHEMA: &str = "
    SELECT pg_advisory_xact_lock(7346128);
    CREATE TABLE IF NOT EXISTS nodes (
        node_id text PRIMARY KEY,
        incarnation bigint NOT NULL,
        addr text NOT NULL,
        lease_expires timestamptz NOT NULL);
    CREATE TABLE IF NOT EXISTS rooms (
        party text NOT NULL, room text NOT NULL,
        epoch bigint NOT NULL DEFAULT 0,
        owner_node text, owner_inc bigint,
        seq bigint NOT NULL DEFAULT 0,
        alarm_ms bigint,
        bytes bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (party, room));
    ALTER TABLE rooms ADD COLUMN IF NOT EXISTS sql_seq bigint NOT NULL DEFAULT 0;
    CREATE INDEX IF NOT EXISTS rooms_alarm ON rooms (alarm_ms) WHERE alarm_ms IS NOT NULL;
    CREATE TABLE IF NOT EXISTS room_kv (
        party text NOT NULL, room text NOT NULL, k text NOT NULL, v bytea NOT NULL,
        PRIMARY KEY (party, room, k));
    CREATE TABLE IF NOT EXISTS room_sql_log (
        party text NOT NULL, room text NOT NULL, seq bigint NOT NULL, changes bytea NOT NULL,
        PRIMARY KEY (party, room, seq));
    CREATE TABLE IF NOT EXISTS room_sql_snapshot (
        party text NOT NULL, room text NOT NULL, seq bigint NOT NULL, file bytea NOT NULL,
        PRIMARY KEY (party, room));
    CREATE TABLE IF NOT EXISTS ownership_log (
        party text NOT NULL, room text NOT NULL, epoch bigint NOT NULL,
        node_id text NOT NULL, inc bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE IF NOT EXISTS commit_log (
        party text NOT NULL, room text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,
        node_id text NOT NULL, inc bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS components (hash text PRIMARY KEY, bytes bytea NOT NULL);
    CREATE TABLE IF NOT EXISTS versions (
        party text NOT NULL, version integer NOT NULL, hash text NOT NULL,
        size bigint NOT NULL, created_ms bigint NOT NULL, token text NOT NULL,
        PRIMARY KEY (party, version));
    CREATE TABLE IF NOT EXISTS parties (party text PRIMARY KEY, version integer NOT NULL);
    CREATE TABLE IF NOT EXISTS cluster_secret (
        id integer PRIMARY KEY CHECK (id = 1), secret text NOT NULL);
    CREATE TABLE IF NOT EXISTS cron_ticks (
        party text NOT NULL, cron text NOT NULL, tick_ms bigint NOT NULL,
        PRIMARY KEY (party, cron));";

/// A room's owner is live while its incarnation's lease has not expired,
/// in the database's clock (never two machines' clocks compared).
const LIVE_OWNER: &str = "EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = r.owner_node
     AND n.incarnation = r.owner_inc AND n.lease_expires > now())";

/// How long one statement may take before PostgreSQL is taken as gone.
const STATEMENT: Duration = Duration::from_secs(5);

/// This node's membership in the cluster.
pub struct Cluster {
    config: ClusterConfig,
    /// Claims, routing, releases and the alarm sweep share one pipelined
    /// connection; the lease and the group commit have their own, so that
    /// neither waits behind the other.
    shared: Pg,
    commits: mpsc::UnboundedSender<GroupedCommit>,
    incarnation: AtomicU64,
    /// Until when this node may serve: `t_send + TTL - margin` of the last
    /// renewal, on a clock that counts suspended time.
    deadline: Mutex<BootInstant>,
    live: AtomicBool,
    /// Rooms this node claimed and has not released: their epochs.
    owned: Mutex<HashMap<RoomKey, i64>>,
    /// Notified when this node self-fences: the host then closes every
    /// room's sockets with 1012.
    fenced: Notify,
    /// The key nodes sign their requests to each other with (the host's
    /// forwarding does): made by the first node, kept in PostgreSQL, which
    /// every node already trusts.
    secret: String,
    pub metrics: ClusterMetrics,
}

/// A connection that reconnects when it breaks.
struct Pg {
    url: String,
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
}

impl Pg {
    fn new(url: &str) -> Pg {
        Pg {
            url: url.to_owned(),
            client: tokio::sync::Mutex::new(None),
        }
    }

    async fn get(&self) -> Result<Arc<Client>, ClusterError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref().filter(|c| !c.is_closed()) {
            return Ok(c.clone());
        }
        *slot = None;
        let connect = tokio_postgres::connect(&self.url, NoTls);
        let (client, connection) = timeout(STATEMENT, connect).await.map_err(|_| {
            ClusterError::Unavailable("connecting to PostgreSQL timed out".into())
        })??;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                warn!(error = %e, "PostgreSQL connection ended");
            }
        });
        let client = Arc::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Forget the connection (it timed out: it may be stuck).
    async fn drop_client(&self) {
        *self.client.lock().await = None;
    }
}

/// Run one step against PostgreSQL with the statement timeout; a timeout
/// drops the connection, which may be stuck behind a cut link.
async fn bounded<T>(
    pg: &Pg,
    step: impl std::future::Future<Output = Result<T, ClusterError>>,
) -> Result<T, ClusterError> {
    match timeout(STATEMENT, step).await {
        Ok(r) => r,
        Err(_) => {
            pg.drop_client().await;
            Err(ClusterError::Unavailable(
                "PostgreSQL did not answer in time".into(),
            ))
        }
    }
}

impl Cluster {
    /// Join the cluster: create the schema if needed, wait out the lease of
    /// this node's previous incarnation, take a new incarnation, and start
    /// renewing the lease and committing.
    pub async fn join(config: ClusterConfig) -> anyhow::Result<Arc<Cluster>> {
        let shared = Pg::new(&config.database);
        let client = shared
            .get()
            .await
            .with_context(|| format!("cannot reach the cluster database {}", config.database))?;
        client
            .batch_execute(&format!("BEGIN; {SCHEMA} COMMIT;"))
            .await
            .context("cannot create the cluster schema")?;
        client
            .execute(
                "INSERT INTO cluster_secret VALUES (1, $1) ON CONFLICT DO NOTHING",
                &[&random_secret()],
            )
            .await
            .context("cannot make the cluster's secret")?;
        let secret: String = client
            .query_one("SELECT secret FROM cluster_secret WHERE id = 1", &[])
            .await
            .context("cannot read the cluster's secret")?
            .get(0);
        let (commits, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            shared,
            commits,
            incarnation: AtomicU64::new(0),
            deadline: Mutex::new(BootInstant::now()),
            live: AtomicBool::new(false),
            owned: Mutex::default(),
            fenced: Notify::new(),
            secret,
            metrics: ClusterMetrics::default(),
            config,
        });
        cluster.register(&Pg::new(&cluster.config.database)).await?;
        tokio::spawn(cluster.clone().renew());
        tokio::spawn(cluster.clone().commit_loop(rx));
        Ok(cluster)
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    /// The key of node-to-node signatures.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(self.config.lease_ttl_ms)
    }

    /// The part of the TTL this node gives up, for clock-rate drift and
    /// pauses: it stops serving this long before its lease expires.
    fn margin(&self) -> Duration {
        self.ttl() * 3 / 10
    }

    /// Whether this node may serve and commit now. (Always, for the
    /// negative control without fences: a node that trusts its belief.)
    pub fn is_live(&self) -> bool {
        self.config.unfenced_writes
            || (self.live.load(Relaxed) && BootInstant::now() < *lock(&self.deadline))
    }

    /// Resolves when this node self-fences.
    pub async fn fenced(&self) {
        self.fenced.notified().await;
    }

    /// Start (or restart) this node's membership: wait until the previous
    /// incarnation's lease has expired in database time (by then it has
    /// self-fenced on its own deadline), then take the next incarnation.
    /// Bumping first would make the old incarnation's rooms claimable while
    /// it may still be serving them.
    async fn register(&self, pg: &Pg) -> anyhow::Result<()> {
        let id = &self.config.node_id;
        loop {
            let client = pg.get().await?;
            let left: Option<f64> = client
                .query_opt(
                    "SELECT extract(epoch FROM lease_expires - now())::float8 FROM nodes WHERE node_id = $1",
                    &[id],
                )
                .await?
                .map(|r| r.get(0));
            match left {
                Some(s) if s > 0.0 => {
                    info!(
                        node = id,
                        seconds = s,
                        "waiting for this node's previous lease to expire"
                    );
                    tokio::time::sleep(Duration::from_secs_f64(s) + Duration::from_millis(50))
                        .await;
                }
                _ => break,
            }
        }
        let t_send = BootInstant::now();
        let ttl_ms = self.config.lease_ttl_ms as f64;
        let row = pg
            .get()
            .await?
            .query_one(
                "INSERT INTO nodes (node_id, incarnation, addr, lease_expires)
                 VALUES ($1, 1, $2, now() + make_interval(secs => $3::float8 / 1000))
                 ON CONFLICT (node_id) DO UPDATE SET incarnation = nodes.incarnation + 1,
                    addr = EXCLUDED.addr, lease_expires = EXCLUDED.lease_expires
                 RETURNING incarnation",
                &[id, &self.config.advertise, &ttl_ms],
            )
            .await?;
        let inc: i64 = row.get(0);
        self.incarnation.store(inc as u64, Relaxed);
        *lock(&self.deadline) = t_send + self.ttl() - self.margin();
        self.live.store(true, Relaxed);
        self.metrics.live.store(1, Relaxed);
        info!(node = id, incarnation = inc, addr = %self.config.advertise, "joined the cluster");
        Ok(())
    }

    /// Whether a claim made by incarnation `inc` of this node is still
    /// good: the lease is valid and the node has not rejoined since.
    pub fn holds(&self, inc: i64) -> bool {
        self.config.unfenced_writes || (self.is_live() && inc == self.inc())
    }

    fn inc(&self) -> i64 {
        self.incarnation.load(Relaxed) as i64
    }

    /// Renew the lease every TTL/3; self-fence when the local deadline
    /// passes without a renewal; then join again as a new incarnation.
    async fn renew(self: Arc<Self>) {
        let pg = Pg::new(&self.config.database);
        let ttl_ms = self.config.lease_ttl_ms as f64;
        loop {
            let deadline = *lock(&self.deadline);
            tokio::select! {
                () = tokio::time::sleep(self.ttl() / 3) => {}
                () = tokio::time::sleep(deadline.remaining()) => {}
            }
            // First: a node that slept past its deadline (paused, or its
            // renewals failed) must not extend it, whatever the database
            // would now say: another node may have claimed its rooms.
            if self.live.load(Relaxed) && BootInstant::now() >= *lock(&self.deadline) {
                self.self_fence();
            }
            if self.live.load(Relaxed) {
                // Read before sending: the lease the database grants starts
                // no earlier than this.
                let t_send = BootInstant::now();
                let renewed = bounded(&pg, async {
                    let client = pg.get().await?;
                    let n = client
                        .execute(
                            // Never revive a lease that expired in the
                            // database's time: its rooms may be claimed.
                            "UPDATE nodes SET lease_expires = now() + make_interval(secs => $3::float8 / 1000)
                             WHERE node_id = $1 AND incarnation = $2 AND lease_expires > now()",
                            &[&self.config.node_id, &self.inc(), &ttl_ms],
                        )
                        .await?;
                    Ok(n == 1)
                })
                .await;
                match renewed {
                    Ok(true) => {
                        let mut d = lock(&self.deadline);
                        *d = (*d).max(t_send + self.ttl() - self.margin());
                    }
                    Ok(false) => {
                        error!(
                            "this node's lease expired or its incarnation was replaced; leaving the cluster"
                        );
                        self.self_fence();
                    }
                    Err(e) => warn!(error = %e, "cannot renew the lease"),
                }
            }
            if self.live.load(Relaxed) && BootInstant::now() >= *lock(&self.deadline) {
                self.self_fence();
            }
            if !self.live.load(Relaxed)
                && let Err(e) = self.register(&pg).await
            {
                warn!(error = %e, "cannot rejoin the cluster yet");
                tokio::time::sleep(self.ttl() / 3).await;
            }
        }
    }

    /// Stop serving: the lease may have lapsed, so another node may claim
    /// any of this node's rooms from now on.
    fn self_fence(&self) {
        if self.config.unfenced_writes {
            return;
        }
        if self.live.swap(false, Relaxed) {
            self.metrics.live.store(0, Relaxed);
            self.metrics.self_fences.fetch_add(1, Relaxed);
            error!(
                node = self.config.node_id,
                "lease not renewed in time: self-fenced; every room here closes with 1012"
            );
            lock(&self.owned).clear();
            // One waiter (the host); a permit is kept if it is busy.
            self.fenced.notify_one();
        }
    }

    /// The other nodes with a live lease: (node id, address).
    pub async fn peers(&self) -> Result<Vec<(String, String)>, ClusterError> {
        let rows = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            Ok(client
                .query(
                    "SELECT node_id, addr FROM nodes WHERE lease_expires > now() AND node_id <> $1",
                    &[&self.config.node_id],
                )
                .await?)
        })
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Where a room's events go. A room this node holds is local without a
    /// query; otherwise the database says who holds it, if anyone live.
    pub async fn owner(&self, key: &RoomKey) -> Result<Owner, ClusterError> {
        if !self.is_live() {
            return Err(ClusterError::Fenced);
        }
        if lock(&self.owned).contains_key(key) {
            return Ok(Owner::Local);
        }
        let row = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            Ok(client
                .query_opt(
                    &format!(
                        "SELECT r.owner_node, r.owner_inc, n.addr FROM rooms r
                         JOIN nodes n ON n.node_id = r.owner_node
                         WHERE r.party = $1 AND r.room = $2 AND {LIVE_OWNER}"
                    ),
                    &[&&*key.0, &&*key.1],
                )
                .await?)
        })
        .await?;
        Ok(match row {
            Some(r) => {
                let (node, inc): (String, i64) = (r.get(0), r.get(1));
                if node == self.config.node_id && inc == self.inc() {
                    Owner::Local
                } else {
                    Owner::Remote(r.get(2))
                }
            }
            None => Owner::Local,
        })
    }
}
