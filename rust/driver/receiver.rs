// SPDX-License-Identifier: GPL-2.0
//! The receiving side of a connection.
//!
//! Primary: a connection thread that connects (retrying), handshakes, then collects acks.
//! Secondary: a listener thread that accepts the primary, handshakes, applies each write to the
//! backing device and acknowledges it once durable. Any message that fails to decode or breaks
//! the protocol drops the connection before anything is written.

use crate::bindings::errno::eproto;
use crate::bindings::net::Socket;
use crate::bindings::thread::sleep_ms;
use crate::device::{Addr, CState, Device, Queues, Role, MAX_IO_SECTORS};
use crate::request::PeerPart;
use crate::rcore::wire::{self, feature, AckKind, BarrierFlags, Handshake, Limits, Message, Uuids, WriteFlags};
use crate::transport::{max_frame, recv_msg, send_msg, tcp::Tcp, RecvError, Transport, PAYLOAD_OFFSET};
use kernel::prelude::*;
use kernel::sync::Arc;

const MAX_IO_BYTES: u32 = MAX_IO_SECTORS << wire::SECTOR_SHIFT;
/// Bytes of device per bitmap bit announced in the handshake (the bitmap comes later).
const REGION_SIZE: u32 = 4096;

/// The secondary's listening socket and device.
pub(crate) struct Listener {
    pub(crate) dev: Arc<Device>,
    pub(crate) sock: Socket,
}

fn frame_buffer(dev: &Device) -> Option<KVVec<u8>> {
    let buf = KVVec::from_elem(0u8, max_frame(MAX_IO_BYTES), GFP_KERNEL).ok();
    if buf.is_none() {
        pr_err!("{}: no memory for the receive buffer\n", &*dev.cfg.name);
    }
    buf
}

/// Sleeps up to `ms`, returning early when the device stops.
fn pause(dev: &Device, ms: u32) {
    let mut left = ms;
    while left > 0 && !dev.stopping() {
        sleep_ms(100);
        left = left.saturating_sub(100);
    }
}

/// Outcome of [`Device::bring_up`].
enum Link {
    /// Handshake done, replicating on this link of this generation.
    Up(Arc<dyn Transport>, u64),
    /// No usable connection this time (already logged and torn down).
    Failed,
    /// The device is being torn down.
    Stopping,
}

impl Device {
    /// Turns a fresh TCP connection into a replicating link: attach it, handshake, established.
    fn bring_up(&self, sock: Socket, buf: &mut [u8], lim: &Limits) -> Link {
        let Ok(tcp) = Tcp::new(sock) else { return Link::Failed };
        let Ok(queues) = Queues::new() else { return Link::Failed };
        let link: Arc<dyn Transport> = tcp;
        let Some(generation) = self.attach(link.clone(), queues) else { return Link::Stopping };
        match self.handshake(&*link, buf, lim) {
            Ok(small) => {
                self.established(generation, small);
                Link::Up(link, generation)
            }
            Err(why) => {
                self.connection_lost(generation, why);
                Link::Failed
            }
        }
    }

    /// Installs a new connection with its own queues (cstate Handshake); returns its generation.
    fn attach(&self, link: Arc<dyn Transport>, queues: Queues) -> Option<u64> {
        let mut c = self.conn.lock();
        if c.stopping {
            return None;
        }
        c.generation += 1;
        c.link = Some(link);
        queues.install(&mut c);
        c.cstate = CState::Handshake;
        Some(c.generation)
    }

    /// Handshake done: replicate from now on.
    fn established(&self, generation: u64, small_writes: bool) {
        {
            let mut c = self.conn.lock();
            if c.generation != generation || c.stopping {
                return;
            }
            c.cstate = CState::Connected;
            c.small_writes = small_writes;
        }
        pr_info!("{}: connected to {} (small writes {})\n", &*self.cfg.name, Addr(self.cfg.peer),
            if small_writes { "on" } else { "off" });
    }

    /// Exchanges handshakes and checks that the two ends fit together.
    fn handshake(&self, link: &dyn Transport, buf: &mut [u8], lim: &Limits) -> core::result::Result<bool, &'static str> {
        let stop = || self.stopping();
        let ours = Handshake {
            proto_min: wire::VERSION_MIN,
            proto_max: wire::VERSION,
            features: feature::ALL,
            node_id: self.cfg.node_id,
            dev_sectors: self.cfg.sectors,
            region_size: REGION_SIZE,
            uuids: Uuids::default(),
            role: match self.cfg.role {
                Role::Primary => wire::Role::Primary,
                Role::Secondary => wire::Role::Secondary,
            },
        };
        send_msg(link, &Message::Handshake(ours), &stop).map_err(|_| "cannot send handshake")?;
        let peer = match recv_msg(link, buf, lim, &stop) {
            Ok(Message::Handshake(h)) => h,
            Ok(_) => return Err("expected a handshake"),
            Err(RecvError::Protocol(e)) => return Err(e.as_str()),
            Err(RecvError::Io(_)) => return Err("no handshake received"),
        };
        let neg = ours.negotiate(&peer).ok_or("no common protocol version")?;
        if peer.role == ours.role {
            return Err("the peer has the same role");
        }
        match self.cfg.role {
            Role::Primary if peer.dev_sectors < self.cfg.sectors => Err("the peer's device is smaller than ours"),
            Role::Secondary if peer.dev_sectors > self.cfg.sectors => Err("the peer's device is larger than ours"),
            _ => Ok(neg.features & feature::SMALL_WRITE != 0),
        }
    }

    /// The peer acknowledged write `seq`: finish its peer half.
    fn ack(&self, seq: u32, ok: bool) -> Result {
        let req = {
            let mut c = self.conn.lock();
            let i = c.inflight.iter().position(|r| r.seq == seq).ok_or_else(eproto)?;
            c.inflight.remove(i).map_err(|_| eproto())?
        };
        req.net_done(ok);
        Ok(())
    }
}

/// Why a transport error ended a connection, in words.
fn io_reason(e: Error) -> &'static str {
    if e == crate::bindings::errno::econnreset() {
        "the peer closed the connection"
    } else if e == crate::bindings::errno::eshutdown() {
        "shut down"
    } else {
        "receive failed"
    }
}

/// Primary connection thread body.
pub(crate) fn primary_conn(dev: &Arc<Device>) {
    let Some(mut buf) = frame_buffer(dev) else { return };
    let lim = Limits { dev_sectors: dev.cfg.sectors, max_payload: MAX_IO_BYTES };
    let stop = || dev.stopping();
    while !dev.stopping() {
        let sock = match Socket::connect(dev.cfg.peer) {
            Ok(s) => s,
            Err(_) => {
                pause(dev, 1000);
                continue;
            }
        };
        let (link, generation) = match dev.bring_up(sock, &mut buf, &lim) {
            Link::Up(link, generation) => (link, generation),
            Link::Failed => {
                pause(dev, 1000);
                continue;
            }
            Link::Stopping => break,
        };
        let why = loop {
            let r = match recv_msg(&*link, &mut buf, &lim, &stop) {
                Ok(Message::Ack { seq, kind }) => match kind {
                    AckKind::Durable => dev.ack(seq, true),
                    AckKind::Negative => dev.ack(seq, false),
                    AckKind::Received => Ok(()),
                },
                Ok(Message::BarrierAck { nr, .. }) => dev.ack(nr, true),
                Ok(Message::Ping(p)) => send_msg(&*link, &Message::Pong(p), &stop),
                Ok(Message::Pong(_)) => Ok(()),
                Ok(Message::Disconnect { .. }) => break "the peer disconnected",
                Ok(_) => break "unexpected message from the secondary",
                Err(RecvError::Protocol(e)) => break e.as_str(),
                Err(RecvError::Io(e)) => break io_reason(e),
            };
            if r.is_err() {
                break "ack for an unknown write";
            }
        };
        dev.connection_lost(generation, why);
    }
}

/// Secondary listener thread body.
pub(crate) fn secondary_listen(l: &Arc<Listener>) {
    let dev = &l.dev;
    let Some(mut buf) = frame_buffer(dev) else { return };
    let lim = Limits { dev_sectors: dev.cfg.sectors, max_payload: MAX_IO_BYTES };
    while !dev.stopping() {
        let sock = match l.sock.accept() {
            Ok(Some(s)) => s,
            Ok(None) => continue,
            Err(_) => {
                pause(dev, 100);
                continue;
            }
        };
        match sock.peer() {
            Ok(a) if a.ip == dev.cfg.peer.ip => {}
            Ok(a) => {
                pr_warn!("{}: refused a connection from {}\n", &*dev.cfg.name, Addr(a));
                continue;
            }
            Err(_) => continue,
        }
        let (link, generation) = match dev.bring_up(sock, &mut buf, &lim) {
            Link::Up(link, generation) => (link, generation),
            Link::Failed => continue,
            Link::Stopping => break,
        };
        let why = serve(dev, &*link, &mut buf, &lim);
        dev.connection_lost(generation, why);
    }
}

/// Applies the primary's messages until the connection ends; returns why it ended.
fn serve(dev: &Device, link: &dyn Transport, buf: &mut KVVec<u8>, lim: &Limits) -> &'static str {
    let stop = || dev.stopping();
    // A WriteNotify announces (seq, len) of the WriteData that must follow.
    let mut announced: Option<(u32, u32)> = None;
    let mut writes_in_epoch: u32 = 0;
    loop {
        let reply = match recv_msg(link, buf, lim, &stop) {
            Ok(Message::SmallWrite { meta, .. } | Message::WriteData { meta, .. }) if meta.volume != 0 => {
                return "write for an unknown volume";
            }
            Ok(Message::SmallWrite { meta, .. }) => {
                if announced.is_some() {
                    return "small write while a large write was announced";
                }
                writes_in_epoch = writes_in_epoch.wrapping_add(1);
                apply(dev, &meta, buf)
            }
            Ok(Message::WriteNotify { seq, len }) => {
                if announced.replace((seq, len)).is_some() {
                    return "two write notifications in a row";
                }
                continue;
            }
            Ok(Message::WriteData { meta, .. }) => {
                if announced.take() != Some((meta.seq, meta.len)) {
                    return "write data without a matching notification";
                }
                writes_in_epoch = writes_in_epoch.wrapping_add(1);
                apply(dev, &meta, buf)
            }
            Ok(Message::Barrier { nr, flags }) => {
                if flags.contains(BarrierFlags::FLUSH) && dev.backing.flush().is_err() {
                    Message::Ack { seq: nr, kind: AckKind::Negative }
                } else {
                    let writes = core::mem::replace(&mut writes_in_epoch, 0);
                    Message::BarrierAck { nr, writes }
                }
            }
            Ok(Message::Ping(p)) => Message::Pong(p),
            Ok(Message::Pong(_)) => continue,
            Ok(Message::Disconnect { .. }) => return "the peer disconnected",
            Ok(_) => return "unexpected message from the primary",
            Err(RecvError::Protocol(e)) => return e.as_str(),
            Err(RecvError::Io(e)) => return io_reason(e),
        };
        if send_msg(link, &reply, &stop).is_err() {
            return "send failed";
        }
    }
}

/// Writes one replicated write, whose payload [`recv_msg`] left at [`PAYLOAD_OFFSET`] of `buf`,
/// to the backing device and says how to acknowledge it.
///
/// The write always goes with FUA: `AckDurable` promises the data is on the secondary's stable
/// storage (protocol C's failover guarantee: the peer holds every acknowledged write, even if it
/// loses power right after the ack). The primary's PREFLUSH is honoured as well.
fn apply(dev: &Device, meta: &wire::WriteMeta, buf: &KVVec<u8>) -> Message<'static> {
    let preflush = meta.flags.contains(WriteFlags::PREFLUSH);
    let data = PAYLOAD_OFFSET..PAYLOAD_OFFSET + meta.len as usize;
    let kind = match dev.backing.write_sync(meta.sector, buf, data, preflush, true) {
        Ok(()) => AckKind::Durable,
        Err(e) => {
            pr_err!("{}: write of {} bytes at sector {} failed: error {}\n",
                &*dev.cfg.name, meta.len, meta.sector, e.to_errno());
            AckKind::Negative
        }
    };
    Message::Ack { seq: meta.seq, kind }
}
