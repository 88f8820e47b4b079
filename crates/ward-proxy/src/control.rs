//! Where a sidecar's configuration comes from, and how it is put in force:
//! the control plane's watch stream and certificate renewal, or, without a
//! control plane, files reloaded when they change.
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use ward_api::v1::WatchResponse;
use ward_identity::SpiffeId;
use ward_policy::{DefaultAction, PolicySet};
use ward_tls::{ControlPlaneTrust, Trust};

use crate::authn::{Authn, OwnIssuers};
use crate::config::{Mode, Standalone};
use crate::identity::{self, StateDir};
use crate::state::{JwtAuthorities, PolicyInputs, Shared};

/// Starts the loops that keep the sidecar configured: the watch stream and
/// renewal with a control plane, the file watcher without one.
pub(crate) fn spawn(shared: &Arc<Shared>, advertise: String) {
    match &shared.cfg.mode {
        Mode::Standalone(files) => {
            tokio::spawn(files_loop(shared.clone(), files.clone()));
        }
        Mode::ControlPlane {
            server,
            trust,
            report_every,
            ..
        } => {
            let (server, trust) = (server.clone(), trust.clone());
            tokio::spawn(control_loop(
                shared.clone(),
                server.clone(),
                trust.clone(),
                advertise,
                *report_every,
            ));
            tokio::spawn(renew_loop(shared.clone(), server, trust));
        }
    }
}

/// Follows the watch stream, reconnecting with backoff; keeps the last
/// configuration while the control plane is away. Reports traffic every
/// `report_every` on the stream's connection.
async fn control_loop(
    shared: Arc<Shared>,
    server: String,
    trust: ControlPlaneTrust,
    advertise: String,
    report_every: Duration,
) {
    let tls_for = shared.clone();
    let tls = move || {
        let svid = tls_for.svid.get();
        ward_tls::client_config(
            trust.clone(),
            Some((svid.chain.clone(), svid.key())),
            &[b"h2"],
        )
        .map_err(|e| e.to_string())
    };
    let instance = instance_name();
    let request = ward_api::v1::WatchRequest {
        advertise,
        upstreams: upstream_ids(&shared),
        instance: instance.clone(),
        kind: if shared.cfg.data_plane.is_some() {
            "sidecar"
        } else {
            "agent"
        }
        .into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let reporting = shared.clone();
    let report = move || ward_api::v1::TrafficReport {
        instance: instance.clone(),
        cert_not_after: reporting.svid.get().not_after,
        counts: reporting.traffic.report(),
    };
    ward_api::follow_reporting(
        &server,
        tls,
        request,
        report_every,
        report,
        |update| match update {
            Some(msg) => {
                shared.connected.store(true, Ordering::Relaxed);
                apply(&shared, msg.clone());
            }
            None => shared.connected.store(false, Ordering::Relaxed),
        },
    )
    .await;
}

/// A random name for this process among its service's replicas.
fn instance_name() -> String {
    let mut b = [0u8; 8];
    let _ = aws_lc_rs::rand::fill(&mut b);
    hex::encode(b)
}

/// The SPIFFE IDs of this sidecar's upstreams, as the control plane knows
/// services (an explicit `id=` names what its peers must present, not
/// necessarily a registered service, and is left out).
fn upstream_ids(shared: &Shared) -> Vec<String> {
    let Some(dp) = &shared.cfg.data_plane else {
        return Vec::new();
    };
    dp.upstreams
        .iter()
        .filter(|u| u.id.is_none())
        .filter_map(|u| SpiffeId::for_service(&shared.td, &u.namespace, &u.service).ok())
        .map(|id| id.to_string())
        .collect()
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
        let own = shared.svid.get();
        if trust_changed && shared.tls.trust().revoked.contains(&own.serial) {
            tracing::error!(
                serial = own.serial,
                "this sidecar's certificate is revoked: peers refuse it and it reports not ready; start it again with a new join token"
            );
        }
    }
    let jwt_changed = shared.jwt_authorities.load().json != msg.jwt_authorities_json;
    if jwt_changed {
        match ward_jwt::JwkSet::from_json(&msg.jwt_authorities_json) {
            Ok(keys) => shared.jwt_authorities.store(Arc::new(JwtAuthorities {
                json: msg.jwt_authorities_json.clone(),
                keys,
            })),
            Err(e) => {
                tracing::error!(error = %e, "ignoring JWT authorities this sidecar cannot read")
            }
        }
    }
    if trust_changed || jwt_changed {
        shared.trust_version.send_modify(|v| *v += 1);
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
    let unregistered = msg.unregistered_upstreams;
    if **shared.unregistered_upstreams.load() != unregistered {
        for id in &unregistered {
            tracing::warn!(
                upstream = %id,
                "this upstream names no registered service: its calls fail until it is registered (`ward service add`) or --upstream is corrected"
            );
        }
        shared.unregistered_upstreams.store(Arc::new(unregistered));
    }
    let inputs = PolicyInputs {
        documents: msg.policies_json,
        default_action: msg.default_action,
        issuer: msg.issuer,
        jwks_json: msg.jwks_json,
        jwt_authorities_json: msg.jwt_authorities_json,
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
        let svid_issuer = format!("spiffe://{}", shared.td);
        let own = OwnIssuers {
            ward_issuer: &inputs.issuer,
            ward_jwks: &inputs.jwks_json,
            svid_issuer: &svid_issuer,
            svid_jwks: &inputs.jwt_authorities_json,
        };
        apply_documents(shared, docs, default, &own);
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
async fn files_loop(shared: Arc<Shared>, f: Standalone) {
    // Endpoints and peer IDs come from each `--upstream` (the outbound
    // listener reads them from its own config; /config shows them).
    let stamp = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
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
                    apply_documents(&shared, docs, f.default_action, &OwnIssuers::default());
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

fn load_policy_file(path: Option<&Path>) -> anyhow::Result<Vec<ward_policy::Document>> {
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
    own: &OwnIssuers<'_>,
) {
    let mut policies = Vec::new();
    let mut authns = Vec::new();
    for d in docs {
        match d {
            ward_policy::Document::Authorization(p) => policies.push(p),
            ward_policy::Document::Authentication(a) => authns.push(a),
        }
    }
    shared.authn.store(Arc::new(Authn::build(
        &authns,
        &shared.cfg.namespace,
        &shared.cfg.service,
        own,
        &shared.key_caches,
    )));
    shared
        .policies
        .store(Arc::new(PolicySet::new(policies, default)));
    shared.policy_version.send_modify(|v| *v += 1);
}

/// Renews at half-life (±10 %), retrying with jittered backoff that
/// honours the server's retry hint when it sheds load; a renewal failure
/// never drops the current certificate.
async fn renew_loop(shared: Arc<Shared>, server: String, trust: ControlPlaneTrust) {
    loop {
        let current = shared.svid.get();
        tokio::time::sleep(current.renew_in()).await;
        let mut backoff =
            ward_api::Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
        loop {
            let current = shared.svid.get();
            match identity::request_svid(&server, &trust, &shared.id, None, Some(&current)).await {
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
                    let pause = backoff.pause(identity::retry_hint(&e));
                    tracing::warn!(error = %format!("{e:#}"), retry_in = ?pause, "renewal failed; retrying");
                    tokio::time::sleep(pause).await;
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
