//! Logs, the sidecar's access log included: formatted on the thread that
//! logs, written to stderr by a thread of their own in batches, so that no
//! worker ever waits on a slow pipe or disk. When the writer falls
//! behind by [`BUFFERED_LINES`] lines, new lines are dropped and counted
//! (`ward_proxy_log_lines_dropped_total` on a sidecar's /metrics) rather
//! than traffic stalled.
use std::io::{BufWriter, Stderr};
use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::cli::{Global, LogFormat};

/// Lines waiting for the writer thread at most (about 1 MiB of access log).
pub(crate) const BUFFERED_LINES: usize = 4096;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the subscriber (`RUST_LOG`, else `default_filter`). Keep the
/// guard until exit: dropping it writes what is still buffered.
pub(crate) fn init(g: &Global, default_filter: &str) -> WorkerGuard {
    let stderr: BufWriter<Stderr> = BufWriter::with_capacity(64 * 1024, std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(BUFFERED_LINES)
        .thread_name("ward-log")
        .finish(stderr);
    let _ = DROPPED.set(writer.error_counter());
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match g.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    guard
}

/// Log lines dropped so far because the writer fell behind.
pub(crate) fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
