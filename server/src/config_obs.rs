//! `[observability]` and `[[slos]]`: file structs and validation.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::units::parse_duration;

/// Default SLO window (the SRE workbook's 30 days).
pub const DEFAULT_SLO_WINDOW: Duration = Duration::from_secs(30 * 86_400);
/// An SLO window shorter than an hour has too few events to mean much;
/// longer than a year outgrows the hourly buckets' purpose.
const MIN_SLO_WINDOW: Duration = Duration::from_secs(3_600);
const MAX_SLO_WINDOW: Duration = Duration::from_secs(366 * 86_400);
/// Default fraction of requests traced when `otlp_endpoint` is set.
pub const DEFAULT_TRACE_SAMPLE_RATIO: f64 = 0.01;

fn err<T>(key: &str, msg: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{key}: {msg}")))
}

/// Where a log stream goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    Off,
    Stdout,
    File(PathBuf),
}

impl LogTarget {
    fn parse(key: &str, v: &str) -> Result<LogTarget, ConfigError> {
        match v {
            "off" => Ok(LogTarget::Off),
            "stdout" => Ok(LogTarget::Stdout),
            "" => err(key, "must be \"stdout\", \"off\" or a file path"),
            path => Ok(LogTarget::File(PathBuf::from(path))),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            LogTarget::Off => "off".into(),
            LogTarget::Stdout => "stdout".into(),
            LogTarget::File(p) => p.display().to_string(),
        }
    }
}

/// Where spans are exported (OTLP/HTTP, JSON encoding).
#[derive(Debug, Clone, PartialEq)]
pub struct OtlpEndpoint {
    /// As written in the config (for messages and `check`).
    pub url: String,
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ObservabilityConfig {
    pub access_log: LogTarget,
    /// Fraction of requests logged (per route overridable); 5xx answers
    /// are always logged.
    pub access_log_sample: f64,
    pub audit_log: LogTarget,
    pub otlp_endpoint: Option<OtlpEndpoint>,
    pub trace_sample_ratio: f64,
    /// `service.name` of exported spans.
    pub service_name: String,
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        ObservabilityConfig {
            access_log: LogTarget::Off,
            access_log_sample: 1.0,
            audit_log: LogTarget::Off,
            otlp_endpoint: None,
            trace_sample_ratio: DEFAULT_TRACE_SAMPLE_RATIO,
            service_name: "shardline".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SloConfig {
    pub name: String,
    /// Route names; empty = every route.
    pub routes: Vec<String>,
    pub objective: f64,
    /// Slower than this counts against the budget; `None` = only 5xx do.
    pub latency_threshold: Option<Duration>,
    pub window: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileObservability {
    access_log: Option<String>,
    access_log_sample: Option<f64>,
    audit_log: Option<String>,
    otlp_endpoint: Option<String>,
    trace_sample_ratio: Option<f64>,
    service_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSlo {
    name: Option<String>,
    #[serde(default)]
    routes: Vec<String>,
    objective: Option<f64>,
    latency_threshold: Option<String>,
    window: Option<String>,
}

pub(crate) fn ratio(key: &str, v: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        err(key, format!("{v} is not a fraction between 0 and 1"))
    }
}

pub(crate) fn validate_observability(
    f: Option<FileObservability>,
) -> Result<ObservabilityConfig, ConfigError> {
    let mut o = ObservabilityConfig::default();
    let Some(f) = f else { return Ok(o) };
    if let Some(v) = &f.access_log {
        o.access_log = LogTarget::parse("observability.access_log", v)?;
    }
    if let Some(v) = f.access_log_sample {
        o.access_log_sample = ratio("observability.access_log_sample", v)?;
    }
    if let Some(v) = &f.audit_log {
        o.audit_log = LogTarget::parse("observability.audit_log", v)?;
    }
    if let (LogTarget::File(a), LogTarget::File(b)) = (&o.access_log, &o.audit_log) {
        if a == b {
            return err(
                "observability.audit_log",
                "must not be the same file as access_log",
            );
        }
    }
    if let Some(v) = &f.otlp_endpoint {
        o.otlp_endpoint = Some(parse_otlp("observability.otlp_endpoint", v)?);
    }
    if let Some(v) = f.trace_sample_ratio {
        o.trace_sample_ratio = ratio("observability.trace_sample_ratio", v)?;
    }
    if let Some(v) = f.service_name {
        if v.is_empty() || v.chars().any(char::is_control) {
            return err(
                "observability.service_name",
                "must be non-empty, without control characters",
            );
        }
        o.service_name = v;
    }
    Ok(o)
}

fn parse_otlp(key: &str, v: &str) -> Result<OtlpEndpoint, ConfigError> {
    let Some(rest) = v.strip_prefix("http://") else {
        return err(
            key,
            format!("{v:?}: only http:// endpoints are supported (OTLP/HTTP, e.g. \"http://127.0.0.1:4318/v1/traces\")"),
        );
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/v1/traces"),
    };
    let with_port = if authority
        .rsplit(':')
        .next()
        .is_some_and(|p| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:4318")
    };
    // Resolved once at load: the exporter never does DNS on its own.
    let addr = with_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| ConfigError(format!("{key}: cannot resolve {authority:?}")))?;
    if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return err(
            key,
            "the path must not contain spaces or control characters",
        );
    }
    Ok(OtlpEndpoint {
        url: v.to_string(),
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

pub(crate) fn validate_slos(
    slos: Vec<FileSlo>,
    route_names: &[&str],
) -> Result<Vec<SloConfig>, ConfigError> {
    let mut out: Vec<SloConfig> = Vec::with_capacity(slos.len());
    for (i, s) in slos.into_iter().enumerate() {
        let label = match &s.name {
            Some(n) => format!("slos[{i}] ({n})"),
            None => format!("slos[{i}]"),
        };
        let key = |k: &str| format!("{label}.{k}");
        let name = match s.name {
            Some(n) if !n.trim().is_empty() && !n.chars().any(char::is_control) => n,
            _ => return err(&key("name"), "every SLO needs a non-empty name"),
        };
        if out.iter().any(|o| o.name == name) {
            return err(
                &key("name"),
                "two SLOs have this name; names must be unique",
            );
        }
        for r in &s.routes {
            if !route_names.contains(&r.as_str()) {
                return err(&key("routes"), format!("no route is named {r:?}"));
            }
        }
        let Some(objective) = s.objective else {
            return err(&key("objective"), "missing (e.g. 0.999)");
        };
        if !(objective > 0.0 && objective < 1.0) {
            return err(
                &key("objective"),
                format!("{objective} must be between 0 and 1, exclusive"),
            );
        }
        let latency_threshold = match &s.latency_threshold {
            Some(v) => {
                let d = parse_duration(v).or_else(|e| err(&key("latency_threshold"), e))?;
                if d.is_zero() {
                    return err(&key("latency_threshold"), "must be more than 0");
                }
                Some(d)
            }
            None => None,
        };
        let window = match &s.window {
            Some(v) => parse_duration(v).or_else(|e| err(&key("window"), e))?,
            None => DEFAULT_SLO_WINDOW,
        };
        if !(MIN_SLO_WINDOW..=MAX_SLO_WINDOW).contains(&window) {
            return err(&key("window"), "must be between 1h and 366d");
        }
        out.push(SloConfig {
            name,
            routes: s.routes,
            objective,
            latency_threshold,
            window,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_endpoint_forms() {
        let e = parse_otlp("k", "http://127.0.0.1:4318/v1/traces").unwrap();
        assert_eq!(e.addr.port(), 4318);
        assert_eq!(e.path, "/v1/traces");
        let e = parse_otlp("k", "http://127.0.0.1").unwrap();
        assert_eq!(e.addr.port(), 4318);
        assert_eq!(e.path, "/v1/traces");
        assert!(parse_otlp("k", "https://127.0.0.1:4318").is_err());
    }

    #[test]
    fn slo_errors_name_the_key() {
        let bad = |s: FileSlo| validate_slos(vec![s], &["a"]).unwrap_err().0;
        let base = || FileSlo {
            name: Some("x".into()),
            routes: vec![],
            objective: Some(0.99),
            latency_threshold: None,
            window: None,
        };
        let mut s = base();
        s.objective = Some(1.0);
        assert!(bad(s).starts_with("slos[0] (x).objective"));
        let mut s = base();
        s.routes = vec!["nope".into()];
        assert!(bad(s).contains("routes"));
        let mut s = base();
        s.window = Some("5m".into());
        assert!(bad(s).contains("window"));
    }
}
