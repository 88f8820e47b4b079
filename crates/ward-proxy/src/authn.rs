//! Request authentication: bearer tokens validated by the inbound sidecar.
//!
//! The issuers trusted for a service are ward's own (always, for tokens
//! whose audience is the service) and those of the `RequestAuthentication`
//! documents that select it. A request with a token from any other issuer,
//! or a token that fails verification, gets 401; a request without a token
//! goes on to the authorization policy with no request principal. A valid
//! token gives the policy `iss/sub` and its claims.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::header::{HeaderName, HeaderValue, AUTHORIZATION};
use http::HeaderMap;
use ward_jwt::tower::RevocationList;
use ward_jwt::{Claims, JwkSet, JwksCache, Validation};
use ward_policy::{JwtRule, RequestAuthentication};

/// The control plane's own issuers and their keys, from the watch stream
/// (empty without a control plane).
#[derive(Default)]
pub(crate) struct OwnIssuers<'a> {
    /// ward's OAuth2 issuer and its JWK set (JSON).
    pub ward_issuer: &'a str,
    pub ward_jwks: &'a str,
    /// `spiffe://<trust domain>` and its JWT-SVID authorities (JSON).
    pub svid_issuer: &'a str,
    pub svid_jwks: &'a str,
}

/// One trusted issuer.
struct IssuerRule {
    issuer: String,
    /// Accepted `aud` values (never empty: defaults to the service name).
    audiences: Vec<String>,
    keys: Arc<JwksCache>,
    /// (header, prefix) where the token may be.
    from: Vec<(HeaderName, String)>,
    forward: bool,
    outputs: Vec<(HeaderName, String)>,
    /// What the issuer is, which decides how its tokens are checked.
    kind: Kind,
    /// Accepted `typ` values (`tokenType`); empty: any.
    token_types: Vec<String>,
}

/// The kinds of issuers.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// ward's OAuth2 issuer: RFC 9068 `typ`, and the revocation feed
    /// applies.
    Ward,
    /// The trust domain's JWT-SVIDs (`iss` = `spiffe://<td>`): `sub` must
    /// be a SPIFFE ID of the trust domain.
    JwtSvid,
    /// Any other issuer of a RequestAuthentication.
    Other,
}

/// The issuers trusted for this sidecar's service.
#[derive(Default)]
pub(crate) struct Authn {
    rules: Vec<IssuerRule>,
    /// Every header a rule writes claims into: copies sent by the caller
    /// are removed.
    output_headers: Vec<HeaderName>,
}

/// What the token of a request turned out to be.
pub(crate) enum Outcome {
    /// No token where any rule looks.
    NoToken,
    /// A valid token: `iss/sub`, its claims, the rule that accepted it.
    Valid {
        principal: String,
        claims: Claims,
        rule: usize,
        location: HeaderName,
    },
    /// A token that must be refused (401), and why.
    Invalid(String),
}

/// Key caches kept across configuration updates, so that an update (every
/// watch message) neither refetches nor re-parses keys, nor forgets the
/// tokens they verified.
pub(crate) struct KeyCaches {
    /// Made on first use: loading the system's roots costs memory that a
    /// sidecar without `jwksUri` rules should not pay.
    http: Option<reqwest::Client>,
    bundle: Vec<rustls_pki_types::CertificateDer<'static>>,
    ward_jwks: String,
    ward: Arc<JwksCache>,
    svid_jwks: String,
    svid: Arc<JwksCache>,
    /// By source: `uri:<jwksUri>` or `inline:<JWKS JSON>`.
    sources: HashMap<String, Arc<JwksCache>>,
}

impl KeyCaches {
    pub(crate) fn new(bundle: &[rustls_pki_types::CertificateDer<'static>]) -> KeyCaches {
        KeyCaches {
            http: None,
            bundle: bundle.to_vec(),
            ward_jwks: String::new(),
            ward: Arc::new(JwksCache::fixed(JwkSet::default())),
            svid_jwks: String::new(),
            svid: Arc::new(JwksCache::fixed(JwkSet::default())),
            sources: HashMap::new(),
        }
    }

    /// ward's keys from the watch stream (rebuilt only when they change).
    fn ward_keys(&mut self, jwks_json: &str) -> Arc<JwksCache> {
        fixed(&mut self.ward_jwks, &mut self.ward, jwks_json)
    }

    /// The JWT-SVID authorities from the watch stream (rebuilt only when
    /// they change).
    fn svid_keys(&mut self, jwks_json: &str) -> Arc<JwksCache> {
        fixed(&mut self.svid_jwks, &mut self.svid, jwks_json)
    }

    /// The cache for a rule's own key source (`jwks` or `jwksUri`).
    fn source(&mut self, r: &JwtRule) -> Option<(String, Arc<JwksCache>)> {
        let key = match (&r.jwks, &r.jwks_uri) {
            (Some(j), _) => format!("inline:{j}"),
            (None, Some(u)) => format!("uri:{u}"),
            (None, None) => return None,
        };
        if let Some(c) = self.sources.get(&key) {
            return Some((key, c.clone()));
        }
        let cache = match (&r.jwks, &r.jwks_uri) {
            (Some(j), _) => Arc::new(JwksCache::fixed(JwkSet::from_json(j).ok()?)),
            (None, Some(uri)) => {
                if self.http.is_none() {
                    self.http = jwks_client(&self.bundle);
                }
                Arc::new(JwksCache::from_url(self.http.clone()?, uri))
            }
            (None, None) => return None,
        };
        self.sources.insert(key.clone(), cache.clone());
        Some((key, cache))
    }
}

/// A key cache made from `json`, kept while `json` is what it was made
/// from.
fn fixed(seen: &mut String, cache: &mut Arc<JwksCache>, json: &str) -> Arc<JwksCache> {
    if json != seen.as_str() {
        match JwkSet::from_json(json) {
            Ok(set) => {
                *cache = Arc::new(JwksCache::fixed(set));
                *seen = json.to_string();
            }
            Err(e) => tracing::warn!(error = %e, "unreadable signing keys from the control plane"),
        }
    }
    cache.clone()
}

/// HTTPS for `jwksUri`: the system's roots plus ward's bundle, TLS 1.2+.
fn jwks_client(bundle: &[rustls_pki_types::CertificateDer<'static>]) -> Option<reqwest::Client> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(c);
    }
    for c in bundle {
        let _ = roots.add(c.clone());
    }
    let tls = rustls::ClientConfig::builder_with_provider(ward_tls::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .ok()
}

fn header(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).ok()
}

impl Authn {
    /// The rules for `namespace/service`: ward's issuer (always), then
    /// every selecting `RequestAuthentication` (a rule for ward's issuer
    /// replaces the default one; a rule for the trust domain's JWT-SVID
    /// issuer, with no keys of its own, verifies with its JWT authorities).
    pub(crate) fn build(
        docs: &[RequestAuthentication],
        namespace: &str,
        service: &str,
        own: &OwnIssuers<'_>,
        caches: &Mutex<KeyCaches>,
    ) -> Authn {
        let Ok(mut caches) = caches.lock() else {
            return Authn::default();
        };
        let ward_issuer = own.ward_issuer;
        let ward_keys = caches.ward_keys(own.ward_jwks);
        let svid_keys = caches.svid_keys(own.svid_jwks);
        let default_from = vec![(AUTHORIZATION, "Bearer ".to_string())];
        let mut rules: Vec<IssuerRule> = Vec::new();
        let mut used = std::collections::HashSet::new();
        let selecting = docs.iter().filter(|d| {
            d.metadata.namespace == namespace
                && d.spec
                    .selector
                    .as_ref()
                    .is_none_or(|s| s.service == service)
        });
        for r in selecting.flat_map(|d| &d.spec.jwt_rules) {
            let keys = match caches.source(r) {
                Some((key, c)) => {
                    used.insert(key);
                    c
                }
                None if r.issuer == ward_issuer => ward_keys.clone(),
                None if !own.svid_issuer.is_empty() && r.issuer == own.svid_issuer => {
                    svid_keys.clone()
                }
                None => continue,
            };
            if rules.iter().any(|x| x.issuer == r.issuer) {
                continue;
            }
            let kind = if r.issuer == ward_issuer {
                Kind::Ward
            } else if r.issuer == own.svid_issuer {
                Kind::JwtSvid
            } else {
                Kind::Other
            };
            rules.push(rule(r, keys, service, &default_from, kind));
        }
        if !ward_issuer.is_empty() && !rules.iter().any(|r| r.issuer == ward_issuer) {
            // Not written by anyone: forward the token, write no headers.
            rules.push(IssuerRule {
                issuer: ward_issuer.to_string(),
                audiences: vec![service.to_string()],
                keys: ward_keys,
                from: default_from,
                forward: true,
                outputs: Vec::new(),
                kind: Kind::Ward,
                token_types: Vec::new(),
            });
        }
        // Sources no document names any more are let go.
        caches.sources.retain(|k, _| used.contains(k));
        let mut output_headers: Vec<HeaderName> = rules
            .iter()
            .flat_map(|r| r.outputs.iter().map(|(h, _)| h.clone()))
            .collect();
        output_headers.dedup();
        Authn {
            rules,
            output_headers,
        }
    }

    /// Finds and verifies the request's token. `peer_cert` is the SHA-256
    /// of the caller's certificate, for certificate-bound tokens.
    pub(crate) async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer_cert: [u8; 32],
        revoked: &RevocationList,
    ) -> Outcome {
        let Some((token, location)) = self.find(headers) else {
            return Outcome::NoToken;
        };
        let Some(iss) = unverified_issuer(token) else {
            return Outcome::Invalid("malformed token".into());
        };
        let Some((idx, rule)) = self
            .rules
            .iter()
            .enumerate()
            .find(|(_, r)| r.issuer == iss && r.from.iter().any(|(h, _)| *h == location))
        else {
            return Outcome::Invalid("token issuer is not trusted here".into());
        };
        let mut v = Validation::access_token(&rule.issuer, "");
        v.audience = None;
        match rule.kind {
            Kind::Ward => {}
            // Only the JWT authorities sign with these keys, and only
            // JWT-SVIDs.
            Kind::JwtSvid => {
                v.typ = rule.token_types.clone();
                v.required = vec!["iss", "sub", "aud", "exp"];
            }
            Kind::Other => {
                v.typ = rule.token_types.clone();
                v.required = vec!["iss", "exp"];
            }
        }
        v.peer_cert_sha256 = Some(peer_cert);
        let claims = match rule.keys.verify(token, &v).await {
            Ok(c) => c,
            Err(e) => return Outcome::Invalid(e.to_string()),
        };
        let aud = claims.aud();
        if !rule.audiences.iter().any(|a| aud.contains(&a.as_str())) {
            return Outcome::Invalid("wrong audience".into());
        }
        if rule.kind == Kind::Ward && claims.jti().is_some_and(|j| revoked.contains(j)) {
            return Outcome::Invalid("token revoked".into());
        }
        if rule.kind == Kind::JwtSvid {
            let sub = claims.sub().unwrap_or_default();
            let td = rule.issuer.trim_start_matches("spiffe://");
            if ward_identity::SpiffeId::parse(sub).map_or(true, |id| id.trust_domain_name() != td) {
                return Outcome::Invalid(
                    "the JWT-SVID's sub is not a SPIFFE ID of this trust domain".into(),
                );
            }
        }
        Outcome::Valid {
            principal: format!("{}/{}", rule.issuer, claims.sub().unwrap_or_default()),
            claims,
            rule: idx,
            location,
        }
    }

    fn find<'h>(&self, headers: &'h HeaderMap) -> Option<(&'h str, HeaderName)> {
        for r in &self.rules {
            for (h, prefix) in &r.from {
                let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) else {
                    continue;
                };
                let token = if prefix.is_empty() {
                    Some(v)
                } else if v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix)
                {
                    Some(&v[prefix.len()..])
                } else {
                    None
                };
                if let Some(t) = token {
                    return Some((t.trim(), h.clone()));
                }
            }
        }
        None
    }

    /// Before the request goes to the app: caller-sent copies of claim
    /// headers are removed; for a valid token the claims are written and the
    /// token removed unless its rule forwards it.
    pub(crate) fn rewrite(&self, headers: &mut HeaderMap, outcome: &Outcome) {
        for h in &self.output_headers {
            headers.remove(h);
        }
        let Outcome::Valid {
            claims,
            rule,
            location,
            ..
        } = outcome
        else {
            return;
        };
        let Some(rule) = self.rules.get(*rule) else {
            return;
        };
        if !rule.forward {
            headers.remove(location);
        }
        for (h, claim) in &rule.outputs {
            let v = match claims.get(claim) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(String::from)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Some(serde_json::Value::Null) | None => continue,
                Some(other) => other.to_string(),
            };
            if let Ok(v) = HeaderValue::from_str(&v) {
                headers.insert(h.clone(), v);
            }
        }
    }
}

fn rule(
    r: &JwtRule,
    keys: Arc<JwksCache>,
    service: &str,
    default_from: &[(HeaderName, String)],
    kind: Kind,
) -> IssuerRule {
    let from: Vec<(HeaderName, String)> = r
        .from_headers
        .iter()
        .filter_map(|h| Some((header(&h.name)?, h.prefix.clone().unwrap_or_default())))
        .collect();
    IssuerRule {
        issuer: r.issuer.clone(),
        audiences: if r.audiences.is_empty() {
            vec![service.to_string()]
        } else {
            r.audiences.clone()
        },
        keys,
        from: if from.is_empty() {
            default_from.to_vec()
        } else {
            from
        },
        forward: r.forward_original_token,
        outputs: r
            .output_claim_to_headers
            .iter()
            .filter_map(|o| Some((header(&o.header)?, o.claim.clone())))
            .collect(),
        token_types: r.token_type.clone(),
        kind,
    }
}

/// The `iss` of a token, read before verification only to pick the rule
/// whose keys will verify it.
fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("iss")?.as_str().map(String::from)
}
