//! Following the control plane's `Watch` stream: the whole state first,
//! then deltas, put together again here so that a consumer always sees the
//! whole state ([`Assembled`], [`follow`]).
use std::collections::BTreeMap;
use std::time::Duration;

use crate::v1::{ServiceEndpoints, TrafficReport, WatchRequest, WatchResponse};

/// A delta that does not apply to the state held: the stream skipped a
/// version (or began with a delta), so the whole state must be asked for
/// again by opening the stream anew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missed {
    /// The version held (0: none yet).
    pub held: u64,
    /// The version the delta applies to.
    pub base: u64,
}

impl std::fmt::Display for Missed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "a delta for version {} arrived while version {} is held",
            self.base, self.held
        )
    }
}

impl std::error::Error for Missed {}

/// The whole state of a watch stream, kept up to date message by message.
#[derive(Debug, Default, Clone)]
pub struct Assembled {
    state: Option<WatchResponse>,
}

impl Assembled {
    /// The state as of the last message applied.
    pub fn state(&self) -> Option<&WatchResponse> {
        self.state.as_ref()
    }

    /// Applies one message: a whole state replaces what is held; a delta
    /// must apply to the version held, or nothing changes and [`Missed`]
    /// says so.
    pub fn apply(&mut self, msg: WatchResponse) -> Result<&WatchResponse, Missed> {
        if msg.base_version == 0 {
            return Ok(self.state.insert(msg));
        }
        let held = self.state.as_ref().map_or(0, |s| s.version);
        let Some(s) = self
            .state
            .as_mut()
            .filter(|s| s.version == msg.base_version)
        else {
            return Err(Missed {
                held,
                base: msg.base_version,
            });
        };
        let WatchResponse {
            version,
            bundle,
            revoked_serials,
            endpoints,
            policies_json,
            default_action,
            revoked_token_ids,
            issuer,
            jwks_json,
            endpoints_partial,
            jwt_authorities_json,
            unregistered_upstreams: _,
            base_version: _,
            policies_changed,
            revoked_serials_removed,
            revoked_token_ids_removed,
        } = msg;
        s.version = version;
        if bundle.is_some() {
            s.bundle = bundle;
        }
        edit_set(
            &mut s.revoked_serials,
            revoked_serials,
            &revoked_serials_removed,
        );
        edit_set(
            &mut s.revoked_token_ids,
            revoked_token_ids,
            &revoked_token_ids_removed,
        );
        if !endpoints.is_empty() {
            let mut by_id: BTreeMap<String, Vec<String>> = std::mem::take(&mut s.endpoints)
                .into_iter()
                .map(|e| (e.spiffe_id, e.addresses))
                .collect();
            for e in endpoints {
                if e.addresses.is_empty() {
                    by_id.remove(&e.spiffe_id);
                } else {
                    by_id.insert(e.spiffe_id, e.addresses);
                }
            }
            s.endpoints = by_id
                .into_iter()
                .map(|(spiffe_id, addresses)| ServiceEndpoints {
                    spiffe_id,
                    addresses,
                })
                .collect();
        }
        if policies_changed {
            s.policies_json = policies_json;
        }
        for (field, new) in [
            (&mut s.default_action, default_action),
            (&mut s.issuer, issuer),
            (&mut s.jwks_json, jwks_json),
            (&mut s.jwt_authorities_json, jwt_authorities_json),
        ] {
            if !new.is_empty() {
                *field = new;
            }
        }
        s.endpoints_partial = endpoints_partial;
        Ok(s)
    }
}

/// A sorted set kept as a sorted list: `removed` taken out, `added` put in.
fn edit_set(set: &mut Vec<String>, added: Vec<String>, removed: &[String]) {
    if added.is_empty() && removed.is_empty() {
        return;
    }
    set.retain(|x| !removed.contains(x));
    set.extend(added);
    set.sort();
    set.dedup();
}

/// The delta that turns `from` into `to` (both whole states, their
/// revoked serials and token ids sorted, as the server sends them), with
/// `to.version` as its version, or `None` when they are the same. What
/// [`Assembled::apply`] undoes: `apply(from)` then `apply(delta(from, to))`
/// holds `to`.
pub fn delta(from: &WatchResponse, to: &WatchResponse) -> Option<WatchResponse> {
    let mut d = WatchResponse {
        version: to.version,
        base_version: from.version,
        endpoints_partial: to.endpoints_partial,
        ..Default::default()
    };
    let mut changed = from.endpoints_partial != to.endpoints_partial;
    if from.bundle != to.bundle {
        d.bundle = to.bundle.clone();
        changed = true;
    }
    for (old, new, added, removed) in [
        (
            &from.revoked_serials,
            &to.revoked_serials,
            &mut d.revoked_serials,
            &mut d.revoked_serials_removed,
        ),
        (
            &from.revoked_token_ids,
            &to.revoked_token_ids,
            &mut d.revoked_token_ids,
            &mut d.revoked_token_ids_removed,
        ),
    ] {
        if old != new {
            // Whole states list these sorted: a lookup is a binary search,
            // so a revocation costs O(n log n) per stream, not O(n²).
            let absent = |list: &[String], x: &String| list.binary_search(x).is_err();
            *added = new.iter().filter(|x| absent(old, x)).cloned().collect();
            *removed = old.iter().filter(|x| absent(new, x)).cloned().collect();
            changed |= !added.is_empty() || !removed.is_empty();
        }
    }
    if from.endpoints != to.endpoints {
        let old: BTreeMap<&str, &Vec<String>> = from
            .endpoints
            .iter()
            .map(|e| (e.spiffe_id.as_str(), &e.addresses))
            .collect();
        let new: BTreeMap<&str, &Vec<String>> = to
            .endpoints
            .iter()
            .map(|e| (e.spiffe_id.as_str(), &e.addresses))
            .collect();
        for (id, addrs) in &new {
            if old.get(id) != Some(addrs) {
                d.endpoints.push(ServiceEndpoints {
                    spiffe_id: id.to_string(),
                    addresses: addrs.to_vec(),
                });
            }
        }
        for id in old.keys().filter(|id| !new.contains_key(*id)) {
            d.endpoints.push(ServiceEndpoints {
                spiffe_id: id.to_string(),
                addresses: Vec::new(),
            });
        }
        changed |= !d.endpoints.is_empty();
    }
    if from.policies_json != to.policies_json {
        d.policies_changed = true;
        d.policies_json = to.policies_json.clone();
        changed = true;
    }
    for (old, new, field) in [
        (
            &from.default_action,
            &to.default_action,
            &mut d.default_action,
        ),
        (&from.issuer, &to.issuer, &mut d.issuer),
        (&from.jwks_json, &to.jwks_json, &mut d.jwks_json),
        (
            &from.jwt_authorities_json,
            &to.jwt_authorities_json,
            &mut d.jwt_authorities_json,
        ),
    ] {
        if old != new {
            field.clone_from(new);
            changed = true;
        }
    }
    changed.then_some(d)
}

/// Follows the control plane's `Watch` stream for as long as the returned
/// future is polled: every update (trust bundle, revoked certificates and
/// token ids, endpoints, policies) is passed to `on_update` as
/// `Some(state)`, always the whole state (the stream carries deltas, put
/// together here); a lost stream is reported as `None`, then the stream is
/// reopened with exponential backoff (100 ms doubling to 5 s, with
/// jitter). A delta that does not fit the state held (a version skipped)
/// reopens the stream at once for the whole state, keeping the state held
/// until then.
///
/// `tls` is called for every connection, so a caller whose certificate is
/// renewed shows the current one; the watch stream requires a ward client
/// certificate. `advertise` (`host:port`, or empty) registers this
/// workload's address as an endpoint of its service while the stream is
/// open.
///
/// A service that verifies ward's access tokens keeps its revocation list
/// current with it:
///
/// ```no_run
/// # async fn f(tls: impl FnMut() -> Result<rustls::ClientConfig, String>) {
/// let mut revoked = std::collections::HashSet::new();
/// ward_api::follow("127.0.0.1:8443", tls, Default::default(), |update| {
///     if let Some(u) = update {
///         revoked = u.revoked_token_ids.iter().cloned().collect();
///     }
/// })
/// .await;
/// # }
/// ```
pub async fn follow<T, U>(addr: &str, tls: T, request: WatchRequest, on_update: U)
where
    T: FnMut() -> Result<rustls::ClientConfig, String>,
    U: FnMut(Option<&WatchResponse>),
{
    follow_with(addr, tls, request, on_update, Some).await
}

/// [`follow`], sending `report()` to the control plane every `every` on
/// the watch stream's connection while the stream is open (a sidecar's
/// traffic counters, for the dashboard and `ward top`). A report that
/// fails is not retried: the next one carries the same cumulative counts.
pub async fn follow_reporting<T, U, R>(
    addr: &str,
    tls: T,
    request: WatchRequest,
    every: Duration,
    mut report: R,
    on_update: U,
) where
    T: FnMut() -> Result<rustls::ClientConfig, String>,
    U: FnMut(Option<&WatchResponse>),
    R: FnMut() -> TrafficReport + Send,
{
    run(
        addr,
        tls,
        request,
        on_update,
        Some,
        Some((every, &mut report)),
    )
    .await
}

/// [`follow`], with every message passed through `inspect` before it is
/// applied (`None` drops it): a test's way of losing a delta.
#[doc(hidden)]
pub async fn follow_with<T, U, I>(
    addr: &str,
    tls: T,
    request: WatchRequest,
    on_update: U,
    inspect: I,
) where
    T: FnMut() -> Result<rustls::ClientConfig, String>,
    U: FnMut(Option<&WatchResponse>),
    I: FnMut(WatchResponse) -> Option<WatchResponse>,
{
    run(addr, tls, request, on_update, inspect, None).await
}

type Reporter<'a> = Option<(Duration, &'a mut (dyn FnMut() -> TrafficReport + Send))>;

async fn run<T, U, I>(
    addr: &str,
    mut tls: T,
    mut request: WatchRequest,
    mut on_update: U,
    mut inspect: I,
    mut reports: Reporter<'_>,
) where
    T: FnMut() -> Result<rustls::ClientConfig, String>,
    U: FnMut(Option<&WatchResponse>),
    I: FnMut(WatchResponse) -> Option<WatchResponse>,
{
    request.deltas = true;
    let mut backoff = crate::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut assembled = Assembled::default();
    loop {
        let mut got_any = false;
        let result: Result<(), Exit> = async {
            let channel = crate::connect(addr, tls().map_err(Exit::Lost)?)
                .await
                .map_err(|e| Exit::Lost(format!("connecting to {addr}: {e}")))?;
            let client = crate::v1::identity_client::IdentityClient::new(channel);
            let mut stream = client
                .clone()
                .watch(request.clone())
                .await
                .map_err(Exit::refused)?
                .into_inner();
            let every = reports.as_ref().map_or(Duration::from_secs(3600), |r| r.0);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m.map_err(Exit::refused)?,
                    _ = tick.tick(), if reports.is_some() => {
                        if let Some((_, make)) = reports.as_mut() {
                            let (mut client, report) = (client.clone(), make());
                            tokio::spawn(async move {
                                if let Err(e) = client.report_traffic(report).await {
                                    tracing::debug!(error = %e.message(), "traffic report refused");
                                }
                            });
                        }
                        continue;
                    }
                };
                let Some(msg) = msg else { break };
                got_any = true;
                let Some(msg) = inspect(msg) else { continue };
                on_update(Some(assembled.apply(msg).map_err(Exit::Missed)?));
            }
            Ok(())
        }
        .await;
        let mut hint = None;
        match result {
            Ok(()) => tracing::warn!("watch stream ended; reconnecting"),
            Err(Exit::Missed(m)) => {
                // The state held stays in force until the whole state
                // arrives on the new stream.
                tracing::warn!(error = %m, "watch stream out of step: asking for the whole state");
                continue;
            }
            Err(Exit::Busy(e, retry_in)) => {
                tracing::info!(error = %e, ?retry_in, "control plane busy; keeping the last configuration");
                hint = Some(retry_in);
            }
            Err(Exit::Lost(e)) => {
                tracing::warn!(error = %e, "control plane unreachable; keeping the last configuration")
            }
        }
        on_update(None);
        if got_any {
            backoff.reset();
        }
        tokio::time::sleep(backoff.pause(hint)).await;
    }
}

/// Why a watch stream ended.
enum Exit {
    /// A delta did not fit: open again for the whole state, at once.
    Missed(Missed),
    /// The server sheds load: come back after the hint (or later).
    Busy(String, Duration),
    Lost(String),
}

impl Exit {
    fn refused(s: tonic::Status) -> Exit {
        match crate::retry_hint(&s) {
            Some(hint) => Exit::Busy(s.message().to_string(), hint),
            None => Exit::Lost(s.message().to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::TrustBundle;

    fn state(version: u64) -> WatchResponse {
        WatchResponse {
            version,
            bundle: Some(TrustBundle {
                trust_domain: "example.org".into(),
                x509_authorities: vec![vec![1, 2, 3]],
                refresh_hint: 300,
            }),
            revoked_serials: vec!["0a".into(), "0b".into()],
            endpoints: vec![
                ServiceEndpoints {
                    spiffe_id: "spiffe://example.org/ns/a/sa/x".into(),
                    addresses: vec!["127.0.0.1:1".into()],
                },
                ServiceEndpoints {
                    spiffe_id: "spiffe://example.org/ns/a/sa/y".into(),
                    addresses: vec!["127.0.0.1:2".into()],
                },
            ],
            policies_json: vec!["{\"p\":1}".into()],
            default_action: "deny".into(),
            revoked_token_ids: vec!["t1".into()],
            issuer: "https://ward".into(),
            jwks_json: "{\"keys\":[1]}".into(),
            endpoints_partial: true,
            jwt_authorities_json: "{\"keys\":[2]}".into(),
            unregistered_upstreams: vec!["spiffe://example.org/ns/a/sa/z".into()],
            ..Default::default()
        }
    }

    /// Every field changed, removed or emptied: the delta carries it and
    /// applying it gives the new state exactly.
    #[test]
    fn a_delta_applied_gives_the_new_state() {
        let from = state(1);
        let mut to = state(2);
        to.bundle.as_mut().unwrap().x509_authorities.push(vec![4]);
        to.revoked_serials = vec!["0b".into(), "0c".into()];
        to.endpoints.remove(0);
        to.endpoints[0].addresses.push("127.0.0.1:3".into());
        to.endpoints.push(ServiceEndpoints {
            spiffe_id: "spiffe://example.org/ns/b/sa/w".into(),
            addresses: vec!["127.0.0.1:4".into()],
        });
        to.policies_json = Vec::new();
        to.revoked_token_ids = Vec::new();
        to.jwks_json = "{\"keys\":[3]}".into();
        to.endpoints_partial = false;
        let d = delta(&from, &to).unwrap();
        assert_eq!((d.base_version, d.version), (1, 2));
        assert!(d.issuer.is_empty() && d.default_action.is_empty());
        assert!(d.unregistered_upstreams.is_empty());
        assert_eq!(d.revoked_serials, vec!["0c".to_string()]);
        assert_eq!(d.revoked_serials_removed, vec!["0a".to_string()]);
        let mut a = Assembled::default();
        a.apply(from.clone()).unwrap();
        assert_eq!(a.apply(d).unwrap(), &to);
        // Nothing changed: nothing to send.
        let mut same = to.clone();
        same.version = 3;
        assert_eq!(delta(&to, &same), None);
    }

    #[test]
    fn an_endpoint_change_carries_that_service_only() {
        let from = state(1);
        let mut to = state(2);
        to.endpoints[1].addresses = vec!["127.0.0.1:9".into()];
        let d = delta(&from, &to).unwrap();
        assert_eq!(d.endpoints.len(), 1);
        assert!(d.bundle.is_none() && d.jwks_json.is_empty() && !d.policies_changed);
        let full = prost::Message::encoded_len(&to);
        let small = prost::Message::encoded_len(&d);
        assert!(small * 4 < full, "delta {small} bytes, whole state {full}");
    }

    #[test]
    fn a_skipped_version_is_missed_and_a_whole_state_recovers() {
        let mut a = Assembled::default();
        let s1 = state(1);
        let mut s2 = state(2);
        s2.revoked_serials.push("0c".into());
        let mut s3 = s2.clone();
        s3.version = 3;
        s3.revoked_serials.push("0d".into());
        // A delta before any whole state.
        let d12 = delta(&s1, &s2).unwrap();
        assert_eq!(a.apply(d12.clone()), Err(Missed { held: 0, base: 1 }));
        a.apply(s1).unwrap();
        // The delta to version 2 is lost; the one to 3 does not apply and
        // leaves the state alone.
        let d23 = delta(&s2, &s3).unwrap();
        assert_eq!(a.apply(d23), Err(Missed { held: 1, base: 2 }));
        assert_eq!(a.state().unwrap().version, 1);
        // In order they apply; a whole state replaces whatever is held.
        a.apply(d12).unwrap();
        assert_eq!(a.state().unwrap().revoked_serials.len(), 3);
        assert_eq!(a.apply(s3.clone()).unwrap(), &s3);
    }
}
