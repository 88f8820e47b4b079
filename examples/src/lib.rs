//! What the example services and client share: loading a workload's
//! certificate files, TLS from ward-tls, the issuer's keys and revocation
//! feed, and an HTTPS accept loop that hands the verified peer to the
//! application.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use ward_jwt::tower::{PeerCertificate, RevocationList};
use ward_jwt::JwksCache;
use ward_tls::{ControlPlaneTrust, MeshTls, Trust};

/// A workload's files, as `ward cert issue --out-cert svid.pem --out-key
/// svid.key --out-bundle bundle.pem` writes them.
#[derive(Clone)]
pub struct Workload {
    /// Certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// Private key.
    pub key: Arc<PrivateKeyDer<'static>>,
    /// The trust bundle (ward's CA certificates).
    pub bundle: Vec<CertificateDer<'static>>,
    /// This workload's SPIFFE ID.
    pub id: String,
    /// The trust domain.
    pub trust_domain: String,
}

fn certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(ward_ca::parse_pem_certs(&pem)
        .map_err(|e| anyhow!("{}: {e}", path.display()))?
        .into_iter()
        .map(CertificateDer::from)
        .collect())
}

impl Workload {
    /// Reads `svid.pem`, `svid.key` and `bundle.pem` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Workload> {
        let chain = certs(&dir.join("svid.pem"))?;
        let key = PrivateKeyDer::from_pem_file(dir.join("svid.key"))
            .with_context(|| format!("reading {}", dir.join("svid.key").display()))?;
        let bundle = certs(&dir.join("bundle.pem"))?;
        let me = ward_tls::peer_identity(Some(&chain))
            .ok_or_else(|| anyhow!("svid.pem is not an X509-SVID"))?;
        Ok(Workload {
            id: me.id.to_string(),
            trust_domain: me.id.trust_domain_name().to_string(),
            chain,
            key: Arc::new(key),
            bundle,
        })
    }

    /// mTLS between workloads: TLS 1.3 only, peers verified against the
    /// bundle (chain, trust domain, revocation, SPIFFE ID).
    pub fn mesh_tls(&self) -> anyhow::Result<Arc<MeshTls>> {
        Ok(MeshTls::new(
            self.chain.clone(),
            self.key.clone_key(),
            Trust {
                bundle: self.bundle.clone(),
                revoked: Default::default(),
                trust_domain: self.trust_domain.clone(),
            },
        )?)
    }

    /// TLS to the ward server (verified by the bundle), showing this
    /// workload's certificate (for `tls_client_auth` and the watch stream).
    pub fn to_ward(&self, alpn: &[&[u8]]) -> anyhow::Result<rustls::ClientConfig> {
        Ok(ward_tls::client_config(
            ControlPlaneTrust::Bundle(self.bundle.clone()),
            Some((self.chain.clone(), self.key.clone_key())),
            alpn,
        )?)
    }

    /// An HTTPS client for the ward server.
    pub fn ward_http(&self) -> anyhow::Result<reqwest::Client> {
        Ok(reqwest::Client::builder()
            .use_preconfigured_tls(self.to_ward(&[b"http/1.1"])?)
            .build()?)
    }

    /// The issuer's signing keys, fetched from its JWKS endpoint and cached.
    pub fn issuer_keys(&self, issuer: &str) -> anyhow::Result<Arc<JwksCache>> {
        Ok(Arc::new(JwksCache::from_url(
            self.ward_http()?,
            &format!("{issuer}/oauth2/jwks"),
        )))
    }

    /// Follows ward's watch stream in the background: revoked token ids go
    /// to the returned list, and the trust bundle and revoked certificates
    /// to `tls`.
    pub fn follow_ward(&self, issuer: &str, tls: Arc<MeshTls>) -> RevocationList {
        let list = RevocationList::default();
        let (me, feed) = (self.clone(), list.clone());
        let addr = issuer.trim_start_matches("https://").to_string();
        tokio::spawn(async move {
            let td = me.trust_domain.clone();
            let to_ward = || me.to_ward(&[]).map_err(|e| e.to_string());
            ward_api::follow(&addr, to_ward, Default::default(), |update| {
                let Some(u) = update else { return };
                feed.set(u.revoked_token_ids.clone());
                if let Some(b) = &u.bundle {
                    tls.set_trust(Trust {
                        bundle: b
                            .x509_authorities
                            .iter()
                            .cloned()
                            .map(CertificateDer::from)
                            .collect(),
                        revoked: u.revoked_serials.iter().cloned().collect(),
                        trust_domain: td.clone(),
                    });
                }
            })
            .await
        });
        list
    }
}

/// The verified client of a connection, in every request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's SPIFFE ID.
    pub id: String,
}

/// Serves `app` over mTLS on `listener`. Each request carries the
/// client's [`Peer`] and [`PeerCertificate`] (for certificate-bound
/// tokens) in its extensions.
pub async fn serve_mtls(
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    app: axum::Router,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    loop {
        let (tcp, remote) = listener.accept().await?;
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(acceptor, tcp, remote, app).await {
                tracing::debug!(%remote, error = %e, "connection ended");
            }
        });
    }
}

async fn connection(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    app: axum::Router,
) -> anyhow::Result<()> {
    let stream = acceptor.accept(tcp).await?;
    // The handshake verified the chain; these only read what it accepted.
    let certs = stream.get_ref().1.peer_certificates();
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or_else(|| anyhow!("no client certificate"))?;
    let peer = Peer {
        id: ward_tls::peer_identity(certs)
            .map(|p| p.id.to_string())
            .ok_or_else(|| anyhow!("client certificate is not an X509-SVID"))?,
    };
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf);
    let mut sha = [0u8; 32];
    sha.copy_from_slice(digest.as_ref());
    tracing::debug!(%remote, peer = %peer.id, "mTLS connection");
    let app = app
        .layer(axum::Extension(peer))
        .layer(axum::Extension(PeerCertificate(sha)));
    let svc = hyper_util::service::TowerToHyperService::new(app);
    hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
        .await
        .map_err(|e| anyhow!("{e}"))
}

/// Logs to stderr (`RUST_LOG` filters).
pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
}
