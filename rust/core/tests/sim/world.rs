// SPDX-License-Identifier: GPL-2.0
//! The simulated world: two replicas, a TCP-like network, faults, a workload and the checks.
//!
//! Everything is driven by one event queue ordered by (time, sequence) and one [`Rng`], so
//! a seed replays a run exactly. The replicas run the real core pieces: the connection
//! machine, the outage queue, the protocol tracker, the UUID comparison, the token bucket,
//! the device validators, the fracture bitmap and the activity log.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::fmt::Write as _;

use rmirror_core::al;
use rmirror_core::bitmap::Bitmap;
use rmirror_core::state::conn::{self, Conn, State as CState};
use rmirror_core::state::device::{self, Disk, Peer, Repl, Role};
use rmirror_core::state::outage::{self, Entry, Push, Queue};
use rmirror_core::state::peer::Durability;
use rmirror_core::state::protocol::{Event, Net, Protocol, Request, Status};
use rmirror_core::state::resync::{self, Controller, ControllerConfig, Decision, Fixup, TokenBucket, Uuids};

use crate::disk::SimDisk;
use crate::rng::Rng;

/// Blocks (= bitmap regions of 4 KiB) per replica.
pub const NBLK: u64 = 256;
const BLK_SECT: u64 = 8;
const DEV_SECT: u64 = NBLK * BLK_SECT;
const REGION_SHIFT: u32 = 12;
const AL_SHIFT: u32 = 15;
const AL_EXTENTS: u32 = 7;
const AL_UUID: u64 = 0x5EED;
const TICK: u64 = 10;
/// End of the fault phase (ms of simulated time).
const T_FAULTS: u64 = 1500;
/// Workload stops this long after the fault phase.
const T_WORK_TAIL: u64 = 300;
/// Convergence must happen within this long after the fault phase.
const T_CONVERGE: u64 = 15_000;

/// Deliberate bugs, to prove the checks can fail.
#[derive(Clone, Copy, Debug, Default)]
pub struct Bugs {
    /// Complete protocol C writes when sent, before the peer's durable ack.
    pub ack_before_durable: bool,
    /// Forget the activity log after a crash (do not mark its extents out of sync).
    pub skip_al_recovery: bool,
    /// Never start a new current UUID (outage while primary, promotion while disconnected).
    pub no_uuid_rotation: bool,
    /// Promotion while disconnected keeps the current UUID (split brain goes unnoticed).
    pub no_rotation_on_promote: bool,
    /// The sync source copies every region, not only the marked ones.
    pub resync_everything: bool,
    /// An activity log transaction retires extents without marking the outage queue's writes
    /// in them out of sync first.
    pub skip_retire_marks: bool,
    /// The sync source ignores the target's bitmap (no `PEER_BITMAP` exchange).
    pub ignore_peer_bitmap: bool,
    /// Group commit (`Durability::Flush`) sends its acks without the flush.
    pub ack_without_flush: bool,
    /// Group commit acks, when its flush ends, also the writes that completed while it ran
    /// (which that flush need not cover).
    pub ack_completed_mid_flush: bool,
}

/// Counters of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Application writes issued.
    pub writes: u64,
    /// Writes completed to the application.
    pub completed: u64,
    /// Regions copied by resync.
    pub copied: u64,
    /// Regions marked in the bitmap at resync starts.
    pub marked: u64,
    /// Writes replayed from the outage queue.
    pub replayed: u64,
    /// Outage queue overflows (or give-ups) drained to the bitmap.
    pub drained: u64,
    /// Outages declared.
    pub outages: u64,
    /// Handshakes that detected split brain (per side).
    pub split_brains: u64,
    /// Split brains injected (secondary promoted while disconnected).
    pub sb_injected: u64,
    /// Full syncs.
    pub full_syncs: u64,
    /// Crashes.
    pub crashes: u64,
    /// Completed resyncs.
    pub resyncs: u64,
    /// Simulated milliseconds until convergence.
    pub end_ms: u64,
    /// Queued writes marked out of sync because a transaction retired their extent.
    pub retire_marks: u64,
    /// Split brains resolved by `discard-my-data` at a handshake.
    pub sb_resolved: u64,
}

impl Stats {
    /// Adds another run's counters to these (`end_ms` is the latest of the two).
    pub fn merge(&mut self, s: &Stats) {
        self.writes += s.writes;
        self.completed += s.completed;
        self.copied += s.copied;
        self.marked += s.marked;
        self.replayed += s.replayed;
        self.drained += s.drained;
        self.outages += s.outages;
        self.split_brains += s.split_brains;
        self.sb_injected += s.sb_injected;
        self.full_syncs += s.full_syncs;
        self.crashes += s.crashes;
        self.resyncs += s.resyncs;
        self.end_ms = self.end_ms.max(s.end_ms);
        self.retire_marks += s.retire_marks;
        self.sb_resolved += s.sb_resolved;
    }
}

#[derive(Clone, Debug)]
enum Msg {
    Ping,
    Pong,
    Fin,
    /// `b_promoted` is simulator truth at send time (a stalled Hello may arrive after the
    /// operator resolved the split brain it reveals).
    Hello { uuids: Uuids, disk: Disk, runs: Vec<(u64, u64)>, b_promoted: bool, discard: bool },
    Data { req: u64, first: u64, n: u64, val: u64, q: Option<u64>, proto: Protocol },
    RecvAck { req: u64 },
    Ack { req: u64, q: Option<u64> },
    RsData { blk: u64, val: u64 },
    RsAck { blk: u64 },
    RsDone { uuids: Uuids },
    RsDoneAck,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Reset,
    Stall(u64),
    Crash(usize, u64),
    Restart(usize),
    PromoteB,
    Resolve,
    Heal,
}

#[derive(Debug)]
enum Ev {
    Tick(usize),
    Work,
    DiskDone(usize, u64),
    Deliver(usize),
    Established(usize, u64),
    Fault(Fault),
    /// The secondary's acker takes the completed writes and starts one flush for them.
    FlushStart(usize),
    /// That flush (its number) ended: the batch's acks go.
    FlushDone(usize, u64),
}

/// A group commit's ack waiting for its flush: (req, outage-queue seq, connection epoch).
type PendingAck = (u64, Option<u64>, u64);

enum IoKind {
    App(u64),
    Repl { req: u64, q: Option<u64>, epoch: u64, flush: bool },
    Rs { blk: u64, epoch: u64 },
}

struct SReq {
    r: Request,
    first: u64,
    n: u64,
    val: u64,
    fua: bool,
    queued: bool,
}

/// Resync rate control: a fixed-rate bucket or the plan-ahead controller.
enum Rate {
    Bucket(TokenBucket),
    Plan { ctl: Box<Controller<10>>, allow: u64 },
}

impl Rate {
    fn take(&mut self, now: u64, bytes: u64) -> bool {
        match self {
            Rate::Bucket(tb) => tb.grant(now, bytes) == bytes,
            Rate::Plan { ctl, allow } => {
                *allow += ctl.on_tick(now);
                if *allow >= bytes {
                    *allow -= bytes;
                    true
                } else {
                    false
                }
            }
        }
    }

    fn completed(&mut self, bytes: u64) {
        if let Rate::Plan { ctl, .. } = self {
            ctl.completed(bytes);
        }
    }
}

struct RsSrc {
    inflight: BTreeSet<u64>,
    tb: Rate,
    done_sent: bool,
    marked: u64,
    copied: u64,
}

struct Node {
    alive: bool,
    dev: device::State,
    disk: SimDisk,
    ios: BTreeMap<u64, IoKind>,
    bm: Bitmap<Vec<u64>>,
    al: al::Log<Vec<al::Slot>>,
    ring: Vec<[u8; al::SLOT_SIZE]>,
    uuids: Uuids,
    conn: Conn,
    sock: Option<u64>,
    verdict: Option<(u64, Decision)>,
    reqs: BTreeMap<u64, SReq>,
    queue: Queue<Vec<Entry>>,
    src: Option<RsSrc>,
    busy: Vec<u32>,
    /// Sync target only: blocks the application wrote during this resync (resync data for
    /// them is older and must be dropped).
    rs_written: BTreeSet<u64>,
    want_primary_at: Option<u64>,
    /// Group commit: acks of completed writes waiting for the acker's next flush (req, q,
    /// epoch), and the batch whose flush is running (with its number).
    unflushed: Vec<PendingAck>,
    flushing: Option<(u64, Vec<PendingAck>)>,
    flush_no: u64,
    acker_armed: bool,
    /// The operator said `connect --discard-my-data` (until a resync as target starts).
    discard_my_data: bool,
}

/// Ground truth kept by the simulator (not visible to the nodes).
#[derive(Default)]
struct Truth {
    /// Node wrote data its peer did not get, since they last agreed.
    wrote_apart: [bool; 2],
    /// Node B was promoted while disconnected, since the last resolution.
    b_promoted: bool,
}

/// One simulated run.
pub struct World {
    now: u64,
    rng: Rng,
    bugs: Bugs,
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    evs: Vec<Option<Ev>>,
    nodes: [Node; 2],
    epoch: u64,
    blocked_until: u64,
    fifo: [VecDeque<(u64, u64, Msg)>; 2],
    establishing: bool,
    proto: Protocol,
    /// How the secondary makes protocol C's writes durable (rule 5 of `state::peer`).
    durability: Durability,
    qbytes: u64,
    next_val: u64,
    hot: u64,
    /// Per writer node and block: newest write completed to the application.
    completed: [Vec<u64>; 2],
    /// ... newest write completed and made durable (FUA, or a flush after it).
    guaranteed: [Vec<u64>; 2],
    /// ... newest write completed under protocol C with the peer's durable ack.
    repl_acked: [Vec<u64>; 2],
    truth: Truth,
    resolve_pending: bool,
    faults_over: bool,
    stats: Stats,
    verbose: bool,
    trace: Vec<String>,
    fail: Option<String>,
}

fn conn_cfg() -> conn::Config {
    conn::Config {
        ping_interval_ms: 100,
        timeout_ms: 300,
        probation_ms: 200,
        connect_retry_ms: 100,
        outage_max_ms: 1000,
    }
}

fn al_cfg() -> al::Config {
    al::Config {
        extent_shift: AL_SHIFT,
        nr_extents: AL_EXTENTS,
        ring_slots: al::min_ring_slots(AL_EXTENTS),
        device_uuid: AL_UUID,
    }
}

fn mirrored(d: Decision) -> Decision {
    match d {
        Decision::SyncSource { full } => Decision::SyncTarget { full },
        Decision::SyncTarget { full } => Decision::SyncSource { full },
        x => x,
    }
}

impl Node {
    fn new(qslots: usize, qbytes: u64) -> Self {
        let cfg = al_cfg();
        Node {
            alive: true,
            dev: device::State { role: Role::Secondary, disk: Disk::UpToDate, repl: Repl::Off, peer: None },
            disk: SimDisk::new(NBLK as usize),
            ios: BTreeMap::new(),
            bm: Bitmap::new(vec![0; Bitmap::<Vec<u64>>::storage_words(DEV_SECT, REGION_SHIFT).unwrap()], DEV_SECT, REGION_SHIFT)
                .unwrap(),
            al: al::Log::new(cfg, vec![al::Slot::EMPTY; AL_EXTENTS as usize], 0).unwrap(),
            ring: vec![[0u8; al::SLOT_SIZE]; cfg.ring_slots as usize],
            uuids: Uuids { current: 0x1000, bitmap: 0, history: [0; 2], flags: 0 },
            conn: Conn::new(conn_cfg()).unwrap(),
            sock: None,
            verdict: None,
            reqs: BTreeMap::new(),
            queue: Queue::new(vec![Entry::EMPTY; qslots], qbytes),
            src: None,
            busy: vec![0; NBLK as usize],
            rs_written: BTreeSet::new(),
            want_primary_at: None,
            unflushed: Vec::new(),
            flushing: None,
            flush_no: 0,
            acker_armed: false,
            discard_my_data: false,
        }
    }
}

impl World {
    /// A world for `seed`, with `bugs` switched on.
    pub fn new(seed: u64, bugs: Bugs, verbose: bool) -> Self {
        let mut rng = Rng::new(seed);
        let proto = if bugs.ack_before_durable {
            Protocol::C
        } else {
            match rng.below(10) {
                0 => Protocol::A,
                1 => Protocol::B,
                _ => Protocol::C,
            }
        };
        // From the seed, not the generator: the other draws stay as they were.
        let group_commit = bugs.ack_without_flush || bugs.ack_completed_mid_flush || seed % 2 == 1;
        let durability = if group_commit { Durability::Flush } else { Durability::Fua };
        let qslots = rng.range(8, 128) as usize;
        let qbytes = rng.range(16, 256) * 4096;
        let mut w = World {
            now: 0,
            rng,
            bugs,
            heap: BinaryHeap::new(),
            evs: Vec::new(),
            nodes: [Node::new(qslots, qbytes), Node::new(qslots, qbytes)],
            epoch: 0,
            blocked_until: 0,
            fifo: [VecDeque::new(), VecDeque::new()],
            establishing: false,
            proto,
            durability,
            qbytes,
            next_val: 1,
            hot: 0,
            completed: [vec![0; NBLK as usize], vec![0; NBLK as usize]],
            guaranteed: [vec![0; NBLK as usize], vec![0; NBLK as usize]],
            repl_acked: [vec![0; NBLK as usize], vec![0; NBLK as usize]],
            truth: Truth::default(),
            resolve_pending: false,
            faults_over: false,
            stats: Stats::default(),
            verbose,
            trace: Vec::new(),
            fail: None,
        };
        w.nodes[0].dev.role = Role::Primary;
        let qb = w.qbytes;
        let d = durability.as_str();
        w.log(format_args!("proto {} durability {d} queue {} slots {} bytes", proto.as_str(), qslots, qb));
        w
    }

    fn log(&mut self, a: std::fmt::Arguments) {
        if self.verbose {
            let mut s = String::new();
            let _ = write!(s, "{:6} {}", self.now, a);
            self.trace.push(s);
        }
    }

    fn fail(&mut self, msg: String) {
        if self.fail.is_none() {
            self.log(format_args!("FAIL: {msg}"));
            self.fail = Some(format!("t={} {msg}", self.now));
        }
    }

    fn at(&mut self, t: u64, ev: Ev) {
        let seq = self.evs.len() as u64;
        self.evs.push(Some(ev));
        self.heap.push(Reverse((t, seq)));
    }

    fn fresh_uuid(&mut self) -> u64 {
        (self.rng.next_u64() | 0x100) & !1
    }

    /// Runs the scenario; returns the stats or a failure description.
    pub fn run(mut self) -> (Result<Stats, String>, Vec<String>) {
        for n in 0..2 {
            let a = self.nodes[n].conn.on_connect(0).unwrap();
            self.apply(n, a);
            self.at(TICK + n as u64, Ev::Tick(n));
        }
        // The first connection is up by then (a primary writing before any connection would
        // need a new current UUID first, see Documentation/state-machines.rst).
        self.at(30, Ev::Work);
        self.schedule_faults();
        self.at(T_FAULTS, Ev::Fault(Fault::Heal));
        let deadline = T_FAULTS + T_CONVERGE;
        let mut next_check = T_FAULTS + T_WORK_TAIL;
        while let Some(Reverse((t, seq))) = self.heap.pop() {
            if self.fail.is_some() {
                break;
            }
            self.now = t;
            if t > deadline {
                let st = self.describe();
                self.fail(format!("no convergence: {st}"));
                break;
            }
            if t >= next_check {
                next_check = t + 50;
                if self.converged() {
                    self.final_checks();
                    break;
                }
            }
            let ev = self.evs[seq as usize].take().unwrap();
            self.dispatch(ev);
        }
        self.stats.end_ms = self.now;
        let trace = std::mem::take(&mut self.trace);
        match self.fail {
            Some(f) => (Err(f), trace),
            None => (Ok(self.stats), trace),
        }
    }

    fn schedule_faults(&mut self) {
        let nf = self.rng.below(5);
        for _ in 0..nf {
            let t = self.rng.range(100, T_FAULTS - 100);
            let f = match self.rng.below(100) {
                0..=14 => Fault::Reset,
                15..=29 => Fault::Stall(self.rng.range(30, 250)),
                30..=49 => Fault::Stall(self.rng.range(350, 1300)),
                50..=64 => Fault::Crash(0, self.rng.range(20, 400)),
                65..=74 => Fault::Crash(1, self.rng.range(20, 400)),
                _ => {
                    // Split brain: a partition long enough for B to notice, then promote B.
                    let len = self.rng.range(600, 1200);
                    self.at(t + 400, Ev::Fault(Fault::PromoteB));
                    Fault::Stall(len)
                }
            };
            self.at(t, Ev::Fault(f));
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Tick(n) => {
                if self.nodes[n].alive {
                    let a = self.nodes[n].conn.on_tick(self.now);
                    self.apply(n, a);
                    self.maybe_promote(n);
                    self.pump(n);
                }
                self.at(self.now + TICK, Ev::Tick(n));
            }
            Ev::Work => {
                for n in 0..2 {
                    if self.nodes[n].alive && self.nodes[n].dev.role == Role::Primary {
                        if self.rng.chance(1, 40) {
                            self.flush(n);
                        } else {
                            self.write(n);
                        }
                    }
                }
                if self.now < T_FAULTS + T_WORK_TAIL {
                    let d = self.rng.range(2, 14);
                    self.at(self.now + d, Ev::Work);
                }
            }
            Ev::DiskDone(n, io) => self.disk_done(n, io),
            Ev::Deliver(to) => self.deliver(to),
            Ev::Established(n, e) => {
                self.establishing = false;
                let node = &mut self.nodes[n];
                if e == self.epoch && node.alive && matches!(node.conn.state(), CState::Connecting | CState::Outage) {
                    node.sock = Some(e);
                    let a = node.conn.on_connected(self.now).unwrap();
                    self.log(format_args!("n{n} established epoch {e}"));
                    self.apply(n, a);
                }
            }
            Ev::Fault(f) => self.fault(f),
            Ev::FlushStart(n) => self.flush_start(n),
            Ev::FlushDone(n, no) => self.flush_done(n, no),
        }
    }

    /// Group commit, as the driver's acker: take the writes completed so far and start one
    /// flush. A flush covers the writes completed before it starts (the disk model makes them
    /// durable now); writes that complete while it runs wait for the next one.
    fn flush_start(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.acker_armed = false;
        if !node.alive || node.flushing.is_some() || node.unflushed.is_empty() {
            return;
        }
        node.flush_no += 1;
        let no = node.flush_no;
        let batch = std::mem::take(&mut node.unflushed);
        let len = batch.len();
        node.flushing = Some((no, batch));
        if !self.bugs.ack_without_flush {
            self.nodes[n].disk.flush();
        }
        self.log(format_args!("n{n} acker flush {no} for {len} acks"));
        let t = self.now + self.rng.range(1, 6);
        self.at(t, Ev::FlushDone(n, no));
    }

    /// The flush ended: its batch's acks go (those of a connection that is gone are dropped,
    /// as the driver's acker does), then the next batch's flush starts.
    fn flush_done(&mut self, n: usize, no: u64) {
        let node = &mut self.nodes[n];
        if !node.alive || node.flushing.as_ref().is_none_or(|f| f.0 != no) {
            return;
        }
        let Some((_, mut acks)) = node.flushing.take() else { return };
        if self.bugs.ack_completed_mid_flush {
            acks.append(&mut node.unflushed);
        }
        let more = !node.unflushed.is_empty();
        for (req, q, epoch) in acks {
            if self.nodes[n].sock == Some(epoch) {
                self.send(n, Msg::Ack { req, q });
            }
        }
        if more {
            self.nodes[n].acker_armed = true;
            self.at(self.now, Ev::FlushStart(n));
        }
    }

    // ---- network ----

    fn send(&mut self, n: usize, msg: Msg) {
        let Some(e) = self.nodes[n].sock else {
            return;
        };
        if e != self.epoch {
            return;
        }
        let to = 1 - n;
        let last = self.fifo[to].back().map_or(0, |m| m.0);
        let t = (self.now + self.rng.range(1, 4)).max(last);
        self.fifo[to].push_back((t, e, msg));
        self.at(t, Ev::Deliver(to));
    }

    fn deliver(&mut self, to: usize) {
        if self.now < self.blocked_until {
            // A stalled link delays (TCP retransmits), it does not reorder or drop.
            let t = self.blocked_until + 1;
            self.at(t, Ev::Deliver(to));
            return;
        }
        while let Some(&(t, _, _)) = self.fifo[to].front() {
            if t > self.now {
                break;
            }
            let (_, e, msg) = self.fifo[to].pop_front().unwrap();
            let node = &self.nodes[to];
            if !node.alive || node.sock != Some(e) {
                continue;
            }
            self.receive(to, msg);
            if self.fail.is_some() {
                return;
            }
        }
    }

    fn try_connect(&mut self, n: usize) {
        let p = 1 - n;
        let waiting = |s: CState| matches!(s, CState::Connecting | CState::Outage);
        if self.establishing
            || self.now < self.blocked_until
            || !self.nodes[p].alive
            || !waiting(self.nodes[p].conn.state())
            || !waiting(self.nodes[n].conn.state())
        {
            return;
        }
        self.epoch += 1;
        self.establishing = true;
        let t = self.now + self.rng.range(1, 5);
        self.at(t, Ev::Established(n, self.epoch));
        self.at(t, Ev::Established(p, self.epoch));
    }

    // ---- connection actions ----

    fn apply(&mut self, n: usize, a: conn::Actions) {
        if let Some(s) = a.new_state {
            self.log(format_args!("n{n} conn -> {}", s.as_str()));
        }
        if a.close {
            self.send(n, Msg::Fin);
            self.conn_lost(n);
        }
        if a.outage_begin {
            self.stats.outages += 1;
            if self.nodes[n].dev.role == Role::Primary && !self.bugs.no_uuid_rotation {
                let u = self.fresh_uuid();
                self.nodes[n].uuids.new_current(u);
            }
        }
        if a.give_up_queue {
            self.drain_queue(n);
        }
        if a.connect {
            self.try_connect(n);
        }
        if a.send_handshake {
            let node = &self.nodes[n];
            let runs = node.bm.runs(0).map(|r| (r.start, r.len)).collect();
            let m = Msg::Hello {
                uuids: node.uuids,
                disk: node.dev.disk,
                runs,
                b_promoted: self.truth.b_promoted,
                discard: node.discard_my_data,
            };
            self.send(n, m);
        }
        if a.send_ping {
            self.send(n, Msg::Ping);
        }
        if a.send_pong {
            self.send(n, Msg::Pong);
        }
        if a.resume {
            self.resume(n);
        }
    }

    fn conn_lost(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        node.sock = None;
        node.dev = device::force_state(device::State { repl: Repl::Off, ..node.dev });
        node.verdict = None;
        node.src = None;
        node.queue.rewind();
        let keys: Vec<u64> = node.reqs.keys().copied().collect();
        for k in keys {
            let net = self.nodes[n].reqs[&k].r.net();
            if matches!(net, Net::Pending | Net::Sent | Net::Received) {
                self.req_event(n, k, Event::ConnectionLost);
            }
        }
    }

    fn drain_queue(&mut self, n: usize) {
        let node = &mut self.nodes[n];
        let mut k = 0;
        let mut newly = 0;
        for e in node.queue.drain() {
            let sectors = u64::from(e.len) / 512;
            newly += node.bm.set_range(e.sector, sectors).unwrap();
            k += 1;
        }
        if let Some(src) = node.src.as_mut() {
            src.marked += newly;
        }
        if k > 0 {
            self.stats.drained += 1;
            self.log(format_args!("n{n} outage queue drained to bitmap ({k} writes)"));
        }
    }

    /// Marks a range out of sync; a running resync learns how much more it may copy.
    fn mark(&mut self, n: usize, sector: u64, sectors: u64) {
        let node = &mut self.nodes[n];
        let newly = node.bm.set_range(sector, sectors).unwrap();
        if let Some(src) = node.src.as_mut() {
            src.marked += newly;
        }
    }

    fn commit_al(&mut self, n: usize) {
        let skip_marks = self.bugs.skip_retire_marks;
        let stats = &mut self.stats;
        let node = &mut self.nodes[n];
        while node.al.needs_transaction() {
            let mut buf = [0u8; al::SLOT_SIZE];
            let tr = node.al.encode_transaction(&mut buf).unwrap();
            // The driver's rule (`actlog`): writes the peer has not acked (outage queue) in the
            // extents this transaction retires go to the bitmap first, since after a crash the
            // log no longer names those extents. (Writes hold their extents only until they
            // complete locally, so a long outage never pins the log.)
            let retired: Vec<u32> = node.al.evicted(&tr).collect();
            if !skip_marks && !retired.is_empty() {
                let ranges: Vec<(u64, u32)> = node.queue.ranges().collect();
                let mut newly = 0;
                for (sector, len) in ranges {
                    if len > 0 && al::touches_any(AL_SHIFT, &retired, sector, u64::from(len) / 512) {
                        newly += node.bm.set_range(sector, u64::from(len) / 512).unwrap();
                        stats.retire_marks += 1;
                    }
                }
                if let Some(src) = node.src.as_mut() {
                    src.marked += newly;
                }
            }
            // The transaction is written with REQ_PREFLUSH: completed data writes of evicted
            // extents are on stable storage before the log forgets them.
            node.disk.flush();
            node.ring[tr.ring_slot as usize] = buf;
            node.al.commit(tr).unwrap();
        }
    }

    // ---- application I/O ----

    fn write(&mut self, n: usize) {
        if self.rng.chance(1, 200) {
            self.hot = self.rng.below(NBLK);
        }
        let cnt = self.rng.range(1, 4);
        let first = (self.hot + self.rng.below(40)) % (NBLK - cnt + 1);
        let node = &self.nodes[n];
        // Without up-to-date local data a primary may only write through a live link
        // (DRBD fails such I/O: "no access to up-to-date data").
        let live = node.sock.is_some() && node.conn.state() == CState::Connected && node.dev.has_data();
        if node.dev.disk != Disk::UpToDate && !live {
            return;
        }
        let node = &mut self.nodes[n];
        if (first..first + cnt).any(|b| node.busy[b as usize] > 0) {
            return;
        }
        let (sector, sectors) = (first * BLK_SECT, cnt * BLK_SECT);
        match node.al.begin_write(sector, sectors) {
            Ok(_) => {}
            Err(al::Error::Busy) => return,
            Err(e) => return self.fail(format!("al begin_write: {}", e.as_str())),
        }
        self.commit_al(n);
        let val = self.next_val;
        self.next_val += 1;
        let fua = self.rng.chance(1, 8);
        let now = self.now;
        let node = &mut self.nodes[n];
        let (io, t) = node.disk.submit(now, &mut self.rng, first, cnt, val, fua);
        node.ios.insert(io, IoKind::App(val));
        for b in first..first + cnt {
            node.busy[b as usize] += 1;
            if node.dev.repl == Repl::SyncTarget {
                node.rs_written.insert(b);
            }
        }
        // On a sync target only the peer's copy counts.
        let r = if node.dev.disk == Disk::UpToDate {
            Request::new(self.proto)
        } else {
            Request::new_remote_only(self.proto)
        };
        node.reqs.insert(val, SReq { r, first, n: cnt, val, fua, queued: false });
        self.stats.writes += 1;
        self.log(format_args!("n{n} write {val} at {first}+{cnt}{}", if fua { " fua" } else { "" }));
        self.at(t, Ev::DiskDone(n, io));
        let node = &self.nodes[n];
        let replicating = node.sock.is_some()
            && node.conn.state() == CState::Connected
            && node.dev.repl != Repl::Off
            && node.queue.is_empty();
        if replicating {
            let m = Msg::Data { req: val, first, n: cnt, val, q: None, proto: self.proto };
            self.send(n, m);
            self.req_event(n, val, Event::Sent);
            if self.bugs.ack_before_durable {
                self.req_event(n, val, Event::AckDurable);
            }
            return;
        }
        self.truth.wrote_apart[n] = true;
        let queueing = node.conn.in_outage() || !node.queue.is_empty();
        // Not replicated now: the tracker reports the range for marking; while the outage
        // queue takes the write, the queue (and the AL extent it pins) owns that range.
        if queueing {
            let node = &mut self.nodes[n];
            match node.queue.push(Entry::new(sector, (cnt * 4096) as u32, val as u32)) {
                Push::Queued(_) => {
                    node.reqs.get_mut(&val).unwrap().queued = true;
                }
                Push::Overflow => self.drain_queue(n),
                Push::Bypass => {}
            }
        }
        self.req_event(n, val, Event::ConnectionLost);
    }

    fn flush(&mut self, n: usize) {
        self.log(format_args!("n{n} flush"));
        self.nodes[n].disk.flush();
        for b in 0..NBLK as usize {
            self.guaranteed[n][b] = self.guaranteed[n][b].max(self.completed[n][b]);
        }
    }

    fn req_event(&mut self, n: usize, id: u64, ev: Event) {
        let node = &mut self.nodes[n];
        let Some(sr) = node.reqs.get_mut(&id) else {
            return;
        };
        let o = match sr.r.event(ev) {
            Ok(o) => o,
            Err(e) => return self.fail(format!("n{n} req {id} {ev:?}: {}", e.as_str())),
        };
        if o.mark_out_of_sync && !sr.queued {
            let (sector, sectors) = (sr.first * BLK_SECT, sr.n * BLK_SECT);
            self.mark(n, sector, sectors);
        }
        let node = &mut self.nodes[n];
        let sr = node.reqs.get_mut(&id).unwrap();
        let (first, cnt, val, fua, queued) = (sr.first, sr.n, sr.val, sr.fua, sr.queued);
        let durable_at_peer = sr.r.net() == Net::Durable;
        let finished = sr.r.is_finished();
        if let Some(st) = o.complete {
            self.stats.completed += 1;
            if st != Status::Ok && self.nodes[n].dev.disk == Disk::UpToDate {
                return self.fail(format!("write {id} failed on an up-to-date disk"));
            }
            // On a sync target the local copy does not count: only a durable peer copy does.
            let counts = st == Status::Ok && (self.nodes[n].dev.disk == Disk::UpToDate || durable_at_peer);
            for b in (first..first + cnt).filter(|_| counts) {
                let b = b as usize;
                self.completed[n][b] = self.completed[n][b].max(val);
                if fua {
                    self.guaranteed[n][b] = self.guaranteed[n][b].max(val);
                }
                if self.proto == Protocol::C && durable_at_peer {
                    self.repl_acked[n][b] = self.repl_acked[n][b].max(val);
                }
            }
        }
        if finished {
            let node = &mut self.nodes[n];
            node.reqs.remove(&id);
            for b in first..first + cnt {
                node.busy[b as usize] -= 1;
            }
            let _ = queued;
            node.al.end_write(first * BLK_SECT, cnt * BLK_SECT).unwrap();
        }
    }

    fn disk_done(&mut self, n: usize, io: u64) {
        let node = &mut self.nodes[n];
        if !node.alive {
            return;
        }
        let Some(kind) = node.ios.remove(&io) else {
            return;
        };
        if !node.disk.complete(io) {
            return;
        }
        match kind {
            IoKind::App(id) => self.req_event(n, id, Event::LocalDone),
            // Peer requests belong to their connection: no ack on a later one.
            IoKind::Repl { req, q, epoch, flush: true } => {
                // Group commit: the ack waits for a flush submitted after this completion.
                let node = &mut self.nodes[n];
                node.unflushed.push((req, q, epoch));
                if !node.acker_armed && node.flushing.is_none() {
                    node.acker_armed = true;
                    let t = self.now + self.rng.range(0, 4);
                    self.at(t, Ev::FlushStart(n));
                }
            }
            IoKind::Repl { req, q, epoch, flush: false } => {
                if self.nodes[n].sock == Some(epoch) {
                    self.send(n, Msg::Ack { req, q });
                }
            }
            IoKind::Rs { blk, epoch } => {
                self.nodes[n].bm.clear_bits(blk, 1).unwrap();
                if self.nodes[n].sock == Some(epoch) {
                    self.send(n, Msg::RsAck { blk });
                }
            }
        }
    }

    // ---- receiving ----

    fn receive(&mut self, n: usize, msg: Msg) {
        let now = self.now;
        match msg {
            Msg::Ping => {
                if let Ok(a) = self.nodes[n].conn.on_ping(now) {
                    self.apply(n, a);
                }
                return;
            }
            Msg::Pong => {
                if let Ok(a) = self.nodes[n].conn.on_pong(now) {
                    self.apply(n, a);
                }
                return;
            }
            Msg::Fin => {
                if let Ok(a) = self.nodes[n].conn.on_error(now) {
                    self.apply(n, a);
                }
                return;
            }
            _ => {
                let _ = self.nodes[n].conn.on_traffic(now);
            }
        }
        match msg {
            Msg::Hello { uuids, disk, runs, b_promoted, discard } => {
                self.handshake(n, uuids, disk, runs, b_promoted, discard)
            }
            Msg::Data { req, first, n: cnt, val, q, proto } => {
                if proto == Protocol::B && q.is_none() {
                    self.send(n, Msg::RecvAck { req });
                }
                // Under A and B the sim's secondary keeps FUA; C follows the durability rule.
                let durable = proto == Protocol::C;
                let fua = !durable || self.durability.submit_fua(durable, false);
                let flush = Durability::flush_before_ack(durable, fua);
                let node = &mut self.nodes[n];
                let (io, t) = node.disk.submit(now, &mut self.rng, first, cnt, val, fua);
                let epoch = node.sock.unwrap();
                node.ios.insert(io, IoKind::Repl { req, q, epoch, flush });
                self.at(t, Ev::DiskDone(n, io));
            }
            Msg::RecvAck { req } => self.req_event(n, req, Event::AckReceived),
            Msg::Ack { req, q: None } => self.req_event(n, req, Event::AckDurable),
            Msg::Ack { q: Some(seq), .. } => {
                let node = &mut self.nodes[n];
                let r = node.queue.ack(seq, |_| {});
                match r {
                    Ok(_) | Err(outage::Error::Released) => {}
                    Err(e) => return self.fail(format!("n{n} queue ack {seq}: {}", e.as_str())),
                }
                self.pump(n);
            }
            Msg::RsData { blk, val } => {
                let node = &mut self.nodes[n];
                if node.rs_written.contains(&blk) {
                    // The application wrote this block since the resync started; that write
                    // goes to the source too, ahead of this ack: the resync data is stale.
                    node.bm.clear_bits(blk, 1).unwrap();
                    self.send(n, Msg::RsAck { blk });
                    return;
                }
                let (io, t) = node.disk.submit(now, &mut self.rng, blk, 1, val, true);
                let epoch = node.sock.unwrap();
                node.ios.insert(io, IoKind::Rs { blk, epoch });
                self.at(t, Ev::DiskDone(n, io));
            }
            Msg::RsAck { blk } => {
                let node = &mut self.nodes[n];
                if let Some(src) = node.src.as_mut() {
                    src.inflight.remove(&blk);
                    src.tb.completed(4096);
                    node.bm.clear_bits(blk, 1).unwrap();
                }
                self.pump(n);
            }
            Msg::RsDone { uuids } => {
                let w = self.nodes[n].bm.weight();
                if w != 0 {
                    return self.fail(format!("n{n} sync target has {w} regions left at resync end"));
                }
                let node = &mut self.nodes[n];
                node.uuids.sync_finished_target(&uuids);
                node.uuids.flags &= !resync::FLAG_CRASHED_PRIMARY;
                node.dev = device::force_state(device::State { disk: Disk::UpToDate, repl: Repl::Established, ..node.dev });
                self.truth.wrote_apart[n] = false;
                if n == 1 {
                    self.truth.b_promoted = false;
                }
                self.log(format_args!("n{n} resync done as target"));
                self.send(n, Msg::RsDoneAck);
            }
            Msg::RsDoneAck => {
                let node = &mut self.nodes[n];
                node.uuids.sync_finished_source();
                node.uuids.flags &= !resync::FLAG_CRASHED_PRIMARY;
                node.dev.repl = Repl::Established;
                if let Some(src) = node.src.take() {
                    if src.copied > src.marked {
                        let (c, m) = (src.copied, src.marked);
                        return self.fail(format!("resync copied {c} regions but only {m} were marked"));
                    }
                }
                if node.queue.is_overflowed() && node.queue.is_empty() {
                    node.queue.reset().unwrap();
                }
                self.truth.wrote_apart[n] = false;
                self.stats.resyncs += 1;
                self.log(format_args!("n{n} resync done as source"));
            }
            Msg::Ping | Msg::Pong | Msg::Fin => unreachable!(),
        }
    }

    fn handshake(&mut self, n: usize, peer: Uuids, peer_disk: Disk, runs: Vec<(u64, u64)>, b_promoted: bool,
        peer_discards: bool) {
        if self.nodes[n].conn.state() != CState::Handshake {
            return;
        }
        let v = resync::compare(&self.nodes[n].uuids, &peer, n == 0);
        let mut d = v.decision;
        let my_disk = self.nodes[n].dev.disk;
        // Disk states override (DRBD's drbd_sync_handshake): inconsistent data never wins.
        if (my_disk == Disk::Inconsistent && peer_disk > Disk::Inconsistent)
            || (peer_disk == Disk::Inconsistent && my_disk > Disk::Inconsistent)
        {
            let full = matches!(
                d,
                Decision::SplitBrain | Decision::SyncSource { full: true } | Decision::SyncTarget { full: true }
            );
            d = if my_disk > Disk::Inconsistent {
                Decision::SyncSource { full }
            } else {
                Decision::SyncTarget { full }
            };
        }
        if v.fixup == Fixup::FinishOwnSync {
            self.nodes[n].uuids.sync_finished_source();
        }
        let me = self.nodes[n].uuids;
        self.log(format_args!("n{n} handshake {} by rule {} (me {me:x?} peer {peer:x?})", d.as_str(), v.rule));
        let both_wrote = self.truth.wrote_apart[0] && self.truth.wrote_apart[1];
        if both_wrote && d != Decision::SplitBrain {
            return self.fail(format!("split brain missed: both wrote apart, n{n} says {} (rule {})", d.as_str(), v.rule));
        }
        // The operator's resolution (`connect --discard-my-data` on the victim).
        if d == Decision::SplitBrain {
            if let Some(r) = resync::resolve_split_brain(v.rule, self.nodes[n].discard_my_data, peer_discards) {
                self.log(format_args!("n{n} split brain resolved: {}", r.as_str()));
                if n == 0 {
                    self.stats.sb_resolved += 1;
                }
                d = r;
            }
        }
        match d {
            Decision::Unrelated => return self.fail(format!("n{n}: unrelated data (rule {})", v.rule)),
            Decision::SplitBrain => {
                if !self.truth.b_promoted && !b_promoted {
                    return self.fail(format!("false split brain at n{n} (rule {})", v.rule));
                }
                self.stats.split_brains += 1;
                let a = self.nodes[n].conn.on_disconnect(self.now).unwrap();
                self.apply(n, a);
                if !self.resolve_pending {
                    self.resolve_pending = true;
                    self.at(self.now + 50, Ev::Fault(Fault::Resolve));
                }
                return;
            }
            _ => {}
        }
        // Both sides' verdicts of one connection must mirror each other.
        let e = self.nodes[n].sock.unwrap();
        if let Some((pe, pd)) = self.nodes[1 - n].verdict {
            if pe == e && pd != mirrored(d) {
                return self.fail(format!("verdicts disagree: n{n} {} vs {}", d.as_str(), pd.as_str()));
            }
        }
        let ignore = self.bugs.ignore_peer_bitmap;
        let node = &mut self.nodes[n];
        for (s, l) in runs.into_iter().filter(|_| !ignore) {
            if node.bm.set_bits(s, l).is_err() {
                return self.fail("bad bitmap runs".into());
            }
        }
        if matches!(d, Decision::SyncSource { full: true } | Decision::SyncTarget { full: true }) {
            node.bm.set_all();
            self.stats.full_syncs += 1;
        }
        node.verdict = Some((e, d));
        // The operator's flag is for one handshake (DRBD's `--discard-my-data`).
        node.discard_my_data = false;
        self.install_verdict(n, d);
        let a = self.nodes[n].conn.on_handshake_ok(self.now).unwrap();
        self.apply(n, a);
    }

    /// Installs the verdict's device state at handshake time: the receiving side must be
    /// ready before the peer (whose probation may end first) starts sending.
    fn install_verdict(&mut self, n: usize, d: Decision) {
        let peer_role = self.nodes[1 - n].dev.role;
        let node = &mut self.nodes[n];
        let peer = Some(Peer { role: peer_role, disk: Disk::UpToDate });
        match d {
            Decision::NoSync => {
                node.uuids.flags &= !resync::FLAG_CRASHED_PRIMARY;
                node.dev = device::force_state(device::State { repl: Repl::Established, peer, ..node.dev });
            }
            Decision::SyncSource { .. } => {
                let peer = Some(Peer { role: peer_role, disk: Disk::Inconsistent });
                node.dev = device::force_state(device::State { repl: Repl::SyncSource, peer, ..node.dev });
            }
            Decision::SyncTarget { .. } => {
                if !node.queue.is_empty() {
                    self.drain_queue(n);
                }
                let node = &mut self.nodes[n];
                node.rs_written.clear();
                node.dev = device::force_state(device::State { repl: Repl::SyncTarget, peer, ..node.dev });
            }
            Decision::SplitBrain | Decision::Unrelated => unreachable!(),
        }
    }

    /// The link is trusted (probation passed): start sending what the verdict asks for.
    fn resume(&mut self, n: usize) {
        let Some((_, d)) = self.nodes[n].verdict else {
            return self.fail(format!("n{n} resumed without a verdict"));
        };
        let now = self.now;
        let node = &mut self.nodes[n];
        match d {
            Decision::NoSync if !node.queue.is_empty() => {
                self.fail(format!("n{n}: no sync although writes are queued"))
            }
            Decision::SyncSource { .. } => {
                if node.queue.is_overflowed() && node.queue.is_empty() {
                    node.queue.reset().unwrap();
                }
                let marked = node.bm.weight();
                self.stats.marked += marked;
                if self.bugs.resync_everything {
                    node.bm.set_all();
                }
                node.src = Some(RsSrc {
                    inflight: BTreeSet::new(),
                    tb: if self.rng.chance(1, 2) {
                        Rate::Bucket(TokenBucket::new(4 << 20, 64 << 10, now).unwrap())
                    } else {
                        let cfg = ControllerConfig {
                            step_ms: 10,
                            fill_target: 64 << 10,
                            delay_target_ms: 0,
                            max_rate: 64 << 20,
                            initial_rate: 4 << 20,
                        };
                        Rate::Plan { ctl: Box::new(Controller::new(cfg, now).unwrap()), allow: 0 }
                    },
                    done_sent: false,
                    marked,
                    copied: 0,
                });
                let ql = node.queue.len();
                self.log(format_args!("n{n} sync source: {ql} queued, {marked} marked"));
                self.pump(n);
            }
            _ => {}
        }
    }

    /// Sync source work: replay the outage queue in order, then copy marked regions.
    fn pump(&mut self, n: usize) {
        let now = self.now;
        let proto = self.proto;
        let node = &mut self.nodes[n];
        if !node.alive || node.conn.state() != CState::Connected || node.src.is_none() {
            return;
        }
        let mut out = Vec::new();
        while node.queue.in_flight() < 16 {
            let Ok(e) = node.queue.mark_sent() else {
                break;
            };
            out.push(Msg::Data {
                req: 0,
                first: e.sector / BLK_SECT,
                n: u64::from(e.len) / 4096,
                val: u64::from(e.tag),
                q: Some(e.seq()),
                proto,
            });
            self.stats.replayed += 1;
        }
        if node.queue.is_empty() {
            let src = node.src.as_mut().unwrap();
            let mut from = 0;
            while let Some(b) = node.bm.find_next_set(from) {
                from = b + 1;
                if src.inflight.contains(&b) || node.busy[b as usize] > 0 {
                    continue;
                }
                if !src.tb.take(now, 4096) {
                    break;
                }
                src.inflight.insert(b);
                src.copied += 1;
                self.stats.copied += 1;
                out.push(Msg::RsData { blk: b, val: node.disk.read(b) });
            }
            if node.bm.weight() == 0 && src.inflight.is_empty() && !src.done_sent {
                src.done_sent = true;
                out.push(Msg::RsDone { uuids: node.uuids });
            }
        }
        for m in out {
            self.send(n, m);
        }
    }

    fn maybe_promote(&mut self, n: usize) {
        let node = &self.nodes[n];
        let Some(at) = node.want_primary_at else {
            return;
        };
        if node.conn.state() != CState::Connected && self.now < at {
            return;
        }
        self.promote(n);
    }

    fn promote(&mut self, n: usize) {
        let st = self.nodes[n].conn.state();
        let ctx = device::Context { transient: matches!(st, CState::Handshake | CState::Probation), ..Default::default() };
        match device::promote(&self.nodes[n].dev, &ctx) {
            Ok(ns) => {
                // Writes will not reach the peer synchronously: start a new generation.
                let disconnected = st != CState::Connected || self.nodes[n].dev.repl == Repl::Off;
                self.nodes[n].dev = ns;
                self.nodes[n].want_primary_at = None;
                // A primary never discards its data (the driver refuses the flag on one).
                self.nodes[n].discard_my_data = false;
                if disconnected {
                    self.check_failover(n);
                }
                if disconnected && !self.bugs.no_uuid_rotation && !self.bugs.no_rotation_on_promote {
                    let u = self.fresh_uuid();
                    self.nodes[n].uuids.new_current(u);
                }
                self.log(format_args!("n{n} promoted (disconnected: {disconnected})"));
            }
            Err(r) => {
                self.log(format_args!("n{n} promote refused: {}", r.as_str()));
                if n == 0 {
                    self.nodes[n].want_primary_at = Some(self.now + 200);
                }
            }
        }
    }

    // ---- faults ----

    fn fault(&mut self, f: Fault) {
        if self.faults_over && !matches!(f, Fault::Resolve | Fault::Restart(_)) {
            return;
        }
        self.log(format_args!("fault {f:?}"));
        match f {
            Fault::Reset => {
                for n in 0..2 {
                    if self.nodes[n].alive && self.nodes[n].sock.is_some() {
                        if let Ok(a) = self.nodes[n].conn.on_error(self.now) {
                            self.apply(n, a);
                        }
                    }
                }
            }
            Fault::Stall(len) => self.blocked_until = self.blocked_until.max(self.now + len),
            Fault::Crash(n, down) => self.crash(n, down),
            Fault::Restart(n) => self.restart(n),
            Fault::PromoteB => {
                let b = &self.nodes[1];
                if b.alive && b.dev.role == Role::Secondary && b.conn.state() != CState::Connected {
                    self.promote(1);
                    if self.nodes[1].dev.role == Role::Primary {
                        self.truth.b_promoted = true;
                        self.stats.sb_injected += 1;
                    }
                }
            }
            Fault::Resolve => self.resolve(),
            Fault::Heal => {
                self.faults_over = true;
                self.blocked_until = self.blocked_until.min(self.now);
                for n in 0..2 {
                    if !self.nodes[n].alive {
                        self.restart(n);
                    }
                }
            }
        }
    }

    fn crash(&mut self, n: usize, down: u64) {
        if !self.nodes[n].alive {
            return;
        }
        self.stats.crashes += 1;
        if self.nodes[n].dev.role == Role::Primary {
            self.check_failover(1 - n);
        }
        let qslots = self.nodes[n].queue.capacity();
        let node = &mut self.nodes[n];
        node.alive = false;
        if node.dev.role == Role::Primary {
            node.uuids.flags |= resync::FLAG_CRASHED_PRIMARY;
        }
        node.disk.crash(&mut self.rng);
        node.ios.clear();
        node.reqs.clear();
        node.queue = Queue::new(vec![Entry::EMPTY; qslots], self.qbytes);
        node.src = None;
        node.busy.iter_mut().for_each(|b| *b = 0);
        node.sock = None;
        node.verdict = None;
        node.conn = Conn::new(conn_cfg()).unwrap();
        node.dev = device::State { role: Role::Secondary, repl: Repl::Off, peer: None, ..node.dev };
        node.want_primary_at = None;
        node.unflushed.clear();
        node.flushing = None;
        node.acker_armed = false;
        for b in 0..NBLK as usize {
            if self.nodes[n].disk.durable[b] < self.guaranteed[n][b] {
                return self.fail(format!("block {b}: flushed write lost by the disk model"));
            }
            // Unflushed writes may be lost with the cache; from now on only the flushed
            // ones are promised.
            self.repl_acked[n][b] = self.repl_acked[n][b].min(self.guaranteed[n][b]);
            self.completed[n][b] = self.completed[n][b].min(self.guaranteed[n][b]);
        }
        if !self.faults_over {
            self.at(self.now + down, Ev::Fault(Fault::Restart(n)));
        }
    }

    /// Node `n` takes over (its peer crashed as primary, or `n` is promoted while apart):
    /// under protocol C it must hold every write its peer acked. Under A and B, writes the
    /// peer completed but `n` lacks are lost by design: stop promising them.
    fn check_failover(&mut self, n: usize) {
        let p = 1 - n;
        for b in 0..NBLK as usize {
            let have = self.nodes[n].disk.durable[b];
            if have < self.repl_acked[p][b] {
                let want = self.repl_acked[p][b];
                return self.fail(format!("block {b}: write {want} acked under C but n{n} has {have}"));
            }
            if self.proto != Protocol::C {
                self.guaranteed[p][b] = self.guaranteed[p][b].min(have);
            }
        }
    }

    fn restart(&mut self, n: usize) {
        if self.nodes[n].alive {
            return;
        }
        let cfg = al_cfg();
        let node = &mut self.nodes[n];
        node.alive = true;
        let mut scratch = vec![al::Slot::EMPTY; AL_EXTENTS as usize];
        let rec = al::recover(AL_UUID, AL_SHIFT, node.ring.iter(), &mut scratch);
        if !rec.complete {
            node.bm.set_all();
        } else if !self.bugs.skip_al_recovery {
            for e in rec.extents() {
                let (s, l) = rec.extent_to_sectors(e);
                if s < DEV_SECT {
                    node.bm.set_range(s, l.min(DEV_SECT - s)).unwrap();
                }
            }
        }
        let next_seq = rec.next_seq;
        node.al = al::Log::new(cfg, scratch, next_seq).unwrap();
        let a = node.conn.on_connect(self.now).unwrap();
        self.log(format_args!("n{n} restarted, {} regions marked", self.nodes[n].bm.weight()));
        self.apply(n, a);
        if n == 0 {
            if self.rng.chance(1, 2) {
                self.promote(0);
            } else {
                self.nodes[0].want_primary_at = Some(self.now + 500);
            }
        }
    }

    fn resolve(&mut self) {
        // The operator demotes B, waits for its writes to drain, and connects it with
        // `--discard-my-data`: at the next handshake the split brain resolves into a resync
        // from A (from both bitmaps when they track the same generation, else full).
        self.nodes[1].dev.role = Role::Secondary;
        if !self.nodes[1].reqs.is_empty() {
            self.at(self.now + 20, Ev::Fault(Fault::Resolve));
            return;
        }
        self.resolve_pending = false;
        let b = &mut self.nodes[1];
        b.dev = device::State { role: Role::Secondary, ..b.dev };
        b.discard_my_data = true;
        self.truth.wrote_apart[1] = false;
        self.truth.b_promoted = false;
        self.completed[1].iter_mut().for_each(|v| *v = 0);
        self.guaranteed[1].iter_mut().for_each(|v| *v = 0);
        self.repl_acked[1].iter_mut().for_each(|v| *v = 0);
        self.log(format_args!("operator: n1 discards its data"));
        for n in 0..2 {
            if self.nodes[n].alive && self.nodes[n].conn.state() == CState::Standalone {
                let a = self.nodes[n].conn.on_connect(self.now).unwrap();
                self.apply(n, a);
            }
        }
    }

    // ---- checks ----

    fn converged(&self) -> bool {
        if self.now < T_FAULTS + T_WORK_TAIL || self.resolve_pending {
            return false;
        }
        self.nodes.iter().all(|x| {
            x.alive
                && x.conn.state() == CState::Connected
                && x.dev.repl == Repl::Established
                && x.queue.is_empty()
                && x.reqs.is_empty()
                && x.ios.is_empty()
                && x.src.is_none()
        }) && (self.nodes[0].dev.role == Role::Primary) != (self.nodes[1].dev.role == Role::Primary)
    }

    fn final_checks(&mut self) {
        for b in 0..NBLK {
            let (x, y) = (self.nodes[0].disk.read(b), self.nodes[1].disk.read(b));
            if x != y {
                return self.fail(format!("replicas differ at block {b}: {x} vs {y}"));
            }
            let g = self.guaranteed[0][b as usize].max(self.guaranteed[1][b as usize]);
            if x < g {
                return self.fail(format!("block {b}: flushed write {g} lost (have {x})"));
            }
        }
        for (n, x) in self.nodes.iter().enumerate() {
            if x.bm.weight() != 0 {
                let w = x.bm.weight();
                return self.fail(format!("n{n}: {w} regions still marked after convergence"));
            }
            if x.dev.disk != Disk::UpToDate {
                return self.fail(format!("n{n}: disk not up to date after convergence"));
            }
        }
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (n, x) in self.nodes.iter().enumerate() {
            let _ = write!(
                s,
                "[n{n} alive={} conn={} repl={:?} role={:?} disk={:?} q={} reqs={} ios={} bm={} src={}] ",
                x.alive,
                x.conn.state().as_str(),
                x.dev.repl,
                x.dev.role,
                x.dev.disk,
                x.queue.len(),
                x.reqs.len(),
                x.ios.len(),
                x.bm.weight(),
                x.src.is_some()
            );
        }
        s
    }
}
