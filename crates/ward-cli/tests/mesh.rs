//! Two sidecars between a client and an app, all real processes: every
//! protocol arrives intact and the app sees the caller's SPIFFE ID.
mod common;
mod mesh_common;

use std::time::Duration;

use mesh_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_api::demo::echo_client::EchoClient;
use ward_api::demo::{CountRequest, EchoRequest};

const FRONTEND: &str = "spiffe://ward.internal/ns/default/sa/frontend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_http2_grpc_and_tcp_through_two_sidecars() {
    let s = common::server(&[]);
    apply(&s, ALLOW_FRONTEND);
    let pay = app("payments");
    let pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let tcp_sc = sidecar(&s, "echo-tcp", &pay.tcp, &[]);
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:9",
        &[
            "--upstream",
            "payments=127.0.0.1:0",
            "--upstream",
            "echo-tcp=127.0.0.1:0,protocol=tcp",
        ],
    );
    wait_for_endpoint(&fe, "payments").await;
    wait_for_endpoint(&fe, "echo-tcp").await;
    let up = fe.upstream("payments.default");

    // HTTP/1.1, with the caller's identity seen by the app.
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    let v: serde_json::Value = http1
        .get(format!("http://{up}/pay/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["peer_id"], FRONTEND);
    assert_eq!(v["service"], "payments");
    assert_eq!(v["version"], "HTTP/1.1");
    let xfcc = v["xfcc"].as_str().unwrap();
    assert!(
        xfcc.contains(&format!("URI={FRONTEND}")) && xfcc.contains(&format!("By={}", pay_sc.id)),
        "{xfcc}"
    );
    // Headers forged by the caller are replaced.
    let v: serde_json::Value = http1
        .get(format!("http://{up}/x"))
        .header("x-ward-peer-id", "spiffe://evil/ns/x/sa/y")
        .header("x-forwarded-client-cert", "By=evil")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["peer_id"], FRONTEND);
    assert!(!v["xfcc"].as_str().unwrap().contains("evil"));
    // A large chunked body arrives intact.
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let stream = futures_util::stream::iter(
        body.chunks(65_536)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let echoed = http1
        .post(format!("http://{up}/echo"))
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.bytes().await.unwrap().as_ref(), body.as_slice());

    // HTTP/2 (prior knowledge) reaches the app as HTTP/2.
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let v: serde_json::Value = http2
        .get(format!("http://{up}/h2"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["peer_id"], FRONTEND);

    // gRPC: unary, a failure with its trailers, server streaming ending in a non-OK status.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{up}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = EchoClient::new(channel);
    let r = grpc
        .echo(EchoRequest {
            message: "hi".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (r.message.as_str(), r.peer_id.as_str(), r.service.as_str()),
        ("hi", FRONTEND, "payments")
    );
    let e = grpc
        .echo(EchoRequest {
            message: "fail".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert_eq!(e.message(), "asked to fail");
    assert_eq!(
        e.metadata().get("x-demo-detail").unwrap(),
        "failed-on-purpose"
    );
    let mut stream = grpc
        .count(CountRequest {
            count: 100,
            final_code: 5,
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => {
                assert_eq!(m.index, n);
                assert_eq!(m.peer_id, FRONTEND);
                n += 1;
            }
            Ok(None) => panic!("stream ended without the requested status"),
            Err(st) => break st,
        }
    };
    assert_eq!(n, 100);
    assert_eq!(end.code(), tonic::Code::NotFound);

    // WebSocket: the upgrade crosses both sidecars, messages flow both ways.
    {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let (mut ws, resp) = tokio_tungstenite::connect_async(format!("ws://{up}/ws"))
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..5 {
            ws.send(Message::Text(format!("msg {i}").into()))
                .await
                .unwrap();
            let m = ws.next().await.unwrap().unwrap();
            assert_eq!(
                m.into_text().unwrap().as_str(),
                format!("{FRONTEND} msg {i}")
            );
        }
        let blob: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        ws.send(Message::Binary(blob.clone().into())).await.unwrap();
        assert_eq!(
            ws.next().await.unwrap().unwrap().into_data().as_ref(),
            blob.as_slice()
        );
        ws.close(None).await.unwrap();
    }

    // Opaque TCP bytes both ways.
    let mut tcp = tokio::net::TcpStream::connect(fe.upstream("echo-tcp.default"))
        .await
        .unwrap();
    let data: Vec<u8> = (0..262_144u32).map(|i| (i * 13 % 256) as u8).collect();
    let (mut r, mut w) = tcp.split();
    let write = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    let (_, res) = tokio::join!(write, read);
    res.unwrap();
    assert_eq!(got, data);

    // Requests were multiplexed over pooled connections, not one handshake each.
    let (handshakes, metrics) = metric_sum(
        &fe,
        "ward_proxy_tls_handshakes",
        &["direction=\"outbound\"", "result=\"ok\""],
    )
    .await;
    // Each data-plane worker pools its own HTTP/2 connection and
    // ward-mux link; the TCP connection is one more.
    assert!(
        handshakes <= 2.0 * default_workers() + 1.0,
        "{handshakes} outbound handshakes for ~10 requests and 1 TCP connection:\n{metrics}"
    );

    // Each TCP connection is an mTLS connection of its own; after the
    // first, they resume the session the echo sidecar issued.
    for i in 0..5u8 {
        let mut tcp = tokio::net::TcpStream::connect(fe.upstream("echo-tcp.default"))
            .await
            .unwrap();
        tcp.write_all(&[i; 100]).await.unwrap();
        let mut got = [0u8; 100];
        tcp.read_exact(&mut got).await.unwrap();
        assert_eq!(got, [i; 100]);
    }
    let (n, m) = metric_sum(
        &fe,
        "ward_proxy_tls_resumptions",
        &["direction=\"outbound\""],
    )
    .await;
    assert!(n >= 4.0, "{n} resumed of 5 new TCP connections:\n{m}");
    let (n, m) = metric_sum(
        &tcp_sc,
        "ward_proxy_tls_resumptions",
        &["direction=\"inbound\""],
    )
    .await;
    assert!(n >= 4.0, "{n} resumed at the echo sidecar:\n{m}");
    let _ = (tcp_sc, pay_sc);
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// HTTP/1.1 exchanges from many app connections at once share one mTLS
/// connection per data-plane worker between the sidecars, each intact (bodies larger than a
/// stream's flow-control window included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_exchanges_share_one_connection_between_sidecars() {
    let s = common::server(&[]);
    apply(&s, ALLOW_FRONTEND);
    let (_pay, pay_sc, fe) = payments_and_frontend(&s).await;
    let up = fe.upstream("payments.default");
    let mut tasks = Vec::new();
    for c in 0..32u32 {
        let up = up.clone();
        tasks.push(tokio::spawn(async move {
            // A client of its own: its own connections to the sidecar.
            let client = reqwest::Client::builder().http1_only().build().unwrap();
            for i in 0..8u32 {
                let len = if (c + i) % 16 == 0 {
                    600_000
                } else {
                    1 + (c * 97 + i * 13) as usize
                };
                let body: Vec<u8> = (0..len).map(|j| (j as u32 * 31 + c + i) as u8).collect();
                let r = client
                    .post(format!("http://{up}/echo"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200, "{:?}", r.text().await);
                assert_eq!(
                    r.bytes().await.unwrap().as_ref(),
                    body.as_slice(),
                    "client {c} request {i}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (inbound, m) = metric_sum(
        &pay_sc,
        "ward_proxy_tls_handshakes",
        &["direction=\"inbound\"", "result=\"ok\""],
    )
    .await;
    // One shared link per frontend worker: its 32 connections are spread
    // over all of them.
    assert_eq!(
        inbound,
        default_workers(),
        "256 exchanges from 32 connections:\n{m}"
    );
    let (requests, m) = metric_sum(
        &pay_sc,
        "ward_proxy_requests",
        &["direction=\"inbound\"", "status=\"200\""],
    )
    .await;
    assert_eq!(requests, 256.0, "{m}");
}
