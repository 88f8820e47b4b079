//! `kill -9` of the server while certificates are being issued: every
//! certificate it acknowledged survives, the root is unchanged, and the
//! database is intact.
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ward_store::Store;

/// Every acknowledged certificate is in `store`.
async fn assert_none_lost(store: &dyn Store, acked: &[String]) {
    let mut missing = Vec::new();
    for serial in acked {
        if store.get_certificate(serial).await.unwrap().is_none() {
            missing.push(serial.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged certificates lost",
        missing.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_issuance_loses_no_acknowledged_certificate() {
    let mut s = server(&[]);
    s.cli_json(&["service", "add", "web"]).unwrap();
    let tok = token(&s, "web", &["--uses", "10000"]);
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));

    // 100 concurrent clients issuing until the server dies.
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let mut c = s.grpc(None).await.unwrap();
        let (acked, tok, web) = (acked.clone(), tok.clone(), web.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match c.sign_certificate(sign_req(csr(&web).0, &tok)).await {
                    Ok(r) => acked.lock().unwrap().push(r.into_inner().serial),
                    Err(_) => return,
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let fp = s.fingerprint.clone();
    s.kill9();
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300, "issued {} before the kill", acked.len());

    s.spawn("127.0.0.1:0").unwrap();
    assert_eq!(s.fingerprint, fp, "root unchanged");
    let store = ward_store::SqliteStore::open(&s.data_dir.join("ward.db"))
        .await
        .unwrap();
    store.integrity_check().await.unwrap();
    assert_none_lost(&store, &acked).await;
    // And the restarted server serves them.
    let http = s.https().unwrap();
    let r = http
        .get(format!("{}/api/v1/certificates/{}", s.url, acked[0]))
        .bearer_auth(s.admin_token())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// `kill -9` of PostgreSQL itself (every process of it) under a server
/// issuing certificates: every certificate acknowledged before is there
/// after PostgreSQL recovers, and the server serves again without a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_postgres_loses_no_acknowledged_certificate() {
    let pg = ward_testkit::postgres::Cluster::start();
    let s = server(&["--database", pg.url()]);
    s.cli_json(&["service", "add", "web"]).unwrap();
    let tok = token(&s, "web", &["--uses", "10000"]);
    let web = id("spiffe://ward.internal/ns/default/sa/web");
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let mut c = s.grpc(None).await.unwrap();
        let (acked, tok, web, stop) = (acked.clone(), tok.clone(), web.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(r) = c.sign_certificate(sign_req(csr(&web).0, &tok)).await {
                    acked.lock().unwrap().push(r.into_inner().serial);
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked.lock().unwrap().len() < 300 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    pg.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before_restart = acked.lock().unwrap().len();
    pg.resume();
    // Issuance comes back by itself.
    let back = ward_testkit::wait_until(Duration::from_secs(20), || async {
        acked.lock().unwrap().len() > before_restart + 10
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    assert!(back, "no certificate issued after PostgreSQL came back");
    let acked = acked.lock().unwrap().clone();
    assert!(
        before_restart >= 300,
        "issued {before_restart} before the kill"
    );

    let store = ward_store::PostgresStore::open(pg.url()).await.unwrap();
    assert_none_lost(&store, &acked).await;
}
