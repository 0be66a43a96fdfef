//! Large bodies through upstream routes (issue 4): a 1 GiB request body
//! and a 1 GiB response body are streamed, never buffered whole, and a body
//! over the route's `max_body_bytes` is refused with 413.
//!
//! The server runs in this process, so this process's memory is the
//! server's: the tests read `VmHWM` (peak resident set) and `VmRSS` from
//! `/proc/self/status` before and after and bound the growth. The data is
//! generated on the fly from a repeating pattern block (never a 1 GiB
//! buffer) and checked by sampling as it arrives. The two 1 GiB tests take
//! a lock so that one's buffers never count against the other.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::assert_problem;
use shardline_tests::client::find;
use shardline_tests::upstream::{
    pattern_block, pattern_byte, pattern_matches, Action, Behaviour, Recorded, Upstream,
};
use shardline_tests::{post, Client, TestServer, GUARD};

const GIB: u64 = 1 << 30;

/// Allowed growth of the peak and current resident set while 1 GiB passes
/// through: far below the body (a buffered body would be 1024 MiB), above
/// what socket buffers, read buffers and allocator slack may add.
const RSS_GROWTH_LIMIT_KIB: u64 = 64 * 1024;

/// The spec's `type` for a body over the route's `max_body_bytes` (issue 4:
/// "413 `content-too-large`"). Note: the server-wide limit's problem type
/// from earlier issues is `body-too-large`.
/// The same problem type as the server-wide limit (protocol's BodyTooLarge).
const TOO_LARGE_TYPE: &str = "https://shardline.dev/problems/body-too-large";

static BIG: Mutex<()> = Mutex::new(());

fn big_lock() -> MutexGuard<'static, ()> {
    BIG.lock().unwrap_or_else(|e| e.into_inner())
}

/// A `/proc/self/status` field in KiB (`VmHWM`, `VmRSS`).
fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[derive(Debug, Clone, Copy)]
struct Memory {
    hwm_kib: u64,
    rss_kib: u64,
}

fn memory() -> Memory {
    Memory {
        hwm_kib: status_kib("VmHWM"),
        rss_kib: status_kib("VmRSS"),
    }
}

fn assert_growth_bounded(before: Memory, after: Memory, what: &str) {
    let hwm = after.hwm_kib.saturating_sub(before.hwm_kib);
    let rss = after.rss_kib.saturating_sub(before.rss_kib);
    assert!(
        hwm < RSS_GROWTH_LIMIT_KIB && rss < RSS_GROWTH_LIMIT_KIB,
        "{what}: memory grew by {} MiB peak / {} MiB resident (limit {} MiB): \
         the body must be streamed, not buffered ({before:?} -> {after:?})",
        hwm / 1024,
        rss / 1024,
        RSS_GROWTH_LIMIT_KIB / 1024
    );
}

fn big_route_config(up: &Upstream) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]
request_timeout = "600s"

[[routes]]
name = "big"
path = "/{{*rest}}"
upstream = "u"
max_body_bytes = "2GiB"
timeout = "600s"
"#,
        up.target()
    )
}

/// Writes `len` patterned bytes (block by block); panics with the server's
/// answer if it stops reading.
fn send_pattern(c: &mut Client, len: u64, chunked: bool) {
    let block = pattern_block();
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(block.len() as u64) as usize;
        let ok = if chunked {
            c.try_send(format!("{n:x}\r\n").as_bytes())
                && c.try_send(&block[..n])
                && c.try_send(b"\r\n")
        } else {
            c.try_send(&block[..n])
        };
        if !ok {
            let answer = c.read_response(false);
            panic!("the server stopped reading the body after {sent} bytes: {answer:?}");
        }
        sent += n as u64;
    }
    if chunked {
        c.send(b"0\r\n\r\n");
    }
}

fn sink_answer(c: &mut Client, len: u64) {
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), len.to_string(), "bytes the upstream received");
    assert_eq!(
        r.header("x-pattern-ok").as_deref(),
        Some("true"),
        "the body reached the upstream intact and in order"
    );
}

#[test]
fn one_gib_request_body_is_streamed_to_the_upstream() {
    let _big = big_lock();
    let up = Upstream::start(Behaviour::sink());
    let srv = TestServer::start_toml(&big_route_config(&up));
    let mut c = srv.client();
    // Warm-up through the same route: pools and buffers exist before the
    // baseline is taken.
    let small: Vec<u8> = (0..4096).map(pattern_byte).collect();
    let r = c.request(&post("/upload", &[], &small));
    assert_eq!(r.text(), "4096", "{}", r.summary());

    let before = memory();
    c.send(
        format!(
            "POST /upload HTTP/1.1\r\nHost: localhost\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {GIB}\r\n\r\n"
        )
        .as_bytes(),
    );
    send_pattern(&mut c, GIB, false);
    sink_answer(&mut c, GIB);
    let after = memory();
    assert_growth_bounded(before, after, "1 GiB request body");
    let got = up.last();
    assert_eq!(got.body_len, GIB);
    assert_eq!(got.header("content-length"), Some(GIB.to_string().as_str()));
}

#[test]
fn chunked_request_body_is_streamed_rechunked() {
    const LEN: u64 = 64 << 20;
    let _big = big_lock();
    let up = Upstream::start(Behaviour::sink());
    let srv = TestServer::start_toml(&big_route_config(&up));
    let mut c = srv.client();
    c.send(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n");
    send_pattern(&mut c, LEN, true);
    sink_answer(&mut c, LEN);
    let got = up.last();
    assert!(got.chunked, "a chunked request body is forwarded chunked");
    assert_eq!(got.body_len, LEN);
}

/// One `read`, retried when a signal interrupts it (the in-process server
/// uses signals).
fn read_some(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match s.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Reads a response head from a raw socket; returns the head text and the
/// body bytes that came with it.
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut block = vec![0u8; 64 * 1024];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i + 4]).into_owned();
            return (head, buf[i + 4..].to_vec());
        }
        let n =
            read_some(s, &mut block).unwrap_or_else(|e| panic!("reading the response head: {e}"));
        assert!(n > 0, "closed before the response head: {buf:?}");
        buf.extend_from_slice(&block[..n]);
    }
}

fn head_field(head: &str, name: &str) -> Option<String> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

#[test]
fn one_gib_response_body_is_streamed_to_the_client() {
    let _big = big_lock();
    let up = Upstream::start(Behaviour::script(|req: &Recorded| {
        let len = if req.path() == "/small" { 4096 } else { GIB };
        Action::Generate { len }
    }));
    let srv = TestServer::start_toml(&big_route_config(&up));
    // Warm-up.
    let mut c = srv.client();
    let r = c.request(&shardline_tests::get("/small", &[]));
    assert_eq!(r.body.len(), 4096, "{}", r.summary());
    assert!(pattern_matches(0, &r.body));
    drop(c);

    let before = memory();
    let mut s = TcpStream::connect_timeout(&srv.addr, GUARD).unwrap();
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.set_write_timeout(Some(GUARD)).unwrap();
    s.write_all(b"GET /download HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let (head, first) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(
        head_field(&head, "content-length").as_deref(),
        Some(GIB.to_string().as_str()),
        "framed with the upstream's Content-Length: {head}"
    );
    assert!(
        pattern_matches(0, &first),
        "body bytes with the head are wrong"
    );
    let mut got = first.len() as u64;
    let mut block = vec![0u8; 256 * 1024];
    let mut next_pause = 256 << 20;
    while got < GIB {
        // A slow reader now and then: a server that does not apply
        // backpressure would buffer what the upstream sends meanwhile.
        if got >= next_pause {
            std::thread::sleep(Duration::from_millis(200));
            next_pause += 256 << 20;
        }
        let want = (GIB - got).min(block.len() as u64) as usize;
        let n = read_some(&mut s, &mut block[..want])
            .unwrap_or_else(|e| panic!("reading the body after {got} bytes: {e}"));
        assert!(n > 0, "connection closed after {got} of {GIB} body bytes");
        assert!(
            pattern_matches(got, &block[..n]),
            "body bytes at offset {got} are wrong"
        );
        got += n as u64;
    }
    assert_eq!(got, GIB);
    let after = memory();
    assert_growth_bounded(before, after, "1 GiB response body");
}

#[test]
fn body_over_the_route_limit_is_413() {
    let _big = big_lock();
    let up = Upstream::start(Behaviour::sink());
    let srv = TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "small"
path = "/{{*rest}}"
upstream = "u"
max_body_bytes = "1KiB"
"#,
        up.target()
    ));
    let mut c = srv.client();
    let at_limit: Vec<u8> = (0..1024).map(pattern_byte).collect();
    let r = c.request(&post("/up", &[], &at_limit));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "1024");

    // Content-Length over the limit: refused before anything is forwarded.
    let mut c = srv.client();
    let over: Vec<u8> = (0..1025).map(pattern_byte).collect();
    let _ = c.try_send(&post("/up", &[], &over));
    let r = c.response();
    let ty = assert_problem(&r, 413);
    assert_eq!(ty, TOO_LARGE_TYPE, "{}", r.summary());
    assert_eq!(up.requests(), 1, "the oversized body was forwarded");

    // A chunked body that crosses the limit.
    let mut c = srv.client();
    let mut req =
        b"POST /up HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&shardline_tests::request::chunked(&[&at_limit, &at_limit]));
    let _ = c.try_send(&req);
    let r = c.response();
    let ty = assert_problem(&r, 413);
    assert_eq!(ty, TOO_LARGE_TYPE, "{}", r.summary());
}
