//! Retry budget for one upstream on one shard: retries in the sliding
//! window may be at most `min_retries` plus `budget_percent`% of the first
//! tries in it, so a failing upstream sees at most that much extra load
//! from retries however many clients there are.

use std::time::Instant;

use crate::config_gateway::RetryConfig;
use crate::upstream::window::Window;

/// Retries always allowed per window even with little traffic, so a
/// single failed request on a quiet shard can still be retried. Small
/// enough that it cannot multiply an outage.
pub const MIN_RETRIES_PER_WINDOW: u64 = 3;

pub(crate) struct RetryBudget {
    /// (first tries, retries)
    window: Window,
    percent: u64,
}

impl RetryBudget {
    pub(crate) fn new(cfg: &RetryConfig, now: Instant) -> Self {
        RetryBudget {
            window: Window::new(cfg.budget_window, now),
            percent: u64::from(cfg.budget_percent),
        }
    }

    pub(crate) fn record_request(&mut self, now: Instant) {
        self.window.add(now, 1, 0);
    }

    /// Takes one retry from the budget if there is one left.
    pub(crate) fn try_retry(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.window.sums(now);
        if retries * 100 < MIN_RETRIES_PER_WINDOW * 100 + requests * self.percent {
            self.window.add(now, 0, 1);
            true
        } else {
            false
        }
    }

    /// Retries left in the window now.
    pub(crate) fn left(&self, now: Instant) -> u64 {
        let (requests, retries) = self.window.sums(now);
        (MIN_RETRIES_PER_WINDOW + requests * self.percent / 100).saturating_sub(retries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_bounded_by_percent_plus_minimum() {
        let cfg = RetryConfig {
            attempts: 3,
            backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(1),
            budget_percent: 10,
            budget_window: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let mut b = RetryBudget::new(&cfg, t0);
        let mut granted = 0;
        for _ in 0..1000 {
            b.record_request(t0);
            if b.try_retry(t0) {
                granted += 1;
            }
        }
        assert!(granted <= 100 + MIN_RETRIES_PER_WINDOW, "{granted}");
        assert!(granted >= 100, "{granted}");
        assert_eq!(b.left(t0), 0);
    }
}
