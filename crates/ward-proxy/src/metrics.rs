use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub direction: &'static str,
    pub peer: String,
    pub status: u16,
    pub decision: &'static str,
}

/// Labels of the request-duration histogram: bounded, as Linkerd's and
/// Istio's are (peer service, never peer instance; status class).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DurationLabels {
    pub direction: &'static str,
    pub peer: String,
    pub status_class: &'static str,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct PeerLabels {
    pub direction: &'static str,
    pub peer: String,
}

/// Milliseconds, Istio's buckets with a finer start (a sidecar pair on one
/// host answers in well under a millisecond).
const DURATION_BUCKETS_MS: [f64; 17] = [
    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
    10000.0, 30000.0, 60000.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS_MS)
}

/// The request-duration histograms, one per label set.
pub(crate) type Durations = Family<DurationLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HandshakeLabels {
    pub direction: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TlsVersionLabels {
    pub direction: &'static str,
    pub version: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ProtocolLabels {
    pub direction: &'static str,
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ConnEndLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// `ward_proxy_peer_connections_closed_total`: shared connections between
/// sidecars that ended, and why. A handle, kept by the tasks that drive
/// them.
#[derive(Clone, Default)]
pub(crate) struct ConnectionEnds(Family<ConnEndLabels, Counter>);

impl ConnectionEnds {
    pub(crate) fn count(&self, direction: &'static str, reason: &'static str) {
        self.0
            .get_or_create(&ConnEndLabels { direction, reason })
            .inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabels {
    pub decision: &'static str,
    pub policy: String,
    pub dry_run: &'static str,
}

/// The counters one connection (or one upstream) has used, found by a key
/// the caller compares without building labels: the label set is built,
/// hashed and looked up in its family once instead of on every request.
pub(crate) struct Counters<K, M = Counter> {
    seen: std::sync::Mutex<Vec<(K, M)>>,
}

impl<K, M> Default for Counters<K, M> {
    fn default() -> Self {
        Counters {
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// At most this many counters are kept per holder; others are looked up
/// in their family every time.
const COUNTERS_KEPT: usize = 16;

impl<K> Counters<K> {
    /// Increments the counter whose key `is` accepts; the first time,
    /// `make` gives its key and the family's counter.
    pub(crate) fn inc(&self, is: impl Fn(&K) -> bool, make: impl FnOnce() -> (K, Counter)) {
        self.with(is, make, |c| {
            c.inc();
        });
    }
}

impl<K, M> Counters<K, M> {
    /// Runs `f` on the metric whose key `is` accepts; the first time,
    /// `make` gives its key and the family's metric.
    pub(crate) fn with(
        &self,
        is: impl Fn(&K) -> bool,
        make: impl FnOnce() -> (K, M),
        f: impl FnOnce(&M),
    ) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, m)) = seen.iter().find(|(k, _)| is(k)) {
            f(m);
            return;
        }
        let (k, m) = make();
        f(&m);
        if seen.len() < COUNTERS_KEPT {
            seen.push((k, m));
        }
    }
}

pub(crate) struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub durations: Durations,
    pub request_bytes: Family<PeerLabels, Counter>,
    pub response_bytes: Family<PeerLabels, Counter>,
    pub handshakes: Family<HandshakeLabels, Counter>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub tcp_connections: Family<HandshakeLabels, Counter>,
    pub cert_expiry: Gauge,
    pub tls_versions: Family<TlsVersionLabels, Counter>,
    pub resumptions: Family<DirectionLabels, Counter>,
    pub peer_connections_closed: ConnectionEnds,
    /// Connections from other sidecars, by the protocol they negotiated.
    pub peer_connections: Family<ProtocolLabels, Counter>,
    /// Log lines dropped because the log writer fell behind, brought up to
    /// date from `log_drops` whenever the metrics are read.
    log_lines_dropped: Counter,
    log_drops: std::sync::OnceLock<Box<dyn Fn() -> u64 + Send + Sync>>,
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
        let resumptions = Family::<DirectionLabels, Counter>::default();
        let peer_connections_closed = ConnectionEnds::default();
        let peer_connections = Family::<ProtocolLabels, Counter>::default();
        let log_lines_dropped = Counter::default();
        let durations: Durations = Family::new_with_constructor(duration_histogram);
        let request_bytes = Family::<PeerLabels, Counter>::default();
        let response_bytes = Family::<PeerLabels, Counter>::default();
        registry.register(
            "ward_proxy_request_duration_milliseconds",
            "HTTP request duration until the response head, by direction, peer service, status class and decision",
            durations.clone(),
        );
        registry.register(
            "ward_proxy_request_bytes",
            "Request body bytes, by direction and peer service",
            request_bytes.clone(),
        );
        registry.register(
            "ward_proxy_response_bytes",
            "Response body bytes, by direction and peer service",
            response_bytes.clone(),
        );
        registry.register_collector(Box::new(ward_http::ProcessCollector::new()));
        registry.register(
            "ward_proxy_log_lines_dropped",
            "Log lines (the access log's included) dropped because the log writer fell behind",
            log_lines_dropped.clone(),
        );
        registry.register(
            "ward_proxy_peer_connections_closed",
            "Shared connections between sidecars (ward-mux) that ended, by direction and reason",
            peer_connections_closed.0.clone(),
        );
        registry.register(
            "ward_proxy_peer_connections",
            "mTLS connections from other sidecars, by direction and the protocol negotiated (ALPN; hbone on the HBONE port)",
            peer_connections.clone(),
        );
        registry.register(
            "ward_proxy_tls_resumptions",
            "Completed handshakes that resumed an earlier session, by direction",
            resumptions.clone(),
        );
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
            durations,
            request_bytes,
            response_bytes,
            handshakes,
            decisions,
            tcp_connections,
            cert_expiry,
            tls_versions,
            resumptions,
            peer_connections_closed,
            peer_connections,
            log_lines_dropped,
            log_drops: std::sync::OnceLock::new(),
        }
    }

    /// Where the count of dropped log lines comes from.
    pub(crate) fn count_log_drops(&self, source: impl Fn() -> u64 + Send + Sync + 'static) {
        let _ = self.log_drops.set(Box::new(source));
    }

    /// A TLS handshake's outcome (`ward_proxy_tls_handshakes_total`).
    pub(crate) fn count_handshake(&self, direction: &'static str, result: &'static str) {
        self.handshakes
            .get_or_create(&HandshakeLabels { direction, result })
            .inc();
    }

    /// Counts `conn`'s handshake if it resumed a session.
    pub(crate) fn count_resumption(&self, direction: &'static str, conn: &rustls::CommonState) {
        if conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
            self.resumptions
                .get_or_create(&DirectionLabels { direction })
                .inc();
        }
    }

    pub(crate) fn encode(&self) -> String {
        if let Some(source) = self.log_drops.get() {
            let (now, seen) = (source(), self.log_lines_dropped.get());
            if now > seen {
                self.log_lines_dropped.inc_by(now - seen);
            }
        }
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_counters_are_the_family_counters() {
        let m = Metrics::new();
        let kept = Counters::<u16>::default();
        let labels = |status| RequestLabels {
            direction: "inbound",
            peer: "spiffe://td/ns/a/sa/b".into(),
            status,
            decision: "allow",
        };
        for status in [200, 200, 503, 200] {
            kept.inc(
                |k| *k == status,
                || (status, m.requests.get_or_create(&labels(status)).clone()),
            );
        }
        assert_eq!(m.requests.get_or_create(&labels(200)).get(), 3);
        assert_eq!(m.requests.get_or_create(&labels(503)).get(), 1);
        assert!(m.encode().contains("status=\"200\",decision=\"allow\"} 3"));
        // Beyond the kept ones, increments still reach the family.
        for status in 0..(COUNTERS_KEPT as u16 + 5) {
            kept.inc(
                |k| *k == 1000 + status,
                || {
                    (
                        1000 + status,
                        m.requests.get_or_create(&labels(1000 + status)).clone(),
                    )
                },
            );
        }
        kept.inc(
            |k| *k == 1020,
            || (1020, m.requests.get_or_create(&labels(1020)).clone()),
        );
        assert_eq!(m.requests.get_or_create(&labels(1020)).get(), 2);
    }
}
