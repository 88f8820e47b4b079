//! What the mesh needs beyond the CA: where each service's sidecars are,
//! and the authorization policies. Both are pushed on the watch stream.
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;
use ward_policy::DefaultAction;
use ward_store::PolicyRecord;

/// Endpoints are known only from live watch streams, so after a start
/// (an upgrade, a crash) they come back as sidecars reconnect, within
/// their backoff of at most 5 s. For this long the lists sent are marked
/// partial, and sidecars keep the endpoints they knew as well.
pub(crate) const ENDPOINTS_SETTLE: Duration = Duration::from_secs(15);

/// (SPIFFE ID, address) pairs.
pub(crate) type EndpointSet = BTreeSet<(String, String)>;

pub(crate) struct Mesh {
    /// SPIFFE ID → address → number of open streams advertising it.
    endpoints: Mutex<BTreeMap<String, BTreeMap<String, usize>>>,
    /// The endpoints other replicas on the same database have.
    remote: ArcSwap<EndpointSet>,
    /// Woken when this replica's own endpoints change.
    pub local_changed: tokio::sync::Notify,
    /// [`ENDPOINTS_SETTLE`] has passed since the start.
    settled: AtomicBool,
    policies: ArcSwap<Vec<PolicyRecord>>,
    /// The AuthorizationPolicies compiled, as every sidecar compiles them.
    compiled: ArcSwap<ward_policy::PolicySet>,
    /// Documents by what they select: (namespace, service or "" for the
    /// whole namespace) → JSON. A sidecar is sent only what applies to it.
    by_target: ArcSwap<std::collections::HashMap<(String, String), Vec<String>>>,
    pub default_action: DefaultAction,
    /// What concerns every watcher (the end of the start-up window).
    changed: watch::Sender<u64>,
    /// What concerns some watchers only, by [`Topic`]: a change wakes the
    /// watch streams it concerns and no other.
    topics: Mutex<std::collections::HashMap<Topic, watch::Sender<u64>>>,
}

/// Part of the mesh a watcher follows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    /// The endpoints of a service (its SPIFFE ID).
    Endpoints(String),
    /// The policies that apply to `namespace/service`.
    Policies(String, String),
}

/// Removes an advertised endpoint when its watch stream ends.
pub(crate) struct EndpointGuard {
    mesh: Arc<Mesh>,
    id: String,
    addr: String,
}

impl Drop for EndpointGuard {
    fn drop(&mut self) {
        self.mesh.remove(&self.id, &self.addr);
    }
}

impl Mesh {
    pub(crate) fn new(policies: Vec<PolicyRecord>, default_action: DefaultAction) -> Arc<Mesh> {
        Arc::new(Mesh {
            endpoints: Mutex::new(BTreeMap::new()),
            remote: ArcSwap::from_pointee(EndpointSet::new()),
            local_changed: tokio::sync::Notify::new(),
            settled: AtomicBool::new(false),
            compiled: ArcSwap::from_pointee(compile(&policies, default_action)),
            by_target: ArcSwap::from_pointee(index(&policies)),
            policies: ArcSwap::from_pointee(policies),
            default_action,
            changed: watch::channel(1).0,
            topics: Mutex::new(Default::default()),
        })
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    /// Changes that concern every watcher.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Changes of `topic`.
    pub(crate) fn subscribe_to(&self, topic: Topic) -> watch::Receiver<u64> {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics
            .entry(topic)
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes the watchers of each topic `which` selects; forgets topics
    /// nobody follows any more.
    fn fire(&self, which: impl Fn(&Topic) -> bool) {
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.retain(|topic, tx| {
            if which(topic) {
                tx.send_modify(|v| *v += 1);
            }
            tx.receiver_count() > 0
        });
    }

    fn endpoints_changed(&self, id: &str) {
        self.fire(|t| matches!(t, Topic::Endpoints(e) if e == id));
    }

    pub(crate) fn advertise(self: &Arc<Self>, id: &str, addr: &str) -> EndpointGuard {
        if let Ok(mut eps) = self.endpoints.lock() {
            *eps.entry(id.to_string())
                .or_default()
                .entry(addr.to_string())
                .or_default() += 1;
        }
        self.local_changed.notify_one();
        self.endpoints_changed(id);
        EndpointGuard {
            mesh: self.clone(),
            id: id.to_string(),
            addr: addr.to_string(),
        }
    }

    fn remove(&self, id: &str, addr: &str) {
        if let Ok(mut eps) = self.endpoints.lock() {
            if let Some(addrs) = eps.get_mut(id) {
                if let Some(n) = addrs.get_mut(addr) {
                    *n -= 1;
                    if *n == 0 {
                        addrs.remove(addr);
                    }
                }
                if addrs.is_empty() {
                    eps.remove(id);
                }
            }
        }
        self.local_changed.notify_one();
        self.endpoints_changed(id);
    }

    /// Marks the endpoint lists complete after `after`, and sends them.
    pub(crate) fn settle_after(self: &Arc<Self>, after: Duration) {
        let mesh = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            mesh.settled.store(true, Ordering::Relaxed);
            mesh.bump();
        });
    }

    /// Whether sidecars may still be reconnecting after the start.
    pub(crate) fn endpoints_partial(&self) -> bool {
        !self.settled.load(Ordering::Relaxed)
    }

    /// (SPIFFE ID, addresses) of each of `ids` with a live sidecar, on this
    /// replica or another, in ID order. Only those are looked at: a watch
    /// stream asks for its upstreams, not the whole mesh.
    pub(crate) fn endpoints_for(&self, ids: &BTreeSet<String>) -> Vec<(String, Vec<String>)> {
        let remote = self.remote.load();
        let Ok(local) = self.endpoints.lock() else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| {
                let mut addrs: BTreeSet<&String> = local
                    .get(id)
                    .map(|a| a.keys().collect())
                    .unwrap_or_default();
                addrs.extend(
                    remote
                        .range((id.clone(), String::new())..)
                        .take_while(|(rid, _)| rid == id)
                        .map(|(_, addr)| addr),
                );
                (!addrs.is_empty()).then(|| (id.clone(), addrs.into_iter().cloned().collect()))
            })
            .collect()
    }

    /// The endpoints of the sidecars connected to this replica.
    pub(crate) fn local_endpoints(&self) -> EndpointSet {
        self.endpoints
            .lock()
            .map(|eps| {
                eps.iter()
                    .flat_map(|(id, a)| a.keys().map(|addr| (id.clone(), addr.clone())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Sets what the other replicas have; tells watchers if it changed.
    pub(crate) fn set_remote(&self, remote: EndpointSet) {
        let old = self.remote.load_full();
        if *old != remote {
            let changed: BTreeSet<&String> = old
                .symmetric_difference(&remote)
                .map(|(id, _)| id)
                .collect();
            let changed: BTreeSet<String> = changed.into_iter().cloned().collect();
            self.remote.store(Arc::new(remote));
            self.fire(|t| matches!(t, Topic::Endpoints(e) if changed.contains(e)));
        }
    }

    pub(crate) fn policies(&self) -> Arc<Vec<PolicyRecord>> {
        self.policies.load_full()
    }

    pub(crate) fn set_policies(&self, policies: Vec<PolicyRecord>) {
        self.compiled
            .store(Arc::new(compile(&policies, self.default_action)));
        let new = index(&policies);
        let old = self.by_target.load_full();
        // (namespace, service) entries that differ; "" is the whole
        // namespace, which concerns every service in it.
        let changed: BTreeSet<(String, String)> = old
            .iter()
            .filter(|(k, v)| new.get(*k) != Some(*v))
            .chain(new.iter().filter(|(k, _)| !old.contains_key(*k)))
            .map(|(k, _)| k.clone())
            .collect();
        self.by_target.store(Arc::new(new));
        self.policies.store(Arc::new(policies));
        self.fire(|t| match t {
            Topic::Policies(ns, svc) => {
                changed.contains(&(ns.clone(), svc.clone()))
                    || changed.contains(&(ns.clone(), String::new()))
            }
            Topic::Endpoints(_) => false,
        });
    }

    /// The documents that apply to `namespace/service`: those selecting it
    /// and those for its whole namespace.
    pub(crate) fn policies_for(&self, namespace: &str, service: &str) -> Vec<String> {
        let idx = self.by_target.load();
        let key = |svc: &str| (namespace.to_string(), svc.to_string());
        idx.get(&key(service))
            .into_iter()
            .chain(idx.get(&key("")))
            .flatten()
            .cloned()
            .collect()
    }

    /// The policies in force, compiled.
    pub(crate) fn policy_set(&self) -> Arc<ward_policy::PolicySet> {
        self.compiled.load_full()
    }
}

fn index(records: &[PolicyRecord]) -> std::collections::HashMap<(String, String), Vec<String>> {
    let mut idx: std::collections::HashMap<(String, String), Vec<String>> = Default::default();
    for r in records {
        let Ok(doc) = ward_policy::parse_document(&r.spec_json) else {
            continue;
        };
        let svc = doc
            .selector()
            .map(|s| s.service.clone())
            .unwrap_or_default();
        idx.entry((r.namespace.clone(), svc))
            .or_default()
            .push(r.spec_json.clone());
    }
    idx
}

fn compile(records: &[PolicyRecord], default: DefaultAction) -> ward_policy::PolicySet {
    let policies = records
        .iter()
        .filter_map(|r| match ward_policy::parse_document(&r.spec_json) {
            Ok(ward_policy::Document::Authorization(p)) => Some(p),
            _ => None,
        })
        .collect();
    ward_policy::PolicySet::new(policies, default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn endpoint_lists_are_partial_until_sidecars_had_time_to_return() {
        let mesh = Mesh::new(Vec::new(), DefaultAction::Deny);
        let mut changes = mesh.subscribe();
        changes.borrow_and_update();
        mesh.settle_after(ENDPOINTS_SETTLE);
        assert!(mesh.endpoints_partial());
        tokio::time::sleep(ENDPOINTS_SETTLE - Duration::from_secs(1)).await;
        assert!(mesh.endpoints_partial());
        assert!(!changes.has_changed().unwrap());
        // Watchers are sent the complete list.
        changes.changed().await.unwrap();
        assert!(!mesh.endpoints_partial());
    }

    fn policy(ns: &str, name: &str, svc: Option<&str>) -> PolicyRecord {
        let selector = svc
            .map(|s| format!(r#""selector":{{"service":"{s}"}},"#))
            .unwrap_or_default();
        PolicyRecord {
            namespace: ns.into(),
            name: name.into(),
            spec_json: format!(
                r#"{{"apiVersion":"ward/v1","kind":"AuthorizationPolicy","metadata":{{"name":"{name}","namespace":"{ns}"}},"spec":{{{selector}"action":"DENY","rules":[{{}}]}}}}"#
            ),
            version: 1,
            updated_at: 0,
        }
    }

    /// A change wakes only the watchers it concerns.
    #[tokio::test]
    async fn a_change_wakes_only_the_watchers_it_concerns() {
        let mesh = Mesh::new(Vec::new(), DefaultAction::Deny);
        let topic = |ns: &str, svc: &str| Topic::Policies(ns.into(), svc.into());
        let mut a = mesh.subscribe_to(topic("default", "a"));
        let mut b = mesh.subscribe_to(topic("default", "b"));
        let mut other_ns = mesh.subscribe_to(topic("other", "a"));
        let mut ep_a = mesh.subscribe_to(Topic::Endpoints("spiffe://t/ns/default/sa/a".into()));
        let mut ep_b = mesh.subscribe_to(Topic::Endpoints("spiffe://t/ns/default/sa/b".into()));
        let woken = |rx: &mut watch::Receiver<u64>| {
            let w = rx.has_changed().unwrap();
            rx.borrow_and_update();
            w
        };
        mesh.set_policies(vec![policy("default", "p1", Some("a"))]);
        assert_eq!(
            [woken(&mut a), woken(&mut b), woken(&mut other_ns)],
            [true, false, false]
        );
        // A namespace-wide policy concerns every service in it.
        mesh.set_policies(vec![
            policy("default", "p1", Some("a")),
            policy("default", "all", None),
        ]);
        assert_eq!(
            [woken(&mut a), woken(&mut b), woken(&mut other_ns)],
            [true, true, false]
        );
        // The same policies again: nobody.
        mesh.set_policies(vec![
            policy("default", "p1", Some("a")),
            policy("default", "all", None),
        ]);
        assert_eq!([woken(&mut a), woken(&mut b)], [false, false]);
        let _g = mesh.advertise("spiffe://t/ns/default/sa/a", "127.0.0.1:1");
        assert_eq!(
            [woken(&mut ep_a), woken(&mut ep_b), woken(&mut a)],
            [true, false, false]
        );
        mesh.set_remote(
            [(
                "spiffe://t/ns/default/sa/b".to_string(),
                "127.0.0.2:1".to_string(),
            )]
            .into(),
        );
        assert_eq!([woken(&mut ep_a), woken(&mut ep_b)], [false, true]);
        // A topic nobody follows any more is forgotten.
        drop((a, b, other_ns, ep_b));
        mesh.set_policies(Vec::new());
        assert_eq!(mesh.topics.lock().unwrap().len(), 1);
    }
}
