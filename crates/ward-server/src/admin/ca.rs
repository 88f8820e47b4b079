//! The CA: what it is, rotating it, and the published trust bundle.
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Extension, Json};
use serde_json::{json, Value};
use ward_store::AuditEvent;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::{Actor, ApiResult};
use crate::state::AppState;

fn cert_summary(der: &[u8]) -> Value {
    match X509Certificate::from_der(der) {
        Ok((_, c)) => json!({
            "subject": c.subject().to_string(),
            "serial": hex::encode(c.raw_serial()),
            "not_before": c.validity().not_before.timestamp(),
            "not_after": c.validity().not_after.timestamp(),
            "fingerprint": ward_ca::fingerprint(der),
        }),
        Err(_) => json!({}),
    }
}

pub(crate) async fn show(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let snap = s.ca.snapshot();
    let cas = s.store.list_cas().await?;
    // The signing CAs of the published bundle: one just stored by a
    // rotation is shown once it is published (an instant later), so that
    // what this lists is always in the bundle clients fetch.
    let signing: Vec<Value> = cas
        .iter()
        .filter(|c| c.kind == "signing")
        .filter(|c| {
            snap.bundle
                .iter()
                .any(|b| b.as_ref() == c.cert_der.as_slice())
        })
        .map(|c| {
            let mut v = cert_summary(&c.cert_der);
            v["state"] = json!(c.state);
            v
        })
        .collect();
    let bundle_pem: String = snap
        .bundle
        .iter()
        .map(|c| ward_ca::to_pem("CERTIFICATE", c))
        .collect();
    Ok(Json(json!({
        "trust_domain": snap.trust_domain.as_str(),
        "root": cert_summary(&snap.root),
        "signing": signing,
        "bundle_sequence": snap.sequence,
        "bundle_pem": bundle_pem,
    })))
}

pub(super) async fn rotate(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Json<Value>> {
    s.ca.reconcile(true).await?;
    let active = s.ca.active();
    s.store
        .audit(&AuditEvent::now(
            &actor.0,
            "ca.rotate",
            active.authority.serial(),
            json!({}),
        ))
        .await?;
    Ok(Json(
        json!({ "active_serial": active.authority.serial(), "bundle_sequence": s.ca.snapshot().sequence }),
    ))
}

pub(super) async fn bundle_json(State(s): State<Arc<AppState>>) -> Json<Value> {
    let snap = s.ca.snapshot();
    let certs: Vec<Vec<u8>> = snap.bundle.iter().map(|c| c.to_vec()).collect();
    let mut bundle = ward_ca::spiffe_bundle_json(&certs, snap.sequence, 300);
    // The JWT-SVID authorities beside the X.509 ones, as the SPIFFE bundle
    // format has them.
    if let Some(keys) = bundle["keys"].as_array_mut() {
        keys.extend(s.jwt_svids.bundle_keys());
    }
    Json(bundle)
}

pub(super) async fn bundle_pem(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let pem: String =
        s.ca.snapshot()
            .bundle
            .iter()
            .map(|c| ward_ca::to_pem("CERTIFICATE", c))
            .collect();
    ([(header::CONTENT_TYPE, "application/x-pem-file")], pem)
}
