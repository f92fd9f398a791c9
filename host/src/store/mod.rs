//! The store layer. It may use only the leaves; every layer above uses it.
//!
//! Room storage: each room's key-value pairs, size and alarm, behind one
//! interface with two backends. [`RoomStorage`] is a room's view: the
//! pending writes of its hooks (an overlay), its bounds (per hook, per room,
//! per list) and a [`Committed`] backend for what is durable: SQLite on one
//! node (`sqlite.rs`), the room's claim on PostgreSQL in a cluster (the
//! cluster layer's `ClaimedRoom`). Deploy metadata is `deploys.rs`; the
//! compile cache is `compile_cache.rs`.
//!
//! How a hook's writes become durable:
//! - During a hook, writes go to the room's [`Batch`] (an overlay in memory);
//!   reads look at the overlay first, then at SQLite, so a room reads its own
//!   writes at once.
//! - When the hook returns, the room hands the batch to [`RoomStorage::commit`]
//!   and waits. One writer thread commits every batch that is waiting in one
//!   SQLite transaction (group commit), each batch in its own savepoint, so
//!   one batch is all-or-nothing while many rooms share one fsync.
//! - Only then does the room release the messages the hook sent (the output
//!   gate lives in `room/hooks.rs`, and depends only on `commit` having returned).
//! - If the hook traps, the batch is dropped: none of its writes happen.

pub mod compile_cache;
pub mod deploys;
mod session;
mod sql;
mod sqlite;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::config::Limits;

pub use sql::{Cursor, SqlValue};
pub use sqlite::Storage;

/// Why a storage call failed; the text is for the guest and the log.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The store failed (disk, database).
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A SQL statement failed or was refused; the text says why.
    #[error("{0}")]
    Invalid(String),
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

/// The writes of one hook call, not yet committed.
#[derive(Debug, Default)]
pub struct Batch {
    /// Set by delete-all: every key committed before it is gone.
    pub(crate) delete_all: bool,
    /// Key -> new value, or `None` for a delete.
    pub(crate) writes: BTreeMap<String, Option<Vec<u8>>>,
    /// Bytes of keys and values held in `writes` (the per-hook bound).
    bytes: usize,
    /// `Some(at)` sets the alarm, `Some(None)` deletes it.
    pub(crate) alarm: Option<Option<u64>>,
    /// What the batch does to the room's SQL database, if anything.
    /// Boxed, as the room's database is: every room keeps a batch, and most
    /// never use SQL.
    pub(crate) sql: Option<Box<SqlPart>>,
}

/// A batch's SQL part (see `sql/mod.rs`).
#[derive(Debug, Default)]
pub(crate) struct SqlPart {
    /// The log entry: its sequence number and what the hooks changed.
    pub(crate) entry: Option<(u64, Vec<u8>)>,
    /// Log entries up to this one are in the room's file for good.
    pub(crate) trim: Option<u64>,
    /// A cluster's snapshot of the room's file as of log entry `seq`: it
    /// replaces the log up to there (see `sql/mod.rs`).
    pub(crate) snapshot: Option<(u64, Vec<u8>)>,
    /// The hooks' SQL changes could not be captured: the commit fails.
    failed: Option<String>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        !self.delete_all
            && self.writes.is_empty()
            && self.alarm.is_none()
            && self
                .sql
                .as_ref()
                .is_none_or(|s| s.entry.is_none() && s.failed.is_none())
    }

    /// Mark the commit to fail: the hooks' SQL changes were lost.
    fn sql_failed(&mut self, e: StorageError) {
        self.sql.get_or_insert_with(Box::default).failed = Some(e.to_string());
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

/// Rows one step of a `list` reads, so a room of any size is listed in
/// bounded host memory.
pub const LIST_PAGE: i64 = 256;

/// Where a room's committed data lives: the storage seam. SQLite on one node
/// ([`SqliteRoom`]); in a cluster, the room's claim on PostgreSQL. A room
/// reads through it on demand and commits a [`Batch`] to it; the overlay,
/// the bounds and the merge of pending over committed are [`RoomStorage`]'s,
/// the same for every backend.
pub trait Committed: Send {
    /// A committed value.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// A committed value's length (what a write would replace).
    fn value_len(&self, key: &str) -> Result<Option<usize>, StorageError>;
    /// The room's stored bytes, keys and values.
    fn stored_bytes(&self) -> Result<u64, StorageError>;
    /// At most [`LIST_PAGE`] committed rows in `[lo, hi)` past `cursor`, in
    /// key order (or reversed).
    fn list_page(
        &self,
        lo: Option<&str>,
        hi: Option<&str>,
        cursor: Option<&str>,
        reverse: bool,
    ) -> Result<VecDeque<(String, Vec<u8>)>, StorageError>;
    /// The committed alarm.
    fn alarm(&self) -> Result<Option<u64>, StorageError>;
    /// Make a batch durable; the room's stored bytes after it. Boxed: one
    /// allocation a commit, beside a commit's own channel and fsync.
    fn commit(
        &mut self,
        batch: Batch,
    ) -> Pin<Box<dyn Future<Output = Result<u64, StorageError>> + Send + '_>>;

    // A backend that must hold a room before it may act for it (a cluster's
    // claim) overrides these; SQLite on one node always holds its rooms.

    /// Whether the room is held now (no claim to make).
    fn held(&self) -> bool {
        true
    }
    /// Take the room: see [`RoomStorage::claim`].
    fn claim(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Claiming, StorageError>> + Send + '_>> {
        Box::pin(std::future::ready(Ok(Claiming::Held)))
    }
    /// See [`RoomStorage::release`].
    fn release(&mut self) {}
    /// See [`RoomStorage::hand_off`].
    fn hand_off(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }
    /// See [`RoomStorage::still_held`].
    fn still_held(&self) -> bool {
        true
    }
    /// See [`RoomStorage::drop_claim`].
    fn drop_claim(&mut self) {}

    /// The room's SQL database file (on a cluster, this node's copy).
    fn sql_file(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// The room's SQL log entries after `seq`, in order (see `sql/mod.rs`).
    fn sql_log(&self, _after: u64) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        Ok(Vec::new())
    }
    /// The room's SQL log is shared by every node that may hold the room
    /// (a cluster): this node's file is only a copy, rebuilt from the
    /// claim's [`SqlStart`] and kept by snapshots rather than trims.
    fn sql_shared(&self) -> bool {
        false
    }
    /// What the last claim loaded for the room's SQL file, once: a copy
    /// that is rebuilt from it holds everything committed before the claim.
    fn take_sql_start(&mut self) -> Option<SqlStart> {
        None
    }
}

/// A room's SQL data as a cluster's claim loads it: the latest snapshot of
/// its file, if any, and the log entries after it, in order.
#[derive(Debug, Default)]
pub struct SqlStart {
    pub snapshot: Option<(u64, Vec<u8>)>,
    pub log: Vec<(u64, Vec<u8>)>,
}

/// One room's view of storage: its committed data plus the pending batch.
/// On one node the committed data is SQLite's; in a cluster it is the
/// room's rows as loaded when this node claimed it, kept up to date by its
/// own commits (only the holder of the epoch can write, so the copy stays
/// current while the claim holds).
pub struct RoomStorage {
    committed: Box<dyn Committed>,
    /// The party's limits: bytes per hook, per room, per list.
    limits: Arc<Limits>,
    pending: Batch,
    /// Where the running hook began, when `pending` also holds the writes
    /// of earlier hooks that will share its commit ([`RoomStorage::savepoint`]).
    /// Boxed: only a room in the middle of a group has one.
    mark: Option<Box<Mark>>,
    /// The room's stored bytes as of its last commit; read on first need.
    stored: Option<u64>,
    /// The room's SQL database, made on first use (boxed: a room that
    /// never uses SQL keeps one pointer for it).
    sql: Option<Box<sql::RoomSql>>,
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

/// What [`RoomStorage::claim`] found.
pub enum Claiming {
    /// The room was already this node's (or there is no cluster).
    Held,
    /// Claimed just now; its stored alarm, for the local schedule.
    Claimed { alarm: Option<u64> },
}

impl RoomStorage {
    pub fn new(committed: Box<dyn Committed>, limits: Arc<Limits>) -> Self {
        RoomStorage {
            committed,
            limits,
            pending: Batch::default(),
            mark: None,
            stored: None,
            sql: None,
        }
    }

    /// The pending writes, leaving none behind (for commit).
    pub fn take_batch(&mut self) -> Batch {
        self.mark = None;
        if let Some(sql) = &mut self.sql {
            match sql.take() {
                Ok(Some(entry)) => {
                    self.pending.sql.get_or_insert_with(Box::default).entry = Some(entry)
                }
                Ok(None) => {}
                Err(e) => self.pending.sql_failed(e),
            }
            // A log trim or snapshot rides on a commit the room makes anyway.
            if !self.pending.is_empty() {
                let part = (sql.take_trim(), sql.take_snapshot());
                if part != (None, None) {
                    let s = self.pending.sql.get_or_insert_with(Box::default);
                    (s.trim, s.snapshot) = part;
                }
            }
        }
        std::mem::take(&mut self.pending)
    }

    /// The hook that ran last is done, and its writes wait for a commit
    /// that the next hook's will share: a later [`RoomStorage::rollback`]
    /// takes back only what comes after this.
    pub fn savepoint(&mut self) {
        if let Some(sql) = &mut self.sql
            && let Err(e) = sql.end_hook()
        {
            self.pending.sql_failed(e);
        }
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
        if let Some(sql) = &mut self.sql {
            sql.rollback_hook();
        }
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
        if let Some(sql) = &mut self.sql {
            sql.rollback_all();
        }
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
        if self.committed.held() {
            return Ok(Claiming::Held);
        }
        // Another node may have written since this node's copy of the SQL
        // file was current: the next SQL call rebuilds it from the claim.
        if let Some(sql) = &mut self.sql {
            sql.close();
        }
        self.committed.claim().await
    }

    /// In a cluster, give the room up as the actor retires, unless an alarm
    /// is pending (the holder fires it). Runs in the background.
    pub fn release(&mut self) {
        self.committed.release();
    }

    /// In a cluster, give the room up now, alarm or not (a due alarm of a
    /// room nobody holds is fired by whichever node sweeps it first), and
    /// return once PostgreSQL has it.
    pub async fn hand_off(&mut self) {
        self.committed.hand_off().await;
    }

    /// Whether this node may still act for the room: always on one node; in
    /// a cluster, while its lease is valid and the claim is this
    /// incarnation's. Checked before a hook's output leaves.
    pub fn still_held(&self) -> bool {
        self.committed.still_held()
    }

    /// Forget the claim (the node self-fenced): the next event claims again.
    pub fn drop_claim(&mut self) {
        self.committed.drop_claim();
    }

    /// Commit a batch taken with [`RoomStorage::take_batch`]; returns once
    /// it is durable.
    pub async fn commit(&mut self, batch: Batch) -> Result<(), StorageError> {
        if let Some(e) = batch.sql.as_ref().and_then(|s| s.failed.clone()) {
            self.rollback_all();
            return Err(StorageError::Unavailable(e));
        }
        let result = self.committed.commit(batch).await;
        if let Some(sql) = &mut self.sql {
            sql.committed(result.is_ok());
            // In a cluster a failed commit's outcome is unknown (PostgreSQL
            // may have it): the copy is rebuilt after the next claim.
            if result.is_err() && self.committed.sql_shared() {
                sql.close();
            }
        }
        self.stored = Some(result?);
        Ok(())
    }

    /// Run a SQL query in the running hook (see `sql/mod.rs`).
    pub fn sql_exec(&mut self, query: &str, params: &[SqlValue]) -> Result<Cursor, StorageError> {
        let limits = self.sql_limits();
        let sql = self.sql.get_or_insert_with(Box::default);
        let result = sql.exec(&mut *self.committed, limits, query, params);
        if matches!(result, Err(StorageError::Moved)) {
            // The copy cannot be trusted (see `RoomSql::open`): the next
            // event claims the room again, and the copy is rebuilt.
            self.committed.drop_claim();
        }
        result
    }

    fn sql_limits(&self) -> sql::SqlLimits {
        sql::SqlLimits {
            budget: std::time::Duration::from_millis(self.limits.hook_cpu_ms),
            max_bytes: self.limits.storage_bytes_per_room,
            hook_bytes: self.limits.hook_write_bytes,
            value_bytes: self.limits.value_bytes,
        }
    }

    /// Bytes the room's SQL database takes.
    pub fn sql_size(&mut self) -> Result<u64, StorageError> {
        let limits = self.sql_limits();
        let sql = self.sql.get_or_insert_with(Box::default);
        sql.database_size(&mut *self.committed, limits)
    }

    /// Close the SQL database (the room hibernates).
    pub fn close_sql(&mut self) {
        if let Some(sql) = &mut self.sql {
            sql.close();
        }
    }

    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        if let Some(v) = self.pending.writes.get(key) {
            return Ok(v.clone());
        }
        if self.pending.delete_all {
            return Ok(None);
        }
        self.committed.get(key)
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
        let n = self.committed.stored_bytes()?;
        self.stored = Some(n);
        Ok(n)
    }

    /// Bytes one committed entry takes (0 when absent, or deleted by the batch).
    fn stored_entry(&self, key: &str) -> Result<usize, StorageError> {
        if self.pending.delete_all {
            return Ok(0);
        }
        Ok(self.committed.value_len(key)?.map_or(0, |l| key.len() + l))
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
                page = self.committed.list_page(
                    lo.as_deref(),
                    hi.as_deref(),
                    cursor.as_deref(),
                    o.reverse,
                )?;
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

    /// The alarm time, pending change first.
    pub fn alarm(&self) -> Result<Option<u64>, StorageError> {
        if let Some(a) = self.pending.alarm {
            return Ok(a);
        }
        self.committed.alarm()
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
    use std::path::{Path, PathBuf};

    fn room(dir: &Path) -> RoomStorage {
        room_with(dir, Limits::default())
    }

    fn room_with(dir: &Path, limits: Limits) -> RoomStorage {
        let storage = Storage::open(dir, Arc::default()).expect("storage opens");
        room_in(&storage, "r1", Arc::new(limits))
    }

    fn room_in(storage: &Arc<Storage>, room: &str, limits: Arc<Limits>) -> RoomStorage {
        RoomStorage::new(Box::new(storage.room("main".into(), room.into())), limits)
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
        let storage = Storage::open(&dir, Arc::default()).expect("storage opens");
        let mut r = room_in(&storage, "r1", Arc::default());
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
        let other = room_in(&storage, "r2", r.limits.clone());
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
        let storage = Storage::open(&dir, Arc::default()).expect("storage opens");
        let mut r = room_in(&storage, "r1", Arc::new(limits));
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
        let sizes = storage.room_sizes().expect("sizes");
        assert_eq!(sizes[&("main".to_owned(), "r1".to_owned())], 600);
        r.delete_all();
        commit(&mut r).await;
        assert_eq!(r.stored().expect("size"), 0);
    }

    #[tokio::test]
    async fn a_batch_from_before_its_party_was_deleted_is_refused() {
        let dir = tempdir();
        let storage = Storage::open(&dir, Arc::default()).expect("storage opens");
        let mut r = room_in(&storage, "r1", Arc::default());
        r.put("kept".into(), vec![1]).expect("put");
        commit(&mut r).await;
        // A hook is running when its party is deleted.
        r.put("late".into(), vec![1]).expect("put");
        storage.delete_party("main").expect("delete");
        let batch = r.take_batch();
        assert!(matches!(r.commit(batch).await, Err(StorageError::Fenced)));
        // A room of the party deployed again starts empty and can write.
        let mut fresh = room_in(&storage, "r1", r.limits.clone());
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
