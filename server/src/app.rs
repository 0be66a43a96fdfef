//! The gateway's per-shard [`App`]: route matching and route actions.

use std::rc::Rc;
use std::sync::Arc;

use shardline_protocol::response::Response as ProtoResponse;
use shardline_shard::{App, AppFactory, Exchange, Match, Methods, Router, ShardInfo};

use crate::config::{Action, Config};
use crate::handler::{self, Handler, HandlerFactory, Request, Response};

/// Route table and handler factories shared (immutably) by all shards.
pub(crate) struct GatewayFactory {
    router: Arc<Router<usize>>,
    config: Arc<Config>,
    handlers: Arc<Vec<(String, Arc<dyn HandlerFactory>)>>,
}

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
        Ok(GatewayFactory {
            router: Arc::new(router),
            config,
            handlers,
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
}

struct GatewayApp {
    router: Arc<Router<usize>>,
    actions: Vec<ShardAction>,
}

impl AppFactory for GatewayFactory {
    fn build(&self, shard: ShardInfo) -> Rc<dyn App> {
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
            })
            .collect();
        Rc::new(GatewayApp {
            router: Arc::clone(&self.router),
            actions,
        })
    }
}

impl App for GatewayApp {
    fn handle(&self, ex: &mut Exchange<'_>) {
        let head = ex.head;
        match self.router.at(head.method, head.path) {
            Match::Found(&i, params) => match &self.actions[i] {
                ShardAction::Respond {
                    status,
                    body,
                    content_type,
                    headers,
                } => {
                    // At most a handful of configured headers; a small stack
                    // array avoids a per-request Vec.
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
                ShardAction::Handler(h) => {
                    let req = Request::new(ex, params);
                    let mut res = Response::new(ex);
                    h.call(&req, &mut res);
                }
            },
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

/// Most headers a `respond` action may configure (checked at load time).
pub(crate) const MAX_RESPOND_HEADERS: usize = 32;
