//! The admin listener (loopback): liveness, readiness, metrics, config,
//! certificates, shutdown.
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;

use crate::state::Shared;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    let app = Router::new()
        .route("/live", get(|| async { "live\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/config", get(config))
        .route("/certs", get(certs))
        .route("/shutdown", post(shutdown))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}

async fn ready(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    match s.not_ready() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.encode(),
    )
}

async fn config(State(s): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let policies = s.policies.load();
    Json(json!({
        "spiffe_id": s.id.as_str(),
        "config": &*s.cfg,
        "control_plane_connected": s.connected.load(Ordering::Relaxed),
        "endpoints": &**s.endpoints.load(),
        "unregistered_upstreams": &**s.unregistered_upstreams.load(),
        "policies": policies.len(),
        "default_policy": policies.default_action(),
    }))
}

async fn certs(State(s): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let svid = s.svid.get();
    let trust = s.tls.trust();
    Json(json!({
        "spiffe_id": s.id.as_str(),
        "serial": svid.serial,
        "not_before": svid.not_before,
        "not_after": svid.not_after,
        "chain_pem": svid.chain.iter().map(|c| ward_ca::to_pem("CERTIFICATE", c)).collect::<String>(),
        "bundle": trust.bundle.iter().map(|c| ward_ca::fingerprint(c)).collect::<Vec<_>>(),
        "revoked": trust.revoked.len(),
    }))
}

async fn shutdown(State(s): State<Arc<Shared>>) -> impl IntoResponse {
    let _ = s.shutdown.send(true);
    (StatusCode::ACCEPTED, "shutting down\n")
}
