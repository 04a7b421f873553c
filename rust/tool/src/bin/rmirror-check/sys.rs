// SPDX-License-Identifier: GPL-2.0
//! System interfaces: opening devices, whole-buffer positioned I/O, aligned buffers and the
//! stop signals. The only `unsafe` in rmirror-check is here.

use std::alloc::{self, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};

/// Alignment of I/O buffers: enough for O_DIRECT on any logical block size up to 4096.
pub const ALIGN: usize = 4096;

/// Opens `path` for reading, or for writing with `write`; `direct` adds O_DIRECT and `dsync`
/// O_DSYNC (every write reaches stable storage before it returns).
pub fn open_dev(path: &Path, write: bool, direct: bool, dsync: bool) -> io::Result<File> {
    let mut flags = 0;
    if direct {
        flags |= libc::O_DIRECT;
    }
    if dsync {
        flags |= libc::O_DSYNC;
    }
    OpenOptions::new()
        .read(!write)
        .write(write)
        .custom_flags(flags)
        .open(path)
}

/// Length in bytes of a block device or regular file (`lseek(SEEK_END)` works for both).
pub fn dev_len(file: &File) -> io::Result<u64> {
    let mut f = file;
    f.seek(SeekFrom::End(0))
}

/// Writes all of `buf` at `pos` (`pwrite(2)`, repeated after short writes and EINTR).
/// Errors always carry an errno: a write of 0 bytes becomes `EIO`.
pub fn write_all_at(file: &File, buf: &[u8], pos: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], pos + done as u64) {
            Ok(0) => return Err(io::Error::from_raw_os_error(libc::EIO)),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A zero-filled heap buffer aligned to [`ALIGN`], as O_DIRECT requires.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively, like `Vec<u8>`; no shared state.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` (> 0) zero bytes.
    pub fn new(len: usize) -> io::Result<AlignedBuf> {
        let layout = Layout::from_size_align(len, ALIGN)
            .ok()
            .filter(|l| l.size() > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: `layout` has a non-zero size (checked above).
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        NonNull::new(ptr)
            .map(|ptr| AlignedBuf { ptr, layout })
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` initialised (zeroed at allocation) bytes owned
        // by `self`, alive until drop; the shared borrow of `self` prevents mutation meanwhile.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`; the exclusive borrow of `self` makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was returned by `alloc_zeroed(layout)` and is freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Set by SIGINT and SIGTERM once [`catch_stop_signals`] has run.
pub static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_signal: libc::c_int) {
    // A lock-free atomic store is async-signal-safe.
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set [`STOP`] instead of ending the process. SA_RESTART keeps
/// system calls from failing with EINTR; SIGKILL still ends the process at once.
pub fn catch_stop_signals() -> io::Result<()> {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: an all-zero `sigaction` is a valid value (no flags, empty mask, SIG_DFL).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action.sa_mask` is a valid, exclusively borrowed sigset_t.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: `action` is fully initialised and outlives the call; the handler only performs
        // an async-signal-safe atomic store; the old action is not requested (null).
        if unsafe { libc::sigaction(signal, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers() {
        for len in [512, 4096, 1 << 20] {
            let mut b = AlignedBuf::new(len).unwrap();
            assert_eq!(b.len(), len);
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            assert!(b.iter().all(|&x| x == 0));
            b[len - 1] = 7;
            assert_eq!(b[len - 1], 7);
        }
        assert!(AlignedBuf::new(0).is_err());
    }

    #[test]
    fn positioned_io_and_length() {
        let path = std::env::temp_dir().join(format!("rmirror-check-sys-{}", std::process::id()));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        write_all_at(&f, b"abc", 4096).unwrap();
        assert_eq!(dev_len(&f).unwrap(), 4099);
        let mut back = [0u8; 3];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert_eq!(&back, b"abc");
        drop(f);
        let ro = open_dev(&path, false, false, false).unwrap();
        assert!(write_all_at(&ro, b"x", 0).is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(open_dev(&path, false, false, false).is_err());
    }
}
