//! Idempotency keys (`idempotency = { ttl }`, IETF draft
//! "The Idempotency-Key HTTP Header Field").
//!
//! A `POST` or `PATCH` with an `Idempotency-Key` is looked up at the key's
//! owner shard (`hash(route, consumer, key) % shards`): other shards ask
//! the owner by message and wait for the answer, so these requests always
//! take the streaming path. The owner answers:
//! - *proceed*: the key is new; it is now marked in flight with the
//!   request's fingerprint (SHA-256 of method, target and body). When the
//!   action has answered, its response (as the action wrote it, up to
//!   `max_response_bytes`, not a 5xx) is stored for `ttl`; otherwise the
//!   key is released so a retry runs again.
//! - *replay*: the same key and fingerprint completed: the stored response
//!   is sent again with `Idempotent-Replayed: true`, the action does not run.
//! - *in flight* (→ 409) or *mismatch* (same key, other fingerprint → 422).
//!
//! Keys are scoped per route and consumer (anonymous without auth), kept
//! per owner shard up to `max_keys` (expired keys go first, then the ones
//! closest to expiry), and an in-flight mark older than
//! [`IN_FLIGHT_MAX`] is taken as abandoned.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shardline_shard::mesh::{Mesh, Message};

use shardline_shard::hash::{hash64, BuildBytesHasher};

/// An in-flight mark older than this is abandoned (its shard stopped
/// mid-request): longer than any sane route timeout.
pub const IN_FLIGHT_MAX: Duration = Duration::from_secs(300);

/// How long a shard waits for the owner's answer before answering 503.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// A duplicate that finds its key still in flight asks again for this long
/// before answering 409: the original's response reaches its client before
/// the owner shard has stored it (the store is a message after the write),
/// so a client that retries at once, on another connection, would
/// otherwise be told "still in progress" for a request that is done.
pub const IN_FLIGHT_GRACE: Duration = Duration::from_millis(100);

/// How often a duplicate asks again within [`IN_FLIGHT_GRACE`].
pub const IN_FLIGHT_RECHECK: Duration = Duration::from_millis(10);

/// Longest `Idempotency-Key` value accepted.
pub const MAX_KEY_BYTES: usize = 255;

pub type Fingerprint = [u8; 32];

/// What the owner says about a key.
#[derive(Debug)]
pub enum Begin {
    Proceed,
    Replay(Vec<u8>),
    InFlight,
    Mismatch,
    /// The owner did not answer in time.
    Unavailable,
}

enum Entry {
    InFlight {
        fp: Fingerprint,
        since: Instant,
    },
    Done {
        fp: Fingerprint,
        response: Vec<u8>,
        expires: Instant,
    },
}

struct BeginMsg {
    id: u64,
    key: Box<[u8]>,
    fp: Fingerprint,
    max_keys: usize,
}

struct BeginReply {
    id: u64,
    outcome: Begin,
}

struct FinishMsg {
    key: Box<[u8]>,
    fp: Fingerprint,
    response: Option<Vec<u8>>,
    ttl: Duration,
}

#[derive(Default)]
struct Slot {
    result: Option<Begin>,
    waker: Option<Waker>,
}

/// One shard's idempotency state: the keys it owns and its open asks.
pub(crate) struct Idempotency {
    me: usize,
    count: usize,
    mesh: Option<Rc<Mesh>>,
    table: RefCell<HashMap<Box<[u8]>, Entry, BuildBytesHasher>>,
    asks: RefCell<HashMap<u64, Slot>>,
    next_ask: Cell<u64>,
}

/// A fingerprint of what makes a request "the same request".
pub fn fingerprint(method: &str, target: &str, body: &[u8]) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(method.as_bytes());
    h.update([0]);
    h.update(target.as_bytes());
    h.update([0]);
    h.update(body);
    h.finalize().into()
}

/// The key's table entry name: route, consumer and key, length-prefixed so
/// no two different triples collide.
pub fn scoped_key(route: usize, consumer: &[u8], key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + consumer.len() + key.len());
    out.extend_from_slice(&(route as u32).to_le_bytes());
    out.extend_from_slice(&(consumer.len() as u32).to_le_bytes());
    out.extend_from_slice(consumer);
    out.extend_from_slice(key);
    out
}

/// Whether an `Idempotency-Key` value is usable (the draft makes it an
/// sf-string; bare tokens are accepted too).
pub fn valid_key(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= MAX_KEY_BYTES
        && v.iter().all(|b| b.is_ascii_graphic() || *b == b' ')
}

impl Idempotency {
    pub(crate) fn new(me: usize, count: usize, mesh: Option<Rc<Mesh>>) -> Rc<Idempotency> {
        let count = if mesh.is_some() { count.max(1) } else { 1 };
        let i = Rc::new(Idempotency {
            me: if count == 1 { 0 } else { me },
            count,
            mesh,
            table: RefCell::new(HashMap::default()),
            asks: RefCell::new(HashMap::new()),
            next_ask: Cell::new(1),
        });
        if let Some(mesh) = &i.mesh {
            let weak: Weak<Idempotency> = Rc::downgrade(&i);
            mesh.subscribe(Rc::new(move |from, msg| {
                let Some(i) = weak.upgrade() else {
                    return Some(msg);
                };
                let msg = match msg.downcast::<BeginMsg>() {
                    Ok(b) => {
                        let outcome = i.begin_local(&b.key, b.fp, b.max_keys);
                        if let Some(m) = &i.mesh {
                            m.send(from, Box::new(BeginReply { id: b.id, outcome }) as Message);
                        }
                        return None;
                    }
                    Err(m) => m,
                };
                let msg = match msg.downcast::<BeginReply>() {
                    Ok(r) => {
                        let mut asks = i.asks.borrow_mut();
                        if let Some(slot) = asks.get_mut(&r.id) {
                            slot.result = Some(r.outcome);
                            if let Some(w) = slot.waker.take() {
                                w.wake();
                            }
                        }
                        return None;
                    }
                    Err(m) => m,
                };
                match msg.downcast::<FinishMsg>() {
                    Ok(f) => {
                        i.finish_local(&f.key, f.fp, f.response, f.ttl);
                        None
                    }
                    Err(m) => Some(m),
                }
            }));
        }
        i
    }

    fn owner_of(&self, key: &[u8]) -> usize {
        if self.count <= 1 {
            self.me
        } else {
            (hash64(key) % self.count as u64) as usize
        }
    }

    fn begin_local(&self, key: &[u8], fp: Fingerprint, max_keys: usize) -> Begin {
        let now = Instant::now();
        let mut t = self.table.borrow_mut();
        match t.get(key) {
            Some(Entry::InFlight { fp: f, since })
                if now.duration_since(*since) < IN_FLIGHT_MAX =>
            {
                return if *f == fp {
                    Begin::InFlight
                } else {
                    Begin::Mismatch
                };
            }
            Some(Entry::Done {
                fp: f,
                response,
                expires,
            }) if now < *expires => {
                return if *f == fp {
                    Begin::Replay(response.clone())
                } else {
                    Begin::Mismatch
                };
            }
            _ => {}
        }
        if !t.contains_key(key) && t.len() >= max_keys {
            t.retain(|_, e| match e {
                Entry::InFlight { since, .. } => now.duration_since(*since) < IN_FLIGHT_MAX,
                Entry::Done { expires, .. } => now < *expires,
            });
            if t.len() >= max_keys {
                // Still full of live keys: drop the stored response closest
                // to expiry (it would have gone first anyway).
                let victim = t
                    .iter()
                    .filter_map(|(k, e)| match e {
                        Entry::Done { expires, .. } => Some((*expires, k.clone())),
                        Entry::InFlight { .. } => None,
                    })
                    .min_by_key(|(e, _)| *e)
                    .map(|(_, k)| k);
                match victim {
                    Some(k) => {
                        t.remove(&k);
                    }
                    None => return Begin::Unavailable,
                }
            }
        }
        t.insert(key.into(), Entry::InFlight { fp, since: now });
        Begin::Proceed
    }

    fn finish_local(&self, key: &[u8], fp: Fingerprint, response: Option<Vec<u8>>, ttl: Duration) {
        let mut t = self.table.borrow_mut();
        let ours = matches!(t.get(key), Some(Entry::InFlight { fp: f, .. }) if *f == fp);
        if !ours {
            return;
        }
        match response {
            Some(response) => {
                t.insert(
                    key.into(),
                    Entry::Done {
                        fp,
                        response,
                        expires: Instant::now() + ttl,
                    },
                );
            }
            None => {
                t.remove(key);
            }
        }
    }

    /// Asks the key's owner whether this request may run; a key still in
    /// flight is asked about again for up to [`IN_FLIGHT_GRACE`].
    pub(crate) async fn begin(&self, key: &[u8], fp: Fingerprint, max_keys: usize) -> Begin {
        let grace_until = Instant::now() + IN_FLIGHT_GRACE;
        loop {
            let begun = self.ask(key, fp, max_keys).await;
            if !matches!(begun, Begin::InFlight) || Instant::now() >= grace_until {
                return begun;
            }
            glommio::timer::sleep(IN_FLIGHT_RECHECK).await;
        }
    }

    /// One answer from the key's owner (by message, or directly when it is
    /// this shard).
    async fn ask(&self, key: &[u8], fp: Fingerprint, max_keys: usize) -> Begin {
        let owner = self.owner_of(key);
        if owner == self.me {
            return self.begin_local(key, fp, max_keys);
        }
        let Some(mesh) = &self.mesh else {
            return Begin::Unavailable;
        };
        let id = self.next_ask.get();
        self.next_ask.set(id + 1);
        self.asks.borrow_mut().insert(id, Slot::default());
        let sent = mesh.send(
            owner,
            Box::new(BeginMsg {
                id,
                key: key.into(),
                fp,
                max_keys,
            }) as Message,
        );
        if !sent {
            self.asks.borrow_mut().remove(&id);
            return Begin::Unavailable;
        }
        let answer = std::future::poll_fn(|cx| {
            let mut asks = self.asks.borrow_mut();
            match asks.get_mut(&id) {
                Some(slot) => match slot.result.take() {
                    Some(r) => Poll::Ready(r),
                    None => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                },
                None => Poll::Ready(Begin::Unavailable),
            }
        });
        let out = futures_lite::future::or(answer, async {
            glommio::timer::sleep(ASK_TIMEOUT).await;
            Begin::Unavailable
        })
        .await;
        self.asks.borrow_mut().remove(&id);
        out
    }

    /// Stores the response for the key (`Some`) or releases the key.
    pub(crate) fn finish(
        &self,
        key: &[u8],
        fp: Fingerprint,
        response: Option<Vec<u8>>,
        ttl: Duration,
    ) {
        let owner = self.owner_of(key);
        if owner == self.me {
            self.finish_local(key, fp, response, ttl);
        } else if let Some(mesh) = &self.mesh {
            mesh.send(
                owner,
                Box::new(FinishMsg {
                    key: key.into(),
                    fp,
                    response,
                    ttl,
                }) as Message,
            );
        }
    }
}

/// Releases the key if the request ends without storing a response (the
/// action's future dropped mid-way).
pub(crate) struct Guard<'a> {
    pub idem: &'a Idempotency,
    pub key: Vec<u8>,
    pub fp: Fingerprint,
    pub ttl: Duration,
    pub done: bool,
}

impl Guard<'_> {
    pub(crate) fn finish(mut self, response: Option<Vec<u8>>) {
        self.done = true;
        self.idem.finish(&self.key, self.fp, response, self.ttl);
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.idem.finish(&self.key, self.fp, None, self.ttl);
        }
    }
}

/// Decides whether a captured response may be stored for replay, and
/// returns it without the fields that belong to one connection.
pub fn storable(captured: &[u8]) -> Option<Vec<u8>> {
    let end = captured.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = &captured[..end];
    let status: u16 = std::str::from_utf8(head.get(9..12)?).ok()?.parse().ok()?;
    if !(200..500).contains(&status) {
        return None;
    }
    let mut out = Vec::with_capacity(captured.len());
    let mut framed = matches!(status, 204 | 304);
    for (i, line) in head[..end - 4].split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if i > 0 {
            let lower = line.to_ascii_lowercase();
            if lower.starts_with(b"connection:") || lower.starts_with(b"keep-alive:") {
                continue;
            }
            if lower.starts_with(b"content-length:") || lower.starts_with(b"transfer-encoding:") {
                framed = true;
            }
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    if !framed {
        // Close-delimited: cannot be replayed on a kept connection.
        return None;
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&captured[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storable_strips_connection_fields() {
        let r = b"HTTP/1.1 201 Created\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(
            storable(r).unwrap(),
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok".to_vec()
        );
        assert!(storable(b"HTTP/1.1 503 Nope\r\nContent-Length: 0\r\n\r\n").is_none());
        assert!(storable(b"HTTP/1.1 200 OK\r\n\r\nclose-delimited").is_none());
        assert!(storable(b"HTTP/1.1 200 OK\r\nContent-Le").is_none());
    }

    #[test]
    fn local_lifecycle() {
        let i = Idempotency::new(0, 1, None);
        let k = scoped_key(0, b"alice", b"k1");
        let fp = fingerprint("POST", "/a", b"x");
        assert!(matches!(i.begin_local(&k, fp, 10), Begin::Proceed));
        assert!(matches!(i.begin_local(&k, fp, 10), Begin::InFlight));
        let other = fingerprint("POST", "/a", b"y");
        assert!(matches!(i.begin_local(&k, other, 10), Begin::Mismatch));
        i.finish_local(&k, fp, Some(b"resp".to_vec()), Duration::from_secs(60));
        assert!(matches!(i.begin_local(&k, fp, 10), Begin::Replay(r) if r == b"resp"));
        assert!(matches!(i.begin_local(&k, other, 10), Begin::Mismatch));
        // Released keys run again.
        let k2 = scoped_key(0, b"alice", b"k2");
        assert!(matches!(i.begin_local(&k2, fp, 10), Begin::Proceed));
        i.finish_local(&k2, fp, None, Duration::from_secs(60));
        assert!(matches!(i.begin_local(&k2, fp, 10), Begin::Proceed));
        // Scoped per consumer.
        let k3 = scoped_key(0, b"bob", b"k1");
        assert!(matches!(i.begin_local(&k3, fp, 10), Begin::Proceed));
    }
}
