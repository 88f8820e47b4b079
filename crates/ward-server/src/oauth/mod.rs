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
use serde_json::Value;
use ward_ca::Kek;
use ward_store::Store;

use crate::datadir::random_token;
use crate::error::StartError;
use crate::keys::KeySet;

pub(crate) mod endpoints;

/// Longest accepted client assertion lifetime (private_key_jwt): an
/// hour, the bound common authorization servers use and the default of
/// common clients (authlib); the assertion is single-use regardless.
const MAX_ASSERTION_TTL: i64 = 3600;

pub(crate) struct OAuth {
    pepper: hmac::Key,
    pub issuer: String,
    /// Access-token lifetime, seconds.
    token_ttl: i64,
    /// The access-token signing keys.
    pub keys: KeySet,
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
        let keys = KeySet::open(store.clone(), kek, "oauth", token_ttl).await?;
        let oauth = OAuth {
            keys,
            pepper: hmac::Key::new(hmac::HMAC_SHA256, &pepper),
            issuer,
            token_ttl,
            revoked: ArcSwap::from_pointee(
                store.revoked_tokens(now()).await?.into_iter().collect(),
            ),
            changed: tokio::sync::watch::channel(0).0,
        };
        Ok(Arc::new(oauth))
    }

    pub(crate) fn jwks(&self) -> Value {
        self.keys.jwks()
    }

    /// Reloads the revoked token ids from the store (another replica
    /// revoked one), telling watchers if the set changed.
    pub(crate) async fn reload_revoked(
        &self,
        store: &dyn ward_store::Store,
    ) -> Result<(), ward_store::StoreError> {
        let set: HashSet<String> = store.revoked_tokens(now()).await?.into_iter().collect();
        if **self.revoked.load() != set {
            self.revoked.store(Arc::new(set));
            self.changed.send_modify(|v| *v += 1);
        }
        Ok(())
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
