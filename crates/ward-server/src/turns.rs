//! Turns at changing the CA set and the signing keys. Each is changed
//! under a lock held across every replica sharing the database, and read
//! afresh under it, so that what one replica rotated on schedule the
//! others see done. A rotation asked for by hand that finds another one
//! made within [`COALESCE_MS`] of its asking (two operators, or a retry
//! through another replica) is already done: replicas asked at the same
//! moment rotate once.
use ward_store::{Store, StoreError, StoreLock};

/// How close to the asking an earlier rotation may be to count for it.
const COALESCE_MS: i64 = 1000;

fn now_ms() -> i64 {
    (ward_ca::now().unix_timestamp_nanos() / 1_000_000) as i64
}

fn meta_key(name: &str) -> String {
    format!("rotated_at_ms:{name}")
}

/// A turn held at `name` until dropped.
pub(crate) struct Turn<'a> {
    _lock: StoreLock,
    store: &'a dyn Store,
    name: &'a str,
    /// When the turn was asked for.
    asked: i64,
}

/// Waits for the turn at `name`.
pub(crate) async fn take<'a>(store: &'a dyn Store, name: &'a str) -> Result<Turn<'a>, StoreError> {
    let asked = now_ms();
    let lock = store.lock(name).await?;
    Ok(Turn {
        _lock: lock,
        store,
        name,
        asked,
    })
}

impl Turn<'_> {
    /// A rotation by hand was made just before this turn was asked for, or
    /// while it waited.
    pub(crate) async fn rotated_recently(&self) -> Result<bool, StoreError> {
        let last: i64 = self
            .store
            .get_meta(&meta_key(self.name))
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(i64::MIN);
        Ok(last >= self.asked - COALESCE_MS)
    }

    /// Records that this turn rotated by hand.
    pub(crate) async fn rotated(&self) -> Result<(), StoreError> {
        self.store
            .set_meta(&meta_key(self.name), &now_ms().to_string())
            .await
    }
}
