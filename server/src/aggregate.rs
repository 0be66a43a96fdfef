//! The `aggregate` route action: fan a GET out to several upstreams at
//! once and answer one JSON object keyed by part name.
//!
//! Each part has its own timeout. A part that fails (connect error,
//! timeout, non-2xx status, malformed response) does not fail the whole
//! response: it is reported under `"errors"` as
//! `{"status": S, "title": T, "detail": D}`. Only when every part fails is
//! the answer a 502 (problem+json, with the same `errors` member). A part's
//! body is embedded as JSON when it is valid JSON and as a JSON string
//! otherwise. Parts are not retried: their timeout is the bound the route
//! promises, and the balancer and breaker still steer them.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use shardline_protocol::json::{validate_json, write_escaped};
use shardline_protocol::request::RequestHead;
use shardline_protocol::response::{self, Response};
use shardline_shard::{ClientIo, Params};

use crate::config_gateway::{AggregatePart, HostMode};
use crate::proxy::{fill_template, GatewayShard};
use crate::upstream::client::{self, BodyReader, Failure};
use crate::upstream::{InFlight, Pick, Upstream};

/// A part's body is buffered whole to embed it; past this size it is an
/// error, not a 100 MB JSON document assembled in memory.
pub const AGGREGATE_PART_MAX_BYTES: usize = 1 << 20;

pub(crate) struct Part {
    name: String,
    up: Rc<Upstream>,
    path: String,
    timeout: Duration,
}

pub(crate) struct Aggregate {
    parts: Vec<Part>,
}

impl Aggregate {
    pub(crate) fn new(parts: &[AggregatePart], upstreams: &[Rc<Upstream>]) -> Self {
        Aggregate {
            parts: parts
                .iter()
                .map(|p| Part {
                    name: p.name.clone(),
                    up: Rc::clone(&upstreams[p.upstream]),
                    path: p.path.clone(),
                    timeout: p.timeout,
                })
                .collect(),
        }
    }
}

/// What one part produced.
enum PartResult {
    Ok(Vec<u8>),
    Err {
        status: u16,
        title: &'static str,
        detail: String,
    },
}

fn failure(f: &Failure) -> PartResult {
    let status = f.status();
    PartResult::Err {
        status,
        title: response::reason_phrase(status),
        detail: f.detail(),
    }
}

async fn fetch(part: &Part, gw: &GatewayShard, request: Vec<u8>) -> PartResult {
    let up = &part.up;
    let now = Instant::now();
    let target = match up.pick(now, &[]) {
        Pick::Target(i) => i,
        Pick::NoneAvailable(_) => {
            return PartResult::Err {
                status: 503,
                title: "Service Unavailable",
                detail: "every target of this upstream is ejected".to_string(),
            }
        }
    };
    let t = &up.targets[target];
    let busy = InFlight::new(t);
    let epoch = busy.epoch();
    let deadline = now + part.timeout;
    let attempt = async {
        let mut stream = match t.pool.take(Instant::now(), up.cfg.idle_timeout, false) {
            Some(s) => s,
            None => {
                let s = client::connect(t, up.cfg.connect_timeout.min(part.timeout)).await?;
                t.pool.count_opened();
                s
            }
        };
        let mut bytes = request;
        if up.cfg.host == HostMode::Target {
            // Spliced after the request line, as for proxied requests.
            if let Some(at) = bytes.windows(2).position(|w| w == b"\r\n") {
                let line = format!("Host: {}\r\n", t.name);
                bytes.splice(at + 2..at + 2, line.bytes());
            }
        }
        client::send(&mut stream, &bytes)
            .await
            .map_err(Failure::Io)?;
        let mut buf = gw.take_read();
        let head = match client::read_head(&mut stream, &mut buf, false).await {
            Ok(h) => h,
            Err(e) => {
                gw.put_read(buf);
                return Err(e);
            }
        };
        // Decided before the body is read: the head's fields live in `buf`,
        // which reading the body refills.
        let declared_body_on_204 = head.declares_body_on_204(&buf.data);
        let mut reader = BodyReader::new(head.framing);
        let mut body = Vec::new();
        loop {
            match reader
                .next(&mut stream, &mut buf, &mut body, part.timeout, None)
                .await
            {
                Ok(0) => break,
                Ok(_) if body.len() > AGGREGATE_PART_MAX_BYTES => {
                    gw.put_read(buf);
                    return Err(Failure::Io(std::io::Error::other(
                        "the part's body is larger than 1 MiB",
                    )));
                }
                Ok(_) => {}
                Err(_) => {
                    gw.put_read(buf);
                    return Err(Failure::Io(std::io::Error::other(
                        "the upstream broke off the body",
                    )));
                }
            }
        }
        if head.keep_alive && !declared_body_on_204 && reader.done() && buf.pending().is_empty() {
            t.pool.put(stream, Instant::now());
        }
        gw.put_read(buf);
        Ok((head.status, body))
    };
    let result = match client::with_deadline(deadline, attempt).await {
        None => Err(Failure::Timeout),
        Some(r) => r,
    };
    let started = now;
    let now = Instant::now();
    up.record_latency(target, now.saturating_duration_since(started));
    match result {
        Ok((status, body)) => {
            up.record(target, !matches!(status, 502..=504), now, epoch);
            if (200..300).contains(&status) {
                PartResult::Ok(body)
            } else {
                PartResult::Err {
                    status,
                    title: response::reason_phrase(status),
                    detail: format!("the upstream answered {status}"),
                }
            }
        }
        Err(f) => {
            up.record(target, false, now, epoch);
            failure(&f)
        }
    }
}

fn part_request(
    part: &Part,
    head: &RequestHead<'_, '_>,
    params: &Params<'_, '_>,
    peer: std::net::SocketAddr,
) -> Vec<u8> {
    let path = fill_template(&part.path, params);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    match &part.up.cfg.host {
        HostMode::Preserve => {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(head.header("host").unwrap_or(b""));
            out.extend_from_slice(b"\r\n");
        }
        HostMode::Literal(h) => {
            out.extend_from_slice(b"Host: ");
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        HostMode::Target => {}
    }
    out.extend_from_slice(b"Accept: application/json\r\n");
    // Identity and tracing context travel with each part.
    for name in ["authorization", "x-request-id", "traceparent", "tracestate"] {
        if let Some(v) = head.header(name) {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    out.extend_from_slice(peer.ip().to_string().as_bytes());
    out.extend_from_slice(b"\r\nX-Forwarded-Proto: http\r\n\r\n");
    out
}

/// Polls every future to completion concurrently; results in order.
async fn join_all<T>(mut futs: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut results: Vec<Option<T>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if results[i].is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => results[i] = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

pub(crate) async fn serve(
    a: &Aggregate,
    gw: &GatewayShard,
    head: &RequestHead<'_, '_>,
    params: &Params<'_, '_>,
    io: &mut ClientIo<'_>,
) {
    let peer = io.peer();
    let futs: Vec<Pin<Box<dyn Future<Output = PartResult> + '_>>> = a
        .parts
        .iter()
        .map(|p| {
            let req = part_request(p, head, params, peer);
            Box::pin(fetch(p, gw, req)) as Pin<Box<dyn Future<Output = PartResult> + '_>>
        })
        .collect();
    let results = join_all(futs).await;

    let mut body = Vec::with_capacity(1024);
    let mut errors = Vec::new();
    let mut ok = 0;
    body.push(b'{');
    for (part, result) in a.parts.iter().zip(results) {
        match result {
            PartResult::Ok(mut bytes) => {
                ok += 1;
                if body.len() > 1 {
                    body.push(b',');
                }
                write_escaped(&mut body, &part.name);
                body.push(b':');
                let mut probe = bytes.clone();
                if !bytes.is_empty() && validate_json(&mut probe) {
                    body.append(&mut bytes);
                } else {
                    write_escaped(&mut body, &String::from_utf8_lossy(&bytes));
                }
            }
            PartResult::Err {
                status,
                title,
                detail,
            } => {
                if !errors.is_empty() {
                    errors.push(b',');
                }
                write_escaped(&mut errors, &part.name);
                errors.extend_from_slice(b":{\"status\":");
                errors.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
                errors.extend_from_slice(b",\"title\":");
                write_escaped(&mut errors, title);
                errors.extend_from_slice(b",\"detail\":");
                write_escaped(&mut errors, &detail);
                errors.push(b'}');
            }
        }
    }
    if ok == 0 {
        // Every part failed: a 502 problem that still says why per part.
        let mut problem = Vec::with_capacity(256 + errors.len());
        problem.extend_from_slice(
            b"{\"type\":\"https://shardline.dev/problems/bad-gateway\",\"title\":\"Bad Gateway\",\"status\":502,\"detail\":\"every part of the aggregate failed\",\"errors\":{",
        );
        problem.extend_from_slice(&errors);
        problem.extend_from_slice(b"}}");
        send(io, 502, b"application/problem+json", &problem).await;
        return;
    }
    if !errors.is_empty() {
        if body.len() > 1 {
            body.push(b',');
        }
        body.extend_from_slice(b"\"errors\":{");
        body.extend_from_slice(&errors);
        body.push(b'}');
    }
    body.push(b'}');
    send(io, 200, b"application/json", &body).await;
}

async fn send(io: &mut ClientIo<'_>, status: u16, content_type: &[u8], body: &[u8]) {
    io.send_response(&Response {
        status,
        headers: &[],
        content_type: Some(content_type),
        body,
    })
    .await;
}
