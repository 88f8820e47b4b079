use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The trust domain a new ward server uses unless told otherwise.
pub const DEFAULT_TRUST_DOMAIN: &str = "ward.internal";
/// The namespace a service is in unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "default";

const SCHEME_PREFIX: &str = "spiffe://";
const MAX_TRUST_DOMAIN_LEN: usize = 255;
const MAX_ID_LEN: usize = 2048;

/// Why a string is not a valid trust domain or SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The ID does not start with `spiffe://` (the scheme is case-sensitive).
    #[error("a SPIFFE ID must start with \"spiffe://\"")]
    WrongScheme,
    /// The trust domain part is empty.
    #[error("the trust domain is empty")]
    EmptyTrustDomain,
    /// The trust domain holds a character outside `[a-z0-9._-]`.
    #[error("the trust domain may contain only lowercase letters, digits, '.', '-' and '_' (found {0:?})")]
    BadTrustDomainChar(char),
    /// The trust domain is longer than 255 bytes.
    #[error("the trust domain is longer than 255 bytes")]
    TrustDomainTooLong,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("the path has an empty segment (a doubled or trailing '/')")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("the path has a '.' or '..' segment")]
    DotSegment,
    /// A path segment holds a character outside `[a-zA-Z0-9._-]`.
    #[error("path segments may contain only letters, digits, '.', '-' and '_' (found {0:?})")]
    BadPathChar(char),
    /// The whole ID is longer than 2048 bytes.
    #[error("the SPIFFE ID is longer than 2048 bytes")]
    TooLong,
    /// A namespace or service name given to [`SpiffeId::for_service`] is not a
    /// single valid path segment.
    #[error("{0:?} is not a valid namespace or service name (letters, digits, '.', '-', '_'; not '.' or '..')")]
    BadName(String),
}

/// A SPIFFE trust domain, such as `ward.internal`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Checks and wraps a trust domain name. Accepts a bare name or a
    /// `spiffe://name` ID without a path.
    pub fn new(name: &str) -> Result<Self, IdError> {
        let name = match name.strip_prefix(SCHEME_PREFIX) {
            Some(rest) => rest,
            None => name,
        };
        validate_trust_domain(name)?;
        Ok(TrustDomain(name.to_owned()))
    }

    /// The trust domain's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>`, as CA
    /// certificates carry it.
    pub fn id_string(&self) -> String {
        format!("{SCHEME_PREFIX}{}", self.0)
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        TrustDomain::new(s)
    }
}

/// A SPIFFE ID: `spiffe://<trust domain><path>`.
///
/// A workload's ID always has a path; the bare trust-domain form is
/// accepted by [`SpiffeId::from_str`] too, since CA certificates use it, and
/// [`SpiffeId::is_trust_domain_id`] tells the two apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    full: String,
    td_end: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if s.len() > MAX_ID_LEN {
            return Err(IdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME_PREFIX).ok_or(IdError::WrongScheme)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td)?;
        validate_path(path)?;
        Ok(SpiffeId {
            full: s.to_owned(),
            td_end: SCHEME_PREFIX.len() + td.len(),
        })
    }

    /// Builds an ID from a trust domain and a path (which must start with `/`
    /// or be empty).
    pub fn from_parts(td: &TrustDomain, path: &str) -> Result<Self, IdError> {
        SpiffeId::parse(&format!("{SCHEME_PREFIX}{}{path}", td.as_str()))
    }

    /// The ID of a service by ward's convention:
    /// `spiffe://<td>/ns/<namespace>/sa/<service>`.
    pub fn for_service(td: &TrustDomain, namespace: &str, service: &str) -> Result<Self, IdError> {
        for name in [namespace, service] {
            if name.contains('/') || validate_path(&format!("/{name}")).is_err() {
                return Err(IdError::BadName(name.to_owned()));
            }
        }
        SpiffeId::from_parts(td, &format!("/ns/{namespace}/sa/{service}"))
    }

    /// The trust domain's name.
    pub fn trust_domain_name(&self) -> &str {
        &self.full[SCHEME_PREFIX.len()..self.td_end]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().to_owned())
    }

    /// The path, empty or starting with `/`.
    pub fn path(&self) -> &str {
        &self.full[self.td_end..]
    }

    /// Whether this is a bare trust-domain ID (no path).
    pub fn is_trust_domain_id(&self) -> bool {
        self.path().is_empty()
    }

    /// `(namespace, service)` when the path is exactly `/ns/<n>/sa/<s>`.
    pub fn service_account(&self) -> Option<(&str, &str)> {
        let mut parts = self.path().strip_prefix('/')?.split('/');
        match (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The whole ID as a string.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.full)
    }
}

impl FromStr for SpiffeId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        SpiffeId::parse(s)
    }
}

impl Serialize for SpiffeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.full)
    }
}

impl<'de> Deserialize<'de> for SpiffeId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn validate_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() {
        return Err(IdError::EmptyTrustDomain);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(IdError::TrustDomainTooLong);
    }
    match td
        .chars()
        .find(|c| !matches!(c, 'a'..='z' | '0'..='9' | '.' | '-' | '_'))
    {
        Some(c) => Err(IdError::BadTrustDomainChar(c)),
        None => Ok(()),
    }
}

fn validate_path(path: &str) -> Result<(), IdError> {
    if path.is_empty() {
        return Ok(());
    }
    // `path` starts with '/', so the first split element is always empty.
    for seg in path.split('/').skip(1) {
        if seg.is_empty() {
            return Err(IdError::EmptySegment);
        }
        if seg == "." || seg == ".." {
            return Err(IdError::DotSegment);
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !matches!(c, 'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_'))
        {
            return Err(IdError::BadPathChar(c));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // Cases from the SPIFFE-ID standard (section 2) and the reference
    // implementations' test tables.
    #[test]
    fn valid_ids() {
        let long_td = "a".repeat(255);
        let long_path = format!("spiffe://td/{}", "a".repeat(2048 - "spiffe://td/".len()));
        let cases = [
            ("spiffe://trustdomain", "trustdomain", ""),
            ("spiffe://trustdomain/path", "trustdomain", "/path"),
            (
                "spiffe://trustdomain/path1/path2",
                "trustdomain",
                "/path1/path2",
            ),
            (
                "spiffe://trust-domain.name_1/Path.With-ALL_chars09",
                "trust-domain.name_1",
                "/Path.With-ALL_chars09",
            ),
            (
                "spiffe://ward.internal/ns/default/sa/payments",
                "ward.internal",
                "/ns/default/sa/payments",
            ),
            ("spiffe://td/.../a..b/.x", "td", "/.../a..b/.x"),
        ];
        for (s, td, path) in cases {
            let id = SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(id.trust_domain_name(), td, "{s}");
            assert_eq!(id.path(), path, "{s}");
            assert_eq!(id.to_string(), s);
        }
        assert!(SpiffeId::parse(&format!("spiffe://{long_td}")).is_ok());
        assert!(SpiffeId::parse(&long_path).is_ok());
    }

    #[test]
    fn invalid_ids() {
        let long_td = "a".repeat(256);
        let too_long = format!("spiffe://td/{}", "a".repeat(2049 - "spiffe://td/".len()));
        let cases: Vec<(String, IdError)> = vec![
            ("".into(), IdError::WrongScheme),
            ("http://td/path".into(), IdError::WrongScheme),
            ("SPIFFE://td/path".into(), IdError::WrongScheme),
            ("spiffe:/td/path".into(), IdError::WrongScheme),
            ("spiffe://".into(), IdError::EmptyTrustDomain),
            ("spiffe:///path".into(), IdError::EmptyTrustDomain),
            (
                "spiffe://Trustdomain/path".into(),
                IdError::BadTrustDomainChar('T'),
            ),
            (
                "spiffe://td:8080/path".into(),
                IdError::BadTrustDomainChar(':'),
            ),
            (
                "spiffe://user@td/path".into(),
                IdError::BadTrustDomainChar('@'),
            ),
            ("spiffe://td/path?query".into(), IdError::BadPathChar('?')),
            ("spiffe://td/path#frag".into(), IdError::BadPathChar('#')),
            ("spiffe://td/pa%41th".into(), IdError::BadPathChar('%')),
            ("spiffe://td/path/".into(), IdError::EmptySegment),
            ("spiffe://td/".into(), IdError::EmptySegment),
            ("spiffe://td//path".into(), IdError::EmptySegment),
            ("spiffe://td/./path".into(), IdError::DotSegment),
            ("spiffe://td/path/..".into(), IdError::DotSegment),
            ("spiffe://td/pa th".into(), IdError::BadPathChar(' ')),
            ("spiffe://td/päth".into(), IdError::BadPathChar('ä')),
            ("spiffe://tdé/path".into(), IdError::BadTrustDomainChar('é')),
            (format!("spiffe://{long_td}"), IdError::TrustDomainTooLong),
            (too_long, IdError::TooLong),
        ];
        for (s, want) in cases {
            assert_eq!(SpiffeId::parse(&s), Err(want), "{s:?}");
        }
    }

    #[test]
    fn trust_domains() {
        assert_eq!(
            TrustDomain::new("ward.internal").unwrap().as_str(),
            "ward.internal"
        );
        assert_eq!(
            TrustDomain::new("spiffe://example.org").unwrap().as_str(),
            "example.org"
        );
        for bad in [
            "",
            "Example.org",
            "example.org/path",
            "exa mple",
            "spiffe://",
        ] {
            assert!(TrustDomain::new(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn service_convention() {
        let td = TrustDomain::new("example.org").unwrap();
        let id = SpiffeId::for_service(&td, "prod", "web-1").unwrap();
        assert_eq!(id.as_str(), "spiffe://example.org/ns/prod/sa/web-1");
        assert_eq!(id.service_account(), Some(("prod", "web-1")));
        for (ns, sa) in [
            ("", "a"),
            ("a", ""),
            ("..", "a"),
            ("a/b", "c"),
            ("a", "b c"),
        ] {
            assert!(SpiffeId::for_service(&td, ns, sa).is_err(), "{ns:?} {sa:?}");
        }
        for s in [
            "spiffe://td/ns/a/sa",
            "spiffe://td/ns/a/sa/b/c",
            "spiffe://td/x/a/sa/b",
            "spiffe://td",
        ] {
            assert_eq!(SpiffeId::parse(s).unwrap().service_account(), None, "{s}");
        }
    }

    #[test]
    fn serde_round_trip_rejects_bad_ids() {
        let id: SpiffeId = serde_json::from_str("\"spiffe://td/a\"").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"spiffe://td/a\"");
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://td/a/\"").is_err());
    }
}
