//! Load balancing, retries with a budget, the circuit breaker and health
//! checks (issue 4), against real upstream servers on loopback sockets.
//!
//! Nothing depends on timing to pass: a "slow" target holds its requests
//! until the test ends, and waits for a breaker or a health checker to act
//! are bounded polling loops (at most GUARD).
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::assert_problem;
use shardline_tests::upstream::{closed_addr, wait_until, Behaviour, Upstream};
use shardline_tests::{get, post, Client, Response, TestServer, GUARD};

/// One upstream `u` with the targets (TOML array elements) and extra keys,
/// and a catch-all route to it.
fn config(targets: &[String], upstream_extra: &str) -> String {
    format!(
        r#"
[server]
drain_timeout = "1s"

[[upstreams]]
name = "u"
targets = [{}]
{upstream_extra}

[[routes]]
name = "r"
path = "/{{*rest}}"
upstream = "u"
"#,
        targets.join(", ")
    )
}

/// A plain target element.
fn t(addr: &str) -> String {
    format!("\"{addr}\"")
}

/// A weighted target element.
fn weighted(addr: &str, weight: u32) -> String {
    format!("{{ addr = \"{addr}\", weight = {weight} }}")
}

fn assert_unavailable(r: &Response) {
    let ty = assert_problem(r, 503);
    assert_eq!(
        ty,
        "https://shardline.dev/problems/upstream-unavailable",
        "{}",
        r.summary()
    );
    let ra = r.header("retry-after").unwrap_or_else(|| {
        panic!(
            "503 upstream-unavailable needs Retry-After: {}",
            r.summary()
        )
    });
    assert!(
        ra.trim().parse::<u64>().is_ok(),
        "Retry-After must be delay-seconds: {ra:?}"
    );
}

/// Whether a response is the upstream's own 503 (text/plain
/// `upstream 503`), not the gateway's problem.
fn is_upstream_503(r: &Response) -> bool {
    r.status == 503 && r.body == b"upstream 503"
}

/// Sends `n` sequential GETs on one connection and counts the bodies.
fn spread(c: &mut Client, n: usize) -> (usize, usize) {
    let (mut a, mut b) = (0, 0);
    for i in 0..n {
        let r = c.request(&get(&format!("/lb/{i}"), &[]));
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        match r.body.as_slice() {
            b"A" => a += 1,
            b"B" => b += 1,
            _ => panic!("unexpected body: {}", r.summary()),
        }
    }
    (a, b)
}

// ---- balancing ----

#[test]
fn round_robin_spreads_evenly() {
    let a = Upstream::start(Behaviour::ok("A"));
    let b = Upstream::start(Behaviour::ok("B"));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target()), t(&b.target())],
        "balance = \"round_robin\"",
    ));
    let mut c = srv.client();
    let (na, nb) = spread(&mut c, 100);
    assert_eq!((na, nb), (50, 50), "round robin over 2 targets");
    assert_eq!((a.requests(), b.requests()), (50, 50));
}

#[test]
fn weights_are_respected() {
    let a = Upstream::start(Behaviour::ok("A"));
    let b = Upstream::start(Behaviour::ok("B"));
    let srv = TestServer::start_toml(&config(
        &[weighted(&a.target(), 3), weighted(&b.target(), 1)],
        "balance = \"round_robin\"",
    ));
    let mut c = srv.client();
    let (na, nb) = spread(&mut c, 400);
    assert_eq!(na + nb, 400);
    assert!(
        (270..=330).contains(&na) && (90..=110).contains(&nb),
        "weights 3:1 over 400 requests, within ±10% of 300/100: got {na}/{nb}"
    );
}

/// Target A holds every request it gets (never answers while the test
/// runs), B answers at once. Requests go out one by one on fresh
/// connections; one that reaches A is left pending. A balancer that counts
/// outstanding requests gives A at most one or two and everything else to
/// B; round robin would give A half.
fn avoids_a_slow_target(balance: &str) {
    let a = Upstream::start(Behaviour::hang());
    let b = Upstream::start(Behaviour::ok("B"));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target()), t(&b.target())],
        &format!("balance = \"{balance}\""),
    ));
    let mut held = Vec::new();
    let mut answered = 0;
    for i in 0..30 {
        let before = a.requests();
        let mut c = srv.client();
        c.send(&get(&format!("/s/{i}"), &[]));
        let mut reached_a = false;
        let done = wait_until(GUARD, || {
            if a.requests() > before {
                reached_a = true;
                return true;
            }
            c.poll_available()
        });
        assert!(
            done,
            "{balance}: request {i} neither answered nor held by A"
        );
        if reached_a {
            held.push(c);
        } else {
            let r = c.response();
            assert_eq!(r.status, 200, "{balance}: {}", r.summary());
            assert_eq!(r.body, b"B");
            answered += 1;
        }
    }
    assert!(
        a.requests() <= 2,
        "{balance}: the target with outstanding requests must be avoided; \
         A got {} of 30 (B answered {answered})",
        a.requests()
    );
    assert_eq!(answered + held.len(), 30);
    drop(held);
    drop(a);
    drop(srv);
}

#[test]
fn least_requests_avoids_a_slow_target() {
    avoids_a_slow_target("least_requests");
}

#[test]
fn p2c_avoids_a_slow_target() {
    avoids_a_slow_target("p2c");
}

// ---- retries ----

const RETRY_ALL: &str =
    "retry = { attempts = 2, backoff = \"1ms\", max_backoff = \"5ms\", budget_percent = 100 }";

/// A circuit breaker that never opens in these tests: retries are tested
/// apart from ejection (a default breaker would stop the tries to an
/// always-failing target after a few requests).
const NO_BREAKER: &str = "circuit_breaker = { consecutive_failures = 1000000, \
                          failure_rate = 1.0, min_requests = 1000000 }";

#[test]
fn get_is_retried_on_503_on_the_other_target() {
    let a = Upstream::start(Behaviour::status(503));
    let b = Upstream::start(Behaviour::ok("B"));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target()), t(&b.target())],
        &format!("balance = \"round_robin\"\n{RETRY_ALL}\n{NO_BREAKER}"),
    ));
    let mut c = srv.client();
    for i in 0..10 {
        let r = c.request(&get(&format!("/r/{i}"), &[]));
        assert_eq!(
            r.status,
            200,
            "request {i} must succeed on B: {}",
            r.summary()
        );
        assert_eq!(r.body, b"B");
    }
    assert!(a.requests() >= 1, "round robin sent no first try to A");
    assert_eq!(b.requests(), 10);
}

#[test]
fn get_is_retried_after_a_refused_connection() {
    let b = Upstream::start(Behaviour::ok("B"));
    let srv = TestServer::start_toml(&config(
        &[t(&closed_addr().to_string()), t(&b.target())],
        &format!("balance = \"round_robin\"\n{RETRY_ALL}\n{NO_BREAKER}"),
    ));
    let mut c = srv.client();
    for i in 0..10 {
        let r = c.request(&get(&format!("/r/{i}"), &[]));
        assert_eq!(
            r.status,
            200,
            "request {i} must succeed on B: {}",
            r.summary()
        );
        assert_eq!(r.body, b"B");
    }
    assert_eq!(b.requests(), 10);
}

#[test]
fn post_is_never_retried_unless_it_has_an_idempotency_key() {
    let a = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target())],
        &format!(
            "retry = {{ attempts = 3, backoff = \"1ms\", max_backoff = \"5ms\", \
             budget_percent = 100 }}\n{NO_BREAKER}"
        ),
    ));
    let mut c = srv.client();

    let r = c.request(&post("/orders", &["Content-Type: text/plain"], b"p"));
    assert_eq!(r.status, 503, "{}", r.summary());
    assert_eq!(a.requests(), 1, "a POST must be tried exactly once");

    let r = c.request(&get("/orders", &[]));
    assert_eq!(r.status, 503, "{}", r.summary());
    assert_eq!(a.requests(), 4, "a GET is tried `attempts` (3) times");

    let r = c.request(&post("/orders", &["Idempotency-Key: k-1"], b"keyed"));
    assert_eq!(r.status, 503, "{}", r.summary());
    assert_eq!(
        a.requests(),
        7,
        "a POST with Idempotency-Key is tried `attempts` times"
    );
    assert!(a.wait_logged(7));
    let log = a.log();
    for tried in &log[4..7] {
        assert_eq!(tried.method, "POST");
        assert_eq!(tried.body, b"keyed", "each retry resends the body");
        assert_eq!(tried.header("idempotency-key"), Some("k-1"));
    }
}

#[test]
fn post_with_idempotency_key_succeeds_on_the_other_target() {
    let a = Upstream::start(Behaviour::status(503));
    let b = Upstream::start(Behaviour::echo());
    let srv = TestServer::start_toml(&config(
        &[t(&a.target()), t(&b.target())],
        &format!("balance = \"round_robin\"\n{RETRY_ALL}\n{NO_BREAKER}"),
    ));
    let mut c = srv.client();
    for i in 0..4 {
        let body = format!("payload-{i}");
        let key = format!("Idempotency-Key: key-{i}");
        let r = c.request(&post("/pay", &[key.as_str()], body.as_bytes()));
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        assert_eq!(r.body, body.as_bytes());
    }
    assert!(a.requests() >= 1, "round robin sent no first try to A");
    assert_eq!(b.requests(), 4);
}

#[test]
fn retry_budget_limits_retries() {
    const N: usize = 200;
    let a = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target())],
        &format!(
            "retry = {{ attempts = 3, backoff = \"1ms\", max_backoff = \"2ms\", \
             budget_percent = 10 }}\n{NO_BREAKER}"
        ),
    ));
    let mut c = srv.client();
    for i in 0..N {
        let r = c.request(&get(&format!("/b/{i}"), &[]));
        assert_eq!(r.status, 503, "{}", r.summary());
    }
    let tries = a.requests();
    assert!(
        tries < N + N / 10 + 5,
        "budget_percent = 10: at most ~10% retries over {N} failing requests, \
         the upstream saw {tries} tries (no budget would be {})",
        3 * N
    );
    assert!(
        tries > N,
        "the budget allows some retries; the upstream saw only {tries} tries"
    );
}

// ---- circuit breaker ----

#[test]
fn circuit_breaker_opens_after_consecutive_failures() {
    let a = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target())],
        "circuit_breaker = { consecutive_failures = 3, open_for = \"5s\" }",
    ));
    let mut c = srv.client();
    for i in 0..3 {
        let r = c.request(&get("/cb", &[]));
        assert!(is_upstream_503(&r), "failure {i}: {}", r.summary());
    }
    assert_eq!(a.requests(), 3);
    for _ in 0..5 {
        let r = c.request(&get("/cb", &[]));
        assert_unavailable(&r);
        let ra: u64 = r.header("retry-after").unwrap().trim().parse().unwrap();
        assert!(ra <= 5, "Retry-After {ra} beyond open_for = 5s");
    }
    assert_eq!(
        a.requests(),
        3,
        "an open breaker answers without contacting the upstream"
    );
    // The connection is fine after a 503.
    let r = c.request(&get("/cb", &[]));
    assert_unavailable(&r);
}

#[test]
fn circuit_breaker_recovers_after_open_for() {
    let a = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target())],
        "circuit_breaker = { consecutive_failures = 3, open_for = \"200ms\" }",
    ));
    let mut c = srv.client();
    for _ in 0..3 {
        let r = c.request(&get("/cb", &[]));
        assert!(is_upstream_503(&r), "{}", r.summary());
    }
    a.set_behaviour(Behaviour::ok("back"));
    // Poll until the half-open probe gets through and succeeds.
    let mut recovered = false;
    let recovered_in_time = wait_until(GUARD, || {
        let r = c.request(&get("/cb", &[]));
        if r.status == 200 {
            assert_eq!(r.body, b"back");
            recovered = true;
            return true;
        }
        assert_unavailable(&r);
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(
        recovered_in_time && recovered,
        "the breaker did not close within {GUARD:?}"
    );
    assert_eq!(a.requests(), 4, "exactly one probe, which succeeded");
    // Closed again: every request goes through.
    for _ in 0..5 {
        let r = c.request(&get("/cb", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(a.requests(), 9);
}

#[test]
fn failed_half_open_probe_reopens_the_breaker() {
    let a = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&config(
        &[t(&a.target())],
        "circuit_breaker = { consecutive_failures = 3, open_for = \"2s\" }",
    ));
    let mut c = srv.client();
    for _ in 0..3 {
        let r = c.request(&get("/cb", &[]));
        assert!(is_upstream_503(&r), "{}", r.summary());
    }
    // Poll until the probe reaches the (still failing) upstream.
    let probed = wait_until(GUARD, || {
        let r = c.request(&get("/cb", &[]));
        if is_upstream_503(&r) {
            return true;
        }
        assert_unavailable(&r);
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(probed, "no half-open probe within {GUARD:?}");
    assert_eq!(a.requests(), 4, "one probe after open_for");
    // The failed probe re-opened the breaker (for another 2s).
    let r = c.request(&get("/cb", &[]));
    assert_unavailable(&r);
    assert_eq!(a.requests(), 4);
}

// ---- health checks ----

const HEALTH: &str = "health_check = { path = \"/healthz\", interval = \"50ms\", \
                      timeout = \"500ms\", healthy = 2, unhealthy = 2 }";

/// Waits until the upstream has had `n` more health checks than now.
fn wait_more_checks(u: &Upstream, n: usize) {
    let target = u.health_checks() + n;
    assert!(
        u.wait_health_checks(target),
        "health checks stopped: {} of {target}",
        u.health_checks()
    );
}

#[test]
fn health_check_marks_a_target_down_and_traffic_avoids_it() {
    let a = Upstream::start_with_health(Behaviour::ok("A"), "/healthz");
    let b = Upstream::start_with_health(Behaviour::ok("B"), "/healthz");
    let srv = TestServer::start_toml(&config(
        &[t(&a.target()), t(&b.target())],
        &format!("balance = \"round_robin\"\n{HEALTH}"),
    ));
    wait_more_checks(&a, 3);
    wait_more_checks(&b, 3);
    let mut c = srv.client();
    let (na, nb) = spread(&mut c, 10);
    assert!(na > 0 && nb > 0, "both healthy: {na}/{nb}");

    a.set_healthy(false);
    // `unhealthy = 2` failures, plus one more check so that the second
    // failure's result is in.
    wait_more_checks(&a, 3);
    let before = a.requests();
    let (na, nb) = spread(&mut c, 20);
    assert_eq!((na, nb), (0, 20), "A is marked down");
    assert_eq!(a.requests(), before, "no request to a target marked down");

    a.set_healthy(true);
    wait_more_checks(&a, 3);
    let (na, nb) = spread(&mut c, 20);
    assert!(na > 0 && nb > 0, "A is back: {na}/{nb}");
}

#[test]
fn all_targets_down_is_503_with_retry_after() {
    let a = Upstream::start_with_health(Behaviour::ok("A"), "/healthz");
    let b = Upstream::start_with_health(Behaviour::ok("B"), "/healthz");
    a.set_healthy(false);
    b.set_healthy(false);
    let srv = TestServer::start_toml(&config(&[t(&a.target()), t(&b.target())], HEALTH));
    wait_more_checks(&a, 3);
    wait_more_checks(&b, 3);
    let mut c = srv.client();
    for _ in 0..3 {
        let r = c.request(&get("/down", &[]));
        assert_unavailable(&r);
    }
    assert_eq!(
        a.requests() + b.requests(),
        0,
        "answered without contacting any target"
    );

    b.set_healthy(true);
    wait_more_checks(&b, 3);
    let r = c.request(&get("/up", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"B");
}
