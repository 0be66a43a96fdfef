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
use std::task::Waker;
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

    /// Arms `id` to expire `after` from now (the cached clock).
    pub fn arm(&self, id: usize, after: Duration) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(id) {
            slot.deadline = Some(self.now.get() + after);
            slot.expired = false;
        }
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
