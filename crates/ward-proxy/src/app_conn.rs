//! One HTTP/1.1 connection to the app for each inbound HTTP/1.1
//! connection, driven by the task that serves the inbound connection.
//!
//! HTTP/1.1 carries one request at a time, so an inbound HTTP/1.1
//! connection needs at most one app connection. Driving it in the same
//! task, instead of through a shared pool whose connections run in tasks
//! of their own, spares every request a pool lookup and two hand-offs
//! between tasks. The app connection is opened on the first request, kept
//! while the inbound connection lives, and opened again if the app closes
//! it; HTTP/2 requests still use the pooled client.
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::http1::{Connection, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::inbound::Body;

/// The app connection of one inbound connection, when it is idle, for
/// requests with bodies of type `B`.
pub(crate) struct Slot<B: ReqBody = Incoming>(Arc<Mutex<Option<AppConn<B>>>>);

impl<B: ReqBody> Default for Slot<B> {
    fn default() -> Self {
        Slot(Arc::new(Mutex::new(None)))
    }
}

impl<B: ReqBody> Clone for Slot<B> {
    fn clone(&self) -> Self {
        Slot(self.0.clone())
    }
}

/// What a request body must be to go to the app.
pub(crate) trait ReqBody:
    hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

impl<B> ReqBody for B where
    B: hyper::body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + Unpin + 'static
{
}

struct AppConn<B: ReqBody> {
    sender: SendRequest<B>,
    conn: Pin<Box<Connection<TokioIo<TcpStream>, B>>>,
    /// The connection future has finished: the app closed the connection.
    closed: bool,
}

impl<B: ReqBody> AppConn<B> {
    async fn open(addr: SocketAddr) -> io::Result<AppConn<B>> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(io::Error::other)?;
        Ok(AppConn {
            sender,
            conn: Box::pin(conn),
            closed: false,
        })
    }

    /// Lets the connection make progress (read the rest of a response,
    /// notice a close).
    fn drive(&mut self, cx: &mut Context<'_>) {
        if !self.closed && self.conn.as_mut().poll(cx).is_ready() {
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

impl<B: ReqBody> Slot<B> {
    fn put(&self, app: AppConn<B>) {
        if !app.closed {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(app);
        }
    }

    fn take(&self) -> Option<AppConn<B>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Sends `req` to the app at `addr` on this slot's connection. A
    /// request that a kept connection closed before taking is sent again
    /// on a new one.
    pub(crate) async fn send(
        &self,
        addr: SocketAddr,
        mut req: Request<B>,
    ) -> Result<Response<Body>, BoxError> {
        let mut kept = self.take();
        if let Some(app) = kept.as_mut() {
            if !app.ready().await {
                kept = None;
            }
        }
        loop {
            let fresh = kept.is_none();
            let mut app = match kept.take() {
                Some(app) => app,
                None => {
                    let mut app = AppConn::open(addr).await?;
                    if !app.ready().await {
                        return Err("the app closed the connection".into());
                    }
                    app
                }
            };
            let mut sent = std::pin::pin!(app.sender.try_send_request(req));
            let result = poll_fn(|cx| {
                app.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(resp) => {
                    let slot = self.clone();
                    return Ok(resp.map(|body| {
                        Driven {
                            body,
                            app: Some(app),
                            slot,
                        }
                        .boxed()
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if !fresh => req = back,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }
}

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body from the app; polling it drives the app connection,
/// which goes back to its slot once the body has been read to the end.
struct Driven<B: ReqBody> {
    body: Incoming,
    app: Option<AppConn<B>>,
    slot: Slot<B>,
}

impl<B: ReqBody> hyper::body::Body for Driven<B> {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(app) = this.app.as_mut() {
            app.drive(cx);
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

impl<B: ReqBody> Drop for Driven<B> {
    fn drop(&mut self) {
        // A body dropped before its end leaves the connection mid-response:
        // it is closed instead of kept.
        if let Some(app) = self.app.take() {
            if self.body.is_end_stream() {
                self.slot.put(app);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::{Empty, Full};
    use tokio::net::TcpListener;

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

    async fn get(slot: &Slot<Empty<Bytes>>, addr: SocketAddr, path: &str) -> Bytes {
        let req = Request::get(path).body(Empty::new()).unwrap();
        let resp = slot.send(addr, req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn one_connection_kept_and_reopened_when_the_app_closes_it() {
        let (addr, accepted) = app().await;
        let slot = Slot::<Empty<Bytes>>::default();
        for path in ["/a", "/b", "/c"] {
            assert_eq!(get(&slot, addr, path).await, path.as_bytes());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");

        assert_eq!(get(&slot, addr, "/close").await, "/close".as_bytes());
        assert_eq!(get(&slot, addr, "/d").await, "/d".as_bytes());
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "reopened after a close");

        // A response dropped half read leaves its connection unusable.
        let req = Request::get("/big").body(Empty::new()).unwrap();
        let resp = slot.send(addr, req).await.unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20));
        drop(body);
        assert_eq!(get(&slot, addr, "/e").await, "/e".as_bytes());
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        assert_eq!(get(&slot, addr, "/big").await.len(), 1 << 20);
        assert_eq!(get(&slot, addr, "/f").await, "/f".as_bytes());
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_app_that_is_gone_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let slot = Slot::<Empty<Bytes>>::default();
        let req = Request::get("/").body(Empty::new()).unwrap();
        assert!(slot.send(addr, req).await.is_err());
    }
}
