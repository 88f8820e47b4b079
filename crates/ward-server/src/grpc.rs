//! The `ward.v1.Identity` gRPC service.
use std::pin::Pin;
use std::sync::Arc;

use futures_util::Stream;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};
use ward_api::v1::identity_server::Identity;
use ward_api::v1::{
    MintJwtSvidRequest, MintJwtSvidResponse, ServiceEndpoints, SignCertificateRequest,
    SignCertificateResponse, TrustBundle, WatchRequest, WatchResponse,
};
use ward_identity::SpiffeId;
use ward_store::AuditEvent;

use crate::ca::{CaManagerError, TrustSnapshot};
use crate::registry::{self, RegistryError};
use crate::state::{token_hash, AppState, ConnInfo, PeerAuth, Watchers};

pub(crate) struct IdentityService {
    pub state: Arc<AppState>,
}

fn peer_of<T>(req: &Request<T>) -> Arc<PeerAuth> {
    req.extensions()
        .get::<ConnInfo>()
        .map_or_else(|| Arc::new(PeerAuth::Anonymous), |c| c.peer.clone())
}

impl IdentityService {
    fn refuse(&self, reason: &str, status: Status) -> Status {
        self.state.metrics.failed(reason);
        tracing::info!(
            reason,
            message = status.message(),
            "certificate signing refused"
        );
        status
    }

    /// The identity the caller may have, from its join token or its
    /// verified certificate, and the token hash to consume if any.
    async fn authorize(
        &self,
        token: &str,
        peer: &PeerAuth,
    ) -> Result<(SpiffeId, Option<[u8; 32]>, String), Status> {
        let store = &self.state.store;
        if !token.is_empty() {
            let hash = token_hash(token);
            let t = store.find_join_token(&hash).await.map_err(internal)?;
            let Some(t) = t else {
                return Err(self.refuse("unknown_token", Status::unauthenticated(
                    "join token not recognised: check it was copied whole, or create one with `ward join-token create`",
                )));
            };
            if t.expires_at <= ward_ca::now().unix_timestamp() {
                return Err(self.refuse(
                    "expired_token",
                    Status::unauthenticated(
                        "join token expired: create a new one with `ward join-token create`",
                    ),
                ));
            }
            if t.uses_left <= 0 {
                return Err(self.refuse(
                    "used_token",
                    Status::unauthenticated(
                        "join token already used: create a new one with `ward join-token create`",
                    ),
                ));
            }
            let id = SpiffeId::parse(&t.spiffe_id).map_err(internal)?;
            return Ok((id, Some(hash), "join-token".into()));
        }
        match peer {
            PeerAuth::Anonymous => Err(self.refuse("no_credential", Status::unauthenticated(
                "no credential: send a join token, or connect with your current ward certificate to renew",
            ))),
            PeerAuth::Rejected(why) => Err(self.refuse("bad_client_cert", Status::unauthenticated(format!(
                "client certificate refused: {why}"
            )))),
            PeerAuth::Verified(p) => {
                let rec = store.get_certificate(&p.serial).await.map_err(internal)?;
                if rec.as_ref().is_some_and(|r| r.revoked_at.is_some()) {
                    return Err(self.refuse("revoked", Status::permission_denied(format!(
                        "client certificate {} is revoked: bootstrap again with a new join token",
                        p.serial
                    ))));
                }
                Ok((p.id.clone(), None, p.id.to_string()))
            }
        }
    }
}

impl IdentityService {
    /// The SPIFFE ID of a caller whose ward certificate verified and is not
    /// revoked; `what` names the call for the error.
    fn verified_caller<T>(&self, req: &Request<T>, what: &str) -> Result<SpiffeId, Status> {
        match &*peer_of(req) {
            PeerAuth::Verified(p) => {
                if self.state.ca.snapshot().revoked.contains(&p.serial) {
                    return Err(Status::permission_denied(format!(
                        "client certificate {} is revoked",
                        p.serial
                    )));
                }
                Ok(p.id.clone())
            }
            PeerAuth::Rejected(why) => Err(Status::unauthenticated(format!(
                "client certificate refused: {why}"
            ))),
            PeerAuth::Anonymous => Err(Status::unauthenticated(format!(
                "{what} needs a ward client certificate (mTLS)"
            ))),
        }
    }

    /// Which of a watcher's upstreams name no registered service (or are
    /// not SPIFFE IDs at all).
    async fn unregistered(&self, upstreams: &[String]) -> Result<Vec<String>, Status> {
        if upstreams.is_empty() {
            return Ok(Vec::new());
        }
        if upstreams.len() > 1024 {
            return Err(Status::invalid_argument("at most 1024 upstreams"));
        }
        let registered: std::collections::HashSet<String> = self
            .state
            .store
            .list_services()
            .await
            .map_err(internal)?
            .into_iter()
            .map(|s| s.spiffe_id)
            .collect();
        Ok(upstreams
            .iter()
            .filter(|u| !registered.contains(*u))
            .cloned()
            .collect())
    }
}

fn internal<E: std::fmt::Display>(e: E) -> Status {
    tracing::error!(error = %e, "internal error");
    Status::internal("internal error; see the server log")
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn sign_certificate(
        &self,
        req: Request<SignCertificateRequest>,
    ) -> Result<Response<SignCertificateResponse>, Status> {
        let peer = peer_of(&req);
        let req = req.into_inner();
        let csr = ward_ca::validate_csr(&req.csr)
            .map_err(|e| self.refuse("bad_csr", Status::invalid_argument(e.to_string())))?;
        let (allowed, consume, actor) = self.authorize(&req.join_token, &peer).await?;
        if csr.spiffe_id != allowed {
            return Err(self.refuse(
                "wrong_identity",
                Status::permission_denied(format!(
                    "the CSR requests {} but this credential is for {}",
                    csr.spiffe_id, allowed
                )),
            ));
        }
        if let Some((ns, name)) = allowed.service_account() {
            match registry::registered(&*self.state.store, ns, name).await {
                Ok(_) => {}
                Err(e @ RegistryError::NotRegistered { .. }) => {
                    return Err(
                        self.refuse("unregistered", Status::permission_denied(e.to_string()))
                    )
                }
                Err(RegistryError::Store(e)) => return Err(internal(e)),
            }
        }
        let method = if consume.is_some() {
            "join_token"
        } else {
            "renewal"
        };
        let ev = AuditEvent::now(
            &actor,
            "cert.issue",
            "",
            serde_json::json!({ "spiffe_id": allowed.as_str(), "method": method }),
        );
        let (cert, chain) = match self
            .state
            .ca
            .issue(&csr.spki, &allowed, &[], self.state.svid_ttl, consume.as_ref().map(|h| &h[..]), ev)
            .await
        {
            Ok(v) => v,
            Err(CaManagerError::Store(ward_store::StoreError::TokenUnavailable)) => {
                return Err(self.refuse("used_token", Status::unauthenticated(
                    "join token already used or expired: create a new one with `ward join-token create`",
                )))
            }
            Err(CaManagerError::Store(ward_store::StoreError::Full(e))) => {
                tracing::error!(error = %e, "the disk under the data dir is full; writes fail until space is freed");
                return Err(self.refuse("disk_full", Status::unavailable(
                    "the control plane's disk is full: no certificate was issued; retry later (the current certificate stays valid)",
                )));
            }
            Err(CaManagerError::Store(ward_store::StoreError::Unavailable(e))) => {
                tracing::warn!(error = %e, "the database cannot be reached; no certificate issued");
                return Err(self.refuse("database_unavailable", Status::unavailable(format!(
                    "{} (no certificate was issued; the current one stays valid)",
                    crate::error::database_unavailable()
                ))));
            }
            Err(e) => return Err(internal(e)),
        };
        self.state.metrics.issued(method);
        let snap = self.state.ca.snapshot();
        Ok(Response::new(SignCertificateResponse {
            spiffe_id: allowed.to_string(),
            cert_chain: chain.iter().map(|c| c.to_vec()).collect(),
            trust_bundle: snap.bundle.iter().map(|c| c.to_vec()).collect(),
            serial: cert.serial,
            not_after: cert.not_after.unix_timestamp(),
        }))
    }

    async fn mint_jwt_svid(
        &self,
        req: Request<MintJwtSvidRequest>,
    ) -> Result<Response<MintJwtSvidResponse>, Status> {
        let id = self.verified_caller(&req, "a JWT-SVID")?;
        let req = req.into_inner();
        let minted = self
            .state
            .jwt_svids
            .mint(&id, &req.audience, req.ttl_secs)
            .map_err(Status::invalid_argument)?;
        let ev = AuditEvent::now(
            id.as_str(),
            "jwt-svid.issue",
            id.as_str(),
            serde_json::json!({ "aud": req.audience, "exp": minted.expires_at }),
        );
        self.state
            .store
            .audit_batched(&ev)
            .await
            .map_err(internal)?;
        Ok(Response::new(MintJwtSvidResponse {
            token: minted.token,
            spiffe_id: id.to_string(),
            expires_at: minted.expires_at,
            issued_at: minted.issued_at,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = self.verified_caller(&req, "the watch stream")?.to_string();
        let ward_api::v1::WatchRequest {
            advertise,
            upstreams,
        } = req.into_inner();
        let unregistered = self.unregistered(&upstreams).await?;
        let endpoint = if advertise.is_empty() {
            None
        } else {
            if advertise.parse::<std::net::SocketAddr>().is_err() && !advertise.contains(':') {
                return Err(Status::invalid_argument("advertise must be host:port"));
            }
            Some(self.state.mesh.advertise(&id, &advertise))
        };
        let guard = Watchers::add(&self.state, id.clone());
        let state = self.state.clone();
        // One snapshot now, then one after every change of the trust
        // bundle, revocations, endpoints or policies. `watch` receivers
        // coalesce, so a slow reader gets the latest state, not a backlog.
        let ca = WatchStream::new(self.state.ca.subscribe()).map(|_| ());
        let mesh = WatchStream::new(self.state.mesh.subscribe()).map(|_| ());
        let tokens = WatchStream::new(self.state.oauth.changed.subscribe()).map(|_| ());
        let oauth_keys = WatchStream::new(self.state.oauth.keys.changed.subscribe()).map(|_| ());
        let svid_keys = WatchStream::new(self.state.jwt_svids.keys.changed.subscribe()).map(|_| ());
        // Only the endpoints of the services it calls.
        let upstreams: std::collections::BTreeSet<String> = upstreams.into_iter().collect();
        // Every source fires at once on subscription, and most changes
        // concern other watchers (another service's policy or endpoints):
        // send only what differs from what this watcher last got.
        let mut last: Option<WatchResponse> = None;
        let stream = ca
            .merge(mesh)
            .merge(tokens)
            .merge(oauth_keys)
            .merge(svid_keys)
            .filter_map(move |()| {
                let _keep = (&guard, &endpoint);
                let mut r = to_response(&state, &id, &upstreams);
                r.unregistered_upstreams = unregistered.clone();
                // Compared without the version, which every change bumps.
                let version = std::mem::take(&mut r.version);
                if last.as_ref() == Some(&r) {
                    return None;
                }
                last = Some(r.clone());
                r.version = version;
                Some(Ok(r))
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

fn to_response(
    state: &AppState,
    watcher: &str,
    upstreams: &std::collections::BTreeSet<String>,
) -> WatchResponse {
    let s: Arc<TrustSnapshot> = state.ca.snapshot();
    let mut revoked: Vec<String> = s.revoked.iter().cloned().collect();
    revoked.sort();
    let mesh_version = *state.mesh.subscribe().borrow()
        + *state.oauth.changed.subscribe().borrow()
        + *state.oauth.keys.changed.subscribe().borrow()
        + *state.jwt_svids.keys.changed.subscribe().borrow();
    WatchResponse {
        version: s.version + mesh_version,
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
        revoked_token_ids: state.oauth.revoked_ids(),
        issuer: state.oauth.issuer.clone(),
        jwks_json: state.oauth.jwks().to_string(),
        jwt_authorities_json: state.jwt_svids.keys.jwks().to_string(),
        // Only what applies to the watcher's own service.
        policies_json: ward_identity::SpiffeId::parse(watcher)
            .ok()
            .and_then(|id| {
                id.service_account()
                    .map(|(ns, svc)| state.mesh.policies_for(ns, svc))
            })
            .unwrap_or_default(),
        default_action: match state.mesh.default_action {
            ward_policy::DefaultAction::Deny => "deny".into(),
            ward_policy::DefaultAction::Allow => "allow".into(),
        },
        unregistered_upstreams: Vec::new(),
    }
}
