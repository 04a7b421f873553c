// SPDX-License-Identifier: GPL-2.0
//! The secondary's data thread: submits each write of the current connection's data socket to
//! the backing device without waiting (`peer_io`: many in flight, acked from their completion)
//! and acknowledges it as its replication protocol says (C: once durable, B: once received, A:
//! not at all; barriers: once the writes before them are retired and flushed, by the acker).
//! Any message that fails to decode or breaks the protocol drops the connection before anything
//! is written.

use crate::conn::{io_reason, LazyBuf, MAX_IO_BYTES};
use crate::device::Device;
use crate::rcore::state::protocol::Protocol;
use crate::rcore::wire::{self, AckKind, BarrierFlags, Limits, Message, RleApply, WriteFlags};
use crate::peer_io::Owed;
use crate::rcore::state::peer::{Durability, Step};
use crate::transport::{recv_frame, send_msg, RecvError, Transport};
use kernel::prelude::*;
use kernel::sync::Arc;

/// Thread body.
pub(crate) fn run(dev: &Arc<Device>) {
    // Only forwarded reads (a detached primary) need it.
    let mut buf = LazyBuf::new(MAX_IO_BYTES as usize);
    let mut served = 0;
    while let Some((data, meta, generation)) = dev.wait_data(served) {
        served = generation;
        // Writes received back to back are issued together (the plug is flushed whenever
        // the receiver waits for the socket, room or a drain).
        let why = crate::bindings::bdev::plugged(|| serve(dev, &*data, &*meta, generation, &mut buf));
        dev.connection_lost(generation, why);
        // Nothing of that connection stays in flight when the next one is served (it may
        // resync the same ranges) or the role changes (the acker skips its acks now).
        dev.peer_drain();
    }
}

impl Device {
    /// Waits for a complete connection newer than `served`; `None` when the device stops.
    pub(crate) fn wait_data(&self, served: u64) -> Option<(Arc<dyn Transport>, Arc<dyn Transport>, u64)> {
        let mut c = self.conn.lock();
        loop {
            if c.stopping {
                return None;
            }
            if let (Some(d), Some(m), true) = (&c.link, &c.meta, c.generation > served) {
                return Some((d.clone(), m.clone(), c.generation));
            }
            let _ = self.link_changed.wait_interruptible_timeout(&mut c, kernel::time::msecs_to_jiffies(1000));
        }
    }
}

/// What the receiver does with a message once decoded (the message borrows its payload).
enum Next {
    /// Submit a replicated write with the payload.
    Write(wire::WriteMeta),
    /// Submit resync data with the payload.
    Resync(u64, u32),
    /// Done; send this reply if any.
    Reply(Option<Message<'static>>),
}

/// Applies the primary's writes until the connection ends; returns why it ended.
fn serve(dev: &Arc<Device>, data: &dyn Transport, meta_sock: &dyn Transport, generation: u64, buf: &mut LazyBuf)
    -> &'static str {
    let lim = Limits { dev_sectors: dev.cfg.sectors, max_payload: MAX_IO_BYTES };
    let stop = || !dev.is_current(generation);
    // A WriteNotify announces (seq, len) of the WriteData that must follow.
    let mut announced: Option<(u32, u32)> = None;
    let mut writes_in_epoch: u32 = 0;
    let mut head = [0u8; wire::MAX_HEADER_LEN];
    loop {
        let (hlen, payload) = match recv_frame(data, &mut head, &lim, &stop) {
            Ok(f) => f,
            Err(RecvError::Protocol(e)) => return e.as_str(),
            Err(RecvError::Io(e)) => return io_reason(e),
        };
        // Heard from the peer (before any wait for room or a drain).
        dev.traffic(generation);
        let step = match wire::decode_parts(&head[..hlen], &payload, &lim) {
            Err(e) => return e.as_str(),
            Ok(Message::SmallWrite { meta, .. } | Message::WriteData { meta, .. }) if meta.volume != 0 => {
                return "write for an unknown volume";
            }
            Ok(Message::SmallWrite { meta, .. }) => {
                if announced.is_some() {
                    return "small write while a large write was announced";
                }
                Next::Write(meta)
            }
            Ok(Message::WriteNotify { seq, len }) => {
                if announced.replace((seq, len)).is_some() {
                    return "two write notifications in a row";
                }
                Next::Reply(None)
            }
            Ok(Message::WriteData { meta, .. }) => {
                if announced.take() != Some((meta.seq, meta.len)) {
                    return "write data without a matching notification";
                }
                Next::Write(meta)
            }
            Ok(Message::ResyncReply { sector, sectors, .. }) => {
                if announced.is_some() {
                    return "resync data while a large write was announced";
                }
                Next::Resync(sector, sectors)
            }
            Ok(Message::Barrier { nr, flags }) => {
                // Closes the epoch; the acker answers it once the writes before it are retired
                // (`Step::Barrier` does not drain: the writes after it go on).
                let writes = core::mem::replace(&mut writes_in_epoch, 0);
                dev.peer_barrier(generation, nr, flags.contains(BarrierFlags::FLUSH), writes);
                Next::Reply(None)
            }
            Ok(msg) => {
                // Everything else depends on the writes before it (it drains, `Step::drains`):
                // they are done and acked.
                dev.peer_drain();
                match other(dev, msg, generation, &announced, data, buf, &stop) {
                    Ok(reply) => Next::Reply(reply),
                    Err(why) => return why,
                }
            }
        };
        let r = match step {
            Next::Write(meta) => {
                writes_in_epoch = writes_in_epoch.wrapping_add(1);
                apply(dev, generation, &meta, payload, meta_sock, &stop)
            }
            Next::Resync(sector, sectors) => {
                if payload.len() != (sectors as usize) << wire::SECTOR_SHIFT {
                    return "resync data does not match its length";
                }
                dev.peer_submit(generation, sector, payload, Owed::Resync, false, true)
            }
            Next::Reply(Some(m)) => send_msg(meta_sock, &m, &stop).map_err(|_| "cannot send an ack"),
            Next::Reply(None) => Ok(()),
        };
        if let Err(why) = r {
            return why;
        }
    }
}

/// A message other than a write or resync data, every write before it retired: returns the
/// reply to send on the meta socket, if any (a forwarded read is answered on `data`).
fn other(dev: &Device, msg: Message<'_>, generation: u64, announced: &Option<(u32, u32)>,
    data: &dyn Transport, buf: &mut LazyBuf, stop: &dyn Fn() -> bool)
    -> core::result::Result<Option<Message<'static>>, &'static str> {
    Ok(match msg {
        Message::Uuids(u) => {
            dev.peer_uuids(generation, &u);
            None
        }
        Message::Bitmap { offset, bits, last, rle } => {
            // The primary's bitmap replaces ours (its bits clear only on our acks, so it is
            // a superset of what we still miss); ours is kept until then.
            if dev.bitmap.lock().rle_decode(offset, bits, rle, RleApply::Copy).is_err() {
                return Err("bitmap chunk does not fit the device");
            }
            if !last {
                return Ok(None);
            }
            dev.resync.lock().announced = generation;
            let left = dev.out_of_sync_sectors();
            if left > 0 {
                // On disk before any resync data is written.
                if dev.target_inconsistent().is_err() {
                    return Err("cannot write the metadata");
                }
                pr_info!("{}: sync target: {} KiB to receive\n", &*dev.cfg.name, left / 2);
                return Ok(None);
            }
            dev.target_in_sync(generation).map(|current| Message::InSync { current })
        }
        Message::ResyncRequest { sector, sectors } => {
            // A read of the primary, whose disk is detached (see `detach`).
            if announced.is_some() {
                return Err("a read request while a large write was announced");
            }
            let buf = buf.get(dev).ok_or("no memory for a read")?;
            // On the data socket: bulk data on the meta socket would hold back the heartbeats
            // and acks behind it (the primary's reply thread receives it).
            crate::detach::serve_read(dev, data, sector, sectors, buf, stop)?;
            None
        }
        Message::Detached { current } => {
            dev.peer_detached(current)?;
            None
        }
        Message::Disconnect { .. } => return Err("the peer disconnected"),
        _ => return Err("unexpected message on the data socket"),
    })
}

/// Submits one replicated write (its payload received into its own buffer) to the backing
/// device, acknowledged as its replication protocol says (both sides' tables name the same
/// one):
///
/// - C: the write is acked `Durable` once it is on stable storage (`peer_io`): it goes with
///   FUA and is acked from its completion, or, with sysfs `peer_durability` = `flush`, it goes
///   without and the acker flushes once for a batch of completed writes before their acks
///   (group commit). Either way the peer holds every acknowledged write even if it loses power
///   right after the ack (the failover guarantee).
/// - B: `Received` is acked on the meta socket before the write starts.
/// - A: no ack.
///
/// Under A and B the write goes with FUA only if the primary's had it: the barrier that
/// follows makes it durable (its ack comes after a flush). A failed write is acked
/// `Negative` in all three: the primary marks its range. The primary's PREFLUSH is honoured,
/// after every write before it is done.
fn apply(dev: &Arc<Device>, generation: u64, meta: &wire::WriteMeta, payload: KVVec<u8>, meta_sock: &dyn Transport,
    stop: &dyn Fn() -> bool) -> core::result::Result<(), &'static str> {
    if payload.len() != meta.len as usize {
        return Err("write data does not match its length");
    }
    let proto = dev.cfg.protocol;
    if proto == Protocol::B && send_msg(meta_sock, &Message::Ack { seq: meta.seq, kind: AckKind::Received }, stop).is_err() {
        return Err("cannot send an ack");
    }
    let preflush = meta.flags.contains(WriteFlags::PREFLUSH);
    if (Step::Write { preflush }).drains() {
        dev.peer_drain();
    }
    let durable = proto == Protocol::C;
    let fua = dev.durability().submit_fua(durable, meta.flags.contains(WriteFlags::FUA));
    let owed = Owed::Write { seq: meta.seq, durable, flush: Durability::flush_before_ack(durable, fua) };
    dev.peer_submit(generation, meta.sector, payload, owed, preflush, fua)
}
