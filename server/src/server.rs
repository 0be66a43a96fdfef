//! Building and starting a server from a [`Config`]: CPU placement, resource
//! limits, listeners, shards.

use std::net::SocketAddr;
use std::sync::Arc;

use shardline_protocol::limits::Limits;
use shardline_shard::{
    AppFactory, ExecutorTuning, ListenerPlacement, ListenerSpec, ShardLimits, ShardSet,
    ShardSetConfig, ShutdownHandle,
};

use crate::admin::{AdminFactory, ADMIN_MAX_CONNECTIONS};
use crate::app::GatewayFactory;
use crate::config::{Config, ServerOverrides};
use crate::handler::HandlerFactory;
use crate::obs::hub::{Hub, ReloadSource};
use crate::obs::log::LogControl;
use crate::obs::ObsSetup;
use crate::tls::TlsRuntime;
use std::sync::atomic::AtomicU64;

/// Why the server could not start (one line, fit for `shardline: error: …`):
/// the shard layer's error type, which the server's own checks reuse.
pub use shardline_shard::StartError;

/// A server to be started: a config plus the Rust handlers routes may name.
pub struct Server {
    config: Config,
    handlers: Vec<(String, Arc<dyn HandlerFactory>)>,
    reload: Option<ReloadSource>,
}

impl Server {
    pub fn new(config: Config) -> Self {
        Server {
            config,
            handlers: Vec::new(),
            reload: None,
        }
    }

    /// The file SIGHUP and `POST /admin/reload` re-read, with the
    /// command-line overrides to apply again. Without it a reload is
    /// refused (nothing to reload from).
    pub fn config_file(
        mut self,
        path: impl Into<std::path::PathBuf>,
        overrides: ServerOverrides,
    ) -> Self {
        self.reload = Some(ReloadSource {
            path: path.into(),
            overrides,
        });
        self
    }

    /// Registers a handler under `name` for routes with `handler = "name"`.
    /// `factory` runs once on each shard and returns that shard's handler,
    /// which may hold shard-local state.
    pub fn handler(mut self, name: &str, factory: impl HandlerFactory + 'static) -> Self {
        self.handlers.retain(|(n, _)| n != name);
        self.handlers.push((name.to_string(), Arc::new(factory)));
        self
    }

    /// The CPU each shard will be pinned to.
    pub fn shard_cpus(&self) -> Vec<usize> {
        let s = &self.config.server;
        let list = s
            .cpus
            .clone()
            .unwrap_or_else(shardline_shard::cpus::allowed_cpus);
        let n = if s.shards == 0 { list.len() } else { s.shards };
        // More shards than CPUs share cores round-robin; `start` warns.
        (0..n).map(|i| list[i % list.len()]).collect()
    }

    /// Binds every listener and starts every shard; returns once they all
    /// accept connections.
    pub fn start(self) -> Result<RunningServer, StartError> {
        let cpus = self.shard_cpus();
        let s = &self.config.server;
        if cpus.len() > s.cpus.as_ref().map_or(usize::MAX, Vec::len)
            || cpus.len() > shardline_shard::cpus::allowed_cpus().len()
        {
            tracing::warn!(
                "{} shards on fewer CPUs: shards will share cores",
                cpus.len()
            );
        }
        crate::system::check_io_uring().map_err(StartError)?;
        match crate::system::ensure_memlock(cpus.len(), s.io_memory) {
            Ok(None) => {}
            Ok(Some(warning)) => tracing::warn!("{warning}"),
            Err(e) => return Err(StartError(e)),
        }
        crate::system::raise_nofile();

        // Streamed (upstream) routes may allow larger bodies than the
        // server-wide limit that bounds buffered ones; the parser checks
        // Content-Length against the largest, the shard against the route's.
        let largest_body = self
            .config
            .routes
            .iter()
            .filter_map(|r| r.max_body_bytes)
            .fold(s.max_body_bytes, u64::max);
        let protocol = Limits {
            max_header_bytes: to_usize(s.max_header_bytes),
            max_body_bytes: largest_body,
            ..Limits::default()
        };
        let limits = ShardLimits {
            read_buffer_bytes: to_usize(s.read_buffer),
            max_connections_per_shard: s.max_connections_per_shard,
            header_read_timeout: s.header_read_timeout,
            idle_timeout: s.idle_timeout,
            inline_max_body_bytes: s.max_body_bytes,
            read_yields: s.read_yields,
            readiness: s.readiness,
            protocol,
        };
        let config = Arc::new(self.config.clone());
        let mut log_control = LogControl::default();
        let obs_cfg = &self.config.observability;
        let access = crate::obs::log::start(
            "access-log",
            &obs_cfg.access_log,
            cpus.len(),
            &mut log_control,
        )
        .map_err(StartError)?;
        let audit = crate::obs::log::start(
            "audit-log",
            &obs_cfg.audit_log,
            cpus.len(),
            &mut log_control,
        )
        .map_err(StartError)?;
        let (hub, reload_tx) = Hub::new(cpus.len());
        let handlers = Arc::new(self.handlers);
        let tls = match &s.tls {
            Some(t) => Some(Arc::new(TlsRuntime::new(t.clone()).map_err(StartError)?)),
            None => None,
        };
        let setup = Arc::new(ObsSetup {
            hub,
            access,
            audit,
            started: std::time::Instant::now(),
            reload: self.reload,
            running: std::sync::Mutex::new(Arc::clone(&config)),
            handlers: Arc::clone(&handlers),
            generation: AtomicU64::new(1),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            tls: tls.clone(),
        });
        let gateway = GatewayFactory::new(Arc::clone(&config), handlers, Arc::clone(&setup))
            .map_err(StartError)?;
        let gateway: Arc<dyn AppFactory> = Arc::new(gateway);
        let mut listeners = vec![ListenerSpec {
            addr: s.listen,
            placement: ListenerPlacement::EveryShard,
            app: Arc::clone(&gateway),
            max_connections: None,
            tls: None,
        }];
        if let Some(admin) = s.admin_listen {
            listeners.push(ListenerSpec {
                addr: admin,
                placement: ListenerPlacement::FirstShard,
                app: Arc::new(AdminFactory { setup }),
                max_connections: Some(ADMIN_MAX_CONNECTIONS),
                tls: None,
            });
        }
        // The HTTPS listener serves the same routes as the plain one; each
        // shard builds its own app for it (shard-local state is per
        // listener).
        let tls_index = listeners.len();
        if let (Some(t), Some(rt)) = (&s.tls, &tls) {
            listeners.push(ListenerSpec {
                addr: t.listen,
                placement: ListenerPlacement::EveryShard,
                app: Arc::clone(&gateway),
                max_connections: None,
                tls: Some(rt.acceptor()),
            });
        }
        let set = ShardSet::start(ShardSetConfig {
            cpus: cpus.clone(),
            tuning: ExecutorTuning {
                io_memory_bytes: to_usize(s.io_memory),
                spin_before_park: (!s.spin_before_park.is_zero()).then_some(s.spin_before_park),
                preempt_timer: s.preempt_timer,
                ring_depth: s.ring_depth,
            },
            limits,
            listeners,
            drain_timeout: s.drain_timeout,
            mesh: crate::policy::needs_mesh(&self.config),
        });
        let set = match set {
            Ok(s) => s,
            Err(e) => {
                // The shards are gone, and with them the log channels.
                log_control.join();
                return Err(e);
            }
        };
        let addrs = set.local_addrs();
        let local_addr = addrs[0];
        let admin_addr = s.admin_listen.and(addrs.get(1).copied());
        let tls_addr = tls.as_ref().and(addrs.get(tls_index).copied());
        Ok(RunningServer {
            set: Some(set),
            local_addr,
            admin_addr,
            tls_addr,
            tls,
            shards: cpus.len(),
            logs: log_control,
            reload_tx,
        })
    }
}

/// Reloads the TLS listener's certificates from any thread.
#[derive(Clone)]
pub struct TlsReloadHandle(Arc<TlsRuntime>);

impl std::fmt::Debug for TlsReloadHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsReloadHandle")
    }
}

impl TlsReloadHandle {
    /// See [`RunningServer::reload_tls`].
    pub fn reload(&self) -> Result<(), String> {
        self.0.reload()
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// A started server. Dropping it drains and joins the shards.
pub struct RunningServer {
    set: Option<ShardSet>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    tls: Option<Arc<TlsRuntime>>,
    shards: usize,
    logs: LogControl,
    reload_tx: crossbeam_channel::Sender<()>,
}

/// Asks a running server to do things from another thread (signals).
#[derive(Debug, Clone)]
pub struct ControlHandle {
    logs: LogControl,
    reload_tx: crossbeam_channel::Sender<()>,
}

impl ControlHandle {
    /// Reopens log files (SIGUSR1, after rotation).
    pub fn reopen_logs(&self) {
        self.logs.reopen();
    }

    /// Re-reads the config file on shard 0 (SIGHUP). Returns at once; the
    /// outcome is logged.
    pub fn reload(&self) {
        // Full means a reload is already pending: nothing to add.
        let _ = self.reload_tx.try_send(());
    }
}

impl RunningServer {
    /// The address the traffic listener is bound to (the real port when 0
    /// was configured).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The HTTPS listener's address (`[server.tls]`), if configured.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Re-reads the TLS certificates, keys and CA file (SIGHUP). New
    /// handshakes use them; open connections are untouched. On error the
    /// old certificates stay in use and the message names the bad file.
    /// `Ok(false)` when no TLS listener is configured.
    pub fn reload_tls(&self) -> Result<bool, String> {
        match &self.tls {
            Some(t) => t.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// A handle that reloads TLS from another thread (the signal thread).
    pub fn tls_reload_handle(&self) -> Option<TlsReloadHandle> {
        self.tls.as_ref().map(|t| TlsReloadHandle(Arc::clone(t)))
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Starts a graceful drain; returns at once.
    pub fn shutdown(&self) {
        if let Some(set) = &self.set {
            set.shutdown();
        }
    }

    /// A handle that can start the drain from another thread (signals).
    pub fn shutdown_handle(&self) -> Option<ShutdownHandle> {
        self.set.as_ref().map(ShardSet::shutdown_handle)
    }

    /// Reload and log-reopen control for signal handlers.
    pub fn control_handle(&self) -> ControlHandle {
        ControlHandle {
            logs: self.logs.clone(),
            reload_tx: self.reload_tx.clone(),
        }
    }

    /// Waits until every shard has finished (after `shutdown`), then for
    /// the log writers to write what the shards left them.
    pub fn wait(mut self) -> Result<(), StartError> {
        let res = match self.set.take() {
            Some(set) => set.join(),
            None => Ok(()),
        };
        self.logs.join();
        res
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(set) = self.set.take() {
            set.shutdown();
            let _ = set.join();
            self.logs.join();
        }
    }
}
