//! The configuration: TOML file structs, validation, defaults and the
//! embedded default config.
//!
//! Two layers: `File*` structs mirror the TOML exactly (unknown keys are
//! rejected by serde), then `validate` turns them into [`Config`], checking
//! every value with an error that names its key. Sizes and durations are
//! read as raw TOML values so that the message can say which key held
//! `"12XB"`, not just that some string was bad.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use shardline_shard::router::{Methods, Router};

use crate::config_gateway::{
    self as gw, AggregatePart, FileAggregatePart, FileCache, FileUpstream, ProxyRoute,
    UpstreamConfig,
};
use crate::config_obs::{FileObservability, FileSlo, ObservabilityConfig, SloConfig};
use crate::units::{parse_duration, parse_size};

/// Default listen address (ARCHITECTURE.md "Default config").
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9901";
/// glommio's registered I/O memory per shard. 2 MiB keeps the memlock need
/// of a 16-shard server (plus rings) within a typical 64 MiB limit.
pub const DEFAULT_IO_MEMORY_BYTES: u64 = 2 << 20;
/// Read buffer per busy connection: big enough for a deep pipeline of small
/// requests or a typical API body in one read, small enough that thousands
/// of busy connections fit in cache-friendly pools.
pub const DEFAULT_READ_BUFFER_BYTES: u64 = 64 << 10;
/// Connections one shard serves at once; more wait in the listen backlog.
pub const DEFAULT_MAX_CONNECTIONS_PER_SHARD: usize = 10_000;
/// A client gets this long to send a whole request head (slowloris bound).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle keep-alive connection is closed after this long.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Whole request head: 16 KiB covers large cookies and JWTs with room to
/// spare (nginx's default large_client_header_buffers is 8 KiB per line).
pub const DEFAULT_MAX_HEADER_BYTES: u64 = 16_384;
/// Request bodies are buffered whole for now, so the limit is also a memory
/// bound per busy connection.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;
/// glommio's defaults: 100 ms preemption, 128-entry rings, no spinning.
pub const DEFAULT_PREEMPT_TIMER: Duration = Duration::from_millis(100);
pub const DEFAULT_RING_DEPTH: usize = 128;
/// io_uring caps a ring at 32768 entries; fewer than 8 starves submission.
const MIN_RING_DEPTH: usize = 8;
const MAX_RING_DEPTH: usize = 32_768;
/// Spinning longer than a second before parking is never useful: it only
/// burns a core that has nothing to do.
const MAX_SPIN_BEFORE_PARK: Duration = Duration::from_secs(1);
/// A socket read that finds nothing retries this many times, yielding to
/// the shard's other tasks in between, before it waits for readiness.
/// Under load the data usually arrives while the other tasks run, and
/// finding it skips the wait and its wake-up (with `readiness = "io_uring"`
/// a task-work IPI, measured at ~20% of a loaded gateway's CPU). 3 measured
/// best for the proxy and for `/plaintext` with epoll waits too (README
/// "Tuning flags"); 0 waits at once.
pub const DEFAULT_READ_YIELDS: u32 = 3;
/// More retries only burn syscalls on sockets that stay quiet.
const MAX_READ_YIELDS: u32 = 64;
/// In-flight requests get this long to finish after SIGTERM.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_DATA_DIR: &str = "./shardline-data";

/// Bounds on values, each with why.
/// io_memory: glommio needs some; more than 1 GiB per core is a typo.
const MIN_IO_MEMORY_BYTES: u64 = 64 << 10;
const MAX_IO_MEMORY_BYTES: u64 = 1 << 30;
/// A read buffer under 1 KiB cannot hold a typical request head in one read.
const MIN_READ_BUFFER_BYTES: u64 = 1 << 10;
const MAX_READ_BUFFER_BYTES: u64 = 16 << 20;
/// A head limit under 1 KiB rejects ordinary browsers; over 1 MiB is a DoS
/// invitation.
const MIN_HEADER_BYTES: u64 = 1 << 10;
const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Bodies are held in memory whole until streaming lands.
const MAX_BODY_BYTES: u64 = 1 << 30;
const MAX_SHARDS: usize = 1024;

/// A configuration error: one line, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn err<T>(key: &str, msg: impl fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{key}: {msg}")))
}

/// The validated, effective configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    /// `[auth.NAME]` sections, referred to by routes' `auth` key.
    pub auth: Vec<crate::policy::config::AuthConfig>,
    pub observability: ObservabilityConfig,
    pub slos: Vec<SloConfig>,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// `None` = no admin listener.
    pub admin_listen: Option<SocketAddr>,
    /// 0 = one per CPU in `cpus` (or every CPU this process may use).
    pub shards: usize,
    pub cpus: Option<Vec<usize>>,
    pub io_memory: u64,
    pub read_buffer: u64,
    pub max_connections_per_shard: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: u64,
    pub max_body_bytes: u64,
    pub data_dir: PathBuf,
    pub drain_timeout: Duration,
    /// Busy-poll before parking (0 = park at once).
    pub spin_before_park: Duration,
    pub preempt_timer: Duration,
    pub ring_depth: usize,
    /// Non-blocking read retries (each after yielding to the shard's other
    /// tasks) before a socket read waits for readiness.
    pub read_yields: u32,
    /// How connections wait for readable sockets: one epoll instance per
    /// shard (default) or glommio's io_uring poll per wait.
    pub readiness: shardline_shard::ReadinessMode,
    /// The HTTPS listener (`[server.tls]`), beside the plain one.
    pub tls: Option<crate::config_tls::TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub name: String,
    /// `None` = any method.
    pub methods: Option<Vec<String>>,
    pub path: String,
    pub action: Action,
    /// This route's body limit, when it differs from `server.max_body_bytes`
    /// (only upstream routes, whose bodies stream, may set it).
    pub max_body_bytes: Option<u64>,
    /// Policies run before the action (README "Policies").
    pub policy: crate::policy::config::RoutePolicyConfig,
    /// Fraction of this route's requests written to the access log, when it
    /// differs from `observability.access_log_sample`.
    pub access_log_sample: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum Action {
    Respond(Respond),
    Handler(String),
    Upstream(ProxyRoute),
    Aggregate(Vec<AggregatePart>),
}

#[derive(Debug, Clone)]
pub struct Respond {
    pub status: u16,
    pub body: String,
    pub content_type: Option<String>,
    pub headers: Vec<(String, String)>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: parse_addr_const(DEFAULT_LISTEN),
            admin_listen: Some(parse_addr_const(DEFAULT_ADMIN_LISTEN)),
            shards: 0,
            cpus: None,
            io_memory: DEFAULT_IO_MEMORY_BYTES,
            read_buffer: DEFAULT_READ_BUFFER_BYTES,
            max_connections_per_shard: DEFAULT_MAX_CONNECTIONS_PER_SHARD,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            spin_before_park: Duration::ZERO,
            preempt_timer: DEFAULT_PREEMPT_TIMER,
            ring_depth: DEFAULT_RING_DEPTH,
            read_yields: DEFAULT_READ_YIELDS,
            readiness: shardline_shard::ReadinessMode::Epoll,
            tls: None,
        }
    }
}

fn parse_addr_const(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// The embedded default config (ARCHITECTURE.md "Default config").
pub const DEFAULT_CONFIG_TOML: &str = r#"
[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9901"

[[routes]]
name = "healthz"
method = "GET"
path = "/healthz"
respond = { status = 200, body = "ok", content_type = "text/plain" }

[[routes]]
name = "plaintext"
method = "GET"
path = "/plaintext"
respond = { status = 200, body = "Hello, World!", content_type = "text/plain" }

[[routes]]
name = "json"
method = "GET"
path = "/json"
respond = { status = 200, body = '{"message":"Hello, World!"}', content_type = "application/json" }

[[routes]]
name = "echo"
method = "POST"
path = "/echo"
handler = "echo"
"#;

impl Default for Config {
    fn default() -> Self {
        match Config::from_toml_str(DEFAULT_CONFIG_TOML) {
            Ok(c) => c,
            // The embedded text is tested; this arm keeps start-up panic-free.
            Err(_) => Config {
                server: ServerConfig::default(),
                upstreams: Vec::new(),
                routes: Vec::new(),
                auth: Vec::new(),
                observability: ObservabilityConfig::default(),
                slos: Vec::new(),
            },
        }
    }
}

// ---- the file layer ----

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    server: FileServer,
    #[serde(default)]
    routes: Vec<FileRoute>,
    // Documented in ARCHITECTURE.md, not implemented yet: accepted by the
    // parser only so that the error can say so instead of "unknown field".
    #[serde(default)]
    upstreams: Vec<FileUpstream>,
    auth: Option<toml::Value>,
    slos: Option<Vec<FileSlo>>,
    observability: Option<FileObservability>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileServer {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub shards: Option<usize>,
    pub cpus: Option<String>,
    pub io_memory: Option<toml::Value>,
    pub read_buffer: Option<toml::Value>,
    pub max_connections_per_shard: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<toml::Value>,
    pub max_body_bytes: Option<toml::Value>,
    pub data_dir: Option<String>,
    pub drain_timeout: Option<String>,
    pub spin_before_park: Option<String>,
    pub preempt_timer: Option<String>,
    pub ring_depth: Option<usize>,
    pub read_yields: Option<u32>,
    pub readiness: Option<String>,
    pub tls: Option<crate::config_tls::FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    name: Option<String>,
    method: Option<String>,
    methods: Option<Vec<String>>,
    path: Option<String>,
    respond: Option<FileRespond>,
    handler: Option<String>,
    // Documented in ARCHITECTURE.md; later issues implement them.
    upstream: Option<String>,
    aggregate: Option<Vec<FileAggregatePart>>,
    strip_prefix: Option<String>,
    rewrite: Option<String>,
    timeout: Option<String>,
    max_body_bytes: Option<toml::Value>,
    auth: Option<toml::Value>,
    scopes: Option<toml::Value>,
    rate_limit: Option<toml::Value>,
    quota: Option<toml::Value>,
    cache: Option<FileCache>,
    validate: Option<toml::Value>,
    idempotency: Option<toml::Value>,
    cors: Option<toml::Value>,
    request_id: Option<bool>,
    access_log_sample: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRespond {
    status: Option<i64>,
    #[serde(default)]
    body: String,
    content_type: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Server keys as they come from the file and the command line, before
/// validation. Command-line values replace file values key by key.
#[derive(Debug, Default, Clone)]
pub struct ServerOverrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub shards: Option<usize>,
    pub cpus: Option<String>,
    pub io_memory: Option<String>,
    pub read_buffer: Option<String>,
    pub max_connections_per_shard: Option<usize>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<String>,
    pub max_body_bytes: Option<String>,
    pub data_dir: Option<String>,
    pub drain_timeout: Option<String>,
    pub spin_before_park: Option<String>,
    pub preempt_timer: Option<String>,
    pub ring_depth: Option<usize>,
    pub read_yields: Option<u32>,
    pub readiness: Option<String>,
    /// `[server.tls]` listen / cert / key (`--tls-listen`, `--tls-cert`,
    /// `--tls-key`); any of them without a `[server.tls]` table creates one.
    pub tls_listen: Option<String>,
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

impl Config {
    /// Parses and validates a config file's text.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_overrides(text, &ServerOverrides::default())
    }

    /// Parses a config file's text, applies command-line overrides, and
    /// validates the result.
    pub fn from_toml_with_overrides(
        text: &str,
        overrides: &ServerOverrides,
    ) -> Result<Config, ConfigError> {
        let mut file: FileConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        if file.routes.is_empty() {
            // A file that only tunes [server] still serves the default routes.
            let default: FileConfig = toml::from_str(DEFAULT_CONFIG_TOML)
                .map_err(|e| toml_error(DEFAULT_CONFIG_TOML, &e))?;
            file.routes = default.routes;
        }
        let mut server = validate_server(&file.server, overrides)?;
        let tls_file = crate::config_tls::with_overrides(file.server.tls.take(), overrides);
        if let Some(t) = tls_file {
            let tls = crate::config_tls::validate_tls(t)?;
            if tls.listen.port() != 0
                && (tls.listen == server.listen || Some(tls.listen) == server.admin_listen)
            {
                return err(
                    "server.tls.listen",
                    format!("{} is already used by another listener", tls.listen),
                );
            }
            server.tls = Some(tls);
        }
        let auth = crate::policy::config::validate_auth(file.auth.take())?;
        crate::policy::config::check_mtls_has_client_auth(&auth, server.tls.as_ref())?;
        let mut upstreams: Vec<UpstreamConfig> = Vec::with_capacity(file.upstreams.len());
        for (i, u) in file.upstreams.into_iter().enumerate() {
            let u = gw::validate_upstream(i, u)?;
            if upstreams.iter().any(|o| o.name == u.name) {
                return err(
                    "upstreams",
                    format!("two upstreams are named {:?}; names must be unique", u.name),
                );
            }
            upstreams.push(u);
        }
        let mut routes = Vec::with_capacity(file.routes.len());
        for (i, r) in file.routes.into_iter().enumerate() {
            routes.push(validate_route(i, r, &upstreams, &auth)?);
        }
        let mut seen = std::collections::HashSet::new();
        for r in &routes {
            if !seen.insert(r.name.as_str()) {
                return err(
                    "routes",
                    format!("two routes are named {:?}; names must be unique", r.name),
                );
            }
        }
        // Templates that cannot coexist are a config error, found now rather
        // than on the first request.
        let mut router = Router::new();
        for (i, r) in routes.iter().enumerate() {
            let methods = r.methods.clone().map_or(Methods::Any, Methods::Only);
            router
                .insert(methods, &r.path, i)
                .map_err(|e| ConfigError(format!("routes[{i}] ({}): {e}", r.name)))?;
        }
        let observability = crate::config_obs::validate_observability(file.observability)?;
        let route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
        let slos = crate::config_obs::validate_slos(file.slos.unwrap_or_default(), &route_names)?;
        Ok(Config {
            server,
            upstreams,
            routes,
            auth,
            observability,
            slos,
        })
    }

    /// Applies command-line overrides to the embedded default config.
    pub fn default_with_overrides(overrides: &ServerOverrides) -> Result<Config, ConfigError> {
        Config::from_toml_with_overrides(DEFAULT_CONFIG_TOML, overrides)
    }
}

/// One-line message from a toml/serde error: the message plus the line it
/// points at, so the key is named even for type errors.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e.message().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
            ConfigError(format!("line {line_no} ({line}): {msg}"))
        }
        None => ConfigError(msg),
    }
}

fn value_text(key: &str, v: &toml::Value) -> Result<String, ConfigError> {
    match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) if *i >= 0 => Ok(i.to_string()),
        other => err(
            key,
            format!("expected a size like \"64KiB\" or a number of bytes, got {other}"),
        ),
    }
}

fn size_in(key: &str, text: &str, min: u64, max: u64) -> Result<u64, ConfigError> {
    let n = parse_size(text).or_else(|e| err(key, e))?;
    if n < min || n > max {
        return err(
            key,
            format!(
                "{text:?} is out of range ({} to {})",
                crate::units::format_size(min),
                crate::units::format_size(max)
            ),
        );
    }
    Ok(n)
}

fn duration_nonzero(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = parse_duration(text).or_else(|e| err(key, e))?;
    if d.is_zero() {
        return err(key, "must be greater than zero");
    }
    Ok(d)
}

fn validate_server(f: &FileServer, o: &ServerOverrides) -> Result<ServerConfig, ConfigError> {
    let mut s = ServerConfig::default();

    // Text values: the override wins, else the file, else the default.
    let pick = |key: &str,
                over: &Option<String>,
                file: &Option<toml::Value>|
     -> Result<Option<String>, ConfigError> {
        if let Some(v) = over {
            return Ok(Some(v.clone()));
        }
        match file {
            Some(v) => value_text(key, v).map(Some),
            None => Ok(None),
        }
    };

    if let Some(v) = o.listen.as_ref().or(f.listen.as_ref()) {
        s.listen = parse_listen("server.listen", v)?;
    }
    if let Some(v) = o.admin_listen.as_ref().or(f.admin_listen.as_ref()) {
        s.admin_listen = if v == "off" {
            None
        } else {
            Some(parse_listen("server.admin_listen", v)?)
        };
    }
    if let Some(n) = o.shards.or(f.shards) {
        if n > MAX_SHARDS {
            return err("server.shards", format!("{n} is more than {MAX_SHARDS}"));
        }
        s.shards = n;
    }
    if let Some(v) = o.cpus.as_ref().or(f.cpus.as_ref()) {
        let list = shardline_shard::cpus::parse_cpu_list(v).or_else(|e| err("server.cpus", e))?;
        let allowed = shardline_shard::cpus::allowed_cpus();
        if let Some(c) = list.iter().find(|c| !allowed.contains(c)) {
            return err(
                "server.cpus",
                format!("CPU {c} is not available to this process (allowed: {allowed:?})"),
            );
        }
        s.cpus = Some(list);
    }
    if let Some(v) = pick("server.io_memory", &o.io_memory, &f.io_memory)? {
        s.io_memory = size_in(
            "server.io_memory",
            &v,
            MIN_IO_MEMORY_BYTES,
            MAX_IO_MEMORY_BYTES,
        )?;
    }
    if let Some(v) = pick("server.read_buffer", &o.read_buffer, &f.read_buffer)? {
        s.read_buffer = size_in(
            "server.read_buffer",
            &v,
            MIN_READ_BUFFER_BYTES,
            MAX_READ_BUFFER_BYTES,
        )?;
    }
    if let Some(n) = o.max_connections_per_shard.or(f.max_connections_per_shard) {
        if n == 0 {
            return err("server.max_connections_per_shard", "must be at least 1");
        }
        s.max_connections_per_shard = n;
    }
    if let Some(v) = o
        .header_read_timeout
        .as_ref()
        .or(f.header_read_timeout.as_ref())
    {
        s.header_read_timeout = duration_nonzero("server.header_read_timeout", v)?;
    }
    if let Some(v) = o.idle_timeout.as_ref().or(f.idle_timeout.as_ref()) {
        s.idle_timeout = duration_nonzero("server.idle_timeout", v)?;
    }
    if let Some(v) = pick(
        "server.max_header_bytes",
        &o.max_header_bytes,
        &f.max_header_bytes,
    )? {
        s.max_header_bytes = size_in(
            "server.max_header_bytes",
            &v,
            MIN_HEADER_BYTES,
            MAX_HEADER_BYTES,
        )?;
    }
    if let Some(v) = pick(
        "server.max_body_bytes",
        &o.max_body_bytes,
        &f.max_body_bytes,
    )? {
        s.max_body_bytes = size_in("server.max_body_bytes", &v, 0, MAX_BODY_BYTES)?;
    }
    if let Some(v) = o.data_dir.as_ref().or(f.data_dir.as_ref()) {
        if v.is_empty() {
            return err("server.data_dir", "must not be empty");
        }
        s.data_dir = PathBuf::from(v);
    }
    if let Some(v) = o.drain_timeout.as_ref().or(f.drain_timeout.as_ref()) {
        s.drain_timeout = parse_duration(v).or_else(|e| err("server.drain_timeout", e))?;
    }
    if let Some(v) = o.spin_before_park.as_ref().or(f.spin_before_park.as_ref()) {
        let d = parse_duration(v).or_else(|e| err("server.spin_before_park", e))?;
        if d > MAX_SPIN_BEFORE_PARK {
            return err("server.spin_before_park", format!("{v:?} is more than 1s"));
        }
        s.spin_before_park = d;
    }
    if let Some(v) = o.preempt_timer.as_ref().or(f.preempt_timer.as_ref()) {
        s.preempt_timer = duration_nonzero("server.preempt_timer", v)?;
    }
    if let Some(n) = o.ring_depth.or(f.ring_depth) {
        if !(MIN_RING_DEPTH..=MAX_RING_DEPTH).contains(&n) {
            return err(
                "server.ring_depth",
                format!("{n} is out of range ({MIN_RING_DEPTH} to {MAX_RING_DEPTH})"),
            );
        }
        s.ring_depth = n;
    }
    if let Some(n) = o.read_yields.or(f.read_yields) {
        if n > MAX_READ_YIELDS {
            return err(
                "server.read_yields",
                format!("{n} is more than {MAX_READ_YIELDS}"),
            );
        }
        s.read_yields = n;
    }
    if let Some(v) = o.readiness.as_ref().or(f.readiness.as_ref()) {
        s.readiness = match v.as_str() {
            "epoll" => shardline_shard::ReadinessMode::Epoll,
            "epoll-wait" => shardline_shard::ReadinessMode::EpollWait,
            "io_uring" => shardline_shard::ReadinessMode::IoUring,
            _ => {
                return err(
                    "server.readiness",
                    format!("{v:?} is not one of \"epoll\", \"epoll-wait\", \"io_uring\""),
                )
            }
        };
    }
    if let (Some(admin), listen) = (s.admin_listen, s.listen) {
        if admin == listen && listen.port() != 0 {
            return err(
                "server.admin_listen",
                format!("{admin} is also server.listen"),
            );
        }
    }
    Ok(s)
}

fn parse_listen(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.parse().or_else(|_| {
        err(
            key,
            format!(
                "invalid address {v:?}: expected IP:PORT like \"127.0.0.1:8080\" or \"[::1]:8080\""
            ),
        )
    })
}

fn is_token(s: &str) -> bool {
    // RFC 9110 §5.6.2 tchar.
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Headers the server frames itself; a route may not set them.
const RESERVED_HEADERS: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "date",
    "content-type",
    "keep-alive",
];

fn validate_route(
    i: usize,
    r: FileRoute,
    upstreams: &[UpstreamConfig],
    auth: &[crate::policy::config::AuthConfig],
) -> Result<RouteConfig, ConfigError> {
    let label = match &r.name {
        Some(n) => format!("routes[{i}] ({n})"),
        None => format!("routes[{i}]"),
    };
    let key = |k: &str| format!("{label}.{k}");
    let name = match r.name {
        Some(n) if !n.trim().is_empty() => n,
        _ => return err(&key("name"), "every route needs a non-empty name"),
    };
    let Some(path) = r.path else {
        return err(
            &key("path"),
            "missing (a path template such as \"/v1/users/{id}\")",
        );
    };
    let methods = match (r.method, r.methods) {
        (Some(_), Some(_)) => return err(&key("method"), "use either method or methods, not both"),
        (Some(m), None) => Some(vec![m]),
        (None, Some(ms)) if ms.is_empty() => return err(&key("methods"), "must not be empty"),
        (None, Some(ms)) => Some(ms),
        (None, None) => None,
    };
    if let Some(ms) = &methods {
        for m in ms {
            if !is_token(m) || m.bytes().any(|b| b.is_ascii_lowercase()) {
                return err(
                    &key("method"),
                    format!("{m:?} is not an HTTP method (upper-case token, like \"GET\")"),
                );
            }
        }
    }
    let actions = usize::from(r.respond.is_some())
        + usize::from(r.handler.is_some())
        + usize::from(r.upstream.is_some())
        + usize::from(r.aggregate.is_some());
    if actions > 1 {
        return err(
            &label,
            "has more than one of respond, handler, upstream, aggregate; a route has exactly one action",
        );
    }
    if actions == 0 {
        return err(
            &label,
            "has no action: add respond = { ... }, handler = \"NAME\", upstream = \"NAME\" or aggregate = [ ... ]",
        );
    }
    let is_upstream = r.upstream.is_some();
    let is_aggregate = r.aggregate.is_some();
    for (k, present) in [
        ("strip_prefix", r.strip_prefix.is_some()),
        ("rewrite", r.rewrite.is_some()),
        ("cache", r.cache.is_some()),
        ("max_body_bytes", r.max_body_bytes.is_some()),
    ] {
        if present && !is_upstream {
            return err(&key(k), "applies only to routes with upstream = \"NAME\"");
        }
    }
    if r.timeout.is_some() && !is_upstream && !is_aggregate {
        return err(
            &key("timeout"),
            "applies only to upstream and aggregate routes",
        );
    }
    let timeout = gw::route_timeout(&key("timeout"), &r.timeout)?;
    let policy = crate::policy::config::validate_route_policy(
        &label,
        crate::policy::config::FileRoutePolicy {
            auth: r.auth,
            scopes: r.scopes,
            rate_limit: r.rate_limit,
            quota: r.quota,
            validate: r.validate,
            idempotency: r.idempotency,
            cors: r.cors,
            request_id: r.request_id,
        },
        auth,
        &path,
    )?;
    let access_log_sample = match r.access_log_sample {
        Some(v) => Some(crate::config_obs::ratio(&key("access_log_sample"), v)?),
        None => None,
    };
    let max_body_bytes = gw::route_body_limit(&key("max_body_bytes"), &r.max_body_bytes)?;
    let action = match (r.respond, r.handler) {
        _ if is_upstream => {
            let name = r.upstream.unwrap_or_default();
            let upstream = gw::upstream_index(&key("upstream"), &name, upstreams)?;
            let strip_prefix = gw::path_key(&key("strip_prefix"), &r.strip_prefix)?;
            let rewrite = gw::path_key(&key("rewrite"), &r.rewrite)?;
            if let Some(rw) = &rewrite {
                check_template_params(&key("rewrite"), rw, &path)?;
            }
            let cache = match r.cache {
                Some(c) => Some(gw::validate_cache(&key("cache"), c)?),
                None => None,
            };
            Action::Upstream(ProxyRoute {
                upstream,
                strip_prefix,
                rewrite,
                timeout,
                cache,
            })
        }
        _ if is_aggregate => {
            let parts_in = r.aggregate.unwrap_or_default();
            if parts_in.is_empty() || parts_in.len() > gw::max_parts() {
                return err(
                    &key("aggregate"),
                    format!("needs 1 to {} parts", gw::max_parts()),
                );
            }
            let default_timeout = timeout.unwrap_or(gw::DEFAULT_AGGREGATE_PART_TIMEOUT);
            let mut parts: Vec<AggregatePart> = Vec::with_capacity(parts_in.len());
            for (j, p) in parts_in.into_iter().enumerate() {
                let pkey = key(&format!("aggregate[{j}]"));
                let part = gw::validate_part(&pkey, p, upstreams, default_timeout)?;
                check_template_params(&format!("{pkey}.path"), &part.path, &path)?;
                if parts.iter().any(|q| q.name == part.name) {
                    return err(&pkey, format!("two parts are named {:?}", part.name));
                }
                parts.push(part);
            }
            Action::Aggregate(parts)
        }
        (None, None) | (Some(_), Some(_)) => return err(&label, "has no action"),
        (None, Some(h)) => {
            if h.is_empty() {
                return err(&key("handler"), "must not be empty");
            }
            Action::Handler(h)
        }
        (Some(resp), None) => {
            let status = resp.status.unwrap_or(200);
            if !(200..=599).contains(&status) {
                return err(
                    &key("respond.status"),
                    format!("{status} is not a final status (200-599)"),
                );
            }
            if let Some(ct) = &resp.content_type {
                if ct.bytes().any(|b| b < 0x20 || b == 0x7f) {
                    return err(
                        &key("respond.content_type"),
                        "must not contain control characters",
                    );
                }
            }
            if resp.headers.len() > crate::app::MAX_RESPOND_HEADERS {
                return err(
                    &key("respond.headers"),
                    format!("at most {} headers", crate::app::MAX_RESPOND_HEADERS),
                );
            }
            let mut headers = Vec::new();
            for (n, v) in resp.headers {
                if !is_token(&n) {
                    return err(
                        &key("respond.headers"),
                        format!("{n:?} is not a valid header name"),
                    );
                }
                if RESERVED_HEADERS.contains(&n.to_ascii_lowercase().as_str()) {
                    return err(
                        &key("respond.headers"),
                        format!("{n:?} is set by the server (use content_type for Content-Type)"),
                    );
                }
                if v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    return err(
                        &key("respond.headers"),
                        format!("value of {n:?} must not contain control characters"),
                    );
                }
                headers.push((n, v));
            }
            let status = u16::try_from(status).unwrap_or(500);
            // RFC 9110 §15.3.5, §15.3.6, §15.4.5: no content in a 204, 205
            // or 304.
            if matches!(status, 204 | 205 | 304) && !resp.body.is_empty() {
                return err(
                    &key("respond.body"),
                    format!("a {status} response has no body"),
                );
            }
            Action::Respond(Respond {
                status,
                body: resp.body,
                content_type: resp.content_type,
                headers,
            })
        }
    };
    Ok(RouteConfig {
        name,
        methods,
        path,
        action,
        max_body_bytes,
        policy,
        access_log_sample,
    })
}

/// Every `{name}` / `{*name}` in a rewrite or aggregate path template must
/// be a parameter of the route's own path.
fn check_template_params(key: &str, template: &str, route_path: &str) -> Result<(), ConfigError> {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return err(key, format!("{template:?} has an unclosed '{{'"));
        };
        let name = rest[open + 1..open + close].trim_start_matches('*');
        let in_route = route_path.contains(&format!("{{{name}}}"))
            || route_path.contains(&format!("{{*{name}}}"));
        if name.is_empty() || !in_route {
            return err(
                key,
                format!("{{{name}}} is not a parameter of the route's path {route_path:?}"),
            );
        }
        rest = &rest[open + close + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_config_is_valid() {
        let text = include_str!("../../shardline.example.toml");
        let c = Config::from_toml_str(text).expect("shardline.example.toml");
        assert_eq!(c.routes.len(), 7);
        assert_eq!(c.upstreams.len(), 1);
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::from_toml_str(DEFAULT_CONFIG_TOML).expect("default config");
        assert_eq!(c.routes.len(), 4);
        assert_eq!(c.server.listen, DEFAULT_LISTEN.parse().unwrap());
    }

    fn e(text: &str) -> String {
        Config::from_toml_str(text).unwrap_err().0
    }

    #[test]
    fn statuses_without_content_take_no_body() {
        for status in [204, 205, 304] {
            let text = format!(
                "[[routes]]\nname = \"a\"\npath = \"/a\"\n\
                 respond = {{ status = {status}, body = \"x\" }}\n"
            );
            assert!(e(&text).contains("respond.body"), "{status}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        assert!(e("[server]\nbogus = 1\n").contains("bogus"));
        assert!(e("[server]\nmax_body_bytes = \"12XB\"\n").starts_with("server.max_body_bytes"));
        assert!(e("[server]\nidle_timeout = \"10\"\n").starts_with("server.idle_timeout"));
        assert!(e("[server]\nlisten = \"localhost\"\n").starts_with("server.listen"));
        assert!(e("[server]\nshards = \"two\"\n").contains("shards"));
        assert!(e("[[upstreams]]\nname = \"x\"\n").starts_with("upstreams"));
        assert!(e("[[routes]]\nname = \"a\"\npath = \"/a\"\n").contains("no action"));
        assert!(
            e("[[routes]]\nname = \"a\"\npath = \"a\"\nhandler = \"echo\"\n")
                .contains("start with '/'")
        );
        assert!(
            e("[[routes]]\nname = \"a\"\npath = \"/a\"\nupstream = \"u\"\n").contains("upstream")
        );
        assert!(!e("[server]\nbogus = 1\n").contains('\n'));
    }

    #[test]
    fn overrides_win_over_file() {
        let o = ServerOverrides {
            listen: Some("127.0.0.1:1234".into()),
            max_body_bytes: Some("2KiB".into()),
            ..Default::default()
        };
        let c = Config::from_toml_with_overrides(
            "[server]\nlisten = \"127.0.0.1:9\"\nmax_body_bytes = 5\n",
            &o,
        )
        .unwrap();
        assert_eq!(c.server.listen.port(), 1234);
        assert_eq!(c.server.max_body_bytes, 2048);
    }

    #[test]
    fn duplicate_route_names_and_paths() {
        let t = "[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\n[[routes]]\nname=\"a\"\npath=\"/b\"\nhandler=\"echo\"\n";
        assert!(e(t).contains("unique"));
        let t = "[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\n[[routes]]\nname=\"b\"\npath=\"/a\"\nhandler=\"echo\"\n";
        assert!(e(t).contains("twice"));
    }

    #[test]
    fn gateway_errors_name_the_key() {
        let up = "[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9000\"]\n";
        let route =
            |extra: &str| format!("{up}[[routes]]\nname = \"r\"\npath = \"/a/{{id}}\"\n{extra}\n");
        assert!(e(&route("upstream = \"nope\""))
            .starts_with("routes[0] (r).upstream: no upstream named"));
        assert!(e(&route(
            "respond = { body = \"x\" }\ncache = { ttl = \"1s\" }"
        ))
        .contains("cache: applies only"));
        assert!(e(&route("upstream = \"u\"\nrewrite = \"/b/{other}\"")).contains("rewrite"));
        assert!(e(&route("upstream = \"u\"\ncache = { max_entries = 5 }")).contains("cache.ttl"));
        assert!(e(&route("upstream = \"u\"\nhandler = \"echo\"")).contains("exactly one action"));
        assert!(e(&route("aggregate = []")).contains("aggregate"));
        assert!(e(&route(
            "aggregate = [ { name = \"errors\", upstream = \"u\", path = \"/x\" } ]"
        ))
        .contains("reserved"));
        assert!(e(
            "[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9000\"]\nbalance = \"random\"\n"
        )
        .contains("balance"));
        assert!(e(
            "[[upstreams]]\nname = \"u\"\ntargets = [{ addr = \"127.0.0.1:9000\", weight = 0 }]\n"
        )
        .contains("weight"));
        assert!(
            e("[[upstreams]]\nname = \"u\"\ntargets = [\"https://x:443\"]\n")
                .contains("targets[0]")
        );
        assert!(e("[[upstreams]]\nname = \"u\"\ntargets = [\"127.0.0.1:9000\"]\nretry = { attempts = 0 }\n").contains("retry.attempts"));
        assert!(e(&format!("{up}{up}")).contains("unique"));
    }
}
