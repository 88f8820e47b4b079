//! Start-up and the connection loop: one TCP port, TLS 1.3, HTTP/1.1 and
//! HTTP/2 (gRPC) on the same router.
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::FutureExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rcgen::PublicKeyData;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, UnixTime};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;
use ward_api::v1::identity_server::IdentityServer;
use ward_identity::{SpiffeId, TrustDomain, DEFAULT_TRUST_DOMAIN};
use ward_store::{AuditEvent, PostgresStore, SqliteStore, Store};

use crate::ca::{CaManager, CaManagerError};
use crate::config::{Config, Database};
use crate::datadir::{random_token, DataDirFiles, DataDirLock, ServerInfo};
use crate::error::StartError;
use crate::grpc::IdentityService;
use crate::jwt_svid::JwtSvids;
use crate::metrics::Metrics;
use crate::state::{sha256, token_hash, AppState, ConnInfo, PeerAuth};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A control plane, bound and ready to serve.
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// The dashboard's port, when it has one.
    ui: Option<(TcpListener, SocketAddr)>,
    ui_session_ttl: Duration,
    state: Arc<AppState>,
    identity: Arc<ServerIdentity>,
    acceptor: TlsAcceptor,
    files: DataDirFiles,
    info: ServerInfo,
    lock: DataDirLock,
}

impl Server {
    /// Initializes the data dir if it is new, opens the store, loads the CA
    /// and binds the port.
    pub async fn build(config: Config) -> Result<Server, StartError> {
        config.validate().map_err(StartError::Config)?;
        let files = DataDirFiles::new(&config.data_dir);
        files.ensure_dir()?;
        let lock = files.lock()?;
        let (kek_raw, _) = files.secret_file(&files.kek(), || {
            ward_ca::Kek::generate()
                .map(|(_, raw)| raw.to_vec())
                .unwrap_or_default()
        })?;
        let kek = ward_ca::Kek::from_bytes(&kek_raw)?;
        let oauth_kek = ward_ca::Kek::from_bytes(&kek_raw)?;
        let svid_kek = ward_ca::Kek::from_bytes(&kek_raw)?;
        let (admin_token, created) = files.secret_file(&files.admin_token(), || {
            format!("{}\n", random_token("wat_")).into_bytes()
        })?;
        let admin_token = String::from_utf8_lossy(&admin_token).trim().to_string();
        if created {
            tracing::info!(path = %files.admin_token().display(), "admin token created");
        }

        crate::error::set_database_label(config.database().label());
        let store: Arc<dyn Store> = match config.database() {
            Database::Sqlite(path) => Arc::new(SqliteStore::open(&path).await?),
            Database::Postgres(url) => Arc::new(PostgresStore::open(&url).await?),
        };
        // Followed from before anything is loaded, so that no change made by
        // another replica in between is missed.
        let changes = store.changes().await?;
        let wanted = config
            .trust_domain
            .clone()
            .unwrap_or_else(|| DEFAULT_TRUST_DOMAIN.to_string());
        let td = store.init_meta("trust_domain", &wanted).await?;
        if let Some(asked) = &config.trust_domain {
            if *asked != td {
                return Err(StartError::Config(format!(
                    "this data dir belongs to trust domain {td}, not {asked}; the trust domain is set once, at initialization"
                )));
            }
        }
        let td = TrustDomain::new(&td)
            .map_err(|e| StartError::Config(format!("stored trust domain: {e}")))?;
        let upstream = match &config.upstream_ca {
            Some((cert, key)) => {
                let c = std::fs::read_to_string(cert).map_err(|e| StartError::io(cert, e))?;
                let k = std::fs::read_to_string(key).map_err(|e| StartError::io(key, e))?;
                Some(ward_ca::CaMaterial::from_pem(&c, &k)?)
            }
            None => None,
        };
        let ca = CaManager::open(
            store.clone(),
            kek,
            td.clone(),
            config.ca_ttl,
            config.root_ttl,
            upstream,
            files.clone(),
        )
        .await
        .map_err(|e| match e {
            CaManagerError::Ca(ward_ca::CaError::Unseal) => StartError::Config(format!(
                "{}: this key-encryption key cannot open the CA keys stored in the database; \
                 every server on one database needs the same kek.key: copy it (with admin.token) \
                 from a server already using this database, or restore it from a backup",
                files.kek().display()
            )),
            e => e.into(),
        })?;

        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            StartError::Config(format!(
                "cannot listen on {}: {e} (choose another address with --listen)",
                config.listen
            ))
        })?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let ui = match config.ui_listen {
            Some(addr) => {
                let l = TcpListener::bind(addr).await.map_err(|e| {
                    StartError::Config(format!(
                        "cannot listen on {addr} for the dashboard: {e} (choose another address with --ui-listen)"
                    ))
                })?;
                let a = l
                    .local_addr()
                    .map_err(|e| StartError::Config(e.to_string()))?;
                Some((l, a))
            }
            None => None,
        };

        let oauth = crate::oauth::OAuth::open(
            store.clone(),
            oauth_kek,
            config.issuer_for(local_addr),
            config.token_ttl.as_secs().max(1) as i64,
        )
        .await?;
        let jwt_svids = Arc::new(JwtSvids::open(store.clone(), svid_kek).await?);
        let state = Arc::new(AppState {
            oauth,
            jwt_svids,
            ca: ca.clone(),
            store: store.clone(),
            admin_token_hash: token_hash(&admin_token),
            svid_ttl: config.svid_ttl,
            metrics: Metrics::new(),
            watchers: Default::default(),
            traffic: Default::default(),
            mesh: crate::mesh::Mesh::new(store.list_policies().await?, config.default_policy),
            replica: crate::shared_endpoints::replica_id(),
            shed: crate::shed::Shed::new(config.max_pending_calls),
            watch_common: Default::default(),
        });
        state.mesh.settle_after(crate::mesh::ENDPOINTS_SETTLE);
        // Other processes share the database: follow their changes and
        // share endpoints with them.
        if let Some(changes) = changes {
            crate::feed::spawn(state.clone(), changes);
            crate::shared_endpoints::spawn(state.clone());
        }
        let mut names = config.dns_names.clone();
        for ip in [Some(local_addr.ip()), ui.as_ref().map(|u| u.1.ip())]
            .into_iter()
            .flatten()
        {
            if !ip.is_unspecified() && !names.contains(&ip.to_string()) {
                names.push(ip.to_string());
            }
        }
        let identity = ServerIdentity::new(td.clone(), names)?;
        identity.renew(&state).await?;

        let tls = tls_config(identity.resolver.clone(), state.clone());
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let snap = ca.snapshot();
        let info = ServerInfo {
            url: format!("https://{local_addr}"),
            root_fingerprint: ward_ca::fingerprint(&snap.root),
            trust_domain: td.to_string(),
            pid: std::process::id(),
        };
        let json =
            serde_json::to_vec_pretty(&info).map_err(|e| StartError::Config(e.to_string()))?;
        files.write_public(&files.server_info(), &json)?;
        tracing::info!(config = %serde_json::to_string(&config).unwrap_or_default(), "configuration");
        // Every connected sidecar holds a descriptor (`ward status` says
        // how many the limit leaves room for).
        match ward_http::raise_open_files() {
            Ok(limit) => tracing::info!(limit, "open-file limit"),
            Err(e) => tracing::warn!(error = %e, "the open-file limit could not be raised"),
        }
        Ok(Server {
            listener,
            local_addr,
            ui,
            ui_session_ttl: config.ui_session_ttl,
            state,
            identity,
            acceptor,
            files,
            info,
            lock,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The dashboard's bound address, if it has a port.
    pub fn ui_addr(&self) -> Option<SocketAddr> {
        self.ui.as_ref().map(|u| u.1)
    }

    /// `sha256:<hex>` of the root certificate.
    pub fn root_fingerprint(&self) -> &str {
        &self.info.root_fingerprint
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &str {
        &self.info.trust_domain
    }

    /// The data dir's files.
    pub fn files(&self) -> &DataDirFiles {
        &self.files
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) -> Result<(), StartError> {
        let Server {
            listener,
            ui,
            ui_session_ttl,
            state,
            identity,
            acceptor,
            files,
            info,
            lock,
            ..
        } = self;
        spawn_maintenance(state.clone(), identity);
        let grpc = tonic::service::Routes::new(IdentityServer::new(IdentityService {
            state: state.clone(),
        }));
        let router = crate::admin::routes()
            .with_state(state.clone())
            .merge(grpc.into_axum_router())
            .fallback(crate::admin::not_found);
        // Outside the router, so that it runs before routing and fallback:
        // an unauthenticated caller cannot probe which paths exist.
        let router = tower::ServiceBuilder::new()
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::admin::require_admin,
            ))
            .service(router);

        let shutdown = ward_http::shutdown_signal();
        tokio::pin!(shutdown);
        let ui = ui.map(|(listener, _)| {
            let router = crate::ui::routes(state.clone(), ui_session_ttl);
            tokio::spawn(accept_loop(
                listener,
                acceptor.clone(),
                state.clone(),
                router,
                std::future::pending(),
            ))
        });
        accept_loop(listener, acceptor, state, router, &mut shutdown).await;
        if let Some(ui) = ui {
            ui.abort();
        }
        tracing::info!("shutting down");
        // Local clients find no server rather than a dead port; the lock
        // goes last, so a successor never sees its own file removed.
        files.remove_server_info(info.pid);
        drop(lock);
        Ok(())
    }
}

/// What [`accept_loop`] serves on every connection: an axum router or
/// a service stacked on one.
trait Router:
    tower::Service<
        axum::extract::Request,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> Router for S where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// Accepts TLS connections on `listener` and serves `router` on each
/// (HTTP/1.1 and HTTP/2), with the caller's [`ConnInfo`] in every
/// request, until `shutdown` completes.
async fn accept_loop<S: Router>(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    state: Arc<AppState>,
    router: S,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(connection(
            tcp,
            remote,
            acceptor.clone(),
            router.clone(),
            move |certs| conn_info(&state, remote, certs),
        ));
    }
}

/// The errors a served connection ends with.
type ConnError = Box<dyn std::error::Error + Send + Sync>;

/// One accepted connection's task: the TLS handshake, then `router` over
/// HTTP/1.1 or HTTP/2 with `identify`'s [`ConnInfo`] in every request.
///
/// The two phases are two futures in turn (`then`), not one async block:
/// a block that awaits the handshake and then the connection keeps slots
/// for both, and for the stream moved between them, for as long as the
/// connection is open (7,208 bytes for a 2,792-byte connection future).
/// This way the task is the larger of the two phases.
fn connection<S: Router, F>(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    router: S,
    identify: F,
) -> impl std::future::Future<Output = ()> + Send + 'static
where
    F: FnOnce(Option<&[CertificateDer<'static>]>) -> ConnInfo + Send + 'static,
{
    handshake(tcp, remote, acceptor, router, identify)
        .then(futures_util::future::OptionFuture::from)
        .map(move |served| {
            if let Some(Err(e)) = served {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        })
}

/// The handshake phase of [`connection`]: the connection to serve once
/// the handshake is done, or `None` if it failed or timed out.
async fn handshake<S: Router, F>(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    router: S,
    identify: F,
) -> Option<impl std::future::Future<Output = Result<(), ConnError>> + Send + 'static>
where
    F: FnOnce(Option<&[CertificateDer<'static>]>) -> ConnInfo + Send + 'static,
{
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(%remote, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(%remote, "TLS handshake timed out");
            return None;
        }
    };
    let conn = identify(tls.get_ref().1.peer_certificates());
    let svc = router.map_request(move |req: hyper::Request<Incoming>| {
        let mut req = req.map(axum::body::Body::new);
        req.extensions_mut().insert(conn.clone());
        req
    });
    Some(
        ward_http::server()
            .serve_connection_with_upgrades(TokioIo::new(tls), TowerToHyperService::new(svc))
            .into_owned(),
    )
}

/// Who is calling on a connection from `remote` whose client presented
/// `certs`.
fn conn_info(
    state: &AppState,
    remote: SocketAddr,
    certs: Option<&[CertificateDer<'static>]>,
) -> ConnInfo {
    let peer = peer_auth(state, certs);
    let cert_sha256 = match (&peer, certs.and_then(|c| c.first())) {
        (PeerAuth::Verified(_), Some(leaf)) => Some(sha256(leaf)),
        _ => None,
    };
    ConnInfo {
        remote,
        peer: Arc::new(peer),
        cert_sha256,
    }
}

/// Rotation schedule and the server's own certificate, checked often
/// enough for the shortest lifetimes in use.
fn spawn_maintenance(state: Arc<AppState>, identity: Arc<ServerIdentity>) {
    let tick = (state.svid_ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(30));
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned_at: Option<tokio::time::Instant> = None;
        loop {
            interval.tick().await;
            if pruned_at.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                pruned_at = Some(tokio::time::Instant::now());
                prune(&state).await;
            }
            if let Err(e) = state.ca.reconcile(false).await {
                tracing::error!(error = %e, "CA rotation failed; will retry");
            }
            for keys in [&state.oauth.keys, &state.jwt_svids.keys] {
                if let Err(e) = keys.maintain().await {
                    tracing::error!(error = %e, "signing-key maintenance failed; will retry");
                }
            }
            if identity.due(&state) {
                if let Err(e) = identity.renew(&state).await {
                    tracing::error!(error = %e, "renewing the server certificate failed; will retry");
                }
            }
        }
    });
}

/// How often expired rows are deleted, and how long after expiry.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
const PRUNE_AFTER: Duration = Duration::from_secs(3600);

/// Deletes certificates, revoked token ids, assertion ids and join tokens
/// that expired over [`PRUNE_AFTER`] ago, so the tables stay the size of
/// the live fleet.
async fn prune(state: &AppState) {
    let before = ward_ca::now().unix_timestamp() - PRUNE_AFTER.as_secs() as i64;
    match state.store.prune_expired(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, "expired rows pruned"),
        Err(e) => tracing::warn!(error = %e, "pruning expired rows failed; will retry"),
    }
}

/// Verifies a client's chain against the current bundle, once per
/// connection, right after the handshake.
fn peer_auth(state: &AppState, chain: Option<&[CertificateDer<'static>]>) -> PeerAuth {
    let Some(chain) = chain.filter(|c| !c.is_empty()) else {
        return PeerAuth::Anonymous;
    };
    let snap = state.ca.snapshot();
    let now = UnixTime::now();
    match ward_tls::verify_svid_chain(chain, &snap.bundle, true, now) {
        Ok(p) if p.id.trust_domain_name() != snap.trust_domain.as_str() => PeerAuth::Rejected(
            format!("{} is not in trust domain {}", p.id, snap.trust_domain),
        ),
        Ok(p) if snap.revoked.contains(&p.serial) => {
            PeerAuth::Rejected(format!("certificate {} is revoked", p.serial))
        }
        Ok(p) => PeerAuth::Verified(p),
        Err(e) => PeerAuth::Rejected(e.to_string()),
    }
}

/// The bundle in force, for the handshake's client-certificate check.
struct CaBundle(Arc<AppState>);

impl ward_tls::BundleSource for CaBundle {
    fn with_bundle(&self, f: &mut dyn FnMut(&[CertificateDer<'static>])) {
        f(&self.0.ca.snapshot().bundle)
    }
}

/// TLS 1.3; a client certificate is optional (join-token bootstrap,
/// secret OAuth clients, the admin token need none) but one that is
/// presented must chain to the bundle in force, or the handshake fails.
/// Revocation and the trust domain are checked by [`peer_auth`] right
/// after it, so that a revoked caller is told why in its protocol.
fn tls_config(resolver: Arc<Resolver>, state: Arc<AppState>) -> ServerConfig {
    let provider = ward_tls::provider();
    let verifier = ward_tls::OptionalClientCert::new(Arc::new(CaBundle(state)));
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3 is supported by the aws-lc-rs provider")
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg
}

#[derive(Debug)]
struct Resolver(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// The server's own X509-SVID (`spiffe://<td>/ward/server`), renewed at
/// half-life and whenever the signing CA changes. Its chain includes the
/// root so that clients can pin the root by fingerprint.
struct ServerIdentity {
    id: SpiffeId,
    names: Vec<String>,
    key_pkcs8: Vec<u8>,
    spki: Vec<u8>,
    resolver: Arc<Resolver>,
    /// (renew at, issuing CA serial).
    schedule: std::sync::Mutex<(i64, String)>,
}

impl ServerIdentity {
    fn new(td: TrustDomain, names: Vec<String>) -> Result<Arc<ServerIdentity>, StartError> {
        let key = rcgen::KeyPair::generate().map_err(ward_ca::CaError::from)?;
        let id = SpiffeId::from_parts(&td, "/ward/server")
            .map_err(|e| StartError::Config(e.to_string()))?;
        // A throwaway self-signed certificate until `renew` runs.
        let placeholder = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .and_then(|p| p.self_signed(&key))
            .map_err(ward_ca::CaError::from)?;
        let key_pkcs8 = key.serialize_der();
        let signing_key = signing_key(&key_pkcs8)?;
        let ck = CertifiedKey::new(vec![placeholder.der().clone()], signing_key);
        Ok(Arc::new(ServerIdentity {
            id,
            names,
            spki: key.subject_public_key_info(),
            key_pkcs8,
            resolver: Arc::new(Resolver(ArcSwap::from_pointee(ck))),
            schedule: std::sync::Mutex::new((0, String::new())),
        }))
    }

    fn due(&self, state: &AppState) -> bool {
        let (renew_at, issuer) = self.schedule.lock().map(|g| g.clone()).unwrap_or_default();
        ward_ca::now().unix_timestamp() >= renew_at
            || issuer != state.ca.active().authority.serial()
    }

    async fn renew(&self, state: &AppState) -> Result<(), StartError> {
        let ev = AuditEvent::now(
            "server",
            "cert.issue",
            "",
            serde_json::json!({ "spiffe_id": self.id.as_str(), "method": "server" }),
        );
        let (cert, mut chain) = state
            .ca
            .issue(&self.spki, &self.id, &self.names, state.svid_ttl, None, ev)
            .await
            .map_err(|e| StartError::Config(format!("issuing the server certificate: {e}")))?;
        chain.push(state.ca.snapshot().root.clone());
        let ck = CertifiedKey::new(chain, signing_key(&self.key_pkcs8)?);
        self.resolver.0.store(Arc::new(ck));
        let nb = cert.not_before.unix_timestamp();
        let na = cert.not_after.unix_timestamp();
        if let Ok(mut s) = self.schedule.lock() {
            *s = (
                nb + (na - nb) / 2,
                state.ca.active().authority.serial().to_string(),
            );
        }
        Ok(())
    }
}

fn signing_key(pkcs8: &[u8]) -> Result<Arc<dyn rustls::sign::SigningKey>, StartError> {
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.to_vec()));
    ward_tls::provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| StartError::Config(format!("server key: {e}")))
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::ServerName;

    use super::*;

    /// A server acceptor with a self-signed certificate for `localhost`,
    /// and a client that trusts it.
    fn tls_pair() -> (TlsAcceptor, tokio_rustls::TlsConnector) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let server = ServerConfig::builder_with_provider(ward_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(ward_tls::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (
            TlsAcceptor::from(Arc::new(server)),
            tokio_rustls::TlsConnector::from(Arc::new(client)),
        )
    }

    fn anonymous(
        remote: SocketAddr,
    ) -> impl FnOnce(Option<&[CertificateDer<'static>]>) -> ConnInfo {
        move |_| ConnInfo {
            remote,
            peer: Arc::new(PeerAuth::Anonymous),
            cert_sha256: None,
        }
    }

    /// A connection's task is as large as the larger of its two phases,
    /// the handshake and the served connection, not their sum: it is held
    /// for as long as a sidecar's watch stream is open.
    #[tokio::test]
    async fn a_connection_task_is_the_larger_of_its_phases() {
        let (acceptor, connector) = tls_pair();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..2 {
                let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
                let name = ServerName::try_from("localhost").unwrap();
                held.push(connector.connect(name, tcp).await);
            }
            held
        });
        let router = axum::Router::new();

        let (tcp, remote) = listener.accept().await.unwrap();
        let phase1 = handshake(
            tcp,
            remote,
            acceptor.clone(),
            router.clone(),
            anonymous(remote),
        );
        let handshaking = std::mem::size_of_val(&phase1);
        let served = phase1.await.expect("the handshake completes");
        let serving = std::mem::size_of_val(&served);

        let (tcp, remote) = listener.accept().await.unwrap();
        let task = connection(tcp, remote, acceptor, router, anonymous(remote));
        let whole = std::mem::size_of_val(&task);
        tokio::spawn(task);
        for conn in client.await.unwrap() {
            conn.expect("the client's handshake completes");
        }

        assert!(serving > 1024, "the served connection is {serving} bytes");
        assert!(
            whole <= handshaking.max(serving) + 64,
            "the task is {whole} bytes for phases of {handshaking} and {serving}"
        );
    }
}
