//! Every limit at limit-1 and exactly at the limit (accepted) and at
//! limit+1 (rejected with its status, `Connection: close`, and a closed
//! connection), plus the connection cap and the two timeouts.
//!
//! Nothing here depends on timing to pass: timeouts are set small in the
//! server's config and the test just waits (with a generous guard) for the
//! server to act.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{assert_announces_close, assert_problem};
use shardline_tests::{get, post, Client, TestServer};

const BODY_LIMIT: usize = 1024;

fn body_limited_server() -> TestServer {
    TestServer::start_with(|c| c.server.max_body_bytes = BODY_LIMIT as u64)
}

/// Asserts a rejection: the status as problem+json, Connection: close, and
/// the connection closes without answering anything else.
fn assert_rejected(c: &mut Client, status: u16, what: &str) -> shardline_tests::Response {
    let r = match c.read_final(false) {
        Ok((_, r)) => r,
        Err(e) => panic!("{what}: expected {status}, got {e}"),
    };
    assert_problem(&r, status);
    assert_announces_close(&r);
    c.expect_closed(what);
    r
}

#[test]
fn max_body_bytes_content_length() {
    let srv = body_limited_server();
    let mut c = srv.client();
    for n in [BODY_LIMIT - 1, BODY_LIMIT] {
        let body = vec![b'b'; n];
        let r = c.request(&post("/echo", &[], &body));
        assert_eq!(
            r.status,
            200,
            "{n}-byte body (limit {BODY_LIMIT}): {}",
            r.summary()
        );
        assert_eq!(r.body.len(), n);
    }
    // limit + 1: 413, decided from Content-Length.
    let body = vec![b'b'; BODY_LIMIT + 1];
    let _ = c.try_send(&post("/echo", &[], &body));
    assert_rejected(&mut c, 413, "Content-Length over max_body_bytes");
}

#[test]
fn max_body_bytes_content_length_rejected_before_the_body_arrives() {
    // The 413 is owed as soon as the head is read; the client has not sent
    // (and will never send) the body.
    let srv = body_limited_server();
    let mut c = srv.client();
    c.send(
        format!(
            "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n",
            BODY_LIMIT + 1
        )
        .as_bytes(),
    );
    assert_rejected(&mut c, 413, "Content-Length over the limit, body not sent");
}

fn chunked_post(total: usize) -> Vec<u8> {
    // Three chunks so the limit is crossed by the sum, not by one chunk.
    let a = total / 3;
    let b = total / 3;
    let rest = total - a - b;
    let mut req =
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for n in [a, b, rest] {
        req.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        req.extend(std::iter::repeat(b'c').take(n));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    req
}

#[test]
fn max_body_bytes_chunked() {
    let srv = body_limited_server();
    let mut c = srv.client();
    for n in [BODY_LIMIT - 1, BODY_LIMIT] {
        let r = c.request(&chunked_post(n));
        assert_eq!(r.status, 200, "{n}-byte chunked body: {}", r.summary());
        assert_eq!(r.body.len(), n);
    }
    let _ = c.try_send(&chunked_post(BODY_LIMIT + 1));
    assert_rejected(&mut c, 413, "chunked body over max_body_bytes");
}

/// A request whose head (request line through the final CRLFCRLF) is
/// exactly `total` bytes.
fn head_of_size(total: usize) -> Vec<u8> {
    let prefix = b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\nX-Pad: ";
    let suffix = b"\r\n\r\n";
    let pad = total - prefix.len() - suffix.len();
    let mut out = prefix.to_vec();
    out.extend(std::iter::repeat(b'p').take(pad));
    out.extend_from_slice(suffix);
    assert_eq!(out.len(), total);
    out
}

#[test]
fn max_header_bytes() {
    const LIMIT: usize = 4096;
    let srv = TestServer::start_with(|c| c.server.max_header_bytes = LIMIT as u64);
    let mut c = srv.client();
    for n in [LIMIT - 1, LIMIT] {
        let r = c.request(&head_of_size(n));
        assert_eq!(
            r.status,
            200,
            "{n}-byte head (limit {LIMIT}): {}",
            r.summary()
        );
    }
    let _ = c.try_send(&head_of_size(LIMIT + 1));
    assert_rejected(&mut c, 431, "head one byte over max_header_bytes");
}

#[test]
fn max_header_bytes_default_is_16_kib() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&head_of_size(16 * 1024));
    assert_eq!(r.status, 200, "{}", r.summary());
    let _ = c.try_send(&head_of_size(16 * 1024 + 1));
    assert_rejected(&mut c, 431, "head over the default 16 KiB");
}

/// `fields` header fields in all, Host included.
fn with_fields(fields: usize) -> Vec<u8> {
    let extra: Vec<String> = (1..fields).map(|i| format!("X-F{i}: v")).collect();
    let refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    get("/plaintext", &refs)
}

#[test]
fn header_field_count_limit_is_100() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    // 24 / 25: either side of the slots a request is first parsed with.
    for n in [24, 25, 99, 100] {
        let r = c.request(&with_fields(n));
        assert_eq!(r.status, 200, "{n} header fields: {}", r.summary());
    }
    c.send(&with_fields(101));
    assert_rejected(&mut c, 431, "101 header fields");
}

fn target_of_len(n: usize) -> String {
    let mut t = String::from("/");
    t.push_str(&"t".repeat(n - 1));
    t
}

#[test]
fn request_target_limit_is_8192_bytes() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    for n in [8191, 8192] {
        let r = c.request(&get(&target_of_len(n), &[]));
        // Accepted: routed (no such path), not refused as too long.
        assert_eq!(r.status, 404, "{n}-byte target: {}", r.summary());
        assert!(!r.closes(), "{n}-byte target closed the connection");
    }
    c.send(&get(&target_of_len(8193), &[]));
    assert_rejected(&mut c, 414, "8193-byte target");
}

#[test]
fn request_target_limit_applies_to_the_query_too() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let base = "/plaintext?q=";
    let ok = format!("{base}{}", "q".repeat(8192 - base.len()));
    let r = c.request(&get(&ok, &[]));
    assert_eq!(
        r.status,
        200,
        "8192-byte target with a query: {}",
        r.summary()
    );
    assert_eq!(r.body, b"Hello, World!");
    let too_long = format!("{ok}q");
    c.send(&get(&too_long, &[]));
    assert_rejected(&mut c, 414, "8193-byte target with a query");
}

/// With a cap of 2 connections, a third is not served until one of the
/// first two closes; then it is.
#[test]
fn max_connections_per_shard_holds_the_third_connection() {
    let srv = TestServer::start_with(|c| c.server.max_connections_per_shard = 2);
    let mut c1 = srv.client();
    let mut c2 = srv.client();
    assert_eq!(c1.request(&get("/healthz", &[])).status, 200);
    assert_eq!(c2.request(&get("/healthz", &[])).status, 200);

    // The third connection completes its TCP handshake (kernel backlog)
    // and sends a request.
    let mut c3 = srv.client();
    c3.send(&get("/plaintext", &[]));
    // Full round trips on the served connections happen while c3 waits.
    for _ in 0..3 {
        assert_eq!(c2.request(&get("/healthz", &[])).status, 200);
        assert_eq!(c1.request(&get("/healthz", &[])).status, 200);
    }
    assert!(
        !c3.poll_available(),
        "a third connection was served while the cap of 2 was reached: {:?}",
        c3.buffered()
    );

    // Closing one frees a slot: the third connection is now served.
    drop(c1);
    let r = c3.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"Hello, World!");
    // And c2 still works.
    assert_eq!(c2.request(&get("/healthz", &[])).status, 200);
}

/// A client that sends part of a head and then nothing gets 408 and a
/// close once header_read_timeout passes.
#[test]
fn header_read_timeout_answers_408_and_closes() {
    let srv = TestServer::start_with(|c| c.server.header_read_timeout = Duration::from_millis(200));
    let mut c = srv.client();
    c.send(b"GET /plaintext HTTP/1.1\r\nHost: local");
    assert_rejected(&mut c, 408, "partial head then silence");
}

/// The timeout covers the whole head, not each read: trickling bytes does
/// not extend it. The test sends at most a few hundred bytes, one per
/// round, and stops as soon as the server answers.
#[test]
fn header_read_timeout_is_not_reset_by_trickling_bytes() {
    let srv = TestServer::start_with(|c| c.server.header_read_timeout = Duration::from_millis(200));
    let mut c = srv.client();
    c.send(b"GET /plaintext HTTP/1.1\r\nX-Slow: ");
    // One byte per 50 ms would last 30 s for 600 bytes; the server must
    // cut it after ~200 ms. The loop is bounded and ends on the first byte
    // from the server.
    let mut answered = false;
    for _ in 0..600 {
        if !c.try_send(b"a") || c.poll_available() {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(answered, "a trickled head was never timed out");
    assert_rejected(&mut c, 408, "trickled head");
}

#[test]
fn idle_timeout_closes_an_idle_keep_alive_connection() {
    let srv = TestServer::start_with(|c| c.server.idle_timeout = Duration::from_millis(200));
    let mut c = srv.client();
    let r = c.request(&get("/healthz", &[]));
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    // Now say nothing: the server closes. It may say nothing (the usual
    // case for an idle connection) or send a 408 first.
    match c.read_to_eof() {
        Ok(rest) if rest.is_empty() => {}
        Ok(rest) => assert!(
            rest.starts_with(b"HTTP/1.1 408"),
            "an idle connection got something other than a close or 408: {}",
            shardline_tests::client::show(&rest)
        ),
        Err(e) => panic!("idle connection was not closed: {e}"),
    }
}

/// The shard's timers and accepts run on glommio's ring, which the epoll
/// readiness loop leaves alone while it waits briefly in epoll for busy
/// connections: a steady stream of requests on one connection must not
/// keep another connection's idle timeout from firing, nor a new
/// connection from being accepted.
#[test]
fn timers_and_accepts_run_while_another_connection_keeps_the_shard_busy() {
    // The suite's mode, and "epoll-wait", whose brief waits in epoll are
    // what could hold glommio's ring back.
    timers_and_accepts_run_while_busy(None);
    timers_and_accepts_run_while_busy(Some(shardline::ReadinessMode::EpollWait));
}

fn timers_and_accepts_run_while_busy(mode: Option<shardline::ReadinessMode>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Bounds the busy client's loop, so the test stops by itself.
    const MAX_BUSY_REQUESTS: usize = 200_000;

    let srv = Arc::new(TestServer::start_with(|c| {
        c.server.idle_timeout = Duration::from_millis(300);
        if let Some(m) = mode {
            c.server.readiness = m;
        }
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let srv = Arc::clone(&srv);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut c = srv.client();
            let mut served = 0usize;
            while !stop.load(Ordering::Relaxed) && served < MAX_BUSY_REQUESTS {
                let r = c.request(&get("/plaintext", &[]));
                assert_eq!(r.status, 200, "{}", r.summary());
                served += 1;
            }
            served
        })
    };
    let mut idle = srv.client();
    assert_eq!(idle.request(&get("/healthz", &[])).status, 200);
    // A new connection is accepted and served meanwhile.
    let mut fresh = srv.client();
    assert_eq!(fresh.request(&get("/healthz", &[])).status, 200);
    // The idle one is closed by its timeout (silently or after a 408).
    let closed = idle.read_to_eof();
    stop.store(true, Ordering::Relaxed);
    let served = busy.join().expect("busy client");
    match closed {
        Ok(rest) => assert!(
            rest.is_empty() || rest.starts_with(b"HTTP/1.1 408"),
            "the idle connection got something other than a close or 408: {}",
            shardline_tests::client::show(&rest)
        ),
        Err(e) => panic!(
            "the idle connection was not timed out while another was busy \
             ({served} requests served meanwhile): {e}"
        ),
    }
    assert!(served > 0, "the busy connection was never served");
}

#[test]
fn endless_request_target_is_refused_before_the_head_completes() {
    // A request line far beyond the target limit with no end in sight is
    // refused before the head completes (414), not buffered forever.
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let mut bytes = b"GET /".to_vec();
    bytes.extend(std::iter::repeat(b'a').take(20_000));
    let _ = c.try_send(&bytes);
    let r = c.read_final(false).map(|x| x.1);
    match r {
        Ok(r) => {
            assert_problem(&r, 414);
            assert_announces_close(&r);
        }
        Err(e) => panic!("an endless request line was not refused: {e}"),
    }
}

#[test]
fn refusals_of_head_requests_carry_no_content() {
    // RFC 9110 §9.3.2: no content in any answer to HEAD; a pipelining
    // client would take a problem body for the start of its next response.
    let srv = TestServer::start_default();
    for (raw, status) in [
        (&b"HEAD /plaintext HTTP/1.1\r\n\r\n"[..], 400),
        (
            b"HEAD /plaintext HTTP/1.1\r\nHost: x\r\nExpect: something-else\r\n\r\n",
            417,
        ),
        (
            b"HEAD /plaintext HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
            413,
        ),
        (b"HEAD /plaintext HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    ] {
        let mut c = srv.client();
        c.send(raw);
        let r = c.read_response(true).unwrap();
        assert_eq!(r.status, status, "{}", r.summary());
        assert!(r.body.is_empty(), "{}", r.summary());
        assert_eq!(
            c.read_to_eof().unwrap_or_default(),
            b"",
            "bytes after the head"
        );
    }
}

#[test]
fn a_body_that_stops_arriving_is_a_408_on_streamed_routes_and_the_admin_listener() {
    let mut cfg = shardline_tests::server::test_config(shardline_tests::server::config_from_toml(
        "[server]\nidle_timeout = \"300ms\"\n\n[[upstreams]]\nname = \"u\"\n\
         targets = [\"127.0.0.1:9\"]\n\n[[routes]]\nname = \"up\"\npath = \"/up\"\nupstream = \"u\"\n",
    ));
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let srv = TestServer::from_builder(shardline::Server::new(cfg));
    let admin = srv.admin.expect("the test server has an admin listener");
    // Over the 64 KiB read up front, so the proxied body streams.
    for (addr, raw) in [
        (
            srv.addr,
            &b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc"[..],
        ),
        (
            admin,
            b"POST /admin/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc",
        ),
    ] {
        let mut c = Client::connect(addr);
        c.send(raw);
        let r = assert_rejected(&mut c, 408, "stalled body");
        assert!(r.text().contains("request-timeout"), "{}", r.summary());
    }
}
