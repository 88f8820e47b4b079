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

mod mesh;
mod verify;

pub use mesh::{peer_identity, MeshTls, Trust};

pub use verify::{
    client_config, provider, unix_time, verify_svid_chain, ControlPlaneTrust, ControlPlaneVerifier,
    VerifiedPeer, VerifyError,
};
