//! The access log as users run it: on, at info, to stderr. A sidecar whose
//! stderr is a pipe nobody reads keeps serving; the lines it cannot write
//! are dropped and counted, and no request waits for them.
mod mesh_common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_common::*;
use ward_testkit::WardServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stderr_nobody_reads_blocks_no_request() {
    init();
    let s = WardServer::start(bin().to_str().unwrap(), &["--default-policy", "allow"]).unwrap();
    let pay = app("payments");
    let token = register(&s, "payments");
    let dd = s.data_dir.to_str().unwrap().to_string();
    // The payments sidecar with its access log on (info) and its stderr a
    // pipe that is never read: it fills after some hundred lines.
    let mut pay_sc = Command::new(bin())
        .args([
            "--output",
            "json",
            "--data-dir",
            &dd,
            "proxy",
            "--join-token",
            &token,
        ])
        .args(["--service", "payments", "--inbound", "127.0.0.1:0"])
        .args(["--app", &pay.http, "--admin", "127.0.0.1:0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _unread = pay_sc.stderr.take();
    let mut ready = String::new();
    BufReader::new(pay_sc.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let admin = ready["proxy"]["admin"].as_str().unwrap().to_string();
    let fe = frontend_for_payments(&s, 1).await;
    let url = format!("http://{}/", fe.upstream("payments.default"));

    // Far more requests than the pipe and the log buffer hold.
    let total = 8000usize;
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (url, done, failed) = (url.clone(), done.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            while done.fetch_add(1, Ordering::Relaxed) < total {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    let finished = tokio::time::timeout(Duration::from_secs(120), async {
        for t in tasks {
            t.await.unwrap();
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "requests stalled behind the unread log: {} of {total} sent in {:?}",
        done.load(Ordering::Relaxed),
        start.elapsed()
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let dropped: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ward_proxy_log_lines_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no drop counter in {metrics}"));
    assert!(dropped >= 1000.0, "dropped {dropped} lines");
    let _ = pay_sc.kill();
    let _ = pay_sc.wait();
    let _ = (pay, fe);
}
