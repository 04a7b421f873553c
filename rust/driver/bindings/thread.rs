// SPDX-License-Identifier: GPL-2.0
//! Kernel threads (`kthread_create` + `kthread_stop`), each running a function on shared data.

use super::ffi;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

/// A running kernel thread; dropping it stops it and waits for it to exit.
///
/// # Invariants
///
/// `0` is a kthread started by `rmirror_thread_start` holding a task reference, stopped and
/// released only in `drop`.
pub(crate) struct Thread(NonNull<bindings::task_struct>);

// SAFETY: a kthread may be stopped from any thread.
unsafe impl Send for Thread {}
// SAFETY: no `&self` methods.
unsafe impl Sync for Thread {}

struct Start<T: Send + Sync + 'static> {
    data: Arc<T>,
    f: fn(&Arc<T>),
}

unsafe extern "C" fn trampoline<T: Send + Sync + 'static>(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the `KBox<Start<T>>` leaked by `Thread::start`, reclaimed exactly once.
    let start = unsafe { KBox::from_raw(arg.cast::<Start<T>>()) };
    (start.f)(&start.data);
    // Like every kthread that may be stopped, wait for kthread_stop() before exiting.
    while !should_stop() {
        // SAFETY: plain sleep; `kthread_stop` wakes us.
        unsafe { bindings::schedule_timeout_interruptible(bindings::HZ as _) };
    }
    0
}

impl Thread {
    /// Starts thread `name` running `f(&data)`.
    pub(crate) fn start<T: Send + Sync + 'static>(name: &CStr, data: Arc<T>, f: fn(&Arc<T>)) -> Result<Self> {
        let arg = KBox::into_raw(KBox::new(Start { data, f }, GFP_KERNEL)?);
        // SAFETY: `trampoline::<T>` matches `arg`'s type; `name` is a valid C string.
        let task = unsafe { ffi::rmirror_thread_start(trampoline::<T>, arg.cast(), name.as_char_ptr()) };
        if task.is_null() || kernel::error::from_err_ptr(task).is_err() {
            // SAFETY: the thread was not created, so `arg` is still ours.
            drop(unsafe { KBox::from_raw(arg) });
            return Err(ENOMEM);
        }
        // INVARIANT: started with a task reference held.
        Ok(Thread(NonNull::new(task).ok_or(ENOMEM)?))
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        // SAFETY: started and referenced by the type invariant; stopped exactly once.
        unsafe { ffi::rmirror_thread_stop(self.0.as_ptr()) };
    }
}

/// Whether the current kthread has been asked to stop.
pub(crate) fn should_stop() -> bool {
    // SAFETY: only called from our kthreads.
    unsafe { bindings::kthread_should_stop() }
}

/// Sleeps for about `ms` milliseconds (process context only).
pub(crate) fn sleep_ms(ms: u32) {
    // SAFETY: `msleep` only sleeps; callers are in process context.
    unsafe { bindings::msleep(ms) };
}
