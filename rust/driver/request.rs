// SPDX-License-Identifier: GPL-2.0
//! The request path: reads go straight to the backing device; each write is cloned to the
//! backing device and queued for the peer, and its bio completes when the core's protocol state
//! machine says so (protocol C: local write done and the peer's durable ack).
//!
//! A [`Request`] counts the parts still outstanding (the submitter, the local clone, the peer).
//! Whoever finishes the last part replays the recorded outcomes through
//! `rcore::state::protocol::Request::event` and ends the bio; nothing is locked in interrupt
//! context except the bio slot, which only that single finisher takes.

use crate::bindings::bio::{Bio, Op, Status};
use crate::device::{CState, Device, Role};
use crate::rcore::state::protocol::{self, Event};
use core::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use kernel::prelude::*;
use kernel::sync::{new_spinlock, Arc, SpinLock};

const PART_PENDING: u8 = 0;
const PART_OK: u8 = 1;
const PART_FAILED: u8 = 2;

/// One mirrored write (or flush).
#[pin_data]
pub(crate) struct Request {
    pub(crate) dev: Arc<Device>,
    /// The upper layer's bio, stored once submission is finished, taken by the finisher.
    #[pin]
    bio: SpinLock<Option<Bio>>,
    pub(crate) seq: u32,
    pub(crate) sector: u64,
    /// Payload bytes (0 for a flush without data).
    pub(crate) len: u32,
    pub(crate) preflush: bool,
    pub(crate) fua: bool,
    /// Copy of the data for the peer (the bio's pages are not ours to pin across threads).
    pub(crate) data: KVVec<u8>,
    pending: AtomicU32,
    local: AtomicU8,
    net: AtomicU8,
}

impl Device {
    /// `fops->submit_bio`.
    pub(crate) fn submit_bio(self: &Arc<Device>, bio: Bio) {
        if self.cfg.role == Role::Secondary {
            return bio.end(Status::IOERR);
        }
        let Some(bio) = bio.split_to_limits() else { return };
        match bio.op() {
            Op::Read => bio.remap(&self.backing),
            Op::Write | Op::Flush => crate::bindings::noio(|| Request::submit(self, bio)),
            Op::Other => bio.end(Status::NOTSUPP),
        }
    }
}

impl Request {
    fn submit(dev: &Arc<Device>, bio: Bio) {
        let len = bio.size();
        let mut data = KVVec::new();
        if len > 0 {
            match KVVec::from_elem(0u8, len as usize, GFP_KERNEL) {
                Ok(d) => data = d,
                Err(_) => return bio.end(Status::IOERR),
            }
            if bio.copy_to(&mut data).is_err() {
                return bio.end(Status::IOERR);
            }
        }
        let (sector, preflush, fua) = (bio.sector(), bio.preflush(), bio.fua());
        let req = match Arc::pin_init(
            pin_init!(Request {
                dev: dev.clone(),
                bio <- new_spinlock!(None),
                seq: dev.next_seq(),
                sector,
                len,
                preflush,
                fua,
                data,
                pending: AtomicU32::new(3),
                local: AtomicU8::new(PART_PENDING),
                net: AtomicU8::new(PART_PENDING),
            }),
            GFP_KERNEL,
        ) {
            Ok(r) => r,
            Err(_) => return bio.end(Status::IOERR),
        };
        dev.stats.inflight.fetch_add(1, Ordering::AcqRel);
        dev.stats.writes.fetch_add(1, Ordering::Relaxed);
        dev.stats.write_bytes.fetch_add(u64::from(len), Ordering::Relaxed);

        // Local half: a clone to the backing device.
        if bio.submit_clone(&dev.backing, &dev.bioset, req.clone()).is_err() {
            req.local.store(PART_FAILED, Ordering::Release);
            req.clone().put();
        }
        // Peer half: queue for the sender thread, or fail it at once when not connected.
        if !dev.queue_for_peer(&req) {
            req.clone().net_done(false);
        }
        *req.bio.lock() = Some(bio);
        req.put();
    }

    /// Completion of the local clone (interrupt context).
    pub(crate) fn local_done(req: Arc<Request>, status: Status) {
        let v = if status.is_ok() { PART_OK } else { PART_FAILED };
        req.local.store(v, Ordering::Release);
        req.put();
    }

    /// The peer half finished: durable ack (`ok`), or negative ack / connection lost.
    pub(crate) fn net_done(self: Arc<Self>, ok: bool) {
        if ok {
            self.dev.stats.acks.fetch_add(1, Ordering::Relaxed);
        }
        self.net.store(if ok { PART_OK } else { PART_FAILED }, Ordering::Release);
        self.put();
    }

    /// Drops one outstanding part; the last one completes the request.
    fn put(self: Arc<Self>) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.finish();
        }
    }

    fn finish(&self) {
        let mut t = protocol::Request::new(self.dev.cfg.protocol);
        let local_ok = self.local.load(Ordering::Acquire) == PART_OK;
        let net_ok = self.net.load(Ordering::Acquire) == PART_OK;
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
        if mark {
            // The fracture bitmap arrives with outage handling; until then the range is counted.
            let sectors = u64::from(self.len.div_ceil(512)).max(1);
            self.dev.stats.out_of_sync.fetch_add(sectors, Ordering::Relaxed);
        }
        // A failed local write is an I/O error even when the peer has the data: reads are
        // served locally and would return stale data otherwise.
        let st = match status {
            Some(protocol::Status::Ok) if local_ok => Status::OK,
            _ => Status::IOERR,
        };
        if let Some(bio) = self.bio.lock().take() {
            bio.end(st);
        }
        self.dev.stats.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Device {
    /// Queues `req` for the sender when connected, waiting for in-flight room. Returns false
    /// when the request must go without the peer.
    fn queue_for_peer(&self, req: &Arc<Request>) -> bool {
        let mut c = self.conn.lock();
        loop {
            if c.stopping || c.cstate != CState::Connected {
                return false;
            }
            if c.send_queue.len() + c.inflight.len() < crate::device::MAX_INFLIGHT {
                break;
            }
            self.room.wait(&mut c);
        }
        if c.send_queue.push_within_capacity(req.clone()).is_err() {
            return false;
        }
        drop(c);
        self.work.notify_one();
        true
    }
}
