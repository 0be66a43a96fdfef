//! Request ids (`X-Request-Id`) and W3C trace context (`traceparent`).
//!
//! A well-formed incoming `X-Request-Id` is kept; otherwise one is made (a
//! random UUID v4 from a per-shard generator: no lock, no syscall). It is
//! echoed on the response and sent upstream. `traceparent` (W3C Trace
//! Context §3.2) keeps the caller's trace id and flags and gets a new
//! parent id (this hop's span); without a valid one a new trace starts with
//! flags `00` (this gateway does not record spans itself).

use std::cell::Cell;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest incoming request id kept: enough for any UUID, ULID or
/// prefixed id; longer ones are replaced (log and header bloat).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// A UUID's text length.
pub const GENERATED_ID_LEN: usize = 36;
/// `00-<32 hex>-<16 hex>-<2 hex>`.
pub const TRACEPARENT_LEN: usize = 55;

/// Whether an incoming id is safe to keep: printable, no separators that
/// could split a log line or a header.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_REQUEST_ID_BYTES
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@".contains(b))
}

/// Per-shard random numbers (wyrand): fast, never shared, seeded from the
/// clock and the shard id so shards and restarts do not repeat each other.
pub struct IdGen {
    state: Cell<u64>,
}

impl IdGen {
    pub fn new(shard: usize) -> IdGen {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let local = &t as *const u64 as u64;
        IdGen {
            state: Cell::new(t ^ (shard as u64).rotate_left(48) ^ local.rotate_left(17)),
        }
    }

    pub fn next_u64(&self) -> u64 {
        let s = self.state.get().wrapping_add(0xa076_1d64_78bd_642f);
        self.state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    }

    /// A random UUID v4 (RFC 9562 §5.4), lower-case.
    pub fn uuid(&self, out: &mut [u8; GENERATED_ID_LEN]) {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_le_bytes());
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let mut o = 0;
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                out[o] = b'-';
                o += 1;
            }
            out[o] = HEX[usize::from(byte >> 4)];
            out[o + 1] = HEX[usize::from(byte & 15)];
            o += 2;
        }
    }

    fn hex(&self, out: &mut [u8]) {
        let mut word = 0u64;
        for (i, o) in out.iter_mut().enumerate() {
            if i % 16 == 0 {
                word = self.next_u64();
            }
            *o = HEX[(word & 15) as usize];
            word >>= 4;
        }
    }

    /// This hop's `traceparent` given the incoming one.
    pub fn traceparent(&self, incoming: Option<&[u8]>) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        match incoming.and_then(parse_traceparent) {
            Some((trace, flags)) => {
                out[3..35].copy_from_slice(trace);
                out[53..55].copy_from_slice(flags);
            }
            None => loop {
                self.hex(&mut out[3..35]);
                if out[3..35].iter().any(|b| *b != b'0') {
                    break;
                }
            },
        }
        loop {
            self.hex(&mut out[36..52]);
            if out[36..52].iter().any(|b| *b != b'0') {
                break;
            }
        }
        out
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn is_lower_hex(s: &[u8]) -> bool {
    s.iter()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// The trace id and flags of a valid `traceparent` (W3C Trace Context
/// §3.2.2: version `ff` and all-zero ids are invalid; a later version may
/// append fields after the flags).
pub fn parse_traceparent(v: &[u8]) -> Option<(&[u8], &[u8])> {
    if v.len() < TRACEPARENT_LEN {
        return None;
    }
    let (version, trace, parent, flags) = (&v[0..2], &v[3..35], &v[36..52], &v[53..55]);
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    if !is_lower_hex(version) || version == b"ff" {
        return None;
    }
    if version == b"00" && v.len() != TRACEPARENT_LEN {
        return None;
    }
    if v.len() > TRACEPARENT_LEN && v[55] != b'-' {
        return None;
    }
    if !is_lower_hex(trace) || !is_lower_hex(parent) || !is_lower_hex(flags) {
        return None;
    }
    if trace.iter().all(|b| *b == b'0') || parent.iter().all(|b| *b == b'0') {
        return None;
    }
    Some((trace, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_request_id(b"abc-123_x.y:z"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id(b"a\"b"));
        assert!(!valid_request_id(&[b'a'; 129]));
        let g = IdGen::new(0);
        let mut a = [0u8; 36];
        let mut b = [0u8; 36];
        g.uuid(&mut a);
        g.uuid(&mut b);
        assert_ne!(a, b);
        assert_eq!(a[14], b'4');
        assert!(valid_request_id(&a));
    }

    #[test]
    fn traceparents() {
        let g = IdGen::new(1);
        let inc = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let out = g.traceparent(Some(inc));
        assert_eq!(&out[..36], &inc[..36]);
        assert_ne!(&out[36..52], &inc[36..52]);
        assert_eq!(&out[52..], b"-01");
        assert!(parse_traceparent(&out).is_some());
        let fresh = g.traceparent(None);
        assert!(parse_traceparent(&fresh).is_some());
        assert_ne!(&fresh[3..35], &inc[3..35]);
        for bad in [
            &b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"[..],
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            b"junk",
        ] {
            assert!(
                parse_traceparent(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(parse_traceparent(
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future"
        )
        .is_some());
    }
}
