//! A room's life in the cluster: claims that bump its epoch, the group
//! commit whose every write is fenced by it, releases, and the rooms whose
//! alarms a dead node left behind.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{Cluster, ClusterError, LIVE_OWNER, Pg, bounded};
use crate::route::RoomKey;
use crate::sync::lock;

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

/// How many hooks' commits one transaction may group.
const MAX_GROUP: usize = 256;

/// One hook's writes, waiting for the group commit.
pub(super) struct Commit {
    key: RoomKey,
    epoch: i64,
    writes: Writes,
    reply: oneshot::Sender<Result<i64, ClusterError>>,
}

impl Cluster {
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
    pub(super) async fn commit_loop(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<Commit>) {
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
                    // The transaction may be left open (or aborted) on this
                    // connection: the next group starts on a fresh one.
                    pg.drop_client().await;
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
        client.batch_execute("COMMIT").await?;
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

    /// Every room held by a live node, with its holder and stored bytes
    /// (for `dormouse rooms` on any node).
    pub async fn held_rooms(&self) -> Result<Vec<(String, String, String, u64)>, ClusterError> {
        bounded(&self.shared, async {
            let client = self.shared.get().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT party, room, owner_node, bytes FROM rooms r
                         WHERE owner_node IS NOT NULL AND {LIVE_OWNER}"
                    ),
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get(0),
                        r.get(1),
                        r.get(2),
                        r.get::<_, i64>(3).max(0) as u64,
                    )
                })
                .collect())
        })
        .await
    }
}
