//! The response cache in front of an upstream route: lookup, request
//! coalescing, storing, conditional requests and stale-if-error. The rules
//! themselves (keys, Cache-Control, Vary, ETag, LRU) live in `cache`; this
//! file is the async part that talks to the client and the upstream.
//!
//! Per shard and per route: each shard caches what its own connections
//! fetched, so a route's `max_entries`/`max_bytes` are per shard and a key
//! may be fetched once per shard (never once per concurrent request:
//! concurrent misses on a shard wait for the first one).

use std::borrow::Cow;
use std::cell::RefCell;
use std::rc::Rc;
use std::task::Poll;
use std::time::Instant;

use shardline_protocol::request::RequestHead;
use shardline_protocol::response::{self, BodyDelimit};
use shardline_protocol::response_head::ResponseFraming;
use shardline_shard::{ClientIo, Exchange};

use crate::cache::inflight::{LeaderFailure, Verdict};
use crate::cache::{
    is_cacheable_method, primary_key, CacheLimits, CachedResponse, InFlight, Lookup, NewEntry,
    RequestDirectives, ResponseCache,
};
use crate::config_gateway::CacheConfig;
use crate::proxy::{self, Answer, GatewayShard, Outcome, Proxy};
use crate::upstream::client::BodyReader;

/// One route's cache on one shard.
pub(crate) struct RouteCache {
    store: RefCell<ResponseCache>,
    inflight: RefCell<InFlight>,
}

impl RouteCache {
    pub(crate) fn new(cfg: &CacheConfig) -> Self {
        RouteCache {
            store: RefCell::new(ResponseCache::new(CacheLimits {
                ttl: cfg.ttl,
                max_entries: cfg.max_entries,
                max_bytes: cfg.max_bytes,
                max_entry_bytes: cfg.max_entry_bytes,
                stale_if_error: cfg.stale_if_error,
            })),
            inflight: RefCell::new(InFlight::new()),
        }
    }

    /// Counters plus entries and bytes held, for the metrics endpoint.
    pub(crate) fn stats(&self) -> (crate::cache::store::CacheStats, usize, u64) {
        let s = self.store.borrow();
        (s.stats(), s.len(), s.bytes())
    }
}

/// Ends a coalescing leadership however the leader's future ends (an
/// answer, an error, or the client going away and the future being
/// dropped), so followers never wait on a leader that is gone.
struct Leader<'a> {
    cache: &'a RouteCache,
    key: Box<[u8]>,
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.cache.inflight.borrow_mut().finish(&self.key);
    }
}

fn values<'b>(head: &RequestHead<'b, '_>, name: &str) -> Vec<&'b [u8]> {
    head.headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value)
        .collect()
}

pub(crate) async fn serve(
    p: &Proxy,
    gw: &GatewayShard,
    head: &RequestHead<'_, '_>,
    io: &mut ClientIo<'_>,
    path: &str,
) {
    let Some(cache) = &p.cache else {
        proxy::serve(p, gw, head, io, path, &[]).await;
        return;
    };
    if !is_cacheable_method(head.method) {
        // RFC 9111 §4.4: an unsafe method on a URI invalidates what is
        // stored for it (done before forwarding: a stale entry must not
        // outlive a change that may succeed).
        if !matches!(head.method, "OPTIONS" | "TRACE") {
            cache.store.borrow_mut().invalidate(head.path, head.query);
        }
        proxy::serve(p, gw, head, io, path, &[]).await;
        return;
    }
    let directives = RequestDirectives::parse(&values(head, "cache-control"));
    if directives.bypasses() {
        io.set_cache_status("BYPASS");
        proxy::serve(p, gw, head, io, path, &[("X-Cache", b"BYPASS")]).await;
        return;
    }
    let Some(key) = primary_key("GET", head.path, head.query) else {
        proxy::serve(p, gw, head, io, path, &[]).await;
        return;
    };
    let inm = values(head, "if-none-match");
    let mut waited: Option<Verdict> = None;
    let mut stale: Option<Rc<CachedResponse>> = None;
    let mut leader: Option<Leader<'_>> = None;
    loop {
        let now = Instant::now();
        // Uncounted: a follower looks twice; each request counts once, as
        // a hit when answered from the cache, else as a miss.
        let found = cache.store.borrow_mut().lookup_uncounted(
            head.method,
            head.path,
            head.query,
            |n| request_field(head, n),
            now,
        );
        match found {
            // RFC 9111 §5.2.1.1: a copy older than the request's `max-age`
            // does not answer it, fresh or not; go upstream (and store the
            // new answer for everyone).
            Lookup::Fresh(entry)
                if directives
                    .max_age
                    .is_some_and(|_| !entry.satisfies(&directives, now)) => {}
            Lookup::Fresh(entry) => {
                cache.store.borrow_mut().record_hit();
                respond_cached(io, &entry, XCache::Hit, &inm).await;
                return;
            }
            Lookup::Stale(entry) => stale = Some(entry),
            Lookup::Miss => {}
        }
        if let Some(verdict) = &waited {
            // Cloned, not taken: every follower reads the same verdict.
            let failure = verdict.borrow().clone();
            if let Some(why) = failure {
                // The request we waited for failed: answer from a stale
                // copy (stale-if-error) or with the same failure, rather
                // than repeat at once what just failed.
                cache.store.borrow_mut().record_miss();
                match stale {
                    Some(entry) => {
                        cache.store.borrow_mut().record_stale_served();
                        respond_cached(io, &entry, XCache::Stale, &inm).await;
                    }
                    None => answer_leader_failure(io, why).await,
                }
                return;
            }
            // The request we waited for did not leave a usable entry (not
            // storable, or another Vary variant): go upstream ourselves.
            break;
        }
        if cache.inflight.borrow_mut().begin(&key) {
            leader = Some(Leader {
                cache,
                key: key.clone(),
            });
            break;
        }
        let mut verdict = None;
        std::future::poll_fn(
            |cx| match cache.inflight.borrow_mut().wait(&key, cx.waker()) {
                Some(v) => {
                    verdict = Some(v);
                    Poll::Pending
                }
                None => Poll::Ready(()),
            },
        )
        .await;
        // A leader that ended before this follower registered leaves no
        // verdict: look again, as after any non-failure.
        waited = Some(verdict.unwrap_or_default());
    }

    cache.store.borrow_mut().record_miss();
    let Ok(out) = proxy::prepare(head, path, &p.up, io).await else {
        return;
    };
    let outcome = proxy::exchange(&p.up, gw, &out, io, p.timeout).await;
    io.put_buffer(out.bytes);
    let answer = match outcome {
        Outcome::Answer(a) if a.head.status >= 500 && stale.is_some() => {
            // Not read further: its head is its verdict.
            proxy::settle(&p.up, a.target, a.judged, a.epoch, proxy::TryEnd::Complete);
            gw.put_read(a.buf);
            None
        }
        Outcome::Answer(a) => Some(a),
        Outcome::ClientGone => return,
        other => {
            if let Some(l) = &leader {
                let why = match &other {
                    Outcome::Unavailable(after) => Some(LeaderFailure::Unavailable(*after)),
                    Outcome::Failed(f) => Some(LeaderFailure::Failed {
                        status: f.status(),
                        detail: f.detail(),
                    }),
                    _ => None,
                };
                if let Some(why) = why {
                    cache.inflight.borrow_mut().fail(&l.key, why);
                }
            }
            if stale.is_none() {
                proxy::answer_failure(io, other).await;
                return;
            }
            None
        }
    };
    let Some(answer) = answer else {
        if let Some(entry) = stale {
            cache.store.borrow_mut().record_stale_served();
            respond_cached(io, &entry, XCache::Stale, &inm).await;
        }
        return;
    };
    store_and_forward(p, gw, cache, head, io, *answer, &inm, stale, &mut leader).await;
    drop(leader);
}

/// A follower's answer when the request it waited for failed: the same
/// status, saying why.
async fn answer_leader_failure(io: &mut ClientIo<'_>, why: LeaderFailure) {
    let outcome = match why {
        LeaderFailure::Unavailable(after) => Outcome::Unavailable(after),
        LeaderFailure::Failed { status, detail } => {
            Outcome::Failed(crate::upstream::client::Failure::Coalesced { status, detail })
        }
    };
    proxy::answer_failure(io, outcome).await;
}

/// Forwards a fresh upstream answer, storing it when its head says it may
/// be stored. `stale` answers instead if the body breaks before anything
/// was sent (stale-if-error); `leader` is this request's claim on the key,
/// given up as soon as the head shows nothing will be stored, so waiting
/// followers go upstream themselves instead of waiting for this body.
#[allow(clippy::too_many_arguments)] // One miss's full context.
async fn store_and_forward(
    p: &Proxy,
    gw: &GatewayShard,
    cache: &RouteCache,
    head: &RequestHead<'_, '_>,
    io: &mut ClientIo<'_>,
    answer: Answer,
    inm: &[&[u8]],
    stale: Option<Rc<CachedResponse>>,
    leader: &mut Option<Leader<'_>>,
) {
    io.set_cache_status("MISS");
    let miss: &[(&str, &[u8])] = &[("X-Cache", b"MISS")];
    let buf = &answer.buf.data;
    let ah = &answer.head;
    let cc: Vec<&[u8]> = ah
        .fields(buf)
        .filter(|(n, _)| n.eq_ignore_ascii_case("cache-control"))
        .map(|(_, v)| v)
        .collect();
    let vary: Vec<&[u8]> = ah
        .fields(buf)
        .filter(|(n, _)| n.eq_ignore_ascii_case("vary"))
        .map(|(_, v)| v)
        .collect();
    let declared = match ah.framing {
        ResponseFraming::ContentLength(n) => n,
        _ => 0,
    };
    // A response that sets a cookie is one user's, whatever its
    // Cache-Control says; a HEAD response has no body to store.
    let storable = !head.is_head() && ah.get(buf, "set-cookie").is_none();
    let decision = if storable {
        cache.store.borrow().decide_store(
            ah.status,
            &cc,
            &vary,
            declared,
            // RFC 9111 §3.5 names Authorization; a route's own auth (an API
            // key, a client certificate) makes a response just as much one
            // consumer's: stored only when the upstream says it may be
            // shared (`public`, `s-maxage`, `must-revalidate`).
            p.authenticated || head.header("authorization").is_some(),
            ah.get(buf, "expires").map(|e| {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                crate::cache::control::expires_lifetime(e, ah.get(buf, "date"), now)
            }),
        )
    } else {
        None
    };
    let Some(decision) = decision else {
        leader.take();
        proxy::forward(&p.up, gw, io, answer, miss, None).await;
        return;
    };
    let all: Vec<(&str, &[u8])> = ah.fields(buf).collect();
    let tokens = proxy::named_in_connection(&all);
    let stored_headers: Vec<(Box<str>, Box<[u8]>)> = proxy::forwardable_fields(&all, &tokens)
        .map(|(n, v)| (Box::from(n), Box::from(v)))
        .collect();
    let limit =
        usize::try_from(cache.store.borrow().limits().max_entry_bytes).unwrap_or(usize::MAX);
    if let ResponseFraming::ContentLength(n) = ah.framing {
        // Length known and within the entry limit: read it whole, store,
        // and answer from the entry (so the MISS carries the ETag too).
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        let Answer {
            mut stream,
            head: up_head,
            mut buf,
            target,
            deadline,
            partial_request,
            judged,
            epoch,
        } = answer;
        // Decided before the body is read: the head's fields live in `buf`,
        // which reading the body refills.
        let declared_body_on_204 = up_head.declares_body_on_204(&buf.data);
        let mut body = Vec::with_capacity(n);
        let mut reader = BodyReader::new(up_head.framing);
        let mut failed = None;
        loop {
            // The whole body within the exchange's deadline: nothing has
            // been sent to the client yet, so a slow one still gets a 504.
            match reader
                .next(
                    &mut stream,
                    &mut buf,
                    &mut body,
                    p.up.cfg.request_timeout,
                    Some(deadline),
                )
                .await
            {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let now = Instant::now();
        if let Some(why) = failed {
            proxy::settle(&p.up, target, judged, epoch, proxy::TryEnd::UpstreamFailed);
            gw.put_read(buf);
            // Nothing has reached the client: a stale copy within its
            // stale-if-error window still answers, as for a failed head.
            match stale {
                Some(entry) => {
                    cache.store.borrow_mut().record_stale_served();
                    respond_cached(io, &entry, XCache::Stale, inm).await;
                }
                None => proxy::answer_body_failure(io, &why).await,
            }
            return;
        }
        if up_head.keep_alive
            && !partial_request
            && !declared_body_on_204
            && reader.done()
            && buf.pending().is_empty()
        {
            p.up.targets[target].pool.put(stream, now);
        }
        proxy::settle(&p.up, target, judged, epoch, proxy::TryEnd::Complete);
        gw.put_read(buf);
        let entry = NewEntry {
            decision,
            headers: stored_headers,
            body: Rc::from(body),
        };
        let stored = cache.store.borrow_mut().insert(
            "GET",
            head.path,
            head.query,
            |name| request_field(head, name),
            entry,
            now,
        );
        match stored {
            // Stored or not (an entry too large for `max_bytes` with its
            // fields), the response answers this request.
            Some((e, _)) => respond_cached(io, &e, XCache::Miss, inm).await,
            // Not reached: this branch reads only GET bodies within the
            // entry limit.
            None => {
                io.send_problem(
                    500,
                    "https://shardline.dev/problems/internal",
                    "Internal Server Error",
                    "the cached response could not be kept",
                    &[],
                )
                .await
            }
        }
        return;
    }
    // Length unknown (chunked or until close): stream it, keeping a copy
    // up to the entry limit, and store it if it fit.
    let copy = proxy::forward(&p.up, gw, io, answer, miss, Some((Vec::new(), limit))).await;
    if let Some(body) = copy {
        let entry = NewEntry {
            decision,
            headers: stored_headers,
            body: Rc::from(body),
        };
        cache.store.borrow_mut().insert(
            "GET",
            head.path,
            head.query,
            |name| request_field(head, name),
            entry,
            Instant::now(),
        );
    }
}

/// The fresh entry for this request, when it can be answered from the
/// cache without going upstream: the connection loop then serves it inline
/// (synchronously, like a `respond` route) instead of taking the streaming
/// path. Misses, stale entries and bypassing requests return `None` and go
/// the async way.
pub(crate) fn fresh_hit(
    cache: &RouteCache,
    head: &RequestHead<'_, '_>,
) -> Option<Rc<CachedResponse>> {
    if !is_cacheable_method(head.method) {
        return None;
    }
    let directives = if head.header("cache-control").is_some() {
        let d = RequestDirectives::parse(&values(head, "cache-control"));
        if d.bypasses() {
            return None;
        }
        d
    } else {
        RequestDirectives::default()
    };
    let now = Instant::now();
    let entry = cache.store.borrow_mut().lookup_fresh(
        head.method,
        head.path,
        head.query,
        |n| request_field(head, n),
        now,
        |e| e.satisfies(&directives, now),
    )?;
    Some(entry)
}

/// `Age: <seconds>\r\n` for a cached entry (RFC 9111 §5.1), built on the
/// stack.
struct AgeLine {
    // "Age: " + at most 20 digits + CRLF.
    buf: [u8; 27],
    len: usize,
}

impl AgeLine {
    fn new(entry: &CachedResponse, now: Instant) -> Self {
        let mut buf = [0u8; 27];
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(entry.age_secs(now)).as_bytes();
        let n = 5 + digits.len();
        buf[..5].copy_from_slice(b"Age: ");
        buf[5..n].copy_from_slice(digits);
        buf[n..n + 2].copy_from_slice(b"\r\n");
        AgeLine { buf, len: n + 2 }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// What a response answered from a cache entry says in `X-Cache`.
#[derive(Debug, Clone, Copy)]
enum XCache {
    Hit,
    Stale,
    Miss,
}

impl XCache {
    fn value(self) -> &'static str {
        match self {
            XCache::Hit => "HIT",
            XCache::Stale => "STALE",
            XCache::Miss => "MISS",
        }
    }

    fn line(self) -> &'static [u8] {
        match self {
            XCache::Hit => b"X-Cache: HIT\r\n",
            XCache::Stale => b"X-Cache: STALE\r\n",
            XCache::Miss => b"X-Cache: MISS\r\n",
        }
    }
}

/// Writes a fresh hit found by [`fresh_hit`] into the inline response,
/// with `policy_lines` (raw `Name: value\r\n` lines the route's policies
/// add, e.g. `X-Request-Id`) in its head. The stored fields were checked
/// and encoded when stored, so a hit copies them.
pub(crate) fn answer_hit_inline(
    ex: &mut Exchange<'_>,
    entry: &CachedResponse,
    policy_lines: &[u8],
) {
    let inm = values(ex.head, "if-none-match");
    let age = AgeLine::new(entry, Instant::now());
    let extra: [&[u8]; 3] = [age.as_bytes(), XCache::Hit.line(), policy_lines];
    if !inm.is_empty() && entry.matches_if_none_match(&inm) {
        ex.respond_prepared(304, &entry.prepared_not_modified, &extra, b"");
    } else {
        ex.respond_prepared(entry.status, &entry.prepared, &extra, &entry.body);
    }
}

/// Answers from a cache entry: 304 when If-None-Match matches its ETag
/// (RFC 9110 §13.1.2), else the stored response with Age (RFC 9111 §5.1).
async fn respond_cached(
    io: &mut ClientIo<'_>,
    entry: &CachedResponse,
    x_cache: XCache,
    inm: &[&[u8]],
) {
    io.set_cache_status(x_cache.value());
    let age = AgeLine::new(entry, Instant::now());
    let extra: [&[u8]; 2] = [age.as_bytes(), x_cache.line()];
    let opts = io.encode_options();
    let mut out = io.take_buffer();
    if !inm.is_empty() && entry.matches_if_none_match(inm) {
        io.with_date(|date| {
            response::encode_prepared_head(
                &mut out,
                304,
                &entry.prepared_not_modified,
                &extra,
                BodyDelimit::None,
                opts,
                date,
            );
        });
    } else {
        io.with_date(|date| {
            response::encode_prepared_head(
                &mut out,
                entry.status,
                &entry.prepared,
                &extra,
                BodyDelimit::Length(entry.body.len() as u64),
                opts,
                date,
            );
        });
        if !opts.head {
            out.extend_from_slice(&entry.body);
        }
    }
    let _ = io.write_all(&out).await;
    io.put_buffer(out);
}

/// A request field's value for the cache's Vary matching: every line of a
/// repeated field, combined with ", " as RFC 9110 §5.3 allows and RFC 9111
/// §4.1 compares them (the first line alone let a request that sent
/// `Cookie: a` match a response stored for `Cookie: a` + `Cookie: b`).
/// Borrowed when the field has one line, as it almost always has.
fn request_field<'b>(head: &RequestHead<'b, '_>, name: &str) -> Option<Cow<'b, [u8]>> {
    let mut lines = head
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value);
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut all = crate::cache::control::trim_ows(first).to_vec();
    for v in std::iter::once(second).chain(lines) {
        all.extend_from_slice(b", ");
        all.extend_from_slice(crate::cache::control::trim_ows(v));
    }
    Some(Cow::Owned(all))
}
