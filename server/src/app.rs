//! The gateway's per-shard [`App`]: route matching and route actions.

use std::rc::Rc;
use std::sync::Arc;

use shardline_protocol::limits::MAX_HEADERS_CAP;
use shardline_protocol::request::RequestHead;
use shardline_protocol::response::Response as ProtoResponse;
use shardline_shard::{
    App, AppFactory, ClientIo, Dispatch, Exchange, Match, Methods, Router, ShardInfo, StreamFuture,
    StreamRequest,
};

use crate::aggregate::{self, Aggregate};
use crate::config::{Action, Config};
use crate::handler::{self, Handler, HandlerFactory, Request, Response};
use crate::policy::{self as pol, Passed, Rejected, ShardPolicies};
use crate::proxy::{self, GatewayShard, Proxy};
use crate::upstream::{self, Upstream};

/// Token for requests no route matches (404, 405, 501, OPTIONS): they are
/// answered inline by matching again, a cold path.
const NO_ROUTE: usize = usize::MAX;
/// Token for CORS preflights a route's policy answers.
const PREFLIGHT: usize = usize::MAX - 1;

/// Bodies buffered whole for validation on streamed routes are bounded by
/// this (and by the route's own limit): a JSON document to check against a
/// schema has no business being bigger, and it is held in memory.
const MAX_VALIDATED_BODY_BYTES: u64 = 16 << 20;

/// Route table and handler factories shared (immutably) by all shards.
pub(crate) struct GatewayFactory {
    router: Arc<Router<usize>>,
    config: Arc<Config>,
    handlers: Arc<Vec<(String, Arc<dyn HandlerFactory>)>>,
    known_methods: Arc<Vec<String>>,
    server_allow: Arc<str>,
}

/// RFC 9110 §9.3 methods.
const STANDARD_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

impl GatewayFactory {
    pub(crate) fn new(
        config: Arc<Config>,
        handlers: Arc<Vec<(String, Arc<dyn HandlerFactory>)>>,
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
        Ok(GatewayFactory {
            router: Arc::new(router),
            config,
            handlers,
            known_methods: Arc::new(methods),
            server_allow: Arc::from(server_allow),
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

struct GatewayApp {
    router: Arc<Router<usize>>,
    actions: Vec<ShardAction>,
    /// Body limit per route (streamed routes may exceed the server's).
    body_limits: Vec<u64>,
    gw: GatewayShard,
    known_methods: Arc<Vec<String>>,
    server_allow: Arc<str>,
    policies: Rc<ShardPolicies>,
    header_buf: std::cell::RefCell<Vec<u8>>,
}

impl AppFactory for GatewayFactory {
    fn build(&self, shard: ShardInfo) -> Rc<dyn App> {
        // This shard's own upstream state; health checks run as tasks of
        // this shard's executor.
        let upstreams: Vec<Rc<Upstream>> = self
            .config
            .upstreams
            .iter()
            .map(|u| Rc::new(Upstream::new(Arc::new(u.clone()), shard.id)))
            .collect();
        for u in &upstreams {
            if u.cfg.health_check.is_some() {
                glommio::spawn_local(upstream::health::run(Rc::clone(u))).detach();
            }
        }
        let actions = self
            .config
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
                    let factory = self.handlers.iter().find(|(n, _)| n == name);
                    match factory {
                        Some((_, f)) => ShardAction::Handler(f.build(shard)),
                        // Validated in `new`: only "echo" is left.
                        None => ShardAction::Handler(Box::new(handler::echo)),
                    }
                }
                Action::Upstream(pr) => ShardAction::Proxy(Box::new(Proxy {
                    up: Rc::clone(&upstreams[pr.upstream]),
                    strip_prefix: pr.strip_prefix.clone(),
                    rewrite: pr.rewrite.clone(),
                    timeout: pr
                        .timeout
                        .unwrap_or(self.config.upstreams[pr.upstream].request_timeout),
                    cache: pr.cache.as_ref().map(crate::cache_glue::RouteCache::new),
                })),
                Action::Aggregate(parts) => {
                    ShardAction::Aggregate(Aggregate::new(parts, &upstreams))
                }
            })
            .collect();
        let body_limits = self
            .config
            .routes
            .iter()
            .map(|r| {
                r.max_body_bytes
                    .unwrap_or(self.config.server.max_body_bytes)
            })
            .collect();
        Rc::new(GatewayApp {
            router: Arc::clone(&self.router),
            actions,
            body_limits,
            gw: GatewayShard::new(),
            known_methods: Arc::clone(&self.known_methods),
            server_allow: Arc::clone(&self.server_allow),
            policies: ShardPolicies::for_shard(&self.config, shard),
            header_buf: std::cell::RefCell::new(Vec::with_capacity(512)),
        })
    }
}

impl App for GatewayApp {
    fn dispatch(&self, head: &RequestHead<'_, '_>) -> Dispatch {
        if self.policies.any_cors
            && head.method == "OPTIONS"
            && self.preflight_route(head).is_some()
        {
            return Dispatch::Inline(PREFLIGHT);
        }
        match self.router.at(head.method, head.path) {
            Match::Found(&i, _)
                if (self.policies.idempotency(i).is_some() && idempotency_candidate(head))
                    || self.policies.quota_waits(i) =>
            {
                Dispatch::Stream {
                    token: i,
                    max_body_bytes: self.body_limits[i],
                }
            }
            Match::Found(&i, _) => match &self.actions[i] {
                ShardAction::Proxy(_) | ShardAction::Aggregate(_) => Dispatch::Stream {
                    token: i,
                    max_body_bytes: self.body_limits[i],
                },
                _ => Dispatch::Inline(i),
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
            let Some(action) = self.actions.get(token) else {
                return;
            };
            if !self.policies.active(token) {
                self.run_stream_action(action, token, req, io).await;
                return;
            }
            let Some((req, consumer)) = self.stream_policies(token, req, io).await else {
                return;
            };
            match self.policies.idempotency(token) {
                Some(cfg) => {
                    self.idempotent(cfg, action, token, &req, consumer, io)
                        .await
                }
                None => self.run_stream_action(action, token, &req, io).await,
            }
        })
    }

    fn shutdown(&self) {
        self.policies.shutdown();
    }

    // `Rejected` is large, but only ever built on the refusal path.
    #[allow(clippy::result_large_err)]
    fn handle(&self, ex: &mut Exchange<'_>) {
        let head = ex.head;
        let token = ex.token();
        if token == PREFLIGHT && self.answer_preflight(ex) {
            return;
        }
        if token != NO_ROUTE && !self.policies.active(token) {
            if let Some(ShardAction::Respond {
                status,
                body,
                content_type,
                headers,
            }) = self.actions.get(token)
            {
                if headers.is_empty() {
                    ex.respond(&ProtoResponse {
                        status: *status,
                        headers: &[],
                        content_type: content_type.as_deref(),
                        body,
                    });
                    return;
                }
            }
        }
        let matched = self.router.at(head.method, head.path);
        if let Match::Found(&i, params) = &matched {
            if self.policies.active(i) {
                // The shard's reused buffer for the fields policies add.
                let mut passed = Passed {
                    response_headers: self.header_buf.take(),
                    ..Passed::default()
                };
                let checked = self
                    .policies
                    .check(i, head, ex.peer, params, &mut passed, Default::default())
                    .and_then(|()| self.policies.check_body(i, head, ex.body));
                match checked {
                    Err(r) => reject_inline(ex, &r),
                    Ok(()) => self.run_inline(ex, matched),
                }
                ex.insert_headers(&passed.response_headers);
                let mut buf = passed.response_headers;
                buf.clear();
                self.header_buf.replace(buf);
                return;
            }
        }
        self.run_inline(ex, matched);
    }
}

impl GatewayApp {
    /// The route whose CORS policy answers this preflight, if any.
    fn preflight_route(&self, head: &RequestHead<'_, '_>) -> Option<usize> {
        head.header("origin")?;
        let method = std::str::from_utf8(head.header("access-control-request-method")?).ok()?;
        match self.router.at(method, head.path) {
            Match::Found(&i, _) if self.policies.has_cors(i) => Some(i),
            _ => None,
        }
    }

    fn answer_preflight(&self, ex: &mut Exchange<'_>) -> bool {
        let head = ex.head;
        let Some(i) = self.preflight_route(head) else {
            return false;
        };
        match self.policies.preflight(i, head) {
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
                reject_inline(ex, &r);
                true
            }
            None => false,
        }
    }

    /// The head and body policies of a streamed route; `None` when the
    /// request was refused (and answered). The request returned carries
    /// the head to send on (request id, traceparent).
    async fn stream_policies(
        &self,
        token: usize,
        req: &StreamRequest,
        io: &mut ClientIo<'_>,
    ) -> Option<(StreamRequest, Option<Vec<u8>>)> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let head = req.head(&mut headers)?;
        let params = match self.router.at(head.method, head.path) {
            Match::Found(_, params) => params,
            _ => Default::default(),
        };
        let mut passed = Passed::default();
        let wait = pol::CheckMode {
            can_wait: true,
            retry: false,
        };
        let mut checked = self
            .policies
            .check(token, &head, io.peer(), &params, &mut passed, wait);
        if let Err(Rejected {
            wait_lease: Some(full),
            ..
        }) = &checked
        {
            // This shard's quota share is waiting for its lease: wait for
            // the owner's answer, then check again (without charging the
            // rate limit twice).
            self.policies.wait_lease(full).await;
            passed = Passed::default();
            let retry = pol::CheckMode {
                can_wait: false,
                retry: true,
            };
            checked = self
                .policies
                .check(token, &head, io.peer(), &params, &mut passed, retry);
        }
        io.add_response_headers(&passed.response_headers);
        if let Err(r) = checked {
            // The body is not read: close rather than read it for nothing.
            if io.has_body() {
                io.close_after();
            }
            reject_stream(io, &r).await;
            return None;
        }
        if self.policies.validates_body(token) {
            let limit = self.body_limits[token].min(MAX_VALIDATED_BODY_BYTES);
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let res = match io.buffer_body(limit).await {
                Ok(body) => self.policies.check_body(token, &head, body),
                Err(e) => {
                    proxy::client_body_failed(io, e).await;
                    return None;
                }
            };
            if let Err(r) = res {
                reject_stream(io, &r).await;
                return None;
            }
        }
        let mut h = io.take_buffer();
        pol::upstream_head(&head, &passed, &mut h);
        Some((req.with_head(h), passed.consumer.take()))
    }

    /// Runs a route's action on the streaming path.
    async fn run_stream_action(
        &self,
        action: &ShardAction,
        token: usize,
        req: &StreamRequest,
        io: &mut ClientIo<'_>,
    ) {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let Some(head) = req.head(&mut headers) else {
            return;
        };
        let params = match self.router.at(head.method, head.path) {
            Match::Found(_, params) => params,
            _ => Default::default(),
        };
        match action {
            ShardAction::Proxy(p) => {
                // The path sent upstream, from the route's params.
                let path = proxy::upstream_path(
                    head.path,
                    p.strip_prefix.as_deref(),
                    p.rewrite.as_deref(),
                    &params,
                );
                crate::cache_glue::serve(p, &self.gw, req, io, &path).await;
            }
            ShardAction::Aggregate(a) => {
                aggregate::serve(a, &self.gw, &head, &params, io).await;
            }
            ShardAction::Respond { .. } | ShardAction::Handler(_) => {
                // A synchronous action sent down this path by a policy
                // (idempotency): buffer the body, answer as inline.
                let limit = usize::try_from(self.body_limits[token]).unwrap_or(usize::MAX);
                let body = match io.buffer_body(limit).await {
                    Ok(b) => b.to_vec(),
                    Err(e) => {
                        proxy::client_body_failed(io, e).await;
                        return;
                    }
                };
                io.serve_inline(&head, &body, token, |ex| {
                    let matched = self.router.at(ex.head.method, ex.head.path);
                    self.run_inline(ex, matched);
                })
                .await;
            }
        }
    }

    /// A request on a route with idempotency keys (see `policy::idempotency`).
    async fn idempotent(
        &self,
        cfg: &crate::policy::config::IdempotencyConfig,
        action: &ShardAction,
        token: usize,
        req: &StreamRequest,
        consumer: Option<Vec<u8>>,
        io: &mut ClientIo<'_>,
    ) {
        use crate::policy::idempotency::{self as idem, Begin};
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS_CAP];
        let Some(head) = req.head(&mut headers) else {
            return;
        };
        let key = match head.header("idempotency-key") {
            Some(k) if idempotency_candidate(&head) => k.to_vec(),
            _ => {
                self.run_stream_action(action, token, req, io).await;
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
        let limit = usize::try_from(self.body_limits[token].min(MAX_VALIDATED_BODY_BYTES))
            .unwrap_or(usize::MAX);
        let fp = match io.buffer_body(limit).await {
            Ok(body) => idem::fingerprint(head.method, head.target, body),
            Err(e) => {
                proxy::client_body_failed(io, e).await;
                return;
            }
        };
        let scoped = idem::scoped_key(token, consumer.as_deref().unwrap_or(b""), &key);
        match self.policies.idem.begin(&scoped, fp, cfg.max_keys).await {
            Begin::Proceed => {
                let guard = idem::Guard {
                    idem: &self.policies.idem,
                    key: scoped,
                    fp,
                    ttl: cfg.ttl,
                    done: false,
                };
                io.capture_response(cfg.max_response_bytes);
                self.run_stream_action(action, token, req, io).await;
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

    fn run_inline(&self, ex: &mut Exchange<'_>, matched: Match<'_, '_, usize>) {
        let head = ex.head;
        match matched {
            Match::Found(&i, params) => match &self.actions[i] {
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
                        let mut hs: [(&str, &[u8]); MAX_RESPOND_HEADERS] =
                            [("", &[]); MAX_RESPOND_HEADERS];
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
                // Dispatched to the streaming path; never reached.
                ShardAction::Proxy(_) | ShardAction::Aggregate(_) => ex.problem(
                    500,
                    "https://shardline.dev/problems/internal",
                    "Internal Server Error",
                    "routing changed between dispatch and handling",
                    &[],
                ),
            },
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
            _ if !self.known_methods.iter().any(|m| m == head.method) => ex.problem(
                501,
                "https://shardline.dev/problems/method-not-implemented",
                "Not Implemented",
                "the server does not implement this request method",
                &[],
            ),
            // RFC 9110 §9.3.7: OPTIONS without a route of its own says what
            // the target (or, for `*`, the server) allows.
            _ if head.method == "OPTIONS" && head.path == "*" => {
                options(ex, &self.server_allow);
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
    }
}

/// Requests an `Idempotency-Key` applies to (the draft's non-idempotent
/// methods) when they carry one.
fn idempotency_candidate(head: &RequestHead<'_, '_>) -> bool {
    matches!(head.method, "POST" | "PATCH") && head.header("idempotency-key").is_some()
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
