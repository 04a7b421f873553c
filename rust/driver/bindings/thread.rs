// SPDX-License-Identifier: GPL-2.0
//! Kernel threads (`kthread_create` + `kthread_stop`), each running a function on shared data.
//!
//! The [`Thread`] handle owns the thread's start argument and frees it only after
//! `kthread_stop` has returned: a thread stopped before it ever ran never calls its function
//! (`kthread()` checks for a stop first), so the argument cannot be handed to the thread to free.

use super::ffi;
use core::ptr::NonNull;
use kernel::bindings;
use kernel::error::from_err_ptr;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;
use kernel::str::CStr;
use kernel::sync::Arc;

/// What a thread runs: `f(&data)`.
struct Start<T: Send + Sync + 'static> {
    data: Arc<T>,
    f: fn(&Arc<T>),
}

/// A running kernel thread; dropping it stops it and waits for it to exit.
///
/// # Invariants
///
/// `task` is a kthread started by `rmirror_thread_start` with a task reference held, stopped
/// and released only in `drop`. `arg` is a `KBox<Start<T>>` leaked for it, freed by `free` (the
/// matching `free_start::<T>`) only in `drop`, after the stop.
pub(crate) struct Thread {
    task: NonNull<bindings::task_struct>,
    arg: NonNull<c_void>,
    free: unsafe fn(NonNull<c_void>),
}

// SAFETY: a kthread may be stopped from any thread; the argument is `Send + Sync`.
unsafe impl Send for Thread {}
// SAFETY: no `&self` methods.
unsafe impl Sync for Thread {}

/// The thread function: runs `f(&data)`, then waits to be stopped.
///
/// # Safety
///
/// `arg` must be a `Start<T>` that stays alive until `kthread_stop` returns for this thread.
unsafe extern "C" fn trampoline<T: Send + Sync + 'static>(arg: *mut c_void) -> c_int {
    // SAFETY: per this function's contract, alive while the thread runs; only shared access.
    let start = unsafe { &*arg.cast::<Start<T>>() };
    (start.f)(&start.data);
    // Like every kthread that may be stopped, wait for kthread_stop() before exiting.
    while !should_stop() {
        // SAFETY: plain sleep; `kthread_stop` wakes us.
        unsafe { bindings::schedule_timeout_interruptible(bindings::HZ as _) };
    }
    0
}

/// Frees a start argument.
///
/// # Safety
///
/// `arg` must come from `KBox::<Start<T>>::into_raw` and not be used afterwards.
unsafe fn free_start<T: Send + Sync + 'static>(arg: NonNull<c_void>) {
    // SAFETY: per this function's contract.
    drop(unsafe { KBox::from_raw(arg.as_ptr().cast::<Start<T>>()) });
}

impl Thread {
    /// Starts thread `name` running `f(&data)`. Errors are the kernel's (or the
    /// `fail_rmirror_thread` fault injection's `ENOMEM`).
    pub(crate) fn start<T: Send + Sync + 'static>(name: &CStr, data: Arc<T>, f: fn(&Arc<T>)) -> Result<Self> {
        let arg = KBox::into_raw(KBox::new(Start { data, f }, GFP_KERNEL)?);
        // SAFETY: `arg` is a valid `Start<T>`, freed only after the thread is stopped (`drop`,
        // or below when no thread was created); `name` is a valid C string, copied.
        let task = from_err_ptr(unsafe { ffi::rmirror_thread_start(trampoline::<T>, arg.cast(), name.as_char_ptr()) })
            .and_then(|t| NonNull::new(t).ok_or(ENOMEM));
        let task = match task {
            Ok(t) => t,
            Err(e) => {
                // SAFETY: no thread was created, so `arg` is still ours alone.
                drop(unsafe { KBox::from_raw(arg) });
                return Err(e);
            }
        };
        // INVARIANT: started with a task reference held; `arg` leaked for it, freed in `drop`.
        Ok(Thread { task, arg: NonNull::new(arg.cast()).ok_or(EINVAL)?, free: free_start::<T> })
    }
}

impl Drop for Thread {
    fn drop(&mut self) {
        // SAFETY: started and referenced by the type invariant; stopped exactly once. After this
        // the thread function is not running and never will.
        unsafe { ffi::rmirror_thread_stop(self.task.as_ptr()) };
        // SAFETY: `arg` is the `Start<T>` for `free` (type invariant), unused from now on.
        unsafe { (self.free)(self.arg) };
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

/// Sets up the module's fault-injection points (`/sys/kernel/debug/fail_rmirror_thread/`).
pub(crate) fn fault_init() {
    // SAFETY: called once from module init.
    unsafe { ffi::rmirror_fault_init() };
}

/// Removes them (module exit).
pub(crate) fn fault_exit() {
    // SAFETY: called once from module exit, after `fault_init`.
    unsafe { ffi::rmirror_fault_exit() };
}
