//! Following the cluster: hand-offs of quiet rooms, eviction when this node
//! self-fences, and leaving the cluster at shutdown.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::Host;
use crate::alarms::Attempt;
use crate::clock::now_ms;
use crate::cluster::Cluster;
use crate::lock::lock;
use crate::room::{Event, RoomTx};

/// How often a node looks at every party's active version in the cluster,
/// besides the announcements: a node that missed one (its LISTEN connection
/// lost it) serves the active version within this.
const RECONCILE: std::time::Duration = std::time::Duration::from_secs(30);

impl Host {
    /// In a cluster: close every room's sockets with 1012 when this node
    /// self-fences (its clients reconnect to the room's next holder), serve
    /// what other nodes deploy, and each second claim rooms whose alarm is
    /// due while their holder is gone and hand quiet rooms off. Three tasks,
    /// so that a slow compile never delays a fence.
    pub(super) fn follow_cluster(self: &Arc<Self>, cluster: &Arc<Cluster>) {
        let (host, c) = (self.clone(), cluster.clone());
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = host.shared.shutdown.cancelled() => return,
                    () = c.fenced() => host.evict_all(1012, "this node left the cluster; reconnect").await,
                }
            }
        });
        let (host, mut deploys) = (self.clone(), cluster.deploys());
        self.tasks.spawn(async move {
            // Announcements are the fast path; this is the bound: whatever
            // was missed, every party is looked at again this often.
            let mut reconcile = tokio::time::interval(RECONCILE);
            reconcile.tick().await;
            loop {
                let party = tokio::select! {
                    () = host.shared.shutdown.cancelled() => return,
                    Some(party) = deploys.recv() => party,
                    _ = reconcile.tick() => None,
                };
                let followed = match party {
                    Some(name) => host.follow_deploy(&name).await,
                    None => host.follow_deploys().await,
                };
                if let Err(e) = followed {
                    tracing::error!("cannot follow the cluster's deploys: {e}");
                }
            }
        });
        let (host, c) = (self.clone(), cluster.clone());
        self.tasks.spawn(async move {
            let mut sweep = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = host.shared.shutdown.cancelled() => return,
                    _ = sweep.tick() => {}
                }
                host.hand_off_quiet_rooms();
                match c.orphaned_alarms(now_ms()).await {
                    Ok(keys) => {
                        for key in keys {
                            let attempt = Attempt::default();
                            host.dispatch(&key, Event::Alarm { attempt }).await;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot look for orphaned alarms"),
                }
            }
        });
    }

    /// Ask quiet rooms whose every socket came through one other node to
    /// move there (a few per tick, so a node that joins takes rooms over
    /// gradually). The balancer's hash decides where clients go; this node
    /// learns it from where forwarded sockets come from.
    fn hand_off_quiet_rooms(&self) {
        /// How long a room must have had no event to be handed off.
        const QUIET_MS: u64 = 2000;
        /// Hand-offs per tick (per second), at most.
        const PER_TICK: usize = 16;
        let now = now_ms();
        let rooms = lock(&self.rooms);
        let quiet = rooms.values().filter(|e| {
            let s = &e.status;
            let all = s.connections.load(Relaxed);
            all > 0
                && s.forwarded.load(Relaxed) == all
                && now.saturating_sub(s.last_event_ms.load(Relaxed)) >= QUIET_MS
        });
        for e in quiet.take(PER_TICK) {
            if e.tx.try_send(Event::HandOff)
                && let Some(c) = &self.shared.cluster
            {
                c.metrics.hand_offs.fetch_add(1, Relaxed);
            }
        }
    }

    /// Close every live room's sockets with `code` and stop its actor.
    async fn evict_all(&self, code: u16, reason: &'static str) {
        let evicted: Vec<RoomTx> = lock(&self.rooms).drain().map(|(_, e)| e.tx).collect();
        for tx in evicted {
            let _ = tx.send(Event::Evict { code, reason }).await;
        }
    }

    /// In a cluster, after shutdown: give up every room this node holds, so
    /// that the other nodes may claim them at once rather than after the
    /// lease. Rooms have stopped, so no commit of theirs is in flight.
    pub async fn leave(&self) {
        if let Some(cluster) = &self.shared.cluster {
            for (key, epoch) in cluster.owned() {
                cluster.release(&key, epoch).await;
            }
        }
    }
}
