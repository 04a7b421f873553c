// SPDX-License-Identifier: GPL-2.0
//! Transfer log of protocols A and B: writes completed to the upper layer that the peer
//! does not hold durably yet (DRBD's transfer log and its epochs, reduced).
//!
//! Under protocol A a write completes once it is sent, under B once the peer acks its
//! receipt; neither means the data is on the peer's stable storage. The primary keeps each
//! such write's range here until a *barrier* sent after it is acked: the peer answers a
//! barrier (which asks it to flush) only once every write received before it is durable. A
//! connection lost before that ack leaves the ranges here: the caller marks them in the
//! fracture bitmap ([`TransferLog::drain`]), so the resync covers what the peer may lack.
//!
//! Order is the connection's send order, counted by [`TransferLog::sent`]: a barrier
//! covers exactly the writes sent before it, whatever their sequence numbers (those are
//! taken at submission, which may be in another order than sending). Under B a write
//! enters the log only at its receive ack, which the peer sends before it handles any
//! later barrier, so the count taken at sending still decides which barrier covers it.
//!
//! ```text
//!   send order:  w1  w2  B(nr=7)  w3  B(nr=9)
//!   log:         w1  w2           w3            BarrierAck 7 releases w1, w2;
//!                                               a lost connection marks w3.
//! ```
//!
//! Both rings live in caller-provided storage and never allocate; when either is full the
//! sender must wait for barrier acks ([`TransferLog::must_wait`]). Barrier acks must come
//! in the order the barriers were sent: anything else is a protocol error.

use core::ops::DerefMut;

/// A write the peer may not hold durably yet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// The write's sequence number on the wire (a negative ack names it).
    pub seq: u32,
    /// First sector.
    pub sector: u64,
    /// Length in bytes.
    pub len: u32,
    /// Position in the send order ([`TransferLog::sent`]).
    sent_no: u64,
}

impl Written {
    /// An empty slot, for the caller's storage.
    pub const EMPTY: Written = Written { seq: 0, sector: 0, len: 0, sent_no: 0 };
}

/// A barrier awaiting its ack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Barrier {
    /// Its number on the wire (the ack names it).
    pub nr: u32,
    /// Newest outage-queue entry sent before it (protocols A and B release replayed writes
    /// with the barrier ack covering them), if any.
    pub queue_upto: Option<u64>,
    sent_no: u64,
}

impl Barrier {
    /// An empty slot, for the caller's storage.
    pub const EMPTY: Barrier = Barrier { nr: 0, queue_upto: None, sent_no: 0 };
}

/// Why an event was refused (the log is unchanged).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No room: the caller must wait for barrier acks first (see [`TransferLog::must_wait`]).
    Full,
    /// A barrier ack that does not name the oldest barrier awaiting one.
    UnexpectedBarrierAck,
    /// A write counted as sent after a later one, or not sent at all.
    BadOrder,
}

impl Error {
    /// Human-readable message.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::Full => "transfer log full",
            Error::UnexpectedBarrierAck => "barrier ack out of order or for no barrier",
            Error::BadOrder => "write entered the transfer log out of send order",
        }
    }
}

/// A fixed-capacity ring over caller storage.
#[derive(Debug)]
struct Ring<S> {
    slots: S,
    head: usize,
    len: usize,
}

impl<T: Copy, S: DerefMut<Target = [T]>> Ring<S> {
    fn is_full(&self) -> bool {
        self.len >= self.slots.len()
    }

    fn push(&mut self, v: T) -> Result<(), Error> {
        if self.is_full() {
            return Err(Error::Full);
        }
        let cap = self.slots.len();
        self.slots[(self.head + self.len) % cap] = v;
        self.len += 1;
        Ok(())
    }

    fn get(&self, k: usize) -> Option<T> {
        (k < self.len).then(|| self.slots[(self.head + k) % self.slots.len()])
    }

    fn pop(&mut self) -> Option<T> {
        let v = self.get(0)?;
        self.head = (self.head + 1) % self.slots.len();
        self.len -= 1;
        Some(v)
    }

    /// Removes entry `k` (order kept).
    fn remove(&mut self, k: usize) {
        if k >= self.len {
            return;
        }
        let cap = self.slots.len();
        for j in k..self.len - 1 {
            self.slots[(self.head + j) % cap] = self.slots[(self.head + j + 1) % cap];
        }
        self.len -= 1;
    }
}

/// The transfer log of one connection.
#[derive(Debug)]
pub struct TransferLog<W, B> {
    writes: Ring<W>,
    barriers: Ring<B>,
    sent: u64,
    /// Position of the newest barrier sent.
    last_barrier: u64,
}

impl<W: DerefMut<Target = [Written]>, B: DerefMut<Target = [Barrier]>> TransferLog<W, B> {
    /// An empty log holding at most `writes.len()` writes and `barriers.len()` barriers
    /// (both at least 1).
    pub fn new(writes: W, barriers: B) -> Self {
        TransferLog {
            writes: Ring { slots: writes, head: 0, len: 0 },
            barriers: Ring { slots: barriers, head: 0, len: 0 },
            sent: 0,
            last_barrier: 0,
        }
    }

    /// Counts one message (write or barrier) handed to the connection, in send order;
    /// returns its position, to pass to [`TransferLog::completed`] later.
    pub fn sent(&mut self) -> u64 {
        self.sent += 1;
        self.sent
    }

    /// Whether the sender must wait for barrier acks before sending another write: the next
    /// one might not find room in the log.
    pub fn must_wait(&self) -> bool {
        self.writes.is_full() || self.barriers.is_full()
    }

    /// Most writes the log holds.
    pub fn capacity(&self) -> usize {
        self.writes.slots.len()
    }

    /// Writes in the log.
    pub fn len(&self) -> usize {
        self.writes.len
    }

    /// Whether no write awaits a barrier ack.
    pub fn is_empty(&self) -> bool {
        self.writes.len == 0
    }

    /// Barriers awaiting their ack.
    pub fn barriers(&self) -> usize {
        self.barriers.len
    }

    /// Writes counted as sent after the newest barrier: a barrier is due when there are any
    /// and the sender is idle (or enough of them accumulated).
    pub fn unbarriered(&self) -> u64 {
        self.sent - self.last_barrier
    }

    /// Write `seq` (sent at position `sent_no`) has completed to the upper layer without
    /// being durable at the peer: keep its range until a barrier sent after it is acked.
    pub fn completed(&mut self, sent_no: u64, seq: u32, sector: u64, len: u32) -> Result<(), Error> {
        if sent_no == 0 || sent_no > self.sent {
            return Err(Error::BadOrder);
        }
        if let Some(newest) = self.writes.get(self.writes.len.wrapping_sub(1)) {
            if newest.sent_no >= sent_no {
                return Err(Error::BadOrder);
            }
        }
        self.writes.push(Written { seq, sector, len, sent_no })
    }

    /// A barrier numbered `nr` was sent (count it with [`TransferLog::sent`] first);
    /// `queue_upto` is the newest outage-queue entry sent before it.
    pub fn barrier_sent(&mut self, nr: u32, queue_upto: Option<u64>) -> Result<(), Error> {
        self.barriers.push(Barrier { nr, queue_upto, sent_no: self.sent })?;
        self.last_barrier = self.sent;
        Ok(())
    }

    /// The peer acked barrier `nr`: every write sent before it is durable there. Releases
    /// those writes and returns the barrier (its `queue_upto` says which replayed writes it
    /// covers).
    pub fn barrier_acked(&mut self, nr: u32) -> Result<Barrier, Error> {
        match self.barriers.get(0) {
            Some(b) if b.nr == nr => {}
            _ => return Err(Error::UnexpectedBarrierAck),
        }
        let b = self.barriers.pop().ok_or(Error::UnexpectedBarrierAck)?;
        while matches!(self.writes.get(0), Some(w) if w.sent_no < b.sent_no) {
            self.writes.pop();
        }
        Ok(b)
    }

    /// The peer failed to write `seq` (a negative ack after the write completed): returns
    /// its range, to be marked out of sync, and forgets it. `None` if not in the log.
    pub fn negative_ack(&mut self, seq: u32) -> Option<(u64, u32)> {
        let k = (0..self.writes.len).find(|&k| self.writes.get(k).is_some_and(|w| w.seq == seq))?;
        let w = self.writes.get(k)?;
        self.writes.remove(k);
        Some((w.sector, w.len))
    }

    /// Ranges `(sector, len)` of the writes in the log, oldest first; they stay in it. The
    /// activity log asks for them before it retires an extent (the peer may lack them).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        (0..self.writes.len)
            .filter_map(|k| self.writes.get(k))
            .map(|w| (w.sector, w.len))
    }

    /// The connection was lost: every write still in the log (the peer may lack it) is
    /// passed to `mark`, and the log is emptied, barriers included.
    pub fn drain(&mut self, mut mark: impl FnMut(u64, u32)) -> usize {
        let mut n = 0;
        while let Some(w) = self.writes.pop() {
            mark(w.sector, w.len);
            n += 1;
        }
        while self.barriers.pop().is_some() {}
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log<'a>(w: &'a mut [Written], b: &'a mut [Barrier]) -> TransferLog<&'a mut [Written], &'a mut [Barrier]> {
        TransferLog::new(w, b)
    }

    #[test]
    fn ranges_list_the_writes_awaiting_a_barrier_ack() {
        let (mut w, mut b) = ([Written::EMPTY; 4], [Barrier::EMPTY; 2]);
        let mut t = log(&mut w, &mut b);
        for i in 0..3u32 {
            let n = t.sent();
            t.completed(n, i, u64::from(i) * 8, 4096).unwrap();
        }
        let _ = t.sent();
        t.barrier_sent(1, None).unwrap();
        let n = t.sent();
        t.completed(n, 9, 100, 512).unwrap();
        let mut got = [(0u64, 0u32); 4];
        let mut k = 0;
        for r in t.ranges() {
            got[k] = r;
            k += 1;
        }
        assert_eq!(&got[..k], &[(0, 4096), (8, 4096), (16, 4096), (100, 512)]);
        assert_eq!(t.len(), 4, "listing takes nothing out");
        t.barrier_acked(1).unwrap();
        assert_eq!(t.ranges().next(), Some((100, 512)));
    }

    #[test]
    fn a_barrier_releases_exactly_the_writes_sent_before_it() {
        let (mut w, mut b) = ([Written::EMPTY; 8], [Barrier::EMPTY; 4]);
        let mut t = log(&mut w, &mut b);
        // Sequence numbers out of submission order: only the send order counts.
        let s1 = t.sent();
        let s2 = t.sent();
        t.completed(s1, 11, 0, 4096).unwrap();
        t.completed(s2, 10, 8, 4096).unwrap();
        assert_eq!(t.unbarriered(), 2);
        t.sent();
        t.barrier_sent(7, None).unwrap();
        assert_eq!(t.unbarriered(), 0);
        let s3 = t.sent();
        t.completed(s3, 5, 16, 512).unwrap();
        assert_eq!(t.barrier_acked(8), Err(Error::UnexpectedBarrierAck));
        assert_eq!(t.barrier_acked(7).map(|b| b.nr), Ok(7));
        assert_eq!(t.len(), 1);
        assert_eq!(t.unbarriered(), 1);
        assert_eq!(t.barrier_acked(7), Err(Error::UnexpectedBarrierAck), "acked twice");
        let mut marked = [(0, 0); 4];
        let mut n = 0;
        assert_eq!(t.drain(|s, l| { marked[n] = (s, l); n += 1 }), 1);
        assert_eq!(&marked[..1], &[(16, 512)]);
        assert!(t.is_empty());
    }

    #[test]
    fn protocol_b_writes_enter_after_the_barrier_was_sent() {
        // B: w1 sent, barrier sent, then w1's receive ack arrives: the barrier covers it.
        let (mut w, mut b) = ([Written::EMPTY; 4], [Barrier::EMPTY; 2]);
        let mut t = log(&mut w, &mut b);
        let s1 = t.sent();
        t.sent();
        t.barrier_sent(3, Some(41)).unwrap();
        t.completed(s1, 1, 0, 4096).unwrap();
        let bar = t.barrier_acked(3).unwrap();
        assert_eq!(bar.queue_upto, Some(41));
        assert!(t.is_empty());
    }

    #[test]
    fn order_and_capacity_are_enforced() {
        let (mut w, mut b) = ([Written::EMPTY; 2], [Barrier::EMPTY; 1]);
        let mut t = log(&mut w, &mut b);
        assert_eq!(t.completed(1, 1, 0, 512), Err(Error::BadOrder), "not sent");
        let s1 = t.sent();
        let s2 = t.sent();
        t.completed(s2, 2, 0, 512).unwrap();
        assert_eq!(t.completed(s1, 1, 0, 512), Err(Error::BadOrder), "older than the newest");
        let s3 = t.sent();
        t.completed(s3, 3, 8, 512).unwrap();
        assert!(t.must_wait());
        let s4 = t.sent();
        assert_eq!(t.completed(s4, 4, 0, 512), Err(Error::Full));
        assert_eq!(t.negative_ack(2), Some((0, 512)));
        assert_eq!(t.negative_ack(2), None);
        assert!(!t.must_wait());
        t.barrier_sent(9, None).unwrap();
        assert!(t.must_wait(), "barrier ring full");
        assert_eq!(t.barrier_sent(10, None), Err(Error::Full));
        assert_eq!(t.barrier_acked(9).map(|b| b.nr), Ok(9));
        assert!(t.is_empty() && !t.must_wait());
    }

    #[test]
    fn ring_wraps_and_removes_in_order() {
        let (mut w, mut b) = ([Written::EMPTY; 3], [Barrier::EMPTY; 2]);
        let mut t = log(&mut w, &mut b);
        for round in 0..5u32 {
            let mut seqs = [0u32; 3];
            for (i, s) in seqs.iter_mut().enumerate() {
                let n = t.sent();
                *s = round * 10 + i as u32;
                t.completed(n, *s, u64::from(*s), 512).unwrap();
            }
            assert_eq!(t.negative_ack(seqs[1]), Some((u64::from(seqs[1]), 512)));
            t.sent();
            t.barrier_sent(round, None).unwrap();
            t.barrier_acked(round).unwrap();
            assert!(t.is_empty(), "round {round}");
        }
    }
}
