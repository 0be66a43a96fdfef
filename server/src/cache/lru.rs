//! [`ByteLru`]: a least-recently-used map from byte-string keys to values,
//! bounded both by entry count and by bytes.
//!
//! Nodes live densely in a `Vec` and are chained into a doubly linked
//! recency list by index; a `HashMap` finds a key's node. Every operation is
//! O(1) (amortised for the map): removal swaps the last node into the hole
//! and patches that node's neighbours and map slot, so there is no free list
//! and no `Option` per slot.
//!
//! The key is an `Rc<[u8]>` shared by the map and the node (the node needs
//! it to find its map slot when it is evicted), so each key is stored once.
//! The map keeps std's randomly seeded SipHash: keys are request URLs, which
//! clients choose, so a predictable hash would let them force collisions.

use std::collections::HashMap;
use std::rc::Rc;

/// Bytes charged per entry on top of its key and the caller's `size`: the
/// node (key pointer, links, cost), the map slot (key pointer and index plus
/// a control byte) and the key's `Rc` header, rounded up for the allocator.
/// Without it a flood of tiny entries could use many times `max_bytes`.
pub(crate) const ENTRY_OVERHEAD_BYTES: u64 = 128;

/// "No node" in the recency links.
const NIL: usize = usize::MAX;

#[derive(Debug)]
struct Node<V> {
    key: Rc<[u8]>,
    value: V,
    /// What this entry counts against `max_bytes` (see [`ByteLru::entry_cost`]).
    cost: u64,
    /// Towards the most recently used end.
    prev: usize,
    /// Towards the least recently used end.
    next: usize,
}

/// LRU map bounded by `max_entries` and `max_bytes`.
#[derive(Debug)]
pub(crate) struct ByteLru<V> {
    nodes: Vec<Node<V>>,
    index: HashMap<Rc<[u8]>, usize>,
    /// Most recently used node, or `NIL` when empty.
    head: usize,
    /// Least recently used node (the next to evict), or `NIL` when empty.
    tail: usize,
    max_entries: usize,
    max_bytes: u64,
    bytes: u64,
    evictions: u64,
}

impl<V> ByteLru<V> {
    /// An empty map. Nothing is allocated up front: a route's `max_entries`
    /// is a ceiling, not an expected size.
    pub(crate) fn new(max_entries: usize, max_bytes: u64) -> Self {
        ByteLru {
            nodes: Vec::new(),
            index: HashMap::new(),
            head: NIL,
            tail: NIL,
            max_entries,
            max_bytes,
            bytes: 0,
            evictions: 0,
        }
    }

    /// What an entry with a `key_len`-byte key and a caller-given `size`
    /// counts against `max_bytes`.
    pub(crate) fn entry_cost(key_len: usize, size: u64) -> u64 {
        (key_len as u64)
            .saturating_add(size)
            .saturating_add(ENTRY_OVERHEAD_BYTES)
    }

    /// Inserts or replaces `key`, making it the most recently used, and
    /// evicts least recently used entries until both limits hold.
    ///
    /// Returns false, storing nothing, when the entry alone exceeds
    /// `max_bytes` (or `max_entries` is 0): it could never fit. A previous
    /// value under `key` is removed in that case too, so an older value
    /// never outlives its attempted replacement.
    pub(crate) fn insert(&mut self, key: &[u8], value: V, size: u64) -> bool {
        let cost = Self::entry_cost(key.len(), size);
        if cost > self.max_bytes || self.max_entries == 0 {
            self.remove(key);
            return false;
        }
        if let Some(&i) = self.index.get(key) {
            let node = &mut self.nodes[i];
            // The old value is dropped here.
            node.value = value;
            self.bytes = (self.bytes - node.cost).saturating_add(cost);
            node.cost = cost;
            self.promote(i);
            // It is at the head now, so eviction from the tail reaches it
            // only if it is alone, and alone it fits (checked above).
            while self.bytes > self.max_bytes && self.nodes.len() > 1 {
                self.evict_lru();
            }
            return true;
        }
        while self.nodes.len() >= self.max_entries
            || self.bytes.saturating_add(cost) > self.max_bytes
        {
            if !self.evict_lru() {
                break;
            }
        }
        let key: Rc<[u8]> = Rc::from(key);
        let i = self.nodes.len();
        self.nodes.push(Node {
            key: Rc::clone(&key),
            value,
            cost,
            prev: NIL,
            next: NIL,
        });
        self.index.insert(key, i);
        self.push_front(i);
        self.bytes += cost;
        true
    }

    /// The value under `key`, made most recently used.
    pub(crate) fn get(&mut self, key: &[u8]) -> Option<&V> {
        let i = *self.index.get(key)?;
        self.promote(i);
        Some(&self.nodes[i].value)
    }

    /// The value under `key`, mutable, made most recently used. If the
    /// change alters what the value should cost, follow with [`Self::set_size`].
    pub(crate) fn get_mut(&mut self, key: &[u8]) -> Option<&mut V> {
        let i = *self.index.get(key)?;
        self.promote(i);
        Some(&mut self.nodes[i].value)
    }

    /// The value under `key`, without touching the recency order.
    pub(crate) fn peek(&self, key: &[u8]) -> Option<&V> {
        self.index.get(key).map(|&i| &self.nodes[i].value)
    }

    pub(crate) fn contains_key(&self, key: &[u8]) -> bool {
        self.index.contains_key(key)
    }

    /// Removes `key` and returns its value (not counted as an eviction).
    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<V> {
        let i = *self.index.get(key)?;
        Some(self.remove_at(i).value)
    }

    /// Re-prices the entry under `key` after its value changed in place,
    /// without changing its recency, then evicts least recently used
    /// entries until `max_bytes` holds again (which can include this entry
    /// if it is the least recently used). Returns whether `key` is still
    /// present; false also when it was absent or alone exceeds `max_bytes`
    /// (then it is removed).
    pub(crate) fn set_size(&mut self, key: &[u8], size: u64) -> bool {
        let Some(&i) = self.index.get(key) else {
            return false;
        };
        let cost = Self::entry_cost(key.len(), size);
        if cost > self.max_bytes {
            self.remove_at(i);
            return false;
        }
        let node = &mut self.nodes[i];
        self.bytes = (self.bytes - node.cost).saturating_add(cost);
        node.cost = cost;
        while self.bytes > self.max_bytes {
            if !self.evict_lru() {
                break;
            }
        }
        self.index.contains_key(key)
    }

    /// Drops every entry (not counted as evictions).
    pub(crate) fn clear(&mut self) {
        self.nodes.clear();
        self.index.clear();
        self.head = NIL;
        self.tail = NIL;
        self.bytes = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Sum of the entries' costs (keys + sizes + [`ENTRY_OVERHEAD_BYTES`] each).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries dropped to make room since creation.
    pub(crate) fn evictions(&self) -> u64 {
        self.evictions
    }

    pub(crate) fn max_entries(&self) -> usize {
        self.max_entries
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Drops the least recently used entry; false when empty.
    fn evict_lru(&mut self) -> bool {
        if self.tail == NIL {
            return false;
        }
        self.remove_at(self.tail);
        self.evictions += 1;
        true
    }

    fn promote(&mut self, i: usize) {
        if self.head != i {
            self.unlink(i);
            self.push_front(i);
        }
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
        if prev == NIL {
            self.head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }

    fn push_front(&mut self, i: usize) {
        self.nodes[i].prev = NIL;
        self.nodes[i].next = self.head;
        if self.head == NIL {
            self.tail = i;
        } else {
            self.nodes[self.head].prev = i;
        }
        self.head = i;
    }

    /// Unlinks and removes node `i`; the last node moves into slot `i`.
    fn remove_at(&mut self, i: usize) -> Node<V> {
        self.unlink(i);
        self.index.remove(&self.nodes[i].key);
        let node = self.nodes.swap_remove(i);
        self.bytes -= node.cost;
        if i < self.nodes.len() {
            // The former last node now sits at `i`: repoint its neighbours
            // and its map slot. Nothing links to the removed node any more,
            // so none of these is `i`'s old occupant.
            let (prev, next) = (self.nodes[i].prev, self.nodes[i].next);
            if prev == NIL {
                self.head = i;
            } else {
                self.nodes[prev].next = i;
            }
            if next == NIL {
                self.tail = i;
            } else {
                self.nodes[next].prev = i;
            }
            if let Some(slot) = self.index.get_mut(&self.nodes[i].key) {
                *slot = i;
            }
        }
        node
    }

    /// Keys from most to least recently used.
    #[cfg(test)]
    fn keys_mru_first(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut i = self.head;
        while i != NIL {
            out.push(self.nodes[i].key.to_vec());
            i = self.nodes[i].next;
        }
        out
    }

    /// Checks the links, the index and the byte count against each other.
    #[cfg(test)]
    fn check_invariants(&self) {
        assert_eq!(self.index.len(), self.nodes.len());
        let order = self.keys_mru_first();
        assert_eq!(order.len(), self.nodes.len(), "list covers every node once");
        let mut back = Vec::new();
        let mut i = self.tail;
        while i != NIL {
            back.push(self.nodes[i].key.to_vec());
            i = self.nodes[i].prev;
        }
        back.reverse();
        assert_eq!(order, back, "prev links mirror next links");
        for (i, n) in self.nodes.iter().enumerate() {
            assert_eq!(self.index.get(&n.key), Some(&i));
        }
        assert_eq!(self.bytes, self.nodes.iter().map(|n| n.cost).sum::<u64>());
        assert!(self.bytes <= self.max_bytes);
        assert!(self.nodes.len() <= self.max_entries);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Cost of a one-byte key with size `size`.
    fn c1(size: u64) -> u64 {
        ByteLru::<()>::entry_cost(1, size)
    }

    #[test]
    fn insert_and_get() {
        let mut lru = ByteLru::new(10, 10_000);
        assert!(lru.insert(b"a", 1, 10));
        assert!(lru.insert(b"b", 2, 20));
        assert_eq!(lru.get(b"a"), Some(&1));
        assert_eq!(lru.get(b"b"), Some(&2));
        assert_eq!(lru.get(b"c"), None);
        assert_eq!(lru.len(), 2);
        assert_eq!(lru.bytes(), c1(10) + c1(20));
        lru.check_invariants();
    }

    #[test]
    fn evicts_by_count_least_recent_first() {
        let mut lru = ByteLru::new(3, u64::MAX);
        for k in [b"a", b"b", b"c", b"d"] {
            assert!(lru.insert(k, (), 1));
        }
        assert_eq!(lru.len(), 3);
        assert!(!lru.contains_key(b"a"));
        assert_eq!(lru.evictions(), 1);
        assert_eq!(
            lru.keys_mru_first(),
            vec![b"d".to_vec(), b"c".to_vec(), b"b".to_vec()]
        );
        lru.check_invariants();
    }

    #[test]
    fn evicts_by_bytes() {
        // Room for exactly two 100-byte entries.
        let mut lru = ByteLru::new(100, 2 * c1(100));
        assert!(lru.insert(b"a", (), 100));
        assert!(lru.insert(b"b", (), 100));
        assert!(lru.insert(b"c", (), 100));
        assert!(!lru.contains_key(b"a"));
        assert_eq!(lru.len(), 2);
        // One large entry pushes out both others.
        assert!(lru.insert(b"d", (), 2 * c1(100) - c1(0)));
        assert_eq!(lru.len(), 1);
        assert!(lru.contains_key(b"d"));
        assert_eq!(lru.evictions(), 3);
        lru.check_invariants();
    }

    #[test]
    fn get_promotes() {
        let mut lru = ByteLru::new(2, u64::MAX);
        lru.insert(b"a", 1, 0);
        lru.insert(b"b", 2, 0);
        assert_eq!(lru.get(b"a"), Some(&1));
        lru.insert(b"c", 3, 0);
        assert!(lru.contains_key(b"a"), "a was used after b");
        assert!(!lru.contains_key(b"b"));
        lru.check_invariants();
    }

    #[test]
    fn get_mut_promotes_and_mutates() {
        let mut lru = ByteLru::new(2, u64::MAX);
        lru.insert(b"a", 1, 0);
        lru.insert(b"b", 2, 0);
        *lru.get_mut(b"a").unwrap() += 10;
        lru.insert(b"c", 3, 0);
        assert_eq!(lru.peek(b"a"), Some(&11));
        assert!(!lru.contains_key(b"b"));
    }

    #[test]
    fn peek_does_not_promote() {
        let mut lru = ByteLru::new(2, u64::MAX);
        lru.insert(b"a", 1, 0);
        lru.insert(b"b", 2, 0);
        assert_eq!(lru.peek(b"a"), Some(&1));
        lru.insert(b"c", 3, 0);
        assert!(!lru.contains_key(b"a"));
    }

    #[test]
    fn oversize_is_refused() {
        let mut lru = ByteLru::new(10, 1_000);
        lru.insert(b"small", 1, 10);
        assert!(!lru.insert(b"big", 2, 1_000));
        assert!(!lru.contains_key(b"big"));
        assert!(lru.contains_key(b"small"), "a refusal evicts nothing");
        assert_eq!(lru.evictions(), 0);
        // The key counts too: a size that fits alone fails with a long key.
        let room = 1_000 - ENTRY_OVERHEAD_BYTES;
        let mut empty = ByteLru::new(10, 1_000);
        assert!(empty.insert(b"", 0, room));
        assert!(!empty.insert(b"k", 0, room));
    }

    #[test]
    fn oversize_replacement_removes_old_value() {
        let mut lru = ByteLru::new(10, 1_000);
        lru.insert(b"a", 1, 10);
        assert!(!lru.insert(b"a", 2, 5_000));
        assert!(!lru.contains_key(b"a"));
        assert_eq!(lru.bytes(), 0);
        lru.check_invariants();
    }

    #[test]
    fn zero_max_entries_stores_nothing() {
        let mut lru = ByteLru::new(0, u64::MAX);
        assert!(!lru.insert(b"a", (), 0));
        assert!(lru.is_empty());
    }

    #[test]
    fn replace_updates_cost_and_promotes() {
        let mut lru = ByteLru::new(10, 3 * c1(100));
        lru.insert(b"a", 1, 100);
        lru.insert(b"b", 2, 100);
        lru.insert(b"c", 3, 100);
        // Growing `a` (now most recent) forces out `b`, the least recent.
        assert!(lru.insert(b"a", 4, 200));
        assert_eq!(lru.peek(b"a"), Some(&4));
        assert!(!lru.contains_key(b"b"));
        assert!(lru.contains_key(b"c"));
        assert_eq!(lru.bytes(), c1(200) + c1(100));
        assert_eq!(lru.evictions(), 1);
        lru.check_invariants();
    }

    #[test]
    fn remove_returns_value_and_frees_bytes() {
        let mut lru = ByteLru::new(10, u64::MAX);
        lru.insert(b"a", 1, 10);
        lru.insert(b"b", 2, 20);
        lru.insert(b"c", 3, 30);
        assert_eq!(lru.remove(b"a"), Some(1));
        assert_eq!(lru.remove(b"a"), None);
        assert_eq!(lru.bytes(), c1(20) + c1(30));
        assert_eq!(lru.evictions(), 0, "removal is not eviction");
        lru.check_invariants();
        assert_eq!(lru.keys_mru_first(), vec![b"c".to_vec(), b"b".to_vec()]);
    }

    #[test]
    fn set_size_reprices_in_place() {
        let mut lru = ByteLru::new(10, 2 * c1(100));
        lru.insert(b"a", (), 100);
        lru.insert(b"b", (), 100);
        assert!(lru.set_size(b"b", 10));
        assert_eq!(lru.bytes(), c1(100) + c1(10));
        // Growing `a` (least recent) past the limit evicts `a` itself.
        assert!(!lru.set_size(b"a", 195));
        assert!(lru.contains_key(b"b"));
        assert!(!lru.set_size(b"zz", 1));
        assert!(!lru.set_size(b"b", u64::MAX));
        assert!(lru.is_empty());
        lru.check_invariants();
    }

    #[test]
    fn evicted_values_are_dropped() {
        let tracker = Rc::new(());
        let mut lru = ByteLru::new(1, u64::MAX);
        lru.insert(b"a", Rc::clone(&tracker), 0);
        assert_eq!(Rc::strong_count(&tracker), 2);
        lru.insert(b"b", Rc::clone(&tracker), 0);
        assert_eq!(Rc::strong_count(&tracker), 2, "evicted value dropped");
        lru.insert(b"b", Rc::clone(&tracker), 0);
        assert_eq!(Rc::strong_count(&tracker), 2, "replaced value dropped");
        lru.clear();
        assert_eq!(Rc::strong_count(&tracker), 1);
        assert!(lru.is_empty());
        assert_eq!(lru.bytes(), 0);
    }

    #[test]
    fn churn_keeps_invariants() {
        // Deterministic pseudo-random mix of operations.
        let mut lru = ByteLru::new(50, 50 * c1(40));
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..5_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = [(x % 97) as u8];
            match (x >> 8) % 4 {
                0 | 1 => {
                    lru.insert(&key, x, (x >> 16) % 80);
                }
                2 => {
                    lru.get(&key);
                }
                _ => {
                    lru.remove(&key);
                }
            }
        }
        lru.check_invariants();
        assert!(lru.evictions() > 0);
        assert_eq!(lru.max_entries(), 50);
        assert_eq!(lru.max_bytes(), 50 * c1(40));
    }
}
