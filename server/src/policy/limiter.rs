//! Global budgets (rate limits and quotas) kept by owner shards and spent
//! through local shares, without locks and without a cross-core call per
//! request.
//!
//! Every (policy, key) pair has one *owner* shard: `hash(pair) % shards`.
//! The owner holds the authoritative budget: a token bucket refilled at the
//! configured rate up to `burst` (rate limits), or the count left in the
//! current day or month (quotas). Other shards spend a local *share*: a few
//! tokens leased from the owner by message ([`Want`] / [`Grant`] over the
//! shard mesh). A shard asks for the next lease when its share runs below
//! half a lease, so steady traffic rarely waits; requests that find the
//! share empty are refused (429) and never wait for a message.
//!
//! For rate limits, a share that has never seen a key starts with one
//! token on credit (so a client's first request on a new connection is not
//! refused while the first lease is on its way); the credit is reported
//! with the first `Want` and taken off the owner's budget. Quotas give no
//! credit: on a multi-shard server, routes with a quota take the streaming
//! path, where a request that finds its share empty while a lease is on its
//! way waits for the owner's answer (bounded) instead of being refused.
//!
//! # Error bound
//! Tokens only come from the owner's bucket, which starts at `burst` and
//! gains `rate` per second, so over any window of T seconds the requests
//! admitted are at most `burst + rate × T + c`, where `c` is the credit
//! not yet reported to the owner when the window ends: at most one token
//! per non-owner shard per key, and reported within one message delay.
//! Leases never add to the budget; tokens left in an idle share are lost
//! (the error is on the side of admitting less), bounded by one lease
//! (`rate × 20 ms`, at most `burst / (2 × shards)`) per shard.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use shardline_shard::mesh::{Mesh, Message};

use super::config::QuotaPeriod;
use shardline_shard::hash::{hash64, BuildBytesHasher};

/// A lease covers this much of the rate: short enough that tokens stranded
/// on a shard that stops seeing traffic are a small fraction of the rate,
/// long enough that a busy shard asks the owner ~50 times a second, not
/// per request.
pub const RATE_LEASE_SECS: f64 = 0.02;

/// Quota leases are at most this many requests (and a hundredth of the
/// quota per shard): what a restart may lose from an unused lease.
pub const QUOTA_LEASE_MAX: f64 = 100.0;

/// A share whose lease request got no answer for this long asks again
/// (the owner shard may have been busy or the message lost at shutdown).
pub const PENDING_TIMEOUT_SECS: f64 = 1.0;

/// Keys each table (owned budgets, local shares) holds per shard. Past it,
/// idle entries are swept; if none are idle, new keys are refused (429)
/// rather than growing memory without bound.
pub const MAX_KEYS_PER_SHARD: usize = 100_000;

/// A share not used for this long is dropped (with its unused tokens).
pub const SHARE_IDLE_SECS: f64 = 30.0;

/// How often idle entries are swept.
pub const SWEEP_SECS: u64 = 10;

#[derive(Debug, Clone, Copy)]
pub(crate) enum Budget {
    Rate { per_sec: f64, burst: f64 },
    Quota { limit: u64, period: QuotaPeriod },
}

#[derive(Debug, Clone)]
pub(crate) struct LimitSpec {
    /// The route's name (stable across restarts: quota files use it).
    pub route: Rc<str>,
    pub budget: Budget,
    lease: f64,
}

impl LimitSpec {
    pub(crate) fn new(route: Rc<str>, budget: Budget, shards: usize) -> Self {
        let n = shards.max(1) as f64;
        let lease = match budget {
            Budget::Rate { per_sec, burst } => {
                (per_sec * RATE_LEASE_SECS).min(burst / (2.0 * n)).max(1.0)
            }
            Budget::Quota { limit, .. } => (limit as f64 / (100.0 * n)).clamp(1.0, QUOTA_LEASE_MAX),
        };
        LimitSpec {
            route,
            budget,
            lease: lease.floor(),
        }
    }
}

/// What a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow {
        remaining: u64,
        reset_secs: u64,
    },
    Deny {
        retry_after_secs: u64,
    },
    /// A quota share is empty and its lease is on its way: a caller that
    /// can wait (the streaming path) waits for [`Limiters::settled`] and
    /// asks again.
    Pending,
}

/// The owner's budget for one key.
#[derive(Debug, Clone)]
pub(crate) struct Owned {
    pub tokens: f64,
    /// Rate: when `tokens` was last brought up to date (seconds since the
    /// limiter's epoch). Quota: the period `tokens` belongs to.
    pub at: f64,
}

/// A non-owner shard's share of one key's budget.
#[derive(Debug, Clone)]
struct Share {
    tokens: f64,
    /// Tokens spent on credit, not yet reported to the owner.
    debt: f64,
    pending_since: Option<f64>,
    /// Do not ask the owner again before this (it said the budget is dry).
    retry_at: f64,
    last_use: f64,
    /// Quota: the period the owner said is spent.
    spent_period: Option<u64>,
}

/// Shard → owner: spend `debt`, lease up to `want` more.
struct Want {
    key: Box<[u8]>,
    debt: f64,
    want: f64,
}

/// Owner → shard: `tokens` leased; if 0, the budget is dry for `retry_in`
/// seconds (rates) or for `period` (quotas).
struct Grant {
    key: Box<[u8]>,
    tokens: f64,
    retry_in: f64,
    period: u64,
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One shard's limiter tables for every rate limit and quota.
pub(crate) struct Limiters {
    me: usize,
    count: usize,
    mesh: Option<Rc<Mesh>>,
    pub(crate) specs: Vec<LimitSpec>,
    pub(crate) owned: RefCell<HashMap<Box<[u8]>, Owned, BuildBytesHasher>>,
    shares: RefCell<HashMap<Box<[u8]>, Share, BuildBytesHasher>>,
    /// Quotas changed since the last save.
    pub(crate) dirty: std::cell::Cell<bool>,
    epoch: Instant,
}

/// Where a spec id and key are packed together: `[id: u32 LE][key]`.
pub(crate) fn full_key(out: &mut Vec<u8>, id: usize, key: &[u8]) {
    out.clear();
    out.extend_from_slice(&(id as u32).to_le_bytes());
    out.extend_from_slice(key);
}

impl Limiters {
    pub(crate) fn new(
        me: usize,
        count: usize,
        mesh: Option<Rc<Mesh>>,
        specs: Vec<LimitSpec>,
    ) -> Rc<Limiters> {
        let count = if mesh.is_some() { count.max(1) } else { 1 };
        let l = Rc::new(Limiters {
            me: if count == 1 { 0 } else { me },
            count,
            mesh,
            specs,
            owned: RefCell::new(HashMap::default()),
            shares: RefCell::new(HashMap::default()),
            dirty: std::cell::Cell::new(false),
            epoch: Instant::now(),
        });
        if let Some(mesh) = &l.mesh {
            let weak: Weak<Limiters> = Rc::downgrade(&l);
            mesh.subscribe(Rc::new(move |from, msg| {
                let Some(l) = weak.upgrade() else {
                    return Some(msg);
                };
                let msg = match msg.downcast::<Want>() {
                    Ok(w) => {
                        l.on_want(from, *w);
                        return None;
                    }
                    Err(m) => m,
                };
                match msg.downcast::<Grant>() {
                    Ok(g) => {
                        l.on_grant(*g);
                        None
                    }
                    Err(m) => Some(m),
                }
            }));
        }
        if !l.specs.is_empty() {
            let weak = Rc::downgrade(&l);
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(std::time::Duration::from_secs(SWEEP_SECS)).await;
                    let Some(l) = weak.upgrade() else { return };
                    l.sweep();
                }
            })
            .detach();
        }
        l
    }

    /// Whether budgets are split between shards (more than one shard).
    pub(crate) fn is_shared(&self) -> bool {
        self.count > 1
    }

    pub(crate) fn me(&self) -> usize {
        self.me
    }

    fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    pub(crate) fn owner_of(&self, full: &[u8]) -> usize {
        if self.count <= 1 {
            return self.me;
        }
        (hash64(full) % self.count as u64) as usize
    }

    /// Spends one token of spec `id` for `key`.
    /// Whether a share's lease request has been answered (or there is
    /// nothing to wait for).
    pub(crate) fn settled(&self, full: &[u8]) -> bool {
        match self.shares.borrow().get(full) {
            Some(s) => s.tokens >= 1.0 || s.pending_since.is_none() || s.spent_period.is_some(),
            None => true,
        }
    }

    pub(crate) fn take(&self, id: usize, full: &[u8], can_wait: bool) -> Decision {
        let Some(spec) = self.specs.get(id) else {
            return Decision::Deny {
                retry_after_secs: 1,
            };
        };
        let now = self.now();
        let unix = unix_now();
        if self.owner_of(full) == self.me {
            let mut owned = self.owned.borrow_mut();
            if !owned.contains_key(full) && owned.len() >= MAX_KEYS_PER_SHARD {
                drop(owned);
                self.sweep();
                owned = self.owned.borrow_mut();
                if owned.len() >= MAX_KEYS_PER_SHARD {
                    return Decision::Deny {
                        retry_after_secs: 1,
                    };
                }
            }
            // get_mut first: `entry` would allocate the key on every request.
            if !owned.contains_key(full) {
                owned.insert(full.into(), fresh(spec.budget, now, unix));
            }
            let Some(o) = owned.get_mut(full) else {
                return Decision::Deny {
                    retry_after_secs: 1,
                };
            };
            bring_up_to_date(o, spec.budget, now, unix);
            if o.tokens >= 1.0 {
                o.tokens -= 1.0;
                if matches!(spec.budget, Budget::Quota { .. }) {
                    self.dirty.set(true);
                }
                let remaining = o.tokens;
                Decision::Allow {
                    remaining: remaining as u64,
                    reset_secs: reset_secs(spec.budget, remaining, unix),
                }
            } else {
                Decision::Deny {
                    retry_after_secs: retry_secs(spec.budget, o.tokens, unix),
                }
            }
        } else {
            let mut shares = self.shares.borrow_mut();
            if !shares.contains_key(full) && shares.len() >= MAX_KEYS_PER_SHARD {
                drop(shares);
                self.sweep();
                shares = self.shares.borrow_mut();
                if shares.len() >= MAX_KEYS_PER_SHARD {
                    return Decision::Deny {
                        retry_after_secs: 1,
                    };
                }
            }
            // A rate limit admits the first request on a new key on credit;
            // a quota does not (a credit per new share would hand out a
            // request past a spent quota after every restart or sweep).
            let credit = match spec.budget {
                Budget::Rate { .. } => 1.0,
                Budget::Quota { .. } => 0.0,
            };
            if !shares.contains_key(full) {
                shares.insert(
                    full.into(),
                    Share {
                        tokens: credit,
                        debt: credit,
                        pending_since: None,
                        retry_at: 0.0,
                        last_use: now,
                        spent_period: None,
                    },
                );
            }
            let Some(s) = shares.get_mut(full) else {
                return Decision::Deny {
                    retry_after_secs: 1,
                };
            };
            s.last_use = now;
            if let (Some(p), Budget::Quota { period, .. }) = (s.spent_period, spec.budget) {
                if p == super::quota::period_of(period, unix) {
                    return Decision::Deny {
                        retry_after_secs: retry_secs(spec.budget, 0.0, unix),
                    };
                }
                s.spent_period = None;
                s.retry_at = 0.0;
            }
            let allow = s.tokens >= 1.0;
            if allow {
                s.tokens -= 1.0;
            }
            let stale = s
                .pending_since
                .map_or(true, |t| now - t > PENDING_TIMEOUT_SECS);
            // Rates lease ahead (before the share runs dry); quotas only
            // when a request finds the share empty, so no lease sits unused
            // on a shard while another shard's client is refused.
            let wanted = match spec.budget {
                Budget::Rate { .. } => s.tokens < (spec.lease / 2.0).max(1.0),
                Budget::Quota { .. } => !allow,
            };
            if stale && wanted && now >= s.retry_at {
                let want = Want {
                    key: full.into(),
                    debt: s.debt,
                    want: spec.lease,
                };
                let owner = self.owner_of(full);
                if let Some(mesh) = &self.mesh {
                    if mesh.send(owner, Box::new(want)) {
                        s.debt = 0.0;
                        s.pending_since = Some(now);
                    }
                }
            }
            if allow {
                Decision::Allow {
                    remaining: s.tokens as u64,
                    reset_secs: reset_secs(spec.budget, s.tokens, unix),
                }
            } else if can_wait
                && matches!(spec.budget, Budget::Quota { .. })
                && s.pending_since.is_some()
            {
                Decision::Pending
            } else {
                let wait = (s.retry_at - now).max(0.0);
                Decision::Deny {
                    retry_after_secs: (wait.ceil() as u64).max(1),
                }
            }
        }
    }

    fn spec_of(&self, full: &[u8]) -> Option<&LimitSpec> {
        let id = u32::from_le_bytes(full.get(..4)?.try_into().ok()?) as usize;
        self.specs.get(id)
    }

    fn on_want(&self, from: usize, w: Want) {
        let Some(spec) = self.spec_of(&w.key) else {
            return;
        };
        let now = self.now();
        let unix = unix_now();
        let mut owned = self.owned.borrow_mut();
        if !owned.contains_key(&w.key) && owned.len() >= MAX_KEYS_PER_SHARD {
            // Cannot track it: lease nothing, the share will ask again.
            drop(owned);
            self.reply(from, w.key, 0.0, 1.0, 0);
            return;
        }
        let o = owned
            .entry(w.key.clone())
            .or_insert_with(|| fresh(spec.budget, now, unix));
        bring_up_to_date(o, spec.budget, now, unix);
        o.tokens -= w.debt;
        let grant = if o.tokens >= 1.0 {
            o.tokens.floor().min(w.want.max(1.0))
        } else {
            0.0
        };
        o.tokens -= grant;
        let (retry_in, period) = match spec.budget {
            Budget::Rate { per_sec, .. } => (((1.0 - o.tokens) / per_sec).max(0.0), 0),
            Budget::Quota { period, .. } => (0.0, super::quota::period_of(period, unix)),
        };
        if matches!(spec.budget, Budget::Quota { .. }) && (grant > 0.0 || w.debt > 0.0) {
            self.dirty.set(true);
        }
        drop(owned);
        self.reply(from, w.key, grant, retry_in, period);
    }

    fn reply(&self, to: usize, key: Box<[u8]>, tokens: f64, retry_in: f64, period: u64) {
        if let Some(mesh) = &self.mesh {
            mesh.send(
                to,
                Box::new(Grant {
                    key,
                    tokens,
                    retry_in,
                    period,
                }) as Message,
            );
        }
    }

    fn on_grant(&self, g: Grant) {
        let is_quota = matches!(
            self.spec_of(&g.key).map(|s| s.budget),
            Some(Budget::Quota { .. })
        );
        let now = self.now();
        let mut shares = self.shares.borrow_mut();
        let Some(s) = shares.get_mut(&g.key) else {
            // Swept meanwhile: the lease is lost (admits less, never more).
            return;
        };
        s.pending_since = None;
        s.tokens += g.tokens;
        if g.tokens < 1.0 {
            if is_quota {
                s.spent_period = Some(g.period);
            } else {
                s.retry_at = now + g.retry_in;
            }
        }
    }

    /// Drops idle shares and owned budgets equal to a fresh one.
    pub(crate) fn sweep(&self) {
        let now = self.now();
        let unix = unix_now();
        self.shares.borrow_mut().retain(|_, s| {
            now - s.last_use < SHARE_IDLE_SECS
                || s.pending_since.is_some()
                || s.spent_period.is_some()
        });
        let specs = &self.specs;
        self.owned.borrow_mut().retain(|k, o| {
            let Some(spec) = u32::from_le_bytes(
                k.get(..4)
                    .and_then(|b| b.try_into().ok())
                    .unwrap_or([0xff; 4]),
            )
            .try_into()
            .ok()
            .and_then(|i: usize| specs.get(i)) else {
                return false;
            };
            bring_up_to_date(o, spec.budget, now, unix);
            match spec.budget {
                Budget::Rate { burst, .. } => o.tokens < burst,
                // Quotas of a past period are done with.
                Budget::Quota { period, .. } => {
                    o.at as u64 == super::quota::period_of(period, unix)
                }
            }
        });
    }
}

fn fresh(budget: Budget, now: f64, unix: u64) -> Owned {
    match budget {
        Budget::Rate { burst, .. } => Owned {
            tokens: burst,
            at: now,
        },
        Budget::Quota { limit, period } => Owned {
            tokens: limit as f64,
            at: super::quota::period_of(period, unix) as f64,
        },
    }
}

fn bring_up_to_date(o: &mut Owned, budget: Budget, now: f64, unix: u64) {
    match budget {
        Budget::Rate { per_sec, burst } => {
            if now > o.at {
                o.tokens = (o.tokens + (now - o.at) * per_sec).min(burst);
                o.at = now;
            }
        }
        Budget::Quota { limit, period } => {
            let p = super::quota::period_of(period, unix) as f64;
            if o.at != p {
                o.tokens = limit as f64;
                o.at = p;
            }
        }
    }
}

fn reset_secs(budget: Budget, tokens: f64, unix: u64) -> u64 {
    match budget {
        Budget::Rate { per_sec, burst } => ((burst - tokens).max(0.0) / per_sec).ceil() as u64,
        Budget::Quota { period, .. } => super::quota::secs_to_period_end(period, unix),
    }
}

fn retry_secs(budget: Budget, tokens: f64, unix: u64) -> u64 {
    match budget {
        Budget::Rate { per_sec, .. } => (((1.0 - tokens) / per_sec).ceil() as u64).max(1),
        Budget::Quota { period, .. } => super::quota::secs_to_period_end(period, unix).max(1),
    }
}
