//! The upstream proxy (issue 4): what is forwarded, what comes back, and
//! what happens when the upstream misbehaves. Every upstream here is a real
//! server on a loopback socket ([`shardline_tests::upstream`]).
//!
//! Nothing depends on timing to pass: where a test must know that the
//! gateway has already forwarded something (streaming), the upstream waits
//! on a [`Gate`] that the test opens only after it has seen the bytes arrive.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::assert_problem;
use shardline_tests::client::find;
use shardline_tests::request::{chunked, request};
use shardline_tests::upstream::{
    chunk, chunked_head, closed_addr, Action, Behaviour, Gate, Recorded, Reply, Step, Upstream,
    KILLED_BODY_PREFIX,
};
use shardline_tests::{get, post, Client, ReadError, Response, TestServer, GUARD};

/// One upstream `u` with `targets = [target]` and one catch-all route to it.
fn proxy_config(target: &str, upstream_extra: &str, route_extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{target}"]
{upstream_extra}

[[routes]]
name = "proxy"
path = "/{{*rest}}"
upstream = "u"
{route_extra}
"#
    )
}

/// Routes `/bad/{*rest}` to `bad` (with extra route lines) and
/// `/good/{*rest}` to a healthy upstream at `good`.
fn bad_and_good(bad: &str, good: &str, bad_upstream_extra: &str, bad_route_extra: &str) -> String {
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
{bad_route_extra}

[[routes]]
name = "good"
path = "/good/{{*rest}}"
upstream = "good"
"#
    )
}

/// Asserts a problem+json error with the status and `type` slug.
fn assert_problem_type(r: &Response, status: u16, slug: &str) {
    let ty = assert_problem(r, status);
    assert_eq!(
        ty,
        format!("https://shardline.dev/problems/{slug}"),
        "{}",
        r.summary()
    );
}

/// Asserts that a request to the healthy route on the same connection is
/// answered: the connection survived the error before it.
fn assert_still_usable(c: &mut Client, what: &str) {
    let r = c.request(&get("/good/after", &[]));
    assert_eq!(
        r.status,
        200,
        "connection must stay usable after {what}: {}",
        r.summary()
    );
    assert_eq!(r.body, b"good", "{}", r.summary());
}

/// Waits (at most GUARD) until the bytes have arrived on the client's
/// socket, without consuming them.
fn wait_peek(c: &Client, needle: &[u8]) -> bool {
    let s = c.stream();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let end = Instant::now() + GUARD;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < end {
        match s.peek(&mut buf) {
            Ok(0) => return false,
            Ok(n) if find(&buf[..n], needle).is_some() => return true,
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    false
}

/// Counts the response status lines in some bytes.
fn status_lines(bytes: &[u8]) -> usize {
    bytes.windows(7).filter(|w| w == b"HTTP/1.").count()
}

// ---- what is forwarded ----

#[test]
fn forwards_method_path_query_headers_and_body() {
    let up = Upstream::start(Behaviour::reply(
        Reply::new(201)
            .header("Content-Type", "application/json")
            .header("X-Upstream", "yes")
            .body(b"{\"ok\":true}"),
    ));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let cases: [(&str, Option<&[u8]>); 5] = [
        ("GET", None),
        ("POST", Some(b"post body")),
        ("PUT", Some(b"{\"put\":1}")),
        ("PATCH", Some(b"patch")),
        ("DELETE", None),
    ];
    for (method, body) in cases {
        let r = c.request(&request(
            method,
            "/a/b/c.json?x=1&y=two%20three",
            &["X-Custom: some value", "Content-Type: text/plain"],
            body,
        ));
        assert_eq!(r.status, 201, "{method}: {}", r.summary());
        assert_eq!(r.header("x-upstream").as_deref(), Some("yes"), "{method}");
        assert_eq!(r.media_type().as_deref(), Some("application/json"));
        assert_eq!(r.body, b"{\"ok\":true}", "{method}");

        let got = up.last();
        assert_eq!(got.method, method);
        assert_eq!(got.target, "/a/b/c.json?x=1&y=two%20three");
        assert_eq!(got.header("x-custom"), Some("some value"), "{method}");
        assert_eq!(got.header("content-type"), Some("text/plain"), "{method}");
        let want = body.unwrap_or(b"");
        assert_eq!(got.body, want, "{method} body");
        if !want.is_empty() {
            let len = want.len().to_string();
            assert_eq!(
                got.header("content-length"),
                Some(len.as_str()),
                "{method}: Content-Length bodies are forwarded with Content-Length"
            );
            assert!(!got.chunked, "{method}");
        }
    }
    assert_eq!(up.requests(), cases.len());
}

#[test]
fn strip_prefix_removes_the_front_of_the_path() {
    let up = Upstream::start(Behaviour::ok("ok"));
    let srv = TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "v1"
path = "/v1/{{*rest}}"
upstream = "u"
strip_prefix = "/v1"
"#,
        up.target()
    ));
    let mut c = srv.client();
    for (sent, forwarded) in [
        ("/v1/users/42?active=true", "/users/42?active=true"),
        ("/v1/users/42/orders", "/users/42/orders"),
        ("/v1/", "/"),
    ] {
        let r = c.request(&get(sent, &[]));
        assert_eq!(r.status, 200, "{sent}: {}", r.summary());
        assert_eq!(up.last().target, forwarded, "{sent}");
    }
}

#[test]
fn rewrite_replaces_the_path_and_keeps_the_query() {
    let up = Upstream::start(Behaviour::ok("ok"));
    let srv = TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "users"
path = "/v1/users/{{*rest}}"
upstream = "u"
rewrite = "/api/{{*rest}}"

[[routes]]
name = "profile"
path = "/u/{{id}}"
upstream = "u"
rewrite = "/users/{{id}}/profile"
"#,
        up.target()
    ));
    let mut c = srv.client();
    for (sent, forwarded) in [
        ("/v1/users/42/orders?page=2", "/api/42/orders?page=2"),
        ("/v1/users/7", "/api/7"),
        ("/u/7?x=y", "/users/7/profile?x=y"),
        ("/u/abc", "/users/abc/profile"),
    ] {
        let r = c.request(&get(sent, &[]));
        assert_eq!(r.status, 200, "{sent}: {}", r.summary());
        assert_eq!(up.last().target, forwarded, "{sent}");
    }
}

#[test]
fn host_is_preserved_replaced_by_target_or_literal() {
    let up = Upstream::start(Behaviour::ok("ok"));
    let t = up.target();
    let srv = TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "default"
targets = ["{t}"]

[[upstreams]]
name = "preserve"
targets = ["{t}"]
host = "preserve"

[[upstreams]]
name = "target"
targets = ["{t}"]
host = "target"

[[upstreams]]
name = "literal"
targets = ["{t}"]
host = "internal.svc.example"

[[routes]]
name = "d"
path = "/d/{{*rest}}"
upstream = "default"

[[routes]]
name = "p"
path = "/p/{{*rest}}"
upstream = "preserve"

[[routes]]
name = "t"
path = "/t/{{*rest}}"
upstream = "target"

[[routes]]
name = "l"
path = "/l/{{*rest}}"
upstream = "literal"
"#
    ));
    let mut c = srv.client();
    for (prefix, want) in [
        ("/d", "api.example.test"),
        ("/p", "api.example.test"),
        ("/t", t.as_str()),
        ("/l", "internal.svc.example"),
    ] {
        let req = format!("GET {prefix}/x HTTP/1.1\r\nHost: api.example.test\r\n\r\n");
        let r = c.request(req.as_bytes());
        assert_eq!(r.status, 200, "{prefix}: {}", r.summary());
        let got = up.last();
        assert_eq!(
            got.header_all("host"),
            vec![want],
            "{prefix}: exactly one Host, {want}"
        );
    }
}

const REQUEST_HOP_BY_HOP: [&str; 8] = [
    "connection-named",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "transfer-encoding",
];

#[test]
fn hop_by_hop_request_headers_are_removed() {
    let up = Upstream::start(Behaviour::ok("ok"));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(&get(
        "/hop",
        &[
            "Connection: keep-alive, Connection-Named",
            "Connection-Named: secret",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Trailer: X-Checksum",
            "Upgrade: example/1",
            "Proxy-Authorization: Basic Zm9vOmJhcg==",
            "X-Kept: yes",
        ],
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
    let got = up.last();
    for name in REQUEST_HOP_BY_HOP {
        assert!(
            !got.has_header(name),
            "{name} must not be forwarded: {:?}",
            got.headers
        );
    }
    assert!(
        !got.list("connection")
            .iter()
            .any(|o| o.eq_ignore_ascii_case("connection-named")),
        "the client's Connection options are not forwarded: {:?}",
        got.headers
    );
    assert_eq!(got.header("x-kept"), Some("yes"));
}

#[test]
fn hop_by_hop_response_headers_are_removed() {
    let up = Upstream::start(Behaviour::reply(
        Reply::ok("ok")
            .header("Connection", "X-Up-Hop")
            .header("X-Up-Hop", "1")
            .header("Keep-Alive", "timeout=5")
            .header("Proxy-Connection", "keep-alive")
            .header("Proxy-Authenticate", "Basic realm=\"x\"")
            .header("Trailer", "X-Sum")
            .header("Upgrade", "example/1")
            .header("X-Up-Kept", "yes"),
    ));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(&get("/hop", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"ok");
    for name in [
        "x-up-hop",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "trailer",
        "upgrade",
    ] {
        assert!(
            !r.has_header(name),
            "{name} must not reach the client: {}",
            r.summary()
        );
    }
    assert!(!r.connection_has("x-up-hop"), "{}", r.summary());
    assert_eq!(r.header("x-up-kept").as_deref(), Some("yes"));
    // The upstream's Connection options do not close the client connection.
    let r = c.request(&get("/again", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// Splits a list field's elements (all lines, trimmed).
fn elements(values: &[&str]) -> Vec<String> {
    values
        .iter()
        .flat_map(|v| v.split(','))
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
        .collect()
}

/// The `Forwarded` elements (RFC 7239 §4), each as its pairs with the
/// parameter names lower-cased and quoted-string values unquoted, so that
/// `host="localhost"` and `host=localhost` compare equal.
fn forwarded(values: &[&str]) -> Vec<Vec<(String, String)>> {
    elements(values)
        .iter()
        .map(|e| {
            e.split(';')
                .map(|pair| {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let v = v.trim();
                    let v = v
                        .strip_prefix('"')
                        .and_then(|v| v.strip_suffix('"'))
                        .map_or_else(|| v.to_string(), |q| q.replace("\\", ""));
                    (k.trim().to_ascii_lowercase(), v)
                })
                .collect()
        })
        .collect()
}

fn pairs(element: &[(&str, &str)]) -> Vec<(String, String)> {
    element
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn forwarding_headers_are_added_and_appended() {
    let up = Upstream::start(Behaviour::ok("ok"));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();

    // No forwarding fields from the client.
    let r = c.request(&get("/f", &["X-Request-Id: abc-123"]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let got = up.last();
    assert_eq!(elements(&got.header_all("x-forwarded-for")), ["127.0.0.1"]);
    assert_eq!(got.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(
        forwarded(&got.header_all("forwarded")),
        [pairs(&[
            ("for", "127.0.0.1"),
            ("proto", "http"),
            ("host", "localhost")
        ])]
    );
    assert_eq!(got.header_all("x-request-id"), ["abc-123"]);

    // Existing values are kept and the client's address appended.
    let r = c.request(&get(
        "/f",
        &[
            "X-Forwarded-For: 203.0.113.7",
            "Forwarded: for=203.0.113.7;proto=https",
        ],
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
    let got = up.last();
    assert_eq!(
        elements(&got.header_all("x-forwarded-for")),
        ["203.0.113.7", "127.0.0.1"]
    );
    assert_eq!(got.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(
        forwarded(&got.header_all("forwarded")),
        [
            pairs(&[("for", "203.0.113.7"), ("proto", "https")]),
            pairs(&[
                ("for", "127.0.0.1"),
                ("proto", "http"),
                ("host", "localhost")
            ])
        ]
    );
}

#[test]
/// A chunked body that fits the replayable buffer (64 KiB) is read whole and
/// sent with Content-Length, as nginx does with request buffering: every
/// upstream understands it, and a retry can send it again. (Longer chunked
/// bodies go upstream re-chunked: large_body.rs.)
fn small_chunked_request_body_is_forwarded_with_content_length() {
    let up = Upstream::start(Behaviour::ok("got it"));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let mut req = b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
                    Transfer-Encoding: chunked\r\n\r\n"
        .to_vec();
    req.extend_from_slice(b"6;name=value\r\nhello \r\n");
    req.extend_from_slice(&chunk(b"chunked "));
    req.extend_from_slice(&chunk(b"world"));
    req.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
    let r = c.request(&req);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"got it");
    let got = up.last();
    assert_eq!(got.body, b"hello chunked world");
    assert!(!got.chunked, "forwarded with a length: {:?}", got.headers);
    assert!(!got.has_header("transfer-encoding"), "{:?}", got.headers);
    assert_eq!(got.header("content-length"), Some("19"));
    assert_eq!(got.header("content-type"), Some("text/plain"));
    // The connection is in step after the chunked body.
    let r = c.request(&post("/next", &[], b"x"));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(up.last().body, b"x");
}

// ---- what comes back ----

#[test]
fn response_body_is_streamed_before_the_upstream_finishes() {
    let gate = Gate::new();
    let mut head = chunked_head(200, &[("Content-Type", "text/plain")]);
    head.extend_from_slice(&chunk(b"first-part;"));
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(head),
        Step::Wait(gate.clone()),
        Step::Write(chunk(b"second-part")),
        Step::Write(b"0\r\n\r\n".to_vec()),
    ])));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    c.send(&get("/stream", &[]));
    assert!(
        wait_peek(&c, b"first-part;"),
        "the first chunk must reach the client while the upstream holds the rest"
    );
    gate.open();
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.chunked,
        "no upstream Content-Length: chunked to an HTTP/1.1 client"
    );
    assert_eq!(r.body, b"first-part;second-part");
    assert_eq!(r.media_type().as_deref(), Some("text/plain"));
}

fn framing_upstream() -> Upstream {
    Upstream::start(Behaviour::script(|req: &Recorded| match req.path() {
        "/cl" => Action::Reply(Reply::ok("hello world")),
        "/chunked" => {
            let mut b = chunked_head(200, &[("Content-Type", "text/plain")]);
            b.extend_from_slice(&chunked(&[b"hello ", b"chunked ", b"world"]));
            Action::Steps(vec![Step::Write(b)])
        }
        "/close" => Action::Steps(vec![
            Step::Write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil close".to_vec()),
            Step::Close,
        ]),
        "/interim" => Action::Steps(vec![Step::Write(
            b"HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n\
              HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\nfinally"
                .to_vec(),
        )]),
        _ => Action::Reply(Reply::new(404)),
    }))
}

#[test]
fn response_framing_follows_the_upstream() {
    let up = framing_upstream();
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();

    let r = c.request(&get("/cl", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("content-length").as_deref(), Some("11"));
    assert!(!r.chunked && !r.close_delimited, "{}", r.summary());
    assert_eq!(r.body, b"hello world");

    let r = c.request(&get("/chunked", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.chunked, "{}", r.summary());
    assert!(!r.has_header("content-length"), "{}", r.summary());
    assert_eq!(r.body, b"hello chunked world");

    let r = c.request(&get("/close", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.chunked,
        "a close-delimited upstream body goes chunked to an HTTP/1.1 client: {}",
        r.summary()
    );
    assert_eq!(r.body, b"until close");

    // 1xx interim responses from the upstream are not passed on.
    let (interim, r) = {
        c.send(&get("/interim", &[]));
        c.read_final(false).unwrap()
    };
    assert!(
        interim.is_empty(),
        "interim responses must be skipped: {:?}",
        interim.iter().map(Response::summary).collect::<Vec<_>>()
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"finally");

    // Still in step.
    let r = c.request(&get("/cl", &[]));
    assert_eq!(r.body, b"hello world");
}

#[test]
fn chunked_upstream_body_is_close_delimited_for_an_http10_client() {
    let up = framing_upstream();
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(b"GET /chunked HTTP/1.0\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        !r.chunked,
        "HTTP/1.0 has no chunked coding: {}",
        r.summary()
    );
    assert!(r.close_delimited, "{}", r.summary());
    assert_eq!(r.body, b"hello chunked world");
    assert!(c.saw_close());
}

#[test]
fn head_is_forwarded_and_answered_without_a_body() {
    let body = "x".repeat(42);
    let up = Upstream::start(Behaviour::reply(
        Reply::ok(&body).header("X-Resource", "r1"),
    ));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let mut bytes = request("HEAD", "/res", &[], None);
    bytes.extend_from_slice(&get("/res", &[]));
    c.send(&bytes);
    let head = c.read_final(true).unwrap().1;
    let full = c.read_final(false).unwrap().1;
    assert_eq!(head.status, 200, "{}", head.summary());
    assert!(head.body.is_empty());
    assert_eq!(head.header("x-resource").as_deref(), Some("r1"));
    if let Some(cl) = head.header("content-length") {
        assert_eq!(cl, "42", "HEAD keeps the GET's Content-Length");
    }
    assert_eq!(full.status, 200, "{}", full.summary());
    assert_eq!(full.body, body.as_bytes());
    assert!(
        c.buffered().is_empty(),
        "stray bytes after the HEAD response"
    );
    let log = up.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].method, "HEAD");
    assert_eq!(log[1].method, "GET");
}

#[test]
fn no_content_and_not_modified_carry_no_body() {
    let up = Upstream::start(Behaviour::script(|req: &Recorded| match req.path() {
        "/204" => Action::Reply(Reply::new(204).header("X-A", "1")),
        "/304" => Action::Reply(Reply::new(304).header("ETag", "\"v1\"")),
        _ => Action::Reply(Reply::ok("after")),
    }));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(&get("/204", &[]));
    assert_eq!(r.status, 204, "{}", r.summary());
    assert_eq!(r.header("x-a").as_deref(), Some("1"));
    assert!(!r.has_header("transfer-encoding"), "{}", r.summary());
    assert!(
        !r.has_header("content-length"),
        "RFC 9110 §8.6: no Content-Length in a 204: {}",
        r.summary()
    );
    let r = c.request(&get("/304", &["If-None-Match: \"v1\""]));
    assert_eq!(r.status, 304, "{}", r.summary());
    assert_eq!(r.header("etag").as_deref(), Some("\"v1\""));
    assert!(!r.has_header("transfer-encoding"), "{}", r.summary());
    // A body after either would corrupt this response.
    let r = c.request(&get("/ok", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"after");
    assert!(c.buffered().is_empty());
}

// ---- connection reuse and pipelining ----

#[test]
fn upstream_connection_is_reused_for_sequential_requests() {
    let up = Upstream::start(Behaviour::ok("pooled"));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    for i in 0..10 {
        let r = c.request(&get(&format!("/seq/{i}"), &[]));
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        assert_eq!(r.body, b"pooled");
    }
    assert_eq!(up.requests(), 10);
    assert_eq!(
        up.connections(),
        1,
        "10 sequential requests must share one pooled upstream connection"
    );
    assert!(up.log().iter().all(|r| r.conn == 0));
}

#[test]
fn pool_size_zero_opens_a_connection_per_request() {
    let up = Upstream::start(Behaviour::ok("fresh"));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "pool_size_per_shard = 0", ""));
    let mut c = srv.client();
    for i in 0..3 {
        let r = c.request(&get(&format!("/n/{i}"), &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(up.connections(), 3);
}

#[test]
fn upstream_connection_close_is_not_reused() {
    let up = Upstream::start(Behaviour::reply(Reply::ok("once").close()));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    for i in 0..3 {
        let r = c.request(&get(&format!("/c/{i}"), &[]));
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        assert_eq!(r.body, b"once");
        assert!(
            !r.closes(),
            "the upstream's close is not the client's: {}",
            r.summary()
        );
    }
    assert_eq!(up.connections(), 3);
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    // Earlier requests are answered later by the upstream, so answering
    // in completion order would show.
    let up = Upstream::start(Behaviour::script(|req: &Recorded| {
        let i: u64 = req.path().trim_start_matches("/p/").parse().unwrap_or(0);
        Action::Delay(
            Duration::from_millis((5 - i.min(5)) * 20),
            Box::new(Action::Reply(Reply::ok(&format!("resp-{i}")))),
        )
    }));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let mut bytes = Vec::new();
    for i in 0..5 {
        bytes.extend_from_slice(&get(&format!("/p/{i}"), &[]));
    }
    c.send(&bytes);
    for i in 0..5 {
        let r = c.response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), format!("resp-{i}"), "response {i} out of order");
    }
    assert_eq!(up.requests(), 5);
}

// ---- failures ----

#[test]
fn garbage_from_the_upstream_is_502() {
    let bad = Upstream::start(Behaviour::garbage());
    let good = Upstream::start(Behaviour::ok("good"));
    let srv = TestServer::start_toml(&bad_and_good(&bad.target(), &good.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(&get("/bad/x", &[]));
    assert_problem_type(&r, 502, "bad-gateway");
    assert!(!r.closes(), "{}", r.summary());
    assert_still_usable(&mut c, "a 502 for upstream garbage");
}

#[test]
fn ambiguous_upstream_framing_is_502_and_that_connection_is_not_reused() {
    let up = Upstream::start(Behaviour::cl_te());
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(&get("/x", &[]));
    assert_problem_type(&r, 502, "bad-gateway");
    assert!(
        up.wait_open_connections_at_most(0),
        "the gateway must close an upstream connection that sent CL+TE"
    );
    up.set_behaviour(Behaviour::ok("fine"));
    let r = c.request(&get("/y", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"fine");
    assert_eq!(up.connections(), 2, "the CL+TE connection was reused");
}

#[test]
fn malformed_upstream_responses_are_502() {
    let cases: [(&str, &[u8]); 10] = [
        (
            "CL+TE",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "conflicting Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        ),
        (
            "repeated Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "non-numeric Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        ),
        (
            "negative Content-Length",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxxxx",
        ),
        (
            "bare LF",
            b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
        ),
        (
            "field line without colon",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nNo Colon Here\r\n\r\nok",
        ),
        (
            "bad status line",
            b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        (
            "101 Switching Protocols",
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: example/1\r\n\r\n",
        ),
    ];
    let good = Upstream::start(Behaviour::ok("good"));
    for (what, bytes) in cases {
        let bad = Upstream::start(Behaviour::raw(bytes));
        let srv = TestServer::start_toml(&bad_and_good(&bad.target(), &good.target(), "", ""));
        let mut c = srv.client();
        let r = c.request(&get("/bad/x", &[]));
        assert_eq!(r.status, 502, "{what}: {}", r.summary());
        assert_problem_type(&r, 502, "bad-gateway");
        assert!(
            bad.wait_open_connections_at_most(0),
            "{what}: the gateway must close the upstream connection"
        );
        assert_still_usable(&mut c, what);
    }
}

/// A response head with more fields than the first parse's slots is
/// parsed again with all of them (and forwarded whole); past the limit
/// (100 fields) it is a 502.
#[test]
fn response_heads_with_many_fields_are_forwarded_up_to_the_limit() {
    let head = |fields: usize| -> Vec<u8> {
        let mut b = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        for i in 1..fields {
            b.extend_from_slice(format!("X-Field-{i}: value-{i}\r\n").as_bytes());
        }
        b.extend_from_slice(b"\r\nok");
        b
    };
    let good = Upstream::start(Behaviour::ok("good"));
    let many = Upstream::start(Behaviour::raw(&head(60)));
    let srv = TestServer::start_toml(&bad_and_good(&many.target(), &good.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(&get("/bad/x", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"ok");
    for i in 1..60 {
        assert_eq!(
            r.header(&format!("x-field-{i}")).as_deref(),
            Some(format!("value-{i}").as_str()),
            "field {i} of 60 is forwarded"
        );
    }
    drop(srv);
    let too_many = Upstream::start(Behaviour::raw(&head(101)));
    let srv = TestServer::start_toml(&bad_and_good(&too_many.target(), &good.target(), "", ""));
    let mut c = srv.client();
    let r = c.request(&get("/bad/x", &[]));
    assert_eq!(r.status, 502, "{}", r.summary());
    assert_problem_type(&r, 502, "bad-gateway");
    assert_still_usable(&mut c, "after a head with too many fields");
}

#[test]
fn refused_connection_is_502() {
    let good = Upstream::start(Behaviour::ok("good"));
    let srv = TestServer::start_toml(&bad_and_good(
        &closed_addr().to_string(),
        &good.target(),
        "",
        "",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/bad/x", &[]));
    assert_problem_type(&r, 502, "bad-gateway");
    assert!(!r.closes(), "{}", r.summary());
    assert_still_usable(&mut c, "a 502 for a refused connection");
}

/// Reads what follows a response head that reached the client and asserts
/// that the connection ends with the response truncated, never a second
/// response.
fn assert_truncated_without_second_response(c: &mut Client, what: &str) {
    match c.read_response(false) {
        Err(ReadError::Truncated { partial }) => {
            assert!(
                partial.starts_with(b"HTTP/1.1 200"),
                "{what}: {}",
                shardline_tests::client::show(&partial)
            );
            assert_eq!(
                status_lines(&partial),
                1,
                "{what}: no second response after the head was sent: {}",
                shardline_tests::client::show(&partial)
            );
        }
        Ok(r) => panic!(
            "{what}: the client must see a truncated response, got a complete one: {}",
            r.summary()
        ),
        Err(e) => panic!("{what}: expected a truncated response and a close, got {e}"),
    }
    assert!(
        c.saw_close(),
        "{what}: the client connection must be closed"
    );
}

#[test]
fn upstream_killed_mid_body_closes_the_client_connection() {
    let gate = Gate::new();
    let up = Upstream::start(Behaviour::killed_mid_body_after(gate.clone()));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    c.send(&get("/big", &[]));
    assert!(
        wait_peek(&c, KILLED_BODY_PREFIX),
        "the head and the first body bytes must reach the client"
    );
    gate.open();
    assert_truncated_without_second_response(&mut c, "upstream closed mid-body");
}

#[test]
fn bad_chunk_mid_body_closes_the_client_connection() {
    let gate = Gate::new();
    let mut head = chunked_head(200, &[("Content-Type", "text/plain")]);
    head.extend_from_slice(&chunk(b"good-start"));
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(head),
        Step::Wait(gate.clone()),
        Step::Write(b"zz-not-hex\r\nmore\r\n".to_vec()),
    ])));
    let srv = TestServer::start_toml(&proxy_config(&up.target(), "", ""));
    let mut c = srv.client();
    c.send(&get("/x", &[]));
    assert!(
        wait_peek(&c, b"good-start"),
        "first chunk must be forwarded"
    );
    gate.open();
    assert_truncated_without_second_response(&mut c, "bad chunk from the upstream");
    assert!(
        up.wait_open_connections_at_most(0),
        "the broken upstream connection must be closed"
    );
}

#[test]
fn unanswered_request_is_504_after_the_timeout() {
    let bad = Upstream::start(Behaviour::hang());
    let good = Upstream::start(Behaviour::ok("good"));
    // Route timeout.
    let srv = TestServer::start_toml(&bad_and_good(
        &bad.target(),
        &good.target(),
        "",
        "timeout = \"300ms\"",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/bad/x", &[]));
    assert_problem_type(&r, 504, "gateway-timeout");
    assert!(!r.closes(), "{}", r.summary());
    assert_still_usable(&mut c, "a 504 (route timeout)");
    assert!(bad.requests() >= 1);

    // The upstream's request_timeout when the route has none.
    let srv2 = TestServer::start_toml(&bad_and_good(
        &bad.target(),
        &good.target(),
        "request_timeout = \"300ms\"",
        "",
    ));
    let mut c = srv2.client();
    let r = c.request(&get("/bad/y", &[]));
    assert_problem_type(&r, 504, "gateway-timeout");
    assert_still_usable(&mut c, "a 504 (upstream request_timeout)");
}
