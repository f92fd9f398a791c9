//! Host configuration: `dormouse.toml`, its defaults, and the limits guests and clients live within.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

/// Everything `dormouse serve` needs. Every field has the embedded default of
/// DESIGN.md, so an empty file (or none) is a valid configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the server listens.
    pub listen: SocketAddr,
    /// Where to serve `/_dormouse/metrics` and `/_dormouse/health` alone,
    /// for a scraper on a private port; `listen` then answers metrics with
    /// 404 (health stays on both, for load balancers).
    pub metrics_listen: Option<SocketAddr>,
    /// Where SQLite keeps room storage.
    pub data_dir: PathBuf,
    /// Where compiled components are cached, by content hash (default:
    /// `DATA/versions`). Hosts may share one: each component compiles once.
    pub compile_cache_dir: Option<PathBuf>,
    /// A `dormouse` executable that compiles components in a child process
    /// (`dormouse compile-component`), so the compiler's memory goes with
    /// it: set by the CLI. `None` compiles in this process.
    #[serde(skip)]
    pub compiler: Option<PathBuf>,
    /// How long an awake room waits for an event before it hibernates.
    pub idle_timeout_ms: u64,
    /// A folder served at `/` for paths that name no room (the PartyKit "static assets").
    pub public: Option<PathBuf>,
    /// How often the host pings each client; a client silent for two
    /// intervals is taken as gone (half-open TCP) and its room gets on-close.
    pub ping_interval_ms: u64,
    /// The admin API's bearer token, as `NAME:SECRET` or `SECRET` (named
    /// `default`); `dormouse serve` takes it from `DORMOUSE_TOKEN`, or makes
    /// one in the data dir (`admin_token`). Without one (`dormouse dev`, or
    /// a host built in code), the admin API answers only on loopback.
    pub admin_token: Option<String>,
    /// How many versions of each party are kept (rows, files and, in a
    /// cluster, PostgreSQL's copies of the components): an upload forgets
    /// the oldest past it, so a party deployed on every commit does not
    /// grow the disk for ever. Rollback reaches any kept version. 0 keeps
    /// every version.
    pub versions_kept: u32,
    pub limits: Limits,
    /// Parties by name.
    pub parties: BTreeMap<String, PartyConfig>,
    /// Several nodes on one PostgreSQL (`[cluster]`, or `serve --cluster`);
    /// `None` is the single node on its own SQLite.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: this node's place in a cluster (`docs/cluster.md`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The store of record, `postgres://USER@HOST:PORT/DB`.
    pub database: String,
    /// This node's name, the same across its restarts [default: the
    /// advertised address].
    #[serde(default)]
    pub node_id: String,
    /// Where the other nodes reach this one to forward a room's sockets
    /// and requests [default: the listen address].
    #[serde(default)]
    pub advertise: String,
    /// How long a node's lease lasts without renewal; a dead node's rooms
    /// are claimable this long after its last renewal.
    #[serde(default = "default_lease_ttl_ms")]
    pub lease_ttl_ms: u64,
    /// Record every commit's (epoch, seq, node) in `commit_log` and every
    /// claim in `ownership_log`, for the history checker
    /// (`dormouse-cluster-check`). Off in production: both grow by a row
    /// per commit or claim.
    #[serde(default)]
    pub audit: bool,
    /// Test-only: a node that trusts its own belief that it holds a room:
    /// no epoch or holder check in the write, no lease check before it, no
    /// self-fencing. The checker's negative control uses it to show that
    /// the fence is what keeps one writer per room.
    #[serde(default)]
    pub unfenced_writes: bool,
}

fn default_lease_ttl_ms() -> u64 {
    10_000
}

impl ClusterConfig {
    /// The defaults of what was left out: `advertise` is the listen
    /// address, and `node_id` the advertised address. An address other
    /// nodes cannot reach (0.0.0.0, `::`) is refused: every node would
    /// share one id and forward to itself.
    pub fn resolved(&self, listen: SocketAddr) -> anyhow::Result<ClusterConfig> {
        let mut c = self.clone();
        if c.advertise.is_empty() {
            c.advertise = listen.to_string();
        }
        if c.advertise
            .parse::<SocketAddr>()
            .is_ok_and(|a| a.ip().is_unspecified())
        {
            bail!(
                "the cluster address {} is not one other nodes can reach: set [cluster] advertise (or --advertise) to this node's own address",
                c.advertise
            );
        }
        if c.node_id.is_empty() {
            c.node_id = c.advertise.clone();
        }
        Ok(c)
    }
}

/// One party: a component (or a room crate to build into one) and its vars.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyConfig {
    /// The `.wasm` component.
    pub component: Option<PathBuf>,
    /// Or a room crate's folder, built at start (and on change in `dormouse dev`).
    #[serde(rename = "crate")]
    pub krate: Option<PathBuf>,
    /// Or a room built into the host, with no Wasm: only `"relay"`, the
    /// relay example in plain Rust, the baseline `dormouse bench` measures
    /// Wasm against.
    #[serde(default)]
    pub builtin: Option<String>,
    /// Values the room reads with `context.var`.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// This party's own bounds, where they differ from `[limits]`.
    #[serde(default)]
    pub limits: PartyLimits,
    /// Its crons (`[[parties.NAME.crons]]`): PartyKit's `"crons"`.
    #[serde(default)]
    pub crons: Vec<CronConfig>,
}

/// One cron of a party: at each tick of `schedule` (five fields, UTC, or an
/// `@alias`; see `cron.rs`) the host runs the party's on-cron with `name`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CronConfig {
    pub name: String,
    pub schedule: String,
}

/// The limits a party may set for itself (`[parties.NAME.limits]`). The rest
/// are the host's alone: key and value sizes are the storage contract, and
/// awake rooms, header timeout and alarm backoff are shared by every party.
/// Memory per instance may only be lowered: the host's value sizes the pool.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyLimits {
    pub hook_cpu_ms: Option<u64>,
    pub instance_memory_bytes: Option<usize>,
    pub message_bytes: Option<usize>,
    pub connection_state_bytes: Option<usize>,
    pub outbound_queue_bytes: Option<usize>,
    pub connections_per_room: Option<usize>,
    pub hook_write_bytes: Option<usize>,
    pub storage_bytes_per_room: Option<u64>,
}

/// The one builtin party: the relay example in plain Rust.
pub const BUILTIN_RELAY: &str = "relay";

/// What a queued message costs beyond its payload, for the outbound queue's
/// byte count: so a flood of empty messages is bounded too.
pub const MESSAGE_OVERHEAD: usize = 64;

/// The largest WebSocket message either way: what `message_bytes` may be
/// set to, and what a room may send. A client's messages are bounded by
/// `message_bytes`; a room's are not, because what a room must send can
/// outgrow what a client may: a 1 MiB Yjs document's sync answer is ~1.7 MB.
pub const MAX_MESSAGE_BYTES: usize = 32 << 20;

/// Bounds on guests and clients. Defaults follow DESIGN.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message from a client (and HTTP body), bytes; a
    /// room may send up to [`MAX_MESSAGE_BYTES`].
    pub message_bytes: usize,
    /// Largest connection state blob, bytes.
    pub connection_state_bytes: usize,
    /// Tags per connection.
    pub tags_per_connection: usize,
    /// Longest tag, bytes.
    pub tag_bytes: usize,
    /// Longest storage key, bytes.
    pub key_bytes: usize,
    /// Largest storage value, bytes.
    pub value_bytes: usize,
    /// CPU time one hook call may take, milliseconds.
    pub hook_cpu_ms: u64,
    /// Linear memory one instance may grow to, bytes.
    pub instance_memory_bytes: usize,
    /// Bytes queued to one connection (each message counted with
    /// [`MESSAGE_OVERHEAD`]) before it is closed as too slow (1008).
    pub outbound_queue_bytes: usize,
    /// Open connections one room may hold; past it an upgrade gets 503.
    /// None (the default): no cap below the machine's.
    pub connections_per_room: Option<usize>,
    /// How long a client may take to send its request headers (slowloris).
    pub header_timeout_ms: u64,
    /// How long a client may take to send a request's body, from its
    /// headers' end (on-request bodies and admin uploads); past it: 408.
    pub body_timeout_ms: u64,
    /// Open TCP connections a listener holds at once, sockets and HTTP
    /// alike (`metrics_listen` counts its own); past it a new connection
    /// gets a one-line 503 and is closed, and the open ones are kept. None (the default): no cap below the machine's
    /// file descriptor limit. Node-wide: a party cannot set it.
    pub max_connections: Option<usize>,
    /// Rooms awake at once (the pooling allocator's size).
    pub awake_rooms: u32,
    /// Bytes of an instance slot's memory (and of its tables) kept resident
    /// when its room hibernates, so the next wake on that slot takes fewer
    /// page faults. Every slot that was ever in use keeps this much, so it
    /// is paid for the busiest moment's awake rooms, for good; 0 gives
    /// everything back (see `instance::Runtime::new`).
    pub warm_slot_bytes: usize,
    /// The first retry of a failing on-alarm waits this long; each next one twice as long.
    pub alarm_retry_ms: u64,
    /// How long pending timers (`setTimeout`, `setInterval`) keep a room
    /// awake past its last event that was not a timer; then it hibernates
    /// as usual and its timers go. Long enough for any batching, debounce
    /// or game round between two client messages; bounded so a forgotten
    /// `setInterval` in a room nobody uses gives its memory back (a Durable
    /// Object would stay, billed, for ever). 0: timers never keep a room
    /// awake past its idle timeout.
    pub timers_awake_ms: u64,
    /// Bytes of keys and values one hook may write (its batch is held in
    /// host memory until it commits); past it a write gets `too-large`.
    pub hook_write_bytes: usize,
    /// Bytes of keys and values one room may keep in storage; past it a
    /// write gets `too-large`.
    pub storage_bytes_per_room: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            message_bytes: 1 << 20,
            connection_state_bytes: 16 << 10,
            tags_per_connection: 10,
            tag_bytes: 256,
            key_bytes: 2 << 10,
            value_bytes: 2 << 20,
            hook_cpu_ms: 5_000,
            instance_memory_bytes: 128 << 20,
            outbound_queue_bytes: 4 << 20,
            connections_per_room: None,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
            max_connections: None,
            awake_rooms: 1000,
            warm_slot_bytes: 0,
            alarm_retry_ms: 2_000,
            timers_awake_ms: 300_000,
            hook_write_bytes: 64 << 20,
            storage_bytes_per_room: 1 << 30,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 1999)),
            metrics_listen: None,
            data_dir: PathBuf::from(".dormouse"),
            compile_cache_dir: None,
            compiler: None,
            idle_timeout_ms: 10_000,
            public: None,
            ping_interval_ms: 30_000,
            admin_token: None,
            versions_kept: 20,
            limits: Limits::default(),
            parties: BTreeMap::new(),
            cluster: None,
        }
    }
}

impl Limits {
    /// A client's time to send a request body (`body_timeout_ms`).
    pub fn body_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.body_timeout_ms)
    }
}

impl Config {
    /// A party's vars; none for a party the config does not name (deployed only).
    pub fn vars(&self, party: &str) -> BTreeMap<String, String> {
        self.parties
            .get(party)
            .map(|p| p.vars.clone())
            .unwrap_or_default()
    }

    /// The component of each party. A party given as a `crate` is built by
    /// the `dormouse` command before the host starts (the build tooling is
    /// the CLI's, not the server library's), which sets its `component`.
    pub fn component(&self, name: &str) -> anyhow::Result<PathBuf> {
        let party = self
            .parties
            .get(name)
            .with_context(|| format!("no party named {name}"))?;
        match (&party.component, &party.krate) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(dir)) => bail!(
                "party {name}: its crate {} is not built yet (the dormouse command builds it)",
                dir.display()
            ),
            (None, None) => bail!("party {name}: give `component` or `crate`"),
        }
    }

    /// Read `dormouse.toml`. Relative paths in it are relative to the file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Config = toml::from_str(&text).map_err(|e| {
            // toml's own Display draws the line with a caret, over several
            // lines; a refusal here is one sentence with the line number.
            let line = e
                .span()
                .map_or(1, |s| text[..s.start].matches('\n').count() + 1);
            anyhow::anyhow!(
                "bad config {}, line {line}: {}",
                path.display(),
                e.message().trim_end()
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.compile_cache_dir = config.compile_cache_dir.map(|p| base.join(p));
        config.public = config.public.map(|p| base.join(p));
        for party in config.parties.values_mut() {
            party.component = party.component.as_ref().map(|c| base.join(c));
            party.krate = party.krate.as_ref().map(|c| base.join(c));
        }
        config
            .validate()
            .with_context(|| format!("bad config {}", path.display()))?;
        Ok(config)
    }

    /// Check what serde cannot: party names and limit ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, party) in &self.parties {
            if !crate::route::valid_party_name(name) {
                bail!("party name {name:?} does not match ^[a-z0-9_-]{{1,64}}$");
            }
            let sources = [
                party.component.is_some(),
                party.krate.is_some(),
                party.builtin.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                bail!(
                    "party {name}: give either `component` (a .wasm file) or `crate` (a room crate folder)"
                );
            }
            if party.builtin.as_deref().is_some_and(|b| b != BUILTIN_RELAY) {
                bail!("party {name}: the only builtin is \"{BUILTIN_RELAY}\"");
            }
            let mut names = std::collections::BTreeSet::new();
            for cron in &party.crons {
                if cron.name.is_empty() || cron.name.len() > 64 {
                    bail!(
                        "party {name}: a cron's name is 1 to 64 bytes ({:?})",
                        cron.name
                    );
                }
                if !names.insert(cron.name.as_str()) {
                    bail!("party {name}: two crons are named {:?}", cron.name);
                }
                if let Err(e) = crate::cron::Schedule::parse(&cron.schedule) {
                    bail!("party {name}: cron {:?}: {e}", cron.name);
                }
            }
        }
        check_limits(&self.limits, "limits")?;
        for name in self.parties.keys() {
            let l = self.party_limits(name);
            check_limits(&l, &format!("parties.{name}.limits"))?;
            if l.instance_memory_bytes > self.limits.instance_memory_bytes {
                bail!(
                    "parties.{name}.limits.instance_memory_bytes may not exceed limits.instance_memory_bytes ({})",
                    self.limits.instance_memory_bytes
                );
            }
        }
        if self.cluster.as_ref().is_some_and(|c| c.lease_ttl_ms < 1000) {
            bail!("cluster.lease_ttl_ms must be at least 1000");
        }
        if self.ping_interval_ms == 0 {
            bail!("ping_interval_ms must be at least 1");
        }
        Ok(())
    }

    /// The limits of one party: `[limits]` with its own overrides applied.
    pub fn party_limits(&self, name: &str) -> Limits {
        let mut l = self.limits.clone();
        let Some(p) = self.parties.get(name) else {
            return l;
        };
        let o = &p.limits;
        l.hook_cpu_ms = o.hook_cpu_ms.unwrap_or(l.hook_cpu_ms);
        l.instance_memory_bytes = o.instance_memory_bytes.unwrap_or(l.instance_memory_bytes);
        l.message_bytes = o.message_bytes.unwrap_or(l.message_bytes);
        l.connection_state_bytes = o.connection_state_bytes.unwrap_or(l.connection_state_bytes);
        l.outbound_queue_bytes = o.outbound_queue_bytes.unwrap_or(l.outbound_queue_bytes);
        l.connections_per_room = o.connections_per_room.or(l.connections_per_room);
        l.hook_write_bytes = o.hook_write_bytes.unwrap_or(l.hook_write_bytes);
        l.storage_bytes_per_room = o.storage_bytes_per_room.unwrap_or(l.storage_bytes_per_room);
        l
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
}

/// Ranges serde cannot check; `at` names the table in the message.
fn check_limits(l: &Limits, at: &str) -> anyhow::Result<()> {
    if l.message_bytes == 0 || l.message_bytes > MAX_MESSAGE_BYTES {
        bail!("{at}.message_bytes must be 1 byte to 32 MiB");
    }
    if l.awake_rooms == 0 {
        bail!("{at}.awake_rooms must be at least 1");
    }
    if l.outbound_queue_bytes == 0 {
        bail!("{at}.outbound_queue_bytes must be at least 1");
    }
    if l.hook_cpu_ms == 0 {
        bail!("{at}.hook_cpu_ms must be at least 1");
    }
    if l.instance_memory_bytes < 1 << 20 {
        bail!("{at}.instance_memory_bytes must be at least 1 MiB");
    }
    if l.connections_per_room == Some(0) {
        bail!("{at}.connections_per_room must be at least 1 (leave it out for no cap)");
    }
    if l.hook_write_bytes < l.key_bytes + l.value_bytes {
        bail!("{at}.hook_write_bytes must hold at least one largest key and value");
    }
    if l.header_timeout_ms == 0 {
        bail!("{at}.header_timeout_ms must be at least 1");
    }
    if l.body_timeout_ms == 0 {
        bail!("{at}.body_timeout_ms must be at least 1");
    }
    if l.max_connections == Some(0) {
        bail!("{at}.max_connections must be at least 1 (leave it out for no cap)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_default() {
        let config: Config = toml::from_str("").expect("empty config parses");
        assert_eq!(config.listen.to_string(), "127.0.0.1:1999");
        assert_eq!(config.idle_timeout_ms, 10_000);
        assert_eq!(config.limits.connection_state_bytes, 16384);
    }

    #[test]
    fn parties_and_unknown_fields() {
        let config: Config = toml::from_str(
            "idle_timeout_ms = 0\n[parties.main]\ncomponent = \"a.wasm\"\nvars = { K = \"v\" }\n",
        )
        .expect("config parses");
        assert_eq!(config.parties["main"].vars["K"], "v");
        config.validate().expect("valid");
        let mut both = config.clone();
        both.parties.get_mut("main").expect("main").krate = Some("x".into());
        assert!(both.validate().is_err());
        assert!(toml::from_str::<Config>("listen_on = 1").is_err());
        let mut bad = config.clone();
        bad.parties
            .insert("Bad".into(), config.parties["main"].clone());
        assert!(bad.validate().is_err());
    }

    #[test]
    fn a_bad_file_is_refused_in_one_sentence() {
        let dir = std::env::temp_dir().join(format!("dormouse-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let cases = [
            ("this is not toml", "line 1"),
            ("listen_on = 1", "unknown field `listen_on`"),
            ("idle_timeout_ms = \"soon\"", "invalid type"),
            ("\n\n[limits]\nhook_cpu_ms = -1", "line 4"),
            (
                "[parties.Main]\ncomponent = \"a.wasm\"",
                "party name \"Main\"",
            ),
            ("[parties.main]", "give either `component`"),
            ("[limits]\nmessage_bytes = 0", "limits.message_bytes"),
            (
                "[cluster]\ndatabase = \"postgres://x\"\nlease_ttl_ms = 10",
                "cluster.lease_ttl_ms",
            ),
            ("[cluster]\nnode_id = \"a\"", "missing field `database`"),
            ("[limits]\nconnections_per_room = 0", "connections_per_room"),
            (
                "[parties.main]\ncomponent = \"a.wasm\"\n[parties.main.limits]\ninstance_memory_bytes = 999999999999",
                "may not exceed",
            ),
            (
                "[parties.main]\ncomponent = \"a.wasm\"\n[parties.main.limits]\nkey_bytes = 1",
                "unknown field `key_bytes`",
            ),
        ];
        for (text, want) in cases {
            let path = dir.join("dormouse.toml");
            std::fs::write(&path, text).expect("write");
            let e = format!("{:#}", Config::load(&path).expect_err(text));
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(e.contains("dormouse.toml"), "{text:?}: {e}");
            assert!(!e.contains('\n'), "{text:?}: one line: {e}");
        }
        let path = dir.join("dormouse.toml");
        let good = "[parties.main]\ncomponent = \"a.wasm\"\n[parties.main.limits]\nhook_cpu_ms = 50\nconnections_per_room = 3";
        std::fs::write(&path, good).expect("write");
        let config = Config::load(&path).expect("a good file loads");
        let l = config.party_limits("main");
        assert_eq!((l.hook_cpu_ms, l.connections_per_room), (50, Some(3)));
        assert_eq!(config.party_limits("other").hook_cpu_ms, 5_000);
        // A cluster node named by nothing but its database: it advertises
        // its listen address, and that is its name.
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:2001\"\n[cluster]\ndatabase = \"postgres://x\"",
        )
        .expect("write");
        let config = Config::load(&path).expect("a bare [cluster] loads");
        let c = config
            .cluster
            .as_ref()
            .expect("cluster")
            .resolved(config.listen)
            .expect("a routable listen address");
        assert_eq!(
            (c.advertise.as_str(), c.node_id.as_str(), c.lease_ttl_ms),
            ("127.0.0.1:2001", "127.0.0.1:2001", 10_000)
        );
        // Listening on every interface says nothing of where peers reach it.
        let every = config.cluster.as_ref().expect("cluster");
        let refused = every
            .resolved("0.0.0.0:1999".parse().expect("an address"))
            .expect_err("0.0.0.0 is refused");
        assert!(refused.to_string().contains("advertise"), "{refused}");
        assert!(
            every
                .resolved("[::]:1999".parse().expect("an address"))
                .is_err()
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
