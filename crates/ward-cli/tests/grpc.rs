//! The `ward.v1` gRPC API of a real `ward server`: join-token signing,
//! renewal over mTLS, every refusal with its status, and the watch stream.
mod common;

use std::time::Duration;

use common::*;
use tonic::Code;
use ward_api::v1::WatchRequest;

fn assert_status<T: std::fmt::Debug>(r: Result<T, tonic::Status>, code: Code, needle: &str) {
    let e = r.expect_err("must be refused");
    assert_eq!(e.code(), code, "{e:?}");
    assert!(
        e.message().contains(needle),
        "{:?} does not mention {needle:?}",
        e.message()
    );
}

#[tokio::test]
async fn signing_refusals_store_nothing() {
    let s = server(&[]);
    s.cli_json(&["service", "add", "web"]).unwrap();
    s.cli_json(&["service", "add", "db"]).unwrap();
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let db = id("spiffe://ward.internal/ns/default/sa/db");
    let tok = token(&s, "web", &[]);
    let mut c = s.grpc(None).await.unwrap();
    let before = count_certs(&s);

    // A CSR for another identity than the token's.
    assert_status(
        c.sign_certificate(sign_req(csr(&db).0, &tok)).await,
        Code::PermissionDenied,
        "requests spiffe://ward.internal/ns/default/sa/db",
    );
    // Garbage, a bad signature, an RSA-1024 key.
    assert_status(
        c.sign_certificate(sign_req(b"garbage".to_vec(), &tok))
            .await,
        Code::InvalidArgument,
        "PKCS#10",
    );
    let (mut bad_sig, _) = csr(&web);
    *bad_sig.last_mut().unwrap() ^= 1;
    assert_status(
        c.sign_certificate(sign_req(bad_sig, &tok)).await,
        Code::InvalidArgument,
        "signature",
    );
    let dir = tempfile::tempdir().unwrap();
    let rsa = dir.path().join("rsa.csr");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "rsa:1024",
            "-nodes",
            "-keyout",
            "/dev/null",
            "-subj",
            "/O=x",
            "-addext",
            "subjectAltName=URI:spiffe://ward.internal/ns/default/sa/web",
            "-outform",
            "DER",
            "-out",
        ])
        .arg(&rsa)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_status(
        c.sign_certificate(sign_req(std::fs::read(&rsa).unwrap(), &tok))
            .await,
        Code::InvalidArgument,
        "RSA-1024",
    );
    // An unknown token, and no credential at all.
    assert_status(
        c.sign_certificate(sign_req(csr(&web).0, "wjt_nope")).await,
        Code::Unauthenticated,
        "not recognised",
    );
    assert_status(
        c.sign_certificate(sign_req(csr(&web).0, "")).await,
        Code::Unauthenticated,
        "no credential",
    );
    assert_eq!(
        count_certs(&s),
        before,
        "nothing stored by refused requests"
    );

    // The token was not consumed by any of that: it still buys one certificate.
    let (good, key) = csr(&web);
    let resp = c
        .sign_certificate(sign_req(good, &tok))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.spiffe_id, web.as_str());
    assert_eq!(resp.cert_chain.len(), 2);
    assert!(!resp.trust_bundle.is_empty());
    assert_eq!(count_certs(&s), before + 1);
    // Used up.
    assert_status(
        c.sign_certificate(sign_req(csr(&web).0, &tok)).await,
        Code::Unauthenticated,
        "already used",
    );
    // Expired.
    let short = token(&s, "web", &["--ttl", "1s"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_status(
        c.sign_certificate(sign_req(csr(&web).0, &short)).await,
        Code::Unauthenticated,
        "expired",
    );
    assert_eq!(count_certs(&s), before + 1);

    // Renewal with the current certificate over mTLS.
    let mut renew = s.grpc(Some((chain(&resp), key))).await.unwrap();
    let (csr2, key2) = csr(&web);
    let resp2 = renew
        .sign_certificate(sign_req(csr2, ""))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(resp2.serial, resp.serial);
    // ... but only for its own identity.
    assert_status(
        renew.sign_certificate(sign_req(csr(&db).0, "")).await,
        Code::PermissionDenied,
        "this credential is for spiffe://ward.internal/ns/default/sa/web",
    );

    // A revoked client certificate cannot renew.
    s.cli_json(&["cert", "revoke", &resp2.serial]).unwrap();
    let mut revoked = s.grpc(Some((chain(&resp2), key2))).await.unwrap();
    let e = revoked
        .sign_certificate(sign_req(csr(&web).0, ""))
        .await
        .expect_err("revoked");
    assert!(
        matches!(e.code(), Code::PermissionDenied | Code::Unauthenticated),
        "{e:?}"
    );
    assert!(e.message().contains("revoked"), "{e:?}");

    // A client certificate from another CA (same trust domain name) fails
    // the TLS handshake itself: nothing is served to it.
    let td = ward_identity::TrustDomain::new("ward.internal").unwrap();
    let now = ward_ca::now();
    let root = ward_ca::CaMaterial::generate_root(&td, Duration::from_secs(3600), now).unwrap();
    let other = ward_ca::SigningAuthority::new(
        &root
            .generate_signing_ca(&td, 1, Duration::from_secs(600), now)
            .unwrap(),
    )
    .unwrap();
    let (ocsr, okey) = csr(&web);
    let v = ward_ca::validate_csr(&ocsr).unwrap();
    let leaf = other
        .issue_svid(&v.spki, &web, &[], Duration::from_secs(60), now)
        .unwrap();
    let mut foreign = s
        .grpc(Some((vec![leaf.der, other.cert_der().clone()], okey)))
        .await
        .unwrap();
    let e = foreign
        .sign_certificate(sign_req(csr(&web).0, ""))
        .await
        .expect_err("a foreign client certificate must fail the handshake");
    assert!(
        matches!(
            e.code(),
            Code::Unavailable | Code::Cancelled | Code::Unknown
        ),
        "refused at the TLS layer, not by the service: {e:?}"
    );

    // Exactly the successful issuances are in the audit log (plus the server's own certificate).
    let audit = s.cli_json(&["audit", "--limit", "1000"]).unwrap();
    let issued: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["action"] == "cert.issue" && e["detail"].as_str().unwrap().contains("/sa/web")
        })
        .collect();
    assert_eq!(issued.len(), 2, "{issued:?}");
    assert_eq!(count_certs(&s), before + 2);
}

#[tokio::test]
async fn watch_stream_follows_bundle_and_revocations() {
    let s = server(&[]);
    s.cli_json(&["service", "add", "web"]).unwrap();
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let mut c = s.grpc(None).await.unwrap();
    assert_status(
        c.watch(WatchRequest::default()).await.map(|_| ()),
        Code::Unauthenticated,
        "client certificate",
    );

    let (req, key) = csr(&web);
    let resp = c
        .sign_certificate(sign_req(req, &token(&s, "web", &[])))
        .await
        .unwrap()
        .into_inner();
    let mut w = s.grpc(Some((chain(&resp), key))).await.unwrap();
    let mut stream = w.watch(WatchRequest::default()).await.unwrap().into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let b = first.bundle.unwrap();
    assert_eq!(b.trust_domain, "ward.internal");
    assert_eq!(b.x509_authorities.len(), 2, "root and signing CA");
    let status = s.cli_json(&["status"]).unwrap();
    assert_eq!(status["connected_proxies"][0]["spiffe_id"], web.as_str());

    s.cli_json(&["ca", "rotate"]).unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(next.version > first.version);
    assert_eq!(
        next.bundle.unwrap().x509_authorities.len(),
        3,
        "the new signing CA is published, the old one kept"
    );

    // A revocation reaches the stream within 5 s.
    let dir = tempfile::tempdir().unwrap();
    let (cp, kp) = (dir.path().join("x.pem"), dir.path().join("x.key"));
    let other = s
        .cli_json(&[
            "cert",
            "issue",
            "--spiffe-id",
            web.as_str(),
            "--out-cert",
            cp.to_str().unwrap(),
            "--out-key",
            kp.to_str().unwrap(),
        ])
        .unwrap();
    let serial = other["serial"].as_str().unwrap().to_string();
    s.cli_json(&["cert", "revoke", &serial]).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let m = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("revocation pushed within 5 s")
            .unwrap()
            .unwrap();
        if m.revoked_serials.contains(&serial) {
            break;
        }
    }
}

/// openssl s_client against the server's TLS port: no certificate, or one
/// the server issued, is served; a certificate from another CA gets a
/// certificate alert at the handshake.
#[test]
fn client_certificates_are_checked_at_the_handshake() {
    let s = server(&[]);
    s.cli_json(&["service", "add", "web"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |f: &str| dir.path().join(f).to_str().unwrap().to_string();
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        "spiffe://ward.internal/ns/default/sa/web",
        "--out-cert",
        &p("ours.pem"),
        "--out-key",
        &p("ours.key"),
    ])
    .unwrap();
    let td = ward_identity::TrustDomain::new("ward.internal").unwrap();
    let now = ward_ca::now();
    let root = ward_ca::CaMaterial::generate_root(&td, Duration::from_secs(3600), now).unwrap();
    let other = ward_ca::SigningAuthority::new(
        &root
            .generate_signing_ca(&td, 1, Duration::from_secs(600), now)
            .unwrap(),
    )
    .unwrap();
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let (ocsr, okey) = csr(&web);
    let v = ward_ca::validate_csr(&ocsr).unwrap();
    let leaf = other
        .issue_svid(&v.spki, &web, &[], Duration::from_secs(60), now)
        .unwrap();
    std::fs::write(
        p("theirs.pem"),
        ward_ca::to_pem("CERTIFICATE", &leaf.der)
            + &ward_ca::to_pem("CERTIFICATE", other.cert_der()),
    )
    .unwrap();
    std::fs::write(
        p("theirs.key"),
        ward_ca::to_pem("PRIVATE KEY", okey.secret_der()),
    )
    .unwrap();

    let s_client = |cert: Option<&str>| {
        let mut cmd = std::process::Command::new("openssl");
        cmd.args(["s_client", "-connect", &s.addr, "-CAfile"])
            .arg(s.bundle_path())
            .arg("-quiet");
        if let Some(c) = cert {
            cmd.args([
                "-cert",
                &p(&format!("{c}.pem")),
                "-key",
                &p(&format!("{c}.key")),
            ]);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: ward\r\nConnection: close\r\n\r\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for cert in [None, Some("ours")] {
        let (out, err) = s_client(cert);
        assert!(out.starts_with("HTTP/1.1 200"), "{cert:?}: {out}\n{err}");
    }
    let (out, err) = s_client(Some("theirs"));
    assert!(!out.contains("HTTP/1.1"), "served: {out}");
    assert!(
        err.contains("alert certificate unknown") || err.contains("alert bad certificate"),
        "{err}"
    );
}

fn sid(svc: &str) -> String {
    format!("spiffe://ward.internal/ns/default/sa/{svc}")
}

/// A gRPC client with a certificate of `svc`.
async fn client_of(
    s: &ward_testkit::WardServer,
    svc: &str,
) -> ward_api::v1::identity_client::IdentityClient<tonic::transport::Channel> {
    let tok = token(s, svc, &[]);
    let (req, key) = csr(&id(&sid(svc)));
    let resp = s
        .grpc(None)
        .await
        .unwrap()
        .sign_certificate(sign_req(req, &tok))
        .await
        .unwrap()
        .into_inner();
    s.grpc(Some((chain(&resp), key))).await.unwrap()
}

fn watch_req(advertise: &str, upstreams: &[String]) -> WatchRequest {
    WatchRequest {
        advertise: advertise.into(),
        upstreams: upstreams.to_vec(),
        ..Default::default()
    }
}

/// The next message within `ms`, if any.
async fn next_within(
    stream: &mut tonic::Streaming<ward_api::v1::WatchResponse>,
    ms: u64,
) -> Option<ward_api::v1::WatchResponse> {
    tokio::time::timeout(Duration::from_millis(ms), stream.message())
        .await
        .ok()
        .map(|m| m.unwrap().unwrap())
}

/// A watch stream carries the endpoints of the watcher's upstreams and the
/// policies of its own service only, and a change that concerns neither
/// sends it nothing.
#[tokio::test]
async fn a_watcher_gets_only_what_concerns_it() {
    let s = server(&[]);
    for svc in ["a", "b", "c"] {
        s.cli_json(&["service", "add", svc]).unwrap();
    }
    let (mut ca, mut cb, mut cc) = (
        client_of(&s, "a").await,
        client_of(&s, "b").await,
        client_of(&s, "c").await,
    );
    let _b = cb
        .watch(watch_req("127.0.0.1:2", &[]))
        .await
        .unwrap()
        .into_inner();
    let _c = cc
        .watch(watch_req("127.0.0.1:3", &[]))
        .await
        .unwrap()
        .into_inner();
    let mut a = ca
        .watch(watch_req("127.0.0.1:1", &[sid("b")]))
        .await
        .unwrap()
        .into_inner();
    let first = next_within(&mut a, 5000).await.expect("the first state");
    let ids: Vec<_> = first
        .endpoints
        .iter()
        .map(|e| e.spiffe_id.clone())
        .collect();
    assert_eq!(ids, [sid("b")], "only its upstream, not c nor itself");
    while next_within(&mut a, 300).await.is_some() {}

    // Another service's policy, another service's endpoint: nothing sent.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    let policy = |name: &str, svc: &str| {
        std::fs::write(
            &f,
            format!("apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name} }}\nspec:\n  selector: {{ service: {svc} }}\n  action: DENY\n  rules: [{{}}]\n"),
        )
        .unwrap();
        s.cli_json(&["policy", "apply", "-f", f.to_str().unwrap()])
            .unwrap();
    };
    policy("c-only", "c");
    let mut c2 = client_of(&s, "c").await;
    let _c2 = c2
        .watch(watch_req("127.0.0.1:4", &[]))
        .await
        .unwrap()
        .into_inner();
    if let Some(m) = next_within(&mut a, 1000).await {
        panic!("sent a change that does not concern it: {m:?}");
    }

    // Its upstream's endpoint, its own service's policy: sent.
    let mut b2 = client_of(&s, "b").await;
    let _b2 = b2
        .watch(watch_req("127.0.0.1:5", &[]))
        .await
        .unwrap()
        .into_inner();
    let m = next_within(&mut a, 5000).await.expect("b's new endpoint");
    assert_eq!(m.endpoints[0].addresses, ["127.0.0.1:2", "127.0.0.1:5"]);
    assert!(m.policies_json.is_empty());
    policy("a-only", "a");
    let m = next_within(&mut a, 5000).await.expect("its own policy");
    assert_eq!(m.policies_json.len(), 1);
    assert!(m.policies_json[0].contains("a-only"));
}
