//! Response encoding (RFC 9112 §4, RFC 9110 §6.6.1, §8.6, §15) and RFC 9457
//! problem details, written straight into the connection's output buffer.

use crate::date::DateCache;
use crate::error::Error;
use crate::json::{escaped_len, write_escaped};
use crate::request::Version;
use crate::syntax::is_token;

/// Interim response sent before reading a body announced with
/// `Expect: 100-continue` (RFC 9110 §10.1.1, §15.2.1).
pub const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Status sent in place of one that is not three digits (RFC 9110 §15: a
/// status code is 100–599 in practice, three digits on the wire per RFC 9112
/// §4); a caller passing anything else has a bug, which is our fault.
pub const FALLBACK_STATUS: u16 = 500;

/// Reason phrase of `status` (RFC 9110 §15, plus RFC 6585 §3–§6 for 428, 429,
/// 431, 511), or `""` when unknown: the reason-phrase may be empty
/// (RFC 9112 §4) and clients must ignore it anyway.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        305 => "Use Proxy",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        402 => "Payment Required",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        511 => "Network Authentication Required",
        _ => "",
    }
}

/// A response to encode. Borrowed parts only.
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    /// Status code.
    pub status: u16,
    /// Extra header fields, written in order after the generated ones. Names
    /// that are not tokens are skipped; CR, LF and NUL in values are written
    /// as SP (RFC 9110 §5.5), so a value can never split the response.
    /// The caller must not repeat Date, Content-Length or Connection here.
    pub headers: &'a [(&'a str, &'a [u8])],
    /// Content-Type value, if any.
    pub content_type: Option<&'a [u8]>,
    /// Content; its length is the Content-Length.
    pub body: &'a [u8],
}

/// How to encode for a given request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Version of the request being answered (the response line is always
    /// HTTP/1.1, RFC 9110 §6.2; the request version only picks the
    /// Connection header).
    pub version: Version,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
    /// Answering a HEAD request: same header fields, no content (RFC 9110 §9.3.2).
    pub head: bool,
}

/// Whether a response with this status carries content: 1xx, 204 and 304
/// never do (RFC 9110 §6.4.1), and must not carry Content-Length where
/// RFC 9110 §8.6 forbids it (1xx, 204) or where it would describe a body
/// that is not there (304).
fn status_has_content(status: u16) -> bool {
    !((100..200).contains(&status) || status == 204 || status == 304)
}

/// Appends the whole response to `out`: status line, Date, Content-Type,
/// Content-Length, Connection, extra headers, blank line, then the body
/// unless `opts.head` or the status has no content.
pub fn encode(out: &mut Vec<u8>, resp: &Response<'_>, opts: EncodeOptions, date: &DateCache) {
    let status = sanitize_status(resp.status);
    let has_content = status_has_content(status);
    // RFC 9110 §9.3.2 / §8.6: a HEAD response carries the Content-Length the
    // GET would have had.
    let content_length = has_content.then_some(resp.body.len() as u64);
    write_head(
        out,
        status,
        resp.content_type,
        content_length,
        resp.headers,
        opts,
        date,
    );
    if has_content && !opts.head {
        out.extend_from_slice(resp.body);
    }
}

/// Content-Type of problem details (RFC 9457 §3).
pub const PROBLEM_JSON: &[u8] = b"application/problem+json";

/// Appends an RFC 9457 problem details response:
/// `{"type":..,"title":..,"status":..,"detail":..}` as
/// `application/problem+json`. Strings are JSON-escaped; the body length is
/// computed first, so nothing is allocated beyond `out`'s growth.
#[allow(clippy::too_many_arguments)] // the signature is the agreed public API
pub fn encode_problem(
    out: &mut Vec<u8>,
    status: u16,
    problem_type: &str,
    title: &str,
    detail: &str,
    extra_headers: &[(&str, &[u8])],
    opts: EncodeOptions,
    date: &DateCache,
) {
    let status = sanitize_status(status);
    let has_content = status_has_content(status);
    let mut digits = itoa::Buffer::new();
    let status_digits = digits.format(status).as_bytes();
    let body_len = PROBLEM_TYPE_KEY.len()
        + escaped_len(problem_type)
        + PROBLEM_TITLE_KEY.len()
        + escaped_len(title)
        + PROBLEM_STATUS_KEY.len()
        + status_digits.len()
        + PROBLEM_DETAIL_KEY.len()
        + escaped_len(detail)
        + 1;
    let content_length = has_content.then_some(body_len as u64);
    write_head(
        out,
        status,
        Some(PROBLEM_JSON),
        content_length,
        extra_headers,
        opts,
        date,
    );
    if has_content && !opts.head {
        let start = out.len();
        out.extend_from_slice(PROBLEM_TYPE_KEY);
        write_escaped(out, problem_type);
        out.extend_from_slice(PROBLEM_TITLE_KEY);
        write_escaped(out, title);
        out.extend_from_slice(PROBLEM_STATUS_KEY);
        out.extend_from_slice(status_digits);
        out.extend_from_slice(PROBLEM_DETAIL_KEY);
        write_escaped(out, detail);
        out.push(b'}');
        debug_assert_eq!(out.len() - start, body_len);
    }
}

const PROBLEM_TYPE_KEY: &[u8] = b"{\"type\":";
const PROBLEM_TITLE_KEY: &[u8] = b",\"title\":";
const PROBLEM_STATUS_KEY: &[u8] = b",\"status\":";
const PROBLEM_DETAIL_KEY: &[u8] = b",\"detail\":";

/// Appends the problem details response for a protocol error.
pub fn encode_error(out: &mut Vec<u8>, err: &Error, opts: EncodeOptions, date: &DateCache) {
    encode_problem(
        out,
        err.status(),
        err.problem_type(),
        err.title(),
        err.detail(),
        &[],
        opts,
        date,
    );
}

/// How the body of a response written by the caller (a proxied or
/// streamed response) is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyDelimit {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`; the caller writes chunks with
    /// [`encode_chunk_header`] and ends with [`LAST_CHUNK`]. Only for
    /// HTTP/1.1 clients (RFC 9112 §6.1).
    Chunked,
    /// The body ends when the connection closes; `opts.keep_alive` must be
    /// false (RFC 9112 §6.3 rule 8).
    Close,
    /// No body: 1xx, 204, 304 or a HEAD response with no known length.
    None,
}

/// The terminating chunk with an empty trailer section (RFC 9112 §7.1).
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// Appends a chunk-size line (`HEX CRLF`) for a chunk of `len` bytes
/// (RFC 9112 §7.1); the caller appends the data and a CRLF.
pub fn encode_chunk_header(out: &mut Vec<u8>, len: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 16];
    let mut n = len;
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Appends the head of a response whose header fields come from elsewhere
/// (an upstream) and whose body the caller writes. `headers` must already be
/// free of hop-by-hop and framing fields (Connection, Transfer-Encoding,
/// Content-Length, ...); this writes the framing that `delimit` names and
/// the Connection field for `opts`. A Date is added unless `headers` holds
/// one (RFC 9110 §6.6.1: a proxy keeps the origin's Date). Names that are
/// not tokens are skipped and CR/LF/NUL in values become SP, as in
/// [`encode`].
pub fn encode_forwarded_head<'a>(
    out: &mut Vec<u8>,
    status: u16,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
    delimit: BodyDelimit,
    opts: EncodeOptions,
    date: &DateCache,
) {
    let status = sanitize_status(status);
    write_status_line(out, status);
    let has_date = write_forwarded_fields(out, headers);
    finish_forwarded_head(out, status, has_date, delimit, opts, date);
}

/// Forwarded header fields checked and encoded once (a cache entry's
/// stored fields), so that each hit copies them instead of checking every
/// name and value again: what [`encode_forwarded_head`] would write for
/// them.
#[derive(Debug, Clone, Default)]
pub struct PreparedFields {
    lines: Box<[u8]>,
    has_date: bool,
}

impl PreparedFields {
    /// Checks and encodes `headers` as [`encode_forwarded_head`] would.
    pub fn new<'a>(headers: impl Iterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut lines = Vec::new();
        let has_date = write_forwarded_fields(&mut lines, headers);
        PreparedFields {
            lines: lines.into_boxed_slice(),
            has_date,
        }
    }

    /// Encoded size in bytes (cache accounting).
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// No field survived (or none was given).
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// [`encode_forwarded_head`] for prepared fields, plus `extra` lines
/// that are already `Name: value\r\n` (the caller's own, e.g. `Age`,
/// `X-Cache` and what the route's policies add).
pub fn encode_prepared_head(
    out: &mut Vec<u8>,
    status: u16,
    fields: &PreparedFields,
    extra: &[&[u8]],
    delimit: BodyDelimit,
    opts: EncodeOptions,
    date: &DateCache,
) {
    let status = sanitize_status(status);
    write_status_line(out, status);
    out.extend_from_slice(&fields.lines);
    for e in extra {
        out.extend_from_slice(e);
    }
    finish_forwarded_head(out, status, fields.has_date, delimit, opts, date);
}

fn write_status_line(out: &mut Vec<u8>, status: u16) {
    let mut num = itoa::Buffer::new();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(num.format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes the fields whose names are tokens, values sanitized; returns
/// whether one was `Date`.
fn write_forwarded_fields<'a>(
    out: &mut Vec<u8>,
    headers: impl Iterator<Item = (&'a str, &'a [u8])>,
) -> bool {
    let mut has_date = false;
    for (name, value) in headers {
        if !is_token(name.as_bytes()) {
            continue;
        }
        has_date |= name.eq_ignore_ascii_case("date");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        write_sanitized_value(out, value);
        out.extend_from_slice(b"\r\n");
    }
    has_date
}

fn finish_forwarded_head(
    out: &mut Vec<u8>,
    status: u16,
    has_date: bool,
    delimit: BodyDelimit,
    opts: EncodeOptions,
    date: &DateCache,
) {
    if !has_date {
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match delimit {
        BodyDelimit::Length(n) if status_has_content(status) => {
            let mut num = itoa::Buffer::new();
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(num.format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyDelimit::Chunked if status_has_content(status) && !opts.head => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
        }
        _ => {}
    }
    if !opts.keep_alive || delimit == BodyDelimit::Close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if opts.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn sanitize_status(status: u16) -> u16 {
    if (100..=999).contains(&status) {
        status
    } else {
        FALLBACK_STATUS
    }
}

/// Room reserved before a head is written, so its pieces are copied
/// without growing `out` midway: a status line, Date, Content-Type and
/// Content-Length come to ~120 bytes; more headers may still grow it.
const HEAD_RESERVE_BYTES: usize = 256;

/// `HTTP/1.1 <status> <reason>\r\nDate: ` in one piece for the statuses
/// most responses carry.
fn common_status_line(status: u16) -> Option<&'static [u8]> {
    Some(match status {
        200 => b"HTTP/1.1 200 OK\r\nDate: ",
        201 => b"HTTP/1.1 201 Created\r\nDate: ",
        204 => b"HTTP/1.1 204 No Content\r\nDate: ",
        304 => b"HTTP/1.1 304 Not Modified\r\nDate: ",
        400 => b"HTTP/1.1 400 Bad Request\r\nDate: ",
        404 => b"HTTP/1.1 404 Not Found\r\nDate: ",
        429 => b"HTTP/1.1 429 Too Many Requests\r\nDate: ",
        _ => return None,
    })
}

fn write_head(
    out: &mut Vec<u8>,
    status: u16,
    content_type: Option<&[u8]>,
    content_length: Option<u64>,
    extra: &[(&str, &[u8])],
    opts: EncodeOptions,
    date: &DateCache,
) {
    let mut num = itoa::Buffer::new();
    // Few, larger copies: each `extend_from_slice` is a capacity check and
    // a `memcpy` call, and this runs once per response (the head of a
    // `/plaintext` answer was ~420 instructions in a dozen pieces).
    out.reserve(HEAD_RESERVE_BYTES);
    // RFC 9112 §4: status-line = HTTP-version SP status-code SP [ reason-phrase ]
    // RFC 9110 §6.6.1: an origin server with a clock MUST send Date.
    match common_status_line(status) {
        Some(line) => out.extend_from_slice(line),
        None => {
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(num.format(status).as_bytes());
            out.push(b' ');
            out.extend_from_slice(reason_phrase(status).as_bytes());
            out.extend_from_slice(b"\r\nDate: ");
        }
    }
    out.extend_from_slice(date.as_bytes());
    if let Some(ct) = content_type {
        out.extend_from_slice(b"\r\nContent-Type: ");
        write_sanitized_value(out, ct);
    }
    if let Some(len) = content_length {
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(num.format(len).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    // RFC 9112 §9.3 / §9.6: HTTP/1.1 is persistent unless "close"; an
    // HTTP/1.0 client only keeps the connection when told "keep-alive".
    if !opts.keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if opts.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    for (name, value) in extra {
        // RFC 9110 §5.1: field-name = token; anything else would corrupt
        // the head.
        if !is_token(name.as_bytes()) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        write_sanitized_value(out, value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// RFC 9110 §5.5: CR, LF and NUL are invalid in a field value; replacing
/// them with SP is the remedy the RFC allows, and it makes response
/// splitting impossible whatever the caller passes.
fn write_sanitized_value(out: &mut Vec<u8>, value: &[u8]) {
    // Values are nearly always clean: look a word at a time, copy once.
    if !crate::syntax::has_cr_lf_or_nul(value) {
        out.extend_from_slice(value);
        return;
    }
    let mut run_start = 0;
    for (i, &b) in value.iter().enumerate() {
        if matches!(b, b'\r' | b'\n' | 0) {
            out.extend_from_slice(&value[run_start..i]);
            out.push(b' ');
            run_start = i + 1;
        }
    }
    out.extend_from_slice(&value[run_start..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_status_lines_match_the_general_form() {
        for status in 100..=599u16 {
            if let Some(line) = common_status_line(status) {
                let general = format!("HTTP/1.1 {status} {}\r\nDate: ", reason_phrase(status));
                assert_eq!(line, general.as_bytes(), "{status}");
            }
        }
    }

    #[test]
    fn prepared_head_equals_forwarded_head() {
        let fields: [(&str, &[u8]); 4] = [
            ("Content-Type", b"text/plain"),
            ("Bad Name", b"dropped"),
            ("X-Odd", b"a\r\nInjected: 1"),
            ("ETag", b"\"x\""),
        ];
        let extra: [(&str, &[u8]); 2] = [("Age", b"3"), ("X-Cache", b"HIT")];
        for (version, keep_alive, head) in [
            (Version::Http11, true, false),
            (Version::Http10, true, true),
            (Version::Http11, false, false),
        ] {
            let o = opts(version, keep_alive, head);
            let mut a = Vec::new();
            encode_forwarded_head(
                &mut a,
                200,
                fields.iter().copied().chain(extra.iter().copied()),
                BodyDelimit::Length(5),
                o,
                &date(),
            );
            let prepared = PreparedFields::new(fields.iter().copied());
            let mut b = Vec::new();
            encode_prepared_head(
                &mut b,
                200,
                &prepared,
                &[b"Age: 3\r\n", b"X-Cache: HIT\r\n"],
                BodyDelimit::Length(5),
                o,
                &date(),
            );
            assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
            assert!(!String::from_utf8_lossy(&b).contains("\r\nInjected"));
        }
    }
    use crate::error::ErrorKind;

    const DATE: &str = "Sun, 06 Nov 1994 08:49:37 GMT";

    fn date() -> DateCache {
        DateCache::new(784_111_777)
    }

    fn opts(version: Version, keep_alive: bool, head: bool) -> EncodeOptions {
        EncodeOptions {
            version,
            keep_alive,
            head,
        }
    }

    fn encode_str(resp: &Response<'_>, o: EncodeOptions) -> String {
        let mut out = Vec::new();
        encode(&mut out, resp, o, &date());
        String::from_utf8(out).expect("ascii")
    }

    fn plain(status: u16, body: &[u8]) -> Response<'_> {
        Response {
            status,
            headers: &[],
            content_type: Some(b"text/plain"),
            body,
        }
    }

    #[test]
    fn rfc9112_4_encodes_status_line_date_type_length_and_body() {
        let s = encode_str(
            &plain(200, b"Hello, World!"),
            opts(Version::Http11, true, false),
        );
        assert_eq!(
            s,
            format!(
                "HTTP/1.1 200 OK\r\nDate: {DATE}\r\nContent-Type: text/plain\r\n\
                 Content-Length: 13\r\n\r\nHello, World!"
            )
        );
    }

    #[test]
    fn rfc9110_6_2_response_version_is_http11_for_http10_requests() {
        let s = encode_str(&plain(200, b"x"), opts(Version::Http10, false, false));
        assert!(s.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(s.contains("\r\nConnection: close\r\n"));
    }

    #[test]
    fn rfc9112_9_6_connection_header_follows_keep_alive() {
        let s = encode_str(&plain(200, b""), opts(Version::Http11, false, false));
        assert!(s.contains("\r\nConnection: close\r\n"));
        let s = encode_str(&plain(200, b""), opts(Version::Http11, true, false));
        assert!(!s.contains("Connection:"));
        let s = encode_str(&plain(200, b""), opts(Version::Http10, true, false));
        assert!(s.contains("\r\nConnection: keep-alive\r\n"));
    }

    #[test]
    fn rfc9110_8_6_no_content_length_or_body_for_1xx_204_304() {
        for status in [101, 204, 304] {
            let s = encode_str(
                &plain(status, b"ignored"),
                opts(Version::Http11, true, false),
            );
            assert!(!s.contains("Content-Length"), "{status}: {s}");
            assert!(s.ends_with("\r\n\r\n"), "{status}: {s}");
        }
    }

    #[test]
    fn rfc9110_9_3_2_head_response_has_content_length_but_no_body() {
        let s = encode_str(&plain(200, b"Hello"), opts(Version::Http11, true, true));
        assert!(s.contains("\r\nContent-Length: 5\r\n"));
        assert!(s.ends_with("\r\n\r\n"));
    }

    #[test]
    fn rfc9110_8_6_empty_body_has_content_length_zero() {
        let r = Response {
            status: 200,
            headers: &[],
            content_type: None,
            body: b"",
        };
        let s = encode_str(&r, opts(Version::Http11, true, false));
        assert_eq!(
            s,
            format!("HTTP/1.1 200 OK\r\nDate: {DATE}\r\nContent-Length: 0\r\n\r\n")
        );
    }

    #[test]
    fn rfc9110_5_5_extra_headers_cannot_split_the_response() {
        let headers: &[(&str, &[u8])] = &[
            ("X-Request-Id", b"abc"),
            ("X-Evil", b"a\r\nSet-Cookie: x=1\0"),
            ("Bad Name", b"dropped"),
            ("", b"dropped"),
        ];
        let r = Response {
            status: 200,
            headers,
            content_type: Some(b"text/plain\r\nX: y"),
            body: b"",
        };
        let s = encode_str(&r, opts(Version::Http11, true, false));
        assert!(s.contains("\r\nX-Request-Id: abc\r\n"));
        assert!(s.contains("\r\nX-Evil: a  Set-Cookie: x=1 \r\n"));
        assert!(s.contains("\r\nContent-Type: text/plain  X: y\r\n"));
        assert!(!s.contains("dropped"));
        assert_eq!(s.matches("\r\n").count(), 7, "{s}");
    }

    #[test]
    fn rfc9110_15_reason_phrases() {
        assert_eq!(reason_phrase(200), "OK");
        assert_eq!(reason_phrase(413), "Content Too Large");
        assert_eq!(reason_phrase(422), "Unprocessable Content");
        assert_eq!(reason_phrase(431), "Request Header Fields Too Large");
        assert_eq!(reason_phrase(505), "HTTP Version Not Supported");
        assert_eq!(reason_phrase(299), "");
    }

    #[test]
    fn rfc9112_4_unknown_status_has_empty_reason_and_invalid_status_becomes_500() {
        let s = encode_str(&plain(299, b""), opts(Version::Http11, true, false));
        assert!(s.starts_with("HTTP/1.1 299 \r\n"));
        let s = encode_str(&plain(42, b""), opts(Version::Http11, true, false));
        assert!(s.starts_with("HTTP/1.1 500 Internal Server Error\r\n"));
    }

    #[test]
    fn rfc9110_15_2_1_continue_bytes() {
        assert_eq!(CONTINUE_100, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[test]
    fn rfc9457_3_problem_details_body_and_headers() {
        let mut out = Vec::new();
        let extra: &[(&str, &[u8])] = &[("Retry-After", b"1")];
        encode_problem(
            &mut out,
            429,
            "https://shardline.dev/problems/rate-limited",
            "Too Many Requests",
            "Slow down \"please\".",
            extra,
            opts(Version::Http11, true, false),
            &date(),
        );
        let s = String::from_utf8(out).expect("utf8");
        let body = r#"{"type":"https://shardline.dev/problems/rate-limited","title":"Too Many Requests","status":429,"detail":"Slow down \"please\"."}"#;
        assert_eq!(
            s,
            format!(
                "HTTP/1.1 429 Too Many Requests\r\nDate: {DATE}\r\n\
                 Content-Type: application/problem+json\r\nContent-Length: {}\r\n\
                 Retry-After: 1\r\n\r\n{body}",
                body.len()
            )
        );
    }

    #[test]
    fn rfc9457_3_encode_error_uses_the_error_fields_and_valid_json() {
        for &kind in ErrorKind::ALL {
            let err = Error::new(kind);
            let mut out = Vec::new();
            encode_error(&mut out, &err, opts(Version::Http11, false, false), &date());
            let s = String::from_utf8(out).expect("utf8");
            let (head, body) = s.split_once("\r\n\r\n").expect("blank line");
            assert!(head.starts_with(&format!("HTTP/1.1 {} {}\r\n", err.status(), err.title())));
            assert!(head.contains(&format!("\r\nContent-Length: {}\r\n", body.len())));
            assert!(head.contains("\r\nConnection: close"));
            assert!(body.contains(&format!("\"status\":{}", err.status())));
            assert!(body.contains(err.problem_type()));
            assert!(
                crate::json::validate_json(&mut body.as_bytes().to_vec()),
                "{body}"
            );
        }
    }

    #[test]
    fn rfc9110_9_3_2_problem_for_head_has_length_but_no_body() {
        let mut out = Vec::new();
        encode_error(
            &mut out,
            &Error::new(ErrorKind::BadTarget),
            opts(Version::Http11, true, true),
            &date(),
        );
        let s = String::from_utf8(out).expect("utf8");
        assert!(s.ends_with("\r\n\r\n"));
        assert!(s.contains("Content-Length: "));
    }

    #[test]
    fn rfc9112_7_1_chunk_header_is_lower_hex() {
        let mut out = Vec::new();
        encode_chunk_header(&mut out, 0);
        encode_chunk_header(&mut out, 255);
        encode_chunk_header(&mut out, 65_536);
        assert_eq!(out, b"0\r\nff\r\n10000\r\n");
    }

    #[test]
    fn rfc9110_6_6_1_forwarded_head_keeps_origin_date_and_frames_body() {
        let mut out = Vec::new();
        let hs: [(&str, &[u8]); 2] = [
            ("Date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
            ("X-A", b"1\r\nX"),
        ];
        encode_forwarded_head(
            &mut out,
            200,
            hs.iter().copied(),
            BodyDelimit::Chunked,
            opts(Version::Http11, true, false),
            &date(),
        );
        let s = String::from_utf8(out).expect("ascii");
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2024 00:00:00 GMT\r\nX-A: 1  X\r\n\
             Transfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn rfc9112_6_3_forwarded_head_adds_date_length_and_close() {
        let mut out = Vec::new();
        encode_forwarded_head(
            &mut out,
            404,
            std::iter::empty(),
            BodyDelimit::Length(3),
            opts(Version::Http11, false, false),
            &date(),
        );
        let s = String::from_utf8(out).expect("ascii");
        assert_eq!(
            s,
            format!("HTTP/1.1 404 Not Found\r\nDate: {DATE}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n")
        );
        let mut out = Vec::new();
        encode_forwarded_head(
            &mut out,
            204,
            std::iter::empty(),
            BodyDelimit::Length(3),
            opts(Version::Http10, true, false),
            &date(),
        );
        let s = String::from_utf8(out).expect("ascii");
        assert!(!s.contains("Content-Length"), "{s}");
        assert!(s.contains("Connection: keep-alive"), "{s}");
    }
}
