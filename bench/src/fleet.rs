//! `ward-bench fleet`: many sidecar-side watch clients held open against
//! one real `ward server` (certificates issued through the real CSR path,
//! the real `ward.v1` watch stream over mTLS, one connection each), and
//! what each kind of change costs: server CPU, bytes sent, and the time
//! until every sidecar it concerns has it. With `--baseline-ward`, the
//! same run against another binary (an earlier release) first, as the
//! baseline.
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use ward_api::v1::{SignCertificateRequest, WatchRequest, WatchResponse};
use ward_testkit::WardServer;

const NS: &str = "spiffe://ward.internal/ns/default/sa/";

/// What every watcher has received so far.
#[derive(Default)]
struct Seen {
    /// (arrival, encoded bytes, message) per watcher, in order.
    log: Vec<Vec<(Instant, usize, WatchResponse)>>,
    /// Refusals a watcher could retry (UNAVAILABLE with a hint, a server
    /// not listening), and those it could not.
    retryable: usize,
    final_errors: Vec<String>,
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    // utime and stime: fields 14 and 15, i.e. 11 and 12 after the name.
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Milliseconds of CPU `pid` used since it had used `ticks0` clock ticks
/// (100 a second on Linux).
fn cpu_ms_since(pid: u32, ticks0: u64) -> f64 {
    cpu_ticks(pid).saturating_sub(ticks0) as f64 * 10.0
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

async fn post(
    s: &WardServer,
    http: &reqwest::Client,
    path: &str,
    body: Value,
) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{}{path}", s.url))
        .bearer_auth(s.admin_token())
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
    Ok(r.json().await.unwrap_or(Value::Null))
}

/// Issues a certificate for `svc` through the CSR path.
/// A certificate issued for `svc` through the CSR path.
struct Issued {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    serial: String,
}

async fn certificate(
    c: &mut ward_api::v1::identity_client::IdentityClient<tonic::transport::Channel>,
    svc: &str,
    token: &str,
) -> anyhow::Result<Issued> {
    let id = ward_identity::SpiffeId::parse(&format!("{NS}{svc}"))?;
    let (csr, key) = ward_ca::testing::csr_for(&id);
    let resp = c
        .sign_certificate(SignCertificateRequest {
            csr,
            join_token: token.to_string(),
        })
        .await?
        .into_inner();
    Ok(Issued {
        chain: resp
            .cert_chain
            .into_iter()
            .map(CertificateDer::from)
            .collect(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        serial: resp.serial,
    })
}

/// A single-use join token for `svc`.
/// A certificate for `svc` through the CSR path, revoked at once; its
/// serial.
async fn revoked_certificate(
    s: &WardServer,
    http: &reqwest::Client,
    c: &mut ward_api::v1::identity_client::IdentityClient<tonic::transport::Channel>,
    svc: &str,
    token: &str,
) -> anyhow::Result<String> {
    let serial = certificate(c, svc, token).await?.serial;
    revoke(s, http, &serial).await?;
    Ok(serial)
}

/// Revokes the certificate `serial` through the admin API.
async fn revoke(s: &WardServer, http: &reqwest::Client, serial: &str) -> anyhow::Result<()> {
    post(
        s,
        http,
        &format!("/api/v1/certificates/{serial}/revoke"),
        json!({}),
    )
    .await?;
    Ok(())
}

async fn join_token(s: &WardServer, http: &reqwest::Client, svc: &str) -> anyhow::Result<String> {
    let t = post(s, http, "/api/v1/join-tokens", json!({ "service": svc })).await?;
    Ok(t["token"].as_str().unwrap_or_default().to_string())
}

/// One measured change: from `start`, until every concerned watcher has,
/// for each of the conditions in `done`, a message satisfying it (a
/// change made of several parts may reach a watcher in several messages).
fn outcome(
    seen: &Seen,
    start: Instant,
    concerned: &[bool],
    done: &[&dyn Fn(&WatchResponse) -> bool],
    cpu_ms: f64,
) -> Value {
    let mut times = Vec::new();
    let (mut bytes_concerned, mut bytes_other, mut msgs_other) = (0usize, 0usize, 0usize);
    let mut missing = 0;
    for (i, log) in seen.log.iter().enumerate() {
        let after: Vec<_> = log.iter().filter(|(t, _, _)| *t >= start).collect();
        if concerned[i] {
            let reached: Option<Vec<Instant>> = done
                .iter()
                .map(|d| after.iter().find(|(_, _, m)| d(m)).map(|(t, _, _)| *t))
                .collect();
            match reached.and_then(|r| r.into_iter().max()) {
                Some(t) => times.push(t.duration_since(start).as_secs_f64() * 1000.0),
                None => missing += 1,
            }
            bytes_concerned += after.iter().map(|(_, b, _)| b).sum::<usize>();
        } else {
            bytes_other += after.iter().map(|(_, b, _)| b).sum::<usize>();
            msgs_other += after.len();
        }
    }
    let n = concerned.iter().filter(|c| **c).count().max(1);
    json!({
        "concerned_sidecars": n,
        "not_reached": missing,
        "p50_ms": round(percentile(&mut times.clone(), 0.5), 1),
        "p99_ms": round(percentile(&mut times.clone(), 0.99), 1),
        "max_ms": round(percentile(&mut times, 1.0), 1),
        "bytes_per_concerned_sidecar": bytes_concerned / n,
        "messages_to_other_sidecars": msgs_other,
        "bytes_to_other_sidecars": bytes_other,
        "server_cpu_ms": round(cpu_ms, 0),
    })
}

/// Runs the whole sequence against the binary `ward`.
async fn one(
    ward: &str,
    sidecars: usize,
    services: usize,
    settle: Duration,
    deltas: bool,
    revoked: usize,
) -> anyhow::Result<Value> {
    let mut s = WardServer::start(ward, &["--svid-ttl", "24h"])?;
    let mut pid = s.child.as_ref().map(|c| c.id()).unwrap_or_default();
    let http = s.https()?;
    let per_service = sidecars.div_ceil(services);
    let mut tokens = Vec::new();
    for i in 0..services {
        post(
            &s,
            &http,
            "/api/v1/services",
            json!({ "name": format!("svc-{i}") }),
        )
        .await?;
        let t = post(
            &s,
            &http,
            "/api/v1/join-tokens",
            json!({ "service": format!("svc-{i}"), "uses": per_service as u32 + 10, "ttl_secs": 3600 }),
        )
        .await?;
        tokens.push(t["token"].as_str().unwrap_or_default().to_string());
    }
    let tokens = Arc::new(tokens);

    // Certificates through the CSR path, 64 at a time.
    let t = Instant::now();
    let anon = s.grpc(None).await?;
    let mut certs = Vec::with_capacity(sidecars);
    let mut pending = tokio::task::JoinSet::new();
    for i in 0..sidecars {
        let (mut c, tokens) = (anon.clone(), tokens.clone());
        pending.spawn(async move {
            let svc = format!("svc-{}", i % services);
            (i, certificate(&mut c, &svc, &tokens[i % services]).await)
        });
        if pending.len() >= 64 {
            if let Some(r) = pending.join_next().await {
                let (i, c) = r?;
                certs.push((i, c?));
            }
        }
    }
    while let Some(r) = pending.join_next().await {
        let (i, c) = r?;
        certs.push((i, c?));
    }
    certs.sort_by_key(|(i, _)| *i);
    let issue_s = t.elapsed().as_secs_f64();

    // Revoked certificates that every stream's state lists (other
    // workloads' certificates, issued for this and revoked).
    if revoked > 0 {
        let t = post(
            &s,
            &http,
            "/api/v1/join-tokens",
            json!({ "service": "svc-0", "uses": revoked as u32, "ttl_secs": 3600 }),
        )
        .await?;
        let token = t["token"].as_str().unwrap_or_default().to_string();
        for _ in 0..revoked {
            revoked_certificate(&s, &http, &mut anon.clone(), "svc-0", &token).await?;
        }
    }

    // Settle, then the server's memory before the streams.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss_before, _) = crate::workload::rss_kib(pid);

    // Every sidecar: its own connection, advertising an address, with
    // the next service as its upstream.
    let seen = Arc::new(Mutex::new(Seen {
        log: vec![Vec::new(); sidecars],
        ..Default::default()
    }));
    let mut streams = Vec::with_capacity(sidecars);
    let t = Instant::now();
    for (i, Issued { chain, key, .. }) in certs {
        let svc = i % services;
        let req = WatchRequest {
            advertise: format!(
                "127.{}.{}.{}:15006",
                (i >> 16) & 255,
                (i >> 8) & 255,
                i & 255
            ),
            upstreams: vec![format!("{NS}svc-{}", (svc + 1) % services)],
            deltas,
            ..Default::default()
        };
        let (addr, fp) = (s.addr.clone(), s.fingerprint.clone());
        let seen = seen.clone();
        streams.push(tokio::spawn(async move {
            // As a sidecar follows the stream: reconnect after it ends,
            // with jittered backoff that honours the server's retry hint.
            let mut backoff =
                ward_api::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
            loop {
                let trust =
                    ward_tls::ControlPlaneTrust::fingerprint(&fp).map_err(anyhow::Error::msg)?;
                let cert = Some((chain.clone(), key.clone_key()));
                let mut hint = None;
                let opened = match ward_testkit::grpc_client(&addr, trust, cert).await {
                    Ok(mut c) => c.watch(req.clone()).await.map_err(Some),
                    Err(_) => Err(None),
                };
                match opened {
                    Ok(stream) => {
                        backoff.reset();
                        let mut stream = stream.into_inner();
                        while let Ok(Some(m)) = stream.message().await {
                            let bytes = m.encoded_len();
                            if let Ok(mut s) = seen.lock() {
                                s.log[i].push((Instant::now(), bytes, m));
                            }
                        }
                    }
                    Err(status) => {
                        let refused = status.map(ward_api::Refused::from);
                        let retryable = refused.as_ref().is_none_or(|r| r.retry_in.is_some());
                        if let Ok(mut s) = seen.lock() {
                            if retryable {
                                s.retryable += 1;
                            } else if let Some(r) = &refused {
                                s.final_errors.push(r.message.clone());
                            }
                        }
                        hint = refused.and_then(|r| r.retry_in);
                    }
                }
                tokio::time::sleep(backoff.pause(hint)).await;
            }
            #[allow(unreachable_code)]
            Ok::<_, anyhow::Error>(())
        }));
    }
    // All connected (or the time given is up) and past the start-up
    // window (partial endpoints).
    let opened = loop {
        let n = seen
            .lock()
            .map(|s| s.log.iter().filter(|l| !l.is_empty()).count())
            .unwrap_or(0);
        if n == sidecars || t.elapsed() > Duration::from_secs(240) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    if opened < sidecars {
        for st in streams {
            st.abort();
        }
        return Ok(json!({
            "sidecars": sidecars,
            "services": services,
            "streams_opened": opened,
            "gave_up_after_seconds": round(t.elapsed().as_secs_f64(), 0),
        }));
    }
    let connect_s = t.elapsed().as_secs_f64();
    tokio::time::sleep(settle).await;
    let (rss_after, _) = crate::workload::rss_kib(pid);

    let svc_of = |i: usize| i % services;
    let all = vec![true; sidecars];
    let mut results = serde_json::Map::new();
    // 0. No change: the server's CPU over the same 3 s, which every
    // change's figure below includes.
    let cpu0 = cpu_ticks(pid);
    tokio::time::sleep(Duration::from_secs(3)).await;
    results.insert(
        "no_change".into(),
        json!({ "server_cpu_ms": round(cpu_ms_since(pid, cpu0), 0) }),
    );

    let mut measure = |name: &str,
                       concerned: Vec<bool>,
                       start: Instant,
                       cpu0: u64,
                       done: &[&dyn Fn(&WatchResponse) -> bool]| {
        let cpu_ms = cpu_ms_since(pid, cpu0);
        let r = seen
            .lock()
            .map(|s| outcome(&s, start, &concerned, done, cpu_ms))
            .unwrap_or(Value::Null);
        results.insert(name.to_string(), r);
    };
    let wait = || tokio::time::sleep(Duration::from_secs(3));

    // 1. A policy for one service.
    let (cpu0, start) = (cpu_ticks(pid), Instant::now());
    let dir = tempfile::tempdir()?;
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: svc-0-deny }\nspec:\n  selector: { service: svc-0 }\n  action: DENY\n  rules: [{ to: [{ operation: { paths: [\"/admin\"] } }] }]\n",
    )?;
    let out = s.cli(&["policy", "apply", "-f", f.to_str().unwrap_or_default()]);
    anyhow::ensure!(out.status.success(), "policy apply failed");
    wait().await;
    measure(
        "policy_change_one_service",
        (0..sidecars).map(|i| svc_of(i) == 0).collect(),
        start,
        cpu0,
        &[&|m| m.policies_json.iter().any(|p| p.contains("svc-0-deny"))],
    );

    // 2. One endpoint added (a new sidecar of svc-1).
    let (cpu0, start) = (cpu_ticks(pid), Instant::now());
    let tok = join_token(&s, &http, "svc-1").await?;
    let new = certificate(&mut anon.clone(), "svc-1", &tok).await?;
    let mut extra = s.grpc(Some((new.chain, new.key))).await?;
    let _extra = extra
        .watch(WatchRequest {
            advertise: "10.9.9.9:15006".into(),
            upstreams: vec![],
            deltas,
            ..Default::default()
        })
        .await?
        .into_inner();
    wait().await;
    measure(
        "endpoint_added",
        (0..sidecars)
            .map(|i| (svc_of(i) + 1) % services == 1)
            .collect(),
        start,
        cpu0,
        &[&|m| {
            m.endpoints
                .iter()
                .any(|e| e.addresses.iter().any(|a| a == "10.9.9.9:15006"))
        }],
    );

    // 3. A revocation.
    let (cpu0, start) = (cpu_ticks(pid), Instant::now());
    let tok = join_token(&s, &http, "svc-2").await?;
    let serial = revoked_certificate(&s, &http, &mut anon.clone(), "svc-2", &tok).await?;
    wait().await;
    measure(
        "revocation",
        all.clone(),
        start,
        cpu0,
        &[&|m| m.revoked_serials.contains(&serial)],
    );

    // 3b. Two revocations at once: the streams that woke on the first
    // and those that had not yet make different steps to the second.
    let (tok_a, tok_b) = (
        join_token(&s, &http, "svc-2").await?,
        join_token(&s, &http, "svc-2").await?,
    );
    let a = certificate(&mut anon.clone(), "svc-2", &tok_a)
        .await?
        .serial;
    let b = certificate(&mut anon.clone(), "svc-2", &tok_b)
        .await?
        .serial;
    let (cpu0, start) = (cpu_ticks(pid), Instant::now());
    let (ra, rb) = tokio::join!(revoke(&s, &http, &a), revoke(&s, &http, &b));
    ra?;
    rb?;
    wait().await;
    measure(
        "two_revocations_at_once",
        all.clone(),
        start,
        cpu0,
        &[&|m| m.revoked_serials.contains(&a), &|m| {
            m.revoked_serials.contains(&b)
        }],
    );

    // 4. A JWKS rotation.
    let (cpu0, start) = (cpu_ticks(pid), Instant::now());
    let before = seen
        .lock()
        .ok()
        .and_then(|s| s.log[0].last().map(|(_, _, m)| m.jwks_json.clone()))
        .unwrap_or_default();
    post(&s, &http, "/api/v1/signing-keys/rotate", json!({})).await?;
    wait().await;
    measure(
        "jwks_rotation",
        all.clone(),
        start,
        cpu0,
        &[&|m| !m.jwks_json.is_empty() && m.jwks_json != before],
    );

    // 5. A CA rotation.
    let (cpu0, start) = (cpu_ticks(pid), Instant::now());
    let authorities = seen
        .lock()
        .ok()
        .and_then(|s| {
            s.log[0]
                .last()
                .and_then(|(_, _, m)| m.bundle.as_ref().map(|b| b.x509_authorities.len()))
        })
        .unwrap_or(0);
    post(&s, &http, "/api/v1/ca/rotate", json!({})).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    measure(
        "ca_rotation",
        all,
        start,
        cpu0,
        &[&|m| {
            m.bundle
                .as_ref()
                .is_some_and(|b| b.x509_authorities.len() > authorities)
        }],
    );

    // 6. A reconnect storm: the server killed and started again on the
    // same port; every sidecar comes back on its own backoff.
    let listen = s.addr.clone();
    let (retryable0, finals0) = seen
        .lock()
        .map(|s| (s.retryable, s.final_errors.len()))
        .unwrap_or_default();
    s.kill9();
    let start = Instant::now();
    s.spawn(&listen)?;
    pid = s.child.as_ref().map(|c| c.id()).unwrap_or_default();
    let back = loop {
        let n = seen
            .lock()
            .map(|s| {
                s.log
                    .iter()
                    .filter(|l| l.last().is_some_and(|(t, _, _)| *t >= start))
                    .count()
            })
            .unwrap_or(0);
        if n == sidecars || start.elapsed() > Duration::from_secs(120) {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let storm_s = start.elapsed().as_secs_f64();
    let (retryable, finals) = seen
        .lock()
        .map(|s| (s.retryable - retryable0, s.final_errors[finals0..].to_vec()))
        .unwrap_or_default();
    results.insert(
        "reconnect_storm".into(),
        json!({
            "sidecars_back": back,
            "seconds_until_all_back": round(storm_s, 1),
            "retryable_refusals": retryable,
            "non_retryable_errors": finals.len(),
            "first_non_retryable": finals.first(),
            "server_cpu_ms": round(cpu_ms_since(pid, 0), 0),
        }),
    );

    for st in streams {
        st.abort();
    }
    Ok(json!({
        "deltas": deltas,
        "sidecars": sidecars,
        "services": services,
        "certificates_issued_seconds": round(issue_s, 1),
        "streams_opened_seconds": round(connect_s, 1),
        "server_rss_mib_before_streams": round(rss_before as f64 / 1024.0, 1),
        "server_rss_mib_with_streams": round(rss_after as f64 / 1024.0, 1),
        "revoked_before_streams": revoked,
        "server_rss_kib_per_sidecar": round((rss_after.saturating_sub(rss_before)) as f64 / sidecars as f64, 1),
        "changes": results,
    }))
}

/// The run: the baseline binary first (if given), then `ward`.
pub(crate) async fn run(
    ward: &str,
    baseline: Option<&str>,
    sidecars: usize,
    services: usize,
    revoked: usize,
) -> anyhow::Result<Value> {
    // Past the server's 15 s start-up window, in which endpoint lists are
    // partial and every stream is sent them again when it ends.
    let settle = Duration::from_secs(16);
    let mut out = json!({});
    if let Some(b) = baseline {
        out["baseline"] = one(b, sidecars, services, settle, false, revoked).await?;
    }
    // The same binary sending the whole state every time, as before
    // deltas, then with deltas.
    out["full_snapshots"] = one(ward, sidecars, services, settle, false, revoked).await?;
    out["ward"] = one(ward, sidecars, services, settle, true, revoked).await?;
    Ok(out)
}
