//! `ward agent --write-dir` with programs nobody here wrote: a Go HTTPS
//! server and client (standard library only) doing their own mutual TLS
//! from the agent's files, through a renewal and a CA rotation.
mod common;
mod mesh_common;

use std::io::BufRead;
use std::process::{Command, Stdio};

use mesh_common::*;
use serde_json::Value;

const PAY: &str = "spiffe://ward.internal/ns/default/sa/payments";

/// Builds the Go program with Debian's golang-go into `dir`.
fn build_go(dir: &std::path::Path) -> std::path::PathBuf {
    let src = format!("{}/tests/interop/go/mtls.go", env!("CARGO_MANIFEST_DIR"));
    let bin = dir.join("mtls");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg(&src)
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GO111MODULE", "off")
        .output()
        .expect("go (Debian's golang-go) is installed");
    assert!(
        out.status.success(),
        "go build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

fn files_agent(
    s: &ward_testkit::WardServer,
    service: &str,
    dir: &std::path::Path,
    log: &std::path::Path,
) -> Agent {
    let write_dir = dir.to_str().unwrap().to_string();
    let on_change = format!("echo changed >> {}", log.display());
    agent(
        s,
        service,
        &["--write-dir", &write_dir, "--on-change", &on_change],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_server_and_client_survive_renewal_and_ca_rotation() {
    let tmp = tempfile::tempdir().unwrap();
    let go = build_go(tmp.path());
    // Certificates renewed every 5-7 s.
    let s = common::server(&["--svid-ttl", "12s"]);
    let (pay_dir, fe_dir) = (tmp.path().join("payments"), tmp.path().join("frontend"));
    let (pay_log, fe_log) = (
        tmp.path().join("payments.changes"),
        tmp.path().join("frontend.changes"),
    );
    let _pay = files_agent(&s, "payments", &pay_dir, &pay_log);
    let _fe = files_agent(&s, "frontend", &fe_dir, &fe_log);
    for d in [&pay_dir, &fe_dir] {
        assert!(
            ward_testkit::wait_until(std::time::Duration::from_secs(10), || async {
                d.join("bundle.pem").exists()
            })
            .await
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join("svid.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let mut server = Command::new(&go)
        .arg("server")
        .arg(&pay_dir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr: Value = serde_json::from_str(&line).unwrap();
    let url = format!("https://{}/", addr["addr"].as_str().unwrap());

    let client = {
        let (go, fe_dir, url) = (go.clone(), fe_dir.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(&go)
                .arg("client")
                .arg(&fe_dir)
                .args([url.as_str(), PAY, "20"])
                .output()
                .unwrap()
        })
    };
    tokio::time::sleep(std::time::Duration::from_secs(7)).await;
    let rotated = s.cli_json(&["ca", "rotate"]).unwrap();
    assert!(rotated["active_serial"].is_string(), "{rotated}");
    let out = client.await.unwrap();
    let _ = server.kill();
    let _ = server.wait();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(report["failed"], 0, "{report}");
    assert!(report["ok"].as_u64().unwrap() > 100, "{report}");
    // Both sides renewed at least twice during the run.
    assert!(
        report["server_serials"].as_array().unwrap().len() >= 3,
        "{report}"
    );
    assert!(
        report["client_serials"].as_array().unwrap().len() >= 3,
        "{report}"
    );
    // --on-change ran after each write.
    let changes = std::fs::read_to_string(&pay_log).unwrap();
    assert!(changes.lines().count() >= 3, "{changes}");
}
