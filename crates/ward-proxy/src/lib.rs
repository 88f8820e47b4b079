//! `ward proxy`: the sidecar. It gives an unmodified app mTLS in and out,
//! identity-based authorization, and certificate rotation.
//!
//! - Inbound: TLS 1.3 with a required, verified client certificate; the
//!   authorization policy decides per request (HTTP) or per connection
//!   (TCP); allowed traffic reaches the app on loopback with the caller's
//!   identity in `x-ward-peer-id` and `x-forwarded-client-cert`.
//! - Outbound: each upstream port takes plaintext from the app and carries
//!   it over mTLS to a sidecar of the target service, whose SPIFFE ID must
//!   be exactly that service's. HTTP/2 requests are multiplexed over
//!   pooled HTTP/2 connections between sidecars, HTTP/1.1 exchanges over
//!   shared `ward-mux/2` connections; TCP gets a connection of its own.
//! - The control plane's watch stream brings the bundle, revocations,
//!   endpoints and policies; the certificate is renewed at half-life. When
//!   the control plane is down the sidecar keeps serving with what it has.
#![allow(missing_docs)]

/// Implements `AsyncWrite` for a wrapper that only changes how its `io`
/// field is read: every write goes straight through.
macro_rules! write_through {
    ($ty:ident) => {
        impl<W: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $ty<W> {
            fn poll_write(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_flush(cx)
            }

            fn poll_shutdown(
                mut self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
            }
        }
    };
}

mod abuse;
mod admin;
mod authn;
mod config;
mod gated;
mod h1conn;
mod identity;
mod inbound;
mod metrics;
mod mux;
mod outbound;
mod strict_h1;
mod transport;
mod upgrade;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use ward_api::v1::WatchResponse;
use ward_identity::{SpiffeId, TrustDomain};
use ward_policy::{DefaultAction, PolicySet};
use ward_tls::{MeshTls, Trust};

pub use config::{Protocol, ProxyConfig, Standalone, Upstream};
use identity::{Current, StateDir};

/// ALPN protocols between sidecars.
pub(crate) const ALPN_H2: &[u8] = b"h2";
pub(crate) const ALPN_TCP: &[u8] = b"ward-tcp/1";

/// State shared by every listener.
pub(crate) struct Shared {
    pub cfg: Arc<ProxyConfig>,
    pub id: SpiffeId,
    pub td: TrustDomain,
    pub tls: Arc<MeshTls>,
    pub svid: Current,
    pub policies: ArcSwap<PolicySet>,
    /// Bumped whenever policies or trust change: open TCP connections are
    /// judged again.
    pub policy_version: watch::Sender<u64>,
    /// Trusted token issuers for this service.
    pub authn: ArcSwap<authn::Authn>,
    pub key_caches: std::sync::Mutex<authn::KeyCaches>,
    /// The policy inputs of the last watch message (documents, default,
    /// issuer, JWKS): the next message recompiles only if they differ.
    pub applied: std::sync::Mutex<Option<PolicyInputs>>,
    /// Revoked access-token ids, from the watch stream.
    pub revoked_tokens: ward_jwt::tower::RevocationList,
    /// SPIFFE ID → sidecar addresses.
    pub endpoints: ArcSwap<HashMap<String, Vec<String>>>,
    pub configured: AtomicBool,
    pub connected: AtomicBool,
    pub metrics: metrics::Metrics,
    pub shutdown: watch::Sender<bool>,
    pub inbound_port: u16,
    /// Bumped on every certificate renewal: outbound pools opened with an
    /// older certificate are retired, so peers see the new one.
    pub generation: std::sync::atomic::AtomicU64,
}

impl Shared {
    pub(crate) fn ready(&self) -> bool {
        let svid = self.svid.get();
        self.configured.load(Ordering::Relaxed)
            && svid.not_after > ward_ca::now().unix_timestamp()
            && !self.tls.trust().bundle.is_empty()
    }
}

/// A sidecar with its listeners bound.
pub struct Proxy {
    shared: Arc<Shared>,
    inbound: TcpListener,
    upstreams: Vec<(Upstream, TcpListener)>,
    admin: Option<TcpListener>,
    advertise: String,
}

/// Addresses the sidecar bound (useful with port 0).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bound {
    pub spiffe_id: String,
    pub inbound: SocketAddr,
    pub advertise: String,
    pub admin: Option<SocketAddr>,
    pub upstreams: HashMap<String, SocketAddr>,
}

impl Proxy {
    /// Gets an identity (state dir, or join token), then binds every port.
    pub async fn build(cfg: ProxyConfig, join_token: Option<String>) -> anyhow::Result<Proxy> {
        let state = cfg.state_dir.clone().map(StateDir);
        let saved = match &cfg.standalone {
            Some(f) => Some(identity::load_files(&f.cert, &f.key, &f.bundle)?),
            None => state.as_ref().and_then(StateDir::load),
        };
        let svid = match saved {
            Some(s) => {
                tracing::info!(
                    serial = s.serial,
                    "using the certificate saved in the state dir"
                );
                s
            }
            None => {
                let token = join_token.ok_or_else(|| {
                    anyhow!("no valid certificate in the state dir and no join token: pass --join-token (create one with `ward join-token create --service {}`)", cfg.service)
                })?;
                // The trust domain is learnt from the server's bundle; the
                // ID requested must be the token's, which the server checks.
                let td = discover_trust_domain(&cfg).await?;
                let id = SpiffeId::for_service(&td, &cfg.namespace, &cfg.service)?;
                let s = identity::request_svid(&cfg.server, &cfg.trust, &id, Some(&token), None)
                    .await?;
                if let Some(st) = &state {
                    st.save(&s)?;
                }
                s
            }
        };
        let leaf = svid.chain.first().ok_or_else(|| anyhow!("empty chain"))?;
        let peer = ward_tls::peer_identity(Some(std::slice::from_ref(leaf)))
            .ok_or_else(|| anyhow!("the certificate is not an X509-SVID"))?;
        let id = peer.id;
        let td = id.trust_domain();
        let trust = Trust {
            bundle: svid.bundle.clone(),
            revoked: Default::default(),
            trust_domain: td.to_string(),
        };
        let tls = MeshTls::new(svid.chain.clone(), svid.key(), trust)?;

        let inbound = TcpListener::bind(cfg.inbound)
            .await
            .with_context(|| format!("binding --inbound {}", cfg.inbound))?;
        let inbound_addr = inbound.local_addr()?;
        let mut upstreams = Vec::new();
        for u in &cfg.upstreams {
            let l = TcpListener::bind(u.listen)
                .await
                .with_context(|| format!("binding --upstream {}", u.listen))?;
            upstreams.push((u.clone(), l));
        }
        let admin = match cfg.admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding --admin {a}"))?,
            ),
            None => None,
        };
        let advertise = cfg
            .advertise
            .clone()
            .unwrap_or_else(|| inbound_addr.to_string());
        let metrics = metrics::Metrics::new();
        metrics.cert_expiry.set(svid.not_after);
        let key_caches = authn::KeyCaches::new(&svid.bundle);
        let shared = Arc::new(Shared {
            id,
            td,
            tls,
            svid: Current(std::sync::Mutex::new(svid)),
            policies: ArcSwap::from_pointee(PolicySet::new(Vec::new(), DefaultAction::Deny)),
            policy_version: watch::channel(0).0,
            authn: ArcSwap::from_pointee(authn::Authn::default()),
            key_caches: std::sync::Mutex::new(key_caches),
            applied: std::sync::Mutex::new(None),
            revoked_tokens: Default::default(),
            endpoints: ArcSwap::from_pointee(HashMap::new()),
            configured: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            metrics,
            shutdown: watch::channel(false).0,
            inbound_port: inbound_addr.port(),
            generation: std::sync::atomic::AtomicU64::new(0),
            cfg: Arc::new(cfg),
        });
        Ok(Proxy {
            shared,
            inbound,
            upstreams,
            admin,
            advertise,
        })
    }

    /// What was bound.
    pub fn bound(&self) -> anyhow::Result<Bound> {
        Ok(Bound {
            spiffe_id: self.shared.id.to_string(),
            inbound: self.inbound.local_addr()?,
            advertise: self.advertise.clone(),
            admin: self.admin.as_ref().map(|a| a.local_addr()).transpose()?,
            upstreams: self
                .upstreams
                .iter()
                .map(|(u, l)| Ok((format!("{}.{}", u.service, u.namespace), l.local_addr()?)))
                .collect::<anyhow::Result<_>>()?,
        })
    }

    /// Serves until SIGTERM/SIGINT or `POST /shutdown`, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let Proxy {
            shared,
            inbound,
            upstreams,
            admin,
            advertise,
        } = self;
        tracing::info!(config = %serde_json::to_string(&*shared.cfg).unwrap_or_default(), id = %shared.id, "sidecar starting");
        if shared.cfg.standalone.is_some() {
            tokio::spawn(files_loop(shared.clone()));
        } else {
            tokio::spawn(control_loop(shared.clone(), advertise));
            tokio::spawn(renew_loop(shared.clone()));
        }
        let conns = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(inbound::serve(
            shared.clone(),
            inbound,
            conns.clone(),
        )));
        for (u, l) in upstreams {
            tasks.push(tokio::spawn(outbound::serve(
                shared.clone(),
                u,
                l,
                conns.clone(),
            )));
        }
        if let Some(a) = admin {
            tokio::spawn(admin::serve(shared.clone(), a));
        }
        let mut stop = shared.shutdown.subscribe();
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = crate::stopped(&mut stop) => {}
        }
        tracing::info!("shutting down: no new connections, draining in-flight requests");
        let _ = shared.shutdown.send(true);
        for t in tasks {
            let _ = t.await;
        }
        // Every connection task holds a permit; all permits back means drained.
        let drained = tokio::time::timeout(
            shared.cfg.drain_timeout,
            conns.acquire_many(MAX_CONNECTIONS as u32),
        )
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached with requests still in flight");
        }
        Ok(())
    }
}

/// Permits of the connection counter; every connection holds one.
pub(crate) const MAX_CONNECTIONS: usize = 1 << 20;

/// Accepts connections on `listener` until shutdown, each holding a permit
/// of `conns` (so draining can wait for them) while `handle` serves it on
/// a task of its own. Accept errors (out of descriptors) back off briefly.
pub(crate) async fn accept_loop<F, Fut>(
    shared: &Shared,
    listener: TcpListener,
    conns: Arc<tokio::sync::Semaphore>,
    direction: &'static str,
    handle: F,
) where
    F: Fn(tokio::net::TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut stop = shared.shutdown.subscribe();
    loop {
        let (tcp, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(error = %e, direction, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let Ok(permit) = conns.clone().acquire_owned().await else {
            return;
        };
        let conn = handle(tcp, remote);
        tokio::spawn(async move {
            let _permit = permit;
            conn.await;
        });
    }
}

/// Resolves once shutdown has been requested.
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// What a request's access-log line needs (start, method, path), kept
/// only when the log is on.
pub(crate) struct Access(Option<(Instant, http::Method, String)>);

impl Access {
    pub(crate) fn capture<B>(req: &http::Request<B>) -> Access {
        let on = tracing::enabled!(target: "ward::access", tracing::Level::INFO);
        Access(on.then(|| {
            (
                Instant::now(),
                req.method().clone(),
                req.uri().path().to_string(),
            )
        }))
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The server's trust domain, from the root it presents (which the
/// client already verified by fingerprint or bundle).
async fn discover_trust_domain(cfg: &ProxyConfig) -> anyhow::Result<TrustDomain> {
    let tls = ward_tls::client_config(cfg.trust.clone(), None, &[b"h2"])?;
    let tls = Arc::new(tls);
    let tcp = tokio::net::TcpStream::connect(&cfg.server)
        .await
        .with_context(|| format!("connecting to {}", cfg.server))?;
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

/// Follows the watch stream, reconnecting with backoff; keeps the last
/// configuration while the control plane is away.
async fn control_loop(shared: Arc<Shared>, advertise: String) {
    let tls_for = shared.clone();
    let tls = move || {
        let svid = tls_for.svid.get();
        ward_tls::client_config(
            tls_for.cfg.trust.clone(),
            Some((svid.chain.clone(), svid.key())),
            &[b"h2"],
        )
        .map_err(|e| e.to_string())
    };
    ward_api::follow(&shared.cfg.server, tls, &advertise, |update| match update {
        Some(msg) => {
            shared.connected.store(true, Ordering::Relaxed);
            apply(&shared, msg);
        }
        None => shared.connected.store(false, Ordering::Relaxed),
    })
    .await;
}

/// The endpoints to use after a watch message listed `received`: those,
/// and while the list is partial (the control plane has just started and
/// sidecars are still reconnecting) also those `known` before.
fn merge_endpoints(
    known: &HashMap<String, Vec<String>>,
    mut received: HashMap<String, Vec<String>>,
    partial: bool,
) -> HashMap<String, Vec<String>> {
    if partial {
        for (id, addrs) in known {
            let listed = received.entry(id.clone()).or_default();
            for a in addrs {
                if !listed.contains(a) {
                    listed.push(a.clone());
                }
            }
        }
    }
    received
}

/// What a watch message's policies are built from.
#[derive(PartialEq)]
pub(crate) struct PolicyInputs {
    documents: Vec<String>,
    default_action: String,
    issuer: String,
    jwks_json: String,
}

fn apply(shared: &Shared, msg: WatchResponse) {
    let mut trust_changed = false;
    if let Some(b) = msg.bundle {
        let trust = Trust {
            bundle: b
                .x509_authorities
                .into_iter()
                .map(rustls_pki_types::CertificateDer::from)
                .collect(),
            revoked: msg.revoked_serials.into_iter().collect(),
            trust_domain: shared.td.to_string(),
        };
        trust_changed = shared.tls.set_trust(trust);
    }
    let received = msg
        .endpoints
        .into_iter()
        .map(|e| (e.spiffe_id, e.addresses))
        .collect();
    let known = shared.endpoints.load();
    shared.endpoints.store(Arc::new(merge_endpoints(
        &known,
        received,
        msg.endpoints_partial,
    )));
    shared.revoked_tokens.set(msg.revoked_token_ids);
    let inputs = PolicyInputs {
        documents: msg.policies_json,
        default_action: msg.default_action,
        issuer: msg.issuer,
        jwks_json: msg.jwks_json,
    };
    let mut applied = shared.applied.lock().unwrap_or_else(|e| e.into_inner());
    if applied.as_ref() != Some(&inputs) {
        let mut docs = Vec::new();
        for p in &inputs.documents {
            match ward_policy::parse_document(p) {
                Ok(d) => docs.push(d),
                Err(e) => tracing::error!(error = %e, "ignoring a policy this sidecar cannot read"),
            }
        }
        let default = if inputs.default_action == "allow" {
            DefaultAction::Allow
        } else {
            DefaultAction::Deny
        };
        apply_documents(shared, docs, default, &inputs.issuer, &inputs.jwks_json);
        *applied = Some(inputs);
    } else if trust_changed {
        // Open TCP connections are judged again on a revocation.
        shared.policy_version.send_modify(|v| *v += 1);
    }
    drop(applied);
    shared.configured.store(true, Ordering::Relaxed);
    tracing::debug!(version = msg.version, "configuration updated");
}

/// Without a control plane: loads the certificate, bundle and policy file,
/// then reloads whichever changes (checked every second). A file that
/// cannot be used is reported and the previous version kept.
async fn files_loop(shared: Arc<Shared>) {
    let Some(f) = shared.cfg.standalone.clone() else {
        return;
    };
    // Endpoints and peer IDs come from each `--upstream` (the outbound
    // listener reads them from its own config; /config shows them).
    let stamp = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let mut seen_certs = (stamp(&f.cert), stamp(&f.key), stamp(&f.bundle));
    let mut seen_policy = None;
    let mut first = true;
    loop {
        let certs = (stamp(&f.cert), stamp(&f.key), stamp(&f.bundle));
        if certs != seen_certs {
            match identity::load_files(&f.cert, &f.key, &f.bundle) {
                Ok(svid) => {
                    let trust = Trust {
                        bundle: svid.bundle.clone(),
                        revoked: Default::default(),
                        trust_domain: shared.td.to_string(),
                    };
                    shared.tls.set_trust(trust);
                    match shared.tls.set_identity(svid.chain.clone(), svid.key()) {
                        Ok(()) => {
                            shared.metrics.cert_expiry.set(svid.not_after);
                            shared.svid.set(svid);
                            shared.generation.fetch_add(1, Ordering::Relaxed);
                            tracing::info!("certificate files reloaded");
                            seen_certs = certs;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "the new certificate files cannot be used; keeping the old ones")
                        }
                    }
                }
                // Files are often rewritten one after the other: try again.
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "certificate files not usable yet")
                }
            }
        }
        let policy = f.policy_file.as_deref().and_then(stamp);
        if first || policy != seen_policy {
            match load_policy_file(f.policy_file.as_deref()) {
                Ok(docs) => {
                    apply_documents(&shared, docs, f.default_action, "", "");
                    seen_policy = policy;
                    tracing::info!("policies loaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy file refused; keeping the policies in force")
                }
            }
        }
        if first {
            shared.configured.store(true, Ordering::Relaxed);
            first = false;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn load_policy_file(path: Option<&std::path::Path>) -> anyhow::Result<Vec<ward_policy::Document>> {
    let Some(p) = path else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    ward_policy::parse_documents_yaml(&text).map_err(|e| anyhow!("{}: {e}", p.display()))
}

/// Puts policy documents in force for this sidecar's service.
fn apply_documents(
    shared: &Shared,
    docs: Vec<ward_policy::Document>,
    default: DefaultAction,
    issuer: &str,
    jwks_json: &str,
) {
    let mut policies = Vec::new();
    let mut authns = Vec::new();
    for d in docs {
        match d {
            ward_policy::Document::Authorization(p) => policies.push(p),
            ward_policy::Document::Authentication(a) => authns.push(a),
        }
    }
    shared.authn.store(Arc::new(authn::Authn::build(
        &authns,
        &shared.cfg.namespace,
        &shared.cfg.service,
        issuer,
        jwks_json,
        &shared.key_caches,
    )));
    shared
        .policies
        .store(Arc::new(PolicySet::new(policies, default)));
    shared.policy_version.send_modify(|v| *v += 1);
}

/// Renews at half-life (±10 %), retrying with backoff; a renewal failure
/// never drops the current certificate.
async fn renew_loop(shared: Arc<Shared>) {
    loop {
        let current = shared.svid.get();
        tokio::time::sleep(current.renew_in()).await;
        let mut backoff = Duration::from_millis(500);
        loop {
            let current = shared.svid.get();
            match identity::request_svid(
                &shared.cfg.server,
                &shared.cfg.trust,
                &shared.id,
                None,
                Some(&current),
            )
            .await
            {
                Ok(mut new) => {
                    // The watch stream's bundle is fresher than the one in
                    // the signing response only if it has arrived.
                    let trust = shared.tls.trust();
                    if !trust.bundle.is_empty() {
                        new.bundle = trust.bundle.clone();
                    }
                    if let Err(e) = shared.tls.set_identity(new.chain.clone(), new.key()) {
                        tracing::error!(error = %e, "the renewed certificate cannot be used");
                    } else {
                        if let Some(dir) = shared.cfg.state_dir.clone() {
                            if let Err(e) = StateDir(dir).save(&new) {
                                tracing::warn!(error = %e, "could not save the renewed certificate");
                            }
                        }
                        tracing::info!(
                            serial = new.serial,
                            not_after = new.not_after,
                            "certificate renewed"
                        );
                        shared.metrics.cert_expiry.set(new.not_after);
                        shared.svid.set(new);
                        shared.generation.fetch_add(1, Ordering::Relaxed);
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "renewal failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(list: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        list.iter()
            .map(|(id, a)| (id.to_string(), a.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn a_partial_endpoint_list_adds_to_what_was_known() {
        let known = eps(&[("pay", &["a:1", "b:1"]), ("cart", &["c:1"])]);
        // Just after a control plane restart only some sidecars are back.
        let back = eps(&[("pay", &["b:1", "d:1"])]);
        let merged = merge_endpoints(&known, back.clone(), true);
        assert_eq!(
            merged,
            eps(&[("pay", &["b:1", "d:1", "a:1"]), ("cart", &["c:1"])])
        );
        // A complete list replaces.
        assert_eq!(merge_endpoints(&merged, back.clone(), false), back);
    }
}
