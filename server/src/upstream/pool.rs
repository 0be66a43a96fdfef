//! Idle keep-alive connections to one target, on one shard.
//!
//! Last in, first out: the most recently used connection is the one least
//! likely to have been closed by the upstream, and the ones at the bottom
//! age out. A connection is checked with a non-blocking peek before reuse
//! (`system::peek_idle`): one the upstream closed, or that holds bytes
//! nobody asked for, is dropped instead of being handed a request.

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
    let every = (up.cfg.idle_timeout / 2).max(Duration::from_secs(1));
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
        // Pushed in time order, so the expired ones are a prefix: a binary
        // search, not a clock comparison per idle connection on every take.
        let expired = idle
            .partition_point(|(_, since)| now.saturating_duration_since(*since) >= idle_timeout);
        if expired > 0 {
            idle.drain(..expired);
        }
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
    pub(crate) fn put(&self, stream: UpstreamStream, now: Instant) {
        let mut idle = self.idle.borrow_mut();
        if idle.len() < self.max {
            idle.push((stream, now));
        }
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
