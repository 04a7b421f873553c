// SPDX-License-Identifier: GPL-2.0
//! The only `unsafe` in rmirrorctl: raw `ioctl(2)` calls and `strerror_r(3)`.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use rmirror_core::abi;

/// `BLKGETSIZE64` = `_IOR(0x12, 114, size_t)`: size of a block device in bytes.
pub const BLKGETSIZE64: u32 = abi::ior(0x12, 114, std::mem::size_of::<u64>());

/// Issues `ioctl(file, request, buf)` with a pointer to `buf` as argument.
///
/// The kernel may read and write up to the size encoded in `request`; callers pass a buffer at
/// least that large (checked here, so a mismatch cannot become an out-of-bounds kernel write).
pub fn ioctl_buf(file: &File, request: u32, buf: &mut [u8]) -> io::Result<i32> {
    let encoded_size = ((request >> abi::IOC_SIZESHIFT) as usize) & abi::IOC_SIZE_MAX;
    if buf.len() < encoded_size {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `file` is an open descriptor for the duration of the call; `buf` is a live,
    // exclusively borrowed allocation of at least `encoded_size` bytes (checked above), which is
    // the most the kernel's _IOC-encoded copy_{from,to}_user may access. No other memory is
    // touched, and the pointer does not outlive the call.
    let rc = unsafe {
        libc::ioctl(
            file.as_raw_fd(),
            request as libc::Ioctl,
            buf.as_mut_ptr().cast::<libc::c_void>(),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Size in bytes of the block device open as `file` (`BLKGETSIZE64`).
pub fn blkgetsize64(file: &File) -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    ioctl_buf(file, BLKGETSIZE64, &mut bytes)?;
    // The kernel stores a native-endian u64.
    Ok(u64::from_ne_bytes(bytes))
}

/// The C library's message for `errno` (e.g. "Invalid argument").
pub fn strerror(errno: i32) -> String {
    let mut buf = [0 as libc::c_char; 256];
    // SAFETY: `buf` is a writable array of `buf.len()` bytes; the XSI strerror_r (libc links it
    // to `__xpg_strerror_r` on glibc) writes at most `buflen` bytes including a NUL terminator
    // and returns non-zero on failure, in which case the buffer is not read.
    let rc = unsafe { libc::strerror_r(errno, buf.as_mut_ptr(), buf.len()) };
    if rc != 0 {
        return format!("Unknown error {errno}");
    }
    // SAFETY: on success strerror_r NUL-terminated the message inside `buf`, which stays alive
    // and unmodified while the CStr borrows it.
    let msg = unsafe { CStr::from_ptr(buf.as_ptr()) };
    msg.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkgetsize64_number() {
        assert_eq!(BLKGETSIZE64, 0x8008_1272);
    }

    #[test]
    fn strerror_messages() {
        assert_eq!(strerror(libc::EINVAL), "Invalid argument");
        assert_eq!(strerror(libc::ENOENT), "No such file or directory");
        assert!(!strerror(99999).is_empty());
    }

    #[test]
    fn ioctl_on_regular_file_is_enotty() {
        let f = File::open("/proc/self/stat").unwrap();
        let mut buf = [0u8; abi::BUF_LEN];
        let err = ioctl_buf(&f, abi::IOC_VERSION, &mut buf).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOTTY));
        let mut small = [0u8; 8];
        let err = ioctl_buf(&f, abi::IOC_VERSION, &mut small).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
