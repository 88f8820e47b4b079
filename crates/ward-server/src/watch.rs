//! The watch stream's contents: what one watcher needs, sent when it
//! changes. A stream wakes only on what concerns its watcher: the trust
//! bundle, revocations and signing keys (every watcher), the policies of
//! its own service and the endpoints of its upstreams ([`Topic`]). The
//! first message is the whole state; with `deltas` the next ones carry
//! only what changed ([`ward_api::delta`]).
//!
//! What every watcher receives alike (bundle, revocations, keys) is kept
//! once for all streams ([`Common`]); each stream holds its own copy only
//! of its scoped part (its policies and upstreams' endpoints), so a
//! stream's memory does not grow with the revocation list. It is built,
//! and its delta computed, once per change, not once per stream.
use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::stream::{select_all, BoxStream};
use futures_util::{FutureExt, Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;
use tonic::Status;
use ward_api::v1::{ServiceEndpoints, TrustBundle, WatchResponse};

use crate::ca::TrustSnapshot;
use crate::mesh::Topic;
use crate::state::AppState;

pub(crate) type Messages = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

/// One watcher: who it is and what it asked for.
pub(crate) struct Watcher {
    pub id: String,
    pub upstreams: BTreeSet<String>,
    pub unregistered: Vec<String>,
    pub deltas: bool,
}

/// The watcher's messages for as long as the stream is open; `keep` (the
/// registration of its endpoint and of the stream) lives as long.
pub(crate) fn messages(
    state: Arc<AppState>,
    watcher: Watcher,
    keep: impl Send + 'static,
) -> Messages {
    let service = ward_identity::SpiffeId::parse(&watcher.id)
        .ok()
        .and_then(|id| {
            id.service_account()
                .map(|(ns, svc)| (ns.to_string(), svc.to_string()))
        });
    let mut wakes = vec![state.watch_common.wake(&state)];
    if let Some((ns, svc)) = &service {
        let topic = Topic::Policies(ns.clone(), svc.clone());
        wakes.push(state.mesh.subscribe_to(topic));
    }
    for u in &watcher.upstreams {
        wakes.push(state.mesh.subscribe_to(Topic::Endpoints(u.clone())));
    }
    let sender = Sender {
        state,
        watcher,
        service,
        last: None,
        _keep: Box::new(keep),
    };
    // The first message goes out at once; after that, one per wake that
    // changed what the watcher receives.
    let stream = futures_util::stream::unfold(
        (wakes, sender, true),
        |(mut wakes, mut sender, mut woken)| async move {
            loop {
                if woken {
                    if let Some(msg) = sender.next() {
                        return Some((Ok(msg), (wakes, sender, false)));
                    }
                }
                if !changed(&mut wakes).await {
                    return None;
                }
                woken = true;
            }
        },
    );
    Box::pin(stream)
}

/// Waits until one of `wakes` changes, then marks all of them seen, so
/// that a burst of changes is one wake. A receiver whose sender is gone
/// is dropped; `false` once none is left.
///
/// The receivers are waited on directly rather than as streams: a
/// stream per receiver cost every open watch stream about 300 bytes per
/// receiver for as long as it was open.
async fn changed(wakes: &mut Vec<tokio::sync::watch::Receiver<u64>>) -> bool {
    loop {
        if wakes.is_empty() {
            return false;
        }
        let (done, i, rest) =
            futures_util::future::select_all(wakes.iter_mut().map(|rx| Box::pin(rx.changed())))
                .await;
        drop(rest);
        if done.is_err() {
            wakes.swap_remove(i);
            continue;
        }
        for rx in wakes.iter_mut() {
            rx.mark_unchanged();
        }
        return true;
    }
}

struct Sender {
    state: Arc<AppState>,
    watcher: Watcher,
    /// The watcher's (namespace, service).
    service: Option<(String, String)>,
    /// The state last sent.
    last: Option<Sent>,
    _keep: Box<dyn Send>,
}

/// A state sent: the watcher's own part, and the part common to all
/// watchers (shared, not copied).
struct Sent {
    version: u64,
    own: WatchResponse,
    common: Arc<WatchResponse>,
}

impl Sender {
    /// The next message, if what the watcher receives changed.
    fn next(&mut self) -> Option<WatchResponse> {
        let own = scoped(&self.state, self.service.as_ref(), &self.watcher.upstreams);
        let common = self.state.watch_common.current(&self.state);
        let common_delta = |from: &Arc<WatchResponse>, to: &Arc<WatchResponse>| {
            self.state.watch_common.delta(from, to)
        };
        let msg = message(
            self.last.as_ref(),
            &own,
            &common,
            common_delta,
            &self.watcher,
        )?;
        self.last = Some(Sent {
            version: msg.version,
            own,
            common,
        });
        Some(msg)
    }
}

/// The message that takes `watcher` from `last` (nothing yet: `None`) to
/// the state made of `own` and `common`, or `None` if that is what it
/// holds: the whole state, or with `deltas` after the first, what changed.
/// `common_delta` gives the delta between two common parts.
fn message(
    last: Option<&Sent>,
    own: &WatchResponse,
    common: &Arc<WatchResponse>,
    common_delta: impl FnOnce(&Arc<WatchResponse>, &Arc<WatchResponse>) -> Option<WatchResponse>,
    watcher: &Watcher,
) -> Option<WatchResponse> {
    let version = last.map_or(1, |l| l.version + 1);
    let mut msg = match last {
        Some(last) if watcher.deltas => {
            let own_delta = ward_api::delta(&last.own, own);
            let common_delta = if Arc::ptr_eq(&last.common, common) {
                None
            } else {
                common_delta(&last.common, common)
            };
            let mut d = match (own_delta, common_delta) {
                (None, None) => return None,
                (Some(o), None) => o,
                (None, Some(c)) => c,
                (Some(o), Some(c)) => joined(o, &c),
            };
            d.endpoints_partial = common.endpoints_partial;
            d.base_version = last.version;
            d
        }
        Some(last)
            if last.own == *own
                && (Arc::ptr_eq(&last.common, common) || *last.common == **common) =>
        {
            return None
        }
        _ => {
            let mut whole = joined(own.clone(), common);
            whole.unregistered_upstreams = watcher.unregistered.clone();
            whole
        }
    };
    msg.version = version;
    Some(msg)
}

/// The common part with the watcher's own fields (those [`scoped`]
/// fills, and whether its policies changed) taken from `own`.
fn joined(own: WatchResponse, common: &WatchResponse) -> WatchResponse {
    WatchResponse {
        endpoints: own.endpoints,
        policies_json: own.policies_json,
        policies_changed: own.policies_changed,
        ..common.clone()
    }
}

/// The part of a watcher's state that is its own: the endpoints of its
/// upstreams and the policies of its service.
fn scoped(
    state: &AppState,
    service: Option<&(String, String)>,
    upstreams: &BTreeSet<String>,
) -> WatchResponse {
    WatchResponse {
        endpoints: state
            .mesh
            .endpoints_for(upstreams)
            .into_iter()
            .map(|(spiffe_id, addresses)| ServiceEndpoints {
                spiffe_id,
                addresses,
            })
            .collect(),
        // Only what applies to the watcher's own service.
        policies_json: service
            .map(|(ns, svc)| state.mesh.policies_for(ns, svc))
            .unwrap_or_default(),
        ..Default::default()
    }
}

/// The part of the state every watcher receives alike, kept once: a
/// stream holds the same `Arc` as all the others that saw the same state.
/// It is built again only after one of its sources announced a change,
/// once for all the streams that wake on that change, not once each.
#[derive(Default)]
pub(crate) struct Common {
    built: Mutex<Option<(Sources, Arc<WatchResponse>)>>,
    /// The last delta asked for, between the two parts it joins: every
    /// stream that wakes on a change asks for the same one.
    delta: Mutex<Option<CommonDelta>>,
    /// Bumped when any source of the common part announces a change, by
    /// one task that follows them all ([`relay`]): each stream follows
    /// this one channel instead of a subscription to every source, which
    /// cost every open stream about 300 bytes per source.
    wake: OnceLock<tokio::sync::watch::Sender<u64>>,
}

struct CommonDelta {
    from: Arc<WatchResponse>,
    to: Arc<WatchResponse>,
    delta: Option<WatchResponse>,
}

impl Common {
    /// A receiver that changes after every change to a source of the
    /// common part.
    fn wake(&self, state: &AppState) -> tokio::sync::watch::Receiver<u64> {
        self.wake
            .get_or_init(|| {
                let tx = tokio::sync::watch::Sender::new(0);
                tokio::spawn(relay(Sources::of(state).wakes(), tx.clone()));
                tx
            })
            .subscribe()
    }

    /// What changed from `from` to `to`, computed once for all streams
    /// that go from one to the other.
    fn delta(&self, from: &Arc<WatchResponse>, to: &Arc<WatchResponse>) -> Option<WatchResponse> {
        let mut held = self.delta.lock().unwrap_or_else(|e| e.into_inner());
        match &*held {
            Some(d) if Arc::ptr_eq(&d.from, from) && Arc::ptr_eq(&d.to, to) => d.delta.clone(),
            _ => {
                let delta = ward_api::delta(from, to);
                *held = Some(CommonDelta {
                    from: from.clone(),
                    to: to.clone(),
                    delta: delta.clone(),
                });
                delta
            }
        }
    }

    fn current(&self, state: &AppState) -> Arc<WatchResponse> {
        let mut held = self.built.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *held {
            Some((sources, built)) => {
                // Marked seen before building: a change that comes while
                // building is seen by the next call.
                if sources.changed() {
                    let now = common(state);
                    if **built != now {
                        *built = Arc::new(now);
                    }
                }
                built.clone()
            }
            None => {
                // Subscribed before building, for the same reason.
                let sources = Sources::of(state);
                let built = Arc::new(common(state));
                *held = Some((sources, built.clone()));
                built
            }
        }
    }
}

/// Where the common part comes from, one receiver each: the CA's trust
/// snapshot (bundle, revoked serials), the mesh's changes for every
/// watcher (the end of the start-up window), revoked tokens, and the
/// two key sets. Every change to what [`common`] reads is announced on
/// one of them, and [`relay`] passes each on to every stream.
struct Sources {
    trust: tokio::sync::watch::Receiver<Arc<TrustSnapshot>>,
    counters: [tokio::sync::watch::Receiver<u64>; 4],
}

impl Sources {
    fn of(state: &AppState) -> Self {
        Sources {
            trust: state.ca.subscribe(),
            counters: [
                state.mesh.subscribe(),
                state.oauth.changed.subscribe(),
                state.oauth.keys.changed.subscribe(),
                state.jwt_svids.keys.changed.subscribe(),
            ],
        }
    }

    /// A wake for each change of each source after this call.
    fn wakes(self) -> Vec<BoxStream<'static, ()>> {
        let mut wakes = vec![WatchStream::from_changes(self.trust).map(|_| ()).boxed()];
        for rx in self.counters {
            wakes.push(WatchStream::from_changes(rx).map(|_| ()).boxed());
        }
        wakes
    }

    /// Whether any source changed since the last call, marking each seen.
    /// A source whose sender is gone counts as changed.
    fn changed(&mut self) -> bool {
        let mut changed = self.trust.has_changed().unwrap_or(true);
        self.trust.mark_unchanged();
        for rx in &mut self.counters {
            changed |= rx.has_changed().unwrap_or(true);
            rx.mark_unchanged();
        }
        changed
    }
}

/// Bumps `tx` after every wake of `wakes` (a burst of them, one bump),
/// until all of them have ended.
async fn relay(wakes: Vec<BoxStream<'static, ()>>, tx: tokio::sync::watch::Sender<u64>) {
    let mut wakes = select_all(wakes);
    while wakes.next().await.is_some() {
        while let Some(Some(())) = wakes.next().now_or_never() {}
        tx.send_modify(|v| *v += 1);
    }
}

fn common(state: &AppState) -> WatchResponse {
    let s: Arc<TrustSnapshot> = state.ca.snapshot();
    let mut revoked: Vec<String> = s.revoked.iter().cloned().collect();
    revoked.sort();
    let mut revoked_token_ids = state.oauth.revoked_ids();
    revoked_token_ids.sort();
    WatchResponse {
        bundle: Some(TrustBundle {
            trust_domain: s.trust_domain.to_string(),
            x509_authorities: s.bundle.iter().map(|c| c.to_vec()).collect(),
            refresh_hint: 300,
        }),
        revoked_serials: revoked,
        endpoints_partial: state.mesh.endpoints_partial(),
        revoked_token_ids,
        issuer: state.oauth.issuer.clone(),
        jwks_json: state.oauth.jwks().to_string(),
        jwt_authorities_json: state.jwt_svids.keys.jwks().to_string(),
        default_action: match state.mesh.default_action {
            ward_policy::DefaultAction::Deny => "deny".into(),
            ward_policy::DefaultAction::Allow => "allow".into(),
        },
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watcher(deltas: bool) -> Watcher {
        Watcher {
            id: "spiffe://ward.internal/ns/default/sa/web".into(),
            upstreams: BTreeSet::new(),
            unregistered: vec!["default/ghost".into()],
            deltas,
        }
    }

    fn own(addresses: &[&str], policies: &[&str]) -> WatchResponse {
        WatchResponse {
            endpoints: vec![ServiceEndpoints {
                spiffe_id: "spiffe://ward.internal/ns/default/sa/api".into(),
                addresses: addresses.iter().map(|a| a.to_string()).collect(),
            }],
            policies_json: policies.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    fn common(revoked: &[&str], jwks: &str, partial: bool) -> Arc<WatchResponse> {
        Arc::new(WatchResponse {
            bundle: Some(TrustBundle {
                trust_domain: "ward.internal".into(),
                x509_authorities: vec![vec![1, 2, 3]],
                refresh_hint: 300,
            }),
            revoked_serials: revoked.iter().map(|r| r.to_string()).collect(),
            endpoints_partial: partial,
            issuer: "https://ward.internal".into(),
            jwks_json: jwks.into(),
            default_action: "deny".into(),
            ..Default::default()
        })
    }

    /// Sends the states in turn to a watcher; returns the messages and
    /// what a client that applied them holds after each.
    fn follow(
        deltas: bool,
        states: &[(WatchResponse, Arc<WatchResponse>)],
    ) -> Vec<(Option<WatchResponse>, WatchResponse)> {
        let w = watcher(deltas);
        let mut last: Option<Sent> = None;
        let mut client = ward_api::Assembled::default();
        let mut out = Vec::new();
        for (own, common) in states {
            let msg = message(last.as_ref(), own, common, |a, b| ward_api::delta(a, b), &w);
            if let Some(m) = &msg {
                client
                    .apply(m.clone())
                    .expect("applies to the version held");
                last = Some(Sent {
                    version: m.version,
                    own: own.clone(),
                    common: common.clone(),
                });
            }
            out.push((msg, client.state().cloned().unwrap_or_default()));
        }
        out
    }

    /// The whole state a watcher should hold: both parts, with its
    /// unregistered upstreams.
    fn whole(own: &WatchResponse, common: &WatchResponse) -> WatchResponse {
        let mut w = joined(own.clone(), common);
        w.unregistered_upstreams = vec!["default/ghost".into()];
        w
    }

    #[test]
    fn deltas_of_either_part_or_both_rebuild_the_whole_state() {
        let c1 = common(&["01"], "{\"keys\":[1]}", false);
        let c2 = common(&["01", "02"], "{\"keys\":[1]}", false);
        let c3 = common(&["02"], "{\"keys\":[2]}", true);
        let states = [
            (own(&["a:1"], &["p1"]), c1.clone()),
            // Nothing changed (a fresh Arc of the same common state, too).
            (own(&["a:1"], &["p1"]), Arc::new((*c1).clone())),
            // Only the watcher's own part.
            (own(&["a:1", "b:1"], &["p1"]), c1.clone()),
            // Only the common part.
            (own(&["a:1", "b:1"], &["p1"]), c2.clone()),
            // Both at once.
            (own(&["b:1"], &["p2"]), c3.clone()),
        ];
        let seen = follow(true, &states);
        assert_eq!(
            seen[0].0.as_ref().unwrap().base_version,
            0,
            "a whole state first"
        );
        assert!(seen[1].0.is_none(), "nothing sent when nothing changed");
        let own_only = seen[2].0.as_ref().unwrap();
        assert!(own_only.bundle.is_none() && own_only.revoked_serials.is_empty());
        assert_eq!(own_only.endpoints.len(), 1);
        let common_only = seen[3].0.as_ref().unwrap();
        assert!(common_only.endpoints.is_empty() && !common_only.policies_changed);
        assert_eq!(common_only.revoked_serials, vec!["02".to_string()]);
        let both = seen[4].0.as_ref().unwrap();
        assert!(both.policies_changed && both.endpoints_partial);
        assert_eq!(both.revoked_serials_removed, vec!["01".to_string()]);
        for ((own, common), (msg, held)) in states.iter().zip(&seen) {
            let mut want = whole(own, common);
            want.version = held.version;
            assert_eq!(*held, want, "after {msg:?}");
        }
        assert_eq!(seen[4].1.version, 4);
    }

    #[test]
    fn whole_states_are_sent_only_on_a_change() {
        let c1 = common(&["01"], "{}", false);
        let states = [
            (own(&["a:1"], &["p1"]), c1.clone()),
            (own(&["a:1"], &["p1"]), Arc::new((*c1).clone())),
            (own(&["a:1"], &["p1"]), common(&["01", "02"], "{}", false)),
        ];
        let seen = follow(false, &states);
        assert!(seen[1].0.is_none());
        let m = seen[2].0.as_ref().unwrap();
        assert_eq!((m.base_version, m.version), (0, 2));
        assert_eq!(*m, {
            let mut w = whole(&states[2].0, &states[2].1);
            w.version = 2;
            w
        });
    }

    #[test]
    fn a_common_delta_is_kept_for_its_two_parts_only() {
        let held = Common::default();
        let (a, b, c) = (
            common(&["01"], "k1", false),
            common(&["01", "02"], "k1", false),
            common(&["01", "02"], "k2", false),
        );
        let ab = held.delta(&a, &b);
        assert!(ab.is_some());
        assert_eq!(ab, ward_api::delta(&a, &b));
        assert_eq!(held.delta(&a, &b), ab);
        // Another pair, even one sharing a part, gets its own delta.
        for (from, to) in [(&b, &c), (&a, &c), (&a, &b)] {
            assert_eq!(held.delta(from, to), ward_api::delta(from, to));
        }
        assert_ne!(ward_api::delta(&b, &c), ab);
        // Equal parts behind different pointers: no change.
        assert_eq!(held.delta(&b, &common(&["01", "02"], "k1", false)), None);
    }

    /// A change to any one source reaches the streams' one channel, a
    /// burst of them at least once, and the relay ends with its sources.
    #[tokio::test]
    async fn the_relay_passes_on_a_change_of_every_source() {
        let sources: Vec<_> = (0..3)
            .map(|_| tokio::sync::watch::Sender::new(0u64))
            .collect();
        let wakes = sources
            .iter()
            .map(|tx| {
                WatchStream::from_changes(tx.subscribe())
                    .map(|_| ())
                    .boxed()
            })
            .collect();
        let tx = tokio::sync::watch::Sender::new(0u64);
        let mut rx = tx.subscribe();
        let relay = tokio::spawn(relay(wakes, tx));
        for source in &sources {
            source.send_modify(|v| *v += 1);
            within(rx.changed(), "the change is passed on")
                .await
                .expect("the relay runs");
        }
        for source in &sources {
            source.send_modify(|v| *v += 1);
        }
        within(rx.changed(), "the burst is passed on")
            .await
            .expect("the relay runs");
        drop(sources);
        within(relay, "the relay ends with its sources")
            .await
            .unwrap();
    }

    /// `f`'s output, which `what` says must come within 5 s.
    async fn within<F: std::future::Future>(f: F, what: &str) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(5), f)
            .await
            .expect(what)
    }

    /// A stream wakes once for a burst of changes on its receivers, goes
    /// on without a receiver whose sender is gone, and ends when none is
    /// left.
    #[tokio::test]
    async fn a_burst_is_one_wake_and_a_gone_source_is_dropped() {
        let a = tokio::sync::watch::Sender::new(0u64);
        let b = tokio::sync::watch::Sender::new(0u64);
        let mut wakes = vec![a.subscribe(), b.subscribe()];
        assert!(
            changed(&mut wakes).now_or_never().is_none(),
            "nothing changed yet"
        );
        a.send_modify(|v| *v += 1);
        b.send_modify(|v| *v += 1);
        assert_eq!(changed(&mut wakes).now_or_never(), Some(true));
        assert!(
            changed(&mut wakes).now_or_never().is_none(),
            "the burst was one wake"
        );
        drop(a);
        b.send_modify(|v| *v += 1);
        assert!(changed(&mut wakes).await);
        assert_eq!(wakes.len(), 1, "the receiver of the gone sender is dropped");
        drop(b);
        assert!(!changed(&mut wakes).await, "no receiver is left");
    }
}
