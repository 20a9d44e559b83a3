//! Payload buffers (READ data, WRITE data) of one connection, reused from
//! request to request.
//!
//! A fresh `vec![0; len]` per request costs a zero-fill (and, for large
//! sizes, an mmap and page faults) of every byte, only for the backend or
//! the socket to overwrite them. A [`Pool`] keeps a few buffers per
//! connection; a [`Payload`] goes back to its pool when dropped (after its
//! reply is written, or after the backend wrote it).
//!
//! No unsafe code: a pooled buffer stays fully initialized at the largest
//! length it ever had, and a payload is a prefix of it. Growing a buffer
//! zero-fills only the new part. The bytes handed out are whatever this
//! connection's earlier requests left there; the backend overwrites them
//! (`Export::read` fills its buffer) and so does a WRITE's payload read. A
//! pool is never shared between connections, so even a backend that breaks
//! that contract can only show a client bytes of its own earlier requests.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use crate::proto::POOLED_PAYLOAD_BYTES_MAX;

/// Free buffers of one connection.
#[derive(Default)]
pub(crate) struct Pool {
    free: Mutex<Free>,
}

#[derive(Default)]
struct Free {
    buffers: Vec<Vec<u8>>,
    /// Sum of the lengths of `buffers`; at most POOLED_PAYLOAD_BYTES_MAX.
    bytes: usize,
}

impl Pool {
    pub(crate) fn new() -> Arc<Pool> {
        Arc::new(Pool::default())
    }

    /// A payload of exactly `len` bytes with unspecified (initialized)
    /// contents, to be overwritten by the caller.
    pub(crate) fn take(self: &Arc<Pool>, len: usize) -> Payload {
        if len == 0 {
            return Payload::empty();
        }
        let mut buffer = {
            let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
            // The smallest buffer that fits, else the largest (least to
            // grow): with mixed request sizes, big buffers stay for big
            // requests.
            let fits = (0..free.buffers.len())
                .filter(|&i| free.buffers[i].len() >= len)
                .min_by_key(|&i| free.buffers[i].len());
            let pick =
                fits.or_else(|| (0..free.buffers.len()).max_by_key(|&i| free.buffers[i].len()));
            match pick {
                Some(i) => {
                    let buffer = free.buffers.swap_remove(i);
                    free.bytes -= buffer.len();
                    buffer
                }
                None => Vec::new(),
            }
        };
        if buffer.len() < len {
            buffer.resize(len, 0);
        }
        debug_assert!(buffer.len() >= len);
        Payload {
            buffer,
            len,
            pool: Some(self.clone()),
        }
    }

    fn give(&self, buffer: Vec<u8>) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        if free.bytes + buffer.len() > POOLED_PAYLOAD_BYTES_MAX {
            // Freed instead: the pool stays bounded whatever the sizes.
            return;
        }
        free.bytes += buffer.len();
        free.buffers.push(buffer);
        debug_assert_eq!(free.bytes, free.buffers.iter().map(Vec::len).sum::<usize>());
    }

    #[cfg(test)]
    fn pooled(&self) -> (usize, usize) {
        let free = self.free.lock().unwrap();
        (free.buffers.len(), free.bytes)
    }
}

/// `len` bytes of a pooled buffer; dereferences to exactly those bytes.
pub(crate) struct Payload {
    buffer: Vec<u8>,
    len: usize,
    pool: Option<Arc<Pool>>,
}

impl Payload {
    /// No bytes, no buffer, no pool.
    pub(crate) fn empty() -> Payload {
        Payload {
            buffer: Vec::new(),
            len: 0,
            pool: None,
        }
    }
}

impl Deref for Payload {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buffer[..self.len]
    }
}

impl DerefMut for Payload {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.buffer[..self.len]
    }
}

impl Drop for Payload {
    fn drop(&mut self) {
        if let Some(pool) = self.pool.take() {
            pool.give(std::mem::take(&mut self.buffer));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_and_are_reused() {
        let pool = Pool::new();
        let mut a = pool.take(1000);
        assert_eq!(a.len(), 1000);
        a.fill(7);
        let a_ptr = a.as_ptr();
        drop(a);
        assert_eq!(pool.pooled(), (1, 1000));
        // A smaller request reuses it without shrinking it.
        let b = pool.take(10);
        assert_eq!((b.len(), b.as_ptr()), (10, a_ptr));
        assert_eq!(pool.pooled(), (0, 0));
        drop(b);
        assert_eq!(pool.pooled(), (1, 1000));
        // A bigger one grows it; the old bytes are kept, the new part is 0.
        let c = pool.take(2000);
        assert_eq!(&c[..1000], &[7; 1000][..]);
        assert_eq!(&c[1000..], &[0; 1000][..]);
        drop(c);
        assert_eq!(pool.pooled(), (1, 2000));
        assert!(pool.take(0).is_empty());
        assert_eq!(pool.pooled(), (1, 2000));
    }

    #[test]
    fn best_fit_and_the_byte_bound() {
        let pool = Pool::new();
        let (small, big) = (pool.take(100), pool.take(5000));
        let big_ptr = big.as_ptr();
        drop((small, big));
        assert_eq!(pool.take(4000).as_ptr(), big_ptr);
        // Buffers past the bound are freed, not kept.
        let huge = pool.take(POOLED_PAYLOAD_BYTES_MAX);
        let other = pool.take(POOLED_PAYLOAD_BYTES_MAX);
        assert_eq!(pool.pooled(), (0, 0));
        drop(huge);
        assert_eq!(pool.pooled(), (1, POOLED_PAYLOAD_BYTES_MAX));
        drop(other);
        assert_eq!(pool.pooled(), (1, POOLED_PAYLOAD_BYTES_MAX));
    }
}
