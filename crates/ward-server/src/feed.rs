//! The replica change feed: writes committed by other `ward server`
//! processes on the same database arrive here as their audit actions, and
//! the state each concerns is reloaded from the store and pushed to this
//! replica's watch streams, as if the change had been made here.
//!
//! A burst of changes is coalesced: everything already waiting is taken
//! at once and each kind of state is reloaded once.
use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::state::AppState;

/// What an action changed, as far as the in-memory state goes. Services,
/// clients and join tokens are read from the store when used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Reload {
    Policies,
    /// CAs and certificate revocations (one trust snapshot).
    Trust,
    SigningKeys,
    RevokedTokens,
    /// Where the other replicas' sidecars are.
    Endpoints,
}

const ALL: [Reload; 5] = [
    Reload::Policies,
    Reload::Trust,
    Reload::SigningKeys,
    Reload::RevokedTokens,
    Reload::Endpoints,
];

fn reloads(action: &str) -> &'static [Reload] {
    match action.split('.').next().unwrap_or_default() {
        "*" => &ALL,
        "policy" => &[Reload::Policies],
        "ca" => &[Reload::Trust],
        "cert" if action == "cert.revoke" => &[Reload::Trust],
        "signing-key" => &[Reload::SigningKeys],
        "token" if action == "token.revoke" => &[Reload::RevokedTokens],
        "endpoint" => &[Reload::Endpoints],
        _ => &[],
    }
}

/// Follows `changes` until the store closes it.
pub(crate) fn spawn(state: Arc<AppState>, mut changes: mpsc::Receiver<String>) {
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while changes.recv_many(&mut batch, 1024).await > 0 {
            let todo: BTreeSet<Reload> = batch
                .drain(..)
                .flat_map(|a| reloads(&a).iter().copied())
                .collect();
            for r in todo {
                if let Err(e) = reload(&state, r).await {
                    // The next change, or the next "*" after the database
                    // is back, reloads it again.
                    tracing::warn!(what = ?r, error = %e, "reloading a change made by another replica failed");
                }
            }
        }
    });
}

async fn reload(state: &AppState, what: Reload) -> Result<(), String> {
    match what {
        Reload::Policies => {
            let policies = state
                .store
                .list_policies()
                .await
                .map_err(|e| e.to_string())?;
            if *state.mesh.policies() != policies {
                state.mesh.set_policies(policies);
            }
        }
        Reload::Trust => state.ca.publish().await.map_err(|e| e.to_string())?,
        Reload::SigningKeys => {
            state.oauth.keys.reload().await.map_err(|e| e.to_string())?;
            state
                .jwt_svids
                .keys
                .reload()
                .await
                .map_err(|e| e.to_string())?;
        }
        Reload::RevokedTokens => state
            .oauth
            .reload_revoked(state.store.as_ref())
            .await
            .map_err(|e| e.to_string())?,
        Reload::Endpoints => crate::shared_endpoints::reload(state)
            .await
            .map_err(|e| e.to_string())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_action_reloads_what_it_changed() {
        assert_eq!(reloads("policy.apply"), [Reload::Policies]);
        assert_eq!(reloads("policy.delete"), [Reload::Policies]);
        assert_eq!(reloads("ca.rotate"), [Reload::Trust]);
        assert_eq!(reloads("cert.revoke"), [Reload::Trust]);
        assert_eq!(reloads("signing-key.rotate"), [Reload::SigningKeys]);
        assert_eq!(reloads("token.revoke"), [Reload::RevokedTokens]);
        assert_eq!(reloads("endpoint.change"), [Reload::Endpoints]);
        assert_eq!(reloads("*"), ALL);
        for quiet in [
            "cert.issue",
            "token.issue",
            "service.add",
            "client.create",
            "join-token.create",
        ] {
            assert!(reloads(quiet).is_empty(), "{quiet}");
        }
    }
}
