//! Load shedding for the calls a fleet makes all at once after a server
//! restart or a CA rotation: certificate signing and watch-stream opens.
//! Past a number of such calls in progress, more are refused at once with
//! UNAVAILABLE and a retry hint (gRFC A6's `grpc-retry-pushback-ms`,
//! spread at random so that those refused together do not return
//! together) instead of queueing until everything times out. Clients back
//! off with jitter and honour the hint (`ward_api::Backoff`); a sidecar
//! keeps its current certificate and configuration meanwhile.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tonic::Status;

/// Calls in progress at once before more are refused, by default.
pub(crate) const DEFAULT_LIMIT: usize = 256;

/// The longest hint given, however deep the overload.
const MAX_HINT: Duration = Duration::from_secs(30);

pub(crate) struct Shed {
    in_flight: Arc<AtomicUsize>,
    limit: usize,
}

/// One admitted call; dropping it makes room for the next.
pub(crate) struct Permit(Arc<AtomicUsize>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Shed {
    pub(crate) fn new(limit: usize) -> Shed {
        Shed {
            in_flight: Arc::new(AtomicUsize::new(0)),
            limit: limit.max(1),
        }
    }

    /// Admits a call of `what`, or refuses it with UNAVAILABLE and a hint
    /// that grows with the overload: about a second per `limit` calls
    /// already waiting, at most 30 s.
    pub(crate) fn admit(&self, what: &str) -> Result<Permit, Status> {
        let n = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let permit = Permit(self.in_flight.clone());
        if n < self.limit {
            return Ok(permit);
        }
        drop(permit);
        let hint = ward_api::jitter(Duration::from_secs(1) * (n / self.limit) as u32).min(MAX_HINT);
        let mut status = Status::unavailable(format!(
            "the control plane is busy ({n} calls in progress): {what} refused; retry in {} ms",
            hint.as_millis()
        ));
        if let Ok(v) = hint.as_millis().to_string().parse() {
            status.metadata_mut().insert(ward_api::RETRY_PUSHBACK, v);
        }
        Err(status)
    }

    /// Calls in progress now.
    #[cfg(test)]
    fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_limit_calls_are_refused_with_a_growing_hint_and_room_comes_back() {
        let shed = Shed::new(2);
        let a = shed.admit("signing").unwrap();
        let _b = shed.admit("signing").unwrap();
        let refused = shed.admit("signing").err().unwrap();
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        let hint = ward_api::retry_hint(&refused).expect("a retry hint");
        assert!(hint >= Duration::from_millis(500) && hint < Duration::from_millis(1500));
        assert!(
            refused.message().contains("retry in"),
            "{}",
            refused.message()
        );
        // Refused calls hold no room.
        assert_eq!(shed.in_flight(), 2);
        drop(a);
        let _c = shed.admit("signing").unwrap();
        // Deeper overload, longer hints (never past the cap).
        let deep = Shed::new(1);
        let _held: Vec<_> = (0..1).map(|_| deep.admit("x").unwrap()).collect();
        deep.in_flight.fetch_add(99, Ordering::AcqRel);
        let h = ward_api::retry_hint(&deep.admit("x").err().unwrap()).unwrap();
        assert!(h >= Duration::from_secs(15) && h <= MAX_HINT, "{h:?}");
    }
}
