//! The Yjs document in the room's storage: one small put per update, and a
//! compaction that folds them into a snapshot in one atomic hook.
//!
//! Keys, all under `y:` (a room may keep its own keys beside them):
//! - `y:s:NNNN`: the snapshot (a v1 update of the whole document), cut into
//!   chunks so that a large document stays under the value limit;
//! - `y:sv`: the snapshot's state vector, and `y:ds` its delete set, so a
//!   client that already holds the snapshot is answered without decoding it;
//! - `y:u:SSSSSSSSSSSSSSSS:NNNN`: the updates since the snapshot, in arrival
//!   order (the sequence restarts at 0 after each compaction).
//!
//! Updates are validated (decoded) when they arrive but not integrated: a
//! room that only relays edits never builds the document in memory. It is
//! built only to compact, which is when `on_change` sees it.

use yrs::encoding::write::Write;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::{Encode, Encoder, EncoderV1};
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::storage::{self, ListOptions};
use crate::{Error, Level, context};

/// Values are cut to this size: under the host's default value limit (2 MiB).
const CHUNK: usize = 1 << 20;

/// Why an update was not taken.
#[derive(Debug)]
pub enum Refused {
    /// Not a Yjs v1 update.
    Malformed(String),
    /// Storage refused it (over a limit, or unavailable).
    Storage(Error),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Malformed(e) => write!(f, "malformed Yjs update: {e}"),
            Refused::Storage(e) => write!(f, "storage refused the update: {e:?}"),
        }
    }
}

/// The document of this room, read from storage lazily and cached while the
/// room is awake.
#[derive(Default)]
pub struct Document {
    /// The next update's sequence number, once known.
    next_seq: Option<u64>,
    /// Snapshot and updates, once read.
    loaded: Option<Loaded>,
}

struct Loaded {
    /// `None` until read: most hooks never need it.
    snapshot: Option<Vec<u8>>,
    /// The snapshot's state vector and delete set (v1), if compacted once.
    sv: Option<Vec<u8>>,
    ds: Option<Vec<u8>>,
    updates: Vec<Vec<u8>>,
}

/// What answers a client's sync step 1: a sync step 2, then updates.
pub(crate) struct Answer {
    pub step2: Vec<u8>,
    pub updates: Vec<Vec<u8>>,
}

impl Document {
    /// Validate `update`, append it under its own key, and ask for a
    /// compaction when enough has gathered. Returns false for an empty
    /// update (nothing stored).
    pub fn append(&mut self, update: &[u8], policy: &super::Compaction) -> Result<bool, Refused> {
        let decoded = Update::decode_v1(update).map_err(|e| Refused::Malformed(e.to_string()))?;
        if decoded.is_empty() {
            return Ok(false);
        }
        let seq = self.next_seq()?;
        for (part, chunk) in update.chunks(CHUNK).enumerate() {
            storage::put(&format!("y:u:{seq:016x}:{part:04x}"), chunk).map_err(Refused::Storage)?;
        }
        self.next_seq = Some(seq + 1);
        if let Some(loaded) = &mut self.loaded {
            loaded.updates.push(update.to_vec());
        }
        let now = now_ms();
        let due = if seq + 1 >= policy.updates || update.len() >= policy.bytes {
            Some(now)
        } else if seq == 0 {
            Some(now + policy.after_ms)
        } else {
            None
        };
        if let Some(at) = due {
            let current = crate::alarm::get().map_err(Refused::Storage)?;
            if current.is_none_or(|c| c > at) {
                crate::alarm::set(at).map_err(Refused::Storage)?;
            }
        }
        Ok(true)
    }

    fn next_seq(&mut self) -> Result<u64, Refused> {
        if let Some(seq) = self.next_seq {
            return Ok(seq);
        }
        let last = storage::list(&ListOptions {
            limit: Some(1),
            reverse: true,
            ..ListOptions::prefix("y:u:")
        })
        .map_err(Refused::Storage)?;
        let seq = last
            .first()
            .and_then(|(k, _)| u64::from_str_radix(k.get(4..20)?, 16).ok())
            .map_or(0, |s| s + 1);
        self.next_seq = Some(seq);
        Ok(seq)
    }

    /// The small parts: state vector, delete set and the updates since.
    fn load(&mut self) -> Result<&mut Loaded, Error> {
        if self.loaded.is_none() {
            let mut loaded = Loaded {
                snapshot: None,
                sv: None,
                ds: None,
                updates: Vec::new(),
            };
            for (key, value) in storage::get_many(&["y:ds".into(), "y:sv".into()])? {
                match key.as_str() {
                    "y:sv" => loaded.sv = Some(value),
                    _ => loaded.ds = Some(value),
                }
            }
            let mut last_seq: Option<String> = None;
            for (key, value) in storage::list(&ListOptions::prefix("y:u:"))? {
                let seq = key.get(4..20).map(str::to_owned);
                match loaded.updates.last_mut() {
                    Some(last) if seq == last_seq => last.extend_from_slice(&value),
                    _ => loaded.updates.push(value),
                }
                last_seq = seq;
            }
            self.next_seq = Some(loaded.updates.len() as u64);
            self.loaded = Some(loaded);
        }
        Ok(self.loaded.as_mut().expect("loaded above"))
    }

    /// The small parts and the snapshot (read only when it must be).
    fn load_all(&mut self) -> Result<&mut Loaded, Error> {
        let loaded = self.load()?;
        if loaded.snapshot.is_none() {
            let mut snapshot = Vec::new();
            for (_, chunk) in storage::list(&ListOptions::prefix("y:s:"))? {
                snapshot.extend_from_slice(&chunk);
            }
            loaded.snapshot = Some(snapshot);
        }
        Ok(loaded)
    }

    /// The state vector this room tells a client in its own sync step 1. It
    /// is the snapshot's: the updates since are not decoded for it, so a
    /// client may send back what the room has (it is then stored again and
    /// folded away by the next compaction), but never less than it needs.
    pub(crate) fn state_vector(&mut self) -> Result<Vec<u8>, Error> {
        let loaded = self.load()?;
        if let Some(sv) = &loaded.sv {
            return Ok(sv.clone());
        }
        // Never compacted: the document is the updates alone.
        let all = self.load_all()?.full()?;
        Ok(yrs::encode_state_vector_from_update_v1(&all)
            .unwrap_or_else(|_| StateVector::default().encode_v1()))
    }

    /// The answer to a client whose state vector is `sv` (v1).
    pub(crate) fn answer(&mut self, sv: &StateVector) -> Result<Answer, Error> {
        let encoded_sv = sv.encode_v1();
        let loaded = self.load()?;
        let holds_snapshot = loaded
            .sv
            .as_deref()
            .and_then(|s| StateVector::decode_v1(s).ok());
        if let (Some(snap_sv), Some(ds)) = (holds_snapshot, &loaded.ds)
            && !sv.is_empty()
            && snap_sv
                .iter()
                .all(|(client, clock)| sv.get(client) >= *clock)
        {
            // A returning client has every item of the snapshot: send its
            // deletions and the updates since, without reading the snapshot.
            let mut parts = vec![ds.clone()];
            parts.extend(loaded.updates.iter().cloned());
            let merged = yrs::merge_updates_v1(&parts).map_err(invalid)?;
            let step2 = yrs::diff_updates_v1(&merged, &encoded_sv).map_err(invalid)?;
            return Ok(Answer {
                step2,
                updates: Vec::new(),
            });
        }
        let loaded = self.load_all()?;
        let snapshot = loaded.snapshot.as_deref().unwrap_or_default();
        if sv.is_empty() && !snapshot.is_empty() {
            // A new client: the snapshot's stored bytes as they are, and
            // the updates since as one (hundreds of small messages cost a
            // client far more to apply than one merged update).
            let updates = match loaded.updates.len() {
                0 | 1 => loaded.updates.clone(),
                _ => vec![yrs::merge_updates_v1(&loaded.updates).map_err(invalid)?],
            };
            return Ok(Answer {
                step2: snapshot.to_vec(),
                updates,
            });
        }
        let all = loaded.full()?;
        let step2 = yrs::diff_updates_v1(&all, &encoded_sv).map_err(invalid)?;
        Ok(Answer {
            step2,
            updates: Vec::new(),
        })
    }

    /// The whole document as one v1 update (for an HTTP snapshot, say).
    pub fn update(&mut self) -> Result<Vec<u8>, Error> {
        self.load_all()?.full()
    }

    /// The whole document, built in memory. Costs a decode and an
    /// integration of everything stored: use it where the content matters.
    pub fn doc(&mut self) -> Result<Doc, Error> {
        let loaded = self.load_all()?;
        let doc = Doc::new();
        {
            let mut txn = doc.transact_mut();
            let parts = loaded.snapshot.iter().chain(&loaded.updates);
            for (i, part) in parts.enumerate() {
                if part.is_empty() {
                    continue;
                }
                // An update that decoded when it came in but cannot be
                // integrated is left out (and logged) rather than wedging
                // every later compaction.
                let applied = Update::decode_v1(part)
                    .map_err(|e| e.to_string())
                    .and_then(|u| txn.apply_update(u).map_err(|e| e.to_string()));
                if let Err(e) = applied {
                    context::log(Level::Warn, &format!("yjs: update {i} left out: {e}"));
                }
            }
        }
        Ok(doc)
    }

    /// Fold the updates into a new snapshot, in this hook's one commit.
    /// Returns the document, or `None` when there was nothing to fold.
    pub fn compact(&mut self) -> Result<Option<Doc>, Error> {
        if self.load()?.updates.is_empty() {
            return Ok(None);
        }
        let doc = self.doc()?;
        let (snapshot, sv, ds) = {
            let txn = doc.transact();
            let snapshot = txn.encode_state_as_update_v1(&StateVector::default());
            let shot = txn.snapshot();
            let mut ds = EncoderV1::new();
            ds.write_var(0u32); // no blocks: an update that only deletes
            shot.delete_set.encode(&mut ds);
            (snapshot, shot.state_map.encode_v1(), ds.to_vec())
        };
        // Every key goes in this one hook's batch, so a trap half way rolls
        // the whole compaction back and the document stays as it was. The
        // host takes at most `storage::MAX_MANY` keys a call: a burst leaves
        // thousands of updates, so they go in pieces.
        let mut old = Vec::new();
        for prefix in ["y:s:", "y:u:"] {
            old.extend(
                storage::list(&ListOptions::prefix(prefix))?
                    .into_iter()
                    .map(|(k, _)| k),
            );
        }
        for keys in old.chunks(storage::MAX_MANY) {
            storage::delete_many(keys)?;
        }
        let mut entries: Vec<storage::Entry> = snapshot
            .chunks(CHUNK)
            .enumerate()
            .map(|(part, chunk)| (format!("y:s:{part:04x}"), chunk.to_vec()))
            .collect();
        entries.push(("y:sv".into(), sv.clone()));
        entries.push(("y:ds".into(), ds.clone()));
        for entries in entries.chunks(storage::MAX_MANY) {
            storage::put_many(entries)?;
        }
        self.next_seq = Some(0);
        self.loaded = Some(Loaded {
            snapshot: Some(snapshot),
            sv: Some(sv),
            ds: Some(ds),
            updates: Vec::new(),
        });
        Ok(Some(doc))
    }
}

impl Loaded {
    /// The whole document as one update (the snapshot must be read).
    fn full(&self) -> Result<Vec<u8>, Error> {
        let snapshot = self.snapshot.as_deref().unwrap_or_default();
        match (snapshot.is_empty(), self.updates.len()) {
            (false, 0) => Ok(snapshot.to_vec()),
            (true, 0) => Ok(Update::new().encode_v1()),
            (true, 1) => Ok(self.updates[0].clone()),
            _ => {
                let parts = std::iter::once(snapshot)
                    .filter(|s| !s.is_empty())
                    .chain(self.updates.iter().map(Vec::as_slice));
                yrs::merge_updates_v1(parts).map_err(invalid)
            }
        }
    }
}

fn invalid(e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("stored Yjs document: {e}"))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
