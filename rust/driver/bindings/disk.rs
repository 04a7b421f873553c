// SPDX-License-Identifier: GPL-2.0
//! A bio-based gendisk (`/dev/rmirrorN`) and the C callbacks that reach the Rust device.
//!
//! The disk's `private_data` points to the [`Device`], and [`Disk`] holds a reference to that
//! device, dropped only after del_gendisk (which waits for running sysfs callbacks and stops new
//! ones); bios in flight hold their own references (see `request`).

use super::{bdev::BackingDev, bio::Bio, ffi};
use crate::device::Device;
use crate::sysfs;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::error::from_err_ptr;
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};

/// A registered gendisk.
///
/// # Invariants
///
/// `disk` was returned by a successful `rmirror_disk_create` (allocated and added) and is torn
/// down only in `drop`; its `private_data` points to `*dev`, kept alive by `_dev`.
pub(crate) struct Disk {
    disk: NonNull<bindings::gendisk>,
    _dev: Arc<Device>,
}

// SAFETY: gendisk teardown may happen from any thread.
unsafe impl Send for Disk {}
// SAFETY: `&Disk` methods only call thread-safe kernel functions.
unsafe impl Sync for Disk {}

impl Disk {
    /// Creates and adds `/dev/rmirror<index>` on top of `backing`, for `dev`.
    pub(crate) fn create(
        dev: Arc<Device>,
        index: u32,
        backing: &BackingDev,
        capacity: u64,
        max_sectors: u32,
    ) -> Result<Self> {
        // SAFETY: `backing` is an open block device; the device pointer stays valid while the
        // disk exists because the returned value holds `dev`.
        let disk = from_err_ptr(unsafe {
            ffi::rmirror_disk_create(
                Arc::as_ptr(&dev).cast_mut().cast(),
                index as c_int,
                backing.as_raw(),
                capacity,
                max_sectors,
            )
        })?;
        // INVARIANT: a successful create returns an added disk whose private data is `dev`.
        let disk = NonNull::new(disk).ok_or(ENOMEM)?;
        Ok(Disk { disk, _dev: dev })
    }

    /// Refuses (`EBUSY`) if the disk is open; otherwise marks the device so no new open succeeds.
    pub(crate) fn begin_remove(&self) -> Result {
        // SAFETY: the disk is live by the type invariant.
        kernel::error::to_result(unsafe { ffi::rmirror_disk_begin_remove(self.disk.as_ptr()) })
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        // SAFETY: live by the type invariant, torn down exactly once; `self._dev` is released
        // after this (fields drop after `drop`), when no callback can run any more.
        unsafe { ffi::rmirror_disk_destroy(self.disk.as_ptr()) };
    }
}

/// # Safety
///
/// `dev` must be the `private_data` of one of our disks (a live `Device`).
unsafe fn device<'a>(dev: *mut c_void) -> &'a Device {
    // SAFETY: guaranteed by the caller; see the module documentation for the lifetime.
    unsafe { &*dev.cast::<Device>() }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_submit_bio(dev: *mut c_void, bio: *mut bindings::bio) {
    // SAFETY: called by `fops->submit_bio` of our disk with its private data and a live bio
    // that is ours to end.
    let bio = unsafe { Bio::from_raw(bio) };
    // SAFETY: `dev` is the pointer of an `Arc<Device>` that the disk holds (type invariant of
    // `Disk`), so it is alive for this call.
    let dev: Arc<Device> = unsafe { ArcBorrow::from_raw(dev.cast::<Device>()) }.into();
    if let Some(bio) = bio {
        Device::submit_bio(&dev, bio);
    }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_open(dev: *mut c_void) -> c_int {
    // SAFETY: called by `fops->open` of our disk.
    match unsafe { device(dev) }.open() {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_mark_removing(dev: *mut c_void) {
    // SAFETY: called by `rmirror_disk_begin_remove` with our disk's private data.
    unsafe { device(dev) }.mark_removing();
}

/// Size of a sysfs page buffer.
const PAGE_SIZE: usize = 4096;

#[no_mangle]
unsafe extern "C" fn rmirror_rs_sysfs_show(dev: *mut c_void, attr: c_uint, page: *mut c_char) -> isize {
    // SAFETY: sysfs passes a writable buffer of PAGE_SIZE bytes, exclusively ours for the call.
    let page = unsafe { core::slice::from_raw_parts_mut(page.cast::<u8>(), PAGE_SIZE) };
    // SAFETY: called by our attribute group's show with the disk's private data.
    match sysfs::show(unsafe { device(dev) }, attr, page) {
        Ok(n) => n as isize,
        Err(e) => e.to_errno() as isize,
    }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_sysfs_store(dev: *mut c_void, attr: c_uint, buf: *const c_char, len: usize) -> isize {
    // SAFETY: sysfs passes `len` readable bytes (at most PAGE_SIZE), valid for the call.
    let input = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), len) };
    // SAFETY: called by our attribute group's store with the disk's private data.
    match sysfs::store(unsafe { device(dev) }, attr, input) {
        Ok(()) => len as isize,
        Err(e) => e.to_errno() as isize,
    }
}
