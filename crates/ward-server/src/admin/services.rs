//! The service registry and the join tokens that bootstrap its sidecars.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use ward_identity::{SpiffeId, DEFAULT_NAMESPACE};
use ward_store::AuditEvent;
use ward_store::{JoinToken, Service};

use super::{found, now, removed, Actor, ApiError, ApiResult};
use crate::datadir::random_token;
use crate::registry;
use crate::state::{token_hash, AppState};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AddService {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    /// `http` (default) or `tcp`.
    #[serde(default)]
    protocol: Option<String>,
}

pub(super) async fn list(State(s): State<Arc<AppState>>) -> ApiResult<Json<Vec<Service>>> {
    Ok(Json(s.store.list_services().await?))
}

pub(super) async fn add(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<AddService>,
) -> ApiResult<(StatusCode, Json<Service>)> {
    let ns = body.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let id = SpiffeId::for_service(s.ca.trust_domain(), &ns, &body.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let protocol = body.protocol.unwrap_or_else(|| "http".into());
    if protocol != "http" && protocol != "tcp" {
        return Err(ApiError::bad_request(format!(
            "protocol {protocol:?}: use http (HTTP/1.1, HTTP/2, gRPC) or tcp"
        )));
    }
    if protocol == "tcp" {
        // A TCP service cannot enforce the HTTP policies already in force
        // for its whole namespace.
        if let Some(p) = s.mesh.policies().iter().find(|p| {
            p.namespace == ns
                && matches!(ward_policy::parse_document(&p.spec_json),
                    Ok(ward_policy::Document::Authorization(a))
                        if a.spec.selector.is_none() && a.uses_http_fields())
        }) {
            return Err(ApiError::bad_request(format!(
                "policy {}/{} applies to every service in namespace {ns} and uses HTTP fields, \
                 which a TCP service cannot enforce: give it a selector first",
                p.namespace, p.name
            )));
        }
    }
    let svc = Service {
        namespace: ns,
        name: body.name,
        spiffe_id: id.to_string(),
        created_at: now(),
        protocol,
    };
    let ev = AuditEvent::now(&actor.0, "service.add", id.as_str(), json!({}));
    s.store.add_service(&svc, &ev).await?;
    Ok((StatusCode::CREATED, Json(svc)))
}

pub(super) async fn get(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Service>> {
    found(s.store.get_service(&ns, &name).await?, || {
        format!("service {ns}/{name}")
    })
}

pub(super) async fn remove(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let target = format!("{ns}/{name}");
    let ev = AuditEvent::now(&actor.0, "service.remove", &target, json!({}));
    let done = s.store.remove_service(&ns, &name, &ev).await?;
    removed(done, || format!("service {target}"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateJoinToken {
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    uses: Option<u32>,
}

pub(super) async fn create_join_token(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<CreateJoinToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ns = body.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let svc = registry::registered(&*s.store, &ns, &body.service).await?;
    let ttl = body.ttl_secs.unwrap_or(3600);
    if ttl == 0 || ttl > 30 * 86400 {
        return Err(ApiError::bad_request(
            "ttl must be between 1 second and 30 days",
        ));
    }
    let uses = body.uses.unwrap_or(1);
    if uses == 0 || uses > 10_000 {
        return Err(ApiError::bad_request("uses must be between 1 and 10000"));
    }
    let token = random_token("wjt_");
    let record = JoinToken {
        hash: token_hash(&token).to_vec(),
        namespace: ns,
        service: svc.name,
        spiffe_id: svc.spiffe_id.clone(),
        expires_at: now() + ttl as i64,
        uses_left: uses as i64,
        created_at: now(),
    };
    let ev = AuditEvent::now(
        &actor.0,
        "join-token.create",
        &svc.spiffe_id,
        json!({ "expires_at": record.expires_at, "uses": uses }),
    );
    s.store.create_join_token(&record, &ev).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "token": token, "id": join_token_id(&record.hash), "spiffe_id": svc.spiffe_id, "expires_at": record.expires_at, "uses": uses }),
        ),
    ))
}

/// A join token's public id: the first 8 bytes of its hash, in hex. It
/// names the token for listing and revocation and reveals nothing usable.
fn join_token_id(hash: &[u8]) -> String {
    hex::encode(&hash[..hash.len().min(8)])
}

pub(super) async fn list_join_tokens(
    State(s): State<Arc<AppState>>,
) -> ApiResult<Json<Vec<Value>>> {
    let tokens = s.store.list_join_tokens(now()).await?;
    Ok(Json(
        tokens
            .iter()
            .map(|t| {
                json!({
                    "id": join_token_id(&t.hash), "namespace": t.namespace, "service": t.service,
                    "spiffe_id": t.spiffe_id, "uses_left": t.uses_left,
                    "expires_at": t.expires_at, "created_at": t.created_at,
                })
            })
            .collect(),
    ))
}

pub(super) async fn revoke_join_token(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let prefix = hex::decode(&id)
        .ok()
        .filter(|p| p.len() == 8)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{id:?} is not a join-token id (16 hex digits, as `ward join-token list` shows)"
            ))
        })?;
    let ev = AuditEvent::now(&actor.0, "join-token.revoke", &id, json!({}));
    let n = s.store.revoke_join_token(&prefix, &ev).await?;
    removed(n > 0, || {
        format!("join token {id} (it may have been used up or expired)")
    })
}
