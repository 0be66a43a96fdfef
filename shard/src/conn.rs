//! One client connection: read, parse every complete request, answer each,
//! one write per batch.
//!
//! Life of a connection:
//! - **idle**: no bytes pending; holds no buffers; waits up to `idle_timeout`
//!   for the next request, then closes silently.
//! - **reading a head**: some bytes of a request are pending; the whole head
//!   must arrive within `header_read_timeout` of its first byte, else 408.
//! - **reading a body**: the head is complete; each read must make progress
//!   within `idle_timeout`, else 408.
//!
//! After any framing error the error response is written after the
//! responses of the requests before it, and the connection is closed: bytes
//! behind a request we could not frame cannot be trusted to start a request
//! (RFC 9112 §11.2, request smuggling).

use std::cell::Cell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::error::{Error as ProtoError, ErrorKind};
use shardline_protocol::framing::BodyFraming;
use shardline_protocol::limits::MAX_HEADERS_CAP;
use shardline_protocol::request::{self, Parsed, Version};
use shardline_protocol::response::{self, EncodeOptions, CONTINUE_100};

use crate::app::{App, ConnContext, Dispatch, Exchange, Refusal};
use crate::buffers::ReadBuf;
use crate::shard::{HandshakeResult, ShardCounters, ShardState, TimeoutKind};
use crate::stream::{BodyLeft, ClientIo, StreamRequest};
use crate::transport::Transport;

/// Responses queued in one batch before they are written even though more
/// pipelined requests are buffered, so a deep pipeline cannot grow the
/// write buffer without bound.
pub const WRITE_BATCH_FLUSH_BYTES: usize = 256 * 1024;

/// After a closing response, unread input is discarded for at most this
/// long / this many bytes before the socket is closed (see `linger`).
/// Long enough for a client to read its error on a loaded host; short
/// enough that a client streaming garbage cannot hold the slot.
pub const LINGER_MAX: Duration = Duration::from_secs(2);
pub const LINGER_MAX_BYTES: usize = 256 * 1024;

/// Why `process` stopped.
enum Next {
    /// Everything buffered was handled, or the rest is an incomplete request.
    ReadMore,
    /// The write batch is full: write it, then process again without reading.
    Flush,
    /// Write what is queued, then close.
    Close,
    /// Write what is queued, then hand the request at the buffer's start
    /// (its head already consumed) to the app's streaming path.
    Stream(Box<StreamStart>),
}

/// A request the app serves on the streaming path.
struct StreamStart {
    token: usize,
    req: StreamRequest,
    body: BodyLeft,
    expect_continue: bool,
    version: Version,
    is_head: bool,
    keep_alive: bool,
}

/// A chunked body being received across reads.
struct ChunkedInProgress {
    decoder: ChunkedDecoder,
    body: Vec<u8>,
}

pub(crate) struct Conn {
    pub(crate) stream: Transport,
    /// The verified client certificate's identity (mTLS), set once the
    /// TLS handshake is done.
    pub(crate) tls_identity: Option<Box<str>>,
    pub(crate) peer: SocketAddr,
    pub(crate) shard: Rc<ShardState>,
    app: Rc<dyn App>,
    pub(crate) rbuf: Option<ReadBuf>,
    chunked: Option<ChunkedInProgress>,
    /// `100 Continue` already sent for the request at the buffer's start.
    continue_sent: bool,
    /// When the first byte of the pending request head arrived.
    head_started: Option<Instant>,
    /// The pending request's head is complete and its body is arriving
    /// (Content-Length or chunked): reads are bounded by `idle_timeout`
    /// each instead of the head deadline.
    reading_body: bool,
    /// Whether this connection currently counts as busy for draining.
    busy: bool,
    /// This connection's slot in the shard's read-deadline table.
    timeout_slot: usize,
    /// Keep serving new requests while the shard drains (the admin
    /// listener: `/readyz` must be able to say 503).
    pub(crate) drain_exempt: bool,
    /// When the latest read completed: the arrival time of every request
    /// parsed from it (one clock read per batch, not per request).
    pub(crate) read_at: Instant,
    /// When the requests of the latest read were answered (read once, at
    /// the first answer: `Exchange::finished`); cleared by each read.
    pub(crate) finished_at: Cell<Option<Instant>>,
}

impl Conn {
    pub(crate) fn new(
        stream: Transport,
        peer: SocketAddr,
        shard: Rc<ShardState>,
        app: Rc<dyn App>,
    ) -> Self {
        // Responses are written whole, once per batch: Nagle would only add
        // latency to them.
        let _ = stream.set_nodelay(true);
        let _ = stream.set_write_timeout(Some(shard.limits.idle_timeout));
        Conn {
            stream,
            tls_identity: None,
            peer,
            app,
            rbuf: None,
            chunked: None,
            continue_sent: false,
            head_started: None,
            reading_body: false,
            busy: false,
            timeout_slot: shard.timeouts.register(),
            drain_exempt: false,
            read_at: Instant::now(),
            finished_at: Cell::new(None),
            shard,
        }
    }

    pub(crate) async fn run(mut self, handshake_timeout: Duration) {
        if self.handshake(handshake_timeout).await.is_ok() {
            let _ = self.serve().await;
        }
        self.set_busy(false);
        if let Some(b) = self.rbuf.take() {
            self.shard.pool.put_read(b);
        }
        self.shard.timeouts.release(self.timeout_slot);
    }

    fn set_busy(&mut self, busy: bool) {
        if self.busy != busy {
            self.busy = busy;
            self.shard.set_busy_delta(busy);
        }
    }

    fn has_pending(&self) -> bool {
        self.rbuf.as_ref().is_some_and(|b| !b.is_empty())
    }

    async fn serve(&mut self) -> io::Result<()> {
        loop {
            // Wait for bytes, with the timeout that fits this state.
            let pending = self.has_pending() || self.reading_body;
            let timeout = match self.head_started {
                Some(started) if pending && !self.reading_body => self
                    .shard
                    .limits
                    .header_read_timeout
                    .saturating_sub(self.shard.timeouts.now().saturating_duration_since(started))
                    .max(Duration::from_millis(1)),
                _ => self.shard.limits.idle_timeout,
            };
            if self.shard.draining() && !pending && !self.drain_exempt {
                self.end_tls().await;
                return Ok(());
            }
            match self.fill(timeout).await {
                Ok(0) => {
                    // The client closed (for TLS: its close_notify, or a
                    // bare FIN, which the TLS layer also reports as 0).
                    self.end_tls().await;
                    return Ok(());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    if pending {
                        let kind = if self.reading_body {
                            TimeoutKind::Body
                        } else {
                            TimeoutKind::Header
                        };
                        self.shard.count_timeout(kind);
                        let bytes_out = self.send_request_timeout().await;
                        let request: &[u8] = self.rbuf.as_ref().map_or(&[], |b| b.pending());
                        self.app.refused(&Refusal {
                            status: 408,
                            method: request_method(request),
                            peer: self.peer,
                            received: self.read_at,
                            bytes_in: request.len() as u64,
                            bytes_out,
                        });
                        self.set_busy(false);
                        self.linger().await;
                    } else {
                        self.shard.count_timeout(TimeoutKind::Idle);
                        self.end_tls().await;
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
            self.read_at = Instant::now();
            self.finished_at.set(None);
            self.set_busy(true);
            if self.head_started.is_none() {
                self.head_started = Some(self.shard.timeouts.now());
            }

            loop {
                let mut out = self.shard.pool.take_write();
                let next = self.process(&mut out);
                if !out.is_empty() {
                    ShardCounters::add(&self.shard.counters.bytes_out, out.len() as u64);
                    let res = self.stream.write_all(&out).await;
                    self.shard.pool.put_write(out);
                    res?;
                } else {
                    self.shard.pool.put_write(out);
                }
                match next {
                    Next::Flush => continue,
                    Next::ReadMore => break,
                    Next::Close => {
                        self.set_busy(false);
                        self.linger().await;
                        return Ok(());
                    }
                    Next::Stream(start) => {
                        if !self.serve_stream(start).await {
                            self.set_busy(false);
                            self.linger().await;
                            return Ok(());
                        }
                        // Go on with any pipelined request behind it.
                        continue;
                    }
                }
            }

            if !self.has_pending() && !self.reading_body {
                self.head_started = None;
                self.set_busy(false);
                if let Some(b) = self.rbuf.take() {
                    self.shard.pool.put_read(b);
                }
            }
        }
    }

    /// Completes the TLS handshake within `timeout` (nothing to do for
    /// plain TCP). A client that stalls mid-handshake is cut off by the
    /// shard's deadline sweep like a slow request head.
    async fn handshake(&mut self, timeout: Duration) -> io::Result<()> {
        if self.stream.tls().is_none() {
            return Ok(());
        }
        let timeouts = &self.shard.timeouts;
        let slot = self.timeout_slot;
        timeouts.arm(slot, timeout);
        let stream = &mut self.stream;
        // The handshake writes its flights through glommio's ring.
        let ring = crate::readiness::RingWrite::begin();
        let res = poll_fn(|cx| {
            if timeouts.expired(slot) {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "TLS handshake timed out",
                )));
            }
            match stream.poll_handshake(cx) {
                Poll::Pending => {
                    timeouts.set_waker(slot, cx.waker());
                    Poll::Pending
                }
                ready => ready,
            }
        })
        .await;
        drop(ring);
        timeouts.disarm(slot);
        if res.is_ok() {
            let tls = self.stream.tls();
            let resumed = tls.is_some_and(|t| {
                t.connection().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
            });
            self.shard.count_tls_handshake(if resumed {
                HandshakeResult::Resumed
            } else {
                HandshakeResult::Full
            });
            self.tls_identity = tls
                .and_then(|t| crate::tls::client_identity(t.connection()))
                .map(String::into_boxed_str);
        } else {
            self.shard.count_tls_handshake(
                if res
                    .as_ref()
                    .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut)
                {
                    HandshakeResult::TimedOut
                } else {
                    HandshakeResult::Failed
                },
            );
            if self
                .stream
                .tls()
                .is_some_and(crate::tls::TlsStream::sent_plain_http)
            {
                self.answer_plain_http_on_tls_port().await;
            }
        }
        res
    }

    /// A client that spoke plain HTTP to the TLS port gets a plain 400
    /// saying so (as nginx does), not a TLS alert its HTTP parser cannot
    /// read. Written on the bare socket: no TLS session exists.
    async fn answer_plain_http_on_tls_port(&mut self) {
        let mut out = self.shard.pool.take_write();
        self.encode_closing_problem(
            &mut out,
            400,
            "https://shardline.dev/problems/plain-http-to-tls-port",
            "Bad Request",
            "this port speaks HTTPS: the request was sent as plain HTTP",
        );
        let _ = self.stream.write_plain(&out).await;
        self.shard.pool.put_write(out);
        // Not `linger`: its shutdown would send a TLS close_notify after
        // the plain answer.
        self.stream.close_plain(LINGER_MAX_BYTES, LINGER_MAX).await;
    }

    /// Reads once into the read buffer. An idle connection borrows a buffer
    /// from the pool only for the instant a read succeeds: reads are
    /// readiness-based (a non-blocking `recv`, then a wait on the shard's
    /// epoll instance or, with `readiness = "io_uring"`, a poll request to
    /// glommio's ring), so a pending read holds no buffer.
    ///
    /// `timeout` is enforced by the shard's deadline sweep (`timeouts`), not
    /// a timer per read.
    pub(crate) async fn fill(&mut self, timeout: Duration) -> io::Result<usize> {
        if let Some(n) = self.fill_without_poll().await {
            return n;
        }
        let timeouts = &self.shard.timeouts;
        let slot = self.timeout_slot;
        timeouts.arm(slot, timeout);
        let max_bytes = self.shard.max_read_buffer_bytes;
        let pool = &self.shard.pool;
        let counters = &self.shard.counters;
        let stream = &mut self.stream;
        let rbuf = &mut self.rbuf;
        let res = poll_fn(|cx| {
            if timeouts.expired(slot) {
                if rbuf.as_ref().is_some_and(ReadBuf::is_empty) {
                    if let Some(b) = rbuf.take() {
                        pool.put_read(b);
                    }
                }
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            let buf = rbuf.get_or_insert_with(|| pool.take_read());
            if !buf.make_room(max_bytes) {
                // Only reachable if a request outgrew every limit check.
                return Poll::Ready(Err(io::Error::other("read buffer limit reached")));
            }
            let end = buf.end;
            match stream.poll_read(cx, &mut buf.data[end..]) {
                Poll::Ready(Ok(n)) => {
                    buf.end += n;
                    ShardCounters::add(&counters.bytes_in, n as u64);
                    Poll::Ready(Ok(n))
                }
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => {
                    if buf.is_empty() {
                        if let Some(b) = rbuf.take() {
                            pool.put_read(b);
                        }
                    }
                    timeouts.set_waker(slot, cx.waker());
                    Poll::Pending
                }
            }
        })
        .await;
        timeouts.disarm(slot);
        res
    }

    /// Tries a plain socket a few times (`read_yields`), yielding to the
    /// shard's other tasks in between, before `fill` waits for readiness:
    /// under load the bytes usually arrive while the other connections run,
    /// and finding them skips the wait and its wake-up (with io_uring
    /// waits, an IPI measured at ~20% of a loaded gateway's CPU).
    /// `None`: nothing came, go and wait.
    async fn fill_without_poll(&mut self) -> Option<io::Result<usize>> {
        let (fd, watch) = self.stream.plain_socket()?;
        let tries = self.shard.limits.read_yields;
        if tries == 0 {
            return None;
        }
        // Right after a batch was answered the buffer is still held: look
        // at once (a pipelining client may have sent more).
        let look_first = self.rbuf.is_some();
        let buf = self.rbuf.get_or_insert_with(|| self.shard.pool.take_read());
        if !buf.make_room(self.shard.max_read_buffer_bytes) {
            return None;
        }
        let end = buf.end;
        let res =
            crate::look::recv_after_yields(fd, watch, &mut buf.data[end..], tries, look_first)
                .await;
        match res {
            Some(Ok(n)) => {
                buf.end += n;
                ShardCounters::add(&self.shard.counters.bytes_in, n as u64);
            }
            None if buf.is_empty() => {
                if let Some(b) = self.rbuf.take() {
                    self.shard.pool.put_read(b);
                }
            }
            _ => {}
        }
        res
    }

    /// Runs one streamed request; false when the connection must close.
    async fn serve_stream(&mut self, start: Box<StreamStart>) -> bool {
        let start = *start;
        let shard = Rc::clone(&self.shard);
        let app = Rc::clone(&self.app);
        let req = start.req;
        let outcome = {
            let mut io = ClientIo::new(
                self,
                start.body,
                start.expect_continue,
                start.version,
                start.is_head,
                start.keep_alive,
            );
            app.stream(start.token, &req, &mut io).await;
            // A broken exchange (the client went away mid-body, say) is cut,
            // not answered: there is nobody to tell, or nothing true to say.
            if !io.started() && !io.is_broken() {
                io.send_problem(
                    500,
                    crate::app::NO_RESPONSE_PROBLEM,
                    "Internal Server Error",
                    crate::app::NO_RESPONSE_DETAIL,
                    &[],
                )
                .await;
            }
            io.outcome()
        };
        shard.pool.put_write(req.into_bytes());
        shard.count_request();
        self.continue_sent = false;
        self.reading_body = false;
        self.head_started = if self.has_pending() {
            Some(shard.timeouts.now())
        } else {
            None
        };
        outcome.started && outcome.reusable
    }

    /// Closes after an error or `Connection: close` without losing the
    /// response: closing a socket that still has unread input makes the
    /// kernel send RST, which can destroy the response in the client's
    /// receive queue before it is read. So: shut down our sending side
    /// (the client sees EOF after the response), then read and discard what
    /// the client still sends, bounded in bytes and time.
    /// Ends a TLS connection that closes between requests with our
    /// `close_notify` (RFC 8446 §6.1, RFC 5246 §7.2.1: a closure alert is
    /// answered with one), so the client can tell the close from a
    /// truncation. Nothing to do for plain TCP, where the close is the FIN.
    async fn end_tls(&mut self) {
        if self.stream.tls().is_some() {
            let _ = self.stream.shutdown_write().await;
        }
    }

    async fn linger(&mut self) {
        let _ = self.stream.shutdown_write().await;
        let mut discarded = 0usize;
        let deadline = Instant::now() + LINGER_MAX;
        if let Some(b) = self.rbuf.take() {
            self.shard.pool.put_read(b);
        }
        while discarded < LINGER_MAX_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.fill(left).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    discarded += n;
                    if let Some(b) = self.rbuf.as_mut() {
                        b.start = 0;
                        b.end = 0;
                    }
                }
            }
        }
    }

    /// A problem response the connection loop writes on its own, before
    /// the connection closes (HTTP/1.1, `Connection: close`).
    fn encode_closing_problem(
        &self,
        out: &mut Vec<u8>,
        status: u16,
        problem_type: &str,
        title: &str,
        detail: &str,
    ) {
        let date = self.shard.date.borrow();
        response::encode_problem(
            out,
            status,
            problem_type,
            title,
            detail,
            &[],
            EncodeOptions {
                version: Version::Http11,
                keep_alive: false,
                head: false,
            },
            &date,
        );
    }

    /// Writes the 408; returns its length.
    async fn send_request_timeout(&mut self) -> u64 {
        let mut out = self.shard.pool.take_write();
        self.encode_closing_problem(
            &mut out,
            408,
            crate::app::REQUEST_TIMEOUT_PROBLEM,
            "Request Timeout",
            crate::app::REQUEST_TIMEOUT_DETAIL,
        );
        let len = out.len() as u64;
        ShardCounters::add(&self.shard.counters.bytes_out, len);
        let _ = self.stream.write_all(&out).await;
        self.shard.pool.put_write(out);
        len
    }

    /// Answers a request the protocol layer refuses and tells the app (its
    /// metrics and access log count it like any other answer).
    fn refuse(&self, out: &mut Vec<u8>, err: &ProtoError, request: &[u8], head: bool) {
        let before = out.len();
        write_error(out, err, &self.shard, head);
        self.app.refused(&Refusal {
            status: err.status(),
            method: request_method(request),
            peer: self.peer,
            received: self.read_at,
            bytes_in: request.len() as u64,
            bytes_out: (out.len() - before) as u64,
        });
    }

    /// Handles every complete request in the read buffer, appending the
    /// responses to `out`. Synchronous: nothing here awaits.
    fn process(&mut self, out: &mut Vec<u8>) -> Next {
        let Some(mut rbuf) = self.rbuf.take() else {
            return Next::ReadMore;
        };
        let next = self.process_buf(&mut rbuf, out);
        self.rbuf = Some(rbuf);
        next
    }

    fn process_buf(&mut self, rbuf: &mut ReadBuf, out: &mut Vec<u8>) -> Next {
        let shard = Rc::clone(&self.shard);
        let limits = &shard.limits.protocol;
        loop {
            if rbuf.is_empty() {
                return Next::ReadMore;
            }
            if out.len() >= WRITE_BATCH_FLUSH_BYTES {
                return Next::Flush;
            }
            let start = rbuf.start;
            let end = rbuf.end;
            // Most requests fit the small array; only one that does not
            // pays for zeroing the large one (and for a second parse).
            let mut few = [httparse_empty(); FIRST_HEADER_SLOTS];
            let mut many;
            let mut parsed = request::parse(&rbuf.data[start..end], &mut few, limits);
            if limits.max_headers > FIRST_HEADER_SLOTS
                && matches!(&parsed, Err(e) if e.kind() == ErrorKind::TooManyHeaders)
            {
                many = [httparse_empty(); MAX_HEADERS_CAP];
                parsed = request::parse(&rbuf.data[start..end], &mut many, limits);
            }
            let head = match parsed {
                Ok(Parsed::Complete(head)) => head,
                Ok(Parsed::Partial) => return Next::ReadMore,
                Err(err) => {
                    let request = &rbuf.data[start..end];
                    self.refuse(out, &err, request, is_head_request(request));
                    return Next::Close;
                }
            };
            let head_len = head.head_len;
            let expect_continue = head.expect_continue;
            let keep_alive = head.keep_alive && !shard.draining();
            let token = match self.app.dispatch(&head) {
                Dispatch::Inline(token) => token,
                Dispatch::Stream {
                    token,
                    max_body_bytes,
                } => {
                    let body = match head.framing {
                        BodyFraming::None => BodyLeft::Done,
                        BodyFraming::ContentLength(n) if n > max_body_bytes => {
                            let too_large = ProtoError::new(ErrorKind::BodyTooLarge);
                            let request = &rbuf.data[start..end];
                            self.refuse(out, &too_large, request, head.is_head());
                            return Next::Close;
                        }
                        BodyFraming::ContentLength(n) => BodyLeft::Length(n),
                        BodyFraming::Chunked => {
                            let mut l = *limits;
                            l.max_body_bytes = max_body_bytes;
                            BodyLeft::Chunked(Box::new(ChunkedDecoder::new(&l)))
                        }
                    };
                    let req = StreamRequest::new(
                        &head,
                        &rbuf.data[start..end],
                        shard.pool.take_write(),
                        self.peer,
                        shard.info,
                        self.read_at,
                    );
                    let start_info = StreamStart {
                        token,
                        req,
                        body,
                        expect_continue,
                        version: head.version,
                        is_head: head.is_head(),
                        keep_alive,
                    };
                    rbuf.consume(head_len);
                    return Next::Stream(Box::new(start_info));
                }
            };
            let inline_limit = shard.limits.inline_max_body_bytes;

            // Body: find it in the buffer, or ask for more bytes.
            let (body_range, chunked_body, consumed) = match head.framing {
                BodyFraming::None => (0..0, None, head_len),
                BodyFraming::ContentLength(n) if n > inline_limit => {
                    let too_large = ProtoError::new(ErrorKind::BodyTooLarge);
                    let request = &rbuf.data[start..end];
                    self.refuse(out, &too_large, request, head.is_head());
                    return Next::Close;
                }
                BodyFraming::ContentLength(n) => {
                    // n <= the inline limit, which bounds the read buffer.
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    let available = end - start - head_len;
                    if available < n {
                        self.reading_body = true;
                        shard.pool.reserve_pending(rbuf, head_len + n);
                        if expect_continue && !self.continue_sent {
                            out.extend_from_slice(CONTINUE_100);
                            self.continue_sent = true;
                        }
                        return Next::ReadMore;
                    }
                    let b = start + head_len;
                    (b..b + n, None, head_len + n)
                }
                BodyFraming::Chunked => {
                    let in_progress = self.chunked.get_or_insert_with(|| {
                        let mut l = *limits;
                        l.max_body_bytes = inline_limit;
                        ChunkedInProgress {
                            decoder: ChunkedDecoder::new(&l),
                            body: shard.pool.take_write(),
                        }
                    });
                    let raw_start = start + head_len;
                    match in_progress
                        .decoder
                        .decode(&rbuf.data[raw_start..end], &mut in_progress.body)
                    {
                        Ok(d) if d.done => (0..0, self.chunked.take(), head_len + d.consumed),
                        Ok(d) => {
                            // Drop the raw bytes already decoded so the buffer
                            // holds only the head and an unfinished chunk line.
                            rbuf.data
                                .copy_within(raw_start + d.consumed..end, raw_start);
                            rbuf.end -= d.consumed;
                            self.reading_body = true;
                            if expect_continue && !self.continue_sent {
                                out.extend_from_slice(CONTINUE_100);
                                self.continue_sent = true;
                            }
                            return Next::ReadMore;
                        }
                        Err(err) => {
                            if let Some(c) = self.chunked.take() {
                                shard.pool.put_write(c.body);
                            }
                            let request = &rbuf.data[start..end];
                            self.refuse(out, &err, request, head.is_head());
                            return Next::Close;
                        }
                    }
                }
            };

            let keep = {
                let body: &[u8] = match &chunked_body {
                    Some(c) => &c.body,
                    None => &rbuf.data[body_range],
                };
                let date = shard.date.borrow();
                let conn = ConnContext {
                    peer: self.peer,
                    shard: shard.info,
                    keep_alive,
                    draining: shard.draining(),
                    tls: self.stream.tls().is_some(),
                    tls_client_identity: self.tls_identity.as_deref(),
                    received: self.read_at,
                    finished: &self.finished_at,
                    bytes_in: consumed as u64,
                };
                let mut ex = Exchange::new(&head, body, conn, out, &date, token);
                self.app.handle(&mut ex);
                ex.answer_if_silent();
                ex.keep_alive()
            };
            shard.count_request();
            if let Some(c) = chunked_body {
                shard.pool.put_write(c.body);
            }
            self.continue_sent = false;
            self.reading_body = false;
            rbuf.consume(consumed);
            self.head_started = if rbuf.is_empty() {
                None
            } else {
                Some(shard.timeouts.now())
            };
            if !keep {
                return Next::Close;
            }
        }
    }
}

/// Header slots a request is first parsed with. The slot array is
/// initialised for every request parsed, and `MAX_HEADERS_CAP` slots (4 KiB)
/// cost ~130 instructions each time (callgrind, `/plaintext`); requests
/// seldom carry more than a dozen fields, and one with more than this is
/// parsed again with every slot the limit allows.
const FIRST_HEADER_SLOTS: usize = 24;

fn httparse_empty<'b>() -> httparse::Header<'b> {
    httparse::EMPTY_HEADER
}

/// Writes the problem response for a request that cannot be served.
/// `head`: the request is a HEAD (RFC 9110 §9.3.2: the answer has no
/// content, even a refusal; a pipelining client would read the problem
/// body as the start of its next response).
fn write_error(out: &mut Vec<u8>, err: &ProtoError, shard: &ShardState, head: bool) {
    shard.count_parse_error(err.kind());
    let date = shard.date.borrow();
    response::encode_error(
        out,
        err,
        EncodeOptions {
            version: Version::Http11,
            keep_alive: false,
            head,
        },
        &date,
    );
}

/// The method of unparsed request bytes, when the first token reads as
/// one (a short run of tchar before a space), else "-".
fn request_method(bytes: &[u8]) -> &str {
    /// Longer tokens are not logged as a method (a client must not be able
    /// to write arbitrary text into the log through a refused request).
    const MAX_METHOD_BYTES: usize = 16;
    let end = bytes
        .iter()
        .take(MAX_METHOD_BYTES + 1)
        .position(|&b| b == b' ')
        .unwrap_or(0);
    let token = &bytes[..end];
    if !token.is_empty()
        && token
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        std::str::from_utf8(token).unwrap_or("-")
    } else {
        "-"
    }
}

/// Whether unparsed request bytes are a HEAD request: the method is the
/// first token, readable even when the rest of the head is refused.
fn is_head_request(bytes: &[u8]) -> bool {
    bytes.starts_with(b"HEAD ")
}
