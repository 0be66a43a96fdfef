//! The two renderings of a `load` run: the human table (default) and one JSON
//! object (`--json`). JSON is written by hand: the shape is small and fixed, and
//! the harness stays free of serialization dependencies.

use std::fmt::Write as _;

use hdrhistogram::Histogram;

use crate::load::{LoadConfig, LoadReport};

/// The quantiles every report gives, with their labels.
const QUANTILES: [(&str, f64); 5] = [
    ("p50", 0.50),
    ("p90", 0.90),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
];

/// Formats a latency in nanoseconds with a unit that keeps 3-4 significant digits.
pub fn format_ns(ns: u64) -> String {
    match ns {
        0..=999 => format!("{ns}ns"),
        1_000..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

/// `http[s]://AUTHORITY[PATH]`: the path only when every request uses it.
fn target_text(cfg: &LoadConfig) -> String {
    let scheme = if cfg.target.tls { "https" } else { "http" };
    match cfg.scenarios.as_slice() {
        [one] => {
            let path = one.label.split(' ').nth(1).unwrap_or("");
            format!("{scheme}://{}{}", cfg.target.authority, path)
        }
        _ => format!("{scheme}://{}", cfg.target.authority),
    }
}

fn quantiles_line(h: &Histogram<u64>, with_max: bool) -> String {
    let mut out = String::new();
    for (label, q) in QUANTILES {
        let _ = write!(out, "{label} {}  ", format_ns(h.value_at_quantile(q)));
    }
    if with_max {
        let _ = write!(out, "max {}", format_ns(h.max()));
    }
    out.trim_end().to_owned()
}

/// The human-readable report printed by `shardline-perf load`.
pub fn format_human(cfg: &LoadConfig, r: &LoadReport) -> String {
    let c = &r.counts;
    let pinned = match &cfg.cpus {
        Some(cpus) => format!(" pinned to CPUs {cpus:?}"),
        None => String::new(),
    };
    let mode = match cfg.rate {
        Some(rate) => format!("open loop at {rate} requests/s"),
        None => format!("closed loop, pipeline {}", cfg.pipeline),
    };
    let busy = if cfg.busy_poll { ", busy poll" } else { "" };
    let warmup = if cfg.warmup.is_zero() {
        String::new()
    } else {
        format!(" after {:.2}s warm-up", cfg.warmup.as_secs_f64())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "target      {} ({})",
        target_text(cfg),
        cfg.target.addr
    );
    let _ = writeln!(
        out,
        "setup       {} connections, {} thread(s){pinned}, {mode}{busy}, {:.2}s{warmup}",
        cfg.connections,
        cfg.threads,
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "requests    {} ({:.1} requests/s)",
        c.responses,
        r.requests_per_second()
    );
    let _ = writeln!(out, "non-2xx     {}", c.non_2xx);
    let _ = writeln!(
        out,
        "errors      {} (connect {}, io {}, protocol {}, closed by server {}); \
         reconnects after Connection: close {}",
        c.errors(),
        c.connect_errors,
        c.io_errors,
        c.protocol_errors,
        c.closed_errors,
        c.reconnects,
    );
    if r.latency_ns.is_empty() {
        out.push_str("latency     no responses\n");
    } else {
        let from = if cfg.rate.is_some() {
            "  (from scheduled send times)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "latency     {}{from}",
            quantiles_line(&r.latency_ns, true)
        );
    }
    if let Some(lag) = r.send_lag_ns.as_ref().filter(|h| !h.is_empty()) {
        let _ = writeln!(
            out,
            "send lag    p50 {}  p99 {}  p99.9 {}  max {}  (sent after the scheduled time)",
            format_ns(lag.value_at_quantile(0.5)),
            format_ns(lag.value_at_quantile(0.99)),
            format_ns(lag.value_at_quantile(0.999)),
            format_ns(lag.max()),
        );
    }
    // A few requests per connection can be due but unsent at the very end just
    // because their predecessor's answer was late; more than 0.1% is falling behind.
    if r.unsent_at_end > (c.responses / 1000).max(cfg.connections as u64) {
        let _ = writeln!(
            out,
            "behind      {} requests due before the end were never sent: the server (or \
             the load generator) did not keep up with {} requests/s",
            r.unsent_at_end,
            cfg.rate.unwrap_or(0)
        );
    }
    if cfg.scenarios.len() > 1 {
        let total_weight: u64 = cfg.scenarios.iter().map(|s| u64::from(s.weight)).sum();
        out.push_str("scenarios   weight    share  requests   non-2xx       p50       p99     p99.9  request\n");
        for (s, st) in cfg.scenarios.iter().zip(&r.scenarios) {
            let share = st.responses as f64 / c.responses.max(1) as f64 * 100.0;
            let q = |q: f64| match &st.latency_ns {
                Some(h) if !h.is_empty() => format_ns(h.value_at_quantile(q)),
                _ => "-".to_owned(),
            };
            let _ = writeln!(
                out,
                "            {:>6} {:>7.2}% {:>9} {:>9} {:>9} {:>9} {:>9}  {}  (weight {:.1}%)",
                s.weight,
                share,
                st.responses,
                st.non_2xx,
                q(0.5),
                q(0.99),
                q(0.999),
                s.label,
                f64::from(s.weight) / total_weight.max(1) as f64 * 100.0,
            );
        }
    }
    if let Some(tls) = &r.tls_session {
        let _ = writeln!(out, "tls         {tls}");
    }
    if let Some(cpu) = r.server_cpu {
        let per_request_ns = cpu.as_nanos() as f64 / c.responses.max(1) as f64;
        let _ = writeln!(
            out,
            "server cpu  {:.3}s ({} per request)",
            cpu.as_secs_f64(),
            format_ns(per_request_ns as u64)
        );
    }
    out
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A finite JSON number with `decimals` places (NaN and infinities become 0).
fn json_f64(x: f64, decimals: usize) -> String {
    let x = if x.is_finite() { x } else { 0.0 };
    format!("{x:.decimals$}")
}

fn json_us(ns: u64) -> String {
    json_f64(ns as f64 / 1e3, 3)
}

/// `{"p50":..,..,"p99.99":..,"max":..}` in microseconds, or `null` when empty.
fn json_quantiles(h: Option<&Histogram<u64>>) -> String {
    let Some(h) = h.filter(|h| !h.is_empty()) else {
        return "null".to_owned();
    };
    let mut out = String::from("{");
    for (label, q) in QUANTILES {
        let _ = write!(out, "\"{label}\":{},", json_us(h.value_at_quantile(q)));
    }
    let _ = write!(out, "\"max\":{}}}", json_us(h.max()));
    out
}

/// The `--json` report: one object on one line.
pub fn format_json(cfg: &LoadConfig, r: &LoadReport) -> String {
    let c = &r.counts;
    let cpus = match &cfg.cpus {
        Some(list) => format!(
            "[{}]",
            list.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => "null".to_owned(),
    };
    let opt_u64 = |v: Option<u64>| v.map_or_else(|| "null".to_owned(), |v| v.to_string());
    let scenarios = cfg
        .scenarios
        .iter()
        .zip(&r.scenarios)
        .map(|(s, st)| {
            let latency = if cfg.scenarios.len() > 1 {
                json_quantiles(st.latency_ns.as_ref())
            } else {
                json_quantiles(Some(&r.latency_ns))
            };
            format!(
                "{{\"label\":{},\"weight\":{},\"requests\":{},\"non_2xx\":{},\"latency_us\":{}}}",
                json_str(&s.label),
                s.weight,
                st.responses,
                st.non_2xx,
                latency
            )
        })
        .collect::<Vec<_>>()
        .join(",");
    let server_cpu = match r.server_cpu {
        Some(cpu) => format!(
            "{{\"seconds\":{},\"per_request_us\":{}}}",
            json_f64(cpu.as_secs_f64(), 6),
            json_f64(cpu.as_secs_f64() * 1e6 / c.responses.max(1) as f64, 4)
        ),
        None => "null".to_owned(),
    };
    let mut out = String::from("{");
    let _ = write!(
        out,
        "\"target\":{},\"addr\":{},",
        json_str(&target_text(cfg)),
        json_str(&cfg.target.addr.to_string())
    );
    let _ = write!(
        out,
        "\"setup\":{{\"mode\":{},\"connections\":{},\"threads\":{},\"cpus\":{cpus},\
         \"pipeline\":{},\"rate\":{},\"warmup_s\":{},\"seed\":{},\"busy_poll\":{}}},",
        json_str(if cfg.rate.is_some() { "open" } else { "closed" }),
        cfg.connections,
        cfg.threads,
        cfg.pipeline,
        opt_u64(cfg.rate),
        json_f64(cfg.warmup.as_secs_f64(), 3),
        cfg.seed,
        cfg.busy_poll,
    );
    let _ = write!(
        out,
        "\"duration_s\":{},\"requests\":{},\"rps\":{},\"non_2xx\":{},",
        json_f64(r.elapsed.as_secs_f64(), 3),
        c.responses,
        json_f64(r.requests_per_second(), 1),
        c.non_2xx
    );
    let _ = write!(
        out,
        "\"errors\":{{\"total\":{},\"connect\":{},\"io\":{},\"protocol\":{},\"closed\":{}}},\
         \"reconnects\":{},",
        c.errors(),
        c.connect_errors,
        c.io_errors,
        c.protocol_errors,
        c.closed_errors,
        c.reconnects
    );
    let _ = write!(
        out,
        "\"latency_us\":{},\"send_lag_us\":{},\"unsent_at_end\":{},",
        json_quantiles(Some(&r.latency_ns)),
        json_quantiles(r.send_lag_ns.as_ref()),
        opt_u64(cfg.rate.map(|_| r.unsent_at_end))
    );
    let _ = write!(
        out,
        "\"scenarios\":[{scenarios}],\"server_cpu\":{server_cpu},\"tls\":{}}}",
        r.tls_session
            .as_deref()
            .map_or_else(|| "null".to_owned(), json_str)
    );
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::{self, tests::config, tests::spawn_server};
    use crate::request::{parse_scenario, render};
    use std::time::Duration;

    #[test]
    fn formats_latencies() {
        assert_eq!(format_ns(850), "850ns");
        assert_eq!(format_ns(45_150), "45.1us");
        assert_eq!(format_ns(12_340_000), "12.34ms");
        assert_eq!(format_ns(1_500_000_000), "1.500s");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}é"), "\"a\\\"b\\\\c\\n\\u0001é\"");
        assert_eq!(json_f64(f64::NAN, 2), "0.00");
    }

    fn as_f64(v: &serde_json::Value) -> f64 {
        v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
    }

    #[test]
    fn json_shape_closed_loop() {
        let addr = spawn_server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        let cfg = config(addr, 2);
        let report = load::run(&cfg).expect("run");
        let text = format_json(&cfg, &report);
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(v["target"], format!("http://{addr}/plaintext"));
        assert_eq!(v["setup"]["mode"], "closed");
        assert_eq!(v["setup"]["pipeline"], 2);
        assert_eq!(v["setup"]["connections"], 4);
        assert!(v["setup"]["rate"].is_null());
        assert!(v["setup"]["cpus"].is_null());
        assert_eq!(v["setup"]["busy_poll"], false);
        assert_eq!(v["requests"].as_u64(), Some(report.counts.responses));
        assert!(as_f64(&v["rps"]) > 0.0);
        assert!(as_f64(&v["duration_s"]) > 0.2);
        assert_eq!(v["non_2xx"], 0);
        for kind in ["total", "connect", "io", "protocol", "closed"] {
            assert_eq!(v["errors"][kind], 0, "{kind}");
        }
        let lat = &v["latency_us"];
        let keys = ["p50", "p90", "p99", "p99.9", "p99.99", "max"];
        let values: Vec<f64> = keys.iter().map(|k| as_f64(&lat[k])).collect();
        assert!(values.windows(2).all(|w| w[0] <= w[1]), "{lat}");
        assert!(values[0] > 0.0);
        assert!(v["send_lag_us"].is_null());
        assert!(v["unsent_at_end"].is_null());
        assert_eq!(v["scenarios"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["scenarios"][0]["label"], "GET /plaintext");
        assert!(as_f64(&v["server_cpu"]["seconds"]) >= 0.0);
        assert!(as_f64(&v["server_cpu"]["per_request_us"]) >= 0.0);
    }

    #[test]
    fn json_and_table_open_loop_with_scenarios() {
        let addr = spawn_server(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let mut cfg = config(addr, 1);
        cfg.rate = Some(500);
        cfg.cpus = Some(vec![0]);
        cfg.server_pid = None;
        cfg.warmup = Duration::from_millis(50);
        cfg.scenarios = ["1 GET /a", "1 DELETE /b?x=\"y\""]
            .iter()
            .map(|s| render(&parse_scenario(s, None).expect("scenario"), "h", &[]))
            .collect();
        let report = load::run(&cfg).expect("run");
        let v: serde_json::Value =
            serde_json::from_str(&format_json(&cfg, &report)).expect("valid JSON");
        assert_eq!(v["target"], format!("http://{addr}"));
        assert_eq!(v["setup"]["mode"], "open");
        assert_eq!(v["setup"]["rate"], 500);
        assert_eq!(v["setup"]["cpus"], serde_json::json!([0]));
        assert!(as_f64(&v["setup"]["warmup_s"]) > 0.0);
        assert_eq!(v["non_2xx"], v["requests"]);
        assert!(v["send_lag_us"]["p99"].is_number());
        assert!(v["unsent_at_end"].is_u64());
        assert!(v["server_cpu"].is_null());
        let scenarios = v["scenarios"].as_array().expect("array");
        assert_eq!(scenarios[1]["label"], "DELETE /b?x=\"y\"");
        let sum: u64 = scenarios
            .iter()
            .map(|s| s["requests"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(v["requests"].as_u64(), Some(sum));

        let table = format_human(&cfg, &report);
        for needle in [
            "open loop at 500 requests/s",
            "p99.99",
            "send lag",
            "DELETE /b",
            "warm-up",
        ] {
            assert!(table.contains(needle), "{needle} missing from\n{table}");
        }
    }
}
