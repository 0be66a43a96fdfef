//! CORS, request ids and trace context (issue 5).
#![allow(clippy::unwrap_used)]

mod common;

use common::assert_problem;
use shardline_tests::request::request;
use shardline_tests::upstream::{Behaviour, Upstream};
use shardline_tests::{get, post, TestServer};

fn config(target: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{target}"]

[[routes]]
name = "api"
method = "POST"
path = "/api/{{*rest}}"
upstream = "u"
cors = {{ origins = ["https://app.example.com"], headers = ["content-type", "x-trace"], expose_headers = ["x-request-id"], credentials = true, max_age = "10m" }}

[[routes]]
name = "plain"
method = "GET"
path = "/plain"
respond = {{ status = 200, body = "plain" }}

[[routes]]
name = "tagged"
method = "GET"
path = "/tagged"
request_id = true
respond = {{ status = 200, body = "tagged" }}
"#
    )
}

#[test]
fn preflight_is_answered_without_the_upstream() {
    let up = Upstream::start(Behaviour::ok("from upstream"));
    let s = TestServer::start_toml(&config(&up.target()));
    let mut c = s.client();
    let r = c.request(&request(
        "OPTIONS",
        "/api/items",
        &[
            "Origin: https://app.example.com",
            "Access-Control-Request-Method: POST",
            "Access-Control-Request-Headers: Content-Type, X-Trace",
        ],
        None,
    ));
    assert_eq!(r.status, 204, "{}", r.summary());
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(r.header("access-control-allow-methods").unwrap(), "POST");
    assert!(r
        .header("access-control-allow-headers")
        .unwrap()
        .contains("x-trace"));
    assert_eq!(
        r.header("access-control-allow-credentials").unwrap(),
        "true"
    );
    assert_eq!(r.header("access-control-max-age").unwrap(), "600");
    assert!(r.header("vary").unwrap().contains("Origin"));
    // Refused preflights: other origin, method, header.
    for (origin, method, hdrs) in [
        ("https://evil.example.com", "POST", "content-type"),
        ("https://app.example.com", "DELETE", "content-type"),
        ("https://app.example.com", "POST", "x-secret"),
    ] {
        let r = c.request(&request(
            "OPTIONS",
            "/api/items",
            &[
                &format!("Origin: {origin}"),
                &format!("Access-Control-Request-Method: {method}"),
                &format!("Access-Control-Request-Headers: {hdrs}"),
            ],
            None,
        ));
        if method == "DELETE" {
            // No route takes DELETE: the plain OPTIONS answer (Allow), with
            // no CORS fields, so the browser refuses.
            assert!(r.header("allow").is_some(), "{}", r.summary());
        } else {
            assert_problem(&r, 403);
        }
        assert!(
            !r.has_header("access-control-allow-origin"),
            "{}",
            r.summary()
        );
    }
    assert_eq!(up.requests(), 0, "a preflight reached the upstream");
}

#[test]
fn actual_requests_get_cors_fields_for_allowed_origins_only() {
    let up = Upstream::start(Behaviour::ok("from upstream"));
    let s = TestServer::start_toml(&config(&up.target()));
    let mut c = s.client();
    let r = c.request(&post(
        "/api/items",
        &["Origin: https://app.example.com"],
        b"{}",
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
    assert_eq!(
        r.header("access-control-allow-credentials").unwrap(),
        "true"
    );
    assert_eq!(
        r.header("access-control-expose-headers").unwrap(),
        "x-request-id"
    );
    let r = c.request(&post(
        "/api/items",
        &["Origin: https://evil.example.com"],
        b"{}",
    ));
    assert_eq!(r.status, 200);
    assert!(!r.has_header("access-control-allow-origin"));
    assert!(r.header("vary").unwrap().contains("Origin"));
}

#[test]
fn request_id_is_generated_echoed_and_sent_upstream() {
    let up = Upstream::start(Behaviour::ok("from upstream"));
    let s = TestServer::start_toml(&config(&up.target()));
    let mut c = s.client();
    // Generated when absent.
    let r = c.request(&post("/api/a", &[], b"x"));
    let id = r.header("x-request-id").unwrap();
    assert_eq!(id.len(), 36, "{id}");
    let seen = up.log();
    assert_eq!(seen.last().unwrap().header("x-request-id").unwrap(), id);
    // A well-formed one is kept, end to end.
    let r = c.request(&post("/api/b", &["X-Request-Id: abc-123"], b"x"));
    assert_eq!(r.header("x-request-id").unwrap(), "abc-123");
    let seen = up.log();
    let last = seen.last().unwrap();
    assert_eq!(last.header_all("x-request-id"), ["abc-123"]);
    // A malformed one is replaced, and not passed on.
    let r = c.request(&post("/api/c", &["X-Request-Id: bad id\"x"], b"x"));
    let id = r.header("x-request-id").unwrap();
    assert_ne!(id, "bad id\"x");
    let seen = up.log();
    assert_eq!(
        seen.last().unwrap().header_all("x-request-id"),
        [id.as_str()]
    );
    // Local routes: only when asked for (a bare route pays nothing).
    let r = c.request(&get("/plain", &[]));
    assert!(!r.has_header("x-request-id"));
    let r = c.request(&get("/tagged", &["X-Request-Id: t-1"]));
    assert_eq!(r.header("x-request-id").unwrap(), "t-1");
}

#[test]
fn traceparent_gets_a_new_span_per_hop() {
    let up = Upstream::start(Behaviour::ok("from upstream"));
    let s = TestServer::start_toml(&config(&up.target()));
    let mut c = s.client();
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    c.request(&post(
        "/api/t",
        &[&format!("traceparent: {incoming}"), "tracestate: k=v"],
        b"x",
    ));
    let seen = up.log();
    let last = seen.last().unwrap();
    let tp = last.header_all("traceparent");
    assert_eq!(tp.len(), 1);
    let tp = tp[0];
    assert_eq!(tp.len(), 55);
    assert_eq!(&tp[..36], &incoming[..36], "trace id kept");
    assert_ne!(&tp[36..52], &incoming[36..52], "new span id");
    assert_eq!(&tp[52..], "-01", "flags kept");
    assert_eq!(last.header("tracestate").unwrap(), "k=v");
    // Without one (or with a bad one) a new trace starts.
    c.request(&post("/api/t", &["traceparent: 00-zz-bad"], b"x"));
    let seen = up.log();
    let tp = seen
        .last()
        .unwrap()
        .header("traceparent")
        .unwrap()
        .to_string();
    assert_eq!(tp.len(), 55);
    assert!(tp.starts_with("00-"));
    assert_ne!(&tp[3..35], &incoming[3..35]);
}
