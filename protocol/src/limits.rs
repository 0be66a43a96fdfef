//! Size and count limits applied while parsing requests.
//!
//! Every limit is a named constant with its unit in the name, so that the
//! configuration layer (`server/`) and the tests refer to the same numbers.

/// Default cap on the whole request head: request line, header fields and the
/// final blank line. 16 KiB holds realistic cookie and JWT-bearing requests
/// (browsers and CDNs rarely exceed 8 KiB) while keeping a head well inside
/// one 32–64 KiB connection read buffer, so a single read sees it whole.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// Default cap on the number of header fields. Browsers send fewer than 30;
/// 100 leaves room for proxies that add forwarding fields, and an attacker
/// cannot make us walk thousands of tiny fields per request.
pub const DEFAULT_MAX_HEADERS: usize = 100;

/// Size of the stack array of `httparse::Header` that callers hand to
/// [`crate::request::parse`]. 128 headers × 32 bytes = 4 KiB of stack. The
/// array is zeroed for every request parsed, so it is kept just above the
/// default limit rather than generous; `Limits::max_headers` may not exceed it.
pub const MAX_HEADERS_CAP: usize = 128;

/// Default cap on the request-target. RFC 9112 §3 recommends that recipients
/// support request lines of at least 8000 octets; 8 KiB meets that with room.
pub const DEFAULT_MAX_URI_BYTES: usize = 8 * 1024;

/// Default cap on a decoded request body: 1 MiB, the `max_body_bytes` default
/// of the server configuration. API payloads are small JSON documents; larger
/// uploads should raise this per deployment rather than by default.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;

/// Default cap on one chunk-size line (hex size plus chunk extensions, without
/// CRLF). No extension is standardised (RFC 9112 §7.1.1), so 4 KiB is already
/// generous; the cap stops a client from streaming an endless size line that
/// never yields body bytes.
pub const DEFAULT_MAX_CHUNK_EXT_BYTES: usize = 4 * 1024;

/// Default cap on the whole trailer section of a chunked body, including its
/// final CRLF. Same budget as the head: trailers are header fields too
/// (RFC 9112 §7.1.2) and cost the same to scan.
pub const DEFAULT_MAX_TRAILER_BYTES: usize = 16 * 1024;

/// Empty lines (CRLF) tolerated before a request line. RFC 9112 §2.2 says a
/// server SHOULD ignore at least one; clients that add a stray CRLF after a
/// POST body add one or two. 8 tolerates those, and more is treated as garbage
/// so a client cannot keep a connection busy with blank lines alone.
pub const MAX_LEADING_EMPTY_LINES: usize = 8;

/// Bytes allowed after the request-target in a request line: `SP HTTP/1.1 CR`
/// is 10, rounded up to 16. A request line still incomplete whose bytes after
/// the method exceed `max_uri_bytes` plus this slack cannot carry a target
/// within the limit, so it is answered with 414 before the head completes.
pub const REQUEST_LINE_SLACK_BYTES: usize = 16;

/// Hex digits allowed in a chunk-size (RFC 9112 §7.1). 16 hex digits are
/// exactly 64 bits, so any size that fits is accepted and overflow is
/// impossible; leading zeros beyond that are refused rather than skipped.
pub const MAX_CHUNK_SIZE_HEX_DIGITS: usize = 16;

/// Limits applied by [`crate::request::parse`], [`crate::framing::body_framing`]
/// and [`crate::chunked::ChunkedDecoder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Whole head, counted from the first byte of the request line through the
    /// final CRLFCRLF (tolerated leading empty lines are not counted). -> 431.
    pub max_header_bytes: usize,
    /// Header field count; values above [`MAX_HEADERS_CAP`] act as the cap,
    /// and so does a caller's header array that is shorter. -> 431.
    pub max_headers: usize,
    /// Request-target length in bytes. -> 414.
    pub max_uri_bytes: usize,
    /// Decoded body length (Content-Length or sum of chunk sizes). -> 413.
    pub max_body_bytes: u64,
    /// One chunk-size line, size digits plus extensions, without CRLF. -> 400.
    pub max_chunk_ext_bytes: usize,
    /// Whole trailer section including its final CRLF. -> 431.
    pub max_trailer_bytes: usize,
}

impl Limits {
    /// The defaults, usable in `const` context.
    pub const DEFAULT: Limits = Limits {
        max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        max_headers: DEFAULT_MAX_HEADERS,
        max_uri_bytes: DEFAULT_MAX_URI_BYTES,
        max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        max_chunk_ext_bytes: DEFAULT_MAX_CHUNK_EXT_BYTES,
        max_trailer_bytes: DEFAULT_MAX_TRAILER_BYTES,
    };
}

// The default header count must fit the parser's header array.
const _: () = assert!(DEFAULT_MAX_HEADERS <= MAX_HEADERS_CAP);

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_documented_values() {
        // Not an RFC rule: the documented defaults (RFC 9112 §3 for the URI one).
        let l = Limits::default();
        assert_eq!(l.max_header_bytes, 16384);
        assert_eq!(l.max_headers, 100);
        assert_eq!(l.max_uri_bytes, 8192);
        assert_eq!(l.max_body_bytes, 1 << 20);
        assert_eq!(l.max_chunk_ext_bytes, 4096);
        assert_eq!(l.max_trailer_bytes, 16384);
        assert!(l.max_headers <= MAX_HEADERS_CAP);
    }

    #[test]
    fn rfc9112_3_default_uri_limit_is_at_least_8000_octets() {
        const { assert!(DEFAULT_MAX_URI_BYTES >= 8000) };
    }
}
