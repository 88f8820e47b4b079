//! The OAuth2 authorization server for services: client_credentials with
//! tls_client_auth (RFC 8705), private_key_jwt (RFC 7523) and client
//! secrets; RFC 9068 JWT access tokens, ES256, certificate-bound when the
//! client used mTLS; metadata (RFC 8414), JWKS, introspection (RFC 7662),
//! revocation (RFC 7009); signing keys rotated with pre-publication.
//!
//! This module keeps the keys and mints tokens; [`endpoints`] is the HTTP
//! side.
use std::collections::HashSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use aws_lc_rs::hmac;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use ward_ca::Kek;
use ward_jwt::{Algorithm, JwkSet, SigningKey};
use ward_store::{AuditEvent, SigningKeyRecord, Store};

use crate::datadir::random_token;
use crate::error::StartError;

pub(crate) mod endpoints;

/// Signing keys sign for a day before the next one takes over.
const KEY_ROTATION_SECS: i64 = 24 * 3600;
/// Longest accepted client assertion lifetime (private_key_jwt): an
/// hour, the bound common authorization servers use and the default of
/// common clients (authlib); the assertion is single-use regardless.
const MAX_ASSERTION_TTL: i64 = 3600;

struct Keys {
    active: Arc<SigningKey>,
    /// The published set: next, active and retired keys.
    jwks: Value,
    verify: JwkSet,
}

pub(crate) struct OAuth {
    store: Arc<dyn Store>,
    kek: Kek,
    pepper: hmac::Key,
    pub issuer: String,
    /// Access-token lifetime, seconds.
    token_ttl: i64,
    keys: ArcSwap<Keys>,
    revoked: ArcSwap<HashSet<String>>,
    pub changed: tokio::sync::watch::Sender<u64>,
}

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

impl OAuth {
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        kek: Kek,
        issuer: String,
        token_ttl: i64,
    ) -> Result<Arc<OAuth>, StartError> {
        // The pepper of the keyed secret hash, sealed like every key.
        let sealed = match store.get_meta("oauth_pepper").await? {
            Some(s) => STANDARD
                .decode(s)
                .map_err(|_| StartError::Config("stored pepper is corrupt".into()))?,
            None => {
                let raw = random_token("");
                let sealed = kek.seal(b"oauth:pepper", raw.as_bytes())?;
                let stored = store
                    .init_meta("oauth_pepper", &STANDARD.encode(&sealed))
                    .await?;
                STANDARD
                    .decode(stored)
                    .map_err(|_| StartError::Config("stored pepper is corrupt".into()))?
            }
        };
        let pepper = kek.open(b"oauth:pepper", &sealed)?;
        let oauth = OAuth {
            store: store.clone(),
            pepper: hmac::Key::new(hmac::HMAC_SHA256, &pepper),
            kek,
            issuer,
            token_ttl,
            keys: ArcSwap::from_pointee(Keys {
                active: Arc::new(
                    SigningKey::generate(Algorithm::ES256, "bootstrap").map_err(jwt_err)?,
                ),
                jwks: json!({ "keys": [] }),
                verify: JwkSet::default(),
            }),
            revoked: ArcSwap::from_pointee(
                store.revoked_tokens(now()).await?.into_iter().collect(),
            ),
            changed: tokio::sync::watch::channel(0).0,
        };
        if oauth.store.list_signing_keys().await?.is_empty() {
            let active = oauth.new_key("active")?;
            let next = oauth.new_key("next")?;
            oauth
                .store
                .update_signing_keys(
                    &[active, next],
                    &[],
                    &[],
                    &AuditEvent::now("server", "signing-key.create", "", json!({})),
                )
                .await?;
        }
        oauth.reload().await?;
        Ok(Arc::new(oauth))
    }

    fn new_key(&self, state: &str) -> Result<SigningKeyRecord, StartError> {
        let kid = random_token("")[..16].to_string();
        let key = SigningKey::generate(Algorithm::ES256, &kid).map_err(jwt_err)?;
        Ok(SigningKeyRecord {
            kid: kid.clone(),
            alg: "ES256".into(),
            state: state.into(),
            public_jwk: key.public_jwk().to_string(),
            key_sealed: self
                .kek
                .seal(format!("jwt:{kid}").as_bytes(), key.pkcs8())?,
            created_at: now(),
            retire_until: None,
        })
    }

    async fn reload(&self) -> Result<(), StartError> {
        let recs = self.store.list_signing_keys().await?;
        let active = recs
            .iter()
            .find(|k| k.state == "active")
            .ok_or_else(|| StartError::Config("no active signing key".into()))?;
        let pkcs8 = self
            .kek
            .open(format!("jwt:{}", active.kid).as_bytes(), &active.key_sealed)?;
        let key = SigningKey::from_pkcs8(Algorithm::ES256, &active.kid, &pkcs8).map_err(jwt_err)?;
        let published: Vec<Value> = recs
            .iter()
            .filter_map(|k| serde_json::from_str(&k.public_jwk).ok())
            .collect();
        let jwks = json!({ "keys": published });
        let verify = JwkSet::from_json(&jwks.to_string()).map_err(jwt_err)?;
        self.keys.store(Arc::new(Keys {
            active: Arc::new(key),
            jwks,
            verify,
        }));
        // Sidecars verify ward's tokens with the keys on the watch stream.
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Activates the pre-published key, retires the active one (kept in the
    /// JWKS until every token it signed has expired), pre-publishes a new
    /// one, and drops retired keys whose tokens are all gone.
    pub(crate) async fn rotate(&self, actor: &str) -> Result<String, StartError> {
        let recs = self.store.list_signing_keys().await?;
        let t = now();
        let mut states = Vec::new();
        let mut delete = Vec::new();
        for k in &recs {
            match k.state.as_str() {
                "active" => states.push((
                    k.kid.clone(),
                    "retired".to_string(),
                    Some(t + self.token_ttl + ward_jwt::MAX_LEEWAY_SECS),
                )),
                "next" => states.push((k.kid.clone(), "active".to_string(), None)),
                _ if k.retire_until.is_some_and(|u| u <= t) => delete.push(k.kid.clone()),
                _ => {}
            }
        }
        let next = self.new_key("next")?;
        let activated = recs
            .iter()
            .find(|k| k.state == "next")
            .map(|k| k.kid.clone())
            .unwrap_or_default();
        self.store
            .update_signing_keys(
                &[next],
                &states,
                &delete,
                &AuditEvent::now(
                    actor,
                    "signing-key.rotate",
                    &activated,
                    json!({ "dropped": delete }),
                ),
            )
            .await?;
        self.reload().await?;
        Ok(activated)
    }

    /// Rotates the active key once a day and drops retired keys past their
    /// time (run periodically).
    pub(crate) async fn maintain(&self) -> Result<(), StartError> {
        let t = now();
        let recs = self.store.list_signing_keys().await?;
        if recs
            .iter()
            .any(|k| k.state == "active" && t - k.created_at > KEY_ROTATION_SECS)
        {
            self.rotate("server").await?;
            return Ok(());
        }
        let delete: Vec<String> = recs
            .into_iter()
            .filter(|k| k.state == "retired" && k.retire_until.is_some_and(|u| u <= t))
            .map(|k| k.kid)
            .collect();
        if !delete.is_empty() {
            self.store
                .update_signing_keys(
                    &[],
                    &[],
                    &delete,
                    &AuditEvent::now("server", "signing-key.drop", "", json!({ "kids": delete })),
                )
                .await?;
            self.reload().await?;
        }
        Ok(())
    }

    pub(crate) fn jwks(&self) -> Value {
        self.keys.load().jwks.clone()
    }

    pub(crate) fn revoked_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self.revoked.load().iter().cloned().collect();
        v.sort();
        v
    }

    /// Keyed hash of a client secret (HMAC-SHA256 with a sealed pepper):
    /// fast, as it should be for 256-bit random secrets.
    pub(crate) fn hash_secret(&self, secret: &str) -> Vec<u8> {
        hmac::sign(&self.pepper, secret.as_bytes())
            .as_ref()
            .to_vec()
    }

    fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer)
    }
}

fn jwt_err(e: ward_jwt::JwtError) -> StartError {
    StartError::Config(format!("JWT: {e}"))
}
