//! The gateway against upstreams and clients that misbehave in ways the
//! other gateway tests do not try: odd status lines and field lines, odd
//! framing (Content-Length, Transfer-Encoding, chunk sizes, trailers),
//! bytes nobody asked for on a pooled connection, resets mid-head, clients
//! that half-close, abort downloads or uploads, pipeline past a failure,
//! or try to smuggle a request through the proxy.
//!
//! What every test asks of the gateway: a malformed or ambiguous upstream
//! answer is a 502 `application/problem+json` (or, once bytes have reached
//! the client, a cut connection and never a second response); a timeout is
//! a 504; an upstream connection that carried anything suspicious is never
//! reused; the client connection stays in step; nothing hangs or panics.
//!
//! Nothing depends on timing to pass: where a test must know that the
//! upstream has written something, the upstream says so through a flag the
//! test waits on (bounded by `GUARD`).
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use shardline_tests::client::find;
use shardline_tests::request::request;
use shardline_tests::upstream::{wait_until, Action, Behaviour, Recorded, Reply, Step, Upstream};
use shardline_tests::{get, post, Client, ReadError, Response, TestServer, GUARD};

// ---- helpers ----

/// Routes `/bad/{*rest}` to `bad` and `/good/{*rest}` to `good` (which
/// answers `200 good`). `bad_upstream_extra` goes into the bad upstream's
/// table, `bad_route_extra` into the bad route's (it must not set
/// `timeout`: pass `timeout` instead).
fn two(
    bad: &str,
    good: &str,
    bad_upstream_extra: &str,
    timeout: &str,
    bad_route_extra: &str,
) -> String {
    format!(
        r#"
[[upstreams]]
name = "bad"
targets = ["{bad}"]
{bad_upstream_extra}

[[upstreams]]
name = "good"
targets = ["{good}"]

[[routes]]
name = "bad"
path = "/bad/{{*rest}}"
upstream = "bad"
timeout = "{timeout}"
{bad_route_extra}

[[routes]]
name = "good"
path = "/good/{{*rest}}"
upstream = "good"
"#
    )
}

/// One upstream and one catch-all route to it.
fn one(target: &str, upstream_extra: &str, timeout: &str, route_extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{target}"]
{upstream_extra}

[[routes]]
name = "p"
path = "/{{*rest}}"
upstream = "u"
timeout = "{timeout}"
{route_extra}
"#
    )
}

/// A server proxying everything to `target` (2 s route timeout).
fn start_one(target: &str) -> TestServer {
    TestServer::start_toml(&one(target, "", "2s", ""))
}

/// A server proxying everything to `target` through a 60 s cache.
fn start_cached_one(target: &str) -> TestServer {
    TestServer::start_toml(&one(target, "", "2s", "cache = { ttl = \"60s\" }"))
}

/// A server proxying to `target` with room for large, slow uploads.
fn start_upload_one(target: &str) -> TestServer {
    TestServer::start_toml(&one(
        target,
        "request_timeout = \"5s\"",
        "5s",
        "max_body_bytes = \"64MiB\"",
    ))
}

/// Starts a good upstream (answering `200 good`) and a server routing
/// `/bad/...` to `bad` (see [`two`]); the upstream is returned to keep it
/// running.
fn start_beside_good(bad: &str, timeout: &str, bad_route_extra: &str) -> (Upstream, TestServer) {
    let good = Upstream::start(Behaviour::ok("good"));
    let srv = TestServer::start_toml(&two(bad, &good.target(), "", timeout, bad_route_extra));
    (good, srv)
}

/// Sends `GET /bad/x` and returns the final answer.
fn get_bad(c: &mut Client) -> Response {
    c.send(&get("/bad/x", &[]));
    c.read_final(false).unwrap().1
}

/// Asserts the client's last request was refused: a 400, or a closed
/// connection.
fn assert_400_or_closed(c: &mut Client) {
    match c.read_final(false) {
        Ok((_, r)) => assert_eq!(r.status, 400, "{}", r.summary()),
        Err(e) => assert!(e.is_closed(), "{e}"),
    }
}

/// Asserts `got` holds exactly one response start.
fn assert_one_response(got: &[u8]) {
    let n = got.windows(7).filter(|w| w == b"HTTP/1.").count();
    assert_eq!(n, 1, "{}", shardline_tests::client::show(got));
}

/// Starts an upstream answering every request with `raw`, sends two
/// `GET /x` on one client connection, runs `check` on each answer and
/// returns how many upstream connections they took.
fn two_gets_to_raw(raw: &[u8], check: impl Fn(&Response)) -> usize {
    let up = Upstream::start(Behaviour::raw(raw));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    for _ in 0..2 {
        check(&c.request(&get("/x", &[])));
    }
    up.connections()
}

/// Sends the head of a chunked `POST /up` and `pieces` chunks of 16 KiB,
/// leaving the body unfinished.
fn send_chunked_upload_start(c: &mut Client, pieces: usize) {
    let piece = vec![b'u'; 16 * 1024];
    c.send(b"POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..pieces {
        c.send(format!("{:x}\r\n", piece.len()).as_bytes());
        c.send(&piece);
        c.send(b"\r\n");
    }
}

/// An upstream that waits for a request head (leaving it unread), writes
/// `bytes`, waits `linger`, and drops the socket: with the request unread,
/// the close is a reset.
fn reset_after(bytes: &'static [u8], linger: Duration) -> RawUpstream {
    RawUpstream::start(move |mut s, _| {
        if peek_request(&s) {
            let _ = s.write_all(bytes);
            thread::sleep(linger);
        }
        drop(s);
    })
}

/// Asserts a problem+json error with the status and `type` slug.
fn assert_problem(r: &Response, status: u16, slug: &str, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.summary());
    let ty = common::assert_problem(r, status);
    assert_eq!(
        ty,
        format!("https://shardline.dev/problems/{slug}"),
        "{what}: {}",
        r.summary()
    );
}

/// A request to the good route on the same client connection is answered:
/// the connection survived what came before.
fn assert_still_usable(c: &mut Client, what: &str) {
    c.send(&get("/good/after", &[]));
    match c.read_final(false) {
        Ok((_, r)) => {
            assert_eq!(
                r.status,
                200,
                "{what}: connection out of step: {}",
                r.summary()
            );
            assert_eq!(r.body, b"good", "{what}: {}", r.summary());
        }
        Err(e) => panic!("{what}: the client connection did not survive: {e}"),
    }
}

/// Sends `raw` as the whole answer of a bad upstream (kept open after it)
/// and asserts a clean 502, the upstream connection closed, and the client
/// connection still usable.
fn assert_raw_answer_is_502(raw: &[u8], what: &str) {
    let bad = Upstream::start(Behaviour::raw(raw));
    let (_good, srv) = start_beside_good(&bad.target(), "2s", "");
    let mut c = srv.client();
    c.send(&get("/bad/x", &[]));
    let r = match c.read_final(false) {
        Ok((_, r)) => r,
        Err(e) => panic!("{what}: no answer: {e}"),
    };
    assert_problem(&r, 502, "bad-gateway", what);
    assert!(
        bad.wait_open_connections_at_most(0),
        "{what}: the gateway must close the upstream connection"
    );
    assert_still_usable(&mut c, what);
}

/// A minimal upstream on raw sockets for what the scripted one cannot do
/// (leave the request unread so that a close is a reset, look at the exact
/// bytes). Each accepted connection runs `f` on its own thread; sockets
/// have a read timeout of `GUARD`, so nothing blocks for ever.
struct RawUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    #[allow(dead_code)]
    accepted: Arc<AtomicUsize>,
    accept: Option<JoinHandle<()>>,
}

impl RawUpstream {
    fn start(f: impl Fn(TcpStream, usize) + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let f = Arc::new(f);
        let (s, a) = (Arc::clone(&stop), Arc::clone(&accepted));
        let accept = thread::spawn(move || {
            let mut workers = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let id = a.fetch_add(1, Ordering::SeqCst);
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(GUARD)).unwrap();
                        stream.set_write_timeout(Some(GUARD)).unwrap();
                        let f = Arc::clone(&f);
                        workers.push(thread::spawn(move || f(stream, id)));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(1)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        RawUpstream {
            addr,
            stop,
            accepted,
            accept: Some(accept),
        }
    }

    fn target(&self) -> String {
        self.addr.to_string()
    }

    #[allow(dead_code)]
    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Waits until a request head has arrived on `s` without consuming it.
fn peek_request(s: &TcpStream) -> bool {
    let mut b = [0u8; 4096];
    let end = Instant::now() + GUARD;
    while Instant::now() < end {
        match s.peek(&mut b) {
            Ok(0) => return false,
            Ok(n) if find(&b[..n], b"\r\n\r\n").is_some() => return true,
            Ok(_) => thread::sleep(Duration::from_millis(1)),
            Err(_) => return false,
        }
    }
    false
}

/// A step that raises `flag` when reached (after the steps before it).
fn raise(flag: &Arc<AtomicBool>) -> Step {
    let flag = Arc::clone(flag);
    Step::WaitUntil(Arc::new(move || {
        flag.store(true, Ordering::SeqCst);
        true
    }))
}

/// Sends a GET for a large download, reads the start of the answer, then
/// closes the socket with the rest unread (so the close is a reset).
fn abandon_download(mut c: Client, path: &str, what: &str) {
    c.send(&get(path, &[]));
    let mut s = c.stream().try_clone().unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut b = [0u8; 1024];
    let n = loop {
        match s.read(&mut b) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("{what}: {e}"),
        }
    };
    assert!(
        n > 0 && b.starts_with(b"HTTP/1.1 200"),
        "{what}: {}",
        shardline_tests::client::show(&b[..n])
    );
    drop(s);
    drop(c);
}

/// Replies with the request's target as the body.
fn path_echo() -> Behaviour {
    Behaviour::script(|req: &Recorded| Action::Reply(Reply::ok(&req.target)))
}

// ---- status lines ----

#[test]
fn status_codes_and_status_lines_outside_the_grammar_are_502() {
    for line in [
        &b"HTTP/1.1 000 Zero"[..],
        b"HTTP/1.1 099 Low",
        b"HTTP/1.1 600 High",
        b"HTTP/1.1 999 Nine",
        b"HTTP/1.1 20 OK",
        b"HTTP/1.1 2OO OK",
        b"HTTP/1.1 2000 OK",
        b"HTTP/1.1  200 OK",
        b"HTTP/1.1 200\tOK",
        b"HTTP/1.2 200 OK",
        b"HTTP/2 200 OK",
        b"HTTP/2.0 200 OK",
        b"http/1.1 200 OK",
        b" HTTP/1.1 200 OK",
        b"HTTP/1.1 200 O\x00K",
        b"HTTP/1.1 200 O\x7fK",
        b"HTTP/1.1 -200 OK",
    ] {
        let mut raw = line.to_vec();
        raw.extend_from_slice(b"\r\nContent-Length: 2\r\n\r\nok");
        assert_raw_answer_is_502(&raw, &shardline_tests::client::show(line));
    }
}

#[test]
fn a_status_line_without_a_reason_or_with_an_odd_one_is_accepted() {
    for (line, status) in [
        (&b"HTTP/1.1 200"[..], 200),
        (b"HTTP/1.1 200 ", 200),
        (b"HTTP/1.1 404 \xff\xfe not utf-8", 404),
        (b"HTTP/1.1 200 Totally Fine \t Reason", 200),
        (b"HTTP/1.1 299 Unknown Success", 299),
        (b"HTTP/1.1 599 Unknown Failure", 599),
        (b"HTTP/1.0 200 OK", 200),
    ] {
        let what = shardline_tests::client::show(line);
        let mut raw = line.to_vec();
        raw.extend_from_slice(b"\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok");
        let connections = two_gets_to_raw(&raw, |r| {
            assert_eq!(r.status, status, "{what}: {}", r.summary());
            assert_eq!(r.body, b"ok", "{what}: {}", r.summary());
            // The reason phrase the client sees is printable text.
            assert!(
                r.reason.bytes().all(|b| b == b' ' || b.is_ascii_graphic()),
                "{what}: {:?}",
                r.reason
            );
        });
        assert_eq!(
            connections, 1,
            "{what}: a clean answer keeps its connection"
        );
    }
}

#[test]
fn unknown_interim_statuses_are_skipped() {
    let up = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 102 Processing\r\n\r\n\
          HTTP/1.1 150 Odd Interim\r\nX-Interim: 1\r\n\r\n\
          HTTP/1.1 199 Last Interim\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfinal",
    ));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    for _ in 0..2 {
        c.send(&get("/x", &[]));
        let (interim, r) = c.read_final(false).unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"final");
        // Interim answers are not the client's to see (it asked for none),
        // and certainly not with fields of an odd one.
        for i in &interim {
            assert!(!i.has_header("x-interim"), "{}", i.summary());
        }
    }
    assert_eq!(up.connections(), 1);
}

#[test]
fn an_interim_response_followed_by_silence_is_a_504() {
    for interim in [
        &b"HTTP/1.1 100 Continue\r\n\r\n"[..],
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n",
    ] {
        let bad = Upstream::start(Behaviour::always(Action::Steps(vec![
            Step::Write(interim.to_vec()),
            Step::Hang,
        ])));
        let (_good, srv) = start_beside_good(&bad.target(), "500ms", "");
        let mut c = srv.client();
        let r = get_bad(&mut c);
        assert_problem(&r, 504, "gateway-timeout", "interim then silence");
        assert_still_usable(&mut c, "interim then silence");
    }
}

// ---- field lines ----

#[test]
fn invalid_response_field_lines_are_502() {
    let cases: [(&str, &[u8]); 14] = [
        ("space in name", b"X Bad: v\r\n"),
        ("space before colon", b"X-Bad : v\r\n"),
        (
            "Content-Length with space before colon",
            b"Content-Length : 2\r\n",
        ),
        ("empty name", b": v\r\n"),
        ("NUL in value", b"X-Bad: a\x00b\r\n"),
        ("bare CR in value", b"X-Bad: a\rb\r\n"),
        ("bare LF in value", b"X-Bad: a\nb\r\n"),
        ("DEL in value", b"X-Bad: a\x7fb\r\n"),
        ("VT in value", b"X-Bad: a\x0bb\r\n"),
        ("control byte in name", b"X-B\x01d: v\r\n"),
        ("non-ASCII name", b"X-B\xc3\xa4d: v\r\n"),
        ("obs-fold", b"X-Folded: a\r\n  b\r\n"),
        ("whitespace before the first field", b" X-First: v\r\n"),
        ("quote in name", b"X-\"Bad\": v\r\n"),
    ];
    for (what, line) in cases {
        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        raw.extend_from_slice(line);
        raw.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
        assert_raw_answer_is_502(&raw, what);
    }
}

#[test]
fn more_response_fields_than_allowed_is_a_502() {
    // Under the 16 KiB head limit, over the 100-field one.
    let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..150 {
        raw.extend_from_slice(format!("X-F{i}: v\r\n").as_bytes());
    }
    raw.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    assert!(raw.len() < 4096);
    assert_raw_answer_is_502(&raw, "150 fields");
}

#[test]
fn obs_text_in_a_response_value_is_passed_on_without_breaking_the_head() {
    let up = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 200 OK\r\nX-Latin: caf\xe9 \xff\r\nX-Tab: a\tb\r\nContent-Length: 2\r\n\r\nok",
    ));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    let r = c.request(&get("/x", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"ok");
    for (_, v) in &r.headers {
        assert!(
            !v.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0),
            "{}",
            r.summary()
        );
    }
    let r = c.request(&get("/y", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

// ---- framing fields ----

#[test]
fn odd_content_lengths_are_502() {
    for cl in [
        "+2",
        "02",
        "00",
        "2,2",
        "2, 2",
        "1,1",
        "2 2",
        "2\t2",
        "",
        "0002",
        "99999999999999999999",
        "18446744073709551616",
        "2.0",
        "2;",
        "\u{0662}",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nok");
        assert_raw_answer_is_502(raw.as_bytes(), &format!("Content-Length: {cl:?}"));
    }
}

#[test]
fn odd_transfer_encodings_are_502() {
    let body = "2\r\nok\r\n0\r\n\r\n";
    for te in [
        "Transfer-Encoding: chunked, chunked",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked",
        "Transfer-Encoding: chunked;q=1",
        "Transfer-Encoding: identity",
        "Transfer-Encoding: identity, chunked",
        "Transfer-Encoding: , chunked",
        "Transfer-Encoding: chunked,",
        "Transfer-Encoding: xchunked",
        "Transfer-Encoding: chunk",
        "Transfer-Encoding: \"chunked\"",
        "Transfer-Encoding: chunked\r\nContent-Length: 0",
        "Content-Length: 100\r\nTransfer-Encoding: chunked",
        "Transfer_Encoding: chunked\r\nContent-Length: 15",
        "Content_Length: 2\r\nTransfer-Encoding: chunked",
    ] {
        let raw = format!("HTTP/1.1 200 OK\r\n{te}\r\n\r\n{body}");
        assert_raw_answer_is_502(raw.as_bytes(), te);
    }
    // HTTP/1.0 has no chunked coding (RFC 9112 §6.1).
    assert_raw_answer_is_502(
        format!("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}").as_bytes(),
        "HTTP/1.0 with chunked",
    );
}

#[test]
fn chunked_in_any_case_is_decoded() {
    for te in ["Chunked", "CHUNKED", "chunked ", "cHuNkEd"] {
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n2\r\nok\r\n0\r\n\r\n");
        let up = Upstream::start(Behaviour::raw(raw.as_bytes()));
        let srv = start_one(&up.target());
        let r = srv.client().request(&get("/x", &[]));
        assert_eq!(r.status, 200, "{te}: {}", r.summary());
        assert_eq!(r.body, b"ok", "{te}");
    }
}

/// A trailer larger than any head (64 KiB) is refused too. Whether the
/// client still gets a clean 502 depends on whether the first chunk went
/// out before the trailer arrived (the gateway forwards body bytes as they
/// come): either a 502, or the one response cut before its last chunk.
/// Never a completed response, never a second one.
#[test]
fn a_trailer_larger_than_any_head_is_refused() {
    let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n".to_vec();
    for i in 0..1000 {
        raw.extend_from_slice(format!("X-T{i}: {}\r\n", "t".repeat(60)).as_bytes());
    }
    raw.extend_from_slice(b"\r\n");
    let bad = Upstream::start(Behaviour::raw(&raw));
    let (_good, srv) = start_beside_good(&bad.target(), "2s", "");
    let mut c = srv.client();
    c.send(&get("/bad/x", &[]));
    match c.read_final(false) {
        Ok((_, r)) => {
            assert_problem(&r, 502, "bad-gateway", "huge trailer");
            assert_still_usable(&mut c, "huge trailer");
        }
        Err(ReadError::Truncated { partial: got }) => {
            assert_one_response(&got);
            assert!(
                find(&got, b"\r\n0\r\n").is_none(),
                "the cut response must not look complete: {}",
                shardline_tests::client::show(&got)
            );
        }
        Err(e) => panic!("huge trailer: neither a 502 nor a cut response: {e}"),
    }
    assert!(
        bad.wait_open_connections_at_most(0),
        "huge trailer: the gateway must close the upstream connection"
    );
}

#[test]
fn malformed_chunked_bodies_found_before_anything_was_sent_are_502() {
    let long_ext = format!("5;x={}\r\nhello\r\n0\r\n\r\n", "e".repeat(8192));
    let cases: Vec<(&str, String)> = vec![
        ("plus sign", "+5\r\nhello\r\n0\r\n\r\n".into()),
        ("minus sign", "-5\r\nhello\r\n0\r\n\r\n".into()),
        ("0x prefix", "0x5\r\nhello\r\n0\r\n\r\n".into()),
        ("leading space", " 5\r\nhello\r\n0\r\n\r\n".into()),
        ("empty size", "\r\nhello\r\n0\r\n\r\n".into()),
        (
            "size over u64",
            "10000000000000005\r\nhello\r\n0\r\n\r\n".into(),
        ),
        (
            "size of 17 f",
            "fffffffffffffffff\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("bare LF after size", "5\nhello\r\n0\r\n\r\n".into()),
        ("data longer than size", "5\r\nhelloXX\r\n0\r\n\r\n".into()),
        ("no CRLF after data", "5\r\nhello0\r\n\r\n".into()),
        (
            "unterminated quoted ext",
            "5;a=\"open\r\nhello\r\n0\r\n\r\n".into(),
        ),
        ("ext over the line limit", long_ext),
        (
            "trailer without colon",
            "2\r\nok\r\n0\r\nNo Colon\r\n\r\n".into(),
        ),
        (
            "bare LF in trailer",
            "2\r\nok\r\n0\r\nX-T: a\nX-U: b\r\n\r\n".into(),
        ),
        (
            "obs-fold in trailer",
            "2\r\nok\r\n0\r\nX-T: a\r\n folded\r\n\r\n".into(),
        ),
    ];
    for (what, body) in cases {
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body.as_bytes());
        assert_raw_answer_is_502(&raw, what);
    }
}

#[test]
fn unusual_but_valid_chunked_bodies_are_decoded_and_the_connection_reused() {
    let cases: [(&str, &[u8], &[u8]); 6] = [
        (
            "quoted extension with ; and escaped quote",
            b"5;name=\"a;b\\\"c\"\r\nhello\r\n0\r\n\r\n",
            b"hello",
        ),
        (
            "upper-case hex",
            b"A\r\n0123456789\r\n0\r\n\r\n",
            b"0123456789",
        ),
        ("leading zeros", b"0005\r\nhello\r\n00\r\n\r\n", b"hello"),
        (
            "trailer fields",
            b"5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-More: d\r\n\r\n",
            b"hello",
        ),
        (
            "extension on the last chunk",
            b"5\r\nhello\r\n0;last=1\r\n\r\n",
            b"hello",
        ),
        (
            "many one-byte chunks",
            b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n1\r\nd\r\n0\r\n\r\n",
            b"abcd",
        ),
    ];
    for (what, body, want) in cases {
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        raw.extend_from_slice(body);
        let connections = two_gets_to_raw(&raw, |r| {
            assert_eq!(r.status, 200, "{what}: {}", r.summary());
            assert_eq!(r.body, want, "{what}: {}", r.summary());
            // Trailers are not passed on as if they were header fields.
            assert!(!r.has_header("x-checksum"), "{what}: {}", r.summary());
        });
        assert_eq!(connections, 1, "{what}: the body ended cleanly");
    }
}

#[test]
fn a_head_and_chunked_body_trickled_byte_by_byte_are_parsed() {
    let raw: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n\
        5;e=\"q\"\r\nhello\r\n6\r\n world\r\n0\r\nX-T: v\r\n\r\n";
    let mut steps = Vec::new();
    for b in raw {
        steps.push(Step::Write(vec![*b]));
        steps.push(Step::Sleep(Duration::from_millis(1)));
    }
    let up = Upstream::start(Behaviour::always(Action::Steps(steps)));
    let srv = TestServer::start_toml(&one(&up.target(), "", "10s", ""));
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/x", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.header("x-a").as_deref(), Some("b"));
        assert_eq!(r.body, b"hello world");
    }
    assert_eq!(up.connections(), 1);
}

// ---- bytes nobody asked for ----

#[test]
fn bytes_after_a_complete_response_keep_its_connection_out_of_the_pool() {
    let stolen = "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen";
    for (route, cc) in [("plain", ""), ("cached", "Cache-Control: max-age=60\r\n")] {
        for (what, answer) in [
            (
                "Content-Length",
                format!("HTTP/1.1 200 OK\r\n{cc}Content-Length: 2\r\n\r\nok"),
            ),
            (
                "chunked",
                format!(
                    "HTTP/1.1 200 OK\r\n{cc}Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                ),
            ),
            (
                "HTTP/1.0 keep-alive",
                format!(
                    "HTTP/1.0 200 OK\r\n{cc}Connection: keep-alive\r\nContent-Length: 2\r\n\r\nok"
                ),
            ),
        ] {
            let what = format!("{route} route, {what}");
            let up = Upstream::start(Behaviour::raw(format!("{answer}{stolen}").as_bytes()));
            let extra = if route == "cached" {
                "cache = { ttl = \"60s\" }"
            } else {
                ""
            };
            let srv = TestServer::start_toml(&one(&up.target(), "", "2s", extra));
            let mut c = srv.client();
            for path in ["/a", "/b", "/c"] {
                let r = c.request(&get(path, &[]));
                assert_eq!(r.status, 200, "{what} {path}: {}", r.summary());
                assert_eq!(r.body, b"ok", "{what} {path}: a stray response was used");
            }
            assert_eq!(
                up.connections(),
                3,
                "{what}: a tainted connection was reused"
            );
        }
    }
}

#[test]
fn unsolicited_bytes_on_an_idle_pooled_connection_discard_it() {
    for extra in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nstolen"[..],
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"x",
        b"\r\n",
    ] {
        let what = shardline_tests::client::show(extra);
        let written = Arc::new(AtomicBool::new(false));
        let up = Upstream::start(Behaviour::always(Action::Steps(vec![
            Step::Write(Reply::ok("first").encode(false)),
            Step::Write(extra.to_vec()),
            raise(&written),
        ])));
        let srv = start_one(&up.target());
        let mut c = srv.client();
        let r = c.request(&get("/a", &[]));
        assert_eq!(r.body, b"first", "{what}: {}", r.summary());
        assert!(wait_until(GUARD, || written.load(Ordering::SeqCst)));
        // Loopback delivers a write before it returns; a moment for the
        // gateway's own bookkeeping.
        thread::sleep(Duration::from_millis(20));
        let r = c.request(&get("/b", &[]));
        assert_eq!(r.status, 200, "{what}: {}", r.summary());
        assert_eq!(
            r.body, b"first",
            "{what}: unsolicited bytes were read as the answer"
        );
        assert_eq!(
            up.connections(),
            2,
            "{what}: the tainted connection was reused"
        );
    }
}

#[test]
fn a_304_or_head_answer_followed_by_a_body_is_not_forwarded_or_pooled() {
    for (method, raw) in [
        (
            "GET",
            &b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\nContent-Length: 5\r\n\r\nhello"[..],
        ),
        (
            "GET",
            b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "HEAD",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        ("GET", b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\nhello"),
    ] {
        let what = format!("{method} {}", shardline_tests::client::show(raw));
        let up = Upstream::start(Behaviour::raw(raw));
        let srv = start_one(&up.target());
        let mut c = srv.client();
        for path in ["/a", "/b"] {
            let r = c.request(&request(method, path, &[], None));
            assert!(r.body.is_empty(), "{what}: {}", r.summary());
            assert!(r.status == 304 || r.status == 200 || r.status == 204, "{what}: {}", r.summary());
        }
        assert!(!c.poll_available(), "{what}: stray bytes reached the client: {}", shardline_tests::client::show(c.buffered()));
        assert_eq!(up.connections(), 2, "{what}: tainted connection reused");
    }
}

// ---- close-delimited bodies ----

#[test]
fn a_close_delimited_http10_response_is_forwarded_whole_and_not_pooled() {
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec()),
        Step::Close,
    ])));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/x", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"until close", "{}", r.summary());
        assert!(r.chunked, "{}", r.summary());
    }
    assert_eq!(up.connections(), 2);
    // An HTTP/1.0 client gets it close-delimited, and the connection ends.
    let mut c = srv.client();
    c.send(b"GET /x HTTP/1.0\r\n\r\n");
    let got = c.read_to_eof().unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.ends_with("\r\n\r\nuntil close"), "{text}");
    assert!(
        !text.to_ascii_lowercase().contains("transfer-encoding"),
        "{text}"
    );
}

#[test]
fn a_close_delimited_body_that_never_closes_is_cut_not_completed() {
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npartial".to_vec()),
        Step::Hang,
    ])));
    let srv = TestServer::start_toml(&one(&up.target(), "", "500ms", ""));
    let mut c = srv.client();
    c.send(&get("/x", &[]));
    match c.read_response(false) {
        Err(ReadError::Truncated { partial }) => assert_one_response(&partial),
        Ok(r) if r.status == 504 && r.body.starts_with(b"{") => {}
        other => panic!("a body that never ended must not look complete: {other:?}"),
    }
}

// ---- resets and closes ----

#[test]
fn a_reset_in_the_middle_of_the_head_is_a_502() {
    // The request is left unread, so dropping the socket sends a reset.
    let bad = reset_after(b"HTTP/1.1 200 OK\r\nContent-Len", Duration::from_millis(20));
    let (_good, srv) = start_beside_good(&bad.target(), "2s", "");
    let mut c = srv.client();
    for _ in 0..2 {
        let r = get_bad(&mut c);
        assert_problem(&r, 502, "bad-gateway", "reset mid-head");
    }
    assert_still_usable(&mut c, "reset mid-head");
}

#[test]
fn a_reset_mid_body_cuts_the_client_without_a_second_response() {
    let bad = reset_after(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789",
        Duration::from_millis(100),
    );
    let (_good, srv) = start_beside_good(&bad.target(), "2s", "");
    let mut c = srv.client();
    c.send(&get("/bad/x", &[]));
    let got = c.read_to_eof().unwrap_or_else(|e| panic!("{e}"));
    assert_one_response(&got);
    let body_at = find(&got, b"\r\n\r\n").unwrap() + 4;
    assert!(
        got.len() - body_at < 1000,
        "{}",
        shardline_tests::client::show(&got)
    );
}

#[test]
fn an_upstream_that_drops_every_connection_bounds_get_retries_and_never_retries_post() {
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![Step::Close])));
    let good = Upstream::start(Behaviour::ok("good"));
    let srv = TestServer::start_toml(&two(
        &up.target(),
        &good.target(),
        "retry = { attempts = 3, backoff = \"1ms\" }\n\
         circuit_breaker = { consecutive_failures = 1000, open_for = \"1s\" }",
        "2s",
        "",
    ));
    let mut c = srv.client();
    let r = get_bad(&mut c);
    assert_problem(&r, 502, "bad-gateway", "GET");
    assert!(up.wait_requests(3));
    assert_eq!(up.requests(), 3, "GET: one try and two retries, no more");
    c.send(&post("/bad/x", &[], b"once"));
    let (_, r) = c.read_final(false).unwrap();
    assert_problem(&r, 502, "bad-gateway", "POST");
    assert!(up.wait_requests(4));
    thread::sleep(Duration::from_millis(50));
    assert_eq!(up.requests(), 4, "a POST is sent once");
    assert_still_usable(&mut c, "retries");
}

#[test]
fn a_malformed_answer_is_retried_on_the_other_target_for_get_but_not_for_post() {
    let bad = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nok",
    ));
    let good = Upstream::start(Behaviour::ok("fine"));
    let srv = TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}", "{}"]
retry = {{ attempts = 2, backoff = "1ms" }}
circuit_breaker = {{ consecutive_failures = 1000, open_for = "1s" }}

[[routes]]
name = "p"
path = "/{{*rest}}"
upstream = "u"
"#,
        bad.target(),
        good.target()
    ));
    let mut c = srv.client();
    for i in 0..4 {
        let r = c.request(&get(&format!("/g{i}"), &[]));
        assert_eq!(r.status, 200, "GET {i}: {}", r.summary());
        assert_eq!(r.body, b"fine");
    }
    for i in 0..4 {
        let before = (bad.requests(), good.requests());
        let r = c.request(&post(&format!("/p{i}"), &[], b"x"));
        let after = (bad.requests(), good.requests());
        assert_eq!(
            (after.0 - before.0) + (after.1 - before.1),
            1,
            "POST {i} went upstream exactly once"
        );
        if after.0 > before.0 {
            assert_problem(&r, 502, "bad-gateway", "POST to the bad target");
        } else {
            assert_eq!(r.status, 200, "{}", r.summary());
        }
    }
}

// ---- clients that misbehave ----

#[test]
fn pipelined_requests_with_failures_in_the_middle_stay_in_order() {
    let good = Upstream::start(Behaviour::script(|req: &Recorded| {
        let reply = Action::Reply(Reply::ok(&req.target));
        if req.target.contains("slow") {
            Action::Delay(Duration::from_millis(30), Box::new(reply))
        } else {
            reply
        }
    }));
    let bad = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
    ));
    let srv = TestServer::start_toml(&two(&bad.target(), &good.target(), "", "2s", ""));
    let mut c = srv.client();
    let mut batch = Vec::new();
    let mut expect: Vec<(bool, &str, u16, String)> = Vec::new();
    for i in 0..12 {
        match i % 4 {
            0 => {
                batch.extend(get(&format!("/good/slow{i}"), &[]));
                expect.push((false, "GET", 200, format!("/good/slow{i}")));
            }
            1 => {
                batch.extend(get(&format!("/bad/{i}"), &[]));
                expect.push((false, "GET", 502, String::new()));
            }
            2 => {
                batch.extend(request("HEAD", &format!("/good/h{i}"), &[], None));
                expect.push((true, "HEAD", 200, String::new()));
            }
            _ => {
                batch.extend(post(&format!("/good/p{i}"), &[], b"body"));
                expect.push((false, "POST", 200, format!("/good/p{i}")));
            }
        }
    }
    c.send(&batch);
    batch.clear();
    for (i, (head, method, status, body)) in expect.into_iter().enumerate() {
        let r = match c.read_final(head) {
            Ok((_, r)) => r,
            Err(e) => panic!("response {i} ({method}): {e}"),
        };
        assert_eq!(r.status, status, "response {i} ({method}): {}", r.summary());
        if status == 200 {
            assert_eq!(r.text(), body, "response {i} ({method}) out of order");
        }
    }
    let r = c.request(&get("/good/last", &[]));
    assert_eq!(r.text(), "/good/last", "{}", r.summary());
}

#[test]
fn a_half_closed_client_still_gets_its_proxied_answer() {
    let up = Upstream::start(Behaviour::slow(
        Duration::from_millis(100),
        Reply::ok("late"),
    ));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    c.send(&get("/x", &[]));
    c.shutdown_write();
    match c.read_response(false) {
        Ok(r) => {
            assert_eq!(r.status, 200, "{}", r.summary());
            assert_eq!(r.body, b"late");
        }
        Err(e) => panic!("a half-closed client lost its answer: {e}"),
    }
    c.expect_closed("after the answer to a half-closed client");
    // And the server is fine.
    let r = srv.client().request(&get("/y", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[test]
fn a_client_that_disconnects_mid_upload_never_completes_the_upstream_request() {
    for chunked in [false, true] {
        let what = if chunked { "chunked" } else { "Content-Length" };
        let up = Upstream::start(Behaviour::ok("done"));
        let srv = start_upload_one(&up.target());
        let mut c = srv.client();
        if chunked {
            send_chunked_upload_start(&mut c, 16);
        } else {
            let piece = vec![b'u'; 16 * 1024];
            c.send(b"POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4194304\r\n\r\n");
            for _ in 0..16 {
                c.send(&piece);
            }
        }
        // 256 KiB sent: past the replayable prefix, so streaming has begun.
        assert!(
            up.wait_requests(1),
            "{what}: the upload reached the upstream"
        );
        drop(c);
        assert!(
            up.wait_open_connections_at_most(0),
            "{what}: the upstream connection of a cut upload must be closed"
        );
        assert!(
            up.log().is_empty(),
            "{what}: the upstream saw a complete request from a cut upload: {:?}",
            up.log().iter().map(|r| r.body_len).collect::<Vec<_>>()
        );
        let r = srv.client().request(&post("/after", &[], b"x"));
        assert_eq!(r.status, 200, "{what}: {}", r.summary());
    }
}

#[test]
fn a_malformed_chunked_upload_past_the_prefix_is_not_completed_upstream() {
    let up = Upstream::start(Behaviour::ok("done"));
    let srv = start_upload_one(&up.target());
    let mut c = srv.client();
    send_chunked_upload_start(&mut c, 8);
    assert!(up.wait_requests(1));
    c.send(b"zz\r\nbad\r\n0\r\n\r\n");
    match c.read_final(false) {
        Ok((_, r)) => assert!(
            r.status == 400 || r.status == 502,
            "a broken upload is the client's fault: {}",
            r.summary()
        ),
        Err(e) => assert!(e.is_closed(), "{e}"),
    }
    assert!(up.wait_open_connections_at_most(0));
    assert!(up.log().is_empty(), "the upstream saw a complete request");
}

#[test]
fn a_short_small_body_never_reaches_the_upstream() {
    let up = Upstream::start(Behaviour::ok("done"));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    c.send(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\nonly ten b");
    c.shutdown_write();
    assert_400_or_closed(&mut c);
    thread::sleep(Duration::from_millis(50));
    assert_eq!(up.requests(), 0, "a truncated body was forwarded");
}

#[test]
fn client_aborts_do_not_count_against_the_upstream_breaker() {
    let up = Upstream::start(Behaviour::script(|req: &Recorded| {
        if req.path() == "/big" {
            Action::Generate { len: 1 << 30 }
        } else {
            Action::Reply(Reply::ok("small"))
        }
    }));
    let srv = TestServer::start_toml(&one(
        &up.target(),
        "circuit_breaker = { consecutive_failures = 1000, failure_rate = 0.5, window = \"60s\", min_requests = 4, open_for = \"60s\" }",
        "30s",
        "",
    ));
    // Two downloads the clients abandon: each is one success (its head)
    // and one failure (its body) to the breaker, 50% in all.
    for i in 0..2 {
        let c = srv.client();
        abandon_download(c, "/big", &format!("abort {i}"));
        assert!(
            up.wait_open_connections_at_most(0),
            "abort {i}: the gateway gave up the upstream download"
        );
    }
    let r = srv.client().request(&get("/small", &[]));
    assert_eq!(
        r.status,
        200,
        "clients hanging up opened the upstream's circuit breaker: {}",
        r.summary()
    );
    assert_eq!(r.body, b"small");
}

#[test]
fn expect_100_continue_then_an_upstream_refusal_is_forwarded() {
    let up = Upstream::start(Behaviour::reply(
        Reply::new(417)
            .header("Content-Type", "text/plain")
            .body(b"no expectations"),
    ));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    c.send(
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 100, "{}", r.summary());
    c.send(b"body");
    let (_, r) = c.read_final(false).unwrap();
    assert_eq!(r.status, 417, "{}", r.summary());
    assert_eq!(r.body, b"no expectations");
    assert!(!up.last().has_header("expect"), "{:?}", up.last().headers);
    let r = c.request(&get("/y", &[]));
    assert_eq!(
        r.status,
        417,
        "the connection stayed in step: {}",
        r.summary()
    );
}

// ---- hop-by-hop and upgrades ----

#[test]
fn response_fields_named_in_connection_cannot_break_framing() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nConnection: Content-Length, Date, X-Secret\r\nX-Secret: s\r\nContent-Length: 5\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nConnection: Transfer-Encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nConnection: ,,Content-Type,,\r\nContent-Type: text/x-secret\r\nContent-Length: 5\r\n\r\nhello",
    ] {
        let what = shardline_tests::client::show(raw);
        two_gets_to_raw(raw, |r| {
            assert_eq!(r.status, 200, "{what}: {}", r.summary());
            assert_eq!(r.body, b"hello", "{what}: {}", r.summary());
            assert!(!r.has_header("x-secret"), "{what}: {}", r.summary());
            assert!(
                r.header("content-type").as_deref() != Some("text/x-secret"),
                "{what}: {}",
                r.summary()
            );
            assert!(r.header_all("date").len() <= 1, "{what}: {}", r.summary());
        });
    }
}

#[test]
fn upgrade_requests_are_forwarded_as_plain_requests() {
    let up = Upstream::start(Behaviour::ok("plain"));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    for upgrade in [
        &[
            "Connection: Upgrade, HTTP2-Settings",
            "Upgrade: h2c",
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
        ][..],
        &[
            "Connection: keep-alive, Upgrade",
            "Upgrade: websocket",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    ] {
        let r = c.request(&get("/ws", upgrade));
        assert_eq!(r.status, 200, "{upgrade:?}: {}", r.summary());
        assert_eq!(r.body, b"plain");
        let got = up.last();
        assert!(!got.has_header("upgrade"), "{:?}", got.headers);
        assert!(!got.has_header("http2-settings"), "{:?}", got.headers);
        assert!(
            !got.list("connection")
                .iter()
                .any(|o| o.eq_ignore_ascii_case("upgrade")),
            "{:?}",
            got.headers
        );
    }
    // The client connection is still HTTP/1.1.
    let r = c.request(&get("/after", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    // The HTTP/2 connection preface is not a request to forward.
    let before = up.requests();
    let mut c = srv.client();
    c.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    match c.read_final(false) {
        Ok((_, r)) => assert!(r.status >= 400, "{}", r.summary()),
        Err(e) => assert!(e.is_closed(), "{e}"),
    }
    assert_eq!(up.requests(), before, "the h2 preface reached the upstream");
}

// ---- what the upstream receives ----

#[test]
fn absolute_form_targets_go_upstream_in_origin_form() {
    let up = Upstream::start(path_echo());
    let srv = start_one(&up.target());
    let mut c = srv.client();
    let r = c.request(b"GET http://localhost/abs/x?q=1 HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.summary());
    let got = up.last();
    assert_eq!(got.target, "/abs/x?q=1");
    assert!(
        got.raw_head.starts_with(b"GET /abs/x?q=1 HTTP/1.1\r\n"),
        "{}",
        shardline_tests::client::show(&got.raw_head)
    );
    assert_eq!(got.header_all("host"), vec!["localhost"]);
    // An absolute-form authority that disagrees with Host is not guessed at.
    let before = up.requests();
    let mut c = srv.client();
    c.send(b"GET http://evil.example/x HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_400_or_closed(&mut c);
    assert_eq!(up.requests(), before);
}

#[test]
fn ambiguous_request_framing_never_reaches_the_upstream() {
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE.CL",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2e\r\n{smuggled}\r\n0\r\n\r\n"),
        ),
        (
            "TE twice",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE chunked, identity",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "TE xchunked",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "space before colon",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "VT before chunked",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "two Content-Lengths",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\nContent-Length: 48\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length list",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0, 48\r\n\r\n{smuggled}"),
        ),
        (
            "Content-Length with plus",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: +48\r\n\r\n{smuggled}"),
        ),
        (
            "Content_Length lookalike",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nContent_Length: 48\r\n\r\n{smuggled}"),
        ),
        (
            "obs-fold on Transfer-Encoding",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "HTTP/1.0 with chunked",
            format!("POST /x HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "duplicate Host",
            format!("GET /x HTTP/1.1\r\nHost: localhost\r\nHost: evil.example\r\n\r\n{smuggled}"),
        ),
        (
            "bare LF in head",
            format!("GET /x HTTP/1.1\nHost: localhost\nX-A: b\r\n\r\n{smuggled}"),
        ),
        (
            "chunk size with plus",
            format!("POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n+0\r\n\r\n{smuggled}"),
        ),
    ];
    for (what, bytes) in cases {
        let up = Upstream::start(path_echo());
        let srv = start_one(&up.target());
        let mut c = srv.client();
        c.send(bytes.as_bytes());
        let mut statuses = Vec::new();
        loop {
            match c.read_response_until(false, Instant::now() + Duration::from_millis(500)) {
                Ok(r) if r.is_interim() => {}
                Ok(r) => {
                    statuses.push(r.status);
                    if r.closes() {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        assert!(
            statuses
                .first()
                .is_some_and(|s| (400..500).contains(s) || *s == 501),
            "{what}: expected a refusal, got {statuses:?}"
        );
        let log = up.log();
        assert!(
            !log.iter().any(|r| r.path() == "/smuggled"),
            "{what}: smuggled request reached the upstream: {:?}",
            log.iter().map(|r| &r.target).collect::<Vec<_>>()
        );
        assert_eq!(
            up.requests(),
            0,
            "{what}: an ambiguous request was forwarded"
        );
    }
}

#[test]
fn a_chunked_request_with_trailers_goes_upstream_with_one_framing_and_no_trailers() {
    let up = Upstream::start(Behaviour::echo());
    let srv = start_one(&up.target());
    let mut c = srv.client();
    let r = c.request(
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n\
          5;ext=\"a;b\"\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"hello", "{}", r.summary());
    let got = up.last();
    let framing = got
        .headers
        .iter()
        .filter(|(n, _)| {
            n.eq_ignore_ascii_case("content-length") || n.eq_ignore_ascii_case("transfer-encoding")
        })
        .count();
    assert_eq!(framing, 1, "{:?}", got.headers);
    assert!(!got.has_header("x-sum"), "{:?}", got.headers);
    assert!(!got.has_header("trailer"), "{:?}", got.headers);
    assert_eq!(got.body_len, 5);
    let r = c.request(&get("/after", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    // A framing field in the trailer section is refused, not forwarded.
    let before = up.requests();
    let mut c = srv.client();
    c.send(
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nContent-Length: 999\r\n\r\n",
    );
    assert_400_or_closed(&mut c);
    assert_eq!(
        up.requests(),
        before,
        "a request with a forbidden trailer was forwarded"
    );
}

// ---- cached routes ----

#[test]
fn cached_routes_never_share_what_they_must_not() {
    let n = Arc::new(AtomicUsize::new(0));
    let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let (n2, seen2) = (Arc::clone(&n), Arc::clone(&seen));
    let up = Upstream::start(Behaviour::script(move |req: &Recorded| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        seen2.lock().unwrap().push(req.target.clone());
        let mut reply = Reply::ok(&format!("{}#{i}", req.target));
        let fields: &[(&str, &str)] = match req.path() {
            "/cookie" => &[
                ("Cache-Control", "public, max-age=60"),
                ("Set-Cookie", "sid=secret"),
            ],
            "/cookie-lower" => &[
                ("cache-control", "max-age=60"),
                ("set-cookie", "sid=secret"),
            ],
            "/split-no-store" => &[
                ("Cache-Control", "max-age=60"),
                ("Cache-Control", "no-store"),
            ],
            "/upper-private" => &[("Cache-Control", "MAX-AGE=60, PRIVATE")],
            "/qualified-no-cache" => &[("Cache-Control", "no-cache=\"Set-Cookie\", max-age=60")],
            "/vary-star-late" => &[("Cache-Control", "max-age=60"), ("Vary", "Accept, *")],
            "/vary-bad" => &[("Cache-Control", "max-age=60"), ("Vary", "X Bad")],
            "/no-store-quoted" => &[("Cache-Control", "max-age=60, no-store=\"x\"")],
            _ => &[],
        };
        for (k, v) in fields {
            reply = reply.header(k, v);
        }
        Action::Reply(reply)
    }));
    let srv = start_cached_one(&up.target());
    let mut c = srv.client();
    for path in [
        "/cookie",
        "/cookie-lower",
        "/split-no-store",
        "/upper-private",
        "/qualified-no-cache",
        "/vary-star-late",
        "/vary-bad",
        "/no-store-quoted",
    ] {
        let a = c.request(&get(path, &[]));
        let b = c.request(&get(path, &[]));
        assert_eq!(a.status, 200, "{path}: {}", a.summary());
        assert_ne!(
            a.body,
            b.body,
            "{path}: the second answer came from the cache: {}",
            b.summary()
        );
        assert_ne!(
            b.header("x-cache").as_deref(),
            Some("HIT"),
            "{path}: {}",
            b.summary()
        );
    }
}

#[test]
fn absurd_cache_lifetimes_are_clamped_not_overflowed() {
    let up = Upstream::start(Behaviour::script(|req: &Recorded| {
        let cc = match req.path() {
            "/huge" => "max-age=99999999999999999999999999",
            "/huge-s" => "s-maxage=18446744073709551616",
            "/sie" => "max-age=60, stale-if-error=99999999999999999999",
            _ => "max-age=60",
        };
        Action::Reply(Reply::ok(&req.target).header("Cache-Control", cc))
    }));
    let srv = start_cached_one(&up.target());
    let mut c = srv.client();
    for path in ["/huge", "/huge-s", "/sie"] {
        let a = c.request(&get(path, &[]));
        assert_eq!(a.status, 200, "{path}: {}", a.summary());
        let b = c.request(&get(path, &[]));
        assert_eq!(b.status, 200, "{path}: {}", b.summary());
        assert_eq!(
            b.header("x-cache").as_deref(),
            Some("HIT"),
            "{path}: {}",
            b.summary()
        );
    }
}

#[test]
fn a_cached_route_with_a_short_body_is_a_clean_502() {
    let bad = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(
            b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 10\r\n\r\nabc"
                .to_vec(),
        ),
        Step::Close,
    ])));
    let (_good, srv) = start_beside_good(&bad.target(), "2s", "cache = { ttl = \"60s\" }");
    let mut c = srv.client();
    for _ in 0..2 {
        let r = get_bad(&mut c);
        assert_problem(&r, 502, "bad-gateway", "short cached body");
    }
    assert_still_usable(&mut c, "short cached body");
}

// ---- accounting ----

/// A server with the admin listener on (for `/metrics`), one shard.
fn start_with_admin(toml: &str) -> TestServer {
    let mut cfg = shardline_tests::server::config_from_toml(toml);
    cfg = shardline_tests::server::test_config(cfg);
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    TestServer::from_builder(shardline::Server::new(cfg))
}

fn upstream_counters(srv: &TestServer) -> (f64, f64) {
    let r = Client::connect(srv.admin.unwrap()).request(&get("/metrics", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let text = r.text();
    let m = shardline_tests::metrics::parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (
        m.sum("shardline_upstream_requests_total", &[("upstream", "u")]),
        m.sum("shardline_upstream_failures_total", &[("upstream", "u")]),
    )
}

#[test]
fn a_response_that_breaks_mid_body_is_one_request_and_one_failure() {
    let up = Upstream::start(shardline_tests::upstream::Behaviour::killed_mid_body());
    let srv = start_with_admin(&one(&up.target(), "", "2s", ""));
    let mut c = srv.client();
    c.send(&get("/x", &[]));
    let _ = c.read_to_eof();
    assert!(up.wait_open_connections_at_most(0));
    let (requests, failures) = upstream_counters(&srv);
    assert_eq!(failures, 1.0, "one failure");
    assert_eq!(
        requests, 1.0,
        "one proxied request that broke mid-body is counted as {requests} upstream requests"
    );
}

#[test]
fn a_client_that_hangs_up_mid_download_is_not_an_upstream_failure() {
    let up = Upstream::start(Behaviour::generate(1 << 30));
    let srv = start_with_admin(&one(&up.target(), "", "30s", ""));
    abandon_download(srv.client(), "/big", "abort");
    assert!(up.wait_open_connections_at_most(0));
    let (_, failures) = upstream_counters(&srv);
    assert_eq!(
        failures, 0.0,
        "the client went away; the upstream did nothing wrong"
    );
}

// ---- early refusals with a reset ----

#[test]
fn an_upload_refused_early_and_reset_still_gets_its_answer() {
    for len in [32 * 1024, 48 * 1024] {
        // Reads only the head, answers, and closes with the body unread:
        // the close is a reset.
        let up = RawUpstream::start(|mut s, _| {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while find(&head, b"\r\n\r\n").is_none() {
                match s.read(&mut byte) {
                    Ok(1) => head.push(byte[0]),
                    _ => return,
                }
            }
            let _ = s.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 6\r\nConnection: close\r\n\r\nno way",
            );
            thread::sleep(Duration::from_millis(50));
            drop(s);
        });
        let srv = start_one(&up.target());
        let mut c = srv.client();
        let r = c.request(&post("/x", &[], &vec![b'b'; len]));
        assert_eq!(r.status, 401, "{len}: {}", r.summary());
        assert_eq!(r.body, b"no way");
    }
}

#[test]
fn an_upstream_that_always_dies_mid_body_opens_its_breaker() {
    // Every answer is a head and 10 of 1000 body bytes, then a close: each
    // request fails, three in a row.
    let up = Upstream::start(shardline_tests::upstream::Behaviour::killed_mid_body());
    let srv = TestServer::start_toml(&one(
        &up.target(),
        "circuit_breaker = { consecutive_failures = 3, open_for = \"60s\" }",
        "2s",
        "",
    ));
    for i in 0..3 {
        let mut c = srv.client();
        c.send(&get("/x", &[]));
        let got = c
            .read_to_eof()
            .unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert!(got.starts_with(b"HTTP/1.1 200"), "request {i}");
        assert!(up.wait_open_connections_at_most(0));
    }
    let mut c = srv.client();
    c.send(&get("/x", &[]));
    match c.read_final(false) {
        Ok((_, r)) => assert_eq!(
            r.status,
            503,
            "three failures in a row must open the breaker (consecutive_failures = 3): {}",
            r.summary()
        ),
        Err(e) => panic!(
            "the breaker did not open after three failures in a row: request 4 went \
             upstream ({} requests) and broke again: {e}",
            up.requests()
        ),
    }
    assert_eq!(up.requests(), 3, "the open breaker keeps requests away");
}

#[test]
fn a_malformed_forwarded_field_from_the_client_cannot_swallow_the_gateways_element() {
    let up = Upstream::start(Behaviour::ok("ok"));
    let srv = start_one(&up.target());
    let mut c = srv.client();
    for bad in [
        "Forwarded: for=\"unterminated",
        "Forwarded: for=\"a\\\"",
        "Forwarded: for=1.2.3.4;host=\"x, for=5.6.7.8",
    ] {
        let r = c.request(&get("/x", &[bad]));
        assert!(r.status == 200 || r.status == 400, "{bad}: {}", r.summary());
        if r.status != 200 {
            continue;
        }
        let got = up.last();
        let value = got.header_all("forwarded").join(", ");
        // The gateway's own element (for the real peer) must stand outside
        // any quoted-string the client opened, or an upstream reading the
        // field finds no element for the real peer.
        let at = value
            .rfind("for=127.0.0.1")
            .unwrap_or_else(|| panic!("{bad}: no element for the peer: {value}"));
        let mut quoted = false;
        let mut escaped = false;
        for ch in value[..at].chars() {
            match (quoted, escaped, ch) {
                (true, true, _) => escaped = false,
                (true, false, '\\') => escaped = true,
                (_, false, '"') => quoted = !quoted,
                _ => {}
            }
        }
        assert!(
            !quoted,
            "{bad}: the gateway's Forwarded element ends up inside the client's quoted string: {value}"
        );
    }
}

#[test]
fn an_upstream_age_counts_against_freshness_and_is_not_duplicated() {
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = Arc::clone(&n);
    let up = Upstream::start(Behaviour::script(move |req: &Recorded| {
        let i = n2.fetch_add(1, Ordering::SeqCst);
        let mut reply =
            Reply::ok(&format!("{}#{i}", req.target)).header("Cache-Control", "max-age=60");
        if req.path() == "/aged" {
            // Already older than its max-age at a cache upstream of us.
            reply = reply.header("Age", "100");
        } else {
            reply = reply.header("Age", "10");
        }
        Action::Reply(reply)
    }));
    let srv = start_cached_one(&up.target());
    let mut c = srv.client();
    for path in ["/young", "/aged"] {
        for _ in 0..2 {
            let r = c.request(&get(path, &[]));
            assert_eq!(r.status, 200, "{path}: {}", r.summary());
            assert!(
                r.header_all("age").len() <= 1,
                "{path}: two Age fields: {}",
                r.summary()
            );
        }
    }
    let r = c.request(&get("/young", &[]));
    assert_eq!(
        r.header("x-cache").as_deref(),
        Some("HIT"),
        "{}",
        r.summary()
    );
    let age: u64 = r.header("age").unwrap_or_default().parse().unwrap_or(0);
    assert!(
        age >= 10,
        "the upstream's Age is kept in the age a hit reports: {}",
        r.summary()
    );
    let r = c.request(&get("/aged", &[]));
    assert_ne!(
        r.header("x-cache").as_deref(),
        Some("HIT"),
        "a response whose Age (100) exceeds its max-age (60) is served as fresh: {}",
        r.summary()
    );
}
