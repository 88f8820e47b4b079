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

/// Follows the control plane's `Watch` stream for as long as the returned
/// future is polled: every update (trust bundle, revoked certificates and
/// token ids, endpoints, policies) is passed to `on_update` as
/// `Some(update)`; a lost stream is reported as `None`, then the stream is
/// reopened with exponential backoff (100 ms doubling to 5 s).
///
/// `tls` is called for every connection, so a caller whose certificate is
/// renewed shows the current one; the watch stream requires a ward client
/// certificate. `advertise` (`host:port`, or empty) registers this
/// workload's address as an endpoint of its service while the stream is
/// open.
///
/// A service that verifies ward's access tokens keeps its revocation list
/// current with it:
///
/// ```no_run
/// # async fn f(tls: impl FnMut() -> Result<rustls::ClientConfig, String>) {
/// let mut revoked = std::collections::HashSet::new();
/// ward_api::follow("127.0.0.1:8443", tls, Default::default(), |update| {
///     if let Some(u) = update {
///         revoked = u.revoked_token_ids.into_iter().collect();
///     }
/// })
/// .await;
/// # }
/// ```
pub async fn follow<T, U>(addr: &str, mut tls: T, request: v1::WatchRequest, mut on_update: U)
where
    T: FnMut() -> Result<rustls::ClientConfig, String>,
    U: FnMut(Option<v1::WatchResponse>),
{
    use std::time::Duration;
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut got_any = false;
        let result: Result<(), String> = async {
            let channel = connect(addr, tls()?)
                .await
                .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let mut stream = v1::identity_client::IdentityClient::new(channel)
                .watch(request.clone())
                .await
                .map_err(|s| s.message().to_string())?
                .into_inner();
            while let Some(msg) = stream
                .message()
                .await
                .map_err(|s| s.message().to_string())?
            {
                got_any = true;
                on_update(Some(msg));
            }
            Ok(())
        }
        .await;
        match result {
            Ok(()) => tracing::warn!("watch stream ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "control plane unreachable; keeping the last configuration")
            }
        }
        on_update(None);
        if got_any {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
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
}
