//! API keys (`type = "api_key"`): a key from a header or a query parameter,
//! looked up by its SHA-256 digest and compared in constant time.
//!
//! Only digests are kept in memory, so a heap dump does not leak keys. The
//! table lookup is by digest (its timing says nothing useful about the
//! key: finding a key from a digest prefix is a preimage search); the final
//! equality is `subtle`'s constant-time compare.

use std::collections::HashMap;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Identity;

/// Shortest key accepted: anything shorter can be guessed online.
pub const MIN_API_KEY_BYTES: usize = 16;

/// Keys of one `[auth.NAME]` section (immutable, shared by every shard).
#[derive(Debug)]
pub struct ApiKeys {
    pub name: String,
    /// Lower-case header name the key comes in, if any.
    pub header: Option<String>,
    /// Query parameter the key comes in, if any.
    pub query: Option<String>,
    by_digest: HashMap<[u8; 32], Box<Identity>>,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

fn hex_digest(s: &str) -> Option<[u8; 32]> {
    let hex = s.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    pub fn new(name: String, header: Option<String>, query: Option<String>) -> Self {
        ApiKeys {
            name,
            header,
            query,
            by_digest: HashMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }

    /// Adds a key (`sha256:<64 hex>` gives the digest instead of the key).
    pub fn add(&mut self, key: &str, consumer: &str, scopes: &[String]) -> Result<(), String> {
        let d = match hex_digest(key) {
            Some(d) => d,
            None if key.starts_with("sha256:") => {
                return Err("a sha256: key needs 64 hex digits".into())
            }
            None if key.len() < MIN_API_KEY_BYTES => {
                return Err(format!(
                    "keys must be at least {MIN_API_KEY_BYTES} bytes (too easy to guess)"
                ))
            }
            None if key.bytes().any(|b| !b.is_ascii_graphic()) => {
                return Err("keys are printable ASCII without spaces".into())
            }
            None => digest(key.as_bytes()),
        };
        if consumer.is_empty() || consumer.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!("{consumer:?} is not a consumer id"));
        }
        if self.by_digest.contains_key(&d) {
            return Err("the same key is listed twice".into());
        }
        self.by_digest.insert(
            d,
            Box::new(Identity {
                consumer: consumer.into(),
                scopes: scopes.iter().map(|s| s.as_str().into()).collect(),
            }),
        );
        Ok(())
    }

    /// `KEY CONSUMER scope1,scope2` per line; `#` starts a comment line.
    pub fn add_file(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(key), Some(consumer)) = (parts.next(), parts.next()) else {
                return Err(format!("line {}: expected `KEY CONSUMER [scopes]`", n + 1));
            };
            let scopes: Vec<String> = parts
                .next()
                .map(|s| {
                    s.split(',')
                        .filter(|x| !x.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            if parts.next().is_some() {
                return Err(format!(
                    "line {}: too many fields (scopes are comma-separated)",
                    n + 1
                ));
            }
            self.add(key, consumer, &scopes)
                .map_err(|e| format!("line {}: {e}", n + 1))?;
        }
        Ok(())
    }

    /// The identity a presented key belongs to. Borrowed, not cloned: the
    /// table is shared by every shard, and bumping a shared reference count
    /// per request would bounce its cache line between cores.
    pub fn lookup(&self, presented: &[u8]) -> Option<&Identity> {
        let d = digest(presented);
        let (stored, id) = self.by_digest.get_key_value(&d)?;
        bool::from(stored.ct_eq(&d)).then_some(&**id)
    }
}

/// The value of query parameter `name` (percent-decoded), if present.
pub fn query_param(query: &str, name: &str) -> Option<Vec<u8>> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == name {
            return Some(percent_decode(v.as_bytes()));
        }
    }
    None
}

fn percent_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' && i + 2 < s.len() {
            let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_by_digest_only() {
        let mut k = ApiKeys::new("p".into(), Some("x-api-key".into()), None);
        k.add("0123456789abcdef-key", "acme", &["read".into()])
            .unwrap();
        let d: String = digest(b"another-key-0123456789")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        k.add(&format!("sha256:{d}"), "beta", &[]).unwrap();
        assert_eq!(
            &*k.lookup(b"0123456789abcdef-key").unwrap().consumer,
            "acme"
        );
        assert_eq!(
            &*k.lookup(b"another-key-0123456789").unwrap().consumer,
            "beta"
        );
        assert!(k.lookup(b"0123456789abcdef-kez").is_none());
        assert!(k.add("short", "x", &[]).is_err());
        assert!(k.add("0123456789abcdef-key", "dup", &[]).is_err());
    }

    #[test]
    fn keys_file_lines() {
        let mut k = ApiKeys::new("p".into(), None, Some("api_key".into()));
        k.add_file(
            "# comment\n\naaaaaaaaaaaaaaaaaaaa acme read,write\nbbbbbbbbbbbbbbbbbbbb solo\n",
        )
        .unwrap();
        let id = k.lookup(b"aaaaaaaaaaaaaaaaaaaa").unwrap();
        assert_eq!(id.scopes.len(), 2);
        assert!(k.lookup(b"bbbbbbbbbbbbbbbbbbbb").unwrap().scopes.is_empty());
        assert!(k.add_file("onlykey\n").is_err());
    }

    #[test]
    fn query_params_decode() {
        assert_eq!(query_param("a=1&api_key=x%2By", "api_key").unwrap(), b"x+y");
        assert_eq!(query_param("api_key=", "api_key").unwrap(), b"");
        assert!(query_param("a=1", "api_key").is_none());
        assert_eq!(query_param("k=%zz%4", "k").unwrap(), b"%zz%4");
    }
}
