//! Observability and operations (issue 6): `/metrics` after known traffic,
//! parsed strictly; access log lines; SLO numbers from known error rates;
//! hot reload (also under load); drain with a request in flight; spans
//! received by a collector stand-in.
//!
//! Where a value is recorded after the response reaches the client (the
//! streaming path records when its action ends), tests poll with a bounded
//! loop instead of sleeping.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use shardline_tests::metrics::{self, Exposition};
use shardline_tests::server::config_from_toml;
use shardline_tests::upstream::{wait_until, Action, Behaviour, Gate, Reply, Step, Upstream};
use shardline_tests::{get, post, Client, TestServer, GUARD};

/// A config with the admin listener on and `shards` shards, on port 0.
fn start(toml: &str, shards: usize) -> TestServer {
    let mut cfg = config_from_toml(toml);
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.server.shards = shards;
    TestServer::from_builder(shardline::Server::new(cfg))
}

fn admin_get(srv: &TestServer, path: &str, extra: &[&str]) -> shardline_tests::Response {
    let mut c = Client::connect(srv.admin.unwrap());
    c.request(&get(path, extra))
}

fn scrape(srv: &TestServer) -> Exposition {
    let r = admin_get(srv, "/metrics", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    metrics::parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Polls `f` until it returns true (bounded by GUARD).
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < GUARD, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

const ROUTES: &str = r#"
[[routes]]
name = "plaintext"
method = "GET"
path = "/plaintext"
respond = { status = 200, body = "Hello, World!", content_type = "text/plain" }

[[routes]]
name = "broken"
method = "GET"
path = "/broken"
respond = { status = 500, body = "no" }

[[routes]]
name = "echo"
method = "POST"
path = "/echo"
handler = "echo"
"#;

#[test]
fn metrics_count_known_traffic_on_every_shard() {
    let srv = start(ROUTES, 2);
    // Many connections, so both shards' listeners get some.
    for i in 0..20 {
        let mut c = srv.client();
        assert_eq!(c.request(&get("/plaintext", &[])).status, 200, "{i}");
        if i % 4 == 0 {
            assert_eq!(c.request(&get("/nowhere", &[])).status, 404);
        }
        if i % 5 == 0 {
            assert_eq!(c.request(&get("/broken", &[])).status, 500);
        }
    }
    let mut c = srv.client();
    assert_eq!(c.request(&post("/echo", &[], b"hello")).status, 200);
    // A framing error counts by kind.
    let mut bad = srv.client();
    bad.send(
        b"GET /plaintext HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    );
    assert_eq!(bad.response().status, 400);

    let m = scrape(&srv);
    let req = "shardline_http_requests_total";
    assert_eq!(
        m.value(req, &[("route", "plaintext"), ("class", "2xx")]),
        20.0
    );
    assert_eq!(
        m.value(req, &[("route", "plaintext"), ("class", "5xx")]),
        0.0
    );
    assert_eq!(m.value(req, &[("route", "broken"), ("class", "5xx")]), 4.0);
    // Five 404s and the framing error's 400, which the protocol layer
    // answered before any route.
    assert_eq!(
        m.value(req, &[("route", "_unmatched"), ("class", "4xx")]),
        6.0
    );
    assert_eq!(m.value(req, &[("route", "echo"), ("class", "2xx")]), 1.0);
    let h = "shardline_http_request_duration_seconds";
    assert_eq!(
        m.value(&format!("{h}_count"), &[("route", "plaintext")]),
        20.0
    );
    assert_eq!(
        m.value(
            &format!("{h}_bucket"),
            &[("route", "plaintext"), ("le", "+Inf")]
        ),
        20.0
    );
    // Every in-memory answer is well under 30 s.
    assert_eq!(
        m.value(
            &format!("{h}_bucket"),
            &[("route", "plaintext"), ("le", "30.0")]
        ),
        20.0
    );
    // Both shards answered the scrape, and between them accepted every
    // connection.
    let accepted = m.find("shardline_connections_accepted_total", &[]);
    let shards: Vec<&str> = accepted
        .iter()
        .map(|s| s.labels["shard"].as_str())
        .collect();
    assert_eq!(shards, ["0", "1"]);
    assert!(m.sum("shardline_connections_accepted_total", &[]) >= 22.0);
    assert_eq!(
        m.sum(
            "shardline_parse_errors_total",
            &[("kind", "content_length_duplicate")]
        ),
        1.0,
        "{:?}",
        m.find("shardline_parse_errors_total", &[])
    );
    assert!(m.sum("shardline_received_bytes_total", &[]) > 0.0);
    assert!(m.sum("shardline_sent_bytes_total", &[]) > 0.0);
    assert_eq!(
        m.find("shardline_timeouts_total", &[("shard", "1")]).len(),
        3
    );
}

#[test]
fn openmetrics_when_the_scraper_asks_for_it() {
    let srv = start(ROUTES, 1);
    srv.client().request(&get("/plaintext", &[]));
    let r = admin_get(
        &srv,
        "/metrics",
        &["Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"],
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = r.text();
    let m = metrics::parse(&text, true).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(
        m.types.get("shardline_http_requests").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        m.value(
            "shardline_http_requests_total",
            &[("route", "plaintext"), ("class", "2xx")]
        ),
        1.0
    );
    // HEAD and other methods.
    let mut c = Client::connect(srv.admin.unwrap());
    let r = c.request(&shardline_tests::request::request(
        "POST",
        "/metrics",
        &[],
        Some(b""),
    ));
    assert_eq!(r.status, 405);
}

/// Upstream `u` at `up` and a cached route `name` on `GET /c/{*rest}`.
fn cached_route_config(up: &Upstream, name: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "{name}"
method = "GET"
path = "/c/{{*rest}}"
upstream = "u"
cache = {{ ttl = "60s" }}
"#,
        up.addr
    )
}

/// Concurrent misses coalesced onto one upstream request count once each:
/// one miss (the request that went upstream) and a hit per waiter it
/// answered, not a miss and then a hit for every waiter.
#[test]
fn coalesced_misses_count_one_miss_and_a_hit_per_waiter() {
    const CLIENTS: usize = 8;
    let up = Upstream::start(Behaviour::slow(
        Duration::from_millis(400),
        Reply::ok("slow").header("Cache-Control", "max-age=60"),
    ));
    let srv = start(&cached_route_config(&up, "c"), 1);
    for r in shardline_tests::concurrent_requests(srv.addr, CLIENTS, &get("/c/one", &[])) {
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(up.requests(), 1, "the misses were coalesced");
    let m = scrape(&srv);
    assert_eq!(
        m.value("shardline_cache_misses_total", &[("route", "c")]),
        1.0
    );
    assert_eq!(
        m.value("shardline_cache_hits_total", &[("route", "c")]),
        (CLIENTS - 1) as f64
    );
}

#[test]
fn upstream_and_cache_metrics() {
    let up = Upstream::start(Behaviour::reply(
        Reply::ok("hi").header("Cache-Control", "max-age=60"),
    ));
    let srv = start(&cached_route_config(&up, "cached"), 1);
    let mut c = srv.client();
    for _ in 0..3 {
        assert_eq!(c.request(&get("/c/x", &[])).status, 200);
    }
    let target = up.addr.to_string();
    let labels = [("upstream", "u"), ("target", target.as_str())];
    eventually("three requests recorded", || {
        scrape(&srv).value(
            "shardline_http_requests_total",
            &[("route", "cached"), ("class", "2xx")],
        ) == 3.0
    });
    let m = scrape(&srv);
    assert_eq!(m.value("shardline_upstream_requests_total", &labels), 1.0);
    assert_eq!(m.value("shardline_upstream_failures_total", &labels), 0.0);
    assert_eq!(
        m.value("shardline_upstream_request_duration_seconds_count", &labels),
        1.0
    );
    assert_eq!(
        m.value("shardline_upstream_connections_opened_total", &labels),
        1.0
    );
    assert_eq!(
        m.value(
            "shardline_upstream_breaker_state",
            &[("upstream", "u"), ("shard", "0")]
        ),
        0.0
    );
    assert_eq!(
        m.value("shardline_cache_hits_total", &[("route", "cached")]),
        2.0
    );
    assert_eq!(
        m.value("shardline_cache_misses_total", &[("route", "cached")]),
        1.0
    );
    assert_eq!(
        m.value("shardline_cache_entries", &[("route", "cached")]),
        1.0
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "shardline-obs-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// One shard with an access log in a scratch directory, upstream `u` at
/// `up`, and one route (`route`: the lines of its table). Returns the
/// directory (for the caller to remove), the log's path and the server.
fn logged_gateway(tag: &str, up: &Upstream, route: &str) -> (PathBuf, PathBuf, TestServer) {
    let dir = temp_dir(tag);
    let log = dir.join("access.jsonl");
    let srv = start(
        &format!(
            "[observability]\naccess_log = \"{}\"\n\n[[upstreams]]\nname = \"u\"\n\
             targets = [\"{}\"]\n\n[[routes]]\n{route}\n",
            log.display(),
            up.addr
        ),
        1,
    );
    (dir, log, srv)
}

fn json_lines(path: &PathBuf) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn access_log_lines_sampling_and_reopen() {
    let dir = temp_dir("access");
    let log = dir.join("access.jsonl");
    let srv = start(
        &format!(
            r#"
[observability]
access_log = "{}"

[[routes]]
name = "plaintext"
method = "GET"
path = "/plaintext"
respond = {{ status = 200, body = "Hello, World!" }}

[[routes]]
name = "quiet"
method = "GET"
path = "/quiet"
respond = {{ status = 200, body = "shh" }}
access_log_sample = 0.0

[[routes]]
name = "quiet-but-failing"
method = "GET"
path = "/fail"
respond = {{ status = 503, body = "down" }}
access_log_sample = 0.0
"#,
            log.display()
        ),
        1,
    );
    let mut c = srv.client();
    let r = c.request(&get(
        "/plaintext?api_key=SECRET123",
        &[
            "X-Request-Id: req-42",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ],
    ));
    assert_eq!(r.status, 200);
    for _ in 0..5 {
        c.request(&get("/quiet", &[]));
    }
    assert_eq!(c.request(&get("/fail", &[])).status, 503);
    eventually("two lines written", || json_lines(&log).len() == 2);

    // Rotation: move the file away, ask for a reopen, the next line goes
    // to a new file at the configured path.
    let rotated = dir.join("access.jsonl.1");
    std::fs::rename(&log, &rotated).unwrap();
    srv.control().reopen_logs();
    eventually("log reopened", || log.exists());
    c.request(&get("/plaintext", &[]));
    drop(c);
    srv.stop();

    let lines = json_lines(&rotated);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let l = &lines[0];
    assert_eq!(l["request_id"], "req-42");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["route"], "plaintext");
    assert_eq!(l["path"], "/plaintext");
    assert_eq!(l["status"], 200);
    assert_eq!(l["shard"], 0);
    assert!(l["bytes_in"].as_u64().unwrap() > 0);
    assert!(l["bytes_out"].as_u64().unwrap() > 13);
    assert!(l["duration_ms"].as_f64().unwrap() >= 0.0);
    assert!(l["time"].as_str().unwrap().ends_with('Z'));
    assert!(l["upstream"].is_null() && l["cache"].is_null());
    // No trace id without tracing configured; none of the query either.
    let all = std::fs::read_to_string(&rotated).unwrap();
    assert!(!all.contains("SECRET123"), "{all}");
    // Sampling 0 drops the quiet route, but 5xx are always logged.
    assert_eq!(lines[1]["route"], "quiet-but-failing");
    assert_eq!(lines[1]["status"], 503);
    let after = json_lines(&log);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["path"], "/plaintext");
    // Generated request ids are unique hex.
    assert_eq!(after[0]["request_id"].as_str().unwrap().len(), 32);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn access_log_notes_upstream_and_cache() {
    let up = Upstream::start(Behaviour::reply(
        Reply::ok("hi").header("Cache-Control", "max-age=60"),
    ));
    let (dir, log, srv) = logged_gateway(
        "access-up",
        &up,
        "name = \"cached\"\nmethod = \"GET\"\npath = \"/c\"\nupstream = \"u\"\ncache = { ttl = \"60s\" }",
    );
    let mut c = srv.client();
    c.request(&get("/c", &[]));
    c.request(&get("/c", &[]));
    drop(c);
    srv.stop();
    let lines = json_lines(&log);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["cache"], "MISS");
    assert_eq!(lines[0]["upstream"], up.addr.to_string());
    assert_eq!(lines[1]["cache"], "HIT");
    assert_eq!(lines[1]["route"], "cached");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn slo_numbers_from_a_known_error_rate() {
    let srv = start(
        &format!(
            r#"{ROUTES}
[[slos]]
name = "api"
routes = ["plaintext", "broken"]
objective = 0.9
window = "30d"

[[slos]]
name = "fast"
routes = ["plaintext"]
objective = 0.99
latency_threshold = "1h"
"#
        ),
        2,
    );
    // 80 good, 20 bad: error rate 20%, budget rate 10% -> burn 2.
    for i in 0..100 {
        let mut c = srv.client();
        let path = if i % 5 == 0 { "/broken" } else { "/plaintext" };
        c.request(&get(path, &[]));
    }
    // Not counted: no route, and not in the SLO.
    srv.client().request(&get("/nowhere", &[]));
    let r = admin_get(&srv, "/admin/slo", &[]);
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_str(&r.text()).unwrap();
    let api = &v["slos"][0];
    assert_eq!(api["name"], "api");
    assert_eq!(api["good"], 80);
    assert_eq!(api["total"], 100);
    for w in ["5m", "30m", "1h", "2h", "6h", "1d", "3d"] {
        let b = api["burn_rates"][w].as_f64().unwrap();
        assert!((b - 2.0).abs() < 1e-9, "{w}: {b}");
    }
    let budget = api["error_budget_remaining"].as_f64().unwrap();
    assert!((budget + 1.0).abs() < 1e-9, "{budget}");
    // Burn 2 trips the 3d/6h ticket (threshold 1), not the 14.4 page.
    let alerts = api["alerts"].as_array().unwrap();
    assert_eq!(alerts[0]["firing"], false);
    assert_eq!(alerts[3]["firing"], true);
    let fast = &v["slos"][1];
    assert_eq!(fast["total"], 80);
    assert_eq!(fast["burn_rates"]["5m"].as_f64().unwrap(), 0.0);
    assert_eq!(fast["error_budget_remaining"].as_f64().unwrap(), 1.0);

    let m = scrape(&srv);
    let burn = m.value(
        "shardline_slo_burn_rate",
        &[("slo", "api"), ("window", "1h")],
    );
    assert!((burn - 2.0).abs() < 1e-9, "{burn}");
    assert_eq!(
        m.value("shardline_slo_events_total", &[("slo", "api")]),
        100.0
    );
    assert_eq!(
        m.value("shardline_slo_good_events_total", &[("slo", "api")]),
        80.0
    );
    let rem = m.value("shardline_slo_error_budget_remaining", &[("slo", "api")]);
    assert!((rem + 1.0).abs() < 1e-9);
}

fn write(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn reload_config(body: &str, extra: &str) -> String {
    format!(
        r#"
[[routes]]
name = "a"
method = "GET"
path = "/a"
respond = {{ status = 200, body = "{body}" }}
{extra}
"#
    )
}

fn start_file(path: &PathBuf, shards: usize) -> TestServer {
    let mut cfg = config_from_toml(&std::fs::read_to_string(path).unwrap());
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.server.shards = shards;
    let overrides = shardline::config::ServerOverrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        shards: Some(shards),
        ..Default::default()
    };
    TestServer::from_builder(shardline::Server::new(cfg).config_file(path, overrides))
}

fn post_reload(srv: &TestServer) -> shardline_tests::Response {
    let mut c = Client::connect(srv.admin.unwrap());
    c.request(&post("/admin/reload", &[], b""))
}

#[test]
fn reload_swaps_routes_keeps_connections_and_counters() {
    let dir = temp_dir("reload");
    let file = dir.join("shardline.toml");
    write(&file, &reload_config("A", ""));
    let srv = start_file(&file, 2);
    let mut kept = srv.client();
    assert_eq!(kept.request(&get("/a", &[])).text(), "A");

    write(
        &file,
        &reload_config(
            "B",
            r#"
[[routes]]
name = "b"
method = "GET"
path = "/b"
respond = { status = 201, body = "new" }
"#,
        ),
    );
    let r = post_reload(&srv);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("generation 2"), "{}", r.text());
    assert!(r.text().contains("on 2 shards"), "{}", r.text());
    // The same connection sees the new routes.
    assert_eq!(kept.request(&get("/a", &[])).text(), "B");
    assert_eq!(kept.request(&get("/b", &[])).status, 201);
    // Every shard switched (new connections may land on either).
    for _ in 0..10 {
        assert_eq!(srv.client().request(&get("/a", &[])).text(), "B");
    }

    // A bad file is refused and the running config stays.
    write(&file, "[[routes]]\nname = \"a\"\npath = \"/a\"\n");
    let r = post_reload(&srv);
    assert_eq!(r.status, 422);
    assert!(r.text().contains("no action"), "{}", r.text());
    assert_eq!(kept.request(&get("/a", &[])).text(), "B");

    // Counters carried over the reload: 1 + 1 + 10 + 1 on route a.
    let m = scrape(&srv);
    assert_eq!(
        m.value(
            "shardline_http_requests_total",
            &[("route", "a"), ("class", "2xx")]
        ),
        13.0
    );
    assert_eq!(
        m.value("shardline_config_reloads_total", &[("result", "ok")]),
        1.0
    );
    assert_eq!(
        m.value("shardline_config_reloads_total", &[("result", "error")]),
        1.0
    );
    assert_eq!(
        m.value("shardline_config_generation", &[("shard", "1")]),
        2.0
    );

    // SIGHUP's path: the control handle.
    write(&file, &reload_config("C", ""));
    srv.control().reload();
    eventually("SIGHUP reload applied", || {
        srv.client().request(&get("/a", &[])).text() == "C"
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_under_load_fails_no_request() {
    let dir = temp_dir("reload-load");
    let file = dir.join("shardline.toml");
    write(&file, &reload_config("v0", ""));
    let srv = start_file(&file, 2);
    let addr = srv.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, done) = (Arc::clone(&stop), Arc::clone(&done));
        workers.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = c.request(&get("/a", &[]));
                assert_eq!(r.status, 200, "{}", r.text());
                assert!(r.text().starts_with('v'), "{}", r.text());
                n += 1;
                // A fresh connection now and then too.
                if n % 50 == 0 {
                    c = Client::connect(addr);
                }
            }
            done.fetch_add(n, Ordering::Relaxed);
        }));
    }
    for gen in 1..=5 {
        write(&file, &reload_config(&format!("v{gen}"), ""));
        let r = post_reload(&srv);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a request failed during reload");
    }
    assert!(done.load(Ordering::Relaxed) > 0);
    assert_eq!(srv.client().request(&get("/a", &[])).text(), "v5");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_lets_a_streaming_request_finish_on_its_generation() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(Behaviour::script(move |_| {
        Action::Steps(vec![
            Step::Wait(g.clone()),
            Step::Write(Reply::ok("slow").encode(false)),
        ])
    }));
    let dir = temp_dir("reload-stream");
    let file = dir.join("shardline.toml");
    let cfg = |extra: &str| {
        format!(
            "[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"p\"\npath = \"/p\"\nupstream = \"u\"\n{extra}",
            up.addr
        )
    };
    write(&file, &cfg(""));
    let srv = start_file(&file, 1);
    let mut c = srv.client();
    c.send(&get("/p", &[]));
    eventually("request reached the upstream", || up.requests() == 1);
    write(
        &file,
        &cfg(
            "\n[[routes]]\nname = \"q\"\npath = \"/q\"\nrespond = { status = 200, body = \"q\" }\n",
        ),
    );
    assert_eq!(post_reload(&srv).status, 200);
    gate.open();
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    assert_eq!(c.request(&get("/q", &[])).text(), "q");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn reload_without_a_file_says_so() {
    let srv = start(ROUTES, 1);
    let r = post_reload(&srv);
    assert_eq!(r.status, 422);
    assert!(r.text().contains("without --config"), "{}", r.text());
}

#[test]
fn drain_finishes_in_flight_requests_and_readyz_turns_first() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(Behaviour::script(move |_| {
        Action::Steps(vec![
            Step::Wait(g.clone()),
            Step::Write(Reply::ok("done").encode(false)),
        ])
    }));
    let srv = start(
        &format!(
            "[server]\ndrain_timeout = \"30s\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"p\"\npath = \"/p\"\nupstream = \"u\"\n",
            up.addr
        ),
        1,
    );
    let admin = srv.admin.unwrap();
    let mut c = srv.client();
    c.send(&get("/p", &[]));
    eventually("request in flight", || up.requests() == 1);
    srv.shutdown();
    // Unready first, while the request is still in flight.
    eventually("/readyz says 503", || {
        Client::connect(admin).request(&get("/readyz", &[])).status == 503
    });
    // New connections are no longer accepted on the traffic port.
    eventually("listener closed", || {
        std::net::TcpStream::connect(srv.addr).is_err()
    });
    gate.open();
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "done");
    assert!(
        r.closes(),
        "the drain's last response closes the connection"
    );
}

#[test]
fn drain_deadline_cuts_off_what_does_not_finish() {
    let up = Upstream::start(Behaviour::hang());
    let srv = start(
        &format!(
            "[server]\ndrain_timeout = \"200ms\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\nrequest_timeout = \"60s\"\n\n[[routes]]\nname = \"p\"\npath = \"/p\"\nupstream = \"u\"\n",
            up.addr
        ),
        1,
    );
    let mut c = srv.client();
    c.send(&get("/p", &[]));
    eventually("request in flight", || up.requests() == 1);
    let t0 = Instant::now();
    srv.stop();
    // Stopped by the 200 ms deadline, far sooner than the upstream's 60 s.
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    drop(c);
}

/// A stand-in OTLP/HTTP collector: accepts POSTs, answers 200, hands each
/// body to the test.
fn collector() -> (SocketAddr, mpsc::Receiver<(String, String)>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            s.set_read_timeout(Some(GUARD)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            if r.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let _ =
                s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}");
            if tx
                .send((path, String::from_utf8_lossy(&body).into_owned()))
                .is_err()
            {
                return;
            }
        }
    });
    (addr, rx)
}

#[test]
fn spans_reach_the_collector_with_w3c_context() {
    let (col, spans) = collector();
    let up = Upstream::start(Behaviour::ok("from upstream"));
    let dir = temp_dir("spans");
    let log = dir.join("access.jsonl");
    let srv = start(
        &format!(
            r#"
[observability]
access_log = "{}"
otlp_endpoint = "http://{col}/v1/traces"
trace_sample_ratio = 0.0
service_name = "obs-test"

[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "p"
path = "/p"
upstream = "u"

[[routes]]
name = "plaintext"
method = "GET"
path = "/plaintext"
respond = {{ status = 200, body = "hi" }}
"#,
            log.display(),
            up.addr
        ),
        1,
    );
    let tp = "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut c = srv.client();
    // Ratio 0: only requests whose caller sampled them are traced.
    assert_eq!(c.request(&get("/plaintext", &[])).status, 200);
    assert_eq!(c.request(&get("/plaintext", &[tp])).status, 200);
    assert_eq!(c.request(&get("/p", &[tp])).status, 200);
    // The upstream got our context: same trace, a new parent span.
    let sent = up.log()[0]
        .header("traceparent")
        .map(str::to_string)
        .unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(!sent.contains("00f067aa0ba902b7"), "{sent}");
    assert!(sent.ends_with("-01"));

    let mut all: Vec<serde_json::Value> = Vec::new();
    let deadline = Instant::now() + GUARD;
    while all.len() < 3 && Instant::now() < deadline {
        if let Ok((path, body)) = spans.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(path, "/v1/traces");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let rs = &v["resourceSpans"][0];
            assert_eq!(
                rs["resource"]["attributes"][0]["value"]["stringValue"],
                "obs-test"
            );
            for s in rs["scopeSpans"][0]["spans"].as_array().unwrap() {
                all.push(s.clone());
            }
        }
    }
    assert_eq!(all.len(), 3, "{all:#?}");
    for s in &all {
        assert_eq!(s["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
    }
    let servers: Vec<&serde_json::Value> = all.iter().filter(|s| s["kind"] == 2).collect();
    let clients: Vec<&serde_json::Value> = all.iter().filter(|s| s["kind"] == 3).collect();
    assert_eq!((servers.len(), clients.len()), (2, 1), "{all:#?}");
    for s in &servers {
        assert_eq!(s["parentSpanId"], "00f067aa0ba902b7");
    }
    // The client span is a child of /p's server span, and is the parent
    // the upstream was told about.
    let p_server = servers.iter().find(|s| s["name"] == "GET p").unwrap();
    assert_eq!(clients[0]["parentSpanId"], p_server["spanId"]);
    assert!(
        sent.contains(clients[0]["spanId"].as_str().unwrap()),
        "{sent}"
    );

    // The access log carries the trace id (a new one when none came in).
    drop(c);
    srv.stop();
    let lines = json_lines(&log);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let fresh = lines[0]["trace_id"].as_str().unwrap();
    assert_eq!(fresh.len(), 32);
    assert_ne!(fresh, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines[1]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(lines[2]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn admin_endpoints_list_and_probes_still_work() {
    let srv = start(ROUTES, 1);
    assert_eq!(admin_get(&srv, "/healthz", &[]).status, 200);
    assert_eq!(admin_get(&srv, "/readyz", &[]).status, 200);
    let r = admin_get(&srv, "/nope", &[]);
    assert_eq!(r.status, 404);
    assert!(r.text().contains("/metrics"));
}

#[test]
fn reload_keeps_an_unchanged_route_cache_and_upstream_counters() {
    let up = Upstream::start(Behaviour::reply(
        Reply::ok("hi").header("Cache-Control", "max-age=60"),
    ));
    let dir = temp_dir("reload-cache");
    let file = dir.join("shardline.toml");
    let cfg = |extra: &str| {
        format!(
            "[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"c\"\nmethod = \"GET\"\npath = \"/c\"\nupstream = \"u\"\ncache = {{ ttl = \"60s\" }}\n{extra}",
            up.addr
        )
    };
    write(&file, &cfg(""));
    let srv = start_file(&file, 1);
    let mut c = srv.client();
    assert_eq!(
        c.request(&get("/c", &[])).header("x-cache").as_deref(),
        Some("MISS")
    );
    write(
        &file,
        &cfg(
            "\n[[routes]]\nname = \"q\"\npath = \"/q\"\nrespond = { status = 200, body = \"q\" }\n",
        ),
    );
    assert_eq!(post_reload(&srv).status, 200);
    assert_eq!(
        c.request(&get("/c", &[])).header("x-cache").as_deref(),
        Some("HIT")
    );
    assert_eq!(up.requests(), 1);
    let target = up.addr.to_string();
    let m = scrape(&srv);
    assert_eq!(
        m.value(
            "shardline_upstream_requests_total",
            &[("upstream", "u"), ("target", target.as_str())]
        ),
        1.0
    );
    assert_eq!(
        m.value("shardline_cache_hits_total", &[("route", "c")]),
        1.0
    );
    assert_eq!(
        m.value("shardline_cache_misses_total", &[("route", "c")]),
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Requests a policy refuses are counted by route and reason.
#[test]
fn policy_rejections_are_counted_by_reason() {
    let srv = start(
        r#"
[[routes]]
name = "limited"
method = "GET"
path = "/limited"
respond = { status = 200, body = "ok" }
rate_limit = { per_minute = 1, burst = 1, key = "route" }
"#,
        1,
    );
    let mut c = srv.client();
    assert_eq!(c.request(&get("/limited", &[])).status, 200);
    for _ in 0..3 {
        assert_eq!(c.request(&get("/limited", &[])).status, 429);
    }
    let m = scrape(&srv);
    assert_eq!(
        m.value(
            "shardline_policy_rejections_total",
            &[("route", "limited"), ("reason", "rate-limited")]
        ),
        3.0
    );
}

/// A request id the server generates (request ids are on by default for
/// upstream routes and any route with a policy) is the one the access log
/// records, on the streaming and on the inline path.
#[test]
fn access_log_records_the_generated_request_id() {
    let dir = temp_dir("access-rid");
    let log = dir.join("access.jsonl");
    let up = Upstream::start(Behaviour::reply(Reply::ok("hi")));
    let srv = start(
        &format!(
            r#"
[observability]
access_log = "{}"

[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "proxied"
method = "GET"
path = "/p"
upstream = "u"

[[routes]]
name = "limited"
method = "GET"
path = "/l"
respond = {{ status = 200, body = "ok" }}
rate_limit = {{ per_minute = 100, burst = 100, key = "route" }}
"#,
            log.display(),
            up.addr
        ),
        1,
    );
    let mut c = srv.client();
    let ids: Vec<String> = ["/p", "/l"]
        .iter()
        .map(|p| {
            let r = c.request(&get(p, &[]));
            assert_eq!(r.status, 200, "{}", r.summary());
            r.header("x-request-id").expect("a generated X-Request-Id")
        })
        .collect();
    // A client's id the policies keep is the id the log names.
    let r = c.request(&get("/l", &["X-Request-Id: order-7@checkout"]));
    assert_eq!(
        r.header("x-request-id").as_deref(),
        Some("order-7@checkout")
    );
    drop(c);
    srv.stop();
    let lines = json_lines(&log);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["request_id"], ids[0].as_str());
    assert_eq!(lines[1]["request_id"], ids[1].as_str());
    assert_eq!(lines[2]["request_id"], "order-7@checkout");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_client_that_abandons_its_upload_is_a_499_not_a_server_error() {
    // Nothing was answered (nobody to answer): counted and logged as a
    // client event, so it cannot burn an availability SLO.
    let up = Upstream::start(Behaviour::sink());
    let (dir, log, srv) = logged_gateway(
        "abandoned",
        &up,
        "name = \"upload\"\nmethod = \"POST\"\npath = \"/upload\"\nupstream = \"u\"",
    );
    let mut c = srv.client();
    c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
    c.send(&vec![b'x'; 70_000]);
    drop(c);
    let mut lines = Vec::new();
    for _ in 0..200 {
        let m = scrape(&srv);
        let count = |class: &str| -> f64 {
            m.find(
                "shardline_http_requests_total",
                &[("route", "upload"), ("class", class)],
            )
            .iter()
            .map(|s| s.value)
            .sum()
        };
        if count("4xx") == 1.0 {
            assert_eq!(count("5xx"), 0.0);
            srv.stop();
            lines = json_lines(&log);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 499);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn readyz_answers_503_while_any_shard_still_drains() {
    // The admin listener lives on shard 0; a request still finishing on
    // shard 1 must not take `/readyz` down with shard 0's own drain.
    let gate = Gate::new();
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab".to_vec()),
        Step::Wait(gate.clone()),
        Step::Write(b"cd".to_vec()),
    ])));
    let srv = start(
        &format!(
            "[server]\ndrain_timeout = \"10s\"\n\n[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\n\n\
             [[routes]]\nname = \"slow\"\npath = \"/slow\"\nupstream = \"u\"\n\n\
             [[routes]]\nname = \"quick\"\npath = \"/quick\"\nrespond = {{ status = 200, body = \"q\" }}\n",
            up.addr
        ),
        2,
    );
    let accepted_on_1 = || -> f64 {
        scrape(&srv)
            .find("shardline_connections_accepted_total", &[("shard", "1")])
            .iter()
            .map(|s| s.value)
            .sum()
    };
    // A connection on shard 1 (the kernel spreads them by hash): a quick
    // request on each new one, and shard 1's accept counter tells.
    let mut kept = None;
    for _ in 0..64 {
        let before = accepted_on_1();
        let mut c = srv.client();
        assert_eq!(c.request(&get("/quick", &[])).status, 200);
        if accepted_on_1() > before {
            kept = Some(c);
            break;
        }
    }
    let Some(mut c) = kept else {
        panic!("no connection reached shard 1 in 64 tries");
    };
    // The one stream in flight, on shard 1; shard 0 has none of its own.
    c.send(&get("/slow", &[]));
    assert!(wait_until(GUARD, || up.requests() >= 1));
    srv.shutdown();
    // The drain starts within a poll of the shutdown flag...
    assert!(wait_until(GUARD, || admin_get(&srv, "/readyz", &[]).status == 503));
    // ...and `/readyz` keeps answering while shard 1 finishes.
    for _ in 0..5 {
        let r = admin_get(&srv, "/readyz", &[]);
        assert_eq!(r.status, 503, "{}", r.summary());
        std::thread::sleep(Duration::from_millis(100));
    }
    gate.open();
    let r = c.response();
    assert_eq!(r.body, b"abcd", "{}", r.summary());
    srv.stop();
}

#[test]
fn answers_from_the_protocol_layer_are_counted_and_logged() {
    // A 505 or a 413 written before any route ran is still an answer: an
    // SRE counting 5xx must see it.
    let dir = temp_dir("refused");
    let log = dir.join("access.jsonl");
    let srv = start(
        &format!(
            "[server]\nmax_body_bytes = \"1KiB\"\n\n[observability]\naccess_log = \"{}\"\n\n\
             [[routes]]\nname = \"echo\"\nmethod = \"POST\"\npath = \"/echo\"\nhandler = \"echo\"\n",
            log.display()
        ),
        1,
    );
    for (raw, status) in [
        (&b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"[..], 505),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n",
            413,
        ),
    ] {
        let mut c = srv.client();
        c.send(raw);
        assert_eq!(c.read_final(false).unwrap().1.status, status);
    }
    let m = scrape(&srv);
    let class = |c: &str| -> f64 {
        m.find(
            "shardline_http_requests_total",
            &[("route", "_unmatched"), ("class", c)],
        )
        .iter()
        .map(|s| s.value)
        .sum()
    };
    assert_eq!(class("5xx"), 1.0);
    assert_eq!(class("4xx"), 1.0);
    srv.stop();
    let lines = json_lines(&log);
    let statuses: Vec<i64> = lines.iter().filter_map(|l| l["status"].as_i64()).collect();
    assert_eq!(statuses, [505, 413], "{lines:?}");
    assert_eq!(lines[1]["method"], "POST");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pipelined_scrapes_get_one_answer_per_connection() {
    // A client queueing scrapes without reading them must not make shard 0
    // render and hold one exposition per queued request.
    let srv = start(ROUTES, 1);
    let mut c = Client::connect(srv.admin.unwrap());
    let one = get("/metrics", &[]);
    c.send(&[one.clone(), one.clone(), one].concat());
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.closes(), "{}", r.summary());
    c.expect_closed("after the first of pipelined scrapes");
    // A single scrape keeps its connection.
    let mut c = Client::connect(srv.admin.unwrap());
    let r = c.request(&get("/metrics", &[]));
    assert!(!r.closes(), "{}", r.summary());
}
