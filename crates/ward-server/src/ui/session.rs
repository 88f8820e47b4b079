//! Signing in to the dashboard with the admin token, and the session
//! cookie that follows: random, kept here only as its SHA-256, HttpOnly,
//! Secure, SameSite=Strict, and gone after the session lifetime or a
//! sign-out.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::Ui;
use crate::datadir::random_token;
use crate::state::{sha256, token_hash};

const COOKIE: &str = "ward_session";
/// Sessions held at once; the oldest go first past it.
const MAX_SESSIONS: usize = 1024;

pub(crate) struct Sessions {
    ttl: Duration,
    /// SHA-256 of the cookie value → expiry (unix seconds).
    live: Mutex<HashMap<[u8; 32], i64>>,
}

impl Sessions {
    pub(crate) fn new(ttl: Duration) -> Sessions {
        Sessions {
            ttl,
            live: Mutex::new(HashMap::new()),
        }
    }

    /// A new session's cookie value and expiry.
    fn open(&self, now: i64) -> (String, i64) {
        let value = random_token("wds_");
        let expires = now + self.ttl.as_secs() as i64;
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.retain(|_, exp| *exp > now);
        while live.len() >= MAX_SESSIONS {
            let oldest = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k);
            match oldest {
                Some(k) => live.remove(&k),
                None => break,
            };
        }
        live.insert(sha256(value.as_bytes()), expires);
        (value, expires)
    }

    /// The expiry of the session this cookie value names, if it is live.
    fn check(&self, value: &str, now: i64) -> Option<i64> {
        let live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.get(&sha256(value.as_bytes()))
            .copied()
            .filter(|exp| *exp > now)
    }

    fn close(&self, value: &str) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(&sha256(value.as_bytes()));
    }
}

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

/// The session cookie's value in a request, if it has one.
fn cookie(req: &Request) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn unauthorized(message: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({ "error": "unauthorized", "message": message })),
    )
        .into_response()
}

fn forbidden_cross_site() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({
            "error": "cross_site",
            "message": "the dashboard takes JSON posted from its own pages only",
        })),
    )
        .into_response()
}

fn set_cookie(resp: &mut Response, value: &str, max_age: i64) {
    let c =
        format!("{COOKIE}={value}; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// `POST /ui/api/session {"token": "<admin token>"}`: a session cookie,
/// or 401.
pub(super) async fn sign_in(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    if !super::same_origin_json(&req) {
        return forbidden_cross_site();
    }
    let body = match axum::body::to_bytes(req.into_body(), 4096).await {
        Ok(b) => b,
        Err(_) => return unauthorized("send {\"token\": \"<admin token>\"} as JSON"),
    };
    let token = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(|t| t.trim().to_string()))
        .unwrap_or_default();
    if token.is_empty()
        || verify_slices_are_equal(&token_hash(&token), &ui.state.admin_token_hash).is_err()
    {
        ui.state.metrics.admin_unauthorized.inc();
        tracing::info!("dashboard sign-in with a wrong token");
        return unauthorized(
            "wrong admin token: it is the one in <data-dir>/admin.token on the server",
        );
    }
    let (value, expires) = ui.sessions.open(now());
    tracing::info!(expires_at = expires, "dashboard sign-in");
    let mut resp = Json(json!({ "signed_in": true, "expires_at": expires })).into_response();
    set_cookie(&mut resp, &value, expires - now());
    resp
}

/// `DELETE /ui/api/session`: signs out.
pub(super) async fn sign_out(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    if !super::same_origin_json(&req) {
        return forbidden_cross_site();
    }
    if let Some(v) = cookie(&req) {
        ui.sessions.close(&v);
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    set_cookie(&mut resp, "", 0);
    resp
}

/// `GET /ui/api/session`: whether this browser is signed in, and until
/// when (200 either way: the page asks before it knows).
pub(super) async fn current(State(ui): State<Arc<Ui>>, req: Request) -> Response {
    match cookie(&req).and_then(|v| ui.sessions.check(&v, now())) {
        Some(expires) => Json(json!({ "signed_in": true, "expires_at": expires })).into_response(),
        None => Json(json!({ "signed_in": false })).into_response(),
    }
}

/// In front of every data endpoint: a live session, and for posts, JSON
/// from this origin.
pub(super) async fn require_session(
    State(ui): State<Arc<Ui>>,
    req: Request,
    next: Next,
) -> Response {
    if cookie(&req)
        .and_then(|v| ui.sessions.check(&v, now()))
        .is_none()
    {
        return unauthorized("sign in to the dashboard (the session ended or never began)");
    }
    if !super::same_origin_json(&req) {
        return forbidden_cross_site();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::new(Duration::from_secs(10));
        let (v, exp) = s.open(100);
        assert_eq!(exp, 110);
        assert_eq!(s.check(&v, 109), Some(110));
        assert_eq!(s.check(&v, 110), None);
        assert_eq!(s.check("wds_other", 100), None);
        s.close(&v);
        assert_eq!(s.check(&v, 101), None);
    }

    #[test]
    fn sessions_are_bounded() {
        let s = Sessions::new(Duration::from_secs(1000));
        let (first, _) = s.open(0);
        for i in 0..MAX_SESSIONS as i64 {
            s.open(i + 1);
        }
        assert_eq!(s.check(&first, 2), None, "the oldest went first");
        assert!(s.live.lock().unwrap().len() <= MAX_SESSIONS);
    }
}
