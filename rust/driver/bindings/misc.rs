// SPDX-License-Identifier: GPL-2.0
//! A misc character device (`/dev/<name>`) whose ioctls reach driver data owned with it.
//!
//! Upstream's `MiscDeviceRegistration` gives an open file only the registration; this wraps the
//! registration and the driver's data in one pinned value, so each open file can find the data
//! (`container_of`), and the driver implements [`ControlOps`] in safe code.

use core::ptr::NonNull;
use kernel::fs::File;
use kernel::miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration};
use kernel::prelude::*;
use kernel::str::CStr;

/// What the driver does for ioctls on its control device.
pub(crate) trait ControlOps: Send + Sync + 'static {
    /// One ioctl (process context); `arg` is the user's argument.
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize>;
}

/// A registered misc device and the data its ioctls use.
///
/// # Invariants
///
/// `data` is pinned beside `reg` and outlives the registration (fields drop in order: `reg`
/// deregisters first).
#[pin_data]
pub(crate) struct ControlDevice<T: ControlOps> {
    #[pin]
    reg: MiscDeviceRegistration<OpenFile<T>>,
    #[pin]
    data: T,
}

impl<T: ControlOps> ControlDevice<T> {
    /// Registers `/dev/<name>` with `data`.
    pub(crate) fn register(name: &'static CStr, data: impl PinInit<T, Error>) -> impl PinInit<Self, Error> {
        try_pin_init!(Self {
            reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name }),
            data <- data,
        }? Error)
    }

    /// The driver data.
    pub(crate) fn data(&self) -> &T {
        &self.data
    }
}

/// An open file of the control device: a pointer to the device's data.
///
/// # Invariants
///
/// `0` points to the `data` of the live, pinned [`ControlDevice`] this file was opened on. That
/// device lives in the module and is dropped at module exit, which cannot begin while a file is
/// open: each open file holds a module reference (upstream's miscdevice sets no fops owner, so
/// `open` takes it and the file's release gives it back; `rmmod` fails while one is open, as
/// for device-mapper's control device). The reference is dropped as the last step of the
/// release; only the return from it runs after that, as with `module_put_and_kthread_exit`'s
/// callers before it existed.
pub(crate) struct OpenFile<T: ControlOps>(NonNull<T>);

impl<T: ControlOps> Drop for OpenFile<T> {
    fn drop(&mut self) {
        // SAFETY: every `OpenFile` was made by `open` after its module reference was taken.
        unsafe { super::ffi::rmirror_module_put() };
    }
}

// SAFETY: only `&T` is reached through the pointer, and `T: Send + Sync`.
unsafe impl<T: ControlOps> Send for OpenFile<T> {}
// SAFETY: as above.
unsafe impl<T: ControlOps> Sync for OpenFile<T> {}

#[vtable]
impl<T: ControlOps> MiscDevice for OpenFile<T> {
    type Ptr = KBox<Self>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        // SAFETY: no preconditions; a reference taken here is dropped by `OpenFile`'s drop.
        if !unsafe { super::ffi::rmirror_module_get() } {
            return Err(ENODEV); // the module is going away
        }
        let misc: *const MiscDeviceRegistration<Self> = misc;
        // SAFETY: every registration of `OpenFile<T>` is the `reg` field of a `ControlDevice<T>`
        // (the only constructor is `ControlDevice::register`), which is alive while it is
        // registered and opened.
        let dev = unsafe { kernel::container_of!(misc.cast_mut(), ControlDevice<T>, reg) };
        // SAFETY: `dev` is live (above); `data` is a field of it.
        let data = unsafe { NonNull::new_unchecked(&raw mut (*dev).data) };
        // INVARIANT: points to the data of the device being opened.
        // (On an allocation failure the new `OpenFile`'s drop gives the reference back.)
        Ok(KBox::new(OpenFile(data), GFP_KERNEL)?)
    }

    fn ioctl(me: &OpenFile<T>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        // SAFETY: the data outlives open files (type invariant); only shared references exist.
        unsafe { me.0.as_ref() }.ioctl(cmd, arg)
    }
}
