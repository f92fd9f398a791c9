//! Crons: each party's `[[parties.NAME.crons]]`, run as PartyKit runs
//! `static onCron`: at each tick, the party's on-cron once, outside any
//! room (in an instance of its own, as the lobby's hooks run: `lobby.rs`).
//!
//! At most once per tick: a tick is claimed in the store before it runs (in
//! SQLite on one node; in PostgreSQL on a cluster, by a statement only a
//! node with a live lease can make), so a second look, a restart or another
//! node finds it taken. A run that fails is logged and counted, and not
//! tried again: a cron is a schedule, not a queue, and the next tick comes.
//!
//! Missed ticks: when no node was up at a tick, the latest tick missed runs
//! once when one starts (the earlier ones are skipped, as a PartyKit cron
//! that Cloudflare could not run is not made up). A cron never claimed
//! before starts at its next tick.
//!
//! [`Host::run_due_crons`] takes the time, so tests drive it with any clock;
//! the host's own loop calls it every second with the real one. Runs are
//! awaited one after another: a cron's hook has the hook budget, and its
//! calls into rooms their own deadline.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;
use tracing::warn;

use super::Host;
use super::lobby;
use crate::clock::now_ms;
use crate::cron::Schedule;
use crate::lock::lock;
use crate::room::instance::Call;

/// One cron, as the host tracks it.
pub(super) struct CronState {
    party: String,
    name: String,
    schedule: Schedule,
    /// The latest tick known to be claimed (by anyone) or skipped; `None`
    /// until read from the store.
    seen: Option<u64>,
    /// This node's last run: its tick, and whether it succeeded.
    last: Option<(u64, bool)>,
}

/// A cron, as `dormouse crons` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CronInfo {
    pub party: String,
    pub name: String,
    pub schedule: String,
    /// The next tick (Unix ms), if the schedule has one.
    pub next_ms: Option<u64>,
    /// This node's last run, and its result: "ok" or "failed".
    pub last_run_ms: Option<u64>,
    pub last_result: Option<&'static str>,
}

/// Every configured cron, from the (already validated) config.
pub(super) fn from_config(config: &crate::config::Config) -> Vec<CronState> {
    let mut crons = Vec::new();
    for (party, p) in &config.parties {
        for c in &p.crons {
            match Schedule::parse(&c.schedule) {
                Ok(schedule) => crons.push(CronState {
                    party: party.clone(),
                    name: c.name.clone(),
                    schedule,
                    seen: None,
                    last: None,
                }),
                Err(e) => warn!(party, cron = c.name, error = e, "cron left out"),
            }
        }
    }
    crons
}

impl Host {
    /// Run every cron whose tick came by `now_ms` and that this call claims;
    /// how many ran (succeeded or not).
    pub async fn run_due_crons(self: &Arc<Self>, now_ms: u64) -> usize {
        let count = lock(&self.crons).len();
        let mut ran = 0;
        for i in 0..count {
            let (party, name, schedule, seen) = {
                let crons = lock(&self.crons);
                let c = &crons[i];
                (c.party.clone(), c.name.clone(), c.schedule.clone(), c.seen)
            };
            let seen = match seen {
                Some(t) => t,
                // First look: from the last claimed tick, or from now.
                None => match self.cron_tick(&party, &name).await {
                    Ok(last) => last.unwrap_or(now_ms),
                    Err(e) => {
                        warn!(
                            party,
                            cron = name,
                            error = e,
                            "cannot read the cron's last tick; trying again"
                        );
                        continue;
                    }
                },
            };
            let Some(due) = schedule.latest_in(seen, now_ms) else {
                lock(&self.crons)[i].seen = Some(seen);
                continue;
            };
            match self.claim_cron_tick(&party, &name, due).await {
                Ok(true) => {
                    let ok = self.run_cron(&party, &name, due).await;
                    let mut crons = lock(&self.crons);
                    crons[i].last = Some((due, ok));
                    crons[i].seen = Some(due);
                    ran += 1;
                }
                // Claimed already: by an earlier look, or another node.
                Ok(false) => lock(&self.crons)[i].seen = Some(due),
                Err(e) => {
                    warn!(
                        party,
                        cron = name,
                        error = e,
                        "cannot claim the cron's tick; trying again"
                    );
                }
            }
        }
        ran
    }

    /// Every cron, with its next tick and this node's last run.
    pub fn crons(&self) -> Vec<CronInfo> {
        let now = now_ms();
        lock(&self.crons)
            .iter()
            .map(|c| CronInfo {
                party: c.party.clone(),
                name: c.name.clone(),
                schedule: c.schedule.to_string(),
                next_ms: c.schedule.next_after(now),
                last_run_ms: c.last.map(|(t, _)| t),
                last_result: c.last.map(|(_, ok)| if ok { "ok" } else { "failed" }),
            })
            .collect()
    }

    /// The host's cron loop: every second, until shutdown.
    pub(super) async fn fire_crons(self: Arc<Self>) {
        if lock(&self.crons).is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.run_due_crons(now_ms()).await;
        }
    }

    async fn cron_tick(&self, party: &str, cron: &str) -> Result<Option<u64>, String> {
        match &self.shared.cluster {
            Some(cluster) => cluster
                .cron_tick(party, cron)
                .await
                .map_err(|e| e.to_string()),
            None => {
                let storage = self.shared.storage.clone();
                let (party, cron) = (party.to_owned(), cron.to_owned());
                tokio::task::spawn_blocking(move || storage.cron_tick(&party, &cron))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        }
    }

    async fn claim_cron_tick(&self, party: &str, cron: &str, tick: u64) -> Result<bool, String> {
        match &self.shared.cluster {
            Some(cluster) => cluster
                .claim_cron_tick(party, cron, tick)
                .await
                .map_err(|e| e.to_string()),
            None => {
                let storage = self.shared.storage.clone();
                let (party, cron) = (party.to_owned(), cron.to_owned());
                tokio::task::spawn_blocking(move || storage.claim_cron_tick(&party, &cron, tick))
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
            }
        }
    }

    /// Run one claimed tick: whether on-cron succeeded. Its lines go to the
    /// party's log under the room name "" (`dormouse tail`).
    async fn run_cron(&self, party_name: &str, cron: &str, tick: u64) -> bool {
        let (party_arc, no_room): (Arc<str>, Arc<str>) = (Arc::from(party_name), Arc::from(""));
        let log = |level: &'static str, line: String| {
            self.shared
                .caps
                .logs
                .emit(&party_arc, &no_room, level, line);
        };
        let metrics = self.shared.metrics.party(party_name);
        let party = lock(&self.parties).get(party_name).cloned();
        let ok = match party {
            None => {
                log(
                    "error",
                    format!("cron {cron} failed: no such party is deployed"),
                );
                false
            }
            Some(party) if !party.has_on_cron() => {
                log(
                    "error",
                    format!(
                        "cron {cron} failed: the component exports no on-cron (built before crons?)"
                    ),
                );
                false
            }
            Some(party) => {
                let limits = self.limits_for(party_name);
                let made = lobby::instance(
                    &self.shared,
                    &party,
                    limits,
                    party_arc.clone(),
                    no_room.clone(),
                )
                .await;
                match made {
                    Err(failure) => {
                        log(
                            "error",
                            format!(
                                "cron {cron} failed: cannot make an instance: {:#}",
                                failure.error
                            ),
                        );
                        false
                    }
                    Ok(mut instance) => {
                        let call = Call::Cron(cron.to_owned(), tick);
                        // A cron keeps nothing of its own, as the lobby.
                        match lobby::run_once(&self.shared, &mut instance, party_name, call).await {
                            Ok(_) => {
                                log("host", format!("cron {cron} ran for its tick at {tick} ms"));
                                true
                            }
                            Err(failure) => {
                                log(
                                    "error",
                                    format!(
                                        "cron {cron} failed ({}): {:#}",
                                        failure.kind.label(),
                                        failure.error
                                    ),
                                );
                                false
                            }
                        }
                    }
                }
            }
        };
        metrics.cron_runs[usize::from(!ok)].fetch_add(1, Relaxed);
        ok
    }
}
