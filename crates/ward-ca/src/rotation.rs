//! When to prepare, activate and drop signing CAs.
//!
//! A signing CA lives through three states: *prepared* (published in the
//! trust bundle, not yet signing), *active* (signing), *retired* (no longer
//! signing, still published). The next CA is prepared at half of the active
//! one's lifetime and activated at three quarters, so every consumer of the
//! bundle has seen it long before a leaf it signed appears. A retired CA is
//! dropped from the bundle once the last leaf it signed has expired, so no
//! valid leaf ever loses its chain.
use time::OffsetDateTime;

/// The lifecycle state of a signing CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Published, not yet signing.
    Prepared,
    /// Signing.
    Active,
    /// No longer signing, still published.
    Retired,
}

impl State {
    /// The state's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Prepared => "prepared",
            State::Active => "active",
            State::Retired => "retired",
        }
    }

    /// Parses a stored state name.
    pub fn parse(s: &str) -> Option<State> {
        match s {
            "prepared" => Some(State::Prepared),
            "active" => Some(State::Active),
            "retired" => Some(State::Retired),
            _ => None,
        }
    }
}

/// What the planner needs to know about one signing CA.
#[derive(Debug, Clone)]
pub struct SigningCaInfo {
    /// Storage key.
    pub id: i64,
    /// Lifecycle state.
    pub state: State,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
    /// Expiry of the longest-lived leaf it signed, if any.
    pub last_leaf_not_after: Option<OffsetDateTime>,
}

/// One step to take; apply it, then ask again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Generate a new signing CA in the prepared state.
    Prepare,
    /// Make this prepared CA the active one and retire the current one.
    Activate(i64),
    /// Remove this retired CA from the bundle.
    Drop(i64),
}

/// The next step of the regular schedule, or `None` when nothing is due.
pub fn next_action(cas: &[SigningCaInfo], now: OffsetDateTime) -> Option<Action> {
    for ca in cas.iter().filter(|c| c.state == State::Retired) {
        let until = ca.last_leaf_not_after.map_or(now, |t| t.min(ca.not_after));
        if now >= until {
            return Some(Action::Drop(ca.id));
        }
    }
    let prepared = cas.iter().find(|c| c.state == State::Prepared);
    let Some(active) = cas.iter().find(|c| c.state == State::Active) else {
        return Some(prepared.map_or(Action::Prepare, |p| Action::Activate(p.id)));
    };
    let life = (active.not_after - active.not_before)
        .as_seconds_f64()
        .max(1.0);
    let elapsed = (now - active.not_before).as_seconds_f64() / life;
    match prepared {
        None if elapsed >= 0.5 => Some(Action::Prepare),
        Some(p) if elapsed >= 0.75 => Some(Action::Activate(p.id)),
        _ => None,
    }
}

/// The next step of a forced rotation (`ward ca rotate`): prepare a CA if
/// none is, then activate it.
pub fn next_forced_action(cas: &[SigningCaInfo]) -> Action {
    match cas.iter().find(|c| c.state == State::Prepared) {
        Some(p) => Action::Activate(p.id),
        None => Action::Prepare,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ca(id: i64, state: State, start: OffsetDateTime, days: u64) -> SigningCaInfo {
        SigningCaInfo {
            id,
            state,
            not_before: start,
            not_after: start + Duration::from_secs(days * 86400),
            last_leaf_not_after: None,
        }
    }

    #[test]
    fn schedule() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let day = Duration::from_secs(86400);
        assert_eq!(next_action(&[], t0), Some(Action::Prepare));
        let p = ca(1, State::Prepared, t0, 8);
        assert_eq!(
            next_action(std::slice::from_ref(&p), t0),
            Some(Action::Activate(1))
        );

        let a = ca(1, State::Active, t0, 8);
        assert_eq!(next_action(std::slice::from_ref(&a), t0 + 3 * day), None);
        assert_eq!(
            next_action(std::slice::from_ref(&a), t0 + 4 * day),
            Some(Action::Prepare)
        );
        let p = ca(2, State::Prepared, t0 + 4 * day, 8);
        assert_eq!(next_action(&[a.clone(), p.clone()], t0 + 5 * day), None);
        assert_eq!(
            next_action(&[a.clone(), p.clone()], t0 + 6 * day),
            Some(Action::Activate(2))
        );

        let mut r = ca(1, State::Retired, t0, 8);
        r.last_leaf_not_after = Some(t0 + 7 * day);
        let a2 = ca(2, State::Active, t0 + 4 * day, 8);
        assert_eq!(
            next_action(&[r.clone(), a2.clone()], t0 + 6 * day),
            None,
            "a leaf it signed is valid"
        );
        assert_eq!(
            next_action(&[r.clone(), a2.clone()], t0 + 7 * day),
            Some(Action::Drop(1))
        );
        r.last_leaf_not_after = None;
        assert_eq!(
            next_action(&[r, a2], t0 + 6 * day),
            Some(Action::Drop(1)),
            "signed nothing"
        );
    }

    #[test]
    fn forced() {
        let t0 = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(
            next_forced_action(&[ca(1, State::Active, t0, 8)]),
            Action::Prepare
        );
        assert_eq!(
            next_forced_action(&[ca(1, State::Active, t0, 8), ca(2, State::Prepared, t0, 8)]),
            Action::Activate(2)
        );
        for s in [State::Prepared, State::Active, State::Retired] {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }
}
