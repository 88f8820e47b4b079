use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub reason: String,
}

/// The control plane's Prometheus metrics.
pub(crate) struct Metrics {
    registry: Registry,
    /// Certificates issued, by how the caller authenticated.
    pub issued: Family<MethodLabel, Counter>,
    /// Refused signing requests, by reason.
    pub sign_failures: Family<ReasonLabel, Counter>,
    /// Open watch streams.
    pub watch_streams: Gauge,
    /// Admin API requests refused for lack of credentials.
    pub admin_unauthorized: Counter,
    /// Access tokens issued.
    pub tokens_issued: Counter,
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        // The standard process_* metrics unprefixed, ward's own under ward_.
        let mut root = Registry::default();
        root.register_collector(Box::new(ward_http::ProcessCollector::new()));
        let registry = root.sub_registry_with_prefix("ward");
        let issued = Family::<MethodLabel, Counter>::default();
        let sign_failures = Family::<ReasonLabel, Counter>::default();
        let watch_streams = Gauge::default();
        let admin_unauthorized = Counter::default();
        let tokens_issued = Counter::default();
        registry.register(
            "oauth_tokens_issued",
            "Access tokens issued",
            tokens_issued.clone(),
        );
        registry.register("certificates_issued", "X509-SVIDs issued", issued.clone());
        registry.register(
            "certificate_sign_failures",
            "Refused certificate signing requests",
            sign_failures.clone(),
        );
        registry.register("watch_streams", "Open watch streams", watch_streams.clone());
        registry.register(
            "admin_unauthorized",
            "Admin API requests without valid credentials",
            admin_unauthorized.clone(),
        );
        Metrics {
            registry: root,
            issued,
            sign_failures,
            watch_streams,
            admin_unauthorized,
            tokens_issued,
        }
    }

    pub(crate) fn issued(&self, method: &str) {
        self.issued
            .get_or_create(&MethodLabel {
                method: method.into(),
            })
            .inc();
    }

    pub(crate) fn failed(&self, reason: &str) {
        self.sign_failures
            .get_or_create(&ReasonLabel {
                reason: reason.into(),
            })
            .inc();
    }

    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
