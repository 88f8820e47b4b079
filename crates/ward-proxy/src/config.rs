use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use ward_tls::ControlPlaneTrust;

/// How an upstream port carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 or HTTP/2 (gRPC), request by request.
    Http,
    /// Opaque bytes.
    Tcp,
    /// Detected from the first bytes; TCP when they are not HTTP.
    Auto,
}

impl std::str::FromStr for Protocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "http" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            "auto" => Ok(Protocol::Auto),
            _ => Err(format!("{s:?} is not a protocol (http, tcp or auto)")),
        }
    }
}

/// How this sidecar carries HTTP/1.1 and TCP to other sidecars.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerTransport {
    /// `ward-mux/2`: ward's own framing, many exchanges on one connection;
    /// TCP on connections of its own.
    #[default]
    Mux,
    /// HBONE (HTTP/2 CONNECT, as Istio ambient): HTTP/1.1 and TCP both
    /// as streams on one connection. A peer that does not speak it is
    /// reached over `ward-mux` instead.
    Hbone,
}

impl std::str::FromStr for PeerTransport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mux" => Ok(PeerTransport::Mux),
            "hbone" => Ok(PeerTransport::Hbone),
            _ => Err(format!("{s:?} is not a peer transport (mux or hbone)")),
        }
    }
}

/// One `--upstream NAME[.NS]=LISTEN_ADDR[,protocol=P]`.
#[derive(Debug, Clone, Serialize)]
pub struct Upstream {
    /// Service name.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// Local plaintext port the app connects to.
    pub listen: SocketAddr,
    /// What it carries.
    pub protocol: Protocol,
    /// Fixed endpoints (sidecars of the service), for running without a
    /// control plane; otherwise learnt from the watch stream.
    pub endpoints: Vec<String>,
    /// The SPIFFE ID its sidecars must present [default: the ward ID of
    /// NAME.NS in this sidecar's trust domain].
    pub id: Option<String>,
}

impl std::str::FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rest) = s
            .split_once('=')
            .ok_or(
                "expected NAME[.NS]=LISTEN_ADDR[,protocol=http|tcp|auto][,endpoint=HOST:PORT]…[,id=spiffe://…]",
            )?;
        let (service, namespace) = match name.split_once('.') {
            Some((s, ns)) => (s.to_string(), ns.to_string()),
            None => (name.to_string(), "default".to_string()),
        };
        let mut parts = rest.split(',');
        let listen = parts
            .next()
            .unwrap_or_default()
            .parse()
            .map_err(|e| format!("{rest:?}: the listen address must be IP:PORT ({e})"))?;
        let mut protocol = Protocol::Http;
        let (mut endpoints, mut id) = (Vec::new(), None);
        for opt in parts {
            match opt.split_once('=') {
                Some(("protocol", p)) => protocol = p.parse()?,
                Some(("endpoint", e)) => {
                    if !e.contains(':') {
                        return Err(format!("endpoint {e:?}: expected HOST:PORT"));
                    }
                    endpoints.push(e.to_string());
                }
                Some(("id", i)) => {
                    ward_identity::SpiffeId::parse(i)
                        .map_err(|e| format!("id {i:?}: {e}"))?;
                    id = Some(i.to_string());
                }
                _ => {
                    return Err(format!(
                        "unknown upstream option {opt:?} (known: protocol=http|tcp|auto, endpoint=HOST:PORT, id=spiffe://…)"
                    ))
                }
            }
        }
        Ok(Upstream {
            service,
            namespace,
            listen,
            protocol,
            endpoints,
            id,
        })
    }
}

/// Everything `ward proxy` or `ward agent` is told. No secrets:
/// [`Mode::ControlPlane`]'s join token is taken out when the sidecar is
/// built and never serialized.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyConfig {
    /// Where identity, trust and configuration come from.
    pub mode: Mode,
    /// This workload's service.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// The listeners that carry traffic; none for `ward agent`.
    #[serde(flatten)]
    pub data_plane: Option<DataPlane>,
    /// Identity handed to local workloads that do their own TLS.
    pub workload: Option<WorkloadConfig>,
    /// Admin listener.
    pub admin: Option<SocketAddr>,
    /// Keeps the key and certificate across restarts.
    pub state_dir: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests.
    #[serde(serialize_with = "secs")]
    pub drain_timeout: Duration,
}

/// A sidecar's traffic: mTLS in to the app, the app's calls out.
#[derive(Debug, Clone, Serialize)]
pub struct DataPlane {
    /// Inbound mTLS listener.
    pub inbound: SocketAddr,
    /// The app, on loopback.
    pub app: SocketAddr,
    /// How the app speaks.
    pub app_protocol: Protocol,
    /// Where peers reach the inbound listener (default: its bound address).
    pub advertise: Option<String>,
    /// Outbound ports.
    pub upstreams: Vec<Upstream>,
    /// A listener for HBONE alone (Istio's 15008), beside the inbound
    /// port, which also accepts it.
    pub hbone: Option<SocketAddr>,
    /// How HTTP/1.1 and TCP go to other sidecars.
    pub peer_transport: PeerTransport,
    /// Data-plane threads, each a single-threaded event loop with its own
    /// connections (`workers`); 0 counts as 1.
    pub workers: usize,
}

/// The SPIFFE Workload API and certificate files for local workloads.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadConfig {
    /// Unix socket path of the Workload API.
    pub socket: Option<PathBuf>,
    /// Local users whose processes get the identity (SO_PEERCRED); empty
    /// for this process's own user.
    pub uids: Vec<u32>,
    /// Keeps `svid.pem`, `svid.key` and `bundle.pem` here.
    pub write_dir: Option<PathBuf>,
    /// Run (with `sh -c`) after the files change.
    pub on_change: Option<String>,
}

/// Where a sidecar's identity, trust and configuration come from.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A ward control plane: the certificate is signed from a CSR and
    /// renewed at half-life; the watch stream brings the bundle,
    /// revocations, endpoints and policies.
    ControlPlane {
        /// Control plane `host:port`.
        server: String,
        /// How the control plane is trusted.
        #[serde(skip)]
        trust: ControlPlaneTrust,
        /// Buys the first certificate when the state dir holds none.
        #[serde(skip)]
        join_token: Option<String>,
        /// How often traffic counters go to the control plane (10 s).
        #[serde(serialize_with = "secs")]
        report_every: Duration,
    },
    /// No control plane: certificates, bundle and policies from files.
    Standalone(Standalone),
}

impl Mode {
    /// The control plane's address and trust, unless standalone.
    pub fn control_plane(&self) -> Option<(&str, &ControlPlaneTrust)> {
        match self {
            Mode::ControlPlane { server, trust, .. } => Some((server, trust)),
            Mode::Standalone(_) => None,
        }
    }
}

/// Certificates from files kept fresh by something else (SPIRE,
/// cert-manager, Vault), reloaded when they change; endpoints and peer IDs
/// from `--upstream`; policies from a file.
#[derive(Debug, Clone, Serialize)]
pub struct Standalone {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PKCS#8 PEM).
    pub key: PathBuf,
    /// Trust bundle: the CA certificates peers chain to (PEM).
    pub bundle: PathBuf,
    /// AuthorizationPolicy / RequestAuthentication documents (YAML).
    pub policy_file: Option<PathBuf>,
    /// What happens when no ALLOW policy covers a request.
    pub default_action: ward_policy::DefaultAction,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}
