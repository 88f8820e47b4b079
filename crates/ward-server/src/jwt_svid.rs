//! JWT-SVIDs (SPIFFE JWT-SVID standard): ES256 tokens whose `sub` is the
//! caller's own SPIFFE ID, for the audiences it names, signed by the trust
//! domain's JWT authorities (a key set of their own, so an OAuth2 access
//! token never verifies as a JWT-SVID or the other way round).
use std::sync::Arc;

use serde_json::{json, Value};
use ward_ca::Kek;
use ward_identity::SpiffeId;
use ward_store::Store;

use crate::error::StartError;
use crate::keys::KeySet;

/// Lifetime when the caller asks for none: 5 minutes, as SPIRE's default.
pub(crate) const DEFAULT_TTL_SECS: i64 = 300;
/// The longest lifetime a caller may ask for.
pub(crate) const MAX_TTL_SECS: i64 = 3600;
/// Most audiences in one token, and the longest one.
const MAX_AUDIENCES: usize = 16;
const MAX_AUDIENCE_LEN: usize = 512;

/// The `iss` of the trust domain's JWT-SVIDs: `spiffe://<trust domain>`.
pub(crate) fn issuer(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}")
}

/// A signed JWT-SVID.
pub(crate) struct Minted {
    pub token: String,
    pub issued_at: i64,
    pub expires_at: i64,
}

/// The trust domain's JWT authorities and the tokens they sign.
pub(crate) struct JwtSvids {
    pub keys: KeySet,
}

impl JwtSvids {
    pub(crate) async fn open(store: Arc<dyn Store>, kek: Kek) -> Result<JwtSvids, StartError> {
        Ok(JwtSvids {
            keys: KeySet::open(store, kek, "jwt-svid", MAX_TTL_SECS).await?,
        })
    }

    /// The published authorities as the SPIFFE bundle lists them
    /// (`use: jwt-svid`).
    pub(crate) fn bundle_keys(&self) -> Vec<Value> {
        let jwks = self.keys.jwks();
        jwks["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .map(|k| {
                        let mut k = k.clone();
                        k["use"] = json!("jwt-svid");
                        k
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Signs a JWT-SVID for `id` and `audience`, valid `ttl_secs` (0: the
    /// default). The error says what was wrong with the request.
    pub(crate) fn mint(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl_secs: i64,
    ) -> Result<Minted, String> {
        if audience.is_empty() || audience.iter().any(|a| a.is_empty()) {
            return Err("a JWT-SVID needs at least one non-empty audience".into());
        }
        if audience.len() > MAX_AUDIENCES || audience.iter().any(|a| a.len() > MAX_AUDIENCE_LEN) {
            return Err(format!(
                "at most {MAX_AUDIENCES} audiences of at most {MAX_AUDIENCE_LEN} bytes"
            ));
        }
        let ttl = if ttl_secs == 0 {
            DEFAULT_TTL_SECS
        } else {
            ttl_secs
        };
        if !(1..=MAX_TTL_SECS).contains(&ttl) {
            return Err(format!("ttl must be between 1 and {MAX_TTL_SECS} seconds"));
        }
        let iat = ward_ca::now().unix_timestamp();
        let exp = iat + ttl;
        // `iss` names the trust domain, so that a sidecar's
        // RequestAuthentication can name JWT-SVIDs as an issuer.
        let claims = json!({
            "iss": issuer(id.trust_domain_name()),
            "sub": id.as_str(),
            "aud": audience,
            "iat": iat,
            "exp": exp,
        });
        let key = self.keys.load().active.clone();
        let token = key
            .sign("JWT", &claims)
            .map_err(|e| format!("signing failed: {e}"))?;
        Ok(Minted {
            token,
            issued_at: iat,
            expires_at: exp,
        })
    }
}
