//! Tracing: W3C trace context (`traceparent`), a server span per sampled
//! request and a client span per upstream try, exported in batches over
//! OTLP/HTTP with the JSON encoding.
//!
//! Sampling is parent-based: a request whose `traceparent` says sampled is
//! traced, one that says not sampled is not, and one without a (valid)
//! `traceparent` is traced with probability `trace_sample_ratio`. Spans
//! wait in a bounded per-shard queue; the shard's flush timer (or a full
//! batch) posts them to `otlp_endpoint` from the shard itself, as an
//! async task on its own ring, so export never blocks request handling. A
//! full queue drops spans and counts them.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config_obs::OtlpEndpoint;
use crate::upstream::client;

/// Spans queued per shard before new ones are dropped: bounds memory when
/// the collector is down (a span is a few hundred bytes).
pub const MAX_QUEUED_SPANS: usize = 4096;
/// Spans per export request (OTLP collectors accept far more; this keeps
/// one request under ~1 MiB).
pub const SPAN_BATCH: usize = 512;
/// An export that takes longer than this is abandoned (spans dropped).
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(2);
/// Response head buffer for the collector's reply.
const EXPORT_READ_BYTES: usize = 8 * 1024;

/// A W3C trace context (Trace Context Level 1 §3.2 `traceparent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span (our server span's parent), if any.
    pub parent_id: Option<[u8; 8]>,
    /// This request's server span.
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// The `traceparent` value naming `span` as the parent (what the
    /// upstream receives).
    pub(crate) fn header_for(&self, span: &[u8; 8]) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(span),
            if self.sampled { "01" } else { "00" }
        )
    }
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks(2).enumerate() {
        let d = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None, // §3.2.2: lower-case hex only.
        };
        out[i] = d(pair[0])? << 4 | d(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value: `version-traceid-parentid-flags`.
/// Returns (trace id, parent span id, sampled flag), or `None` for an
/// invalid value (which is then ignored, §3.2.2.x "restart the trace").
pub(crate) fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], bool)> {
    let v = v.trim_ascii();
    // The syntax rules (version ff, exact length of version 00, lower-case
    // hex, all-zero ids) live in one place, shared with the request-id
    // policy that forwards the header.
    crate::policy::request_id::parse_traceparent(v)?;
    let trace_id = unhex::<16>(&v[3..35])?;
    let parent = unhex::<8>(&v[36..52])?;
    let flags = unhex::<1>(&v[53..55])?[0];
    Some((trace_id, parent, flags & 1 == 1))
}

/// One finished span.
pub(crate) struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: Option<[u8; 8]>,
    pub name: String,
    /// OTLP SpanKind: 2 server, 3 client.
    pub kind: u8,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// OTLP status code: 0 unset, 2 error.
    pub error: bool,
    pub attributes: Vec<(&'static str, AttrValue)>,
}

pub(crate) enum AttrValue {
    Str(String),
    Int(i64),
}

/// One shard's tracer: sampling, the span queue and export.
pub(crate) struct ShardTracer {
    endpoint: OtlpEndpoint,
    ratio: f64,
    service: String,
    queue: RefCell<Vec<Span>>,
    exporting: Cell<bool>,
    pub dropped: Cell<u64>,
    pub exported: Cell<u64>,
}

/// Unix time in nanoseconds of a monotonic instant, anchored at `now`.
pub(crate) fn unix_nanos(at: Instant) -> u64 {
    let now_sys = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let ago = Instant::now().saturating_duration_since(at);
    now_sys.saturating_sub(ago).as_nanos() as u64
}

impl ShardTracer {
    pub(crate) fn new(endpoint: OtlpEndpoint, ratio: f64, service: String) -> Self {
        ShardTracer {
            endpoint,
            ratio,
            service,
            queue: RefCell::new(Vec::new()),
            exporting: Cell::new(false),
            dropped: Cell::new(0),
            exported: Cell::new(0),
        }
    }

    /// The trace context of a request: continues the caller's trace when
    /// `traceparent` is valid, else starts one; `sampled` follows the
    /// caller's flag, else the configured ratio (`unit` is a uniform
    /// random number in [0, 1), `rand` random bits for new ids).
    pub(crate) fn context(
        &self,
        traceparent: Option<&[u8]>,
        unit: f64,
        mut rand: impl FnMut() -> u64,
    ) -> TraceContext {
        let mut span_id = rand().to_be_bytes();
        if span_id == [0; 8] {
            span_id[7] = 1;
        }
        match traceparent.and_then(parse_traceparent) {
            Some((trace_id, parent, sampled)) => TraceContext {
                trace_id,
                parent_id: Some(parent),
                span_id,
                sampled,
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&rand().to_be_bytes());
                trace_id[8..].copy_from_slice(&rand().to_be_bytes());
                if trace_id == [0; 16] {
                    trace_id[15] = 1;
                }
                TraceContext {
                    trace_id,
                    parent_id: None,
                    span_id,
                    sampled: unit < self.ratio,
                }
            }
        }
    }

    pub(crate) fn push(&self, span: Span) {
        let mut q = self.queue.borrow_mut();
        if q.len() >= MAX_QUEUED_SPANS {
            self.dropped.set(self.dropped.get() + 1);
            return;
        }
        q.push(span);
    }

    /// Exports queued spans (one batch at a time, one export at a time).
    pub(crate) async fn maybe_export(&self) {
        if self.exporting.get() {
            return;
        }
        self.exporting.set(true);
        loop {
            let batch: Vec<Span> = {
                let mut q = self.queue.borrow_mut();
                let n = q.len().min(SPAN_BATCH);
                q.drain(..n).collect()
            };
            if batch.is_empty() {
                break;
            }
            let n = batch.len() as u64;
            let body = self.encode(&batch);
            if self.post(&body).await {
                self.exported.set(self.exported.get() + n);
            } else {
                self.dropped.set(self.dropped.get() + n);
                tracing::debug!("span export to {} failed", self.endpoint.url);
                break;
            }
        }
        self.exporting.set(false);
    }

    async fn post(&self, body: &str) -> bool {
        let ep = &self.endpoint;
        let req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\nUser-Agent: shardline\r\n\r\n{body}",
            ep.path,
            ep.host,
            body.len()
        );
        let deadline = Instant::now() + EXPORT_TIMEOUT;
        let attempt = async {
            let mut stream = client::connect_plain(ep.addr, EXPORT_TIMEOUT).await.ok()?;
            client::send(&mut stream, req.as_bytes()).await.ok()?;
            let mut buf = client::RespBuf::new(vec![0; EXPORT_READ_BYTES]);
            let head = client::read_head(&mut stream, &mut buf, false).await.ok()?;
            Some((200..300).contains(&head.status))
        };
        matches!(
            client::with_deadline(deadline, attempt).await,
            Some(Some(true))
        )
    }

    /// OTLP/HTTP JSON (`ExportTraceServiceRequest`): ids as hex, times as
    /// decimal strings of unix nanoseconds, enums as numbers.
    pub(crate) fn encode(&self, spans: &[Span]) -> String {
        let mut s = String::with_capacity(256 + spans.len() * 400);
        s.push_str("{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{\"stringValue\":");
        super::json::push_str(&mut s, &self.service);
        s.push_str("}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"shardline\"},\"spans\":[");
        for (i, sp) in spans.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"traceId\":\"{}\",\"spanId\":\"{}\",",
                hex(&sp.trace_id),
                hex(&sp.span_id)
            );
            if let Some(p) = &sp.parent_id {
                let _ = write!(s, "\"parentSpanId\":\"{}\",", hex(p));
            }
            s.push_str("\"name\":");
            super::json::push_str(&mut s, &sp.name);
            let _ = write!(
                s,
                ",\"kind\":{},\"startTimeUnixNano\":\"{}\",\"endTimeUnixNano\":\"{}\",\"attributes\":[",
                sp.kind, sp.start_unix_nanos, sp.end_unix_nanos
            );
            for (j, (k, v)) in sp.attributes.iter().enumerate() {
                if j > 0 {
                    s.push(',');
                }
                let _ = write!(s, "{{\"key\":\"{k}\",\"value\":");
                match v {
                    AttrValue::Str(v) => {
                        s.push_str("{\"stringValue\":");
                        super::json::push_str(&mut s, v);
                        s.push('}');
                    }
                    AttrValue::Int(n) => {
                        let _ = write!(s, "{{\"intValue\":\"{n}\"}}");
                    }
                }
                s.push('}');
            }
            let _ = write!(
                s,
                "],\"status\":{{\"code\":{}}}}}",
                if sp.error { 2 } else { 0 }
            );
        }
        s.push_str("]}]}]}");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_spec_example() {
        let (t, p, s) = parse_traceparent(TP).unwrap();
        assert_eq!(hex(&t), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p), "00f067aa0ba902b7");
        assert!(s);
    }

    #[test]
    fn refuses_invalid_values() {
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        // A future version may carry more fields.
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"
        )
        .is_some());
    }

    #[test]
    fn context_follows_the_parent_or_the_ratio() {
        let ep = OtlpEndpoint {
            url: "http://127.0.0.1:4318/v1/traces".into(),
            addr: "127.0.0.1:4318".parse().unwrap(),
            host: "127.0.0.1:4318".into(),
            path: "/v1/traces".into(),
        };
        let t = ShardTracer::new(ep, 0.25, "svc".into());
        let mut n = 0u64;
        let mut rand = || {
            n += 1;
            n
        };
        let c = t.context(Some(TP), 0.99, &mut rand);
        assert!(c.sampled, "parent says sampled");
        assert_eq!(
            c.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        let h = c.header_for(&c.span_id);
        assert!(h.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{h}");
        assert!(parse_traceparent(h.as_bytes()).is_some());
        assert!(t.context(None, 0.1, &mut rand).sampled);
        assert!(!t.context(None, 0.3, &mut rand).sampled);
    }
}
