//! TLS for ward, on rustls with the aws-lc-rs provider.
//!
//! Peers are authenticated by SPIFFE ID, never by DNS name: a chain is
//! verified against the trust domain's bundle, the leaf must be a valid
//! X509-SVID, and the caller decides which IDs it accepts.
//!
//! For clients of the control plane (the CLI, sidecars at bootstrap) the
//! server is trusted either through a bundle file or through the SHA-256
//! fingerprint of its root certificate, which the server prints at start;
//! the server must then present that root in its chain and a leaf with the
//! ID `spiffe://<trust domain>/ward/server`.
#![warn(missing_docs)]

mod client_auth;
mod mesh;
#[cfg(test)]
mod testing;
mod verify;

pub use client_auth::{BundleSource, OptionalClientCert};
pub use mesh::{peer_identity, MeshTls, Trust};

pub use verify::{
    client_config, provider, unix_time, verify_svid_chain, ControlPlaneTrust, ControlPlaneVerifier,
    VerifiedPeer, VerifyError,
};

/// The handshake-signature methods every ward certificate verifier shares:
/// TLS 1.2 is refused (ward speaks only TLS 1.3), and TLS 1.3 signatures
/// are checked with the aws-lc-rs algorithms found at `self.<path>`.
/// Use inside an `impl ServerCertVerifier` or `impl ClientCertVerifier`.
#[macro_export]
macro_rules! tls13_signature_methods {
    ($($algs:tt)+) => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &$crate::__rt::CertificateDer<'_>,
            _dss: &$crate::__rt::DigitallySignedStruct,
        ) -> Result<$crate::__rt::HandshakeSignatureValid, $crate::__rt::Error> {
            Err($crate::__rt::Error::PeerIncompatible($crate::__rt::PeerIncompatible::Tls12NotOffered))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &$crate::__rt::CertificateDer<'_>,
            dss: &$crate::__rt::DigitallySignedStruct,
        ) -> Result<$crate::__rt::HandshakeSignatureValid, $crate::__rt::Error> {
            $crate::__rt::verify_tls13_signature(message, cert, dss, &self.$($algs)+)
        }
        fn supported_verify_schemes(&self) -> Vec<$crate::__rt::SignatureScheme> {
            self.$($algs)+.supported_schemes()
        }
    };
}

#[doc(hidden)]
pub mod __rt {
    pub use rustls::client::danger::HandshakeSignatureValid;
    pub use rustls::crypto::verify_tls13_signature;
    pub use rustls::{DigitallySignedStruct, Error, PeerIncompatible, SignatureScheme};
    pub use rustls_pki_types::CertificateDer;
}
