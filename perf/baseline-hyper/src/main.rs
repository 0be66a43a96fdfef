//! BASELINE for comparison, not product code.
//!
//! A tokio `current_thread` + hyper 1.x HTTP/1.1 server serving the same routes as
//! shardline's default config. `perf/compare` runs it pinned to one core beside
//! shardline (one shard) and nginx (one worker) so that the numbers say how shardline
//! does against the usual Rust stack on the same hardware. It is meant to be a fair,
//! strong peer: one thread, static bodies, pipelined responses batched into one write,
//! the same allocator and release profile as shardline.
//!
//! Usage: `baseline-hyper [--listen ADDR]` (default `127.0.0.1:8080`, port 0 picks a
//! free port); prints `listening ADDR` on stdout once bound.

use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

// The same allocator as shardline, so that it is not a variable in the comparison.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// shardline's default `max_body_bytes` (1 MiB): /echo refuses larger bodies with 413.
const MAX_ECHO_BODY_BYTES: usize = 1024 * 1024;
/// After a failed accept (usually EMFILE), wait this long before the next one instead
/// of spinning on an error that will not clear by itself at once.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

// Response bodies are static: `Bytes::from_static` neither copies nor allocates.
const PLAINTEXT_BODY: &[u8] = b"Hello, World!";
const JSON_BODY: &[u8] = br#"{"message":"Hello, World!"}"#;
const HEALTHZ_BODY: &[u8] = b"ok";
const NOT_FOUND_BODY: &[u8] = br#"{"type":"about:blank","title":"Not Found","status":404}"#;
const TOO_LARGE_BODY: &[u8] = br#"{"type":"about:blank","title":"Content Too Large","status":413}"#;
const BAD_BODY: &[u8] = br#"{"type":"about:blank","title":"Bad Request","status":400}"#;

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain");
const APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");
const PROBLEM_JSON: HeaderValue = HeaderValue::from_static("application/problem+json");
const OCTET_STREAM: HeaderValue = HeaderValue::from_static("application/octet-stream");
const ALLOW_GET_HEAD: HeaderValue = HeaderValue::from_static("GET, HEAD");
const ALLOW_POST: HeaderValue = HeaderValue::from_static("POST");

type Body = Full<Bytes>;

fn respond(status: StatusCode, content_type: HeaderValue, body: Bytes) -> Response<Body> {
    let mut res = Response::new(Full::new(body));
    *res.status_mut() = status;
    res.headers_mut().insert(CONTENT_TYPE, content_type);
    res
}

fn respond_static(
    status: StatusCode,
    content_type: HeaderValue,
    body: &'static [u8],
) -> Response<Body> {
    respond(status, content_type, Bytes::from_static(body))
}

fn method_not_allowed(allow: HeaderValue) -> Response<Body> {
    let mut res = respond(StatusCode::METHOD_NOT_ALLOWED, PROBLEM_JSON, Bytes::new());
    res.headers_mut().insert(ALLOW, allow);
    res
}

/// The route table of shardline's default config. hyper adds `Date` and
/// `Content-Length` (from `Full`'s exact size) and leaves out the body for HEAD.
async fn route(req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let is_get = matches!(*req.method(), Method::GET | Method::HEAD);
    let res = match req.uri().path() {
        "/plaintext" if is_get => respond_static(StatusCode::OK, TEXT_PLAIN, PLAINTEXT_BODY),
        "/json" if is_get => respond_static(StatusCode::OK, APPLICATION_JSON, JSON_BODY),
        "/healthz" if is_get => respond_static(StatusCode::OK, TEXT_PLAIN, HEALTHZ_BODY),
        "/plaintext" | "/json" | "/healthz" => method_not_allowed(ALLOW_GET_HEAD),
        "/echo" if req.method() == Method::POST => echo(req).await,
        "/echo" => method_not_allowed(ALLOW_POST),
        _ => respond_static(StatusCode::NOT_FOUND, PROBLEM_JSON, NOT_FOUND_BODY),
    };
    Ok(res)
}

/// POST /echo: the body back with the request's content type (as shardline's `echo`).
async fn echo(req: Request<Incoming>) -> Response<Body> {
    let content_type = req
        .headers()
        .get(CONTENT_TYPE)
        .cloned()
        .unwrap_or(OCTET_STREAM);
    match Limited::new(req.into_body(), MAX_ECHO_BODY_BYTES)
        .collect()
        .await
    {
        Ok(collected) => respond(StatusCode::OK, content_type, collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => {
            respond_static(StatusCode::PAYLOAD_TOO_LARGE, PROBLEM_JSON, TOO_LARGE_BODY)
        }
        // A malformed body (bad chunked framing) or a connection lost mid-body.
        Err(_) => respond_static(StatusCode::BAD_REQUEST, PROBLEM_JSON, BAD_BODY),
    }
}

fn parse_args() -> Result<SocketAddr, String> {
    let mut listen = DEFAULT_LISTEN.to_owned();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().ok_or("--listen needs a value (IP:PORT)")?,
            "-h" | "--help" => {
                println!("baseline-hyper [--listen IP:PORT]   (BASELINE for perf/compare)");
                std::process::exit(0);
            }
            other => {
                return Err(format!(
                    "unknown argument {other:?} (usage: baseline-hyper [--listen IP:PORT])"
                ))
            }
        }
    }
    listen
        .parse()
        .map_err(|e| format!("--listen {listen:?}: expected IP:PORT: {e}"))
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {}", listener.local_addr()?)?;
    stdout.flush()?;

    // One builder, cloned per connection (it is a handful of plain settings).
    let mut builder = http1::Builder::new();
    builder.keep_alive(true).pipeline_flush(true);

    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                eprintln!("baseline-hyper: accept: {e}");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        // Responses are small and complete: send them now rather than let Nagle wait
        // for the client's ACK (nginx and shardline do the same).
        if let Err(e) = stream.set_nodelay(true) {
            eprintln!("baseline-hyper: TCP_NODELAY: {e}");
        }
        let conn = builder.serve_connection(TokioIo::new(stream), service_fn(route));
        tokio::spawn(async move {
            // A client that resets or sends garbage ends only its own connection.
            let _ = conn.await;
        });
    }
}

fn main() {
    let addr = match parse_args() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("baseline-hyper: error: {e}");
            std::process::exit(2);
        }
    };
    // current_thread: the whole server runs on the thread that calls block_on, so
    // `taskset -c 0` gives it exactly one core, like one shardline shard.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baseline-hyper: error: cannot start the tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(addr)) {
        eprintln!("baseline-hyper: error: {addr}: {e}");
        std::process::exit(1);
    }
}
