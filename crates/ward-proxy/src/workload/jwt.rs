//! JWT-SVIDs for local workloads: signed by the control plane for this
//! sidecar's SPIFFE ID, cached per audience until half-life, and checked
//! against the trust domain's JWT authorities.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use tonic::transport::Channel;
use tonic::{Code, Status};
use ward_api::v1::identity_client::IdentityClient;
use ward_api::v1::MintJwtSvidRequest;
use ward_identity::SpiffeId;

use super::Source;

/// Most audience sets cached; past it, expired entries go, then all.
const MAX_CACHED: usize = 4096;

/// Cached JWT-SVIDs by audience set, and the channel that mints them.
#[derive(Default)]
pub(crate) struct Cache {
    tokens: Mutex<HashMap<Vec<String>, Cached>>,
    /// A channel to the control plane and the certificate generation it
    /// authenticates with.
    channel: tokio::sync::Mutex<Option<(u64, Channel)>>,
}

#[derive(Clone)]
struct Cached {
    token: String,
    refresh_at: i64,
    expires_at: i64,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Cache {
    /// A JWT-SVID for `audience` (sorted, without duplicates): the cached
    /// one until its half-life, else a new one. While the control plane is
    /// away a cached token is served until shortly before it expires.
    pub(crate) async fn fetch(
        &self,
        source: &Source,
        mut audience: Vec<String>,
    ) -> Result<String, Status> {
        audience.sort();
        audience.dedup();
        let t = now();
        let cached = self
            .tokens
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&audience)
            .cloned();
        if let Some(c) = &cached {
            if t < c.refresh_at {
                return Ok(c.token.clone());
            }
        }
        match self.mint(source, &audience).await {
            Ok(fresh) => {
                let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
                if tokens.len() >= MAX_CACHED {
                    tokens.retain(|_, c| c.expires_at > t);
                    if tokens.len() >= MAX_CACHED {
                        tokens.clear();
                    }
                }
                tokens.insert(audience, fresh.clone());
                Ok(fresh.token)
            }
            Err(e) => match cached {
                Some(c) if t + 5 < c.expires_at => {
                    tracing::warn!(error = %e.message(), "serving a cached JWT-SVID: the control plane did not sign a new one");
                    Ok(c.token)
                }
                _ => Err(e),
            },
        }
    }

    async fn mint(&self, source: &Source, audience: &[String]) -> Result<Cached, Status> {
        let channel = self.channel(source).await?;
        let resp = IdentityClient::new(channel)
            .mint_jwt_svid(MintJwtSvidRequest {
                audience: audience.to_vec(),
                ttl_secs: 0,
            })
            .await
            .map_err(|s| match s.code() {
                Code::InvalidArgument => s,
                _ => Status::unavailable(format!(
                    "the control plane did not sign a JWT-SVID: {}",
                    s.message()
                )),
            })?
            .into_inner();
        let life = (resp.expires_at - resp.issued_at).max(0);
        Ok(Cached {
            token: resp.token,
            refresh_at: resp.issued_at + life / 2,
            expires_at: resp.expires_at,
        })
    }

    /// The channel for the sidecar's current certificate (a renewal
    /// opens a new one).
    async fn channel(&self, source: &Source) -> Result<Channel, Status> {
        let generation = source
            .shared
            .generation
            .load(std::sync::atomic::Ordering::Relaxed);
        let mut slot = self.channel.lock().await;
        if let Some((g, c)) = slot.as_ref() {
            if *g == generation {
                return Ok(c.clone());
            }
        }
        let svid = source.shared.svid.get();
        let tls = ward_tls::client_config(
            source.trust.clone(),
            Some((svid.chain.clone(), svid.key())),
            &[b"h2"],
        )
        .map_err(|e| Status::internal(e.to_string()))?;
        let channel = ward_api::connect(&source.server, tls)
            .await
            .map_err(|e| Status::unavailable(format!("cannot reach the control plane: {e}")))?;
        *slot = Some((generation, channel.clone()));
        Ok(channel)
    }
}

/// Checks a JWT-SVID for `audience` against the trust domain's JWT
/// authorities; returns its SPIFFE ID and claims. The error names why.
pub(crate) fn validate(
    source: &Source,
    token: &str,
    audience: &str,
) -> Result<(SpiffeId, ward_jwt::Claims), String> {
    let authorities = source.shared.jwt_authorities.load();
    let claims =
        ward_jwt::verify_jwt_svid(token, &authorities.keys, audience).map_err(|e| e.to_string())?;
    let sub = claims.sub().unwrap_or_default();
    let id = SpiffeId::parse(sub).map_err(|e| format!("sub {sub:?} is not a SPIFFE ID: {e}"))?;
    if id.trust_domain_name() != source.shared.td.as_str() {
        return Err(format!("{id} is not in trust domain {}", source.shared.td));
    }
    Ok((id, claims))
}
