// SPDX-License-Identifier: GPL-2.0
//! The request path: reads go straight to the backing device; each write (or flush) becomes a
//! clone to the backing device whose front pad holds a [`Request`], and is queued for the peer.
//!
//! A request is reference counted through its clone ([`CloneRef`]): the submitter, the local
//! I/O and the peer queue each hold a reference. When the last one goes, the recorded outcomes
//! are replayed through the core's single transition function
//! (`rcore::state::protocol::Request::event`), which decides the original bio's status (protocol
//! C: local write done and the peer's durable ack). Nothing here allocates except the clone,
//! from a mempool-backed bio set: a write waits for memory, it never fails for lack of it.

use crate::bindings::bio::{Bio, CloneData, CloneRef, Op, Status};
use crate::device::{Device, Role};
use crate::rcore::state::protocol::{self, Event};
use core::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use kernel::sync::Arc;

const PART_PENDING: u8 = 0;
const PART_OK: u8 = 1;
const PART_FAILED: u8 = 2;
/// Not written by the peer, but kept in the outage queue (replayed later): no bitmap mark.
const PART_QUEUED: u8 = 3;
/// No local write: the disk is detached (see `detach`).
const PART_SKIPPED: u8 = 4;

/// One mirrored write (or flush), in its clone's front pad.
pub(crate) struct Request {
    pub(crate) dev: Arc<Device>,
    /// The in-flight slot (see `device::Slots`), freed at completion.
    slot: usize,
    pub(crate) seq: u32,
    pub(crate) sector: u64,
    /// Payload bytes (0 for a flush without data).
    pub(crate) len: u32,
    pub(crate) preflush: bool,
    pub(crate) fua: bool,
    /// Position in the connection's send order (`tlog::TransferLog::sent`), set by the sender.
    pub(crate) sent_no: AtomicU64,
    /// The write holds activity log references (see `actlog`), given back at completion.
    al: bool,
    local: AtomicU8,
    net: AtomicU8,
}

/// `fops->submit_bio`.
pub(crate) fn submit_bio(dev: &Arc<Device>, bio: Bio) {
    if dev.role() == Role::Secondary {
        return bio.end(Status::ioerr());
    }
    let Some(bio) = bio.split_to_limits() else { return };
    match bio.op() {
        Op::Read => match dev.disk() {
            crate::detach::ATTACHED => bio.remap(&dev.backing),
            crate::detach::ATTACHING if !dev.is_stale(bio.sector(), u64::from(bio.size() >> 9)) => {
                bio.remap(&dev.backing)
            }
            _ => dev.read_via_peer(bio),
        },
        Op::Write | Op::Flush => crate::bindings::noio(|| submit_write(dev, bio)),
        Op::Other => bio.end(Status::notsupp()),
    }
}

fn submit_write(dev: &Arc<Device>, bio: Bio) {
    let (sector, len, preflush, fua) = (bio.sector(), bio.size(), bio.preflush(), bio.fua());
    // REQ_NOWAIT (io_uring's first try): where the write would wait below (an overlapping write
    // in flight, an activity log transaction), it ends with BLK_STS_AGAIN and is resubmitted
    // from a context that may wait.
    let nowait = bio.nowait();
    if nowait && dev.disk() != crate::detach::DETACHED && !dev.al_ready(sector, u64::from(len >> 9)) {
        return bio.end(Status::again());
    }
    // Overlapping writes in flight wait here, before they take a place in the wire order.
    let slot = if nowait {
        match dev.slot_try_acquire(sector, u64::from(len >> 9)) {
            Some(s) => s,
            None => return bio.end(Status::again()),
        }
    } else {
        dev.slot_acquire(sector, u64::from(len >> 9))
    };
    // Its extents are in the activity log on disk before the write is issued (no log, and no
    // local write, while the disk is detached).
    let mut diskless = dev.disk() == crate::detach::DETACHED;
    let al = match if diskless { Ok(false) } else { dev.al_begin(sector, u64::from(len >> 9)) } {
        Ok(al) => al,
        Err(_) if dev.detaches() && dev.role() == Role::Primary => {
            dev.detach("an activity log write failed");
            diskless = true;
            false
        }
        Err(_) => {
            dev.slot_release(slot);
            return bio.end(Status::ioerr());
        }
    };
    let req = Request {
        dev: dev.clone(),
        slot,
        seq: dev.next_seq(),
        sector,
        len,
        preflush,
        fua,
        sent_no: AtomicU64::new(0),
        al,
        local: AtomicU8::new(if diskless { PART_SKIPPED } else { PART_PENDING }),
        net: AtomicU8::new(PART_PENDING),
    };
    let clone = match dev.bioset.clone_bio(bio, &dev.backing, req) {
        Ok(c) => c,
        Err(bio) => {
            if al {
                dev.al_end(sector, u64::from(len >> 9));
            }
            dev.slot_release(slot);
            return bio.end(Status::ioerr());
        }
    };
    dev.stats.inflight.fetch_add(1, Ordering::Relaxed);
    dev.stats.writes.fetch_add(1, Ordering::Relaxed);
    dev.stats.write_bytes.fetch_add(u64::from(len), Ordering::Relaxed);
    // Local half: the clone goes to the backing device (dispatched once we return).
    if diskless {
        dev.diskless_inflight.fetch_add(1, Ordering::AcqRel);
    }
    let req = if diskless { clone.without_io() } else { clone.submit() };
    // Peer half: queued for the sender thread or in the outage queue, or failed at once.
    if !dev.queue_for_peer(&req, !nowait) {
        req.net_done(false);
    }
}

impl CloneData for Request {
    /// Completion of the local write (interrupt context).
    fn end_io(req: CloneRef<Self>, status: Status) {
        let v = if status.is_ok() { PART_OK } else { PART_FAILED };
        req.local.store(v, Ordering::Release);
    }

    fn complete(&mut self) -> Status {
        let mut t = protocol::Request::new(self.dev.cfg.protocol);
        let local = *self.local.get_mut();
        let local_ok = local == PART_OK;
        let net = *self.net.get_mut();
        let net_ok = net == PART_OK;
        if local == PART_SKIPPED || (local == PART_FAILED && self.dev.detaches() && self.dev.role() == Role::Primary) {
            return self.complete_diskless(local == PART_FAILED, net_ok);
        }
        let mut mark = false;
        let mut status = None;
        for ev in [
            if local_ok { Event::LocalDone } else { Event::LocalFailed },
            if net_ok { Event::AckDurable } else { Event::ConnectionLost },
        ] {
            if let Ok(o) = t.event(ev) {
                mark |= o.mark_out_of_sync;
                status = status.or(o.complete);
            }
        }
        let dev = &self.dev;
        if mark && net != PART_QUEUED {
            dev.mark_out_of_sync(self.sector, self.len);
        }
        if self.al {
            dev.al_end(self.sector, u64::from(self.len >> 9));
        }
        dev.slot_release(self.slot);
        dev.stats.inflight.fetch_sub(1, Ordering::Relaxed);
        // A failed local write is an I/O error even when the peer has the data: reads are
        // served locally and would return stale data otherwise.
        match status {
            Some(protocol::Status::Ok) if local_ok => Status::OK,
            _ => Status::ioerr(),
        }
    }
}

impl Request {
    /// Completion without our disk (detached, or its write just failed under
    /// `on_io_error=detach`): the peer's ack decides; our disk lacks the range either way.
    fn complete_diskless(&mut self, failed: bool, net_ok: bool) -> Status {
        let dev = &self.dev;
        if failed {
            dev.detach("a write failed");
        }
        dev.mark_stale(self.sector, self.len);
        if !failed {
            dev.diskless_inflight.fetch_sub(1, Ordering::AcqRel);
        }
        if self.al {
            dev.al_end(self.sector, u64::from(self.len >> 9));
        }
        dev.slot_release(self.slot);
        dev.stats.inflight.fetch_sub(1, Ordering::Relaxed);
        if net_ok {
            Status::OK
        } else {
            Status::ioerr()
        }
    }
}

/// Request-side operations on a queued request.
pub(crate) trait PeerPart {
    /// The peer half finished: durable ack (`ok`), or negative ack / connection lost. Drops
    /// the peer's reference.
    fn net_done(self, ok: bool);
    /// The write went to the outage queue: when its peer half fails, do not mark the bitmap.
    fn set_queued(&self);
}

impl PeerPart for CloneRef<Request> {
    fn net_done(self, ok: bool) {
        if ok {
            self.dev.stats.acks.fetch_add(1, Ordering::Relaxed);
        }
        if ok || self.net.load(Ordering::Acquire) != PART_QUEUED {
            self.net.store(if ok { PART_OK } else { PART_FAILED }, Ordering::Release);
        }
    }

    fn set_queued(&self) {
        self.net.store(PART_QUEUED, Ordering::Release);
    }
}

impl Device {
    /// Queues `req` for the sender when replicating, or in the outage queue during an outage
    /// or a replay. Returns false when the request must go without the peer (its range is
    /// marked at completion). Never waits for the peer's ack: the in-flight slots bound the
    /// send queue to its capacity. `inline`: the caller may send it itself if the sender is
    /// idle (it may then wait for room in the socket; not for `REQ_NOWAIT`).
    fn queue_for_peer(&self, req: &CloneRef<Request>, inline: bool) -> bool {
        let mut c = self.conn.lock();
        if self.disk() == crate::detach::DETACHED && (!c.sending() || !c.detach_ok) {
            // Without the disk a write is only as good as the peer's ack: no queueing, and a
            // peer that cannot serve a detached primary's reads does not get its writes either.
            return false;
        }
        if c.queueing() {
            if self.push_outage(&mut c, req) {
                req.set_queued();
                drop(c);
                self.work.notify_one();
            }
            return false;
        }
        if !c.sending() {
            return false;
        }
        if c.send_queue.push_within_capacity(req.clone()).is_err() {
            return false;
        }
        if inline {
            self.send_or_wake(c);
        } else {
            drop(c);
            self.work.notify_one();
        }
        true
    }
}
