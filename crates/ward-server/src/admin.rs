//! The admin REST API under `/api/v1/`, and the public HTTP endpoints.
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use ward_identity::{SpiffeId, DEFAULT_NAMESPACE};
use ward_store::{CertQuery, CertRecord, JoinToken, Service, StoreError};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::ca::{audit, IssueError};
use crate::datadir::random_token;
use crate::state::{token_hash, AppState, ConnInfo, PeerAuth};

/// An error as the API returns it: status and `{"error": code, "message": …}`.
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.code, "message": self.message })),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Conflict(what) => ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("{what} already exists"),
            ),
            e => {
                tracing::error!(error = %e, "storage error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "storage error; see the server log",
                )
            }
        }
    }
}

impl From<crate::error::StartError> for ApiError {
    fn from(e: crate::error::StartError) -> ApiError {
        tracing::error!(error = %e, "CA error");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "CA error; see the server log",
        )
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// Who made an admin request, for the audit log.
#[derive(Clone, Debug)]
pub(crate) struct Actor(pub String);

/// Authenticates every request under `/api/`, before routing, so that an
/// unauthenticated caller learns nothing about which paths or resources
/// exist: bearer admin token, or an admin client certificate
/// (`spiffe://<td>/ward/admin`).
pub(crate) async fn require_admin(
    State(state): State<Arc<AppState>>,
    mut req: Request,
    next: Next,
) -> Response {
    if !req.uri().path().starts_with("/api/") {
        return next.run(req).await;
    }
    let bearer = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let mut actor = None;
    if let Some(token) = bearer {
        if verify_slices_are_equal(&token_hash(token), &state.admin_token_hash).is_ok() {
            actor = Some("admin".to_string());
        }
    }
    if actor.is_none() {
        if let Some(conn) = req.extensions().get::<ConnInfo>() {
            if let PeerAuth::Verified(p) = &*conn.peer {
                let admin = format!("spiffe://{}/ward/admin", state.ca.trust_domain());
                if p.id.as_str() == admin && !state.ca.snapshot().revoked.contains(&p.serial) {
                    actor = Some(admin);
                }
            }
        }
    }
    match actor {
        Some(a) => {
            req.extensions_mut().insert(Actor(a));
            next.run(req).await
        }
        None => {
            state.metrics.admin_unauthorized.inc();
            let remote = req
                .extensions()
                .get::<ConnInfo>()
                .map(|c| c.remote.to_string())
                .unwrap_or_default();
            tracing::info!(%remote, path = req.uri().path(), "admin request without valid credentials");
            let mut resp = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "admin credentials required: send `Authorization: Bearer <admin token>` (the token is in <data-dir>/admin.token)",
            )
            .into_response();
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ward\""),
            );
            resp
        }
    }
}

pub(crate) fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/v1/services", get(list_services).post(add_service))
        .route(
            "/api/v1/services/{namespace}/{name}",
            get(get_service).delete(remove_service),
        )
        .route("/api/v1/join-tokens", post(create_join_token))
        .route(
            "/api/v1/certificates",
            get(list_certificates).post(issue_certificate),
        )
        .route("/api/v1/certificates/{serial}", get(get_certificate))
        .route(
            "/api/v1/certificates/{serial}/revoke",
            post(revoke_certificate),
        )
        .route("/api/v1/policies", get(list_policies))
        // A mesh-wide apply can carry thousands of documents; only an
        // authenticated admin gets this far.
        .route(
            "/api/v1/policies/apply",
            post(apply_policies).layer(axum::extract::DefaultBodyLimit::max(64 << 20)),
        )
        .route("/api/v1/policies/check", post(check_policy))
        .route(
            "/api/v1/policies/{namespace}/{name}",
            get(get_policy).delete(delete_policy),
        )
        .route("/api/v1/clients", get(list_clients).post(create_client))
        .route(
            "/api/v1/clients/{id}",
            get(get_client).delete(delete_client),
        )
        .route("/api/v1/signing-keys", get(list_signing_keys))
        .route("/api/v1/signing-keys/rotate", post(rotate_signing_key))
        .route("/oauth2/token", post(crate::oauth::token))
        .route("/oauth2/introspect", post(crate::oauth::introspect))
        .route("/oauth2/revoke", post(crate::oauth::revoke))
        .route("/oauth2/jwks", get(crate::oauth::jwks))
        .route(
            "/.well-known/oauth-authorization-server",
            get(crate::oauth::metadata),
        )
        .route("/api/v1/audit", get(list_audit))
        .route("/api/v1/ca", get(show_ca))
        .route("/api/v1/ca/rotate", post(rotate_ca))
        .route("/api/v1/status", get(status))
        .route("/bundle", get(bundle_json))
        .route("/bundle.pem", get(bundle_pem))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// Unknown paths: gRPC callers get UNIMPLEMENTED, everyone else a JSON 404.
pub(crate) async fn not_found(req: Request) -> Response {
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        return tonic::Status::unimplemented(format!("no such method {}", req.uri().path()))
            .into_http();
    }
    ApiError::not_found(format!("no such endpoint {}", req.uri().path())).into_response()
}

fn now() -> i64 {
    ward_ca::now().unix_timestamp()
}

// ---- services ----

/// What to tell a caller who names a service that is not registered.
pub(crate) fn not_registered(ns: &str, name: &str) -> String {
    format!("service {ns}/{name} is not registered: add it with `ward service add {name} --namespace {ns}`")
}

/// The registered service `ns/name`, or 404 saying how to register it.
async fn registered_service(s: &AppState, ns: &str, name: &str) -> ApiResult<Service> {
    s.store
        .get_service(ns, name)
        .await?
        .ok_or_else(|| ApiError::not_found(not_registered(ns, name)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddService {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    /// `http` (default) or `tcp`.
    #[serde(default)]
    protocol: Option<String>,
}

async fn list_services(State(s): State<Arc<AppState>>) -> ApiResult<Json<Vec<Service>>> {
    Ok(Json(s.store.list_services().await?))
}

async fn add_service(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<AddService>,
) -> ApiResult<(StatusCode, Json<Service>)> {
    let ns = body.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let id = SpiffeId::for_service(s.ca.trust_domain(), &ns, &body.name)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let protocol = body.protocol.unwrap_or_else(|| "http".into());
    if protocol != "http" && protocol != "tcp" {
        return Err(ApiError::bad_request(format!(
            "protocol {protocol:?}: use http (HTTP/1.1, HTTP/2, gRPC) or tcp"
        )));
    }
    if protocol == "tcp" {
        // A TCP service cannot enforce the HTTP policies already in force
        // for its whole namespace.
        if let Some(p) = s.mesh.policies().iter().find(|p| {
            p.namespace == ns
                && matches!(ward_policy::parse_document(&p.spec_json),
                    Ok(ward_policy::Document::Authorization(a))
                        if a.spec.selector.is_none() && a.uses_http_fields())
        }) {
            return Err(ApiError::bad_request(format!(
                "policy {}/{} applies to every service in namespace {ns} and uses HTTP fields, \
                 which a TCP service cannot enforce: give it a selector first",
                p.namespace, p.name
            )));
        }
    }
    let svc = Service {
        namespace: ns,
        name: body.name,
        spiffe_id: id.to_string(),
        created_at: now(),
        protocol,
    };
    let ev = audit(&actor.0, "service.add", id.as_str(), json!({}));
    s.store.add_service(&svc, &ev).await?;
    Ok((StatusCode::CREATED, Json(svc)))
}

async fn get_service(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Service>> {
    s.store
        .get_service(&ns, &name)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("no service {ns}/{name}")))
}

async fn remove_service(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ev = audit(
        &actor.0,
        "service.remove",
        &format!("{ns}/{name}"),
        json!({}),
    );
    if s.store.remove_service(&ns, &name, &ev).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no service {ns}/{name}")))
    }
}

// ---- join tokens ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateJoinToken {
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    ttl_secs: Option<u64>,
    #[serde(default)]
    uses: Option<u32>,
}

async fn create_join_token(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<CreateJoinToken>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ns = body.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let svc = registered_service(&s, &ns, &body.service).await?;
    let ttl = body.ttl_secs.unwrap_or(3600);
    if ttl == 0 || ttl > 30 * 86400 {
        return Err(ApiError::bad_request(
            "ttl must be between 1 second and 30 days",
        ));
    }
    let uses = body.uses.unwrap_or(1);
    if uses == 0 || uses > 10_000 {
        return Err(ApiError::bad_request("uses must be between 1 and 10000"));
    }
    let token = random_token("wjt_");
    let record = JoinToken {
        hash: token_hash(&token).to_vec(),
        namespace: ns,
        service: svc.name,
        spiffe_id: svc.spiffe_id.clone(),
        expires_at: now() + ttl as i64,
        uses_left: uses as i64,
        created_at: now(),
    };
    let ev = audit(
        &actor.0,
        "join-token.create",
        &svc.spiffe_id,
        json!({ "expires_at": record.expires_at, "uses": uses }),
    );
    s.store.create_join_token(&record, &ev).await?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({ "token": token, "spiffe_id": svc.spiffe_id, "expires_at": record.expires_at, "uses": uses }),
        ),
    ))
}

// ---- certificates ----

#[derive(Deserialize)]
struct CertListQuery {
    spiffe_id: Option<String>,
    #[serde(default)]
    valid: bool,
    limit: Option<i64>,
}

fn cert_json(c: &CertRecord) -> Value {
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

async fn list_certificates(
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

async fn get_certificate(
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
struct IssueRequest {
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

async fn issue_certificate(
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
    let ev = audit(
        &actor.0,
        "cert.issue",
        "",
        json!({ "spiffe_id": csr.spiffe_id.as_str(), "method": "admin" }),
    );
    let (cert, chain) =
        s.ca.issue(&csr.spki, &csr.spiffe_id, &body.dns_names, ttl, None, ev)
            .await
            .map_err(|e| match e {
                IssueError::Store(e) => ApiError::from(e),
                IssueError::Ca(e) => ApiError::bad_request(e.to_string()),
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

async fn revoke_certificate(
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

// ---- policies ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyPolicies {
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
async fn apply_policies(
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
        check_enforceable(&doc, &services, &s.oauth.issuer, existing.as_slice()).map_err(bad)?;
        let meta = doc.metadata();
        parsed.push((meta.namespace.clone(), meta.name.clone(), doc.to_json()));
    }
    let at = now();
    let events: Vec<_> = parsed
        .iter()
        .map(|(ns, name, json)| {
            audit(
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
    issuer: &str,
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
                if r.jwks.is_none() && r.jwks_uri.is_none() && r.issuer != issuer {
                    return Err(format!(
                        "spec.jwtRules[{i}]: give jwks or jwksUri for issuer {:?} \
                         (only this server's own issuer {issuer:?} needs neither)",
                        r.issuer
                    ));
                }
            }
            Ok(())
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
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
}

/// What-if evaluation with the policies in force: the decision, the
/// deciding policy and rule, and every dry-run or AUDIT policy that
/// matched. The sidecar runs the same evaluator on the same policies.
async fn check_policy(
    State(s): State<Arc<AppState>>,
    Json(c): Json<CheckRequest>,
) -> ApiResult<Json<Value>> {
    let (ns, svc) = c.to.split_once('/').unwrap_or((DEFAULT_NAMESPACE, &c.to));
    let from = c.from.as_deref().map(|f| {
        if f.starts_with("spiffe://") {
            f.to_string()
        } else {
            format!(
                "spiffe://{}/{}",
                s.ca.trust_domain(),
                f.trim_start_matches('/')
            )
        }
    });
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
            "from": from, "to": format!("{ns}/{svc}"), "port": req.destination_port,
            "protocol": if http_like { "http" } else { "tcp" },
        },
    })))
}

async fn list_policies(State(s): State<Arc<AppState>>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(
        s.store
            .list_policies()
            .await?
            .iter()
            .map(policy_json)
            .collect(),
    ))
}

async fn get_policy(
    State(s): State<Arc<AppState>>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let all = s.store.list_policies().await?;
    all.iter()
        .find(|p| p.namespace == ns && p.name == name)
        .map(|p| Json(policy_json(p)))
        .ok_or_else(|| ApiError::not_found(format!("no policy {ns}/{name}")))
}

async fn delete_policy(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path((ns, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let ev = audit(
        &actor.0,
        "policy.delete",
        &format!("{ns}/{name}"),
        json!({}),
    );
    if !s.store.delete_policy(&ns, &name, &ev).await? {
        return Err(ApiError::not_found(format!("no policy {ns}/{name}")));
    }
    s.mesh.set_policies(s.store.list_policies().await?);
    Ok(StatusCode::NO_CONTENT)
}

// ---- OAuth2 clients and signing keys ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateClient {
    name: String,
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    auth: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    audiences: Vec<String>,
    /// private_key_jwt: the client's public JWK set.
    #[serde(default)]
    jwks: Option<Value>,
}

fn client_json(c: &ward_store::OAuthClient) -> Value {
    json!({
        "client_id": c.client_id, "service_id": c.service_id, "auth": c.auth_method,
        "scopes": serde_json::from_str::<Value>(&c.scopes).unwrap_or_default(),
        "audiences": serde_json::from_str::<Value>(&c.audiences).unwrap_or_default(),
        "created_at": c.created_at,
    })
}

async fn create_client(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Json(body): Json<CreateClient>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let ns = body.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let svc = registered_service(&s, &ns, &body.service).await?;
    if SpiffeId::for_service(s.ca.trust_domain(), &ns, &body.name).is_err() {
        return Err(ApiError::bad_request(
            "the client name may contain letters, digits, '.', '-' and '_'",
        ));
    }
    let (secret, secret_hash, jwks) = match body.auth.as_str() {
        "client_secret_basic" | "client_secret_post" => {
            let secret = random_token("wcs_");
            let hash = s.oauth.hash_secret(&secret);
            (Some(secret), Some(hash), None)
        }
        "tls_client_auth" => (None, None, None),
        "private_key_jwt" => {
            let jwks = body.jwks.ok_or_else(|| ApiError::bad_request("private_key_jwt needs the client's public keys (jwks)"))?;
            let parsed = ward_jwt::JwkSet::from_json(&jwks.to_string()).map_err(|e| ApiError::bad_request(e.to_string()))?;
            if parsed.keys.is_empty() {
                return Err(ApiError::bad_request("the client's jwks has no usable signing key"));
            }
            (None, None, Some(jwks.to_string()))
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "auth {other:?} is not supported (tls_client_auth, private_key_jwt, client_secret_basic, client_secret_post)"
            )))
        }
    };
    let audiences = if body.audiences.is_empty() {
        vec![body.service.clone()]
    } else {
        body.audiences
    };
    let client = ward_store::OAuthClient {
        client_id: body.name,
        service_id: svc.spiffe_id,
        auth_method: body.auth,
        secret_hash,
        jwks,
        scopes: json!(body.scopes).to_string(),
        audiences: json!(audiences).to_string(),
        created_at: now(),
    };
    let ev = audit(
        &actor.0,
        "client.create",
        &client.client_id,
        json!({ "auth": client.auth_method, "service": client.service_id }),
    );
    s.store.create_client(&client, &ev).await?;
    let mut v = client_json(&client);
    if let Some(secret) = secret {
        // Shown once; only its keyed hash is stored.
        v["client_secret"] = json!(secret);
    }
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list_clients(State(s): State<Arc<AppState>>) -> ApiResult<Json<Vec<Value>>> {
    Ok(Json(
        s.store
            .list_clients()
            .await?
            .iter()
            .map(client_json)
            .collect(),
    ))
}

async fn get_client(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    s.store
        .get_client(&id)
        .await?
        .map(|c| Json(client_json(&c)))
        .ok_or_else(|| ApiError::not_found(format!("no client {id}")))
}

async fn delete_client(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    if s.store
        .delete_client(&id, &audit(&actor.0, "client.delete", &id, json!({})))
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("no client {id}")))
    }
}

async fn list_signing_keys(State(s): State<Arc<AppState>>) -> ApiResult<Json<Vec<Value>>> {
    let keys = s.store.list_signing_keys().await?;
    Ok(Json(
        keys.iter()
            .map(|k| json!({ "kid": k.kid, "alg": k.alg, "state": k.state, "created_at": k.created_at, "retire_until": k.retire_until }))
            .collect(),
    ))
}

async fn rotate_signing_key(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Json<Value>> {
    let active = s.oauth.rotate(&actor.0).await?;
    Ok(Json(json!({ "active_kid": active })))
}

// ---- audit, CA, status ----

#[derive(Deserialize)]
struct AuditQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

async fn list_audit(
    State(s): State<Arc<AppState>>,
    Query(q): Query<AuditQuery>,
) -> ApiResult<Json<Value>> {
    let entries = s
        .store
        .list_audit(q.after.unwrap_or(0), q.limit.unwrap_or(1000))
        .await?;
    Ok(Json(json!(entries)))
}

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

async fn show_ca(State(s): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let snap = s.ca.snapshot();
    let cas = s.store.list_cas().await?;
    let signing: Vec<Value> = cas
        .iter()
        .filter(|c| c.kind == "signing")
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

async fn rotate_ca(
    State(s): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Json<Value>> {
    s.ca.reconcile(true).await?;
    let active = s.ca.active();
    s.store
        .audit(&audit(
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

#[derive(Deserialize)]
struct StatusQuery {
    within_secs: Option<i64>,
}

async fn status(
    State(s): State<Arc<AppState>>,
    Query(q): Query<StatusQuery>,
) -> ApiResult<Json<Value>> {
    let t = now();
    let within = q
        .within_secs
        .unwrap_or((s.svid_ttl.as_secs() as i64 / 4).max(60));
    let services = s.store.list_services().await?;
    let near = s
        .store
        .list_certificates(&CertQuery {
            valid_at: Some(t),
            expiring_before: Some(t + within),
            limit: 100,
            ..Default::default()
        })
        .await?;
    let near: Vec<Value> = near
        .iter()
        .filter(|c| c.revoked_at.is_none())
        .map(cert_json)
        .collect();
    let watchers: Vec<Value> = s
        .watchers
        .list()
        .into_iter()
        .map(|(id, since)| json!({ "spiffe_id": id, "since": since }))
        .collect();
    let snap = s.ca.snapshot();
    Ok(Json(json!({
        "healthy": true,
        "trust_domain": snap.trust_domain.as_str(),
        "root_fingerprint": ward_ca::fingerprint(&snap.root),
        "active_signing_ca": s.ca.active().authority.serial(),
        "services": services.len(),
        "connected_proxies": watchers,
        "certificates_near_expiry": near,
        "near_expiry_window_secs": within,
    })))
}

async fn bundle_json(State(s): State<Arc<AppState>>) -> Json<Value> {
    let snap = s.ca.snapshot();
    let certs: Vec<Vec<u8>> = snap.bundle.iter().map(|c| c.to_vec()).collect();
    Json(ward_ca::spiffe_bundle_json(&certs, snap.sequence, 300))
}

async fn bundle_pem(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    let pem: String =
        s.ca.snapshot()
            .bundle
            .iter()
            .map(|c| ward_ca::to_pem("CERTIFICATE", c))
            .collect();
    ([(header::CONTENT_TYPE, "application/x-pem-file")], pem)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    let ok = s.store.get_meta("trust_domain").await.is_ok()
        && s.ca.active().authority.not_after() > ward_ca::now();
    if ok {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.encode(),
    )
}
