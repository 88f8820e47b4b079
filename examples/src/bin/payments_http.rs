//! An HTTP service (axum) that accepts only callers with a ward
//! certificate (mTLS) *and* a valid ward access token for audience
//! `payments`: `GET /balance` needs scope `payments:read`, `POST /charge`
//! needs `payments:write`. Tokens bound to a certificate (`cnf.x5t#S256`)
//! only work on a connection made with that certificate; revoked tokens
//! are refused as soon as ward's watch stream says so.
//!
//! `payments-http --dir DIR --ward https://127.0.0.1:PORT [--listen ADDR]`
//! where DIR holds `svid.pem`, `svid.key` and `bundle.pem`. It prints
//! `listening on ADDR` once it accepts connections.
use std::path::PathBuf;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use clap::Parser;
use serde_json::json;
use ward_examples::{serve_mtls, Peer, Workload};
use ward_jwt::tower::JwtAuthLayer;
use ward_jwt::{Claims, Validation};

#[derive(Parser)]
struct Args {
    /// Directory with svid.pem, svid.key and bundle.pem.
    #[arg(long)]
    dir: PathBuf,
    /// The ward server (the token issuer), e.g. https://127.0.0.1:8443.
    #[arg(long)]
    ward: String,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
}

/// 403 with the RFC 6750 §3.1 challenge when a scope is missing.
fn require_scope(claims: &Claims, scope: &str) -> Option<Response> {
    if claims.scopes().contains(&scope) {
        return None;
    }
    let challenge =
        format!("Bearer realm=\"payments\", error=\"insufficient_scope\", scope=\"{scope}\"");
    Some(
        (
            StatusCode::FORBIDDEN,
            [(header::WWW_AUTHENTICATE, challenge)],
            format!("scope {scope} required\n"),
        )
            .into_response(),
    )
}

async fn balance(Extension(peer): Extension<Peer>, claims: Claims) -> Response {
    if let Some(r) = require_scope(&claims, "payments:read") {
        return r;
    }
    Json(json!({
        "balance": 1200,
        "caller": peer.id,
        "client_id": claims.client_id(),
    }))
    .into_response()
}

async fn charge(Extension(peer): Extension<Peer>, claims: Claims) -> Response {
    if let Some(r) = require_scope(&claims, "payments:write") {
        return r;
    }
    Json(json!({ "charged": true, "caller": peer.id, "client_id": claims.client_id() }))
        .into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    ward_examples::init_logging();
    let args = Args::parse();
    let me = Workload::load(&args.dir)?;
    let tls = me.mesh_tls()?;
    let keys = me.issuer_keys(&args.ward)?;
    keys.keys().await;
    let revoked = me.follow_ward(&args.ward, tls.clone());
    let app = Router::new()
        .route("/balance", get(balance))
        .route("/charge", post(charge))
        .layer(
            JwtAuthLayer::new(keys, Validation::access_token(&args.ward, "payments"))
                .with_revocations(revoked),
        );
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on {}", listener.local_addr()?);
    tracing::info!(id = %me.id, "payments (HTTP) serving");
    serve_mtls(listener, tls.server_config(&[b"h2", b"http/1.1"]), app).await
}
