use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA256};
use ward_store::Store;
use ward_tls::VerifiedPeer;

use crate::ca::CaManager;
use crate::mesh::Mesh;
use crate::metrics::Metrics;

/// Shared by every handler.
pub(crate) struct AppState {
    pub ca: Arc<CaManager>,
    pub store: Arc<dyn Store>,
    /// SHA-256 of the admin token; the token itself is only in its file.
    pub admin_token_hash: [u8; 32],
    pub svid_ttl: Duration,
    pub metrics: Metrics,
    pub watchers: crate::fleet::Watchers,
    pub traffic: crate::fleet::Traffic,
    pub mesh: Arc<Mesh>,
    pub oauth: Arc<crate::oauth::OAuth>,
    pub jwt_svids: Arc<crate::jwt_svid::JwtSvids>,
    /// This process's name among the replicas sharing its database.
    pub replica: String,
    /// Sheds signing and watch opens past `max_pending_calls`.
    pub shed: crate::shed::Shed,
    /// What every watch stream sends alike, held once for all of them.
    pub watch_common: crate::watch::Common,
}

/// How the peer of a connection authenticated, decided once right after
/// the TLS handshake.
#[derive(Debug, Clone)]
pub(crate) enum PeerAuth {
    /// No client certificate.
    Anonymous,
    /// A chain that verified against the current bundle.
    Verified(VerifiedPeer),
    /// A certificate was presented and refused; the reason is for the
    /// client.
    Rejected(String),
}

/// Put in every request's extensions by the connection acceptor.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    pub remote: SocketAddr,
    pub peer: Arc<PeerAuth>,
    /// SHA-256 of the client's leaf certificate, when it verified.
    pub cert_sha256: Option<[u8; 32]>,
}

/// SHA-256 of a secret token, as stored.
pub(crate) fn token_hash(token: &str) -> [u8; 32] {
    sha256(token.as_bytes())
}

/// SHA-256 of `data`: a token as stored, a certificate's thumbprint
/// (`cnf.x5t#S256`).
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = digest(&SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}
