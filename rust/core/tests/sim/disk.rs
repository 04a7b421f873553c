// SPDX-License-Identifier: GPL-2.0
//! In-memory disk with a volatile write cache: only flushed or FUA data survives a crash.
//!
//! Each block holds the id of the write that last wrote it (ids grow with time, so "newer"
//! is "larger"). Completion order across blocks is random; per block it follows submission
//! order (the driver never has two writes to one block in flight, and the peer's receiver
//! applies one connection's writes in order).

use std::collections::BTreeMap;

use crate::rng::Rng;

struct Io {
    first: usize,
    n: usize,
    val: u64,
    fua: bool,
}

/// One replica's backing device.
pub struct SimDisk {
    /// What survives a crash.
    pub durable: Vec<u64>,
    cache: Vec<Option<u64>>,
    inflight: BTreeMap<u64, Io>,
    last_done: Vec<u64>,
    next_io: u64,
}

impl SimDisk {
    /// A zeroed disk of `blocks` blocks.
    pub fn new(blocks: usize) -> Self {
        SimDisk {
            durable: vec![0; blocks],
            cache: vec![None; blocks],
            inflight: BTreeMap::new(),
            last_done: vec![0; blocks],
            next_io: 1,
        }
    }

    /// Submits a write; returns its id and completion time.
    pub fn submit(&mut self, now: u64, rng: &mut Rng, first: u64, n: u64, val: u64, fua: bool) -> (u64, u64) {
        let (first, n) = (first as usize, n as usize);
        let mut at = now + rng.range(1, 6);
        for b in first..first + n {
            at = at.max(self.last_done[b]);
        }
        for b in first..first + n {
            self.last_done[b] = at;
        }
        let io = self.next_io;
        self.next_io += 1;
        self.inflight.insert(io, Io { first, n, val, fua });
        (io, at)
    }

    /// Completes write `io` (false if it was lost in a crash).
    pub fn complete(&mut self, io: u64) -> bool {
        let Some(w) = self.inflight.remove(&io) else {
            return false;
        };
        for b in w.first..w.first + w.n {
            if w.fua {
                self.durable[b] = w.val;
                self.cache[b] = None;
            } else {
                self.cache[b] = Some(w.val);
            }
        }
        true
    }

    /// Makes every completed write durable.
    pub fn flush(&mut self) {
        for (d, c) in self.durable.iter_mut().zip(self.cache.iter_mut()) {
            if let Some(v) = c.take() {
                *d = v;
            }
        }
    }

    /// Current contents of block `b` (what a read returns).
    pub fn read(&self, b: u64) -> u64 {
        let b = b as usize;
        self.cache[b].unwrap_or(self.durable[b])
    }

    /// Power loss: in-flight writes vanish; each cached block reached the media or not.
    pub fn crash(&mut self, rng: &mut Rng) {
        self.inflight.clear();
        for (d, c) in self.durable.iter_mut().zip(self.cache.iter_mut()) {
            if let Some(v) = c.take() {
                if rng.chance(1, 2) {
                    *d = v;
                }
            }
        }
    }
}
