//! OAuth2 clients (their secrets shown once, never stored) and the
//! token signing keys.
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use ward_identity::{SpiffeId, DEFAULT_NAMESPACE};
use ward_store::AuditEvent;

use super::{found, now, removed, Actor, ApiError, ApiResult};
use crate::datadir::random_token;
use crate::keys::KeySet;
use crate::registry;
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateClient {
    name: String,
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    auth: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    /// private_key_jwt: the client's public JWK set.
    #[serde(default)]
    jwks: Option<Value>,
}

pub(crate) fn client_json(c: &ward_store::OAuthClient) -> Value {
    json!({
        "client_id": c.client_id, "service_id": c.service_id, "auth": c.auth_method,
        "scopes": serde_json::from_str::<Value>(&c.scopes).unwrap_or_default(),
        "audiences": serde_json::from_str::<Value>(&c.audiences).unwrap_or_default(),
        "created_at": c.created_at,
    })
}

pub(super) async fn create(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<CreateClient>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ns = body.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let svc = registry::registered(&*s.store, &ns, &body.service).await?;
    if SpiffeId::for_service(s.ca.trust_domain(), &ns, &body.name).is_err() {
        return Err(ApiError::bad_request(
            "the client name may contain letters, digits, '.', '-' and '_'",
        ));
    }
    let (secret, secret_hash, jwks) = match body.auth.as_str() {
        "client_secret_basic" | "client_secret_post" => {
            let secret = random_token("wcs_");
            let hash = s.oauth.hash_secret(&secret);
            (Some(secret), Some(hash), None)
        }
        "tls_client_auth" => (None, None, None),
        "private_key_jwt" => {
            let jwks = body.jwks.ok_or_else(|| ApiError::bad_request("private_key_jwt needs the client's public keys (jwks)"))?;
            let parsed = ward_jwt::JwkSet::from_json(&jwks.to_string()).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if parsed.keys.is_empty() {
                return Err(ApiError::bad_request("the client's jwks has no usable signing key"));
            }
            (None, None, Some(jwks.to_string()))
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "auth {other:?} is not supported (tls_client_auth, private_key_jwt, client_secret_basic, client_secret_post)"
            )))
        }
    };
    let audiences = if body.audiences.is_empty() {
        vec![body.service.clone()]
    } else {
        body.audiences
    };
    let client = ward_store::OAuthClient {
        client_id: body.name,
        service_id: svc.spiffe_id,
        auth_method: body.auth,
        secret_hash,
        jwks,
        scopes: json!(body.scopes).to_string(),
        audiences: json!(audiences).to_string(),
        created_at: now(),
    };
    let ev = AuditEvent::now(
        &actor.0,
        "client.create",
        &client.client_id,
        json!({ "auth": client.auth_method, "service": client.service_id }),
    );
    s.store.create_client(&client, &ev).await?;
    let mut v = client_json(&client);
    if let Some(secret) = secret {
        // Shown once; only its keyed hash is stored.
        v["client_secret"] = json!(secret);
    }
    Ok((StatusCode::CREATED, Json(v)))
}

pub(super) async fn list(State(s): State<Arc<AppState>>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(
        s.store
            .list_clients()
            .await?
            .iter()
            .map(client_json)
            .collect(),
    ))
}

pub(super) async fn get(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let client = s.store.get_client(&id).await?;
    found(client.as_ref().map(client_json), || format!("client {id}"))
}

pub(super) async fn delete(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let ev = AuditEvent::now(&actor.0, "client.delete", &id, json!({}));
    let done = s.store.delete_client(&id, &ev).await?;
    removed(done, || format!("client {id}"))
}

/// Which key set: `oauth` (access tokens, the default) or `jwt-svid`.
#[derive(Deserialize, Default)]
pub(super) struct KeyPurpose {
    #[serde(default)]
    purpose: Option<String>,
}

impl KeyPurpose {
    fn keys<'a>(&self, s: &'a AppState) -> ApiResult<&'a KeySet> {
        match self.purpose.as_deref().unwrap_or("oauth") {
            "oauth" => Ok(&s.oauth.keys),
            "jwt-svid" => Ok(&s.jwt_svids.keys),
            other => Err(ApiError::bad_request(format!(
                "purpose {other:?}: use oauth (access tokens) or jwt-svid"
            ))),
        }
    }
}

pub(super) async fn list_signing_keys(
    State(s): State<Arc<AppState>>,
    Query(q): Query<KeyPurpose>,
) -> ApiResult<Json<Vec<Value>>> {
    let purpose = q.purpose.unwrap_or_else(|| "oauth".into());
    let keys = s.store.list_signing_keys().await?;
    Ok(Json(
        keys.iter()
            .filter(|k| k.purpose == purpose)
            .map(|k| json!({ "kid": k.kid, "alg": k.alg, "state": k.state, "purpose": k.purpose, "created_at": k.created_at, "retire_until": k.retire_until }))
            .collect(),
    ))
}

pub(super) async fn rotate_signing_key(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    body: Option<Json<KeyPurpose>>,
) -> ApiResult<Json<Value>> {
    let purpose = body.map(|Json(b)| b).unwrap_or_default();
    let active = purpose.keys(&s)?.rotate(&actor.0).await?;
    Ok(Json(json!({ "active_kid": active })))
}
