//! Certificates: issuing from a CSR, listing, revoking.
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use ward_store::AuditEvent;
use ward_store::{CertQuery, CertRecord};

use super::{now, Actor, ApiError, ApiResult};
use crate::ca::CaManagerError;
use crate::state::AppState;

#[derive(Deserialize)]
pub(super) struct CertListQuery {
    spiffe_id: Option<String>,
    #[serde(default)]
    valid: bool,
    limit: Option<i64>,
}

pub(crate) fn cert_json(c: &CertRecord) -> Value {
    json!({
        "serial": c.serial,
        "spiffe_id": c.spiffe_id,
        "issuer_serial": c.issuer_serial,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "revoked_at": c.revoked_at,
        "created_at": c.created_at,
    })
}

pub(super) async fn list(
    State(s): State<Arc<AppState>>,
    Query(q): Query<CertListQuery>,
) -> ApiResult<Json<Vec<Value>>> {
    let query = CertQuery {
        spiffe_id: q.spiffe_id,
        valid_at: q.valid.then(now),
        expiring_before: None,
        limit: q.limit.unwrap_or(1000),
    };
    Ok(Json(
        s.store
            .list_certificates(&query)
            .await?
            .iter()
            .map(cert_json)
            .collect(),
    ))
}

pub(super) async fn get(
    State(s): State<Arc<AppState>>,
    Path(serial): Path<String>,
) -> ApiResult<Json<Value>> {
    let c = s
        .store
        .get_certificate(&serial.to_ascii_lowercase())
        .await?;
    let c = c.ok_or_else(|| ApiError::not_found(format!("no certificate with serial {serial}")))?;
    let mut v = cert_json(&c);
    v["pem"] = json!(ward_ca::to_pem("CERTIFICATE", &c.der));
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IssueRequest {
    /// PEM CSR.
    #[serde(default)]
    csr_pem: Option<String>,
    /// Base64 DER CSR.
    #[serde(default)]
    csr: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    /// Extra DNS or IP SANs, for servers that non-SPIFFE clients reach.
    #[serde(default)]
    dns_names: Vec<String>,
}

pub(super) async fn issue(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<IssueRequest>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let der = match (body.csr_pem, body.csr) {
        (Some(pem), None) => {
            use rustls_pki_types::pem::PemObject;
            rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
                .map_err(|e| {
                    ApiError::bad_request(format!("csr_pem is not a PEM CERTIFICATE REQUEST: {e}"))
                })?
                .as_ref()
                .to_vec()
        }
        (None, Some(b64)) => STANDARD
            .decode(b64.trim())
            .map_err(|_| ApiError::bad_request("csr is not base64"))?,
        _ => return Err(ApiError::bad_request("send exactly one of csr_pem or csr")),
    };
    let csr = ward_ca::validate_csr(&der).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let td = s.ca.trust_domain();
    if csr.spiffe_id.trust_domain_name() != td.as_str() {
        return Err(ApiError::bad_request(format!(
            "{} is not in the trust domain {td}",
            csr.spiffe_id
        )));
    }
    if csr.spiffe_id.path() == "/ward/server" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the control plane's own identity cannot be issued",
        ));
    }
    let max = Duration::from_secs(30 * 86400);
    let ttl = body.ttl_secs.map(Duration::from_secs).unwrap_or(s.svid_ttl);
    if ttl.is_zero() || ttl > max {
        return Err(ApiError::bad_request(
            "ttl must be between 1 second and 30 days",
        ));
    }
    let ev = AuditEvent::now(
        &actor.0,
        "cert.issue",
        "",
        json!({ "spiffe_id": csr.spiffe_id.as_str(), "method": "admin" }),
    );
    let (cert, chain) =
        s.ca.issue(&csr.spki, &csr.spiffe_id, &body.dns_names, ttl, None, ev)
            .await
            .map_err(|e| match e {
                CaManagerError::Store(e) => ApiError::from(e),
                CaManagerError::Ca(e) => ApiError::bad_request(e.to_string()),
                e => ApiError::from(e),
            })?;
    s.metrics.issued("admin");
    let chain_pem: String = chain
        .iter()
        .map(|c| ward_ca::to_pem("CERTIFICATE", c))
        .collect();
    let bundle_pem: String =
        s.ca.snapshot()
            .bundle
            .iter()
            .map(|c| ward_ca::to_pem("CERTIFICATE", c))
            .collect();
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "serial": cert.serial,
            "spiffe_id": cert.spiffe_id,
            "not_before": cert.not_before.unix_timestamp(),
            "not_after": cert.not_after.unix_timestamp(),
            "chain_pem": chain_pem,
            "bundle_pem": bundle_pem,
        })),
    ))
}

pub(super) async fn revoke(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path(serial): Path<String>,
) -> ApiResult<Json<Value>> {
    let serial = serial.to_ascii_lowercase();
    if s.ca.revoke(&serial, &actor.0).await? {
        return Ok(Json(json!({ "serial": serial, "revoked": true })));
    }
    match s.store.get_certificate(&serial).await? {
        Some(c) if c.revoked_at.is_some() => Ok(Json(json!({ "serial": serial, "revoked": true }))),
        _ => Err(ApiError::not_found(format!(
            "no certificate with serial {serial}"
        ))),
    }
}
