// SPDX-License-Identifier: GPL-2.0
//! Local disk failure (`on_io_error=detach`, DRBD's default): the primary stops using a backing
//! device that failed a write and goes on through its peer, then pulls back what it missed
//! once the disk is attached again.
//!
//! - **Detach.** A failed local write (or activity log transaction) detaches the disk: the
//!   write completes as the peer's ack says (protocol C: durable there), and its range is
//!   marked *stale* (ours lacks it: a second in-memory bitmap, apart from the fracture bitmap,
//!   which keeps meaning "the peer lacks it"). The sender tells the secondary with `Detached`,
//!   carrying a new current UUID that both sides adopt in memory; the secondary writes it to
//!   its superblock, so the failed disk (whose superblock keeps the old generation) can never
//!   be a sync source again (`rcore::state::resync::Uuids::peer_detached`).
//! - **Detached.** Writes go to the peer only (no activity log, no local I/O) and mark their
//!   range stale; reads are forwarded: a `ResyncRequest` on the data socket, answered in
//!   order by a `ResyncReply` (or `ResyncNegative`) on the same socket (bulk data never
//!   goes on the meta socket, where it would hold back heartbeats and acks), whose data the
//!   primary's reply thread copies into the bio. A read is forwarded only while replicating
//!   with nothing left to replay (every write completed before it was submitted is then
//!   applied at the peer before the request, which follows it on the same socket); reads of
//!   regions the peer lacks, and any I/O without a connection, fail with `EIO`: neither side
//!   can serve them. No metadata is written to the failed disk.
//! - **Attach** (`rmirrorctl attach`). The superblock is written inconsistent first (with the
//!   new generation: an interrupted attach leaves a disk that is refused as primary and fully
//!   resynced as secondary), then the resync thread pulls every stale run: it takes the run's
//!   in-flight slot (so no write to it is in flight), forwards a read for it, writes the data
//!   locally and clears the run. Reads of stale regions are forwarded meanwhile; writes go to
//!   both disks. When nothing is stale the disk is up to date again: the superblock says
//!   consistent and the device is back to normal.

use crate::bindings::bio::{Bio, Status};
use crate::conn::MAX_IO_BYTES;
use crate::device::{Conn, Device};
use crate::rcore::table::OnIoError;
use crate::rcore::wire;
use crate::transport::{RecvError, Transport};
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

/// The disk is in use (the normal state).
pub(crate) const ATTACHED: u8 = 0;
/// The disk failed: every I/O goes through the peer.
pub(crate) const DETACHED: u8 = 1;
/// The disk is back: stale regions are pulled from the peer.
pub(crate) const ATTACHING: u8 = 2;

/// A read forwarded to the peer, queued or awaiting its reply.
pub(crate) enum PeerRead {
    /// An application read: the reply's data completes it.
    App { bio: Bio, sector: u64, sectors: u32 },
    /// A run pulled back by the attach (its data goes to `Conn::pulled`).
    Pull { sector: u64, sectors: u32 },
}

impl PeerRead {
    pub(crate) fn range(&self) -> (u64, u32) {
        match self {
            PeerRead::App { sector, sectors, .. } | PeerRead::Pull { sector, sectors } => (*sector, *sectors),
        }
    }

    /// Ends it without data (`EIO` for an application read).
    pub(crate) fn fail(self, dev: &Device) {
        match self {
            PeerRead::App { bio, .. } => bio.end(Status::ioerr()),
            PeerRead::Pull { .. } => {
                dev.conn.lock().pulled = Some(false);
                dev.resync_cv.notify_all();
            }
        }
    }
}

/// Where the reply of a pulled run is copied (allocated by the attach).
pub(crate) type PullBuf = KVVec<u8>;

impl Device {
    /// The disk's state ([`ATTACHED`], [`DETACHED`] or [`ATTACHING`]).
    pub(crate) fn disk(&self) -> u8 {
        self.disk.load(Ordering::Acquire)
    }

    /// Whether the backing device failed and the policy is to go on without it.
    pub(crate) fn detaches(&self) -> bool {
        self.cfg.on_io_error == OnIoError::Detach
    }

    /// The disk failed (`why`): stop using it (any context). Idempotent.
    pub(crate) fn detach(&self, why: &str) {
        let old = self.disk.swap(DETACHED, Ordering::AcqRel);
        if old == DETACHED {
            return;
        }
        self.detach_notice.store(true, Ordering::Release);
        pr_err!("{}: the backing device failed ({}): disk detached; reads and writes go through the peer \
            (rmirrorctl attach once it works again)\n", &*self.cfg.name, why);
        self.work.notify_all();
        self.link_changed.notify_all();
        self.resync_cv.notify_all();
        // Writes waiting for an activity log transaction stop waiting (none is written now). The
        // lock orders this wake-up after a waiter's check of the disk state.
        drop(self.al.lock());
        self.al_cv.notify_all();
    }

    /// Marks `len` bytes at `sector` as missing from our disk (any context).
    pub(crate) fn mark_stale(&self, sector: u64, len: u32) {
        if len > 0 {
            let _ = self.stale.lock().set_range(sector, u64::from(len.div_ceil(512)));
        }
    }

    /// Whether any of `sectors` at `sector` is missing from our disk.
    pub(crate) fn is_stale(&self, sector: u64, sectors: u64) -> bool {
        self.stale.lock().test_range(sector, sectors).unwrap_or(false)
    }

    /// Forwards the read `bio` to the peer, or fails it when the peer cannot serve it.
    pub(crate) fn read_via_peer(&self, bio: Bio) {
        let (sector, sectors) = (bio.sector(), bio.size() >> wire::SECTOR_SHIFT);
        if sectors == 0 {
            return bio.end(Status::OK);
        }
        if self.bitmap.lock().test_range(sector, u64::from(sectors)).unwrap_or(true) {
            // The peer lacks it and our disk is gone: nobody has it.
            return bio.end(Status::ioerr());
        }
        let mut c = self.conn.lock();
        // The secondary's own out-of-sync regions must be known (merged into ours) first.
        let merged = c.peer_bitmap != crate::device::PeerBitmap::Awaited;
        if !c.sending() || !c.detach_ok || !merged
            || crate::bindings::noio(|| c.read_queue.reserve(1, GFP_KERNEL)).is_err() {
            drop(c);
            return bio.end(Status::ioerr());
        }
        if let Err(kernel::alloc::kvec::PushError(r)) = c.read_queue.push_within_capacity(PeerRead::App { bio, sector, sectors }) {
            drop(c);
            return r.fail(self);
        }
        drop(c);
        self.work.notify_one();
    }

    /// Primary: the peer answered the oldest forwarded read of connection `generation` with
    /// `data` (`None`: it could not read it).
    pub(crate) fn read_reply(&self, generation: u64, sector: u64, sectors: u32, data: Option<&[u8]>)
        -> core::result::Result<(), &'static str> {
        let mut c = self.conn.lock();
        if c.generation != generation {
            return Err("replaced by a new connection");
        }
        let _ = c.sm.on_traffic(self.now_ms());
        let Some(first) = c.reads_sent.first() else { return Err("a read reply without a request") };
        if first.range() != (sector, sectors) {
            return Err("a read reply for another range");
        }
        let r = c.reads_sent.remove(0).map_err(|_| "a read reply without a request")?;
        match r {
            PeerRead::App { mut bio, .. } => {
                drop(c);
                match data {
                    Some(d) => {
                        bio.copy_from(d);
                        bio.end(Status::OK);
                    }
                    None => bio.end(Status::ioerr()),
                }
            }
            PeerRead::Pull { .. } => {
                let ok = match (data, c.pull_buf.as_mut()) {
                    (Some(d), Some(b)) if d.len() <= b.len() => {
                        b[..d.len()].copy_from_slice(d);
                        true
                    }
                    _ => false,
                };
                c.pulled = Some(ok);
                drop(c);
                self.resync_cv.notify_all();
            }
        }
        Ok(())
    }

    /// Fails every forwarded read of a connection that is gone (`reads` taken from it).
    pub(crate) fn fail_reads(&self, reads: KVec<PeerRead>) {
        for r in reads {
            r.fail(self);
        }
    }

    /// `rmirrorctl attach`: the failed disk works again; pull back what it missed.
    pub(crate) fn attach_disk(&self) -> Result {
        let name = &*self.cfg.name;
        if self.disk() != DETACHED {
            pr_info!("{}: attach: the disk is attached\n", name);
            return Err(crate::bindings::errno::ealready());
        }
        let buf = KVVec::from_elem(0u8, MAX_IO_BYTES as usize, GFP_KERNEL)?;
        {
            let mut c = self.conn.lock();
            if !c.replicating() || !c.detach_ok {
                pr_err!("{}: attach: refused: not connected (what the disk missed is pulled from the peer)\n", name);
                return Err(crate::bindings::errno::enotconn());
            }
            c.pull_buf = Some(buf);
        }
        // Inconsistent on disk before anything is pulled.
        {
            let mut g = self.uuids.lock();
            g.consistent = false;
            g.dirty = true;
        }
        if self.disk.compare_exchange(DETACHED, ATTACHING, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return Err(crate::bindings::errno::ealready());
        }
        if let Some(md) = (*self.md.lock()).as_mut() {
            // A crash before the pull ends must not leave the stale regions unknown.
            md.set_flags(crate::rcore::meta::MDF_FULL_SYNC, 0);
        }
        if let Err(e) = self.md_writeback(true) {
            self.disk.store(DETACHED, Ordering::Release);
            self.uuids.lock().consistent = true;
            pr_err!("{}: attach: the disk still fails (metadata write: error {}): still detached\n", name,
                e.to_errno());
            return Err(EIO);
        }
        pr_info!("{}: attach: pulling {} KiB back from the peer\n", name, self.stale.lock().weight_sectors() / 2);
        self.link_changed.notify_all();
        Ok(())
    }

    /// Resync thread, attaching: pulls the next stale run over connection `generation`.
    /// Returns false when there is nothing left to do now.
    pub(crate) fn pull_step(&self, generation: u64) -> bool {
        if self.disk() != ATTACHING {
            return false;
        }
        let next = {
            let st = self.stale.lock();
            st.next_dirty(0).map(|r| {
                let (start, end) = st.run_to_sectors(r);
                (start, (end - start).min(u64::from(crate::device::MAX_IO_SECTORS)))
            })
        };
        let Some((sector, sectors)) = next else {
            // Writes submitted while detached mark their ranges when they complete.
            if self.diskless_inflight.load(Ordering::Acquire) == 0 {
                self.attached();
            }
            return false;
        };
        let slot = self.slot_acquire(sector, sectors);
        let ok = self.pull_run(generation, sector, sectors as u32);
        if ok {
            let _ = self.stale.lock().clear_range(sector, sectors);
            self.stats.resynced.fetch_add(sectors, Ordering::Relaxed);
        }
        self.slot_release(slot);
        ok
    }

    /// Forwards a read of one run, waits for its data and writes it to our disk.
    fn pull_run(&self, generation: u64, sector: u64, sectors: u32) -> bool {
        {
            let mut c = self.conn.lock();
            if c.generation != generation || !c.sending() {
                return false;
            }
            c.pulled = None;
            if crate::bindings::noio(|| c.read_queue.reserve(1, GFP_KERNEL)).is_err()
                || c.read_queue.push_within_capacity(PeerRead::Pull { sector, sectors }).is_err() {
                return false;
            }
        }
        self.work.notify_one();
        let mut buf = {
            let mut c = self.conn.lock();
            loop {
                match c.pulled.take() {
                    Some(true) => break c.pull_buf.take(),
                    Some(false) => {
                        drop(c);
                        self.detach("the peer could not read a region to pull back");
                        return false;
                    }
                    None if c.stopping || c.generation != generation => return false,
                    None => {
                        let _ = self.resync_cv.wait_interruptible_timeout(&mut c,
                            kernel::time::msecs_to_jiffies(200));
                    }
                }
            }
        };
        let Some(b) = buf.as_mut() else { return false };
        let len = (sectors as usize) << wire::SECTOR_SHIFT;
        let res = self.backing.write_sync(sector, b, 0..len, false, true);
        self.conn.lock().pull_buf = buf;
        if let Err(e) = res {
            self.detach("a write of data pulled back from the peer failed");
            pr_err!("{}: attach: write of {} sectors at {} failed: error {}\n", &*self.cfg.name, sectors, sector,
                e.to_errno());
            return false;
        }
        true
    }

    /// Nothing is stale any more: the disk is up to date and used again.
    fn attached(&self) {
        if self.disk.compare_exchange(ATTACHING, ATTACHED, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        {
            let mut g = self.uuids.lock();
            g.consistent = true;
            g.dirty = true;
        }
        if let Some(md) = (*self.md.lock()).as_mut() {
            md.set_flags(0, crate::rcore::meta::MDF_FULL_SYNC);
        }
        let res = self.md_writeback(true);
        self.conn.lock().pull_buf = None;
        self.detach_rotated.store(false, Ordering::Release);
        match res {
            Ok(()) => pr_info!("{}: attach: disk up to date and in use again\n", &*self.cfg.name),
            Err(e) => self.detach(if e == EIO { "metadata write" } else { "metadata" }),
        }
    }

    /// Sender: the `Detached` notice is due on this connection; the new generation both sides
    /// adopt (in memory here: the failed disk keeps its old superblock).
    pub(crate) fn detach_generation(&self, c: &Conn) -> Option<u64> {
        if !c.detach_ok || !self.detach_notice.swap(false, Ordering::AcqRel) {
            return None;
        }
        let mut g = self.uuids.lock();
        let ours = g.ours.as_mut()?;
        // One new generation per detach; later connections repeat it.
        if !self.detach_rotated.swap(true, Ordering::AcqRel) {
            ours.peer_detached(crate::bindings::random_u64() | 2);
        }
        let current = ours.current;
        g.shared = Some(current);
        Some(current)
    }

    /// Secondary: the primary detached its disk and starts generation `current` (written
    /// here at once: we hold the only up-to-date copy).
    pub(crate) fn peer_detached(&self, current: u64) -> core::result::Result<(), &'static str> {
        {
            let mut g = self.uuids.lock();
            if let Some(ours) = g.ours.as_mut() {
                if ours.current != current {
                    ours.peer_detached(current);
                    g.dirty = true;
                }
            }
        }
        pr_warn!("{}: the primary's disk failed: it reads and writes through this node now\n", &*self.cfg.name);
        self.md_writeback(false).map_err(|_| "cannot write the metadata")
    }
}

/// Sends a forwarded read's request (sender thread).
pub(crate) fn send_read(link: &dyn Transport, sector: u64, sectors: u32, stop: &dyn Fn() -> bool) -> Result {
    crate::transport::send_msg(link, &wire::Message::ResyncRequest { sector, sectors }, stop)
}

/// The secondary's answer to a forwarded read, on the data socket (`link`): the data from its
/// disk, or a negative reply.
pub(crate) fn serve_read(dev: &Device, link: &dyn Transport, sector: u64, sectors: u32, buf: &mut KVVec<u8>,
    stop: &dyn Fn() -> bool) -> core::result::Result<(), &'static str> {
    let len = (sectors as usize) << wire::SECTOR_SHIFT;
    if dev.inconsistent() || dev.bitmap.lock().test_range(sector, u64::from(sectors)).unwrap_or(true) {
        // We may lack it ourselves (a sync target).
        return crate::transport::send_msg(link, &wire::Message::ResyncNegative { sector, sectors }, stop)
            .map_err(|_| "cannot send a read reply");
    }
    let msg = match dev.backing.read_sync(sector, buf, 0..len) {
        Ok(()) => wire::Message::ResyncReply { sector, sectors, data: buf.get(..len).unwrap_or(&[]) },
        Err(e) => {
            pr_err!("{}: read of {} sectors at {} for the primary failed: error {}\n", &*dev.cfg.name, sectors,
                sector, e.to_errno());
            wire::Message::ResyncNegative { sector, sectors }
        }
    };
    crate::transport::send_msg(link, &msg, stop).map_err(|_| "cannot send a read reply")
}

/// Body of the primary's `rmirror<N>_reply` thread: receives the secondary's answers to
/// forwarded reads on the data socket of each connection, in the order of the requests, and
/// completes the reads with them. Anything else on that socket ends the connection.
pub(crate) fn replies(dev: &Arc<Device>) {
    // Allocated at the first reply: only a detached disk needs it.
    let mut buf = crate::conn::LazyBuf::new(crate::transport::max_frame(MAX_IO_BYTES));
    let mut served = 0;
    while let Some((data, _meta, generation)) = dev.wait_data(served) {
        served = generation;
        let why = serve_replies(dev, &*data, generation, &mut buf);
        dev.connection_lost(generation, why);
    }
}

/// Receives read replies on `data` until connection `generation` ends; returns why it ended.
fn serve_replies(dev: &Device, data: &dyn Transport, generation: u64, buf: &mut crate::conn::LazyBuf)
    -> &'static str {
    let lim = wire::Limits { dev_sectors: dev.cfg.sectors, max_payload: MAX_IO_BYTES };
    let stop = || !dev.is_current(generation);
    let mut head = [0u8; wire::PREAMBLE_LEN];
    loop {
        // Nothing comes on this socket unless reads are forwarded: the buffer is needed once a
        // frame's preamble is in.
        if let Err(e) = data.recv_exact(&mut head, &stop) {
            return crate::conn::io_reason(e);
        }
        let Some(buf) = buf.get(dev) else { return "no memory for a read reply" };
        let r = match crate::transport::recv_msg_after(data, &head, buf, &lim, &stop) {
            Err(RecvError::Protocol(e)) => Err(e.as_str()),
            Err(RecvError::Io(e)) => Err(crate::conn::io_reason(e)),
            Ok(wire::Message::ResyncReply { sector, sectors, data }) => {
                dev.read_reply(generation, sector, sectors, Some(data))
            }
            Ok(wire::Message::ResyncNegative { sector, sectors }) => dev.read_reply(generation, sector, sectors, None),
            Ok(wire::Message::Disconnect { .. }) => Err("the peer disconnected"),
            Ok(_) => Err("unexpected message on the data socket"),
        };
        if let Err(why) = r {
            return why;
        }
    }
}
