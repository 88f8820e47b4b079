//! The admin REST API under `/api/v1/`, and the public HTTP endpoints:
//! the error type and authentication every handler shares, the routes,
//! and one module per resource.
pub(crate) mod ca;
pub(crate) mod certificates;
pub(crate) mod clients;
pub(crate) mod policies;
mod services;
mod status;
pub(crate) mod traffic;

use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use ward_store::StoreError;

use crate::ca::CaManagerError;
use crate::registry::RegistryError;
use crate::state::{token_hash, AppState, ConnInfo, PeerAuth};

/// An error as the API returns it: status and `{"error": code, "message": …}`.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub(crate) fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(what) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            StoreError::Full(e) => {
                tracing::error!(error = %e, "the disk under the data dir is full; writes fail until space is freed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "disk_full",
                    "the disk under the server's data dir is full: nothing was changed; free space there and retry (reads and the mesh go on)",
                )
            }
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "the database cannot be reached; writes fail until it is back");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    crate::error::database_unavailable(),
                )
            }
            e => {
                tracing::error!(error = %e, "storage error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "storage error; see the server log",
                )
            }
        }
    }
}

impl From<crate::error::StartError> for ApiError {
    fn from(e: crate::error::StartError) -> ApiError {
        if let crate::error::StartError::Store(e) = e {
            return ApiError::from(e);
        }
        tracing::error!(error = %e, "signing-key error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "signing-key error; see the server log",
        )
    }
}

impl From<CaManagerError> for ApiError {
    fn from(e: CaManagerError) -> ApiError {
        match e {
            CaManagerError::Store(e) => ApiError::from(e),
            e => {
                tracing::error!(error = %e, "CA error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "CA error; see the server log",
                )
            }
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> ApiError {
        match e {
            e @ RegistryError::NotRegistered { .. } => ApiError::not_found(e.to_string()),
            RegistryError::Store(e) => ApiError::from(e),
        }
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Who made an admin request, for the audit log.
#[derive(Clone, Debug)]
pub(crate) struct Actor(pub String);

/// Authenticates every request under `/api/`, before routing, so that an
/// unauthenticated caller learns nothing about which paths or resources
/// exist: bearer admin token, or an admin client certificate
/// (`spiffe://<td>/ward/admin`).
pub(crate) async fn require_admin(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ward_jwt::credentials(v, "Bearer"));
    let mut actor = None;
    if let Some(token) = bearer {
        if verify_slices_are_equal(&token_hash(token), &state.admin_token_hash).is_ok() {
            actor = Some("admin".to_string());
        }
    }
    if actor.is_none() {
        if let Some(conn) = req.extensions().get::<ConnInfo>() {
            if let PeerAuth::Verified(p) = &*conn.peer {
                let admin = format!("spiffe://{}/ward/admin", state.ca.trust_domain());
                if p.id.as_str() == admin && !state.ca.snapshot().revoked.contains(&p.serial) {
                    actor = Some(admin);
                }
            }
        }
    }
    match actor {
        Some(a) => {
            req.extensions_mut().insert(Actor(a));
            next.run(req).await
        }
        None => {
            state.metrics.admin_unauthorized.inc();
            let remote = req
                .extensions()
                .get::<ConnInfo>()
                .map(|c| c.remote.to_string())
                .unwrap_or_default();
            tracing::info!(%remote, path = req.uri().path(), "admin request without valid credentials");
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin credentials required: send `Authorization: Bearer <admin token>` (the token is in <data-dir>/admin.token)",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ward\""),
            );
            resp
        }
    }
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/services", get(services::list).post(services::add))
        .route(
            "/api/v1/services/{namespace}/{name}",
            get(services::get).delete(services::remove),
        )
        .route(
            "/api/v1/join-tokens",
            post(services::create_join_token).get(services::list_join_tokens),
        )
        .route(
            "/api/v1/join-tokens/{id}",
            axum::routing::delete(services::revoke_join_token),
        )
        .route(
            "/api/v1/certificates",
            get(certificates::list).post(certificates::issue),
        )
        .route("/api/v1/certificates/{serial}", get(certificates::get))
        .route(
            "/api/v1/certificates/{serial}/revoke",
            post(certificates::revoke),
        )
        .route("/api/v1/policies", get(policies::list))
        // A mesh-wide apply can carry thousands of documents; only an
        // authenticated admin gets this far.
        .route(
            "/api/v1/policies/apply",
            post(policies::apply).layer(axum::extract::DefaultBodyLimit::max(64 << 20)),
        )
        .route("/api/v1/policies/check", post(policies::check))
        .route(
            "/api/v1/policies/{namespace}/{name}",
            get(policies::get).delete(policies::delete),
        )
        .route("/api/v1/clients", get(clients::list).post(clients::create))
        .route(
            "/api/v1/clients/{id}",
            get(clients::get).delete(clients::delete),
        )
        .route("/api/v1/signing-keys", get(clients::list_signing_keys))
        .route(
            "/api/v1/signing-keys/rotate",
            post(clients::rotate_signing_key),
        )
        .route("/oauth2/token", post(crate::oauth::endpoints::token))
        .route(
            "/oauth2/introspect",
            post(crate::oauth::endpoints::introspect),
        )
        .route("/oauth2/revoke", post(crate::oauth::endpoints::revoke))
        .route("/oauth2/jwks", get(crate::oauth::endpoints::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(crate::oauth::endpoints::metadata),
        )
        .route("/api/v1/audit", get(status::audit))
        .route("/api/v1/traffic", get(traffic::show))
        .route("/api/v1/ca", get(ca::show))
        .route("/api/v1/ca/rotate", post(ca::rotate))
        .route("/api/v1/status", get(status::status))
        .route("/bundle", get(ca::bundle_json))
        .route("/bundle.pem", get(ca::bundle_pem))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(status::readyz))
        .route("/metrics", get(status::metrics))
}

/// Unknown paths: gRPC callers get UNIMPLEMENTED, everyone else a JSON 404.
pub(crate) async fn not_found(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no such method {}", req.uri().path()))
            .into_http();
    }
    ApiError::not_found(format!("no such endpoint {}", req.uri().path())).into_response()
}

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

/// A named resource for `GET …/{name}`: 200 with it, or 404 saying
/// that there is no `what`.
fn found<T>(item: Option<T>, what: impl FnOnce() -> String) -> ApiResult<Json<T>> {
    item.map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no {}", what())))
}

/// The answer to `DELETE …/{name}`: 204 if something was removed, or 404
/// saying that there is no `what`.
fn removed(done: bool, what: impl FnOnce() -> String) -> ApiResult<StatusCode> {
    if done {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no {}", what())))
    }
}
