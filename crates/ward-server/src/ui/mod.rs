//! The dashboard: `https://<ui-listen>/ui/`, on a port of its own.
//!
//! Its pages are static files compiled into the binary (`assets/`,
//! nothing fetched at run time); they read JSON from `/ui/api/`, which
//! answers only to a signed-in browser. Signing in takes the admin token
//! and gives an HttpOnly, Secure, SameSite=Strict session cookie; the
//! dashboard reads, and the what-if check is the one thing it posts. Every
//! response carries a strict Content-Security-Policy (scripts and styles
//! from these files only, no framing).
mod data;
mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::state::AppState;
pub(crate) use session::Sessions;

/// What every handler of the dashboard shares.
pub(crate) struct Ui {
    pub state: Arc<AppState>,
    pub sessions: Sessions,
}

/// One embedded file: path under `/ui/`, content type, bytes.
struct Asset(&'static str, &'static str, &'static [u8]);

const ASSETS: &[Asset] = &[
    Asset(
        "",
        "text/html; charset=utf-8",
        include_bytes!("assets/index.html"),
    ),
    Asset(
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    Asset(
        "app.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/app.css"),
    ),
    Asset(
        "favicon.svg",
        "image/svg+xml",
        include_bytes!("assets/favicon.svg"),
    ),
    Asset(
        "vendor/cytoscape.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/cytoscape.min.js"),
    ),
    Asset(
        "vendor/cytoscape.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("assets/vendor/cytoscape.LICENSE.txt"),
    ),
];

/// Scripts, styles, images and requests from this origin only; no
/// inline script or style, no plugins, no framing, no form posts away.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub(crate) fn routes(state: Arc<AppState>, session_ttl: Duration) -> Router {
    let ui = Arc::new(Ui {
        state,
        sessions: Sessions::new(session_ttl),
    });
    let api = Router::new()
        .route("/ui/api/overview", get(data::overview))
        .route("/ui/api/traffic", get(data::traffic))
        .route("/ui/api/policies", get(data::policies))
        .route("/ui/api/policies/{namespace}/{name}", get(data::policy))
        .route("/ui/api/check", post(data::check))
        .route("/ui/api/audit", get(data::audit))
        .route("/ui/api/clients", get(data::clients))
        .layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            session::require_session,
        ));
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(asset))
        .route("/ui/{*file}", get(asset))
        .route(
            "/ui/api/session",
            post(session::sign_in)
                .delete(session::sign_out)
                .get(session::current),
        )
        .merge(api)
        .fallback(not_found)
        .layer(axum::middleware::from_fn(headers))
        .with_state(ui)
}

async fn asset(req: Request) -> Response {
    let path = req.uri().path().strip_prefix("/ui/").unwrap_or_default();
    match ASSETS.iter().find(|a| a.0 == path) {
        Some(Asset(_, ctype, body)) => (
            [
                (header::CONTENT_TYPE, *ctype),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            *body,
        )
            .into_response(),
        None => not_found(req).await,
    }
}

async fn not_found(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "not_found", "message": format!("no such page {}", req.uri().path()) })),
    )
        .into_response()
}

/// The headers every answer carries; JSON is never cached.
async fn headers(req: Request, next: Next) -> Response {
    let api = req.uri().path().starts_with("/ui/api/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

/// A posted body must be JSON (which a cross-site form cannot send
/// without a CORS preflight this origin never grants), from this origin
/// when the browser says where it comes from.
fn same_origin_json(req: &Request) -> bool {
    if req.method() != Method::POST && req.method() != Method::DELETE {
        return true;
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok());
    let origin_ok = match req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        None => true,
        Some(origin) => {
            let authority = req
                .uri()
                .authority()
                .map(|a| a.as_str().to_string())
                .or(host.map(str::to_string));
            authority.is_some_and(|a| origin == format!("https://{a}"))
        }
    };
    (json || req.method() == Method::DELETE) && origin_ok
}
