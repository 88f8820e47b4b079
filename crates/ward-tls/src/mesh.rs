//! TLS between sidecars: TLS 1.3 only, both sides present X509-SVIDs, both
//! verify against the live trust bundle and revocation list, and the
//! client accepts only the one SPIFFE ID it expects for the service it
//! called. Certificate and bundle are swapped in place on rotation; open
//! connections are not touched, new handshakes use the new material.
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DistinguishedName, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use ward_identity::SpiffeId;

use crate::{provider, verify_svid_chain, VerifiedPeer, VerifyError};

/// The trust bundle and revocations in force.
#[derive(Debug, Clone, Default)]
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
    identity: ArcSwap<CertifiedKey>,
    trust: ArcSwap<Trust>,
    algs: WebPkiSupportedAlgorithms,
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
            identity: ArcSwap::from_pointee(ck),
            trust: ArcSwap::from_pointee(trust),
            algs: provider().signature_verification_algorithms,
        }))
    }

    /// Replaces this workload's certificate (after a renewal).
    pub fn set_identity(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), rustls::Error> {
        self.identity.store(Arc::new(certified_key(chain, key)?));
        Ok(())
    }

    /// Replaces the bundle and revocations.
    pub fn set_trust(&self, trust: Trust) {
        self.trust.store(Arc::new(trust));
    }

    /// The trust in force.
    pub fn trust(&self) -> Arc<Trust> {
        self.trust.load_full()
    }

    /// The current certificate chain, leaf first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.identity.load().cert.clone()
    }

    /// Verifies a peer chain against the trust in force.
    pub fn verify_peer(
        &self,
        chain: &[CertificateDer<'_>],
        client: bool,
    ) -> Result<VerifiedPeer, VerifyError> {
        let trust = self.trust.load();
        let peer = verify_svid_chain(chain, &trust.bundle, client, UnixTime::now())?;
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

    /// Server side (inbound): a client certificate is required and verified.
    pub fn server_config(self: &Arc<Self>, alpn: &[&[u8]]) -> ServerConfig {
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .with_client_cert_verifier(Arc::new(PeerVerifier {
                tls: self.clone(),
                expected: None,
            }))
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
    }

    /// Client side (outbound): the server must present exactly `expected`.
    pub fn client_config(self: &Arc<Self>, expected: SpiffeId, alpn: &[&[u8]]) -> ClientConfig {
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the aws-lc-rs provider supports TLS 1.3")
            .dangerous() // not insecure: PeerVerifier checks chain, revocation and SPIFFE ID
            .with_custom_certificate_verifier(Arc::new(PeerVerifier {
                tls: self.clone(),
                expected: Some(expected),
            }))
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        cfg
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
struct Resolver(Arc<MeshTls>);

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
    tls: Arc<MeshTls>,
    /// Client side: the one ID the server must have.
    expected: Option<SpiffeId>,
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
        let peer = self.tls.verify_peer(&chain, false).map_err(general)?;
        match &self.expected {
            Some(want) if *want != peer.id => Err(general(VerifyError::UnexpectedId {
                found: peer.id.to_string(),
                expected: want.to_string(),
            })),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }
    crate::tls13_signature_methods!(tls.algs);
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
        self.tls.verify_peer(&chain, true).map_err(general)?;
        Ok(ClientCertVerified::assertion())
    }
    crate::tls13_signature_methods!(tls.algs);
}

/// The SPIFFE ID, serial and expiry of a peer's leaf that the handshake
/// already verified.
pub fn peer_identity(chain: Option<&[CertificateDer<'_>]>) -> Option<VerifiedPeer> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let leaf = chain?.first()?;
    let (_, parsed) = X509Certificate::from_der(leaf).ok()?;
    let id = ward_identity::validate_leaf(&parsed).ok()?;
    Some(VerifiedPeer {
        id,
        serial: hex::encode(parsed.raw_serial()),
        not_after: parsed.validity().not_after.timestamp(),
    })
}
