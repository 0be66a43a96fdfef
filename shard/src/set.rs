//! Starting, stopping and joining all shards (`ShardSet`).
//!
//! Start-up is ordered so that port 0 works with SO_REUSEPORT: shard 0 binds
//! first and reports the ports the kernel picked, then every other shard
//! binds those exact addresses. Each step reports back over a channel, so a
//! bind or executor failure becomes an error the caller can print, not a
//! panic on some thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use glommio::net::TcpListener;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use shardline_protocol::limits::Limits;

use std::rc::Rc;

use crate::app::{App, AppFactory, ShardInfo};
use crate::readiness::ReadinessMode;
use crate::shard::{self, BoundListener};
use crate::tls::{LocalTls, TlsAcceptor};

/// Per-connection limits every shard applies.
#[derive(Debug, Clone)]
pub struct ShardLimits {
    /// Size of each pooled read buffer.
    pub read_buffer_bytes: usize,
    pub max_connections_per_shard: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    /// Body limit for requests served inline (buffered whole); the
    /// protocol limit's `max_body_bytes` may be higher for streamed routes.
    pub inline_max_body_bytes: u64,
    /// Non-blocking read retries (yielding in between) before a read on a
    /// plain socket waits for readiness (`conn::Conn::fill`).
    pub read_yields: u32,
    /// How a connection waits for its socket to become readable.
    pub readiness: ReadinessMode,
    pub protocol: Limits,
}

/// Where a listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerPlacement {
    /// One SO_REUSEPORT socket per shard on the same address; the kernel
    /// spreads connections across them.
    EveryShard,
    /// Only shard 0 (the admin listener: low traffic, never worth a core).
    FirstShard,
}

pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub placement: ListenerPlacement,
    pub app: Arc<dyn AppFactory>,
    /// Overrides `max_connections_per_shard` for this listener.
    pub max_connections: Option<usize>,
    /// Terminate TLS on this listener (`None` = plain HTTP).
    pub tls: Option<Arc<TlsAcceptor>>,
}

/// Executor knobs passed to glommio, per shard.
#[derive(Debug, Clone, Copy)]
pub struct ExecutorTuning {
    /// io_uring registered-buffer memory (glommio `io_memory`).
    pub io_memory_bytes: usize,
    /// Busy-poll this long before sleeping in the kernel when idle; trades
    /// CPU for wake-up latency. `None` = sleep at once.
    pub spin_before_park: Option<Duration>,
    /// How long a task queue runs before the executor checks for other work.
    pub preempt_timer: Duration,
    /// io_uring submission queue entries per ring.
    pub ring_depth: usize,
}

pub struct ShardSetConfig {
    /// One entry per shard: the CPU it is pinned to.
    pub cpus: Vec<usize>,
    pub tuning: ExecutorTuning,
    pub limits: ShardLimits,
    pub listeners: Vec<ListenerSpec>,
    /// How long in-flight requests may take to finish once a drain starts.
    pub drain_timeout: Duration,
    /// Connect the shards with a message mesh ([`crate::mesh`]) for state
    /// that has an owner shard. Off, nothing is allocated for it.
    pub mesh: bool,
}

/// Process-wide control shared with every shard (read rarely, never on the
/// request path).
#[derive(Debug)]
pub struct Control {
    pub(crate) shutdown: AtomicBool,
    pub(crate) drain_timeout: Duration,
    /// Shards whose in-flight requests are not finished yet in a drain: the
    /// shard that serves the admin listener keeps it (and `/readyz` saying
    /// 503) until this reaches zero, not only until its own work is done.
    pub(crate) shards_draining: std::sync::atomic::AtomicUsize,
}

/// Why shards could not start or stopped abnormally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Running shards.
pub struct ShardSet {
    handles: Vec<ExecutorJoinHandle<()>>,
    addrs: Vec<SocketAddr>,
    control: Arc<Control>,
}

/// A cheap, cloneable way to ask a `ShardSet` to drain from any thread
/// (a signal handler thread, a test).
#[derive(Debug, Clone)]
pub struct ShutdownHandle(Arc<Control>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.shutdown.store(true, Ordering::Release);
    }
}

type BindReply = Result<Vec<SocketAddr>, String>;

impl ShardSet {
    pub fn start(cfg: ShardSetConfig) -> Result<ShardSet, StartError> {
        if cfg.cpus.is_empty() {
            return Err(StartError("no shards to start".into()));
        }
        let control = Arc::new(Control {
            shutdown: AtomicBool::new(false),
            drain_timeout: cfg.drain_timeout,
            shards_draining: std::sync::atomic::AtomicUsize::new(cfg.cpus.len()),
        });
        let listeners: Arc<Vec<ListenerSpec>> = Arc::new(cfg.listeners);
        let count = cfg.cpus.len();
        let mut wiring =
            (cfg.mesh && count > 1).then(|| crate::mesh::MeshWiring::new(count).0.into_iter());
        let mut set = ShardSet {
            handles: Vec::with_capacity(count),
            addrs: listeners.iter().map(|l| l.addr).collect(),
            control,
        };
        for (id, &cpu) in cfg.cpus.iter().enumerate() {
            let info = ShardInfo { id, cpu, count };
            let (tx, rx) = mpsc::channel::<BindReply>();
            let addrs = set.addrs.clone();
            let listeners = Arc::clone(&listeners);
            let limits = cfg.limits.clone();
            let control = Arc::clone(&set.control);
            let t = cfg.tuning;
            let mesh_ends = wiring.as_mut().and_then(Iterator::next);
            let mut builder = LocalExecutorBuilder::new(Placement::Fixed(cpu))
                .name(&format!("shard-{id}"))
                .io_memory(t.io_memory_bytes)
                .preempt_timer(t.preempt_timer)
                .ring_depth(t.ring_depth.max(1));
            if let Some(spin) = t.spin_before_park {
                builder = builder.spin_before_park(spin);
            }
            let spawned = builder
                .spawn(move || shard_main(info, limits, listeners, addrs, control, tx, mesh_ends));
            let handle = match spawned {
                Ok(h) => h,
                Err(e) => {
                    set.abort();
                    return Err(StartError(format!(
                        "cannot start shard {id} on CPU {cpu}: {e}"
                    )));
                }
            };
            match rx.recv() {
                Ok(Ok(bound)) => {
                    set.handles.push(handle);
                    if id == 0 {
                        set.addrs = bound;
                    }
                }
                Ok(Err(msg)) => {
                    let _ = handle.join();
                    set.abort();
                    return Err(StartError(msg));
                }
                Err(_) => {
                    // The executor died before binding: glommio reports why
                    // (io_uring setup, memlock) through the join handle.
                    let why = match handle.join() {
                        Err(e) => explain_executor_error(&e.to_string()),
                        Ok(()) => "exited before binding".to_string(),
                    };
                    set.abort();
                    return Err(StartError(format!(
                        "cannot start shard {id} on CPU {cpu}: {why}"
                    )));
                }
            }
        }
        Ok(set)
    }

    /// The bound address of each listener, in `ShardSetConfig::listeners`
    /// order (real ports when 0 was asked for).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.control))
    }

    /// Starts a graceful drain on every shard; returns at once.
    pub fn shutdown(&self) {
        self.control.shutdown.store(true, Ordering::Release);
    }

    /// Waits for every shard to finish.
    pub fn join(mut self) -> Result<(), StartError> {
        let mut first_err = None;
        for (i, h) in self.handles.drain(..).enumerate() {
            if let Err(e) = h.join() {
                first_err.get_or_insert(StartError(format!("shard {i} failed: {e}")));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn abort(&mut self) {
        self.shutdown();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for ShardSet {
    fn drop(&mut self) {
        self.abort();
    }
}

fn explain_executor_error(e: &str) -> String {
    if e.contains("Operation not permitted") || e.contains("Function not implemented") {
        format!(
            "{e}: io_uring is unavailable (kernel older than 5.8, kernel.io_uring_disabled set, \
             or blocked by a seccomp profile such as Docker's default)"
        )
    } else if e.contains("MemLock") {
        format!(
            "{e}: RLIMIT_MEMLOCK is too low for io_uring; raise it (ulimit -l, or LimitMEMLOCK= in the systemd unit)"
        )
    } else {
        e.to_string()
    }
}

async fn shard_main(
    info: ShardInfo,
    limits: ShardLimits,
    specs: Arc<Vec<ListenerSpec>>,
    addrs: Vec<SocketAddr>,
    control: Arc<Control>,
    tx: mpsc::Sender<BindReply>,
    mesh_ends: Option<crate::mesh::MeshEnds>,
) {
    // Before the apps are built, so they can find it (`mesh::current`).
    let start_mesh = mesh_ends.map(|ends| crate::mesh::install(info.id, ends));
    let mut bound = Vec::new();
    let mut bound_addrs = Vec::new();
    // One app per factory on this shard: listeners that share a factory
    // (the plain and the HTTPS listener of one gateway) share its state —
    // caches, limits, metrics, reload — instead of each building its own.
    type Built<'s> = (&'s Arc<dyn AppFactory>, Rc<dyn App>);
    let mut apps: Vec<Built<'_>> = Vec::new();
    for (spec, addr) in specs.iter().zip(addrs) {
        if spec.placement == ListenerPlacement::FirstShard && info.id != 0 {
            bound_addrs.push(addr);
            continue;
        }
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(format!("cannot listen on {addr}: {e}")));
                return;
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        bound_addrs.push(local);
        let app = match apps.iter().find(|(f, _)| Arc::ptr_eq(f, &spec.app)) {
            Some((_, app)) => Rc::clone(app),
            None => {
                let app = spec.app.build(info);
                apps.push((&spec.app, Rc::clone(&app)));
                app
            }
        };
        bound.push(BoundListener {
            listener,
            app,
            max_connections: spec
                .max_connections
                .unwrap_or(limits.max_connections_per_shard),
            close_on_drain: spec.placement == ListenerPlacement::EveryShard,
            tls: spec.tls.as_ref().map(|a| LocalTls::new(Arc::clone(a))),
        });
    }
    if tx.send(Ok(bound_addrs)).is_err() {
        return;
    }
    drop(tx);
    // Connecting waits for the peers, which start after this shard replied.
    if let Some(start) = start_mesh {
        start();
    }
    // Keep the spec list alive only as long as start-up needs it.
    drop(specs);
    shard::run(info, limits, bound, control).await;
    crate::mesh::uninstall();
}
