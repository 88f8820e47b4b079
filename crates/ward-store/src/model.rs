use serde::{Deserialize, Serialize};

/// A registered service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its SPIFFE ID.
    pub spiffe_id: String,
    /// Unix seconds.
    pub created_at: i64,
    /// `http` (HTTP/1.1, HTTP/2, gRPC) or `tcp`.
    pub protocol: String,
}

/// A join token, as stored: only its hash.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct JoinToken {
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    /// Namespace of the service it is for.
    pub namespace: String,
    /// The service it is for.
    pub service: String,
    /// The one SPIFFE ID it authorizes.
    pub spiffe_id: String,
    /// Unix seconds.
    pub expires_at: i64,
    /// How many more certificates it may buy.
    pub uses_left: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// An issued certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CertRecord {
    /// Serial number, lowercase hex.
    pub serial: String,
    /// The SPIFFE ID in it.
    pub spiffe_id: String,
    /// Serial of the signing CA that issued it.
    pub issuer_serial: String,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds, if revoked.
    pub revoked_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// The certificate, DER.
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// Filters for [`crate::Store::list_certificates`].
#[derive(Debug, Clone, Default)]
pub struct CertQuery {
    /// Only this SPIFFE ID.
    pub spiffe_id: Option<String>,
    /// Only certificates still valid at this time (unix seconds).
    pub valid_at: Option<i64>,
    /// Only certificates expiring before this time (unix seconds).
    pub expiring_before: Option<i64>,
    /// At most this many.
    pub limit: i64,
}

/// A CA certificate with its sealed key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CaRecord {
    /// Storage id (0 before insertion).
    pub id: i64,
    /// `root` or `signing`.
    pub kind: String,
    /// `active` for roots; `prepared`, `active` or `retired` for signing CAs.
    pub state: String,
    /// Serial, lowercase hex.
    pub serial: String,
    /// Certificate, DER.
    pub cert_der: Vec<u8>,
    /// Private key sealed with the key-encryption key.
    pub key_sealed: Vec<u8>,
    /// Unix seconds.
    pub not_before: i64,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub created_at: i64,
}

/// An audit-log entry to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unix seconds.
    pub at: i64,
    /// Who: `admin`, a SPIFFE ID, `join-token`, `server`.
    pub actor: String,
    /// What, e.g. `service.add`, `cert.issue`.
    pub action: String,
    /// On what, e.g. a SPIFFE ID or serial.
    pub target: String,
    /// Free-form JSON details (never secrets).
    pub detail: String,
}

impl AuditEvent {
    /// An entry stamped now: `actor` did `action` on `target`; `detail`
    /// is stored as JSON text.
    pub fn now(actor: &str, action: &str, target: &str, detail: serde_json::Value) -> AuditEvent {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        AuditEvent {
            at,
            actor: actor.into(),
            action: action.into(),
            target: target.into(),
            detail: detail.to_string(),
        }
    }
}

/// An audit-log entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct AuditRecord {
    /// Monotonic id.
    pub id: i64,
    /// Unix seconds.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// JSON details.
    pub detail: String,
}

/// A stored authorization policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PolicyRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// The whole policy document, validated, as JSON.
    pub spec_json: String,
    /// Increases each time the policy changes.
    pub version: i64,
    /// Unix seconds.
    pub updated_at: i64,
}

/// An OAuth2 client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct OAuthClient {
    /// Client id.
    pub client_id: String,
    /// SPIFFE ID of the service it acts for.
    pub service_id: String,
    /// How it authenticates at the token endpoint.
    pub auth_method: String,
    /// Keyed hash of its secret, for secret-based methods.
    #[serde(skip)]
    pub secret_hash: Option<Vec<u8>>,
    /// Its public keys, for private_key_jwt.
    pub jwks: Option<String>,
    /// Allowed scopes, JSON array.
    pub scopes: String,
    /// Allowed audiences, JSON array.
    pub audiences: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A token signing key.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SigningKeyRecord {
    /// Key id.
    pub kid: String,
    /// JWS algorithm.
    pub alg: String,
    /// next | active | retired.
    pub state: String,
    /// The public JWK, JSON.
    pub public_jwk: String,
    /// PKCS#8, sealed with the key-encryption key.
    pub key_sealed: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Retired keys stay published until then.
    pub retire_until: Option<i64>,
    /// What the key signs: `oauth` (access tokens) or `jwt-svid`.
    pub purpose: String,
}
