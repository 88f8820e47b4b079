//! Interop with tools nobody here wrote: Python's `cryptography` checks
//! ward's certificates, and curl talks to the admin API over TLS 1.3.
mod common;

use std::process::Command;

use common::*;

fn python() -> String {
    std::env::var("WARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn python_cryptography_accepts_issued_svids() {
    let s = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    let id = "spiffe://ward.internal/ns/shop/sa/cart";
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        id,
        "--out-cert",
        c.to_str().unwrap(),
        "--out-key",
        k.to_str().unwrap(),
    ])
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/check_svid.py");
    let run = |bundle: &std::path::Path, want: &str| {
        Command::new(python())
            .arg(script)
            .arg(&c)
            .arg(bundle)
            .arg(want)
            .output()
            .expect("python3 runs")
    };
    let out = run(&s.bundle_path(), id);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The same check fails against another trust domain's bundle, and for another ID.
    let other = server(&[]);
    assert!(!run(&other.bundle_path(), id).status.success());
    assert!(
        !run(&s.bundle_path(), "spiffe://ward.internal/ns/shop/sa/other")
            .status
            .success()
    );
}

#[test]
fn curl_reaches_the_admin_api_over_tls13() {
    let s = server(&[]);
    let port = s.addr.rsplit(':').next().unwrap().to_string();
    // curl verifies the server by DNS name (localhost is in its certificate).
    let out = Command::new("curl")
        .args(["-sS", "--tlsv1.3", "--cacert"])
        .arg(s.bundle_path())
        .arg("-H")
        .arg(format!("Authorization: Bearer {}", s.admin_token()))
        .arg(format!("https://localhost:{port}/api/v1/status"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["trust_domain"], "ward.internal");
    // Without the CA, curl refuses the server; with TLS 1.2 only, the server refuses.
    let out = Command::new("curl")
        .args(["-sS", &format!("https://localhost:{port}/healthz")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let out = Command::new("curl")
        .args(["-sS", "--tls-max", "1.2", "--cacert"])
        .arg(s.bundle_path())
        .arg(format!("https://localhost:{port}/healthz"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "TLS 1.2 refused");
}
