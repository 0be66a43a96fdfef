//! Small JSON writing helpers for log lines and admin replies (no
//! allocation per value; the output buffer is the caller's).

use std::io::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Appends `s` as a JSON string (quotes included), escaping per RFC 8259 §7.
pub(crate) fn push_str(out: &mut String, s: &str) {
    // Safe to go through bytes: escaping only touches ASCII.
    let mut v = std::mem::take(out).into_bytes();
    push_bytes(&mut v, s.as_bytes());
    *out = String::from_utf8(v).unwrap_or_default();
}

/// Appends bytes as a JSON string. Invalid UTF-8 and control bytes are
/// escaped as `\u00XX` (a byte, not a code point: logs must never carry raw
/// control characters, and a request path may hold anything).
pub(crate) fn push_bytes(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let valid = std::str::from_utf8(s).is_ok();
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b if b < 0x20 || b == 0x7f || (!valid && b >= 0x80) => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            b => out.push(b),
        }
    }
    out.push(b'"');
}

/// Appends the current UTC time as RFC 3339 with milliseconds, quoted.
pub(crate) fn push_now(out: &mut Vec<u8>) {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    push_time(out, d.as_secs(), d.subsec_millis());
}

pub(crate) fn push_time(out: &mut Vec<u8>, secs: u64, millis: u32) {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    // Written straight into the line buffer: no allocation per line.
    let _ = write!(
        out,
        "\"{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z\"",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        let mut v = Vec::new();
        push_bytes(&mut v, b"a\"b\\c\n\x01");
        assert_eq!(v, b"\"a\\\"b\\\\c\\n\\u0001\"");
        let mut v = Vec::new();
        push_bytes(&mut v, b"\xff/x");
        assert_eq!(v, b"\"\\u00ff/x\"");
    }

    #[test]
    fn rfc3339() {
        let mut v = Vec::new();
        push_time(&mut v, 1_795_651_200, 7);
        assert_eq!(v, b"\"2026-11-26T00:00:00.007Z\"");
        let mut v = Vec::new();
        push_time(&mut v, 951_782_400, 0);
        assert_eq!(v, b"\"2000-02-29T00:00:00.000Z\"");
    }
}
