//! Room storage: key-value pairs and alarms in SQLite, behind one narrow interface.
//!
//! No SQLite type leaves this file, so another store of record (PostgreSQL,
//! for several nodes) can stand behind the same interface later.
//!
//! How a hook's writes become durable:
//! - During a hook, writes go to the room's [`Batch`] (an overlay in memory);
//!   reads look at the overlay first, then at SQLite, so a room reads its own
//!   writes at once.
//! - When the hook returns, the room hands the batch to [`Storage::commit`]
//!   and waits. One writer thread commits every batch that is waiting in one
//!   SQLite transaction (group commit), each batch in its own savepoint, so
//!   one batch is all-or-nothing while many rooms share one fsync.
//! - Only then does the room release the messages the hook sent (the output
//!   gate lives in `room.rs`, and depends only on `commit` having returned).
//! - If the hook traps, the batch is dropped: none of its writes happen.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, mpsc};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::alarms::now_ms;
use crate::metrics::Metrics;

/// Storage failed; the text is for the guest and the log.
#[derive(Debug, thiserror::Error)]
#[error("storage unavailable: {0}")]
pub struct StorageError(String);

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError(e.to_string())
    }
}

/// The writes of one hook call, not yet committed.
#[derive(Debug, Default)]
pub struct Batch {
    /// Set by delete-all: every key committed before it is gone.
    delete_all: bool,
    /// Key -> new value, or `None` for a delete.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// `Some(at)` sets the alarm, `Some(None)` deletes it.
    alarm: Option<Option<u64>>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        !self.delete_all && self.writes.is_empty() && self.alarm.is_none()
    }

    /// What the batch does to the alarm: `Some(Some(at))` sets it,
    /// `Some(None)` deletes it, `None` leaves it.
    pub fn alarm_change(&self) -> Option<Option<u64>> {
        self.alarm
    }
}

/// One deployed version of a party.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Version {
    pub version: u32,
    /// SHA-256 of the component, hex.
    pub hash: String,
    pub size: usize,
    pub created_ms: u64,
    /// The name of the admin token that deployed it.
    pub token: String,
}

/// Which keys a `list` returns.
#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    pub prefix: Option<String>,
    pub start: Option<String>,
    pub end: Option<String>,
    pub limit: Option<u32>,
    pub reverse: bool,
}

/// The host's storage: one SQLite file in WAL mode, one writer thread, a few readers.
pub struct Storage {
    path: PathBuf,
    writer: Mutex<mpsc::Sender<Commit>>,
    readers: Mutex<Vec<Connection>>,
}

struct Commit {
    party: Arc<str>,
    room: Arc<str>,
    batch: Batch,
    reply: oneshot::Sender<Result<(), StorageError>>,
}

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
             CREATE TABLE IF NOT EXISTS versions (
                 party TEXT NOT NULL, version INTEGER NOT NULL, hash TEXT NOT NULL,
                 size INTEGER NOT NULL, created_ms INTEGER NOT NULL, token TEXT NOT NULL,
                 PRIMARY KEY (party, version));
             CREATE TABLE IF NOT EXISTS parties (
                 party TEXT PRIMARY KEY, version INTEGER NOT NULL);",
        )
        .with_context(|| format!("cannot set up storage {}", path.display()))?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("dormouse-storage".into())
            .spawn(move || write_loop(conn, rx, metrics))
            .context("cannot start the storage writer")?;
        Ok(Arc::new(Storage {
            path,
            writer: Mutex::new(tx),
            readers: Mutex::new(Vec::new()),
        }))
    }

    /// Commit one room's batch durably; returns when it is on disk.
    pub async fn commit(
        &self,
        party: &Arc<str>,
        room: &Arc<str>,
        batch: Batch,
    ) -> Result<(), StorageError> {
        let (reply, done) = oneshot::channel();
        let commit = Commit {
            party: party.clone(),
            room: room.clone(),
            batch,
            reply,
        };
        let sent = self
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(commit);
        if sent.is_err() {
            return Err(StorageError("the storage writer stopped".into()));
        }
        done.await
            .unwrap_or_else(|_| Err(StorageError("the storage writer stopped".into())))
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

    /// Record a new version of a party and make it the active one; its number.
    pub fn add_version(
        &self,
        party: &str,
        hash: &str,
        size: usize,
        token: &str,
    ) -> Result<u32, StorageError> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            let version: u32 = tx.query_row(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE party = ?1",
                params![party],
                |r| r.get(0),
            )?;
            tx.execute(
                "INSERT INTO versions (party, version, hash, size, created_ms, token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![party, version, hash, size as i64, now_ms() as i64, token],
            )?;
            tx.execute(
                "INSERT INTO parties (party, version) VALUES (?1, ?2)
                 ON CONFLICT (party) DO UPDATE SET version = excluded.version",
                params![party, version],
            )?;
            tx.commit()?;
            Ok(version)
        })
    }

    /// Make an earlier version of a party the active one.
    pub fn activate(&self, party: &str, version: u32) -> Result<(), StorageError> {
        self.read(|c| {
            c.execute(
                "UPDATE parties SET version = ?2 WHERE party = ?1",
                params![party, version],
            )
            .map(drop)
        })
    }

    /// Forget a deployed party: its versions and its rooms' data and alarms.
    pub fn delete_party(&self, party: &str) -> Result<(), StorageError> {
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            for table in ["parties", "versions", "kv", "alarms"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE party = ?1"),
                    params![party],
                )?;
            }
            tx.commit()
        })
    }

    /// Every version of a party, oldest first, and which one is active.
    pub fn versions(&self, party: &str) -> Result<(Vec<Version>, Option<u32>), StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT version, hash, size, created_ms, token FROM versions
                 WHERE party = ?1 ORDER BY version",
            )?;
            let versions = stmt
                .query_map(params![party], |r| {
                    Ok(Version {
                        version: r.get(0)?,
                        hash: r.get(1)?,
                        size: r.get::<_, i64>(2)? as usize,
                        created_ms: r.get::<_, i64>(3)? as u64,
                        token: r.get(4)?,
                    })
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let active = c
                .query_row(
                    "SELECT version FROM parties WHERE party = ?1",
                    params![party],
                    |r| r.get(0),
                )
                .optional()?;
            Ok((versions, active))
        })
    }

    /// Deployed parties with their active version.
    pub fn deployed(&self) -> Result<Vec<(String, Version)>, StorageError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT p.party, v.version, v.hash, v.size, v.created_ms, v.token
                 FROM parties p JOIN versions v ON v.party = p.party AND v.version = p.version
                 ORDER BY p.party",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    Version {
                        version: r.get(1)?,
                        hash: r.get(2)?,
                        size: r.get::<_, i64>(3)? as usize,
                        created_ms: r.get::<_, i64>(4)? as u64,
                        token: r.get(5)?,
                    },
                ))
            })?;
            rows.collect()
        })
    }

    /// Bytes a room keeps in storage (keys and values).
    pub fn room_size(&self, party: &str, room: &str) -> Result<u64, StorageError> {
        self.read(|c| {
            c.query_row(
                "SELECT COALESCE(SUM(length(key) + length(value)), 0) FROM kv
                 WHERE party = ?1 AND room = ?2",
                params![party, room],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as u64)
        })
    }

    /// Run `f` on a reader connection. Reads are local page-cache hits in the
    /// common case, so they run inline on the room's task, as Durable Objects'
    /// synchronous storage reads do. The admin's rare metadata writes use it
    /// too (SQLite serializes them with the writer thread's commits).
    fn read<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StorageError> {
        let conn = self.readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open(&self.path)?;
                c.busy_timeout(std::time::Duration::from_secs(5))?;
                c
            }
        };
        let result = f(&conn);
        self.readers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
        Ok(result?)
    }
}

fn write_loop(mut conn: Connection, rx: mpsc::Receiver<Commit>, metrics: Arc<Metrics>) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(more) => group.push(more),
                Err(_) => break,
            }
        }
        let results = commit_group(&mut conn, &group);
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
                    let _ = commit.reply.send(Err(StorageError(msg.clone())));
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
    group: &[Commit],
) -> rusqlite::Result<Vec<Result<(), StorageError>>> {
    let mut tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(group.len());
    for commit in group {
        let mut sp = tx.savepoint()?;
        match apply(&sp, commit) {
            Ok(()) => {
                sp.commit()?;
                results.push(Ok(()));
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

fn apply(conn: &Connection, c: &Commit) -> rusqlite::Result<()> {
    let (party, room) = (&*c.party, &*c.room);
    if c.batch.delete_all {
        conn.prepare_cached("DELETE FROM kv WHERE party = ?1 AND room = ?2")?
            .execute(params![party, room])?;
    }
    for (key, value) in &c.batch.writes {
        match value {
            Some(v) => conn
                .prepare_cached(
                    "INSERT INTO kv (party, room, key, value) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (party, room, key) DO UPDATE SET value = excluded.value",
                )?
                .execute(params![party, room, key, v])?,
            None => conn
                .prepare_cached("DELETE FROM kv WHERE party = ?1 AND room = ?2 AND key = ?3")?
                .execute(params![party, room, key])?,
        };
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
    Ok(())
}

fn at_ms_to_sql(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// One room's view of storage: its committed data plus the pending batch.
pub struct RoomStorage {
    storage: Arc<Storage>,
    party: Arc<str>,
    room: Arc<str>,
    pending: Batch,
}

impl RoomStorage {
    pub fn new(storage: Arc<Storage>, party: Arc<str>, room: Arc<str>) -> Self {
        RoomStorage {
            storage,
            party,
            room,
            pending: Batch::default(),
        }
    }

    /// The pending writes, leaving none behind (for commit).
    pub fn take_batch(&mut self) -> Batch {
        std::mem::take(&mut self.pending)
    }

    /// Forget the pending writes (the hook failed).
    pub fn rollback(&mut self) {
        self.pending = Batch::default();
    }

    /// Commit a batch taken with [`RoomStorage::take_batch`].
    pub async fn commit(&self, batch: Batch) -> Result<(), StorageError> {
        self.storage.commit(&self.party, &self.room, batch).await
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(v) = self.pending.writes.get(key) {
            return Ok(v.clone());
        }
        if self.pending.delete_all {
            return Ok(None);
        }
        let (party, room) = (&*self.party, &*self.room);
        self.storage.read(|c| {
            c.prepare_cached("SELECT value FROM kv WHERE party = ?1 AND room = ?2 AND key = ?3")?
                .query_row(params![party, room, key], |r| r.get(0))
                .optional()
        })
    }

    pub fn put(&mut self, key: String, value: Vec<u8>) {
        self.pending.writes.insert(key, Some(value));
    }

    /// Delete a key; whether it existed.
    pub fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        let existed = self.get(key)?.is_some();
        self.pending.writes.insert(key.to_owned(), None);
        Ok(existed)
    }

    pub fn delete_all(&mut self) {
        self.pending.writes.clear();
        self.pending.delete_all = true;
    }

    /// Entries in key order (or reversed), overlay merged over committed data.
    pub fn list(&self, o: &ListOptions) -> Result<Vec<(String, Vec<u8>)>, StorageError> {
        let mut lo = o.start.clone();
        let mut hi = o.end.clone();
        if let Some(p) = &o.prefix {
            if lo.as_deref().is_none_or(|s| s < p.as_str()) {
                lo = Some(p.clone());
            }
            if let Some(up) = prefix_upper_bound(p)
                && hi.as_deref().is_none_or(|e| e > up.as_str())
            {
                hi = Some(up);
            }
        }
        let in_range = |k: &str| {
            lo.as_deref().is_none_or(|l| k >= l)
                && hi.as_deref().is_none_or(|h| k < h)
                && o.prefix.as_deref().is_none_or(|p| k.starts_with(p))
        };
        // Pending deletes may hide committed rows, so fetch that many more.
        let hidden = self.pending.writes.values().filter(|v| v.is_none()).count() as i64;
        let limit = o.limit.map_or(-1, |l| i64::from(l) + hidden);
        let mut merged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        if !self.pending.delete_all {
            let (party, room) = (&*self.party, &*self.room);
            let sql = if o.reverse {
                "SELECT key, value FROM kv WHERE party = ?1 AND room = ?2
                 AND (?3 IS NULL OR key >= ?3) AND (?4 IS NULL OR key < ?4)
                 ORDER BY key DESC LIMIT ?5"
            } else {
                "SELECT key, value FROM kv WHERE party = ?1 AND room = ?2
                 AND (?3 IS NULL OR key >= ?3) AND (?4 IS NULL OR key < ?4)
                 ORDER BY key ASC LIMIT ?5"
            };
            let rows = self.storage.read(|c| {
                let mut stmt = c.prepare_cached(sql)?;
                let rows = stmt.query_map(params![party, room, lo, hi, limit], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })?;
            merged.extend(rows);
        }
        for (k, v) in &self.pending.writes {
            if !in_range(k) {
                continue;
            }
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        let take = o.limit.map_or(usize::MAX, |l| l as usize);
        Ok(if o.reverse {
            merged.into_iter().rev().take(take).collect()
        } else {
            merged.into_iter().take(take).collect()
        })
    }

    /// The alarm time, pending change first.
    pub fn alarm(&self) -> Result<Option<u64>, StorageError> {
        if let Some(a) = self.pending.alarm {
            return Ok(a);
        }
        let (party, room) = (&*self.party, &*self.room);
        let at: Option<i64> = self.storage.read(|c| {
            c.prepare_cached("SELECT at_ms FROM alarms WHERE party = ?1 AND room = ?2")?
                .query_row(params![party, room], |r| r.get(0))
                .optional()
        })?;
        Ok(at.map(|a| u64::try_from(a).unwrap_or(0)))
    }

    pub fn set_alarm(&mut self, at: Option<u64>) {
        self.pending.alarm = Some(at);
    }

    /// Whether the current hook set or deleted the alarm.
    pub fn alarm_touched(&self) -> bool {
        self.pending.alarm.is_some()
    }
}

/// The smallest string above every string that starts with `prefix`, if any.
fn prefix_upper_bound(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        let mut next = u32::from(last) + 1;
        if (0xD800..=0xDFFF).contains(&next) {
            next = 0xE000;
        }
        if let Some(c) = char::from_u32(next) {
            chars.push(c);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(dir: &Path) -> RoomStorage {
        let storage = Storage::open(dir, Arc::default()).expect("storage opens");
        RoomStorage::new(storage, "main".into(), "r1".into())
    }

    fn keys(entries: Vec<(String, Vec<u8>)>) -> Vec<String> {
        entries.into_iter().map(|(k, _)| k).collect()
    }

    #[tokio::test]
    async fn reads_own_writes_and_commits_atomically() {
        let dir = tempdir();
        let mut r = room(&dir);
        r.put("a".into(), b"1".to_vec());
        assert_eq!(r.get("a").expect("get"), Some(b"1".to_vec()));
        let batch = r.take_batch();
        r.commit(batch).await.expect("commit");
        assert_eq!(r.get("a").expect("get"), Some(b"1".to_vec()));

        r.put("b".into(), b"2".to_vec());
        assert!(r.delete("a").expect("delete"));
        r.rollback();
        assert_eq!(r.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(r.get("b").expect("get"), None);

        // Another room sees nothing of this one.
        let other = RoomStorage::new(r.storage.clone(), "main".into(), "r2".into());
        assert_eq!(other.get("a").expect("get"), None);
    }

    #[tokio::test]
    async fn list_merges_pending_over_committed() {
        let dir = tempdir();
        let mut r = room(&dir);
        for k in ["msg:1", "msg:2", "msg:3", "other", "msh"] {
            r.put(k.into(), k.as_bytes().to_vec());
        }
        let batch = r.take_batch();
        r.commit(batch).await.expect("commit");
        r.delete("msg:2").expect("delete");
        r.put("msg:4".into(), vec![]);
        let prefix = ListOptions {
            prefix: Some("msg:".into()),
            ..Default::default()
        };
        assert_eq!(
            keys(r.list(&prefix).expect("list")),
            ["msg:1", "msg:3", "msg:4"]
        );
        let last_two = ListOptions {
            limit: Some(2),
            reverse: true,
            ..prefix.clone()
        };
        assert_eq!(keys(r.list(&last_two).expect("list")), ["msg:4", "msg:3"]);
        let range = ListOptions {
            start: Some("msg:3".into()),
            end: Some("other".into()),
            ..Default::default()
        };
        assert_eq!(
            keys(r.list(&range).expect("list")),
            ["msg:3", "msg:4", "msh"]
        );
        r.delete_all();
        assert!(r.list(&ListOptions::default()).expect("list").is_empty());
        let batch = r.take_batch();
        r.commit(batch).await.expect("commit");
        assert!(r.list(&ListOptions::default()).expect("list").is_empty());
    }

    #[tokio::test]
    async fn alarm_round_trip_and_survives_reopen() {
        let dir = tempdir();
        {
            let mut r = room(&dir);
            assert_eq!(r.alarm().expect("alarm"), None);
            r.set_alarm(Some(1234));
            let batch = r.take_batch();
            r.commit(batch).await.expect("commit");
        }
        let r = room(&dir);
        assert_eq!(r.alarm().expect("alarm"), Some(1234));
    }

    #[test]
    fn upper_bounds() {
        assert_eq!(prefix_upper_bound("ab").as_deref(), Some("ac"));
        assert_eq!(prefix_upper_bound(""), None);
        assert_eq!(prefix_upper_bound("a\u{10FFFF}").as_deref(), Some("b"));
    }

    /// A fresh directory under the system temp dir.
    fn tempdir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("dormouse-storage-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
