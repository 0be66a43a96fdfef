//! Scriptable upstream servers for the gateway tests.
//!
//! An [`Upstream`] is a tiny HTTP/1.1 origin on std threads, bound to
//! `127.0.0.1:0`, that the in-process shardline proxies to. What it does with
//! each request is a [`Behaviour`]: a function from the request head to an
//! [`Action`] (a normal reply, a delay, a scripted byte sequence with gates,
//! a streaming echo, a byte sink, a generated large body). The behaviour can
//! be swapped while the server runs ([`Upstream::set_behaviour`]), so a test
//! can make a healthy upstream start failing.
//!
//! Every request is recorded ([`Upstream::log`]) with its head and body, and
//! counters say how many connections were accepted and how many requests
//! arrived. An optional health path answers `200`/`503` from a switch
//! ([`Upstream::set_healthy`]) and is counted apart from the other requests.
//!
//! Nothing here loops forever: every blocking read, write and wait wakes at
//! least every [`TICK`] to look at the stop flag, and even a test that
//! forgets to drop its upstream is cut off after [`HOLD_MAX`]. Dropping the
//! [`Upstream`] stops it and joins its threads.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::GUARD;

/// How often a blocked upstream thread looks at its stop flag.
pub const TICK: Duration = Duration::from_millis(20);

/// Backstop: the longest an upstream connection stays idle, hangs, or waits
/// on a gate before giving up by itself. Only matters if a test leaks its
/// upstream; a passing test never comes near it.
pub const HOLD_MAX: Duration = Duration::from_secs(120);

/// Longest request head (or chunk-size / trailer line) the upstream reads.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Read and write block size.
const IO_BLOCK_BYTES: usize = 256 * 1024;

/// Length of [`pattern_block`]: a multiple of 251, so writing the block
/// again and again keeps `byte[i] == pattern_byte(i)` over the whole stream.
pub const PATTERN_BLOCK_BYTES: usize = 251 * 256;

/// The byte at `offset` of a patterned body (large-body tests).
pub fn pattern_byte(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// A block of the pattern starting at offset 0 ([`PATTERN_BLOCK_BYTES`]
/// long); repeat it to make a patterned stream of any length.
pub fn pattern_block() -> Vec<u8> {
    (0..PATTERN_BLOCK_BYTES as u64).map(pattern_byte).collect()
}

/// Whether `data`, found at `offset` of a patterned stream, matches the
/// pattern (checks the first and last byte and every 4093rd byte: cheap
/// enough for a GiB in a debug build, and any shift or gap shows).
pub fn pattern_matches(offset: u64, data: &[u8]) -> bool {
    if data.is_empty() {
        return true;
    }
    let last = data.len() - 1;
    data[0] == pattern_byte(offset)
        && data[last] == pattern_byte(offset + last as u64)
        && (0..data.len())
            .step_by(4093)
            .all(|i| data[i] == pattern_byte(offset + i as u64))
}

/// An address on which nothing listens (bound, then released): connecting
/// to it is refused.
pub fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which accepted connection it came on (0, 1, ... in accept order).
    pub conn: usize,
    /// Request method.
    pub method: String,
    /// Request target as sent (path and query).
    pub target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    /// Header fields in order (value trimmed).
    pub headers: Vec<(String, String)>,
    /// The decoded body (empty for echo and sink, which do not keep it).
    pub body: Vec<u8>,
    /// Decoded body length.
    pub body_len: u64,
    /// Whether the body came `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// The head as received.
    pub raw_head: Vec<u8>,
}

impl Recorded {
    /// The path part of the target.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// First value of a header field (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every field line's value for the name.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the header field is present.
    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    /// The comma-separated list elements of every line of the field,
    /// trimmed, empty ones dropped (RFC 9110 §5.6.1).
    pub fn list(&self, name: &str) -> Vec<String> {
        self.header_all(name)
            .iter()
            .flat_map(|v| v.split(','))
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect()
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A normal response: status, header fields, body. `Content-Length` is added
/// unless a framing field is given or the status has no body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header fields, written in order.
    pub headers: Vec<(String, String)>,
    /// The body (not sent for HEAD, 1xx, 204, 304).
    pub body: Vec<u8>,
    /// Send `Connection: close` and close after the response.
    pub close: bool,
}

impl Reply {
    /// A response with the status and no fields or body.
    pub fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
            close: false,
        }
    }

    /// 200 `text/plain` with the body.
    pub fn ok(body: &str) -> Reply {
        Reply::new(200)
            .header("Content-Type", "text/plain")
            .body(body.as_bytes())
    }

    /// 200 `application/json` with the body.
    pub fn json(body: &str) -> Reply {
        Reply::new(200)
            .header("Content-Type", "application/json")
            .body(body.as_bytes())
    }

    /// Adds a header field.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: &[u8]) -> Reply {
        self.body = body.to_vec();
        self
    }

    /// Announces and performs a close after the response.
    pub fn close(mut self) -> Reply {
        self.close = true;
        self
    }

    /// The response bytes; `head_only` for a HEAD request.
    pub fn encode(&self, head_only: bool) -> Vec<u8> {
        let s = self.status;
        let bodiless = (100..200).contains(&s) || s == 204 || s == 304;
        let framed = self.headers.iter().any(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        });
        let mut out = format!("HTTP/1.1 {s} {}\r\n", reason(s)).into_bytes();
        for (n, v) in &self.headers {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        if !bodiless && !framed {
            out.extend_from_slice(format!("Content-Length: {}\r\n", self.body.len()).as_bytes());
        }
        if self.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only && !bodiless {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// A reason phrase for the common codes.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        410 => "Gone",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// A one-shot switch a scripted response can wait on; the test opens it.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate (wakes every waiter, now and later).
    pub fn open(&self) {
        let (m, cv) = &*self.0;
        *m.lock().unwrap() = true;
        cv.notify_all();
    }

    /// Whether it is open.
    pub fn is_open(&self) -> bool {
        *self.0 .0.lock().unwrap()
    }

    /// Waits until open; false if stopped or [`HOLD_MAX`] passed first.
    fn wait(&self, stop: &AtomicBool) -> bool {
        let (m, cv) = &*self.0;
        let end = Instant::now() + HOLD_MAX;
        let mut open = m.lock().unwrap();
        while !*open {
            if stop.load(Ordering::SeqCst) || Instant::now() >= end {
                return false;
            }
            open = cv.wait_timeout(open, TICK).unwrap().0;
        }
        true
    }
}

/// A condition a scripted response waits for (polled every millisecond).
pub type Condition = Arc<dyn Fn() -> bool + Send + Sync>;

/// One step of a scripted response.
#[derive(Clone)]
pub enum Step {
    /// Write these bytes.
    Write(Vec<u8>),
    /// Sleep (wakes early only when the upstream stops).
    Sleep(Duration),
    /// Wait until the gate opens.
    Wait(Gate),
    /// Wait until the condition holds.
    WaitUntil(Condition),
    /// Close the connection (the rest of the steps are skipped).
    Close,
    /// Hold the connection, answering nothing, until the upstream stops.
    Hang,
}

impl std::fmt::Debug for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::Write(b) => write!(f, "Write({})", crate::client::show(b)),
            Step::Sleep(d) => write!(f, "Sleep({d:?})"),
            Step::Wait(_) => f.write_str("Wait(gate)"),
            Step::WaitUntil(_) => f.write_str("WaitUntil(..)"),
            Step::Close => f.write_str("Close"),
            Step::Hang => f.write_str("Hang"),
        }
    }
}

/// What the upstream does with one request.
#[derive(Debug, Clone)]
pub enum Action {
    /// Read the body, send the reply (keep-alive unless it says close).
    Reply(Reply),
    /// Read the body, wait, then do the inner action.
    Delay(Duration, Box<Action>),
    /// Read the body, then perform the steps; after the last step the
    /// connection waits for the next request (unless a step closed it).
    Steps(Vec<Step>),
    /// Stream the body back as it arrives: `200`, the request's
    /// Content-Type (or `application/octet-stream`), framed like the request
    /// (Content-Length, or chunked for a chunked request).
    Echo,
    /// Read the body without keeping it and answer `200 text/plain` with the
    /// decimal byte count, plus `X-Pattern-Ok: true|false` (whether the body
    /// matched [`pattern_byte`]).
    Sink,
    /// Read the body, answer `200 application/octet-stream` with
    /// `Content-Length: len` and a patterned body generated on the fly.
    Generate {
        /// Body length in bytes.
        len: u64,
    },
    /// Perform the steps without reading the body (an upstream that answers
    /// an upload early, then ignores it), then close the connection. The
    /// request is logged with an empty body.
    Unread(Vec<Step>),
    /// Write these bytes (an interim response, say) before reading the
    /// body, then act as [`Action::Sink`].
    InterimThenSink(Vec<u8>),
}

/// The function an upstream applies to each request head (the body has not
/// been read yet: `body` is empty when it is called).
pub type Script = dyn Fn(&Recorded) -> Action + Send + Sync;

/// What an upstream does with every request.
#[derive(Clone)]
pub struct Behaviour(Arc<Script>);

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Behaviour(..)")
    }
}

impl Behaviour {
    /// Any function of the request head.
    pub fn script(f: impl Fn(&Recorded) -> Action + Send + Sync + 'static) -> Behaviour {
        Behaviour(Arc::new(f))
    }

    /// The same action for every request.
    pub fn always(action: Action) -> Behaviour {
        Behaviour::script(move |_| action.clone())
    }

    /// The same reply to every request.
    pub fn reply(reply: Reply) -> Behaviour {
        Behaviour::always(Action::Reply(reply))
    }

    /// `200 text/plain` with the body, keep-alive.
    pub fn ok(body: &str) -> Behaviour {
        Behaviour::reply(Reply::ok(body))
    }

    /// A fixed status with a `text/plain` body `upstream <status>` (e.g. 502,
    /// 503), keep-alive.
    pub fn status(status: u16) -> Behaviour {
        Behaviour::reply(
            Reply::new(status)
                .header("Content-Type", "text/plain")
                .body(format!("upstream {status}").as_bytes()),
        )
    }

    /// Waits `delay`, then replies.
    pub fn slow(delay: Duration, reply: Reply) -> Behaviour {
        Behaviour::always(Action::Delay(delay, Box::new(Action::Reply(reply))))
    }

    /// Accepts and reads the request, then never answers (holds the socket
    /// until the upstream stops).
    pub fn hang() -> Behaviour {
        Behaviour::always(Action::Steps(vec![Step::Hang]))
    }

    /// Writes bytes that are not HTTP, then closes.
    pub fn garbage() -> Behaviour {
        Behaviour::always(Action::Steps(vec![
            Step::Write(b"\x16\x03\x01\x00\xa5 this is not HTTP \x00\xff\r\n\r\n".to_vec()),
            Step::Close,
        ]))
    }

    /// An ambiguously framed response (Content-Length and chunked); the
    /// connection is left open, ready for another request, so a test can
    /// see whether the gateway wrongly reuses it.
    pub fn cl_te() -> Behaviour {
        Behaviour::raw(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nhello\r\n0\r\n\r\n",
        )
    }

    /// Writes `bytes` as the whole response and keeps the connection.
    pub fn raw(bytes: &[u8]) -> Behaviour {
        Behaviour::always(Action::Steps(vec![Step::Write(bytes.to_vec())]))
    }

    /// Writes `bytes` as the whole response and closes.
    pub fn raw_then_close(bytes: &[u8]) -> Behaviour {
        Behaviour::always(Action::Steps(vec![
            Step::Write(bytes.to_vec()),
            Step::Close,
        ]))
    }

    /// The head of a `200` with `Content-Length: 1000` and the first 10 body
    /// bytes ([`KILLED_BODY_PREFIX`]), then a close.
    pub fn killed_mid_body() -> Behaviour {
        Behaviour::always(Action::Steps(vec![
            Step::Write(killed_mid_body_bytes()),
            Step::Close,
        ]))
    }

    /// Like [`Behaviour::killed_mid_body`] but closes only when `gate`
    /// opens, so a test can first see the head reach the client.
    pub fn killed_mid_body_after(gate: Gate) -> Behaviour {
        Behaviour::always(Action::Steps(vec![
            Step::Write(killed_mid_body_bytes()),
            Step::Wait(gate),
            Step::Close,
        ]))
    }

    /// A `200` with `Transfer-Encoding: chunked`, one chunk per element.
    pub fn chunked(chunks: &[&[u8]]) -> Behaviour {
        let mut bytes = chunked_head(200, &[]);
        bytes.extend_from_slice(&crate::request::chunked(chunks));
        Behaviour::raw(&bytes)
    }

    /// Streams the body back (see [`Action::Echo`]).
    pub fn echo() -> Behaviour {
        Behaviour::always(Action::Echo)
    }

    /// Counts the body (see [`Action::Sink`]).
    pub fn sink() -> Behaviour {
        Behaviour::always(Action::Sink)
    }

    /// A generated patterned body of `len` bytes (see [`Action::Generate`]).
    pub fn generate(len: u64) -> Behaviour {
        Behaviour::always(Action::Generate { len })
    }
}

/// The first body bytes [`Behaviour::killed_mid_body`] sends.
pub const KILLED_BODY_PREFIX: &[u8] = b"0123456789";

fn killed_mid_body_bytes() -> Vec<u8> {
    let mut b =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n".to_vec();
    b.extend_from_slice(KILLED_BODY_PREFIX);
    b
}

/// A response head with `Transfer-Encoding: chunked` and the fields given.
pub fn chunked_head(status: u16, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} {}\r\n", reason(status)).into_bytes();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
    out
}

/// One chunk (size line, data, CRLF).
pub fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

struct Shared {
    stop: AtomicBool,
    behaviour: Mutex<Behaviour>,
    log: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    open_connections: AtomicUsize,
    requests: AtomicUsize,
    health_path: Mutex<Option<String>>,
    healthy: AtomicBool,
    health_checks: AtomicUsize,
}

/// A cheap handle on an upstream's counters, for use inside another
/// upstream's script (e.g. "answer once the other part has arrived").
#[derive(Clone)]
pub struct Probe(Arc<Shared>);

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("requests", &self.requests())
            .finish()
    }
}

impl Probe {
    /// Requests received (health checks excluded).
    pub fn requests(&self) -> usize {
        self.0.requests.load(Ordering::SeqCst)
    }

    /// Connections accepted.
    pub fn connections(&self) -> usize {
        self.0.connections.load(Ordering::SeqCst)
    }
}

/// A running scriptable upstream server; stops (and joins its threads) on
/// drop.
pub struct Upstream {
    /// The address it listens on (`127.0.0.1:<ephemeral>`).
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("addr", &self.addr)
            .field("connections", &self.connections())
            .field("requests", &self.requests())
            .finish()
    }
}

impl Upstream {
    /// Starts an upstream with the behaviour.
    pub fn start(behaviour: Behaviour) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            behaviour: Mutex::new(behaviour),
            log: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            open_connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            health_path: Mutex::new(None),
            healthy: AtomicBool::new(true),
            health_checks: AtomicUsize::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name(format!("upstream-{}", addr.port()))
            .spawn(move || accept_loop(listener, s))
            .unwrap();
        Upstream {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    /// Starts an upstream that also answers `GET <health_path>` with `200`
    /// while healthy and `503` while not (see [`Upstream::set_healthy`]);
    /// those requests are counted by [`Upstream::health_checks`] only.
    pub fn start_with_health(behaviour: Behaviour, health_path: &str) -> Upstream {
        let u = Upstream::start(behaviour);
        *u.shared.health_path.lock().unwrap() = Some(health_path.to_string());
        u
    }

    /// Replaces the behaviour for requests that arrive from now on.
    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = behaviour;
    }

    /// Switches the health path's answer.
    pub fn set_healthy(&self, healthy: bool) {
        self.shared.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Health-path requests received.
    pub fn health_checks(&self) -> usize {
        self.shared.health_checks.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Connections open now (accepted and not yet closed by either side).
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// Requests received so far (counted when the head arrives; health
    /// checks excluded).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// Every request whose body has been read, in order.
    pub fn log(&self) -> Vec<Recorded> {
        self.shared.log.lock().unwrap().clone()
    }

    /// The last recorded request; panics if none.
    pub fn last(&self) -> Recorded {
        self.log()
            .pop()
            .unwrap_or_else(|| panic!("upstream {} recorded no request", self.addr))
    }

    /// Forgets the log (counters are kept).
    pub fn clear_log(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// A handle on the counters.
    pub fn probe(&self) -> Probe {
        Probe(Arc::clone(&self.shared))
    }

    /// `host:port` for a config's `targets`.
    pub fn target(&self) -> String {
        self.addr.to_string()
    }

    /// Waits (at most [`GUARD`]) until `requests() >= n`; false if not.
    pub fn wait_requests(&self, n: usize) -> bool {
        wait_until(GUARD, || self.requests() >= n)
    }

    /// Waits (at most [`GUARD`]) until `log().len() >= n`; false if not.
    pub fn wait_logged(&self, n: usize) -> bool {
        wait_until(GUARD, || self.shared.log.lock().unwrap().len() >= n)
    }

    /// Waits (at most [`GUARD`]) until `health_checks() >= n`.
    pub fn wait_health_checks(&self, n: usize) -> bool {
        wait_until(GUARD, || self.health_checks() >= n)
    }

    /// Waits (at most [`GUARD`]) until `open_connections() <= n`.
    pub fn wait_open_connections_at_most(&self, n: usize) -> bool {
        wait_until(GUARD, || self.open_connections() <= n)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Polls `cond` every millisecond for at most `limit`; whether it held.
pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0usize;
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let id = next_id;
                next_id += 1;
                shared.connections.fetch_add(1, Ordering::SeqCst);
                shared.open_connections.fetch_add(1, Ordering::SeqCst);
                let s = Arc::clone(&shared);
                let spawned = thread::Builder::new()
                    .name(format!("upstream-conn-{id}"))
                    .spawn(move || {
                        serve(stream, id, &s);
                        s.open_connections.fetch_sub(1, Ordering::SeqCst);
                    });
                match spawned {
                    Ok(h) => workers.push(h),
                    Err(_) => {
                        shared.open_connections.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            }
            Err(_) => thread::sleep(Duration::from_millis(1)),
        }
        workers.retain(|h| !h.is_finished());
    }
    drop(listener);
    for w in workers {
        let _ = w.join();
    }
}

/// Why a connection ends.
#[derive(Debug)]
enum End {
    /// The peer closed, or the connection broke.
    Closed,
    /// The upstream is stopping (or a backstop deadline passed).
    Stopped,
    /// The request was not HTTP we understand.
    Bad,
}

/// How a request body is framed.
#[derive(Debug, Clone, Copy)]
enum Framing {
    Length(u64),
    Chunked,
}

struct Conn<'a> {
    stream: TcpStream,
    /// Received, not yet consumed.
    buf: Vec<u8>,
    scratch: Vec<u8>,
    shared: &'a Shared,
}

fn serve(stream: TcpStream, id: usize, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(TICK));
    let _ = stream.set_write_timeout(Some(TICK));
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        scratch: vec![0; IO_BLOCK_BYTES],
        shared,
    };
    while let Ok(true) = conn.exchange(id) {}
    let _ = conn.stream.shutdown(std::net::Shutdown::Both);
}

impl Conn<'_> {
    fn stopped(&self) -> bool {
        self.shared.stop.load(Ordering::SeqCst)
    }

    /// Reads more into `buf`; Ok(n > 0).
    fn fill(&mut self) -> Result<usize, End> {
        let idle_end = Instant::now() + HOLD_MAX;
        loop {
            if self.stopped() || Instant::now() >= idle_end {
                return Err(End::Stopped);
            }
            match self.stream.read(&mut self.scratch) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => {
                    self.buf.extend_from_slice(&self.scratch[..n]);
                    return Ok(n);
                }
                Err(e) if retryable(&e) => continue,
                Err(_) => return Err(End::Closed),
            }
        }
    }

    /// Gives the next at most `max` body bytes to `out`: from `buf` first,
    /// then straight from the socket.
    fn next_bytes(
        &mut self,
        max: u64,
        out: &mut dyn FnMut(&[u8]) -> Result<(), End>,
    ) -> Result<usize, End> {
        if !self.buf.is_empty() {
            let n = self
                .buf
                .len()
                .min(usize::try_from(max).unwrap_or(usize::MAX));
            let piece: Vec<u8> = self.buf.drain(..n).collect();
            out(&piece)?;
            return Ok(n);
        }
        let idle_end = Instant::now() + HOLD_MAX;
        let want = self
            .scratch
            .len()
            .min(usize::try_from(max).unwrap_or(usize::MAX));
        loop {
            if self.stopped() || Instant::now() >= idle_end {
                return Err(End::Stopped);
            }
            match self.stream.read(&mut self.scratch[..want]) {
                Ok(0) => return Err(End::Closed),
                Ok(n) => {
                    out(&self.scratch[..n])?;
                    return Ok(n);
                }
                Err(e) if retryable(&e) => continue,
                Err(_) => return Err(End::Closed),
            }
        }
    }

    /// A line ending in CRLF, without it.
    fn read_line(&mut self) -> Result<Vec<u8>, End> {
        loop {
            if let Some(i) = crate::client::find(&self.buf, b"\r\n") {
                let line: Vec<u8> = self.buf.drain(..i + 2).take(i).collect();
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(End::Bad);
            }
            self.fill()?;
        }
    }

    fn read_head(&mut self) -> Result<Vec<u8>, End> {
        loop {
            if let Some(i) = crate::client::find(&self.buf, b"\r\n\r\n") {
                return Ok(self.buf.drain(..i + 4).collect());
            }
            if self.buf.len() > MAX_HEAD_BYTES {
                return Err(End::Bad);
            }
            self.fill()?;
        }
    }

    /// Reads the whole body, giving each piece to `out`; the length.
    fn read_body(
        &mut self,
        framing: Framing,
        out: &mut dyn FnMut(&[u8]) -> Result<(), End>,
    ) -> Result<u64, End> {
        match framing {
            Framing::Length(n) => {
                let mut left = n;
                while left > 0 {
                    left -= self.next_bytes(left, out)? as u64;
                }
                Ok(n)
            }
            Framing::Chunked => {
                let mut total = 0u64;
                loop {
                    let line = self.read_line()?;
                    let size_part = line.split(|&b| b == b';').next().unwrap_or(b"");
                    let size_text = std::str::from_utf8(size_part).map_err(|_| End::Bad)?;
                    let size = u64::from_str_radix(size_text.trim(), 16).map_err(|_| End::Bad)?;
                    if size == 0 {
                        // Trailer section up to the empty line.
                        while !self.read_line()?.is_empty() {}
                        return Ok(total);
                    }
                    let mut left = size;
                    while left > 0 {
                        left -= self.next_bytes(left, out)? as u64;
                    }
                    total += size;
                    if !self.read_line()?.is_empty() {
                        return Err(End::Bad);
                    }
                }
            }
        }
    }

    fn write(&self, bytes: &[u8]) -> Result<(), End> {
        write_all(&self.stream, bytes, self.shared)
    }

    fn sleep(&self, d: Duration) -> Result<(), End> {
        let end = Instant::now() + d.min(HOLD_MAX);
        while Instant::now() < end {
            if self.stopped() {
                return Err(End::Stopped);
            }
            thread::sleep(TICK.min(end.saturating_duration_since(Instant::now())));
        }
        Ok(())
    }

    /// One request and its answer; Ok(true) to keep the connection.
    fn exchange(&mut self, id: usize) -> Result<bool, End> {
        let raw_head = self.read_head()?;
        let mut req = parse_request_head(&raw_head, id).ok_or(End::Bad)?;
        let framing = request_framing(&req)?;
        req.chunked = matches!(framing, Framing::Chunked);
        let keep_alive = wants_keep_alive(&req);

        let health = self.shared.health_path.lock().unwrap().clone();
        if health.as_deref() == Some(req.path()) {
            self.read_body(framing, &mut |_| Ok(()))?;
            self.shared.health_checks.fetch_add(1, Ordering::SeqCst);
            let reply = if self.shared.healthy.load(Ordering::SeqCst) {
                Reply::ok("healthy")
            } else {
                Reply::new(503)
                    .header("Content-Type", "text/plain")
                    .body(b"unhealthy")
            };
            self.write(&reply.encode(req.method == "HEAD"))?;
            return Ok(keep_alive);
        }

        self.shared.requests.fetch_add(1, Ordering::SeqCst);
        let behaviour = self.shared.behaviour.lock().unwrap().clone();
        let action = (behaviour.0)(&req);
        match action {
            Action::Echo => {
                self.echo(&mut req, framing)?;
                self.record(req);
                Ok(keep_alive)
            }
            Action::Unread(steps) => {
                let head_only = req.method == "HEAD";
                self.record(req);
                self.perform(Action::Steps(steps), head_only)?;
                Ok(false)
            }
            Action::InterimThenSink(bytes) => {
                self.write(&bytes)?;
                self.sink(req, framing, keep_alive)
            }
            Action::Sink => self.sink(req, framing, keep_alive),
            other => {
                let mut body = Vec::new();
                let n = self.read_body(framing, &mut |piece| {
                    body.extend_from_slice(piece);
                    Ok(())
                })?;
                req.body = body;
                req.body_len = n;
                let head_only = req.method == "HEAD";
                self.record(req);
                Ok(self.perform(other, head_only)? && keep_alive)
            }
        }
    }

    /// Reads the body without keeping it and answers with its byte count
    /// (see [`Action::Sink`]).
    fn sink(&mut self, mut req: Recorded, framing: Framing, keep_alive: bool) -> Result<bool, End> {
        let mut ok = true;
        let mut offset = 0u64;
        let n = self.read_body(framing, &mut |piece| {
            ok &= pattern_matches(offset, piece);
            offset += piece.len() as u64;
            Ok(())
        })?;
        req.body_len = n;
        let head_only = req.method == "HEAD";
        self.record(req);
        let reply =
            Reply::ok(&n.to_string()).header("X-Pattern-Ok", if ok { "true" } else { "false" });
        self.write(&reply.encode(head_only))?;
        Ok(keep_alive)
    }

    fn record(&self, req: Recorded) {
        self.shared.log.lock().unwrap().push(req);
    }

    /// Ok(true) to keep the connection.
    fn perform(&mut self, action: Action, head_only: bool) -> Result<bool, End> {
        match action {
            Action::Reply(r) => {
                self.write(&r.encode(head_only))?;
                Ok(!r.close)
            }
            Action::Delay(d, inner) => {
                self.sleep(d)?;
                self.perform(*inner, head_only)
            }
            Action::Steps(steps) => {
                for step in steps {
                    match step {
                        Step::Write(b) => self.write(&b)?,
                        Step::Sleep(d) => self.sleep(d)?,
                        Step::Wait(g) => {
                            if !g.wait(&self.shared.stop) {
                                return Err(End::Stopped);
                            }
                        }
                        Step::WaitUntil(cond) => {
                            let end = Instant::now() + HOLD_MAX;
                            while !cond() {
                                if self.stopped() || Instant::now() >= end {
                                    return Err(End::Stopped);
                                }
                                thread::sleep(Duration::from_millis(1));
                            }
                        }
                        Step::Close => return Ok(false),
                        Step::Hang => {
                            self.sleep(HOLD_MAX)?;
                            return Ok(false);
                        }
                    }
                }
                Ok(true)
            }
            Action::Generate { len } => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n\
                     Content-Length: {len}\r\n\r\n"
                );
                self.write(head.as_bytes())?;
                if head_only {
                    return Ok(true);
                }
                let block = pattern_block();
                let mut left = len;
                while left > 0 {
                    let n = left.min(block.len() as u64) as usize;
                    self.write(&block[..n])?;
                    left -= n as u64;
                }
                Ok(true)
            }
            // Handled before the body is read.
            Action::Echo | Action::Sink | Action::Unread(_) | Action::InterimThenSink(_) => {
                Ok(false)
            }
        }
    }

    fn echo(&mut self, req: &mut Recorded, framing: Framing) -> Result<(), End> {
        let content_type = req
            .header("content-type")
            .unwrap_or("application/octet-stream")
            .to_string();
        let writer = self.stream.try_clone().map_err(|_| End::Closed)?;
        let shared = self.shared;
        let n = match framing {
            Framing::Length(n) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {n}\r\n\r\n"
                );
                write_all(&writer, head.as_bytes(), shared)?;
                self.read_body(framing, &mut |piece| write_all(&writer, piece, shared))?
            }
            Framing::Chunked => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n\
                     Transfer-Encoding: chunked\r\n\r\n"
                );
                write_all(&writer, head.as_bytes(), shared)?;
                let n = self.read_body(framing, &mut |piece| {
                    write_all(&writer, &chunk(piece), shared)
                })?;
                write_all(&writer, b"0\r\n\r\n", shared)?;
                n
            }
        };
        req.body_len = n;
        Ok(())
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Writes everything, waking every [`TICK`] to look at the stop flag.
fn write_all(mut stream: &TcpStream, mut bytes: &[u8], shared: &Shared) -> Result<(), End> {
    let stall_end = Instant::now() + HOLD_MAX;
    while !bytes.is_empty() {
        if shared.stop.load(Ordering::SeqCst) || Instant::now() >= stall_end {
            return Err(End::Stopped);
        }
        match stream.write(bytes) {
            Ok(0) => return Err(End::Closed),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if retryable(&e) => continue,
            Err(_) => return Err(End::Closed),
        }
    }
    Ok(())
}

fn parse_request_head(raw: &[u8], conn: usize) -> Option<Recorded> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next()?;
    let mut parts = request_line.split(' ');
    let method = parts.next()?.to_string();
    let target = parts.next()?.to_string();
    let version = parts.next()?.to_string();
    if parts.next().is_some() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (n, v) = line.split_once(':')?;
        headers.push((n.to_string(), v.trim().to_string()));
    }
    Some(Recorded {
        conn,
        method,
        target,
        version,
        headers,
        body: Vec::new(),
        body_len: 0,
        chunked: false,
        raw_head: raw.to_vec(),
    })
}

fn request_framing(req: &Recorded) -> Result<Framing, End> {
    let te = req.list("transfer-encoding");
    if let Some(last) = te.last() {
        return if last.eq_ignore_ascii_case("chunked") {
            Ok(Framing::Chunked)
        } else {
            Err(End::Bad)
        };
    }
    match req.header("content-length") {
        Some(v) => v.parse().map(Framing::Length).map_err(|_| End::Bad),
        None => Ok(Framing::Length(0)),
    }
}

fn wants_keep_alive(req: &Recorded) -> bool {
    let opts = req.list("connection");
    let has = |t: &str| opts.iter().any(|o| o.eq_ignore_ascii_case(t));
    if req.version == "HTTP/1.0" {
        has("keep-alive") && !has("close")
    } else {
        !has("close")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    #[test]
    fn replies_keep_alive_and_records() {
        let up = Upstream::start(Behaviour::ok("hi"));
        let mut c = Client::connect(up.addr);
        let r = c.request(&crate::post("/a?b=1", &["X-T: 1"], b"body"));
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"hi");
        let r = c.request(&crate::get("/b", &[]));
        assert_eq!(r.body, b"hi");
        assert_eq!(up.connections(), 1);
        assert_eq!(up.requests(), 2);
        let log = up.log();
        assert_eq!(log[0].method, "POST");
        assert_eq!(log[0].path(), "/a");
        assert_eq!(log[0].query(), Some("b=1"));
        assert_eq!(log[0].header("x-t"), Some("1"));
        assert_eq!(log[0].body, b"body");
        assert_eq!(log[1].target, "/b");
    }

    #[test]
    fn echo_streams_chunked_and_sink_counts() {
        let up = Upstream::start(Behaviour::echo());
        let mut c = Client::connect(up.addr);
        let mut req = b"POST /e HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        req.extend_from_slice(&crate::request::chunked(&[b"ab", b"cde"]));
        let r = c.request(&req);
        assert!(r.chunked);
        assert_eq!(r.body, b"abcde");
        up.set_behaviour(Behaviour::sink());
        let body: Vec<u8> = (0..100_000u64).map(pattern_byte).collect();
        let r = c.request(&crate::post("/s", &[], &body));
        assert_eq!(r.body, b"100000");
        assert_eq!(r.header("x-pattern-ok").as_deref(), Some("true"));
    }

    #[test]
    fn health_path_is_counted_apart() {
        let up = Upstream::start_with_health(Behaviour::ok("x"), "/healthz");
        let mut c = Client::connect(up.addr);
        assert_eq!(c.request(&crate::get("/healthz", &[])).status, 200);
        up.set_healthy(false);
        assert_eq!(c.request(&crate::get("/healthz", &[])).status, 503);
        assert_eq!(up.health_checks(), 2);
        assert_eq!(up.requests(), 0);
    }

    #[test]
    fn hang_is_released_on_drop() {
        let up = Upstream::start(Behaviour::hang());
        let mut c = Client::connect(up.addr);
        c.send(&crate::get("/", &[]));
        assert!(up.wait_requests(1));
        let start = Instant::now();
        drop(up);
        assert!(start.elapsed() < GUARD);
        assert!(c.read_response(false).unwrap_err().is_closed());
    }

    #[test]
    fn closed_addr_refuses() {
        let a = closed_addr();
        assert!(TcpStream::connect_timeout(&a, GUARD).is_err());
    }
}
