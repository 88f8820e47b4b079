//! ward's gRPC API: the `ward.v1` protobuf package and its generated tonic
//! client and server code.
//!
//! ```no_run
//! use ward_api::v1::identity_client::IdentityClient;
//! ```
#![allow(missing_docs, unreachable_pub, clippy::all)]

/// The `ward.v1` package.
pub mod v1 {
    tonic::include_proto!("ward.v1");
}
