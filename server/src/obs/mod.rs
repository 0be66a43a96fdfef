//! Observability: metrics, access and audit logs, SLOs, traces, and the
//! cross-shard messaging that gathers them.
//!
//! Everything a request records lands in its own shard's memory
//! ([`ShardObs`], `Rc`/`Cell`). Shard 0, which serves the admin listener,
//! asks the other shards for snapshots by message (`hub`) when scraped.
//!
//! # Layout
//! - `metrics`: per-route and per-target HDR histograms, snapshots.
//! - `expo`: Prometheus 0.0.4 / OpenMetrics rendering of merged snapshots.
//! - `slo`: SLO time buckets, burn rates, `/admin/slo` JSON.
//! - `log`: per-shard log buffers and the writer threads (access, audit).
//! - `audit`: the audit log API (`audit::record`).
//! - `trace`: W3C trace context, spans, OTLP/HTTP JSON export.
//! - `hub`: shard-to-shard channels for scrapes and reloads.
//! - `json`: JSON string and time helpers.

pub(crate) mod audit;
pub(crate) mod expo;
pub(crate) mod hub;
pub(crate) mod json;
pub(crate) mod log;
pub(crate) mod metrics;
pub(crate) mod slo;
pub(crate) mod trace;

use std::cell::Cell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardline_shard::{ShardCounters, ShardInfo};

use crate::obs::log::ShardLog;
use crate::obs::trace::{ShardTracer, TraceContext};
// The rule the `request_id` policy keeps an incoming id by: the log names a
// request by the id its response and the upstream carried.
use crate::policy::request_id::valid_request_id;

/// What every shard's observability is built from (process-wide, shared
/// at start-up).
pub(crate) struct ObsSetup {
    pub hub: Arc<hub::Hub>,
    pub access: Option<Arc<log::LogStream>>,
    pub audit: Option<Arc<log::LogStream>>,
    pub started: Instant,
    /// Where SIGHUP and `POST /admin/reload` read the config from.
    pub reload: Option<hub::ReloadSource>,
    /// The config running now (replaced by each successful reload).
    pub running: std::sync::Mutex<Arc<crate::config::Config>>,
    pub handlers: Arc<Vec<(String, Arc<dyn crate::handler::HandlerFactory>)>>,
    /// The newest config generation (1 at start). Reloads run on shard 0
    /// only; atomics because the struct is shared, not for contention.
    pub generation: std::sync::atomic::AtomicU64,
    pub reloads_ok: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
    /// The HTTPS listener's certificates, re-read by every reload.
    pub tls: Option<Arc<crate::tls::TlsRuntime>>,
}

impl ObsSetup {
    /// Shard `info`'s state: its ends of the log streams, its tracer.
    pub(crate) fn shard_obs(&self, info: ShardInfo, config: &crate::config::Config) -> ShardObs {
        let o = &config.observability;
        let tracer = o
            .otlp_endpoint
            .as_ref()
            .map(|ep| ShardTracer::new(ep.clone(), o.trace_sample_ratio, o.service_name.clone()));
        ShardObs::new(
            info,
            self.access.as_ref().and_then(|l| l.take(info.id)),
            self.audit.as_ref().and_then(|l| l.take(info.id)),
            tracer,
            self.started,
        )
    }
}

/// One shard's observability state that outlives config generations.
pub(crate) struct ShardObs {
    pub info: ShardInfo,
    pub counters: Rc<ShardCounters>,
    pub access: Option<Rc<ShardLog>>,
    pub audit: Option<Rc<ShardLog>>,
    pub tracer: Option<Rc<ShardTracer>>,
    /// The SLO clock's zero.
    pub started: Instant,
    rng: Cell<u64>,
    next_id: Cell<u64>,
    /// Per-process salt of generated request ids (so two runs differ).
    id_salt: u64,
}

/// A request as it finished, for metrics and the access log.
pub(crate) struct Completed<'a> {
    /// Index of the route that served it; `None` = no route matched.
    pub route: Option<usize>,
    pub route_name: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub received: Instant,
    /// When it was answered (`Exchange::finished` for inline requests).
    pub finished: Instant,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub upstream: Option<SocketAddr>,
    pub cache: Option<&'static str>,
    /// The request's `X-Request-Id` value, if it sent one.
    pub request_id: Option<&'a [u8]>,
    /// The consumer the request authenticated as.
    pub consumer: Option<&'a [u8]>,
    pub trace: Option<&'a TraceContext>,
    pub peer: SocketAddr,
}

impl ShardObs {
    pub(crate) fn new(
        info: ShardInfo,
        access: Option<ShardLog>,
        audit: Option<ShardLog>,
        tracer: Option<ShardTracer>,
        started: Instant,
    ) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let access = access.map(Rc::new);
        let audit = audit.map(Rc::new);
        for l in access.iter().chain(audit.iter()) {
            log::flush_at_exit(l);
        }
        ShardObs {
            info,
            counters: shardline_shard::local_counters(),
            access,
            audit,
            tracer: tracer.map(Rc::new),
            started,
            rng: Cell::new((seed ^ ((info.id as u64 + 1) << 40)) | 1),
            next_id: Cell::new(0),
            id_salt: seed.rotate_left(17) ^ 0xA076_1D64_78BD_642F,
        }
    }

    /// Seconds on the SLO clock.
    pub(crate) fn now_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// [`ShardObs::now_secs`] at `t`, without reading the clock.
    pub(crate) fn secs_at(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.started).as_secs()
    }

    /// A uniform random number in [0, 1) (xorshift64*; shard-local).
    pub(crate) fn random_unit(&self) -> f64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub(crate) fn random_u64(&self) -> u64 {
        let a = (self.random_unit() * (1u64 << 53) as f64) as u64;
        let b = (self.random_unit() * (1u64 << 53) as f64) as u64;
        a.rotate_left(32) ^ b
    }

    /// Writes the access log line for `c` if the stream is on and the
    /// sample says so (5xx answers are always written).
    pub(crate) fn access_line(&self, c: &Completed<'_>, sample: f64, took: Duration) {
        let Some(log) = &self.access else { return };
        if c.status < 500 && sample < 1.0 && self.random_unit() >= sample {
            return;
        }
        log.line(|out| {
            out.extend_from_slice(b"{\"time\":");
            json::push_now(out);
            out.extend_from_slice(b",\"request_id\":");
            match c.request_id.filter(|id| valid_request_id(id)) {
                Some(id) => json::push_bytes(out, id),
                None => {
                    let n = self.next_id.get();
                    self.next_id.set(n + 1);
                    let _ = write!(
                        out,
                        "\"{:016x}{:04x}{:012x}\"",
                        self.id_salt,
                        self.info.id & 0xffff,
                        n & 0xffff_ffff_ffff
                    );
                }
            }
            out.extend_from_slice(b",\"trace_id\":");
            match c.trace {
                Some(t) => {
                    out.push(b'"');
                    for b in t.trace_id {
                        let _ = write!(out, "{b:02x}");
                    }
                    out.push(b'"');
                }
                None => out.extend_from_slice(b"null"),
            }
            let _ = write!(out, ",\"shard\":{},\"consumer\":", self.info.id);
            match c.consumer {
                Some(who) => json::push_bytes(out, who),
                None => out.extend_from_slice(b"null"),
            }
            let _ = write!(out, ",\"client\":\"{}\",\"method\":", c.peer.ip());
            json::push_bytes(out, c.method.as_bytes());
            out.extend_from_slice(b",\"route\":");
            if c.route.is_some() {
                json::push_bytes(out, c.route_name.as_bytes());
            } else {
                out.extend_from_slice(b"null");
            }
            // The path only: a query string may carry secrets.
            out.extend_from_slice(b",\"path\":");
            json::push_bytes(out, c.path.as_bytes());
            let _ = write!(
                out,
                ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3},\"upstream\":",
                c.status,
                c.bytes_in,
                c.bytes_out,
                took.as_secs_f64() * 1000.0
            );
            match c.upstream {
                // An address's text needs no JSON escaping.
                Some(a) => {
                    let _ = write!(out, "\"{a}\"");
                }
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"cache\":");
            match c.cache {
                Some(s) => json::push_bytes(out, s.as_bytes()),
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        });
    }
}

/// Flushes a shard's log buffers every `LOG_FLUSH_MS` so lines appear
/// promptly on a quiet shard.
pub(crate) async fn flush_loop(obs: std::rc::Weak<ShardObs>) {
    loop {
        glommio::timer::sleep(Duration::from_millis(log::LOG_FLUSH_MS)).await;
        let Some(o) = obs.upgrade() else { return };
        if let Some(l) = &o.access {
            l.flush();
        }
        if let Some(l) = &o.audit {
            l.flush();
        }
        if let Some(t) = &o.tracer {
            // Its own task: an export waits on the collector (up to
            // EXPORT_TIMEOUT), which must not hold up the log flushes.
            let t = Rc::clone(t);
            glommio::spawn_local(async move { t.maybe_export().await }).detach();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_bounded_and_plain() {
        assert!(super::valid_request_id(b"abc-123_x"));
        assert!(!super::valid_request_id(b"a b"));
        assert!(!super::valid_request_id(b"\"x"));
        assert!(!super::valid_request_id(&[b'a'; 129]));
    }
}
