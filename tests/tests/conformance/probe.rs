//! The Http11Probe + smuggler cases (`shared/conformance/http11probe-smuggler/cases.json`)
//! run against the real server, and their condition language.
//!
//! # Running a case
//! The steps are sent in order on one connection. After each step the first
//! final response is read (interim 1xx ones are noted). Then:
//! - if it announces `Connection: close`, the connection is read to its end;
//!   any further response is `extra`, and the close makes `closed`;
//! - on a middle step, the next step follows; bytes the server sends beyond
//!   the first response show up as that next step's responses;
//! - on the last step the follow-up request is sent (with `Connection:
//!   close`, so the server ends the exchange and nothing depends on timing)
//!   and everything up to the close is read. An answer that is the follow-up's
//!   (200 with the `/healthz` body) is the clean outcome; answers beyond it are
//!   `extra`; a follow-up that gets a wrong answer, or none while the
//!   connection stays open, is `poisoned` (only evaluated when the case has
//!   `followup: true`; otherwise the request only marks the end). A close
//!   before the follow-up is answered makes `closed`.
//! - A step answered by a close alone is `noresp` + `closed`; one answered by
//!   nothing within the guard is `noresp` (the "timeout" outcome). If a later
//!   step is answered by a close alone, the earlier step is `closed` and the
//!   later one `notrun`.
//!
//! # Conditions
//! `a&b` is a conjunction of atoms; an atom is `[!][sN:]base` where `sN:`
//! picks step N (1-based; default 1) and `!` negates. Bases: `always`,
//! `noresp`, `closed`, `extra`, `poisoned`, `interim`, `notrun`,
//! `body_empty`, `date_imf`, `status=LIST` (comma-separated codes, ranges
//! `200-205` and classes `2xx`), `echo=TEXT` (body equals), `body_has=TEXT`,
//! `header=NAME`. Rules are tried in order, the first match gives the
//! verdict, else the case's default.

use std::time::Instant;

use shardline_tests::client::show;
use shardline_tests::{Client, ReadError, Response, GUARD};

/// One case from cases.json.
#[derive(Debug, Clone)]
pub struct Case {
    pub id: String,
    pub category: String,
    pub scored: bool,
    pub steps: Vec<Step>,
    pub followup: bool,
    pub rules: Vec<(String, String)>,
    pub default: String,
    pub summary: String,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub send: Vec<u8>,
    pub response_methods: Option<Vec<String>>,
}

fn latin1(s: &str, id: &str) -> Vec<u8> {
    s.chars()
        .map(|c| {
            u8::try_from(u32::from(c))
                .unwrap_or_else(|_| panic!("{id}: send holds a code point above U+00FF: {c:?}"))
        })
        .collect()
}

fn decode_send(v: &serde_json::Value, id: &str) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => latin1(s, id),
        serde_json::Value::Array(parts) => {
            let mut out = Vec::new();
            for p in parts {
                if let Some(s) = p.as_str() {
                    out.extend(latin1(s, id));
                } else if let Some(r) = p.get("repeat") {
                    let unit = latin1(r.as_str().unwrap(), id);
                    let n = p["count"].as_u64().unwrap();
                    for _ in 0..n {
                        out.extend_from_slice(&unit);
                    }
                } else if let Some(f) = p.get("format") {
                    let f = f.as_str().unwrap();
                    let a = p["range"][0].as_u64().unwrap();
                    let b = p["range"][1].as_u64().unwrap();
                    for i in a..b {
                        out.extend(latin1(&f.replace("{i}", &i.to_string()), id));
                    }
                } else {
                    panic!("{id}: unknown send segment {p}");
                }
            }
            out
        }
        other => panic!("{id}: unknown send {other}"),
    }
}

/// Loads the cases.
pub fn load(text: &str) -> Vec<Case> {
    let v: serde_json::Value = serde_json::from_str(text).expect("cases.json is JSON");
    v["cases"]
        .as_array()
        .expect("cases.json has a `cases` array")
        .iter()
        .map(|c| {
            let id = c["id"].as_str().unwrap().to_string();
            let steps = c["steps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Step {
                    send: decode_send(&s["send"], &id),
                    response_methods: s.get("response_methods").map(|m| {
                        m.as_array()
                            .unwrap()
                            .iter()
                            .map(|x| x.as_str().unwrap().to_string())
                            .collect()
                    }),
                })
                .collect();
            let rules = c["expect"]["rules"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap().to_string(),
                        r[1].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            Case {
                category: c["category"].as_str().unwrap_or("").to_string(),
                scored: c["scored"].as_bool().unwrap_or(true),
                steps,
                followup: c["followup"].as_bool().unwrap_or(false),
                rules,
                default: c["expect"]["default"]
                    .as_str()
                    .unwrap_or("fail")
                    .to_string(),
                summary: c["expect"]["summary"].as_str().unwrap_or("").to_string(),
                id,
            }
        })
        .collect()
}

/// The follow-up (and end marker) request.
pub const FOLLOWUP: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

/// What happened on one step.
#[derive(Debug, Default, Clone)]
pub struct StepOutcome {
    pub ran: bool,
    /// The first final response.
    pub response: Option<Response>,
    pub interim: bool,
    pub closed: bool,
    pub extra: bool,
    pub poisoned: bool,
    pub timed_out: bool,
    /// Bytes after a bodiless response that are not a response.
    pub stray: bool,
    /// Everything else that came back (for the report).
    pub others: Vec<Response>,
    pub note: String,
}

impl StepOutcome {
    pub fn describe(&self) -> String {
        if !self.ran {
            return "not run".into();
        }
        let mut s = match &self.response {
            Some(r) => format!("{} {}", r.status, show(&r.body[..r.body.len().min(60)])),
            None if self.timed_out => "no response (timeout)".into(),
            None => "no response".into(),
        };
        for (flag, name) in [
            (self.interim, "interim"),
            (self.closed, "closed"),
            (self.extra, "extra"),
            (self.poisoned, "poisoned"),
            (self.stray, "stray-bytes"),
        ] {
            if flag {
                s.push_str(", ");
                s.push_str(name);
            }
        }
        if !self.others.is_empty() {
            s.push_str(&format!(
                ", then {}",
                self.others
                    .iter()
                    .map(|r| r.status.to_string())
                    .collect::<Vec<_>>()
                    .join("/")
            ));
        }
        if !self.note.is_empty() {
            s.push_str(&format!(" ({})", self.note));
        }
        s
    }
}

/// The method whose response framing applies to a step's first response.
fn method_of(send: &[u8]) -> String {
    let start = send
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(send.len());
    let rest = &send[start..];
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).into_owned()
}

/// What the follow-up's clean answer looks like (status and body of
/// `GET /healthz`).
#[derive(Debug, Clone)]
pub struct Fingerprint {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Fingerprint {
    fn matches(&self, r: &Response) -> bool {
        r.status == self.status && r.body == self.body
    }
}

/// Runs a case.
pub fn run(case: &Case, addr: std::net::SocketAddr, fp: &Fingerprint) -> Vec<StepOutcome> {
    let mut c = Client::connect(addr);
    let mut outs: Vec<StepOutcome> = Vec::new();
    let n = case.steps.len();
    for (i, step) in case.steps.iter().enumerate() {
        let mut o = StepOutcome::default();
        if let Some(prev) = outs.last() {
            if !prev.ran || prev.closed || prev.response.is_none() {
                outs.push(o);
                continue;
            }
        }
        o.ran = true;
        let methods: Vec<String> = step
            .response_methods
            .clone()
            .unwrap_or_else(|| vec![method_of(&step.send)]);
        let head = |k: usize| methods.get(k).is_some_and(|m| m == "HEAD");
        if !c.try_send(&step.send) {
            o.note = "write failed".into();
        }
        let deadline = Instant::now() + GUARD;
        let first = loop {
            match c.read_response_until(head(0), deadline) {
                Ok(r) if r.is_interim() => o.interim = true,
                other => break other,
            }
        };
        let r = match first {
            Ok(r) => r,
            Err(ReadError::Timeout { partial }) => {
                o.timed_out = true;
                if !partial.is_empty() {
                    o.note = format!("partial: {}", show(&partial));
                }
                outs.push(o);
                continue;
            }
            Err(e) if e.is_closed() => {
                if i > 0 && matches!(e, ReadError::Eof | ReadError::Reset) {
                    // The server closed after the previous step's answer.
                    let prev = outs.last_mut().unwrap();
                    prev.closed = true;
                    o.ran = false;
                    o.note = "connection closed before this step".into();
                } else {
                    o.closed = true;
                    if let ReadError::Truncated { partial } = e {
                        o.note = format!("truncated: {}", show(&partial));
                    }
                }
                outs.push(o);
                continue;
            }
            Err(e) => {
                o.note = e.to_string();
                outs.push(o);
                continue;
            }
        };
        let bodiless = head(0) || r.status == 204 || r.status == 304;
        let status = r.status;
        let announced_close = r.closes();
        o.response = Some(r);
        if status == 101 {
            // Protocol switched: nothing more to read as HTTP/1.1.
            outs.push(o);
            break;
        }
        let last = i + 1 == n;
        if announced_close {
            read_rest(&mut c, &mut o, &methods, bodiless, None);
        } else if last {
            let sent = c.try_send(FOLLOWUP);
            if !sent {
                o.note = "follow-up write failed".into();
            }
            read_rest(
                &mut c,
                &mut o,
                &methods,
                bodiless,
                Some((fp, case.followup)),
            );
        }
        outs.push(o);
    }
    while outs.len() < n {
        outs.push(StepOutcome::default());
    }
    outs
}

/// Reads everything after a step's first response up to the close.
fn read_rest(
    c: &mut Client,
    o: &mut StepOutcome,
    methods: &[String],
    bodiless: bool,
    followup: Option<(&Fingerprint, bool)>,
) {
    let deadline = Instant::now() + GUARD;
    let mut got: Vec<Response> = Vec::new();
    let mut eof = false;
    let mut timed_out = false;
    loop {
        let k = 1 + got.len();
        let head = methods.get(k).is_some_and(|m| m == "HEAD");
        match c.read_response_until(head, deadline) {
            Ok(r) if r.is_interim() => {}
            Ok(r) => got.push(r),
            Err(ReadError::Eof | ReadError::Reset) => {
                eof = true;
                break;
            }
            Err(ReadError::Timeout { partial }) => {
                timed_out = true;
                if !partial.is_empty() {
                    if got.is_empty() && bodiless {
                        o.stray = true;
                    }
                    o.note = format!("then silence after {}", show(&partial));
                }
                break;
            }
            Err(ReadError::Malformed { bytes, .. })
            | Err(ReadError::Truncated { partial: bytes }) => {
                if got.is_empty() && bodiless {
                    o.stray = true;
                }
                o.note = format!("unparsable bytes: {}", show(&bytes));
                eof = c.read_to_eof().is_ok();
                break;
            }
            Err(e) => {
                o.note = e.to_string();
                break;
            }
        }
    }
    match followup {
        None => {
            // The server announced the close: whatever else came is extra.
            o.extra = !got.is_empty();
            o.closed = eof;
            if timed_out && got.is_empty() {
                o.note = "announced close but kept the connection open".into();
            }
        }
        Some((fp, evaluate)) => {
            let clean = got.last().is_some_and(|r| fp.matches(r));
            if clean {
                o.extra = got.len() >= 2;
            } else if got.is_empty() {
                o.closed = eof;
                o.poisoned = evaluate && timed_out;
            } else {
                o.extra = got.len() >= 2;
                o.poisoned = evaluate;
            }
        }
    }
    o.others = got;
}

fn status_matches(list: &str, status: u16) -> bool {
    list.split(',').any(|item| {
        let item = item.trim();
        if let Some(class) = item.strip_suffix("xx") {
            class.parse::<u16>().is_ok_and(|c| status / 100 == c)
        } else if let Some((a, b)) = item.split_once('-') {
            let a: u16 = a.parse().expect("status range start");
            let b: u16 = b.parse().expect("status range end");
            (a..=b).contains(&status)
        } else {
            item.parse::<u16>().expect("status code") == status
        }
    })
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` (RFC 9110 §5.6.7).
pub fn is_imf_fixdate(v: &str) -> bool {
    let b = v.as_bytes();
    if b.len() != 29 {
        return false;
    }
    let days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    days.contains(&&v[0..3])
        && &v[3..5] == ", "
        && digits(5..7)
        && b[7] == b' '
        && months.contains(&&v[8..11])
        && b[11] == b' '
        && digits(12..16)
        && b[16] == b' '
        && digits(17..19)
        && b[19] == b':'
        && digits(20..22)
        && b[22] == b':'
        && digits(23..25)
        && &v[25..] == " GMT"
}

fn atom(a: &str, outs: &[StepOutcome]) -> bool {
    let (neg, a) = match a.strip_prefix('!') {
        Some(r) => (true, r),
        None => (false, a),
    };
    let (step, a) = match a.strip_prefix('s').and_then(|r| r.split_once(':')) {
        Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() => {
            (n.parse::<usize>().unwrap() - 1, rest)
        }
        _ => (0, a),
    };
    let (neg, a) = match a.strip_prefix('!') {
        Some(r) => (!neg, r),
        None => (neg, a),
    };
    let o = &outs[step];
    let r = o.response.as_ref();
    let v = match a.split_once('=') {
        None => match a {
            "always" => true,
            "noresp" => r.is_none(),
            "closed" => o.closed,
            "extra" => o.extra,
            "poisoned" => o.poisoned,
            "interim" => o.interim,
            "notrun" => !o.ran,
            "body_empty" => r.is_some_and(|r| r.body.is_empty()) && !o.stray,
            "date_imf" => r
                .and_then(|r| r.header("date"))
                .is_some_and(|d| is_imf_fixdate(&d)),
            other => panic!("unknown condition {other:?}"),
        },
        Some(("status", list)) => r.is_some_and(|r| status_matches(list, r.status)),
        Some(("echo", text)) => r.is_some_and(|r| r.body == latin1(text, "echo=")),
        Some(("body_has", text)) => {
            let needle = latin1(text, "body_has=");
            r.is_some_and(|r| shardline_tests::client::find(&r.body, &needle).is_some())
        }
        Some(("header", name)) => r.is_some_and(|r| r.has_header(name)),
        Some((k, _)) => panic!("unknown condition {k:?}"),
    };
    v != neg
}

/// Whether a condition holds.
pub fn eval(cond: &str, outs: &[StepOutcome]) -> bool {
    cond.split('&').all(|a| atom(a.trim(), outs))
}

/// The verdict and the rule that gave it.
pub fn verdict(case: &Case, outs: &[StepOutcome]) -> (String, String) {
    for (cond, v) in &case.rules {
        if eval(cond, outs) {
            return (v.clone(), cond.clone());
        }
    }
    (case.default.clone(), "default".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lists() {
        assert!(status_matches("2xx", 204));
        assert!(!status_matches("2xx", 301));
        assert!(status_matches("400,413", 413));
        assert!(status_matches("200-205,207-299", 299));
        assert!(!status_matches("200-205,207-299", 206));
        assert!(status_matches("4xx,501", 501));
    }

    #[test]
    fn imf_fixdate() {
        assert!(is_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"));
        assert!(!is_imf_fixdate("Sunday, 06-Nov-94 08:49:37 GMT"));
        assert!(!is_imf_fixdate("Sun Nov  6 08:49:37 1994"));
    }
}
