//! Per-shard HTTP response cache for upstream routes (issue 4, "Cache"):
//! the pure logic. No I/O, no `async`, no clock reads: the proxy passes the
//! request's parts, the upstream's status, fields and body, and `now`, so
//! every rule here is unit-tested with made-up instants.
//!
//! Each shard owns one [`ResponseCache`] per cached route (plain `&mut`,
//! or `RefCell` on the shard; nothing is shared between shards), so a
//! route's `max_entries` / `max_bytes` apply per shard.
//!
//! # Layout
//! - [`lru`]: [`ByteLru`], an O(1) least-recently-used map bounded by entry
//!   count and bytes.
//! - [`control`]: `Cache-Control` request and response directives (RFC 9111
//!   §5.2, RFC 5861 `stale-if-error`) and `Vary`.
//! - [`etag`]: the generated strong `ETag` (FNV-1a of the body) and
//!   `If-None-Match` evaluation (RFC 9110 §13.1.2).
//! - [`store`]: [`ResponseCache`]: keys, Vary variants, the store decision,
//!   freshness and the stale-if-error window, counters.
//! - [`inflight`]: [`InFlight`], request-coalescing bookkeeping (leader and
//!   followers per key; the waiting itself is the caller's).
//!
//! # Use from the proxy
//! For a GET/HEAD on a route with `cache`:
//! 1. [`RequestDirectives::parse`] the request's `Cache-Control` values;
//!    if it [`RequestDirectives::bypasses`], go upstream with
//!    `X-Cache: BYPASS`.
//! 2. [`ResponseCache::lookup_uncounted`] (counting the request once, as a
//!    hit or a miss). `Fresh` and [`CachedResponse::satisfies`] the
//!    request's `max-age`: answer from it (`X-Cache: HIT`,
//!    an `Age` of [`CachedResponse::age_secs`]); if
//!    [`CachedResponse::matches_if_none_match`] on the request's
//!    `If-None-Match` values, answer 304 with the fields RFC 9110 §15.4.5
//!    lists and no body. A hit writes the entry's fields as encoded once
//!    at store time (`CachedResponse::prepared`, `prepared_not_modified`).
//! 3. `Stale` or `Miss`: [`InFlight::begin`] with [`primary_key`]. A
//!    follower waits ([`InFlight::wait`]) and then looks up again. The
//!    leader goes upstream; on the response head,
//!    [`ResponseCache::decide_store`]; if that says store, it keeps a copy
//!    of the body (up to `max_entry_bytes`) while streaming it and then
//!    calls [`ResponseCache::insert`]; in every case it ends with
//!    [`InFlight::finish`]. If the upstream fails (connect error, timeout,
//!    5xx) and the lookup was `Stale`, it serves the stale copy with
//!    `X-Cache: STALE` and calls [`ResponseCache::record_stale_served`].

pub(crate) mod control;
pub(crate) mod etag;
pub(crate) mod inflight;
pub(crate) mod lru;
pub(crate) mod store;

pub(crate) use control::RequestDirectives;
pub(crate) use inflight::InFlight;
pub(crate) use store::{
    is_cacheable_method, primary_key, CacheLimits, CachedResponse, Lookup, NewEntry, ResponseCache,
};
