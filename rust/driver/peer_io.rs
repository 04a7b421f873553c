// SPDX-License-Identifier: GPL-2.0
//! The secondary's pipelined writes (DRBD's peer requests and asender).
//!
//! The receiver submits each replicated write and each resync write without waiting
//! ([`Device::peer_submit`]), up to [`MAX_WRITES`] writes and [`MAX_BYTES`] bytes at once (the
//! TCP window then holds the primary back). A completion, possibly in interrupt context, only
//! queues the write for the acker thread ([`run`]), which sends what the write owes the primary
//! (protocol C's `Durable` ack, a `Negative` ack, a `ResyncAck` and the `InSync` that may follow)
//! batched into one send, then retires the writes and frees their buffers.
//!
//! Rules that keep the disk a copy of the primary's:
//! - Writes that overlap never run together: one waits for the other to be retired. The
//!   primary never has two overlapping writes in flight, nor a write and a resync chunk over the
//!   same range, but a replayed outage queue may carry rewrites of one block back to back.
//! - Anything that depends on the writes before it (a write with PREFLUSH, a forwarded read,
//!   the bitmap exchange, the end of a connection) first waits until every write in flight is
//!   retired ([`Device::peer_drain`]): their acks are sent by then.
//! - A barrier (or flush) closes an epoch and does not stop the writes after it: the acker
//!   flushes and answers it once every write before it is retired ([`Device::peer_barrier`],
//!   DRBD's epochs). Barriers are answered in the order they came.
//! - A write is retired only after its ack is sent (or its connection is gone), so a barrier
//!   ack never overtakes the acks of the writes before it.
//!
//! Durability under protocol C (`rcore::state::peer`, rule 5), by sysfs `peer_durability`:
//! - `fua` (the default): each write goes with FUA and is acked from its completion;
//! - `flush` (group commit): writes go with the primary's own FUA only, and the acker, before
//!   sending the acks of a batch of completed writes, flushes once; the writes that complete
//!   during that flush form the next batch.
//!
//! Either way an acked write survives the secondary's power loss. Under A and B writes go with
//! the primary's own FUA only; the barrier's flush makes them durable, as before.

use crate::bindings::bdev::{AsyncWrite, WriteDone};
use crate::bindings::bio::Status;
use crate::device::Device;
use crate::rcore::state::peer::{InFlight, Slot, Wait};
use crate::rcore::wire::{self, AckKind, Message};
use crate::transport::Transport;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Writes in flight on a secondary at most.
pub(crate) const MAX_WRITES: usize = 64;
// `acks` keeps a bit per write of a batch in a u64.
const _: () = assert!(MAX_WRITES <= 64);
/// Bytes in flight on a secondary at most (a single larger write still goes alone).
pub(crate) const MAX_BYTES: usize = 8 << 20;

/// What a write owes the primary once done.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owed {
    /// A replicated write; `durable`: protocol C's ack (else only a failure is reported);
    /// `flush`: the write went without FUA, so the ack waits for the acker's flush (group
    /// commit).
    Write { seq: u32, durable: bool, flush: bool },
    /// A resync chunk: `ResyncAck`, then `InSync` if it was the last one.
    Resync,
}

/// A write in flight, kept with its buffer.
pub(crate) struct PeerWrite {
    dev: Arc<Device>,
    generation: u64,
    sector: u64,
    sectors: u32,
    /// Its place in [`PeerIo::inflight`].
    slot: usize,
    owed: Owed,
    status: Status,
}

/// The secondary's writes in flight (under [`Device::peer_io`], also taken from completions).
pub(crate) struct PeerIo {
    /// Which writes may start (the core's rules 1 and 2).
    inflight: InFlight<KVec<Slot>>,
    /// Completed, waiting for the acker (room for every write in flight).
    done: KVec<KBox<AsyncWrite<PeerWrite>>>,
}

impl PeerIo {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            inflight: InFlight::new(KVec::from_elem(Slot::FREE, MAX_WRITES, GFP_KERNEL)?, MAX_BYTES as u64),
            done: KVec::with_capacity(MAX_WRITES, GFP_KERNEL)?,
        })
    }
}

impl WriteDone for PeerWrite {
    /// Interrupt context: hand the write to the acker.
    fn done(mut w: KBox<AsyncWrite<Self>>, status: Status) {
        w.tag.status = status;
        let dev = w.tag.dev.clone();
        // There is room: `done` has capacity for every write in flight.
        let _ = dev.peer_io.lock().done.push_within_capacity(w);
        dev.ack_cv.notify_one();
    }
}

impl Device {
    /// Receiver: writes `buf` at `sector` without waiting, once no write in flight overlaps it
    /// and there is room; `owed` says what to tell the primary when it is done. A write that
    /// cannot be submitted completes at once with an error (and is reported as such).
    pub(crate) fn peer_submit(self: &Arc<Self>, generation: u64, sector: u64, buf: KVVec<u8>, owed: Owed,
        preflush: bool, fua: bool) -> core::result::Result<(), &'static str> {
        let bytes = u32::try_from(buf.len()).map_err(|_| "write too large")?;
        let sectors = bytes >> wire::SECTOR_SHIFT;
        let slot = {
            let mut p = self.peer_io.lock();
            loop {
                match p.inflight.admit(sector, sectors, bytes) {
                    Ok(slot) => break slot,
                    Err(Wait::Empty) => return Err("an empty write"),
                    Err(Wait::Overlap | Wait::Full) => {
                        let _ = self.peer_cv.wait_interruptible_timeout(&mut p, kernel::time::msecs_to_jiffies(1000));
                    }
                }
            }
        };
        let tag = PeerWrite { dev: self.clone(), generation, sector, sectors, slot, owed, status: Status::OK };
        let w = match crate::bindings::noio(|| KBox::new(AsyncWrite::new(buf, tag), GFP_KERNEL)) {
            Ok(w) => w,
            Err(_) => {
                self.peer_retire(core::iter::once(slot));
                return Err("no memory for a write");
            }
        };
        if let Err((w, e)) = self.backing.write_async(sector, w, preflush, fua) {
            PeerWrite::done(w, Status::from_errno(e));
        }
        Ok(())
    }

    /// Receiver: barrier `nr` of connection `generation` came after `writes` writes of its
    /// epoch. The acker flushes (if `flush`) and answers it once they are retired; the writes
    /// after it go on meanwhile (`rcore::state::peer`, rule 4).
    pub(crate) fn peer_barrier(&self, generation: u64, nr: u32, flush: bool, writes: u32) {
        let ready = {
            let mut p = self.peer_io.lock();
            loop {
                match p.inflight.close_epoch(nr, flush, writes, generation) {
                    Ok(()) => break p.inflight.ready_epoch().is_some(),
                    Err(_) => {
                        let _ = self.peer_cv.wait_interruptible_timeout(&mut p, kernel::time::msecs_to_jiffies(1000));
                    }
                }
            }
        };
        if ready {
            self.ack_cv.notify_one();
        }
    }

    /// Acker: answers the barriers whose writes are all retired, oldest first: flush, then
    /// `BarrierAck` (a `Negative` ack naming the barrier if the flush failed); a barrier of a
    /// connection that is gone is only forgotten.
    fn answer_barriers(&self) {
        loop {
            let Some(e) = self.peer_io.lock().inflight.ready_epoch() else { return };
            let meta = {
                let c = self.conn.lock();
                if c.stopping || c.generation != e.tag { None } else { c.meta.clone() }
            };
            if let Some(l) = meta {
                let msg = if e.flush && self.backing.flush().is_err() {
                    Message::Ack { seq: e.nr, kind: AckKind::Negative }
                } else {
                    Message::BarrierAck { nr: e.nr, writes: e.writes }
                };
                let stop = || !self.is_current(e.tag);
                if crate::transport::send_msg(&*l, &msg, &stop).is_err() {
                    self.connection_lost(e.tag, "cannot send an ack");
                }
            }
            let _ = self.peer_io.lock().inflight.pop_epoch();
            self.peer_cv.notify_all();
        }
    }

    /// Waits until every write in flight is retired (its ack sent or its connection gone) and
    /// every barrier answered.
    pub(crate) fn peer_drain(&self) {
        let mut p = self.peer_io.lock();
        while !p.inflight.is_empty() {
            let _ = self.peer_cv.wait_interruptible_timeout(&mut p, kernel::time::msecs_to_jiffies(1000));
        }
    }

    fn peer_retire(&self, slots: impl Iterator<Item = usize>) {
        {
            let mut p = self.peer_io.lock();
            for slot in slots {
                p.inflight.retire(slot);
            }
        }
        self.peer_cv.notify_all();
    }

    /// Acker: tells the primary what `batch` owes it (one send), then retires the writes.
    fn acks(&self, batch: &mut KVec<KBox<AsyncWrite<PeerWrite>>>, out: &mut KVec<u8>) {
        let (generation, meta) = {
            let c = self.conn.lock();
            (c.generation, if c.stopping { None } else { c.meta.clone() })
        };
        let stop = || !self.is_current(generation);
        let mut lost = None;
        // Group commit (`rcore::state::peer`, rule 5): one flush, submitted after every write of
        // the batch completed, makes them durable before their acks; if it fails, they are
        // acked `Negative` and the primary marks their ranges.
        let owes_flush = |w: &AsyncWrite<PeerWrite>| {
            let t = &w.tag;
            matches!(t.owed, Owed::Write { flush: true, .. }) && t.status.is_ok() && t.generation == generation
        };
        // The writes (by index in the batch, at most MAX_WRITES) that a failed flush left not durable.
        let mut not_durable = 0u64;
        if meta.is_some() && batch.iter().any(|w| owes_flush(w)) {
            if let Err(e) = self.backing.flush() {
                let n = batch.iter().filter(|w| owes_flush(w)).count();
                pr_err!("{}: flush before the acks of {} writes (group commit) failed: they are not durable\n",
                    &*self.cfg.name, n);
                for (i, w) in batch.iter_mut().enumerate() {
                    if owes_flush(w) {
                        w.tag.status = Status::from_errno(e);
                        not_durable |= 1u64.checked_shl(i as u32).unwrap_or(0);
                    }
                }
            }
        }
        // Messages in `out` (one send counts one; the rest are added here).
        let mut batched = 0u64;
        out.clear();
        for (i, w) in batch.iter().enumerate() {
            let t = &w.tag;
            let current = t.generation == generation && meta.is_some();
            let mut msgs: [Option<Message<'static>>; 2] = [None, None];
            match t.owed {
                Owed::Write { seq, durable, .. } => {
                    if !t.status.is_ok() {
                        // (After a failed group flush, its one message above says it all.)
                        if not_durable & 1u64.checked_shl(i as u32).unwrap_or(0) == 0 {
                            pr_err!("{}: write of {} sectors at {} failed\n", &*self.cfg.name, t.sectors, t.sector);
                        }
                        msgs[0] = Some(Message::Ack { seq, kind: AckKind::Negative });
                    } else if durable {
                        msgs[0] = Some(Message::Ack { seq, kind: AckKind::Durable });
                    }
                }
                Owed::Resync if !t.status.is_ok() => {
                    pr_err!("{}: resync write of {} sectors at {} failed\n", &*self.cfg.name, t.sectors, t.sector);
                    lost.get_or_insert((t.generation, "a resync write failed"));
                }
                Owed::Resync if current => {
                    let (sector, sectors) = (t.sector, t.sectors);
                    msgs[0] = Some(Message::ResyncAck { sector, sectors });
                    if self.resync_written(sector, sectors) {
                        msgs[1] = self.target_in_sync(generation).map(|current| Message::InSync { current });
                    }
                }
                Owed::Resync => {}
            }
            if !current {
                continue;
            }
            for m in msgs.iter().flatten() {
                let mut h = [0u8; wire::MAX_HEADER_LEN];
                let Ok(n) = m.encode_header(&mut h) else { continue };
                if out.len() + n > out.capacity() {
                    if let Some(l) = &meta {
                        if send_batch(&**l, out, batched, &stop).is_err() {
                            lost.get_or_insert((generation, "cannot send an ack"));
                        }
                    }
                    out.clear();
                    batched = 0;
                }
                let _ = out.extend_from_slice(&h[..n], GFP_KERNEL);
                batched += 1;
            }
        }
        if let (Some(l), false) = (&meta, out.is_empty()) {
            if send_batch(&**l, out, batched, &stop).is_err() {
                lost.get_or_insert((generation, "cannot send an ack"));
            }
        }
        self.peer_retire(batch.iter().map(|w| w.tag.slot));
        batch.clear();
        if let Some((g, why)) = lost {
            self.connection_lost(g, why);
        }
    }
}

/// Sends `n` encoded messages in one send.
fn send_batch(l: &dyn Transport, out: &[u8], n: u64, stop: &dyn Fn() -> bool) -> Result {
    l.counters().msgs_sent.fetch_add(n.saturating_sub(1), core::sync::atomic::Ordering::Relaxed);
    l.send(&[out], None, stop)
}

/// The acker thread (secondary): sends the acks of completed writes and retires them, then
/// answers the barriers that became ready. Stops only once asked to (after the receiver, which
/// drains first) with nothing in flight.
pub(crate) fn run(dev: &Arc<Device>) {
    let (Ok(mut batch), Ok(mut out)) = (
        KVec::with_capacity(MAX_WRITES, GFP_KERNEL),
        KVec::with_capacity(MAX_WRITES * 2 * wire::MAX_HEADER_LEN, GFP_KERNEL),
    ) else {
        pr_err!("{}: no memory for the acker\n", &*dev.cfg.name);
        return;
    };
    loop {
        {
            let mut p = dev.peer_io.lock();
            loop {
                if !p.done.is_empty() {
                    core::mem::swap(&mut p.done, &mut batch);
                    break;
                }
                if p.inflight.ready_epoch().is_some() {
                    break;
                }
                if p.inflight.is_empty() && crate::bindings::thread::should_stop() {
                    return;
                }
                let _ = dev.ack_cv.wait_interruptible_timeout(&mut p, kernel::time::msecs_to_jiffies(1000));
            }
        }
        if !batch.is_empty() {
            dev.acks(&mut batch, &mut out);
        }
        dev.answer_barriers();
    }
}
