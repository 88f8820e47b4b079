//! Health: `ward status`, readiness, metrics, and the audit log.
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::header;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use ward_store::CertQuery;

use super::certificates::cert_json;
use super::{now, ApiResult};
use crate::state::AppState;

/// Descriptors kept for what is not a sidecar: the database, admin and
/// CLI connections, OAuth clients, the data dir's files.
const RESERVED_FILES: u64 = 256;

#[derive(Deserialize)]
pub(super) struct StatusQuery {
    within_secs: Option<i64>,
}

pub(super) async fn status(
    State(s): State<Arc<AppState>>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Json<Value>> {
    let t = now();
    let within = q
        .within_secs
        .unwrap_or((s.svid_ttl.as_secs() as i64 / 4).max(60));
    let services = s.store.list_services().await?;
    let near = s
        .store
        .list_certificates(&CertQuery {
            valid_at: Some(t),
            expiring_before: Some(t + within),
            limit: 100,
            ..Default::default()
        })
        .await?;
    let near: Vec<Value> = near
        .iter()
        .filter(|c| c.revoked_at.is_none())
        .map(cert_json)
        .collect();
    let watchers: Vec<Value> = s.watchers.list().into_iter().map(|w| json!(w)).collect();
    let snap = s.ca.snapshot();
    let files = ward_http::open_files();
    // Descriptors not held by sidecars' watch connections, and how many
    // more sidecars the rest of the limit holds (one connection each).
    let capacity = files.map(|f| {
        let others = f.in_use.saturating_sub(watchers.len() as u64);
        f.limit.saturating_sub(others + RESERVED_FILES)
    });
    Ok(Json(json!({
        "healthy": true,
        "trust_domain": snap.trust_domain.as_str(),
        "root_fingerprint": ward_ca::fingerprint(&snap.root),
        "active_signing_ca": s.ca.active().authority.serial(),
        "services": services.len(),
        "connected_proxies": watchers,
        "certificates_near_expiry": near,
        "near_expiry_window_secs": within,
        "open_files": files.map(|f| json!({ "limit": f.limit, "in_use": f.in_use })),
        "sidecar_capacity": capacity,
    })))
}

#[derive(Deserialize)]
pub(super) struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

pub(super) async fn audit(
    State(s): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let entries = s
        .store
        .list_audit(q.after.unwrap_or(0), q.limit.unwrap_or(1000))
        .await?;
    Ok(Json(json!(entries)))
}

pub(super) async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let ok = s.store.get_meta("trust_domain").await.is_ok()
        && s.ca.active().authority.not_after() > ward_ca::now();
    if ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

pub(super) async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.encode(),
    )
}
