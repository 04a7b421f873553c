// SPDX-License-Identifier: GPL-2.0
//! An opened backing block device (`bdev_file_open_by_path` / `bdev_fput`).

use super::ffi;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::error::from_err_ptr;
use kernel::prelude::*;
use kernel::str::CStr;

const BLK_OPEN_READ: u32 = 1 << 0;
const BLK_OPEN_WRITE: u32 = 1 << 1;
const BLK_OPEN_EXCL: u32 = 1 << 2;

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
        // is released (field order and `drop`); no holder ops are needed.
        let file = from_err_ptr(unsafe {
            bindings::bdev_file_open_by_path(
                path.as_char_ptr(),
                BLK_OPEN_READ | BLK_OPEN_WRITE | BLK_OPEN_EXCL,
                (&raw const *holder).cast_mut().cast(),
                core::ptr::null(),
            )
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

    /// Writes `data` at `sector` and waits for completion (with the given cache semantics).
    pub(crate) fn write_sync(&self, sector: u64, data: &[u8], preflush: bool, fua: bool) -> Result {
        // SAFETY: `bdev` is valid; `data` is a kernel buffer valid for the duration of the
        // synchronous call.
        let ret = unsafe {
            ffi::rmirror_write_sync(self.as_raw(), sector, data.as_ptr().cast(), data.len(), preflush, fua)
        };
        kernel::error::to_result(ret)
    }

    /// Flushes the device's volatile write cache.
    pub(crate) fn flush(&self) -> Result {
        // SAFETY: `bdev` is valid by the type invariant.
        kernel::error::to_result(unsafe { bindings::blkdev_issue_flush(self.as_raw()) })
    }
}

impl Drop for BackingDev {
    fn drop(&mut self) {
        // SAFETY: `file` is open by the type invariant and released exactly once here.
        unsafe { bindings::bdev_fput(self.file.as_ptr()) };
        // `_holder` is freed after this (fields drop after `drop`), once the claim is gone.
    }
}
