//! The policy chain as a whole (issue 5): preflights need no credentials,
//! refusals carry the request id and CORS fields, limits and idempotency
//! keys are per consumer.
#![allow(clippy::unwrap_used)]

mod common;

use common::assert_problem;
use shardline_tests::request::request;
use shardline_tests::{get, post, TestServer};

const KEY_A: &str = "chain-key-aaaaaaaaaaaa";
const KEY_B: &str = "chain-key-bbbbbbbbbbbb";

fn server() -> TestServer {
    TestServer::start_toml(&format!(
        r#"
[auth.k]
type = "api_key"
keys = [ {{ key = "{KEY_A}", consumer = "a" }}, {{ key = "{KEY_B}", consumer = "b" }} ]

[[routes]]
name = "limited"
method = "GET"
path = "/limited"
auth = "k"
rate_limit = {{ per_minute = 1, burst = 1, key = "consumer" }}
cors = {{ origins = ["https://app.example.com"] }}
respond = {{ status = 200, body = "ok" }}

[[routes]]
name = "orders"
method = "POST"
path = "/orders"
auth = "k"
idempotency = {{ ttl = "1h" }}
handler = "echo"
"#
    ))
}

#[test]
fn preflight_needs_no_credentials() {
    let s = server();
    let mut c = s.client();
    let r = c.request(&request(
        "OPTIONS",
        "/limited",
        &[
            "Origin: https://app.example.com",
            "Access-Control-Request-Method: GET",
        ],
        None,
    ));
    assert_eq!(r.status, 204, "{}", r.summary());
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
}

#[test]
fn refusals_carry_request_id_and_cors() {
    let s = server();
    let mut c = s.client();
    let r = c.request(&get(
        "/limited",
        &["Origin: https://app.example.com", "X-Request-Id: req-401"],
    ));
    assert_problem(&r, 401);
    assert_eq!(r.header("x-request-id").unwrap(), "req-401");
    assert_eq!(
        r.header("access-control-allow-origin").unwrap(),
        "https://app.example.com"
    );
}

#[test]
fn rate_limits_are_per_consumer() {
    let s = server();
    let mut c = s.client();
    let a = format!("X-Api-Key: {KEY_A}");
    let b = format!("X-Api-Key: {KEY_B}");
    assert_eq!(c.request(&get("/limited", &[&a])).status, 200);
    let r = c.request(&get("/limited", &[&a, "X-Request-Id: req-429"]));
    assert_problem(&r, 429);
    assert_eq!(r.header("x-request-id").unwrap(), "req-429");
    assert_eq!(c.request(&get("/limited", &[&b])).status, 200);
}

#[test]
fn idempotency_keys_are_per_consumer() {
    let s = server();
    let mut c = s.client();
    let a = format!("X-Api-Key: {KEY_A}");
    let b = format!("X-Api-Key: {KEY_B}");
    let r = c.request(&post("/orders", &[&a, "Idempotency-Key: same"], b"from a"));
    assert_eq!(r.text(), "from a");
    // Consumer b's "same" key is another key: its own body runs.
    let r = c.request(&post("/orders", &[&b, "Idempotency-Key: same"], b"from b"));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "from b");
    assert!(!r.has_header("idempotent-replayed"));
    let r = c.request(&post("/orders", &[&a, "Idempotency-Key: same"], b"from a"));
    assert_eq!(r.header("idempotent-replayed").unwrap(), "true");
    // Without credentials the chain stops before the key is looked at.
    let r = c.request(&post("/orders", &["Idempotency-Key: same"], b"from a"));
    assert_problem(&r, 401);
}
