//! The `upstream` route action: forward a request to a target chosen by the
//! balancer, with retries, timeouts and the circuit breaker, and stream the
//! response back.
//!
//! A request body is read up to [`REPLAYABLE_BODY_BYTES`] before anything
//! is sent: a body that fits is forwarded with Content-Length in the same
//! write as the head, and can be sent again on a retry. A longer body is
//! streamed (Content-Length kept, or re-chunked) and is never retried once
//! it has started. Response bodies stream to the client as they arrive.

use std::rc::Rc;
use std::time::{Duration, Instant};

use shardline_protocol::request::{RequestHead, Version};
use shardline_protocol::response::{self, BodyDelimit, LAST_CHUNK};
use shardline_protocol::response_head::ResponseFraming;
use shardline_shard::{BodyError, ClientIo};

use crate::config_gateway::HostMode;
use crate::upstream::client::{self, BodyFailure, BodyReader, Failure, Head, RespBuf};
use crate::upstream::tls::UpstreamStream;
use crate::upstream::{InFlight, Pick, Upstream};

/// Request bodies up to this size are read whole before the upstream is
/// contacted: forwarded in one write with the head, replayable on retry.
/// 64 KiB covers nearly every API payload while bounding per-request memory.
pub const REPLAYABLE_BODY_BYTES: usize = 64 * 1024;

/// Response bytes gathered before a write to the client: large enough for
/// few syscalls on big bodies, small enough to stay in cache.
pub const RESPONSE_FLUSH_BYTES: usize = 64 * 1024;

/// Most an upstream response's read buffer grows to. It must hold a whole
/// response head (`DEFAULT_MAX_RESPONSE_HEAD_BYTES`, 16 KiB) with room for
/// the first body bytes, and makes large bodies move in 32 KiB reads.
pub const UPSTREAM_READ_BUFFER_BYTES: usize = 32 * 1024;
const _: () = assert!(
    UPSTREAM_READ_BUFFER_BYTES > shardline_protocol::response_head::DEFAULT_MAX_RESPONSE_HEAD_BYTES
);

/// What an upstream read buffer starts at: every in-flight proxied request
/// holds one, and most responses fit. At 256 connections a fixed 32 KiB
/// buffer (zeroed, and beyond the pool freshly mapped, for every request)
/// cost page faults and `memset` in the profile; this one grows only for a
/// large head or body. 10,000 long-polling requests hold about 40 MiB.
pub const UPSTREAM_READ_BUFFER_START_BYTES: usize = 4 * 1024;

/// Bytes of free upstream read buffers a shard keeps: the same 2 MiB as 64
/// full-size buffers, or 512 small ones.
const READ_BUFFER_POOL_MAX_BYTES: usize = 2 * 1024 * 1024;

/// Hop-by-hop fields (RFC 9110 §7.6.1), never forwarded either way.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

pub(crate) const PROBLEM_BAD_GATEWAY: &str = "https://shardline.dev/problems/bad-gateway";
pub(crate) const PROBLEM_GATEWAY_TIMEOUT: &str = "https://shardline.dev/problems/gateway-timeout";
pub(crate) const PROBLEM_UNAVAILABLE: &str = "https://shardline.dev/problems/upstream-unavailable";

/// Per-shard resources the gateway's actions share.
pub(crate) struct GatewayShard {
    read_buffers: std::cell::RefCell<Vec<Vec<u8>>>,
    /// Bytes held by `read_buffers`.
    pooled_bytes: std::cell::Cell<usize>,
    /// This shard's tracer (client spans), when tracing is on.
    pub tracer: Option<Rc<crate::obs::trace::ShardTracer>>,
    /// `[server] read_yields`, for upstream reads.
    read_yields: u32,
}

impl GatewayShard {
    pub(crate) fn new(
        tracer: Option<Rc<crate::obs::trace::ShardTracer>>,
        read_yields: u32,
    ) -> Self {
        GatewayShard {
            read_buffers: std::cell::RefCell::new(Vec::new()),
            pooled_bytes: std::cell::Cell::new(0),
            tracer,
            read_yields,
        }
    }

    pub(crate) fn take_read(&self) -> RespBuf {
        let data = match self.read_buffers.borrow_mut().pop() {
            Some(d) => {
                self.pooled_bytes.set(self.pooled_bytes.get() - d.len());
                d
            }
            None => vec![0; UPSTREAM_READ_BUFFER_START_BYTES],
        };
        let mut buf = RespBuf::growable(data, UPSTREAM_READ_BUFFER_BYTES);
        buf.yields = self.read_yields;
        buf
    }

    pub(crate) fn put_read(&self, buf: RespBuf) {
        let len = buf.data.len();
        let held = self.pooled_bytes.get();
        if (UPSTREAM_READ_BUFFER_START_BYTES..=UPSTREAM_READ_BUFFER_BYTES).contains(&len)
            && held + len <= READ_BUFFER_POOL_MAX_BYTES
        {
            self.pooled_bytes.set(held + len);
            self.read_buffers.borrow_mut().push(buf.data);
        }
    }
}

/// One upstream route on one shard.
pub(crate) struct Proxy {
    pub up: Rc<Upstream>,
    pub strip_prefix: Option<String>,
    pub rewrite: Option<String>,
    pub timeout: Duration,
    /// Shared with the next config generation when a reload leaves the
    /// route's cache settings unchanged (entries and counters survive).
    pub cache: Option<Rc<crate::cache_glue::RouteCache>>,
    /// The route has `auth`: every request on it is some consumer's, so its
    /// responses are cached as if the request carried `Authorization`.
    pub authenticated: bool,
}

/// RFC 9110 §9.2.2 idempotent methods, plus any request carrying an
/// Idempotency-Key (the client promises a repeat is safe).
pub(crate) fn is_idempotent(head: &RequestHead<'_, '_>) -> bool {
    matches!(
        head.method,
        "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
    ) || head.header("idempotency-key").is_some()
}

/// The path sent upstream: `rewrite` filled with the route's params, or the
/// request path with `strip_prefix` removed (at a segment boundary).
pub(crate) fn upstream_path(
    path: &str,
    strip_prefix: Option<&str>,
    rewrite: Option<&str>,
    params: &shardline_shard::Params<'_, '_>,
) -> String {
    if let Some(template) = rewrite {
        return fill_template(template, params);
    }
    if let Some(prefix) = strip_prefix {
        let prefix = prefix.trim_end_matches('/');
        if let Some(rest) = path.strip_prefix(prefix) {
            if rest.is_empty() {
                return "/".to_string();
            }
            if rest.starts_with('/') {
                return rest.to_string();
            }
        }
    }
    path.to_string()
}

/// Replaces `{name}` and `{*name}` with the captured values: raw, as the
/// client sent them (percent-encoding preserved; dot-segments never reach
/// here, the request parser refuses them), except in the template's query
/// part, where a value's `&`, `=`, `+`, `;` and `#` are percent-encoded so
/// that a parameter stays one query value (`{id}` = `1&role=admin` must not
/// add a `role` parameter).
pub(crate) fn fill_template(template: &str, params: &shardline_shard::Params<'_, '_>) -> String {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    // Past the template's `?`: only its literal text can bring one.
    let mut in_query = false;
    while let Some(open) = rest.find('{') {
        let literal = &rest[..open];
        in_query |= literal.contains('?');
        out.push_str(literal);
        let Some(close) = rest[open..].find('}') else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = rest[open + 1..open + close].trim_start_matches('*');
        let value = params.get(name).unwrap_or("");
        if in_query {
            for c in value.chars() {
                match c {
                    '&' | '=' | '+' | ';' | '#' => {
                        let _ =
                            std::fmt::Write::write_fmt(&mut out, format_args!("%{:02X}", c as u32));
                    }
                    c => out.push(c),
                }
            }
        } else {
            out.push_str(value);
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// The field names an upstream response's `Connection` fields list (RFC
/// 9110 §7.6.1); usually none, and then nothing is allocated.
pub(crate) fn named_in_connection<'a>(fields: &[(&'a str, &'a [u8])]) -> Vec<&'a [u8]> {
    let mut tokens = Vec::new();
    connection_tokens(
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .map(|(_, v)| *v),
        &mut tokens,
    );
    tokens
}

/// The fields of an upstream response that are passed on (to the client,
/// or into the cache): all but the hop-by-hop ones, fixed and named in
/// `Connection` (`tokens`, from [`named_in_connection`]), and the
/// Content-Length we write ourselves.
pub(crate) fn forwardable_fields<'f, 'a>(
    fields: &'f [(&'a str, &'a [u8])],
    tokens: &'f [&'a [u8]],
) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'f {
    fields
        .iter()
        .copied()
        .filter(|(n, _)| !is_hop_by_hop(n, tokens) && !n.eq_ignore_ascii_case("content-length"))
}

fn is_hop_by_hop(name: &str, connection_tokens: &[&[u8]]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || connection_tokens
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// The field names listed in Connection fields (RFC 9110 §7.6.1), at most
/// 16 (more are not forwarded either: the whole field set is refused below).
fn connection_tokens<'a>(values: impl Iterator<Item = &'a [u8]>, out: &mut Vec<&'a [u8]>) {
    for v in values {
        for t in v.split(|&b| b == b',') {
            let t = trim(t);
            if !t.is_empty() {
                out.push(t);
            }
        }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// How the request body goes upstream.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyPlan {
    None,
    Length(u64),
    Chunked,
}

/// Builds the request head sent upstream.
/// Returns where the Host field line goes for `HostMode::Target` (the
/// target is only known per try, so that line is spliced in then).
#[allow(clippy::too_many_arguments)] // one call site; each flag is one forwarding fact
fn write_request_head(
    out: &mut Vec<u8>,
    head: &RequestHead<'_, '_>,
    path: &str,
    host: &HostMode,
    peer: std::net::SocketAddr,
    tls: bool,
    body: BodyPlan,
    replace_traceparent: bool,
) -> usize {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    if let Some(q) = head.query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host_at = out.len();
    let client_host = head.header("host").unwrap_or(b"");
    match host {
        HostMode::Preserve => {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(client_host);
            out.extend_from_slice(b"\r\n");
        }
        HostMode::Target => {}
        HostMode::Literal(h) => {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
    let mut tokens: Vec<&[u8]> = Vec::new();
    connection_tokens(
        head.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("connection"))
            .map(|h| h.value),
        &mut tokens,
    );
    let mut xff: Option<Vec<u8>> = None;
    let mut forwarded: Option<Vec<u8>> = None;
    for h in head.headers {
        let n = h.name;
        if is_hop_by_hop(n, &tokens)
            || n.eq_ignore_ascii_case("host")
            || n.eq_ignore_ascii_case("content-length")
            || n.eq_ignore_ascii_case("expect")
            || n.eq_ignore_ascii_case("x-forwarded-proto")
            || (replace_traceparent && n.eq_ignore_ascii_case("traceparent"))
        {
            continue;
        }
        if n.eq_ignore_ascii_case("x-forwarded-for") {
            let v = xff.get_or_insert_with(Vec::new);
            if !v.is_empty() {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(h.value);
            continue;
        }
        if n.eq_ignore_ascii_case("forwarded") {
            // A malformed value (an unclosed quote) would swallow the
            // element appended below: it is dropped, not passed on.
            if !shardline_protocol::is_forwarded_value(h.value) {
                continue;
            }
            let v = forwarded.get_or_insert_with(Vec::new);
            if !v.is_empty() {
                v.extend_from_slice(b", ");
            }
            v.extend_from_slice(h.value);
            continue;
        }
        out.extend_from_slice(n.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    let mut ip_buf = [0u8; 39];
    let ip = format_ip(peer.ip(), &mut ip_buf);
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(v) = &xff {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip.as_bytes());
    // The scheme the client used: the HTTPS listener's requests say https.
    let proto: &[u8] = if tls { b"https" } else { b"http" };
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: ");
    out.extend_from_slice(proto);
    out.extend_from_slice(b"\r\nForwarded: ");
    if let Some(v) = &forwarded {
        out.extend_from_slice(v);
        out.extend_from_slice(b", ");
    }
    // RFC 7239 §6: an IPv6 node is quoted and bracketed.
    if peer.is_ipv6() {
        out.extend_from_slice(b"for=\"[");
        out.extend_from_slice(ip.as_bytes());
        out.extend_from_slice(b"]\"");
    } else {
        out.extend_from_slice(b"for=");
        out.extend_from_slice(ip.as_bytes());
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(proto);
    if !client_host.is_empty()
        && client_host
            .iter()
            .all(|b| b.is_ascii_graphic() && *b != b'"')
    {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(client_host);
        out.push(b'"');
    }
    out.extend_from_slice(b"\r\n");
    match body {
        BodyPlan::None => {}
        BodyPlan::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyPlan::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
    }
    out.extend_from_slice(b"\r\n");
    host_at
}

/// The textual form of `ip` (RFC 4291 §2.2 for v6, via std) written into
/// `buf`: IPv4, the common case, without the formatting machinery.
fn format_ip(ip: std::net::IpAddr, buf: &mut [u8; 39]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    let _ = cursor.write_all(b".");
                }
                let _ = cursor.write_all(digits.format(*octet).as_bytes());
            }
        }
        std::net::IpAddr::V6(v6) => {
            let _ = write!(cursor, "{v6}");
        }
    }
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// What one try produced.
pub(crate) struct Answer {
    pub stream: UpstreamStream,
    pub head: Head,
    pub buf: RespBuf,
    pub target: usize,
    /// When the exchange's total time runs out: reading the body is bound
    /// by it too.
    pub deadline: Instant,
    /// The upstream answered before taking the whole request body: the
    /// connection is left mid-request and must not go back to the pool.
    pub partial_request: bool,
    /// The try is already recorded for the breaker and the counters (its
    /// head said 502-504); otherwise it is recorded once its body ends
    /// ([`settle`]), so a body the upstream breaks is one failed request,
    /// not a success and then a failure.
    pub judged: bool,
    /// The breaker epoch the try was sent in (`InFlight::epoch`).
    pub epoch: u64,
}

/// How a try whose head arrived ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TryEnd {
    /// The response (or as much of it as was wanted) came whole.
    Complete,
    /// The upstream broke or stalled the body.
    UpstreamFailed,
    /// The client went away mid-response: says nothing of the upstream.
    ClientGone,
}

/// Records, once, how a try that got a response head ended.
pub(crate) fn settle(up: &Upstream, target: usize, judged: bool, epoch: u64, end: TryEnd) {
    if judged {
        return;
    }
    match end {
        TryEnd::Complete => up.record(target, true, Instant::now(), epoch),
        TryEnd::UpstreamFailed => up.record(target, false, Instant::now(), epoch),
        TryEnd::ClientGone => up.record_unjudged(target),
    }
}

/// How long to look for an upstream's answer after sending it the request
/// body failed (it closed or reset the connection): an upstream that
/// refuses an upload (413, 401) often answers and closes before reading
/// it, and its answer is what the client should get.
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// How streaming the request body to the upstream ended.
enum BodySent {
    All,
    /// The upstream sent something (or closed) before the body was all
    /// sent: an early answer, read next instead of sending the rest.
    Stopped,
}

/// A failed write to the upstream: a write that made no progress within
/// its timeout is a timeout (504), anything else a broken connection.
fn send_failure(e: std::io::Error) -> Failure {
    if e.kind() == std::io::ErrorKind::TimedOut {
        Failure::Timeout
    } else {
        Failure::Io(e)
    }
}

/// A try failed, on a target (for the breaker) or on the client's side.
pub(crate) enum TryError {
    Upstream(Failure),
    /// Reading the client's body failed: answer or abort, never retry.
    Client(BodyError),
}

/// The parts of a request an exchange needs, computed once.
pub(crate) struct Outgoing {
    /// Request head (and the whole body when `replayable`).
    pub bytes: Vec<u8>,
    pub replayable: bool,
    pub chunked_rest: bool,
    /// Where to splice `Host: <target>` in (`HostMode::Target` only).
    pub host_at: Option<usize>,
    /// End of the request line: per-try header lines (`traceparent`, with
    /// this try's client span) are spliced in here.
    pub line_end: usize,
    pub idempotent: bool,
    pub is_head: bool,
}

/// Sends `out` on a pooled or new connection to `target` and reads the
/// response head. A request on a reused connection that breaks before any
/// response byte is sent again once on a fresh connection when that is
/// safe (replayable and idempotent).
#[allow(clippy::too_many_arguments)] // One try's full context; a struct would only rename it.
async fn try_target(
    up: &Upstream,
    gw: &GatewayShard,
    target: usize,
    out: &Outgoing,
    io: &mut ClientIo<'_>,
    deadline: Instant,
    timeout: Duration,
    traceparent: Option<&str>,
) -> Result<Answer, TryError> {
    let t = &up.targets[target];
    let spliced;
    let bytes: &[u8] = if out.host_at.is_some() || traceparent.is_some() {
        let at = out.line_end;
        let mut b = Vec::with_capacity(out.bytes.len() + t.name.len() + 80);
        b.extend_from_slice(&out.bytes[..at]);
        if out.host_at.is_some() {
            b.extend_from_slice(b"Host: ");
            b.extend_from_slice(t.name.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        if let Some(tp) = traceparent {
            b.extend_from_slice(b"traceparent: ");
            b.extend_from_slice(tp.as_bytes());
            b.extend_from_slice(b"\r\n");
        }
        b.extend_from_slice(&out.bytes[at..]);
        spliced = b;
        &spliced
    } else {
        &out.bytes
    };
    let mut fresh_retry_left = true;
    loop {
        let now = Instant::now();
        let (mut stream, reused) =
            match t
                .pool
                .take(now, up.cfg.idle_timeout, out.replayable && out.idempotent)
            {
                Some(s) => (s, true),
                None => {
                    let left = deadline.saturating_duration_since(now);
                    if left.is_zero() {
                        return Err(TryError::Upstream(Failure::Timeout));
                    }
                    // Boxed: a new connection (and its TLS handshake) is the
                    // rare path, and its future would otherwise make every
                    // request's future larger (it is copied into a box each time).
                    let s = Box::pin(client::connect(t, up.cfg.connect_timeout.min(left)))
                        .await
                        .map_err(TryError::Upstream)?;
                    t.pool.count_opened();
                    (s, false)
                }
            };
        let _ = stream.set_write_timeout(Some(up.cfg.request_timeout));
        let mut buf = gw.take_read();
        let mut deadline = deadline;
        let mut partial_request = false;
        let res: Result<Head, TryError> = async {
            client::send(&mut stream, bytes)
                .await
                .map_err(|e| TryError::Upstream(send_failure(e)))?;
            if !out.replayable {
                match stream_body(&mut stream, &mut buf, io, out).await {
                    Ok(BodySent::All) => {}
                    Ok(BodySent::Stopped) => partial_request = true,
                    Err(TryError::Upstream(f)) => {
                        // RFC 9112 §9.6: a server may answer and close before
                        // reading the whole body; forward that answer rather
                        // than the broken write.
                        let wait = Instant::now() + EARLY_ANSWER_WAIT;
                        return match client::with_deadline(
                            wait.min(deadline),
                            client::read_head(&mut stream, &mut buf, out.is_head),
                        )
                        .await
                        {
                            Some(Ok(head)) => {
                                partial_request = true;
                                Ok(head)
                            }
                            _ => Err(TryError::Upstream(f)),
                        };
                    }
                    Err(e) => return Err(e),
                }
                // The deadline counts from the end of a streamed body.
                deadline = deadline.max(Instant::now() + timeout);
            }
            match client::with_deadline(
                deadline,
                client::read_head(&mut stream, &mut buf, out.is_head),
            )
            .await
            {
                None => Err(TryError::Upstream(Failure::Timeout)),
                Some(r) => r.map_err(TryError::Upstream),
            }
        }
        .await;
        match res {
            Ok(head) => {
                if partial_request {
                    // The client's body was not all read: this connection
                    // cannot carry another request.
                    io.close_after();
                }
                return Ok(Answer {
                    stream,
                    head,
                    buf,
                    target,
                    deadline,
                    partial_request,
                    judged: false,
                    epoch: 0,
                });
            }
            Err(TryError::Upstream(Failure::Io(_)))
                if reused && fresh_retry_left && out.replayable && out.idempotent =>
            {
                gw.put_read(buf);
                fresh_retry_left = false;
            }
            Err(e) => {
                gw.put_read(buf);
                return Err(e);
            }
        }
    }
}

/// Streams the rest of the client's body (after the replayable prefix
/// already sent) to the upstream. Stops early when a plain upstream has
/// already answered (or closed): sending it the rest would only fill a
/// socket nobody reads.
async fn stream_body(
    stream: &mut UpstreamStream,
    buf: &mut RespBuf,
    io: &mut ClientIo<'_>,
    out: &Outgoing,
) -> Result<BodySent, TryError> {
    let chunked = out.chunked_rest;
    let mut piece = io.take_buffer();
    let mut framed = io.take_buffer();
    let res = async {
        loop {
            // One MSG_PEEK per piece (up to 64 KiB): cheap beside the copy.
            // TLS upstreams are not checked: their bytes may be a session
            // ticket rather than an answer.
            if let Some(fd) = stream.plain_fd() {
                if crate::system::peek_idle(fd) != crate::system::IdleSocket::Quiet
                    && client::answered_early(stream, buf, out.is_head).await
                {
                    return Ok(BodySent::Stopped);
                }
            }
            piece.clear();
            let n = io
                .read_body(&mut piece, RESPONSE_FLUSH_BYTES)
                .await
                .map_err(TryError::Client)?;
            if n == 0 {
                if chunked {
                    client::send(stream, LAST_CHUNK)
                        .await
                        .map_err(|e| TryError::Upstream(send_failure(e)))?;
                }
                return Ok(BodySent::All);
            }
            let bytes: &[u8] = if chunked {
                framed.clear();
                response::encode_chunk_header(&mut framed, n);
                framed.extend_from_slice(&piece);
                framed.extend_from_slice(b"\r\n");
                &framed
            } else {
                &piece
            };
            client::send(stream, bytes)
                .await
                .map_err(|e| TryError::Upstream(send_failure(e)))?;
        }
    }
    .await;
    io.put_buffer(piece);
    io.put_buffer(framed);
    res
}

/// Reads the replayable prefix of the client's body and builds the bytes
/// to send. `Err` has already been answered (or the connection is lost).
pub(crate) async fn prepare(
    head: &RequestHead<'_, '_>,
    path: &str,
    up: &Upstream,
    io: &mut ClientIo<'_>,
) -> Result<Outgoing, ()> {
    let mut body = io.take_buffer();
    let declared = io.content_length();
    let had_body = io.has_body() || declared.is_some_and(|n| n > 0);
    while io.has_body() && body.len() < REPLAYABLE_BODY_BYTES {
        let want = REPLAYABLE_BODY_BYTES - body.len();
        match io.read_body(&mut body, want).await {
            Ok(_) => {}
            Err(e) => {
                io.answer_body_failure(e).await;
                io.put_buffer(body);
                return Err(());
            }
        }
    }
    let complete = !io.has_body();
    let plan = if complete {
        if had_body || !body.is_empty() || head.header("content-length").is_some() {
            BodyPlan::Length(body.len() as u64)
        } else {
            BodyPlan::None
        }
    } else {
        match declared {
            Some(n) => BodyPlan::Length(n),
            None => BodyPlan::Chunked,
        }
    };
    let mut bytes = io.take_buffer();
    let tracing = io.traceparent().is_some();
    let host_at = write_request_head(
        &mut bytes,
        head,
        path,
        &up.cfg.host,
        io.peer(),
        io.is_tls(),
        plan,
        tracing,
    );
    if plan == BodyPlan::Chunked {
        if !body.is_empty() {
            response::encode_chunk_header(&mut bytes, body.len());
            bytes.extend_from_slice(&body);
            bytes.extend_from_slice(b"\r\n");
        }
    } else {
        bytes.extend_from_slice(&body);
    }
    io.put_buffer(body);
    Ok(Outgoing {
        bytes,
        replayable: complete,
        chunked_rest: plan == BodyPlan::Chunked,
        host_at: (up.cfg.host == HostMode::Target).then_some(host_at),
        line_end: host_at,
        idempotent: is_idempotent(head),
        is_head: head.is_head(),
    })
}

/// The outcome of the whole attempt loop.
pub(crate) enum Outcome {
    Answer(Box<Answer>),
    /// Every target is ejected.
    Unavailable(Duration),
    Failed(Failure),
    /// The client side failed and has been dealt with.
    ClientGone,
}

/// Tries targets until one answers acceptably, retries are used up, the
/// budget says no, or the deadline passes.
pub(crate) async fn exchange(
    up: &Upstream,
    gw: &GatewayShard,
    out: &Outgoing,
    io: &mut ClientIo<'_>,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let deadline = start + timeout;
    up.budget.borrow_mut().record_request(start);
    let mut attempt = 1u32;
    // This request's targets so far (allocates only when it retries).
    let mut tried: Vec<usize> = Vec::new();
    let mut last_failure: Option<Failure> = None;
    // The last 502-504 a target answered and a retry passed over: when the
    // retries end without a better answer, the client gets it (as Envoy
    // does), not a gateway-made 502/503 that hides what the upstream said.
    let mut last_answer: Option<Box<Answer>> = None;
    // The first try starts now; later ones read the clock again.
    let mut now = start;
    loop {
        if attempt > 1 {
            now = Instant::now();
        }
        let target = match up.pick(now, &tried) {
            Pick::Target(i) => i,
            Pick::NoneAvailable(after) => {
                if let Some(a) = last_answer {
                    return Outcome::Answer(a);
                }
                return match last_failure {
                    Some(f) => Outcome::Failed(f),
                    None => Outcome::Unavailable(after),
                };
            }
        };
        io.set_upstream(up.targets[target].addr);
        // This try's client span: a new span id under the server span,
        // named in the traceparent the upstream receives.
        let span = io
            .traceparent()
            .and_then(|v| crate::obs::trace::parse_traceparent(v.as_bytes()))
            .map(|(trace_id, server_span, sampled)| {
                let mut id = up.random().to_be_bytes();
                id[0] |= 1; // never all zero
                (trace_id, server_span, sampled, id)
            });
        let header = span.map(|(trace_id, _, sampled, id)| {
            crate::obs::trace::TraceContext {
                trace_id,
                parent_id: None,
                span_id: id,
                sampled,
            }
            .header_for(&id)
        });
        let epoch;
        let result = {
            let busy = InFlight::new(&up.targets[target]);
            epoch = busy.epoch();
            try_target(
                up,
                gw,
                target,
                out,
                io,
                deadline,
                timeout,
                header.as_deref(),
            )
            .await
        };
        let now_after = Instant::now();
        up.record_latency(target, now_after.saturating_duration_since(now));
        if let (Some(tracer), Some((trace_id, server_span, true, id))) = (&gw.tracer, span) {
            let t = &up.targets[target];
            let (status, error) = match &result {
                Ok(a) => (i64::from(a.head.status), a.head.status >= 500),
                Err(_) => (0, true),
            };
            let end = crate::obs::trace::unix_nanos(now_after);
            let took = now_after.saturating_duration_since(now).as_nanos() as u64;
            let mut attributes = vec![
                (
                    "server.address",
                    crate::obs::trace::AttrValue::Str(t.name.clone()),
                ),
                (
                    "shardline.upstream",
                    crate::obs::trace::AttrValue::Str(up.cfg.name.clone()),
                ),
            ];
            if status > 0 {
                attributes.push((
                    "http.response.status_code",
                    crate::obs::trace::AttrValue::Int(status),
                ));
            }
            tracer.push(crate::obs::trace::Span {
                trace_id,
                span_id: id,
                parent_id: Some(server_span),
                name: format!("upstream {}", up.cfg.name),
                kind: 3,
                start_unix_nanos: end.saturating_sub(took),
                end_unix_nanos: end,
                error,
                attributes,
            });
        }
        let now = now_after;
        let retry_ok = |failure_nothing_sent: bool| {
            attempt < up.cfg.retry.attempts
                && out.idempotent
                && (out.replayable || failure_nothing_sent)
                && now < deadline
        };
        match result {
            Ok(mut answer) => {
                answer.epoch = epoch;
                let bad = matches!(answer.head.status, 502..=504);
                if bad {
                    up.record(target, false, now, epoch);
                    answer.judged = true;
                }
                if bad && retry_ok(false) && up.budget.borrow_mut().try_retry(now) {
                    if let Some(old) = last_answer.replace(Box::new(answer)) {
                        gw.put_read(old.buf);
                    }
                } else {
                    if let Some(old) = last_answer.take() {
                        gw.put_read(old.buf);
                    }
                    return Outcome::Answer(Box::new(answer));
                }
            }
            Err(TryError::Client(e)) => {
                io.answer_body_failure(e).await;
                return Outcome::ClientGone;
            }
            Err(TryError::Upstream(f)) => {
                up.record(target, false, now, epoch);
                let timed_out = matches!(f, Failure::Timeout);
                if timed_out
                    || !retry_ok(f.nothing_sent())
                    || !up.budget.borrow_mut().try_retry(now)
                {
                    return match last_answer {
                        Some(a) => Outcome::Answer(a),
                        None => Outcome::Failed(f),
                    };
                }
                last_failure = Some(f);
            }
        }
        // Retries go to targets not tried yet while there are any.
        tried.push(target);
        // Exponential backoff with full jitter, never past the deadline.
        let cap = up
            .cfg
            .retry
            .backoff
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(up.cfg.retry.max_backoff);
        let jitter = (up.random() % 1_000_000) as f64 / 1_000_000.0;
        let pause = cap
            .mul_f64(jitter)
            .min(deadline.saturating_duration_since(now));
        if !pause.is_zero() {
            glommio::timer::sleep(pause).await;
        }
        attempt += 1;
    }
}

/// Answers the client for a failed outcome.
pub(crate) async fn answer_failure(io: &mut ClientIo<'_>, outcome: Outcome) {
    match outcome {
        Outcome::Unavailable(after) => {
            let secs = after.as_secs().max(1).to_string();
            io.send_problem(
                503,
                PROBLEM_UNAVAILABLE,
                "Service Unavailable",
                "every target of this upstream is failing its health checks or circuit breaker",
                &[("Retry-After", secs.as_bytes())],
            )
            .await;
        }
        Outcome::Failed(f) => {
            let (ty, title) = if f.status() == 504 {
                (PROBLEM_GATEWAY_TIMEOUT, "Gateway Timeout")
            } else {
                (PROBLEM_BAD_GATEWAY, "Bad Gateway")
            };
            io.send_problem(f.status(), ty, title, &f.detail(), &[])
                .await;
        }
        Outcome::ClientGone | Outcome::Answer(_) => {}
    }
}

/// Streams an upstream response to the client, optionally keeping a copy
/// of the body (for the cache) up to `capture_limit` bytes; returns the
/// captured body when it is complete and within the limit.
pub(crate) async fn forward(
    up: &Upstream,
    gw: &GatewayShard,
    io: &mut ClientIo<'_>,
    answer: Answer,
    extra: &[(&str, &[u8])],
    mut capture: Option<(Vec<u8>, usize)>,
) -> Option<Vec<u8>> {
    let Answer {
        mut stream,
        head,
        mut buf,
        target,
        deadline,
        partial_request,
        judged,
        epoch,
    } = answer;
    let chunked_out: bool;
    let declared_body_on_204 = head.declares_body_on_204(&buf.data);
    let opts = io.encode_options();
    let mut out = io.take_buffer();
    {
        // The head's fields, converted once (they are scanned three times).
        let fields: Vec<(&str, &[u8])> = head.fields(&buf.data).collect();
        let delimit = match head.framing {
            ResponseFraming::ContentLength(n) => BodyDelimit::Length(n),
            ResponseFraming::None => match fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| std::str::from_utf8(v).ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                // RFC 9110 §8.6: a HEAD response keeps the GET's length.
                Some(n) if opts.head => BodyDelimit::Length(n),
                _ => BodyDelimit::None,
            },
            ResponseFraming::Chunked | ResponseFraming::UntilClose => {
                if opts.version == Version::Http11 {
                    BodyDelimit::Chunked
                } else {
                    BodyDelimit::Close
                }
            }
        };
        if delimit == BodyDelimit::Close {
            io.close_after();
        }
        let opts = io.encode_options();
        let tokens = named_in_connection(&fields);
        let kept = forwardable_fields(&fields, &tokens);
        io.with_date(|date| {
            response::encode_forwarded_head(
                &mut out,
                head.status,
                kept.chain(extra.iter().copied()),
                delimit,
                opts,
                date,
            );
        });
        chunked_out = delimit == BodyDelimit::Chunked;
    }
    let mut reader = BodyReader::new(head.framing);
    let mut piece = if chunked_out {
        io.take_buffer()
    } else {
        Vec::new()
    };
    let read_timeout = up.cfg.request_timeout;
    let mut failed = None;
    // Whether any of the response has reached the client: until then a
    // failure can still be answered with a 502/504 instead of a cut.
    let mut sent = false;
    // The failure, if any, was a write to the client.
    let mut client_gone = false;
    loop {
        // Nothing more buffered from the upstream: send what we have before
        // waiting, so a slow stream (SSE, long polling) reaches the client
        // as it arrives. A small response is all in the buffer already and
        // still goes out in one write.
        if !reader.done() && buf.pending().is_empty() && !out.is_empty() {
            sent = true;
            if io.write_all(&out).await.is_err() {
                failed = Some(BodyFailure::Io);
                client_gone = true;
                break;
            }
            out.clear();
        }
        let target_buf: &mut Vec<u8> = if chunked_out { &mut piece } else { &mut out };
        let before = target_buf.len();
        // Each read must make progress within the upstream's
        // request_timeout, and the whole body arrive before the deadline.
        let n = match reader
            .next(
                &mut stream,
                &mut buf,
                target_buf,
                read_timeout,
                Some(deadline),
            )
            .await
        {
            Ok(n) => n,
            Err(e) => {
                failed = Some(e);
                0
            }
        };
        if let Some((copy, limit)) = capture.as_mut() {
            let got = &target_buf[before..before + n];
            if copy.len() + n <= *limit {
                copy.extend_from_slice(got);
            } else {
                capture = None;
            }
        }
        if chunked_out && n > 0 {
            response::encode_chunk_header(&mut out, n);
            out.extend_from_slice(&piece);
            out.extend_from_slice(b"\r\n");
            piece.clear();
        }
        if failed.is_some() {
            break;
        }
        if n == 0 {
            if chunked_out {
                out.extend_from_slice(LAST_CHUNK);
            }
            break;
        }
        if out.len() >= RESPONSE_FLUSH_BYTES {
            sent = true;
            if io.write_all(&out).await.is_err() {
                failed = Some(BodyFailure::Io);
                client_gone = true;
                break;
            }
            out.clear();
        }
    }
    if let Some(why) = failed {
        io.put_buffer(out);
        if chunked_out {
            io.put_buffer(piece);
        }
        let end = if client_gone {
            TryEnd::ClientGone
        } else {
            TryEnd::UpstreamFailed
        };
        settle(up, target, judged, epoch, end);
        gw.put_read(buf);
        if sent {
            // The head is out: the only honest signal left is to cut the
            // connection (the client sees a short body or no last chunk).
            io.abort();
        } else {
            // Nothing has reached the client yet (the body broke within
            // what was already buffered): it can still get a clean answer.
            answer_body_failure(io, &why).await;
        }
        return None;
    }
    if !out.is_empty() && io.write_all(&out).await.is_err() {
        io.abort();
        io.put_buffer(out);
        settle(up, target, judged, epoch, TryEnd::ClientGone);
        gw.put_read(buf);
        return None;
    }
    settle(up, target, judged, epoch, TryEnd::Complete);
    io.put_buffer(out);
    if chunked_out {
        io.put_buffer(piece);
    }
    if head.keep_alive
        && !partial_request
        && !declared_body_on_204
        && reader.done()
        && buf.pending().is_empty()
    {
        up.targets[target].pool.put(stream, Instant::now());
    }
    gw.put_read(buf);
    capture.map(|(copy, _)| copy)
}

/// Answers the client, before any of the response reached it, for an
/// upstream body that broke off, was framed wrongly or took too long.
pub(crate) async fn answer_body_failure(io: &mut ClientIo<'_>, why: &BodyFailure) {
    let (status, ty, title, detail) = match why {
        BodyFailure::Timeout => (
            504,
            PROBLEM_GATEWAY_TIMEOUT,
            "Gateway Timeout",
            "the upstream did not send the response body in time",
        ),
        BodyFailure::Framing => (
            502,
            PROBLEM_BAD_GATEWAY,
            "Bad Gateway",
            "the upstream sent a malformed chunked body",
        ),
        BodyFailure::Truncated | BodyFailure::Io => (
            502,
            PROBLEM_BAD_GATEWAY,
            "Bad Gateway",
            "the upstream broke off the response body",
        ),
    };
    io.send_problem(status, ty, title, detail, &[]).await;
}

/// The whole upstream action, without cache.
pub(crate) async fn serve(
    p: &Proxy,
    gw: &GatewayShard,
    head: &RequestHead<'_, '_>,
    io: &mut ClientIo<'_>,
    path: &str,
    extra: &[(&str, &[u8])],
) {
    let Ok(out) = prepare(head, path, &p.up, io).await else {
        return;
    };
    let outcome = exchange(&p.up, gw, &out, io, p.timeout).await;
    io.put_buffer(out.bytes);
    match outcome {
        Outcome::Answer(a) => {
            forward(&p.up, gw, io, *a, extra, None).await;
        }
        other => answer_failure(io, other).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_std() {
        for ip in [
            "127.0.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "10.0.200.3",
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:1.2.3.4",
        ] {
            let parsed: std::net::IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 39];
            assert_eq!(format_ip(parsed, &mut buf), parsed.to_string());
        }
    }

    #[test]
    fn strip_prefix_only_at_a_segment_boundary() {
        let p = shardline_shard::Params::default();
        assert_eq!(upstream_path("/v1/users", Some("/v1"), None, &p), "/users");
        assert_eq!(upstream_path("/v1", Some("/v1"), None, &p), "/");
        assert_eq!(
            upstream_path("/v1x/users", Some("/v1"), None, &p),
            "/v1x/users"
        );
        assert_eq!(upstream_path("/v1/users", Some("/v1/"), None, &p), "/users");
    }
}
