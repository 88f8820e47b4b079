//! What the sidecars refuse: clients without or with foreign certificates
//! (checked with openssl s_client), plaintext, a peer presenting another
//! service's identity, revoked identities, and policy changes applied live.
mod common;
mod mesh_common;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `openssl s_client` against `addr`; true when the handshake completed
/// and the connection stayed open for a request.
fn s_client(
    addr: &str,
    cert: Option<(&std::path::Path, &std::path::Path)>,
    ca: &std::path::Path,
) -> (bool, String) {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", addr, "-tls1_3", "-CAfile"])
        .arg(ca)
        .args(["-verify_return_error", "-servername", "ward-peer"]);
    if let Some((c, k)) = cert {
        cmd.arg("-cert").arg(c).arg("-key").arg(k);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let _ = stdin.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (text.contains("HTTP/1.1 "), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_clients_without_a_valid_certificate() {
    let s = common::server(&["--default-policy", "allow"]);
    let pay = app("payments");
    let sc = sidecar(&s, "payments", &pay.http, &[]);
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        "spiffe://ward.internal/ns/default/sa/tester",
        "--out-cert",
        c.to_str().unwrap(),
        "--out-key",
        k.to_str().unwrap(),
    ])
    .unwrap();
    // Valid certificate: accepted, and the request reaches the app.
    let (ok, out) = s_client(&sc.inbound, Some((&c, &k)), &s.bundle_path());
    assert!(ok, "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    // OpenSSL lists TLS_AES_256_GCM_SHA384 first; the sidecar picks by its
    // own order (docs/sidecar.md).
    assert!(out.contains("TLS_AES_128_GCM_SHA256"), "{out}");
    // No certificate: refused.
    let (ok, out) = s_client(&sc.inbound, None, &s.bundle_path());
    assert!(!ok, "{out}");
    // TLS 1.2, even with a valid certificate: no handshake.
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &sc.inbound, "-tls1_2", "-cert"])
        .arg(&c)
        .arg("-key")
        .arg(&k)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && text.contains("alert"),
        "TLS 1.2 accepted: {text}"
    );
    // A certificate from another CA: refused.
    let other = common::server(&[]);
    let (oc, ok_) = (dir.path().join("o.pem"), dir.path().join("o.key"));
    other
        .cli_json(&[
            "cert",
            "issue",
            "--spiffe-id",
            "spiffe://ward.internal/ns/default/sa/tester",
            "--out-cert",
            oc.to_str().unwrap(),
            "--out-key",
            ok_.to_str().unwrap(),
        ])
        .unwrap();
    let (ok, out) = s_client(&sc.inbound, Some((&oc, &ok_)), &s.bundle_path());
    assert!(!ok, "{out}");
    let handshakes = |result: &'static str| {
        let admin = sc.admin.clone();
        async move {
            let label = format!("result=\"{result}\"");
            metric_sum_at(
                &admin,
                "ward_proxy_tls_handshakes",
                &["direction=\"inbound\"", &label],
            )
            .await
        }
    };
    let (refused, m) = handshakes("error").await;
    assert!(refused >= 2.0, "{m}");
    // Clients that finish their side of the handshake and leave at once
    // (`s_time -new`; a TLS health check does the same) left, and were
    // not refused.
    let out = Command::new("openssl")
        .args([
            "s_time",
            "-connect",
            &sc.inbound,
            "-new",
            "-time",
            "1",
            "-cert",
        ])
        .arg(&c)
        .arg("-key")
        .arg(&k)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.contains(" connections in "), "{out}");
    let (left, m) = handshakes("closed").await;
    assert!(left >= 1.0, "{out}\n{m}");
    assert_eq!(handshakes("error").await.0, refused, "{m}");

    // Plaintext HTTP to the inbound port gets nothing from the app.
    let mut tcp = tokio::net::TcpStream::connect(&sc.inbound).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).contains("200 OK"));
    // A ClientHello of garbage: the sidecar keeps serving.
    let mut tcp = tokio::net::TcpStream::connect(&sc.inbound).await.unwrap();
    tcp.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    .await
    .unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(2), tcp.read_to_end(&mut buf)).await;
    let (ok, out) = s_client(&sc.inbound, Some((&c, &k)), &s.bundle_path());
    assert!(ok, "still serving after garbage: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_peer_with_another_services_identity() {
    let s = common::server(&["--default-policy", "allow"]);
    let ledger_app = app("ledger");
    let ledger = sidecar(&s, "ledger", &ledger_app.http, &[]);
    // A "payments" sidecar that advertises the ledger sidecar's address:
    // whoever dials payments there meets ledger's certificate.
    let pay_app = app("payments");
    let _liar = sidecar(
        &s,
        "payments",
        &pay_app.http,
        &["--advertise", &ledger.inbound],
    );
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:9",
        &["--upstream", "payments=127.0.0.1:0"],
    );
    wait_for_endpoint(&fe, "payments").await;
    let r = reqwest::get(format!("http://{}/", fe.upstream("payments.default")))
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        502,
        "the ledger certificate is not accepted for payments"
    );
    let m = reqwest::get(format!("http://{}/metrics", fe.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("ward_proxy_tls_handshakes_total{direction=\"outbound\",result=\"error\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_and_policy_changes_apply_to_live_traffic() {
    let s = common::server(&[]);
    apply(&s, ALLOW_FRONTEND);
    let pay = app("payments");
    let _pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let ledger_app = app("ledger");
    let _ledger_sc = sidecar(&s, "ledger", &ledger_app.http, &[]);
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:9",
        &[
            "--upstream",
            "payments=127.0.0.1:0",
            "--upstream",
            "ledger=127.0.0.1:0",
        ],
    );
    wait_for_endpoint(&fe, "payments").await;
    wait_for_endpoint(&fe, "ledger").await;
    let pay_url = format!("http://{}/pay", fe.upstream("payments.default"));
    let ledger_url = format!("http://{}/ledger", fe.upstream("ledger.default"));
    let client = reqwest::Client::new();
    assert_eq!(client.get(&pay_url).send().await.unwrap().status(), 200);
    assert_eq!(client.get(&ledger_url).send().await.unwrap().status(), 200);

    // Traffic flows while a DENY for ledger is applied: payments never
    // fails, ledger turns to 403 within 2 s.
    let stop = Arc::new(AtomicBool::new(false));
    let pay_failures = Arc::new(AtomicUsize::new(0));
    let pay_ok = Arc::new(AtomicUsize::new(0));
    let loader = {
        let (stop, f, ok, c, url) = (
            stop.clone(),
            pay_failures.clone(),
            pay_ok.clone(),
            client.clone(),
            pay_url.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => f.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    apply(&s, "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-ledger }\nspec:\n  selector: { service: ledger }\n  action: DENY\n  rules: [{}]\n");
    let applied = Instant::now();
    loop {
        let st = client.get(&ledger_url).send().await.unwrap().status();
        if st == 403 {
            break;
        }
        assert!(
            applied.elapsed() < Duration::from_secs(2),
            "still {st} 2 s after the DENY policy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    loader.await.unwrap();
    assert_eq!(
        pay_failures.load(Ordering::Relaxed),
        0,
        "allowed calls never fail"
    );
    assert!(pay_ok.load(Ordering::Relaxed) > 10);

    // Revoking the frontend's certificate: refused within 5 s, even on
    // the already-open pooled connection.
    let certs = admin_json(&fe, "/certs").await;
    let serial = certs["serial"].as_str().unwrap().to_string();
    s.cli_json(&["cert", "revoke", &serial]).unwrap();
    let revoked = Instant::now();
    loop {
        let st = client.get(&pay_url).send().await.unwrap().status();
        if st == 403 {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "revoked identity still served ({st}) after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
