//! Crons on a cluster: each tick is claimed in PostgreSQL, in one statement
//! that only a node with a live lease can make, so a tick runs on one node
//! however many look at it (and a node fenced from the cluster runs none).

use super::{Cluster, ClusterError, bounded};

impl Cluster {
    /// The latest tick of a party's cron that any node claimed, if any.
    pub async fn cron_tick(&self, party: &str, cron: &str) -> Result<Option<u64>, ClusterError> {
        let row = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            Ok(client
                .query_opt(
                    "SELECT tick_ms FROM cron_ticks WHERE party = $1 AND cron = $2",
                    &[&party, &cron],
                )
                .await?)
        })
        .await?;
        Ok(row.map(|r| r.get::<_, i64>(0).max(0) as u64))
    }

    /// Claim a cron's tick: `true` for the one node whose statement moves
    /// the cron's last tick forward to `tick_ms`, and only while this
    /// incarnation's lease is live in the database's own clock.
    pub async fn claim_cron_tick(
        &self,
        party: &str,
        cron: &str,
        tick_ms: u64,
    ) -> Result<bool, ClusterError> {
        if !self.is_live() {
            return Err(ClusterError::Fenced);
        }
        let (node, inc) = (&self.config.node_id, self.inc());
        let tick = i64::try_from(tick_ms).unwrap_or(i64::MAX);
        let changed = bounded(&self.shared, async {
            let client = self.shared.get().await?;
            Ok(client
                .execute(
                    "INSERT INTO cron_ticks (party, cron, tick_ms)
                     SELECT $1, $2, $3
                     WHERE EXISTS (SELECT 1 FROM nodes WHERE node_id = $4
                         AND incarnation = $5 AND lease_expires > now())
                     ON CONFLICT (party, cron) DO UPDATE SET tick_ms = EXCLUDED.tick_ms
                     WHERE cron_ticks.tick_ms < EXCLUDED.tick_ms",
                    &[&party, &cron, &tick, node, &inc],
                )
                .await?)
        })
        .await?;
        Ok(changed == 1)
    }
}
