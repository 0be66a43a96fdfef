//! One shard's view of the configured upstreams: targets with their idle
//! connection pools, in-flight counts, circuit breakers and health, the
//! load balancer, and the retry budget. Everything here is shard-local
//! (`Cell`/`RefCell`); shards never share a connection or a counter.
//!
//! # Layout
//! - this file: [`Upstream`], [`Target`], target selection (balancing).
//! - [`pool`]: idle keep-alive connections per target.
//! - [`breaker`]: the per-target circuit breaker.
//! - [`budget`]: the retry budget; [`window`]: the sliding window both use.
//! - [`client`]: one HTTP/1.1 exchange with a target.
//! - [`health`]: active health checks.

pub(crate) mod breaker;
pub(crate) mod budget;
pub(crate) mod client;
pub(crate) mod health;
pub(crate) mod pool;
pub(crate) mod tls;
pub(crate) mod window;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config_gateway::{Balance, UpstreamConfig};
use breaker::Breaker;
use budget::RetryBudget;
use pool::IdlePool;

/// Per-shard state of one target.
pub(crate) struct Target {
    pub name: String,
    pub addr: SocketAddr,
    /// Set for `https://` targets.
    pub tls: Option<tls::TargetTls>,
    pub weight: u32,
    pub pool: IdlePool,
    pub in_flight: Cell<u32>,
    pub breaker: RefCell<Breaker>,
    /// Active health check verdict (true when no check is configured).
    pub healthy: Cell<bool>,
    /// Smooth weighted round robin state.
    current: Cell<i64>,
    pub requests: Cell<u64>,
    pub failures: Cell<u64>,
    /// Duration of each try (connect to response head), microseconds.
    pub latency: RefCell<crate::obs::metrics::LatencyHistogram>,
}

/// Per-shard state of one upstream.
pub(crate) struct Upstream {
    pub cfg: Arc<UpstreamConfig>,
    pub targets: Vec<Target>,
    pub budget: RefCell<RetryBudget>,
    rng: Cell<u64>,
    rr_start: Cell<usize>,
    /// Replaced by a config reload: background tasks (health checks) stop.
    pub retired: Cell<bool>,
}

/// What the balancer chose.
pub(crate) enum Pick {
    Target(usize),
    /// Every target is ejected; try again after this long.
    NoneAvailable(Duration),
}

impl Upstream {
    pub(crate) fn new(cfg: Arc<UpstreamConfig>, shard_id: usize) -> Self {
        let now = Instant::now();
        let targets = cfg
            .targets
            .iter()
            .map(|t| Target {
                name: t.name.clone(),
                addr: t.addr,
                tls: t.tls.clone(),
                weight: t.weight,
                pool: IdlePool::new(cfg.pool_size_per_shard),
                in_flight: Cell::new(0),
                breaker: RefCell::new(Breaker::new(&cfg.breaker, now)),
                healthy: Cell::new(true),
                current: Cell::new(0),
                requests: Cell::new(0),
                failures: Cell::new(0),
                latency: RefCell::new(crate::obs::metrics::LatencyHistogram::new()),
            })
            .collect();
        // Seeded per shard so shards do not make the same p2c choices in
        // lockstep.
        let seed = 0x9E37_79B9_7F4A_7C15_u64 ^ ((shard_id as u64 + 1) << 32) ^ now_nanos();
        Upstream {
            budget: RefCell::new(RetryBudget::new(&cfg.retry, now)),
            cfg,
            targets,
            rng: Cell::new(seed | 1),
            rr_start: Cell::new(shard_id),
            retired: Cell::new(false),
        }
    }

    pub(crate) fn random(&self) -> u64 {
        // xorshift64*: fast and good enough to spread choices.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn available(&self, i: usize, now: Instant) -> bool {
        let t = &self.targets[i];
        t.healthy.get() && t.breaker.borrow_mut().allows(now)
    }

    /// Chooses a target for the next try, avoiding `avoid` (the target the
    /// previous try failed on) when another one is available.
    /// Chooses a target among the available ones, avoiding those in `tried`
    /// (this request's earlier tries) while any other is available.
    pub(crate) fn pick(&self, now: Instant, tried: &[usize]) -> Pick {
        let n = self.targets.len();
        let mut avail: [usize; 64] = [0; 64];
        let mut count = 0;
        // More than 64 targets: consider a rotating window of 64 of them.
        let start = self.rr_start.get();
        for k in 0..n {
            let i = (start + k) % n;
            if count < avail.len() && self.available(i, now) {
                avail[count] = i;
                count += 1;
            }
        }
        if n > avail.len() {
            self.rr_start.set((start + 1) % n);
        }
        let mut list = &avail[..count];
        let filtered: [usize; 64];
        if !tried.is_empty() {
            let mut f = [0usize; 64];
            let mut m = 0;
            for &i in list {
                if !tried.contains(&i) {
                    f[m] = i;
                    m += 1;
                }
            }
            // Every available target was tried already: any of them again.
            if m > 0 {
                filtered = f;
                list = &filtered[..m];
            }
        }
        if list.is_empty() {
            return Pick::NoneAvailable(self.retry_after(now));
        }
        let chosen = match self.cfg.balance {
            Balance::RoundRobin => self.smooth_weighted(list),
            Balance::LeastRequests => self.least_loaded(list),
            Balance::P2c => {
                if list.len() == 1 {
                    list[0]
                } else {
                    let a = self.weighted_random(list, None);
                    let b = self.weighted_random(list, Some(a));
                    self.less_loaded(a, b)
                }
            }
        };
        Pick::Target(chosen)
    }

    /// nginx's smooth weighted round robin: each pick adds every weight to
    /// its current value, takes the largest and subtracts the total, which
    /// interleaves heavier targets instead of sending them bursts.
    fn smooth_weighted(&self, list: &[usize]) -> usize {
        let total: i64 = list
            .iter()
            .map(|&i| i64::from(self.targets[i].weight))
            .sum();
        let mut best = list[0];
        let mut best_val = i64::MIN;
        for &i in list {
            let t = &self.targets[i];
            let v = t.current.get() + i64::from(t.weight);
            t.current.set(v);
            if v > best_val {
                best_val = v;
                best = i;
            }
        }
        let t = &self.targets[best];
        t.current.set(t.current.get() - total);
        best
    }

    /// `a` has fewer in-flight requests per unit of weight than `b`.
    fn lighter(&self, a: usize, b: usize) -> bool {
        let ta = &self.targets[a];
        let tb = &self.targets[b];
        u64::from(ta.in_flight.get()) * u64::from(tb.weight)
            < u64::from(tb.in_flight.get()) * u64::from(ta.weight)
    }

    fn less_loaded(&self, a: usize, b: usize) -> usize {
        if self.lighter(b, a) {
            b
        } else {
            a
        }
    }

    fn least_loaded(&self, list: &[usize]) -> usize {
        let mut best = list[0];
        for &i in &list[1..] {
            if self.lighter(i, best) {
                best = i;
            }
        }
        // Ties (at light load, every target has nothing in flight) are
        // broken by weight, as nginx's least_conn does: otherwise a 1:9
        // weighting would come out 1:1 whenever requests do not overlap.
        let mut tied = [0usize; 64];
        let mut m = 0;
        for &i in list {
            if !self.lighter(best, i) {
                tied[m] = i;
                m += 1;
            }
        }
        self.weighted_random(&tied[..m], None)
    }

    fn weighted_random(&self, list: &[usize], not: Option<usize>) -> usize {
        let total: u64 = list
            .iter()
            .filter(|&&i| Some(i) != not)
            .map(|&i| u64::from(self.targets[i].weight))
            .sum();
        if total == 0 {
            return list[0];
        }
        let mut r = self.random() % total;
        for &i in list {
            if Some(i) == not {
                continue;
            }
            let w = u64::from(self.targets[i].weight);
            if r < w {
                return i;
            }
            r -= w;
        }
        list[0]
    }

    /// Seconds a client should wait when every target is ejected: until
    /// the first breaker half-opens, or one health-check interval.
    fn retry_after(&self, now: Instant) -> Duration {
        let breaker_wait = self
            .targets
            .iter()
            .filter(|t| t.healthy.get())
            .filter_map(|t| t.breaker.borrow().retry_after(now))
            .min();
        let health_wait = self.cfg.health_check.as_ref().map(|h| h.interval);
        breaker_wait
            .or(health_wait)
            .unwrap_or(Duration::from_secs(1))
            .max(Duration::from_secs(1))
    }

    /// Carries counters over from the upstream this one replaces (config
    /// reload), target by target name, so metrics do not reset. A try still
    /// in flight on the old one at the swap is counted there and lost.
    pub(crate) fn carry_from(&self, old: &Upstream) {
        for t in &self.targets {
            if let Some(o) = old.targets.iter().find(|o| o.name == t.name) {
                t.requests.set(o.requests.get());
                t.failures.set(o.failures.get());
                t.latency.borrow_mut().add(&o.latency.borrow());
                t.pool.carry_from(&o.pool);
                t.breaker.borrow_mut().carry_opened(&o.breaker.borrow());
            }
        }
    }

    /// Records how long a try took (for the per-target latency histogram).
    pub(crate) fn record_latency(&self, target: usize, took: Duration) {
        self.targets[target].latency.borrow_mut().record(took);
    }

    /// Retries the budget allows right now.
    pub(crate) fn retry_budget_left(&self) -> u64 {
        self.budget.borrow().left(Instant::now())
    }

    /// Counts a try that ended on the client's side (it went away
    /// mid-response): a request, but no verdict on the target.
    pub(crate) fn record_unjudged(&self, target: usize) {
        let t = &self.targets[target];
        t.requests.set(t.requests.get() + 1);
    }

    /// Records the outcome of a try sent in breaker `epoch`
    /// ([`InFlight::epoch`]) for the breaker and the counters.
    pub(crate) fn record(&self, target: usize, ok: bool, now: Instant, epoch: u64) {
        let t = &self.targets[target];
        t.requests.set(t.requests.get() + 1);
        if !ok {
            t.failures.set(t.failures.get() + 1);
        }
        t.breaker
            .borrow_mut()
            .record_from(&self.cfg.breaker, ok, now, epoch);
    }
}

fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos().into())
}

/// Marks a target busy for as long as it lives.
pub(crate) struct InFlight<'a> {
    target: &'a Target,
    epoch: u64,
    probe: bool,
}

impl<'a> InFlight<'a> {
    pub(crate) fn new(target: &'a Target) -> Self {
        target.in_flight.set(target.in_flight.get() + 1);
        let (epoch, probe) = target.breaker.borrow_mut().on_dispatch();
        InFlight {
            target,
            epoch,
            probe,
        }
    }

    /// The breaker epoch this try was sent in (for [`Upstream::record`]).
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let n = self.target.in_flight.get();
        self.target.in_flight.set(n.saturating_sub(1));
        self.target
            .breaker
            .borrow_mut()
            .on_release(self.epoch, self.probe);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config_gateway::{
        BreakerConfig, HostMode, RetryConfig, TargetConfig, DEFAULT_BREAKER_OPEN_FOR,
    };

    fn upstream(balance: Balance, weights: &[u32]) -> Upstream {
        let targets = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| TargetConfig {
                name: format!("127.0.0.1:{}", 9000 + i),
                addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
                weight: w,
                tls: None,
            })
            .collect();
        let cfg = UpstreamConfig {
            name: "u".into(),
            targets,
            balance,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            pool_size_per_shard: 4,
            host: HostMode::Preserve,
            retry: RetryConfig {
                attempts: 1,
                backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(1),
                budget_percent: 20,
                budget_window: Duration::from_secs(10),
            },
            breaker: BreakerConfig {
                consecutive_failures: 2,
                open_for: DEFAULT_BREAKER_OPEN_FOR,
                failure_rate: None,
                window: Duration::from_secs(10),
                min_requests: 10,
            },
            health_check: None,
        };
        Upstream::new(Arc::new(cfg), 0)
    }

    fn picks(u: &Upstream, n: usize) -> Vec<usize> {
        let now = Instant::now();
        let mut counts = vec![0; u.targets.len()];
        for _ in 0..n {
            match u.pick(now, &[]) {
                Pick::Target(i) => counts[i] += 1,
                Pick::NoneAvailable(_) => panic!("none available"),
            }
        }
        counts
    }

    #[test]
    fn round_robin_follows_weights_exactly() {
        let u = upstream(Balance::RoundRobin, &[3, 1]);
        assert_eq!(picks(&u, 400), vec![300, 100]);
    }

    #[test]
    fn p2c_and_least_requests_prefer_idle_targets() {
        for b in [Balance::P2c, Balance::LeastRequests] {
            let u = upstream(b, &[1, 1]);
            u.targets[0].in_flight.set(10);
            assert_eq!(picks(&u, 50), vec![0, 50], "{b:?}");
        }
    }

    #[test]
    fn p2c_spreads_by_weight_when_idle() {
        let u = upstream(Balance::P2c, &[1, 1, 1, 1]);
        let c = picks(&u, 4000);
        assert!(c.iter().all(|&n| n > 700), "{c:?}");
    }

    #[test]
    fn open_breakers_are_skipped_and_all_open_gives_retry_after() {
        let u = upstream(Balance::RoundRobin, &[1, 1]);
        let now = Instant::now();
        u.record(0, false, now, 0);
        u.record(0, false, now, 0);
        assert_eq!(picks(&u, 10), vec![0, 10]);
        u.record(1, false, now, 0);
        u.record(1, false, now, 0);
        match u.pick(now, &[]) {
            Pick::NoneAvailable(d) => assert!(d >= Duration::from_secs(9), "{d:?}"),
            Pick::Target(i) => panic!("picked {i}"),
        }
    }

    #[test]
    fn retry_avoids_the_failed_target() {
        let u = upstream(Balance::RoundRobin, &[1, 1]);
        let now = Instant::now();
        for _ in 0..10 {
            assert!(matches!(u.pick(now, &[0]), Pick::Target(1)));
        }
    }

    #[test]
    fn retries_avoid_every_target_tried_so_far() {
        // A third try goes to the one target not tried, whatever the
        // balancer (p2c and least_requests went back to the first).
        for b in [Balance::RoundRobin, Balance::LeastRequests, Balance::P2c] {
            let u = upstream(b, &[1, 1, 1]);
            let now = Instant::now();
            for _ in 0..50 {
                assert!(matches!(u.pick(now, &[0, 1]), Pick::Target(2)), "{b:?}");
                assert!(matches!(u.pick(now, &[2, 0]), Pick::Target(1)), "{b:?}");
            }
            // All tried: any of them again rather than none.
            assert!(matches!(u.pick(now, &[0, 1, 2]), Pick::Target(_)), "{b:?}");
        }
    }

    #[test]
    fn least_requests_breaks_ties_by_weight() {
        // Nothing in flight anywhere (light load): weights decide.
        let u = upstream(Balance::LeastRequests, &[1, 9]);
        let c = picks(&u, 2000);
        assert!(c[1] > 1600 && c[0] > 100, "{c:?}");
    }
}
