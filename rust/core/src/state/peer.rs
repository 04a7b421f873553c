// SPDX-License-Identifier: GPL-2.0
//! The secondary's writes in flight: which may start now (DRBD's peer requests, reduced).
//!
//! The secondary submits each replicated write (and each resync chunk) without waiting for the
//! one before, and acks it from its completion. These rules keep its disk a copy of the
//! primary's and its acks true; this type and [`Durability`] decide them, the driver carries
//! them out:
//!
//! 1. Two writes that overlap are never in flight together: the later waits until the earlier
//!    is retired ([`InFlight::admit`] refuses with [`Wait::Overlap`]). The primary never has two
//!    overlapping writes in flight, but a replayed outage queue may rewrite one block back to
//!    back, and the disk may complete concurrent writes in any order.
//! 2. At most `capacity` writes and `max_bytes` bytes are in flight ([`Wait::Full`]); a single
//!    write larger than `max_bytes` goes alone.
//! 3. Anything that depends on the writes before it waits until none is in flight
//!    ([`InFlight::is_empty`]): a write with PREFLUSH, a read, the bitmap exchange, and the end
//!    of a connection (a later connection may resync the same ranges). [`Step::drains`] names
//!    them.
//! 4. A barrier (or flush) does not stop the writes after it (DRBD's epochs): it closes the
//!    current *epoch* ([`InFlight::close_epoch`]), and is answered once every write of that
//!    epoch and of the epochs before is retired ([`InFlight::ready_epoch`]): then the caller
//!    flushes and acks it, in the order the barriers came ([`InFlight::pop_epoch`]). Writes of
//!    later epochs may reach the disk before that flush; the flush only has to cover the
//!    writes before the barrier.
//! 5. A `Durable` ack is sent only once its write is on stable storage: the write went with
//!    FUA, or a flush submitted after it completed succeeded ([`Durability`]).
//!
//! A write is retired ([`InFlight::retire`]) only after its ack was sent (or its connection is
//! gone), so a barrier's ack never overtakes the acks of the writes before it.
//!
//! Storage is the caller's (one slot per write that may be in flight); nothing allocates.

use core::ops::DerefMut;

/// A write in flight: sectors `[start, end)`, its size in bytes and its epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    start: u64,
    end: u64,
    bytes: u32,
    used: bool,
    epoch: u64,
}

impl Slot {
    /// A free slot, for the caller's storage.
    pub const FREE: Slot = Slot { start: 0, end: 0, bytes: 0, used: false, epoch: 0 };
}

/// Closed epochs awaiting their writes at most (a barrier beyond that waits, [`Wait::Full`]).
pub const MAX_EPOCHS: usize = 16;

/// A barrier received, its epoch closed: answered once the writes before it are retired.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Epoch {
    /// The barrier's number (its ack names it).
    pub nr: u32,
    /// Whether the barrier asks for a flush.
    pub flush: bool,
    /// Writes received in the epoch (the ack reports them).
    pub writes: u32,
    /// The caller's tag (the connection the barrier came on).
    pub tag: u64,
    /// Writes of the epoch still in flight.
    pending: u32,
}

/// Why a write may not start yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// It overlaps a write in flight: wait until that one is retired.
    Overlap,
    /// No room (writes or bytes): wait for a retirement.
    Full,
    /// An empty write: nothing to submit (a protocol error upstream).
    Empty,
}

/// What the secondary received, for rule 3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A replicated write; `preflush`: the primary asked for a flush before it.
    Write { preflush: bool },
    /// A resync chunk.
    ResyncData,
    /// A barrier or flush: closes an epoch instead of draining (rule 4).
    Barrier,
    /// A forwarded read of a detached primary.
    Read,
    /// Anything else (bitmap, generations, notices, the end of the connection).
    Other,
}

impl Step {
    /// Whether every write in flight must be retired first (rule 3).
    pub fn drains(self) -> bool {
        !matches!(self, Step::Write { preflush: false } | Step::ResyncData | Step::Barrier)
    }
}

/// How a secondary makes protocol C's writes durable before their `Durable` ack (rule 5).
///
/// An ack that promises stable storage is sent only once the write is there: either the
///    write itself went with FUA ([`Durability::Fua`]), or a flush was *submitted after the
///    write completed* and succeeded ([`Durability::Flush`], a group commit: the acker flushes
///    once for every write that completed since its last flush, then acks them all). A failed
///    flush turns those acks into failures (the primary marks their ranges). The primary's
///    own FUA is always kept.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Each write goes with FUA and is acked from its own completion (the default).
    #[default]
    Fua,
    /// Writes go without FUA (unless the primary's had it); one flush per batch of completed
    /// writes comes before their acks.
    Flush,
}

impl Durability {
    /// Whether a write goes to the disk with FUA; `durable`: its ack promises stable storage
    /// (protocol C); `fua`: the primary's bio had FUA.
    pub fn submit_fua(self, durable: bool, fua: bool) -> bool {
        fua || (durable && self == Durability::Fua)
    }

    /// Whether a completed write needs a flush (submitted after its completion) before its
    /// ack may be sent: it promises stable storage and did not go with FUA.
    pub fn flush_before_ack(durable: bool, submitted_fua: bool) -> bool {
        durable && !submitted_fua
    }

    /// The name used in sysfs.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Fua => "fua",
            Durability::Flush => "flush",
        }
    }

    /// Parses a sysfs value (`fua` or `flush`, a trailing newline allowed).
    pub fn parse(s: &[u8]) -> Option<Self> {
        match s.strip_suffix(b"\n").unwrap_or(s) {
            b"fua" => Some(Durability::Fua),
            b"flush" => Some(Durability::Flush),
            _ => None,
        }
    }
}

/// The writes in flight of one secondary.
#[derive(Debug)]
pub struct InFlight<S> {
    slots: S,
    count: usize,
    bytes: u64,
    max_bytes: u64,
    /// The open epoch's number (closed ones are `epoch - nclosed .. epoch`).
    epoch: u64,
    /// Writes of the open epoch in flight.
    open: u32,
    /// Closed epochs, oldest at `first` (a ring).
    closed: [Epoch; MAX_EPOCHS],
    first: usize,
    nclosed: usize,
}

impl<S: DerefMut<Target = [Slot]>> InFlight<S> {
    /// Up to `slots.len()` writes and `max_bytes` bytes in flight.
    pub fn new(mut slots: S, max_bytes: u64) -> Self {
        slots.fill(Slot::FREE);
        let closed = [Epoch::default(); MAX_EPOCHS];
        Self { slots, count: 0, bytes: 0, max_bytes, epoch: 0, open: 0, closed, first: 0, nclosed: 0 }
    }

    /// Writes in flight.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no write is in flight and no barrier awaits its answer (rule 3 may proceed).
    pub fn is_empty(&self) -> bool {
        self.count == 0 && self.nclosed == 0
    }

    /// Bytes in flight.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Admits a write of `bytes` bytes at `sectors` sectors from `start` if rules 1 and 2 allow
    /// it now; returns its slot, to retire it with.
    pub fn admit(&mut self, start: u64, sectors: u32, bytes: u32) -> Result<usize, Wait> {
        let end = start.saturating_add(u64::from(sectors));
        if sectors == 0 || bytes == 0 {
            return Err(Wait::Empty);
        }
        let mut free = None;
        for (i, s) in self.slots.iter().enumerate() {
            if !s.used {
                free = free.or(Some(i));
            } else if s.start < end && start < s.end {
                return Err(Wait::Overlap);
            }
        }
        let fits = self.count == 0 || self.bytes + u64::from(bytes) <= self.max_bytes;
        match free {
            Some(i) if fits => {
                self.slots[i] = Slot { start, end, bytes, used: true, epoch: self.epoch };
                self.open += 1;
                self.count += 1;
                self.bytes += u64::from(bytes);
                Ok(i)
            }
            _ => Err(Wait::Full),
        }
    }

    /// Retires the write in `slot` (its ack is sent or its connection gone). Returns false for
    /// a slot not in use (nothing changes).
    pub fn retire(&mut self, slot: usize) -> bool {
        match self.slots.get_mut(slot) {
            Some(s) if s.used => {
                self.bytes -= u64::from(s.bytes);
                self.count -= 1;
                let epoch = s.epoch;
                *s = Slot::FREE;
                // Its epoch is the open one or a closed one (epochs close only forward).
                let back = self.epoch.wrapping_sub(epoch);
                if back == 0 {
                    self.open = self.open.saturating_sub(1);
                } else if let Some(k) = (back as usize).checked_sub(1).filter(|&k| k < self.nclosed) {
                    let i = (self.first + self.nclosed - 1 - k) % MAX_EPOCHS;
                    self.closed[i].pending = self.closed[i].pending.saturating_sub(1);
                }
                true
            }
            _ => false,
        }
    }

    /// A barrier `nr` came (rule 4): closes the open epoch, whose writes `writes` counts, for
    /// the caller's `tag`. [`Wait::Full`] when [`MAX_EPOCHS`] are closed already: wait for a
    /// retirement or an answered barrier.
    pub fn close_epoch(&mut self, nr: u32, flush: bool, writes: u32, tag: u64) -> Result<(), Wait> {
        if self.nclosed == MAX_EPOCHS {
            return Err(Wait::Full);
        }
        let i = (self.first + self.nclosed) % MAX_EPOCHS;
        self.closed[i] = Epoch { nr, flush, writes, tag, pending: self.open };
        self.nclosed += 1;
        self.open = 0;
        self.epoch += 1;
        Ok(())
    }

    /// The oldest barrier, if every write before it is retired: flush (if it asks) and answer
    /// it, then [`InFlight::pop_epoch`].
    pub fn ready_epoch(&self) -> Option<Epoch> {
        let e = self.closed[self.first];
        (self.nclosed > 0 && e.pending == 0).then_some(e)
    }

    /// Forgets the oldest barrier once answered (or its connection is gone); `None` if it is
    /// not ready.
    pub fn pop_epoch(&mut self) -> Option<Epoch> {
        let e = self.ready_epoch()?;
        self.first = (self.first + 1) % MAX_EPOCHS;
        self.nclosed -= 1;
        Some(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::vec;

    fn inflight(n: usize, max: u64) -> InFlight<std::vec::Vec<Slot>> {
        InFlight::new(vec![Slot::FREE; n], max)
    }

    #[test]
    fn durability_rule() {
        use Durability::*;
        // FUA mode: protocol C's writes go with FUA and need no flush; A/B keep the primary's.
        assert!(Fua.submit_fua(true, false) && !Fua.submit_fua(false, false) && Fua.submit_fua(false, true));
        // Flush mode: only the primary's FUA; the ack then waits for a flush.
        assert!(!Flush.submit_fua(true, false) && Flush.submit_fua(true, true) && !Flush.submit_fua(false, false));
        for d in [Fua, Flush] {
            for (durable, fua) in [(true, false), (true, true), (false, false), (false, true)] {
                let sub = d.submit_fua(durable, fua);
                // A durable ack is backed by FUA or by a flush, never by neither.
                assert_eq!(Durability::flush_before_ack(durable, sub), durable && !sub);
                assert!(!durable || sub || Durability::flush_before_ack(durable, sub));
            }
            assert_eq!(Durability::parse(d.as_str().as_bytes()), Some(d));
        }
        assert_eq!(Durability::parse(b"flush\n"), Some(Flush));
        assert_eq!(Durability::parse(b""), None);
        assert_eq!(Durability::parse(b"FUA"), None);
        assert_eq!(Durability::parse(b"flush\n\n"), None);
    }

    #[test]
    fn overlap_waits_until_retired() {
        let mut f = inflight(4, 1 << 20);
        let a = f.admit(0, 8, 4096).unwrap();
        assert_eq!(f.admit(7, 8, 4096), Err(Wait::Overlap));
        assert_eq!(f.admit(8, 8, 4096).map(|_| ()), Ok(()));
        assert!(f.retire(a));
        assert!(f.admit(7, 1, 512).is_ok());
        assert_eq!(f.len(), 2);
    }

    #[test]
    fn bounds_writes_and_bytes_but_a_big_write_goes_alone() {
        let mut f = inflight(2, 8192);
        let a = f.admit(0, 8, 4096).unwrap();
        let _b = f.admit(100, 8, 4096).unwrap();
        assert_eq!(f.admit(200, 8, 4096), Err(Wait::Full));
        assert!(f.retire(a));
        assert_eq!(f.admit(200, 16, 8192), Err(Wait::Full));
        let mut g = inflight(2, 8192);
        assert!(g.admit(0, 2048, 1 << 20).is_ok());
        assert_eq!(g.bytes(), 1 << 20);
        assert_eq!(g.admit(4096, 1, 512), Err(Wait::Full));
    }

    #[test]
    fn empty_writes_and_bad_slots_are_refused() {
        let mut f = inflight(2, 8192);
        assert_eq!(f.admit(0, 0, 0), Err(Wait::Empty));
        assert!(!f.retire(0));
        assert!(!f.retire(7));
        assert!(f.is_empty());
    }

    #[test]
    fn dependent_steps_drain() {
        assert!(!Step::Write { preflush: false }.drains());
        assert!(!Step::ResyncData.drains());
        assert!(!Step::Barrier.drains());
        for s in [Step::Write { preflush: true }, Step::Read, Step::Other] {
            assert!(s.drains());
        }
    }

    #[test]
    fn a_barrier_waits_for_its_epoch_only() {
        let mut f = inflight(8, 1 << 20);
        let a = f.admit(0, 8, 4096).unwrap();
        let b = f.admit(8, 8, 4096).unwrap();
        f.close_epoch(7, true, 2, 1).unwrap();
        // Writes after the barrier go on.
        let c = f.admit(16, 8, 4096).unwrap();
        assert_eq!(f.ready_epoch(), None);
        assert!(f.retire(c));
        assert!(f.retire(a));
        assert_eq!(f.ready_epoch(), None);
        assert!(!f.is_empty());
        assert!(f.retire(b));
        let e = f.ready_epoch().unwrap();
        assert_eq!((e.nr, e.flush, e.writes, e.tag), (7, true, 2, 1));
        assert_eq!(f.pop_epoch().map(|e| e.nr), Some(7));
        assert!(f.is_empty());
        assert_eq!(f.pop_epoch(), None);
    }

    #[test]
    fn barriers_are_answered_in_order_and_bounded() {
        let mut f = inflight(8, 1 << 20);
        let a = f.admit(0, 8, 4096).unwrap();
        f.close_epoch(1, true, 1, 0).unwrap();
        // An empty epoch behind a pending one is not ready before it.
        f.close_epoch(2, false, 0, 0).unwrap();
        assert_eq!(f.ready_epoch(), None);
        assert!(f.retire(a));
        assert_eq!(f.pop_epoch().map(|e| e.nr), Some(1));
        assert_eq!(f.pop_epoch().map(|e| e.nr), Some(2));
        for nr in 0..MAX_EPOCHS as u32 {
            f.close_epoch(nr, true, 0, 0).unwrap();
        }
        assert_eq!(f.close_epoch(99, true, 0, 0), Err(Wait::Full));
        assert_eq!(f.pop_epoch().map(|e| e.nr), Some(0));
        assert!(f.close_epoch(99, true, 0, 0).is_ok());
    }

    proptest::proptest! {
        /// Whatever the order of admissions and retirements: no two writes in flight overlap,
        /// the bounds hold, and the counts match the slots in use.
        #[test]
        fn never_two_overlapping_in_flight(ops in proptest::collection::vec((0u64..64, 1u32..16, proptest::bool::ANY), 1..200)) {
            let mut f = inflight(8, 16 * 512);
            let mut live: std::vec::Vec<(usize, u64, u64)> = std::vec::Vec::new();
            for (start, sectors, retire) in ops {
                if retire && !live.is_empty() {
                    let (slot, _, _) = live.remove((start as usize) % live.len());
                    proptest::prop_assert!(f.retire(slot));
                    continue;
                }
                let end = start + u64::from(sectors);
                let overlaps = live.iter().any(|&(_, s, e)| s < end && start < e);
                match f.admit(start, sectors, sectors * 512) {
                    Ok(slot) => {
                        proptest::prop_assert!(!overlaps);
                        live.push((slot, start, end));
                    }
                    Err(Wait::Overlap) => proptest::prop_assert!(overlaps),
                    Err(Wait::Full) => proptest::prop_assert!(!overlaps),
                    Err(Wait::Empty) => proptest::prop_assert!(false),
                }
                proptest::prop_assert_eq!(f.len(), live.len());
                proptest::prop_assert!(f.len() <= 8);
                proptest::prop_assert!(f.len() == 1 || f.bytes() <= 16 * 512);
            }
        }

        /// Barriers among writes: a barrier is ready exactly when every write admitted before
        /// it is retired, they are answered in order, and each is answered once.
        #[test]
        fn barriers_answer_after_their_writes(ops in proptest::collection::vec((0u8..4, 0usize..64), 1..300)) {
            let mut f = inflight(8, 1 << 20);
            // (slot, barriers closed before its admission)
            let mut live: std::vec::Vec<(usize, u32)> = std::vec::Vec::new();
            let (mut closed, mut answered, mut next_sector) = (0u32, 0u32, 0u64);
            for (op, pick) in ops {
                match op {
                    0 | 1 => {
                        if let Ok(slot) = f.admit(next_sector, 8, 4096) {
                            live.push((slot, closed));
                            next_sector += 8;
                        }
                    }
                    2 if !live.is_empty() => {
                        let (slot, _) = live.remove(pick % live.len());
                        proptest::prop_assert!(f.retire(slot));
                    }
                    2 => {}
                    _ => {
                        if f.close_epoch(closed, true, 0, 0).is_ok() {
                            closed += 1;
                        }
                    }
                }
                // The oldest unanswered barrier is ready iff no write admitted before it lives.
                let expect = answered < closed && !live.iter().any(|&(_, epoch)| epoch <= answered);
                proptest::prop_assert_eq!(f.ready_epoch().is_some(), expect);
                if expect && pick % 2 == 0 {
                    proptest::prop_assert_eq!(f.pop_epoch().map(|e| e.nr), Some(answered));
                    answered += 1;
                }
                proptest::prop_assert_eq!(f.is_empty(), live.is_empty() && answered == closed);
            }
        }
    }
}
