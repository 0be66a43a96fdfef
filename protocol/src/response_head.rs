//! Response head parsing for the gateway side (RFC 9112 §2, §4–§6, §9.3;
//! RFC 9110 §5, §6.4.1, §8.6, §15.2).
//!
//! [`parse_response`] reads one response head from the start of a buffer
//! that holds bytes read from an upstream, and borrows every string from it.
//! The status line is parsed here; header field lines are tokenised by
//! `httparse` into caller-owned storage; the body framing and whether the
//! connection may be reused are decided from the fields, the status and the
//! method of the request the response answers.
//!
//! Strict like the request parser (see the crate doc): an upstream whose
//! bytes two parsers could read differently is refused rather than guessed
//! at, because the gateway forwards what it reads to a client (response
//! splitting, RFC 9112 §11.1) and reuses pooled upstream connections (a
//! framing disagreement desynchronises every later response on that
//! connection). The caller answers every [`ResponseError`] with `502` and
//! closes that upstream connection.

use httparse::Header;

use crate::syntax::{find_cr_or_lf, is_token, list_elements, trim_ows};

/// Default cap on a whole response head: status line, header fields and the
/// final blank line, in bytes. Upstream API heads are a few hundred bytes;
/// the large ones carry several `Set-Cookie` or `Content-Security-Policy`
/// fields of a few KiB. nginx refuses heads larger than its
/// `proxy_buffer_size` (4 or 8 KiB, one memory page) with 502, so 16 KiB
/// accepts anything nginx would with room to spare, matches the request-side
/// `DEFAULT_MAX_HEADER_BYTES`, and keeps the head inside one 32–64 KiB read
/// buffer while bounding the bytes scanned for an upstream that never ends
/// its head.
pub const DEFAULT_MAX_RESPONSE_HEAD_BYTES: usize = 16 * 1024;

/// Decimal digits allowed in a response Content-Length. Every 19-digit
/// number fits in a u64 (u64::MAX has 20 digits), and 10^19 bytes (about
/// 8.7 EiB) is beyond any real body, so a longer value is refused as
/// nonsense rather than checked for overflow digit by digit.
pub const MAX_CONTENT_LENGTH_DIGITS: usize = 19;

/// How the body of a response is delimited (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseFraming {
    /// No body: a 1xx, 204 or 304 response, or any response to HEAD
    /// (RFC 9112 §6.3, rule 1). Content-Length and Transfer-Encoding, if
    /// present, are ignored.
    None,
    /// Exactly this many bytes follow the head (RFC 9112 §6.3, rule 6).
    ContentLength(u64),
    /// Chunked transfer coding, the final coding (RFC 9112 §6.3, rule 4;
    /// RFC 9112 §7.1). Codings applied before it (`gzip, chunked`) are left
    /// in the Transfer-Encoding field for the caller.
    Chunked,
    /// Neither Content-Length nor Transfer-Encoding: the body runs until the
    /// upstream closes the connection (RFC 9112 §6.3, rule 8), which
    /// therefore cannot be reused.
    UntilClose,
}

/// A parsed and validated response head.
///
/// Two lifetimes, as for [`crate::request::RequestHead`]: `'b` is the input
/// buffer every string borrows from, `'h` is the caller's header array that
/// `httparse` filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHead<'b, 'h> {
    /// Status code, 100..=599 (RFC 9110 §15: `status-code = 3DIGIT`, and
    /// only the classes 1xx–5xx are defined).
    pub status: u16,
    /// Reason phrase without the SP before it; empty when absent. RFC 9112
    /// §4 allows obs-text (bytes 0x80–0xFF) in it; a phrase that is not valid
    /// UTF-8 is given as empty, since a client SHOULD ignore its content
    /// (RFC 9112 §4) and the gateway never needs it.
    pub reason: &'b str,
    /// Minor version of `HTTP/1.x`: 0 or 1.
    pub minor_version: u8,
    /// Header fields in order received; values are OWS-trimmed by httparse.
    pub headers: &'h [Header<'b>],
    /// Bytes of the head including the final CRLFCRLF: the body (if any)
    /// starts at `buf[head_len..]`.
    pub head_len: usize,
    /// Validated body framing.
    pub framing: ResponseFraming,
    /// Whether the connection may be reused after this response's body
    /// (RFC 9112 §9.3): HTTP/1.1 unless a `close` connection option; HTTP/1.0
    /// only with `keep-alive` and no `close`; never when the body is
    /// delimited by the close. Always true for an interim (1xx) response.
    pub keep_alive: bool,
}

impl<'b, 'h> ResponseHead<'b, 'h> {
    /// Whether this is an interim (1xx) response (RFC 9110 §15.2): the final
    /// response follows at `buf[head_len..]`, so the caller parses again from
    /// there. Note that 101 Switching Protocols is 1xx too: after it the
    /// connection no longer speaks HTTP/1.1 (RFC 9110 §15.2.2), so a caller
    /// that did not ask for an upgrade should treat it as an error.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }

    /// Value of the first header field named `name` (ASCII case-insensitive,
    /// RFC 9110 §5.1).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Result of [`parse_response`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParsedResponse<'b, 'h> {
    /// A whole, valid head.
    Complete(ResponseHead<'b, 'h>),
    /// The head is not complete yet, nothing seen so far is invalid and it is
    /// still shorter than the limit: read more and call again with the grown
    /// buffer.
    Partial,
}

/// Why an upstream response head was refused. `Copy`, no allocation. The
/// upstream is at fault for every one of them: the gateway answers `502`
/// (RFC 9110 §15.6.3) and closes the upstream connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResponseError {
    /// The status line or a field line breaks the grammar (RFC 9112 §2.2,
    /// §4, §5); the text names the rule, e.g. `"bare LF"`.
    Malformed(&'static str),
    /// The head is not complete within the limit.
    HeadTooLarge,
    /// More header fields than the caller's header array holds.
    TooManyHeaders,
    /// The body length could be read two ways (RFC 9112 §6.1, §6.3, §11.2);
    /// the text names the rule, e.g. `"Content-Length with Transfer-Encoding"`.
    AmbiguousFraming(&'static str),
    /// Transfer-Encoding whose final coding is not `chunked` (RFC 9112 §6.3,
    /// rule 4 would read until close; we refuse instead).
    UnsupportedTransferCoding,
    /// Content-Length is not `1*DIGIT`, has leading zeros or is too large
    /// (RFC 9110 §8.6; RFC 9112 §6.3, rule 5).
    BadContentLength,
}

impl ResponseError {
    /// RFC 9457 §3.1.4 `detail` for the 502 problem response: one sentence
    /// that does not repeat upstream bytes to the client.
    pub const fn detail(&self) -> &'static str {
        match self {
            ResponseError::Malformed(_) => "The upstream response head is malformed.",
            ResponseError::HeadTooLarge => "The upstream response head is larger than allowed.",
            ResponseError::TooManyHeaders => "The upstream response has too many header fields.",
            ResponseError::AmbiguousFraming(_) => "The upstream response framing is ambiguous.",
            ResponseError::UnsupportedTransferCoding => {
                "The upstream response uses a transfer coding other than chunked."
            }
            ResponseError::BadContentLength => {
                "The upstream response has an invalid Content-Length."
            }
        }
    }

    /// Stable snake_case metric label, e.g. `ambiguous_framing`.
    pub const fn label(&self) -> &'static str {
        match self {
            ResponseError::Malformed(_) => "malformed",
            ResponseError::HeadTooLarge => "head_too_large",
            ResponseError::TooManyHeaders => "too_many_headers",
            ResponseError::AmbiguousFraming(_) => "ambiguous_framing",
            ResponseError::UnsupportedTransferCoding => "unsupported_transfer_coding",
            ResponseError::BadContentLength => "bad_content_length",
        }
    }

    /// The rule that was broken, for logs: the text of `Malformed` and
    /// `AmbiguousFraming`, else [`ResponseError::detail`].
    pub const fn reason(&self) -> &'static str {
        match self {
            ResponseError::Malformed(r) | ResponseError::AmbiguousFraming(r) => r,
            _ => self.detail(),
        }
    }
}

impl std::fmt::Display for ResponseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "upstream response {}: {}", self.label(), self.reason())
    }
}

impl std::error::Error for ResponseError {}

/// Parses ONE response head at the start of `buf`. The body and further
/// (pipelined) responses follow at `buf[head_len..]`; after an interim (1xx)
/// response the caller calls again from there.
///
/// `headers` is caller-owned storage (`[httparse::EMPTY_HEADER; N]`) so that
/// parsing never allocates; more fields than it holds is
/// [`ResponseError::TooManyHeaders`]. `max_head_bytes` caps the head
/// including its final CRLFCRLF ([`DEFAULT_MAX_RESPONSE_HEAD_BYTES`]); bytes
/// past it are never looked at. `request_method_was_head` says whether the
/// request this response answers was HEAD (RFC 9112 §6.3, rule 1).
///
/// Returns `Partial` while more bytes are needed, and `Err` as soon as the
/// bytes seen can no longer start a valid head (a bad status line, a bare
/// CR or LF, obs-fold, a bad complete field line), so that a non-HTTP
/// upstream is refused at once instead of at the timeout.
pub fn parse_response<'b, 'h>(
    buf: &'b [u8],
    headers: &'h mut [Header<'b>],
    max_head_bytes: usize,
    request_method_was_head: bool,
) -> Result<ParsedResponse<'b, 'h>, ResponseError> {
    let scan = match scan_head(buf, max_head_bytes)? {
        HeadScan::Complete(scan) => scan,
        HeadScan::Partial { complete_fields } => {
            if !complete_fields.is_empty() {
                // Check the complete field lines now; httparse stops with
                // Partial after the last one. Their verdict cannot change
                // when the head completes.
                if let Err(e) = httparse::parse_headers(complete_fields, &mut *headers) {
                    return Err(map_httparse_error(e));
                }
            }
            return Ok(ParsedResponse::Partial);
        }
    };
    let line = scan.line;

    // Field lines: the scan already refused bare CR/LF and lines starting
    // with whitespace (obs-fold, RFC 9112 §5.2); httparse refuses names that
    // are not tokens and whitespace before the colon (RFC 9112 §5.1), and
    // CTLs other than HTAB in values (RFC 9110 §5.5).
    let headers: &'h [Header<'b>] = match httparse::parse_headers(scan.fields, headers) {
        Ok(httparse::Status::Complete((_, hs))) => hs,
        // The block ends in CRLFCRLF, so httparse cannot run out of input;
        // treat the impossible as malformed rather than panic.
        Ok(httparse::Status::Partial) => return Err(ResponseError::Malformed("field section")),
        Err(e) => return Err(map_httparse_error(e)),
    };

    let (close, keep_alive_option) = connection_options(headers);
    let http11 = line.minor_version == 1;
    let framing = decide_framing(line.status, http11, headers, request_method_was_head)?;
    let keep_alive = if (100..200).contains(&line.status) {
        // An interim response says nothing about the connection; the final
        // response that follows does (RFC 9110 §15.2).
        true
    } else if framing == ResponseFraming::UntilClose {
        // RFC 9112 §6.3 rule 8: the close is what ends the body.
        false
    } else if http11 {
        // RFC 9112 §9.3: HTTP/1.1 persists unless the `close` option is sent.
        !close
    } else {
        // RFC 9112 §9.3: HTTP/1.0 persists only with `keep-alive` (and, we
        // add, without `close`, which wins when both are sent).
        keep_alive_option && !close
    };

    Ok(ParsedResponse::Complete(ResponseHead {
        status: line.status,
        reason: line.reason,
        minor_version: line.minor_version,
        headers,
        head_len: scan.head_len,
        framing,
        keep_alive,
    }))
}

fn map_httparse_error(e: httparse::Error) -> ResponseError {
    match e {
        httparse::Error::TooManyHeaders => ResponseError::TooManyHeaders,
        // RFC 9110 §5.1: field-name = token; RFC 9112 §5.1: no whitespace
        // between the name and the colon.
        httparse::Error::HeaderName => ResponseError::Malformed("invalid header name"),
        // RFC 9110 §5.5: no CTLs other than HTAB in a field value.
        httparse::Error::HeaderValue => ResponseError::Malformed("invalid header value"),
        // NewLine is unreachable after the scan; Token, Status and Version
        // belong to the status line, which we parse ourselves.
        _ => ResponseError::Malformed("invalid header field"),
    }
}

/// `Connection` options (RFC 9110 §7.6.1: a comma list of case-insensitive
/// tokens, possibly over several field lines): whether `close` and whether
/// `keep-alive` were sent.
fn connection_options(headers: &[Header<'_>]) -> (bool, bool) {
    let mut close = false;
    let mut keep_alive = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("connection") {
            for option in list_elements(h.value) {
                if option.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if option.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    (close, keep_alive)
}

/// Decides the body framing of a response (RFC 9112 §6.3, rules 1, 3–6, 8;
/// rule 2, CONNECT, is not proxied through this parser).
fn decide_framing(
    status: u16,
    http11: bool,
    headers: &[Header<'_>],
    request_method_was_head: bool,
) -> Result<ResponseFraming, ResponseError> {
    // RFC 9112 §6.3 rule 1: a response to HEAD and any 1xx, 204 or 304
    // response ends at the head whatever its fields say. RFC 9110 §8.6 lets
    // HEAD and 304 responses carry the Content-Length a GET would have got,
    // so the framing fields are not even validated here.
    if request_method_was_head || status < 200 || status == 204 || status == 304 {
        return Ok(ResponseFraming::None);
    }

    let mut content_length: Option<&[u8]> = None;
    let mut has_te = false;
    let mut chunked_count = 0u32;
    let mut last_is_chunked = false;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            // RFC 9110 §8.6 lets a recipient fold repeated equal values; we
            // refuse any repetition, as the request side does.
            if content_length.is_some() {
                return Err(ResponseError::AmbiguousFraming("Content-Length repeated"));
            }
            content_length = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            // RFC 9110 §5.3: several Transfer-Encoding lines form one list,
            // in order; RFC 9112 §7: codings are case-insensitive.
            for coding in list_elements(h.value) {
                if classify_coding(coding)? {
                    chunked_count += 1;
                    last_is_chunked = true;
                } else {
                    last_is_chunked = false;
                }
            }
        } else if is_framing_lookalike(name) {
            return Err(ResponseError::AmbiguousFraming(
                "Content_Length or Transfer_Encoding field",
            ));
        }
    }

    if has_te {
        // RFC 9112 §6.1: an HTTP/1.0 message with Transfer-Encoding MUST be
        // treated as having faulty framing, even with a Content-Length.
        if !http11 {
            return Err(ResponseError::AmbiguousFraming(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        // RFC 9112 §6.3 rule 3: Transfer-Encoding overrides Content-Length,
        // but the pair "ought to be handled as an error" (smuggling and
        // response splitting, RFC 9112 §11.2); we do.
        if content_length.is_some() {
            return Err(ResponseError::AmbiguousFraming(
                "Content-Length with Transfer-Encoding",
            ));
        }
        // RFC 9112 §6.1: chunked MUST NOT be applied more than once.
        if chunked_count > 1 {
            return Err(ResponseError::AmbiguousFraming("chunked applied twice"));
        }
        // RFC 9112 §6.3 rule 4: with chunked not final, a response body runs
        // until close; we refuse rather than forward an undelimited body.
        if !last_is_chunked {
            return Err(ResponseError::UnsupportedTransferCoding);
        }
        return Ok(ResponseFraming::Chunked);
    }

    match content_length {
        // RFC 9112 §6.3 rule 8: read until the server closes.
        None => Ok(ResponseFraming::UntilClose),
        // RFC 9112 §6.3 rule 6.
        Some(v) => parse_content_length(v).map(ResponseFraming::ContentLength),
    }
}

/// `Content_Length` or `Transfer_Encoding` (any case). RFC 9110 §5.1 makes
/// them different fields, but software that maps `-` to `_` (CGI, some
/// proxies and clients) would read them as the framing fields: refused, as
/// on the request side (see `crate::framing`).
fn is_framing_lookalike(name: &[u8]) -> bool {
    let lookalike = |real: &[u8]| {
        name.len() == real.len()
            && name.contains(&b'_')
            && name
                .iter()
                .zip(real)
                .all(|(&n, &r)| n.to_ascii_lowercase() == r || (n == b'_' && r == b'-'))
    };
    lookalike(b"content-length") || lookalike(b"transfer-encoding")
}

/// One `transfer-coding = token *( OWS ";" OWS transfer-parameter )`
/// (RFC 9112 §7), already OWS-trimmed: `Ok(true)` for `chunked`.
fn classify_coding(coding: &[u8]) -> Result<bool, ResponseError> {
    if coding.is_empty() {
        // RFC 9110 §5.6.1 lets recipients skip empty list elements, but
        // `chunked,` or `, chunked` may be read with a different final
        // coding by another parser: refuse.
        return Err(ResponseError::AmbiguousFraming(
            "empty Transfer-Encoding element",
        ));
    }
    let (name, params) = match coding.iter().position(|&b| b == b';') {
        Some(semi) => (trim_ows(&coding[..semi]), Some(&coding[semi + 1..])),
        None => (coding, None),
    };
    if !is_token(name) {
        return Err(ResponseError::Malformed("invalid transfer coding"));
    }
    if name.eq_ignore_ascii_case(b"chunked") {
        // RFC 9112 §7.1 defines no parameters for chunked; one that has some
        // may or may not be taken for chunked by another parser.
        if params.is_some() {
            return Err(ResponseError::AmbiguousFraming("chunked with parameters"));
        }
        return Ok(true);
    }
    if let Some(params) = params {
        // RFC 9112 §7: transfer-parameter = token BWS "=" BWS ( token /
        // quoted-string ). Checked coarsely: each is `token = something`.
        let ok = params
            .split(|&b| b == b';')
            .all(|p| match p.iter().position(|&b| b == b'=') {
                Some(eq) => is_token(trim_ows(&p[..eq])) && !trim_ows(&p[eq + 1..]).is_empty(),
                None => false,
            });
        if !ok {
            return Err(ResponseError::Malformed("invalid transfer coding"));
        }
    }
    Ok(false)
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), with the request side's
/// strictness: a list (`5, 5`) is a repetition, leading zeros (`005`) are
/// refused (some parsers read them as octal), and at most
/// [`MAX_CONTENT_LENGTH_DIGITS`] digits.
fn parse_content_length(v: &[u8]) -> Result<u64, ResponseError> {
    if v.contains(&b',') {
        return Err(ResponseError::AmbiguousFraming("Content-Length list"));
    }
    if v.is_empty() || v.len() > MAX_CONTENT_LENGTH_DIGITS || (v.len() > 1 && v[0] == b'0') {
        return Err(ResponseError::BadContentLength);
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(ResponseError::BadContentLength);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(ResponseError::BadContentLength)?;
    }
    Ok(n)
}

/// The parts of a status line (RFC 9112 §4).
#[derive(Clone, Copy)]
struct StatusLine<'b> {
    minor_version: u8,
    status: u16,
    reason: &'b str,
}

/// A complete head found by [`scan_head`].
struct Scan<'b> {
    line: StatusLine<'b>,
    /// The field lines and the final blank line.
    fields: &'b [u8],
    /// Offset just past the final CRLF of the head.
    head_len: usize,
}

/// What [`scan_head`] found.
enum HeadScan<'b> {
    Complete(Scan<'b>),
    /// Incomplete but valid so far; `complete_fields` is the complete field
    /// lines after the status line (empty while the status line is open).
    Partial {
        complete_fields: &'b [u8],
    },
}

/// One pass over at most `max_head_bytes` of `buf`: finds the end of the
/// head, refuses bare LF and bare CR (RFC 9112 §2.2: a recipient MAY accept
/// a bare LF and MUST refuse or replace a bare CR; we refuse both, see the
/// crate doc), refuses field lines that start with whitespace (obs-fold,
/// RFC 9112 §5.2: a user agent MUST replace it with SP, a proxy MUST remove
/// it; a gateway may refuse, and we do), and checks the status line as far
/// as it goes.
fn scan_head(buf: &[u8], max_head_bytes: usize) -> Result<HeadScan<'_>, ResponseError> {
    let scan_end = buf.len().min(max_head_bytes);
    let window = &buf[..scan_end];
    let mut line_start = 0;
    let mut line: Option<StatusLine<'_>> = None;
    let mut fields_start = 0;

    // Line by line: the next CR or LF must be a CR followed by LF; anything
    // else is a bare CR or a bare LF.
    while let Some(off) = find_cr_or_lf(&window[line_start..]) {
        let cr = line_start + off;
        if window[cr] == b'\n' {
            return Err(ResponseError::Malformed("bare LF"));
        }
        match window.get(cr + 1) {
            Some(b'\n') => {}
            // The LF may not have arrived yet, or lies past the limit.
            None => break,
            Some(_) => return Err(ResponseError::Malformed("bare CR")),
        }
        let content = &window[line_start..cr];
        match line {
            None => {
                // RFC 9112 §2.2 lets a server skip empty lines before a
                // request line; nothing lets a client do so before a status
                // line, so an empty first line fails here as malformed.
                line = Some(parse_status_line(content)?);
                fields_start = cr + 2;
            }
            Some(line) if content.is_empty() => {
                return Ok(HeadScan::Complete(Scan {
                    line,
                    fields: &buf[fields_start..cr + 2],
                    head_len: cr + 2,
                }));
            }
            Some(_) if matches!(content[0], b' ' | b'\t') => {
                // RFC 9112 §5.2 obs-fold, and whitespace before the first
                // field (RFC 9112 §2.2).
                return Err(ResponseError::Malformed("obs-fold"));
            }
            Some(_) => {}
        }
        line_start = cr + 2;
    }

    // Incomplete: check what has arrived of the open line.
    let open = &window[line_start..];
    let open = open.strip_suffix(b"\r").unwrap_or(open);
    if line.is_none() {
        check_status_line_prefix(open)?;
    } else if matches!(open.first(), Some(b' ' | b'\t')) {
        return Err(ResponseError::Malformed("obs-fold"));
    }
    // The head did not end within the limit and cannot any more.
    if scan_end >= max_head_bytes {
        return Err(ResponseError::HeadTooLarge);
    }
    Ok(HeadScan::Partial {
        complete_fields: if line.is_some() {
            &buf[fields_start..line_start]
        } else {
            &[]
        },
    })
}

/// `reason-phrase = 1*( HTAB / SP / VCHAR / obs-text )` (RFC 9112 §4).
const fn is_reason_byte(b: u8) -> bool {
    b == b'\t' || (b >= b' ' && b != 0x7f)
}

/// Checks the first bytes of a status line (no CR or LF among them) against
/// `HTTP/1.0` or `HTTP/1.1`, SP, a status code 100..=599, SP and a reason
/// phrase, byte by byte: the verdicts are the ones [`parse_status_line`]
/// gives once the line is complete.
fn check_status_line_prefix(line: &[u8]) -> Result<(), ResponseError> {
    for (i, &b) in line.iter().enumerate() {
        let ok = match i {
            // RFC 9112 §2.3: HTTP-name "/" DIGIT "." DIGIT, case-sensitive.
            0..=4 => b == b"HTTP/"[i],
            // Only HTTP/1.0 and HTTP/1.1 are spoken on this side.
            5 | 6 => b == b"1."[i - 5],
            7 => b == b'0' || b == b'1',
            // RFC 9112 §4: exactly one SP between the parts.
            8 => b == b' ',
            // RFC 9110 §15: the first digit is the class, 1 to 5.
            9 => (b'1'..=b'5').contains(&b),
            10 | 11 => b.is_ascii_digit(),
            12 => b == b' ',
            _ => is_reason_byte(b),
        };
        if !ok {
            return Err(ResponseError::Malformed(match i {
                0..=4 => "not an HTTP status line",
                5..=7 => "unsupported HTTP version",
                8 => "malformed status line",
                9 if b.is_ascii_digit() => "status code out of range",
                9..=12 => "status code is not three digits",
                _ => "invalid reason phrase",
            }));
        }
    }
    Ok(())
}

/// `status-line = HTTP-version SP status-code SP [ reason-phrase ]`
/// (RFC 9112 §4), without its CRLF. `HTTP/1.1 200` without the second SP is
/// accepted too: it cannot be read two ways, and some servers send it.
fn parse_status_line(line: &[u8]) -> Result<StatusLine<'_>, ResponseError> {
    check_status_line_prefix(line)?;
    if line.len() < 9 {
        return Err(ResponseError::Malformed("malformed status line"));
    }
    if line.len() < 12 {
        return Err(ResponseError::Malformed("status code is not three digits"));
    }
    // The prefix check guarantees the shape, so these are digits.
    let digit = |i: usize| u16::from(line[i] - b'0');
    let status = digit(9) * 100 + digit(10) * 10 + digit(11);
    let reason = line.get(13..).unwrap_or_default();
    Ok(StatusLine {
        minor_version: line[7] - b'0',
        status,
        reason: std::str::from_utf8(reason).unwrap_or(""),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use httparse::EMPTY_HEADER;

    const SLOTS: usize = 32;

    /// Parses `raw` (not a HEAD response) and hands the complete head to `f`.
    fn with_head(raw: &[u8], f: impl FnOnce(&ResponseHead<'_, '_>)) {
        with_head_opts(raw, false, f);
    }

    fn with_head_opts(raw: &[u8], head: bool, f: impl FnOnce(&ResponseHead<'_, '_>)) {
        let mut hs = [EMPTY_HEADER; SLOTS];
        match parse_response(raw, &mut hs, DEFAULT_MAX_RESPONSE_HEAD_BYTES, head) {
            Ok(ParsedResponse::Complete(h)) => f(&h),
            other => panic!(
                "expected Complete for {:?}, got {other:?}",
                raw.escape_ascii()
            ),
        }
    }

    fn err(raw: &[u8]) -> ResponseError {
        err_opts(raw, false)
    }

    fn err_opts(raw: &[u8], head: bool) -> ResponseError {
        let mut hs = [EMPTY_HEADER; SLOTS];
        match parse_response(raw, &mut hs, DEFAULT_MAX_RESPONSE_HEAD_BYTES, head) {
            Err(e) => e,
            other => panic!("expected Err for {:?}, got {other:?}", raw.escape_ascii()),
        }
    }

    fn is_partial(raw: &[u8]) -> bool {
        let mut hs = [EMPTY_HEADER; SLOTS];
        matches!(
            parse_response(raw, &mut hs, DEFAULT_MAX_RESPONSE_HEAD_BYTES, false),
            Ok(ParsedResponse::Partial)
        )
    }

    fn framing_of(raw: &[u8]) -> Result<(ResponseFraming, bool), ResponseError> {
        let mut hs = [EMPTY_HEADER; SLOTS];
        match parse_response(raw, &mut hs, DEFAULT_MAX_RESPONSE_HEAD_BYTES, false)? {
            ParsedResponse::Complete(h) => Ok((h.framing, h.keep_alive)),
            ParsedResponse::Partial => panic!("partial: {:?}", raw.escape_ascii()),
        }
    }

    /// `HTTP/1.1 200 OK` with the given field lines.
    fn ok11(fields: &[&str]) -> Vec<u8> {
        response("HTTP/1.1 200 OK", fields)
    }

    fn response(status_line: &str, fields: &[&str]) -> Vec<u8> {
        let mut v = format!("{status_line}\r\n").into_bytes();
        for f in fields {
            v.extend_from_slice(f.as_bytes());
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"\r\n");
        v
    }

    const M: fn(&'static str) -> ResponseError = ResponseError::Malformed;
    const AMB: fn(&'static str) -> ResponseError = ResponseError::AmbiguousFraming;

    // --- status line (RFC 9112 §4) ---

    #[test]
    fn rfc9112_4_parses_a_content_length_response() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"ok\":true}\r\n";
        with_head(raw, |h| {
            assert_eq!(h.status, 200);
            assert_eq!(h.reason, "OK");
            assert_eq!(h.minor_version, 1);
            assert_eq!(h.headers.len(), 2);
            assert_eq!(h.head_len, raw.len() - 13);
            assert_eq!(h.framing, ResponseFraming::ContentLength(13));
            assert!(h.keep_alive);
            assert!(!h.is_interim());
            assert_eq!(h.header("content-type"), Some(&b"application/json"[..]));
        });
    }

    #[test]
    fn rfc9112_4_reason_phrase_may_be_empty_or_hold_spaces() {
        with_head(&ok11(&["Content-Length: 0"]), |h| {
            assert_eq!(h.reason, "OK")
        });
        with_head(b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n", |h| {
            assert_eq!(h.reason, "")
        });
        // Without the second SP: unambiguous, accepted.
        with_head(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", |h| {
            assert_eq!((h.status, h.reason), (200, ""))
        });
        with_head(
            b"HTTP/1.1 404 Not  Found \t\r\nContent-Length: 0\r\n\r\n",
            |h| assert_eq!((h.status, h.reason), (404, "Not  Found \t")),
        );
    }

    #[test]
    fn rfc9112_4_reason_phrase_obs_text() {
        // Valid UTF-8 obs-text is kept; other obs-text is given as empty.
        with_head(
            "HTTP/1.1 200 Überall\r\nContent-Length: 0\r\n\r\n".as_bytes(),
            |h| assert_eq!(h.reason, "Überall"),
        );
        with_head(
            b"HTTP/1.1 200 \xdcberall\r\nContent-Length: 0\r\n\r\n",
            |h| assert_eq!((h.status, h.reason), (200, "")),
        );
        // CTLs other than HTAB are not reason-phrase bytes.
        assert_eq!(
            err(b"HTTP/1.1 200 O\x00K\r\n\r\n"),
            M("invalid reason phrase")
        );
        assert_eq!(
            err(b"HTTP/1.1 200 O\x7fK\r\n\r\n"),
            M("invalid reason phrase")
        );
    }

    #[test]
    fn rfc9112_2_3_only_http_1_0_and_1_1() {
        with_head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", |h| {
            assert_eq!(h.minor_version, 0)
        });
        for raw in [
            &b"HTTP/2 200 OK\r\n\r\n"[..],
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"HTTP/1.2 200 OK\r\n\r\n",
            b"HTTP/0.9 200 OK\r\n\r\n",
        ] {
            assert_eq!(
                err(raw),
                M("unsupported HTTP version"),
                "{:?}",
                raw.escape_ascii()
            );
        }
        // RFC 9112 §2.3: HTTP-name is case-sensitive.
        assert_eq!(
            err(b"http/1.1 200 OK\r\n\r\n"),
            M("not an HTTP status line")
        );
        assert_eq!(err(b"ICY 200 OK\r\n\r\n"), M("not an HTTP status line"));
        assert_eq!(err(b"HTTP/1.10 200 OK\r\n\r\n"), M("malformed status line"));
        assert_eq!(err(b"HTTP/1.1\r\n\r\n"), M("malformed status line"));
        assert_eq!(
            err(b"HTTP/1.1  200 OK\r\n\r\n"),
            M("status code is not three digits")
        );
        assert_eq!(err(b"HTTP/1.1\t200 OK\r\n\r\n"), M("malformed status line"));
    }

    #[test]
    fn rfc9110_15_status_is_three_digits_100_to_599() {
        with_head(b"HTTP/1.1 100 Continue\r\n\r\n", |h| {
            assert_eq!(h.status, 100)
        });
        with_head(b"HTTP/1.1 599 Whatever\r\nContent-Length: 0\r\n\r\n", |h| {
            assert_eq!(h.status, 599)
        });
        for (raw, why) in [
            (&b"HTTP/1.1 099 X\r\n\r\n"[..], "status code out of range"),
            (b"HTTP/1.1 600 X\r\n\r\n", "status code out of range"),
            (b"HTTP/1.1 999 X\r\n\r\n", "status code out of range"),
            (b"HTTP/1.1 20 OK\r\n\r\n", "status code is not three digits"),
            (b"HTTP/1.1 20\r\n\r\n", "status code is not three digits"),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                "status code is not three digits",
            ),
            (
                b"HTTP/1.1 2x0 OK\r\n\r\n",
                "status code is not three digits",
            ),
            (
                b"HTTP/1.1 +20 OK\r\n\r\n",
                "status code is not three digits",
            ),
            (b"HTTP/1.1 OK\r\n\r\n", "status code is not three digits"),
        ] {
            assert_eq!(err(raw), M(why), "{:?}", raw.escape_ascii());
        }
    }

    #[test]
    fn rfc9112_2_2_empty_line_before_status_line_is_malformed() {
        assert!(matches!(
            err(b"\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
            ResponseError::Malformed(_)
        ));
    }

    // --- line endings and field lines (RFC 9112 §2.2, §5) ---

    #[test]
    fn rfc9112_2_2_bare_lf_anywhere_is_malformed() {
        for raw in [
            &b"HTTP/1.1 200 OK\n\n"[..],
            b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\nb\r\nContent-Length: 0\r\n\r\n",
            // In an unfinished head: refused at once.
            b"HTTP/1.1 200 OK\r\nX-A: a\n",
            b"HTTP/1.1 200\n",
        ] {
            assert_eq!(err(raw), M("bare LF"), "{:?}", raw.escape_ascii());
        }
    }

    #[test]
    fn rfc9112_2_2_bare_cr_is_malformed() {
        for raw in [
            &b"HTTP/1.1 200 OK\rX-A: 1\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX-A: a\rb\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\r\n",
            b"HTTP/1.1 200 OK\r\nX-A: a\rb",
        ] {
            assert_eq!(err(raw), M("bare CR"), "{:?}", raw.escape_ascii());
        }
    }

    #[test]
    fn rfc9112_5_2_obs_fold_is_malformed() {
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n"),
            M("obs-fold")
        );
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nX-A: a\r\n\tb\r\nContent-Length: 0\r\n\r\n"),
            M("obs-fold")
        );
        // Whitespace before the first field (RFC 9112 §2.2).
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\n Content-Length: 0\r\n\r\n"),
            M("obs-fold")
        );
        // Seen in an unfinished head.
        assert_eq!(err(b"HTTP/1.1 200 OK\r\nX-A: a\r\n "), M("obs-fold"));
    }

    #[test]
    fn rfc9110_5_1_field_names_are_tokens() {
        for raw in [
            &b"HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nX(A): 1\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n: 1\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX\x80Y: 1\r\nContent-Length: 0\r\n\r\n",
        ] {
            assert_eq!(
                err(raw),
                M("invalid header name"),
                "{:?}",
                raw.escape_ascii()
            );
        }
    }

    #[test]
    fn rfc9110_5_5_field_values_have_no_ctls_but_htab() {
        with_head(
            b"HTTP/1.1 200 OK\r\nX-A: a\tb \xff\r\nContent-Length: 0\r\n\r\n",
            |h| assert_eq!(h.header("x-a"), Some(&b"a\tb \xff"[..])),
        );
        // Short values, and long ones that take httparse's SIMD paths.
        let long = "v".repeat(70);
        for ctl in [0x00u8, 0x01, 0x08, 0x0b, 0x1f, 0x7f] {
            for prefix in ["", long.as_str()] {
                let mut raw = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
                raw.extend_from_slice(prefix.as_bytes());
                raw.push(ctl);
                raw.extend_from_slice(b"z\r\nContent-Length: 0\r\n\r\n");
                assert_eq!(err(&raw), M("invalid header value"), "ctl {ctl:#x}");
            }
        }
    }

    #[test]
    fn header_lookup_is_case_insensitive_and_returns_first() {
        let raw = ok11(&["X-Dup: one", "x-dup: two", "Content-Length: 0"]);
        with_head(&raw, |h| {
            assert_eq!(h.header("X-DUP"), Some(&b"one"[..]));
            assert_eq!(h.header("missing"), None);
            assert_eq!(h.headers[1].value, b"two");
        });
        // OWS around values is trimmed (RFC 9112 §5).
        with_head(
            b"HTTP/1.1 200 OK\r\nX-A: \t v \t\r\nContent-Length: 0\r\n\r\n",
            |h| assert_eq!(h.header("x-a"), Some(&b"v"[..])),
        );
    }

    // --- limits ---

    #[test]
    fn head_too_large_when_not_complete_within_the_limit() {
        let raw = ok11(&["Content-Length: 0"]);
        let mut hs = [EMPTY_HEADER; SLOTS];
        // Exactly the limit: fine.
        assert!(matches!(
            parse_response(&raw, &mut hs, raw.len(), false),
            Ok(ParsedResponse::Complete(_))
        ));
        // One byte short, whether or not more bytes are buffered.
        for buf_len in [raw.len() - 1, raw.len()] {
            assert_eq!(
                parse_response(&raw[..buf_len], &mut hs, raw.len() - 1, false),
                Err(ResponseError::HeadTooLarge),
                "buf_len {buf_len}"
            );
        }
        // The final CR is within the limit, its LF is not.
        assert_eq!(
            parse_response(&raw, &mut hs, raw.len() - 1, false),
            Err(ResponseError::HeadTooLarge)
        );
        // An endless field line from an upstream that never ends its head.
        let mut endless = b"HTTP/1.1 200 OK\r\nX-A: ".to_vec();
        endless.resize(DEFAULT_MAX_RESPONSE_HEAD_BYTES - 1, b'a');
        assert!(is_partial(&endless));
        endless.push(b'a');
        assert_eq!(err(&endless), ResponseError::HeadTooLarge);
        endless.resize(DEFAULT_MAX_RESPONSE_HEAD_BYTES * 4, b'a');
        assert_eq!(err(&endless), ResponseError::HeadTooLarge);
    }

    #[test]
    fn too_many_headers_when_the_slice_is_too_small() {
        let raw = ok11(&["A: 1", "B: 2", "Content-Length: 0"]);
        let mut three = [EMPTY_HEADER; 3];
        assert!(matches!(
            parse_response(&raw, &mut three, DEFAULT_MAX_RESPONSE_HEAD_BYTES, false),
            Ok(ParsedResponse::Complete(h)) if h.headers.len() == 3
        ));
        let mut two = [EMPTY_HEADER; 2];
        assert_eq!(
            parse_response(&raw, &mut two, DEFAULT_MAX_RESPONSE_HEAD_BYTES, false),
            Err(ResponseError::TooManyHeaders)
        );
        // Already known from the complete lines of an unfinished head.
        assert_eq!(
            parse_response(
                &raw[..raw.len() - 2],
                &mut two,
                DEFAULT_MAX_RESPONSE_HEAD_BYTES,
                false
            ),
            Err(ResponseError::TooManyHeaders)
        );
        // No fields at all needs no slots (1xx).
        let mut none: [Header<'_>; 0] = [];
        assert!(matches!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", &mut none, 64, false),
            Ok(ParsedResponse::Complete(h)) if h.headers.is_empty()
        ));
    }

    // --- partial heads ---

    #[test]
    fn every_proper_prefix_of_a_valid_head_is_partial() {
        let heads: [&[u8]; 4] = [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.0 404 Not Found\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 204\r\nX-Long-Header-Name-For-Simd: vvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvvv\r\n\r\n",
        ];
        for raw in heads {
            for n in 0..raw.len() {
                assert!(is_partial(&raw[..n]), "{:?}", raw[..n].escape_ascii());
            }
            with_head(raw, |h| assert_eq!(h.head_len, raw.len()));
        }
    }

    #[test]
    fn partial_status_line_that_cannot_become_valid_is_refused_early() {
        assert_eq!(err(b"HTTP/2"), M("unsupported HTTP version"));
        assert_eq!(err(b"SSH-2.0-OpenSSH"), M("not an HTTP status line"));
        assert_eq!(err(b"\x16\x03\x01"), M("not an HTTP status line"));
        assert_eq!(err(b"HTTP/1.1 7"), M("status code out of range"));
        assert_eq!(err(b"HTTP/1.1 20x"), M("status code is not three digits"));
        assert_eq!(err(b"HTTP/1.1 200 O\x01"), M("invalid reason phrase"));
        // A bad complete field line in an unfinished head.
        assert_eq!(
            err(b"HTTP/1.1 200 OK\r\nBad Name: 1\r\nX-A"),
            M("invalid header name")
        );
        // A CR at the end is undecided.
        assert!(is_partial(b"HTTP/1.1 200 OK\r"));
        assert!(is_partial(b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r"));
    }

    #[test]
    fn pipelined_second_response_parses_after_head_len_and_body() {
        let mut buf = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        buf.extend_from_slice(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        );
        let mut hs = [EMPTY_HEADER; SLOTS];
        let ParsedResponse::Complete(first) =
            parse_response(&buf, &mut hs, DEFAULT_MAX_RESPONSE_HEAD_BYTES, false).unwrap()
        else {
            panic!("first response partial");
        };
        assert_eq!(first.status, 200);
        assert_eq!(first.framing, ResponseFraming::ContentLength(5));
        let next = first.head_len + 5;
        assert_eq!(&buf[first.head_len..next], b"hello");
        let mut hs2 = [EMPTY_HEADER; SLOTS];
        let ParsedResponse::Complete(second) = parse_response(
            &buf[next..],
            &mut hs2,
            DEFAULT_MAX_RESPONSE_HEAD_BYTES,
            false,
        )
        .unwrap() else {
            panic!("second response partial");
        };
        assert_eq!(second.status, 201);
        assert_eq!(second.reason, "Created");
        assert_eq!(second.framing, ResponseFraming::Chunked);
        assert_eq!(&buf[next + second.head_len..], b"0\r\n\r\n");
        // Bytes after the head never affect it, even garbage.
        let mut garbage = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
        garbage.extend_from_slice(b"\n\r\x00junk");
        with_head(&garbage, |h| assert_eq!(h.head_len, garbage.len() - 7));
    }

    #[test]
    fn rfc9110_15_2_interim_then_final_response() {
        let buf = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok";
        let mut at = 0;
        let mut statuses = Vec::new();
        loop {
            let mut hs = [EMPTY_HEADER; SLOTS];
            let ParsedResponse::Complete(h) =
                parse_response(&buf[at..], &mut hs, DEFAULT_MAX_RESPONSE_HEAD_BYTES, false)
                    .unwrap()
            else {
                panic!("partial at {at}");
            };
            statuses.push(h.status);
            at += h.head_len;
            if !h.is_interim() {
                assert_eq!(h.framing, ResponseFraming::ContentLength(2));
                assert!(!h.keep_alive);
                break;
            }
            assert_eq!(h.framing, ResponseFraming::None);
            assert!(h.keep_alive);
        }
        assert_eq!(statuses, [100, 103, 200]);
        assert_eq!(&buf[at..], b"ok");
    }

    // --- framing (RFC 9112 §6.3) ---

    #[test]
    fn rfc9112_6_3_rule_1_no_body_statuses_ignore_framing_fields() {
        for status in [
            "100 Continue",
            "101 Switching Protocols",
            "199 X",
            "204 No Content",
            "304 Not Modified",
        ] {
            for fields in [
                &["Content-Length: 10"][..],
                &["Transfer-Encoding: chunked"],
                &["Content-Length: 10", "Transfer-Encoding: chunked"],
                &["Content-Length: nonsense", "Content-Length: 3"],
                &[],
            ] {
                let raw = response(&format!("HTTP/1.1 {status}"), fields);
                assert_eq!(
                    framing_of(&raw),
                    Ok((ResponseFraming::None, true)),
                    "{status} {fields:?}"
                );
            }
        }
        with_head(
            &response("HTTP/1.1 101 Switching Protocols", &["Upgrade: websocket"]),
            |h| assert!(h.is_interim()),
        );
    }

    #[test]
    fn rfc9112_6_3_rule_1_response_to_head_has_no_body() {
        let raw = ok11(&["Content-Length: 1234"]);
        with_head_opts(&raw, true, |h| {
            assert_eq!(h.framing, ResponseFraming::None);
            assert!(h.keep_alive);
        });
        with_head_opts(&ok11(&["Transfer-Encoding: gzip"]), true, |h| {
            assert_eq!(h.framing, ResponseFraming::None)
        });
        // No framing fields: still no body, and the connection stays usable.
        with_head_opts(&ok11(&[]), true, |h| {
            assert_eq!(h.framing, ResponseFraming::None);
            assert!(h.keep_alive);
        });
        with_head_opts(&ok11(&["Connection: close"]), true, |h| {
            assert!(!h.keep_alive)
        });
        // The same head to a GET is framed by Content-Length.
        assert_eq!(
            framing_of(&raw),
            Ok((ResponseFraming::ContentLength(1234), true))
        );
    }

    #[test]
    fn rfc9112_6_3_rule_8_no_framing_fields_reads_until_close() {
        assert_eq!(
            framing_of(&ok11(&[])),
            Ok((ResponseFraming::UntilClose, false))
        );
        assert_eq!(
            framing_of(&ok11(&["Connection: keep-alive"])),
            Ok((ResponseFraming::UntilClose, false))
        );
        assert_eq!(
            framing_of(&response("HTTP/1.0 200 OK", &["Connection: keep-alive"])),
            Ok((ResponseFraming::UntilClose, false))
        );
        // Rule 1 only covers 1xx/204/304: a 205 or 404 without fields also reads until close.
        assert_eq!(
            framing_of(&response("HTTP/1.1 404 Not Found", &[])),
            Ok((ResponseFraming::UntilClose, false))
        );
    }

    #[test]
    fn rfc9112_6_1_chunked_final_coding() {
        for te in [
            &["Transfer-Encoding: chunked"][..],
            &["Transfer-Encoding: CHUNKED"],
            &["Transfer-Encoding: gzip, chunked"],
            &["Transfer-Encoding: gzip;q=1 , Chunked"],
            &["Transfer-Encoding: gzip", "Transfer-Encoding: chunked"],
        ] {
            assert_eq!(
                framing_of(&ok11(te)),
                Ok((ResponseFraming::Chunked, true)),
                "{te:?}"
            );
        }
    }

    #[test]
    fn rfc9112_6_3_rule_4_chunked_not_final_is_unsupported() {
        for te in [
            &["Transfer-Encoding: gzip"][..],
            &["Transfer-Encoding: chunked, gzip"],
            &["Transfer-Encoding: chunked", "Transfer-Encoding: gzip"],
            &["Transfer-Encoding: identity"],
        ] {
            assert_eq!(
                framing_of(&ok11(te)),
                Err(ResponseError::UnsupportedTransferCoding),
                "{te:?}"
            );
        }
    }

    #[test]
    fn rfc9112_6_1_chunked_twice_is_ambiguous() {
        assert_eq!(
            framing_of(&ok11(&["Transfer-Encoding: chunked, chunked"])),
            Err(AMB("chunked applied twice"))
        );
        assert_eq!(
            framing_of(&ok11(&[
                "Transfer-Encoding: chunked",
                "Transfer-Encoding: chunked"
            ])),
            Err(AMB("chunked applied twice"))
        );
        assert_eq!(
            framing_of(&ok11(&["Transfer-Encoding: chunked, gzip, chunked"])),
            Err(AMB("chunked applied twice"))
        );
    }

    #[test]
    fn rfc9112_6_1_malformed_transfer_encoding_lists() {
        for te in ["chunked,", ", chunked", "gzip,,chunked", ""] {
            let raw = ok11(&[&format!("Transfer-Encoding: {te}")]);
            assert_eq!(
                framing_of(&raw),
                Err(AMB("empty Transfer-Encoding element")),
                "{te:?}"
            );
        }
        assert_eq!(
            framing_of(&ok11(&["Transfer-Encoding: chunked;x=1"])),
            Err(AMB("chunked with parameters"))
        );
        for te in [
            "chun ked",
            "gzip;q, chunked",
            "\"chunked\"",
            "gzip;=1, chunked",
        ] {
            let raw = ok11(&[&format!("Transfer-Encoding: {te}")]);
            assert_eq!(
                framing_of(&raw),
                Err(M("invalid transfer coding")),
                "{te:?}"
            );
        }
    }

    #[test]
    fn rfc9112_6_3_rule_3_te_with_cl_is_ambiguous() {
        for fields in [
            &["Transfer-Encoding: chunked", "Content-Length: 5"][..],
            &["Content-Length: 5", "Transfer-Encoding: chunked"],
            &["Content-Length: 5", "Transfer-Encoding: gzip"],
        ] {
            assert_eq!(
                framing_of(&ok11(fields)),
                Err(AMB("Content-Length with Transfer-Encoding")),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn rfc9112_6_1_te_in_http_1_0_is_ambiguous() {
        for fields in [
            &["Transfer-Encoding: chunked"][..],
            &["Transfer-Encoding: chunked", "Content-Length: 5"],
        ] {
            assert_eq!(
                framing_of(&response("HTTP/1.0 200 OK", fields)),
                Err(AMB("Transfer-Encoding in an HTTP/1.0 response")),
                "{fields:?}"
            );
        }
    }

    #[test]
    fn rfc9110_8_6_content_length_values() {
        for (v, n) in [
            ("0", 0u64),
            ("1", 1),
            ("1234567", 1_234_567),
            ("9999999999999999999", 9_999_999_999_999_999_999),
        ] {
            let raw = ok11(&[&format!("Content-Length: {v}")]);
            assert_eq!(
                framing_of(&raw),
                Ok((ResponseFraming::ContentLength(n), true)),
                "{v}"
            );
        }
        // OWS around the value is not part of it (RFC 9112 §5).
        assert_eq!(
            framing_of(b"HTTP/1.1 200 OK\r\nContent-Length: \t 7 \t\r\n\r\n"),
            Ok((ResponseFraming::ContentLength(7), true))
        );
    }

    #[test]
    fn rfc9110_8_6_bad_content_length_values() {
        for v in [
            "",
            "+5",
            "-5",
            "5 5",
            "0x10",
            "5.0",
            "five",
            "1_000",
            "005",
            "00",
            "10000000000000000000", // 20 digits, fits u64 but over the digit cap
            "18446744073709551616", // u64::MAX + 1
            "99999999999999999999999999", // far over
        ] {
            let raw = ok11(&[&format!("Content-Length: {v}")]);
            assert_eq!(
                framing_of(&raw),
                Err(ResponseError::BadContentLength),
                "{v:?}"
            );
        }
    }

    #[test]
    fn rfc9110_8_6_repeated_or_listed_content_length_is_ambiguous() {
        assert_eq!(
            framing_of(&ok11(&["Content-Length: 5", "Content-Length: 5"])),
            Err(AMB("Content-Length repeated"))
        );
        assert_eq!(
            framing_of(&ok11(&["Content-Length: 5", "content-length: 6"])),
            Err(AMB("Content-Length repeated"))
        );
        assert_eq!(
            framing_of(&ok11(&["Content-Length: 5, 5"])),
            Err(AMB("Content-Length list"))
        );
        assert_eq!(
            framing_of(&ok11(&["Content-Length: 5,6"])),
            Err(AMB("Content-Length list"))
        );
    }

    #[test]
    fn rfc9112_11_2_framing_field_lookalikes_are_ambiguous() {
        for name in ["Content_Length", "transfer_encoding", "CONTENT_LENGTH"] {
            let raw = ok11(&[&format!("{name}: 5"), "Content-Length: 5"]);
            assert!(
                matches!(framing_of(&raw), Err(ResponseError::AmbiguousFraming(_))),
                "{name}"
            );
        }
        // Other underscores are fine.
        assert_eq!(
            framing_of(&ok11(&["X_Custom: 1", "Content-Length: 5"])),
            Ok((ResponseFraming::ContentLength(5), true))
        );
    }

    // --- keep-alive (RFC 9112 §9.3) ---

    #[test]
    fn rfc9112_9_3_http11_persists_unless_close() {
        let keep_alive = |fields: &[&str]| framing_of(&ok11(fields)).unwrap().1;
        let cl = "Content-Length: 0";
        assert!(keep_alive(&[cl]));
        assert!(!keep_alive(&[cl, "Connection: close"]));
        assert!(!keep_alive(&[cl, "connection: Keep-Alive, CLOSE"]));
        assert!(!keep_alive(&[
            cl,
            "Connection: upgrade",
            "Connection: close"
        ]));
        assert!(keep_alive(&[cl, "Connection: closed"]));
        assert_eq!(
            framing_of(&ok11(&["Transfer-Encoding: chunked", "Connection: close"])).unwrap(),
            (ResponseFraming::Chunked, false)
        );
        // 204 without fields is not UntilClose.
        assert_eq!(
            framing_of(&response("HTTP/1.1 204 No Content", &["Connection: close"])),
            Ok((ResponseFraming::None, false))
        );
    }

    #[test]
    fn rfc9112_9_3_http10_persists_only_with_keep_alive() {
        let r10 = |fields: &[&str]| framing_of(&response("HTTP/1.0 200 OK", fields));
        assert_eq!(
            r10(&["Content-Length: 3"]),
            Ok((ResponseFraming::ContentLength(3), false))
        );
        assert_eq!(
            r10(&["Content-Length: 3", "Connection: keep-alive"]),
            Ok((ResponseFraming::ContentLength(3), true))
        );
        assert_eq!(
            r10(&["Content-Length: 3", "Connection: Keep-Alive"]),
            Ok((ResponseFraming::ContentLength(3), true))
        );
        assert_eq!(
            r10(&["Content-Length: 3", "Connection: keep-alive, close"]),
            Ok((ResponseFraming::ContentLength(3), false))
        );
        assert_eq!(
            framing_of(&response(
                "HTTP/1.0 304 Not Modified",
                &["Connection: keep-alive"]
            )),
            Ok((ResponseFraming::None, true))
        );
        assert_eq!(
            framing_of(&response("HTTP/1.0 304 Not Modified", &[])),
            Ok((ResponseFraming::None, false))
        );
    }

    #[test]
    fn interim_response_is_keep_alive_even_with_close() {
        assert_eq!(
            framing_of(&response("HTTP/1.1 100 Continue", &["Connection: close"])),
            Ok((ResponseFraming::None, true))
        );
        assert_eq!(
            framing_of(&response("HTTP/1.0 100 Continue", &[])),
            Ok((ResponseFraming::None, true))
        );
    }

    // --- errors ---

    #[test]
    fn rfc9457_errors_have_detail_label_and_display() {
        let all = [
            M("bare LF"),
            ResponseError::HeadTooLarge,
            ResponseError::TooManyHeaders,
            AMB("Content-Length repeated"),
            ResponseError::UnsupportedTransferCoding,
            ResponseError::BadContentLength,
        ];
        let mut labels = std::collections::HashSet::new();
        for e in all {
            assert!(e.detail().starts_with("The upstream response"), "{e:?}");
            assert!(e.detail().ends_with('.'), "{e:?}");
            assert!(labels.insert(e.label()), "duplicate label {}", e.label());
            assert!(e.to_string().contains(e.label()));
        }
        assert_eq!(M("bare LF").reason(), "bare LF");
        assert_eq!(
            M("bare LF").to_string(),
            "upstream response malformed: bare LF"
        );
        assert_eq!(
            ResponseError::BadContentLength.reason(),
            ResponseError::BadContentLength.detail()
        );
    }

    #[test]
    fn empty_buffer_is_partial() {
        assert!(is_partial(b""));
        let mut hs = [EMPTY_HEADER; 1];
        assert_eq!(
            parse_response(b"", &mut hs, 0, false),
            Err(ResponseError::HeadTooLarge)
        );
    }
}
