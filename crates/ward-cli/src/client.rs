//! Finding and talking to the control plane's admin API.
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use reqwest::{Method, StatusCode};
use rustls_pki_types::CertificateDer;
use serde_json::Value;
use ward_server::{DataDirFiles, ServerInfo};
use ward_tls::ControlPlaneTrust;

use crate::cli::Global;
use crate::output::Hinted;

/// An authenticated admin API client.
pub(crate) struct Api {
    http: reqwest::Client,
    /// The replicas, tried in order while one cannot be connected to.
    bases: Vec<String>,
    token: Option<String>,
}

fn data_dir_files(g: &Global) -> Option<DataDirFiles> {
    g.data_dir.as_deref().map(DataDirFiles::new)
}

/// The server's URL: the first of [`server_urls`].
pub(crate) fn server_url(g: &Global) -> anyhow::Result<String> {
    Ok(server_urls(g)?.swap_remove(0))
}

/// The server's URLs: --server or WARD_SERVER (one URL, or several
/// replicas comma-separated), or the data dir's server.json.
pub(crate) fn server_urls(g: &Global) -> anyhow::Result<Vec<String>> {
    if let Some(s) = &g.server {
        let urls: Vec<String> = s
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() {
            bail!("--server is empty: give a URL such as https://127.0.0.1:8443, or several comma-separated");
        }
        return Ok(urls);
    }
    if let Some(files) = data_dir_files(g) {
        let path = files.server_info();
        let raw = std::fs::read(&path).with_context(|| {
            format!(
                "reading {} (is `ward server --data-dir {}` running?)",
                path.display(),
                files.dir.display()
            )
        })?;
        let info: ServerInfo =
            serde_json::from_slice(&raw).with_context(|| format!("parsing {}", path.display()))?;
        return Ok(vec![info.url]);
    }
    bail!(
        "no server given: pass --server URL (or set WARD_SERVER), or --data-dir of a local server"
    )
}

/// How to trust the server: fingerprint, bundle file, or the data dir's bundle.
pub(crate) fn trust(g: &Global) -> anyhow::Result<ControlPlaneTrust> {
    if let Some(fp) = &g.ca_fingerprint {
        return ControlPlaneTrust::fingerprint(fp).map_err(|e| anyhow!("--ca-fingerprint: {e}"));
    }
    let path = match (&g.trust_bundle, data_dir_files(g)) {
        (Some(p), _) => p.clone(),
        (None, Some(files)) => files.bundle(),
        (None, None) => bail!(
            "no way to trust the server: pass --ca-fingerprint (printed by `ward server`), --trust-bundle FILE, or --data-dir"
        ),
    };
    Ok(ControlPlaneTrust::Bundle(read_bundle(&path)?))
}

pub(crate) fn read_bundle(path: &PathBuf) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let raw =
        std::fs::read(path).with_context(|| format!("reading trust bundle {}", path.display()))?;
    let certs = ward_ca::parse_pem_certs(&raw).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    Ok(certs.into_iter().map(CertificateDer::from).collect())
}

fn admin_token(g: &Global) -> anyhow::Result<Option<String>> {
    if let Some(p) = &g.admin_token_file {
        let t = std::fs::read_to_string(p)
            .with_context(|| format!("reading admin token {}", p.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    if let Ok(t) = std::env::var("WARD_ADMIN_TOKEN") {
        return Ok(Some(t.trim().to_string()));
    }
    if let Some(files) = data_dir_files(g) {
        let p = files.admin_token();
        if let Ok(t) = std::fs::read_to_string(&p) {
            return Ok(Some(t.trim().to_string()));
        }
    }
    Ok(None)
}

impl Api {
    /// A client for the server the global flags point at.
    pub(crate) fn new(g: &Global) -> anyhow::Result<Api> {
        let bases = server_urls(g)?;
        let tls = ward_tls::client_config(trust(g)?, None, &[b"h2", b"http/1.1"])?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(std::time::Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Api {
            http,
            bases,
            token: admin_token(g)?,
        })
    }

    /// Sends a request and returns the JSON body, or an error with the
    /// server's message.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut bases = self.bases.iter().peekable();
        let resp = loop {
            let Some(base) = bases.next() else {
                bail!("no server given");
            };
            let mut req = self.http.request(method.clone(), format!("{base}{path}"));
            if let Some(t) = &self.token {
                req = req.bearer_auth(t);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => break resp,
                // Not sent: another replica can take it.
                Err(e) if e.is_connect() && bases.peek().is_some() => {
                    tracing::info!(server = %base, error = %e, "replica unreachable; trying the next");
                }
                Err(e) => return Err(unreachable(base, &e)),
            }
        };
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status.is_success() {
            if text.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_str(&text).or(Ok(Value::String(text)));
        }
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["message"].as_str().map(String::from))
            .unwrap_or(text);
        if status == StatusCode::UNAUTHORIZED {
            bail!("{message} (pass --admin-token-file, set WARD_ADMIN_TOKEN, or use --data-dir of the server)");
        }
        bail!("{message} (HTTP {})", status.as_u16())
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::GET, path, None).await
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.call(Method::POST, path, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str) -> anyhow::Result<Value> {
        self.call(Method::DELETE, path, None).await
    }
}

/// Why a request to the server at `base` got no answer, and what to do:
/// a wrong pin or trust bundle, nothing listening, no answer, or the rest.
pub(crate) fn unreachable(base: &str, e: &(dyn std::error::Error + 'static)) -> anyhow::Error {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(rustls::Error::Other(other)) = err.downcast_ref::<rustls::Error>() {
            if let Some(ward_tls::VerifyError::FingerprintMismatch {
                expected,
                presented,
            }) = other.0.downcast_ref::<ward_tls::VerifyError>()
            {
                return Hinted::error(
                    format!("the server at {base} has root fingerprint {presented}, not the expected {expected}"),
                    "check `ward ca fingerprint` on the server and pass it to --ca-fingerprint (or WARD_CA_FINGERPRINT)",
                );
            }
        }
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Hinted::error(
                format!("the server at {base} failed TLS verification: {tls}"),
                "check --ca-fingerprint or --trust-bundle against `ward ca fingerprint` on the server",
            );
        }
        let io = err.downcast_ref::<std::io::Error>();
        match io.map(std::io::Error::kind) {
            Some(std::io::ErrorKind::ConnectionRefused) => return Hinted::error(
                format!("nothing is listening at {base} (connection refused)"),
                "is `ward server` running there? check --server (or WARD_SERVER), or --data-dir",
            ),
            Some(std::io::ErrorKind::TimedOut) => {
                return Hinted::error(
                    format!("{base} did not answer in time"),
                    "check the address, and that no firewall drops the traffic",
                )
            }
            _ => {}
        }
        // io::Error hides the error it wraps from source(); look inside.
        next = match io.and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    if let Some(r) = e
        .downcast_ref::<reqwest::Error>()
        .filter(|r| r.is_timeout())
    {
        return Hinted::error(
            format!("{base} did not answer in time ({r})"),
            "check the address, and that the server is not overloaded",
        );
    }
    Hinted::error(
        format!("cannot reach the ward server at {base}: {}", error_chain(e)),
        "check --server (or WARD_SERVER) and the network path to it",
    )
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
