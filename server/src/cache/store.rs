//! [`ResponseCache`]: one shard's cache for one route (issue 4, "Cache").
//!
//! **Keys.** The primary key is `GET` (also for `HEAD`), a NUL, the path,
//! and `?` + query when the request had a query (`/a` and `/a?` are
//! different targets, RFC 9111 §4). Written into a buffer the cache keeps,
//! so a lookup allocates nothing.
//!
//! **Variants.** A response with `Vary` is stored with the request's values
//! of the named fields (OWS-trimmed; an absent field is remembered as
//! absent, which differs from present-but-empty). A lookup whose values
//! differ is a miss (RFC 9111 §4.1). Several variants may live under one
//! primary key, up to [`MAX_VARIANTS_PER_KEY`] (oldest dropped first), so
//! `Vary: Accept-Encoding` keeps a gzip and an identity copy side by side.
//! All variants of a key share one `Vary` list: a response whose list
//! differs from the stored one replaces every variant, since the old ones
//! were selected by different fields. The key's variants are one LRU entry
//! priced at their sum.
//!
//! **Freshness.** See [`ResponseCache::decide_store`]. A lookup after
//! `fresh_until` and before `stale_until` reports [`Lookup::Stale`]: the
//! caller goes upstream and may serve the stale copy if the upstream fails
//! (RFC 5861 §4). After `stale_until` the variant is removed.
//!
//! Nothing here reads the clock: `now` comes from the caller.

use std::borrow::Cow;
use std::mem;
use std::rc::Rc;
use std::time::{Duration, Instant};

use shardline_protocol::response::PreparedFields;

use super::control::{
    parse_delta_seconds, parse_vary, trim_ows, RequestDirectives, ResponseDirectives,
    DELTA_SECONDS_MAX,
};
use super::etag::{if_none_match, strong_etag};
use super::lru::ByteLru;

/// Statuses this cache stores (issue 4's list: the heuristically cacheable
/// statuses of RFC 9110 §15.1 that make sense for an API gateway; 206 and
/// 405/414/501 are left out).
pub(crate) const CACHEABLE_STATUSES: [u16; 7] = [200, 203, 204, 300, 301, 404, 410];

/// Variants kept per primary key. A handful covers `Accept-Encoding` /
/// `Accept-Language` negotiation; without a bound, `Vary: User-Agent`
/// would let one URL fill the whole cache with near-duplicates.
pub(crate) const MAX_VARIANTS_PER_KEY: usize = 8;

/// Bytes charged per stored response on top of body, headers, ETag and
/// Vary values: the `CachedResponse` (about 120 bytes) and its `Rc`
/// header, the variant record, and allocator rounding of its several
/// allocations. Keeps `max_bytes` honest when bodies are tiny.
pub(crate) const VARIANT_OVERHEAD_BYTES: u64 = 256;

/// Bytes charged per stored header (or remembered Vary value) beyond its
/// text: two boxed-slice pointers of 16 bytes each.
pub(crate) const HEADER_OVERHEAD_BYTES: u64 = 32;

/// Freshness and stale lifetimes are capped here (RFC 9111 §1.2.2's own
/// ceiling on delta-seconds, about 68 years) so `Instant + Duration` cannot
/// overflow whatever a config or upstream says.
const MAX_LIFETIME: Duration = Duration::from_secs(DELTA_SECONDS_MAX);

/// Fields a 304 carries when the 200 would have (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [&str; 6] = [
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
];

/// A route's `cache = { ... }` settings, for one shard (each shard has its
/// own cache of this size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CacheLimits {
    /// Freshness when the response has neither `s-maxage` nor `max-age`.
    pub(crate) ttl: Duration,
    /// Primary keys kept (all of a key's variants count as one).
    pub(crate) max_entries: usize,
    /// Bytes kept: keys, bodies, headers and fixed per-entry overheads.
    pub(crate) max_bytes: u64,
    /// Largest body stored.
    pub(crate) max_entry_bytes: u64,
    /// How long after expiry a copy may still answer when the upstream
    /// fails, unless the response's own `stale-if-error` says otherwise.
    pub(crate) stale_if_error: Duration,
}

/// A stored response. Shared (`Rc`) with the requests it is answering, so
/// eviction never pulls a body out from under a write in progress.
#[derive(Debug)]
pub(crate) struct CachedResponse {
    pub(crate) status: u16,
    /// The upstream's fields as given to [`ResponseCache::insert`] (the
    /// proxy has removed hop-by-hop ones), minus `Age` (the proxy sends its
    /// own, see [`CachedResponse::age_secs`]) and plus `ETag` when it was
    /// generated.
    pub(crate) headers: Vec<(Box<str>, Box<[u8]>)>,
    pub(crate) body: Rc<[u8]>,
    /// The upstream's `ETag` value (OWS-trimmed), or the generated one.
    pub(crate) etag: Box<[u8]>,
    pub(crate) stored_at: Instant,
    /// Served as a hit before this instant.
    pub(crate) fresh_until: Instant,
    /// Servable as `X-Cache: STALE` on upstream failure before this.
    pub(crate) stale_until: Instant,
    /// The upstream's `Age` when stored (RFC 9111 §4.2.3), zero if none.
    pub(crate) initial_age: Duration,
    /// `headers`, and the subset a 304 carries, checked and encoded once
    /// at store time: a hit copies them (see `cache_glue`).
    pub(crate) prepared: PreparedFields,
    pub(crate) prepared_not_modified: PreparedFields,
}

impl CachedResponse {
    /// Current age (RFC 9111 §4.2.3: the upstream's `Age` plus the time
    /// resident here).
    pub(crate) fn age(&self, now: Instant) -> Duration {
        self.initial_age
            .saturating_add(now.saturating_duration_since(self.stored_at))
    }

    /// The `Age` field value to send with a cached response (RFC 9111 §5.1).
    pub(crate) fn age_secs(&self, now: Instant) -> u64 {
        self.age(now).as_secs()
    }

    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// Whether the request's own `Cache-Control` accepts this copy: not
    /// `no-cache`, and not older than its `max-age` (RFC 9111 §5.2.1.1,
    /// §5.2.1.4).
    pub(crate) fn satisfies(&self, request: &RequestDirectives, now: Instant) -> bool {
        !request.no_cache && request.max_age.map_or(true, |max| self.age(now) <= max)
    }

    /// Whether the request's `If-None-Match` values match this copy's
    /// `ETag` (weak comparison; then answer 304). Only for a 2xx copy: a
    /// precondition is ignored when the answer without it would not be a
    /// success (RFC 9110 §13.2.1), so a cached 404 stays a 404.
    pub(crate) fn matches_if_none_match(&self, if_none_match_values: &[&[u8]]) -> bool {
        (200..300).contains(&self.status) && if_none_match(if_none_match_values, &self.etag)
    }

    /// The stored fields that a 304 for this response carries (what
    /// `prepared_not_modified` holds encoded; the tests read them here).
    #[cfg(test)]
    pub(crate) fn not_modified_headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        not_modified_fields(&self.headers)
    }

    /// First stored field named `name` (ASCII case-insensitive).
    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| &**v)
    }
}

/// What [`ResponseCache::lookup_uncounted`] found.
#[derive(Clone, Debug)]
pub(crate) enum Lookup {
    /// Serve it: `X-Cache: HIT`.
    Fresh(Rc<CachedResponse>),
    /// Expired but inside its stale-if-error window: go upstream, and serve
    /// this with `X-Cache: STALE` (then call
    /// [`ResponseCache::record_stale_served`]) if the upstream fails with a
    /// connect error, timeout or 5xx.
    Stale(Rc<CachedResponse>),
    /// Nothing usable: go upstream (`X-Cache: MISS`).
    Miss,
}

/// A response found storable by [`ResponseCache::decide_store`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoreDecision {
    pub(crate) status: u16,
    /// Freshness lifetime: `s-maxage`, else `max-age`, else the route ttl.
    pub(crate) fresh_for: Duration,
    /// Stale-if-error window after expiry.
    pub(crate) stale_for: Duration,
    /// The response's `Vary` field names (lower-case, sorted, deduplicated).
    pub(crate) vary: Box<[Box<str>]>,
}

/// What [`ResponseCache::insert`] stores: the decision made on the
/// response head, plus the headers and the whole body.
#[derive(Debug)]
pub(crate) struct NewEntry {
    pub(crate) decision: StoreDecision,
    pub(crate) headers: Vec<(Box<str>, Box<[u8]>)>,
    pub(crate) body: Rc<[u8]>,
}

/// Counters since the cache was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CacheStats {
    /// Lookups answered fresh, plus [`ResponseCache::record_hit`] calls.
    pub(crate) hits: u64,
    /// Lookups of a cacheable method that found nothing fresh (including
    /// [`Lookup::Stale`]).
    pub(crate) misses: u64,
    /// Stale copies served on upstream failure (reported by the caller).
    pub(crate) stale_served: u64,
    /// Keys dropped to make room.
    pub(crate) evictions: u64,
    /// Responses stored.
    pub(crate) stores: u64,
}

/// One stored response under a primary key.
#[derive(Debug)]
struct Variant {
    /// The request's values of the entry's Vary fields, in the same order.
    vary_values: Box<[Option<Box<[u8]>>]>,
    response: Rc<CachedResponse>,
    /// Bytes charged for it (see [`variant_cost`]).
    cost: u64,
}

/// Everything under one primary key: the LRU's value type.
#[derive(Debug)]
struct Entry {
    /// The Vary field names every variant was selected by.
    vary: Box<[Box<str>]>,
    /// Oldest first.
    variants: Vec<Variant>,
}

impl Entry {
    fn cost(&self) -> u64 {
        self.variants.iter().map(|v| v.cost).sum()
    }
}

/// One route's cache on one shard.
#[derive(Debug)]
pub(crate) struct ResponseCache {
    limits: CacheLimits,
    lru: ByteLru<Entry>,
    /// Reused for the primary key of each lookup and insert.
    key_buf: Vec<u8>,
    hits: u64,
    misses: u64,
    stale_served: u64,
    stores: u64,
}

/// Only GET and HEAD responses are cached (issue 4; RFC 9111 §2).
pub(crate) fn is_cacheable_method(method: &str) -> bool {
    method == "GET" || method == "HEAD"
}

/// Writes the primary key for a request into `buf` (cleared first).
/// Returns false, leaving `buf` empty, for a method that is not cached.
pub(crate) fn write_primary_key(
    buf: &mut Vec<u8>,
    method: &str,
    path: &str,
    query: Option<&str>,
) -> bool {
    buf.clear();
    if !is_cacheable_method(method) {
        return false;
    }
    // HEAD is answered from the GET response (RFC 9110 §9.3.2).
    buf.extend_from_slice(b"GET\0");
    buf.extend_from_slice(path.as_bytes());
    if let Some(q) = query {
        buf.push(b'?');
        buf.extend_from_slice(q.as_bytes());
    }
    true
}

/// The primary key as an owned value (for [`super::InFlight`]), or None
/// for a method that is not cached.
pub(crate) fn primary_key(method: &str, path: &str, query: Option<&str>) -> Option<Box<[u8]>> {
    let mut buf = Vec::new();
    write_primary_key(&mut buf, method, path, query).then(|| buf.into_boxed_slice())
}

impl ResponseCache {
    pub(crate) fn new(limits: CacheLimits) -> Self {
        ResponseCache {
            lru: ByteLru::new(limits.max_entries, limits.max_bytes),
            limits,
            key_buf: Vec::new(),
            hits: 0,
            misses: 0,
            stale_served: 0,
            stores: 0,
        }
    }

    pub(crate) fn limits(&self) -> &CacheLimits {
        &self.limits
    }

    /// Decides from the response head whether to store it, and for how long.
    ///
    /// `cache_control` and `vary` are the values of every such field line;
    /// `body_len` is the body length known so far (the `Content-Length`,
    /// or 0 while a chunked body is still unknown: [`Self::insert`] checks
    /// the final length again); `request_has_authorization` is whether the
    /// request carried `Authorization`.
    ///
    /// None (do not store) when:
    /// - the status is not in [`CACHEABLE_STATUSES`];
    /// - `body_len` exceeds `max_entry_bytes`;
    /// - `Vary: *` (or a member that is not a field name);
    /// - `no-store`, `private` or `no-cache` (RFC 9111 §5.2.2.5, §5.2.2.7,
    ///   §5.2.2.4: this cache does not revalidate);
    /// - the request had `Authorization` and the response does not say
    ///   `public`, `s-maxage` or `must-revalidate` (RFC 9111 §3.5: one
    ///   user's answer must not reach another);
    /// - the freshness lifetime is zero.
    ///
    /// Freshness is `s-maxage`, else `max-age`, else `expires_lifetime`
    /// (what the response's `Expires` leaves past its `Date`, see
    /// [`super::control::expires_lifetime`]; RFC 9111 §4.2.1), else the
    /// route's `ttl`. The stale
    /// window is the response's `stale-if-error` if present (RFC 5861 §4,
    /// "regardless of other freshness information"); else zero when the
    /// response says `must-revalidate` or `proxy-revalidate` (RFC 9111
    /// §5.2.2.2, §5.2.2.8); else the route's `stale_if_error`. (RFC 9111
    /// §5.2.2.10 also gives `s-maxage` the meaning of `proxy-revalidate`;
    /// that is not applied, so the route's stale-if-error policy still
    /// covers `s-maxage` responses.)
    pub(crate) fn decide_store(
        &self,
        status: u16,
        cache_control: &[&[u8]],
        vary: &[&[u8]],
        body_len: u64,
        request_has_authorization: bool,
        expires_lifetime: Option<Duration>,
    ) -> Option<StoreDecision> {
        if !CACHEABLE_STATUSES.contains(&status) || body_len > self.limits.max_entry_bytes {
            return None;
        }
        let vary = parse_vary(vary);
        if vary.any {
            return None;
        }
        let cc = ResponseDirectives::parse(cache_control);
        if cc.no_store || cc.private || cc.no_cache {
            return None;
        }
        if request_has_authorization && !(cc.public || cc.must_revalidate || cc.s_maxage.is_some())
        {
            return None;
        }
        let fresh_for = cc
            .s_maxage
            .or(cc.max_age)
            .or(expires_lifetime)
            .unwrap_or(self.limits.ttl);
        if fresh_for.is_zero() {
            return None;
        }
        let stale_for = match cc.stale_if_error {
            Some(window) => window,
            None if cc.must_revalidate || cc.proxy_revalidate => Duration::ZERO,
            None => self.limits.stale_if_error,
        };
        Some(StoreDecision {
            status,
            fresh_for,
            stale_for,
            vary: vary.names.into_boxed_slice(),
        })
    }

    /// Looks a request up and counts the outcome. `req_header(name)` gives
    /// the request's value of a field (name in lower case), for matching
    /// Vary. A method other than GET/HEAD is a `Miss` and is not counted.
    /// The serving path counts for itself ([`Self::lookup_uncounted`]);
    /// this is the store's own tests' view.
    #[cfg(test)]
    pub(crate) fn lookup<'h>(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        req_header: impl Fn(&str) -> Option<Cow<'h, [u8]>>,
        now: Instant,
    ) -> Lookup {
        match self.find(method, path, query, req_header, now) {
            None => Lookup::Miss,
            Some(found) => {
                match found {
                    Lookup::Fresh(_) => self.hits += 1,
                    Lookup::Stale(_) | Lookup::Miss => self.misses += 1,
                }
                found
            }
        }
    }

    /// [`Self::lookup`] without counting: for a caller that may look the
    /// same request up more than once (a coalesced follower looks before
    /// and after waiting) and counts its one outcome itself
    /// ([`Self::record_hit`], [`Self::record_miss`]).
    pub(crate) fn lookup_uncounted<'h>(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        req_header: impl Fn(&str) -> Option<Cow<'h, [u8]>>,
        now: Instant,
    ) -> Lookup {
        self.find(method, path, query, req_header, now)
            .unwrap_or(Lookup::Miss)
    }

    /// A fresh entry for the request, or `None`; a hit is counted, a miss
    /// is not: this is the peek that decides whether a request can be
    /// answered inline, and a request it sends on is looked up (and its miss
    /// counted) again on the streaming path.
    /// `accepts` is the request's own say (its `Cache-Control: max-age`):
    /// a fresh entry it refuses is no hit.
    pub(crate) fn lookup_fresh<'h>(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        req_header: impl Fn(&str) -> Option<Cow<'h, [u8]>>,
        now: Instant,
        accepts: impl Fn(&CachedResponse) -> bool,
    ) -> Option<Rc<CachedResponse>> {
        match self.find(method, path, query, req_header, now) {
            Some(Lookup::Fresh(r)) if accepts(&r) => {
                self.hits += 1;
                Some(r)
            }
            _ => None,
        }
    }

    /// The lookup itself, uncounted; `None` for a method that is never
    /// cached.
    fn find<'h>(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        req_header: impl Fn(&str) -> Option<Cow<'h, [u8]>>,
        now: Instant,
    ) -> Option<Lookup> {
        let mut key = mem::take(&mut self.key_buf);
        let found = write_primary_key(&mut key, method, path, query)
            .then(|| self.lookup_key(&key, req_header, now));
        self.key_buf = key;
        found
    }

    fn lookup_key<'h>(
        &mut self,
        key: &[u8],
        req_header: impl Fn(&str) -> Option<Cow<'h, [u8]>>,
        now: Instant,
    ) -> Lookup {
        let Some(entry) = self.lru.get_mut(key) else {
            return Lookup::Miss;
        };
        let vary = &entry.vary;
        let Some(i) = entry
            .variants
            .iter()
            .position(|v| vary_matches(vary, &v.vary_values, &req_header))
        else {
            return Lookup::Miss;
        };
        let response = Rc::clone(&entry.variants[i].response);
        if now < response.fresh_until {
            return Lookup::Fresh(response);
        }
        if now < response.stale_until {
            return Lookup::Stale(response);
        }
        // Past its stale window: of no further use.
        entry.variants.remove(i);
        if entry.variants.is_empty() {
            self.lru.remove(key);
        } else {
            let size = entry.cost();
            self.lru.set_size(key, size);
        }
        Lookup::Miss
    }

    /// Stores a response for a GET request, replacing the variant with the
    /// same Vary values, and returns the stored copy. `req_header` is as
    /// for [`Self::lookup`] (the request's values of the Vary fields).
    ///
    /// Generates a strong `ETag` from the body when the upstream sent none
    /// (and adds the field). Subtracts the upstream's `Age` from the
    /// freshness (RFC 9111 §4.2.3) and drops that field.
    ///
    /// Returns None, storing nothing, when the method is not GET (a HEAD
    /// response has no body and would poison the GET entry: forward a
    /// HEAD miss upstream as GET if it should fill the cache) or when the
    /// body exceeds `max_entry_bytes`. Otherwise the response as it would
    /// be served, and whether it was stored: an entry that alone does not
    /// fit in `max_bytes` (its fields and encodings count too) is still
    /// the answer to the request that fetched it.
    pub(crate) fn insert<'h>(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        req_header: impl Fn(&str) -> Option<Cow<'h, [u8]>>,
        entry: NewEntry,
        now: Instant,
    ) -> Option<(Rc<CachedResponse>, bool)> {
        let NewEntry {
            decision,
            mut headers,
            body,
        } = entry;
        if method != "GET" || body.len() as u64 > self.limits.max_entry_bytes {
            return None;
        }
        let initial_age = take_age(&mut headers);
        let upstream_etag = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("etag"))
            .map(|(_, v)| trim_ows(v))
            .filter(|v| !v.is_empty())
            .map(Box::<[u8]>::from);
        let etag = match upstream_etag {
            Some(tag) => tag,
            None => {
                headers.retain(|(n, _)| !n.eq_ignore_ascii_case("etag"));
                let tag = strong_etag(&body).into_bytes().into_boxed_slice();
                headers.push((Box::from("ETag"), tag.clone()));
                tag
            }
        };
        let fresh_until = add_capped(now, decision.fresh_for.saturating_sub(initial_age));
        let stale_until = add_capped(fresh_until, decision.stale_for);
        let vary_values: Box<[Option<Box<[u8]>>]> = decision
            .vary
            .iter()
            .map(|name| req_header(name).map(|v| Box::from(trim_ows(&v))))
            .collect();
        let prepared = PreparedFields::new(headers.iter().map(|(n, v)| (&**n, &**v)));
        let prepared_not_modified = PreparedFields::new(not_modified_fields(&headers));
        // The encoded copies are about as large as the fields again.
        let cost = variant_cost(&headers, &body, &etag, &vary_values)
            + (prepared.len() + prepared_not_modified.len()) as u64;
        let response = Rc::new(CachedResponse {
            status: decision.status,
            headers,
            body,
            etag,
            stored_at: now,
            fresh_until,
            stale_until,
            initial_age,
            prepared,
            prepared_not_modified,
        });
        let variant = Variant {
            vary_values,
            response: Rc::clone(&response),
            cost,
        };
        let mut key = mem::take(&mut self.key_buf);
        write_primary_key(&mut key, method, path, query);
        let stored = self.store_variant(&key, decision.vary, variant, now);
        self.key_buf = key;
        if stored {
            self.stores += 1;
        }
        Some((response, stored))
    }

    /// [`Self::insert`], `Some` only when the entry was stored.
    #[cfg(test)]
    pub(crate) fn insert_stored<'h>(
        &mut self,
        method: &str,
        path: &str,
        query: Option<&str>,
        req_header: impl Fn(&str) -> Option<Cow<'h, [u8]>>,
        entry: NewEntry,
        now: Instant,
    ) -> Option<Rc<CachedResponse>> {
        self.insert(method, path, query, req_header, entry, now)
            .and_then(|(r, stored)| stored.then_some(r))
    }

    fn store_variant(
        &mut self,
        key: &[u8],
        vary: Box<[Box<str>]>,
        variant: Variant,
        now: Instant,
    ) -> bool {
        let max_bytes = self.lru.max_bytes();
        let Some(entry) = self.lru.get_mut(key) else {
            let size = variant.cost;
            let entry = Entry {
                vary,
                variants: vec![variant],
            };
            return self.lru.insert(key, entry, size);
        };
        if entry.vary != vary {
            entry.variants.clear();
            entry.vary = vary;
        }
        // Drop the copy this one replaces, and any past its stale window.
        entry
            .variants
            .retain(|v| v.vary_values != variant.vary_values && now < v.response.stale_until);
        while entry.variants.len() >= MAX_VARIANTS_PER_KEY {
            entry.variants.remove(0);
        }
        entry.variants.push(variant);
        // Older variants give way before the newest is refused.
        while entry.variants.len() > 1
            && ByteLru::<Entry>::entry_cost(key.len(), entry.cost()) > max_bytes
        {
            entry.variants.remove(0);
        }
        let size = entry.cost();
        // The entry was just promoted, so making room evicts others first.
        self.lru.set_size(key, size)
    }

    /// Removes every variant stored for `path` + `query`, as a cache does
    /// after a successful unsafe request to the same target (RFC 9111
    /// §4.4). Returns whether anything was removed.
    pub(crate) fn invalidate(&mut self, path: &str, query: Option<&str>) -> bool {
        let mut key = mem::take(&mut self.key_buf);
        write_primary_key(&mut key, "GET", path, query);
        let removed = self.lru.remove(&key).is_some();
        self.key_buf = key;
        removed
    }

    /// Counts a response served stale after an upstream failure.
    pub(crate) fn record_stale_served(&mut self) {
        self.stale_served += 1;
    }

    /// Counts a hit not seen by [`Self::lookup`].
    pub(crate) fn record_hit(&mut self) {
        self.hits += 1;
    }

    /// Counts a miss not seen by [`Self::lookup`].
    pub(crate) fn record_miss(&mut self) {
        self.misses += 1;
    }

    pub(crate) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits,
            misses: self.misses,
            stale_served: self.stale_served,
            evictions: self.lru.evictions(),
            stores: self.stores,
        }
    }

    /// Primary keys stored.
    pub(crate) fn len(&self) -> usize {
        self.lru.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lru.is_empty()
    }

    /// Bytes charged against `max_bytes`.
    pub(crate) fn bytes(&self) -> u64 {
        self.lru.bytes()
    }

    /// Drops every entry (counters are kept).
    pub(crate) fn clear(&mut self) {
        self.lru.clear();
    }
}

/// Whether a request's field values select a variant stored with
/// `stored` for the fields `names`.
fn vary_matches<'h>(
    names: &[Box<str>],
    stored: &[Option<Box<[u8]>>],
    req_header: &impl Fn(&str) -> Option<Cow<'h, [u8]>>,
) -> bool {
    names
        .iter()
        .zip(stored)
        .all(|(name, value)| req_header(name).as_deref().map(trim_ows) == value.as_deref())
}

/// Removes every `Age` field and returns the first one's value (zero when
/// absent or not delta-seconds).
fn take_age(headers: &mut Vec<(Box<str>, Box<[u8]>)>) -> Duration {
    let age = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("age"))
        .and_then(|(_, v)| parse_delta_seconds(trim_ows(v)))
        .unwrap_or(Duration::ZERO);
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case("age"));
    age
}

/// `t + d`, with `d` capped at [`MAX_LIFETIME`]; `t` itself should even
/// that overflow (the copy is then simply never fresh).
fn add_capped(t: Instant, d: Duration) -> Instant {
    t.checked_add(d.min(MAX_LIFETIME)).unwrap_or(t)
}

/// Bytes charged for one variant (its key is charged by the LRU).
/// The fields of `headers` that a 304 carries (RFC 9110 §15.4.5).
fn not_modified_fields(
    headers: &[(Box<str>, Box<[u8]>)],
) -> impl Iterator<Item = (&str, &[u8])> + '_ {
    headers
        .iter()
        .filter(|(name, _)| {
            NOT_MODIFIED_FIELDS
                .iter()
                .any(|f| f.eq_ignore_ascii_case(name))
        })
        .map(|(name, value)| (&**name, &**value))
}

fn variant_cost(
    headers: &[(Box<str>, Box<[u8]>)],
    body: &[u8],
    etag: &[u8],
    vary_values: &[Option<Box<[u8]>>],
) -> u64 {
    let headers: u64 = headers
        .iter()
        .map(|(n, v)| HEADER_OVERHEAD_BYTES + n.len() as u64 + v.len() as u64)
        .sum();
    let vary: u64 = vary_values
        .iter()
        .map(|v| HEADER_OVERHEAD_BYTES + v.as_ref().map_or(0, |v| v.len() as u64))
        .sum();
    VARIANT_OVERHEAD_BYTES + body.len() as u64 + etag.len() as u64 + headers + vary
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cache::lru::ENTRY_OVERHEAD_BYTES;

    const TTL: Duration = Duration::from_secs(30);
    const STALE: Duration = Duration::from_secs(60);

    fn limits() -> CacheLimits {
        CacheLimits {
            ttl: TTL,
            max_entries: 100,
            max_bytes: 1 << 20,
            max_entry_bytes: 1 << 10,
            stale_if_error: STALE,
        }
    }

    fn cache() -> ResponseCache {
        ResponseCache::new(limits())
    }

    /// A request-header lookup over fixed pairs.
    fn hdrs<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<Cow<'a, [u8]>> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| Cow::Borrowed(v.as_bytes()))
        }
    }

    fn none(_: &str) -> Option<Cow<'static, [u8]>> {
        None
    }

    /// Decision for a 200 with these Cache-Control / Vary values.
    #[test]
    fn expires_counts_after_max_age_and_before_the_ttl() {
        let c = cache();
        let d = |cc: &[&[u8]], exp: Option<Duration>| c.decide_store(200, cc, &[], 0, false, exp);
        assert_eq!(d(&[], Some(secs(7))).unwrap().fresh_for, secs(7));
        assert_eq!(
            d(&[b"max-age=5"], Some(secs(7))).unwrap().fresh_for,
            secs(5)
        );
        assert!(
            d(&[], Some(Duration::ZERO)).is_none(),
            "already expired: not stored"
        );
        assert_eq!(d(&[], None).unwrap().fresh_for, TTL);
    }

    fn decide(c: &ResponseCache, cc: &[&str], vary: &[&str]) -> Option<StoreDecision> {
        decide_status(c, 200, cc, vary)
    }

    fn decide_status(
        c: &ResponseCache,
        status: u16,
        cc: &[&str],
        vary: &[&str],
    ) -> Option<StoreDecision> {
        let cc: Vec<&[u8]> = cc.iter().map(|s| s.as_bytes()).collect();
        let vary: Vec<&[u8]> = vary.iter().map(|s| s.as_bytes()).collect();
        c.decide_store(status, &cc, &vary, 10, false, None)
    }

    fn entry(decision: StoreDecision, headers: &[(&str, &str)], body: &str) -> NewEntry {
        NewEntry {
            decision,
            headers: headers
                .iter()
                .map(|(n, v)| (Box::from(*n), Box::from(v.as_bytes())))
                .collect(),
            body: Rc::from(body.as_bytes()),
        }
    }

    /// Stores `body` for GET `path` with a default 200 decision.
    fn put(c: &mut ResponseCache, path: &str, body: &str, now: Instant) -> Rc<CachedResponse> {
        let d = decide(c, &[], &[]).unwrap();
        c.insert_stored("GET", path, None, none, entry(d, &[], body), now)
            .unwrap()
    }

    fn body_of(l: &Lookup) -> Option<&[u8]> {
        match l {
            Lookup::Fresh(r) | Lookup::Stale(r) => Some(&r.body),
            Lookup::Miss => None,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn cacheable_statuses_only() {
        let c = cache();
        for s in CACHEABLE_STATUSES {
            assert!(decide_status(&c, s, &[], &[]).is_some(), "{s}");
        }
        for s in [
            100, 201, 202, 206, 302, 304, 307, 400, 403, 405, 500, 502, 503, 504,
        ] {
            assert!(decide_status(&c, s, &[], &[]).is_none(), "{s}");
        }
    }

    #[test]
    fn forbidding_directives() {
        let c = cache();
        for cc in [
            "no-store",
            "private",
            "no-cache",
            "max-age=60, NO-STORE",
            "public, private=\"x\"",
        ] {
            assert!(decide(&c, &[cc], &[]).is_none(), "{cc}");
        }
        assert!(decide(&c, &["public, max-age=60"], &[]).is_some());
    }

    #[test]
    fn freshness_precedence() {
        let c = cache();
        assert_eq!(decide(&c, &[], &[]).unwrap().fresh_for, TTL);
        assert_eq!(decide(&c, &["max-age=5"], &[]).unwrap().fresh_for, secs(5));
        assert_eq!(
            decide(&c, &["s-maxage=7, max-age=5"], &[])
                .unwrap()
                .fresh_for,
            secs(7)
        );
        assert_eq!(decide(&c, &["max-age=bogus"], &[]).unwrap().fresh_for, TTL);
    }

    #[test]
    fn zero_freshness_not_stored() {
        let c = cache();
        assert!(decide(&c, &["max-age=0"], &[]).is_none());
        assert!(decide(&c, &["s-maxage=0, max-age=60"], &[]).is_none());
        assert!(decide(&c, &["s-maxage=60, max-age=0"], &[]).is_some());
        let zero_ttl = ResponseCache::new(CacheLimits {
            ttl: Duration::ZERO,
            ..limits()
        });
        assert!(decide(&zero_ttl, &[], &[]).is_none());
        assert!(decide(&zero_ttl, &["max-age=1"], &[]).is_some());
    }

    #[test]
    fn body_size_limit() {
        let c = cache();
        assert!(c
            .decide_store(200, &[], &[], 1 << 10, false, None)
            .is_some());
        assert!(c
            .decide_store(200, &[], &[], (1 << 10) + 1, false, None)
            .is_none());
        // insert re-checks the real length (a chunked body).
        let mut c = cache();
        let d = c.decide_store(200, &[], &[], 0, false, None).unwrap();
        let big = "x".repeat((1 << 10) + 1);
        let now = Instant::now();
        assert!(c
            .insert_stored("GET", "/a", None, none, entry(d, &[], &big), now)
            .is_none());
        assert!(c.is_empty());
        assert_eq!(c.stats().stores, 0);
    }

    #[test]
    fn vary_star_not_stored() {
        let c = cache();
        assert!(decide(&c, &[], &["*"]).is_none());
        assert!(decide(&c, &[], &["accept", "*"]).is_none());
        assert_eq!(
            &*decide(&c, &[], &["Accept-Encoding"]).unwrap().vary,
            &[Box::<str>::from("accept-encoding")]
        );
    }

    #[test]
    fn stale_window_choice() {
        let c = cache();
        assert_eq!(decide(&c, &[], &[]).unwrap().stale_for, STALE);
        assert_eq!(
            decide(&c, &["stale-if-error=5"], &[]).unwrap().stale_for,
            secs(5)
        );
        assert_eq!(
            decide(&c, &["stale-if-error=0"], &[]).unwrap().stale_for,
            Duration::ZERO
        );
        assert_eq!(
            decide(&c, &["must-revalidate"], &[]).unwrap().stale_for,
            Duration::ZERO
        );
        assert_eq!(
            decide(&c, &["proxy-revalidate"], &[]).unwrap().stale_for,
            Duration::ZERO
        );
        assert_eq!(
            decide(&c, &["must-revalidate, stale-if-error=9"], &[])
                .unwrap()
                .stale_for,
            secs(9)
        );
        assert_eq!(decide(&c, &["s-maxage=5"], &[]).unwrap().stale_for, STALE);
    }

    #[test]
    fn authorization_needs_explicit_permission() {
        let c = cache();
        let d = |cc: &str| c.decide_store(200, &[cc.as_bytes()], &[], 0, true, None);
        assert!(d("max-age=60").is_none());
        assert!(d("").is_none());
        assert!(d("public").is_some());
        assert!(d("s-maxage=5").is_some());
        assert!(d("must-revalidate, max-age=5").is_some());
        assert!(d("public, private").is_none());
    }

    #[test]
    fn miss_then_store_then_hit() {
        let mut c = cache();
        let t0 = Instant::now();
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0),
            Lookup::Miss
        ));
        let stored = put(&mut c, "/a", "hello", t0);
        assert_eq!(stored.status, 200);
        assert_eq!(stored.fresh_until, t0 + TTL);
        assert_eq!(stored.stale_until, t0 + TTL + STALE);
        let hit = c.lookup("GET", "/a", None, none, t0 + secs(1));
        assert_eq!(body_of(&hit), Some(&b"hello"[..]));
        assert!(matches!(hit, Lookup::Fresh(_)));
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.stores, s.evictions), (1, 1, 1, 0));
        assert_eq!(c.len(), 1);
        assert!(c.bytes() > 5);
    }

    #[test]
    fn head_uses_get_entry_but_does_not_store() {
        let mut c = cache();
        let t0 = Instant::now();
        put(&mut c, "/a", "body", t0);
        assert!(matches!(
            c.lookup("HEAD", "/a", None, none, t0),
            Lookup::Fresh(_)
        ));
        let d = decide(&c, &[], &[]).unwrap();
        assert!(c
            .insert_stored("HEAD", "/b", None, none, entry(d, &[], ""), t0)
            .is_none());
        assert!(matches!(
            c.lookup("GET", "/b", None, none, t0),
            Lookup::Miss
        ));
    }

    #[test]
    fn other_methods_are_uncounted_misses() {
        let mut c = cache();
        let t0 = Instant::now();
        put(&mut c, "/a", "body", t0);
        for m in ["POST", "PUT", "DELETE", "get"] {
            assert!(
                matches!(c.lookup(m, "/a", None, none, t0), Lookup::Miss),
                "{m}"
            );
        }
        assert_eq!(c.stats().misses, 0);
        let d = decide(&c, &[], &[]).unwrap();
        assert!(c
            .insert_stored("POST", "/a", None, none, entry(d, &[], "x"), t0)
            .is_none());
    }

    #[test]
    fn keys_include_query() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &[], &[]).unwrap();
        c.insert_stored(
            "GET",
            "/a",
            Some("x=1"),
            none,
            entry(d.clone(), &[], "one"),
            t0,
        );
        c.insert_stored("GET", "/a", None, none, entry(d, &[], "bare"), t0);
        assert_eq!(
            body_of(&c.lookup("GET", "/a", Some("x=1"), none, t0)),
            Some(&b"one"[..])
        );
        assert_eq!(
            body_of(&c.lookup("GET", "/a", None, none, t0)),
            Some(&b"bare"[..])
        );
        assert!(matches!(
            c.lookup("GET", "/a", Some("x=2"), none, t0),
            Lookup::Miss
        ));
        assert!(matches!(
            c.lookup("GET", "/a", Some(""), none, t0),
            Lookup::Miss
        ));
        assert!(matches!(
            c.lookup("GET", "/b", None, none, t0),
            Lookup::Miss
        ));
        assert_eq!(
            primary_key("HEAD", "/a", Some("x=1")).unwrap(),
            Box::from(&b"GET\0/a?x=1"[..])
        );
        assert_eq!(
            primary_key("GET", "/a", None).unwrap(),
            Box::from(&b"GET\0/a"[..])
        );
        assert!(primary_key("PATCH", "/a", None).is_none());
    }

    #[test]
    fn fresh_then_stale_then_gone() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &["max-age=10, stale-if-error=20"], &[]).unwrap();
        c.insert_stored("GET", "/a", None, none, entry(d, &[], "x"), t0)
            .unwrap();
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0 + secs(9)),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0 + secs(10)),
            Lookup::Stale(_)
        ));
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0 + secs(29)),
            Lookup::Stale(_)
        ));
        c.record_stale_served();
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0 + secs(30)),
            Lookup::Miss
        ));
        assert!(c.is_empty(), "expired past its window: removed");
        assert_eq!(c.bytes(), 0);
        let s = c.stats();
        assert_eq!((s.hits, s.misses, s.stale_served), (1, 3, 1));
    }

    #[test]
    fn no_stale_window_goes_straight_to_miss() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &["max-age=10, must-revalidate"], &[]).unwrap();
        c.insert_stored("GET", "/a", None, none, entry(d, &[], "x"), t0)
            .unwrap();
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0 + secs(10)),
            Lookup::Miss
        ));
        assert!(c.is_empty());
    }

    #[test]
    fn vary_selects_variant() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &[], &["Accept-Encoding"]).unwrap();
        let gzip = [("Accept-Encoding", "gzip")];
        c.insert_stored(
            "GET",
            "/a",
            None,
            hdrs(&gzip),
            entry(d, &[("Vary", "Accept-Encoding")], "GZ"),
            t0,
        )
        .unwrap();
        assert_eq!(
            body_of(&c.lookup("GET", "/a", None, hdrs(&gzip), t0)),
            Some(&b"GZ"[..])
        );
        // Surrounding whitespace and name case do not matter; the value does.
        let gzip_ws = [("accept-encoding", " gzip\t")];
        assert!(matches!(
            c.lookup("GET", "/a", None, hdrs(&gzip_ws), t0),
            Lookup::Fresh(_)
        ));
        let br = [("Accept-Encoding", "br")];
        assert!(matches!(
            c.lookup("GET", "/a", None, hdrs(&br), t0),
            Lookup::Miss
        ));
        assert!(
            matches!(c.lookup("GET", "/a", None, none, t0), Lookup::Miss),
            "absent != gzip"
        );
        let empty = [("Accept-Encoding", "")];
        assert!(matches!(
            c.lookup("GET", "/a", None, hdrs(&empty), t0),
            Lookup::Miss
        ));
    }

    #[test]
    fn vary_variants_coexist_and_absent_is_a_value() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &[], &["accept-encoding"]).unwrap();
        let gzip = [("Accept-Encoding", "gzip")];
        c.insert_stored(
            "GET",
            "/a",
            None,
            hdrs(&gzip),
            entry(d.clone(), &[], "GZ"),
            t0,
        )
        .unwrap();
        c.insert_stored("GET", "/a", None, none, entry(d, &[], "PLAIN"), t0)
            .unwrap();
        assert_eq!(
            body_of(&c.lookup("GET", "/a", None, hdrs(&gzip), t0)),
            Some(&b"GZ"[..])
        );
        assert_eq!(
            body_of(&c.lookup("GET", "/a", None, none, t0)),
            Some(&b"PLAIN"[..])
        );
        assert_eq!(c.len(), 1, "one primary key");
    }

    #[test]
    fn same_variant_is_replaced() {
        let mut c = cache();
        let t0 = Instant::now();
        put(&mut c, "/a", "old", t0);
        let bytes_one = c.bytes();
        put(&mut c, "/a", "new", t0 + secs(1));
        assert_eq!(
            body_of(&c.lookup("GET", "/a", None, none, t0 + secs(1))),
            Some(&b"new"[..])
        );
        assert_eq!(c.bytes(), bytes_one);
        assert_eq!(c.stats().stores, 2);
    }

    #[test]
    fn changed_vary_list_replaces_all_variants() {
        let mut c = cache();
        let t0 = Instant::now();
        let by_enc = decide(&c, &[], &["accept-encoding"]).unwrap();
        let by_lang = decide(&c, &[], &["accept-language"]).unwrap();
        let gzip = [("Accept-Encoding", "gzip")];
        let en = [("Accept-Language", "en")];
        c.insert_stored("GET", "/a", None, hdrs(&gzip), entry(by_enc, &[], "GZ"), t0)
            .unwrap();
        c.insert_stored("GET", "/a", None, hdrs(&en), entry(by_lang, &[], "EN"), t0)
            .unwrap();
        assert!(matches!(
            c.lookup("GET", "/a", None, hdrs(&gzip), t0),
            Lookup::Miss
        ));
        assert_eq!(
            body_of(&c.lookup("GET", "/a", None, hdrs(&en), t0)),
            Some(&b"EN"[..])
        );
    }

    #[test]
    fn variants_per_key_are_bounded() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &[], &["user-agent"]).unwrap();
        let agents: Vec<String> = (0..=MAX_VARIANTS_PER_KEY)
            .map(|i| format!("ua{i}"))
            .collect();
        for ua in &agents {
            let h = [("User-Agent", ua.as_str())];
            c.insert_stored("GET", "/a", None, hdrs(&h), entry(d.clone(), &[], ua), t0)
                .unwrap();
        }
        let first = [("User-Agent", agents[0].as_str())];
        assert!(
            matches!(c.lookup("GET", "/a", None, hdrs(&first), t0), Lookup::Miss),
            "oldest dropped"
        );
        for ua in &agents[1..] {
            let h = [("User-Agent", ua.as_str())];
            assert_eq!(
                body_of(&c.lookup("GET", "/a", None, hdrs(&h), t0)),
                Some(ua.as_bytes())
            );
        }
    }

    #[test]
    fn expired_variant_removal_keeps_others() {
        let mut c = cache();
        let t0 = Instant::now();
        let short = decide(&c, &["max-age=1, stale-if-error=0"], &["accept"]).unwrap();
        let long = decide(&c, &["max-age=100"], &["accept"]).unwrap();
        let json = [("Accept", "json")];
        let xml = [("Accept", "xml")];
        c.insert_stored("GET", "/a", None, hdrs(&json), entry(short, &[], "J"), t0)
            .unwrap();
        c.insert_stored("GET", "/a", None, hdrs(&xml), entry(long, &[], "X"), t0)
            .unwrap();
        let both = c.bytes();
        assert!(matches!(
            c.lookup("GET", "/a", None, hdrs(&json), t0 + secs(2)),
            Lookup::Miss
        ));
        assert!(c.bytes() < both, "the expired variant's bytes are released");
        assert!(matches!(
            c.lookup("GET", "/a", None, hdrs(&xml), t0 + secs(2)),
            Lookup::Fresh(_)
        ));
    }

    #[test]
    fn etag_generated_when_absent() {
        let mut c = cache();
        let t0 = Instant::now();
        let r = put(&mut c, "/a", "payload", t0);
        assert_eq!(&*r.etag, strong_etag(b"payload").as_bytes());
        assert_eq!(r.header("etag"), Some(&*r.etag));
        assert!(r.matches_if_none_match(&[r.etag.as_ref()]));
        assert!(r.matches_if_none_match(&[b"\"other\", *"]));
        assert!(!r.matches_if_none_match(&[b"\"other\""]));
    }

    #[test]
    fn upstream_etag_kept() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &[], &[]).unwrap();
        let r = c
            .insert_stored(
                "GET",
                "/a",
                None,
                none,
                entry(d.clone(), &[("ETag", "W/\"v1\"")], "x"),
                t0,
            )
            .unwrap();
        assert_eq!(&*r.etag, b"W/\"v1\"");
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("etag"))
                .count(),
            1
        );
        assert!(r.matches_if_none_match(&[b"\"v1\""]));
        // An empty upstream ETag is replaced by a generated one.
        let r = c
            .insert_stored("GET", "/b", None, none, entry(d, &[("etag", "")], "x"), t0)
            .unwrap();
        assert_eq!(&*r.etag, strong_etag(b"x").as_bytes());
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("etag"))
                .count(),
            1
        );
    }

    #[test]
    fn upstream_age_shortens_freshness() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &["max-age=100"], &[]).unwrap();
        let r = c
            .insert_stored(
                "GET",
                "/a",
                None,
                none,
                entry(d.clone(), &[("Age", "40"), ("X-A", "1")], "x"),
                t0,
            )
            .unwrap();
        assert_eq!(r.fresh_until, t0 + secs(60));
        assert_eq!(r.age_secs(t0 + secs(5)), 45);
        assert!(r.header("age").is_none(), "the proxy sends its own Age");
        assert_eq!(r.header("x-a"), Some(&b"1"[..]));
        // Older than its lifetime: stored already stale (still useful on error).
        let r = c
            .insert_stored(
                "GET",
                "/b",
                None,
                none,
                entry(d, &[("age", "500")], "x"),
                t0,
            )
            .unwrap();
        assert!(!r.is_fresh(t0));
        assert!(matches!(
            c.lookup("GET", "/b", None, none, t0),
            Lookup::Stale(_)
        ));
    }

    #[test]
    fn eviction_by_count_through_cache() {
        let mut c = ResponseCache::new(CacheLimits {
            max_entries: 2,
            ..limits()
        });
        let t0 = Instant::now();
        put(&mut c, "/1", "a", t0);
        put(&mut c, "/2", "b", t0);
        assert!(matches!(
            c.lookup("GET", "/1", None, none, t0),
            Lookup::Fresh(_)
        ));
        put(&mut c, "/3", "c", t0);
        assert!(
            matches!(c.lookup("GET", "/2", None, none, t0), Lookup::Miss),
            "least recent"
        );
        assert!(matches!(
            c.lookup("GET", "/1", None, none, t0),
            Lookup::Fresh(_)
        ));
        assert_eq!(c.stats().evictions, 1);
    }

    #[test]
    fn eviction_by_bytes_and_refusal() {
        // Room for two entries with 300-byte bodies, as one costs.
        let t0 = Instant::now();
        let body = "b".repeat(300);
        let mut probe = cache();
        put(&mut probe, "/0", &body, t0);
        let per = probe.bytes();
        assert!(per > 300 + VARIANT_OVERHEAD_BYTES + ENTRY_OVERHEAD_BYTES);
        let mut c = ResponseCache::new(CacheLimits {
            max_bytes: 2 * per + 10,
            max_entry_bytes: 10_000,
            ..limits()
        });
        put(&mut c, "/1", &body, t0);
        put(&mut c, "/2", &body, t0);
        put(&mut c, "/3", &body, t0);
        assert_eq!(c.len(), 2);
        assert!(c.bytes() <= 2 * per + 10);
        assert_eq!(c.stats().evictions, 1);
        // Below max_entry_bytes but above max_bytes: refused, nothing evicted.
        let d = decide(&c, &[], &[]).unwrap();
        let huge = "h".repeat(5_000);
        assert!(c
            .insert_stored("GET", "/4", None, none, entry(d, &[], &huge), t0)
            .is_none());
        assert_eq!(c.len(), 2);
        assert_eq!(c.stats().stores, 3);
    }

    #[test]
    fn not_modified_headers_subset() {
        let mut c = cache();
        let t0 = Instant::now();
        let d = decide(&c, &[], &[]).unwrap();
        let r = c
            .insert_stored(
                "GET",
                "/a",
                None,
                none,
                entry(
                    d,
                    &[
                        ("Content-Type", "application/json"),
                        ("Cache-Control", "max-age=30"),
                        ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                        ("Vary", "Accept"),
                        ("Content-Length", "2"),
                    ],
                    "{}",
                ),
                t0,
            )
            .unwrap();
        let names: Vec<&str> = r.not_modified_headers().map(|(n, _)| n).collect();
        assert_eq!(names, ["Cache-Control", "Date", "Vary", "ETag"]);
    }

    #[test]
    fn request_max_age_and_no_cache() {
        let mut c = cache();
        let t0 = Instant::now();
        let r = put(&mut c, "/a", "x", t0);
        let max5 = RequestDirectives::parse(&[b"max-age=5"]);
        assert!(r.satisfies(&max5, t0 + secs(5)));
        assert!(!r.satisfies(&max5, t0 + secs(6)));
        assert!(r.satisfies(&RequestDirectives::default(), t0 + secs(6)));
        assert!(!r.satisfies(&RequestDirectives::parse(&[b"no-cache"]), t0));
    }

    #[test]
    fn invalidate_and_clear() {
        let mut c = cache();
        let t0 = Instant::now();
        put(&mut c, "/a", "x", t0);
        put(&mut c, "/b", "y", t0);
        assert!(c.invalidate("/a", None));
        assert!(!c.invalidate("/a", None));
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0),
            Lookup::Miss
        ));
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.bytes(), 0);
    }

    #[test]
    fn evicted_response_stays_alive_for_its_reader() {
        let mut c = ResponseCache::new(CacheLimits {
            max_entries: 1,
            ..limits()
        });
        let t0 = Instant::now();
        let r = put(&mut c, "/a", "still here", t0);
        put(&mut c, "/b", "y", t0);
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0),
            Lookup::Miss
        ));
        assert_eq!(&*r.body, b"still here");
        assert_eq!(Rc::strong_count(&r), 1);
    }

    #[test]
    fn record_hit_counts() {
        let mut c = cache();
        c.record_hit();
        c.record_stale_served();
        let s = c.stats();
        assert_eq!((s.hits, s.stale_served, s.misses), (1, 1, 0));
        assert_eq!(c.limits(), &limits());
    }

    #[test]
    fn huge_lifetimes_do_not_overflow() {
        let mut c = ResponseCache::new(CacheLimits {
            ttl: Duration::MAX,
            stale_if_error: Duration::MAX,
            ..limits()
        });
        let t0 = Instant::now();
        let r = put(&mut c, "/a", "x", t0);
        assert!(r.is_fresh(t0 + secs(1_000_000)));
        assert!(matches!(
            c.lookup("GET", "/a", None, none, t0),
            Lookup::Fresh(_)
        ));
    }
}
