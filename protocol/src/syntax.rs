//! Character classes of RFC 9110 §5.6 and RFC 3986 §2, shared by the parsers.

/// `tchar` (RFC 9110 §5.6.2).
pub(crate) const fn is_tchar(b: u8) -> bool {
    matches!(b,
        b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'.' |
        b'^' | b'_' | b'`' | b'|' | b'~' | b'0'..=b'9' | b'A'..=b'Z' | b'a'..=b'z')
}

/// `token = 1*tchar` (RFC 9110 §5.6.2).
pub(crate) fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

/// `unreserved` (RFC 3986 §2.3).
pub(crate) const fn is_unreserved(b: u8) -> bool {
    matches!(b, b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~')
}

/// `sub-delims` (RFC 3986 §2.2).
pub(crate) const fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

/// `pchar` minus `pct-encoded` (RFC 3986 §3.3); `%` is checked separately.
pub(crate) const fn is_pchar(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || b == b':' || b == b'@'
}

/// Byte classes for request-target validation, one table lookup per byte
/// instead of a chain of range tests (the target is scanned on every
/// request).
pub(crate) const TARGET_PATH: u8 = 1; // pchar (minus '%') or '/'
pub(crate) const TARGET_QUERY: u8 = 2; // pchar (minus '%'), '/', '?'
/// reg-name bytes (RFC 3986 §3.2.2) minus '%' and ',': see
/// `request::is_reg_name`. Checked on every request's Host.
pub(crate) const REG_NAME: u8 = 4;

pub(crate) static TARGET_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        if is_pchar(b) || b == b'/' {
            t[i] = TARGET_PATH | TARGET_QUERY;
        } else if b == b'?' {
            t[i] = TARGET_QUERY;
        }
        if is_unreserved(b) || (is_sub_delim(b) && b != b',') {
            t[i] |= REG_NAME;
        }
        i += 1;
    }
    t
};

/// Value of an ASCII hex digit.
pub(crate) const fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Strips leading and trailing OWS (SP / HTAB, RFC 9110 §5.6.3).
pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Iterates the elements of a `#rule` list (RFC 9110 §5.6.1), OWS-trimmed.
/// Empty elements are yielded (as empty slices) so callers can decide.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

/// Whether `s` holds a CR, LF or NUL, eight bytes at a time (the same
/// has-zero-byte test as [`find_cr_or_lf`]; a false positive can only
/// follow a true match, so "any hit" is exact).
pub(crate) fn has_cr_lf_or_nul(s: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let mut chunks = s.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        if zero(w) | zero(w ^ (ONES * u64::from(b'\r'))) | zero(w ^ (ONES * u64::from(b'\n'))) != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| matches!(b, b'\r' | b'\n' | 0))
}

/// Offset of the first CR or LF in `s`, eight bytes at a time: a head is
/// scanned on every request and response, and a byte-at-a-time loop was most of the
/// parser's cost over httparse's.
pub(crate) fn find_cr_or_lf(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = s.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let w = u64::from_le_bytes(word);
        // A byte of `x` is zero where `w` holds CR (resp. LF); the classic
        // has-zero-byte test flags it. Only bytes after a true match can be
        // false positives, and the lowest flag is the first match.
        let x = w ^ (ONES * u64::from(b'\r'));
        let y = w ^ (ONES * u64::from(b'\n'));
        let hits = (x.wrapping_sub(ONES) & !x & HIGHS) | (y.wrapping_sub(ONES) & !y & HIGHS);
        if hits != 0 {
            return Some(i + (hits.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s[i..]
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .map(|p| i + p)
}

/// Whether `v` is a well-formed `Forwarded` field value (RFC 7239 §4):
/// `1#forwarded-element`, each `[pair] *(";" [pair])`, a pair
/// `token "=" (token / quoted-string)`. A gateway appending its own element
/// to a malformed one (an unclosed quote) would hand the upstream an
/// element it cannot see, so such a value is not forwarded.
pub fn is_forwarded_value(v: &[u8]) -> bool {
    let mut i = 0;
    let skip_ows = |i: &mut usize| {
        while *i < v.len() && matches!(v[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    let mut pairs = 0usize;
    loop {
        skip_ows(&mut i);
        if i < v.len() && is_tchar(v[i]) {
            // token "=" value
            while i < v.len() && is_tchar(v[i]) {
                i += 1;
            }
            if v.get(i) != Some(&b'=') {
                return false;
            }
            i += 1;
            match v.get(i) {
                Some(b'"') => {
                    i += 1;
                    loop {
                        match v.get(i) {
                            None => return false,
                            Some(b'"') => {
                                i += 1;
                                break;
                            }
                            Some(b'\\') => {
                                // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
                                match v.get(i + 1) {
                                    Some(&c) if c == b'\t' || c >= 0x20 && c != 0x7f => i += 2,
                                    _ => return false,
                                }
                            }
                            Some(&c) if c == b'\t' || c >= 0x20 && c != 0x7f => i += 1,
                            Some(_) => return false,
                        }
                    }
                }
                Some(&c) if is_tchar(c) => {
                    while i < v.len() && is_tchar(v[i]) {
                        i += 1;
                    }
                }
                _ => return false,
            }
            pairs += 1;
            skip_ows(&mut i);
        }
        match v.get(i) {
            None => return pairs > 0,
            Some(b';' | b',') => i += 1,
            Some(_) => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forwarded_values() {
        use super::is_forwarded_value as ok;
        for good in [
            "for=192.0.2.60;proto=http;by=203.0.113.43",
            "for=\"[2001:db8:cafe::17]:4711\"",
            "For=\"_gazonk\"",
            "for=192.0.2.43, for=198.51.100.17",
            "for=a ; proto=https , for=b",
            "for=\"a\\\"b\"",
            ", for=a,",
        ] {
            assert!(ok(good.as_bytes()), "{good}");
        }
        for bad in [
            "for=\"unterminated",
            "for=\"a\\",
            "for",
            "for=",
            "=x",
            "for=a b",
            "for=a;;=b",
            "",
            " , ",
            "for=\"a\"x",
        ] {
            assert!(!ok(bad.as_bytes()), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn rfc9110_5_6_2_tchar_excludes_delimiters() {
        for b in b"\"(),/:;<=>?@[\\]{} \t".iter() {
            assert!(!is_tchar(*b), "{}", *b as char);
        }
        assert!(is_token(b"X-Custom_Header.1~"));
        assert!(!is_token(b""));
    }

    #[test]
    fn has_cr_lf_or_nul_finds_each_at_every_offset() {
        for len in 0..20 {
            let clean = vec![b'a'; len];
            assert!(!has_cr_lf_or_nul(&clean), "{len}");
            for at in 0..len {
                for bad in [b'\r', b'\n', 0] {
                    let mut v = clean.clone();
                    v[at] = bad;
                    assert!(has_cr_lf_or_nul(&v), "{len} {at} {bad}");
                }
            }
        }
        // High bytes and other controls are not hits.
        assert!(!has_cr_lf_or_nul(b"\x80\xff\x01\x0b\x0c\t\x7f\x0e\x8d"));
    }

    #[test]
    fn rfc9110_5_6_1_list_elements_are_ows_trimmed() {
        let v: Vec<&[u8]> = list_elements(b" a ,\tb,, c").collect();
        assert_eq!(v, [&b"a"[..], b"b", b"", b"c"]);
    }
}
