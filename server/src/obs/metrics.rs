//! What each shard records on its request path, and the snapshot it sends
//! to the scraping shard.
//!
//! Recording is plain `Cell` arithmetic and one HDR-histogram `record` per
//! request, on the shard's own memory. A scrape asks every shard for a
//! [`ShardSnapshot`] by message (see `hub`); snapshots are merged there
//! (histograms added bucket by bucket, never averaged) and rendered by
//! `expo`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use shardline_shard::{HandshakeResult, ShardCounters, TimeoutKind};

use crate::upstream::breaker::BreakerState;
use crate::upstream::Upstream;

/// Latencies are recorded in microseconds from 1 µs to one hour, with two
/// significant digits (1% resolution): about 25 KiB per histogram, small
/// enough for one per route and target per shard; a request over an hour is
/// clamped to an hour.
pub const LATENCY_MAX_MICROS: u64 = 3_600_000_000;
const LATENCY_SIGFIGS: u8 = 2;

/// A latency histogram with the exact sum kept beside it (HDR buckets give
/// counts, Prometheus also wants `_sum`).
#[derive(Clone)]
pub(crate) struct LatencyHistogram {
    pub hist: Histogram<u64>,
    pub sum_micros: u64,
}

impl LatencyHistogram {
    pub(crate) fn new() -> Self {
        // The bounds are constants that hdrhistogram accepts (low >= 1,
        // high >= 2 * low, sigfigs <= 5), as the unit tests show.
        let hist = Histogram::new_with_bounds(1, LATENCY_MAX_MICROS, LATENCY_SIGFIGS)
            .expect("constant histogram bounds are valid");
        LatencyHistogram {
            hist,
            sum_micros: 0,
        }
    }

    pub(crate) fn record(&mut self, took: Duration) {
        let us = u64::try_from(took.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, LATENCY_MAX_MICROS);
        self.hist.saturating_record(us);
        self.sum_micros = self.sum_micros.saturating_add(us);
    }

    /// Adds another histogram's counts (merging shards, or carrying counts
    /// over a reload).
    pub(crate) fn add(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so this cannot fail; if it somehow
        // did, the counts of `other` are left out rather than panicking.
        let _ = self.hist.add(&other.hist);
        self.sum_micros = self.sum_micros.saturating_add(other.sum_micros);
    }

    pub(crate) fn count(&self) -> u64 {
        self.hist.len()
    }
}

/// Status classes counted per route: 1xx..5xx (anything else lands in 5xx:
/// a response without a valid status is a server fault).
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

pub(crate) fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        _ => 4,
    }
}

/// One route's counters on one shard. Shared (`Rc`) between generations of
/// the config so a reload does not reset them.
pub(crate) struct RouteMetrics {
    pub name: Arc<str>,
    by_class: [Cell<u64>; 5],
    latency: RefCell<LatencyHistogram>,
    /// Requests a policy refused, by the problem type's slug
    /// (`unauthenticated`, `invalid-credentials`, `insufficient-scope`,
    /// `rate-limited`, `quota-exceeded`, ...). A handful of distinct
    /// reasons per route: a short list beats a map.
    rejections: RefCell<Vec<(String, u64)>>,
}

impl RouteMetrics {
    pub(crate) fn new(name: Arc<str>) -> Self {
        RouteMetrics {
            name,
            by_class: std::array::from_fn(|_| Cell::new(0)),
            latency: RefCell::new(LatencyHistogram::new()),
            rejections: RefCell::new(Vec::new()),
        }
    }

    /// Counts a request a policy refused; `reason` is the problem type's
    /// last path segment.
    pub(crate) fn reject(&self, problem_type: &str) {
        let reason = problem_type.rsplit('/').next().unwrap_or(problem_type);
        let mut r = self.rejections.borrow_mut();
        match r.iter_mut().find(|(n, _)| n == reason) {
            Some((_, c)) => *c += 1,
            None => r.push((reason.to_string(), 1)),
        }
    }

    pub(crate) fn observe(&self, status: u16, took: Duration) {
        let c = &self.by_class[status_class(status)];
        c.set(c.get() + 1);
        self.latency.borrow_mut().record(took);
    }

    fn snapshot(&self) -> RouteSnapshot {
        RouteSnapshot {
            name: self.name.to_string(),
            by_class: std::array::from_fn(|i| self.by_class[i].get()),
            latency: self.latency.borrow().clone(),
            rejections: self.rejections.borrow().clone(),
        }
    }
}

/// Name used for requests no route matched (404, 405, 501, OPTIONS).
pub const UNMATCHED_ROUTE: &str = "_unmatched";

// ---- snapshots: plain data, `Send`, one per shard per scrape ----

pub(crate) struct RouteSnapshot {
    pub name: String,
    pub by_class: [u64; 5],
    pub latency: LatencyHistogram,
    /// (reason, count) of policy refusals.
    pub rejections: Vec<(String, u64)>,
}

pub(crate) struct CountersSnapshot {
    pub accepted: u64,
    pub open: u64,
    pub refused: u64,
    pub requests: u64,
    pub in_flight: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Indexed like `ErrorKind::ALL`.
    pub parse_errors: Vec<u64>,
    /// Indexed like `TimeoutKind::ALL`.
    pub timeouts: [u64; 3],
    /// Indexed like `HandshakeResult::ALL`.
    pub tls_handshakes: [u64; 4],
}

impl CountersSnapshot {
    pub(crate) fn of(c: &ShardCounters) -> Self {
        CountersSnapshot {
            accepted: c.accepted.get(),
            open: c.open.get(),
            refused: c.refused.get(),
            requests: c.requests.get(),
            in_flight: c.in_flight.get(),
            bytes_in: c.bytes_in.get(),
            bytes_out: c.bytes_out.get(),
            parse_errors: c.parse_errors.iter().map(Cell::get).collect(),
            timeouts: TimeoutKind::ALL.map(|k| c.timeouts_of(k)),
            tls_handshakes: HandshakeResult::ALL.map(|r| c.tls_handshakes_of(r)),
        }
    }
}

pub(crate) struct TargetSnapshot {
    pub name: String,
    pub requests: u64,
    pub failures: u64,
    pub in_flight: u64,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: u8,
    pub breaker_opened: u64,
    pub healthy: bool,
    pub pool_idle: u64,
    pub pool_opened: u64,
    pub pool_reused: u64,
    pub latency: LatencyHistogram,
}

pub(crate) struct UpstreamSnapshot {
    pub name: String,
    pub targets: Vec<TargetSnapshot>,
    pub retry_budget_left: u64,
}

impl UpstreamSnapshot {
    pub(crate) fn of(up: &Upstream) -> Self {
        UpstreamSnapshot {
            name: up.cfg.name.clone(),
            retry_budget_left: up.retry_budget_left(),
            targets: up
                .targets
                .iter()
                .map(|t| {
                    let (idle, opened, reused) = t.pool.stats();
                    let breaker = t.breaker.borrow();
                    TargetSnapshot {
                        name: t.name.clone(),
                        requests: t.requests.get(),
                        failures: t.failures.get(),
                        in_flight: u64::from(t.in_flight.get()),
                        breaker_state: match breaker.state() {
                            BreakerState::Closed => 0,
                            BreakerState::Open { .. } => 1,
                            BreakerState::HalfOpen { .. } => 2,
                        },
                        breaker_opened: breaker.times_opened(),
                        healthy: t.healthy.get(),
                        pool_idle: idle as u64,
                        pool_opened: opened,
                        pool_reused: reused,
                        latency: t.latency.borrow().clone(),
                    }
                })
                .collect(),
        }
    }
}

pub(crate) struct CacheSnapshot {
    pub route: String,
    pub hits: u64,
    pub misses: u64,
    pub stale_served: u64,
    pub evictions: u64,
    pub stores: u64,
    pub entries: u64,
    pub bytes: u64,
}

/// Lines a log sink took and dropped on one shard.
#[derive(Default, Clone, Copy)]
pub(crate) struct LogCounts {
    pub lines: u64,
    pub dropped: u64,
}

/// Everything one shard reports to a scrape.
pub(crate) struct ShardSnapshot {
    pub shard: usize,
    pub counters: CountersSnapshot,
    pub routes: Vec<RouteSnapshot>,
    pub upstreams: Vec<UpstreamSnapshot>,
    pub caches: Vec<CacheSnapshot>,
    pub access_log: LogCounts,
    pub audit_log: LogCounts,
    pub slos: Vec<crate::obs::slo::SloSnapshot>,
    /// The SLO definitions this shard counts for (its config generation).
    pub slo_configs: Vec<Arc<crate::config_obs::SloConfig>>,
    pub spans_exported: u64,
    pub spans_dropped: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub config_generation: u64,
    /// The certificates the HTTPS listener serves now; `None` without one.
    pub tls_certificates: Option<Vec<crate::tls::ServedCert>>,
}

/// The per-route part of a shard's registry.
pub(crate) struct RouteTable {
    /// By route index of the running config.
    pub routes: Vec<Rc<RouteMetrics>>,
    pub unmatched: Rc<RouteMetrics>,
}

impl RouteTable {
    /// Metrics for `names`, reusing those of `old` with the same name so
    /// counts carry over a reload.
    pub(crate) fn new(names: &[String], old: Option<&RouteTable>) -> Self {
        let routes = names
            .iter()
            .map(|n| {
                old.and_then(|o| o.routes.iter().find(|r| &*r.name == n.as_str()))
                    .map_or_else(
                        || Rc::new(RouteMetrics::new(Arc::from(n.as_str()))),
                        Rc::clone,
                    )
            })
            .collect();
        let unmatched = old.map_or_else(
            || Rc::new(RouteMetrics::new(Arc::from(UNMATCHED_ROUTE))),
            |o| Rc::clone(&o.unmatched),
        );
        RouteTable { routes, unmatched }
    }

    pub(crate) fn snapshot(&self) -> Vec<RouteSnapshot> {
        self.routes
            .iter()
            .chain(std::iter::once(&self.unmatched))
            .map(|r| r.snapshot())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_by_adding_counts() {
        let mut a = LatencyHistogram::new();
        let mut b = LatencyHistogram::new();
        for _ in 0..90 {
            a.record(Duration::from_micros(100));
        }
        for _ in 0..10 {
            b.record(Duration::from_millis(50));
        }
        a.add(&b);
        assert_eq!(a.count(), 100);
        assert_eq!(a.sum_micros, 90 * 100 + 10 * 50_000);
        // The p95 of the merged data is the slow shard's value; averaging
        // per-shard percentiles would have said ~25 ms.
        let p95 = a.hist.value_at_quantile(0.95);
        assert!((49_000..=51_000).contains(&p95), "{p95}");
    }

    #[test]
    fn reload_keeps_route_counters_by_name() {
        let t1 = RouteTable::new(&["a".into(), "b".into()], None);
        t1.routes[1].observe(200, Duration::from_millis(1));
        let t2 = RouteTable::new(&["b".into(), "c".into()], Some(&t1));
        assert_eq!(t2.routes[0].snapshot().by_class[1], 1);
        assert_eq!(t2.routes[1].snapshot().by_class[1], 0);
    }

    #[test]
    fn classes() {
        assert_eq!(status_class(101), 0);
        assert_eq!(status_class(204), 1);
        assert_eq!(status_class(404), 3);
        assert_eq!(status_class(503), 4);
        assert_eq!(status_class(0), 4);
    }
}
