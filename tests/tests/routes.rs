//! The embedded default routes, HEAD, 404 and 405 (spec: "No config file =
//! embedded default"), over real sockets against the in-process server.
#![allow(clippy::unwrap_used)]

mod common;

use common::assert_problem;
use shardline_tests::request::request;
use shardline_tests::{get, post, TestServer};

#[test]
fn healthz_answers_200() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&get("/healthz", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(!r.closes(), "keep-alive by default: {}", r.summary());
}

#[test]
fn plaintext_answers_hello_world_as_text_plain() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&get("/plaintext", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"Hello, World!");
    assert_eq!(
        r.media_type().as_deref(),
        Some("text/plain"),
        "{}",
        r.summary()
    );
    assert_eq!(r.header("content-length").as_deref(), Some("13"));
    // RFC 9110 §6.6.1: an origin server with a clock MUST send Date.
    assert!(r.has_header("date"), "Date header missing: {}", r.summary());
}

#[test]
fn json_answers_the_message_document() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&get("/json", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.media_type().as_deref(),
        Some("application/json"),
        "{}",
        r.summary()
    );
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!({"message": "Hello, World!"}));
}

#[test]
fn echo_returns_body_and_content_type() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let body = b"{\"a\":[1,2,3],\"b\":\"\xc3\xa9\"}";
    let r = c.request(&post(
        "/echo",
        &["Content-Type: application/vnd.test+json"],
        body,
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, body);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/vnd.test+json")
    );
}

#[test]
fn echo_without_content_type_is_octet_stream() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let body: Vec<u8> = (0..=255u8).collect();
    let r = c.request(&post("/echo", &[], &body));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, body);
    assert_eq!(
        r.media_type().as_deref(),
        Some("application/octet-stream"),
        "{}",
        r.summary()
    );
}

#[test]
fn echo_with_empty_body() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&post("/echo", &["Content-Type: text/plain"], b""));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.body.is_empty());
    // And with no Content-Length at all (RFC 9112 §6.3: no body).
    let r = c.request(b"POST /echo HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.body.is_empty());
}

/// HEAD is answered wherever GET is, with the GET's header fields and no
/// body (RFC 9110 §9.3.2). A GET pipelined behind each HEAD proves that no
/// body bytes follow the HEAD response: they would corrupt the next one.
#[test]
fn head_is_answered_without_a_body() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    for path in ["/healthz", "/plaintext", "/json"] {
        let mut bytes = request("HEAD", path, &[], None);
        bytes.extend_from_slice(&get(path, &[]));
        c.send(&bytes);
        let head = c.read_final(true).unwrap().1;
        let full = c.read_final(false).unwrap().1;
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.summary());
        assert_eq!(full.status, 200, "GET {path}: {}", full.summary());
        assert_eq!(
            head.header("content-type"),
            full.header("content-type"),
            "HEAD {path} has GET's Content-Type"
        );
        if let Some(cl) = head.header("content-length") {
            assert_eq!(
                cl,
                full.body.len().to_string(),
                "HEAD {path} Content-Length must be the GET body length"
            );
        }
    }
    assert!(c.buffered().is_empty(), "stray bytes after HEAD responses");
}

#[test]
fn unknown_path_is_404_problem_json() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&get("/no/such/path", &[]));
    assert_problem(&r, 404);
    // Not a framing error: the connection stays usable.
    let r = c.request(&get("/healthz", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[test]
fn head_of_unknown_path_is_404_without_body() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let mut bytes = request("HEAD", "/nope", &[], None);
    bytes.extend_from_slice(&get("/healthz", &[]));
    c.send(&bytes);
    let r = c.read_final(true).unwrap().1;
    assert_eq!(r.status, 404, "{}", r.summary());
    let r = c.read_final(false).unwrap().1;
    assert_eq!(r.status, 200, "{}", r.summary());
}

fn allow_methods(r: &shardline_tests::Response) -> Vec<String> {
    r.header_all("allow")
        .iter()
        .flat_map(|v| {
            v.split(',')
                .map(|m| m.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|m| !m.is_empty())
        .collect()
}

#[test]
fn wrong_method_is_405_with_allow() {
    let srv = TestServer::start_default();
    let mut c = srv.client();

    let r = c.request(&request("DELETE", "/plaintext", &[], None));
    assert_problem(&r, 405);
    let allow = allow_methods(&r);
    assert!(
        allow.contains(&"GET".to_string()) && allow.contains(&"HEAD".to_string()),
        "Allow for /plaintext must list GET and HEAD: {allow:?}"
    );
    assert!(!allow.contains(&"DELETE".to_string()), "{allow:?}");

    let r = c.request(&post("/plaintext", &[], b"x"));
    assert_problem(&r, 405);

    let r = c.request(&get("/echo", &[]));
    assert_problem(&r, 405);
    let allow = allow_methods(&r);
    assert!(
        allow.contains(&"POST".to_string()),
        "Allow for /echo must list POST: {allow:?}"
    );
    assert!(!allow.contains(&"GET".to_string()), "{allow:?}");

    // Still usable.
    let r = c.request(&get("/plaintext", &[]));
    assert_eq!(r.body, b"Hello, World!");
}

#[test]
fn admin_listener_serves_health_and_readiness() {
    let mut cfg = shardline_tests::server::test_config(shardline::Config::default());
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let srv = TestServer::from_builder(shardline::Server::new(cfg));
    let admin = srv.admin.expect("admin listener requested");
    assert_ne!(admin, srv.addr);
    let mut c = shardline_tests::Client::connect(admin);
    let r = c.request(&get("/healthz", &[]));
    assert_eq!(r.status, 200, "admin /healthz: {}", r.summary());
    let r = c.request(&get("/readyz", &[]));
    assert_eq!(r.status, 200, "admin /readyz: {}", r.summary());
}

/// RFC 9110 §9.3.7: OPTIONS on a path without an OPTIONS route lists what the
/// path allows; `OPTIONS *` lists what the server allows. The connection stays
/// open.
#[test]
fn options_answers_204_with_allow() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&request("OPTIONS", "/json", &[], None));
    assert_eq!(r.status, 204, "{}", r.summary());
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD, OPTIONS"));
    assert!(!r.has_header("content-length"), "{}", r.summary());
    let r = c.request(&request("OPTIONS", "*", &[], None));
    assert_eq!(r.status, 204, "{}", r.summary());
    let allow = r.header("allow").unwrap();
    for m in ["GET", "HEAD", "POST", "OPTIONS"] {
        assert!(allow.contains(m), "OPTIONS * Allow lacks {m}: {allow}");
    }
    let r = c.request(&get("/healthz", &[]));
    assert_eq!(r.status, 200, "connection still usable: {}", r.summary());
    let r = c.request(&request("OPTIONS", "/nope", &[], None));
    assert_eq!(r.status, 404, "{}", r.summary());
}

/// RFC 9110 §9.1: a method the server does not implement gets 501; CONNECT
/// (authority-form) gets 501 because shardline is not a forward proxy. The
/// method does not change framing, so the connection stays usable.
#[test]
fn unimplemented_methods_get_501() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    let r = c.request(&request("FOOBAR", "/", &[], None));
    assert_problem(&r, 501);
    assert!(!r.closes(), "{}", r.summary());
    let r = c.request(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n");
    assert_problem(&r, 501);
    let r = c.request(&get("/plaintext", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    // A standard method the path lacks is 405, not 501.
    let r = c.request(&request("PUT", "/plaintext", &[], Some(b"x")));
    assert_problem(&r, 405);
}
