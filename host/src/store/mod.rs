//! Room storage: each room's key-value pairs, size and alarm, in SQLite,
//! behind one narrow interface (deploy metadata is `deploys.rs`).
//!
//! No SQLite type leaves this file, so another store of record (PostgreSQL,
//! for several nodes) can stand behind the same interface later.
//!
//! How a hook's writes become durable:
//! - During a hook, writes go to the room's [`Batch`] (an overlay in memory);
//!   reads look at the overlay first, then at SQLite, so a room reads its own
//!   writes at once.
//! - When the hook returns, the room hands the batch to `Storage::commit`
//!   and waits. One writer thread commits every batch that is waiting in one
//!   SQLite transaction (group commit), each batch in its own savepoint, so
//!   one batch is all-or-nothing while many rooms share one fsync.
//! - Only then does the room release the messages the hook sent (the output
//!   gate lives in `room.rs`, and depends only on `commit` having returned).
//! - If the hook traps, the batch is dropped: none of its writes happen.

pub mod compile_cache;
pub mod deploys;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, mpsc};

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

use crate::cluster::{Claimed, Cluster, ClusterError, Writes};
use crate::config::Limits;
use crate::lock::lock;
use crate::metrics::Metrics;

/// Why a storage call failed; the text is for the guest and the log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store failed (disk, database).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A write past a bound (per hook or per room); the text names it.
    #[error("{0}")]
    TooLarge(String),
    /// The party was deleted while the hook ran: its writes must not
    /// outlive the delete.
    #[error("the party was deleted")]
    Fenced,
    /// In a cluster: another node holds this room now (or this node left
    /// the cluster); nothing was written.
    #[error("another node holds this room now")]
    Moved,
}

impl From<ClusterError> for StorageError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Fenced => StorageError::Moved,
            ClusterError::Unavailable(line) => StorageError::Unavailable(line),
        }
    }
}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Unavailable(e.to_string())
    }
}

/// The writes of one hook call, not yet committed.
#[derive(Debug, Default)]
pub struct Batch {
    /// Set by delete-all: every key committed before it is gone.
    delete_all: bool,
    /// Key -> new value, or `None` for a delete.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Bytes of keys and values held in `writes` (the per-hook bound).
    bytes: usize,
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

struct Commit {
    party: Arc<str>,
    room: Arc<str>,
    generation: u64,
    batch: Batch,
    /// The room's stored bytes after the batch.
    reply: oneshot::Sender<Result<u64, StorageError>>,
}

/// Rows one step of a `list` reads, so a room of any size is listed in
/// bounded host memory.
const LIST_PAGE: i64 = 256;

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
                 PRIMARY KEY (party, room));",
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
        commit: Commit,
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

    /// Forget a party's rooms: their data, sizes and alarms. Batches of
    /// hooks still running are refused from now on (see `Generations`).
    pub fn delete_party(&self, party: &str) -> Result<(), StorageError> {
        // Before the delete: the writer checks a batch's generation inside
        // its write transaction, so a batch checked before this bump commits
        // before the delete below can take the write lock, and is deleted.
        self.generations.bump(party);
        self.read(|c| {
            let tx = c.unchecked_transaction()?;
            for table in ["kv", "alarms", "room_sizes"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE party = ?1"),
                    params![party],
                )?;
            }
            tx.commit()
        })
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
    rx: mpsc::Receiver<Commit>,
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
    group: &[Commit],
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
fn apply(conn: &Connection, c: &Commit) -> rusqlite::Result<u64> {
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
    Ok(bytes as u64)
}

fn at_ms_to_sql(at: u64) -> i64 {
    i64::try_from(at).unwrap_or(i64::MAX)
}

/// One room's view of storage: its committed data plus the pending batch.
/// On one node the committed data is SQLite's; in a cluster it is the
/// room's rows as loaded when this node claimed it, kept up to date by its
/// own commits (only the holder of the epoch can write, so the copy stays
/// current while the claim holds).
pub struct RoomStorage {
    storage: Arc<Storage>,
    cluster: Option<Arc<Cluster>>,
    /// In a cluster, the claim this room holds; `None` until claimed.
    /// Boxed: every room has this field, few have a claim.
    claim: Option<Box<Claim>>,
    party: Arc<str>,
    room: Arc<str>,
    /// The party's generation when this room's actor started.
    generation: u64,
    /// The party's limits: bytes per hook, per room, per list.
    limits: Arc<Limits>,
    pending: Batch,
    /// Where the running hook began, when `pending` also holds the writes
    /// of earlier hooks that will share its commit ([`RoomStorage::savepoint`]).
    /// Boxed: only a room in the middle of a group has one.
    mark: Option<Box<Mark>>,
    /// The room's stored bytes as of its last commit; read on first need.
    stored: Option<u64>,
}

/// What the batch was when the running hook began: enough to take back this
/// hook's writes alone, keeping the earlier hooks' (see `Room::run`, which
/// lets the hooks of queued messages share one commit).
#[derive(Default)]
struct Mark {
    bytes: usize,
    delete_all: bool,
    alarm: Option<Option<u64>>,
    /// Each key this hook staged, with what the batch held for it before
    /// (`None`: nothing).
    prior: HashMap<String, Option<Option<Vec<u8>>>>,
    /// The batch's writes as they were at the mark, once this hook called
    /// delete-all (which clears them).
    writes: Option<BTreeMap<String, Option<Vec<u8>>>>,
}

/// A room's claim in a cluster: its epoch, and its data as committed.
struct Claim {
    epoch: i64,
    inc: i64,
    data: BTreeMap<String, Vec<u8>>,
    alarm: Option<u64>,
    bytes: u64,
}

/// What [`RoomStorage::claim`] found.
pub enum Claiming {
    /// The room was already this node's (or there is no cluster).
    Held,
    /// Claimed just now; its stored alarm, for the local schedule.
    Claimed { alarm: Option<u64> },
}

impl RoomStorage {
    pub fn new(
        storage: Arc<Storage>,
        cluster: Option<Arc<Cluster>>,
        party: Arc<str>,
        room: Arc<str>,
        limits: Arc<Limits>,
    ) -> Self {
        RoomStorage {
            generation: storage.generations.get(&party),
            storage,
            cluster,
            claim: None,
            party,
            room,
            limits,
            pending: Batch::default(),
            mark: None,
            stored: None,
        }
    }

    /// The pending writes, leaving none behind (for commit).
    pub fn take_batch(&mut self) -> Batch {
        self.mark = None;
        std::mem::take(&mut self.pending)
    }

    /// The hook that ran last is done, and its writes wait for a commit
    /// that the next hook's will share: a later [`RoomStorage::rollback`]
    /// takes back only what comes after this.
    pub fn savepoint(&mut self) {
        self.mark = Some(Box::new(Mark {
            bytes: self.pending.bytes,
            delete_all: self.pending.delete_all,
            alarm: self.pending.alarm,
            ..Mark::default()
        }));
    }

    /// Forget the running hook's writes (it failed): back to the savepoint,
    /// or to nothing pending when there is none.
    pub fn rollback(&mut self) {
        let Some(mark) = self.mark.take() else {
            self.pending = Batch::default();
            return;
        };
        let Mark {
            bytes,
            delete_all,
            alarm,
            prior,
            writes,
        } = *mark;
        match writes {
            Some(writes) => self.pending.writes = writes,
            None => undo_staged(&mut self.pending.writes, prior),
        }
        self.pending.bytes = bytes;
        self.pending.delete_all = delete_all;
        self.pending.alarm = alarm;
    }

    /// Forget every pending write, of every hook since the last commit
    /// (their shared commit failed).
    pub fn rollback_all(&mut self) {
        self.mark = None;
        self.pending = Batch::default();
    }

    /// Bytes of keys and values waiting for the next commit, all hooks.
    pub fn pending_bytes(&self) -> usize {
        self.pending.bytes
    }

    /// Bytes the running hook staged (the per-hook bound): what the batch
    /// grew by since the savepoint.
    fn hook_bytes(&self) -> usize {
        let base = self.mark.as_ref().map_or(0, |m| m.bytes);
        self.pending.bytes.saturating_sub(base)
    }

    /// Remember what the batch held for `key` before this hook first
    /// touched it, when a savepoint is set.
    fn note_prior(&mut self, key: &str) {
        if let Some(mark) = &mut self.mark
            && mark.writes.is_none()
            && !mark.prior.contains_key(key)
        {
            let before = self.pending.writes.get(key).cloned();
            mark.prior.insert(key.to_owned(), before);
        }
    }

    /// In a cluster, make sure this node holds the room before it handles
    /// an event: claim it (bumping its epoch) and load its data.
    /// [`StorageError::Moved`] when another live node holds it.
    pub async fn claim(&mut self) -> Result<Claiming, StorageError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Claiming::Held);
        };
        if self.claim.is_some() {
            return Ok(Claiming::Held);
        }
        let key = (self.party.clone(), self.room.clone());
        let Some(Claimed {
            epoch,
            inc,
            data,
            alarm,
        }) = cluster.claim(&key).await?
        else {
            return Err(StorageError::Moved);
        };
        let bytes = data.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        self.claim = Some(Box::new(Claim {
            epoch,
            inc,
            data,
            alarm,
            bytes,
        }));
        Ok(Claiming::Claimed { alarm })
    }

    /// In a cluster, give the room up as the actor retires, unless an alarm
    /// is pending (the holder fires it). Runs in the background.
    pub fn release(&mut self) {
        if self.claim.as_ref().is_some_and(|c| c.alarm.is_some()) {
            return;
        }
        let (Some(cluster), Some(claim)) = (&self.cluster, self.claim.take()) else {
            return;
        };
        let cluster = cluster.clone();
        let key = (self.party.clone(), self.room.clone());
        tokio::spawn(async move { cluster.release(&key, claim.epoch).await });
    }

    /// In a cluster, give the room up now, alarm or not (a due alarm of a
    /// room nobody holds is fired by whichever node sweeps it first), and
    /// return once PostgreSQL has it.
    pub async fn hand_off(&mut self) {
        let (Some(cluster), Some(claim)) = (&self.cluster, self.claim.take()) else {
            return;
        };
        let key = (self.party.clone(), self.room.clone());
        cluster.release(&key, claim.epoch).await;
    }

    /// Whether this node may still act for the room: always on one node; in
    /// a cluster, while its lease is valid and the claim is this
    /// incarnation's. Checked before a hook's output leaves.
    pub fn still_held(&self) -> bool {
        match (&self.cluster, &self.claim) {
            (None, _) => true,
            (Some(c), Some(claim)) => c.holds(claim.inc),
            (Some(_), None) => false,
        }
    }

    /// Forget the claim (the node self-fenced): the next event claims again.
    pub fn drop_claim(&mut self) {
        if let (Some(cluster), Some(claim)) = (&self.cluster, self.claim.take()) {
            cluster.forget(&(self.party.clone(), self.room.clone()), claim.epoch);
        }
    }

    /// Commit a batch taken with [`RoomStorage::take_batch`]; returns once
    /// it is durable.
    pub async fn commit(&mut self, batch: Batch) -> Result<(), StorageError> {
        if self.cluster.is_some() {
            return self.commit_to_cluster(batch).await;
        }
        let (reply, done) = oneshot::channel();
        let commit = Commit {
            party: self.party.clone(),
            room: self.room.clone(),
            generation: self.generation,
            batch,
            reply,
        };
        let bytes = self.storage.commit(commit, done).await?;
        self.stored = Some(bytes);
        Ok(())
    }

    /// Commit under the room's epoch. Any failure forgets the claim: the
    /// outcome may be unknown, so the next event claims and loads afresh.
    async fn commit_to_cluster(&mut self, batch: Batch) -> Result<(), StorageError> {
        let (Some(cluster), Some(claim)) = (&self.cluster, &mut self.claim) else {
            return Err(StorageError::Moved);
        };
        let mut bytes = if batch.delete_all { 0 } else { claim.bytes };
        let (mut puts, mut deletes) = (Vec::new(), Vec::new());
        for (k, v) in &batch.writes {
            if !batch.delete_all
                && let Some(old) = claim.data.get(k)
            {
                bytes = bytes.saturating_sub((k.len() + old.len()) as u64);
            }
            match v {
                Some(v) => {
                    bytes += (k.len() + v.len()) as u64;
                    puts.push((k.clone(), v.clone()));
                }
                None => deletes.push(k.clone()),
            }
        }
        let writes = Writes {
            delete_all: batch.delete_all,
            puts,
            deletes,
            alarm: batch.alarm,
            bytes,
        };
        let key = (self.party.clone(), self.room.clone());
        if let Err(e) = cluster.commit(&key, (claim.epoch, claim.inc), writes).await {
            self.claim = None;
            return Err(e.into());
        }
        if batch.delete_all {
            claim.data.clear();
        }
        for (k, v) in batch.writes {
            match v {
                Some(v) => claim.data.insert(k, v),
                None => claim.data.remove(&k),
            };
        }
        if let Some(at) = batch.alarm {
            claim.alarm = at;
        }
        claim.bytes = bytes;
        self.stored = Some(bytes);
        Ok(())
    }

    /// In a cluster, the data of the room's claim.
    fn claimed(&self) -> Result<Option<&Claim>, StorageError> {
        match (&self.cluster, &self.claim) {
            (None, _) => Ok(None),
            (Some(_), Some(c)) => Ok(Some(&**c)),
            (Some(_), None) => Err(StorageError::Moved),
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(v) = self.pending.writes.get(key) {
            return Ok(v.clone());
        }
        if self.pending.delete_all {
            return Ok(None);
        }
        if let Some(c) = self.claimed()? {
            return Ok(c.data.get(key).cloned());
        }
        let (party, room) = (&*self.party, &*self.room);
        self.storage.read(|c| {
            c.prepare_cached("SELECT value FROM kv WHERE party = ?1 AND room = ?2 AND key = ?3")?
                .query_row(params![party, room, key], |r| r.get(0))
                .optional()
        })
    }

    /// Stage a write; refused past the hook's or the room's bound.
    pub fn put(&mut self, key: String, value: Vec<u8>) -> Result<(), StorageError> {
        let size = key.len() + value.len();
        self.check_hook_bytes(&key, size)?;
        self.check_room_bytes(&key, size)?;
        self.stage(key, Some(value));
        Ok(())
    }

    /// Stage several writes, all or none: past a bound, none is staged.
    pub fn put_many(&mut self, entries: Vec<(String, Vec<u8>)>) -> Result<(), StorageError> {
        let before: Vec<(String, Option<Option<Vec<u8>>>)> = entries
            .iter()
            .map(|(k, _)| (k.clone(), self.pending.writes.get(k).cloned()))
            .collect();
        for (k, v) in entries {
            if let Err(e) = self.put(k, v) {
                for (k, old) in before.into_iter().rev() {
                    match old {
                        Some(v) => self.stage(k, v),
                        None => self.unstage(&k),
                    }
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Stage a delete; whether the key existed.
    pub fn delete(&mut self, key: &str) -> Result<bool, StorageError> {
        self.check_hook_bytes(key, key.len())?;
        let existed = self.get(key)?.is_some();
        self.stage(key.to_owned(), None);
        Ok(existed)
    }

    pub fn delete_all(&mut self) {
        if let Some(mark) = &mut self.mark
            && mark.writes.is_none()
        {
            // The writes as at the mark: today's, with this hook's undone.
            let mut writes = std::mem::take(&mut self.pending.writes);
            undo_staged(&mut writes, std::mem::take(&mut mark.prior));
            mark.writes = Some(writes);
        }
        self.pending.writes.clear();
        self.pending.bytes = 0;
        self.pending.delete_all = true;
    }

    fn stage(&mut self, key: String, value: Option<Vec<u8>>) {
        self.note_prior(&key);
        self.pending.bytes -= self.staged_bytes(&key);
        self.pending.bytes += entry_bytes(&key, &value);
        self.pending.writes.insert(key, value);
    }

    /// Forget what the batch holds for one key.
    fn unstage(&mut self, key: &str) {
        self.note_prior(key);
        self.pending.bytes -= self.staged_bytes(key);
        self.pending.writes.remove(key);
    }

    /// Bytes the batch holds for one key (0 when it holds none).
    fn staged_bytes(&self, key: &str) -> usize {
        self.pending
            .writes
            .get(key)
            .map_or(0, |v| entry_bytes(key, v))
    }

    /// The hook's writes wait in host memory until it returns: bound them.
    fn check_hook_bytes(&self, key: &str, size: usize) -> Result<(), StorageError> {
        let max = self.limits.hook_write_bytes;
        if self.hook_bytes().saturating_sub(self.staged_bytes(key)) + size > max {
            return Err(StorageError::TooLarge(format!(
                "one hook may write at most {max} bytes of keys and values"
            )));
        }
        Ok(())
    }

    /// The room's quota. Cheap while far from it (an upper bound: stored
    /// bytes plus everything pending); exact near it.
    fn check_room_bytes(&mut self, key: &str, size: usize) -> Result<(), StorageError> {
        let max = self.limits.storage_bytes_per_room;
        let base = if self.pending.delete_all {
            0
        } else {
            self.stored()?
        };
        if base + (self.pending.bytes + size) as u64 <= max {
            return Ok(());
        }
        let mut after = base as i64;
        let staged = self
            .pending
            .writes
            .iter()
            .filter(|(k, _)| k.as_str() != key)
            .map(|(k, v)| (k.as_str(), entry_bytes(k, v)));
        for (k, new) in staged.chain([(key, size)]) {
            after += new as i64 - self.stored_entry(k)? as i64;
        }
        if after > max as i64 {
            return Err(StorageError::TooLarge(format!(
                "this room's storage would hold {after} bytes; the limit is {max} (storage_bytes_per_room)"
            )));
        }
        Ok(())
    }

    /// The room's stored bytes as of its last commit.
    fn stored(&mut self) -> Result<u64, StorageError> {
        if let Some(n) = self.stored {
            return Ok(n);
        }
        if let Some(c) = self.claimed()? {
            return Ok(c.bytes);
        }
        let (party, room) = (&*self.party, &*self.room);
        let n: Option<i64> = self.storage.read(|c| {
            c.prepare_cached(ROOM_BYTES)?
                .query_row(params![party, room], |r| r.get(0))
                .optional()
        })?;
        let n = n.unwrap_or(0).max(0) as u64;
        self.stored = Some(n);
        Ok(n)
    }

    /// Bytes one committed entry takes (0 when absent, or deleted by the batch).
    fn stored_entry(&self, key: &str) -> Result<usize, StorageError> {
        if self.pending.delete_all {
            return Ok(0);
        }
        if let Some(c) = self.claimed()? {
            return Ok(c.data.get(key).map_or(0, |v| key.len() + v.len()));
        }
        let (party, room) = (&*self.party, &*self.room);
        let len: Option<i64> = self.storage.read(|c| {
            c.prepare_cached(VALUE_LEN)?
                .query_row(params![party, room, key], |r| r.get(0))
                .optional()
        })?;
        Ok(len.map_or(0, |l| key.len() + l.max(0) as usize))
    }

    /// Entries in key order (or reversed), overlay merged over committed
    /// data. Committed rows are read a page at a time and merged as they
    /// come, so host memory holds the answer and one page, never the room;
    /// an answer larger than an instance's memory could not reach the guest
    /// anyway, and is refused.
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
        let mut staged: Vec<(&String, &Option<Vec<u8>>)> = self
            .pending
            .writes
            .iter()
            .filter(|(k, _)| in_range(k))
            .collect();
        if o.reverse {
            staged.reverse();
        }
        let mut staged = staged.into_iter().peekable();
        let mut page: VecDeque<(String, Vec<u8>)> = VecDeque::new();
        // The last committed key read: the next page starts past it.
        let mut cursor: Option<String> = None;
        let mut committed_done = self.pending.delete_all;
        let limit = o.limit.map_or(usize::MAX, |l| l as usize);
        let max_bytes = self.limits.instance_memory_bytes;
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        // Whether key `a` comes before `b` in the listing's order.
        let before = |a: &str, b: &str| if o.reverse { a > b } else { a < b };
        while out.len() < limit {
            if page.is_empty() && !committed_done {
                page = self.list_page(&lo, &hi, cursor.as_deref(), o.reverse)?;
                committed_done = page.len() < LIST_PAGE as usize;
                cursor = page.back().map(|(k, _)| k.clone());
            }
            let take_staged = match (page.front(), staged.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((c, _)), Some((s, _))) => {
                    if c == *s {
                        // The staged write replaces the committed row.
                        page.pop_front();
                        true
                    } else {
                        before(s, c)
                    }
                }
            };
            let entry = if take_staged {
                match staged.next() {
                    Some((k, Some(v))) => (k.clone(), v.clone()),
                    _ => continue,
                }
            } else {
                match page.pop_front() {
                    Some(e) => e,
                    None => continue,
                }
            };
            bytes += entry.0.len() + entry.1.len();
            if bytes > max_bytes {
                return Err(StorageError::TooLarge(format!(
                    "this list would return more than {max_bytes} bytes (an instance's memory); pass a limit, or list in pages with start"
                )));
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// One page of committed rows in `[lo, hi)` past `cursor`, in order.
    fn list_page(
        &self,
        lo: &Option<String>,
        hi: &Option<String>,
        cursor: Option<&str>,
        reverse: bool,
    ) -> Result<VecDeque<(String, Vec<u8>)>, StorageError> {
        if let Some(c) = self.claimed()? {
            use std::ops::Bound::{Excluded, Included, Unbounded};
            let mut from = lo.as_deref().map_or(Unbounded, Included);
            let mut to = hi.as_deref().map_or(Unbounded, Excluded);
            if let Some(cur) = cursor {
                if reverse {
                    to = Excluded(cur);
                } else {
                    from = Excluded(cur);
                }
            }
            // The end is never included, so an empty range is one whose
            // start is not below its end (which `range` would panic on).
            if let (Included(a) | Excluded(a), Excluded(b)) = (from, to)
                && a >= b
            {
                return Ok(VecDeque::new());
            }
            let range = c.data.range::<str, _>((from, to));
            let entry = |(k, v): (&String, &Vec<u8>)| (k.clone(), v.clone());
            let page = LIST_PAGE as usize;
            return Ok(if reverse {
                range.rev().take(page).map(entry).collect()
            } else {
                range.take(page).map(entry).collect()
            });
        }
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

    /// The alarm time, pending change first.
    pub fn alarm(&self) -> Result<Option<u64>, StorageError> {
        if let Some(a) = self.pending.alarm {
            return Ok(a);
        }
        if let Some(c) = self.claimed()? {
            return Ok(c.alarm);
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
        match &self.mark {
            Some(mark) => self.pending.alarm != mark.alarm,
            None => self.pending.alarm.is_some(),
        }
    }
}

/// Put back what a batch held for each key before a hook staged it
/// ([`Mark::prior`]; `None`: nothing).
fn undo_staged(
    writes: &mut BTreeMap<String, Option<Vec<u8>>>,
    prior: HashMap<String, Option<Option<Vec<u8>>>>,
) {
    for (key, before) in prior {
        match before {
            Some(v) => writes.insert(key, v),
            None => writes.remove(&key),
        };
    }
}

/// Bytes a stored entry counts for: its key and value (a delete, its key).
fn entry_bytes(key: &str, value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len)
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
        room_with(dir, Limits::default())
    }

    fn room_with(dir: &Path, limits: Limits) -> RoomStorage {
        let storage = Storage::open(dir, Arc::default()).expect("storage opens");
        RoomStorage::new(storage, None, "main".into(), "r1".into(), Arc::new(limits))
    }

    async fn commit(r: &mut RoomStorage) {
        let batch = r.take_batch();
        r.commit(batch).await.expect("commit");
    }

    fn keys(entries: Vec<(String, Vec<u8>)>) -> Vec<String> {
        entries.into_iter().map(|(k, _)| k).collect()
    }

    #[tokio::test]
    async fn reads_own_writes_and_commits_atomically() {
        let dir = tempdir();
        let mut r = room(&dir);
        r.put("a".into(), b"1".to_vec()).expect("put");
        assert_eq!(r.get("a").expect("get"), Some(b"1".to_vec()));
        let batch = r.take_batch();
        r.commit(batch).await.expect("commit");
        assert_eq!(r.get("a").expect("get"), Some(b"1".to_vec()));

        r.put("b".into(), b"2".to_vec()).expect("put");
        assert!(r.delete("a").expect("delete"));
        r.rollback();
        assert_eq!(r.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(r.get("b").expect("get"), None);

        // Another room sees nothing of this one.
        let other = RoomStorage::new(
            r.storage.clone(),
            None,
            "main".into(),
            "r2".into(),
            r.limits.clone(),
        );
        assert_eq!(other.get("a").expect("get"), None);
    }

    /// Hooks that share a commit: a failed hook takes back only its own
    /// writes (puts, deletes, delete-all, the alarm), and each hook is held
    /// to its own write bound.
    #[tokio::test]
    async fn a_rollback_after_a_savepoint_keeps_the_earlier_hooks_writes() {
        let dir = tempdir();
        let mut r = room_with(
            &dir,
            Limits {
                hook_write_bytes: 100,
                ..Limits::default()
            },
        );
        r.put("kept".into(), b"1".to_vec()).expect("put");
        commit(&mut r).await;
        // Hook 1 writes and settles.
        r.put("a".into(), b"1".to_vec()).expect("put");
        r.put("b".into(), vec![b'x'; 90]).expect("put");
        r.set_alarm(Some(5));
        r.savepoint();
        // Hook 2 overwrites, deletes, adds, sets the alarm, then fails.
        r.put("a".into(), b"2".to_vec()).expect("put");
        assert!(r.delete("b").expect("delete"));
        r.put("c".into(), b"3".to_vec()).expect("put");
        r.set_alarm(None);
        assert!(r.alarm_touched());
        r.rollback();
        assert_eq!(r.get("a").expect("get"), Some(b"1".to_vec()));
        assert_eq!(r.get("b").expect("get"), Some(vec![b'x'; 90]));
        assert_eq!(r.get("c").expect("get"), None);
        assert_eq!(r.alarm().expect("alarm"), Some(5));
        // Hook 3: its own 100 bytes, though hook 1's 92 are pending too.
        r.savepoint();
        r.put("d".into(), vec![b'y'; 90])
            .expect("a hook's own bound");
        // ...and a delete-all it takes back.
        r.delete_all();
        r.put("e".into(), b"5".to_vec()).expect("put");
        assert_eq!(r.get("kept").expect("get"), None);
        r.rollback();
        assert_eq!(r.get("d").expect("get"), None);
        assert_eq!(r.get("e").expect("get"), None);
        assert_eq!(
            keys(r.list(&ListOptions::default()).expect("list")),
            ["a", "b", "kept"]
        );
        commit(&mut r).await;
        let r = room(&dir);
        assert_eq!(
            keys(r.list(&ListOptions::default()).expect("list")),
            ["a", "b", "kept"]
        );
        assert_eq!(r.alarm().expect("alarm"), Some(5));
    }

    #[tokio::test]
    async fn list_merges_pending_over_committed() {
        let dir = tempdir();
        let mut r = room(&dir);
        for k in ["msg:1", "msg:2", "msg:3", "other", "msh"] {
            r.put(k.into(), k.as_bytes().to_vec()).expect("put");
        }
        let batch = r.take_batch();
        r.commit(batch).await.expect("commit");
        r.delete("msg:2").expect("delete");
        r.put("msg:4".into(), vec![]).expect("put");
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

    #[tokio::test]
    async fn list_pages_through_a_large_room_with_writes_pending() {
        let dir = tempdir();
        let mut r = room(&dir);
        // More rows than several pages, committed in batches.
        for chunk in 0..5 {
            for i in 0..300 {
                let k = format!("k{:05}", chunk * 300 + i);
                r.put(k, vec![1]).expect("put");
            }
            commit(&mut r).await;
        }
        // Pending: a delete in the middle, an overwrite and two new keys,
        // one between committed keys and one past them.
        r.delete("k00700").expect("delete");
        r.put("k00010".into(), vec![2]).expect("put");
        r.put("k00700a".into(), vec![3]).expect("put");
        r.put("z".into(), vec![4]).expect("put");
        let all = r.list(&ListOptions::default()).expect("list");
        let mut want: Vec<String> = (0..1500).map(|i| format!("k{i:05}")).collect();
        want.retain(|k| k != "k00700");
        want.push("k00700a".into());
        want.push("z".into());
        want.sort();
        assert_eq!(keys(all.clone()), want);
        assert_eq!(all[10].1, vec![2]);
        let back = r
            .list(&ListOptions {
                reverse: true,
                limit: Some(600),
                ..Default::default()
            })
            .expect("list");
        let mut rev = want.clone();
        rev.reverse();
        rev.truncate(600);
        assert_eq!(keys(back), rev);
        let ranged = r
            .list(&ListOptions {
                start: Some("k00690".into()),
                end: Some("k00705".into()),
                ..Default::default()
            })
            .expect("list");
        assert_eq!(keys(ranged).len(), 15);
    }

    /// The fuzz target `storage_list`'s model check, on stable and in CI: a
    /// fixed pseudo-random run of puts, deletes, delete-alls, commits and
    /// lists against a `BTreeMap`, over enough keys that lists cross pages.
    #[tokio::test]
    async fn storage_matches_a_model_across_pages_and_commits() {
        let dir = tempdir();
        let mut r = room(&dir);
        let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let key = |i: u64| format!("k{:03}", i);
        let mut longest = 0;
        for step in 0..4000 {
            match next(1000) {
                0..=599 => {
                    let (k, v) = (key(next(700)), vec![next(256) as u8]);
                    r.put(k.clone(), v.clone()).expect("put");
                    model.insert(k, v);
                }
                600..=749 => {
                    let k = key(next(700));
                    let existed = r.delete(&k).expect("delete");
                    assert_eq!(
                        existed,
                        model.remove(&k).is_some(),
                        "step {step}: delete {k}"
                    );
                }
                // Rare: a room that is wiped rarely fills several pages.
                750 => {
                    r.delete_all();
                    model.clear();
                }
                751..=849 => commit(&mut r).await,
                _ => {
                    let o = ListOptions {
                        prefix: (next(3) == 0).then(|| format!("k{}", next(7))),
                        start: (next(3) == 0).then(|| key(next(700))),
                        end: (next(3) == 0).then(|| key(next(700))),
                        limit: (next(2) == 0).then(|| next(400) as u32),
                        reverse: next(2) == 0,
                    };
                    let got = r.list(&o).expect("list");
                    longest = longest.max(got.len());
                    let mut want: Vec<(String, Vec<u8>)> = model
                        .iter()
                        .filter(|(k, _)| o.prefix.as_deref().is_none_or(|p| k.starts_with(p)))
                        .filter(|(k, _)| o.start.as_deref().is_none_or(|s| k.as_str() >= s))
                        .filter(|(k, _)| o.end.as_deref().is_none_or(|e| k.as_str() < e))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if o.reverse {
                        want.reverse();
                    }
                    want.truncate(o.limit.map_or(usize::MAX, |l| l as usize));
                    assert_eq!(got, want, "step {step}: {o:?}");
                }
            }
        }
        assert!(
            longest > LIST_PAGE as usize,
            "lists crossed a page: {longest}"
        );
        commit(&mut r).await;
        let size: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert_eq!(r.stored().expect("size"), size as u64, "the kept size");
    }

    #[tokio::test]
    async fn a_list_larger_than_an_instance_could_hold_is_refused() {
        let dir = tempdir();
        let limits = Limits {
            instance_memory_bytes: 1 << 20,
            ..Limits::default()
        };
        let mut r = room_with(&dir, limits);
        for i in 0..3 {
            r.put(format!("big{i}"), vec![0; 512 << 10]).expect("put");
        }
        commit(&mut r).await;
        assert!(matches!(
            r.list(&ListOptions::default()),
            Err(StorageError::TooLarge(_))
        ));
        let one = ListOptions {
            limit: Some(1),
            ..Default::default()
        };
        assert_eq!(r.list(&one).expect("list").len(), 1);
    }

    #[tokio::test]
    async fn a_hook_writes_at_most_its_bound() {
        let dir = tempdir();
        let limits = Limits {
            hook_write_bytes: 3 << 20,
            ..Limits::default()
        };
        let mut r = room_with(&dir, limits);
        r.put("a".into(), vec![0; 2 << 20]).expect("put");
        // Overwriting a key replaces its bytes rather than adding them.
        r.put("a".into(), vec![0; 2 << 20]).expect("put");
        assert!(matches!(
            r.put("b".into(), vec![0; 2 << 20]),
            Err(StorageError::TooLarge(m)) if m.contains("3145728")
        ));
        r.put("b".into(), vec![0; 512 << 10]).expect("put");
        commit(&mut r).await;
        // The next hook starts from zero.
        r.put("c".into(), vec![0; 2 << 20]).expect("put");
    }

    #[tokio::test]
    async fn a_room_stores_at_most_its_quota_and_its_size_is_kept() {
        let dir = tempdir();
        let limits = Limits {
            storage_bytes_per_room: 1000,
            ..Limits::default()
        };
        let mut r = room_with(&dir, limits);
        r.put("a".into(), vec![0; 499]).expect("put"); // 500 bytes with its key
        r.put("b".into(), vec![0; 399]).expect("put"); // 400
        commit(&mut r).await;
        assert_eq!(r.stored().expect("size"), 900);
        let over = r.put("c".into(), vec![0; 100]);
        assert!(
            matches!(&over, Err(StorageError::TooLarge(m)) if m.contains("1001") && m.contains("1000")),
            "{over:?}"
        );
        // Replacing or deleting makes room; the exact count allows it.
        r.put("a".into(), vec![0; 99]).expect("put");
        r.put("c".into(), vec![0; 499]).expect("put");
        commit(&mut r).await;
        assert_eq!(r.stored().expect("size"), 100 + 400 + 500);
        r.delete("b").expect("delete");
        commit(&mut r).await;
        assert_eq!(r.stored().expect("size"), 600);
        // What the host lists, and what a reopened store knows.
        let sizes = r.storage.room_sizes().expect("sizes");
        assert_eq!(sizes[&("main".to_owned(), "r1".to_owned())], 600);
        r.delete_all();
        commit(&mut r).await;
        assert_eq!(r.stored().expect("size"), 0);
    }

    #[tokio::test]
    async fn a_batch_from_before_its_party_was_deleted_is_refused() {
        let dir = tempdir();
        let mut r = room(&dir);
        r.put("kept".into(), vec![1]).expect("put");
        commit(&mut r).await;
        // A hook is running when its party is deleted.
        r.put("late".into(), vec![1]).expect("put");
        r.storage.delete_party("main").expect("delete");
        let batch = r.take_batch();
        assert!(matches!(r.commit(batch).await, Err(StorageError::Fenced)));
        // A room of the party deployed again starts empty and can write.
        let mut fresh = RoomStorage::new(
            r.storage.clone(),
            None,
            "main".into(),
            "r1".into(),
            r.limits.clone(),
        );
        assert!(
            fresh
                .list(&ListOptions::default())
                .expect("list")
                .is_empty()
        );
        fresh.put("new".into(), vec![1]).expect("put");
        commit(&mut fresh).await;
        assert_eq!(
            keys(fresh.list(&ListOptions::default()).expect("list")),
            ["new"]
        );
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
