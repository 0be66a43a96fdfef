//! TLS termination: handshakes, versions, ALPN, resumption, SNI, mTLS,
//! reload under open connections, handshake timeout. Certificates are
//! generated per test (rcgen); the client is rustls.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use rustls::HandshakeKind;
use shardline_tests::server::{config_from_toml, TestServer};
use shardline_tests::tls::{self, Ca, Leaf, ScratchDir, Versions};
use shardline_tests::{get, GUARD};

/// A CA, a server certificate for localhost, and the files on disk.
struct Pki {
    dir: ScratchDir,
    ca: Ca,
    cert: String,
    key: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = ScratchDir::new("tls");
        let ca = Ca::new("shardline test CA");
        let leaf = ca.server(&["localhost", "127.0.0.1"]);
        let cert = dir.write("server.crt", &leaf.cert_pem);
        let key = dir.write("server.key", &leaf.key_pem);
        Pki { dir, ca, cert, key }
    }

    fn tls_section(&self, extra: &str) -> String {
        format!(
            "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n{extra}\n",
            self.cert, self.key
        )
    }

    fn start(&self, extra: &str) -> TestServer {
        TestServer::start_toml(&self.tls_section(extra))
    }
}

const WHOAMI_ROUTES: &str = r#"
[[routes]]
name = "whoami"
method = "GET"
path = "/whoami"
handler = "whoami"
"#;

/// A server whose `/whoami` answers the TLS client identity (or "-").
fn start_whoami(pki: &Pki, extra: &str) -> TestServer {
    let text = format!("{}{WHOAMI_ROUTES}", pki.tls_section(extra));
    let server = shardline::Server::new(shardline_tests::server::test_config(config_from_toml(
        &text,
    )))
    .handler("whoami", |_shard| {
        |req: &shardline::Request<'_>, res: &mut shardline::Response<'_, '_>| {
            let who = match (req.is_tls(), req.tls_client_identity()) {
                (false, _) => "plain".to_string(),
                (true, Some(id)) => format!("id={id}"),
                (true, None) => "-".to_string(),
            };
            res.send(200, "text/plain", who.as_bytes())
        }
    });
    TestServer::from_builder(server)
}

#[test]
fn handshake_keep_alive_alpn_and_plain_listener_side_by_side() {
    let pki = Pki::new();
    let server = pki.start("");
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let mut s = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    for _ in 0..3 {
        let r = tls::get(&mut s, "/plaintext").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "Hello, World!");
    }
    // The plain listener still serves plain HTTP.
    let r = server.client().request(&get("/plaintext", &[]));
    assert_eq!(r.status, 200);
    // And the TLS listener does not serve plain HTTP: the handshake fails,
    // the client is told so in a plain 400, and the route never runs.
    let mut raw = TcpStream::connect(server.tls_addr()).unwrap();
    raw.set_read_timeout(Some(GUARD)).unwrap();
    raw.write_all(&get("/plaintext", &[])).unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(!text.contains("Hello, World!"), "{text}");
}

#[test]
fn tls12_is_served_and_min_version_13_refuses_it() {
    let pki = Pki::new();
    let server = pki.start("");
    let cfg12 = tls::client_config(&pki.ca, None, Versions::Only12);
    let mut s = tls::connect(server.tls_addr(), &cfg12, "localhost").unwrap();
    assert_eq!(
        s.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls::get(&mut s, "/json").unwrap().status, 200);
    drop(server);

    let server = pki.start("min_version = \"1.3\"");
    assert!(tls::try_request(server.tls_addr(), &cfg12, "/json").is_err());
    let cfg13 = tls::client_config(&pki.ca, None, Versions::Only13);
    assert_eq!(
        tls::try_request(server.tls_addr(), &cfg13, "/json")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn a_client_offering_only_other_alpn_protocols_is_refused() {
    let pki = Pki::new();
    let server = pki.start("");
    let mut cfg = (*tls::client_config(&pki.ca, None, Versions::Both)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let cfg = std::sync::Arc::new(cfg);
    assert!(tls::try_request(server.tls_addr(), &cfg, "/json").is_err());
}

/// `start_whoami` with client certificates verified against the PKI's CA
/// (written to `clients-ca.crt`, whose path is returned).
fn start_mtls(pki: &Pki, required: bool) -> (String, TestServer) {
    let ca_file = pki.dir.write("clients-ca.crt", &pki.ca.pem());
    let server = start_whoami(
        pki,
        &format!("client_auth = {{ ca = \"{ca_file}\", required = {required} }}"),
    );
    (ca_file, server)
}

fn resumes(versions: Versions) {
    let pki = Pki::new();
    let server = pki.start("");
    // One client config: its session store carries the ticket over.
    let cfg = tls::client_config(&pki.ca, None, versions);
    let mut first = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    assert_eq!(first.conn.handshake_kind(), Some(HandshakeKind::Full));
    // TLS 1.3 tickets arrive after the handshake: read a response so the
    // client has processed them.
    assert_eq!(tls::get(&mut first, "/plaintext").unwrap().status, 200);
    drop(first);
    let mut second = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    assert_eq!(second.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(tls::get(&mut second, "/plaintext").unwrap().status, 200);
}

#[test]
fn sessions_resume_with_tls13_tickets() {
    resumes(Versions::Only13);
}

#[test]
fn sessions_resume_with_tls12() {
    resumes(Versions::Only12);
}

#[test]
fn sni_picks_the_certificate_for_the_name() {
    let pki = Pki::new();
    let other = pki.ca.server(&["api.example.test"]);
    let wild = pki.ca.server(&["*.wild.test"]);
    let extra = format!(
        "sni = [ {{ cert = \"{}\", key = \"{}\" }}, {{ cert = \"{}\", key = \"{}\" }} ]",
        pki.dir.write("other.crt", &other.cert_pem),
        pki.dir.write("other.key", &other.key_pem),
        pki.dir.write("wild.crt", &wild.cert_pem),
        pki.dir.write("wild.key", &wild.key_pem),
    );
    let server = pki.start(&extra);
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let leaf = |name: &str| {
        let s = tls::connect(server.tls_addr(), &cfg, name).unwrap();
        s.conn.peer_certificates().unwrap()[0].clone()
    };
    assert_eq!(leaf("api.example.test"), other.der);
    assert_eq!(leaf("x.wild.test"), wild.der);
    // Unknown names and IP addresses (no SNI) get the default certificate.
    let default_leaf = leaf("localhost");
    assert_ne!(default_leaf, other.der);
    assert_eq!(leaf("127.0.0.1"), default_leaf);
}

#[test]
fn mtls_maps_the_client_certificate_to_an_identity() {
    let pki = Pki::new();
    let (_ca_file, server) = start_mtls(&pki, true);
    let alice = pki.ca.client("alice");
    let cfg = tls::client_config(&pki.ca, Some(&alice), Versions::Both);
    let r = tls::try_request(server.tls_addr(), &cfg, "/whoami").unwrap();
    assert_eq!(r.text(), "id=alice");
    // Without a common name, the first SAN names the client.
    let svc = pki.ca.client_san("billing.internal");
    let cfg = tls::client_config(&pki.ca, Some(&svc), Versions::Only12);
    let r = tls::try_request(server.tls_addr(), &cfg, "/whoami").unwrap();
    assert_eq!(r.text(), "id=billing.internal");
    // Plain listener: no TLS, no identity.
    let r = server.client().request(&get("/whoami", &[]));
    assert_eq!(r.text(), "plain");
}

#[test]
fn mtls_refuses_missing_wrong_ca_and_expired_certificates() {
    let pki = Pki::new();
    let ca_file = pki.dir.write("clients-ca.crt", &pki.ca.pem());
    let server = start_whoami(&pki, &format!("client_auth = {{ ca = \"{ca_file}\" }}"));
    let addr = server.tls_addr();
    for versions in [Versions::Only13, Versions::Only12] {
        let none = tls::client_config(&pki.ca, None, versions);
        let e = tls::try_request(addr, &none, "/whoami").unwrap_err();
        assert!(!e.is_empty());

        let stranger_ca = Ca::new("someone else");
        let mallory = stranger_ca.client("mallory");
        let wrong = tls::client_config(&pki.ca, Some(&mallory), versions);
        tls::try_request(addr, &wrong, "/whoami").unwrap_err();

        let expired: Leaf = pki.ca.client_valid("old", Some((2001, 2002)));
        let cfg = tls::client_config(&pki.ca, Some(&expired), versions);
        tls::try_request(addr, &cfg, "/whoami").unwrap_err();

        // The right certificate still works after all that.
        let bob = pki.ca.client("bob");
        let cfg = tls::client_config(&pki.ca, Some(&bob), versions);
        assert_eq!(
            tls::try_request(addr, &cfg, "/whoami").unwrap().text(),
            "id=bob"
        );
    }
}

#[test]
fn optional_client_auth_serves_clients_without_a_certificate() {
    let pki = Pki::new();
    let (_ca_file, server) = start_mtls(&pki, false);
    let none = tls::client_config(&pki.ca, None, Versions::Both);
    let r = tls::try_request(server.tls_addr(), &none, "/whoami").unwrap();
    assert_eq!(r.text(), "-");
    let carol = pki.ca.client("carol");
    let cfg = tls::client_config(&pki.ca, Some(&carol), Versions::Both);
    let r = tls::try_request(server.tls_addr(), &cfg, "/whoami").unwrap();
    assert_eq!(r.text(), "id=carol");
    // A certificate from another CA is still refused, not ignored.
    let other = Ca::new("other").client("eve");
    let cfg = tls::client_config(&pki.ca, Some(&other), Versions::Both);
    tls::try_request(server.tls_addr(), &cfg, "/whoami").unwrap_err();
}

#[test]
fn reload_swaps_the_certificate_for_new_handshakes_only() {
    let pki = Pki::new();
    let server = pki.start("");
    let addr = server.tls_addr();
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let mut old_conn = tls::connect(addr, &cfg, "localhost").unwrap();
    let old_leaf = old_conn.conn.peer_certificates().unwrap()[0].clone();
    assert_eq!(tls::get(&mut old_conn, "/plaintext").unwrap().status, 200);

    let new = pki.ca.server(&["localhost"]);
    std::fs::write(&pki.cert, &new.cert_pem).unwrap();
    std::fs::write(&pki.key, &new.key_pem).unwrap();
    assert_eq!(server.reload_tls(), Ok(true));

    // The open connection goes on, on its old session.
    for _ in 0..2 {
        assert_eq!(tls::get(&mut old_conn, "/plaintext").unwrap().status, 200);
    }
    // A new client (no session to resume: a resumed session would carry
    // the certificate it was first made with) sees the new certificate.
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let mut fresh = tls::connect(addr, &cfg, "localhost").unwrap();
    assert_eq!(fresh.conn.peer_certificates().unwrap()[0], new.der);
    assert_ne!(new.der, old_leaf);
    assert_eq!(tls::get(&mut fresh, "/json").unwrap().status, 200);

    // A broken file: the reload fails naming the file; the last good
    // certificate stays in use.
    std::fs::write(&pki.cert, "not a certificate\n").unwrap();
    let e = server.reload_tls().unwrap_err();
    assert!(
        e.contains("server.tls.cert") && e.contains("server.crt"),
        "{e}"
    );
    // A key that does not fit the certificate is refused too.
    std::fs::write(&pki.cert, &new.cert_pem).unwrap();
    std::fs::write(&pki.key, pki.ca.server(&["localhost"]).key_pem).unwrap();
    let e = server.reload_tls().unwrap_err();
    assert!(e.contains("server.tls.key"), "{e}");
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let s = tls::connect(addr, &cfg, "localhost").unwrap();
    assert_eq!(s.conn.peer_certificates().unwrap()[0], new.der);
    assert_eq!(tls::get(&mut old_conn, "/plaintext").unwrap().status, 200);
    assert_eq!(tls::get(&mut fresh, "/plaintext").unwrap().status, 200);
}

#[test]
fn a_stalled_handshake_is_cut_off_after_the_timeout() {
    let pki = Pki::new();
    let server = pki.start("handshake_timeout = \"300ms\"");
    for partial in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01][..]] {
        let mut raw = TcpStream::connect(server.tls_addr()).unwrap();
        raw.set_read_timeout(Some(GUARD)).unwrap();
        let started = Instant::now();
        raw.write_all(partial).unwrap();
        let mut got = Vec::new();
        // The server closes; a read error (reset) also counts as closed.
        let _ = raw.read_to_end(&mut got);
        let waited = started.elapsed();
        assert!(
            waited < GUARD,
            "the server kept a stalled handshake open past the guard"
        );
        // The sweep may fire up to one 100 ms tick early; anything near
        // zero would mean the server closed for another reason.
        assert!(waited.as_millis() >= 150, "closed after {waited:?}");
    }
    // A real client is still served.
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    assert_eq!(
        tls::try_request(server.tls_addr(), &cfg, "/plaintext")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn large_bodies_cross_many_tls_records() {
    let pki = Pki::new();
    let server = pki.start("");
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let mut s = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let head = format!(
        "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // Server body limit is 1 MiB by default: 200 kB echoes whole.
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    s.flush().unwrap();
    let r = tls::read_response(&mut s).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body);
    // Pipelined requests in one write come back in order.
    s.write_all(b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\nGET /json HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    // Both answers may arrive in one read: collect bytes until both are in.
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("{\"message\"") {
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    let hello = text.find("Hello, World!").unwrap();
    assert!(hello < text.find("{\"message\"").unwrap(), "{text}");
}

#[test]
fn config_errors_name_the_key() {
    let e =
        shardline::Config::from_toml_str("[server.tls]\ncert = \"a\"\nkey = \"b\"\n").unwrap_err();
    assert!(e.0.starts_with("server.tls.listen"), "{e}");
    let e = shardline::Config::from_toml_str(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"a\"\nkey = \"b\"\nmin_version = \"1.0\"\n",
    )
    .unwrap_err();
    assert!(e.0.starts_with("server.tls.min_version"), "{e}");
    let e = shardline::Config::from_toml_str(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"a\"\nkey = \"b\"\nciphers = \"ALL\"\n",
    )
    .unwrap_err();
    assert!(e.0.contains("ciphers"), "{e}");
    // Files are read at start: a missing one stops the start, naming it.
    let cfg = config_from_toml(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"/nonexistent/c.pem\"\nkey = \"/nonexistent/k.pem\"\n",
    );
    let e = match shardline::Server::new(shardline_tests::server::test_config(cfg)).start() {
        Ok(_) => panic!("started without certificate files"),
        Err(e) => e.0,
    };
    assert!(
        e.contains("server.tls.cert") && e.contains("/nonexistent/c.pem"),
        "{e}"
    );
}

#[test]
fn the_streaming_path_works_over_tls() {
    use shardline_tests::upstream::{Behaviour, Reply, Upstream};
    let big_reply: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let up = Upstream::start(Behaviour::reply(Reply::new(200).body(&big_reply)));
    let pki = Pki::new();
    let text = format!(
        "{}\n[[upstreams]]\nname = \"u\"\ntargets = [\"{}\"]\n\n[[routes]]\nname = \"proxy\"\npath = \"/{{*rest}}\"\nupstream = \"u\"\nmax_body_bytes = \"4MiB\"\n",
        pki.tls_section(""),
        up.target()
    );
    let server = TestServer::start_toml(&text);
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let mut s = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    let body: Vec<u8> = (0..2_000_000u32).map(|i| (i % 249) as u8).collect();
    for _ in 0..2 {
        let head = format!(
            "POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body).unwrap();
        s.flush().unwrap();
        let r = tls::read_response(&mut s).unwrap();
        assert_eq!(r.status, 200, "{}", r.head);
        assert_eq!(r.body, big_reply);
        assert_eq!(up.last().body.len(), body.len());
        assert!(up.last().body == body);
        // The upstream learns the client came over HTTPS.
        assert_eq!(up.last().header("x-forwarded-proto"), Some("https"));
        assert!(
            up.last()
                .header("forwarded")
                .is_some_and(|v| v.contains("proto=https")),
            "{:?}",
            up.last().header("forwarded")
        );
    }
    // The plain listener of the same server says http.
    let r = server.client().request(&get("/x", &[]));
    assert_eq!(r.status, 200);
    assert_eq!(up.last().header("x-forwarded-proto"), Some("http"));
}

/// Upstream TLS: a TLS-terminating shardline as the upstream of another.
fn https_gateway(target: &str, tls_line: &str) -> TestServer {
    TestServer::start_toml(&format!(
        "[[upstreams]]\nname = \"u\"\ntargets = [\"{target}\"]\nretry = {{ attempts = 1 }}\n{tls_line}\n\n[[routes]]\nname = \"proxy\"\npath = \"/{{*rest}}\"\nupstream = \"u\"\n"
    ))
}

#[test]
fn upstream_https_targets_are_verified_against_the_ca() {
    let pki = Pki::new();
    let backend = pki.start("");
    let port = backend.tls_addr().port();
    let ca = pki.dir.write("up-ca.crt", &pki.ca.pem());

    // Verified: the certificate is for localhost and 127.0.0.1.
    for target in [
        format!("https://localhost:{port}"),
        format!("https://127.0.0.1:{port}"),
    ] {
        let gw = https_gateway(&target, &format!("tls = {{ ca = \"{ca}\" }}"));
        let mut c = gw.client();
        for _ in 0..3 {
            let r = c.request(&get("/plaintext", &[]));
            assert_eq!(r.status, 200, "{target}: {}", r.summary());
            assert_eq!(r.text(), "Hello, World!");
        }
    }

    // A CA that did not sign it: 502, nothing proxied.
    let other = pki.dir.write("other-ca.crt", &Ca::new("other").pem());
    let target = format!("https://127.0.0.1:{port}");
    let gw = https_gateway(&target, &format!("tls = {{ ca = \"{other}\" }}"));
    let r = gw.client().request(&get("/plaintext", &[]));
    assert_eq!(r.status, 502, "{}", r.summary());
    assert!(r.text().contains("TLS"), "{}", r.text());

    // The right CA but a name the certificate does not cover: 502.
    let gw = https_gateway(
        &target,
        &format!("tls = {{ ca = \"{ca}\", server_name = \"api.other.test\" }}"),
    );
    assert_eq!(gw.client().request(&get("/plaintext", &[])).status, 502);

    // The test-only switch accepts any certificate.
    let gw = https_gateway(
        &target,
        &format!("tls = {{ ca = \"{other}\", insecure_skip_verify_for_tests = true }}"),
    );
    assert_eq!(gw.client().request(&get("/plaintext", &[])).status, 200);

    // Plain HTTP to the TLS port is not what an http:// target does.
    let gw = https_gateway(&format!("http://127.0.0.1:{port}"), "");
    assert_ne!(gw.client().request(&get("/plaintext", &[])).status, 200);
}

#[test]
fn upstream_https_without_a_ca_is_a_config_error() {
    let e = shardline::Config::from_toml_str(
        "[[upstreams]]\nname = \"u\"\ntargets = [\"https://127.0.0.1:1\"]\n\n[[routes]]\nname = \"p\"\npath = \"/\"\nupstream = \"u\"\n",
    )
    .unwrap_err();
    assert!(
        e.0.contains("upstreams[0]") && e.0.contains("tls.ca"),
        "{e}"
    );
    let e = shardline::Config::from_toml_str(
        "[[upstreams]]\nname = \"u\"\ntargets = [\"ftp://127.0.0.1:1\"]\n\n[[routes]]\nname = \"p\"\npath = \"/\"\nupstream = \"u\"\n",
    )
    .unwrap_err();
    assert!(e.0.contains("targets[0]") && e.0.contains("ftp"), "{e}");
}

#[test]
fn full_chains_verify_through_an_intermediate_both_ways() {
    let dir = ScratchDir::new("chain");
    let root = Ca::new("root CA");
    let inter = root.intermediate("intermediate CA");
    let leaf = inter.server(&["localhost"]);
    // The certificate file is the full chain: leaf, then intermediate.
    let chain = format!("{}{}", leaf.cert_pem, inter.pem());
    let cert = dir.write("chain.crt", &chain);
    let key = dir.write("leaf.key", &leaf.key_pem);
    // Clients are signed by the intermediate; only the root is configured.
    let client_ca = dir.write("root.crt", &root.pem());
    let server = TestServer::start_toml(&format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\nclient_auth = {{ ca = \"{client_ca}\" }}\n"
    ));
    let alice = inter.client("alice");
    // A client that trusts only the root, presenting its leaf plus the
    // intermediate.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![alice.der.clone(), inter.cert.der().clone()],
            alice.key_der(),
        )
        .unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let cfg = std::sync::Arc::new(cfg);
    let mut s = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    assert_eq!(s.conn.peer_certificates().unwrap().len(), 2, "chain sent");
    assert_eq!(tls::get(&mut s, "/plaintext").unwrap().status, 200);
}

#[test]
fn mtls_refuses_a_certificate_not_meant_for_clients() {
    let pki = Pki::new();
    let ca_file = pki.dir.write("clients-ca.crt", &pki.ca.pem());
    let server = start_whoami(&pki, &format!("client_auth = {{ ca = \"{ca_file}\" }}"));
    // Right CA, but its key usage says server only.
    let leaf = pki.ca.server_only_usage("not-a-client");
    let cfg = tls::client_config(&pki.ca, Some(&leaf), Versions::Both);
    tls::try_request(server.tls_addr(), &cfg, "/whoami").unwrap_err();
    // Not valid yet counts like expired.
    let future = pki.ca.client_valid("future", Some((2090, 2091)));
    let cfg = tls::client_config(&pki.ca, Some(&future), Versions::Both);
    tls::try_request(server.tls_addr(), &cfg, "/whoami").unwrap_err();
}

#[test]
fn changing_the_client_ca_ends_resumption_of_sessions_it_verified() {
    // A session ticket carries the client certificate it was issued for,
    // and resuming does not verify it again: after the client CA changes,
    // a certificate the new CA did not sign must not keep authenticating
    // through an old ticket.
    for versions in [Versions::Only13, Versions::Only12] {
        let pki = Pki::new();
        let (ca_file, server) = start_mtls(&pki, true);
        let addr = server.tls_addr();
        let alice = pki.ca.client("alice");
        let cfg = tls::client_config(&pki.ca, Some(&alice), versions);
        let mut first = tls::connect(addr, &cfg, "localhost").unwrap();
        assert_eq!(tls::get(&mut first, "/whoami").unwrap().text(), "id=alice");
        drop(first);

        // A reload that leaves the client CAs alone keeps resumption.
        assert_eq!(server.reload_tls(), Ok(true));
        let mut again = tls::connect(addr, &cfg, "localhost").unwrap();
        assert_eq!(
            again.conn.handshake_kind(),
            Some(HandshakeKind::Resumed),
            "{versions:?}"
        );
        assert_eq!(tls::get(&mut again, "/whoami").unwrap().text(), "id=alice");
        drop(again);

        // Alice's CA is no longer trusted.
        std::fs::write(&ca_file, Ca::new("the new client CA").pem()).unwrap();
        assert_eq!(server.reload_tls(), Ok(true));
        match tls::connect(addr, &cfg, "localhost") {
            // TLS 1.2: the refusal comes within the handshake.
            Err(_) => {}
            // TLS 1.3: the client finishes first; the server's alert
            // arrives at the first read.
            Ok(mut s) => {
                assert_ne!(
                    s.conn.handshake_kind(),
                    Some(HandshakeKind::Resumed),
                    "{versions:?}"
                );
                let r = tls::get(&mut s, "/whoami");
                assert!(
                    r.is_err(),
                    "{versions:?}: served after the CA change: {r:?}"
                );
            }
        }
    }
}

#[test]
fn client_common_names_in_any_directory_string_encoding_are_identities() {
    use rcgen::DnValue;
    use rcgen::{BmpString, TeletexString, UniversalString};
    let pki = Pki::new();
    let (_ca_file, server) = start_mtls(&pki, true);
    for (cn, want) in [
        (
            DnValue::BmpString(BmpString::try_from("bmp-Łukasz").unwrap()),
            "id=bmp-Łukasz",
        ),
        (
            DnValue::UniversalString(UniversalString::try_from("universal-✓").unwrap()),
            "id=universal-✓",
        ),
        (
            DnValue::TeletexString(TeletexString::try_from("teletex").unwrap()),
            "id=teletex",
        ),
    ] {
        let leaf = pki.ca.client_cn_value(cn);
        let cfg = tls::client_config(&pki.ca, Some(&leaf), Versions::Both);
        let r = tls::try_request(server.tls_addr(), &cfg, "/whoami").unwrap();
        assert_eq!(r.text(), want);
    }
}

#[test]
fn a_reload_with_a_bad_certificate_changes_nothing() {
    let pki = Pki::new();
    let file = pki.dir.path("shardline.toml");
    let text = |body: &str| {
        format!(
            "{}\n[[routes]]\nname = \"a\"\nmethod = \"GET\"\npath = \"/a\"\n\
             respond = {{ status = 200, body = \"{body}\" }}\n",
            pki.tls_section("")
        )
    };
    std::fs::write(&file, text("A")).unwrap();
    let mut cfg = config_from_toml(&text("A"));
    cfg.server.listen = "127.0.0.1:0".parse().unwrap();
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.server.shards = 1;
    let overrides = shardline::config::ServerOverrides {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        shards: Some(1),
        ..Default::default()
    };
    let server =
        TestServer::from_builder(shardline::Server::new(cfg).config_file(&file, overrides));
    let reload = || {
        let mut c = shardline_tests::Client::connect(server.admin.unwrap());
        c.request(&shardline_tests::post("/admin/reload", &[], b""))
    };

    // A new route body and a truncated certificate in one reload: refused
    // whole, so the route keeps its old body too.
    std::fs::write(&file, text("B")).unwrap();
    std::fs::write(&pki.cert, "-----BEGIN CERTIFICATE-----\nMIIB\n").unwrap();
    let r = reload();
    assert_eq!(r.status, 422, "{}", r.summary());
    assert!(
        r.text().contains("server.tls.cert") && r.text().contains("truncated"),
        "{}",
        r.text()
    );
    assert_eq!(server.client().request(&get("/a", &[])).text(), "A");

    // Certificate mended: the same reload goes through, both parts.
    let leaf = pki.ca.server(&["localhost"]);
    std::fs::write(&pki.cert, &leaf.cert_pem).unwrap();
    std::fs::write(&pki.key, &leaf.key_pem).unwrap();
    let r = reload();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.text().contains("TLS certificates reloaded"),
        "{}",
        r.text()
    );
    assert_eq!(server.client().request(&get("/a", &[])).text(), "B");
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    let s = tls::connect(server.tls_addr(), &cfg, "localhost").unwrap();
    assert_eq!(s.conn.peer_certificates().unwrap()[0], leaf.der);
}

#[test]
fn plain_http_to_the_tls_port_gets_a_readable_400() {
    let pki = Pki::new();
    let server = pki.start("");
    let mut c = shardline_tests::Client::connect(server.tls_addr());
    c.send(&get("/plaintext", &[]));
    let r = c.read_response(false).unwrap();
    assert_eq!(r.status, 400, "{}", r.summary());
    assert!(r.text().contains("plain-http-to-tls-port"), "{}", r.text());
    c.expect_closed("plain HTTP on the TLS port");
    // TLS clients are served as before.
    let cfg = tls::client_config(&pki.ca, None, Versions::Both);
    assert_eq!(
        tls::try_request(server.tls_addr(), &cfg, "/plaintext")
            .unwrap()
            .status,
        200
    );
}

#[test]
fn handshakes_and_certificate_expiry_are_metrics() {
    use shardline_tests::metrics;
    let dir = ScratchDir::new("tls-metrics");
    let ca = Ca::new("metrics CA");
    // Expiry known to the second: 2040-01-01T00:00:00Z.
    let leaf = ca.server_valid(&["localhost"], Some((2020, 2040)));
    let cert = dir.write("server.crt", &leaf.cert_pem);
    let key = dir.write("server.key", &leaf.key_pem);
    let text = format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\
         handshake_timeout = \"300ms\"\n"
    );
    let mut cfg = shardline_tests::server::test_config(config_from_toml(&text));
    cfg.server.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    let server = TestServer::from_builder(shardline::Server::new(cfg));
    let scrape = || {
        let mut c = shardline_tests::Client::connect(server.admin.unwrap());
        let text = c.request(&get("/metrics", &[])).text();
        metrics::parse(&text, false).unwrap_or_else(|e| panic!("{e}\n{text}"))
    };
    let handshakes = |m: &metrics::Exposition, result: &str| {
        m.value("shardline_tls_handshakes_total", &[("result", result)])
    };
    let m = scrape();
    for result in ["full", "resumed", "failed", "timeout"] {
        assert_eq!(handshakes(&m, result), 0.0, "{result}");
    }
    assert_eq!(
        m.value(
            "shardline_tls_certificate_not_after_seconds",
            &[("file", cert.as_str())]
        ),
        2_208_988_800.0
    );

    // One full handshake, then one resumed with its ticket.
    let client = tls::client_config(&ca, None, Versions::Only13);
    let mut first = tls::connect(server.tls_addr(), &client, "localhost").unwrap();
    assert_eq!(tls::get(&mut first, "/plaintext").unwrap().status, 200);
    drop(first);
    let mut second = tls::connect(server.tls_addr(), &client, "localhost").unwrap();
    assert_eq!(second.conn.handshake_kind(), Some(HandshakeKind::Resumed));
    assert_eq!(tls::get(&mut second, "/plaintext").unwrap().status, 200);
    // Plain HTTP on the TLS port fails the handshake (and gets its 400).
    let mut raw = TcpStream::connect(server.tls_addr()).unwrap();
    raw.set_read_timeout(Some(GUARD)).unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = raw.read_to_end(&mut got);
    assert!(got.starts_with(b"HTTP/1.1 400"), "{got:?}");
    // A client that stops mid-handshake runs into the timeout.
    let mut stalled = TcpStream::connect(server.tls_addr()).unwrap();
    stalled.set_read_timeout(Some(GUARD)).unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00]).unwrap();
    let _ = stalled.read_to_end(&mut Vec::new());

    let m = scrape();
    for (result, n) in [
        ("full", 1.0),
        ("resumed", 1.0),
        ("failed", 1.0),
        ("timeout", 1.0),
    ] {
        assert_eq!(handshakes(&m, result), n, "{result}");
    }

    // A reload to a certificate that expires later moves the gauge.
    let renewed = ca.server_valid(&["localhost"], Some((2020, 2045)));
    std::fs::write(&cert, &renewed.cert_pem).unwrap();
    std::fs::write(&key, &renewed.key_pem).unwrap();
    assert_eq!(server.reload_tls(), Ok(true));
    assert_eq!(
        scrape().value(
            "shardline_tls_certificate_not_after_seconds",
            &[("file", cert.as_str())]
        ),
        2_366_841_600.0
    );
}
