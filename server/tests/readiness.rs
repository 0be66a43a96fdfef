//! `readiness`: how connections wait for readable sockets. Both modes must
//! serve the same traffic (requests split across writes, pipelined
//! batches, a connection woken after going idle, proxied requests whose
//! upstream reads wait too), and a bad value is refused like any other
//! config error. That an idle server sleeps (in either mode) is
//! `binary.rs`'s `an_idle_server_sleeps`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{get, run_expecting_exit, start, temp_file, Conn, Proc};

const MODES: [&str; 3] = ["epoll", "epoll-wait", "io_uring"];

/// The binary on a loopback port with no admin listener, `shards` shards
/// and `extra` flags.
fn start_loopback(shards: &str, extra: &[&str]) -> (Proc, common::Ready) {
    let mut a = vec![
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--shards",
        shards,
    ];
    a.extend_from_slice(extra);
    start(&a)
}

fn stop(mut p: Proc) {
    p.signal("TERM");
    let st = p.wait_exit();
    assert_eq!(st.code(), Some(0), "stderr: {}", p.stderr_text());
}

/// A request whose bytes arrive in three writes: the server must wait for
/// each piece, and be woken by the next.
fn split_request(c: &mut Conn) {
    let req = get("/plaintext");
    for piece in [&req[..5], &req[5..20], &req[20..]] {
        c.send(piece);
        // No timing is asserted: the pause only makes the server find the
        // socket empty between pieces, which is the path under test.
        std::thread::sleep(Duration::from_millis(30));
    }
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Hello, World!");
}

#[test]
fn each_mode_serves_split_pipelined_and_idle_then_woken_requests() {
    for mode in MODES {
        let (p, ready) = start_loopback("2", &["--readiness", mode]);
        let mut c = Conn::open(ready.listen);
        split_request(&mut c);

        // Sixteen pipelined requests in one write: all answered, in order.
        let mut batch = Vec::new();
        for _ in 0..16 {
            batch.extend_from_slice(&get("/json"));
        }
        c.send(&batch);
        for i in 0..16 {
            let r = c.response();
            assert_eq!(r.status, 200, "{mode}: pipelined request {i}");
            assert_eq!(r.body, br#"{"message":"Hello, World!"}"#);
        }

        // Idle long enough for the shard to go to sleep, then wake it.
        std::thread::sleep(Duration::from_millis(300));
        let r = c.request(&get("/plaintext"));
        assert_eq!(r.status, 200, "{mode}: request after idling");

        // Many connections at once, each with one request in flight.
        let mut conns: Vec<Conn> = (0..32).map(|_| Conn::open(ready.listen)).collect();
        for c in &mut conns {
            c.send(&get("/plaintext"));
        }
        for (i, c) in conns.iter_mut().enumerate() {
            assert_eq!(c.response().status, 200, "{mode}: connection {i}");
        }

        // A peer that closes is noticed (EOF wakes the waiting read).
        let mut gone = Conn::open(ready.listen);
        assert_eq!(gone.request(&get("/plaintext")).status, 200);
        gone.s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(
            gone.closed(),
            "{mode}: the server closes after the client's FIN"
        );
        stop(p);
    }
}

#[test]
fn each_mode_proxies_through_upstream_connections() {
    // The upstream is another shardline serving the default routes.
    let (up, up_ready) = start_loopback("1", &[]);
    for mode in MODES {
        let cfg = temp_file(
            &format!("readiness-proxy-{mode}"),
            &format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"off\"\nshards = 1\n\
                 readiness = \"{mode}\"\n\n\
                 [[upstreams]]\nname = \"up\"\ntargets = [\"{}\"]\n\n\
                 [[routes]]\nname = \"via\"\nmethod = \"GET\"\npath = \"/via/plaintext\"\n\
                 upstream = \"up\"\nstrip_prefix = \"/via\"\n",
                up_ready.listen
            ),
        );
        let (p, ready) = start(&["--config", &cfg.to_string_lossy()]);
        let mut c = Conn::open(ready.listen);
        for i in 0..50 {
            let r = c.request(&get("/via/plaintext"));
            assert_eq!(r.status, 200, "{mode}: proxied request {i}");
            assert_eq!(r.body, b"Hello, World!");
        }
        // The pooled upstream connection, idle for a while, is woken again.
        std::thread::sleep(Duration::from_millis(300));
        let r = c.request(&get("/via/plaintext"));
        assert_eq!(r.status, 200, "{mode}: proxied request after idling");
        stop(p);
    }
    stop(up);
}

#[test]
fn a_bad_readiness_value_is_refused_with_one_line() {
    let file = temp_file("readiness-bad", "[server]\nreadiness = \"poll\"\n");
    let file = file.to_string_lossy().into_owned();
    for args in [
        vec![
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--readiness",
            "kqueue",
        ],
        // A file value is checked like the flag.
        vec![
            "--config",
            &file,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
        ],
    ] {
        let (st, stderr) = run_expecting_exit(&args);
        assert_eq!(st.code(), Some(2), "stderr: {stderr}");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {stderr:?}");
        assert!(
            lines[0].starts_with("shardline: error:") && lines[0].contains("server.readiness"),
            "{:?}",
            lines[0]
        );
    }
}

#[test]
fn check_shows_the_readiness_mode_and_it_loads_again() {
    for (flags, shown) in [
        (vec![], "readiness = \"epoll\""),
        (vec!["--readiness", "io_uring"], "readiness = \"io_uring\""),
        (
            vec!["--readiness", "epoll-wait"],
            "readiness = \"epoll-wait\"",
        ),
    ] {
        let mut args = vec!["check"];
        args.extend_from_slice(&flags);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains(shown), "{text}");
        let again = temp_file("readiness-check-again", &text);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
            .args(["check", "--config", &again.to_string_lossy()])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(shown));
    }
}
