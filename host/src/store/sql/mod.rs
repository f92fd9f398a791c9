//! A room's SQL database: a SQLite file of the room's own, opened on the
//! first call after a wake, its writes made inside a local transaction that
//! commits only after the host's store has their changes.
//!
//! Why a log: a hook's SQL and key-value writes must commit together, and
//! the key-value writes commit in the host's one file (group commit, one
//! fsync for many rooms). So the room's file is not the store of record
//! for a hook in flight: what the hook changed (SQLite session changesets,
//! plus the text of each schema change, in order) rides in the room's
//! [`Batch`](super::Batch) into the host's `sql_log`, in the same
//! transaction as its key-value writes. Once that is durable, the group's
//! savepoint is released into the file's open transaction, which commits
//! once for [`LOCAL_COMMIT_EVERY`] of them (no fsync: `synchronous =
//! NORMAL`). A crash before that leaves the file behind its log; opening it
//! replays the log past the file's own sequence number. A checkpoint (when
//! the room closes, on the blocking pool, and every [`CHECKPOINT_EVERY`]
//! local commits) makes the file durable, after which the log up to it is
//! trimmed.
//!
//! In a cluster the log (in PostgreSQL) is shared by every node that may
//! hold the room, and a node's file is only its copy: the first call after
//! a claim rebuilds the copy from what the claim loaded (a snapshot of the
//! file, then the log after it), and nothing is trimmed for the copy's
//! sake. Instead, once the log outgrows the file, a snapshot of the file
//! (`sqlite3_serialize`) rides on the next commit and replaces the log up
//! to it.
//!
//! Bounds: statements that reach outside the room are refused by an
//! authorizer (`guard.rs`); a statement has the hook's CPU budget (a
//! progress handler stops it); a call that would take the file past the
//! room's quota, or a hook's changes past `hook_write_bytes`, is taken back;
//! a result is bounded ([`RESULT_BYTES`]).

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::fallible_iterator::FallibleIterator;
use rusqlite::hooks::{AuthContext, TransactionOperation};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags, params};

mod guard;

use self::guard::Guard;
use super::session::{self, Capture};
use super::{Committed, SqlStart, StorageError};
use crate::lock::lock;

/// The most bytes of rows one `exec` returns: the host holds them before
/// the guest gets them. A larger result is refused; page it with LIMIT.
pub const RESULT_BYTES: usize = 32 << 20;

/// How many acknowledged commits the room's file holds in one local
/// transaction before it commits it: the log has them already, so the
/// file is written once for many of them.
const LOCAL_COMMIT_EVERY: u64 = 64;

/// How many local commits between checkpoints while the room is awake
/// (each one fsyncs the file on the room's thread, after which the host's
/// log up to it is trimmed). Rare: the room's close checkpoints too, off
/// the room's thread, and SQLite's own automatic checkpoint is off.
const CHECKPOINT_EVERY: u64 = 16;

/// Plain queries a room's statement cache remembers (see `Db::plain`).
const PLAIN_CACHE: usize = 64;

/// In a cluster, the log may grow to the file's size, and at least this,
/// before a snapshot replaces it: a claim loads at most about twice the
/// file, and a snapshot costs a byte of PostgreSQL writes per byte logged.
const SNAPSHOT_AFTER: u64 = 256 << 10;

/// The host's own table in a room's file: the log entry it holds.
const META: &str = "CREATE TABLE IF NOT EXISTS _dormouse_meta (
         id INTEGER PRIMARY KEY CHECK (id = 1), seq INTEGER NOT NULL);
     INSERT OR IGNORE INTO _dormouse_meta (id, seq) VALUES (1, 0);";

/// A SQL value, as a parameter binds it and a column holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// What one `exec` returns.
#[derive(Debug, Default)]
pub struct Cursor {
    pub column_names: Vec<String>,
    pub rows: Vec<Vec<SqlValue>>,
    pub rows_read: u64,
    pub rows_written: u64,
}

/// One step of a log entry: a changeset, or a schema change to run again.
const SEG_CHANGES: u8 = 0;
const SEG_SCHEMA: u8 = 1;

fn push_segment(out: &mut Vec<u8>, kind: u8, bytes: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// End the running capture, its changes (if any) the next segment.
fn end_segment(capture: &mut Option<Capture>, segments: &mut Vec<u8>) -> Result<(), StorageError> {
    if let Some(c) = capture.take() {
        let changes = c.changeset()?;
        if !changes.is_empty() {
            push_segment(segments, SEG_CHANGES, &changes);
        }
    }
    Ok(())
}

/// The segments of a log entry, in order.
fn segments(mut entry: &[u8]) -> Result<Vec<(u8, &[u8])>, StorageError> {
    let mut out = Vec::new();
    while !entry.is_empty() {
        if entry.len() < 5 {
            return Err(StorageError::Unavailable(
                "a SQL log entry is cut short".into(),
            ));
        }
        let len = u32::from_le_bytes([entry[1], entry[2], entry[3], entry[4]]) as usize;
        let Some(bytes) = entry.get(5..5 + len) else {
            return Err(StorageError::Unavailable(
                "a SQL log entry is cut short".into(),
            ));
        };
        out.push((entry[0], bytes));
        entry = &entry[5 + len..];
    }
    Ok(out)
}

/// A room's SQL database, closed until first used.
#[derive(Default)]
pub struct RoomSql {
    db: Option<Box<Db>>,
    /// The log entry of the hooks since the last commit.
    group: Vec<u8>,
    /// The sequence number (and size) of the entry of the commit in
    /// flight, if it has one.
    committing: Option<(u64, u64)>,
    /// Log entries up to this are in the room's file durably: the next
    /// commit deletes them.
    trim: Option<u64>,
    /// The group's SQL writes were lost with the file's transaction: the
    /// next commit fails.
    broken: Option<String>,
    /// The last close, running on the blocking pool (it fsyncs).
    closing: Option<Arc<Closing>>,
    /// In a cluster (see the module's notes): the copy's state.
    shared: Option<Box<Shared>>,
    /// On one node: the host's log holds no entry past this one (this
    /// room's actor is the log's only writer), so an open that finds the
    /// file there need not read the log.
    logged: Option<u64>,
}

/// A cluster node's copy of a room's file, between claims.
#[derive(Default)]
struct Shared {
    /// The log entry the copy holds once its last close is done; `None`
    /// until it is rebuilt after a claim.
    holds: Option<u64>,
    /// Bytes of log entries since the latest snapshot (about: the entries
    /// between a snapshot and the commit it rides on are not counted).
    log_bytes: u64,
    /// A snapshot of the copy for the next commit: `(seq, file)`.
    snapshot: Option<(u64, Vec<u8>)>,
    /// The commit in flight carries a snapshot.
    riding: bool,
}

/// A close in the background: `Some(durable)` once done, `durable` being
/// the log entry the file now holds for good, if the checkpoint succeeded.
#[derive(Default)]
struct Closing {
    done: Mutex<Option<Option<u64>>>,
    ready: std::sync::Condvar,
}

/// The open database.
struct Db {
    /// The running capture; declared before `conn` so it is dropped first.
    capture: Option<Capture>,
    conn: Connection,
    guard: Arc<Guard>,
    /// The log sequence number the file holds (committed locally).
    applied: u64,
    /// The last log sequence number the host's store acknowledged: the
    /// open local transaction holds those after `applied`.
    acked: u64,
    acked_since_commit: u64,
    commits_since_checkpoint: u64,
    /// The local transaction is open.
    open: bool,
    /// The group's savepoint is set (some hook since the last commit used
    /// SQL): what a failed commit takes back.
    group_open: bool,
    /// The running hook, once it used SQL.
    hook: Option<HookTx>,
    budget: Duration,
    /// The room's quota for the file.
    max_bytes: u64,
    /// See [`SqlLimits::hook_bytes`].
    hook_bytes: usize,
    /// The running `exec`'s own savepoint is still there (a statement of
    /// the room's may release or roll back past it).
    exec_alive: bool,
    /// SQLite rolled the whole transaction back (a full disk, a write
    /// stopped by the budget): nothing since the last commit can commit.
    lost: Option<String>,
    /// Queries known to be one statement that neither changes the schema
    /// nor touches a savepoint: they run from rusqlite's statement cache,
    /// without a parse. (The authorizer runs when a statement is prepared,
    /// and again whenever SQLite prepares it anew after a schema change.)
    plain: std::collections::HashSet<String>,
}

/// The running hook's part of the transaction.
#[derive(Default)]
struct HookTx {
    /// Its log segments so far.
    segments: Vec<u8>,
    /// The room's own open savepoints: name, and how long `segments` was
    /// when it began (a rollback to it drops what came after).
    saves: Vec<(String, usize)>,
}

/// Limits a room's database gets.
#[derive(Clone, Copy)]
pub struct SqlLimits {
    /// The statement time budget.
    pub budget: Duration,
    /// The most bytes the file may hold.
    pub max_bytes: u64,
    /// The most bytes of changes one hook may make (its log entry is held
    /// in host memory until it commits).
    pub hook_bytes: usize,
    /// The largest string or blob.
    pub value_bytes: usize,
}

impl RoomSql {
    /// Run one query in the running hook's transaction.
    pub fn exec(
        &mut self,
        log: &mut dyn Committed,
        limits: SqlLimits,
        query: &str,
        params: &[SqlValue],
    ) -> Result<Cursor, StorageError> {
        let db = self.open(log, limits)?;
        let deadline = db.guard.epoch.elapsed() + db.budget;
        db.guard
            .deadline_ms
            .store(deadline.as_millis() as u64, Relaxed);
        db.exec(query, params)
    }

    /// Bytes the room's file takes (0 before it exists).
    pub fn database_size(
        &mut self,
        log: &mut dyn Committed,
        limits: SqlLimits,
    ) -> Result<u64, StorageError> {
        if log.sql_shared() {
            // The copy may be stale until the first call rebuilds it.
            return self.open(log, limits)?.size();
        }
        match &self.db {
            Some(db) => db.size(),
            None => Ok(log
                .sql_file()
                .and_then(|f| std::fs::metadata(f).ok())
                .map_or(0, |m| m.len())),
        }
    }

    /// The running hook succeeded: its changes join the group's.
    pub fn end_hook(&mut self) -> Result<(), StorageError> {
        let Some(db) = &mut self.db else {
            return Ok(());
        };
        if let Some(segments) = db.end_hook()? {
            self.group.extend_from_slice(&segments);
        }
        Ok(())
    }

    /// The running hook failed: take back its SQL writes alone.
    pub fn rollback_hook(&mut self) {
        if let Some(db) = &mut self.db
            && let Err(e) = db.rollback_hook()
        {
            tracing::error!(error = %e, "cannot roll back a hook's SQL; the database is reopened from the log");
            // The group's other hooks lose their SQL writes with the
            // file's transaction: their commit must fail too.
            self.broken = Some(format!("the room's SQL transaction failed: {e}"));
            self.group.clear();
            self.db = None;
        }
    }

    /// Take back every write since the last commit.
    pub fn rollback_all(&mut self) {
        self.group.clear();
        self.committing = None;
        let Some(db) = &mut self.db else {
            return;
        };
        if db.lost.is_some() {
            // SQLite took back acknowledged writes too: the next open
            // replays them from the log.
            self.db = None;
            return;
        }
        if let Err(e) = db.rollback_group() {
            tracing::error!(error = %e, "cannot roll back SQL; the database is reopened from the log");
            self.db = None;
        }
    }

    /// The log entry for the next commit, `(seq, changes)`; ends the
    /// running hook first.
    pub fn take(&mut self) -> Result<Option<(u64, Vec<u8>)>, StorageError> {
        if let Some(why) = self.broken.take() {
            self.rollback_all();
            return Err(StorageError::Unavailable(why));
        }
        if let Err(e) = self.end_hook() {
            self.rollback_all();
            return Err(e);
        }
        let Some(db) = &mut self.db else {
            return Ok(None);
        };
        if let Some(why) = db.lost.clone() {
            self.rollback_all();
            return Err(StorageError::Unavailable(why));
        }
        if self.group.is_empty() {
            // Only reads (or writes taken back): nothing to log.
            db.rollback_group()?;
            return Ok(None);
        }
        let seq = db.acked + 1;
        self.committing = Some((seq, self.group.len() as u64));
        Ok(Some((seq, std::mem::take(&mut self.group))))
    }

    /// Log entries up to this one may go: the room's file has them durably.
    pub fn take_trim(&mut self) -> Option<u64> {
        self.closed(false);
        if self.shared.is_some() {
            // A cluster's log is the record: only a snapshot replaces it.
            self.trim = None;
        }
        self.trim.take()
    }

    /// A snapshot for the next commit to carry (in a cluster, once the log
    /// has outgrown the file).
    pub fn take_snapshot(&mut self) -> Option<(u64, Vec<u8>)> {
        let shared = self.shared.as_mut()?;
        let snapshot = shared.snapshot.take()?;
        shared.riding = true;
        Some(snapshot)
    }

    /// Collect the last close's result; with `wait`, wait for it first
    /// (the file is opened EXCLUSIVE: a new connection must come after).
    fn closed(&mut self, wait: bool) {
        let Some(closing) = &self.closing else {
            return;
        };
        let mut done = lock(&closing.done);
        while wait && done.is_none() {
            done = closing
                .ready
                .wait(done)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let Some(durable) = *done else {
            return;
        };
        drop(done);
        self.trim = self.trim.max(durable);
        self.closing = None;
    }

    /// The commit of the entry [`RoomSql::take`] gave returned: commit the
    /// local transaction, or take it back.
    pub fn committed(&mut self, ok: bool) {
        let committing = self.committing.take();
        if let Some(shared) = &mut self.shared
            && std::mem::take(&mut shared.riding)
            && ok
        {
            // The log before the snapshot is gone; what follows it is
            // about this commit's entry.
            shared.log_bytes = 0;
        }
        let Some((seq, len)) = committing else {
            return;
        };
        let Some(db) = &mut self.db else {
            return;
        };
        let result = if ok {
            self.logged = Some(seq);
            db.acknowledge(seq)
        } else {
            db.rollback_group().map(|()| None)
        };
        match result {
            Ok(Some(trim)) => self.trim = Some(trim),
            Ok(None) => {}
            // The log has the changes: the next open replays them.
            Err(e) => {
                tracing::error!(error = %e, "cannot commit SQL locally; reopening from the log");
                self.db = None;
            }
        }
        if let (true, Some(shared), Some(db)) = (ok, &mut self.shared, &mut self.db) {
            shared.holds = Some(seq);
            shared.log_bytes += len;
            if let Err(e) = shared.snapshot_if_due(db) {
                tracing::warn!(error = %e, "cannot snapshot the room's SQL file; the log keeps it");
            }
        }
    }

    /// Close the database (the room hibernates): a checkpoint makes the
    /// file durable, so the log up to it can go.
    pub fn close(&mut self) {
        self.group.clear();
        self.committing = None;
        if let Some(shared) = &mut self.shared {
            // Taken under this claim: the next claim may find a newer log.
            shared.snapshot = None;
        }
        let Some(mut db) = self.db.take() else {
            return;
        };
        let closing = Arc::new(Closing::default());
        self.closing = Some(closing.clone());
        // The commit, checkpoint and close fsync: not on the room's thread.
        let work = move || {
            let durable = if db.lost.is_some()
                || db.rollback_group().is_err()
                || db.commit_local().is_err()
            {
                // The log keeps what the file missed, for the next open.
                None
            } else {
                db.checkpoint().ok().map(|()| db.applied)
            };
            drop(db);
            *lock(&closing.done) = Some(durable);
            closing.ready.notify_all();
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(work)),
            Err(_) => work(),
        }
    }

    fn open(
        &mut self,
        log: &mut dyn Committed,
        limits: SqlLimits,
    ) -> Result<&mut Db, StorageError> {
        if self.db.is_none() {
            self.closed(true);
            let db = if log.sql_shared() {
                self.open_copy(log, limits)?
            } else {
                let (db, trim) = Db::open(&*log, limits, None, self.logged)?;
                self.trim = self.trim.max(trim);
                self.logged = Some(db.applied);
                db
            };
            self.db = Some(Box::new(db));
        }
        Ok(self.db.as_mut().expect("opened above"))
    }

    /// Open a cluster node's copy: rebuilt from the claim's start when
    /// there is one; otherwise it must hold what this claim committed, or
    /// it cannot be trusted (a close failed) and [`StorageError::Moved`]
    /// sends the room to a new claim.
    fn open_copy(
        &mut self,
        log: &mut dyn Committed,
        limits: SqlLimits,
    ) -> Result<Db, StorageError> {
        let shared = self.shared.get_or_insert_with(Box::default);
        match log.take_sql_start() {
            Some(start) => {
                shared.holds = None;
                shared.snapshot = None;
                shared.log_bytes = start.log.iter().map(|(_, e)| e.len() as u64).sum();
                let (mut db, _) = Db::open(&*log, limits, Some(start), None)?;
                shared.holds = Some(db.applied);
                if let Err(e) = shared.snapshot_if_due(&mut db) {
                    tracing::warn!(error = %e, "cannot snapshot the room's SQL file; the log keeps it");
                }
                Ok(db)
            }
            None => {
                let (db, _) = Db::open(&*log, limits, None, shared.holds)?;
                if shared.holds != Some(db.applied) {
                    shared.holds = None;
                    return Err(StorageError::Moved);
                }
                Ok(db)
            }
        }
    }
}

impl Shared {
    /// Once the log has outgrown the file, commit the copy locally and
    /// snapshot it, for the next commit to carry.
    fn snapshot_if_due(&mut self, db: &mut Db) -> Result<(), StorageError> {
        if self.snapshot.is_some()
            || self.riding
            || self.log_bytes <= SNAPSHOT_AFTER.max(db.size()?)
        {
            return Ok(());
        }
        db.commit_local()?;
        let seq = db.applied;
        let file = db.internal(|c| c.serialize(rusqlite::MAIN_DB).map(|d| d.to_vec()))?;
        self.snapshot = Some((seq, file));
        Ok(())
    }
}

impl Db {
    /// Open the room's file; with `start`, replace what it holds with the
    /// start's snapshot (or nothing) and log first (a cluster's claim).
    /// `logged`: the log holds nothing past this entry, if known.
    fn open(
        log: &dyn Committed,
        limits: SqlLimits,
        start: Option<SqlStart>,
        logged: Option<u64>,
    ) -> Result<(Db, Option<u64>), StorageError> {
        let Some(file) = log.sql_file() else {
            return Err(StorageError::Unavailable(
                "this host keeps no SQL storage".into(),
            ));
        };
        if let Some(dir) = file.parent().filter(|d| !d.is_dir()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StorageError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(&file, flags)?;
        session::persist_wal(&conn)?;
        use rusqlite::config::DbConfig;
        use rusqlite::limits::Limit;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_TRUSTED_SCHEMA, false)?;
        conn.set_limit(Limit::SQLITE_LIMIT_ATTACHED, 0)?;
        let value = i32::try_from(limits.value_bytes).unwrap_or(i32::MAX);
        conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, value)?;
        conn.set_limit(Limit::SQLITE_LIMIT_SQL_LENGTH, 1 << 20)?;
        conn.set_prepared_statement_cache_capacity(PLAIN_CACHE + 16);
        // A close of this room's file may still run in the background (an
        // earlier actor's): EXCLUSIVE locking makes this one wait for it.
        conn.busy_timeout(Duration::from_secs(5))?;
        // EXCLUSIVE: the room's actor is the file's only user, so the WAL
        // index lives in memory (no -shm file to create, map and delete on
        // every wake and hibernation). NORMAL in WAL mode: a commit does
        // not fsync (the host's log is durable first); a checkpoint does.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -1024;",
        )?;
        let mut conn = conn;
        let mut entries = Vec::new();
        if let Some(start) = start {
            restore(&mut conn, start.snapshot)?;
            entries = start.log;
        }
        let applied = match conn.query_row("SELECT seq FROM _dormouse_meta", [], |r| r.get(0)) {
            Ok(seq) => seq,
            // A new file (the journal mode is kept in it).
            Err(e) if e.to_string().contains("no such table") => {
                conn.execute_batch(&format!("PRAGMA journal_mode = WAL; {META}"))?;
                0i64
            }
            Err(e) => return Err(e.into()),
        };
        // A backstop: `exec` checks the quota itself after each write and
        // takes back only that call. Reaching max_page_count mid-statement
        // may make SQLite roll back the whole transaction. (4096: SQLite's
        // default page size, which the files keep.)
        let quota_pages = limits.max_bytes / 4096;
        let pages = quota_pages + quota_pages / 4 + 64;
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
        let mut db = Db {
            capture: None,
            conn,
            guard: Arc::new(Guard {
                internal: AtomicBool::new(true),
                deadline_ms: AtomicU64::new(u64::MAX),
                epoch: Instant::now(),
                refused: Mutex::new(None),
                schema: AtomicBool::new(false),
                savepoint: Mutex::new(None),
            }),
            applied: applied.max(0) as u64,
            acked: 0,
            acked_since_commit: 0,
            commits_since_checkpoint: 0,
            open: false,
            group_open: false,
            hook: None,
            budget: limits.budget,
            max_bytes: limits.max_bytes,
            hook_bytes: limits.hook_bytes,
            exec_alive: false,
            lost: None,
            plain: Default::default(),
        };
        let before = db.applied;
        if entries.is_empty() && logged != Some(db.applied) {
            entries = log.sql_log(db.applied)?;
        }
        db.replay(entries)?;
        // An empty WAL means the last close checkpointed (and fsynced) the
        // file; otherwise a crash left commits in the WAL: fold them in.
        let mut wal = file.into_os_string();
        wal.push("-wal");
        let wal_empty = std::fs::metadata(&wal).map_or(true, |m| m.len() == 0);
        if db.applied != before || !wal_empty {
            db.checkpoint()?;
        }
        db.acked = db.applied;
        let trim = (db.applied > 0).then_some(db.applied);
        let guard = db.guard.clone();
        db.conn
            .authorizer(Some(move |cx: AuthContext<'_>| guard.authorize(&cx)));
        let guard = db.guard.clone();
        db.conn
            .progress_handler(1000, Some(move || guard.past_deadline()));
        db.guard.internal.store(false, Relaxed);
        Ok((db, trim))
    }

    /// Apply the log entries the file has not got (a crash came between the
    /// host's commit and the file's, or this node's copy is behind).
    fn replay(&mut self, entries: Vec<(u64, Vec<u8>)>) -> Result<(), StorageError> {
        if let Some(&(first, _)) = entries.iter().find(|(seq, _)| *seq > self.applied)
            && first != self.applied + 1
        {
            return Err(StorageError::Unavailable(format!(
                "the room's SQL file holds log entry {} but the log resumes at {first}",
                self.applied
            )));
        }
        for (seq, entry) in entries {
            if seq <= self.applied {
                continue;
            }
            self.conn.execute_batch("BEGIN")?;
            let applied = self.apply_entry(&entry).and_then(|()| {
                self.conn.execute(
                    "UPDATE _dormouse_meta SET seq = ?1 WHERE id = 1",
                    params![seq as i64],
                )?;
                Ok(self.conn.execute_batch("COMMIT")?)
            });
            if let Err(e) = applied {
                let _ = self.conn.execute_batch("ROLLBACK");
                return Err(StorageError::Unavailable(format!(
                    "cannot replay SQL log entry {seq}: {e}"
                )));
            }
            self.applied = seq;
        }
        Ok(())
    }

    fn apply_entry(&self, entry: &[u8]) -> Result<(), StorageError> {
        for (kind, bytes) in segments(entry)? {
            match kind {
                SEG_SCHEMA => {
                    let sql = std::str::from_utf8(bytes).map_err(|_| {
                        StorageError::Unavailable("a logged statement is not UTF-8".into())
                    })?;
                    self.conn.execute_batch(sql)?;
                }
                SEG_CHANGES => session::apply(&self.conn, bytes)?,
                _ => {
                    return Err(StorageError::Unavailable(
                        "a SQL log entry has an unknown segment".into(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Run one of the host's own statements.
    fn internal<R>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R>,
    ) -> Result<R, StorageError> {
        Ok(self.guard.as_host(|| f(&self.conn))?)
    }

    /// Run one `exec`: all of it, or (when a statement fails, or the file
    /// would pass the quota) none of it.
    fn exec(&mut self, query: &str, params: &[SqlValue]) -> Result<Cursor, StorageError> {
        if let Some(why) = &self.lost {
            return Err(StorageError::Unavailable(why.clone()));
        }
        self.begin_hook()?;
        // A schema change or a savepoint starts a new segment; when the
        // query may hold one, start one here too, so that taking this call
        // back drops exactly the segments it made. (Without one, a capture
        // that began before the call stays right through a rollback: a
        // changeset is computed from the rows as they are when it is taken.)
        let words = Words::of(query);
        let boundary = words.boundary;
        if boundary {
            self.close_capture()?;
        }
        let hook = self.hook.as_ref().expect("begin_hook ran");
        let (segments, saves) = (hook.segments.len(), hook.saves.len());
        // A call that begins or ends the room's own savepoints cannot sit
        // inside one of the host's (releasing it would release theirs):
        // such a call is not taken back as a whole when it fails.
        self.exec_alive = !words.savepoints;
        if self.exec_alive {
            self.internal(|c| cached(c, "SAVEPOINT _dormouse_exec"))?;
        }
        let mut result = self.run(query, params, saves);
        if self.conn.is_autocommit() {
            let why = match &result {
                Err(e) => format!(
                    "SQLite rolled back the hook's transaction ({e}); its writes cannot commit"
                ),
                Ok(_) => "the hook's transaction ended; its writes cannot commit".into(),
            };
            self.capture = None;
            self.hook = None;
            self.open = false;
            self.group_open = false;
            self.lost = Some(why.clone());
            return Err(StorageError::Unavailable(why));
        }
        let grew = self
            .hook
            .as_ref()
            .is_some_and(|h| h.segments.len() > segments);
        let logged = self.hook.as_ref().map_or(0, |h| h.segments.len() as u64)
            + self.capture.as_ref().map_or(0, Capture::memory_used);
        if result.is_ok() && self.exec_alive && logged > self.hook_bytes as u64 {
            result = Err(StorageError::TooLarge(format!(
                "one hook may change at most {} bytes of SQL rows (hook_write_bytes)",
                self.hook_bytes
            )));
        }
        if let Ok(c) = &result
            && self.exec_alive
            && (c.rows_written > 0 || grew)
            && self.used()? > self.max_bytes
        {
            result = Err(StorageError::TooLarge(format!(
                "the room's SQL database would pass storage_bytes_per_room ({} bytes)",
                self.max_bytes
            )));
        }
        if !self.exec_alive {
            return result;
        }
        if result.is_ok() {
            self.internal(|c| cached(c, "RELEASE _dormouse_exec"))?;
            return result;
        }
        self.internal(|c| {
            cached(c, "ROLLBACK TO _dormouse_exec")?;
            cached(c, "RELEASE _dormouse_exec")
        })?;
        if let Some(hook) = &mut self.hook {
            hook.segments.truncate(segments);
            hook.saves.truncate(saves);
        }
        if boundary {
            self.capture = None;
        }
        result
    }

    /// End the running capture, its changes a segment of the hook's.
    fn close_capture(&mut self) -> Result<(), StorageError> {
        match &mut self.hook {
            Some(hook) => end_segment(&mut self.capture, &mut hook.segments),
            None => Ok(()),
        }
    }

    fn begin_hook(&mut self) -> Result<(), StorageError> {
        if self.hook.is_some() {
            return Ok(());
        }
        let (open, group_open) = (self.open, self.group_open);
        self.internal(|c| {
            if !open {
                cached(c, "BEGIN")?;
            }
            if !group_open {
                cached(c, "SAVEPOINT _dormouse_group")?;
            }
            cached(c, "SAVEPOINT _dormouse_hook")
        })?;
        self.open = true;
        self.group_open = true;
        self.hook = Some(HookTx::default());
        Ok(())
    }

    /// The running hook's log segments, once it is done (`None`: it did
    /// not use SQL).
    fn end_hook(&mut self) -> Result<Option<Vec<u8>>, StorageError> {
        if self.hook.is_none() {
            return Ok(None);
        }
        self.close_capture()?;
        let hook = self.hook.take().expect("checked above");
        self.internal(|c| cached(c, "RELEASE _dormouse_hook"))?;
        Ok(Some(hook.segments))
    }

    fn rollback_hook(&mut self) -> Result<(), StorageError> {
        self.capture = None;
        if self.hook.take().is_none() {
            return Ok(());
        }
        self.internal(|c| {
            cached(c, "ROLLBACK TO _dormouse_hook")?;
            cached(c, "RELEASE _dormouse_hook")
        })
    }

    /// Take back the group's writes (those not yet acknowledged).
    fn rollback_group(&mut self) -> Result<(), StorageError> {
        self.capture = None;
        self.hook = None;
        if !std::mem::take(&mut self.group_open) || self.conn.is_autocommit() {
            return Ok(());
        }
        self.internal(|c| {
            cached(c, "ROLLBACK TO _dormouse_group")?;
            cached(c, "RELEASE _dormouse_group")
        })
    }

    /// The host's store has the group as log entry `seq`: it joins the
    /// local transaction, which commits every [`LOCAL_COMMIT_EVERY`];
    /// `Some(trim)` when a checkpoint made the file durable up to it.
    fn acknowledge(&mut self, seq: u64) -> Result<Option<u64>, StorageError> {
        self.capture = None;
        self.hook = None;
        self.group_open = false;
        self.internal(|c| cached(c, "RELEASE _dormouse_group"))?;
        self.acked = seq;
        self.acked_since_commit += 1;
        if self.acked_since_commit < LOCAL_COMMIT_EVERY {
            return Ok(None);
        }
        self.commit_local()
    }

    /// Commit the local transaction (what was acknowledged);
    /// `Some(trim)` when a checkpoint then made the file durable.
    fn commit_local(&mut self) -> Result<Option<u64>, StorageError> {
        if !self.open {
            return Ok(None);
        }
        if self.acked == self.applied {
            // Only reads since the last commit: nothing to write.
            self.internal(|c| cached(c, "ROLLBACK"))?;
            self.open = false;
            return Ok(None);
        }
        let acked = self.acked;
        self.internal(|c| {
            c.prepare_cached("UPDATE _dormouse_meta SET seq = ?1 WHERE id = 1")?
                .execute(params![acked as i64])?;
            cached(c, "COMMIT")
        })?;
        self.open = false;
        self.applied = acked;
        self.acked_since_commit = 0;
        self.commits_since_checkpoint += 1;
        if self.commits_since_checkpoint < CHECKPOINT_EVERY {
            return Ok(None);
        }
        self.checkpoint()?;
        Ok(Some(self.applied))
    }

    /// Fold the WAL into the file and fsync it.
    fn checkpoint(&mut self) -> Result<(), StorageError> {
        let busy: i64 =
            self.internal(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0)))?;
        if busy != 0 {
            return Err(StorageError::Unavailable(
                "the checkpoint was blocked".into(),
            ));
        }
        self.commits_since_checkpoint = 0;
        Ok(())
    }

    /// Bytes of the file in use (free pages left by deletes are reused, so
    /// they do not count against the quota).
    fn used(&self) -> Result<u64, StorageError> {
        self.internal(|c| {
            c.prepare_cached(
                "SELECT (page_count - freelist_count) * page_size
                 FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            )?
            .query_row([], |r| r.get::<_, i64>(0))
        })
        .map(|n| n.max(0) as u64)
    }

    fn size(&self) -> Result<u64, StorageError> {
        self.internal(|c| {
            c.query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n.max(0) as u64)
    }

    /// Run the statements of `query` in turn, binding `params` to them in
    /// order; the rows of the last statement that returned any.
    /// `saves`: how many of the room's savepoints were open when the call
    /// began (one released or rolled back past ends the call's own).
    fn run(
        &mut self,
        query: &str,
        params: &[SqlValue],
        saves: usize,
    ) -> Result<Cursor, StorageError> {
        let Db {
            capture,
            conn,
            guard,
            hook,
            exec_alive,
            plain,
            ..
        } = self;
        let hook = hook.as_mut().expect("begin_hook ran");
        let mut out = Cursor::default();
        let mut bytes = 0usize;
        let conn: &Connection = conn;
        if plain.contains(query) {
            if capture.is_none() {
                *capture = Some(Capture::start(conn)?);
            }
            match conn.prepare_cached(query) {
                Ok(mut stmt) => {
                    if stmt.parameter_count() != params.len() {
                        return Err(StorageError::Invalid(format!(
                            "{} parameters given; the query has {}",
                            params.len(),
                            stmt.parameter_count()
                        )));
                    }
                    bind(&mut stmt, params, guard)?;
                    let writes = !stmt.readonly();
                    step(&mut stmt, conn, guard, writes, &mut out, &mut bytes)?;
                    return Ok(out);
                }
                // Not one statement after all (rusqlite's own view): the
                // slow way, from now on.
                Err(_) => {
                    plain.remove(query);
                }
            }
        }
        let mut next_param = 0usize;
        // Whether the query is one statement that neither changes the
        // schema nor touches a savepoint (`None`: none seen yet).
        let mut only: Option<bool> = None;
        let mut batch = rusqlite::Batch::new(conn, query);
        loop {
            guard.schema.store(false, Relaxed);
            *lock(&guard.savepoint) = None;
            *lock(&guard.refused) = None;
            // The capture runs before the statement is prepared: SQLite
            // compiles a DELETE without WHERE to a truncate that no
            // capture sees, unless one is running at compile time.
            if capture.is_none() {
                *capture = Some(Capture::start(conn)?);
            }
            let mut stmt = match batch.next() {
                Ok(Some(stmt)) => stmt,
                Ok(None) => break,
                Err(e) => return Err(sql_error(e, guard)),
            };
            let n = stmt.parameter_count();
            let Some(bound) = params.get(next_param..next_param + n) else {
                return Err(StorageError::Invalid(format!(
                    "the query has more parameters than the {} given",
                    params.len()
                )));
            };
            next_param += n;
            bind(&mut stmt, bound, guard)?;
            let schema = guard.schema.load(Relaxed);
            let savepoint = lock(&guard.savepoint).take();
            let simple = !schema && savepoint.is_none();
            let writes = !stmt.readonly() && simple;
            if schema || matches!(savepoint, Some((TransactionOperation::Begin, _))) {
                // A segment ends here: a schema change is logged as text
                // between changesets, and a savepoint's rollback drops the
                // segments that began after it.
                end_segment(capture, &mut hook.segments)?;
            }
            if let Some((TransactionOperation::Rollback, _)) = &savepoint {
                // What came after the savepoint goes; so does its capture.
                *capture = None;
            }
            let version = if schema {
                schema_version(conn, guard)?
            } else {
                0
            };
            step(&mut stmt, conn, guard, writes, &mut out, &mut bytes)?;
            // `CREATE TABLE IF NOT EXISTS` on every wake changes nothing,
            // and logs nothing.
            if schema && schema_version(conn, guard)? != version {
                let text = stmt.expanded_sql().unwrap_or_default();
                push_segment(&mut hook.segments, SEG_SCHEMA, text.as_bytes());
            }
            match savepoint {
                Some((TransactionOperation::Begin, name)) => {
                    hook.saves.push((name, hook.segments.len()));
                }
                Some((TransactionOperation::Release, name)) => {
                    if let Some(i) = find_save(&hook.saves, &name) {
                        hook.saves.truncate(i);
                        *exec_alive &= i >= saves;
                    }
                }
                Some((TransactionOperation::Rollback, name)) => {
                    if let Some(i) = find_save(&hook.saves, &name) {
                        hook.segments.truncate(hook.saves[i].1);
                        hook.saves.truncate(i + 1);
                        *exec_alive &= i >= saves;
                    }
                }
                _ => {}
            }
            only = Some(only.is_none() && simple);
        }
        if only == Some(true) {
            // One plain statement: cached from now on (see `plain`).
            if plain.len() >= PLAIN_CACHE {
                plain.clear();
            }
            plain.insert(query.to_owned());
        }
        if next_param != params.len() {
            return Err(StorageError::Invalid(format!(
                "{} parameters given; the query has {next_param}",
                params.len()
            )));
        }
        Ok(out)
    }
}

/// What a query's words say it may do, read once per `exec`: a keyword
/// test, on the safe side (a word in a string literal counts too; a false
/// alarm costs one changeset, nothing more).
struct Words {
    /// It may change the schema or touch a savepoint: it starts a segment.
    boundary: bool,
    /// It may begin, release or roll back a savepoint.
    savepoints: bool,
}

impl Words {
    fn of(query: &str) -> Words {
        let q = query.to_ascii_uppercase();
        let any = |words: &[&str]| words.iter().any(|w| q.contains(w));
        let savepoints = any(&["SAVEPOINT", "RELEASE", "ROLLBACK"]);
        Words {
            boundary: savepoints || any(&["CREATE", "DROP", "ALTER", "REINDEX", "ANALYZE"]),
            savepoints,
        }
    }
}

/// Bind a statement's parameters, in order.
fn bind(
    stmt: &mut rusqlite::Statement<'_>,
    values: &[SqlValue],
    guard: &Guard,
) -> Result<(), StorageError> {
    for (i, v) in values.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, ToSqlOutput::Borrowed(to_sql(v)))
            .map_err(|e| sql_error(e, guard))?;
    }
    Ok(())
}

/// Run one of the host's statements from the statement cache.
fn cached(c: &Connection, sql: &str) -> rusqlite::Result<()> {
    c.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Step a bound statement to its end: its rows into `out` (when it returns
/// any), what it read and wrote.
fn step(
    stmt: &mut rusqlite::Statement<'_>,
    conn: &Connection,
    guard: &Guard,
    writes: bool,
    out: &mut Cursor,
    bytes: &mut usize,
) -> Result<(), StorageError> {
    let columns = stmt.column_count();
    let names: Vec<String> = stmt.column_names().iter().map(|s| s.to_string()).collect();
    let mut rows = Vec::new();
    {
        let mut raw = stmt.raw_query();
        loop {
            let row = match raw.next() {
                Ok(Some(row)) => row,
                Ok(None) => break,
                Err(e) => return Err(sql_error(e, guard)),
            };
            let mut values = Vec::with_capacity(columns);
            for i in 0..columns {
                let v = from_sql(row.get_ref(i).map_err(|e| sql_error(e, guard))?);
                *bytes += value_bytes(&v);
                values.push(v);
            }
            if *bytes > RESULT_BYTES {
                return Err(StorageError::TooLarge(format!(
                    "a query's result may hold at most {RESULT_BYTES} bytes; page it with LIMIT"
                )));
            }
            rows.push(values);
        }
    }
    let scanned = stmt
        .get_status(rusqlite::StatementStatus::FullscanStep)
        .max(0) as u64;
    out.rows_read += scanned.max(rows.len() as u64);
    if writes {
        out.rows_written += conn.changes();
    }
    if columns > 0 {
        out.column_names = names;
        out.rows = rows;
    }
    Ok(())
}

/// SQLite's count of schema changes.
fn schema_version(conn: &Connection, guard: &Guard) -> Result<i64, StorageError> {
    let v = guard.as_host(|| {
        conn.prepare_cached("PRAGMA schema_version")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
    });
    Ok(v?)
}

/// Replace what the room's file holds with a snapshot of it (or with an
/// empty database), through SQLite's backup (which keeps the file's WAL
/// mode and its exclusive lock: the file is never swapped underneath).
fn restore(conn: &mut Connection, snapshot: Option<(u64, Vec<u8>)>) -> Result<(), StorageError> {
    let mut source = Connection::open_in_memory()?;
    match snapshot {
        Some((_, mut file)) => {
            // A snapshot of a file in WAL mode says so in its header; an
            // in-memory database cannot be in WAL mode, so it is read as a
            // file in rollback mode (bytes 18 and 19 are 1 for that). The
            // backup sets the copy's own mode back.
            if file.len() >= 100 {
                file[18] = 1;
                file[19] = 1;
            }
            let len = file.len();
            source.deserialize_read_exact(rusqlite::MAIN_DB, &file[..], len, true)?;
        }
        None => source.execute_batch(META)?,
    }
    {
        let backup = rusqlite::backup::Backup::new(&source, conn)?;
        backup.run_to_completion(1024, Duration::ZERO, None)?;
    }
    conn.execute_batch("PRAGMA journal_mode = WAL")?;
    Ok(())
}

/// The innermost savepoint of this name (names are case-insensitive).
fn find_save(saves: &[(String, usize)], name: &str) -> Option<usize> {
    saves
        .iter()
        .rposition(|(n, _)| n.eq_ignore_ascii_case(name))
}

/// A statement's error, for the guest: the authorizer's reason when it
/// refused, the budget when the progress handler stopped it, the quota when
/// the file is full, else SQLite's own message.
fn sql_error(e: rusqlite::Error, guard: &Guard) -> StorageError {
    if let Some(why) = lock(&guard.refused).take() {
        return StorageError::Invalid(why);
    }
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::OperationInterrupted) => StorageError::Unavailable(
            "the statement ran past its time budget (hook_cpu_ms) and was stopped".into(),
        ),
        Some(rusqlite::ErrorCode::DiskFull) => StorageError::TooLarge(
            "the room's SQL database would pass storage_bytes_per_room".into(),
        ),
        _ => StorageError::Invalid(e.to_string()),
    }
}

fn to_sql(v: &SqlValue) -> ValueRef<'_> {
    match v {
        SqlValue::Null => ValueRef::Null,
        SqlValue::Integer(i) => ValueRef::Integer(*i),
        SqlValue::Real(f) => ValueRef::Real(*f),
        SqlValue::Text(s) => ValueRef::Text(s.as_bytes()),
        SqlValue::Blob(b) => ValueRef::Blob(b),
    }
}

fn from_sql(v: ValueRef<'_>) -> SqlValue {
    match v {
        ValueRef::Null => SqlValue::Null,
        ValueRef::Integer(i) => SqlValue::Integer(i),
        ValueRef::Real(f) => SqlValue::Real(f),
        ValueRef::Text(t) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => SqlValue::Blob(b.to_vec()),
    }
}

fn value_bytes(v: &SqlValue) -> usize {
    match v {
        SqlValue::Text(s) => s.len() + 16,
        SqlValue::Blob(b) => b.len() + 16,
        _ => 16,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{RoomSql, SqlLimits, SqlValue};
    use crate::config::Limits;
    use crate::store::{RoomStorage, Storage};

    fn room(storage: &Arc<Storage>) -> RoomStorage {
        let committed = Box::new(storage.room("main".into(), "r".into()));
        RoomStorage::new(committed, Arc::new(Limits::default()))
    }

    fn texts(r: &mut RoomStorage, query: &str) -> Vec<String> {
        let c = r.sql_exec(query, &[]).expect("query runs");
        c.rows
            .into_iter()
            .map(|row| match &row[0] {
                SqlValue::Text(t) => t.clone(),
                other => format!("{other:?}"),
            })
            .collect()
    }

    async fn commit(r: &mut RoomStorage) {
        let batch = r.take_batch();
        r.commit(batch).await.expect("commit");
    }

    fn storage() -> Arc<Storage> {
        let dir = std::env::temp_dir().join(format!("dormouse-sql-{}", uuid::Uuid::new_v4()));
        Storage::open(&dir, Arc::default()).expect("storage opens")
    }

    /// A crash after the host's commit and before the file's: the next
    /// open replays the log, schema change and rows alike.
    #[tokio::test]
    async fn what_the_host_committed_is_replayed_into_a_file_that_missed_it() {
        let storage = storage();
        let mut r = room(&storage);
        r.sql_exec("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)", &[])
            .expect("create");
        r.sql_exec(
            "INSERT INTO t (v) VALUES (?), (?)",
            &[SqlValue::Text("a".into()), SqlValue::Text("b".into())],
        )
        .expect("insert");
        let batch = r.take_batch();
        assert!(
            batch.sql.as_ref().is_some_and(|s| s.entry.is_some()),
            "the batch carries the log entry"
        );
        // The host's store commits; the file's transaction never does.
        r.committed.commit(batch).await.expect("host commit");
        drop(r);

        let mut r = room(&storage);
        assert_eq!(texts(&mut r, "SELECT v FROM t ORDER BY id"), ["a", "b"]);
        r.sql_exec("DELETE FROM t", &[]).expect("delete");
        commit(&mut r).await;
        r.close_sql();
        let mut r = room(&storage);
        assert!(
            texts(&mut r, "SELECT v FROM t").is_empty(),
            "a DELETE without WHERE is logged too"
        );
    }

    /// The hooks of a group share a commit; one that fails takes back its
    /// own SQL writes and schema changes alone.
    #[tokio::test]
    async fn a_failed_hook_in_a_group_takes_back_only_its_own_sql() {
        let storage = storage();
        let mut r = room(&storage);
        r.sql_exec("CREATE TABLE t (v TEXT)", &[]).expect("create");
        r.sql_exec("INSERT INTO t VALUES ('kept')", &[])
            .expect("insert");
        r.savepoint();
        r.sql_exec("INSERT INTO t VALUES ('dropped'); CREATE TABLE u (x)", &[])
            .expect("second hook");
        r.rollback();
        commit(&mut r).await;
        drop(r);
        let mut r = room(&storage);
        assert_eq!(texts(&mut r, "SELECT v FROM t"), ["kept"]);
        assert!(
            r.sql_exec("SELECT * FROM u", &[]).is_err(),
            "the failed hook's table is gone"
        );
    }

    /// A failed call takes back all of its statements; the hook goes on.
    #[tokio::test]
    async fn a_failed_exec_writes_nothing() {
        let storage = storage();
        let mut r = room(&storage);
        r.sql_exec("CREATE TABLE t (id INTEGER PRIMARY KEY)", &[])
            .expect("create");
        let e = r
            .sql_exec("INSERT INTO t VALUES (1); INSERT INTO t VALUES (1)", &[])
            .expect_err("a duplicate");
        assert!(e.to_string().contains("UNIQUE"), "{e}");
        r.sql_exec("INSERT INTO t VALUES (2)", &[]).expect("insert");
        commit(&mut r).await;
        let c = r.sql_exec("SELECT id FROM t", &[]).expect("select");
        assert_eq!(c.rows, vec![vec![SqlValue::Integer(2)]]);
    }

    /// Deleting a party deletes its rooms' databases and their log.
    #[tokio::test]
    async fn deleting_the_party_deletes_its_databases() {
        let storage = storage();
        let mut r = room(&storage);
        r.sql_exec("CREATE TABLE t (v TEXT); INSERT INTO t VALUES ('x')", &[])
            .expect("write");
        commit(&mut r).await;
        let file = r.committed.sql_file().expect("a file");
        r.close_sql();
        drop(r);
        assert!(file.exists());
        storage.delete_party("main").expect("delete");
        assert!(!file.exists(), "the database is gone");
        let mut r = room(&storage);
        assert!(
            r.sql_exec("SELECT * FROM t", &[]).is_err(),
            "no table t any more"
        );
    }

    /// `examples/todos-sql`'s schema, as its on-start runs it.
    const TODOS: &str = "
        CREATE TABLE IF NOT EXISTS todos (id INTEGER PRIMARY KEY, text TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done')));
        CREATE INDEX IF NOT EXISTS todos_by_status ON todos (status, id);";

    /// What SQL adds to a wake, phase by phase, on a 10 MB file: opening
    /// it, on-start's schema check, a read by primary key, and starting the
    /// close that hibernation runs (the rest runs off the room's thread).
    /// A measurement, not a test (BENCHMARKS.md, "SQL storage beside
    /// key-value storage"): `cargo test --release -p dormouse-host --lib
    /// sql_wake_phases -- --ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore = "a measurement: run it with --release --ignored --nocapture"]
    async fn sql_wake_phases() {
        let storage = storage();
        let mut r = room(&storage);
        r.sql_exec(TODOS, &[]).expect("schema");
        r.sql_exec(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 110000)
             INSERT INTO todos (text) SELECT 'todo number ' || i || ' to do' FROM n",
            &[],
        )
        .expect("rows");
        commit(&mut r).await;
        r.close_sql();
        drop(r);
        let mut file = storage.room("main".into(), "r".into());
        let limits = SqlLimits {
            budget: Duration::from_secs(5),
            max_bytes: 1 << 30,
            hook_bytes: 1 << 20,
            value_bytes: 1 << 20,
        };
        let mut sql = RoomSql::default();
        let mut phases: [Vec<Duration>; 4] = Default::default();
        for i in 0..2000i64 {
            // The last hibernation's close, done (a wake comes later).
            sql.closed(true);
            let t = Instant::now();
            sql.exec(&mut file, limits, "SELECT 1", &[]).expect("open");
            let opened = t.elapsed();
            sql.exec(&mut file, limits, TODOS, &[]).expect("schema");
            let checked = t.elapsed();
            let id = SqlValue::Integer(1 + (i * 7919) % 110_000);
            let q = "SELECT id, text, status FROM todos WHERE id = ?";
            sql.exec(&mut file, limits, q, &[id]).expect("read");
            let read = t.elapsed();
            assert!(sql.take().expect("take").is_none(), "reads log nothing");
            sql.close();
            let closed = t.elapsed();
            for (p, d) in
                phases
                    .iter_mut()
                    .zip([opened, checked - opened, read - checked, closed - read])
            {
                p.push(d);
            }
        }
        let names = [
            "open (and SELECT 1)",
            "schema check",
            "read by id",
            "close (its start)",
        ];
        for (name, mut p) in names.into_iter().zip(phases) {
            p.sort();
            eprintln!(
                "{name}: p50 {:?}, p99 {:?}",
                p[p.len() / 2],
                p[p.len() * 99 / 100]
            );
        }
    }
}
