//! Idle keep-alive connections to one target, on one shard.
//!
//! Last in, first out: the most recently used connection is the one least
//! likely to have been closed by the upstream, and the ones at the bottom
//! age out (after `idle_timeout`; those beyond the pool's size after
//! [`SURPLUS_IDLE`]). A connection the upstream closed, or that holds bytes
//! nobody asked for, is dropped instead of being handed a request: the
//! shard's epoll instance reports both, and a non-blocking peek
//! (`system::peek_idle`) checks every connection it cannot vouch for.

use std::cell::RefCell;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::system::{peek_idle, IdleSocket};
use crate::upstream::tls::UpstreamStream;
use crate::upstream::Upstream;

/// Closes pooled connections once they have been idle for the upstream's
/// `idle_timeout`, also when no request comes to take them (they used to
/// wait for the next request to notice). Checks every half `idle_timeout`
/// (at least every second), so one lives at most 1.5 x `idle_timeout`.
/// Runs until the shard's executor ends or a reload retires `up`.
pub(crate) async fn sweep(up: std::rc::Rc<Upstream>) {
    let every = (up.cfg.idle_timeout / 2).clamp(SWEEP_MIN_INTERVAL, SURPLUS_IDLE);
    loop {
        glommio::timer::sleep(every).await;
        if up.retired.get() {
            return;
        }
        let now = Instant::now();
        for t in &up.targets {
            t.pool.expire(now, up.cfg.idle_timeout);
        }
    }
}

/// How long a connection beyond the pool's size (opened while more
/// requests were in flight than the pool holds) stays idle before it is
/// closed. Closing it at once, as nginx's `keepalive N` does, made a steady
/// load above the size open and close an upstream connection for a third
/// of the requests (256 client connections, pool 64: 0.33 `socket`,
/// `connect`-and-`close` per request, 32 µs of CPU per request against 22
/// without); a second of grace keeps what a steady load uses and still
/// returns to the size soon after a burst.
pub(crate) const SURPLUS_IDLE: Duration = Duration::from_secs(1);

/// The sweep never runs more often than this (tiny `idle_timeout`s).
const SWEEP_MIN_INTERVAL: Duration = Duration::from_millis(100);

pub(crate) struct IdlePool {
    max: usize,
    idle: RefCell<Vec<(UpstreamStream, Instant)>>,
    reused: std::cell::Cell<u64>,
    opened: std::cell::Cell<u64>,
}

impl IdlePool {
    pub(crate) fn new(max: usize) -> Self {
        IdlePool {
            max,
            idle: RefCell::new(Vec::new()),
            reused: std::cell::Cell::new(0),
            opened: std::cell::Cell::new(0),
        }
    }

    /// Closes the connections idle for `idle_timeout` or longer.
    pub(crate) fn expire(&self, now: Instant, idle_timeout: Duration) {
        let mut idle = self.idle.borrow_mut();
        let all = idle.len();
        close_idle_for(&mut idle, all, idle_timeout, now);
        trim_surplus(&mut idle, self.max, now);
    }

    /// A usable idle connection, if one is pooled and younger than
    /// `idle_timeout`.
    ///
    /// With `can_resend` (the caller sends the request again on a fresh
    /// connection if a reused one breaks before answering: replayable and
    /// idempotent), a connection the shard's epoll instance reports quiet
    /// is taken without the peek, which is one `recvfrom` per proxied
    /// request; the peek remains for everything else, and for connections
    /// with a report since their last response (bytes or a close).
    pub(crate) fn take(
        &self,
        now: Instant,
        idle_timeout: Duration,
        can_resend: bool,
    ) -> Option<UpstreamStream> {
        self.expire(now, idle_timeout);
        let mut idle = self.idle.borrow_mut();
        while let Some((stream, _)) = idle.pop() {
            if (can_resend && stream.known_quiet())
                || peek_idle(stream.as_raw_fd()) == IdleSocket::Quiet
            {
                self.reused.set(self.reused.get() + 1);
                return Some(stream);
            }
        }
        None
    }

    /// Returns a connection after a complete exchange.
    pub(crate) fn put(&self, mut stream: UpstreamStream, now: Instant) {
        if self.max == 0 || !stream.is_reusable() {
            // `pool_size_per_shard = 0`: a connection per request; or a TLS
            // connection with bytes nobody asked for, or closed.
            return;
        }
        let mut idle = self.idle.borrow_mut();
        idle.push((stream, now));
        trim_surplus(&mut idle, self.max, now);
    }

    /// (idle connections now, connections opened, idle connections reused).
    pub(crate) fn stats(&self) -> (usize, u64, u64) {
        (
            self.idle.borrow().len(),
            self.opened.get(),
            self.reused.get(),
        )
    }

    /// Takes over another pool's counters (config reload).
    pub(crate) fn carry_from(&self, old: &IdlePool) {
        self.opened.set(old.opened.get());
        self.reused.set(old.reused.get());
    }

    pub(crate) fn count_opened(&self) {
        self.opened.set(self.opened.get() + 1);
    }
}

/// Closes the oldest connections beyond `max` that have been idle for
/// [`SURPLUS_IDLE`].
fn trim_surplus(idle: &mut Vec<(UpstreamStream, Instant)>, max: usize, now: Instant) {
    let surplus = idle.len().saturating_sub(max);
    close_idle_for(idle, surplus, SURPLUS_IDLE, now);
}

/// Closes those of the first `among` connections idle for `age` or longer.
/// They are pushed in the order they came back, so those are a prefix: a
/// binary search, not a clock comparison per idle connection on every take.
fn close_idle_for(
    idle: &mut Vec<(UpstreamStream, Instant)>,
    among: usize,
    age: Duration,
    now: Instant,
) {
    let old =
        idle[..among].partition_point(|(_, since)| now.saturating_duration_since(*since) >= age);
    if old > 0 {
        idle.drain(..old);
    }
}
