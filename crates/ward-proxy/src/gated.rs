//! Futures polled only when they asked to be.
//!
//! A connection's task waits on its connection and, beside it, on rare
//! events: shutdown, a tripped abuse budget. `tokio::select!` polls every
//! branch each time the task wakes, which on a busy connection is several
//! times per request, and each of those polls takes a lock. [`Gated`]
//! gives the inner future a waker of its own and polls it again only after
//! that waker has fired.
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// See the module documentation.
pub(crate) struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    waker: Waker,
}

struct Gate {
    woken: AtomicBool,
    /// The task to wake when the inner future's waker fires.
    task: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = task.as_ref() {
            w.wake_by_ref();
        }
    }
}

impl<F: Future> Gated<F> {
    pub(crate) fn new(inner: F) -> Gated<F> {
        let gate = Arc::new(Gate {
            woken: AtomicBool::new(true),
            task: Mutex::new(None),
        });
        Gated {
            inner: Box::pin(inner),
            waker: Waker::from(gate.clone()),
            gate,
        }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.gate.woken.swap(false, Ordering::Acquire) {
            return Poll::Pending;
        }
        {
            let mut task = this.gate.task.lock().unwrap_or_else(|e| e.into_inner());
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        this.inner
            .as_mut()
            .poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `fire` is set, waking whoever waits.
    struct Signal {
        polls: Arc<AtomicUsize>,
        fire: Arc<Mutex<(bool, Option<Waker>)>>,
    }

    impl Future for Signal {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            let mut f = self.fire.lock().unwrap();
            if f.0 {
                return Poll::Ready(());
            }
            f.1 = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    /// A task waker that counts its wake-ups.
    struct Task(AtomicUsize);
    impl Wake for Task {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn polled_again_only_after_its_own_wake() {
        let polls = Arc::new(AtomicUsize::new(0));
        let fire = Arc::new(Mutex::new((false, None::<Waker>)));
        let mut g = Gated::new(Signal {
            polls: polls.clone(),
            fire: fire.clone(),
        });
        let task = Arc::new(Task(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);
        // The task wakes a hundred times for other reasons: one poll.
        for _ in 0..100 {
            assert!(Pin::new(&mut g).poll(&mut cx).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // The signal fires: the task is woken and the next poll sees it.
        let w = {
            let mut f = fire.lock().unwrap();
            f.0 = true;
            f.1.take().unwrap()
        };
        w.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1);
        assert!(Pin::new(&mut g).poll(&mut cx).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn works_in_select_with_a_watch_channel() {
        let (tx, mut rx) = tokio::sync::watch::channel(false);
        let stop = Gated::new(async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        tokio::pin!(stop);
        let mut ticks = 0;
        loop {
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::task::yield_now() => {
                    ticks += 1;
                    if ticks == 10 {
                        tx.send(true).unwrap();
                    }
                }
            }
        }
        assert_eq!(ticks, 10);
    }
}
