//! A JWKS cache: keys are fetched on first use and when they grow old;
//! a token with an unknown `kid` triggers one refresh (single-flight: the
//! concurrent callers wait for the same fetch); there is at most one
//! attempt per cooldown, whatever prompts it; and when the issuer cannot
//! be reached, or is slow, the keys already known keep serving (a refresh
//! of old keys holds one request for at most `STALE_REFRESH_BUDGET`, and
//! no other).
//!
//! Tokens whose signature verified are remembered (until they expire, up to
//! a bound) so that a token seen again costs a hash lookup and the claim
//! checks, not a signature verification. The memory is tied to the key set
//! it was verified with: when the keys change it starts empty.
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::verify::{check, verify_signed, Signed};
use crate::{Claims, JwkSet, JwtError, Validation};

/// How long a request may wait for a refresh of keys that are old but
/// still held; past it the old keys are used and the refresh counts as
/// failed.
pub const STALE_REFRESH_BUDGET: Duration = Duration::from_secs(2);

/// What prompted a refresh.
#[derive(Clone, Copy)]
enum Why {
    /// No keys yet.
    Missing,
    /// Keys older than `max_age`.
    Stale,
    /// A token named a key id the set does not have.
    UnknownKid,
}

/// How many verified tokens one key set remembers.
const VERIFIED_CAPACITY: usize = 16_384;

/// Fetches the JWKS document (JSON).
pub type Fetch =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

struct Snapshot {
    keys: Arc<JwkSet>,
    fetched: Option<Instant>,
    /// Tokens whose signature verified with `keys`.
    verified: std::sync::Mutex<HashMap<Box<str>, Arc<Signed>>>,
}

impl Snapshot {
    fn new(keys: JwkSet, fetched: Option<Instant>) -> Snapshot {
        Snapshot {
            keys: Arc::new(keys),
            fetched,
            verified: Default::default(),
        }
    }

    fn remembered(&self, token: &str) -> Option<Arc<Signed>> {
        self.verified.lock().ok()?.get(token).cloned()
    }

    fn remember(&self, token: &str, signed: Arc<Signed>) {
        let Ok(mut m) = self.verified.lock() else {
            return;
        };
        if m.len() >= VERIFIED_CAPACITY {
            let now = unix_now();
            m.retain(|_, s| s.claims.exp().is_some_and(|e| e > now));
            if m.len() >= VERIFIED_CAPACITY {
                m.clear();
            }
        }
        m.insert(token.into(), signed);
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Verification keys from an issuer, cached.
pub struct JwksCache {
    /// `None` for a fixed set.
    fetch: Option<Fetch>,
    current: ArcSwap<Snapshot>,
    /// Held while a fetch runs; also remembers when the last one started.
    refresh: Mutex<Option<Instant>>,
    /// Keys older than this are refreshed before use.
    pub max_age: Duration,
    /// Unknown-kid refreshes happen at most this often.
    pub cooldown: Duration,
}

impl JwksCache {
    /// A cache that fetches with `fetch`.
    pub fn new(fetch: Fetch) -> JwksCache {
        JwksCache {
            fetch: Some(fetch),
            current: ArcSwap::from_pointee(Snapshot::new(JwkSet::default(), None)),
            refresh: Mutex::new(None),
            max_age: Duration::from_secs(300),
            cooldown: Duration::from_secs(10),
        }
    }

    /// A cache that fetches the JWKS at `url` with `http`, whose TLS
    /// settings decide how the issuer is trusted. A non-2xx answer counts
    /// as a failed fetch (the keys already held stay).
    #[cfg(feature = "client")]
    pub fn from_url(http: reqwest::Client, url: &str) -> JwksCache {
        let url = url.to_string();
        JwksCache::new(Arc::new(move || {
            let (http, url) = (http.clone(), url.clone());
            Box::pin(async move {
                let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
                if !r.status().is_success() {
                    return Err(format!("{url}: {}", r.status()));
                }
                r.text().await.map_err(|e| e.to_string())
            })
        }))
    }

    /// A cache over a fixed key set (a JWKS file read once).
    pub fn fixed(keys: JwkSet) -> JwksCache {
        JwksCache {
            fetch: None,
            current: ArcSwap::from_pointee(Snapshot::new(keys, Some(Instant::now()))),
            refresh: Mutex::new(None),
            max_age: Duration::MAX,
            cooldown: Duration::MAX,
        }
    }

    /// The keys now. Missing keys are fetched first (callers wait, one
    /// fetch for all). Old keys are refreshed by one caller at a time, for
    /// at most [`STALE_REFRESH_BUDGET`], while every other caller goes on
    /// with the keys held; a failed refresh keeps them.
    pub async fn keys(&self) -> Arc<JwkSet> {
        if self.is_stale() {
            let seen = self.current.load().fetched;
            let why = if seen.is_none() {
                Why::Missing
            } else {
                Why::Stale
            };
            self.refresh(seen, why).await;
        }
        self.current.load().keys.clone()
    }

    /// Verifies `token`; an unknown key id gets one refresh and a retry.
    pub async fn verify(&self, token: &str, v: &Validation) -> Result<Claims, JwtError> {
        if self.is_stale() {
            self.keys().await;
        }
        match self.verify_now(token, v) {
            Err(JwtError::UnknownKey) if self.fetch.is_some() => {
                let seen = self.current.load().fetched;
                self.refresh(seen, Why::UnknownKid).await;
                self.verify_now(token, v)
            }
            r => r,
        }
    }

    /// Verifies `token` with the keys held now, without waiting for any
    /// fetch (for synchronous callers such as a tonic interceptor). An
    /// unknown key id is refused.
    pub fn verify_now(&self, token: &str, v: &Validation) -> Result<Claims, JwtError> {
        if token.len() > v.max_size {
            return Err(JwtError::TooLarge);
        }
        let snap = self.current.load();
        let signed = match snap.remembered(token) {
            Some(s) => s,
            None => {
                let s = Arc::new(verify_signed(token, &snap.keys, v.max_size)?);
                snap.remember(token, s.clone());
                s
            }
        };
        check(&signed, v)?;
        Ok(signed.claims.clone())
    }

    /// Whether a fetch is due: the keys are missing or older than `max_age`.
    pub fn is_stale(&self) -> bool {
        let snap = self.current.load();
        self.fetch.is_some() && snap.fetched.is_none_or(|t| t.elapsed() > self.max_age)
    }

    /// Refreshes now (single-flight, within the cooldown), as after a token
    /// with an unknown key id; for callers that could not wait in
    /// [`verify_now`](Self::verify_now).
    pub async fn refresh_unknown_kid(&self) {
        let seen = self.current.load().fetched;
        self.refresh(seen, Why::UnknownKid).await;
    }

    /// Fetches unless another caller already refreshed since `seen` (then
    /// its result is used) or the last attempt, whatever prompted it, is
    /// within the cooldown: an issuer that is down or slow is neither
    /// hammered nor allowed to hold every request.
    async fn refresh(&self, seen: Option<Instant>, why: Why) {
        let Some(fetch) = &self.fetch else { return };
        let mut last = match why {
            // Keys are held: nobody waits behind a refresh in progress.
            Why::Stale => match self.refresh.try_lock() {
                Ok(g) => g,
                Err(_) => return,
            },
            Why::Missing | Why::UnknownKid => self.refresh.lock().await,
        };
        let now = self.current.load().fetched;
        if now.is_some() && now != seen {
            return; // someone refreshed while we waited
        }
        if last.is_some_and(|t| t.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        let fetched = match why {
            Why::Stale => tokio::time::timeout(STALE_REFRESH_BUDGET, fetch())
                .await
                .unwrap_or_else(|_| Err("the issuer did not answer in time".into())),
            Why::Missing | Why::UnknownKid => fetch().await,
        };
        // The cooldown runs from the end of the attempt, so a slow issuer
        // is not retried the moment a long attempt gives up.
        *last = Some(Instant::now());
        // On failure (issuer unreachable, slow, garbage) the keys we have stay.
        if let Ok(keys) =
            fetched.and_then(|json| JwkSet::from_json(&json).map_err(|e| e.to_string()))
        {
            let old = self.current.load();
            let verified = if *old.keys == keys {
                // Same keys: what they verified still stands.
                std::mem::take(&mut *old.verified.lock().unwrap_or_else(|p| p.into_inner()))
            } else {
                HashMap::new()
            };
            self.current.store(Arc::new(Snapshot {
                keys: Arc::new(keys),
                fetched: Some(Instant::now()),
                verified: std::sync::Mutex::new(verified),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use serde_json::json;

    use super::*;
    use crate::{Algorithm, SigningKey};

    const NOW: i64 = 1_800_000_000;

    fn token(key: &SigningKey, extra: serde_json::Value) -> String {
        let mut c = json!({
            "iss": "https://ward.example", "sub": "svc", "aud": "payments",
            "exp": NOW + 300, "iat": NOW, "jti": "1", "client_id": "svc",
        });
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        key.sign("at+jwt", &c).unwrap()
    }

    fn set(keys: &[&SigningKey]) -> String {
        let keys: Vec<_> = keys.iter().map(|k| k.public_jwk()).collect();
        json!({ "keys": keys }).to_string()
    }

    #[test]
    fn a_remembered_token_is_still_checked_every_time() {
        let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
        let cache = JwksCache::fixed(JwkSet::from_json(&set(&[&key])).unwrap());
        let v = Validation::access_token("https://ward.example", "payments").at(NOW);
        let t = token(&key, json!({}));
        assert!(cache.verify_now(&t, &v).is_ok());
        assert!(cache.current.load().remembered(&t).is_some());
        assert!(cache.verify_now(&t, &v).is_ok());
        // The remembered signature does not carry over the time, the
        // audience, the type or the binding.
        assert_eq!(
            cache.verify_now(&t, &v.clone().at(NOW + 400)),
            Err(JwtError::Expired)
        );
        let other_aud = Validation::access_token("https://ward.example", "orders").at(NOW);
        assert_eq!(
            cache.verify_now(&t, &other_aud),
            Err(JwtError::WrongAudience)
        );
        let mut typ = v.clone();
        typ.typ = vec!["dpop+jwt".into()];
        assert_eq!(cache.verify_now(&t, &typ), Err(JwtError::WrongType));
        // A list accepts any of its values, in any case.
        let either = v.clone().token_types(["dpop+jwt", "AT+JWT"]);
        assert!(cache.verify_now(&t, &either).is_ok());
        let any = v.clone().token_types(Vec::<String>::new());
        assert!(cache.verify_now(&t, &any).is_ok());
        let bound = token(
            &key,
            json!({ "cnf": { "x5t#S256": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" } }),
        );
        let mut peer = v.clone();
        peer.peer_cert_sha256 = Some([0; 32]);
        assert!(cache.verify_now(&bound, &peer).is_ok());
        peer.peer_cert_sha256 = Some([1; 32]);
        assert_eq!(
            cache.verify_now(&bound, &peer),
            Err(JwtError::CertificateBinding)
        );
        // A forged token never gets remembered.
        let forged = format!("{}x", &t[..t.len() - 1]);
        assert!(cache.verify_now(&forged, &v).is_err());
        assert!(cache.current.load().remembered(&forged).is_none());
    }

    #[tokio::test]
    async fn new_keys_forget_what_old_keys_verified() {
        let k1 = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
        let k2 = SigningKey::generate(Algorithm::ES256, "k2").unwrap();
        let served = Arc::new(StdMutex::new(set(&[&k1])));
        let s = served.clone();
        let mut cache = JwksCache::new(Arc::new(move || {
            let json = s.lock().unwrap().clone();
            Box::pin(async move { Ok(json) })
        }));
        cache.cooldown = Duration::ZERO;
        let v = Validation::access_token("https://ward.example", "payments").at(NOW);
        let t1 = token(&k1, json!({}));
        assert!(cache.verify(&t1, &v).await.is_ok());
        // k1 is withdrawn; k2's token forces a refresh.
        *served.lock().unwrap() = set(&[&k2]);
        assert!(cache.verify(&token(&k2, json!({})), &v).await.is_ok());
        assert_eq!(cache.verify(&t1, &v).await, Err(JwtError::UnknownKey));
    }
}
