//! The inbound listener: mTLS in, policy, plaintext to the app.
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest::{digest, SHA256};
use http::header::{HeaderValue, HOST};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use ward_policy::{HttpAttributes, Request as PolicyRequest};

use crate::abuse::CancelBudget;
use crate::authn::{Authn, Outcome};
use crate::config::Protocol;
use crate::gated::Gated;
use crate::h1conn::Idle;
use crate::hbone;
use crate::http::{
    boxed, count_response, is_grpc, status_class, Access, Body, Counted, OnStop, Reject, ReqBody,
    DRAIN_GRACE, ORIG_PROTO, PEER_ID, XFCC,
};
use crate::metrics::{
    Counters, DecisionLabels, DurationLabels, HandshakeLabels, PeerLabels, RequestLabels,
};
use crate::state::{accept_loop, stopped, Shared};
use crate::transport::{self, Transport, ALPN_H2, ALPN_TCP};
use crate::workers::ConnSource;
use crate::{mux, upgrade};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

/// What the access log and the decision metrics name as the decider when
/// a peer's certificate was revoked: no policy decided it.
const REVOKED: &str = "(certificate revoked)";

struct Inbound {
    shared: Arc<Shared>,
    /// The app, on loopback, and how it speaks.
    app: SocketAddr,
    app_protocol: Protocol,
    /// The app's address as a URI authority.
    app_authority: Authority,
    app_h1: Client<HttpConnector, ReqBody>,
    app_h2: Client<HttpConnector, ReqBody>,
}

/// An HTTP/1.1 connection to the app, kept by one connection (or stream)
/// from a peer for its requests.
type AppConn = Idle<ReqBody, TcpStream>;

/// A decision's metric, and the caller's traffic counter for it (none
/// for dry runs and reported matches).
type DecisionCounters = (Counter, Option<Arc<AtomicU64>>);

/// The verified caller on one connection, with what its requests reuse.
struct Peer {
    id: String,
    id_header: HeaderValue,
    /// Request counters by (status, decision).
    requests: Counters<(u16, &'static str)>,
    /// Decision counters by (decision, policy, dry run), with this
    /// caller's traffic counter for the control plane's reports (none for
    /// dry runs).
    decisions: Counters<(&'static str, String, bool), DecisionCounters>,
    /// Duration histograms by (status class, decision).
    durations: Counters<(&'static str, &'static str), Histogram>,
    request_bytes: Counter,
    response_bytes: Counter,
    serial: String,
    /// SHA-256 of the leaf certificate (for certificate-bound tokens).
    cert_sha256: [u8; 32],
    xfcc: HeaderValue,
    remote: SocketAddr,
}

/// Which of the sidecar's ports a listener is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    /// Every protocol between sidecars, by ALPN.
    Inbound,
    /// HBONE alone, with ALPN `h2` (Istio's 15008).
    Hbone,
}

pub(crate) async fn serve(shared: Arc<Shared>, incoming: ConnSource, port: Port) {
    if let Some(l) = incoming.listener() {
        transport::mesh_listener(l);
    }
    let alpns: &[&[u8]] = match port {
        // A client that offers HBONE (which only ward's own sidecars and
        // HBONE clients do) gets it.
        Port::Inbound => &[
            ALPN_H2,
            hbone::ALPN,
            mux::ALPNS[0],
            mux::ALPNS[1],
            b"http/1.1",
            ALPN_TCP,
        ],
        Port::Hbone => &[hbone::ALPN_PORT],
    };
    let acceptor = TlsAcceptor::from(Arc::new(shared.tls.server_config(alpns)));
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let Some(dp) = shared.cfg.data_plane.as_ref() else {
        return;
    };
    let (app, app_protocol) = (dp.app, dp.app_protocol);
    let app_authority = match Authority::try_from(app.to_string()) {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, %app, "the app address is not a valid authority");
            return;
        }
    };
    let ctx = Arc::new(Inbound {
        app,
        app_protocol,
        app_authority,
        app_h1: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(http.clone()),
        app_h2: Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(http),
        shared: shared.clone(),
    });
    accept_loop(&shared, incoming, "inbound", move |tcp, remote| {
        handle(ctx.clone(), acceptor.clone(), port, tcp, remote)
    })
    .await
}

/// Whether a failed inbound handshake ended because the client closed or
/// reset the connection, not because TLS refused it. A client that sent
/// an alert (it rejected the sidecar's certificate) or broke the protocol
/// is refused; one that left is not: a TLS health check or `openssl
/// s_time` closes as soon as its own side of the handshake is done, and
/// the session ticket the sidecar then writes finds the socket closed.
fn client_left(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | BrokenPipe | ConnectionReset | ConnectionAborted
    )
}

async fn handle(
    ctx: Arc<Inbound>,
    acceptor: TlsAcceptor,
    port: Port,
    tcp: TcpStream,
    remote: SocketAddr,
) {
    let m = &ctx.shared.metrics;
    let tls = match tokio::time::timeout(
        Duration::from_secs(10),
        acceptor.accept(transport::mesh_accepted(tcp)),
    )
    .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let left = client_left(&e);
            m.count_handshake("inbound", if left { "closed" } else { "error" });
            if left {
                tracing::debug!(%remote, error = %e, "inbound client left during the handshake");
            } else {
                tracing::info!(%remote, error = %e, "inbound handshake refused");
            }
            return;
        }
        Err(_) => {
            m.count_handshake("inbound", "timeout");
            return;
        }
    };
    m.count_handshake("inbound", "ok");
    let (_, conn) = tls.get_ref();
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        _ => "other",
    };
    m.tls_versions
        .get_or_create(&crate::metrics::TlsVersionLabels {
            direction: "inbound",
            version,
        })
        .inc();
    m.count_resumption("inbound", conn);
    let peer = match ctx.shared.tls.connected_peer(conn, true, None) {
        Ok(peer) => peer,
        Err(e) => {
            // A resumed session whose certificate expired, was revoked or
            // lost its trust anchor since the full handshake.
            tracing::info!(error = %e, %remote, "inbound connection refused after the handshake");
            return;
        }
    };
    let mut cert_sha256 = [0u8; 32];
    if let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) {
        cert_sha256.copy_from_slice(digest(&SHA256, leaf).as_ref());
    }
    let hash = hex::encode(cert_sha256);
    let xfcc = format!("By={};Hash={hash};URI={}", ctx.shared.id, peer.id);
    let Ok(id_header) = HeaderValue::from_str(peer.id.as_str()) else {
        return;
    };
    let bytes = |family: &Family<PeerLabels, Counter>| {
        family
            .get_or_create(&PeerLabels {
                direction: "inbound",
                peer: peer.id.to_string(),
            })
            .clone()
    };
    let metrics = &ctx.shared.metrics;
    let peer = Arc::new(Peer {
        id: peer.id.to_string(),
        id_header,
        requests: Counters::default(),
        decisions: Counters::default(),
        durations: Counters::default(),
        request_bytes: bytes(&metrics.request_bytes),
        response_bytes: bytes(&metrics.response_bytes),
        serial: peer.serial.clone(),
        cert_sha256,
        xfcc: HeaderValue::from_str(&xfcc).unwrap_or(HeaderValue::from_static("")),
        remote,
    });
    let alpn = conn.alpn_protocol();
    let protocol = match alpn {
        _ if port == Port::Hbone => "hbone",
        Some(hbone::ALPN) => "hbone",
        Some(b"ward-mux/2") => "ward-mux/2",
        Some(b"ward-mux/1") => "ward-mux/1",
        Some(ALPN_H2) => "h2",
        Some(b"http/1.1") => "http/1.1",
        Some(ALPN_TCP) => "ward-tcp/1",
        _ => "none",
    };
    ctx.shared
        .metrics
        .peer_connections
        .get_or_create(&crate::metrics::ProtocolLabels {
            direction: "inbound",
            protocol,
        })
        .inc();
    let mode = match alpn {
        _ if port == Port::Hbone => Mode::Hbone,
        Some(hbone::ALPN) => Mode::Hbone,
        Some(ALPN_TCP) => {
            tcp_to_app(ctx, tls, peer).await;
            return;
        }
        Some(b"http/1.1") => Mode::Http1,
        _ => match mux::Version::of(alpn) {
            Some(v) => Mode::Streams(v),
            None => Mode::Http2,
        },
    };
    if let Mode::Hbone = mode {
        serve_hbone(ctx, tls, peer).await;
        return;
    }
    if ctx.app_protocol == Protocol::Tcp {
        // HTTP framing towards an app that speaks raw TCP would corrupt both.
        tracing::warn!(peer = %peer.id, "HTTP from a peer to a TCP service: configure the caller's upstream with protocol=tcp");
        return;
    }
    let budget = Arc::new(CancelBudget::default());
    match mode {
        Mode::Streams(v) => serve_streams(ctx, tls, v, peer, budget).await,
        // An HTTP/1.1 connection keeps an app connection of its own; HTTP/2
        // requests use the pools.
        Mode::Http1 => serve_http(ctx, tls, peer, Some(Idle::new(1)), budget, OnStop::Now).await,
        Mode::Http2 => serve_http(ctx, tls, peer, None, budget, OnStop::Now).await,
        Mode::Hbone => unreachable!("served above"),
    }
}

/// What an HTTP connection from a peer carries, by its ALPN protocol.
enum Mode {
    /// `ward-mux/2` or `/1`: HTTP/1.1 exchanges, each on a stream.
    Streams(mux::Version),
    Http1,
    Http2,
    /// HBONE: tunnels carrying what the app speaks.
    Hbone,
}

/// Serves the HTTP/1.1 streams of a `ward-mux` connection, each as a
/// connection of its own (with its own app connection). The peer, its
/// counters and the cancellation budget are the connection's.
async fn serve_streams(
    ctx: Arc<Inbound>,
    tls: tokio_rustls::server::TlsStream<Transport>,
    version: mux::Version,
    peer: Arc<Peer>,
    budget: Arc<CancelBudget>,
) {
    let (acceptor, driver) = mux::acceptor(tls, version);
    tokio::pin!(driver);
    let mut acceptor = Some(acceptor);
    let mut stop = ctx.shared.shutdown.subscribe();
    // This task also drives the connection, so it wakes for every read
    // and write on it: the other branches are polled only when woken.
    let mut tripped = Gated::new(budget.tripped());
    let mut stopped = Gated::new(stopped(&mut stop));
    // `ward-mux/2`, stopping: GOAWAY was sent; streams the peer opened
    // before it heard are still served, and once DRAIN_GRACE has passed
    // with no stream left the connection closes.
    let mut draining = false;
    let mut check: Option<tokio::time::Interval> = None;
    let on_stop = match version {
        mux::Version::V2 => OnStop::AfterRequest,
        mux::Version::V1 => OnStop::Now,
    };
    loop {
        let next = Gated::new(async {
            match &acceptor {
                Some(a) => a.accept().await,
                None => std::future::pending().await,
            }
        });
        tokio::select! {
            end = &mut driver => {
                ctx.shared.metrics.peer_connections_closed.count("inbound", end.label());
                return;
            }
            _ = &mut tripped => return,
            s = next => match s {
                Some(stream) => {
                    let task = serve_http(ctx.clone(), stream, peer.clone(), Some(Idle::new(1)), budget.clone(), on_stop);
                    tokio::spawn(task);
                }
                None => acceptor = None,
            },
            // `ward-mux/1`: no new streams; those open finish their
            // exchanges (each shuts down gracefully), then the connection
            // closes. `/2`: GOAWAY, as above.
            _ = &mut stopped, if !draining && acceptor.is_some() => {
                draining = acceptor.as_ref().is_some_and(|a| a.go_away());
                if draining {
                    let first = tokio::time::Instant::now() + DRAIN_GRACE;
                    check = Some(tokio::time::interval_at(first, Duration::from_millis(50)));
                } else {
                    acceptor = None;
                }
            }
            _ = async { check.as_mut().expect("set when draining").tick().await }, if check.is_some() && acceptor.is_some() => {
                if acceptor.as_ref().is_some_and(|a| a.streams_open() == 0) {
                    acceptor = None;
                }
            }
        }
    }
}

/// Serves the HBONE tunnels of a connection: each carries raw TCP to a
/// `tcp` app and HTTP/1.1 (authorized request by request) to the others,
/// with an app connection of its own. Stopping sends GOAWAY; tunnels
/// already open finish their exchange.
async fn serve_hbone(
    ctx: Arc<Inbound>,
    tls: tokio_rustls::server::TlsStream<Transport>,
    peer: Arc<Peer>,
) {
    let budget = Arc::new(CancelBudget::default());
    let mut stop = ctx.shared.shutdown.subscribe();
    let tripped = budget.tripped();
    let stopping = async move {
        stopped(&mut stop).await;
    };
    // Boxed: HBONE's server is the largest of the protocols' futures
    // (6.8 KiB), and inline it would size every inbound connection's task,
    // whatever the connection speaks (9.5 KiB instead of 7.5).
    let serve = Box::pin(hbone::serve(tls, stopping, |tunnel, _authority| {
        let (ctx, peer, budget) = (ctx.clone(), peer.clone(), budget.clone());
        async move {
            if ctx.app_protocol == Protocol::Tcp {
                tcp_to_app(ctx, tunnel, peer).await;
            } else {
                serve_http(
                    ctx,
                    tunnel,
                    peer,
                    Some(Idle::new(1)),
                    budget,
                    OnStop::AfterRequest,
                )
                .await;
            }
        }
    }));
    tokio::select! {
        _ = serve => {}
        _ = tripped => {}
    }
}

/// Serves HTTP from a peer on `io` (a connection or a stream) until it
/// ends, the budget trips or the sidecar stops.
async fn serve_http<IO>(
    ctx: Arc<Inbound>,
    io: IO,
    peer: Arc<Peer>,
    app: Option<AppConn>,
    budget: Arc<CancelBudget>,
    on_stop: OnStop,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let stop = ctx.shared.shutdown.subscribe();
    crate::http::serve(io, stop, budget, on_stop, "inbound", move |req| {
        let (ctx, peer, app) = (ctx.clone(), peer.clone(), app.clone());
        async move { ctx.request(req, &peer, app.as_ref()).await }
    })
    .await
}

impl Inbound {
    async fn request(
        &self,
        req: Request<Incoming>,
        peer: &Peer,
        app: Option<&AppConn>,
    ) -> Response<Body> {
        let start = Instant::now();
        let req = req.map(|b| Counted::new(b, &peer.request_bytes));
        let resp = self.judge(req, peer, app, start).await;
        count_response(resp, &peer.response_bytes)
    }

    /// Authenticates, authorizes and forwards one request; counts it.
    async fn judge(
        &self,
        req: Request<ReqBody>,
        peer: &Peer,
        app: Option<&AppConn>,
        start: Instant,
    ) -> Response<Body> {
        let shared = &self.shared;
        let access = Access::capture(&req, start);
        let authn = shared.authn.load_full();
        let outcome = authn
            .authenticate(req.headers(), peer.cert_sha256, &shared.revoked_tokens)
            .await;
        if let Outcome::Invalid(why) = &outcome {
            return self.unauthenticated(peer, &access, why, start);
        }
        let (request_principal, claims) = match &outcome {
            Outcome::Valid {
                principal, claims, ..
            } => (Some(principal.as_str()), Some(&claims.0)),
            _ => (None, None),
        };
        let decision = {
            let policies = shared.policies.load();
            // Headers are collected only when some policy reads them.
            let headers: Vec<(&str, &str)> = if policies.reads_headers() {
                req.headers()
                    .iter()
                    .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
                    .collect()
            } else {
                Vec::new()
            };
            let preq = PolicyRequest {
                namespace: &shared.cfg.namespace,
                service: &shared.cfg.service,
                destination_port: shared.inbound_port,
                source_principal: Some(&peer.id),
                source_ip: Some(peer.remote.ip()),
                http: Some(HttpAttributes {
                    method: req.method().as_str(),
                    path: req.uri().path(),
                    host: host_of(&req).unwrap_or_default(),
                    headers,
                    request_principal,
                    claims,
                }),
            };
            policies.evaluate(&preq)
        };
        // A peer revoked after its handshake is refused on its open
        // connections too, from the moment the revocation arrives.
        let revoked = shared.tls.trust().revoked.contains(&peer.serial);
        let allowed = decision.allowed() && !revoked;
        let label = if allowed { "allow" } else { "deny" };
        // A revoked peer is refused whatever the policies say: the
        // revocation decided, not the policy that would have allowed it.
        let decided = if revoked { REVOKED } else { decision.policy() };
        self.count_decision(peer, label, decided, false);
        for m in &decision.reported {
            self.count_decision(peer, "match", &m.policy, m.dry_run);
        }
        let resp = if revoked {
            Reject::PeerRevoked.response()
        } else if !allowed {
            Reject::Denied.response()
        } else {
            self.forward(req, peer, app, &authn, &outcome).await
        };
        let status = resp.status().as_u16();
        self.count_request(peer, status, label, start);
        let reason = revoked.then_some("peer certificate revoked");
        access.inbound(&peer.id, status, label, decided, reason);
        resp
    }

    /// Sends an allowed request to the app, with the caller's identity in
    /// `x-ward-peer-id` and `x-forwarded-client-cert`.
    async fn forward(
        &self,
        mut req: Request<ReqBody>,
        peer: &Peer,
        app: Option<&AppConn>,
        authn: &Authn,
        outcome: &Outcome,
    ) -> Response<Body> {
        // HTTP/2 reaches the app as HTTP/2 however it came: from an
        // outbound sidecar (which says so, since ward-mux carries HTTP/1.1
        // framing) or straight from a client speaking h2 to this port.
        let h2 = req
            .headers_mut()
            .remove(ORIG_PROTO)
            .is_some_and(|v| v == "h2")
            || req.version() == Version::HTTP_2
            || is_grpc(req.headers());
        let host = if !h2 && !req.headers().contains_key(HOST) {
            host_of(&req).and_then(|h| HeaderValue::from_str(h).ok())
        } else {
            None
        };
        let headers = req.headers_mut();
        authn.rewrite(headers, outcome);
        headers.remove(XFCC);
        headers.remove(PEER_ID);
        headers.insert(XFCC, peer.xfcc.clone());
        headers.insert(PEER_ID, peer.id_header.clone());
        if let Some(h) = host {
            headers.insert(HOST, h);
        }
        let mut target = std::mem::take(req.uri_mut()).into_parts();
        if target.path_and_query.is_none() {
            target.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if upgrade::is_upgrade(&req) {
            // Upgrades (WebSocket) get a connection of their own, and the
            // request line keeps the origin form.
            target.scheme = None;
            target.authority = None;
            match Uri::from_parts(target) {
                Ok(uri) => *req.uri_mut() = uri,
                Err(_) => return Reject::BadTarget.response(),
            }
            return match TcpStream::connect(self.app).await {
                Ok(app) => upgrade::forward(req, app).await,
                Err(_) => Reject::AppUnreachable.response(),
            };
        }
        target.scheme = Some(Scheme::HTTP);
        target.authority = Some(self.app_authority.clone());
        match Uri::from_parts(target) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(_) => return Reject::BadTarget.response(),
        }
        *req.version_mut() = if h2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let sent = match (app, h2) {
            (Some(own), false) => {
                // Origin form on the request line, as a client sends it,
                // and a Host header (the app's address, as the pool sets).
                if let Some(pq) = req.uri().path_and_query().cloned() {
                    *req.uri_mut() = Uri::from(pq);
                }
                if !req.headers().contains_key(HOST) {
                    if let Ok(h) = HeaderValue::from_str(self.app_authority.as_str()) {
                        req.headers_mut().insert(HOST, h);
                    }
                }
                let app = self.app;
                own.send("", || connect_app(app), req)
                    .await
                    .map_err(|e| e.to_string())
            }
            (_, true) => self
                .app_h2
                .request(req)
                .await
                .map(boxed)
                .map_err(|e| e.to_string()),
            (None, false) => self
                .app_h1
                .request(req)
                .await
                .map(boxed)
                .map_err(|e| e.to_string()),
        };
        match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, app = %self.app, "the app did not answer");
                Reject::AppUnreachable.response()
            }
        }
    }
}

async fn connect_app(app: SocketAddr) -> std::io::Result<TcpStream> {
    let tcp = TcpStream::connect(app).await?;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

/// The request's host: the URI's authority (HTTP/2, absolute form) or the
/// `Host` header.
fn host_of<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(HOST).and_then(|h| h.to_str().ok()))
}

impl Inbound {
    /// 401 for a bearer token that is present and invalid (RFC 6750 §3.1).
    fn unauthenticated(
        &self,
        peer: &Peer,
        access: &Access,
        why: &str,
        start: Instant,
    ) -> Response<Body> {
        self.count_decision(peer, "deny", "request-authentication", false);
        let mut resp = Reject::InvalidToken.response();
        let challenge = format!(
            "Bearer realm=\"ward\", error=\"invalid_token\", error_description=\"{}\"",
            why.replace('"', "'")
        );
        if let Ok(v) = HeaderValue::from_str(&challenge) {
            resp.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
        }
        self.count_request(peer, 401, "deny", start);
        access.inbound(&peer.id, 401, "deny", "request-authentication", Some(why));
        resp
    }

    /// Counts a decision in `ward_authz_decisions`, through the
    /// connection's kept counters.
    fn count_decision(&self, peer: &Peer, decision: &'static str, policy: &str, dry_run: bool) {
        peer.decisions.with(
            |(l, p, d)| *l == decision && p == policy && *d == dry_run,
            || {
                let labels = DecisionLabels {
                    decision,
                    policy: policy.to_string(),
                    dry_run: if dry_run { "true" } else { "false" },
                };
                let c = self.shared.metrics.decisions.get_or_create(&labels).clone();
                let decided = !dry_run && matches!(decision, "allow" | "deny");
                let t = decided.then(|| self.shared.traffic.counter(&peer.id, decision, policy));
                ((decision, labels.policy, dry_run), (c, t))
            },
            |(c, t)| {
                c.inc();
                if let Some(t) = t {
                    t.fetch_add(1, Ordering::Relaxed);
                }
            },
        );
    }

    /// Counts a request in `ward_proxy_requests`, through the connection's
    /// kept counters.
    fn count_request(&self, peer: &Peer, status: u16, decision: &'static str, start: Instant) {
        let class = status_class(status);
        let ms = start.elapsed().as_secs_f64() * 1000.0;
        peer.durations.with(
            |(c, d)| *c == class && *d == decision,
            || {
                let labels = DurationLabels {
                    direction: "inbound",
                    peer: peer.id.clone(),
                    status_class: class,
                    decision,
                };
                let h = self.shared.metrics.durations.get_or_create(&labels).clone();
                ((class, decision), h)
            },
            |h| h.observe(ms),
        );
        peer.requests.inc(
            |(s, d)| *s == status && *d == decision,
            || {
                let labels = RequestLabels {
                    direction: "inbound",
                    peer: peer.id.clone(),
                    status,
                    decision,
                };
                let c = self.shared.metrics.requests.get_or_create(&labels).clone();
                ((status, decision), c)
            },
        );
    }
}

async fn tcp_to_app<IO>(ctx: Arc<Inbound>, mut tls: IO, peer: Arc<Peer>)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let shared = &ctx.shared;
    let preq = PolicyRequest {
        namespace: &shared.cfg.namespace,
        service: &shared.cfg.service,
        destination_port: shared.inbound_port,
        source_principal: Some(&peer.id),
        source_ip: Some(peer.remote.ip()),
        http: None,
    };
    let d = shared.policies.load().evaluate(&preq);
    let label = if d.allowed() { "allow" } else { "deny" };
    shared
        .metrics
        .tcp_connections
        .get_or_create(&HandshakeLabels {
            direction: "inbound",
            result: label,
        })
        .inc();
    // A connection counts as one request in the traffic reports.
    shared
        .traffic
        .counter(&peer.id, label, d.policy())
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(target: "ward::access", direction = "inbound", protocol = "tcp", peer = %peer.id, decision = label, policy = d.policy(), "connection");
    if !d.allowed() {
        return;
    }
    let mut app = match TcpStream::connect(ctx.app).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, app = %ctx.app, "the app did not accept the connection");
            return;
        }
    };
    let _ = app.set_nodelay(true);
    // The connection lives as long as the policy in force allows it: every
    // policy or trust change judges it again, and a denial closes it.
    let mut changes = shared.policy_version.subscribe();
    changes.borrow_and_update();
    let copy = tokio::io::copy_bidirectional(&mut tls, &mut app);
    tokio::pin!(copy);
    loop {
        tokio::select! {
            _ = &mut copy => return,
            r = changes.changed() => {
                if r.is_err() {
                    return;
                }
                let d = shared.policies.load().evaluate(&preq);
                let revoked = shared.tls.trust().revoked.contains(&peer.serial);
                if !d.allowed() || revoked {
                    let decided = if revoked { REVOKED } else { d.policy() };
                    shared
                        .metrics
                        .decisions
                        .get_or_create(&DecisionLabels {
                            decision: "deny",
                            policy: decided.to_string(),
                            dry_run: "false",
                        })
                        .inc();
                    shared.traffic.counter(&peer.id, "deny", decided).fetch_add(1, Ordering::Relaxed);
                    tracing::info!(target: "ward::access", direction = "inbound", protocol = "tcp", peer = %peer.id, decision = "deny", policy = decided, revoked, "open connection closed by a policy change");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The size of what an async fn returns, from the fn's type alone.
    fn size3<A, B, C, R>(_: fn(A, B, C) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    fn size5<A, B, C, D, E, R>(_: fn(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }
    fn size6<A, B, C, D, E, F, R>(_: fn(A, B, C, D, E, F) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    #[test]
    fn a_connection_task_is_sized_by_http_not_by_a_rarer_protocol() {
        type Tls = tokio_rustls::server::TlsStream<Transport>;
        let conn = size5(handle);
        let http = size6(serve_http::<Tls>);
        let hbone = size3(serve_hbone);
        assert!(hbone < http, "HBONE's future ({hbone} bytes) is inline");
        assert!(
            conn <= http + 2048,
            "an inbound connection's future is {conn} bytes, HTTP's {http}"
        );
    }
}
