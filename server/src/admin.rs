//! The admin listener's app (`/healthz`, `/readyz`), served by shard 0.

use std::rc::Rc;

use shardline_protocol::response::Response;
use shardline_shard::{App, AppFactory, Exchange, ShardInfo};

/// Admin connections one shard accepts: probes and scrapers, not traffic.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 256;

pub(crate) struct AdminFactory;

struct AdminApp;

impl AppFactory for AdminFactory {
    fn build(&self, _shard: ShardInfo) -> Rc<dyn App> {
        Rc::new(AdminApp)
    }
}

impl App for AdminApp {
    fn handle(&self, ex: &mut Exchange<'_>) {
        let head = ex.head;
        let get = head.method == "GET" || head.method == "HEAD";
        match head.path {
            "/healthz" | "/readyz" if !get => ex.problem(
                405,
                "https://shardline.dev/problems/method-not-allowed",
                "Method Not Allowed",
                "admin probes answer GET and HEAD",
                &[("Allow", b"GET, HEAD")],
            ),
            // Liveness: the process is up and this shard's loop answers.
            "/healthz" => ex.respond(&Response {
                status: 200,
                headers: &[],
                content_type: Some(b"text/plain"),
                body: b"ok",
            }),
            // Readiness turns 503 as soon as a drain starts, so a load
            // balancer stops sending new connections first.
            "/readyz" if ex.draining() => ex.problem(
                503,
                "https://shardline.dev/problems/draining",
                "Service Unavailable",
                "the server is draining and will exit",
                &[],
            ),
            "/readyz" => ex.respond(&Response {
                status: 200,
                headers: &[],
                content_type: Some(b"text/plain"),
                body: b"ready",
            }),
            _ => ex.problem(
                404,
                "https://shardline.dev/problems/not-found",
                "Not Found",
                "admin endpoints: /healthz, /readyz",
                &[],
            ),
        }
    }
}
