//! Upstream TLS games (`https://` targets) and mTLS-identity corner cases.
//!
//! The upstream side is a small std-thread rustls server written here, so
//! each test decides exactly what the upstream does at the TLS layer: the
//! certificate it shows (wrong name, expired, missing intermediate, a long
//! chain), the versions and ALPN it speaks, whether it wants a client
//! certificate, when it sends `close_notify` and when it just drops TCP,
//! and how it cuts its records. Expected everywhere: a handshake that fails
//! is a connect failure (502, retried on another target, nothing sent); a
//! body cut short is never shown to the client as complete; a pooled
//! connection the upstream has closed is never handed a request; nothing
//! hangs or panics.
//!
//! Not testable, documented here: a client that renegotiates, or sends a
//! second certificate later, cannot exist on the listener's side: TLS 1.3
//! has no renegotiation (post-handshake client auth is not offered by
//! rustls), and the listener's TLS 1.2 refuses renegotiation.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::assert_problem;
use rcgen::{CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{HandshakeKind, RootCertStore, ServerConfig, ServerConnection};
use shardline_tests::client::ReadError;
use shardline_tests::server::TestServer;
use shardline_tests::tls::{self, Ca, Leaf, ScratchDir, Versions};
use shardline_tests::upstream::{pattern_block, pattern_matches, wait_until};
use shardline_tests::{get, post, GUARD};

// ---------------------------------------------------------------------
// Certificates.

/// Signs `params` with `ca` under a fresh key.
fn sign(ca: &Ca, p: CertificateParams) -> Leaf {
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// A client certificate built from `params` (clientAuth usage added).
fn client_leaf(ca: &Ca, mut p: CertificateParams) -> Leaf {
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    sign(ca, p)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What the TLS upstream offers.
struct UpTls {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    versions: Versions,
    alpn: Vec<Vec<u8>>,
    /// Client certificates required, chaining to this CA.
    client_ca: Option<CertificateDer<'static>>,
}

impl UpTls {
    fn new(leaf: &Leaf) -> UpTls {
        UpTls {
            chain: vec![leaf.der.clone()],
            key: leaf.key_der(),
            versions: Versions::Both,
            alpn: vec![b"http/1.1".to_vec()],
            client_ca: None,
        }
    }

    fn config(self) -> Arc<ServerConfig> {
        let v: &[&'static rustls::SupportedProtocolVersion] = match self.versions {
            Versions::Both => &[&rustls::version::TLS13, &rustls::version::TLS12],
            Versions::Only12 => &[&rustls::version::TLS12],
            Versions::Only13 => &[&rustls::version::TLS13],
        };
        let b = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(v)
            .unwrap();
        let b = match self.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca).unwrap();
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                        .build()
                        .unwrap();
                b.with_client_cert_verifier(verifier)
            }
            None => b.with_no_client_auth(),
        };
        let mut cfg = b.with_single_cert(self.chain, self.key).unwrap();
        cfg.alpn_protocols = self.alpn;
        Arc::new(cfg)
    }
}

// ---------------------------------------------------------------------
// A TLS upstream: one thread accepting, one thread per connection.

type Conn = rustls::StreamOwned<ServerConnection, TcpStream>;

/// What a connection's handler saw, for the test to look at.
#[derive(Default)]
struct Seen {
    /// SNI of each completed handshake.
    sni: Mutex<Vec<Option<String>>>,
    /// How each handshake went (full or resumed).
    kinds: Mutex<Vec<Option<HandshakeKind>>>,
    /// Request heads, in order.
    heads: Mutex<Vec<String>>,
    /// Connection threads that have ended.
    ended: AtomicUsize,
    /// Handshakes that failed.
    failed_handshakes: AtomicUsize,
}

struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

/// Context handed to a connection handler.
struct Ctx {
    /// 0-based index of this connection.
    conn: usize,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
    config: Arc<ServerConfig>,
}

impl Ctx {
    /// Runs the server handshake; records SNI and handshake kind.
    fn handshake(&self, sock: TcpStream) -> Option<Conn> {
        let conn = ServerConnection::new(Arc::clone(&self.config)).unwrap();
        let mut s = rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            if s.conn.complete_io(&mut s.sock).is_err() {
                // Let the alert out.
                let _ = s.conn.write_tls(&mut s.sock);
                self.seen.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                return None;
            }
        }
        // Flush what remains of the server's flight (TLS 1.3 tickets).
        while s.conn.wants_write() {
            if s.conn.write_tls(&mut s.sock).is_err() {
                return None;
            }
        }
        self.seen
            .sni
            .lock()
            .unwrap()
            .push(s.conn.server_name().map(str::to_string));
        self.seen
            .kinds
            .lock()
            .unwrap()
            .push(s.conn.handshake_kind());
        Some(s)
    }

    /// Waits (bounded) until the test ends.
    fn hold(&self) {
        let start = Instant::now();
        while !self.stop.load(Ordering::SeqCst) && start.elapsed() < GUARD {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// One request read from a TLS connection (Content-Length bodies only).
struct Req {
    head: String,
    body: Vec<u8>,
}

impl Req {
    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }
}

/// Reads one request; `None` at a close or error before a whole one.
fn read_request(s: &mut Conn, seen: &Seen) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let end = loop {
        if let Some(i) = shardline_tests::client::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = buf[end..].to_vec();
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    seen.heads.lock().unwrap().push(head.clone());
    Some(Req { head, body })
}

/// Writes all queued TLS records to the socket.
fn flush_tls(s: &mut Conn) {
    while s.conn.wants_write() {
        if s.conn.write_tls(&mut s.sock).is_err() {
            return;
        }
    }
}

/// Writes `bytes` and flushes them; breaks when either fails.
fn send(s: &mut Conn, bytes: &[u8]) -> ControlFlow<()> {
    if s.write_all(bytes).is_err() || s.flush().is_err() {
        return ControlFlow::Break(());
    }
    ControlFlow::Continue(())
}

/// A 200 with a Content-Length body.
fn ok(body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

impl TlsUpstream {
    /// `handler` owns each accepted TCP connection.
    fn start(
        config: Arc<ServerConfig>,
        handler: impl Fn(&Ctx, TcpStream) + Send + Sync + 'static,
    ) -> TlsUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Seen::default());
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let handler = Arc::new(handler);
        let thread = {
            let (seen, stop, accepted) = (seen.clone(), stop.clone(), accepted.clone());
            std::thread::spawn(move || {
                for sock in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(sock) = sock else { continue };
                    sock.set_read_timeout(Some(GUARD)).unwrap();
                    sock.set_write_timeout(Some(GUARD)).unwrap();
                    sock.set_nodelay(true).unwrap();
                    let ctx = Ctx {
                        conn: accepted.fetch_add(1, Ordering::SeqCst),
                        seen: seen.clone(),
                        stop: stop.clone(),
                        config: Arc::clone(&config),
                    };
                    let handler = Arc::clone(&handler);
                    std::thread::spawn(move || {
                        handler(&ctx, sock);
                        ctx.seen.ended.fetch_add(1, Ordering::SeqCst);
                    });
                }
            })
        };
        TlsUpstream {
            addr,
            seen,
            stop,
            accepted,
            thread: Some(thread),
        }
    }

    /// [`TlsUpstream::start`] with the handshake done: `handler` gets each
    /// connection that completed one.
    fn handshaken(
        config: Arc<ServerConfig>,
        handler: impl Fn(&Ctx, Conn) + Send + Sync + 'static,
    ) -> TlsUpstream {
        TlsUpstream::start(config, move |ctx, sock| {
            let Some(s) = ctx.handshake(sock) else {
                return;
            };
            handler(ctx, s);
        })
    }

    /// An upstream that reads one request on each connection and hands it
    /// to `handler`; a connection closed before a whole request is dropped.
    fn one_request(
        config: Arc<ServerConfig>,
        handler: impl Fn(&Ctx, Conn, Req) + Send + Sync + 'static,
    ) -> TlsUpstream {
        TlsUpstream::handshaken(config, move |ctx, mut s| {
            let Some(req) = read_request(&mut s, &ctx.seen) else {
                return;
            };
            handler(ctx, s, req);
        })
    }

    /// An upstream that hands each keep-alive request to `handler` until
    /// the connection closes or `handler` breaks (then it is dropped).
    fn each_request(
        config: Arc<ServerConfig>,
        handler: impl Fn(&Ctx, &mut Conn, Req) -> ControlFlow<()> + Send + Sync + 'static,
    ) -> TlsUpstream {
        TlsUpstream::handshaken(config, move |ctx, mut s| {
            while let Some(req) = read_request(&mut s, &ctx.seen) {
                if handler(ctx, &mut s, req).is_break() {
                    return;
                }
            }
        })
    }

    /// An upstream serving keep-alive requests with `answer` (the full
    /// response bytes for request `n`, 0-based over the upstream).
    fn serve(
        config: Arc<ServerConfig>,
        answer: impl Fn(usize, &Req) -> Vec<u8> + Send + Sync + 'static,
    ) -> TlsUpstream {
        let n = Arc::new(AtomicUsize::new(0));
        TlsUpstream::handshaken(config, move |ctx, mut s| {
            while let Some(req) = read_request(&mut s, &ctx.seen) {
                let i = n.fetch_add(1, Ordering::SeqCst);
                if send(&mut s, &answer(i, &req)).is_break() {
                    return;
                }
            }
            s.conn.send_close_notify();
            flush_tls(&mut s);
        })
    }

    /// Answers every request with `200 up:<path>`.
    fn hello(config: Arc<ServerConfig>) -> TlsUpstream {
        TlsUpstream::serve(config, |_, r| ok(format!("up:{}", r.path()).as_bytes()))
    }

    /// [`TlsUpstream::hello`] showing a certificate for `name` from `ca`.
    fn hello_as(ca: &Ca, name: &str) -> TlsUpstream {
        TlsUpstream::hello(UpTls::new(&ca.server(&[name])).config())
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn requests(&self) -> usize {
        self.seen.heads.lock().unwrap().len()
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------
// The gateway.

/// A gateway proxying `/{*rest}` to `targets` with this `tls` table (TOML
/// inline-table body) and extra upstream lines.
fn gateway(targets: &[String], tls_keys: &str, extra: &str) -> TestServer {
    gateway_route(targets, tls_keys, extra, "")
}

/// [`gateway`] with extra lines for the route too.
fn gateway_route(targets: &[String], tls_keys: &str, extra: &str, route: &str) -> TestServer {
    let list = targets
        .iter()
        .map(|t| format!("\"{t}\""))
        .collect::<Vec<_>>()
        .join(", ");
    TestServer::start_toml(&format!(
        "[[upstreams]]\nname = \"u\"\ntargets = [{list}]\ntls = {{ {tls_keys} }}\n{extra}\n\n[[routes]]\nname = \"proxy\"\npath = \"/{{*rest}}\"\nupstream = \"u\"\n{route}\n"
    ))
}

struct Pki {
    dir: ScratchDir,
    ca: Ca,
    ca_file: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = ScratchDir::new("utls");
        let ca = Ca::new("upstream test CA");
        let ca_file = dir.write("up-ca.crt", &ca.pem());
        Pki { dir, ca, ca_file }
    }

    fn ca_key(&self) -> String {
        format!("ca = \"{}\"", self.ca_file)
    }

    /// What an upstream on 127.0.0.1 offers by default: a certificate for
    /// that address, signed by this CA.
    fn loopback(&self) -> UpTls {
        UpTls::new(&self.ca.server(&["127.0.0.1"]))
    }
}

/// A gateway whose one target is `up`, trusting `pki`'s CA.
fn gateway_to(pki: &Pki, up: &TlsUpstream) -> TestServer {
    gateway_to_route(pki, up, "")
}

/// [`gateway_to`] with extra lines for the route.
fn gateway_to_route(pki: &Pki, up: &TlsUpstream, route: &str) -> TestServer {
    gateway_route(&[https(up.port())], &pki.ca_key(), "", route)
}

fn https(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

fn problem_detail(r: &shardline_tests::Response) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["detail"].as_str().unwrap_or("").to_string()
}

/// Sends `GET path` on a new client of `gw` and reads the answer, keeping
/// a truncated one as the error it is.
fn send_get(gw: &TestServer, path: &str) -> Result<shardline_tests::Response, ReadError> {
    let mut c = gw.client();
    c.send(&get(path, &[]));
    c.read_response(false)
}

/// `len` bytes of the shared test pattern, from offset 0.
fn pattern_body(len: usize) -> Vec<u8> {
    let block = pattern_block();
    let mut body = Vec::with_capacity(len);
    while body.len() < len {
        body.extend_from_slice(&block);
    }
    body.truncate(len);
    body
}

// ---------------------------------------------------------------------
// Certificate checks.

#[test]
fn a_certificate_for_another_name_fails_and_the_next_target_answers() {
    let pki = Pki::new();
    let wrong = TlsUpstream::hello_as(&pki.ca, "other.test");
    let right = TlsUpstream::hello_as(&pki.ca, "127.0.0.1");
    // Alone, the wrong one is a 502 that says TLS.
    let gw = gateway_to(&pki, &wrong);
    let r = gw.client().request(&get("/a", &[]));
    assert_problem(&r, 502);
    assert!(problem_detail(&r).contains("TLS"), "{}", r.text());
    assert_eq!(
        wrong.requests(),
        0,
        "nothing is sent over a refused handshake"
    );

    // With a second target, every request ends on the right one, POSTs too
    // (nothing was sent, so a failed handshake is a connect failure).
    let gw = gateway(
        &[https(wrong.port()), https(right.port())],
        &pki.ca_key(),
        "retry = { attempts = 2, backoff = \"1ms\" }\ncircuit_breaker = { consecutive_failures = 100, open_for = \"10s\" }",
    );
    let mut c = gw.client();
    for i in 0..4 {
        let r = c.request(&get(&format!("/g{i}"), &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), format!("up:/g{i}"));
    }
    assert_eq!(wrong.requests(), 0);
    assert!(wrong.seen.failed_handshakes.load(Ordering::SeqCst) >= 1);
}

#[test]
fn server_name_is_the_sni_and_the_name_checked() {
    let pki = Pki::new();
    let up = TlsUpstream::hello_as(&pki.ca, "billing.internal");
    // An IP target with no override: no SNI, and the certificate has no IP
    // SAN, so it is refused.
    let gw = gateway_to(&pki, &up);
    assert_problem(&gw.client().request(&get("/x", &[])), 502);
    // The override names the certificate's DNS name: served, and the SNI
    // the upstream saw is that name.
    let gw = gateway(
        &[https(up.port())],
        &format!("{}, server_name = \"billing.internal\"", pki.ca_key()),
        "",
    );
    let r = gw.client().request(&get("/x", &[]));
    assert_eq!(
        (r.status, r.text().as_str()),
        (200, "up:/x"),
        "{}",
        r.summary()
    );
    let sni = up.seen.sni.lock().unwrap().clone();
    assert_eq!(sni.last().unwrap().as_deref(), Some("billing.internal"));
    // Names compare without regard to case (RFC 6125).
    let gw = gateway(
        &[https(up.port())],
        &format!("{}, server_name = \"BILLING.Internal\"", pki.ca_key()),
        "",
    );
    assert_eq!(gw.client().request(&get("/y", &[])).status, 200);
    // A DNS target's host is the default SNI.
    let loc = TlsUpstream::hello_as(&pki.ca, "localhost");
    let gw = gateway(
        &[format!("https://localhost:{}", loc.port())],
        &pki.ca_key(),
        "",
    );
    let r = gw.client().request(&get("/z", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        loc.seen.sni.lock().unwrap().last().unwrap().as_deref(),
        Some("localhost")
    );
}

#[test]
fn an_ip_server_name_override_needs_an_ip_san() {
    let pki = Pki::new();
    let ip = TlsUpstream::hello_as(&pki.ca, "127.0.0.1");
    let gw = gateway(
        &[format!("https://localhost:{}", ip.port())],
        &format!("{}, server_name = \"127.0.0.1\"", pki.ca_key()),
        "",
    );
    let r = gw.client().request(&get("/ip", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    // rustls sends no SNI for an IP address (RFC 6066 §3).
    assert_eq!(ip.seen.sni.lock().unwrap().last().unwrap().as_deref(), None);
    // A certificate naming "127.0.0.1" only as a DNS-style CN does not
    // cover the IP address.
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "127.0.0.1");
    p.subject_alt_names
        .push(SanType::DnsName("localhost".try_into().unwrap()));
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cn_only = sign(&pki.ca, p);
    let up = TlsUpstream::hello(UpTls::new(&cn_only).config());
    let gw = gateway_to(&pki, &up);
    assert_problem(&gw.client().request(&get("/cn", &[])), 502);
    assert_eq!(up.requests(), 0);
}

#[test]
fn expired_and_not_yet_valid_upstream_certificates_are_refused() {
    let pki = Pki::new();
    for (years, what) in [((2000, 2001), "expired"), ((2090, 2099), "not yet valid")] {
        let up = TlsUpstream::hello(
            UpTls::new(&pki.ca.server_valid(&["127.0.0.1"], Some(years))).config(),
        );
        let gw = gateway_to(&pki, &up);
        let r = gw.client().request(&get("/x", &[]));
        assert_problem(&r, 502);
        assert!(problem_detail(&r).contains("TLS"), "{what}: {}", r.text());
        assert_eq!(up.requests(), 0, "{what}");
    }
}

#[test]
fn a_chain_missing_its_intermediate_is_refused_and_the_full_chain_verifies() {
    let pki = Pki::new();
    let inter = pki.ca.intermediate("upstream intermediate");
    let l = inter.server(&["127.0.0.1"]);
    let bare = TlsUpstream::hello(UpTls::new(&l).config());
    let mut full = UpTls::new(&l);
    full.chain.push(inter.cert.der().clone());
    let full = TlsUpstream::hello(full.config());
    let gw = gateway_to(&pki, &bare);
    assert_problem(&gw.client().request(&get("/x", &[])), 502);
    let gw = gateway_to(&pki, &full);
    let r = gw.client().request(&get("/x", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[test]
fn a_ca_bundle_trusts_upstreams_of_each_of_its_cas() {
    let pki = Pki::new();
    let other = Ca::new("second upstream CA");
    let third = Ca::new("third upstream CA");
    let a = TlsUpstream::hello_as(&pki.ca, "127.0.0.1");
    let b = TlsUpstream::hello_as(&other, "127.0.0.1");
    let c = TlsUpstream::hello_as(&third, "127.0.0.1");
    // A bundle with comments and blank lines between the certificates.
    let bundle = pki.dir.write(
        "bundle.crt",
        &format!("# first\n{}\n\n# second\n{}", pki.ca.pem(), other.pem()),
    );
    for (up, want) in [(&a, 200), (&b, 200), (&c, 502)] {
        let gw = gateway(&[https(up.port())], &format!("ca = \"{bundle}\""), "");
        let r = gw.client().request(&get("/b", &[]));
        assert_eq!(r.status, want, "{}", r.summary());
    }
}

#[test]
fn a_long_certificate_chain_is_accepted() {
    let pki = Pki::new();
    // leaf, its intermediate, then 40 unrelated CA certificates (about 20
    // KiB of handshake): path building ignores what it does not need.
    let inter = pki.ca.intermediate("upstream intermediate");
    let l = inter.server(&["127.0.0.1"]);
    let mut t = UpTls::new(&l);
    t.chain.push(inter.cert.der().clone());
    for i in 0..40 {
        t.chain
            .push(Ca::new(&format!("padding CA {i}")).cert.der().clone());
    }
    let up = TlsUpstream::hello(t.config());
    let gw = gateway_to(&pki, &up);
    let r = gw.client().request(&get("/long", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[test]
fn an_upstream_that_requires_a_client_certificate_is_a_clear_502() {
    let pki = Pki::new();
    for versions in [Versions::Only12, Versions::Only13] {
        let mut t = pki.loopback();
        t.versions = versions;
        t.client_ca = Some(pki.ca.cert.der().clone());
        let up = TlsUpstream::hello(t.config());
        let gw = gateway_to(&pki, &up);
        let mut c = gw.client();
        for req in [get("/x", &[]), post("/p", &[], b"body")] {
            let r = c.request(&req);
            assert_problem(&r, 502);
        }
        assert_eq!(up.requests(), 0, "{versions:?}");
    }
}

#[test]
fn tls12_only_and_tls13_only_upstreams_are_served_and_pooled() {
    let pki = Pki::new();
    for versions in [Versions::Only12, Versions::Only13] {
        let mut t = pki.loopback();
        t.versions = versions;
        let up = TlsUpstream::hello(t.config());
        let gw = gateway_to(&pki, &up);
        let mut c = gw.client();
        for i in 0..5 {
            let r = c.request(&get(&format!("/v{i}"), &[]));
            assert_eq!(r.status, 200, "{versions:?}: {}", r.summary());
        }
        let r = c.request(&post("/post", &[], b"payload"));
        assert_eq!(r.status, 200, "{versions:?}: {}", r.summary());
        assert_eq!(up.accepted(), 1, "{versions:?}: one pooled connection");
    }
}

#[test]
fn an_h2_only_upstream_is_refused_cleanly() {
    let pki = Pki::new();
    let mut t = pki.loopback();
    t.alpn = vec![b"h2".to_vec()];
    let up = TlsUpstream::hello(t.config());
    let gw = gateway_to(&pki, &up);
    let r = gw.client().request(&get("/h2", &[]));
    assert_problem(&r, 502);
    assert_eq!(up.requests(), 0);
    // An upstream without ALPN is served (http/1.1 is assumed).
    let mut t = pki.loopback();
    t.alpn = vec![];
    let up = TlsUpstream::hello(t.config());
    let gw = gateway_to(&pki, &up);
    assert_eq!(gw.client().request(&get("/none", &[])).status, 200);
}

#[test]
fn a_stalled_handshake_is_bounded_by_connect_timeout_and_the_next_target_answers() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    // Accepts TCP, reads the ClientHello, answers nothing.
    let stall = TlsUpstream::start(Arc::clone(&cfg), |ctx, mut sock| {
        let mut b = [0u8; 1024];
        let _ = sock.read(&mut b);
        ctx.hold();
    });
    let good = TlsUpstream::hello(cfg);
    let gw = gateway(
        &[https(stall.port())],
        &pki.ca_key(),
        "connect_timeout = \"300ms\"\nrequest_timeout = \"5s\"",
    );
    let started = Instant::now();
    let r = gw.client().request(&get("/s", &[]));
    assert_problem(&r, 504);
    assert!(started.elapsed() < GUARD, "bounded");
    let gw = gateway(
        &[https(stall.port()), https(good.port())],
        &pki.ca_key(),
        "connect_timeout = \"300ms\"\nrequest_timeout = \"5s\"\nretry = { attempts = 2, backoff = \"1ms\" }",
    );
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.request(&get("/s", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
}

// ---------------------------------------------------------------------
// Closing: close_notify, bare TCP closes, truncation.

#[test]
fn a_content_length_body_cut_without_close_notify_is_never_complete() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    // Head declares 200000 bytes; 100000 arrive, then TCP closes with no
    // close_notify.
    let up = TlsUpstream::one_request(cfg, |_, mut s, _| {
        let mut r = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".to_vec();
        r.extend(std::iter::repeat_n(b'x', 100_000));
        let _ = send(&mut s, &r);
        let _ = s.sock.shutdown(Shutdown::Both);
    });
    let gw = gateway_to(&pki, &up);
    match send_get(&gw, "/cut") {
        Ok(r) => {
            // A clean answer is allowed only if nothing had gone out yet.
            assert_eq!(r.status, 502, "{}", r.summary());
        }
        Err(e) => assert!(matches!(e, ReadError::Truncated { .. }), "{e}"),
    }
}

#[test]
fn a_chunked_body_cut_without_close_notify_is_never_complete() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    let up = TlsUpstream::one_request(cfg, |_, mut s, _| {
        let _ = send(
            &mut s,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        );
        std::thread::sleep(Duration::from_millis(50));
        let _ = send(&mut s, b"6\r\n world\r\n");
        let _ = s.sock.shutdown(Shutdown::Both);
    });
    let gw = gateway_to(&pki, &up);
    match send_get(&gw, "/cut") {
        Ok(r) => assert_eq!(r.status, 502, "{}", r.summary()),
        Err(e) => assert!(matches!(e, ReadError::Truncated { .. }), "{e}"),
    }
}

/// An upstream answering with a close-delimited body (no Content-Length,
/// no chunked), then closing with or without `close_notify`.
fn close_delimited_upstream(pki: &Pki, close_notify: bool) -> TlsUpstream {
    let cfg = pki.loopback().config();
    TlsUpstream::one_request(cfg, move |_, mut s, _| {
        let _ = send(
            &mut s,
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nfirst part, ",
        );
        std::thread::sleep(Duration::from_millis(50));
        let _ = send(&mut s, b"second part");
        if close_notify {
            s.conn.send_close_notify();
            flush_tls(&mut s);
        }
        let _ = s.sock.shutdown(Shutdown::Both);
    })
}

#[test]
fn a_close_delimited_body_ended_by_close_notify_is_complete() {
    let pki = Pki::new();
    let up = close_delimited_upstream(&pki, true);
    let gw = gateway_to(&pki, &up);
    let r = gw.client().request(&get("/cd", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "first part, second part");
}

/// RFC 9112 §9.8: "A response that has neither chunked transfer coding nor
/// Content-Length is complete only if a valid closure alert has been
/// received." Without `close_notify` the end of the body is not known: an
/// attacker on the path can cut it anywhere with a forged FIN.
#[test]
fn a_close_delimited_body_cut_without_close_notify_is_not_complete() {
    let pki = Pki::new();
    let up = close_delimited_upstream(&pki, false);
    let gw = gateway_to(&pki, &up);
    match send_get(&gw, "/cd") {
        Ok(r) => panic!(
            "a truncated body was presented as complete: {} {:?}",
            r.summary(),
            r.text()
        ),
        Err(e) => assert!(matches!(e, ReadError::Truncated { .. }), "{e}"),
    }
}

#[test]
fn a_complete_response_then_a_bare_tcp_close_is_fine() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    let up = TlsUpstream::handshaken(cfg, |ctx, mut s| {
        if let Some(r) = read_request(&mut s, &ctx.seen) {
            let _ = send(&mut s, &ok(format!("bye:{}", r.path()).as_bytes()));
        }
        // No close_notify.
        let _ = s.sock.shutdown(Shutdown::Both);
    });
    let gw = gateway_to(&pki, &up);
    let mut c = gw.client();
    for i in 0..3 {
        let r = c.request(&get(&format!("/{i}"), &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.text(), format!("bye:/{i}"));
        // Wait until the upstream has closed it, so the next request is
        // not racing the close.
        assert!(wait_until(GUARD, || up.seen.ended.load(Ordering::SeqCst) > i));
        let r = c.request(&post(&format!("/p{i}"), &[], b"x"));
        assert_eq!(r.status, 200, "POST after a bare close: {}", r.summary());
        assert!(wait_until(GUARD, || up.seen.ended.load(Ordering::SeqCst) > i + 1));
    }
}

/// The upstream sends its response and `close_notify` in one flight, and
/// leaves the TCP connection open: rustls has read the alert with the
/// response, so the socket itself shows nothing (no FIN, no bytes).
#[test]
fn close_notify_right_after_a_response_retires_the_connection() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    let up = TlsUpstream::one_request(cfg, |ctx, mut s, r| {
        // One write: the response record and the alert go out together.
        s.conn
            .writer()
            .write_all(&ok(format!("once:{}", r.path()).as_bytes()))
            .unwrap();
        s.conn.send_close_notify();
        flush_tls(&mut s);
        ctx.hold();
    });
    let gw = gateway_to(&pki, &up);
    let mut c = gw.client();
    let r = c.request(&get("/a", &[]));
    assert_eq!((r.status, r.text().as_str()), (200, "once:/a"));
    // Not replayable: a broken reused connection cannot be retried.
    let r = c.request(&post("/b", &[], b"payload"));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), "once:/b");
}

/// Extra bytes after a complete response, in the same TLS record: the
/// connection must not go back to the pool with them still buffered in
/// rustls, or they become the answer to the next request.
#[test]
fn bytes_after_a_response_never_answer_a_later_request() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    let smuggled = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nSMUGGLED";
    // Counted over all connections: only the very first response carries
    // the extra bytes (the gateway drops that connection, and the next
    // request must get its own answer on a new one).
    let answered = Arc::new(AtomicUsize::new(0));
    let up = TlsUpstream::each_request(cfg, move |_, s, r| {
        let mut resp = Vec::new();
        if answered.fetch_add(1, Ordering::SeqCst) == 0 {
            // Exactly 4 KiB of response (the gateway's first read
            // buffer), then another response nobody asked for.
            let head_len = "HTTP/1.1 200 OK\r\nContent-Length: 0000\r\n\r\n".len();
            let body = vec![b'a'; 4096 - head_len];
            resp =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            assert_eq!(resp.len(), head_len);
            resp.extend_from_slice(&body);
            resp.extend_from_slice(smuggled);
        } else {
            resp.extend_from_slice(&ok(format!("real:{}", r.path()).as_bytes()));
        }
        s.conn.writer().write_all(&resp).unwrap();
        flush_tls(s);
        ControlFlow::Continue(())
    });
    let gw = gateway_to(&pki, &up);
    let mut c = gw.client();
    let r = c.request(&get("/first", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body.len(), 4096 - 41);
    for path in ["/second", "/third"] {
        let r = c.request(&get(path, &[]));
        assert_ne!(r.text(), "SMUGGLED", "{path}: a stale response was served");
        assert_eq!(r.text(), format!("real:{path}"), "{}", r.summary());
    }
}

#[test]
fn a_pooled_connection_closed_while_idle_is_not_used_for_a_post() {
    let pki = Pki::new();
    for close_notify in [true, false] {
        let cfg = pki.loopback().config();
        let closed_one = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&closed_one);
        let up = TlsUpstream::each_request(cfg, move |ctx, s, r| {
            let _ = send(s, &ok(format!("c{}:{}", ctx.conn, r.path()).as_bytes()));
            if ctx.conn == 0 {
                // The first connection closes after one answer, a
                // moment later (the gateway has pooled it by then).
                std::thread::sleep(Duration::from_millis(100));
                if close_notify {
                    s.conn.send_close_notify();
                    flush_tls(s);
                }
                let _ = s.sock.shutdown(Shutdown::Both);
                flag.store(true, Ordering::SeqCst);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        });
        let gw = gateway_to(&pki, &up);
        let mut c = gw.client();
        let r = c.request(&get("/a", &[]));
        assert_eq!(r.text(), "c0:/a");
        assert!(wait_until(GUARD, || closed_one.load(Ordering::SeqCst)));
        // Let the FIN (and alert) land.
        std::thread::sleep(Duration::from_millis(50));
        let r = c.request(&post("/b", &[], b"payload"));
        assert_eq!(
            r.status,
            200,
            "close_notify={close_notify}: {}",
            r.summary()
        );
        assert_eq!(r.text(), "c1:/b");
    }
}

// ---------------------------------------------------------------------
// Records, sizes, resumption.

#[test]
fn a_chunked_response_in_one_byte_records_arrives_whole() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    let up = TlsUpstream::each_request(cfg, |_, s, _| {
        let mut r =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Split: yes\r\n\r\n".to_vec();
        r.extend_from_slice(&shardline_tests::request::chunked(&[
            b"hello ",
            b"over ",
            b"tiny records",
        ]));
        for b in r {
            // One TLS record per byte.
            send(s, &[b])?;
        }
        ControlFlow::Continue(())
    });
    let gw = gateway_to(&pki, &up);
    let mut c = gw.client();
    for _ in 0..2 {
        let r = c.request(&get("/split", &[]));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.header("x-split").as_deref(), Some("yes"));
        assert_eq!(r.text(), "hello over tiny records");
    }
    assert_eq!(up.accepted(), 1);
}

#[test]
fn large_bodies_both_ways_keep_every_byte() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    const LEN: usize = 6 << 20;
    let up = TlsUpstream::each_request(cfg, |_, s, r| {
        let resp = if r.path() == "/up" {
            let good = r.body.len() == LEN && pattern_matches(0, &r.body);
            ok(format!("len={} good={good}", r.body.len()).as_bytes())
        } else {
            ok(&pattern_body(LEN))
        };
        send(s, &resp)
    });
    let gw = gateway_to_route(&pki, &up, "max_body_bytes = \"64MiB\"");
    let mut c = gw.client();
    let r = c.request(&get("/down", &[]));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body.len(), LEN);
    assert!(pattern_matches(0, &r.body), "download corrupted");
    let r = c.request(&post("/up", &[], &pattern_body(LEN)));
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.text(), format!("len={LEN} good=true"));
    assert_eq!(up.accepted(), 1);
}

#[test]
fn new_upstream_connections_resume_the_tls_session() {
    let pki = Pki::new();
    for versions in [Versions::Only12, Versions::Only13] {
        let mut t = pki.loopback();
        t.versions = versions;
        let up = TlsUpstream::hello(t.config());
        // No pool: each request is a new connection and a new handshake.
        let gw = gateway(
            &[https(up.port())],
            &pki.ca_key(),
            "pool_size_per_shard = 0",
        );
        let mut c = gw.client();
        for i in 0..3 {
            let r = c.request(&get(&format!("/r{i}"), &[]));
            assert_eq!(r.status, 200, "{versions:?}: {}", r.summary());
        }
        assert_eq!(up.accepted(), 3, "{versions:?}");
        let kinds = up.seen.kinds.lock().unwrap().clone();
        assert_eq!(kinds[0], Some(HandshakeKind::Full), "{versions:?}");
        assert!(
            kinds[1..]
                .iter()
                .all(|k| *k == Some(HandshakeKind::Resumed)),
            "{versions:?}: {kinds:?}"
        );
    }
}

// ---------------------------------------------------------------------
// mTLS identities in policies.

struct MtlsGw {
    dir: ScratchDir,
    ca: Ca,
    server: TestServer,
}

impl MtlsGw {
    fn new(auth_extra: &str) -> MtlsGw {
        let dir = ScratchDir::new("utls-mtls");
        let ca = Ca::new("mtls games CA");
        let leaf = ca.server(&["localhost", "127.0.0.1"]);
        let cert = dir.write("server.crt", &leaf.cert_pem);
        let key = dir.write("server.key", &leaf.key_pem);
        let ca_file = dir.write("clients-ca.crt", &ca.pem());
        let access = tls::toml_path(&dir.path("access.jsonl"));
        let audit = tls::toml_path(&dir.path("audit.jsonl"));
        let text = format!(
            r#"
[server.tls]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
client_auth = {{ ca = "{ca_file}", required = false }}

[observability]
access_log = "{access}"
audit_log = "{audit}"

[auth.certs]
type = "mtls"
{auth_extra}

[[routes]]
name = "limited"
method = "GET"
path = "/limited"
respond = {{ status = 200, body = "ok" }}
auth = "certs"
rate_limit = {{ per_minute = 1, key = "consumer" }}

[[routes]]
name = "open"
method = "GET"
path = "/open"
respond = {{ status = 200, body = "open" }}
auth = "certs"

[[routes]]
name = "scoped"
method = "GET"
path = "/scoped"
respond = {{ status = 200, body = "scoped" }}
auth = "certs"
scopes = ["admin"]
"#
        );
        let server = TestServer::start_toml(&text);
        MtlsGw { dir, ca, server }
    }

    fn request(&self, leaf: Option<&Leaf>, path: &str) -> tls::TlsResponse {
        let cfg = tls::client_config(&self.ca, leaf, Versions::Both);
        tls::try_request(self.server.tls_addr(), &cfg, path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    /// The whole lines of log file `name` so far, each with its `\n`.
    fn log_lines(&self, name: &str) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.path(name)).unwrap_or_default();
        // Whole lines only (one may be half written as we read).
        text.split_inclusive('\n')
            .filter(|l| l.ends_with('\n'))
            .map(str::to_string)
            .collect()
    }

    /// The access log's lines, each parsed as JSON, once `n` are there.
    fn access_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        let ok = wait_until(GUARD, || {
            lines = self
                .log_lines("access.jsonl")
                .iter()
                .map(|l| {
                    serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l:?}"))
                })
                .collect();
            lines.len() >= n
        });
        assert!(ok, "access log has {} of {n} lines", lines.len());
        lines
    }
}

#[test]
fn odd_identities_are_separate_rate_limit_keys_and_logged_exactly() {
    let g = MtlsGw::new("");
    let names = [
        "a,b",
        "a",
        "say \"hi\"",
        "back\\slash",
        "Zoë, Ångström",
        "CN=evil,O=x",
        "tab\there",
        "nul\0byte",
        "line\nbreak",
    ];
    let leaves: Vec<Leaf> = names
        .iter()
        .map(|n| g.ca.client_cn_value(DnValue::Utf8String((*n).to_string())))
        .collect();
    // Each identity has its own budget of one per minute.
    for (n, l) in names.iter().zip(&leaves) {
        let r = g.request(Some(l), "/limited");
        assert_eq!(r.status, 200, "{n:?}: {}", r.head);
    }
    for (n, l) in names.iter().zip(&leaves) {
        let r = g.request(Some(l), "/limited");
        assert_eq!(r.status, 429, "{n:?}: {}", r.head);
    }
    // The access log holds each identity exactly, as valid JSON.
    let lines = g.access_lines(2 * names.len());
    for n in names {
        let count = lines
            .iter()
            .filter(|l| l["consumer"].as_str() == Some(n) && l["status"] == 200)
            .count();
        assert_eq!(count, 1, "{n:?} in {lines:?}");
    }
    // The audit log too.
    let mut audit = Vec::new();
    assert!(wait_until(GUARD, || {
        audit = g
            .log_lines("audit.jsonl")
            .iter()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect();
        names
            .iter()
            .all(|n| audit.iter().any(|l| l["consumer"].as_str() == Some(n)))
    }));
}

#[test]
fn identities_in_other_string_encodings_share_a_budget_with_utf8() {
    // PrintableString and UTF8String "alice" are the same identity, and so
    // are BMPString and UTF8String "Zoë".
    let g = MtlsGw::new("");
    let a1 =
        g.ca.client_cn_value(DnValue::PrintableString("alice".try_into().unwrap()));
    let a2 = g.ca.client_cn_value(DnValue::Utf8String("alice".into()));
    assert_eq!(g.request(Some(&a1), "/limited").status, 200);
    assert_eq!(g.request(Some(&a2), "/limited").status, 429);
    let z1 =
        g.ca.client_cn_value(DnValue::BmpString("Zoë".try_into().unwrap()));
    let z2 = g.ca.client_cn_value(DnValue::Utf8String("Zoë".into()));
    assert_eq!(g.request(Some(&z1), "/limited").status, 200);
    assert_eq!(g.request(Some(&z2), "/limited").status, 429);
}

#[test]
fn a_very_long_common_name_is_an_identity_and_a_key() {
    let g = MtlsGw::new("");
    let long_a = "a".repeat(4000);
    let mut long_b = "a".repeat(3999);
    long_b.push('b');
    let la = g.ca.client_cn_value(DnValue::Utf8String(long_a.clone()));
    let lb = g.ca.client_cn_value(DnValue::Utf8String(long_b.clone()));
    assert_eq!(g.request(Some(&la), "/limited").status, 200);
    assert_eq!(
        g.request(Some(&lb), "/limited").status,
        200,
        "distinct keys"
    );
    assert_eq!(g.request(Some(&la), "/limited").status, 429);
    let lines = g.access_lines(3);
    assert!(lines
        .iter()
        .any(|l| l["consumer"].as_str() == Some(long_a.as_str())));
    assert!(lines
        .iter()
        .any(|l| l["consumer"].as_str() == Some(long_b.as_str())));
}

#[test]
fn the_common_name_not_a_san_is_matched_against_allowed_and_scopes() {
    let g = MtlsGw::new(
        "allowed = [\"billing.internal\", \"alice\"]\nscopes = { \"billing.internal\" = [\"admin\"] }",
    );
    // CN alice, SAN billing.internal: the identity is alice (no admin).
    let mut p = CertificateParams::new(vec!["billing.internal".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "alice");
    let both = client_leaf(&g.ca, p);
    assert_eq!(g.request(Some(&both), "/open").status, 200);
    let r = g.request(Some(&both), "/scoped");
    assert_eq!(r.status, 403, "{}", r.head);
    // CN mallory with SAN billing.internal is mallory: not allowed.
    let mut p = CertificateParams::new(vec!["billing.internal".to_string()]).unwrap();
    p.distinguished_name.push(DnType::CommonName, "mallory");
    let sneaky = client_leaf(&g.ca, p);
    let r = g.request(Some(&sneaky), "/open");
    assert_eq!(r.status, 403, "{}", r.head);
    // SAN only: billing.internal, with its scope.
    let svc = g.ca.client_san("billing.internal");
    assert_eq!(g.request(Some(&svc), "/scoped").status, 200);
}

#[test]
fn no_usable_identity_is_a_401_before_the_rate_limit() {
    let g = MtlsGw::new("");
    // A verified certificate naming only an IP address, and no certificate
    // at all: 401 problem+json each time, never a 429 (no consumer, so no
    // key was spent).
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.subject_alt_names
        .push(SanType::IpAddress("10.1.2.3".parse().unwrap()));
    let ip_only = client_leaf(&g.ca, p);
    // An empty common name does not count as one either.
    let empty = g.ca.client_cn_value(DnValue::Utf8String(String::new()));
    for leaf in [Some(&ip_only), Some(&empty), None] {
        for _ in 0..3 {
            let r = g.request(leaf, "/limited");
            assert_eq!(r.status, 401, "{}", r.head);
            assert!(
                r.head
                    .to_ascii_lowercase()
                    .contains("content-type: application/problem+json"),
                "{}",
                r.head
            );
            assert!(r
                .head
                .contains("WWW-Authenticate: ClientCertificate realm=\"certs\""));
        }
    }
    // The plain listener: the same.
    let r = g.server.client().request(&get("/limited", &[]));
    assert_problem(&r, 401);
}

#[test]
fn a_client_certificate_with_two_common_names_is_named_by_the_first() {
    let g = MtlsGw::new("allowed = [\"alice\"]");
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "mallory");
    // rcgen keeps one value per type; a second CN goes in as a custom OID
    // entry of the same type.
    p.distinguished_name.push(
        DnType::CustomDnType(vec![2, 5, 4, 3]),
        DnValue::Utf8String("alice".into()),
    );
    let two = client_leaf(&g.ca, p);
    let r = g.request(Some(&two), "/open");
    // Whichever CN rcgen wrote first decides; both being accepted would be
    // an identity confusion. The one decision must be consistent: the
    // access log names the same identity the allow-list judged.
    let lines = g.access_lines(1);
    let who = lines[0]["consumer"].as_str().map(str::to_string);
    match r.status {
        200 => assert_eq!(who.as_deref(), Some("alice")),
        403 => {}
        s => panic!("unexpected {s}: {}", r.head),
    }
}

/// README (Proxying): an upstream that refuses an upload early gets its
/// answer forwarded; "a write that fails is followed by a look for an
/// answer". Over TLS the look fails: rustls still holds the unsent body
/// records, and the TLS read path flushes them first and returns the
/// write's error instead of reading the 413 that is waiting.
#[test]
fn a_tls_upstream_refusing_a_streamed_upload_early_gets_its_answer_forwarded() {
    let pki = Pki::new();
    let cfg = pki.loopback().config();
    // Reads the head only, answers 413 with close_notify and closes.
    let up = TlsUpstream::handshaken(cfg, |_, mut s| {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while shardline_tests::client::find(&buf, b"\r\n\r\n").is_none() {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = b"too big";
        let _ = s.write_all(
            format!(
                "HTTP/1.1 413 Content Too Large\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        let _ = s.write_all(body);
        s.conn.send_close_notify();
        flush_tls(&mut s);
        let _ = s.sock.shutdown(Shutdown::Write);
        // Stop reading: the gateway's writes fill the window, then the
        // drop resets the connection.
        std::thread::sleep(Duration::from_millis(200));
    });
    let gw = gateway_to_route(&pki, &up, "max_body_bytes = \"64MiB\"");
    let mut c = gw.client();
    const LEN: usize = 32 << 20;
    let mut writer = c.stream().try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let head =
            format!("POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: {LEN}\r\n\r\n");
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        let block = vec![b'u'; 64 * 1024];
        let mut sent = 0;
        while sent < LEN {
            if writer.write_all(&block).is_err() {
                return;
            }
            sent += block.len();
        }
    });
    let r = c.read_response(false).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status, 413, "{}", r.summary());
    assert_eq!(r.text(), "too big");
    drop(c);
    sender.join().unwrap();
}

/// README (access log): `consumer` is "the consumer a route's `auth`
/// admitted the request as, `null` without auth or when it refused". A
/// request the rate limit refuses was admitted by auth first (its
/// consumer is the very key that ran out), so its line should name it.
#[test]
fn rate_limited_requests_name_their_consumer_in_the_access_log() {
    let g = MtlsGw::new("");
    let alice = g.ca.client("alice");
    assert_eq!(g.request(Some(&alice), "/limited").status, 200);
    assert_eq!(g.request(Some(&alice), "/limited").status, 429);
    let lines = g.access_lines(2);
    for l in &lines {
        assert_eq!(l["consumer"].as_str(), Some("alice"), "{l}");
    }
}
