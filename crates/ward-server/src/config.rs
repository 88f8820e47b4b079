use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// Everything `ward server` is told. Validated once, logged at start (it
/// holds no secrets: keys and tokens live in files under `data_dir`).
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Where the database, the key-encryption key and the admin token live.
    pub data_dir: PathBuf,
    /// The TLS port for every API.
    pub listen: SocketAddr,
    /// Trust domain, used when the data dir is initialized; afterwards it
    /// must match the stored one or be `None`.
    pub trust_domain: Option<String>,
    /// `sqlite://PATH` or a path; `None` means `<data_dir>/ward.db`.
    pub database: Option<String>,
    /// Lifetime of issued X509-SVIDs.
    #[serde(with = "secs")]
    pub svid_ttl: Duration,
    /// Lifetime of a signing (intermediate) CA.
    #[serde(with = "secs")]
    pub ca_ttl: Duration,
    /// Lifetime of a generated root CA.
    #[serde(with = "secs")]
    pub root_ttl: Duration,
    /// DNS names (and IPs) in the server's own certificate.
    pub dns_names: Vec<String>,
    /// An existing CA to sign below: certificate and key PEM files.
    pub upstream_ca: Option<(PathBuf, PathBuf)>,
    /// What happens to traffic no ALLOW policy covers.
    pub default_policy: ward_policy::DefaultAction,
    /// Lifetime of OAuth2 access tokens.
    #[serde(with = "secs")]
    pub token_ttl: Duration,
    /// The OAuth2 issuer (`iss` of access tokens, the base of the metadata
    /// endpoints); `None`: `https://<bound address>`. Set it behind a load
    /// balancer, or for replicas that must share one.
    pub issuer: Option<String>,
    /// Certificate signings and watch-stream opens in progress at once;
    /// more are refused with UNAVAILABLE and a retry hint.
    pub max_pending_calls: usize,
    /// The dashboard's own TLS port (`https://ADDR/ui/`); `None`: no
    /// dashboard.
    pub ui_listen: Option<SocketAddr>,
    /// How long a dashboard sign-in lasts.
    #[serde(with = "secs")]
    pub ui_session_ttl: Duration,
}

mod secs {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl Config {
    /// The defaults of DESIGN.md for a data dir.
    pub fn new(data_dir: PathBuf) -> Config {
        let host = hostname();
        let mut dns_names = vec!["localhost".to_string()];
        if let Some(h) = host {
            if h != "localhost" {
                dns_names.push(h);
            }
        }
        Config {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            trust_domain: None,
            database: None,
            svid_ttl: Duration::from_secs(24 * 3600),
            ca_ttl: Duration::from_secs(7 * 24 * 3600),
            root_ttl: Duration::from_secs(365 * 24 * 3600),
            dns_names,
            upstream_ca: None,
            default_policy: ward_policy::DefaultAction::Deny,
            token_ttl: Duration::from_secs(300),
            issuer: None,
            max_pending_calls: crate::shed::DEFAULT_LIMIT,
            ui_listen: None,
            ui_session_ttl: Duration::from_secs(8 * 3600),
        }
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), String> {
        if self.svid_ttl < Duration::from_secs(5) {
            return Err("--svid-ttl must be at least 5s".into());
        }
        if self.ca_ttl < self.svid_ttl * 2 {
            return Err(
                "--ca-ttl must be at least twice --svid-ttl, so that rotation can overlap".into(),
            );
        }
        if self.root_ttl < self.ca_ttl {
            return Err("the root lifetime must be at least --ca-ttl".into());
        }
        if let Some(td) = &self.trust_domain {
            ward_identity::TrustDomain::new(td).map_err(|e| format!("--trust-domain: {e}"))?;
        }
        if let Some(iss) = &self.issuer {
            check_issuer(iss).map_err(|e| format!("--issuer {iss:?}: {e}"))?;
        }
        Ok(())
    }

    /// The OAuth2 issuer for a server bound at `addr`.
    pub fn issuer_for(&self, addr: SocketAddr) -> String {
        self.issuer
            .clone()
            .unwrap_or_else(|| format!("https://{addr}"))
    }

    /// The database to use: a PostgreSQL URL, or else a SQLite file.
    pub fn database(&self) -> Database {
        match &self.database {
            Some(db) if db.starts_with("postgres://") || db.starts_with("postgresql://") => {
                Database::Postgres(db.clone())
            }
            Some(db) => Database::Sqlite(PathBuf::from(db.strip_prefix("sqlite://").unwrap_or(db))),
            None => Database::Sqlite(self.data_dir.join("ward.db")),
        }
    }
}

/// Where the control plane keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, for one server.
    Sqlite(PathBuf),
    /// A PostgreSQL URL, for any number of replicas.
    Postgres(String),
}

impl Database {
    /// What it is, for messages, without credentials: the SQLite file, or
    /// `PostgreSQL at host:port/db`.
    pub fn label(&self) -> String {
        match self {
            Database::Sqlite(p) => format!("SQLite at {}", p.display()),
            Database::Postgres(url) => {
                let (_, _, rest) = split_credentials(url);
                format!("PostgreSQL at {}", rest.split('?').next().unwrap_or(rest))
            }
        }
    }

    /// As it would be given to `--database`, with any password as `***`.
    pub fn redacted(&self) -> String {
        match self {
            Database::Sqlite(p) => p.display().to_string(),
            Database::Postgres(url) => match split_credentials(url) {
                (scheme, Some(user), rest) => format!("{scheme}{user}:***@{rest}"),
                _ => url.clone(),
            },
        }
    }
}

/// `scheme://user:password@rest` as (`scheme://`, the user when a password
/// follows it, `rest`); without credentials, the user is `None` and `rest`
/// follows the scheme.
fn split_credentials(url: &str) -> (&str, Option<&str>, &str) {
    let (scheme, after) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    match after.rsplit_once('@') {
        Some((auth, rest)) => (scheme, auth.split_once(':').map(|(u, _)| u), rest),
        None => (scheme, None, after),
    }
}

/// This machine's host name, if it is a usable DNS name.
pub(crate) fn hostname() -> Option<String> {
    let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let h = h.trim().to_ascii_lowercase();
    (!h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'))
    .then_some(h)
}

/// An issuer as RFC 8414 section 2 wants it: an https URL with a host, no
/// query, no fragment, and (so that `<issuer>/oauth2/token` is one URL)
/// no trailing slash.
fn check_issuer(iss: &str) -> Result<(), &'static str> {
    let rest = iss
        .strip_prefix("https://")
        .ok_or("an issuer is an https:// URL")?;
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains('@') {
        return Err("an issuer URL needs a host (and no user info)");
    }
    if iss.contains('?') || iss.contains('#') {
        return Err("an issuer has no query or fragment");
    }
    if iss.ends_with('/') {
        return Err("drop the trailing slash");
    }
    if iss.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("an issuer has no spaces");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_urls_are_shown_without_their_password() {
        let pg = Database::Postgres("postgres://ward:s3cret@db:5432/ward?sslmode=require".into());
        assert_eq!(
            pg.redacted(),
            "postgres://ward:***@db:5432/ward?sslmode=require"
        );
        assert_eq!(pg.label(), "PostgreSQL at db:5432/ward");
        let bare = Database::Postgres("postgres://db/ward".into());
        assert_eq!(bare.redacted(), "postgres://db/ward");
        assert_eq!(bare.label(), "PostgreSQL at db/ward");
        let file = Database::Sqlite("/var/lib/ward/ward.db".into());
        assert_eq!(file.redacted(), "/var/lib/ward/ward.db");
    }

    use super::*;

    #[test]
    fn issuers() {
        for ok in [
            "https://ward.example.com",
            "https://lb:8443",
            "https://ward.example.com/tenant1",
        ] {
            assert_eq!(check_issuer(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://ward.example.com",
            "https://",
            "https:///x",
            "https://ward.example.com/",
            "https://ward.example.com?x=1",
            "https://ward.example.com#f",
            "https://u@ward.example.com",
            "ward.example.com",
        ] {
            assert!(check_issuer(bad).is_err(), "{bad}");
        }
    }
}
