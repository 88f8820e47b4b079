//! JSON Web Tokens for ward: JWS compact signing and verification with
//! the rules of RFC 8725 (JWT best current practice) and RFC 9068 (JWT
//! access tokens), written to resist every known JWT attack:
//!
//! - the algorithm is bound to the key's type (no `none`, no HMAC at all,
//!   so no RS256/ES256 → HS256 confusion);
//! - keys come only from the verifier's key set: `jku`, `x5u`, `jwk` and
//!   `x5c` headers are never followed;
//! - `crit` is refused (ward understands no extensions);
//! - base64url must be canonical, the token has exactly three parts and a
//!   size limit, claims with duplicate names are refused, and `exp`, `nbf`,
//!   `iat` must be JSON numbers, checked with at most 60 s of leeway;
//! - `iss` must match exactly, `aud` must contain the verifier, `typ` is
//!   checked where RFC 9068 applies, and a certificate-bound token
//!   (`cnf.x5t#S256`) only verifies with that certificate.
//!
//! ```
//! use ward_jwt::{Algorithm, SigningKey, JwkSet, Validation};
//! use serde_json::json;
//!
//! let key = SigningKey::generate(Algorithm::ES256, "k1").unwrap();
//! let jwks = JwkSet::from_json(&json!({ "keys": [key.public_jwk()] }).to_string()).unwrap();
//! let now = 1_800_000_000;
//! let token = key.sign("at+jwt", &json!({
//!     "iss": "https://ward.example", "sub": "svc", "aud": "payments", "exp": now + 300,
//!     "iat": now, "jti": "1", "client_id": "svc",
//! })).unwrap();
//! let v = Validation::access_token("https://ward.example", "payments").at(now);
//! let claims = ward_jwt::verify(&token, &jwks, &v).unwrap();
//! assert_eq!(claims.sub(), Some("svc"));
//! ```
#![warn(missing_docs)]

#[cfg(feature = "tower")]
mod cache;
mod claims;
#[cfg(feature = "tonic")]
pub mod grpc;
mod jwk;
#[cfg(feature = "client")]
pub mod source;
#[cfg(feature = "tower")]
pub mod tower;
mod verify;

#[cfg(feature = "tower")]
pub use cache::{Fetch, JwksCache, STALE_REFRESH_BUDGET};
pub use claims::Claims;
pub use jwk::{Algorithm, Jwk, JwkSet, SigningKey};
pub use verify::{verify, verify_jws, verify_jwt_svid, Jws, JwtError, Validation, MAX_LEEWAY_SECS};

/// The credentials of an `Authorization` value in `scheme` (`Bearer`,
/// `Basic`, …), the scheme matched case-insensitively as RFC 7235 §2.1
/// says: `bearer abc`, `BEARER abc` and `Bearer abc` all give `abc`.
pub fn credentials<'v>(value: &'v str, scheme: &str) -> Option<&'v str> {
    let (given, rest) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    #[test]
    fn schemes_match_in_any_case() {
        for v in ["Bearer abc", "bearer abc", "BEARER  abc ", "bEaReR abc"] {
            assert_eq!(super::credentials(v, "Bearer"), Some("abc"), "{v}");
        }
        for v in ["Bearerabc", "Bearerx abc", "Basic abc", "Bearer ", "Bearer"] {
            assert_eq!(super::credentials(v, "Bearer"), None, "{v}");
        }
    }
}
