//! The llhttp request fixtures (`shared/conformance/llhttp/request/*.md`)
//! run against the real server.
//!
//! Each `#`-heading with a `<!-- meta={...} -->` line, an ```` ```http ````
//! block and a ```` ```log ```` block is one case. The http block is decoded
//! the way the fixtures are written: a line ending in a backslash continues
//! on the next line without a line break, every other line break is CRLF on
//! the wire, and `\r`, `\n`, `\t`, `\f`, `\xHH` and octal `\NNN` escapes
//! stand for single bytes. The log tells what a strict parser makes of the
//! bytes: the messages it completed (method, version, flags, where each head
//! ends) and, if it ends in `error code=N`, that it rejects them.
//!
//! What the server must do:
//! - accepted case: answer every complete message, in order, as its framing
//!   says (the routes will not match; a 404/405 is an answer), keep the
//!   connection unless a message asked to close, and then answer a probe
//!   request behind them on the same connection;
//! - rejected case: answer the messages completed before the error, then
//!   refuse with a 4xx/5xx that announces `Connection: close` (or just
//!   close), and close the connection.
//!
//! HTTP/1.1 messages without Host get `Host: localhost` (or the authority of
//! an absolute-form target) added as their last field, because RFC 9112 §3.2
//! requires a 400 for a missing Host and that would hide what the case is
//! about.

use std::path::Path;
use std::time::Instant;

use shardline_tests::client::{find, show};
use shardline_tests::{Client, ReadError, Response, GUARD};

/// One fixture.
#[derive(Debug, Clone)]
pub struct Case {
    /// `file.md#heading` (with `#2`, `#3` for repeated headings).
    pub id: String,
    pub meta_type: String,
    pub meta: serde_json::Value,
    pub data: Vec<u8>,
    pub log: Vec<String>,
}

/// A message llhttp parsed (from the log).
#[derive(Debug, Clone, Default)]
pub struct Message {
    pub begin: usize,
    pub method: String,
    pub url: String,
    pub header_fields: Vec<String>,
    /// Offset just after the head's final CRLF, if the head completed.
    pub headers_end: Option<usize>,
    pub version: String,
    pub flags: u32,
    /// `content_length` of the headers-complete line.
    pub content_length: u64,
    /// Offset after the message, if it completed.
    pub end: Option<usize>,
}

// llhttp's `flags` bits (hex in the log).
const F_CONNECTION_KEEP_ALIVE: u32 = 1 << 0;
const F_CONNECTION_CLOSE: u32 = 1 << 1;
const F_CHUNKED: u32 = 1 << 3;
const F_CONTENT_LENGTH: u32 = 1 << 5;

/// Completes a case whose last message has a whole head but a cut body,
/// when the log says how: the missing Content-Length bytes, or the end of a
/// chunked body right after the head or after the last-chunk line. Then the
/// message can be answered and the connection checked, instead of only
/// seeing the server drop an incomplete request.
fn complete_body(data: &mut Vec<u8>, msgs: &mut [Message]) -> Option<&'static str> {
    let m = msgs.last_mut()?;
    let he = m.headers_end?;
    if m.end.is_some() {
        return None;
    }
    let body = &data[he.min(data.len())..];
    let how = if m.flags & F_CHUNKED != 0 {
        if body.is_empty() {
            data.extend_from_slice(b"0\r\n\r\n");
            "added the last chunk"
        } else if body.ends_with(b"\r\n0\r\n") {
            data.extend_from_slice(b"\r\n");
            "added the final CRLF"
        } else {
            return None;
        }
    } else if m.flags & F_CONTENT_LENGTH != 0 {
        let missing = (m.content_length as usize).checked_sub(body.len())?;
        data.extend(std::iter::repeat(b'x').take(missing));
        "added the missing Content-Length bytes"
    } else {
        return None;
    };
    m.end = Some(data.len());
    Some(how)
}

impl Message {
    /// Whether the connection ends after this message's response
    /// (RFC 9112 §9.3).
    pub fn closes(&self) -> bool {
        self.flags & F_CONNECTION_CLOSE != 0
            || (self.version == "1/0" && self.flags & F_CONNECTION_KEEP_ALIVE == 0)
    }
}

/// What the log says about a case.
#[derive(Debug, Clone)]
pub struct Parsed {
    pub messages: Vec<Message>,
    /// `(offset, code, reason)` when the log ends in an error.
    pub error: Option<(usize, u32, String)>,
}

/// Decodes an http block (see the module docs).
pub fn decode(block: &str) -> Vec<u8> {
    // 1. Line continuations: backslash + line break joins lines; a
    //    backslash ending the block is dropped too.
    let mut text = block.replace("\\\n", "");
    if text.ends_with('\\') && !text.ends_with("\\\\") {
        text.pop();
    }
    // 2. Line breaks are CRLF on the wire. 3. Escapes. Like the fixtures'
    //    own harness, an escape yields a character (code point), and the
    //    text goes on the wire as UTF-8: `\xff` is the two bytes C3 BF, as
    //    the logs' offsets show.
    let src: Vec<char> = text.replace('\n', "\r\n").chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < src.len() {
        if src[i] != '\\' || i + 1 >= src.len() {
            out.push(src[i]);
            i += 1;
            continue;
        }
        match src[i + 1] {
            'r' => {
                out.push('\r');
                i += 2;
            }
            'n' => {
                out.push('\n');
                i += 2;
            }
            't' => {
                out.push('\t');
                i += 2;
            }
            'f' => {
                out.push('\u{c}');
                i += 2;
            }
            'x' if i + 3 < src.len()
                && src[i + 2].is_ascii_hexdigit()
                && src[i + 3].is_ascii_hexdigit() =>
            {
                let h: String = src[i + 2..i + 4].iter().collect();
                out.push(char::from(u8::from_str_radix(&h, 16).unwrap()));
                i += 4;
            }
            '0'..='7' => {
                let mut j = i + 1;
                let mut v: u32 = 0;
                while j < src.len() && j < i + 4 && ('0'..='7').contains(&src[j]) {
                    v = v * 8 + src[j].to_digit(8).unwrap();
                    j += 1;
                }
                out.push(char::from_u32(v).unwrap());
                i = j;
            }
            _ => {
                // Not an escape: the backslash is data (e.g. `\"` in a URI).
                out.push('\\');
                i += 1;
            }
        }
    }
    out.into_bytes()
}

/// Loads every case of every `*.md` file in `dir`.
pub fn load(dir: &Path) -> Vec<Case> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).unwrap();
        let lines: Vec<&str> = text.split('\n').collect();
        let mut heading = String::new();
        let mut meta: Option<serde_json::Value> = None;
        let mut seen: std::collections::HashMap<String, usize> = Default::default();
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i];
            if l.starts_with('#') {
                heading = l.trim_start_matches('#').trim().to_string();
                meta = None;
            } else if let Some(m) = l
                .trim()
                .strip_prefix("<!-- meta=")
                .and_then(|r| r.strip_suffix("-->"))
            {
                meta = Some(
                    serde_json::from_str(m.trim())
                        .unwrap_or_else(|e| panic!("{name}: bad meta {m:?}: {e}")),
                );
            } else if l.starts_with("```http") {
                let start = i + 1;
                let mut j = start;
                while !lines[j].starts_with("```") {
                    j += 1;
                }
                let block = lines[start..j].join("\n");
                let mut k = j + 1;
                while !lines[k].starts_with("```log") {
                    k += 1;
                }
                let log_start = k + 1;
                let mut m = log_start;
                while !lines[m].starts_with("```") {
                    m += 1;
                }
                let log: Vec<String> = lines[log_start..m].iter().map(|s| s.to_string()).collect();
                let meta_v = meta
                    .clone()
                    .unwrap_or_else(|| panic!("{name}: case {heading:?} has no meta line"));
                let n = seen.entry(heading.clone()).or_insert(0);
                *n += 1;
                let id = if *n == 1 {
                    format!("{name}#{heading}")
                } else {
                    format!("{name}#{heading} #{n}")
                };
                cases.push(Case {
                    id,
                    meta_type: meta_v["type"].as_str().unwrap_or("").to_string(),
                    meta: meta_v,
                    data: decode(&block),
                    log,
                });
                i = m;
            }
            i += 1;
        }
    }
    cases
}

fn quoted(line: &str) -> String {
    // `span[x]="value"`: the value runs to the last quote.
    let a = line.find('"').map_or(line.len(), |i| i + 1);
    let b = line.rfind('"').unwrap_or(line.len());
    if b > a {
        line[a..b].to_string()
    } else {
        String::new()
    }
}

fn offset(line: &str) -> Option<usize> {
    line.strip_prefix("off=")?.split(' ').next()?.parse().ok()
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|t| t.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// Reads the log.
pub fn parse_log(log: &[String]) -> Parsed {
    let mut messages: Vec<Message> = Vec::new();
    let mut error = None;
    for line in log {
        let Some(off) = offset(line) else { continue };
        if line.contains(" message begin") {
            messages.push(Message {
                begin: off,
                ..Default::default()
            });
            continue;
        }
        let Some(m) = messages.last_mut() else {
            continue;
        };
        if line.contains("span[method]=") {
            m.method.push_str(&quoted(line));
        } else if line.contains("span[url]=") {
            m.url.push_str(&quoted(line));
        } else if line.contains("span[header_field]=") {
            m.header_fields.push(quoted(line));
        } else if line.contains(" headers complete ") {
            m.headers_end = Some(off);
            m.version = field(line, "v").unwrap_or("").to_string();
            m.flags = u32::from_str_radix(field(line, "flags").unwrap_or("0"), 16).unwrap_or(0);
            m.content_length = field(line, "content_length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
        } else if line.contains(" message complete") {
            m.end = Some(off);
        } else if line.contains(" error code=") {
            let code = field(line, "code")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let reason = line.split("reason=").nth(1).unwrap_or("").to_string();
            error = Some((off, code, reason));
        }
    }
    Parsed { messages, error }
}

/// Why a case is not run, if it is not.
pub fn skip_reason(case: &Case, parsed: &Parsed) -> Option<String> {
    if case.meta_type != "request" {
        return Some(format!(
            "meta type {:?}: not a strict request case (lenient mode or llhttp_finish())",
            case.meta_type
        ));
    }
    if case.meta.get("skipBody").is_some() {
        return Some("skipBody: a parser callback skips the body; no wire meaning".into());
    }
    if let Some((_, code @ (22 | 23), _)) = parsed.error {
        return Some(format!(
            "llhttp pauses (code {code}) for CONNECT/Upgrade/PRI: tunnel and protocol switch are out of scope"
        ));
    }
    if parsed.messages.iter().any(|m| m.method == "CONNECT") {
        return Some("CONNECT: tunnels are out of scope".into());
    }
    None
}

/// The authority of an absolute-form target, without userinfo.
fn authority(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let auth = &rest[..end];
    Some(auth.rsplit('@').next().unwrap_or(auth))
}

/// Adds Host where an HTTP/1.1 message lacks it (see the module docs).
/// Returns the new bytes and the messages with shifted offsets.
pub fn with_host(data: &[u8], parsed: &Parsed) -> (Vec<u8>, Vec<Message>) {
    let mut out = data.to_vec();
    let mut msgs = parsed.messages.clone();
    if parsed.error.is_some() {
        // Rejected case: no reliable per-message offsets past the error.
        // Add Host to the first head if it is complete and lacks one.
        let lower = data.to_ascii_lowercase();
        let has_host = find(&lower, b"\nhost:").is_some();
        if !has_host && find(data, b"HTTP/1.1").is_some() {
            if let Some(p) = find(data, b"\r\n\r\n") {
                let host = msgs
                    .first()
                    .and_then(|m| authority(&m.url))
                    .unwrap_or("localhost");
                let ins = format!("Host: {host}\r\n");
                out.splice(p + 2..p + 2, ins.bytes());
            }
        }
        return (out, msgs);
    }
    for idx in (0..msgs.len()).rev() {
        let m = &msgs[idx];
        let Some(he) = m.headers_end else { continue };
        if m.version != "1/1"
            || m.header_fields
                .iter()
                .any(|h| h.eq_ignore_ascii_case("host"))
        {
            continue;
        }
        assert_eq!(
            &data[he - 2..he],
            b"\r\n",
            "headers complete offset {he} does not follow a CRLF in {}",
            show(data)
        );
        let host = authority(&m.url).unwrap_or("localhost").to_string();
        let ins = format!("Host: {host}\r\n");
        let at = he - 2;
        out.splice(at..at, ins.bytes());
        let shift = ins.len();
        for later in msgs.iter_mut().skip(idx) {
            if later.begin > at {
                later.begin += shift;
            }
            later.headers_end = later
                .headers_end
                .map(|o| if o > at { o + shift } else { o });
            later.end = later.end.map(|o| if o > at { o + shift } else { o });
        }
    }
    (out, msgs)
}

/// An alternative expectation for a case where shardline's documented
/// policy differs from llhttp's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alt {
    /// llhttp accepts it; shardline refuses it (4xx/5xx + close).
    Rejected,
    /// llhttp refuses it; shardline accepts it as one message that ends
    /// with the data (e.g. a method outside llhttp's fixed table: any token
    /// is a method, RFC 9110 §9.1).
    Accepted,
}

/// The log of an [`Alt::Accepted`] case, rebuilt as one complete message.
fn as_one_message(data: &[u8]) -> Parsed {
    let sp = data.iter().position(|&b| b == b' ').unwrap_or(0);
    let line_end = find(data, b"\r\n").unwrap_or(data.len());
    let line = String::from_utf8_lossy(&data[..line_end]).into_owned();
    let mut parts = line.split(' ');
    let _ = parts.next();
    let url = parts.next().unwrap_or("").to_string();
    let head_end = find(data, b"\r\n\r\n").map(|p| p + 4);
    let header_fields = head_end
        .map(|he| {
            String::from_utf8_lossy(&data[line_end..he - 2])
                .split("\r\n")
                .filter_map(|l| l.split_once(':').map(|(n, _)| n.to_string()))
                .collect()
        })
        .unwrap_or_default();
    Parsed {
        messages: vec![Message {
            begin: 0,
            method: String::from_utf8_lossy(&data[..sp]).into_owned(),
            url,
            header_fields,
            headers_end: head_end,
            version: if line.ends_with("HTTP/1.1") {
                "1/1"
            } else {
                "1/0"
            }
            .into(),
            flags: if line.ends_with("HTTP/1.1") {
                0
            } else {
                F_CONNECTION_CLOSE
            },
            content_length: 0,
            end: Some(data.len()),
        }],
        error: None,
    }
}

/// The probe request sent behind an accepted case's messages.
pub const PROBE: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";

/// The result of one case.
#[derive(Debug)]
pub struct Outcome {
    pub ok: bool,
    pub detail: String,
    /// The server had to be told EOF (half-close) before it acted.
    pub needed_eof: bool,
    /// What the server answered (statuses and problem types), for the report.
    pub answers: String,
    /// How the case's data was completed, if it was.
    pub completed: Option<&'static str>,
}

/// Statuses the default routes answer to requests they do not serve.
fn is_routing_answer(status: u16) -> bool {
    status < 400 || status == 404 || status == 405
}

/// Reads responses until the server closes; half-closes once if the server
/// waits. Returns (responses before the half-close, responses after it,
/// closed?, half-closed?, error text).
struct Drained {
    before: Vec<Response>,
    after: Vec<Response>,
    closed: bool,
    half_closed: bool,
    problem: Option<String>,
}

fn drain(c: &mut Client, methods: &[String], half_close_on_wait: bool) -> Drained {
    let mut d = Drained {
        before: Vec::new(),
        after: Vec::new(),
        closed: false,
        half_closed: false,
        problem: None,
    };
    loop {
        let idx = d.before.len() + d.after.len();
        let head = methods.get(idx).is_some_and(|m| m == "HEAD");
        match c.read_response_until(head, Instant::now() + GUARD) {
            Ok(r) if r.is_interim() => {}
            Ok(r) => {
                if d.half_closed {
                    d.after.push(r);
                } else {
                    d.before.push(r);
                }
            }
            Err(ReadError::Eof | ReadError::Reset) => {
                d.closed = true;
                return d;
            }
            Err(ReadError::Timeout { partial }) if !d.half_closed && half_close_on_wait => {
                if !partial.is_empty() {
                    d.problem = Some(format!("partial response then silence: {}", show(&partial)));
                    return d;
                }
                c.shutdown_write();
                d.half_closed = true;
            }
            Err(e) => {
                d.problem = Some(e.to_string());
                return d;
            }
        }
    }
}

/// Runs one case (already known not to be skipped) against `addr`.
pub fn run(case: &Case, parsed: &Parsed, addr: std::net::SocketAddr, alt: Option<Alt>) -> Outcome {
    let rebuilt;
    let parsed = if alt == Some(Alt::Accepted) {
        rebuilt = as_one_message(&case.data);
        &rebuilt
    } else {
        parsed
    };
    let (mut data, mut msgs) = with_host(&case.data, parsed);
    let completed = if parsed.error.is_none() && alt.is_none() {
        complete_body(&mut data, &mut msgs)
    } else {
        None
    };
    let methods: Vec<String> = msgs.iter().map(|m| m.method.clone()).collect();
    let mut c = Client::connect(addr);
    if parsed.error.is_some() || alt == Some(Alt::Rejected) {
        let _ = c.try_send(&data);
        // An allow-listed case is refused at its first message.
        let before_error = if parsed.error.is_some() {
            parsed.messages.iter().filter(|m| m.end.is_some()).count()
        } else {
            0
        };
        return judge_rejected(&mut c, parsed, before_error, &data, &methods);
    }

    // Accepted: which messages get answered.
    let complete: Vec<&Message> = msgs.iter().filter(|m| m.end.is_some()).collect();
    let mut expected = 0;
    let mut closes = false;
    for m in &complete {
        expected += 1;
        if m.closes() {
            closes = true;
            break;
        }
    }
    let last_end = complete.last().and_then(|m| m.end).unwrap_or(0);
    let trailing = &data[last_end.min(data.len())..];
    let trailing_partial = !closes && trailing.iter().any(|&b| b != b'\r' && b != b'\n');

    let mut bytes = data.clone();
    let probe = !closes && !trailing_partial;
    if probe {
        bytes.extend_from_slice(PROBE);
    }
    let _ = c.try_send(&bytes);
    let mut want_methods = methods.clone();
    want_methods.truncate(expected);
    if probe {
        want_methods.push("GET".into());
    }
    if trailing_partial {
        // Let the answers to the complete messages arrive, then end the
        // stream: the server must drop the incomplete one.
        let mut got = Vec::new();
        for (i, m) in want_methods.iter().enumerate() {
            match c.read_final(m == "HEAD") {
                Ok((_, r)) => got.push(r),
                Err(e) => {
                    return Outcome {
                        ok: false,
                        detail: format!(
                            "message {} of {expected} not answered: {e}; before: {}",
                            i + 1,
                            summaries(&got)
                        ),
                        needed_eof: false,
                        answers: String::new(),
                        completed,
                    }
                }
            }
        }
        c.shutdown_write();
        let d = drain(&mut c, &[], false);
        let mut detail = check_answers(&got, &complete, expected);
        if !d.closed {
            detail.push(format!(
                "not closed after EOF mid-request: {}",
                d.problem.unwrap_or_default()
            ));
        }
        if d.before.iter().any(|r| r.status < 400) {
            detail.push(format!(
                "the incomplete trailing request was answered: {}",
                summaries(&d.before)
            ));
        }
        got.extend(d.before);
        let mut o = finish(detail, false, &got);
        o.completed = completed;
        return o;
    }

    let d = drain(&mut c, &want_methods, false);
    let mut detail = Vec::new();
    if let Some(p) = &d.problem {
        detail.push(format!("reading responses: {p}"));
    }
    if !d.closed && d.problem.is_none() {
        detail.push("connection not closed at the end".into());
    }
    let got = d.before;
    if probe {
        if got.len() != expected + 1 {
            detail.push(format!(
                "expected {expected} answers and the probe's, got {}: {}",
                got.len(),
                summaries(&got)
            ));
        } else {
            let p = &got[expected];
            if p.status != 200 {
                detail.push(format!("probe behind the case got {}", p.summary()));
            }
            detail.extend(check_answers(&got[..expected], &complete, expected));
        }
    } else {
        if got.len() != expected {
            detail.push(format!(
                "expected {expected} answers then a close, got {}: {}",
                got.len(),
                summaries(&got)
            ));
        }
        detail.extend(check_answers(&got, &complete, expected));
    }
    let mut o = finish(detail, false, &got);
    o.completed = completed;
    o
}

fn finish(detail: Vec<String>, needed_eof: bool, answers: &[Response]) -> Outcome {
    Outcome {
        ok: detail.is_empty(),
        detail: detail.join("; "),
        needed_eof,
        answers: answers
            .iter()
            .map(|r| {
                let body = String::from_utf8_lossy(&r.body);
                match body
                    .split("/problems/")
                    .nth(1)
                    .and_then(|t| t.split('"').next())
                {
                    Some(t) => format!("{} {t}", r.status),
                    None => r.status.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", "),
        completed: None,
    }
}

fn summaries(rs: &[Response]) -> String {
    rs.iter()
        .map(|r| format!("[{}]", r.summary()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Each answer to an accepted message is a routing answer, and only the
/// message that asked to close closes.
fn check_answers(got: &[Response], complete: &[&Message], expected: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in got.iter().enumerate().take(expected) {
        // 501 is also an answer here: "method not implemented" (RFC 9110
        // §9.1) for a method no route uses.
        if !is_routing_answer(r.status) && r.status != 501 {
            out.push(format!("message {} refused: {}", i + 1, r.summary()));
        } else if r.closes() && !complete[i].closes() {
            out.push(format!(
                "message {} answered with a close it did not ask for: {}",
                i + 1,
                r.summary()
            ));
        }
    }
    out
}

fn judge_rejected(
    c: &mut Client,
    parsed: &Parsed,
    before_error: usize,
    data: &[u8],
    methods: &[String],
) -> Outcome {
    let d = drain(c, methods, true);
    let mut detail = Vec::new();
    if let Some(p) = &d.problem {
        detail.push(format!("reading: {p}"));
    }
    if !d.closed {
        detail.push("connection not closed".into());
    }
    let got = &d.before;
    if got.len() > before_error + 1 {
        detail.push(format!(
            "{} responses for {before_error} message(s) before the error: {}",
            got.len(),
            summaries(got)
        ));
    }
    for (i, r) in got.iter().enumerate().take(before_error) {
        if r.closes() && i + 1 < got.len() {
            detail.push(format!("answered after a close: {}", summaries(got)));
        }
    }
    if got.len() == before_error + 1 {
        let r = &got[before_error];
        if is_routing_answer(r.status) {
            detail.push(format!("accepted and routed: {}", r.summary()));
        } else if !r.connection_has("close") {
            detail.push(format!(
                "refusal without Connection: close (a routing answer?): {}",
                r.summary()
            ));
        }
    }
    if d.half_closed {
        // The server waited for more bytes. That is only right when what it
        // got so far cannot be judged: the head after the last completed
        // message is not complete.
        let from = parsed
            .messages
            .iter()
            .filter_map(|m| m.end)
            .max()
            .unwrap_or(0)
            .min(data.len());
        if find(&data[from..], b"\r\n\r\n").is_some() {
            detail.push(format!(
                "server waited for more bytes instead of refusing (answers after EOF: {})",
                summaries(&d.after)
            ));
        }
        if d.after.iter().any(|r| is_routing_answer(r.status)) {
            detail.push(format!("accepted at EOF: {}", summaries(&d.after)));
        }
    }
    let mut all = d.before.clone();
    all.extend(d.after.iter().cloned());
    finish(detail, d.half_closed, &all)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_follows_the_fixture_conventions() {
        // Line breaks become CRLF; the block's own last line has none.
        assert_eq!(
            decode("GET / HTTP/1.1\nA: b\n\n"),
            b"GET / HTTP/1.1\r\nA: b\r\n\r\n"
        );
        // Backslash at the end of a line: no line break.
        assert_eq!(decode("a\\n\\\nb"), b"a\nb");
        // Escapes, octal ones included; unknown escapes stay.
        assert_eq!(decode("x\\ty\\r\\01z\\\"q"), b"x\ty\r\x01z\\\"q");
        // Escaped code points above 0x7f go out as UTF-8, like the logs.
        assert_eq!(decode("\\xff"), "\u{ff}".as_bytes());
    }

    #[test]
    fn log_gives_messages_and_errors() {
        let log: Vec<String> = [
            "off=0 message begin",
            "off=0 len=4 span[method]=\"POST\"",
            "off=5 len=1 span[url]=\"/\"",
            "off=17 len=4 span[header_field]=\"Host\"",
            "off=38 headers complete method=3 v=1/0 flags=21 content_length=3",
            "off=41 message complete",
            "off=43 error code=5 reason=\"Data after `Connection: close`\"",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = parse_log(&log);
        assert_eq!(p.messages.len(), 1);
        let m = &p.messages[0];
        assert_eq!((m.method.as_str(), m.url.as_str()), ("POST", "/"));
        assert_eq!(m.headers_end, Some(38));
        assert_eq!(m.end, Some(41));
        assert_eq!(m.content_length, 3);
        assert!(
            !m.closes(),
            "HTTP/1.0 with keep-alive (flag 0x1) stays open"
        );
        assert_eq!(p.error.as_ref().map(|e| e.1), Some(5));
    }
}
