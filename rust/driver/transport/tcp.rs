// SPDX-License-Identifier: GPL-2.0
//! The TCP transport: one kernel socket per connection, sends serialized by a mutex.

use super::{BioData, Counters, Transport};
use core::sync::atomic::Ordering::Relaxed;
use crate::bindings::net::Socket;
use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

/// A TCP connection to the peer.
#[pin_data]
pub(crate) struct Tcp {
    sock: Socket,
    /// Whole messages are sent under this lock so two threads never interleave frames.
    #[pin]
    send_lock: Mutex<()>,
    counters: Arc<Counters>,
}

impl Tcp {
    /// Wraps a connected socket, counting into `counters`.
    pub(crate) fn new(sock: Socket, counters: Arc<Counters>) -> Result<Arc<Tcp>> {
        Arc::pin_init(pin_init!(Tcp { sock, send_lock <- new_mutex!(()), counters }), GFP_KERNEL)
    }
}

impl Transport for Tcp {
    fn send_more(&self, parts: &[&[u8]], bio: Option<BioData<'_>>, more: bool, stop: &dyn Fn() -> bool) -> Result {
        let _g = self.send_lock.lock();
        self.counters.msgs_sent.fetch_add(1, Relaxed);
        if !more {
            self.counters.pushes.fetch_add(1, Relaxed);
        }
        let last = parts.len().saturating_sub(1);
        for (i, p) in parts.iter().enumerate() {
            self.sock.send_all(p, more || i < last || bio.is_some(), stop)?;
        }
        match bio {
            Some(b) => self.sock.send_bio(b.bio, more, b.held, stop),
            None => Ok(()),
        }
    }

    fn recv_exact(&self, buf: &mut [u8], stop: &dyn Fn() -> bool) -> Result {
        self.sock.recv_exact(buf, stop)
    }

    fn recv_vec(&self, len: usize, stop: &dyn Fn() -> bool) -> Result<KVVec<u8>> {
        self.sock.recv_vec(len, stop)
    }

    fn counters(&self) -> &Counters {
        &self.counters
    }

    fn shutdown(&self) {
        self.sock.shutdown();
    }

    fn abort(&self) {
        self.sock.abort();
    }

    fn set_tick_ms(&self, ms: u32) {
        self.sock.set_rcv_timeout_ms(ms);
    }

    fn set_meta(&self, tick_ms: u32) {
        self.sock.set_rcv_timeout_ms(tick_ms);
        self.sock.set_send_buffer(super::META_SNDBUF);
    }
}
