//! Circuit breaker for one target on one shard.
//!
//! Closed: requests flow; it opens after `consecutive_failures` failures in
//! a row, or when the failure fraction over `window` reaches `failure_rate`
//! with at least `min_requests` outcomes. Open: the balancer skips the
//! target (passive outlier ejection) until `open_for` has passed. Half-open:
//! one probe request goes through; success closes, failure re-opens.

use std::time::{Duration, Instant};

use crate::config_gateway::BreakerConfig;
use crate::upstream::window::Window;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_in_flight: bool },
}

pub(crate) struct Breaker {
    state: BreakerState,
    consecutive: u32,
    outcomes: Window,
    opened: u64,
    /// Bumped each time it opens. A try carries the epoch it was sent in:
    /// once the breaker has opened, only tries sent since (the half-open
    /// probe) decide its state, not a slow request from before.
    epoch: u64,
}

impl Breaker {
    pub(crate) fn new(cfg: &BreakerConfig, now: Instant) -> Self {
        Breaker {
            state: BreakerState::Closed,
            consecutive: 0,
            outcomes: Window::new(cfg.window, now),
            opened: 0,
            epoch: 0,
        }
    }

    pub(crate) fn state(&self) -> BreakerState {
        self.state
    }

    /// How many times it has opened.
    pub(crate) fn times_opened(&self) -> u64 {
        self.opened
    }

    /// Keeps the open count of the breaker this one replaces (reload).
    pub(crate) fn carry_opened(&mut self, old: &Breaker) {
        self.opened = old.opened;
    }

    /// Whether a request may go to this target now (moves Open to
    /// HalfOpen once `open_for` has passed).
    pub(crate) fn allows(&mut self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open { until } if now >= until => {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: false,
                };
                true
            }
            BreakerState::Open { .. } => false,
            BreakerState::HalfOpen { probe_in_flight } => !probe_in_flight,
        }
    }

    /// A request was sent to the target (in half-open, it is the probe).
    /// Returns its epoch and whether it is the probe.
    pub(crate) fn on_dispatch(&mut self) -> (u64, bool) {
        let probe = matches!(self.state, BreakerState::HalfOpen { .. });
        if probe {
            self.state = BreakerState::HalfOpen {
                probe_in_flight: true,
            };
        }
        (self.epoch, probe)
    }

    /// The try in flight ended without an outcome being recorded yet (it
    /// is recorded right after, or never if the client went away): if it
    /// was the probe, let the next request probe instead of leaving the
    /// target stuck half-open. Other tries ending change nothing.
    pub(crate) fn on_release(&mut self, epoch: u64, probe: bool) {
        if probe && epoch == self.epoch {
            if let BreakerState::HalfOpen { .. } = self.state {
                self.state = BreakerState::HalfOpen {
                    probe_in_flight: false,
                };
            }
        }
    }

    /// How long until the target may be tried again (None: it may be now).
    pub(crate) fn retry_after(&self, now: Instant) -> Option<Duration> {
        match self.state {
            BreakerState::Open { until } if until > now => Some(until - now),
            _ => None,
        }
    }

    #[cfg(test)]
    pub(crate) fn record(&mut self, cfg: &BreakerConfig, ok: bool, now: Instant) {
        self.record_from(cfg, ok, now, self.epoch);
    }

    /// Records a try sent in `epoch`. While open or half-open, a try sent
    /// before the breaker opened is ignored: it says nothing about the
    /// target since then, and must not close the breaker under a probe
    /// still in flight.
    pub(crate) fn record_from(&mut self, cfg: &BreakerConfig, ok: bool, now: Instant, epoch: u64) {
        if !matches!(self.state, BreakerState::Closed) && epoch != self.epoch {
            return;
        }
        self.outcomes.add(now, u64::from(ok), u64::from(!ok));
        match self.state {
            BreakerState::HalfOpen { .. } => {
                if ok {
                    self.state = BreakerState::Closed;
                    self.consecutive = 0;
                    self.outcomes.reset(now);
                } else {
                    self.open(cfg, now);
                }
            }
            BreakerState::Open { .. } => {}
            BreakerState::Closed => {
                if ok {
                    self.consecutive = 0;
                    return;
                }
                self.consecutive += 1;
                let by_count = self.consecutive >= cfg.consecutive_failures;
                let by_rate = cfg.failure_rate.is_some_and(|rate| {
                    let (good, bad) = self.outcomes.sums(now);
                    let total = good + bad;
                    total >= u64::from(cfg.min_requests) && bad as f64 >= rate * total as f64
                });
                if by_count || by_rate {
                    self.open(cfg, now);
                }
            }
        }
    }

    fn open(&mut self, cfg: &BreakerConfig, now: Instant) {
        self.state = BreakerState::Open {
            until: now + cfg.open_for,
        };
        self.consecutive = 0;
        self.opened += 1;
        self.epoch += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            open_for: Duration::from_secs(10),
            failure_rate: Some(0.5),
            window: Duration::from_secs(10),
            min_requests: 10,
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_half_opens_later() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(&c, t0);
        b.record(&c, false, t0);
        b.record(&c, false, t0);
        assert!(b.allows(t0));
        b.record(&c, false, t0);
        assert!(!b.allows(t0));
        assert_eq!(b.retry_after(t0), Some(Duration::from_secs(10)));
        let later = t0 + Duration::from_secs(11);
        assert!(b.allows(later));
        b.on_dispatch();
        assert!(!b.allows(later), "one probe at a time");
        b.record(&c, true, later);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn a_try_from_before_the_opening_does_not_decide_half_open() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(&c, t0);
        let (old_epoch, _) = b.on_dispatch(); // a slow request, still out
        for _ in 0..3 {
            b.record(&c, false, t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert!(b.allows(later));
        let (epoch, probe) = b.on_dispatch();
        assert!(probe && epoch != old_epoch);
        // The slow request ends well: neither its release nor its verdict
        // closes the breaker or lets a second probe through.
        b.on_release(old_epoch, false);
        b.record_from(&c, true, later, old_epoch);
        assert_eq!(
            b.state(),
            BreakerState::HalfOpen {
                probe_in_flight: true
            }
        );
        assert!(!b.allows(later));
        b.record_from(&c, true, later, epoch);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn failed_probe_reopens() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(&c, t0);
        for _ in 0..3 {
            b.record(&c, false, t0);
        }
        let later = t0 + Duration::from_secs(11);
        assert!(b.allows(later));
        b.on_dispatch();
        b.record(&c, false, later);
        assert!(!b.allows(later));
        assert_eq!(b.times_opened(), 2);
    }

    #[test]
    fn success_resets_the_count() {
        let c = cfg();
        let t0 = Instant::now();
        let mut b = Breaker::new(&c, t0);
        for _ in 0..10 {
            b.record(&c, false, t0);
            b.record(&c, false, t0);
            b.record(&c, true, t0);
            if !b.allows(t0) {
                // the failure-rate rule may trip once min_requests is met
                return;
            }
        }
    }

    #[test]
    fn failure_rate_opens_with_enough_requests() {
        let mut c = cfg();
        c.consecutive_failures = 1000;
        let t0 = Instant::now();
        let mut b = Breaker::new(&c, t0);
        for _ in 0..4 {
            b.record(&c, true, t0);
            b.record(&c, false, t0);
        }
        assert!(b.allows(t0), "8 outcomes < min_requests");
        b.record(&c, true, t0);
        b.record(&c, false, t0);
        assert!(!b.allows(t0), "5 of 10 failed");
    }
}
