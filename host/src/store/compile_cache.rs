//! Cranelift's incremental compilation cache on disk: one file per compiled
//! function body, by the hash of what it was compiled from. Components from
//! one toolchain share most of their code (every componentize-js room
//! carries the same JavaScript engine), so after the first, a new one
//! compiles only what is its own.
//!
//! A cache, not a store: files are written whole and renamed into place,
//! never fsynced; a torn or unreadable entry is a miss, and wasmtime
//! compiles the function again.

use std::borrow::Cow;
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use wasmtime::CacheStore;

#[derive(Debug)]
pub struct FunctionCache {
    dir: PathBuf,
}

impl FunctionCache {
    pub fn new(dir: PathBuf) -> FunctionCache {
        FunctionCache { dir }
    }

    /// `DIR/ab/cdef...`: a hash of the key (keys are long), fanned out.
    fn path(&self, key: &[u8]) -> PathBuf {
        let hex = hex::encode(Sha256::digest(key));
        self.dir.join(&hex[..2]).join(&hex[2..])
    }
}

impl CacheStore for FunctionCache {
    fn get(&self, key: &[u8]) -> Option<Cow<'_, [u8]>> {
        std::fs::read(self.path(key)).ok().map(Cow::Owned)
    }

    fn insert(&self, key: &[u8], value: Vec<u8>) -> bool {
        let path = self.path(key);
        let Some(dir) = path.parent() else {
            return false;
        };
        let tmp = dir.join(format!("{}.tmp", uuid::Uuid::new_v4().simple()));
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, &value))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_goes_in_comes_out_and_a_miss_is_none() {
        let dir = std::env::temp_dir().join(format!("dormouse-fc-{}", uuid::Uuid::new_v4()));
        let cache = FunctionCache::new(dir.clone());
        assert!(cache.get(b"key").is_none());
        assert!(cache.insert(b"key", vec![1, 2, 3]));
        assert_eq!(cache.get(b"key").as_deref(), Some(&[1u8, 2, 3][..]));
        assert!(cache.get(b"other").is_none());
        let _ = std::fs::remove_dir_all(dir);
    }
}
