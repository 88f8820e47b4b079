//! Authorization and request authentication end to end, with the real
//! binary: HTTP fields per request on one connection, a claim-based rule,
//! invalid tokens refused with 401 while token-less requests are judged by
//! policy, a policy change closing a TCP connection it now denies, a
//! refused apply leaving the previous policies in force, and `ward policy
//! check` agreeing with the sidecar on every request sent.
mod mesh_common;

use std::time::{Duration, Instant};

use base64::Engine;
use mesh_common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_testkit::{wait_until, WardServer};

const PAYMENTS_POLICY: &str = r#"
apiVersion: ward/v1
kind: AuthorizationPolicy
metadata: { name: payments-access }
spec:
  selector: { service: payments }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["ward.internal/ns/default/sa/frontend"] } }]
    to: [{ operation: { methods: ["GET"], paths: ["/pay/*"] } }]
  - from: [{ source: { principals: ["ward.internal/ns/default/sa/frontend"] } }]
    to: [{ operation: { methods: ["POST"], paths: ["/pay/*"] } }]
    when: [{ key: "request.auth.claims[scope]", values: ["payments:write"] }]
---
apiVersion: ward/v1
kind: AuthorizationPolicy
metadata: { name: ledger-from-frontend }
spec:
  selector: { service: ledger }
  action: ALLOW
  rules:
  - from: [{ source: { principals: ["ward.internal/ns/default/sa/frontend"] } }]
"#;

/// One HTTP/1.1 request on an open connection; returns the status.
async fn send(
    conn: &mut tokio::net::TcpStream,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> u16 {
    let auth = token
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nhost: payments\r\n{auth}content-length: 0\r\n\r\n");
    conn.write_all(req.as_bytes()).await.unwrap();
    // Read the head, then exactly content-length bytes of body.
    let mut buf = Vec::new();
    let head_end = loop {
        let mut b = [0u8; 4096];
        let n = conn.read(&mut b).await.unwrap();
        assert!(n > 0, "connection closed mid-response");
        buf.extend_from_slice(&b[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status: u16 = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let mut b = [0u8; 4096];
        let n = conn.read(&mut b).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&b[..n]);
    }
    status
}

/// A control plane, the payments app with its sidecar, and a frontend
/// sidecar with payments as its upstream, ready.
async fn payments_and_frontend() -> (WardServer, App, Sidecar, Sidecar) {
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    let pay = app("payments");
    let pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let fe = frontend_for_payments(&s, 1).await;
    (s, pay, pay_sc, fe)
}

async fn token(s: &WardServer, secret: &str, scope: &str, audience: &str) -> String {
    s.token("fe", secret, &[("scope", scope), ("audience", audience)])
        .await
        .unwrap()
}

fn claims_of(token: &str) -> String {
    let p = token.split('.').nth(1).unwrap();
    String::from_utf8(
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(p)
            .unwrap(),
    )
    .unwrap()
}

/// `ward policy check` for the request the test just sent.
fn check(s: &WardServer, port: &str, method: &str, token: Option<&str>) -> String {
    let mut args = vec![
        "policy",
        "check",
        "--from",
        "ns/default/sa/frontend",
        "--to",
        "payments",
        "--method",
        method,
        "--path",
        "/pay/1",
        "--port",
        port,
    ];
    let claims = token.map(claims_of);
    if let Some(c) = &claims {
        args.extend(["--claims", c.as_str()]);
    }
    let out = s.cli(&args);
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
    let decision = v["decision"].as_str().unwrap().to_string();
    // Exit status: 0 allowed, 1 denied.
    assert_eq!(
        out.status.code(),
        Some(if decision == "allow" { 0 } else { 1 })
    );
    decision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_rules_tokens_tcp_closing_and_check_agree() {
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    s.cli_json(&["service", "add", "ledger", "--protocol", "tcp"])
        .unwrap();
    let pay = app("payments");
    let ledger_app = app("ledger");
    let pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let ledger_sc = sidecar(&s, "ledger", &ledger_app.tcp, &["--app-protocol", "tcp"]);
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:1",
        &[
            "--upstream",
            "payments=127.0.0.1:0",
            "--upstream",
            "ledger=127.0.0.1:0,protocol=tcp",
        ],
    );
    wait_for_endpoint(&fe, "payments").await;
    wait_for_endpoint(&fe, "ledger").await;
    apply(&s, PAYMENTS_POLICY);
    let secret = s
        .secret_client(
            "fe",
            "frontend",
            &[
                "--scope",
                "payments:read",
                "--scope",
                "payments:write",
                "--audience",
                "payments",
                "--audience",
                "ledger",
            ],
        )
        .unwrap();
    let write = token(&s, &secret, "payments:read payments:write", "payments").await;
    let read = token(&s, &secret, "payments:read", "payments").await;
    let other_aud = token(&s, &secret, "payments:write", "ledger").await;
    let port = pay_sc.inbound.rsplit(':').next().unwrap().to_string();

    // The policy reaches the sidecar.
    let upstream = fe.upstream("payments.default");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            let mut c = tokio::net::TcpStream::connect(&upstream).await.unwrap();
            send(&mut c, "GET", "/pay/1", None).await == 200
        })
        .await
    );

    // Every case on one keep-alive connection from the app: the decision is
    // per request, and `ward policy check` agrees with each.
    let mut conn = tokio::net::TcpStream::connect(&upstream).await.unwrap();
    let cases: [(&str, Option<&str>, u16, &str); 6] = [
        (
            "GET",
            None,
            200,
            "GET without a token: allowed by the GET rule",
        ),
        ("POST", None, 403, "POST without a token: no rule matches"),
        ("POST", Some(&write), 200, "POST with scope payments:write"),
        (
            "POST",
            Some(&read),
            403,
            "POST with scope payments:read only",
        ),
        ("GET", Some(&read), 200, "GET with a token"),
        ("GET", None, 200, "GET again on the same connection"),
    ];
    for (method, tok, want, what) in cases {
        let got = send(&mut conn, method, "/pay/1", tok).await;
        assert_eq!(got, want, "{what}");
        let decision = check(&s, &port, method, tok);
        assert_eq!(
            decision,
            if want == 200 { "allow" } else { "deny" },
            "ward policy check disagrees with the sidecar: {what}"
        );
    }
    // Present but invalid tokens are refused before policy, on the same
    // connection, which stays usable.
    for (bad, what) in [
        ("abc.def.ghi".to_string(), "garbage"),
        (other_aud.clone(), "a token for another audience"),
        (
            format!("{}x", &write[..write.len() - 1]),
            "a forged signature",
        ),
    ] {
        assert_eq!(
            send(&mut conn, "GET", "/pay/1", Some(&bad)).await,
            401,
            "{what}"
        );
    }
    assert_eq!(send(&mut conn, "GET", "/pay/1", None).await, 200);

    // A revoked token is refused once the revocation reaches the sidecar.
    let r = s
        .https()
        .unwrap()
        .post(format!("{}/oauth2/revoke", s.url))
        .basic_auth("fe", Some(&secret))
        .form(&[("token", write.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    loop {
        let mut c = tokio::net::TcpStream::connect(&upstream).await.unwrap();
        if send(&mut c, "POST", "/pay/1", Some(&write)).await == 401 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "revoked token still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Decisions are counted per policy.
    let metrics = reqwest::get(format!("http://{}/metrics", pay_sc.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ward_authz_decisions_total{")
                && l.contains("policy=\"default/payments-access\"")
                && l.contains("decision=\"allow\"")),
        "{metrics}"
    );

    // TCP: an open connection that a new policy denies is closed.
    let mut tcp = tokio::net::TcpStream::connect(fe.upstream("ledger.default"))
        .await
        .unwrap();
    tcp.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    tcp.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");

    // An HTTP field in a policy for the TCP service is refused, and the
    // policies in force stay (the connection keeps working).
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: ledger-get }\nspec:\n  selector: { service: ledger }\n  rules:\n  - to: [{ operation: { methods: [GET] } }]\n",
    )
    .unwrap();
    let out = s.cli(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml") && err.contains("TCP service"),
        "{err}"
    );
    let listed = s.cli_json(&["policy", "list"]).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
    tcp.write_all(b"pong").await.unwrap();
    tcp.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");

    apply(
        &s,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: ledger-lockdown }\nspec:\n  selector: { service: ledger }\n  action: DENY\n  rules:\n  - from: [{ source: { principals: [\"ward.internal/ns/default/sa/frontend\"] } }]\n",
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        let mut b = [0u8; 16];
        loop {
            match tcp.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the denied TCP connection stayed open");
    // ward policy check agrees for the TCP connection too.
    let out = s.cli(&[
        "policy",
        "check",
        "--from",
        "ns/default/sa/frontend",
        "--to",
        "ledger",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("default/ledger-lockdown"));
    let _ = (pay_sc, ledger_sc, pay, ledger_app);
}

/// A RequestAuthentication for another issuer (keys inline): its tokens
/// are validated by the sidecar, satisfy `requestPrincipals`, have a claim
/// copied into a header (a caller's forged copy removed) and are not
/// forwarded; ward's own tokens still work; unknown issuers get 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_for_another_issuer() {
    let (s, pay, pay_sc, fe) = payments_and_frontend().await;

    let idp = ward_jwt::SigningKey::generate(ward_jwt::Algorithm::ES256, "idp-1").unwrap();
    let jwks = serde_json::json!({ "keys": [idp.public_jwk()] }).to_string();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let mint = |key: &ward_jwt::SigningKey, iss: &str, aud: &str| {
        key.sign(
            "JWT",
            &serde_json::json!({ "iss": iss, "sub": "alice", "aud": aud, "exp": now + 300,
                                 "iat": now, "groups": ["admins"] }),
        )
        .unwrap()
    };
    let yaml = format!(
        r#"apiVersion: ward/v1
kind: RequestAuthentication
metadata: {{ name: idp }}
spec:
  selector: {{ service: payments }}
  jwtRules:
  - issuer: https://idp.example
    audiences: [payments-api]
    jwks: '{jwks}'
    outputClaimToHeaders: [{{ header: x-user, claim: sub }}, {{ header: x-groups, claim: groups }}]
---
apiVersion: ward/v1
kind: AuthorizationPolicy
metadata: {{ name: admins-only }}
spec:
  selector: {{ service: payments }}
  rules:
  - from: [{{ source: {{ requestPrincipals: ["https://idp.example/*"] }} }}]
    when: [{{ key: "request.auth.claims[groups]", values: [admins] }}]
"#
    );
    apply(&s, &yaml);
    let listed = s.cli_json(&["policy", "list"]).unwrap();
    assert!(
        listed.to_string().contains("RequestAuthentication"),
        "{listed}"
    );

    let http = reqwest::Client::new();
    let url = format!("http://{}/whoami", fe.upstream("payments.default"));
    let good = mint(&idp, "https://idp.example", "payments-api");
    let call = |auth: Option<String>, forged: bool| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let mut r = http.get(&url);
            if let Some(a) = auth {
                r = r.header("authorization", format!("Bearer {a}"));
            }
            if forged {
                r = r.header("x-user", "mallory");
            }
            let resp = r.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or_default())
        }
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            call(Some(good.clone()), false).await.0 == 200
        })
        .await,
        "the RequestAuthentication reached the sidecar"
    );
    let (status, body) = call(Some(good.clone()), true).await;
    assert_eq!(status, 200);
    let headers = &body["headers"];
    assert_eq!(headers["x-user"], "alice", "{body}");
    assert_eq!(headers["x-groups"], "admins", "{body}");
    assert!(
        headers.get("authorization").is_none(),
        "token not forwarded: {body}"
    );

    // No token: judged by policy (requestPrincipals needs one): 403.
    assert_eq!(call(None, true).await.0, 403);
    // Wrong audience, unknown issuer, a key the issuer never published: 401.
    let stranger = ward_jwt::SigningKey::generate(ward_jwt::Algorithm::ES256, "idp-1").unwrap();
    for bad in [
        mint(&idp, "https://idp.example", "somebody-else"),
        mint(&idp, "https://unknown.example", "payments-api"),
        mint(&stranger, "https://idp.example", "payments-api"),
    ] {
        assert_eq!(call(Some(bad), false).await.0, 401);
    }

    // Without tokenType any typ is accepted, as in Istio; with it, only
    // the listed ones, in the sidecar and in `ward policy check`.
    let typed = |typ: &str| {
        idp.sign(
            typ,
            &serde_json::json!({ "iss": "https://idp.example", "sub": "alice", "aud": "payments-api",
                                 "exp": now + 300, "iat": now, "groups": ["admins"] }),
        )
        .unwrap()
    };
    assert_eq!(call(Some(typed("at+jwt")), false).await.0, 200);
    apply(
        &s,
        &yaml.replace(
            "audiences: [payments-api]",
            "audiences: [payments-api]\n    tokenType: JWT",
        ),
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            call(Some(typed("at+jwt")), false).await.0 == 401
        })
        .await,
        "tokenType: JWT still let an at+jwt token through"
    );
    for typ in ["JWT", "jwt", "application/JWT"] {
        assert_eq!(call(Some(typed(typ)), false).await.0, 200, "{typ}");
    }
    let claims = r#"{"iss":"https://idp.example","sub":"alice","groups":["admins"]}"#;
    let check = |typ: &str| {
        s.cli(&[
            "policy",
            "check",
            "--from",
            "frontend",
            "--to",
            "payments",
            "--method",
            "GET",
            "--path",
            "/whoami",
            "--claims",
            claims,
            "--token-type",
            typ,
        ])
    };
    let denied = check("at+jwt");
    assert_eq!(denied.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&denied.stdout).unwrap();
    assert_eq!(v["reason"], "TokenType", "{v}");
    assert_eq!(v["policy"], "default/idp", "{v}");
    assert_eq!(check("JWT").status.code(), Some(0));
    // Refused at apply time: a value that is not a token type, and a
    // tokenType other than at+jwt for ward's own issuer.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(
        &f,
        yaml.replace(
            "audiences: [payments-api]",
            "audiences: [payments-api]\n    tokenType: [JWT, 'not a type']",
        ),
    )
    .unwrap();
    let out = s.cli(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tokenType[1]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(
        &f,
        format!("apiVersion: ward/v1\nkind: RequestAuthentication\nmetadata: {{ name: own }}\nspec:\n  jwtRules:\n  - issuer: {}\n    tokenType: JWT\n", s.url),
    )
    .unwrap();
    let out = s.cli(&["policy", "apply", "-f", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("always typ at+jwt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = (pay_sc, pay);
}

/// An issuer whose keys are fetched from `jwksUri` over HTTPS (a server
/// this test runs, with a certificate from ward's CA): the sidecar fetches
/// them, accepts that issuer's tokens, and keeps accepting them once the
/// issuer's server is gone (keys already fetched stay in use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_authentication_with_jwks_uri() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let (s, pay, pay_sc, fe) = payments_and_frontend().await;

    // The issuer's JWKS endpoint: HTTPS with a certificate for 127.0.0.1.
    s.cli_json(&["service", "add", "idp"]).unwrap();
    let (chain, key) = s
        .issue(
            "spiffe://ward.internal/ns/default/sa/idp",
            &["--dns-name", "127.0.0.1"],
        )
        .unwrap()
        .pair();
    let tls = rustls::ServerConfig::builder_with_provider(ward_tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let idp = ward_jwt::SigningKey::generate(ward_jwt::Algorithm::ES256, "uri-1").unwrap();
    let jwks = serde_json::json!({ "keys": [idp.public_jwk()] }).to_string();
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = {
        let (fetches, jwks) = (fetches.clone(), jwks.clone());
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let (acceptor, fetches, jwks) = (acceptor.clone(), fetches.clone(), jwks.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 8192];
                    let n = tls.read(&mut buf).await.unwrap_or(0);
                    if !String::from_utf8_lossy(&buf[..n]).starts_with("GET /jwks ") {
                        return;
                    }
                    fetches.fetch_add(1, Ordering::SeqCst);
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{jwks}",
                        jwks.len()
                    );
                    let _ = tls.write_all(resp.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        })
    };
    apply(
        &s,
        &format!(
            "apiVersion: ward/v1\nkind: RequestAuthentication\nmetadata: {{ name: uri-idp }}\nspec:\n  selector: {{ service: payments }}\n  jwtRules:\n  - issuer: https://uri-idp.example\n    jwksUri: https://127.0.0.1:{port}/jwks\n---\napiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: token-holders }}\nspec:\n  selector: {{ service: payments }}\n  rules:\n  - from: [{{ source: {{ requestPrincipals: [\"https://uri-idp.example/*\"] }} }}]\n"
        ),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = idp
        .sign(
            "JWT",
            &serde_json::json!({ "iss": "https://uri-idp.example", "sub": "bob",
                                 "aud": "payments", "exp": now + 300, "iat": now }),
        )
        .unwrap();
    let url = format!("http://{}/whoami", fe.upstream("payments.default"));
    let call = |auth: Option<&str>| {
        let mut r = reqwest::Client::new().get(&url);
        if let Some(t) = auth {
            r = r.bearer_auth(t);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            call(Some(&token)).await == 200
        })
        .await,
        "a token from the jwksUri issuer was never accepted"
    );
    assert!(fetches.load(Ordering::SeqCst) >= 1);
    assert_eq!(call(None).await, 403, "no token: the policy requires one");
    // The issuer goes away: the keys already fetched keep working.
    server.abort();
    for _ in 0..3 {
        assert_eq!(call(Some(&token)).await, 200);
    }
    let _ = (pay_sc, pay);
}

/// JWT-SVIDs as bearer tokens: a RequestAuthentication naming the trust
/// domain's JWT-SVID issuer (`spiffe://ward.internal`, no keys: the sidecar
/// has the JWT authorities from the watch stream) lets `requestPrincipals`
/// match a JWT-SVID that a frontend workload got from its agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_satisfy_request_principals() {
    let (s, pay, pay_sc, fe) = payments_and_frontend().await;
    let fe_agent = agent(&s, "frontend", &[]);
    let client =
        spiffe::WorkloadApiClient::connect_to(format!("unix://{}", fe_agent.socket.display()))
            .await
            .unwrap();
    let for_payments = client.fetch_jwt_svid(["payments"], None).await.unwrap();
    let for_ledger = client.fetch_jwt_svid(["ledger"], None).await.unwrap();
    apply(
        &s,
        r#"apiVersion: ward/v1
kind: RequestAuthentication
metadata: { name: svids }
spec:
  selector: { service: payments }
  jwtRules:
  - issuer: spiffe://ward.internal
    audiences: [payments]
---
apiVersion: ward/v1
kind: AuthorizationPolicy
metadata: { name: frontend-workloads }
spec:
  selector: { service: payments }
  rules:
  - from: [{ source: { requestPrincipals: ["spiffe://ward.internal/spiffe://ward.internal/ns/default/sa/frontend"] } }]
"#,
    );
    let http = reqwest::Client::new();
    let url = format!("http://{}/whoami", fe.upstream("payments.default"));
    let call = |token: Option<&str>| {
        let mut r = http.get(&url);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert!(
        wait_until(Duration::from_secs(10), || async {
            call(Some(for_payments.token())).await == 200
        })
        .await,
        "a JWT-SVID for payments is accepted"
    );
    assert_eq!(call(None).await, 403, "no token: the policy needs one");
    assert_eq!(
        call(Some(for_ledger.token())).await,
        401,
        "another audience"
    );
    let _ = (pay, pay_sc, fe_agent);
}
