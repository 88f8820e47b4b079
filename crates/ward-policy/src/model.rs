use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a policy does when a rule matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Action {
    /// Let the request through (when no DENY matched).
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// Refuse the request.
    #[serde(rename = "DENY")]
    Deny,
    /// Record the match; never changes the decision.
    #[serde(rename = "AUDIT")]
    Audit,
}

/// The mesh default, used when no ALLOW policy applies to a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    /// Zero trust: nothing is allowed unless a policy says so.
    #[default]
    Deny,
    /// Istio's behaviour: no ALLOW policy means everything is allowed.
    Allow,
}

impl FromStr for DefaultAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "deny" => Ok(DefaultAction::Deny),
            "allow" => Ok(DefaultAction::Allow),
            _ => Err(format!("{s:?} is not a default action (deny or allow)")),
        }
    }
}

/// An `AuthorizationPolicy` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// `ward/v1` (Istio's `security.istio.io/v1` and `v1beta1` are accepted too).
    pub api_version: String,
    /// `AuthorizationPolicy`.
    pub kind: String,
    /// Name and namespace.
    pub metadata: Metadata,
    /// What it selects and what it says.
    #[serde(default)]
    pub spec: Spec,
}

/// A policy's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Name, unique in its namespace.
    pub name: String,
    /// Namespace; the policy applies to services in it.
    #[serde(default = "default_namespace")]
    pub namespace: String,
}

fn default_namespace() -> String {
    "default".into()
}

/// The policy body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Which service it applies to; absent: every service in the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selector>,
    /// ALLOW (default), DENY or AUDIT.
    #[serde(default)]
    pub action: Action,
    /// Evaluate and report, but never enforce.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
    /// The rules; any one matching makes the policy match. Absent or empty:
    /// an ALLOW policy matches nothing, a DENY policy matches nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
}

/// Selects the service a policy applies to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    /// Service name in the policy's namespace.
    pub service: String,
}

/// A rule: all of `from`, `to` and `when` must match (an absent part
/// matches everything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Any one of these sources.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    /// Any one of these operations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    /// Every one of these conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<Condition>,
}

/// `from:` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFrom {
    /// The source's attributes.
    pub source: Source,
}

/// `to:` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleTo {
    /// The operation's attributes.
    pub operation: Operation,
}

/// Who is calling. Every field that is set must match (each field matches
/// if any of its values does; a `not…` field matches if none does).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Source {
    /// Peer SPIFFE IDs, with or without `spiffe://`: `td/ns/N/sa/S`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Negated `principals`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Peer namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Negated `namespaces`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Peer IP addresses or CIDR blocks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Negated `ipBlocks`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    /// JWT `iss/sub` of the request's token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    /// Negated `requestPrincipals`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
}

/// What is being called. Ports apply to every protocol; the rest are HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Operation {
    /// HTTP methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Negated `methods`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// URL paths (without query).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Negated `paths`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Destination ports (the inbound listener's port).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// Negated `ports`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    /// HTTP Host / :authority.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Negated `hosts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
}

/// `when:` entry: the attribute `key` must have one of `values` and none
/// of `notValues`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// `request.headers[NAME]`, `source.principal`, `source.namespace`,
    /// `source.ip`, `destination.port`, `request.auth.claims[NAME]`, …
    pub key: String,
    /// Matching values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    /// Values that must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// Why a policy document was refused. The message names the field path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// Where: `spec.rules[0].from[0].source.ipBlocks[1]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl PolicyError {
    pub(crate) fn new(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Parses and validates one policy from JSON.
pub fn parse_policy(json: &str) -> Result<AuthorizationPolicy, PolicyError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    let p: AuthorizationPolicy = serde_path_to_error::deserialize(de).map_err(serde_error)?;
    p.validate()?;
    Ok(p)
}

pub(crate) fn serde_error(e: serde_path_to_error::Error<serde_json::Error>) -> PolicyError {
    let path = e.path().to_string();
    PolicyError::new(
        if path == "." { String::new() } else { path },
        e.inner().to_string(),
    )
}

pub(crate) fn check_api_version(v: &str) -> Result<(), PolicyError> {
    if [
        "ward/v1",
        "security.istio.io/v1",
        "security.istio.io/v1beta1",
    ]
    .contains(&v)
    {
        Ok(())
    } else {
        Err(PolicyError::new(
            "apiVersion",
            format!("unsupported apiVersion {v:?} (use ward/v1)"),
        ))
    }
}

const HTTP_WHEN_PREFIXES: [&str; 4] = [
    "request.headers[",
    "request.auth.claims[",
    "request.auth.principal",
    "request.auth.audiences",
];

impl AuthorizationPolicy {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.metadata.namespace, self.metadata.name)
    }

    /// Whether any rule uses a field that only HTTP requests have.
    pub fn uses_http_fields(&self) -> bool {
        self.spec.rules.iter().any(|r| {
            r.to.iter().any(|t| {
                let o = &t.operation;
                !(o.methods.is_empty()
                    && o.not_methods.is_empty()
                    && o.paths.is_empty()
                    && o.not_paths.is_empty()
                    && o.hosts.is_empty()
                    && o.not_hosts.is_empty())
            }) || r.from.iter().any(|f| {
                !(f.source.request_principals.is_empty()
                    && f.source.not_request_principals.is_empty())
            }) || r
                .when
                .iter()
                .any(|c| HTTP_WHEN_PREFIXES.iter().any(|p| c.key.starts_with(p)))
        })
    }

    /// Checks everything serde cannot: names, kinds, patterns, CIDRs,
    /// ports, `when` keys.
    pub fn validate(&self) -> Result<(), PolicyError> {
        check_api_version(&self.api_version)?;
        if self.kind != "AuthorizationPolicy" {
            return Err(PolicyError::new(
                "kind",
                format!("expected AuthorizationPolicy, found {:?}", self.kind),
            ));
        }
        check_name("metadata.name", &self.metadata.name)?;
        check_name("metadata.namespace", &self.metadata.namespace)?;
        if let Some(sel) = &self.spec.selector {
            check_name("spec.selector.service", &sel.service)?;
        }
        for (i, rule) in self.spec.rules.iter().enumerate() {
            let rp = format!("spec.rules[{i}]");
            for (j, f) in rule.from.iter().enumerate() {
                let sp = format!("{rp}.from[{j}].source");
                let s = &f.source;
                for (field, vals) in [
                    ("principals", &s.principals),
                    ("notPrincipals", &s.not_principals),
                ] {
                    for (k, v) in vals.iter().enumerate() {
                        check_principal(&format!("{sp}.{field}[{k}]"), v)?;
                    }
                }
                for (field, vals) in [
                    ("namespaces", &s.namespaces),
                    ("notNamespaces", &s.not_namespaces),
                    ("requestPrincipals", &s.request_principals),
                    ("notRequestPrincipals", &s.not_request_principals),
                ] {
                    for (k, v) in vals.iter().enumerate() {
                        check_pattern(&format!("{sp}.{field}[{k}]"), v)?;
                    }
                }
                for (field, vals) in [
                    ("ipBlocks", &s.ip_blocks),
                    ("notIpBlocks", &s.not_ip_blocks),
                ] {
                    for (k, v) in vals.iter().enumerate() {
                        parse_cidr(v)
                            .map_err(|m| PolicyError::new(format!("{sp}.{field}[{k}]"), m))?;
                    }
                }
            }
            for (j, t) in rule.to.iter().enumerate() {
                let op = format!("{rp}.to[{j}].operation");
                let o = &t.operation;
                for (field, vals) in [("ports", &o.ports), ("notPorts", &o.not_ports)] {
                    for (k, v) in vals.iter().enumerate() {
                        parse_port(v)
                            .map_err(|m| PolicyError::new(format!("{op}.{field}[{k}]"), m))?;
                    }
                }
                for (field, vals) in [
                    ("methods", &o.methods),
                    ("notMethods", &o.not_methods),
                    ("paths", &o.paths),
                    ("notPaths", &o.not_paths),
                    ("hosts", &o.hosts),
                    ("notHosts", &o.not_hosts),
                ] {
                    for (k, v) in vals.iter().enumerate() {
                        check_pattern(&format!("{op}.{field}[{k}]"), v)?;
                    }
                }
            }
            for (j, c) in rule.when.iter().enumerate() {
                let cp = format!("{rp}.when[{j}]");
                check_when_key(&format!("{cp}.key"), &c.key)?;
                if c.values.is_empty() && c.not_values.is_empty() {
                    return Err(PolicyError::new(
                        cp,
                        "a condition needs values or notValues",
                    ));
                }
                for (field, vals) in [("values", &c.values), ("notValues", &c.not_values)] {
                    for (k, v) in vals.iter().enumerate() {
                        let p = format!("{cp}.{field}[{k}]");
                        match c.key.as_str() {
                            "source.ip" => parse_cidr(v)
                                .map(|_| ())
                                .map_err(|m| PolicyError::new(p, m))?,
                            "destination.port" => parse_port(v)
                                .map(|_| ())
                                .map_err(|m| PolicyError::new(p, m))?,
                            _ => check_pattern(&p, v)?,
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn check_name(path: &str, v: &str) -> Result<(), PolicyError> {
    let ok = !v.is_empty()
        && v.len() <= 253
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && v != "."
        && v != "..";
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            path,
            format!("{v:?} is not a valid name (letters, digits, '-', '.', '_')"),
        ))
    }
}

/// Exact, `prefix*`, `*suffix` or `*`; a `*` anywhere else is refused.
fn check_pattern(path: &str, v: &str) -> Result<(), PolicyError> {
    if v.is_empty() {
        return Err(PolicyError::new(path, "empty value"));
    }
    let stars = v.matches('*').count();
    let ok = stars == 0 || (stars == 1 && (v.starts_with('*') || v.ends_with('*')));
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            path,
            format!("{v:?}: '*' is allowed only as the whole value, a prefix or a suffix"),
        ))
    }
}

fn check_principal(path: &str, v: &str) -> Result<(), PolicyError> {
    check_pattern(path, v)?;
    if v.contains('*') {
        return Ok(());
    }
    let id = v.strip_prefix("spiffe://").unwrap_or(v);
    let (td, rest) = id.split_once('/').ok_or_else(|| {
        PolicyError::new(
            path,
            format!(
                "{v:?} is not a principal: expected <trust domain>/ns/<namespace>/sa/<service>"
            ),
        )
    })?;
    let ok = !td.is_empty()
        && td
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        && rest.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        });
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            path,
            format!("{v:?} is not a valid SPIFFE principal"),
        ))
    }
}

fn check_when_key(path: &str, key: &str) -> Result<(), PolicyError> {
    const PLAIN: [&str; 6] = [
        "source.principal",
        "source.namespace",
        "source.ip",
        "destination.port",
        "request.auth.principal",
        "request.auth.audiences",
    ];
    if PLAIN.contains(&key) {
        return Ok(());
    }
    let bracketed = |rest: &str, nested: bool| {
        rest.strip_suffix(']').is_some_and(|inner| {
            let mut names = inner.split("][");
            let ok = |n: &str| !n.is_empty() && !n.contains(['[', ']']);
            names.next().is_some_and(ok) && (nested || !inner.contains("][")) && names.all(ok)
        })
    };
    if let Some(rest) = key.strip_prefix("request.headers[") {
        if bracketed(rest, false) {
            return Ok(());
        }
    }
    if let Some(rest) = key.strip_prefix("request.auth.claims[") {
        if bracketed(rest, true) {
            return Ok(());
        }
    }
    Err(PolicyError::new(
        path,
        format!(
            "unknown key {key:?} (known: source.principal, source.namespace, source.ip, destination.port, \
             request.headers[NAME], request.auth.claims[NAME], request.auth.principal, request.auth.audiences)"
        ),
    ))
}

pub(crate) fn parse_cidr(v: &str) -> Result<ipnet::IpNet, String> {
    if let Ok(net) = v.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    v.parse::<std::net::IpAddr>()
        .map(ipnet::IpNet::from)
        .map_err(|_| format!("{v:?} is not an IP address or CIDR block"))
}

pub(crate) fn parse_port(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{v:?} is not a port (1-65535)")),
    }
}
