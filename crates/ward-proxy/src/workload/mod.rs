//! Identity for local workloads that do their own TLS: an X509-SVID with a
//! key pair of its own (never the sidecar's), the same SPIFFE ID as the
//! service, renewed at half-life; JWT-SVIDs signed by the control plane;
//! the trust domain's X.509 and JWT bundles. Served over the SPIFFE
//! Workload API on a unix socket ([`api`]) and/or kept as files in a
//! directory ([`files`]).
mod api;
mod authority;
mod files;
mod jwt;
mod socket;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::net::UnixListener;
use tokio::sync::watch;
use ward_tls::ControlPlaneTrust;

use crate::config::WorkloadConfig;
use crate::identity::{self, Svid};
use crate::state::{stopped, Shared};

/// The Workload API and files, bound and ready to run.
pub(crate) struct Workload {
    cfg: WorkloadConfig,
    listener: Option<UnixListener>,
    /// Local users that get the identity.
    uids: Vec<u32>,
}

/// What the Workload API and the file writer serve from.
pub(crate) struct Source {
    shared: Arc<Shared>,
    server: String,
    trust: ControlPlaneTrust,
    /// The workload SVID; `None` until the first one is issued.
    svid: watch::Sender<Option<Arc<Svid>>>,
    jwt: jwt::Cache,
}

impl Workload {
    /// Checks the configuration and binds the socket.
    pub(crate) async fn bind(
        shared: &Arc<Shared>,
        cfg: WorkloadConfig,
    ) -> anyhow::Result<Workload> {
        if shared.cfg.mode.control_plane().is_none() {
            bail!("--workload-api and --write-dir need a control plane (--server) to issue workload certificates");
        }
        let uids = if cfg.uids.is_empty() {
            vec![socket::own_uid()?]
        } else {
            cfg.uids.clone()
        };
        let listener = match &cfg.socket {
            Some(path) => Some(socket::bind(path)?),
            None => None,
        };
        shared.workload_expiry.store(0, Ordering::Relaxed);
        Ok(Workload {
            cfg,
            listener,
            uids,
        })
    }

    pub(crate) fn socket_path(&self) -> Option<PathBuf> {
        self.listener.as_ref().and(self.cfg.socket.clone())
    }

    /// Issues and renews the workload SVID, serves the Workload API and
    /// keeps the files until the sidecar stops.
    pub(crate) async fn run(self, shared: Arc<Shared>) {
        let Some((server, trust)) = shared.cfg.mode.control_plane() else {
            return;
        };
        let source = Arc::new(Source {
            server: server.to_string(),
            trust: trust.clone(),
            svid: watch::channel(None).0,
            jwt: jwt::Cache::default(),
            shared: shared.clone(),
        });
        tokio::spawn(renew_loop(source.clone()));
        if let Some(dir) = self.cfg.write_dir.clone() {
            tokio::spawn(files::keep(source.clone(), dir, self.cfg.on_change.clone()));
        }
        if let Some(listener) = self.listener {
            let path = self.cfg.socket.clone();
            api::serve(source, listener, self.uids).await;
            if let Some(p) = path {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

impl Source {
    /// The current workload SVID with the freshest bundle the sidecar
    /// has (the watch stream's, which follows CA rotation).
    fn current(&self) -> Option<Arc<Svid>> {
        let svid = self.svid.borrow().clone()?;
        let trust = self.shared.tls.trust();
        if trust.bundle.is_empty() || trust.bundle == svid.bundle {
            return Some(svid);
        }
        let mut fresh = (*svid).clone();
        fresh.bundle = trust.bundle.clone();
        Some(Arc::new(fresh))
    }

    /// Notifications of changes to the workload SVID and the trust bundles.
    fn changes(&self) -> Changes {
        Changes {
            svid: self.svid.subscribe(),
            trust: self.shared.trust_version.subscribe(),
        }
    }
}

/// Change notifications of the workload SVID and the trust bundles.
pub(crate) struct Changes {
    svid: watch::Receiver<Option<Arc<Svid>>>,
    trust: watch::Receiver<u64>,
}

impl Changes {
    /// Waits for the next change; `false` once the sources are gone.
    async fn next(&mut self) -> bool {
        tokio::select! {
            r = self.svid.changed() => r.is_ok(),
            r = self.trust.changed() => r.is_ok(),
        }
    }
}

/// Issues the workload SVID (a new key pair, signed through the sidecar's
/// own certificate) and renews it at half-life ±10 %, retrying with
/// backoff; a failed renewal keeps the current one.
async fn renew_loop(source: Arc<Source>) {
    let shared = &source.shared;
    let mut stop = shared.shutdown.subscribe();
    loop {
        let mut backoff =
            ward_api::Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let svid = loop {
            let current = shared.svid.get();
            match identity::request_svid(
                &source.server,
                &source.trust,
                &shared.id,
                None,
                Some(&current),
            )
            .await
            {
                Ok(s) => break s,
                Err(e) => {
                    let pause = backoff.pause(identity::retry_hint(&e));
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?pause, "workload certificate not issued; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = stopped(&mut stop) => return,
                    }
                }
            }
        };
        tracing::info!(
            serial = svid.serial,
            not_after = svid.not_after,
            "workload certificate issued"
        );
        shared
            .workload_expiry
            .store(svid.not_after, Ordering::Relaxed);
        let wait = svid.renew_in();
        source.svid.send_replace(Some(Arc::new(svid)));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stopped(&mut stop) => return,
        }
    }
}
