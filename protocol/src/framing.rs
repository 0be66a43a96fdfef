//! Request body framing (RFC 9112 §6.1–§6.3), decided from the header fields.
//!
//! Strict by design: every case where two parsers could disagree on where a
//! body ends is refused, because such a disagreement between us and a proxy
//! in front of us is how requests are smuggled (RFC 9112 §11.2).

use httparse::Header;

use crate::error::{Error, ErrorKind};
use crate::limits::Limits;
use crate::request::Version;
use crate::syntax::{is_token, list_elements, trim_ows};

/// How the body of a request is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyFraming {
    /// No body: neither Content-Length nor Transfer-Encoding (RFC 9112 §6.3,
    /// rule 7: a request without either has a zero-length body).
    None,
    /// Exactly this many bytes follow the head (RFC 9112 §6.3, rule 6).
    ContentLength(u64),
    /// Chunked transfer coding (RFC 9112 §7.1), decoded by
    /// [`crate::chunked::ChunkedDecoder`].
    Chunked,
}

/// Decides the framing of a request body (RFC 9112 §6.1–§6.3).
///
/// Refused, with the reason as the error kind:
/// - Transfer-Encoding in an HTTP/1.0 request (RFC 9112 §6.1: the framing is
///   faulty);
/// - Content-Length together with Transfer-Encoding (RFC 9112 §6.1: a server
///   MAY reject; we do, rather than guess which one a proxy used);
/// - a Transfer-Encoding list (comma-separated, OWS, case-insensitive,
///   across all Transfer-Encoding lines, RFC 9110 §5.3) with an empty
///   element, a malformed element, a final coding other than `chunked`
///   (RFC 9112 §6.3 rule 4: the length cannot be determined -> 400), or
///   `chunked` twice (RFC 9112 §6.1: MUST NOT apply chunked more than once);
/// - any other coding before `chunked`: not implemented -> 501 (RFC 9112 §6.1);
/// - Content-Length given more than once or as a list, even with equal
///   values (RFC 9110 §8.6 permits folding equal values; we do not), not
///   `1*DIGIT`, with leading zeros, or over u64 (RFC 9112 §6.3 rule 5: an
///   invalid Content-Length is an unrecoverable error);
/// - Content-Length above `limits.max_body_bytes` -> 413 (RFC 9110 §15.5.14).
pub fn body_framing(
    version: Version,
    headers: &[Header<'_>],
    limits: &Limits,
) -> Result<BodyFraming, Error> {
    check_framing(version, headers, limits, true)
}

/// [`body_framing`], also usable on the complete field lines of an unfinished
/// head (`complete == false`): then only the rules that later lines cannot
/// change are applied, and the framing returned is meaningless.
pub(crate) fn check_framing(
    version: Version,
    headers: &[Header<'_>],
    limits: &Limits,
    complete: bool,
) -> Result<BodyFraming, Error> {
    let mut content_length: Option<&[u8]> = None;
    let mut has_te = false;
    let mut chunked_count = 0u32;
    let mut last_is_chunked = false;
    let mut has_other_coding = false;

    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(ErrorKind::ContentLengthDuplicate.into());
            }
            content_length = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
            for coding in list_elements(h.value) {
                match classify_coding(coding)? {
                    Coding::Chunked => {
                        chunked_count += 1;
                        last_is_chunked = true;
                    }
                    Coding::Other => {
                        has_other_coding = true;
                        last_is_chunked = false;
                    }
                }
            }
        } else if is_framing_lookalike(name) {
            return Err(ErrorKind::FramingFieldLookalike.into());
        }
    }

    if has_te {
        if version == Version::Http10 {
            return Err(ErrorKind::TransferEncodingOnHttp10.into());
        }
        if content_length.is_some() {
            return Err(ErrorKind::ContentLengthWithTransferEncoding.into());
        }
        if chunked_count > 1 {
            return Err(ErrorKind::TransferEncodingChunkedTwice.into());
        }
        if !complete {
            // A later Transfer-Encoding line may still end the list with
            // chunked, which turns "not chunked last" into "unknown coding".
            return Ok(BodyFraming::Chunked);
        }
        if !last_is_chunked {
            return Err(ErrorKind::TransferEncodingNotChunkedLast.into());
        }
        if has_other_coding {
            return Err(ErrorKind::TransferEncodingUnknown.into());
        }
        return Ok(BodyFraming::Chunked);
    }

    match content_length {
        None => Ok(BodyFraming::None),
        Some(v) => {
            let n = parse_content_length(v)?;
            if n > limits.max_body_bytes {
                return Err(ErrorKind::BodyTooLarge.into());
            }
            Ok(BodyFraming::ContentLength(n))
        }
    }
}

/// `Content_Length` or `Transfer_Encoding` (any case). RFC 9110 §5.1 makes
/// them different fields, but gateways that map `-` to `_` (CGI, some
/// proxies) would read them as the real ones: the disagreement is a known
/// smuggling vector, and no client has a reason to send them.
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

enum Coding {
    Chunked,
    Other,
}

/// One `transfer-coding = token *( OWS ";" OWS transfer-parameter )`
/// (RFC 9112 §7), already OWS-trimmed.
fn classify_coding(coding: &[u8]) -> Result<Coding, Error> {
    if coding.is_empty() {
        // RFC 9110 §5.6.1 lets recipients skip empty list elements, but in
        // Transfer-Encoding ", chunked" or "chunked," is a classic smuggling
        // probe that another parser may read differently: refuse.
        return Err(ErrorKind::TransferEncodingEmpty.into());
    }
    let (name, params) = match coding.iter().position(|&b| b == b';') {
        Some(semi) => (trim_ows(&coding[..semi]), Some(&coding[semi + 1..])),
        None => (coding, None),
    };
    if !is_token(name) {
        return Err(ErrorKind::TransferEncodingInvalid.into());
    }
    // RFC 9112 §7: transfer-coding names are case-insensitive.
    if name.eq_ignore_ascii_case(b"chunked") {
        // RFC 9112 §7.1 defines no parameters for chunked.
        if params.is_some() {
            return Err(ErrorKind::TransferEncodingInvalid.into());
        }
        return Ok(Coding::Chunked);
    }
    if let Some(params) = params {
        if !params_are_valid(params) {
            return Err(ErrorKind::TransferEncodingInvalid.into());
        }
    }
    Ok(Coding::Other)
}

/// `*( OWS ";" OWS transfer-parameter )` after the first ';', with
/// `transfer-parameter = token BWS "=" BWS ( token / quoted-string )`
/// (RFC 9112 §7). Values are checked only as far as needed to know the
/// element is well-formed; the coding is refused as unknown anyway.
fn params_are_valid(params: &[u8]) -> bool {
    params.split(|&b| b == b';').all(|p| {
        let p = trim_ows(p);
        match p.iter().position(|&b| b == b'=') {
            Some(eq) => {
                let value = trim_ows(&p[eq + 1..]);
                is_token(trim_ows(&p[..eq])) && (is_token(value) || is_quoted_string_simple(value))
            }
            None => false,
        }
    })
}

/// A quoted-string without quoted-pairs or embedded separators of concern
/// (RFC 9110 §5.6.4); good enough to tell a well-formed parameter from junk.
fn is_quoted_string_simple(v: &[u8]) -> bool {
    v.len() >= 2
        && v[0] == b'"'
        && v[v.len() - 1] == b'"'
        && v[1..v.len() - 1]
            .iter()
            .all(|&b| b == b'\t' || b == b' ' || (b >= 0x21 && b != b'"' && b != 0x7f))
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6) with two strictness choices:
/// a list (`5, 5`) is a duplicate, and leading zeros (`005`) are refused,
/// because some parsers read them as octal and the encoding is never needed.
fn parse_content_length(v: &[u8]) -> Result<u64, Error> {
    if v.contains(&b',') {
        return Err(ErrorKind::ContentLengthDuplicate.into());
    }
    if v.is_empty() || (v.len() > 1 && v[0] == b'0') {
        return Err(ErrorKind::ContentLengthInvalid.into());
    }
    let mut n: u64 = 0;
    for &b in v {
        if !b.is_ascii_digit() {
            return Err(ErrorKind::ContentLengthInvalid.into());
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(ErrorKind::ContentLengthInvalid)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framing(
        version: Version,
        fields: &[(&'static str, &'static [u8])],
    ) -> Result<BodyFraming, ErrorKind> {
        framing_limits(version, fields, &Limits::default())
    }

    fn framing_limits(
        version: Version,
        fields: &[(&'static str, &'static [u8])],
        limits: &Limits,
    ) -> Result<BodyFraming, ErrorKind> {
        let headers: Vec<Header<'static>> = fields
            .iter()
            .map(|&(name, value)| Header { name, value })
            .collect();
        body_framing(version, &headers, limits).map_err(|e| e.kind())
    }

    fn te(value: &'static [u8]) -> Result<BodyFraming, ErrorKind> {
        framing(Version::Http11, &[("Transfer-Encoding", value)])
    }

    fn cl(value: &'static [u8]) -> Result<BodyFraming, ErrorKind> {
        framing(Version::Http11, &[("Content-Length", value)])
    }

    #[test]
    fn rfc9112_6_3_no_cl_no_te_means_no_body() {
        assert_eq!(
            framing(Version::Http11, &[("Host", b"a")]),
            Ok(BodyFraming::None)
        );
        assert_eq!(framing(Version::Http10, &[]), Ok(BodyFraming::None));
    }

    #[test]
    fn rfc9112_6_3_content_length_gives_the_length() {
        assert_eq!(cl(b"0"), Ok(BodyFraming::ContentLength(0)));
        assert_eq!(cl(b"1048576"), Ok(BodyFraming::ContentLength(1 << 20)));
        assert_eq!(
            framing(Version::Http10, &[("content-length", b"5")]),
            Ok(BodyFraming::ContentLength(5))
        );
    }

    #[test]
    fn rfc9112_6_1_rejects_cl_with_te() {
        let both = [
            ("Content-Length", &b"5"[..]),
            ("Transfer-Encoding", &b"chunked"[..]),
        ];
        assert_eq!(
            framing(Version::Http11, &both),
            Err(ErrorKind::ContentLengthWithTransferEncoding)
        );
        let reversed = [both[1], both[0]];
        assert_eq!(
            framing(Version::Http11, &reversed),
            Err(ErrorKind::ContentLengthWithTransferEncoding)
        );
        // Even an invalid TE with CL is refused (as one or the other).
        let bad = [
            ("Content-Length", &b"5"[..]),
            ("Transfer-Encoding", &b"gzip"[..]),
        ];
        assert_eq!(
            framing(Version::Http11, &bad),
            Err(ErrorKind::ContentLengthWithTransferEncoding)
        );
    }

    #[test]
    fn rfc9112_6_1_rejects_te_on_http10() {
        assert_eq!(
            framing(Version::Http10, &[("Transfer-Encoding", b"chunked")]),
            Err(ErrorKind::TransferEncodingOnHttp10)
        );
        assert_eq!(
            framing(
                Version::Http10,
                &[("Transfer-Encoding", b"chunked"), ("Content-Length", b"5")]
            ),
            Err(ErrorKind::TransferEncodingOnHttp10)
        );
    }

    #[test]
    fn rfc9112_7_chunked_is_case_insensitive() {
        assert_eq!(te(b"chunked"), Ok(BodyFraming::Chunked));
        assert_eq!(te(b"Chunked"), Ok(BodyFraming::Chunked));
        assert_eq!(
            framing(Version::Http11, &[("TRANSFER-ENCODING", b"CHUNKED")]),
            Ok(BodyFraming::Chunked)
        );
    }

    #[test]
    fn rfc9112_6_3_rejects_final_coding_other_than_chunked() {
        for v in [
            &b"chunked, gzip"[..],
            b"gzip",
            b"identity",
            b"xchunked",
            b"chunk",
            b"chunked-false",
        ] {
            let v: &'static [u8] = v;
            assert_eq!(
                te(v),
                Err(ErrorKind::TransferEncodingNotChunkedLast),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        assert_eq!(
            framing(
                Version::Http11,
                &[
                    ("Transfer-Encoding", b"chunked"),
                    ("Transfer-Encoding", b"identity")
                ]
            ),
            Err(ErrorKind::TransferEncodingNotChunkedLast)
        );
    }

    #[test]
    fn rfc9112_6_1_rejects_chunked_twice() {
        assert_eq!(
            te(b"chunked, chunked"),
            Err(ErrorKind::TransferEncodingChunkedTwice)
        );
        assert_eq!(
            framing(
                Version::Http11,
                &[
                    ("Transfer-Encoding", b"chunked"),
                    ("transfer-encoding", b"chunked")
                ]
            ),
            Err(ErrorKind::TransferEncodingChunkedTwice)
        );
    }

    #[test]
    fn rfc9112_6_1_unknown_coding_before_chunked_is_501() {
        for v in [
            &b"gzip, chunked"[..],
            b"identity, chunked",
            b"deflate,chunked",
            b"compress ,\tchunked",
            b"gzip;q=1, chunked",
            b"x;a=\"b c\", chunked",
        ] {
            let v: &'static [u8] = v;
            assert_eq!(
                te(v),
                Err(ErrorKind::TransferEncodingUnknown),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        assert_eq!(
            framing(
                Version::Http11,
                &[
                    ("Transfer-Encoding", b"gzip"),
                    ("Transfer-Encoding", b"chunked")
                ]
            ),
            Err(ErrorKind::TransferEncodingUnknown)
        );
        assert_eq!(
            Error::from(ErrorKind::TransferEncodingUnknown).status(),
            501
        );
    }

    #[test]
    fn rfc9112_6_1_rejects_empty_te_value_or_element() {
        for v in [
            &b""[..],
            b" ",
            b", chunked",
            b"chunked,",
            b"chunked,,",
            b"gzip, , chunked",
        ] {
            let v: &'static [u8] = v;
            assert_eq!(
                te(v),
                Err(ErrorKind::TransferEncodingEmpty),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn rfc9112_7_rejects_malformed_te_elements() {
        for v in [
            &b"chunked;ext=val"[..],
            b"chunked;",
            b"\"chunked\"",
            b"\x0bchunked",
            b"\x0cchunked",
            b"chunked\x00",
            b"ch unked",
            b"gzip;, chunked",
            b"gzip;q, chunked",
        ] {
            let v: &'static [u8] = v;
            assert_eq!(
                te(v),
                Err(ErrorKind::TransferEncodingInvalid),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn rfc9112_6_3_rejects_more_than_one_content_length_even_if_equal() {
        assert_eq!(
            framing(
                Version::Http11,
                &[("Content-Length", b"5"), ("Content-Length", b"5")]
            ),
            Err(ErrorKind::ContentLengthDuplicate)
        );
        assert_eq!(
            framing(
                Version::Http11,
                &[("Content-Length", b"5"), ("content-length", b"10")]
            ),
            Err(ErrorKind::ContentLengthDuplicate)
        );
        for v in [&b"5, 5"[..], b"5,5", b"5, 10", b"5, 5, 5", b","] {
            let v: &'static [u8] = v;
            assert_eq!(
                cl(v),
                Err(ErrorKind::ContentLengthDuplicate),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn rfc9112_6_3_rejects_content_length_that_is_not_plain_digits() {
        for v in [
            &b""[..],
            b"+5",
            b"-1",
            b"-0",
            b"0x5",
            b"0o5",
            b"1 0",
            b" 5",
            b"5 ",
            b"abc",
            b"49x",
            b"1_0",
            b"5.0",
            b"\t5",
            b"\xef\xbc\x95",
        ] {
            let v: &'static [u8] = v;
            assert_eq!(
                cl(v),
                Err(ErrorKind::ContentLengthInvalid),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn rfc9112_6_3_rejects_content_length_with_leading_zeros() {
        for v in [&b"00"[..], b"005", b"0200"] {
            let v: &'static [u8] = v;
            assert_eq!(
                cl(v),
                Err(ErrorKind::ContentLengthInvalid),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
    }

    #[test]
    fn rfc9112_6_3_rejects_content_length_overflow() {
        assert_eq!(
            cl(b"99999999999999999999"),
            Err(ErrorKind::ContentLengthInvalid)
        );
        assert_eq!(
            cl(b"18446744073709551616"),
            Err(ErrorKind::ContentLengthInvalid)
        );
        let unlimited = Limits {
            max_body_bytes: u64::MAX,
            ..Limits::default()
        };
        assert_eq!(
            framing_limits(
                Version::Http11,
                &[("Content-Length", b"18446744073709551615")],
                &unlimited
            ),
            Ok(BodyFraming::ContentLength(u64::MAX))
        );
    }

    #[test]
    fn rfc9110_15_5_14_content_length_over_limit_is_413() {
        let limits = Limits {
            max_body_bytes: 10,
            ..Limits::default()
        };
        assert_eq!(
            framing_limits(Version::Http11, &[("Content-Length", b"10")], &limits),
            Ok(BodyFraming::ContentLength(10))
        );
        assert_eq!(
            framing_limits(Version::Http11, &[("Content-Length", b"11")], &limits),
            Err(ErrorKind::BodyTooLarge)
        );
        assert_eq!(cl(b"999999999"), Err(ErrorKind::BodyTooLarge));
        assert_eq!(Error::from(ErrorKind::BodyTooLarge).status(), 413);
    }

    #[test]
    fn rfc9112_11_2_rejects_framing_field_lookalikes() {
        for name in [
            "Transfer_Encoding",
            "transfer_encoding",
            "content_length",
            "CONTENT_LENGTH",
        ] {
            let r = framing(
                Version::Http11,
                &[(name, b"chunked"), ("Content-Length", b"11")],
            );
            assert_eq!(r, Err(ErrorKind::FramingFieldLookalike), "{name}");
        }
        // Other underscored names are ordinary fields (RFC 9110 §5.1).
        assert_eq!(
            framing(
                Version::Http11,
                &[("X_Content_Length", b"1"), ("Content-Length", b"11")]
            ),
            Ok(BodyFraming::ContentLength(11))
        );
    }
}
