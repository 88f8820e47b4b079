//! What every listener and loop of a sidecar shares, and the accept loop
//! they all run.
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use ward_identity::{SpiffeId, TrustDomain};
use ward_policy::PolicySet;
use ward_tls::MeshTls;

use crate::authn::{Authn, KeyCaches};
use crate::config::ProxyConfig;
use crate::identity::Current;
use crate::metrics::Metrics;
use crate::workers::ConnSource;

/// State shared by every listener.
pub(crate) struct Shared {
    pub cfg: Arc<ProxyConfig>,
    pub id: SpiffeId,
    pub td: TrustDomain,
    pub tls: Arc<MeshTls>,
    pub svid: Current,
    pub policies: ArcSwap<PolicySet>,
    /// Bumped whenever policies or trust change: open TCP connections are
    /// judged again.
    pub policy_version: watch::Sender<u64>,
    /// Trusted token issuers for this service.
    pub authn: ArcSwap<Authn>,
    pub key_caches: Mutex<KeyCaches>,
    /// The policy inputs of the last watch message (documents, default,
    /// issuer, JWKS): the next message recompiles only if they differ.
    pub applied: Mutex<Option<PolicyInputs>>,
    /// Revoked access-token ids, from the watch stream.
    pub revoked_tokens: ward_jwt::tower::RevocationList,
    /// SPIFFE ID → sidecar addresses.
    pub endpoints: ArcSwap<HashMap<String, Vec<String>>>,
    /// Upstreams the control plane says name no registered service.
    pub unregistered_upstreams: ArcSwap<Vec<String>>,
    /// The trust domain's JWT-SVID authorities, from the watch stream.
    pub jwt_authorities: ArcSwap<JwtAuthorities>,
    /// Bumped when the X.509 bundle or the JWT authorities change: the
    /// Workload API's streams send the new state.
    pub trust_version: watch::Sender<u64>,
    pub configured: AtomicBool,
    pub connected: AtomicBool,
    pub metrics: Metrics,
    /// Inbound requests by caller, decision and policy, reported to the
    /// control plane.
    pub traffic: crate::traffic::Traffic,
    pub shutdown: watch::Sender<bool>,
    pub inbound_port: u16,
    /// Bumped on every certificate renewal: outbound pools opened with an
    /// older certificate are retired, so peers see the new one.
    pub generation: AtomicU64,
    /// The workload SVID's expiry (unix seconds; 0 until issued), or -1
    /// when this sidecar hands out no workload identity.
    pub workload_expiry: AtomicI64,
}

/// The JWT-SVID authorities as received (JSON) and parsed.
#[derive(Default)]
pub(crate) struct JwtAuthorities {
    pub json: String,
    pub keys: ward_jwt::JwkSet,
}

/// What a watch message's policies are built from.
#[derive(PartialEq)]
pub(crate) struct PolicyInputs {
    pub documents: Vec<String>,
    pub default_action: String,
    pub issuer: String,
    pub jwks_json: String,
    pub jwt_authorities_json: String,
}

impl Shared {
    /// Why the sidecar is not ready, if it is not. Ready: configured, with
    /// a trust bundle and certificates that are neither revoked nor about
    /// to expire (the last tenth of their lifetime); while the control
    /// plane is away, the sidecar stays ready until then.
    pub(crate) fn not_ready(&self) -> Option<String> {
        let svid = self.svid.get();
        let now = ward_ca::now().unix_timestamp();
        let margin = (svid.not_after - svid.not_before) / 10;
        let workload = self.workload_expiry.load(Ordering::Relaxed);
        let trust = self.tls.trust();
        if !self.configured.load(Ordering::Relaxed) {
            return Some(
                "waiting for the configuration (trust bundle, endpoints, policies)".into(),
            );
        }
        if trust.bundle.is_empty() {
            return Some("no trust bundle".into());
        }
        if trust.revoked.contains(&svid.serial) {
            return Some(format!(
                "this sidecar's certificate (serial {}) is revoked; start it again with a new join token (`ward join-token create --service {}`)",
                svid.serial, self.cfg.service
            ));
        }
        if svid.not_after - margin <= now {
            return Some("the certificate is about to expire and could not be renewed".into());
        }
        if workload >= 0 && workload - margin <= now {
            return Some(
                "the workload's certificate is about to expire and could not be renewed".into(),
            );
        }
        None
    }
}

/// Permits of the connection counter; every connection holds one.
pub(crate) const MAX_CONNECTIONS: usize = 1 << 20;

/// Accepts connections from `incoming` until shutdown, each holding a
/// permit of its worker's counter (so draining can wait for them) while
/// `handle` serves it on a task of its own. Accept errors (out of
/// descriptors) back off briefly.
pub(crate) async fn accept_loop<F, Fut>(
    shared: &Shared,
    mut incoming: ConnSource,
    direction: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut stop = shared.shutdown.subscribe();
    loop {
        let (tcp, remote, permit) = tokio::select! {
            r = incoming.accept() => match r {
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    tracing::warn!(error = %e, direction, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                None => return,
            },
            _ = stopped(&mut stop) => return,
        };
        tokio::spawn(holding(handle(tcp, remote), permit));
    }
}

/// A connection's task: `conn`, with `permit` held until it ends. The
/// permit rides beside the future rather than in an async block that
/// awaits it: such a block stores the captured future and the awaited
/// one apart, and so doubled every connection's task (19 KiB instead
/// of 10 for an inbound connection).
fn holding<Fut>(
    conn: Fut,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static
where
    Fut: Future<Output = ()> + Send + 'static,
{
    conn.map(move |()| drop(permit))
}

/// Resolves once shutdown has been requested.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Semaphore;

    #[test]
    fn a_connection_task_holds_its_future_once() {
        // A connection's future with 4 KiB of state across an await.
        let conn = async {
            let state = [7u8; 4096];
            tokio::task::yield_now().await;
            std::hint::black_box(&state);
        };
        let alone = std::mem::size_of_val(&conn);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let task = holding(conn, permit);
        let held = std::mem::size_of_val(&task);
        assert!(alone >= 4096, "the test's future is {alone} bytes");
        assert!(
            held <= alone + 64,
            "the task is {held} bytes for a future of {alone}"
        );
    }
}
