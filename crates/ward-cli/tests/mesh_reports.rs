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

/// The value of the sample line `name{…}` whose labels include all of
/// `labels`, in a Prometheus exposition.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .find(|l| labels.iter().all(|kv| l.contains(kv)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Metrics people expect of a mesh, in Linkerd's and Istio's style:
/// request durations by direction, peer service, status class and
/// decision; request and response bytes; the standard process_* metrics
/// on the sidecar and the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_durations_bytes_and_process_metrics() {
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    apply(&s, ALLOW_FRONTEND);
    let (_pay, pay_sc, fe) = payments_and_frontend(&s).await;
    let base = format!("http://{}", fe.upstream("payments.default"));
    let http = reqwest::Client::new();
    for _ in 0..5 {
        assert_eq!(
            http.get(format!("{base}/whoami"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let body = "x".repeat(1000);
    let echoed = http
        .post(format!("{base}/echo"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.text().await.unwrap(), body);

    let frontend = "peer=\"spiffe://ward.internal/ns/default/sa/frontend\"";
    let payments = "peer=\"spiffe://ward.internal/ns/default/sa/payments\"";
    let (_, inbound) = metric_sum(&pay_sc, "ward_proxy_requests", &[]).await;
    let (_, outbound) = metric_sum(&fe, "ward_proxy_requests", &[]).await;
    let dur = "ward_proxy_request_duration_milliseconds";
    let ok = [
        "direction=\"inbound\"",
        frontend,
        "status_class=\"2xx\"",
        "decision=\"allow\"",
    ];
    assert_eq!(
        sample(&inbound, &format!("{dur}_count"), &ok),
        Some(6.0),
        "{inbound}"
    );
    let sum = sample(&inbound, &format!("{dur}_sum"), &ok).unwrap();
    assert!(sum > 0.0 && sum < 6.0 * 5000.0, "{sum}");
    let mut le = ok.to_vec();
    le.push("le=\"+Inf\"");
    assert_eq!(
        sample(&inbound, &format!("{dur}_bucket"), &le),
        Some(6.0),
        "{inbound}"
    );
    apply(&s, "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin }\nspec:\n  action: DENY\n  rules:\n  - to: [{ operation: { paths: [\"/admin\"] } }]\n");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            http.get(format!("{base}/admin"))
                .send()
                .await
                .unwrap()
                .status()
                == 403
        })
        .await
    );
    let (_, inbound) = metric_sum(&pay_sc, "ward_proxy_requests", &[]).await;
    let denied = [
        "direction=\"inbound\"",
        frontend,
        "status_class=\"4xx\"",
        "decision=\"deny\"",
    ];
    assert!(
        sample(&inbound, &format!("{dur}_count"), &denied).unwrap_or(0.0) >= 1.0,
        "{inbound}"
    );
    let out = ["direction=\"outbound\"", payments, "status_class=\"2xx\""];
    assert_eq!(
        sample(&outbound, &format!("{dur}_count"), &out),
        Some(6.0),
        "{outbound}"
    );

    for (text, direction, peer) in [
        (&inbound, "inbound", frontend),
        (&outbound, "outbound", payments),
    ] {
        let labels = [format!("direction=\"{direction}\""), peer.to_string()];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let req = sample(text, "ward_proxy_request_bytes_total", &labels).unwrap();
        let resp = sample(text, "ward_proxy_response_bytes_total", &labels).unwrap();
        assert!(
            (1000.0..2000.0).contains(&req),
            "{direction} request bytes {req}"
        );
        assert!(resp >= 1000.0, "{direction} response bytes {resp}");
    }
    // Peer instances never become labels: one series per peer service.
    assert!(!inbound.contains("127.0.0.1"), "{inbound}");

    let server = s
        .https()
        .unwrap()
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for text in [&inbound, &server] {
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_open_fds",
            "process_max_fds",
            "process_start_time_seconds",
        ] {
            let v = sample(text, name, &[]).unwrap_or_else(|| panic!("{name} missing:\n{text}"));
            assert!(v > 0.0, "{name} = {v}");
        }
        let rss = sample(text, "process_resident_memory_bytes", &[]).unwrap();
        assert!(rss > 1e6 && rss < 1e9, "{rss}");
    }
    assert!(
        server.contains("ward_certificates_issued_total"),
        "{server}"
    );
}

/// A malformed chunked body from the local app is the app's error: 400,
/// and a log line that says so, not a 502 blaming the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_from_the_app_is_a_bad_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &[]).unwrap();
    apply(&s, ALLOW_FRONTEND);
    let pay = app("payments");
    let _pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let fe = sidecar_logged(
        &s,
        "frontend",
        "127.0.0.1:9",
        &["--upstream", "payments=127.0.0.1:0"],
        "warn",
    );
    wait_for_endpoint(&fe, "payments").await;
    let port = fe.upstream("payments.default");
    for body in [
        "ZZ\r\nhello\r\n0\r\n\r\n", // not a hexadecimal size
        "5\r\nhelloXX0\r\n\r\n",    // no CRLF after the chunk
    ] {
        let mut tcp = tokio::net::TcpStream::connect(&port).await.unwrap();
        tcp.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: payments\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut got)).await;
        let got = String::from_utf8_lossy(&got);
        assert!(got.starts_with("HTTP/1.1 400"), "{body:?}: {got}");
        assert!(!got.contains("could not be reached"), "{got}");
    }
    assert!(
        wait_until(Duration::from_secs(5), || async {
            json_lines(&fe.proc.log()).iter().any(|l| {
                l["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("malformed request body from the app"))
            })
        })
        .await,
        "{:?}",
        fe.proc.log()
    );
    // The sidecar and the upstream keep serving.
    let ok = reqwest::get(format!("http://{port}/whoami")).await.unwrap();
    assert_eq!(ok.status(), 200);
}
