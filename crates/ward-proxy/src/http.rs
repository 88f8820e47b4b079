//! HTTP pieces both directions use: the body type, the replies the sidecar
//! makes itself, the header names it sets, access logging, and serving a
//! connection until it ends or the sidecar stops.
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::abuse::{CancelBudget, RequestGuard};
use crate::gated::Gated;
use crate::state::stopped;
use crate::strict_h1::StrictH1;

/// Every body the sidecar sends on.
pub(crate) type Body = BoxBody<Bytes, hyper::Error>;

/// A request body as the sidecar forwards it: the caller's, its bytes
/// counted.
pub(crate) type ReqBody = Counted<Incoming>;

/// A body whose data bytes are added to a counter as they pass
/// (`ward_proxy_request_bytes_total`, `ward_proxy_response_bytes_total`).
pub(crate) struct Counted<B> {
    inner: B,
    bytes: prometheus_client::metrics::counter::Counter,
}

impl<B> Counted<B> {
    pub(crate) fn new(inner: B, bytes: &prometheus_client::metrics::counter::Counter) -> Self {
        Counted {
            inner,
            bytes: bytes.clone(),
        }
    }
}

impl<B> hyper::body::Body for Counted<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.inner).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.bytes.inc_by(data.len() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// `resp` with its body's bytes counted in `bytes`.
pub(crate) fn count_response(
    resp: Response<Body>,
    bytes: &prometheus_client::metrics::counter::Counter,
) -> Response<Body> {
    resp.map(|b| Counted::new(b, bytes).boxed())
}

/// Whether sending a request failed because its body, as the caller sent
/// it, was malformed or cut short: hyper reports an error of the user's
/// body stream, caused by the error reading that body from its connection.
pub(crate) fn caller_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(h) = err.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                return std::error::Error::source(h)
                    .is_some_and(|cause| cause.downcast_ref::<hyper::Error>().is_some());
            }
        }
        next = err.source();
    }
    false
}

/// The status class of a status code, as duration histograms label it.
pub(crate) fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The verified caller's SPIFFE ID, set for the app.
pub(crate) const PEER_ID: HeaderName = HeaderName::from_static("x-ward-peer-id");
/// Envoy's `x-forwarded-client-cert`, set for the app.
pub(crate) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// Set by the outbound sidecar when the app's request was HTTP/2, so the
/// inbound side speaks HTTP/2 to its app too (gRPC needs it).
pub(crate) const ORIG_PROTO: HeaderName = HeaderName::from_static("x-ward-orig-proto");

/// A response from the app or a peer, as sent on.
pub(crate) fn boxed(r: Response<Incoming>) -> Response<Body> {
    r.map(|b| b.boxed())
}

/// An empty body.
pub(crate) fn empty() -> Body {
    Empty::new().map_err(|e: Infallible| match e {}).boxed()
}

/// Whether a request is gRPC (which needs HTTP/2 end to end).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Why the sidecar answers a request itself instead of passing on the
/// app's or the peer's answer. Bodies name no internals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reject {
    /// The authorization policy denied the request.
    Denied,
    /// The caller's certificate was revoked after its handshake.
    PeerRevoked,
    /// A bearer token was present and invalid (the caller adds the
    /// `WWW-Authenticate` challenge, which names why).
    InvalidToken,
    /// The request target could not be rewritten for the next hop.
    BadTarget,
    /// The caller's request body was malformed (bad chunked framing) or cut
    /// short: the caller's error, not the next hop's.
    BadBody,
    /// The local app did not answer.
    AppUnreachable,
    /// The upstream service has no endpoint.
    NoEndpoint,
    /// No endpoint of the upstream service could be reached over mTLS.
    UpstreamUnreachable,
    /// An upgrade (WebSocket) could not be set up.
    UpgradeFailed,
}

impl Reject {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Reject::Denied | Reject::PeerRevoked => StatusCode::FORBIDDEN,
            Reject::InvalidToken => StatusCode::UNAUTHORIZED,
            Reject::BadTarget | Reject::BadBody => StatusCode::BAD_REQUEST,
            Reject::AppUnreachable | Reject::UpstreamUnreachable | Reject::UpgradeFailed => {
                StatusCode::BAD_GATEWAY
            }
            Reject::NoEndpoint => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn body(self) -> &'static str {
        match self {
            Reject::Denied => "RBAC: access denied\n",
            Reject::PeerRevoked => "peer certificate revoked\n",
            Reject::InvalidToken => "invalid bearer token\n",
            Reject::BadTarget => "bad request target\n",
            Reject::BadBody => "malformed request body\n",
            Reject::AppUnreachable => "the application is not reachable\n",
            Reject::NoEndpoint => "no healthy endpoint for this service\n",
            Reject::UpstreamUnreachable => "the upstream service could not be reached securely\n",
            Reject::UpgradeFailed => "upgrade failed\n",
        }
    }

    /// The reply: its status and a one-line plain-text body.
    pub(crate) fn response(self) -> Response<Body> {
        let body = Full::new(Bytes::from_static(self.body().as_bytes()))
            .map_err(|e: Infallible| match e {})
            .boxed();
        let mut r = Response::new(body);
        *r.status_mut() = self.status();
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        r
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.body().trim_end())
    }
}

impl std::error::Error for Reject {}

/// What a request's access-log line needs (start, method, path), kept
/// only when the log is on.
pub(crate) struct Access(Option<(Instant, http::Method, String)>);

impl Access {
    /// `start`: when the request arrived, as its duration is measured.
    pub(crate) fn capture<B>(req: &Request<B>, start: Instant) -> Access {
        let on = tracing::enabled!(target: "ward::access", tracing::Level::INFO);
        Access(on.then(|| (start, req.method().clone(), req.uri().path().to_string())))
    }

    /// The line of a request from a peer: who, what, and what decided it.
    pub(crate) fn inbound(
        &self,
        peer: &str,
        status: u16,
        decision: &str,
        policy: &str,
        reason: Option<&str>,
    ) {
        if let Some((start, method, path)) = &self.0 {
            tracing::info!(
                target: "ward::access",
                direction = "inbound",
                peer,
                method = %method,
                path = %path,
                status,
                duration_ms = millis(start),
                decision,
                policy,
                reason,
                "request"
            );
        }
    }

    /// The line of a request from the app: which service, which endpoint.
    pub(crate) fn outbound(&self, peer: &dyn fmt::Display, endpoint: &str, status: u16) {
        if let Some((start, method, path)) = &self.0 {
            tracing::info!(
                target: "ward::access",
                direction = "outbound",
                peer = %peer,
                endpoint,
                method = %method,
                path = %path,
                status,
                duration_ms = millis(start),
                "request"
            );
        }
    }
}

/// Milliseconds since `start`, to the microsecond (0.487, not
/// 0.48670199999999997).
fn millis(start: &Instant) -> f64 {
    start.elapsed().as_micros() as f64 / 1000.0
}

/// How long a stopping sidecar keeps serving new exchanges on a
/// `ward-mux/2` connection after its GOAWAY: the peer may have sent some
/// before it heard.
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// What a connection (or stream) does when the sidecar stops.
#[derive(Clone, Copy)]
pub(crate) enum OnStop {
    /// Finishes the exchange in progress, if any, and closes.
    Now,
    /// `ward-mux/2` streams: the peer was told (GOAWAY) and starts no new
    /// exchange once it has heard, so an idle stream is kept until its
    /// next exchange (sent before the peer heard) or [`DRAIN_GRACE`], then
    /// closes after that exchange.
    AfterRequest,
}

/// The exchanges of one stream, for [`OnStop::AfterRequest`].
#[derive(Default)]
struct Activity {
    in_flight: AtomicUsize,
    stopping: AtomicBool,
    /// Notified when an exchange starts once `stopping` is set.
    start: tokio::sync::Notify,
}

impl Activity {
    fn started(&self) {
        self.in_flight.fetch_add(1, SeqCst);
        if self.stopping.load(SeqCst) {
            self.start.notify_one();
        }
    }

    fn finished(&self) {
        self.in_flight.fetch_sub(1, SeqCst);
    }

    /// Marks the sidecar stopping; true if no exchange is in progress (one
    /// that starts from here on notifies `start`).
    fn idle_once_stopping(&self) -> bool {
        self.stopping.store(true, SeqCst);
        self.in_flight.load(SeqCst) == 0
    }
}

/// Serves HTTP/1.1 or HTTP/2 on `io` (a connection or a stream) with
/// `handler` until the connection ends, `budget` trips (requests
/// cancelled en masse) or the sidecar stops, and then as `on_stop` says.
/// Requests with ambiguous HTTP/1.1 framing are refused ([`StrictH1`]).
pub(crate) async fn serve<IO, H, Fut>(
    io: IO,
    mut stop: watch::Receiver<bool>,
    budget: Arc<CancelBudget>,
    on_stop: OnStop,
    direction: &'static str,
    handler: H,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let activity = matches!(on_stop, OnStop::AfterRequest).then(|| Arc::new(Activity::default()));
    let svc = {
        let (budget, activity) = (budget.clone(), activity.clone());
        hyper::service::service_fn(move |req: Request<Incoming>| {
            let guard = RequestGuard::new(&budget);
            let activity = activity.clone();
            if let Some(a) = &activity {
                a.started();
            }
            // The handler's future holds the whole exchange (pools,
            // policy, the upstream's dispatch) and is many KiB; hyper
            // moves the service future into place on every request, so
            // it is boxed once here and a pointer is what moves.
            let resp = Box::pin(handler(req));
            async move {
                let resp = resp.await;
                guard.done();
                if let Some(a) = &activity {
                    a.finished();
                }
                Ok::<_, Infallible>(resp)
            }
        })
    };
    let builder = ward_http::server();
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(StrictH1::new(io)), svc);
    tokio::pin!(conn);
    let tripped = Gated::new(budget.tripped());
    let stopped = Gated::new(stopped(&mut stop));
    let ended = |r: Result<(), Box<dyn std::error::Error + Send + Sync>>| {
        if let Err(e) = r {
            tracing::debug!(error = %e, direction, "connection error");
        }
    };
    tokio::select! {
        _ = tripped => {}
        r = conn.as_mut() => ended(r),
        _ = stopped => {
            // OnStop::AfterRequest, idle: an exchange the peer sent before
            // it heard GOAWAY is still served (the shutdown below then
            // waits for it).
            if let Some(a) = activity.as_ref().filter(|a| a.idle_once_stopping()) {
                tokio::select! {
                    _ = a.start.notified() => {}
                    _ = tokio::time::sleep(DRAIN_GRACE) => {}
                    r = conn.as_mut() => return ended(r),
                }
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_their_status_and_a_plain_line() {
        let r = Reject::NoEndpoint.response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[CONTENT_TYPE], "text/plain");
        assert_eq!(
            Reject::UpstreamUnreachable.to_string(),
            "the upstream service could not be reached securely"
        );
        for r in [Reject::Denied, Reject::PeerRevoked] {
            assert_eq!(r.status(), StatusCode::FORBIDDEN);
        }
    }
}
