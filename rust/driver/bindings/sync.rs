// SPDX-License-Identifier: GPL-2.0
//! A spinlock that disables interrupts while held (`spin_lock_irqsave`), for state shared with
//! bio completions, which may run in hard-irq context. Upstream Rust 7.2 has no such lock type;
//! this is a [`Backend`] for the kernel's generic [`Lock`], so guards, `CondVar` waits and
//! lockdep classes work as for [`kernel::sync::SpinLock`].

use super::ffi;
use kernel::bindings;
use kernel::ffi::{c_char, c_ulong};
use kernel::sync::lock::{Backend, Lock};

/// A spinlock taken with interrupts disabled. Created like any kernel lock:
/// `IrqSpinLock::new(data, c"name", kernel::static_lock_class!())` (one lockdep class per site).
pub(crate) type IrqSpinLock<T> = Lock<T, IrqSpinLockBackend>;

/// The `spin_lock_irqsave` backend.
pub(crate) struct IrqSpinLockBackend;

// SAFETY: `spinlock_t` gives mutual exclusion; `relock` (default) uses the same `lock`.
unsafe impl Backend for IrqSpinLockBackend {
    type State = bindings::spinlock_t;
    type GuardState = c_ulong;

    unsafe fn init(ptr: *mut Self::State, name: *const c_char, key: *mut bindings::lock_class_key) {
        // SAFETY: the caller guarantees `ptr` is valid for writes and `name`/`key` live forever.
        unsafe { bindings::__spin_lock_init(ptr, name, key) }
    }

    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: the caller guarantees `ptr` was initialized by `init`.
        unsafe { ffi::rmirror_spin_lock_irqsave(ptr) }
    }

    unsafe fn try_lock(ptr: *mut Self::State) -> Option<Self::GuardState> {
        let mut flags: c_ulong = 0;
        // SAFETY: the caller guarantees `ptr` was initialized by `init`; `flags` is writable.
        unsafe { ffi::rmirror_spin_trylock_irqsave(ptr, &mut flags) }.then_some(flags)
    }

    unsafe fn unlock(ptr: *mut Self::State, guard_state: &Self::GuardState) {
        // SAFETY: the caller owns the lock; `guard_state` holds the flags its `lock` saved.
        unsafe { ffi::rmirror_spin_unlock_irqrestore(ptr, *guard_state) }
    }

    unsafe fn assert_is_held(ptr: *mut Self::State) {
        // SAFETY: the caller guarantees `ptr` was initialized by `init`.
        unsafe { bindings::spin_assert_is_held(ptr) }
    }
}
