//! The SPIFFE Workload API (`SpiffeWorkloadAPI`) on a unix socket. The
//! caller is the process at the other end, identified by SO_PEERCRED:
//! only the configured users get anything; everyone else gets
//! PermissionDenied. Every call must carry `workload.spiffe.io: true`.
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::Value as Json;
use tokio::net::UnixListener;
use tonic::{Request, Response, Status};
use ward_api::prost_types;
use ward_api::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use ward_api::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse,
    ValidateJwtsvidRequest, ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse,
    X509svid, X509svidRequest, X509svidResponse,
};

use super::{jwt, Source};
use crate::state::stopped;

/// Accepts callers until the sidecar stops.
pub(crate) async fn serve(source: Arc<Source>, listener: UnixListener, uids: Vec<u32>) {
    let mut stop = source.shared.shutdown.subscribe();
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "Workload API accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let cred = stream.peer_cred().ok();
        let uid = cred.map(|c| c.uid());
        let allowed = uid.is_some_and(|u| uids.contains(&u));
        if !allowed {
            tracing::info!(
                uid,
                pid = cred.and_then(|c| c.pid()),
                "Workload API caller not allowed: PermissionDenied"
            );
        }
        let api = SpiffeWorkloadApiServer::new(Api {
            source: source.clone(),
            allowed,
        });
        let mut stop = source.shared.shutdown.subscribe();
        tokio::spawn(async move {
            let builder = ward_http::server();
            let io = TokioIo::new(super::authority::Rewriting::new(stream));
            let conn = builder.serve_connection(io, TowerToHyperService::new(api));
            tokio::select! {
                r = conn => if let Err(e) = r {
                    tracing::debug!(error = %e, "Workload API connection ended");
                },
                _ = stopped(&mut stop) => {}
            }
        });
    }
}

/// One caller's connection.
struct Api {
    source: Arc<Source>,
    /// Whether its user may have the identity.
    allowed: bool,
}

type Stream_<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

impl Api {
    /// The caller's user first (an unknown caller learns nothing, not even
    /// what a request lacks), then the security header.
    fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        if !self.allowed {
            return Err(Status::permission_denied(
                "this user may not have a workload identity here (see --workload-uid)",
            ));
        }
        match req.metadata().get("workload.spiffe.io") {
            Some(v) if v == "true" => Ok(()),
            _ => Err(Status::invalid_argument(
                "security header missing from request: send the metadata workload.spiffe.io: true",
            )),
        }
    }

    fn trust_domain_id(&self) -> String {
        format!("spiffe://{}", self.source.shared.td)
    }

    /// `make` applied to the current state now and after every change,
    /// skipping states it has nothing for (no SVID yet).
    fn follow<T, F>(&self, make: F) -> Stream_<T>
    where
        T: Send + 'static,
        F: Fn(&Source) -> Option<T> + Send + Sync + 'static,
    {
        let source = self.source.clone();
        let changes = source.changes();
        let make = Arc::new(make);
        let stream = futures_util::stream::unfold(
            (source, changes, true),
            move |(source, mut changes, first)| {
                let make = make.clone();
                async move {
                    if !first && !changes.next().await {
                        return None;
                    }
                    let item = make(&source);
                    Some((item, (source, changes, false)))
                }
            },
        )
        .filter_map(|item| async move { item.map(Ok) });
        Box::pin(stream)
    }
}

fn der_concat<'a>(
    certs: impl IntoIterator<Item = &'a rustls_pki_types::CertificateDer<'a>>,
) -> Vec<u8> {
    certs
        .into_iter()
        .flat_map(|c| c.as_ref().to_vec())
        .collect()
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Api {
    type FetchX509SVIDStream = Stream_<X509svidResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        self.admit(&req)?;
        Ok(Response::new(self.follow(|source| {
            let svid = source.current()?;
            Some(X509svidResponse {
                svids: vec![X509svid {
                    spiffe_id: source.shared.id.to_string(),
                    x509_svid: der_concat(&svid.chain),
                    x509_svid_key: svid.key_pkcs8.clone(),
                    bundle: der_concat(&svid.bundle),
                    hint: String::new(),
                }],
                crl: Vec::new(),
                federated_bundles: HashMap::new(),
            })
        })))
    }

    type FetchX509BundlesStream = Stream_<X509BundlesResponse>;

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.admit(&req)?;
        let td = self.trust_domain_id();
        Ok(Response::new(self.follow(move |source| {
            let trust = source.shared.tls.trust();
            if trust.bundle.is_empty() {
                return None;
            }
            Some(X509BundlesResponse {
                crl: Vec::new(),
                bundles: HashMap::from([(td.clone(), der_concat(&trust.bundle))]),
            })
        })))
    }

    async fn fetch_jwtsvid(
        &self,
        req: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        self.admit(&req)?;
        let req = req.into_inner();
        if req.audience.is_empty() || req.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let id = self.source.shared.id.to_string();
        if !req.spiffe_id.is_empty() && req.spiffe_id != id {
            return Err(Status::permission_denied(format!(
                "this workload is {id}, not {}",
                req.spiffe_id
            )));
        }
        let token = self.source.jwt.fetch(&self.source, req.audience).await?;
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: id,
                svid: token,
                hint: String::new(),
            }],
        }))
    }

    type FetchJWTBundlesStream = Stream_<JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.admit(&req)?;
        let td = self.trust_domain_id();
        Ok(Response::new(self.follow(move |source| {
            let authorities = source.shared.jwt_authorities.load();
            if authorities.json.is_empty() {
                return None;
            }
            Some(JwtBundlesResponse {
                bundles: HashMap::from([(td.clone(), authorities.json.clone().into_bytes())]),
            })
        })))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.admit(&req)?;
        let req = req.into_inner();
        if req.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if req.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let (id, claims) = jwt::validate(&self.source, &req.svid, &req.audience)
            .map_err(|why| Status::invalid_argument(format!("the JWT-SVID is not valid: {why}")))?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: id.to_string(),
            claims: Some(to_struct(claims.0)),
        }))
    }
}

fn to_struct(map: serde_json::Map<String, Json>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect(),
    }
}

fn to_value(v: Json) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(a) => Kind::ListValue(prost_types::ListValue {
            values: a.into_iter().map(to_value).collect(),
        }),
        Json::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
