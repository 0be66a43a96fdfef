//! Entity tags: generating a strong `ETag` for a body the upstream did not
//! tag, and evaluating `If-None-Match` (RFC 9110 §8.8.3, §13.1.2).
//!
//! The generated tag is `"<16 hex digits>-<length in hex>"`: the 64-bit
//! FNV-1a hash of the body, then the body's length. FNV-1a because it is
//! a few lines of std-only code with well-known constants and spreads
//! short inputs well; the length because it costs nothing and makes a
//! collision need two bodies of exactly the same size. It is not a
//! cryptographic hash: an upstream that wants to make two of its own
//! bodies collide can, but that upstream already controls the content.
//! Different bodies under one URL meeting by chance is a ~2^-64 event. The
//! hash runs once per stored response (a miss), never on a hit; at about
//! a byte per cycle a 1 MiB body (the default `max_entry_bytes`) costs
//! well under a millisecond.

use std::fmt::Write as _;

use super::control::trim_ows;

/// FNV-1a 64-bit offset basis and prime (Fowler, Noll, Vo; the IETF draft
/// draft-eastlake-fnv).
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub(crate) fn fnv1a_64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// A strong entity tag for `body`, quotes included, ready to be the value
/// of an `ETag` field: `"<fnv1a-64 as 16 hex>-<body length as hex>"`.
pub(crate) fn strong_etag(body: &[u8]) -> String {
    // Quotes, 16 digits, '-', at most 16 more digits.
    let mut tag = String::with_capacity(35);
    // Writing into a String cannot fail.
    let _ = write!(tag, "\"{:016x}-{:x}\"", fnv1a_64(body), body.len());
    tag
}

/// Whether `etag` is weak (`W/"..."`, RFC 9110 §8.8.3).
pub(crate) fn is_weak(etag: &[u8]) -> bool {
    trim_ows(etag).starts_with(b"W/")
}

/// Whether an `If-None-Match` condition made of `header_values` (every
/// field line) matches the representation tagged `etag`, which means the
/// request's condition is false and a GET/HEAD gets 304 (RFC 9110
/// §13.1.2): `*` matches any current representation, otherwise any listed
/// tag matches by *weak* comparison, i.e. equal opaque-tags whether or not
/// either is `W/`-prefixed.
///
/// Tolerant of whitespace, empty list elements, commas inside quoted tags
/// (`etagc` allows them), a lower-case `w/`, and tags missing their quotes
/// (compared as if quoted). An element that is none of these, such as an
/// unterminated quote, matches nothing, and parsing goes on after it.
/// An `etag` that is not a valid entity-tag is matched by `*` only.
pub(crate) fn if_none_match(header_values: &[&[u8]], etag: &[u8]) -> bool {
    let current = opaque_tag(trim_ows(etag));
    header_values.iter().any(|value| {
        let mut rest = *value;
        loop {
            rest = skip_separators(rest);
            let Some((member, after)) = next_member(rest) else {
                return false;
            };
            rest = after;
            match member {
                Member::Any => return true,
                Member::Tag(tag) if Some(tag) == current => return true,
                Member::Tag(_) | Member::Invalid => {}
            }
        }
    })
}

/// One element of an `If-None-Match` list.
#[derive(Debug, PartialEq, Eq)]
enum Member<'a> {
    /// `*`
    Any,
    /// The opaque-tag, without quotes or `W/`.
    Tag(&'a [u8]),
    /// Not an entity-tag.
    Invalid,
}

fn skip_separators(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t' | b',', rest @ ..] = s {
        s = rest;
    }
    s
}

/// Reads one member from the start of `s` (separators already skipped);
/// returns it and what follows, or None at the end.
fn next_member(s: &[u8]) -> Option<(Member<'_>, &[u8])> {
    if s.is_empty() {
        return None;
    }
    let body = match s {
        [b'W' | b'w', b'/', rest @ ..] => rest,
        _ => s,
    };
    if let Some(inner) = body.strip_prefix(b"\"") {
        // opaque-tag = DQUOTE *etagc DQUOTE: no escapes, so the next quote
        // closes it; commas inside are part of the tag.
        return Some(match inner.iter().position(|&b| b == b'"') {
            Some(end) => {
                let after = &inner[end + 1..];
                match skip_ows(after) {
                    // Something glued to the closing quote: not a tag.
                    [first, ..] if *first != b',' => {
                        let (_, rest) = split_at_comma(after);
                        (Member::Invalid, rest)
                    }
                    _ => (Member::Tag(&inner[..end]), after),
                }
            }
            None => (Member::Invalid, &[][..]),
        });
    }
    let (element, rest) = split_at_comma(s);
    let element = trim_ows(element);
    let member = if element == b"*" {
        Member::Any
    } else {
        // An unquoted tag from a sloppy client: the opaque part after any
        // `W/`, provided it has no quote or whitespace in it.
        let bare = match element {
            [b'W' | b'w', b'/', rest @ ..] => rest,
            _ => element,
        };
        if !bare.is_empty() && bare.iter().all(|&b| b > b' ' && b != b'"' && b != 0x7f) {
            Member::Tag(bare)
        } else {
            Member::Invalid
        }
    };
    Some((member, rest))
}

fn skip_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    s
}

/// Splits at the first comma: (before, after the comma), or (all, empty).
fn split_at_comma(s: &[u8]) -> (&[u8], &[u8]) {
    match s.iter().position(|&b| b == b',') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, &[]),
    }
}

/// The opaque-tag of a stored `ETag` value (quotes and `W/` removed); a
/// bare, unquoted value is taken whole, as for request members.
fn opaque_tag(etag: &[u8]) -> Option<&[u8]> {
    match next_member(etag) {
        Some((Member::Tag(tag), rest)) if trim_ows(rest).is_empty() => Some(tag),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vectors() {
        // Reference values for FNV-1a 64.
        assert_eq!(fnv1a_64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a_64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a_64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn strong_etag_format() {
        let tag = strong_etag(b"hello");
        assert!(tag.starts_with('"') && tag.ends_with('"'));
        let inner = &tag[1..tag.len() - 1];
        let (hash, len) = inner.split_once('-').unwrap();
        assert_eq!(hash.len(), 16);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(len, "5");
        assert_eq!(strong_etag(b""), "\"cbf29ce484222325-0\"");
        assert!(!is_weak(tag.as_bytes()));
    }

    #[test]
    fn strong_etag_is_stable_and_discriminates() {
        assert_eq!(strong_etag(b"body"), strong_etag(b"body"));
        assert_ne!(strong_etag(b"body"), strong_etag(b"Body"));
        assert_ne!(strong_etag(b"body"), strong_etag(b"body "));
        // Its own output matches itself.
        let tag = strong_etag(&[7u8; 4096]);
        assert!(if_none_match(&[tag.as_bytes()], tag.as_bytes()));
    }

    #[test]
    fn exact_match() {
        assert!(if_none_match(&[b"\"abc\""], b"\"abc\""));
        assert!(!if_none_match(&[b"\"abd\""], b"\"abc\""));
        assert!(!if_none_match(&[b"\"ab\""], b"\"abc\""));
    }

    #[test]
    fn star_matches_anything() {
        assert!(if_none_match(&[b"*"], b"\"abc\""));
        assert!(if_none_match(&[b" * "], b"W/\"x\""));
        assert!(if_none_match(&[b"*"], b"not a tag"));
    }

    #[test]
    fn weak_comparison() {
        // RFC 9110 §8.8.3.2's table: weak comparison ignores W/ on both sides.
        assert!(if_none_match(&[b"W/\"1\""], b"W/\"1\""));
        assert!(if_none_match(&[b"W/\"1\""], b"\"1\""));
        assert!(if_none_match(&[b"\"1\""], b"W/\"1\""));
        assert!(!if_none_match(&[b"W/\"1\""], b"W/\"2\""));
        assert!(is_weak(b"W/\"1\""));
    }

    #[test]
    fn lists_and_multiple_lines() {
        assert!(if_none_match(&[b"\"a\", \"b\", \"c\""], b"\"b\""));
        assert!(if_none_match(&[b"\"a\"", b"W/\"c\""], b"\"c\""));
        assert!(if_none_match(&[b" , ,\"a\",,\t\"c\" ,"], b"\"c\""));
        assert!(!if_none_match(&[b"\"a\", \"b\""], b"\"c\""));
        assert!(!if_none_match(&[], b"\"c\""));
        assert!(!if_none_match(&[b""], b"\"c\""));
    }

    #[test]
    fn commas_inside_tags() {
        assert!(if_none_match(&[b"\"a,b\""], b"\"a,b\""));
        assert!(!if_none_match(&[b"\"a,b\""], b"\"a\""));
        assert!(!if_none_match(&[b"\"a,b\""], b"\"b\""));
    }

    #[test]
    fn lenient_forms() {
        assert!(if_none_match(&[b"w/\"x\""], b"\"x\""), "lower-case w/");
        assert!(if_none_match(&[b"abc"], b"\"abc\""), "missing quotes");
        assert!(
            if_none_match(&[b"\"abc\""], b"abc"),
            "stored tag missing quotes"
        );
    }

    #[test]
    fn malformed_members_match_nothing_but_parsing_continues() {
        assert!(!if_none_match(&[b"\"abc"], b"\"abc\""), "unterminated");
        assert!(!if_none_match(&[b"\"abc\"x"], b"\"abc\""), "glued garbage");
        assert!(if_none_match(&[b"\"abc\"x, \"def\""], b"\"def\""));
        assert!(if_none_match(&[b"a b, \"def\""], b"\"def\""));
        assert!(!if_none_match(&[b"\"\""], b"\"abc\""));
        assert!(
            if_none_match(&[b"\"\""], b"\"\""),
            "empty opaque-tag is valid"
        );
        // A malformed stored tag only matches `*`.
        assert!(!if_none_match(&[b"\"x"], b"\"x"));
        assert!(if_none_match(&[b"*"], b"\"x"));
    }
}
