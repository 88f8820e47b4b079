use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub direction: &'static str,
    pub peer: String,
    pub status: u16,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    pub direction: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TlsVersionLabels {
    pub direction: &'static str,
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabels {
    pub decision: &'static str,
    pub policy: String,
    pub dry_run: &'static str,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub tcp_connections: Family<HandshakeLabels, Counter>,
    pub cert_expiry: Gauge,
    pub tls_versions: Family<TlsVersionLabels, Counter>,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        let decisions = Family::<DecisionLabels, Counter>::default();
        let tcp_connections = Family::<HandshakeLabels, Counter>::default();
        let cert_expiry = Gauge::default();
        let tls_versions = Family::<TlsVersionLabels, Counter>::default();
        registry.register(
            "ward_proxy_tls_versions",
            "Completed handshakes by TLS version",
            tls_versions.clone(),
        );
        registry.register(
            "ward_proxy_requests",
            "HTTP requests by direction, peer, status and decision",
            requests.clone(),
        );
        registry.register(
            "ward_proxy_tls_handshakes",
            "mTLS handshakes by direction and result",
            handshakes.clone(),
        );
        registry.register(
            "ward_proxy_tcp_connections",
            "Opaque TCP connections by direction and decision",
            tcp_connections.clone(),
        );
        registry.register(
            "ward_proxy_certificate_expiry_timestamp_seconds",
            "Expiry of the current certificate",
            cert_expiry.clone(),
        );
        registry.register(
            "ward_authz_decisions",
            "Authorization decisions by decision, policy and dry-run",
            decisions.clone(),
        );
        Metrics {
            registry,
            requests,
            handshakes,
            decisions,
            tcp_connections,
            cert_expiry,
            tls_versions,
        }
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
