//! The admin REST API refuses callers without the admin token, the same
//! way whether or not the resource exists.
mod common;

use common::*;

#[tokio::test]
async fn admin_api_requires_the_token_and_leaks_nothing() {
    let s = server(&[]);
    s.cli_json(&["service", "add", "web"]).unwrap();
    let http = s.https().unwrap();
    let paths = [
        ("GET", "/api/v1/services"),
        ("GET", "/api/v1/services/default/web"),
        ("GET", "/api/v1/services/default/does-not-exist"),
        ("DELETE", "/api/v1/services/default/web"),
        ("GET", "/api/v1/certificates/00aa"),
        ("POST", "/api/v1/certificates/00aa/revoke"),
        ("POST", "/api/v1/ca/rotate"),
        ("GET", "/api/v1/no-such-endpoint"),
        ("GET", "/api/v1/audit"),
    ];
    let mut bodies = std::collections::HashSet::new();
    for (method, path) in paths {
        for auth in [
            None,
            Some("wrong"),
            Some(""),
            Some("wat_0000000000000000000000000000000000000000000"),
        ] {
            let mut req = http.request(method.parse().unwrap(), format!("{}{path}", s.url));
            if let Some(t) = auth {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with {auth:?}");
            assert_eq!(resp.headers()["www-authenticate"], "Bearer realm=\"ward\"");
            bodies.insert(resp.text().await.unwrap());
        }
    }
    assert_eq!(
        bodies.len(),
        1,
        "one identical refusal for every path: {bodies:?}"
    );
    // Nothing was changed by the refused calls.
    assert_eq!(
        s.cli_json(&["service", "list"])
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // With the token: real answers.
    let token = s.admin_token();
    let r = http
        .get(format!("{}/api/v1/services/default/does-not-exist", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{}/api/v1/services/default/web", s.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Malformed bodies get a clear 4xx, and the server keeps serving.
    let r = http
        .post(format!("{}/api/v1/services", s.url))
        .bearer_auth(&token)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error());
    let r = http
        .post(format!("{}/api/v1/certificates", s.url))
        .bearer_auth(&token)
        .json(&serde_json::json!({"csr": "AAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("PKCS#10"));
    // Public endpoints need no token.
    for p in ["/healthz", "/readyz", "/bundle", "/bundle.pem", "/metrics"] {
        assert_eq!(
            http.get(format!("{}{p}", s.url))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "{p}"
        );
    }
    let bundle: serde_json::Value = http
        .get(format!("{}/bundle", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bundle["keys"][0]["use"], "x509-svid");
    let metrics = http
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("ward_admin_unauthorized_total 36"),
        "{metrics}"
    );
}

#[tokio::test]
async fn admin_client_certificate_is_accepted_until_revoked() {
    let s = server(&[]);
    let admin_cert = s.issue("spiffe://ward.internal/ward/admin", &[]).unwrap();
    let admin = s.https_with_cert(Some(admin_cert.pair())).unwrap();
    let r = admin
        .get(format!("{}/api/v1/services", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // A workload certificate is not an admin credential.
    let workload = s
        .issue("spiffe://ward.internal/ns/default/sa/web", &[])
        .unwrap();
    let workload = s.https_with_cert(Some(workload.pair())).unwrap();
    assert_eq!(
        workload
            .get(format!("{}/api/v1/services", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // The server's own identity cannot be issued.
    let dir = tempfile::tempdir().unwrap();
    let (wc, wk) = (dir.path().join("w.pem"), dir.path().join("w.key"));
    let out = s.cli(&[
        "cert",
        "issue",
        "--spiffe-id",
        "spiffe://ward.internal/ward/server",
        "--out-cert",
        wc.to_str().unwrap(),
        "--out-key",
        wk.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));

    // Revoked: refused on new connections.
    s.cli_json(&["cert", "revoke", admin_cert.out["serial"].as_str().unwrap()])
        .unwrap();
    let revoked = s.https_with_cert(Some(admin_cert.pair())).unwrap();
    assert_eq!(
        revoked
            .get(format!("{}/api/v1/services", s.url))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

/// Authentication schemes are case-insensitive (RFC 7235 §2.1): `bearer`
/// and `BEARER` reach the admin API, `basic` the token endpoint.
#[tokio::test]
async fn auth_schemes_in_any_case() {
    let s = server(&[]);
    s.cli_json(&["service", "add", "web"]).unwrap();
    let http = s.https().unwrap();
    let token = s.admin_token();
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let r = http
            .get(format!("{}/api/v1/services", s.url))
            .header("authorization", format!("{scheme} {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{scheme}");
    }
    // A scheme that only starts like one is not it.
    let r = http
        .get(format!("{}/api/v1/services", s.url))
        .header("authorization", format!("Bearerx {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let secret = s
        .secret_client("web-client", "web", &["--audience", "payments"])
        .unwrap();
    use base64::Engine;
    let creds = base64::engine::general_purpose::STANDARD.encode(format!("web-client:{secret}"));
    for scheme in ["Basic", "basic", "BASIC"] {
        let r = http
            .post(format!("{}/oauth2/token", s.url))
            .header("authorization", format!("{scheme} {creds}"))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{scheme}: {body}");
        assert!(body.contains("access_token"), "{body}");
    }
}
