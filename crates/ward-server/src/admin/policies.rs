//! Policies: validation (every document, all or nothing), storage, and
//! what-if evaluation.
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};
use ward_identity::{SpiffeId, DEFAULT_NAMESPACE};
use ward_store::AuditEvent;
use ward_store::Service;

use super::{found, now, removed, Actor, ApiError, ApiResult};
use crate::state::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ApplyPolicies {
    policies: Vec<Value>,
    /// Where each policy came from ("file.yaml, document 2"), for errors.
    #[serde(default)]
    sources: Vec<String>,
}

fn policy_json(p: &ward_store::PolicyRecord) -> Value {
    json!({
        "namespace": p.namespace, "name": p.name, "version": p.version, "updated_at": p.updated_at,
        "policy": serde_json::from_str::<Value>(&p.spec_json).unwrap_or(Value::Null),
    })
}

/// Validates every policy first; stores all of them in one transaction or
/// none (a file with one bad policy changes nothing).
pub(super) async fn apply(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<ApplyPolicies>,
) -> ApiResult<Json<Value>> {
    if body.policies.is_empty() {
        return Err(ApiError::bad_request("no policies to apply"));
    }
    let services = s.store.list_services().await?;
    let existing = s.mesh.policies();
    let mut parsed = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (i, v) in body.policies.iter().enumerate() {
        let source = body
            .sources
            .get(i)
            .cloned()
            .unwrap_or_else(|| format!("policy {}", i + 1));
        let bad = |m: String| ApiError::bad_request(format!("{source}: {m}"));
        let doc = ward_policy::parse_document(&v.to_string()).map_err(|e| bad(e.to_string()))?;
        let key = doc.key();
        if !seen.insert(key.clone()) {
            return Err(bad(format!("policy {key} appears twice")));
        }
        let issuers = [
            s.oauth.issuer.clone(),
            crate::jwt_svid::issuer(s.ca.trust_domain().as_str()),
        ];
        check_enforceable(&doc, &services, &issuers, existing.as_slice()).map_err(bad)?;
        let meta = doc.metadata();
        parsed.push((meta.namespace.clone(), meta.name.clone(), doc.to_json()));
    }
    let at = now();
    let events: Vec<_> = parsed
        .iter()
        .map(|(ns, name, json)| {
            AuditEvent::now(
                &actor.0,
                "policy.apply",
                &format!("{ns}/{name}"),
                json!({ "policy": serde_json::from_str::<Value>(json).unwrap_or_default() }),
            )
        })
        .collect();
    let stored = s.store.apply_policies(&parsed, at, &events).await?;
    s.mesh.set_policies(s.store.list_policies().await?);
    Ok(Json(
        json!({ "applied": stored.iter().map(policy_json).collect::<Vec<_>>() }),
    ))
}

/// What only the server can check about a valid document: that every
/// service it applies to can enforce it, that its key source exists, and
/// that its name is not taken by a document of the other kind.
fn check_enforceable(
    doc: &ward_policy::Document,
    services: &[Service],
    own_issuers: &[String; 2],
    existing: &[ward_store::PolicyRecord],
) -> Result<(), String> {
    let meta = doc.metadata();
    if let Some(other) = existing
        .iter()
        .find(|p| p.namespace == meta.namespace && p.name == meta.name)
    {
        let theirs = ward_policy::parse_document(&other.spec_json)
            .map(|d| d.kind())
            .unwrap_or_default();
        if theirs != doc.kind() {
            return Err(format!(
                "a {theirs} named {}/{} exists; names are unique across kinds",
                meta.namespace, meta.name
            ));
        }
    }
    match doc {
        ward_policy::Document::Authorization(p) => {
            if !p.uses_http_fields() {
                return Ok(());
            }
            let tcp = services.iter().find(|svc| {
                svc.protocol == "tcp"
                    && svc.namespace == meta.namespace
                    && doc.selector().is_none_or(|sel| sel.service == svc.name)
            });
            if let Some(svc) = tcp {
                return Err(format!(
                    "spec.rules: HTTP fields (methods, paths, hosts, requestPrincipals, \
                     request.* conditions) cannot be enforced on {}/{}, a TCP service; \
                     use source, ports and source/destination conditions only{}",
                    svc.namespace,
                    svc.name,
                    if doc.selector().is_none() {
                        ", or select HTTP services"
                    } else {
                        ""
                    }
                ));
            }
            Ok(())
        }
        ward_policy::Document::Authentication(a) => {
            for (i, r) in a.spec.jwt_rules.iter().enumerate() {
                if r.jwks.is_none() && r.jwks_uri.is_none() && !own_issuers.contains(&r.issuer) {
                    let [oauth, svid] = own_issuers;
                    return Err(format!(
                        "spec.jwtRules[{i}]: give jwks or jwksUri for issuer {:?} \
                         (only this server's own issuers need neither: {oauth:?} for \
                         access tokens, {svid:?} for JWT-SVIDs)",
                        r.issuer
                    ));
                }
                let [oauth, _] = own_issuers;
                if r.issuer == *oauth
                    && r.token_type
                        .iter()
                        .any(|t| !t.eq_ignore_ascii_case("at+jwt"))
                {
                    return Err(format!(
                        "spec.jwtRules[{i}].tokenType: this server's access tokens are always typ at+jwt (RFC 9068); drop tokenType for issuer {oauth:?}"
                    ));
                }
            }
            Ok(())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckRequest {
    /// The caller's SPIFFE ID (or `ns/<ns>/sa/<name>` shorthand in the
    /// server's trust domain); absent: a caller without a certificate.
    #[serde(default)]
    from: Option<String>,
    /// The target service, `name` or `namespace/name`.
    to: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    source_ip: Option<std::net::IpAddr>,
    /// Absent: a TCP connection.
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    headers: Vec<(String, String)>,
    /// Claims of a validated bearer token.
    #[serde(default)]
    claims: Option<serde_json::Map<String, Value>>,
    /// The JOSE `typ` of that token, checked against `tokenType`.
    #[serde(default)]
    token_type: Option<String>,
}

/// What-if evaluation with the policies in force: the decision, the
/// deciding policy and rule, and every dry-run or AUDIT policy that
/// matched. The sidecar runs the same evaluator on the same policies.
pub(crate) async fn check(
    State(s): State<Arc<AppState>>,
    Json(c): Json<CheckRequest>,
) -> ApiResult<Json<Value>> {
    let services = s.store.list_services().await?;
    let (ns, svc) = c.to.split_once('/').unwrap_or((DEFAULT_NAMESPACE, &c.to));
    if !services.iter().any(|r| r.namespace == ns && r.name == svc) {
        return Err(ApiError::not_found(format!(
            "--to {}: no service {ns}/{svc} is registered (`ward service list` shows them)",
            c.to
        )));
    }
    let caller = c
        .from
        .as_deref()
        .map(|f| resolve_caller(f, s.ca.trust_domain(), &services))
        .transpose()
        .map_err(ApiError::bad_request)?;
    if let Some(claims) = &c.claims {
        check_claims(claims).map_err(ApiError::bad_request)?;
        let iss = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some((policy, accepted)) = token_types_for(&s, ns, svc, iss).await? {
            let given = c.token_type.as_deref().unwrap_or_default();
            let given = given.strip_prefix("application/").unwrap_or(given);
            if !accepted.iter().any(|t| t.eq_ignore_ascii_case(given)) {
                return Ok(Json(json!({
                    "decision": "deny",
                    "policy": policy,
                    "rule": null,
                    "reason": "TokenType",
                    "detail": format!(
                        "{policy} accepts tokens of {iss} with typ {} only, not {}; the sidecar answers 401",
                        accepted.join(" or "),
                        if given.is_empty() { "none (pass --token-type)".to_string() } else { given.to_string() },
                    ),
                    "reported": [],
                    "request": { "from": caller.as_ref().map(|(id, _)| id.to_string()), "to": format!("{ns}/{svc}") },
                })));
            }
        }
    }
    let from = caller.as_ref().map(|(id, _)| id.to_string());
    let http_like = c.method.is_some() || c.path.is_some() || c.claims.is_some();
    let request_principal = c.claims.as_ref().map(|cl| {
        format!(
            "{}/{}",
            cl.get("iss").and_then(Value::as_str).unwrap_or_default(),
            cl.get("sub").and_then(Value::as_str).unwrap_or_default()
        )
    });
    let headers: Vec<(String, String)> = c
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
        .collect();
    let method = c
        .method
        .clone()
        .unwrap_or_else(|| "GET".into())
        .to_ascii_uppercase();
    let path = c.path.clone().unwrap_or_else(|| "/".into());
    let host = c.host.clone().unwrap_or_else(|| svc.to_string());
    let req = ward_policy::Request {
        namespace: ns,
        service: svc,
        destination_port: c.port.unwrap_or(15006),
        source_principal: from.as_deref(),
        source_ip: c.source_ip,
        http: http_like.then(|| ward_policy::HttpAttributes {
            method: &method,
            path: &path,
            host: &host,
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            request_principal: request_principal.as_deref(),
            claims: c.claims.as_ref(),
        }),
    };
    let d = s.mesh.policy_set().evaluate(&req);
    Ok(Json(json!({
        "decision": if d.allowed() { "allow" } else { "deny" },
        "policy": d.policy(),
        "rule": d.rule,
        "reason": format!("{:?}", d.reason),
        "reported": d.reported.iter().map(|m| json!({
            "policy": m.policy, "rule": m.rule,
            "action": m.action, "dry_run": m.dry_run,
        })).collect::<Vec<_>>(),
        "request": {
            "from": from,
            "from_resolved": caller.as_ref().map(|(_, how)| how),
            "to": format!("{ns}/{svc}"), "port": req.destination_port,
            "protocol": if http_like { "http" } else { "tcp" },
        },
    })))
}

/// The caller of a what-if check as a SPIFFE ID, and how it was read:
/// a SPIFFE ID as given, `ns/<namespace>/sa/<service>` in this trust
/// domain, or a registered service's `name` or `namespace/name`.
fn resolve_caller(
    from: &str,
    td: &ward_identity::TrustDomain,
    services: &[Service],
) -> Result<(SpiffeId, String), String> {
    if from.starts_with("spiffe://") {
        let id = SpiffeId::parse(from).map_err(|e| format!("--from {from:?}: {e}"))?;
        if id.is_trust_domain_id() {
            return Err(format!(
                "--from {from:?}: a trust domain, not a workload (a workload ID has a path)"
            ));
        }
        return Ok((id, "a SPIFFE ID".into()));
    }
    let parts: Vec<&str> = from.split('/').collect();
    if let ["ns", ns, "sa", sa] = parts[..] {
        let id = SpiffeId::for_service(td, ns, sa).map_err(|e| format!("--from {from:?}: {e}"))?;
        return Ok((id, format!("ns/{ns}/sa/{sa} in trust domain {td}")));
    }
    let (ns, name) = from.split_once('/').unwrap_or((DEFAULT_NAMESPACE, from));
    if let Some(svc) = services
        .iter()
        .find(|r| r.namespace == ns && r.name == name)
    {
        let id = SpiffeId::parse(&svc.spiffe_id).map_err(|e| format!("stored service: {e}"))?;
        return Ok((id, format!("registered service {ns}/{name}")));
    }
    Err(format!(
        "--from {from:?} is not a SPIFFE ID (spiffe://…), ns/<namespace>/sa/<service>, \
         or a registered service (`ward service list`)"
    ))
}

/// The `tokenType` a RequestAuthentication selecting `ns/svc` sets for
/// issuer `iss`, with the policy's name; `None` when no rule limits it.
async fn token_types_for(
    s: &AppState,
    ns: &str,
    svc: &str,
    iss: &str,
) -> ApiResult<Option<(String, Vec<String>)>> {
    for p in s.store.list_policies().await? {
        let Ok(ward_policy::Document::Authentication(a)) =
            ward_policy::parse_document(&p.spec_json)
        else {
            continue;
        };
        let selects = a.metadata.namespace == ns
            && a.spec
                .selector
                .as_ref()
                .is_none_or(|sel| sel.service == svc);
        if !selects {
            continue;
        }
        if let Some(r) = a.spec.jwt_rules.iter().find(|r| r.issuer == iss) {
            if !r.token_type.is_empty() {
                return Ok(Some((a.key(), r.token_type.clone())));
            }
        }
    }
    Ok(None)
}

/// Claims of a validated token have a string `iss` and `sub` (they make the
/// request principal), an `aud` that is a string or strings, a string
/// `scope`, and numeric times.
fn check_claims(claims: &serde_json::Map<String, Value>) -> Result<(), String> {
    for k in ["iss", "sub"] {
        match claims.get(k) {
            Some(Value::String(v)) if !v.is_empty() => {}
            Some(v) => return Err(format!("--claims: {k} must be a non-empty string, not {v}")),
            None => {
                return Err(format!(
                    "--claims: {k} is missing (a validated token has iss and sub; they make the request principal iss/sub)"
                ))
            }
        }
    }
    match claims.get("aud") {
        None | Some(Value::String(_)) => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {}
        Some(v) => {
            return Err(format!(
                "--claims: aud must be a string or an array of strings, not {v}"
            ))
        }
    }
    if let Some(v) = claims.get("scope").filter(|v| !v.is_string()) {
        return Err(format!(
            "--claims: scope must be a space-separated string, not {v}"
        ));
    }
    for k in ["exp", "nbf", "iat"] {
        if let Some(v) = claims.get(k).filter(|v| !v.is_number()) {
            return Err(format!(
                "--claims: {k} must be a number (Unix seconds), not {v}"
            ));
        }
    }
    Ok(())
}

pub(super) async fn list(State(s): State<Arc<AppState>>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(
        s.store
            .list_policies()
            .await?
            .iter()
            .map(policy_json)
            .collect(),
    ))
}

pub(super) async fn get(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let all = s.store.list_policies().await?;
    let policy = all.iter().find(|p| p.namespace == ns && p.name == name);
    found(policy.map(policy_json), || format!("policy {ns}/{name}"))
}

pub(super) async fn delete(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let target = format!("{ns}/{name}");
    let ev = AuditEvent::now(&actor.0, "policy.delete", &target, json!({}));
    let done = s.store.delete_policy(&ns, &name, &ev).await?;
    if done {
        s.mesh.set_policies(s.store.list_policies().await?);
    }
    removed(done, || format!("policy {target}"))
}
