// SPDX-License-Identifier: GPL-2.0
//! The bindings layer: the only place in the driver with `unsafe`.
//!
//! Upstream Rust has blk-mq abstractions only, so bio-based disks, bios, opened block devices,
//! kernel sockets, kernel threads and an irq-safe spinlock get small safe wrappers here, over
//! `kernel::bindings` and the C shim (`shim.c`, for static inlines, macros and the fixed C
//! tables). The layer is generic: it names no driver type. The driver plugs in through traits
//! ([`disk::Operations`] for a disk's callbacks, [`bio::CloneData`] for the data and completion
//! of a cloned bio) and owned values (`Arc`, boxes) handed over as opaque pointers. Everything
//! above this module is safe Rust; every `unsafe` block below carries a `// SAFETY:` comment,
//! every unsafe function a `# Safety` section and every wrapper type an `# Invariants` section.

pub(crate) mod bdev;
pub(crate) mod bio;
pub(crate) mod disk;
mod ffi;
pub(crate) mod misc;
pub(crate) mod net;
pub(crate) mod sync;
pub(crate) mod thread;

/// Kernel error codes that `kernel::error::code` does not name.
pub(crate) mod errno {
    use kernel::bindings;
    use kernel::error::Error;

    fn e(code: u32) -> Error {
        Error::from_errno(-(code as i32))
    }
    /// `ECONNRESET`: the peer closed the connection.
    pub(crate) fn econnreset() -> Error {
        e(bindings::ECONNRESET)
    }
    /// `ESHUTDOWN`: we were asked to stop.
    pub(crate) fn eshutdown() -> Error {
        e(bindings::ESHUTDOWN)
    }
    /// `EMEDIUMTYPE`: the device is in the wrong role for this (DRBD's answer to opening a
    /// secondary).
    pub(crate) fn emediumtype() -> Error {
        e(bindings::EMEDIUMTYPE)
    }
    /// `ENODATA`: no data available (no up-to-date data to be primary with).
    pub(crate) fn enodata() -> Error {
        e(bindings::ENODATA)
    }
    /// `EOPNOTSUPP`: operation not supported.
    pub(crate) fn eopnotsupp() -> Error {
        e(bindings::EOPNOTSUPP)
    }
    /// `EALREADY`: the operation is in progress already (connecting a device that is not
    /// standalone).
    pub(crate) fn ealready() -> Error {
        e(bindings::EALREADY)
    }
    /// `ENOTCONN`: not connected (nothing to pull a detached disk's data from).
    pub(crate) fn enotconn() -> Error {
        e(bindings::ENOTCONN)
    }
}

/// Runs `f` in a `memalloc_noio` scope: allocations inside behave as GFP_NOIO, so the I/O
/// path never recurses into reclaim that could wait for our own device.
pub(crate) fn noio<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: no preconditions; the flags are restored below on the same task.
    let flags = unsafe { ffi::rmirror_noio_save() };
    let r = f();
    // SAFETY: restores what the matching save returned, on the same task.
    unsafe { ffi::rmirror_noio_restore(flags) };
    r
}

/// Capability check for the control device (`capable(CAP_SYS_ADMIN)`).
pub(crate) fn capable_sys_admin() -> bool {
    // SAFETY: `capable` has no preconditions; it only inspects the current task's credentials.
    unsafe { kernel::bindings::capable(kernel::bindings::CAP_SYS_ADMIN as i32) }
}

/// A random `u64` from the kernel's CRNG (`get_random_u64`), callable in any context.
pub(crate) fn random_u64() -> u64 {
    // SAFETY: `get_random_u64` has no preconditions; it may be called from any context.
    unsafe { kernel::bindings::get_random_u64() }
}
