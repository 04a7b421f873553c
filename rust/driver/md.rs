// SPDX-License-Identifier: GPL-2.0
//! On-disk metadata (`meta=internal` or `meta=<device>`): the superblock is read and checked
//! when the device is created, the fracture bitmap is loaded from it, and changed bitmap pages
//! are written back by a per-device thread and at removal.
//!
//! The format and its rules are the core's (`rcore::meta`, `Documentation/ondisk-format.rst`);
//! this module only does the I/O. Metadata is never created here: `rmirrorctl create-md`
//! writes it, and a device whose metadata is missing, of another version, inconsistent, of the
//! wrong size or with a bad checksum is refused with the reason and the core's errno
//! (`meta::Error::errno`), before anything is written.
//!
//! Writeback (DRBD writes its bitmap lazily too): bits change only while the peer lacks data
//! (marked) or a resync progresses (cleared). The `rmirror<N>_md` thread writes the pages marked
//! dirty every [`WRITEBACK_MS`], so a bitmap survives a disconnect followed by a clean removal
//! or a later crash; writes of the last [`WRITEBACK_MS`] before a crash are in extents of the
//! activity log, whose transactions the same thread writes (see `actlog`). Removal writes every
//! dirty page and then the superblock with a flush and FUA, after the last write completed.

use crate::bindings::bdev::BackingDev;
use crate::device::Device;
use crate::rcore::meta::{self, Superblock, SUPERBLOCK_SIZE};
use crate::rcore::table;
use crate::resync::Fracture;
use core::sync::atomic::{AtomicBool, Ordering::Relaxed};
use kernel::prelude::*;
use kernel::str::{CStr, CString};
use kernel::sync::Arc;

/// Period of the bitmap writeback, in ms.
pub(crate) const WRITEBACK_MS: u32 = 100;

/// A device's metadata: where it lives and the superblock as last read or written.
pub(crate) struct Md {
    /// The separate metadata device (`None`: internal, on the backing device).
    ext: Option<BackingDev>,
    /// The superblock (the layout inside never changes after create).
    sb: Superblock,
    /// A 4 KiB I/O buffer (a heap buffer: the only memory the block layer takes by address).
    buf: KVVec<u8>,
    /// The activity log transaction being written (see `actlog`), a 4 KiB heap buffer too.
    al_buf: KVVec<u8>,
    /// A bitmap write failed and has not succeeded since (the error is logged once).
    failing: AtomicBool,
}

/// Logs why metadata was refused and returns the errno for it.
fn refuse(name: &CStr, path: &CStr, e: meta::Error) -> Error {
    pr_err!("{}: metadata on {}: {}\n", name, path, e.as_str());
    Error::from_errno(-e.errno())
}

impl Md {
    /// Opens the metadata the table names (`Ok(None)` for `meta=core`), checks it against the
    /// devices and the table's length, and returns it.
    pub(crate) fn open(name: &CStr, backing: &BackingDev, backing_path: &CStr, sectors: u64,
        which: table::Meta<'_>) -> Result<Option<Md>> {
        let (ext, path) = match which {
            table::Meta::Core => return Ok(None),
            table::Meta::Internal => (None, None),
            table::Meta::External(p) => {
                let path = CString::try_from_fmt(fmt!("{}", p))?;
                let dev = BackingDev::open(&path).inspect_err(|e| {
                    pr_err!("{}: cannot open metadata device {}: error {}\n", name, &*path, e.to_errno());
                })?;
                (Some(dev), Some(path))
            }
        };
        let md_path: &CStr = path.as_deref().unwrap_or(backing_path);
        let mut buf = KVVec::from_elem(0u8, SUPERBLOCK_SIZE, GFP_KERNEL)?;
        let data_sectors = backing.nr_sectors();
        let md_sectors = ext.as_ref().map_or(data_sectors, |d| d.nr_sectors());
        let sb_offset = match ext {
            Some(_) => 0,
            None => meta::internal_sb_offset(md_sectors)
                .ok_or_else(|| refuse(name, md_path, meta::Error::DeviceTooSmall))?,
        };
        ext.as_ref().unwrap_or(backing).read_sync(sb_offset, &mut buf, 0..SUPERBLOCK_SIZE).inspect_err(|e| {
            pr_err!("{}: cannot read metadata from {}: error {}\n", name, md_path, e.to_errno());
        })?;
        let block: &[u8; SUPERBLOCK_SIZE] = buf.as_slice().try_into().map_err(|_| EINVAL)?;
        let sb = Superblock::decode(block).map_err(|e| refuse(name, md_path, e))?;
        let kind = if ext.is_some() { meta::Kind::External } else { meta::Kind::Internal };
        if sb.layout.kind != kind || sb.layout.sb_offset != sb_offset {
            let found = match sb.layout.kind {
                meta::Kind::Internal => "internal",
                meta::Kind::External => "external",
            };
            let want = if ext.is_some() { "external" } else { "internal" };
            pr_err!("{}: metadata on {} is {} metadata, not {} as the table says\n", name, md_path, found, want);
            return Err(Error::from_errno(-meta::Error::Invalid.errno()));
        }
        sb.layout.check_devices(data_sectors, md_sectors).map_err(|e| refuse(name, md_path, e))?;
        if sb.layout.region_shift != crate::resync::REGION_SHIFT {
            let bytes = 1u64 << sb.layout.region_shift;
            pr_err!("{}: metadata on {}: bitmap regions of {} bytes are not supported yet (only 4096)\n",
                name, md_path, bytes);
            return Err(Error::from_errno(-meta::Error::UnsupportedFeatures.errno()));
        }
        if sectors > sb.layout.data_sectors {
            pr_err!("{}: table: length {} exceeds the data area of the metadata ({} sectors)\n",
                name, sectors, sb.layout.data_sectors);
            return Err(Error::from_errno(-meta::Error::SizeChanged.errno()));
        }
        pr_info!("{}: metadata on {}: {} data sectors, bitmap at sector {}\n", name, md_path,
            sb.layout.data_sectors, sb.layout.bm_offset);
        let al_buf = KVVec::from_elem(0u8, crate::rcore::al::SLOT_SIZE, GFP_KERNEL)?;
        Ok(Some(Md { ext, sb, buf, al_buf, failing: AtomicBool::new(false) }))
    }

    /// The generations the superblock records.
    pub(crate) fn gen(&self) -> crate::uuids::Gen {
        let u = &self.sb.uuids;
        crate::uuids::Gen {
            ours: Some(crate::rcore::state::resync::Uuids {
                current: u.current,
                bitmap: u.bitmap,
                history: u.history,
                flags: 0,
            }),
            peer: None,
            peer_in_sync: None,
            written_apart: u.bitmap != 0,
            shared: None,
            consistent: self.sb.has(meta::MDF_CONSISTENT),
            dirty: false,
        }
    }

    /// The superblock as last read or written.
    pub(crate) fn sb(&self) -> &Superblock {
        &self.sb
    }

    /// Sets or clears superblock flags (written with the next superblock).
    pub(crate) fn set_flags(&mut self, set: u64, clear: u64) {
        self.sb.flags = (self.sb.flags | set) & !clear;
    }

    /// Records `role` in the flags (written with the next superblock): a primary's activity log
    /// is in use (not clean); a secondary does not use it, and what it named is in the bitmap.
    pub(crate) fn set_role_flags(&mut self, role: crate::device::Role) {
        use crate::device::Role;
        match role {
            Role::Primary => self.set_flags(meta::MDF_PRIMARY_IND, meta::MDF_AL_CLEAN),
            Role::Secondary => self.set_flags(meta::MDF_AL_CLEAN, meta::MDF_PRIMARY_IND),
        }
    }

    /// Records a new number of active extents (written with the next superblock).
    pub(crate) fn set_al_extents(&mut self, n: u32) {
        self.sb.al_nr_extents = n;
    }

    /// The activity log's transaction buffer.
    pub(crate) fn al_block(&mut self) -> Result<&mut [u8; crate::rcore::al::SLOT_SIZE]> {
        <&mut [u8; crate::rcore::al::SLOT_SIZE]>::try_from(self.al_buf.as_mut_slice()).map_err(|_| EINVAL)
    }

    /// Reads the whole activity log ring into `ring` (its size).
    pub(crate) fn read_al_ring(&self, backing: &BackingDev, ring: &mut KVVec<u8>) -> Result {
        let len = ring.len();
        self.dev(backing).read_sync(self.sb.layout.al_offset, ring, 0..len)
    }

    /// Writes the transaction in the buffer to ring slot `slot`, with a flush before (the
    /// bitmap pages it relies on) and FUA (on stable storage when this returns).
    pub(crate) fn write_al_slot(&self, backing: &BackingDev, slot: u32) -> Result {
        let sector = self.sb.layout.al_slot_sector(slot);
        self.dev(backing).write_sync(sector, &self.al_buf, 0..crate::rcore::al::SLOT_SIZE, true, true)
    }

    /// The device holding the metadata.
    fn dev<'a>(&'a self, backing: &'a BackingDev) -> &'a BackingDev {
        self.ext.as_ref().unwrap_or(backing)
    }

    /// Loads the on-disk bitmap into `bm` (which covers the table's length); returns the number
    /// of regions marked.
    pub(crate) fn load_bitmap(&mut self, backing: &BackingDev, bm: &mut Fracture) -> Result<u64> {
        for page in 0..bm.nr_pages() {
            let sector = self.sb.layout.bm_page_sector(page);
            let dev = self.ext.as_ref().unwrap_or(backing);
            dev.read_sync(sector, &mut self.buf, 0..SUPERBLOCK_SIZE)?;
            let block: &[u8; SUPERBLOCK_SIZE] = self.buf.as_slice().try_into().map_err(|_| EINVAL)?;
            bm.load_page(page, block).map_err(|_| EINVAL)?;
        }
        Ok(bm.weight())
    }
}

impl Device {
    /// Writes every bitmap page marked dirty (process context, under [`Device::md`]); then, if
    /// `superblock`, the superblock with a flush before and FUA. Pages that fail stay dirty for
    /// the next round.
    pub(crate) fn md_writeback(&self, superblock: bool) -> Result {
        let mut guard = self.md.lock();
        let Some(md) = (*guard).as_mut() else { return Ok(()) };
        self.md_writeback_locked(md, superblock)
    }

    /// [`Device::md_writeback`] with the metadata lock held.
    pub(crate) fn md_writeback_locked(&self, md: &mut Md, superblock: bool) -> Result {
        if self.disk() == crate::detach::DETACHED {
            // Nothing is written to a failed disk; what changed stays dirty for the attach.
            return Ok(());
        }
        // Generations or flags changed since the last write: the superblock goes too.
        let changed = {
            let mut g = self.uuids.lock();
            let changed = core::mem::replace(&mut g.dirty, false);
            if let Some(u) = g.ours {
                md.sb.uuids = meta::Uuids { current: u.current, bitmap: u.bitmap, history: u.history };
            }
            if g.consistent {
                md.sb.flags |= meta::MDF_CONSISTENT;
            } else {
                md.sb.flags &= !meta::MDF_CONSISTENT;
            }
            changed
        };
        let superblock = superblock || changed;
        let mut from = 0;
        let mut res = Ok(());
        let mut wrote = false;
        loop {
            let page = {
                let mut bm = self.bitmap.lock();
                let Some(page) = bm.next_dirty_page(from) else { break };
                let Ok(block) = <&mut [u8; SUPERBLOCK_SIZE]>::try_from(md.buf.as_mut_slice()) else {
                    res = Err(EINVAL);
                    break;
                };
                // Clears the page's dirty mark: a change after this marks it again.
                let _ = bm.encode_page(page, block);
                page
            };
            from = page + 1;
            let sector = md.sb.layout.bm_page_sector(page);
            if let Err(e) = md.dev(&self.backing).write_sync(sector, &md.buf, 0..SUPERBLOCK_SIZE, false, false) {
                let _ = self.bitmap.lock().mark_page_dirty(page);
                res = Err(e);
                break;
            }
            wrote = true;
        }
        if res.is_ok() && superblock {
            res = match <&mut [u8; SUPERBLOCK_SIZE]>::try_from(md.buf.as_mut_slice()) {
                Ok(block) => md.sb.encode(block).map_err(|_| EINVAL),
                Err(_) => Err(EINVAL),
            };
            if res.is_ok() {
                res = md.dev(&self.backing).write_sync(md.sb.layout.sb_offset, &md.buf, 0..SUPERBLOCK_SIZE, true, true);
            }
        } else if res.is_ok() && wrote {
            // The pages reach stable storage before anything that relies on them.
            res = md.dev(&self.backing).flush();
        }
        if res.is_err() && changed {
            self.uuids.lock().dirty = true;
        }
        match &res {
            Err(e) if !md.failing.swap(true, Relaxed) => {
                pr_err!("{}: cannot write metadata: error {} (retrying)\n", &*self.cfg.name, e.to_errno());
            }
            Ok(()) if md.failing.swap(false, Relaxed) => {
                pr_info!("{}: metadata written again\n", &*self.cfg.name);
            }
            _ => {}
        }
        res
    }

    /// Whether the device keeps metadata on disk.
    pub(crate) fn has_md(&self) -> bool {
        self.md.lock().is_some()
    }
}

/// Body of the `rmirror<N>_md` thread: activity log transactions as soon as writes wait for
/// them, and the bitmap writeback every [`WRITEBACK_MS`].
pub(crate) fn run(dev: &Arc<Device>) {
    let mut last = 0u64;
    while !dev.stopping() {
        while dev.al_due() {
            if dev.al_transaction().is_err() {
                break;
            }
        }
        let now = dev.now_ms();
        if now.saturating_sub(last) >= u64::from(WRITEBACK_MS) {
            last = now;
            if dev.bitmap.lock().dirty_page_count() > 0 || dev.uuids.lock().dirty {
                let _ = dev.md_writeback(false);
            }
        }
        let left = u64::from(WRITEBACK_MS).saturating_sub(dev.now_ms().saturating_sub(last)).max(1);
        let mut g = dev.al.lock();
        if !(*g).as_ref().is_some_and(|a| dev.al_due_in(a) || a.stopped) {
            let _ = dev.md_work.wait_interruptible_timeout(&mut g, kernel::time::msecs_to_jiffies(left as u32));
        }
    }
}
