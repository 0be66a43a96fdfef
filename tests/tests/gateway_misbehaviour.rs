//! The gateway's response cache, aggregation, retries, retry budget,
//! circuit breaker and health checks attacked with misbehaving upstreams and
//! clients: key confusion, validators, coalescing when the leader goes away
//! or gets an answer that cannot be shared, odd part bodies, half-open
//! probes that hang, retries at the edge of the deadline.
//!
//! Nothing here decides an outcome by timing: waits are gates and bounded
//! polling loops (at most GUARD); the few short sleeps only make a race
//! more likely to be exercised, and the asserted outcome is the same
//! whichever way it goes.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::assert_problem;
use serde_json::Value;
use shardline_tests::request::request;
use shardline_tests::upstream::{
    closed_addr, wait_until, Action, Behaviour, Gate, Recorded, Reply, Step, Upstream,
};
use shardline_tests::{get, Client, Response, TestServer, GUARD};

// ---- helpers ----

/// One upstream `u` (targets as TOML array elements, plus `upstream_extra`
/// lines) and a catch-all route to it with `route_extra` lines.
fn proxy_config(targets: &[String], upstream_extra: &str, route_extra: &str) -> String {
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
{route_extra}
"#,
        targets.join(", ")
    )
}

/// A quoted target element.
fn t(addr: &str) -> String {
    format!("\"{addr}\"")
}

/// A single-target upstream with a cached catch-all route.
fn cached(up: &Upstream, cache: &str, route_extra: &str) -> String {
    proxy_config(
        &[t(&up.target())],
        "",
        &format!("cache = {{ {cache} }}\n{route_extra}"),
    )
}

fn x_cache(r: &Response) -> String {
    r.header("x-cache").unwrap_or_default()
}

/// An upstream whose body is `<target>#<n>` (n counts every request from
/// 1) and whose fields are `fields(req)`.
fn numbered(
    fields: impl Fn(&Recorded) -> Vec<(String, String)> + Send + Sync + 'static,
) -> Behaviour {
    let n = Arc::new(AtomicUsize::new(0));
    Behaviour::script(move |req: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let mut reply = Reply::ok(&format!("{}#{i}", req.target));
        for (k, v) in fields(req) {
            reply = reply.header(&k, &v);
        }
        Action::Reply(reply)
    })
}

fn max_age_60(_: &Recorded) -> Vec<(String, String)> {
    vec![("Cache-Control".into(), "max-age=60".into())]
}

/// Sends `req` on a new connection in a thread and returns its answer.
fn spawn_request(addr: std::net::SocketAddr, req: Vec<u8>) -> thread::JoinHandle<Response> {
    thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.request(&req)
    })
}

fn assert_unavailable(r: &Response, what: &str) {
    let ty = assert_problem(r, 503);
    assert_eq!(
        ty,
        "https://shardline.dev/problems/upstream-unavailable",
        "{what}: {}",
        r.summary()
    );
    assert!(r.has_header("retry-after"), "{what}: {}", r.summary());
}

// ---- cache: sizes ----

/// `max_entry_bytes` may equal `max_bytes` (and does by default when
/// `max_bytes` is under 1 MiB); a body within `max_entry_bytes` whose entry
/// (with its key, fields and overheads) does not fit `max_bytes` simply
/// is not stored: the client still gets the upstream's answer.
#[test]
fn a_body_that_fits_max_entry_bytes_but_not_max_bytes_is_forwarded_not_a_500() {
    let body = "x".repeat(1900);
    let up = Upstream::start(Behaviour::reply(
        Reply::ok(&body).header("Cache-Control", "max-age=60"),
    ));
    // max_entry_bytes defaults to max_bytes here (2 KiB < 1 MiB).
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\", max_bytes = \"2KiB\"", ""));
    let mut c = srv.client();
    for i in 0..2 {
        let r = c.request(&get("/big", &[]));
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        assert_eq!(r.text(), body, "request {i}");
    }
}

/// `max_entries` is an LRU bound: a hit makes its entry the most recently
/// used, so the next insertion evicts the other one.
#[test]
fn max_entries_evicts_the_least_recently_used_not_the_oldest() {
    let up = Upstream::start(numbered(max_age_60));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\", max_entries = 2", ""));
    let mut c = srv.client();
    let expect = |c: &mut Client, path: &str, cache: &str, body: &str| {
        let r = c.request(&get(path, &[]));
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
        assert_eq!(x_cache(&r), cache, "{path}: {}", r.summary());
        assert_eq!(r.text(), body, "{path}");
    };
    expect(&mut c, "/a", "MISS", "/a#1");
    expect(&mut c, "/b", "MISS", "/b#2");
    expect(&mut c, "/a", "HIT", "/a#1");
    expect(&mut c, "/c", "MISS", "/c#3");
    expect(&mut c, "/a", "HIT", "/a#1");
    expect(&mut c, "/b", "MISS", "/b#4");
}

// ---- cache: keys ----

/// Targets that differ only in query order, percent-encoding case, `;`
/// parameters or an empty query are different resources to the cache (it
/// must never merge two of them: the upstream may tell them apart).
#[test]
fn differently_written_targets_never_share_an_entry() {
    let up = Upstream::start(numbered(max_age_60));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut c = srv.client();
    let targets = [
        "/k?a=1&b=2",
        "/k?b=2&a=1",
        "/k",
        "/k?",
        "/k;v=1",
        "/k;v=2",
        "/p%2Fx",
        "/p%2fx",
        "/p/x",
        "/k?a=%41",
        "/k?a=A",
        "/k?a=1%26b=2",
    ];
    let mut bodies = Vec::new();
    for path in targets {
        let r = c.request(&get(path, &[]));
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
        assert_eq!(x_cache(&r), "MISS", "{path}: {}", r.summary());
        assert!(!bodies.contains(&r.body), "{path}: {}", r.summary());
        bodies.push(r.body);
    }
    for (path, body) in targets.iter().zip(&bodies) {
        let r = c.request(&get(path, &[]));
        assert_eq!(x_cache(&r), "HIT", "{path}: {}", r.summary());
        assert_eq!(&r.body, body, "{path}");
    }
    assert_eq!(up.requests(), targets.len());
}

/// A HEAD miss is forwarded as is and stores nothing, so the GET after it
/// still gets the whole body (never an empty one learnt from the HEAD).
#[test]
fn a_head_miss_does_not_leave_an_empty_entry_for_get() {
    let up = Upstream::start(numbered(max_age_60));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut c = srv.client();
    let r = c.request(&request("HEAD", "/h", &[], None));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.body.is_empty());
    let r = c.request(&get("/h", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.text().starts_with("/h#"), "{}", r.summary());
    assert_eq!(
        r.header("content-length").as_deref(),
        Some(r.body.len().to_string().as_str()),
        "{}",
        r.summary()
    );
    let r2 = c.request(&get("/h", &[]));
    assert_eq!(x_cache(&r2), "HIT", "{}", r2.summary());
    assert_eq!(r2.body, r.body);
    let r3 = c.request(&request("HEAD", "/h", &[], None));
    assert_eq!(x_cache(&r3), "HIT", "{}", r3.summary());
    assert_eq!(
        r3.header("content-length").as_deref(),
        Some(r.body.len().to_string().as_str()),
        "a HEAD hit announces the GET body's length: {}",
        r3.summary()
    );
}

/// An upstream whose body names every value it received of `field`
/// (every field line, joined as a recipient combines them).
fn echo_field(field: &'static str, vary: &'static str) -> Behaviour {
    let n = Arc::new(AtomicUsize::new(0));
    Behaviour::script(move |req: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let seen = req.header_all(field).join(", ");
        Action::Reply(
            Reply::ok(&format!("#{i} for [{seen}]"))
                .header("Cache-Control", "max-age=60")
                .header("Vary", vary),
        )
    })
}

/// RFC 9111 §4.1: the Vary fields of a request are compared after
/// combining all of their field lines. A request that sent two `Cookie`
/// lines got an answer made for both; a request with only the first line
/// must not be served it (here: someone else's session).
#[test]
fn vary_compares_every_line_of_a_repeated_request_field() {
    let up = Upstream::start(echo_field("cookie", "Cookie"));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut victim = srv.client();
    let r = victim.request(&get(
        "/me",
        &["Cookie: theme=dark", "Cookie: session=alice"],
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.text().contains("session=alice"), "{}", r.summary());

    let mut other = srv.client();
    let r = other.request(&get("/me", &["Cookie: theme=dark"]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        !r.text().contains("alice"),
        "a response made for Cookie `theme=dark, session=alice` answered a request \
         with only `theme=dark`: {}",
        r.summary()
    );

    // And the other way round: a stored single-line variant does not
    // answer a request that adds a second line.
    let up2 = Upstream::start(echo_field("accept-language", "Accept-Language"));
    let srv2 = TestServer::start_toml(&cached(&up2, "ttl = \"60s\"", ""));
    let mut c = srv2.client();
    let r = c.request(&get("/l", &["Accept-Language: en"]));
    assert_eq!(r.text(), "#1 for [en]", "{}", r.summary());
    let r = c.request(&get("/l", &["Accept-Language: en", "Accept-Language: fr"]));
    assert_ne!(
        r.text(),
        "#1 for [en]",
        "a request for `en, fr` was served the `en` variant: {}",
        r.summary()
    );
}

/// Vary values are compared after trimming OWS; requests with the same
/// value get the same variant, different values their own.
#[test]
fn vary_variants_are_selected_by_the_trimmed_value() {
    let up = Upstream::start(echo_field("accept-language", "accept-language"));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut c = srv.client();
    let r = c.request(&get("/v", &["Accept-Language: de"]));
    assert_eq!(r.text(), "#1 for [de]");
    let r = c.request(&get("/v", &["accept-language:    de   "]));
    assert_eq!(x_cache(&r), "HIT", "{}", r.summary());
    assert_eq!(r.text(), "#1 for [de]");
    let r = c.request(&get("/v", &["Accept-Language: it"]));
    assert_eq!(r.text(), "#2 for [it]", "{}", r.summary());
    let r = c.request(&get("/v", &[]));
    assert_eq!(
        r.text(),
        "#3 for []",
        "absent is its own variant: {}",
        r.summary()
    );
    let r = c.request(&get("/v", &["Accept-Language:"]));
    assert_eq!(
        r.text(),
        "#4 for []",
        "present-but-empty differs from absent: {}",
        r.summary()
    );
}

// ---- cache: validators ----

/// An upstream that answers `/tagged` with a weak ETag, `/gone` with 404
/// (ETag `"g1"`), `/nomod` with 304 when the request has If-None-Match.
fn validator_upstream() -> Upstream {
    let n = Arc::new(AtomicUsize::new(0));
    Upstream::start(Behaviour::script(move |req: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let reply = match req.path() {
            "/tagged" => Reply::ok(&format!("tagged#{i}")).header("ETag", "W/\"w1\""),
            "/gone" => Reply::new(404)
                .header("Content-Type", "text/plain")
                .header("ETag", "\"g1\"")
                .body(format!("gone#{i}").as_bytes()),
            "/gone-untagged" => Reply::new(404)
                .header("Content-Type", "text/plain")
                .body(format!("gone#{i}").as_bytes()),
            "/nomod" if req.has_header("if-none-match") => Reply::new(304).header("ETag", "\"n1\""),
            "/nomod" => Reply::ok(&format!("nomod#{i}")).header("ETag", "\"n1\""),
            _ => Reply::ok(&format!("{}#{i}", req.target)),
        };
        Action::Reply(reply.header("Cache-Control", "max-age=60"))
    }))
}

#[test]
fn if_none_match_lists_weak_tags_and_star_are_evaluated_on_hits() {
    let up = validator_upstream();
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut c = srv.client();
    let r = c.request(&get("/tagged", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("etag").as_deref(), Some("W/\"w1\""));
    for (inm, status) in [
        ("\"a\", W/\"w1\"", 304),
        ("\"w1\"", 304),
        ("W/\"w1\"", 304),
        ("*", 304),
        ("\"other\"", 200),
        ("\"a\",\"b\"", 200),
        ("\"w1", 200),
    ] {
        let h = format!("If-None-Match: {inm}");
        let r = c.request(&get("/tagged", &[&h]));
        assert_eq!(r.status, status, "If-None-Match: {inm}: {}", r.summary());
        assert_eq!(x_cache(&r), "HIT", "{inm}: {}", r.summary());
        if status == 304 {
            assert!(r.body.is_empty());
            assert_eq!(r.header("etag").as_deref(), Some("W/\"w1\""), "{inm}");
        } else {
            assert_eq!(r.text(), "tagged#1", "{inm}");
        }
    }
    // Two field lines are one list.
    let r = c.request(&get(
        "/tagged",
        &["If-None-Match: \"x\"", "If-None-Match: W/\"w1\""],
    ));
    assert_eq!(r.status, 304, "{}", r.summary());
    assert_eq!(up.requests(), 1);
}

/// RFC 9110 §13.2.1: preconditions are ignored when the response without
/// them would not be 2xx. A cached 404 answers `If-None-Match: *` (or its
/// own tag) with the 404, never with 304 (which would tell a client its
/// cached copy of a resource that does not exist is still good).
#[test]
fn a_cached_404_ignores_if_none_match() {
    let up = validator_upstream();
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut c = srv.client();
    for path in ["/gone", "/gone-untagged"] {
        // On the miss that stores it and on the hits after.
        for inm in ["*", "*", "\"g1\""] {
            let h = format!("If-None-Match: {inm}");
            let r = c.request(&get(path, &[&h]));
            assert_eq!(
                r.status,
                404,
                "{path} with If-None-Match: {inm}: {}",
                r.summary()
            );
            assert!(r.text().starts_with("gone#"), "{}", r.summary());
        }
    }
}

/// A client's conditional request on a miss may reach the upstream; its
/// 304 goes back to that client and is not stored, so a later plain GET
/// gets the whole representation.
#[test]
fn an_upstream_304_is_passed_on_and_never_answers_a_plain_get() {
    let up = validator_upstream();
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut c = srv.client();
    let r = c.request(&get("/nomod", &["If-None-Match: \"n1\""]));
    assert_eq!(r.status, 304, "{}", r.summary());
    assert!(r.body.is_empty());
    let r = c.request(&get("/nomod", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.text().starts_with("nomod#"), "{}", r.summary());
    let r = c.request(&get("/nomod", &["If-None-Match: \"n1\""]));
    assert_eq!(r.status, 304, "{}", r.summary());
    let r = c.request(&get("/nomod", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.text().starts_with("nomod#"), "{}", r.summary());
}

/// A stored 204 is answered without a body and without Content-Length
/// (RFC 9110 §8.6), also on a hit.
#[test]
fn a_cached_204_has_no_content_length() {
    let up = Upstream::start(Behaviour::reply(
        Reply::new(204).header("Cache-Control", "max-age=60"),
    ));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", ""));
    let mut c = srv.client();
    for cache in ["MISS", "HIT", "HIT"] {
        let r = c.request(&get("/nc", &[]));
        assert_eq!(r.status, 204, "{}", r.summary());
        assert_eq!(x_cache(&r), cache, "{}", r.summary());
        assert!(
            !r.has_header("content-length") && !r.has_header("transfer-encoding"),
            "{}",
            r.summary()
        );
    }
    assert_eq!(up.requests(), 1);
}

// ---- cache: stale-if-error ----

/// Polls `/s` until it is served STALE; every answer must be the first
/// body.
fn poll_until_stale(c: &mut Client, body: &str) {
    let mut stale = false;
    let done = wait_until(GUARD, || {
        let r = c.request(&get("/s", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), body, "{}", r.summary());
        match x_cache(&r).as_str() {
            "STALE" => {
                stale = true;
                true
            }
            "HIT" => {
                thread::sleep(Duration::from_millis(20));
                false
            }
            other => panic!("expected HIT then STALE, got {other}: {}", r.summary()),
        }
    });
    assert!(done && stale, "never served STALE within {GUARD:?}");
}

#[test]
fn stale_if_error_covers_an_upstream_that_times_out() {
    let up = Upstream::start(numbered(|_| Vec::new()));
    let srv = TestServer::start_toml(&cached(
        &up,
        "ttl = \"300ms\", stale_if_error = \"60s\"",
        "timeout = \"300ms\"",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/s", &[]));
    assert_eq!(r.text(), "/s#1");
    up.set_behaviour(Behaviour::hang());
    poll_until_stale(&mut c, "/s#1");
}

/// A cached route reads the whole body before answering, so a body the
/// upstream breaks off is an upstream failure found before anything was
/// sent: within stale-if-error the stale copy answers, as for a 5xx.
#[test]
fn stale_if_error_covers_a_body_the_upstream_breaks_off() {
    let up = Upstream::start(numbered(|_| Vec::new()));
    let srv = TestServer::start_toml(&cached(
        &up,
        "ttl = \"300ms\", stale_if_error = \"60s\"",
        "timeout = \"2s\"",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/s", &[]));
    assert_eq!(r.text(), "/s#1");
    up.set_behaviour(Behaviour::always(Action::Steps(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()),
        Step::Close,
    ])));
    poll_until_stale(&mut c, "/s#1");
}

// ---- cache: request coalescing ----

/// An upstream whose first request waits for `gate`; every request is
/// answered by `reply(n, req)` (n from 1).
fn gated_first(
    gate: &Gate,
    reply: impl Fn(usize, &Recorded) -> Reply + Send + Sync + 'static,
) -> Behaviour {
    let n = Arc::new(AtomicUsize::new(0));
    let gate = gate.clone();
    Behaviour::script(move |req: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let r = reply(i, req);
        if i == 1 {
            let bytes = r.encode(req.method == "HEAD");
            Action::Steps(vec![Step::Wait(gate.clone()), Step::Write(bytes)])
        } else {
            Action::Reply(r)
        }
    })
}

/// Followers of a leader whose client hangs up while the upstream is
/// still answering get an answer (the leader's stored one, or their own).
#[test]
fn followers_are_answered_when_the_leaders_client_hangs_up() {
    let gate = Gate::new();
    let up = Upstream::start(gated_first(&gate, |i, _| {
        Reply::ok(&format!("answer#{i}")).header("Cache-Control", "max-age=60")
    }));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", "timeout = \"5s\""));
    let mut leader = srv.client();
    leader.send(&get("/co", &[]));
    assert!(up.wait_requests(1));
    let followers: Vec<_> = (0..3)
        .map(|_| spawn_request(srv.addr, get("/co", &[])))
        .collect();
    // Let the followers register behind the leader (the outcome asserted
    // is the same if they have not yet).
    thread::sleep(Duration::from_millis(100));
    drop(leader);
    thread::sleep(Duration::from_millis(50));
    gate.open();
    for f in followers {
        let r = f.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(r.text().starts_with("answer#"), "{}", r.summary());
    }
    let mut c = srv.client();
    let r = c.request(&get("/co", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// A leader whose answer may not be shared (a `private` response, or one
/// to a request with Authorization and no `public`) must not hand it to
/// the followers: they go upstream themselves.
#[test]
fn followers_never_get_a_leaders_unshareable_answer() {
    for (leader_extra, private) in [(None, true), (Some("Authorization: Bearer alice"), false)] {
        let gate = Gate::new();
        let up = Upstream::start(gated_first(&gate, move |i, req| {
            let who = req
                .header("authorization")
                .unwrap_or("anonymous")
                .to_string();
            let mut r = Reply::ok(&format!("#{i} for {who}"));
            r = if private {
                r.header("Cache-Control", "private, max-age=60")
            } else {
                r.header("Cache-Control", "max-age=60")
            };
            r
        }));
        let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", "timeout = \"5s\""));
        let leader_req = get("/acct", &leader_extra.into_iter().collect::<Vec<_>>());
        let leader = spawn_request(srv.addr, leader_req);
        assert!(up.wait_requests(1));
        let followers: Vec<_> = (0..3)
            .map(|_| spawn_request(srv.addr, get("/acct", &[])))
            .collect();
        thread::sleep(Duration::from_millis(100));
        gate.open();
        let l = leader.join().unwrap();
        assert_eq!(l.status, 200, "{}", l.summary());
        assert!(l.text().starts_with("#1 "), "{}", l.summary());
        for f in followers {
            let r = f.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.summary());
            assert_ne!(r.body, l.body, "a follower got the leader's answer");
            assert!(r.text().ends_with("for anonymous"), "{}", r.summary());
        }
    }
}

/// Concurrent misses on one key with different values of the Vary field
/// each get their own variant.
#[test]
fn coalesced_requests_with_other_vary_values_get_their_own_variant() {
    let gate = Gate::new();
    let up = Upstream::start(gated_first(&gate, |i, req| {
        let lang = req.header("accept-language").unwrap_or("-").to_string();
        Reply::ok(&format!("#{i} lang={lang}"))
            .header("Cache-Control", "max-age=60")
            .header("Vary", "Accept-Language")
    }));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", "timeout = \"5s\""));
    let leader = spawn_request(srv.addr, get("/vv", &["Accept-Language: en"]));
    assert!(up.wait_requests(1));
    let langs = ["fr", "en", "de", "fr"];
    let followers: Vec<_> = langs
        .iter()
        .map(|l| spawn_request(srv.addr, get("/vv", &[&format!("Accept-Language: {l}")])))
        .collect();
    thread::sleep(Duration::from_millis(100));
    gate.open();
    let l = leader.join().unwrap();
    assert_eq!(l.text(), "#1 lang=en", "{}", l.summary());
    for (lang, f) in langs.iter().zip(followers) {
        let r = f.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(
            r.text().ends_with(&format!("lang={lang}")),
            "a request for {lang}: {}",
            r.summary()
        );
    }
}

/// A HEAD miss that leads a GET: the GET follower gets the whole body.
#[test]
fn a_get_waiting_on_a_head_leader_gets_a_body() {
    let gate = Gate::new();
    let up = Upstream::start(gated_first(&gate, |i, _| {
        Reply::ok(&format!("body#{i}")).header("Cache-Control", "max-age=60")
    }));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", "timeout = \"5s\""));
    let head = spawn_request(srv.addr, request("HEAD", "/hg", &[], None));
    assert!(up.wait_requests(1));
    let follower = spawn_request(srv.addr, get("/hg", &[]));
    thread::sleep(Duration::from_millis(100));
    gate.open();
    let h = head.join().unwrap();
    assert_eq!(h.status, 200, "{}", h.summary());
    assert!(h.body.is_empty());
    let r = follower.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.text().starts_with("body#"), "{}", r.summary());
    assert_eq!(
        r.header("content-length").as_deref(),
        Some(r.body.len().to_string().as_str())
    );
}

/// A leader whose answer turns out not storable from its head (`no-store`,
/// here a long chunked body) releases its followers at once, as nginx's
/// `proxy_cache_lock` does: they go upstream themselves instead of
/// waiting for the leader's whole body to stream.
#[test]
fn followers_are_released_when_the_leaders_head_is_not_storable() {
    let gate = Gate::new();
    let n = Arc::new(AtomicUsize::new(0));
    let g = gate.clone();
    let up = Upstream::start(Behaviour::script(move |_req: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        if i == 1 {
            let mut head = b"HTTP/1.1 200 OK\r\nCache-Control: no-store\r\n\
                             Transfer-Encoding: chunked\r\n\r\n"
                .to_vec();
            head.extend_from_slice(&shardline_tests::upstream::chunk(b"first part "));
            Action::Steps(vec![
                Step::Write(head),
                Step::Wait(g.clone()),
                Step::Write(shardline_tests::upstream::chunk(b"last part")),
                Step::Write(b"0\r\n\r\n".to_vec()),
            ])
        } else {
            Action::Reply(Reply::ok(&format!("own#{i}")).header("Cache-Control", "no-store"))
        }
    }));
    let srv = TestServer::start_toml(&cached(&up, "ttl = \"60s\"", "timeout = \"20s\""));
    let mut leader = srv.client();
    leader.send(&get("/dl", &[]));
    assert!(up.wait_requests(1));
    let followers: Vec<_> = (0..2)
        .map(|_| spawn_request(srv.addr, get("/dl", &[])))
        .collect();
    // The followers' answers do not depend on the gate: they must come
    // while it is still closed.
    let released = wait_until(Duration::from_secs(3), || {
        followers.iter().all(|f| f.is_finished())
    });
    gate.open();
    for f in followers {
        let r = f.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(r.text().starts_with("own#"), "{}", r.summary());
    }
    let r = leader.response();
    assert_eq!(r.text(), "first part last part", "{}", r.summary());
    assert!(
        released,
        "the followers waited for the leader's unstorable body to finish"
    );
}

// ---- aggregation ----

/// One upstream per part (`parts`: name, upstream address, path) and the
/// route `GET /agg`.
fn aggregate_config(parts: &[(&str, String)], route_extra: &str) -> String {
    let mut ups = String::new();
    let mut list = String::new();
    for (i, (name, addr)) in parts.iter().enumerate() {
        ups.push_str(&format!(
            "[[upstreams]]\nname = \"u{i}\"\ntargets = [\"{addr}\"]\n\n"
        ));
        list.push_str(&format!(
            "  {{ name = {}, upstream = \"u{i}\", path = \"/part/{i}\" }},\n",
            toml_string(name)
        ));
    }
    format!(
        r#"
[server]
drain_timeout = "1s"

{ups}
[[routes]]
name = "agg"
method = "GET"
path = "/agg"
{route_extra}
aggregate = [
{list}]
"#
    )
}

/// A TOML basic string for `s`.
fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn strict_json(r: &Response) -> Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("the aggregate is not valid JSON ({e}): {}", r.summary()))
}

/// Whatever the parts send, the aggregate is one valid JSON document
/// (UTF-8, one value per part): bodies that are not JSON become strings.
#[test]
fn odd_part_bodies_still_make_one_valid_json_document() {
    let raw = |ct: &str, body: &[u8]| {
        Upstream::start(Behaviour::reply(
            Reply::new(200).header("Content-Type", ct).body(body),
        ))
    };
    let cases: Vec<(&str, Upstream)> = vec![
        ("bad_utf8", raw("text/plain", b"\xff\xfe not utf-8 \xc3")),
        (
            "bad_utf8_in_json",
            raw("application/json", b"{\"a\":\"\xff\xfe\"}"),
        ),
        ("dup_keys", raw("application/json", br#"{"a":1,"a":2}"#)),
        ("trailing", raw("application/json", br#"{"a":1} {"b":2}"#)),
        ("two_values", raw("application/json", b"1 2")),
        ("trailing_comma", raw("application/json", br#"{"a":1,}"#)),
        ("bom", raw("application/json", b"\xef\xbb\xbf{\"a\":1}")),
        ("spaces", raw("application/json", b"   ")),
        ("empty", raw("application/json", b"")),
        ("null", raw("application/json", b"null")),
        ("nan", raw("application/json", b"NaN")),
        ("control", raw("application/json", b"\"a\x01b\"")),
        ("nul", raw("text/plain", b"a\x00b")),
        (
            "no_content",
            Upstream::start(Behaviour::reply(Reply::new(204))),
        ),
    ];
    let parts: Vec<(&str, String)> = cases.iter().map(|(n, u)| (*n, u.target())).collect();
    let srv = TestServer::start_toml(&aggregate_config(&parts, ""));
    let mut c = srv.client();
    let r = c.request(&get("/agg", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = strict_json(&r);
    for (name, _) in &cases {
        assert!(
            v.get(*name).is_some() || v["errors"].get(*name).is_some(),
            "part {name} missing: {}",
            r.summary()
        );
    }
    assert!(v["bad_utf8"].is_string(), "{}", r.summary());
    assert_eq!(v["null"], Value::Null, "{}", r.summary());
    assert_eq!(v["trailing"], Value::String("{\"a\":1} {\"b\":2}".into()));
    assert_eq!(v["two_values"], Value::String("1 2".into()));
    assert_eq!(v["nul"], Value::String("a\u{0}b".into()));
}

/// A part whose body is JSON by RFC 8259's grammar but holds an unpaired
/// surrogate escape (`"\ud800"`, not I-JSON, RFC 7493 §2.1) is embedded
/// verbatim, so strict consumers (serde_json, here) cannot parse the whole
/// aggregate; embedding it as a string would keep the document usable.
#[test]
fn a_part_with_a_lone_surrogate_does_not_break_the_aggregate() {
    let odd = Upstream::start(Behaviour::reply(Reply::json(r#"{"s":"\ud800"}"#)));
    let ok = Upstream::start(Behaviour::reply(Reply::json("1")));
    let srv = TestServer::start_toml(&aggregate_config(
        &[("odd", odd.target()), ("ok", ok.target())],
        "",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/agg", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = strict_json(&r);
    assert_eq!(v["ok"], 1);
}

/// HEAD on an aggregate route is answered like the GET, without a body.
#[test]
fn head_on_an_aggregate_route_has_no_body() {
    let ok = Upstream::start(Behaviour::reply(Reply::json("{\"a\":1}")));
    let srv = TestServer::start_toml(&aggregate_config(&[("p", ok.target())], ""));
    let mut c = srv.client();
    let r = c.request(&request("HEAD", "/agg", &[], None));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(r.body.is_empty());
    let r = c.request(&get("/agg", &[]));
    assert_eq!(strict_json(&r)["p"]["a"], 1, "{}", r.summary());
}

/// A part that redirects or is larger than 1 MiB fails on its own; the
/// rest still answer.
#[test]
fn redirecting_and_oversized_parts_fail_alone() {
    let ok = Upstream::start(Behaviour::reply(Reply::json("{\"fine\":true}")));
    let redirect = Upstream::start(Behaviour::reply(
        Reply::new(301)
            .header("Location", "/elsewhere")
            .body(b"moved"),
    ));
    let huge = Upstream::start(Behaviour::generate(2 << 20));
    let huge_chunked = Upstream::start(Behaviour::always(Action::Steps({
        let mut steps = vec![Step::Write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
        )];
        let piece = vec![b'7'; 64 * 1024];
        for _ in 0..40 {
            steps.push(Step::Write(shardline_tests::upstream::chunk(&piece)));
        }
        steps.push(Step::Write(b"0\r\n\r\n".to_vec()));
        steps
    })));
    let srv = TestServer::start_toml(&aggregate_config(
        &[
            ("ok", ok.target()),
            ("redirect", redirect.target()),
            ("huge", huge.target()),
            ("huge_chunked", huge_chunked.target()),
        ],
        "",
    ));
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/agg", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        let v = strict_json(&r);
        assert_eq!(v["ok"]["fine"], Value::Bool(true), "{}", r.summary());
        assert_eq!(v["errors"]["redirect"]["status"], 301, "{}", r.summary());
        for p in ["huge", "huge_chunked"] {
            assert!(v.get(p).is_none(), "{p}: {}", r.summary());
            assert!(
                v["errors"][p]["status"].as_u64().is_some_and(|s| s >= 500),
                "{p}: {}",
                r.summary()
            );
        }
    }
}

/// Part names that need escaping in JSON stay one valid key each, on the
/// success and on the error side.
#[test]
fn part_names_are_escaped_as_json_keys() {
    let ok = Upstream::start(Behaviour::reply(Reply::json("1")));
    let dead = closed_addr().to_string();
    let names = [
        "q\"uote",
        "back\\slash",
        "tab\there",
        "caf\u{e9} \u{2713}",
        "</script>",
    ];
    let mut parts: Vec<(&str, String)> = Vec::new();
    for n in names {
        parts.push((n, ok.target()));
    }
    let failing: Vec<String> = names.iter().map(|n| format!("x{n}")).collect();
    for n in &failing {
        parts.push((n.as_str(), dead.clone()));
    }
    let srv = TestServer::start_toml(&aggregate_config(&parts, ""));
    let mut c = srv.client();
    let r = c.request(&get("/agg", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = strict_json(&r);
    for n in names {
        assert_eq!(v[n], 1, "{n:?}: {}", r.summary());
    }
    for n in &failing {
        assert_eq!(
            v["errors"][n.as_str()]["status"],
            502,
            "{n:?}: {}",
            r.summary()
        );
    }
}

/// A part whose upstream's breaker is open is reported as 503 without
/// being contacted; the other parts answer.
#[test]
fn a_part_behind_an_open_breaker_fails_fast_without_contacting_it() {
    let ok = Upstream::start(Behaviour::reply(Reply::json("{\"ok\":1}")));
    let bad = Upstream::start(Behaviour::status(503));
    let toml = format!(
        r#"
[[upstreams]]
name = "ok"
targets = ["{}"]

[[upstreams]]
name = "bad"
targets = ["{}"]
circuit_breaker = {{ consecutive_failures = 2, open_for = "60s" }}

[[routes]]
name = "agg"
method = "GET"
path = "/agg"
aggregate = [
  {{ name = "ok", upstream = "ok", path = "/ok" }},
  {{ name = "bad", upstream = "bad", path = "/bad" }},
]
"#,
        ok.target(),
        bad.target()
    );
    let srv = TestServer::start_toml(&toml);
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/agg", &[]));
        let v = strict_json(&r);
        assert_eq!(v["errors"]["bad"]["status"], 503, "{}", r.summary());
    }
    assert_eq!(bad.requests(), 2);
    for _ in 0..3 {
        let r = c.request(&get("/agg", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        let v = strict_json(&r);
        assert_eq!(v["ok"]["ok"], 1, "{}", r.summary());
        assert_eq!(v["errors"]["bad"]["status"], 503, "{}", r.summary());
    }
    assert_eq!(bad.requests(), 2, "an open breaker is not contacted");
}

/// A part upstream that sends a second response after the first (or
/// answers more than it was asked) must not have that answer read as the
/// next aggregate's part.
#[test]
fn bytes_after_a_parts_answer_never_become_the_next_answer() {
    let n = Arc::new(AtomicUsize::new(0));
    let up = Upstream::start(Behaviour::script(move |_req: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        if i == 1 {
            Action::Steps(vec![
                Step::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n{\"n\":1}".to_vec()),
                Step::Sleep(Duration::from_millis(50)),
                Step::Write(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n{\"smuggled\":1}".to_vec(),
                ),
            ])
        } else {
            Action::Reply(Reply::json(&format!("{{\"n\":{i}}}")))
        }
    }));
    let srv = TestServer::start_toml(&aggregate_config(&[("p", up.target())], ""));
    let mut c = srv.client();
    let r = c.request(&get("/agg", &[]));
    assert_eq!(strict_json(&r)["p"]["n"], 1, "{}", r.summary());
    thread::sleep(Duration::from_millis(150));
    for _ in 0..3 {
        let r = c.request(&get("/agg", &[]));
        let v = strict_json(&r);
        assert!(v["p"].get("smuggled").is_none(), "{}", r.summary());
        assert!(
            v["p"]["n"].as_u64().is_some_and(|n| n > 1),
            "{}",
            r.summary()
        );
    }
}

// ---- retries, budget, breaker, health ----

/// The backoff between tries is cut at the route's deadline: a backoff of a
/// minute on a route with a 500 ms timeout still answers promptly.
#[test]
fn a_long_backoff_never_outlives_the_route_timeout() {
    let a = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&proxy_config(
        &[t(&a.target())],
        "retry = { attempts = 3, backoff = \"60s\", max_backoff = \"60s\", budget_percent = 100 }\n\
         circuit_breaker = { consecutive_failures = 1000, open_for = \"1s\" }",
        "timeout = \"500ms\"",
    ));
    let mut c = srv.client();
    for _ in 0..3 {
        let start = Instant::now();
        let r = c.request(&get("/b", &[]));
        assert!(
            r.status == 503 || r.status == 504,
            "the upstream's 503 or a gateway timeout: {}",
            r.summary()
        );
        assert!(start.elapsed() < GUARD);
    }
}

/// When the tries used up every target (each answered 502/503 and their
/// breakers opened), the client gets the last upstream answer, as after
/// failed connections it gets the last failure, not "every target is
/// ejected" for targets it just talked to.
#[test]
fn retries_that_exhaust_the_targets_return_the_last_answer() {
    let a = Upstream::start(Behaviour::status(502));
    let b = Upstream::start(Behaviour::status(502));
    let srv = TestServer::start_toml(&proxy_config(
        &[t(&a.target()), t(&b.target())],
        "retry = { attempts = 3, backoff = \"1ms\", budget_percent = 100 }\n\
         circuit_breaker = { consecutive_failures = 1, open_for = \"60s\" }",
        "",
    ));
    let mut c = srv.client();
    let r = c.request(&get("/x", &[]));
    assert_eq!(a.requests() + b.requests(), 2, "{}", r.summary());
    assert_eq!(r.status, 502, "{}", r.summary());
    assert_eq!(r.body, b"upstream 502", "{}", r.summary());
}

/// The retry budget is shared by concurrent requests on a shard: with
/// `budget_percent = 0` only the 3-retry floor is granted in the window,
/// however many requests fail at once.
#[test]
fn the_retry_budget_holds_across_concurrent_requests() {
    const CLIENTS: usize = 12;
    let a = Upstream::start(Behaviour::status(503));
    let b = Upstream::start(Behaviour::status(503));
    let srv = TestServer::start_toml(&proxy_config(
        &[t(&a.target()), t(&b.target())],
        "retry = { attempts = 3, backoff = \"1ms\", budget_percent = 0, budget_window = \"60s\" }\n\
         circuit_breaker = { consecutive_failures = 1000, open_for = \"1s\" }",
        "",
    ));
    let answers = shardline_tests::concurrent_requests(srv.addr, CLIENTS, &get("/r", &[]));
    for r in &answers {
        assert_eq!(r.status, 503, "{}", r.summary());
        assert_eq!(r.body, b"upstream 503", "{}", r.summary());
    }
    let tries = a.requests() + b.requests();
    assert!(
        tries <= CLIENTS + 3,
        "{CLIENTS} requests made {tries} tries: more than the 3-retry floor"
    );
    assert!(tries > CLIENTS, "the floor allows some retries: {tries}");
}

/// A weighted-up target that refuses connections: after its breaker opens
/// every request goes to the other one, and none fails meanwhile (the
/// refused tries are retried on the other target).
#[test]
fn a_heavy_target_that_is_down_does_not_fail_requests() {
    let dead = closed_addr().to_string();
    let b = Upstream::start(Behaviour::ok("B"));
    let srv = TestServer::start_toml(&proxy_config(
        &[
            format!("{{ addr = \"{dead}\", weight = 50 }}"),
            format!("{{ addr = \"{}\", weight = 1 }}", b.target()),
        ],
        "retry = { attempts = 2, backoff = \"1ms\", budget_percent = 20 }\n\
         circuit_breaker = { consecutive_failures = 2, open_for = \"60s\" }",
        "",
    ));
    let mut c = srv.client();
    for i in 0..30 {
        let r = c.request(&get(&format!("/w/{i}"), &[]));
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        assert_eq!(r.body, b"B");
    }
    assert_eq!(b.requests(), 30);
}

/// The upstream for the half-open tests: `/slow` waits for `slow`, `/fail`
/// answers 503, `/probe` waits for `probe`, the rest answers `other`.
fn breaker_upstream(slow: &Gate, probe: &Gate) -> Upstream {
    let (slow, probe) = (slow.clone(), probe.clone());
    Upstream::start(Behaviour::script(move |req: &Recorded| match req.path() {
        "/slow" => Action::Steps(vec![
            Step::Wait(slow.clone()),
            Step::Write(Reply::ok("slow").encode(false)),
        ]),
        "/fail" => Action::Reply(Reply::new(503).body(b"upstream 503")),
        "/probe" => Action::Steps(vec![
            Step::Wait(probe.clone()),
            Step::Write(Reply::ok("probe").encode(false)),
        ]),
        _ => Action::Reply(Reply::ok("other")),
    }))
}

const HALF_OPEN: &str = "circuit_breaker = { consecutive_failures = 2, open_for = \"300ms\" }";

/// Opens the breaker with two `/fail`s, then sends `/probe` until one is
/// let through as the half-open probe (it then hangs on its gate); returns
/// the client waiting for it.
fn open_then_probe(srv: &TestServer, up: &Upstream) -> Client {
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/fail", &[]));
        assert_eq!(r.body, b"upstream 503", "{}", r.summary());
    }
    let mut probe = srv.client();
    let probed = wait_until(GUARD, || {
        let before = up.requests();
        probe.send(&get("/probe", &[]));
        let mut answered = None;
        let reached = wait_until(GUARD, || {
            if up.requests() > before {
                return true;
            }
            if probe.poll_available() {
                answered = Some(probe.response());
                return true;
            }
            false
        });
        assert!(reached);
        match answered {
            Some(r) if up.requests() == before => {
                assert_unavailable(&r, "before open_for");
                thread::sleep(Duration::from_millis(20));
                false
            }
            Some(r) => panic!("the probe was answered at once: {}", r.summary()),
            None => true,
        }
    });
    assert!(probed, "no half-open probe within {GUARD:?}");
    probe
}

/// While the one half-open probe hangs, other requests are answered 503
/// at once and never reach the target.
#[test]
fn a_hanging_half_open_probe_keeps_other_requests_off_the_target() {
    let (slow, probe_gate) = (Gate::new(), Gate::new());
    let up = breaker_upstream(&slow, &probe_gate);
    let srv = TestServer::start_toml(&proxy_config(&[t(&up.target())], HALF_OPEN, ""));
    let mut probe = open_then_probe(&srv, &up);
    let reached = up.requests();
    let mut c = srv.client();
    for _ in 0..5 {
        let r = c.request(&get("/other", &[]));
        assert_unavailable(&r, "while the probe is in flight");
    }
    assert_eq!(up.requests(), reached, "no request piled on the probe");
    probe_gate.open();
    let r = probe.response();
    assert_eq!(r.body, b"probe", "{}", r.summary());
    let r = c.request(&get("/other", &[]));
    assert_eq!(
        r.body,
        b"other",
        "the probe closed the breaker: {}",
        r.summary()
    );
}

/// A request that was already in flight when the breaker opened is no
/// half-open probe: its ending (a success, here) must neither close the
/// breaker nor free the probe slot while the real probe still hangs.
#[test]
fn a_request_from_before_the_breaker_opened_does_not_decide_the_probe() {
    let (slow, probe_gate) = (Gate::new(), Gate::new());
    let up = breaker_upstream(&slow, &probe_gate);
    let srv = TestServer::start_toml(&proxy_config(&[t(&up.target())], HALF_OPEN, ""));
    let mut old = srv.client();
    old.send(&get("/slow", &[]));
    assert!(up.wait_requests(1));
    let _probe = open_then_probe(&srv, &up);
    let mut c = srv.client();
    let r = c.request(&get("/other", &[]));
    assert_unavailable(&r, "while the probe is in flight");
    slow.open();
    let r = old.response();
    assert_eq!(r.body, b"slow", "{}", r.summary());
    // Let the old request's end be recorded (the outcome asserted does not
    // depend on it).
    thread::sleep(Duration::from_millis(100));
    let before = up.requests();
    let r = c.request(&get("/other", &[]));
    assert_unavailable(&r, "the probe is still in flight");
    assert_eq!(
        up.requests(),
        before,
        "a request piled on the hanging probe"
    );
    probe_gate.open();
}

/// Health checks and the breaker together: one target marked down by its
/// health checks and the other with an open breaker leave nothing, so the
/// answer is a fast 503 with Retry-After; once the first is healthy again
/// it takes the traffic.
#[test]
fn health_checks_and_breakers_eject_together_and_recover() {
    let a = Upstream::start_with_health(Behaviour::ok("A"), "/healthz");
    // B passes its health checks; only its breaker ejects it.
    let b = Upstream::start_with_health(Behaviour::status(503), "/healthz");
    let srv = TestServer::start_toml(&proxy_config(
        &[t(&a.target()), t(&b.target())],
        "balance = \"round_robin\"\n\
         circuit_breaker = { consecutive_failures = 1, open_for = \"60s\" }\n\
         health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"500ms\", healthy = 1, unhealthy = 1 }",
        "",
    ));
    let mut c = srv.client();
    // Open B's breaker: round robin sends it some of these.
    let opened = wait_until(GUARD, || {
        let r = c.request(&get("/h", &[]));
        r.status == 503
    });
    assert!(opened);
    a.set_healthy(false);
    let checks = a.health_checks();
    assert!(a.wait_health_checks(checks + 3));
    let before = (a.requests(), b.requests());
    for _ in 0..3 {
        let r = c.request(&get("/h", &[]));
        assert_unavailable(&r, "A down, B ejected");
    }
    assert_eq!((a.requests(), b.requests()), before);
    a.set_healthy(true);
    let checks = a.health_checks();
    assert!(a.wait_health_checks(checks + 3));
    for _ in 0..5 {
        let r = c.request(&get("/h", &[]));
        assert_eq!(r.body, b"A", "{}", r.summary());
    }
}

/// A target whose health endpoint hangs is marked down by the probe's
/// timeout, and the hang does not stop the other target being probed
/// (and kept in service).
#[test]
fn a_hanging_health_endpoint_marks_only_its_target_down() {
    let a = Upstream::start(Behaviour::script(|req: &Recorded| {
        if req.path() == "/healthz" {
            Action::Steps(vec![Step::Hang])
        } else {
            Action::Reply(Reply::ok("A"))
        }
    }));
    let b = Upstream::start_with_health(Behaviour::ok("B"), "/healthz");
    let srv = TestServer::start_toml(&proxy_config(
        &[t(&a.target()), t(&b.target())],
        "balance = \"round_robin\"\n\
         health_check = { path = \"/healthz\", interval = \"50ms\", timeout = \"200ms\", healthy = 1, unhealthy = 2 }",
        "",
    ));
    // A's probes hang until their timeout; two in a row take it out.
    let health_requests = |u: &Upstream| u.log().iter().filter(|r| r.path() == "/healthz").count();
    assert!(wait_until(GUARD, || health_requests(&a) >= 3));
    let checks = b.health_checks();
    assert!(b.wait_health_checks(checks + 2));
    let mut c = srv.client();
    for i in 0..10 {
        let r = c.request(&get(&format!("/x/{i}"), &[]));
        assert_eq!(r.body, b"B", "{}", r.summary());
    }
}
