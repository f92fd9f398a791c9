//! Deploys in the cluster: components and each party's active version live
//! in PostgreSQL, and every deploy is announced with NOTIFY.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_postgres::{Client, NoTls};
use tracing::warn;

use super::{Cluster, ClusterError, STATEMENT, bounded};
use crate::store::deploys::Version;

/// The channel on which a deploy, rollback or delete names its party.
const DEPLOYS: &str = "dormouse_deploys";

/// Forget the components no version uses.
const UNUSED_COMPONENTS: &str =
    "DELETE FROM components c WHERE NOT EXISTS (SELECT 1 FROM versions v WHERE v.hash = c.hash)";

/// Deploys: the components and which version of each party is active live
/// in PostgreSQL; a deploy to any node announces its party on [`DEPLOYS`],
/// and every node then loads that party's active version.
impl Cluster {
    /// A connection of its own, for a transaction (deploys are rare).
    async fn own_connection(&self) -> Result<Client, ClusterError> {
        let connect = tokio_postgres::connect(&self.config.database, NoTls);
        let (client, connection) = timeout(STATEMENT, connect).await.map_err(|_| {
            ClusterError::Unavailable("connecting to PostgreSQL timed out".into())
        })??;
        tokio::spawn(connection);
        Ok(client)
    }

    /// Store a component as the party's next version, make it active and
    /// announce it; its number.
    pub async fn add_version(
        &self,
        party: &str,
        hash: &str,
        bytes: &[u8],
        token: &str,
        kept: u32,
    ) -> Result<u32, ClusterError> {
        let mut client = self.own_connection().await?;
        let tx = client.transaction().await?;
        // Two nodes deploying one party at once take turns.
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&party])
            .await?;
        tx.execute(
            "INSERT INTO components (hash, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&hash, &bytes],
        )
        .await?;
        let version: i32 = tx
            .query_one(
                "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE party = $1",
                &[&party],
            )
            .await?
            .get(0);
        let now = crate::clock::now_ms() as i64;
        tx.execute(
            "INSERT INTO versions (party, version, hash, size, created_ms, token)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[&party, &version, &hash, &(bytes.len() as i64), &now, &token],
        )
        .await?;
        tx.execute(
            "INSERT INTO parties (party, version) VALUES ($1, $2)
             ON CONFLICT (party) DO UPDATE SET version = EXCLUDED.version",
            &[&party, &version],
        )
        .await?;
        // At most `kept` versions (0: all); the components they alone used
        // go with them (each node removes its files when it mirrors).
        if kept > 0 {
            let oldest_kept = version - kept.min(i32::MAX as u32) as i32;
            tx.execute(
                "DELETE FROM versions WHERE party = $1 AND version <= $2",
                &[&party, &oldest_kept],
            )
            .await?;
            tx.execute(UNUSED_COMPONENTS, &[]).await?;
        }
        tx.execute("SELECT pg_notify($1, $2)", &[&DEPLOYS, &party])
            .await?;
        tx.commit().await?;
        Ok(version as u32)
    }

    /// Make an existing version of a party the active one, and announce it.
    pub async fn activate(&self, party: &str, version: u32) -> Result<(), ClusterError> {
        let mut client = self.own_connection().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "UPDATE parties SET version = $2 WHERE party = $1",
            &[&party, &(version as i32)],
        )
        .await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&DEPLOYS, &party])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forget a party everywhere: its versions, its rooms' data and alarms,
    /// and components no other party uses; then announce it. Each room's
    /// epoch moves on (rows are kept, not deleted), so a hook still running
    /// on any node is fenced and cannot bring its writes back.
    pub async fn delete_party(&self, party: &str) -> Result<(), ClusterError> {
        let mut client = self.own_connection().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&party])
            .await?;
        tx.execute(
            "UPDATE rooms SET epoch = epoch + 1, owner_node = NULL, owner_inc = NULL,
               alarm_ms = NULL, bytes = 0, sql_seq = 0 WHERE party = $1",
            &[&party],
        )
        .await?;
        for sql in [
            "DELETE FROM room_kv WHERE party = $1",
            "DELETE FROM room_sql_log WHERE party = $1",
            "DELETE FROM room_sql_snapshot WHERE party = $1",
            "DELETE FROM parties WHERE party = $1",
            "DELETE FROM versions WHERE party = $1",
            "DELETE FROM cron_ticks WHERE party = $1",
        ] {
            tx.execute(sql, &[&party]).await?;
        }
        tx.execute(UNUSED_COMPONENTS, &[]).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&DEPLOYS, &party])
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every version of a party, oldest first, and the active one.
    pub async fn versions(&self, party: &str) -> Result<(Vec<Version>, Option<u32>), ClusterError> {
        bounded(&self.shared, async {
            let client = self.shared.get().await?;
            let rows = client
                .query(
                    "SELECT version, hash, size, created_ms, token FROM versions
                     WHERE party = $1 ORDER BY version",
                    &[&party],
                )
                .await?;
            let versions = rows
                .iter()
                .map(|r| Version {
                    version: r.get::<_, i32>(0) as u32,
                    hash: r.get(1),
                    size: r.get::<_, i64>(2) as usize,
                    created_ms: r.get::<_, i64>(3) as u64,
                    token: r.get(4),
                })
                .collect();
            let active = client
                .query_opt("SELECT version FROM parties WHERE party = $1", &[&party])
                .await?
                .map(|r| r.get::<_, i32>(0) as u32);
            Ok((versions, active))
        })
        .await
    }

    /// Every deployed party's name.
    pub async fn deployed(&self) -> Result<Vec<String>, ClusterError> {
        bounded(&self.shared, async {
            let client = self.shared.get().await?;
            let rows = client.query("SELECT party FROM parties", &[]).await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
        .await
    }

    /// A stored component's bytes.
    pub async fn component(&self, hash: &str) -> Result<Vec<u8>, ClusterError> {
        bounded(&self.shared, async {
            let client = self.shared.get().await?;
            let row = client
                .query_opt("SELECT bytes FROM components WHERE hash = $1", &[&hash])
                .await?;
            row.map(|r| r.get(0)).ok_or_else(|| {
                ClusterError::Unavailable(format!("component {hash} is not in the cluster"))
            })
        })
        .await
    }

    /// Parties whose deploys changed, as announced; `None` after a
    /// (re)connect, when announcements may have been missed: look at all.
    pub fn deploys(self: &Arc<Self>) -> mpsc::UnboundedReceiver<Option<String>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let url = self.config.database.clone();
        let name = format!("dormouse {} deploys", self.node_id());
        tokio::spawn(async move {
            loop {
                if let Err(e) = listen(&url, &name, &tx).await {
                    warn!(error = %e, "lost the deploy announcements; listening again");
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rx
    }
}

/// How often the LISTEN connection is asked a `SELECT 1`: a connection that
/// went half-open (no reset, no FIN) delivers no announcement and says
/// nothing, so it is found by asking, and then made again.
const LISTEN_CHECK: Duration = Duration::from_secs(5);

/// LISTEN on one connection until it breaks, or stops answering, passing
/// announcements on. `name`: its `application_name` (PostgreSQL's
/// `pg_stat_activity` shows which node's it is).
async fn listen(
    url: &str,
    name: &str,
    tx: &mpsc::UnboundedSender<Option<String>>,
) -> Result<(), ClusterError> {
    use futures_util::StreamExt;
    let mut config: tokio_postgres::Config = url.parse()?;
    config
        .application_name(name)
        .connect_timeout(STATEMENT)
        .keepalives_idle(LISTEN_CHECK);
    let connect = timeout(STATEMENT, config.connect(NoTls));
    let (client, mut connection) = connect
        .await
        .map_err(|_| ClusterError::Unavailable("connecting to PostgreSQL timed out".into()))??;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let sql = format!("LISTEN {DEPLOYS}");
    let listening = client.batch_execute(&sql);
    // The connection must be driven for the LISTEN to complete.
    tokio::pin!(listening);
    loop {
        tokio::select! {
            r = &mut listening => { r?; break; }
            m = messages.next() => match m {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
        }
    }
    let _ = tx.send(None);
    // Pass an announcement on; false once nobody listens here any more.
    let pass = |m: tokio_postgres::AsyncMessage| match m {
        tokio_postgres::AsyncMessage::Notification(n) => {
            tx.send(Some(n.payload().to_owned())).is_ok()
        }
        _ => true,
    };
    let mut check = tokio::time::interval(LISTEN_CHECK);
    check.tick().await;
    loop {
        tokio::select! {
            m = messages.next() => match m {
                Some(m) => if !pass(m?) { return Ok(()) },
                None => return Ok(()),
            },
            _ = check.tick() => {
                let ping = client.simple_query("SELECT 1");
                let deadline = tokio::time::sleep(STATEMENT);
                tokio::pin!(ping, deadline);
                loop {
                    tokio::select! {
                        r = &mut ping => { r?; break; }
                        () = &mut deadline => {
                            return Err(ClusterError::Unavailable(
                                "the deploy announcements' connection stopped answering".into(),
                            ));
                        }
                        m = messages.next() => match m {
                            Some(m) => if !pass(m?) { return Ok(()) },
                            None => return Ok(()),
                        },
                    }
                }
            }
        }
    }
}
