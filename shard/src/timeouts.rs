//! Connection read deadlines, checked by one coarse per-shard sweep instead
//! of a timer per read.
//!
//! glommio's per-stream read timeout inserts a timer into the reactor's
//! B-tree every time a read has to wait and removes it when data comes:
//! about 8% of a plaintext request's user-space instructions in a
//! callgrind profile. Here a connection only writes its deadline into its
//! slot (a couple of stores); a task wakes every [`TIMEOUT_TICK_MS`],
//! reads the clock once, and wakes the connections whose deadline passed.
//! The price is resolution: a timeout fires up to one tick late (and, since
//! deadlines are computed from the tick's cached clock, up to one tick
//! early), which for timeouts measured in seconds is immaterial.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often a shard checks read deadlines, and so the resolution of
/// `header_read_timeout` and `idle_timeout`. 100 ms keeps a 10,000
/// connection sweep at 100,000 cheap checks a second, and sub-second test
/// timeouts meaningful.
pub const TIMEOUT_TICK_MS: u64 = 100;

#[derive(Default)]
struct Slot {
    in_use: bool,
    deadline: Option<Instant>,
    expired: bool,
    waker: Option<Waker>,
}

/// A shard's table of read deadlines, one slot per open connection.
pub struct Timeouts {
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    now: Cell<Instant>,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            slots: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            now: Cell::new(Instant::now()),
        }
    }
}

impl Timeouts {
    /// The clock as of the last sweep (at most one tick old).
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    pub fn register(&self) -> usize {
        let mut slots = self.slots.borrow_mut();
        let id = match self.free.borrow_mut().pop() {
            Some(id) => id,
            None => {
                slots.push(Slot::default());
                slots.len() - 1
            }
        };
        slots[id] = Slot {
            in_use: true,
            ..Slot::default()
        };
        id
    }

    pub fn release(&self, id: usize) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(id) {
            *slot = Slot::default();
            self.free.borrow_mut().push(id);
        }
    }

    /// Arms `id` to expire at `deadline` (never before it: the sweep
    /// compares against the clock it has just read).
    pub fn arm_at(&self, id: usize, deadline: Instant) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(id) {
            slot.deadline = Some(deadline);
            slot.expired = false;
        }
    }

    /// Arms `id` to expire `after` from now (the cached clock).
    pub fn arm(&self, id: usize, after: Duration) {
        self.arm_at(id, self.now.get() + after);
    }

    pub fn disarm(&self, id: usize) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(id) {
            slot.deadline = None;
            slot.expired = false;
            slot.waker = None;
        }
    }

    pub fn expired(&self, id: usize) -> bool {
        self.slots.borrow().get(id).is_some_and(|s| s.expired)
    }

    /// Remembers who to wake when `id` expires.
    pub fn set_waker(&self, id: usize, waker: &Waker) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(id) {
            match &slot.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => slot.waker = Some(waker.clone()),
            }
        }
    }

    /// Reads the clock, marks every passed deadline expired and wakes its
    /// connection. Returns how many expired.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        self.now.set(now);
        let mut to_wake = Vec::new();
        let mut expired = 0;
        {
            let mut slots = self.slots.borrow_mut();
            for slot in slots.iter_mut().filter(|s| s.in_use && !s.expired) {
                if slot.deadline.is_some_and(|d| d <= now) {
                    slot.expired = true;
                    expired += 1;
                    if let Some(w) = slot.waker.take() {
                        to_wake.push(w);
                    }
                }
            }
        }
        // Woken outside the borrow: a woken task may touch the table.
        for w in to_wake {
            w.wake();
        }
        expired
    }
}

/// Shortest wait [`within`] leaves to the shard's sweep: at
/// [`TIMEOUT_TICK_MS`] resolution a deadline of a second or more fires at
/// most 10% late. Shorter waits take a precise glommio timer.
pub const COARSE_DEADLINE_MIN: Duration = Duration::from_secs(1);

thread_local! {
    /// This thread's shard's table, for deadlines the server crate sets
    /// (upstream requests) without a handle on the shard's state.
    static LOCAL: RefCell<Option<Rc<Timeouts>>> = const { RefCell::new(None) };
}

/// Makes `t` the table [`within`] uses on this thread (the shard's
/// executor thread); `None` when the shard ends.
pub(crate) fn install_local(t: Option<Rc<Timeouts>>) {
    LOCAL.with(|l| *l.borrow_mut() = t);
}

/// Runs `fut` until `deadline`; `None` if the deadline passed first.
///
/// A glommio timer per wait inserts into and removes from the reactor's
/// B-tree (about 3,700 instructions per proxied request in callgrind, 13%
/// of the gateway's user space), so a wait of [`COARSE_DEADLINE_MIN`] or
/// more takes a slot in this shard's sweep table instead: it expires up to
/// one [`TIMEOUT_TICK_MS`] late, never early. Shorter waits, and threads
/// that are not a shard's, use a precise timer.
pub fn within<F: Future>(deadline: Instant, fut: F) -> Within<F> {
    let left = deadline.saturating_duration_since(Instant::now());
    let expiry = if left.is_zero() {
        None
    } else if let Some(table) = (left >= COARSE_DEADLINE_MIN)
        .then(|| LOCAL.with(|l| l.borrow().clone()))
        .flatten()
    {
        let id = table.register();
        table.arm_at(id, deadline);
        Some(Expiry::Swept { table, id })
    } else {
        Some(Expiry::Timer(glommio::timer::Timer::new(left)))
    };
    Within { fut, expiry }
}

pin_project_lite::pin_project! {
    /// The future [`within`] returns: a plain struct rather than an
    /// `async fn`, whose state machine kept a second copy of `fut` (the
    /// argument beside the running future), doubling the size of every
    /// future that waits on an upstream.
    pub struct Within<F> {
        #[pin]
        fut: F,
        // `None`: the deadline had passed before the wait began.
        expiry: Option<Expiry>,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Some(expiry) = this.expiry.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(v) = this.fut.poll(cx) {
            return Poll::Ready(Some(v));
        }
        match Pin::new(expiry).poll(cx) {
            Poll::Ready(()) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// How a [`within`] wait ends.
enum Expiry {
    /// A slot of the sweep table, released when the wait ends either way.
    Swept { table: Rc<Timeouts>, id: usize },
    /// A precise glommio timer (short waits).
    Timer(glommio::timer::Timer),
}

impl Future for Expiry {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Expiry::Swept { table, id } => {
                if table.expired(*id) {
                    return Poll::Ready(());
                }
                table.set_waker(*id, cx.waker());
                Poll::Pending
            }
            Expiry::Timer(t) => Pin::new(t).poll(cx).map(|_| ()),
        }
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        if let Expiry::Swept { table, id } = self {
            table.release(*id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_only_after_the_deadline_and_recycles_slots() {
        let t = Timeouts::default();
        let a = t.register();
        let b = t.register();
        t.arm(a, Duration::ZERO);
        t.arm(b, Duration::from_secs(3600));
        assert_eq!(t.sweep(), 1);
        assert!(t.expired(a));
        assert!(!t.expired(b));
        t.disarm(a);
        assert!(!t.expired(a));
        t.release(a);
        assert_eq!(t.register(), a, "a released slot is reused");
    }
}
