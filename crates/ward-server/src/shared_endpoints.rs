//! Endpoints across replicas: each replica on a shared database writes
//! where its own connected sidecars can be reached to the endpoint table
//! (coalescing bursts into one transaction) and marks itself seen every
//! [`HEARTBEAT`]; it reads the other replicas' endpoints when the change
//! feed says they changed and on every heartbeat. A replica not seen for
//! [`EXPIRY`] (killed, partitioned) no longer counts: its sidecars
//! reconnect to another replica and are published again from there.
use std::sync::Arc;
use std::time::Duration;

use crate::state::AppState;

/// How often a replica says it is alive and re-reads the others.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);
/// A replica not seen for this long is left out.
pub(crate) const EXPIRY: Duration = Duration::from_secs(15);
/// Rows of replicas gone this long are deleted.
const FORGET: Duration = Duration::from_secs(3600);

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

/// A name for this process among the replicas: host, pid and a random
/// part, so that a restarted replica is a new one.
pub(crate) fn replica_id() -> String {
    format!(
        "{}-{}-{}",
        crate::config::hostname().unwrap_or_default(),
        std::process::id(),
        crate::datadir::random_token("")
            .chars()
            .take(8)
            .collect::<String>()
    )
}

/// Publishes this replica's endpoints until the process ends.
pub(crate) fn spawn(state: Arc<AppState>) {
    tokio::spawn(async move {
        let mut published = crate::mesh::EndpointSet::new();
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let beat = tokio::select! {
                _ = tick.tick() => true,
                _ = state.mesh.local_changed.notified() => false,
            };
            let local = state.mesh.local_endpoints();
            let add: Vec<_> = local.difference(&published).cloned().collect();
            let remove: Vec<_> = published.difference(&local).cloned().collect();
            if beat || !add.is_empty() || !remove.is_empty() {
                match state
                    .store
                    .sync_endpoints(&state.replica, now(), &add, &remove)
                    .await
                {
                    Ok(()) => published = local,
                    // Retried on the next change or heartbeat.
                    Err(e) => {
                        tracing::warn!(error = %e, "publishing this replica's endpoints failed")
                    }
                }
            }
            if beat {
                if let Err(e) = reload(&state).await {
                    tracing::warn!(error = %e, "reading the other replicas' endpoints failed");
                }
                let _ = state
                    .store
                    .prune_replicas(now() - FORGET.as_secs() as i64)
                    .await;
            }
        }
    });
}

/// Re-reads the endpoints of the other live replicas.
pub(crate) async fn reload(state: &AppState) -> Result<(), ward_store::StoreError> {
    let since = now() - EXPIRY.as_secs() as i64;
    let remote = state.store.list_endpoints(since, &state.replica).await?;
    state.mesh.set_remote(remote.into_iter().collect());
    Ok(())
}
