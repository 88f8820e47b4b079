//! The ward control plane: the CA, the service registry, the admin REST
//! API and the `ward.v1` gRPC API, all on one TLS port.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! let config = ward_server::Config::new("/var/lib/ward".into());
//! let server = ward_server::Server::build(config).await?;
//! println!("listening on {}", server.local_addr());
//! server.run().await?;
//! # Ok(()) }
//! ```

mod admin;
mod ca;
mod config;
mod datadir;
mod error;
mod feed;
mod fleet;
mod grpc;
mod jwt_svid;
mod keys;
mod mesh;
mod metrics;
mod oauth;
mod registry;
mod serve;
mod shared_endpoints;
mod shed;
mod state;
mod turns;
mod ui;
mod watch;

pub use ca::CaManagerError;
pub use config::{Config, Database};
pub use datadir::{DataDirFiles, FileError, ServerInfo};
pub use serve::Server;
