//! A control plane, sample apps and sidecars, started as real processes.
#![allow(dead_code, unreachable_pub)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use ward_testkit::{wait_until, Proc, WardServer};

pub struct App {
    pub proc: Proc,
    pub http: String,
    pub tcp: String,
}

pub struct Sidecar {
    pub proc: Proc,
    pub inbound: String,
    pub admin: String,
    pub upstreams: Value,
    pub id: String,
}

impl Sidecar {
    pub fn upstream(&self, name: &str) -> String {
        self.upstreams[name]
            .as_str()
            .unwrap_or_else(|| panic!("no upstream {name}"))
            .to_string()
    }
}

/// Plain-HTTP reqwest clients still need a rustls provider installed.
pub fn init() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_ward"))
}

pub fn app(name: &str) -> App {
    init();
    let proc = Proc::spawn(
        bin(),
        &[
            "--output",
            "json",
            "sample-app",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--tcp-listen",
            "127.0.0.1:0",
        ],
    )
    .unwrap();
    let http = proc.ready["http"].as_str().unwrap().to_string();
    let tcp = proc.ready["tcp"].as_str().unwrap().to_string();
    App { proc, http, tcp }
}

pub fn register(s: &WardServer, service: &str) -> String {
    let _ = s.cli_json(&["service", "add", service]);
    s.cli_json(&["join-token", "create", "--service", service])
        .unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A sidecar for `service` in front of `app_addr`, with `extra` flags.
pub fn sidecar(s: &WardServer, service: &str, app_addr: &str, extra: &[&str]) -> Sidecar {
    start_sidecar(s, service, app_addr, extra, None)
}

/// Like [`sidecar`], logging JSON lines at `filter`, kept for
/// `proc.log()`.
pub fn sidecar_logged(
    s: &WardServer,
    service: &str,
    app_addr: &str,
    extra: &[&str],
    filter: &str,
) -> Sidecar {
    start_sidecar(s, service, app_addr, extra, Some(filter))
}

fn start_sidecar(
    s: &WardServer,
    service: &str,
    app_addr: &str,
    extra: &[&str],
    log: Option<&str>,
) -> Sidecar {
    let token = register(s, service);
    let dd = s.data_dir.to_str().unwrap().to_string();
    let mut args = vec![
        "--output",
        "json",
        "--data-dir",
        &dd,
        "proxy",
        "--join-token",
        &token,
        "--service",
        service,
        "--inbound",
        "127.0.0.1:0",
        "--app",
        app_addr,
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let proc = match log {
        Some(filter) => {
            args.splice(0..0, ["--log-format", "json"]);
            Proc::spawn_logged(bin(), &args, filter).unwrap()
        }
        None => Proc::spawn(bin(), &args).unwrap(),
    };
    let p = &proc.ready["proxy"];
    Sidecar {
        inbound: p["inbound"].as_str().unwrap().to_string(),
        admin: p["admin"].as_str().unwrap().to_string(),
        upstreams: p["upstreams"].clone(),
        id: p["spiffe_id"].as_str().unwrap().to_string(),
        proc,
    }
}

pub async fn admin_json(sc: &Sidecar, path: &str) -> Value {
    reqwest::get(format!("http://{}{path}", sc.admin))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The sum of the samples of counter `name` (its `_total` lines) whose
/// labels include every one of `labels` (`key="value"`), and the whole
/// exposition for messages.
pub async fn metric_sum(sc: &Sidecar, name: &str, labels: &[&str]) -> (f64, String) {
    metric_sum_at(&sc.admin, name, labels).await
}

/// [`metric_sum`] of the sidecar whose admin listener is `admin`.
pub async fn metric_sum_at(admin: &str, name: &str, labels: &[&str]) -> (f64, String) {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sum = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_total{{")))
        .filter(|l| labels.iter().all(|kv| l.contains(kv)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    (sum, text)
}

/// Waits until `sc` knows an endpoint for `service` and is ready.
pub async fn wait_for_endpoint(sc: &Sidecar, service: &str) {
    wait_for_endpoints(sc, service, 1).await;
}

/// Waits until `sc` knows at least `n` endpoints for `service`.
pub async fn wait_for_endpoints(sc: &Sidecar, service: &str, n: usize) {
    let id = format!("spiffe://ward.internal/ns/default/sa/{service}");
    let ok = wait_until(Duration::from_secs(10), || async {
        let c = admin_json(sc, "/config").await;
        c["endpoints"][&id].as_array().is_some_and(|a| a.len() >= n)
    })
    .await;
    assert!(ok, "{} never learnt {n} endpoint(s) of {service}", sc.id);
}

pub fn apply(s: &WardServer, yaml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.yaml");
    std::fs::write(&f, yaml).unwrap();
    s.cli_json(&["policy", "apply", "-f", f.to_str().unwrap()])
        .unwrap();
}

pub const ALLOW_FRONTEND: &str = "apiVersion: ward/v1\nkind: AuthorizationPolicy\nmetadata: { name: from-frontend }\nspec:\n  action: ALLOW\n  rules:\n  - from: [{ source: { principals: [\"ward.internal/ns/default/sa/frontend\"] } }]\n";

/// The `payments` app behind its sidecar, and a `frontend` sidecar with an
/// upstream port for `payments` that already knows an endpoint.
pub async fn payments_and_frontend(s: &WardServer) -> (App, Sidecar, Sidecar) {
    let pay = app("payments");
    let pay_sc = sidecar(s, "payments", &pay.http, &[]);
    let fe = frontend_for_payments(s, 1).await;
    (pay, pay_sc, fe)
}

/// A `frontend` sidecar (no app of its own) with an upstream port for
/// `payments`, once it knows `endpoints` endpoints of it.
pub async fn frontend_for_payments(s: &WardServer, endpoints: usize) -> Sidecar {
    let fe = sidecar(
        s,
        "frontend",
        "127.0.0.1:9",
        &["--upstream", "payments=127.0.0.1:0"],
    );
    wait_for_endpoints(&fe, "payments", endpoints).await;
    fe
}

/// ward's TLS for a certificate the server issues to `spiffe_id`, trusting
/// the server's bundle: to speak to sidecars directly.
pub fn mesh_tls(s: &WardServer, spiffe_id: &str) -> std::sync::Arc<ward_tls::MeshTls> {
    let (chain, key) = s.issue(spiffe_id, &[]).unwrap().pair();
    let bundle =
        ward_testkit::chain_from_pem(&std::fs::read_to_string(s.bundle_path()).unwrap()).unwrap();
    ward_tls::MeshTls::new(
        chain,
        key,
        ward_tls::Trust {
            bundle,
            revoked: Default::default(),
            trust_domain: "ward.internal".into(),
        },
    )
    .unwrap()
}

pub struct Agent {
    pub proc: Proc,
    pub socket: PathBuf,
    pub admin: String,
    pub dir: tempfile::TempDir,
}

impl Agent {
    /// The agent's own certificate chain (PEM), written to a file.
    pub async fn own_cert(&self) -> PathBuf {
        let certs: Value = reqwest::get(format!("http://{}/certs", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let p = self.dir.path().join("agent.pem");
        std::fs::write(&p, certs["chain_pem"].as_str().unwrap()).unwrap();
        p
    }

    pub async fn ready(&self) -> u16 {
        reqwest::get(format!("http://{}/ready", self.admin))
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// `ward agent` for `service`, its socket in a directory it owns that
/// other users may enter (so a caller from another uid reaches it and is
/// refused by SO_PEERCRED, not by the file system).
pub fn agent(s: &WardServer, service: &str, extra: &[&str]) -> Agent {
    agent_with_env(s, service, extra, &[])
}

/// [`agent`] with `NAME=VALUE` settings added to its environment (it is
/// started through `env`, which executes it in place).
pub fn agent_with_env(s: &WardServer, service: &str, extra: &[&str], env: &[&str]) -> Agent {
    init();
    let token = register(s, service);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let socket = dir.path().join("agent.sock");
    let dd = s.data_dir.to_str().unwrap().to_string();
    let api = format!("unix://{}", socket.display());
    let mut args = vec![
        "--output",
        "json",
        "--data-dir",
        &dd,
        "agent",
        "--join-token",
        &token,
        "--service",
        service,
        "--workload-api",
        &api,
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let ward = bin();
    let proc = if env.is_empty() {
        Proc::spawn(ward, &args).unwrap()
    } else {
        let mut through = env.to_vec();
        through.push(ward.to_str().unwrap());
        through.extend_from_slice(&args);
        Proc::spawn(Path::new("env"), &through).unwrap()
    };
    let admin = proc.ready["agent"]["admin"].as_str().unwrap().to_string();
    assert_eq!(
        proc.ready["agent"]["workload_api"],
        socket.to_str().unwrap()
    );
    Agent {
        proc,
        socket,
        admin,
        dir,
    }
}

/// The data-plane workers of a sidecar started without `--worker-threads`:
/// the cores, at most 2. Each keeps its own pools and shared links.
pub fn default_workers() -> f64 {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2) as f64
}

/// The `NAME=VALUE` entries of a process's environment.
pub fn environment(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap()
        .split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}
