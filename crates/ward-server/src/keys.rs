//! Token signing keys, one set per purpose (OAuth2 access tokens,
//! JWT-SVIDs): sealed in the store, rotated daily with pre-publication (the
//! next key is published a rotation before it signs) and retired keys kept
//! published until every token they signed has expired.
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::{json, Value};
use tokio::sync::watch;
use ward_ca::Kek;
use ward_jwt::{Algorithm, JwkSet, SigningKey};
use ward_store::{AuditEvent, SigningKeyRecord, Store};

use crate::datadir::random_token;
use crate::error::StartError;

/// Signing keys sign for a day before the next one takes over.
const KEY_ROTATION_SECS: i64 = 24 * 3600;

/// The keys in force.
pub(crate) struct Keys {
    pub active: Arc<SigningKey>,
    /// The published set: next, active and retired keys.
    pub jwks: Value,
    pub verify: JwkSet,
}

/// The signing keys of one purpose.
pub(crate) struct KeySet {
    purpose: &'static str,
    store: Arc<dyn Store>,
    kek: Kek,
    /// The longest lifetime of a token the keys sign, seconds: a retired
    /// key stays published this long (plus leeway).
    token_ttl: i64,
    keys: ArcSwap<Keys>,
    /// Bumped whenever the published set changes.
    pub changed: watch::Sender<u64>,
}

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

fn jwt_err(e: ward_jwt::JwtError) -> StartError {
    StartError::Config(format!("JWT: {e}"))
}

impl KeySet {
    /// Loads the keys of `purpose`, creating an active and a next key on
    /// first start.
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        kek: Kek,
        purpose: &'static str,
        token_ttl: i64,
    ) -> Result<KeySet, StartError> {
        let set = KeySet {
            purpose,
            store,
            kek,
            token_ttl,
            keys: ArcSwap::from_pointee(Keys {
                active: Arc::new(
                    SigningKey::generate(Algorithm::ES256, "bootstrap").map_err(jwt_err)?,
                ),
                jwks: json!({ "keys": [] }),
                verify: JwkSet::default(),
            }),
            changed: watch::channel(0).0,
        };
        // Replicas starting together on an empty database create one pair.
        let lock = set.store.lock(&set.lock_name()).await?;
        if set.records().await?.is_empty() {
            let active = set.new_key("active")?;
            let next = set.new_key("next")?;
            let ev = AuditEvent::now(
                "server",
                "signing-key.create",
                "",
                json!({ "purpose": purpose }),
            );
            set.store
                .update_signing_keys(&[active, next], &[], &[], &ev)
                .await?;
        }
        drop(lock);
        set.reload().await?;
        Ok(set)
    }

    /// The keys in force.
    pub(crate) fn load(&self) -> arc_swap::Guard<Arc<Keys>> {
        self.keys.load()
    }

    /// The published JWK set.
    pub(crate) fn jwks(&self) -> Value {
        self.keys.load().jwks.clone()
    }

    async fn records(&self) -> Result<Vec<SigningKeyRecord>, StartError> {
        let mut recs = self.store.list_signing_keys().await?;
        recs.retain(|k| k.purpose == self.purpose);
        Ok(recs)
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
            purpose: self.purpose.into(),
        })
    }

    pub(crate) async fn reload(&self) -> Result<(), StartError> {
        let recs = self.records().await?;
        let active = recs
            .iter()
            .find(|k| k.state == "active")
            .ok_or_else(|| StartError::Config(format!("no active {} signing key", self.purpose)))?;
        let pkcs8 = self
            .kek
            .open(format!("jwt:{}", active.kid).as_bytes(), &active.key_sealed)?;
        let key = SigningKey::from_pkcs8(Algorithm::ES256, &active.kid, &pkcs8).map_err(jwt_err)?;
        let published: Vec<Value> = recs
            .iter()
            .filter_map(|k| serde_json::from_str(&k.public_jwk).ok())
            .collect();
        let jwks = json!({ "keys": published });
        let current = self.keys.load();
        if current.jwks == jwks && current.active.kid() == active.kid {
            return Ok(()); // nothing changed (another replica's news we had)
        }
        let verify = JwkSet::from_json(&jwks.to_string()).map_err(jwt_err)?;
        self.keys.store(Arc::new(Keys {
            active: Arc::new(key),
            jwks,
            verify,
        }));
        // Sidecars verify with the keys on the watch stream.
        self.changed.send_modify(|v| *v += 1);
        Ok(())
    }

    /// Activates the pre-published key, retires the active one (kept in the
    /// JWKS until every token it signed has expired), pre-publishes a new
    /// one, and drops retired keys whose tokens are all gone. Returns the
    /// newly active key id.
    ///
    /// Replicas take turns (see `turns`): a rotation asked for together
    /// with one another replica made returns the key that one activated.
    pub(crate) async fn rotate(&self, actor: &str) -> Result<String, StartError> {
        let name = self.lock_name();
        let turn = crate::turns::take(self.store.as_ref(), &name).await?;
        if turn.rotated_recently().await? {
            self.reload().await?;
            return Ok(self.load().active.kid().to_string());
        }
        let kid = self.rotate_locked(actor).await?;
        turn.rotated().await?;
        Ok(kid)
    }

    /// The lock replicas take turns under to change these keys.
    fn lock_name(&self) -> String {
        format!("ward:signing-keys:{}", self.purpose)
    }

    async fn rotate_locked(&self, actor: &str) -> Result<String, StartError> {
        let recs = self.records().await?;
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
        let ev = AuditEvent::now(
            actor,
            "signing-key.rotate",
            &activated,
            json!({ "purpose": self.purpose, "dropped": delete }),
        );
        self.store
            .update_signing_keys(&[next], &states, &delete, &ev)
            .await?;
        self.reload().await?;
        Ok(activated)
    }

    /// Rotates the active key once a day and drops retired keys past their
    /// time (run periodically).
    pub(crate) async fn maintain(&self) -> Result<(), StartError> {
        let t = now();
        let _lock = self.store.lock(&self.lock_name()).await?;
        let recs = self.records().await?;
        if recs
            .iter()
            .any(|k| k.state == "active" && t - k.created_at > KEY_ROTATION_SECS)
        {
            self.rotate_locked("server").await?;
            return Ok(());
        }
        let delete: Vec<String> = recs
            .into_iter()
            .filter(|k| k.state == "retired" && k.retire_until.is_some_and(|u| u <= t))
            .map(|k| k.kid)
            .collect();
        if !delete.is_empty() {
            let ev = AuditEvent::now(
                "server",
                "signing-key.drop",
                "",
                json!({ "purpose": self.purpose, "kids": delete }),
            );
            self.store
                .update_signing_keys(&[], &[], &delete, &ev)
                .await?;
            self.reload().await?;
        }
        Ok(())
    }
}
