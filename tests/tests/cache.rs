//! The response cache of upstream routes (issue 4): what is stored, for how
//! long, variants, validators, stale-if-error and request coalescing.
//!
//! The upstream numbers its answers (`<target>#<n>`), so a test can tell a
//! cached answer from a fresh one. Expiry is observed with bounded polling
//! loops, never a fixed sleep that decides the outcome.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardline_tests::request::request;
use shardline_tests::upstream::{wait_until, Action, Behaviour, Recorded, Reply, Upstream};
use shardline_tests::{concurrent_requests, get, post, Client, Response, TestServer, GUARD};

/// An upstream answering `200 text/plain` `<target>#<n>` (n counts from 1
/// over all requests) with the header fields `fields` picks for the
/// request, and the status `status` picks.
fn numbered(
    status: impl Fn(&Recorded) -> u16 + Send + Sync + 'static,
    fields: impl Fn(&Recorded) -> Vec<(&'static str, String)> + Send + Sync + 'static,
) -> Behaviour {
    let n = Arc::new(AtomicUsize::new(0));
    Behaviour::script(move |req: &Recorded| {
        let i = n.fetch_add(1, Ordering::SeqCst) + 1;
        let mut body = format!("{}#{i}", req.target);
        if let Some(lang) = req.header("accept-language") {
            body.push_str(&format!(" lang={lang}"));
        }
        let mut reply = Reply::new(status(req))
            .header("Content-Type", "text/plain")
            .body(body.as_bytes());
        for (name, value) in fields(req) {
            reply = reply.header(name, &value);
        }
        Action::Reply(reply)
    })
}

/// `Cache-Control` by path: the tests' vocabulary.
fn cache_control_by_path(req: &Recorded) -> Vec<(&'static str, String)> {
    let cc = |v: &str| vec![("Cache-Control", v.to_string())];
    match req.path() {
        "/no-store" => cc("no-store"),
        "/private" => cc("private, max-age=600"),
        "/no-cache" => cc("no-cache"),
        "/max-age-1" => cc("max-age=1"),
        "/max-age-600" => cc("max-age=600"),
        "/public" => cc("public, max-age=600"),
        "/s-maxage-1" => cc("s-maxage=1, max-age=600"),
        "/vary" => vec![("Vary", "Accept-Language".to_string())],
        "/vary-star" => vec![("Vary", "*".to_string())],
        "/tagged" => vec![("ETag", "\"v7\"".to_string())],
        "/expires-past" => vec![("Expires", "Thu, 01 Jan 1970 00:00:00 GMT".to_string())],
        "/expires-0" => vec![("Expires", "0".to_string())],
        "/expires-far" => vec![("Expires", "Fri, 31 Dec 9999 23:59:59 GMT".to_string())],
        _ => Vec::new(),
    }
}

fn status_by_path(req: &Recorded) -> u16 {
    match req.path() {
        "/404" => 404,
        "/410" => 410,
        "/201" => 201,
        "/500" => 500,
        _ => 200,
    }
}

fn cache_upstream() -> Upstream {
    Upstream::start(numbered(status_by_path, cache_control_by_path))
}

/// One upstream and a catch-all route with `cache = { ttl, <extra> }`.
fn cache_config(up: &Upstream, ttl: &str, extra: &str) -> String {
    cache_config_with(up, ttl, extra, "")
}

/// `cache_config` with more keys (`route_keys`, whole lines) on the route.
fn cache_config_with(up: &Upstream, ttl: &str, extra: &str, route_keys: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "cached"
path = "/{{*rest}}"
upstream = "u"
{route_keys}
cache = {{ ttl = "{ttl}", max_entries = 100, max_bytes = "1MiB", max_entry_bytes = "64KiB"{extra} }}
"#,
        up.target()
    )
}

fn x_cache(r: &Response) -> String {
    r.header("x-cache")
        .unwrap_or_else(|| panic!("no X-Cache on a cached route's response: {}", r.summary()))
}

/// GET and assert status 200, the X-Cache value and the body.
fn expect(c: &mut Client, path: &str, extra: &[&str], cache: &str, body: &str) -> Response {
    let r = c.request(&get(path, extra));
    assert_eq!(r.status, 200, "GET {path}: {}", r.summary());
    assert_eq!(x_cache(&r), cache, "GET {path}: {}", r.summary());
    assert_eq!(r.text(), body, "GET {path}");
    r
}

#[test]
fn miss_then_hit() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    let first = expect(&mut c, "/a", &[], "MISS", "/a#1");
    let hit = expect(&mut c, "/a", &[], "HIT", "/a#1");
    assert_eq!(hit.media_type().as_deref(), Some("text/plain"));
    assert_eq!(first.header("content-type"), hit.header("content-type"));
    assert_eq!(up.requests(), 1);

    // The query is part of the key.
    expect(&mut c, "/a?x=1", &[], "MISS", "/a?x=1#2");
    expect(&mut c, "/a?x=1", &[], "HIT", "/a?x=1#2");

    // Another connection on the shard sees the same entry.
    let mut c2 = srv.client();
    expect(&mut c2, "/a", &[], "HIT", "/a#1");

    // HEAD is looked up as GET.
    let r = c.request(&request("HEAD", "/a", &[], None));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(x_cache(&r), "HIT");
    assert!(r.body.is_empty());
    assert_eq!(up.requests(), 2);
}

#[test]
fn responses_that_forbid_storing_are_not_cached() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    for (i, path) in ["/no-store", "/private", "/no-cache"].iter().enumerate() {
        let n = 2 * i + 1;
        expect(&mut c, path, &[], "MISS", &format!("{path}#{n}"));
        expect(&mut c, path, &[], "MISS", &format!("{path}#{}", n + 1));
    }
    assert_eq!(up.requests(), 6);
}

#[test]
fn only_cacheable_statuses_are_stored() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    let mut n = 0;
    for (path, status, stored) in [
        ("/404", 404, true),
        ("/410", 410, true),
        ("/201", 201, false),
        ("/500", 500, false),
    ] {
        n += 1;
        let first = c.request(&get(path, &[]));
        assert_eq!(first.status, status, "{}", first.summary());
        assert_eq!(first.text(), format!("{path}#{n}"));
        let second = c.request(&get(path, &[]));
        assert_eq!(second.status, status, "{}", second.summary());
        if stored {
            assert_eq!(x_cache(&second), "HIT", "{path}: {}", second.summary());
            assert_eq!(second.text(), format!("{path}#{n}"));
        } else {
            n += 1;
            assert_ne!(
                second.header("x-cache").as_deref(),
                Some("HIT"),
                "{path} must not be stored: {}",
                second.summary()
            );
            assert_eq!(second.text(), format!("{path}#{n}"));
        }
    }
    assert_eq!(up.requests(), n);
}

#[test]
fn entries_larger_than_max_entry_bytes_are_not_stored() {
    let big = "b".repeat(70 * 1024);
    let up = Upstream::start(Behaviour::ok(&big));
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/big", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body.len(), big.len());
        assert_eq!(x_cache(&r), "MISS", "{}", r.summary());
    }
    assert_eq!(up.requests(), 2);
}

/// RFC 9111 §5.2.1.1: a request's own `max-age` refuses stored copies
/// older than it (a browser's reload sends `max-age=0`); the fresh answer
/// it fetches is stored for the next requests.
#[test]
fn a_request_max_age_refuses_an_older_copy() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    let first = c.request(&get("/ma", &[]));
    assert_eq!(x_cache(&first), "MISS", "{}", first.summary());
    let r = c.request(&get("/ma", &["Cache-Control: max-age=3600"]));
    assert_eq!(x_cache(&r), "HIT", "young enough: {}", r.summary());
    let r = c.request(&get("/ma", &["Cache-Control: max-age=0"]));
    assert_eq!(x_cache(&r), "MISS", "older than 0 s: {}", r.summary());
    assert_ne!(r.text(), first.text(), "a new upstream answer");
    let again = c.request(&get("/ma", &[]));
    assert_eq!(x_cache(&again), "HIT", "{}", again.summary());
    assert_eq!(again.text(), r.text(), "the refreshed copy was stored");
    assert_eq!(up.requests(), 2);
}

/// Polls `path` until it is a MISS again (bounded by GUARD), asserting that
/// every answer before that is the cached `cached_body` as a HIT; returns
/// the MISS.
fn poll_until_miss(c: &mut Client, path: &str, cached_body: &str) -> Response {
    let mut miss = None;
    let expired = wait_until(GUARD, || {
        let r = c.request(&get(path, &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        if x_cache(&r) == "MISS" {
            miss = Some(r);
            return true;
        }
        assert_eq!(x_cache(&r), "HIT", "{}", r.summary());
        assert_eq!(r.text(), cached_body);
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(expired, "{path} did not expire within {GUARD:?}");
    miss.unwrap()
}

#[test]
fn max_age_and_s_maxage_override_the_route_ttl() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();

    expect(&mut c, "/max-age-1", &[], "MISS", "/max-age-1#1");
    expect(&mut c, "/max-age-1", &[], "HIT", "/max-age-1#1");
    let r = poll_until_miss(&mut c, "/max-age-1", "/max-age-1#1");
    assert_eq!(r.text(), "/max-age-1#2");

    // s-maxage wins over max-age.
    expect(&mut c, "/s-maxage-1", &[], "MISS", "/s-maxage-1#3");
    let r = poll_until_miss(&mut c, "/s-maxage-1", "/s-maxage-1#3");
    assert_eq!(r.text(), "/s-maxage-1#4");
}

/// RFC 9111 §4.2.1, §5.3: without `max-age`, `Expires` sets the lifetime
/// (before the route's ttl); one in the past, or invalid (`0`), means
/// already expired, so nothing is stored.
#[test]
fn expires_decides_freshness_without_max_age() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    expect(&mut c, "/expires-past", &[], "MISS", "/expires-past#1");
    expect(&mut c, "/expires-past", &[], "MISS", "/expires-past#2");
    expect(&mut c, "/expires-0", &[], "MISS", "/expires-0#3");
    expect(&mut c, "/expires-0", &[], "MISS", "/expires-0#4");
    expect(&mut c, "/expires-far", &[], "MISS", "/expires-far#5");
    expect(&mut c, "/expires-far", &[], "HIT", "/expires-far#5");
    assert_eq!(up.requests(), 5);
}

#[test]
fn route_ttl_applies_without_max_age_and_max_age_outlives_it() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "300ms", ""));
    let mut c = srv.client();

    expect(&mut c, "/plain", &[], "MISS", "/plain#1");
    expect(&mut c, "/max-age-600", &[], "MISS", "/max-age-600#2");
    let r = poll_until_miss(&mut c, "/plain", "/plain#1");
    assert_eq!(r.text(), "/plain#3");
    // The route ttl has passed; max-age=600 is still fresh.
    std::thread::sleep(Duration::from_millis(400));
    expect(&mut c, "/max-age-600", &[], "HIT", "/max-age-600#2");
}

#[test]
fn vary_keeps_one_entry_per_variant() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    let en = ["Accept-Language: en"];
    let fr = ["Accept-Language: fr"];
    let r = expect(&mut c, "/vary", &en, "MISS", "/vary#1 lang=en");
    assert!(r
        .header_all("vary")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("accept-language")));
    expect(&mut c, "/vary", &fr, "MISS", "/vary#2 lang=fr");
    expect(&mut c, "/vary", &en, "HIT", "/vary#1 lang=en");
    expect(&mut c, "/vary", &fr, "HIT", "/vary#2 lang=fr");
    expect(&mut c, "/vary", &[], "MISS", "/vary#3");
    expect(&mut c, "/vary", &[], "HIT", "/vary#3");
    assert_eq!(up.requests(), 3);

    // Vary: * is never stored.
    expect(&mut c, "/vary-star", &[], "MISS", "/vary-star#4");
    expect(&mut c, "/vary-star", &[], "MISS", "/vary-star#5");
}

#[test]
fn generated_etag_and_if_none_match() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    let miss = expect(&mut c, "/plain", &[], "MISS", "/plain#1");
    let hit = expect(&mut c, "/plain", &[], "HIT", "/plain#1");
    let etag = hit
        .header("etag")
        .unwrap_or_else(|| panic!("a cached response gets a generated ETag: {}", hit.summary()));
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() > 2,
        "a strong entity-tag (RFC 9110 §8.8.3): {etag:?}"
    );
    if let Some(e) = miss.header("etag") {
        assert_eq!(e, etag, "the MISS and the HIT carry the same ETag");
    }

    let inm = format!("If-None-Match: {etag}");
    let r = c.request(&get("/plain", &[inm.as_str()]));
    assert_eq!(r.status, 304, "{}", r.summary());
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));

    let r = c.request(&get("/plain", &["If-None-Match: \"something-else\""]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "/plain#1");
    assert_eq!(up.requests(), 1);

    // Another body, another tag.
    expect(&mut c, "/other", &[], "MISS", "/other#2");
    let other = expect(&mut c, "/other", &[], "HIT", "/other#2")
        .header("etag")
        .unwrap();
    assert_ne!(other, etag);
}

#[test]
fn upstream_etag_is_kept() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    let r = expect(&mut c, "/tagged", &[], "MISS", "/tagged#1");
    assert_eq!(r.header("etag").as_deref(), Some("\"v7\""));
    let r = expect(&mut c, "/tagged", &[], "HIT", "/tagged#1");
    assert_eq!(r.header("etag").as_deref(), Some("\"v7\""));
    let r = c.request(&get("/tagged", &["If-None-Match: \"x\", \"v7\""]));
    assert_eq!(r.status, 304, "{}", r.summary());
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag").as_deref(), Some("\"v7\""));
    assert_eq!(up.requests(), 1);
}

/// Polls until the cached `/s` is served STALE (bounded by GUARD); every
/// answer before must be the cached body as a HIT.
fn poll_until_stale(c: &mut Client) {
    let mut stale = false;
    let done = wait_until(GUARD, || {
        let r = c.request(&get("/s", &[]));
        assert_eq!(
            r.status,
            200,
            "an expired entry within stale_if_error is served: {}",
            r.summary()
        );
        assert_eq!(r.text(), "/s#1", "{}", r.summary());
        match x_cache(&r).as_str() {
            "STALE" => {
                stale = true;
                true
            }
            "HIT" => {
                std::thread::sleep(Duration::from_millis(20));
                false
            }
            other => panic!("expected HIT then STALE, got {other}: {}", r.summary()),
        }
    });
    assert!(done && stale, "never served STALE within {GUARD:?}");
}

#[test]
fn stale_if_error_serves_the_expired_entry_when_the_upstream_fails() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "300ms", ", stale_if_error = \"60s\""));
    let mut c = srv.client();
    expect(&mut c, "/s", &[], "MISS", "/s#1");
    up.set_behaviour(Behaviour::status(503));
    poll_until_stale(&mut c);
    assert!(
        up.requests() >= 2,
        "STALE only after the upstream was tried"
    );
}

#[test]
fn stale_if_error_covers_a_refused_connection() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "300ms", ", stale_if_error = \"60s\""));
    let mut c = srv.client();
    expect(&mut c, "/s", &[], "MISS", "/s#1");
    drop(up);
    poll_until_stale(&mut c);
}

#[test]
fn stale_if_error_window_ends() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "200ms", ", stale_if_error = \"300ms\""));
    let mut c = srv.client();
    expect(&mut c, "/s", &[], "MISS", "/s#1");
    up.set_behaviour(Behaviour::status(503));
    let mut passed_through = false;
    let done = wait_until(GUARD, || {
        let r = c.request(&get("/s", &[]));
        if r.status == 503 {
            // The upstream's own 503, or the gateway's once its circuit
            // breaker has opened on the failures: either way not stale.
            assert_ne!(r.header("x-cache").as_deref(), Some("STALE"));
            passed_through = true;
            return true;
        }
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), "/s#1");
        let xc = x_cache(&r);
        assert!(xc == "HIT" || xc == "STALE", "{}", r.summary());
        std::thread::sleep(Duration::from_millis(20));
        false
    });
    assert!(
        done && passed_through,
        "after stale_if_error the upstream's error must be passed on"
    );
}

#[test]
fn concurrent_misses_are_coalesced() {
    const CLIENTS: usize = 20;
    let up = Upstream::start(Behaviour::slow(
        Duration::from_millis(500),
        Reply::ok("slow answer"),
    ));
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let answers = concurrent_requests(srv.addr, CLIENTS, &get("/coalesce", &[]));
    for r in &answers {
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body, b"slow answer");
    }
    assert_eq!(
        up.requests(),
        1,
        "{CLIENTS} concurrent misses for one key make one upstream request"
    );
    let misses = answers.iter().filter(|r| x_cache(r) == "MISS").count();
    let hits = answers.iter().filter(|r| x_cache(r) == "HIT").count();
    assert_eq!((misses, hits), (1, CLIENTS - 1));
}

/// When the one request that concurrent misses wait on fails (here: no
/// answer within the route's timeout), the others answer with the same
/// failure instead of each repeating it against a failing upstream.
#[test]
fn a_failed_coalesced_request_is_not_repeated_by_its_waiters() {
    const CLIENTS: usize = 6;
    let up = Upstream::start(Behaviour::slow(
        Duration::from_millis(1500),
        Reply::ok("too late"),
    ));
    let srv = TestServer::start_toml(&cache_config_with(&up, "60s", "", "timeout = \"200ms\""));
    for r in concurrent_requests(srv.addr, CLIENTS, &get("/fails", &[])) {
        assert_eq!(r.status, 504, "{}", r.summary());
        assert!(r.text().contains("gateway-timeout"), "{}", r.summary());
    }
    assert_eq!(
        up.requests(),
        1,
        "{CLIENTS} coalesced misses whose leader timed out make one upstream request"
    );
}

#[test]
fn request_no_cache_bypasses() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    expect(&mut c, "/b", &[], "MISS", "/b#1");
    expect(&mut c, "/b", &["Cache-Control: no-cache"], "BYPASS", "/b#2");
    expect(&mut c, "/b", &["Cache-Control: no-store"], "BYPASS", "/b#3");
    assert_eq!(up.requests(), 3);
    let r = c.request(&get("/b", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(x_cache(&r), "HIT", "{}", r.summary());
    assert_eq!(up.requests(), 3);
}

#[test]
fn post_is_not_cached() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    for n in 1..=2 {
        let r = c.request(&post("/p", &[], b"data"));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), format!("/p#{n}"));
        assert_ne!(
            r.header("x-cache").as_deref(),
            Some("HIT"),
            "{}",
            r.summary()
        );
    }
    assert_eq!(up.requests(), 2);
    // A POST did not fill the GET entry.
    expect(&mut c, "/p", &[], "MISS", "/p#3");
}

/// Fresh hits are answered inline by the connection loop: pipelined behind
/// one another (and behind a miss) they come back complete and in order.
#[test]
fn pipelined_hits_and_misses_are_answered_in_order() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    expect(&mut c, "/p", &[], "MISS", "/p#1");
    let mut batch = Vec::new();
    for path in ["/p", "/q", "/p", "/q", "/p"] {
        batch.extend_from_slice(&get(path, &[]));
    }
    c.send(&batch);
    let want = [
        ("HIT", "/p#1"),
        ("MISS", "/q#2"),
        ("HIT", "/p#1"),
        ("HIT", "/q#2"),
        ("HIT", "/p#1"),
    ];
    for (i, (cache, body)) in want.iter().enumerate() {
        let r = c.response();
        assert_eq!(r.status, 200, "response {i}: {}", r.summary());
        assert_eq!(x_cache(&r), *cache, "response {i}: {}", r.summary());
        assert_eq!(r.text(), *body, "response {i}");
    }
    assert_eq!(up.requests(), 2);
}

/// A hit is written from fields encoded when the entry was stored, with
/// the policies' own fields in its head: each once, the request id new per
/// request (or the client's), also on a 304.
#[test]
fn hits_carry_the_policies_fields_once() {
    let up = cache_upstream();
    let srv = TestServer::start_toml(&cache_config(&up, "60s", ""));
    let mut c = srv.client();
    let miss = expect(&mut c, "/ids", &[], "MISS", "/ids#1");
    let hit = expect(&mut c, "/ids", &[], "HIT", "/ids#1");
    for r in [&miss, &hit] {
        assert_eq!(r.header_all("x-request-id").len(), 1, "{}", r.summary());
        assert_eq!(r.header_all("etag").len(), 1, "{}", r.summary());
        assert_eq!(r.header_all("date").len(), 1, "{}", r.summary());
    }
    assert_ne!(miss.header("x-request-id"), hit.header("x-request-id"));
    assert_eq!(hit.header_all("age").len(), 1, "{}", hit.summary());
    assert_eq!(miss.header("etag"), hit.header("etag"));

    let mine = expect(&mut c, "/ids", &["X-Request-Id: abc-123"], "HIT", "/ids#1");
    assert_eq!(mine.header("x-request-id").as_deref(), Some("abc-123"));

    let etag = hit.header("etag").unwrap_or_default();
    let inm = format!("If-None-Match: {etag}");
    let r = c.request(&get("/ids", &[&inm]));
    assert_eq!(r.status, 304, "{}", r.summary());
    assert_eq!(x_cache(&r), "HIT");
    assert_eq!(r.header_all("x-request-id").len(), 1, "{}", r.summary());
    assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
    assert!(r.body.is_empty());
    assert!(r.header("content-length").is_none(), "{}", r.summary());
    assert_eq!(up.requests(), 1);
}

/// A cached catch-all route behind API keys: `key-aaaa…` is acme with scope
/// `read`, `key-bbbb…` is beta with `beta_scope`. Returns the keys file (for
/// the caller to remove) and the server.
fn api_key_cache_server(
    up: &Upstream,
    tag: &str,
    beta_scope: &str,
    route_keys: &str,
) -> (std::path::PathBuf, TestServer) {
    let keys = std::env::temp_dir().join(format!("shardline-cache-{tag}-{}", std::process::id()));
    std::fs::write(
        &keys,
        format!("key-aaaaaaaaaaaaaaaaaaaa acme read\nkey-bbbbbbbbbbbbbbbbbbbb beta {beta_scope}\n"),
    )
    .unwrap();
    let config = format!(
        "[auth.partners]\ntype = \"api_key\"\nheader = \"x-api-key\"\nkeys_file = \"{}\"\n{}",
        keys.display(),
        cache_config_with(up, "60s", "", &format!("auth = \"partners\"\n{route_keys}"))
    );
    (keys, TestServer::start_toml(&config))
}

/// A route's policies run on every hit: a stored answer is no way around
/// authentication or scopes.
#[test]
fn hits_still_pass_the_routes_policies() {
    let up = cache_upstream();
    let (keys, srv) = api_key_cache_server(&up, "keys", "write", "scopes = [\"read\"]");
    let mut c = srv.client();
    let good = "X-Api-Key: key-aaaaaaaaaaaaaaaaaaaa";
    // `public`: the upstream says any consumer may get it.
    expect(&mut c, "/public", &[good], "MISS", "/public#1");
    expect(&mut c, "/public", &[good], "HIT", "/public#1");
    let r = c.request(&get("/public", &[]));
    assert_eq!(r.status, 401, "{}", r.summary());
    assert!(r.header("x-cache").is_none(), "{}", r.summary());
    assert!(r.header("www-authenticate").is_some(), "{}", r.summary());
    let r = c.request(&get("/public", &["X-Api-Key: key-bbbbbbbbbbbbbbbbbbbb"]));
    assert_eq!(r.status, 403, "{}", r.summary());
    assert_ne!(r.text(), "/public#1");
    expect(&mut c, "/public", &[good], "HIT", "/public#1");
    assert_eq!(up.requests(), 1);
    let _ = std::fs::remove_file(&keys);
}

/// On a route with `auth`, a response is one consumer's unless the
/// upstream says it may be shared: an API key must not fetch another
/// consumer's stored answer.
#[test]
fn responses_on_authenticated_routes_are_not_shared_between_consumers() {
    let up = cache_upstream();
    let (keys, srv) = api_key_cache_server(&up, "own", "read", "");
    let mut c = srv.client();
    let acme = "X-Api-Key: key-aaaaaaaaaaaaaaaaaaaa";
    let beta = "X-Api-Key: key-bbbbbbbbbbbbbbbbbbbb";
    // No Cache-Control, and a route `ttl`: still not stored.
    expect(&mut c, "/me", &[acme], "MISS", "/me#1");
    expect(&mut c, "/me", &[beta], "MISS", "/me#2");
    expect(&mut c, "/me", &[acme], "MISS", "/me#3");
    assert_eq!(up.requests(), 3);
    let _ = std::fs::remove_file(&keys);
}
