//! The TCP connections between sidecars.
//!
//! # Dead peers
//!
//! Idle connections between sidecars are kept for reuse, so one whose
//! peer vanished without closing it (a host powered off, a network
//! partition) must be noticed before a request is sent on it. As Linkerd
//! does, a connection idle for [`KEEPALIVE_IDLE`] gets TCP keep-alive
//! probes, and closes when several in a row go unanswered (30 s in all).
//! A peer that vanishes while data is unacknowledged is left to TCP's own
//! retransmission limit: `TCP_USER_TIMEOUT` would bound that, but it also
//! closes a healthy connection whose reader pauses (a zero window) for as
//! long, which a proxied TCP stream may legitimately do.
//!
//! # Large reads under TLS
//!
//! rustls reads ciphertext at most 4 KiB at a time (`read_tls`), so a
//! 16 KiB record costs four `recvfrom` calls and a batch of them between
//! two sidecars dozens. [`ReadAhead`] reads the socket up to [`CHUNK`] at a
//! time and hands rustls its 4 KiB from memory, once a read has shown
//! that more is waiting (it filled what was asked): small exchanges are
//! read straight into rustls's buffer, with no copy. The buffer is held
//! only while it has bytes: an idle connection keeps none.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// ALPN protocol between sidecars for HTTP/2 (and gRPC).
pub(crate) const ALPN_H2: &[u8] = b"h2";
/// ALPN protocol between sidecars for raw TCP.
pub(crate) const ALPN_TCP: &[u8] = b"ward-tcp/1";

/// Idle time before the first keep-alive probe.
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 4;

/// Bytes asked of the socket per read.
pub(crate) const CHUNK: usize = 32 * 1024;

/// The transport under TLS between sidecars.
pub(crate) type Transport = ReadAhead<TcpStream>;

/// Whether a connection accepted from a listener starts with the
/// listener's TCP options. Linux builds each accepted socket as a copy of
/// the listening one (`TCP_NODELAY`, `SO_KEEPALIVE` and the keep-alive
/// timings included, and arms the keep-alive timer), which saves five
/// `setsockopt` calls per accepted connection; elsewhere they are set
/// again on each connection.
pub(crate) const INHERITED: bool = cfg!(target_os = "linux");

/// Sets `TCP_NODELAY` and the keep-alive options of the module
/// documentation. Best effort: a socket that refuses one still carries
/// traffic.
fn set_options(sock: socket2::SockRef<'_>) {
    let _ = sock.set_tcp_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "TCP keep-alive options not set");
    }
}

/// A connection to another sidecar, set up as the module documentation
/// says.
pub(crate) fn mesh(tcp: TcpStream) -> Transport {
    set_options(socket2::SockRef::from(&tcp));
    ReadAhead::new(tcp)
}

/// Gives the listener for other sidecars the options of [`mesh`], for the
/// connections it accepts to start with (see [`INHERITED`]).
pub(crate) fn mesh_listener(l: &TcpListener) {
    set_options(socket2::SockRef::from(l));
}

/// Gives the listener for apps `TCP_NODELAY`, for the connections it
/// accepts to start with (see [`INHERITED`]).
pub(crate) fn app_listener(l: &TcpListener) {
    let _ = socket2::SockRef::from(l).set_tcp_nodelay(true);
}

/// A connection from an app, accepted from a listener set up by
/// [`app_listener`].
pub(crate) fn app_accepted(tcp: &TcpStream) {
    if !INHERITED {
        let _ = tcp.set_nodelay(true);
    }
}

/// A connection from another sidecar, accepted from a listener set up by
/// [`mesh_listener`].
pub(crate) fn mesh_accepted(tcp: TcpStream) -> Transport {
    if INHERITED {
        ReadAhead::new(tcp)
    } else {
        mesh(tcp)
    }
}

/// A transport whose reads are batched (see the module documentation).
pub(crate) struct ReadAhead<T> {
    io: T,
    buf: BytesMut,
    /// The last read filled what it was given: read ahead next time.
    full: bool,
}

impl<T> ReadAhead<T> {
    pub(crate) fn new(io: T) -> ReadAhead<T> {
        ReadAhead {
            io,
            buf: BytesMut::new(),
            full: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ReadAhead<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.buf.is_empty() {
            if !this.full || out.remaining() >= CHUNK {
                let asked = out.remaining();
                let before = out.filled().len();
                std::task::ready!(Pin::new(&mut this.io).poll_read(cx, out))?;
                this.full = asked > 0 && out.filled().len() - before == asked;
                return Poll::Ready(Ok(()));
            }
            this.buf.reserve(CHUNK);
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf) {
                Poll::Ready(Ok(n)) if n > 0 => this.full = n >= CHUNK,
                r => {
                    // Nothing to hold: end of stream, an error, or waiting.
                    this.buf = BytesMut::new();
                    this.full = false;
                    return r.map_ok(|_| ());
                }
            }
        }
        let n = this.buf.len().min(out.remaining());
        out.put_slice(&this.buf[..n]);
        this.buf.advance(n);
        if this.buf.is_empty() {
            this.buf = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

write_through!(ReadAhead);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Counts the reads that reach the transport.
    struct Counted<T>(T, Arc<AtomicUsize>);

    impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.0).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn small_reads_are_served_from_one_large_read() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        tx.write_all(&data).await.unwrap();
        drop(tx);
        let reads = Arc::new(AtomicUsize::new(0));
        let mut r = ReadAhead::new(Counted(rx, reads.clone()));
        let mut got = Vec::new();
        let mut small = [0u8; 4096];
        loop {
            let n = r.read(&mut small).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&small[..n]);
        }
        assert_eq!(got, data);
        // 100,000 bytes in 4 KiB reads: 25 for the reader; for the
        // transport the first (which shows more is waiting), then 32 KiB
        // at a time, and the end.
        assert!(reads.load(Ordering::Relaxed) <= 6, "{reads:?}");
        assert_eq!(r.buf.capacity(), 0, "a drained reader holds no buffer");
    }

    #[tokio::test]
    async fn mesh_connections_probe_idle_peers() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        mesh_listener(&l);
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        for t in [mesh(c), mesh_accepted(s)] {
            // Read back from the kernel.
            let sock = socket2::SockRef::from(&t.io);
            assert!(t.io.nodelay().unwrap());
            assert!(sock.keepalive().unwrap());
            assert_eq!(sock.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
            assert_eq!(sock.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(sock.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        }
    }

    #[tokio::test]
    async fn short_reads_go_straight_through() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut r = ReadAhead::new(rx);
        let mut small = [0u8; 4096];
        for i in 0..3u8 {
            tx.write_all(&[i; 1000]).await.unwrap();
            assert_eq!(r.read(&mut small).await.unwrap(), 1000);
            assert_eq!(small[999], i);
            assert!(!r.full);
            assert_eq!(r.buf.capacity(), 0);
        }
    }

    #[tokio::test]
    async fn large_reads_go_straight_through() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        tx.write_all(&[7u8; 50_000]).await.unwrap();
        let mut r = ReadAhead::new(rx);
        let mut big = vec![0u8; 64 * 1024];
        let n = r.read(&mut big).await.unwrap();
        assert_eq!(n, 50_000);
        assert_eq!(r.buf.capacity(), 0);
        // Waiting for data holds no buffer either.
        let waker = std::task::Waker::noop();
        let mut w = [0u8; 2];
        let pending =
            Pin::new(&mut r).poll_read(&mut Context::from_waker(waker), &mut ReadBuf::new(&mut w));
        assert!(pending.is_pending());
        assert_eq!(r.buf.capacity(), 0);
        tx.write_all(b"more").await.unwrap();
        assert_eq!(r.read(&mut w).await.unwrap(), 2);
        assert_eq!(&w, b"mo");
        assert_eq!(r.read(&mut w).await.unwrap(), 2);
        assert_eq!(&w, b"re");
    }
}
