//! Request head parsing (RFC 9112 §2–§5, §9.3; RFC 9110 §7.2, §10.1.1).
//!
//! [`parse`] reads one request head from the start of a buffer and borrows
//! every string from it. The request line is parsed here; header field lines
//! are tokenised by `httparse` into caller-owned storage; framing is decided by
//! [`crate::framing::body_framing`]. Before any of that, one pass over the head
//! bytes finds its end and enforces the line-ending policy (see the crate doc).

use core::net::Ipv6Addr;

use httparse::Header;

use crate::error::{Error, ErrorKind};
use crate::framing::{check_framing, BodyFraming};
use crate::limits::{Limits, MAX_LEADING_EMPTY_LINES, REQUEST_LINE_SLACK_BYTES};
use crate::syntax::{
    find_cr_or_lf, hex_val, is_pchar, is_sub_delim, is_tchar, is_unreserved, list_elements,
    REG_NAME, TARGET_CLASS, TARGET_PATH, TARGET_QUERY,
};

/// Protocol version of a request (RFC 9112 §2.3). Only these two are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    /// `HTTP/1.0`
    Http10,
    /// `HTTP/1.1`
    Http11,
}

impl Version {
    /// The version as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// A parsed and validated request head.
///
/// Two lifetimes: `'b` is the input buffer every string borrows from, `'h` is
/// the caller's header array that `httparse` filled. They are separate so that
/// the buffer can outlive the (usually stack-allocated, reused) header array
/// without the borrow checker tying them together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHead<'b, 'h> {
    /// Method token, case-sensitive as received (RFC 9110 §9.1).
    pub method: &'b str,
    /// Raw request-target as received.
    pub target: &'b str,
    /// Path: the origin-form path; for absolute-form the path part (`/` if
    /// empty); `*` for asterisk-form; empty for authority-form (CONNECT).
    pub path: &'b str,
    /// Query after `?`, without it.
    pub query: Option<&'b str>,
    /// Protocol version.
    pub version: Version,
    /// Header fields in order received; values are OWS-trimmed by httparse.
    pub headers: &'h [Header<'b>],
    /// Bytes of the head, including tolerated leading empty lines and the
    /// final blank line: the body (if any) starts at `buf[head_len..]`.
    pub head_len: usize,
    /// Validated body framing.
    pub framing: BodyFraming,
    /// Whether the connection may be reused after this request
    /// (RFC 9112 §9.3): HTTP/1.1 unless a `close` connection option;
    /// HTTP/1.0 only with `keep-alive` and no `close`.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request (RFC 9110 §10.1.1; the
    /// expectation MUST be ignored for HTTP/1.0, so it is false there).
    pub expect_continue: bool,
}

impl<'b, 'h> RequestHead<'b, 'h> {
    /// Value of the first header field named `name` (ASCII case-insensitive,
    /// RFC 9110 §5.1).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether this is a HEAD request (responses carry no content, RFC 9110 §9.3.2).
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// Result of [`parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed<'b, 'h> {
    /// A whole, valid head.
    Complete(RequestHead<'b, 'h>),
    /// The head is not complete yet and nothing seen so far is invalid: read
    /// more and call again with the grown buffer.
    Partial,
}

/// Parses ONE request head at the start of `buf`. More requests may follow
/// (pipelining): the caller advances by `head_len` plus the body bytes and
/// calls again.
///
/// `headers` is caller-owned storage (`[httparse::EMPTY_HEADER; MAX_HEADERS_CAP]`)
/// so that parsing never allocates; the number of fields accepted is the
/// smaller of `limits.max_headers` and `headers.len()`.
///
/// Returns `Partial` when more bytes are needed and `Err` as soon as the bytes
/// seen so far cannot start a valid request, even if the head is incomplete:
/// the request line is checked as far as it goes, and complete field lines
/// are checked as they arrive, so an invalid head is not left parked in the
/// connection buffer until a timeout.
pub fn parse<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    limits: &Limits,
) -> Result<Parsed<'b, 'h>, Error> {
    let cap = limits.max_headers.min(headers.len());
    let slots = &mut headers[..cap];
    let scan = match scan_head(buf, limits)? {
        HeadScan::Complete(scan) => scan,
        HeadScan::Partial {
            line: None,
            line_bytes,
        } => {
            check_partial_request_line(line_bytes, limits)?;
            return Ok(Parsed::Partial);
        }
        HeadScan::Partial {
            line: Some(line),
            line_bytes: complete_fields,
        } => {
            if !complete_fields.is_empty() {
                // httparse stops with Partial after the last complete line;
                // the slots it filled are the ones whose name is not empty.
                slots.fill(httparse::EMPTY_HEADER);
                if let Err(e) = httparse::parse_headers(complete_fields, &mut *slots) {
                    return Err(map_httparse_error(e).into());
                }
                let n = slots.iter().take_while(|h| !h.name.is_empty()).count();
                check_fields(&line, &slots[..n], limits, false)?;
            }
            return Ok(Parsed::Partial);
        }
    };
    let line = scan.line;

    // Header field lines: between the request line's CRLF and the end of the
    // head (which includes the blank line httparse needs to see). The scan
    // already rejected bare CR/LF and lines starting with whitespace;
    // httparse rejects non-token names, whitespace before the colon
    // (RFC 9112 §5.1) and CTLs other than HTAB in values (RFC 9110 §5.5).
    let headers: &'h [Header<'b>] = match httparse::parse_headers(scan.fields, slots) {
        Ok(httparse::Status::Complete((_, hs))) => hs,
        // The block ends in CRLFCRLF, so httparse cannot run out of input;
        // treat the impossible as malformed rather than panic.
        Ok(httparse::Status::Partial) => return Err(ErrorKind::BadHeaderValue.into()),
        Err(e) => return Err(map_httparse_error(e).into()),
    };
    let fields = check_fields(&line, headers, limits, true)?;

    Ok(Parsed::Complete(RequestHead {
        method: line.method,
        target: line.target,
        path: line.path,
        query: line.query,
        version: line.version,
        headers,
        head_len: scan.head_len,
        framing: fields.framing,
        keep_alive: fields.keep_alive,
        expect_continue: fields.expect_continue,
    }))
}

/// What the field section decides.
struct FieldInfo {
    framing: BodyFraming,
    keep_alive: bool,
    expect_continue: bool,
}

/// Host, Connection, Expect and framing rules over the field lines. With
/// `complete == false` only the complete lines of an unfinished head are
/// given, and rules that need the whole section (a missing Host, the final
/// transfer coding) are left for later.
fn check_fields(
    line: &RequestLine<'_>,
    headers: &[Header<'_>],
    limits: &Limits,
    complete: bool,
) -> Result<FieldInfo, Error> {
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut keep_alive_option = false;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            // RFC 9112 §3.2: more than one Host field line -> 400, even if
            // the values are equal.
            if host.is_some() {
                return Err(ErrorKind::DuplicateHost.into());
            }
            host = Some(h.value);
            // RFC 9112 §3.2: Host = uri-host [ ":" port ]; an invalid value
            // -> 400. Every target form we accept has an authority (the
            // server's own), so an empty Host is invalid too (RFC 9112 §3.2
            // allows empty only when the target URI has no authority).
            if !is_valid_authority(h.value, false) {
                return Err(ErrorKind::BadHost.into());
            }
            // RFC 9112 §3.2.2 tells a server to ignore Host when the target
            // is absolute-form; we are stricter and refuse a disagreement,
            // because a proxy in front of us may have routed on the other one.
            if let Some((authority, default_port)) = line.authority {
                if !same_authority(authority.as_bytes(), h.value, default_port) {
                    return Err(ErrorKind::HostMismatch.into());
                }
            }
        } else if name.eq_ignore_ascii_case(b"connection") {
            // RFC 9110 §7.6.1: Connection is a list of case-insensitive options.
            for option in list_elements(h.value) {
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_option = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            // RFC 9110 §10.1.1: 100-continue is the only expectation defined;
            // any other MAY be answered 417. Empty list elements are ignored
            // (RFC 9110 §5.6.1).
            for expectation in list_elements(h.value) {
                if expectation.eq_ignore_ascii_case(b"100-continue") {
                    expect_continue = true;
                } else if !expectation.is_empty() {
                    return Err(ErrorKind::ExpectationFailed.into());
                }
            }
        }
    }

    // RFC 9112 §3.2: an HTTP/1.1 request without Host -> 400.
    if complete && host.is_none() && line.version == Version::Http11 {
        return Err(ErrorKind::MissingHost.into());
    }

    let framing = check_framing(line.version, headers, limits, complete)?;

    Ok(FieldInfo {
        framing,
        keep_alive: match line.version {
            Version::Http11 => !close,
            Version::Http10 => keep_alive_option && !close,
        },
        // RFC 9110 §10.1.1: a 100-continue expectation in an HTTP/1.0 request
        // MUST be ignored.
        expect_continue: expect_continue && line.version == Version::Http11,
    })
}

fn map_httparse_error(e: httparse::Error) -> ErrorKind {
    match e {
        httparse::Error::HeaderName => ErrorKind::BadHeaderName,
        httparse::Error::TooManyHeaders => ErrorKind::TooManyHeaders,
        // HeaderValue, and NewLine (unreachable after the scan); Token,
        // Status and Version belong to the start line, which we parse
        // ourselves.
        _ => ErrorKind::BadHeaderValue,
    }
}

/// A complete head found by [`scan_head`].
struct Scan<'b> {
    line: RequestLine<'b>,
    /// The field lines and the final blank line.
    fields: &'b [u8],
    /// Offset just past the final CRLF of the head.
    head_len: usize,
}

/// What [`scan_head`] found.
enum HeadScan<'b> {
    Complete(Scan<'b>),
    /// The head is incomplete. Without a request line, `line_bytes` is the
    /// request line so far; with one, it is the complete field lines so far.
    Partial {
        line: Option<RequestLine<'b>>,
        line_bytes: &'b [u8],
    },
}

/// One pass over the head bytes: skips tolerated leading empty lines, rejects
/// bare LF and bare CR (RFC 9112 §2.2, see the crate doc), rejects lines that
/// start with whitespace (obs-fold, RFC 9112 §5.2, and whitespace before the
/// first field, RFC 9112 §2.2), parses the request line as soon as it is
/// complete, and enforces the size limits on incomplete heads.
fn scan_head<'b>(buf: &'b [u8], limits: &Limits) -> Result<HeadScan<'b>, Error> {
    let partial_empty = HeadScan::Partial {
        line: None,
        line_bytes: &[],
    };
    // RFC 9112 §2.2: a server SHOULD ignore at least one empty line (CRLF)
    // received prior to the request-line.
    let mut start = 0;
    let mut empty_lines = 0;
    loop {
        match buf.get(start) {
            None => return Ok(partial_empty),
            Some(b'\r') => match buf.get(start + 1) {
                None => return Ok(partial_empty),
                Some(b'\n') => {
                    empty_lines += 1;
                    if empty_lines > MAX_LEADING_EMPTY_LINES {
                        return Err(ErrorKind::BadRequestLine.into());
                    }
                    start += 2;
                }
                Some(_) => return Err(ErrorKind::BareCr.into()),
            },
            Some(b'\n') => return Err(ErrorKind::BareLf.into()),
            Some(_) => break,
        }
    }

    // The head limit counts from the request line; bytes past it are never
    // looked at, so an oversized head costs at most max_header_bytes of work.
    let scan_end = start.saturating_add(limits.max_header_bytes).min(buf.len());
    let mut line_start = start;
    let mut line: Option<RequestLine<'b>> = None;
    let mut fields_start = 0;

    // Line by line: the next CR or LF (found a word at a time) must be a CR
    // followed by LF; anything else is a bare CR or bare LF.
    while let Some(off) = find_cr_or_lf(&buf[line_start..scan_end]) {
        let cr = line_start + off;
        if buf[cr] == b'\n' {
            return Err(ErrorKind::BareLf.into());
        }
        match buf.get(cr + 1) {
            Some(b'\n') if cr + 1 < scan_end => {}
            // A CR must be followed by LF; at the end of the scanned bytes
            // we cannot tell yet.
            Some(b'\n') | None => break,
            Some(_) => return Err(ErrorKind::BareCr.into()),
        }
        let content = &buf[line_start..cr];
        if line.is_none() {
            line = Some(parse_request_line(content, limits)?);
            fields_start = cr + 2;
        } else if content.is_empty() {
            if let Some(line) = line {
                return Ok(HeadScan::Complete(Scan {
                    line,
                    fields: &buf[fields_start..cr + 2],
                    head_len: cr + 2,
                }));
            }
        } else if matches!(content[0], b' ' | b'\t') {
            // RFC 9112 §5.2 obs-fold, and whitespace before the first field.
            return Err(ErrorKind::ObsFold.into());
        }
        line_start = cr + 2;
    }
    // An unfinished field line that already starts with whitespace.
    if line.is_some() && line_start < scan_end && matches!(buf[line_start], b' ' | b'\t') {
        return Err(ErrorKind::ObsFold.into());
    }
    let first_sp = if line.is_none() {
        buf[start..scan_end]
            .iter()
            .position(|&b| b == b' ')
            .map(|p| start + p)
    } else {
        None
    };

    // Incomplete. A request line that is still open and already longer than
    // any target within the limit could need -> 414 now (RFC 9110 §15.5.15).
    if line.is_none() {
        if let Some(sp) = first_sp {
            let after_method = scan_end - (sp + 1);
            if after_method
                > limits
                    .max_uri_bytes
                    .saturating_add(REQUEST_LINE_SLACK_BYTES)
            {
                return Err(ErrorKind::UriTooLong.into());
            }
        }
    }
    // RFC 6585 §5: the head will not fit the limit -> 431.
    if scan_end - start >= limits.max_header_bytes {
        return Err(ErrorKind::HeadTooLarge.into());
    }
    Ok(match line {
        None => HeadScan::Partial {
            line: None,
            line_bytes: &buf[start..scan_end],
        },
        Some(line) => HeadScan::Partial {
            line: Some(line),
            line_bytes: &buf[fields_start..line_start],
        },
    })
}

/// Bytes that no request-target may contain (RFC 3986 §2, RFC 9112 §3.2),
/// so an unfinished target holding one is already invalid.
fn never_in_target(b: u8) -> bool {
    b <= b' ' || b >= 0x7f || matches!(b, b'#' | b'"' | b'<' | b'>' | b'\\')
}

/// Checks a request line that has no CRLF yet as far as it goes, with the
/// same verdicts [`parse_request_line`] would give once it completes.
fn check_partial_request_line(line: &[u8], limits: &Limits) -> Result<(), Error> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Some(sp1) = line.iter().position(|&b| !is_tchar(b)) else {
        return Ok(()); // still in the method
    };
    match line[sp1] {
        _ if sp1 == 0 => return Err(ErrorKind::BadRequestLine.into()),
        b' ' => {}
        b'\t' => return Err(ErrorKind::BadRequestLine.into()),
        _ => return Err(ErrorKind::BadMethod.into()),
    }
    let rest = &line[sp1 + 1..];
    let Some(sp2) = rest.iter().position(|&b| b == b' ') else {
        // Still in the target (its length is checked by scan_head).
        if rest.iter().any(|&b| never_in_target(b)) {
            return Err(ErrorKind::BadTarget.into());
        }
        return Ok(());
    };
    let (target, version) = (&rest[..sp2], &rest[sp2 + 1..]);
    if target.is_empty() {
        return Err(ErrorKind::BadRequestLine.into());
    }
    if target.len() > limits.max_uri_bytes {
        return Err(ErrorKind::UriTooLong.into());
    }
    if !(b"HTTP/1.1".starts_with(version) || b"HTTP/1.0".starts_with(version)) {
        // It can no longer become a supported version: 505 if it still
        // looks like `HTTP/DIGIT[.DIGIT]`, else 400 (RFC 9112 §2.3).
        let well_formed_so_far = version.len() <= 8
            && version.iter().enumerate().all(|(i, &b)| match i {
                0..=4 => b == b"HTTP/"[i],
                6 => b == b'.',
                _ => b.is_ascii_digit(),
            });
        return Err(if well_formed_so_far {
            ErrorKind::VersionNotSupported
        } else {
            ErrorKind::BadVersion
        }
        .into());
    }
    parse_target(&line[..sp1], target).map(|_| ())
}

/// The parts of a request line (RFC 9112 §3).
#[derive(Clone, Copy)]
struct RequestLine<'b> {
    method: &'b str,
    target: &'b str,
    path: &'b str,
    query: Option<&'b str>,
    version: Version,
    /// Authority of an absolute-form target, compared with Host, and its
    /// scheme's default port.
    authority: Option<(&'b str, &'static [u8])>,
}

/// `request-line = method SP request-target SP HTTP-version` (RFC 9112 §3),
/// without its CRLF. Exactly one SP between parts: RFC 9112 §3 lets a
/// recipient split on other whitespace, but a strict server does not, since
/// a front-end might split differently.
fn parse_request_line<'b>(line: &'b [u8], limits: &Limits) -> Result<RequestLine<'b>, Error> {
    let sp1 = line
        .iter()
        .position(|&b| !is_tchar(b))
        .ok_or(ErrorKind::BadRequestLine)?;
    let (method, rest) = line.split_at(sp1);
    if method.is_empty() {
        return Err(ErrorKind::BadRequestLine.into());
    }
    if rest[0] != b' ' {
        // RFC 9110 §9.1: method = token; a non-tchar other than the SP
        // delimiter (TAB, '(', a control) makes the line unparseable.
        return Err(if rest[0] == b'\t' {
            ErrorKind::BadRequestLine
        } else {
            ErrorKind::BadMethod
        }
        .into());
    }
    let rest = &rest[1..];
    let sp2 = rest
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ErrorKind::BadRequestLine)?; // HTTP/0.9 style "GET /" lands here
    let (target, version) = (&rest[..sp2], &rest[sp2 + 1..]);
    if target.is_empty() {
        return Err(ErrorKind::BadRequestLine.into()); // "GET  / HTTP/1.1"
    }
    if target.len() > limits.max_uri_bytes {
        return Err(ErrorKind::UriTooLong.into());
    }
    let version = parse_version(version)?;
    let t = parse_target(method, target)?;
    // One UTF-8 check for `method SP target` (all ASCII once validated);
    // the parts are sliced from it. Three checks of short strings were
    // ~270 instructions per request (callgrind).
    let text = ascii_str(&line[..sp1 + 1 + sp2])?;
    let part = |b: &[u8]| -> Result<&'b str, Error> {
        match offset_in(line, b) {
            Some(at) => text
                .get(at..at + b.len())
                .ok_or_else(|| ErrorKind::BadTarget.into()),
            None => ascii_str_static(b),
        }
    };
    Ok(RequestLine {
        method: part(method)?,
        target: part(target)?,
        path: part(t.path)?,
        query: t.query.map(part).transpose()?,
        version,
        authority: match t.authority {
            Some((a, port)) => Some((part(a)?, port)),
            None => None,
        },
    })
}

/// Where `part` starts within `whole`, if it is a subslice of it.
fn offset_in(whole: &[u8], part: &[u8]) -> Option<usize> {
    let at = (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize);
    (at <= whole.len() && part.len() <= whole.len() - at).then_some(at)
}

/// The fixed paths `parse_target` gives for targets without one (`"/"`,
/// `"*"`, `""`).
fn ascii_str_static(b: &[u8]) -> Result<&'static str, Error> {
    match b {
        b"/" => Ok("/"),
        b"*" => Ok("*"),
        b"" => Ok(""),
        _ => Err(ErrorKind::BadTarget.into()),
    }
}

/// `HTTP-version = "HTTP/" DIGIT "." DIGIT` (RFC 9112 §2.3). 1.0 and 1.1 are
/// served; a higher 1.x minor version is processed as 1.1 (RFC 9110 §6.2:
/// "SHOULD process the message as if it were in the highest minor version
/// ... to which the recipient is conformant"); any other well-formed version
/// (including the digit-only `HTTP/2` and `HTTP/3` spellings) is 505
/// (RFC 9110 §15.6.6); anything else is 400.
fn parse_version(v: &[u8]) -> Result<Version, Error> {
    match v {
        b"HTTP/1.1" => Ok(Version::Http11),
        b"HTTP/1.0" => Ok(Version::Http10),
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', minor] if minor.is_ascii_digit() => {
            Ok(Version::Http11)
        }
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            Err(ErrorKind::VersionNotSupported.into())
        }
        [b'H', b'T', b'T', b'P', b'/', major] if major.is_ascii_digit() && *major != b'1' => {
            Err(ErrorKind::VersionNotSupported.into())
        }
        _ => Err(ErrorKind::BadVersion.into()),
    }
}

/// A request-target split into its parts.
/// Validated (ASCII) parts of the target; a path not in the target is one
/// of the fixed `"/"`, `"*"` or `""`.
struct Target<'b> {
    path: &'b [u8],
    query: Option<&'b [u8]>,
    /// An absolute-form target's authority and its scheme's default port.
    authority: Option<(&'b [u8], &'static [u8])>,
}

/// The four forms of RFC 9112 §3.2, each only where the method allows it.
fn parse_target<'b>(method: &[u8], t: &'b [u8]) -> Result<Target<'b>, Error> {
    let bad = || Error::from(ErrorKind::BadTarget);
    if method == b"CONNECT" {
        // RFC 9112 §3.2.3: authority-form is used only for CONNECT, and
        // CONNECT uses only authority-form (uri-host ":" port, port required).
        if !is_valid_authority(t, true) {
            return Err(bad());
        }
        return Ok(Target {
            path: b"",
            query: None,
            authority: None,
        });
    }
    match t {
        // RFC 9112 §3.2.1 origin-form = absolute-path [ "?" query ]
        [b'/', ..] => {
            let (path, query) = split_path_query(t)?;
            Ok(Target {
                path,
                query,
                authority: None,
            })
        }
        // RFC 9112 §3.2.4 asterisk-form, only for a server-wide OPTIONS.
        b"*" if method == b"OPTIONS" => Ok(Target {
            path: b"*",
            query: None,
            authority: None,
        }),
        _ => {
            // RFC 9112 §3.2.2 absolute-form: a server MUST accept it. Only
            // the http and https schemes (case-insensitive, RFC 3986 §3.1)
            // name resources we serve.
            let (rest, default_port) = match strip_prefix_ignore_case(t, b"http://") {
                Some(rest) => (rest, &b"80"[..]),
                None => (
                    strip_prefix_ignore_case(t, b"https://").ok_or_else(bad)?,
                    &b"443"[..],
                ),
            };
            let auth_end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let (authority, path_query) = rest.split_at(auth_end);
            // RFC 9110 §4.2.1: an http URI with an empty host is invalid;
            // RFC 9110 §4.2.4: userinfo is treated as an error (the '@' is
            // refused by is_valid_authority).
            if !is_valid_authority(authority, false) {
                return Err(bad());
            }
            let (path, query) = match path_query {
                [] => (&b"/"[..], None),
                [b'?', ..] => {
                    validate_query(&path_query[1..])?;
                    (&b"/"[..], Some(&path_query[1..]))
                }
                _ => split_path_query(path_query)?,
            };
            Ok(Target {
                path,
                query,
                authority: Some((authority, default_port)),
            })
        }
    }
}

/// Whether two authorities name the same origin (RFC 9110 §4.2.3): hosts
/// equal ignoring case, ports equal once the scheme's default port is
/// read as no port (`x`, `x:80` and `X:80` are one http origin).
fn same_authority(a: &[u8], b: &[u8], default_port: &[u8]) -> bool {
    fn split(auth: &[u8]) -> (&[u8], &[u8]) {
        // An IP literal's colons are inside its brackets.
        let host_end = if auth.first() == Some(&b'[') {
            auth.iter()
                .position(|&c| c == b']')
                .map_or(auth.len(), |i| i + 1)
        } else {
            auth.iter().position(|&c| c == b':').unwrap_or(auth.len())
        };
        let (host, rest) = auth.split_at(host_end);
        (host, rest.strip_prefix(b":").unwrap_or(rest))
    }
    let is_default = |given: &[u8]| given.is_empty() || given == default_port;
    let (ha, pa) = split(a);
    let (hb, pb) = split(b);
    ha.eq_ignore_ascii_case(hb) && (pa == pb || (is_default(pa) && is_default(pb)))
}

fn strip_prefix_ignore_case<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Splits `absolute-path [ "?" query ]` and validates both parts.
/// Whether a path has a `.` or `..` segment (RFC 3986 §3.3), plain or
/// percent-encoded (`%2e`). Refused rather than resolved: routing matches
/// the path as received, and a back-end that resolves dot-segments (RFC
/// 3986 §5.2.4) would see another path than the one routed, so
/// `/api/../admin` could reach what no route exposes, and a path parameter
/// of `..` could climb out of a rewrite template's prefix. Clients resolve
/// dot-segments before sending (RFC 3986 §5.2), so none is lost.
fn has_dot_segment(p: &[u8]) -> bool {
    p.split(|&b| b == b'/').any(|seg| {
        let mut dots = 0;
        let mut i = 0;
        while i < seg.len() {
            if seg[i] == b'.' {
                i += 1;
            } else if seg[i] == b'%'
                && seg.get(i + 1) == Some(&b'2')
                && seg
                    .get(i + 2)
                    .is_some_and(|c| c.eq_ignore_ascii_case(&b'e'))
            {
                i += 3;
            } else {
                return false;
            }
            dots += 1;
        }
        dots == 1 || dots == 2
    })
}

fn split_path_query(pq: &[u8]) -> Result<(&[u8], Option<&[u8]>), Error> {
    match pq.iter().position(|&b| b == b'?') {
        Some(q) => {
            validate_path(&pq[..q])?;
            validate_query(&pq[q + 1..])?;
            Ok((&pq[..q], Some(&pq[q + 1..])))
        }
        None => {
            validate_path(pq)?;
            Ok((pq, None))
        }
    }
}

/// `absolute-path = 1*( "/" segment )`, segment = *pchar (RFC 9110 §4.1,
/// RFC 3986 §3.3). Refused: '#' (a fragment is never sent, RFC 9112 §3.2),
/// whitespace, '\\' and other bytes outside RFC 3986 (a back-end may
/// normalise '\\' to '/'), non-ASCII, malformed '%' escapes (RFC 3986 §2.1),
/// and escapes that decode to a control character (`%00`, `%0d%0a`: these
/// only serve header injection and C-string truncation attacks).
fn validate_path(p: &[u8]) -> Result<(), Error> {
    // One pass for the common case: every byte plain, and no '.' that
    // could start a dot-segment ('%' is not plain: escaped dots are found
    // below).
    let mut plain = true;
    let mut dot = false;
    for &b in p {
        plain &= TARGET_CLASS[usize::from(b)] & TARGET_PATH != 0;
        dot |= b == b'.';
    }
    if (dot || !plain) && has_dot_segment(p) {
        return Err(ErrorKind::DotSegment.into());
    }
    // Fast path: most paths have no escapes at all.
    if plain {
        return Ok(());
    }
    let mut i = 0;
    while i < p.len() {
        let b = p[i];
        if b == b'%' {
            let v = pct_decode(p, i)?;
            if v < 0x20 || v == 0x7f {
                return Err(ErrorKind::BadTarget.into());
            }
            i += 3;
        } else if is_pchar(b) || b == b'/' {
            i += 1;
        } else {
            return Err(ErrorKind::BadTarget.into());
        }
    }
    Ok(())
}

/// Bytes browsers send unescaped in a query although RFC 3986 does not allow
/// them there (the WHATWG URL query percent-encode set leaves them alone).
/// Refusing them would refuse ordinary traffic such as `?ids[]=1`; they are
/// harmless in a query, which is never normalised as a path.
const QUERY_EXTRA_BYTES: &[u8] = b"[]{}|^`";

/// `query = *( pchar / "/" / "?" )` (RFC 3986 §3.4), plus
/// [`QUERY_EXTRA_BYTES`]. `%00` is refused for the same reason as in paths;
/// other encoded controls are legitimate form data here.
fn validate_query(q: &[u8]) -> Result<(), Error> {
    if q.iter()
        .all(|&b| TARGET_CLASS[usize::from(b)] & TARGET_QUERY != 0)
    {
        return Ok(());
    }
    let mut i = 0;
    while i < q.len() {
        let b = q[i];
        if b == b'%' {
            if pct_decode(q, i)? == 0 {
                return Err(ErrorKind::BadTarget.into());
            }
            i += 3;
        } else if is_pchar(b) || b == b'/' || b == b'?' || QUERY_EXTRA_BYTES.contains(&b) {
            i += 1;
        } else {
            return Err(ErrorKind::BadTarget.into());
        }
    }
    Ok(())
}

/// `pct-encoded = "%" HEXDIG HEXDIG` at `s[i]` (RFC 3986 §2.1).
fn pct_decode(s: &[u8], i: usize) -> Result<u8, Error> {
    match (
        s.get(i + 1).and_then(|&b| hex_val(b)),
        s.get(i + 2).and_then(|&b| hex_val(b)),
    ) {
        (Some(hi), Some(lo)) => Ok(hi << 4 | lo),
        _ => Err(ErrorKind::BadTarget.into()),
    }
}

/// Bytes already checked to be ASCII as `&str`.
fn ascii_str(b: &[u8]) -> Result<&str, Error> {
    core::str::from_utf8(b).map_err(|_| ErrorKind::BadTarget.into())
}

/// Largest TCP port (RFC 9293 §3.1: 16-bit port numbers).
const MAX_PORT: u32 = 65_535;

/// Digits of the largest port; a longer port is invalid without converting.
const MAX_PORT_DIGITS: usize = 5;

/// `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2–§3.2.3), as used
/// by Host, by absolute-form authorities (without userinfo, RFC 9110 §4.2.4)
/// and, with `port_required`, by CONNECT's authority-form (RFC 9112 §3.2.3).
///
/// Stricter than RFC 3986 where it removes ambiguity: the host must not be
/// empty (RFC 9110 §4.2.1), a port present must be 1–5 digits and at most
/// 65535, `,` is refused in reg-name (it suggests a folded list of several
/// Host lines, RFC 9110 §5.3), and IP literals must be valid IPv6 addresses
/// (IPvFuture is not accepted).
fn is_valid_authority(a: &[u8], port_required: bool) -> bool {
    let (host_ok, port) = if let Some(inner) = a.strip_prefix(b"[") {
        let Some(close) = inner.iter().position(|&b| b == b']') else {
            return false;
        };
        let ip_ok = core::str::from_utf8(&inner[..close])
            .ok()
            .and_then(|s| s.parse::<Ipv6Addr>().ok())
            .is_some();
        match &inner[close + 1..] {
            [] => (ip_ok, None),
            [b':', port @ ..] => (ip_ok, Some(port)),
            _ => return false,
        }
    } else {
        // One pass to the ':' (a Host is checked on every request): the
        // table says whether every byte is a plain reg-name byte; only a
        // host with '%' escapes (or a bad byte) takes the exact loop.
        let mut end = 0;
        let mut plain = true;
        while let Some(&b) = a.get(end) {
            if b == b':' {
                break;
            }
            plain &= TARGET_CLASS[usize::from(b)] & REG_NAME != 0;
            end += 1;
        }
        let host = &a[..end];
        let port = a.get(end + 1..);
        (!host.is_empty() && (plain || is_reg_name(host)), port)
    };
    if !host_ok {
        return false;
    }
    match port {
        None => !port_required,
        Some(p) => is_port(p),
    }
}

/// `port = 1*5DIGIT`, at most [`MAX_PORT`].
fn is_port(p: &[u8]) -> bool {
    if p.is_empty() || p.len() > MAX_PORT_DIGITS {
        return false;
    }
    let mut value = 0u32;
    for &d in p {
        if !d.is_ascii_digit() {
            return false;
        }
        value = value * 10 + u32::from(d - b'0');
    }
    value <= MAX_PORT
}

/// `reg-name = *( unreserved / pct-encoded / sub-delims )` minus ','
/// (RFC 3986 §3.2.2); IPv4address is a subset.
fn is_reg_name(h: &[u8]) -> bool {
    // Fast path, one table lookup per byte: no '%' escape to decode.
    if h.iter()
        .all(|&b| TARGET_CLASS[usize::from(b)] & REG_NAME != 0)
    {
        return true;
    }
    let mut i = 0;
    while i < h.len() {
        let b = h[i];
        if b == b'%' {
            if pct_decode(h, i).is_err() {
                return false;
            }
            i += 3;
        } else if is_unreserved(b) || (is_sub_delim(b) && b != b',') {
            i += 1;
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::MAX_HEADERS_CAP;

    /// Parses `raw` with default limits and hands the complete head to `f`.
    fn with_head<R>(raw: &[u8], f: impl FnOnce(RequestHead<'_, '_>) -> R) -> R {
        with_head_limits(raw, &Limits::default(), f)
    }

    fn with_head_limits<R>(
        raw: &[u8],
        limits: &Limits,
        f: impl FnOnce(RequestHead<'_, '_>) -> R,
    ) -> R {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        match parse(raw, &mut headers, limits) {
            Ok(Parsed::Complete(head)) => f(head),
            other => panic!(
                "expected a complete head for {:?}, got {other:?}",
                String::from_utf8_lossy(raw)
            ),
        }
    }

    fn result_limits(raw: &[u8], limits: &Limits) -> Result<bool, ErrorKind> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        match parse(raw, &mut headers, limits) {
            Ok(Parsed::Complete(_)) => Ok(true),
            Ok(Parsed::Partial) => Ok(false),
            Err(e) => Err(e.kind()),
        }
    }

    fn err(raw: &[u8]) -> ErrorKind {
        err_limits(raw, &Limits::default())
    }

    fn err_limits(raw: &[u8], limits: &Limits) -> ErrorKind {
        match result_limits(raw, limits) {
            Err(k) => k,
            Ok(complete) => panic!(
                "expected an error for {:?}, got {}",
                String::from_utf8_lossy(raw),
                if complete { "Complete" } else { "Partial" }
            ),
        }
    }

    fn is_partial(raw: &[u8]) -> bool {
        result_limits(raw, &Limits::default()) == Ok(false)
    }

    /// `GET {target} HTTP/1.1` with Host: localhost.
    fn get(target: &str) -> Vec<u8> {
        format!("GET {target} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
    }

    /// GET / HTTP/1.1 plus the given header lines (each without CRLF).
    fn with_headers(lines: &[&[u8]]) -> Vec<u8> {
        let mut v = b"GET / HTTP/1.1\r\n".to_vec();
        for l in lines {
            v.extend_from_slice(l);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    // ---- RFC 9112 §3: request line -------------------------------------

    #[test]
    fn rfc9112_3_parses_origin_form_request() {
        let raw = b"GET /users/42?x=1&y=2 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
        with_head(raw, |h| {
            assert_eq!(h.method, "GET");
            assert_eq!(h.target, "/users/42?x=1&y=2");
            assert_eq!(h.path, "/users/42");
            assert_eq!(h.query, Some("x=1&y=2"));
            assert_eq!(h.version, Version::Http11);
            assert_eq!(h.headers.len(), 2);
            assert_eq!(h.head_len, raw.len());
            assert_eq!(h.framing, BodyFraming::None);
            assert!(h.keep_alive);
            assert!(!h.expect_continue);
            assert_eq!(h.header("ACCEPT"), Some(&b"*/*"[..]));
            assert_eq!(h.header("missing"), None);
            assert!(!h.is_head());
        });
    }

    #[test]
    fn rfc9110_5_1_header_lookup_is_case_insensitive_and_returns_first() {
        let raw = with_headers(&[b"Host: a", b"X-Dup: one", b"x-dup: two"]);
        with_head(&raw, |h| assert_eq!(h.header("X-DUP"), Some(&b"one"[..])));
    }

    #[test]
    fn rfc9110_9_3_2_is_head() {
        with_head(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n", |h| {
            assert!(h.is_head())
        });
    }

    #[test]
    fn rfc9112_3_empty_query_is_some_empty() {
        with_head(&get("/p?"), |h| {
            assert_eq!(h.path, "/p");
            assert_eq!(h.query, Some(""));
        });
    }

    #[test]
    fn rfc9112_3_rejects_more_than_one_space_between_parts() {
        assert_eq!(
            err(b"GET  /plaintext HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadRequestLine
        );
        assert_eq!(
            err(b"GET /plaintext  HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadVersion
        );
        assert_eq!(
            err(b" GET / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadRequestLine
        );
    }

    #[test]
    fn rfc9112_3_rejects_tab_as_separator() {
        assert_eq!(
            err(b"GET\t/plaintext HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadRequestLine
        );
        assert_eq!(
            err(b"GET /plaintext\tHTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadRequestLine
        );
    }

    #[test]
    fn rfc9112_3_rejects_missing_target() {
        assert_eq!(
            err(b"GET HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadRequestLine
        );
    }

    #[test]
    fn rfc9112_3_rejects_http09_request_line_without_waiting_for_more() {
        // "GET /" alone is HTTP/0.9; refused as soon as its line is complete.
        assert_eq!(err(b"GET /\r\n"), ErrorKind::BadRequestLine);
    }

    #[test]
    fn rfc9112_3_rejects_whitespace_only_line() {
        assert_eq!(err(b"   \r\n\r\n"), ErrorKind::BadRequestLine);
    }

    #[test]
    fn rfc9110_9_1_rejects_method_that_is_not_a_token() {
        assert_eq!(
            err(b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadMethod
        );
        assert_eq!(
            err(b"G\x00T / HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadMethod
        );
    }

    #[test]
    fn rfc9110_9_1_accepts_unknown_and_lowercase_token_methods() {
        // Methods are case-sensitive tokens; routing decides what they mean.
        with_head(b"get / HTTP/1.1\r\nHost: a\r\n\r\n", |h| {
            assert_eq!(h.method, "get")
        });
        with_head(b"FOOBAR / HTTP/1.1\r\nHost: a\r\n\r\n", |h| {
            assert_eq!(h.method, "FOOBAR")
        });
    }

    // ---- RFC 9112 §2.3: version --------------------------------------------

    #[test]
    fn rfc9112_2_3_accepts_http10_and_http11() {
        with_head(b"GET / HTTP/1.0\r\n\r\n", |h| {
            assert_eq!(h.version, Version::Http10)
        });
        with_head(&get("/"), |h| assert_eq!(h.version, Version::Http11));
        assert_eq!(Version::Http10.as_str(), "HTTP/1.0");
    }

    #[test]
    fn rfc9112_2_2_word_scan_finds_the_first_cr_or_lf_like_a_byte_scan() {
        // Every position and every byte value around it, plus high bytes
        // (0x80+) that stress the has-zero-byte arithmetic.
        for len in 0..40usize {
            for pos in 0..=len {
                for &b in &[b'\r', b'\n', 0x8d, 0x8a, 0x0c, 0xff] {
                    let mut v = vec![b'a'; len];
                    v.extend_from_slice(&[0x80, 0x0e]);
                    if pos < len {
                        v[pos] = b;
                    }
                    let naive = v.iter().position(|&c| c == b'\r' || c == b'\n');
                    assert_eq!(find_cr_or_lf(&v), naive, "len {len} pos {pos} byte {b:#x}");
                }
            }
        }
    }

    #[test]
    fn rfc9110_6_2_higher_minor_version_is_processed_as_1_1() {
        for v in ["HTTP/1.2", "HTTP/1.9"] {
            let raw = format!("GET / {v}\r\nHost: a\r\n\r\n");
            with_head(raw.as_bytes(), |h| assert_eq!(h.version, Version::Http11));
        }
    }

    #[test]
    fn rfc9110_15_6_6_well_formed_other_versions_are_505() {
        for v in ["HTTP/2.0", "HTTP/9.9", "HTTP/0.9", "HTTP/2", "HTTP/3"] {
            let raw = format!("GET / {v}\r\nHost: a\r\n\r\n");
            assert_eq!(err(raw.as_bytes()), ErrorKind::VersionNotSupported, "{v}");
        }
        // The HTTP/2 preface is refused with 505 on its first line.
        assert_eq!(
            err(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            ErrorKind::VersionNotSupported
        );
    }

    #[test]
    fn rfc9112_2_3_malformed_versions_are_400() {
        for v in [
            "http/1.1",
            "HTTP/1.1 ",
            "HTTP/01.1",
            "HTTP/01.01",
            "HTTP/1",
            "HTTP/ 1.1",
            "HTTP/1.1x",
            "HTTP/1.",
            "HTTP/a.b",
            "HTTPS/1.1",
            "",
        ] {
            let raw = format!("GET / {v}\r\nHost: a\r\n\r\n");
            assert_eq!(err(raw.as_bytes()), ErrorKind::BadVersion, "{v:?}");
        }
    }

    // ---- RFC 9112 §2.2: message parsing, line endings ------------------------

    #[test]
    fn rfc9112_2_2_every_prefix_of_a_valid_head_is_partial() {
        let raw = b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\n";
        for end in 0..raw.len() {
            assert!(is_partial(&raw[..end]), "prefix of {end} bytes");
        }
        with_head(raw, |h| {
            assert_eq!(h.framing, BodyFraming::ContentLength(5))
        });
    }

    #[test]
    fn rfc9112_2_2_every_prefix_of_varied_valid_heads_is_partial() {
        let heads: [&[u8]; 7] = [
            b"GET http://Example.com:8080/a%20b?x=[1]&y={2}|3 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            b"\r\nGET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
            b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST /u HTTP/1.1\r\nExpect: 100-continue\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
            b"PUT /u HTTP/1.1\r\nHost: a\r\nX: a\tb\r\nY: \xff\r\n\r\n",
        ];
        for raw in heads {
            for end in 0..raw.len() {
                // The gzip-then-chunked head is 501 once complete, but no
                // prefix of it is an error yet.
                let r = result_limits(&raw[..end], &Limits::default());
                assert_eq!(r, Ok(false), "{:?}", String::from_utf8_lossy(&raw[..end]));
            }
        }
    }

    #[test]
    fn rfc9112_2_2_incomplete_request_line_is_refused_once_it_cannot_be_valid() {
        let cases: [(&[u8], ErrorKind); 9] = [
            (b"GET / HTTP/5.6", ErrorKind::VersionNotSupported),
            (b"GET / HTTP/2", ErrorKind::VersionNotSupported),
            (b"GET / HTTP/1.1x", ErrorKind::BadVersion),
            (b"GET / http", ErrorKind::BadVersion),
            (b"GET /a#", ErrorKind::BadTarget),
            (b"GET /a\\", ErrorKind::BadTarget),
            (b"GET /ok x", ErrorKind::BadVersion),
            (b"GE(T", ErrorKind::BadMethod),
            (b"GET  /", ErrorKind::BadRequestLine),
        ];
        for (raw, kind) in cases {
            assert_eq!(err(raw), kind, "{:?}", String::from_utf8_lossy(raw));
        }
        assert_eq!(err(b"GET * HTTP/1.1"), ErrorKind::BadTarget);
    }

    #[test]
    fn rfc9112_2_2_complete_field_lines_of_incomplete_head_are_checked() {
        let cases: [(&[u8], ErrorKind); 7] = [
            (
                b"PUT /url HTTP/1.1\r\nContent-Length: 1000000000000000000000\r\n",
                ErrorKind::ContentLengthInvalid,
            ),
            (
                b"PUT /url HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n",
                ErrorKind::ContentLengthDuplicate,
            ),
            (
                b"PUT /url HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n",
                ErrorKind::ContentLengthWithTransferEncoding,
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n",
                ErrorKind::DuplicateHost,
            ),
            (b"GET / HTTP/1.1\r\nHost: a/b\r\n", ErrorKind::BadHost),
            (
                b"GET / HTTP/1.1\r\nBad Name: x\r\n",
                ErrorKind::BadHeaderName,
            ),
            (
                b"GET / HTTP/1.1\r\nExpect: 200-ok\r\n",
                ErrorKind::ExpectationFailed,
            ),
        ];
        for (raw, kind) in cases {
            assert_eq!(err(raw), kind, "{:?}", String::from_utf8_lossy(raw));
        }
        let limits = Limits {
            max_headers: 2,
            ..Limits::default()
        };
        assert_eq!(
            err_limits(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n", &limits),
            ErrorKind::TooManyHeaders
        );
        // Rules that need the whole section wait for it.
        assert!(is_partial(b"GET / HTTP/1.1\r\nAccept: */*\r\n"));
        assert!(is_partial(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n"
        ));
    }

    #[test]
    fn rfc9112_2_2_ignores_leading_empty_lines_and_counts_them_in_head_len() {
        let raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        with_head(raw, |h| {
            assert_eq!(h.head_len, raw.len());
            assert_eq!(h.path, "/");
        });
        assert!(is_partial(b"\r\n"));
        assert!(is_partial(b"\r\n\r"));
    }

    #[test]
    fn rfc9112_2_2_rejects_more_than_the_tolerated_leading_empty_lines() {
        let mut raw = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES);
        raw.extend_from_slice(&get("/"));
        with_head(&raw, |h| assert_eq!(h.head_len, raw.len()));
        let mut raw = b"\r\n".repeat(MAX_LEADING_EMPTY_LINES + 1);
        raw.extend_from_slice(&get("/"));
        assert_eq!(err(&raw), ErrorKind::BadRequestLine);
    }

    #[test]
    fn rfc9112_2_2_rejects_bare_lf_everywhere_in_the_head() {
        let cases: [&[u8]; 6] = [
            b"\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\nX-Test: v\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\n",
            b"GET / HTTP/1.1\r\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nX: X\n\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in cases {
            assert_eq!(
                err(raw),
                ErrorKind::BareLf,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // Refused even before the head is complete.
        assert_eq!(err(b"GET / HTTP/1.1\n"), ErrorKind::BareLf);
    }

    #[test]
    fn rfc9112_2_2_rejects_bare_cr() {
        let cases: [&[u8]; 5] = [
            b"GET / HTTP/1.1\rHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Test: val\rue\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: X\r\x04Transfer-Encoding: chunked\r\n\r\n",
            b"\r\rGET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\r",
        ];
        for raw in cases {
            assert_eq!(
                err(raw),
                ErrorKind::BareCr,
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // A CR at the very end may still be followed by LF.
        assert!(is_partial(b"GET / HTTP/1.1\r"));
    }

    #[test]
    fn rfc9112_2_2_rejects_whitespace_between_start_line_and_first_field() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\n \r\nHost: a\r\n\r\n"),
            ErrorKind::ObsFold
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\n\tHost: a\r\n\r\n"),
            ErrorKind::ObsFold
        );
    }

    // ---- RFC 9112 §5 / RFC 9110 §5.5: field lines ------------------------------

    #[test]
    fn rfc9112_5_2_rejects_obs_fold() {
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nX-Test: value\r\n continued\r\n\r\n"),
            ErrorKind::ObsFold
        );
        assert_eq!(
            err(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"),
            ErrorKind::ObsFold
        );
    }

    #[test]
    fn rfc9112_5_1_rejects_whitespace_between_name_and_colon() {
        assert_eq!(
            err(&with_headers(&[b"Host: a", b"X-Test : value"])),
            ErrorKind::BadHeaderName
        );
        assert_eq!(
            err(&with_headers(&[
                b"Host: a",
                b"Transfer-Encoding\t: chunked"
            ])),
            ErrorKind::BadHeaderName
        );
    }

    #[test]
    fn rfc9112_5_rejects_malformed_field_names() {
        for line in [
            &b": empty-name"[..],
            b"NoColonHere",
            b"Bad[Name: v",
            b"X-T\xc3\xabst: v",
            b"Transfer_Encoding\x0b: x",
        ] {
            assert_eq!(
                err(&with_headers(&[b"Host: a", line])),
                ErrorKind::BadHeaderName,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn rfc9110_5_5_rejects_control_characters_in_values() {
        for line in [
            &b"X-Test: val\x00ue"[..],
            b"X-Test: abc\x07\x08?f",
            b"Cookie: foo=\x01\x02",
            b"X: \x7f",
            b"Transfer-Encoding: \x0bchunked",
        ] {
            assert_eq!(
                err(&with_headers(&[b"Host: a", line])),
                ErrorKind::BadHeaderValue,
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn rfc9110_5_5_accepts_htab_and_obs_text_in_values() {
        let raw = with_headers(&[b"Host: a", b"X: a\tb", b"Y: caf\xc3\xa9"]);
        with_head(&raw, |h| {
            assert_eq!(h.header("x"), Some(&b"a\tb"[..]));
            assert_eq!(h.header("y"), Some(&b"caf\xc3\xa9"[..]));
        });
    }

    #[test]
    fn rfc9110_5_6_3_values_are_ows_trimmed() {
        let raw = with_headers(&[b"Host:   a  ", b"X:\t v \t"]);
        with_head(&raw, |h| {
            assert_eq!(h.header("host"), Some(&b"a"[..]));
            assert_eq!(h.header("x"), Some(&b"v"[..]));
        });
    }

    // ---- RFC 6585 §5 / RFC 9110 §15.5.15: size limits -------------------------------

    #[test]
    fn rfc6585_5_too_many_headers_is_431() {
        let limits = Limits {
            max_headers: 3,
            ..Limits::default()
        };
        let ok = with_headers(&[b"Host: a", b"A: 1", b"B: 2"]);
        assert_eq!(result_limits(&ok, &limits), Ok(true));
        let over = with_headers(&[b"Host: a", b"A: 1", b"B: 2", b"C: 3"]);
        assert_eq!(err_limits(&over, &limits), ErrorKind::TooManyHeaders);
        assert_eq!(Error::from(ErrorKind::TooManyHeaders).status(), 431);
    }

    #[test]
    fn rfc6585_5_header_array_shorter_than_limit_caps_the_count() {
        let raw = with_headers(&[b"Host: a", b"A: 1", b"B: 2"]);
        let mut headers = [httparse::EMPTY_HEADER; 2];
        let r = parse(&raw, &mut headers, &Limits::default());
        assert_eq!(
            r.map(|_| ()).map_err(|e| e.kind()),
            Err(ErrorKind::TooManyHeaders)
        );
    }

    #[test]
    fn rfc6585_5_head_over_limit_is_431_complete_or_not() {
        let limits = Limits {
            max_header_bytes: 64,
            ..Limits::default()
        };
        // Exactly at the limit is accepted.
        let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        raw.resize(64 - 4, b'v');
        raw.extend_from_slice(b"\r\n\r\n");
        assert_eq!(raw.len(), 64);
        assert_eq!(result_limits(&raw, &limits), Ok(true));
        // One byte more is refused, complete ...
        raw.insert(30, b'v');
        assert_eq!(err_limits(&raw, &limits), ErrorKind::HeadTooLarge);
        // ... or still incomplete.
        assert_eq!(
            err_limits(&raw[..raw.len() - 1], &limits),
            ErrorKind::HeadTooLarge
        );
        assert_eq!(result_limits(&raw[..raw.len() - 2], &limits), Ok(false));
        // A long header value at default limits.
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: ".to_vec();
        big.extend(std::iter::repeat(b'B').take(100_000));
        assert_eq!(err(&big), ErrorKind::HeadTooLarge);
    }

    #[test]
    fn rfc6585_5_head_limit_does_not_count_tolerated_leading_empty_lines() {
        let limits = Limits {
            max_header_bytes: 27,
            ..Limits::default()
        };
        let raw = b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(raw.len() - 4, 27);
        assert_eq!(result_limits(raw, &limits), Ok(true));
    }

    #[test]
    fn rfc9110_15_5_15_target_over_limit_is_414() {
        let limits = Limits {
            max_uri_bytes: 16,
            ..Limits::default()
        };
        assert_eq!(result_limits(&get("/0123456789abcde"), &limits), Ok(true));
        assert_eq!(
            err_limits(&get("/0123456789abcdef"), &limits),
            ErrorKind::UriTooLong
        );
    }

    #[test]
    fn rfc9110_15_5_15_incomplete_request_line_already_too_long_is_414() {
        let limits = Limits {
            max_uri_bytes: 16,
            ..Limits::default()
        };
        let mut raw = b"GET /".to_vec();
        raw.extend(std::iter::repeat(b'a').take(16 + REQUEST_LINE_SLACK_BYTES - 1));
        assert_eq!(result_limits(&raw, &limits), Ok(false));
        raw.push(b'a');
        assert_eq!(err_limits(&raw, &limits), ErrorKind::UriTooLong);
        // At default limits a 100 000-byte URL is 414, a 7900-byte one is fine.
        let mut huge = b"GET /".to_vec();
        huge.extend(std::iter::repeat(b'A').take(100_000));
        assert_eq!(err(&huge), ErrorKind::UriTooLong);
        assert_eq!(
            result_limits(&get(&format!("/{}", "a".repeat(7900))), &Limits::default()),
            Ok(true)
        );
    }

    #[test]
    fn rfc6585_5_endless_method_is_431() {
        let huge = vec![b'A'; 100_000];
        assert_eq!(err(&huge), ErrorKind::HeadTooLarge);
    }

    // ---- RFC 9112 §3.2: request-target forms -------------------------------------

    #[test]
    fn rfc9112_3_2_1_origin_form_must_start_with_slash() {
        assert_eq!(err(&get("plaintext")), ErrorKind::BadTarget);
        with_head(&get("//double"), |h| assert_eq!(h.path, "//double"));
    }

    #[test]
    fn rfc9112_3_2_rejects_fragment() {
        assert_eq!(err(&get("/plaintext#frag")), ErrorKind::BadTarget);
        assert_eq!(err(&get("/p?q=1#frag")), ErrorKind::BadTarget);
    }

    #[test]
    fn rfc3986_2_rejects_bytes_outside_uri_syntax_in_path() {
        for t in [
            &b"/path\\file"[..],
            b"/caf\xc3\xa9",
            b"/\xc0\xaf",
            b"/\x00test",
            b"/a\"b",
            b"/a<b>",
            b"/a{b}",
            b"/a|b",
            b"/a^b",
            b"/a`b",
            b"/a[b]",
            b"/a\x7f",
        ] {
            let mut raw = b"GET ".to_vec();
            raw.extend_from_slice(t);
            raw.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(
                err(&raw),
                ErrorKind::BadTarget,
                "{:?}",
                String::from_utf8_lossy(t)
            );
        }
    }

    #[test]
    fn rfc3986_2_1_rejects_malformed_percent_encoding() {
        for t in ["/a%", "/a%2", "/a%zz", "/a%2g", "/?q=%", "/?q=%4"] {
            assert_eq!(err(&get(t)), ErrorKind::BadTarget, "{t}");
        }
        with_head(&get("/a%2Fb%20c?q=%41"), |h| {
            assert_eq!(h.path, "/a%2Fb%20c")
        });
    }

    #[test]
    fn rfc3986_2_1_rejects_percent_encoded_controls_in_path() {
        for t in [
            "/path%00.html",
            "/path%0d%0aX-Injected:%20true",
            "/a%1F",
            "/a%7f",
        ] {
            assert_eq!(err(&get(t)), ErrorKind::BadTarget, "{t}");
        }
        // In a query, only %00 is refused: encoded newlines are form data.
        assert_eq!(err(&get("/p?a=%00")), ErrorKind::BadTarget);
        with_head(&get("/p?text=a%0D%0Ab"), |h| {
            assert_eq!(h.query, Some("text=a%0D%0Ab"))
        });
    }

    #[test]
    fn rfc3986_3_4_query_accepts_pchar_slash_question_and_browser_extras() {
        with_head(&get("/p?a[]=1&b={x}|y^z`&c=/?:@!$'()*+,;="), |h| {
            assert_eq!(h.path, "/p");
            assert_eq!(h.query, Some("a[]=1&b={x}|y^z`&c=/?:@!$'()*+,;="));
        });
        assert_eq!(err(&get("/p?a=\"x\"")), ErrorKind::BadTarget);
        assert_eq!(err(&get("/p?a=\\")), ErrorKind::BadTarget);
    }

    #[test]
    fn rfc9112_3_2_2_accepts_absolute_form_and_splits_it() {
        let raw = b"GET http://localhost/plaintext?x=1 HTTP/1.1\r\nHost: localhost\r\n\r\n";
        with_head(raw, |h| {
            assert_eq!(h.target, "http://localhost/plaintext?x=1");
            assert_eq!(h.path, "/plaintext");
            assert_eq!(h.query, Some("x=1"));
        });
        let raw = b"GET HTTPS://Example.COM:8443 HTTP/1.1\r\nHost: example.com:8443\r\n\r\n";
        with_head(raw, |h| {
            assert_eq!(h.path, "/");
            assert_eq!(h.query, None);
        });
        let raw = b"GET http://a?q HTTP/1.1\r\nHost: a\r\n\r\n";
        with_head(raw, |h| {
            assert_eq!(h.path, "/");
            assert_eq!(h.query, Some("q"));
        });
    }

    #[test]
    fn rfc9112_3_2_2_rejects_bad_absolute_forms() {
        for t in [
            "ftp://a/",
            "http:/a/",
            "http://",
            "http:///p",
            "http://user@a/",
            "http://a:99999/",
            "http://[::1/",
        ] {
            let raw = format!("GET {t} HTTP/1.1\r\nHost: a\r\n\r\n");
            assert_eq!(err(raw.as_bytes()), ErrorKind::BadTarget, "{t}");
        }
    }

    #[test]
    fn rfc9112_3_2_2_rejects_host_that_disagrees_with_absolute_form() {
        let raw = b"GET http://other.example.com/plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n";
        assert_eq!(err(raw), ErrorKind::HostMismatch);
        for (target, host) in [
            ("http://x:81/p", "x"),
            ("https://x/p", "x:80"),
            ("http://x/p", "y"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert_eq!(
                err(raw.as_bytes()),
                ErrorKind::HostMismatch,
                "{target} {host}"
            );
        }
    }

    #[test]
    fn rfc3986_3_3_dot_segments_are_refused() {
        for t in [
            "/..",
            "/a/../admin",
            "/a/./b",
            "/.",
            "/a/%2e%2e/b",
            "/a/%2E./b",
            "/a/.%2e",
            "/a/..?x=1",
            "http://x/a/../b",
        ] {
            let raw = format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
            assert_eq!(err(raw.as_bytes()), ErrorKind::DotSegment, "{t}");
        }
        // Dots inside segments, and in the query, are ordinary.
        for t in [
            "/a/...",
            "/a/.b",
            "/a/b.",
            "/v1.2/x",
            "/a?p=../b",
            "/%2e%2e%2e",
        ] {
            let raw = format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n");
            with_head(raw.as_bytes(), |_| {});
        }
    }

    #[test]
    fn rfc9110_4_2_3_an_equivalent_authority_is_no_mismatch() {
        for (target, host) in [
            ("http://x:80/p", "x"),
            ("http://x/p", "x:80"),
            ("http://X:80/p", "x"),
            ("https://x:443/p", "X"),
            ("http://[::1]:80/p", "[::1]"),
            ("http://x:8080/p", "X:8080"),
        ] {
            let raw = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n\r\n");
            with_head(raw.as_bytes(), |h| {
                assert_eq!(h.path, "/p", "{target} {host}")
            });
        }
    }

    #[test]
    fn rfc9112_3_2_3_authority_form_only_with_connect() {
        let raw = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n";
        with_head(raw, |h| {
            assert_eq!(h.method, "CONNECT");
            assert_eq!(h.target, "example.com:443");
            assert_eq!(h.path, "");
        });
        assert_eq!(
            err(b"CONNECT example.com HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadTarget
        );
        assert_eq!(
            err(b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadTarget
        );
        assert_eq!(
            err(b"GET example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadTarget
        );
    }

    #[test]
    fn rfc9112_3_2_4_asterisk_form_only_with_options() {
        with_head(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", |h| {
            assert_eq!(h.path, "*");
            assert_eq!(h.query, None);
        });
        assert_eq!(err(&get("*")), ErrorKind::BadTarget);
        assert_eq!(
            err(b"OPTIONS *x HTTP/1.1\r\nHost: a\r\n\r\n"),
            ErrorKind::BadTarget
        );
    }

    // ---- RFC 9112 §3.2: Host ----------------------------------------------------------

    #[test]
    fn rfc9112_3_2_http11_without_host_is_400() {
        assert_eq!(err(b"GET / HTTP/1.1\r\n\r\n"), ErrorKind::MissingHost);
    }

    #[test]
    fn rfc9112_3_2_http10_without_host_is_accepted() {
        with_head(b"GET / HTTP/1.0\r\n\r\n", |h| {
            assert_eq!(h.header("host"), None)
        });
    }

    #[test]
    fn rfc9112_3_2_more_than_one_host_is_400_even_if_equal() {
        assert_eq!(
            err(&with_headers(&[b"Host: a", b"Host: a"])),
            ErrorKind::DuplicateHost
        );
        assert_eq!(
            err(&with_headers(&[b"Host: a", b"host: b"])),
            ErrorKind::DuplicateHost
        );
    }

    #[test]
    fn rfc9112_3_2_invalid_host_values_are_400() {
        for v in [
            &b"user@localhost"[..],
            b"localhost/path",
            b"localhost, other.example.com",
            b"a,b",
            b"local host",
            b"",
            b":80",
            b"localhost:",
            b"localhost:65536",
            b"localhost:123456",
            b"localhost:8o",
            b"[::1",
            b"[not-v6]",
            b"[::1]x",
            b"a%zz",
            b"caf\xc3\xa9",
        ] {
            let mut line = b"Host: ".to_vec();
            line.extend_from_slice(v);
            assert_eq!(
                err(&with_headers(&[&line])),
                ErrorKind::BadHost,
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn rfc9112_3_2_valid_host_values_are_accepted() {
        for v in [
            &b"localhost"[..],
            b"example.com:8080",
            b"127.0.0.1",
            b"[::1]",
            b"[2001:db8::1]:443",
            b"a-b_c~d.e",
            b"xn--caf-dma.example",
            b"h:65535",
        ] {
            let mut line = b"Host: ".to_vec();
            line.extend_from_slice(v);
            with_head(&with_headers(&[&line]), |h| {
                assert_eq!(h.header("host"), Some(v))
            });
        }
    }

    // ---- RFC 9112 §9.3: persistence ---------------------------------------------------

    #[test]
    fn rfc9112_9_3_http11_is_persistent_unless_close() {
        with_head(&with_headers(&[b"Host: a"]), |h| assert!(h.keep_alive));
        with_head(&with_headers(&[b"Host: a", b"Connection: close"]), |h| {
            assert!(!h.keep_alive)
        });
        with_head(
            &with_headers(&[b"Host: a", b"Connection: keep-alive, CLOSE"]),
            |h| assert!(!h.keep_alive),
        );
        with_head(
            &with_headers(&[b"Host: a", b"Connection: upgrade", b"Connection: Close"]),
            |h| assert!(!h.keep_alive),
        );
    }

    #[test]
    fn rfc9112_9_3_http10_is_persistent_only_with_keep_alive() {
        with_head(b"GET / HTTP/1.0\r\n\r\n", |h| assert!(!h.keep_alive));
        with_head(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", |h| {
            assert!(h.keep_alive)
        });
        with_head(
            b"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n",
            |h| assert!(!h.keep_alive),
        );
    }

    // ---- RFC 9110 §10.1.1: Expect ---------------------------------------------------

    #[test]
    fn rfc9110_10_1_1_expect_100_continue_is_case_insensitive() {
        with_head(&with_headers(&[b"Host: a", b"Expect: 100-continue"]), |h| {
            assert!(h.expect_continue)
        });
        with_head(&with_headers(&[b"Host: a", b"Expect: 100-Continue"]), |h| {
            assert!(h.expect_continue)
        });
    }

    #[test]
    fn rfc9110_10_1_1_other_expectations_are_417() {
        assert_eq!(
            err(&with_headers(&[b"Host: a", b"Expect: 200-ok"])),
            ErrorKind::ExpectationFailed
        );
        assert_eq!(
            err(&with_headers(&[b"Host: a", b"Expect: 100-continue, foo"])),
            ErrorKind::ExpectationFailed
        );
        assert_eq!(Error::from(ErrorKind::ExpectationFailed).status(), 417);
    }

    #[test]
    fn rfc9110_10_1_1_100_continue_is_ignored_for_http10() {
        let raw = b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        with_head(raw, |h| assert!(!h.expect_continue));
    }

    // ---- RFC 9112 §6: framing through parse() ----------------------------------------

    #[test]
    fn rfc9112_6_1_parse_rejects_cl_with_te() {
        let raw = with_headers(&[
            b"Host: a",
            b"Content-Length: 5",
            b"Transfer-Encoding: chunked",
        ]);
        assert_eq!(err(&raw), ErrorKind::ContentLengthWithTransferEncoding);
    }

    #[test]
    fn rfc9112_6_3_parse_reports_framing() {
        with_head(
            &with_headers(&[b"Host: a", b"Transfer-Encoding: chunked"]),
            |h| assert_eq!(h.framing, BodyFraming::Chunked),
        );
        with_head(&with_headers(&[b"Host: a", b"Content-Length: 0"]), |h| {
            assert_eq!(h.framing, BodyFraming::ContentLength(0))
        });
    }

    // ---- RFC 9112 §9.3.2: pipelining -------------------------------------------------

    #[test]
    fn rfc9112_9_3_2_pipelined_requests_parse_one_after_another() {
        let buf: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\
            POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nworld\r\n0\r\n\r\n\
            \r\nGET /last?q HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n\
            GET /incompl";
        let limits = Limits::default();
        let mut pos = 0;
        let mut seen = Vec::new();
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
            let head = match parse(&buf[pos..], &mut headers, &limits).expect("valid") {
                Parsed::Complete(h) => h,
                Parsed::Partial => break,
            };
            pos += head.head_len;
            let mut body = Vec::new();
            match head.framing {
                BodyFraming::None => {}
                BodyFraming::ContentLength(n) => {
                    let n = n as usize;
                    body.extend_from_slice(&buf[pos..pos + n]);
                    pos += n;
                }
                BodyFraming::Chunked => {
                    let mut dec = crate::chunked::ChunkedDecoder::new(&limits);
                    let d = dec.decode(&buf[pos..], &mut body).expect("chunked");
                    assert!(d.done);
                    pos += d.consumed;
                }
            }
            seen.push((
                head.method.to_owned(),
                head.path.to_owned(),
                body,
                head.keep_alive,
            ));
        }
        assert_eq!(&buf[pos..], b"GET /incompl");
        let expect = [
            ("GET", "/a", &b""[..], true),
            ("POST", "/echo", b"hello", true),
            ("POST", "/echo", b"world", true),
            ("GET", "/last", b"", false),
        ];
        assert_eq!(seen.len(), expect.len());
        for (got, want) in seen.iter().zip(expect) {
            assert_eq!(
                (got.0.as_str(), got.1.as_str(), got.2.as_slice(), got.3),
                want
            );
        }
    }
}
