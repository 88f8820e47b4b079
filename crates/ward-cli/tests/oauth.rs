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
    let c = s
        .cli_json(&[
            "client",
            "create",
            "fe-secret",
            "--service",
            "frontend",
            "--auth",
            "client_secret_basic",
            "--scope",
            "payments:read",
            "--audience",
            "payments",
        ])
        .unwrap();
    let secret = c["client_secret"].as_str().unwrap().to_string();
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
