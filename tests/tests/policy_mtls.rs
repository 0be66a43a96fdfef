//! `[auth.NAME] type = "mtls"` (issues 5 and 7): the consumer is the
//! verified TLS client certificate's identity; requests without one get a
//! 401 with a `ClientCertificate` challenge, identities off the `allowed`
//! list a 403; scopes and per-consumer limits key on the identity; each
//! decision is an audit log line.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Instant;

use common::assert_problem;
use shardline_tests::server::{config_from_toml, TestServer};
use shardline_tests::tls::{self, Ca, ScratchDir, TlsResponse, Versions};
use shardline_tests::upstream::{Behaviour, Reply, Upstream};
use shardline_tests::{get, GUARD};

struct Setup {
    dir: ScratchDir,
    ca: Ca,
    server: TestServer,
    _up: Upstream,
}

impl Setup {
    fn new() -> Setup {
        let dir = ScratchDir::new("mtls-policy");
        let ca = Ca::new("shardline mtls test CA");
        let leaf = ca.server(&["localhost", "127.0.0.1"]);
        let cert = dir.write("server.crt", &leaf.cert_pem);
        let key = dir.write("server.key", &leaf.key_pem);
        let ca_file = dir.write("clients-ca.crt", &ca.pem());
        let audit = tls::toml_path(&dir.path("audit.jsonl"));
        let access = tls::toml_path(&dir.path("access.jsonl"));
        let up = Upstream::start(Behaviour::reply(Reply::ok("from upstream")));
        let text = format!(
            r#"
[server.tls]
listen = "127.0.0.1:0"
cert = "{cert}"
key = "{key}"
client_auth = {{ ca = "{ca_file}", required = false }}

[observability]
audit_log = "{audit}"
access_log = "{access}"

[auth.certs]
type = "mtls"
scopes = {{ "alice" = ["admin", "read"] }}

[auth.partners]
type = "mtls"
allowed = ["alice", "billing.internal"]

[[upstreams]]
name = "u"
targets = ["{target}"]

[[routes]]
name = "limited"
method = "GET"
path = "/limited"
respond = {{ status = 200, body = "ok" }}
auth = "certs"
rate_limit = {{ per_minute = 1, key = "consumer" }}

[[routes]]
name = "admin"
method = "GET"
path = "/admin"
respond = {{ status = 200, body = "admin" }}
auth = "certs"
scopes = ["admin"]

[[routes]]
name = "partners"
method = "GET"
path = "/partners"
respond = {{ status = 200, body = "partners" }}
auth = "partners"

[[routes]]
name = "proxied"
method = "GET"
path = "/proxied"
upstream = "u"
auth = "certs"
"#,
            target = up.target()
        );
        let server = TestServer::start(config_from_toml(&text));
        Setup {
            dir,
            ca,
            server,
            _up: up,
        }
    }

    fn request(&self, cn: Option<&str>, path: &str) -> TlsResponse {
        let leaf = cn.map(|cn| self.ca.client(cn));
        let cfg = tls::client_config(&self.ca, leaf.as_ref(), Versions::Both);
        tls::try_request(self.server.tls_addr(), &cfg, path).unwrap()
    }
}

fn header<'a>(r: &'a TlsResponse, name: &str) -> Option<&'a str> {
    r.head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn problem_type(r: &TlsResponse) -> String {
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["type"].as_str().unwrap().to_string()
}

#[test]
fn the_client_certificate_names_the_consumer() {
    let s = Setup::new();
    // Per-consumer rate limit: each identity has its own budget of one.
    assert_eq!(s.request(Some("alice"), "/limited").status, 200);
    let r = s.request(Some("alice"), "/limited");
    assert_eq!(r.status, 429, "{}", r.head);
    assert_eq!(s.request(Some("bob"), "/limited").status, 200);
    // Scopes come from the section's `scopes` table.
    let r = s.request(Some("alice"), "/admin");
    assert_eq!((r.status, r.text().as_str()), (200, "admin"));
    let r = s.request(Some("bob"), "/admin");
    assert_eq!(r.status, 403, "{}", r.head);
    assert!(problem_type(&r).ends_with("/insufficient-scope"));
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("ClientCertificate realm=\"certs\", error=\"insufficient_scope\", scope=\"admin\"")
    );
    // The streaming path (upstream route) sees the identity too.
    let r = s.request(Some("bob"), "/proxied");
    assert_eq!((r.status, r.text().as_str()), (200, "from upstream"));
}

#[test]
fn no_verified_certificate_is_a_401_on_both_paths_and_listeners() {
    let s = Setup::new();
    for path in ["/admin", "/proxied"] {
        // TLS without a client certificate (client_auth.required = false).
        let r = s.request(None, path);
        assert_eq!(r.status, 401, "{path}: {}", r.head);
        assert!(problem_type(&r).ends_with("/unauthenticated"));
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("ClientCertificate realm=\"certs\"")
        );
        // The plain listener never has a client certificate.
        let r = s.server.client().request(&get(path, &[]));
        assert_problem(&r, 401);
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("ClientCertificate realm=\"certs\"")
        );
    }
}

#[test]
fn the_allow_list_refuses_other_identities_with_403() {
    let s = Setup::new();
    let r = s.request(Some("alice"), "/partners");
    assert_eq!((r.status, r.text().as_str()), (200, "partners"));
    // A certificate naming the client by SAN only.
    let svc = s.ca.client_san("billing.internal");
    let cfg = tls::client_config(&s.ca, Some(&svc), Versions::Both);
    let r = tls::try_request(s.server.tls_addr(), &cfg, "/partners").unwrap();
    assert_eq!(r.status, 200, "{}", r.head);
    let r = s.request(Some("mallory"), "/partners");
    assert_eq!(r.status, 403, "{}", r.head);
    assert!(problem_type(&r).ends_with("/client-not-allowed"));
    let r = s.request(None, "/partners");
    assert_eq!(r.status, 401, "{}", r.head);
}

#[test]
fn decisions_reach_the_audit_log() {
    let s = Setup::new();
    assert_eq!(s.request(Some("alice"), "/admin").status, 200);
    assert_eq!(s.request(Some("mallory"), "/partners").status, 403);
    assert_eq!(s.request(None, "/admin").status, 401);
    let want = [
        ("allow", "valid_certificate", "\"alice\""),
        ("deny", "identity_not_allowed", "\"mallory\""),
        ("deny", "no_client_certificate", "null"),
    ];
    wait_for_lines(
        &s.dir.path("audit.jsonl"),
        "audit",
        |l| {
            want.iter().position(|(d, reason, consumer)| {
                l.contains(&format!("\"decision\":\"{d}\""))
                    && l.contains(&format!("\"reason\":\"{reason}\""))
                    && l.contains(&format!("\"consumer\":{consumer}"))
            })
        },
        want.len(),
    );
}

#[test]
fn config_errors_name_the_key() {
    let dir = ScratchDir::new("mtls-config");
    let ca = Ca::new("ca");
    let leaf = ca.server(&["localhost"]);
    let tls_section = format!(
        "[server.tls]\nlisten = \"127.0.0.1:0\"\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.write("s.crt", &leaf.cert_pem),
        dir.write("s.key", &leaf.key_pem)
    );
    let check = |text: &str, key: &str| {
        let e = shardline::Config::from_toml_str(text).unwrap_err();
        assert!(e.0.starts_with(key), "{key}: {e}");
    };
    // Without client_auth no connection has a verified identity.
    check(
        &format!("{tls_section}[auth.m]\ntype = \"mtls\"\n"),
        "auth.m.type",
    );
    check("[auth.m]\ntype = \"mtls\"\n", "auth.m.type");
    check(
        "[auth.k]\ntype = \"api_key\"\nallowed = [\"a\"]\nkeys = [{ key = \"0123456789abcdef0\", consumer = \"a\" }]\n",
        "auth.k.allowed",
    );
    check(
        "[auth.m]\ntype = \"mtls\"\nheader = \"x-client\"\n",
        "auth.m.header",
    );
    check(
        "[auth.m]\ntype = \"mtls\"\nallowed = [\"a\"]\nscopes = { b = [\"x\"] }\n",
        "auth.m",
    );
}

#[test]
fn the_access_log_names_the_consumer_on_both_paths() {
    let s = Setup::new();
    assert_eq!(s.request(Some("alice"), "/admin").status, 200);
    assert_eq!(s.request(Some("alice"), "/proxied").status, 200);
    assert_eq!(s.request(None, "/partners").status, 401);
    let want = [
        ("admin", "\"alice\""),
        ("proxied", "\"alice\""),
        ("partners", "null"),
    ];
    wait_for_lines(
        &s.dir.path("access.jsonl"),
        "access",
        |l| {
            want.iter().position(|(route, consumer)| {
                l.contains(&format!("\"route\":\"{route}\""))
                    && l.contains(&format!("\"consumer\":{consumer}"))
            })
        },
        want.len(),
    );
}

/// Waits (bounded by `GUARD`) until every one of `wanted` kinds of line is
/// in the log at `path`; `kind` says which kind (0..wanted) a line is.
fn wait_for_lines(
    path: &std::path::Path,
    log: &str,
    kind: impl Fn(&str) -> Option<usize>,
    wanted: usize,
) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut seen = vec![false; wanted];
        for i in text.lines().filter_map(&kind) {
            seen[i] = true;
        }
        if seen.iter().all(|&s| s) {
            return;
        }
        assert!(start.elapsed() < GUARD, "{log} log lines missing:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
