//! A mesh whose sidecars follow different control-plane replicas on one
//! PostgreSQL database: they find each other and carry traffic, and an
//! endpoint that goes away on one replica leaves the other's sidecars.
mod mesh_common;

use std::time::Duration;

use mesh_common::*;
use ward_testkit::postgres::TestDatabase;
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
