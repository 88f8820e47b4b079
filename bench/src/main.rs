//! ward's benchmarks.
//!
//! - `ward-bench sign [--ward PATH] [--seconds N]` measures certificate
//!   signing in-process (one core) and through the gRPC API of a real
//!   `ward server`, each next to a baseline measured in the same run: bare
//!   ECDSA P-256 signatures per second on one core.
//! - `ward-bench upstream`, `grpc-load`, `tcp-load`: the app and load
//!   generators of the comparison harness (`bench/compare.py`).
//! - `ward-bench token [--ward PATH] [--seconds N] [--connections N]`
//!   measures the OAuth2 token endpoint of a real `ward server`
//!   (client_credentials, client_secret_basic, ES256, keep-alive HTTP/1.1
//!   over TLS 1.3), next to `/healthz` on the same connections.
//! - `ward-bench workload [--ward PATH] [--seconds N]` measures the SPIFFE
//!   Workload API of a real `ward agent`: cached FetchJWTSVID and
//!   ValidateJWTSVID per second (next to the same validation in-process
//!   on one core), the first X509-SVID to a new caller, and the agent's
//!   RSS with 100 open streams.
//! - `ward-bench fleet [--sidecars N] [--services S] [--revoked N]
//!   [--baseline-ward PATH]`: N sidecar-side watch streams (real
//!   certificates, real mTLS) on one `ward server`, with `--revoked`
//!   certificates revoked before they open; per kind of change (one service's policy, an endpoint,
//!   a revocation, two revocations at once, a JWKS and a CA rotation)
//!   the server's CPU, the bytes
//!   sent to the sidecars it concerns and to the others, and the time
//!   until all concerned have it; the server's RSS per connected sidecar.
//! - `ward-bench store [--rows N] [--postgres URL] [--seconds N]`:
//!   certificate issuance and listing with N issued-certificate rows
//!   (default 1,000,000) against an empty store in the same run, on SQLite
//!   and PostgreSQL, and the time to prune N expired rows.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod fleet;
mod harness;
mod store;
mod workload;

use anyhow::Context;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use clap::{Parser, Subcommand};
use serde_json::json;
use ward_api::v1::SignCertificateRequest;
use ward_ca::{validate_csr, CaMaterial, SigningAuthority};
use ward_identity::{SpiffeId, TrustDomain};

/// ward's benchmarks (see the crate documentation).
#[derive(Parser)]
#[command(name = "ward-bench")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

/// The `ward` binary a benchmark runs.
#[derive(clap::Args)]
struct Ward {
    /// The `ward` binary to run.
    #[arg(long, default_value = "target/release/ward")]
    ward: String,
}

#[derive(Subcommand)]
enum Bench {
    /// Certificate signing in-process and through a real server.
    Sign {
        #[command(flatten)]
        ward: Ward,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// The OAuth2 token endpoint of a real server.
    Token {
        #[command(flatten)]
        ward: Ward,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Keep-alive connections to the server.
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// The SPIFFE Workload API of a real `ward agent`.
    Workload {
        #[command(flatten)]
        ward: Ward,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// Watch streams of a fleet of sidecars on one server.
    Fleet {
        #[command(flatten)]
        ward: Ward,
        #[arg(long, default_value_t = 2000)]
        sidecars: usize,
        #[arg(long, default_value_t = 200)]
        services: usize,
        /// Certificates revoked before the streams open.
        #[arg(long, default_value_t = 0)]
        revoked: usize,
        /// A second `ward` binary measured first, as the baseline.
        #[arg(long)]
        baseline_ward: Option<String>,
    },
    /// Issuance and listing with many issued-certificate rows.
    Store {
        #[arg(long, default_value_t = 1_000_000)]
        rows: usize,
        /// A PostgreSQL URL, to measure it beside SQLite.
        #[arg(long)]
        postgres: Option<String>,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// The comparison harness's upstream app.
    Upstream {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        #[arg(long)]
        tcp_listen: Option<String>,
    },
    /// gRPC unary load through HOST:PORT.
    GrpcLoad {
        #[arg(long)]
        target: String,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        streams: usize,
    },
    /// TCP bulk load through HOST:PORT.
    TcpLoad {
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

fn main() -> anyhow::Result<()> {
    let secs = Duration::from_secs;
    match Args::parse().bench {
        Bench::Sign { ward, seconds } => sign(&ward.ward, secs(seconds)),
        Bench::Token {
            ward,
            seconds,
            connections,
        } => token(&ward.ward, secs(seconds), connections),
        Bench::Workload { ward, seconds } => {
            let report = runtime(1)?.block_on(workload::run(&ward.ward, secs(seconds)))?;
            print_report(&report)
        }
        Bench::Fleet {
            ward,
            sidecars,
            services,
            revoked,
            baseline_ward,
        } => {
            let report = runtime(2)?.block_on(fleet::run(
                &ward.ward,
                baseline_ward.as_deref(),
                sidecars,
                services,
                revoked,
            ))?;
            print_report(&report)
        }
        Bench::Store {
            rows,
            postgres,
            seconds,
        } => {
            let report =
                runtime(2)?.block_on(store::run(rows, postgres.as_deref(), secs(seconds)))?;
            print_report(&report)
        }
        Bench::Upstream { listen, tcp_listen } => {
            runtime(1)?.block_on(harness::upstream(&listen, tcp_listen.as_deref()))
        }
        Bench::GrpcLoad {
            target,
            seconds,
            streams,
        } => {
            let rate = runtime(1)?.block_on(harness::grpc_load(&target, secs(seconds), streams))?;
            println!("{}", json!({ "grpc_unary_per_sec": rate.round() }));
            Ok(())
        }
        Bench::TcpLoad { target, seconds } => {
            let mbps = runtime(1)?.block_on(harness::tcp_load(target, secs(seconds)))?;
            println!(
                "{}",
                json!({ "tcp_mb_per_sec": (mbps * 10.0).round() / 10.0 })
            );
            Ok(())
        }
    }
}

fn print_report(report: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}

/// A runtime with `workers` threads.
fn runtime(workers: usize) -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?)
}

fn sign(ward: &str, dur: Duration) -> anyhow::Result<()> {
    let td = TrustDomain::new("ward.internal")?;
    let id = SpiffeId::for_service(&td, "default", "bench")?;
    // Client-side work (key generation, CSR encoding) is done up front.
    let csrs: Vec<Vec<u8>> = (0..4096)
        .map(|_| ward_ca::testing::csr_for(&id).0)
        .collect();

    let baseline = ecdsa_baseline(dur);
    let in_process = in_process(&td, &id, &csrs, dur)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let grpc = rt.block_on(over_grpc(ward, &csrs, dur))?;
    let report = json!({
        "baseline_ecdsa_p256_signs_per_sec_1core": baseline.round(),
        "in_process_certs_per_sec_1core": in_process.round(),
        "in_process_ratio_to_baseline": (in_process / baseline * 1000.0).round() / 1000.0,
        "grpc_certs_per_sec": grpc.round(),
        "grpc_ratio_to_baseline": (grpc / baseline * 1000.0).round() / 1000.0,
        "targets": { "in_process_certs_per_sec_1core": 2000, "grpc_certs_per_sec": 1000 },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn ecdsa_baseline(dur: Duration) -> f64 {
    let rng = SystemRandom::new();
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).expect("key");
    let msg = [7u8; 512];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < dur {
        for _ in 0..100 {
            let _ = key.sign(&rng, &msg).expect("sign");
        }
        n += 100;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// CSR checks (parse, signature, key, ID) and signing, on this thread.
fn in_process(
    td: &TrustDomain,
    id: &SpiffeId,
    csrs: &[Vec<u8>],
    dur: Duration,
) -> anyhow::Result<f64> {
    let now = ward_ca::now();
    let root = CaMaterial::generate_root(td, Duration::from_secs(86400), now)?;
    let ca =
        SigningAuthority::new(&root.generate_signing_ca(td, 1, Duration::from_secs(3600), now)?)?;
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed() < dur {
        let csr = validate_csr(&csrs[n % csrs.len()]).context("csr")?;
        anyhow::ensure!(csr.spiffe_id == *id);
        let _ = ca.issue_svid(
            &csr.spki,
            &csr.spiffe_id,
            &[],
            Duration::from_secs(3600),
            now,
        )?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Concurrent clients on keep-alive HTTP/2 connections to a real server,
/// each request a join-token issuance committed to SQLite.
async fn over_grpc(ward: &str, csrs: &[Vec<u8>], dur: Duration) -> anyhow::Result<f64> {
    let s = ward_testkit::WardServer::start(ward, &[])?;
    s.cli_json(&["service", "add", "bench"])?;
    let mut tokens = Vec::new();
    for _ in 0..20 {
        let v = s.cli_json(&[
            "join-token",
            "create",
            "--service",
            "bench",
            "--uses",
            "10000",
            "--ttl",
            "1h",
        ])?;
        tokens.push(v["token"].as_str().unwrap_or_default().to_string());
    }
    let tokens = Arc::new(tokens);
    let csrs = Arc::new(csrs.to_vec());
    let done = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + dur;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for conn in 0..4 {
        let client = s.grpc(None).await?;
        for worker in 0..16 {
            let mut c = client.clone();
            let (tokens, csrs, done) = (tokens.clone(), csrs.clone(), done.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = conn * 16 + worker;
                while Instant::now() < deadline {
                    let n = done.load(Ordering::Relaxed);
                    let req = SignCertificateRequest {
                        csr: csrs[i % csrs.len()].clone(),
                        join_token: tokens[(n / 9000).min(tokens.len() - 1)].clone(),
                    };
                    c.sign_certificate(req).await?;
                    done.fetch_add(1, Ordering::Relaxed);
                    i += 64;
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// The token endpoint under `conns` keep-alive connections, against
/// `/healthz` through the same client (TLS, HTTP and the server's request
/// path without the OAuth2 work) in the same run.
fn token(ward: &str, dur: Duration, conns: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let s = ward_testkit::WardServer::start(ward, &[])?;
    s.cli_json(&["service", "add", "bench"])?;
    let c = s.cli_json(&[
        "client",
        "create",
        "bench-client",
        "--service",
        "bench",
        "--auth",
        "client_secret_basic",
        "--audience",
        "payments",
    ])?;
    let secret = c["client_secret"]
        .as_str()
        .context("client_secret")?
        .to_string();
    let base = format!("https://{}", s.addr);
    let client = s.https()?;
    let report = rt.block_on(async move {
        let token_url = format!("{base}/oauth2/token");
        let health_url = format!("{base}/healthz");
        let tok = move |client: reqwest::Client| {
            let (url, secret) = (token_url.clone(), secret.clone());
            async move {
                let r = client
                    .post(&url)
                    .basic_auth("bench-client", Some(&secret))
                    .form(&[
                        ("grant_type", "client_credentials"),
                        ("audience", "payments"),
                    ])
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "token endpoint: {}", r.status());
                let body: serde_json::Value = r.json().await?;
                anyhow::ensure!(body["access_token"].is_string(), "no access_token");
                Ok(())
            }
        };
        let health = move |client: reqwest::Client| {
            let url = health_url.clone();
            async move {
                let r = client.get(&url).send().await?;
                anyhow::ensure!(r.status().is_success(), "healthz: {}", r.status());
                r.bytes().await?;
                Ok(())
            }
        };
        // Warm the connection pool and the server.
        drive(&client, conns, Duration::from_secs(1), tok.clone()).await?;
        let health_rate = drive(&client, conns, dur, health).await?;
        let token_rate = drive(&client, conns, dur, tok).await?;
        anyhow::Ok(json!({
            "connections": conns,
            "healthz_req_per_sec": health_rate.round(),
            "tokens_per_sec": token_rate.round(),
            "tokens_ratio_to_healthz": (token_rate / health_rate * 1000.0).round() / 1000.0,
            "target_tokens_per_sec": 5000,
        }))
    })?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// Runs `one` from `conns` concurrent tasks sharing `client` for `dur`;
/// returns completions per second. Any failure fails the run.
async fn drive<F, Fut>(
    client: &reqwest::Client,
    conns: usize,
    dur: Duration,
    one: F,
) -> anyhow::Result<f64>
where
    F: Fn(reqwest::Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let deadline = start + dur;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (client, done, one) = (client.clone(), done.clone(), one.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                one(client.clone()).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}
