//! This workload's X509-SVID: bought with a join token (or loaded from the
//! state dir), renewed at half-life with jitter over mTLS, the key never
//! leaving this process and its state dir.
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use rcgen::{CertificateParams, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ward_api::v1::identity_client::IdentityClient;
use ward_api::v1::SignCertificateRequest;
use ward_identity::{SpiffeId, TrustDomain};
use ward_tls::ControlPlaneTrust;

use crate::config::{Mode, ProxyConfig};
use x509_parser::prelude::{FromDer, X509Certificate};

/// A certificate chain with its key and validity.
#[derive(Clone)]
pub(crate) struct Svid {
    pub chain: Vec<CertificateDer<'static>>,
    pub key_pkcs8: Vec<u8>,
    pub bundle: Vec<CertificateDer<'static>>,
    pub serial: String,
    pub not_before: i64,
    pub not_after: i64,
}

impl Svid {
    pub(crate) fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_pkcs8.clone()))
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key_pkcs8: Vec<u8>,
        bundle: Vec<CertificateDer<'static>>,
    ) -> anyhow::Result<Svid> {
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow!("empty certificate chain"))?;
        let (_, parsed) =
            X509Certificate::from_der(leaf).map_err(|e| anyhow!("certificate: {e}"))?;
        Ok(Svid {
            serial: hex::encode(parsed.raw_serial()),
            not_before: parsed.validity().not_before.timestamp(),
            not_after: parsed.validity().not_after.timestamp(),
            chain,
            key_pkcs8,
            bundle,
        })
    }

    /// When to renew: half-life, ±10 % of the lifetime.
    pub(crate) fn renew_in(&self) -> Duration {
        let life = (self.not_after - self.not_before).max(1) as f64;
        let jitter = (random_unit() - 0.5) * 0.2 * life;
        let at = self.not_before as f64 + life / 2.0 + jitter;
        let now = ward_ca::now().unix_timestamp() as f64;
        Duration::from_secs_f64((at - now).max(0.0))
    }
}

fn random_unit() -> f64 {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// Files under `--state-dir`.
pub(crate) struct StateDir(pub PathBuf);

impl StateDir {
    fn paths(&self) -> (PathBuf, PathBuf, PathBuf) {
        (
            self.0.join("svid.pem"),
            self.0.join("svid.key"),
            self.0.join("bundle.pem"),
        )
    }

    /// The saved SVID, if there is one that is still valid for a while.
    pub(crate) fn load(&self) -> Option<Svid> {
        let (c, k, b) = self.paths();
        let chain = read_certs(&c).ok()?;
        let bundle = read_certs(&b).ok()?;
        let key_pem = std::fs::read(&k).ok()?;
        use rustls_pki_types::pem::PemObject;
        let key = PrivatePkcs8KeyDer::from_pem_slice(&key_pem).ok()?;
        let svid = Svid::from_parts(chain, key.secret_pkcs8_der().to_vec(), bundle).ok()?;
        (svid.not_after > ward_ca::now().unix_timestamp() + 5).then_some(svid)
    }

    pub(crate) fn save(&self, svid: &Svid) -> anyhow::Result<()> {
        std::fs::create_dir_all(&self.0)
            .with_context(|| format!("creating {}", self.0.display()))?;
        std::fs::set_permissions(&self.0, std::fs::Permissions::from_mode(0o700))?;
        write_files(&self.0, svid)
    }
}

/// Writes `svid.key` (PKCS#8 PEM, 0600), `svid.pem` (the chain, leaf
/// first) and `bundle.pem` into `dir` (made 0700 if missing), each
/// replaced atomically.
pub(crate) fn write_files(dir: &Path, svid: &Svid) -> anyhow::Result<()> {
    if !dir.exists() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let (c, k, b) = StateDir(dir.to_path_buf()).paths();
    write_atomic(
        &k,
        ward_ca::to_pem("PRIVATE KEY", &svid.key_pkcs8).as_bytes(),
        0o600,
    )?;
    let chain: String = svid
        .chain
        .iter()
        .map(|c| ward_ca::to_pem("CERTIFICATE", c))
        .collect();
    write_atomic(&c, chain.as_bytes(), 0o644)?;
    let bundle: String = svid
        .bundle
        .iter()
        .map(|c| ward_ca::to_pem("CERTIFICATE", c))
        .collect();
    write_atomic(&b, bundle.as_bytes(), 0o644)
}

/// An SVID from files written by something else (`--cert`, `--key`,
/// `--trust-bundle`).
pub(crate) fn load_files(cert: &Path, key: &Path, bundle: &Path) -> anyhow::Result<Svid> {
    let chain = read_certs(cert).with_context(|| format!("reading {}", cert.display()))?;
    let leaf = X509Certificate::from_der(&chain[0])
        .map_err(|e| anyhow!("{}: not a certificate: {e}", cert.display()))?
        .1;
    ward_identity::validate_leaf(&leaf)
        .map_err(|e| anyhow!("{} is not an X509-SVID: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
    let key_pkcs8 =
        ward_ca::parse_pem_key(&key_pem).map_err(|e| anyhow!("{}: {e}", key.display()))?;
    let bundle = read_certs(bundle).with_context(|| format!("reading {}", bundle.display()))?;
    if bundle.is_empty() {
        bail!("the trust bundle has no certificates");
    }
    Svid::from_parts(chain, key_pkcs8, bundle)
}

fn read_certs(p: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let raw = std::fs::read(p)?;
    Ok(ward_ca::parse_pem_certs(&raw)
        .map_err(|e| anyhow!(e))?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// Asks the control plane to sign a new key for `id`, authenticating with
/// `token` or, when absent, with `current` over mTLS.
pub(crate) async fn request_svid(
    server: &str,
    trust: &ControlPlaneTrust,
    id: &SpiffeId,
    token: Option<&str>,
    current: Option<&Svid>,
) -> anyhow::Result<Svid> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.as_str().try_into()?)];
    let csr = params.serialize_request(&key)?.der().to_vec();
    let client_cert = current.map(|s| (s.chain.clone(), s.key()));
    let tls = ward_tls::client_config(trust.clone(), client_cert, &[b"h2"])?;
    let channel = ward_api::connect(server, tls)
        .await
        .with_context(|| format!("connecting to the ward server at {server}"))?;
    let resp = IdentityClient::new(channel)
        .sign_certificate(SignCertificateRequest {
            csr,
            join_token: token.unwrap_or_default().to_string(),
        })
        .await
        .map_err(|s| {
            anyhow::Error::new(ward_api::Refused::from(s))
                .context("the ward server refused to sign")
        })?
        .into_inner();
    if resp.spiffe_id != id.as_str() {
        bail!("the server issued {} instead of {id}", resp.spiffe_id);
    }
    let chain = resp
        .cert_chain
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let bundle = resp
        .trust_bundle
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    Svid::from_parts(chain, key.serialize_der(), bundle)
}

/// The server's retry hint in a failed [`request_svid`], if it shed load.
pub(crate) fn retry_hint(e: &anyhow::Error) -> Option<std::time::Duration> {
    e.downcast_ref::<ward_api::Refused>()
        .and_then(|r| r.retry_in)
}

/// The server's trust domain, from the root it presents (which the
/// client already verified by fingerprint or bundle).
pub(crate) async fn discover_trust_domain(
    server: &str,
    trust: &ControlPlaneTrust,
) -> anyhow::Result<TrustDomain> {
    let tls = ward_tls::client_config(trust.clone(), None, &[b"h2"])?;
    let tls = std::sync::Arc::new(tls);
    let tcp = ward_api::connect_tcp(server)
        .await
        .with_context(|| format!("connecting to {server}"))?;
    let name = rustls_pki_types::ServerName::try_from("ward-server")?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .context("TLS to the ward server")?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first().cloned())
        .ok_or_else(|| anyhow!("no server certificate"))?;
    let peer = ward_tls::peer_identity(Some(&[leaf]))
        .ok_or_else(|| anyhow!("the server certificate is not an X509-SVID"))?;
    Ok(peer.id.trust_domain())
}

/// The sidecar's own SVID at start: from the files (standalone), the
/// state dir, or bought with the join token (which is taken out of `cfg`
/// and not kept).
pub(crate) async fn obtain(cfg: &mut ProxyConfig) -> anyhow::Result<Svid> {
    let state = cfg.state_dir.clone().map(StateDir);
    match &mut cfg.mode {
        Mode::Standalone(f) => {
            let s = load_files(&f.cert, &f.key, &f.bundle)?;
            tracing::info!(serial = s.serial, cert = %f.cert.display(), "certificate files loaded");
            Ok(s)
        }
        Mode::ControlPlane {
            server,
            trust,
            join_token,
            ..
        } => {
            let token = join_token.take();
            if let Some(s) = state.as_ref().and_then(StateDir::load) {
                tracing::info!(
                    serial = s.serial,
                    "using the certificate saved in the state dir"
                );
                return Ok(s);
            }
            let token = token.ok_or_else(|| match &state {
                Some(st) => anyhow!("no valid certificate in the state dir {} and no join token: pass --join-token (create one with `ward join-token create --service {}`)", st.0.display(), cfg.service),
                None => anyhow!("no join token: pass --join-token (create one with `ward join-token create --service {}`), and --state-dir to keep the certificate across restarts", cfg.service),
            })?;
            // The trust domain is learnt from the server's bundle; the ID
            // requested must be the token's, which the server checks.
            let td = discover_trust_domain(server, trust).await?;
            let id = SpiffeId::for_service(&td, &cfg.namespace, &cfg.service)?;
            // A server that sheds load says when to come back; anything
            // else (a used token, a wrong pin) is final.
            let mut backoff = ward_api::Backoff::new(
                std::time::Duration::from_millis(200),
                std::time::Duration::from_secs(10),
            );
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(120);
            let s = loop {
                match request_svid(server, trust, &id, Some(&token), None).await {
                    Ok(s) => break s,
                    Err(e) => match retry_hint(&e) {
                        Some(hint) if std::time::Instant::now() < give_up => {
                            let pause = backoff.pause(Some(hint));
                            tracing::info!(error = %format!("{e:#}"), retry_in = ?pause, "control plane busy; asking again");
                            tokio::time::sleep(pause).await;
                        }
                        _ => return Err(e),
                    },
                }
            };
            if let Some(st) = &state {
                st.save(&s)?;
            }
            Ok(s)
        }
    }
}

/// The current SVID, shared by the renewal loop and the control client.
pub(crate) struct Current(pub Mutex<Svid>);

impl Current {
    pub(crate) fn get(&self) -> Svid {
        self.0
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
    pub(crate) fn set(&self, svid: Svid) {
        match self.0.lock() {
            Ok(mut g) => *g = svid,
            Err(p) => *p.into_inner() = svid,
        }
    }
}
