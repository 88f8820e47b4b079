//! ward's gRPC API: the `ward.v1` protobuf package and its generated tonic
//! client and server code.
//!
//! ```no_run
//! use ward_api::v1::identity_client::IdentityClient;
//! ```

/// The `ward.v1` package.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod v1 {
    tonic::include_proto!("ward.v1");
    // The `Identity` server, generated with `crate::codec` (build.rs).
    include!(concat!(env!("OUT_DIR"), "/server/ward.v1.rs"));
}

/// The SPIFFE Workload API (`SpiffeWorkloadAPI`, no proto package), as
/// the SPIFFE standard defines it, so go-spiffe, py-spiffe and the `spiffe`
/// crate talk to ward unchanged.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod workload {
    tonic::include_proto!("_");
}

/// Protobuf's well-known types (the Workload API's claims are a `Struct`).
pub use prost_types;

pub mod codec;
mod watch;
pub use watch::{delta, follow, follow_reporting, follow_with, Assembled, Missed};

/// The sample `ward.demo.v1` service run by `ward demo` and the tests.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod demo {
    tonic::include_proto!("ward.demo.v1");
}

use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

/// How long one replica of the control plane gets to accept a TCP
/// connection before the next is tried.
const CONNECT_EACH: std::time::Duration = std::time::Duration::from_secs(2);

/// Connects to one of the control-plane replicas `addrs` (`host:port`,
/// comma-separated). The first try goes to the replica that answered last
/// time for this list, or, the first time, to one picked by process id,
/// so that sidecars spread over the replicas; a replica that refuses or
/// does not answer within 2 s is passed over for the next.
pub async fn connect_tcp(addrs: &str) -> std::io::Result<tokio::net::TcpStream> {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static LAST: Mutex<Option<HashMap<String, usize>>> = Mutex::new(None);
    let list: Vec<&str> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .collect();
    if list.is_empty() {
        return Err(std::io::Error::other("no control-plane address given"));
    }
    let start = LAST
        .lock()
        .ok()
        .and_then(|m| m.as_ref().and_then(|m| m.get(addrs).copied()))
        .unwrap_or(std::process::id() as usize % list.len());
    let mut errors = Vec::new();
    for i in 0..list.len() {
        let at = (start + i) % list.len();
        let addr = list[at];
        match tokio::time::timeout(CONNECT_EACH, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => {
                if let Ok(mut m) = LAST.lock() {
                    m.get_or_insert_with(HashMap::new)
                        .insert(addrs.to_string(), at);
                }
                if i > 0 {
                    tracing::info!(server = addr, "connected to another control-plane replica");
                }
                return Ok(tcp);
            }
            Ok(Err(e)) => errors.push(format!("{addr}: {e}")),
            Err(_) => errors.push(format!("{addr}: no answer within {CONNECT_EACH:?}")),
        }
    }
    Err(std::io::Error::other(errors.join("; ")))
}

/// A gRPC channel to the control plane at `addr` (`host:port`, or several
/// replicas comma-separated: see [`connect_tcp`]) over TLS with `tls`
/// (which decides how the server is verified and which client certificate
/// is shown). HTTP/2 is negotiated by ALPN; the channel reconnects by
/// itself when the connection drops, to another replica if its own is gone.
pub async fn connect(
    addr: &str,
    tls: rustls::ClientConfig,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = tls;
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    let addr = addr.to_string();
    let connector = tower::service_fn(move |_uri: tonic::codegen::http::Uri| {
        let tls = tls.clone();
        let addr = addr.clone();
        async move {
            let tcp = connect_tcp(&addr).await?;
            tcp.set_nodelay(true)?;
            // The name is not used for verification (the SPIFFE ID is);
            // it only fills the SNI field.
            let name = rustls_pki_types::ServerName::try_from("ward-server")
                .map_err(std::io::Error::other)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    Endpoint::from_static("http://ward-server")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
}

/// The gRPC trailer by which a server that sheds load says when to come
/// back (gRFC A6's retry pushback), in milliseconds.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// When a refused call may be tried again: the server's pushback on an
/// UNAVAILABLE or RESOURCE_EXHAUSTED status, `None` for other refusals.
pub fn retry_hint(status: &tonic::Status) -> Option<std::time::Duration> {
    if !matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted
    ) {
        return None;
    }
    let ms = status.metadata().get(RETRY_PUSHBACK)?.to_str().ok()?;
    ms.trim()
        .parse::<u64>()
        .ok()
        .map(std::time::Duration::from_millis)
}

/// A call the control plane refused, with when it may be tried again if
/// the server said (it sheds load: see [`retry_hint`]).
#[derive(Debug, Clone)]
pub struct Refused {
    /// The server's message.
    pub message: String,
    /// The server's retry hint, for a refusal that may be retried.
    pub retry_in: Option<std::time::Duration>,
}

impl From<tonic::Status> for Refused {
    fn from(s: tonic::Status) -> Refused {
        Refused {
            retry_in: retry_hint(&s),
            message: s.message().to_string(),
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// Exponential backoff with jitter that honours a server's retry hint:
/// each pause is the current step spread by [`jitter`], never shorter
/// than the hint, and the step doubles up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: std::time::Duration,
    step: std::time::Duration,
    max: std::time::Duration,
}

impl Backoff {
    /// Starts at `first`, doubling to `max`.
    pub fn new(first: std::time::Duration, max: std::time::Duration) -> Backoff {
        Backoff {
            first,
            step: first,
            max,
        }
    }

    /// The pause before the next try, given the server's hint if any.
    pub fn pause(&mut self, hint: Option<std::time::Duration>) -> std::time::Duration {
        let pause = jitter(self.step).max(hint.unwrap_or_default());
        self.step = (self.step * 2).min(self.max);
        pause
    }

    /// Back to the first step, after a success.
    pub fn reset(&mut self) {
        self.step = self.first;
    }
}

/// `d` spread over half to one and a half times itself, so that many
/// clients told to wait the same time do not come back together.
pub fn jitter(d: std::time::Duration) -> std::time::Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh random seed per call (std's hasher keys), mixed with the
    // clock: not for secrets, only to spread retries.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|t| t.as_nanos())
            .unwrap_or_default(),
    );
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    d.mul_f64(0.5 + unit)
}

#[cfg(test)]
mod tests {
    use super::connect_tcp;

    #[tokio::test]
    async fn a_replica_that_refuses_is_passed_over_and_the_one_that_answered_is_kept() {
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap().to_string();
        // A port nothing listens on: bound, then closed.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead_addr = dead.local_addr().unwrap().to_string();
        drop(dead);
        let list = format!("{dead_addr}, {live_addr}");
        for _ in 0..3 {
            let tcp = connect_tcp(&list).await.unwrap();
            assert_eq!(tcp.peer_addr().unwrap().to_string(), live_addr);
        }
        let e = connect_tcp(&dead_addr).await.unwrap_err();
        assert!(e.to_string().contains(&dead_addr), "{e}");
        assert!(connect_tcp(" , ").await.is_err());
    }

    #[test]
    fn retry_hints_come_from_the_pushback_trailer_of_retryable_refusals() {
        let mut busy = tonic::Status::unavailable("busy");
        busy.metadata_mut()
            .insert(super::RETRY_PUSHBACK, "1500".parse().unwrap());
        assert_eq!(
            super::retry_hint(&busy),
            Some(std::time::Duration::from_millis(1500))
        );
        let mut denied = tonic::Status::permission_denied("no");
        denied
            .metadata_mut()
            .insert(super::RETRY_PUSHBACK, "1500".parse().unwrap());
        assert_eq!(super::retry_hint(&denied), None);
        assert_eq!(super::retry_hint(&tonic::Status::unavailable("down")), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_never_undercuts_a_hint() {
        use std::time::Duration;
        let mut b = super::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let p: Vec<_> = (0..6).map(|_| b.pause(None)).collect();
        assert!(p[0] < Duration::from_millis(150) && p[5] >= Duration::from_millis(500));
        assert!(p[5] < Duration::from_millis(1500));
        assert!(b.pause(Some(Duration::from_secs(7))) >= Duration::from_secs(7));
        b.reset();
        assert!(b.pause(None) < Duration::from_millis(150));
    }

    #[test]
    fn jitter_spreads_over_half_to_one_and_a_half() {
        let d = std::time::Duration::from_secs(2);
        let spread: Vec<_> = (0..200).map(|_| super::jitter(d)).collect();
        assert!(spread.iter().all(|j| *j >= d / 2 && *j < d * 3 / 2));
        let (lo, hi) = (spread.iter().min().unwrap(), spread.iter().max().unwrap());
        assert!(*hi - *lo > d / 2, "{lo:?}..{hi:?}");
    }
}
