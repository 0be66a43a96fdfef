//! A fixed, fast, non-cryptographic hash for shard-local tables (the
//! router's literal paths, the gateway's policy tables) and for picking a
//! key's owner shard.
//!
//! Fixed (no per-process seed) because every shard must pick the same owner
//! for a key. Not DoS-hardened: the tables it indexes are bounded and are
//! filled only from the config or after a check an attacker cannot forge (a
//! verified token), or compare the full key on every hit, so no client can
//! lengthen a chain.

use std::hash::{BuildHasherDefault, Hasher};

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

/// FxHash over 8-byte words, with a final avalanche so the low bits (used
/// for `% shards`) depend on every input byte.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(SEED);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 8];
        w[..rest.len()].copy_from_slice(rest);
        h = (h.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(SEED);
    }
    // splitmix64 finaliser.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Hasher for tables keyed by byte strings: [`hash64`] of what is written.
#[derive(Default)]
pub struct BytesHasher(u64);

impl Hasher for BytesHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = hash64(bytes) ^ self.0.rotate_left(17);
    }
}

pub type BuildBytesHasher = BuildHasherDefault<BytesHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_and_is_stable() {
        assert_eq!(hash64(b"abc"), hash64(b"abc"));
        assert_ne!(hash64(b"abc"), hash64(b"abd"));
        assert_ne!(hash64(b""), hash64(b"\0"));
        let mut ones = 0;
        for i in 0..1000u32 {
            ones += hash64(&i.to_le_bytes()) & 1;
        }
        assert!((400..600).contains(&ones), "low bit is biased: {ones}");
    }
}
