//! gRPC clients built on grpc-core (Python's grpcio among them, so
//! py-spiffe) send the %-encoded socket path as the `:authority` of a
//! request over a unix socket. h2, which hyper and tonic use, refuses such
//! a request as malformed (hyperium/h2#487). This sits between the socket
//! and the HTTP/2 server and, in each request's header block, replaces an
//! `:authority` that is not a valid authority with `localhost` (what
//! grpc-go and older grpc-core send). Everything else passes through
//! unchanged; header blocks are decoded and encoded again with loona-hpack,
//! one decoder and one encoder per connection, as HPACK's state requires.
//!
//! A client sends one `:authority` on all of a channel's requests, so a
//! connection whose first header block needs no change (tonic, grpc-go,
//! go-spiffe) is passed through untouched from there on: nothing has been
//! re-encoded yet, so the server's HPACK state is still the client's, and
//! those connections pay no decoding at all (loona-hpack builds its Huffman
//! table for every Huffman-coded string it decodes).
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, BytesMut};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, ReadBuf};

const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE's
/// initial value), for the frames written here.
const MAX_FRAME: usize = 16_384;
/// A frame, or a header block over CONTINUATION frames, larger than this
/// ends the connection.
const MAX_BLOCK: usize = 256 * 1024;
/// Bytes asked of the socket per read.
const CHUNK: usize = 8 * 1024;

/// A client connection whose requests' `:authority` is made acceptable as
/// the HTTP/2 server reads it; writes go straight through. Its buffers
/// are held only while they have bytes, so an idle connection keeps none.
pub(crate) struct Rewriting<T> {
    io: T,
    /// Bytes read from the client, not yet a whole frame.
    raw: BytesMut,
    /// Bytes ready for the server.
    out: BytesMut,
    state: State,
    /// Held until the connection is known to need no rewriting.
    hpack: Option<Box<Hpack>>,
    /// Whether a header block has been re-encoded: from then on every one
    /// must be, to keep the server's HPACK state our encoder's.
    rewrote: bool,
    pending: Option<Pending>,
    eof: bool,
}

struct Hpack {
    decoder: Decoder<'static>,
    encoder: Encoder<'static>,
}

#[derive(PartialEq)]
enum State {
    Preface,
    Frames,
    /// Passed through unchanged: not HTTP/2 with prior knowledge (for the
    /// server to refuse), or a connection whose first request needed no
    /// rewrite.
    Opaque,
}

/// A header block being collected over HEADERS and CONTINUATION frames.
struct Pending {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl<T> Rewriting<T> {
    pub(crate) fn new(io: T) -> Rewriting<T> {
        Rewriting {
            io,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            state: State::Preface,
            hpack: Some(Box::new(Hpack {
                decoder: Decoder::new(),
                encoder: Encoder::new(),
            })),
            rewrote: false,
            pending: None,
            eof: false,
        }
    }

    /// Moves every whole frame of `raw` to `out`, rewritten.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.state {
                State::Opaque => {
                    let all = self.raw.split();
                    self.out.extend_from_slice(&all);
                    return Ok(());
                }
                State::Preface => {
                    if self.raw.len() < PREFACE.len() {
                        if !PREFACE.starts_with(&self.raw) {
                            self.state = State::Opaque;
                        }
                        return Ok(());
                    }
                    self.state = if &self.raw[..PREFACE.len()] == PREFACE {
                        State::Frames
                    } else {
                        State::Opaque
                    };
                    if self.state == State::Frames {
                        let p = self.raw.split_to(PREFACE.len());
                        self.out.extend_from_slice(&p);
                    }
                }
                State::Frames => {
                    if self.raw.len() < 9 {
                        return Ok(());
                    }
                    let len =
                        u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
                    if len > MAX_BLOCK {
                        return Err(io::Error::other("HTTP/2 frame too large"));
                    }
                    if self.raw.len() < 9 + len {
                        self.raw.reserve(9 + len - self.raw.len());
                        return Ok(());
                    }
                    let frame = self.raw.split_to(9 + len);
                    self.frame(&frame)?;
                }
            }
        }
    }

    fn frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let (head, payload) = frame.split_at(9);
        let (kind, flags) = (head[3], head[4]);
        let stream = [head[5], head[6], head[7], head[8]];
        match (kind, self.pending.as_mut()) {
            (HEADERS, None) => {
                let mut body = payload;
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let (&n, rest) = body.split_first().ok_or_else(malformed)?;
                    pad = n as usize;
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let p = body.get(..5).ok_or_else(malformed)?;
                    priority = Some([p[0], p[1], p[2], p[3], p[4]]);
                    body = &body[5..];
                }
                let end = body.len().checked_sub(pad).ok_or_else(malformed)?;
                self.pending = Some(Pending {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    block: body[..end].to_vec(),
                });
            }
            (CONTINUATION, Some(p)) if p.stream == stream => {
                p.block.extend_from_slice(payload);
                if p.block.len() > MAX_BLOCK {
                    return Err(io::Error::other("header block too large"));
                }
            }
            (_, Some(_)) => return Err(malformed()),
            _ => {
                self.out.extend_from_slice(frame);
                return Ok(());
            }
        }
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        // Both are there: a header block was just collected, and frames
        // are read only while the connection is being rewritten, which
        // is while its HPACK state is held.
        let (Some(p), Some(hpack)) = (self.pending.take(), self.hpack.as_mut()) else {
            return Err(io::Error::other(
                "a header block outside a rewritten connection",
            ));
        };
        let headers = hpack
            .decoder
            .decode(&p.block)
            .map_err(|e| io::Error::other(format!("HPACK: {e}")))?;
        let bad =
            |n: &[u8], v: &[u8]| n == b":authority" && http::uri::Authority::try_from(v).is_err();
        if !self.rewrote && !headers.iter().any(|(n, v)| bad(n, v)) {
            write_block(&mut self.out, &p, &p.block);
            self.state = State::Opaque;
            self.hpack = None;
            return Ok(());
        }
        self.rewrote = true;
        let block = hpack.encoder.encode(headers.iter().map(|(n, v)| {
            let v: &[u8] = if bad(n, v) { b"localhost" } else { v };
            (&n[..], v)
        }));
        write_block(&mut self.out, &p, &block);
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewriting<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                if this.out.is_empty() {
                    this.out = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            if this.state == State::Opaque && this.raw.is_empty() {
                return Pin::new(&mut this.io).poll_read(cx, buf);
            }
            // Read on the stack: a connection waiting for its client's next
            // frame (most of a Workload API connection's life) then holds
            // no buffer at all.
            let mut chunk = [0u8; CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.eof = true;
                continue;
            }
            this.raw.extend_from_slice(read.filled());
            this.process()?;
            if this.raw.is_empty() {
                this.raw = BytesMut::new();
            }
        }
    }
}

write_through!(Rewriting);

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP/2 HEADERS frame")
}

/// A header block as HEADERS (and CONTINUATION) frames of at most
/// [`MAX_FRAME`] bytes, appended to `out`.
fn write_block(out: &mut BytesMut, p: &Pending, block: &[u8]) {
    let prio = p.priority.map_or(0, |_| 5);
    let first = block.len().min(MAX_FRAME - prio);
    let mut flags = if p.end_stream { END_STREAM } else { 0 };
    if p.priority.is_some() {
        flags |= PRIORITY;
    }
    if first == block.len() {
        flags |= END_HEADERS;
    }
    frame_head(out, prio + first, HEADERS, flags, p.stream);
    if let Some(pr) = p.priority {
        out.extend_from_slice(&pr);
    }
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        frame_head(out, n, CONTINUATION, flags, p.stream);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

fn frame_head(out: &mut impl Extend<u8>, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    let l = (len as u32).to_be_bytes();
    out.extend([l[1], l[2], l[3], kind, flags]);
    out.extend(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// What the server reads, fed `input` a few bytes at a time.
    async fn read_all(input: &[u8]) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(7);
        let input = input.to_vec();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            client.write_all(&input).await.unwrap();
        });
        let mut r = Rewriting::new(server);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn a_path_authority_becomes_localhost_and_the_rest_passes() {
        let mut enc = Encoder::new();
        let block = enc.encode([
            (&b":method"[..], &b"POST"[..]),
            (b":authority", b"tmp%2Fward%2Fapi.sock"),
            (b":path", b"/SpiffeWorkloadAPI/FetchJWTSVID"),
            (b"workload.spiffe.io", b"true"),
        ]);
        let mut input = PREFACE.to_vec();
        // SETTINGS, then HEADERS split over a CONTINUATION, then DATA.
        frame_head(&mut input, 0, 0x4, 0, [0; 4]);
        let (a, b) = block.split_at(5);
        frame_head(&mut input, a.len(), HEADERS, 0, [0, 0, 0, 1]);
        input.extend_from_slice(a);
        frame_head(&mut input, b.len(), CONTINUATION, END_HEADERS, [0, 0, 0, 1]);
        input.extend_from_slice(b);
        frame_head(&mut input, 3, 0x0, END_STREAM, [0, 0, 0, 1]);
        input.extend_from_slice(b"abc");
        let out = read_all(&input).await;
        assert_eq!(&out[..24], PREFACE);
        assert_eq!(&out[24..33], &input[24..33], "SETTINGS unchanged");
        let len = u32::from_be_bytes([0, out[33], out[34], out[35]]) as usize;
        assert_eq!((out[36], out[37]), (HEADERS, END_HEADERS));
        let headers = Decoder::new().decode(&out[42..42 + len]).unwrap();
        let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
        assert_eq!(authority.1, b"localhost");
        assert!(headers
            .iter()
            .any(|(n, v)| n == b"workload.spiffe.io" && v == b"true"));
        assert_eq!(
            &out[42 + len..],
            &input[input.len() - 12..],
            "DATA unchanged"
        );
    }

    /// HEADERS frames (END_HEADERS | END_STREAM) for each block, after the
    /// preface.
    fn requests(blocks: &[Vec<u8>]) -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        for (i, block) in blocks.iter().enumerate() {
            let stream = (2 * i as u32 + 1).to_be_bytes();
            frame_head(
                &mut input,
                block.len(),
                HEADERS,
                END_HEADERS | END_STREAM,
                stream,
            );
            input.extend_from_slice(block);
        }
        input
    }

    /// The header blocks of `out`'s HEADERS frames, decoded in order by
    /// one decoder, as the server does.
    fn decoded(out: &[u8]) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut decoder = Decoder::new();
        let mut rest = &out[24..];
        let mut all = Vec::new();
        while !rest.is_empty() {
            let len = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            assert_eq!(rest[3], HEADERS);
            all.push(decoder.decode(&rest[9..9 + len]).unwrap());
            rest = &rest[9 + len..];
        }
        all
    }

    #[tokio::test]
    async fn a_connection_whose_first_authority_is_valid_passes_untouched() {
        let mut enc = Encoder::new();
        let first = enc.encode([
            (&b":authority"[..], &b"localhost:1234"[..]),
            (b"workload.spiffe.io", b"true"),
        ]);
        // A later block that refers to the client's dynamic table.
        let second = enc.encode([
            (&b":authority"[..], &b"localhost:1234"[..]),
            (b"workload.spiffe.io", b"true"),
        ]);
        let input = requests(&[first, second]);
        let out = read_all(&input).await;
        assert_eq!(out, input, "every byte as the client sent it");
    }

    #[tokio::test]
    async fn once_a_block_is_rewritten_every_later_one_is_encoded_again() {
        let mut enc = Encoder::new();
        let h = |a: &'static [u8]| {
            vec![
                (&b":authority"[..], a),
                (&b":path"[..], &b"/SpiffeWorkloadAPI/FetchJWTSVID"[..]),
            ]
        };
        let blocks = vec![
            enc.encode(h(b"tmp%2Fa.sock")),
            enc.encode(h(b"localhost")),
            enc.encode(h(b"tmp%2Fa.sock")),
        ];
        let out = read_all(&requests(&blocks)).await;
        let got = decoded(&out);
        assert_eq!(got.len(), 3);
        for headers in got {
            let authority = headers.iter().find(|(n, _)| n == b":authority").unwrap();
            assert_eq!(authority.1, b"localhost");
            assert!(headers
                .iter()
                .any(|(n, v)| n == b":path" && v == b"/SpiffeWorkloadAPI/FetchJWTSVID"));
        }
    }

    #[tokio::test]
    async fn a_connection_waiting_for_its_client_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut r = Rewriting::new(server);
        let mut input = PREFACE.to_vec();
        frame_head(&mut input, 0, 0x4, 0, [0; 4]);
        {
            use tokio::io::AsyncWriteExt;
            client.write_all(&input).await.unwrap();
        }
        let mut got = vec![0u8; input.len()];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, input);
        // Nothing more to read: the read is pending, as on an idle
        // Workload API connection.
        let mut more = [0u8; 16];
        let waiting =
            tokio::time::timeout(std::time::Duration::from_millis(20), r.read(&mut more)).await;
        assert!(waiting.is_err(), "no bytes were sent");
        assert_eq!((r.raw.capacity(), r.out.capacity()), (0, 0));
    }
}
