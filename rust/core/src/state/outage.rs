// SPDX-License-Identifier: GPL-2.0
//! Outage queue: writes kept in order during a short outage and replayed afterwards.
//!
//! While the connection is in [`Outage`](super::conn::State::Outage) or probation, the
//! primary keeps each write's range (the data buffer stays with the driver, named by
//! [`Entry::tag`]) in a fixed-capacity ring over caller-provided storage. Once the link is
//! trusted again the entries are sent in their original order ([`Queue::next_to_send`],
//! [`Queue::mark_sent`]) and released when the peer acks them durable ([`Queue::ack`]);
//! applying them in that order keeps the secondary crash-consistent (it always holds a
//! prefix of the primary's write history).
//!
//! The queue is bounded in entries (the storage) and in bytes ([`Queue::max_bytes`]). A
//! write that does not fit *overflows* the queue: [`Push::Overflow`] tells the caller to
//! [`Queue::drain`] every queued entry into the fracture bitmap (and to mark the new write
//! as well); from then on writes are [`Push::Bypass`]ed straight to the bitmap until
//! [`Queue::reset`] (after the bitmap-based resync has taken over).
//!
//! ```text
//!   head (oldest)                      sent                           tail
//!   | sent, awaiting ack (in flight)   | queued, not sent yet         |
//! ```
//!
//! Crash safety of the *primary* is not the queue's job: the activity log covers every
//! queued write, and before it retires an extent the driver marks the queued writes in it
//! out of sync ([`Queue::ranges`]; see Documentation/state-machines.rst).

use core::ops::DerefMut;

/// One queued write. Storage slots are plain values; build them with [`Entry::new`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// First 512-byte sector written.
    pub sector: u64,
    /// Length in bytes (0 for a pure flush, which keeps its place in the order).
    pub len: u32,
    /// The driver's handle for the data buffer (opaque here).
    pub tag: u32,
    seq: u64,
    acked: bool,
}

impl Entry {
    /// An empty slot, for initialising the caller's storage array.
    pub const EMPTY: Entry = Entry { sector: 0, len: 0, tag: 0, seq: 0, acked: false };

    /// A write of `len` bytes at `sector`, whose data the driver keeps under `tag`.
    pub const fn new(sector: u64, len: u32, tag: u32) -> Self {
        Entry { sector, len, tag, seq: 0, acked: false }
    }

    /// Queue sequence number, assigned by [`Queue::push`]; acks name entries by it.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// Result of [`Queue::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Queued under this sequence number; keep the data buffer.
    Queued(u64),
    /// The queue just overflowed: call [`Queue::drain`] and mark every drained range and
    /// this write's range in the fracture bitmap; free the drained buffers.
    Overflow,
    /// The queue overflowed earlier: mark this write's range in the fracture bitmap.
    Bypass,
}

/// Why a queue operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `mark_sent` with no unsent entry.
    NothingToSend,
    /// `ack` naming an entry that was never sent (bogus peer ack).
    NotInFlight,
    /// `ack` for an entry no longer queued (drained by an overflow, or acked before):
    /// harmless, ignore it.
    Released,
    /// `reset` or `set_max_bytes` while entries are queued.
    Busy,
}

impl Error {
    /// Human-readable message.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::NothingToSend => "no queued write left to send",
            Error::NotInFlight => "ack for a write that is not in flight",
            Error::Released => "ack for a write no longer queued",
            Error::Busy => "outage queue is not empty",
        }
    }
}

/// The ring, over caller storage `S` (`&mut [Entry]`, `[Entry; N]`, or a `Vec` on the
/// host): the queue itself never allocates.
#[derive(Debug)]
pub struct Queue<S> {
    slots: S,
    head: usize,
    len: usize,
    sent: usize,
    bytes: u64,
    max_bytes: u64,
    next_seq: u64,
    overflowed: bool,
}

impl<S: DerefMut<Target = [Entry]>> Queue<S> {
    /// An empty queue over `slots` (its capacity in entries), holding at most `max_bytes`.
    pub fn new(slots: S, max_bytes: u64) -> Self {
        Queue { slots, head: 0, len: 0, sent: 0, bytes: 0, max_bytes, next_seq: 0, overflowed: false }
    }

    /// Capacity in entries.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Byte bound.
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// Changes the byte bound (sysfs); refused while entries are queued.
    pub fn set_max_bytes(&mut self, max_bytes: u64) -> Result<(), Error> {
        if self.len != 0 {
            return Err(Error::Busy);
        }
        self.max_bytes = max_bytes;
        Ok(())
    }

    /// Number of queued entries (in flight included).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes queued (in flight included).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries sent and not yet acked.
    pub fn in_flight(&self) -> usize {
        self.sent
    }

    /// Whether the queue overflowed and writes now go to the bitmap.
    pub fn is_overflowed(&self) -> bool {
        self.overflowed
    }

    fn slot(&self, i: usize) -> usize {
        // head < cap and i < cap, so the sum cannot overflow usize meaningfully.
        let cap = self.slots.len();
        (self.head + i) % cap
    }

    /// Ranges `(sector, len)` of the entries not acked yet, oldest first; they stay queued.
    /// The activity log asks for them before it retires an extent (the peer lacks them).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        (0..self.len)
            .map(|i| self.slots[self.slot(i)])
            .filter(|e| !e.acked)
            .map(|e| (e.sector, e.len))
    }

    /// Queues a write at the tail (see [`Push`] for what the caller must do).
    pub fn push(&mut self, e: Entry) -> Push {
        if self.overflowed {
            return Push::Bypass;
        }
        let fits_bytes = self.bytes.checked_add(u64::from(e.len)).is_some_and(|b| b <= self.max_bytes);
        if self.len >= self.slots.len() || !fits_bytes {
            self.overflowed = true;
            return Push::Overflow;
        }
        let i = self.slot(self.len);
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.slots[i] = Entry { seq, acked: false, ..e };
        self.len += 1;
        self.bytes += u64::from(e.len);
        Push::Queued(seq)
    }

    /// The oldest entry not sent yet, if any.
    pub fn next_to_send(&self) -> Option<Entry> {
        if self.sent < self.len {
            Some(self.slots[self.slot(self.sent)])
        } else {
            None
        }
    }

    /// Marks [`Queue::next_to_send`] as sent and returns it.
    pub fn mark_sent(&mut self) -> Result<Entry, Error> {
        let e = self.next_to_send().ok_or(Error::NothingToSend)?;
        self.sent += 1;
        Ok(e)
    }

    /// The peer made entry `seq` durable. Entries leave the queue from the head, in order,
    /// once they and all older ones are acked; each one released is passed to `release`
    /// (free its buffer). Returns how many were released.
    pub fn ack(&mut self, seq: u64, mut release: impl FnMut(Entry)) -> Result<usize, Error> {
        let head_seq = if self.len == 0 { self.next_seq } else { self.slots[self.head].seq };
        if seq < head_seq {
            return Err(Error::Released);
        }
        let off = seq - head_seq;
        if off >= self.sent as u64 {
            return Err(Error::NotInFlight);
        }
        let i = self.slot(off as usize);
        self.slots[i].acked = true;
        Ok(self.release_sent(|e| e.acked, &mut release))
    }

    /// Releases in-flight entries from the head while `done` says so; returns how many.
    fn release_sent(&mut self, done: impl Fn(&Entry) -> bool, release: &mut impl FnMut(Entry)) -> usize {
        let mut n = 0;
        while self.sent > 0 && done(&self.slots[self.head]) {
            let e = self.slots[self.head];
            self.head = (self.head + 1) % self.slots.len();
            self.len -= 1;
            self.sent -= 1;
            self.bytes -= u64::from(e.len);
            n += 1;
            release(e);
        }
        n
    }

    /// Queue sequence number of the newest entry sent, if any is in flight: what a barrier
    /// sent now covers.
    pub fn last_sent(&self) -> Option<u64> {
        let k = self.sent.checked_sub(1)?;
        let i = (self.head + k).checked_rem(self.slots.len())?;
        self.slots.get(i).map(|e| e.seq)
    }

    /// The peer made every entry up to `seq` durable at once (the barrier ack of protocols A
    /// and B, which send no per-write durable ack): releases the in-flight entries up to and
    /// including `seq`, oldest first, passing each to `release`. Returns how many.
    pub fn ack_through(&mut self, seq: u64, mut release: impl FnMut(Entry)) -> usize {
        self.release_sent(|e| e.seq <= seq, &mut release)
    }

    /// The connection broke during replay: everything in flight will be sent again, in
    /// the same order (replaying a prefix twice is harmless: same data, same order).
    pub fn rewind(&mut self) {
        for k in 0..self.sent {
            let i = self.slot(k);
            self.slots[i].acked = false;
        }
        self.sent = 0;
    }

    /// Overflow (or giving up on the outage): removes every entry, oldest first, so the
    /// caller marks its range in the bitmap and frees its buffer. The queue stays
    /// overflowed (later pushes are [`Push::Bypass`]) until [`Queue::reset`].
    pub fn drain(&mut self) -> Drain<'_, S> {
        self.overflowed = true;
        Drain { q: self }
    }

    /// Makes an empty, overflowed queue usable again (the resync has taken over).
    pub fn reset(&mut self) -> Result<(), Error> {
        if self.len != 0 {
            return Err(Error::Busy);
        }
        self.overflowed = false;
        self.head = 0;
        self.sent = 0;
        Ok(())
    }
}

/// Iterator returned by [`Queue::drain`].
#[derive(Debug)]
pub struct Drain<'q, S> {
    q: &'q mut Queue<S>,
}

impl<S: DerefMut<Target = [Entry]>> Iterator for Drain<'_, S> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        let q = &mut *self.q;
        if q.len == 0 {
            q.sent = 0;
            return None;
        }
        let e = q.slots[q.head];
        q.head = (q.head + 1) % q.slots.len();
        q.len -= 1;
        q.sent = q.sent.saturating_sub(1);
        q.bytes -= u64::from(e.len);
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_list_what_the_peer_has_not_acked() {
        let mut st = [Entry::EMPTY; 4];
        let mut q = Queue::new(&mut st[..], 1 << 20);
        for i in 0..4 {
            assert_eq!(q.push(Entry::new(i * 8, 4096, i as u32)), Push::Queued(i));
        }
        q.mark_sent().unwrap();
        q.mark_sent().unwrap();
        // Entry 1 acked before entry 0: it stays queued, but the peer has it.
        assert_eq!(q.ack(1, |_| {}), Ok(0));
        let mut got = [(0u64, 0u32); 4];
        let mut n = 0;
        for r in q.ranges() {
            got[n] = r;
            n += 1;
        }
        assert_eq!(&got[..n], &[(0, 4096), (16, 4096), (24, 4096)]);
        assert_eq!(q.len(), 4, "listing takes nothing out");
        assert_eq!(q.ack(0, |_| {}), Ok(2));
        assert_eq!(q.ranges().count(), 2);
    }

    #[test]
    fn barrier_ack_releases_what_was_sent_before_it() {
        let mut st = [Entry::EMPTY; 4];
        let mut q = Queue::new(&mut st[..], 1 << 20);
        for i in 0..4 {
            assert_eq!(q.push(Entry::new(i * 8, 4096, i as u32)), Push::Queued(i));
        }
        assert_eq!(q.last_sent(), None);
        q.mark_sent().unwrap();
        q.mark_sent().unwrap();
        q.mark_sent().unwrap();
        let upto = q.last_sent().unwrap();
        assert_eq!(upto, 2);
        // One entry acked on its own first (protocol C style): still released once.
        assert_eq!(q.ack(1, |_| {}), Ok(0));
        let mut freed = [u32::MAX; 4];
        let mut nf = 0;
        assert_eq!(q.ack_through(upto, |e| { freed[nf] = e.tag; nf += 1 }), 3);
        assert_eq!(&freed[..3], &[0, 1, 2]);
        assert_eq!((q.len(), q.in_flight(), q.bytes()), (1, 0, 4096));
        // Nothing in flight: a repeated or stale barrier ack releases nothing, even the
        // queued entry with a lower bound than its sequence number.
        assert_eq!(q.ack_through(upto, |_| {}), 0);
        assert_eq!(q.ack_through(u64::MAX, |_| {}), 0, "unsent entries stay");
        q.mark_sent().unwrap();
        assert_eq!(q.last_sent(), Some(3));
        assert_eq!(q.ack_through(3, |_| {}), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn fifo_replay_and_ack() {
        let mut st = [Entry::EMPTY; 4];
        let mut q = Queue::new(&mut st[..], 1 << 20);
        for i in 0..4 {
            assert_eq!(q.push(Entry::new(i * 8, 4096, i as u32)), Push::Queued(i));
        }
        assert_eq!(q.bytes(), 4 * 4096);
        let a = q.mark_sent().unwrap();
        let b = q.mark_sent().unwrap();
        assert_eq!((a.tag, b.tag), (0, 1));
        // Out-of-order ack: nothing released until the head is acked.
        let mut freed = [u32::MAX; 4];
        let mut nf = 0;
        assert_eq!(q.ack(1, |e| { freed[nf] = e.tag; nf += 1 }), Ok(0));
        assert_eq!(q.ack(2, |_| {}), Err(Error::NotInFlight), "not sent yet");
        assert_eq!(q.ack(0, |e| { freed[nf] = e.tag; nf += 1 }), Ok(2));
        assert_eq!(&freed[..2], &[0, 1]);
        assert_eq!(q.len(), 2);
        // Wraps around.
        assert_eq!(q.push(Entry::new(99, 512, 9)), Push::Queued(4));
        q.mark_sent().unwrap();
        q.rewind();
        let tags: [u32; 3] = core::array::from_fn(|_| q.mark_sent().unwrap().tag);
        assert_eq!(tags, [2, 3, 9]);
        assert_eq!(q.mark_sent(), Err(Error::NothingToSend));
        assert_eq!(q.ack(4, |_| {}), Ok(0));
        assert_eq!(q.ack(3, |_| {}), Ok(0));
        assert_eq!(q.ack(2, |_| {}), Ok(3));
        assert!(q.is_empty());
        assert_eq!(q.ack(5, |_| {}), Err(Error::NotInFlight));
        assert_eq!(q.ack(1, |_| {}), Err(Error::Released));
    }

    #[test]
    fn overflow_by_bytes_drains_in_order() {
        let mut st = [Entry::EMPTY; 16];
        let mut q = Queue::new(&mut st[..], 10_000);
        assert_eq!(q.push(Entry::new(0, 4096, 0)), Push::Queued(0));
        assert_eq!(q.push(Entry::new(8, 4096, 1)), Push::Queued(1));
        q.mark_sent().unwrap();
        assert_eq!(q.push(Entry::new(16, 4096, 2)), Push::Overflow);
        let mut n = 0;
        for (i, e) in q.drain().enumerate() {
            assert_eq!(e.tag, i as u32);
            n += 1;
        }
        assert_eq!(n, 2);
        assert_eq!((q.len(), q.bytes(), q.in_flight()), (0, 0, 0));
        assert_eq!(q.ack(0, |_| {}), Err(Error::Released), "late ack for a drained entry");
        assert_eq!(q.push(Entry::new(0, 1, 0)), Push::Bypass);
        assert!(q.is_overflowed());
        q.reset().unwrap();
        assert_eq!(q.push(Entry::new(0, 1, 0)), Push::Queued(2));
        assert_eq!(q.reset(), Err(Error::Busy));
        assert_eq!(q.set_max_bytes(1), Err(Error::Busy));
    }

    #[test]
    fn overflow_by_slots_and_zero_capacity() {
        let mut st = [Entry::EMPTY; 1];
        let mut q = Queue::new(&mut st[..], u64::MAX);
        assert_eq!(q.push(Entry::new(0, u32::MAX, 0)), Push::Queued(0));
        assert_eq!(q.push(Entry::new(0, 0, 0)), Push::Overflow);
        let mut none: [Entry; 0] = [];
        let mut q = Queue::new(&mut none[..], 100);
        assert_eq!(q.push(Entry::new(0, 0, 0)), Push::Overflow);
        assert_eq!(q.drain().count(), 0);
    }
}
