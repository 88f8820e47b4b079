//! A mesh whose sidecars follow different control-plane replicas on one
//! PostgreSQL database: they find each other and carry traffic, and an
//! endpoint that goes away on one replica leaves the other's sidecars.
mod mesh_common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mesh_common::*;
use ward_testkit::postgres::{Cluster, TestDatabase};
use ward_testkit::{wait_until, WardServer};

#[tokio::test]
async fn sidecars_on_different_replicas_find_each_other() {
    let db = TestDatabase::create().await;
    let a = WardServer::start(bin().to_str().unwrap(), &["--database", db.url()]).unwrap();
    let b = a.replica().unwrap();
    apply(&a, ALLOW_FRONTEND);

    // payments follows b, frontend follows a.
    let pay = app("payments");
    let pay_sc = sidecar(&b, "payments", &pay.http, &[]);
    let fe = frontend_for_payments(&a, 1).await;
    let url = format!("http://{}/whoami", fe.upstream("payments.default"));
    let r = reqwest::get(&url).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(r.text().await.unwrap().contains("payments"));

    // The payments sidecar goes away: b drops its endpoint, and a's
    // sidecars are told (once the lists are complete: for their first
    // 15 s, servers send partial lists and sidecars keep what they knew).
    drop(pay_sc);
    let id = "spiffe://ward.internal/ns/default/sa/payments";
    let gone = wait_until(Duration::from_secs(25), || async {
        let c = admin_json(&fe, "/config").await;
        c["endpoints"][id].as_array().is_none_or(|a| a.is_empty())
    })
    .await;
    assert!(gone, "{}", admin_json(&fe, "/config").await);
}

/// Mesh traffic all along: 4 clients in a loop until finished.
struct Load {
    stop: Arc<AtomicBool>,
    /// Requests answered 200 so far.
    ok: Arc<AtomicU32>,
    tasks: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(url: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU32::new(0));
        let tasks = (0..4)
            .map(|_| {
                let (url, stop, ok) = (url.to_string(), stop.clone(), ok.clone());
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    let mut failed = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => failed.push(format!("HTTP {}", r.status())),
                            Err(e) => failed.push(e.to_string()),
                        }
                    }
                    failed
                })
            })
            .collect();
        Load { stop, ok, tasks }
    }

    /// Lets 50 more requests through (the mesh still carries traffic
    /// after whatever happened), then stops, and asserts that every
    /// request went through.
    async fn finish(self) {
        let goal = self.ok.load(Ordering::Relaxed) + 50;
        let carried = wait_until(Duration::from_secs(10), || async {
            self.ok.load(Ordering::Relaxed) >= goal
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        let mut failed = Vec::new();
        for t in self.tasks {
            failed.extend(t.await.unwrap());
        }
        let ok = self.ok.load(Ordering::Relaxed);
        assert!(
            carried,
            "only {ok} mesh requests went through, {goal} wanted"
        );
        assert!(
            failed.is_empty(),
            "{} of {} mesh requests failed: {:?}",
            failed.len(),
            ok as usize + failed.len(),
            &failed[..failed.len().min(5)]
        );
    }
}

/// The SPIFFE IDs `ward status` on `s` lists as connected.
fn connected(s: &WardServer) -> Vec<String> {
    let v = s.cli_json(&["status"]).unwrap();
    v["connected_proxies"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["spiffe_id"].as_str().map(String::from))
        .collect()
}

#[tokio::test]
async fn a_mesh_given_both_replicas_carries_on_when_one_is_killed_mid_writes() {
    let db = TestDatabase::create().await;
    let a = WardServer::start(bin().to_str().unwrap(), &["--database", db.url()]).unwrap();
    let b = a.replica().unwrap();
    apply(&a, ALLOW_FRONTEND);
    let both = format!("{},{}", a.url, b.url);
    let pay = app("payments");
    let pay_sc = sidecar(&a, "payments", &pay.http, &["--server", &both]);
    let fe = sidecar(
        &a,
        "frontend",
        "127.0.0.1:9",
        &["--upstream", "payments=127.0.0.1:0", "--server", &both],
    );
    wait_for_endpoint(&fe, "payments").await;
    let url = format!("http://{}/whoami", fe.upstream("payments.default"));

    // The sidecars picked their replicas; the one with more of them is
    // killed, so that at least one sidecar has to move.
    let on_a = connected(&a).len();
    assert_eq!(on_a + connected(&b).len(), 2);
    let (mut a, b) = if on_a >= 1 { (a, b) } else { (b, a) };

    let load = Load::start(&url);

    // 200 concurrent admin writes through a, which is killed once some
    // have been acknowledged.
    let http = a.https().unwrap();
    let token = a.admin_token();
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writes = Vec::new();
    for i in 0..200 {
        let (http, token, base, acked) =
            (http.clone(), token.clone(), a.url.clone(), acked.clone());
        writes.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/api/v1/services"))
                .bearer_auth(&token)
                .json(&serde_json::json!({ "name": format!("svc-{i}") }))
                .send()
                .await;
            let ok = matches!(r, Ok(r) if r.status() == 201);
            if ok {
                acked.fetch_add(1, Ordering::Relaxed);
            }
            ok.then_some(format!("svc-{i}"))
        }));
    }
    while acked.load(Ordering::Relaxed) < 40 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.kill9();
    let mut acknowledged = Vec::new();
    for w in writes {
        acknowledged.extend(w.await.unwrap());
    }
    assert!(
        !acknowledged.is_empty(),
        "some writes were acknowledged before the kill"
    );
    let listed = b.cli_json(&["service", "list"]).unwrap().to_string();
    let lost: Vec<_> = acknowledged
        .iter()
        .filter(|n| !listed.contains(&format!("\"{n}\"")))
        .collect();
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");

    // Both sidecars follow b within 5 s of the kill.
    let moved = wait_until(Duration::from_secs(5), || async {
        let c = connected(&b);
        c.contains(&pay_sc.id) && c.contains(&fe.id)
    })
    .await;
    assert!(moved, "connected to b: {:?}", connected(&b));

    // A policy applied through b afterwards: both sidecars have it within
    // 1 s, and payments' sidecar enforces it.
    let before = |sc: &Sidecar| {
        let sc = sc.admin.clone();
        async move {
            reqwest::get(format!("http://{sc}/config"))
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()["policies"]
                .as_u64()
                .unwrap()
        }
    };
    let (p0, f0) = (before(&pay_sc).await, before(&fe).await);
    let t = std::time::Instant::now();
    apply(
        &b,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin }\nspec:\n  action: DENY\n  rules: [{ to: [{ operation: { paths: [\"/admin\"] } }] }]\n",
    );
    let both_have_it = wait_until(Duration::from_secs(1), || async {
        before(&pay_sc).await > p0 && before(&fe).await > f0
    })
    .await;
    assert!(both_have_it, "not on both sidecars after {:?}", t.elapsed());
    let denied = reqwest::get(format!("http://{}/admin", fe.upstream("payments.default")))
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);

    load.finish().await;
}

#[tokio::test]
async fn the_mesh_carries_on_while_postgres_is_down_and_writes_resume_after() {
    let pg = Cluster::start();
    let s = WardServer::start(bin().to_str().unwrap(), &["--database", pg.url()]).unwrap();
    apply(&s, ALLOW_FRONTEND);
    let (_pay, _pay_sc, fe) = payments_and_frontend(&s).await;
    let load = Load::start(&format!(
        "http://{}/whoami",
        fe.upstream("payments.default")
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;

    pg.stop();
    // A write fails with 503, naming the database and saying what to do.
    let http = s.https().unwrap();
    let r = http
        .post(format!("{}/api/v1/services", s.url))
        .bearer_auth(s.admin_token())
        .json(&serde_json::json!({ "name": "during" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    let msg = body["message"].as_str().unwrap();
    assert!(msg.contains("PostgreSQL at 127.0.0.1:"), "{msg}");
    assert!(msg.contains("nothing was changed"), "{msg}");
    assert_eq!(body["error"], "database_unavailable");
    // What the server holds in memory is still served.
    let jwks = http
        .get(format!("{}/oauth2/jwks", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(jwks.status(), 200);
    tokio::time::sleep(Duration::from_secs(2)).await;

    pg.resume();
    // Writes succeed again, without a restart.
    let back = wait_until(Duration::from_secs(15), || async {
        s.cli(&["service", "add", "after"]).status.success()
    })
    .await;
    assert!(back, "writes did not come back after PostgreSQL did");
    let v = s.cli_json(&["service", "list"]).unwrap().to_string();
    assert!(v.contains("\"after\"") && !v.contains("\"during\""), "{v}");
    // And the mesh follows a change made after it.
    apply(
        &s,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: no-admin }\nspec:\n  action: DENY\n  rules: [{ to: [{ operation: { paths: [\"/admin\"] } }] }]\n",
    );
    let admin = format!("http://{}/admin", fe.upstream("payments.default"));
    let denied = wait_until(Duration::from_secs(5), || async {
        reqwest::get(&admin).await.is_ok_and(|r| r.status() == 403)
    })
    .await;
    assert!(
        denied,
        "the policy applied after the outage is not enforced"
    );
    load.finish().await;
}
