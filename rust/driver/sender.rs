// SPDX-License-Identifier: GPL-2.0
//! The primary's sender thread: takes queued writes in submission order and sends each as one
//! small-write message (all metadata in the 128-bit header) or as notify + data, the payload
//! straight from the original bio's pages. After an outage it first replays the outage queue,
//! in order, from the copies kept there.

use crate::bindings::bio::CloneRef;
use crate::device::{Conn, Device};
use crate::outage::ToSend;
use crate::rcore::state::protocol::Protocol;
use crate::rcore::wire::{self, BarrierFlags, Message, WriteFlags, WriteHeaders, WriteMeta};
use crate::request::{PeerPart, Request};
use crate::transport::{send_msg, BioData, Transport};
use core::sync::atomic::Ordering;
use kernel::prelude::*;
use kernel::sync::Arc;

/// Writes sent since the last barrier after which protocols A and B send one even when busy
/// (an idle sender sends one at once): bounds what a lost connection marks out of sync.
const BARRIER_EVERY: u64 = 32;

/// What the sender does next.
enum Job {
    /// A write of the outage queue, replayed.
    Replay(ToSend),
    /// A new write (or flush), at this position of the send order.
    Write(CloneRef<Request>),
    /// A barrier of protocols A and B: the peer flushes and acks, which makes the writes sent
    /// before it durable there.
    Barrier(u32),
    /// A write to finish without the peer.
    Fail(CloneRef<Request>),
    /// Tell the peer our disk was detached; both sides adopt this generation.
    Detached(u64),
    /// A forwarded read (detached or attaching disk), now awaiting its reply.
    Read(u64, u32),
    /// A forwarded read that cannot be sent (no memory to track it).
    FailRead(crate::detach::PeerRead),
}

/// Picks the next job, the connection locked; `None` when there is nothing to do now.
fn next_job(dev: &Device, c: &mut Conn) -> Option<Job> {
    let asynchronous = dev.cfg.protocol != Protocol::C;
    if !c.replicating() {
        return None;
    }
    if let Some(current) = dev.detach_generation(c) {
        return Some(Job::Detached(current));
    }
    if c.sending() && !c.read_queue.is_empty() {
        // Reads first: every write completed before a read was submitted is sent already.
        let room = crate::bindings::noio(|| c.reads_sent.reserve(1, GFP_KERNEL)).is_ok();
        if let Ok(r) = c.read_queue.remove(0) {
            if !room {
                return Some(Job::FailRead(r));
            }
            let (sector, sectors) = r.range();
            return Some(match c.reads_sent.push_within_capacity(r) {
                Ok(()) => Job::Read(sector, sectors),
                Err(kernel::alloc::kvec::PushError(r)) => Job::FailRead(r),
            });
        }
    }
    if c.tlog_full() {
        return None;
    }
    let barrier = |c: &mut Conn| {
        let nr = dev.next_seq();
        c.tlog.sent();
        let upto = c.outq.last_sent();
        c.tlog.barrier_sent(nr, upto).ok().map(|_| Job::Barrier(nr))
    };
    if asynchronous && c.tlog.unbarriered() >= BARRIER_EVERY {
        return barrier(c);
    }
    if let Some(ts) = c.outq.next_to_send() {
        c.tlog.sent();
        if ts.entry.len == 0 {
            // A flush is a barrier on the wire. Under A and B its ack releases every replayed
            // write sent before it; under C each is acked on its own.
            // There is room (tlog_full); were there none, its ack would be refused as
            // unexpected and the connection dropped: safe either way.
            let upto = if asynchronous { c.outq.last_sent() } else { None };
            let _ = c.tlog.barrier_sent(ts.wire_seq, upto);
        }
        return Some(Job::Replay(ts));
    }
    if !c.send_queue.is_empty() {
        let Ok(req) = c.send_queue.remove(0) else { return None };
        let n = c.tlog.sent();
        req.sent_no.store(n, Ordering::Relaxed);
        if req.len == 0 {
            // A flush is a barrier on the wire (room: see above).
            let _ = c.tlog.barrier_sent(req.seq, None);
        }
        if let Err(kernel::alloc::kvec::PushError(req)) = c.inflight.push_within_capacity(req.clone()) {
            // Cannot happen (every queued write holds one of MAX_INFLIGHT slots, the
            // queues' capacity); fail safe, outside the lock.
            return Some(Job::Fail(req));
        }
        return Some(Job::Write(req));
    }
    if asynchronous && c.tlog.unbarriered() > 0 {
        return barrier(c);
    }
    None
}

/// A job picked under the connection lock, with what sending it takes.
struct Picked {
    job: Job,
    link: Option<Arc<dyn Transport>>,
    generation: u64,
    small_ok: bool,
    more: bool,
}

/// Picks the next job if nobody is sending (the connection locked) and takes the send turn
/// (`Conn::send_busy`): jobs are sent one at a time, in the order they are picked, by the
/// sender thread or by a submitter that found it idle ([`Device::send_or_wake`]).
fn pick(dev: &Device, c: &mut Conn) -> Option<Picked> {
    if c.send_busy {
        return None;
    }
    let job = next_job(dev, c)?;
    c.send_busy = true;
    // More writes queued: the transport may pack this one with the next (corking).
    let more = !c.send_queue.is_empty();
    Some(Picked { job, link: c.link.clone(), generation: c.generation, small_ok: c.small_writes, more })
}

/// Sends a picked job (nothing locked) and finishes what it completes. The caller gives the
/// send turn back afterwards.
fn perform(dev: &Device, p: Picked) {
    let stop = || dev.stopping();
    let Picked { job, link, generation, small_ok, more } = p;
    let inline_max = if small_ok { dev.inline_max.load(Ordering::Relaxed) } else { 0 };
    let r = match (&job, &link) {
        (_, None) => Err(EINVAL), // cannot happen: a job is only picked while replicating
        (Job::Replay(ts), Some(l)) => send_replay(&**l, ts, inline_max, more, &stop),
        (Job::Write(req), Some(l)) => {
            send_request(&**l, req, inline_max, more, dev.lends_pages(), &stop)
        }
        (Job::Barrier(nr), Some(l)) => {
            send_msg(&**l, &Message::Barrier { nr: *nr, flags: BarrierFlags::FLUSH }, &stop)
        }
        (Job::Fail(_) | Job::FailRead(_), Some(_)) => Ok(()),
        (Job::Detached(current), Some(l)) => send_msg(&**l, &Message::Detached { current: *current }, &stop),
        (Job::Read(sector, sectors), Some(l)) => crate::detach::send_read(&**l, *sector, *sectors, &stop),
    };
    match job {
        Job::Fail(req) => req.net_done(false),
        Job::FailRead(r) => r.fail(dev),
        Job::Replay(ts) => dev.conn.lock().outq.sent(ts),
        Job::Write(req) if r.is_ok() && dev.cfg.protocol == Protocol::A => dev.sent_async(generation, req),
        _ => {}
    }
    if let Err(e) = r {
        dev.connection_lost(generation, if e == crate::bindings::errno::eshutdown() { "shut down" } else { "send failed" });
    }
}

/// Whether the sender may have a job now (conservative: a wrong "yes" only wakes it).
fn pending(dev: &Device, c: &Conn) -> bool {
    !c.send_queue.is_empty()
        || !c.read_queue.is_empty()
        || !c.outq.is_empty()
        || (dev.cfg.protocol != Protocol::C && c.tlog.unbarriered() > 0)
        || (c.detach_ok && dev.detach_notice.load(Ordering::Acquire))
}

/// Thread body.
pub(crate) fn run(dev: &Arc<Device>) {
    // Whether this thread holds the send turn (taken for its previous job): only then may it
    // give the turn back, never while a submitter holds it.
    let mut held = false;
    loop {
        let picked = {
            let mut c = dev.conn.lock();
            if core::mem::take(&mut held) {
                c.send_busy = false;
            }
            loop {
                if c.stopping {
                    return;
                }
                if let Some(p) = pick(dev, &mut c) {
                    held = true;
                    break p;
                }
                let _ = dev.work.wait_interruptible_timeout(&mut c, kernel::time::msecs_to_jiffies(1000));
            }
        };
        perform(dev, picked);
    }
}

impl Device {
    /// A write was just queued (`c`): a submitter sends the next job itself when the sender is
    /// idle, one thread wake-up less per write at low queue depth; otherwise the sender thread
    /// is woken for it.
    pub(crate) fn send_or_wake(&self, mut c: kernel::sync::MutexGuard<'_, Conn>) {
        let Some(p) = pick(self, &mut c) else {
            drop(c);
            self.work.notify_one();
            return;
        };
        drop(c);
        perform(self, p);
        let wake = {
            let mut c = self.conn.lock();
            c.send_busy = false;
            pending(self, &c)
        };
        if wake {
            self.work.notify_one();
        }
    }
}

impl Device {
    /// Protocol A: write `req` of connection `generation` is sent, which completes it; the
    /// transfer log keeps its range until a barrier ack says the peer made it durable. A
    /// no-op if the connection is gone (its loss finished the write).
    fn sent_async(&self, generation: u64, req: CloneRef<Request>) {
        let done = {
            let mut c = self.conn.lock();
            let i = c.inflight.iter().position(|r| r.seq == req.seq);
            match i {
                Some(i) if c.generation == generation => {
                    let r = c.inflight.remove(i).ok();
                    if let Some(r) = &r {
                        self.unsure(&mut c, r);
                    }
                    r
                }
                _ => None,
            }
        };
        if let Some(r) = done {
            r.net_done(true);
        }
    }

    /// Write `r` completes before the peer made it durable (protocol A once sent, B once
    /// received): the transfer log keeps its range. If that fails (it cannot: the sender
    /// keeps room), the range is marked out of sync instead.
    pub(crate) fn unsure(&self, c: &mut Conn, r: &CloneRef<Request>) {
        if r.len > 0 && c.tlog.completed(r.sent_no.load(Ordering::Relaxed), r.seq, r.sector, r.len).is_err() {
            self.mark_out_of_sync(r.sector, r.len);
        }
    }
}

/// Sends one entry of the outage queue as the write (or flush) it was.
fn send_replay(link: &dyn Transport, ts: &ToSend, inline_max: u32, more: bool, stop: &dyn Fn() -> bool) -> Result {
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
        WriteHeaders::Small(h) => link.send_more(&[h.as_bytes(), data], None, more, stop),
        WriteHeaders::Large(n, d) => link.send_more(&[n.as_bytes(), d.as_bytes(), data], None, more, stop),
    }
}

/// Sends a write from its bio's pages; `held`: the bio ends only after the peer's ack (B, C), so
/// the transport may lend its pages (zero copy).
fn send_request(link: &dyn Transport, req: &CloneRef<Request>, inline_max: u32, more: bool, held: bool,
                stop: &dyn Fn() -> bool) -> Result {
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
    req.with_orig(|bio| {
        let data = Some(BioData { bio, held });
        match &hdrs {
            WriteHeaders::Small(h) => link.send_more(&[h.as_bytes()], data, more, stop),
            WriteHeaders::Large(n, d) => link.send_more(&[n.as_bytes(), d.as_bytes()], data, more, stop),
        }
    })?;
    let counter = if hdrs.is_small() { &req.dev.stats.small_writes } else { &req.dev.stats.large_writes };
    counter.fetch_add(1, Ordering::Relaxed);
    if !hdrs.is_small() {
        // WriteNotify and WriteData went in one send, which counted one message.
        link.counters().msgs_sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
