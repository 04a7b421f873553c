// SPDX-License-Identifier: GPL-2.0
//! A bio-based gendisk stacked on a backing device, generic over the driver's [`Operations`].
//!
//! The gendisk's `private_data` points to a [`Private<T>`] owned by the [`Disk`]: a table of
//! monomorphized callbacks (read by the C dispatchers below through its first field), a
//! "removing" flag, and an `Arc<T>`. The `Disk` frees it only after `del_gendisk`, which waits
//! for running sysfs callbacks and stops new ones and new opens; `submit_bio` runs only for
//! openers, and removal is refused while the disk is open ([`Disk::begin_remove`]).

use super::{bdev::BackingDev, bio::Bio, ffi};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, Ordering};
use kernel::bindings;
use kernel::error::from_err_ptr;
use kernel::ffi::{c_char, c_int, c_uint, c_void};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

/// What the driver does for its disks.
pub(crate) trait Operations: Send + Sync + Sized + 'static {
    /// `fops->submit_bio`: the bio is ours to end (process context, may sleep).
    fn submit_bio(this: &Arc<Self>, bio: Bio);
    /// `fops->open` (not called once removal has begun: that open gets `ENXIO`).
    fn open(&self) -> Result;
    /// Formats attribute `attr` (an index into [`DiskOptions::attrs`]) into a sysfs page.
    fn show(&self, attr: usize, page: &mut [u8]) -> Result<usize>;
    /// Stores `input` to writable attribute `attr`.
    fn store(&self, attr: usize, input: &[u8]) -> Result;
}

/// A sysfs attribute in the disk's group.
pub(crate) struct Attribute {
    /// File name.
    pub(crate) name: &'static CStr,
    /// Mode 0644 (else 0444).
    pub(crate) writable: bool,
}

/// How to create a disk.
pub(crate) struct DiskOptions<'a> {
    /// `disk_name` (e.g. `rmirror0`), at most 31 bytes.
    pub(crate) name: &'a CStr,
    /// The backing device whose queue limits are stacked.
    pub(crate) backing: &'a BackingDev,
    /// Size in 512-byte sectors.
    pub(crate) capacity: u64,
    /// Largest bio, in sectors.
    pub(crate) max_sectors: u32,
    /// Name of the attribute group directory under `/sys/block/<name>/`.
    pub(crate) group: &'static CStr,
    /// The attributes in that group.
    pub(crate) attrs: &'static [Attribute],
}

/// The callbacks of one `T`, reached from C through `private_data`.
struct VTable {
    submit_bio: unsafe fn(*mut c_void, *mut bindings::bio),
    open: unsafe fn(*mut c_void) -> c_int,
    show: unsafe fn(*mut c_void, usize, *mut c_char) -> isize,
    store: unsafe fn(*mut c_void, usize, *const c_char, usize) -> isize,
}

/// The part of [`Private<T>`] the untyped dispatchers read (its first fields).
#[repr(C)]
struct Header {
    vtable: &'static VTable,
    removing: AtomicBool,
}

/// What the gendisk's `private_data` points to.
#[repr(C)]
struct Private<T: Operations> {
    header: Header,
    data: Arc<T>,
}

impl<T: Operations> Private<T> {
    const VTABLE: VTable = VTable {
        submit_bio: Self::submit_bio,
        open: Self::open,
        show: Self::show,
        store: Self::store,
    };

    /// # Safety
    ///
    /// `p` must be the `private_data` of a live disk created by `Disk::<T>::create`.
    unsafe fn get<'a>(p: *mut c_void) -> &'a Self {
        // SAFETY: guaranteed by the caller: it points to the `Private<T>` its `Disk` keeps alive
        // until after del_gendisk, so for the duration of any callback.
        unsafe { &*p.cast::<Self>() }
    }

    /// # Safety
    ///
    /// As [`Self::get`]; `bio` is a live bio handed over by the block layer.
    unsafe fn submit_bio(p: *mut c_void, bio: *mut bindings::bio) {
        // SAFETY: per this function's contract.
        let this = unsafe { Self::get(p) };
        // SAFETY: `submit_bio` hands the bio over to us.
        if let Some(bio) = unsafe { Bio::from_raw(bio) } {
            T::submit_bio(&this.data, bio);
        }
    }

    /// # Safety
    ///
    /// As [`Self::get`].
    unsafe fn open(p: *mut c_void) -> c_int {
        // SAFETY: per this function's contract.
        let this = unsafe { Self::get(p) };
        if this.header.removing.load(Ordering::Acquire) {
            return ENXIO.to_errno();
        }
        match this.data.open() {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// As [`Self::get`]; `page` is a writable sysfs buffer of `PAGE_SIZE` bytes.
    unsafe fn show(p: *mut c_void, attr: usize, page: *mut c_char) -> isize {
        // SAFETY: sysfs passes a PAGE_SIZE buffer, exclusively ours for the call.
        let page = unsafe { core::slice::from_raw_parts_mut(page.cast::<u8>(), bindings::PAGE_SIZE as usize) };
        // SAFETY: per this function's contract.
        match unsafe { Self::get(p) }.data.show(attr, page) {
            Ok(n) => n as isize,
            Err(e) => e.to_errno() as isize,
        }
    }

    /// # Safety
    ///
    /// As [`Self::get`]; `buf` holds `len` readable bytes for the call.
    unsafe fn store(p: *mut c_void, attr: usize, buf: *const c_char, len: usize) -> isize {
        // SAFETY: sysfs passes `len` readable bytes, valid for the call.
        let input = unsafe { core::slice::from_raw_parts(buf.cast::<u8>(), len) };
        // SAFETY: per this function's contract.
        match unsafe { Self::get(p) }.data.store(attr, input) {
            Ok(()) => len as isize,
            Err(e) => e.to_errno() as isize,
        }
    }
}

/// A registered gendisk for `T`.
///
/// # Invariants
///
/// `raw` was returned by a successful `rmirror_disk_create` (allocated and added) with
/// `private_data` pointing to `*_private`, and is torn down only in `drop`, before `_private`
/// is freed (it is only reached through that pointer, hence the name).
pub(crate) struct Disk<T: Operations> {
    raw: NonNull<ffi::RawDisk>,
    _private: KBox<Private<T>>,
}

// SAFETY: gendisk teardown may happen from any thread; `T: Send + Sync`.
unsafe impl<T: Operations> Send for Disk<T> {}
// SAFETY: `&Disk` methods only call thread-safe kernel functions.
unsafe impl<T: Operations> Sync for Disk<T> {}

impl<T: Operations> Disk<T> {
    /// Creates and adds the disk `opts.name`, for `data`.
    pub(crate) fn create(data: Arc<T>, opts: &DiskOptions<'_>) -> Result<Self> {
        let mut private = KBox::new(
            Private { header: Header { vtable: &Private::<T>::VTABLE, removing: AtomicBool::new(false) }, data },
            GFP_KERNEL,
        )?;
        let mut attrs = KVec::with_capacity(opts.attrs.len(), GFP_KERNEL)?;
        for a in opts.attrs {
            attrs.push(ffi::AttrDesc { name: a.name.as_char_ptr(), writable: a.writable }, GFP_KERNEL)?;
        }
        let nattrs = c_uint::try_from(attrs.len()).map_err(|_| EINVAL)?;
        let p: *mut Private<T> = &raw mut *private;
        // SAFETY: `opts.backing` is an open block device; names are NUL-terminated, the group
        // and attribute names `'static`; `attrs` is read during the call only (the names are
        // copied as pointers to `'static` strings); `p` stays valid until after
        // `rmirror_disk_destroy` (type invariant, `drop`).
        let raw = from_err_ptr(unsafe {
            ffi::rmirror_disk_create(
                p.cast(),
                opts.name.as_char_ptr(),
                opts.backing.as_raw(),
                opts.capacity,
                opts.max_sectors,
                opts.group.as_char_ptr(),
                attrs.as_ptr(),
                nattrs,
            )
        })?;
        // INVARIANT: a successful create returns an added disk whose private data is `p`.
        Ok(Disk { raw: NonNull::new(raw).ok_or(ENOMEM)?, _private: private })
    }

    /// Refuses (`EBUSY`) if the disk is open; otherwise marks it so that no new open succeeds.
    pub(crate) fn begin_remove(&self) -> Result {
        // SAFETY: the disk is live by the type invariant.
        kernel::error::to_result(unsafe { ffi::rmirror_disk_begin_remove(self.raw.as_ptr()) })
    }

    /// Runs `f` while nobody has the disk open and no open can begin (under the disk's open
    /// mutex: `f` must not open the disk or sleep for long); `EBUSY` if it is open.
    pub(crate) fn if_closed<R>(&self, f: impl FnOnce() -> R) -> Result<R> {
        let raw = self.raw.as_ptr();
        // SAFETY: the disk is live by the type invariant; the lock is released below on
        // every path (`f` is a Rust closure: a panic would not return here, and the kernel
        // treats a panic as fatal anyway).
        unsafe { ffi::rmirror_disk_open_lock(raw) };
        // SAFETY: live disk; the open mutex is held.
        let open = unsafe { ffi::rmirror_disk_openers(raw) } > 0;
        let r = if open { Err(EBUSY) } else { Ok(f()) };
        // SAFETY: locked above by this thread.
        unsafe { ffi::rmirror_disk_open_unlock(raw) };
        r
    }
}

impl<T: Operations> Drop for Disk<T> {
    fn drop(&mut self) {
        // SAFETY: live by the type invariant, torn down exactly once; `self._private` is freed
        // after this (fields drop after `drop`), when del_gendisk has stopped every callback.
        unsafe { ffi::rmirror_disk_destroy(self.raw.as_ptr()) };
    }
}

/// # Safety
///
/// `p` must be the `private_data` of a live disk created by [`Disk::create`].
unsafe fn header<'a>(p: *mut c_void) -> &'a Header {
    // SAFETY: guaranteed by the caller; every `Private<T>` starts with a `Header` (repr(C)).
    unsafe { &*p.cast::<Header>() }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_disk_submit_bio(p: *mut c_void, bio: *mut bindings::bio) {
    // SAFETY: called by our fops->submit_bio with the disk's private data and a live bio that is
    // ours; the vtable entry belongs to the same `T` as `p`.
    unsafe { (header(p).vtable.submit_bio)(p, bio) }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_disk_open(p: *mut c_void) -> c_int {
    // SAFETY: called by our fops->open with the disk's private data.
    unsafe { (header(p).vtable.open)(p) }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_disk_mark_removing(p: *mut c_void) {
    // SAFETY: called by `rmirror_disk_begin_remove` (under the disk's open mutex) with the
    // disk's private data.
    unsafe { header(p) }.removing.store(true, Ordering::Release);
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_disk_show(p: *mut c_void, attr: c_uint, page: *mut c_char) -> isize {
    // SAFETY: called by our attributes' show with the disk's private data and a sysfs page.
    unsafe { (header(p).vtable.show)(p, attr as usize, page) }
}

#[no_mangle]
unsafe extern "C" fn rmirror_rs_disk_store(p: *mut c_void, attr: c_uint, buf: *const c_char, len: usize) -> isize {
    // SAFETY: called by our attributes' store with the disk's private data and the input.
    unsafe { (header(p).vtable.store)(p, attr as usize, buf, len) }
}
