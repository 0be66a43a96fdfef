//! Data-driven conformance: the llhttp request fixtures and the
//! Http11Probe/smuggler cases of `shared/conformance/`, sent over real
//! sockets to the real server (default routes, one shard).
//!
//! The data lives outside the repository, in the `shared/` folder that sits
//! next to it (`<repo>/../shared/conformance`; set
//! `SHARDLINE_CONFORMANCE_DIR` to point elsewhere). A missing folder fails
//! the test: it never passes silently.
//!
//! Run with `--nocapture` to see the per-case report and the summary table.
#![allow(clippy::unwrap_used)]

#[path = "conformance/llhttp.rs"]
mod llhttp;
#[path = "conformance/probe.rs"]
mod probe;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use shardline_tests::{get, TestServer};

/// Concurrent connections while running cases. A case that waits for its
/// guard (a server that rightly keeps waiting for bytes) costs wall time,
/// not a worker pool's worth of it.
const WORKERS: usize = 24;

fn conformance_dir() -> PathBuf {
    let (d, how) = match std::env::var_os("SHARDLINE_CONFORMANCE_DIR") {
        Some(d) => (PathBuf::from(d), "SHARDLINE_CONFORMANCE_DIR"),
        None => (
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance"),
            "the default location",
        ),
    };
    assert!(
        d.join("README.md").is_file(),
        "conformance data not found at {} ({how}): it lives in the shared/ folder next to the \
         repository folder (<repo>/../shared/conformance, as in the CI clone). Put it there \
         or set SHARDLINE_CONFORMANCE_DIR; this test does not pass without it.",
        d.display()
    );
    d
}

/// The server under test: the embedded default routes, and timeouts long
/// enough that the server never acts on a timer during a case (a case that
/// waits is judged by the client's guard, not by a 408).
fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.server.header_read_timeout = Duration::from_secs(3600);
        c.server.idle_timeout = Duration::from_secs(3600);
        c.server.drain_timeout = Duration::from_secs(1);
    })
}

fn par_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(items.len().max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() {
                    break;
                }
                let r = f(&items[i]);
                out.lock().unwrap()[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

// ---------------------------------------------------------------------------
// llhttp

/// Cases where shardline's documented policy differs from llhttp's, with
/// the reason. They are still run, against the alternative expectation; an
/// entry the server no longer needs is reported.
const LLHTTP_ALLOW: &[(&str, llhttp::Alt, &str)] = &[
    (
        "invalid.md#Invalid method",
        llhttp::Alt::Accepted,
        "llhttp knows a fixed list of methods; for shardline any token is a method \
         (RFC 9110 §9.1): MKCOLA gets 501 Not Implemented and, since a method does not \
         affect framing, the connection stays open",
    ),
    (
        "content-length.md#`Content-Length` with zeroes",
        llhttp::Alt::Rejected,
        "documented policy (protocol ErrorKind::ContentLengthInvalid): Content-Length with \
         leading zeros is refused with 400, although RFC 9110 §8.6 allows 1*DIGIT",
    ),
    (
        "content-length.md#`Content-Length` with follow-up headers",
        llhttp::Alt::Rejected,
        "same: Content-Length: 003 has leading zeros (refused with 400 by policy)",
    ),
    (
        "transfer-encoding.md#Trailing headers",
        llhttp::Alt::Rejected,
        "documented policy (ErrorKind::TrailerForbiddenField): a trailer naming a field that \
         must not be a trailer (Content-Type, RFC 9110 §6.5.1) is refused with 400",
    ),
    (
        "transfer-encoding.md#POST with `chunked` as last transfer-encoding",
        llhttp::Alt::Rejected,
        "the target has a fragment (#hey, 400 by RFC 9112 §3.2) and the body a coding \
         shardline does not implement (deflate: 501 by the spec)",
    ),
    (
        "transfer-encoding.md#POST with `chunked` as last transfer-encoding (multiple headers)",
        llhttp::Alt::Rejected,
        "as above: fragment in the target, unknown coding deflate",
    ),
    (
        "sample.md#No HTTP version",
        llhttp::Alt::Rejected,
        "an HTTP/0.9 request line (no version); shardline speaks HTTP/1.0 and 1.1 only \
         (RFC 9112 §3: request-line = method SP request-target SP HTTP-version)",
    ),
    (
        "method.md#SOURCE request with ICE",
        llhttp::Alt::Rejected,
        "ICE/1.0 is not HTTP (RFC 9112 §2.3 HTTP-version = \"HTTP/\" DIGIT \".\" DIGIT)",
    ),
    (
        "method.md#OPTIONS request with RTSP",
        llhttp::Alt::Rejected,
        "RTSP/1.0 is not HTTP (RFC 9112 §2.3)",
    ),
    (
        "method.md#ANNOUNCE request with RTSP",
        llhttp::Alt::Rejected,
        "RTSP/1.0 is not HTTP (RFC 9112 §2.3)",
    ),
    (
        "method.md#M-SEARCH request",
        llhttp::Alt::Rejected,
        "asterisk-form is only for OPTIONS (RFC 9112 §3.2.4); shardline refuses other methods with it (400)",
    ),
    (
        "uri.md#Fragment in URI",
        llhttp::Alt::Rejected,
        "a request-target has no fragment (RFC 9112 §3.2, origin-form = absolute-path [ \"?\" query ]); refused with 400",
    ),
    (
        "uri.md#Quotes in URI",
        llhttp::Alt::Rejected,
        "'\"' and '\\' are not allowed in a URI (RFC 3986 §2); shardline refuses bytes outside RFC 3986 in the target (400)",
    ),
    (
        "uri.md#`host:port` and basic auth",
        llhttp::Alt::Rejected,
        "userinfo in the target is deprecated and a recipient SHOULD treat it as an error (RFC 9110 §4.2.4); refused with 400",
    ),
];

#[test]
fn llhttp_request_cases() {
    let dir = conformance_dir().join("llhttp/request");
    let cases = llhttp::load(&dir);
    assert!(
        cases.len() > 100,
        "only {} llhttp cases found in {}",
        cases.len(),
        dir.display()
    );
    let allow: HashMap<&str, (llhttp::Alt, &str)> = LLHTTP_ALLOW
        .iter()
        .map(|(id, a, r)| (*id, (*a, *r)))
        .collect();
    for id in allow.keys() {
        assert!(
            cases.iter().any(|c| c.id == *id),
            "allow-list names a case that does not exist: {id}"
        );
    }

    // Check the decoding against the logs: every completed message ends
    // inside the data, and every completed head ends in CRLF CRLF.
    let mut runnable = Vec::new();
    let mut skipped = Vec::new();
    for c in &cases {
        let parsed = llhttp::parse_log(&c.log);
        if let Some(why) = llhttp::skip_reason(c, &parsed) {
            skipped.push((c.id.clone(), why));
            continue;
        }
        for m in &parsed.messages {
            if let Some(e) = m.end {
                assert!(
                    e <= c.data.len(),
                    "{}: decoding disagrees with the log",
                    c.id
                );
            }
            if let (Some(h), None) = (m.headers_end, &parsed.error) {
                assert_eq!(
                    &c.data[h - 4..h],
                    b"\r\n\r\n",
                    "{}: decoding disagrees with the log (head end at {h})",
                    c.id
                );
            }
        }
        runnable.push((c.clone(), parsed));
    }

    let srv = start();
    let addr = srv.addr;
    let results = par_map(&runnable, |(c, parsed)| {
        let alt = allow.get(c.id.as_str()).map(|(a, _)| *a);
        let out = llhttp::run(c, parsed, addr, alt);
        // An allow-listed case that the server now handles as llhttp does
        // is reported, so the entry can go.
        let redundant = alt == Some(llhttp::Alt::Rejected) && {
            let plain = llhttp::run(c, parsed, addr, None);
            plain.ok
        };
        (out, redundant)
    });

    let mut failed = Vec::new();
    let (mut pass, mut allowed, mut eof_waits) = (0, 0, 0);
    let mut accepted = 0;
    println!("\n== llhttp request cases ({}) ==", dir.display());
    for ((c, parsed), (out, redundant)) in runnable.iter().zip(&results) {
        let kind = if parsed.error.is_some() {
            "reject"
        } else {
            "accept"
        };
        if kind == "accept" {
            accepted += 1;
        }
        if out.needed_eof {
            eof_waits += 1;
        }
        let tag = match (out.ok, allow.get(c.id.as_str())) {
            (true, Some((_, why))) => {
                allowed += 1;
                format!("ALLOW  ({why})")
            }
            (true, None) => {
                pass += 1;
                "PASS".to_string()
            }
            (false, _) => {
                failed.push(format!(
                    "{} [{kind}]: {}\n    sent: {}",
                    c.id,
                    out.detail,
                    shardline_tests::client::show(&c.data)
                ));
                format!("FAIL   {}", out.detail)
            }
        };
        let note = if *redundant {
            " [allow-list entry no longer needed]"
        } else {
            ""
        };
        let wait = if out.needed_eof {
            " [waited; closed on EOF]"
        } else {
            ""
        };
        let wait = match out.completed {
            Some(how) => format!("{wait} [{how}]"),
            None => wait.to_string(),
        };
        println!(
            "{tag:<7} {kind:<6} {} -> [{}]{wait}{note}",
            c.id, out.answers
        );
    }
    for (id, why) in &skipped {
        println!("SKIP   {id}: {why}");
    }
    println!(
        "\nllhttp: {} cases: {} run ({} accept, {} reject), {} skipped; {} pass, {} allow-listed, {} fail; {} waited for EOF",
        cases.len(),
        runnable.len(),
        accepted,
        runnable.len() - accepted,
        skipped.len(),
        pass,
        allowed,
        failed.len(),
        eof_waits
    );
    assert!(
        failed.is_empty(),
        "{} llhttp case(s) failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Http11Probe + smuggler

/// Scored cases whose verdict is `fail` only because shardline's documented
/// policy deliberately differs, with the reason. They are still run and
/// reported.
const PROBE_ALLOW: &[(&str, &str)] = &[];

#[test]
fn http11probe_smuggler_cases() {
    let path = conformance_dir().join("http11probe-smuggler/cases.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let cases = probe::load(&text);
    assert!(
        cases.len() > 300,
        "only {} probe cases in {}",
        cases.len(),
        path.display()
    );
    let allow: HashMap<&str, &str> = PROBE_ALLOW.iter().copied().collect();
    for id in allow.keys() {
        assert!(
            cases.iter().any(|c| c.id == *id),
            "allow-list names a case that does not exist: {id}"
        );
    }

    let srv = start();
    // The follow-up's clean answer, learnt from the server itself.
    let mut c = srv.client();
    let hz = c.request(&get("/healthz", &[]));
    let pt = c.request(&get("/plaintext", &[]));
    drop(c);
    assert_eq!(hz.status, 200, "GET /healthz: {}", hz.summary());
    assert!(
        hz.body != pt.body,
        "/healthz and /plaintext answer the same body: the follow-up cannot be told apart"
    );
    let fp = probe::Fingerprint {
        status: hz.status,
        body: hz.body.clone(),
    };

    let addr = srv.addr;
    let results = par_map(&cases, |case| {
        let outs = probe::run(case, addr, &fp);
        let (v, rule) = probe::verdict(case, &outs);
        (outs, v, rule)
    });

    // Table.
    let mut counts: BTreeMap<(String, &'static str), usize> = BTreeMap::new();
    let mut totals: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut failures = Vec::new();
    println!("\n== Http11Probe + smuggler cases ({}) ==", path.display());
    println!(
        "{:<7} {:<6} {:<44} {:<22} outcome",
        "verdict", "scored", "id", "rule"
    );
    for (case, (outs, v, rule)) in cases.iter().zip(&results) {
        let outcome = outs
            .iter()
            .enumerate()
            .map(|(i, o)| format!("s{}: {}", i + 1, o.describe()))
            .collect::<Vec<_>>()
            .join(" | ");
        let key: &'static str = match (v.as_str(), case.scored, allow.get(case.id.as_str())) {
            ("fail", true, Some(_)) => "allowed",
            ("fail", true, None) => "FAIL",
            ("fail", false, _) => "fail (unscored)",
            ("warn", _, _) => "warn",
            ("pass", _, _) => "pass",
            _ => panic!("{}: unknown verdict {v:?}", case.id),
        };
        *counts.entry((case.category.clone(), key)).or_default() += 1;
        *totals.entry(key).or_default() += 1;
        println!(
            "{:<7} {:<6} {:<44} {:<22} {}",
            key,
            if case.scored { "yes" } else { "no" },
            case.id,
            rule,
            outcome
        );
        if let Some(why) = allow.get(case.id.as_str()) {
            println!("        allow-listed: {why}");
        }
        if key == "FAIL" {
            failures.push(format!(
                "{} (expected: {}; rule {rule:?} -> fail): {}\n    sent: {}",
                case.id,
                case.summary,
                outcome,
                shardline_tests::client::show(&case.steps[0].send)
            ));
        }
    }
    let mut table = String::from("\ncategory         pass  warn  fail(unscored)  allowed  FAIL\n");
    let cats: Vec<String> = {
        let mut v: Vec<String> = cases.iter().map(|c| c.category.clone()).collect();
        v.sort();
        v.dedup();
        v
    };
    for cat in &cats {
        let n = |k: &'static str| counts.get(&(cat.clone(), k)).copied().unwrap_or(0);
        table.push_str(&format!(
            "{:<16} {:>5} {:>5} {:>15} {:>8} {:>5}\n",
            cat,
            n("pass"),
            n("warn"),
            n("fail (unscored)"),
            n("allowed"),
            n("FAIL")
        ));
    }
    let t = |k: &'static str| totals.get(k).copied().unwrap_or(0);
    table.push_str(&format!(
        "{:<16} {:>5} {:>5} {:>15} {:>8} {:>5}\n",
        "total",
        t("pass"),
        t("warn"),
        t("fail (unscored)"),
        t("allowed"),
        t("FAIL")
    ));
    println!("{table}");
    assert!(
        failures.is_empty(),
        "{} scored case(s) failed:\n{}\n{table}",
        failures.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------
// Self-tests of the probe harness against a scripted fake server: the
// outcomes it must recognise (a smuggled request answered, a poisoned
// follow-up, a refusal with close) give the verdicts the rules say.

enum Act {
    /// Read once (the next request's bytes).
    Read,
    Write(&'static [u8]),
    Close,
}

fn scripted(script: Vec<Act>) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(shardline_tests::GUARD)).unwrap();
        let mut buf = [0u8; 65536];
        for act in script {
            match act {
                Act::Read => {
                    let _ = s.read(&mut buf);
                }
                Act::Write(b) => {
                    let _ = s.write_all(b);
                }
                Act::Close => return,
            }
        }
        // Script over: keep the connection open until the client goes.
        let _ = s.read(&mut buf);
    });
    addr
}

const SMUGGLED_CASE: &str = r#"{"cases": [{"id": "T", "category": "t", "scored": true,
  "steps": [{"send": "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 49\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n"}],
  "followup": true,
  "expect": {"summary": "", "rules": [["extra", "fail"], ["poisoned", "fail"], ["status=400", "pass"], ["closed", "pass"]], "default": "fail"}}]}"#;

const OK_5: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
const HEALTHZ: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn judge(script: Vec<Act>) -> (String, String, Vec<probe::StepOutcome>) {
    let case = &probe::load(SMUGGLED_CASE)[0];
    let fp = probe::Fingerprint {
        status: 200,
        body: b"ok".to_vec(),
    };
    let outs = probe::run(case, scripted(script), &fp);
    let (v, rule) = probe::verdict(case, &outs);
    (v, rule, outs)
}

#[test]
fn probe_harness_sees_an_answered_smuggled_request() {
    // Framed by chunked: answers the POST and the embedded GET, then the
    // follow-up.
    let (v, rule, outs) = judge(vec![
        Act::Read,
        Act::Write(OK_5),
        Act::Write(b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!"),
        Act::Read,
        Act::Write(HEALTHZ),
        Act::Close,
    ]);
    assert!(outs[0].extra, "{}", outs[0].describe());
    assert_eq!((v.as_str(), rule.as_str()), ("fail", "extra"));
}

#[test]
fn probe_harness_sees_a_poisoned_follow_up() {
    let (v, rule, outs) = judge(vec![
        Act::Read,
        Act::Write(OK_5),
        Act::Read,
        Act::Write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        Act::Close,
    ]);
    assert!(outs[0].poisoned && !outs[0].extra, "{}", outs[0].describe());
    assert_eq!((v.as_str(), rule.as_str()), ("fail", "poisoned"));
}

#[test]
fn probe_harness_sees_a_refusal_and_a_bare_close() {
    let (v, _, outs) = judge(vec![
        Act::Read,
        Act::Write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"),
        Act::Close,
    ]);
    assert!(outs[0].closed, "{}", outs[0].describe());
    assert_eq!(v, "pass");

    let (v, rule, outs) = judge(vec![Act::Read, Act::Close]);
    assert!(outs[0].response.is_none() && outs[0].closed);
    assert_eq!((v.as_str(), rule.as_str()), ("pass", "closed"));

    // 2xx, then a close without answering the follow-up: closed, not
    // poisoned.
    let (v, rule, outs) = judge(vec![Act::Read, Act::Write(OK_5), Act::Close]);
    assert!(
        outs[0].closed && !outs[0].poisoned,
        "{}",
        outs[0].describe()
    );
    assert_eq!((v.as_str(), rule.as_str()), ("pass", "closed"));

    // 2xx and a clean follow-up: none of the rules match: default fail.
    let (v, rule, _) = judge(vec![
        Act::Read,
        Act::Write(OK_5),
        Act::Read,
        Act::Write(HEALTHZ),
        Act::Close,
    ]);
    assert_eq!((v.as_str(), rule.as_str()), ("fail", "default"));
}
