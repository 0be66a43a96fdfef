//! The command line: every `[server]` key as a flag; flags override the file.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::ServerOverrides;

#[derive(Debug, Parser)]
#[command(
    name = "shardline",
    version,
    about = "Thread-per-core HTTP API server. With no --config it serves the embedded default routes."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Operational log level on stderr: off, error, warn, info, debug, trace.
    #[arg(long, global = true, value_name = "LEVEL", default_value = "info")]
    pub log_level: LogLevel,
    /// TOML config file. Without it the embedded default config is served.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Traffic listener, IP:PORT (port 0 = any free port).
    #[arg(long, global = true, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Admin listener (/healthz, /readyz), IP:PORT or "off".
    #[arg(long, global = true, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// Number of shards; 0 = one per CPU in --cpus (or every allowed CPU).
    #[arg(long, global = true, value_name = "N")]
    pub shards: Option<usize>,
    /// CPUs to pin shards to, e.g. "0-3,8".
    #[arg(long, global = true, value_name = "LIST")]
    pub cpus: Option<String>,
    /// io_uring registered buffer memory per shard, e.g. "2MiB".
    #[arg(long, global = true, value_name = "SIZE")]
    pub io_memory: Option<String>,
    /// Read buffer per busy connection, e.g. "64KiB".
    #[arg(long, global = true, value_name = "SIZE")]
    pub read_buffer: Option<String>,
    /// Connections one shard serves at once.
    #[arg(long, global = true, value_name = "N")]
    pub max_connections_per_shard: Option<usize>,
    /// Time a client has to send a whole request head, e.g. "10s".
    #[arg(long, global = true, value_name = "DURATION")]
    pub header_read_timeout: Option<String>,
    /// Idle keep-alive connections close after this, e.g. "60s".
    #[arg(long, global = true, value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Largest request head in bytes (request line + header fields).
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_header_bytes: Option<String>,
    /// Largest request body, e.g. "1MiB".
    #[arg(long, global = true, value_name = "SIZE")]
    pub max_body_bytes: Option<String>,
    /// Directory for state that must survive restarts.
    #[arg(long, global = true, value_name = "DIR")]
    pub data_dir: Option<String>,
    /// How long in-flight requests may take to finish after SIGTERM, e.g. "10s".
    #[arg(long, global = true, value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// Busy-poll this long before sleeping when a shard is idle, e.g. "50us".
    /// Trades CPU for wake-up latency; "0ms" (default) never spins.
    #[arg(long, global = true, value_name = "DURATION")]
    pub spin_before_park: Option<String>,
    /// How long one task queue may run before the shard looks for other work.
    #[arg(long, global = true, value_name = "DURATION")]
    pub preempt_timer: Option<String>,
    /// io_uring submission queue entries per ring.
    #[arg(long, global = true, value_name = "N")]
    pub ring_depth: Option<usize>,
    /// Non-blocking read retries, each after yielding to the shard's other
    /// tasks, before a socket read waits on io_uring (0 = wait at once).
    #[arg(long, global = true, value_name = "N")]
    pub read_yields: Option<u32>,
    /// How connections wait for readable sockets: "epoll" (one epoll
    /// instance per shard, default), "epoll-wait" (epoll, and a brief wait
    /// in it before the shard sleeps) or "io_uring" (glommio's poll per wait).
    #[arg(long, global = true, value_name = "MODE")]
    pub readiness: Option<String>,
    /// HTTPS listener, IP:PORT ([server.tls] listen); with --tls-cert and
    /// --tls-key it enables TLS without a config file.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Option<String>,
    /// PEM certificate chain for the HTTPS listener ([server.tls] cert).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<String>,
    /// PEM private key for the HTTPS listener ([server.tls] key).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate the config (file plus flags) and print the effective
    /// config as TOML; exit 0 if valid, 2 (one line on stderr) if not.
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn filter(self) -> tracing_subscriber::filter::LevelFilter {
        use tracing_subscriber::filter::LevelFilter;
        match self {
            LogLevel::Off => LevelFilter::OFF,
            LogLevel::Error => LevelFilter::ERROR,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Trace => LevelFilter::TRACE,
        }
    }
}

impl Cli {
    pub fn overrides(&self) -> ServerOverrides {
        ServerOverrides {
            listen: self.listen.clone(),
            admin_listen: self.admin_listen.clone(),
            shards: self.shards,
            cpus: self.cpus.clone(),
            io_memory: self.io_memory.clone(),
            read_buffer: self.read_buffer.clone(),
            max_connections_per_shard: self.max_connections_per_shard,
            header_read_timeout: self.header_read_timeout.clone(),
            idle_timeout: self.idle_timeout.clone(),
            max_header_bytes: self.max_header_bytes.clone(),
            max_body_bytes: self.max_body_bytes.clone(),
            data_dir: self.data_dir.clone(),
            drain_timeout: self.drain_timeout.clone(),
            spin_before_park: self.spin_before_park.clone(),
            preempt_timer: self.preempt_timer.clone(),
            ring_depth: self.ring_depth,
            read_yields: self.read_yields,
            readiness: self.readiness.clone(),
            tls_listen: self.tls_listen.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}
