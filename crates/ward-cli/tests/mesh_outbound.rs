//! The outbound side of a sidecar: clients nobody here wrote (curl,
//! Python grpcio) through an upstream port, load balancing with a dead
//! endpoint skipped, protocol detection.
mod common;
mod mesh_common;

use std::process::Command;
use std::time::Duration;

use mesh_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRONTEND: &str = "spiffe://ward.internal/ns/default/sa/frontend";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_and_grpcio_through_an_upstream_port() {
    let s = common::server(&[]);
    apply(&s, ALLOW_FRONTEND);
    let (_pay, _pay_sc, fe) = payments_and_frontend(&s).await;
    let up = fe.upstream("payments.default");
    for flags in [&["--http1.1"][..], &["--http2-prior-knowledge"][..]] {
        let out = Command::new("curl")
            .arg("-sS")
            .args(flags)
            .arg(format!("http://{up}/curl"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["peer_id"], FRONTEND, "{flags:?}");
    }
    let python = std::env::var("WARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/grpc_echo.py");
    let protos = concat!(env!("CARGO_MANIFEST_DIR"), "/../ward-api/proto");
    let out = Command::new(python)
        .args([script, protos, &up, FRONTEND])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_balancing_skips_a_dead_endpoint() {
    let s = common::server(&["--default-policy", "allow"]);
    let a = app("payments-a");
    let b = app("payments-b");
    let sa = sidecar(&s, "payments", &a.http, &[]);
    let token = register(&s, "payments");
    let dd = s.data_dir.to_str().unwrap().to_string();
    let sb = ward_testkit::Proc::spawn(
        bin(),
        &[
            "--output",
            "json",
            "--data-dir",
            &dd,
            "proxy",
            "--join-token",
            &token,
            "--service",
            "payments",
            "--inbound",
            "127.0.0.1:0",
            "--app",
            &b.http,
            "--admin",
            "127.0.0.1:0",
        ],
    )
    .unwrap();
    let fe = frontend_for_payments(&s, 2).await;
    let url = format!("http://{}/lb", fe.upstream("payments.default"));
    let mut seen = std::collections::HashMap::new();
    for _ in 0..20 {
        let v: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        *seen
            .entry(v["service"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "requests spread over both endpoints: {seen:?}"
    );
    // One endpoint dies (sidecar and app): every request still succeeds.
    drop(sb);
    drop(b);
    for i in 0..20 {
        let r = reqwest::get(&url).await.unwrap();
        assert_eq!(r.status(), 200, "request {i} after an endpoint died");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["service"], "payments-a");
    }
    let _ = sa;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_protocol_detects_http_and_falls_back_to_tcp() {
    let s = common::server(&["--default-policy", "allow"]);
    let pay = app("payments");
    let _pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let _tcp_sc = sidecar(&s, "echo-tcp", &pay.tcp, &[]);
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:9",
        &[
            "--upstream",
            "payments=127.0.0.1:0,protocol=auto",
            "--upstream",
            "echo-tcp=127.0.0.1:0,protocol=auto",
        ],
    );
    wait_for_endpoint(&fe, "payments").await;
    wait_for_endpoint(&fe, "echo-tcp").await;
    let v: serde_json::Value =
        reqwest::get(format!("http://{}/auto", fe.upstream("payments.default")))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(v["peer_id"], FRONTEND);
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let v: serde_json::Value = h2
        .get(format!("http://{}/auto2", fe.upstream("payments.default")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["version"], "HTTP/2.0");
    // Binary bytes: not HTTP, carried as TCP.
    let mut tcp = tokio::net::TcpStream::connect(fe.upstream("echo-tcp.default"))
        .await
        .unwrap();
    tcp.write_all(b"\x00\x01binary protocol hello")
        .await
        .unwrap();
    let mut buf = vec![0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), tcp.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"\x00\x01binary protocol hello");
    // A server-speaks-first client that sends nothing is carried as TCP after a short wait.
    let mut quiet = tokio::net::TcpStream::connect(fe.upstream("echo-tcp.default"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    quiet.write_all(b"late").await.unwrap();
    let mut b4 = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), quiet.read_exact(&mut b4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b4, b"late");
}
