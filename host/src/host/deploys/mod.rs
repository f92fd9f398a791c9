//! Deploys, as the host runs them: upload, rollback and delete of a party
//! (one at a time per party), following the cluster's deploys, and the
//! version files with their compiled forms (`versions`). Deploy metadata is
//! the store's (`store::deploys`), or in a cluster the cluster's
//! PostgreSQL tables (`cluster/deploys.rs`).

pub mod versions;

use std::sync::Arc;

use super::{AdminError, Host};
use crate::lock::lock;
use crate::room::instance::Party;
use crate::room::{Event, RoomTx};
use crate::store::deploys::Version;

/// What a deploy did, for the one who deployed.
#[derive(serde::Serialize)]
pub struct Deployed {
    pub party: String,
    pub version: u32,
    pub hash: String,
    pub size: usize,
    /// Live rooms of the party: each picks the version up at its next wake.
    pub rooms: usize,
}

impl Host {
    /// Run blocking work of a deploy (SQLite, files, fsyncs) on tokio's
    /// blocking threads, never on the async workers that serve sockets.
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Host) -> Result<T, AdminError> + Send + 'static,
    ) -> Result<T, AdminError> {
        let host = self.clone();
        tokio::task::spawn_blocking(move || f(&host))
            .await
            .map_err(anyhow::Error::from)?
    }

    /// Compile a party as deploys do: through the compile cache, in a child
    /// process when the config names a compiler (`dormouse dev`'s rebuilds).
    pub fn compile(
        &self,
        name: &str,
        bytes: &[u8],
        vars: std::collections::BTreeMap<String, String>,
    ) -> anyhow::Result<Party> {
        self.versions
            .compile(self.runtime(), self.metrics(), name, bytes, vars)
    }

    /// Serve a new version of a party. Awake rooms of the party finish their
    /// current event and hibernate; their next wake runs the new version.
    /// No connection is touched.
    /// Returns how many live rooms will pick it up.
    pub async fn deploy(&self, party: Party) -> usize {
        let name = party.name.clone();
        self.metrics().party(&name);
        lock(&self.parties).insert(name.clone(), Arc::new(party));
        let rooms = self.rooms_of(&name);
        let n = rooms.len();
        for tx in rooms {
            let _ = tx.send(Event::Hibernate).await;
        }
        n
    }

    /// Hold a party's deploy lock.
    async fn deploying(&self, party: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock_ = lock(&self.deploying)
            .entry(party.to_owned())
            .or_default()
            .clone();
        lock_.lock_owned().await
    }

    /// Validate, store and serve an uploaded component as the party's next
    /// version. A refusal changes nothing: the old version keeps serving.
    pub async fn upload(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        token: &str,
    ) -> Result<Deployed, AdminError> {
        if !crate::route::valid_party_name(name) {
            return Err(AdminError::Refused(
                "party names match ^[a-z0-9_-]{1,64}$".into(),
            ));
        }
        let _deploying = self.deploying(name).await;
        let vars = self.config.vars(name);
        let host = self.clone();
        let (name_, token_) = (name.to_owned(), token.to_owned());
        let clustered = self.shared.cluster.is_some();
        // Compiling takes a while: keep it off the event loop.
        let (mut party, hash, bytes, _pin) = tokio::task::spawn_blocking(move || {
            let mut party = host
                .versions
                .compile(host.runtime(), host.metrics(), &name_, &bytes, vars)
                .map_err(|e| AdminError::Refused(format!("{e:#}")))?;
            let hash = crate::host::deploys::versions::hash(&bytes);
            // Held until the version is recorded (below, or in a cluster
            // once mirrored): another party's delete leaves the file alone.
            let pin = host.versions.pin(&hash);
            host.versions.save(&hash, &bytes)?;
            if !clustered {
                let kept = host.config.versions_kept;
                let (version, forgotten) =
                    host.deploys
                        .add_version(&name_, &hash, bytes.len(), &token_, kept)?;
                party.version = Some(version);
                host.versions
                    .remove(&forgotten, |h| host.deploys.in_use(h))?;
            }
            Ok::<_, AdminError>((party, hash, bytes, pin))
        })
        .await
        .map_err(anyhow::Error::from)??;
        let size = party.size;
        // In a cluster the version is the cluster's: stored with its bytes in
        // PostgreSQL and announced, so every node loads it (this one too).
        if let Some(cluster) = &self.shared.cluster {
            let v = cluster
                .add_version(name, &hash, &bytes, token, self.config.versions_kept)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?;
            party.version = Some(v);
            self.mirror(name).await?;
        }
        let version = party.version.unwrap_or_default();
        let rooms = self.deploy(party).await;
        Ok(Deployed {
            party: name.to_owned(),
            version,
            hash,
            size,
            rooms,
        })
    }

    /// Serve an earlier version again (the one before the active one by default).
    pub async fn rollback(
        self: &Arc<Self>,
        name: &str,
        to: Option<u32>,
    ) -> Result<Deployed, AdminError> {
        let _deploying = self.deploying(name).await;
        let (versions, active) = match &self.shared.cluster {
            Some(c) => c
                .versions(name)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?,
            None => {
                let name = name.to_owned();
                self.blocking(move |h| Ok(h.deploys.versions(&name)?))
                    .await?
            }
        };
        let target = match to {
            Some(v) => versions.iter().find(|x| x.version == v),
            None => versions.iter().rev().find(|x| Some(x.version) < active),
        };
        let Some(target) = target.cloned() else {
            return Err(AdminError::Refused(format!(
                "party {name} has no such earlier version"
            )));
        };
        let vars = self.config.vars(name);
        let host = self.clone();
        let (name_, hash) = (name.to_owned(), target.hash.clone());
        let mut party = tokio::task::spawn_blocking(move || {
            host.versions
                .load(host.runtime(), host.metrics(), &name_, &hash, vars)
        })
        .await
        .map_err(anyhow::Error::from)??;
        party.version = Some(target.version);
        match &self.shared.cluster {
            Some(c) => {
                c.activate(name, target.version)
                    .await
                    .map_err(|e| AdminError::Failed(e.into()))?;
                self.mirror(name).await?;
            }
            None => {
                let (name, version) = (name.to_owned(), target.version);
                self.blocking(move |h| Ok(h.deploys.activate(&name, version)?))
                    .await?
            }
        }
        let rooms = self.deploy(party).await;
        Ok(Deployed {
            party: name.to_owned(),
            version: target.version,
            hash: target.hash,
            size: target.size,
            rooms,
        })
    }

    /// Stop serving a party and forget it: its rooms close their
    /// connections (1001) and leave the registry, and its storage, alarms
    /// and version files are deleted. Hooks still running cannot commit
    /// after this (storage fences them), so a redeploy starts empty.
    pub async fn delete_party(self: &Arc<Self>, name: &str) -> Result<(), AdminError> {
        let _deploying = self.deploying(name).await;
        if !lock(&self.parties).contains_key(name) {
            return Err(AdminError::NotFound(format!(
                "no party named {name:?} is deployed"
            )));
        }
        if let Some(c) = &self.shared.cluster {
            c.delete_party(name)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?;
        }
        self.forget_party(name).await
    }

    /// A party's local side of a delete: its rooms, alarms, data, versions
    /// and files on this node.
    async fn forget_party(self: &Arc<Self>, name: &str) -> Result<(), AdminError> {
        lock(&self.parties).remove(name);
        // Out of the registry first: a later connect starts a fresh actor.
        let evicted: Vec<RoomTx> = lock(&self.rooms)
            .extract_if(|(p, _), _| **p == *name)
            .map(|(_, e)| e.tx)
            .collect();
        for tx in evicted {
            let _ = tx
                .send(Event::Evict {
                    code: 1001,
                    reason: "party deleted",
                })
                .await;
        }
        self.shared.alarms.clear_party(name);
        let name = name.to_owned();
        self.blocking(move |h| {
            h.shared
                .storage
                .delete_party(&name)
                .map_err(anyhow::Error::from)?;
            let orphans = h.deploys.delete(&name)?;
            h.versions.remove(&orphans, |hash| h.deploys.in_use(hash))?;
            Ok(())
        })
        .await
    }

    /// In a cluster: copy a party's versions from the cluster into this
    /// node's deploy metadata (for `dormouse versions`, and for the next start).
    async fn mirror(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<(Vec<Version>, u32)>, AdminError> {
        let Some(cluster) = &self.shared.cluster else {
            return Ok(None);
        };
        let (versions, active) = cluster
            .versions(name)
            .await
            .map_err(|e| AdminError::Failed(e.into()))?;
        let name = name.to_owned();
        self.blocking(move |h| {
            let forgotten = h.deploys.mirror(&name, &versions, active)?;
            h.versions
                .remove(&forgotten, |hash| h.deploys.in_use(hash))?;
            Ok(active.map(|a| (versions, a)))
        })
        .await
    }

    /// In a cluster: serve what the cluster says is a party's active version
    /// (after an announcement, or at start). A party deleted in the cluster
    /// is forgotten here; the component comes from PostgreSQL when this node
    /// has not got its file.
    pub(in crate::host) async fn follow_deploy(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<(), AdminError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(());
        };
        let _deploying = self.deploying(name).await;
        let Some((versions, active)) = self.mirror(name).await? else {
            if self.party(name).is_some_and(|p| p.version.is_some()) {
                tracing::info!(party = name, "party deleted in the cluster");
                self.forget_party(name).await?;
            }
            return Ok(());
        };
        if self.party(name).and_then(|p| p.version) == Some(active) {
            return Ok(());
        }
        let Some(v) = versions.into_iter().find(|v| v.version == active) else {
            return Ok(());
        };
        if !self.versions.has(&v.hash) {
            let bytes = cluster
                .component(&v.hash)
                .await
                .map_err(|e| AdminError::Failed(e.into()))?;
            let hash = v.hash.clone();
            self.blocking(move |h| {
                // Recorded already (mirrored above); pinned while it is written.
                let _pin = h.versions.pin(&hash);
                Ok(h.versions.save(&hash, &bytes)?)
            })
            .await?;
        }
        let host = self.clone();
        let (name_, hash) = (name.to_owned(), v.hash.clone());
        let vars = self.config.vars(name);
        let mut party = tokio::task::spawn_blocking(move || {
            host.versions
                .load(host.runtime(), host.metrics(), &name_, &hash, vars)
        })
        .await
        .map_err(anyhow::Error::from)??;
        party.version = Some(active);
        tracing::info!(
            party = name,
            version = active,
            "serving the cluster's version"
        );
        self.deploy(party).await;
        Ok(())
    }

    /// In a cluster: follow every party the cluster has deployed.
    pub async fn follow_deploys(self: &Arc<Self>) -> Result<(), AdminError> {
        let Some(cluster) = self.shared.cluster.clone() else {
            return Ok(());
        };
        let mut names = cluster
            .deployed()
            .await
            .map_err(|e| AdminError::Failed(e.into()))?;
        names.extend(self.deploys.deployed()?.into_iter().map(|(n, _)| n));
        names.sort();
        names.dedup();
        for name in names {
            if let Err(e) = self.follow_deploy(&name).await {
                tracing::error!(party = name, "cannot load the cluster's version: {e}");
            }
        }
        Ok(())
    }
}
