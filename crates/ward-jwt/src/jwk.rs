use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaPublicKeyComponents, UnparsedPublicKey,
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::{json, Value};

use crate::JwtError;

/// The JWS algorithms ward accepts. HMAC and `none` are deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// ECDSA P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (keys of 2048 bits or more).
    RS256,
    /// RSASSA-PSS with SHA-256 (keys of 2048 bits or more).
    PS256,
}

impl Algorithm {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            Algorithm::RS256 => "RS256",
            Algorithm::PS256 => "PS256",
        }
    }

    /// Parses an `alg` value; only the exact spelling is accepted.
    pub fn from_name(s: &str) -> Option<Algorithm> {
        match s {
            "ES256" => Some(Algorithm::ES256),
            "ES384" => Some(Algorithm::ES384),
            "EdDSA" => Some(Algorithm::EdDSA),
            "RS256" => Some(Algorithm::RS256),
            "PS256" => Some(Algorithm::PS256),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    P256(Vec<u8>),
    P384(Vec<u8>),
    Ed25519(Vec<u8>),
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// A public key from a JWK set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    /// Key id.
    pub kid: Option<String>,
    /// The `alg` the key is pinned to, if the JWK says.
    pub alg: Option<Algorithm>,
    key: PublicKey,
}

impl Jwk {
    /// Whether this key may verify a token with `alg`: the algorithm must
    /// fit the key's type (and the key's own `alg`, when it has one).
    pub fn allows(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (&self.key, alg),
            (PublicKey::P256(_), Algorithm::ES256)
                | (PublicKey::P384(_), Algorithm::ES384)
                | (PublicKey::Ed25519(_), Algorithm::EdDSA)
                | (PublicKey::Rsa { .. }, Algorithm::RS256 | Algorithm::PS256)
        )
    }

    pub(crate) fn verify(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
        match (&self.key, alg) {
            (PublicKey::P256(p), Algorithm::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                    .verify(msg, sig)
                    .is_ok()
            }
            (PublicKey::P384(p), Algorithm::ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                    .verify(msg, sig)
                    .is_ok()
            }
            (PublicKey::Ed25519(p), Algorithm::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, p)
                    .verify(msg, sig)
                    .is_ok()
            }
            (PublicKey::Rsa { n, e }, Algorithm::RS256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PKCS1_2048_8192_SHA256, msg, sig)
                .is_ok(),
            (PublicKey::Rsa { n, e }, Algorithm::PS256) => RsaPublicKeyComponents { n, e }
                .verify(&signature::RSA_PSS_2048_8192_SHA256, msg, sig)
                .is_ok(),
            _ => false,
        }
    }

    /// Parses one JWK. Keys for encryption (`"use": "enc"`, or `key_ops`
    /// without `verify`, RFC 7517 §4.3), private keys and unsupported types
    /// are refused.
    pub fn from_value(v: &Value) -> Result<Jwk, JwtError> {
        let bad = |m: &str| JwtError::BadKey(m.to_string());
        if v.get("d").is_some() {
            return Err(bad("private key material in a public key set"));
        }
        if v.get("use").is_some_and(|u| u != "sig") {
            return Err(bad("key not for signatures"));
        }
        if let Some(ops) = v.get("key_ops") {
            let verify = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o == "verify"));
            if !verify {
                return Err(bad("key_ops does not allow verify"));
            }
        }
        let field = |name: &str| -> Result<Vec<u8>, JwtError> {
            let s = v
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("missing {name}")))?;
            URL_SAFE_NO_PAD
                .decode(s)
                .map_err(|_| bad(&format!("{name} is not base64url")))
        };
        let key = match (
            v.get("kty").and_then(Value::as_str),
            v.get("crv").and_then(Value::as_str),
        ) {
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let (x, y) = (field("x")?, field("y")?);
                let len = if crv == "P-256" { 32 } else { 48 };
                if x.len() != len || y.len() != len {
                    return Err(bad("wrong EC coordinate length"));
                }
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                if crv == "P-256" {
                    PublicKey::P256(point)
                } else {
                    PublicKey::P384(point)
                }
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = field("x")?;
                if x.len() != 32 {
                    return Err(bad("wrong Ed25519 key length"));
                }
                PublicKey::Ed25519(x)
            }
            (Some("RSA"), _) => {
                let (n, e) = (field("n")?, field("e")?);
                let n = n.into_iter().skip_while(|b| *b == 0).collect::<Vec<_>>();
                if n.len() * 8 < 2048 {
                    return Err(bad("RSA keys must have at least 2048 bits"));
                }
                if roca_fingerprint(&n) {
                    return Err(bad(
                        "an RSA key with the ROCA weakness (CVE-2017-15361); its private key can be recovered: replace it",
                    ));
                }
                PublicKey::Rsa { n, e }
            }
            _ => return Err(bad("unsupported key type")),
        };
        let alg = match v.get("alg").and_then(Value::as_str) {
            Some(a) => Some(Algorithm::from_name(a).ok_or_else(|| bad("unsupported alg"))?),
            None => None,
        };
        let jwk = Jwk {
            kid: v.get("kid").and_then(Value::as_str).map(String::from),
            alg,
            key,
        };
        if let Some(a) = alg {
            if !jwk.allows(a) {
                return Err(bad("alg does not fit the key type"));
            }
        }
        Ok(jwk)
    }
}

/// A set of verification keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwkSet {
    /// The usable keys.
    pub keys: Vec<Jwk>,
}

impl JwkSet {
    /// Parses `{"keys": [...]}`, skipping keys it cannot use (encryption
    /// keys, unknown types), as RFC 7517 §5 asks.
    pub fn from_json(json: &str) -> Result<JwkSet, JwtError> {
        let v: Value = serde_json::from_str(json)
            .map_err(|e| JwtError::BadKey(format!("JWKS is not JSON: {e}")))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwtError::BadKey("JWKS has no keys array".into()))?;
        Ok(JwkSet {
            keys: keys
                .iter()
                .filter_map(|k| Jwk::from_value(k).ok())
                .collect(),
        })
    }
}

enum Signer {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// A private signing key (ES256 by default in ward).
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    signer: Signer,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// The primes of the ROCA fingerprint (Nemec et al., CCS 2017).
const ROCA_PRIMES: [u64; 38] = [
    3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41, 43, 47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97,
    101, 103, 107, 109, 113, 127, 131, 137, 139, 149, 151, 157, 163, 167,
];

/// Whether RSA modulus `n` (big-endian) has the fingerprint of keys made
/// by the Infineon library that ROCA breaks: modulo each of the primes
/// above, `n` lies in the subgroup generated by 65537, as such primes are
/// built from powers of 65537. A random modulus passes all 38 tests with
/// negligible probability.
pub(crate) fn roca_fingerprint(n: &[u8]) -> bool {
    ROCA_PRIMES.iter().all(|&p| {
        let r = n
            .iter()
            .fold(0u64, |acc, &b| (acc * 256 + u64::from(b)) % p);
        let g = 65537 % p;
        let mut x = 1u64;
        loop {
            if x == r {
                return true;
            }
            x = x * g % p;
            if x == 1 {
                return false;
            }
        }
    })
}

impl SigningKey {
    /// A new key for `alg` (ES256, ES384 or EdDSA).
    pub fn generate(alg: Algorithm, kid: &str) -> Result<SigningKey, JwtError> {
        let rng = SystemRandom::new();
        let pkcs8 = match alg {
            Algorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            }
            Algorithm::ES384 => {
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            }
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(&rng),
            _ => {
                return Err(JwtError::BadKey(
                    "ward signs with ES256, ES384 or EdDSA".into(),
                ))
            }
        }
        .map_err(|_| JwtError::BadKey("key generation failed".into()))?;
        SigningKey::from_pkcs8(alg, kid, pkcs8.as_ref())
    }

    /// Loads a PKCS#8 key for `alg`.
    pub fn from_pkcs8(alg: Algorithm, kid: &str, pkcs8: &[u8]) -> Result<SigningKey, JwtError> {
        let bad = || JwtError::BadKey("the private key does not fit the algorithm".into());
        let signer = match alg {
            Algorithm::ES256 => Signer::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8)
                    .map_err(|_| bad())?,
            ),
            Algorithm::ES384 => Signer::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8)
                    .map_err(|_| bad())?,
            ),
            Algorithm::EdDSA => {
                Signer::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|_| bad())?)
            }
            _ => return Err(bad()),
        };
        Ok(SigningKey {
            alg,
            kid: kid.to_string(),
            signer,
            pkcs8: pkcs8.to_vec(),
        })
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The private key, PKCS#8 DER (for sealed storage; never log it).
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half as a JWK (`kid`, `alg`, `use: sig`).
    pub fn public_jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match &self.signer {
            Signer::Ecdsa(k) => {
                let p = k.public_key().as_ref();
                let len = (p.len() - 1) / 2;
                let crv = if len == 32 { "P-256" } else { "P-384" };
                json!({ "kty": "EC", "crv": crv, "x": b64(&p[1..1 + len]), "y": b64(&p[1 + len..]) })
            }
            Signer::Ed25519(k) => {
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref()) })
            }
        };
        jwk["kid"] = json!(self.kid);
        jwk["alg"] = json!(self.alg.name());
        jwk["use"] = json!("sig");
        jwk
    }

    /// Signs `claims` with header `{"alg", "kid", "typ"}` (no `kid` when
    /// this key has an empty one).
    pub fn sign(&self, typ: &str, claims: &Value) -> Result<String, JwtError> {
        let mut header = json!({ "alg": self.alg.name(), "typ": typ });
        if !self.kid.is_empty() {
            header["kid"] = json!(self.kid);
        }
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = match &self.signer {
            Signer::Ecdsa(k) => k
                .sign(&SystemRandom::new(), out.as_bytes())
                .map_err(|_| JwtError::BadKey("signing failed".into()))?
                .as_ref()
                .to_vec(),
            Signer::Ed25519(k) => k.sign(out.as_bytes()).as_ref().to_vec(),
        };
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(out)
    }
}
