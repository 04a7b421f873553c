// SPDX-License-Identifier: GPL-2.0
//! Connections: how a pair of sockets to the peer comes up, and the glue between the threads
//! and the core's connection state machine (`rcore::state::conn`).
//!
//! A connection is two TCP sockets, as in DRBD: the *data* socket carries the primary's writes,
//! the *meta* socket carries heartbeats both ways and the secondary's acks, so a ping or an ack
//! never waits behind megabytes of write data in a send buffer. The primary connects both
//! (data first); each opens with a handshake naming its channel. The secondary accepts at any
//! time: a new data handshake from the peer replaces whatever connection it had (the peer
//! restarted, or its side of the old one is gone), the following meta handshake completes it.
//!
//! Every step has a deadline: a connect gives up after a second, a handshake after the
//! `timeout` tunable (the state machine's Handshake timeout, enforced by the heartbeat thread),
//! and a complete connection is declared dead when the peer stays silent for `timeout`.
//!
//! A standalone device (`rmirrorctl disconnect`, or a handshake that retrying cannot fix: split
//! brain, another protocol) neither connects nor accepts: the secondary still accepts the
//! peer's sockets, so a primary retrying does not wait for a handshake, but closes them at
//! once. `rmirrorctl connect` makes it try again (DRBD's `drbdsetup disconnect` / `connect`).

use crate::bindings::net::Socket;
use crate::bindings::thread::sleep_ms;
use crate::device::{Addr, CState, Device, PeerBitmap, Queues, Role, MAX_IO_SECTORS};
use crate::rcore::state::protocol::Protocol;
use crate::rcore::wire::{self, feature, Channel, Handshake, Limits, Message};
use crate::transport::{max_frame, recv_msg, send_msg, tcp::Tcp, RecvError, Transport};
use core::sync::atomic::Ordering::Relaxed;
use kernel::prelude::*;
use kernel::sync::Arc;

pub(crate) const MAX_IO_BYTES: u32 = MAX_IO_SECTORS << wire::SECTOR_SHIFT;
/// Bytes of device per bitmap bit announced in the handshake (the bitmap comes later).
const REGION_SIZE: u32 = 4096;
/// The meta socket's receive tick: the heartbeat timers' resolution.
pub(crate) const META_TICK_MS: u32 = 100;

/// The secondary's listening socket and device.
pub(crate) struct Listener {
    pub(crate) dev: Arc<Device>,
    pub(crate) sock: Socket,
}

/// A zeroed buffer of a fixed size, allocated at its first use and kept: threads that need
/// 1 MiB only for rare work (a forwarded read, a resync chunk) do not allocate and clear it at
/// every start (which costs seconds on a starved TCG guest with KASAN).
pub(crate) struct LazyBuf {
    len: usize,
    buf: Option<KVVec<u8>>,
}

impl LazyBuf {
    /// A buffer of `len` bytes, not allocated yet.
    pub(crate) const fn new(len: usize) -> Self {
        Self { len, buf: None }
    }

    /// The buffer, allocated now if this is its first use; `None` (and a kernel message) if
    /// there is no memory for it.
    pub(crate) fn get(&mut self, dev: &Device) -> Option<&mut KVVec<u8>> {
        if self.buf.is_none() {
            self.buf = crate::bindings::noio(|| KVVec::from_elem(0u8, self.len, GFP_KERNEL)).ok();
            if self.buf.is_none() {
                pr_err!("{}: no memory for a {} KiB buffer\n", &*dev.cfg.name, self.len >> 10);
            }
        }
        self.buf.as_mut()
    }
}

/// A receive buffer for frames with payloads up to `max_payload` bytes.
pub(crate) fn frame_buffer(dev: &Device, max_payload: u32) -> Option<KVVec<u8>> {
    let buf = KVVec::from_elem(0u8, max_frame(max_payload), GFP_KERNEL).ok();
    if buf.is_none() {
        pr_err!("{}: no memory for the receive buffer\n", &*dev.cfg.name);
    }
    buf
}

/// Sleeps up to `ms`, returning early when the device stops.
fn pause(dev: &Device, ms: u32) {
    let mut left = ms;
    while left > 0 && !dev.stopping() {
        sleep_ms(left.min(100));
        left = left.saturating_sub(100);
    }
}

/// Why a transport error ended a connection, in words.
pub(crate) fn io_reason(e: Error) -> &'static str {
    if e == crate::bindings::errno::econnreset() {
        "the peer closed the connection"
    } else if e == crate::bindings::errno::eshutdown() {
        "shut down"
    } else {
        "receive failed"
    }
}

impl Device {
    /// Installs the data socket of a new connection with its own queues (state Handshake);
    /// returns its generation. `None` when the device is stopping.
    fn attach(&self, link: Arc<dyn Transport>, queues: Queues) -> Option<u64> {
        let now = self.now_ms();
        let mut c = self.conn.lock();
        if c.stopping || c.link.is_some() {
            return None;
        }
        c.sm.on_connected(now).ok()?;
        c.generation += 1;
        c.link = Some(link);
        queues.install(&mut c);
        Some(c.generation)
    }

    /// The meta socket completes connection `generation`: heartbeats start, and replication
    /// starts at once, or after probation when this connection ends an outage.
    fn complete(&self, generation: u64, meta: Arc<dyn Transport>, features: u32) -> core::result::Result<(), &'static str> {
        let now = self.now_ms();
        let small_writes = features & feature::SMALL_WRITE != 0;
        {
            let mut c = self.conn.lock();
            if c.generation != generation || c.link.is_none() || c.meta.is_some() {
                return Err("the connection was replaced");
            }
            c.sm.on_handshake_ok(now).map_err(|_| "the handshake timed out")?;
            c.meta = Some(meta);
            c.small_writes = small_writes;
            c.detach_ok = features & feature::DETACH != 0;
            if self.disk() != crate::detach::ATTACHED {
                // Every connection of a detached primary tells the peer first.
                self.detach_notice.store(true, Relaxed);
            }
            c.peer_bitmap = if self.role() == Role::Primary && features & feature::PEER_BITMAP != 0 {
                PeerBitmap::Awaited
            } else {
                PeerBitmap::NotExpected
            };
            // Logged under the lock: a thread that sees the complete connection (and may log
            // its loss at once, for a bad first frame) takes the lock after this line.
            if c.sm.state() == CState::Probation {
                pr_info!("{}: connected to {} (small writes {}); on probation for {} ms\n", &*self.cfg.name,
                    Addr(self.cfg.peer), if small_writes { "on" } else { "off" }, c.sm.config().probation_ms);
            } else {
                pr_info!("{}: connected to {} (small writes {})\n", &*self.cfg.name, Addr(self.cfg.peer),
                    if small_writes { "on" } else { "off" });
            }
        }
        self.stats.connects.fetch_add(1, Relaxed);
        self.link_changed.notify_all();
        self.work.notify_all();
        Ok(())
    }

    /// Our handshake on `channel`.
    fn our_handshake(&self, channel: Channel) -> Handshake {
        Handshake {
            proto_min: wire::VERSION_MIN,
            proto_max: wire::VERSION,
            features: feature::ALL,
            node_id: self.cfg.node_id,
            dev_sectors: self.cfg.sectors,
            region_size: REGION_SIZE,
            uuids: self.wire_uuids(),
            role: match self.role() {
                Role::Primary => wire::Role::Primary,
                Role::Secondary => wire::Role::Secondary,
            },
            channel,
            replication: self.cfg.protocol.as_u8(),
            flags: if self.conn.lock().discard_my_data { wire::hs_flags::DISCARD_MY_DATA } else { 0 },
        }
    }

    /// The peer's table must name our replication protocol (it decides which acks the
    /// secondary sends); a handshake that does not say is read as protocol C.
    fn check_protocol(&self, peer: &Handshake) -> core::result::Result<(), &'static str> {
        let theirs = if peer.replication == 0 { Protocol::C.as_u8() } else { peer.replication };
        if theirs == self.cfg.protocol.as_u8() {
            Ok(())
        } else {
            Err("the peer's table names another replication protocol")
        }
    }

    /// Checks that the peer's handshake fits ours; returns the features both sides have.
    fn check_peer(&self, peer: &Handshake) -> core::result::Result<u32, &'static str> {
        let ours = self.our_handshake(peer.channel);
        let neg = ours.negotiate(peer).ok_or("no common protocol version")?;
        if peer.role == ours.role {
            return Err("the peer has the same role");
        }
        match self.role() {
            Role::Primary if peer.dev_sectors < self.cfg.sectors => Err("the peer's device is smaller than ours"),
            Role::Secondary if peer.dev_sectors > self.cfg.sectors => Err("the peer's device is larger than ours"),
            _ => Ok(neg.features),
        }
    }

    /// Receives the peer's handshake on `link`, waiting at most the `timeout` tunable.
    fn recv_handshake(&self, link: &dyn Transport, buf: &mut [u8]) -> core::result::Result<Handshake, &'static str> {
        let deadline = self.now_ms().saturating_add(u64::from(self.conn.lock().sm.config().timeout_ms));
        let stop = || self.stopping() || self.now_ms() >= deadline;
        // The deadline is checked at every receive tick: make it fine-grained.
        link.set_tick_ms(META_TICK_MS);
        let lim = Limits { dev_sectors: self.cfg.sectors, max_payload: 0 };
        match recv_msg(link, buf, &lim, &stop) {
            Ok(Message::Handshake(h)) => Ok(h),
            Ok(_) => Err("expected a handshake"),
            Err(RecvError::Protocol(e)) => Err(e.as_str()),
            // A standalone secondary closes the socket at once.
            Err(RecvError::Io(e)) if e == crate::bindings::errno::econnreset() => {
                Err("the peer closed the connection before its handshake (standalone?)")
            }
            Err(RecvError::Io(_)) => Err("no handshake received in time"),
        }
    }

    /// Whether connection `generation` is still the current one.
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        let c = self.conn.lock();
        !c.stopping && c.generation == generation && c.link.is_some()
    }

    /// The peer sent something on connection `generation`: it is alive.
    pub(crate) fn traffic(&self, generation: u64) {
        let now = self.now_ms();
        let mut c = self.conn.lock();
        if c.generation == generation {
            let _ = c.sm.on_traffic(now);
        }
    }

    /// Primary: one connection attempt, both sockets. Returns the generation when complete.
    fn connect_once(&self, buf: &mut [u8]) -> core::result::Result<u64, Option<(u64, &'static str)>> {
        self.stats.connect_attempts.fetch_add(1, Relaxed);
        let data: Arc<dyn Transport> = Socket::connect(self.cfg.peer)
            .and_then(|s| Tcp::new(s, self.counters.clone())).map_err(|_| None)?;
        let queues = Queues::new().map_err(|_| None)?;
        let generation = self.attach(data.clone(), queues).ok_or(None)?;
        let fail = |why| Some((generation, why));
        let stop = || !self.is_current(generation);
        send_msg(&*data, &Message::Handshake(self.our_handshake(Channel::Data)), &stop)
            .map_err(|_| fail("cannot send the handshake"))?;
        let peer = self.recv_handshake(&*data, buf).map_err(fail)?;
        if peer.channel != Channel::Data {
            return Err(fail("the peer answered on the wrong channel"));
        }
        let features = self.check_peer(&peer).map_err(fail)?;
        if let Err(why) = self.check_protocol(&peer) {
            pr_err!("{}: {} ({}, ours {}): fix one table\n", &*self.cfg.name, why,
                Protocol::from_u8(peer.replication).map_or("C", |p| p.as_str()), self.cfg.protocol.as_str());
            self.go_standalone();
            return Err(fail(why));
        }
        let peer_discards = peer.flags & wire::hs_flags::DISCARD_MY_DATA != 0;
        if let Err((why, standalone)) = self.check_uuids(&peer.uuids, peer_discards) {
            if standalone {
                self.go_standalone();
            }
            return Err(fail(why));
        }
        let meta: Arc<dyn Transport> = Socket::connect(self.cfg.peer)
            .and_then(|s| Tcp::new(s, self.counters.clone())).map_err(|_| fail("cannot connect the meta socket"))?;
        meta.set_meta(META_TICK_MS);
        send_msg(&*meta, &Message::Handshake(self.our_handshake(Channel::Meta)), &stop)
            .map_err(|_| fail("cannot send the meta handshake"))?;
        let peer = self.recv_handshake(&*meta, buf).map_err(fail)?;
        if peer.channel != Channel::Meta {
            return Err(fail("the peer answered on the wrong channel"));
        }
        self.check_peer(&peer).map_err(fail)?;
        self.complete(generation, meta, features).map_err(fail)?;
        Ok(generation)
    }

    /// Waits until connection `generation` is gone or the device stops.
    fn wait_lost(&self, generation: u64) {
        let mut c = self.conn.lock();
        while !c.stopping && c.generation == generation && c.link.is_some() {
            let _ = self.link_changed.wait_interruptible_timeout(&mut c, kernel::time::msecs_to_jiffies(1000));
        }
    }

    /// Stops connecting until the user says `rmirrorctl connect` (split brain, unrelated data,
    /// ...).
    pub(crate) fn go_standalone(&self) {
        let now = self.now_ms();
        let _ = self.conn.lock().sm.on_disconnect(now);
        pr_warn!("{}: standalone: not connecting again until rmirrorctl connect {}\n", &*self.cfg.name,
            &*self.cfg.name);
        self.give_up_outage_queue("standalone");
    }

    /// Waits while the device is standalone (until `rmirrorctl connect` or teardown).
    fn wait_standalone(&self) {
        let mut c = self.conn.lock();
        while !c.stopping && c.sm.state() == CState::Standalone {
            let _ = self.link_changed.wait_interruptible_timeout(&mut c, kernel::time::msecs_to_jiffies(1000));
        }
    }

    /// `rmirrorctl connect [--discard-my-data]`: a standalone device connects (primary) or
    /// accepts (secondary) again; the handshake's checks run again. `EALREADY` if it is not
    /// standalone. With `discard`, a split brain found by the next handshake is resolved by
    /// making this side the sync target (only a secondary may ask: `EINVAL` on a primary).
    pub(crate) fn user_connect(&self, discard: bool) -> Result {
        let now = self.now_ms();
        if discard && self.role() == Role::Primary {
            pr_err!("{}: connect: a primary never discards its data (rmirrorctl secondary {} first)\n",
                &*self.cfg.name, &*self.cfg.name);
            return Err(EINVAL);
        }
        let r = {
            let mut c = self.conn.lock();
            if c.stopping {
                return Err(ENXIO);
            }
            let r = c.sm.on_connect(now).map_err(|_| c.sm.state());
            if r.is_ok() {
                c.discard_my_data = discard;
            }
            r
        };
        if discard && r.is_ok() {
            pr_warn!("{}: connect: a split brain will be resolved by discarding our data\n", &*self.cfg.name);
        }
        match r {
            Ok(_) => {
                self.link_changed.notify_all();
                let what = match self.role() {
                    Role::Primary => "connecting to",
                    Role::Secondary => "accepting",
                };
                pr_info!("{}: connect: {} the peer {} again\n", &*self.cfg.name, what, Addr(self.cfg.peer));
                Ok(())
            }
            Err(state) => {
                pr_err!("{}: connect: not standalone ({}): already connecting or connected\n", &*self.cfg.name,
                    state.as_str());
                Err(crate::bindings::errno::ealready())
            }
        }
    }

    /// `rmirrorctl disconnect`: the device goes standalone. The connection, if any, is closed
    /// (writes in flight complete without the peer), the outage queue goes to the fracture
    /// bitmap, and the device stops connecting (primary) or accepting (secondary) until
    /// [`Device::user_connect`]. A no-op on a standalone device.
    pub(crate) fn user_disconnect(&self) -> Result {
        let now = self.now_ms();
        let current = {
            let mut c = self.conn.lock();
            if c.stopping {
                return Err(ENXIO);
            }
            match c.sm.on_disconnect(now) {
                // The link may be up even when the machine has declared it lost (a heartbeat
                // timeout not carried out yet): close whatever is installed.
                Ok(_) => Ok(c.link.is_some().then_some(c.generation)),
                Err(_) => Err(()),
            }
        };
        let Ok(current) = current else {
            pr_info!("{}: disconnect: already standalone\n", &*self.cfg.name);
            return Ok(());
        };
        self.link_changed.notify_all();
        if let Some(generation) = current {
            self.connection_lost(generation, "disconnected by the user");
        }
        // Writes kept for a replay would wait for a connection nobody asked for: the bitmap
        // keeps them (the state machine's give_up_queue, done whatever it says: idempotent).
        self.give_up_outage_queue("disconnected by the user");
        pr_info!("{}: disconnected by the user: standalone (rmirrorctl connect {} to connect again)\n",
            &*self.cfg.name, &*self.cfg.name);
        Ok(())
    }

    /// The `connect_retry` tunable.
    fn retry_ms(&self) -> u32 {
        self.conn.lock().sm.config().connect_retry_ms
    }
}

/// Primary connection thread: connects whenever there is no connection, then waits for it
/// to end; attempts are `connect_retry` apart.
pub(crate) fn primary_connect(dev: &Arc<Device>) {
    let Some(mut buf) = frame_buffer(dev, 0) else { return };
    while !dev.stopping() {
        if dev.cstate() == CState::Standalone {
            dev.wait_standalone();
            continue;
        }
        match dev.connect_once(&mut buf) {
            Ok(generation) => dev.wait_lost(generation),
            Err(failed) => {
                if let Some((generation, why)) = failed {
                    dev.connection_lost(generation, why);
                }
                pause(dev, dev.retry_ms());
            }
        }
    }
}

/// Secondary listener thread: accepts the peer's sockets at any time and pairs them. While
/// standalone it closes them at once (the first refusal of each standalone period is logged).
pub(crate) fn secondary_accept(l: &Arc<Listener>) {
    let dev = &l.dev;
    let Some(mut buf) = frame_buffer(dev, 0) else { return };
    let Ok(mut rle) = KVVec::from_elem(0u8, crate::resync::RLE_CHUNK, GFP_KERNEL) else {
        pr_err!("{}: no memory for the bitmap buffer\n", &*dev.cfg.name);
        return;
    };
    let mut refusal_logged = false;
    while !dev.stopping() {
        let sock = match l.sock.accept() {
            Ok(Some(s)) => s,
            Ok(None) => {
                // The next standalone period logs its first refusal again.
                refusal_logged &= dev.cstate() == CState::Standalone;
                continue;
            }
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
        dev.stats.connect_attempts.fetch_add(1, Relaxed);
        if dev.cstate() == CState::Standalone {
            // Dropping the socket closes it: the primary sees the refusal at once.
            if !refusal_logged {
                pr_info!("{}: refused a connection from {}: standalone (rmirrorctl connect {} to accept)\n",
                    &*dev.cfg.name, Addr(dev.cfg.peer), &*dev.cfg.name);
                refusal_logged = true;
            }
            continue;
        }
        refusal_logged = false;
        let Ok(tcp) = Tcp::new(sock, dev.counters.clone()) else { continue };
        let link: Arc<dyn Transport> = tcp;
        if let Err(why) = accept_one(dev, link, &mut buf, &mut rle) {
            pr_warn!("{}: refused a connection from {}: {}\n", &*dev.cfg.name, Addr(dev.cfg.peer), why);
        }
    }
}

/// Handles one accepted socket: a data socket starts a new connection (replacing the old
/// one), a meta socket completes the pending one.
fn accept_one(dev: &Device, link: Arc<dyn Transport>, buf: &mut [u8], rle: &mut [u8])
    -> core::result::Result<(), &'static str> {
    let peer = dev.recv_handshake(&*link, buf)?;
    let features = dev.check_peer(&peer)?;
    let stop = || dev.stopping();
    match peer.channel {
        Channel::Data => {
            let old = {
                let c = dev.conn.lock();
                c.link.is_some().then_some(c.generation)
            };
            if let Some(g) = old {
                dev.connection_lost(g, "the peer connected again");
            }
            let queues = Queues::new().map_err(|_| "out of memory")?;
            let generation = dev.attach(link.clone(), queues).ok_or("the device is stopping or standalone")?;
            // Our handshake goes out even when we refuse: the primary reaches the same verdict
            // from it and stops trying. (Made before the verdict, which takes the one-shot
            // discard-my-data flag the handshake must carry.)
            let ours = dev.our_handshake(Channel::Data);
            let verdict = match dev.check_protocol(&peer) {
                Err(why) => Err((why, true)),
                Ok(()) => dev.check_uuids(&peer.uuids, peer.flags & wire::hs_flags::DISCARD_MY_DATA != 0),
            };
            if send_msg(&*link, &Message::Handshake(ours), &stop).is_err() {
                dev.connection_lost(generation, "cannot send the handshake");
            }
            if let Err((why, _)) = verdict {
                dev.connection_lost(generation, why);
                if why == crate::uuids::SPLIT_BRAIN {
                    // As DRBD: both sides stand alone until the user resolves it.
                    dev.go_standalone();
                }
            }
            Ok(())
        }
        Channel::Meta => {
            let generation = {
                let c = dev.conn.lock();
                match (&c.link, &c.meta, c.sm.state()) {
                    (Some(_), None, CState::Handshake) => c.generation,
                    _ => return Err("a meta socket without a data socket"),
                }
            };
            link.set_meta(META_TICK_MS);
            if send_msg(&*link, &Message::Handshake(dev.our_handshake(Channel::Meta)), &stop).is_err() {
                dev.connection_lost(generation, "cannot send the meta handshake");
                return Ok(());
            }
            if let Err(why) = dev.complete(generation, link.clone(), features) {
                dev.connection_lost(generation, why);
                return Ok(());
            }
            // Our bitmap goes to the primary, which ORs it into its own (see PEER_BITMAP).
            if features & feature::PEER_BITMAP != 0 && dev.send_bitmap(&*link, generation, rle).is_err() {
                dev.connection_lost(generation, "cannot send the bitmap");
            }
            Ok(())
        }
    }
}
