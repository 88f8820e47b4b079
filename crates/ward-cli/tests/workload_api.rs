//! The SPIFFE Workload API of `ward agent`, with clients nobody here
//! wrote: py-spiffe's WorkloadApiClient and raw grpcio; callers from
//! another uid; the control plane away.
mod common;
mod mesh_common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_common::*;
use serde_json::Value;
use ward_testkit::wait_until;

const PAY: &str = "spiffe://ward.internal/ns/default/sa/payments";

fn python() -> String {
    std::env::var("WARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn script() -> String {
    format!(
        "{}/tests/interop/workload_api.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn py(cmd: &mut Command) -> Value {
    let out = cmd.output().expect("python runs");
    assert!(
        out.status.success(),
        "workload_api.py failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&out.stdout));
    })
}

fn run(socket: &Path, cert: &Path, mode: &[&str]) -> Value {
    py(Command::new(python())
        .arg(script())
        .arg(socket)
        .arg(cert)
        .args(mode))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_spiffe_gets_svids_bundles_and_jwts_and_sees_a_renewal() {
    // Short certificates, so a renewal (at half-life) comes within the test.
    let s = common::server(&["--svid-ttl", "16s"]);
    let a = agent(&s, "payments", &[]);
    let cert = a.own_cert().await;
    let socket = a.socket.clone();
    let out = tokio::task::spawn_blocking(move || run(&socket, &cert, &["full"]))
        .await
        .unwrap();
    assert_eq!(out["x509_id"], PAY);
    assert_eq!(
        out["own_key"], true,
        "the workload SVID has a key of its own"
    );
    assert_eq!(out["key_matches_cert"], true);
    assert_eq!(out["chain_len"], 2, "leaf, signing CA");
    assert_eq!(out["x509_bundle_tds"], serde_json::json!(["ward.internal"]));
    assert!(out["x509_authorities"].as_u64().unwrap() >= 2, "{out}");
    assert_eq!(out["jwt_id"], PAY);
    assert_eq!(out["jwt_aud"], serde_json::json!(["payments"]));
    assert_eq!(out["jwt_cached"], true);
    assert_eq!(out["jwt_valid_for_a"], PAY);
    assert_eq!(out["jwt_valid_for_b"], false, "{out}");
    assert!(
        out["jwt_b_error"].as_str().unwrap().contains("audience"),
        "{out}"
    );
    assert_eq!(out["jwt_bundle_tds"], serde_json::json!(["ward.internal"]));
    assert_eq!(out["jwt_kid_published"], true);
    assert_eq!(out["raw_without_header"], "INVALID_ARGUMENT");
    assert_eq!(out["raw_with_header"], "OK");
    assert_eq!(out["raw_no_audience"], "INVALID_ARGUMENT");
    let serials = out["stream_serials"].as_array().unwrap();
    assert_eq!(serials.len(), 2, "the stream saw the renewal: {out}");
    assert!(serials.contains(&out["x509_serial"]));
    // The server's /bundle publishes the same JWT authority.
    let bundle: Value = s
        .https()
        .unwrap()
        .get(format!("{}/bundle", s.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let header = out["jwt_token"]
        .as_str()
        .unwrap()
        .split('.')
        .next()
        .unwrap();
    let header: Value = serde_json::from_slice(&base64_url(header)).unwrap();
    assert!(
        bundle["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["use"] == "jwt-svid" && k["kid"] == header["kid"]),
        "{bundle}"
    );
}

/// A raw FetchX509SVID call with curl over the socket (HTTP/2 with prior
/// knowledge, the security header set), run through `runuser ARGS curl`;
/// returns what curl printed (headers included).
fn grpc_with_curl(socket: &Path, runuser: &[&str]) -> String {
    let mut child = Command::new("runuser")
        .args(runuser)
        .args([
            "curl",
            "-sS",
            "-i",
            "--max-time",
            "5",
            "--http2-prior-knowledge",
        ])
        .arg("--unix-socket")
        .arg(socket)
        .args([
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "-H",
            "workload.spiffe.io: true",
            "--data-binary",
            "@-",
            "http://localhost/SpiffeWorkloadAPI/FetchX509SVID",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("runuser and curl are installed");
    {
        use std::io::Write;
        // One empty gRPC message: uncompressed, length 0.
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&[0, 0, 0, 0, 0])
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn base64_url(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_from_another_uid_is_denied_and_a_foreign_jwt_svid_fails() {
    let s = common::server(&[]);
    let a = agent(&s, "payments", &[]);
    let cert = a.own_cert().await;
    let (socket, c) = (a.socket.clone(), cert.clone());
    let mine = tokio::task::spawn_blocking(move || run(&socket, &c, &["raw"]))
        .await
        .unwrap();
    assert_eq!(mine["raw_with_header"], "OK");
    // The same call from the `nobody` user (with curl, which nobody can
    // run): PermissionDenied, grpc-status 7, and nothing else.
    let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
    assert!(root, "this test switches to the nobody user and needs root");
    let socket = a.socket.clone();
    let theirs =
        tokio::task::spawn_blocking(move || grpc_with_curl(&socket, &["-u", "nobody", "--"]))
            .await
            .unwrap();
    assert!(theirs.contains("grpc-status: 7"), "{theirs}");
    assert!(
        !theirs.contains("CERTIFICATE") && theirs.len() < 1000,
        "{theirs}"
    );

    // A JWT-SVID of another trust domain does not validate here.
    let other = common::server(&["--trust-domain", "other.internal"]);
    let b = agent(&other, "payments", &[]);
    let (socket, c) = (b.socket.clone(), cert.clone());
    let foreign = tokio::task::spawn_blocking(move || run(&socket, &c, &["token"]))
        .await
        .unwrap();
    let token = foreign["token"].as_str().unwrap().to_string();
    let (socket, c) = (a.socket.clone(), cert.clone());
    let checked = tokio::task::spawn_blocking(move || run(&socket, &c, &["check", &token]))
        .await
        .unwrap();
    assert_eq!(checked["valid"], false, "{checked}");
    // And a token of this trust domain does.
    let (socket, c) = (a.socket.clone(), cert.clone());
    let own = tokio::task::spawn_blocking(move || run(&socket, &c, &["token"]))
        .await
        .unwrap();
    let token = own["token"].as_str().unwrap().to_string();
    let (socket, c) = (a.socket.clone(), cert);
    let checked = tokio::task::spawn_blocking(move || run(&socket, &c, &["check", &token]))
        .await
        .unwrap();
    assert_eq!(checked["valid"], true, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_socket_is_not_taken_over() {
    let s = common::server(&[]);
    let a = agent(&s, "payments", &[]);
    let token = register(&s, "payments");
    let dd = s.data_dir.to_str().unwrap().to_string();
    let api = format!("unix://{}", a.socket.display());
    let out = Command::new(bin())
        .args([
            "--data-dir",
            &dd,
            "agent",
            "--join-token",
            &token,
            "--service",
            "payments",
            "--workload-api",
            &api,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is in use") && err.contains("agent.sock"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_control_plane_down_the_agent_serves_until_near_expiry() {
    let mut s = common::server(&["--svid-ttl", "16s"]);
    let a = agent(&s, "payments", &[]);
    let cert = a.own_cert().await;
    assert!(wait_until(Duration::from_secs(10), || async { a.ready().await == 200 }).await);
    s.kill9();
    // Still served: SVID, bundles, a JWT-SVID (cached or not, the agent
    // answers from what it has).
    let (socket, c) = (a.socket.clone(), cert.clone());
    let out = tokio::task::spawn_blocking(move || run(&socket, &c, &["raw"]))
        .await
        .unwrap();
    assert_eq!(out["raw_with_header"], "OK");
    assert_eq!(
        a.ready().await,
        200,
        "ready while the certificates are fresh"
    );
    // Renewal cannot happen; in the last tenth of the lifetime the agent
    // says it is not ready.
    assert!(
        wait_until(Duration::from_secs(20), || async { a.ready().await == 503 }).await,
        "not ready near expiry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_spiffe_crate_gets_svids_bundles_and_jwts() {
    use futures_util::StreamExt;
    let s = common::server(&["--svid-ttl", "16s"]);
    let a = agent(&s, "payments", &[]);
    let client = spiffe::WorkloadApiClient::connect_to(format!("unix://{}", a.socket.display()))
        .await
        .unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), PAY);
    assert_eq!(svid.cert_chain().len(), 2);
    let td = spiffe::TrustDomain::new("ward.internal").unwrap();
    let bundles = client.fetch_x509_bundles().await.unwrap();
    assert!(bundles.get(&td).unwrap().authorities().len() >= 2);
    let jwt = client.fetch_jwt_svid(["payments"], None).await.unwrap();
    assert_eq!(jwt.spiffe_id().to_string(), PAY);
    assert_eq!(jwt.audience(), ["payments"]);
    let checked = client
        .validate_jwt_token("payments", jwt.token())
        .await
        .unwrap();
    assert_eq!(checked.spiffe_id().to_string(), PAY);
    assert!(client
        .validate_jwt_token("ledger", jwt.token())
        .await
        .is_err());
    let jwt_bundles = client.fetch_jwt_bundles().await.unwrap();
    assert!(jwt_bundles
        .get(&td)
        .unwrap()
        .find_jwt_authority(jwt.key_id())
        .is_some());
    // The stream sends the renewed SVID (renewal at half of 16 s).
    let first = svid.leaf().to_owned();
    let mut stream = client.stream_x509_svids().await.unwrap();
    let renewed = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(next) = stream.next().await {
            let next = next.unwrap();
            if next.leaf() != &first {
                return next;
            }
        }
        panic!("the stream ended");
    })
    .await
    .expect("a renewed SVID within 30 s");
    assert_eq!(renewed.spiffe_id().to_string(), PAY);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_serves_the_workload_api_beside_its_data_plane() {
    let s = common::server(&[]);
    let pay = app("payments");
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sidecar.sock");
    let api = format!("unix://{}", socket.display());
    let sc = sidecar(&s, "payments", &pay.http, &["--workload-api", &api]);
    assert_eq!(
        sc.proc.ready["proxy"]["workload_api"],
        socket.to_str().unwrap()
    );
    let client = spiffe::WorkloadApiClient::connect_to(&api).await.unwrap();
    let svid = client.fetch_x509_svid().await.unwrap();
    assert_eq!(svid.spiffe_id().to_string(), PAY);
    // Its own key pair: not the sidecar's certificate.
    let certs = admin_json(&sc, "/certs").await;
    assert_ne!(
        svid.leaf().as_bytes(),
        ward_testkit::chain_from_pem(certs["chain_pem"].as_str().unwrap()).unwrap()[0].as_ref()
    );
    let _ = pay;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_runs_jemalloc_with_one_arena_unless_the_operator_chose() {
    let s = common::server(&[]);
    // Executed again in place: the same process, now with the options,
    // and serving.
    let a = agent(&s, "payments", &[]);
    let env = environment(a.proc.child.id());
    assert!(
        env.iter()
            .any(|v| v == "_RJEM_MALLOC_CONF=narenas:1,tcache:false"),
        "{env:?}"
    );
    let cert = a.own_cert().await;
    let socket = a.socket.clone();
    let out = tokio::task::spawn_blocking(move || run(&socket, &cert, &["raw"]))
        .await
        .unwrap();
    assert_eq!(out["raw_with_header"], "OK");
    // An operator's own setting stands.
    let b = agent_with_env(&s, "ledger", &[], &["_RJEM_MALLOC_CONF=narenas:2"]);
    let env = environment(b.proc.child.id());
    assert!(
        env.iter().any(|v| v == "_RJEM_MALLOC_CONF=narenas:2"),
        "{env:?}"
    );
    assert!(wait_until(Duration::from_secs(10), || async { b.ready().await == 200 }).await);
}
