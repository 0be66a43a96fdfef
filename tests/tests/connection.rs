//! Connection management: keep-alive, pipelining, chunked request bodies,
//! HTTP/1.0, `Connection: close`, `Expect: 100-continue`, and what happens
//! to a connection after a malformed request (RFC 9112 §9, §7.1, RFC 9110
//! §10.1.1).
#![allow(clippy::unwrap_used)]

mod common;

use common::{assert_announces_close, assert_problem};
use shardline_tests::client::show;
use shardline_tests::request::chunked;
use shardline_tests::{get, post, TestServer};

#[test]
fn one_thousand_requests_on_one_keep_alive_connection() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    for i in 0..1000 {
        let r = c.request(&get("/plaintext", &[]));
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        assert_eq!(r.body, b"Hello, World!", "request {i}");
        assert!(!r.closes(), "request {i} closed the connection");
    }
}

#[test]
fn sixteen_pipelined_requests_in_one_write_are_answered_in_order() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let mut bytes = Vec::new();
    let mut expect: Vec<(u16, Vec<u8>)> = Vec::new();
    for i in 0..16 {
        match i % 4 {
            0 => {
                bytes.extend_from_slice(&get("/plaintext", &[]));
                expect.push((200, b"Hello, World!".to_vec()));
            }
            1 => {
                let body = format!("request number {i}");
                bytes.extend_from_slice(&post(
                    "/echo",
                    &["Content-Type: text/plain"],
                    body.as_bytes(),
                ));
                expect.push((200, body.into_bytes()));
            }
            2 => {
                bytes.extend_from_slice(&get("/json", &[]));
                expect.push((200, br#"{"message":"Hello, World!"}"#.to_vec()));
            }
            _ => {
                bytes.extend_from_slice(&get(&format!("/missing/{i}"), &[]));
                expect.push((404, Vec::new()));
            }
        }
    }
    c.send(&bytes);
    for (i, (status, body)) in expect.iter().enumerate() {
        let r = c.response();
        assert_eq!(
            r.status,
            *status,
            "response {i} out of order? {}",
            r.summary()
        );
        if *status == 200 {
            if i % 4 == 2 {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                let want: serde_json::Value = serde_json::from_slice(body).unwrap();
                assert_eq!(v, want, "response {i}");
            } else {
                assert_eq!(&r.body, body, "response {i} out of order?");
            }
        }
    }
    // The connection is still usable afterwards.
    let r = c.request(&get("/healthz", &[]));
    assert_eq!(r.status, 200);
}

/// RFC 9112 §7.1: several chunks, chunk extensions (token and
/// quoted-string values, bare names), upper- and lower-case hex, and a
/// trailer section (RFC 9112 §7.1.2). The echo is the decoded content.
#[test]
fn chunked_body_with_extensions_and_trailers_is_decoded() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let mut req = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        .to_vec();
    req.extend_from_slice(b"5;name=value\r\nHello\r\n");
    req.extend_from_slice(b"2;bare;quoted=\"a \\\"b\\\" c\"\r\n, \r\n");
    req.extend_from_slice(b"A\r\nchunked wo\r\n");
    req.extend_from_slice(b"a;spaced=ext\r\nrld, plus \r\n");
    req.extend_from_slice(b"1\r\n!\r\n");
    req.extend_from_slice(b"0;last=yes\r\nX-Checksum: 1234\r\nX-Other: two words\r\n\r\n");
    let r = c.request(&req);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "Hello, chunked world, plus !");
    assert_eq!(r.header("content-type").as_deref(), Some("text/plain"));
    // Keep-alive survives a chunked request.
    let r = c.request(&get("/healthz", &[]));
    assert_eq!(r.status, 200);
}

/// The same body sent one byte per write: framing must not depend on how
/// the bytes are split into reads.
#[test]
fn chunked_body_split_across_many_writes() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let mut req =
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&chunked(&[b"abc", b"defgh", &[b'z'; 300]]));
    for b in &req {
        c.send(&[*b]);
    }
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let mut want = b"abcdefgh".to_vec();
    want.extend_from_slice(&[b'z'; 300]);
    assert_eq!(r.body, want);
}

#[test]
fn http10_closes_after_the_response_by_default() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    c.send(b"GET /plaintext HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"Hello, World!");
    assert!(!r.connection_has("keep-alive"), "{}", r.summary());
    c.expect_closed("HTTP/1.0 without keep-alive");
}

#[test]
fn http10_keep_alive_keeps_the_connection_when_asked() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    for i in 0..3 {
        c.send(b"GET /plaintext HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let r = c.response();
        assert_eq!(r.status, 200, "round {i}: {}", r.summary());
        // RFC 9112 §9.3: a 1.0 connection persists only if the server says so.
        assert!(
            r.connection_has("keep-alive"),
            "round {i}: a persistent HTTP/1.0 response must say Connection: keep-alive: {}",
            r.summary()
        );
    }
    // And the last one without keep-alive closes.
    c.send(b"GET /healthz HTTP/1.0\r\n\r\n");
    assert_eq!(c.response().status, 200);
    c.expect_closed("final HTTP/1.0 request without keep-alive");
}

#[test]
fn connection_close_is_honoured_and_later_requests_are_not_answered() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    // A first request keeps the connection; the second asks to close; the
    // third, pipelined behind it, must not be answered (RFC 9112 §9.6).
    let mut bytes = get("/healthz", &[]);
    bytes.extend_from_slice(&get("/plaintext", &["Connection: close"]));
    bytes.extend_from_slice(&get("/json", &[]));
    c.send(&bytes);
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(!r.closes());
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"Hello, World!");
    assert!(
        r.connection_has("close"),
        "the response to a Connection: close request says close: {}",
        r.summary()
    );
    c.expect_closed("after Connection: close");
}

#[test]
fn connection_close_among_other_tokens_is_honoured() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&get("/healthz", &["Connection: foo, CLOSE"]));
    assert_eq!(r.status, 200);
    assert!(r.connection_has("close"), "{}", r.summary());
    c.expect_closed("Connection: foo, CLOSE");
}

/// RFC 9110 §10.1.1: the client waits for 100 Continue before sending the
/// body; the server sends it, then the final response.
#[test]
fn expect_100_continue_gets_an_interim_response_then_the_answer() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
Content-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.read_response(false).unwrap();
    assert_eq!(
        interim.status,
        100,
        "expected 100 Continue first: {}",
        interim.summary()
    );
    assert!(interim.body.is_empty());
    c.send(b"hello world");
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"hello world");
    // Keep-alive afterwards.
    assert_eq!(c.request(&get("/healthz", &[])).status, 200);
}

/// RFC 9110 §15.2: no 1xx to an HTTP/1.0 client.
#[test]
fn expect_100_continue_from_http10_gets_no_interim_response() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello");
    let r = c.read_response(false).unwrap();
    assert_eq!(
        r.status,
        200,
        "no interim response to HTTP/1.0: {}",
        r.summary()
    );
    assert_eq!(r.body, b"hello");
}

#[test]
fn unknown_expectation_is_417() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&post("/echo", &["Expect: something-else"], b"abc"));
    assert_problem(&r, 417);
}

/// A malformed request is answered with 400 + Connection: close, the
/// connection closes, and the request pipelined behind it is not answered.
#[test]
fn malformed_request_closes_and_the_pipelined_request_is_not_answered() {
    let srv = TestServer::start_default();
    let cases: &[(&str, &[u8])] = &[
        ("space before colon", b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\nBad Name : x\r\n\r\n"),
        ("bare LF", b"GET /plaintext HTTP/1.1\nHost: localhost\n\n"),
        ("CL and TE together", b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
        ("invalid Content-Length", b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1x\r\n\r\n"),
        ("bad chunk size", b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"),
        ("obs-fold", b"GET /plaintext HTTP/1.1\r\nHost: localhost\r\nX: a\r\n b\r\n\r\n"),
    ];
    for (name, bad) in cases {
        let mut c = srv.client();
        // A good request first, then the bad one, then a good one.
        let mut bytes = get("/healthz", &[]);
        bytes.extend_from_slice(bad);
        bytes.extend_from_slice(&get("/plaintext", &[]));
        c.send(&bytes);
        let r = c.response();
        assert_eq!(
            r.status,
            200,
            "{name}: the first request is fine: {}",
            r.summary()
        );
        let r = c.response();
        assert_problem(&r, 400);
        assert_announces_close(&r);
        match c.read_to_eof() {
            Ok(rest) => assert!(
                rest.is_empty(),
                "{name}: the request behind the malformed one was answered: {}",
                show(&rest)
            ),
            Err(e) => panic!("{name}: connection not closed after a 400: {e}"),
        }
    }
}

#[test]
fn unsupported_version_is_505_and_closes() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    c.send(b"GET /plaintext HTTP/2.0\r\nHost: localhost\r\n\r\n");
    let r = c.response();
    assert_problem(&r, 505);
    assert_announces_close(&r);
    c.expect_closed("after 505");
}

#[test]
fn unknown_transfer_coding_is_501_and_closes() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n");
    let r = c.response();
    assert_problem(&r, 501);
    assert_announces_close(&r);
    c.expect_closed("after 501");
}

#[test]
fn missing_host_on_http11_is_400() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    c.send(b"GET /plaintext HTTP/1.1\r\n\r\n");
    let r = c.response();
    assert_problem(&r, 400);
}
