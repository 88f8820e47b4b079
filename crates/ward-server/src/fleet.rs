//! The sidecars and agents connected to this server (one per open watch
//! stream) and the traffic they report on it, for `ward status`,
//! `ward top` and the dashboard.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use ward_api::v1::TrafficCount;

use crate::state::AppState;

/// The most counts one report may carry (the sidecar folds the rest into
/// one count with an empty peer).
pub(crate) const MAX_COUNTS: usize = 512;
/// Longest peer SPIFFE ID or policy name a report may carry.
const MAX_NAME: usize = 2048;
/// A watcher's traffic is forgotten this long after its last report
/// (seconds), so that the graph outlives a reconnect but not a removal.
const FORGET_AFTER_MS: i64 = 300_000;

/// A watcher as it introduced itself on its stream, and when it was last
/// heard from.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Watcher {
    pub spiffe_id: String,
    /// Unix seconds: when the stream opened.
    pub since: i64,
    /// "sidecar" or "agent" (empty from older releases).
    pub kind: String,
    pub version: String,
    /// Random, chosen by the watcher; names it among its service's
    /// replicas.
    pub instance: String,
    /// The address its connection comes from.
    pub remote: String,
    /// Where it accepts inbound mTLS (empty: nowhere).
    pub advertise: String,
    /// Unix seconds: expiry of its current certificate (the one it
    /// connected with, until a report names a renewed one).
    pub cert_not_after: i64,
    /// Unix seconds: the stream's opening or its last traffic report.
    pub last_seen: i64,
}

/// Workloads following the watch stream.
#[derive(Default)]
pub(crate) struct Watchers {
    next: AtomicU64,
    live: Mutex<Live>,
}

#[derive(Default)]
struct Live {
    by_id: HashMap<u64, Watcher>,
    /// (SPIFFE ID, instance) to its streams' ids (more than one while a
    /// reconnect overlaps the old stream), so that a report finds its
    /// watcher without a scan of the fleet.
    by_instance: HashMap<(String, String), Vec<u64>>,
}

impl Live {
    fn insert(&mut self, id: u64, watcher: Watcher) {
        let key = (watcher.spiffe_id.clone(), watcher.instance.clone());
        self.by_instance.entry(key).or_default().push(id);
        self.by_id.insert(id, watcher);
    }

    fn remove(&mut self, id: u64) {
        let Some(w) = self.by_id.remove(&id) else {
            return;
        };
        let key = (w.spiffe_id, w.instance);
        if let Some(ids) = self.by_instance.get_mut(&key) {
            ids.retain(|i| *i != id);
            if ids.is_empty() {
                self.by_instance.remove(&key);
            }
        }
    }
}

/// Removes its watcher from the list when the stream ends.
pub(crate) struct WatchGuard {
    id: u64,
    state: Arc<AppState>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        if let Ok(mut live) = self.state.watchers.live.lock() {
            live.remove(self.id);
        }
        self.state.metrics.watch_streams.dec();
    }
}

impl Watchers {
    pub(crate) fn add(state: &Arc<AppState>, watcher: Watcher) -> WatchGuard {
        let id = state.watchers.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut live) = state.watchers.live.lock() {
            live.insert(id, watcher);
        }
        state.metrics.watch_streams.inc();
        WatchGuard {
            id,
            state: state.clone(),
        }
    }

    /// Every live stream's watcher, by SPIFFE ID, then age.
    pub(crate) fn list(&self) -> Vec<Watcher> {
        let mut v: Vec<Watcher> = self
            .live
            .lock()
            .map(|l| l.by_id.values().cloned().collect())
            .unwrap_or_default();
        v.sort_by(|a, b| (&a.spiffe_id, a.since).cmp(&(&b.spiffe_id, b.since)));
        v
    }

    /// Marks the live watcher `instance` of `spiffe_id` as heard from now;
    /// false if there is none (a report must come from a watcher whose
    /// stream is open, so that reports cannot outnumber streams).
    fn touch(&self, spiffe_id: &str, instance: &str, cert_not_after: i64, now: i64) -> bool {
        let Ok(mut live) = self.live.lock() else {
            return false;
        };
        let live = &mut *live;
        let key = (spiffe_id.to_string(), instance.to_string());
        let Some(ids) = live.by_instance.get(&key) else {
            return false;
        };
        for id in ids {
            if let Some(w) = live.by_id.get_mut(id) {
                w.last_seen = now;
                if cert_not_after > 0 {
                    w.cert_not_after = cert_not_after;
                }
            }
        }
        true
    }
}

/// Why a traffic report was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error("no open watch stream of {0} has instance {1:?}: send reports on the connection of your watch stream, with its instance")]
    NoStream(String, String),
    #[error("{0}")]
    Invalid(String),
}

/// The counts of one (peer, decision, policy).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Key {
    peer: String,
    allowed: bool,
    policy: String,
}

struct Reported {
    destination: String,
    at_ms: i64,
    /// Cumulative requests, and the rate since the report before.
    counts: HashMap<Key, (u64, f64)>,
}

/// The latest report of every watcher instance.
#[derive(Default)]
pub(crate) struct Traffic {
    reporters: Mutex<HashMap<String, Reported>>,
}

/// Requests from one service to another, over every instance that
/// reported them.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub(crate) struct Edge {
    /// The caller's SPIFFE ID ("" when it had none).
    pub source: String,
    /// The reporting sidecar's SPIFFE ID.
    pub destination: String,
    pub allowed: u64,
    pub denied: u64,
    /// Requests per second over the last report interval.
    pub rate: f64,
    /// Denied requests by the policy that decided.
    pub denied_by: Vec<PolicyCount>,
    /// Allowed requests by the policy that decided.
    pub allowed_by: Vec<PolicyCount>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub(crate) struct PolicyCount {
    pub policy: String,
    pub requests: u64,
}

/// Takes a report from `spiffe_id`'s watcher `instance`: checked against
/// the live streams, bounded, and kept as its latest.
pub(crate) fn record(
    state: &AppState,
    spiffe_id: &str,
    report: ward_api::v1::TrafficReport,
    now_ms: i64,
) -> Result<(), ReportError> {
    let keys = validate(&report.counts)?;
    if !state.watchers.touch(
        spiffe_id,
        &report.instance,
        report.cert_not_after,
        now_ms / 1000,
    ) {
        return Err(ReportError::NoStream(
            spiffe_id.to_string(),
            report.instance,
        ));
    }
    state
        .traffic
        .record(spiffe_id, report.instance, keys, now_ms);
    Ok(())
}

fn validate(counts: &[TrafficCount]) -> Result<Vec<(Key, u64)>, ReportError> {
    if counts.len() > MAX_COUNTS {
        return Err(ReportError::Invalid(format!(
            "a report carries at most {MAX_COUNTS} counts, not {}: fold the rest into one with an empty peer",
            counts.len()
        )));
    }
    counts
        .iter()
        .map(|c| {
            let allowed = match c.decision.as_str() {
                "allow" => true,
                "deny" => false,
                other => {
                    return Err(ReportError::Invalid(format!(
                        "decision must be \"allow\" or \"deny\", not {other:?}"
                    )))
                }
            };
            if c.peer.len() > MAX_NAME || c.policy.len() > MAX_NAME {
                return Err(ReportError::Invalid(format!(
                    "peer and policy are at most {MAX_NAME} bytes"
                )));
            }
            let key = Key {
                peer: c.peer.clone(),
                allowed,
                policy: c.policy.clone(),
            };
            Ok((key, c.requests))
        })
        .collect()
}

impl Traffic {
    fn record(&self, destination: &str, instance: String, counts: Vec<(Key, u64)>, now_ms: i64) {
        let Ok(mut reporters) = self.reporters.lock() else {
            return;
        };
        reporters.retain(|_, r| now_ms - r.at_ms < FORGET_AFTER_MS);
        let before = reporters.remove(&instance);
        let dt = before
            .as_ref()
            .map(|b| (now_ms - b.at_ms) as f64 / 1000.0)
            .filter(|dt| *dt > 0.0);
        let counts = counts
            .into_iter()
            .map(|(k, n)| {
                let prev = before.as_ref().and_then(|b| b.counts.get(&k)).map(|c| c.0);
                let rate = match (prev, dt) {
                    (Some(p), Some(dt)) if n >= p => (n - p) as f64 / dt,
                    (None, Some(dt)) => n as f64 / dt,
                    _ => 0.0,
                };
                (k, (n, rate))
            })
            .collect();
        reporters.insert(
            instance,
            Reported {
                destination: destination.to_string(),
                at_ms: now_ms,
                counts,
            },
        );
    }

    /// Who calls whom, summed over the instances heard from in the last
    /// five minutes, busiest first.
    pub(crate) fn edges(&self, now_ms: i64) -> Vec<Edge> {
        let Ok(reporters) = self.reporters.lock() else {
            return Vec::new();
        };
        let mut edges: HashMap<(&str, &str), Edge> = HashMap::new();
        for r in reporters
            .values()
            .filter(|r| now_ms - r.at_ms < FORGET_AFTER_MS)
        {
            for (k, (n, rate)) in &r.counts {
                let e = edges
                    .entry((k.peer.as_str(), r.destination.as_str()))
                    .or_insert_with(|| Edge {
                        source: k.peer.clone(),
                        destination: r.destination.clone(),
                        ..Default::default()
                    });
                e.rate += rate;
                let (total, by) = if k.allowed {
                    (&mut e.allowed, &mut e.allowed_by)
                } else {
                    (&mut e.denied, &mut e.denied_by)
                };
                *total += n;
                match by.iter_mut().find(|p| p.policy == k.policy) {
                    Some(p) => p.requests += n,
                    None => by.push(PolicyCount {
                        policy: k.policy.clone(),
                        requests: *n,
                    }),
                }
            }
        }
        let mut edges: Vec<Edge> = edges.into_values().collect();
        for e in &mut edges {
            e.rate = (e.rate * 100.0).round() / 100.0;
            e.denied_by.sort_by_key(|p| std::cmp::Reverse(p.requests));
            e.allowed_by.sort_by_key(|p| std::cmp::Reverse(p.requests));
        }
        edges.sort_by(|a, b| {
            (b.allowed + b.denied)
                .cmp(&(a.allowed + a.denied))
                .then_with(|| (&a.source, &a.destination).cmp(&(&b.source, &b.destination)))
        });
        edges
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(peer: &str, decision: &str, policy: &str, requests: u64) -> TrafficCount {
        TrafficCount {
            peer: peer.into(),
            decision: decision.into(),
            policy: policy.into(),
            requests,
        }
    }

    fn keys(counts: &[TrafficCount]) -> Vec<(Key, u64)> {
        validate(counts).unwrap()
    }

    fn watcher(spiffe_id: &str, instance: &str) -> Watcher {
        Watcher {
            spiffe_id: spiffe_id.into(),
            since: 1,
            kind: "sidecar".into(),
            version: String::new(),
            instance: instance.into(),
            remote: String::new(),
            advertise: String::new(),
            cert_not_after: 10,
            last_seen: 1,
        }
    }

    #[test]
    fn a_report_finds_its_streams_by_identity_and_instance() {
        let w = Watchers::default();
        let a = "spiffe://td/ns/default/sa/a";
        {
            let mut live = w.live.lock().unwrap();
            live.insert(1, watcher(a, "i1"));
            // A reconnect that overlaps the old stream.
            live.insert(2, watcher(a, "i1"));
            live.insert(3, watcher(a, "i2"));
        }
        assert!(!w.touch(a, "other", 0, 5));
        assert!(!w.touch("spiffe://td/ns/default/sa/b", "i1", 0, 5));
        assert!(w.touch(a, "i1", 99, 5));
        let seen: Vec<(i64, i64)> = w
            .list()
            .iter()
            .filter(|x| x.instance == "i1")
            .map(|x| (x.last_seen, x.cert_not_after))
            .collect();
        assert_eq!(seen, vec![(5, 99), (5, 99)]);
        w.live.lock().unwrap().remove(1);
        assert!(w.touch(a, "i1", 0, 6), "the newer stream is still open");
        w.live.lock().unwrap().remove(2);
        assert!(!w.touch(a, "i1", 0, 7), "no stream of i1 is left");
        assert!(w.touch(a, "i2", 0, 7));
        assert_eq!(w.live.lock().unwrap().by_instance.len(), 1);
    }

    #[test]
    fn edges_sum_instances_and_attribute_denials_to_policies() {
        let t = Traffic::default();
        let a = "spiffe://td/ns/default/sa/a";
        let b = "spiffe://td/ns/default/sa/b";
        t.record(
            b,
            "i1".into(),
            keys(&[
                count(a, "allow", "default/allow-a", 10),
                count(a, "deny", "default/no-admin", 2),
            ]),
            1_000,
        );
        t.record(
            b,
            "i2".into(),
            keys(&[count(a, "allow", "default/allow-a", 5)]),
            1_000,
        );
        // The second report of i1: 10 more allowed in 10 s.
        t.record(
            b,
            "i1".into(),
            keys(&[
                count(a, "allow", "default/allow-a", 20),
                count(a, "deny", "default/no-admin", 2),
            ]),
            11_000,
        );
        let edges = t.edges(11_000);
        assert_eq!(edges.len(), 1);
        let e = &edges[0];
        assert_eq!((e.source.as_str(), e.destination.as_str()), (a, b));
        assert_eq!((e.allowed, e.denied), (25, 2));
        assert_eq!(e.rate, 1.0);
        assert_eq!(
            e.denied_by,
            vec![PolicyCount {
                policy: "default/no-admin".into(),
                requests: 2
            }]
        );
        // Five minutes without a report: forgotten.
        assert!(t.edges(11_000 + FORGET_AFTER_MS).is_empty());
    }

    #[test]
    fn reports_are_bounded_and_decisions_named() {
        let many: Vec<_> = (0..=MAX_COUNTS)
            .map(|i| count(&format!("spiffe://td/x/{i}"), "allow", "p", 1))
            .collect();
        assert!(matches!(validate(&many), Err(ReportError::Invalid(_))));
        assert!(matches!(
            validate(&[count("", "maybe", "p", 1)]),
            Err(ReportError::Invalid(m)) if m.contains("\"maybe\"")
        ));
        assert!(validate(&[count(&"x".repeat(MAX_NAME + 1), "deny", "p", 1)]).is_err());
    }
}
