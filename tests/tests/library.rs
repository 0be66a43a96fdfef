//! The library API: configured routes (templates, `respond`, `handler`),
//! custom Rust handlers with shard-local state, and a graceful shutdown of
//! an in-process server.
#![allow(clippy::unwrap_used)]

use std::cell::Cell;
use std::rc::Rc;

use shardline_tests::server::{config_from_toml, test_config};
use shardline_tests::{get, post, TestServer};

const ROUTES: &str = r#"
[[routes]]
name = "user"
method = "GET"
path = "/v1/users/{id}"
handler = "user"

[[routes]]
name = "static"
methods = ["GET", "POST"]
path = "/static/{*rest}"
respond = { status = 201, body = "static", content_type = "text/plain", headers = { x-demo = "1" } }

[[routes]]
name = "echo"
method = "POST"
path = "/echo"
handler = "echo"
"#;

fn start() -> TestServer {
    let cfg = test_config(config_from_toml(ROUTES));
    let server = shardline::Server::new(cfg).handler("user", |_shard| {
        // Shard-local state: no lock, no atomic.
        let count = Rc::new(Cell::new(0u64));
        move |req: &shardline::Request<'_>, res: &mut shardline::Response<'_, '_>| {
            count.set(count.get() + 1);
            let body = format!(
                "user {} #{} q={}",
                req.param("id").unwrap_or("?"),
                count.get(),
                req.query().unwrap_or("")
            );
            res.send(200, "text/plain", body.as_bytes());
        }
    });
    TestServer::from_builder(server)
}

#[test]
fn custom_handler_gets_params_and_keeps_shard_local_state() {
    let srv = start();
    let mut c = srv.client();
    let r = c.request(&get("/v1/users/42?x=1", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "user 42 #1 q=x=1");
    let r = c.request(&get("/v1/users/abc", &[]));
    assert_eq!(r.text(), "user abc #2 q=");
    // The template matches one segment only.
    let r = c.request(&get("/v1/users/1/2", &[]));
    assert_eq!(r.status, 404, "{}", r.summary());
}

#[test]
fn respond_route_with_catch_all_and_headers() {
    let srv = start();
    let mut c = srv.client();
    for path in ["/static/a", "/static/a/b/c.css"] {
        let r = c.request(&get(path, &[]));
        assert_eq!(r.status, 201, "{path}: {}", r.summary());
        assert_eq!(r.body, b"static");
        assert_eq!(r.header("x-demo").as_deref(), Some("1"));
        assert_eq!(r.media_type().as_deref(), Some("text/plain"));
    }
    let r = c.request(&post("/static/x", &[], b"ignored"));
    assert_eq!(r.status, 201, "{}", r.summary());
    // Methods not listed: 405 with Allow.
    let r = c.request(&shardline_tests::request::request(
        "PUT",
        "/static/x",
        &[],
        None,
    ));
    assert_eq!(r.status, 405, "{}", r.summary());
    assert!(r.has_header("allow"), "{}", r.summary());
}

#[test]
fn configured_routes_replace_the_defaults() {
    let srv = start();
    let mut c = srv.client();
    let r = c.request(&get("/plaintext", &[]));
    assert_eq!(
        r.status,
        404,
        "default routes must not be added: {}",
        r.summary()
    );
    let r = c.request(&post("/echo", &["Content-Type: a/b"], b"xyz"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"xyz");
}

/// Spec: "When a config file has `[[routes]]`, those are the routes (the
/// default four are not added)": a file that only tunes `[server]` keeps the
/// default routes.
#[test]
fn config_file_without_routes_keeps_the_default_routes() {
    let srv = TestServer::start_toml("[server]\nmax_body_bytes = \"2KiB\"\n");
    let mut c = srv.client();
    let r = c.request(&get("/plaintext", &[]));
    assert_eq!(
        r.status,
        200,
        "a config file without [[routes]] must keep the default routes: {}",
        r.summary()
    );
    assert_eq!(r.body, b"Hello, World!");
    let r = c.request(&post("/echo", &[], &[b'e'; 2048]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[test]
fn shutdown_lets_the_server_join_cleanly() {
    let srv = TestServer::start_default();
    let mut c = srv.client();
    assert_eq!(c.request(&get("/healthz", &[])).status, 200);
    drop(c);
    srv.stop();
}

#[test]
fn two_shards_share_one_port() {
    let mut cfg = test_config(shardline::Config::default());
    cfg.server.shards = 2;
    let srv = TestServer::from_builder(shardline::Server::new(cfg));
    // Many connections: all of them are served, whichever shard gets them.
    for i in 0..20 {
        let mut c = srv.client();
        let r = c.request(&get("/plaintext", &[]));
        assert_eq!(r.status, 200, "connection {i}: {}", r.summary());
    }
}
