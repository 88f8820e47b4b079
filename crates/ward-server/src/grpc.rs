//! The `ward.v1.Identity` gRPC service.
use std::sync::Arc;

use tonic::{Request, Response, Status};
use ward_api::v1::identity_server::Identity;
use ward_api::v1::{
    MintJwtSvidRequest, MintJwtSvidResponse, SignCertificateRequest, SignCertificateResponse,
    TrafficReport, TrafficReportResponse, WatchRequest,
};
use ward_identity::SpiffeId;
use ward_store::AuditEvent;

use crate::ca::CaManagerError;
use crate::fleet::{ReportError, Watchers};
use crate::registry::{self, RegistryError};
use crate::state::{token_hash, AppState, ConnInfo, PeerAuth};

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
        // Most watchers name a few upstreams: a lookup each, rather than
        // reading the whole registry on every stream a fleet opens.
        if upstreams.len() <= 16 {
            let mut missing = Vec::new();
            for u in upstreams {
                let found = match SpiffeId::parse(u)
                    .ok()
                    .as_ref()
                    .and_then(|id| id.service_account())
                {
                    Some((ns, svc)) => self
                        .state
                        .store
                        .get_service(ns, svc)
                        .await
                        .map_err(internal)?
                        .is_some_and(|s| s.spiffe_id == *u),
                    None => false,
                };
                if !found {
                    missing.push(u.clone());
                }
            }
            return Ok(missing);
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
        let _permit = self
            .state
            .shed
            .admit("certificate signing")
            .map_err(|s| self.refuse("busy", s))?;
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

    type WatchStream = crate::watch::Messages;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let id = self.verified_caller(&req, "the watch stream")?.to_string();
        let _permit = self.state.shed.admit("opening the watch stream")?;
        let (remote, cert_not_after) = req
            .extensions()
            .get::<ConnInfo>()
            .map(|c| {
                let not_after = match &*c.peer {
                    PeerAuth::Verified(p) => p.not_after,
                    _ => 0,
                };
                (c.remote.to_string(), not_after)
            })
            .unwrap_or_default();
        let ward_api::v1::WatchRequest {
            advertise,
            upstreams,
            deltas,
            instance,
            kind,
            version,
        } = req.into_inner();
        let bounded = |s: String| s.chars().take(128).collect::<String>();
        let unregistered = self.unregistered(&upstreams).await?;
        let endpoint = if advertise.is_empty() {
            None
        } else {
            if advertise.parse::<std::net::SocketAddr>().is_err() && !advertise.contains(':') {
                return Err(Status::invalid_argument("advertise must be host:port"));
            }
            Some(self.state.mesh.advertise(&id, &advertise))
        };
        let now = ward_ca::now().unix_timestamp();
        let guard = Watchers::add(
            &self.state,
            crate::fleet::Watcher {
                spiffe_id: id.clone(),
                since: now,
                kind: bounded(kind),
                version: bounded(version),
                instance: bounded(instance),
                remote,
                advertise: advertise.clone(),
                cert_not_after,
                last_seen: now,
            },
        );
        let watcher = crate::watch::Watcher {
            id,
            upstreams: upstreams.into_iter().collect(),
            unregistered,
            deltas,
        };
        Ok(Response::new(crate::watch::messages(
            self.state.clone(),
            watcher,
            (guard, endpoint),
        )))
    }

    async fn report_traffic(
        &self,
        req: Request<TrafficReport>,
    ) -> Result<Response<TrafficReportResponse>, Status> {
        let id = self.verified_caller(&req, "traffic reports")?.to_string();
        let now_ms = (ward_ca::now().unix_timestamp_nanos() / 1_000_000) as i64;
        crate::fleet::record(&self.state, &id, req.into_inner(), now_ms).map_err(|e| match e {
            ReportError::NoStream(..) => Status::failed_precondition(e.to_string()),
            ReportError::Invalid(m) => Status::invalid_argument(m),
        })?;
        Ok(Response::new(TrafficReportResponse {}))
    }
}
