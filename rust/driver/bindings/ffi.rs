// SPDX-License-Identifier: GPL-2.0
//! Declarations of the C shim's functions (see `shim.h`; keep the two in sync).
#![allow(improper_ctypes)] // struct bio and friends have zero-sized trailing arrays

use kernel::bindings::{bio, bio_end_io_t, block_device, file, socket, spinlock_t, task_struct};
use kernel::ffi::{c_char, c_int, c_uint, c_ulong, c_void};

/// `struct rmirror_disk` (opaque): a gendisk with its attribute group.
#[repr(C)]
pub(super) struct RawDisk {
    _private: [u8; 0],
}

/// `struct rmirror_bioset` (opaque): a bio set with front-padded clones and a live count.
#[repr(C)]
pub(super) struct RawBioSet {
    _private: [u8; 0],
}

/// `struct rmirror_attr_desc`.
#[repr(C)]
pub(super) struct AttrDesc {
    pub(super) name: *const c_char,
    pub(super) writable: bool,
}

unsafe extern "C" {
    pub(super) fn rmirror_disk_create(
        private: *mut c_void,
        name: *const c_char,
        backing: *mut block_device,
        capacity: u64,
        max_sectors: c_uint,
        group: *const c_char,
        attrs: *const AttrDesc,
        nattrs: c_uint,
    ) -> *mut RawDisk;
    pub(super) fn rmirror_disk_destroy(disk: *mut RawDisk);
    pub(super) fn rmirror_disk_begin_remove(disk: *mut RawDisk) -> c_int;
    pub(super) fn rmirror_disk_open_lock(disk: *mut RawDisk);
    pub(super) fn rmirror_disk_open_unlock(disk: *mut RawDisk);
    pub(super) fn rmirror_disk_openers(disk: *mut RawDisk) -> c_uint;
    pub(super) fn rmirror_bdev_nr_sectors(bdev: *mut block_device) -> u64;
    pub(super) fn rmirror_bdev_open_excl(path: *const c_char, holder: *mut c_void) -> *mut file;

    pub(super) fn rmirror_bioset_create(front_pad: c_uint) -> *mut RawBioSet;
    pub(super) fn rmirror_bioset_drain(bs: *mut RawBioSet);
    pub(super) fn rmirror_bioset_destroy(bs: *mut RawBioSet);
    pub(super) fn rmirror_clone_alloc(
        orig: *mut bio,
        bdev: *mut block_device,
        bs: *mut RawBioSet,
        end_io: bio_end_io_t,
    ) -> *mut bio;
    pub(super) fn rmirror_clone_free(clone: *mut bio);
    pub(super) fn rmirror_bio_remap(bio: *mut bio, bdev: *mut block_device);
    pub(super) fn rmirror_bio_submit(bio: *mut bio);
    pub(super) fn rmirror_bio_endio(bio: *mut bio, status: u8);
    pub(super) fn rmirror_acct_start(bio: *mut bio, start: *mut c_ulong) -> bool;
    pub(super) fn rmirror_acct_end(bio: *mut bio, start: c_ulong);
    pub(super) fn rmirror_bio_copy_to(bio: *mut bio, buf: *mut c_void, len: usize) -> usize;
    pub(super) fn rmirror_bio_copy_from(bio: *mut bio, buf: *const c_void, len: usize) -> usize;
    pub(super) fn rmirror_write_sync(
        bdev: *mut block_device,
        sector: u64,
        buf: *const c_void,
        len: usize,
        preflush: bool,
        fua: bool,
    ) -> c_int;
    pub(super) fn rmirror_write_async(
        bdev: *mut block_device,
        sector: u64,
        buf: *const c_void,
        len: usize,
        preflush: bool,
        fua: bool,
        end_io: bio_end_io_t,
        private: *mut c_void,
    ) -> c_int;
    pub(super) fn rmirror_buf_bio_done(bio: *mut bio, private: *mut *mut c_void) -> u8;
    pub(super) fn rmirror_read_sync(bdev: *mut block_device, sector: u64, buf: *mut c_void, len: usize) -> c_int;

    pub(super) fn rmirror_sock_listen(addr: u32, port: u16, res: *mut *mut socket) -> c_int;
    pub(super) fn rmirror_sock_accept(lsock: *mut socket, res: *mut *mut socket) -> c_int;
    pub(super) fn rmirror_sock_connect(addr: u32, port: u16, res: *mut *mut socket) -> c_int;
    pub(super) fn rmirror_sock_send(sock: *mut socket, buf: *const c_void, len: usize, more: bool) -> c_int;
    pub(super) fn rmirror_sock_send_bio(sock: *mut socket, bio: *mut bio, skip: c_uint, more: bool, lend: bool)
        -> c_int;
    pub(super) fn rmirror_sock_recv(sock: *mut socket, buf: *mut c_void, len: usize) -> c_int;
    pub(super) fn rmirror_sock_shutdown(sock: *mut socket);
    pub(super) fn rmirror_sock_abort(sock: *mut socket);
    pub(super) fn rmirror_sock_release(sock: *mut socket);
    pub(super) fn rmirror_sock_peer(sock: *mut socket, addr: *mut u32, port: *mut u16) -> c_int;
    pub(super) fn rmirror_sock_set_rcvtimeo(sock: *mut socket, ms: c_uint);
    pub(super) fn rmirror_sock_set_sndbuf(sock: *mut socket, bytes: c_uint);

    pub(super) fn rmirror_fault_init();
    pub(super) fn rmirror_fault_exit();
    pub(super) fn rmirror_thread_start(
        f: unsafe extern "C" fn(*mut c_void) -> c_int,
        data: *mut c_void,
        name: *const c_char,
    ) -> *mut task_struct;
    pub(super) fn rmirror_thread_stop(task: *mut task_struct) -> c_int;
    pub(super) fn rmirror_spin_lock_irqsave(lock: *mut spinlock_t) -> c_ulong;
    pub(super) fn rmirror_spin_trylock_irqsave(lock: *mut spinlock_t, flags: *mut c_ulong) -> bool;
    pub(super) fn rmirror_spin_unlock_irqrestore(lock: *mut spinlock_t, flags: c_ulong);
    pub(super) fn rmirror_module_get() -> bool;
    pub(super) fn rmirror_module_put();
    pub(super) fn rmirror_noio_save() -> c_uint;
    pub(super) fn rmirror_noio_restore(flags: c_uint);
}
