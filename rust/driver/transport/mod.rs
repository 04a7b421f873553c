// SPDX-License-Identifier: GPL-2.0
//! The message transport between the two nodes, behind a small trait (TCP now, RDMA next), and
//! the framing shared by all transports: whole frames of the core's wire protocol v1.

pub(crate) mod tcp;

use crate::bindings::bio::Bio;
use crate::rcore::wire::{self, Limits, Message, DecodeError};
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use kernel::prelude::*;

/// Message counters of a device's transports (status keys `msgs_sent`, `pushes`,
/// `msgs_received`): per write they show what the small-write message and batching save.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) msgs_sent: AtomicU64,
    pub(crate) pushes: AtomicU64,
    pub(crate) msgs_received: AtomicU64,
}

/// The data of a write, sent from its bio's pages (never copied into a buffer of ours first).
#[derive(Clone, Copy)]
pub(crate) struct BioData<'a> {
    pub(crate) bio: &'a Bio,
    /// The bio's pages stay unchanged until the peer has acknowledged the write (protocols B and
    /// C end the bio only then): the transport may lend the pages to the network instead of
    /// copying them (TCP: `MSG_SPLICE_PAGES`; RDMA: registered for the peer to read). Under
    /// protocol A the bio ends once sent, so its data is copied.
    pub(crate) held: bool,
}

/// A connected, reliable, ordered byte transport to the peer.
pub(crate) trait Transport: Send + Sync {
    /// Sends `parts`, then the data of `bio` if given, atomically with respect to other senders.
    fn send(&self, parts: &[&[u8]], bio: Option<BioData<'_>>, stop: &dyn Fn() -> bool) -> Result {
        self.send_more(parts, bio, false, stop)
    }
    /// As [`Transport::send`]; `more`: another message follows at once, so the transport may
    /// hold this one back to send both together (TCP: `MSG_MORE` on the last part too).
    fn send_more(&self, parts: &[&[u8]], bio: Option<BioData<'_>>, more: bool, stop: &dyn Fn() -> bool) -> Result;
    /// Receives exactly `buf.len()` bytes (only one receiving thread per transport).
    fn recv_exact(&self, buf: &mut [u8], stop: &dyn Fn() -> bool) -> Result;
    /// Receives exactly `len` bytes into a new buffer, a kernel heap allocation the block layer
    /// can take as it is (not zeroed first).
    fn recv_vec(&self, len: usize, stop: &dyn Fn() -> bool) -> Result<KVVec<u8>>;
    /// The device's counters (a batch of `n` messages in one send adds `n - 1` itself).
    fn counters(&self) -> &Counters;
    /// Breaks the connection; blocked senders and receivers return at once.
    fn shutdown(&self);
    /// Breaks the connection and drops what it has not delivered yet, so that nothing sent on it
    /// before, lent pages included, reaches the peer later (TCP: a reset). Blocked senders and
    /// receivers return at once.
    fn abort(&self);
    /// Makes a blocked receive consult its `stop` callback every `ms` (default: every second).
    fn set_tick_ms(&self, ms: u32);
    /// Makes this the connection's meta socket: receives tick every `tick_ms`, and the send
    /// queue is kept short (only small messages go on it), so a ping or ack waits behind at
    /// most [`META_SNDBUF`] of queued bytes, not the megabytes TCP's autotuning would allow
    /// (seconds on a slow link: the peer would time out).
    fn set_meta(&self, tick_ms: u32);
}

/// Why a frame could not be received.
pub(crate) enum RecvError {
    /// The transport failed or was shut down (the errno, for the log).
    Io(Error),
    /// The peer sent something that is not a valid message: drop the connection.
    Protocol(DecodeError),
}

impl From<Error> for RecvError {
    fn from(e: Error) -> Self {
        RecvError::Io(e)
    }
}

/// The meta socket's send buffer (bytes, including the kernel's overhead).
pub(crate) const META_SNDBUF: u32 = 256 * 1024;

/// Where a frame's payload goes in the receive buffer: page aligned, since the secondary hands
/// it straight to the block layer, which rejects buffers that break the device's DMA alignment.
pub(crate) const PAYLOAD_OFFSET: usize = 4096;

/// Receives one frame into `buf` (see [`max_frame`]) and decodes it: the header at the start,
/// the payload at [`PAYLOAD_OFFSET`]. Lengths come from the 16-byte preamble and are checked
/// against `lim` before anything else is read.
pub(crate) fn recv_msg<'a>(
    t: &dyn Transport,
    buf: &'a mut [u8],
    lim: &Limits,
    stop: &dyn Fn() -> bool,
) -> core::result::Result<Message<'a>, RecvError> {
    if buf.len() < PAYLOAD_OFFSET {
        return Err(RecvError::Protocol(DecodeError::Oversized));
    }
    let mut pre = [0u8; wire::PREAMBLE_LEN];
    t.recv_exact(&mut pre, stop)?;
    recv_msg_after(t, &pre, buf, lim, stop)
}

/// As [`recv_msg`], for a frame whose preamble `pre` was received already (so a thread that
/// rarely gets a frame can wait for one before it needs `buf`).
pub(crate) fn recv_msg_after<'a>(
    t: &dyn Transport,
    pre: &[u8; wire::PREAMBLE_LEN],
    buf: &'a mut [u8],
    lim: &Limits,
    stop: &dyn Fn() -> bool,
) -> core::result::Result<Message<'a>, RecvError> {
    if buf.len() < PAYLOAD_OFFSET {
        return Err(RecvError::Protocol(DecodeError::Oversized));
    }
    let (head, tail) = buf.split_at_mut(PAYLOAD_OFFSET);
    let room = tail.len();
    let (hlen, plen) = recv_rest_of_head(t, pre, head, room, lim, stop)?;
    t.recv_exact(&mut tail[..plen], stop)?;
    t.counters().msgs_received.fetch_add(1, Relaxed);
    wire::decode_parts(&head[..hlen], &tail[..plen], lim).map_err(RecvError::Protocol)
}

/// Receives a frame's preamble and the rest of its header into `head`; returns the header's and
/// the payload's lengths, checked against `lim`, `head` and `room` (the payload's buffer) before
/// anything past the preamble is read.
fn recv_head(t: &dyn Transport, head: &mut [u8], room: usize, lim: &Limits, stop: &dyn Fn() -> bool)
    -> core::result::Result<(usize, usize), RecvError> {
    let mut pre = [0u8; wire::PREAMBLE_LEN];
    t.recv_exact(&mut pre, stop)?;
    recv_rest_of_head(t, &pre, head, room, lim, stop)
}

/// [`recv_head`] after the preamble `pre`.
fn recv_rest_of_head(t: &dyn Transport, pre: &[u8; wire::PREAMBLE_LEN], head: &mut [u8], room: usize, lim: &Limits,
    stop: &dyn Fn() -> bool) -> core::result::Result<(usize, usize), RecvError> {
    let (hlen, plen) = wire::frame_parts(&pre, lim).map_err(RecvError::Protocol)?;
    if hlen > head.len() || plen > room {
        return Err(RecvError::Protocol(DecodeError::Oversized));
    }
    head[..wire::PREAMBLE_LEN].copy_from_slice(pre);
    t.recv_exact(&mut head[wire::PREAMBLE_LEN..hlen], stop)?;
    Ok((hlen, plen))
}

/// Receives one frame into `head` (its header) and a new buffer of exactly its payload's size,
/// a kernel heap allocation the secondary can hand to the block layer as it is (kmalloc keeps
/// sizes that are multiples of 512 aligned to at least 512, vmalloc to a page). Decode it with
/// `wire::decode_parts(&head[..hlen], &payload, lim)`. Lengths are checked as in [`recv_msg`].
pub(crate) fn recv_frame(
    t: &dyn Transport,
    head: &mut [u8; wire::MAX_HEADER_LEN],
    lim: &Limits,
    stop: &dyn Fn() -> bool,
) -> core::result::Result<(usize, KVVec<u8>), RecvError> {
    // `frame_parts` caps the payload at `lim`'s maximum.
    let (hlen, plen) = recv_head(t, head, usize::MAX, lim, stop)?;
    let mut payload = KVVec::new();
    if plen > 0 {
        payload = t.recv_vec(plen, stop)?;
    }
    t.counters().msgs_received.fetch_add(1, Relaxed);
    Ok((hlen, payload))
}

/// Sends `msg`: its header from a stack buffer and any payload straight from its slice.
pub(crate) fn send_msg(t: &dyn Transport, msg: &Message<'_>, stop: &dyn Fn() -> bool) -> Result {
    let mut hdr = [0u8; wire::MAX_HEADER_LEN];
    let n = msg.encode_header(&mut hdr).map_err(|_| EINVAL)?;
    let payload = msg.payload();
    if payload.is_empty() {
        t.send(&[&hdr[..n]], None, stop)
    } else {
        t.send(&[&hdr[..n], payload], None, stop)
    }
}

/// Receive buffer size for payloads up to `max_payload` bytes.
pub(crate) const fn max_frame(max_payload: u32) -> usize {
    PAYLOAD_OFFSET + max_payload as usize
}
