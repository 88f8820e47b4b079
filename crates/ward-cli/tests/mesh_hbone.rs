//! HBONE (HTTP/2 CONNECT over mTLS) between sidecars, and with an HBONE
//! client nobody here wrote (Python's `h2`, driving CONNECT by hand).
mod common;
mod mesh_common;

use std::process::Command;

use mesh_common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const FRONTEND: &str = "spiffe://ward.internal/ns/default/sa/frontend";

/// `ward_proxy_peer_connections_total` of `sc` for `protocol`.
async fn connections(sc: &Sidecar, protocol: &str) -> f64 {
    let label = format!("protocol=\"{protocol}\"");
    metric_sum(sc, "ward_proxy_peer_connections", &[&label])
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_tcp_between_sidecars_over_hbone() {
    let s = common::server(&[]);
    apply(&s, ALLOW_FRONTEND);
    apply(
        &s,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin }\nspec:\n  selector: { service: payments }\n  action: DENY\n  rules:\n  - to: [{ operation: { paths: [\"/admin\"] } }]\n",
    );
    let pay = app("payments");
    let pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let tcp_sc = sidecar(&s, "echo-tcp", &pay.tcp, &["--app-protocol", "tcp"]);
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:9",
        &[
            "--peer-transport",
            "hbone",
            "--upstream",
            "payments=127.0.0.1:0",
            "--upstream",
            "echo-tcp=127.0.0.1:0,protocol=tcp",
        ],
    );
    wait_for_endpoint(&fe, "payments").await;
    wait_for_endpoint(&fe, "echo-tcp").await;
    let up = fe.upstream("payments.default");

    // Concurrent HTTP/1.1 requests, each an exchange in a tunnel, with the
    // caller's identity seen by the app and policies applied per request.
    let http1 = reqwest::Client::builder().http1_only().build().unwrap();
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (c, url) = (http1.clone(), format!("http://{up}/pay/{i}"));
        tasks.push(tokio::spawn(async move {
            let r = c.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }));
    }
    for t in tasks {
        let v = t.await.unwrap();
        assert_eq!(v["peer_id"], FRONTEND);
        assert_eq!(v["service"], "payments");
    }
    let denied = http1
        .get(format!("http://{up}/admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    // A large body both ways.
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let echoed = http1
        .post(format!("http://{up}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.status(), 200);
    assert_eq!(echoed.bytes().await.unwrap().as_ref(), body.as_slice());

    // TCP, as a tunnel to a sidecar whose app speaks TCP.
    let mut tcp = tokio::net::TcpStream::connect(fe.upstream("echo-tcp.default"))
        .await
        .unwrap();
    let line = vec![b'x'; 300_000];
    tcp.write_all(&line).await.unwrap();
    let mut back = vec![0u8; line.len()];
    tcp.read_exact(&mut back).await.unwrap();
    assert_eq!(back, line);
    drop(tcp);

    // All of it went over HBONE: one shared connection to each peer per
    // data-plane worker that had traffic for it (the 20 concurrent
    // connections reached every worker, the one TCP stream one), no
    // ward-mux and no connection per TCP stream.
    assert_eq!(connections(&pay_sc, "hbone").await, default_workers());
    assert_eq!(connections(&pay_sc, "ward-mux/2").await, 0.0);
    assert_eq!(connections(&tcp_sc, "hbone").await, 1.0);
    assert_eq!(connections(&tcp_sc, "ward-tcp/1").await, 0.0);
}

type Files = (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf);

/// A certificate and key for `spiffe_id` issued by `ward cert issue` into
/// `dir`, with the server's bundle: what the Python client presents.
fn issue_files(
    s: &ward_testkit::WardServer,
    dir: &std::path::Path,
    name: &str,
    spiffe_id: &str,
) -> Files {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        spiffe_id,
        "--out-cert",
        cert.to_str().unwrap(),
        "--out-key",
        key.to_str().unwrap(),
    ])
    .unwrap();
    (cert, key, s.bundle_path())
}

fn python() -> String {
    std::env::var("WARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Runs the Python HBONE client; its JSON answer.
fn hbone_client(
    addr: &str,
    alpn: &str,
    files: &Files,
    peer: &str,
    authority: &str,
    mode: &str,
) -> Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/hbone_client.py");
    let out = Command::new(python())
        .arg(script)
        .args([addr, alpn])
        .args([&files.0, &files.1, &files.2])
        .args([peer, authority, mode])
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_h2_speaks_hbone_to_a_sidecar() {
    let s = common::server(&[]);
    apply(&s, ALLOW_FRONTEND);
    let pay = app("payments");
    let pay_sc = sidecar(&s, "payments", &pay.http, &["--hbone", "127.0.0.1:0"]);
    let tcp_sc = sidecar(
        &s,
        "echo-tcp",
        &pay.tcp,
        &["--app-protocol", "tcp", "--hbone", "127.0.0.1:0"],
    );
    let dir = tempfile::tempdir().unwrap();
    let files = issue_files(&s, dir.path(), "fe", FRONTEND);
    let hbone_port = |sc: &Sidecar| {
        sc.proc.ready["proxy"]["hbone"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // On the HBONE port (ALPN h2, as Istio's 15008) and on the inbound
    // port (ALPN ward-hbone/1): HTTP/1.1 in the tunnel, authorized, with
    // the caller's identity.
    for (addr, alpn) in [
        (hbone_port(&pay_sc), "h2"),
        (pay_sc.inbound.clone(), "ward-hbone/1"),
    ] {
        let v = hbone_client(&addr, alpn, &files, &pay_sc.id, &pay.http, "http");
        assert_eq!(v["status"], "200");
        let data = v["data"].as_str().unwrap();
        assert!(data.starts_with("HTTP/1.1 200"), "{data}");
        assert!(data.contains(FRONTEND), "{data}");
    }
    // TCP to a TCP app.
    let v = hbone_client(
        &hbone_port(&tcp_sc),
        "h2",
        &files,
        &tcp_sc.id,
        &pay.tcp,
        "tcp",
    );
    assert_eq!(v["status"], "200");
    assert_eq!(v["data"], "ping through an HBONE tunnel\n");
    // Anything but CONNECT is refused.
    let v = hbone_client(
        &hbone_port(&pay_sc),
        "h2",
        &files,
        &pay_sc.id,
        &pay.http,
        "get",
    );
    assert_eq!(v["status"], "405");

    // A caller no policy allows gets a 403 inside the tunnel.
    let other = "spiffe://ward.internal/ns/default/sa/stranger";
    let stranger = issue_files(&s, dir.path(), "o", other);
    let v = hbone_client(
        &hbone_port(&pay_sc),
        "h2",
        &stranger,
        &pay_sc.id,
        &pay.http,
        "http",
    );
    assert!(
        v["data"].as_str().unwrap().starts_with("HTTP/1.1 403"),
        "{v}"
    );
}
