// SPDX-License-Identifier: GPL-2.0
//! The primary's sender thread: takes queued writes in submission order and sends each as one
//! small-write message (all metadata in the 128-bit header) or as notify + data, the payload
//! straight from the original bio's pages. After an outage it first replays the outage queue,
//! in order, from the copies kept there.

use crate::bindings::bio::CloneRef;
use crate::outage::ToSend;
use crate::device::Device;
use crate::rcore::wire::{self, BarrierFlags, Message, WriteFlags, WriteHeaders, WriteMeta};
use crate::request::{PeerPart, Request};
use crate::transport::{send_msg, Transport};
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Thread body.
pub(crate) fn run(dev: &Arc<Device>) {
    let stop = || dev.stopping();
    loop {
        let (req, link, generation, small_ok) = {
            let mut c = dev.conn.lock();
            let replay = loop {
                if c.stopping {
                    return;
                }
                if c.replicating() {
                    if let Some(ts) = c.outq.next_to_send() {
                        break Some(ts);
                    }
                    if !c.send_queue.is_empty() {
                        break None;
                    }
                }
                let _ = dev.work.wait_interruptible_timeout(&mut c, kernel::time::msecs_to_jiffies(1000));
            };
            if let Some(ts) = replay {
                let (link, generation, small_ok) = (c.link.clone(), c.generation, c.small_writes);
                drop(c);
                let Some(link) = link else { continue };
                let inline_max = if small_ok { dev.inline_max.load(Ordering::Relaxed) } else { 0 };
                let r = send_replay(&*link, &ts, inline_max, &stop);
                dev.conn.lock().outq.sent(ts);
                if r.is_err() {
                    dev.connection_lost(generation, "send failed");
                }
                continue;
            }
            let Ok(req) = c.send_queue.remove(0) else { continue };
            let Some(link) = c.link.clone() else { continue };
            if let Err(kernel::alloc::kvec::PushError(req)) = c.inflight.push_within_capacity(req.clone()) {
                // Cannot happen (every queued write holds one of MAX_INFLIGHT slots, the
                // queues' capacity); fail safe.
                drop(c);
                req.net_done(false);
                continue;
            }
            (req, link, c.generation, c.small_writes)
        };
        let inline_max = if small_ok { dev.inline_max.load(Ordering::Relaxed) } else { 0 };
        if let Err(e) = send_request(&*link, &req, inline_max, &stop) {
            dev.connection_lost(generation, if e == crate::bindings::errno::eshutdown() { "shut down" } else { "send failed" });
        }
    }
}

/// Sends one entry of the outage queue as the write (or flush) it was.
fn send_replay(link: &dyn Transport, ts: &ToSend, inline_max: u32, stop: &dyn Fn() -> bool) -> Result {
    let len = ts.entry.len;
    if len == 0 {
        let flags = if ts.preflush || ts.fua { BarrierFlags::FLUSH } else { BarrierFlags::empty() };
        return send_msg(link, &Message::Barrier { nr: ts.wire_seq, flags }, stop);
    }
    let data = ts.data.as_deref().and_then(|d| d.get(..len as usize)).ok_or(EINVAL)?;
    let mut flags = WriteFlags::empty();
    if ts.preflush {
        flags |= WriteFlags::PREFLUSH;
    }
    if ts.fua {
        flags |= WriteFlags::FUA;
    }
    let meta = WriteMeta { sector: ts.entry.sector, len, seq: ts.wire_seq, flags, volume: 0 };
    match wire::write_headers(meta, inline_max).map_err(|_| EINVAL)? {
        WriteHeaders::Small(h) => link.send(&[h.as_bytes(), data], None, stop),
        WriteHeaders::Large(n, d) => link.send(&[n.as_bytes(), d.as_bytes(), data], None, stop),
    }
}

fn send_request(link: &dyn Transport, req: &CloneRef<Request>, inline_max: u32, stop: &dyn Fn() -> bool) -> Result {
    if req.len == 0 {
        let flags = if req.preflush || req.fua { BarrierFlags::FLUSH } else { BarrierFlags::empty() };
        return send_msg(link, &Message::Barrier { nr: req.seq, flags }, stop);
    }
    let mut flags = WriteFlags::empty();
    if req.preflush {
        flags |= WriteFlags::PREFLUSH;
    }
    if req.fua {
        flags |= WriteFlags::FUA;
    }
    let meta = WriteMeta { sector: req.sector, len: req.len, seq: req.seq, flags, volume: 0 };
    let hdrs = wire::write_headers(meta, inline_max).map_err(|_| EINVAL)?;
    req.with_orig(|bio| match &hdrs {
        WriteHeaders::Small(h) => link.send(&[h.as_bytes()], Some(bio), stop),
        WriteHeaders::Large(n, d) => link.send(&[n.as_bytes(), d.as_bytes()], Some(bio), stop),
    })?;
    let counter = if hdrs.is_small() { &req.dev.stats.small_writes } else { &req.dev.stats.large_writes };
    counter.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
