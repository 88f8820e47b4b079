//! HTTP serving shared by ward's apps, the control plane and the sidecar,
//! so that both take the same limits from one place, and the standard
//! process metrics both export ([`ProcessCollector`]).
//!
//! ```no_run
//! # async fn f(io: hyper_util::rt::TokioIo<tokio::net::TcpStream>) {
//! let svc = hyper::service::service_fn(|_req| async {
//!     Ok::<_, std::convert::Infallible>(hyper::Response::new(String::from("ok")))
//! });
//! let builder = ward_http::server();
//! tokio::select! {
//!     _ = builder.serve_connection_with_upgrades(io, svc) => {}
//!     _ = ward_http::shutdown_signal() => {}
//! }
//! # }
//! ```
#![warn(missing_docs)]

mod limits;
mod process;
pub use limits::{open_files, raise_open_files, OpenFiles};
pub use process::ProcessCollector;

use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;

/// How long a client may take to send a request's headers (slowloris).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// The most header bytes (HTTP/1.1 buffer, HTTP/2 header list) a request
/// may carry.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Concurrent HTTP/2 streams per connection.
pub const MAX_CONCURRENT_STREAMS: u32 = 1024;
/// HTTP/2 streams a client may reset before they are served, per
/// connection (CVE-2023-44487, rapid reset).
pub const MAX_PENDING_RESETS: usize = 100;
/// HTTP/2 PING interval on idle connections.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// An HTTP/1.1 and HTTP/2 server builder with ward's limits: 10 s to send
/// request headers, 64 KiB of headers, 1,024 concurrent HTTP/2 streams, at
/// most 100 streams reset before they are served, and a PING every 30 s.
pub fn server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .max_pending_accept_reset_streams(Some(MAX_PENDING_RESETS))
        .keep_alive_interval(KEEP_ALIVE);
    builder
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM. Where no SIGTERM handler can be
/// installed it waits for Ctrl-C alone.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
