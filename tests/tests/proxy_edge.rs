//! Upstream misbehaviour beyond the issue's list: bodies where none may be,
//! endless interim responses, oversized or trickled heads, a 101 nobody
//! asked for, and a keep-alive connection the upstream closes while it sits
//! in the pool. In every case the client gets one well-formed answer and
//! its connection stays in step.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use shardline_tests::request::request;
use shardline_tests::upstream::{wait_until, Action, Behaviour, Gate, Reply, Step, Upstream};
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

/// A POST whose body (`len` bytes, over the replayable prefix so it is
/// streamed) is written from another thread until done or refused, while
/// this one reads the answer: an upstream that answers early must not
/// depend on the client finishing its upload first.
fn upload_reading_concurrently(srv: &TestServer, len: usize) -> shardline_tests::Response {
    let mut c = srv.client();
    c.send(
        format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len}\r\n\r\n")
            .as_bytes(),
    );
    let mut writer = c.stream().try_clone().unwrap();
    let uploader = std::thread::spawn(move || {
        use std::io::Write;
        let piece = vec![b'x'; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(piece.len());
            if writer.write_all(&piece[..n]).is_err() {
                break;
            }
            left -= n;
        }
    });
    let r = c.response();
    uploader.join().unwrap();
    r
}

fn upload_config(up: &Upstream) -> String {
    config(up, "request_timeout = \"5s\"").replace(
        "timeout = \"2s\"",
        "timeout = \"5s\"\nmax_body_bytes = \"64MiB\"",
    )
}

#[test]
fn an_upstream_that_refuses_an_upload_early_is_answered_with_its_refusal() {
    let refusal =
        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big!"
            .to_vec();
    // The upstream answers after reading only the head, then either closes
    // (with the body unread, so the gateway's writes fail) or holds the
    // connection without reading (so they would block until the timeout).
    for then in [Step::Close, Step::Hang] {
        let up = Upstream::start(Behaviour::always(Action::Unread(vec![
            Step::Write(refusal.clone()),
            then.clone(),
        ])));
        let srv = TestServer::start_toml(&upload_config(&up));
        let r = upload_reading_concurrently(&srv, 16 * 1024 * 1024);
        assert_eq!(r.status, 413, "{then:?}: {}", r.summary());
        assert_eq!(r.body, b"too big!", "{then:?}");
        // The rest of the client's body was never read: the connection ends
        // after this answer.
        assert!(r.closes(), "{then:?}: {}", r.summary());
    }
}

#[test]
fn an_interim_response_during_an_upload_does_not_stop_it() {
    let up = Upstream::start(Behaviour::always(Action::InterimThenSink(
        b"HTTP/1.1 100 Continue\r\n\r\n".to_vec(),
    )));
    let srv = TestServer::start_toml(&upload_config(&up));
    let len = 4 * 1024 * 1024;
    let r = upload_reading_concurrently(&srv, len);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.text(),
        len.to_string(),
        "the whole body reached the upstream"
    );
}

#[test]
fn a_transfer_coding_besides_chunked_is_a_502() {
    // We decode chunked and frame the body ourselves: passing on gzip-coded
    // bytes without their coding would corrupt the body.
    for raw in [
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let up = Upstream::start(Behaviour::raw(raw));
        let srv = TestServer::start_toml(&config(&up, ""));
        assert_problem(&srv.client().request(&get("/x", &[])), 502, "bad-gateway");
    }
}

#[test]
fn a_malformed_chunk_found_before_anything_was_sent_is_a_502() {
    let up = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    ));
    let srv = TestServer::start_toml(&config(&up, ""));
    let mut c = srv.client();
    // Twice on one connection: the first 502 left it in step.
    for _ in 0..2 {
        assert_problem(&c.request(&get("/x", &[])), 502, "bad-gateway");
    }
}

#[test]
fn a_204_that_declares_a_body_does_not_go_back_to_the_pool() {
    // It may yet send the 4 bytes it declared, into the next response.
    let up = Upstream::start(Behaviour::raw(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 4\r\n\r\n",
    ));
    let srv = TestServer::start_toml(&config(&up, ""));
    let mut c = srv.client();
    for _ in 0..2 {
        let r = c.request(&get("/x", &[]));
        assert_eq!(r.status, 204, "{}", r.summary());
    }
    assert_eq!(up.connections(), 2, "the 204's connection was reused");
}

/// An answer whose head comes at once and whose 40-byte body trickles in
/// a byte per 200 ms: every read makes progress, the whole takes 8 s.
fn trickled_body(extra_head: &str) -> Behaviour {
    let mut steps = vec![Step::Write(
        format!("HTTP/1.1 200 OK\r\nContent-Length: 40\r\n{extra_head}\r\n").into_bytes(),
    )];
    for _ in 0..40 {
        steps.push(Step::Sleep(Duration::from_millis(200)));
        steps.push(Step::Write(b"x".to_vec()));
    }
    Behaviour::always(Action::Steps(steps))
}

#[test]
fn a_body_trickled_past_the_route_timeout_is_cut() {
    let up = Upstream::start(trickled_body(""));
    let srv =
        TestServer::start_toml(&config(&up, "").replace("timeout = \"2s\"", "timeout = \"500ms\""));
    let mut c = srv.client();
    c.send(&get("/x", &[]));
    let got = c.read_to_eof().unwrap_or_default();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = &got[shardline_tests::client::find(&got, b"\r\n\r\n").unwrap() + 4..];
    assert!(
        body.len() < 40,
        "the body outlived the route's timeout: {text}"
    );
}

#[test]
fn a_cached_route_answers_504_when_the_body_outlives_the_timeout() {
    // Nothing is sent before a cacheable body is whole, so a slow one can
    // still get a clean 504.
    let up = Upstream::start(trickled_body("Cache-Control: max-age=60\r\n"));
    let srv = TestServer::start_toml(&config(&up, "").replace(
        "timeout = \"2s\"",
        "timeout = \"500ms\"\ncache = { ttl = \"60s\" }",
    ));
    assert_problem(
        &srv.client().request(&get("/x", &[])),
        504,
        "gateway-timeout",
    );
}

#[test]
fn fields_named_in_connection_are_dropped_on_cached_routes_too() {
    for framing in [
        "Content-Length: 2\r\n\r\nok",
        "Transfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ] {
        let raw = format!(
            "HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: s3cret\r\n\
             Cache-Control: max-age=60\r\n{framing}"
        );
        let up = Upstream::start(Behaviour::raw(raw.as_bytes()));
        let srv = TestServer::start_toml(&config(&up, "").replace(
            "timeout = \"2s\"",
            "timeout = \"2s\"\ncache = { ttl = \"60s\" }",
        ));
        let mut c = srv.client();
        for expect in ["MISS", "HIT"] {
            let r = c.request(&get("/same", &[]));
            assert_eq!(r.status, 200, "{}", r.summary());
            assert_eq!(
                r.header("x-cache").as_deref(),
                Some(expect),
                "{}",
                r.summary()
            );
            assert!(
                !r.has_header("x-secret"),
                "{framing:?} {expect}: {}",
                r.summary()
            );
        }
    }
}

#[test]
fn route_parameters_cannot_climb_out_of_a_rewrite_or_add_query_parameters() {
    let up = Upstream::start(Behaviour::ok("fine"));
    let srv = TestServer::start_toml(&format!(
        r#"
[[upstreams]]
name = "u"
targets = ["{}"]

[[routes]]
name = "files"
method = "GET"
path = "/files/{{*rest}}"
upstream = "u"
rewrite = "/public/{{rest}}"

[[routes]]
name = "user"
method = "GET"
path = "/users/{{id}}"
aggregate = [ {{ name = "search", upstream = "u", path = "/public/search?user={{id}}" }} ]
"#,
        up.target()
    ));
    // Dot-segments are refused before routing (the upstream would resolve
    // /public/../admin to /admin); a refused head closes its connection.
    for path in [
        "/files/../admin",
        "/files/a/../../admin",
        "/files/%2e%2e/admin",
        "/users/..",
    ] {
        assert_problem(&srv.client().request(&get(path, &[])), 400, "dot-segment");
    }
    assert_eq!(up.requests(), 0);
    let mut c = srv.client();
    // A parameter placed in a query stays one value.
    let r = c.request(&get("/users/1&role=admin", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(up.last().query(), Some("user=1%26role%3Dadmin"));
}

#[test]
fn idle_pooled_connections_close_after_idle_timeout_without_traffic() {
    let up = Upstream::start(Behaviour::ok("fine"));
    let srv = TestServer::start_toml(&config(&up, "idle_timeout = \"1s\""));
    assert_eq!(srv.client().request(&get("/x", &[])).status, 200);
    assert_eq!(up.open_connections(), 1, "pooled after the answer");
    // No request comes to take it: the shard's sweep closes it.
    assert!(
        wait_until(GUARD, || up.open_connections() == 0),
        "an idle pooled connection outlived idle_timeout"
    );
}

/// Connections opened beyond `pool_size_per_shard` (more requests in
/// flight than the pool holds) are kept briefly for reuse, then closed
/// down to the pool's size, without traffic.
#[test]
fn connections_beyond_the_pool_size_are_reused_then_closed_down_to_it() {
    const IN_FLIGHT: usize = 4;
    let gate = Gate::new();
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Wait(gate.clone()),
        Step::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()),
    ])));
    let srv = TestServer::start_toml(&config(
        &up,
        "pool_size_per_shard = 1\nidle_timeout = \"30s\"",
    ));
    let mut clients: Vec<_> = (0..IN_FLIGHT).map(|_| srv.client()).collect();
    for c in &mut clients {
        c.send(&get("/x", &[]));
    }
    // All four are at the upstream at once, each on its own connection.
    assert!(
        wait_until(GUARD, || up.requests() == IN_FLIGHT),
        "the requests did not all reach the upstream"
    );
    assert_eq!(up.open_connections(), IN_FLIGHT);
    gate.open();
    for c in &mut clients {
        assert_eq!(c.response().status, 200);
    }
    // Sequential requests after the burst reuse what is pooled.
    let accepted = up.connections();
    for _ in 0..IN_FLIGHT {
        assert_eq!(srv.client().request(&get("/x", &[])).status, 200);
    }
    assert_eq!(up.connections(), accepted, "pooled connections are reused");
    // Without traffic the surplus closes, down to the pool's size.
    assert!(
        up.wait_open_connections_at_most(1),
        "{} upstream connections stayed open past the pool size",
        up.open_connections()
    );
    assert_eq!(up.open_connections(), 1, "the pool's own connection stays");
}

#[test]
fn a_health_check_whose_body_stalls_fails() {
    // The head alone says 200; the body never comes. Healthy means the
    // whole answer within the check's timeout.
    let up = Upstream::start(Behaviour::always(Action::Steps(vec![
        Step::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab".to_vec()),
        Step::Hang,
    ])));
    let srv = TestServer::start_toml(
        &config(
            &up,
            "health_check = { path = \"/h\", interval = \"100ms\", timeout = \"200ms\", unhealthy = 1, healthy = 1 }",
        )
        .replace("timeout = \"2s\"", "timeout = \"300ms\""),
    );
    // Until the check has run, a request may still go there and be cut.
    assert!(
        wait_until(GUARD, || {
            let mut c = srv.client();
            c.send(&get("/x", &[]));
            matches!(c.read_response(false), Ok(r) if r.status == 503)
        }),
        "the target stayed healthy"
    );
}
