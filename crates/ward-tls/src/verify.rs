use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::digest::{digest, SHA256};
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::ClientConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use ward_identity::SpiffeId;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The crypto provider for all of ward: aws-lc-rs, with
/// TLS_AES_128_GCM_SHA256 preferred. ward's keys are P-256 (128-bit
/// security), so AES-256 and SHA-384 add no strength, and SHA-256 runs in
/// hardware on current CPUs (SHA-NI, ARMv8 SHA2) where SHA-384 does not:
/// a full handshake's key schedule and every record cost less. The other
/// suites stay, in aws-lc-rs's order, for peers that want them.
pub fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

pub(crate) fn algs() -> WebPkiSupportedAlgorithms {
    rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms
}

/// Why a peer's certificate chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No certificate was presented.
    #[error("no certificate was presented")]
    NoCertificate,
    /// The chain does not lead to the trust bundle, is expired, or is
    /// otherwise invalid.
    #[error("the certificate chain does not verify against the trust bundle: {0}")]
    Chain(String),
    /// The leaf is not a valid X509-SVID.
    #[error("the certificate is not a valid X509-SVID: {0}")]
    NotSvid(String),
    /// The leaf's SPIFFE ID is not one the caller accepts.
    #[error("unexpected peer identity {found} (expected {expected})")]
    UnexpectedId {
        /// What the peer presented.
        found: String,
        /// What was expected.
        expected: String,
    },
    /// The server did not present the pinned root.
    #[error("the server's root fingerprint is {presented}, not the expected {expected}; check `ward ca fingerprint` on the server")]
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: String,
        /// The fingerprint of the root the server sent (the last
        /// certificate of its chain).
        presented: String,
    },
}

/// A peer whose chain verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    /// Its SPIFFE ID.
    pub id: SpiffeId,
    /// Leaf serial number, lowercase hex.
    pub serial: String,
    /// Leaf expiry, unix seconds.
    pub not_after: i64,
}

/// Verifies `chain` (leaf first) against the CA certificates of a trust
/// bundle (each one a trust anchor), for client or server use, and checks
/// the leaf against the X509-SVID rules.
pub fn verify_svid_chain(
    chain: &[CertificateDer<'_>],
    bundle: &[CertificateDer<'_>],
    client_usage: bool,
    now: UnixTime,
) -> Result<VerifiedPeer, VerifyError> {
    let (leaf, intermediates) = chain.split_first().ok_or(VerifyError::NoCertificate)?;
    let anchors: Vec<_> = bundle
        .iter()
        .filter_map(|c| {
            webpki::anchor_from_trusted_cert(c)
                .ok()
                .map(|a| a.to_owned())
        })
        .collect();
    let ee =
        webpki::EndEntityCert::try_from(leaf).map_err(|e| VerifyError::Chain(e.to_string()))?;
    let usage = if client_usage {
        webpki::KeyUsage::client_auth()
    } else {
        webpki::KeyUsage::server_auth()
    };
    ee.verify_for_usage(algs().all, &anchors, intermediates, now, usage, None, None)
        .map_err(|e| VerifyError::Chain(format!("{e:?}")))?;
    let (_, parsed) =
        X509Certificate::from_der(leaf).map_err(|e| VerifyError::NotSvid(e.to_string()))?;
    let id =
        ward_identity::validate_leaf(&parsed).map_err(|e| VerifyError::NotSvid(e.to_string()))?;
    Ok(VerifiedPeer {
        id,
        serial: hex::encode(parsed.raw_serial()),
        not_after: parsed.validity().not_after.timestamp(),
    })
}

/// How a client trusts the control plane.
#[derive(Debug, Clone)]
pub enum ControlPlaneTrust {
    /// `sha256:<hex>` of the root certificate, which the server must present.
    Fingerprint(String),
    /// CA certificates (a trust bundle file).
    Bundle(Vec<CertificateDer<'static>>),
}

impl ControlPlaneTrust {
    /// Parses a fingerprint in the `sha256:<64 hex>` form.
    pub fn fingerprint(fp: &str) -> Result<ControlPlaneTrust, String> {
        let hex_part = fp
            .strip_prefix("sha256:")
            .ok_or("a fingerprint looks like sha256:<64 hex digits>")?;
        if hex_part.len() != 64 || hex::decode(hex_part).is_err() {
            return Err("a fingerprint looks like sha256:<64 hex digits>".into());
        }
        Ok(ControlPlaneTrust::Fingerprint(format!(
            "sha256:{}",
            hex_part.to_ascii_lowercase()
        )))
    }
}

/// Verifies the control plane's certificate: chain to the pinned root or
/// bundle, and the leaf ID `spiffe://<td>/ward/server` where `<td>` is the
/// trust domain of the anchor that verified it. The DNS name dialled is not
/// used: identity is the SPIFFE ID.
#[derive(Debug)]
pub struct ControlPlaneVerifier {
    trust: ControlPlaneTrust,
    algs: WebPkiSupportedAlgorithms,
}

impl ControlPlaneVerifier {
    /// A verifier for the given trust.
    pub fn new(trust: ControlPlaneTrust) -> ControlPlaneVerifier {
        ControlPlaneVerifier {
            trust,
            algs: algs(),
        }
    }

    fn anchors<'a>(
        &'a self,
        presented: &'a [CertificateDer<'a>],
    ) -> Result<Vec<CertificateDer<'a>>, VerifyError> {
        match &self.trust {
            ControlPlaneTrust::Bundle(b) => Ok(b.clone()),
            ControlPlaneTrust::Fingerprint(fp) => {
                let of =
                    |c: &CertificateDer<'_>| format!("sha256:{}", hex::encode(digest(&SHA256, c)));
                presented
                    .iter()
                    .find(|c| of(c) == *fp)
                    .map(|c| vec![c.clone()])
                    .ok_or_else(|| VerifyError::FingerprintMismatch {
                        expected: fp.clone(),
                        presented: presented
                            .last()
                            .map_or("(none: no CA certificate was sent)".into(), of),
                    })
            }
        }
    }
}

fn trust_domain_of(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = X509Certificate::from_der(cert).ok()?;
    ward_identity::validate_ca(&parsed)
        .ok()?
        .map(|id| id.trust_domain_name().to_owned())
}

impl ServerCertVerifier for ControlPlaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // As a typed error, so that a client can tell a wrong pin from a
        // network failure and say what to do.
        let anchors = self
            .anchors(intermediates)
            .map_err(|e| rustls::Error::Other(rustls::OtherError(std::sync::Arc::new(e))))?;
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let peer = verify_svid_chain(&chain, &anchors, false, now)
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let tds: Vec<String> = anchors.iter().filter_map(trust_domain_of).collect();
        let ok = peer.id.path() == "/ward/server"
            && (tds.is_empty() || tds.iter().any(|t| t == peer.id.trust_domain_name()));
        if !ok {
            let expected = tds
                .first()
                .map_or("spiffe://<trust domain>/ward/server".to_string(), |t| {
                    format!("spiffe://{t}/ward/server")
                });
            return Err(rustls::Error::General(
                VerifyError::UnexpectedId {
                    found: peer.id.to_string(),
                    expected,
                }
                .to_string(),
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    crate::tls13_signature_methods!(algs);
}

/// A TLS 1.3 client config that trusts the control plane as `trust` says,
/// optionally presenting a client certificate (chain, key).
pub fn client_config(
    trust: ControlPlaneTrust,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[&[u8]],
) -> Result<ClientConfig, rustls::Error> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous() // not insecure: the verifier below checks chain and SPIFFE ID
        .with_custom_certificate_verifier(Arc::new(ControlPlaneVerifier::new(trust)));
    let mut config = match client_cert {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Converts a unix timestamp to rustls' time type.
pub fn unix_time(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(Duration::from_secs(secs.max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Pki;
    use ward_ca::now;

    #[test]
    fn verifies_svid_chains() {
        let pki = Pki::new();
        let (id, serial, chain, _) = pki.leaf("a");
        let bundle = pki.bundle();
        let t = now();
        let now_u = unix_time(t.unix_timestamp());
        let peer = verify_svid_chain(&chain, &bundle, true, now_u).unwrap();
        assert_eq!(peer.id, id);
        assert_eq!(peer.serial, serial);
        assert!(verify_svid_chain(&chain, &bundle, false, now_u).is_ok());
        assert!(matches!(
            verify_svid_chain(&chain[..1], &bundle, true, now_u),
            Err(VerifyError::Chain(_))
        ));
        assert!(matches!(
            verify_svid_chain(&[], &bundle, true, now_u),
            Err(VerifyError::NoCertificate)
        ));
        let later = unix_time(t.unix_timestamp() + 61);
        assert!(verify_svid_chain(&chain, &bundle, true, later).is_err());
        assert!(verify_svid_chain(&chain, &pki.foreign_bundle(), true, now_u).is_err());
    }

    #[test]
    fn fingerprint_parsing() {
        assert!(ControlPlaneTrust::fingerprint("sha256:abc").is_err());
        assert!(ControlPlaneTrust::fingerprint(&"a".repeat(64)).is_err());
        assert!(ControlPlaneTrust::fingerprint(&format!("sha256:{}", "A".repeat(64))).is_ok());
    }
}
