//! A sliding window of two counters over a fixed duration, in buckets: the
//! retry budget and the breaker's failure rate both ask "how many of X and
//! Y in the last N seconds" without keeping one entry per request.

use std::time::{Duration, Instant};

/// Buckets per window: the window slides in steps of window/10, so a count
/// is at most 10% older than the window says.
const BUCKETS: usize = 10;

pub(crate) struct Window {
    origin: Instant,
    bucket: Duration,
    /// (bucket number, a, b) per slot.
    slots: [(u64, u64, u64); BUCKETS],
}

impl Window {
    pub(crate) fn new(span: Duration, now: Instant) -> Self {
        let bucket = (span / BUCKETS as u32).max(Duration::from_millis(1));
        Window {
            origin: now,
            bucket,
            slots: [(u64::MAX, 0, 0); BUCKETS],
        }
    }

    fn index(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    pub(crate) fn add(&mut self, now: Instant, a: u64, b: u64) {
        let n = self.index(now);
        let slot = &mut self.slots[(n % BUCKETS as u64) as usize];
        if slot.0 != n {
            *slot = (n, 0, 0);
        }
        slot.1 += a;
        slot.2 += b;
    }

    /// Sums over the buckets still inside the window.
    pub(crate) fn sums(&self, now: Instant) -> (u64, u64) {
        let n = self.index(now);
        let oldest = n.saturating_sub(BUCKETS as u64 - 1);
        self.slots
            .iter()
            .filter(|s| s.0 != u64::MAX && s.0 >= oldest && s.0 <= n)
            .fold((0, 0), |(a, b), s| (a + s.1, b + s.2))
    }

    pub(crate) fn reset(&mut self, _now: Instant) {
        self.slots = [(u64::MAX, 0, 0); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire_after_the_window() {
        let t0 = Instant::now();
        let mut w = Window::new(Duration::from_secs(10), t0);
        w.add(t0, 5, 1);
        w.add(t0 + Duration::from_secs(5), 2, 0);
        assert_eq!(w.sums(t0 + Duration::from_secs(5)), (7, 1));
        assert_eq!(w.sums(t0 + Duration::from_secs(12)), (2, 0));
        assert_eq!(w.sums(t0 + Duration::from_secs(30)), (0, 0));
    }
}
