//! The SQLite backend: one file in WAL mode, one writer thread that commits
//! every waiting batch in one transaction (group commit), a few readers.
//! [`Storage`] is the host's; [`SqliteRoom`] is one room's view of it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, mpsc};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use super::{Batch, Committed, LIST_PAGE, StorageError};
use crate::lock::lock;
use crate::metrics::Metrics;

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

/// The host's storage: one SQLite file in WAL mode, one writer thread, a few readers.
pub struct Storage {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<QueuedBatch>>,
    readers: Mutex<Vec<Connection>>,
    generations: Arc<Generations>,
}

/// Each party's generation, bumped when the party is deleted. A room's
/// storage carries the generation it was made in, and the writer refuses a
/// batch from an older one: a hook that was running when its party was
/// deleted cannot bring rows back after the delete.
#[derive(Default)]
struct Generations(Mutex<HashMap<String, u64>>);

impl Generations {
    fn get(&self, party: &str) -> u64 {
        lock(&self.0).get(party).copied().unwrap_or(0)
    }

    fn bump(&self, party: &str) {
        *lock(&self.0).entry(party.to_owned()).or_default() += 1;
    }
}

struct QueuedBatch {
    party: Arc<str>,
    room: Arc<str>,
    generation: u64,
    batch: Batch,
    /// The room's stored bytes after the batch.
    reply: oneshot::Sender<Result<u64, StorageError>>,
}

/// A room's stored bytes, as every commit keeps them (the writer reads it
/// to update it, a room to check its quota).
const ROOM_BYTES: &str = "SELECT bytes FROM room_sizes WHERE party = ?1 AND room = ?2";
/// A stored value's length: what a write replaces.
const VALUE_LEN: &str = "SELECT length(value) FROM kv WHERE party = ?1 AND room = ?2 AND key = ?3";

/// How many batches one transaction may group.
const MAX_GROUP: usize = 512;

impl Storage {
    /// Open (or create) `DIR/dormouse.sqlite3` and start the writer thread.
    pub fn open(dir: &Path, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Storage>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        let path = dir.join("dormouse.sqlite3");
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open storage {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS kv (
                 party TEXT NOT NULL, room TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,
                 PRIMARY KEY (party, room, key));
             CREATE TABLE IF NOT EXISTS alarms (
                 party TEXT NOT NULL, room TEXT NOT NULL, at_ms INTEGER NOT NULL,
                 PRIMARY KEY (party, room));
             CREATE TABLE IF NOT EXISTS cron_ticks (
                 party TEXT NOT NULL, cron TEXT NOT NULL, tick_ms INTEGER NOT NULL,
                 PRIMARY KEY (party, cron));
             CREATE TABLE IF NOT EXISTS sql_log (
                 party TEXT NOT NULL, room TEXT NOT NULL, seq INTEGER NOT NULL,
                 changes BLOB NOT NULL, PRIMARY KEY (party, room, seq));",
        )
        .with_context(|| format!("cannot set up storage {}", path.display()))?;
        // Version 1: each room's stored bytes, kept up to date by every
        // commit (for the per-room quota and `dormouse rooms`); counted once
        // here for data dirs written before it existed.
        let schema: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .with_context(|| format!("cannot read storage {}", path.display()))?;
        if schema < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS room_sizes (
                     party TEXT NOT NULL, room TEXT NOT NULL, bytes INTEGER NOT NULL,
                     PRIMARY KEY (party, room));
                 DELETE FROM room_sizes;
                 INSERT INTO room_sizes (party, room, bytes)
                     SELECT party, room, SUM(length(CAST(key AS BLOB)) + length(value))
                     FROM kv GROUP BY party, room;
                 PRAGMA user_version = 1;
                 COMMIT;",
            )
            .with_context(|| format!("cannot upgrade storage {}", path.display()))?;
        }
        let generations = Arc::new(Generations::default());
        let (tx, rx) = mpsc::channel();
        let g = generations.clone();
        std::thread::Builder::new()
            .name("dormouse-storage".into())
            .spawn(move || write_loop(conn, rx, &g, metrics))
            .context("cannot start the storage writer")?;
        Ok(Arc::new(Storage {
            path,
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
            generations,
        }))
    }

    /// Commit one room's batch durably; returns when it is on disk, with
    /// the bytes the room now stores.
    async fn commit(
        &self,
        commit: QueuedBatch,
        done: oneshot::Receiver<Result<u64, StorageError>>,
    ) -> Result<u64, StorageError> {
        let stopped = || StorageError::Unavailable("the storage writer stopped".into());
        if lock(&self.writer).send(commit).is_err() {
            return Err(stopped());
        }
        done.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// The stored bytes of every room that stores any: one query, for
    /// `dormouse rooms` (run it off the async runtime).
    pub fn room_sizes(&self) -> Result<HashMap<(String, String), u64>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT party, room, bytes FROM room_sizes")?;
            let rows = stmt.query_map([], |r| {
                Ok(((r.get(0)?, r.get(1)?), r.get::<_, i64>(2)?.max(0) as u64))
            })?;
            rows.collect()
        })
    }

    /// Every stored alarm: (party, room, due time), to rebuild the schedule at start.
    pub fn alarms(&self) -> Result<Vec<(String, String, u64)>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT party, room, at_ms FROM alarms")?;
            let rows = stmt.query_map([], |r| {
                let at: i64 = r.get(2)?;
                Ok((r.get(0)?, r.get(1)?, u64::try_from(at).unwrap_or(0)))
            })?;
            rows.collect()
        })
    }

    /// Where a room's SQL database lives: `DIR/sql/<party>/<room>.sqlite3`,
    /// each name hashed, since room names are anything a URL can carry.
    /// (A cluster node keeps its copies of rooms' files there too.)
    pub(crate) fn sql_file(&self, party: &str, room: &str) -> PathBuf {
        self.sql_dir(party).join(format!(
            "{}.sqlite3",
            hex::encode(Sha256::digest(room.as_bytes()))
        ))
    }

    fn sql_dir(&self, party: &str) -> PathBuf {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        dir.join("sql")
            .join(hex::encode(Sha256::digest(party.as_bytes())))
    }

    /// Forget a party's rooms: their data, sizes, alarms and SQL databases. Batches of
    /// hooks still running are refused from now on (see `Generations`).
    pub fn delete_party(&self, party: &str) -> Result<(), StorageError> {
        // Before the delete: the writer checks a batch's generation inside
        // its write transaction, so a batch checked before this bump commits
        // before the delete below can take the write lock, and is deleted.
        self.generations.bump(party);
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            for table in ["kv", "alarms", "room_sizes", "cron_ticks", "sql_log"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE party = ?1"),
                    params![party],
                )?;
            }
            tx.commit()
        })?;
        let dir = self.sql_dir(party);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StorageError::Unavailable(
                format!("cannot delete {}: {e}", dir.display()),
            )),
            _ => Ok(()),
        }
    }

    /// The latest tick of a party's cron that a run claimed, if any.
    pub fn cron_tick(&self, party: &str, cron: &str) -> Result<Option<u64>, StorageError> {
        self.read(|c| {
            c.query_row(
                "SELECT tick_ms FROM cron_ticks WHERE party = ?1 AND cron = ?2",
                params![party, cron],
                |r| r.get::<_, i64>(0),
            )
            .optional()
        })
        .map(|t| t.map(|t| t.max(0) as u64))
    }

    /// Claim a cron's tick before running it: `true` for the one caller
    /// that moves the cron's last tick forward to `tick_ms`, `false` when
    /// that tick (or a later one) was claimed already. Durable before it
    /// returns, so a restart never runs the tick again.
    pub fn claim_cron_tick(
        &self,
        party: &str,
        cron: &str,
        tick_ms: u64,
    ) -> Result<bool, StorageError> {
        self.read(|c| {
            c.execute(
                "INSERT INTO cron_ticks (party, cron, tick_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (party, cron) DO UPDATE SET tick_ms = excluded.tick_ms
                 WHERE cron_ticks.tick_ms < excluded.tick_ms",
                params![party, cron, at_ms_to_sql(tick_ms)],
            )
        })
        .map(|changed| changed == 1)
    }

    /// Run `f` on a reader connection. Reads are local page-cache hits in the
    /// common case, so they run inline on the room's task, as Durable Objects'
    /// synchronous storage reads do. A party's delete writes through it too
    /// (SQLite serializes it with the writer thread's commits).
    fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StorageError> {
        let conn = lock(&self.readers).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path)?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let result = f(&conn);
        lock(&self.readers).push(conn);
        Ok(result?)
    }
}

fn write_loop(
    mut conn: Connection,
    rx: mpsc::Receiver<QueuedBatch>,
    generations: &Generations,
    metrics: Arc<Metrics>,
) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        let results = commit_group(&mut conn, &group, generations);
        match results {
            Ok(results) => {
                metrics.storage_commits.fetch_add(1, Relaxed);
                for (commit, result) in group.into_iter().zip(results) {
                    let _ = commit.reply.send(result);
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for commit in group {
                    let _ = commit
                        .reply
                        .send(Err(StorageError::Unavailable(msg.clone())));
                }
            }
        }
    }
    // Every sender is gone: the host is shutting down. Fold the WAL back so
    // the data dir is one tidy file.
    let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);");
}

/// One transaction for the group; each batch in a savepoint so a failing
/// batch fails alone.
fn commit_group(
    conn: &mut Connection,
    group: &[QueuedBatch],
    generations: &Generations,
) -> rusqlite::Result<Vec<Result<u64, StorageError>>> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    for commit in group {
        // Checked inside the write transaction: see `Storage::delete_party`.
        if commit.generation != generations.get(&commit.party) {
            results.push(Err(StorageError::Fenced));
            continue;
        }
        let mut sp = tx.savepoint()?;
        match apply(&sp, commit) {
            Ok(bytes) => {
                sp.commit()?;
                results.push(Ok(bytes));
            }
            Err(e) => {
                sp.rollback()?;
                results.push(Err(e.into()));
            }
        }
    }
    tx.commit()?;
    Ok(results)
}

/// Apply one batch; the room's stored bytes after it.
fn apply(conn: &Connection, c: &QueuedBatch) -> rusqlite::Result<u64> {
    let (party, room) = (&*c.party, &*c.room);
    let mut bytes: i64 = if c.batch.delete_all {
        conn.prepare_cached("DELETE FROM kv WHERE party = ?1 AND room = ?2")?
            .execute(params![party, room])?;
        0
    } else {
        conn.prepare_cached(ROOM_BYTES)?
            .query_row(params![party, room], |r| r.get(0))
            .optional()?
            .unwrap_or(0)
    };
    for (key, value) in &c.batch.writes {
        let old: Option<i64> = conn
            .prepare_cached(VALUE_LEN)?
            .query_row(params![party, room, key], |r| r.get(0))
            .optional()?;
        if let Some(old) = old {
            bytes -= key.len() as i64 + old;
        }
        match value {
            Some(v) => {
                conn.prepare_cached(
                    "INSERT INTO kv (party, room, key, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (party, room, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![party, room, key, v])?;
                bytes += (key.len() + v.len()) as i64;
            }
            None if old.is_some() => {
                conn.prepare_cached("DELETE FROM kv WHERE party = ?1 AND room = ?2 AND key = ?3")?
                    .execute(params![party, room, key])?;
            }
            None => {}
        }
    }
    let bytes = bytes.max(0);
    if c.batch.delete_all || !c.batch.writes.is_empty() {
        conn.prepare_cached(
            "INSERT INTO room_sizes (party, room, bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT (party, room) DO UPDATE SET bytes = excluded.bytes",
        )?
        .execute(params![party, room, bytes])?;
    }
    match c.batch.alarm {
        Some(Some(at)) => conn
            .prepare_cached(
                "INSERT INTO alarms (party, room, at_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (party, room) DO UPDATE SET at_ms = excluded.at_ms",
            )?
            .execute(params![party, room, at_ms_to_sql(at)])?,
        Some(None) => conn
            .prepare_cached("DELETE FROM alarms WHERE party = ?1 AND room = ?2")?
            .execute(params![party, room])?,
        None => 0,
    };
    let sql = c.batch.sql.as_deref();
    if let Some((seq, changes)) = sql.and_then(|s| s.entry.as_ref()) {
        // OR REPLACE: an entry whose commit failed was never acknowledged,
        // and the room logs its next one under the same number.
        conn.prepare_cached(
            "INSERT OR REPLACE INTO sql_log (party, room, seq, changes) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![party, room, *seq as i64, changes])?;
    }
    if let Some(upto) = sql.and_then(|s| s.trim) {
        conn.prepare_cached("DELETE FROM sql_log WHERE party = ?1 AND room = ?2 AND seq <= ?3")?
            .execute(params![party, room, upto as i64])?;
    }
    Ok(bytes as u64)
}

fn at_ms_to_sql(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// One room's committed data in SQLite, read on demand (the page cache
/// makes most reads local).
pub struct SqliteRoom {
    storage: Arc<Storage>,
    party: Arc<str>,
    room: Arc<str>,
    /// The party's generation when this room's actor started.
    generation: u64,
}

impl Storage {
    /// A room's view of the file.
    pub fn room(self: &Arc<Self>, party: Arc<str>, room: Arc<str>) -> SqliteRoom {
        SqliteRoom {
            generation: self.generations.get(&party),
            storage: self.clone(),
            party,
            room,
        }
    }
}

impl Committed for SqliteRoom {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let (party, room) = (&*self.party, &*self.room);
        self.storage.read(|c| {
            c.prepare_cached("SELECT value FROM kv WHERE party = ?1 AND room = ?2 AND key = ?3")?
                .query_row(params![party, room, key], |r| r.get(0))
                .optional()
        })
    }

    fn value_len(&self, key: &str) -> Result<Option<usize>, StorageError> {
        let (party, room) = (&*self.party, &*self.room);
        let len: Option<i64> = self.storage.read(|c| {
            c.prepare_cached(VALUE_LEN)?
                .query_row(params![party, room, key], |r| r.get(0))
                .optional()
        })?;
        Ok(len.map(|l| l.max(0) as usize))
    }

    fn stored_bytes(&self) -> Result<u64, StorageError> {
        let (party, room) = (&*self.party, &*self.room);
        let n: Option<i64> = self.storage.read(|c| {
            c.prepare_cached(ROOM_BYTES)?
                .query_row(params![party, room], |r| r.get(0))
                .optional()
        })?;
        Ok(n.unwrap_or(0).max(0) as u64)
    }

    fn list_page(
        &self,
        lo: Option<&str>,
        hi: Option<&str>,
        cursor: Option<&str>,
        reverse: bool,
    ) -> Result<VecDeque<(String, Vec<u8>)>, StorageError> {
        let sql = if reverse {
            "SELECT key, value FROM kv WHERE party = ?1 AND room = ?2
             AND (?3 IS NULL OR key >= ?3) AND (?4 IS NULL OR key < ?4)
             AND (?5 IS NULL OR key < ?5)
             ORDER BY key DESC LIMIT ?6"
        } else {
            "SELECT key, value FROM kv WHERE party = ?1 AND room = ?2
             AND (?3 IS NULL OR key >= ?3) AND (?4 IS NULL OR key < ?4)
             AND (?5 IS NULL OR key > ?5)
             ORDER BY key ASC LIMIT ?6"
        };
        let (party, room) = (&*self.party, &*self.room);
        self.storage.read(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(params![party, room, lo, hi, cursor, LIST_PAGE], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            rows.collect()
        })
    }

    fn alarm(&self) -> Result<Option<u64>, StorageError> {
        let (party, room) = (&*self.party, &*self.room);
        let at: Option<i64> = self.storage.read(|c| {
            c.prepare_cached("SELECT at_ms FROM alarms WHERE party = ?1 AND room = ?2")?
                .query_row(params![party, room], |r| r.get(0))
                .optional()
        })?;
        Ok(at.map(|a| u64::try_from(a).unwrap_or(0)))
    }

    fn commit(
        &mut self,
        batch: Batch,
    ) -> Pin<Box<dyn Future<Output = Result<u64, StorageError>> + Send + '_>> {
        let (reply, done) = oneshot::channel();
        let commit = QueuedBatch {
            party: self.party.clone(),
            room: self.room.clone(),
            generation: self.generation,
            batch,
            reply,
        };
        Box::pin(self.storage.commit(commit, done))
    }

    fn sql_file(&self) -> Option<PathBuf> {
        Some(self.storage.sql_file(&self.party, &self.room))
    }

    fn sql_log(&self, after: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let (party, room) = (&*self.party, &*self.room);
        self.storage.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT seq, changes FROM sql_log WHERE party = ?1 AND room = ?2 AND seq > ?3
                 ORDER BY seq",
            )?;
            let rows = stmt.query_map(params![party, room, after as i64], |r| {
                Ok((r.get::<_, i64>(0)?.max(0) as u64, r.get::<_, Vec<u8>>(1)?))
            })?;
            rows.collect()
        })
    }
}
