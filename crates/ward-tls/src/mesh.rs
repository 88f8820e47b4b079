//! TLS between sidecars: TLS 1.3 only, both sides present X509-SVIDs, both
//! verify against the live trust bundle and revocation list, and the
//! client accepts only the one SPIFFE ID it expects for the service it
//! called. Certificate and bundle are swapped in place on rotation; open
//! connections are not touched, new handshakes use the new material.
//!
//! A chain that verified is remembered (by the SHA-256 of its exact DER
//! and the usage checked) with the window in which every certificate in it
//! is valid, until the trust changes. A handshake presenting the same chain
//! again skips only the chain's signature checks: the window, trust domain
//! and revocation are checked every time, and so is the handshake signature
//! that proves the peer holds the key.
//!
//! Resumable sessions live here too, not in each configuration: every
//! configuration made from one `MeshTls` (one per data-plane worker, one
//! per pool) shares them, so a session one worker made resumes on another.
//! A new certificate starts them again empty, so nothing resumes a session
//! made with the old one.
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionMemoryCache, ResolvesClientCert, Resumption};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, ResolvesServerCert, ServerSessionMemoryCache, StoresServerSessions,
};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use ward_identity::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{provider, verify_svid_chain, VerifiedPeer, VerifyError};

/// The trust bundle and revocations in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trust {
    /// CA certificates, each a trust anchor.
    pub bundle: Vec<CertificateDer<'static>>,
    /// Revoked leaf serials (lowercase hex).
    pub revoked: HashSet<String>,
    /// The trust domain peers must belong to.
    pub trust_domain: String,
}

/// This workload's certificate and key, and the trust it verifies peers
/// with; both replaceable at any time.
pub struct MeshTls {
    keys: Arc<Keys>,
    sessions: ArcSwap<Sessions>,
}

/// What handshakes present and verify with, shared by every configuration.
struct Keys {
    identity: ArcSwap<CertifiedKey>,
    trust: ArcSwap<TrustState>,
    algs: WebPkiSupportedAlgorithms,
}

/// Sessions a server keeps (this many) for clients to resume: what two
/// workers kept with rustls's default of 256 each. Each holds the
/// client's chain, 1–2 KiB.
const SERVER_SESSIONS: usize = 512;
/// Sessions a client keeps per server name, for each peer and ALPN set.
const CLIENT_SESSIONS: usize = 256;

/// The resumable sessions made with one certificate: the server's, and the
/// client configurations (each with its session store) by expected peer
/// and offered ALPN protocols. rustls resumes a session only with the
/// verifier and certificate resolver that made it, so a configuration is
/// made once and handed out as clones, which share them.
struct Sessions {
    server: Arc<ServerSessionMemoryCache>,
    client: Mutex<HashMap<ClientKey, ClientConfig>>,
}

/// A client configuration's peer and ALPN protocols.
type ClientKey = (SpiffeId, Vec<Vec<u8>>);

impl Sessions {
    fn new() -> Sessions {
        Sessions {
            server: ServerSessionMemoryCache::new(SERVER_SESSIONS),
            client: Mutex::new(HashMap::new()),
        }
    }
}

/// A server's session storage: the sessions of the certificate in force.
#[derive(Debug)]
struct ServerSessions(Arc<MeshTls>);

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.0.sessions.load().server.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.sessions.load().server.get(key)
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.sessions.load().server.take(key)
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// At most this many verified chains are remembered per trust; when full,
/// the memory starts again empty.
const VERIFIED_MAX: usize = 4096;

/// The trust in force and the chains verified against it.
struct TrustState {
    trust: Arc<Trust>,
    verified: Mutex<HashMap<[u8; 32], Verified>>,
}

impl TrustState {
    fn new(trust: Trust) -> TrustState {
        TrustState {
            trust: Arc::new(trust),
            verified: Mutex::new(HashMap::new()),
        }
    }
}

/// A chain that verified: its leaf's identity and the time window (unix
/// seconds) in which every certificate it presented is valid.
#[derive(Clone)]
struct Verified {
    peer: VerifiedPeer,
    not_before: i64,
    not_after: i64,
}

/// The memory key of a chain: SHA-256 over the usage and each certificate
/// with its length.
fn chain_key(chain: &[CertificateDer<'_>], client: bool) -> [u8; 32] {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    h.update(&[client as u8]);
    for c in chain {
        h.update(&(c.len() as u32).to_be_bytes());
        h.update(c);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(h.finish().as_ref());
    key
}

/// The window in which every certificate of `chain` is valid; `None` if
/// one does not parse (the chain verified, so this does not happen).
fn validity_window(chain: &[CertificateDer<'_>]) -> Option<(i64, i64)> {
    let mut window = (i64::MIN, i64::MAX);
    for c in chain {
        let (_, parsed) = X509Certificate::from_der(c).ok()?;
        let v = parsed.validity();
        window.0 = window.0.max(v.not_before.timestamp());
        window.1 = window.1.min(v.not_after.timestamp());
    }
    Some(window)
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keys").finish_non_exhaustive()
    }
}

impl fmt::Debug for MeshTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshTls").finish_non_exhaustive()
    }
}

impl MeshTls {
    /// Starts with a certificate chain and key, and a trust bundle.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust: Trust,
    ) -> Result<Arc<MeshTls>, rustls::Error> {
        let ck = certified_key(chain, key)?;
        Ok(Arc::new(MeshTls {
            keys: Arc::new(Keys {
                identity: ArcSwap::from_pointee(ck),
                trust: ArcSwap::from_pointee(TrustState::new(trust)),
                algs: provider().signature_verification_algorithms,
            }),
            sessions: ArcSwap::from_pointee(Sessions::new()),
        }))
    }

    /// Replaces this workload's certificate (after a renewal) and forgets
    /// the sessions made with the old one.
    pub fn set_identity(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        self.keys
            .identity
            .store(Arc::new(certified_key(chain, key)?));
        self.sessions.store(Arc::new(Sessions::new()));
        Ok(())
    }

    /// Replaces the bundle and revocations, and forgets the chains
    /// verified against the old ones; false (and nothing forgotten) when
    /// `trust` is the trust already in force.
    pub fn set_trust(&self, trust: Trust) -> bool {
        if *self.keys.trust.load().trust == trust {
            return false;
        }
        self.keys.trust.store(Arc::new(TrustState::new(trust)));
        true
    }

    /// The trust in force.
    pub fn trust(&self) -> Arc<Trust> {
        self.keys.trust.load().trust.clone()
    }

    /// The current certificate chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.keys.identity.load().cert.clone()
    }

    /// Verifies a peer chain against the trust in force.
    pub fn verify_peer(
        &self,
        chain: &[CertificateDer<'_>],
        client: bool,
    ) -> Result<VerifiedPeer, VerifyError> {
        self.keys.verify_peer_at(chain, client, UnixTime::now())
    }

    /// The identity of the peer on a connection whose handshake has just
    /// completed with this configuration (`client`: the peer is the
    /// client; `expected`: the one ID a server must have). A resumed
    /// session carries the chain of an earlier full handshake, which may
    /// since have expired, been revoked, or lost its trust anchor, so every
    /// connection's chain is checked against the trust in force (from
    /// memory, after the handshake's own verification).
    pub fn connected_peer(
        &self,
        conn: &rustls::CommonState,
        client: bool,
        expected: Option<&SpiffeId>,
    ) -> Result<VerifiedPeer, VerifyError> {
        let chain = conn.peer_certificates().ok_or(VerifyError::NoCertificate)?;
        expect(self.verify_peer(chain, client)?, expected)
    }

    /// Server side (inbound): a client certificate is required and verified.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> ServerConfig {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(PeerVerifier {
                keys: self.keys.clone(),
                expected: None,
            }))
            .with_cert_resolver(Arc::new(Resolver(self.keys.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        // The suite order of `provider()`, whatever the client prefers.
        cfg.ignore_client_order = true;
        // One ticket per handshake: a sidecar that resumes spends one and
        // gets one, and a full handshake does half the ticket work of
        // rustls's default of two.
        cfg.send_tls13_tickets = 1;
        cfg.session_storage = Arc::new(ServerSessions(self.clone()));
        cfg
    }

    /// Client side (outbound): the server must present exactly `expected`.
    /// Every configuration for the same peer and ALPN protocols shares
    /// one session store until the next certificate.
    pub fn client_config(&self, expected: SpiffeId, alpn: &[&[u8]]) -> ClientConfig {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|p| p.to_vec()).collect();
        let sessions = self.sessions.load();
        let mut made = sessions.client.lock().unwrap_or_else(|e| e.into_inner());
        made.entry((expected.clone(), alpn.clone()))
            .or_insert_with(|| {
                let mut cfg = ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("the aws-lc-rs provider supports TLS 1.3")
                    .dangerous() // not insecure: PeerVerifier checks chain, revocation and SPIFFE ID
                    .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                        keys: self.keys.clone(),
                        expected: Some(expected),
                    }))
                    .with_client_cert_resolver(Arc::new(Resolver(self.keys.clone())));
                cfg.alpn_protocols = alpn;
                cfg.resumption =
                    Resumption::store(Arc::new(ClientSessionMemoryCache::new(CLIENT_SESSIONS)));
                cfg
            })
            .clone()
    }
}

impl Keys {
    fn verify_peer_at(
        &self,
        chain: &[CertificateDer<'_>],
        client: bool,
        now: UnixTime,
    ) -> Result<VerifiedPeer, VerifyError> {
        let state = self.trust.load();
        let trust = &state.trust;
        let key = chain_key(chain, client);
        let secs = now.as_secs() as i64;
        let known = state
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .filter(|v| v.not_before <= secs && secs <= v.not_after)
            .map(|v| v.peer.clone());
        let peer = match known {
            Some(peer) => peer,
            None => {
                let peer = verify_svid_chain(chain, &trust.bundle, client, now)?;
                if let Some((not_before, not_after)) = validity_window(chain) {
                    let mut verified = state.verified.lock().unwrap_or_else(|e| e.into_inner());
                    if verified.len() >= VERIFIED_MAX {
                        verified.clear();
                    }
                    verified.insert(
                        key,
                        Verified {
                            peer: peer.clone(),
                            not_before,
                            not_after,
                        },
                    );
                }
                peer
            }
        };
        if !trust.trust_domain.is_empty() && peer.id.trust_domain_name() != trust.trust_domain {
            return Err(VerifyError::UnexpectedId {
                found: peer.id.to_string(),
                expected: format!("an identity in trust domain {}", trust.trust_domain),
            });
        }
        if trust.revoked.contains(&peer.serial) {
            return Err(VerifyError::Chain(format!(
                "certificate {} is revoked",
                peer.serial
            )));
        }
        Ok(peer)
    }
}

fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<CertifiedKey, rustls::Error> {
    let signing = provider().key_provider.load_private_key(key)?;
    Ok(CertifiedKey::new(chain, signing))
}

#[derive(Debug)]
struct Resolver(Arc<Keys>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.identity.load_full())
    }
}

impl ResolvesClientCert for Resolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.identity.load_full())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug)]
struct PeerVerifier {
    keys: Arc<Keys>,
    /// Client side: the one ID the server must have.
    expected: Option<SpiffeId>,
}

/// `peer`, if it is the one expected.
fn expect(peer: VerifiedPeer, expected: Option<&SpiffeId>) -> Result<VerifiedPeer, VerifyError> {
    match expected {
        Some(want) if *want != peer.id => Err(VerifyError::UnexpectedId {
            found: peer.id.to_string(),
            expected: want.to_string(),
        }),
        _ => Ok(peer),
    }
}

fn general(e: VerifyError) -> rustls::Error {
    rustls::Error::General(e.to_string())
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let peer = self
            .keys
            .verify_peer_at(&chain, false, UnixTime::now())
            .map_err(general)?;
        expect(peer, self.expected.as_ref()).map_err(general)?;
        Ok(ServerCertVerified::assertion())
    }
    crate::tls13_signature_methods!(keys.algs);
}

impl ClientCertVerifier for PeerVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        self.keys
            .verify_peer_at(&chain, true, UnixTime::now())
            .map_err(general)?;
        Ok(ClientCertVerified::assertion())
    }
    crate::tls13_signature_methods!(keys.algs);
}

/// The SPIFFE ID, serial and expiry of a peer's leaf that the handshake
/// already verified.
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Option<VerifiedPeer> {
    let leaf = chain?.first()?;
    let (_, parsed) = X509Certificate::from_der(leaf).ok()?;
    let id = ward_identity::validate_leaf(&parsed).ok()?;
    Some(VerifiedPeer {
        id,
        serial: hex::encode(parsed.raw_serial()),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

#[cfg(test)]
mod tests {
    use ward_ca::now;

    use super::*;
    use crate::testing::Pki;
    use crate::unix_time;

    fn remembered(tls: &MeshTls) -> usize {
        tls.keys.trust.load().verified.lock().unwrap().len()
    }

    /// Moves what `from` has to send to `to`.
    fn pump<A, B>(from: &mut rustls::ConnectionCommon<A>, to: &mut rustls::ConnectionCommon<B>) {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    /// Runs a handshake in memory, then delivers the server's tickets.
    fn handshake(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
        for _ in 0..10 {
            pump(&mut **client, &mut **server);
            pump(&mut **server, &mut **client);
            if !client.is_handshaking() && !server.is_handshaking() && !server.wants_write() {
                return;
            }
        }
        panic!("the handshake did not finish");
    }

    #[test]
    fn remembered_chains_are_still_checked() {
        let pki = Pki::new();
        let (id, serial, chain, tls) = pki.workload("a");
        let trust = pki.trust();
        let t = now();
        let at = unix_time(t.unix_timestamp());

        assert_eq!(tls.keys.verify_peer_at(&chain, true, at).unwrap().id, id);
        assert_eq!(remembered(&tls), 1);
        assert_eq!(tls.keys.verify_peer_at(&chain, true, at).unwrap().id, id);
        assert_eq!(
            remembered(&tls),
            1,
            "the second check is answered from memory"
        );
        // Server use is a separate entry.
        assert!(tls.keys.verify_peer_at(&chain, false, at).is_ok());
        assert_eq!(remembered(&tls), 2);

        // A changed byte anywhere is another chain, verified in full.
        let mut forged = chain.clone();
        let mut der = forged[0].to_vec();
        let last = der.len() - 1;
        der[last] ^= 1;
        forged[0] = CertificateDer::from(der);
        assert!(tls.keys.verify_peer_at(&forged, true, at).is_err());
        // Out of its window a remembered chain is refused.
        let later = unix_time(t.unix_timestamp() + 61);
        assert!(tls.keys.verify_peer_at(&chain, true, later).is_err());
        assert!(tls.keys.verify_peer_at(&chain, true, at).is_ok());

        // Revocation and a new bundle apply at once.
        let mut revoked = trust.clone();
        revoked.revoked.insert(serial);
        tls.set_trust(revoked);
        assert_eq!(remembered(&tls), 0);
        assert!(tls.keys.verify_peer_at(&chain, true, at).is_err());
        assert!(tls.set_trust(trust.clone()));
        assert!(tls.keys.verify_peer_at(&chain, true, at).is_ok());
        assert!(!tls.set_trust(trust.clone()), "the same trust");
        assert_eq!(remembered(&tls), 1, "the same trust keeps what it verified");
        tls.set_trust(Trust {
            bundle: pki.foreign_bundle(),
            ..trust
        });
        assert!(tls.keys.verify_peer_at(&chain, true, at).is_err());
    }

    /// Configurations made from one `MeshTls` (a data-plane worker's each)
    /// share their sessions; a new certificate forgets them.
    #[test]
    fn sessions_are_shared_between_configurations_until_a_new_certificate() {
        let pki = Pki::new();
        let (_, _, _, a) = pki.workload("a");
        let (b_id, _, _, b) = pki.workload("b");
        let connect_with = |a: &Arc<MeshTls>, b: &Arc<MeshTls>, alpn: &[&[u8]]| {
            let name = ServerName::try_from("ward-peer").unwrap();
            let client = Arc::new(a.client_config(b_id.clone(), alpn));
            let server = Arc::new(b.server_config(alpn));
            let mut c = rustls::ClientConnection::new(client, name).unwrap();
            let mut s = rustls::ServerConnection::new(server).unwrap();
            handshake(&mut c, &mut s);
            assert_eq!(c.handshake_kind(), s.handshake_kind());
            s.handshake_kind().unwrap()
        };
        let connect = |a: &Arc<MeshTls>, b: &Arc<MeshTls>| connect_with(a, b, &[b"http/1.1"]);
        use rustls::HandshakeKind::{Full, Resumed};
        assert_eq!(connect(&a, &b), Full);
        assert_eq!(connect(&a, &b), Resumed, "new configurations, one store");
        assert_eq!(connect(&a, &b), Resumed);

        // Another ALPN set is another store (as is another peer).
        assert_eq!(connect_with(&a, &b, &[b"h2"]), Full);
        assert_eq!(connect_with(&a, &b, &[b"h2"]), Resumed);

        // The client's renewal: it holds no session of its old certificate.
        let (_, _, chain, key) = pki.leaf("a");
        a.set_identity(chain, key).unwrap();
        assert_eq!(connect(&a, &b), Full);
        assert_eq!(connect(&a, &b), Resumed);
        // The server's: the client's tickets name sessions it forgot.
        let (_, _, chain, key) = pki.leaf("b");
        b.set_identity(chain, key).unwrap();
        assert_eq!(connect(&a, &b), Full);
        assert_eq!(connect(&a, &b), Resumed);
    }

    #[test]
    fn resumed_sessions_are_checked_against_the_trust_in_force() {
        let pki = Pki::new();
        let (a_id, a_serial, _, a) = pki.workload("a");
        let (b_id, b_serial, _, b) = pki.workload("b");
        let server_cfg = Arc::new(b.server_config(&[b"http/1.1"]));
        let client_cfg = Arc::new(a.client_config(b_id.clone(), &[b"http/1.1"]));
        let connect = || {
            let name = ServerName::try_from("ward-peer").unwrap();
            let mut c = rustls::ClientConnection::new(client_cfg.clone(), name).unwrap();
            let mut s = rustls::ServerConnection::new(server_cfg.clone()).unwrap();
            handshake(&mut c, &mut s);
            assert_eq!(
                s.negotiated_cipher_suite().unwrap().suite(),
                rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            );
            (c, s)
        };
        let (c, s) = connect();
        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Full));
        assert_eq!(b.connected_peer(&s, true, None).unwrap().id, a_id);
        assert_eq!(a.connected_peer(&c, false, Some(&b_id)).unwrap().id, b_id);
        assert!(matches!(
            a.connected_peer(&c, false, Some(&a_id)),
            Err(VerifyError::UnexpectedId { .. })
        ));

        let (c, s) = connect();
        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert_eq!(b.connected_peer(&s, true, None).unwrap().id, a_id);
        assert_eq!(a.connected_peer(&c, false, Some(&b_id)).unwrap().id, b_id);

        // Revoked after the full handshake: the session still resumes (TLS
        // does not look at certificates then), and ward refuses the peer.
        let mut trust = pki.trust();
        trust.revoked.insert(a_serial);
        b.set_trust(trust);
        let mut trust = pki.trust();
        trust.revoked.insert(b_serial);
        a.set_trust(trust);
        let (c, s) = connect();
        assert_eq!(s.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
        assert!(b.connected_peer(&s, true, None).is_err());
        assert!(a.connected_peer(&c, false, Some(&b_id)).is_err());
    }
}
