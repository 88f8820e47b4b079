//! Faults of the machine under a running mesh: the disk under the data dir
//! fills up.
mod mesh_common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mesh_common::*;
use ward_testkit::WardServer;

/// A small tmpfs, unmounted when dropped (before its directory goes).
struct Tmpfs {
    at: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// None when this user may not mount (the test needs root, as CI is).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().join("disk");
        std::fs::create_dir(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs { at, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.at).status();
    }
}

/// Fills the file system at `dir` with a file of zeros.
fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(std::process::Stdio::null())
        .status();
    filler
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_clearly_and_nothing_else() {
    let Some(disk) = Tmpfs::mount("8m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    init();
    let data = disk.at.join("data");
    let mut s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    // Move the server onto the small disk: same flags, its data dir there.
    s.kill9();
    s.data_dir = data.clone();
    s.spawn("127.0.0.1:0").unwrap();
    apply(&s, ALLOW_FRONTEND);
    let (_pay, _pay_sc, fe) = payments_and_frontend(&s).await;
    let url = format!("http://{}/whoami", fe.upstream("payments.default"));
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);

    let filler = fill(&disk.at);
    // Writes fail with a 503 that names the disk; nothing half-written.
    let out = s.cli(&["service", "add", "ledger"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("disk") && err.contains("full") && err.contains("503"),
        "{err}"
    );
    // Reads and the mesh go on.
    let services = s.cli_json(&["service", "list"]).unwrap();
    assert_eq!(services.as_array().unwrap().len(), 2, "{services}");
    for _ in 0..5 {
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
    }
    // Space again: writes succeed, and the database is intact.
    std::fs::remove_file(&filler).unwrap();
    s.cli_json(&["service", "add", "ledger"]).unwrap();
    let services = s.cli_json(&["service", "list"]).unwrap();
    assert_eq!(services.as_array().unwrap().len(), 3, "{services}");
    let check = Command::new("python3")
        .args(["-c", "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('PRAGMA integrity_check').fetchone()[0])"])
        .arg(data.join("ward.db"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&check.stdout).trim(),
        "ok",
        "{check:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.kill9();
}

/// A peer sidecar stopped with SIGSTOP while a request is in flight: that
/// request fails within the documented 20–30 s (an unanswered PING), new
/// requests to it fail too, and calls to another service through the same
/// sidecar are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_peer_is_given_up_and_others_are_unaffected() {
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &["--default-policy", "allow"]).unwrap();
    let pay = app("payments");
    let pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let ledger = app("ledger");
    let _ledger_sc = sidecar(&s, "ledger", &ledger.http, &[]);
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:9",
        &[
            "--upstream",
            "payments=127.0.0.1:0",
            "--upstream",
            "ledger=127.0.0.1:0",
        ],
    );
    wait_for_endpoint(&fe, "payments").await;
    wait_for_endpoint(&fe, "ledger").await;
    let pay_url = format!("http://{}", fe.upstream("payments.default"));
    let ledger_url = format!("http://{}/whoami", fe.upstream("ledger.default"));
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{pay_url}/whoami"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // A slow request in flight, then the payments sidecar stops.
    let in_flight = {
        let (http, url) = (http.clone(), format!("{pay_url}/sleep/120000"));
        tokio::spawn(async move {
            let start = std::time::Instant::now();
            let status = http.get(url).send().await.map(|r| r.status().as_u16());
            (status, start.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(pay_sc.proc.signal("-STOP"));
    let stopped = std::time::Instant::now();
    // Meanwhile the ledger answers as usual.
    while stopped.elapsed() < Duration::from_secs(10) {
        let t = std::time::Instant::now();
        let r = http.get(&ledger_url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "ledger slowed to {:?}",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, took) = tokio::time::timeout(Duration::from_secs(40), in_flight)
        .await
        .expect("the in-flight request was never given up")
        .unwrap();
    assert_eq!(status.ok(), Some(502), "after {took:?}");
    assert!(took < Duration::from_secs(35), "given up after {took:?}");
    // A new request to the stopped peer fails in bounded time too.
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(40),
        http.get(format!("{pay_url}/whoami")).send(),
    )
    .await
    .expect("a new request to the stopped peer hung");
    assert_ne!(r.map(|r| r.status().as_u16()).unwrap_or(0), 200);
    assert!(t.elapsed() < Duration::from_secs(35), "{:?}", t.elapsed());
    assert_eq!(http.get(&ledger_url).send().await.unwrap().status(), 200);
    assert!(pay_sc.proc.signal("-CONT"));
}
