//! The admin CLI against a real `ward server`: registry, issuance,
//! inspection, revocation, CA rotation, status, help.
mod common;

use std::process::Command;

use common::*;
use x509_parser::prelude::{FromDer, X509Certificate};

#[test]
fn issue_verify_rotate_verify() {
    let s = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let (a_cert, a_key) = (dir.path().join("a.pem"), dir.path().join("a.key"));
    let v = s
        .cli_json(&[
            "cert",
            "issue",
            "--spiffe-id",
            "spiffe://ward.internal/ns/default/sa/web",
            "--out-cert",
            a_cert.to_str().unwrap(),
            "--out-key",
            a_key.to_str().unwrap(),
        ])
        .unwrap();
    assert_eq!(v["spiffe_id"], "spiffe://ward.internal/ns/default/sa/web");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&a_key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let key_pem = std::fs::read_to_string(&a_key).unwrap();
    assert!(
        key_pem.starts_with("-----BEGIN PRIVATE KEY-----"),
        "PKCS#8 PEM"
    );

    // Every X509-SVID rule, checked on the issued leaf.
    let pem = std::fs::read(&a_cert).unwrap();
    let chain = ward_ca::parse_pem_certs(&pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf and signing CA");
    let (_, leaf) = X509Certificate::from_der(&chain[0]).unwrap();
    assert_eq!(
        ward_identity::validate_leaf(&leaf).unwrap().as_str(),
        "spiffe://ward.internal/ns/default/sa/web"
    );
    let ku = leaf.key_usage().unwrap().unwrap();
    assert!(
        ku.critical
            && ku.value.digital_signature()
            && !ku.value.key_encipherment()
            && !ku.value.key_cert_sign()
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap();
    assert!(eku.value.server_auth && eku.value.client_auth);
    assert!(!leaf.basic_constraints().unwrap().unwrap().value.ca);
    let life = leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp();
    assert!(
        (86400..=86400 + 10).contains(&life),
        "24 h default (+10 s backdating): {life}"
    );
    let (_, signing) = X509Certificate::from_der(&chain[1]).unwrap();
    ward_identity::validate_ca(&signing).unwrap();

    let (ok, out) = openssl_verify(&s.bundle_path(), &a_cert);
    assert!(ok, "{out}");
    assert!(s
        .cli(&["cert", "inspect", a_cert.to_str().unwrap()])
        .status
        .success());

    // Rotate the signing CA; old and new leaves both verify against the
    // published bundle.
    let before = s.cli_json(&["ca", "show"]).unwrap();
    let r = s.cli_json(&["ca", "rotate"]).unwrap();
    assert_ne!(r["active_serial"], before["signing"][0]["serial"]);
    let (b_cert, b_key) = (dir.path().join("b.pem"), dir.path().join("b.key"));
    let bundle = dir.path().join("bundle.pem");
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        "spiffe://ward.internal/ns/default/sa/web",
        "--out-cert",
        b_cert.to_str().unwrap(),
        "--out-key",
        b_key.to_str().unwrap(),
        "--out-bundle",
        bundle.to_str().unwrap(),
    ])
    .unwrap();
    let b_chain = ward_ca::parse_pem_certs(&std::fs::read(&b_cert).unwrap()).unwrap();
    assert_ne!(b_chain[1], chain[1], "issued by the new signing CA");
    for cert in [&a_cert, &b_cert] {
        let (ok, out) = openssl_verify(&bundle, cert);
        assert!(ok, "{}: {out}", cert.display());
        assert!(s
            .cli(&[
                "--trust-bundle",
                bundle.to_str().unwrap(),
                "cert",
                "inspect",
                cert.to_str().unwrap()
            ])
            .status
            .success());
    }
    let after = s.cli_json(&["ca", "show"]).unwrap();
    let states: Vec<&str> = after["signing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["retired", "active"]);
    assert!(
        after["bundle_sequence"].as_u64().unwrap() > before["bundle_sequence"].as_u64().unwrap()
    );

    // A certificate from another CA fails inspection.
    let other = server(&[]);
    let (ok, _) = openssl_verify(&other.bundle_path(), &a_cert);
    assert!(!ok);
    let out = other.cli(&["cert", "inspect", a_cert.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn registry_tokens_revocation_status_audit() {
    let s = server(&[]);
    let v = s
        .cli_json(&["service", "add", "payments", "--namespace", "prod"])
        .unwrap();
    assert_eq!(v["spiffe_id"], "spiffe://ward.internal/ns/prod/sa/payments");
    let dup = s.cli(&["service", "add", "payments", "--namespace", "prod"]);
    assert_eq!(dup.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let bad = s.cli(&["service", "add", "bad/name"]);
    assert_eq!(bad.status.code(), Some(1));

    let list = s.cli_json(&["service", "list"]).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);

    // Tokens only for registered services, and shown once.
    let t = s
        .cli_json(&[
            "join-token",
            "create",
            "--service",
            "payments",
            "--namespace",
            "prod",
            "--ttl",
            "10m",
            "--uses",
            "3",
        ])
        .unwrap();
    assert!(t["token"].as_str().unwrap().starts_with("wjt_"));
    assert_eq!(t["uses"], 3);
    let missing = s.cli(&["join-token", "create", "--service", "nope"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("ward service add nope"));
    let db = std::fs::read(s.data_dir.join("ward.db")).unwrap();
    let raw = t["token"].as_str().unwrap().as_bytes();
    assert!(
        !db.windows(raw.len()).any(|w| w == raw),
        "the token itself is never stored"
    );

    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c.pem");
    let k = dir.path().join("c.key");
    let issued = s
        .cli_json(&[
            "cert",
            "issue",
            "--spiffe-id",
            "spiffe://ward.internal/ns/prod/sa/payments",
            "--ttl",
            "30m",
            "--out-cert",
            c.to_str().unwrap(),
            "--out-key",
            k.to_str().unwrap(),
        ])
        .unwrap();
    let serial = issued["serial"].as_str().unwrap();
    let status = s.cli_json(&["status"]).unwrap();
    assert_eq!(status["services"], 1);
    assert!(
        status["certificates_near_expiry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["serial"] == serial),
        "{status}"
    );

    let r = s
        .cli_json(&["cert", "revoke", "--cert", c.to_str().unwrap()])
        .unwrap();
    assert_eq!(r["serial"], serial);
    let list = s
        .cli_json(&[
            "cert",
            "list",
            "--spiffe-id",
            "spiffe://ward.internal/ns/prod/sa/payments",
        ])
        .unwrap();
    assert!(list[0]["revoked_at"].is_i64());
    assert_eq!(s.cli(&["cert", "revoke", "00ff"]).status.code(), Some(1));

    assert!(s
        .cli(&["service", "remove", "payments", "--namespace", "prod"])
        .status
        .success());
    assert_eq!(
        s.cli(&["service", "remove", "payments", "--namespace", "prod"])
            .status
            .code(),
        Some(1)
    );

    let audit = s.cli_json(&["audit", "--limit", "1000"]).unwrap();
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for want in [
        "ca.root.create",
        "service.add",
        "join-token.create",
        "cert.issue",
        "cert.revoke",
        "service.remove",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let audit_text = audit.to_string();
    assert!(
        !audit_text.contains(t["token"].as_str().unwrap()),
        "no secrets in the audit log"
    );
}

#[test]
fn data_dir_files_and_restart() {
    use std::os::unix::fs::PermissionsExt;
    let mut s = server(&["--trust-domain", "example.org"]);
    for f in ["kek.key", "admin.token"] {
        let mode = std::fs::metadata(s.data_dir.join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    let fp = s.fingerprint.clone();
    s.cli_json(&["service", "add", "web"]).unwrap();
    s.kill9();
    s.spawn("127.0.0.1:0").unwrap();
    assert_eq!(s.fingerprint, fp, "same root after restart");
    assert_eq!(
        s.cli_json(&["service", "list"]).unwrap()[0]["spiffe_id"],
        "spiffe://example.org/ns/default/sa/web"
    );
    // The trust domain is set once.
    s.kill9();
    s.extra_args = vec!["--trust-domain".into(), "other.org".into()];
    assert!(s.spawn("127.0.0.1:0").is_err());
    // Fingerprint-pinned access with an explicit server URL.
    s.extra_args.clear();
    s.spawn("127.0.0.1:0").unwrap();
    let out = ward_testkit::ward(
        std::path::Path::new(bin()),
        &[
            "--output",
            "json",
            "--server",
            &s.url,
            "--ca-fingerprint",
            &s.fingerprint,
            "--admin-token-file",
            s.data_dir.join("admin.token").to_str().unwrap(),
            "service",
            "list",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = format!("sha256:{}", "0".repeat(64));
    let out = ward_testkit::ward(
        std::path::Path::new(bin()),
        &[
            "--server",
            &s.url,
            "--ca-fingerprint",
            &wrong,
            "--admin-token-file",
            s.data_dir.join("admin.token").to_str().unwrap(),
            "service",
            "list",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("fingerprint"));
}

#[test]
fn a_data_dir_has_one_server() {
    let mut s = server(&[]);
    let pid = s.child.as_ref().unwrap().id();
    // Under `timeout`: a second server that starts must fail the test, not
    // hang it.
    let out = std::process::Command::new("timeout")
        .args([
            "20",
            bin(),
            "server",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&s.data_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by another ward server"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert!(err.contains(&s.url), "{err}");
    // The running server's files are untouched and it keeps serving.
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(s.data_dir.join("server.json")).unwrap()).unwrap();
    assert_eq!(info["url"], s.url.as_str());
    s.cli_json(&["service", "add", "web"]).unwrap();

    // A clean stop removes server.json, so local clients find no server
    // rather than a dead port; a successor then takes the dir.
    let child = s.child.take().unwrap();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let mut child = child;
    child.wait().unwrap();
    assert!(!s.data_dir.join("server.json").exists());
    let out = s.cli(&["service", "list"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is `ward server --data-dir"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.spawn("127.0.0.1:0").unwrap();
    assert_eq!(s.cli_json(&["service", "list"]).unwrap()[0]["name"], "web");
    // kill -9 leaves server.json behind, but the kernel drops the lock.
    s.kill9();
    s.spawn("127.0.0.1:0").unwrap();
}

#[test]
fn policy_check_says_what_it_checked() {
    let s = server(&[]);
    for svc in ["payments", "frontend"] {
        s.cli_json(&["service", "add", svc]).unwrap();
    }
    let check = |from: &str, to: &str, extra: &[&str]| {
        let mut args = vec!["policy", "check", "--from", from, "--to", to];
        args.extend_from_slice(extra);
        s.cli(&args)
    };
    // Each form of caller, and what it resolved to.
    for (from, id, how) in [
        (
            "frontend",
            "spiffe://ward.internal/ns/default/sa/frontend",
            "registered service default/frontend",
        ),
        (
            "default/frontend",
            "spiffe://ward.internal/ns/default/sa/frontend",
            "registered service default/frontend",
        ),
        (
            "ns/shop/sa/cart",
            "spiffe://ward.internal/ns/shop/sa/cart",
            "ns/shop/sa/cart in trust domain ward.internal",
        ),
        (
            "spiffe://other.org/billing",
            "spiffe://other.org/billing",
            "a SPIFFE ID",
        ),
    ] {
        let out = check(from, "payments", &[]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{from}: {e}: {}", String::from_utf8_lossy(&out.stderr)));
        assert_eq!(v["request"]["from"], id, "{from}");
        assert_eq!(v["request"]["from_resolved"], how, "{from}");
    }
    let out = ward_testkit::ward(
        std::path::Path::new(bin()),
        &[
            "--data-dir",
            s.data_dir.to_str().unwrap(),
            "policy",
            "check",
            "--from",
            "frontend",
            "--to",
            "payments",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains("caller: spiffe://ward.internal/ns/default/sa/frontend (registered service default/frontend)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Nonsense is an error that names the problem, not a decision.
    let bad = |out: std::process::Output, want: &str| {
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{want}: {err}");
        assert!(
            out.stdout.is_empty(),
            "{want}: answered {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(err.contains(want), "wanted {want:?} in: {err}");
    };
    bad(check("Hello World", "payments", &[]), "is not a SPIFFE ID");
    bad(check("ghost", "payments", &[]), "or a registered service");
    bad(check("spiffe://bad/x/", "payments", &[]), "spiffe://bad/x/");
    bad(
        check("spiffe://ward.internal", "payments", &[]),
        "a trust domain, not a workload",
    );
    bad(
        check("frontend", "paymnts", &[]),
        "no service default/paymnts is registered",
    );
    bad(
        check(
            "frontend",
            "payments",
            &["--claims", "{\"iss\": 5, \"sub\": \"x\"}"],
        ),
        "iss must be a non-empty string",
    );
    bad(
        check(
            "frontend",
            "payments",
            &["--claims", "{\"iss\": \"https://idp\"}"],
        ),
        "sub is missing",
    );
    bad(
        check(
            "frontend",
            "payments",
            &["--claims", "{\"iss\": \"i\", \"sub\": \"s\", \"aud\": 7}"],
        ),
        "aud must be",
    );
    bad(
        check("frontend", "payments", &["--claims", "{iss: 1}"]),
        "--claims: not JSON",
    );
}

#[test]
fn errors_say_what_to_do() {
    let s = server(&[]);
    let token = s.data_dir.join("admin.token");
    let token = token.to_str().unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let run = |args: &[&str]| ward_testkit::ward(std::path::Path::new(bin()), args);
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    // A wrong pin is named as one, with both fingerprints.
    let out = run(&[
        "--server",
        &s.url,
        "--ca-fingerprint",
        &wrong,
        "--admin-token-file",
        token,
        "service",
        "list",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "has root fingerprint {}, not the expected {wrong}",
            s.fingerprint
        )),
        "{err}"
    );
    assert!(
        err.contains("hint: check `ward ca fingerprint` on the server"),
        "{err}"
    );
    assert!(
        !err.contains("cannot reach") && !err.contains("Connect"),
        "{err}"
    );
    // The same as JSON on stderr.
    let out = run(&[
        "--output",
        "json",
        "--server",
        &s.url,
        "--ca-fingerprint",
        &wrong,
        "service",
        "list",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert!(
        v["error"].as_str().unwrap().contains("not the expected"),
        "{v}"
    );
    assert!(
        v["hint"].as_str().unwrap().contains("ward ca fingerprint"),
        "{v}"
    );

    // Nothing listening: one line with the address, and a hint.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://{}", closed.local_addr().unwrap());
    drop(closed);
    let out = run(&[
        "--server",
        &url,
        "--ca-fingerprint",
        &s.fingerprint,
        "service",
        "list",
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.lines().collect::<Vec<_>>(),
        [
            format!("error: nothing is listening at {url} (connection refused)").as_str(),
            "  hint: is `ward server` running there? check --server (or WARD_SERVER), or --data-dir",
        ],
        "{err}"
    );

    // The server's own refusals, and usage errors (exit 2), as JSON too.
    let out = s.cli(&["service", "remove", "nosuch"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert!(v["error"].as_str().unwrap().contains("nosuch"), "{v}");
    let out = run(&["--output", "json", "service", "lizt"]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert!(v["error"].as_str().unwrap().contains("lizt"), "{v}");
    assert!(v["hint"].as_str().unwrap().contains("--help"), "{v}");
    // Without --output json, clap's own usage message and exit 2 stay.
    let out = run(&["service", "lizt"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("Usage:"));
}

#[test]
fn join_tokens_listed_and_revoked_times_and_dry_run_shown() {
    let s = server(&[]);
    let human = |args: &[&str]| {
        let mut all = vec!["--data-dir", s.data_dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = ward_testkit::ward(std::path::Path::new(bin()), &all);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    // Times for people are RFC 3339, not Unix seconds.
    let (out, _) = human(&["service", "add", "web"]);
    let created = out
        .lines()
        .find_map(|l| l.strip_prefix("created_at: "))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        created.len() >= 20 && created.as_bytes()[4] == b'-' && created.contains('T'),
        "{created}"
    );

    // Join tokens: listed by id (never the token), revoked by id, and a
    // revoked token buys nothing.
    let a = s
        .cli_json(&["join-token", "create", "--service", "web"])
        .unwrap();
    let b = s
        .cli_json(&["join-token", "create", "--service", "web", "--uses", "3"])
        .unwrap();
    let (id_a, id_b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    assert_eq!(id_a.len(), 16);
    let list = s.cli_json(&["join-token", "list"]).unwrap();
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [id_a, id_b]);
    assert_eq!(list[1]["uses_left"], 3);
    assert!(!list.to_string().contains("wjt_"), "{list}");
    let (table, _) = human(&["join-token", "list"]);
    assert!(
        table.contains(id_a) && table.contains("USES_LEFT"),
        "{table}"
    );
    let (_, note) = human(&["join-token", "create", "--service", "web"]);
    assert!(note.contains("ward join-token revoke"), "{note}");
    s.cli_json(&["join-token", "revoke", id_a]).unwrap();
    let left = s.cli_json(&["join-token", "list"]).unwrap();
    assert!(!left.to_string().contains(id_a), "{left}");
    let again = s.cli(&["join-token", "revoke", id_a]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("no join token"));
    let bad = s.cli(&["join-token", "revoke", "wjt_secret"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("16 hex digits"));
    let (csr, _) = common::csr(&common::id("spiffe://ward.internal/ns/default/sa/web"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        let mut c = s.grpc(None).await.unwrap();
        c.sign_certificate(common::sign_req(csr, a["token"].as_str().unwrap()))
            .await
    });
    assert!(
        refused.is_err(),
        "a revoked join token bought a certificate"
    );
    assert!(s
        .cli_json(&["audit"])
        .unwrap()
        .to_string()
        .contains("join-token.revoke"));

    // policy list shows which policies are dry-run.
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: trial }\nspec:\n  action: DENY\n  dryRun: true\n  rules: [{}]\n---\napiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: real }\nspec:\n  action: DENY\n  rules: [{}]\n",
    )
    .unwrap();
    s.cli_json(&["policy", "apply", "-f", f.to_str().unwrap()])
        .unwrap();
    let (table, _) = human(&["policy", "list"]);
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(name))
            .unwrap_or_else(|| panic!("{table}"))
            .to_string()
    };
    assert!(table.lines().next().unwrap().contains("DRY_RUN"), "{table}");
    assert!(row("trial").contains(" yes "), "{table}");
    assert!(row("real").contains(" no "), "{table}");
}

#[test]
fn upstream_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, key) = (dir.path().join("up.pem"), dir.path().join("up.key"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/O=Example Corp/CN=Example Root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&ca)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let s = server(&[
        "--upstream-ca-cert",
        ca.to_str().unwrap(),
        "--upstream-ca-key",
        key.to_str().unwrap(),
        "--ca-ttl",
        "2d",
    ]);
    let (c, k) = (dir.path().join("c.pem"), dir.path().join("c.key"));
    s.cli_json(&[
        "cert",
        "issue",
        "--spiffe-id",
        "spiffe://ward.internal/ns/default/sa/a",
        "--out-cert",
        c.to_str().unwrap(),
        "--out-key",
        k.to_str().unwrap(),
    ])
    .unwrap();
    // Verifies against the enterprise root alone, with the chain ward returned.
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg("-untrusted")
        .arg(&c)
        .arg(&c)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = s.cli_json(&["ca", "show"]).unwrap();
    assert!(v["root"]["subject"]
        .as_str()
        .unwrap()
        .contains("Example Root"));
}

#[test]
fn help_is_complete() {
    let cmds: &[&[&str]] = &[
        &[],
        &["server"],
        &["service"],
        &["service", "add"],
        &["service", "list"],
        &["service", "remove"],
        &["join-token", "create"],
        &["cert", "issue"],
        &["cert", "inspect"],
        &["cert", "revoke"],
        &["cert", "list"],
        &["ca", "show"],
        &["ca", "fingerprint"],
        &["ca", "rotate"],
        &["status"],
        &["audit"],
        &["demo"],
        &["proxy"],
        &["sample-app"],
        &["policy", "apply"],
        &["policy", "list"],
        &["client", "create"],
        &["token", "get"],
        &["token", "verify"],
        &["signing-key", "rotate"],
    ];
    for c in cmds {
        let out = ward_testkit::ward(std::path::Path::new(bin()), &[*c, &["--help"]].concat());
        assert!(out.status.success(), "{c:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage:"), "{c:?}: {text}");
        assert!(text.contains("--output"), "{c:?}: global flags shown");
    }
    let out = ward_testkit::ward(std::path::Path::new(bin()), &["server", "--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--trust-domain",
        "--svid-ttl",
        "--upstream-ca-cert",
        "--dns-name",
        "--data-dir",
    ] {
        assert!(text.contains(flag), "{flag}");
    }
    let out = ward_testkit::ward(std::path::Path::new(bin()), &["service", "add"]);
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn policies_apply_all_or_nothing() {
    let s = server(&[]);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: payments-from-frontend, namespace: default }\n\
         spec:\n  selector: { service: payments }\n  action: ALLOW\n  rules:\n  - from: [{ source: { principals: [\"ward.internal/ns/default/sa/frontend\"] } }]\n\
         ---\napiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: deny-ledger }\nspec:\n  selector: { service: ledger }\n  action: DENY\n  rules: [{}]\n",
    )
    .unwrap();
    let v = s
        .cli_json(&["policy", "apply", "-f", good.to_str().unwrap()])
        .unwrap();
    assert_eq!(v["applied"].as_array().unwrap().len(), 2);
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: new-one }\nspec: { action: ALLOW, rules: [{}] }\n\
         ---\napiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: broken }\nspec:\n  rules:\n  - from: [{ source: { ipBlocks: [\"10.0.0.0/40\"] } }]\n",
    )
    .unwrap();
    let out = s.cli(&["policy", "apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yaml, document 2")
            && err.contains("spec.rules[0].from[0].source.ipBlocks[0]"),
        "{err}"
    );
    let list = s.cli_json(&["policy", "list"]).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["deny-ledger", "payments-from-frontend"],
        "the rejected file changed nothing"
    );
    let p = s
        .cli_json(&["policy", "get", "payments-from-frontend"])
        .unwrap();
    assert_eq!(p["version"], 1);
    assert!(s.cli(&["policy", "delete", "deny-ledger"]).status.success());
    assert_eq!(
        s.cli(&["policy", "delete", "deny-ledger"]).status.code(),
        Some(1)
    );
    let audit = s.cli_json(&["audit"]).unwrap().to_string();
    assert!(audit.contains("policy.apply") && audit.contains("policy.delete"));
}

/// The hard open-file limit of this process (what a child inherits).
fn hard_open_files() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

#[test]
fn the_server_raises_its_open_file_limit_and_says_how_many_sidecars_fit() {
    use std::os::unix::fs::PermissionsExt;
    let Some(hard) = hard_open_files() else {
        return;
    };
    // Started with a soft limit of 512, as many systems give a process.
    let dir = tempfile::tempdir().unwrap();
    let wrapper = dir.path().join("ward-low-limit");
    std::fs::write(
        &wrapper,
        format!("#!/bin/sh\nulimit -Sn 512 && exec {} \"$@\"\n", bin()),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let s = ward_testkit::WardServer::start(wrapper.to_str().unwrap(), &[]).unwrap();
    let st = s.cli_json(&["status"]).unwrap();
    assert_eq!(st["open_files"]["limit"].as_u64(), Some(hard), "{st}");
    let cap = st["sidecar_capacity"].as_u64().unwrap();
    let in_use = st["open_files"]["in_use"].as_u64().unwrap();
    assert_eq!(cap, hard - in_use - 256, "{st}");
    let dd = s.data_dir.to_str().unwrap();
    let out = ward_testkit::ward(&wrapper, &["--data-dir", dd, "status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!(
            "sidecars it can hold at its open-file limit ({hard}): "
        )),
        "{table}"
    );
}

#[test]
fn a_config_file_sets_the_server_and_flags_and_environment_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ward.yaml");
    let from_file = dir.path().join("from-file");
    std::fs::write(
        &file,
        format!(
            "data-dir: {}\ntrust-domain: example.org\nsvid-ttl: 2h\ntoken-ttl: 10m\ndns-name: [a.example, b.example]\nissuer: null\n",
            from_file.display()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    // --print-config: the file, then a flag and an environment variable
    // over it.
    let print = |extra: &[&str], env: Option<(&str, &std::path::Path)>| {
        let mut c = Command::new(bin());
        c.args(["server", "--config", f, "--print-config"])
            .args(extra);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
        v
    };
    let v = print(&[], None);
    assert_eq!(v["trust-domain"], "example.org");
    assert_eq!(v["svid-ttl"], "2h");
    assert_eq!(v["dns-name"], serde_json::json!(["a.example", "b.example"]));
    assert_eq!(v["data-dir"], from_file.to_str().unwrap());
    let v = print(&["--svid-ttl", "3h"], None);
    assert_eq!(v["svid-ttl"], "3h");
    assert_eq!(v["token-ttl"], "10m");
    // What it prints is a configuration file that gives the same.
    let printed = dir.path().join("printed.yaml");
    let out = Command::new(bin())
        .args(["server", "--config", f, "--print-config"])
        .output()
        .unwrap();
    std::fs::write(&printed, &out.stdout).unwrap();
    let again = Command::new(bin())
        .args([
            "server",
            "--config",
            printed.to_str().unwrap(),
            "--print-config",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&out.stdout),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let from_env = dir.path().join("from-env");
    let v = print(&[], Some(("WARD_DATA_DIR", &from_env)));
    assert_eq!(v["data-dir"], from_env.to_str().unwrap());

    // A server started with it runs with the file's settings (the
    // listen address given as a flag).
    std::fs::write(&file, "trust-domain: example.org\nsvid-ttl: 2h\n").unwrap();
    let s = ward_testkit::WardServer::start(bin(), &["--config", f]).unwrap();
    let st = s.cli_json(&["status"]).unwrap();
    assert_eq!(st["trust_domain"], "example.org");

    // A misspelt setting is refused by name, before anything starts.
    std::fs::write(&file, "svid-tll: 2h\n").unwrap();
    let out = Command::new(bin())
        .args(["server", "--config", f])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no setting \"svid-tll\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
