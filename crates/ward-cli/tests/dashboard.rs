//! The dashboard and `ward top`, with the real binary: sidecars report
//! their traffic to the control plane, `ward top` shows who called whom
//! and which policy denied what, and Debian's Chromium (driven by
//! Selenium, tests/interop/dashboard.py) signs in, sees the live mesh on
//! every page with no console error, renders markup in names as text,
//! and is sent back to sign-in when its session ends.
mod mesh_common;

use std::process::Command;
use std::time::Duration;

use mesh_common::*;
use serde_json::Value;
use ward_testkit::{wait_until, WardServer};

const DENY_ADMIN: &str = "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin }\nspec:\n  selector: { service: payments }\n  action: DENY\n  rules:\n  - to: [{ operation: { paths: [\"/admin\"] } }]\n";

fn python() -> String {
    std::env::var("WARD_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn ui_server(extra: &[&str]) -> WardServer {
    let mut args = vec!["--ui-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let s = WardServer::start(bin().to_str().unwrap(), &args).unwrap();
    assert!(s.ui_url.is_some(), "no dashboard URL printed");
    s
}

fn run_browser(args: &[&str]) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/dashboard.py");
    let out = Command::new(python())
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dashboard.py {}:\n{}\n{}",
        args[0],
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The edge from frontend to payments in `ward top --output json`.
fn top_edge(s: &WardServer) -> Option<Value> {
    let v = s.cli_json(&["top"]).ok()?;
    v["edges"]
        .as_array()?
        .iter()
        .find(|e| {
            e["source"] == "spiffe://ward.internal/ns/default/sa/frontend"
                && e["destination"] == "spiffe://ward.internal/ns/default/sa/payments"
        })
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_mesh_in_top_and_in_the_browser() {
    let s = ui_server(&[]);
    let pay = app("payments");
    let _pay_sc = sidecar(&s, "payments", &pay.http, &["--report-interval", "1s"]);
    let fe = sidecar(
        &s,
        "frontend",
        "127.0.0.1:9",
        &[
            "--upstream",
            "payments=127.0.0.1:0",
            "--report-interval",
            "1s",
        ],
    );
    wait_for_endpoint(&fe, "payments").await;
    apply(&s, ALLOW_FRONTEND);
    apply(&s, DENY_ADMIN);
    s.cli_json(&[
        "client",
        "create",
        "xss",
        "--service",
        "payments",
        "--auth",
        "client_secret_basic",
        "--scope",
        "<img src=x onerror=alert(2)>",
    ])
    .unwrap();

    let base = format!("http://{}", fe.upstream("payments.default"));
    let http = reqwest::Client::new();
    let allowed_and_denied = wait_until(Duration::from_secs(20), || async {
        let ok = http
            .get(format!("{base}/whoami"))
            .send()
            .await
            .map(|r| r.status());
        let no = http
            .get(format!("{base}/admin"))
            .send()
            .await
            .map(|r| r.status());
        matches!((ok, no), (Ok(a), Ok(b)) if a == 200 && b == 403)
    })
    .await;
    assert!(allowed_and_denied, "the policies are not in force");
    for _ in 0..5 {
        http.get(format!("{base}/whoami")).send().await.unwrap();
        http.get(format!("{base}/admin")).send().await.unwrap();
    }

    // `ward top`: the edge, its counts, and the policy behind the denials.
    let reported = wait_until(Duration::from_secs(20), || async {
        top_edge(&s).is_some_and(|e| {
            e["allowed"].as_u64() >= Some(6)
                && e["denied"].as_u64() >= Some(6)
                && e["denied_by"][0]["policy"] == "default/no-admin"
        })
    })
    .await;
    assert!(reported, "ward top: {:?}", s.cli_json(&["top"]));
    let table = Command::new(bin())
        .args(["--output", "table", "--data-dir"])
        .arg(&s.data_dir)
        .arg("top")
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("default/frontend") && table.contains("default/no-admin"),
        "{table}"
    );
    let top = s.cli_json(&["top"]).unwrap();
    let kinds: Vec<&str> = top["watchers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["sidecar", "sidecar"], "{top}");

    let expect = serde_json::json!({
        "services": ["default/payments", "default/frontend"],
        "deny_policy": "default/no-admin",
        "denied_path": "/admin",
        "version": env!("CARGO_PKG_VERSION"),
    });
    let shots = std::env::var("WARD_DASHBOARD_SCREENSHOTS").unwrap_or_default();
    let (url, token) = (s.ui_url.clone().unwrap(), s.admin_token());
    let bundle = s.data_dir.join("bundle.pem");
    let mut args = vec![
        "mesh".to_string(),
        url,
        token,
        bundle.display().to_string(),
        expect.to_string(),
    ];
    if !shots.is_empty() {
        args.push(shots);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tokio::task::block_in_place(|| run_browser(&args));
}

#[test]
fn an_ended_session_returns_to_sign_in() {
    let s = ui_server(&["--ui-session-ttl", "4s"]);
    s.cli_json(&["service", "add", "payments"]).unwrap();
    let bundle = s.data_dir.join("bundle.pem");
    run_browser(&[
        "expiry",
        s.ui_url.as_deref().unwrap(),
        &s.admin_token(),
        bundle.to_str().unwrap(),
    ]);
}

/// A traffic report must come from the connection of an open watch
/// stream of the same identity, and is bounded.
#[test]
fn reports_without_a_stream_or_too_large_are_refused() {
    let s = ui_server(&[]);
    let id = "spiffe://ward.internal/ns/default/sa/payments";
    s.cli_json(&["service", "add", "payments"]).unwrap();
    let (chain, key) = s.issue(id, &[]).unwrap().pair();
    let trust = ward_tls::ControlPlaneTrust::fingerprint(&s.fingerprint).unwrap();
    let cfg = ward_tls::client_config(trust, Some((chain, key)), &[b"h2"]).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let ch = ward_api::connect(&s.addr, cfg).await.unwrap();
        let mut c = ward_api::v1::identity_client::IdentityClient::new(ch);
        let report = |instance: &str, n: usize| ward_api::v1::TrafficReport {
            instance: instance.into(),
            cert_not_after: 0,
            counts: (0..n)
                .map(|i| ward_api::v1::TrafficCount {
                    peer: format!("spiffe://ward.internal/x/{i}"),
                    decision: "allow".into(),
                    policy: "p".into(),
                    requests: 1,
                })
                .collect(),
        };
        let e = c.report_traffic(report("nobody", 1)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        let e = c.report_traffic(report("nobody", 513)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    });
    let top = s.cli_json(&["top"]).unwrap();
    assert_eq!(top["edges"], serde_json::json!([]), "{top}");
}
