//! Prometheus metrics with the names DESIGN.md promises (scripts rely on them).
//!
//! Plain atomics, rendered by hand: the set is small and fixed, and the hot
//! paths (a message in, a message out) cost one relaxed add.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::lock::lock;

/// A room's hooks; the `hook` label of `dormouse_hook_seconds`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Start,
    Connect,
    Message,
    Close,
    Error,
    Request,
    Alarm,
    Timer,
    BeforeConnect,
    BeforeRequest,
    Cron,
    Answer,
}

impl Hook {
    pub const ALL: [Hook; 12] = [
        Hook::Start,
        Hook::Connect,
        Hook::Message,
        Hook::Close,
        Hook::Error,
        Hook::Request,
        Hook::Alarm,
        Hook::Timer,
        Hook::BeforeConnect,
        Hook::BeforeRequest,
        Hook::Cron,
        Hook::Answer,
    ];

    /// The hook's WIT name, as logs and labels show it.
    pub fn label(self) -> &'static str {
        match self {
            Hook::Start => "on-start",
            Hook::Connect => "on-connect",
            Hook::Message => "on-message",
            Hook::Close => "on-close",
            Hook::Error => "on-error",
            Hook::Request => "on-request",
            Hook::Alarm => "on-alarm",
            Hook::Timer => "on-timer",
            Hook::BeforeConnect => "on-before-connect",
            Hook::BeforeRequest => "on-before-request",
            Hook::Cron => "on-cron",
            Hook::Answer => "on-answer",
        }
    }
}

/// Why a hook or a wake failed; the `kind` label of
/// `dormouse_guest_traps_total` for the guest's own failures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Trap,
    Deadline,
    Memory,
    StackOverflow,
    Instantiate,
    /// Every awake-room slot stayed taken: not the guest's fault, so not
    /// a trap (`dormouse_pool_full_waits_total` counts the waits).
    PoolFull,
}

impl FailureKind {
    /// The kinds `dormouse_guest_traps_total` counts: the guest's failures.
    pub const TRAPS: [FailureKind; 5] = [
        FailureKind::Trap,
        FailureKind::Deadline,
        FailureKind::Memory,
        FailureKind::StackOverflow,
        FailureKind::Instantiate,
    ];

    pub fn label(self) -> &'static str {
        match self {
            FailureKind::Trap => "trap",
            FailureKind::Deadline => "deadline",
            FailureKind::Memory => "memory",
            FailureKind::StackOverflow => "stack-overflow",
            FailureKind::Instantiate => "instantiate",
            FailureKind::PoolFull => "pool-full",
        }
    }
}

/// All of the host's metrics.
#[derive(Default)]
pub struct Metrics {
    parties: Mutex<BTreeMap<String, Arc<PartyMetrics>>>,
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
    pub storage_commits: AtomicU64,
    pub component_cache_hits: AtomicU64,
    pub component_cache_misses: AtomicU64,
    /// Wakes that found every awake-room slot taken and waited for one.
    pub pool_full_waits: AtomicU64,
    /// Connections refused at accept: `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Requests whose body did not arrive within `body_timeout_ms`.
    pub body_timeouts: AtomicU64,
    /// Instances dropped (rooms hibernated), for the host's memory trim.
    pub hibernations: AtomicU64,
    pub wake_seconds: Histogram,
    /// By [`Hook`], in the order of [`Hook::ALL`].
    pub hook_seconds: [Histogram; Hook::ALL.len()],
}

/// The metrics labelled by party; a room keeps its party's `Arc`.
#[derive(Default)]
pub struct PartyMetrics {
    pub connections: AtomicI64,
    pub rooms_awake: AtomicI64,
    pub rooms_hibernated: AtomicI64,
    pub wakes: AtomicU64,
    /// Cron ticks run: [succeeded, failed].
    pub cron_runs: [AtomicU64; 2],
    /// By [`FailureKind`], in the order of [`FailureKind::TRAPS`].
    traps: [AtomicU64; FailureKind::TRAPS.len()],
}

impl Metrics {
    /// The metrics of one party, made on first use.
    pub fn party(&self, name: &str) -> Arc<PartyMetrics> {
        let mut parties = lock(&self.parties);
        parties.entry(name.to_owned()).or_default().clone()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let parties: Vec<(String, Arc<PartyMetrics>)> = {
            let parties = lock(&self.parties);
            parties
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        header(
            &mut out,
            "dormouse_connections",
            "gauge",
            "Open WebSocket connections.",
        );
        for (party, m) in &parties {
            let v = m.connections.load(Relaxed);
            let _ = writeln!(out, "dormouse_connections{{party=\"{party}\"}} {v}");
        }
        header(
            &mut out,
            "dormouse_rooms",
            "gauge",
            "Rooms known to the host, by state.",
        );
        for (party, m) in &parties {
            let awake = m.rooms_awake.load(Relaxed);
            let asleep = m.rooms_hibernated.load(Relaxed);
            let _ = writeln!(
                out,
                "dormouse_rooms{{party=\"{party}\",state=\"awake\"}} {awake}"
            );
            let _ = writeln!(
                out,
                "dormouse_rooms{{party=\"{party}\",state=\"hibernated\"}} {asleep}"
            );
        }
        header(
            &mut out,
            "dormouse_wakes_total",
            "counter",
            "Instances made for rooms.",
        );
        for (party, m) in &parties {
            let v = m.wakes.load(Relaxed);
            let _ = writeln!(out, "dormouse_wakes_total{{party=\"{party}\"}} {v}");
        }
        header(
            &mut out,
            "dormouse_cron_runs_total",
            "counter",
            "Cron ticks run, by result.",
        );
        for (party, m) in &parties {
            for (result, v) in ["ok", "failed"].iter().zip(&m.cron_runs) {
                let v = v.load(Relaxed);
                let _ = writeln!(
                    out,
                    "dormouse_cron_runs_total{{party=\"{party}\",result=\"{result}\"}} {v}"
                );
            }
        }
        header(
            &mut out,
            "dormouse_guest_traps_total",
            "counter",
            "Instances dropped because the guest failed.",
        );
        for (party, m) in &parties {
            for (kind, v) in FailureKind::TRAPS.iter().zip(&m.traps) {
                let (kind, v) = (kind.label(), v.load(Relaxed));
                let _ = writeln!(
                    out,
                    "dormouse_guest_traps_total{{party=\"{party}\",kind=\"{kind}\"}} {v}"
                );
            }
        }
        header(
            &mut out,
            "dormouse_messages_total",
            "counter",
            "WebSocket messages.",
        );
        let (inn, outt) = (
            self.messages_in.load(Relaxed),
            self.messages_out.load(Relaxed),
        );
        let _ = writeln!(out, "dormouse_messages_total{{direction=\"in\"}} {inn}");
        let _ = writeln!(out, "dormouse_messages_total{{direction=\"out\"}} {outt}");
        header(
            &mut out,
            "dormouse_storage_commits_total",
            "counter",
            "Storage transactions committed.",
        );
        let commits = self.storage_commits.load(Relaxed);
        let _ = writeln!(out, "dormouse_storage_commits_total {commits}");
        header(
            &mut out,
            "dormouse_component_cache_total",
            "counter",
            "Deployed versions loaded at start: precompiled (hit) or compiled (miss).",
        );
        let (hit, miss) = (
            self.component_cache_hits.load(Relaxed),
            self.component_cache_misses.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "dormouse_component_cache_total{{result=\"hit\"}} {hit}"
        );
        let _ = writeln!(
            out,
            "dormouse_component_cache_total{{result=\"miss\"}} {miss}"
        );
        header(
            &mut out,
            "dormouse_pool_full_waits_total",
            "counter",
            "Wakes that waited for an awake-room slot (past limits.awake_rooms).",
        );
        let waits = self.pool_full_waits.load(Relaxed);
        let _ = writeln!(out, "dormouse_pool_full_waits_total {waits}");
        for (name, help, value) in [
            (
                "dormouse_connections_refused_total",
                "Connections refused at accept: limits.max_connections were open.",
                &self.connections_refused,
            ),
            (
                "dormouse_body_timeouts_total",
                "Requests whose body did not arrive within limits.body_timeout_ms (408).",
                &self.body_timeouts,
            ),
        ] {
            header(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Relaxed));
        }
        header(
            &mut out,
            "dormouse_wake_seconds",
            "histogram",
            "Time to wake a room: instantiate and on-start.",
        );
        self.wake_seconds
            .render(&mut out, "dormouse_wake_seconds", "");
        header(
            &mut out,
            "dormouse_hook_seconds",
            "histogram",
            "Time spent in each hook.",
        );
        for (hook, h) in Hook::ALL.iter().zip(&self.hook_seconds) {
            let hook = hook.label();
            h.render(
                &mut out,
                "dormouse_hook_seconds",
                &format!("hook=\"{hook}\","),
            );
        }
        out
    }
}

/// A metric's `# HELP` and `# TYPE` lines.
/// A cluster node's counters (`cluster.rs` and the host count them).
#[derive(Default)]
pub struct ClusterMetrics {
    /// 1 while this node holds a valid lease.
    pub live: AtomicI64,
    pub claims: AtomicU64,
    pub self_fences: AtomicU64,
    /// Hook commits refused by the fence (another node held the room).
    pub fenced_commits: AtomicU64,
    pub commits: AtomicU64,
    pub commit_groups: AtomicU64,
    /// Sockets, requests and room-to-room calls sent to another node.
    pub forwards: AtomicU64,
    pub hand_offs: AtomicU64,
}

impl ClusterMetrics {
    /// The Prometheus text of the cluster's series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let series: [(&str, &str, &str, i64); 8] = [
            (
                "dormouse_cluster_live",
                "gauge",
                "1 while this node holds a valid lease.",
                self.live.load(Relaxed),
            ),
            (
                "dormouse_cluster_claims_total",
                "counter",
                "Rooms this node claimed (each bumps the room's epoch).",
                self.claims.load(Relaxed) as i64,
            ),
            (
                "dormouse_cluster_self_fences_total",
                "counter",
                "Times this node stopped serving because it could not renew its lease in time.",
                self.self_fences.load(Relaxed) as i64,
            ),
            (
                "dormouse_cluster_fenced_commits_total",
                "counter",
                "Hook commits refused because another node held the room.",
                self.fenced_commits.load(Relaxed) as i64,
            ),
            (
                "dormouse_cluster_commits_total",
                "counter",
                "Hook commits written to PostgreSQL.",
                self.commits.load(Relaxed) as i64,
            ),
            (
                "dormouse_cluster_commit_groups_total",
                "counter",
                "Transactions the group commit made (commits per group = commits / groups).",
                self.commit_groups.load(Relaxed) as i64,
            ),
            (
                "dormouse_cluster_forwards_total",
                "counter",
                "Sockets, requests and room-to-room calls forwarded to the node that holds their room.",
                self.forwards.load(Relaxed) as i64,
            ),
            (
                "dormouse_cluster_hand_offs_total",
                "counter",
                "Quiet rooms handed off to the node their clients come through.",
                self.hand_offs.load(Relaxed) as i64,
            ),
        ];
        for (name, kind, help, v) in series {
            header(&mut out, name, kind, help);
            let _ = writeln!(out, "{name} {v}");
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

impl PartyMetrics {
    /// Count a guest failure (a pool-full wake is not one).
    pub fn trap(&self, kind: FailureKind) {
        if let Some(i) = FailureKind::TRAPS.iter().position(|k| *k == kind) {
            self.traps[i].fetch_add(1, Relaxed);
        }
    }
}

/// Bucket bounds in seconds: 2.5 us to 10 s, dense where wakes and hooks land
/// (tens of microseconds), so quantiles read from them are meaningful.
const BOUNDS: [f64; 28] = [
    2.5e-6, 5e-6, 7.5e-6, 10e-6, 12.5e-6, 15e-6, 17.5e-6, 20e-6, 25e-6, 30e-6, 35e-6, 40e-6, 50e-6,
    60e-6, 75e-6, 100e-6, 150e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3, 100e-3, 500e-3,
    1.0, 10.0,
];

/// A fixed-bucket histogram.
#[derive(Default)]
pub struct Histogram {
    buckets: [AtomicU64; BOUNDS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BOUNDS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, n) in BOUNDS.iter().zip(&self.buckets) {
            cumulative += n.load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        let labels = match labels.trim_end_matches(',') {
            "" => String::new(),
            l => format!("{{{l}}}"),
        };
        let _ = writeln!(out, "{name}_sum{labels} {sum}");
        let _ = writeln!(out, "{name}_count{labels} {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_contract_names() {
        let m = Metrics::default();
        let p = m.party("main");
        p.connections.fetch_add(2, Relaxed);
        p.wakes.fetch_add(1, Relaxed);
        p.trap(FailureKind::Deadline);
        p.trap(FailureKind::PoolFull);
        m.wake_seconds.observe(Duration::from_micros(30));
        let text = m.render();
        assert!(text.contains("dormouse_connections{party=\"main\"} 2"));
        assert!(text.contains("dormouse_wakes_total{party=\"main\"} 1"));
        assert!(text.contains("dormouse_guest_traps_total{party=\"main\",kind=\"deadline\"} 1"));
        assert!(text.contains("dormouse_wake_seconds_bucket{le=\"0.000035\"} 1"));
        assert!(text.contains("dormouse_wake_seconds_count 1"));
        assert!(text.contains("dormouse_hook_seconds_count{hook=\"on-alarm\"} 0"));
        assert!(!text.contains("pool-full"), "not a guest failure");
    }
}
