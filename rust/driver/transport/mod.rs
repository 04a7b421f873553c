// SPDX-License-Identifier: GPL-2.0
//! The message transport between the two nodes, behind a small trait (TCP now, RDMA next), and
//! the framing shared by all transports: whole frames of the core's wire protocol v1.

pub(crate) mod tcp;

use crate::rcore::wire::{self, Limits, Message, DecodeError};
use kernel::prelude::*;

/// A connected, reliable, ordered byte transport to the peer.
pub(crate) trait Transport: Send + Sync {
    /// Sends one message made of `parts`, atomically with respect to other senders.
    fn send(&self, parts: &[&[u8]], stop: &dyn Fn() -> bool) -> Result;
    /// Receives exactly `buf.len()` bytes (only one receiving thread per transport).
    fn recv_exact(&self, buf: &mut [u8], stop: &dyn Fn() -> bool) -> Result;
    /// Breaks the connection; blocked senders and receivers return at once.
    fn shutdown(&self);
}

/// Why a frame could not be received.
pub(crate) enum RecvError {
    /// The transport failed or was shut down.
    Io(Error),
    /// The peer sent something that is not a valid message: drop the connection.
    Protocol(DecodeError),
}

impl From<Error> for RecvError {
    fn from(e: Error) -> Self {
        RecvError::Io(e)
    }
}

/// Receives one whole frame into `buf` (sized for the largest message `lim` allows) and
/// decodes it. Lengths are checked from the 16-byte preamble before anything else is read.
pub(crate) fn recv_msg<'a>(
    t: &dyn Transport,
    buf: &'a mut [u8],
    lim: &Limits,
    stop: &dyn Fn() -> bool,
) -> core::result::Result<Message<'a>, RecvError> {
    let mut pre = [0u8; wire::PREAMBLE_LEN];
    t.recv_exact(&mut pre, stop)?;
    let total = wire::frame_len(&pre, lim).map_err(RecvError::Protocol)?;
    if total > buf.len() || total < wire::PREAMBLE_LEN {
        return Err(RecvError::Protocol(DecodeError::Oversized));
    }
    buf[..wire::PREAMBLE_LEN].copy_from_slice(&pre);
    t.recv_exact(&mut buf[wire::PREAMBLE_LEN..total], stop)?;
    wire::decode(&buf[..total], lim).map_err(RecvError::Protocol)
}

/// Sends `msg`: its header from a stack buffer and any payload straight from its slice.
pub(crate) fn send_msg(t: &dyn Transport, msg: &Message<'_>, stop: &dyn Fn() -> bool) -> Result {
    let mut hdr = [0u8; wire::HANDSHAKE_MAX_LEN];
    let n = msg.encode_header(&mut hdr).map_err(|_| EINVAL)?;
    let payload: &[u8] = match msg {
        Message::SmallWrite { data, .. } | Message::WriteData { data, .. } => data,
        Message::ResyncReply { data, .. } => data,
        Message::Bitmap { rle, .. } => rle,
        _ => &[],
    };
    if payload.is_empty() {
        t.send(&[&hdr[..n]], stop)
    } else {
        t.send(&[&hdr[..n], payload], stop)
    }
}

/// Largest frame we ever receive: the largest header plus the largest bio.
pub(crate) const fn max_frame(max_payload: u32) -> usize {
    wire::HANDSHAKE_MAX_LEN + max_payload as usize
}
