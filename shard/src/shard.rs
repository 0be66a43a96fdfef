//! One shard: its state, its listeners' accept loops, its Date timer and its
//! part in a graceful drain. Everything here runs on the shard's own thread.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::future;
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use glommio::timer::sleep;
use shardline_protocol::date::DateCache;

use crate::app::{App, ShardInfo};
use crate::buffers::BufferPool;
use crate::conn::Conn;
use crate::event::LocalEvent;
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

/// Shard-local counters, kept for the Prometheus endpoint (a later issue)
/// and tests; plain `Cell`s: a shard never shares them.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub accepted: Cell<u64>,
    pub open: Cell<u64>,
    pub requests: Cell<u64>,
    pub parse_errors: Cell<u64>,
    pub timeouts: Cell<u64>,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: Cell<u64>,
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
    pub counters: ShardCounters,
    /// Read deadlines of this shard's connections.
    pub(crate) timeouts: Timeouts,
    busy: Cell<usize>,
    drain: LocalEvent,
}

impl ShardState {
    fn new(info: ShardInfo, limits: ShardLimits) -> Self {
        let max_read_buffer_bytes = limits
            .read_buffer_bytes
            .max(limits.protocol.max_header_bytes + limits.inline_max_body_bytes as usize);
        ShardState {
            info,
            pool: BufferPool::new(limits.read_buffer_bytes),
            limits,
            max_read_buffer_bytes,
            date: RefCell::new(DateCache::new(unix_now())),
            counters: ShardCounters::default(),
            timeouts: Timeouts::default(),
            busy: Cell::new(0),
            drain: LocalEvent::new(),
        }
    }

    pub fn draining(&self) -> bool {
        self.drain.is_fired()
    }

    pub(crate) fn set_busy_delta(&self, busy: bool) {
        let n = self.busy.get();
        self.busy
            .set(if busy { n + 1 } else { n.saturating_sub(1) });
    }

    pub(crate) fn count_request(&self) {
        let c = &self.counters.requests;
        c.set(c.get() + 1);
    }

    pub(crate) fn count_parse_error(&self) {
        let c = &self.counters.parse_errors;
        c.set(c.get() + 1);
    }

    pub(crate) fn count_tls_handshake_failure(&self) {
        let c = &self.counters.tls_handshake_failures;
        c.set(c.get() + 1);
    }

    pub(crate) fn count_timeout(&self) {
        let c = &self.counters.timeouts;
        c.set(c.get() + 1);
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
    let state = Rc::new(ShardState::new(info, limits));

    let date_state = Rc::clone(&state);
    glommio::spawn_local(async move {
        loop {
            // Wake just after each second boundary so the header never lags
            // the wall clock by more than a scheduling delay.
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            let to_next = 1_000_000_000 - u64::from(now.subsec_nanos());
            sleep(Duration::from_nanos(to_next + 1_000_000)).await;
            date_state.date.borrow_mut().update(unix_now());
        }
    })
    .detach();

    let sweep_state = Rc::clone(&state);
    glommio::spawn_local(async move {
        loop {
            sleep(Duration::from_millis(TIMEOUT_TICK_MS)).await;
            sweep_state.timeouts.sweep();
        }
    })
    .detach();

    let apps: Vec<Rc<dyn App>> = listeners.iter().map(|b| Rc::clone(&b.app)).collect();
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
    // Apps save what must survive a restart (quotas).
    for app in apps {
        app.shutdown();
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
        let (transport, handshake_timeout) = match &bound.tls {
            None => (Transport::Plain(stream), Duration::ZERO),
            Some(tls) => match TlsStream::new(stream, tls.current()) {
                Ok(t) => (Transport::Tls(Box::new(t)), tls.handshake_timeout()),
                Err(_) => continue,
            },
        };
        let st = Rc::clone(&state);
        let app = Rc::clone(&bound.app);
        glommio::spawn_local(async move {
            Conn::new(transport, peer, Rc::clone(&st), app)
                .run(handshake_timeout)
                .await;
            let c = &st.counters;
            c.open.set(c.open.get().saturating_sub(1));
            drop(permit);
        })
        .detach();
    }
}
