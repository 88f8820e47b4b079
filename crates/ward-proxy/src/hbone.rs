//! HBONE between sidecars: Istio ambient's tunnel, HTTP/2 CONNECT over
//! mTLS, with the h2 crate (as ztunnel does).
//!
//! Each TCP connection or HTTP/1.1 link from the app is one HTTP/2 stream
//! on a shared mTLS connection to the peer sidecar: a `CONNECT` request
//! whose `:authority` is the address dialled, answered `200`, then the
//! bytes both ways as DATA. HTTP/2 does the framing, flow control (a
//! window per stream and one per connection), PING and GOAWAY that
//! `ward-mux` does by hand.
//!
//! A sidecar accepts HBONE on its inbound port, negotiated by the ALPN
//! protocol [`ALPN`], and on the port of `--hbone` (Istio's 15008), where
//! the ALPN protocol is `h2`, as ztunnel's is. What a tunnel carries is
//! what the sidecar's app speaks: raw TCP to a `tcp` app, HTTP/1.1 (with
//! the sidecar's authorization per request) to an HTTP app.
//!
//! The opener writes into a stream as soon as it has sent the CONNECT, and
//! reads once the answer came: a new stream costs no round trip of its
//! own. A refused CONNECT fails the stream's reads and writes.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::FutureExt;
use h2::{client, server, Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[cfg(test)]
mod tests;

/// The ALPN protocol of HBONE on a sidecar's inbound port (where `h2` is
/// the app's own HTTP/2).
pub(crate) const ALPN: &[u8] = b"ward-hbone/1";
/// The ALPN protocol on the dedicated HBONE port, as Istio's.
pub(crate) const ALPN_PORT: &[u8] = b"h2";

/// Bytes of one stream that one side may have unread by the other.
const STREAM_WINDOW: u32 = 256 * 1024;
/// Bytes over all streams of a connection unread by the other side.
const CONN_WINDOW: u32 = 4 * 1024 * 1024;
/// Streams the opening side keeps open on one connection; past it, a new
/// connection.
pub(crate) const MAX_STREAMS: usize = 256;
/// Streams the accepting side lets a peer have open (twice the opener's
/// own limit: it may not yet have seen streams end).
const ACCEPT_STREAMS: u32 = 2 * MAX_STREAMS as u32;
/// The largest DATA frame written, and the most of one write sent at once.
const MAX_FRAME: u32 = 16 * 1024;
/// Header bytes a peer may send for one request.
const MAX_HEADERS: u32 = 16 * 1024;

/// The opening side of a connection.
#[derive(Clone)]
pub(crate) struct Connector {
    send: client::SendRequest<Bytes>,
    open: Arc<AtomicUsize>,
    /// Set once the connection is closed or going away.
    retired: Arc<AtomicBool>,
}

/// A CONNECT tunnel: one stream.
pub(crate) struct Tunnel {
    send: SendStream<Bytes>,
    recv: Recv,
    /// Received bytes not yet read.
    buf: Bytes,
    shut: bool,
    /// The opener's count of open streams, decremented on drop.
    open: Option<Arc<AtomicUsize>>,
    retired: Arc<AtomicBool>,
}

enum Recv {
    /// The opener, until the CONNECT's answer.
    Answer(client::ResponseFuture),
    Body(RecvStream),
    Done,
}

/// An mTLS connection's opening side, and the task that drives it (spawn
/// it; it ends when the connection does).
pub(crate) async fn connect<T>(
    io: T,
) -> io::Result<(Connector, impl Future<Output = ()> + Send + 'static)>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (send, conn) = client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADERS)
        .enable_push(false)
        .handshake(io)
        .await
        .map_err(h2_io)?;
    let retired = Arc::new(AtomicBool::new(false));
    let done = retired.clone();
    let driver = conn.map(move |r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "HBONE connection ended");
        }
        done.store(true, Ordering::Release);
    });
    Ok((
        Connector {
            send,
            open: Arc::new(AtomicUsize::new(0)),
            retired,
        },
        driver,
    ))
}

impl Connector {
    /// A new tunnel to `authority` (`host:port`), or `None` when the
    /// connection is closed, going away or full.
    pub(crate) fn open(&self, authority: &str) -> Option<Tunnel> {
        if self.is_closed() || self.open.load(Ordering::Acquire) >= MAX_STREAMS {
            return None;
        }
        let req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority)
            .body(())
            .ok()?;
        let mut send = self.send.clone();
        let (answer, stream) = match send.send_request(req, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "HBONE stream not opened");
                self.retired.store(true, Ordering::Release);
                return None;
            }
        };
        self.open.fetch_add(1, Ordering::AcqRel);
        Some(Tunnel {
            send: stream,
            recv: Recv::Answer(answer),
            buf: Bytes::new(),
            shut: false,
            open: Some(self.open.clone()),
            retired: self.retired.clone(),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }
}

/// Serves the tunnels a peer opens on `io` (the accepting side), each with
/// `tunnel(stream, authority)` on a task of its own, until the peer closes
/// or `stop` resolves; then GOAWAY, and the streams already open finish.
pub(crate) async fn serve<T, F, Fut>(io: T, stop: impl Future<Output = ()>, tunnel: F)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    F: Fn(Tunnel, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handshake = server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(MAX_HEADERS)
        .max_concurrent_streams(ACCEPT_STREAMS)
        .max_pending_accept_reset_streams(64)
        .max_local_error_reset_streams(Some(256))
        .handshake(io);
    let mut conn = match handshake.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "HBONE handshake failed");
            return;
        }
    };
    let retired = Arc::new(AtomicBool::new(false));
    tokio::pin!(stop);
    let mut stopping = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = &mut stop, if !stopping => {
                stopping = true;
                retired.store(true, Ordering::Release);
                conn.graceful_shutdown();
                continue;
            }
        };
        let (req, mut respond) = match next {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "HBONE connection ended");
                break;
            }
            None => break,
        };
        let authority = req.uri().authority().map(|a| a.to_string());
        let (true, Some(authority)) = (req.method() == Method::CONNECT, authority) else {
            // Not a tunnel: HBONE carries nothing else.
            let answer = Response::builder()
                .status(StatusCode::METHOD_NOT_ALLOWED)
                .body(())
                .expect("a valid response");
            let _ = respond.send_response(answer, true);
            continue;
        };
        let answer = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .expect("a valid response");
        let send = match respond.send_response(answer, false) {
            Ok(s) => s,
            Err(_) => continue,
        };
        let t = Tunnel {
            send,
            recv: Recv::Body(req.into_body()),
            buf: Bytes::new(),
            shut: false,
            open: None,
            retired: retired.clone(),
        };
        tokio::spawn(tunnel(t, authority));
    }
    retired.store(true, Ordering::Release);
}

impl Tunnel {
    /// A flag set once the connection no longer takes new streams: the
    /// link should not be reused for another exchange.
    pub(crate) fn retired(&self) -> Arc<AtomicBool> {
        self.retired.clone()
    }
}

impl Drop for Tunnel {
    /// A stream dropped before both halves ended is reset by h2 (CANCEL)
    /// once what was sent on it is written.
    fn drop(&mut self) {
        if let Some(open) = &self.open {
            open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

fn h2_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::Error::other("HBONE I/O"));
    }
    let kind = match e.reason() {
        Some(Reason::REFUSED_STREAM) => io::ErrorKind::ConnectionRefused,
        Some(_) => io::ErrorKind::ConnectionReset,
        None => io::ErrorKind::Other,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for Tunnel {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            match &mut this.recv {
                Recv::Answer(answer) => {
                    let resp = ready!(Pin::new(answer).poll(cx)).map_err(h2_io)?;
                    if resp.status() != StatusCode::OK {
                        this.recv = Recv::Done;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionRefused,
                            format!("the peer refused the HBONE tunnel: {}", resp.status()),
                        )));
                    }
                    this.recv = Recv::Body(resp.into_body());
                }
                Recv::Body(body) => match ready!(body.poll_data(cx)) {
                    Some(Ok(data)) => {
                        let _ = body.flow_control().release_capacity(data.len());
                        this.buf = data;
                    }
                    Some(Err(e)) => {
                        this.recv = Recv::Done;
                        return Poll::Ready(Err(h2_io(e)));
                    }
                    None => {
                        this.recv = Recv::Done;
                        return Poll::Ready(Ok(()));
                    }
                },
                Recv::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl AsyncWrite for Tunnel {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.send;
        send.reserve_capacity(buf.len().min(MAX_FRAME as usize * 4));
        loop {
            let cap = send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(h2_io)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the HBONE stream was closed",
                    )))
                }
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's task writes what was sent as soon as it can.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.shut {
            self.shut = true;
            self.send.send_data(Bytes::new(), true).map_err(h2_io)?;
        }
        Poll::Ready(Ok(()))
    }
}
