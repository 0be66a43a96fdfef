//! Idempotency keys (issue 5): replay with `Idempotent-Replayed: true`,
//! 409 while in flight, 422 for the same key with another body, exactly
//! one upstream call for concurrent duplicates, across connections and
//! shards.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::{Arc, Barrier};

use common::assert_problem;
use shardline_tests::server::config_from_toml;
use shardline_tests::upstream::{Action, Behaviour, Gate, Reply, Step, Upstream};
use shardline_tests::{post, Client, TestServer, GUARD};

fn config(target: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{target}"]

[[routes]]
name = "orders"
method = "POST"
path = "/orders"
upstream = "u"
idempotency = {{ ttl = "1h" }}

[[routes]]
name = "echo"
method = "POST"
path = "/echo"
handler = "echo"
idempotency = {{ ttl = "1h" }}
"#
    )
}

fn start(target: &str, shards: usize) -> TestServer {
    let mut cfg = config_from_toml(&config(target));
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = None;
    cfg.server.shards = shards;
    TestServer::from_builder(shardline::Server::new(cfg))
}

/// An upstream that numbers its answers, so a replay is recognisable.
fn counting() -> Upstream {
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    Upstream::start(Behaviour::script(move |_| {
        let i = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        Action::Reply(Reply::new(201).body(format!("order {i}").as_bytes()))
    }))
}

#[test]
fn a_repeat_is_replayed_and_a_changed_body_refused() {
    let up = counting();
    let s = start(&up.target(), 1);
    let mut c = s.client();
    let r = c.request(&post("/orders", &["Idempotency-Key: k-1"], b"{\"n\":1}"));
    assert_eq!(r.status, 201, "{}", r.summary());
    assert_eq!(r.text(), "order 1");
    assert!(!r.has_header("idempotent-replayed"));
    // Same key, same request, another connection: replayed.
    let mut c2 = s.client();
    let r = c2.request(&post("/orders", &["Idempotency-Key: k-1"], b"{\"n\":1}"));
    assert_eq!(r.status, 201, "{}", r.summary());
    assert_eq!(r.text(), "order 1");
    assert_eq!(r.header("idempotent-replayed").unwrap(), "true");
    // The connection goes on after a replay.
    let r = c2.request(&post("/orders", &["Idempotency-Key: k-1"], b"{\"n\":1}"));
    assert_eq!(r.text(), "order 1");
    // Same key, other body: 422.
    let r = c.request(&post("/orders", &["Idempotency-Key: k-1"], b"{\"n\":2}"));
    let ty = assert_problem(&r, 422);
    assert!(ty.ends_with("/idempotency-key-reused"), "{ty}");
    // Another key, or none, runs again.
    let r = c.request(&post("/orders", &["Idempotency-Key: k-2"], b"{\"n\":1}"));
    assert_eq!(r.text(), "order 2");
    let r = c.request(&post("/orders", &[], b"{\"n\":1}"));
    assert_eq!(r.text(), "order 3");
    assert_eq!(up.requests(), 3);
}

#[test]
fn in_flight_repeat_is_409() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(Behaviour::script(move |_| {
        Action::Steps(vec![
            Step::Wait(g.clone()),
            Step::Write(Reply::new(200).body(b"done").encode(false)),
        ])
    }));
    let s = start(&up.target(), 1);
    let addr = s.addr;
    let first = std::thread::spawn(move || {
        let mut c = Client::connect(addr);
        c.request(&post("/orders", &["Idempotency-Key: slow"], b"x"))
    });
    // Wait until the first request reached the upstream.
    let deadline = std::time::Instant::now() + GUARD;
    while up.requests() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "first request never arrived"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let mut c = s.client();
    let r = c.request(&post("/orders", &["Idempotency-Key: slow"], b"x"));
    let ty = assert_problem(&r, 409);
    assert!(ty.ends_with("/idempotency-key-in-use"), "{ty}");
    gate.open();
    let r = first.join().unwrap();
    assert_eq!(r.status, 200);
    let r = c.request(&post("/orders", &["Idempotency-Key: slow"], b"x"));
    assert_eq!(r.text(), "done");
    assert_eq!(r.header("idempotent-replayed").unwrap(), "true");
    assert_eq!(up.requests(), 1);
}

/// Concurrent duplicates on many connections over two shards: exactly one
/// upstream call; every answer is that call's response (replayed) or 409.
#[test]
fn concurrent_duplicates_across_shards_make_one_upstream_call() {
    let up = counting();
    let s = start(&up.target(), 2);
    const N: usize = 12;
    let barrier = Arc::new(Barrier::new(N));
    let mut threads = Vec::new();
    for _ in 0..N {
        let addr = s.addr;
        let b = barrier.clone();
        threads.push(std::thread::spawn(move || {
            let mut c = Client::connect(addr);
            b.wait();
            c.request(&post("/orders", &["Idempotency-Key: dup"], b"same"))
        }));
    }
    let mut ok = 0;
    for t in threads {
        let r = t.join().unwrap();
        match r.status {
            201 => {
                assert_eq!(r.text(), "order 1");
                ok += 1;
            }
            409 => {}
            other => panic!("unexpected {other}: {}", r.summary()),
        }
    }
    assert!(ok >= 1);
    assert_eq!(up.requests(), 1);
    // Retries afterwards, on fresh connections (either shard), replay it.
    for _ in 0..8 {
        let mut c = s.client();
        let r = c.request(&post("/orders", &["Idempotency-Key: dup"], b"same"));
        assert_eq!(r.status, 201, "{}", r.summary());
        assert_eq!(r.text(), "order 1");
        assert_eq!(r.header("idempotent-replayed").unwrap(), "true");
    }
    assert_eq!(up.requests(), 1);
}

#[test]
fn local_handler_routes_replay_too() {
    let up = counting();
    let s = start(&up.target(), 1);
    let mut c = s.client();
    let r = c.request(&post(
        "/echo",
        &["Idempotency-Key: e", "Content-Type: text/plain"],
        b"hi",
    ));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "hi");
    let r = c.request(&post(
        "/echo",
        &["Idempotency-Key: e", "Content-Type: text/plain"],
        b"hi",
    ));
    assert_eq!(r.text(), "hi");
    assert_eq!(r.header("idempotent-replayed").unwrap(), "true");
    let r = c.request(&post(
        "/echo",
        &["Idempotency-Key: e", "Content-Type: text/plain"],
        b"ho",
    ));
    assert_problem(&r, 422);
}
