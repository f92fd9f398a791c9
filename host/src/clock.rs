//! The wall clock, in the unit alarms and logs use; a clock that counts
//! suspended time, for lease deadlines; and a tick many tasks share.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Milliseconds since the Unix epoch: the unit of alarm times.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A point on a clock that keeps counting while the machine is suspended
/// (Linux's CLOCK_BOOTTIME). A lease deadline on the monotonic clock, which
/// stops during a VM or system suspend, would let a node wake after its
/// lease expired and still think it live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BootInstant(Duration);

impl BootInstant {
    pub fn now() -> BootInstant {
        BootInstant(boottime())
    }

    /// How long until this point; zero once it has passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_sub(boottime())
    }
}

impl std::ops::Add<Duration> for BootInstant {
    type Output = BootInstant;

    fn add(self, d: Duration) -> BootInstant {
        BootInstant(self.0 + d)
    }
}

impl std::ops::Sub<Duration> for BootInstant {
    type Output = BootInstant;

    fn sub(self, d: Duration) -> BootInstant {
        BootInstant(self.0.saturating_sub(d))
    }
}

#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn boottime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write; CLOCK_BOOTTIME exists on
    // every Linux since 2.6.39, so the call cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Elsewhere, the monotonic clock (since the first call).
#[cfg(not(target_os = "linux"))]
fn boottime() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// A periodic tick that many tasks wait on together: one timer for all the
/// sockets' pings, where an interval per socket would hold a boxed timer for
/// each of tens of thousands of idle sockets.
pub struct Ticker {
    period: Duration,
    count: AtomicU64,
    notify: Notify,
}

impl Ticker {
    pub fn new(period: Duration) -> Ticker {
        Ticker {
            period,
            count: AtomicU64::new(0),
            notify: Notify::new(),
        }
    }

    /// Ticks so far.
    pub fn now(&self) -> u64 {
        self.count.load(Relaxed)
    }

    /// Wait for the next tick; the count after it.
    pub async fn next(&self) -> u64 {
        self.notify.notified().await;
        self.now()
    }

    /// Tick every period until `stop` is cancelled.
    pub async fn run(&self, stop: CancellationToken) {
        let mut interval =
            tokio::time::interval_at(tokio::time::Instant::now() + self.period, self.period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = interval.tick() => {
                    self.count.fetch_add(1, Relaxed);
                    self.notify.notify_waiters();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits on the ticks themselves, never on a sleep: no timing to flake.
    #[tokio::test]
    async fn a_ticker_wakes_every_waiter_each_period() {
        let ticker = std::sync::Arc::new(Ticker::new(Duration::from_millis(10)));
        let stop = CancellationToken::new();
        let run = tokio::spawn({
            let (t, s) = (ticker.clone(), stop.clone());
            async move { t.run(s).await }
        });
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let t = ticker.clone();
                tokio::spawn(async move { t.next().await })
            })
            .collect();
        let mut first = 0;
        for w in waiters {
            let tick = w.await.expect("waiter");
            assert!(tick >= 1);
            first = first.max(tick);
        }
        assert!(ticker.next().await > first, "the next tick counts on");
        stop.cancel();
        run.await.expect("ticker stops");
    }
}
