//! What the admin API shows of the host: live rooms (and in a cluster,
//! which node holds each), parties and their versions, and the metrics page.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use super::{AdminError, Host};
use crate::cluster::Cluster;
use crate::lock::lock;
use crate::room::state::RoomStatus;
use crate::route::RoomKey;

/// One line of `GET /_dormouse/rooms`.
#[derive(serde::Serialize)]
pub struct RoomInfo {
    pub party: String,
    pub room: String,
    pub state: &'static str,
    pub connections: u64,
    pub last_event_ms: u64,
    pub storage_bytes: u64,
    /// In a cluster: the node that holds the room.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Host {
    /// The Prometheus text: the host's series, and a cluster node's.
    pub fn render_metrics(&self) -> String {
        let mut out = self.shared.metrics.render();
        if let Some(c) = &self.shared.cluster {
            out += &c.metrics.render();
        }
        out
    }

    /// The live rooms and their state. Storage sizes come from one query,
    /// off the async runtime.
    pub async fn rooms(self: &Arc<Self>) -> Result<Vec<RoomInfo>, AdminError> {
        let host = self.clone();
        let sizes = tokio::task::spawn_blocking(move || host.shared.storage.room_sizes())
            .await
            .map_err(anyhow::Error::from)?
            .map_err(anyhow::Error::from)?;
        let live: Vec<(RoomKey, Arc<RoomStatus>)> = lock(&self.rooms)
            .iter()
            .map(|(k, e)| (k.clone(), e.status.clone()))
            .collect();
        let mut out: Vec<RoomInfo> = live
            .into_iter()
            .map(|((party, room), s)| RoomInfo {
                storage_bytes: sizes
                    .get(&(party.to_string(), room.to_string()))
                    .copied()
                    .unwrap_or(0),
                party: party.to_string(),
                room: room.to_string(),
                state: if s.awake.load(Relaxed) {
                    "awake"
                } else {
                    "hibernated"
                },
                connections: s.connections.load(Relaxed),
                last_event_ms: s.last_event_ms.load(Relaxed),
                node: None,
            })
            .collect();
        if let Some(cluster) = &self.shared.cluster {
            self.cluster_rooms(cluster, &mut out).await?;
        }
        out.sort_by(|a, b| (&a.party, &a.room).cmp(&(&b.party, &b.room)));
        Ok(out)
    }

    /// In a cluster, `rooms` covers every node: this node's live rooms get
    /// their holder and stored size from PostgreSQL, and the rooms other
    /// nodes hold are added (their state is theirs: `elsewhere` here).
    async fn cluster_rooms(
        &self,
        cluster: &Cluster,
        out: &mut Vec<RoomInfo>,
    ) -> Result<(), AdminError> {
        let held = cluster
            .held_rooms()
            .await
            .map_err(|e| AdminError::Failed(e.into()))?;
        let mut by_key: HashMap<(String, String), (String, u64)> = held
            .into_iter()
            .map(|(p, r, node, bytes)| ((p, r), (node, bytes)))
            .collect();
        for info in out.iter_mut() {
            info.node = Some(cluster.node_id().to_owned());
            if let Some((_, bytes)) = by_key.remove(&(info.party.clone(), info.room.clone())) {
                info.storage_bytes = bytes;
            }
        }
        out.extend(
            by_key
                .into_iter()
                .map(|((party, room), (node, bytes))| RoomInfo {
                    party,
                    room,
                    state: "elsewhere",
                    connections: 0,
                    last_event_ms: 0,
                    storage_bytes: bytes,
                    node: Some(node),
                }),
        );
        Ok(())
    }

    /// Deployed and configured parties with their versions.
    pub fn parties(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut names: Vec<String> = lock(&self.parties).keys().cloned().collect();
        names.sort();
        names
            .into_iter()
            .map(|name| {
                let (versions, active) = self.deploys.versions(&name)?;
                let served = self.party(&name);
                Ok(serde_json::json!({
                    "party": name,
                    "active": active,
                    // What serves: the active version, unless its file was
                    // found torn at start and an earlier one took over.
                    "serving": served.as_ref().and_then(|p| p.version),
                    "size": served.map_or(0, |p| p.size),
                    "source": if active.is_some() { "deployed" } else { "config" },
                    "versions": versions,
                }))
            })
            .collect()
    }
}
