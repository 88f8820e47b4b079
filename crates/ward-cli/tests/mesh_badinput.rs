//! Bad input on both sidecar listeners (outbound plaintext, inbound mTLS):
//! each is answered or cut off, and the sidecar keeps serving.
mod common;
mod mesh_common;

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

struct Target {
    name: &'static str,
    addr: String,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Target {
    async fn connect(&self, alpn: &[u8]) -> Pin<Box<dyn Io>> {
        let tcp = tokio::net::TcpStream::connect(&self.addr).await.unwrap();
        match &self.tls {
            None => Box::pin(tcp),
            Some(cfg) => {
                let mut cfg = (**cfg).clone();
                cfg.alpn_protocols = vec![alpn.to_vec()];
                let name = rustls_pki_types::ServerName::try_from("ward-peer").unwrap();
                Box::pin(
                    tokio_rustls::TlsConnector::from(Arc::new(cfg))
                        .connect(name, tcp)
                        .await
                        .unwrap(),
                )
            }
        }
    }
}

async fn read_all(io: &mut Pin<Box<dyn Io>>, limit: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, io.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).to_string()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_both_listeners() {
    let s = common::server(&["--default-policy", "allow"]);
    let (_pay, pay_sc, fe) = payments_and_frontend(&s).await;

    // An mTLS client identity for talking to the inbound listener directly.
    let mesh = mesh_tls(&s, "spiffe://ward.internal/ns/default/sa/tester");
    let inbound_tls = Arc::new(mesh.client_config(common::id(&pay_sc.id), &[b"http/1.1"]));

    let targets = [
        Target {
            name: "outbound",
            addr: fe.upstream("payments.default"),
            tls: None,
        },
        Target {
            name: "inbound",
            addr: pay_sc.inbound.clone(),
            tls: Some(inbound_tls),
        },
    ];
    for t in &targets {
        // Conflicting Content-Length and Transfer-Encoding: 400, the
        // connection is closed, and the bytes after the body are never read
        // as a second (smuggled) request.
        let mut io = t.connect(b"http/1.1").await;
        io.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let out = read_all(&mut io, Duration::from_secs(5)).await;
        assert!(
            !out.contains("/smuggled"),
            "{}: smuggled request was served: {out}",
            t.name
        );
        assert_eq!(
            out.matches("HTTP/1.1 ").count(),
            1,
            "{}: one response only: {out}",
            t.name
        );

        // 64 KiB of headers: 431.
        let mut io = t.connect(b"http/1.1").await;
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
            "a".repeat(64 * 1024)
        );
        let _ = io.write_all(big.as_bytes()).await;
        let out = read_all(&mut io, Duration::from_secs(5)).await;
        assert!(out.starts_with("HTTP/1.1 431"), "{}: {out:.80}", t.name);

        // HTTP/2: 10,000 streams opened and reset within a second: the
        // connection is closed, memory stays bounded.
        let io = t.connect(b"h2").await;
        let pid = if t.name == "inbound" {
            pay_sc.proc.child.id()
        } else {
            fe.proc.child.id()
        };
        let before = rss_kib(pid);
        let (mut h2, conn) = h2::client::handshake(io).await.unwrap();
        let driver = tokio::spawn(conn);
        let mut opened = 0;
        for _ in 0..10_000 {
            let req = http::Request::builder()
                .method("GET")
                .uri(format!("http://{}/sleep/5000", t.addr))
                .body(())
                .unwrap();
            let ready = match tokio::time::timeout(Duration::from_secs(2), h2.clone().ready()).await
            {
                Ok(Ok(r)) => r,
                _ => break,
            };
            h2 = ready;
            match h2.send_request(req, true) {
                Ok((_resp, mut stream)) => {
                    stream.send_reset(h2::Reason::CANCEL);
                    opened += 1;
                }
                Err(_) => break,
            }
        }
        let closed = tokio::time::timeout(Duration::from_secs(5), driver).await;
        assert!(
            matches!(closed, Ok(Ok(Err(_))) | Ok(Ok(Ok(())))),
            "{}: connection not closed after {opened} resets",
            t.name
        );
        // (The client may have written all 10,000 before the server's
        // GOAWAY arrived, since writes are buffered: what matters is that
        // the server closed the connection.)
        let after = rss_kib(pid);
        assert!(
            after < before + 64 * 1024,
            "{}: RSS grew from {before} to {after} KiB",
            t.name
        );

        // A client that sends one header byte a second is cut off.
        let mut io = t.connect(b"http/1.1").await;
        let start = Instant::now();
        let mut cut = false;
        for b in b"GET / HTTP/1.1\r\nHost: slow\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if io.write_all(&[*b]).await.is_err() || io.flush().await.is_err() {
                cut = true;
                break;
            }
            let mut one = [0u8; 64];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), io.read(&mut one)).await {
                // EOF or a 408: the server gave up on us.
                let _ = n;
                cut = true;
                break;
            }
        }
        assert!(cut, "{}: slow client never cut off", t.name);
        assert!(start.elapsed() < Duration::from_secs(40), "{}", t.name);
    }

    // The framing between sidecars (`ward-mux/1`, as older sidecars speak
    // it), by hand.
    let inbound = &targets[1];
    // A request on a stream is answered on that stream.
    let mut io = inbound.connect(b"ward-mux/1").await;
    get_on_stream_1(&mut io).await;
    // `ward-mux/2`, which sidecars now prefer: a PING on stream 0 comes
    // back with its payload and flag ACK, and streams work as in `/1`.
    let mut v2 = inbound.connect(b"ward-mux/2").await;
    v2.write_all(&mux_frame(0, 3, 0, b"alive?!!"))
        .await
        .unwrap();
    let mut answer = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(5), v2.read_exact(&mut answer))
        .await
        .expect("a PING answered")
        .unwrap();
    assert_eq!(&answer[..8], &[0, 0, 0, 0, 3, 1, 0, 8]);
    assert_eq!(&answer[8..], b"alive?!!");
    get_on_stream_1(&mut v2).await;
    // A PING of the wrong size breaks the framing: the connection ends.
    v2.write_all(&mux_frame(0, 3, 0, b"short")).await.unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), v2.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the connection stayed open after a bad PING");

    // Streams beyond the limit (512 at the accepting side) are refused
    // with RESET; the connection and the streams already open go on.
    let mut flood = Vec::new();
    for id in 3..3 + 2 * 600 {
        if id % 2 == 1 {
            flood.extend(mux_frame(id, 0, 1, b"GET /sleep/100 HTTP/1.1\r\n"));
        }
    }
    io.write_all(&flood).await.unwrap();
    let mut resets = 0;
    while resets < 600 - 512 {
        let (_, kind, _) = tokio::time::timeout(Duration::from_secs(5), read_header(&mut io))
            .await
            .expect("a RESET for each stream beyond the limit");
        if kind == 2 {
            resets += 1;
        }
    }
    // Garbage (an HTTP request where a frame header belongs) ends the
    // connection.
    io.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut rest)).await;
    assert!(end.is_ok(), "the connection stayed open after garbage");

    // Both sidecars still serve.
    let r = reqwest::get(format!(
        "http://{}/still-alive",
        fe.upstream("payments.default")
    ))
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
}

/// A `ward-mux/1` frame: stream id, kind, flags, length, payload.
fn mux_frame(id: u32, kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = id.to_be_bytes().to_vec();
    f.extend([kind, flags]);
    f.extend((payload.len() as u16).to_be_bytes());
    f.extend(payload);
    f
}

/// Opens stream 1 with a request, which must be answered 200 on it.
async fn get_on_stream_1(io: &mut Pin<Box<dyn Io>>) {
    io.write_all(&mux_frame(
        1,
        0,
        1,
        b"GET /pay/7 HTTP/1.1\r\nHost: x\r\n\r\n",
    ))
    .await
    .unwrap();
    let (id, data) = tokio::time::timeout(Duration::from_secs(5), read_frame(io))
        .await
        .unwrap();
    assert_eq!(id, 1);
    let head = String::from_utf8_lossy(&data);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// The next frame header: stream id, kind, and the payload (read too).
async fn read_header(io: &mut Pin<Box<dyn Io>>) -> (u32, u8, Vec<u8>) {
    let mut h = [0u8; 8];
    io.read_exact(&mut h).await.unwrap();
    let len = u16::from_be_bytes([h[6], h[7]]) as usize;
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.unwrap();
    (u32::from_be_bytes([h[0], h[1], h[2], h[3]]), h[4], payload)
}

/// The next DATA frame with a payload.
async fn read_frame(io: &mut Pin<Box<dyn Io>>) -> (u32, Vec<u8>) {
    loop {
        let (id, kind, payload) = read_header(io).await;
        if kind == 0 && !payload.is_empty() {
            return (id, payload);
        }
    }
}

/// An HTTP/2 request reaches the app as HTTP/2 by both paths: through an
/// outbound sidecar (h2c from the app) and straight to the inbound port
/// (h2 over mTLS, as a client with a ward certificate may send it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_reaches_the_app_as_http2_by_both_paths() {
    let s = common::server(&["--default-policy", "allow"]);
    let (_pay, pay_sc, fe) = payments_and_frontend(&s).await;
    let mesh = mesh_tls(&s, "spiffe://ward.internal/ns/default/sa/tester");
    let inbound = Target {
        name: "inbound",
        addr: pay_sc.inbound.clone(),
        tls: Some(Arc::new(
            mesh.client_config(common::id(&pay_sc.id), &[b"h2"]),
        )),
    };
    let outbound = Target {
        name: "outbound",
        addr: fe.upstream("payments.default"),
        tls: None,
    };
    for t in [&outbound, &inbound] {
        let io = t.connect(b"h2").await;
        let (h2, conn) = h2::client::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let mut h2 = h2.ready().await.unwrap();
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/whoami", t.addr))
            .body(())
            .unwrap();
        let (resp, mut body) = h2.send_request(req, false).unwrap();
        body.send_data(bytes::Bytes::from_static(b"hello"), true)
            .unwrap();
        let resp = resp.await.unwrap();
        assert_eq!(resp.status(), 200, "{}", t.name);
        let mut data = resp.into_body();
        let mut got = Vec::new();
        while let Some(chunk) = data.data().await {
            let chunk = chunk.unwrap();
            let _ = data.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
        }
        let v: serde_json::Value = serde_json::from_slice(&got).unwrap();
        assert_eq!(v["version"], "HTTP/2.0", "{}: {v}", t.name);
        assert_eq!(v["method"], "POST", "{}: {v}", t.name);
    }
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Writes the client preface and `frames` (up to `limit` bytes in all);
/// true if the peer closed the connection (or reset it) before the end.
async fn flood(io: &mut Pin<Box<dyn Io>>, first: Vec<u8>, frame: Vec<u8>, count: usize) -> bool {
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(first);
    if io.write_all(&out).await.is_err() {
        return true;
    }
    let batch: Vec<u8> = frame.repeat(64);
    for _ in 0..count / 64 {
        let w = tokio::time::timeout(Duration::from_secs(5), io.write_all(&batch)).await;
        if !matches!(w, Ok(Ok(()))) {
            return true;
        }
    }
    // Everything was written: the peer must still have closed.
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(1), io.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => {}
        }
    }
    false
}

/// HTTP/2 CONTINUATION and SETTINGS floods against the server's port and
/// both sidecar listeners: each connection is cut off, memory stays
/// bounded, and a normal request still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_and_settings_floods() {
    let s = common::server(&["--default-policy", "allow"]);
    let (_pay, pay_sc, fe) = payments_and_frontend(&s).await;
    let mesh = mesh_tls(&s, "spiffe://ward.internal/ns/default/sa/tester");
    let trust = ward_tls::ControlPlaneTrust::fingerprint(&s.fingerprint).unwrap();
    let server_tls = ward_tls::client_config(trust, None, &[b"h2"]).unwrap();
    let server_pid = s.child.as_ref().unwrap().id();
    let targets = [
        (
            Target {
                name: "server",
                addr: s.addr.clone(),
                tls: Some(Arc::new(server_tls)),
            },
            server_pid,
        ),
        (
            Target {
                name: "inbound",
                addr: pay_sc.inbound.clone(),
                tls: Some(Arc::new(
                    mesh.client_config(common::id(&pay_sc.id), &[b"h2"]),
                )),
            },
            pay_sc.proc.child.id(),
        ),
        (
            Target {
                name: "outbound",
                addr: fe.upstream("payments.default"),
                tls: None,
            },
            fe.proc.child.id(),
        ),
    ];
    // A header block that never ends: HEADERS without END_HEADERS, then
    // CONTINUATION frames of 1 KiB of literal headers, forever.
    let mut block = vec![0x82, 0x86, 0x84]; // :method GET, :scheme http, :path /
    block.extend_from_slice(&[0x41, 0x09]);
    block.extend_from_slice(b"localhost"); // :authority
    let headers = h2_frame(0x1, 0, 1, &block);
    let mut lit = Vec::new();
    while lit.len() < 1000 {
        lit.extend_from_slice(&[0x00, 0x03]);
        lit.extend_from_slice(b"x-a");
        lit.extend_from_slice(&[0x07]);
        lit.extend_from_slice(b"bbbbbbb");
    }
    let continuation = h2_frame(0x9, 0, 1, &lit);
    // SETTINGS frames, each asking for an ACK.
    let settings = h2_frame(0x4, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]);
    for (t, pid) in &targets {
        let before = rss_kib(*pid);
        let mut io = t.connect(b"h2").await;
        assert!(
            flood(&mut io, headers.clone(), continuation.clone(), 20_000).await,
            "{}: 20 MiB of CONTINUATION and the connection stayed open",
            t.name
        );
        // SETTINGS frames nobody reads the ACKs of: the peer may answer or
        // close, but its memory stays bounded and it keeps serving others
        // while this connection is still open.
        let mut io = t.connect(b"h2").await;
        let _ = flood(&mut io, Vec::new(), settings.clone(), 200_000).await;
        let after = rss_kib(*pid);
        assert!(
            after < before + 32 * 1024,
            "{}: RSS grew from {before} to {after} KiB",
            t.name
        );
        serves(&s, &fe).await;
        drop(io);
    }
    serves(&s, &fe).await;
}

/// A request through the mesh and one to the server both succeed.
async fn serves(s: &ward_testkit::WardServer, fe: &Sidecar) {
    let ok = reqwest::get(format!("http://{}/whoami", fe.upstream("payments.default")))
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let health = s
        .https()
        .unwrap()
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}
