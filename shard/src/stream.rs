//! The streaming path: a request whose body is read, and whose response is
//! written, by the app itself (a proxy) rather than buffered whole.
//!
//! [`ClientIo`] is the app's handle on the client connection for one
//! request. It reads the request body incrementally (Content-Length or
//! de-chunked, with the route's size limit) from the bytes already buffered
//! after the head and then from the socket, and writes response bytes to
//! the socket. When the app's future ends, the connection loop looks at what
//! happened: a body not read to its end, or a response cut short, closes the
//! connection; otherwise it goes on with the next pipelined request.

use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Instant;

use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::date::DateCache;
use shardline_protocol::error::Error as ProtoError;
use shardline_protocol::framing::BodyFraming;
use shardline_protocol::request::{RequestHead, Version};
use shardline_protocol::response::{self, EncodeOptions, CONTINUE_100};

use crate::app::{ConnContext, Exchange, ShardInfo};
use crate::conn::Conn;
use crate::shard::{ShardCounters, TimeoutKind};

/// A streamed request's head, copied out of the read buffer so the buffer
/// can take the body. The parse result is kept as offsets into the copy, so
/// the app gets its [`RequestHead`] back without parsing again and without
/// a 4 KiB header array living inside its (boxed) future.
#[derive(Clone)]
pub struct StreamRequest {
    bytes: Vec<u8>,
    /// The method, target, path, query and field names (all ASCII, as the
    /// parser checked), copied once: `head()` hands them out as `&str`
    /// without validating UTF-8 again each time it is called. Their ranges
    /// index this, not `bytes`.
    text: String,
    method: Range<usize>,
    target: Range<usize>,
    path: Range<usize>,
    query: Option<Range<usize>>,
    version: Version,
    head_len: usize,
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
    fields: Vec<(Range<usize>, Range<usize>)>,
    pub peer: SocketAddr,
    pub shard: ShardInfo,
    /// When the read that completed the head finished.
    pub received: Instant,
}

/// Where `part` lies inside `base` (both from the same buffer).
fn offsets(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
    if start > base.len() {
        // Not inside the head (an empty static slice): an empty range.
        return 0..0;
    }
    start..start + part.len()
}

impl StreamRequest {
    /// `base` is the buffer `head` was parsed from, starting at the
    /// request's first byte; `copy` receives the head's bytes.
    pub(crate) fn new(
        head: &RequestHead<'_, '_>,
        base: &[u8],
        mut copy: Vec<u8>,
        peer: SocketAddr,
        shard: ShardInfo,
        received: Instant,
    ) -> Self {
        copy.clear();
        copy.extend_from_slice(&base[..head.head_len]);
        let base = &base[..head.head_len];
        let names: usize = head.headers.iter().map(|h| h.name.len()).sum();
        let mut text = String::with_capacity(
            head.method.len()
                + head.target.len()
                + head.path.len()
                + head.query.map_or(0, str::len)
                + names,
        );
        let mut keep = |part: &str| {
            let start = text.len();
            text.push_str(part);
            start..text.len()
        };
        let method = keep(head.method);
        let target = keep(head.target);
        let path = keep(head.path);
        let query = head.query.map(&mut keep);
        let fields = head
            .headers
            .iter()
            .map(|h| (keep(h.name), offsets(base, h.value)))
            .collect();
        StreamRequest {
            text,
            method,
            target,
            path,
            query,
            version: head.version,
            head_len: head.head_len,
            framing: head.framing,
            keep_alive: head.keep_alive,
            expect_continue: head.expect_continue,
            fields,
            bytes: copy,
            peer,
            shard,
            received,
        }
    }

    /// Length of the request head in bytes.
    pub fn head_len(&self) -> usize {
        self.bytes.len()
    }

    fn str_at(&self, r: &Range<usize>) -> &str {
        self.text.get(r.clone()).unwrap_or("")
    }

    /// The parsed head; `storage` holds its header fields (one small heap
    /// vector, sized to the request's field count).
    pub fn head<'h>(&'h self, storage: &'h mut Vec<httparse::Header<'h>>) -> RequestHead<'h, 'h> {
        storage.clear();
        storage.extend(self.fields.iter().map(|(n, v)| httparse::Header {
            name: self.str_at(n),
            value: self.bytes.get(v.clone()).unwrap_or(&[]),
        }));
        RequestHead {
            method: self.str_at(&self.method),
            target: self.str_at(&self.target),
            path: self.str_at(&self.path),
            query: self.query.as_ref().map(|q| self.str_at(q)),
            version: self.version,
            headers: storage,
            head_len: self.head_len,
            framing: self.framing,
            keep_alive: self.keep_alive,
            expect_continue: self.expect_continue,
        }
    }

    /// The same request with some header fields dropped and others added
    /// at the end (a policy's request id and `traceparent` for the
    /// upstream), rebuilt from the fields already parsed: the new head is
    /// never parsed again. `copy` receives the new head's bytes. Names and
    /// values come from a policy, which only adds tokens and visible ASCII.
    pub fn with_fields(
        &self,
        drop: impl Fn(&str) -> bool,
        add: &[(&str, &[u8])],
        mut copy: Vec<u8>,
    ) -> StreamRequest {
        copy.clear();
        let mut text = self.text.clone();
        let mut fields = Vec::with_capacity(self.fields.len() + add.len());
        copy.extend_from_slice(self.str_at(&self.method).as_bytes());
        copy.push(b' ');
        copy.extend_from_slice(self.str_at(&self.target).as_bytes());
        copy.extend_from_slice(match self.version {
            Version::Http10 => b" HTTP/1.0\r\n",
            _ => b" HTTP/1.1\r\n",
        });
        for (n, v) in &self.fields {
            let name = self.str_at(n);
            if !drop(name) {
                let value = write_field(&mut copy, name, self.bytes.get(v.clone()).unwrap_or(&[]));
                fields.push((n.clone(), value));
            }
        }
        for (name, value) in add {
            let at = text.len();
            text.push_str(name);
            let value = write_field(&mut copy, name, value);
            fields.push((at..text.len(), value));
        }
        copy.extend_from_slice(b"\r\n");
        StreamRequest {
            text,
            method: self.method.clone(),
            target: self.target.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            version: self.version,
            head_len: copy.len(),
            framing: self.framing,
            keep_alive: self.keep_alive,
            expect_continue: self.expect_continue,
            fields,
            bytes: copy,
            peer: self.peer,
            shard: self.shard,
            received: self.received,
        }
    }

    /// The head's bytes as received (request line through the blank line).
    pub fn head_bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Appends `name: value\r\n` to `head`; returns where the value lies.
fn write_field(head: &mut Vec<u8>, name: &str, value: &[u8]) -> Range<usize> {
    head.extend_from_slice(name.as_bytes());
    head.extend_from_slice(b": ");
    let start = head.len();
    head.extend_from_slice(value);
    let end = head.len();
    head.extend_from_slice(b"\r\n");
    start..end
}

/// Why reading a streamed request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// Chunked framing error or the route's size limit (its status says
    /// which: 400 or 413).
    Framing(ProtoError),
    /// The client closed before the body ended.
    Closed,
    /// No body bytes within the server's `idle_timeout`.
    TimedOut,
    Io(io::Error),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Framing(e) => write!(f, "{}", e.detail()),
            BodyError::Closed => f.write_str("the client closed the connection mid-body"),
            BodyError::TimedOut => f.write_str("the client stopped sending the body"),
            BodyError::Io(e) => write!(f, "reading the request body failed: {e}"),
        }
    }
}

pub(crate) enum BodyLeft {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    Done,
}

/// The app's handle on the client connection while it serves one streamed
/// request.
pub struct ClientIo<'c> {
    conn: &'c mut Conn,
    body: BodyLeft,
    expect_continue: bool,
    version: Version,
    is_head: bool,
    keep_alive: bool,
    /// Response bytes have been written.
    started: bool,
    /// A write failed or the app abandoned the response mid-way.
    broken: bool,
    /// Header field lines to add after the status line of the response
    /// (policies: request id, CORS, rate-limit state).
    inject: Vec<u8>,
    /// A body read ahead whole by a policy (validation, idempotency) and
    /// handed back: `read_body` serves it before anything else.
    replay: Vec<u8>,
    replay_at: usize,
    /// Every response byte written, kept while `capture_limit` allows
    /// (an idempotency key stores the response it replays).
    capture: Option<Vec<u8>>,
    capture_limit: usize,
    /// Status of the response written (read from its status line), 0
    /// before any.
    status: u16,
    bytes_out: u64,
    /// Decoded body bytes handed to the app.
    body_read: u64,
    /// For the access log: where the request was forwarded, and how the
    /// cache answered (set by the app).
    upstream: Option<SocketAddr>,
    cache_status: Option<&'static str>,
    /// W3C `traceparent` the app wants sent upstream for this request.
    traceparent: Option<String>,
}

impl<'c> ClientIo<'c> {
    pub(crate) fn new(
        conn: &'c mut Conn,
        body: BodyLeft,
        expect_continue: bool,
        version: Version,
        is_head: bool,
        keep_alive: bool,
    ) -> Self {
        ClientIo {
            conn,
            body,
            expect_continue,
            version,
            is_head,
            keep_alive,
            started: false,
            broken: false,
            inject: Vec::new(),
            replay: Vec::new(),
            replay_at: 0,
            capture: None,
            capture_limit: 0,
            status: 0,
            bytes_out: 0,
            body_read: 0,
            upstream: None,
            cache_status: None,
            traceparent: None,
        }
    }

    /// Adds header field lines (`Name: value\r\n` each, validated by the
    /// caller) to the response this request gets, whoever writes it: they
    /// are spliced in after the status line of the first response head
    /// written through [`ClientIo::write_all`].
    pub fn add_response_headers(&mut self, raw: &[u8]) {
        self.inject.extend_from_slice(raw);
    }

    /// Reads the rest of the body whole (at most `max` bytes more; the
    /// route's own limit applies too) and keeps it to be read again through
    /// [`ClientIo::read_body`]. Returns the whole body.
    pub async fn buffer_body(&mut self, max: usize) -> Result<&[u8], BodyError> {
        let mut all = std::mem::take(&mut self.replay);
        all.drain(..self.replay_at);
        self.replay_at = 0;
        while !self.original_body_done() {
            let room = max.saturating_sub(all.len()).max(1);
            let n = self.read_original(&mut all, room.min(64 * 1024)).await;
            match n {
                Ok(0) => break,
                Ok(_) if all.len() > max => {
                    self.replay = all;
                    return Err(BodyError::Framing(ProtoError::new(
                        shardline_protocol::error::ErrorKind::BodyTooLarge,
                    )));
                }
                Ok(_) => {}
                Err(e) => {
                    self.replay = all;
                    return Err(e);
                }
            }
        }
        self.replay = all;
        Ok(&self.replay)
    }

    /// Starts keeping a copy of every response byte written, up to `limit`
    /// bytes (past it the copy is dropped). The copy is what the app wrote,
    /// without the fields added by [`ClientIo::add_response_headers`].
    pub fn capture_response(&mut self, limit: usize) {
        self.capture = Some(Vec::new());
        self.capture_limit = limit;
    }

    /// The response bytes captured, if they all fit.
    pub fn take_captured(&mut self) -> Option<Vec<u8>> {
        self.capture.take()
    }

    /// Serves the request with a synchronous answer (what the inline path
    /// would run) from the streaming path: `f` gets an [`Exchange`] whose
    /// response is written to the client when it returns.
    pub async fn serve_inline(
        &mut self,
        head: &RequestHead<'_, '_>,
        body: &[u8],
        token: usize,
        f: impl FnOnce(&mut Exchange<'_>),
    ) {
        let mut out = self.take_buffer();
        // A streamed request is answered after its body: its own clock read.
        let finished = std::cell::Cell::new(None);
        let keep = {
            let date = self.conn.shard.date.borrow();
            let ctx = ConnContext {
                peer: self.conn.peer,
                shard: self.conn.shard.info,
                keep_alive: self.encode_options().keep_alive,
                draining: self.conn.shard.draining(),
                tls: self.conn.stream.tls().is_some(),
                tls_client_identity: self.conn.tls_identity.as_deref(),
                received: self.conn.read_at,
                finished: &finished,
                bytes_in: (head.head_len + body.len()) as u64,
            };
            let mut ex = Exchange::new(head, body, ctx, &mut out, &date, token);
            f(&mut ex);
            ex.answer_if_silent();
            ex.keep_alive()
        };
        if !keep {
            self.close_after();
        }
        let _ = self.write_all(&out).await;
        self.put_buffer(out);
    }

    /// Whether the response was cut short (a write failed, or the app
    /// aborted it).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    pub fn peer(&self) -> SocketAddr {
        self.conn.peer
    }

    pub fn shard(&self) -> ShardInfo {
        self.conn.shard.info
    }

    /// The request arrived over TLS.
    pub fn is_tls(&self) -> bool {
        self.conn.stream.tls().is_some()
    }

    /// The verified client certificate's identity (see
    /// [`crate::Exchange::tls_client_identity`]).
    pub fn tls_client_identity(&self) -> Option<&str> {
        self.conn.tls_identity.as_deref()
    }

    /// Whether the request has a body still to be read.
    pub fn has_body(&self) -> bool {
        self.replay_at < self.replay.len() || !self.original_body_done()
    }

    fn original_body_done(&self) -> bool {
        matches!(self.body, BodyLeft::Done | BodyLeft::Length(0))
    }

    /// The declared body length, if the request was framed by
    /// Content-Length (`None` for chunked). A body buffered whole
    /// ([`ClientIo::buffer_body`]) counts as Content-Length framed.
    pub fn content_length(&self) -> Option<u64> {
        let replay = (self.replay.len() - self.replay_at) as u64;
        match self.body {
            BodyLeft::Length(n) => Some(n + replay),
            BodyLeft::Done => Some(replay),
            BodyLeft::Chunked(_) => None,
        }
    }

    /// Bytes of a next request are already buffered behind this one (the
    /// client pipelines). Meaningful once this request's body is read.
    pub fn has_pipelined(&self) -> bool {
        self.body_done() && self.conn.rbuf.as_ref().is_some_and(|b| !b.is_empty())
    }

    pub fn body_done(&self) -> bool {
        !self.has_body()
    }

    /// Encoding options for the response to this request.
    pub fn encode_options(&self) -> EncodeOptions {
        EncodeOptions {
            version: self.version,
            keep_alive: self.keep_alive && !self.conn.shard.draining(),
            head: self.is_head,
        }
    }

    /// Closes the connection after this response. Only effective before
    /// the response head is encoded.
    pub fn close_after(&mut self) {
        self.keep_alive = false;
    }

    pub fn started(&self) -> bool {
        self.started
    }

    /// Status of the response written (0 before any was).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Response bytes written to the client so far.
    pub fn bytes_out(&self) -> u64 {
        self.bytes_out
    }

    /// Notes the upstream address the request went to (the last try's),
    /// for the access log.
    pub fn set_upstream(&mut self, addr: SocketAddr) {
        self.upstream = Some(addr);
    }

    pub fn upstream(&self) -> Option<SocketAddr> {
        self.upstream
    }

    /// Sets the `traceparent` value to send upstream (tracing).
    pub fn set_traceparent(&mut self, value: String) {
        self.traceparent = Some(value);
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.traceparent.as_deref()
    }

    /// Notes how a response cache answered (`HIT`, `MISS`, ...), for the
    /// access log.
    pub fn set_cache_status(&mut self, status: &'static str) {
        self.cache_status = Some(status);
    }

    pub fn cache_status(&self) -> Option<&'static str> {
        self.cache_status
    }

    /// Decoded request body bytes read so far.
    pub fn body_read(&self) -> u64 {
        self.body_read
    }

    /// Marks the response as cut short: the connection closes afterwards,
    /// so the client sees a truncated body rather than a second response.
    pub fn abort(&mut self) {
        self.broken = true;
    }

    /// Runs `f` with the shard's cached Date value.
    pub fn with_date<R>(&self, f: impl FnOnce(&DateCache) -> R) -> R {
        f(&self.conn.shard.date.borrow())
    }

    /// A pooled buffer for building output; give it back with
    /// [`ClientIo::put_buffer`].
    pub fn take_buffer(&self) -> Vec<u8> {
        self.conn.shard.pool.take_write()
    }

    pub fn put_buffer(&self, buf: Vec<u8>) {
        self.conn.shard.pool.put_write(buf);
    }

    /// Writes response bytes to the client.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if !self.started {
            self.status = status_of(bytes);
        }
        self.started = true;
        self.bytes_out += bytes.len() as u64;
        ShardCounters::add(&self.conn.shard.counters.bytes_out, bytes.len() as u64);
        if let Some(c) = &mut self.capture {
            if c.len() + bytes.len() <= self.capture_limit {
                c.extend_from_slice(bytes);
            } else {
                self.capture = None;
            }
        }
        if !self.inject.is_empty() && !bytes.starts_with(b"HTTP/1.1 1") {
            if let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
                let inject = std::mem::take(&mut self.inject);
                let mut joined = self.take_buffer();
                joined.extend_from_slice(&bytes[..eol + 2]);
                joined.extend_from_slice(&inject);
                joined.extend_from_slice(&bytes[eol + 2..]);
                let res = self.conn.stream.write_all(&joined).await;
                self.put_buffer(joined);
                if res.is_err() {
                    self.broken = true;
                }
                return res;
            }
        }
        let res = self.conn.stream.write_all(bytes).await;
        if res.is_err() {
            self.broken = true;
        }
        res
    }

    /// Writes a whole response with `body` (only before anything else was
    /// written; ignored after).
    pub async fn send_response(&mut self, resp: &response::Response<'_>) {
        if self.started {
            self.broken = true;
            return;
        }
        let mut out = self.take_buffer();
        let opts = self.encode_options();
        self.with_date(|date| response::encode(&mut out, resp, opts, date));
        let _ = self.write_all(&out).await;
        self.put_buffer(out);
    }

    /// Answers a request whose body could not be read: a framing error or
    /// a body over the limit gets its 400/413, a body that stopped arriving
    /// within `idle_timeout` a 408 (as on the inline path), both closing the
    /// connection after; a client that closed or broke the connection is
    /// cut.
    pub async fn answer_body_failure(&mut self, e: BodyError) {
        match e {
            BodyError::Framing(err) => {
                self.close_after();
                self.send_problem(
                    err.status(),
                    err.problem_type(),
                    err.title(),
                    err.detail(),
                    &[],
                )
                .await;
            }
            BodyError::TimedOut => {
                self.close_after();
                self.send_problem(
                    408,
                    crate::app::REQUEST_TIMEOUT_PROBLEM,
                    "Request Timeout",
                    crate::app::REQUEST_TIMEOUT_DETAIL,
                    &[],
                )
                .await;
            }
            BodyError::Closed | BodyError::Io(_) => self.abort(),
        }
    }

    /// Writes a whole problem+json response (only before anything else was
    /// written; ignored after).
    pub async fn send_problem(
        &mut self,
        status: u16,
        problem_type: &str,
        title: &str,
        detail: &str,
        extra_headers: &[(&str, &[u8])],
    ) {
        if self.started {
            self.broken = true;
            return;
        }
        let mut out = self.take_buffer();
        let opts = self.encode_options();
        self.with_date(|date| {
            response::encode_problem(
                &mut out,
                status,
                problem_type,
                title,
                detail,
                extra_headers,
                opts,
                date,
            );
        });
        let _ = self.write_all(&out).await;
        self.put_buffer(out);
    }

    /// Appends the next decoded body bytes to `out` (at most `max` for a
    /// Content-Length body; a chunked body yields what one read decoded).
    /// `Ok(0)` is the end of the body.
    pub async fn read_body(&mut self, out: &mut Vec<u8>, max: usize) -> Result<usize, BodyError> {
        if self.replay_at < self.replay.len() {
            let take = (self.replay.len() - self.replay_at).min(max.max(1));
            out.extend_from_slice(&self.replay[self.replay_at..self.replay_at + take]);
            self.replay_at += take;
            if self.replay_at == self.replay.len() {
                self.replay = Vec::new();
                self.replay_at = 0;
            }
            return Ok(take);
        }
        self.read_original(out, max).await
    }

    async fn read_original(&mut self, out: &mut Vec<u8>, max: usize) -> Result<usize, BodyError> {
        if self.expect_continue && self.has_body() {
            // RFC 9110 §10.1.1: the client waits for this before sending
            // the body; we send it once we actually want the body.
            self.expect_continue = false;
            if !self.started {
                if let Err(e) = self.conn.stream.write_all(CONTINUE_100).await {
                    return Err(BodyError::Io(e));
                }
            }
        }
        let max = max.max(1);
        loop {
            let pending = self.conn.rbuf.as_ref().map_or(0, |b| b.end - b.start);
            match &mut self.body {
                BodyLeft::Done | BodyLeft::Length(0) => {
                    self.body = BodyLeft::Done;
                    return Ok(0);
                }
                BodyLeft::Length(left) if pending > 0 => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(pending)
                        .min(max);
                    if let Some(rb) = self.conn.rbuf.as_mut() {
                        out.extend_from_slice(&rb.data[rb.start..rb.start + take]);
                        rb.consume(take);
                    }
                    *left -= take as u64;
                    self.body_read += take as u64;
                    return Ok(take);
                }
                BodyLeft::Chunked(dec) if pending > 0 => {
                    let before = out.len();
                    let Some(rb) = self.conn.rbuf.as_mut() else {
                        continue;
                    };
                    let d = dec
                        .decode(&rb.data[rb.start..rb.end], out)
                        .map_err(BodyError::Framing)?;
                    rb.consume(d.consumed);
                    let produced = out.len() - before;
                    self.body_read += produced as u64;
                    if d.done {
                        self.body = BodyLeft::Done;
                        return Ok(produced);
                    }
                    if produced > 0 {
                        return Ok(produced);
                    }
                    if d.consumed > 0 {
                        continue;
                    }
                    // An incomplete chunk line: read more behind it.
                }
                _ => {}
            }
            let idle = self.conn.shard.limits.idle_timeout;
            match self.conn.fill(idle).await {
                Ok(0) => return Err(BodyError::Closed),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    self.conn.shard.count_timeout(TimeoutKind::Body);
                    return Err(BodyError::TimedOut);
                }
                Err(e) => return Err(BodyError::Io(e)),
            }
        }
    }

    /// What the connection loop needs once the app is done.
    pub(crate) fn outcome(&self) -> StreamOutcome {
        StreamOutcome {
            started: self.started,
            // A buffered body not read back does not matter: the socket's
            // framing is what a next request depends on.
            reusable: !self.broken && self.original_body_done() && self.encode_options().keep_alive,
        }
    }
}

pub(crate) struct StreamOutcome {
    pub started: bool,
    pub reusable: bool,
}

/// The status code of a response from its first bytes (`HTTP/1.1 200 ...`);
/// 0 when they are not a status line (the app wrote something odd).
fn status_of(bytes: &[u8]) -> u16 {
    match bytes.get(9..12) {
        Some(d) if bytes.starts_with(b"HTTP/1.") && d.iter().all(u8::is_ascii_digit) => {
            d.iter().fold(0u16, |n, &b| n * 10 + u16::from(b - b'0'))
        }
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_from_status_line() {
        assert_eq!(
            super::status_of(b"HTTP/1.1 503 Service Unavailable\r\n"),
            503
        );
        assert_eq!(super::status_of(b"HTTP/1.0 200 OK"), 200);
        assert_eq!(super::status_of(b"HTTP/1.1 2"), 0);
        assert_eq!(super::status_of(b"garbage in the pipe"), 0);
    }

    #[test]
    fn with_fields_matches_a_parse_of_the_rewritten_head() {
        use shardline_protocol::limits::Limits;
        use shardline_protocol::request::{parse, Parsed};
        let raw: &[u8] = b"POST /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-Request-Id: old\r\n\
            Content-Length: 3\r\nAccept:  text/plain\r\n\r\nabc";
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let Ok(Parsed::Complete(head)) = parse(raw, &mut headers, &Limits::default()) else {
            panic!("test head parses");
        };
        let shard = crate::app::ShardInfo {
            id: 0,
            cpu: 0,
            count: 1,
        };
        let peer = "127.0.0.1:1".parse().unwrap();
        let req = super::StreamRequest::new(
            &head,
            raw,
            Vec::new(),
            peer,
            shard,
            std::time::Instant::now(),
        );
        let out = req.with_fields(
            |n| n.eq_ignore_ascii_case("x-request-id"),
            &[("X-Request-Id", b"new-id"), ("traceparent", b"00-1-2-01")],
            Vec::new(),
        );
        let expected: &[u8] = b"POST /a/b?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\
            Accept: text/plain\r\nX-Request-Id: new-id\r\ntraceparent: 00-1-2-01\r\n\r\n";
        assert_eq!(out.head_bytes(), expected);
        let mut again = [httparse::EMPTY_HEADER; 16];
        let Ok(Parsed::Complete(reparsed)) = parse(expected, &mut again, &Limits::default()) else {
            panic!("rewritten head parses");
        };
        let mut storage = Vec::new();
        let rebuilt = out.head(&mut storage);
        assert_eq!(rebuilt.method, reparsed.method);
        assert_eq!(rebuilt.target, reparsed.target);
        assert_eq!(rebuilt.path, reparsed.path);
        assert_eq!(rebuilt.query, reparsed.query);
        assert_eq!(rebuilt.head_len, reparsed.head_len);
        assert_eq!(rebuilt.framing, reparsed.framing);
        assert_eq!(rebuilt.keep_alive, reparsed.keep_alive);
        let pairs = |h: &[httparse::Header<'_>]| -> Vec<(String, Vec<u8>)> {
            h.iter()
                .map(|f| (f.name.to_string(), f.value.to_vec()))
                .collect()
        };
        assert_eq!(pairs(rebuilt.headers), pairs(reparsed.headers));
    }
}
