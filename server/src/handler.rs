//! The library API for Rust handlers: [`Handler`], [`Request`], [`Response`].
//!
//! A handler is built once per shard by its factory (so it may own `Rc`,
//! `RefCell`, caches: shard-local state without locks) and is called on that
//! shard for every request routed to it with `handler = "NAME"`.

use std::net::SocketAddr;

use shardline_protocol::request::RequestHead;
use shardline_protocol::response::Response as ProtoResponse;
use shardline_shard::{Exchange, Params, ShardInfo};

/// Answers requests on one shard.
pub trait Handler {
    fn call(&self, req: &Request<'_>, res: &mut Response<'_, '_>);
}

impl<F> Handler for F
where
    F: Fn(&Request<'_>, &mut Response<'_, '_>),
{
    fn call(&self, req: &Request<'_>, res: &mut Response<'_, '_>) {
        self(req, res)
    }
}

/// Builds a shard's instance of a handler, on that shard's thread.
pub trait HandlerFactory: Send + Sync {
    fn build(&self, shard: ShardInfo) -> Box<dyn Handler>;
}

impl<F, H> HandlerFactory for F
where
    F: Fn(ShardInfo) -> H + Send + Sync,
    H: Handler + 'static,
{
    fn build(&self, shard: ShardInfo) -> Box<dyn Handler> {
        Box::new(self(shard))
    }
}

/// A request as a handler sees it; everything borrows the connection's
/// buffer.
pub struct Request<'a> {
    head: &'a RequestHead<'a, 'a>,
    body: &'a [u8],
    params: Params<'a, 'a>,
    peer: SocketAddr,
    shard: ShardInfo,
    tls: bool,
    tls_client_identity: Option<&'a str>,
}

impl<'a> Request<'a> {
    pub(crate) fn new(ex: &Exchange<'a>, params: Params<'a, 'a>) -> Self {
        Request {
            head: ex.head,
            body: ex.body,
            params,
            peer: ex.peer,
            shard: ex.shard,
            tls: ex.is_tls(),
            tls_client_identity: ex.tls_client_identity(),
        }
    }

    /// The request arrived on the HTTPS listener.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The verified client certificate's identity (mTLS,
    /// `[server.tls.client_auth]`): its subject common name, else its first
    /// subject alternative name; `None` without a client certificate.
    pub fn tls_client_identity(&self) -> Option<&'a str> {
        self.tls_client_identity
    }

    pub fn method(&self) -> &'a str {
        self.head.method
    }

    /// The path as received (not percent-decoded), without the query.
    pub fn path(&self) -> &'a str {
        self.head.path
    }

    pub fn query(&self) -> Option<&'a str> {
        self.head.query
    }

    /// The first field named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.head.header(name)
    }

    /// A `{name}` captured by the route's path template.
    pub fn param(&self, name: &str) -> Option<&'a str> {
        self.params.get(name)
    }

    pub fn body(&self) -> &'a [u8] {
        self.body
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn shard(&self) -> ShardInfo {
        self.shard
    }

    pub fn head(&self) -> &'a RequestHead<'a, 'a> {
        self.head
    }
}

/// The response being written for one request.
pub struct Response<'e, 'x> {
    ex: &'e mut Exchange<'x>,
}

impl<'e, 'x> Response<'e, 'x> {
    pub(crate) fn new(ex: &'e mut Exchange<'x>) -> Self {
        Response { ex }
    }

    pub fn send(&mut self, status: u16, content_type: &str, body: &[u8]) {
        self.send_with_headers(status, content_type, &[], body);
    }

    pub fn send_with_headers(
        &mut self,
        status: u16,
        content_type: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
    ) {
        self.ex.respond(&ProtoResponse {
            status,
            headers,
            content_type: Some(content_type.as_bytes()),
            body,
        });
    }

    /// An RFC 9457 `application/problem+json` response.
    pub fn problem(&mut self, status: u16, problem_type: &str, title: &str, detail: &str) {
        self.ex.problem(status, problem_type, title, detail, &[]);
    }

    /// Close the connection after this response.
    pub fn close(&mut self) {
        self.ex.close_after();
    }
}

/// The built-in `echo` handler: the request body back, with its content type.
pub(crate) fn echo(req: &Request<'_>, res: &mut Response<'_, '_>) {
    let ct = req
        .header("content-type")
        .unwrap_or(b"application/octet-stream");
    res.ex.respond(&ProtoResponse {
        status: 200,
        headers: &[],
        content_type: Some(ct),
        body: req.body(),
    });
}
