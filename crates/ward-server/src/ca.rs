//! The CA as the server runs it: keys sealed in the store, the active
//! signing CA in memory, rotation on a schedule, and the trust snapshot
//! that the watch stream and `/bundle` publish.
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use ward_ca::rotation::{self, Action, SigningCaInfo, State};
use ward_ca::{CaMaterial, IssuedCert, Kek, SigningAuthority};
use ward_identity::{SpiffeId, TrustDomain};
use ward_store::{AuditEvent, CaRecord, CertRecord, Store, StoreError};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::datadir::{DataDirFiles, FileError};

/// What every consumer of the trust configuration sees, as one value.
#[derive(Debug)]
pub(crate) struct TrustSnapshot {
    /// Increases with every change.
    pub version: u64,
    /// SPIFFE bundle sequence number; increases when the CA set changes.
    pub sequence: u64,
    pub trust_domain: TrustDomain,
    pub root: CertificateDer<'static>,
    /// Root first, then every published signing CA (prepared, active,
    /// retired), oldest first.
    pub bundle: Vec<CertificateDer<'static>>,
    /// Revoked serials that have not expired.
    pub revoked: HashSet<String>,
}

pub(crate) struct ActiveCa {
    pub authority: SigningAuthority,
    /// Signing CA, root.
    pub chain: Vec<CertificateDer<'static>>,
}

/// Why the CA manager could not load, rotate, publish or issue.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaManagerError {
    /// Signing, key generation or sealing failed.
    #[error(transparent)]
    Ca(#[from] ward_ca::CaError),
    /// The database failed, or refused the write (a join token used up).
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// A CA the server needs is not in the database.
    #[error(
        "the database holds no {0}: restore the data dir from a backup, or start with a new one"
    )]
    Missing(&'static str),
    /// A stored CA certificate cannot be parsed.
    #[error("stored CA certificate: {0}")]
    BadCertificate(String),
    /// The data dir's root is not the `--upstream-ca-cert` given.
    #[error("this data dir was initialized with another root CA than --upstream-ca-cert; use a new data dir to change the root")]
    RootMismatch,
    /// The bundle file in the data dir could not be written.
    #[error("writing the bundle file: {0}")]
    BundleFile(#[from] FileError),
}

/// The lock replicas take turns under to change the CA set.
const CA_LOCK: &str = "ward:ca";

/// Keys and schedule, without the published state.
struct CaCore {
    td: TrustDomain,
    kek: Kek,
    store: Arc<dyn Store>,
    ca_ttl: Duration,
}

pub(crate) struct CaManager {
    core: CaCore,
    files: DataDirFiles,
    active: ArcSwap<ActiveCa>,
    snapshot: watch::Sender<Arc<TrustSnapshot>>,
    /// Held for a whole [`CaManager::publish`]: a rotation made here and
    /// the change feed's reload of it run at once, and two publishes
    /// interleaved would write the bundle file over each other.
    publishing: tokio::sync::Mutex<()>,
}

fn unix(t: time::OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn at(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn ca_record(
    kind: &str,
    state: &str,
    m: &CaMaterial,
    kek: &Kek,
) -> Result<CaRecord, CaManagerError> {
    let (_, parsed) = X509Certificate::from_der(&m.cert_der)
        .map_err(|e| CaManagerError::BadCertificate(e.to_string()))?;
    let serial = hex::encode(parsed.raw_serial());
    let key_sealed = kek.seal(format!("ca:{serial}").as_bytes(), &m.key_pkcs8)?;
    Ok(CaRecord {
        id: 0,
        kind: kind.into(),
        state: state.into(),
        serial,
        cert_der: m.cert_der.clone(),
        key_sealed,
        not_before: parsed.validity().not_before.timestamp(),
        not_after: parsed.validity().not_after.timestamp(),
        created_at: unix(ward_ca::now()),
    })
}

impl CaManager {
    /// Loads the CA from the store, creating the root on first start, and
    /// brings the signing CAs up to schedule.
    pub(crate) async fn open(
        store: Arc<dyn Store>,
        kek: Kek,
        td: TrustDomain,
        ca_ttl: Duration,
        root_ttl: Duration,
        upstream: Option<CaMaterial>,
        files: DataDirFiles,
    ) -> Result<Arc<CaManager>, CaManagerError> {
        // Replicas starting together on an empty database create one root.
        let lock = store.lock(CA_LOCK).await?;
        let cas = store.list_cas().await?;
        let root = cas.iter().find(|c| c.kind == "root");
        match (root, &upstream) {
            (None, _) => {
                let (material, origin) = match upstream {
                    Some(m) => (m, "upstream"),
                    None => (
                        CaMaterial::generate_root(&td, root_ttl, ward_ca::now())?,
                        "generated",
                    ),
                };
                let rec = ca_record("root", "active", &material, &kek)?;
                let ev = AuditEvent::now(
                    "server",
                    "ca.root.create",
                    &rec.serial,
                    serde_json::json!({ "origin": origin }),
                );
                store.insert_ca(&rec, &ev).await?;
            }
            (Some(r), Some(up)) if r.cert_der != up.cert_der => {
                return Err(CaManagerError::RootMismatch)
            }
            _ => {}
        }
        let core = CaCore {
            td,
            kek,
            store,
            ca_ttl,
        };
        core.run_schedule(false).await?;
        drop(lock);
        let (active, _) = core.load_active().await?;
        let (snapshot, _) = watch::channel(Arc::new(TrustSnapshot {
            version: 0,
            sequence: 0,
            trust_domain: core.td.clone(),
            root: CertificateDer::from(Vec::new()),
            bundle: Vec::new(),
            revoked: HashSet::new(),
        }));
        let mgr = CaManager {
            core,
            files,
            active: ArcSwap::from_pointee(active),
            snapshot,
            publishing: tokio::sync::Mutex::new(()),
        };
        mgr.publish().await?;
        Ok(Arc::new(mgr))
    }

    pub(crate) fn trust_domain(&self) -> &TrustDomain {
        &self.core.td
    }

    pub(crate) fn active(&self) -> Arc<ActiveCa> {
        self.active.load_full()
    }

    pub(crate) fn snapshot(&self) -> Arc<TrustSnapshot> {
        self.snapshot.borrow().clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<TrustSnapshot>> {
        self.snapshot.subscribe()
    }

    /// Runs the rotation schedule (or a forced rotation) until nothing is
    /// due, then republishes. Returns whether the CA set changed.
    ///
    /// Replicas sharing a database take turns (see `turns`): a rotation
    /// one made is seen by the others, not repeated.
    pub(crate) async fn reconcile(&self, forced: bool) -> Result<bool, CaManagerError> {
        let turn = crate::turns::take(self.core.store.as_ref(), CA_LOCK).await?;
        let rotate_now = forced && !turn.rotated_recently().await?;
        let changed = self.core.run_schedule(rotate_now).await?;
        if rotate_now {
            turn.rotated().await?;
        }
        if changed || forced {
            self.publish().await?;
        }
        Ok(changed)
    }

    /// Rebuilds the active CA and the trust snapshot from the store.
    pub(crate) async fn publish(&self) -> Result<(), CaManagerError> {
        let _one_at_a_time = self.publishing.lock().await;
        let (active, cas) = self.core.load_active().await?;
        let root_der = active.chain[1].clone();
        self.active.store(Arc::new(active));
        let mut bundle = vec![root_der.clone()];
        bundle.extend(
            cas.iter()
                .filter(|c| c.kind == "signing")
                .map(|c| CertificateDer::from(c.cert_der.clone())),
        );
        let now = unix(ward_ca::now());
        let revoked: HashSet<String> = self
            .core
            .store
            .revoked_serials(now)
            .await?
            .into_iter()
            .collect();

        let old = self.snapshot();
        let mut sequence = old.sequence;
        if old.bundle != bundle {
            let stored: u64 = self
                .core
                .store
                .get_meta("bundle_sequence")
                .await?
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            sequence = stored + 1;
            self.core
                .store
                .set_meta("bundle_sequence", &sequence.to_string())
                .await?;
            let pem: String = bundle
                .iter()
                .map(|c| ward_ca::to_pem("CERTIFICATE", c))
                .collect();
            self.files
                .write_public(&self.files.bundle(), pem.as_bytes())?;
        }
        self.snapshot.send_replace(Arc::new(TrustSnapshot {
            version: old.version + 1,
            sequence,
            trust_domain: self.core.td.clone(),
            root: root_der,
            bundle,
            revoked,
        }));
        Ok(())
    }

    /// Signs `spki` into an SVID for `id` with the active CA and records
    /// it, consuming one use of `consume` (a join token hash) in the same
    /// transaction. Returns the leaf and its chain (leaf, signing CA).
    pub(crate) async fn issue(
        &self,
        spki: &[u8],
        id: &SpiffeId,
        extra_names: &[String],
        ttl: Duration,
        consume: Option<&[u8]>,
        ev: AuditEvent,
    ) -> Result<(IssuedCert, Vec<CertificateDer<'static>>), CaManagerError> {
        let active = self.active();
        let now = ward_ca::now();
        let cert = active
            .authority
            .issue_svid(spki, id, extra_names, ttl, now)?;
        let record = CertRecord {
            serial: cert.serial.clone(),
            spiffe_id: id.to_string(),
            issuer_serial: active.authority.serial().to_string(),
            not_before: unix(cert.not_before),
            not_after: unix(cert.not_after),
            revoked_at: None,
            created_at: unix(now),
            der: cert.der.to_vec(),
        };
        let mut ev = ev;
        ev.target = cert.serial.clone();
        self.core
            .store
            .record_issued(&record, consume, unix(now), &ev)
            .await?;
        let chain = vec![cert.der.clone(), active.chain[0].clone()];
        Ok((cert, chain))
    }

    /// Revokes a certificate and pushes the new revocation list.
    pub(crate) async fn revoke(&self, serial: &str, actor: &str) -> Result<bool, CaManagerError> {
        let ev = AuditEvent::now(actor, "cert.revoke", serial, serde_json::json!({}));
        let done = self
            .core
            .store
            .revoke_certificate(serial, unix(ward_ca::now()), &ev)
            .await?;
        if done {
            self.publish().await?;
        }
        Ok(done)
    }
}

impl CaCore {
    /// Applies due rotation steps; returns whether anything changed.
    async fn run_schedule(&self, forced: bool) -> Result<bool, CaManagerError> {
        let mut changed = false;
        let mut force_pending = forced;
        for _ in 0..8 {
            let cas = self.store.list_cas().await?;
            let mut infos = Vec::new();
            for c in cas.iter().filter(|c| c.kind == "signing") {
                let Some(state) = State::parse(&c.state) else {
                    continue;
                };
                let last = if state == State::Retired {
                    self.store.last_leaf_not_after(&c.serial).await?
                } else {
                    None
                };
                infos.push(SigningCaInfo {
                    id: c.id,
                    state,
                    not_before: at(c.not_before),
                    not_after: at(c.not_after),
                    last_leaf_not_after: last.map(at),
                });
            }
            let action = if force_pending {
                Some(rotation::next_forced_action(&infos))
            } else {
                rotation::next_action(&infos, ward_ca::now())
            };
            let Some(action) = action else { break };
            if matches!(action, Action::Activate(_)) {
                force_pending = false;
            }
            self.apply(&cas, &infos, action).await?;
            changed = true;
        }
        Ok(changed)
    }

    async fn apply(
        &self,
        cas: &[CaRecord],
        infos: &[SigningCaInfo],
        action: Action,
    ) -> Result<(), CaManagerError> {
        match action {
            Action::Prepare => {
                let root = cas
                    .iter()
                    .find(|c| c.kind == "root")
                    .ok_or(CaManagerError::Missing("root CA"))?;
                let root_material = self.unseal(root)?;
                let generation = cas
                    .iter()
                    .filter(|c| c.kind == "signing")
                    .map(|c| c.id)
                    .max()
                    .unwrap_or(0) as u64
                    + 1;
                let m = root_material.generate_signing_ca(
                    &self.td,
                    generation,
                    self.ca_ttl,
                    ward_ca::now(),
                )?;
                let rec = ca_record("signing", State::Prepared.as_str(), &m, &self.kek)?;
                let ev = AuditEvent::now(
                    "server",
                    "ca.signing.prepare",
                    &rec.serial,
                    serde_json::json!({ "not_after": rec.not_after }),
                );
                self.store.insert_ca(&rec, &ev).await?;
            }
            Action::Activate(id) => {
                let mut states = vec![(id, State::Active.as_str().to_string())];
                for i in infos.iter().filter(|i| i.state == State::Active) {
                    states.push((i.id, State::Retired.as_str().to_string()));
                }
                let serial = cas
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| c.serial.clone())
                    .unwrap_or_default();
                let ev = AuditEvent::now(
                    "server",
                    "ca.signing.activate",
                    &serial,
                    serde_json::json!({}),
                );
                self.store.update_cas(&states, &[], &ev).await?;
                tracing::info!(serial, "signing CA activated");
            }
            Action::Drop(id) => {
                let serial = cas
                    .iter()
                    .find(|c| c.id == id)
                    .map(|c| c.serial.clone())
                    .unwrap_or_default();
                let ev =
                    AuditEvent::now("server", "ca.signing.drop", &serial, serde_json::json!({}));
                self.store.update_cas(&[], &[id], &ev).await?;
            }
        }
        Ok(())
    }

    fn unseal(&self, rec: &CaRecord) -> Result<CaMaterial, CaManagerError> {
        let key = self
            .kek
            .open(format!("ca:{}", rec.serial).as_bytes(), &rec.key_sealed)?;
        Ok(CaMaterial {
            cert_der: rec.cert_der.clone(),
            key_pkcs8: key,
        })
    }

    /// The active signing CA and every stored CA.
    async fn load_active(&self) -> Result<(ActiveCa, Vec<CaRecord>), CaManagerError> {
        let cas = self.store.list_cas().await?;
        let root = cas
            .iter()
            .find(|c| c.kind == "root")
            .ok_or(CaManagerError::Missing("root CA"))?;
        let active = cas
            .iter()
            .find(|c| c.kind == "signing" && c.state == State::Active.as_str())
            .ok_or(CaManagerError::Missing("active signing CA"))?;
        let authority = SigningAuthority::new(&self.unseal(active)?)?;
        let chain = vec![
            CertificateDer::from(active.cert_der.clone()),
            CertificateDer::from(root.cert_der.clone()),
        ];
        Ok((ActiveCa { authority, chain }, cas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ward_store::SqliteStore;

    // A rotation made through one replica reaches its own change feed as
    // well, so the admin call's publish and the feed's run together; on
    // a server's worker threads they must not trip over each other.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publishes_at_the_same_time_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&dir.path().join("ward.db"))
                .await
                .unwrap(),
        );
        let (kek, _) = Kek::generate().unwrap();
        let mgr = CaManager::open(
            store,
            kek,
            TrustDomain::new("ward.internal").unwrap(),
            Duration::from_secs(3600),
            Duration::from_secs(86400),
            None,
            DataDirFiles::new(dir.path()),
        )
        .await
        .unwrap();
        let before = mgr.snapshot().sequence;
        for round in 0..10 {
            mgr.core.run_schedule(true).await.unwrap();
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let mgr = mgr.clone();
                    tokio::spawn(async move { mgr.publish().await })
                })
                .collect();
            for t in tasks {
                t.await
                    .unwrap()
                    .unwrap_or_else(|e| panic!("round {round}: {e}"));
            }
        }
        let after = mgr.snapshot();
        assert_eq!(after.sequence, before + 10, "one sequence per CA change");
        let pem = std::fs::read_to_string(dir.path().join("bundle.pem")).unwrap();
        assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), after.bundle.len());
    }
}
