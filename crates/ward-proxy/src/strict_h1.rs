//! A strict check of HTTP/1.1 request framing in front of hyper's parser.
//!
//! hyper follows RFC 9112 §6.1 for a request carrying both
//! `Content-Length` and `Transfer-Encoding`: chunked wins and the
//! connection closes after the response. A proxy should refuse such a
//! request outright (it is the classic request-smuggling shape), as Envoy
//! does, so this reader follows message boundaries on the way in and turns
//! such a request head into one hyper answers with `400 Bad Request`.
//! Everything else passes through unchanged, byte for byte.
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::future::Future;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, ReadBuf};

/// Heads larger than this are passed to hyper as they are (it answers 431).
const MAX_HEAD: usize = 64 * 1024 + 1024;
const MAX_LINE: usize = 4096;
/// A request head must arrive within this time of its first byte.
const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd,
    Trailers,
    /// HTTP/2, an upgraded connection, or something hyper must reject.
    Passthrough,
}

/// Bytes read from the connection at a time, and the least room a read
/// is given.
const READ_SIZE: usize = 16 * 1024;
const READ_MIN: usize = 1024;

pub(crate) struct StrictH1<IO> {
    io: IO,
    state: State,
    /// Read from the socket, not yet checked.
    pending: BytesMut,
    /// Checked, ready for hyper.
    ready: BytesMut,
    eof: bool,
    /// How far `pending` is known not to hold the end of a request head:
    /// bytes of a head that trickles in are searched once, not again on
    /// every read.
    scanned: usize,
    /// Running while a request head is incomplete.
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<IO> StrictH1<IO> {
    pub(crate) fn new(io: IO) -> StrictH1<IO> {
        StrictH1 {
            io,
            state: State::Head,
            pending: BytesMut::new(),
            ready: BytesMut::new(),
            eof: false,
            scanned: 0,
            head_deadline: None,
        }
    }

    fn release(&mut self, n: usize) {
        // Copied, so that both buffers stay unshared and are refilled from
        // their start: a connection keeps touching the same few pages.
        let chunk = self.pending.split_to(n);
        self.ready.extend_from_slice(&chunk);
        self.scanned = 0;
    }

    /// Moves what can be checked from `pending` to `ready`; false when more
    /// bytes are needed.
    fn step(&mut self) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        match self.state {
            State::Passthrough => {
                let n = self.pending.len();
                self.release(n);
                true
            }
            State::Head => self.head(),
            State::Body(left) => {
                let n = (left.min(self.pending.len() as u64)) as usize;
                self.release(n);
                self.state = if left == n as u64 {
                    State::Head
                } else {
                    State::Body(left - n as u64)
                };
                true
            }
            State::ChunkSize => match find(&self.pending, b"\r\n") {
                Some(i) => {
                    let line = &self.pending[..i];
                    let hex = line.split(|b| *b == b';').next().unwrap_or_default();
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
                    self.state = match size {
                        Some(0) => State::Trailers,
                        Some(n) => State::ChunkData(n),
                        None => State::Passthrough,
                    };
                    self.release(i + 2);
                    true
                }
                None => self.overlong(MAX_LINE),
            },
            State::ChunkData(left) => {
                let n = (left.min(self.pending.len() as u64)) as usize;
                self.release(n);
                self.state = if left == n as u64 {
                    State::ChunkEnd
                } else {
                    State::ChunkData(left - n as u64)
                };
                true
            }
            State::ChunkEnd => {
                if self.pending.len() < 2 {
                    return false;
                }
                self.state = if &self.pending[..2] == b"\r\n" {
                    State::ChunkSize
                } else {
                    State::Passthrough
                };
                self.release(2);
                true
            }
            State::Trailers => match find(&self.pending, b"\r\n") {
                Some(0) => {
                    self.release(2);
                    self.state = State::Head;
                    true
                }
                Some(i) => {
                    self.release(i + 2);
                    true
                }
                None => self.overlong(MAX_HEAD),
            },
        }
    }

    /// Without a line end after `limit` bytes, let hyper judge the rest.
    fn overlong(&mut self, limit: usize) -> bool {
        if self.pending.len() > limit {
            self.state = State::Passthrough;
            return true;
        }
        false
    }

    fn head(&mut self) -> bool {
        if self.pending.starts_with(b"PRI * HTTP/2.0")
            || (self.pending.len() < 14 && b"PRI * HTTP/2.0".starts_with(&self.pending))
        {
            if self.pending.len() < 14 {
                return false;
            }
            self.state = State::Passthrough;
            return true;
        }
        // Empty lines between requests are allowed (RFC 9112 §2.2).
        while self.pending.starts_with(b"\r\n") {
            self.release(2);
        }
        // The end may straddle what was searched and what is new.
        let from = self.scanned.saturating_sub(3);
        let Some(end) = find(&self.pending[from..], b"\r\n\r\n").map(|i| from + i) else {
            self.scanned = self.pending.len();
            return self.overlong(MAX_HEAD);
        };
        let head_len = end + 4;
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut req = httparse::Request::new(&mut headers);
        let parsed = req.parse(&self.pending[..head_len]);
        let mut cl = false;
        let mut te = None::<bool>;
        let mut content_length = 0u64;
        let mut upgrade = req.method == Some("CONNECT");
        match parsed {
            Ok(httparse::Status::Complete(_)) => {
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        cl = true;
                        content_length = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        let chunked = h
                            .value
                            .rsplit(|b| *b == b',')
                            .next()
                            .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"chunked"));
                        te = Some(te.unwrap_or(true) && chunked);
                    } else if h.name.eq_ignore_ascii_case("upgrade") {
                        upgrade = true;
                    }
                }
            }
            // Malformed or too many headers: hyper answers it.
            _ => {
                self.state = State::Passthrough;
                return true;
            }
        }
        if cl && te.is_some() {
            // Replace the head with one hyper refuses with 400, and close.
            let _ = self.pending.split_to(head_len);
            self.pending.clear();
            self.scanned = 0;
            self.ready
                .extend_from_slice(b"INVALID\x01 / HTTP/1.1\r\n\r\n");
            self.state = State::Passthrough;
            self.eof = true;
            return true;
        }
        self.release(head_len);
        self.state = if upgrade {
            State::Passthrough
        } else if te == Some(true) {
            State::ChunkSize
        } else if te == Some(false) {
            State::Passthrough
        } else if content_length > 0 {
            State::Body(content_length)
        } else {
            State::Head
        };
        true
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

impl<IO: AsyncRead + Unpin> AsyncRead for StrictH1<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Passthrough && this.pending.is_empty() && !this.eof {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            if this.step() {
                continue;
            }
            if this.eof {
                // Unfinished input at EOF goes to hyper as it is.
                let n = this.pending.len();
                this.release(n);
                if this.ready.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // Part of a head is here and the rest is not: a slow client
            // gets HEAD_TIMEOUT from its first byte, like hyper's own
            // header_read_timeout (which cannot see bytes held here).
            if this.state == State::Head && !this.pending.is_empty() {
                let deadline = this
                    .head_deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(HEAD_TIMEOUT)));
                if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )));
                }
            } else {
                this.head_deadline = None;
            }
            // Straight into `pending`'s spare room, which is not zeroed
            // first.
            if this.pending.capacity() - this.pending.len() < READ_MIN {
                this.pending.reserve(READ_SIZE);
            }
            match tokio_util::io::poll_read_buf(Pin::new(&mut this.io), cx, &mut this.pending) {
                Poll::Ready(Ok(0)) => this.eof = true,
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

write_through!(StrictH1);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn through(input: &[u8], split: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let input = input.to_vec();
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for chunk in input.chunks(split.max(1)) {
                client.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            client.shutdown().await.unwrap();
            client
        });
        let mut s = StrictH1::new(server);
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.unwrap();
        drop(writer.await.unwrap());
        out
    }

    #[tokio::test]
    async fn passes_valid_traffic_unchanged() {
        let cases: Vec<&[u8]> = vec![
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\n\r\n",
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET / HTTP/1.1\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00binary",
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\x81\x05hello raw frames",
            b"\r\nGET / HTTP/1.1\r\n\r\n",
        ];
        for c in cases {
            for split in [1, 3, 7, 1 << 16] {
                assert_eq!(
                    through(c, split).await,
                    c,
                    "{:?} split {split}",
                    String::from_utf8_lossy(c)
                );
            }
        }
    }

    #[tokio::test]
    async fn refuses_content_length_with_transfer_encoding() {
        for c in [
            &b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 1\r\n\r\nx",
        ] {
            for split in [1, 2, 5, 1 << 16] {
                let out = through(c, split).await;
                let s = String::from_utf8_lossy(&out);
                assert!(s.contains("INVALID\u{1}"), "split {split}: {s}");
                assert!(!s.contains("smuggled"), "split {split}: {s}");
            }
        }
    }

    #[test]
    fn a_head_arriving_a_byte_at_a_time_is_searched_once() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789\r\n\r\n";
        let mut s = StrictH1::new(());
        for (i, b) in head.iter().enumerate() {
            s.pending.extend_from_slice(&[*b]);
            let moved = s.step();
            if i + 1 < head.len() {
                assert!(!moved && s.ready.is_empty(), "byte {i}");
                // The next search starts at most 3 bytes back.
                assert_eq!(s.scanned, i + 1);
            } else {
                assert!(moved);
            }
        }
        assert_eq!(&s.ready[..], &head[..]);
        assert_eq!(s.scanned, 0);
    }
}
