// SPDX-License-Identifier: GPL-2.0
//! Bios handed to our disk by the block layer, their clones to the backing device, and bio sets.

use super::{bdev::BackingDev, ffi};
use crate::request::Request;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::ffi::c_void;
use kernel::prelude::*;
use kernel::sync::Arc;

/// A block-layer status (`blk_status_t`). The C values are casts, which bindgen cannot see.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct Status(u8);

impl Status {
    /// `BLK_STS_OK`.
    pub(crate) const OK: Status = Status(0);
    /// `BLK_STS_NOTSUPP`.
    pub(crate) const NOTSUPP: Status = Status(1);
    /// `BLK_STS_IOERR`.
    pub(crate) const IOERR: Status = Status(10);

    /// Whether this is `BLK_STS_OK`.
    pub(crate) fn is_ok(self) -> bool {
        self.0 == 0
    }

    /// The raw value.
    pub(crate) fn raw(self) -> u8 {
        self.0
    }
}

/// What a bio asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Op {
    /// `REQ_OP_READ`.
    Read,
    /// `REQ_OP_WRITE` (possibly with PREFLUSH/FUA).
    Write,
    /// `REQ_OP_FLUSH` (only seen as an empty PREFLUSH write by bio-based drivers; kept for safety).
    Flush,
    /// Anything else (discard, write-zeroes, zone ops...), not supported.
    Other,
}

/// A bio submitted to one of our disks, which we must end exactly once.
///
/// # Invariants
///
/// `0` points to a live bio that has not been ended, remapped or resubmitted; this value is its
/// only owner on our side.
pub(crate) struct Bio(NonNull<bindings::bio>);

// SAFETY: a bio may be completed from any context and thread.
unsafe impl Send for Bio {}
// SAFETY: `&Bio` methods only read immutable fields (op, sector, size) or copy its data.
unsafe impl Sync for Bio {}

impl Bio {
    /// Takes ownership of a bio passed to `submit_bio`.
    ///
    /// # Safety
    ///
    /// `bio` must be a live bio submitted to us that nobody else will end.
    pub(super) unsafe fn from_raw(bio: *mut bindings::bio) -> Option<Self> {
        // INVARIANT: guaranteed by the caller.
        NonNull::new(bio).map(Bio)
    }

    fn opf(&self) -> u32 {
        // SAFETY: the bio is live by the type invariant.
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

    /// `REQ_FUA`: this write must be on stable media when it completes.
    pub(crate) fn fua(&self) -> bool {
        self.opf() & (1 << bindings::req_flag_bits___REQ_FUA) != 0
    }

    /// First sector.
    pub(crate) fn sector(&self) -> u64 {
        // SAFETY: the bio is live by the type invariant.
        unsafe { (*self.0.as_ptr()).bi_iter.bi_sector }
    }

    /// Size in bytes.
    pub(crate) fn size(&self) -> u32 {
        // SAFETY: the bio is live by the type invariant.
        unsafe { (*self.0.as_ptr()).bi_iter.bi_size }
    }

    /// Splits the bio to the disk's queue limits (bio-based drivers must do it themselves).
    /// Returns `None` when the block layer ended the bio (e.g. on a split error).
    pub(crate) fn split_to_limits(self) -> Option<Bio> {
        let raw = self.0.as_ptr();
        core::mem::forget(self);
        // SAFETY: `raw` is a live bio we own; `bio_split_to_limits` either returns the (front)
        // bio for us to handle, having chained and resubmitted the rest, or ends it and returns
        // NULL.
        let bio = unsafe { bindings::bio_split_to_limits(raw) };
        // SAFETY: the returned bio is live and ours alone.
        unsafe { Bio::from_raw(bio) }
    }

    /// Copies the bio's data into `buf` (which must be exactly `size()` bytes).
    pub(crate) fn copy_to(&self, buf: &mut [u8]) -> Result {
        if buf.len() != self.size() as usize {
            return Err(EINVAL);
        }
        // SAFETY: the bio is live; `buf` is writable for `buf.len()` bytes, which equals the
        // bio's remaining size, so the segment walk stays inside it.
        unsafe { ffi::rmirror_bio_copy_to_buf(self.0.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        Ok(())
    }

    /// Sends the bio unchanged to the backing device (like dm-linear), giving up ownership.
    pub(crate) fn remap(self, bdev: &BackingDev) {
        let raw = self.0.as_ptr();
        core::mem::forget(self);
        // SAFETY: `raw` is live and ours; after this the backing device's driver ends it.
        unsafe { ffi::rmirror_bio_remap(raw, bdev.as_raw()) };
    }

    /// Submits a clone of this bio to `bdev`; when it completes, `Request::local_done(req, st)`
    /// runs (in interrupt context). On error, `req` is dropped and nothing was submitted.
    pub(crate) fn submit_clone(&self, bdev: &BackingDev, bs: &BioSet, req: Arc<Request>) -> Result {
        let ctx = req.into_raw().cast_mut().cast::<c_void>();
        // SAFETY: the bio, the backing device and the bio set are live (type invariants); the
        // clone holds the `Arc` reference in `ctx`, which `rmirror_rs_clone_endio` takes back.
        let ret = unsafe { ffi::rmirror_bio_submit_clone(self.0.as_ptr(), bdev.as_raw(), bs.0.as_ptr(), ctx) };
        if ret != 0 {
            // SAFETY: the clone was not submitted, so the reference is still ours.
            drop(unsafe { Arc::from_raw(ctx.cast::<Request>()) });
            return Err(ENOMEM);
        }
        Ok(())
    }

    /// Ends the bio with `status`.
    pub(crate) fn end(self, status: Status) {
        let raw = self.0.as_ptr();
        core::mem::forget(self);
        // SAFETY: `raw` is live and ours; it is ended exactly once.
        unsafe { ffi::rmirror_bio_endio(raw, status.raw()) };
    }
}

impl Drop for Bio {
    fn drop(&mut self) {
        // A bio must never be leaked: dropping one without ending it fails it.
        // SAFETY: the bio is live and ours by the type invariant.
        unsafe { ffi::rmirror_bio_endio(self.0.as_ptr(), Status::IOERR.raw()) };
    }
}

/// Completion of a clone submitted by [`Bio::submit_clone`].
#[no_mangle]
unsafe extern "C" fn rmirror_rs_clone_endio(req: *mut c_void, status: u8) {
    // SAFETY: `req` is the reference `submit_clone` leaked into the clone; it is taken back once.
    let req = unsafe { Arc::from_raw(req.cast::<Request>()) };
    Request::local_done(req, Status(status));
}

/// A `struct bio_set` to clone bios from (mempool-backed, so clones make forward progress).
///
/// # Invariants
///
/// `0` was returned by `rmirror_bioset_create` and is destroyed only in `drop`.
pub(crate) struct BioSet(NonNull<bindings::bio_set>);

// SAFETY: bio sets are thread safe.
unsafe impl Send for BioSet {}
// SAFETY: bio sets are thread safe.
unsafe impl Sync for BioSet {}

impl BioSet {
    /// Allocates a bio set.
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: no preconditions.
        NonNull::new(unsafe { ffi::rmirror_bioset_create() }).map(BioSet).ok_or(ENOMEM)
    }
}

impl Drop for BioSet {
    fn drop(&mut self) {
        // SAFETY: valid by the type invariant; all clones have completed (each holds a request
        // reference, and the device outlives its requests).
        unsafe { ffi::rmirror_bioset_destroy(self.0.as_ptr()) };
    }
}
