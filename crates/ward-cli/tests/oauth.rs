//! The OAuth2 authorization server end to end: the ward CLI and clients
//! nobody here wrote (authlib, requests-oauthlib) get tokens with every
//! client authentication method; PyJWT and jwcrypto verify them; the CLI
//! verifies offline; introspection, revocation and key rotation behave.
mod common;

use std::process::Command;

use common::*;
use serde_json::Value;

fn python() -> String {
    std::env::var("WARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn token_endpoint_end_to_end() {
    let s = server(&[]);
    for svc in ["frontend", "payments"] {
        s.cli_json(&["service", "add", svc]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/oauth_clients.py"
    );

    // Secret client.
    let secret = s
        .secret_client(
            "fe-secret",
            "frontend",
            &["--scope", "payments:read", "--audience", "payments"],
        )
        .unwrap();
    assert!(secret.len() >= 43, "≥ 256-bit secret");
    let db = std::fs::read(s.data_dir.join("ward.db")).unwrap();
    assert!(
        !db.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "the secret is not stored"
    );

    // private_key_jwt client with a key made by Python's cryptography.
    let out = Command::new(python())
        .args([script, "keygen", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwks = dir.path().join("client-jwks.json");
    std::fs::write(&jwks, &out.stdout).unwrap();
    s.cli_json(&[
        "client",
        "create",
        "fe-pkj",
        "--service",
        "frontend",
        "--auth",
        "private_key_jwt",
        "--audience",
        "payments",
        "--jwks",
        jwks.to_str().unwrap(),
    ])
    .unwrap();

    // tls_client_auth client with a ward certificate.
    s.cli_json(&[
        "client",
        "create",
        "fe-mtls",
        "--service",
        "frontend",
        "--auth",
        "tls_client_auth",
        "--audience",
        "payments",
    ])
    .unwrap();
    let (cert, key) = (dir.path().join("fe.pem"), dir.path().join("fe.key"));
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        "spiffe://ward.internal/ns/default/sa/frontend",
        "--out-cert",
        cert.to_str().unwrap(),
        "--out-key",
        key.to_str().unwrap(),
    ])
    .unwrap();

    // Third-party clients and verifiers.
    let issuer = s.url.clone();
    let out = Command::new(python())
        .args([
            script,
            "run",
            &issuer,
            s.bundle_path().to_str().unwrap(),
            "payments",
            "fe-secret",
            &secret,
            "fe-pkj",
            dir.path().to_str().unwrap(),
            "fe-mtls",
            cert.to_str().unwrap(),
            key.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The ward CLI: get and verify offline against the JWKS URL.
    let got = s
        .cli_json(&[
            "token",
            "get",
            "--client",
            "fe-secret",
            "--client-secret",
            &secret,
            "--audience",
            "payments",
        ])
        .unwrap();
    let token = got["access_token"].as_str().unwrap().to_string();
    let jwks_url = format!("{issuer}/oauth2/jwks");
    let ok = s.cli(&[
        "token",
        "verify",
        "--jwks",
        &jwks_url,
        "--issuer",
        &issuer,
        "--audience",
        "payments",
        &token,
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let bad = s.cli(&[
        "token",
        "verify",
        "--jwks",
        &jwks_url,
        "--issuer",
        &issuer,
        "--audience",
        "ledger",
        &token,
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wrong audience"));

    // mTLS-bound token: cnf.x5t#S256 is the certificate's SHA-256.
    let bound = s
        .cli_json(&[
            "token",
            "get",
            "--client",
            "fe-mtls",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ])
        .unwrap();
    let claims = s
        .cli_json(&[
            "token",
            "verify",
            "--jwks",
            &jwks_url,
            bound["access_token"].as_str().unwrap(),
        ])
        .unwrap();
    let leaf = ward_ca::parse_pem_certs(&std::fs::read(&cert).unwrap())
        .unwrap()
        .remove(0);
    let want = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &leaf))
    };
    assert_eq!(claims["claims"]["cnf"]["x5t#S256"], want.as_str());

    // RFC 6749 errors.
    let http = s.https().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let post = |form: Vec<(&'static str, String)>, user: Option<(&'static str, String)>| {
            let mut r = http.post(format!("{issuer}/oauth2/token")).form(&form);
            if let Some((u, p)) = user {
                r = r.basic_auth(u, Some(p));
            }
            r.send()
        };
        let r = post(
            vec![("grant_type", "client_credentials".into())],
            Some(("fe-secret", "wrong".into())),
        )
        .await
        .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic"));
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_client");
        let r = post(
            vec![("grant_type", "password".into())],
            Some(("fe-secret", secret.clone())),
        )
        .await
        .unwrap();
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"],
            "unsupported_grant_type"
        );
        let r = post(
            vec![
                ("grant_type", "client_credentials".into()),
                ("scope", "payments:write".into()),
            ],
            Some(("fe-secret", secret.clone())),
        )
        .await
        .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_scope");
        let r = post(
            vec![
                ("grant_type", "client_credentials".into()),
                ("audience", "ledger".into()),
            ],
            Some(("fe-secret", secret.clone())),
        )
        .await
        .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_target");
        let r = post(vec![], Some(("fe-secret", secret.clone())))
            .await
            .unwrap();
        assert_eq!(r.json::<Value>().await.unwrap()["error"], "invalid_request");

        // Introspection: active, then revoked; foreign tokens inactive.
        let intro = |t: String| {
            http.post(format!("{issuer}/oauth2/introspect"))
                .basic_auth("fe-secret", Some(secret.clone()))
                .form(&[("token", t)])
                .send()
        };
        assert_eq!(
            intro(token.clone())
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["active"],
            true
        );
        let foreign = ward_jwt::SigningKey::generate(ward_jwt::Algorithm::ES256, "x")
            .unwrap()
            .sign(
                "at+jwt",
                &serde_json::json!({"iss": issuer, "exp": 4_000_000_000i64}),
            )
            .unwrap();
        assert_eq!(
            intro(foreign).await.unwrap().json::<Value>().await.unwrap()["active"],
            false
        );
        let r = http
            .post(format!("{issuer}/oauth2/revoke"))
            .basic_auth("fe-secret", Some(secret.clone()))
            .form(&[("token", token.clone())])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            intro(token.clone())
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()["active"],
            false
        );
    });

    // Signing-key rotation: tokens from before and after both verify.
    s.cli_json(&["signing-key", "rotate"]).unwrap();
    let after = s
        .cli_json(&[
            "token",
            "get",
            "--client",
            "fe-secret",
            "--client-secret",
            &secret,
        ])
        .unwrap();
    for t in [
        bound["access_token"].as_str().unwrap(),
        after["access_token"].as_str().unwrap(),
    ] {
        let v = s.cli(&[
            "token", "verify", "--jwks", &jwks_url, "--issuer", &issuer, t,
        ]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
    }
    let keys = s.cli_json(&["signing-key", "list"]).unwrap();
    let states: Vec<&str> = keys
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"retired") && states.contains(&"active") && states.contains(&"next"),
        "{states:?}"
    );
    let audit = s
        .cli_json(&["audit", "--limit", "1000"])
        .unwrap()
        .to_string();
    assert!(
        audit.contains("token.issue")
            && audit.contains("token.revoke")
            && audit.contains("signing-key.rotate")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_rotation_while_issuing_and_verifying() {
    use std::time::{Duration, Instant};
    let s = server(&["--token-ttl", "3s", "--svid-ttl", "20s"]);
    s.cli_json(&["service", "add", "frontend"]).unwrap();
    let secret = s.secret_client("fe", "frontend", &[]).unwrap();
    let http = s.https().unwrap();
    let issuer = s.url.clone();
    let get = || async { s.token("fe", &secret, &[]).await.unwrap() };
    let mut cache = ward_jwt::JwksCache::from_url(http.clone(), &format!("{issuer}/oauth2/jwks"));
    cache.cooldown = Duration::from_millis(100);
    let v = ward_jwt::Validation::access_token(&issuer, "frontend");
    let first = get().await;
    cache.verify(&first, &v).await.unwrap();

    let start = Instant::now();
    let (mut verified, mut rotations) = (0, 0);
    while start.elapsed() < Duration::from_secs(6) {
        if (rotations == 0 && start.elapsed() > Duration::from_millis(1500))
            || (rotations == 1 && start.elapsed() > Duration::from_millis(3500))
        {
            s.cli_json(&["signing-key", "rotate"]).unwrap();
            rotations += 1;
        }
        let t = get().await;
        cache.verify(&t, &v).await.unwrap_or_else(|e| {
            panic!("a valid token was rejected after {rotations} rotations: {e}")
        });
        verified += 1;
    }
    assert_eq!(rotations, 2);
    assert!(verified > 20, "{verified}");

    // The first token has expired (3 s lifetime) while its key is still
    // published: introspection says inactive.
    let intro: Value = http
        .post(format!("{issuer}/oauth2/introspect"))
        .basic_auth("fe", Some(secret.clone()))
        .form(&[("token", first.clone())])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(intro["active"], false, "expired token");

    // The key that signed the first token is dropped once every token it
    // signed has expired (3 s lifetime + 60 s leeway); then that token is
    // refused for its key, whatever the clock says.
    let part = |i: usize| -> Value {
        use base64::Engine;
        let p = first.split('.').nth(i).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    let kid = part(0)["kid"].as_str().unwrap().to_string();
    let iat = part(1)["iat"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(100);
    loop {
        let keys = s.cli_json(&["signing-key", "list"]).unwrap();
        if !keys
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"] == kid.as_str())
        {
            break;
        }
        assert!(Instant::now() < deadline, "retired key never dropped");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let jwks = http
        .get(format!("{issuer}/oauth2/jwks"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let set = ward_jwt::JwkSet::from_json(&jwks).unwrap();
    let while_valid = ward_jwt::Validation::access_token(&issuer, "frontend").at(iat + 1);
    assert_eq!(
        ward_jwt::verify(&first, &set, &while_valid),
        Err(ward_jwt::JwtError::UnknownKey)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_source_caches_and_sends_one_request_at_a_time() {
    use std::sync::Arc;
    use ward_jwt::source::{ClientAuth, TokenSource};
    let s = server(&[]);
    s.cli_json(&["service", "add", "frontend"]).unwrap();
    let secret = s.secret_client("fe", "frontend", &[]).unwrap();
    let key = Arc::new(ward_jwt::SigningKey::generate(ward_jwt::Algorithm::ES256, "c1").unwrap());
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({ "keys": [key.public_jwk()] }).to_string(),
    )
    .unwrap();
    s.cli_json(&[
        "client",
        "create",
        "fe-pkj",
        "--service",
        "frontend",
        "--auth",
        "private_key_jwt",
        "--jwks",
        jwks.to_str().unwrap(),
    ])
    .unwrap();
    let url = format!("{}/oauth2/token", s.url);
    let jwks_url = format!("{}/oauth2/jwks", s.url);
    for (name, auth) in [
        (
            "fe",
            ClientAuth::Secret {
                id: "fe".into(),
                secret: secret.clone(),
            },
        ),
        (
            "fe-pkj",
            ClientAuth::PrivateKeyJwt {
                id: "fe-pkj".into(),
                key: key.clone(),
            },
        ),
    ] {
        let source = Arc::new(TokenSource::new(s.https().unwrap(), &url, auth, None, None));
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let source = source.clone();
            tasks.push(tokio::spawn(async move { source.token().await.unwrap() }));
        }
        let mut tokens = std::collections::HashSet::new();
        for t in tasks {
            tokens.insert(t.await.unwrap());
        }
        assert_eq!(
            tokens.len(),
            1,
            "{name}: 20 concurrent callers share one token"
        );
        let token = tokens.into_iter().next().unwrap();
        assert_eq!(source.token().await.unwrap(), token, "{name}: cached");
        let v = s.cli(&[
            "token",
            "verify",
            "--jwks",
            &jwks_url,
            "--audience",
            "frontend",
            &token,
        ]);
        assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stderr));
        let audit = s.cli_json(&["audit", "--limit", "1000"]).unwrap();
        let issued = audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == "token.issue" && e["actor"] == name)
            .count();
        assert_eq!(issued, 1, "{name}: one request reached the server");
    }
    // A refused client gets the server's error.
    let bad = TokenSource::new(
        s.https().unwrap(),
        &url,
        ClientAuth::Secret {
            id: "fe".into(),
            secret: "wrong".into(),
        },
        None,
        None,
    );
    assert!(
        matches!(bad.token().await, Err(ward_jwt::source::TokenError::Refused { error, .. }) if error == "invalid_client")
    );
}

/// A service that verifies tokens with the tower layer and follows ward's
/// revocation feed (the watch stream) refuses a revoked token within 5 s,
/// while other tokens keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_refused_by_a_layer_following_the_feed() {
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    use tower::{Layer, ServiceExt};
    use ward_jwt::tower::{JwtAuthLayer, RevocationList};

    let s = server(&[]);
    for svc in ["payments", "frontend"] {
        s.cli_json(&["service", "add", svc]).unwrap();
    }
    let secret = s
        .secret_client("fe", "frontend", &["--audience", "payments"])
        .unwrap();
    let (chain, key) = s
        .issue("spiffe://ward.internal/ns/default/sa/payments", &[])
        .unwrap()
        .pair();

    // The service side: revocations from the feed, keys from the JWKS.
    let revoked = RevocationList::default();
    let trust = ward_tls::ControlPlaneTrust::fingerprint(&s.fingerprint).unwrap();
    let feed = {
        let (revoked, addr) = (revoked.clone(), s.addr.clone());
        let updates = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = updates.clone();
        tokio::spawn(async move {
            let tls = || {
                ward_tls::client_config(trust.clone(), Some((chain.clone(), key.clone_key())), &[])
                    .map_err(|e| e.to_string())
            };
            ward_api::follow(&addr, tls, Default::default(), |u| {
                if let Some(u) = u {
                    revoked.set(u.revoked_token_ids.clone());
                    seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            })
            .await
        });
        updates
    };
    let http = s.https().unwrap();
    let issuer = s.url.clone();
    let layer = JwtAuthLayer::new(
        Arc::new(ward_jwt::JwksCache::from_url(
            http.clone(),
            &format!("{issuer}/oauth2/jwks"),
        )),
        ward_jwt::Validation::access_token(&issuer, "payments"),
    )
    .with_revocations(revoked.clone());
    let app = layer.layer(tower::service_fn(|_req: http::Request<String>| async {
        Ok::<_, std::convert::Infallible>(http::Response::new("paid".to_string()))
    }));
    let call = |token: String| {
        let app = app.clone();
        async move {
            let req = http::Request::builder()
                .header("authorization", format!("Bearer {token}"))
                .body(String::new())
                .unwrap();
            app.oneshot(req).await.unwrap().status()
        }
    };
    let get = || async {
        s.token("fe", &secret, &[("audience", "payments")])
            .await
            .unwrap()
    };
    let (doomed, kept) = (get().await, get().await);
    assert!(
        ward_testkit::wait_until(Duration::from_secs(10), || {
            let feed = feed.clone();
            async move { feed.load(std::sync::atomic::Ordering::SeqCst) > 0 }
        })
        .await,
        "the feed delivers a first update"
    );
    assert_eq!(call(doomed.clone()).await, http::StatusCode::OK);

    let r = http
        .post(format!("{issuer}/oauth2/revoke"))
        .basic_auth("fe", Some(secret.clone()))
        .form(&[("token", doomed.clone())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let revoked_at = Instant::now();
    loop {
        if call(doomed.clone()).await == http::StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            revoked_at.elapsed() < Duration::from_secs(5),
            "the revoked token was still accepted after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("revocation enforced after {:?}", revoked_at.elapsed());
    assert_eq!(
        call(kept).await,
        http::StatusCode::OK,
        "other tokens unaffected"
    );
}

/// `ward token get` with private_key_jwt (a SEC1 key as openssl writes
/// it), against a server whose issuer is set with --issuer, as behind a
/// load balancer: tokens carry that issuer, the metadata names it, and the
/// assertion's audience is the token endpoint the metadata gives.
#[test]
fn private_key_jwt_from_the_cli_and_a_configured_issuer() {
    let issuer = "https://ward.example.com";
    let s = server(&["--issuer", issuer]);
    for svc in ["frontend", "payments"] {
        s.cli_json(&["service", "add", svc]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.key");
    let out = Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let pkcs8 = ward_ca::parse_pem_key(&std::fs::read(&key).unwrap()).unwrap();
    let signer =
        ward_jwt::SigningKey::from_pkcs8(ward_jwt::Algorithm::ES256, "k1", &pkcs8).unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::json!({ "keys": [signer.public_jwk()] }).to_string(),
    )
    .unwrap();
    s.cli_json(&[
        "client",
        "create",
        "fe",
        "--service",
        "frontend",
        "--auth",
        "private_key_jwt",
        "--audience",
        "payments",
        "--jwks",
        jwks.to_str().unwrap(),
    ])
    .unwrap();

    let meta: Value = s
        .cli_json(&[
            "token",
            "get",
            "--client",
            "fe",
            "--assertion-key",
            key.to_str().unwrap(),
            "--assertion-kid",
            "k1",
        ])
        .unwrap();
    let claims = |token: &str| -> Value {
        use base64::Engine;
        let p = token.split('.').nth(1).unwrap();
        serde_json::from_slice(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .unwrap(),
        )
        .unwrap()
    };
    let c = claims(meta["access_token"].as_str().unwrap());
    assert_eq!(c["iss"], issuer);
    assert_eq!(c["client_id"], "fe");
    assert_eq!(c["aud"], "payments");
    // Without a kid the server tries the client's keys; each call signs a
    // fresh assertion, so a second one is not a replay.
    for _ in 0..2 {
        let t = s
            .cli_json(&[
                "token",
                "get",
                "--client",
                "fe",
                "--assertion-key",
                key.to_str().unwrap(),
            ])
            .unwrap();
        assert_eq!(claims(t["access_token"].as_str().unwrap())["iss"], issuer);
    }
    // Another key is refused, with the server's reason.
    let other = dir.path().join("other.key");
    Command::new("openssl")
        .args([
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
        ])
        .arg(&other)
        .output()
        .unwrap();
    let out = s.cli(&[
        "token",
        "get",
        "--client",
        "fe",
        "--assertion-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("invalid_client"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The metadata names the configured issuer and its endpoints.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let m: Value = rt.block_on(async {
        s.https()
            .unwrap()
            .get(format!("{}/.well-known/oauth-authorization-server", s.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(m["issuer"], issuer);
    assert_eq!(m["token_endpoint"], format!("{issuer}/oauth2/token"));

    // An issuer RFC 8414 does not allow is refused at start.
    let out = Command::new(bin())
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--issuer",
            "http://ward.example.com",
            "--data-dir",
        ])
        .arg(dir.path().join("d2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--issuer"));
}
