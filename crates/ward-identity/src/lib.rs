//! SPIFFE identities for ward: trust domains, SPIFFE IDs and the X509-SVID
//! rules, enforced exactly as the SPIFFE standards write them.
//!
//! This crate is pure: no I/O, no clocks, no crypto. Signature and chain
//! checks belong to the TLS and CA crates; what lives here is the shape an
//! identity and an identity document must have.
//!
//! ```
//! use ward_identity::{SpiffeId, TrustDomain};
//!
//! let td = TrustDomain::new("ward.internal").unwrap();
//! let id = SpiffeId::for_service(&td, "default", "payments").unwrap();
//! assert_eq!(id.to_string(), "spiffe://ward.internal/ns/default/sa/payments");
//! assert_eq!(id.service_account(), Some(("default", "payments")));
//! assert!("spiffe://ward.internal/ns/../sa/x".parse::<SpiffeId>().is_err());
//! ```
#![warn(missing_docs)]

mod id;
mod svid;

pub use id::{IdError, SpiffeId, TrustDomain, DEFAULT_NAMESPACE, DEFAULT_TRUST_DOMAIN};
pub use svid::{validate_ca, validate_leaf, SvidError};
