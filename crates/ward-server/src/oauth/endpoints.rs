//! The OAuth2 HTTP endpoints: token, introspection, revocation, JWKS and
//! metadata, with client authentication.
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::extract::{Form, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use ward_jwt::{JwkSet, Validation};
use ward_store::{AuditEvent, OAuthClient};

use super::{now, OAuth, MAX_ASSERTION_TTL};
use crate::datadir::random_token;
use crate::state::{AppState, ConnInfo, PeerAuth};

/// An RFC 6749 §5.2 error.
pub(crate) struct OAuthError {
    code: &'static str,
    description: String,
    basic: bool,
}

impl OAuthError {
    fn new(code: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            code,
            description: description.into(),
            basic: false,
        }
    }
    fn client(description: impl Into<String>, basic: bool) -> OAuthError {
        OAuthError {
            code: "invalid_client",
            description: description.into(),
            basic,
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let status = if self.code == "invalid_client" {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut r = (
            status,
            Json(json!({ "error": self.code, "error_description": self.description })),
        )
            .into_response();
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if status == StatusCode::UNAUTHORIZED {
            let challenge = if self.basic {
                "Basic realm=\"ward\""
            } else {
                "Bearer realm=\"ward\""
            };
            h.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        r
    }
}

fn form_decode(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match u8::from_str_radix(&s[i + 1..i + 3], 16) {
                Ok(v) => {
                    out.push(v);
                    i += 2;
                }
                Err(_) => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn peer_of(conn: &Option<Extension<ConnInfo>>) -> Arc<PeerAuth> {
    conn.as_ref()
        .map_or_else(|| Arc::new(PeerAuth::Anonymous), |c| c.peer.clone())
}

/// Who is calling the token, introspection or revocation endpoint.
struct Authenticated {
    client: OAuthClient,
    /// SHA-256 of the mTLS certificate, when the client used one.
    cert_sha256: Option<[u8; 32]>,
}

async fn authenticate(
    s: &AppState,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
    peer: &PeerAuth,
    cert_der_sha256: Option<[u8; 32]>,
) -> Result<Authenticated, OAuthError> {
    let oauth = &s.oauth;
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| ward_jwt::credentials(v, "Basic"))
        .map(str::to_string);
    let fail = |m: &str, basic: bool| OAuthError::client(m, basic);
    let load = |id: String, basic: bool| async move {
        s.store
            .get_client(&id)
            .await
            .map_err(|_| OAuthError::new("server_error", "storage error"))?
            .ok_or_else(|| OAuthError::client("client authentication failed", basic))
    };
    if let Some(b) = basic {
        let decoded = STANDARD
            .decode(&b)
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| fail("malformed Basic credentials", true))?;
        let (id, secret) = decoded
            .split_once(':')
            .ok_or_else(|| fail("malformed Basic credentials", true))?;
        let (id, secret) = (form_decode(id), form_decode(secret));
        let client = load(id, true).await?;
        check_secret(oauth, &client, &secret, "client_secret_basic")
            .map_err(|_| fail("client authentication failed", true))?;
        return Ok(Authenticated {
            client,
            cert_sha256: None,
        });
    }
    if let Some(secret) = form.get("client_secret") {
        let id = form
            .get("client_id")
            .cloned()
            .ok_or_else(|| fail("client_id is required", false))?;
        let client = load(id, false).await?;
        check_secret(oauth, &client, secret, "client_secret_post")
            .map_err(|_| fail("client authentication failed", false))?;
        return Ok(Authenticated {
            client,
            cert_sha256: None,
        });
    }
    if let Some(assertion) = form.get("client_assertion") {
        if form.get("client_assertion_type").map(String::as_str)
            != Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        {
            return Err(OAuthError::new(
                "invalid_request",
                "unsupported client_assertion_type",
            ));
        }
        // The assertion names its client in iss/sub; read it unverified
        // only to find the keys it must verify with.
        let claimed = assertion
            .split('.')
            .nth(1)
            .and_then(|p| URL_SAFE_NO_PAD.decode(p).ok())
            .and_then(|p| serde_json::from_slice::<Value>(&p).ok())
            .and_then(|v| v["iss"].as_str().map(String::from))
            .ok_or_else(|| fail("malformed client assertion", false))?;
        let client = load(claimed.clone(), false).await?;
        if client.auth_method != "private_key_jwt" {
            return Err(fail("client authentication failed", false));
        }
        let keys = JwkSet::from_json(client.jwks.as_deref().unwrap_or("{}"))
            .map_err(|_| fail("client has no usable keys", false))?;
        let v = Validation {
            issuer: Some(claimed.clone()),
            audience: Some(oauth.token_endpoint()),
            typ: Vec::new(),
            required: vec!["iss", "sub", "aud", "exp", "jti"],
            leeway_secs: 30,
            max_size: 8 * 1024,
            peer_cert_sha256: None,
            now: None,
            check_binding: false,
        };
        let claims = ward_jwt::verify(assertion, &keys, &v)
            .map_err(|e| fail(&format!("client assertion refused: {e}"), false))?;
        if claims.sub() != Some(claimed.as_str()) {
            return Err(fail("client assertion sub must equal iss", false));
        }
        let exp = claims.exp().unwrap_or(0);
        if exp > now() + MAX_ASSERTION_TTL {
            return Err(fail(
                "client assertion lives too long (at most 1 hour)",
                false,
            ));
        }
        let jti = claims.jti().unwrap_or_default().to_string();
        let fresh = s
            .store
            .use_assertion(&format!("{claimed}:{jti}"), exp, now())
            .await
            .map_err(|_| OAuthError::new("server_error", "storage error"))?;
        if !fresh {
            return Err(fail("client assertion already used", false));
        }
        return Ok(Authenticated {
            client,
            cert_sha256: None,
        });
    }
    // tls_client_auth: the client's ward certificate identifies it.
    let id = form
        .get("client_id")
        .cloned()
        .ok_or_else(|| fail("no client authentication", false))?;
    let client = load(id, false).await?;
    match peer {
        PeerAuth::Verified(p)
            if client.auth_method == "tls_client_auth" && p.id.as_str() == client.service_id =>
        {
            Ok(Authenticated {
                client,
                cert_sha256: cert_der_sha256,
            })
        }
        _ => Err(fail("client authentication failed", false)),
    }
}

fn check_secret(oauth: &OAuth, client: &OAuthClient, secret: &str, method: &str) -> Result<(), ()> {
    if client.auth_method != method {
        return Err(());
    }
    let stored = client.secret_hash.as_deref().ok_or(())?;
    verify_slices_are_equal(&oauth.hash_secret(secret), stored).map_err(|_| ())
}

fn parse_list(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_default()
}

pub(crate) async fn token(
    State(s): State<Arc<AppState>>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Response, OAuthError> {
    let peer = peer_of(&conn);
    let cert_hash = conn.as_ref().and_then(|c| c.cert_sha256);
    let auth = authenticate(&s, &headers, &form, &peer, cert_hash).await?;
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type {other} is not supported (use client_credentials)"),
            ))
        }
        None => return Err(OAuthError::new("invalid_request", "grant_type is required")),
    }
    let client = &auth.client;
    let allowed_scopes = parse_list(&client.scopes);
    let scopes: Vec<String> = match form.get("scope") {
        Some(s) => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect(),
        None => allowed_scopes.clone(),
    };
    if let Some(bad) = scopes.iter().find(|x| !allowed_scopes.contains(x)) {
        return Err(OAuthError::new(
            "invalid_scope",
            format!("scope {bad} is not allowed for this client"),
        ));
    }
    let allowed_aud = parse_list(&client.audiences);
    let requested = form
        .get("audience")
        .or_else(|| form.get("resource"))
        .cloned();
    let aud = match requested {
        Some(a) if allowed_aud.contains(&a) => a,
        Some(a) => {
            return Err(OAuthError::new(
                "invalid_target",
                format!("audience {a} is not allowed for this client"),
            ))
        }
        None if allowed_aud.len() == 1 => allowed_aud[0].clone(),
        None => {
            return Err(OAuthError::new(
                "invalid_request",
                "audience (or resource) is required",
            ))
        }
    };
    let t = now();
    let jti = random_token("")[..22].to_string();
    let mut claims = json!({
        "iss": s.oauth.issuer, "sub": client.client_id, "aud": aud, "exp": t + s.oauth.token_ttl, "iat": t, "nbf": t,
        "jti": jti, "client_id": client.client_id, "scope": scopes.join(" "),
    });
    if let Some(h) = auth.cert_sha256 {
        claims["cnf"] = json!({ "x5t#S256": URL_SAFE_NO_PAD.encode(h) });
    }
    let key = s.oauth.keys.load().active.clone();
    let token = key
        .sign("at+jwt", &claims)
        .map_err(|_| OAuthError::new("server_error", "signing failed"))?;
    let ev = AuditEvent::now(
        &client.client_id,
        "token.issue",
        &jti,
        json!({ "aud": aud, "scope": scopes.join(" "), "bound": auth.cert_sha256.is_some() }),
    );
    s.store
        .audit_batched(&ev)
        .await
        .map_err(|_| OAuthError::new("server_error", "storage error"))?;
    s.metrics.tokens_issued.inc();
    let mut resp = Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": s.oauth.token_ttl, "scope": scopes.join(" ") })).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

fn introspection_validation(issuer: &str) -> Validation {
    let mut v = Validation::access_token(issuer, "");
    v.audience = None;
    v.check_binding = false;
    // The issuer's own clock decides: no leeway for expiry here.
    v.leeway_secs = 0;
    v
}

pub(crate) async fn introspect(
    State(s): State<Arc<AppState>>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<Json<Value>, OAuthError> {
    let peer = peer_of(&conn);
    authenticate(&s, &headers, &form, &peer, None).await?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token is required"))?;
    let keys = s.oauth.keys.load();
    let Ok(claims) = ward_jwt::verify(
        token,
        &keys.verify,
        &introspection_validation(&s.oauth.issuer),
    ) else {
        return Ok(Json(json!({ "active": false })));
    };
    if claims
        .jti()
        .is_some_and(|j| s.oauth.revoked.load().contains(j))
    {
        return Ok(Json(json!({ "active": false })));
    }
    let mut out = json!({ "active": true, "token_type": "Bearer" });
    for (k, v) in claims.0 {
        out[k] = v;
    }
    Ok(Json(out))
}

pub(crate) async fn revoke(
    State(s): State<Arc<AppState>>,
    conn: Option<Extension<ConnInfo>>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Result<StatusCode, OAuthError> {
    let peer = peer_of(&conn);
    let auth = authenticate(&s, &headers, &form, &peer, None).await?;
    let token = form
        .get("token")
        .ok_or_else(|| OAuthError::new("invalid_request", "token is required"))?;
    let keys = s.oauth.keys.load();
    // RFC 7009: invalid or foreign tokens get 200 too; only the client the
    // token was issued to can revoke it.
    if let Ok(claims) = ward_jwt::verify(
        token,
        &keys.verify,
        &introspection_validation(&s.oauth.issuer),
    ) {
        if claims.client_id() == Some(auth.client.client_id.as_str()) {
            if let (Some(jti), Some(exp)) = (claims.jti(), claims.exp()) {
                let ev = AuditEvent::now(&auth.client.client_id, "token.revoke", jti, json!({}));
                s.store
                    .revoke_token(jti, exp, &ev)
                    .await
                    .map_err(|_| OAuthError::new("server_error", "storage error"))?;
                let mut set: HashSet<String> = (**s.oauth.revoked.load()).clone();
                set.insert(jti.to_string());
                s.oauth.revoked.store(Arc::new(set));
                s.oauth.changed.send_modify(|v| *v += 1);
            }
        }
    }
    Ok(StatusCode::OK)
}

pub(crate) async fn jwks(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CACHE_CONTROL, "max-age=60")],
        Json(s.oauth.jwks()),
    )
}

pub(crate) async fn metadata(State(s): State<Arc<AppState>>) -> Json<Value> {
    let i = &s.oauth.issuer;
    Json(json!({
        "issuer": i,
        "token_endpoint": format!("{i}/oauth2/token"),
        "jwks_uri": format!("{i}/oauth2/jwks"),
        "introspection_endpoint": format!("{i}/oauth2/introspect"),
        "revocation_endpoint": format!("{i}/oauth2/revoke"),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["tls_client_auth", "private_key_jwt", "client_secret_basic", "client_secret_post"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256", "ES384", "EdDSA", "RS256", "PS256"],
        "introspection_endpoint_auth_methods_supported": ["tls_client_auth", "private_key_jwt", "client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["tls_client_auth", "private_key_jwt", "client_secret_basic", "client_secret_post"],
        "tls_client_certificate_bound_access_tokens": true,
        "response_types_supported": [],
        "scopes_supported": [],
    }))
}
