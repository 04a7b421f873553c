// SPDX-License-Identifier: GPL-2.0
//! The primary's sender thread: takes queued writes in submission order and sends each as one
//! small-write message (all metadata in the 128-bit header) or as notify + data.

use crate::device::Device;
use crate::rcore::wire::{self, BarrierFlags, Message, WriteFlags, WriteMeta, WritePlan};
use crate::request::Request;
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
            loop {
                if c.stopping {
                    return;
                }
                if !c.send_queue.is_empty() && c.link.is_some() {
                    break;
                }
                dev.work.wait(&mut c);
            }
            let Ok(req) = c.send_queue.remove(0) else { continue };
            let Some(link) = c.link.clone() else { continue };
            if c.inflight.push_within_capacity(req.clone()).is_err() {
                // Cannot happen (queue + inflight <= MAX_INFLIGHT = capacity); fail safe.
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

fn send_request(link: &dyn Transport, req: &Request, inline_max: u32, stop: &dyn Fn() -> bool) -> Result {
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
    match wire::plan_write(meta, &req.data, inline_max) {
        WritePlan::Small(m) => {
            send_msg(link, &m, stop)?;
            req.dev.stats.small_writes.fetch_add(1, Ordering::Relaxed);
        }
        WritePlan::Large { notify, data } => {
            send_msg(link, &notify, stop)?;
            send_msg(link, &data, stop)?;
            req.dev.stats.large_writes.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}
