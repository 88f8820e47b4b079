//! Test helpers: run the real `ward` binary on an OS-chosen port, and talk
//! to it over gRPC and HTTPS with clients that verify it the way real
//! clients do (pinned root fingerprint, SPIFFE ID of the server).
#![allow(missing_docs, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::Value;
use tonic::transport::Channel;
use ward_api::v1::identity_client::IdentityClient;
use ward_tls::ControlPlaneTrust;

pub mod postgres;

/// A certificate issued by [`WardServer::issue`].
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    /// What `ward cert issue` printed (serial, expiry, …).
    pub out: Value,
}

impl Issued {
    /// Chain and key, for a client or server configuration.
    pub fn pair(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.chain.clone(), self.key.clone_key())
    }
}

/// Copies `kek.key` and `admin.token` from one data dir to a new one,
/// keeping them 0600 in a 0700 directory.
pub fn copy_secrets(from: &Path, to: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(to)?;
    for f in ["kek.key", "admin.token"] {
        let bytes = std::fs::read(from.join(f)).with_context(|| format!("reading {f}"))?;
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to.join(f))?;
        std::io::Write::write_all(&mut out, &bytes)?;
    }
    Ok(())
}

/// A `ward server` process on a temporary data dir.
pub struct WardServer {
    pub bin: PathBuf,
    pub child: Option<Child>,
    pub addr: String,
    pub url: String,
    pub fingerprint: String,
    /// `https://ADDR/ui/`, when started with `--ui-listen`.
    pub ui_url: Option<String>,
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub extra_args: Vec<String>,
}

impl WardServer {
    /// Starts `ward server` with `extra` flags on a new data dir.
    pub fn start(bin: &str, extra: &[&str]) -> anyhow::Result<WardServer> {
        let tmp = tempfile::tempdir()?;
        let extra = extra.iter().map(|s| s.to_string()).collect();
        WardServer::start_in(PathBuf::from(bin), tmp, extra)
    }

    /// Starts on `tmp/data`, which `tmp` keeps until the server drops.
    fn start_in(
        bin: PathBuf,
        tmp: tempfile::TempDir,
        extra_args: Vec<String>,
    ) -> anyhow::Result<WardServer> {
        let mut s = WardServer {
            bin,
            child: None,
            addr: String::new(),
            url: String::new(),
            fingerprint: String::new(),
            ui_url: None,
            data_dir: tmp.path().join("data"),
            _tmp: Some(tmp),
            extra_args,
        };
        s.spawn("127.0.0.1:0")?;
        Ok(s)
    }

    /// Starts another replica on the same database (the same `extra`
    /// flags, which must name a shared `--database`): a data dir of its own
    /// holding copies of this one's key-encryption key and admin token, as
    /// docs/operations.md tells operators to do.
    pub fn replica(&self) -> anyhow::Result<WardServer> {
        self.replica_with(&self.extra_args)
    }

    /// Like [`WardServer::replica`], with flags `extra` of its own.
    pub fn replica_with<S: AsRef<str>>(&self, extra: &[S]) -> anyhow::Result<WardServer> {
        let tmp = tempfile::tempdir()?;
        copy_secrets(&self.data_dir, &tmp.path().join("data"))?;
        let extra = extra.iter().map(|s| s.as_ref().to_string()).collect();
        WardServer::start_in(self.bin.clone(), tmp, extra)
    }

    /// (Re)starts the process on the same data dir.
    pub fn spawn(&mut self, listen: &str) -> anyhow::Result<()> {
        let mut child = Command::new(&self.bin)
            .args([
                "server",
                "--output",
                "json",
                "--listen",
                listen,
                "--data-dir",
            ])
            .arg(&self.data_dir)
            .args(&self.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("WARD_TEST_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawning ward server")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut addr = None;
        let mut fp = None;
        while addr.is_none() || fp.is_none() {
            let line = lines
                .next()
                .ok_or_else(|| anyhow!("ward server exited before it was ready"))??;
            let v: Value =
                serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
            match v["event"].as_str() {
                Some("listening") => addr = v["addr"].as_str().map(String::from),
                Some("root_fingerprint") => fp = v["fingerprint"].as_str().map(String::from),
                Some("dashboard") => self.ui_url = v["url"].as_str().map(String::from),
                _ => {}
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        self.addr = addr.unwrap_or_default();
        self.url = format!("https://{}", self.addr);
        self.fingerprint = fp.unwrap_or_default();
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    pub fn bundle_path(&self) -> PathBuf {
        self.data_dir.join("bundle.pem")
    }

    /// Runs the `ward` CLI against this server (`--data-dir`), JSON output.
    pub fn cli(&self, args: &[&str]) -> Output {
        ward(
            &self.bin,
            &[
                &[
                    "--output",
                    "json",
                    "--data-dir",
                    self.data_dir.to_str().unwrap_or_default(),
                ],
                args,
            ]
            .concat(),
        )
    }

    /// Like [`WardServer::cli`], but fails unless the command succeeds, and
    /// parses its JSON output.
    pub fn cli_json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let out = self.cli(args);
        if !out.status.success() {
            bail!(
                "ward {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout)
            .with_context(|| format!("ward {args:?}: {}", String::from_utf8_lossy(&out.stdout)))
    }

    /// A gRPC client that trusts this server by its root fingerprint,
    /// optionally presenting a client certificate.
    pub async fn grpc(
        &self,
        client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> anyhow::Result<IdentityClient<Channel>> {
        let trust = ControlPlaneTrust::fingerprint(&self.fingerprint).map_err(|e| anyhow!(e))?;
        grpc_client(&self.addr, trust, client_cert).await
    }

    /// An HTTPS client that trusts this server by its root fingerprint.
    pub fn https(&self) -> anyhow::Result<reqwest::Client> {
        self.https_with_cert(None)
    }

    /// Like [`WardServer::https`], presenting a client certificate.
    pub fn https_with_cert(
        &self,
        client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    ) -> anyhow::Result<reqwest::Client> {
        let trust = ControlPlaneTrust::fingerprint(&self.fingerprint).map_err(|e| anyhow!(e))?;
        let tls = ward_tls::client_config(trust, client_cert, &[b"http/1.1"])?;
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()?)
    }

    /// `ward cert issue --spiffe-id ID` (with `extra` flags), loaded.
    pub fn issue(&self, spiffe_id: &str, extra: &[&str]) -> anyhow::Result<Issued> {
        let dir = tempfile::tempdir()?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("cert.key"));
        let path = |p: &Path| p.to_str().map(String::from).ok_or_else(|| anyhow!("path"));
        let (cert_arg, key_arg) = (path(&cert)?, path(&key)?);
        let args = [
            &[
                "cert",
                "issue",
                "--spiffe-id",
                spiffe_id,
                "--out-cert",
                &cert_arg,
                "--out-key",
                &key_arg,
            ],
            extra,
        ]
        .concat();
        let out = self.cli_json(&args)?;
        Ok(Issued {
            chain: chain_from_pem(&std::fs::read_to_string(&cert)?)?,
            key: key_from_pem(&std::fs::read_to_string(&key)?)?,
            out,
        })
    }

    /// Registers an OAuth2 client `name` of `service` authenticating with
    /// `client_secret_basic` (`extra`: more `ward client create` flags)
    /// and returns its secret.
    pub fn secret_client(
        &self,
        name: &str,
        service: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let args = [
            &[
                "client",
                "create",
                name,
                "--service",
                service,
                "--auth",
                "client_secret_basic",
            ],
            extra,
        ]
        .concat();
        let v = self.cli_json(&args)?;
        v["client_secret"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("no client_secret in {v}"))
    }

    /// An access token by `client_credentials` with `client_secret_basic`;
    /// `form` adds parameters such as `scope` and `audience`.
    pub async fn token(
        &self,
        client: &str,
        secret: &str,
        form: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let form = [&[("grant_type", "client_credentials")], form].concat();
        let v: Value = self
            .https()?
            .post(format!("{}/oauth2/token", self.url))
            .basic_auth(client, Some(secret))
            .form(&form)
            .send()
            .await?
            .json()
            .await?;
        v["access_token"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| anyhow!("no access_token in {v}"))
    }
}

impl Drop for WardServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs the `ward` binary with `args`.
pub fn ward(bin: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("running ward")
}

/// A gRPC client for `addr` over TLS 1.3 (h2), verifying the server with
/// `trust`.
pub async fn grpc_client(
    addr: &str,
    trust: ControlPlaneTrust,
    client_cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> anyhow::Result<IdentityClient<Channel>> {
    let tls = ward_tls::client_config(trust, client_cert, &[b"h2"])?;
    Ok(IdentityClient::new(ward_api::connect(addr, tls).await?))
}

/// Parses a PEM private key.
pub fn key_from_pem(pem: &str) -> anyhow::Result<PrivateKeyDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    Ok(PrivateKeyDer::from_pem_slice(pem.as_bytes())?)
}

/// Parses a PEM chain.
pub fn chain_from_pem(pem: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    Ok(ward_ca::parse_pem_certs(pem.as_bytes())
        .map_err(|e| anyhow!(e))?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

/// A long-running `ward` process (proxy, sample app) that announces itself
/// with a JSON line on stdout.
pub struct Proc {
    pub child: Child,
    /// The first JSON line it printed.
    pub ready: Value,
    /// Its stderr lines, when started with [`Proc::spawn_logged`].
    log: Option<std::sync::Arc<std::sync::Mutex<Vec<String>>>>,
}

impl Proc {
    /// Starts `bin args…` and waits for its JSON ready line.
    pub fn spawn(bin: &Path, args: &[&str]) -> anyhow::Result<Proc> {
        let filter = std::env::var("WARD_TEST_LOG").unwrap_or_else(|_| "warn".into());
        Self::start(bin, args, &filter, false)
    }

    /// Like [`Proc::spawn`], with `RUST_LOG=filter` and its stderr kept
    /// for [`Proc::log`].
    pub fn spawn_logged(bin: &Path, args: &[&str], filter: &str) -> anyhow::Result<Proc> {
        Self::start(bin, args, filter, true)
    }

    /// The stderr lines so far (empty unless started with
    /// [`Proc::spawn_logged`]).
    pub fn log(&self) -> Vec<String> {
        self.log
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    fn start(bin: &Path, args: &[&str], filter: &str, keep_log: bool) -> anyhow::Result<Proc> {
        let mut child = Command::new(bin)
            .args(args)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(if keep_log {
                Stdio::piped()
            } else {
                Stdio::inherit()
            })
            .spawn()
            .context("spawning ward")?;
        let log = child.stderr.take().map(|stderr| {
            let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    sink.lock().unwrap_or_else(|e| e.into_inner()).push(line);
                }
            });
            log
        });
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let ready = loop {
            let line = lines
                .next()
                .ok_or_else(|| anyhow!("ward {args:?} exited before it was ready"))??;
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                if v.get("event").is_some() {
                    break v;
                }
            }
        };
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Ok(Proc { child, ready, log })
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends a signal (`kill`'s argument, e.g. `-STOP`); true if sent.
    pub fn signal(&self, sig: &str) -> bool {
        Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Waits for exit, at most `timeout`.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns true, at most `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
