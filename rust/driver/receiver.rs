// SPDX-License-Identifier: GPL-2.0
//! The secondary's data thread: applies each write of the current connection's data socket to
//! the backing device and acknowledges it on the meta socket as its replication protocol says
//! (C: once durable, B: once received, A: not at all; barriers: once flushed). Any message that
//! fails to decode or breaks the protocol drops the connection before anything is written.

use crate::conn::{frame_buffer, io_reason, MAX_IO_BYTES};
use crate::device::Device;
use crate::rcore::state::protocol::Protocol;
use crate::rcore::wire::{self, AckKind, BarrierFlags, Limits, Message, RleApply, WriteFlags};
use crate::transport::{recv_msg, send_msg, RecvError, Transport, PAYLOAD_OFFSET};
use kernel::prelude::*;
use kernel::sync::Arc;

/// Thread body.
pub(crate) fn run(dev: &Arc<Device>) {
    let Some(mut buf) = frame_buffer(dev, MAX_IO_BYTES) else { return };
    let mut served = 0;
    while let Some((data, meta, generation)) = dev.wait_data(served) {
        served = generation;
        let why = serve(dev, &*data, &*meta, generation, &mut buf);
        dev.connection_lost(generation, why);
    }
}

impl Device {
    /// Waits for a complete connection newer than `served`; `None` when the device stops.
    fn wait_data(&self, served: u64) -> Option<(Arc<dyn Transport>, Arc<dyn Transport>, u64)> {
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

/// Applies the primary's writes until the connection ends; returns why it ended.
fn serve(dev: &Device, data: &dyn Transport, meta_sock: &dyn Transport, generation: u64, buf: &mut KVVec<u8>) -> &'static str {
    let lim = Limits { dev_sectors: dev.cfg.sectors, max_payload: MAX_IO_BYTES };
    let stop = || !dev.is_current(generation);
    // A WriteNotify announces (seq, len) of the WriteData that must follow.
    let mut announced: Option<(u32, u32)> = None;
    let mut writes_in_epoch: u32 = 0;
    loop {
        let msg = recv_msg(data, buf, &lim, &stop);
        if msg.is_ok() {
            dev.traffic(generation);
        }
        let reply = match msg {
            Ok(Message::SmallWrite { meta, .. } | Message::WriteData { meta, .. }) if meta.volume != 0 => {
                return "write for an unknown volume";
            }
            Ok(Message::SmallWrite { meta, .. }) => {
                if announced.is_some() {
                    return "small write while a large write was announced";
                }
                writes_in_epoch = writes_in_epoch.wrapping_add(1);
                match apply(dev, &meta, buf, meta_sock, &stop) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(why) => return why,
                }
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
                match apply(dev, &meta, buf, meta_sock, &stop) {
                    Ok(Some(m)) => m,
                    Ok(None) => continue,
                    Err(why) => return why,
                }
            }
            Ok(Message::Barrier { nr, flags }) => {
                if flags.contains(BarrierFlags::FLUSH) && dev.backing.flush().is_err() {
                    Message::Ack { seq: nr, kind: AckKind::Negative }
                } else {
                    let writes = core::mem::replace(&mut writes_in_epoch, 0);
                    Message::BarrierAck { nr, writes }
                }
            }
            Ok(Message::Uuids(u)) => {
                dev.peer_uuids(generation, &u);
                continue;
            }
            Ok(Message::Bitmap { offset, bits, last, rle }) => {
                // The primary's bitmap replaces ours (its bits clear only on our acks, so it is
                // a superset of what we still miss); ours is kept until then.
                if dev.bitmap.lock().rle_decode(offset, bits, rle, RleApply::Copy).is_err() {
                    return "bitmap chunk does not fit the device";
                }
                if !last {
                    continue;
                }
                dev.resync.lock().announced = generation;
                let left = dev.out_of_sync_sectors();
                if left > 0 {
                    // On disk before any resync data is written.
                    if dev.target_inconsistent().is_err() {
                        return "cannot write the metadata";
                    }
                    pr_info!("{}: sync target: {} KiB to receive\n", &*dev.cfg.name, left / 2);
                    continue;
                }
                match dev.target_in_sync(generation) {
                    Some(current) => Message::InSync { current },
                    None => continue,
                }
            }
            Ok(Message::ResyncReply { sector, sectors, .. }) => {
                if announced.is_some() {
                    return "resync data while a large write was announced";
                }
                let data = PAYLOAD_OFFSET..PAYLOAD_OFFSET + ((sectors as usize) << wire::SECTOR_SHIFT);
                if let Err(e) = dev.backing.write_sync(sector, buf, data, false, true) {
                    pr_err!("{}: resync write of {} sectors at {} failed: error {}\n", &*dev.cfg.name, sectors,
                        sector, e.to_errno());
                    return "a resync write failed";
                }
                let done = dev.resync_written(sector, sectors);
                if send_msg(meta_sock, &Message::ResyncAck { sector, sectors }, &stop).is_err() {
                    return "cannot send an ack";
                }
                if !done {
                    continue;
                }
                match dev.target_in_sync(generation) {
                    Some(current) => Message::InSync { current },
                    None => continue,
                }
            }
            Ok(Message::ResyncRequest { sector, sectors }) => {
                // A read of the primary, whose disk is detached (see `detach`).
                if announced.is_some() {
                    return "a read request while a large write was announced";
                }
                if let Err(why) = crate::detach::serve_read(dev, meta_sock, sector, sectors, buf, &stop) {
                    return why;
                }
                continue;
            }
            Ok(Message::Detached { current }) => {
                if let Err(why) = dev.peer_detached(current) {
                    return why;
                }
                continue;
            }
            Ok(Message::Disconnect { .. }) => return "the peer disconnected",
            Ok(_) => return "unexpected message on the data socket",
            Err(RecvError::Protocol(e)) => return e.as_str(),
            Err(RecvError::Io(e)) => return io_reason(e),
        };
        if send_msg(meta_sock, &reply, &stop).is_err() {
            return "cannot send an ack";
        }
    }
}

/// Writes one replicated write, whose payload [`recv_msg`] left at [`PAYLOAD_OFFSET`] of `buf`,
/// to the backing device, and says how to acknowledge it (`None`: no ack). What the ack
/// promises depends on the replication protocol (both sides' tables name the same one):
///
/// - C: the write goes with FUA and is acked `Durable` once done: the peer holds every
///   acknowledged write even if it loses power right after the ack (the failover guarantee).
/// - B: `Received` is acked on the meta socket before the write starts.
/// - A: no ack.
///
/// Under A and B the write goes with FUA only if the primary's had it: the barrier that
/// follows makes it durable (its ack comes after a flush). A failed write is acked
/// `Negative` in all three: the primary marks its range. The primary's PREFLUSH is honoured.
fn apply(dev: &Device, meta: &wire::WriteMeta, buf: &KVVec<u8>, meta_sock: &dyn Transport, stop: &dyn Fn() -> bool)
    -> core::result::Result<Option<Message<'static>>, &'static str> {
    let proto = dev.cfg.protocol;
    if proto == Protocol::B && send_msg(meta_sock, &Message::Ack { seq: meta.seq, kind: AckKind::Received }, stop).is_err() {
        return Err("cannot send an ack");
    }
    let preflush = meta.flags.contains(WriteFlags::PREFLUSH);
    let fua = proto == Protocol::C || meta.flags.contains(WriteFlags::FUA);
    let data = PAYLOAD_OFFSET..PAYLOAD_OFFSET + meta.len as usize;
    match dev.backing.write_sync(meta.sector, buf, data, preflush, fua) {
        Ok(()) if proto == Protocol::C => Ok(Some(Message::Ack { seq: meta.seq, kind: AckKind::Durable })),
        Ok(()) => Ok(None),
        Err(e) => {
            pr_err!("{}: write of {} bytes at sector {} failed: error {}\n",
                &*dev.cfg.name, meta.len, meta.sector, e.to_errno());
            Ok(Some(Message::Ack { seq: meta.seq, kind: AckKind::Negative }))
        }
    }
}
