//! ward's certificate authority.
//!
//! A trust domain has one root (self-signed, or an existing enterprise CA
//! plugged in as upstream) and a short-lived *signing* CA below it that
//! issues X509-SVIDs. Signing CAs rotate with overlap: the next one is
//! prepared and published before it signs, and a retired one stays published
//! until every leaf it signed has expired (see [`rotation`]).
//!
//! This crate does no I/O: it generates keys, checks CSRs, signs
//! certificates, plans rotations and seals keys with a key-encryption key.
//! Storage and clocks belong to the server.
//!
//! ```
//! use std::time::Duration;
//! use ward_ca::{CaMaterial, SigningAuthority, validate_csr, now};
//! use ward_identity::{SpiffeId, TrustDomain};
//!
//! let td = TrustDomain::new("example.org").unwrap();
//! let root = CaMaterial::generate_root(&td, Duration::from_secs(86400 * 365), now()).unwrap();
//! let signing = root.generate_signing_ca(&td, 1, Duration::from_secs(86400 * 7), now()).unwrap();
//! let ca = SigningAuthority::new(&signing).unwrap();
//!
//! let id = SpiffeId::for_service(&td, "default", "payments").unwrap();
//! let (csr, _key) = ward_ca::testing::csr_for(&id);
//! let csr = validate_csr(&csr).unwrap();
//! assert_eq!(csr.spiffe_id, id);
//! let leaf = ca.issue_svid(&csr.spki, &csr.spiffe_id, &[], Duration::from_secs(3600), now()).unwrap();
//! assert_eq!(leaf.spiffe_id, id);
//! ```
#![warn(missing_docs)]

mod authority;
mod bundle;
mod csr;
mod error;
mod kek;
pub mod rotation;
pub mod testing;

pub use authority::{now, CaMaterial, IssuedCert, SigningAuthority};
pub use bundle::{fingerprint, parse_pem_certs, parse_pem_key, spiffe_bundle_json, to_pem};
pub use csr::{validate_csr, KeyKind, ValidatedCsr};
pub use error::{CaError, CsrError};
pub use kek::Kek;
