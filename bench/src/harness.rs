//! Pieces of the comparison harness that belong to no target: the upstream
//! app every target proxies to, and load generators for gRPC and TCP.
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_api::demo::echo_client::EchoClient;
use ward_api::demo::EchoRequest;

/// The upstream app: HTTP/1.1 and h2c, `200` with 1 KiB of body on every
/// path; and, with `tcp`, a TCP echo. Prints `{"http":…, "tcp":…}` when
/// listening.
pub(crate) async fn upstream(listen: &str, tcp: Option<&str>) -> anyhow::Result<()> {
    let l = tokio::net::TcpListener::bind(listen).await?;
    let t = match tcp {
        Some(a) => Some(tokio::net::TcpListener::bind(a).await?),
        None => None,
    };
    println!(
        "{}",
        json!({ "http": l.local_addr()?, "tcp": t.as_ref().map(|t| t.local_addr()).transpose()? })
    );
    if let Some(t) = t {
        tokio::spawn(async move {
            while let Ok((mut s, _)) = t.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
    }
    let body = Bytes::from(vec![b'x'; 1024]);
    loop {
        let (s, _) = l.accept().await?;
        let _ = s.set_nodelay(true);
        let body = body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let body = body.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(s), svc)
                .await;
        });
    }
}

/// Unary `ward.demo.v1.Echo/Echo` calls per second over plaintext h2c to
/// `addr` (an app, or a sidecar's upstream port), `streams` concurrent.
pub(crate) async fn grpc_load(addr: &str, dur: Duration, streams: usize) -> anyhow::Result<f64> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..streams {
        let mut c = EchoClient::new(channel.clone());
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                c.echo(EchoRequest {
                    message: "hi".into(),
                })
                .await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// MB/s echoed through `addr` (a TCP echo, directly or through a sidecar
/// pair): one connection writing 64 KiB chunks while reading them back.
pub(crate) async fn tcp_load(addr: SocketAddr, dur: Duration) -> anyhow::Result<f64> {
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let (mut r, mut w) = s.into_split();
    let received = Arc::new(AtomicU64::new(0));
    let got = received.clone();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    got.fetch_add(n as u64, Ordering::Relaxed);
                }
            }
        }
    });
    let chunk = vec![7u8; 64 * 1024];
    let start = Instant::now();
    while start.elapsed() < dur {
        w.write_all(&chunk).await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let bytes = received.load(Ordering::Relaxed);
    w.shutdown().await?;
    reader.abort();
    Ok(bytes as f64 / secs / 1e6)
}
