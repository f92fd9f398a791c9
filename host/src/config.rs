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
    /// Where SQLite keeps room storage.
    pub data_dir: PathBuf,
    /// How long an awake room waits for an event before it hibernates.
    pub idle_timeout_ms: u64,
    /// A folder served at `/` for paths that name no room (the PartyKit "static assets").
    pub public: Option<PathBuf>,
    /// How often the host pings each client; a client silent for two
    /// intervals is taken as gone (half-open TCP) and its room gets on-close.
    pub ping_interval_ms: u64,
    /// The admin API's bearer token, as `NAME:SECRET` or `SECRET` (named
    /// `default`); `dormouse serve` takes it from `DORMOUSE_TOKEN`. Without
    /// one, the admin API answers only on loopback.
    pub admin_token: Option<String>,
    pub limits: Limits,
    /// Parties by name.
    pub parties: BTreeMap<String, PartyConfig>,
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
    /// Values the room reads with `context.var`.
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
}

/// Bounds on guests and clients. Defaults follow DESIGN.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest WebSocket message (and HTTP body), bytes.
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
    /// Messages queued to one connection before it is closed as too slow (1008).
    pub outbound_queue: usize,
    /// Rooms awake at once (the pooling allocator's size).
    pub awake_rooms: u32,
    /// The first retry of a failing on-alarm waits this long; each next one twice as long.
    pub alarm_retry_ms: u64,
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
            outbound_queue: 1024,
            awake_rooms: 1000,
            alarm_retry_ms: 2_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 1999)),
            data_dir: PathBuf::from(".dormouse"),
            idle_timeout_ms: 10_000,
            public: None,
            ping_interval_ms: 30_000,
            admin_token: None,
            limits: Limits::default(),
            parties: BTreeMap::new(),
        }
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

    /// The component of each party: its `component`, or its `crate` built now.
    pub fn component(&self, name: &str) -> anyhow::Result<PathBuf> {
        let party = self
            .parties
            .get(name)
            .with_context(|| format!("no party named {name}"))?;
        match (&party.component, &party.krate) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some(dir)) => crate::project::build(dir)
                .with_context(|| format!("party {name}: cannot build {}", dir.display())),
            (None, None) => bail!("party {name}: give `component` or `crate`"),
        }
    }

    /// Read `dormouse.toml`. Relative paths in it are relative to the file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        let mut config: Config =
            toml::from_str(&text).with_context(|| format!("bad config {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.data_dir = base.join(&config.data_dir);
        config.public = config.public.map(|p| base.join(p));
        for party in config.parties.values_mut() {
            party.component = party.component.as_ref().map(|c| base.join(c));
            party.krate = party.krate.as_ref().map(|c| base.join(c));
        }
        config.validate()?;
        Ok(config)
    }

    /// Check what serde cannot: party names and limit ranges.
    pub fn validate(&self) -> anyhow::Result<()> {
        for (name, party) in &self.parties {
            if !crate::route::valid_party_name(name) {
                bail!("party name {name:?} does not match ^[a-z0-9_-]{{1,64}}$");
            }
            if party.component.is_some() == party.krate.is_some() {
                bail!(
                    "party {name}: give either `component` (a .wasm file) or `crate` (a room crate folder)"
                );
            }
        }
        let l = &self.limits;
        if l.message_bytes == 0 || l.message_bytes > 32 << 20 {
            bail!("limits.message_bytes must be 1 byte to 32 MiB");
        }
        if l.awake_rooms == 0 {
            bail!("limits.awake_rooms must be at least 1");
        }
        if l.outbound_queue == 0 {
            bail!("limits.outbound_queue must be at least 1");
        }
        if self.ping_interval_ms == 0 {
            bail!("ping_interval_ms must be at least 1");
        }
        if l.hook_cpu_ms == 0 {
            bail!("limits.hook_cpu_ms must be at least 1");
        }
        Ok(())
    }

    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_timeout_ms)
    }
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
}
