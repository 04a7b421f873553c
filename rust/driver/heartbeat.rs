// SPDX-License-Identifier: GPL-2.0
//! The meta socket's thread, on both sides: heartbeats in both directions, dead-peer detection,
//! probation, and (primary) the peer's acks.
//!
//! The thread owns the connection state machine's timer. With a complete connection it
//! receives on the meta socket with a [`META_TICK_MS`] tick and runs `on_tick` at every tick
//! and after every message, so a ping goes out every `ping_interval` and a peer silent for
//! `timeout` (no message on either socket, or our ping unanswered) is declared dead within a
//! tick of the deadline: the connection is torn down, every write waiting for the peer
//! completes without it (counted out of sync) and the connect or accept side tries again.
//! Without one it still ticks, which bounds a handshake by `timeout`.
//!
//! After an outage the state machine puts a new connection on probation: heartbeats must flow
//! without a miss for `probation` before writes are replicated again (seed 002).

use crate::conn::{io_reason, META_TICK_MS};
use crate::device::{Conn, Device, PeerBitmap, Role};
use crate::rcore::state::protocol::Protocol;
use crate::rcore::wire::{AckKind, Limits, Message, Ping, RleApply};
use crate::request::PeerPart;
use crate::transport::{recv_msg, send_msg, RecvError, Transport};
use core::cell::Cell;
use core::sync::atomic::Ordering::Relaxed;
use kernel::prelude::*;
use kernel::sync::{Arc, MutexGuard};

/// Thread body.
pub(crate) fn run(dev: &Arc<Device>) {
    // The largest meta frame: a chunk of the secondary's bitmap.
    let Some(mut buf) = crate::conn::frame_buffer(dev, meta_payload_max()) else { return };
    let mut served = 0;
    while let Some((meta, generation)) = dev.wait_complete(served) {
        served = generation;
        let why = serve(dev, &*meta, generation, &mut buf);
        dev.connection_lost(generation, why);
    }
}

impl Device {
    /// Waits for a complete connection newer than `served`, running the state machine's timer
    /// meanwhile (handshake timeout, outage limits). `None` when the device stops.
    fn wait_complete(&self, served: u64) -> Option<(Arc<dyn Transport>, u64)> {
        loop {
            self.report_events();
            let now = self.now_ms();
            let (act, generation) = {
                let mut c = self.conn.lock();
                if c.stopping {
                    return None;
                }
                if let (Some(m), true) = (&c.meta, c.generation > served) {
                    return Some((m.clone(), c.generation));
                }
                let act = c.sm.on_tick(now);
                if !act.close {
                    let _ = self.link_changed.wait_interruptible_timeout(&mut c,
                        kernel::time::msecs_to_jiffies(META_TICK_MS));
                }
                (act, c.generation)
            };
            if act.give_up_queue {
                self.give_up_outage_queue("the outage outlasted outage_max");
            }
            if act.close {
                self.connection_lost(generation, "the handshake timed out");
            }
        }
    }

    /// One timer tick of connection `generation`; sends a ping when one is due. Returns why
    /// the connection must end, if it must.
    fn heartbeat(&self, generation: u64, meta: &dyn Transport) -> Option<&'static str> {
        self.report_events();
        let now = self.now_ms();
        let (act, timeout) = {
            let mut c = self.conn.lock();
            if c.stopping {
                return Some("shut down");
            }
            if c.generation != generation || c.meta.is_none() {
                return Some("replaced by a new connection");
            }
            (c.sm.on_tick(now), c.sm.config().timeout_ms)
        };
        if act.close {
            self.stats.timeouts.fetch_add(1, Relaxed);
            pr_warn!("{}: the peer is silent: nothing heard for {} ms\n", &*self.cfg.name, timeout);
            return Some("the peer timed out");
        }
        if act.give_up_queue {
            self.give_up_outage_queue("the outage outlasted outage_max");
        }
        if act.resume {
            let (n, bytes) = {
                let mut c = self.conn.lock();
                if c.outq.is_empty() {
                    c.outq.reopen();
                }
                (c.outq.len(), c.outq.bytes())
            };
            self.work.notify_all();
            if n > 0 {
                pr_info!("{}: probation passed: replicating again, replaying {} queued writes ({} KiB)\n",
                    &*self.cfg.name, n, bytes / 1024);
            } else {
                pr_info!("{}: probation passed: replicating again\n", &*self.cfg.name);
            }
        }
        if act.send_ping {
            let ping = Message::Ping(Ping { seq: self.stats.pings.fetch_add(1, Relaxed) as u32, timestamp: now });
            if send_msg(meta, &ping, &|| self.stopping()).is_err() {
                return Some("cannot send a ping");
            }
        }
        None
    }

    /// Applies `f` to the state machine of connection `generation`, if current.
    fn sm_event(&self, generation: u64, f: impl FnOnce(&mut crate::rcore::state::conn::Conn, u64)) {
        let now = self.now_ms();
        let mut c = self.conn.lock();
        if c.generation == generation {
            f(&mut c.sm, now);
        }
    }

    /// The connection state locked, after a message from the peer on connection `generation`
    /// (which counts as traffic); `Err` if that connection was replaced.
    fn heard(&self, generation: u64) -> core::result::Result<MutexGuard<'_, Conn>, &'static str> {
        let now = self.now_ms();
        let mut c = self.conn.lock();
        if c.generation != generation {
            return Err("replaced by a new connection");
        }
        let _ = c.sm.on_traffic(now);
        Ok(c)
    }

    /// The peer acknowledged write `seq` (`kind`): finish its peer half, or release a replayed
    /// write. Under protocol B the receive ack completes a write (its range stays in the
    /// transfer log until a barrier ack); a negative ack for a write already completed marks
    /// its range.
    fn ack(&self, generation: u64, seq: u32, kind: AckKind) -> core::result::Result<(), &'static str> {
        let (req, ok) = {
            let mut c = self.heard(generation)?;
            let i = c.inflight.iter().position(|r| r.seq == seq);
            if i.is_none() && kind == AckKind::Negative {
                if let Some((sector, len)) = c.tlog.negative_ack(seq) {
                    self.mark_out_of_sync(sector, len);
                    return Ok(());
                }
            }
            match (i, kind) {
                (Some(_), AckKind::Received) if self.cfg.protocol != Protocol::B => return Ok(()),
                (Some(i), _) => {
                    let req = c.inflight.remove(i).map_err(|_| "ack for an unknown write")?;
                    if kind == AckKind::Received {
                        self.unsure(&mut c, &req);
                    }
                    (req, kind != AckKind::Negative)
                }
                (None, AckKind::Received) => {
                    // A replayed write, released by its barrier's ack.
                    return if c.outq.is_sent(seq) { Ok(()) } else { Err("ack for an unknown write") };
                }
                (None, _) => {
                    let ok = kind == AckKind::Durable;
                    if !c.outq.ack(seq, ok, |sector, len| self.mark_out_of_sync(sector, len)) {
                        return Err("ack for an unknown write");
                    }
                    drop(c);
                    self.replay_progress(ok, 1);
                    return Ok(());
                }
            }
        };
        req.net_done(ok);
        Ok(())
    }

    /// The peer acked barrier `nr`: every write sent before it is durable there. Barrier acks
    /// come in the order the barriers were sent; a flush request waiting for its ack completes.
    fn barrier_ack(&self, generation: u64, nr: u32) -> core::result::Result<(), &'static str> {
        let (req, released) = {
            let mut c = self.heard(generation)?;
            let b = c.tlog.barrier_acked(nr).map_err(|e| e.as_str())?;
            let mut released = 0;
            if let Some(upto) = b.queue_upto {
                released += c.outq.ack_through(upto);
            }
            let req = match c.inflight.iter().position(|r| r.seq == nr) {
                Some(i) => c.inflight.remove(i).ok(),
                None => {
                    if b.queue_upto.is_none() && c.outq.ack(nr, true, |_, _| {}) {
                        released += 1;
                    }
                    None
                }
            };
            (req, released)
        };
        // Room in the transfer log again.
        self.work.notify_all();
        if let Some(r) = req {
            r.net_done(true);
        }
        if released > 0 {
            self.replay_progress(true, released);
        }
        Ok(())
    }

    /// Primary: a chunk of the secondary's bitmap on connection `generation`: ORed into ours.
    /// Once the last chunk is in, the resync may announce ours (the union).
    fn peer_bitmap(&self, generation: u64, offset: u64, bits: u32, last: bool, rle: &[u8])
        -> core::result::Result<(), &'static str> {
        let mut c = self.heard(generation)?;
        if c.peer_bitmap != PeerBitmap::Awaited {
            return Err("a bitmap from the secondary not expected now");
        }
        let added = {
            let mut bm = self.bitmap.lock();
            let before = bm.weight();
            bm.rle_decode(offset, bits, rle, RleApply::Merge).map_err(|_| "bitmap chunk does not fit the device")?;
            bm.weight() - before
        };
        if added > 0 {
            // Regions the peer may hold differently (its activity log's extents after it
            // crashed as primary, say): copied from here like ours.
            pr_info!("{}: the peer's bitmap adds {} KiB to resync\n", &*self.cfg.name,
                added << (crate::resync::REGION_SHIFT - 10));
        }
        if last {
            c.peer_bitmap = PeerBitmap::Received;
            drop(c);
            self.link_changed.notify_all();
        }
        Ok(())
    }

    /// `n` replayed writes left the outage queue (`ok`: durable at the peer).
    fn replay_progress(&self, ok: bool, n: usize) {
        let (done, replayed) = {
            let c = self.conn.lock();
            (c.outq.is_empty(), c.outq.replayed)
        };
        if ok {
            self.stats.acks.fetch_add(n as u64, Relaxed);
        }
        self.work.notify_all();
        if done {
            self.link_changed.notify_all();
            pr_info!("{}: outage queue replayed ({} writes in total)\n", &*self.cfg.name, replayed);
        }
    }
}

/// The largest payload on the meta socket: the secondary's bitmap chunks.
fn meta_payload_max() -> u32 {
    crate::resync::RLE_CHUNK as u32
}

/// Serves the meta socket of connection `generation` until it ends; returns why it ended.
fn serve(dev: &Device, meta: &dyn Transport, generation: u64, buf: &mut [u8]) -> &'static str {
    // The secondary's bitmap comes on this socket too (bulk data never does: the replies to
    // forwarded reads come on the data socket, see `detach::replies`).
    let lim = Limits { dev_sectors: dev.cfg.sectors, max_payload: meta_payload_max() };
    let why = Cell::new(None);
    let poll = || {
        if why.get().is_none() {
            why.set(dev.heartbeat(generation, meta));
        }
        why.get().is_some()
    };
    let primary = dev.role() == Role::Primary;
    loop {
        let r = match recv_msg(meta, buf, &lim, &poll) {
            Ok(Message::Ping(p)) => {
                dev.sm_event(generation, |sm, now| {
                    let _ = sm.on_ping(now);
                });
                // Not `poll` as the stop callback: a ping due meanwhile would take the send
                // lock this send holds.
                send_msg(meta, &Message::Pong(p), &|| !dev.is_current(generation)).map_err(|_| "cannot send a pong")
            }
            Ok(Message::Pong(_)) => {
                dev.stats.pongs.fetch_add(1, Relaxed);
                dev.sm_event(generation, |sm, now| {
                    let _ = sm.on_pong(now);
                });
                Ok(())
            }
            Ok(Message::Ack { seq, kind }) if primary => dev.ack(generation, seq, kind),
            Ok(Message::BarrierAck { nr, .. }) if primary => dev.barrier_ack(generation, nr),
            Ok(Message::ResyncAck { sector, sectors }) if primary => {
                dev.traffic(generation);
                dev.resync_acked(generation, sector, sectors)
            }
            Ok(Message::Bitmap { offset, bits, last, rle }) if primary => {
                dev.peer_bitmap(generation, offset, bits, last, rle)
            }
            Ok(Message::InSync { current }) if primary => {
                dev.traffic(generation);
                dev.peer_in_sync(generation, current);
                Ok(())
            }
            Ok(Message::Disconnect { .. }) => Err("the peer disconnected"),
            Ok(_) => Err("unexpected message on the meta socket"),
            Err(RecvError::Protocol(e)) => Err(e.as_str()),
            Err(RecvError::Io(e)) => Err(why.get().unwrap_or(io_reason(e))),
        };
        if let Err(e) = r {
            return why.get().unwrap_or(e);
        }
        if poll() {
            return why.get().unwrap_or("shut down");
        }
    }
}
