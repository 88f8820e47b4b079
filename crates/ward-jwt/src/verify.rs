use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;

use crate::claims::StrictObject;
use crate::{Algorithm, Claims, JwkSet};

/// The most clock skew any check tolerates.
pub const MAX_LEEWAY_SECS: i64 = 60;

/// Why a token was refused. The messages are safe to return to clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Larger than the limit.
    #[error("token too large")]
    TooLarge,
    /// `alg` is `none` (in any spelling).
    #[error("unsigned tokens (alg none) are refused")]
    AlgNone,
    /// `alg` is not one ward accepts.
    #[error("algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(String),
    /// No key in the set has that `kid` and fits the algorithm.
    #[error("no key matches the token's kid and algorithm")]
    UnknownKey,
    /// The signature does not verify.
    #[error("invalid signature")]
    BadSignature,
    /// `crit` names extensions ward does not implement.
    #[error("unsupported critical header parameters")]
    UnknownCritical,
    /// `typ` is not the one required.
    #[error("wrong token type (typ)")]
    WrongType,
    /// A required claim is missing.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// A claim has the wrong JSON type.
    #[error("claim {0} has the wrong type")]
    ClaimType(&'static str),
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future")]
    IssuedInFuture,
    /// `iss` does not match.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not contain the verifier.
    #[error("wrong audience")]
    WrongAudience,
    /// The token is bound to another certificate, or the caller presented none.
    #[error("token is bound to another certificate")]
    CertificateBinding,
    /// A key could not be used.
    #[error("bad key: {0}")]
    BadKey(String),
}

/// What a verifier requires of a token.
#[derive(Debug, Clone)]
pub struct Validation {
    /// Exact `iss`.
    pub issuer: Option<String>,
    /// `aud` must contain this.
    pub audience: Option<String>,
    /// Accepted `typ` values (compared case-insensitively, `application/`
    /// prefix allowed); empty: any `typ`, or none.
    pub typ: Vec<String>,
    /// Claims that must be present.
    pub required: Vec<&'static str>,
    /// Clock skew tolerance, capped at [`MAX_LEEWAY_SECS`].
    pub leeway_secs: i64,
    /// Largest accepted token in bytes.
    pub max_size: usize,
    /// SHA-256 of the DER certificate the caller presented (RFC 8705).
    /// When the token has `cnf.x5t#S256`, it must equal this.
    pub peer_cert_sha256: Option<[u8; 32]>,
    /// Time to check against (unix seconds); `None` means now.
    pub now: Option<i64>,
    /// Enforce `cnf.x5t#S256` (off only for introspection, which reports
    /// the binding instead of checking it).
    pub check_binding: bool,
}

impl Validation {
    /// The RFC 9068 rules for an access token for `audience` from `issuer`.
    pub fn access_token(issuer: &str, audience: &str) -> Validation {
        Validation {
            issuer: Some(issuer.to_string()),
            audience: Some(audience.to_string()),
            typ: vec!["at+jwt".into()],
            required: vec!["iss", "sub", "aud", "exp", "iat", "jti", "client_id"],
            leeway_secs: 30,
            max_size: 8 * 1024,
            peer_cert_sha256: None,
            now: None,
            check_binding: true,
        }
    }

    /// Accepts only these `typ` values (compared case-insensitively, the
    /// `application/` prefix allowed); an empty list accepts any.
    pub fn token_types<T: Into<String>>(
        mut self,
        types: impl IntoIterator<Item = T>,
    ) -> Validation {
        self.typ = types.into_iter().map(Into::into).collect();
        self
    }

    /// Checks at a fixed time (tests, replays).
    pub fn at(mut self, now: i64) -> Validation {
        self.now = Some(now);
        self
    }
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| JwtError::Malformed(format!("{what} is not base64url")))
}

fn numeric(claims: &Claims, name: &'static str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(|f| Some(f.floor() as i64))
            .ok_or(JwtError::ClaimType(name)),
        Some(_) => Err(JwtError::ClaimType(name)),
    }
}

/// Verifies a JWS compact token against `keys` and `v`; returns its claims.
pub fn verify(token: &str, keys: &JwkSet, v: &Validation) -> Result<Claims, JwtError> {
    let signed = verify_signed(token, keys, v.max_size)?;
    check(&signed, v)?;
    Ok(signed.claims)
}

/// A JWS (RFC 7515 compact serialization) whose signature verified with a
/// key from the set; nothing about its payload has been checked.
#[derive(Debug, Clone)]
pub struct Jws {
    /// The protected header.
    pub header: serde_json::Map<String, Value>,
    /// The signing algorithm.
    pub alg: Algorithm,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Checks a JWS's form and signature only, with the same header rules as
/// [`verify`] (no `none`, algorithm bound to the key's type, no `crit`,
/// keys only from `keys`). For payloads that are not JWT claims.
pub fn verify_jws(token: &str, keys: &JwkSet, max_size: usize) -> Result<Jws, JwtError> {
    if token.len() > max_size {
        return Err(JwtError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed("a JWS has exactly three parts".into()));
    };
    if s.is_empty() {
        return Err(JwtError::BadSignature);
    }
    let header: StrictObject = serde_json::from_slice(&b64(h, "header")?)
        .map_err(|e| JwtError::Malformed(format!("header: {e}")))?;
    let header = header.0;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| JwtError::Malformed("no alg".into()))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::AlgNone);
    }
    let alg =
        Algorithm::from_name(alg).ok_or_else(|| JwtError::UnsupportedAlgorithm(alg.to_string()))?;
    if header.contains_key("crit") {
        return Err(JwtError::UnknownCritical);
    }
    // Keys come from the verifier's set only: jku, x5u, jwk and x5c are
    // never consulted.
    let kid = header
        .get("kid")
        .map(|k| {
            k.as_str()
                .ok_or(JwtError::Malformed("kid is not a string".into()))
        })
        .transpose()?;
    let mut candidates = keys
        .keys
        .iter()
        .filter(|k| k.allows(alg) && (kid.is_none() || k.kid.as_deref() == kid))
        .peekable();
    if candidates.peek().is_none() {
        return Err(JwtError::UnknownKey);
    }
    let sig = b64(s, "signature")?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    if !candidates.any(|k| k.verify(alg, signed, &sig)) {
        return Err(JwtError::BadSignature);
    }
    Ok(Jws {
        header,
        alg,
        payload: b64(p, "payload")?,
    })
}

/// A signature-checked token with its claims parsed: what a verified-token
/// cache keeps, since everything else depends on the verifier and the time.
#[derive(Debug, Clone)]
pub(crate) struct Signed {
    typ: Option<String>,
    pub(crate) claims: Claims,
}

pub(crate) fn verify_signed(
    token: &str,
    keys: &JwkSet,
    max_size: usize,
) -> Result<Signed, JwtError> {
    let jws = verify_jws(token, keys, max_size)?;
    let payload: StrictObject = serde_json::from_slice(&jws.payload)
        .map_err(|e| JwtError::Malformed(format!("claims: {e}")))?;
    Ok(Signed {
        typ: jws
            .header
            .get("typ")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        claims: Claims(payload.0),
    })
}

/// Verifies a JWT-SVID (SPIFFE JWT-SVID standard) for `audience`: the
/// signature by one of `keys` (the trust domain's JWT authorities), `typ`
/// absent, `JWT` or `JOSE`, `aud` containing `audience`, `sub` and `exp`
/// present, and `exp`, `nbf`, `iat` within 30 s of leeway. The caller
/// checks that `sub` is a SPIFFE ID of the trust domain it trusts.
pub fn verify_jwt_svid(token: &str, keys: &JwkSet, audience: &str) -> Result<Claims, JwtError> {
    let signed = verify_signed(token, keys, JWT_SVID_MAX_SIZE)?;
    if let Some(typ) = &signed.typ {
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        if typ != "jwt" && typ != "jose" {
            return Err(JwtError::WrongType);
        }
    }
    let v = Validation {
        issuer: None,
        audience: Some(audience.to_string()),
        typ: Vec::new(),
        required: vec!["sub", "aud", "exp"],
        leeway_secs: 30,
        max_size: JWT_SVID_MAX_SIZE,
        peer_cert_sha256: None,
        now: None,
        check_binding: false,
    };
    check_claims(&signed.claims, &v)?;
    Ok(signed.claims)
}

/// Largest JWT-SVID accepted, in bytes.
const JWT_SVID_MAX_SIZE: usize = 8 * 1024;

/// Everything [`verify`] checks besides the signature.
pub(crate) fn check(s: &Signed, v: &Validation) -> Result<(), JwtError> {
    if !v.typ.is_empty() {
        let typ = s.typ.as_deref().unwrap_or_default();
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        if !v.typ.iter().any(|want| typ.eq_ignore_ascii_case(want)) {
            return Err(JwtError::WrongType);
        }
    }
    check_claims(&s.claims, v)
}

fn check_claims(c: &Claims, v: &Validation) -> Result<(), JwtError> {
    for name in &v.required {
        if c.get(name).is_none() {
            return Err(JwtError::MissingClaim(name));
        }
    }
    let now = v.now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    });
    let leeway = v.leeway_secs.clamp(0, MAX_LEEWAY_SECS);
    let exp = numeric(c, "exp")?;
    let nbf = numeric(c, "nbf")?;
    let iat = numeric(c, "iat")?;
    if exp.is_some_and(|exp| now >= exp + leeway) {
        return Err(JwtError::Expired);
    }
    if nbf.is_some_and(|nbf| now + leeway < nbf) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|iat| now + leeway < iat) {
        return Err(JwtError::IssuedInFuture);
    }
    for (name, ok) in [
        ("iss", c.get("iss").is_none_or(Value::is_string)),
        ("sub", c.get("sub").is_none_or(Value::is_string)),
        ("jti", c.get("jti").is_none_or(Value::is_string)),
        ("client_id", c.get("client_id").is_none_or(Value::is_string)),
        ("scope", c.get("scope").is_none_or(Value::is_string)),
    ] {
        if !ok {
            return Err(JwtError::ClaimType(name));
        }
    }
    match c.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(_) => return Err(JwtError::ClaimType("aud")),
    }
    if let Some(iss) = &v.issuer {
        if c.iss() != Some(iss.as_str()) {
            return Err(JwtError::WrongIssuer);
        }
    }
    if let Some(aud) = &v.audience {
        if !c.aud().contains(&aud.as_str()) {
            return Err(JwtError::WrongAudience);
        }
    }
    if let Some(bound) = c
        .get("cnf")
        .and_then(|cnf| cnf.get("x5t#S256"))
        .filter(|_| v.check_binding)
    {
        let bound = bound.as_str().ok_or(JwtError::ClaimType("cnf"))?;
        let bound = URL_SAFE_NO_PAD
            .decode(bound)
            .map_err(|_| JwtError::ClaimType("cnf"))?;
        match &v.peer_cert_sha256 {
            Some(peer) if verify_slices_are_equal(peer, &bound).is_ok() => {}
            _ => return Err(JwtError::CertificateBinding),
        }
    }
    Ok(())
}
