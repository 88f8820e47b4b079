//! Flags and subcommands.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// ward: zero-trust service-to-service security in one binary.
///
/// A built-in CA issues short-lived SPIFFE certificates to every service;
/// the control plane keeps the registry, the authorization policies and the
/// OAuth2 clients, and streams trust to every workload; `ward proxy` gives
/// an unmodified app mutual TLS in and out with authorization. `ward demo`
/// shows it all on this machine; `ward server` starts a control plane that
/// the other commands manage.
#[derive(Parser, Debug)]
#[command(name = "ward", version, propagate_version = true, max_term_width = 100)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Global {
    /// Output format.
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Output,
    /// Control plane URL, e.g. https://127.0.0.1:8443; several replicas
    /// comma-separated (sidecars spread over them and fail over).
    #[arg(long, global = true, env = "WARD_SERVER")]
    pub server: Option<String>,
    /// File holding the admin token (or set WARD_ADMIN_TOKEN).
    #[arg(long, global = true)]
    pub admin_token_file: Option<PathBuf>,
    /// Trust the server whose root certificate has this fingerprint (sha256:<hex>).
    #[arg(long, global = true, env = "WARD_CA_FINGERPRINT")]
    pub ca_fingerprint: Option<String>,
    /// Trust the server by this PEM bundle of CA certificates (for `ward
    /// proxy --cert`: the bundle peers' certificates must chain to).
    #[arg(long, global = true)]
    pub trust_bundle: Option<PathBuf>,
    /// The server's data dir: `ward server` keeps its state there; other
    /// commands read the server's address, admin token and bundle from it.
    #[arg(long, global = true, env = "WARD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format on stderr (filter with RUST_LOG).
    #[arg(long, global = true, value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Table,
    Json,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub(crate) enum Command {
    /// Run the control plane (initializes the data dir on first start).
    Server(ServerArgs),
    /// The whole system on this machine: a control plane, three services behind
    /// sidecars, a policy, live traffic and a summary.
    Demo {
        /// Run unattended and exit non-zero on any unexpected result.
        #[arg(long)]
        check: bool,
    },
    /// Run a sidecar beside an app: mTLS in and out, authorization, rotation.
    #[command(
        after_help = "Memory: the sidecar runs jemalloc with small thread caches for large buffers \
                      and freed pages returned after a second \
                      (_RJEM_MALLOC_CONF=tcache_nslots_large:2,dirty_decay_ms:1000) unless \
                      _RJEM_MALLOC_CONF is set."
    )]
    Proxy(Box<ProxyArgs>),
    /// Run the identity side of a sidecar without a data plane: the SPIFFE
    /// Workload API and/or rotating certificate files for apps that do
    /// their own TLS.
    #[command(
        after_help = "Memory: the agent runs jemalloc with one arena and no thread caches \
                      (_RJEM_MALLOC_CONF=narenas:1,tcache:false) unless _RJEM_MALLOC_CONF is set."
    )]
    Agent(AgentArgs),
    /// Run the sample app used by `ward demo` (HTTP, gRPC ward.demo.v1.Echo, TCP echo).
    SampleApp(SampleAppArgs),
    /// Manage the service registry.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Create bootstrap credentials for sidecars.
    #[command(subcommand, name = "join-token")]
    JoinToken(JoinTokenCmd),
    /// Issue, inspect, list and revoke certificates.
    #[command(subcommand)]
    Cert(CertCmd),
    /// Show, fingerprint and rotate the CA.
    #[command(subcommand)]
    Ca(CaCmd),
    /// Apply, list, show, delete and check AuthorizationPolicy and RequestAuthentication documents.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// OAuth2 clients of the token endpoint.
    #[command(subcommand)]
    Client(ClientCmd),
    /// Get or verify OAuth2 access tokens.
    #[command(subcommand)]
    Token(TokenCmd),
    /// The access-token signing keys.
    #[command(subcommand, name = "signing-key")]
    SigningKey(SigningKeyCmd),
    /// Server health, registered services, connected proxies, certificates near expiry.
    Status,
    /// Read the audit log.
    Audit(AuditArgs),
    /// Who calls whom: request rates and allowed/denied counts by the
    /// deciding policy, as the sidecars report them (every 10 s).
    Top(TopArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ServerArgs {
    /// Address of the TLS port for every API; port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:8443")]
    pub listen: SocketAddr,
    /// Trust domain, set once when the data dir is initialized [default: ward.internal].
    #[arg(long)]
    pub trust_domain: Option<String>,
    /// Database: a SQLite path or sqlite:// URL, or a postgres:// URL shared by replicas [default: <data-dir>/ward.db].
    #[arg(long)]
    pub database: Option<String>,
    /// Lifetime of issued X509-SVIDs, e.g. 24h, 20s.
    #[arg(long, value_parser = parse_duration, default_value = "24h")]
    pub svid_ttl: Duration,
    /// Lifetime of each signing (intermediate) CA; it rotates with overlap.
    #[arg(long, value_parser = parse_duration, default_value = "7d")]
    pub ca_ttl: Duration,
    /// DNS name or IP for the server certificate (repeatable) [default: localhost and the host name].
    #[arg(long = "dns-name")]
    pub dns_names: Vec<String>,
    /// Existing CA certificate (PEM) to issue under instead of a generated root.
    #[arg(long, requires = "upstream_ca_key")]
    pub upstream_ca_cert: Option<PathBuf>,
    /// Private key (PEM) of --upstream-ca-cert.
    #[arg(long, requires = "upstream_ca_cert")]
    pub upstream_ca_key: Option<PathBuf>,
    /// What happens to traffic that no ALLOW policy covers: deny (zero trust) or allow.
    #[arg(long, default_value = "deny")]
    pub default_policy: ward_policy::DefaultAction,
    /// Lifetime of OAuth2 access tokens.
    #[arg(long, value_parser = parse_duration, default_value = "5m")]
    pub token_ttl: Duration,
    /// The OAuth2 issuer URL (iss of access tokens, base of the metadata
    /// and token endpoints), for a server behind a load balancer or
    /// replicas [default: https://<listen address>].
    #[arg(long)]
    pub issuer: Option<String>,
    /// Certificate signings and watch-stream opens in progress at once;
    /// past it, more are refused with a retry hint (UNAVAILABLE and
    /// grpc-retry-pushback-ms) and clients back off, so that a fleet
    /// reconnecting at once is served in turn.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_pending_calls: u32,
    /// Serve the dashboard at https://ADDR/ui/ on this port of its own
    /// (same server certificate; sign in with the admin token); port 0
    /// picks a free port [default: no dashboard].
    #[arg(long)]
    pub ui_listen: Option<SocketAddr>,
    /// How long a dashboard sign-in lasts before it asks again.
    #[arg(long, value_parser = parse_duration, default_value = "8h")]
    pub ui_session_ttl: Duration,
    /// A YAML file of settings: any flag above (and the global ones) by
    /// its long name, e.g. `svid-ttl: 12h`, `dns-name: [a, b]`; flags and
    /// environment variables override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file, environment and flags;
    /// no secrets) as YAML, and exit.
    #[arg(long)]
    pub print_config: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ProxyArgs {
    /// Join token for the first certificate (or set WARD_JOIN_TOKEN).
    #[arg(long, env = "WARD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding the join token.
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// Run without a control plane: this certificate chain (PEM, leaf
    /// first), reloaded when it changes; needs --key and --trust-bundle.
    #[arg(long, requires = "key", conflicts_with_all = ["join_token", "join_token_file", "state_dir"])]
    pub cert: Option<PathBuf>,
    /// Without a control plane: the private key (PEM: PKCS#8, SEC1 `EC
    /// PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
    #[arg(long, requires = "cert")]
    pub key: Option<PathBuf>,
    /// Without a control plane: AuthorizationPolicy/RequestAuthentication
    /// documents (YAML), reloaded when the file changes.
    #[arg(long, requires = "cert")]
    pub policy_file: Option<PathBuf>,
    /// Without a control plane: what happens when no ALLOW policy covers a
    /// request.
    #[arg(long, requires = "cert", default_value = "deny", value_parser = ["deny", "allow"])]
    pub default_policy: String,
    /// The service this sidecar serves.
    #[arg(long)]
    pub service: String,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    /// Inbound mTLS listener.
    #[arg(long, default_value = "0.0.0.0:15006")]
    pub inbound: SocketAddr,
    /// The app's address on loopback.
    #[arg(long)]
    pub app: SocketAddr,
    /// How the app speaks.
    #[arg(long, default_value = "http")]
    pub app_protocol: ward_proxy::Protocol,
    /// Where peers reach the inbound listener [default: its bound address].
    #[arg(long)]
    pub advertise: Option<String>,
    /// NAME[.NS]=LISTEN_ADDR[,protocol=http|tcp|auto][,endpoint=HOST:PORT]…[,id=SPIFFE_ID]:
    /// a local port to reach a service (repeatable); endpoint and id are
    /// for running without a control plane.
    #[arg(long = "upstream")]
    pub upstreams: Vec<ward_proxy::Upstream>,
    /// How HTTP/1.1 and TCP go to other sidecars: `mux` (ward-mux/2) or
    /// `hbone` (HTTP/2 CONNECT, as Istio ambient; falls back to mux with
    /// a peer that does not speak it). Sidecars accept both.
    #[arg(long, default_value = "mux")]
    pub peer_transport: ward_proxy::PeerTransport,
    /// Also accept HBONE alone on this address (Istio's port 15008, ALPN
    /// h2); the inbound port accepts it too.
    #[arg(long)]
    pub hbone: Option<SocketAddr>,
    /// Admin listener: /live /ready /metrics /config /certs /shutdown.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin: SocketAddr,
    /// Keep the key and certificate here, to restart without a new join token.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// How long SIGTERM waits for in-flight requests.
    #[arg(long, value_parser = parse_duration, default_value = "15s")]
    pub drain_timeout: Duration,
    /// Data-plane threads, each a single-threaded event loop that keeps
    /// the connections it is given [default: cores, at most 2].
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Log one line per request (target ward::access, at info). Off by
    /// default, as in Istio and Linkerd: it costs about a fifth of the
    /// throughput (docs/sidecar.md). RUST_LOG, when set, decides instead.
    #[arg(long)]
    pub access_log: bool,
    /// How often traffic counters (by caller, decision and policy) and the
    /// certificate's expiry go to the control plane, for its dashboard and
    /// `ward top`.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub report_interval: Duration,
    #[command(flatten)]
    pub workload: WorkloadArgs,
}

/// What local workloads that do their own TLS get.
#[derive(Args, Debug, Clone)]
pub(crate) struct WorkloadArgs {
    /// Serve the SPIFFE Workload API on this unix socket
    /// (unix:///path/agent.sock), in a directory this user owns.
    #[arg(long, value_parser = parse_unix_socket)]
    pub workload_api: Option<PathBuf>,
    /// A local user (uid) whose processes get the identity over the
    /// Workload API (repeatable) [default: this process's own uid].
    #[arg(long = "workload-uid")]
    pub workload_uids: Vec<u32>,
    /// Keep svid.pem (chain, leaf first), svid.key (0600) and bundle.pem in
    /// this directory, replaced atomically on every renewal or bundle change.
    #[arg(long)]
    pub write_dir: Option<PathBuf>,
    /// Run this (with sh -c) after the files in --write-dir change.
    #[arg(long, requires = "write_dir")]
    pub on_change: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct AgentArgs {
    /// Join token for the first certificate (or set WARD_JOIN_TOKEN).
    #[arg(long, env = "WARD_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// File holding the join token.
    #[arg(long, conflicts_with = "join_token")]
    pub join_token_file: Option<PathBuf>,
    /// The service whose identity local workloads get.
    #[arg(long)]
    pub service: String,
    #[arg(long, short = 'n', default_value = "default")]
    pub namespace: String,
    #[command(flatten)]
    pub workload: WorkloadArgs,
    /// Admin listener (/live /ready /metrics /config /certs /shutdown); none
    /// unless given.
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// Keep the agent's own key and certificate here, to restart without a
    /// new join token.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// How often traffic counters (by caller, decision and policy) and the
    /// certificate's expiry go to the control plane, for its dashboard and
    /// `ward top`.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub report_interval: Duration,
}

/// `unix:///absolute/path` (or a bare absolute path).
pub(crate) fn parse_unix_socket(s: &str) -> Result<PathBuf, String> {
    let path = s.strip_prefix("unix://").unwrap_or(s);
    if !path.starts_with('/') {
        return Err(format!("{s:?}: give the socket as unix:///absolute/path"));
    }
    Ok(PathBuf::from(path))
}

#[derive(Args, Debug)]
pub(crate) struct SampleAppArgs {
    /// Name it reports.
    #[arg(long, default_value = "sample")]
    pub name: String,
    /// HTTP/1.1, HTTP/2 (h2c) and gRPC.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Optional TCP echo port.
    #[arg(long)]
    pub tcp_listen: Option<SocketAddr>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum ClientCmd {
    /// Register a client; a generated secret is shown once.
    Create {
        /// Client id.
        name: String,
        /// The service it acts for (must be registered).
        #[arg(long)]
        service: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// How it authenticates at the token endpoint.
        #[arg(long, value_parser = ["tls_client_auth", "private_key_jwt", "client_secret_basic", "client_secret_post"])]
        auth: String,
        /// A scope it may request (repeatable).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// An audience it may request tokens for (repeatable) [default: the service itself].
        #[arg(long = "audience")]
        audiences: Vec<String>,
        /// private_key_jwt: file with the client's public JWK set.
        #[arg(long)]
        jwks: Option<PathBuf>,
    },
    /// List clients.
    List,
    /// Delete a client.
    Delete { name: String },
}

#[derive(Subcommand, Debug)]
pub(crate) enum TokenCmd {
    /// Get an access token with client_credentials (client secret, the
    /// client's ward certificate for tls_client_auth, or a signed assertion
    /// for private_key_jwt).
    Get {
        #[arg(long)]
        client: String,
        /// The client secret (or set WARD_CLIENT_SECRET).
        #[arg(long, env = "WARD_CLIENT_SECRET", hide_env_values = true)]
        client_secret: Option<String>,
        /// tls_client_auth: the client's certificate chain (PEM).
        #[arg(long, requires = "key")]
        cert: Option<PathBuf>,
        /// tls_client_auth: its private key (PEM).
        #[arg(long, requires = "cert")]
        key: Option<PathBuf>,
        /// private_key_jwt: the private key (PEM; ES256, ES384 or EdDSA)
        /// whose public half is in the client's registered JWKS. A client
        /// assertion (RFC 7523) valid for 60 s is signed with it.
        #[arg(long, conflicts_with = "client_secret")]
        assertion_key: Option<PathBuf>,
        /// private_key_jwt: the kid of that key in the JWKS [default: none;
        /// the server tries every key of the right type].
        #[arg(long, requires = "assertion_key")]
        assertion_kid: Option<String>,
        #[arg(long)]
        audience: Option<String>,
        /// Space-separated scopes [default: all the client may have].
        #[arg(long)]
        scope: Option<String>,
    },
    /// Verify a token offline against a JWKS file or URL (RFC 9068 rules,
    /// typ included, unless --any-type). Exit 0 valid, 1 invalid.
    Verify {
        /// JWKS file or https:// URL.
        #[arg(long)]
        jwks: String,
        #[arg(long)]
        issuer: Option<String>,
        #[arg(long)]
        audience: Option<String>,
        /// Accept tokens whose typ is not at+jwt.
        #[arg(long)]
        any_type: bool,
        token: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum SigningKeyCmd {
    /// Activate the pre-published key and publish a new next one.
    Rotate,
    /// List keys and their states.
    List,
}

#[derive(Subcommand, Debug)]
pub(crate) enum PolicyCmd {
    /// Validate and apply policies from a YAML/JSON file or a directory of them
    /// (multi-document YAML); all or nothing.
    Apply {
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// List policies.
    List,
    /// Show one policy.
    Get {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// Delete one policy.
    Delete {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
    /// What-if: decide a request with the policies in force, naming the
    /// deciding policy and rule and every dry-run/AUDIT policy that matched.
    /// Without --method/--path/--header/--claims the request is a TCP
    /// connection. Exit 0 if allowed, 1 if denied.
    Check {
        /// The caller: a SPIFFE ID, ns/<namespace>/sa/<service>, or a
        /// registered service (NAME or NAMESPACE/NAME); omit for a caller
        /// without a certificate.
        #[arg(long)]
        from: Option<String>,
        /// The target service, registered: NAME or NAMESPACE/NAME.
        #[arg(long)]
        to: String,
        /// HTTP method.
        #[arg(long)]
        method: Option<String>,
        /// HTTP path.
        #[arg(long)]
        path: Option<String>,
        /// HTTP Host.
        #[arg(long)]
        host: Option<String>,
        /// The port the caller connects to (the sidecar's inbound port).
        #[arg(long, default_value_t = 15006)]
        port: u16,
        /// The caller's IP address.
        #[arg(long)]
        source_ip: Option<std::net::IpAddr>,
        /// A request header, K=V (repeatable).
        #[arg(long = "header", value_name = "K=V")]
        headers: Vec<String>,
        /// Claims of a validated bearer token, as a JSON object with at
        /// least iss and sub.
        #[arg(long)]
        claims: Option<String>,
        /// The JOSE typ of that token (JWT, at+jwt, …), checked against a
        /// RequestAuthentication's tokenType.
        #[arg(long, requires = "claims")]
        token_type: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum ServiceCmd {
    /// Register a service; its ID is spiffe://<td>/ns/<namespace>/sa/<name>.
    Add {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// What it speaks: http (HTTP/1.1, HTTP/2, gRPC) or tcp. Policies
        /// with HTTP fields are refused for TCP services.
        #[arg(long, default_value = "http", value_parser = ["http", "tcp"])]
        protocol: String,
    },
    /// List registered services.
    List,
    /// Remove a service from the registry.
    Remove {
        name: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum JoinTokenCmd {
    /// Create a join token that buys one service's first certificate.
    Create {
        /// The service (must be registered).
        #[arg(long)]
        service: String,
        #[arg(long, short = 'n', default_value = "default")]
        namespace: String,
        /// How long the token stays valid.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        ttl: Duration,
        /// How many certificates it may buy.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// The join tokens still usable (unexpired, uses left), by id; the
    /// tokens themselves are stored only hashed and never shown again.
    List,
    /// Revoke a join token by its id (from `create` or `list`).
    Revoke {
        /// The id, 16 hex digits.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CertCmd {
    /// Generate a key here (never sent anywhere) and have the server sign it.
    Issue {
        /// The SPIFFE ID to issue, e.g. spiffe://ward.internal/ns/default/sa/web.
        #[arg(long)]
        spiffe_id: String,
        /// Where to write the chain (PEM, leaf first).
        #[arg(long)]
        out_cert: PathBuf,
        /// Where to write the private key (PKCS#8 PEM, mode 0600).
        #[arg(long)]
        out_key: PathBuf,
        /// Lifetime [default: the server's --svid-ttl].
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Extra DNS name or IP SAN (repeatable), for clients that check names.
        #[arg(long = "dns-name")]
        dns_names: Vec<String>,
        /// Also write the trust bundle (PEM) here.
        #[arg(long)]
        out_bundle: Option<PathBuf>,
    },
    /// Show a certificate's SPIFFE ID and validity, and check its chain against the bundle.
    Inspect {
        /// PEM file (chain, leaf first).
        file: PathBuf,
    },
    /// Revoke a certificate by serial or by file.
    Revoke {
        /// Serial number (hex).
        #[arg(required_unless_present = "cert")]
        serial: Option<String>,
        /// Revoke the leaf in this PEM file.
        #[arg(long, conflicts_with = "serial")]
        cert: Option<PathBuf>,
    },
    /// List issued certificates.
    List {
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Only certificates that have not expired.
        #[arg(long)]
        valid: bool,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CaCmd {
    /// The root, the signing CAs and their states.
    Show {
        /// Print the trust bundle PEM instead.
        #[arg(long)]
        pem: bool,
    },
    /// The root fingerprint, for --ca-fingerprint.
    Fingerprint,
    /// Prepare (if needed) and activate a new signing CA now.
    Rotate,
}

#[derive(Args, Debug)]
pub(crate) struct TopArgs {
    /// Refresh every 2 seconds until interrupted.
    #[arg(long)]
    pub watch: bool,
}

#[derive(Args, Debug)]
pub(crate) struct AuditArgs {
    /// Only entries after this id.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 20s, 15m, 24h, 7d)"))
}

/// Threads of the sidecar's data plane (and of the agent) when not given:
/// the cores, at most 2, as ztunnel does.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(2)
}
