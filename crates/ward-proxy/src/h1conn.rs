//! HTTP/1.1 client connections driven by the task whose request they
//! carry.
//!
//! hyper's pooled client runs every connection in a task of its own, so a
//! request crosses from the task serving it to the connection's task and
//! back, and looks the connection up in a shared pool. Here the task that
//! serves a request drives the connection it sends it on, until the
//! response body has been read; the idle connection then waits, undriven,
//! in an [`Idle`] set until the next request takes it. On the inbound side
//! each HTTP/1.1 connection from a peer keeps one app connection this way
//! (HTTP/1.1 carries one request at a time); on the outbound side idle
//! connections to each endpoint are shared by all app connections.
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::http::Body;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An idle connection unused for this long is closed instead of reused.
const IDLE_FOR: Duration = Duration::from_secs(90);

/// What a request body must be to be sent.
pub(crate) trait ReqBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B> ReqBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

/// What a connection must run over.
pub(crate) trait Io:
    AsyncRead + AsyncWrite + Retire + Send + Sync + Unpin + 'static
{
}

impl<T> Io for T where T: AsyncRead + AsyncWrite + Retire + Send + Sync + Unpin + 'static {}

/// A transport that can be retired while idle: a stream on a shared
/// connection whose far end said it is stopping (`ward-mux/2` GOAWAY).
pub(crate) trait Retire {
    /// A flag that, once set, means no new exchange may start here.
    fn retired(&self) -> Option<Arc<AtomicBool>> {
        None
    }
}

impl Retire for tokio::net::TcpStream {}

/// Why a request was not answered.
#[derive(Debug)]
pub(crate) enum SendError<B> {
    /// No connection could be opened; the request, untouched, comes back.
    Connect(io::Error, Box<Request<B>>),
    /// The request was sent, or could not be, on an open connection.
    Http(BoxError),
}

impl<B> std::fmt::Display for SendError<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(e, _) => write!(f, "connect: {e}"),
            SendError::Http(e) => e.fmt(f),
        }
    }
}

/// Idle connections by key (an endpoint), at most `cap` of them.
pub(crate) struct Idle<B: ReqBody, T: Io> {
    kept: Arc<Mutex<Vec<Kept<B, T>>>>,
    cap: usize,
}

impl<B: ReqBody, T: Io> Clone for Idle<B, T> {
    fn clone(&self) -> Self {
        Idle {
            kept: self.kept.clone(),
            cap: self.cap,
        }
    }
}

struct Kept<B: ReqBody, T: Io> {
    key: String,
    since: Instant,
    conn: Conn<B, T>,
}

struct Conn<B: ReqBody, T: Io> {
    sender: SendRequest<B>,
    driver: Pin<Box<Connection<TokioIo<T>, B>>>,
    /// The driver has finished: the connection is closed.
    closed: bool,
    /// See [`Retire`].
    retired: Option<Arc<AtomicBool>>,
}

impl<B: ReqBody, T: Io> Conn<B, T> {
    async fn handshake(io: T) -> Result<Conn<B, T>, BoxError> {
        let retired = io.retired();
        let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        Ok(Conn {
            sender,
            driver: Box::pin(driver),
            closed: false,
            retired,
        })
    }

    fn is_retired(&self) -> bool {
        self.retired
            .as_ref()
            .is_some_and(|r| r.load(Ordering::Acquire))
    }

    /// Lets the connection make progress (read the rest of a response,
    /// notice a close).
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.driver.as_mut().poll(cx).is_ready() {
            self.closed = true;
        }
    }

    /// Drives the connection until it can take a request; false if it has
    /// closed.
    async fn ready(&mut self) -> bool {
        poll_fn(|cx| {
            self.drive(cx);
            if self.closed {
                return Poll::Ready(false);
            }
            self.sender.poll_ready(cx).map(|r| r.is_ok())
        })
        .await
    }
}

impl<B: ReqBody, T: Io> Idle<B, T> {
    pub(crate) fn new(cap: usize) -> Idle<B, T> {
        Idle {
            kept: Arc::new(Mutex::new(Vec::new())),
            cap,
        }
    }

    /// The most recently used idle connection for `key`; connections idle
    /// too long are closed on the way.
    fn take(&self, key: &str) -> Option<Conn<B, T>> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        // Kept in the order they became idle: the expired ones lead.
        let now = Instant::now();
        let expired = kept.partition_point(|k| now.duration_since(k.since) >= IDLE_FOR);
        kept.drain(..expired);
        loop {
            let i = kept.iter().rposition(|k| k.key == key)?;
            let conn = kept.remove(i).conn;
            // A retired one is dropped (closing it) and the next tried.
            if !conn.is_retired() {
                return Some(conn);
            }
        }
    }

    fn put(&self, key: String, conn: Conn<B, T>) {
        if conn.closed {
            return;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= self.cap {
            kept.remove(0);
        }
        kept.push(Kept {
            key,
            since: Instant::now(),
            conn,
        });
    }

    /// Sends `req` on an idle connection for `key`, or on a new one from
    /// `open`. A request that an idle connection closed before taking is
    /// sent again on a new one.
    pub(crate) async fn send<F, Fut>(
        &self,
        key: &str,
        open: F,
        mut req: Request<B>,
    ) -> Result<Response<Body>, SendError<B>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = io::Result<T>>,
    {
        while let Some(mut c) = self.take(key) {
            if c.ready().await {
                match self.send_on(key, c, req).await {
                    Ok(resp) => return Ok(resp),
                    Err(Failed::Sent(e)) => return Err(SendError::Http(e)),
                    Err(Failed::Unsent(back)) => {
                        req = *back;
                        break;
                    }
                }
            }
        }
        let io = match open().await {
            Ok(io) => io,
            Err(e) => return Err(SendError::Connect(e, Box::new(req))),
        };
        let mut c = Conn::handshake(io).await.map_err(SendError::Http)?;
        if !c.ready().await {
            return Err(SendError::Http("the connection closed at once".into()));
        }
        self.send_on(key, c, req).await.map_err(|e| {
            SendError::Http(match e {
                Failed::Unsent(_) => "the connection closed at once".into(),
                Failed::Sent(e) => e,
            })
        })
    }

    /// Sends `req` on `c`, driving it until the response head arrives.
    async fn send_on(
        &self,
        key: &str,
        mut c: Conn<B, T>,
        req: Request<B>,
    ) -> Result<Response<Body>, Failed<B>> {
        let mut sent = std::pin::pin!(c.sender.try_send_request(req));
        let result = poll_fn(|cx| {
            c.drive(cx);
            sent.as_mut().poll(cx)
        })
        .await;
        match result {
            Ok(resp) => {
                let (idle, key) = (self.clone(), key.to_string());
                Ok(resp.map(|body| {
                    Driven {
                        body,
                        conn: Some(c),
                        idle,
                        key,
                    }
                    .boxed()
                }))
            }
            Err(mut e) => match e.take_message() {
                Some(back) => Err(Failed::Unsent(Box::new(back))),
                None => Err(Failed::Sent(e.into_error().into())),
            },
        }
    }
}

/// Why [`Idle::send_on`] failed.
enum Failed<B> {
    /// The connection closed before taking the request, given back.
    Unsent(Box<Request<B>>),
    /// The request was taken, and failed.
    Sent(BoxError),
}

/// A response body; polling it drives its connection, which becomes idle
/// again once the body has been read to the end.
struct Driven<B: ReqBody, T: Io> {
    body: Incoming,
    conn: Option<Conn<B, T>>,
    idle: Idle<B, T>,
    key: String,
}

impl<B: ReqBody, T: Io> hyper::body::Body for Driven<B, T> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(c) = this.conn.as_mut() {
            c.drive(cx);
        }
        Pin::new(&mut this.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: ReqBody, T: Io> Drop for Driven<B, T> {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response:
        // it is closed instead of kept.
        if let Some(c) = self.conn.take() {
            if self.body.is_end_stream() {
                self.idle.put(std::mem::take(&mut self.key), c);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{Empty, Full};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// An app that counts its connections, answers with the path, closes
    /// after `/close`, and sends 1 MiB for `/big`.
    async fn app() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let path = req.uri().path().to_string();
                    let body = if path == "/big" {
                        Bytes::from(vec![b'x'; 1 << 20])
                    } else {
                        Bytes::from(path.clone())
                    };
                    let mut resp = Response::new(Full::new(body));
                    if path == "/close" {
                        resp.headers_mut()
                            .insert(http::header::CONNECTION, "close".parse().unwrap());
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc),
                );
            }
        });
        (addr, accepted)
    }

    type Conns = Idle<Empty<Bytes>, TcpStream>;

    async fn get(idle: &Conns, addr: SocketAddr, path: &str) -> Bytes {
        let req = Request::get(path).body(Empty::new()).unwrap();
        let resp = idle
            .send("app", || TcpStream::connect(addr), req)
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn connections_are_kept_and_reopened_when_the_app_closes_them() {
        let (addr, accepted) = app().await;
        let idle = Conns::new(1);
        for path in ["/a", "/b", "/c"] {
            assert_eq!(get(&idle, addr, path).await, path.as_bytes());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");

        assert_eq!(get(&idle, addr, "/close").await, "/close".as_bytes());
        assert_eq!(get(&idle, addr, "/d").await, "/d".as_bytes());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "reopened after a close");

        // A response dropped half read leaves its connection unusable.
        let req = Request::get("/big").body(Empty::new()).unwrap();
        let resp = idle
            .send("app", || TcpStream::connect(addr), req)
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20));
        drop(body);
        assert_eq!(get(&idle, addr, "/e").await, "/e".as_bytes());
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(get(&idle, addr, "/big").await.len(), 1 << 20);
        assert_eq!(get(&idle, addr, "/f").await, "/f".as_bytes());
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn concurrent_requests_each_get_a_connection_and_idle_ones_are_capped() {
        let (addr, accepted) = app().await;
        let idle = Conns::new(2);
        let reqs = (0..4).map(|i| {
            let req = Request::get(format!("/{i}")).body(Empty::new()).unwrap();
            idle.send("app", || TcpStream::connect(addr), req)
        });
        let resps = futures_util::future::join_all(reqs).await;
        for r in resps {
            r.unwrap().into_body().collect().await.unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        assert_eq!(idle.kept.lock().unwrap().len(), 2);
        // Keys keep connections apart.
        get(&idle, addr, "/x").await;
        assert_eq!(accepted.load(Ordering::SeqCst), 4);
        let req = Request::get("/y").body(Empty::new()).unwrap();
        idle.send("other", || TcpStream::connect(addr), req)
            .await
            .unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn an_app_that_is_gone_gives_the_request_back() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let idle = Conns::new(1);
        let req = Request::get("/again").body(Empty::new()).unwrap();
        match idle.send("app", || TcpStream::connect(addr), req).await {
            Err(SendError::Connect(_, back)) => assert_eq!(back.uri().path(), "/again"),
            other => panic!("{:?}", other.map(|r| r.status())),
        }
    }
}
