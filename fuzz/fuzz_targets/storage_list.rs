//! Fuzz target: a room's storage calls (what a guest passes to the storage
//! imports: keys, values, list ranges) against a `BTreeMap` model, through
//! the real overlay and a real SQLite file, with commits in between.
#![no_main]

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use arbitrary::Arbitrary;
use dormouse::storage::{ListOptions, RoomStorage, Storage};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Put(String, u8),
    Delete(String),
    DeleteAll,
    Commit,
    List {
        prefix: Option<String>,
        start: Option<String>,
        end: Option<String>,
        limit: Option<u8>,
        reverse: bool,
    },
}

fn storage() -> &'static (Arc<Storage>, tokio::runtime::Runtime) {
    static S: OnceLock<(Arc<Storage>, tokio::runtime::Runtime)> = OnceLock::new();
    S.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dormouse-fuzz-{}", std::process::id()));
        let storage = Storage::open(&dir, Arc::default()).expect("storage opens");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        (storage, rt)
    })
}

fuzz_target!(|ops: Vec<Op>| {
    let (s, rt) = storage();
    // A fresh room per input: inputs must not see each other's data.
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut room = RoomStorage::new(
        s.clone(),
        None,
        "fuzz".into(),
        n.to_string().into(),
        Arc::default(),
    );
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for op in ops {
        match op {
            Op::Put(k, v) => {
                room.put(k.clone(), vec![v]).expect("a small put fits");
                model.insert(k, vec![v]);
            }
            Op::Delete(k) => {
                let existed = room.delete(&k).expect("delete");
                assert_eq!(existed, model.remove(&k).is_some(), "delete {k:?}");
            }
            Op::DeleteAll => {
                room.delete_all();
                model.clear();
            }
            Op::Commit => {
                let batch = room.take_batch();
                rt.block_on(room.commit(batch)).expect("commit");
            }
            Op::List {
                prefix,
                start,
                end,
                limit,
                reverse,
            } => {
                let o = ListOptions {
                    prefix: prefix.clone(),
                    start: start.clone(),
                    end: end.clone(),
                    limit: limit.map(u32::from),
                    reverse,
                };
                let got: Vec<String> = room
                    .list(&o)
                    .expect("list")
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                let mut want: Vec<String> = model
                    .keys()
                    .filter(|k| prefix.as_deref().is_none_or(|p| k.starts_with(p)))
                    .filter(|k| start.as_deref().is_none_or(|s| k.as_str() >= s))
                    .filter(|k| end.as_deref().is_none_or(|e| k.as_str() < e))
                    .cloned()
                    .collect();
                if reverse {
                    want.reverse();
                }
                want.truncate(limit.map_or(usize::MAX, usize::from));
                assert_eq!(got, want, "{o:?}");
            }
        }
    }
});
