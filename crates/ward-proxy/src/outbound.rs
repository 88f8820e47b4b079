//! Outbound ports: plaintext from the app, mTLS to a sidecar of the target
//! service (verified to hold exactly that service's SPIFFE ID). HTTP/2
//! requests share pooled HTTP/2 connections; HTTP/1.1 exchanges share
//! connections too, each on a stream of its own (`mux`); TCP gets its own
//! connection.
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use http::header::HOST;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use ward_identity::SpiffeId;
use ward_tls::MeshTls;

use crate::abuse::CancelBudget;
use crate::config::{PeerTransport, Protocol, Upstream};
use crate::h1conn::{Idle, Retire, SendError};
use crate::hbone;
use crate::http::{
    boxed, caller_body_failed, count_response, empty, is_grpc, status_class, Access, Body, Counted,
    OnStop, Reject, ReqBody, ORIG_PROTO,
};
use crate::metrics::{Counters, DurationLabels, PeerLabels, RequestLabels};
use crate::state::{accept_loop, Shared};
use crate::transport::{self, Transport, ALPN_H2, ALPN_TCP};
use crate::workers::ConnSource;
use crate::{mux, upgrade};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// Endpoints that refused a connection are skipped for this long.
const DOWN_FOR: Duration = Duration::from_secs(5);

struct Outbound {
    shared: Arc<Shared>,
    up: Upstream,
    expected: SpiffeId,
    /// The HTTP/2 pool and the certificate generation it was opened with.
    pools: arc_swap::ArcSwap<Pools>,
    balancer: Arc<Balancer>,
    /// Request counters by status.
    requests: Counters<u16>,
    /// Duration histograms by status class.
    durations: Counters<&'static str, Histogram>,
    request_bytes: Counter,
    response_bytes: Counter,
}

pub(crate) async fn serve(
    shared: Arc<Shared>,
    up: Upstream,
    balancer: Arc<Balancer>,
    incoming: ConnSource,
) {
    let expected = match up.id.as_deref() {
        Some(id) => SpiffeId::parse(id).map_err(|e| e.to_string()),
        None => {
            SpiffeId::for_service(&shared.td, &up.namespace, &up.service).map_err(|e| e.to_string())
        }
    };
    let expected = match expected {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "bad upstream name");
            return;
        }
    };
    let pools = Pools::new(&shared, &expected);
    let bytes = |family: &Family<PeerLabels, Counter>| {
        family
            .get_or_create(&PeerLabels {
                direction: "outbound",
                peer: expected.to_string(),
            })
            .clone()
    };
    let (request_bytes, response_bytes) = (
        bytes(&shared.metrics.request_bytes),
        bytes(&shared.metrics.response_bytes),
    );
    let ctx = Arc::new(Outbound {
        shared: shared.clone(),
        up,
        expected,
        pools: arc_swap::ArcSwap::from_pointee(pools),
        balancer,
        requests: Counters::default(),
        durations: Counters::default(),
        request_bytes,
        response_bytes,
    });
    if let Some(l) = incoming.listener() {
        transport::app_listener(l);
    }
    accept_loop(&shared, incoming, "outbound", move |tcp, _| {
        let ctx = ctx.clone();
        async move {
            transport::app_accepted(&tcp);
            match ctx.up.protocol {
                Protocol::Http => ctx.http_conn(tcp).await,
                Protocol::Tcp => ctx.tcp_conn(tcp).await,
                Protocol::Auto => {
                    if sniff_http(&tcp).await {
                        ctx.http_conn(tcp).await
                    } else {
                        ctx.tcp_conn(tcp).await
                    }
                }
            }
        }
    })
    .await
}

/// Connections to the upstream made with one certificate generation: a
/// pooled HTTP/2 client, idle HTTP/1.1 connections and a TLS connector for
/// TCP, so no pooled connection made with an older certificate is used
/// after a renewal. Resumable sessions are the certificate's, shared by
/// every worker's pools (`MeshTls::client_config`).
struct Pools {
    generation: u64,
    /// HTTP/2 (gRPC and apps that speak HTTP/2), multiplexed.
    http: Client<MeshConnector, Body>,
    /// HTTP/1.1 requests, on kept-alive HTTP/1.1 connections driven by the
    /// task of the request they carry (`h1conn`): less work per request
    /// than HTTP/2 framing or a pool with a task per connection (measured
    /// in docs/performance.md). Each is a stream on a shared connection
    /// (`links`), or a TLS connection of its own to a sidecar that does not
    /// speak `ward-mux`.
    h1: Idle<Body, PeerIo>,
    /// Shared connections by endpoint, for HTTP/1.1 streams.
    links: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Links>>>>,
    h1_tls: TlsConnector,
    tcp: TlsConnector,
    /// Whether HTTP/1.1 and TCP go over HBONE where the peer speaks it.
    hbone: bool,
}

impl Pools {
    fn new(shared: &Arc<Shared>, expected: &SpiffeId) -> Pools {
        let generation = shared.generation.load(std::sync::atomic::Ordering::Relaxed);
        let h2 = TlsConnector::from(Arc::new(
            shared.tls.client_config(expected.clone(), &[ALPN_H2]),
        ));
        let tcp = TlsConnector::from(Arc::new(
            shared.tls.client_config(expected.clone(), &[ALPN_TCP]),
        ));
        let http = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .build(MeshConnector {
                tls: h2,
                shared: shared.clone(),
                expected: expected.clone(),
            });
        let hbone = shared
            .cfg
            .data_plane
            .as_ref()
            .is_some_and(|d| d.peer_transport == PeerTransport::Hbone);
        let alpns: &[&[u8]] = if hbone {
            &[hbone::ALPN, mux::ALPNS[0], mux::ALPNS[1], b"http/1.1"]
        } else {
            &[mux::ALPNS[0], mux::ALPNS[1], b"http/1.1"]
        };
        let h1_tls =
            TlsConnector::from(Arc::new(shared.tls.client_config(expected.clone(), alpns)));
        Pools {
            generation,
            http,
            h1: Idle::new(256),
            links: Mutex::new(HashMap::new()),
            h1_tls,
            tcp,
            hbone,
        }
    }

    /// A new HTTP/1.1 link to `ep`: a stream on a shared connection (a new
    /// connection when none has room), or a connection of its own when the
    /// endpoint speaks no `ward-mux` version (an older sidecar).
    async fn open_h1(&self, shared: &Shared, expected: &SpiffeId, ep: &str) -> io::Result<PeerIo> {
        let slot = {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            links.entry(ep.to_string()).or_default().clone()
        };
        // One dial at a time per endpoint: requests that arrive meanwhile
        // wait for its connection instead of opening their own, and share
        // its failure instead of each dialling again.
        let waiting_since = Instant::now();
        let mut links = slot.lock().await;
        if let Some((at, kind, why)) = &links.failed {
            if *at >= waiting_since {
                return Err(io::Error::new(*kind, why.clone()));
            }
        }
        links.conns.retain(|c| !c.is_closed());
        if let Some(stream) = links.conns.iter().find_map(|c| c.open(ep)) {
            return Ok(stream);
        }
        let tls = match dial(shared, &self.h1_tls, expected, ep).await {
            Ok(tls) => tls,
            Err(e) => {
                links.failed = Some((Instant::now(), e.kind(), e.to_string()));
                return Err(e);
            }
        };
        links.failed = None;
        let alpn = tls.get_ref().1.alpn_protocol();
        let conn = if alpn == Some(hbone::ALPN) {
            let (conn, driver) = hbone::connect(tls).await?;
            tokio::spawn(driver);
            PeerConn::Hbone(conn)
        } else {
            let Some(version) = mux::Version::of(alpn) else {
                return Ok(PeerIo::Tls(Box::new(tls)));
            };
            let (conn, driver) = mux::connector(tls, version);
            let ends = shared.metrics.peer_connections_closed.clone();
            tokio::spawn(driver.map(move |end| ends.count("outbound", end.label())));
            PeerConn::Mux(conn)
        };
        let stream = conn
            .open(ep)
            .ok_or_else(|| io::Error::other("a new connection refused a stream"))?;
        links.conns.push(conn);
        Ok(stream)
    }

    /// A TCP connection to `ep` as an HBONE tunnel, when this sidecar
    /// uses HBONE and the peer speaks it; `None` otherwise (the caller
    /// dials a TCP connection of its own).
    async fn open_tunnel(
        &self,
        shared: &Shared,
        expected: &SpiffeId,
        ep: &str,
    ) -> io::Result<Option<PeerIo>> {
        if !self.hbone {
            return Ok(None);
        }
        // A shared link that is not HBONE means the peer does not speak it.
        match self.open_h1(shared, expected, ep).await? {
            io @ PeerIo::Hbone(_) => Ok(Some(io)),
            _ => Ok(None),
        }
    }
}

/// A shared connection to another sidecar.
enum PeerConn {
    Mux(mux::Connector),
    Hbone(hbone::Connector),
}

impl PeerConn {
    fn open(&self, ep: &str) -> Option<PeerIo> {
        match self {
            PeerConn::Mux(c) => c.open().map(PeerIo::Mux),
            PeerConn::Hbone(c) => c.open(ep).map(PeerIo::Hbone),
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            PeerConn::Mux(c) => c.is_closed(),
            PeerConn::Hbone(c) => c.is_closed(),
        }
    }
}

/// The shared connections to one endpoint, and the last dial's failure.
#[derive(Default)]
struct Links {
    conns: Vec<PeerConn>,
    failed: Option<(Instant, io::ErrorKind, String)>,
}

/// An HTTP/1.1 link (or, over HBONE, a TCP connection) to another sidecar.
pub(crate) enum PeerIo {
    Mux(mux::Stream),
    Hbone(hbone::Tunnel),
    Tls(Box<TlsStream<Transport>>),
}

impl Retire for PeerIo {
    fn retired(&self) -> Option<Arc<std::sync::atomic::AtomicBool>> {
        match self {
            PeerIo::Mux(s) => Some(s.retired()),
            PeerIo::Hbone(s) => Some(s.retired()),
            PeerIo::Tls(_) => None,
        }
    }
}

impl AsyncRead for PeerIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Mux(s) => Pin::new(s).poll_read(cx, buf),
            PeerIo::Hbone(s) => Pin::new(s).poll_read(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerIo::Mux(s) => Pin::new(s).poll_write(cx, buf),
            PeerIo::Hbone(s) => Pin::new(s).poll_write(cx, buf),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Mux(s) => Pin::new(s).poll_flush(cx),
            PeerIo::Hbone(s) => Pin::new(s).poll_flush(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerIo::Mux(s) => Pin::new(s).poll_shutdown(cx),
            PeerIo::Hbone(s) => Pin::new(s).poll_shutdown(cx),
            PeerIo::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Looks at the first bytes without consuming them: an HTTP/1 method or
/// the HTTP/2 preface means HTTP; anything else, or nothing within a short
/// wait (server-speaks-first protocols), means TCP.
async fn sniff_http(tcp: &TcpStream) -> bool {
    let mut buf = [0u8; 16];
    let peek = async {
        loop {
            match tcp.peek(&mut buf).await {
                Ok(n) if n >= 8 || n == 0 => return n,
                Ok(_) => tokio::time::sleep(Duration::from_millis(2)).await,
                Err(_) => return 0,
            }
        }
    };
    let n = tokio::time::timeout(Duration::from_millis(300), peek)
        .await
        .unwrap_or(0);
    const STARTS: [&[u8]; 10] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"PATCH ",
        b"OPTIONS ",
        b"CONNECT ",
        b"TRACE ",
        b"PRI * HT",
    ];
    n > 0
        && STARTS
            .iter()
            .any(|s| buf[..n].starts_with(&s[..s.len().min(n)]))
}

impl Outbound {
    async fn http_conn(self: Arc<Self>, tcp: TcpStream) {
        let stop = self.shared.shutdown.subscribe();
        let budget = Arc::new(CancelBudget::default());
        let ctx = self.clone();
        crate::http::serve(tcp, stop, budget, OnStop::Now, "outbound", move |req| {
            let ctx = ctx.clone();
            async move { ctx.request(req).await }
        })
        .await
    }

    /// The pools for the current certificate. After a renewal new pools
    /// take new work; the old connections finish their streams and close
    /// when idle.
    fn pools(&self) -> Arc<Pools> {
        let generation = self
            .shared
            .generation
            .load(std::sync::atomic::Ordering::Relaxed);
        let current = self.pools.load_full();
        if current.generation == generation {
            return current;
        }
        let fresh = Arc::new(Pools::new(&self.shared, &self.expected));
        self.pools.store(fresh.clone());
        fresh
    }

    /// This upstream's endpoints, from `map` (the control plane's, loaded
    /// by the caller). Endpoints given on the command line (no control
    /// plane) are this upstream's own, even when another upstream expects
    /// the same ID.
    fn endpoints<'a>(&'a self, map: &'a HashMap<String, Vec<String>>) -> &'a [String] {
        if self.up.endpoints.is_empty() {
            map.get(self.expected.as_str())
                .map_or(&[], |v| v.as_slice())
        } else {
            &self.up.endpoints
        }
    }

    async fn request(&self, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let req = req.map(|b| Counted::new(b, &self.request_bytes));
        let access = Access::capture(&req, start);
        let map = self.shared.endpoints.load_full();
        let endpoints = self.endpoints(&map);
        let (resp, ep) = if upgrade::is_upgrade(&req) {
            self.forward_upgrade(req, endpoints).await
        } else {
            self.forward_http(req, endpoints).await
        };
        let status = resp.status().as_u16();
        self.requests.inc(
            |s| *s == status,
            || {
                let c = self
                    .shared
                    .metrics
                    .requests
                    .get_or_create(&RequestLabels {
                        direction: "outbound",
                        peer: self.expected.to_string(),
                        status,
                        decision: "n/a",
                    })
                    .clone();
                (status, c)
            },
        );
        let class = status_class(status);
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        self.durations.with(
            |c| *c == class,
            || {
                let labels = DurationLabels {
                    direction: "outbound",
                    peer: self.expected.to_string(),
                    status_class: class,
                    decision: "n/a",
                };
                (
                    class,
                    self.shared.metrics.durations.get_or_create(&labels).clone(),
                )
            },
            |h| h.observe(ms),
        );
        access.outbound(&self.expected, &ep, status);
        count_response(resp, &self.response_bytes)
    }

    /// An upgrade (WebSocket) needs an HTTP/1.1 connection of its own.
    async fn forward_upgrade(
        &self,
        req: Request<ReqBody>,
        endpoints: &[String],
    ) -> (Response<Body>, String) {
        let Some((ep, _guard)) = self.balancer.pick(endpoints) else {
            return (Reject::NoEndpoint.response(), String::new());
        };
        // An HTTP/1.1 link of its own (a stream on a shared connection).
        let pools = self.pools();
        let resp = match pools.open_h1(&self.shared, &self.expected, &ep).await {
            Ok(io) => upgrade::forward(req, io).await,
            Err(e) => {
                tracing::warn!(endpoint = %ep, error = %e, "upstream connection failed");
                self.balancer.mark_down(&ep);
                Reject::UpstreamUnreachable.response()
            }
        };
        (resp, ep)
    }

    /// Sends an HTTP request over the pooled HTTP/2 connections, least
    /// loaded endpoint first. A request without a body that fails to
    /// connect is retried on another endpoint, and the dead endpoint is
    /// skipped for a while.
    async fn forward_http(
        &self,
        mut req: Request<ReqBody>,
        endpoints: &[String],
    ) -> (Response<Body>, String) {
        // HTTP/2 from the app (gRPC included) goes over HTTP/2 between the
        // sidecars and reaches the app as HTTP/2; HTTP/1.1 stays HTTP/1.1.
        let h2 = req.version() == Version::HTTP_2 || is_grpc(req.headers());
        if !h2 {
            return self.forward_h1(req, endpoints).await;
        }
        if req.version() == Version::HTTP_2 {
            req.headers_mut()
                .insert(ORIG_PROTO, HeaderValue::from_static("h2"));
        }
        let retryable = hyper::body::Body::is_end_stream(req.body());
        let pq = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let (mut parts, body) = req.into_parts();
        let mut body = Some(body.boxed());
        let mut tried: Vec<String> = Vec::new();
        let attempts = if retryable {
            endpoints.len().clamp(1, 3)
        } else {
            1
        };
        let pools = self.pools();
        let client = &pools.http;
        for attempt in 1..=attempts {
            let Some((ep, _guard)) = self.balancer.pick_excluding(endpoints, &tried) else {
                break;
            };
            let mut target = http::uri::Parts::default();
            target.scheme = Some(Scheme::HTTP);
            target.authority = Authority::try_from(ep.as_str()).ok();
            target.path_and_query = Some(pq.clone());
            let Ok(uri) = http::Uri::from_parts(target) else {
                return (Reject::BadTarget.response(), ep);
            };
            let mut r = Request::new(body.take().unwrap_or_else(empty));
            *r.method_mut() = parts.method.clone();
            *r.uri_mut() = uri;
            *r.version_mut() = Version::HTTP_2;
            // The last attempt (the only one, for most requests) takes the
            // headers instead of copying them.
            *r.headers_mut() = if attempt == attempts {
                std::mem::take(&mut parts.headers)
            } else {
                parts.headers.clone()
            };
            match client.request(r).await {
                Ok(resp) => return (boxed(resp), ep),
                Err(e) => {
                    if caller_body_failed(&e) {
                        return self.bad_body(&e, ep);
                    }
                    tracing::warn!(endpoint = %ep, service = %self.expected, error = %error_chain(&e), "upstream request failed");
                    if !e.is_connect() {
                        break;
                    }
                    self.balancer.mark_down(&ep);
                    tried.push(ep);
                }
            }
        }
        self.unreachable(endpoints, &tried)
    }

    /// Sends an HTTP/1.1 request on an idle connection to the least loaded
    /// endpoint, or a new one. A request that found no connection to an
    /// endpoint (it is then untouched, body included) goes to another, and
    /// the dead endpoint is skipped for a while.
    async fn forward_h1(
        &self,
        req: Request<ReqBody>,
        endpoints: &[String],
    ) -> (Response<Body>, String) {
        let pools = self.pools();
        let (mut parts, body) = req.into_parts();
        parts.version = Version::HTTP_11;
        // Origin form on the request line, as the app sent it to us.
        parts.uri = parts
            .uri
            .path_and_query()
            .cloned()
            .map_or_else(|| http::Uri::from_static("/"), http::Uri::from);
        // Without a Host header (HTTP/1.0 apps) the endpoint is the host.
        let host_from_endpoint = !parts.headers.contains_key(HOST);
        let mut req = Request::from_parts(parts, body.boxed());
        let mut tried: Vec<String> = Vec::new();
        for _ in 0..3 {
            let Some((ep, _guard)) = self.balancer.pick_excluding(endpoints, &tried) else {
                break;
            };
            if host_from_endpoint {
                if let Ok(h) = HeaderValue::from_str(&ep) {
                    req.headers_mut().insert(HOST, h);
                }
            }
            let open = || pools.open_h1(&self.shared, &self.expected, &ep);
            match pools.h1.send(&ep, open, req).await {
                Ok(resp) => return (resp, ep),
                Err(SendError::Connect(e, back)) => {
                    tracing::warn!(endpoint = %ep, service = %self.expected, error = %e, "upstream connection failed");
                    self.balancer.mark_down(&ep);
                    tried.push(ep);
                    req = *back;
                }
                Err(SendError::Http(e)) => {
                    if caller_body_failed(&*e) {
                        return self.bad_body(&*e, ep);
                    }
                    tracing::warn!(endpoint = %ep, service = %self.expected, error = %e, "upstream request failed");
                    tried.push(ep);
                    break;
                }
            }
        }
        self.unreachable(endpoints, &tried)
    }

    /// The answer when the app's request body was malformed: its error,
    /// and the endpoint is not blamed.
    fn bad_body(
        &self,
        e: &(dyn std::error::Error + 'static),
        ep: String,
    ) -> (Response<Body>, String) {
        tracing::warn!(service = %self.expected, error = %error_chain(e), "malformed request body from the app; answered 400");
        (Reject::BadBody.response(), ep)
    }

    /// The answer when no endpoint answered.
    fn unreachable(&self, endpoints: &[String], tried: &[String]) -> (Response<Body>, String) {
        if endpoints.is_empty() {
            tracing::warn!(service = %self.expected, "no endpoint for the upstream service");
            return (Reject::NoEndpoint.response(), String::new());
        }
        (Reject::UpstreamUnreachable.response(), tried.join(","))
    }

    async fn tcp_conn(self: Arc<Self>, mut tcp: TcpStream) {
        let map = self.shared.endpoints.load_full();
        let endpoints = self.endpoints(&map);
        for _ in 0..endpoints.len().max(1) {
            let Some((ep, _guard)) = self.balancer.pick(endpoints) else {
                tracing::warn!(service = %self.expected, "no endpoint for the upstream service");
                return;
            };
            let pools = self.pools();
            match pools.open_tunnel(&self.shared, &self.expected, &ep).await {
                Ok(Some(mut tunnel)) => {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut tunnel).await;
                    return;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(endpoint = %ep, error = %e, "upstream connection failed");
                    self.balancer.mark_down(&ep);
                    continue;
                }
            }
            match dial(&self.shared, &pools.tcp, &self.expected, &ep).await {
                Ok(mut tls) => {
                    let _ = tokio::io::copy_bidirectional(&mut tcp, &mut tls).await;
                    return;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %ep, error = %e, "upstream connection failed");
                    self.balancer.mark_down(&ep);
                }
            }
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(i) = src {
        s.push_str(": ");
        s.push_str(&i.to_string());
        src = i.source();
    }
    s
}

/// An mTLS connection to `ep`, which must present `expected`: checked in
/// the handshake, and again after it for a resumed session, whose
/// certificate may have expired or been revoked since.
async fn connect_tls(
    tls: &TlsConnector,
    mesh: &MeshTls,
    expected: &SpiffeId,
    ep: &str,
) -> io::Result<TlsStream<Transport>> {
    let tcp = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(ep))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    let tcp = transport::mesh(tcp);
    let stream = tokio::time::timeout(Duration::from_secs(10), tls.connect(session_name(ep), tcp))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
    mesh.connected_peer(stream.get_ref().1, false, Some(expected))
        .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
    Ok(stream)
}

/// The name a connection to `ep` is made under. Verification does not use
/// it (the SPIFFE ID is checked), but the TLS session cache is keyed by
/// it: one name per endpoint, so that a session is only offered to the
/// sidecar that issued it (a ticket offered to another endpoint is wasted
/// and costs a full handshake; so does the rare name two addresses share,
/// nothing more, as only the issuer can resume a session).
fn session_name(ep: &str) -> rustls_pki_types::ServerName<'static> {
    let label: String = ep
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let label = label.trim_matches('-');
    rustls_pki_types::ServerName::try_from(format!("{label}.ward-peer"))
        .ok()
        .filter(|_| !label.is_empty() && label.len() <= 63)
        .unwrap_or_else(|| {
            rustls_pki_types::ServerName::try_from("ward-peer").expect("a valid DNS name")
        })
}

/// [`connect_tls`], counted in the handshake metrics.
async fn dial(
    shared: &Shared,
    tls: &TlsConnector,
    expected: &SpiffeId,
    ep: &str,
) -> io::Result<TlsStream<Transport>> {
    let r = connect_tls(tls, &shared.tls, expected, ep).await;
    let result = if r.is_ok() { "ok" } else { "error" };
    shared.metrics.count_handshake("outbound", result);
    if let Ok(stream) = &r {
        shared
            .metrics
            .count_resumption("outbound", stream.get_ref().1);
    }
    r
}

/// Least-loaded choice among live endpoints; ties go round-robin. One
/// per upstream, shared by the data-plane workers: loads are the whole
/// sidecar's, and an endpoint one worker found down is skipped by all.
///
/// A pick looks each candidate up once; the chosen endpoint's count is
/// shared with the [`InFlight`] guard, which gives it back without a
/// lookup.
#[derive(Default)]
pub(crate) struct Balancer {
    slots: Mutex<HashMap<String, Slot>>,
    next: AtomicUsize,
}

/// Per endpoint: requests in flight, and until when it is skipped.
type Slot = (Arc<AtomicUsize>, Option<Instant>);

/// A request in flight to an endpoint, counted until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Balancer {
    fn pick(&self, endpoints: &[String]) -> Option<(String, InFlight)> {
        self.pick_excluding(endpoints, &[])
    }

    fn pick_excluding(
        &self,
        endpoints: &[String],
        exclude: &[String],
    ) -> Option<(String, InFlight)> {
        let n = endpoints.len();
        if n == 0 {
            return None;
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots.len() > 2 * n + 16 {
            // Forget endpoints that left the service, once idle.
            slots.retain(|ep, (c, _)| Arc::strong_count(c) > 1 || endpoints.contains(ep));
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut now = None;
        // The least loaded endpoint that is live, and of all of them: when
        // every endpoint is marked down, they are tried anyway.
        let mut live = None;
        let mut any = None;
        for i in 0..n {
            let ep = &endpoints[(start + i) % n];
            if exclude.contains(ep) {
                continue;
            }
            let slot = slots.get(ep.as_str());
            let load = slot.map_or(0, |(c, _)| c.load(Ordering::Relaxed));
            let up = slot
                .and_then(|(_, down)| *down)
                .is_none_or(|t| t <= *now.get_or_insert_with(Instant::now));
            let better =
                |best: &Option<(&String, usize, _)>| best.as_ref().is_none_or(|b| load < b.1);
            if up && better(&live) {
                live = Some((ep, load, slot.map(|(c, _)| c)));
            }
            if better(&any) {
                any = Some((ep, load, slot.map(|(c, _)| c)));
            }
        }
        let (ep, _, count) = live.or(any)?;
        let (ep, count) = (ep.clone(), count.cloned());
        let count = match count {
            Some(c) => c,
            None => slots.entry(ep.clone()).or_default().0.clone(),
        };
        count.fetch_add(1, Ordering::Relaxed);
        Some((ep, InFlight(count)))
    }

    fn mark_down(&self, ep: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.entry(ep.to_string()).or_default().1 = Some(Instant::now() + DOWN_FOR);
    }
}

/// Connects to a sidecar endpoint (the URI's authority) over mTLS, for
/// the HTTP/2 pool.
#[derive(Clone)]
struct MeshConnector {
    tls: TlsConnector,
    shared: Arc<Shared>,
    expected: SpiffeId,
}

struct MeshIo(TokioIo<TlsStream<Transport>>);

impl Connection for MeshIo {
    fn connected(&self) -> Connected {
        Connected::new().negotiated_h2()
    }
}

impl hyper::rt::Read for MeshIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for MeshIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower::Service<http::Uri> for MeshConnector {
    type Response = MeshIo;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<MeshIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let tls = self.tls.clone();
        let shared = self.shared.clone();
        let expected = self.expected.clone();
        Box::pin(async move {
            let ep = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| io::Error::other("no endpoint"))?;
            let io = dial(&shared, &tls, &expected, &ep).await?;
            Ok(MeshIo(TokioIo::new(io)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{session_name, Balancer};

    fn eps(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("127.0.0.1:{}", 15000 + i)).collect()
    }

    #[test]
    fn balancer_spreads_ties_and_prefers_the_least_loaded() {
        let b = Balancer::default();
        let e = eps(3);
        // Nothing in flight: each pick is dropped at once, so all tie and
        // go round-robin.
        let mut seen: Vec<String> = (0..6).map(|_| b.pick(&e).unwrap().0).collect();
        seen.sort();
        assert_eq!(
            seen,
            [&e[0], &e[0], &e[1], &e[1], &e[2], &e[2]].map(String::clone)
        );
        // Two held on one endpoint and one on another: the third is next,
        // whatever the round-robin start.
        let (first, g1) = b.pick(&e).unwrap();
        let (second, g2) = b.pick_excluding(&e, std::slice::from_ref(&first)).unwrap();
        for _ in 0..5 {
            let (ep, g) = b.pick(&e).unwrap();
            assert!(ep != first && ep != second, "{ep}");
            drop(g);
        }
        // Guards give their count back when dropped.
        drop(g2);
        drop(g1);
        let counts: Vec<usize> = b
            .slots
            .lock()
            .unwrap()
            .values()
            .map(|(c, _)| c.load(std::sync::atomic::Ordering::Relaxed))
            .collect();
        assert!(counts.iter().all(|c| *c == 0), "{counts:?}");
    }

    #[test]
    fn balancer_skips_endpoints_marked_down_unless_all_are() {
        let b = Balancer::default();
        let e = eps(2);
        b.mark_down(&e[0]);
        for _ in 0..4 {
            assert_eq!(b.pick(&e).unwrap().0, e[1]);
        }
        assert_eq!(
            b.pick_excluding(&e, &e[1..]).unwrap().0,
            e[0],
            "the only candidate left is tried though down"
        );
        b.mark_down(&e[1]);
        assert!(b.pick(&e).is_some(), "all down: tried anyway");
        assert!(b.pick_excluding(&e, &e).is_none());
        assert!(b.pick(&[]).is_none());
    }

    #[test]
    fn balancer_forgets_endpoints_that_left() {
        let b = Balancer::default();
        for i in 0..100 {
            let e = vec![format!("10.0.0.{i}:15006")];
            drop(b.pick(&e));
        }
        let held = b.pick(&eps(1)).unwrap();
        assert!(b.slots.lock().unwrap().len() <= 2 + 16 + 1);
        drop(held);
    }

    #[test]
    fn one_session_name_per_endpoint() {
        let name = |ep: &str| session_name(ep).to_str().into_owned();
        assert_eq!(name("127.0.0.1:15006"), "127-0-0-1-15006.ward-peer");
        assert_ne!(name("127.0.0.1:15006"), name("127.0.0.1:15007"));
        assert_eq!(name("[::1]:8443"), "1--8443.ward-peer");
        assert_eq!(
            name("Payments-0.NS.svc:15006"),
            "payments-0-ns-svc-15006.ward-peer"
        );
        assert_eq!(name(&"x".repeat(80)), "ward-peer");
        assert_eq!(name(":"), "ward-peer");
    }
}
