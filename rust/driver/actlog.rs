// SPDX-License-Identifier: GPL-2.0
//! The activity log (write-intent log, seed 001) on the primary: before a write lands in an
//! extent (4 MiB by default) that is not active, a transaction naming that extent is on stable
//! storage, so that after a crash of the primary only the extents the log names are resynced.
//!
//! The rules are the core's (`rcore::al`): which extents a write needs, the LRU of active
//! extents, what a transaction holds and how the ring is replayed. This module does the waiting
//! and the I/O:
//!
//! - [`Device::al_begin`], from the submitting thread: takes the write's references. If an
//!   extent is not committed yet, the write waits, and wakes the metadata thread (`md::run`),
//!   which writes the transaction ([`Device::al_transaction`]) for every activation queued so
//!   far: concurrent writes share one transaction (batching). A write thus waits for at most the
//!   transaction in flight when it arrived and the one carrying its extent. (The submitting
//!   thread cannot write it itself: a bio-based driver's bios submitted from `submit_bio` are
//!   only dispatched after it returns, as DRBD's submitter work queue knows.)
//! - [`Device::al_end`], from the request's completion (any context): drops them; an extent
//!   whose last write completed stays active until it is the least recently used one and its
//!   slot is needed (lazy retirement, as DRBD's `al-extents`).
//! - A transaction that retires extents first makes sure the bitmap on disk covers what the peer
//!   may lack in them: writes kept in the outage queue or in the transfer log (protocols A and B)
//!   are marked in the bitmap, and the dirty bitmap pages are written, before the transaction
//!   that forgets the extents.
//! - At creation ([`recover`]), the ring is replayed: if the superblock does not say the log was
//!   shut down cleanly (`MDF_AL_CLEAN`), every extent it names is marked out of sync (all of the
//!   device if the ring is damaged beyond one torn slot), and the bitmap is written before any
//!   new transaction may overwrite the ring.
//!
//! Only the primary uses the log (DRBD's secondary does not either while its peer has a disk):
//! a secondary's writes come from the primary, whose log covers them.

use crate::device::Device;
use crate::md::Md;
use crate::rcore::al::{self, Activation, Log, Slot};
use crate::rcore::meta;
use crate::resync::Fracture;
use kernel::prelude::*;
use kernel::time::{Instant, Monotonic};

/// Counters of the activity log (sysfs `activity_log`).
#[derive(Clone, Copy, Default)]
pub(crate) struct Stats {
    /// Writes that took references (every write with data).
    pub(crate) writes: u64,
    /// Writes that had to wait for a transaction (an extent not active or not on disk yet).
    pub(crate) waited: u64,
    /// Total time those writes waited, in microseconds.
    pub(crate) wait_us: u64,
    /// Transactions written.
    pub(crate) transactions: u64,
    /// Extents retired from the active set (least recently used first).
    pub(crate) retired: u64,
    /// Times a write found every extent in use and waited for one to become idle.
    pub(crate) busy: u64,
}

/// The activity log of a device (under [`Device::al`], taken from completions too).
pub(crate) struct Al {
    pub(crate) log: Log<KVVec<Slot>>,
    /// An `al_extents` change waits for the log to be idle; new writes wait meanwhile.
    resizing: bool,
    /// Transactions that failed: a write waiting for a transaction fails when this changes.
    failures: u64,
    /// After a failed transaction, `stats.waited` then: the next is tried only for a write
    /// that waits after the failure (`on_io_error=pass_on` keeps a failing disk in use, and
    /// what the transaction held stays queued), never in a loop.
    failed_waited: Option<u64>,
    /// The device is being removed: writes waiting for a transaction fail.
    pub(crate) stopped: bool,
    pub(crate) stats: Stats,
}

impl Al {
    /// A transaction is due: writes wait for one, none is in flight, and none failed since
    /// the last write began to wait (see `failed_waited`).
    pub(crate) fn due(&self) -> bool {
        self.log.needs_transaction() && self.failed_waited.is_none_or(|w| self.stats.waited != w)
    }
}

/// Most extents one transaction can retire.
const MAX_RETIRE: usize = al::UPDATES_PER_TRANSACTION;

/// What [`recover`] found, for the log line at creation.
pub(crate) struct Recovery {
    /// Extents the ring names (marked out of sync unless the log was clean).
    pub(crate) extents: u32,
    /// Sectors newly marked out of sync.
    pub(crate) marked_sectors: u64,
    /// The ring could not be trusted: the whole device was marked.
    pub(crate) damaged: bool,
    /// The superblock said the log was shut down cleanly (nothing was marked).
    pub(crate) clean: bool,
}

/// Slot storage for `n` active extents.
fn storage(n: u32) -> Result<KVVec<Slot>> {
    Ok(KVVec::from_elem(Slot::EMPTY, n as usize, GFP_KERNEL)?)
}

/// Replays the ring of `md` (at device creation, before the disk exists): marks what a crash
/// may have left unreplicated in `bm` (the data area is `sectors` long) and returns the log
/// to continue with.
pub(crate) fn recover(md: &mut Md, backing: &crate::bindings::bdev::BackingDev, bm: &mut Fracture, sectors: u64)
    -> Result<(Al, Recovery)> {
    let cfg = md.sb().al_config();
    let ring_bytes = cfg.ring_slots as usize * al::SLOT_SIZE;
    let mut ring = KVVec::from_elem(0u8, ring_bytes, GFP_KERNEL)?;
    md.read_al_ring(backing, &mut ring)?;
    // Scratch for any context size a transaction may carry (the size changes with al_extents).
    let mut scratch = storage(al::MAX_EXTENTS)?;
    let slots = ring.chunks_exact(al::SLOT_SIZE).filter_map(|c| <&[u8; al::SLOT_SIZE]>::try_from(c).ok());
    let rec = al::recover(cfg.device_uuid, cfg.extent_shift, slots, &mut scratch);
    let clean = md.sb().has(meta::MDF_AL_CLEAN);
    let before = bm.weight_sectors();
    let extents = u32::try_from(rec.extents().count()).unwrap_or(u32::MAX);
    if !clean {
        if rec.complete {
            for (s, n) in rec.sector_ranges(sectors) {
                let _ = bm.set_range(s, n);
            }
        } else {
            bm.set_all();
        }
    }
    let r = Recovery {
        extents,
        marked_sectors: bm.weight_sectors() - before,
        damaged: !rec.complete,
        clean,
    };
    let next_seq = rec.next_seq;
    drop(scratch);
    let log = Log::new(cfg, storage(cfg.nr_extents)?, next_seq).map_err(|e| {
        pr_err!("activity log: {}\n", e.as_str());
        EINVAL
    })?;
    Ok((Al { log, resizing: false, failures: 0, failed_waited: None, stopped: false, stats: Stats::default() }, r))
}

impl Device {
    /// Whether [`Device::al_begin`] would return without waiting for a transaction (the write
    /// may go now under `REQ_NOWAIT`): every extent it touches is active and committed.
    pub(crate) fn al_ready(&self, sector: u64, sectors: u64) -> bool {
        let g = self.al.lock();
        match (*g).as_ref() {
            None => true,
            Some(a) => !a.resizing && !a.stopped && a.log.is_committed(sector, sectors),
        }
    }

    /// Takes the activity log's references for a write of `sectors` at `sector` and waits until
    /// every extent it touches is active on disk (process context). `Ok(false)`: the device keeps
    /// no log (`meta=core`) or the write has no data; `Err`: the transaction it needed failed
    /// (nothing is held then).
    pub(crate) fn al_begin(&self, sector: u64, sectors: u64) -> Result<bool> {
        if sectors == 0 {
            return Ok(false);
        }
        let mut g = self.al.lock();
        loop {
            let Some(a) = (*g).as_mut() else { return Ok(false) };
            if a.stopped {
                return Err(EIO);
            }
            if a.resizing {
                self.al_cv.wait(&mut g);
                continue;
            }
            match a.log.begin_write(sector, sectors) {
                Ok(Activation::Active) => {
                    a.stats.writes += 1;
                    return Ok(true);
                }
                Ok(Activation::Wait) => {
                    a.stats.writes += 1;
                    a.stats.waited += 1;
                    break;
                }
                Err(al::Error::Busy) => {
                    a.stats.busy += 1;
                    self.al_cv.wait(&mut g);
                }
                Err(e) => {
                    drop(g);
                    pr_err!("{}: activity log: write of {} sectors at {}: {}\n", &*self.cfg.name, sectors,
                        sector, e.as_str());
                    return Err(EIO);
                }
            }
        }
        let t0 = Instant::<Monotonic>::now();
        let failures = (*g).as_ref().map_or(0, |a| a.failures);
        loop {
            let Some(a) = (*g).as_mut() else { return Err(EIO) };
            if a.log.is_committed(sector, sectors) {
                let us = u64::try_from(t0.elapsed().as_micros_ceil()).unwrap_or(0);
                a.stats.wait_us = a.stats.wait_us.saturating_add(us);
                return Ok(true);
            }
            if a.failures != failures || a.stopped || self.disk() == crate::detach::DETACHED {
                // The transaction this write waited for failed, the disk was detached meanwhile
                // (no transaction is written any more; the caller goes on without the disk), or
                // the device goes away: give the references back and fail the write.
                let _ = a.log.end_write(sector, sectors);
                drop(g);
                self.al_cv.notify_all();
                return Err(EIO);
            }
            if a.log.needs_transaction() {
                // Written by the metadata thread: a bio submitted from here would wait behind
                // our own submission (`current->bio_list`) for ever.
                self.md_work.notify_one();
            }
            self.al_cv.wait(&mut g);
        }
    }

    /// Drops the references [`Device::al_begin`] took (any context).
    pub(crate) fn al_end(&self, sector: u64, sectors: u64) {
        {
            let mut g = self.al.lock();
            let Some(a) = (*g).as_mut() else { return };
            if let Err(e) = a.log.end_write(sector, sectors) {
                drop(g);
                pr_err!("{}: activity log: end of write at {}: {}\n", &*self.cfg.name, sector, e.as_str());
                return;
            }
        }
        self.al_cv.notify_all();
    }

    /// Whether a transaction is due ([`Device::al_due_in`]).
    pub(crate) fn al_due(&self) -> bool {
        (*self.al.lock()).as_ref().is_some_and(|a| self.al_due_in(a))
    }

    /// Whether a transaction is due for `a`, this device's log (locked by the caller):
    /// [`Al::due`], and never while the disk is detached: nothing is written to a failed disk
    /// (activations queued when it failed stay queued, and are written once it is attached).
    pub(crate) fn al_due_in(&self, a: &Al) -> bool {
        self.disk() != crate::detach::DETACHED && a.due()
    }

    /// Writes the next transaction if one is due and none is in flight. Only from the metadata
    /// thread or a sysfs write, never from the submission path; transactions are serialized by
    /// the metadata lock, which also guards the ring buffer.
    pub(crate) fn al_transaction(&self) -> Result {
        let mut guard = self.md.lock();
        let Some(md) = (*guard).as_mut() else { return Err(EIO) };
        if !self.al_due() {
            return Ok(());
        }
        let res = self.al_write_next(md);
        drop(guard);
        if res.is_err() && self.detaches() && self.role() == crate::device::Role::Primary {
            // Here, before the waiting writes see the failure: no second transaction is tried
            // on the failed disk meanwhile (`al_due` is false from now on).
            self.detach("an activity log write failed");
        }
        self.al_cv.notify_all();
        res
    }

    /// Encodes the next transaction (whatever is queued, and the next context window), makes
    /// the bitmap on disk cover the extents it retires, writes it to its ring slot and commits
    /// it, or aborts it on an I/O error (writes waiting for it then fail). The caller holds the
    /// metadata lock (`md`) and wakes the waiters.
    fn al_write_next(&self, md: &mut Md) -> Result {
        let mut retire = [0u32; MAX_RETIRE];
        let (tr, n, shift) = {
            let mut g = self.al.lock();
            let Some(a) = (*g).as_mut() else { return Err(EIO) };
            let tr = a.log.encode_transaction(md.al_block()?).map_err(|_| EIO)?;
            let mut n = 0;
            for e in a.log.evicted(&tr) {
                if let Some(r) = retire.get_mut(n) {
                    *r = e;
                    n += 1;
                }
            }
            (tr, n, a.log.config().extent_shift)
        };
        let mut res = Ok(());
        if n > 0 {
            // The extents are forgotten once the transaction is on disk: what the peer may
            // lack in them must be in the bitmap on disk first.
            self.mark_unreplicated(Some((&retire[..n], shift)));
            res = self.md_writeback_locked(md, false);
        }
        if res.is_ok() {
            res = md.write_al_slot(&self.backing, tr.ring_slot);
        }
        if let Some(a) = (*self.al.lock()).as_mut() {
            if res.is_ok() {
                let _ = a.log.commit(tr);
                a.failed_waited = None;
                a.stats.transactions += 1;
                a.stats.retired += n as u64;
            } else {
                let _ = a.log.abort(tr);
                a.failures += 1;
                a.failed_waited = Some(a.stats.waited);
            }
        }
        if let Err(e) = &res {
            pr_err!("{}: activity log: transaction {} could not be written: error {}\n", &*self.cfg.name,
                tr.seq, e.to_errno());
        }
        res
    }

    /// Marks out of sync the writes kept for the peer (outage queue, transfer log): those that
    /// touch `retire` (extents, and their log2 size in bytes), or all of them (`None`).
    fn mark_unreplicated(&self, retire: Option<(&[u32], u32)>) {
        let c = self.conn.lock();
        let mut bm = self.bitmap.lock();
        for (sector, len) in Iterator::chain(c.outq.ranges(), c.tlog.ranges()) {
            let sectors = u64::from(len.div_ceil(512));
            if len > 0 && retire.is_none_or(|(ext, shift)| al::touches_any(shift, ext, sector, sectors)) {
                let _ = bm.set_range(sector, sectors);
            }
        }
    }

    /// Whether every write's references are back and no transaction is pending: the log may
    /// be recorded as clean (at removal).
    pub(crate) fn al_idle(&self) -> bool {
        self.al.lock().as_ref().is_none_or(|a| a.log.is_idle())
    }

    /// Changes the number of active extents (sysfs `al_extents`): new writes wait while the
    /// writes in flight finish; the bitmap is written (the old active set is forgotten), then
    /// the new log writes a full context rotation and the superblock records the size.
    pub(crate) fn al_resize(&self, n: u32) -> Result {
        let mut cfg = match self.al.lock().as_ref() {
            Some(a) => *a.log.config(),
            None => {
                pr_err!("{}: al_extents: no activity log without on-disk metadata\n", &*self.cfg.name);
                return Err(EINVAL);
            }
        };
        cfg.nr_extents = n;
        if let Err(e) = cfg.validate() {
            pr_err!("{}: al_extents: {} (from {} to {} with a ring of {} slots)\n", &*self.cfg.name, e.as_str(),
                al::MIN_EXTENTS, al::MAX_EXTENTS.min(al::CONTEXT_PER_TRANSACTION as u32 * (cfg.ring_slots - 1)),
                cfg.ring_slots);
            return Err(EINVAL);
        }
        let store = storage(n)?;
        {
            // Writes waiting for a transaction still get it (the metadata lock is not held
            // yet); new writes wait until the change is done.
            let mut g = self.al.lock();
            loop {
                let Some(a) = (*g).as_mut() else { return Err(EINVAL) };
                if !a.resizing {
                    a.resizing = true;
                    break;
                }
                self.al_cv.wait(&mut g);
            }
            while !(*g).as_ref().is_none_or(|a| a.log.is_idle()) {
                self.al_cv.wait(&mut g);
            }
        }
        let mut guard = self.md.lock();
        let Some(md) = (*guard).as_mut() else {
            if let Some(a) = (*self.al.lock()).as_mut() {
                a.resizing = false;
            }
            self.al_cv.notify_all();
            return Err(EINVAL);
        };
        // Everything the old log knew is forgotten; it is idle, so the writes the peer may lack
        // are exactly those kept for it.
        self.mark_unreplicated(None);
        let mut res = self.md_writeback_locked(md, false);
        if res.is_ok() {
            let mut g = self.al.lock();
            if let Some(a) = (*g).as_mut() {
                let next = a.log.next_seq();
                match Log::new(cfg, store, next) {
                    Ok(l) => a.log = l,
                    Err(_) => res = Err(EINVAL),
                }
            }
        }
        // A full rotation of context windows, so recovery sees the new table whole.
        let rotation = n.div_ceil(al::CONTEXT_PER_TRANSACTION as u32);
        for _ in 0..rotation {
            if res.is_err() {
                break;
            }
            res = self.al_write_next(md);
        }
        if res.is_ok() {
            md.set_al_extents(n);
            res = self.md_writeback_locked(md, true);
        }
        if let Some(a) = (*self.al.lock()).as_mut() {
            a.resizing = false;
        }
        drop(guard);
        self.al_cv.notify_all();
        match &res {
            Ok(()) => pr_info!("{}: al_extents set to {}\n", &*self.cfg.name, n),
            Err(e) => pr_err!("{}: al_extents: the activity log could not be rewritten: error {}\n", &*self.cfg.name,
                e.to_errno()),
        }
        res
    }
}
