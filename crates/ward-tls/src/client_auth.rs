//! Optional client certificates for the control plane's one TLS port: a
//! client may present none (join-token bootstrap, OAuth clients with a
//! secret, the admin API with its bearer token), but a certificate it
//! presents must chain to the trust bundle in force, or the handshake
//! fails.
use std::sync::Arc;

use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::DistinguishedName;
use rustls_pki_types::{CertificateDer, UnixTime};

use crate::verify::{algs, verify_svid_chain};

/// Where the trust bundle in force is read, at every handshake (it changes
/// with CA rotation).
pub trait BundleSource: Send + Sync + 'static {
    /// Runs `f` on the bundle in force.
    fn with_bundle(&self, f: &mut dyn FnMut(&[CertificateDer<'static>]));
}

/// A fixed bundle.
impl BundleSource for Vec<CertificateDer<'static>> {
    fn with_bundle(&self, f: &mut dyn FnMut(&[CertificateDer<'static>])) {
        f(self)
    }
}

/// Offers client authentication without requiring it; a presented chain
/// must be an X509-SVID chain to `bundle` (checked again, with revocation
/// and trust domain, after the handshake).
pub struct OptionalClientCert {
    bundle: Arc<dyn BundleSource>,
    algs: WebPkiSupportedAlgorithms,
}

impl OptionalClientCert {
    /// A verifier reading the bundle from `bundle`.
    pub fn new(bundle: Arc<dyn BundleSource>) -> OptionalClientCert {
        OptionalClientCert {
            bundle,
            algs: algs(),
        }
    }
}

impl std::fmt::Debug for OptionalClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OptionalClientCert").finish_non_exhaustive()
    }
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone()];
        chain.extend(intermediates.iter().cloned());
        let mut verified = Err(crate::VerifyError::NoCertificate);
        self.bundle.with_bundle(&mut |bundle| {
            verified = verify_svid_chain(&chain, bundle, true, now);
        });
        // As a certificate error, so that the client gets a certificate alert
        // (certificate_unknown); the reason stays attached for the server's log.
        verified.map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        Ok(ClientCertVerified::assertion())
    }
    crate::tls13_signature_methods!(algs);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Pki;

    #[test]
    fn a_chain_to_another_ca_fails_the_handshake_check() {
        let ours = Pki::new();
        let theirs = Pki::new();
        let v = OptionalClientCert::new(Arc::new(ours.bundle()));
        let now = UnixTime::now();
        let (_, _, good, _) = ours.leaf("web");
        assert!(v.verify_client_cert(&good[0], &good[1..], now).is_ok());
        let (_, _, foreign, _) = theirs.leaf("web");
        assert!(v
            .verify_client_cert(&foreign[0], &foreign[1..], now)
            .is_err());
        assert!(!v.client_auth_mandatory());
    }
}
