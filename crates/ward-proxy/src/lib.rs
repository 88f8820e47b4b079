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
//! - Workloads that do their own TLS get an identity of their own (own key
//!   pair, the service's SPIFFE ID) through the SPIFFE Workload API on a
//!   unix socket and/or as files; `ward agent` is that side alone, with no
//!   data plane.
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
mod hbone;
mod http;
mod identity;
mod inbound;
mod metrics;
mod mux;
mod outbound;
mod state;
mod strict_h1;
mod traffic;
mod transport;
mod upgrade;
mod workers;
mod workload;

#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use ward_policy::{DefaultAction, PolicySet};
use ward_tls::{MeshTls, Trust};

pub use config::{
    DataPlane, Mode, PeerTransport, Protocol, ProxyConfig, Standalone, Upstream, WorkloadConfig,
};
use identity::Current;
use state::{Shared, MAX_CONNECTIONS};

/// A sidecar (or, without a data plane, an agent) with its listeners bound.
pub struct Proxy {
    shared: Arc<Shared>,
    data_plane: Option<Listeners>,
    admin: Option<TcpListener>,
    workload: Option<workload::Workload>,
}

/// The bound listeners of a data plane.
struct Listeners {
    inbound: TcpListener,
    hbone: Option<TcpListener>,
    upstreams: Vec<(Upstream, TcpListener)>,
    advertise: String,
}

/// Addresses the sidecar bound (useful with port 0).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Bound {
    pub spiffe_id: String,
    /// Absent for an agent.
    pub inbound: Option<SocketAddr>,
    /// The HBONE-only listener, when asked for.
    pub hbone: Option<SocketAddr>,
    pub advertise: String,
    pub admin: Option<SocketAddr>,
    pub upstreams: HashMap<String, SocketAddr>,
    /// The Workload API socket, when served.
    pub workload_api: Option<std::path::PathBuf>,
}

impl Proxy {
    /// Gets an identity (state dir, join token or files), then binds every
    /// port and socket. A join token in [`Mode::ControlPlane`] is used
    /// here, if the state dir holds no valid certificate, and not kept.
    pub async fn build(mut cfg: ProxyConfig) -> anyhow::Result<Proxy> {
        // A descriptor per connection, in and out.
        if let Err(e) = ward_http::raise_open_files() {
            tracing::warn!(error = %e, "the open-file limit could not be raised");
        }
        let svid = identity::obtain(&mut cfg).await?;
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

        let data_plane = match &cfg.data_plane {
            Some(dp) => Some(Listeners::bind(dp).await?),
            None => None,
        };
        let admin = match cfg.admin {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding --admin {a}"))?,
            ),
            None => None,
        };
        let metrics = metrics::Metrics::new();
        metrics.cert_expiry.set(svid.not_after);
        let key_caches = authn::KeyCaches::new(&svid.bundle);
        let inbound_port = match &data_plane {
            Some(l) => l.inbound.local_addr()?.port(),
            None => 0,
        };
        let workload_cfg = cfg.workload.clone();
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
            unregistered_upstreams: ArcSwap::from_pointee(Vec::new()),
            jwt_authorities: ArcSwap::from_pointee(state::JwtAuthorities::default()),
            trust_version: watch::channel(0).0,
            configured: AtomicBool::new(false),
            connected: AtomicBool::new(false),
            metrics,
            traffic: Default::default(),
            shutdown: watch::channel(false).0,
            inbound_port,
            generation: AtomicU64::new(0),
            workload_expiry: AtomicI64::new(-1),
            cfg: Arc::new(cfg),
        });
        let workload = match workload_cfg {
            Some(w) => Some(workload::Workload::bind(&shared, w).await?),
            None => None,
        };
        Ok(Proxy {
            shared,
            data_plane,
            admin,
            workload,
        })
    }

    /// What was bound.
    pub fn bound(&self) -> anyhow::Result<Bound> {
        let dp = self.data_plane.as_ref();
        Ok(Bound {
            spiffe_id: self.shared.id.to_string(),
            inbound: dp.map(|l| l.inbound.local_addr()).transpose()?,
            hbone: dp
                .and_then(|l| l.hbone.as_ref().map(|h| h.local_addr()))
                .transpose()?,
            advertise: dp.map(|l| l.advertise.clone()).unwrap_or_default(),
            admin: self.admin.as_ref().map(|a| a.local_addr()).transpose()?,
            upstreams: match dp {
                Some(l) => l
                    .upstreams
                    .iter()
                    .map(|(u, l)| Ok((format!("{}.{}", u.service, u.namespace), l.local_addr()?)))
                    .collect::<anyhow::Result<_>>()?,
                None => HashMap::new(),
            },
            workload_api: self.workload.as_ref().and_then(|w| w.socket_path()),
        })
    }

    /// Reports `source()`, the log lines dropped so far, as
    /// `ward_proxy_log_lines_dropped_total`.
    pub fn count_log_drops(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        self.shared.metrics.count_log_drops(source);
    }

    /// Serves until SIGTERM/SIGINT or `POST /shutdown`, then drains.
    pub async fn run(self) -> anyhow::Result<()> {
        let Proxy {
            shared,
            data_plane,
            admin,
            workload,
        } = self;
        tracing::info!(config = %serde_json::to_string(&*shared.cfg).unwrap_or_default(), id = %shared.id, "sidecar starting");
        let advertise = data_plane
            .as_ref()
            .map(|l| l.advertise.clone())
            .unwrap_or_default();
        control::spawn(&shared, advertise);
        // A connection counter per data-plane worker; every connection
        // holds one permit of its worker's.
        let n = shared
            .cfg
            .data_plane
            .as_ref()
            .map_or(1, |d| d.workers.max(1));
        let conns: Vec<_> = (0..n)
            .map(|_| Arc::new(Semaphore::new(MAX_CONNECTIONS)))
            .collect();
        let mut tasks = Vec::new();
        let (finished, _) = watch::channel(false);
        let mut threads = Vec::new();
        if let Some(l) = data_plane {
            let mut serves = l.serves(&shared, &conns).into_iter();
            tasks.extend(serves.next().into_iter().flatten().map(tokio::spawn));
            for (i, s) in serves.enumerate() {
                match workers::spawn(i + 1, s, finished.subscribe()) {
                    Ok(t) => threads.push(t),
                    Err(e) => {
                        tracing::error!(error = %e, worker = i + 1, "a data-plane worker could not start; the first worker serves its share")
                    }
                }
            }
        }
        if let Some(w) = workload {
            tasks.push(tokio::spawn(w.run(shared.clone())));
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
        let drained = tokio::time::timeout(shared.cfg.drain_timeout, async {
            for c in &conns {
                let _ = c.acquire_many(MAX_CONNECTIONS as u32).await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!("drain timeout reached with requests still in flight");
        }
        let _ = finished.send(true);
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
        })
        .await;
        Ok(())
    }
}

impl Listeners {
    /// Each worker's serving loops, one per port; `conns` are the workers'
    /// connection counters.
    fn serves(self, shared: &Arc<Shared>, conns: &[Arc<Semaphore>]) -> Vec<Vec<workers::Serve>> {
        let mut per: Vec<Vec<workers::Serve>> = conns.iter().map(|_| Vec::new()).collect();
        let mut ports = vec![(inbound::Port::Inbound, self.inbound)];
        ports.extend(self.hbone.map(|l| (inbound::Port::Hbone, l)));
        for (port, l) in ports {
            for (w, incoming) in per.iter_mut().zip(workers::split(l, conns)) {
                w.push(Box::pin(inbound::serve(shared.clone(), incoming, port)));
            }
        }
        for (u, l) in self.upstreams {
            let balancer = Arc::new(outbound::Balancer::default());
            for (w, incoming) in per.iter_mut().zip(workers::split(l, conns)) {
                w.push(Box::pin(outbound::serve(
                    shared.clone(),
                    u.clone(),
                    balancer.clone(),
                    incoming,
                )));
            }
        }
        per
    }

    async fn bind(dp: &DataPlane) -> anyhow::Result<Listeners> {
        let inbound = TcpListener::bind(dp.inbound)
            .await
            .with_context(|| format!("binding --inbound {}", dp.inbound))?;
        let hbone = match dp.hbone {
            Some(a) => Some(
                TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding --hbone {a}"))?,
            ),
            None => None,
        };
        let mut upstreams = Vec::new();
        for u in &dp.upstreams {
            let l = TcpListener::bind(u.listen)
                .await
                .with_context(|| format!("binding --upstream {}", u.listen))?;
            upstreams.push((u.clone(), l));
        }
        let advertise = match &dp.advertise {
            Some(a) => a.clone(),
            None => inbound.local_addr()?.to_string(),
        };
        Ok(Listeners {
            inbound,
            hbone,
            upstreams,
            advertise,
        })
    }
}
