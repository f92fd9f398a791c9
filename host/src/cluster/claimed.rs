//! The cluster's backend for a room's storage: the room's claim. Its rows are
//! loaded from PostgreSQL when this node claims the room and kept up to date
//! by its own commits, which are fenced by the claim's epoch (only the
//! holder of the epoch can write, so the copy stays current while the claim
//! holds). The overlay, bounds and list merge are the store's
//! (`store::RoomStorage`), the same as on one node. The room's SQL data is
//! loaded by the claim too, and handed once to the store, which rebuilds
//! this node's copy of the room's file from it (`store/sql/`).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use super::{Claimed, Cluster, ClusterError, Writes};
use crate::route::RoomKey;
use crate::store::{Batch, Claiming, Committed, LIST_PAGE, SqlStart, Storage, StorageError};

impl From<ClusterError> for StorageError {
    fn from(e: ClusterError) -> Self {
        match e {
            ClusterError::Fenced => StorageError::Moved,
            ClusterError::Unavailable(line) => StorageError::Unavailable(line),
        }
    }
}

/// One room's storage in a cluster: the claim this node holds, if any.
pub struct ClaimedRoom {
    cluster: Arc<Cluster>,
    key: RoomKey,
    /// This node's store, where its copy of the room's SQL file lives.
    storage: Arc<Storage>,
    /// `None` until claimed (and again once released or lost).
    claim: Option<Claim>,
}

/// A room's claim: its epoch, and its data as committed.
struct Claim {
    epoch: i64,
    inc: i64,
    data: BTreeMap<String, Vec<u8>>,
    alarm: Option<u64>,
    bytes: u64,
    /// The room's SQL data as claimed, until the store takes it.
    sql: Option<SqlStart>,
}

impl ClaimedRoom {
    pub fn new(cluster: Arc<Cluster>, key: RoomKey, storage: Arc<Storage>) -> Self {
        ClaimedRoom {
            cluster,
            key,
            storage,
            claim: None,
        }
    }

    /// The claim's data; [`StorageError::Moved`] when the room is not held
    /// (an event always claims first, so this is a claim lost meanwhile).
    fn claimed(&self) -> Result<&Claim, StorageError> {
        self.claim.as_ref().ok_or(StorageError::Moved)
    }

    async fn claim_now(&mut self) -> Result<Claiming, StorageError> {
        let Some(Claimed {
            epoch,
            inc,
            data,
            alarm,
            sql,
        }) = self.cluster.claim(&self.key).await?
        else {
            return Err(StorageError::Moved);
        };
        let bytes = data.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        self.claim = Some(Claim {
            epoch,
            inc,
            data,
            alarm,
            bytes,
            sql: Some(sql),
        });
        Ok(Claiming::Claimed { alarm })
    }

    /// Commit under the room's epoch. Any failure forgets the claim: the
    /// outcome may be unknown, so the next event claims and loads afresh.
    async fn commit_now(&mut self, mut batch: Batch) -> Result<u64, StorageError> {
        let Some(claim) = &mut self.claim else {
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
        let mut sql = batch.sql.take();
        let mut sql = sql.as_deref_mut();
        let writes = Writes {
            delete_all: batch.delete_all,
            puts,
            deletes,
            alarm: batch.alarm,
            bytes,
            sql_entry: sql.as_mut().and_then(|s| s.entry.take()),
            sql_snapshot: sql.and_then(|s| s.snapshot.take()),
        };
        let fence = (claim.epoch, claim.inc);
        if let Err(e) = self.cluster.commit(&self.key, fence, writes).await {
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
        Ok(bytes)
    }
}

impl Committed for ClaimedRoom {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.claimed()?.data.get(key).cloned())
    }

    fn value_len(&self, key: &str) -> Result<Option<usize>, StorageError> {
        Ok(self.claimed()?.data.get(key).map(Vec::len))
    }

    fn stored_bytes(&self) -> Result<u64, StorageError> {
        Ok(self.claimed()?.bytes)
    }

    fn list_page(
        &self,
        lo: Option<&str>,
        hi: Option<&str>,
        cursor: Option<&str>,
        reverse: bool,
    ) -> Result<VecDeque<(String, Vec<u8>)>, StorageError> {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let c = self.claimed()?;
        let mut from = lo.map_or(Unbounded, Included);
        let mut to = hi.map_or(Unbounded, Excluded);
        if let Some(cur) = cursor {
            if reverse {
                to = Excluded(cur);
            } else {
                from = Excluded(cur);
            }
        }
        // The end is never included, so an empty range is one whose start
        // is not below its end (which `range` would panic on).
        if let (Included(a) | Excluded(a), Excluded(b)) = (from, to)
            && a >= b
        {
            return Ok(VecDeque::new());
        }
        let range = c.data.range::<str, _>((from, to));
        let entry = |(k, v): (&String, &Vec<u8>)| (k.clone(), v.clone());
        let page = LIST_PAGE as usize;
        Ok(if reverse {
            range.rev().take(page).map(entry).collect()
        } else {
            range.take(page).map(entry).collect()
        })
    }

    fn alarm(&self) -> Result<Option<u64>, StorageError> {
        Ok(self.claimed()?.alarm)
    }

    fn commit(
        &mut self,
        batch: Batch,
    ) -> Pin<Box<dyn Future<Output = Result<u64, StorageError>> + Send + '_>> {
        Box::pin(self.commit_now(batch))
    }

    fn held(&self) -> bool {
        self.claim.is_some()
    }

    fn claim(
        &mut self,
    ) -> Pin<Box<dyn Future<Output = Result<Claiming, StorageError>> + Send + '_>> {
        Box::pin(self.claim_now())
    }

    fn release(&mut self) {
        if self.claim.as_ref().is_some_and(|c| c.alarm.is_some()) {
            return;
        }
        let Some(claim) = self.claim.take() else {
            return;
        };
        let (cluster, key) = (self.cluster.clone(), self.key.clone());
        tokio::spawn(async move { cluster.release(&key, claim.epoch).await });
    }

    fn hand_off(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Some(claim) = self.claim.take() {
                self.cluster.release(&self.key, claim.epoch).await;
            }
        })
    }

    fn still_held(&self) -> bool {
        self.claim
            .as_ref()
            .is_some_and(|claim| self.cluster.holds(claim.inc))
    }

    fn drop_claim(&mut self) {
        if let Some(claim) = self.claim.take() {
            self.cluster.forget(&self.key, claim.epoch);
        }
    }

    fn sql_file(&self) -> Option<PathBuf> {
        Some(self.storage.sql_file(&self.key.0, &self.key.1))
    }

    fn sql_shared(&self) -> bool {
        true
    }

    fn take_sql_start(&mut self) -> Option<SqlStart> {
        self.claim.as_mut().and_then(|c| c.sql.take())
    }
}
