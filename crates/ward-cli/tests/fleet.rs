//! A fleet of 200 watchers on one real `ward server`: each receives only
//! what concerns it, as deltas applied in order; a lost delta is
//! recovered by a whole state; a renewal storm is shed with retry hints
//! and no certificate lapses.
mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use prost::Message;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ward_api::v1::{WatchRequest, WatchResponse};
use ward_api::Assembled;
use ward_testkit::WardServer;

const SERVICES: usize = 20;
const WATCHERS: usize = 200;

fn sid(svc: usize) -> String {
    format!("spiffe://ward.internal/ns/default/sa/svc-{svc}")
}

struct Cert {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    not_after: i64,
    serial: String,
}

/// Certificates for `n` workloads, round robin over the services, through
/// the CSR path with one join token per service.
async fn certificates(s: &WardServer, n: usize) -> Vec<Cert> {
    let per = (n / SERVICES + 1).to_string();
    let tokens: Vec<String> = (0..SERVICES)
        .map(|i| token(s, &format!("svc-{i}"), &["--uses", &per]))
        .collect();
    let anon = s.grpc(None).await.unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let (req, key) = csr(&id(&sid(i % SERVICES)));
        let resp = anon
            .clone()
            .sign_certificate(sign_req(req, &tokens[i % SERVICES]))
            .await
            .unwrap()
            .into_inner();
        out.push(Cert {
            chain: chain(&resp),
            key,
            not_after: resp.not_after,
            serial: resp.serial,
        });
    }
    out
}

/// What one watcher received: (bytes, message), and its state put
/// together from them.
#[derive(Default)]
struct Log {
    messages: Vec<(usize, WatchResponse)>,
    state: Assembled,
    out_of_step: usize,
}

fn watch_req(advertise: String, upstream: usize, deltas: bool) -> WatchRequest {
    WatchRequest {
        advertise,
        upstreams: vec![sid(upstream)],
        deltas,
        ..Default::default()
    }
}

/// The whole state a new watcher of `svc` calling `upstream` gets now.
async fn whole_state(s: &WardServer, cert: &Cert, upstream: usize) -> WatchResponse {
    let mut c = s
        .grpc(Some((cert.chain.clone(), cert.key.clone_key())))
        .await
        .unwrap();
    let mut st = c
        .watch(watch_req(String::new(), upstream, false))
        .await
        .unwrap()
        .into_inner();
    st.message().await.unwrap().unwrap()
}

/// The parts of a state two watchers of the same service and upstream
/// share (versions are per stream).
fn comparable(mut m: WatchResponse) -> WatchResponse {
    m.version = 0;
    m.unregistered_upstreams.clear();
    m
}

/// Messages since `mark` of each watcher.
fn since(logs: &[Arc<Mutex<Log>>], mark: &[usize]) -> Vec<Vec<(usize, WatchResponse)>> {
    logs.iter()
        .zip(mark)
        .map(|(l, m)| l.lock().unwrap().messages[*m..].to_vec())
        .collect()
}

fn marks(logs: &[Arc<Mutex<Log>>]) -> Vec<usize> {
    logs.iter()
        .map(|l| l.lock().unwrap().messages.len())
        .collect()
}

async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_watchers_get_only_their_deltas_in_order() {
    let s = server(&[]);
    for i in 0..SERVICES {
        s.cli_json(&["service", "add", &format!("svc-{i}")])
            .unwrap();
    }
    let certs = certificates(&s, WATCHERS + SERVICES + 1).await;
    let (certs, spare) = certs.split_at(WATCHERS);
    let upstream_of = |i: usize| (i % SERVICES + 1) % SERVICES;

    // Every watcher on its own connection, advertising an address, with
    // the next service as its upstream.
    let mut logs = Vec::new();
    let mut tasks = Vec::new();
    for (i, cert) in certs.iter().enumerate() {
        let log = Arc::new(Mutex::new(Log::default()));
        logs.push(log.clone());
        let mut c = s
            .grpc(Some((cert.chain.clone(), cert.key.clone_key())))
            .await
            .unwrap();
        let req = watch_req(
            format!("127.0.1.{}:{}", i % 250, 20000 + i),
            upstream_of(i),
            true,
        );
        tasks.push(tokio::spawn(async move {
            let mut st = c.watch(req).await.unwrap().into_inner();
            while let Ok(Some(m)) = st.message().await {
                let mut l = log.lock().unwrap();
                l.messages.push((m.encoded_len(), m.clone()));
                if l.state.apply(m).is_err() {
                    l.out_of_step += 1;
                }
            }
        }));
    }
    assert!(
        ward_testkit::wait_until(Duration::from_secs(30), || async {
            logs.iter().all(|l| !l.lock().unwrap().messages.is_empty())
        })
        .await,
        "every watcher gets its first state"
    );
    settle().await;
    for (i, l) in logs.iter().enumerate() {
        let l = l.lock().unwrap();
        let first = &l.messages[0].1;
        assert_eq!(
            first.base_version, 0,
            "the first message is the whole state"
        );
        assert!(first.bundle.is_some() && !first.jwks_json.is_empty());
        for (_, m) in &l.messages {
            for e in &m.endpoints {
                assert_eq!(
                    e.spiffe_id,
                    sid(upstream_of(i)),
                    "only its upstream's endpoints"
                );
            }
        }
    }

    // 1. A policy for one service: its watchers get it, nobody else
    // gets anything.
    let mark = marks(&logs);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(
        &f,
        "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: svc-0-deny }\nspec:\n  selector: { service: svc-0 }\n  action: DENY\n  rules: [{ to: [{ operation: { paths: [\"/admin\"] } }] }]\n",
    )
    .unwrap();
    s.cli_json(&["policy", "apply", "-f", f.to_str().unwrap()])
        .unwrap();
    settle().await;
    for (i, got) in since(&logs, &mark).iter().enumerate() {
        if i % SERVICES == 0 {
            assert_eq!(got.len(), 1, "watcher {i}: {got:?}");
            let m = &got[0].1;
            assert!(m.base_version > 0 && m.policies_changed);
            assert!(m.policies_json[0].contains("svc-0-deny"));
            assert!(m.bundle.is_none() && m.jwks_json.is_empty() && m.endpoints.is_empty());
        } else {
            assert!(got.is_empty(), "watcher {i} of another service got {got:?}");
        }
    }

    // 2. One endpoint added (a new sidecar of svc-1): the watchers calling
    // svc-1 get that service's addresses alone, in well under 1 KiB.
    let mark = marks(&logs);
    let new = &spare[1];
    let mut extra = s
        .grpc(Some((new.chain.clone(), new.key.clone_key())))
        .await
        .unwrap();
    let _extra = extra
        .watch(WatchRequest {
            advertise: "10.9.9.9:15006".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    settle().await;
    for (i, got) in since(&logs, &mark).iter().enumerate() {
        if upstream_of(i) == 1 {
            assert_eq!(got.len(), 1, "watcher {i}: {got:?}");
            let (bytes, m) = &got[0];
            assert_eq!(m.endpoints.len(), 1);
            assert!(m.endpoints[0]
                .addresses
                .contains(&"10.9.9.9:15006".to_string()));
            assert!(*bytes < 1024, "an endpoint delta of {bytes} bytes");
        } else {
            assert!(got.is_empty(), "watcher {i} not calling svc-1 got {got:?}");
        }
    }

    // 3. A revocation and a signing-key rotation concern everyone.
    let mark = marks(&logs);
    // A certificate no watcher uses.
    let serial = spare[SERVICES].serial.clone();
    s.cli_json(&["cert", "revoke", &serial]).unwrap();
    s.cli_json(&["signing-key", "rotate"]).unwrap();
    settle().await;
    for (i, got) in since(&logs, &mark).iter().enumerate() {
        assert!(
            got.iter()
                .any(|(_, m)| m.revoked_serials == [serial.clone()]),
            "watcher {i} learns the revocation alone: {got:?}"
        );
        assert!(got.iter().any(|(_, m)| !m.jwks_json.is_empty()));
        assert!(got
            .iter()
            .all(|(_, m)| m.base_version > 0 && m.bundle.is_none()));
    }

    // Every delta applied to the version before it, and what each watcher
    // put together is what a new watcher of its service gets whole.
    let mut wholes = Vec::new();
    for (svc, cert) in spare.iter().take(SERVICES).enumerate() {
        wholes.push(comparable(whole_state(&s, cert, upstream_of(svc)).await));
    }
    for (i, l) in logs.iter().enumerate() {
        let l = l.lock().unwrap();
        assert_eq!(l.out_of_step, 0, "watcher {i}");
        for w in l.messages.windows(2) {
            assert_eq!(w[1].1.base_version, w[0].1.version, "watcher {i}: in order");
        }
        let mine = comparable(l.state.state().unwrap().clone());
        let mut whole = wholes[i % SERVICES].clone();
        whole.endpoints_partial = mine.endpoints_partial;
        assert_eq!(mine, whole, "watcher {i}");
    }
    for t in tasks {
        t.abort();
    }
}

/// A delta the client never sees: the next one does not fit, the client
/// opens the stream again, gets the whole state, and carries on.
#[tokio::test]
async fn a_lost_delta_is_recovered_by_a_whole_state() {
    let s = server(&[]);
    for i in 0..SERVICES {
        s.cli_json(&["service", "add", &format!("svc-{i}")])
            .unwrap();
    }
    let certs = certificates(&s, 3).await;
    let (chain, key) = (certs[0].chain.clone(), certs[0].key.clone_key());
    let trust = ward_tls::ControlPlaneTrust::fingerprint(&s.fingerprint).unwrap();
    let tls = move || {
        ward_tls::client_config(trust.clone(), Some((chain.clone(), key.clone_key())), &[])
            .map_err(|e| e.to_string())
    };
    let latest: Arc<Mutex<Option<WatchResponse>>> = Default::default();
    let received: Arc<Mutex<Vec<WatchResponse>>> = Default::default();
    let follower = {
        let (latest, received, addr) = (latest.clone(), received.clone(), s.addr.clone());
        tokio::spawn(async move {
            let mut deltas = 0;
            ward_api::follow_with(
                &addr,
                tls,
                watch_req(String::new(), 1, true),
                |u| {
                    if let Some(u) = u {
                        *latest.lock().unwrap() = Some(u.clone());
                    }
                },
                |m: WatchResponse| {
                    received.lock().unwrap().push(m.clone());
                    if m.base_version > 0 {
                        deltas += 1;
                        if deltas == 1 {
                            return None;
                        }
                    }
                    Some(m)
                },
            )
            .await
        })
    };
    let got = |pred: Box<dyn Fn(&WatchResponse) -> bool + Send>| {
        let latest = latest.clone();
        async move {
            ward_testkit::wait_until(Duration::from_secs(10), || {
                let ok = latest.lock().unwrap().as_ref().is_some_and(&pred);
                async move { ok }
            })
            .await
        }
    };
    assert!(got(Box::new(|_| true)).await);
    // The first delta (a revocation) is lost; the second (a key rotation)
    // does not fit the state held.
    let serial = certs[2].serial.clone();
    s.cli_json(&["cert", "revoke", &serial]).unwrap();
    settle().await;
    let jwks_before = latest.lock().unwrap().as_ref().unwrap().jwks_json.clone();
    assert!(latest
        .lock()
        .unwrap()
        .as_ref()
        .unwrap()
        .revoked_serials
        .is_empty());
    s.cli_json(&["signing-key", "rotate"]).unwrap();
    let serial2 = serial.clone();
    assert!(
        got(Box::new(
            move |m| m.revoked_serials == [serial2.clone()] && m.jwks_json != jwks_before
        ))
        .await,
        "the whole state brings both changes"
    );
    let wholes = received
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.base_version == 0)
        .count();
    assert_eq!(wholes, 2, "the stream was opened again once");
    let now = comparable(whole_state(&s, &certs[1], 1).await);
    let mut mine = comparable(latest.lock().unwrap().clone().unwrap());
    mine.endpoints_partial = now.endpoints_partial;
    assert_eq!(mine, now);
    follower.abort();
}

/// 200 workloads renew at once against a server that admits 4 signings
/// at a time: the rest are refused with UNAVAILABLE and a retry hint,
/// come back with jittered backoff (ward_api::Backoff, as sidecars do),
/// and all are renewed long before their certificates end; the admin API
/// answers throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_storm_is_shed_with_hints_and_nobody_lapses() {
    let s = server(&["--max-pending-calls", "4", "--svid-ttl", "2m"]);
    for i in 0..SERVICES {
        s.cli_json(&["service", "add", &format!("svc-{i}")])
            .unwrap();
    }
    let certs = certificates(&s, WATCHERS).await;
    let (hinted, final_errors) = (
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let start = Instant::now();
    let mut renewals = tokio::task::JoinSet::new();
    for (i, cert) in certs.into_iter().enumerate() {
        let (hinted, final_errors) = (hinted.clone(), final_errors.clone());
        let s_addr = s.addr.clone();
        let fp = s.fingerprint.clone();
        renewals.spawn(async move {
            let mut backoff =
                ward_api::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
            loop {
                let trust = ward_tls::ControlPlaneTrust::fingerprint(&fp).unwrap();
                let mut c = ward_testkit::grpc_client(
                    &s_addr,
                    trust,
                    Some((cert.chain.clone(), cert.key.clone_key())),
                )
                .await
                .unwrap();
                let (req, _key) = csr(&id(&sid(i % SERVICES)));
                match c.sign_certificate(sign_req(req, "")).await {
                    Ok(r) => return (cert.not_after, r.into_inner().not_after),
                    Err(status) => {
                        let refused = ward_api::Refused::from(status);
                        match refused.retry_in {
                            Some(hint) => {
                                hinted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                tokio::time::sleep(backoff.pause(Some(hint))).await;
                            }
                            None => {
                                final_errors.lock().unwrap().push(refused.message);
                                return (cert.not_after, 0);
                            }
                        }
                    }
                }
            }
        });
    }
    // The admin API answers while the storm goes on.
    let admin = Instant::now();
    let status = s.cli_json(&["status"]).unwrap();
    assert!(status.is_object());
    assert!(
        admin.elapsed() < Duration::from_secs(5),
        "ward status took {:?}",
        admin.elapsed()
    );
    let mut renewed = 0;
    while let Some(r) = renewals.join_next().await {
        let (old_end, new_end) = r.unwrap();
        if new_end > 0 {
            renewed += 1;
            assert!(
                ward_ca::now().unix_timestamp() < old_end,
                "renewed after the old certificate ended"
            );
        }
    }
    assert!(
        final_errors.lock().unwrap().is_empty(),
        "{:?}",
        final_errors.lock().unwrap()
    );
    assert_eq!(renewed, WATCHERS);
    let n = hinted.load(std::sync::atomic::Ordering::Relaxed);
    assert!(n > 0, "the storm was shed");
    eprintln!(
        "200 renewals in {:?}, {n} refusals with a hint",
        start.elapsed()
    );
}
