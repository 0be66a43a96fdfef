//! The gateway's per-shard [`App`]: route matching and route actions, and
//! what each request records (metrics, SLOs, access log, spans).
//!
//! The route table and actions of one config generation form a
//! `GatewayInner`, held by the shard's `GatewayApp` as an `Rc` that a
//! reload replaces whole (by message from shard 0). A streamed request
//! keeps the generation it started on alive until it ends, so a reload
//! never cuts one off; connections are untouched.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use shardline_protocol::request::RequestHead;
use shardline_protocol::response::Response as ProtoResponse;
use shardline_shard::{
    App, AppFactory, ClientIo, Dispatch, Exchange, Match, Methods, Params, Router, ShardInfo,
    StreamFuture, StreamRequest,
};

use crate::aggregate::{self, Aggregate};
use crate::config::{Action, Config};
use crate::config_obs::SloConfig;
use crate::handler::{self, Handler, HandlerFactory, Request, Response};
use crate::obs::hub::{Coordinator, ShardControl};
use crate::obs::metrics::{
    CacheSnapshot, CountersSnapshot, RouteTable, ShardSnapshot, UpstreamSnapshot, UNMATCHED_ROUTE,
};
use crate::obs::slo::SloTable;
use crate::obs::trace::{unix_nanos, AttrValue, Span, TraceContext};
use crate::obs::{Completed, ObsSetup, ShardObs};
use crate::policy::{self as pol, CheckMode, Passed, Rejected, ShardPolicies};
use crate::proxy::{self, GatewayShard, Proxy};
use crate::upstream::{self, Upstream};

/// The status logged and counted for a request the client abandoned
/// before anything was answered (nginx's convention; never sent).
const CLIENT_CLOSED_REQUEST: u16 = 499;

/// Token for requests no route matches (404, 405, 501, OPTIONS): they are
/// answered inline by matching again, a cold path.
const NO_ROUTE: usize = usize::MAX;
/// Token for CORS preflights a route's policy answers.
const PREFLIGHT: usize = usize::MAX - 1;

/// Bodies buffered whole for validation on streamed routes are bounded by
/// this (and by the route's own limit): a JSON document to check against a
/// schema has no business being bigger, and it is held in memory.
const MAX_VALIDATED_BODY_BYTES: u64 = 16 << 20;

/// Dispatch tokens carry the config generation in their high bits so a
/// streamed request dispatched before a reload is not served with the
/// index of a different route after it.
const TOKEN_INDEX_BITS: u32 = 32;
const TOKEN_GENERATION_MASK: u64 = 0x7fff_ffff;

fn token(generation: u64, index: usize) -> usize {
    (((generation & TOKEN_GENERATION_MASK) as usize) << TOKEN_INDEX_BITS) | (index & 0xffff_ffff)
}

fn untoken(token: usize) -> (u64, usize) {
    (
        (token >> TOKEN_INDEX_BITS) as u64 & TOKEN_GENERATION_MASK,
        token & 0xffff_ffff,
    )
}

/// The route table of one config, shared (immutably) by all shards.
pub(crate) struct Routing {
    router: Arc<Router<usize>>,
    known_methods: Arc<Vec<String>>,
    server_allow: Arc<str>,
}

/// RFC 9110 §9.3 methods.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl Routing {
    pub(crate) fn new(
        config: &Config,
        handlers: &[(String, Arc<dyn HandlerFactory>)],
    ) -> Result<Self, String> {
        let mut router = Router::new();
        for (i, r) in config.routes.iter().enumerate() {
            let methods = r.methods.clone().map_or(Methods::Any, Methods::Only);
            router
                .insert(methods, &r.path, i)
                .map_err(|e| format!("routes[{i}] ({}): {e}", r.name))?;
            if let Action::Handler(h) = &r.action {
                if h != "echo" && !handlers.iter().any(|(n, _)| n == h) {
                    return Err(format!(
                        "routes[{i}] ({}).handler: no handler named {h:?} (built in: \"echo\")",
                        r.name
                    ));
                }
            }
        }
        // Methods this server implements: the RFC 9110 §9 set, plus any
        // extension method a route names. Others get 501 (RFC 9110 §9.1).
        let mut methods: Vec<String> = STANDARD_METHODS.iter().map(|m| m.to_string()).collect();
        for r in &config.routes {
            for m in r.methods.iter().flatten() {
                if !methods.contains(m) {
                    methods.push(m.clone());
                }
            }
        }
        // What `OPTIONS *` advertises: every method some route answers.
        let mut server_allow: Vec<&str> = Vec::new();
        for r in &config.routes {
            match &r.methods {
                None => server_allow.extend(STANDARD_METHODS.iter().filter(|m| **m != "CONNECT")),
                Some(ms) => server_allow.extend(ms.iter().map(String::as_str)),
            }
        }
        if server_allow.contains(&"GET") {
            server_allow.push("HEAD");
        }
        server_allow.push("OPTIONS");
        let mut uniq: Vec<&str> = Vec::new();
        for m in server_allow {
            if !uniq.contains(&m) {
                uniq.push(m);
            }
        }
        let server_allow = uniq.join(", ");
        Ok(Routing {
            router: Arc::new(router),
            known_methods: Arc::new(methods),
            server_allow: Arc::from(server_allow),
        })
    }
}

/// A validated config generation, sent to every shard on reload.
pub(crate) struct ReloadPlan {
    pub config: Arc<Config>,
    pub routing: Arc<Routing>,
    pub generation: u64,
}

/// Builds each shard's gateway app; holds what all shards share.
pub(crate) struct GatewayFactory {
    plan: Arc<ReloadPlan>,
    handlers: Arc<Vec<(String, Arc<dyn HandlerFactory>)>>,
    obs: Arc<ObsSetup>,
}

impl GatewayFactory {
    pub(crate) fn new(
        config: Arc<Config>,
        handlers: Arc<Vec<(String, Arc<dyn HandlerFactory>)>>,
        obs: Arc<ObsSetup>,
    ) -> Result<Self, String> {
        let routing = Arc::new(Routing::new(&config, &handlers)?);
        Ok(GatewayFactory {
            plan: Arc::new(ReloadPlan {
                config,
                routing,
                generation: 1,
            }),
            handlers,
            obs,
        })
    }
}

/// A route's action as a shard runs it.
enum ShardAction {
    Respond {
        status: u16,
        body: Box<[u8]>,
        content_type: Option<Box<[u8]>>,
        headers: Vec<(String, Box<[u8]>)>,
    },
    Handler(Box<dyn Handler>),
    Proxy(Box<Proxy>),
    Aggregate(Aggregate),
}

/// One config generation as one shard runs it.
struct GatewayInner {
    generation: u64,
    config: Arc<Config>,
    router: Arc<Router<usize>>,
    actions: Vec<ShardAction>,
    /// Body limit per route (streamed routes may exceed the server's).
    body_limits: Vec<u64>,
    known_methods: Arc<Vec<String>>,
    server_allow: Arc<str>,
    upstreams: Vec<Rc<Upstream>>,
    route_metrics: RouteTable,
    slos: SloTable,
    slo_configs: Vec<Arc<SloConfig>>,
    /// Access log sample per route.
    samples: Vec<f64>,
    unmatched_sample: f64,
    /// Policies of this generation's routes (README "Policies").
    policies: Rc<ShardPolicies>,
}

impl GatewayInner {
    fn build(
        plan: &ReloadPlan,
        handlers: &[(String, Arc<dyn HandlerFactory>)],
        shard: ShardInfo,
        old: Option<&GatewayInner>,
    ) -> GatewayInner {
        let config = &plan.config;
        // This shard's own upstream state; health checks run as tasks of
        // this shard's executor. Counters carry over from the upstream of
        // the same name in the previous generation.
        let upstreams: Vec<Rc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let up = Rc::new(Upstream::new(Arc::new(u.clone()), shard.id));
                if let Some(prev) =
                    old.and_then(|o| o.upstreams.iter().find(|p| p.cfg.name == u.name))
                {
                    up.carry_from(prev);
                }
                up
            })
            .collect();
        for u in &upstreams {
            if u.cfg.health_check.is_some() {
                glommio::spawn_local(upstream::health::run(Rc::clone(u))).detach();
            }
            glommio::spawn_local(upstream::pool::sweep(Rc::clone(u))).detach();
        }
        let actions = config
            .routes
            .iter()
            .map(|r| match &r.action {
                Action::Respond(resp) => ShardAction::Respond {
                    status: resp.status,
                    body: resp.body.as_bytes().into(),
                    content_type: resp.content_type.as_ref().map(|c| c.as_bytes().into()),
                    headers: resp
                        .headers
                        .iter()
                        .map(|(n, v)| (n.clone(), v.as_bytes().into()))
                        .collect(),
                },
                Action::Handler(name) => {
                    let factory = handlers.iter().find(|(n, _)| n == name);
                    match factory {
                        Some((_, f)) => ShardAction::Handler(f.build(shard)),
                        // Validated in `Routing::new`: only "echo" is left.
                        None => ShardAction::Handler(Box::new(handler::echo)),
                    }
                }
                Action::Upstream(pr) => ShardAction::Proxy(Box::new(Proxy {
                    up: Rc::clone(&upstreams[pr.upstream]),
                    strip_prefix: pr.strip_prefix.clone(),
                    rewrite: pr.rewrite.clone(),
                    timeout: pr
                        .timeout
                        .unwrap_or(config.upstreams[pr.upstream].request_timeout),
                    cache: pr.cache.as_ref().map(|c| {
                        old.and_then(|o| o.reusable_cache(r, config))
                            .unwrap_or_else(|| Rc::new(crate::cache_glue::RouteCache::new(c)))
                    }),
                    authenticated: r.policy.auth.is_some(),
                })),
                Action::Aggregate(parts) => {
                    ShardAction::Aggregate(Aggregate::new(parts, &upstreams))
                }
            })
            .collect();
        let body_limits = config
            .routes
            .iter()
            .map(|r| r.max_body_bytes.unwrap_or(config.server.max_body_bytes))
            .collect();
        let names: Vec<String> = config.routes.iter().map(|r| r.name.clone()).collect();
        let slo_configs: Vec<Arc<SloConfig>> =
            config.slos.iter().map(|s| Arc::new(s.clone())).collect();
        let global_sample = config.observability.access_log_sample;
        GatewayInner {
            generation: plan.generation,
            router: Arc::clone(&plan.routing.router),
            known_methods: Arc::clone(&plan.routing.known_methods),
            server_allow: Arc::clone(&plan.routing.server_allow),
            actions,
            body_limits,
            route_metrics: RouteTable::new(&names, old.map(|o| &o.route_metrics)),
            slos: SloTable::new(&slo_configs, &names, old.map(|o| &o.slos)),
            slo_configs,
            samples: config
                .routes
                .iter()
                .map(|r| r.access_log_sample.unwrap_or(global_sample))
                .collect(),
            unmatched_sample: global_sample,
            upstreams,
            policies: ShardPolicies::for_shard(config, shard),
            config: Arc::clone(config),
        }
    }

    /// The cache of the route named like `r` in this generation, if its
    /// cache settings and upstream are unchanged in `new` (a reload then
    /// keeps the cached entries and the cache counters).
    fn reusable_cache(
        &self,
        r: &crate::config::RouteConfig,
        new: &Config,
    ) -> Option<Rc<crate::cache_glue::RouteCache>> {
        let i = self.config.routes.iter().position(|o| o.name == r.name)?;
        let (Action::Upstream(old_p), Action::Upstream(new_p)) =
            (&self.config.routes[i].action, &r.action)
        else {
            return None;
        };
        let same_upstream =
            self.config.upstreams[old_p.upstream].name == new.upstreams[new_p.upstream].name;
        let same_cache = format!("{:?}", old_p.cache) == format!("{:?}", new_p.cache);
        match &self.actions[i] {
            ShardAction::Proxy(p) if same_upstream && same_cache => p.cache.clone(),
            _ => None,
        }
    }

    fn route_name(&self, route: Option<usize>) -> &str {
        route
            .and_then(|i| self.config.routes.get(i))
            .map_or(UNMATCHED_ROUTE, |r| r.name.as_str())
    }
}

pub(crate) struct GatewayApp {
    inner: RefCell<Rc<GatewayInner>>,
    /// A fresh cache entry found by `dispatch` for the request it sent
    /// inline; `handle` (called right after, for the same request) answers
    /// with it.
    cache_hit: RefCell<Option<Rc<crate::cache::CachedResponse>>>,
    gw: GatewayShard,
    obs: Rc<ShardObs>,
    shard: ShardInfo,
    handlers: Arc<Vec<(String, Arc<dyn HandlerFactory>)>>,
    setup: Arc<ObsSetup>,
}

impl AppFactory for GatewayFactory {
    fn build(&self, shard: ShardInfo) -> Rc<dyn App> {
        self.build_app(shard)
    }
}

impl GatewayFactory {
    fn build_app(&self, shard: ShardInfo) -> Rc<GatewayApp> {
        let inner = GatewayInner::build(&self.plan, &self.handlers, shard, None);
        let obs = Rc::new(self.obs.shard_obs(shard, &self.plan.config));
        crate::obs::audit::install(obs.audit.clone());
        glommio::spawn_local(crate::obs::flush_loop(Rc::downgrade(&obs))).detach();
        let app = Rc::new(GatewayApp {
            inner: RefCell::new(Rc::new(inner)),
            cache_hit: RefCell::new(None),
            gw: GatewayShard::new(obs.tracer.clone(), self.plan.config.server.read_yields),
            obs,
            shard,
            handlers: Arc::clone(&self.handlers),
            setup: Arc::clone(&self.obs),
        });
        let control: Rc<dyn ShardControl> = app.clone();
        if shard.id == 0 {
            let coord = Rc::new(Coordinator::new(self.obs.hub.take_coordinator(), control));
            crate::obs::hub::install_coordinator(Rc::clone(&coord));
            glommio::spawn_local(Rc::clone(&coord).connect_now()).detach();
            glommio::spawn_local(crate::reload::sighup_loop(
                Arc::clone(&self.obs),
                Rc::downgrade(&coord),
            ))
            .detach();
        } else {
            self.obs.hub.serve_shard(shard.id, control);
        }
        app
    }
}

impl ShardControl for GatewayApp {
    fn snapshot(&self) -> ShardSnapshot {
        let inner = Rc::clone(&self.inner.borrow());
        let now = self.obs.now_secs();
        let mut caches = Vec::new();
        for (i, a) in inner.actions.iter().enumerate() {
            if let ShardAction::Proxy(p) = a {
                if let Some(c) = &p.cache {
                    let (st, entries, bytes) = c.stats();
                    caches.push(CacheSnapshot {
                        route: inner.route_name(Some(i)).to_string(),
                        hits: st.hits,
                        misses: st.misses,
                        stale_served: st.stale_served,
                        evictions: st.evictions,
                        stores: st.stores,
                        entries: entries as u64,
                        bytes,
                    });
                }
            }
        }
        ShardSnapshot {
            shard: self.shard.id,
            counters: CountersSnapshot::of(&self.obs.counters),
            routes: inner.route_metrics.snapshot(),
            upstreams: inner
                .upstreams
                .iter()
                .map(|u| UpstreamSnapshot::of(u))
                .collect(),
            caches,
            access_log: self
                .obs
                .access
                .as_ref()
                .map(|l| l.counts())
                .unwrap_or_default(),
            audit_log: crate::obs::audit::counts(),
            slos: inner.slos.snapshot(now),
            slo_configs: inner.slo_configs.clone(),
            reloads_ok: self.setup.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: self.setup.reloads_failed.load(Ordering::Relaxed),
            config_generation: inner.generation,
            tls_certificates: self.setup.tls.as_ref().map(|t| t.served()),
            spans_exported: self.obs.tracer.as_ref().map_or(0, |t| t.exported.get()),
            spans_dropped: self.obs.tracer.as_ref().map_or(0, |t| t.dropped.get()),
        }
    }

    fn reload(&self, plan: &Arc<ReloadPlan>) {
        let old = Rc::clone(&self.inner.borrow());
        if old.generation >= plan.generation {
            return;
        }
        let new = GatewayInner::build(plan, &self.handlers, self.shard, Some(&old));
        *self.inner.borrow_mut() = Rc::new(new);
        // Health checks of the replaced upstreams stop; requests still
        // streaming through them finish on the old generation.
        for u in &old.upstreams {
            u.retired.set(true);
        }
    }
}

impl GatewayApp {
    /// Records a finished request: route metrics, SLOs, access log, span.
    fn complete(&self, inner: &GatewayInner, c: &Completed<'_>) {
        let took = c.finished.saturating_duration_since(c.received);
        match c.route.and_then(|i| inner.route_metrics.routes.get(i)) {
            Some(m) => m.observe(c.status, took),
            None => inner.route_metrics.unmatched.observe(c.status, took),
        }
        // No clock read here: the SLO windows take the answer's time.
        if let Some(i) = c.route.filter(|&i| inner.slos.watches(i)) {
            inner
                .slos
                .observe(i, c.status, took, self.obs.secs_at(c.finished));
        }
        let sample = c
            .route
            .and_then(|i| inner.samples.get(i).copied())
            .unwrap_or(inner.unmatched_sample);
        self.obs.access_line(c, sample, took);
        if let (Some(tracer), Some(t)) = (&self.obs.tracer, c.trace) {
            if t.sampled {
                let mut attributes = vec![
                    ("http.request.method", AttrValue::Str(c.method.to_string())),
                    ("url.path", AttrValue::Str(c.path.to_string())),
                    (
                        "http.response.status_code",
                        AttrValue::Int(i64::from(c.status)),
                    ),
                    ("shardline.shard", AttrValue::Int(self.shard.id as i64)),
                ];
                if c.route.is_some() {
                    attributes.push(("http.route", AttrValue::Str(c.route_name.to_string())));
                }
                let end = unix_nanos(c.finished);
                tracer.push(Span {
                    trace_id: t.trace_id,
                    span_id: t.span_id,
                    parent_id: t.parent_id,
                    name: format!("{} {}", c.method, c.route_name),
                    kind: 2,
                    start_unix_nanos: end.saturating_sub(took.as_nanos() as u64),
                    end_unix_nanos: end,
                    error: c.status >= 500,
                    attributes,
                });
            }
        }
    }

    /// The head and body policies of a streamed route; `None` when the
    /// request was refused (and answered). The request returned carries
    /// the head to send on (request id, traceparent).
    #[allow(clippy::too_many_arguments)] // The request, its parsed head and the route's params: distinct inputs.
    async fn stream_policies(
        &self,
        inner: &GatewayInner,
        token: usize,
        req: &StreamRequest,
        head: &RequestHead<'_, '_>,
        params: &Params<'_, '_>,
        notes: &mut PolicyNotes,
        io: &mut ClientIo<'_>,
    ) -> Option<(StreamRequest, Option<Vec<u8>>)> {
        let mut passed = Passed::default();
        let tls_id = io.tls_client_identity();
        let wait = pol::CheckMode {
            can_wait: true,
            ..pol::CheckMode::default()
        };
        let mut checked =
            inner
                .policies
                .check(token, head, io.peer(), tls_id, params, &mut passed, wait);
        if let Err(Rejected {
            wait_lease: Some(full),
            ..
        }) = &checked
        {
            // This shard's quota share is waiting for its lease: wait for
            // the owner's answer, then check again (without charging the
            // rate limit twice).
            inner.policies.wait_lease(full).await;
            passed = Passed::default();
            let retry = pol::CheckMode {
                retry: true,
                ..pol::CheckMode::default()
            };
            checked =
                inner
                    .policies
                    .check(token, head, io.peer(), tls_id, params, &mut passed, retry);
        }
        io.add_response_headers(&passed.response_headers);
        notes.request_id.clone_from(&passed.request_id);
        notes.consumer.clone_from(&passed.consumer);
        if let Err(r) = checked {
            // The body is not read: close rather than read it for nothing.
            if io.has_body() {
                io.close_after();
            }
            count_rejection(inner, token, &r);
            reject_stream(io, &r).await;
            return None;
        }
        if inner.policies.validates_body(token) {
            let limit = inner.body_limits[token].min(MAX_VALIDATED_BODY_BYTES);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let res = match io.buffer_body(limit).await {
                Ok(body) => inner.policies.check_body(token, head, body),
                Err(e) => {
                    io.answer_body_failure(e).await;
                    return None;
                }
            };
            if let Err(r) = res {
                count_rejection(inner, token, &r);
                reject_stream(io, &r).await;
                return None;
            }
        }
        let h = io.take_buffer();
        Some((
            pol::upstream_request(req, &passed, h),
            passed.consumer.take(),
        ))
    }

    /// Runs a route's action on the streaming path.
    async fn run_stream_action(
        &self,
        inner: &GatewayInner,
        action: &ShardAction,
        token: usize,
        head: &RequestHead<'_, '_>,
        params: &Params<'_, '_>,
        io: &mut ClientIo<'_>,
    ) {
        match action {
            ShardAction::Proxy(p) => {
                // The path sent upstream, from the route's params.
                let path = proxy::upstream_path(
                    head.path,
                    p.strip_prefix.as_deref(),
                    p.rewrite.as_deref(),
                    params,
                );
                crate::cache_glue::serve(p, &self.gw, head, io, &path).await;
            }
            ShardAction::Aggregate(a) => {
                // Boxed: a fan-out's future is large, and inline it would
                // be copied into the box of every streamed request.
                Box::pin(aggregate::serve(a, &self.gw, head, params, io)).await;
            }
            ShardAction::Respond { .. } | ShardAction::Handler(_) => {
                // A synchronous action sent down this path by a policy
                // (idempotency): buffer the body, answer as inline.
                let limit = usize::try_from(inner.body_limits[token]).unwrap_or(usize::MAX);
                let body = match io.buffer_body(limit).await {
                    Ok(b) => b.to_vec(),
                    Err(e) => {
                        io.answer_body_failure(e).await;
                        return;
                    }
                };
                // The policies already ran on this path: answer with the
                // route's action alone.
                io.serve_inline(head, &body, token, |ex| {
                    serve_route(inner, &self.cache_hit, token, *params, ex)
                })
                .await;
            }
        }
    }

    /// A request on a route with idempotency keys (see `policy::idempotency`).
    #[allow(clippy::too_many_arguments)]
    async fn idempotent(
        &self,
        inner: &GatewayInner,
        cfg: &crate::policy::config::IdempotencyConfig,
        action: &ShardAction,
        token: usize,
        head: &RequestHead<'_, '_>,
        params: &Params<'_, '_>,
        consumer: Option<Vec<u8>>,
        io: &mut ClientIo<'_>,
    ) {
        use crate::policy::idempotency::{self as idem, Begin};
        let key = match head.header("idempotency-key") {
            Some(k) if idempotency_candidate(head) => k.to_vec(),
            _ => {
                self.run_stream_action(inner, action, token, head, params, io)
                    .await;
                return;
            }
        };
        if !idem::valid_key(&key) {
            io.send_problem(
                400,
                "https://shardline.dev/problems/bad-idempotency-key",
                "Bad Request",
                "Idempotency-Key must be 1 to 255 printable characters",
                &[],
            )
            .await;
            return;
        }
        let limit = usize::try_from(inner.body_limits[token].min(MAX_VALIDATED_BODY_BYTES))
            .unwrap_or(usize::MAX);
        let fp = match io.buffer_body(limit).await {
            Ok(body) => idem::fingerprint(head.method, head.target, body),
            Err(e) => {
                io.answer_body_failure(e).await;
                return;
            }
        };
        let scoped = idem::scoped_key(token, consumer.as_deref().unwrap_or(b""), &key);
        match inner.policies.idem.begin(&scoped, fp, cfg.max_keys).await {
            Begin::Proceed => {
                let guard = idem::Guard {
                    idem: &inner.policies.idem,
                    key: scoped,
                    fp,
                    ttl: cfg.ttl,
                    done: false,
                };
                io.capture_response(cfg.max_response_bytes);
                self.run_stream_action(inner, action, token, head, params, io)
                    .await;
                let captured = io.take_captured();
                let store = if io.is_broken() {
                    None
                } else {
                    captured.and_then(|c| idem::storable(&c))
                };
                guard.finish(store);
            }
            Begin::Replay(bytes) => {
                io.add_response_headers(b"Idempotent-Replayed: true\r\n");
                if !io.encode_options().keep_alive {
                    io.add_response_headers(b"Connection: close\r\n");
                }
                let _ = io.write_all(&bytes).await;
            }
            Begin::InFlight => {
                io.send_problem(
                    409,
                    "https://shardline.dev/problems/idempotency-key-in-use",
                    "Conflict",
                    "a request with this Idempotency-Key is still being processed",
                    &[("Retry-After", b"1")],
                )
                .await;
            }
            Begin::Mismatch => {
                io.send_problem(
                    422,
                    "https://shardline.dev/problems/idempotency-key-reused",
                    "Unprocessable Content",
                    "this Idempotency-Key was used for a different request",
                    &[],
                )
                .await;
            }
            Begin::Unavailable => {
                io.send_problem(
                    503,
                    "https://shardline.dev/problems/idempotency-unavailable",
                    "Service Unavailable",
                    "the idempotency key store did not answer; retry",
                    &[("Retry-After", b"1")],
                )
                .await;
            }
        }
    }

    /// The request's trace context, when tracing is on.
    fn trace_context(&self, head: &RequestHead<'_, '_>) -> Option<TraceContext> {
        let tracer = self.obs.tracer.as_ref()?;
        Some(
            tracer.context(head.header("traceparent"), self.obs.random_unit(), || {
                self.obs.random_u64()
            }),
        )
    }
}

impl App for GatewayApp {
    fn dispatch(&self, head: &RequestHead<'_, '_>) -> Dispatch {
        let inner = self.inner.borrow();
        if inner.policies.any_cors
            && head.method == "OPTIONS"
            && preflight_route(&inner, head).is_some()
        {
            return Dispatch::Inline(PREFLIGHT);
        }
        match inner.router.at(head.method, head.path) {
            Match::Found(&i, _)
                if (inner.policies.idempotency(i).is_some() && idempotency_candidate(head))
                    || inner.policies.quota_waits(i) =>
            {
                Dispatch::Stream {
                    token: token(inner.generation, i),
                    max_body_bytes: inner.body_limits[i],
                }
            }
            Match::Found(&i, _) => match &inner.actions[i] {
                // A fresh cache hit is answered inline, as cheaply as a
                // `respond` route; everything else about the route is async.
                // Head policies (request id, auth, CORS, rate limit) run
                // inline too, in `serve_inline`; only a quota lease wait
                // needs the streaming path.
                ShardAction::Proxy(p)
                    if !inner.policies.quota_waits(i)
                        && p.cache.as_ref().is_some_and(|c| {
                            let hit = crate::cache_glue::fresh_hit(c, head);
                            let found = hit.is_some();
                            *self.cache_hit.borrow_mut() = hit;
                            found
                        }) =>
                {
                    Dispatch::Inline(token(inner.generation, i))
                }
                ShardAction::Proxy(_) | ShardAction::Aggregate(_) => Dispatch::Stream {
                    token: token(inner.generation, i),
                    max_body_bytes: inner.body_limits[i],
                },
                _ => Dispatch::Inline(token(inner.generation, i)),
            },
            _ => Dispatch::Inline(NO_ROUTE),
        }
    }

    fn stream<'a>(
        &'a self,
        token: usize,
        req: &'a StreamRequest,
        io: &'a mut ClientIo<'_>,
    ) -> StreamFuture<'a> {
        Box::pin(async move {
            // This request runs on the generation current now, kept alive
            // until it ends even if a reload replaces it meanwhile.
            let inner = Rc::clone(&self.inner.borrow());
            let mut fields = Vec::new();
            let head = req.head(&mut fields);
            // Matched again on this generation's table (a reload may have
            // changed it since dispatch; the token's index is then stale).
            let _ = untoken(token);
            let (index, params) = match inner.router.at(head.method, head.path) {
                Match::Found(&i, params) => (i, params),
                _ => (usize::MAX, Params::default()),
            };
            let trace = self.trace_context(&head);
            if let Some(t) = &trace {
                io.set_traceparent(t.header_for(&t.span_id));
            }
            let mut notes = PolicyNotes::default();
            match inner.actions.get(index) {
                Some(action) if !inner.policies.active(index) => {
                    self.run_stream_action(&inner, action, index, &head, &params, io)
                        .await;
                }
                Some(action) => {
                    if let Some((req, consumer)) = self
                        .stream_policies(&inner, index, req, &head, &params, &mut notes, io)
                        .await
                    {
                        // The policies rewrote the head for the upstream
                        // (request id, traceparent): the action sees that.
                        let mut fields = Vec::new();
                        let head = req.head(&mut fields);
                        match inner.policies.idempotency(index) {
                            // Boxed, like the other rare paths, so that they
                            // do not enlarge every request's future.
                            Some(cfg) => {
                                Box::pin(self.idempotent(
                                    &inner, cfg, action, index, &head, &params, consumer, io,
                                ))
                                .await
                            }
                            None => {
                                self.run_stream_action(&inner, action, index, &head, &params, io)
                                    .await
                            }
                        }
                    }
                }
                // The route vanished in a reload while this request waited.
                None => {
                    io.send_problem(
                        503,
                        "https://shardline.dev/problems/route-reloaded",
                        "Service Unavailable",
                        "the route was removed by a config reload while this request waited; retry",
                        &[("Retry-After", b"1")],
                    )
                    .await;
                }
            }
            let route = (index != usize::MAX).then_some(index);
            let status = if io.started() {
                io.status()
            } else if io.is_broken() {
                // Nothing was answered because the client went away (it
                // cut its body short, say): nginx's 499, a client event,
                // not a server error that would burn an SLO.
                CLIENT_CLOSED_REQUEST
            } else {
                500
            };
            self.complete(
                &inner,
                &Completed {
                    route,
                    route_name: inner.route_name(route),
                    method: head.method,
                    path: head.path,
                    status,
                    received: req.received,
                    finished: Instant::now(),
                    bytes_in: req.head_len() as u64 + io.body_read(),
                    bytes_out: io.bytes_out(),
                    upstream: io.upstream(),
                    cache: io.cache_status(),
                    request_id: notes.request_id.as_deref().or(head.header("x-request-id")),
                    consumer: notes.consumer.as_deref(),
                    trace: trace.as_ref(),
                    peer: req.peer,
                },
            );
        })
    }

    fn shutdown(&self) {
        self.inner.borrow().policies.shutdown();
    }

    /// A request the protocol layer answered (400, 408, 413, ...): counted
    /// and logged as unmatched, like any answer (5xx ones always logged).
    fn refused(&self, r: &shardline_shard::Refusal<'_>) {
        let inner = Rc::clone(&self.inner.borrow());
        self.complete(
            &inner,
            &Completed {
                route: None,
                route_name: inner.route_name(None),
                method: r.method,
                path: "",
                status: r.status,
                received: r.received,
                finished: Instant::now(),
                bytes_in: r.bytes_in,
                bytes_out: r.bytes_out,
                upstream: None,
                cache: None,
                request_id: None,
                consumer: None,
                trace: None,
                peer: r.peer,
            },
        );
    }

    fn handle(&self, ex: &mut Exchange<'_>) {
        let inner = Rc::clone(&self.inner.borrow());
        // A fresh hit found by `dispatch`: it is consumed when answered.
        let had_hit = self.cache_hit.borrow().is_some();
        let mut notes = PolicyNotes::default();
        let route = if ex.token() == PREFLIGHT {
            let i = preflight_route(&inner, ex.head);
            if !answer_preflight(&inner, ex) {
                serve_inline(&inner, &self.cache_hit, ex, &mut notes);
            }
            i
        } else {
            serve_inline(&inner, &self.cache_hit, ex, &mut notes)
        };
        let head = ex.head;
        // Header lookups only when something will use them.
        let trace = self.trace_context(head);
        let request_id = if self.obs.access.is_some() {
            notes.request_id.as_deref().or(head.header("x-request-id"))
        } else {
            None
        };
        self.complete(
            &inner,
            &Completed {
                route,
                route_name: inner.route_name(route),
                method: head.method,
                path: head.path,
                status: ex.status(),
                received: ex.received(),
                finished: ex.finished(),
                bytes_in: ex.bytes_in(),
                bytes_out: ex.bytes_out(),
                upstream: None,
                cache: (had_hit && self.cache_hit.borrow().is_none()).then_some("HIT"),
                request_id,
                consumer: notes.consumer.as_deref(),
                trace: trace.as_ref(),
                peer: ex.peer,
            },
        );
    }
}

/// What the policies found out about a request, for its access log line.
#[derive(Default)]
struct PolicyNotes {
    /// The request id they generated (the client sent none).
    request_id: Option<Vec<u8>>,
    /// The consumer the route's auth admitted the request as.
    consumer: Option<Vec<u8>>,
}

impl PolicyNotes {
    fn take_from(&mut self, passed: &mut Passed) {
        self.request_id = passed.request_id.take();
        self.consumer = passed.consumer.take();
    }
}

/// Answers an inline request; returns the index of the route that served
/// it (`None` when none matched).
// `Rejected` is large, but only ever built on the refusal path.
#[allow(clippy::result_large_err)]
fn serve_inline(
    inner: &GatewayInner,
    cache_hit: &RefCell<Option<Rc<crate::cache::CachedResponse>>>,
    ex: &mut Exchange<'_>,
    notes: &mut PolicyNotes,
) -> Option<usize> {
    let head = ex.head;
    let (generation, token) = untoken(ex.token());
    if ex.token() != NO_ROUTE
        && generation == (inner.generation & TOKEN_GENERATION_MASK)
        && !inner.policies.active(token)
    {
        if let Some(ShardAction::Proxy(_)) = inner.actions.get(token) {
            if let Some(entry) = cache_hit.borrow_mut().take() {
                crate::cache_glue::answer_hit_inline(ex, &entry, b"");
                return Some(token);
            }
        }
        if let Some(ShardAction::Respond {
            status,
            body,
            content_type,
            headers,
        }) = inner.actions.get(token)
        {
            if headers.is_empty() {
                ex.respond(&ProtoResponse {
                    status: *status,
                    headers: &[],
                    content_type: content_type.as_deref(),
                    body,
                });
                return Some(token);
            }
        }
    }
    // A static answer or a cache hit on a route whose policies do not
    // read path parameters needs no second route match (dispatch found
    // the route): run the policies and answer.
    let dispatched =
        ex.token() != NO_ROUTE && generation == (inner.generation & TOKEN_GENERATION_MASK);
    let no_params_needed = dispatched
        && !inner.policies.uses_params(token)
        && match inner.actions.get(token) {
            Some(ShardAction::Respond { .. }) => true,
            Some(ShardAction::Proxy(_)) => cache_hit.borrow().is_some(),
            _ => false,
        };
    if no_params_needed {
        let hit = cache_hit.borrow_mut().take();
        let mut passed = Passed::default();
        let mode = CheckMode {
            no_upstream: true,
            ..CheckMode::default()
        };
        let checked = inner
            .policies
            .check(
                token,
                head,
                ex.peer,
                ex.tls_client_identity(),
                &Params::default(),
                &mut passed,
                mode,
            )
            .and_then(|()| inner.policies.check_body(token, head, ex.body));
        notes.take_from(&mut passed);
        match (checked, hit) {
            (Ok(()), Some(entry)) => {
                crate::cache_glue::answer_hit_inline(ex, &entry, &passed.response_headers)
            }
            (Ok(()), None) => {
                serve_route(inner, cache_hit, token, Params::default(), ex);
                ex.insert_headers(&passed.response_headers);
            }
            (Err(r), _) => {
                count_rejection(inner, token, &r);
                reject_inline(ex, &r);
                ex.insert_headers(&passed.response_headers);
            }
        }
        return Some(token);
    }
    let matched = inner.router.at(head.method, head.path);
    if let Match::Found(&i, params) = matched {
        let mut passed = Passed::default();
        if inner.policies.active(i) {
            let checked = inner
                .policies
                .check(
                    i,
                    head,
                    ex.peer,
                    ex.tls_client_identity(),
                    &params,
                    &mut passed,
                    Default::default(),
                )
                .and_then(|()| inner.policies.check_body(i, head, ex.body));
            notes.take_from(&mut passed);
            if let Err(r) = checked {
                count_rejection(inner, i, &r);
                reject_inline(ex, &r);
                ex.insert_headers(&passed.response_headers);
                return Some(i);
            }
        }
        // A cache hit writes the policies' fields in its head; anything
        // else gets them inserted after it is encoded.
        let hit = match inner.actions.get(i) {
            Some(ShardAction::Proxy(_)) => cache_hit.borrow_mut().take(),
            _ => None,
        };
        match hit {
            Some(entry) => {
                crate::cache_glue::answer_hit_inline(ex, &entry, &passed.response_headers)
            }
            None => {
                serve_route(inner, cache_hit, i, params, ex);
                ex.insert_headers(&passed.response_headers);
            }
        }
        return Some(i);
    }
    match matched {
        Match::Found(..) => {}
        // Cold paths from here on: nothing matched method and path.
        _ if head.method == "CONNECT" => ex.problem(
            501,
            "https://shardline.dev/problems/connect-not-supported",
            "Not Implemented",
            "CONNECT is not supported: shardline is not a forward proxy",
            &[],
        ),
        // The method does not affect framing, so the connection stays
        // usable (RFC 9110 §9.1: 501 for a method not implemented).
        _ if !inner.known_methods.iter().any(|m| m == head.method) => ex.problem(
            501,
            "https://shardline.dev/problems/method-not-implemented",
            "Not Implemented",
            "the server does not implement this request method",
            &[],
        ),
        // RFC 9110 §9.3.7: OPTIONS without a route of its own says what
        // the target (or, for `*`, the server) allows.
        _ if head.method == "OPTIONS" && head.path == "*" => {
            options(ex, &inner.server_allow);
        }
        Match::MethodNotAllowed(allow) if head.method == "OPTIONS" => {
            options(ex, &format!("{allow}, OPTIONS"));
        }
        Match::MethodNotAllowed(allow) => ex.problem(
            405,
            "https://shardline.dev/problems/method-not-allowed",
            "Method Not Allowed",
            "the target resource does not support this method; see the Allow header",
            &[("Allow", allow.as_bytes())],
        ),
        Match::NotFound => ex.problem(
            404,
            "https://shardline.dev/problems/not-found",
            "Not Found",
            "no route matches this path",
            &[],
        ),
    }
    None
}

/// Runs route `i`'s inline action.
fn serve_route(
    inner: &GatewayInner,
    cache_hit: &RefCell<Option<Rc<crate::cache::CachedResponse>>>,
    i: usize,
    params: shardline_shard::Params<'_, '_>,
    ex: &mut Exchange<'_>,
) {
    match &inner.actions[i] {
        ShardAction::Respond {
            status,
            body,
            content_type,
            headers,
        } => {
            if headers.is_empty() {
                ex.respond(&ProtoResponse {
                    status: *status,
                    headers: &[],
                    content_type: content_type.as_deref(),
                    body,
                });
            } else {
                // At most MAX_RESPOND_HEADERS (checked at load): a
                // stack array, no per-request Vec.
                let mut hs: [(&str, &[u8]); MAX_RESPOND_HEADERS] = [("", &[]); MAX_RESPOND_HEADERS];
                let n = headers.len().min(MAX_RESPOND_HEADERS);
                for (slot, (name, value)) in hs.iter_mut().zip(headers.iter()) {
                    *slot = (name.as_str(), value);
                }
                ex.respond(&ProtoResponse {
                    status: *status,
                    headers: &hs[..n],
                    content_type: content_type.as_deref(),
                    body,
                });
            }
        }
        ShardAction::Handler(h) => {
            let req = Request::new(ex, params);
            let mut res = Response::new(ex);
            h.call(&req, &mut res);
        }
        ShardAction::Proxy(_) if cache_hit.borrow().is_some() => {
            if let Some(entry) = cache_hit.borrow_mut().take() {
                crate::cache_glue::answer_hit_inline(ex, &entry, b"");
            }
        }
        // Dispatched to the streaming path; never reached.
        ShardAction::Proxy(_) | ShardAction::Aggregate(_) => ex.problem(
            500,
            "https://shardline.dev/problems/internal",
            "Internal Server Error",
            "routing changed between dispatch and handling",
            &[],
        ),
    }
}

/// Requests an `Idempotency-Key` applies to (the draft's non-idempotent
/// methods) when they carry one.
fn idempotency_candidate(head: &RequestHead<'_, '_>) -> bool {
    matches!(head.method, "POST" | "PATCH") && head.header("idempotency-key").is_some()
}

/// The `shardline_policy_rejections` metric of route `i`.
fn count_rejection(inner: &GatewayInner, i: usize, r: &Rejected) {
    if let Some(m) = inner.route_metrics.routes.get(i) {
        m.reject(&r.problem_type);
    }
}

fn reject_inline(ex: &mut Exchange<'_>, r: &Rejected) {
    let hs = r.header_refs();
    match &r.body {
        Some(body) => ex.respond(&ProtoResponse {
            status: r.status,
            headers: &hs,
            content_type: Some(b"application/problem+json"),
            body,
        }),
        None => ex.problem(r.status, &r.problem_type, r.title, &r.detail, &hs),
    }
}

async fn reject_stream(io: &mut ClientIo<'_>, r: &Rejected) {
    let hs = r.header_refs();
    match &r.body {
        Some(body) => {
            let mut out = io.take_buffer();
            let opts = io.encode_options();
            io.with_date(|date| {
                shardline_protocol::response::encode(
                    &mut out,
                    &ProtoResponse {
                        status: r.status,
                        headers: &hs,
                        content_type: Some(b"application/problem+json"),
                        body,
                    },
                    opts,
                    date,
                )
            });
            let _ = io.write_all(&out).await;
            io.put_buffer(out);
        }
        None => {
            io.send_problem(r.status, &r.problem_type, r.title, &r.detail, &hs)
                .await
        }
    }
}

/// The route whose CORS policy answers this preflight, if any.
fn preflight_route(inner: &GatewayInner, head: &RequestHead<'_, '_>) -> Option<usize> {
    head.header("origin")?;
    let method = std::str::from_utf8(head.header("access-control-request-method")?).ok()?;
    match inner.router.at(method, head.path) {
        Match::Found(&i, _) if inner.policies.has_cors(i) => Some(i),
        _ => None,
    }
}

fn answer_preflight(inner: &GatewayInner, ex: &mut Exchange<'_>) -> bool {
    let head = ex.head;
    let Some(i) = preflight_route(inner, head) else {
        return false;
    };
    match inner.policies.preflight(i, head) {
        Some(Ok(hs)) => {
            let refs: Vec<(&str, &[u8])> = hs.iter().map(|(n, v)| (*n, v.as_slice())).collect();
            ex.respond(&ProtoResponse {
                status: 204,
                headers: &refs,
                content_type: None,
                body: b"",
            });
            true
        }
        Some(Err(r)) => {
            count_rejection(inner, i, &r);
            reject_inline(ex, &r);
            true
        }
        None => false,
    }
}

fn options(ex: &mut Exchange<'_>, allow: &str) {
    ex.respond(&ProtoResponse {
        status: 204,
        headers: &[("Allow", allow.as_bytes())],
        content_type: None,
        body: b"",
    });
}

/// Most headers a `respond` action may configure (checked at load time).
pub(crate) const MAX_RESPOND_HEADERS: usize = 32;
