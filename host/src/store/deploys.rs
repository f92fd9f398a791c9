//! Deploy metadata: each party's versions and which one is active, in
//! SQLite, behind one narrow interface. The components themselves are files
//! (`host/deploys/versions.rs`); room data is the rest of `store/`.

use std::path::Path;
use std::sync::Mutex;

use anyhow::Context;
use rusqlite::{Connection, OptionalExtension, params};

use crate::clock::now_ms;
use crate::lock::lock;

/// One deployed version of a party.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Version {
    pub version: u32,
    /// SHA-256 of the component, hex.
    pub hash: String,
    pub size: usize,
    pub created_ms: u64,
    /// The name of the admin token that deployed it.
    pub token: String,
}

/// The deploy metadata store: its own connection to the data dir's SQLite
/// file. Deploys are rare and serialized per party by the host.
pub struct Deploys {
    conn: Mutex<Connection>,
}

impl Deploys {
    /// Open (or create) the metadata tables in `DIR/dormouse.sqlite3`.
    pub fn open(dir: &Path) -> anyhow::Result<Deploys> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
        let path = dir.join("dormouse.sqlite3");
        let conn = Connection::open(&path)
            .with_context(|| format!("cannot open storage {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .and_then(|()| {
                conn.execute_batch(
                    "PRAGMA journal_mode = WAL;
                     PRAGMA synchronous = FULL;
                     CREATE TABLE IF NOT EXISTS versions (
                         party TEXT NOT NULL, version INTEGER NOT NULL, hash TEXT NOT NULL,
                         size INTEGER NOT NULL, created_ms INTEGER NOT NULL, token TEXT NOT NULL,
                         PRIMARY KEY (party, version));
                     CREATE TABLE IF NOT EXISTS parties (
                         party TEXT PRIMARY KEY, version INTEGER NOT NULL);",
                )
            })
            .with_context(|| format!("cannot set up storage {}", path.display()))?;
        Ok(Deploys {
            conn: Mutex::new(conn),
        })
    }

    /// Record a new version of a party and make it the active one, keeping
    /// at most `kept` versions of it (0: all). Its number, and the component
    /// hashes no version uses any more, whose files can go.
    pub fn add_version(
        &self,
        party: &str,
        hash: &str,
        size: usize,
        token: &str,
        kept: u32,
    ) -> anyhow::Result<(u32, Vec<String>)> {
        let conn = lock(&self.conn);
        let tx = conn.unchecked_transaction()?;
        let before = hashes(&tx, party)?;
        let version: u32 = tx.query_row(
            "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE party = ?1",
            params![party],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO versions (party, version, hash, size, created_ms, token)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![party, version, hash, size as i64, now_ms() as i64, token],
        )?;
        tx.execute(
            "INSERT INTO parties (party, version) VALUES (?1, ?2)
             ON CONFLICT (party) DO UPDATE SET version = excluded.version",
            params![party, version],
        )?;
        if kept > 0 {
            tx.execute(
                "DELETE FROM versions WHERE party = ?1 AND version <= ?2",
                params![party, version.saturating_sub(kept)],
            )?;
        }
        let orphans = unused(&tx, before)?;
        tx.commit()?;
        Ok((version, orphans))
    }

    /// Make an earlier version of a party the active one.
    pub fn activate(&self, party: &str, version: u32) -> anyhow::Result<()> {
        lock(&self.conn).execute(
            "UPDATE parties SET version = ?2 WHERE party = ?1",
            params![party, version],
        )?;
        Ok(())
    }

    /// Forget a party's versions. Returns the component hashes no other
    /// party uses, whose files can go.
    pub fn delete(&self, party: &str) -> anyhow::Result<Vec<String>> {
        let conn = lock(&self.conn);
        let tx = conn.unchecked_transaction()?;
        let orphans = tx
            .prepare(
                "SELECT DISTINCT hash FROM versions WHERE party = ?1
                 AND hash NOT IN (SELECT hash FROM versions WHERE party != ?1)",
            )?
            .query_map(params![party], |r| r.get(0))?
            .collect::<rusqlite::Result<Vec<String>>>()?;
        for table in ["parties", "versions"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE party = ?1"),
                params![party],
            )?;
        }
        tx.commit()?;
        Ok(orphans)
    }

    /// Whether any party has a version with this component.
    pub fn in_use(&self, hash: &str) -> anyhow::Result<bool> {
        let conn = lock(&self.conn);
        let found = conn
            .prepare_cached("SELECT 1 FROM versions WHERE hash = ?1 LIMIT 1")?
            .query_row(params![hash], |_| Ok(()))
            .optional()?;
        Ok(found.is_some())
    }

    /// Make this store's record of a party the given one (a cluster's
    /// node mirrors PostgreSQL's): these versions, this one active. Returns
    /// the component hashes no version uses any more (the cluster forgot
    /// them), whose files can go.
    pub fn mirror(
        &self,
        party: &str,
        versions: &[Version],
        active: Option<u32>,
    ) -> anyhow::Result<Vec<String>> {
        let conn = lock(&self.conn);
        let tx = conn.unchecked_transaction()?;
        let before = hashes(&tx, party)?;
        for table in ["parties", "versions"] {
            tx.execute(
                &format!("DELETE FROM {table} WHERE party = ?1"),
                params![party],
            )?;
        }
        for v in versions {
            tx.execute(
                "INSERT INTO versions (party, version, hash, size, created_ms, token)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    party,
                    v.version,
                    v.hash,
                    v.size as i64,
                    v.created_ms as i64,
                    v.token
                ],
            )?;
        }
        if let Some(active) = active {
            tx.execute(
                "INSERT INTO parties (party, version) VALUES (?1, ?2)",
                params![party, active],
            )?;
        }
        let orphans = unused(&tx, before)?;
        tx.commit()?;
        Ok(orphans)
    }

    /// Every version of a party, oldest first, and which one is active.
    pub fn versions(&self, party: &str) -> anyhow::Result<(Vec<Version>, Option<u32>)> {
        let conn = lock(&self.conn);
        let versions = conn
            .prepare(
                "SELECT version, hash, size, created_ms, token FROM versions
                 WHERE party = ?1 ORDER BY version",
            )?
            .query_map(params![party], |r| {
                Ok(Version {
                    version: r.get(0)?,
                    hash: r.get(1)?,
                    size: r.get::<_, i64>(2)? as usize,
                    created_ms: r.get::<_, i64>(3)? as u64,
                    token: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let active = conn
            .query_row(
                "SELECT version FROM parties WHERE party = ?1",
                params![party],
                |r| r.get(0),
            )
            .optional()?;
        Ok((versions, active))
    }

    /// Deployed parties with their active version.
    pub fn deployed(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let conn = lock(&self.conn);
        let rows = conn
            .prepare("SELECT party, version FROM parties ORDER BY party")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(rows)
    }
}

/// The component hashes a party's versions use.
fn hashes(tx: &rusqlite::Transaction, party: &str) -> rusqlite::Result<Vec<String>> {
    tx.prepare("SELECT DISTINCT hash FROM versions WHERE party = ?1")?
        .query_map(params![party], |r| r.get(0))?
        .collect()
}

/// Of `hashes`, those no version of any party uses.
fn unused(tx: &rusqlite::Transaction, hashes: Vec<String>) -> rusqlite::Result<Vec<String>> {
    let mut used = tx.prepare("SELECT 1 FROM versions WHERE hash = ?1 LIMIT 1")?;
    let mut out = Vec::new();
    for h in hashes {
        if !used.exists(params![h])? {
            out.push(h);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_activate_and_delete() {
        let dir = std::env::temp_dir().join(format!("dormouse-deploys-{}", uuid::Uuid::new_v4()));
        let d = Deploys::open(&dir).expect("opens");
        let add = |party, hash| d.add_version(party, hash, 10, "ci", 0).expect("add");
        assert_eq!(add("a", "h1"), (1, vec![]));
        assert_eq!(add("a", "h2"), (2, vec![]));
        assert_eq!(add("b", "h1"), (1, vec![]));
        d.activate("a", 1).expect("activate");
        let (versions, active) = d.versions("a").expect("versions");
        assert_eq!((versions.len(), active), (2, Some(1)));
        assert_eq!(
            d.deployed().expect("deployed"),
            [("a".into(), 1), ("b".into(), 1)]
        );
        // h1 is still b's: only h2 is an orphan.
        assert_eq!(d.delete("a").expect("delete"), ["h2"]);
        let (versions, active) = d.versions("a").expect("versions");
        assert!(versions.is_empty() && active.is_none());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_upload_forgets_versions_past_the_bound() {
        let dir = std::env::temp_dir().join(format!("dormouse-deploys-{}", uuid::Uuid::new_v4()));
        let d = Deploys::open(&dir).expect("opens");
        let add = |party, hash| d.add_version(party, hash, 10, "ci", 2).expect("add");
        assert_eq!(add("a", "h1"), (1, vec![]));
        assert_eq!(add("b", "h1"), (1, vec![]));
        assert_eq!(add("a", "h2"), (2, vec![]));
        // Version 1 goes; h1 stays b's.
        assert_eq!(add("a", "h3"), (3, vec![]));
        // Version 2 goes, and h2 with it.
        assert_eq!(add("a", "h3"), (4, vec!["h2".to_owned()]));
        let (versions, active) = d.versions("a").expect("versions");
        let numbers: Vec<u32> = versions.iter().map(|v| v.version).collect();
        assert_eq!((numbers, active), (vec![3, 4], Some(4)));
        let _ = std::fs::remove_dir_all(dir);
    }
}
