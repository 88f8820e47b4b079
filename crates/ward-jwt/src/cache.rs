//! A JWKS cache: keys are fetched on first use and when they grow old;
//! a token with an unknown `kid` triggers one refresh (single-flight: the
//! concurrent callers wait for the same fetch), at most once per cooldown;
//! and when the issuer cannot be reached the keys already known keep
//! serving.
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::Mutex;

use crate::{verify, Claims, JwkSet, JwtError, Validation};

/// Fetches the JWKS document (JSON).
pub type Fetch =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

struct Snapshot {
    keys: Arc<JwkSet>,
    fetched: Option<Instant>,
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
            current: ArcSwap::from_pointee(Snapshot {
                keys: Arc::new(JwkSet::default()),
                fetched: None,
            }),
            refresh: Mutex::new(None),
            max_age: Duration::from_secs(300),
            cooldown: Duration::from_secs(10),
        }
    }

    /// A cache over a fixed key set (a JWKS file read once).
    pub fn fixed(keys: JwkSet) -> JwksCache {
        JwksCache {
            fetch: None,
            current: ArcSwap::from_pointee(Snapshot {
                keys: Arc::new(keys),
                fetched: Some(Instant::now()),
            }),
            refresh: Mutex::new(None),
            max_age: Duration::MAX,
            cooldown: Duration::MAX,
        }
    }

    /// The keys now, refreshing first if they are missing or old (a failed
    /// refresh keeps the old keys).
    pub async fn keys(&self) -> Arc<JwkSet> {
        let snap = self.current.load_full();
        let stale = snap.fetched.is_none_or(|t| t.elapsed() > self.max_age) && self.fetch.is_some();
        if stale {
            self.refresh(snap.fetched, false).await;
        }
        self.current.load().keys.clone()
    }

    /// Verifies `token`; an unknown key id gets one refresh and a retry.
    pub async fn verify(&self, token: &str, v: &Validation) -> Result<Claims, JwtError> {
        let keys = self.keys().await;
        match verify(token, &keys, v) {
            Err(JwtError::UnknownKey) => {
                let seen = self.current.load().fetched;
                self.refresh(seen, true).await;
                verify(token, &self.current.load().keys, v)
            }
            r => r,
        }
    }

    /// Fetches unless another caller already refreshed since `seen` (then
    /// its result is used), or, for unknown-kid refreshes, unless the last
    /// attempt is within the cooldown.
    async fn refresh(&self, seen: Option<Instant>, unknown_kid: bool) {
        let Some(fetch) = &self.fetch else { return };
        let mut last = self.refresh.lock().await;
        let now = self.current.load().fetched;
        if now.is_some() && now != seen {
            return; // someone refreshed while we waited
        }
        if unknown_kid && last.is_some_and(|t| t.elapsed() < self.cooldown) {
            return;
        }
        *last = Some(Instant::now());
        // On failure (issuer unreachable, garbage) the keys we have stay.
        if let Ok(keys) = fetch()
            .await
            .and_then(|json| JwkSet::from_json(&json).map_err(|e| e.to_string()))
        {
            self.current.store(Arc::new(Snapshot {
                keys: Arc::new(keys),
                fetched: Some(Instant::now()),
            }));
        }
    }
}
