//! Configuration of the upstream gateway: `[[upstreams]]` and the route
//! keys that use them (`upstream`, `strip_prefix`, `rewrite`, `timeout`,
//! `max_body_bytes`, `cache`, `aggregate`). README "Configuration" lists
//! every key with its default; each default below says why it has that value.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::units::{parse_duration, parse_size};

/// Connecting to a healthy upstream on a LAN takes well under a millisecond;
/// a second means it is down or the network is, and the client should hear
/// so (and the retry go elsewhere) quickly.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Whole upstream exchange, retries included. 30 s matches common load
/// balancer defaults; latency-sensitive routes set their own `timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A pooled connection idle longer than this is closed rather than reused:
/// shorter than the 60 s keep-alive most servers grant, so we close it
/// before the upstream does and never send a request into a closing socket.
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle keep-alive connections kept per target per shard.
pub const DEFAULT_POOL_SIZE_PER_SHARD: usize = 32;
/// `retry` given without `attempts`: one retry.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
pub const DEFAULT_RETRY_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Retries may add at most 20% load to an upstream (the Finagle/Linkerd
/// default budget order of magnitude).
pub const DEFAULT_RETRY_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(10);
/// Five consecutive failures: one bad request in flight is not an outage,
/// five in a row on one target is.
pub const DEFAULT_BREAKER_CONSECUTIVE: u32 = 5;
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(10);
pub const DEFAULT_BREAKER_WINDOW: Duration = Duration::from_secs(10);
/// The failure-rate rule needs this many requests in the window before it
/// can trip, so two failures out of three do not eject a target.
pub const DEFAULT_BREAKER_MIN_REQUESTS: u32 = 20;
pub const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_HEALTHY_THRESHOLD: u32 = 2;
pub const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
/// Bounds: a weight over 100 is a typo (use smaller ratios); more than 10
/// attempts turns a retry policy into a load test.
const MAX_WEIGHT: u32 = 100;
const MAX_RETRY_ATTEMPTS: u32 = 10;
const MAX_TARGETS: usize = 256;
const MAX_POOL_SIZE_PER_SHARD: usize = 100_000;
/// Cache defaults: an entry over 1 MiB is a download, not an API response.
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 10_000;
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 64 << 20;
pub const DEFAULT_CACHE_MAX_ENTRY_BYTES: u64 = 1 << 20;
/// Serving a stale copy for up to a minute after expiry hides short
/// upstream outages without serving very old data.
pub const DEFAULT_STALE_IF_ERROR: Duration = Duration::from_secs(60);
/// Streamed bodies: up to 64 GiB per request.
const MAX_STREAM_BODY_BYTES: u64 = 64 << 30;
const MAX_AGGREGATE_PARTS: usize = 32;
/// Aggregate part without `timeout` and route without `timeout`.
pub const DEFAULT_AGGREGATE_PART_TIMEOUT: Duration = Duration::from_secs(5);

fn err<T>(key: &str, msg: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{key}: {msg}")))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastRequests,
    P2c,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMode {
    /// The client's Host.
    Preserve,
    /// The target's `host:port` as configured.
    Target,
    Literal(String),
}

#[derive(Debug, Clone)]
pub struct TargetConfig {
    /// As written in the config (used for `host = "target"` and logs).
    pub name: String,
    pub addr: SocketAddr,
    pub weight: u32,
    /// Set for `https://` targets: the client config and SNI name.
    pub tls: Option<crate::upstream::tls::TargetTls>,
}

#[derive(Debug, Clone)]
pub struct RetryConfig {
    /// Total tries including the first.
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub budget_percent: u32,
    pub budget_window: Duration,
}

#[derive(Debug, Clone)]
pub struct BreakerConfig {
    pub consecutive_failures: u32,
    pub open_for: Duration,
    /// Failure fraction in `window` that opens the breaker (`None` = only
    /// the consecutive rule).
    pub failure_rate: Option<f64>,
    pub window: Duration,
    pub min_requests: u32,
}

#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy: u32,
    pub unhealthy: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub targets: Vec<TargetConfig>,
    pub balance: Balance,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub pool_size_per_shard: usize,
    pub host: HostMode,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub health_check: Option<HealthCheckConfig>,
}

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub ttl: Duration,
    pub max_entries: usize,
    pub max_bytes: u64,
    pub max_entry_bytes: u64,
    pub stale_if_error: Duration,
}

#[derive(Debug, Clone)]
pub struct ProxyRoute {
    /// Index into `Config::upstreams`.
    pub upstream: usize,
    pub strip_prefix: Option<String>,
    pub rewrite: Option<String>,
    pub timeout: Option<Duration>,
    pub cache: Option<CacheConfig>,
}

#[derive(Debug, Clone)]
pub struct AggregatePart {
    pub name: String,
    pub upstream: usize,
    pub path: String,
    pub timeout: Duration,
}

// ---------------------------------------------------------------- file form

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileUpstream {
    name: Option<String>,
    targets: Option<Vec<FileTarget>>,
    balance: Option<String>,
    connect_timeout: Option<String>,
    request_timeout: Option<String>,
    idle_timeout: Option<String>,
    pool_size_per_shard: Option<i64>,
    host: Option<String>,
    retry: Option<FileRetry>,
    circuit_breaker: Option<FileBreaker>,
    health_check: Option<FileHealth>,
    tls: Option<FileUpstreamTls>,
}

/// `tls = { ca = "...", server_name = "...", insecure_skip_verify_for_tests = false }`
/// on an upstream with `https://` targets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUpstreamTls {
    ca: Option<String>,
    server_name: Option<String>,
    #[serde(default)]
    insecure_skip_verify_for_tests: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileTarget {
    Addr(String),
    Weighted {
        addr: String,
        #[serde(default)]
        weight: Option<i64>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRetry {
    attempts: Option<i64>,
    backoff: Option<String>,
    max_backoff: Option<String>,
    budget_percent: Option<i64>,
    budget_window: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBreaker {
    consecutive_failures: Option<i64>,
    open_for: Option<String>,
    failure_rate: Option<f64>,
    window: Option<String>,
    min_requests: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHealth {
    path: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    healthy: Option<i64>,
    unhealthy: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileCache {
    ttl: Option<String>,
    max_entries: Option<i64>,
    max_bytes: Option<toml::Value>,
    max_entry_bytes: Option<toml::Value>,
    stale_if_error: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileAggregatePart {
    name: Option<String>,
    upstream: Option<String>,
    path: Option<String>,
    timeout: Option<String>,
}

fn duration(key: &str, v: &Option<String>, default: Duration) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(t) => {
            let d = parse_duration(t).or_else(|e| err(key, e))?;
            if d.is_zero() {
                return err(key, "must be greater than zero");
            }
            Ok(d)
        }
    }
}

fn count(key: &str, v: Option<i64>, default: u32, min: u32, max: u32) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(n) if n >= i64::from(min) && n <= i64::from(max) => Ok(n as u32),
        Some(n) => err(key, format!("{n} is out of range ({min} to {max})")),
    }
}

fn size(key: &str, v: &Option<toml::Value>, default: u64, max: u64) -> Result<u64, ConfigError> {
    let text = match v {
        None => return Ok(default),
        Some(toml::Value::String(s)) => s.clone(),
        Some(toml::Value::Integer(i)) if *i >= 0 => i.to_string(),
        Some(other) => return err(key, format!("expected a size like \"64MiB\", got {other}")),
    };
    let n = parse_size(&text).or_else(|e| err(key, e))?;
    if n > max {
        return err(
            key,
            format!("{text:?} is more than {}", crate::units::format_size(max)),
        );
    }
    Ok(n)
}

/// The host part of `HOST:PORT` / `[V6]:PORT` (the SNI name of an
/// `https://` target).
fn host_of(host_port: &str) -> &str {
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    host.trim_start_matches('[').trim_end_matches(']')
}

fn resolve(key: &str, addr: &str) -> Result<SocketAddr, ConfigError> {
    if addr.contains("://") {
        return err(
            key,
            format!("{addr:?}: give HOST:PORT, http://HOST:PORT or https://HOST:PORT"),
        );
    }
    match addr.to_socket_addrs() {
        Ok(mut it) => match it.next() {
            Some(a) => Ok(a),
            None => err(key, format!("{addr:?} resolved to no address")),
        },
        Err(e) => err(
            key,
            format!("{addr:?} is not HOST:PORT or does not resolve ({e})"),
        ),
    }
}

pub(crate) fn validate_upstream(i: usize, u: FileUpstream) -> Result<UpstreamConfig, ConfigError> {
    let label = match &u.name {
        Some(n) => format!("upstreams[{i}] ({n})"),
        None => format!("upstreams[{i}]"),
    };
    let key = |k: &str| format!("{label}.{k}");
    let name = match u.name {
        Some(n) if !n.trim().is_empty() => n,
        _ => return err(&key("name"), "every upstream needs a non-empty name"),
    };
    let file_targets = match u.targets {
        Some(t) if !t.is_empty() => t,
        _ => return err(&key("targets"), "needs at least one \"HOST:PORT\""),
    };
    if file_targets.len() > MAX_TARGETS {
        return err(&key("targets"), format!("at most {MAX_TARGETS} targets"));
    }
    let mut targets = Vec::with_capacity(file_targets.len());
    // Built once for all of this upstream's https:// targets.
    let mut tls_config: Option<std::sync::Arc<rustls::ClientConfig>> = None;
    let tls_settings = u.tls;
    for (j, t) in file_targets.into_iter().enumerate() {
        let tkey = format!("{label}.targets[{j}]");
        let (addr_text, weight) = match t {
            FileTarget::Addr(a) => (a, None),
            FileTarget::Weighted { addr, weight } => (addr, weight),
        };
        let (https, host_port) = match addr_text.split_once("://") {
            None => (false, addr_text.clone()),
            Some(("http", rest)) => (false, rest.trim_end_matches('/').to_string()),
            Some(("https", rest)) => (true, rest.trim_end_matches('/').to_string()),
            Some((scheme, _)) => {
                return err(
                    &tkey,
                    format!("{addr_text:?}: scheme {scheme:?} is not http or https"),
                )
            }
        };
        let addr = resolve(&tkey, &host_port)?;
        let weight = count(&format!("{tkey}.weight"), weight, 1, 1, MAX_WEIGHT)?;
        let tls = if https {
            let settings = tls_settings.as_ref();
            let config = match &tls_config {
                Some(c) => std::sync::Arc::clone(c),
                None => {
                    let skip = settings.is_some_and(|s| s.insecure_skip_verify_for_tests);
                    if skip {
                        eprintln!(
                            "shardline: warning: {}: insecure_skip_verify_for_tests is set: \
                             upstream certificates are NOT verified (tests only)",
                            key("tls")
                        );
                    }
                    let ca = settings
                        .and_then(|s| s.ca.as_deref())
                        .map(std::path::Path::new);
                    let c = crate::upstream::tls::client_config(&key("tls"), ca, skip)
                        .map_err(ConfigError)?;
                    tls_config = Some(std::sync::Arc::clone(&c));
                    c
                }
            };
            let name = match settings.and_then(|s| s.server_name.clone()) {
                Some(n) => n,
                None => host_of(&host_port).to_string(),
            };
            let server_name =
                rustls::pki_types::ServerName::try_from(name.clone()).or_else(|_| {
                    err(
                        &key("tls.server_name"),
                        format!("{name:?} is not a DNS name or IP address"),
                    )
                })?;
            Some(crate::upstream::tls::TargetTls {
                config,
                server_name,
            })
        } else {
            None
        };
        targets.push(TargetConfig {
            name: host_port,
            addr,
            weight,
            tls,
        });
    }
    let balance = match u.balance.as_deref() {
        None | Some("round_robin") => Balance::RoundRobin,
        Some("least_requests") => Balance::LeastRequests,
        Some("p2c") => Balance::P2c,
        Some(other) => {
            return err(
                &key("balance"),
                format!("{other:?}: expected round_robin, least_requests or p2c"),
            )
        }
    };
    let pool_size_per_shard = match u.pool_size_per_shard {
        None => DEFAULT_POOL_SIZE_PER_SHARD,
        Some(n) if (0..=MAX_POOL_SIZE_PER_SHARD as i64).contains(&n) => n as usize,
        Some(n) => {
            return err(
                &key("pool_size_per_shard"),
                format!("{n} is out of range (0 to {MAX_POOL_SIZE_PER_SHARD})"),
            )
        }
    };
    let host = match u.host.as_deref() {
        None | Some("preserve") => HostMode::Preserve,
        Some("target") => HostMode::Target,
        Some("") => return err(&key("host"), "must not be empty"),
        Some(h) if h.bytes().any(|b| b <= b' ' || b == 0x7f || b == b',') => {
            return err(&key("host"), format!("{h:?} is not a valid Host value"))
        }
        Some(h) => HostMode::Literal(h.to_string()),
    };
    let retry = match u.retry {
        None => RetryConfig {
            attempts: 1,
            backoff: DEFAULT_RETRY_BACKOFF,
            max_backoff: DEFAULT_RETRY_MAX_BACKOFF,
            budget_percent: DEFAULT_RETRY_BUDGET_PERCENT,
            budget_window: DEFAULT_RETRY_BUDGET_WINDOW,
        },
        Some(r) => RetryConfig {
            attempts: count(
                &key("retry.attempts"),
                r.attempts,
                DEFAULT_RETRY_ATTEMPTS,
                1,
                MAX_RETRY_ATTEMPTS,
            )?,
            backoff: duration(&key("retry.backoff"), &r.backoff, DEFAULT_RETRY_BACKOFF)?,
            max_backoff: duration(
                &key("retry.max_backoff"),
                &r.max_backoff,
                DEFAULT_RETRY_MAX_BACKOFF,
            )?,
            budget_percent: count(
                &key("retry.budget_percent"),
                r.budget_percent,
                DEFAULT_RETRY_BUDGET_PERCENT,
                0,
                100,
            )?,
            budget_window: duration(
                &key("retry.budget_window"),
                &r.budget_window,
                DEFAULT_RETRY_BUDGET_WINDOW,
            )?,
        },
    };
    let breaker = match u.circuit_breaker {
        None => BreakerConfig {
            consecutive_failures: DEFAULT_BREAKER_CONSECUTIVE,
            open_for: DEFAULT_BREAKER_OPEN_FOR,
            failure_rate: None,
            window: DEFAULT_BREAKER_WINDOW,
            min_requests: DEFAULT_BREAKER_MIN_REQUESTS,
        },
        Some(b) => {
            if let Some(r) = b.failure_rate {
                if !(r > 0.0 && r <= 1.0) {
                    return err(
                        &key("circuit_breaker.failure_rate"),
                        format!("{r} must be in (0, 1]"),
                    );
                }
            }
            BreakerConfig {
                consecutive_failures: count(
                    &key("circuit_breaker.consecutive_failures"),
                    b.consecutive_failures,
                    DEFAULT_BREAKER_CONSECUTIVE,
                    1,
                    1_000_000,
                )?,
                open_for: duration(
                    &key("circuit_breaker.open_for"),
                    &b.open_for,
                    DEFAULT_BREAKER_OPEN_FOR,
                )?,
                failure_rate: b.failure_rate,
                window: duration(
                    &key("circuit_breaker.window"),
                    &b.window,
                    DEFAULT_BREAKER_WINDOW,
                )?,
                min_requests: count(
                    &key("circuit_breaker.min_requests"),
                    b.min_requests,
                    DEFAULT_BREAKER_MIN_REQUESTS,
                    1,
                    1_000_000,
                )?,
            }
        }
    };
    let health_check = match u.health_check {
        None => None,
        Some(h) => {
            let path = h.path.unwrap_or_else(|| "/healthz".to_string());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return err(
                    &key("health_check.path"),
                    format!("{path:?} is not an origin-form path"),
                );
            }
            Some(HealthCheckConfig {
                path,
                interval: duration(
                    &key("health_check.interval"),
                    &h.interval,
                    DEFAULT_HEALTH_INTERVAL,
                )?,
                timeout: duration(
                    &key("health_check.timeout"),
                    &h.timeout,
                    DEFAULT_HEALTH_TIMEOUT,
                )?,
                healthy: count(
                    &key("health_check.healthy"),
                    h.healthy,
                    DEFAULT_HEALTHY_THRESHOLD,
                    1,
                    100,
                )?,
                unhealthy: count(
                    &key("health_check.unhealthy"),
                    h.unhealthy,
                    DEFAULT_UNHEALTHY_THRESHOLD,
                    1,
                    100,
                )?,
            })
        }
    };
    Ok(UpstreamConfig {
        name,
        targets,
        balance,
        connect_timeout: duration(
            &key("connect_timeout"),
            &u.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        request_timeout: duration(
            &key("request_timeout"),
            &u.request_timeout,
            DEFAULT_REQUEST_TIMEOUT,
        )?,
        idle_timeout: duration(
            &key("idle_timeout"),
            &u.idle_timeout,
            DEFAULT_UPSTREAM_IDLE_TIMEOUT,
        )?,
        pool_size_per_shard,
        host,
        retry,
        breaker,
        health_check,
    })
}

pub(crate) fn validate_cache(key: &str, c: FileCache) -> Result<CacheConfig, ConfigError> {
    let max_entries = match c.max_entries {
        None => DEFAULT_CACHE_MAX_ENTRIES,
        Some(n) if (1..=100_000_000).contains(&n) => n as usize,
        Some(n) => {
            return err(
                &format!("{key}.max_entries"),
                format!("{n} is out of range"),
            )
        }
    };
    let max_bytes = size(
        &format!("{key}.max_bytes"),
        &c.max_bytes,
        DEFAULT_CACHE_MAX_BYTES,
        64 << 30,
    )?;
    let max_entry_bytes = size(
        &format!("{key}.max_entry_bytes"),
        &c.max_entry_bytes,
        DEFAULT_CACHE_MAX_ENTRY_BYTES.min(max_bytes),
        max_bytes,
    )?;
    Ok(CacheConfig {
        ttl: match &c.ttl {
            None => {
                return err(
                    &format!("{key}.ttl"),
                    "missing (how long a response stays fresh without Cache-Control, e.g. \"30s\")",
                )
            }
            Some(_) => duration(&format!("{key}.ttl"), &c.ttl, Duration::ZERO)?,
        },
        max_entries,
        max_bytes,
        max_entry_bytes,
        stale_if_error: match &c.stale_if_error {
            None => DEFAULT_STALE_IF_ERROR,
            Some(t) => parse_duration(t).or_else(|e| err(&format!("{key}.stale_if_error"), e))?,
        },
    })
}

pub(crate) fn validate_part(
    key: &str,
    p: FileAggregatePart,
    upstreams: &[UpstreamConfig],
    default_timeout: Duration,
) -> Result<AggregatePart, ConfigError> {
    let name = match p.name {
        Some(n) if !n.is_empty() => n,
        _ => return err(&format!("{key}.name"), "every part needs a non-empty name"),
    };
    if name == "errors" {
        return err(
            &format!("{key}.name"),
            "\"errors\" is reserved for failed parts",
        );
    }
    let Some(up) = p.upstream else {
        return err(&format!("{key}.upstream"), "missing");
    };
    let upstream = upstream_index(&format!("{key}.upstream"), &up, upstreams)?;
    let path = match p.path {
        Some(p) if p.starts_with('/') => p,
        _ => return err(&format!("{key}.path"), "missing or not starting with '/'"),
    };
    Ok(AggregatePart {
        name,
        upstream,
        path,
        timeout: duration(&format!("{key}.timeout"), &p.timeout, default_timeout)?,
    })
}

pub(crate) fn upstream_index(
    key: &str,
    name: &str,
    upstreams: &[UpstreamConfig],
) -> Result<usize, ConfigError> {
    upstreams
        .iter()
        .position(|u| u.name == name)
        .map_or_else(|| err(key, format!("no upstream named {name:?}")), Ok)
}

pub(crate) fn route_timeout(
    key: &str,
    v: &Option<String>,
) -> Result<Option<Duration>, ConfigError> {
    match v {
        None => Ok(None),
        Some(_) => duration(key, v, Duration::ZERO).map(Some),
    }
}

pub(crate) fn route_body_limit(
    key: &str,
    v: &Option<toml::Value>,
) -> Result<Option<u64>, ConfigError> {
    match v {
        None => Ok(None),
        Some(_) => size(key, v, 0, MAX_STREAM_BODY_BYTES).map(Some),
    }
}

pub(crate) fn max_parts() -> usize {
    MAX_AGGREGATE_PARTS
}

/// Checks a `strip_prefix` or `rewrite` template.
pub(crate) fn path_key(key: &str, v: &Option<String>) -> Result<Option<String>, ConfigError> {
    match v {
        None => Ok(None),
        Some(p)
            if p.starts_with('/') && !p.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?') =>
        {
            Ok(Some(p.clone()))
        }
        Some(p) => err(
            key,
            format!("{p:?} must start with '/' and hold no spaces or '?'"),
        ),
    }
}
