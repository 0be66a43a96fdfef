//! Aggregate routes (issue 4): one GET fans out to several upstream parts
//! and the answers are merged into one JSON object keyed by part name.
#![allow(clippy::unwrap_used)]

mod common;

use common::assert_problem;
use serde_json::{json, Value};
use shardline_tests::upstream::{
    closed_addr, Action, Behaviour, Condition, Recorded, Reply, Step, Upstream,
};
use shardline_tests::{get, Response, TestServer};

/// Upstreams `users` and `orders` at the addresses, and the route
/// `GET /profile/{id}` with the two parts (`orders_extra` goes into the
/// orders part's inline table, e.g. `, timeout = "300ms"`).
fn profile_config(users: &str, orders: &str, orders_extra: &str) -> String {
    format!(
        r#"
[server]
drain_timeout = "1s"

[[upstreams]]
name = "users"
targets = ["{users}"]

[[upstreams]]
name = "orders"
targets = ["{orders}"]

[[routes]]
name = "profile"
method = "GET"
path = "/profile/{{id}}"
aggregate = [
  {{ name = "user", upstream = "users", path = "/users/{{id}}" }},
  {{ name = "orders", upstream = "orders", path = "/orders/{{id}}"{orders_extra} }},
]
"#
    )
}

fn json_body(r: &Response) -> Value {
    assert_eq!(
        r.media_type().as_deref(),
        Some("application/json"),
        "{}",
        r.summary()
    );
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("aggregate body is not JSON ({e}): {}", r.summary()))
}

const USER: &str = r#"{"id":"42","name":"Ann"}"#;
const ORDERS: &str = r#"[{"n":1},{"n":2}]"#;

#[test]
fn parts_are_merged_by_name() {
    let users = Upstream::start(Behaviour::reply(Reply::json(USER)));
    let orders = Upstream::start(Behaviour::reply(Reply::json(ORDERS)));
    let srv = TestServer::start_toml(&profile_config(&users.target(), &orders.target(), ""));
    let mut c = srv.client();
    let r = c.request(&get("/profile/42?expand=all", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        json_body(&r),
        json!({"user": {"id": "42", "name": "Ann"}, "orders": [{"n": 1}, {"n": 2}]}),
        "no `errors` member when every part succeeded"
    );
    let u = users.last();
    assert_eq!(u.method, "GET");
    assert_eq!(
        u.target, "/users/42",
        "path param filled in, client query not forwarded"
    );
    let o = orders.last();
    assert_eq!(o.method, "GET");
    assert_eq!(o.target, "/orders/42");
}

#[test]
fn path_params_are_substituted() {
    let a = Upstream::start(Behaviour::script(|req: &Recorded| {
        Action::Reply(Reply::json(&format!("{{\"path\":\"{}\"}}", req.path())))
    }));
    let t = a.target();
    let srv = TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "a"
targets = ["{t}"]

[[routes]]
name = "member"
method = "GET"
path = "/orgs/{{org}}/members/{{id}}"
aggregate = [
  {{ name = "org", upstream = "a", path = "/o/{{org}}" }},
  {{ name = "member", upstream = "a", path = "/m/{{org}}/{{id}}/detail" }},
]
"#
    ));
    let mut c = srv.client();
    let r = c.request(&get("/orgs/acme/members/7", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        json_body(&r),
        json!({"org": {"path": "/o/acme"}, "member": {"path": "/m/acme/7/detail"}})
    );
    let mut paths: Vec<String> = a.log().iter().map(|r| r.target.clone()).collect();
    paths.sort();
    assert_eq!(paths, ["/m/acme/7/detail", "/o/acme"]);
}

/// Asserts the `errors` member names exactly the failed parts, each with
/// its status, a title and a detail; returns the body.
fn assert_errors(body: &Value, failed: &[(&str, u64)]) {
    let errors = body["errors"]
        .as_object()
        .unwrap_or_else(|| panic!("`errors` object expected: {body}"));
    assert_eq!(errors.len(), failed.len(), "{body}");
    for (name, status) in failed {
        let e = &errors[*name];
        assert_eq!(e["status"].as_u64(), Some(*status), "errors.{name}: {body}");
        assert!(
            e["title"].as_str().is_some_and(|t| !t.is_empty()),
            "errors.{name}.title: {body}"
        );
        assert!(
            e["detail"].as_str().is_some(),
            "errors.{name}.detail: {body}"
        );
    }
}

#[test]
fn a_failing_part_is_reported_under_errors() {
    let users = Upstream::start(Behaviour::reply(Reply::json(USER)));
    let orders = Upstream::start(Behaviour::reply(
        Reply::new(500)
            .header("Content-Type", "application/json")
            .body(br#"{"error":"boom"}"#),
    ));
    let srv = TestServer::start_toml(&profile_config(&users.target(), &orders.target(), ""));
    let mut c = srv.client();
    let r = c.request(&get("/profile/42", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let body = json_body(&r);
    assert_eq!(body["user"], json!({"id": "42", "name": "Ann"}), "{body}");
    assert_errors(&body, &[("orders", 500)]);
}

#[test]
fn a_slow_part_times_out_on_its_own_timeout() {
    let users = Upstream::start(Behaviour::reply(Reply::json(USER)));
    let orders = Upstream::start(Behaviour::hang());
    let srv = TestServer::start_toml(&profile_config(
        &users.target(),
        &orders.target(),
        ", timeout = \"300ms\"",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/profile/42", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let body = json_body(&r);
    assert_eq!(body["user"], json!({"id": "42", "name": "Ann"}), "{body}");
    assert_errors(&body, &[("orders", 504)]);
    assert_eq!(
        body["errors"]["orders"]["title"], "Gateway Timeout",
        "{body}"
    );
    assert_eq!(orders.requests(), 1);
}

#[test]
fn a_non_json_part_is_embedded_as_a_string() {
    let users = Upstream::start(Behaviour::reply(Reply::json(USER)));
    let orders = Upstream::start(Behaviour::ok("plain text, not JSON"));
    let srv = TestServer::start_toml(&profile_config(&users.target(), &orders.target(), ""));
    let mut c = srv.client();
    let r = c.request(&get("/profile/42", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        json_body(&r),
        json!({"user": {"id": "42", "name": "Ann"}, "orders": "plain text, not JSON"})
    );
}

/// A part's 204 that declares a body may yet send it, late, into the next
/// response on that connection: the connection is not pooled (as on the
/// proxy path), so the next request gets a fresh one.
#[test]
fn a_parts_204_that_declares_a_body_does_not_go_back_to_the_pool() {
    let users = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n",
    ));
    let orders = Upstream::start(Behaviour::reply(Reply::json(ORDERS)));
    let srv = TestServer::start_toml(&profile_config(&users.target(), &orders.target(), ""));
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/profile/42", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(users.connections(), 2, "the 204's connection was reused");
}

/// Each part answers only once the other part's request has arrived: if
/// the parts were fetched one after the other, the first would wait for
/// the second until its timeout.
#[test]
fn parts_are_fetched_concurrently() {
    let users = Upstream::start(Behaviour::hang());
    let orders = Upstream::start(Behaviour::hang());
    let (pu, po) = (users.probe(), orders.probe());
    let orders_arrived: Condition = std::sync::Arc::new(move || po.requests() >= 1);
    let users_arrived: Condition = std::sync::Arc::new(move || pu.requests() >= 1);
    users.set_behaviour(Behaviour::always(Action::Steps(vec![
        Step::WaitUntil(orders_arrived),
        Step::Write(Reply::json(USER).encode(false)),
    ])));
    orders.set_behaviour(Behaviour::always(Action::Steps(vec![
        Step::WaitUntil(users_arrived),
        Step::Write(Reply::json(ORDERS).encode(false)),
    ])));
    let srv = TestServer::start_toml(&profile_config(
        &users.target(),
        &orders.target(),
        ", timeout = \"5s\"",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/profile/42", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        json_body(&r),
        json!({"user": {"id": "42", "name": "Ann"}, "orders": [{"n": 1}, {"n": 2}]})
    );
}

#[test]
fn all_parts_failing_is_502_with_errors() {
    let users = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&profile_config(
        &users.target(),
        &closed_addr().to_string(),
        "",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/profile/42", &[]));
    let ty = assert_problem(&r, 502);
    assert_eq!(ty, "https://shardline.dev/problems/bad-gateway");
    let body: Value = serde_json::from_slice(&r.body).unwrap();
    assert_errors(&body, &[("user", 503), ("orders", 502)]);
    // The connection is still usable.
    let r = c.request(&get("/profile/43", &[]));
    assert_eq!(r.status, 502, "{}", r.summary());
}
