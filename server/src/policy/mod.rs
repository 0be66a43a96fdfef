//! Per-route policies, run before the route's action (respond, handler,
//! upstream or aggregate): request id and trace context, CORS,
//! authentication, scopes, rate limit, quota, validation.
//!
//! # Design
//! Each shard builds its own `ShardPolicies` (per-route chains, a JWT
//! cache, limiter tables, an id generator): no locks, nothing shared but
//! immutable config. The chain is split by what it needs:
//!
//! - `ShardPolicies::check` needs only the request head and is
//!   synchronous: request id, CORS headers, API key / JWT (cached) / TLS
//!   client certificate identity, scopes,
//!   the local share of the rate limit and quota. It runs inline in
//!   `GatewayApp::handle` for respond/handler routes, and first thing in
//!   `GatewayApp::stream` for upstream/aggregate routes.
//! - `ShardPolicies::check_body` needs the whole body: validation. Inline
//!   routes have it already (the connection loop buffered it); streamed
//!   routes buffer it first (`ClientIo::buffer_body`) and hand it on to the
//!   action unchanged.
//!
//! A route without policies pays one `Option` test per request: its chain
//! is `None` and the action runs as before. Header fields a policy adds to
//! the response (X-Request-Id, CORS, RateLimit) are spliced into whatever
//! the action answered, after the status line (`Exchange::insert_headers`,
//! `ClientIo::add_response_headers`). What a policy adds to the request for
//! the upstream (X-Request-Id, traceparent) goes into a rewritten head
//! (`StreamRequest::with_fields`, built from the parse already made).
//!
//! - Idempotency keys need an answer from the key's owner shard, which
//!   may be another shard: an async wait. A `POST`/`PATCH` carrying an
//!   `Idempotency-Key` on a route with `idempotency` is therefore sent down
//!   the streaming path by `GatewayApp::dispatch` whatever its action
//!   (respond and handler actions then run through
//!   `ClientIo::serve_inline`); see `idempotency`.
//!
//! Rate limits and quotas are global: see `limiter` for the owner-shard
//! design and its error bound. CORS preflights are answered by
//! `ShardPolicies::preflight` before any other policy or action.
//!
//! # Layout
//! - `config`: `[auth.NAME]` and route policy keys → validated config.
//! - `request_id`: X-Request-Id and W3C traceparent.
//! - `cors`: preflights and response headers.
//! - `auth`: API keys (`auth/api_key`), JWTs (`auth/jwt`) and client
//!   certificates (`auth/mtls`); each decision goes to the audit log.
//! - `limiter`: owner-shard budgets with local shares (mesh messages).
//! - `rate_limit`: rate-limit headers; `quota`: periods and persistence.
//! - `validate`: the JSON Schema subset and path parameter types.
//! - `idempotency`: Idempotency-Key at the key's owner shard.
//! - `hash`: the fixed hash for owner selection and shard-local tables.

// A refusal is built on the cold path only; a larger `Err` costs a copy of
// ~150 bytes there and nothing on the admitted path, where boxing it would
// not save anything either.
#![allow(clippy::result_large_err)]

pub mod auth;
pub mod config;
pub mod cors;
pub(crate) mod idempotency;
pub(crate) mod limiter;
pub mod quota;
pub mod rate_limit;
pub mod request_id;
pub mod validate;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;

use shardline_protocol::request::RequestHead;
use shardline_shard::{Params, ShardInfo, StreamRequest};

use crate::config::{Action, Config};

use self::auth::{AuthFailure, Authenticator};
use self::config::{AuthKind, LimitKey, RoutePolicyConfig};
use self::cors::Cors;
use self::limiter::{Budget, Decision, LimitSpec, Limiters};
use self::request_id::IdGen;
use self::validate::BodyProblem;

/// Whether the server must connect its shards with a message mesh.
pub(crate) fn needs_mesh(cfg: &Config) -> bool {
    cfg.routes.iter().any(|r| {
        r.policy.rate_limit.is_some() || r.policy.quota.is_some() || r.policy.idempotency.is_some()
    })
}

const PROBLEM_BASE: &str = "https://shardline.dev/problems/";

/// A request the chain refused, and how to answer it.
#[derive(Debug)]
pub(crate) struct Rejected {
    pub status: u16,
    /// Full problem type URI.
    pub problem_type: String,
    pub title: &'static str,
    pub detail: String,
    /// Fields of this answer (WWW-Authenticate, Retry-After, ...).
    pub headers: Vec<(&'static str, Vec<u8>)>,
    /// A whole problem+json body, when the answer lists more than a detail
    /// (validation errors).
    pub body: Option<Vec<u8>>,
    /// Not an answer yet: the quota share for this (full) key is waiting
    /// for a lease; wait for it and check again (`CheckMode::retry`).
    pub wait_lease: Option<Vec<u8>>,
}

impl Rejected {
    fn new(status: u16, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Rejected {
            status,
            problem_type: format!("{PROBLEM_BASE}{slug}"),
            title,
            detail: detail.into(),
            headers: Vec::new(),
            body: None,
            wait_lease: None,
        }
    }

    pub(crate) fn header_refs(&self) -> Vec<(&str, &[u8])> {
        self.headers
            .iter()
            .map(|(n, v)| (*n, v.as_slice()))
            .collect()
    }
}

/// The outcome of the head checks: header lines for the response, and for
/// the upstream request.
#[derive(Debug, Default)]
pub(crate) struct Passed {
    /// Raw `Name: value\r\n` lines to add to the response (also to a
    /// refusal's response).
    pub response_headers: Vec<u8>,
    /// The request id (sent upstream, and what the access log records)
    /// and this hop's traceparent (for the upstream).
    pub request_id: Option<Vec<u8>>,
    pub traceparent: Option<[u8; request_id::TRACEPARENT_LEN]>,
    /// The consumer id, when a later stage needs it (idempotency scope).
    pub consumer: Option<Vec<u8>>,
}

/// Room reserved for the response fields policies add, in bytes: an
/// `X-Request-Id` line (52) plus a `RateLimit`/`RateLimit-Policy` pair.
pub const POLICY_LINES_CAPACITY_BYTES: usize = 192;

/// How a check runs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CheckMode {
    /// The caller can wait for a quota lease (streaming path).
    pub can_wait: bool,
    /// A second check after waiting: the rate limit was already charged.
    pub retry: bool,
    /// The answer comes from this shard (a cache hit): no upstream will
    /// see a `traceparent`, so none is made.
    pub no_upstream: bool,
}

/// Longest a request waits for its shard's first quota lease.
pub const LEASE_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// One route's chain on one shard.
pub(crate) struct RoutePolicy {
    /// The route's name (audit log lines).
    name: Rc<str>,
    request_id: bool,
    /// The action sends the request on (upstream, aggregate): the request
    /// id and a traceparent are needed for the upstream head too.
    forwards: bool,
    cors: Option<Cors>,
    auth: Option<Rc<Authenticator>>,
    scopes: Vec<String>,
    rate: Option<(usize, LimitKey, rate_limit::Headers)>,
    quota: Option<(usize, LimitKey, rate_limit::Headers)>,
    validate: Option<config::ValidateConfig>,
    idempotency: Option<config::IdempotencyConfig>,
}

/// Every route's chain on one shard, and the shard-local state they use.
pub(crate) struct ShardPolicies {
    routes: Vec<Option<RoutePolicy>>,
    ids: IdGen,
    limiters: Rc<Limiters>,
    pub(crate) idem: Rc<idempotency::Idempotency>,
    has_quotas: bool,
    data_dir: PathBuf,
    shard: usize,
    /// Any route has CORS (so OPTIONS preflights are looked at).
    pub any_cors: bool,
    /// The access log is on: it names each request's consumer, so the
    /// consumer is kept for it (otherwise only when a later stage needs it).
    log_consumer: bool,
    key_buf: RefCell<Vec<u8>>,
}

fn default_request_id(action: &Action, p: &RoutePolicyConfig) -> bool {
    matches!(action, Action::Upstream(_) | Action::Aggregate(_)) || p.any()
}

impl ShardPolicies {
    /// This shard's policies for `cfg` (one config generation). The
    /// plain and HTTPS listeners share them because the shard builds one
    /// app per factory (`ShardSet`).
    pub(crate) fn for_shard(cfg: &std::sync::Arc<Config>, shard: ShardInfo) -> Rc<ShardPolicies> {
        Rc::new(ShardPolicies::new(cfg, shard))
    }

    fn new(cfg: &Config, shard: ShardInfo) -> ShardPolicies {
        let mesh = shardline_shard::mesh::current();
        let auths: Vec<Rc<Authenticator>> = cfg
            .auth
            .iter()
            .map(|a| {
                Rc::new(match &a.kind {
                    AuthKind::ApiKey(k) => Authenticator::ApiKey(std::sync::Arc::clone(k)),
                    AuthKind::Jwt(j) => {
                        Authenticator::Jwt(auth::jwt::JwtVerifier::new(std::sync::Arc::clone(j)))
                    }
                    AuthKind::Mtls(m) => Authenticator::Mtls(std::sync::Arc::clone(m)),
                })
            })
            .collect();
        let mut specs = Vec::new();
        let mut has_quotas = false;
        let mut routes = Vec::with_capacity(cfg.routes.len());
        for r in &cfg.routes {
            let p = &r.policy;
            let request_id = p
                .request_id
                .unwrap_or_else(|| default_request_id(&r.action, p));
            if !p.any() && !request_id {
                routes.push(None);
                continue;
            }
            let name: Rc<str> = Rc::from(r.name.as_str());
            let rate = p.rate_limit.as_ref().map(|rl| {
                let id = specs.len();
                specs.push(LimitSpec::new(
                    Rc::clone(&name),
                    Budget::Rate {
                        per_sec: rl.per_second(),
                        burst: rl.burst as f64,
                    },
                    shard.count,
                ));
                (
                    id,
                    rl.key.clone(),
                    rate_limit::Headers::new(&r.name, rl.limit, rl.window.as_secs()),
                )
            });
            let quota = p.quota.as_ref().map(|q| {
                has_quotas = true;
                let id = specs.len();
                specs.push(LimitSpec::new(
                    Rc::clone(&name),
                    Budget::Quota {
                        limit: q.limit,
                        period: q.period,
                    },
                    shard.count,
                ));
                let window = match q.period {
                    config::QuotaPeriod::Day => 86_400,
                    config::QuotaPeriod::Month => 30 * 86_400,
                };
                (
                    id,
                    q.key.clone(),
                    rate_limit::Headers::new(&format!("{}/quota", r.name), q.limit, window),
                )
            });
            routes.push(Some(RoutePolicy {
                name,
                request_id,
                forwards: matches!(r.action, Action::Upstream(_) | Action::Aggregate(_)),
                cors: p.cors.clone().map(|c| Cors::new(c, r.methods.as_deref())),
                auth: p.auth.map(|i| Rc::clone(&auths[i])),
                scopes: p.scopes.clone(),
                rate,
                quota,
                validate: p.validate.clone(),
                idempotency: p.idempotency.clone(),
            }));
        }
        let idem = idempotency::Idempotency::new(shard.id, shard.count, mesh.clone());
        let limiters = Limiters::new(shard.id, shard.count, mesh, specs);
        let data_dir = cfg.server.data_dir.clone();
        if has_quotas {
            quota::load(&limiters, &data_dir);
            let weak = Rc::downgrade(&limiters);
            let dir = data_dir.clone();
            let id = shard.id;
            glommio::spawn_local(async move {
                loop {
                    glommio::timer::sleep(std::time::Duration::from_secs(quota::QUOTA_SAVE_SECS))
                        .await;
                    let Some(l) = weak.upgrade() else { return };
                    if let Err(e) = quota::save(&l, &dir, id, false) {
                        eprintln!("shardline: shard {id}: saving quotas failed: {e}");
                    }
                }
            })
            .detach();
        }
        ShardPolicies {
            any_cors: cfg.routes.iter().any(|r| r.policy.cors.is_some()),
            log_consumer: !matches!(
                cfg.observability.access_log,
                crate::config_obs::LogTarget::Off
            ),
            routes,
            ids: IdGen::new(shard.id),
            limiters,
            idem,
            has_quotas,
            data_dir,
            shard: shard.id,
            key_buf: RefCell::new(Vec::new()),
        }
    }

    /// Whether route `i` runs any policy (else the action runs bare).
    #[inline]
    pub(crate) fn active(&self, i: usize) -> bool {
        matches!(self.routes.get(i), Some(Some(_)))
    }

    /// Whether route `i`'s checks read its path parameters (so the caller
    /// must pass them, not an empty set).
    pub(crate) fn uses_params(&self, i: usize) -> bool {
        matches!(self.routes.get(i), Some(Some(p)) if p.validate.as_ref().is_some_and(|v| !v.params.is_empty()))
    }

    /// Whether route `i` has a quota kept across shards (such requests take
    /// the streaming path so they can wait for their shard's lease).
    pub(crate) fn quota_waits(&self, i: usize) -> bool {
        self.limiters.is_shared()
            && matches!(self.routes.get(i), Some(Some(p)) if p.quota.is_some())
    }

    /// Waits (bounded) until the lease a check was waiting for arrived.
    pub(crate) async fn wait_lease(&self, full: &[u8]) {
        let deadline = std::time::Instant::now() + LEASE_WAIT;
        while !self.limiters.settled(full) && std::time::Instant::now() < deadline {
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Whether route `i` answers CORS preflights.
    pub(crate) fn has_cors(&self, i: usize) -> bool {
        matches!(self.routes.get(i), Some(Some(p)) if p.cors.is_some())
    }

    /// Route `i`'s idempotency settings.
    pub(crate) fn idempotency(&self, i: usize) -> Option<&config::IdempotencyConfig> {
        match self.routes.get(i) {
            Some(Some(p)) => p.idempotency.as_ref(),
            _ => None,
        }
    }

    /// Whether route `i` validates bodies.
    pub(crate) fn validates_body(&self, i: usize) -> bool {
        matches!(self.routes.get(i), Some(Some(p)) if p.validate.as_ref().is_some_and(|v| v.schema.is_some()))
    }

    /// Saves what must survive a restart.
    pub(crate) fn shutdown(&self) {
        if self.has_quotas {
            self.limiters.dirty.set(true);
            if let Err(e) = quota::save(&self.limiters, &self.data_dir, self.shard, true) {
                eprintln!("shardline: shard {}: saving quotas failed: {e}", self.shard);
            }
        }
    }

    /// Answers a CORS preflight for route `i`: `Ok(headers)` for a 204,
    /// `Err` for a 403; `None` when the route has no CORS policy.
    pub(crate) fn preflight(
        &self,
        i: usize,
        head: &RequestHead<'_, '_>,
    ) -> Option<Result<cors::HeaderList, Rejected>> {
        let p = self.routes.get(i)?.as_ref()?;
        let cors = p.cors.as_ref()?;
        let origin = head.header("origin")?;
        let method = head.header("access-control-request-method")?;
        Some(
            cors.preflight(
                origin,
                method,
                head.header("access-control-request-headers"),
            )
            .map_err(|e| Rejected::new(403, "cors-preflight-refused", "Forbidden", e.detail())),
        )
    }

    /// The head checks for route `i`. On refusal the response header lines
    /// (request id, CORS) are in `passed` too. `tls_identity` is the
    /// connection's verified client certificate identity (for `mtls`).
    #[allow(clippy::too_many_arguments)] // Each is a distinct input of the one check.
    pub(crate) fn check(
        &self,
        i: usize,
        head: &RequestHead<'_, '_>,
        peer: SocketAddr,
        tls_identity: Option<&str>,
        params: &Params<'_, '_>,
        passed: &mut Passed,
        mode: CheckMode,
    ) -> Result<(), Rejected> {
        let Some(Some(p)) = self.routes.get(i) else {
            return Ok(());
        };
        let out = &mut passed.response_headers;
        let mut gen = [0u8; request_id::GENERATED_ID_LEN];
        // This request's id, for the audit log ("" with request ids off).
        let mut rid: &[u8] = b"";
        if p.request_id {
            let incoming = head
                .header("x-request-id")
                .filter(|v| request_id::valid_request_id(v));
            let id: &[u8] = match incoming {
                Some(v) => v,
                None => {
                    self.ids.uuid(&mut gen);
                    &gen
                }
            };
            // One allocation for the id line and what usually follows
            // (CORS, rate-limit fields), not a regrowth per line.
            out.reserve(POLICY_LINES_CAPACITY_BYTES);
            out.extend_from_slice(b"X-Request-Id: ");
            out.extend_from_slice(id);
            out.extend_from_slice(b"\r\n");
            passed.request_id = Some(id.to_vec());
            if p.forwards && !mode.no_upstream {
                passed.traceparent = Some(self.ids.traceparent(head.header("traceparent")));
            }
            rid = id;
        }
        if let Some(c) = &p.cors {
            c.actual(head.header("origin"), out);
        }
        let mut consumer: Option<Vec<u8>> = None;
        if let Some(a) = &p.auth {
            let wants_consumer = matches!(&p.rate, Some((_, LimitKey::Consumer, _)))
                || matches!(&p.quota, Some((_, LimitKey::Consumer, _)))
                || p.idempotency.is_some()
                || self.log_consumer;
            // Valid request ids are ASCII (`valid_request_id`, generated).
            let request_id = std::str::from_utf8(rid).unwrap_or("");
            let audit = |allow: bool, reason: &str, consumer: Option<&str>| {
                crate::obs::audit::record(&crate::obs::audit::Decision {
                    allow,
                    reason,
                    consumer,
                    route: &p.name,
                    request_id,
                    auth: a.name(),
                })
            };
            let res = a.check(head, tls_identity, |id| {
                let ok = id.has_all(&p.scopes);
                audit(
                    ok,
                    if ok {
                        a.valid_reason()
                    } else {
                        "scope_missing"
                    },
                    Some(&id.consumer),
                );
                let who = wants_consumer.then(|| id.consumer.as_bytes().to_vec());
                (ok, who)
            });
            if let Err(f) = &res {
                let f = *f;
                audit(
                    false,
                    f.reason(),
                    tls_identity.filter(|_| f == AuthFailure::NotAllowed),
                );
            }
            match res {
                Ok((true, who)) => consumer = who,
                Ok((false, _)) => {
                    let mut r = Rejected::new(
                        403,
                        "insufficient-scope",
                        "Forbidden",
                        format!("this route needs the scopes: {}", p.scopes.join(" ")),
                    );
                    r.headers.push((
                        "WWW-Authenticate",
                        a.scope_challenge(&p.scopes).into_bytes(),
                    ));
                    return Err(r);
                }
                Err(AuthFailure::NotAllowed) => {
                    return Err(Rejected::new(
                        403,
                        "client-not-allowed",
                        "Forbidden",
                        AuthFailure::NotAllowed.detail(),
                    ));
                }
                Err(f) => {
                    let mut r = Rejected::new(
                        401,
                        if matches!(f, AuthFailure::Missing | AuthFailure::NoClientCert) {
                            "unauthenticated"
                        } else {
                            "invalid-credentials"
                        },
                        "Unauthorized",
                        f.detail(),
                    );
                    r.headers
                        .push(("WWW-Authenticate", a.challenge(f).into_bytes()));
                    return Err(r);
                }
            }
        }
        // Who the request is, kept from here on: a request auth admitted
        // and a limit then refused is still that consumer's (access log,
        // audit), not an anonymous one.
        if p.idempotency.is_some() || self.log_consumer {
            passed.consumer = consumer.take();
        }
        let consumer = passed.consumer.as_deref().or(consumer.as_deref());
        for (limit, is_quota) in [(&p.rate, false), (&p.quota, true)] {
            let Some((id, key, hdrs)) = limit else {
                continue;
            };
            if mode.retry && !is_quota {
                continue;
            }
            let mut full = self.key_buf.borrow_mut();
            let key_bytes: std::borrow::Cow<'_, [u8]> = match key {
                LimitKey::Consumer => consumer.unwrap_or(b"").into(),
                LimitKey::Ip => match peer.ip() {
                    std::net::IpAddr::V4(a) => a.octets().to_vec().into(),
                    std::net::IpAddr::V6(a) => a.octets().to_vec().into(),
                },
                LimitKey::Route => (&b""[..]).into(),
                LimitKey::Header(h) => head.header(h).unwrap_or(b"").into(),
            };
            limiter::full_key(&mut full, *id, &key_bytes);
            match self.limiters.take(*id, &full, mode.can_wait && !mode.retry) {
                Decision::Pending => {
                    let mut r = Rejected::new(503, "quota-lease", "Service Unavailable", "");
                    r.wait_lease = Some(full.clone());
                    return Err(r);
                }
                Decision::Allow {
                    remaining,
                    reset_secs,
                } => {
                    if !is_quota {
                        hdrs.write_allowed(out, remaining, reset_secs);
                    }
                }
                Decision::Deny { retry_after_secs } => {
                    let mut r = if is_quota {
                        Rejected::new(
                            429,
                            "quota-exhausted",
                            "Too Many Requests",
                            "the quota for this period is spent",
                        )
                    } else {
                        Rejected::new(
                            429,
                            "rate-limited",
                            "Too Many Requests",
                            "the rate limit is exceeded; retry after the time in Retry-After",
                        )
                    };
                    r.headers.push((
                        "Retry-After",
                        itoa::Buffer::new()
                            .format(retry_after_secs)
                            .as_bytes()
                            .to_vec(),
                    ));
                    hdrs.refusal(&mut r.headers, retry_after_secs);
                    return Err(r);
                }
            }
        }
        if let Some(v) = &p.validate {
            for (name, ty) in &v.params {
                if let Some(val) = params.get(name) {
                    if !ty.accepts(val) {
                        let mut r = Rejected::new(
                            422,
                            "validation-failed",
                            "Unprocessable Content",
                            format!("the path parameter {name:?} must be {}", ty.name()),
                        );
                        r.body = Some(violations_body(
                            &r,
                            &[validate::Violation {
                                pointer: format!("/{name}"),
                                message: format!("must be {}", ty.name()),
                            }],
                            "path",
                        ));
                        return Err(r);
                    }
                }
            }
        }
        Ok(())
    }

    /// The body checks for route `i` (validation).
    pub(crate) fn check_body(
        &self,
        i: usize,
        head: &RequestHead<'_, '_>,
        body: &[u8],
    ) -> Result<(), Rejected> {
        let Some(Some(p)) = self.routes.get(i) else {
            return Ok(());
        };
        let Some(schema) = p.validate.as_ref().and_then(|v| v.schema.as_ref()) else {
            return Ok(());
        };
        // Requests without content (GET, DELETE, ...) have nothing to check.
        if body.is_empty()
            && head.header("content-type").is_none()
            && !matches!(head.method, "POST" | "PUT" | "PATCH")
        {
            return Ok(());
        }
        match validate::check_body(schema, head.header("content-type"), body) {
            Ok(()) => Ok(()),
            Err(BodyProblem::UnsupportedMediaType) => {
                let mut r = Rejected::new(
                    415,
                    "unsupported-media-type",
                    "Unsupported Media Type",
                    "this route takes application/json",
                );
                // RFC 9110 §15.5.16: say what would be accepted.
                r.headers.push(("Accept", b"application/json".to_vec()));
                Err(r)
            }
            Err(BodyProblem::Malformed(e)) => {
                let mut r = Rejected::new(
                    422,
                    "validation-failed",
                    "Unprocessable Content",
                    format!("the body is not valid JSON: {e}"),
                );
                r.body = Some(violations_body(
                    &r,
                    &[validate::Violation {
                        pointer: String::new(),
                        message: "is not valid JSON".into(),
                    }],
                    "body",
                ));
                Err(r)
            }
            Err(BodyProblem::Invalid(list)) => {
                let mut r = Rejected::new(
                    422,
                    "validation-failed",
                    "Unprocessable Content",
                    format!(
                        "the body breaks the route's schema in {} place(s)",
                        list.len()
                    ),
                );
                r.body = Some(violations_body(&r, &list, "body"));
                Err(r)
            }
        }
    }
}

/// A problem+json body listing violations as `errors: [{pointer, detail}]`.
fn violations_body(r: &Rejected, list: &[validate::Violation], location: &str) -> Vec<u8> {
    let errors: Vec<serde_json::Value> = list
        .iter()
        .map(|v| {
            serde_json::json!({
                "pointer": v.pointer,
                "detail": v.message,
                "in": location,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "type": r.problem_type,
        "title": r.title,
        "status": r.status,
        "detail": r.detail,
        "errors": errors,
    });
    doc.to_string().into_bytes()
}

/// The request as the upstream gets it: `X-Request-Id` and `traceparent`
/// replaced by this hop's values; every other field as it came. `copy`
/// receives the new head's bytes.
pub(crate) fn upstream_request(
    req: &StreamRequest,
    passed: &Passed,
    copy: Vec<u8>,
) -> StreamRequest {
    let mut add: [(&str, &[u8]); 2] = [("", &[]), ("", &[])];
    let mut n = 0;
    if let Some(id) = &passed.request_id {
        add[n] = ("X-Request-Id", id);
        n += 1;
    }
    if let Some(tp) = &passed.traceparent {
        add[n] = ("traceparent", tp);
        n += 1;
    }
    req.with_fields(
        |name| {
            (passed.request_id.is_some() && name.eq_ignore_ascii_case("x-request-id"))
                || (passed.traceparent.is_some() && name.eq_ignore_ascii_case("traceparent"))
        },
        &add[..n],
        copy,
    )
}
