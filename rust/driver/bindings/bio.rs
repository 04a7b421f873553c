// SPDX-License-Identifier: GPL-2.0
//! Bios: the ones handed to a disk by the block layer ([`Bio`]), and clones of them that carry
//! per-clone data in their front pad and complete through a trait ([`BioSet`], [`CloneRef`],
//! [`CloneData`]), as device-mapper's per-bio data does.
//!
//! A clone takes ownership of the bio it was cloned from (the *original*) and ends it when the
//! last reference to the clone goes, with the status its data decides: the original's pages stay
//! valid for as long as anyone can reach the clone, which is what makes reading them (to send
//! them to a peer) safe.

use super::{bdev::BackingDev, ffi};
use core::marker::PhantomData;
use core::mem::size_of;
use core::ops::Deref;
use core::ptr::NonNull;
use core::sync::atomic::{fence, AtomicU32, Ordering};
use kernel::bindings;
use kernel::prelude::*;

/// A block-layer status (`blk_status_t`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Status(u8);

impl Status {
    /// `BLK_STS_OK`.
    pub(crate) const OK: Status = Status(bindings::BLK_STS_OK as u8);

    /// The status the block layer uses for `err` (`errno_to_blk_status`).
    pub(crate) fn from_errno(err: Error) -> Status {
        // SAFETY: `errno_to_blk_status` only maps a number to a number.
        Status(unsafe { bindings::errno_to_blk_status(err.to_errno()) })
    }

    /// `BLK_STS_IOERR`.
    pub(crate) fn ioerr() -> Status {
        Status::from_errno(EIO)
    }

    /// `BLK_STS_AGAIN` (a `REQ_NOWAIT` bio that would have waited).
    pub(crate) fn again() -> Status {
        Status::from_errno(EAGAIN)
    }

    /// `BLK_STS_NOTSUPP`.
    pub(crate) fn notsupp() -> Status {
        Status::from_errno(super::errno::eopnotsupp())
    }

    /// A status as the block layer stored it (for the other wrappers of this layer).
    pub(super) const fn from_raw(v: u8) -> Status {
        Status(v)
    }

    /// Whether this is `BLK_STS_OK`.
    pub(crate) fn is_ok(self) -> bool {
        self == Status::OK
    }
}

/// What a bio asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    /// `REQ_OP_READ`.
    Read,
    /// `REQ_OP_WRITE` (possibly with PREFLUSH/FUA, possibly empty: a flush).
    Write,
    /// `REQ_OP_FLUSH` (only seen as an empty PREFLUSH write by bio-based drivers; kept for safety).
    Flush,
    /// Anything else (discard, write-zeroes, secure erase, zone ops...), not supported.
    Other,
}

/// A bio submitted to one of our disks, which we must end exactly once.
///
/// # Invariants
///
/// `0` points to a live bio that has not been ended, remapped or resubmitted; this value is its
/// only owner, so nobody else changes it (its `bi_iter` in particular) while the value exists.
pub(crate) struct Bio(NonNull<bindings::bio>);

// SAFETY: a bio may be ended or resubmitted from any context and thread.
unsafe impl Send for Bio {}
// SAFETY: `&Bio` methods only read the bio (flags, iterator, data pages), which nobody changes
// while we own it (type invariant).
unsafe impl Sync for Bio {}

impl Bio {
    /// Takes ownership of a bio passed to `submit_bio`.
    ///
    /// # Safety
    ///
    /// `bio` must be null or a live bio that the caller owns and hands over (nobody else will
    /// end, change or resubmit it).
    pub(super) unsafe fn from_raw(bio: *mut bindings::bio) -> Option<Self> {
        // INVARIANT: guaranteed by the caller.
        NonNull::new(bio).map(Bio)
    }

    /// The raw pointer, for the other wrappers of this layer (valid while `self` is).
    pub(super) fn as_raw(&self) -> *mut bindings::bio {
        self.0.as_ptr()
    }

    fn into_raw(self) -> *mut bindings::bio {
        let raw = self.0.as_ptr();
        core::mem::forget(self);
        raw
    }

    fn opf(&self) -> u32 {
        // SAFETY: the bio is live and unchanged while we own it (type invariant).
        unsafe { (*self.0.as_ptr()).bi_opf }
    }

    /// The operation.
    pub(crate) fn op(&self) -> Op {
        match self.opf() & ((1 << bindings::REQ_OP_BITS) - 1) {
            x if x == bindings::req_op_REQ_OP_READ => Op::Read,
            x if x == bindings::req_op_REQ_OP_WRITE => Op::Write,
            x if x == bindings::req_op_REQ_OP_FLUSH => Op::Flush,
            _ => Op::Other,
        }
    }

    /// `REQ_PREFLUSH`: flush the volatile cache before this write.
    pub(crate) fn preflush(&self) -> bool {
        self.opf() & (1 << bindings::req_flag_bits___REQ_PREFLUSH) != 0
    }

    /// `REQ_NOWAIT`: end the bio with `BLK_STS_AGAIN` rather than wait for a resource.
    pub(crate) fn nowait(&self) -> bool {
        self.opf() & (1 << bindings::req_flag_bits___REQ_NOWAIT) != 0
    }

    /// `REQ_FUA`: this write must be on stable media when it completes.
    pub(crate) fn fua(&self) -> bool {
        self.opf() & (1 << bindings::req_flag_bits___REQ_FUA) != 0
    }

    /// First sector.
    pub(crate) fn sector(&self) -> u64 {
        // SAFETY: the bio is live and unchanged while we own it (type invariant).
        unsafe { (*self.0.as_ptr()).bi_iter.bi_sector }
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u32 {
        // SAFETY: the bio is live and unchanged while we own it (type invariant).
        unsafe { (*self.0.as_ptr()).bi_iter.bi_size }
    }

    /// Copies the bio's data into `buf` (at most `buf.len()` bytes, whole segments); returns the
    /// bytes copied.
    pub(crate) fn copy_to(&self, buf: &mut [u8]) -> usize {
        // SAFETY: the bio is live and unchanged while borrowed (type invariant); its pages hold
        // data for its whole size; `buf` is writable for its length and the shim copies whole
        // segments only while they fit.
        unsafe { ffi::rmirror_bio_copy_to(self.0.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) }
    }

    /// Copies `buf` into the bio's pages (a read's data; at most `buf.len()` bytes, whole
    /// segments); returns the bytes copied.
    pub(crate) fn copy_from(&mut self, buf: &[u8]) -> usize {
        // SAFETY: the bio is live and ours (type invariant, `&mut`); its pages are writable for
        // its whole size (a read); `buf` is readable for its length and the shim copies whole
        // segments only while they fit.
        unsafe { ffi::rmirror_bio_copy_from(self.0.as_ptr(), buf.as_ptr().cast(), buf.len()) }
    }

    /// Splits the bio to the disk's queue limits (bio-based drivers must do it themselves).
    /// Returns `None` when the block layer ended the bio (e.g. on a split error).
    pub(crate) fn split_to_limits(self) -> Option<Bio> {
        let raw = self.into_raw();
        // SAFETY: `raw` is a live bio we own; `bio_split_to_limits` either returns the (front)
        // bio for us to handle, having chained and resubmitted the rest, or ends it and returns
        // NULL.
        let bio = unsafe { bindings::bio_split_to_limits(raw) };
        // SAFETY: the returned bio is null or live and ours alone.
        unsafe { Bio::from_raw(bio) }
    }

    /// Sends the bio unchanged to the backing device (like dm-linear), giving up ownership.
    pub(crate) fn remap(self, bdev: &BackingDev) {
        let raw = self.into_raw();
        // SAFETY: `raw` is live and ours; after this the backing device's driver ends it.
        unsafe { ffi::rmirror_bio_remap(raw, bdev.as_raw()) };
    }

    /// Ends the bio with `status`.
    pub(crate) fn end(self, status: Status) {
        let raw = self.into_raw();
        // SAFETY: `raw` is live and ours; it is ended exactly once (`into_raw` forgot `self`).
        unsafe { ffi::rmirror_bio_endio(raw, status.0) };
    }
}

impl Drop for Bio {
    fn drop(&mut self) {
        // A bio must never be leaked: dropping one without ending it fails it.
        // SAFETY: the bio is live and ours by the type invariant, and this is its last use.
        unsafe { ffi::rmirror_bio_endio(self.0.as_ptr(), Status::ioerr().0) };
    }
}

/// The data a clone carries in its front pad, and what happens at its completions.
pub(crate) trait CloneData: Send + Sync + Sized {
    /// The clone's own I/O finished with `status`. Runs in the completion's context, which may
    /// be interrupt context: must not sleep. `clone` is the reference the I/O held.
    fn end_io(clone: CloneRef<Self>, status: Status);

    /// The last reference to the clone is gone: returns the status to end the original bio
    /// with. Runs wherever that reference was dropped (possibly interrupt context).
    fn complete(&mut self) -> Status;
}

/// What lives in a clone's front pad, right before its `struct bio`.
#[repr(C)]
struct Front<T> {
    /// References: every [`CloneRef`], plus one while the clone's I/O is in flight.
    refs: AtomicU32,
    /// The original bio, owned (see the module documentation).
    orig: NonNull<bindings::bio>,
    /// Its I/O accounting's start (`bio_start_io_acct`), if accounted.
    acct: Option<kernel::ffi::c_ulong>,
    data: T,
}

/// Bytes of front pad for `T`: the bio starts right after, so this keeps it 8-byte aligned.
const fn front_pad<T>() -> usize {
    size_of::<Front<T>>().next_multiple_of(8)
}

/// A bio set whose clones carry a `T` (mempool-backed: allocating a clone waits for memory
/// rather than failing, so the I/O path always makes progress).
///
/// # Invariants
///
/// `raw` was returned by `rmirror_bioset_create(front_pad::<T>())` and is destroyed only in
/// `drop`; every clone allocated from it has an initialized `Front<T>` in its front pad.
pub(crate) struct BioSet<T: CloneData> {
    raw: NonNull<ffi::RawBioSet>,
    _data: PhantomData<T>,
}

// SAFETY: bio sets are thread safe (mempools); clones carry `T: Send + Sync`.
unsafe impl<T: CloneData> Send for BioSet<T> {}
// SAFETY: as above.
unsafe impl<T: CloneData> Sync for BioSet<T> {}

impl<T: CloneData> BioSet<T> {
    /// Allocates a bio set (process context).
    pub(crate) fn new() -> Result<Self> {
        const {
            // Bio slab objects are at least ARCH_KMALLOC_MINALIGN (8) aligned, and the front pad
            // starts the object.
            assert!(core::mem::align_of::<Front<T>>() <= 8);
            assert!(front_pad::<T>() <= u32::MAX as usize);
        }
        // SAFETY: no preconditions.
        let raw = unsafe { ffi::rmirror_bioset_create(front_pad::<T>() as u32) };
        // INVARIANT: created with `front_pad::<T>()`; no clone exists yet.
        Ok(Self { raw: NonNull::new(raw).ok_or(ENOMEM)?, _data: PhantomData })
    }

    /// Waits (sleeping) until every clone allocated from this set has been freed.
    pub(crate) fn drain(&self) {
        // SAFETY: `raw` is valid by the type invariant.
        unsafe { ffi::rmirror_bioset_drain(self.raw.as_ptr()) };
    }

    /// Clones `orig` for `bdev`, taking ownership of `orig` (ended when the clone's last
    /// reference goes, see [`CloneData::complete`]) and placing `data` in the clone's front pad.
    /// Allocates with GFP_NOIO from the set's mempool, so it waits rather than fails; on the
    /// one failure left (integrity data that cannot be cloned), `orig` is returned.
    pub(crate) fn clone_bio(&self, orig: Bio, bdev: &BackingDev, data: T) -> core::result::Result<NewClone<T>, Bio> {
        // SAFETY: `orig` is live and ours; `bdev` and the set are valid (invariants); the end_io
        // function matches the set's `T`.
        let clone = unsafe {
            ffi::rmirror_clone_alloc(orig.as_raw(), bdev.as_raw(), self.raw.as_ptr(), Some(clone_end_io::<T>))
        };
        let Some(clone) = NonNull::new(clone) else { return Err(orig) };
        let orig = core::mem::ManuallyDrop::new(orig);
        let mut start = 0;
        // SAFETY: `orig` is live and ours, submitted to our disk; `start` is writable.
        let acct = unsafe { ffi::rmirror_acct_start(orig.0.as_ptr(), &mut start) }.then_some(start);
        let front = Front { refs: AtomicU32::new(1), orig: orig.0, acct, data };
        // SAFETY: the set was created with `front_pad::<T>()` bytes in front of every bio, so
        // this is the start of the clone's allocation, suitably aligned (checked above), ours.
        unsafe { core::ptr::write(clone.as_ptr().cast::<u8>().sub(front_pad::<T>()).cast::<Front<T>>(), front) };
        // INVARIANT: the front pad is initialized with one reference, held by the result.
        Ok(NewClone(CloneRef { bio: clone, _data: PhantomData }))
    }
}

impl<T: CloneData> Drop for BioSet<T> {
    fn drop(&mut self) {
        // SAFETY: valid by the type invariant and destroyed exactly once; the C side first waits
        // for every clone to be freed (may sleep: bio sets are dropped in process context).
        unsafe { ffi::rmirror_bioset_destroy(self.raw.as_ptr()) };
    }
}

/// A counted reference to a clone and its data.
///
/// # Invariants
///
/// `bio` is a clone allocated by [`BioSet::clone_bio`] for this `T`; its front pad holds an
/// initialized `Front<T>` whose `refs` counts this reference.
pub(crate) struct CloneRef<T: CloneData> {
    bio: NonNull<bindings::bio>,
    _data: PhantomData<T>,
}

// SAFETY: the data is `Send + Sync` and the reference count is atomic; the last reference may
// be dropped on any thread.
unsafe impl<T: CloneData> Send for CloneRef<T> {}
// SAFETY: `&CloneRef` only gives `&T` and `&Bio`, both `Sync`.
unsafe impl<T: CloneData> Sync for CloneRef<T> {}

impl<T: CloneData> CloneRef<T> {
    fn front(&self) -> *mut Front<T> {
        // SAFETY: by the type invariant the clone's allocation starts `front_pad::<T>()` bytes
        // before the bio, with a `Front<T>`.
        unsafe { self.bio.as_ptr().cast::<u8>().sub(front_pad::<T>()).cast::<Front<T>>() }
    }

    /// Runs `f` on the original bio (to read its data: it is ended only after the last
    /// reference goes).
    pub(crate) fn with_orig<R>(&self, f: impl FnOnce(&Bio) -> R) -> R {
        // SAFETY: the front pad is initialized (invariant); `orig` stays owned by it, unchanged,
        // until the last reference goes, and we hold one. The temporary `Bio` is never dropped
        // or ended (ManuallyDrop), so ownership stays with the front pad.
        let orig = core::mem::ManuallyDrop::new(Bio(unsafe { (*self.front()).orig }));
        f(&orig)
    }
}

impl<T: CloneData> Deref for CloneRef<T> {
    type Target = T;

    fn deref(&self) -> &T {
        // SAFETY: initialized and alive while a reference exists (type invariant); only shared
        // references to `data` exist until the last reference goes.
        unsafe { &(*self.front()).data }
    }
}

impl<T: CloneData> Clone for CloneRef<T> {
    fn clone(&self) -> Self {
        // SAFETY: the front pad is initialized (type invariant).
        unsafe { (*self.front()).refs.fetch_add(1, Ordering::Relaxed) };
        // INVARIANT: the count was incremented for the new reference.
        CloneRef { bio: self.bio, _data: PhantomData }
    }
}

impl<T: CloneData> Drop for CloneRef<T> {
    fn drop(&mut self) {
        let front = self.front();
        // SAFETY: the front pad is initialized (type invariant).
        if unsafe { (*front).refs.fetch_sub(1, Ordering::Release) } != 1 {
            return;
        }
        fence(Ordering::Acquire);
        // SAFETY: this was the last reference, so we have exclusive access to the front pad; the
        // clone's I/O is over (it held a reference). `complete` runs once, the original is ended
        // once, the data dropped once, then the clone goes back to its set.
        unsafe {
            let status = (*front).data.complete();
            if let Some(start) = (*front).acct {
                ffi::rmirror_acct_end((*front).orig.as_ptr(), start);
            }
            ffi::rmirror_bio_endio((*front).orig.as_ptr(), status.0);
            core::ptr::drop_in_place(&raw mut (*front).data);
            ffi::rmirror_clone_free(self.bio.as_ptr());
        }
    }
}

/// A clone not yet submitted (one reference, this one).
pub(crate) struct NewClone<T: CloneData>(CloneRef<T>);

impl<T: CloneData> NewClone<T> {
    /// Submits the clone to its device; `T::end_io` runs when it completes. Returns a
    /// reference for the caller (the I/O holds another).
    pub(crate) fn submit(self) -> CloneRef<T> {
        let io = self.0.clone();
        let bio = io.bio.as_ptr();
        // The I/O's reference now lives in the bio; `clone_end_io` takes it back.
        core::mem::forget(io);
        // SAFETY: a clone from `BioSet::clone_bio`, submitted once (`self` is consumed).
        unsafe { ffi::rmirror_bio_submit(bio) };
        self.0
    }
}

impl<T: CloneData> NewClone<T> {
    /// Gives up the clone's I/O (the device's disk is detached): the caller records the local
    /// outcome itself; the original completes when the last reference goes, as usual.
    pub(crate) fn without_io(self) -> CloneRef<T> {
        self.0
    }
}

impl<T: CloneData> Deref for NewClone<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// `bi_end_io` of clones from a `BioSet<T>`.
unsafe extern "C" fn clone_end_io<T: CloneData>(bio: *mut bindings::bio) {
    // SAFETY: the block layer passes the completed clone, which is live.
    let status = Status(unsafe { (*bio).bi_status });
    let Some(bio) = NonNull::new(bio) else { return };
    // INVARIANT: `NewClone::submit` left one reference for the I/O, which this takes back.
    T::end_io(CloneRef { bio, _data: PhantomData }, status);
}
