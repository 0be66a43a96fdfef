//! [`InFlight`]: request-coalescing bookkeeping for one shard (issue 4:
//! "concurrent misses for one key on a shard make exactly one upstream
//! request; the others wait for it").
//!
//! The first miss for a key becomes the *leader* ([`InFlight::begin`]
//! returns true) and goes upstream; later misses for the same key are
//! *followers*: they register their task's [`Waker`] with
//! [`InFlight::wait`] and sleep. [`InFlight::finish`] forgets the key and
//! wakes every follower, which then looks the key up in the cache again
//! (a fresh entry: `X-Cache: HIT`; still nothing, because the response was
//! not storable: the follower goes upstream itself, or becomes the next
//! leader). A leader whose upstream request failed (no answer: a timeout,
//! a broken connection, every target ejected) says so first with
//! [`InFlight::fail`]; its followers then answer from a stale copy or with
//! the same failure instead of each repeating the request that just failed,
//! which would multiply the load on a failing upstream by the number of
//! waiting clients and make each of them wait twice.
//!
//! Nothing here awaits: the caller wraps `wait` in a `poll_fn`-style
//! future. The table holds no limit of its own: it has at most one entry
//! per leader request and one waker per follower, both bounded by the
//! shard's connection limit.
//!
//! The caller must call `finish` on every path out of the leader, including
//! cancellation (a timeout dropping the future): a `Drop` guard that holds
//! the shard's `Rc<RefCell<InFlight>>` does it. A key left behind would make
//! its followers wait until their own timeouts.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::task::Waker;
use std::time::Duration;

/// How a leader's upstream request failed, for its followers to answer
/// alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeaderFailure {
    /// Every target was ejected: 503, retry after this long.
    Unavailable(Duration),
    /// No answer: 502 or 504 (`status`), with the leader's reason.
    Failed { status: u16, detail: String },
}

/// What a follower learns when its leader finishes: `Some` if it failed.
pub(crate) type Verdict = Rc<RefCell<Option<LeaderFailure>>>;

/// Keys with an upstream request in progress, and who waits for each.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    pending: HashMap<Box<[u8]>, (Vec<Waker>, Verdict)>,
}

impl InFlight {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Claims `key`: true if no request for it was in flight, so the caller
    /// is the leader and must call [`Self::finish`]; false if another
    /// request leads and the caller should [`Self::wait`].
    pub(crate) fn begin(&mut self, key: &[u8]) -> bool {
        if self.pending.contains_key(key) {
            return false;
        }
        self.pending
            .insert(Box::from(key), (Vec::new(), Verdict::default()));
        true
    }

    /// Registers `waker` to be woken when `key`'s leader finishes, and
    /// returns where the leader's verdict will be. `None`, registering
    /// nothing, when no request for `key` is in flight (it finished
    /// already: look the cache up again). Polling again with the same waker
    /// does not add a duplicate.
    pub(crate) fn wait(&mut self, key: &[u8], waker: &Waker) -> Option<Verdict> {
        let (waiters, verdict) = self.pending.get_mut(key)?;
        if !waiters.iter().any(|w| w.will_wake(waker)) {
            waiters.push(waker.clone());
        }
        Some(Rc::clone(verdict))
    }

    /// Records that `key`'s leader failed (before [`Self::finish`]).
    pub(crate) fn fail(&mut self, key: &[u8], why: LeaderFailure) {
        if let Some((_, verdict)) = self.pending.get(key) {
            *verdict.borrow_mut() = Some(why);
        }
    }

    /// Ends the request for `key` and wakes its followers; returns how many
    /// were woken. A key not in flight is a no-op (returns 0).
    pub(crate) fn finish(&mut self, key: &[u8]) -> usize {
        let Some((waiters, _)) = self.pending.remove(key) else {
            return 0;
        };
        let n = waiters.len();
        for w in waiters {
            w.wake();
        }
        n
    }

    pub(crate) fn is_in_flight(&self, key: &[u8]) -> bool {
        self.pending.contains_key(key)
    }

    /// Keys with a leader in progress.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wake-ups (`Wake` needs `Arc`; test only).
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counter() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        let w = Waker::from(Arc::clone(&c));
        (c, w)
    }

    #[test]
    fn first_is_leader_rest_follow() {
        let mut t = InFlight::new();
        assert!(t.begin(b"k"));
        assert!(!t.begin(b"k"));
        assert!(t.begin(b"other"), "keys are independent");
        assert_eq!(t.len(), 2);
        assert_eq!(t.finish(b"k"), 0);
        assert!(!t.is_in_flight(b"k"));
        assert!(t.begin(b"k"), "a new leader after finish");
    }

    #[test]
    fn finish_wakes_each_waiter_once() {
        let mut t = InFlight::new();
        let (c1, w1) = counter();
        let (c2, w2) = counter();
        assert!(t.begin(b"k"));
        assert!(t.wait(b"k", &w1).is_some());
        assert!(t.wait(b"k", &w1).is_some(), "re-poll does not duplicate");
        let verdict = t.wait(b"k", &w2).unwrap();
        assert_eq!(*verdict.borrow(), None);
        t.fail(b"k", LeaderFailure::Unavailable(Duration::from_secs(1)));
        assert_eq!(t.finish(b"k"), 2);
        assert_eq!(
            *verdict.borrow(),
            Some(LeaderFailure::Unavailable(Duration::from_secs(1))),
            "a follower learns how the leader failed"
        );
        assert_eq!(c1.0.load(Ordering::Relaxed), 1);
        assert_eq!(c2.0.load(Ordering::Relaxed), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn wait_without_leader_returns_false() {
        let mut t = InFlight::new();
        let (c, w) = counter();
        assert!(t.wait(b"k", &w).is_none());
        assert_eq!(t.finish(b"k"), 0, "finish of an unknown key is a no-op");
        assert_eq!(c.0.load(Ordering::Relaxed), 0);
    }
}
