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
use std::time::Instant;

use futures_lite::io::AsyncWriteExt;
use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::date::DateCache;
use shardline_protocol::error::Error as ProtoError;
use shardline_protocol::limits::Limits;
use shardline_protocol::request::{self, Parsed, RequestHead, Version};
use shardline_protocol::response::{self, EncodeOptions, CONTINUE_100};

use crate::app::ShardInfo;
use crate::conn::Conn;
use crate::shard::{ShardCounters, TimeoutKind};

/// A streamed request's head, copied out of the read buffer so the buffer
/// can take the body.
pub struct StreamRequest {
    head: Vec<u8>,
    limits: Limits,
    pub peer: SocketAddr,
    pub shard: ShardInfo,
    /// When the read that completed the head finished.
    pub received: Instant,
}

impl StreamRequest {
    pub(crate) fn new(
        head: Vec<u8>,
        limits: Limits,
        peer: SocketAddr,
        shard: ShardInfo,
        received: Instant,
    ) -> Self {
        StreamRequest {
            head,
            limits,
            peer,
            shard,
            received,
        }
    }

    /// Length of the request head in bytes.
    pub fn head_len(&self) -> usize {
        self.head.len()
    }

    /// The parsed head. The bytes parsed once already, so this cannot fail
    /// in practice; `None` is answered 500 by callers rather than trusted.
    pub fn head<'h>(
        &'h self,
        headers: &'h mut [httparse::Header<'h>],
    ) -> Option<RequestHead<'h, 'h>> {
        match request::parse(&self.head, headers, &self.limits) {
            Ok(Parsed::Complete(h)) => Some(h),
            _ => None,
        }
    }

    pub(crate) fn into_bytes(self) -> Vec<u8> {
        self.head
    }
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
            status: 0,
            bytes_out: 0,
            body_read: 0,
            upstream: None,
            cache_status: None,
            traceparent: None,
        }
    }

    pub fn peer(&self) -> SocketAddr {
        self.conn.peer
    }

    pub fn shard(&self) -> ShardInfo {
        self.conn.shard.info
    }

    /// Whether the request has a body still to be read.
    pub fn has_body(&self) -> bool {
        !matches!(self.body, BodyLeft::Done | BodyLeft::Length(0))
    }

    /// The declared body length, if the request was framed by
    /// Content-Length (`None` for chunked).
    pub fn content_length(&self) -> Option<u64> {
        match self.body {
            BodyLeft::Length(n) => Some(n),
            BodyLeft::Done => Some(0),
            BodyLeft::Chunked(_) => None,
        }
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
        let res = self.conn.stream.write_all(bytes).await;
        if res.is_err() {
            self.broken = true;
        }
        res
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
            reusable: !self.broken && self.body_done() && self.encode_options().keep_alive,
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
}
