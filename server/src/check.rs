//! `shardline check`: the effective configuration (file, defaults and
//! command-line overrides merged and validated) printed as TOML that
//! shardline itself accepts, so it can be diffed, reviewed and reused.

use std::fmt::Write as _;
use std::time::Duration;

use crate::config::{Action, Config};
use crate::config_gateway::{Balance, HostMode};
use crate::config_obs::LogTarget;
use crate::config_tls::TlsVersion;
use crate::units::format_size;

/// TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A duration in the largest unit that represents it exactly.
fn dur(d: Duration) -> String {
    let us = d.as_micros();
    for (unit, per) in [
        ("d", 86_400_000_000u128),
        ("h", 3_600_000_000),
        ("m", 60_000_000),
        ("s", 1_000_000),
        ("ms", 1_000),
    ] {
        if us >= per && us % per == 0 {
            return q(&format!("{}{unit}", us / per));
        }
    }
    q(&format!("{us}us"))
}

fn size(n: u64) -> String {
    let s = format_size(n);
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s
    } else {
        q(&s)
    }
}

fn log_target(t: &LogTarget) -> String {
    q(&t.describe())
}

/// The effective config as TOML, with what `effective_toml` does not
/// render itself carried over from the config file's text: `[auth.*]`,
/// route policies (`auth`, `scopes`, `rate_limit`, `quota`, `validate`,
/// `idempotency`, `cors`, `request_id`), an upstream's `tls`, and any other
/// key the renderer has no line for. Those are validated by the load that
/// produced `c`; copying them as written keeps the printed file complete:
/// a server started from it behaves as one started from the original.
pub fn effective_toml_from(c: &Config, source: Option<&str>) -> String {
    let rendered = effective_toml(c);
    let Some(source) = source else {
        return rendered;
    };
    let (Ok(mut out), Ok(input)) = (
        rendered.parse::<toml::Table>(),
        source.parse::<toml::Table>(),
    ) else {
        return rendered;
    };
    carry_over(&mut out, &input);
    let body = toml::to_string(&out).unwrap_or(rendered);
    format!("# effective configuration (defaults and overrides applied)\n{body}")
}

/// Copies into `out` every key of `input` that `out` lacks, table by table
/// and array entry by array entry (routes and upstreams print in file
/// order). `method` is skipped: it prints as `methods`.
fn carry_over(out: &mut toml::Table, input: &toml::Table) {
    for (k, v) in input {
        if k == "method" {
            continue;
        }
        match (out.get_mut(k), v) {
            (None, v) => {
                out.insert(k.clone(), v.clone());
            }
            (Some(toml::Value::Table(o)), toml::Value::Table(i)) => carry_over(o, i),
            (Some(toml::Value::Array(o)), toml::Value::Array(i)) => {
                for (o, i) in o.iter_mut().zip(i) {
                    if let (toml::Value::Table(o), toml::Value::Table(i)) = (o, i) {
                        carry_over(o, i);
                    }
                }
            }
            _ => {}
        }
    }
}

/// The effective config as TOML.
pub fn effective_toml(c: &Config) -> String {
    let mut o = String::new();
    let s = &c.server;
    let _ = writeln!(
        o,
        "# effective configuration (defaults and overrides applied)"
    );
    let _ = writeln!(o, "[server]");
    let _ = writeln!(o, "listen = {}", q(&s.listen.to_string()));
    let _ = writeln!(
        o,
        "admin_listen = {}",
        q(&s.admin_listen
            .map_or_else(|| "off".to_string(), |a| a.to_string()))
    );
    let _ = writeln!(o, "shards = {}", s.shards);
    if let Some(cpus) = &s.cpus {
        let list: Vec<String> = cpus.iter().map(usize::to_string).collect();
        let _ = writeln!(o, "cpus = {}", q(&list.join(",")));
    }
    let _ = writeln!(o, "io_memory = {}", size(s.io_memory));
    let _ = writeln!(o, "read_buffer = {}", size(s.read_buffer));
    let _ = writeln!(
        o,
        "max_connections_per_shard = {}",
        s.max_connections_per_shard
    );
    let _ = writeln!(o, "header_read_timeout = {}", dur(s.header_read_timeout));
    let _ = writeln!(o, "idle_timeout = {}", dur(s.idle_timeout));
    let _ = writeln!(o, "max_header_bytes = {}", size(s.max_header_bytes));
    let _ = writeln!(o, "max_body_bytes = {}", size(s.max_body_bytes));
    let _ = writeln!(o, "data_dir = {}", q(&s.data_dir.display().to_string()));
    let _ = writeln!(o, "drain_timeout = {}", dur(s.drain_timeout));
    let _ = writeln!(o, "spin_before_park = {}", dur(s.spin_before_park));
    let _ = writeln!(o, "preempt_timer = {}", dur(s.preempt_timer));
    let _ = writeln!(o, "ring_depth = {}", s.ring_depth);
    let _ = writeln!(o, "read_yields = {}", s.read_yields);
    let _ = writeln!(o, "readiness = \"{}\"", s.readiness.name());

    if let Some(t) = &s.tls {
        let _ = writeln!(o, "\n[server.tls]");
        let _ = writeln!(o, "listen = {}", q(&t.listen.to_string()));
        let _ = writeln!(
            o,
            "cert = {}",
            q(&t.default_cert.cert.display().to_string())
        );
        let _ = writeln!(o, "key = {}", q(&t.default_cert.key.display().to_string()));
        let _ = writeln!(o, "handshake_timeout = {}", dur(t.handshake_timeout));
        let _ = writeln!(o, "ticket_key_rotation = {}", dur(t.ticket_key_rotation));
        let v = match t.min_version {
            TlsVersion::Tls12 => "1.2",
            TlsVersion::Tls13 => "1.3",
        };
        let _ = writeln!(o, "min_version = {}", q(v));
        let _ = writeln!(o, "require_ems = {}", t.require_ems);
        if let Some(ca) = &t.client_auth {
            let _ = writeln!(
                o,
                "client_auth = {{ ca = {}, required = {} }}",
                q(&ca.ca.display().to_string()),
                ca.required
            );
        }
        let sni: Vec<String> = t
            .sni
            .iter()
            .map(|c| {
                let names = c.names.as_ref().map_or_else(String::new, |n| {
                    let list: Vec<String> = n.iter().map(|x| q(x)).collect();
                    format!(", names = [{}]", list.join(", "))
                });
                format!(
                    "{{ cert = {}, key = {}{names} }}",
                    q(&c.paths.cert.display().to_string()),
                    q(&c.paths.key.display().to_string())
                )
            })
            .collect();
        if !sni.is_empty() {
            let _ = writeln!(o, "sni = [{}]", sni.join(", "));
        }
    }

    for u in &c.upstreams {
        let _ = writeln!(o, "\n[[upstreams]]");
        let _ = writeln!(o, "name = {}", q(&u.name));
        let targets: Vec<String> = u
            .targets
            .iter()
            .map(|t| {
                // The scheme is what makes a target TLS.
                let addr = if t.tls.is_some() {
                    format!("https://{}", t.name)
                } else {
                    t.name.clone()
                };
                format!("{{ addr = {}, weight = {} }}", q(&addr), t.weight)
            })
            .collect();
        let _ = writeln!(o, "targets = [{}]", targets.join(", "));
        let balance = match u.balance {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequests => "least_requests",
            Balance::P2c => "p2c",
        };
        let _ = writeln!(o, "balance = {}", q(balance));
        let _ = writeln!(o, "connect_timeout = {}", dur(u.connect_timeout));
        let _ = writeln!(o, "request_timeout = {}", dur(u.request_timeout));
        let _ = writeln!(o, "idle_timeout = {}", dur(u.idle_timeout));
        let _ = writeln!(o, "pool_size_per_shard = {}", u.pool_size_per_shard);
        let host = match &u.host {
            HostMode::Preserve => "preserve".to_string(),
            HostMode::Target => "target".to_string(),
            HostMode::Literal(h) => h.clone(),
        };
        let _ = writeln!(o, "host = {}", q(&host));
        let r = &u.retry;
        let _ = writeln!(
            o,
            "retry = {{ attempts = {}, backoff = {}, max_backoff = {}, budget_percent = {}, budget_window = {} }}",
            r.attempts,
            dur(r.backoff),
            dur(r.max_backoff),
            r.budget_percent,
            dur(r.budget_window)
        );
        let b = &u.breaker;
        let rate = b
            .failure_rate
            .map_or_else(String::new, |f| format!(", failure_rate = {f:?}"));
        let _ = writeln!(
            o,
            "circuit_breaker = {{ consecutive_failures = {}, open_for = {}{rate}, window = {}, min_requests = {} }}",
            b.consecutive_failures,
            dur(b.open_for),
            dur(b.window),
            b.min_requests
        );
        if let Some(h) = &u.health_check {
            let _ = writeln!(
                o,
                "health_check = {{ path = {}, interval = {}, timeout = {}, healthy = {}, unhealthy = {} }}",
                q(&h.path),
                dur(h.interval),
                dur(h.timeout),
                h.healthy,
                h.unhealthy
            );
        }
    }

    for r in &c.routes {
        let _ = writeln!(o, "\n[[routes]]");
        let _ = writeln!(o, "name = {}", q(&r.name));
        if let Some(ms) = &r.methods {
            let list: Vec<String> = ms.iter().map(|m| q(m)).collect();
            let _ = writeln!(o, "methods = [{}]", list.join(", "));
        }
        let _ = writeln!(o, "path = {}", q(&r.path));
        match &r.action {
            Action::Respond(resp) => {
                let _ = write!(
                    o,
                    "respond = {{ status = {}, body = {}",
                    resp.status,
                    q(&resp.body)
                );
                if let Some(ct) = &resp.content_type {
                    let _ = write!(o, ", content_type = {}", q(ct));
                }
                if !resp.headers.is_empty() {
                    let hs: Vec<String> = resp
                        .headers
                        .iter()
                        .map(|(n, v)| format!("{} = {}", q(n), q(v)))
                        .collect();
                    let _ = write!(o, ", headers = {{ {} }}", hs.join(", "));
                }
                let _ = writeln!(o, " }}");
            }
            Action::Handler(h) => {
                let _ = writeln!(o, "handler = {}", q(h));
            }
            Action::Upstream(p) => {
                let _ = writeln!(o, "upstream = {}", q(&c.upstreams[p.upstream].name));
                if let Some(sp) = &p.strip_prefix {
                    let _ = writeln!(o, "strip_prefix = {}", q(sp));
                }
                if let Some(rw) = &p.rewrite {
                    let _ = writeln!(o, "rewrite = {}", q(rw));
                }
                if let Some(t) = p.timeout {
                    let _ = writeln!(o, "timeout = {}", dur(t));
                }
                if let Some(cache) = &p.cache {
                    let _ = writeln!(
                        o,
                        "cache = {{ ttl = {}, max_entries = {}, max_bytes = {}, max_entry_bytes = {}, stale_if_error = {} }}",
                        dur(cache.ttl),
                        cache.max_entries,
                        size(cache.max_bytes),
                        size(cache.max_entry_bytes),
                        dur(cache.stale_if_error)
                    );
                }
                if let Some(m) = r.max_body_bytes {
                    let _ = writeln!(o, "max_body_bytes = {}", size(m));
                }
            }
            Action::Aggregate(parts) => {
                let list: Vec<String> = parts
                    .iter()
                    .map(|p| {
                        format!(
                            "{{ name = {}, upstream = {}, path = {}, timeout = {} }}",
                            q(&p.name),
                            q(&c.upstreams[p.upstream].name),
                            q(&p.path),
                            dur(p.timeout)
                        )
                    })
                    .collect();
                let _ = writeln!(o, "aggregate = [{}]", list.join(", "));
            }
        }
        if let Some(sample) = r.access_log_sample {
            let _ = writeln!(o, "access_log_sample = {sample:?}");
        }
    }

    for s in &c.slos {
        let _ = writeln!(o, "\n[[slos]]");
        let _ = writeln!(o, "name = {}", q(&s.name));
        let routes: Vec<String> = s.routes.iter().map(|r| q(r)).collect();
        let _ = writeln!(o, "routes = [{}]", routes.join(", "));
        let _ = writeln!(o, "objective = {:?}", s.objective);
        if let Some(t) = s.latency_threshold {
            let _ = writeln!(o, "latency_threshold = {}", dur(t));
        }
        let _ = writeln!(o, "window = {}", dur(s.window));
    }

    let ob = &c.observability;
    let _ = writeln!(o, "\n[observability]");
    let _ = writeln!(o, "access_log = {}", log_target(&ob.access_log));
    let _ = writeln!(o, "access_log_sample = {:?}", ob.access_log_sample);
    let _ = writeln!(o, "audit_log = {}", log_target(&ob.audit_log));
    if let Some(ep) = &ob.otlp_endpoint {
        let _ = writeln!(o, "otlp_endpoint = {}", q(&ep.url));
    }
    let _ = writeln!(o, "trace_sample_ratio = {:?}", ob.trace_sample_ratio);
    let _ = writeln!(o, "service_name = {}", q(&ob.service_name));
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The printed config loads back to the same effective config.
    #[test]
    fn output_round_trips() {
        let text = format!(
            "{}\n{}",
            include_str!("../../shardline.example.toml"),
            r#"
[[upstreams]]
name = "users"
targets = ["127.0.0.1:9000", { addr = "127.0.0.1:9001", weight = 3 }]
balance = "p2c"
retry = { attempts = 2, backoff = "25ms" }
circuit_breaker = { consecutive_failures = 5, open_for = "10s", failure_rate = 0.5 }
health_check = { path = "/healthz", interval = "2s" }

[[routes]]
name = "get-user-proxied"
method = "GET"
path = "/v2/users/{id}"
upstream = "users"
strip_prefix = "/v2"
timeout = "1500ms"
cache = { ttl = "30s" }
access_log_sample = 0.25

[[routes]]
name = "both"
path = "/both/{id}"
aggregate = [ { name = "u", upstream = "users", path = "/users/{id}" } ]

[[slos]]
name = "api"
routes = ["get-user-proxied"]
objective = 0.999
latency_threshold = "200ms"

[observability]
access_log = "off"
audit_log = "audit.jsonl"
otlp_endpoint = "http://127.0.0.1:4318/v1/traces"
trace_sample_ratio = 0.1
"#
        );
        let c1 = Config::from_toml_str(&text).expect("input");
        let printed = effective_toml(&c1);
        let c2 = Config::from_toml_str(&printed)
            .unwrap_or_else(|e| panic!("printed config refused: {e}\n{printed}"));
        assert_eq!(format!("{c1:?}"), format!("{c2:?}"), "{printed}");
        assert_eq!(printed, effective_toml(&c2));
    }

    /// Policies, auth sections and upstream TLS, which the renderer does
    /// not print itself, survive the round trip too (a printed config that
    /// lost `auth` would serve a protected route to anyone).
    #[test]
    fn policies_auth_and_upstream_tls_are_carried_over() {
        let text = r#"
[server.tls]
listen = "127.0.0.1:8443"
cert = "/etc/shardline/cert.pem"
key = "/etc/shardline/key.pem"
min_version = "1.3"
client_auth = { ca = "/etc/shardline/clients.pem", required = false }
sni = [ { cert = "/etc/shardline/b.pem", key = "/etc/shardline/b.key", names = ["b.example"] } ]

[auth.partners]
type = "api_key"
header = "x-api-key"
keys = [ { key = "0123456789abcdef0", consumer = "acme", scopes = ["read"] } ]

[[upstreams]]
name = "secure"
targets = ["https://127.0.0.1:9443"]
tls = { insecure_skip_verify_for_tests = true }

[[routes]]
name = "secret"
method = "GET"
path = "/secret"
auth = "partners"
scopes = ["read"]
rate_limit = { per_second = 10, burst = 20, key = "consumer" }
respond = { status = 200, body = "TOP SECRET" }

[[routes]]
name = "p"
path = "/p"
upstream = "secure"
request_id = false
"#;
        let c1 = Config::from_toml_str(text).expect("input");
        let printed = effective_toml_from(&c1, Some(text));
        let c2 = Config::from_toml_str(&printed)
            .unwrap_or_else(|e| panic!("printed config refused: {e}\n{printed}"));
        assert_eq!(format!("{c1:?}"), format!("{c2:?}"), "{printed}");
        assert!(
            printed.contains("partners") && printed.contains("rate_limit"),
            "{printed}"
        );
        assert!(printed.contains("https://127.0.0.1:9443"), "{printed}");
        assert!(
            printed.contains("clients.pem") && printed.contains("b.example"),
            "{printed}"
        );
        assert_eq!(printed, effective_toml_from(&c2, Some(&printed)));
    }

    #[test]
    fn sub_millisecond_durations_stay_exact() {
        assert_eq!(dur(Duration::from_micros(50)), "\"50us\"");
        assert_eq!(dur(Duration::from_millis(1500)), "\"1500ms\"");
        assert_eq!(dur(Duration::from_secs(3600)), "\"1h\"");
    }
}
