//! The admin listener's app, served by shard 0: `/healthz`, `/readyz`,
//! `/metrics`, `/admin/slo`, `POST /admin/reload`.
//!
//! Probes answer inline. The others take the streaming path because they
//! wait on other shards: a scrape asks each shard for a snapshot by
//! message (`obs::hub`), a reload sends each shard the new config.

use std::rc::Rc;
use std::sync::Arc;

use shardline_protocol::response::Response;
use shardline_shard::{
    App, AppFactory, ClientIo, Dispatch, Exchange, ShardInfo, StreamFuture, StreamRequest,
};

use crate::obs::expo::{self, Format};
use crate::obs::hub;
use crate::obs::slo;
use crate::obs::ObsSetup;

/// Admin connections one shard accepts: probes and scrapers, not traffic.
pub(crate) const ADMIN_MAX_CONNECTIONS: usize = 256;
/// `POST /admin/reload` takes no body; one up to this size is read and
/// ignored so the connection stays usable.
const ADMIN_MAX_BODY_BYTES: u64 = 64 * 1024;

const TOKEN_METRICS: usize = 1;
const TOKEN_SLO: usize = 2;
const TOKEN_RELOAD: usize = 3;

pub(crate) struct AdminFactory {
    pub setup: Arc<ObsSetup>,
}

struct AdminApp {
    setup: Arc<ObsSetup>,
}

impl AppFactory for AdminFactory {
    fn build(&self, _shard: ShardInfo) -> Rc<dyn App> {
        Rc::new(AdminApp {
            setup: Arc::clone(&self.setup),
        })
    }
}

impl App for AdminApp {
    fn dispatch(&self, head: &shardline_protocol::request::RequestHead<'_, '_>) -> Dispatch {
        let token = match head.path {
            "/metrics" => TOKEN_METRICS,
            "/admin/slo" => TOKEN_SLO,
            "/admin/reload" => TOKEN_RELOAD,
            _ => return Dispatch::Inline(0),
        };
        Dispatch::Stream {
            token,
            max_body_bytes: ADMIN_MAX_BODY_BYTES,
        }
    }

    fn stream<'a>(
        &'a self,
        token: usize,
        req: &'a StreamRequest,
        io: &'a mut ClientIo<'_>,
    ) -> StreamFuture<'a> {
        Box::pin(async move {
            let mut fields = Vec::new();
            let head = req.head(&mut fields);
            let get = head.method == "GET" || head.method == "HEAD";
            let accept = head.header("accept");
            let method = head.method;
            if !discard_body(io).await {
                return;
            }
            let Some(coord) = hub::coordinator() else {
                io.send_problem(
                    503,
                    "https://shardline.dev/problems/not-ready",
                    "Service Unavailable",
                    "the gateway on this shard is not running",
                    &[],
                )
                .await;
                return;
            };
            match token {
                TOKEN_METRICS | TOKEN_SLO if !get => {
                    method_not_allowed(io, "GET, HEAD").await;
                }
                TOKEN_METRICS => {
                    // One scrape per connection when more requests are
                    // already queued behind it: a client pipelining scrapes
                    // without reading them would otherwise make shard 0
                    // render and hold one exposition (hundreds of KB with
                    // many routes) per queued request.
                    if io.has_pipelined() {
                        io.close_after();
                    }
                    let snaps = coord.gather().await;
                    let reports = reports(&snaps);
                    let fmt = Format::from_accept(accept);
                    let body = expo::render(&snaps, &reports, fmt);
                    send(io, 200, fmt.content_type(), body.as_bytes()).await;
                }
                TOKEN_SLO => {
                    let snaps = coord.gather().await;
                    let body = slo::to_json(&reports(&snaps));
                    send(io, 200, "application/json", body.as_bytes()).await;
                }
                _ if method != "POST" => method_not_allowed(io, "POST").await,
                _ => match crate::reload::reload(&self.setup, &coord).await {
                    Ok(msg) => {
                        let mut body = String::from("{\"status\":\"reloaded\",\"detail\":");
                        crate::obs::json::push_str(&mut body, &msg);
                        body.push('}');
                        send(io, 200, "application/json", body.as_bytes()).await;
                    }
                    Err(e) => {
                        io.send_problem(
                            422,
                            "https://shardline.dev/problems/config-invalid",
                            "Config Not Reloaded",
                            &format!("the running config was kept: {e}"),
                            &[],
                        )
                        .await;
                    }
                },
            }
        })
    }

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
                "admin endpoints: /healthz, /readyz, /metrics, /admin/slo, POST /admin/reload",
                &[],
            ),
        }
    }
}

/// SLO numbers from snapshots, using the definitions shard 0 runs.
fn reports(snaps: &[crate::obs::metrics::ShardSnapshot]) -> Vec<slo::SloReport> {
    let Some(first) = snaps.first() else {
        return Vec::new();
    };
    let per_shard: Vec<&[slo::SloSnapshot]> = snaps.iter().map(|s| s.slos.as_slice()).collect();
    slo::report(&first.slo_configs, &per_shard)
}

/// Reads and drops a request body; false if the connection is unusable.
async fn discard_body(io: &mut ClientIo<'_>) -> bool {
    let mut sink = Vec::new();
    while io.has_body() {
        sink.clear();
        match io.read_body(&mut sink, 16 * 1024).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                io.answer_body_failure(e).await;
                return false;
            }
        }
    }
    true
}

async fn method_not_allowed(io: &mut ClientIo<'_>, allow: &str) {
    io.send_problem(
        405,
        "https://shardline.dev/problems/method-not-allowed",
        "Method Not Allowed",
        "see the Allow header",
        &[("Allow", allow.as_bytes())],
    )
    .await;
}

async fn send(io: &mut ClientIo<'_>, status: u16, content_type: &str, body: &[u8]) {
    io.send_response(&Response {
        status,
        headers: &[],
        content_type: Some(content_type.as_bytes()),
        body,
    })
    .await;
}
