//! The JSON the dashboard's pages read: every list paged on the server,
//! so that a mesh of thousands of services and policies answers as fast
//! as a small one. Names go out as data; the pages put them in the
//! document as text, never as markup.
use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use ward_store::CertQuery;

use super::Ui;
use crate::admin::{ApiError, ApiResult};
use crate::fleet::Watcher;

/// Rows on one page of any list.
const PER_PAGE: usize = 50;

#[derive(Deserialize, Default)]
pub(super) struct PageQuery {
    /// From 1.
    #[serde(default)]
    page: Option<usize>,
    /// Keeps the rows whose name contains it (any case).
    #[serde(default)]
    q: Option<String>,
}

impl PageQuery {
    /// Whether a row is shown: one of its `fields` contains the filter,
    /// ignoring case, or there is no filter.
    fn shows(&self, fields: &[&str]) -> bool {
        let filter = self.q.as_deref().unwrap_or_default().trim().to_lowercase();
        filter.is_empty() || fields.iter().any(|f| f.to_lowercase().contains(&filter))
    }
}

/// One page of `rows` (after filtering), with what the pager needs.
fn page<T, F: Fn(&T) -> Value>(rows: &[T], q: &PageQuery, show: F) -> Value {
    let pages = rows.len().div_ceil(PER_PAGE).max(1);
    let n = q.page.unwrap_or(1).clamp(1, pages);
    let items: Vec<Value> = rows
        .iter()
        .skip((n - 1) * PER_PAGE)
        .take(PER_PAGE)
        .map(show)
        .collect();
    json!({ "total": rows.len(), "page": n, "pages": pages, "per_page": PER_PAGE, "items": items })
}

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

/// Services with their connected sidecars and agents, the CA and signing
/// keys with their next rotations, and the certificates near expiry.
pub(super) async fn overview(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    let s = &ui.state;
    let t = now();
    let services = s.store.list_services().await?;
    let shown: Vec<_> = services
        .iter()
        .filter(|r| q.shows(&[&format!("{}/{}", r.namespace, r.name)]))
        .collect();
    let watchers = s.watchers.list();
    let mut by_id: HashMap<&str, Vec<&Watcher>> = HashMap::new();
    for w in &watchers {
        by_id.entry(w.spiffe_id.as_str()).or_default().push(w);
    }
    let services_page = page(&shown, &q, |r| {
        json!({
            "namespace": r.namespace, "name": r.name, "spiffe_id": r.spiffe_id,
            "protocol": r.protocol, "created_at": r.created_at,
            "watchers": by_id.get(r.spiffe_id.as_str()).cloned().unwrap_or_default(),
        })
    });
    let ca = crate::admin::ca::show(State(s.clone())).await?.0;
    let next_ca_rotation = ca["signing"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["state"] == "active")
        .and_then(|c| {
            let (nb, na) = (c["not_before"].as_i64()?, c["not_after"].as_i64()?);
            Some(nb + (na - nb) * 3 / 4)
        });
    let keys: Vec<Value> = s
        .store
        .list_signing_keys()
        .await?
        .iter()
        .map(|k| {
            json!({
                "purpose": k.purpose, "kid": k.kid, "alg": k.alg, "state": k.state,
                "created_at": k.created_at, "retire_until": k.retire_until,
                "next_rotation": (k.state == "active").then_some(k.created_at + 24 * 3600),
            })
        })
        .collect();
    let within = (s.svid_ttl.as_secs() as i64 / 4).max(60);
    let near: Vec<Value> = s
        .store
        .list_certificates(&CertQuery {
            valid_at: Some(t),
            expiring_before: Some(t + within),
            limit: 20,
            ..Default::default()
        })
        .await?
        .iter()
        .filter(|c| c.revoked_at.is_none())
        .map(crate::admin::certificates::cert_json)
        .collect();
    Ok(Json(json!({
        "at": t,
        "trust_domain": ca["trust_domain"],
        "counts": {
            "services": services.len(),
            "sidecars": watchers.iter().filter(|w| w.kind != "agent").count(),
            "agents": watchers.iter().filter(|w| w.kind == "agent").count(),
            "policies": s.mesh.policies().len(),
        },
        "services": services_page,
        "ca": {
            "root": ca["root"],
            "signing": ca["signing"],
            "next_rotation": next_ca_rotation,
        },
        "signing_keys": keys,
        "near_expiry": near,
        "near_expiry_window_secs": within,
    })))
}

/// Who calls whom, and who is connected.
pub(super) async fn traffic(State(ui): State<Arc<Ui>>) -> Json<Value> {
    Json(crate::admin::traffic::snapshot(&ui.state))
}

fn policy_row(p: &ward_store::PolicyRecord) -> Value {
    let doc: Value = serde_json::from_str(&p.spec_json).unwrap_or_default();
    let spec = &doc["spec"];
    let applies_to = match spec["selector"]["matchLabels"].as_object() {
        _ if spec["selector"]["service"].is_string() => {
            format!(
                "service {}",
                spec["selector"]["service"].as_str().unwrap_or_default()
            )
        }
        Some(labels) if !labels.is_empty() => labels
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "every service in the namespace".to_string(),
    };
    json!({
        "namespace": p.namespace, "name": p.name, "version": p.version,
        "updated_at": p.updated_at,
        "kind": doc["kind"],
        "action": if doc["kind"] == "AuthorizationPolicy" {
            spec["action"].as_str().unwrap_or("ALLOW").into()
        } else {
            Value::Null
        },
        "applies_to": applies_to,
        "rules": spec["rules"].as_array().map_or(0, |r| r.len()),
    })
}

/// The policies in force (those the sidecars have), paged.
pub(super) async fn policies(State(ui): State<Arc<Ui>>, Query(q): Query<PageQuery>) -> Json<Value> {
    let all = ui.state.mesh.policies();
    let shown: Vec<_> = all
        .iter()
        .filter(|p| q.shows(&[&format!("{}/{}", p.namespace, p.name)]))
        .collect();
    Json(page(&shown, &q, |p| policy_row(p)))
}

/// One policy, as YAML.
pub(super) async fn policy(
    State(ui): State<Arc<Ui>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let all = ui.state.mesh.policies();
    let p = all
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no policy {ns}/{name}")))?;
    let doc: Value = serde_json::from_str(&p.spec_json).unwrap_or_default();
    let yaml = serde_yaml_ng::to_string(&doc).unwrap_or_default();
    let mut row = policy_row(p);
    row["yaml"] = json!(yaml);
    Ok(Json(row))
}

/// What-if: the same evaluation as `ward policy check`.
pub(super) async fn check(
    State(ui): State<Arc<Ui>>,
    Json(c): Json<crate::admin::policies::CheckRequest>,
) -> ApiResult<Json<Value>> {
    crate::admin::policies::check(State(ui.state.clone()), Json(c)).await
}

#[derive(Deserialize, Default)]
pub(super) struct AuditQuery {
    /// Entries older than this id (the pager's cursor); none: the newest.
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    q: Option<String>,
}

/// The audit log, newest first, a page at a time.
pub(super) async fn audit(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let filter = q.q.unwrap_or_default();
    let mut rows = ui
        .state
        .store
        .list_audit_newest(q.before.unwrap_or(0), filter.trim(), PER_PAGE as i64 + 1)
        .await?;
    let more = rows.len() > PER_PAGE;
    rows.truncate(PER_PAGE);
    let next = if more {
        rows.last().map(|r| r.id)
    } else {
        None
    };
    Ok(Json(
        json!({ "items": rows, "next_before": next, "per_page": PER_PAGE }),
    ))
}

/// OAuth clients, paged; their secrets are never stored in the clear, and
/// never shown.
pub(super) async fn clients(
    State(ui): State<Arc<Ui>>,
    Query(q): Query<PageQuery>,
) -> ApiResult<Json<Value>> {
    let all = ui.state.store.list_clients().await?;
    let shown: Vec<_> = all
        .iter()
        .filter(|c| q.shows(&[&c.client_id, &c.service_id]))
        .collect();
    Ok(Json(page(&shown, &q, |c| {
        crate::admin::clients::client_json(c)
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_bounded_and_clamped() {
        let rows: Vec<u32> = (0..120).collect();
        let q = |p| PageQuery {
            page: Some(p),
            q: None,
        };
        let v = page(&rows, &q(3), |r| json!(r));
        assert_eq!(
            (v["total"].as_u64(), v["pages"].as_u64()),
            (Some(120), Some(3))
        );
        assert_eq!(v["items"].as_array().unwrap().len(), 20);
        assert_eq!(v["items"][0], 100);
        // Past the end: the last page; before the start: the first.
        assert_eq!(page(&rows, &q(99), |r| json!(r))["page"], 3);
        assert_eq!(page(&rows, &q(0), |r| json!(r))["items"][0], 0);
        let none: Vec<u32> = Vec::new();
        assert_eq!(page(&none, &q(1), |r| json!(r))["pages"], 1);
    }

    #[test]
    fn a_row_is_shown_when_a_field_contains_the_filter_in_any_case() {
        let q = |f: Option<&str>| PageQuery {
            page: None,
            q: f.map(str::to_string),
        };
        assert!(q(None).shows(&["default/api"]));
        assert!(q(Some("  ")).shows(&["default/api"]));
        assert!(q(Some(" T/A ")).shows(&["Default/API"]));
        assert!(q(Some("web")).shows(&["cli-1", "default/web"]));
        assert!(!q(Some("web")).shows(&["cli-1", "default/api"]));
    }
}
