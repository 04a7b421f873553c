// SPDX-License-Identifier: GPL-2.0
//! Kernel TCP sockets (IPv4 for now): listen, accept, connect, whole-buffer send and receive.
//!
//! Every socket has a one-second receive timeout, so a blocked receiver or acceptor regularly
//! gets `EAGAIN` and can check whether it was asked to stop; `shutdown` wakes it at once.

use super::{bio::Bio, ffi};
use core::ptr::NonNull;
use kernel::bindings;
use kernel::ffi::c_int;
use kernel::error::to_result;
use kernel::prelude::*;
use super::errno::{econnreset, eshutdown};

/// An IPv4 socket address in host byte order.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct SockAddr {
    /// Address, host byte order (10.0.0.1 is 0x0a000001).
    pub(crate) ip: u32,
    /// Port.
    pub(crate) port: u16,
}

/// A kernel socket.
///
/// # Invariants
///
/// `0` is a socket created by the shim (`sock_create_kern` or `kernel_accept`), released only in
/// `drop`, so it stays valid while any `&Socket` exists.
pub(crate) struct Socket(NonNull<bindings::socket>);

// SAFETY: kernel sockets may be used from any thread; the socket layer locks internally.
unsafe impl Send for Socket {}
// SAFETY: concurrent send (one thread), receive (one thread) and shutdown are supported by TCP.
unsafe impl Sync for Socket {}

/// Whether a blocking socket call returned early (timeout tick or signal) and may be retried.
fn retry(ret: c_int) -> bool {
    ret == -(bindings::EAGAIN as i32) || ret == -(bindings::EINTR as i32) || ret == -(bindings::ERESTARTSYS as i32)
}

/// Repeats `step(done)` (one send or receive call returning a byte count or `-errno`) until
/// `len` bytes are through: zero bytes means the peer closed; timeout ticks consult `stop`.
fn whole(len: usize, stop: &dyn Fn() -> bool, mut step: impl FnMut(usize) -> c_int) -> Result {
    let mut done = 0;
    while done < len {
        let ret = step(done);
        if ret > 0 {
            done += ret as usize;
            // A partial transfer: the call waited a whole tick in all (a stream that trickles in
            // never times out): consult `stop` here too, so a heartbeat runs during long frames.
            if done < len && stop() {
                return Err(eshutdown());
            }
        } else if ret == 0 {
            return Err(econnreset());
        } else if !retry(ret) {
            return Err(Error::from_errno(ret));
        } else if stop() {
            return Err(eshutdown());
        }
    }
    Ok(())
}

impl Socket {
    fn from_ret(ret: c_int, sock: *mut bindings::socket) -> Result<Self> {
        to_result(ret)?;
        // INVARIANT: on success the shim stored a new socket.
        NonNull::new(sock).map(Socket).ok_or(EINVAL)
    }

    /// A listening socket bound to `addr`.
    pub(crate) fn listen(addr: SockAddr) -> Result<Self> {
        let mut s = core::ptr::null_mut();
        // SAFETY: `s` is a valid out pointer.
        let ret = unsafe { ffi::rmirror_sock_listen(addr.ip, addr.port, &mut s) };
        Self::from_ret(ret, s)
    }

    /// Waits for one connection; `Ok(None)` after a receive-timeout tick (check for stop, retry).
    pub(crate) fn accept(&self) -> Result<Option<Socket>> {
        let mut s = core::ptr::null_mut();
        // SAFETY: `self.0` is valid (invariant); `s` is a valid out pointer.
        let ret = unsafe { ffi::rmirror_sock_accept(self.0.as_ptr(), &mut s) };
        if retry(ret) {
            return Ok(None);
        }
        Self::from_ret(ret, s).map(Some)
    }

    /// Connects to `addr`.
    pub(crate) fn connect(addr: SockAddr) -> Result<Self> {
        let mut s = core::ptr::null_mut();
        // SAFETY: `s` is a valid out pointer.
        let ret = unsafe { ffi::rmirror_sock_connect(addr.ip, addr.port, &mut s) };
        Self::from_ret(ret, s)
    }

    /// Sends all of `buf`; `more` hints that another buffer follows at once (MSG_MORE).
    pub(crate) fn send_all(&self, buf: &[u8], more: bool, stop: &dyn Fn() -> bool) -> Result {
        whole(buf.len(), stop, |done| {
            let rest = &buf[done..];
            // SAFETY: `self.0` is valid (invariant); `rest` is readable for its length during the call.
            unsafe { ffi::rmirror_sock_send(self.0.as_ptr(), rest.as_ptr().cast(), rest.len(), more) }
        })
    }

    /// Sends all the data of `bio`, read from its pages; `more` as for [`Socket::send_all`].
    /// Without `lend` TCP copies the data, so the bio need only outlive the call. With `lend`
    /// TCP may keep references to the pages and read them until the peer has the bytes (zero
    /// copy): the caller keeps their contents unchanged until then, or what goes on the wire
    /// may change with them. The references keep the pages themselves alive (memory safety
    /// does not depend on `lend`).
    pub(crate) fn send_bio(&self, bio: &Bio, more: bool, lend: bool, stop: &dyn Fn() -> bool) -> Result {
        whole(bio.size() as usize, stop, |done| {
            // SAFETY: `self.0` is valid (invariant); `bio` is live and unchanged while borrowed
            // (its type invariant), `done` is below its size.
            unsafe { ffi::rmirror_sock_send_bio(self.0.as_ptr(), bio.as_raw(), done as u32, more, lend) }
        })
    }

    /// Receives exactly `buf.len()` bytes. An orderly close by the peer is `ECONNRESET`;
    /// `stop()` is consulted at every timeout tick and ends the wait with `ESHUTDOWN`.
    pub(crate) fn recv_exact(&self, buf: &mut [u8], stop: &dyn Fn() -> bool) -> Result {
        let len = buf.len();
        whole(len, stop, |done| {
            let rest = &mut buf[done..];
            // SAFETY: `self.0` is valid (invariant); `rest` is writable for its length during the call.
            unsafe { ffi::rmirror_sock_recv(self.0.as_ptr(), rest.as_mut_ptr().cast(), rest.len()) }
        })
    }

    /// Receives exactly `len` bytes into a new heap buffer (`GFP_NOIO`), which is not zeroed first:
    /// a payload of up to 1 MiB is written once, by the receive.
    pub(crate) fn recv_vec(&self, len: usize, stop: &dyn Fn() -> bool) -> Result<KVVec<u8>> {
        let mut v = super::noio(|| KVVec::<u8>::with_capacity(len, GFP_KERNEL)).map_err(|_| ENOMEM)?;
        let spare = v.spare_capacity_mut();
        if spare.len() < len {
            return Err(ENOMEM);
        }
        let p = spare.as_mut_ptr().cast::<u8>();
        whole(len, stop, |done| {
            // SAFETY: `self.0` is valid (invariant); `p + done .. p + len` lies in `v`'s spare
            // capacity (checked above), which nothing else references during the call.
            unsafe { ffi::rmirror_sock_recv(self.0.as_ptr(), p.add(done).cast(), len - done) }
        })?;
        let (ptr, _, cap) = v.into_raw_parts();
        // SAFETY: `ptr` and `cap` come from `into_raw_parts` of an empty vector; its first `len`
        // bytes (`len <= cap`) were all written by the receive above.
        Ok(unsafe { KVVec::from_raw_parts(ptr, len, cap) })
    }

    /// The connected peer's address.
    pub(crate) fn peer(&self) -> Result<SockAddr> {
        let (mut ip, mut port) = (0u32, 0u16);
        // SAFETY: `self.0` is valid; the out pointers are valid.
        to_result(unsafe { ffi::rmirror_sock_peer(self.0.as_ptr(), &mut ip, &mut port) })?;
        Ok(SockAddr { ip, port })
    }

    /// Makes blocking receives return after `ms` without data (default one second), so a
    /// receiving thread can run a timer between receives.
    pub(crate) fn set_rcv_timeout_ms(&self, ms: u32) {
        // SAFETY: `self.0` is valid by the type invariant; the shim only stores the timeout.
        unsafe { ffi::rmirror_sock_set_rcvtimeo(self.0.as_ptr(), ms) };
    }

    /// Fixes the send buffer at `bytes` (TCP stops growing it), bounding how much a sender can
    /// queue ahead of a later message.
    pub(crate) fn set_send_buffer(&self, bytes: u32) {
        // SAFETY: `self.0` is valid by the type invariant; the shim takes the socket lock.
        unsafe { ffi::rmirror_sock_set_sndbuf(self.0.as_ptr(), bytes) };
    }

    /// Shuts the connection down both ways, waking any thread blocked on it.
    pub(crate) fn shutdown(&self) {
        // SAFETY: `self.0` is valid by the type invariant.
        unsafe { ffi::rmirror_sock_shutdown(self.0.as_ptr()) };
    }

    /// Resets the connection: unlike [`Socket::shutdown`], what is queued or unacknowledged is
    /// dropped, never sent again, and with it the references to pages lent by
    /// [`Socket::send_bio`].
    pub(crate) fn abort(&self) {
        // SAFETY: `self.0` is valid by the type invariant (a TCP socket: only those are made).
        unsafe { ffi::rmirror_sock_abort(self.0.as_ptr()) };
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: valid by the type invariant and released exactly once.
        unsafe { ffi::rmirror_sock_release(self.0.as_ptr()) };
    }
}
