//! JSON helpers: string escaping for generated bodies (RFC 8259 §7) and a
//! validity check backed by simd-json for request bodies.

/// Appends `s` as a JSON string, quotes included (RFC 8259 §7): `"` and `\`
/// are escaped, control characters U+0000–U+001F use the short escapes
/// where they exist and `\u00XX` otherwise. Everything else, non-ASCII
/// included, is copied as UTF-8 (RFC 8259 §8.1).
pub fn write_escaped(out: &mut Vec<u8>, s: &str) {
    out.reserve(escaped_len(s));
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        if short.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX_DIGITS[usize::from(b >> 4)]);
            out.push(HEX_DIGITS[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(short);
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Bytes [`write_escaped`] appends for `s`, quotes included; lets a response
/// write Content-Length before the body without a scratch buffer.
pub fn escaped_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// Whether `buf` is one valid JSON text (RFC 8259 §2). simd-json parses in
/// place and may overwrite `buf` (it unescapes strings), and it allocates
/// its tape: use on request bodies, not on the head-parsing path.
///
/// A `\u` escape of an unpaired UTF-16 surrogate is refused too: RFC 8259's
/// grammar allows it, but it names no character (I-JSON, RFC 7493 §2.1),
/// and strict parsers (serde_json among them) reject the whole document,
/// so a gateway embedding such a part would break the response it builds.
pub fn validate_json(buf: &mut [u8]) -> bool {
    !has_lone_surrogate_escape(buf) && simd_json::to_tape(buf).is_ok()
}

/// Whether `buf` has a `\uD800`-`\uDFFF` escape that is not a high
/// surrogate followed at once by an escaped low one. Backslashes occur only
/// inside strings in valid JSON, so a linear scan sees every escape.
fn has_lone_surrogate_escape(buf: &[u8]) -> bool {
    fn unit(b: &[u8]) -> Option<u16> {
        let hex = b.get(2..6)?;
        if b.first() != Some(&b'\\') || b.get(1) != Some(&b'u') {
            return None;
        }
        u16::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()
    }
    let mut i = 0;
    while i < buf.len() {
        if buf[i] != b'\\' {
            i += 1;
            continue;
        }
        match unit(&buf[i..]) {
            Some(0xD800..=0xDBFF) => {
                if !matches!(unit(&buf[i + 6..]), Some(0xDC00..=0xDFFF)) {
                    return true;
                }
                i += 12;
            }
            Some(0xDC00..=0xDFFF) => return true,
            Some(_) => i += 6,
            // Another escape (`\"`, `\\`, ...): skip its two bytes.
            None => i += 2,
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str) -> String {
        let mut out = Vec::new();
        write_escaped(&mut out, s);
        assert_eq!(out.len(), escaped_len(s));
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn lone_surrogate_escapes_are_not_valid() {
        for (text, ok) in [
            (r#"{"s":"\ud83d\ude00"}"#, true),
            (r#"{"s":"\u00e9"}"#, true),
            (r#"{"s":"\\ud800"}"#, true),
            (r#"{"s":"\ud800"}"#, false),
            (r#"{"s":"\udc00"}"#, false),
            (r#"{"s":"\ud800x"}"#, false),
            (r#"{"s":"\ud800\u0041"}"#, false),
        ] {
            let mut b = text.as_bytes().to_vec();
            assert_eq!(validate_json(&mut b), ok, "{text}");
        }
    }

    #[test]
    fn rfc8259_7_escapes_quote_backslash_and_controls() {
        assert_eq!(esc(""), r#""""#);
        assert_eq!(esc("plain"), r#""plain""#);
        assert_eq!(esc("a\"b\\c"), r#""a\"b\\c""#);
        assert_eq!(esc("\n\r\t\u{8}\u{c}"), r#""\n\r\t\b\f""#);
        assert_eq!(esc("\u{0}\u{1f}"), r#""\u0000\u001f""#);
        assert_eq!(esc("/"), r#""/""#);
    }

    #[test]
    fn rfc8259_8_1_non_ascii_is_copied_as_utf8() {
        assert_eq!(esc("café ✓"), "\"café ✓\"");
        assert_eq!(esc("\u{7f}"), "\"\u{7f}\"");
    }

    #[test]
    fn rfc8259_7_escaped_output_round_trips_through_a_json_parser() {
        let s = "q\"\\\n\u{1}é";
        let mut out = Vec::new();
        write_escaped(&mut out, s);
        let mut doc = format!("{{\"k\":{}}}", String::from_utf8(out).expect("utf8")).into_bytes();
        assert!(validate_json(&mut doc));
    }

    #[test]
    fn deep_nesting_is_checked_without_recursion() {
        // An upstream part in an aggregation is checked with this: a deep
        // document must not overflow a shard's stack.
        let mut deep = vec![b'['; 200_000];
        deep.extend(std::iter::repeat_n(b']', 200_000));
        let _ = validate_json(&mut deep);
    }

    #[test]
    fn rfc8259_2_validate_json() {
        assert!(validate_json(&mut br#"{"a":[1,2,{"b":null}]}"#.to_vec()));
        assert!(!validate_json(&mut br#"{"a":}"#.to_vec()));
        assert!(!validate_json(&mut b"{\"a\":1".to_vec()));
    }
}
