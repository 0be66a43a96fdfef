//! The boundary between a shard's connection loop and what answers requests.
//!
//! The shard owns sockets, framing and buffers; an [`App`] (built once per
//! shard by an [`AppFactory`], so it may hold `Rc`/`RefCell` shard-local
//! state) decides the response. The app writes its response straight into
//! the connection's output buffer through [`Exchange`], so answering a
//! request allocates nothing.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

pub use crate::stream::{BodyError, ClientIo, StreamRequest};

use shardline_protocol::date::DateCache;
use shardline_protocol::request::{RequestHead, Version};
use shardline_protocol::response::{self, EncodeOptions, Response};

/// How a request is served, decided from its head before its body is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// The connection loop buffers the whole body (bounded by the server's
    /// `max_body_bytes`) and calls [`App::handle`] synchronously; the token
    /// is handed back through [`Exchange::token`].
    Inline(usize),
    /// The app serves the request asynchronously through [`App::stream`],
    /// reading the body and writing the response itself (a proxy). The body
    /// may be up to `max_body_bytes` long; it is never buffered whole.
    Stream { token: usize, max_body_bytes: u64 },
}

/// The future an [`App::stream`] call returns.
pub type StreamFuture<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// Answers requests on one shard.
pub trait App {
    /// Chooses between the inline and the streaming path. The default
    /// serves everything inline.
    fn dispatch(&self, _head: &RequestHead<'_, '_>) -> Dispatch {
        Dispatch::Inline(0)
    }

    /// Must call one of the `Exchange` respond methods; if it does not, the
    /// connection loop answers 500 so the client is never left hanging.
    fn handle(&self, exchange: &mut Exchange<'_>);

    /// Serves a request that [`App::dispatch`] sent down the streaming
    /// path. Earlier pipelined responses are already written; the request's
    /// head is in `req`, its body is read (and the response written)
    /// through `io`. If the future ends without writing anything the
    /// connection loop answers 500.
    fn stream<'a>(
        &'a self,
        _token: usize,
        _req: &'a StreamRequest,
        _io: &'a mut ClientIo<'_>,
    ) -> StreamFuture<'a> {
        Box::pin(std::future::ready(()))
    }

    /// Called once on the shard's thread when the shard has drained, before
    /// it ends: the place to save state that must survive a restart.
    fn shutdown(&self) {}

    /// Called after the connection loop answered a request itself, before
    /// any route ran: a malformed or over-limit head or body (400, 413,
    /// 414, 417, 431, 501, 505) or one that stopped arriving (408). For
    /// the app's metrics and access log; the answer is already written.
    fn refused(&self, _refusal: &Refusal<'_>) {}
}

/// A request the connection loop answered itself (see [`App::refused`]).
#[derive(Debug)]
pub struct Refusal<'a> {
    pub status: u16,
    /// The request's method when its first token reads as one, else "-".
    pub method: &'a str,
    pub peer: std::net::SocketAddr,
    /// When the read that completed (or last extended) the request ended.
    pub received: std::time::Instant,
    /// Request bytes received for it.
    pub bytes_in: u64,
    /// Bytes of the answer.
    pub bytes_out: u64,
}

/// Builds each shard's [`App`] on that shard's thread.
pub trait AppFactory: Send + Sync {
    fn build(&self, shard: ShardInfo) -> Rc<dyn App>;
}

/// Which shard an app or handler is running on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardInfo {
    /// 0-based shard index.
    pub id: usize,
    /// The CPU it is pinned to.
    pub cpu: usize,
    /// How many shards the server runs.
    pub count: usize,
}

/// What the connection loop knows about a request's connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnContext<'x> {
    pub peer: SocketAddr,
    pub shard: ShardInfo,
    /// The request allows the connection to persist (and the shard is not
    /// draining).
    pub keep_alive: bool,
    pub draining: bool,
    /// The connection came in on a TLS listener.
    pub tls: bool,
    pub tls_client_identity: Option<&'x str>,
    /// When the read that completed this request finished.
    pub received: Instant,
    /// When the requests of this read were answered; see
    /// [`Exchange::finished`].
    pub finished: &'x Cell<Option<Instant>>,
    /// Request bytes on the wire (head and framed body).
    pub bytes_in: u64,
}

/// The problem type and detail of the 500 sent when a route's action
/// produced no response (inline or streamed).
pub(crate) const NO_RESPONSE_PROBLEM: &str = "https://shardline.dev/problems/no-response";
pub(crate) const NO_RESPONSE_DETAIL: &str = "the route's action produced no response";
/// The 408 for a request (head or body) that stopped arriving.
pub(crate) const REQUEST_TIMEOUT_PROBLEM: &str = "https://shardline.dev/problems/request-timeout";
pub(crate) const REQUEST_TIMEOUT_DETAIL: &str =
    "the request was not received within the server's read timeout";

/// One request and the means to answer it.
pub struct Exchange<'x> {
    pub head: &'x RequestHead<'x, 'x>,
    /// The whole decoded body (Content-Length or de-chunked).
    pub body: &'x [u8],
    pub peer: SocketAddr,
    pub shard: ShardInfo,
    out: &'x mut Vec<u8>,
    date: &'x DateCache,
    keep_alive: bool,
    draining: bool,
    responded: bool,
    token: usize,
    tls: bool,
    tls_client_identity: Option<&'x str>,
    /// Where this exchange's response starts in `out` (earlier pipelined
    /// responses come before it).
    start: usize,
    /// Status of the response encoded, 0 before one is.
    status: u16,
    /// `out.len()` before this request's response.
    out_start: usize,
    received: Instant,
    finished: &'x Cell<Option<Instant>>,
    bytes_in: u64,
}

impl<'x> Exchange<'x> {
    pub(crate) fn new(
        head: &'x RequestHead<'x, 'x>,
        body: &'x [u8],
        conn: ConnContext<'x>,
        out: &'x mut Vec<u8>,
        date: &'x DateCache,
        token: usize,
    ) -> Self {
        let start = out.len();
        let out_start = start;
        Exchange {
            head,
            body,
            peer: conn.peer,
            shard: conn.shard,
            out,
            date,
            keep_alive: conn.keep_alive,
            draining: conn.draining,
            responded: false,
            token,
            tls: conn.tls,
            tls_client_identity: conn.tls_client_identity,
            start,
            status: 0,
            out_start,
            received: conn.received,
            finished: conn.finished,
            bytes_in: conn.bytes_in,
        }
    }

    /// Adds header field lines (`Name: value\r\n` each, already validated
    /// by the caller) to the response already encoded, right after its
    /// status line. For fields a policy adds to whatever the route's action
    /// answered (request id, CORS, rate-limit state). No effect before
    /// [`Exchange::respond`].
    pub fn insert_headers(&mut self, raw: &[u8]) {
        if !self.responded || raw.is_empty() {
            return;
        }
        let resp = &self.out[self.start..];
        let Some(eol) = resp.windows(2).position(|w| w == b"\r\n") else {
            return;
        };
        let at = self.start + eol + 2;
        self.out.splice(at..at, raw.iter().copied());
    }

    fn options(&self) -> EncodeOptions {
        EncodeOptions {
            version: self.head.version,
            keep_alive: self.keep_alive,
            head: self.head.is_head(),
        }
    }

    /// Encodes the response. A second call is ignored: one request, one
    /// response.
    pub fn respond(&mut self, resp: &Response<'_>) {
        if self.responded {
            return;
        }
        self.responded = true;
        self.status = resp.status;
        let opts = self.options();
        response::encode(self.out, resp, opts, self.date);
    }

    /// A response whose header fields come from elsewhere (a cache entry):
    /// `headers` must hold no framing or hop-by-hop fields; Content-Length
    /// is written for `body` (none for 1xx/204/304), and a Date unless
    /// `headers` has one.
    pub fn respond_fields<'h>(
        &mut self,
        status: u16,
        headers: impl Iterator<Item = (&'h str, &'h [u8])>,
        body: &[u8],
    ) {
        self.respond_forwarded(status, body, |out, delimit, opts, date| {
            response::encode_forwarded_head(out, status, headers, delimit, opts, date);
        });
    }

    /// One response with a forwarded-style head (written by `head`) and
    /// `body`, framed by Content-Length (none for 304).
    fn respond_forwarded(
        &mut self,
        status: u16,
        body: &[u8],
        head: impl FnOnce(&mut Vec<u8>, response::BodyDelimit, EncodeOptions, &DateCache),
    ) {
        if self.responded {
            return;
        }
        self.responded = true;
        self.status = status;
        let opts = self.options();
        let delimit = if status == 304 {
            response::BodyDelimit::None
        } else {
            response::BodyDelimit::Length(body.len() as u64)
        };
        head(self.out, delimit, opts, self.date);
        if !opts.head && !matches!(status, 100..=199 | 204 | 304) {
            self.out.extend_from_slice(body);
        }
    }

    /// [`Exchange::respond_fields`] for fields prepared once
    /// ([`response::PreparedFields`], e.g. a cache entry's), plus `extra`
    /// raw `Name: value\r\n` lines.
    pub fn respond_prepared(
        &mut self,
        status: u16,
        fields: &response::PreparedFields,
        extra: &[&[u8]],
        body: &[u8],
    ) {
        self.respond_forwarded(status, body, |out, delimit, opts, date| {
            response::encode_prepared_head(out, status, fields, extra, delimit, opts, date);
        });
    }

    /// A 500 problem when the route's action wrote no response (a
    /// request is always answered).
    pub(crate) fn answer_if_silent(&mut self) {
        if !self.responded {
            self.problem(
                500,
                NO_RESPONSE_PROBLEM,
                "Internal Server Error",
                NO_RESPONSE_DETAIL,
                &[],
            );
        }
    }

    /// An RFC 9457 problem response.
    pub fn problem(
        &mut self,
        status: u16,
        problem_type: &str,
        title: &str,
        detail: &str,
        extra_headers: &[(&str, &[u8])],
    ) {
        if self.responded {
            return;
        }
        self.responded = true;
        self.status = status;
        let opts = self.options();
        response::encode_problem(
            self.out,
            status,
            problem_type,
            title,
            detail,
            extra_headers,
            opts,
            self.date,
        );
    }

    /// Closes the connection after this response (`Connection: close`).
    /// Only effective before responding.
    pub fn close_after(&mut self) {
        self.keep_alive = false;
    }

    /// The shard is draining: this is among the last requests it serves.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// The token [`App::dispatch`] returned for this request.
    pub fn token(&self) -> usize {
        self.token
    }

    pub fn responded(&self) -> bool {
        self.responded
    }

    /// Status of the response encoded so far (0 before one is).
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Bytes of the response encoded for this request.
    pub fn bytes_out(&self) -> u64 {
        (self.out.len().saturating_sub(self.out_start)) as u64
    }

    /// Request bytes on the wire (head and framed body).
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    /// When the request arrived (the end of the read that completed it).
    pub fn received(&self) -> Instant {
        self.received
    }

    /// When the request was answered, for its latency. The clock is read
    /// once per batch: the requests parsed from one read (a pipelining
    /// client's) share the time the first of them was answered, as they
    /// share `received`. They are written to the socket together, after
    /// the last one, so a later request's figure is short by at most the
    /// batch's own handling time (~0.3 µs per request on `/plaintext`),
    /// and one clock read per request was ~5% of a pipelined shard's CPU
    /// (`perf record`: `__vdso_clock_gettime`).
    pub fn finished(&self) -> Instant {
        match self.finished.get() {
            Some(t) => t,
            None => {
                let t = Instant::now();
                self.finished.set(Some(t));
                t
            }
        }
    }

    pub(crate) fn keep_alive(&self) -> bool {
        self.keep_alive
    }

    pub fn version(&self) -> Version {
        self.head.version
    }

    /// The request arrived over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The identity of the client's verified TLS certificate (mTLS): its
    /// subject common name, else its first subject alternative name.
    /// `None` on plain connections and when the client sent no
    /// certificate (allowed when `client_auth.required` is false).
    pub fn tls_client_identity(&self) -> Option<&'x str> {
        self.tls_client_identity
    }
}
