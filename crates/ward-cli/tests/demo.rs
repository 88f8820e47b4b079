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

/// The interactive demo: the commands it prints run as printed (with the
/// path of the binary that is running), each port says whose it is, and
/// SIGTERM stops it cleanly, as Ctrl-C does.
#[test]
fn interactive_demo_prints_runnable_commands_and_stops_on_sigterm() {
    use std::io::BufRead;
    let bin = env!("CARGO_BIN_EXE_ward");
    let mut child = std::process::Command::new(bin)
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("running ward demo");
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let last = line.contains("policy check");
        printed.push(line);
        if last {
            break;
        }
    }
    let text = printed.join("\n");
    for term in ["A sidecar is", "The trust domain", "Mesh default deny"] {
        assert!(text.contains(term), "{text}");
    }
    let curls: Vec<&String> = printed.iter().filter(|l| l.contains("curl -s")).collect();
    assert!(curls.len() >= 5, "{text}");
    assert!(curls.iter().all(|l| l.contains("sidecar's")), "{text}");
    let commands: Vec<Vec<String>> = printed
        .iter()
        .filter(|l| l.trim_start().starts_with(bin))
        .map(|l| {
            let cmd = l.split('#').next().unwrap();
            cmd.split_whitespace().map(String::from).collect()
        })
        .collect();
    assert_eq!(commands.len(), 2, "{text}");
    let data_dir = std::path::PathBuf::from(&commands[0][2]);
    for cmd in &commands {
        let out = std::process::Command::new(&cmd[0])
            .args(&cmd[1..])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        if cmd.iter().any(|a| a == "check") {
            // Denied: exit 1, naming the mesh default.
            assert_eq!(out.status.code(), Some(1), "{stdout}");
            assert!(stdout.starts_with("DENY"), "{stdout}");
        } else {
            assert!(
                out.status.success(),
                "{cmd:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("ward demo did not stop on SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(!data_dir.exists(), "the demo's data dir was left behind");
}

/// The README's two commands share one build: the same cargo profile, so
/// that the second does not start by compiling everything again.
#[test]
fn the_readme_commands_share_one_build() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let block = readme
        .split("## Two commands")
        .nth(1)
        .and_then(|r| r.split("```sh\n").nth(1))
        .and_then(|r| r.split("```").next())
        .expect("a Two commands section with a sh block");
    let lines: Vec<&str> = block.lines().collect();
    assert_eq!(lines.len(), 2, "{block}");
    assert!(
        lines[0].starts_with("cargo run") && lines[0].contains("demo"),
        "{block}"
    );
    assert!(lines[1].starts_with("./scripts/test"), "{block}");
    let script = std::fs::read_to_string(format!("{root}/scripts/test")).unwrap();
    let test_line = script
        .lines()
        .find(|l| l.contains("cargo test"))
        .expect("scripts/test runs cargo test");
    let profile = |cmd: &str| {
        if cmd.contains("--release") {
            "release".to_string()
        } else if let Some(p) = cmd.split("--profile ").nth(1) {
            p.split_whitespace().next().unwrap_or_default().to_string()
        } else {
            "dev".to_string()
        }
    };
    let (run, test) = (profile(lines[0]), profile(test_line));
    // `cargo test` builds with the test profile, which is dev's; `cargo
    // test --release` builds with release.
    assert_eq!(
        run, test,
        "the demo builds with {run}, the tests with {test}"
    );
}
