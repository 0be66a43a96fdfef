//! One shard: its state, its listeners' accept loops, its Date timer and its
//! part in a graceful drain. Everything here runs on the shard's own thread.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::future;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use glommio::timer::sleep;
use shardline_protocol::date::DateCache;
use shardline_protocol::error::ErrorKind;

use crate::app::{App, ShardInfo};
use crate::buffers::BufferPool;
use crate::conn::Conn;
use crate::event::LocalEvent;
use crate::readiness::{Readiness, ReadinessMode};
use crate::set::{Control, ShardLimits};
use crate::timeouts::{Timeouts, TIMEOUT_TICK_MS};
use crate::tls::{LocalTls, TlsStream};
use crate::transport::Transport;

/// How often a shard looks at the process-wide shutdown flag. Signals
/// arrive on another thread; polling a flag this rarely costs nothing
/// measurable and bounds how long a drain takes to start.
pub const SHUTDOWN_POLL_MS: u64 = 20;

/// How often a draining shard checks whether its in-flight requests are done.
pub const DRAIN_POLL_MS: u64 = 5;

/// Why a read deadline fired, for the timeout counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// A request head did not arrive within `header_read_timeout` (408).
    Header,
    /// A request body stopped arriving for `idle_timeout` (408).
    Body,
    /// A keep-alive connection sat idle for `idle_timeout` (closed quietly).
    Idle,
}

impl TimeoutKind {
    pub const ALL: [TimeoutKind; 3] = [TimeoutKind::Header, TimeoutKind::Body, TimeoutKind::Idle];

    /// Stable metric label.
    pub const fn label(self) -> &'static str {
        match self {
            TimeoutKind::Header => "header",
            TimeoutKind::Body => "body",
            TimeoutKind::Idle => "idle",
        }
    }
}

/// How a TLS handshake on the HTTPS listener ended, for the handshake
/// counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeResult {
    /// Completed with a full key exchange and the server's certificate.
    Full,
    /// Completed by resuming an earlier session (ticket or session ID).
    Resumed,
    /// Refused or broken: a TLS alert, a malformed record, plain HTTP on
    /// the TLS port, a client certificate that does not verify, a reset.
    Failed,
    /// Not completed within `handshake_timeout`.
    TimedOut,
}

impl HandshakeResult {
    pub const ALL: [HandshakeResult; 4] = [
        HandshakeResult::Full,
        HandshakeResult::Resumed,
        HandshakeResult::Failed,
        HandshakeResult::TimedOut,
    ];

    /// Stable metric label.
    pub const fn label(self) -> &'static str {
        match self {
            HandshakeResult::Full => "full",
            HandshakeResult::Resumed => "resumed",
            HandshakeResult::Failed => "failed",
            HandshakeResult::TimedOut => "timeout",
        }
    }
}

/// Number of protocol error kinds (one parse-error counter each).
const PARSE_ERROR_KINDS: usize = ErrorKind::ALL.len();

/// Shard-local counters, read by the metrics endpoint through
/// [`local_counters`] on the shard's own thread (a scrape asks each shard
/// by message). Plain `Cell`s: a shard never shares them.
#[derive(Debug)]
pub struct ShardCounters {
    pub accepted: Cell<u64>,
    pub open: Cell<u64>,
    /// `accept` failed (EMFILE, ENFILE, ENOBUFS, ...): the connection was
    /// lost. At the connection cap nothing is refused: clients wait in the
    /// kernel's listen backlog.
    pub refused: Cell<u64>,
    pub requests: Cell<u64>,
    /// Connections with a request being read or served (what a drain waits for).
    pub in_flight: Cell<u64>,
    /// Bytes read from clients (heads and bodies).
    pub bytes_in: Cell<u64>,
    /// Bytes written to clients.
    pub bytes_out: Cell<u64>,
    /// Framing errors, indexed like `ErrorKind::ALL`.
    pub parse_errors: [Cell<u64>; PARSE_ERROR_KINDS],
    /// Read deadlines that fired, indexed like `TimeoutKind::ALL`.
    pub timeouts: [Cell<u64>; 3],
    /// TLS handshakes by how they ended, indexed like
    /// `HandshakeResult::ALL`.
    pub tls_handshakes: [Cell<u64>; 4],
}

impl Default for ShardCounters {
    fn default() -> Self {
        ShardCounters {
            accepted: Cell::new(0),
            open: Cell::new(0),
            refused: Cell::new(0),
            requests: Cell::new(0),
            in_flight: Cell::new(0),
            bytes_in: Cell::new(0),
            bytes_out: Cell::new(0),
            parse_errors: std::array::from_fn(|_| Cell::new(0)),
            timeouts: std::array::from_fn(|_| Cell::new(0)),
            tls_handshakes: std::array::from_fn(|_| Cell::new(0)),
        }
    }
}

impl ShardCounters {
    pub(crate) fn add(c: &Cell<u64>, n: u64) {
        c.set(c.get().wrapping_add(n));
    }

    /// Parse errors of one kind.
    pub fn parse_errors_of(&self, kind: ErrorKind) -> u64 {
        self.parse_errors[kind as usize].get()
    }

    pub fn timeouts_of(&self, kind: TimeoutKind) -> u64 {
        self.timeouts[kind as usize].get()
    }

    pub fn tls_handshakes_of(&self, result: HandshakeResult) -> u64 {
        self.tls_handshakes[result as usize].get()
    }
}

thread_local! {
    /// This thread's shard counters. A shard is one thread, so this is the
    /// shard's own state; apps built on the shard reach it through
    /// [`local_counters`] without a reference being threaded through the
    /// `AppFactory` interface.
    static LOCAL_COUNTERS: Rc<ShardCounters> = Rc::new(ShardCounters::default());
}

/// The counters of the shard running on this thread.
pub fn local_counters() -> Rc<ShardCounters> {
    LOCAL_COUNTERS.with(Rc::clone)
}

/// State shared by every connection on one shard (`Rc`, never crosses
/// threads).
pub struct ShardState {
    pub info: ShardInfo,
    pub limits: ShardLimits,
    /// Largest a connection's read buffer may grow to: a full head plus a
    /// Content-Length body at the limits.
    pub max_read_buffer_bytes: usize,
    pub pool: BufferPool,
    pub date: RefCell<DateCache>,
    pub counters: Rc<ShardCounters>,
    /// Read deadlines of this shard's connections.
    pub(crate) timeouts: Rc<Timeouts>,
    /// The shard's epoll instance (`readiness = "epoll"`).
    pub(crate) readiness: Option<Rc<Readiness>>,
    busy: Cell<usize>,
    drain: LocalEvent,
}

impl ShardState {
    fn new(info: ShardInfo, limits: ShardLimits, readiness: Option<Rc<Readiness>>) -> Self {
        let max_read_buffer_bytes = limits
            .read_buffer_bytes
            .max(limits.protocol.max_header_bytes + limits.inline_max_body_bytes as usize);
        ShardState {
            info,
            pool: BufferPool::new(limits.read_buffer_bytes),
            limits,
            max_read_buffer_bytes,
            date: RefCell::new(DateCache::new(unix_now())),
            counters: local_counters(),
            timeouts: Rc::new(Timeouts::default()),
            readiness,
            busy: Cell::new(0),
            drain: LocalEvent::new(),
        }
    }

    pub fn draining(&self) -> bool {
        self.drain.is_fired()
    }

    pub(crate) fn set_busy_delta(&self, busy: bool) {
        let n = self.busy.get();
        let n = if busy { n + 1 } else { n.saturating_sub(1) };
        self.busy.set(n);
        self.counters.in_flight.set(n as u64);
    }

    pub(crate) fn count_request(&self) {
        let c = &self.counters.requests;
        c.set(c.get() + 1);
    }

    pub(crate) fn count_parse_error(&self, kind: ErrorKind) {
        ShardCounters::add(&self.counters.parse_errors[kind as usize], 1);
    }

    pub(crate) fn count_tls_handshake(&self, result: HandshakeResult) {
        ShardCounters::add(&self.counters.tls_handshakes[result as usize], 1);
    }

    pub(crate) fn count_timeout(&self, kind: TimeoutKind) {
        ShardCounters::add(&self.counters.timeouts[kind as usize], 1);
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A listener this shard serves, with the app that answers on it.
pub(crate) struct BoundListener {
    pub listener: TcpListener,
    pub app: Rc<dyn App>,
    /// Per-listener connection cap (the admin listener has its own small one).
    pub max_connections: usize,
    /// Close this listener as soon as a drain starts. The admin listener
    /// stays open so `/readyz` can say 503 while traffic drains.
    pub close_on_drain: bool,
    /// Terminate TLS on this listener's connections.
    pub tls: Option<LocalTls>,
}

/// Runs a shard until shutdown: accept loops, Date timer, then drain.
pub(crate) async fn run(
    info: ShardInfo,
    limits: ShardLimits,
    listeners: Vec<BoundListener>,
    control: Arc<Control>,
) {
    // An epoll instance that cannot be made (out of descriptors at start)
    // leaves the shard on glommio's own waits, which need none.
    let readiness = match limits.readiness {
        mode @ (ReadinessMode::Epoll | ReadinessMode::EpollWait) => {
            match Readiness::new(mode == ReadinessMode::EpollWait) {
                Ok(r) => Some(r),
                Err(e) => {
                    eprintln!(
                    "shardline: shard {}: epoll unavailable ({e}); sockets wait on io_uring polls",
                    info.id
                );
                    None
                }
            }
        }
        ReadinessMode::IoUring => None,
    };
    let readiness_task = readiness
        .as_ref()
        .map(|r| glommio::spawn_local(Rc::clone(r).run()));
    crate::readiness::install_local(readiness.clone());
    let state = Rc::new(ShardState::new(info, limits, readiness));
    crate::timeouts::install_local(Some(Rc::clone(&state.timeouts)));

    // The timer tasks below are detached and abandoned (not dropped) when
    // the executor ends, so they hold the state weakly: a strong reference
    // would keep it, and the epoll descriptor in it, alive after the shard
    // stops (an embedding program may start and stop servers many times).
    let date_state = Rc::downgrade(&state);
    glommio::spawn_local(async move {
        loop {
            // Wake just after each second boundary so the header never lags
            // the wall clock by more than a scheduling delay.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let to_next = 1_000_000_000 - u64::from(now.subsec_nanos());
            sleep(Duration::from_nanos(to_next + 1_000_000)).await;
            let Some(st) = date_state.upgrade() else {
                return;
            };
            st.date.borrow_mut().update(unix_now());
        }
    })
    .detach();

    let sweep_state = Rc::downgrade(&state);
    glommio::spawn_local(async move {
        loop {
            sleep(Duration::from_millis(TIMEOUT_TICK_MS)).await;
            let Some(st) = sweep_state.upgrade() else {
                return;
            };
            st.timeouts.sweep();
        }
    })
    .detach();

    let apps: Vec<Rc<dyn App>> = listeners.iter().map(|b| Rc::clone(&b.app)).collect();
    // A listener that stays open through a drain (the admin listener).
    let serves_through_drain = listeners.iter().any(|b| !b.close_on_drain);
    let mut accept_tasks = Vec::new();
    for bound in listeners {
        let st = Rc::clone(&state);
        let close_on_drain = bound.close_on_drain;
        let task = glommio::spawn_local(accept_loop(st, bound));
        if close_on_drain {
            accept_tasks.push(task);
        } else {
            // Lives until the executor ends.
            task.detach();
        }
    }

    // Wait for the process-wide shutdown flag.
    while !control.shutdown.load(Ordering::Acquire) {
        sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    state.drain.fire();
    for t in accept_tasks {
        t.await;
    }
    // Listeners are closed now. Let busy connections finish, bounded.
    let deadline = std::time::Instant::now() + control.drain_timeout;
    while state.busy.get() > 0 && std::time::Instant::now() < deadline {
        sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
    }
    control.shards_draining.fetch_sub(1, Ordering::AcqRel);
    // The admin listener's shard outlives the others' drains (bounded by
    // the same deadline): `/readyz` must keep answering 503, and `/metrics`
    // keep answering, while any shard still finishes requests.
    if serves_through_drain {
        while control.shards_draining.load(Ordering::Acquire) > 0
            && std::time::Instant::now() < deadline
        {
            sleep(Duration::from_millis(DRAIN_POLL_MS)).await;
        }
    }
    // Apps save what must survive a restart (quotas).
    for app in apps {
        app.shutdown();
    }
    // The readiness loop ends here rather than being abandoned with the
    // executor, which would keep its epoll descriptors open.
    crate::readiness::install_local(None);
    crate::timeouts::install_local(None);
    if let Some(r) = &state.readiness {
        r.stop();
    }
    if let Some(t) = readiness_task {
        t.await;
    }
    // Returning ends the executor; idle keep-alive connections are dropped
    // (closed) with it.
}

async fn accept_loop(state: Rc<ShardState>, bound: BoundListener) {
    let cap = Rc::new(Semaphore::new(bound.max_connections as u64));
    let never = LocalEvent::new();
    let stop = if bound.close_on_drain {
        &state.drain
    } else {
        &never
    };
    loop {
        // Stop accepting at the cap: further clients wait in the kernel's
        // backlog until a connection on this shard closes.
        let permit = future::or(async { cap.acquire_static_permit(1).await.ok() }, async {
            stop.wait().await;
            None
        })
        .await;
        let Some(permit) = permit else { return };
        let accepted = future::or(async { Some(bound.listener.accept().await) }, async {
            stop.wait().await;
            None
        })
        .await;
        let stream = match accepted {
            None => return,
            Some(Ok(s)) => s,
            Some(Err(e)) => {
                // EMFILE/ENFILE and friends: back off briefly instead of
                // spinning on a listener we cannot drain.
                eprintln!("shardline: shard {}: accept failed: {e}", state.info.id);
                ShardCounters::add(&state.counters.refused, 1);
                drop(permit);
                sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let peer = match stream.peer_addr() {
            Ok(p) => p,
            Err(_) => continue,
        };
        let c = &state.counters;
        c.accepted.set(c.accepted.get() + 1);
        c.open.set(c.open.get() + 1);
        // Without a registration (epoll off, or out of memory for one) the
        // connection waits on glommio's ring instead.
        let watch = state
            .readiness
            .as_ref()
            .and_then(|r| r.watch(stream.as_raw_fd()).ok());
        let (transport, handshake_timeout) = match &bound.tls {
            None => (Transport::Plain(stream, watch), Duration::ZERO),
            Some(tls) => match TlsStream::new(stream, watch, tls.current()) {
                Ok(t) => (Transport::Tls(Box::new(t)), tls.handshake_timeout()),
                Err(_) => continue,
            },
        };
        let st = Rc::clone(&state);
        let app = Rc::clone(&bound.app);
        let close_on_drain = bound.close_on_drain;
        glommio::spawn_local(async move {
            let mut conn = Conn::new(transport, peer, Rc::clone(&st), app);
            conn.drain_exempt = !close_on_drain;
            conn.run(handshake_timeout).await;
            let c = &st.counters;
            c.open.set(c.open.get().saturating_sub(1));
            drop(permit);
        })
        .detach();
    }
}
