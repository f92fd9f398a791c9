//! The alarm index: every room's next alarm in one map, so a sleeping room
//! with an alarm costs an entry here, not a timer task. The host's one
//! alarm loop (`Host::start`) fires what falls due.
//!
//! The truth is in storage (the alarm is committed with the hook that set
//! it); this schedule is an index of it, rebuilt from storage at start and
//! kept up to date by rooms after each commit. When an alarm is due the
//! scheduler sends the room an `Alarm` event; the room checks storage again
//! (the alarm may have moved), runs on-alarm, and on failure asks for a retry
//! here with backoff. Only the guest's own failures spend one of its
//! [`MAX_RETRIES`]; a failure of the host's (the party is not deployed, no
//! instance slot, storage, a claim) delays the alarm and spends nothing.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;

use crate::route::RoomKey;

/// How many times a failing on-alarm is retried before the alarm is dropped.
pub const MAX_RETRIES: u32 = 6;

/// Which attempt an alarm event is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// Earlier attempts whose on-alarm failed: the guest's own failures,
    /// at most [`MAX_RETRIES`].
    pub retry: u32,
    /// Earlier attempts the host could not make (see the module doc): no
    /// bound, only a longer wait each time.
    pub stalls: u32,
}

#[derive(Default)]
struct Schedule {
    /// (due time, room): the earliest first.
    by_time: BTreeSet<(u64, RoomKey)>,
    /// room -> (due time, which attempt).
    by_room: HashMap<RoomKey, (u64, Attempt)>,
}

/// The host's alarm index.
#[derive(Default)]
pub struct Alarms {
    schedule: Mutex<Schedule>,
    changed: Notify,
}

impl Alarms {
    /// Schedule (or move) a room's alarm.
    pub fn set(&self, key: RoomKey, at_ms: u64, attempt: Attempt) {
        let mut s = self.lock();
        if let Some((old, _)) = s.by_room.insert(key.clone(), (at_ms, attempt)) {
            s.by_time.remove(&(old, key.clone()));
        }
        let earliest = s.by_time.first().is_none_or(|(t, _)| at_ms < *t);
        s.by_time.insert((at_ms, key));
        drop(s);
        if earliest {
            self.changed.notify_one();
        }
    }

    /// Forget a room's alarm.
    pub fn clear(&self, key: &RoomKey) {
        let mut s = self.lock();
        if let Some((at, _)) = s.by_room.remove(key) {
            s.by_time.remove(&(at, key.clone()));
        }
    }

    /// Forget every alarm of a party (it was deleted).
    pub fn clear_party(&self, party: &str) {
        let mut s = self.lock();
        s.by_room.retain(|(p, _), _| &**p != party);
        s.by_time.retain(|(_, (p, _))| &**p != party);
    }

    /// The alarms due at `now`, removed from the schedule, with their attempts.
    pub fn take_due(&self, now: u64) -> Vec<(RoomKey, Attempt)> {
        let mut s = self.lock();
        let mut due = Vec::new();
        while let Some((at, key)) = s.by_time.first().cloned() {
            if at > now {
                break;
            }
            s.by_time.pop_first();
            let attempt = s.by_room.remove(&key).map(|(_, a)| a).unwrap_or_default();
            due.push((key, attempt));
        }
        due
    }

    fn next_due(&self) -> Option<u64> {
        self.lock().by_time.first().map(|(t, _)| *t)
    }

    /// How long to sleep before the next alarm is due: capped at a second,
    /// so a wall-clock jump is noticed soon.
    pub fn until_next(&self, now_ms: u64) -> Duration {
        self.next_due()
            .map_or(Duration::from_secs(1), |at| {
                Duration::from_millis(at.saturating_sub(now_ms))
            })
            .min(Duration::from_secs(1))
    }

    /// Returns when an alarm earlier than all others was set.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// How many alarms are scheduled.
    pub fn len(&self) -> usize {
        self.lock().by_room.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Schedule> {
        crate::lock::lock(&self.schedule)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(room: &str) -> RoomKey {
        ("main".into(), room.into())
    }

    #[test]
    fn due_in_time_order_and_moves_replace() {
        let a = Alarms::default();
        let second = Attempt {
            retry: 2,
            stalls: 1,
        };
        a.set(key("late"), 300, Attempt::default());
        a.set(key("early"), 100, second);
        a.set(key("moved"), 50, Attempt::default());
        a.set(key("moved"), 1000, Attempt::default());
        assert_eq!(a.next_due(), Some(100));
        assert!(a.take_due(99).is_empty());
        assert_eq!(
            a.take_due(300),
            vec![(key("early"), second), (key("late"), Attempt::default())]
        );
        a.clear(&key("moved"));
        assert!(a.is_empty());
        assert_eq!(a.next_due(), None);
        a.set(key("x"), 5, Attempt::default());
        a.set(("other".into(), "x".into()), 6, Attempt::default());
        a.clear_party("main");
        assert_eq!(a.len(), 1);
        assert_eq!(a.next_due(), Some(6));
    }
}
