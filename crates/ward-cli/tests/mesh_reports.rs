//! What a sidecar reports about itself and its traffic: who decided a
//! request (a revocation is not a policy), readiness with a revoked
//! certificate, upstreams that name no registered service, and access-log
//! durations people can read.
mod mesh_common;

use std::time::Duration;

use mesh_common::*;
use serde_json::Value;
use ward_testkit::{wait_until, WardServer};

fn json_lines(log: &[String]) -> Vec<Value> {
    log.iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_readiness_and_unregistered_upstreams_are_reported() {
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    apply(&s, ALLOW_FRONTEND);
    let pay = app("payments");
    let pay_sc = sidecar_logged(
        &s,
        "payments",
        &pay.http,
        &["--access-log"],
        "warn,ward::access=info",
    );
    let fe = sidecar_logged(
        &s,
        "frontend",
        "127.0.0.1:9",
        &[
            "--upstream",
            "payments=127.0.0.1:0",
            "--upstream",
            "ghost=127.0.0.1:0",
        ],
        "warn",
    );
    wait_for_endpoint(&fe, "payments").await;
    let url = format!("http://{}/whoami", fe.upstream("payments.default"));
    assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);

    // An upstream that names no registered service: a warning at start,
    // and in /config.
    let config = admin_json(&fe, "/config").await;
    assert_eq!(
        config["unregistered_upstreams"],
        serde_json::json!(["spiffe://ward.internal/ns/default/sa/ghost"]),
        "{config}"
    );
    assert!(
        json_lines(&fe.proc.log())
            .iter()
            .any(|l| l["level"] == "WARN"
                && l["fields"]["upstream"] == "spiffe://ward.internal/ns/default/sa/ghost"),
        "{:?}",
        fe.proc.log()
    );

    // Durations are rounded to the microsecond.
    let access = |status: u64| {
        json_lines(&pay_sc.proc.log())
            .into_iter()
            .filter(|l| l["target"] == "ward::access" && l["fields"]["status"] == status)
            .map(|l| l["fields"].clone())
            .collect::<Vec<_>>()
    };
    assert!(wait_until(Duration::from_secs(5), || async { !access(200).is_empty() }).await);
    let allowed = &access(200)[0];
    assert_eq!(allowed["policy"], "default/from-frontend", "{allowed}");
    let d = allowed["duration_ms"].as_f64().unwrap();
    assert!(
        d > 0.0 && (d * 1000.0 - (d * 1000.0).round()).abs() < 1e-6,
        "{d}"
    );
    let text = allowed["duration_ms"].to_string();
    assert!(
        text.split('.').nth(1).is_none_or(|f| f.len() <= 3),
        "{text}"
    );

    // The frontend's certificate is revoked: its requests are refused
    // with the revocation, not the ALLOW policy, as the decider, and the
    // frontend reports not ready, saying why.
    assert_eq!(
        reqwest::get(format!("http://{}/ready", fe.admin))
            .await
            .unwrap()
            .status(),
        200
    );
    let serial = admin_json(&fe, "/certs").await["serial"]
        .as_str()
        .unwrap()
        .to_string();
    s.cli_json(&["cert", "revoke", &serial]).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || async {
            reqwest::get(&url).await.unwrap().status() == 403
        })
        .await
    );
    assert!(wait_until(Duration::from_secs(5), || async { !access(403).is_empty() }).await);
    let refused = &access(403)[0];
    assert_eq!(refused["decision"], "deny", "{refused}");
    assert_eq!(refused["policy"], "(certificate revoked)", "{refused}");
    assert_eq!(refused["reason"], "peer certificate revoked", "{refused}");
    let (denied, _) = metric_sum_at(
        &pay_sc.admin,
        "ward_authz_decisions",
        &["decision=\"deny\"", "policy=\"(certificate revoked)\""],
    )
    .await;
    assert!(denied >= 1.0);
    let ready = reqwest::get(format!("http://{}/ready", fe.admin))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let why = ready.text().await.unwrap();
    assert!(
        why.contains(&format!("certificate (serial {serial}) is revoked")),
        "{why}"
    );
    assert!(
        json_lines(&fe.proc.log())
            .iter()
            .any(|l| l["level"] == "ERROR"
                && l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("revoked"))),
        "{:?}",
        fe.proc.log()
    );
}
