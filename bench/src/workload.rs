//! `ward-bench workload`: the SPIFFE Workload API of a real `ward agent`
//! (release build) on its unix socket, next to baselines measured in the
//! same run.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;
use ward_api::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
use ward_api::workload::{
    JwtBundlesRequest, JwtsvidRequest, ValidateJwtsvidRequest, X509svidRequest,
};

type Client = SpiffeWorkloadApiClient<Channel>;

async fn connect(socket: &std::path::Path) -> anyhow::Result<Client> {
    let path = socket.to_path_buf();
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await?;
    Ok(SpiffeWorkloadApiClient::new(channel))
}

fn req<T>(msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("workload.spiffe.io", "true".parse().expect("ascii"));
    r
}

pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Calls `call` from `tasks` tasks over `conns` connections for `dur`.
async fn rate<F, Fut>(
    clients: &[Client],
    tasks: usize,
    dur: Duration,
    call: F,
) -> anyhow::Result<f64>
where
    F: Fn(Client) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let call = Arc::new(call);
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut handles = Vec::new();
    for i in 0..tasks {
        let (c, call, done) = (
            clients[i % clients.len()].clone(),
            call.clone(),
            done.clone(),
        );
        handles.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                call(c.clone()).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for h in handles {
        h.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) async fn run(ward: &str, dur: Duration) -> anyhow::Result<serde_json::Value> {
    let s = ward_testkit::WardServer::start(ward, &[])?;
    s.cli_json(&["service", "add", "bench"])?;
    let token = s.cli_json(&["join-token", "create", "--service", "bench"])?["token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let dir = tempfile_dir()?;
    let socket = dir.join("agent.sock");
    let dd = s.data_dir.to_string_lossy().to_string();
    let api = format!("unix://{}", socket.display());
    let agent = ward_testkit::Proc::spawn(
        std::path::Path::new(ward),
        &[
            "--output",
            "json",
            "--data-dir",
            &dd,
            "agent",
            "--join-token",
            &token,
            "--service",
            "bench",
            "--workload-api",
            &api,
        ],
    )?;
    let pid = agent.child.id();

    // The SVID exists before the first caller comes.
    let first = connect(&socket).await?;
    first
        .clone()
        .fetch_x509svid(req(X509svidRequest {}))
        .await?
        .into_inner()
        .message()
        .await?
        .context("an X509-SVID")?;
    let idle = rss_kib(pid);

    // 100 open FetchX509SVID streams, each on its own connection.
    let mut streams = Vec::new();
    for _ in 0..100 {
        let mut c = connect(&socket).await?;
        let mut st = c
            .fetch_x509svid(req(X509svidRequest {}))
            .await?
            .into_inner();
        st.message().await?.context("an X509-SVID")?;
        streams.push((c, st));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let with_streams = rss_kib(pid);
    drop(streams);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // First X509-SVID to a new caller: a new connection each time.
    let mut firsts = Vec::new();
    for _ in 0..300 {
        let t = Instant::now();
        let mut c = connect(&socket).await?;
        c.fetch_x509svid(req(X509svidRequest {}))
            .await?
            .into_inner()
            .message()
            .await?
            .context("an X509-SVID")?;
        firsts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    firsts.sort_by(f64::total_cmp);

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(connect(&socket).await?);
    }
    let aud = vec!["payments".to_string()];
    let jwt = clients[0]
        .clone()
        .fetch_jwtsvid(req(JwtsvidRequest {
            audience: aud.clone(),
            spiffe_id: String::new(),
        }))
        .await?
        .into_inner()
        .svids
        .into_iter()
        .next()
        .context("a JWT-SVID")?
        .svid;
    let bundles = clients[0]
        .clone()
        .fetch_jwt_bundles(req(JwtBundlesRequest {}))
        .await?
        .into_inner()
        .message()
        .await?
        .context("JWT bundles")?;
    let jwks = bundles
        .bundles
        .values()
        .next()
        .context("a JWT bundle")?
        .clone();
    let keys = ward_jwt::JwkSet::from_json(std::str::from_utf8(&jwks)?)?;

    // Baseline: the same validation in this process, on one core.
    let verify_1core = {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < dur {
            ward_jwt::verify_jwt_svid(&jwt, &keys, "payments")?;
            n += 1;
        }
        n as f64 / start.elapsed().as_secs_f64()
    };

    let fetch = {
        let aud = aud.clone();
        rate(&clients, 64, dur, move |mut c| {
            let aud = aud.clone();
            async move {
                c.fetch_jwtsvid(req(JwtsvidRequest {
                    audience: aud,
                    spiffe_id: String::new(),
                }))
                .await?;
                Ok(())
            }
        })
        .await?
    };
    let validate = {
        let jwt = jwt.clone();
        rate(&clients, 64, dur, move |mut c| {
            let jwt = jwt.clone();
            async move {
                c.validate_jwtsvid(req(ValidateJwtsvidRequest {
                    audience: "payments".into(),
                    svid: jwt,
                }))
                .await?;
                Ok(())
            }
        })
        .await?
    };

    // SIGTERM, so that the agent exits as in production (and a profiler
    // around it writes its output).
    let mut agent = agent;
    agent.sigterm();
    let _ = agent.wait_timeout(Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(&dir);
    Ok(json!({
        "baseline_validate_in_process_per_sec_1core": verify_1core.round(),
        "fetch_jwt_svid_cached_per_sec": fetch.round(),
        "validate_jwt_svid_per_sec": validate.round(),
        "validate_ratio_to_baseline": (validate / verify_1core * 1000.0).round() / 1000.0,
        "first_x509_svid_ms": {
            "p50": (percentile(&firsts, 0.5) * 1000.0).round() / 1000.0,
            "p99": (percentile(&firsts, 0.99) * 1000.0).round() / 1000.0,
        },
        "agent_rss_mib": {
            "idle": (idle.0 as f64 / 1024.0 * 10.0).round() / 10.0,
            "with_100_streams": (with_streams.0 as f64 / 1024.0 * 10.0).round() / 10.0,
            "peak": (with_streams.1 as f64 / 1024.0 * 10.0).round() / 10.0,
        },
        "targets": {
            "fetch_jwt_svid_cached_per_sec": 20000,
            "validate_jwt_svid_per_sec": 15000,
            "first_x509_svid_p99_ms": 5,
            "agent_rss_mib_with_100_streams": 12,
        },
    }))
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let mut b = [0u8; 8];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow::anyhow!("no randomness"))?;
    let d = std::env::temp_dir().join(format!(
        "ward-bench-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    ));
    std::fs::create_dir(&d)?;
    Ok(d)
}
