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

#[macro_use]
mod macros;

mod abuse;
mod admin;
mod authn;
mod config;
mod control;
mod gated;
mod h1conn;
mod http;
mod identity;
mod inbound;
mod metrics;
mod mux;
mod outbound;
mod state;
mod strict_h1;
mod transport;
mod upgrade;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use ward_identity::SpiffeId;
use ward_policy::{DefaultAction, PolicySet};
use ward_tls::{MeshTls, Trust};

pub use config::{Mode, Protocol, ProxyConfig, Standalone, Upstream};
use identity::{Current, StateDir};
use state::{Shared, MAX_CONNECTIONS};

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
    /// A join token in [`Mode::ControlPlane`] is used here, if the state
    /// dir holds no valid certificate, and not kept.
    pub async fn build(mut cfg: ProxyConfig) -> anyhow::Result<Proxy> {
        let state = cfg.state_dir.clone().map(StateDir);
        let svid = match &mut cfg.mode {
            Mode::Standalone(f) => {
                let s = identity::load_files(&f.cert, &f.key, &f.bundle)?;
                tracing::info!(serial = s.serial, cert = %f.cert.display(), "certificate files loaded");
                s
            }
            Mode::ControlPlane {
                server,
                trust,
                join_token,
            } => {
                let token = join_token.take();
                match state.as_ref().and_then(StateDir::load) {
                    Some(s) => {
                        tracing::info!(
                            serial = s.serial,
                            "using the certificate saved in the state dir"
                        );
                        s
                    }
                    None => {
                        let token = token.ok_or_else(|| {
                            anyhow!("no valid certificate in the state dir and no join token: pass --join-token (create one with `ward join-token create --service {}`)", cfg.service)
                        })?;
                        // The trust domain is learnt from the server's
                        // bundle; the ID requested must be the token's,
                        // which the server checks.
                        let td = identity::discover_trust_domain(server, trust).await?;
                        let id = SpiffeId::for_service(&td, &cfg.namespace, &cfg.service)?;
                        let s =
                            identity::request_svid(server, trust, &id, Some(&token), None).await?;
                        if let Some(st) = &state {
                            st.save(&s)?;
                        }
                        s
                    }
                }
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
            svid: Current(Mutex::new(svid)),
            policies: ArcSwap::from_pointee(PolicySet::new(Vec::new(), DefaultAction::Deny)),
            policy_version: watch::channel(0).0,
            authn: ArcSwap::from_pointee(authn::Authn::default()),
            key_caches: Mutex::new(key_caches),
            applied: Mutex::new(None),
            revoked_tokens: Default::default(),
            endpoints: ArcSwap::from_pointee(HashMap::new()),
            configured: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            metrics,
            shutdown: watch::channel(false).0,
            inbound_port: inbound_addr.port(),
            generation: AtomicU64::new(0),
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
        control::spawn(&shared, advertise);
        let conns = Arc::new(Semaphore::new(MAX_CONNECTIONS));
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
            _ = ward_http::shutdown_signal() => {}
            _ = state::stopped(&mut stop) => {}
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
