//! Several `ward server` replicas on one PostgreSQL database (the cluster
//! `scripts/test` starts): every write made through one is read through the
//! other, a change made through one reaches the watch streams of the
//! other within 1 s, a join token stays single-use across them, and a
//! replica whose key-encryption key cannot open the stored keys refuses to
//! start.
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tonic::Code;
use ward_api::v1::{WatchRequest, WatchResponse};
use ward_testkit::postgres::TestDatabase;
use ward_testkit::WardServer;

fn names(v: &Value, key: &str) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e[key].as_str().map(String::from))
        .collect()
}

fn pair(db: &TestDatabase) -> (WardServer, WardServer) {
    let a = server(&["--database", db.url()]);
    let b = a.replica().expect("the second replica starts");
    (a, b)
}

#[tokio::test]
async fn replicas_on_one_postgres_database_share_every_write() {
    let db = TestDatabase::create().await;
    let (a, b) = pair(&db);
    assert_eq!(a.fingerprint, b.fingerprint, "one root CA for both");

    a.cli_json(&["service", "add", "web"]).unwrap();
    b.cli_json(&["service", "add", "db"]).unwrap();
    for s in [&a, &b] {
        let v = s.cli_json(&["service", "list"]).unwrap();
        assert_eq!(names(&v, "name"), ["db", "web"], "{v}");
    }

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: web-from-db }\n\
         spec:\n  selector: { service: web }\n  action: ALLOW\n  rules:\n  - from: [{ source: { principals: [\"spiffe://ward.internal/ns/default/sa/db\"] } }]\n",
    )
    .unwrap();
    b.cli_json(&["policy", "apply", "-f", f.to_str().unwrap()])
        .unwrap();
    let v = a.cli_json(&["policy", "list"]).unwrap();
    assert_eq!(names(&v, "name"), ["web-from-db"], "{v}");

    // A certificate issued through one replica is listed by the other and
    // chains to the bundle the other serves.
    let issued = b
        .issue("spiffe://ward.internal/ns/default/sa/web", &[])
        .unwrap();
    let serial = issued.out["serial"].as_str().unwrap().to_string();
    let v = a.cli_json(&["cert", "list"]).unwrap();
    assert!(names(&v, "serial").contains(&serial), "{v}");
    let pem = dir.path().join("leaf.pem");
    std::fs::write(&pem, ward_ca::to_pem("CERTIFICATE", &issued.chain[0])).unwrap();
    let (ok, out) = openssl_verify(&a.bundle_path(), &pem);
    assert!(ok, "{out}");

    // Revoked through one, refused by the other.
    a.cli_json(&["cert", "revoke", &serial]).unwrap();
    let mut c = b.grpc(Some((issued.chain, issued.key))).await.unwrap();
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let e = c
        .sign_certificate(sign_req(csr(&web).0, ""))
        .await
        .expect_err("a revoked certificate cannot renew");
    // Refused at the handshake once the other replica's feed has told it,
    // or by the stored record before that.
    assert!(
        matches!(e.code(), Code::Unauthenticated | Code::PermissionDenied),
        "{e:?}"
    );
    assert!(e.message().contains("revoked"), "{e:?}");

    // One audit log: the other replica's changes are in it.
    let audit = b.cli_json(&["audit", "--limit", "1000"]).unwrap();
    let actions = names(&audit, "action");
    for a in ["service.add", "policy.apply", "cert.revoke"] {
        assert!(actions.iter().any(|x| x == a), "{a} missing: {actions:?}");
    }
}

/// Waits up to `within` for a message on `stream` that `ok` accepts.
async fn pushed_within(
    stream: &mut tonic::Streaming<WatchResponse>,
    within: Duration,
    what: &str,
    ok: impl Fn(&WatchResponse) -> bool,
) -> WatchResponse {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let m = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{what} not pushed within {within:?}"))
            .unwrap()
            .unwrap();
        if ok(&m) {
            return m;
        }
    }
}

#[tokio::test]
async fn a_change_through_one_replica_reaches_the_watchers_of_the_other() {
    let db = TestDatabase::create().await;
    let (a, b) = pair(&db);
    a.cli_json(&["service", "add", "web"]).unwrap();
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let (req, key) = csr(&web);
    let first = a
        .grpc(None)
        .await
        .unwrap()
        .sign_certificate(sign_req(req, &token(&a, "web", &[])))
        .await
        .unwrap()
        .into_inner();
    let mut w = a.grpc(Some((chain(&first), key))).await.unwrap();
    let mut stream = w.watch(WatchRequest::default()).await.unwrap().into_inner();
    let start = pushed_within(
        &mut stream,
        Duration::from_secs(5),
        "the first state",
        |_| true,
    )
    .await;
    assert!(start.policies_json.is_empty());
    let authorities = start.bundle.as_ref().unwrap().x509_authorities.len();

    // A policy for web applied through b.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: web-deny }\n\
         spec:\n  selector: { service: web }\n  action: DENY\n  rules: [{}]\n",
    )
    .unwrap();
    b.cli_json(&["policy", "apply", "-f", f.to_str().unwrap()])
        .unwrap();
    pushed_within(
        &mut stream,
        Duration::from_secs(1),
        "a policy applied on b",
        |m| m.policies_json.iter().any(|p| p.contains("web-deny")),
    )
    .await;

    // A certificate revoked through b.
    let other = b
        .issue("spiffe://ward.internal/ns/default/sa/web", &[])
        .unwrap();
    let serial = other.out["serial"].as_str().unwrap().to_string();
    b.cli_json(&["cert", "revoke", &serial]).unwrap();
    pushed_within(
        &mut stream,
        Duration::from_secs(1),
        "a revocation on b",
        |m| m.revoked_serials.contains(&serial),
    )
    .await;

    // A CA rotation and a signing-key rotation through b.
    let jwks = start.jwks_json.clone();
    b.cli_json(&["ca", "rotate"]).unwrap();
    pushed_within(
        &mut stream,
        Duration::from_secs(1),
        "a CA rotation on b",
        |m| m.bundle.as_ref().unwrap().x509_authorities.len() > authorities,
    )
    .await;
    b.cli_json(&["signing-key", "rotate"]).unwrap();
    pushed_within(
        &mut stream,
        Duration::from_secs(1),
        "a signing-key rotation on b",
        |m| m.jwks_json != jwks,
    )
    .await;
}

#[tokio::test]
async fn a_join_token_used_on_two_replicas_at_once_issues_one_certificate() {
    let db = TestDatabase::create().await;
    let (a, b) = pair(&db);
    a.cli_json(&["service", "add", "web"]).unwrap();
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let mut ca = a.grpc(None).await.unwrap();
    let mut cb = b.grpc(None).await.unwrap();
    let before = count_certs(&a);
    for round in 0..10 {
        let tok = token(&a, "web", &[]);
        let (ra, rb) = tokio::join!(
            ca.sign_certificate(sign_req(csr(&web).0, &tok)),
            cb.sign_certificate(sign_req(csr(&web).0, &tok)),
        );
        let won = [ra.is_ok(), rb.is_ok()].iter().filter(|w| **w).count();
        assert_eq!(won, 1, "round {round}: {ra:?} {rb:?}");
        let lost = ra.err().or(rb.err()).unwrap();
        assert_eq!(lost.code(), Code::Unauthenticated, "{lost:?}");
    }
    assert_eq!(count_certs(&b), before + 10);
}

#[tokio::test]
async fn a_replica_whose_key_encryption_key_differs_refuses_to_start() {
    let db = TestDatabase::create().await;
    let a = server(&["--database", db.url()]);
    a.cli_json(&["service", "add", "web"]).unwrap();

    // A data dir of its own with a new key-encryption key.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .args(["server", "--listen", "127.0.0.1:0", "--database", db.url()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a replica with the wrong key-encryption key kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("kek.key"), "names the file: {err}");
    assert!(err.contains("key-encryption key"), "{err}");

    // Nothing stored was touched: the first replica still serves.
    let v = a.cli_json(&["service", "list"]).unwrap();
    assert_eq!(names(&v, "name"), ["web"]);
    a.issue("spiffe://ward.internal/ns/default/sa/web", &[])
        .unwrap();
}

fn count(s: &WardServer, action: &str) -> usize {
    let v = s.cli_json(&["audit", "--limit", "10000"]).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .count()
}

#[tokio::test]
async fn replicas_starting_and_rotating_together_do_it_once() {
    let db = TestDatabase::create().await;
    // Secrets from a server of its own (SQLite), then two replicas started
    // at the same moment on the empty PostgreSQL database.
    let seed = server(&[]);
    let flags = ["--database", db.url()];
    let (a, b) = std::thread::scope(|t| {
        let a = t.spawn(|| seed.replica_with(&flags));
        let b = t.spawn(|| seed.replica_with(&flags));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert_eq!(a.fingerprint, b.fingerprint, "one root CA");
    assert_eq!(count(&a, "ca.root.create"), 1);
    assert_eq!(count(&a, "signing-key.create"), 2, "one pair per purpose");

    // Both asked to rotate the CA and the signing keys at once.
    let call = |s: &WardServer, path: &'static str| {
        let (http, token, url) = (s.https().unwrap(), s.admin_token(), s.url.clone());
        async move {
            let r = http
                .post(format!("{url}{path}"))
                .bearer_auth(token)
                .json(&serde_json::json!({}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let activations = count(&a, "ca.signing.activate");
    let (ra, rb) = tokio::join!(call(&a, "/api/v1/ca/rotate"), call(&b, "/api/v1/ca/rotate"));
    assert_eq!(
        count(&b, "ca.signing.activate"),
        activations + 1,
        "rotated once"
    );
    assert_eq!(ra["active_serial"], rb["active_serial"], "{ra} {rb}");

    let rotations = count(&a, "signing-key.rotate");
    let (ka, kb) = tokio::join!(
        call(&a, "/api/v1/signing-keys/rotate"),
        call(&b, "/api/v1/signing-keys/rotate")
    );
    assert_eq!(
        count(&b, "signing-key.rotate"),
        rotations + 1,
        "rotated once"
    );
    assert_eq!(ka, kb);

    // The scheduled maintenance on both replicas then finds nothing to do.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(count(&a, "ca.signing.activate"), activations + 1);
    assert_eq!(count(&a, "signing-key.rotate"), rotations + 1);
}
