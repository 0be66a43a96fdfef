//! A one-shot, shard-local event: tasks wait on it, one call fires it for all.
//!
//! Used for "this shard is draining": the accept loop races its `accept()`
//! against it. Shard-local (`Rc`/`Cell`), so no atomics on the hot path.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Default)]
pub struct LocalEvent {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl LocalEvent {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fire(&self) {
        if self.fired.replace(true) {
            return;
        }
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Resolves once `fire` has been called (at once if it already was).
    pub fn wait(&self) -> Wait<'_> {
        Wait { event: self }
    }
}

pub struct Wait<'a> {
    event: &'a LocalEvent,
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.event.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
