//! Service level objectives (`[[slos]]`): good/total events in time
//! buckets per shard, error budget over the SLO's window, and multi-window
//! burn rates as in the SRE workbook (chapter 5, "Alerting on SLOs").
//!
//! An event is good when its status is not 5xx and it took no longer than
//! `latency_threshold`. Each shard counts its own events in rings of time
//! buckets (10 s for the short windows, 1 min up to 3 days, 1 h for the
//! budget window); a scrape sums each window's counts over shards (sums,
//! not averages) and derives the rates from the sums. Time is seconds
//! since the process started, passed in by the caller, so tests can drive
//! the clock.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config_obs::SloConfig;

/// Burn-rate windows reported, with their length in seconds.
pub const BURN_WINDOWS: [(&str, u64); 7] = [
    ("5m", 300),
    ("30m", 1_800),
    ("1h", 3_600),
    ("2h", 7_200),
    ("6h", 21_600),
    ("1d", 86_400),
    ("3d", 259_200),
];

/// The workbook's alert pairs: (long window, short window, burn-rate
/// threshold, severity). Both windows must burn above the threshold: the
/// long one proves the budget is really being spent, the short one that it
/// still is (so the alert resets quickly once fixed).
pub const ALERT_PAIRS: [(&str, &str, f64, &str); 4] = [
    ("1h", "5m", 14.4, "page"),
    ("6h", "30m", 6.0, "page"),
    ("1d", "2h", 3.0, "ticket"),
    ("3d", "6h", 1.0, "ticket"),
];

/// Ring resolutions: 10 s buckets cover the last hour, 1 min buckets the
/// last 3 days; so a 5 min window is off by at most one 10 s bucket.
const FINE_BUCKET_SECS: u64 = 10;
const FINE_SPAN_SECS: u64 = 3_600;
const COARSE_BUCKET_SECS: u64 = 60;
const COARSE_SPAN_SECS: u64 = 259_200;
/// The budget window is counted in hours (a 30 d window: 720 buckets).
const BUDGET_BUCKET_SECS: u64 = 3_600;

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Which bucket-length period this slot holds (slots are reused).
    epoch: u64,
    good: u64,
    total: u64,
}

/// Counts in fixed time buckets over a span, as a ring.
struct Ring {
    res: u64,
    slots: Vec<Bucket>,
}

impl Ring {
    fn new(res: u64, span: u64) -> Self {
        let n = usize::try_from(span / res + 1).unwrap_or(1);
        Ring {
            res,
            slots: vec![Bucket::default(); n],
        }
    }

    fn add(&mut self, now: u64, good: bool) {
        let epoch = now / self.res;
        let n = self.slots.len() as u64;
        let slot = &mut self.slots[(epoch % n) as usize];
        if slot.epoch != epoch {
            *slot = Bucket {
                epoch,
                good: 0,
                total: 0,
            };
        }
        slot.total += 1;
        slot.good += u64::from(good);
    }

    /// (good, total) over the trailing `window` seconds (whole buckets).
    fn sum(&self, now: u64, window: u64) -> (u64, u64) {
        let newest = now / self.res;
        let count = window.div_ceil(self.res).max(1);
        let oldest = newest.saturating_sub(count - 1);
        self.slots
            .iter()
            .filter(|b| b.total > 0 && b.epoch >= oldest && b.epoch <= newest)
            .fold((0, 0), |(g, t), b| (g + b.good, t + b.total))
    }
}

/// One SLO on one shard.
pub(crate) struct SloTracker {
    pub cfg: Arc<SloConfig>,
    fine: RefCell<Ring>,
    coarse: RefCell<Ring>,
    budget: RefCell<Ring>,
    good_all: Cell<u64>,
    total_all: Cell<u64>,
}

impl SloTracker {
    pub(crate) fn new(cfg: Arc<SloConfig>) -> Self {
        let window = cfg.window.as_secs().max(1);
        SloTracker {
            fine: RefCell::new(Ring::new(FINE_BUCKET_SECS, FINE_SPAN_SECS)),
            coarse: RefCell::new(Ring::new(COARSE_BUCKET_SECS, COARSE_SPAN_SECS)),
            budget: RefCell::new(Ring::new(BUDGET_BUCKET_SECS, window)),
            good_all: Cell::new(0),
            total_all: Cell::new(0),
            cfg,
        }
    }

    pub(crate) fn is_good(&self, status: u16, took: Duration) -> bool {
        status < 500 && self.cfg.latency_threshold.map_or(true, |t| took <= t)
    }

    pub(crate) fn observe(&self, now_secs: u64, good: bool) {
        self.fine.borrow_mut().add(now_secs, good);
        self.coarse.borrow_mut().add(now_secs, good);
        self.budget.borrow_mut().add(now_secs, good);
        self.total_all.set(self.total_all.get() + 1);
        self.good_all.set(self.good_all.get() + u64::from(good));
    }

    pub(crate) fn snapshot(&self, now_secs: u64) -> SloSnapshot {
        let windows = BURN_WINDOWS.map(|(_, secs)| {
            if secs <= FINE_SPAN_SECS {
                self.fine.borrow().sum(now_secs, secs)
            } else {
                self.coarse.borrow().sum(now_secs, secs)
            }
        });
        SloSnapshot {
            name: self.cfg.name.clone(),
            windows,
            budget_window: self
                .budget
                .borrow()
                .sum(now_secs, self.cfg.window.as_secs().max(1)),
            good_all: self.good_all.get(),
            total_all: self.total_all.get(),
        }
    }
}

/// One SLO's counts on one shard at a scrape.
pub(crate) struct SloSnapshot {
    pub name: String,
    /// (good, total) per `BURN_WINDOWS` entry.
    pub windows: [(u64, u64); 7],
    pub budget_window: (u64, u64),
    pub good_all: u64,
    pub total_all: u64,
}

/// The shard's SLOs and which of them each route counts towards.
pub(crate) struct SloTable {
    pub slos: Vec<Rc<SloTracker>>,
    /// By route index: indexes into `slos`.
    pub by_route: Vec<Vec<usize>>,
}

impl SloTable {
    /// Trackers for `cfgs`, reusing `old`'s by name (a reload keeps counts
    /// when the SLO's definition is unchanged).
    pub(crate) fn new(cfgs: &[Arc<SloConfig>], routes: &[String], old: Option<&SloTable>) -> Self {
        let slos: Vec<Rc<SloTracker>> = cfgs
            .iter()
            .map(|c| {
                old.and_then(|o| {
                    o.slos
                        .iter()
                        .find(|t| t.cfg.name == c.name && *t.cfg == **c)
                })
                .map_or_else(|| Rc::new(SloTracker::new(Arc::clone(c))), Rc::clone)
            })
            .collect();
        let by_route = routes
            .iter()
            .map(|r| {
                cfgs.iter()
                    .enumerate()
                    .filter(|(_, c)| c.routes.is_empty() || c.routes.iter().any(|n| n == r))
                    .map(|(i, _)| i)
                    .collect()
            })
            .collect();
        SloTable { slos, by_route }
    }

    /// Whether any SLO counts `route`'s requests.
    pub(crate) fn watches(&self, route: usize) -> bool {
        self.by_route.get(route).is_some_and(|l| !l.is_empty())
    }

    pub(crate) fn observe(&self, route: usize, status: u16, took: Duration, now_secs: u64) {
        if let Some(list) = self.by_route.get(route) {
            for &i in list {
                let t = &self.slos[i];
                t.observe(now_secs, t.is_good(status, took));
            }
        }
    }

    pub(crate) fn snapshot(&self, now_secs: u64) -> Vec<SloSnapshot> {
        self.slos.iter().map(|t| t.snapshot(now_secs)).collect()
    }
}

/// An SLO's numbers over all shards.
#[derive(Debug, Clone)]
pub(crate) struct SloReport {
    pub name: String,
    pub objective: f64,
    pub window_secs: u64,
    pub latency_threshold: Option<Duration>,
    pub good: u64,
    pub total: u64,
    pub good_all_time: u64,
    pub total_all_time: u64,
    pub budget_remaining: f64,
    pub burn_rates: [f64; 7],
    /// (good, total) per burn window.
    pub windows: [(u64, u64); 7],
}

/// Error rate over (good, total) divided by the budget rate `1 - objective`.
fn burn(good: u64, total: u64, objective: f64) -> f64 {
    if total == 0 {
        return 0.0;
    }
    let error_rate = (total - good) as f64 / total as f64;
    error_rate / (1.0 - objective)
}

/// Sums every shard's counts for each configured SLO.
pub(crate) fn report(cfgs: &[Arc<SloConfig>], per_shard: &[&[SloSnapshot]]) -> Vec<SloReport> {
    cfgs.iter()
        .map(|c| {
            let mut windows = [(0u64, 0u64); 7];
            let (mut good, mut total, mut good_all, mut total_all) = (0, 0, 0, 0);
            for shard in per_shard {
                for s in shard.iter().filter(|s| s.name == c.name) {
                    for (w, (g, t)) in windows.iter_mut().zip(s.windows) {
                        w.0 += g;
                        w.1 += t;
                    }
                    good += s.budget_window.0;
                    total += s.budget_window.1;
                    good_all += s.good_all;
                    total_all += s.total_all;
                }
            }
            let burn_rates = windows.map(|(g, t)| burn(g, t, c.objective));
            SloReport {
                name: c.name.clone(),
                objective: c.objective,
                window_secs: c.window.as_secs(),
                latency_threshold: c.latency_threshold,
                good,
                total,
                good_all_time: good_all,
                total_all_time: total_all,
                // Spent fraction = error rate over the window / budget rate.
                budget_remaining: 1.0 - burn(good, total, c.objective),
                burn_rates,
                windows,
            }
        })
        .collect()
}

/// `/admin/slo`: every SLO's numbers and the workbook's alert pairs.
pub(crate) fn to_json(reports: &[SloReport]) -> String {
    use std::fmt::Write as _;
    let mut s = String::from("{\"slos\":[");
    for (i, r) in reports.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str("{\"name\":");
        crate::obs::json::push_str(&mut s, &r.name);
        let _ = write!(
            s,
            ",\"objective\":{},\"window_seconds\":{},\"latency_threshold_ms\":{},\"good\":{},\"total\":{},\"error_budget_remaining\":{},\"burn_rates\":{{",
            json_f64(r.objective),
            r.window_secs,
            r.latency_threshold
                .map_or_else(|| "null".to_string(), |d| d.as_millis().to_string()),
            r.good,
            r.total,
            json_f64(r.budget_remaining),
        );
        for (j, (label, _)) in BURN_WINDOWS.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            let _ = write!(s, "\"{label}\":{}", json_f64(r.burn_rates[j]));
        }
        s.push_str("},\"windows\":{");
        for (j, (label, _)) in BURN_WINDOWS.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            let (g, t) = r.windows[j];
            let _ = write!(s, "\"{label}\":{{\"good\":{g},\"total\":{t}}}");
        }
        s.push_str("},\"alerts\":[");
        for (j, (long, short, threshold, severity)) in ALERT_PAIRS.iter().enumerate() {
            if j > 0 {
                s.push(',');
            }
            let rate = |w: &str| {
                BURN_WINDOWS
                    .iter()
                    .position(|(l, _)| *l == w)
                    .map_or(0.0, |k| r.burn_rates[k])
            };
            let firing = rate(long) > *threshold && rate(short) > *threshold;
            let _ = write!(
                s,
                "{{\"long_window\":\"{long}\",\"short_window\":\"{short}\",\"burn_rate_threshold\":{},\"severity\":\"{severity}\",\"firing\":{firing}}}",
                json_f64(*threshold)
            );
        }
        s.push_str("]}");
    }
    s.push_str("]}");
    s
}

fn json_f64(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "null".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(objective: f64) -> Arc<SloConfig> {
        Arc::new(SloConfig {
            name: "api".into(),
            routes: Vec::new(),
            objective,
            latency_threshold: Some(Duration::from_millis(200)),
            window: Duration::from_secs(30 * 86_400),
        })
    }

    #[test]
    fn burn_rates_over_windows_with_a_driven_clock() {
        let c = cfg(0.99);
        let t = SloTracker::new(Arc::clone(&c));
        // Three days ago: 1000 requests, all good.
        let start = 10 * 86_400;
        for _ in 0..1000 {
            t.observe(start, true);
        }
        // Two hours ago: 100 requests, 10% bad.
        let now = start + 3 * 86_400 - 60;
        for i in 0..100 {
            t.observe(now - 7_000, i % 10 != 0);
        }
        // Just now: 100 requests, 50% bad.
        for i in 0..100 {
            t.observe(now, i % 2 == 0);
        }
        let snap = t.snapshot(now);
        let r = &report(&[Arc::clone(&c)], &[&[snap]])[0];
        // 5m / 30m / 1h: only the last batch: 50% errors / 1% budget = 50.
        assert!((r.burn_rates[0] - 50.0).abs() < 1e-9, "{:?}", r.burn_rates);
        assert!((r.burn_rates[2] - 50.0).abs() < 1e-9);
        // 2h: both recent batches: 60 bad of 200 = 30.
        assert!((r.burn_rates[3] - 30.0).abs() < 1e-9, "{:?}", r.burn_rates);
        // 3d: all 1200: 60 bad of 1200 = 5% / 1% = 5.
        assert!((r.burn_rates[6] - 5.0).abs() < 1e-9, "{:?}", r.burn_rates);
        assert_eq!((r.good, r.total), (1140, 1200));
        assert!((r.budget_remaining - (1.0 - 5.0)).abs() < 1e-9);
        // An hour later the 5m window is empty again.
        let later = t.snapshot(now + 3_600);
        let r = &report(&[c], &[&[later]])[0];
        assert_eq!(r.burn_rates[0], 0.0);
    }

    #[test]
    fn slow_responses_count_against_the_budget() {
        let t = SloTracker::new(cfg(0.999));
        assert!(t.is_good(200, Duration::from_millis(200)));
        assert!(!t.is_good(200, Duration::from_millis(201)));
        assert!(!t.is_good(503, Duration::from_millis(1)));
        assert!(t.is_good(404, Duration::from_millis(1)));
    }

    #[test]
    fn shards_are_summed_not_averaged() {
        let c = cfg(0.9);
        let a = SloTracker::new(Arc::clone(&c));
        let b = SloTracker::new(Arc::clone(&c));
        for _ in 0..90 {
            a.observe(100, true);
        }
        for _ in 0..10 {
            b.observe(100, false);
        }
        let (sa, sb) = (a.snapshot(100), b.snapshot(100));
        let r = &report(&[c], &[&[sa], &[sb]])[0];
        // 10 bad of 100 = 10% / 10% budget = burn 1 (an average of the
        // shards' rates, 0 and 10, would say 5).
        assert!((r.burn_rates[0] - 1.0).abs() < 1e-9, "{:?}", r.burn_rates);
        assert!(r.budget_remaining.abs() < 1e-9);
    }
}
