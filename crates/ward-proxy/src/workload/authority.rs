//! gRPC clients built on grpc-core (Python's grpcio among them, so
//! py-spiffe) send the %-encoded socket path as the `:authority` of a
//! request over a unix socket. h2, which hyper and tonic use, refuses such
//! a request as malformed (hyperium/h2#487). This sits between the socket
//! and the HTTP/2 server and, in each request's header block, replaces an
//! `:authority` that is not a valid authority with `localhost` (what
//! grpc-go and older grpc-core send). Everything else passes through
//! unchanged; header blocks are decoded and encoded again with loona-hpack,
//! one decoder and one encoder per connection, as HPACK's state requires.
use std::io;

use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};

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
/// A header block larger than this (over CONTINUATION frames) ends the
/// connection.
const MAX_BLOCK: usize = 256 * 1024;

/// The server's end of a pipe whose client end is `io`, with requests'
/// `:authority` made acceptable on the way.
pub(crate) fn shim<T>(io: T) -> DuplexStream
where
    T: AsyncRead + AsyncWrite + Send + 'static,
{
    let (ours, server) = tokio::io::duplex(64 * 1024);
    let (from_client, mut to_client) = tokio::io::split(io);
    let (mut from_server, to_server) = tokio::io::split(ours);
    tokio::spawn(async move {
        if let Err(e) = rewrite(from_client, to_server).await {
            tracing::debug!(error = %e, "Workload API connection: request stream ended");
        }
    });
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
        let _ = to_client.shutdown().await;
    });
    server
}

/// A header block being collected over HEADERS and CONTINUATION frames.
struct Pending {
    stream: [u8; 4],
    end_stream: bool,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

async fn rewrite<R, W>(mut r: R, mut w: W) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut preface = [0u8; 24];
    r.read_exact(&mut preface).await?;
    w.write_all(&preface).await?;
    if &preface != PREFACE {
        // Not HTTP/2 with prior knowledge: the server answers it.
        tokio::io::copy(&mut r, &mut w).await?;
        return Ok(());
    }
    let mut decoder = Decoder::new();
    let mut encoder = Encoder::new();
    let mut pending: Option<Pending> = None;
    loop {
        let mut head = [0u8; 9];
        match r.read_exact(&mut head).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = [head[5], head[6], head[7], head[8]];
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).await?;
        match (kind, pending.as_mut()) {
            (HEADERS, None) => {
                let mut body = &payload[..];
                let mut pad = 0;
                if flags & PADDED != 0 {
                    let (&n, rest) = body.split_first().ok_or_else(malformed)?;
                    pad = n as usize;
                    body = rest;
                }
                let mut priority = None;
                if flags & PRIORITY != 0 {
                    let p: [u8; 5] = body
                        .get(..5)
                        .ok_or_else(malformed)?
                        .try_into()
                        .map_err(|_| malformed())?;
                    priority = Some(p);
                    body = &body[5..];
                }
                let fragment = body
                    .get(..body.len().checked_sub(pad).ok_or_else(malformed)?)
                    .ok_or_else(malformed)?;
                pending = Some(Pending {
                    stream,
                    end_stream: flags & END_STREAM != 0,
                    priority,
                    block: fragment.to_vec(),
                });
            }
            (CONTINUATION, Some(p)) if p.stream == stream => {
                p.block.extend_from_slice(&payload);
                if p.block.len() > MAX_BLOCK {
                    return Err(io::Error::other("header block too large"));
                }
            }
            (_, Some(_)) => return Err(malformed()),
            _ => {
                w.write_all(&head).await?;
                w.write_all(&payload).await?;
                continue;
            }
        }
        if flags & END_HEADERS != 0 {
            if let Some(p) = pending.take() {
                let headers = decoder
                    .decode(&p.block)
                    .map_err(|e| io::Error::other(format!("HPACK: {e}")))?;
                let block = encoder.encode(headers.iter().map(|(n, v)| {
                    let v: &[u8] =
                        if n == b":authority" && http::uri::Authority::try_from(&v[..]).is_err() {
                            b"localhost"
                        } else {
                            v
                        };
                    (&n[..], v)
                }));
                write_block(&mut w, &p, &block).await?;
            }
        }
    }
    w.shutdown().await
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed HTTP/2 HEADERS frame")
}

/// Writes a header block as HEADERS (and CONTINUATION) frames of at most
/// [`MAX_FRAME`] bytes.
async fn write_block<W: AsyncWrite + Unpin>(
    w: &mut W,
    p: &Pending,
    block: &[u8],
) -> io::Result<()> {
    let prio = p.priority.map_or(0, |_| 5);
    let first = block.len().min(MAX_FRAME - prio);
    let mut flags = if p.end_stream { END_STREAM } else { 0 };
    if p.priority.is_some() {
        flags |= PRIORITY;
    }
    if first == block.len() {
        flags |= END_HEADERS;
    }
    let mut out = Vec::with_capacity(block.len() + 32);
    frame_head(&mut out, prio + first, HEADERS, flags, p.stream);
    if let Some(pr) = p.priority {
        out.extend_from_slice(&pr);
    }
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(MAX_FRAME);
        let flags = if n == rest.len() { END_HEADERS } else { 0 };
        frame_head(&mut out, n, CONTINUATION, flags, p.stream);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    w.write_all(&out).await
}

fn frame_head(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    let l = (len as u32).to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    out.extend_from_slice(&stream);
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut out = Vec::new();
        rewrite(&input[..], &mut out).await.unwrap();
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

    #[tokio::test]
    async fn a_valid_authority_is_kept() {
        let mut enc = Encoder::new();
        let block = enc.encode([(&b":authority"[..], &b"localhost:1234"[..])]);
        let mut input = PREFACE.to_vec();
        frame_head(
            &mut input,
            block.len(),
            HEADERS,
            END_HEADERS | END_STREAM,
            [0, 0, 0, 3],
        );
        input.extend_from_slice(&block);
        let mut out = Vec::new();
        rewrite(&input[..], &mut out).await.unwrap();
        let headers = Decoder::new().decode(&out[33..]).unwrap();
        assert_eq!(
            headers,
            vec![(b":authority".to_vec(), b"localhost:1234".to_vec())]
        );
        assert_eq!(out[28], END_HEADERS | END_STREAM);
    }
}
