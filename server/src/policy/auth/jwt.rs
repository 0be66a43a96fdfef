//! JWT bearer tokens (`type = "jwt"`), verified with `jsonwebtoken` (ring).
//!
//! Keys come from a JWKS file (chosen by `kid`), a PEM public key or an
//! HMAC secret. Each key allows only the algorithms of its own family (and
//! of its JWK `alg`, when given): `alg: none` is not an algorithm the
//! library parses, and a token whose `alg` names another family than the
//! key's (HS256 signed with an RSA public key as the secret: "algorithm
//! confusion") is refused before any signature check.
//!
//! Verified tokens are cached per shard (bounded, until `exp` + leeway), so
//! a client repeating its token costs a hash lookup, not a signature check.
//! A JWKS file is re-read when it changes (checked at most once a second,
//! and at once for an unknown `kid`), which drops the cache: key rotation
//! by replacing the file.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::config::ConfigError;
use shardline_shard::hash::BuildBytesHasher;

use super::Identity;

/// How often a shard looks at the JWKS file's modification time. A stat a
/// second per shard is free; a rotated key is picked up within a second.
pub const KEY_FILE_CHECK_SECS: u64 = 1;

/// Tokens longer than this are refused unread: real JWTs are well under
/// 8 KiB, and the head limit bounds them anyway.
pub const MAX_TOKEN_BYTES: usize = 8192;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

fn family_of(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fn parse_alg(s: &str) -> Option<Algorithm> {
    ALL_ALGS.iter().copied().find(|a| format!("{a:?}") == s)
}

fn key_alg(k: &KeyAlgorithm) -> Option<Algorithm> {
    parse_alg(&format!("{k:?}"))
}

/// One verification key and how tokens signed with it are checked.
struct KeyEntry {
    kid: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The keys loaded from the configured source.
struct KeySet {
    keys: Vec<KeyEntry>,
}

/// Settings of one `[auth.NAME]` jwt section (immutable, shared).
pub struct JwtConfig {
    pub name: String,
    jwks_file: Option<PathBuf>,
    pem_file: Option<PathBuf>,
    secret: Option<String>,
    /// Algorithms allowed by config (`None` = each key's whole family).
    algorithms: Option<Vec<Algorithm>>,
    issuer: Option<String>,
    audience: Vec<String>,
    pub leeway: Duration,
    consumer_claim: String,
    scopes_claim: String,
    pub cache_size: usize,
    /// Keys as loaded at start-up (the file was valid then).
    initial: Arc<KeySetShared>,
}

impl std::fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtConfig")
            .field("name", &self.name)
            .finish()
    }
}

/// A key set with the file stamp it was read at.
struct KeySetShared {
    set: KeySet,
    stamp: Option<(SystemTime, u64)>,
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

impl JwtConfig {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        key: &str,
        name: String,
        jwks_file: Option<PathBuf>,
        pem_file: Option<PathBuf>,
        secret: Option<String>,
        algorithms: Option<Vec<String>>,
        issuer: Option<String>,
        audience: Vec<String>,
        leeway: Duration,
        consumer_claim: String,
        scopes_claim: String,
        cache_size: usize,
    ) -> Result<Self, ConfigError> {
        let algorithms = match algorithms {
            None => None,
            Some(list) => {
                let mut v = Vec::new();
                for a in list {
                    match parse_alg(&a) {
                        Some(x) => v.push(x),
                        None => {
                            return Err(ConfigError(format!(
                                "{key}.algorithms: {a:?} is not one of HS256, HS384, HS512, \
                                 RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
                            )))
                        }
                    }
                }
                if v.is_empty() {
                    return Err(ConfigError(format!("{key}.algorithms: must not be empty")));
                }
                Some(v)
            }
        };
        if let Some(s) = &secret {
            // RFC 7518 §3.2: an HMAC key at least as long as the hash.
            if s.len() < 32 {
                return Err(ConfigError(format!(
                    "{key}.secret: must be at least 32 bytes (RFC 7518 §3.2)"
                )));
            }
        }
        let mut cfg = JwtConfig {
            name,
            jwks_file,
            pem_file,
            secret,
            algorithms,
            issuer,
            audience,
            leeway,
            consumer_claim,
            scopes_claim,
            cache_size,
            initial: Arc::new(KeySetShared {
                set: KeySet { keys: Vec::new() },
                stamp: None,
            }),
        };
        let (set, stamp) = cfg.load().map_err(|e| ConfigError(format!("{key}: {e}")))?;
        if set.keys.is_empty() {
            return Err(ConfigError(format!(
                "{key}: no usable verification key (check algorithms and the key's type)"
            )));
        }
        cfg.initial = Arc::new(KeySetShared { set, stamp });
        Ok(cfg)
    }

    fn validation_for(&self, algs: Vec<Algorithm>) -> Validation {
        let mut v = Validation::new(algs[0]);
        v.algorithms = algs;
        v.leeway = self.leeway.as_secs();
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = std::collections::HashSet::new();
        required.insert("exp".to_string());
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.insert("iss".to_string());
        }
        if self.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&self.audience);
            required.insert("aud".to_string());
        }
        v.required_spec_claims = required;
        v
    }

    /// Algorithms a key of `family` may verify (config ∩ family ∩ `alg`).
    fn algs_for(&self, family: Family, jwk_alg: Option<Algorithm>) -> Vec<Algorithm> {
        ALL_ALGS
            .iter()
            .copied()
            .filter(|a| family_of(*a) == family)
            .filter(|a| jwk_alg.map_or(true, |j| j == *a))
            .filter(|a| self.algorithms.as_ref().map_or(true, |l| l.contains(a)))
            .collect()
    }

    fn entry(
        &self,
        kid: Option<String>,
        key: DecodingKey,
        family: Family,
        jwk_alg: Option<Algorithm>,
    ) -> Option<KeyEntry> {
        let algs = self.algs_for(family, jwk_alg);
        if algs.is_empty() {
            return None;
        }
        Some(KeyEntry {
            kid,
            key,
            validation: self.validation_for(algs),
        })
    }

    fn load(&self) -> Result<(KeySet, Option<(SystemTime, u64)>), String> {
        let mut keys = Vec::new();
        let mut stamp = None;
        if let Some(secret) = &self.secret {
            keys.extend(self.entry(
                None,
                DecodingKey::from_secret(secret.as_bytes()),
                Family::Hmac,
                None,
            ));
        }
        if let Some(path) = &self.pem_file {
            let pem = std::fs::read(path)
                .map_err(|e| format!("public_key_pem: cannot read {path:?}: {e}"))?;
            let (key, family) = if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                (k, Family::Rsa)
            } else if let Ok(k) = DecodingKey::from_ec_pem(&pem) {
                (k, Family::Ec)
            } else if let Ok(k) = DecodingKey::from_ed_pem(&pem) {
                (k, Family::Ed)
            } else {
                return Err(format!(
                    "public_key_pem: {path:?} is not an RSA, EC or Ed25519 public key in PEM"
                ));
            };
            keys.extend(self.entry(None, key, family, None));
        }
        if let Some(path) = &self.jwks_file {
            stamp = file_stamp(path);
            let text =
                std::fs::read(path).map_err(|e| format!("jwks_file: cannot read {path:?}: {e}"))?;
            let doc: serde_json::Value = serde_json::from_slice(&text)
                .map_err(|e| format!("jwks_file: {path:?} is not JSON: {e}"))?;
            let Some(list) = doc.get("keys").and_then(|k| k.as_array()) else {
                return Err(format!("jwks_file: {path:?} has no \"keys\" array"));
            };
            for k in list {
                // One key of an unknown type must not hide the others.
                let Ok(jwk) = serde_json::from_value::<Jwk>(k.clone()) else {
                    continue;
                };
                if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                    continue;
                }
                let jwk_alg = match &jwk.common.key_algorithm {
                    Some(a) => match key_alg(a) {
                        Some(x) => Some(x),
                        None => continue, // an encryption algorithm
                    },
                    None => None,
                };
                let family = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Family::Rsa,
                    AlgorithmParameters::EllipticCurve(_) => Family::Ec,
                    AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
                    AlgorithmParameters::OctetKey(_) => Family::Hmac,
                };
                let Ok(key) = DecodingKey::from_jwk(&jwk) else {
                    continue;
                };
                keys.extend(self.entry(jwk.common.key_id.clone(), key, family, jwk_alg));
            }
        }
        Ok((KeySet { keys }, stamp))
    }
}

/// Why a token was refused (the `error_description` of RFC 6750 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    Malformed,
    Expired,
    NotYetValid,
    WrongIssuer,
    WrongAudience,
    BadSignature,
    AlgorithmNotAllowed,
    UnknownKey,
    MissingClaim,
    /// The header's `crit` names extensions (RFC 7515 §4.1.11: a recipient
    /// that does not understand them must refuse the token; this one
    /// understands none).
    UnknownCritical,
    /// `exp`, `nbf` or `iat` is not a NumericDate (RFC 7519 §2).
    BadDate,
}

impl TokenError {
    pub fn describe(self) -> &'static str {
        match self {
            TokenError::Malformed => "the token is malformed",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet (nbf)",
            TokenError::WrongIssuer => "the token's issuer is not accepted",
            TokenError::WrongAudience => "the token's audience is not accepted",
            TokenError::BadSignature => "the token's signature does not verify",
            TokenError::AlgorithmNotAllowed => "the token's algorithm is not allowed for this key",
            TokenError::UnknownKey => "no key matches the token's kid",
            TokenError::MissingClaim => "the token lacks a required claim",
            TokenError::UnknownCritical => {
                "the token requires header extensions (crit) this server does not support"
            }
            TokenError::BadDate => "the token's exp, nbf or iat is not a number of seconds",
        }
    }
}

struct Cached {
    identity: Rc<Identity>,
    /// Unix seconds after which the token is no longer accepted.
    until: u64,
}

/// One shard's verifier: its copy of the keys and its token cache.
pub struct JwtVerifier {
    cfg: Arc<JwtConfig>,
    keys: RefCell<Arc<KeySetShared>>,
    next_check: Cell<u64>,
    last_forced: Cell<u64>,
    cache: RefCell<HashMap<Box<[u8]>, Cached, BuildBytesHasher>>,
}

/// Whether a compact JWT's header has a `crit` member. The header has
/// already been decoded once by jsonwebtoken, so it is valid base64url
/// JSON; anything odd here counts as malformed.
fn names_critical_extensions(token: &str) -> Result<bool, TokenError> {
    use base64::Engine;
    let part = token.split('.').next().unwrap_or("");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    Ok(header.contains_key("crit"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl JwtVerifier {
    pub fn new(cfg: Arc<JwtConfig>) -> Self {
        JwtVerifier {
            keys: RefCell::new(Arc::clone(&cfg.initial)),
            next_check: Cell::new(0),
            last_forced: Cell::new(0),
            cache: RefCell::new(HashMap::default()),
            cfg,
        }
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Re-reads the JWKS file if it changed; `force` skips the once-a-second
    /// rate limit (an unknown `kid`), but never more than once a second.
    fn maybe_reload(&self, now: u64, force: bool) -> bool {
        let Some(path) = &self.cfg.jwks_file else {
            return false;
        };
        if !force && now < self.next_check.get() {
            return false;
        }
        if force {
            // Unknown kids may come at request rate: look at most once a second.
            if self.last_forced.get() == now {
                return false;
            }
            self.last_forced.set(now);
        }
        self.next_check.set(now + KEY_FILE_CHECK_SECS);
        let stamp = file_stamp(path);
        if stamp.is_some() && stamp == self.keys.borrow().stamp {
            return false;
        }
        match self.cfg.load() {
            Ok((set, stamp)) if !set.keys.is_empty() => {
                *self.keys.borrow_mut() = Arc::new(KeySetShared { set, stamp });
                self.cache.borrow_mut().clear();
                true
            }
            Ok(_) | Err(_) => {
                // Keep verifying with the keys we have: a half-written file
                // must not lock every client out.
                false
            }
        }
    }

    /// Verifies `token` and hands its identity to `f`.
    pub fn verify<R>(&self, token: &[u8], f: impl FnOnce(&Identity) -> R) -> Result<R, TokenError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed);
        }
        let now = unix_now();
        if self.cfg.jwks_file.is_some() && now >= self.next_check.get() {
            self.maybe_reload(now, false);
        }
        {
            let cache = self.cache.borrow();
            if let Some(c) = cache.get(token) {
                // The map compared the whole token: a hit is this token.
                if now <= c.until {
                    return Ok(f(&c.identity));
                }
            }
        }
        let Ok(text) = std::str::from_utf8(token) else {
            return Err(TokenError::Malformed);
        };
        let (identity, until) = match self.verify_uncached(text, now) {
            Err(TokenError::UnknownKey) if self.maybe_reload(now, true) => {
                self.verify_uncached(text, now)?
            }
            other => other?,
        };
        let r = f(&identity);
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= self.cfg.cache_size {
            cache.retain(|_, c| c.until >= now);
            if cache.len() >= self.cfg.cache_size {
                // Still full of live tokens: drop an arbitrary eighth.
                let drop: Vec<Box<[u8]>> = cache
                    .keys()
                    .take(self.cfg.cache_size / 8 + 1)
                    .cloned()
                    .collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        if self.cfg.cache_size > 0 {
            cache.insert(token.into(), Cached { identity, until });
        }
        Ok(r)
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<(Rc<Identity>, u64), TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        // jsonwebtoken's header type drops `crit`: look at the raw header.
        if names_critical_extensions(token)? {
            return Err(TokenError::UnknownCritical);
        }
        let keys = Arc::clone(&self.keys.borrow());
        let mut candidates = keys
            .set
            .keys
            .iter()
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(want), Some(have)) => want == have,
                (Some(_), None) => keys.set.keys.len() == 1,
                (None, _) => true,
            });
        let mut last = TokenError::UnknownKey;
        let mut any = false;
        for k in &mut candidates {
            any = true;
            if !k.validation.algorithms.contains(&header.alg) {
                last = TokenError::AlgorithmNotAllowed;
                continue;
            }
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &k.key,
                &k.validation,
            ) {
                Ok(data) => return self.identity(&data.claims, now),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    last = match e.kind() {
                        K::ExpiredSignature => TokenError::Expired,
                        K::ImmatureSignature => TokenError::NotYetValid,
                        K::InvalidIssuer => TokenError::WrongIssuer,
                        K::InvalidAudience => TokenError::WrongAudience,
                        K::InvalidSignature => TokenError::BadSignature,
                        K::InvalidAlgorithm => TokenError::AlgorithmNotAllowed,
                        K::MissingRequiredClaim(_) => TokenError::MissingClaim,
                        _ => TokenError::Malformed,
                    };
                    // A claim failure after a good signature is final.
                    if !matches!(
                        last,
                        TokenError::BadSignature | TokenError::AlgorithmNotAllowed
                    ) {
                        return Err(last);
                    }
                }
            }
        }
        if !any {
            return Err(TokenError::UnknownKey);
        }
        Err(last)
    }

    fn identity(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
        now: u64,
    ) -> Result<(Rc<Identity>, u64), TokenError> {
        let consumer = match claims.get(&self.cfg.consumer_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.as_str(),
            _ => return Err(TokenError::MissingClaim),
        };
        let mut scopes: Vec<Box<str>> = Vec::new();
        let mut add = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => scopes.extend(s.split_whitespace().map(Box::from)),
            serde_json::Value::Array(a) => {
                scopes.extend(a.iter().filter_map(|x| x.as_str()).map(Box::from))
            }
            _ => {}
        };
        match claims.get(&self.cfg.scopes_claim) {
            Some(v) => add(v),
            None if self.cfg.scopes_claim == "scope" => {
                if let Some(v) = claims.get("scp") {
                    add(v)
                }
            }
            None => {}
        }
        // RFC 7519 §2: a NumericDate is a JSON number of seconds, possibly
        // with a fraction; anything else in these claims is refused rather
        // than skipped (a string `nbf` was ignored before).
        let date = |name: &str| -> Result<Option<u64>, TokenError> {
            match claims.get(name) {
                None => Ok(None),
                Some(v) => v
                    .as_u64()
                    .or_else(|| {
                        v.as_f64()
                            .filter(|f| f.is_finite() && *f >= 0.0)
                            .map(|f| f as u64)
                    })
                    .map(Some)
                    .ok_or(TokenError::BadDate),
            }
        };
        date("nbf")?;
        date("iat")?;
        let exp = date("exp")?.ok_or(TokenError::MissingClaim)?;
        let until = exp.saturating_add(self.cfg.leeway.as_secs());
        if until < now {
            return Err(TokenError::Expired);
        }
        Ok((
            Rc::new(Identity {
                consumer: consumer.into(),
                scopes: scopes.into(),
            }),
            until,
        ))
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn cfg(secret: &str) -> Arc<JwtConfig> {
        Arc::new(
            JwtConfig::new(
                "auth.t",
                "t".into(),
                None,
                None,
                Some(secret.into()),
                None,
                Some("https://id".into()),
                vec!["api".into()],
                Duration::from_secs(5),
                "sub".into(),
                "scope".into(),
                4,
            )
            .unwrap(),
        )
    }

    fn token(alg: Algorithm, claims: serde_json::Value, secret: &str) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn good_claims() -> serde_json::Value {
        json!({"sub": "alice", "iss": "https://id", "aud": "api", "exp": unix_now() + 600, "scope": "a b"})
    }

    #[test]
    fn verifies_and_caches() {
        let v = JwtVerifier::new(cfg(SECRET));
        let t = token(Algorithm::HS256, good_claims(), SECRET);
        let (who, n) = v
            .verify(t.as_bytes(), |i| (i.consumer.to_string(), i.scopes.len()))
            .unwrap();
        assert_eq!((who.as_str(), n), ("alice", 2));
        assert_eq!(v.cached(), 1);
        assert!(v.verify(t.as_bytes(), |_| ()).is_ok());
    }

    #[test]
    fn refuses_bad_tokens() {
        let v = JwtVerifier::new(cfg(SECRET));
        let mut c = good_claims();
        c["exp"] = json!(unix_now() - 60);
        assert_eq!(
            v.verify(token(Algorithm::HS256, c, SECRET).as_bytes(), |_| ()),
            Err(TokenError::Expired)
        );
        let mut c = good_claims();
        c["nbf"] = json!(unix_now() + 60);
        assert_eq!(
            v.verify(token(Algorithm::HS256, c, SECRET).as_bytes(), |_| ()),
            Err(TokenError::NotYetValid)
        );
        let mut c = good_claims();
        c["aud"] = json!("other");
        assert_eq!(
            v.verify(token(Algorithm::HS256, c, SECRET).as_bytes(), |_| ()),
            Err(TokenError::WrongAudience)
        );
        let mut c = good_claims();
        c["iss"] = json!("https://evil");
        assert_eq!(
            v.verify(token(Algorithm::HS256, c, SECRET).as_bytes(), |_| ()),
            Err(TokenError::WrongIssuer)
        );
        let other = "ffffffffffffffffffffffffffffffff";
        assert_eq!(
            v.verify(
                token(Algorithm::HS256, good_claims(), other).as_bytes(),
                |_| ()
            ),
            Err(TokenError::BadSignature)
        );
        // alg: none, unsigned.
        use base64_like::b64;
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(good_claims().to_string().as_bytes())
        );
        assert!(v.verify(none.as_bytes(), |_| ()).is_err());
        assert_eq!(v.cached(), 0);
    }

    /// Base64url without padding, for hand-made tokens.
    pub(crate) mod base64_like {
        pub fn b64(data: &[u8]) -> String {
            const A: &[u8; 64] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
            let mut out = String::new();
            for chunk in data.chunks(3) {
                let b = [
                    chunk[0],
                    *chunk.get(1).unwrap_or(&0),
                    *chunk.get(2).unwrap_or(&0),
                ];
                let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
                for i in 0..=chunk.len() {
                    out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
                }
            }
            out
        }
    }
}
