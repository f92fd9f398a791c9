//! A room's life in the cluster: claims that bump its epoch, the group
//! commit whose every write is fenced by it, releases, and the rooms whose
//! alarms a dead node left behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use super::{Cluster, ClusterError, LIVE_OWNER, Pg, bounded};
use crate::lock::lock;
use crate::route::RoomKey;
use crate::store::SqlStart;

/// A room this node claimed: its epoch and its data as of the claim.
pub struct Claimed {
    pub epoch: i64,
    /// This node's incarnation that claimed it: a later incarnation (after
    /// a self-fence) never commits under this claim.
    pub inc: i64,
    pub data: BTreeMap<String, Vec<u8>>,
    pub alarm: Option<u64>,
    /// The room's SQL data: its snapshot and the log after it.
    pub sql: SqlStart,
}

/// How a group's transaction ended.
enum Outcome {
    /// Committed: each hook's stored bytes, or fenced.
    Committed(Vec<Result<i64, ClusterError>>),
    /// PostgreSQL refused one of its statements (its message): nothing
    /// was written.
    Refused(String),
}

/// What one hook's commit does to a room, as a claimed room (`claimed.rs`) hands it over.
pub struct Writes {
    pub delete_all: bool,
    pub puts: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    /// `Some(at)` sets (or with `None` deletes) the alarm.
    pub alarm: Option<Option<u64>>,
    /// The room's stored bytes after the commit.
    pub bytes: u64,
    /// The SQL log entry, `(seq, changes)`.
    pub sql_entry: Option<(u64, Vec<u8>)>,
    /// A snapshot of the room's SQL file as of a log entry, `(seq, file)`:
    /// it replaces the log up to there.
    pub sql_snapshot: Option<(u64, Vec<u8>)>,
}

/// How many hooks' commits one transaction may group.
const MAX_GROUP: usize = 256;

/// One hook's writes, waiting for the group commit.
pub(super) struct GroupedCommit {
    key: RoomKey,
    epoch: i64,
    inc: i64,
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
            // One statement: the claim and its audit row (only with
            // `audit`: it grows by a row per claim) commit together.
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
                           RETURNING r.epoch, r.alarm_ms, r.sql_seq),
                         l AS (INSERT INTO ownership_log (party, room, epoch, node_id, inc)
                               SELECT $1, $2, epoch, $3, $4 FROM c WHERE $5)
                         SELECT epoch, alarm_ms, sql_seq FROM c"
                    ),
                    &[&party, &room, me, &inc, &self.config.audit],
                )
                .await?;
            let Some(row) = row else { return Ok(None) };
            let (epoch, alarm, sql_seq): (i64, Option<i64>, i64) =
                (row.get(0), row.get(1), row.get(2));
            // Current: after the claim commits, only this node can write.
            let rows = client
                .query(
                    "SELECT k, v FROM room_kv WHERE party = $1 AND room = $2",
                    &[&party, &room],
                )
                .await?;
            let data = rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            // A room that never used SQL reads nothing more.
            let mut sql = SqlStart::default();
            if sql_seq > 0 {
                let snapshot = client
                    .query_opt(
                        "SELECT seq, file FROM room_sql_snapshot WHERE party = $1 AND room = $2",
                        &[&party, &room],
                    )
                    .await?;
                sql.snapshot = snapshot.map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1)));
                let after = sql.snapshot.as_ref().map_or(0, |(seq, _)| *seq as i64);
                let rows = client
                    .query(
                        "SELECT seq, changes FROM room_sql_log
                         WHERE party = $1 AND room = $2 AND seq > $3 ORDER BY seq",
                        &[&party, &room, &after],
                    )
                    .await?;
                sql.log = rows
                    .into_iter()
                    .map(|r| (r.get::<_, i64>(0).max(0) as u64, r.get(1)))
                    .collect();
            }
            Ok(Some(Claimed {
                epoch,
                inc,
                data,
                alarm: alarm.map(|a| a.max(0) as u64),
                sql,
            }))
        })
        .await?;
        if let Some(c) = &claimed {
            self.metrics.claims.fetch_add(1, Relaxed);
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
        let audit = self.config.audit;
        let released = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            // A room that keeps nothing (no data, no alarm) leaves no row:
            // every room name ever used would otherwise stay for ever. Its
            // next claim starts it again at epoch 1, which is safe because a
            // write is fenced by its holder's node and incarnation as well.
            // Not with `audit`, whose logs name rooms by their epochs.
            if !audit {
                let removed = client
                    .execute(
                        "DELETE FROM rooms r
                         WHERE r.party = $1 AND r.room = $2 AND r.epoch = $3
                           AND r.alarm_ms IS NULL AND r.sql_seq = 0
                           AND NOT EXISTS (SELECT 1 FROM room_kv k
                                           WHERE k.party = $1 AND k.room = $2)",
                        &[&party, &room, &epoch],
                    )
                    .await?;
                if removed > 0 {
                    return Ok(());
                }
            }
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
        (epoch, inc): (i64, i64),
        writes: Writes,
    ) -> Result<i64, ClusterError> {
        // A claim of an earlier incarnation of this node is void: that
        // incarnation self-fenced, and its lease may have lapsed.
        if !self.holds(inc) {
            return Err(ClusterError::Fenced);
        }
        let (reply, done) = oneshot::channel();
        let commit = GroupedCommit {
            key: key.clone(),
            epoch,
            inc,
            writes,
            reply,
        };
        if self.commits.send(commit).is_err() {
            return Err(ClusterError::Unavailable("the committer stopped".into()));
        }
        let r = done
            .await
            .unwrap_or_else(|_| Err(ClusterError::Unavailable("the committer stopped".into())));
        match &r {
            Ok(_) => self.metrics.commits.fetch_add(1, Relaxed),
            Err(ClusterError::Fenced) => {
                self.forget(key, epoch);
                self.metrics.fenced_commits.fetch_add(1, Relaxed)
            }
            Err(_) => 0,
        };
        r
    }

    /// The group commit: every commit waiting (up to [`MAX_GROUP`]) goes in
    /// one transaction ([`Cluster::commit_group`]); each hook hears its own
    /// outcome. A group that PostgreSQL itself refused (one room's statement
    /// failed, which aborts the transaction) is tried again one room at a
    /// time, so only that room's hook fails, as the SQLite writer isolates
    /// each batch in a savepoint. A group that failed otherwise (the
    /// connection, a timeout) fails every hook in it, and the next group
    /// starts on a fresh connection.
    pub(super) async fn commit_loop(
        self: Arc<Self>,
        mut rx: mpsc::UnboundedReceiver<GroupedCommit>,
    ) {
        let pg = Pg::new(&self.config.database);
        let mut statements = Statements::default();
        while let Some(first) = rx.recv().await {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(more) => group.push(more),
                    Err(_) => break,
                }
            }
            let results = bounded(&pg, self.commit_group(&pg, &mut statements, &group)).await;
            match results {
                Ok(Outcome::Committed(results)) => {
                    for (c, r) in group.into_iter().zip(results) {
                        let _ = c.reply.send(r);
                    }
                }
                Ok(Outcome::Refused(line)) if group.len() == 1 => {
                    for c in group {
                        let _ = c.reply.send(Err(ClusterError::Unavailable(line.clone())));
                    }
                }
                Ok(Outcome::Refused(_)) => {
                    for c in group {
                        let one = std::slice::from_ref(&c);
                        let r = match bounded(&pg, self.commit_group(&pg, &mut statements, one))
                            .await
                        {
                            Ok(Outcome::Committed(mut r)) => {
                                r.pop().unwrap_or(Err(ClusterError::Fenced))
                            }
                            Ok(Outcome::Refused(line)) => Err(ClusterError::Unavailable(line)),
                            Err(e) => {
                                pg.drop_client().await;
                                Err(e)
                            }
                        };
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

    /// One transaction: BEGIN, every hook's write as one statement, all
    /// sent at once (tokio-postgres pipelines them on the connection), and
    /// COMMIT: three round trips and one fsync for the whole group. A fenced
    /// hook's statement matches no row and so writes nothing, while the
    /// others commit; a statement PostgreSQL refuses rolls the group back
    /// ([`Outcome::Refused`]).
    async fn commit_group(
        &self,
        pg: &Pg,
        statements: &mut Statements,
        group: &[GroupedCommit],
    ) -> Result<Outcome, ClusterError> {
        let client = pg.get().await?;
        if !statements
            .client
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &client))
        {
            *statements = Statements {
                client: Some(client.clone()),
                ..Statements::default()
            };
        }
        let mut prepared = Vec::with_capacity(group.len());
        for c in group {
            prepared.push(statements.get(&client, self.write_kind(&c.writes)).await?);
        }
        let params: Vec<WriteParams> = group.iter().map(|c| self.params(c)).collect();
        client.batch_execute("BEGIN").await?;
        let writes = group
            .iter()
            .zip(&prepared)
            .zip(&params)
            .map(|((_, stmt), p)| {
                let client = &client;
                async move { client.query_opt(stmt, &p.refs()).await }
            });
        let rows = futures_util::future::join_all(writes).await;
        let mut results = Vec::with_capacity(group.len());
        for row in rows {
            results.push(match row {
                Ok(Some(r)) => Ok(r.get::<_, i64>(0)),
                Ok(None) => Err(ClusterError::Fenced),
                // The server refused a statement: the transaction is aborted.
                Err(e) if e.as_db_error().is_some() => {
                    client.batch_execute("ROLLBACK").await?;
                    return Ok(Outcome::Refused(ClusterError::from(e).to_string()));
                }
                Err(e) => return Err(e.into()),
            });
        }
        client.batch_execute("COMMIT").await?;
        self.metrics.commit_groups.fetch_add(1, Relaxed);
        Ok(Outcome::Committed(results))
    }

    /// Which statement a hook's writes need (see [`write_sql`]).
    fn write_kind(&self, w: &Writes) -> WriteKind {
        WriteKind {
            deletes: w.delete_all || !w.deletes.is_empty(),
            puts: !w.puts.is_empty(),
            sql_entry: w.sql_entry.is_some(),
            sql_snapshot: w.sql_snapshot.is_some(),
            audit: self.config.audit,
            // `unfenced_writes` exists only for the checker's negative
            // control: it shows what the epoch condition prevents.
            fenced: !self.config.unfenced_writes,
        }
    }

    fn params<'a>(&self, c: &'a GroupedCommit) -> WriteParams<'a> {
        let w = &c.writes;
        let seq = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let (set_alarm, alarm) = match w.alarm {
            Some(at) => (true, at.map(|a| i64::try_from(a).unwrap_or(i64::MAX))),
            None => (false, None),
        };
        WriteParams {
            party: c.key.0.to_string(),
            room: c.key.1.to_string(),
            epoch: c.epoch,
            bytes: w.bytes as i64,
            set_alarm,
            alarm,
            delete_all: w.delete_all,
            deletes: w.deletes.clone(),
            keys: w.puts.iter().map(|(k, _)| k.clone()).collect(),
            values: w.puts.iter().map(|(_, v)| v.clone()).collect(),
            node: self.config.node_id.clone(),
            inc: c.inc,
            sql_seq: w.sql_entry.as_ref().map(|(s, _)| seq(*s)),
            sql_changes: w.sql_entry.as_ref().map(|(_, c)| &c[..]),
            snapshot_seq: w.sql_snapshot.as_ref().map(|(s, _)| seq(*s)),
            snapshot: w.sql_snapshot.as_ref().map(|(_, f)| &f[..]),
        }
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

/// The shape of one hook's write statement.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct WriteKind {
    deletes: bool,
    puts: bool,
    sql_entry: bool,
    sql_snapshot: bool,
    audit: bool,
    fenced: bool,
}

/// One hook's write as one statement (one round trip, and pipelined with
/// the group's others): the fence first, and every other part only if the
/// fence matched. `$1` party, `$2` room, `$3` epoch, `$4` stored bytes,
/// `$5`/`$6` set the alarm to, `$7` delete all, `$8` keys to delete, `$9`/`$10`
/// keys and values to put, `$11`/`$12` the claiming node and incarnation,
/// `$13`/`$14` the SQL log entry, `$15`/`$16` the SQL snapshot. A key
/// is never both deleted and put (the delete spares the put keys), since
/// two parts of one statement may not touch one row.
fn write_sql(k: WriteKind) -> String {
    // The holder is named too: a room given up (its holder cleared, its
    // epoch kept) takes no more writes under that epoch.
    let fence = if k.fenced {
        "epoch = $3 AND owner_node = $11 AND owner_inc = $12"
    } else {
        "$3::bigint IS NOT NULL"
    };
    let mut sql = format!(
        "WITH f AS (UPDATE rooms SET seq = seq + 1, bytes = $4,
                      alarm_ms = CASE WHEN $5 THEN $6 ELSE alarm_ms END,
                      sql_seq = coalesce($13, sql_seq)
                    WHERE party = $1 AND room = $2 AND {fence} RETURNING seq)"
    );
    if k.sql_entry {
        // A log entry is never replaced: a holder whose view of the log is
        // stale fails here even past the epoch fence. Without the fence
        // (the negative control) it is, as a zombie's write would be.
        let replace = if k.fenced {
            ""
        } else {
            " ON CONFLICT (party, room, seq) DO UPDATE SET changes = EXCLUDED.changes"
        };
        sql += &format!(
            ", q AS (INSERT INTO room_sql_log (party, room, seq, changes)
                   SELECT $1, $2, $13, $14 WHERE EXISTS (SELECT 1 FROM f){replace})"
        );
    }
    if k.sql_snapshot {
        // Never an older snapshot over a newer one.
        sql += ", n AS (INSERT INTO room_sql_snapshot (party, room, seq, file)
                   SELECT $1, $2, $15, $16 WHERE EXISTS (SELECT 1 FROM f)
                   ON CONFLICT (party, room) DO UPDATE SET seq = EXCLUDED.seq, file = EXCLUDED.file
                   WHERE room_sql_snapshot.seq < EXCLUDED.seq),
                 t AS (DELETE FROM room_sql_log WHERE party = $1 AND room = $2
                   AND seq <= $15 AND EXISTS (SELECT 1 FROM f))";
    }
    if k.deletes {
        sql += ", d AS (DELETE FROM room_kv WHERE party = $1 AND room = $2
                   AND EXISTS (SELECT 1 FROM f)
                   AND ($7 OR k = ANY($8::text[])) AND NOT (k = ANY($9::text[])))";
    }
    if k.puts {
        sql += ", w AS (INSERT INTO room_kv (party, room, k, v)
                   SELECT $1, $2, t.k, t.v FROM unnest($9::text[], $10::bytea[]) AS t(k, v)
                   WHERE EXISTS (SELECT 1 FROM f)
                   ON CONFLICT (party, room, k) DO UPDATE SET v = EXCLUDED.v)";
    }
    if k.audit {
        sql += ", a AS (INSERT INTO commit_log (party, room, epoch, seq, node_id, inc)
                   SELECT $1, $2, $3, seq, $11, $12 FROM f)";
    }
    // Every parameter is named in every variant, so each has a type.
    sql += " SELECT seq FROM f WHERE $7::bool IS NOT NULL AND $8::text[] IS NOT NULL
              AND $9::text[] IS NOT NULL AND $10::bytea[] IS NOT NULL
              AND $11::text IS NOT NULL AND $12::bigint IS NOT NULL
              AND num_nulls($13::bigint, $14::bytea, $15::bigint, $16::bytea) >= 0";
    sql
}

/// The group commit's prepared statements, for the connection they were
/// prepared on.
#[derive(Default)]
struct Statements {
    client: Option<Arc<Client>>,
    by_kind: HashMap<WriteKind, Statement>,
}

impl Statements {
    async fn get(&mut self, client: &Client, kind: WriteKind) -> Result<Statement, ClusterError> {
        if let Some(s) = self.by_kind.get(&kind) {
            return Ok(s.clone());
        }
        let s = client.prepare(&write_sql(kind)).await?;
        self.by_kind.insert(kind, s.clone());
        Ok(s)
    }
}

/// One hook's statement parameters, held while the group is in flight.
struct WriteParams<'a> {
    party: String,
    room: String,
    epoch: i64,
    bytes: i64,
    set_alarm: bool,
    alarm: Option<i64>,
    delete_all: bool,
    deletes: Vec<String>,
    keys: Vec<String>,
    values: Vec<Vec<u8>>,
    node: String,
    inc: i64,
    sql_seq: Option<i64>,
    sql_changes: Option<&'a [u8]>,
    snapshot_seq: Option<i64>,
    snapshot: Option<&'a [u8]>,
}

impl WriteParams<'_> {
    fn refs(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 16] {
        [
            &self.party,
            &self.room,
            &self.epoch,
            &self.bytes,
            &self.set_alarm,
            &self.alarm,
            &self.delete_all,
            &self.deletes,
            &self.keys,
            &self.values,
            &self.node,
            &self.inc,
            &self.sql_seq,
            &self.sql_changes,
            &self.snapshot_seq,
            &self.snapshot,
        ]
    }
}
