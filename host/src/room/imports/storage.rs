//! `dormouse:room/storage`: the room's key-value storage, sizes checked here.

use super::check_size;
use crate::room::state::RoomState;
use crate::store::{ListOptions, StorageError};
use crate::wit::Error;
use crate::wit::dormouse::room::storage::{self as wit, Host};

/// Keys and values one `*-many` call may carry, as Durable Objects allow.
const MAX_MANY: usize = 128;

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::TooLarge(m) => Error::TooLarge(m),
            StorageError::Invalid(m) => Error::Invalid(m),
            e @ (StorageError::Unavailable(_) | StorageError::Fenced | StorageError::Moved) => {
                Error::Unavailable(e.to_string())
            }
        }
    }
}

impl RoomState {
    fn check_key(&self, key: &str) -> Result<(), Error> {
        check_size("key", key.len(), self.limits.key_bytes)?;
        no_nul(key)
    }

    fn check_entry(&self, key: &str, value: &[u8]) -> Result<(), Error> {
        self.check_key(key)?;
        check_size("value", value.len(), self.limits.value_bytes)
    }
}

/// Keys hold no NUL: PostgreSQL's text cannot, and a key must mean the same
/// on one node and on a cluster (where one would fail the whole group's
/// commit, not just this call).
fn no_nul(key: &str) -> Result<(), Error> {
    if key.contains('\0') {
        return Err(Error::Invalid("storage keys hold no NUL character".into()));
    }
    Ok(())
}

fn check_many(n: usize) -> Result<(), Error> {
    if n > MAX_MANY {
        return Err(Error::TooLarge(format!(
            "{n} keys in one call; the limit is {MAX_MANY}"
        )));
    }
    Ok(())
}

impl Host for RoomState {
    fn get(&mut self, key: String) -> wasmtime::Result<Result<Option<Vec<u8>>, Error>> {
        Ok((|| {
            self.check_key(&key)?;
            Ok(self.storage.get(&key)?)
        })())
    }

    fn get_many(&mut self, keys: Vec<String>) -> wasmtime::Result<Result<Vec<wit::Entry>, Error>> {
        Ok((|| {
            check_many(keys.len())?;
            let mut keys = keys;
            keys.sort();
            keys.dedup();
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                self.check_key(&key)?;
                if let Some(v) = self.storage.get(&key)? {
                    out.push((key, v));
                }
            }
            Ok(out)
        })())
    }

    fn put(&mut self, key: String, value: Vec<u8>) -> wasmtime::Result<Result<(), Error>> {
        Ok((|| {
            self.check_entry(&key, &value)?;
            Ok(self.storage.put(key, value)?)
        })())
    }

    fn put_many(&mut self, entries: Vec<wit::Entry>) -> wasmtime::Result<Result<(), Error>> {
        Ok((|| {
            check_many(entries.len())?;
            // Check all first: a refused call writes nothing.
            for (k, v) in &entries {
                self.check_entry(k, v)?;
            }
            Ok(self.storage.put_many(entries)?)
        })())
    }

    fn delete(&mut self, key: String) -> wasmtime::Result<Result<bool, Error>> {
        Ok((|| {
            self.check_key(&key)?;
            Ok(self.storage.delete(&key)?)
        })())
    }

    fn delete_many(&mut self, keys: Vec<String>) -> wasmtime::Result<Result<u32, Error>> {
        Ok((|| {
            check_many(keys.len())?;
            for k in &keys {
                self.check_key(k)?;
            }
            let mut keys = keys;
            keys.sort();
            keys.dedup();
            let mut n = 0;
            for k in keys {
                n += u32::from(self.storage.delete(&k)?);
            }
            Ok(n)
        })())
    }

    fn list(&mut self, o: wit::ListOptions) -> wasmtime::Result<Result<Vec<wit::Entry>, Error>> {
        for bound in [&o.prefix, &o.start, &o.end].into_iter().flatten() {
            if let Err(e) = no_nul(bound) {
                return Ok(Err(e));
            }
        }
        let options = ListOptions {
            prefix: o.prefix,
            start: o.start,
            end: o.end,
            limit: o.limit,
            reverse: o.reverse,
        };
        Ok(self.storage.list(&options).map_err(Error::from))
    }

    fn delete_all(&mut self) -> wasmtime::Result<Result<(), Error>> {
        self.storage.delete_all();
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::state::test_support::room_state;

    #[test]
    fn sizes_are_checked_and_refusals_write_nothing() {
        let mut s = room_state();
        let long_key = "k".repeat(2049);
        assert!(matches!(
            s.put(long_key, vec![]).expect("no trap"),
            Err(Error::TooLarge(_))
        ));
        let big = vec![0u8; (2 << 20) + 1];
        let entries = vec![("ok".to_string(), vec![1]), ("big".to_string(), big)];
        assert!(matches!(
            s.put_many(entries).expect("no trap"),
            Err(Error::TooLarge(_))
        ));
        assert_eq!(s.get("ok".into()).expect("no trap").expect("ok"), None);
        let many: Vec<String> = (0..129).map(|i| i.to_string()).collect();
        assert!(matches!(
            s.get_many(many).expect("no trap"),
            Err(Error::TooLarge(_))
        ));
    }

    #[test]
    fn keys_with_nul_are_refused_and_write_nothing() {
        let mut s = room_state();
        let entries = vec![
            ("ok".to_string(), vec![1]),
            ("item:\0".to_string(), vec![2]),
        ];
        assert!(matches!(
            s.put_many(entries).expect("no trap"),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            s.get("a\0b".into()).expect("no trap"),
            Err(Error::Invalid(_))
        ));
        let options = wit::ListOptions {
            prefix: Some("\0".into()),
            start: None,
            end: None,
            limit: None,
            reverse: false,
        };
        assert!(matches!(
            s.list(options).expect("no trap"),
            Err(Error::Invalid(_))
        ));
        assert_eq!(s.get("ok".into()).expect("no trap").expect("ok"), None);
    }

    #[test]
    fn reads_see_the_hooks_own_writes() {
        let mut s = room_state();
        s.put_many(vec![
            ("b".into(), b"2".to_vec()),
            ("a".into(), b"1".to_vec()),
        ])
        .expect("no trap")
        .expect("ok");
        let got = s
            .get_many(vec!["b".into(), "a".into(), "zz".into()])
            .expect("no trap")
            .expect("ok");
        assert_eq!(
            got,
            [("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]
        );
        assert_eq!(
            s.delete_many(vec!["a".into(), "zz".into()])
                .expect("no trap")
                .expect("ok"),
            1
        );
        let options = wit::ListOptions {
            prefix: None,
            start: None,
            end: None,
            limit: None,
            reverse: false,
        };
        let listed = Host::list(&mut s, options).expect("no trap").expect("ok");
        assert_eq!(listed, [("b".into(), b"2".to_vec())]);
    }
}
