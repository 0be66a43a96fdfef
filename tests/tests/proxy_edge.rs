//! Upstream misbehaviour beyond the issue's list: bodies where none may be,
//! endless interim responses, oversized or trickled heads, a 101 nobody
//! asked for, and a keep-alive connection the upstream closes while it sits
//! in the pool. In every case the client gets one well-formed answer and
//! its connection stays in step.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shardline_tests::request::request;
use shardline_tests::upstream::{wait_until, Action, Behaviour, Reply, Step, Upstream};
use shardline_tests::{get, post, TestServer, GUARD};

fn config(up: &Upstream, extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]
{extra}

[[routes]]
name = "p"
path = "/{{*rest}}"
upstream = "u"
timeout = "2s"
"#,
        up.target()
    )
}

fn assert_problem(r: &shardline_tests::Response, status: u16, slug: &str) {
    assert_eq!(r.status, status, "{}", r.summary());
    assert_eq!(r.media_type().as_deref(), Some("application/problem+json"));
    assert!(
        r.text()
            .contains(&format!("https://shardline.dev/problems/{slug}")),
        "{}",
        r.summary()
    );
}

#[test]
fn body_bytes_after_a_head_or_204_response_are_not_forwarded_and_the_connection_is_dropped() {
    for (method, raw) in [
        (
            "HEAD",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"[..],
        ),
        ("GET", &b"HTTP/1.1 204 No Content\r\n\r\nsurprise"[..]),
    ] {
        let up = Upstream::start(Behaviour::raw(raw));
        let srv = TestServer::start_toml(&config(&up, ""));
        let mut c = srv.client();
        let r = c.request(&request(method, "/x", &[], None));
        assert!(r.body.is_empty(), "{method}: {}", r.summary());
        if method == "HEAD" {
            assert_eq!(r.header("content-length").as_deref(), Some("5"));
        }
        // The client connection is in step: the stray bytes did not leak
        // into it. The upstream connection that carried them is not reused.
        let r = c.request(&request(method, "/y", &[], None));
        assert!(r.body.is_empty(), "{method}: {}", r.summary());
        assert_eq!(up.connections(), 2, "{method}: tainted connection reused");
    }
}

#[test]
fn endless_interim_responses_are_a_502() {
    let mut raw = Vec::new();
    for _ in 0..20 {
        raw.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
    }
    raw.extend_from_slice(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let up = Upstream::start(Behaviour::raw(&raw));
    let srv = TestServer::start_toml(&config(&up, ""));
    let mut c = srv.client();
    assert_problem(&c.request(&get("/x", &[])), 502, "bad-gateway");
    // A couple of interim responses are fine.
    let up = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
          HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ));
    let srv = TestServer::start_toml(&config(&up, ""));
    let r = srv.client().request(&get("/x", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body, b"ok");
}

#[test]
fn an_unrequested_101_is_a_502() {
    let up = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ));
    let srv = TestServer::start_toml(&config(&up, ""));
    assert_problem(&srv.client().request(&get("/x", &[])), 502, "bad-gateway");
}

#[test]
fn an_oversized_response_head_is_a_502() {
    let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..400 {
        raw.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "v".repeat(60)).as_bytes());
    }
    raw.extend_from_slice(b"Content-Length: 2\r\n\r\nok");
    let up = Upstream::start(Behaviour::raw(&raw));
    let srv = TestServer::start_toml(&config(&up, ""));
    assert_problem(&srv.client().request(&get("/x", &[])), 502, "bad-gateway");
}

#[test]
fn a_head_trickled_past_the_timeout_is_a_504() {
    let mut steps = Vec::new();
    for b in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" {
        steps.push(Step::Write(vec![*b]));
        steps.push(Step::Sleep(Duration::from_millis(100)));
    }
    let up = Upstream::start(Behaviour::always(Action::Steps(steps)));
    let srv =
        TestServer::start_toml(&config(&up, "").replace("timeout = \"2s\"", "timeout = \"500ms\""));
    let mut c = srv.client();
    assert_problem(&c.request(&get("/x", &[])), 504, "gateway-timeout");
    // Nothing was sent to the client before the 504, so it stays usable.
    assert!(!c.saw_close());
}

#[test]
fn a_negative_or_non_numeric_content_length_is_a_502() {
    for cl in ["-1", "1e3", "0x10", "5, 5"] {
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {cl}\r\n\r\nhello");
        let up = Upstream::start(Behaviour::raw(raw.as_bytes()));
        let srv = TestServer::start_toml(&config(&up, ""));
        assert_problem(&srv.client().request(&get("/x", &[])), 502, "bad-gateway");
    }
}

#[test]
fn a_pooled_connection_the_upstream_closed_is_not_used_even_for_a_post() {
    // Every answer is followed by the upstream closing the connection
    // without saying so (no Connection: close): the gateway pools it, and
    // must notice it died before writing the next request into it.
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(Reply::ok("done").encode(false)),
        Step::Sleep(Duration::from_millis(20)),
        Step::Close,
    ])));
    let srv = TestServer::start_toml(&config(&up, ""));
    let mut c = srv.client();
    for i in 0..5 {
        let r = c.request(&post("/x", &[], b"payload"));
        assert_eq!(r.status, 200, "POST {i}: {}", r.summary());
        assert_eq!(r.body, b"done");
        assert!(
            wait_until(GUARD, || up.open_connections() == 0),
            "the upstream closes its side"
        );
    }
    assert_eq!(up.requests(), 5, "each POST reached the upstream once");
}
