//! Closing connections whose clients cancel requests en masse (HTTP/2
//! "rapid reset", CVE-2023-44487): h2 already limits streams reset before
//! they are accepted; this counts requests cancelled after they reached
//! the service and trips when a connection cancels too many too fast.
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

const WINDOW: Duration = Duration::from_secs(10);
const MAX_CANCELLED: u32 = 500;

/// Per connection.
#[derive(Default)]
pub(crate) struct CancelBudget {
    window: Mutex<Option<(Instant, u32)>>,
    tripped: AtomicBool,
    notify: Notify,
}

impl CancelBudget {
    /// Resolves once the connection should be closed.
    pub(crate) async fn tripped(&self) {
        loop {
            let notified = self.notify.notified();
            if self.tripped.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    fn cancelled(&self) {
        let Ok(mut w) = self.window.lock() else {
            return;
        };
        let now = Instant::now();
        let (start, n) = match *w {
            Some((start, n)) if now.duration_since(start) < WINDOW => (start, n + 1),
            _ => (now, 1),
        };
        *w = Some((start, n));
        if n > MAX_CANCELLED && !self.tripped.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                cancelled = n,
                "closing a connection that cancels requests en masse"
            );
            self.notify.notify_waiters();
        }
    }
}

/// Held by each request future; counts it as cancelled if it is dropped
/// before it completes.
pub(crate) struct RequestGuard {
    budget: Arc<CancelBudget>,
    done: bool,
}

impl RequestGuard {
    pub(crate) fn new(budget: &Arc<CancelBudget>) -> RequestGuard {
        RequestGuard {
            budget: budget.clone(),
            done: false,
        }
    }
    pub(crate) fn done(mut self) {
        self.done = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if !self.done {
            self.budget.cancelled();
        }
    }
}
