// SPDX-License-Identifier: GPL-2.0
//! The fracture bitmap and resync (seed 001).
//!
//! Every write the peer may not hold durably marks its regions (4 KiB each) in the device's
//! fracture bitmap: written while not replicating, queued or in flight when a connection was
//! lost, or negatively acked. Once the connection is trusted again (after probation), the
//! primary, the sync source, sends its bitmap to the secondary (RLE chunks, so the target knows
//! it is inconsistent and how much is left) and then copies exactly the marked regions: for
//! each run (at most 1 MiB at a time) it takes the run's in-flight slot, reads its own disk
//! and sends a ResyncReply on the data socket; the target writes it with FUA and answers
//! ResyncAck on the meta socket; only then are the bits cleared and the slot freed.
//!
//! Holding the slot is what keeps new application writes safe during resync: a write that
//! overlaps the run waits for the slot, so it reaches the peer after the resync data, never
//! before, and older resync data cannot overwrite it (DRBD orders the two the same way, with
//! its resync LRU and conflict detection). A write that overlaps a marked region that is not
//! being copied is replicated normally; its region stays marked and is copied again later,
//! which is harmless. A lost connection leaves the bits set: the next connection resumes from
//! the bitmap. The copy rate is capped by the `resync_rate` tunable (KiB/s, 0 = no cap) with
//! the core's token bucket.

use crate::conn::MAX_IO_BYTES;
use crate::device::{Device, PeerBitmap, Role, MAX_IO_SECTORS};
use crate::rcore::bitmap::{self, Bitmap};
use crate::rcore::state::resync::TokenBucket;
use crate::rcore::wire::{self, Message};
use crate::transport::{send_msg, Transport};
use core::sync::atomic::Ordering::Relaxed;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Region size of the fracture bitmap (log2 bytes): 4 KiB, like DRBD.
pub(crate) const REGION_SHIFT: u32 = bitmap::DEFAULT_REGION_SHIFT;
/// Largest RLE payload of one Bitmap message.
pub(crate) const RLE_CHUNK: usize = 4096;

/// The device's fracture bitmap, in memory.
pub(crate) type Fracture = Bitmap<KVVec<u64>>;

/// A new, all-clean bitmap for `sectors`.
pub(crate) fn new_bitmap(sectors: u64) -> Result<Fracture> {
    let words = Fracture::storage_words(sectors, REGION_SHIFT).map_err(|_| EINVAL)?;
    let store = KVVec::from_elem(0u64, words, GFP_KERNEL)?;
    Fracture::new(store, sectors, REGION_SHIFT).map_err(|_| EINVAL)
}

/// Resync chunks in flight at once (each holds an in-flight slot until its ack).
pub(crate) const WINDOW: usize = 16;

/// A resync chunk sent and awaiting its ResyncAck.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    generation: u64,
    sector: u64,
    sectors: u32,
    slot: usize,
    acked: bool,
}

/// Resync progress, shared by the resync thread, the meta thread and status readers (under
/// [`Device::resync`]).
#[derive(Default)]
pub(crate) struct Progress {
    /// Chunks in flight (at most [`WINDOW`]).
    pub(crate) pending: KVec<Pending>,
    /// The connection whose bitmap was sent to the peer (0: none yet).
    pub(crate) announced: u64,
    /// When the current pass started (ms) and the sectors copied in it, for the ETA.
    pub(crate) started_ms: u64,
    pub(crate) copied: u64,
}

/// Replication state as DRBD users know it.
pub(crate) fn repl_state(dev: &Device) -> &'static str {
    let replicating = dev.conn.lock().replicating();
    let dirty = dev.bitmap.lock().weight() > 0;
    match (dev.role(), replicating, dirty) {
        (_, false, _) => "off",
        (Role::Primary, true, true) => "sync_source",
        (Role::Secondary, true, true) => "sync_target",
        (_, true, false) => "established",
    }
}

/// This node's disk state: the primary's is up to date; the secondary's is inconsistent while
/// it is a sync target, up to date while replicating with nothing to copy, and merely
/// "consistent" (a point-in-time copy, maybe old) otherwise.
pub(crate) fn disk_state(dev: &Device) -> &'static str {
    if dev.role() == Role::Primary {
        return match dev.disk() {
            crate::detach::DETACHED => "detached",
            crate::detach::ATTACHING => "attaching",
            _ => "up_to_date",
        };
    }
    let told = {
        let c = dev.conn.lock();
        c.meta.is_some() && dev.resync.lock().announced == c.generation
    };
    match (dev.bitmap.lock().weight() > 0 || dev.inconsistent(), told) {
        (true, _) => "inconsistent",
        (false, true) => "up_to_date",
        (false, false) => "consistent",
    }
}

/// Estimated seconds to the end of the resync (0 when none runs or nothing is known yet).
pub(crate) fn eta_s(dev: &Device) -> u64 {
    let left = dev.bitmap.lock().weight_sectors();
    let p = dev.resync.lock();
    let elapsed = dev.now_ms().saturating_sub(p.started_ms);
    if left == 0 || p.copied == 0 || elapsed == 0 {
        return 0;
    }
    // sectors per second so far
    let rate = p.copied.saturating_mul(1000) / elapsed;
    if rate == 0 {
        return 0;
    }
    left / rate
}

impl Device {
    /// Marks the `len` bytes at `sector` out of sync (any context; a partial sector counts).
    pub(crate) fn mark_out_of_sync(&self, sector: u64, len: u32) {
        if len > 0 {
            let _ = self.bitmap.lock().set_range(sector, u64::from(len.div_ceil(512)));
            self.writing_without_peer();
        }
    }

    /// Secondary: resync data for `sector..+sectors` is on disk. Returns whether that emptied
    /// the bitmap.
    pub(crate) fn resync_written(&self, sector: u64, sectors: u32) -> bool {
        let left = {
            let mut bm = self.bitmap.lock();
            if bm.weight() == 0 {
                return false;
            }
            let _ = bm.clear_range(sector, u64::from(sectors));
            bm.weight()
        };
        self.stats.resynced.fetch_add(u64::from(sectors), Relaxed);
        if left == 0 {
            pr_info!("{}: resync finished: up to date\n", &*self.cfg.name);
        }
        left == 0
    }

    /// Sectors marked out of sync.
    pub(crate) fn out_of_sync_sectors(&self) -> u64 {
        self.bitmap.lock().weight_sectors()
    }

    /// The peer acknowledged the resync chunk `sector..+sectors` of connection `generation`.
    pub(crate) fn resync_acked(&self, generation: u64, sector: u64, sectors: u32) -> core::result::Result<(), &'static str> {
        let mut p = self.resync.lock();
        let c = p.pending.iter_mut()
            .find(|c| c.generation == generation && c.sector == sector && c.sectors == sectors && !c.acked)
            .ok_or("resync ack for a range not being copied")?;
        c.acked = true;
        drop(p);
        self.resync_cv.notify_all();
        Ok(())
    }

    /// Waits until there is resync work on a replicating connection; returns it with its
    /// data socket. `None` when the device stops.
    fn wait_resync(&self) -> Option<(Arc<dyn Transport>, u64)> {
        let mut c = self.conn.lock();
        loop {
            if c.stopping {
                return None;
            }
            // A replay of the outage queue goes first: resync data is newer than the queued
            // writes, which must not overwrite it.
            // Every connection gets the bitmap once (the target learns whether it is up to
            // date), then the marked regions.
            let unannounced = self.resync.lock().announced != c.generation;
            // The secondary's bitmap is merged into ours first.
            let merged = c.peer_bitmap != PeerBitmap::Awaited;
            // A detached disk is not read; an attaching one pulls its stale regions first.
            let disk = self.disk();
            let pull = disk == crate::detach::ATTACHING && c.detach_ok;
            let push = disk == crate::detach::ATTACHED && merged && (unannounced || self.bitmap.lock().weight() > 0);
            if c.sending() && (pull || push) {
                if let Some(l) = &c.link {
                    return Some((l.clone(), c.generation));
                }
            }
            let _ = self.link_changed.wait_interruptible_timeout(&mut c, kernel::time::msecs_to_jiffies(200));
        }
    }

    /// Waits until a chunk in flight is acked or the connection ends (or a tick passes).
    fn wait_acks(&self, generation: u64) {
        // Lock order: `conn` before `resync`, never the reverse.
        if !self.is_current(generation) {
            return;
        }
        let mut p = self.resync.lock();
        if !p.pending.iter().any(|c| c.acked) {
            let _ = self.resync_cv.wait_interruptible_timeout(&mut p, kernel::time::msecs_to_jiffies(100));
        }
    }

    /// Retires the chunks in flight: acked ones are cleared from the bitmap; those of a lost
    /// connection (any but `current`) are dropped, their bits staying set. Every retired chunk
    /// frees its slot.
    fn retire(&self, current: Option<u64>) {
        let live = current.filter(|g| self.is_current(*g));
        loop {
            let c = {
                let mut p = self.resync.lock();
                let Some(i) = p.pending.iter().position(|c| c.acked || Some(c.generation) != live) else { return };
                let Ok(c) = p.pending.remove(i) else { return };
                c
            };
            if c.acked {
                let n = u64::from(c.sectors);
                let _ = self.bitmap.lock().clear_range(c.sector, n);
                self.stats.resynced.fetch_add(n, Relaxed);
                self.resync.lock().copied += n;
            }
            self.slot_release(c.slot);
        }
    }

    /// Sends the whole bitmap to the peer on `link` as RLE chunks.
    pub(crate) fn send_bitmap(&self, link: &dyn Transport, generation: u64, rle: &mut [u8]) -> Result {
        let stop = || !self.is_current(generation);
        let mut offset = 0u64;
        loop {
            let (chunk, nr_bits) = {
                let bm = self.bitmap.lock();
                let max = u32::try_from(bm.nr_bits() - offset).unwrap_or(u32::MAX);
                (bm.rle_encode(offset, max, rle).map_err(|_| EINVAL)?, bm.nr_bits())
            };
            let next = offset + u64::from(chunk.bits);
            let last = next >= nr_bits;
            send_msg(link, &Message::Bitmap { offset, bits: chunk.bits, last, rle: &rle[..chunk.len] }, &stop)?;
            if last || chunk.bits == 0 {
                return Ok(());
            }
            offset = next;
        }
    }
}

/// The primary's resync thread.
pub(crate) fn run(dev: &Arc<Device>) {
    // Allocated at the first chunk: most connections resync nothing.
    let mut buf = crate::conn::LazyBuf::new(MAX_IO_BYTES as usize);
    if dev.resync.lock().pending.reserve(WINDOW, GFP_KERNEL).is_err() {
        pr_err!("{}: no memory for the resync window\n", &*dev.cfg.name);
        return;
    }
    let mut rle = [0u8; RLE_CHUNK];
    let mut cursor = 0u64;
    let mut bucket: Option<(u32, TokenBucket)> = None;
    while let Some((link, generation)) = dev.wait_resync() {
        // Chunks of an older connection can never be acked: drop them first.
        dev.retire(Some(generation));
        if dev.disk() == crate::detach::ATTACHING {
            while dev.pull_step(generation) {}
            if dev.disk() == crate::detach::ATTACHING {
                crate::bindings::thread::sleep_ms(100);
            }
            continue;
        }
        if dev.resync.lock().announced != generation {
            cursor = 0;
            let left = dev.out_of_sync_sectors();
            // Our generations first: they may have changed since the handshake.
            if dev.has_uuids() {
                let stop = || !dev.is_current(generation);
                if send_msg(&*link, &Message::Uuids(dev.share_uuids()), &stop).is_err() {
                    continue;
                }
            }
            if dev.send_bitmap(&*link, generation, &mut rle).is_err() {
                continue; // the connection is going away
            }
            {
                let mut p = dev.resync.lock();
                p.announced = generation;
                p.started_ms = dev.now_ms();
                p.copied = 0;
            }
            if left > 0 {
                pr_info!("{}: resync started: {} KiB out of sync\n", &*dev.cfg.name, left / 2);
            }
        }
        // Fill the window with the next runs of marked regions after the cursor.
        loop {
            let room = dev.resync.lock().pending.len() < WINDOW;
            if !room || !dev.is_current(generation) {
                break;
            }
            let next = {
                let bm = dev.bitmap.lock();
                bm.next_dirty(cursor).map(|r| {
                    let (start, end) = bm.run_to_sectors(r);
                    (start, (end - start).min(u64::from(MAX_IO_SECTORS)))
                })
            };
            let Some((sector, sectors)) = next else {
                // End of the bitmap: start over once every chunk in flight is retired.
                if dev.resync.lock().pending.is_empty() {
                    cursor = 0;
                }
                break;
            };
            // A chunk ends on a region boundary (sectors <= 256, regions of 8 sectors) or at the
            // end of the device; the cursor moves past it.
            cursor = (sector + sectors).div_ceil(1 << (REGION_SHIFT - wire::SECTOR_SHIFT));
            throttle(dev, &mut bucket, sectors << wire::SECTOR_SHIFT);
            let slot = dev.slot_acquire(sector, sectors);
            match send_chunk(dev, &*link, generation, sector, sectors as u32, slot, &mut buf) {
                Sent::Yes => {}
                // Not in the window: the slot is ours to free.
                Sent::NotQueued => {
                    dev.slot_release(slot);
                    break;
                }
                // In the window (retired with the connection, which frees the slot).
                Sent::LinkFailed => {
                    dev.connection_lost(generation, "send failed");
                    break;
                }
            }
        }
        dev.wait_acks(generation);
        dev.retire(Some(generation));
        if dev.out_of_sync_sectors() == 0 && dev.resync.lock().pending.is_empty() {
            dev.source_check_finished(generation);
            let mut p = dev.resync.lock();
            if p.copied == 0 {
                continue;
            }
            pr_info!("{}: resync finished: {} KiB copied in {} ms\n", &*dev.cfg.name, p.copied / 2,
                dev.now_ms().saturating_sub(p.started_ms));
            p.copied = 0;
        }
    }
    dev.retire(None);
}

/// What became of a chunk.
enum Sent {
    /// In the window, sent.
    Yes,
    /// Not in the window (read failed, or no room): the caller frees its slot.
    NotQueued,
    /// In the window, but the send failed: the connection must go.
    LinkFailed,
}

/// Reads one chunk and sends it (the chunk is in the window, holding `slot`, once pushed).
fn send_chunk(dev: &Device, link: &dyn Transport, generation: u64, sector: u64, sectors: u32, slot: usize,
    buf: &mut crate::conn::LazyBuf) -> Sent {
    let len = (sectors as usize) << wire::SECTOR_SHIFT;
    let Some(buf) = buf.get(dev) else {
        crate::bindings::thread::sleep_ms(1000);
        return Sent::NotQueued;
    };
    if let Err(e) = dev.backing.read_sync(sector, buf, 0..len) {
        pr_err!("{}: resync read of {} sectors at {} failed: error {}\n", &*dev.cfg.name, sectors, sector,
            e.to_errno());
        crate::bindings::thread::sleep_ms(1000);
        return Sent::NotQueued;
    }
    let pending = Pending { generation, sector, sectors, slot, acked: false };
    if dev.resync.lock().pending.push_within_capacity(pending).is_err() {
        return Sent::NotQueued;
    }
    let data = buf.get(..len).unwrap_or(&[]);
    let stop = || !dev.is_current(generation);
    match send_msg(link, &Message::ResyncReply { sector, sectors, data }, &stop) {
        Ok(()) => Sent::Yes,
        Err(_) => Sent::LinkFailed,
    }
}

/// Waits until the `resync_rate` cap allows `bytes` more.
fn throttle(dev: &Device, bucket: &mut Option<(u32, TokenBucket)>, bytes: u64) {
    let rate = dev.resync_rate.load(Relaxed);
    if rate == 0 {
        *bucket = None;
        return;
    }
    if bucket.as_ref().is_none_or(|(r, _)| *r != rate) {
        let bytes_s = u64::from(rate) * 1024;
        *bucket = TokenBucket::new(bytes_s, bytes, dev.now_ms()).ok().map(|b| (rate, b));
    }
    let Some((_, b)) = bucket else { return };
    let mut need = bytes;
    while need > 0 && !dev.stopping() {
        need -= b.grant(dev.now_ms(), need);
        if need > 0 {
            crate::bindings::thread::sleep_ms(10);
        }
    }
}
