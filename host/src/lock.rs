//! A std mutex lock that a panic elsewhere does not poison: the host's
//! shared maps stay usable, and no lock is held across `.await`.

use std::sync::{Mutex, MutexGuard};

/// Lock a mutex, taking it over if a panic elsewhere poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
