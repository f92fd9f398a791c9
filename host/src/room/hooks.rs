//! Running a room's hooks: the wake (a fresh instance, on-start), the hook
//! call with its deadline, the output gate (commit, then release what the
//! hook sent; hooks of queued messages share one commit), and alarm retries
//! that tell a guest's failure from the host's ([`Fault`]).

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use tracing::{error, warn};

use super::instance::{Call, Failure, Instance, Party, Reply};
use super::state::RoomState;
use super::{Life, Room, Shared, idle, rearm};
use crate::alarms::{Attempt, MAX_RETRIES};
use crate::clock::now_ms;
use crate::http::text_response;
use crate::metrics::{FailureKind, Hook};
use crate::store::StorageError;
use crate::wit::{self};

/// Whose failure kept a hook from completing: an alarm spends a retry only
/// on the guest's own (see `alarms.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fault {
    /// The guest trapped, ran out of time or memory, or failed to start.
    Guest,
    /// The host could not run it: no such party, no instance slot, a
    /// storage or cluster failure.
    Host,
}

impl Fault {
    pub(super) fn of(failure: &Failure) -> Fault {
        match failure.kind {
            FailureKind::PoolFull => Fault::Host,
            _ => Fault::Guest,
        }
    }
}

/// The longest a host failure delays an alarm before it tries again.
pub(super) const MAX_STALL_MS: u64 = 5 * 60_000;

/// How long a wake waits for an awake-room slot to free before it fails.
pub(super) const POOL_WAIT: Duration = Duration::from_secs(5);

/// How often a waiting wake looks again without a notification.
pub(super) const POOL_RETRY: Duration = Duration::from_millis(50);

/// The most hooks whose writes share one commit (see [`Room::joins_group`]).
pub(super) const MAX_GROUP: u16 = super::queue::ROOM_QUEUE as u16;

/// A group stops growing once its writes or its output hold this much (its
/// output also stops at half of `outbound_queue_bytes`: a group's messages
/// leave at once, and must fit in a reading client's queue beside what is
/// still going out).
pub(super) const GROUP_BYTES: usize = 1 << 20;

/// What a client gets when the room's hook failed.
pub(super) fn failed_response() -> wit::Response {
    text_response(500, "the room failed to handle this request")
}

/// Make an instance of `party` over `state`. Every slot taken: past
/// `awake_rooms`, the least recently used awake room hibernates early,
/// rather than this failing. Its slot frees once it finishes its current
/// event; this waits for that notification, up to [`POOL_WAIT`].
pub(crate) async fn instantiate(
    shared: &Shared,
    party: &Party,
    mut state: RoomState,
) -> Result<Instance, (RoomState, Failure)> {
    let mut waiting_since: Option<Instant> = None;
    loop {
        // Registered before the attempt, so a slot freed meanwhile is seen.
        let freed = shared.slot_freed.notified();
        match Instance::new(&shared.runtime, party, state).await {
            Err((back, failure)) if failure.kind == FailureKind::PoolFull => {
                state = back;
                let since = *waiting_since.get_or_insert_with(|| {
                    shared.metrics.pool_full_waits.fetch_add(1, Relaxed);
                    warn!(
                        "every awake-room slot is taken; hibernating the least recently used room"
                    );
                    Instant::now()
                });
                let Some(left) = POOL_WAIT.checked_sub(since.elapsed()) else {
                    return Err((state, failure));
                };
                if let Some(registry) = shared.registry.upgrade() {
                    registry.hibernate_least_recent();
                }
                // A slot may also free without a notification (an
                // instantiation that failed elsewhere): look again soon.
                let _ = tokio::time::timeout(left.min(POOL_RETRY), freed).await;
            }
            made => return made,
        }
    }
}

impl Room {
    /// Wake if needed, then run one hook.
    pub(super) async fn hook(&mut self, call: Call) -> Result<Reply, Fault> {
        if self.builtin {
            return Ok(self.builtin_relay(call));
        }
        self.wake().await?;
        self.run(call).await
    }

    pub(super) async fn wake(&mut self) -> Result<(), Fault> {
        if self.awake() {
            return Ok(());
        }
        let party = self
            .shared
            .registry
            .upgrade()
            .and_then(|r| r.party(&self.key.0));
        let Some(party) = party else {
            warn!("no such party is deployed");
            return Err(Fault::Host);
        };
        let started = Instant::now();
        let Life::Hibernated(mut state) = std::mem::replace(&mut self.life, Life::Moving) else {
            unreachable!("wake checked the room is hibernated")
        };
        state.vars = party.vars.clone();
        let m = state.party_metrics.clone();
        match instantiate(&self.shared, &party, state).await {
            Ok(instance) => {
                m.rooms_hibernated.fetch_sub(1, Relaxed);
                m.rooms_awake.fetch_add(1, Relaxed);
                m.wakes.fetch_add(1, Relaxed);
                self.life = Life::Awake(instance);
                self.state().status.awake.store(true, Relaxed);
            }
            Err((back, failure)) => {
                self.life = Life::Hibernated(back);
                let fault = Fault::of(&failure);
                self.failed("instantiate", failure);
                return Err(fault);
            }
        }
        self.run(Call::Start).await?;
        let took = started.elapsed();
        self.shared.metrics.wake_seconds.observe(took);
        let line = format!("woke in {} us", took.as_micros());
        self.log("host", line);
        Ok(())
    }

    /// Run one hook on the awake instance, then commit and release its output.
    pub(super) async fn run(&mut self, call: Call) -> Result<Reply, Fault> {
        let hook = call.hook();
        let Life::Awake(instance) = &mut self.life else {
            return Err(Fault::Host);
        };
        let started = Instant::now();
        let result = instance.call(call).await;
        self.shared.metrics.hook_seconds[hook as usize].observe(started.elapsed());
        let reply = match result {
            Ok(reply) => reply,
            Err(failure) => {
                instance.state().discard();
                let fault = Fault::of(&failure);
                self.failed(hook.label(), failure);
                // The hooks before it in the group succeeded: theirs commit.
                if self.group > 0 {
                    let _ = self.flush(hook).await;
                }
                self.hibernate();
                return Err(fault);
            }
        };
        let state = instance.state();
        // An alarm that on-alarm handled is done, unless the hook set a new one.
        if hook == Hook::Alarm && !state.storage.alarm_touched() {
            state.storage.set_alarm(None);
        }
        if let Some(timer) = state.hook_mut().and_then(|h| h.timer.take()) {
            let at = |ms: u32| tokio::time::Instant::now() + Duration::from_millis(ms.into());
            match (timer, &mut self.timer) {
                (None, t) => *t = None,
                (Some(ms), t) => rearm(t, at(ms)),
            }
        }
        if self.joins_group(hook) {
            self.state().settle();
            self.group += 1;
            return Ok(reply);
        }
        self.flush(hook).await?;
        Ok(self.after_commit(reply))
    }

    /// Whether the hook that just ran leaves its writes and output for the
    /// next one's commit: while more messages wait, their hooks run first
    /// and one commit makes them all durable, then every output leaves in
    /// order. A Durable Object's output gate does the same (its events run
    /// while a write is in flight; their writes coalesce). Only messages,
    /// closes and errors group (nothing waits on their answer), at most
    /// [`MAX_GROUP`] and bounded in bytes; not on a cluster, where a claim
    /// can be lost between two events; and not with an idle timeout of 0,
    /// which promises a wake per event; and not a hook that started calls
    /// or answered deferred requests, whose failure must discard only its
    /// own.
    pub(super) fn joins_group(&self, hook: Hook) -> bool {
        let Life::Awake(instance) = &self.life else {
            return false;
        };
        let state = instance.state_ref();
        matches!(hook, Hook::Message | Hook::Close | Hook::Error)
            && self.group < MAX_GROUP
            && self.shared.cluster.is_none()
            && !self.shared.idle_timeout.is_zero()
            && state.storage.pending_bytes() < GROUP_BYTES
            && state.hook_ref().is_none_or(|h| {
                h.outbox_bytes < GROUP_BYTES.min(state.limits.outbound_queue_bytes / 2)
                    && h.calls.is_empty()
                    && h.responses.is_empty()
            })
            && self.rx.next_joins_group()
    }

    /// Commit what the hooks since the last commit wrote, then release
    /// their output, in order: the output gate. On a failure every one of
    /// them is undone and the instance dropped. `hook`: the last one, for
    /// the log.
    pub(super) async fn flush(&mut self, hook: Hook) -> Result<(), Fault> {
        self.group = 0;
        let state = self.state();
        let batch = state.storage.take_batch();
        let alarm = batch.alarm_change();
        if !batch.is_empty()
            && let Err(e) = state.storage.commit(batch).await
        {
            // The guest believes its writes happened; its memory cannot be
            // trusted any more than the messages it sent.
            error!(hook = hook.label(), error = %e, "commit failed; output dropped and instance dropped");
            self.state().discard_all();
            if matches!(e, StorageError::Moved) {
                // Another node holds the room: its clients must go there.
                self.evict(1012, "this room moved to another node; reconnect");
            }
            self.hibernate();
            return Err(Fault::Host);
        }
        // In a cluster, a hook that wrote nothing still answers clients (a
        // read, say): only while this node holds the room. A node that
        // paused past its lease (a zombie) answers nothing on waking.
        if !self.state().storage.still_held() {
            self.state().discard_all();
            self.evict(1012, "this room moved to another node; reconnect");
            return Err(Fault::Host);
        }
        let idle = idle(&self.rx, self.idle_before);
        let metrics = self.shared.metrics.clone();
        let state = self.state();
        let large = state
            .hook_ref()
            .is_some_and(|h| h.outbox_bytes >= state.limits.outbound_queue_bytes / 4);
        state.release(&metrics, idle);
        if large {
            // A busy room queues its output for the socket tasks it just
            // woke. Let them write it out before the next group adds to it:
            // a burst of large answers to a client that reads must not find
            // two groups' output in its queue and close it as too slow.
            tokio::task::yield_now().await;
        }
        match alarm {
            Some(Some(at)) => self
                .shared
                .alarms
                .set(self.key.clone(), at, Attempt::default()),
            Some(None) => self.shared.alarms.clear(&self.key),
            None => {}
        }
        Ok(())
    }

    /// The alarm fired: run on-alarm if it is still due; retry with backoff
    /// when it fails, and drop it after [`MAX_RETRIES`] failures of the
    /// guest's own. When the host could not run it, try again later
    /// without spending a retry.
    pub(super) async fn alarm(&mut self, attempt: Attempt) {
        // The schedule may be stale: the alarm may have moved or gone since.
        let at = match self.state().storage.alarm() {
            Ok(at) => at,
            Err(e) => {
                error!(error = %e, "cannot read the alarm; trying again later");
                self.retry_alarm(attempt, Fault::Host).await;
                return;
            }
        };
        match at {
            None => return,
            Some(at) if at > now_ms() => {
                self.shared.alarms.set(self.key.clone(), at, attempt);
                return;
            }
            Some(_) => {}
        }
        if let Err(fault) = self.hook(Call::Alarm(attempt.retry)).await {
            self.retry_alarm(attempt, fault).await;
        }
    }

    pub(super) async fn retry_alarm(&mut self, attempt: Attempt, fault: Fault) {
        if fault == Fault::Host {
            let wait = self
                .shared
                .alarm_retry_ms
                .saturating_mul(1 << attempt.stalls.min(16))
                .min(MAX_STALL_MS);
            warn!(
                stalls = attempt.stalls + 1,
                wait_ms = wait,
                "the host could not run on-alarm; trying again later (no retry spent)"
            );
            let next = Attempt {
                stalls: attempt.stalls + 1,
                ..attempt
            };
            self.shared
                .alarms
                .set(self.key.clone(), now_ms().saturating_add(wait), next);
            return;
        }
        let retry = attempt.retry;
        if retry < MAX_RETRIES {
            let backoff = self.shared.alarm_retry_ms.saturating_mul(1 << retry);
            warn!(
                retry = retry + 1,
                backoff_ms = backoff,
                "on-alarm failed; retrying"
            );
            let next = Attempt {
                retry: retry + 1,
                ..attempt
            };
            self.shared
                .alarms
                .set(self.key.clone(), now_ms().saturating_add(backoff), next);
            return;
        }
        error!(
            retries = MAX_RETRIES,
            "on-alarm failed every retry; the alarm is dropped"
        );
        let state = self.state();
        state.storage.rollback();
        state.storage.set_alarm(None);
        let batch = state.storage.take_batch();
        if let Err(e) = state.storage.commit(batch).await {
            error!(error = %e, "cannot delete the failed alarm");
        }
    }

    /// Log a guest failure once, with party, room and hook, and count it.
    pub(super) fn failed(&mut self, hook: &str, failure: Failure) {
        let Failure { kind, error } = failure;
        error!(
            hook,
            kind = kind.label(),
            error = format!("{error:#}"),
            "guest failed; instance dropped, connections kept"
        );
        self.state().party_metrics.trap(kind);
        let line = format!(
            "{hook} failed ({}): {error:#}; instance dropped",
            kind.label()
        );
        self.log("error", line);
    }
}
