//! Runs `examples/run.sh` (the one command of examples/README.md) for both
//! services with the binaries of this build: a real ward server, the
//! payments service and the checkout client on loopback ports chosen by
//! the OS. The script and the client fail on any unexpected answer.
use std::path::Path;
use std::process::Command;

fn run(kind: &str) -> String {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_checkout")).parent().unwrap();
    assert!(
        bin_dir.join("ward").exists(),
        "the ward binary is built next to the examples by `cargo test --workspace`; \
         build it with `cargo build -p ward-cli` when testing this package alone"
    );
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/run.sh"))
        .arg(kind)
        .env("WARD_BIN_DIR", bin_dir)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn http_service_with_mtls_and_tokens() {
    let out = run("http");
    for line in [
        "GET /balance with the token: 200 OK",
        "\"client_id\":\"checkout\"",
        "POST /charge with a payments:read token: 403",
        "GET /balance without a token: 401",
        "intruder's connection: 401",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
}

#[test]
fn grpc_service_with_mtls_and_tokens() {
    let out = run("grpc");
    for line in [
        "Echo with the token: OK",
        "the service saw caller spiffe://ward.internal/ns/default/sa/checkout",
        "Echo without a token: Unauthenticated",
        "bound to another certificate",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
}

/// Under `CARGO_TARGET_DIR` the script takes its binaries from there, not
/// from `target/release`.
#[test]
fn binaries_come_from_cargos_target_dir() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/run.sh"))
        .arg("--bin-dir")
        .env("CARGO_TARGET_DIR", dir.path())
        .env_remove("WARD_BIN_DIR")
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        dir.path().join("release").to_str().unwrap()
    );
}

/// A server that cannot start: the script fails, says why, and keeps the
/// log that explains it.
#[test]
fn a_failure_keeps_the_logs() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_checkout")).parent().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/run.sh"))
        .arg("http")
        .env("WARD_BIN_DIR", bin_dir)
        .env("WARD_LISTEN", taken.local_addr().unwrap().to_string())
        .output()
        .expect("bash runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
    let kept = err
        .lines()
        .find_map(|l| l.strip_prefix("failed; the logs are kept in "))
        .and_then(|l| l.strip_suffix(':'))
        .unwrap_or_else(|| panic!("{err}"));
    let log = Path::new(kept).join("server.log");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("cannot listen on"));
    std::fs::remove_dir_all(kept).unwrap();
}
