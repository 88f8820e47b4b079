//! The watch stream's contents: what one watcher needs, sent when it
//! changes. A stream wakes only on what concerns its watcher: the trust
//! bundle, revocations and signing keys (every watcher), the policies of
//! its own service and the endpoints of its upstreams ([`Topic`]). The
//! first message is the whole state; with `deltas` the next ones carry
//! only what changed ([`ward_api::delta`]).
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::stream::{select_all, BoxStream};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;
use ward_api::v1::{ServiceEndpoints, TrustBundle, WatchResponse};

use crate::ca::TrustSnapshot;
use crate::mesh::Topic;
use crate::state::AppState;

pub(crate) type Messages = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// One watcher: who it is and what it asked for.
pub(crate) struct Watcher {
    pub id: String,
    pub upstreams: BTreeSet<String>,
    pub unregistered: Vec<String>,
    pub deltas: bool,
}

/// The watcher's messages for as long as the stream is open; `keep` (the
/// registration of its endpoint and of the stream) lives as long.
pub(crate) fn messages(
    state: Arc<AppState>,
    watcher: Watcher,
    keep: impl Send + 'static,
) -> Messages {
    let service = ward_identity::SpiffeId::parse(&watcher.id)
        .ok()
        .and_then(|id| {
            id.service_account()
                .map(|(ns, svc)| (ns.to_string(), svc.to_string()))
        });
    let mut wakes: Vec<BoxStream<'static, ()>> = vec![
        WatchStream::new(state.ca.subscribe()).map(|_| ()).boxed(),
        WatchStream::new(state.mesh.subscribe()).map(|_| ()).boxed(),
        WatchStream::new(state.oauth.changed.subscribe())
            .map(|_| ())
            .boxed(),
        WatchStream::new(state.oauth.keys.changed.subscribe())
            .map(|_| ())
            .boxed(),
        WatchStream::new(state.jwt_svids.keys.changed.subscribe())
            .map(|_| ())
            .boxed(),
    ];
    if let Some((ns, svc)) = &service {
        let rx = state
            .mesh
            .subscribe_to(Topic::Policies(ns.clone(), svc.clone()));
        wakes.push(WatchStream::new(rx).map(|_| ()).boxed());
    }
    for u in &watcher.upstreams {
        let rx = state.mesh.subscribe_to(Topic::Endpoints(u.clone()));
        wakes.push(WatchStream::new(rx).map(|_| ()).boxed());
    }
    let sender = Sender {
        state,
        watcher,
        service,
        last: None,
        _keep: Box::new(keep),
    };
    let stream = futures_util::stream::unfold(
        (select_all(wakes), sender),
        |(mut wakes, mut sender)| async move {
            loop {
                wakes.next().await?;
                // Every source fires at once on subscription, and a burst
                // of changes comes as many wakes: one message for all
                // that are ready.
                while let Some(Some(())) = wakes.next().now_or_never() {}
                if let Some(msg) = sender.next() {
                    return Some((Ok(msg), (wakes, sender)));
                }
            }
        },
    );
    Box::pin(stream)
}

struct Sender {
    state: Arc<AppState>,
    watcher: Watcher,
    /// The watcher's (namespace, service).
    service: Option<(String, String)>,
    /// The whole state last sent.
    last: Option<WatchResponse>,
    _keep: Box<dyn Send>,
}

impl Sender {
    /// The next message, if what the watcher receives changed.
    fn next(&mut self) -> Option<WatchResponse> {
        let mut now = current(&self.state, self.service.as_ref(), &self.watcher.upstreams);
        now.unregistered_upstreams = self.watcher.unregistered.clone();
        let version = self.last.as_ref().map_or(1, |l| l.version + 1);
        now.version = version;
        let msg = match &self.last {
            None => now.clone(),
            Some(last) if self.watcher.deltas => ward_api::delta(last, &now)?,
            Some(last) => {
                // Compared without the version, which every message bumps.
                now.version = last.version;
                if *last == now {
                    return None;
                }
                now.version = version;
                now.clone()
            }
        };
        self.last = Some(now);
        Some(msg)
    }
}

/// The whole state for a watcher of `service` with `upstreams`, without
/// version or unregistered upstreams.
fn current(
    state: &AppState,
    service: Option<&(String, String)>,
    upstreams: &BTreeSet<String>,
) -> WatchResponse {
    let s: Arc<TrustSnapshot> = state.ca.snapshot();
    let mut revoked: Vec<String> = s.revoked.iter().cloned().collect();
    revoked.sort();
    let mut revoked_token_ids = state.oauth.revoked_ids();
    revoked_token_ids.sort();
    WatchResponse {
        bundle: Some(TrustBundle {
            trust_domain: s.trust_domain.to_string(),
            x509_authorities: s.bundle.iter().map(|c| c.to_vec()).collect(),
            refresh_hint: 300,
        }),
        revoked_serials: revoked,
        endpoints: state
            .mesh
            .endpoints_for(upstreams)
            .into_iter()
            .map(|(spiffe_id, addresses)| ServiceEndpoints {
                spiffe_id,
                addresses,
            })
            .collect(),
        endpoints_partial: state.mesh.endpoints_partial(),
        revoked_token_ids,
        issuer: state.oauth.issuer.clone(),
        jwks_json: state.oauth.jwks().to_string(),
        jwt_authorities_json: state.jwt_svids.keys.jwks().to_string(),
        // Only what applies to the watcher's own service.
        policies_json: service
            .map(|(ns, svc)| state.mesh.policies_for(ns, svc))
            .unwrap_or_default(),
        default_action: match state.mesh.default_action {
            ward_policy::DefaultAction::Deny => "deny".into(),
            ward_policy::DefaultAction::Allow => "allow".into(),
        },
        ..Default::default()
    }
}
