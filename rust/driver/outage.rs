// SPDX-License-Identifier: GPL-2.0
//! The outage queue (seed 002): writes made during a short outage are kept, with a copy of their
//! data, in submission order, and replayed in that order once the link has passed probation, so
//! the secondary always holds a prefix of the primary's history (crash-consistent the whole
//! time, unlike a bitmap resync, which copies regions in disk order).
//!
//! The queue is the core's `state::outage::Queue` (order, in-flight accounting, acks, rewind,
//! overflow); this module keeps the data buffers under its tags. It lives in the connection
//! state (`Conn`, under its mutex), so the decision where a write goes and the push are one step:
//!
//! - replicating with an empty queue: the write goes to the peer as usual;
//! - in an outage that began while replicating, or while a replay is still running: the write's
//!   data is copied into the queue and the write completes after the local write (the writes
//!   queued or in flight when the connection was lost go first, in their order);
//! - otherwise (never connected, the queue overflowed, or the outage outlived `outage_max`): the
//!   write's regions go to the fracture bitmap.
//!
//! A push that does not fit (`outage_queue_bytes`, or [`MAX_ENTRIES`]) overflows the queue: every
//! queued range goes to the bitmap and the queue is dropped; the bitmap resync takes over after
//! the outage. Replay sends up to [`REPLAY_WINDOW`] entries at once; an entry leaves the queue
//! when the peer acks it durable (or negatively: then its range is marked). A connection lost
//! during the replay rewinds it: the entries in flight are sent again, in order.

use crate::bindings::bio::CloneRef;
use crate::device::{Conn, Device};
use crate::rcore::state::outage::{Entry, Push, Queue};
use crate::request::Request;
use kernel::prelude::*;

/// Most entries the queue holds.
pub(crate) const MAX_ENTRIES: usize = 4096;
/// Default byte bound (sysfs `outage_queue_bytes`).
pub(crate) const DEFAULT_MAX_BYTES: u64 = 32 << 20;
/// Largest accepted byte bound.
pub(crate) const MAX_BYTES_LIMIT: u64 = 1 << 30;
/// Replayed entries in flight at once.
pub(crate) const REPLAY_WINDOW: usize = 64;

/// The data and wire identity of one queued write, under its tag.
pub(crate) struct Held {
    /// The payload (None for a flush, or while the sender has it out).
    pub(crate) data: Option<KVVec<u8>>,
    /// The sequence number on the wire (the write's own), which the peer's ack names.
    pub(crate) wire_seq: u32,
    /// The queue's sequence number of the entry.
    qseq: u64,
    sector: u64,
    len: u32,
    pub(crate) preflush: bool,
    pub(crate) fua: bool,
    /// Sent on the current connection and not acked yet.
    sent: bool,
}

/// A queued write handed to the sender.
pub(crate) struct ToSend {
    pub(crate) entry: Entry,
    pub(crate) wire_seq: u32,
    pub(crate) preflush: bool,
    pub(crate) fua: bool,
    pub(crate) data: Option<KVVec<u8>>,
}

/// The outage queue with its buffers.
pub(crate) struct OutageQueue {
    q: Queue<KVec<Entry>>,
    held: KVec<Option<Held>>,
    free: KVec<u32>,
    /// Entries sent by replays, in total.
    pub(crate) replayed: u64,
    /// Times the queue was given up (overflow or `outage_max`).
    pub(crate) overflows: u64,
}

impl OutageQueue {
    /// An empty queue bounded by `max_bytes`.
    pub(crate) fn new(max_bytes: u64) -> Result<Self> {
        let mut slots = KVec::with_capacity(MAX_ENTRIES, GFP_KERNEL)?;
        let mut held = KVec::with_capacity(MAX_ENTRIES, GFP_KERNEL)?;
        let mut free = KVec::with_capacity(MAX_ENTRIES, GFP_KERNEL)?;
        for i in 0..MAX_ENTRIES {
            slots.push(Entry::EMPTY, GFP_KERNEL)?;
            held.push(None, GFP_KERNEL)?;
            free.push((MAX_ENTRIES - 1 - i) as u32, GFP_KERNEL)?;
        }
        let mut q = Queue::new(slots, max_bytes);
        if max_bytes == 0 {
            // A zero bound disables queueing: every outage goes to the bitmap.
            let _ = q.drain().count();
        }
        Ok(OutageQueue { q, held, free, replayed: 0, overflows: 0 })
    }

    /// Whether writes may be queued (not overflowed or disabled).
    pub(crate) fn accepting(&self) -> bool {
        !self.q.is_overflowed()
    }

    /// Ranges `(sector, len)` of the writes the peer has not acked (they stay queued).
    pub(crate) fn ranges(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.q.ranges()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.q.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.q.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.q.bytes()
    }

    pub(crate) fn max_bytes(&self) -> u64 {
        self.q.max_bytes()
    }

    /// Changes the byte bound; `EBUSY` while writes are queued.
    pub(crate) fn set_max_bytes(&mut self, max: u64) -> Result {
        self.q.set_max_bytes(max).map_err(|_| EBUSY)?;
        let _ = self.q.reset();
        if max == 0 {
            let _ = self.q.drain().count();
        }
        Ok(())
    }

    /// Queues a write whose data is in `data` (None for a flush). `Err` with the ranges to
    /// mark when the queue overflowed (every queued range plus this write's), or was already
    /// overflowed (this write's range only): `mark` is called for each.
    pub(crate) fn push(&mut self, sector: u64, len: u32, data: Option<KVVec<u8>>, wire_seq: u32, preflush: bool,
        fua: bool, mut mark: impl FnMut(u64, u32)) -> bool {
        let Some(tag) = self.free.pop() else {
            self.give_up(&mut mark);
            mark(sector, len);
            return false;
        };
        match self.q.push(Entry::new(sector, len, tag)) {
            Push::Queued(qseq) => {
                if let Some(h) = self.held.get_mut(tag as usize) {
                    *h = Some(Held { data, wire_seq, qseq, sector, len, preflush, fua, sent: false });
                }
                true
            }
            Push::Overflow => {
                let _ = self.free.push_within_capacity(tag);
                self.give_up(&mut mark);
                mark(sector, len);
                false
            }
            Push::Bypass => {
                let _ = self.free.push_within_capacity(tag);
                mark(sector, len);
                false
            }
        }
    }

    /// Drops every queued write into the bitmap (`mark` each range) and stops queueing until
    /// [`OutageQueue::reopen`].
    pub(crate) fn give_up(&mut self, mark: &mut impl FnMut(u64, u32)) -> usize {
        let mut n = 0;
        for e in self.q.drain() {
            mark(e.sector, e.len);
            n += 1;
            release(&mut self.held, &mut self.free, e.tag);
        }
        if n > 0 {
            self.overflows += 1;
        }
        n
    }

    /// Accepts writes again once the queue is empty (after the outage, when the bitmap resync
    /// has taken over); a no-op when disabled by a zero bound.
    pub(crate) fn reopen(&mut self) {
        if self.q.max_bytes() > 0 {
            let _ = self.q.reset();
        }
    }

    /// The next entry to replay, with its data taken out (give it back with
    /// [`OutageQueue::sent`]); None when everything is in flight or the window is full.
    pub(crate) fn next_to_send(&mut self) -> Option<ToSend> {
        if self.q.in_flight() >= REPLAY_WINDOW {
            return None;
        }
        let entry = self.q.mark_sent().ok()?;
        let h = self.held.get_mut(entry.tag as usize)?.as_mut()?;
        h.sent = true;
        self.replayed += 1;
        Some(ToSend { entry, wire_seq: h.wire_seq, preflush: h.preflush, fua: h.fua, data: h.data.take() })
    }

    /// Gives the data of a sent entry back (kept until the ack; resent after a rewind).
    pub(crate) fn sent(&mut self, s: ToSend) {
        if let Some(Some(h)) = self.held.get_mut(s.entry.tag as usize) {
            if h.qseq == s.entry.seq() && h.data.is_none() {
                h.data = s.data;
            }
        }
    }

    /// The peer acked the write with wire sequence number `wire_seq` (`ok`: durable). Returns
    /// false if no replayed entry in flight has that number.
    pub(crate) fn ack(&mut self, wire_seq: u32, ok: bool, mut mark: impl FnMut(u64, u32)) -> bool {
        let Some((qseq, sector, len)) = self.in_flight(wire_seq).map(|h| (h.qseq, h.sector, h.len)) else {
            return false;
        };
        if !ok {
            // The peer could not write it: the range must be resynced.
            mark(sector, len);
        }
        let (held, free) = (&mut self.held, &mut self.free);
        self.q.ack(qseq, |e| release(held, free, e.tag)).is_ok()
    }

    /// The replayed entry in flight with wire sequence number `wire_seq`, if any.
    fn in_flight(&self, wire_seq: u32) -> Option<&Held> {
        self.held.iter().flatten().find(|h| h.sent && h.wire_seq == wire_seq)
    }

    /// Whether a replayed write with wire sequence number `wire_seq` is in flight.
    pub(crate) fn is_sent(&self, wire_seq: u32) -> bool {
        self.in_flight(wire_seq).is_some()
    }

    /// Queue sequence number of the newest entry sent (what a barrier sent now covers).
    pub(crate) fn last_sent(&self) -> Option<u64> {
        self.q.last_sent()
    }

    /// Protocols A and B: a barrier ack made every entry sent up to queue sequence number
    /// `upto` durable at the peer. Returns how many entries left the queue.
    pub(crate) fn ack_through(&mut self, upto: u64) -> usize {
        let (held, free) = (&mut self.held, &mut self.free);
        self.q.ack_through(upto, |e| release(held, free, e.tag))
    }

    /// The connection broke during a replay: what was in flight is sent again, in order.
    pub(crate) fn rewind(&mut self) {
        self.q.rewind();
        for h in self.held.iter_mut().flatten() {
            h.sent = false;
        }
    }
}

/// An entry left the queue: its data is dropped and its tag is free again.
fn release(held: &mut KVec<Option<Held>>, free: &mut KVec<u32>, tag: u32) {
    if let Some(h) = held.get_mut(tag as usize) {
        *h = None;
    }
    let _ = free.push_within_capacity(tag);
}

impl Conn {
    /// Whether new writes go to the outage queue: during an outage that began while
    /// replicating, and until a replay has drained the queue.
    pub(crate) fn queueing(&self) -> bool {
        !self.stopping && self.outq.accepting() && (self.sm.in_outage() || !self.outq.is_empty())
    }
}

impl Device {
    /// Queues `req` in the outage queue with a copy of its data (the connection locked). False
    /// if it went to the bitmap instead (the queue overflowed, or no memory for the copy).
    pub(crate) fn push_outage(&self, c: &mut Conn, req: &CloneRef<Request>) -> bool {
        // Written without the peer, queued or not: a new data generation (split brain is
        // detectable even if this side's writes of the outage all stay queued).
        self.writing_without_peer();
        let mark = |sector: u64, len: u32| self.mark_out_of_sync(sector, len);
        let data = if req.len == 0 {
            None
        } else {
            let copy = crate::bindings::noio(|| KVVec::from_elem(0u8, req.len as usize, GFP_KERNEL));
            match copy {
                Ok(mut buf) => {
                    let n = req.with_orig(|bio| bio.copy_to(&mut buf));
                    (n == req.len as usize).then_some(buf)
                }
                Err(_) => None,
            }
        };
        if req.len > 0 && data.is_none() {
            let mut m = mark;
            let n = c.outq.give_up(&mut m);
            m(req.sector, req.len);
            pr_warn!("{}: outage queue: no memory for a write's copy; {} queued writes moved to the bitmap\n",
                &*self.cfg.name, n);
            return false;
        }
        let overflowed_before = !c.outq.accepting();
        let queued = c.outq.push(req.sector, req.len, data, req.seq, req.preflush, req.fua, mark);
        if !queued && !overflowed_before {
            pr_warn!("{}: outage queue full ({} bytes max): its writes moved to the bitmap\n", &*self.cfg.name,
                c.outq.max_bytes());
        }
        queued
    }

    /// The outage lasted longer than `outage_max` (or the device goes away): the queued writes
    /// go to the bitmap.
    pub(crate) fn give_up_outage_queue(&self, why: &str) {
        let mut mark = |sector: u64, len: u32| self.mark_out_of_sync(sector, len);
        let n = self.conn.lock().outq.give_up(&mut mark);
        if n > 0 {
            pr_warn!("{}: {}: {} queued writes moved to the bitmap\n", &*self.cfg.name, why, n);
        }
    }
}
