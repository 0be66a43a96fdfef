//! The proxy under stress and lifecycle events: slow readers and writers of
//! large bodies (backpressure), both directions at once, reloads and drains
//! with proxied requests in flight, many concurrent clients with upstream
//! failures mixed in, the connection limit with proxied requests, and
//! clients abandoning downloads (no leaked upstream connections).
//!
//! No outcome depends on timing: every wait is bounded and only stops a
//! hung test; bounds are on byte counts, not durations.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use shardline_tests::client::find;
use shardline_tests::server::config_from_toml;
use shardline_tests::upstream::{
    pattern_block, pattern_matches, wait_until, Action, Behaviour, Gate, Reply, Step, Upstream,
};
use shardline_tests::{get, post, Client, TestServer, GUARD};

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// An upstream that answers every request with a patterned body of `len`
/// bytes and counts the body bytes it has handed to the kernel, so a test
/// can see whether the gateway paused it (backpressure) or drained it into
/// memory.
struct CountingUpstream {
    addr: SocketAddr,
    sent: Arc<AtomicU64>,
    finished: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl CountingUpstream {
    fn start(len: u64) -> CountingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        listener.set_nonblocking(true).unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let finished = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, st) = (Arc::clone(&sent), Arc::clone(&finished), Arc::clone(&stop));
        let accept = thread::spawn(move || {
            let mut workers = Vec::new();
            let end = Instant::now() + Duration::from_secs(60);
            while !st.load(Ordering::SeqCst) && Instant::now() < end {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let (s, f, st) = (Arc::clone(&s), Arc::clone(&f), Arc::clone(&st));
                        workers.push(thread::spawn(move || {
                            serve_counting(sock, len, &s, &f, &st)
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            for w in workers {
                let _ = w.join();
            }
        });
        CountingUpstream {
            addr,
            sent,
            finished,
            stop,
            accept: Some(accept),
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }
}

impl Drop for CountingUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn serve_counting(
    mut sock: TcpStream,
    len: u64,
    sent: &AtomicU64,
    finished: &AtomicUsize,
    stop: &AtomicBool,
) {
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    sock.set_write_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let end = Instant::now() + Duration::from_secs(60);
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while find(&head, b"\r\n\r\n").is_none() {
        if stop.load(Ordering::SeqCst) || Instant::now() > end {
            return;
        }
        match sock.read(&mut b) {
            Ok(0) => return,
            Ok(n) => head.extend_from_slice(&b[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let h = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n"
    );
    if sock.write_all(h.as_bytes()).is_err() {
        return;
    }
    let block = pattern_block();
    let mut off: u64 = 0;
    while off < len {
        let start = (off % block.len() as u64) as usize;
        let take = ((len - off) as usize)
            .min(block.len() - start)
            .min(64 * 1024);
        match sock.write(&block[start..start + take]) {
            Ok(0) => return,
            Ok(n) => {
                off += n as u64;
                sent.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::Interrupted =>
            {
                if stop.load(Ordering::SeqCst) || Instant::now() > end {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    finished.fetch_add(1, Ordering::SeqCst);
    // Hold the connection until the peer closes it (or the test ends).
    while !stop.load(Ordering::SeqCst) && Instant::now() < end {
        match sock.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut
                    || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn proxy_toml(server: &str, targets: &[String], route_extra: &str) -> String {
    let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
    format!(
        "[server]\n{server}\n\n[[upstreams]]\nname = \"u\"\ntargets = [{}]\n\n\
         [[routes]]\nname = \"p\"\npath = \"/{{*rest}}\"\nupstream = \"u\"\n{route_extra}\n",
        targets.join(", ")
    )
}

/// Reads a response head from a raw stream; returns (head, body bytes
/// already read after it).
fn read_head(s: &mut TcpStream) -> (String, Vec<u8>) {
    s.set_read_timeout(Some(GUARD)).unwrap();
    let mut buf = Vec::new();
    let mut b = [0u8; 16 * 1024];
    loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            let rest = buf[i + 4..].to_vec();
            buf.truncate(i + 4);
            return (String::from_utf8_lossy(&buf).into_owned(), rest);
        }
        let n = match s.read(&mut b) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("reading a head: {e}"),
        };
        assert!(
            n > 0,
            "closed before the head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&b[..n]);
    }
}

fn content_length(head: &str) -> u64 {
    head.lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no Content-Length in {head}"))
}

/// Reads `len - already.len()` more body bytes, checking the pattern;
/// returns the total body bytes read (short if the connection closed).
fn read_pattern_body(s: &mut TcpStream, already: &[u8], len: u64) -> u64 {
    assert!(pattern_matches(0, already), "body start does not match");
    let mut off = already.len() as u64;
    let mut b = vec![0u8; 256 * 1024];
    while off < len {
        let want = ((len - off) as usize).min(b.len());
        match s.read(&mut b[..want]) {
            Ok(0) => break,
            Ok(n) => {
                assert!(pattern_matches(off, &b[..n]), "body mismatch at {off}");
                off += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("body read at {off}/{len}: {e}"),
        }
    }
    off
}

/// Waits (bounded) until `value` stops changing for a few polls in a row;
/// returns the last value.
fn settled(mut value: impl FnMut() -> u64) -> u64 {
    let end = Instant::now() + Duration::from_secs(3);
    let mut last = value();
    let mut same = 0;
    while Instant::now() < end && same < 5 {
        thread::sleep(Duration::from_millis(50));
        let v = value();
        if v == last {
            same += 1;
        } else {
            same = 0;
            last = v;
        }
    }
    last
}

fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "shardline-stress-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_file(path: &PathBuf, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Starts a server from a config file (so it can be reloaded), with an
/// admin listener.
fn start_file(path: &PathBuf) -> TestServer {
    let mut cfg = config_from_toml(&std::fs::read_to_string(path).unwrap());
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.server.shards = 1;
    let overrides = shardline::config::ServerOverrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        shards: Some(1),
        ..Default::default()
    };
    TestServer::from_builder(shardline::Server::new(cfg).config_file(path, overrides))
}

fn post_reload(srv: &TestServer) -> shardline_tests::Response {
    let mut c = Client::connect(srv.admin.unwrap());
    c.request(&post("/admin/reload", &[], b""))
}

/// An upstream answering `200 <tag>:<target>` (keep-alive).
fn tagged(tag: &'static str) -> Upstream {
    Upstream::start(Behaviour::script(move |r| {
        Action::Reply(Reply::ok(&format!("{tag}:{}", r.target)))
    }))
}

// ---------------------------------------------------------------------------
// Backpressure
// ---------------------------------------------------------------------------

#[test]
fn a_client_that_stops_reading_a_large_download_pauses_the_upstream() {
    const LEN: u64 = 256 * MIB;
    let up = CountingUpstream::start(LEN);
    let srv = TestServer::start_toml(&proxy_toml("", &[up.addr.to_string()], "timeout = \"60s\""));
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&get("/big", &[])).unwrap();
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(content_length(&head), LEN);
    // Stop reading. The gateway must stop reading the upstream once its
    // buffers and the sockets' are full: the upstream stalls far short of
    // the body (socket buffers on loopback here are at most 32 MiB
    // receive + 4 MiB send per socket, two hops).
    let stalled = settled(|| up.sent());
    assert!(
        stalled < 100 * MIB,
        "upstream sent {} MiB to a client that read nothing: the gateway buffers \
         instead of pausing the upstream",
        stalled / MIB
    );
    // Now read it all: nothing lost, nothing reordered.
    let got = read_pattern_body(&mut s, &rest, LEN);
    assert_eq!(got, LEN);
    assert!(wait_until(GUARD, || up.finished.load(Ordering::SeqCst) == 1));
}

#[test]
fn a_slow_uploader_to_a_fast_upstream_streams_and_completes() {
    const LEN: usize = 16 * MIB as usize;
    let up = Upstream::start(Behaviour::sink());
    let srv = TestServer::start_toml(&proxy_toml(
        "",
        &[up.target()],
        "max_body_bytes = \"64MiB\"\ntimeout = \"60s\"",
    ));
    let mut c = srv.client();
    c.send(
        format!("POST /up HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LEN}\r\n\r\n").as_bytes(),
    );
    let block = pattern_block();
    let mut off = 0usize;
    let mut pieces = 0;
    while off < LEN {
        let start = off % block.len();
        let take = (LEN - off).min(block.len() - start).min(8 * 1024);
        c.send(&block[start..start + take]);
        off += take;
        pieces += 1;
        // Trickle the first pieces: the upstream must get the request
        // head while the body is still arriving (streamed, not held).
        if pieces == 20 {
            assert!(
                up.wait_requests(1),
                "the upstream saw nothing after 160 KiB of a streamed upload"
            );
        }
        if pieces < 40 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), LEN.to_string());
    assert_eq!(r.header("x-pattern-ok").as_deref(), Some("true"));
    // The connection is still usable for another proxied request.
    let r = c.request(&post("/again", &[], b"hello"));
    assert_eq!(r.text(), "5");
}

/// Connects and sends a `POST /echo` of `len` patterned bytes from a
/// thread of its own; returns the socket to read the echo from, the count
/// of body bytes written so far, and the writer thread.
fn start_echo_upload(
    srv: &TestServer,
    len: u64,
) -> (TcpStream, Arc<AtomicU64>, thread::JoinHandle<()>) {
    let s = TcpStream::connect(srv.addr).unwrap();
    s.set_write_timeout(Some(GUARD)).unwrap();
    let mut w = s.try_clone().unwrap();
    let written = Arc::new(AtomicU64::new(0));
    let wr = Arc::clone(&written);
    let writer = thread::spawn(move || {
        w.write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-test\r\n\
                 Content-Length: {len}\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        let block = pattern_block();
        let mut off = 0u64;
        while off < len {
            let start = (off % block.len() as u64) as usize;
            let take = ((len - off) as usize).min(block.len() - start);
            if w.write_all(&block[start..start + take]).is_err() {
                return;
            }
            off += take as u64;
            wr.store(off, Ordering::SeqCst);
        }
    });
    (s, written, writer)
}

#[test]
#[ignore = "LIMITATION (README, Bodies stream both ways): no full-duplex relay; an upstream that echoes more than the socket buffers hold before reading the rest of the upload stalls until request_timeout"]
fn echo_both_directions_at_once_with_a_slow_reader() {
    const LEN: u64 = 32 * MIB;
    let up = Upstream::start(Behaviour::echo());
    let srv = TestServer::start_toml(&proxy_toml(
        "",
        &[up.target()],
        "max_body_bytes = \"64MiB\"\ntimeout = \"60s\"",
    ));
    let (mut s, written, writer) = start_echo_upload(&srv, LEN);
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Read nothing more for a while: the writer must stall (backpressure
    // through gateway and echo), not have the whole body swallowed.
    let stalled = settled(|| written.load(Ordering::SeqCst));
    assert!(
        stalled < LEN,
        "a 32 MiB upload was taken whole while its echo was not being read"
    );
    let got = read_pattern_body(&mut s, &rest, LEN);
    assert_eq!(got, LEN, "short echo");
    writer.join().unwrap();
    assert_eq!(written.load(Ordering::SeqCst), LEN);
}

#[test]
#[ignore = "LIMITATION (README, Bodies stream both ways): no full-duplex relay; an upstream that echoes more than the socket buffers hold before reading the rest of the upload stalls until request_timeout"]
fn echo_both_directions_at_once_with_an_eager_reader() {
    const LEN: u64 = 32 * MIB;
    let up = Upstream::start(Behaviour::echo());
    let srv = TestServer::start_toml(&proxy_toml(
        "",
        &[up.target()],
        "max_body_bytes = \"64MiB\"\ntimeout = \"60s\"",
    ));
    let (mut s, written, writer) = start_echo_upload(&srv, LEN);
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let got = read_pattern_body(&mut s, &rest, LEN);
    assert_eq!(got, LEN, "short echo");
    writer.join().unwrap();
    assert_eq!(written.load(Ordering::SeqCst), LEN);
}

#[test]
fn clients_abandoning_large_downloads_leak_no_upstream_connection() {
    let up = Upstream::start(Behaviour::generate(64 * MIB));
    let srv = TestServer::start_toml(&proxy_toml("", &[up.target()], "timeout = \"60s\""));
    for i in 0..10 {
        let mut s = TcpStream::connect(srv.addr).unwrap();
        s.write_all(&get(&format!("/big/{i}"), &[])).unwrap();
        let (head, _) = read_head(&mut s);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        drop(s);
    }
    assert!(up.wait_requests(10));
    assert!(
        up.wait_open_connections_at_most(0),
        "{} upstream connections still open after every client left mid-body",
        up.open_connections()
    );
    // And the gateway still proxies.
    up.set_behaviour(Behaviour::ok("fine"));
    assert_eq!(srv.client().request(&get("/x", &[])).text(), "fine");
}

// ---------------------------------------------------------------------------
// Reload and drain with proxied traffic
// ---------------------------------------------------------------------------

#[test]
fn a_reload_that_changes_the_targets_sends_new_requests_to_the_new_ones() {
    let gate = Gate::new();
    let g = gate.clone();
    let a = Upstream::start(Behaviour::script(move |r| {
        let body = format!("A:{}", r.target);
        if r.target.starts_with("/hold") {
            Action::Steps(vec![
                Step::Wait(g.clone()),
                Step::Write(Reply::ok(&body).encode(false)),
            ])
        } else {
            Action::Reply(Reply::ok(&body))
        }
    }));
    let b = tagged("B");
    let dir = temp_dir("targets");
    let file = dir.join("shardline.toml");
    write_file(&file, &proxy_toml("", &[a.target()], "timeout = \"30s\""));
    let srv = start_file(&file);
    // Warm the pool to A.
    let mut kept = srv.client();
    for i in 0..3 {
        let path = format!("/warm/{i}");
        assert_eq!(kept.request(&get(&path, &[])).text(), format!("A:{path}"));
    }
    // One request held by A across the reload.
    let mut inflight = srv.client();
    inflight.send(&get("/hold", &[]));
    assert!(a.wait_requests(4));

    // Reload: the upstream `u` now has only B.
    write_file(&file, &proxy_toml("", &[b.target()], "timeout = \"30s\""));
    let r = post_reload(&srv);
    assert_eq!(r.status, 200, "{}", r.text());

    // New requests (on the kept connection and on fresh ones) go to B; A's
    // pooled connection is never used again.
    for j in 0..6 {
        let path = format!("/new/{j}");
        let r = if j % 2 == 0 {
            kept.request(&get(&path, &[]))
        } else {
            srv.client().request(&get(&path, &[]))
        };
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), format!("B:{path}"), "request after reload");
    }
    assert_eq!(
        a.requests(),
        4,
        "a request after the reload reached the old target"
    );

    // The request in flight across the reload finishes on its generation.
    gate.open();
    let r = inflight.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "A:/hold");
    // Afterwards that connection, too, uses the new target.
    assert_eq!(inflight.request(&get("/after", &[])).text(), "B:/after");
    assert_eq!(a.requests(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn removing_an_upstream_and_route_while_a_request_to_it_is_in_flight() {
    let gate = Gate::new();
    let g = gate.clone();
    let old = Upstream::start(Behaviour::script(move |r| {
        Action::Steps(vec![
            Step::Wait(g.clone()),
            Step::Write(Reply::ok(&format!("old:{}", r.target)).encode(false)),
        ])
    }));
    let other = tagged("O");
    let both = format!(
        "[[upstreams]]\nname = \"old\"\ntargets = [\"{}\"]\n\n\
         [[upstreams]]\nname = \"other\"\ntargets = [\"{}\"]\n\n\
         [[routes]]\nname = \"old\"\npath = \"/old/{{*rest}}\"\nupstream = \"old\"\n\n\
         [[routes]]\nname = \"other\"\npath = \"/other/{{*rest}}\"\nupstream = \"other\"\n",
        old.target(),
        other.target()
    );
    let only_other = format!(
        "[[upstreams]]\nname = \"other\"\ntargets = [\"{}\"]\n\n\
         [[routes]]\nname = \"other\"\npath = \"/other/{{*rest}}\"\nupstream = \"other\"\n",
        other.target()
    );
    let dir = temp_dir("remove");
    let file = dir.join("shardline.toml");
    write_file(&file, &both);
    let srv = start_file(&file);
    let mut c = srv.client();
    c.send(&get("/old/1", &[]));
    assert!(old.wait_requests(1));
    write_file(&file, &only_other);
    let r = post_reload(&srv);
    assert_eq!(r.status, 200, "{}", r.text());
    // Traffic to the surviving route works meanwhile.
    assert_eq!(
        srv.client().request(&get("/other/x", &[])).text(),
        "O:/other/x"
    );
    gate.open();
    let r = c.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "old:/old/1");
    // Same connection, removed route: 404, and nothing reaches `old`.
    let r = c.request(&get("/old/2", &[]));
    assert_eq!(r.status, 404, "{}", r.summary());
    assert_eq!(old.requests(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_drain_lets_a_streaming_download_finish() {
    const LEN: u64 = 64 * MIB;
    let up = CountingUpstream::start(LEN);
    let srv = TestServer::start_toml(&proxy_toml(
        "drain_timeout = \"30s\"",
        &[up.addr.to_string()],
        "timeout = \"60s\"",
    ));
    let mut s = TcpStream::connect(srv.addr).unwrap();
    s.write_all(&get("/big", &[])).unwrap();
    let (head, rest) = read_head(&mut s);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // Let the pipe fill (client not reading), then drain.
    settled(|| up.sent());
    srv.shutdown();
    // New connections are refused (or closed unanswered) while it drains.
    assert!(
        wait_until(GUARD, || match TcpStream::connect(srv.addr) {
            Err(_) => true,
            Ok(mut t) => {
                t.set_read_timeout(Some(Duration::from_millis(500)))
                    .unwrap();
                let _ = t.write_all(&get("/new", &[]));
                let mut b = [0u8; 64];
                matches!(t.read(&mut b), Ok(0) | Err(_))
            }
        }),
        "the listener still answers during the drain"
    );
    let got = read_pattern_body(&mut s, &rest, LEN);
    assert_eq!(got, LEN, "the drain cut an in-flight download short");
    srv.stop();
}

// ---------------------------------------------------------------------------
// Many clients, failures mixed in
// ---------------------------------------------------------------------------

#[test]
fn many_concurrent_clients_each_get_their_own_answers_with_failures_mixed_in() {
    const CLIENTS: usize = 200;
    const PER: usize = 4;
    let script = || {
        Behaviour::script(|r| {
            let t = r.target.clone();
            if t.contains("/drop/") {
                Action::Steps(vec![Step::Close])
            } else if t.contains("/fail/") {
                Action::Reply(
                    Reply::new(500)
                        .header("Content-Type", "text/plain")
                        .body(format!("E:{t}").as_bytes()),
                )
            } else if t.contains("/slow/") {
                Action::Delay(
                    Duration::from_millis(5),
                    Box::new(Action::Reply(Reply::ok(&format!("S:{t}")))),
                )
            } else {
                Action::Reply(Reply::ok(&format!("K:{t}")))
            }
        })
    };
    let a = Upstream::start(script());
    let b = Upstream::start(script());
    // The dropped requests are real upstream failures: with the default
    // breaker, five in a row (they arrive together) would open it and turn
    // later requests into 503s depending on the interleaving. This test is
    // about every client getting its own answer, so the breaker stays out.
    let toml = proxy_toml("", &[a.target(), b.target()], "timeout = \"20s\"").replacen(
        "\n\n[[routes]]",
        "\ncircuit_breaker = { consecutive_failures = 1000 }\n\n[[routes]]",
        1,
    );
    let srv = TestServer::start_toml(&toml);
    let addr = srv.addr;
    let barrier = Arc::new(std::sync::Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|ci| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || -> Result<(), String> {
                let mut c = Client::connect(addr);
                barrier.wait();
                for k in 0..PER {
                    let kind = match (ci + k) % 7 {
                        0 => "drop",
                        1 => "fail",
                        2 => "slow",
                        _ => "ok",
                    };
                    let path = format!("/{kind}/{ci}/{k}");
                    let post_it = (ci + k) % 3 == 0;
                    let req = if post_it {
                        post(&path, &[], path.as_bytes())
                    } else {
                        get(&path, &[])
                    };
                    if !c.try_send(&req) {
                        return Err(format!("{path}: send failed"));
                    }
                    let r = match c.read_final(false) {
                        Ok((_, r)) => r,
                        Err(e) => return Err(format!("{path}: no response: {e}")),
                    };
                    let ok = match kind {
                        "drop" => r.status == 502 || r.status == 504,
                        "fail" => r.status == 500 && r.text() == format!("E:{path}"),
                        "slow" => r.status == 200 && r.text() == format!("S:{path}"),
                        _ => r.status == 200 && r.text() == format!("K:{path}"),
                    };
                    if !ok {
                        return Err(format!("{path}: got {}", r.summary()));
                    }
                    if r.closes() {
                        c = Client::connect(addr);
                    }
                }
                Ok(())
            })
        })
        .collect();
    let errors: Vec<String> = threads
        .into_iter()
        .filter_map(|t| t.join().expect("client thread panicked").err())
        .collect();
    assert!(
        errors.is_empty(),
        "{} failures: {:?}",
        errors.len(),
        &errors[..errors.len().min(10)]
    );
    // Every non-dropped request reached an upstream exactly once (POSTs are
    // never retried; GETs on `drop` may be).
    let logged: Vec<String> = a
        .log()
        .into_iter()
        .chain(b.log())
        .map(|r| r.target)
        .filter(|t| !t.starts_with("/drop/"))
        .collect();
    let mut uniq = logged.clone();
    uniq.sort();
    uniq.dedup();
    assert_eq!(
        uniq.len(),
        logged.len(),
        "a request reached the upstreams twice"
    );
    assert_eq!(
        logged.len(),
        CLIENTS * PER
            - (0..CLIENTS)
                .flat_map(|ci| (0..PER).map(move |k| (ci + k) % 7))
                .filter(|m| *m == 0)
                .count()
    );
}

#[test]
fn the_connection_limit_holds_with_proxied_requests_in_flight() {
    let gate = Gate::new();
    let g = gate.clone();
    let up = Upstream::start(Behaviour::script(move |r| {
        Action::Steps(vec![
            Step::Wait(g.clone()),
            Step::Write(Reply::ok(&format!("G:{}", r.target)).encode(false)),
        ])
    }));
    let srv = TestServer::start_toml(&proxy_toml(
        "max_connections_per_shard = 4",
        &[up.target()],
        "timeout = \"30s\"",
    ));
    let mut held: Vec<Client> = (0..4)
        .map(|i| {
            let mut c = srv.client();
            c.send(&get(&format!("/held/{i}"), &[]));
            c
        })
        .collect();
    assert!(up.wait_requests(4));
    // A fifth waits in the backlog: its request does not reach the upstream.
    let mut fifth = srv.client();
    fifth.send(&get("/fifth", &[]));
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        up.requests(),
        4,
        "a fifth connection was served over the limit"
    );
    gate.open();
    for (i, c) in held.iter_mut().enumerate() {
        let r = c.response();
        assert_eq!(r.text(), format!("G:/held/{i}"));
    }
    // Closing one makes room.
    held.pop();
    let r = fifth.response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "G:/fifth");
}
