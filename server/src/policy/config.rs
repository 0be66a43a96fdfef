//! Policy configuration: `[auth.NAME]` sections and the route keys `auth`,
//! `scopes`, `rate_limit`, `quota`, `validate`, `idempotency`, `cors` and
//! `request_id`, validated into the types the policies run on. Key files
//! (API keys, JWKS, PEM, JSON Schemas) are read and checked here, so a bad
//! file stops start-up with a line naming its key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::config::ConfigError;
use crate::units::parse_duration;

use super::auth::api_key::ApiKeys;
use super::auth::jwt::JwtConfig;
use super::auth::mtls::MtlsConfig;
use super::validate::{ParamType, Schema};

fn err<T>(key: &str, msg: impl std::fmt::Display) -> Result<T, ConfigError> {
    Err(ConfigError(format!("{key}: {msg}")))
}

/// One `[auth.NAME]` section.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub name: String,
    pub kind: AuthKind,
}

#[derive(Debug, Clone)]
pub enum AuthKind {
    ApiKey(Arc<ApiKeys>),
    Jwt(Arc<JwtConfig>),
    Mtls(Arc<MtlsConfig>),
}

/// A route's policies (all off by default).
#[derive(Debug, Clone, Default)]
pub struct RoutePolicyConfig {
    /// Index into `Config::auth`.
    pub auth: Option<usize>,
    pub scopes: Vec<String>,
    pub rate_limit: Option<RateLimitConfig>,
    pub quota: Option<QuotaConfig>,
    pub validate: Option<ValidateConfig>,
    pub idempotency: Option<IdempotencyConfig>,
    pub cors: Option<CorsConfig>,
    /// `None` = the default: on for upstream and aggregate routes and for
    /// routes with any other policy.
    pub request_id: Option<bool>,
}

impl RoutePolicyConfig {
    /// Whether any policy other than request ids is configured.
    pub fn any(&self) -> bool {
        self.auth.is_some()
            || self.rate_limit.is_some()
            || self.quota.is_some()
            || self.validate.is_some()
            || self.idempotency.is_some()
            || self.cors.is_some()
    }
}

/// What a rate limit or quota counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    Consumer,
    Ip,
    Route,
    /// Lower-case header name.
    Header(String),
}

#[derive(Debug, Clone)]
pub struct RateLimitConfig {
    /// Requests per `window` for the whole server.
    pub limit: u64,
    pub window: Duration,
    pub burst: u64,
    pub key: LimitKey,
}

impl RateLimitConfig {
    pub fn per_second(&self) -> f64 {
        self.limit as f64 / self.window.as_secs_f64()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaPeriod {
    Day,
    Month,
}

#[derive(Debug, Clone)]
pub struct QuotaConfig {
    pub limit: u64,
    pub period: QuotaPeriod,
    pub key: LimitKey,
}

#[derive(Debug, Clone)]
pub struct ValidateConfig {
    pub schema: Option<Arc<Schema>>,
    /// `{name}` parameters of the route's path and their types.
    pub params: Vec<(String, ParamType)>,
}

#[derive(Debug, Clone)]
pub struct IdempotencyConfig {
    /// How long a completed request's response is replayed.
    pub ttl: Duration,
    /// Keys kept per owner shard (expired ones dropped first, then the
    /// oldest).
    pub max_keys: usize,
    /// Responses larger than this are not stored (the key is released, so
    /// a retry runs again).
    pub max_response_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct CorsConfig {
    /// Exact origins (`scheme://host[:port]`), or `["*"]`.
    pub origins: Vec<String>,
    pub any_origin: bool,
    /// Upper-case methods allowed cross-origin; empty = the route's own.
    pub methods: Vec<String>,
    /// Lower-case request header names allowed; `["*"]` echoes the request.
    pub headers: Vec<String>,
    pub any_header: bool,
    pub expose_headers: Vec<String>,
    pub credentials: bool,
    pub max_age: Option<Duration>,
}

// ---- the file layer ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    #[serde(rename = "type")]
    kind: Option<String>,
    // api_key
    header: Option<String>,
    query: Option<String>,
    keys_file: Option<String>,
    keys: Option<Vec<FileApiKey>>,
    // jwt
    jwks_file: Option<String>,
    public_key_pem: Option<String>,
    secret: Option<String>,
    algorithms: Option<Vec<String>>,
    issuer: Option<String>,
    audience: Option<toml::Value>,
    leeway: Option<String>,
    consumer_claim: Option<String>,
    scopes_claim: Option<String>,
    cache_size: Option<usize>,
    // mtls
    allowed: Option<Vec<String>>,
    scopes: Option<BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApiKey {
    key: String,
    consumer: String,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimit {
    per_second: Option<u64>,
    per_minute: Option<u64>,
    burst: Option<u64>,
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQuota {
    per_day: Option<u64>,
    per_month: Option<u64>,
    key: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileValidate {
    schema: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIdempotency {
    ttl: Option<String>,
    max_keys: Option<usize>,
    max_response_bytes: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCors {
    origins: Option<Vec<String>>,
    methods: Option<Vec<String>>,
    headers: Option<Vec<String>>,
    expose_headers: Option<Vec<String>>,
    credentials: Option<bool>,
    max_age: Option<String>,
}

/// A verified-token cache bigger than this per shard only costs memory:
/// 10 000 distinct live tokens per core covers a busy API.
pub const DEFAULT_JWT_CACHE_SIZE: usize = 10_000;
const MAX_JWT_CACHE_SIZE: usize = 1_000_000;
/// Clock skew tolerated on exp/nbf unless `leeway` says otherwise.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);
/// A leeway over an hour would accept long-expired tokens.
const MAX_JWT_LEEWAY: Duration = Duration::from_secs(3600);
/// Idempotency keys per owner shard: with responses bounded by
/// `max_response_bytes` (64 KiB) this bounds the store at a few GiB in the
/// worst case; typical API responses are a few hundred bytes.
pub const DEFAULT_IDEMPOTENCY_MAX_KEYS: usize = 100_000;
/// Responses bigger than this are not stored for replay.
pub const DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES: usize = 64 << 10;
/// Stored responses are held in memory: 64 MiB each at most.
const MAX_IDEMPOTENCY_RESPONSE_BYTES: u64 = 64 << 20;

fn de<T: serde::de::DeserializeOwned>(key: &str, v: toml::Value) -> Result<T, ConfigError> {
    T::deserialize(v).map_err(|e| ConfigError(format!("{key}: {}", e.message())))
}

/// Refuses a key of another auth type than the section's: `allowed` and
/// `scopes` outside `mtls` sections; for the known types, the other known
/// types' keys. An unknown type is reported by the caller.
fn refuse_other_types_keys(f: &FileAuth, k: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
    let kind = f.kind.as_deref();
    let known = matches!(kind, Some("api_key" | "jwt" | "mtls"));
    // Each type-specific key and the type it belongs to, mtls's first.
    let keys = [
        ("allowed", "mtls", f.allowed.is_some()),
        ("scopes", "mtls", f.scopes.is_some()),
        ("header", "api_key", f.header.is_some()),
        ("query", "api_key", f.query.is_some()),
        ("keys_file", "api_key", f.keys_file.is_some()),
        ("keys", "api_key", f.keys.is_some()),
        ("jwks_file", "jwt", f.jwks_file.is_some()),
        ("public_key_pem", "jwt", f.public_key_pem.is_some()),
        ("secret", "jwt", f.secret.is_some()),
        ("algorithms", "jwt", f.algorithms.is_some()),
        ("issuer", "jwt", f.issuer.is_some()),
        ("audience", "jwt", f.audience.is_some()),
        ("leeway", "jwt", f.leeway.is_some()),
        ("consumer_claim", "jwt", f.consumer_claim.is_some()),
        ("scopes_claim", "jwt", f.scopes_claim.is_some()),
        ("cache_size", "jwt", f.cache_size.is_some()),
    ];
    for (name, owner, present) in keys {
        if !present || kind == Some(owner) || (owner != "mtls" && !known) {
            continue;
        }
        return if kind == Some("mtls") {
            err(&k(name), "does not apply to type = \"mtls\"")
        } else {
            err(&k(name), format!("applies only to type = \"{owner}\""))
        };
    }
    Ok(())
}

/// Validates every `[auth.NAME]` section.
pub(crate) fn validate_auth(v: Option<toml::Value>) -> Result<Vec<AuthConfig>, ConfigError> {
    let Some(v) = v else { return Ok(Vec::new()) };
    let toml::Value::Table(t) = v else {
        return err("auth", "must be a table of [auth.NAME] sections");
    };
    let mut out = Vec::new();
    for (name, section) in t {
        let key = format!("auth.{name}");
        let f: FileAuth = de(&key, section)?;
        let k = |s: &str| format!("{key}.{s}");
        refuse_other_types_keys(&f, &k)?;
        let kind = match f.kind.as_deref() {
            Some("api_key") => {
                let header = match (&f.header, &f.query) {
                    (Some(h), _) => Some(header_name(&k("header"), h)?),
                    (None, Some(_)) => None,
                    (None, None) => Some("x-api-key".to_string()),
                };
                let query = match &f.query {
                    Some(q) if q.is_empty() || q.contains(['&', '=', '#']) => {
                        return err(&k("query"), "must be a plain parameter name");
                    }
                    q => q.clone(),
                };
                let mut keys = ApiKeys::new(name.clone(), header, query);
                if let Some(list) = f.keys {
                    for (i, e) in list.into_iter().enumerate() {
                        keys.add(&e.key, &e.consumer, &e.scopes)
                            .or_else(|m| err(&k(&format!("keys[{i}]")), m))?;
                    }
                }
                if let Some(path) = &f.keys_file {
                    let text = std::fs::read_to_string(path)
                        .or_else(|e| err(&k("keys_file"), format!("cannot read {path:?}: {e}")))?;
                    keys.add_file(&text)
                        .or_else(|m| err(&k("keys_file"), format!("{path}: {m}")))?;
                }
                if keys.is_empty() {
                    return err(&key, "an api_key section needs keys or keys_file");
                }
                AuthKind::ApiKey(Arc::new(keys))
            }
            Some("jwt") => {
                let leeway = match &f.leeway {
                    Some(l) => {
                        let d = parse_duration(l).or_else(|e| err(&k("leeway"), e))?;
                        if d > MAX_JWT_LEEWAY {
                            return err(&k("leeway"), "must be at most 1h");
                        }
                        d
                    }
                    None => DEFAULT_JWT_LEEWAY,
                };
                let audience = match f.audience {
                    None => Vec::new(),
                    Some(toml::Value::String(s)) => vec![s],
                    Some(toml::Value::Array(a)) => {
                        let mut v = Vec::new();
                        for x in a {
                            match x {
                                toml::Value::String(s) => v.push(s),
                                _ => return err(&k("audience"), "must be strings"),
                            }
                        }
                        v
                    }
                    Some(_) => return err(&k("audience"), "must be a string or a list"),
                };
                let cache_size = f.cache_size.unwrap_or(DEFAULT_JWT_CACHE_SIZE);
                if cache_size > MAX_JWT_CACHE_SIZE {
                    return err(&k("cache_size"), format!("at most {MAX_JWT_CACHE_SIZE}"));
                }
                let sources = usize::from(f.jwks_file.is_some())
                    + usize::from(f.public_key_pem.is_some())
                    + usize::from(f.secret.is_some());
                if sources != 1 {
                    return err(
                        &key,
                        "a jwt section needs exactly one of jwks_file, public_key_pem, secret",
                    );
                }
                let cfg = JwtConfig::new(
                    &key,
                    name.clone(),
                    f.jwks_file.map(PathBuf::from),
                    f.public_key_pem.map(PathBuf::from),
                    f.secret,
                    f.algorithms,
                    f.issuer,
                    audience,
                    leeway,
                    f.consumer_claim.unwrap_or_else(|| "sub".into()),
                    f.scopes_claim.unwrap_or_else(|| "scope".into()),
                    cache_size,
                )?;
                AuthKind::Jwt(Arc::new(cfg))
            }
            Some("mtls") => {
                let scopes: Vec<(String, Vec<String>)> =
                    f.scopes.unwrap_or_default().into_iter().collect();
                for (who, list) in &scopes {
                    for s in list {
                        if !scope_token(s) {
                            return err(
                                &k(&format!("scopes.{who}")),
                                format!("{s:?} is not a scope token"),
                            );
                        }
                    }
                }
                let cfg =
                    MtlsConfig::new(name.clone(), f.allowed, scopes).or_else(|m| err(&key, m))?;
                AuthKind::Mtls(Arc::new(cfg))
            }
            Some(other) => {
                return err(
                    &k("type"),
                    format!("{other:?} is not one of \"api_key\", \"jwt\", \"mtls\""),
                )
            }
            None => return err(&k("type"), "missing (\"api_key\", \"jwt\" or \"mtls\")"),
        };
        out.push(AuthConfig { name, kind });
    }
    Ok(out)
}

/// A scope as RFC 6749 §3.3 allows it, minus `"` (it is quoted in
/// `WWW-Authenticate`).
fn scope_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
}

/// Checks that `mtls` sections have client certificates to read: without
/// `[server.tls] client_auth` no connection carries a verified identity
/// and every request on such a route would be refused.
pub(crate) fn check_mtls_has_client_auth(
    auth: &[AuthConfig],
    tls: Option<&crate::config_tls::TlsConfig>,
) -> Result<(), ConfigError> {
    if tls.is_some_and(|t| t.client_auth.is_some()) {
        return Ok(());
    }
    match auth.iter().find(|a| matches!(a.kind, AuthKind::Mtls(_))) {
        Some(a) => err(
            &format!("auth.{}.type", a.name),
            "\"mtls\" needs [server.tls] with client_auth (a client CA)",
        ),
        None => Ok(()),
    }
}

fn header_name(key: &str, h: &str) -> Result<String, ConfigError> {
    if h.is_empty()
        || !h
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return err(key, format!("{h:?} is not a header name"));
    }
    Ok(h.to_ascii_lowercase())
}

fn limit_key(key: &str, v: Option<&str>) -> Result<LimitKey, ConfigError> {
    match v.unwrap_or("consumer") {
        "consumer" => Ok(LimitKey::Consumer),
        "ip" => Ok(LimitKey::Ip),
        "route" => Ok(LimitKey::Route),
        h if h.starts_with("header:") => Ok(LimitKey::Header(header_name(key, &h[7..])?)),
        other => err(
            key,
            format!("{other:?} is not one of consumer, ip, route, \"header:NAME\""),
        ),
    }
}

/// The raw route keys, as the route parser found them.
pub(crate) struct FileRoutePolicy {
    pub auth: Option<toml::Value>,
    pub scopes: Option<toml::Value>,
    pub rate_limit: Option<toml::Value>,
    pub quota: Option<toml::Value>,
    pub validate: Option<toml::Value>,
    pub idempotency: Option<toml::Value>,
    pub cors: Option<toml::Value>,
    pub request_id: Option<bool>,
}

/// The largest rate a limit may name: beyond this per-request accounting
/// is not what limits the server.
const MAX_RATE: u64 = 1_000_000_000;

pub(crate) fn validate_route_policy(
    label: &str,
    f: FileRoutePolicy,
    auth: &[AuthConfig],
    route_path: &str,
) -> Result<RoutePolicyConfig, ConfigError> {
    let key = |k: &str| format!("{label}.{k}");
    let mut p = RoutePolicyConfig {
        request_id: f.request_id,
        ..Default::default()
    };
    if let Some(v) = f.auth {
        let toml::Value::String(name) = v else {
            return err(&key("auth"), "must be the name of an [auth.NAME] section");
        };
        let Some(i) = auth.iter().position(|a| a.name == name) else {
            return err(&key("auth"), format!("no [auth.{name}] section"));
        };
        p.auth = Some(i);
    }
    if let Some(v) = f.scopes {
        let scopes: Vec<String> = de(&key("scopes"), v)?;
        if p.auth.is_none() {
            return err(&key("scopes"), "needs auth = \"NAME\" on the route");
        }
        for s in &scopes {
            if !scope_token(s) {
                return err(&key("scopes"), format!("{s:?} is not a scope token"));
            }
        }
        p.scopes = scopes;
    }
    if let Some(v) = f.rate_limit {
        let k = key("rate_limit");
        let r: FileRateLimit = de(&k, v)?;
        let (limit, window) = match (r.per_second, r.per_minute) {
            (Some(n), None) => (n, Duration::from_secs(1)),
            (None, Some(n)) => (n, Duration::from_secs(60)),
            _ => return err(&k, "needs exactly one of per_second, per_minute"),
        };
        if limit == 0 || limit > MAX_RATE {
            return err(&k, format!("the rate must be 1 to {MAX_RATE}"));
        }
        let key_kind = limit_key(&format!("{k}.key"), r.key.as_deref())?;
        if key_kind == LimitKey::Consumer && p.auth.is_none() {
            return err(
                &format!("{k}.key"),
                "\"consumer\" needs auth = \"NAME\" on the route (or use ip, route, header:NAME)",
            );
        }
        // Default burst: one window's worth, so a client may use its whole
        // budget at once but never more than that.
        let burst = r.burst.unwrap_or(limit);
        if burst == 0 || burst > MAX_RATE {
            return err(&format!("{k}.burst"), format!("must be 1 to {MAX_RATE}"));
        }
        p.rate_limit = Some(RateLimitConfig {
            limit,
            window,
            burst,
            key: key_kind,
        });
    }
    if let Some(v) = f.quota {
        let k = key("quota");
        let q: FileQuota = de(&k, v)?;
        let (limit, period) = match (q.per_day, q.per_month) {
            (Some(n), None) => (n, QuotaPeriod::Day),
            (None, Some(n)) => (n, QuotaPeriod::Month),
            _ => return err(&k, "needs exactly one of per_day, per_month"),
        };
        if limit == 0 {
            return err(&k, "the quota must be at least 1");
        }
        let key_kind = limit_key(&format!("{k}.key"), q.key.as_deref())?;
        if key_kind == LimitKey::Consumer && p.auth.is_none() {
            return err(
                &format!("{k}.key"),
                "\"consumer\" needs auth = \"NAME\" on the route",
            );
        }
        p.quota = Some(QuotaConfig {
            limit,
            period,
            key: key_kind,
        });
    }
    if let Some(v) = f.validate {
        let k = key("validate");
        let fv: FileValidate = de(&k, v)?;
        let schema = match &fv.schema {
            Some(path) => {
                let text = std::fs::read_to_string(path).or_else(|e| {
                    err(&format!("{k}.schema"), format!("cannot read {path:?}: {e}"))
                })?;
                let s = Schema::compile_text(&text)
                    .or_else(|e| err(&format!("{k}.schema"), format!("{path}: {e}")))?;
                Some(Arc::new(s))
            }
            None => None,
        };
        let mut params = Vec::new();
        for (name, ty) in fv.params {
            if !route_path.contains(&format!("{{{name}}}")) {
                return err(
                    &format!("{k}.params.{name}"),
                    format!("is not a parameter of the route's path {route_path:?}"),
                );
            }
            let t = ParamType::parse(&ty).ok_or_else(|| {
                ConfigError(format!(
                    "{k}.params.{name}: {ty:?} is not one of integer, number, boolean, uuid, string"
                ))
            })?;
            params.push((name, t));
        }
        if schema.is_none() && params.is_empty() {
            return err(
                &k,
                "needs schema = \"FILE\" or params = { NAME = \"TYPE\" }",
            );
        }
        p.validate = Some(ValidateConfig { schema, params });
    }
    if let Some(v) = f.idempotency {
        let k = key("idempotency");
        let fi: FileIdempotency = de(&k, v)?;
        let ttl = match &fi.ttl {
            Some(t) => {
                let d = parse_duration(t).or_else(|e| err(&format!("{k}.ttl"), e))?;
                if d.is_zero() {
                    return err(&format!("{k}.ttl"), "must be greater than zero");
                }
                d
            }
            None => Duration::from_secs(24 * 3600),
        };
        let max_keys = fi.max_keys.unwrap_or(DEFAULT_IDEMPOTENCY_MAX_KEYS);
        if max_keys == 0 {
            return err(&format!("{k}.max_keys"), "must be at least 1");
        }
        let max_response_bytes = match &fi.max_response_bytes {
            None => DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES,
            Some(v) => {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) if *i >= 0 => i.to_string(),
                    _ => return err(&format!("{k}.max_response_bytes"), "expected a size"),
                };
                let n = crate::units::parse_size(&text)
                    .or_else(|e| err(&format!("{k}.max_response_bytes"), e))?;
                if n == 0 || n > MAX_IDEMPOTENCY_RESPONSE_BYTES {
                    return err(
                        &format!("{k}.max_response_bytes"),
                        "must be 1 byte to 64MiB",
                    );
                }
                usize::try_from(n).unwrap_or(usize::MAX)
            }
        };
        p.idempotency = Some(IdempotencyConfig {
            ttl,
            max_keys,
            max_response_bytes,
        });
    }
    if let Some(v) = f.cors {
        let k = key("cors");
        let fc: FileCors = de(&k, v)?;
        let origins = fc.origins.unwrap_or_default();
        if origins.is_empty() {
            return err(
                &format!("{k}.origins"),
                "needs at least one origin (or \"*\")",
            );
        }
        let any_origin = origins.iter().any(|o| o == "*");
        for o in &origins {
            if o != "*" && !(o.starts_with("http://") || o.starts_with("https://"))
                || o.ends_with('/')
                || o.bytes().any(|b| !b.is_ascii_graphic())
            {
                return err(
                    &format!("{k}.origins"),
                    format!("{o:?} is not an origin like \"https://app.example.com\""),
                );
            }
        }
        let credentials = fc.credentials.unwrap_or(false);
        if credentials && any_origin {
            return err(
                &format!("{k}.credentials"),
                "cannot be true with origins = [\"*\"] (the Fetch standard forbids it)",
            );
        }
        let methods = fc.methods.unwrap_or_default();
        for m in &methods {
            if m.is_empty() || m.bytes().any(|b| !b.is_ascii_uppercase()) {
                return err(&format!("{k}.methods"), format!("{m:?} is not a method"));
            }
        }
        let mut headers = Vec::new();
        for h in fc.headers.unwrap_or_default() {
            if h == "*" {
                headers.push(h);
            } else {
                headers.push(header_name(&format!("{k}.headers"), &h)?);
            }
        }
        let any_header = headers.iter().any(|h| h == "*");
        let mut expose_headers = Vec::new();
        for h in fc.expose_headers.unwrap_or_default() {
            header_name(&format!("{k}.expose_headers"), &h)?;
            expose_headers.push(h);
        }
        let max_age = match &fc.max_age {
            Some(t) => Some(parse_duration(t).or_else(|e| err(&format!("{k}.max_age"), e))?),
            None => None,
        };
        p.cors = Some(CorsConfig {
            origins,
            any_origin,
            methods,
            headers,
            any_header,
            expose_headers,
            credentials,
            max_age,
        });
    }
    Ok(p)
}
