// SPDX-License-Identifier: GPL-2.0
//! An opened backing block device (`bdev_file_open_by_path` / `bdev_fput`).

use super::{bio::Status, ffi};
use core::ptr::NonNull;
use kernel::bindings;
use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::str::CStr;

/// Runs `f` with a block plug (`blk_start_plug`): the bios the thread submits meanwhile are
/// held and issued together (one doorbell for several requests) when `f` returns, when the
/// plug is full, or as soon as the thread sleeps (the scheduler flushes a sleeping task's plug,
/// so nothing waits on a held bio).
pub(crate) fn plugged<R>(f: impl FnOnce() -> R) -> R {
    let mut plug = core::mem::MaybeUninit::<bindings::blk_plug>::uninit();
    // SAFETY: `blk_start_plug` initialises the plug (or leaves it unused if one is active); it
    // stays at this address, in this frame, until `blk_finish_plug` below.
    unsafe { bindings::blk_start_plug(plug.as_mut_ptr()) };
    let r = f();
    // SAFETY: the plug started above, still in place; this flushes and detaches it.
    unsafe { bindings::blk_finish_plug(plug.as_mut_ptr()) };
    r
}

/// A block device opened read-write and exclusively for rmirror.
///
/// # Invariants
///
/// `file` is a block device file returned by `bdev_file_open_by_path` and not yet released;
/// `bdev` is `file_bdev(file)`, valid as long as `file` is open; `_holder` is the exclusive-open
/// holder identity, unique to this open (so two devices cannot claim one disk), freed after
/// `file`.
pub(crate) struct BackingDev {
    file: NonNull<bindings::file>,
    bdev: NonNull<bindings::block_device>,
    _holder: KBox<u8>,
}

// SAFETY: the opened file and block device may be used and released from any thread.
unsafe impl Send for BackingDev {}
// SAFETY: all methods take `&self` and only call thread-safe kernel functions.
unsafe impl Sync for BackingDev {}

impl BackingDev {
    /// Opens `path` for read-write, exclusively (so nobody mounts or mirrors it twice).
    pub(crate) fn open(path: &CStr) -> Result<Self> {
        let holder = KBox::new(0u8, GFP_KERNEL)?;
        // SAFETY: `path` is a valid NUL-terminated string; `holder` lives until after the file
        // is released (field order and `drop`).
        let file = from_err_ptr(unsafe {
            ffi::rmirror_bdev_open_excl(path.as_char_ptr(), (&raw const *holder).cast_mut().cast())
        })?;
        let file = NonNull::new(file).ok_or(EINVAL)?;
        // SAFETY: `file` is a block device file we just opened.
        let bdev = NonNull::new(unsafe { bindings::file_bdev(file.as_ptr()) }).ok_or(EINVAL)?;
        // INVARIANT: both pointers come from a successful open.
        Ok(Self { file, bdev, _holder: holder })
    }

    /// Raw block device pointer, for the other wrappers of this layer.
    pub(super) fn as_raw(&self) -> *mut bindings::block_device {
        self.bdev.as_ptr()
    }

    /// Size in 512-byte sectors.
    pub(crate) fn nr_sectors(&self) -> u64 {
        // SAFETY: `bdev` is valid by the type invariant.
        unsafe { ffi::rmirror_bdev_nr_sectors(self.as_raw()) }
    }

    /// Writes `buf[range]` at `sector` and waits for completion (with the given cache
    /// semantics). The buffer is a kernel heap allocation (kmalloc or vmalloc), the only memory
    /// the block layer can be handed by address; `range` must be non-empty and inside it.
    pub(crate) fn write_sync(
        &self,
        sector: u64,
        buf: &KVVec<u8>,
        range: core::ops::Range<usize>,
        preflush: bool,
        fua: bool,
    ) -> Result {
        let data = buf.get(range).ok_or(EINVAL)?;
        if data.is_empty() {
            return Err(EINVAL);
        }
        // SAFETY: `bdev` is valid; `data` is a non-empty part of a live kmalloc or vmalloc
        // allocation (a `KVVec`'s buffer), which `rmirror_write_sync` maps page by page with
        // `virt_to_page`/`vmalloc_to_page`; it stays borrowed for the whole synchronous call.
        let ret = unsafe {
            ffi::rmirror_write_sync(self.as_raw(), sector, data.as_ptr().cast(), data.len(), preflush, fua)
        };
        kernel::error::to_result(ret)
    }

    /// Writes the whole buffer of `w` at `sector` without waiting: `T::done` gets `w` back when
    /// the write ends (possibly in interrupt context). On an error before submission, `w` is
    /// returned at once. The caller keeps the device open until every write it started is done.
    pub(crate) fn write_async<T: WriteDone>(
        &self,
        sector: u64,
        w: KBox<AsyncWrite<T>>,
        preflush: bool,
        fua: bool,
    ) -> core::result::Result<(), (KBox<AsyncWrite<T>>, Error)> {
        if w.buf.is_empty() {
            return Err((w, EINVAL));
        }
        let (data, len) = (w.buf.as_ptr(), w.buf.len());
        let raw = KBox::into_raw(w);
        // SAFETY: `bdev` is valid; `data` is the non-empty buffer of a `KVVec` (kmalloc or
        // vmalloc), owned by the box, which nobody touches until `async_end_io::<T>` takes it
        // back from `bi_private` (the heap buffer does not move with the box). The end_io
        // function matches `T`.
        let ret = unsafe {
            ffi::rmirror_write_async(self.as_raw(), sector, data.cast(), len, preflush, fua,
                Some(async_end_io::<T>), raw.cast())
        };
        if ret != 0 {
            // SAFETY: not submitted, so the box is still ours alone.
            return Err((unsafe { KBox::from_raw(raw) }, Error::from_errno(ret)));
        }
        Ok(())
    }

    /// Reads into `buf[range]` from `sector` and waits for completion; the buffer rules of
    /// [`BackingDev::write_sync`] apply.
    pub(crate) fn read_sync(&self, sector: u64, buf: &mut KVVec<u8>, range: core::ops::Range<usize>) -> Result {
        let data = buf.get_mut(range).ok_or(EINVAL)?;
        if data.is_empty() {
            return Err(EINVAL);
        }
        // SAFETY: as in `write_sync`; `data` is borrowed mutably for the whole synchronous
        // call, so nothing else reads or writes it while the device fills it.
        let ret = unsafe { ffi::rmirror_read_sync(self.as_raw(), sector, data.as_mut_ptr().cast(), data.len()) };
        kernel::error::to_result(ret)
    }

    /// Flushes the device's volatile write cache.
    pub(crate) fn flush(&self) -> Result {
        // SAFETY: `bdev` is valid by the type invariant.
        kernel::error::to_result(unsafe { bindings::blkdev_issue_flush(self.as_raw()) })
    }
}

/// A kernel heap buffer written by [`BackingDev::write_async`], with what its owner keeps with
/// it (`tag`).
pub(crate) struct AsyncWrite<T> {
    buf: KVVec<u8>,
    pub(crate) tag: T,
}

impl<T> AsyncWrite<T> {
    /// A write of `buf` (must not be empty to be submitted).
    pub(crate) fn new(buf: KVVec<u8>, tag: T) -> Self {
        Self { buf, tag }
    }
}

/// What happens when an [`AsyncWrite`] ends.
pub(crate) trait WriteDone: Send + Sized + 'static {
    /// The write ended with `status`. May run in interrupt context: must not sleep.
    fn done(w: KBox<AsyncWrite<Self>>, status: Status);
}

/// `bi_end_io` of [`BackingDev::write_async`].
unsafe extern "C" fn async_end_io<T: WriteDone>(bio: *mut bindings::bio) {
    let mut private = core::ptr::null_mut();
    // SAFETY: the block layer passes the completed bio, one of `rmirror_write_async`'s; the
    // shim frees it and hands back its private pointer.
    let status = unsafe { ffi::rmirror_buf_bio_done(bio, &mut private) };
    // SAFETY: `private` is the box `write_async::<T>` gave away for this bio, taken back once.
    let w = unsafe { KBox::from_raw(private.cast::<AsyncWrite<T>>()) };
    T::done(w, Status::from_raw(status));
}

impl Drop for BackingDev {
    fn drop(&mut self) {
        // SAFETY: `file` is open by the type invariant and released exactly once here.
        unsafe { bindings::bdev_fput(self.file.as_ptr()) };
        // `_holder` is freed after this (fields drop after `drop`), once the claim is gone.
    }
}
