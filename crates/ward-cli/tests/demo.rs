//! `ward demo --check`, the README's first command run unattended.
#[test]
fn demo_check_passes() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ward"))
        .args(["demo", "--check", "--output", "json"])
        .output()
        .expect("running ward demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["passed"], v["total"]);
    assert!(v["total"].as_u64().unwrap() >= 6);
    let calls = v["calls"].as_array().unwrap();
    assert!(calls.iter().any(|c| c["protocol"] == "gRPC"
        && c["peer_seen_by_app"] == "spiffe://ward.internal/ns/default/sa/frontend"));
    assert!(calls
        .iter()
        .any(|c| c["to"] == "ledger" && c["result"].as_str().unwrap().starts_with("403")));
}
