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
