// SPDX-License-Identifier: GPL-2.0
//! The module-global device registry lock (`global_lock!`), initialized once at module load.

use core::pin::Pin;
use core::sync::atomic::{AtomicBool, Ordering};

kernel::sync::global_lock! {
    // SAFETY: initialized by `init()` from module init, before any other use.
    pub(crate) unsafe(uninit) static DEVICES: Mutex<crate::control::Registry> = crate::control::Registry::new();
}

static INITIALIZED: AtomicBool = AtomicBool::new(false);

/// Initializes [`DEVICES`]; later calls do nothing.
pub(crate) fn init() {
    if !INITIALIZED.swap(true, Ordering::AcqRel) {
        // SAFETY: the swap above makes this the only call; module init runs it before any
        // ioctl or device can use the lock.
        unsafe { DEVICES.init() };
    }
}
