use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

/// A connected pair: the opener's connector, and an acceptor that echoes
/// every tunnel and reports each tunnel's authority on `authorities`.
/// Sending on the returned `stop` makes the acceptor go away.
async fn echo_pair() -> (
    Connector,
    mpsc::UnboundedReceiver<String>,
    oneshot::Sender<()>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    tokio::spawn(serve(
        b,
        async move {
            let _ = stop_rx.await;
        },
        move |mut t: Tunnel, authority| {
            let _ = tx.send(authority);
            async move {
                let mut buf = vec![0u8; 4096];
                loop {
                    match t.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if t.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                let _ = t.shutdown().await;
            }
        },
    ));
    let (connector, driver) = connect(a).await.expect("handshake");
    tokio::spawn(driver);
    (connector, rx, stop_tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_carry_bytes_both_ways_and_end_in_order() {
    let (c, mut authorities, _stop) = echo_pair().await;
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let mut t = c.open("10.0.0.1:8080").expect("a tunnel");
        tasks.push(tokio::spawn(async move {
            // Written before the CONNECT was answered.
            let payload = vec![i; 100_000];
            let (mut r, mut w) = tokio::io::split(&mut t);
            let writer = async {
                w.write_all(&payload).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let reader = r.read_to_end(&mut back);
            let (_, n) = tokio::join!(writer, reader);
            n.unwrap();
            assert_eq!(back, payload);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    for _ in 0..8 {
        assert_eq!(authorities.recv().await.unwrap(), "10.0.0.1:8080");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_connect_is_refused() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(serve(b, std::future::pending(), |_t, _a| async {}));
    let (mut send, conn) = h2::client::handshake(a).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::GET)
        .uri("https://peer/")
        .body(())
        .unwrap();
    let (resp, _) = send.send_request(req, true).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_tunnel_fails_its_reads() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    // An HBONE server that answers 403 (as a peer refusing the target).
    tokio::spawn(async move {
        let mut conn = h2::server::handshake(b).await.unwrap();
        while let Some(Ok((_req, mut respond))) = conn.accept().await {
            let r = Response::builder().status(403).body(()).unwrap();
            let _ = respond.send_response(r, true);
        }
    });
    let (c, driver) = connect(a).await.unwrap();
    tokio::spawn(driver);
    let mut t = c.open("10.0.0.1:80").unwrap();
    let mut buf = [0u8; 8];
    let e = t.read(&mut buf).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
    assert!(e.to_string().contains("403"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_opener_keeps_at_most_max_streams_open() {
    let (c, _authorities, _stop) = echo_pair().await;
    let open: Vec<Tunnel> = (0..MAX_STREAMS)
        .map(|_| c.open("a:1").expect("room"))
        .collect();
    assert!(c.open("a:1").is_none(), "a full connection opens no stream");
    drop(open);
    assert!(c.open("a:1").is_some(), "room again once streams end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_away_finishes_open_tunnels_and_takes_no_new_ones() {
    let (c, _authorities, stop) = echo_pair().await;
    let mut t = c.open("a:1").unwrap();
    t.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    t.read_exact(&mut buf).await.unwrap();
    let retired = t.retired();
    stop.send(()).unwrap();
    // The tunnel opened before GOAWAY still works.
    t.write_all(b"after!").await.unwrap();
    t.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"after!");
    t.shutdown().await.unwrap();
    let mut rest = Vec::new();
    t.read_to_end(&mut rest).await.unwrap();
    drop(t);
    // GOAWAY reached the opener: it marks the link retired.
    for _ in 0..100 {
        if retired.load(Ordering::Acquire) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(retired.load(Ordering::Acquire));
    assert!(c.open("a:1").is_none());
}
