//! Inbound requests counted by caller, decision and deciding policy, for
//! the traffic reports the control plane's dashboard and `ward top` read
//! (`ReportTraffic`, on the watch stream's connection).
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ward_api::v1::TrafficCount;

/// The most (peer, decision, policy) counts kept, as a report may carry;
/// the rest are counted under an empty peer and policy, by decision.
const MAX_KEYS: usize = 510;

type Key = (String, &'static str, String);

#[derive(Default)]
pub(crate) struct Traffic {
    counts: Mutex<HashMap<Key, Arc<AtomicU64>>>,
}

impl Traffic {
    /// The counter of requests from `peer` that `decision` (`allow` or
    /// `deny`) took under `policy`.
    pub(crate) fn counter(
        &self,
        peer: &str,
        decision: &'static str,
        policy: &str,
    ) -> Arc<AtomicU64> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = counts.get(&(peer.to_string(), decision, policy.to_string())) {
            return c.clone();
        }
        let key = if counts.len() < MAX_KEYS {
            (peer.to_string(), decision, policy.to_string())
        } else {
            (String::new(), decision, String::new())
        };
        counts.entry(key).or_default().clone()
    }

    /// Every count, cumulative since start.
    pub(crate) fn report(&self) -> Vec<TrafficCount> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts
            .iter()
            .map(|((peer, decision, policy), n)| TrafficCount {
                peer: peer.clone(),
                decision: decision.to_string(),
                policy: policy.clone(),
                requests: n.load(Ordering::Relaxed),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_bounded_and_the_rest_folded_by_decision() {
        let t = Traffic::default();
        t.counter("spiffe://td/a", "allow", "p")
            .fetch_add(2, Ordering::Relaxed);
        t.counter("spiffe://td/a", "allow", "p")
            .fetch_add(1, Ordering::Relaxed);
        for i in 0..2 * MAX_KEYS {
            t.counter(&format!("spiffe://td/{i}"), "deny", "q")
                .fetch_add(1, Ordering::Relaxed);
        }
        let r = t.report();
        assert!(r.len() <= MAX_KEYS + 2, "{}", r.len());
        let a = r.iter().find(|c| c.peer == "spiffe://td/a").unwrap();
        assert_eq!(
            (a.decision.as_str(), a.policy.as_str(), a.requests),
            ("allow", "p", 3)
        );
        let total: u64 = r
            .iter()
            .filter(|c| c.decision == "deny")
            .map(|c| c.requests)
            .sum();
        assert_eq!(total, 2 * MAX_KEYS as u64);
    }
}
