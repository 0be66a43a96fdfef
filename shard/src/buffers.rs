//! Per-shard pools of read and write buffers.
//!
//! A connection holds a read buffer only while it has unprocessed bytes, and
//! a write buffer only while it has a response to send. An idle keep-alive
//! connection holds neither, which is what keeps 10,000 idle connections
//! cheap; a busy connection takes warm, already-faulted-in memory from the
//! pool instead of calling the allocator per request.

use std::cell::RefCell;

/// Most free buffers of each kind a shard keeps. Beyond this they go back
/// to the allocator: 256 x 64 KiB is 16 MiB per shard, enough for the
/// concurrency a core can serve without letting a burst pin memory forever.
pub const POOL_MAX_BUFFERS: usize = 256;

/// Grown read buffers (a request with a large body) a shard keeps for the
/// next large request. Without this, every large upload allocates and frees
/// a body-sized buffer, and allocators that hand large blocks back to the
/// kernel turn that into page faults on every request (measured: 1.7x the
/// CPU per 200 KB echo with mimalloc). Eight keeps the bound at
/// 8 x (max_header_bytes + max_body_bytes) per shard.
pub const POOL_MAX_LARGE_READ_BUFFERS: usize = 8;

/// A write buffer that grew past this (a large echo or a deep pipeline) is
/// dropped rather than pooled, so one big response does not inflate every
/// pooled buffer.
pub const POOL_MAX_WRITE_BUFFER_BYTES: usize = 256 * 1024;

/// Capacity of a write buffer made when the pool has none, and the least a
/// returned buffer must have to be pooled. A buffer that started empty grew
/// by doubling through `realloc` three or four times while a proxied
/// request's head was written into it (~1,400 instructions per proxied
/// request in `proxy::prepare`, callgrind), and small buffers given back
/// kept the pool full of ones that would grow again. 2 KiB holds a typical
/// request or response head whole.
pub const NEW_WRITE_BUFFER_BYTES: usize = 2 * 1024;

/// A read buffer: `data` is fully initialised once (calloc'd), and
/// `start..end` are the bytes received but not yet consumed. Keeping the
/// whole allocation initialised lets reads go straight into `data[end..]`
/// without zeroing per read and without unsafe code.
#[derive(Debug)]
pub struct ReadBuf {
    pub data: Vec<u8>,
    pub start: usize,
    pub end: usize,
}

impl ReadBuf {
    pub fn pending(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn consume(&mut self, n: usize) {
        self.start += n;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Makes room at the end for at least one more byte: moves pending bytes
    /// to the front, then grows (doubling, up to `max_bytes`). Returns false
    /// when the buffer already holds `max_bytes` of pending data.
    pub fn make_room(&mut self, max_bytes: usize) -> bool {
        if self.end < self.data.len() {
            return true;
        }
        if self.start > 0 {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            return true;
        }
        if self.data.len() >= max_bytes {
            return false;
        }
        let new_len = (self.data.len() * 2).clamp(1, max_bytes);
        self.data.resize(new_len, 0);
        true
    }
}

#[derive(Debug)]
pub struct BufferPool {
    read_buffer_bytes: usize,
    reads: RefCell<Vec<Vec<u8>>>,
    large_reads: RefCell<Vec<Vec<u8>>>,
    writes: RefCell<Vec<Vec<u8>>>,
}

impl BufferPool {
    pub fn new(read_buffer_bytes: usize) -> Self {
        BufferPool {
            read_buffer_bytes,
            reads: RefCell::new(Vec::new()),
            large_reads: RefCell::new(Vec::new()),
            writes: RefCell::new(Vec::new()),
        }
    }

    pub fn take_read(&self) -> ReadBuf {
        let data = self
            .reads
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; self.read_buffer_bytes]);
        ReadBuf {
            data,
            start: 0,
            end: 0,
        }
    }

    /// Returns a read buffer to the pool it belongs to (or to the allocator
    /// when that pool is full).
    pub fn put_read(&self, buf: ReadBuf) {
        if buf.data.len() == self.read_buffer_bytes {
            let mut reads = self.reads.borrow_mut();
            if reads.len() < POOL_MAX_BUFFERS {
                reads.push(buf.data);
            }
        } else {
            let mut large = self.large_reads.borrow_mut();
            if large.len() < POOL_MAX_LARGE_READ_BUFFERS {
                large.push(buf.data);
            }
        }
    }

    /// Readies `buf` for `total` pending bytes (a request whose
    /// Content-Length is known): swaps in a pooled large buffer when one is
    /// big enough (already resident, so it costs nothing new and saves the
    /// doubling copies). Otherwise the buffer only grows (doubling, see
    /// [`ReadBuf::make_room`]) as the body arrives: memory follows the bytes
    /// received, not the length a head claims. Growing to `total` at once
    /// let 200 heads that each claimed 1 MiB, and sent nothing, commit
    /// 200 MiB.
    pub fn reserve_pending(&self, buf: &mut ReadBuf, total: usize) {
        if buf.data.len() - buf.start >= total {
            return;
        }
        let pending = buf.end - buf.start;
        let reuse = {
            let mut large = self.large_reads.borrow_mut();
            large
                .iter()
                .position(|b| b.len() >= total)
                .map(|i| large.swap_remove(i))
        };
        match reuse {
            Some(mut bigger) => {
                bigger[..pending].copy_from_slice(&buf.data[buf.start..buf.end]);
                let old = std::mem::replace(&mut buf.data, bigger);
                buf.start = 0;
                buf.end = pending;
                self.put_read(ReadBuf {
                    data: old,
                    start: 0,
                    end: 0,
                });
            }
            None => {
                if buf.start > 0 {
                    buf.data.copy_within(buf.start..buf.end, 0);
                    buf.end = pending;
                    buf.start = 0;
                }
            }
        }
    }

    pub fn take_write(&self) -> Vec<u8> {
        self.writes
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(NEW_WRITE_BUFFER_BYTES))
    }

    pub fn put_write(&self, mut buf: Vec<u8>) {
        let mut writes = self.writes.borrow_mut();
        if (NEW_WRITE_BUFFER_BYTES..=POOL_MAX_WRITE_BUFFER_BYTES).contains(&buf.capacity())
            && writes.len() < POOL_MAX_BUFFERS
        {
            buf.clear();
            writes.push(buf);
        }
    }

    pub fn read_buffer_bytes(&self) -> usize {
        self.read_buffer_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn make_room_compacts_then_grows_then_refuses() {
        let mut b = ReadBuf {
            data: vec![0; 4],
            start: 2,
            end: 4,
        };
        assert!(b.make_room(8));
        assert_eq!((b.start, b.end), (0, 2));
        b.end = 4;
        assert!(b.make_room(8));
        assert_eq!(b.data.len(), 8);
        b.end = 8;
        assert!(!b.make_room(8));
    }

    #[test]
    fn pool_keeps_standard_and_large_buffers_apart() {
        let pool = BufferPool::new(16);
        let mut r = pool.take_read();
        r.data.resize(32, 0);
        pool.put_read(r);
        assert!(pool.reads.borrow().is_empty());
        assert_eq!(pool.large_reads.borrow().len(), 1);
        pool.put_read(pool.take_read());
        assert_eq!(pool.reads.borrow().len(), 1);
    }

    #[test]
    fn reserve_pending_reuses_a_large_buffer_and_keeps_pending_bytes() {
        let pool = BufferPool::new(8);
        pool.put_read(ReadBuf {
            data: vec![0; 64],
            start: 0,
            end: 0,
        });
        let mut r = pool.take_read();
        r.data[..8].copy_from_slice(b"abcdefgh");
        r.start = 2;
        r.end = 8;
        pool.reserve_pending(&mut r, 40);
        assert_eq!(r.data.len(), 64);
        assert_eq!(r.pending(), b"cdefgh");
        assert!(pool.large_reads.borrow().is_empty());
        assert_eq!(pool.reads.borrow().len(), 1);
        // No pooled buffer fits: nothing is committed ahead of the bytes
        // (the buffer grows as they arrive).
        pool.reserve_pending(&mut r, 100);
        assert_eq!(r.data.len(), 64);
        assert_eq!(r.pending(), b"cdefgh");
    }

    #[test]
    fn write_buffers_start_with_room_and_small_ones_are_not_pooled() {
        let pool = BufferPool::new(16);
        let w = pool.take_write();
        assert!(w.capacity() >= NEW_WRITE_BUFFER_BYTES);
        pool.put_write(w);
        assert_eq!(pool.writes.borrow().len(), 1);
        pool.put_write(Vec::with_capacity(16));
        pool.put_write(Vec::with_capacity(POOL_MAX_WRITE_BUFFER_BYTES + 1));
        assert_eq!(pool.writes.borrow().len(), 1);
    }
}
