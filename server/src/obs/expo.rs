//! Rendering merged shard snapshots as Prometheus text exposition 0.0.4
//! or OpenMetrics 1.0 text.
//!
//! The two formats differ in three places this writer handles: a counter's
//! `# TYPE`/`# HELP` name (OpenMetrics names the family without `_total`,
//! 0.0.4 names the sample), the content type, and OpenMetrics' final
//! `# EOF` line. Histogram `le` bounds and float values are written in the
//! canonical form both accept (`1.0`, `+Inf`).

use std::fmt::Write as _;

use shardline_protocol::error::ErrorKind;
use shardline_shard::{HandshakeResult, TimeoutKind};

use crate::obs::metrics::{LatencyHistogram, ShardSnapshot, STATUS_CLASSES};
use crate::obs::slo::{SloReport, BURN_WINDOWS};

pub const CONTENT_TYPE_PROMETHEUS: &str = "text/plain; version=0.0.4; charset=utf-8";
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Histogram bucket upper bounds in seconds (`le`), from 100 µs to 30 s:
/// covers an in-memory answer and a slow upstream within one scale.
const BUCKETS: [(&str, u64); 17] = [
    ("0.0001", 100),
    ("0.00025", 250),
    ("0.0005", 500),
    ("0.001", 1_000),
    ("0.0025", 2_500),
    ("0.005", 5_000),
    ("0.01", 10_000),
    ("0.025", 25_000),
    ("0.05", 50_000),
    ("0.1", 100_000),
    ("0.25", 250_000),
    ("0.5", 500_000),
    ("1.0", 1_000_000),
    ("2.5", 2_500_000),
    ("5.0", 5_000_000),
    ("10.0", 10_000_000),
    ("30.0", 30_000_000),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Prometheus,
    OpenMetrics,
}

impl Format {
    /// OpenMetrics when the scraper lists it in `Accept` (Prometheus does
    /// when its scrape protocols allow it), else text 0.0.4.
    pub(crate) fn from_accept(accept: Option<&[u8]>) -> Format {
        let wants_om = accept.is_some_and(|a| {
            a.windows(b"application/openmetrics-text".len())
                .any(|w| w.eq_ignore_ascii_case(b"application/openmetrics-text"))
        });
        if wants_om {
            Format::OpenMetrics
        } else {
            Format::Prometheus
        }
    }

    pub(crate) fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => CONTENT_TYPE_PROMETHEUS,
            Format::OpenMetrics => CONTENT_TYPE_OPENMETRICS,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct Expo {
    out: String,
    fmt: Format,
    /// Sample name prefix of the current family (with `_total` for counters).
    sample: String,
}

impl Expo {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let (type_name, kind_text) = match kind {
            Kind::Counter => {
                self.sample = format!("{name}_total");
                let n = if self.fmt == Format::OpenMetrics {
                    name.to_string()
                } else {
                    self.sample.clone()
                };
                (n, "counter")
            }
            Kind::Gauge => {
                self.sample = name.to_string();
                (name.to_string(), "gauge")
            }
            Kind::Histogram => {
                self.sample = name.to_string();
                (name.to_string(), "histogram")
            }
        };
        let _ = writeln!(self.out, "# HELP {type_name} {help}");
        let _ = writeln!(self.out, "# TYPE {type_name} {kind_text}");
    }

    fn labels(&mut self, labels: &[(&str, &str)]) {
        if labels.is_empty() {
            return;
        }
        self.out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push_str(k);
            self.out.push_str("=\"");
            escape_label(&mut self.out, v);
            self.out.push('"');
        }
        self.out.push('}');
    }

    fn int(&mut self, labels: &[(&str, &str)], v: u64) {
        let name = std::mem::take(&mut self.sample);
        self.out.push_str(&name);
        self.labels(labels);
        let _ = writeln!(self.out, " {v}");
        self.sample = name;
    }

    fn float(&mut self, labels: &[(&str, &str)], v: f64) {
        let name = std::mem::take(&mut self.sample);
        self.out.push_str(&name);
        self.labels(labels);
        self.out.push(' ');
        push_float(&mut self.out, v);
        self.out.push('\n');
        self.sample = name;
    }

    fn histogram(&mut self, labels: &[(&str, &str)], h: &LatencyHistogram) {
        let name = std::mem::take(&mut self.sample);
        let mut counts = [0u64; BUCKETS.len()];
        for v in h.hist.iter_recorded() {
            let value = h.hist.median_equivalent(v.value_iterated_to());
            let n = v.count_since_last_iteration();
            if let Some(i) = BUCKETS.iter().position(|&(_, us)| value <= us) {
                counts[i] += n;
            }
        }
        let mut cumulative = 0u64;
        let mut with_le: Vec<(&str, &str)> = labels.to_vec();
        with_le.push(("le", ""));
        let last = with_le.len() - 1;
        for (i, (le, _)) in BUCKETS.iter().enumerate() {
            cumulative += counts[i];
            with_le[last].1 = le;
            self.out.push_str(&name);
            self.out.push_str("_bucket");
            self.labels(&with_le);
            let _ = writeln!(self.out, " {cumulative}");
        }
        with_le[last].1 = "+Inf";
        self.out.push_str(&name);
        self.out.push_str("_bucket");
        self.labels(&with_le);
        let _ = writeln!(self.out, " {}", h.count());
        self.out.push_str(&name);
        self.out.push_str("_sum");
        self.labels(labels);
        self.out.push(' ');
        push_float(&mut self.out, h.sum_micros as f64 / 1e6);
        self.out.push('\n');
        self.out.push_str(&name);
        self.out.push_str("_count");
        self.labels(labels);
        let _ = writeln!(self.out, " {}", h.count());
        self.sample = name;
    }
}

fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        let _ = write!(out, "{v:.1}");
    } else {
        let _ = write!(out, "{v}");
    }
}

/// Renders every shard's snapshot (plus the SLO reports computed from
/// them) in `fmt`.
pub(crate) fn render(snaps: &[ShardSnapshot], slos: &[SloReport], fmt: Format) -> String {
    let mut e = Expo {
        out: String::with_capacity(16 * 1024),
        fmt,
        sample: String::new(),
    };

    // ---- per route, merged over shards ----
    let mut routes: Vec<(String, [u64; 5], LatencyHistogram)> = Vec::new();
    for s in snaps {
        for r in &s.routes {
            match routes.iter_mut().find(|(n, _, _)| *n == r.name) {
                Some((_, classes, hist)) => {
                    for (c, n) in classes.iter_mut().zip(r.by_class) {
                        *c += n;
                    }
                    hist.add(&r.latency);
                }
                None => routes.push((r.name.clone(), r.by_class, r.latency.clone())),
            }
        }
    }
    e.family(
        "shardline_http_requests",
        Kind::Counter,
        "Requests answered, by route and status class.",
    );
    for (name, classes, _) in &routes {
        for (i, class) in STATUS_CLASSES.iter().enumerate() {
            e.int(&[("route", name), ("class", class)], classes[i]);
        }
    }
    let mut rejections: Vec<(&str, &str, u64)> = Vec::new();
    for s in snaps {
        for r in &s.routes {
            for (reason, n) in &r.rejections {
                match rejections
                    .iter_mut()
                    .find(|(route, why, _)| *route == r.name && why == reason)
                {
                    Some((_, _, c)) => *c += n,
                    None => rejections.push((&r.name, reason, *n)),
                }
            }
        }
    }
    e.family(
        "shardline_policy_rejections",
        Kind::Counter,
        "Requests a route's policies refused, by reason (the problem type: unauthenticated, invalid-credentials, insufficient-scope, client-not-allowed, rate-limited, quota-exceeded, validation, idempotency, CORS).",
    );
    for (route, reason, n) in &rejections {
        e.int(&[("route", route), ("reason", reason)], *n);
    }
    e.family(
        "shardline_http_request_duration_seconds",
        Kind::Histogram,
        "Time from the read that completed a request to its response, by route (HDR histograms merged over shards).",
    );
    for (name, _, hist) in &routes {
        e.histogram(&[("route", name)], hist);
    }

    // ---- per shard ----
    let shard_labels: Vec<String> = snaps.iter().map(|s| s.shard.to_string()).collect();
    let per_shard =
        |e: &mut Expo, name: &str, kind: Kind, help: &str, f: &dyn Fn(&ShardSnapshot) -> u64| {
            e.family(name, kind, help);
            for (s, label) in snaps.iter().zip(&shard_labels) {
                e.int(&[("shard", label)], f(s));
            }
        };
    per_shard(
        &mut e,
        "shardline_connections_accepted",
        Kind::Counter,
        "Client connections accepted.",
        &|s| s.counters.accepted,
    );
    per_shard(&mut e, "shardline_connections_refused", Kind::Counter,
        "Client connections lost because accept failed (file descriptors, memory); at the connection cap clients wait in the listen backlog instead.",
        &|s| s.counters.refused);
    per_shard(
        &mut e,
        "shardline_connections_open",
        Kind::Gauge,
        "Client connections open now.",
        &|s| s.counters.open,
    );
    per_shard(
        &mut e,
        "shardline_in_flight_requests",
        Kind::Gauge,
        "Connections with a request being read or served now.",
        &|s| s.counters.in_flight,
    );
    per_shard(
        &mut e,
        "shardline_shard_requests",
        Kind::Counter,
        "Requests answered by this shard (traffic and admin listeners).",
        &|s| s.counters.requests,
    );
    per_shard(
        &mut e,
        "shardline_received_bytes",
        Kind::Counter,
        "Bytes read from clients.",
        &|s| s.counters.bytes_in,
    );
    per_shard(
        &mut e,
        "shardline_sent_bytes",
        Kind::Counter,
        "Bytes written to clients.",
        &|s| s.counters.bytes_out,
    );
    e.family(
        "shardline_parse_errors",
        Kind::Counter,
        "Requests refused for framing errors, by kind.",
    );
    for (s, label) in snaps.iter().zip(&shard_labels) {
        for (i, kind) in ErrorKind::ALL.iter().enumerate() {
            let n = s.counters.parse_errors.get(i).copied().unwrap_or(0);
            e.int(&[("shard", label), ("kind", kind.label())], n);
        }
    }
    e.family(
        "shardline_timeouts",
        Kind::Counter,
        "Read deadlines that fired, by kind (header and body answer 408; idle closes quietly).",
    );
    for (s, label) in snaps.iter().zip(&shard_labels) {
        for (i, kind) in TimeoutKind::ALL.iter().enumerate() {
            e.int(
                &[("shard", label), ("kind", kind.label())],
                s.counters.timeouts[i],
            );
        }
    }

    render_tls(&mut e, snaps, &shard_labels);
    render_upstreams(&mut e, snaps, &shard_labels);
    render_caches(&mut e, snaps);

    per_shard(
        &mut e,
        "shardline_access_log_lines",
        Kind::Counter,
        "Access log lines queued for writing.",
        &|s| s.access_log.lines,
    );
    per_shard(
        &mut e,
        "shardline_access_log_dropped",
        Kind::Counter,
        "Access log lines dropped because the writer fell behind (never blocks a shard).",
        &|s| s.access_log.dropped,
    );
    per_shard(
        &mut e,
        "shardline_audit_log_lines",
        Kind::Counter,
        "Audit log lines queued for writing.",
        &|s| s.audit_log.lines,
    );
    per_shard(
        &mut e,
        "shardline_audit_log_dropped",
        Kind::Counter,
        "Audit log lines dropped because the writer fell behind.",
        &|s| s.audit_log.dropped,
    );

    per_shard(
        &mut e,
        "shardline_trace_spans_exported",
        Kind::Counter,
        "Spans accepted by the OTLP collector.",
        &|s| s.spans_exported,
    );
    per_shard(
        &mut e,
        "shardline_trace_spans_dropped",
        Kind::Counter,
        "Spans dropped (queue full or export failed).",
        &|s| s.spans_dropped,
    );

    // Reloads are run by shard 0; its counts are the process's.
    let first = snaps.first();
    e.family(
        "shardline_config_reloads",
        Kind::Counter,
        "Config reloads, by result.",
    );
    e.int(&[("result", "ok")], first.map_or(0, |s| s.reloads_ok));
    e.int(
        &[("result", "error")],
        first.map_or(0, |s| s.reloads_failed),
    );
    e.family(
        "shardline_config_generation",
        Kind::Gauge,
        "Config generation each shard runs (starts at 1; +1 per successful reload).",
    );
    for (s, label) in snaps.iter().zip(&shard_labels) {
        e.int(&[("shard", label)], s.config_generation);
    }

    render_slos(&mut e, slos);

    if fmt == Format::OpenMetrics {
        e.out.push_str("# EOF\n");
    }
    e.out
}

/// The HTTPS listener's families, only when there is one.
fn render_tls(e: &mut Expo, snaps: &[ShardSnapshot], shard_labels: &[String]) {
    // Every shard reports the same certificates (the process's); take one.
    let Some(certs) = snaps.first().and_then(|s| s.tls_certificates.as_ref()) else {
        return;
    };
    e.family(
        "shardline_tls_handshakes",
        Kind::Counter,
        "TLS handshakes on the HTTPS listener, by how they ended.",
    );
    for (s, label) in snaps.iter().zip(shard_labels) {
        for (i, result) in HandshakeResult::ALL.iter().enumerate() {
            e.int(
                &[("shard", label), ("result", result.label())],
                s.counters.tls_handshakes[i],
            );
        }
    }
    e.family(
        "shardline_tls_certificate_not_after_seconds",
        Kind::Gauge,
        "When each certificate the HTTPS listener serves expires (its leaf's notAfter, Unix time).",
    );
    for c in certs {
        if let Some(v) = c.validity {
            e.int(
                &[("file", &c.file)],
                u64::try_from(v.not_after).unwrap_or(0),
            );
        }
    }
}

fn render_upstreams(e: &mut Expo, snaps: &[ShardSnapshot], shard_labels: &[String]) {
    // Merged per (upstream, target): counters summed, histograms added.
    struct Merged {
        up: String,
        target: String,
        requests: u64,
        failures: u64,
        in_flight: u64,
        opened_breaker: u64,
        pool_idle: u64,
        pool_opened: u64,
        pool_reused: u64,
        latency: LatencyHistogram,
    }
    let mut merged: Vec<Merged> = Vec::new();
    for s in snaps {
        for u in &s.upstreams {
            for t in &u.targets {
                let m = match merged
                    .iter_mut()
                    .position(|m| m.up == u.name && m.target == t.name)
                {
                    Some(i) => &mut merged[i],
                    None => {
                        merged.push(Merged {
                            up: u.name.clone(),
                            target: t.name.clone(),
                            requests: 0,
                            failures: 0,
                            in_flight: 0,
                            opened_breaker: 0,
                            pool_idle: 0,
                            pool_opened: 0,
                            pool_reused: 0,
                            latency: LatencyHistogram::new(),
                        });
                        let last = merged.len() - 1;
                        &mut merged[last]
                    }
                };
                m.requests += t.requests;
                m.failures += t.failures;
                m.in_flight += t.in_flight;
                m.opened_breaker += t.breaker_opened;
                m.pool_idle += t.pool_idle;
                m.pool_opened += t.pool_opened;
                m.pool_reused += t.pool_reused;
                m.latency.add(&t.latency);
            }
        }
    }
    type Get = fn(&Merged) -> u64;
    let families: [(&str, Kind, &str, Get); 7] = [
        (
            "shardline_upstream_requests",
            Kind::Counter,
            "Tries sent to an upstream target (retries count again).",
            |m| m.requests,
        ),
        (
            "shardline_upstream_failures",
            Kind::Counter,
            "Tries that failed (connect, I/O, timeout, 502-504).",
            |m| m.failures,
        ),
        (
            "shardline_upstream_in_flight",
            Kind::Gauge,
            "Tries in flight to a target now.",
            |m| m.in_flight,
        ),
        (
            "shardline_upstream_breaker_opened",
            Kind::Counter,
            "Times a target's circuit breaker opened (summed over shards).",
            |m| m.opened_breaker,
        ),
        (
            "shardline_upstream_pool_idle_connections",
            Kind::Gauge,
            "Idle keep-alive connections pooled to a target.",
            |m| m.pool_idle,
        ),
        (
            "shardline_upstream_connections_opened",
            Kind::Counter,
            "Connections opened to a target.",
            |m| m.pool_opened,
        ),
        (
            "shardline_upstream_connections_reused",
            Kind::Counter,
            "Pooled connections reused for a try.",
            |m| m.pool_reused,
        ),
    ];
    for (name, kind, help, get) in families {
        e.family(name, kind, help);
        for m in &merged {
            e.int(&[("upstream", &m.up), ("target", &m.target)], get(m));
        }
    }
    e.family(
        "shardline_upstream_request_duration_seconds",
        Kind::Histogram,
        "Duration of each try to a target, connect to response head (merged over shards).",
    );
    for m in &merged {
        e.histogram(&[("upstream", &m.up), ("target", &m.target)], &m.latency);
    }
    // Per shard: each shard has its own breaker, health view and budget.
    e.family(
        "shardline_upstream_breaker_state",
        Kind::Gauge,
        "Circuit breaker state per shard: 0 closed, 1 open, 2 half-open.",
    );
    for (s, label) in snaps.iter().zip(shard_labels) {
        for u in &s.upstreams {
            for t in &u.targets {
                e.int(
                    &[("upstream", &u.name), ("target", &t.name), ("shard", label)],
                    u64::from(t.breaker_state),
                );
            }
        }
    }
    e.family(
        "shardline_upstream_healthy",
        Kind::Gauge,
        "Active health check verdict per shard (1 healthy or no check configured).",
    );
    for (s, label) in snaps.iter().zip(shard_labels) {
        for u in &s.upstreams {
            for t in &u.targets {
                e.int(
                    &[("upstream", &u.name), ("target", &t.name), ("shard", label)],
                    u64::from(t.healthy),
                );
            }
        }
    }
    e.family(
        "shardline_upstream_retry_budget_left",
        Kind::Gauge,
        "Retries the retry budget allows now, per shard.",
    );
    for (s, label) in snaps.iter().zip(shard_labels) {
        for u in &s.upstreams {
            e.int(
                &[("upstream", &u.name), ("shard", label)],
                u.retry_budget_left,
            );
        }
    }
}

fn render_caches(e: &mut Expo, snaps: &[ShardSnapshot]) {
    let mut merged: Vec<(String, [u64; 7])> = Vec::new();
    for s in snaps {
        for c in &s.caches {
            let vals = [
                c.hits,
                c.misses,
                c.stale_served,
                c.evictions,
                c.stores,
                c.entries,
                c.bytes,
            ];
            match merged.iter_mut().find(|(r, _)| *r == c.route) {
                Some((_, acc)) => {
                    for (a, v) in acc.iter_mut().zip(vals) {
                        *a += v;
                    }
                }
                None => merged.push((c.route.clone(), vals)),
            }
        }
    }
    let families: [(&str, Kind, &str); 7] = [
        (
            "shardline_cache_hits",
            Kind::Counter,
            "Requests answered from a route's response cache.",
        ),
        (
            "shardline_cache_misses",
            Kind::Counter,
            "Cacheable requests that found nothing fresh.",
        ),
        (
            "shardline_cache_stale_served",
            Kind::Counter,
            "Stale responses served because the upstream failed.",
        ),
        (
            "shardline_cache_evictions",
            Kind::Counter,
            "Entries dropped to make room.",
        ),
        ("shardline_cache_stores", Kind::Counter, "Responses stored."),
        (
            "shardline_cache_entries",
            Kind::Gauge,
            "Entries held now (summed over shards).",
        ),
        (
            "shardline_cache_bytes",
            Kind::Gauge,
            "Bytes held now (summed over shards).",
        ),
    ];
    for (i, (name, kind, help)) in families.iter().enumerate() {
        e.family(name, *kind, help);
        for (route, vals) in &merged {
            e.int(&[("route", route)], vals[i]);
        }
    }
}

fn render_slos(e: &mut Expo, slos: &[SloReport]) {
    e.family(
        "shardline_slo_events",
        Kind::Counter,
        "Requests counted by an SLO since start.",
    );
    for s in slos {
        e.int(&[("slo", &s.name)], s.total_all_time);
    }
    e.family(
        "shardline_slo_good_events",
        Kind::Counter,
        "Requests that met an SLO (not 5xx, within latency_threshold) since start.",
    );
    for s in slos {
        e.int(&[("slo", &s.name)], s.good_all_time);
    }
    e.family(
        "shardline_slo_objective",
        Kind::Gauge,
        "An SLO's objective (good / total).",
    );
    for s in slos {
        e.float(&[("slo", &s.name)], s.objective);
    }
    e.family(
        "shardline_slo_error_budget_remaining",
        Kind::Gauge,
        "Fraction of the error budget left over the SLO's window (1 = untouched, below 0 = overspent).",
    );
    for s in slos {
        e.float(&[("slo", &s.name)], s.budget_remaining);
    }
    e.family(
        "shardline_slo_burn_rate",
        Kind::Gauge,
        "Error rate over a trailing window divided by the error budget rate (1 = spending exactly the budget).",
    );
    for s in slos {
        for (i, (label, _)) in BURN_WINDOWS.iter().enumerate() {
            e.float(&[("slo", &s.name), ("window", label)], s.burn_rates[i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_are_canonical() {
        let mut s = String::new();
        push_float(&mut s, 1.0);
        s.push(' ');
        push_float(&mut s, 0.25);
        s.push(' ');
        push_float(&mut s, f64::INFINITY);
        s.push(' ');
        push_float(&mut s, f64::NAN);
        assert_eq!(s, "1.0 0.25 +Inf NaN");
    }

    #[test]
    fn labels_are_escaped() {
        let mut s = String::new();
        escape_label(&mut s, "a\"b\\c\nd");
        assert_eq!(s, "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn accept_header_picks_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some(
                b"application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::from_accept(Some(b"text/plain;version=0.0.4")),
            Format::Prometheus
        );
    }
}
