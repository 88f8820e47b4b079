use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use crate::model::{
    parse_cidr, parse_port, Action, AuthorizationPolicy, Condition, DefaultAction, Operation, Rule,
    Source,
};

/// What is known about one request (HTTP) or connection (TCP).
#[derive(Debug, Clone, Default)]
pub struct Request<'a> {
    /// Namespace of the service being called.
    pub namespace: &'a str,
    /// The service being called.
    pub service: &'a str,
    /// The port the caller connected to.
    pub destination_port: u16,
    /// The caller's verified SPIFFE ID (`spiffe://…`), if any.
    pub source_principal: Option<&'a str>,
    /// The caller's IP address.
    pub source_ip: Option<IpAddr>,
    /// HTTP attributes; `None` for a TCP connection.
    pub http: Option<HttpAttributes<'a>>,
}

/// The HTTP part of a request.
#[derive(Debug, Clone, Default)]
pub struct HttpAttributes<'a> {
    /// Method, upper case.
    pub method: &'a str,
    /// Path without the query.
    pub path: &'a str,
    /// Host or :authority.
    pub host: &'a str,
    /// Headers, names lower case.
    pub headers: Vec<(&'a str, &'a str)>,
    /// `iss/sub` of a validated bearer token.
    pub request_principal: Option<&'a str>,
    /// The claims of that token.
    pub claims: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

impl<'a> Request<'a> {
    /// A connection-level request to `namespace/service` on `port`.
    pub fn connection(namespace: &'a str, service: &'a str, port: u16) -> Request<'a> {
        Request {
            namespace,
            service,
            destination_port: port,
            ..Default::default()
        }
    }

    fn source_namespace(&self) -> Option<&'a str> {
        let p = self.source_principal?;
        let path = p.strip_prefix("spiffe://")?.split_once('/')?.1;
        let mut it = path.split('/');
        match (it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa")) => Some(ns),
            _ => None,
        }
    }
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionKind {
    /// Let through.
    Allow,
    /// Refused.
    Deny,
}

/// A policy that matched without deciding (dry-run or AUDIT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    /// `namespace/name`.
    pub policy: String,
    /// Index of the matching rule.
    pub rule: usize,
    /// The policy's action.
    pub action: Action,
    /// Whether the policy is dry-run.
    pub dry_run: bool,
}

/// Why a decision came out as it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A DENY policy's rule matched.
    DenyRule,
    /// An ALLOW policy's rule matched.
    AllowRule,
    /// ALLOW policies apply to the target, and none matched.
    NoAllowMatched,
    /// No policy applies; the mesh default decided.
    MeshDefault,
}

/// The outcome of an evaluation, with what decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow or deny.
    pub kind: DecisionKind,
    /// Why.
    pub reason: Reason,
    /// The deciding policy (`namespace/name`; for [`Reason::NoAllowMatched`]
    /// the ALLOW policies that apply, comma-separated), or `None` for the
    /// mesh default. Shared with the compiled policy: a decision does not
    /// copy the name.
    pub policy: Option<Arc<str>>,
    /// The deciding rule's index, when a rule matched.
    pub rule: Option<usize>,
    /// Dry-run and AUDIT policies that matched.
    pub reported: Vec<Matched>,
}

impl Decision {
    /// Whether the request may go through.
    pub fn allowed(&self) -> bool {
        self.kind == DecisionKind::Allow
    }
    /// The deciding policy's `namespace/name`, or `default`.
    pub fn policy(&self) -> &str {
        self.policy.as_deref().unwrap_or("default")
    }
}

/// Compiled policies, indexed by the service they apply to.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    policies: Vec<Compiled>,
    /// namespace → service → policies selecting it.
    by_service: HashMap<String, HashMap<String, Vec<usize>>>,
    by_namespace: HashMap<String, Vec<usize>>,
    default: DefaultAction,
    /// Some condition reads `request.headers[…]`.
    reads_headers: bool,
}

#[derive(Debug, Clone)]
struct Compiled {
    key: Arc<str>,
    action: Action,
    dry_run: bool,
    rules: Vec<Rule>,
    ip_blocks: HashMap<String, ipnet::IpNet>,
}

impl PolicySet {
    /// Compiles validated policies.
    pub fn new(policies: Vec<AuthorizationPolicy>, default: DefaultAction) -> PolicySet {
        let mut set = PolicySet {
            default,
            ..Default::default()
        };
        for p in policies {
            let idx = set.policies.len();
            let mut ip_blocks = HashMap::new();
            for r in &p.spec.rules {
                set.reads_headers |= r.when.iter().any(|c| c.key.starts_with("request.headers["));
                let cidrs = r
                    .from
                    .iter()
                    .flat_map(|f| f.source.ip_blocks.iter().chain(&f.source.not_ip_blocks));
                let when = r
                    .when
                    .iter()
                    .filter(|c| c.key == "source.ip")
                    .flat_map(|c| c.values.iter().chain(&c.not_values));
                for v in cidrs.chain(when) {
                    if let Ok(net) = parse_cidr(v) {
                        ip_blocks.insert(v.clone(), net);
                    }
                }
            }
            match &p.spec.selector {
                Some(sel) => set
                    .by_service
                    .entry(p.metadata.namespace.clone())
                    .or_default()
                    .entry(sel.service.clone())
                    .or_default()
                    .push(idx),
                None => set
                    .by_namespace
                    .entry(p.metadata.namespace.clone())
                    .or_default()
                    .push(idx),
            }
            set.policies.push(Compiled {
                key: p.key().into(),
                action: p.spec.action,
                dry_run: p.spec.dry_run,
                rules: p.spec.rules,
                ip_blocks,
            });
        }
        set
    }

    /// Whether any policy reads request headers: when none does, a caller
    /// may leave [`HttpAttributes::headers`] empty and get the same
    /// decisions.
    pub fn reads_headers(&self) -> bool {
        self.reads_headers
    }

    /// The mesh default.
    pub fn default_action(&self) -> DefaultAction {
        self.default
    }

    /// How many policies are loaded.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether no policies are loaded.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Decides `req`: DENY first, then ALLOW, then the mesh default.
    pub fn evaluate(&self, req: &Request<'_>) -> Decision {
        let by_svc = self
            .by_service
            .get(req.namespace)
            .and_then(|m| m.get(req.service));
        let by_ns = self.by_namespace.get(req.namespace);
        let candidates = || {
            by_svc
                .into_iter()
                .flatten()
                .chain(by_ns.into_iter().flatten())
                .map(|&i| &self.policies[i])
        };

        let mut reported = Vec::new();
        let mut deny: Option<(&Arc<str>, usize)> = None;
        let mut allow: Option<(&Arc<str>, usize)> = None;
        let mut has_allow = false;
        for p in candidates() {
            let m = p.matching_rule(req);
            if p.dry_run || p.action == Action::Audit {
                if let Some(rule) = m {
                    reported.push(Matched {
                        policy: p.key.to_string(),
                        rule,
                        action: p.action,
                        dry_run: p.dry_run,
                    });
                }
                continue;
            }
            match p.action {
                Action::Deny => {
                    if let (None, Some(rule)) = (&deny, m) {
                        deny = Some((&p.key, rule));
                    }
                }
                Action::Allow => {
                    has_allow = true;
                    if let (None, Some(rule)) = (&allow, m) {
                        allow = Some((&p.key, rule));
                    }
                }
                Action::Audit => {}
            }
        }
        let (kind, reason, decided) = if let Some(d) = deny {
            (DecisionKind::Deny, Reason::DenyRule, Some(d))
        } else if has_allow {
            match allow {
                Some(a) => (DecisionKind::Allow, Reason::AllowRule, Some(a)),
                None => (DecisionKind::Deny, Reason::NoAllowMatched, None),
            }
        } else {
            let kind = match self.default {
                DefaultAction::Allow => DecisionKind::Allow,
                DefaultAction::Deny => DecisionKind::Deny,
            };
            (kind, Reason::MeshDefault, None)
        };
        // A denial because no ALLOW matched is explained by the ALLOW
        // policies that exist for the target, not by the mesh default.
        let policy = match (&decided, reason) {
            (Some((p, _)), _) => Some(Arc::clone(p)),
            (None, Reason::NoAllowMatched) => {
                let names: Vec<&str> = candidates()
                    .filter(|p| p.action == Action::Allow && !p.dry_run)
                    .map(|p| &*p.key)
                    .collect();
                Some(names.join(",").into())
            }
            _ => None,
        };
        Decision {
            kind,
            reason,
            policy,
            rule: decided.map(|(_, r)| r),
            reported,
        }
    }
}

impl Compiled {
    fn matching_rule(&self, req: &Request<'_>) -> Option<usize> {
        // A DENY rule with HTTP-only fields applies to TCP traffic with
        // those fields ignored (fail closed); an ALLOW rule does not match.
        let lenient = self.action == Action::Deny;
        self.rules
            .iter()
            .position(|r| self.rule_matches(r, req, lenient))
    }

    fn rule_matches(&self, r: &Rule, req: &Request<'_>, lenient: bool) -> bool {
        (r.from.is_empty()
            || r.from
                .iter()
                .any(|f| self.source_matches(&f.source, req, lenient)))
            && (r.to.is_empty()
                || r.to
                    .iter()
                    .any(|t| operation_matches(&t.operation, req, lenient)))
            && r.when
                .iter()
                .all(|c| self.condition_matches(c, req, lenient))
    }

    fn source_matches(&self, s: &Source, req: &Request<'_>, lenient: bool) -> bool {
        let principal = req
            .source_principal
            .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
        let ip_ok = |blocks: &[String]| {
            req.source_ip.is_some_and(|ip| {
                blocks
                    .iter()
                    .any(|b| self.ip_blocks.get(b).is_some_and(|n| n.contains(&ip)))
            })
        };
        let rp = req.http.as_ref().and_then(|h| h.request_principal);
        let http_field = |vals: &[String], nots: &[String]| match &req.http {
            None => lenient || (vals.is_empty() && nots.is_empty()),
            Some(_) => field(vals, nots, rp),
        };
        field_with(
            &s.principals,
            &s.not_principals,
            principal,
            principal_matches,
        ) && ((s.namespaces.is_empty() && s.not_namespaces.is_empty())
            || field(&s.namespaces, &s.not_namespaces, req.source_namespace()))
            && (s.ip_blocks.is_empty() || ip_ok(&s.ip_blocks))
            && (s.not_ip_blocks.is_empty() || !ip_ok(&s.not_ip_blocks))
            && http_field(&s.request_principals, &s.not_request_principals)
    }

    fn condition_matches(&self, c: &Condition, req: &Request<'_>, lenient: bool) -> bool {
        let ip_in = |vals: &[String]| {
            req.source_ip.is_some_and(|ip| {
                vals.iter()
                    .any(|b| self.ip_blocks.get(b).is_some_and(|n| n.contains(&ip)))
            })
        };
        match c.key.as_str() {
            "source.ip" => {
                (c.values.is_empty() || ip_in(&c.values))
                    && (c.not_values.is_empty() || !ip_in(&c.not_values))
            }
            "source.principal" => {
                let p = req
                    .source_principal
                    .map(|p| p.strip_prefix("spiffe://").unwrap_or(p));
                field_with(&c.values, &c.not_values, p, principal_matches)
            }
            "source.namespace" => field(&c.values, &c.not_values, req.source_namespace()),
            "destination.port" => ports(&c.values, &c.not_values, req.destination_port),
            key => match &req.http {
                None => lenient,
                Some(h) => {
                    let v = if let Some(name) = key
                        .strip_prefix("request.headers[")
                        .and_then(|k| k.strip_suffix(']'))
                    {
                        h.headers
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(name))
                            .map(|(_, v)| *v)
                    } else if key == "request.auth.principal" {
                        h.request_principal
                    } else if key == "request.auth.audiences" {
                        return candidates_match(c, audiences(h));
                    } else if let Some(path) = key.strip_prefix("request.auth.claims[") {
                        return candidates_match(c, claim_values(h, path));
                    } else {
                        None
                    };
                    field(&c.values, &c.not_values, v)
                }
            },
        }
    }
}

fn operation_matches(o: &Operation, req: &Request<'_>, lenient: bool) -> bool {
    if !ports(&o.ports, &o.not_ports, req.destination_port) {
        return false;
    }
    let has_http = !(o.methods.is_empty()
        && o.not_methods.is_empty()
        && o.paths.is_empty()
        && o.not_paths.is_empty()
        && o.hosts.is_empty()
        && o.not_hosts.is_empty());
    match &req.http {
        None => lenient || !has_http,
        Some(h) => {
            field(&o.methods, &o.not_methods, Some(h.method))
                && field(&o.paths, &o.not_paths, Some(h.path))
                && field_with(&o.hosts, &o.not_hosts, Some(h.host), |p, v| {
                    pattern_matches(&p.to_ascii_lowercase(), &v.to_ascii_lowercase())
                })
        }
    }
}

fn ports(vals: &[String], nots: &[String], port: u16) -> bool {
    let hit = |vs: &[String]| vs.iter().any(|v| parse_port(v).is_ok_and(|p| p == port));
    (vals.is_empty() || hit(vals)) && (nots.is_empty() || !hit(nots))
}

fn field(vals: &[String], nots: &[String], v: Option<&str>) -> bool {
    field_with(vals, nots, v, pattern_matches)
}

fn field_with(
    vals: &[String],
    nots: &[String],
    v: Option<&str>,
    m: impl Fn(&str, &str) -> bool,
) -> bool {
    let hit = |vs: &[String]| v.is_some_and(|v| vs.iter().any(|p| m(p, v)));
    (vals.is_empty() || hit(vals)) && (nots.is_empty() || !hit(nots))
}

fn principal_matches(pattern: &str, v: &str) -> bool {
    pattern_matches(pattern.strip_prefix("spiffe://").unwrap_or(pattern), v)
}

/// Exact, `prefix*`, `*suffix`, or `*` (present).
fn pattern_matches(pattern: &str, v: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    if let Some(prefix) = pattern.strip_suffix('*') {
        return v.starts_with(prefix);
    }
    if let Some(suffix) = pattern.strip_prefix('*') {
        return v.ends_with(suffix);
    }
    pattern == v
}

/// `values`/`notValues` against an attribute with several values (a list
/// claim, the audiences): some value must match one of `values`, and no
/// value may match one of `notValues`. No value at all matches nothing.
fn candidates_match(c: &Condition, vals: Vec<&str>) -> bool {
    let hit = |patterns: &[String]| {
        vals.iter()
            .any(|v| patterns.iter().any(|p| pattern_matches(p, v)))
    };
    (c.values.is_empty() || hit(&c.values))
        && (c.not_values.is_empty() || (!vals.is_empty() && !hit(&c.not_values)))
}

fn audiences<'a>(h: &HttpAttributes<'a>) -> Vec<&'a str> {
    match h.claims.and_then(|c| c.get("aud")) {
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    }
}

/// Claims whose string value is a space-separated list (RFC 8693 `scope`,
/// and the `scp`/`permission` spellings some issuers use), as Istio splits
/// them.
const SPACE_DELIMITED: [&str; 3] = ["scope", "scp", "permission"];

/// The values of the claim at `path` (`name]` or `a][b]`, the rest of a
/// `request.auth.claims[…]` key): a string (split if space-delimited), the
/// strings of a list, or a number or boolean as text.
fn claim_values<'a>(h: &HttpAttributes<'a>, path: &str) -> Vec<&'a str> {
    let Some(claims) = h.claims else {
        return Vec::new();
    };
    let Some(path) = path.strip_suffix(']') else {
        return Vec::new();
    };
    let mut names = path.split("][");
    let Some(first) = names.next() else {
        return Vec::new();
    };
    let mut last = first;
    let mut v = claims.get(first);
    for name in names {
        last = name;
        v = v.and_then(|v| v.get(name));
    }
    match v {
        Some(serde_json::Value::String(s)) if SPACE_DELIMITED.contains(&last) => {
            s.split_ascii_whitespace().collect()
        }
        Some(serde_json::Value::String(s)) => vec![s.as_str()],
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_str()).collect(),
        Some(serde_json::Value::Bool(true)) => vec!["true"],
        Some(serde_json::Value::Bool(false)) => vec!["false"],
        _ => Vec::new(),
    }
}
