//! One HTTP/1.1 exchange with an upstream target: connect (or reuse),
//! send the request bytes, read the response head, then the body as a
//! stream of decoded pieces.
//!
//! Strictness matters here as much as on the client side: a response we
//! cannot frame unambiguously (see `protocol::response_head`) is a
//! [`Failure::Malformed`], the connection is dropped, and the client gets a
//! 502 (or, once its response has started, a cut connection); a pooled
//! connection is only returned to the pool when its response ended exactly
//! where its framing said.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::ops::{ControlFlow, Range};
use std::time::{Duration, Instant};

use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::upstream::tls::UpstreamStream;
use crate::upstream::Target;
use shardline_protocol::chunked::ChunkedDecoder;
use shardline_protocol::limits::Limits;
use shardline_protocol::response_head::{
    self, ParsedResponse, ResponseError, ResponseFraming, DEFAULT_MAX_RESPONSE_HEAD_BYTES,
};
use shardline_shard::look::recv_after_yields;

/// Most header fields accepted in an upstream response head. Matches the
/// request side's default; an upstream sending more is misbehaving.
pub const MAX_RESPONSE_HEADERS: usize = 100;

/// Interim (1xx) responses skipped before the final one; an upstream that
/// sends more is stuck in a loop, not informing us.
const MAX_INTERIM_RESPONSES: usize = 8;

/// Why a try failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Connecting failed (refused, unreachable): nothing was sent.
    Connect(io::Error),
    /// Connecting did not finish within `connect_timeout`: nothing was sent.
    ConnectTimeout,
    /// The connection broke before a response head arrived.
    Io(io::Error),
    /// The response head is malformed or ambiguously framed.
    Malformed(ResponseError),
    /// The request's deadline passed.
    Timeout,
    /// Not tried: the identical request this one was coalesced with (a
    /// cache miss's leader) failed this way just now.
    Coalesced { status: u16, detail: String },
}

impl Failure {
    /// Nothing reached the upstream, so any request may be tried again.
    pub(crate) fn nothing_sent(&self) -> bool {
        matches!(self, Failure::Connect(_) | Failure::ConnectTimeout)
    }

    pub(crate) fn status(&self) -> u16 {
        match self {
            Failure::ConnectTimeout | Failure::Timeout => 504,
            Failure::Coalesced { status, .. } => *status,
            _ => 502,
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            Failure::Connect(e) => format!("could not connect to the upstream: {e}"),
            Failure::ConnectTimeout => "connecting to the upstream timed out".to_string(),
            Failure::Io(e) => format!("the upstream connection failed before a response: {e}"),
            Failure::Malformed(e) => {
                format!("the upstream sent an invalid response: {}", e.reason())
            }
            Failure::Timeout => "the upstream did not answer in time".to_string(),
            Failure::Coalesced { detail, .. } => format!(
                "{detail} (for an identical request this one waited on, so it was not sent again)"
            ),
        }
    }
}

/// Runs `fut` until `deadline`; `None` if the deadline passed first (a
/// deadline a second or more away is checked by the shard's sweep, up to
/// one tick late: `shardline_shard::timeouts::within`).
pub(crate) fn with_deadline<T>(
    deadline: Instant,
    fut: impl Future<Output = T>,
) -> impl Future<Output = Option<T>> {
    shardline_shard::timeouts::within(deadline, fut)
}

/// Connects to `target` (and, for an `https://` target, completes the TLS
/// handshake, all within `timeout`: nothing is sent before it succeeds, so
/// a failure is retryable like a refused connect).
pub(crate) async fn connect(target: &Target, timeout: Duration) -> Result<UpstreamStream, Failure> {
    let started = Instant::now();
    let tcp = connect_tcp(target.addr, timeout).await?;
    let Some(tls) = &target.tls else {
        return Ok(UpstreamStream::plain(tcp));
    };
    match with_deadline(started + timeout, UpstreamStream::tls(tcp, tls)).await {
        Some(Ok(s)) => Ok(s),
        Some(Err(e)) => Err(Failure::Connect(io::Error::new(
            e.kind(),
            format!("TLS handshake with the upstream failed: {e}"),
        ))),
        None => Err(Failure::ConnectTimeout),
    }
}

/// A plain TCP connection to `addr` (the OTLP exporter's collector).
pub(crate) async fn connect_plain(
    addr: SocketAddr,
    timeout: Duration,
) -> Result<UpstreamStream, Failure> {
    connect_tcp(addr, timeout).await.map(UpstreamStream::plain)
}

async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, Failure> {
    match TcpStream::connect_timeout(addr, timeout).await {
        Ok(s) => {
            // Requests are written whole; Nagle would only delay them.
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Err(e) => {
            let e: io::Error = e.into();
            if e.kind() == io::ErrorKind::TimedOut {
                Err(Failure::ConnectTimeout)
            } else {
                Err(Failure::Connect(e))
            }
        }
    }
}

/// A read buffer for an upstream response: `data[start..end]` is unread.
pub(crate) struct RespBuf {
    pub data: Vec<u8>,
    pub start: usize,
    pub end: usize,
    /// `data` grows (doubling) up to this: when a head does not fit yet,
    /// and when a read fills all the room there was (a large body).
    max: usize,
    /// Non-blocking reads tried (yielding in between) before a read waits
    /// for readiness: `[server] read_yields`.
    pub yields: u32,
}

impl RespBuf {
    /// A buffer that stays the size of `data`.
    pub(crate) fn new(data: Vec<u8>) -> Self {
        let max = data.len();
        RespBuf::growable(data, max)
    }

    /// A buffer that may grow to `max` bytes.
    pub(crate) fn growable(data: Vec<u8>, max: usize) -> Self {
        RespBuf {
            max: max.max(data.len()),
            data,
            start: 0,
            end: 0,
            yields: 0,
        }
    }

    fn grow(&mut self) {
        let len = (self.data.len() * 2).clamp(1, self.max);
        self.data.resize(len, 0);
    }

    pub(crate) fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start >= self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads once from `stream` behind the unread bytes; `Ok(0)` is EOF.
    pub(crate) async fn fill(&mut self, stream: &mut UpstreamStream) -> io::Result<usize> {
        if self.end == self.data.len() {
            if self.start == 0 {
                if self.data.len() >= self.max {
                    return Err(io::Error::other("upstream read buffer full"));
                }
                self.grow();
            } else {
                self.data.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
        }
        let room = self.data.len() - self.end;
        // The upstream's answer usually arrives while the shard serves its
        // other connections: look for it after yielding to them, before
        // waiting for readiness (see `config::DEFAULT_READ_YIELDS`).
        if let Some((fd, watch)) = stream.plain_socket() {
            let buf = &mut self.data[self.end..];
            if let Some(res) = recv_after_yields(fd, watch, buf, self.yields, false).await {
                let n = res?;
                self.filled(n, room);
                return Ok(n);
            }
        }
        let n = stream.read(&mut self.data[self.end..]).await?;
        self.filled(n, room);
        Ok(n)
    }

    /// Takes `n` bytes read into `room`; a read that filled all of it
    /// (more was likely waiting) makes the next one larger.
    fn filled(&mut self, n: usize, room: usize) {
        self.end += n;
        if n == room && self.data.len() < self.max {
            self.grow();
        }
    }
}

/// A parsed response head. The bytes stay in the buffer the head was read
/// into, and header fields are kept as ranges into it, so nothing is
/// copied; they stay valid until the buffer is next filled (forward the
/// head before reading the body).
pub(crate) struct Head {
    pub status: u16,
    pub framing: ResponseFraming,
    pub keep_alive: bool,
    pub head_len: usize,
    pub fields: Vec<(Range<usize>, Range<usize>)>,
}

impl Head {
    pub(crate) fn field<'a>(&self, buf: &'a [u8], i: usize) -> (&'a str, &'a [u8]) {
        let (n, v) = &self.fields[i];
        (
            std::str::from_utf8(&buf[n.clone()]).unwrap_or(""),
            &buf[v.clone()],
        )
    }

    pub(crate) fn fields<'a>(
        &'a self,
        buf: &'a [u8],
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        (0..self.fields.len()).map(move |i| self.field(buf, i))
    }

    /// RFC 9110 §15.3.5: a 204 has no body; one that declares a length or
    /// a coding anyway may yet send the body it declared, late, into the
    /// next request's response, so its connection must not be reused.
    pub(crate) fn declares_body_on_204(&self, buf: &[u8]) -> bool {
        self.status == 204
            && (self.get(buf, "transfer-encoding").is_some()
                || self
                    .get(buf, "content-length")
                    .is_some_and(|v| v.iter().any(|&b| (b'1'..=b'9').contains(&b))))
    }

    pub(crate) fn get<'a>(&'a self, buf: &'a [u8], name: &str) -> Option<&'a [u8]> {
        self.fields(buf)
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// A Transfer-Encoding names a coding besides `chunked` (`gzip, chunked`).
/// We decode chunked and re-frame the body ourselves, so such a coding
/// would reach the client unlabelled (compressed bytes it takes for the
/// body), and the cache could not say how its copy is coded: refused (502).
fn other_transfer_coding(headers: &[httparse::Header<'_>]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|coding| !coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

fn range_in(base: &[u8], part: &[u8]) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    start..start + part.len()
}

/// Upstream response heads seldom carry more than a dozen fields; one
/// with more than this is parsed again with all [`MAX_RESPONSE_HEADERS`]
/// slots (zeroing the large array for every response cost ~750
/// instructions per proxied request in callgrind).
const FIRST_RESPONSE_HEADER_SLOTS: usize = 24;

/// Parses `pending` as a response head and hands the result to `f`: first
/// with [`FIRST_RESPONSE_HEADER_SLOTS`] slots, again with all
/// [`MAX_RESPONSE_HEADERS`] only when those were too few.
fn with_parsed_head<R>(
    pending: &[u8],
    request_was_head: bool,
    f: impl FnOnce(Result<ParsedResponse<'_, '_>, ResponseError>) -> R,
) -> R {
    let mut few = [httparse::EMPTY_HEADER; FIRST_RESPONSE_HEADER_SLOTS];
    let mut many;
    let mut parsed = response_head::parse_response(
        pending,
        &mut few,
        DEFAULT_MAX_RESPONSE_HEAD_BYTES,
        request_was_head,
    );
    if matches!(parsed, Err(ResponseError::TooManyHeaders)) {
        many = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        parsed = response_head::parse_response(
            pending,
            &mut many,
            DEFAULT_MAX_RESPONSE_HEAD_BYTES,
            request_was_head,
        );
    }
    f(parsed)
}

/// Parses the response head pending in `data[start..end]`; `None` while it
/// is incomplete. Field ranges index `data`.
fn parse_head(
    data: &[u8],
    start: usize,
    end: usize,
    request_was_head: bool,
) -> Result<Option<Head>, Failure> {
    with_parsed_head(&data[start..end], request_was_head, |parsed| match parsed {
        Ok(ParsedResponse::Complete(h)) => {
            if h.framing == ResponseFraming::Chunked && other_transfer_coding(h.headers) {
                return Err(Failure::Malformed(ResponseError::UnsupportedTransferCoding));
            }
            let fields = h
                .headers
                .iter()
                .map(|f| (range_in(data, f.name.as_bytes()), range_in(data, f.value)))
                .collect();
            Ok(Some(Head {
                status: h.status,
                framing: h.framing,
                keep_alive: h.keep_alive,
                head_len: h.head_len,
                fields,
            }))
        }
        Ok(ParsedResponse::Partial) => Ok(None),
        Err(e) => Err(Failure::Malformed(e)),
    })
}

/// Reads the final response head (interim 1xx responses are skipped; a 101
/// we never asked for is malformed). `buf.start` is moved past the head;
/// its bytes stay in place until the next fill.
pub(crate) async fn read_head(
    stream: &mut UpstreamStream,
    buf: &mut RespBuf,
    request_was_head: bool,
) -> Result<Head, Failure> {
    let mut interim = 0;
    loop {
        // Nothing read yet (the usual case right after sending): wait for
        // bytes rather than parse an empty buffer first.
        let parsed = if buf.start == buf.end {
            None
        } else {
            parse_head(&buf.data, buf.start, buf.end, request_was_head)?
        };
        match parsed {
            Some(h) if h.status == 101 => {
                return Err(Failure::Malformed(ResponseError::Malformed(
                    "101 Switching Protocols without an upgrade request",
                )))
            }
            Some(h) if h.status < 200 => {
                interim += 1;
                if interim > MAX_INTERIM_RESPONSES {
                    return Err(Failure::Malformed(ResponseError::Malformed(
                        "too many interim responses",
                    )));
                }
                buf.consume(h.head_len);
            }
            Some(h) => {
                buf.start += h.head_len;
                return Ok(h);
            }
            None => match buf.fill(stream).await {
                Ok(0) => {
                    return Err(Failure::Io(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection",
                    )))
                }
                Ok(_) => {}
                Err(e) => return Err(Failure::Io(e)),
            },
        }
    }
}

/// Called while the request body is still going out, when the upstream's
/// socket has something to read: reads it and drops interim (1xx)
/// responses (an upstream's `100 Continue`). `true` when the upstream has
/// refused the request (a final status of 400 or more), closed, or sent
/// something unparseable: stop sending the body and read the answer. A
/// success that starts early (an upstream that streams its answer while it
/// reads) and a partly received head stay in `buf` for [`read_head`], and
/// the body goes on meanwhile.
pub(crate) async fn answered_early(
    stream: &mut UpstreamStream,
    buf: &mut RespBuf,
    request_was_head: bool,
) -> bool {
    match buf.fill(stream).await {
        Ok(0) | Err(_) => return true,
        Ok(_) => {}
    }
    loop {
        // An interim head to skip, or the verdict.
        let step = with_parsed_head(buf.pending(), request_was_head, |parsed| match parsed {
            Ok(ParsedResponse::Complete(h)) if h.status < 200 && h.status != 101 => {
                ControlFlow::Continue(h.head_len)
            }
            Ok(ParsedResponse::Partial) => ControlFlow::Break(false),
            Ok(ParsedResponse::Complete(h)) => {
                ControlFlow::Break(h.status >= 400 || h.status == 101)
            }
            Err(_) => ControlFlow::Break(true),
        });
        match step {
            ControlFlow::Continue(len) => {
                buf.consume(len);
                if buf.pending().is_empty() {
                    return false;
                }
            }
            ControlFlow::Break(verdict) => return verdict,
        }
    }
}

/// Reads a response body as decoded pieces.
pub(crate) struct BodyReader {
    state: BodyState,
    /// Bytes of body passed on so far.
    pub delivered: u64,
}

enum BodyState {
    Length(u64),
    Chunked(Box<ChunkedDecoder>),
    UntilClose,
    Done,
}

/// Why reading an upstream body failed after its head was accepted.
#[derive(Debug)]
pub(crate) enum BodyFailure {
    /// Closed before the framing said the body ended.
    Truncated,
    /// A chunked framing error.
    Framing,
    Io,
    Timeout,
}

impl BodyReader {
    pub(crate) fn new(framing: ResponseFraming) -> Self {
        let state = match framing {
            ResponseFraming::None | ResponseFraming::ContentLength(0) => BodyState::Done,
            ResponseFraming::ContentLength(n) => BodyState::Length(n),
            ResponseFraming::Chunked => {
                let limits = Limits {
                    max_body_bytes: u64::MAX,
                    ..Limits::default()
                };
                BodyState::Chunked(Box::new(ChunkedDecoder::new(&limits)))
            }
            ResponseFraming::UntilClose => BodyState::UntilClose,
        };
        BodyReader {
            state,
            delivered: 0,
        }
    }

    pub(crate) fn done(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// Appends the next decoded body bytes to `out`; `Ok(0)` is the end.
    /// Each read from the socket must make progress within `read_timeout`,
    /// and end by `until` when given (the exchange's total deadline). The
    /// clock is read only when a read is needed.
    pub(crate) async fn next(
        &mut self,
        stream: &mut UpstreamStream,
        buf: &mut RespBuf,
        out: &mut Vec<u8>,
        read_timeout: Duration,
        until: Option<Instant>,
    ) -> Result<usize, BodyFailure> {
        loop {
            let pending = buf.end - buf.start;
            match &mut self.state {
                BodyState::Done => return Ok(0),
                BodyState::Length(left) if pending > 0 => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(pending);
                    out.extend_from_slice(&buf.data[buf.start..buf.start + take]);
                    buf.consume(take);
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = BodyState::Done;
                    }
                    self.delivered += take as u64;
                    return Ok(take);
                }
                BodyState::UntilClose if pending > 0 => {
                    out.extend_from_slice(&buf.data[buf.start..buf.end]);
                    buf.consume(pending);
                    self.delivered += pending as u64;
                    return Ok(pending);
                }
                BodyState::Chunked(dec) if pending > 0 => {
                    let before = out.len();
                    let d = dec
                        .decode(&buf.data[buf.start..buf.end], out)
                        .map_err(|_| BodyFailure::Framing)?;
                    buf.consume(d.consumed);
                    let produced = out.len() - before;
                    self.delivered += produced as u64;
                    if d.done {
                        self.state = BodyState::Done;
                        return Ok(produced);
                    }
                    if produced > 0 {
                        return Ok(produced);
                    }
                    if d.consumed > 0 {
                        continue;
                    }
                }
                _ => {}
            }
            let mut deadline = Instant::now() + read_timeout;
            if let Some(until) = until {
                deadline = deadline.min(until);
            }
            match with_deadline(deadline, buf.fill(stream)).await {
                None => return Err(BodyFailure::Timeout),
                Some(Ok(0)) => {
                    if matches!(self.state, BodyState::UntilClose) {
                        self.state = BodyState::Done;
                        return Ok(0);
                    }
                    return Err(BodyFailure::Truncated);
                }
                Some(Ok(_)) => {}
                Some(Err(_)) => return Err(BodyFailure::Io),
            }
        }
    }
}

/// Writes all of `bytes` to the upstream.
pub(crate) async fn send(stream: &mut UpstreamStream, bytes: &[u8]) -> io::Result<()> {
    // A full socket buffer waits on glommio's ring (see `RingWrite`).
    let _ring = shardline_shard::readiness::RingWrite::begin();
    stream.write_all(bytes).await?;
    // TLS may hold the last record back until flushed; plain TCP's flush
    // is a no-op.
    stream.flush().await
}
