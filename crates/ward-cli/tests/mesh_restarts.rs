//! Restarts and rotation: certificate rotation under load, the control
//! plane killed under load, SIGTERM with requests in flight, one of two
//! endpoints stopped under load, a sidecar restarted from its state dir.
mod common;
mod mesh_common;

use std::collections::HashSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mesh_common::*;

/// Sends requests in a loop until stopped; counts failures and collects
/// the peer-certificate hashes the app saw.
/// Handles on a running load loop.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    hashes: Arc<Mutex<HashSet<String>>>,
    task: tokio::task::JoinHandle<()>,
}

fn load(url: String) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let hashes = Arc::new(Mutex::new(HashSet::new()));
    let client = reqwest::Client::new();
    let task = {
        let (stop, ok, failed, hashes) = (stop.clone(), ok.clone(), failed.clone(), hashes.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let v: serde_json::Value = r.json().await.unwrap_or_default();
                        let xfcc = v["xfcc"].as_str().unwrap_or_default();
                        if let Some(h) = xfcc.split(';').find_map(|p| p.strip_prefix("Hash=")) {
                            hashes.lock().unwrap().insert(h.to_string());
                        }
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => {
                        eprintln!("request failed: {other:?}");
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    Load {
        stop,
        ok,
        failed,
        hashes,
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_loses_no_request() {
    let s = common::server(&["--svid-ttl", "20s", "--default-policy", "allow"]);
    let (_pay, _pay_sc, fe) = payments_and_frontend(&s).await;
    let Load {
        stop,
        ok,
        failed,
        hashes,
        task,
    } = load(format!("http://{}/rot", fe.upstream("payments.default")));
    tokio::time::sleep(Duration::from_secs(60)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests lost during rotation"
    );
    assert!(
        ok.load(Ordering::Relaxed) > 500,
        "{} requests",
        ok.load(Ordering::Relaxed)
    );
    let seen = hashes.lock().unwrap().len();
    assert!(
        seen >= 3,
        "the app saw {seen} distinct caller certificates in 60 s with a 20 s lifetime"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_kill9_under_load() {
    let mut s = common::server(&["--default-policy", "allow"]);
    let (_pay, pay_sc, fe) = payments_and_frontend(&s).await;
    let Load {
        stop,
        ok,
        failed,
        task,
        ..
    } = load(format!("http://{}/cp", fe.upstream("payments.default")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let addr = s.addr.clone();
    s.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        admin_json(&fe, "/config").await["control_plane_connected"],
        false
    );
    let during = ok.load(Ordering::Relaxed);
    s.spawn(&addr).expect("restart on the same address");
    let reconnected = ward_testkit::wait_until(Duration::from_secs(15), || async {
        admin_json(&fe, "/config").await["control_plane_connected"] == true
            && admin_json(&pay_sc, "/config").await["control_plane_connected"] == true
    })
    .await;
    assert!(reconnected, "proxies reconnect after the restart");
    // A policy applied after the restart reaches the proxies.
    apply(&s, "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: deny-cp }\nspec:\n  selector: { service: payments }\n  action: DENY\n  rules:\n  - to: [{ operation: { paths: [\"/denied\"] } }]\n");
    let denied = ward_testkit::wait_until(Duration::from_secs(5), || async {
        reqwest::get(format!("http://{}/denied", fe.upstream("payments.default")))
            .await
            .is_ok_and(|r| r.status() == 403)
    })
    .await;
    assert!(denied, "the new policy is enforced");
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed while the control plane was down"
    );
    assert!(ok.load(Ordering::Relaxed) > during && during > 0);

    // Another restart, with the payments sidecar slow to come back
    // (stopped): the frontend, back first, keeps its endpoint, since the
    // restarted server marks its first lists partial.
    assert!(pay_sc.proc.signal("-STOP"));
    s.kill9();
    let down = ward_testkit::wait_until(Duration::from_secs(10), || async {
        admin_json(&fe, "/config").await["control_plane_connected"] == false
    })
    .await;
    s.spawn(&addr).expect("restart on the same address");
    let back = ward_testkit::wait_until(Duration::from_secs(15), || async {
        admin_json(&fe, "/config").await["control_plane_connected"] == true
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = "spiffe://ward.internal/ns/default/sa/payments";
    let listed = admin_json(&fe, "/config").await["endpoints"][id].clone();
    assert!(pay_sc.proc.signal("-CONT"));
    assert!(down && back, "the frontend reconnects");
    assert_eq!(
        listed.as_array().map(Vec::len),
        Some(1),
        "the endpoint of a sidecar not yet back: {listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let s = common::server(&["--default-policy", "allow"]);
    let pay = app("payments");
    let mut pay_sc = sidecar(&s, "payments", &pay.http, &[]);
    let fe = frontend_for_payments(&s, 1).await;
    let url = format!("http://{}/sleep/1500", fe.upstream("payments.default"));
    let client = reqwest::Client::new();
    let mut inflight = Vec::new();
    for _ in 0..5 {
        let (c, u) = (client.clone(), url.clone());
        inflight.push(tokio::spawn(async move {
            c.get(&u).send().await.map(|r| r.status().as_u16())
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    let t = Instant::now();
    pay_sc.proc.sigterm();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // New connections to the draining sidecar are refused.
    assert!(
        tokio::net::TcpStream::connect(&pay_sc.inbound)
            .await
            .is_err(),
        "listener closed"
    );
    for r in inflight {
        assert_eq!(
            r.await.unwrap().unwrap(),
            200,
            "in-flight request completed"
        );
    }
    let status = pay_sc
        .proc
        .wait_timeout(Duration::from_secs(10))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    assert!(t.elapsed() >= Duration::from_millis(900));
}

/// A rolling restart: one of two payments sidecars stops (SIGTERM) under
/// load while requests are in flight on it, and no request fails: its
/// GOAWAY stops the frontend opening streams on its connection (new
/// exchanges dial, find the listener closed and go to the other endpoint),
/// and exchanges sent before the frontend heard are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_one_of_two_endpoints_under_load_loses_no_request() {
    let s = common::server(&["--default-policy", "allow"]);
    let (a, b) = (app("payments-a"), app("payments-b"));
    let _sa = sidecar(&s, "payments", &a.http, &[]);
    let mut sb = sidecar(&s, "payments", &b.http, &[]);
    let fe = frontend_for_payments(&s, 2).await;
    let Load {
        stop,
        ok,
        failed,
        task,
        ..
    } = load(format!("http://{}/roll", fe.upstream("payments.default")));
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Slow requests on both endpoints keep the stopping one draining
    // while the load goes on.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let url = format!("http://{}/sleep/1500", fe.upstream("payments.default"));
            tokio::spawn(async move { reqwest::get(&url).await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    sb.proc.sigterm();
    for r in slow {
        assert_eq!(r.await.unwrap().unwrap(), 200, "a slow request");
    }
    let status = sb
        .proc
        .wait_timeout(Duration::from_secs(20))
        .expect("exits after draining");
    assert!(status.success(), "{status:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    task.await.unwrap();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "requests lost");
    assert!(ok.load(Ordering::Relaxed) > 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_state_dir_without_a_token() {
    let s = common::server(&["--default-policy", "allow"]);
    let pay = app("payments");
    let state = tempfile::tempdir().unwrap();
    let st = state.path().join("state");
    let first = sidecar(
        &s,
        "payments",
        &pay.http,
        &["--state-dir", st.to_str().unwrap()],
    );
    let serial = admin_json(&first, "/certs").await["serial"]
        .as_str()
        .unwrap()
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(st.join("svid.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    drop(first);
    let dd = s.data_dir.to_str().unwrap().to_string();
    let again = ward_testkit::Proc::spawn(
        bin(),
        &[
            "--output",
            "json",
            "--data-dir",
            &dd,
            "proxy",
            "--service",
            "payments",
            "--inbound",
            "127.0.0.1:0",
            "--app",
            &pay.http,
            "--admin",
            "127.0.0.1:0",
            "--state-dir",
            st.to_str().unwrap(),
        ],
    )
    .unwrap();
    let admin = again.ready["proxy"]["admin"].as_str().unwrap().to_string();
    let certs: serde_json::Value = reqwest::get(format!("http://{admin}/certs"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        certs["serial"],
        serial.as_str(),
        "same certificate, no new token needed"
    );
    // Without a state dir and without a token, the sidecar says what to do.
    let out = Command::new(bin())
        .args([
            "--data-dir",
            &dd,
            "proxy",
            "--service",
            "payments",
            "--inbound",
            "127.0.0.1:0",
            "--app",
            &pay.http,
            "--admin",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ward join-token create --service payments")
    );
}
