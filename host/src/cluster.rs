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
//! No SQL of this file leaves it; `storage.rs` calls it for a room's data.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::{Instant, timeout};
use tokio_postgres::{Client, NoTls};
use tracing::{error, info, warn};

use crate::config::ClusterConfig;
use crate::route::RoomKey;
use crate::sync::lock;

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

/// A room this node claimed: its epoch and its data as of the claim.
pub struct Claimed {
    pub epoch: i64,
    pub data: BTreeMap<String, Vec<u8>>,
    pub alarm: Option<u64>,
}

/// What one hook's commit does to a room, as `storage.rs` hands it over.
pub struct Writes {
    pub delete_all: bool,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    /// `Some(at)` sets (or with `None` deletes) the alarm.
    pub alarm: Option<Option<u64>>,
    /// The room's stored bytes after the commit.
    pub bytes: u64,
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
    CREATE INDEX IF NOT EXISTS rooms_alarm ON rooms (alarm_ms) WHERE alarm_ms IS NOT NULL;
    CREATE TABLE IF NOT EXISTS room_kv (
        party text NOT NULL, room text NOT NULL, k text NOT NULL, v bytea NOT NULL,
        PRIMARY KEY (party, room, k));
    CREATE TABLE IF NOT EXISTS ownership_log (
        party text NOT NULL, room text NOT NULL, epoch bigint NOT NULL,
        node_id text NOT NULL, inc bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE IF NOT EXISTS commit_log (
        party text NOT NULL, room text NOT NULL, epoch bigint NOT NULL, seq bigint NOT NULL,
        node_id text NOT NULL, inc bigint NOT NULL);";

/// A room's owner is live while its incarnation's lease has not expired,
/// in the database's clock (never two machines' clocks compared).
const LIVE_OWNER: &str = "EXISTS (SELECT 1 FROM nodes n WHERE n.node_id = r.owner_node
     AND n.incarnation = r.owner_inc AND n.lease_expires > now())";

/// How long one statement may take before PostgreSQL is taken as gone.
const STATEMENT: Duration = Duration::from_secs(5);
/// How many hooks' commits one transaction may group.
const MAX_GROUP: usize = 256;

/// This node's membership in the cluster.
pub struct Cluster {
    config: ClusterConfig,
    /// Claims, routing, releases and the alarm sweep share one pipelined
    /// connection; the lease and the group commit have their own, so that
    /// neither waits behind the other.
    shared: Pg,
    commits: mpsc::UnboundedSender<Commit>,
    incarnation: AtomicU64,
    /// Until when this node may serve: `t_send + TTL - margin` of the last
    /// renewal, on the monotonic clock.
    deadline: Mutex<Instant>,
    live: AtomicBool,
    /// Rooms this node claimed and has not released: their epochs.
    owned: Mutex<HashMap<RoomKey, i64>>,
    /// Notified when this node self-fences: the host then closes every
    /// room's sockets with 1012.
    fenced: Notify,
}

/// One hook's writes, waiting for the group commit.
struct Commit {
    key: RoomKey,
    epoch: i64,
    writes: Writes,
    reply: oneshot::Sender<Result<i64, ClusterError>>,
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
        let (commits, rx) = mpsc::unbounded_channel();
        let cluster = Arc::new(Cluster {
            shared,
            commits,
            incarnation: AtomicU64::new(0),
            deadline: Mutex::new(Instant::now()),
            live: AtomicBool::new(false),
            owned: Mutex::default(),
            fenced: Notify::new(),
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
            || (self.live.load(Relaxed) && Instant::now() < *lock(&self.deadline))
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
        let t_send = Instant::now();
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
        info!(node = id, incarnation = inc, addr = %self.config.advertise, "joined the cluster");
        Ok(())
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
                () = tokio::time::sleep_until(deadline) => {}
            }
            // First: a node that slept past its deadline (paused, or its
            // renewals failed) must not extend it, whatever the database
            // would now say: another node may have claimed its rooms.
            if self.live.load(Relaxed) && Instant::now() >= *lock(&self.deadline) {
                self.self_fence();
            }
            if self.live.load(Relaxed) {
                // Read before sending: the lease the database grants starts
                // no earlier than this.
                let t_send = Instant::now();
                let renewed = bounded(&pg, async {
                    let client = pg.get().await?;
                    let n = client
                        .execute(
                            "UPDATE nodes SET lease_expires = now() + make_interval(secs => $3::float8 / 1000)
                             WHERE node_id = $1 AND incarnation = $2",
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
                        error!("this node's incarnation was replaced; leaving the cluster");
                        self.self_fence();
                    }
                    Err(e) => warn!(error = %e, "cannot renew the lease"),
                }
            }
            if self.live.load(Relaxed) && Instant::now() >= *lock(&self.deadline) {
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
            error!(
                node = self.config.node_id,
                "lease not renewed in time: self-fenced; every room here closes with 1012"
            );
            lock(&self.owned).clear();
            self.fenced.notify_waiters();
        }
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

    /// Claim a room: bump its epoch and take it, if no other live node holds
    /// it (this node's own earlier claim may be renewed), then load its data.
    /// `None`: another live node holds it.
    pub async fn claim(&self, key: &RoomKey) -> Result<Option<Claimed>, ClusterError> {
        if !self.is_live() {
            return Err(ClusterError::Fenced);
        }
        let (party, room) = (&*key.0, &*key.1);
        let (me, inc) = (&self.config.node_id, self.inc());
        let claimed = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            client
                .execute(
                    "INSERT INTO rooms (party, room) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&party, &room],
                )
                .await?;
            // One statement: the claim and its audit row commit together.
            let row = client
                .query_opt(
                    &format!(
                        "WITH c AS (
                           UPDATE rooms r SET epoch = r.epoch + 1, owner_node = $3, owner_inc = $4
                           WHERE r.party = $1 AND r.room = $2
                             AND EXISTS (SELECT 1 FROM nodes WHERE node_id = $3 AND incarnation = $4
                                         AND lease_expires > now())
                             AND (r.owner_node IS NULL
                                  OR (r.owner_node = $3 AND r.owner_inc = $4)
                                  OR NOT {LIVE_OWNER})
                           RETURNING r.epoch, r.alarm_ms),
                         l AS (INSERT INTO ownership_log (party, room, epoch, node_id, inc)
                               SELECT $1, $2, epoch, $3, $4 FROM c)
                         SELECT epoch, alarm_ms FROM c"
                    ),
                    &[&party, &room, me, &inc],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            let (epoch, alarm): (i64, Option<i64>) = (row.get(0), row.get(1));
            // Current: after the claim commits, only this node can write.
            let rows = client
                .query(
                    "SELECT k, v FROM room_kv WHERE party = $1 AND room = $2",
                    &[&party, &room],
                )
                .await?;
            let data = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(Some(Claimed {
                epoch,
                data,
                alarm: alarm.map(|a| a.max(0) as u64),
            }))
        })
        .await?;
        if let Some(c) = &claimed {
            lock(&self.owned).insert(key.clone(), c.epoch);
            info!(party, room, epoch = c.epoch, "claimed");
        }
        Ok(claimed)
    }

    /// Give a room up (it retired, or the node drains). The epoch stays, so
    /// the next claim bumps it; a stale release (an older epoch) does nothing.
    pub async fn release(&self, key: &RoomKey, epoch: i64) {
        {
            let mut owned = lock(&self.owned);
            if owned.get(key) == Some(&epoch) {
                owned.remove(key);
            }
        }
        let (party, room) = (&*key.0, &*key.1);
        let released = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            client
                .execute(
                    "UPDATE rooms SET owner_node = NULL, owner_inc = NULL
                     WHERE party = $1 AND room = $2 AND epoch = $3",
                    &[&party, &room, &epoch],
                )
                .await?;
            Ok(())
        })
        .await;
        if let Err(e) = released {
            // Harmless: the lease lapses and the room becomes claimable.
            warn!(party, room, error = %e, "cannot release the room");
        }
    }

    /// Forget a claim without telling the database (the room was fenced).
    pub fn forget(&self, key: &RoomKey, epoch: i64) {
        let mut owned = lock(&self.owned);
        if owned.get(key) == Some(&epoch) {
            owned.remove(key);
        }
    }

    /// Every room this node holds: for a drain.
    pub fn owned(&self) -> Vec<(RoomKey, i64)> {
        lock(&self.owned)
            .iter()
            .map(|(k, e)| (k.clone(), *e))
            .collect()
    }

    /// Commit one hook's writes under the room's epoch; returns when
    /// PostgreSQL has committed them (the output gate waits for this).
    pub async fn commit(
        &self,
        key: &RoomKey,
        epoch: i64,
        writes: Writes,
    ) -> Result<i64, ClusterError> {
        if !self.is_live() {
            return Err(ClusterError::Fenced);
        }
        let (reply, done) = oneshot::channel();
        let commit = Commit {
            key: key.clone(),
            epoch,
            writes,
            reply,
        };
        if self.commits.send(commit).is_err() {
            return Err(ClusterError::Unavailable("the committer stopped".into()));
        }
        let r = done
            .await
            .unwrap_or_else(|_| Err(ClusterError::Unavailable("the committer stopped".into())));
        if let Err(ClusterError::Fenced) = r {
            self.forget(key, epoch);
        }
        r
    }

    /// The group commit: every commit waiting goes in one transaction, each
    /// in a savepoint with its own fence check, so one fenced room fails
    /// alone while all share one round of fsync.
    async fn commit_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Commit>) {
        let pg = Pg::new(&self.config.database);
        while let Some(first) = rx.recv().await {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            let results = bounded(&pg, self.commit_group(&pg, &group)).await;
            match results {
                Ok(results) => {
                    for (c, r) in group.into_iter().zip(results) {
                        let _ = c.reply.send(r);
                    }
                }
                Err(e) => {
                    let line = e.to_string();
                    for c in group {
                        let _ = c.reply.send(Err(ClusterError::Unavailable(line.clone())));
                    }
                }
            }
        }
    }

    async fn commit_group(
        &self,
        pg: &Pg,
        group: &[Commit],
    ) -> Result<Vec<Result<i64, ClusterError>>, ClusterError> {
        let client = pg.get().await?;
        client.batch_execute("BEGIN").await?;
        let mut results = Vec::with_capacity(group.len());
        for c in group {
            client.batch_execute("SAVEPOINT hook").await?;
            match self.apply(&client, c).await {
                Ok(Some(seq)) => {
                    client.batch_execute("RELEASE SAVEPOINT hook").await?;
                    results.push(Ok(seq));
                }
                Ok(None) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT hook").await?;
                    results.push(Err(ClusterError::Fenced));
                }
                Err(e) => {
                    client.batch_execute("ROLLBACK TO SAVEPOINT hook").await?;
                    results.push(Err(e.into()));
                }
            }
        }
        if let Err(e) = client.batch_execute("COMMIT").await {
            // The connection may be half-dead: start the next group afresh.
            pg.drop_client().await;
            return Err(e.into());
        }
        Ok(results)
    }

    /// One hook's writes, if the room's epoch is still `c.epoch`: the seq
    /// of the commit, or `None` when fenced (and nothing was written).
    async fn apply(
        &self,
        client: &Client,
        c: &Commit,
    ) -> Result<Option<i64>, tokio_postgres::Error> {
        let (party, room) = (&*c.key.0, &*c.key.1);
        let w = &c.writes;
        let (set_alarm, alarm) = match w.alarm {
            Some(at) => (true, at.map(|a| i64::try_from(a).unwrap_or(i64::MAX))),
            None => (false, None),
        };
        let bytes = w.bytes as i64;
        // The fence. `unfenced_writes` exists only for the checker's
        // negative control: it shows what this one condition prevents.
        let fence = if self.config.unfenced_writes {
            "$3::bigint IS NOT NULL"
        } else {
            "epoch = $3"
        };
        let row = client
            .query_opt(
                &format!(
                    "UPDATE rooms SET seq = seq + 1, bytes = $4,
                       alarm_ms = CASE WHEN $5 THEN $6 ELSE alarm_ms END
                     WHERE party = $1 AND room = $2 AND {fence} RETURNING seq"
                ),
                &[&party, &room, &c.epoch, &bytes, &set_alarm, &alarm],
            )
            .await?;
        let Some(row) = row else { return Ok(None) };
        let seq: i64 = row.get(0);
        if w.delete_all {
            client
                .execute(
                    "DELETE FROM room_kv WHERE party = $1 AND room = $2",
                    &[&party, &room],
                )
                .await?;
        }
        if !w.deletes.is_empty() {
            client
                .execute(
                    "DELETE FROM room_kv WHERE party = $1 AND room = $2 AND k = ANY($3)",
                    &[&party, &room, &w.deletes],
                )
                .await?;
        }
        if !w.puts.is_empty() {
            let keys: Vec<&str> = w.puts.iter().map(|(k, _)| k.as_str()).collect();
            let values: Vec<&[u8]> = w.puts.iter().map(|(_, v)| v.as_slice()).collect();
            client
                .execute(
                    "INSERT INTO room_kv (party, room, k, v)
                     SELECT $1, $2, k, v FROM unnest($3::text[], $4::bytea[]) AS t(k, v)
                     ON CONFLICT (party, room, k) DO UPDATE SET v = EXCLUDED.v",
                    &[&party, &room, &keys, &values],
                )
                .await?;
        }
        if self.config.audit {
            client
                .execute(
                    "INSERT INTO commit_log (party, room, epoch, seq, node_id, inc)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &party,
                        &room,
                        &c.epoch,
                        &seq,
                        &self.config.node_id,
                        &self.inc(),
                    ],
                )
                .await?;
        }
        Ok(Some(seq))
    }

    /// Rooms whose alarm is due and whose owner is gone (or none): a
    /// survivor claims them and fires the alarm (at least once, fenced).
    pub async fn orphaned_alarms(&self, now_ms: u64) -> Result<Vec<RoomKey>, ClusterError> {
        if !self.is_live() {
            return Ok(Vec::new());
        }
        let now = i64::try_from(now_ms).unwrap_or(i64::MAX);
        let rows = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            Ok(client
                .query(
                    &format!(
                        "SELECT party, room FROM rooms r WHERE alarm_ms <= $1
                         AND (owner_node IS NULL OR NOT {LIVE_OWNER}) LIMIT 64"
                    ),
                    &[&now],
                )
                .await?)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let (p, room): (String, String) = (r.get(0), r.get(1));
                (p.into(), room.into())
            })
            .collect())
    }
}
