//! Rate limits and quotas (issue 5): 429 with Retry-After and the IETF
//! RateLimit fields, the global bound across 2 shards, quotas that survive
//! a restart.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::assert_problem;
use shardline_tests::server::config_from_toml;
use shardline_tests::{get, Client, TestServer};

fn start_shards(toml: &str, shards: usize) -> TestServer {
    let mut cfg = config_from_toml(toml);
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = None;
    cfg.server.shards = shards;
    TestServer::from_builder(shardline::Server::new(cfg))
}

#[test]
fn rate_limit_answers_429_with_retry_after_and_ratelimit_fields() {
    let s = TestServer::start_toml(
        r#"
[[routes]]
name = "limited"
method = "GET"
path = "/limited"
rate_limit = { per_minute = 2, burst = 2, key = "ip" }
respond = { status = 200, body = "ok" }
"#,
    );
    let mut c = s.client();
    for left in [1, 0] {
        let r = c.request(&get("/limited", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(
            r.header("ratelimit-policy").unwrap(),
            "\"limited\";q=2;w=60"
        );
        assert!(
            r.header("ratelimit")
                .unwrap()
                .starts_with(&format!("\"limited\";r={left};t=")),
            "{}",
            r.summary()
        );
    }
    let r = c.request(&get("/limited", &[]));
    let ty = assert_problem(&r, 429);
    assert!(ty.ends_with("/rate-limited"), "{ty}");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    // One token comes back every 30 s.
    assert!((1..=30).contains(&retry), "Retry-After {retry}");
    assert_eq!(
        r.header("ratelimit-policy").unwrap(),
        "\"limited\";q=2;w=60"
    );
    assert!(r
        .header("ratelimit")
        .unwrap()
        .starts_with("\"limited\";r=0;t="));
    // A route without a limit is not affected.
    let r = c.request(&get("/plaintext", &[]));
    assert_eq!(r.status, 404);
}

#[test]
fn keys_are_counted_separately() {
    let s = TestServer::start_toml(
        r#"
[[routes]]
name = "limited"
method = "GET"
path = "/limited"
rate_limit = { per_minute = 1, burst = 1, key = "header:x-client" }
respond = { status = 200, body = "ok" }
"#,
    );
    let mut c = s.client();
    assert_eq!(c.request(&get("/limited", &["X-Client: a"])).status, 200);
    assert_eq!(c.request(&get("/limited", &["X-Client: a"])).status, 429);
    assert_eq!(c.request(&get("/limited", &["X-Client: b"])).status, 200);
    assert_eq!(c.request(&get("/limited", &["X-Client: b"])).status, 429);
}

/// The configured rate is the limit for the whole server: two shards, many
/// connections with uneven load, admitted requests over the window stay
/// within rate × T × 1.05 + burst.
#[test]
fn global_rate_limit_holds_across_two_shards() {
    const RATE: f64 = 40.0;
    const BURST: f64 = 10.0;
    const WINDOW: Duration = Duration::from_secs(3);
    let s = start_shards(
        r#"
[[routes]]
name = "limited"
method = "GET"
path = "/limited"
rate_limit = { per_second = 40, burst = 10, key = "header:x-client" }
respond = { status = 200, body = "ok" }
"#,
        2,
    );
    let admitted = Arc::new(AtomicUsize::new(0));
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut threads = Vec::new();
    // 8 connections, half of them hammering, half sending now and then:
    // the kernel spreads them over both shards unevenly.
    for i in 0..8 {
        let addr = s.addr;
        let (admitted, refused, stop) = (admitted.clone(), refused.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            let pause = if i % 2 == 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(7 * i)
            };
            while !stop.load(Ordering::Relaxed) {
                let r = c.request(&get("/limited", &["X-Client: one"]));
                match r.status {
                    200 => admitted.fetch_add(1, Ordering::Relaxed),
                    429 => refused.fetch_add(1, Ordering::Relaxed),
                    other => panic!("unexpected {other}"),
                };
                if !pause.is_zero() {
                    std::thread::sleep(pause);
                }
            }
        }));
    }
    std::thread::sleep(WINDOW);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ok = admitted.load(Ordering::Relaxed) as f64;
    let bound = RATE * elapsed * 1.05 + BURST;
    assert!(
        ok <= bound,
        "admitted {ok} > bound {bound:.1} over {elapsed:.2}s (refused {})",
        refused.load(Ordering::Relaxed)
    );
    // It is a limit, not a wall: at least the burst got through.
    assert!(ok >= BURST, "admitted only {ok}");
    assert!(refused.load(Ordering::Relaxed) > 0, "nothing was refused");
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn quota_config(dir: &str) -> String {
    format!(
        r#"
[server]
data_dir = "{dir}"

[[routes]]
name = "metered"
method = "GET"
path = "/metered"
quota = {{ per_day = 3, key = "header:x-client" }}
respond = {{ status = 200, body = "ok" }}
"#
    )
}

fn scratch(tag: &str) -> Scratch {
    Scratch(std::env::temp_dir().join(format!(
        "shardline-quota-{tag}-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    )))
}

#[test]
fn quota_survives_restart() {
    let dir = scratch("one");
    let text = quota_config(&dir.0.to_string_lossy());
    let s = start_shards(&text, 1);
    let mut c = s.client();
    for _ in 0..3 {
        let r = c.request(&get("/metered", &["X-Client: q"]));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    let r = c.request(&get("/metered", &["X-Client: q"]));
    let ty = assert_problem(&r, 429);
    assert!(ty.ends_with("/quota-exhausted"), "{ty}");
    assert!(r.header("retry-after").unwrap().parse::<u64>().unwrap() >= 1);
    // Another key has its own quota.
    assert_eq!(
        c.request(&get("/metered", &["X-Client: other"])).status,
        200
    );
    drop(c);
    s.stop();
    let s = start_shards(&text, 1);
    let mut c = s.client();
    assert_problem(&c.request(&get("/metered", &["X-Client: q"])), 429);
    // "other" used one of three before the restart.
    assert_eq!(
        c.request(&get("/metered", &["X-Client: other"])).status,
        200
    );
    assert_eq!(
        c.request(&get("/metered", &["X-Client: other"])).status,
        200
    );
    assert_problem(&c.request(&get("/metered", &["X-Client: other"])), 429);
}

/// With two shards, quota requests on the non-owner shard wait for a
/// lease from the owner: the count is exact whichever shard each new
/// connection lands on, and survives a restart.
#[test]
fn quota_survives_restart_two_shards() {
    let dir = scratch("two");
    let text = quota_config(&dir.0.to_string_lossy());
    let s = start_shards(&text, 2);
    // New connections land on either shard (SO_REUSEPORT).
    let statuses = |s: &TestServer, client: &str, n: usize| -> Vec<u16> {
        (0..n)
            .map(|_| {
                let mut c = s.client();
                c.request(&get("/metered", &[&format!("X-Client: {client}")]))
                    .status
            })
            .collect()
    };
    assert_eq!(statuses(&s, "q", 6), [200, 200, 200, 429, 429, 429]);
    assert_eq!(statuses(&s, "other", 1), [200]);
    s.stop();
    let s = start_shards(&text, 2);
    assert_eq!(statuses(&s, "q", 4), [429, 429, 429, 429]);
    assert_eq!(statuses(&s, "other", 3), [200, 200, 429]);
}

#[test]
fn limit_config_errors_name_the_key() {
    let e = shardline::Config::from_toml_str(
        "[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\nrate_limit = { per_second = 5 }\n",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("rate_limit.key"), "{e}");
    let e = shardline::Config::from_toml_str(
        "[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\nrate_limit = { per_second = 5, per_minute = 1, key = \"ip\" }\n",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("rate_limit"), "{e}");
    let e = shardline::Config::from_toml_str(
        "[[routes]]\nname=\"a\"\npath=\"/a\"\nhandler=\"echo\"\nquota = { per_week = 5, key = \"ip\" }\n",
    )
    .unwrap_err()
    .0;
    assert!(e.contains("quota"), "{e}");
}
