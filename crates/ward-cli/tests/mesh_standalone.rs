//! `ward proxy --cert --key --trust-bundle` without a control plane:
//! certificates issued elsewhere (here by a ward server that the sidecars
//! never contact), endpoints and peer IDs on the command line, policies
//! from a file; policy and certificate files reloaded when they change.
mod mesh_common;

use std::path::Path;
use std::time::Duration;

use mesh_common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ward_testkit::{wait_until, Proc, WardServer};

fn issue(s: &WardServer, dir: &Path, service: &str) {
    let p = |f: &str| {
        dir.join(format!("{service}.{f}"))
            .to_str()
            .unwrap()
            .to_string()
    };
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        &format!("spiffe://ward.internal/ns/default/sa/{service}"),
        "--out-cert",
        &p("pem"),
        "--out-key",
        &p("key"),
        "--out-bundle",
        dir.join("bundle.pem").to_str().unwrap(),
    ])
    .unwrap();
}

const ALLOW: &str = "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: from-frontend }\nspec:\n  rules:\n  - from: [{ source: { principals: [\"ward.internal/ns/default/sa/frontend\"] } }]\n";
const DENY: &str = "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: lockdown }\nspec:\n  action: DENY\n  rules: [{}]\n";

/// `path` on a frontend sidecar's port for payments.
fn payments_url(fe: &Proc, path: &str) -> String {
    let port = fe.ready["proxy"]["upstreams"]["payments.default"]
        .as_str()
        .unwrap();
    format!("http://{port}{path}")
}

/// 8 GETs of `url` at once, each with a client of its own: (status, body).
async fn concurrent_gets(url: &str) -> Vec<(u16, String)> {
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let url = url.to_string();
            tokio::spawn(async move {
                let r = reqwest::get(&url).await.unwrap();
                (r.status().as_u16(), r.text().await.unwrap())
            })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tries {
        answers.push(t.await.unwrap());
    }
    answers
}

/// A frontend sidecar with one upstream, from the files in `dir`.
fn frontend_sidecar(dir: &Path, upstream: &str) -> Proc {
    frontend_sidecar_with(dir, upstream, &[])
}

/// [`frontend_sidecar`] with `extra` flags.
fn frontend_sidecar_with(dir: &Path, upstream: &str, extra: &[&str]) -> Proc {
    frontend_sidecar_logged(dir, upstream, extra, None)
}

/// [`frontend_sidecar_with`], its stderr kept at `RUST_LOG=log` when given.
fn frontend_sidecar_logged(dir: &Path, upstream: &str, extra: &[&str], log: Option<&str>) -> Proc {
    let f = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (bundle, cert, key) = (f("bundle.pem"), f("frontend.pem"), f("frontend.key"));
    let mut args = vec![
        "--output",
        "json",
        "--trust-bundle",
        &bundle,
        "proxy",
        "--cert",
        &cert,
        "--key",
        &key,
        "--service",
        "frontend",
        "--inbound",
        "127.0.0.1:0",
        "--app",
        "127.0.0.1:9",
        "--admin",
        "127.0.0.1:0",
        "--upstream",
        upstream,
    ];
    args.extend_from_slice(extra);
    spawn(&args, log)
}

/// Starts `ward args…`, its stderr kept at `RUST_LOG=log` when given.
fn spawn(args: &[&str], log: Option<&str>) -> Proc {
    match log {
        Some(filter) => Proc::spawn_logged(bin(), args, filter).unwrap(),
        None => Proc::spawn(bin(), args).unwrap(),
    }
}

/// A CA, the frontend's files in a directory, and a listener for a
/// hand-written payments peer with its TLS (offering only `alpn`).
async fn frontend_files_and_peer(
    alpn: &[u8],
) -> (
    WardServer,
    tempfile::TempDir,
    tokio_rustls::TlsAcceptor,
    tokio::net::TcpListener,
) {
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    s.cli_json(&["service", "add", "frontend"]).unwrap();
    issue(&s, dir.path(), "frontend");
    let mesh = mesh_tls(&s, "spiffe://ward.internal/ns/default/sa/payments");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(mesh.server_config(&[alpn])));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (s, dir, acceptor, listener)
}

/// A peer sidecar that goes silent with a request in flight (its host
/// vanished, or it hangs) is pinged, given up within about 20 s, and the
/// request fails instead of waiting for TCP's retransmission limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_goes_silent_is_given_up() {
    // Speaks TLS and `ward-mux/2` as payments, reads everything, answers
    // nothing.
    let (_s, dir, acceptor, silent) = frontend_files_and_peer(b"ward-mux/2").await;
    let addr = silent.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    tokio::spawn(async move {
        let (tcp, _) = silent.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = tls.read(&mut buf).await {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let fe = frontend_sidecar(
        dir.path(),
        &format!(
            "payments=127.0.0.1:0,endpoint={addr},id=spiffe://ward.internal/ns/default/sa/payments"
        ),
    );
    let url = payments_url(&fe, "/hangs");
    let start = std::time::Instant::now();
    let r = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .build()
        .unwrap()
        .get(&url)
        .send()
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status(), 502);
    assert!(
        (Duration::from_secs(15)..Duration::from_secs(45)).contains(&took),
        "given up after {took:?}"
    );
    // The request went out on a stream, then one PING (stream 0, kind 3,
    // 8 bytes).
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(11).any(|w| w == b"GET /hangs "));
    let ping = [0, 0, 0, 0, 3, 0, 0, 8];
    assert_eq!(seen.windows(8).filter(|w| *w == ping).count(), 1);
    // Counted for operators.
    let (closed, text) = metric_sum_at(
        fe.ready["proxy"]["admin"].as_str().unwrap(),
        "ward_proxy_peer_connections_closed",
        &["direction=\"outbound\"", "reason=\"silent_peer\""],
    )
    .await;
    assert_eq!(closed, 1.0, "{text}");
}

/// A peer that offers only `ward-mux/1` (a sidecar from before
/// `ward-mux/2`) is spoken to in `/1`: exchanges share one connection, and
/// no frame kind `/1` lacks (PING) is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_sidecar_is_spoken_to_in_ward_mux_1() {
    against_a_ward_mux_1_peer(&[]).await;
}

/// A sidecar told to use HBONE speaks ward-mux to a peer that does not
/// offer HBONE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_hbone_sidecar_falls_back_to_ward_mux() {
    against_a_ward_mux_1_peer(&["--peer-transport", "hbone"]).await;
}

/// A frontend sidecar started with `extra` against a hand-written peer
/// that offers only `ward-mux/1`.
async fn against_a_ward_mux_1_peer(extra: &[&str]) {
    let (_s, dir, acceptor, old) = frontend_files_and_peer(b"ward-mux/1").await;
    let addr = old.local_addr().unwrap();
    // (connections, ALPNs, frame kinds seen)
    let seen = std::sync::Arc::new(std::sync::Mutex::new((0, Vec::new(), Vec::new())));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = old.accept().await {
            let (acceptor, log) = (acceptor.clone(), log.clone());
            tokio::spawn(async move {
                let mut tls = acceptor.accept(tcp).await.unwrap();
                {
                    let mut l = log.lock().unwrap();
                    l.0 += 1;
                    l.1.push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                }
                // Answers each request head on its stream, by hand.
                let mut heads: std::collections::HashMap<u32, Vec<u8>> = Default::default();
                loop {
                    let mut h = [0u8; 8];
                    if tls.read_exact(&mut h).await.is_err() {
                        return;
                    }
                    let id = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
                    let mut payload = vec![0u8; u16::from_be_bytes([h[6], h[7]]) as usize];
                    if tls.read_exact(&mut payload).await.is_err() {
                        return;
                    }
                    log.lock().unwrap().2.push(h[4]);
                    if h[4] != 0 {
                        continue;
                    }
                    let buf = heads.entry(id).or_default();
                    buf.extend_from_slice(&payload);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nv1";
                        let mut f = id.to_be_bytes().to_vec();
                        f.extend([0, 0]);
                        f.extend((answer.len() as u16).to_be_bytes());
                        f.extend(answer);
                        if tls.write_all(&f).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    // One data-plane worker: each worker keeps links of its own.
    let flags: Vec<&str> = extra
        .iter()
        .copied()
        .chain(["--worker-threads", "1"])
        .collect();
    let fe = frontend_sidecar_with(
        dir.path(),
        &format!(
            "payments=127.0.0.1:0,endpoint={addr},id=spiffe://ward.internal/ns/default/sa/payments"
        ),
        &flags,
    );
    for answer in concurrent_gets(&payments_url(&fe, "/old")).await {
        assert_eq!(answer, (200, "v1".to_string()));
    }
    let (conns, alpns, kinds) = seen.lock().unwrap().clone();
    assert_eq!(conns, 1, "the exchanges share one connection");
    assert_eq!(alpns, vec![Some(b"ward-mux/1".to_vec())]);
    assert!(kinds.iter().all(|k| *k <= 2), "frame kinds {kinds:?}");
}

/// A CA, certificates for payments and frontend in a directory with a
/// policy that lets frontend in, and the payments app.
fn two_services() -> (WardServer, tempfile::TempDir, App) {
    let s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for svc in ["payments", "frontend"] {
        s.cli_json(&["service", "add", svc]).unwrap();
        issue(&s, dir.path(), svc);
    }
    std::fs::write(dir.path().join("policy.yaml"), ALLOW).unwrap();
    (s, dir, app("payments"))
}

/// The flags of a payments sidecar from the files of [`two_services`],
/// in front of `app`, on `workers` data-plane threads.
fn payments_sidecar_args(d: &Path, app: &str, workers: &str) -> Vec<String> {
    let f = |name: &str| d.join(name).to_str().unwrap().to_string();
    let args = [
        "--output",
        "json",
        "--log-format",
        "json",
        "--trust-bundle",
        &f("bundle.pem"),
        "proxy",
        "--cert",
        &f("payments.pem"),
        "--key",
        &f("payments.key"),
        "--policy-file",
        &f("policy.yaml"),
        "--service",
        "payments",
        "--inbound",
        "127.0.0.1:0",
        "--app",
        app,
        "--admin",
        "127.0.0.1:0",
        "--worker-threads",
        workers,
    ];
    args.iter().map(|a| a.to_string()).collect()
}

/// A payments sidecar ([`payments_sidecar_args`]) and its inbound
/// address; its stderr kept at `RUST_LOG=log` when given.
fn payments_sidecar(d: &Path, app: &str, workers: &str, log: Option<&str>) -> (Proc, String) {
    let args = payments_sidecar_args(d, app, workers);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let sc = spawn(&args, log);
    let inbound = sc.ready["proxy"]["inbound"].as_str().unwrap().to_string();
    (sc, inbound)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_sidecars_from_files() {
    init();
    let (s, dir, pay) = two_services();
    let d = dir.path();
    let (pay_sc, inbound) = payments_sidecar(d, &pay.http, "1", Some("warn,ward::access=info"));
    let upstream = format!(
        "payments=127.0.0.1:0,endpoint={inbound},id=spiffe://ward.internal/ns/default/sa/payments"
    );
    let frontend = |upstream: &str| frontend_sidecar(d, upstream);
    let fe = frontend(&upstream);
    let up = fe.ready["proxy"]["upstreams"]["payments.default"]
        .as_str()
        .unwrap()
        .to_string();
    let fe_admin = fe.ready["proxy"]["admin"].as_str().unwrap().to_string();
    // The sidecars were given no control plane address; the server only
    // issues certificates, as another CA would.

    let get = |path: &'static str| {
        let url = format!("http://{up}{path}");
        async move {
            let r = reqwest::get(&url).await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, body) = get("/whoami").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["peer_id"],
        "spiffe://ward.internal/ns/default/sa/frontend"
    );
    // The access log has the request, as a JSON line.
    let logged = |status: u64| {
        pay_sc.log().iter().any(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            let f = &v["fields"];
            v["target"] == "ward::access"
                && f["direction"] == "inbound"
                && f["peer"] == "spiffe://ward.internal/ns/default/sa/frontend"
                && f["method"] == "GET"
                && f["path"] == "/whoami"
                && f["status"] == status
                && f["duration_ms"].as_f64().is_some_and(|d| d > 0.0)
        })
    };
    assert!(
        wait_until(Duration::from_secs(5), || async { logged(200) }).await,
        "{:?}",
        pay_sc.log()
    );

    // The policy file changes: enforced within seconds.
    std::fs::write(d.join("policy.yaml"), format!("{ALLOW}---\n{DENY}")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            get("/whoami").await.0 == 403
        })
        .await,
        "the new policy file was not applied"
    );
    assert!(
        pay_sc.log().iter().any(|l| l.contains("default/lockdown")) && logged(403),
        "{:?}",
        pay_sc.log()
    );
    // A broken policy file is refused; the policies in force stay.
    std::fs::write(
        d.join("policy.yaml"),
        "kind: AuthorizationPolicy\nspec: { rulez: [] }\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get("/whoami").await.0, 403);
    std::fs::write(d.join("policy.yaml"), ALLOW).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            get("/whoami").await.0 == 200
        })
        .await
    );

    // New certificate files (as an agent rotating them would write) are
    // picked up without a restart, and traffic keeps flowing.
    let certs = |admin: String| async move {
        reqwest::get(format!("http://{admin}/certs"))
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap()
    };
    let before = certs(fe_admin.clone()).await;
    issue(&s, d, "frontend");
    assert!(
        wait_until(Duration::from_secs(5), || {
            let (admin, before) = (fe_admin.clone(), before.clone());
            async move { certs(admin).await != before }
        })
        .await,
        "the rewritten certificate files were not reloaded: {before}"
    );
    for _ in 0..5 {
        assert_eq!(get("/whoami").await.0, 200);
    }

    // An upstream whose first endpoint refuses connections: requests with
    // a body that find no connection there have not been sent, and go to
    // the live endpoint whole.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap().to_string();
    drop(dead);
    let upstream = format!(
        "payments=127.0.0.1:0,endpoint={dead_addr},endpoint={inbound},id=spiffe://ward.internal/ns/default/sa/payments"
    );
    let fe2 = frontend(&upstream);
    let echo = format!(
        "http://{}/echo",
        fe2.ready["proxy"]["upstreams"]["payments.default"]
            .as_str()
            .unwrap()
    );
    let http = reqwest::Client::new();
    for i in 0..6 {
        let body = format!("payment {i}");
        let r = http.post(&echo).body(body.clone()).send().await.unwrap();
        assert_eq!(r.status(), 200, "POST {i} with a dead endpoint listed");
        assert_eq!(r.text().await.unwrap(), body);
    }

    // An endpoint that accepts TCP and never answers TLS: requests that
    // arrive while one dial waits for its handshake timeout share its
    // failure instead of each waiting for a dial of its own.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!(
        "payments=127.0.0.1:0,endpoint={},id=spiffe://ward.internal/ns/default/sa/payments",
        hole.local_addr().unwrap()
    );
    let fe3 = frontend(&upstream);
    let url = format!(
        "http://{}/x",
        fe3.ready["proxy"]["upstreams"]["payments.default"]
            .as_str()
            .unwrap()
    );
    let start = std::time::Instant::now();
    let tries: Vec<_> = (0..8)
        .map(|_| {
            let (http, url) = (http.clone(), url.clone());
            tokio::spawn(async move { http.get(&url).send().await.unwrap().status() })
        })
        .collect();
    for t in tries {
        assert_eq!(t.await.unwrap(), 502);
    }
    assert!(
        start.elapsed() < Duration::from_secs(25),
        "8 requests to a silent endpoint took {:?}",
        start.elapsed()
    );

    // A peer that does not offer `ward-mux` (as an older sidecar would
    // not): each exchange gets an HTTP/1.1 connection of its own, and all
    // arrive.
    let mesh = mesh_tls(&s, "spiffe://ward.internal/ns/default/sa/payments");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(mesh.server_config(&[b"http/1.1"])));
    let old = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old_addr = old.local_addr().unwrap();
    let alpns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = alpns.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = old.accept().await {
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                seen.lock().unwrap().push(alpn);
                // Answers each request head with "old", kept alive.
                let (mut buf, mut chunk) = (Vec::new(), [0u8; 4096]);
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nold";
                        if tls.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                    match tls.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    let fe4 = frontend(&format!(
        "payments=127.0.0.1:0,endpoint={old_addr},id=spiffe://ward.internal/ns/default/sa/payments"
    ));
    for answer in concurrent_gets(&payments_url(&fe4, "/old")).await {
        assert_eq!(answer, (200, "old".to_string()));
    }
    let alpns = alpns.lock().unwrap().clone();
    assert!(!alpns.is_empty());
    assert!(
        alpns.iter().all(|a| a.as_deref() == Some(&b"http/1.1"[..])),
        "{alpns:?}"
    );
    let _ = (pay_sc, pay, fe, fe2, fe3, fe4, hole);
}

/// Runs openssl in `dir`, failing the test with its stderr.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A leaf `name.pem` for `name.key`, signed by `ca.pem`, with `ext` as its
/// X.509 extensions.
fn openssl_leaf(dir: &Path, name: &str, ext: &str) {
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    let f = |s: &str| format!("{name}.{s}");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            &f("key"),
            "-subj",
            "/CN=x",
            "-out",
            &f("csr"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &f("csr"),
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-days",
            "1",
            "-extfile",
            &f("ext"),
            "-out",
            &f("pem"),
        ],
    );
}

const SVID_EXT: &str = "basicConstraints=critical,CA:false\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n";

/// Keys and certificates as openssl, cert-manager and Vault write them: a
/// SEC1 `EC PRIVATE KEY` and a PKCS#1 `RSA PRIVATE KEY` both serve; a
/// certificate that is not an X509-SVID is refused with the rule it breaks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_certificates_as_openssl_writes_them() {
    init();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=ca",
            "-days",
            "1",
            "-addext",
            "basicConstraints=critical,CA:true",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-addext",
            "subjectAltName=URI:spiffe://ward.internal",
            "-out",
            "ca.pem",
        ],
    );
    std::fs::copy(d.join("ca.pem"), d.join("bundle.pem")).unwrap();
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "payments.key",
        ],
    );
    openssl(
        d,
        &["genrsa", "-traditional", "-out", "frontend.key", "2048"],
    );
    for (name, key) in [
        ("payments", "EC PRIVATE KEY"),
        ("frontend", "RSA PRIVATE KEY"),
    ] {
        let pem = std::fs::read_to_string(d.join(format!("{name}.key"))).unwrap();
        assert!(pem.starts_with(&format!("-----BEGIN {key}-----")), "{pem}");
        openssl_leaf(
            d,
            name,
            &format!("{SVID_EXT}subjectAltName=URI:spiffe://ward.internal/ns/default/sa/{name}\n"),
        );
    }
    std::fs::write(d.join("policy.yaml"), ALLOW).unwrap();
    let pay = app("payments");
    let (pay_sc, inbound) = payments_sidecar(d, &pay.http, "1", Some("info"));
    let f = |name: &str| d.join(name).to_str().unwrap().to_string();
    // Without a state dir it says where its certificate came from, and
    // never mentions a state dir.
    let loaded = || {
        pay_sc
            .log()
            .iter()
            .any(|l| l.contains("certificate files loaded"))
    };
    assert!(
        wait_until(Duration::from_secs(5), || async { loaded() }).await,
        "{:?}",
        pay_sc.log()
    );
    assert!(
        !pay_sc.log().iter().any(|l| l.contains("state dir")),
        "{:?}",
        pay_sc.log()
    );
    let fe = frontend_sidecar(
        d,
        &format!(
            "payments=127.0.0.1:0,endpoint={inbound},id=spiffe://ward.internal/ns/default/sa/payments"
        ),
    );
    let r = reqwest::get(payments_url(&fe, "/whoami")).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["peer_id"],
        "spiffe://ward.internal/ns/default/sa/frontend"
    );

    // Not X509-SVIDs: each refused at start, naming the rule.
    let uri = "subjectAltName=URI:spiffe://ward.internal/ns/default/sa/bad";
    let cases = [
        (
            "no-uri",
            format!("{SVID_EXT}subjectAltName=DNS:bad.example\n"),
            "exactly one URI SAN (found 0)",
        ),
        (
            "two-uris",
            format!("{SVID_EXT}{uri},URI:spiffe://ward.internal/ns/default/sa/other\n"),
            "exactly one URI SAN (found 2)",
        ),
        (
            "ca-true",
            format!(
                "basicConstraints=critical,CA:true\nkeyUsage=critical,digitalSignature\n{uri}\n"
            ),
            "cA=false",
        ),
        (
            "no-digital-signature",
            format!(
                "basicConstraints=critical,CA:false\nkeyUsage=critical,keyEncipherment\n{uri}\n"
            ),
            "digitalSignature",
        ),
    ];
    for (name, ext, rule) in cases {
        std::fs::copy(d.join("payments.key"), d.join(format!("{name}.key"))).unwrap();
        openssl_leaf(d, name, &ext);
        let out = std::process::Command::new("timeout")
            .arg("20")
            .arg(bin())
            .args(["--trust-bundle", &f("bundle.pem"), "proxy", "--cert"])
            .arg(f(&format!("{name}.pem")))
            .arg("--key")
            .arg(f(&format!("{name}.key")))
            .args([
                "--service",
                "bad",
                "--inbound",
                "127.0.0.1:0",
                "--app",
                "127.0.0.1:9",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("is not an X509-SVID") && err.contains(rule),
            "{name}: {err}"
        );
    }
}

/// Voluntary context switches of each thread of `pid`, by thread name.
fn thread_wakeups(pid: u32) -> std::collections::HashMap<String, u64> {
    let mut by_name = std::collections::HashMap::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap_or_default();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
                .unwrap_or_default()
        };
        let n = field("voluntary_ctxt_switches:").parse().unwrap_or(0);
        *by_name.entry(field("Name:")).or_insert(0) += n;
    }
    by_name
}

/// With `--worker-threads 2` each sidecar's data plane is two event
/// loops: the connections from the app, and the shared links between the
/// sidecars, are spread over both, and every request is still answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_connections() {
    init();
    let (_s, dir, pay) = two_services();
    let d = dir.path();
    let (pay_sc, inbound) = payments_sidecar(d, &pay.http, "2", None);
    let upstream = format!(
        "payments=127.0.0.1:0,endpoint={inbound},id=spiffe://ward.internal/ns/default/sa/payments"
    );
    let fe = frontend_sidecar_with(d, &upstream, &["--worker-threads", "2"]);
    let url = payments_url(&fe, "/whoami");
    let (fe_pid, pay_pid) = (fe.child.id(), pay_sc.child.id());
    // Executed again in place with the sidecar's allocator options.
    let env = environment(fe_pid);
    assert!(
        env.iter()
            .any(|v| v == "_RJEM_MALLOC_CONF=tcache_nslots_large:2,dirty_decay_ms:1000"),
        "{env:?}"
    );
    let before = (thread_wakeups(fe_pid), thread_wakeups(pay_pid));
    // Eight clients, each on a kept-alive connection of its own, at once.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let c = reqwest::Client::new();
                let mut ok = 0;
                for _ in 0..150 {
                    let r = c.get(&url).send().await.unwrap();
                    ok += u32::from(r.status() == 200);
                    r.bytes().await.unwrap();
                }
                ok
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.await.unwrap(), 150);
    }
    for (pid, before, who) in [
        (fe_pid, &before.0, "frontend"),
        (pay_pid, &before.1, "payments"),
    ] {
        let after = thread_wakeups(pid);
        let woke = |name: &str| {
            after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
        };
        // The second worker is a thread of its own, and it carried traffic:
        // at least a wake-up per ten of the 1,200 requests.
        assert!(
            woke("ward-worker-1") >= 120,
            "{who}: the second worker woke {} times: {after:?}",
            woke("ward-worker-1")
        );
        assert!(
            woke("ward") >= 120,
            "{who}: the first worker woke {} times",
            woke("ward")
        );
    }
}

/// The workers of a sidecar share what they learn of an upstream's
/// endpoints: one that refused a connection is skipped by every worker,
/// not found down again by each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_one_worker_found_down_is_skipped_by_all() {
    init();
    let (_s, dir, pay) = two_services();
    let d = dir.path();
    let (_pay_sc, inbound) = payments_sidecar(d, &pay.http, "1", None);
    // An address nothing listens on: connections to it are refused.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let upstream = format!(
        "payments=127.0.0.1:0,endpoint={dead},endpoint={inbound},id=spiffe://ward.internal/ns/default/sa/payments"
    );
    let fe = frontend_sidecar_logged(d, &upstream, &["--worker-threads", "2"], Some("warn"));
    let url = payments_url(&fe, "/whoami");
    // Two app connections open at once: one on each worker.
    let (a, b) = (reqwest::Client::new(), reqwest::Client::new());
    for _ in 0..10 {
        for c in [&a, &b] {
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "the live endpoint answers");
            r.bytes().await.unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failed: Vec<String> = fe.log().into_iter().filter(|l| l.contains(&dead)).collect();
    assert_eq!(
        failed.len(),
        1,
        "one refused connection marks {dead} down for both workers:\n{}",
        failed.join("\n")
    );
}
