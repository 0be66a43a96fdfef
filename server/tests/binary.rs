//! The `shardline` binary: ready line, admin listener, SO_REUSEPORT shards,
//! graceful SIGTERM, config errors, and flags over file values.
#![allow(clippy::unwrap_used)]

mod common;

use common::{get, listening_sockets, run_expecting_exit, start, temp_file, Conn};

const LOOPBACK: [&str; 4] = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = LOOPBACK.to_vec();
    v.extend_from_slice(extra);
    v
}

#[test]
fn ready_line_reports_real_ports_and_default_routes_answer() {
    let (mut p, ready) = start(&args(&["--shards", "1"]));
    assert_eq!(ready.shards, 1, "{}", ready.line);
    assert_eq!(ready.listen.ip().to_string(), "127.0.0.1");
    assert_ne!(ready.listen.port(), 0, "the ready line shows the real port");
    let admin = ready.admin.expect("admin listener enabled");
    assert_ne!(admin.port(), 0);
    assert_ne!(admin.port(), ready.listen.port());

    let mut c = Conn::open(ready.listen);
    let r = c.request(&get("/plaintext"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"Hello, World!");
    let r = c.request(&get("/json"));
    assert_eq!(r.body, br#"{"message":"Hello, World!"}"#);

    let mut a = Conn::open(admin);
    assert_eq!(a.request(&get("/healthz")).status, 200);
    assert_eq!(a.request(&get("/readyz")).status, 200);
    drop((c, a));

    p.signal("TERM");
    let st = p.wait_exit();
    assert_eq!(
        st.code(),
        Some(0),
        "exit after SIGTERM; stderr: {}",
        p.stderr_text()
    );
}

#[test]
fn ready_line_is_the_only_stdout_line_and_says_admin_off() {
    let (mut p, ready) = start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--shards",
        "1",
    ]);
    assert!(ready.admin.is_none(), "{}", ready.line);
    assert!(ready.line.contains(" admin=off "), "{}", ready.line);
    p.signal("INT");
    let st = p.wait_exit();
    assert_eq!(
        st.code(),
        Some(0),
        "exit after SIGINT; stderr: {}",
        p.stderr_text()
    );
    assert!(
        p.stdout_extra.is_empty(),
        "stdout carries only the ready line; also got {:?}",
        p.stdout_extra
    );
}

#[test]
fn two_shards_listen_on_one_port_with_two_sockets() {
    let (mut p, ready) = start(&args(&["--shards", "2"]));
    assert_eq!(ready.shards, 2, "{}", ready.line);
    let port = ready.listen.port();
    assert_eq!(
        listening_sockets(p.pid(), port),
        2,
        "--shards 2 must give two SO_REUSEPORT listening sockets on port {port}"
    );
    // The admin listener lives on one shard only.
    let admin = ready.admin.unwrap();
    assert_eq!(
        listening_sockets(p.pid(), admin.port()),
        1,
        "admin listener sockets"
    );
    // Every connection is served, whichever socket the kernel picks.
    for i in 0..16 {
        let mut c = Conn::open(ready.listen);
        let r = c.request(&get("/healthz"));
        assert_eq!(r.status, 200, "connection {i}");
    }
    p.signal("TERM");
    assert_eq!(p.wait_exit().code(), Some(0), "stderr: {}", p.stderr_text());
}

/// SIGTERM while a request is in flight: the request finishes (its body
/// arrives after the signal), the full response is sent, then the process
/// exits 0.
#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let (mut p, ready) = start(&args(&["--shards", "1"]));
    let mut c = Conn::open(ready.listen);
    // The 100 Continue proves the server has read this request's head and
    // is waiting for its body: the request is in flight.
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/plain\r\n\
Content-Length: 20\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = c.response();
    assert_eq!(interim.status, 100, "expected 100 Continue");
    c.send(b"first half, ");
    p.signal("TERM");
    c.send(b"2nd half");
    let r = c.response();
    assert_eq!(r.status, 200, "in-flight request after SIGTERM");
    assert_eq!(r.body, b"first half, 2nd half");
    assert_eq!(r.header("content-type"), Some("text/plain"));
    // Draining: the connection is not kept for another request.
    assert!(
        c.closed(),
        "connection kept open after the drain's last response"
    );
    let st = p.wait_exit();
    assert_eq!(
        st.code(),
        Some(0),
        "exit after drain; stderr: {}",
        p.stderr_text()
    );
}

/// Runs the binary with a config file (and extra flags) that must be
/// refused: exit code 2 and exactly one stderr line, `shardline: error: ...`,
/// that names `key`.
/// `flags` come after `--config FILE` (loopback port 0, admin off, so that
/// a server that wrongly starts binds nothing in use).
fn assert_config_refused(name: &str, toml: &str, flags: &[&str], key: &str) {
    let path = temp_file(name, toml);
    let path_s = path.to_string_lossy().into_owned();
    let mut a = vec!["--config", path_s.as_str()];
    a.extend_from_slice(flags);
    assert_refused(name, &a, &[key]);
}

const SAFE: &[&str] = &["--listen", "127.0.0.1:0", "--admin-listen", "off"];

fn assert_refused(name: &str, a: &[&str], keys: &[&str]) {
    let (st, stderr) = run_expecting_exit(a);
    assert_eq!(
        st.code(),
        Some(2),
        "{name}: a bad config exits 2; got {st:?}; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{name}: exactly one stderr line expected, got: {stderr:?}"
    );
    assert!(
        lines[0].starts_with("shardline: error:"),
        "{name}: the line starts with `shardline: error:`: {:?}",
        lines[0]
    );
    assert!(
        keys.iter().any(|k| lines[0].contains(k)),
        "{name}: the error must name {keys:?}: {:?}",
        lines[0]
    );
}

#[test]
fn unknown_key_is_refused() {
    assert_config_refused(
        "unknown-key",
        "[server]\nbogus_key = 1\n",
        SAFE,
        "bogus_key",
    );
}

#[test]
fn unknown_section_is_refused() {
    assert_config_refused("unknown-section", "[nonsense]\nx = 1\n", SAFE, "nonsense");
}

#[test]
fn bad_size_is_refused() {
    assert_config_refused(
        "bad-size",
        "[server]\nmax_body_bytes = \"12XB\"\n",
        SAFE,
        "max_body_bytes",
    );
}

#[test]
fn bad_duration_is_refused() {
    assert_config_refused(
        "bad-duration",
        "[server]\nidle_timeout = \"5 parsecs\"\n",
        SAFE,
        "idle_timeout",
    );
}

#[test]
fn bad_listen_address_is_refused() {
    assert_config_refused(
        "bad-listen",
        "[server]\nlisten = \"not-an-address\"\n",
        &["--admin-listen", "off"],
        "listen",
    );
}

#[test]
fn unknown_handler_is_refused() {
    assert_config_refused(
        "unknown-handler",
        "[[routes]]\nname = \"x\"\nmethod = \"GET\"\npath = \"/x\"\nhandler = \"no_such_handler\"\n",
        SAFE,
        "handler",
    );
}

#[test]
fn route_without_action_is_refused() {
    assert_config_refused(
        "route-no-action",
        "[[routes]]\nname = \"x\"\nmethod = \"GET\"\npath = \"/x\"\n",
        SAFE,
        "routes",
    );
}

#[test]
fn upstream_without_targets_is_refused() {
    assert_config_refused(
        "upstreams",
        "[[upstreams]]\nname = \"users\"\n",
        SAFE,
        "upstreams[0] (users).targets",
    );
}

#[test]
fn missing_config_file_is_refused() {
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("no-such-shardline.toml");
    let p = path.to_string_lossy().into_owned();
    assert_refused("missing-file", &args(&["--config", &p]), &[&p]);
}

#[test]
fn bad_flag_values_are_refused() {
    assert_refused(
        "flag size",
        &args(&["--max-body-bytes", "12XB"]),
        &["max_body_bytes", "max-body-bytes"],
    );
    assert_refused(
        "flag duration",
        &args(&["--header-read-timeout", "soon"]),
        &["header_read_timeout", "header-read-timeout"],
    );
    assert_refused(
        "flag listen",
        &["--listen", "localhost-ish", "--admin-listen", "off"],
        &["listen"],
    );
    assert_refused("flag shards", &args(&["--shards", "many"]), &["shards"]);
}

/// A file value is used unless a flag overrides it; flags win.
#[test]
fn flags_override_file_values() {
    let path = temp_file(
        "override",
        "[server]\nlisten = \"127.0.0.2:0\"\nadmin_listen = \"127.0.0.2:0\"\nshards = 2\n\
max_body_bytes = 10\nmax_header_bytes = 2048\n",
    );
    let p = path.to_string_lossy().into_owned();
    let (mut proc_, ready) = start(&[
        "--config",
        &p,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--shards",
        "1",
        "--max-body-bytes",
        "1KiB",
    ]);
    assert_eq!(ready.listen.ip().to_string(), "127.0.0.1", "{}", ready.line);
    assert!(ready.admin.is_none(), "{}", ready.line);
    assert_eq!(ready.shards, 1, "{}", ready.line);

    let mut c = Conn::open(ready.listen);
    // --max-body-bytes 1KiB beats the file's 10.
    let body = [b'x'; 100];
    let mut req = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    let r = c.request(&req);
    assert_eq!(
        r.status, 200,
        "flag must override the file's max_body_bytes"
    );
    assert_eq!(r.body.len(), 100);
    // The file's max_header_bytes (not overridden) applies.
    let mut big = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Pad: ".to_vec();
    big.extend(std::iter::repeat(b'p').take(3000));
    big.extend_from_slice(b"\r\n\r\n");
    let r = c.request(&big);
    assert_eq!(r.status, 431, "the file's max_header_bytes = 2048 applies");

    proc_.signal("TERM");
    assert_eq!(
        proc_.wait_exit().code(),
        Some(0),
        "stderr: {}",
        proc_.stderr_text()
    );
}

#[test]
fn config_file_routes_are_served() {
    let path = temp_file(
        "routes",
        "[[routes]]\nname = \"hello\"\nmethod = \"GET\"\npath = \"/hello/{name}\"\n\
respond = { status = 200, body = \"hi\", content_type = \"text/plain\" }\n",
    );
    let p = path.to_string_lossy().into_owned();
    let (mut proc_, ready) = start(&args(&["--config", &p, "--shards", "1"]));
    let mut c = Conn::open(ready.listen);
    let r = c.request(&get("/hello/world"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hi");
    let r = c.request(&get("/plaintext"));
    assert_eq!(r.status, 404, "configured routes replace the defaults");
    proc_.signal("TERM");
    assert_eq!(proc_.wait_exit().code(), Some(0));
}

/// A self-signed certificate for localhost, as (cert PEM, key PEM).
fn self_signed() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Waits (bounded) until stderr has a complete line containing `needle`
/// (stderr is unbuffered: a line may arrive in several writes).
fn wait_stderr(p: &common::Proc, needle: &str) -> String {
    let deadline = std::time::Instant::now() + common::GUARD;
    loop {
        let text = p.stderr_text();
        let complete = text
            .split_inclusive('\n')
            .any(|l| l.ends_with('\n') && l.contains(needle));
        if complete || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// `[server.tls]`: the ready line names the HTTPS listener; SIGHUP reloads
/// the certificate, a broken file is reported (naming the key and file)
/// and leaves the server running on the old one.
#[test]
fn sighup_reloads_tls_certificates_and_survives_a_bad_file() {
    let (cert, key) = self_signed();
    let cert_path = temp_file("hup.crt", &cert);
    let key_path = temp_file("hup.key", &key);
    let toml = format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
        cert_path.display(),
        key_path.display()
    );
    let conf = temp_file("hup.toml", &toml);
    let conf_s = conf.to_string_lossy().into_owned();
    let (mut p, ready) = start(&[
        "--config",
        &conf_s,
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "off",
        "--shards",
        "1",
    ]);
    let tls = ready.tls.expect("tls= in the ready line");
    assert_ne!(tls.port(), 0, "{}", ready.line);
    assert_ne!(tls, ready.listen);

    let (cert2, key2) = self_signed();
    std::fs::write(&cert_path, cert2).unwrap();
    std::fs::write(&key_path, key2).unwrap();
    p.signal("HUP");
    let err = wait_stderr(&p, "TLS certificates reloaded");
    assert!(err.contains("TLS certificates reloaded"), "stderr: {err}");

    std::fs::write(&cert_path, "garbage\n").unwrap();
    p.signal("HUP");
    let err = wait_stderr(&p, "TLS reload failed");
    let line = err
        .lines()
        .find(|l| l.contains("TLS reload failed"))
        .unwrap_or_else(|| panic!("no reload failure line; stderr: {err}"));
    assert!(
        line.contains("server.tls.cert") && line.contains("hup.crt"),
        "{line}"
    );
    // Still serving, and still draining on SIGTERM as usual.
    let mut c = Conn::open(ready.listen);
    assert_eq!(c.request(&get("/plaintext")).status, 200);
    p.signal("TERM");
    assert_eq!(p.wait_exit().code(), Some(0), "stderr: {}", p.stderr_text());
}

/// Runs the binary to completion; (status, stdout, stderr).
fn run_output(a: &[&str]) -> (std::process::ExitStatus, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardline"))
        .args(a)
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_prints_the_effective_config_and_it_loads_again() {
    let path = temp_file(
        "check-ok",
        "[server]\nidle_timeout = \"90s\"\n\n[[routes]]\nname = \"a\"\nmethod = \"GET\"\npath = \"/a\"\nrespond = { status = 200, body = \"A\" }\n\n[[slos]]\nname = \"s\"\nobjective = 0.99\n",
    );
    let p = path.to_string_lossy().into_owned();
    let (st, out, err) = run_output(&["check", "--config", &p, "--shards", "3"]);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    assert!(out.contains("idle_timeout = \"90s\""), "{out}");
    assert!(out.contains("shards = 3"), "flags are applied: {out}");
    assert!(
        out.contains("header_read_timeout = \"10s\""),
        "defaults are shown: {out}"
    );
    assert!(
        out.contains("[[slos]]") && out.contains("window = \"30d\""),
        "{out}"
    );
    // The printed config is itself valid and prints the same.
    let again = temp_file("check-again", &out);
    let (st, out2, err) = run_output(&["check", "--config", &again.to_string_lossy()]);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
    assert_eq!(out, out2);
}

#[test]
fn check_refuses_a_bad_config_with_one_line() {
    let path = temp_file("check-bad", "[[slos]]\nname = \"s\"\nobjective = 2\n");
    assert_refused(
        "check-bad",
        &["check", "--config", &path.to_string_lossy()],
        &["slos[0] (s).objective"],
    );
}

#[test]
fn check_loads_the_tls_files_as_a_start_would() {
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    let cert_path = temp_file("check-tls.crt", &cert);
    let key_path = temp_file("check-tls.key", &key);
    let other_key_path = temp_file("check-tls-other.key", &other_key);
    let garbage = temp_file("check-tls-ca.crt", "not a certificate\n");
    let tls = |key: &std::path::Path, extra: &str| {
        format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
            cert_path.display(),
            key.display()
        )
    };
    // A key that does not fit the certificate.
    let conf = temp_file("check-tls-key.toml", &tls(&other_key_path, ""));
    assert_refused(
        "check-tls-key",
        &["check", "--config", &conf.to_string_lossy()],
        &["server.tls.key"],
    );
    // A client CA file that holds no certificate.
    let conf = temp_file(
        "check-tls-ca.toml",
        &tls(
            &key_path,
            &format!("client_auth = {{ ca = \"{}\" }}", garbage.display()),
        ),
    );
    assert_refused(
        "check-tls-ca",
        &["check", "--config", &conf.to_string_lossy()],
        &["server.tls.client_auth.ca"],
    );
    // The good pair passes.
    let conf = temp_file("check-tls-ok.toml", &tls(&key_path, ""));
    let (st, _, err) = run_output(&["check", "--config", &conf.to_string_lossy()]);
    assert_eq!(st.code(), Some(0), "stderr: {err}");
}

#[test]
fn sighup_reloads_the_config_file() {
    let route = |body: &str| {
        format!("[[routes]]\nname = \"a\"\nmethod = \"GET\"\npath = \"/a\"\nrespond = {{ status = 200, body = \"{body}\" }}\n")
    };
    let path = temp_file("sighup", &route("before"));
    let p = path.to_string_lossy().into_owned();
    let (mut proc_, ready) = start(&args(&[
        "--config",
        &p,
        "--shards",
        "2",
        "--log-level",
        "info",
    ]));
    let mut c = Conn::open(ready.listen);
    assert_eq!(c.request(&get("/a")).body, b"before");
    std::fs::write(&path, route("after")).unwrap();
    proc_.signal("HUP");
    let t0 = std::time::Instant::now();
    loop {
        // The kept connection sees the new config too.
        if c.request(&get("/a")).body == b"after" {
            break;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "no reload; stderr: {}",
            proc_.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // A broken file is refused, logged, and the server keeps running.
    std::fs::write(&path, "[[routes]]\nname = \"a\"\n").unwrap();
    proc_.signal("HUP");
    let t0 = std::time::Instant::now();
    while !proc_.stderr_text().contains("config reload refused") {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "stderr: {}",
            proc_.stderr_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(c.request(&get("/a")).body, b"after");
    proc_.signal("TERM");
    assert_eq!(
        proc_.wait_exit().code(),
        Some(0),
        "stderr: {}",
        proc_.stderr_text()
    );
}

/// `--tls-listen/--tls-cert/--tls-key` enable HTTPS without a config file;
/// a missing key is refused naming it.
#[test]
fn tls_flags_enable_the_https_listener() {
    let (cert, key) = self_signed();
    let cert_path = temp_file("flags.crt", &cert);
    let key_path = temp_file("flags.key", &key);
    let (c, k) = (
        cert_path.to_string_lossy().into_owned(),
        key_path.to_string_lossy().into_owned(),
    );
    let (mut p, ready) = start(&args(&[
        "--shards",
        "1",
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        &c,
        "--tls-key",
        &k,
    ]));
    let tls = ready.tls.expect("tls= in the ready line");
    assert!(std::net::TcpStream::connect(tls).is_ok());
    p.signal("TERM");
    assert_eq!(p.wait_exit().code(), Some(0), "stderr: {}", p.stderr_text());

    assert_refused(
        "tls-no-key",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &c,
        ],
        &["server.tls.key"],
    );
    assert_refused(
        "tls-missing-file",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "off",
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            &c,
            "--tls-key",
            "/nonexistent/key.pem",
        ],
        &["server.tls.key"],
    );
}

/// CPU time (user + system) the process has used, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 here.
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks_per_second() -> u64 {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// An idle server must sleep in the kernel on every shard: a shard that
/// polled (a glommio channel waiting for its peer to connect did, on every
/// shard but 0, until the first scrape) burns a whole CPU second per
/// second. The bound is loose (a third of one CPU over the window, for two
/// shards) so a loaded machine cannot fail it; only a polling loop can.
#[test]
fn an_idle_server_sleeps() {
    // Every readiness mode: "epoll-wait" must end its brief waits too.
    for mode in ["epoll", "epoll-wait", "io_uring"] {
        an_idle_server_sleeps_in(mode);
    }
}

fn an_idle_server_sleeps_in(mode: &str) {
    let (mut p, ready) = start(&args(&["--shards", "2", "--readiness", mode]));
    // Keep-alive connections that have been served and now wait.
    let mut conns: Vec<Conn> = (0..8).map(|_| Conn::open(ready.listen)).collect();
    for c in &mut conns {
        assert_eq!(c.request(&get("/plaintext")).status, 200);
    }
    let window = std::time::Duration::from_millis(1500);
    let before = cpu_ticks(p.pid());
    std::thread::sleep(window);
    let used = cpu_ticks(p.pid()) - before;
    let hz = clock_ticks_per_second();
    let limit = hz * window.as_millis() as u64 / 1000 / 3;
    assert!(
        used <= limit,
        "an idle server ({mode}) used {used} ticks of CPU in {window:?} (limit {limit}, {hz} \
         ticks/s): a shard is polling instead of sleeping"
    );
    for c in &mut conns {
        assert_eq!(
            c.request(&get("/plaintext")).status,
            200,
            "still served after idling"
        );
    }
    p.signal("TERM");
    assert_eq!(p.wait_exit().code(), Some(0), "stderr: {}", p.stderr_text());
}
