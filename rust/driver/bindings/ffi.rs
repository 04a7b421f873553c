// SPDX-License-Identifier: GPL-2.0
//! Declarations of the C shim's functions (see `shim.h`; keep the two in sync).
#![allow(improper_ctypes)] // struct bio and friends have zero-sized trailing arrays

use kernel::bindings::{bio, bio_set, block_device, gendisk, socket, task_struct};
use kernel::ffi::{c_char, c_int, c_uint, c_void};

unsafe extern "C" {
    pub(super) fn rmirror_disk_create(
        dev: *mut c_void,
        index: c_int,
        backing: *mut block_device,
        capacity: u64,
        max_sectors: c_uint,
    ) -> *mut gendisk;
    pub(super) fn rmirror_disk_destroy(disk: *mut gendisk);
    pub(super) fn rmirror_disk_begin_remove(disk: *mut gendisk) -> c_int;
    pub(super) fn rmirror_bdev_nr_sectors(bdev: *mut block_device) -> u64;

    pub(super) fn rmirror_bioset_create() -> *mut bio_set;
    pub(super) fn rmirror_bioset_destroy(bs: *mut bio_set);
    pub(super) fn rmirror_bio_remap(bio: *mut bio, bdev: *mut block_device);
    pub(super) fn rmirror_bio_copy_to_buf(bio: *mut bio, buf: *mut c_void, len: usize);
    pub(super) fn rmirror_bio_submit_clone(
        orig: *mut bio,
        bdev: *mut block_device,
        bs: *mut bio_set,
        req: *mut c_void,
    ) -> c_int;
    pub(super) fn rmirror_bio_endio(bio: *mut bio, status: u8);
    pub(super) fn rmirror_write_sync(
        bdev: *mut block_device,
        sector: u64,
        buf: *const c_void,
        len: usize,
        preflush: bool,
        fua: bool,
    ) -> c_int;

    pub(super) fn rmirror_sock_listen(addr: u32, port: u16, res: *mut *mut socket) -> c_int;
    pub(super) fn rmirror_sock_accept(lsock: *mut socket, res: *mut *mut socket) -> c_int;
    pub(super) fn rmirror_sock_connect(addr: u32, port: u16, res: *mut *mut socket) -> c_int;
    pub(super) fn rmirror_sock_send(sock: *mut socket, buf: *const c_void, len: usize, more: bool) -> c_int;
    pub(super) fn rmirror_sock_recv(sock: *mut socket, buf: *mut c_void, len: usize) -> c_int;
    pub(super) fn rmirror_sock_shutdown(sock: *mut socket);
    pub(super) fn rmirror_sock_release(sock: *mut socket);
    pub(super) fn rmirror_sock_peer(sock: *mut socket, addr: *mut u32, port: *mut u16) -> c_int;

    pub(super) fn rmirror_thread_start(
        f: unsafe extern "C" fn(*mut c_void) -> c_int,
        data: *mut c_void,
        name: *const c_char,
    ) -> *mut task_struct;
    pub(super) fn rmirror_thread_stop(task: *mut task_struct) -> c_int;

    pub(super) fn rmirror_noio_save() -> c_uint;
    pub(super) fn rmirror_noio_restore(flags: c_uint);
}
