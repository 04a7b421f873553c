// SPDX-License-Identifier: GPL-2.0
//! One replicated device: its configuration, connection state, in-flight writes, counters and
//! lifetime (creation, and a teardown that never leaves work behind).

use crate::bindings::bio::{Bio, BioSet, CloneRef};
use crate::bindings::disk::{Disk, DiskOptions, Operations};
use crate::bindings::sync::IrqSpinLock;
use crate::bindings::{bdev::BackingDev, net::SockAddr, thread::Thread};
use crate::rcore::table;
use crate::rcore::state::conn;
use crate::rcore::state::tlog::{self, TransferLog};
use crate::request::{PeerPart, Request};
use crate::transport::Transport;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::{new_condvar, new_mutex, Arc, CondVar, Mutex};
use kernel::time::{Instant, Monotonic};

/// Most writes in flight per device (each holds an in-flight slot from submission until its
/// bio completes): bounds the peer queues, and the overlap checks scan this many slots.
pub(crate) const MAX_INFLIGHT: usize = 128;
/// Largest bio we accept, in sectors (1 MiB, as DRBD): also the largest payload on the wire,
/// and the largest resync chunk.
pub(crate) const MAX_IO_SECTORS: u32 = 2048;
/// Protocols A and B: most completed writes awaiting the barrier ack that makes them durable
/// at the peer (the sender waits beyond), and most barriers awaiting their ack.
pub(crate) const TLOG_WRITES: usize = 1024;
pub(crate) const TLOG_BARRIERS: usize = 64;

/// The transfer log of a connection (see `rcore::state::tlog`).
pub(crate) type Tlog = TransferLog<KVec<tlog::Written>, KVec<tlog::Barrier>>;

/// A transfer log without room, for when there is no connection.
pub(crate) fn no_tlog() -> Tlog {
    TransferLog::new(KVec::new(), KVec::new())
}

pub(crate) use crate::rcore::table::Role;

/// Connection states (the core's machine: standalone, connecting, handshake, connected,
/// outage, probation).
pub(crate) use crate::rcore::state::conn::State as CState;

/// Immutable configuration, from the table line.
pub(crate) struct Config {
    pub(crate) name: CString,
    pub(crate) index: u32,
    pub(crate) role: Role,
    pub(crate) local: SockAddr,
    pub(crate) peer: SockAddr,
    pub(crate) protocol: crate::rcore::state::protocol::Protocol,
    pub(crate) backing_path: CString,
    pub(crate) sectors: u64,
    pub(crate) node_id: u8,
    /// What a primary does when its backing device fails a write.
    pub(crate) on_io_error: table::OnIoError,
    /// The canonical table line (for `rmirrorctl table`).
    pub(crate) table: KVec<u8>,
}

/// Counters (all monotonic except `inflight`).
#[derive(Default)]
pub(crate) struct Stats {
    pub(crate) writes: AtomicU64,
    pub(crate) write_bytes: AtomicU64,
    pub(crate) small_writes: AtomicU64,
    pub(crate) large_writes: AtomicU64,
    pub(crate) acks: AtomicU64,
    pub(crate) inflight: AtomicU32,
    pub(crate) connect_attempts: AtomicU64,
    pub(crate) connects: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) pings: AtomicU64,
    pub(crate) pongs: AtomicU64,
    /// Sectors copied by resync.
    pub(crate) resynced: AtomicU64,
}

/// Connection state shared by the request path and the peer threads (under [`Device::conn`]).
pub(crate) struct Conn {
    /// The core's connection state machine: heartbeats, timeouts, outage and probation.
    pub(crate) sm: conn::Conn,
    /// The connection's data socket (writes), from the start of its handshake.
    pub(crate) link: Option<Arc<dyn Transport>>,
    /// Its meta socket (heartbeats, acks), once the pair is complete.
    pub(crate) meta: Option<Arc<dyn Transport>>,
    /// Incremented for every new connection, so a thread never tears down a newer one.
    pub(crate) generation: u64,
    /// Writes waiting for the sender thread, in submission order. Each connection brings its
    /// own queues, with room for [`MAX_INFLIGHT`] writes (see [`Queues`]); empty otherwise.
    pub(crate) send_queue: KVec<CloneRef<Request>>,
    /// Writes sent on this connection and awaiting the peer's ack (the ack the protocol
    /// completes on; under protocol A, only until they are sent).
    pub(crate) inflight: KVec<CloneRef<Request>>,
    /// Protocols A and B: writes completed but not durable at the peer yet, and the barriers
    /// that will make them so; every barrier sent, under C too (acks must come in order).
    pub(crate) tlog: Tlog,
    /// Both sides negotiated the small-write message.
    pub(crate) small_writes: bool,
    /// Set once at teardown: threads exit, nothing new is queued.
    pub(crate) stopping: bool,
    /// A job is being sent (by the sender thread or a submitter, see `sender::pick`): jobs go
    /// out one at a time, in the order they were picked.
    pub(crate) send_busy: bool,
    /// Writes kept during an outage, replayed in order after it (see `outage`).
    pub(crate) outq: crate::outage::OutageQueue,
    /// Primary: the secondary's bitmap on this connection (`wire::feature::PEER_BITMAP`).
    pub(crate) peer_bitmap: PeerBitmap,
    /// `rmirrorctl connect --discard-my-data`: the next handshake's split brain is resolved by
    /// making us the sync target (sent in the handshake; taken by the verdict).
    pub(crate) discard_my_data: bool,
    /// Both sides negotiated `wire::feature::DETACH`: reads may be forwarded (see `detach`).
    pub(crate) detach_ok: bool,
    /// Primary, disk detached or attaching: reads for the sender to forward, in order.
    pub(crate) read_queue: KVec<crate::detach::PeerRead>,
    /// Forwarded reads sent on this connection, awaiting their replies (which come in order).
    pub(crate) reads_sent: KVec<crate::detach::PeerRead>,
    /// The outcome of the pulled run awaited by the attach (its data in `pull_buf`).
    pub(crate) pulled: Option<bool>,
    /// Attaching: where a pulled run's data is copied.
    pub(crate) pull_buf: Option<crate::detach::PullBuf>,
}

/// Primary: where the secondary's bitmap is on the current connection. The resync waits for
/// it: it is ORed into ours before ours is sent (regions the secondary may hold differently,
/// e.g. the extents of its activity log after it crashed as primary).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum PeerBitmap {
    /// The peer does not send one (an older peer), or we are the secondary.
    NotExpected,
    /// Negotiated, not complete yet.
    Awaited,
    /// Merged into ours.
    Received,
}

impl Conn {
    /// Whether writes go to the peer now: a complete connection, trusted (not on probation).
    pub(crate) fn replicating(&self) -> bool {
        !self.stopping && self.meta.is_some() && self.sm.state() == CState::Connected
    }

    /// Whether new writes go straight to the peer (replicating, no replay pending).
    pub(crate) fn sending(&self) -> bool {
        self.replicating() && self.outq.is_empty()
    }

    /// Whether the sender must wait for barrier acks before it sends another write: the
    /// transfer log must have room for every write in flight too (under B they enter it at
    /// their receive ack).
    pub(crate) fn tlog_full(&self) -> bool {
        self.tlog.must_wait() || self.tlog.len() + self.inflight.len() >= self.tlog.capacity()
    }
}

/// The two queues of a new connection, allocated before it is installed.
pub(crate) struct Queues {
    send: KVec<CloneRef<Request>>,
    inflight: KVec<CloneRef<Request>>,
    tlog: Tlog,
}

impl Queues {
    /// Room for every write that can be in flight.
    pub(crate) fn new() -> Result<Self> {
        Ok(Queues {
            send: KVec::with_capacity(MAX_INFLIGHT, GFP_KERNEL)?,
            inflight: KVec::with_capacity(MAX_INFLIGHT, GFP_KERNEL)?,
            tlog: TransferLog::new(
                KVec::from_elem(tlog::Written::EMPTY, TLOG_WRITES + MAX_INFLIGHT, GFP_KERNEL)?,
                KVec::from_elem(tlog::Barrier::EMPTY, TLOG_BARRIERS, GFP_KERNEL)?,
            ),
        })
    }

    /// Makes these the connection's queues (the old ones were emptied when it was lost).
    pub(crate) fn install(self, c: &mut Conn) {
        c.send_queue = self.send;
        c.inflight = self.inflight;
        c.tlog = self.tlog;
    }
}

/// In-flight slots: the sector range of every write from submission to completion. A write
/// that overlaps one in flight waits for it to complete, so overlapping writes reach both
/// disks in the same order (DRBD: `complete_conflicting_writes`); a write waits for a free slot
/// too. Slots are freed from completions, which may run in interrupt context, hence the lock.
pub(crate) struct Slots {
    /// `[start, end)` in sectors (an empty range for a flush: it overlaps nothing).
    ranges: [Option<(u64, u64)>; MAX_INFLIGHT],
}

impl Slots {
    /// The index of a free slot if `start..end` overlaps no write in flight (an empty range,
    /// a flush, overlaps nothing).
    fn admit(&self, start: u64, end: u64) -> Option<usize> {
        let mut free = None;
        for (i, r) in self.ranges.iter().enumerate() {
            match r {
                Some((s, e)) if start < end && s < e && *s < end && start < *e => return None,
                None if free.is_none() => free = Some(i),
                _ => {}
            }
        }
        free
    }

    /// Takes a free slot for `start..end` if [`Slots::admit`] allows it now.
    fn take(&mut self, start: u64, end: u64) -> Option<usize> {
        let i = self.admit(start, end)?;
        self.ranges[i] = Some((start, end));
        Some(i)
    }
}

/// A replicated device.
#[pin_data]
pub(crate) struct Device {
    pub(crate) cfg: Config,
    /// The current role (the table's at creation; `rmirrorctl primary|secondary` changes it
    /// with every thread stopped, see [`Entry::set_role`]).
    role: AtomicU8,
    pub(crate) backing: BackingDev,
    pub(crate) bioset: BioSet<Request>,
    pub(crate) stats: Stats,
    /// Small-write threshold in bytes (sysfs `inline_max`).
    pub(crate) inline_max: AtomicU32,
    /// How this device, as a secondary, makes protocol C's writes durable (sysfs
    /// `peer_durability`): set for group commit (`Durability::Flush`), clear for FUA per write.
    pub(crate) group_commit: AtomicBool,
    seq: AtomicU32,
    /// Zero of the millisecond clock the connection state machine runs on.
    epoch: Instant<Monotonic>,
    #[pin]
    pub(crate) conn: Mutex<Conn>,
    /// Signalled when the send queue gains work or the device stops.
    #[pin]
    pub(crate) work: CondVar,
    /// Signalled when a connection is installed, completed or lost, or the device stops.
    #[pin]
    pub(crate) link_changed: CondVar,
    #[pin]
    slots: IrqSpinLock<Slots>,
    /// Signalled when a slot is freed.
    #[pin]
    slot_freed: CondVar,
    /// The fracture bitmap: regions the peer may lack (see `resync`). Marked from
    /// completions, which may run in interrupt context, hence the lock.
    #[pin]
    pub(crate) bitmap: IrqSpinLock<crate::resync::Fracture>,
    /// Resync progress and the chunk awaiting its ack.
    #[pin]
    pub(crate) resync: Mutex<crate::resync::Progress>,
    /// Signalled when a resync chunk is acked.
    #[pin]
    pub(crate) resync_cv: CondVar,
    /// Resync rate cap in KiB/s, 0 for none (sysfs `resync_rate`).
    pub(crate) resync_rate: AtomicU32,
    /// The on-disk metadata (`None` with `meta=core`); its lock serializes metadata I/O and is
    /// taken before the bitmap's.
    #[pin]
    pub(crate) md: Mutex<Option<crate::md::Md>>,
    /// Generation UUIDs (see `uuids`); a leaf lock, taken from completions too.
    #[pin]
    pub(crate) uuids: IrqSpinLock<crate::uuids::Gen>,
    /// The activity log (`None` with `meta=core`); taken from completions, after the metadata
    /// lock when both are held.
    #[pin]
    pub(crate) al: IrqSpinLock<Option<crate::actlog::Al>>,
    /// Signalled when an activity log transaction ends or a write gives its extents back.
    #[pin]
    pub(crate) al_cv: CondVar,
    /// Wakes the metadata thread: a transaction is due, or the device stops.
    #[pin]
    pub(crate) md_work: CondVar,
    /// The backing device's state (`detach::ATTACHED`, `DETACHED`, `ATTACHING`).
    pub(crate) disk: AtomicU8,
    /// The sender owes the peer a `Detached` notice (set at detach and on every connection of
    /// a detached primary).
    pub(crate) detach_notice: AtomicBool,
    /// This detach's new generation was made (later connections repeat it).
    pub(crate) detach_rotated: AtomicBool,
    /// Writes in flight that skipped the disk (detached when submitted): the attach ends only
    /// once they have marked their ranges stale.
    pub(crate) diskless_inflight: AtomicU32,
    /// Regions our disk lacks (written while it was detached, or failed): pulled back by the
    /// attach. Marked from completions, hence the lock.
    #[pin]
    pub(crate) stale: IrqSpinLock<crate::resync::Fracture>,
    /// The module's event ring, and what this device reported to it last.
    pub(crate) events: Arc<crate::events::Events>,
    #[pin]
    pub(crate) reported: Mutex<crate::events::Reported>,
    /// Message counters of every connection's transports.
    pub(crate) counters: Arc<crate::transport::Counters>,
    /// Secondary: the writes in flight (see `peer_io`); taken from completions, a leaf lock.
    #[pin]
    pub(crate) peer_io: IrqSpinLock<crate::peer_io::PeerIo>,
    /// Signalled when a write in flight is retired (the receiver waits for room or a drain).
    #[pin]
    pub(crate) peer_cv: CondVar,
    /// Signalled when a write completes (the acker waits for work).
    #[pin]
    pub(crate) ack_cv: CondVar,
}

/// Everything the registry keeps for a device. Dropping it tears the device down in order:
/// threads stopped, queued writes finished without the peer, every clone freed, the disk
/// deleted, then the registry's reference to the device.
pub(crate) struct Entry {
    threads: KVec<Thread>,
    disk: Option<Disk<Device>>,
    pub(crate) dev: Arc<Device>,
}

/// A thread name: `rmirror<minor>_<what>`.
fn thread_name(index: u32, what: &str) -> Result<CString> {
    CString::try_from_fmt(fmt!("rmirror{}_{}", index, what))
}

fn role_u8(r: Role) -> u8 {
    match r {
        Role::Primary => 0,
        Role::Secondary => 1,
    }
}

/// Starts the device's threads for its current role: the meta socket's and (with on-disk
/// metadata) the metadata thread on both sides; a primary connects, sends and resyncs, a
/// secondary listens (on `listener`, or a new socket) and applies writes.
fn start_threads(dev: &Arc<Device>, threads: &mut KVec<Thread>, listener: Option<crate::bindings::net::Socket>)
    -> Result {
    let i = dev.cfg.index;
    threads.push(Thread::start(&thread_name(i, "meta")?, dev.clone(), crate::heartbeat::run)?, GFP_KERNEL)?;
    if dev.has_md() {
        threads.push(Thread::start(&thread_name(i, "md")?, dev.clone(), crate::md::run)?, GFP_KERNEL)?;
    }
    match dev.role() {
        Role::Primary => {
            threads.push(Thread::start(&thread_name(i, "conn")?, dev.clone(), crate::conn::primary_connect)?,
                GFP_KERNEL)?;
            threads.push(Thread::start(&thread_name(i, "send")?, dev.clone(), crate::sender::run)?, GFP_KERNEL)?;
            threads.push(Thread::start(&thread_name(i, "sync")?, dev.clone(), crate::resync::run)?, GFP_KERNEL)?;
            threads.push(Thread::start(&thread_name(i, "reply")?, dev.clone(), crate::detach::replies)?, GFP_KERNEL)?;
        }
        Role::Secondary => {
            let l = match listener {
                Some(l) => l,
                None => crate::bindings::net::Socket::listen(dev.cfg.local).inspect_err(|e| {
                    pr_err!("{}: cannot listen on {}: error {}\n", &*dev.cfg.name, Addr(dev.cfg.local), e.to_errno());
                })?,
            };
            let arg = Arc::new(crate::conn::Listener { dev: dev.clone(), sock: l }, GFP_KERNEL)?;
            threads.push(Thread::start(&thread_name(i, "conn")?, arg, crate::conn::secondary_accept)?, GFP_KERNEL)?;
            threads.push(Thread::start(&thread_name(i, "recv")?, dev.clone(), crate::receiver::run)?, GFP_KERNEL)?;
            // Stopped after the receiver, which drains its writes first (see `peer_io::run`).
            threads.push(Thread::start(&thread_name(i, "ack")?, dev.clone(), crate::peer_io::run)?, GFP_KERNEL)?;
        }
    }
    Ok(())
}

impl Device {
    /// Creates the device, its disk and its threads.
    pub(crate) fn create(cfg: Config, t: &table::Table<'_>, events: Arc<crate::events::Events>) -> Result<Entry> {
        let backing = BackingDev::open(&cfg.backing_path).inspect_err(|e| {
            pr_err!("{}: cannot open backing device {}: error {}\n",
                &*cfg.name, &*cfg.backing_path, e.to_errno());
        })?;
        let have = backing.nr_sectors();
        if cfg.sectors > have {
            pr_err!("{}: table: length {} exceeds the backing device ({} sectors)\n",
                &*cfg.name, cfg.sectors, have);
            return Err(EINVAL);
        }
        let listener = match cfg.role {
            Role::Secondary => Some(crate::bindings::net::Socket::listen(cfg.local).inspect_err(|e| {
                pr_err!("{}: cannot listen on {}: error {}\n", &*cfg.name, Addr(cfg.local), e.to_errno());
            })?),
            Role::Primary => None,
        };
        let epoch = Instant::<Monotonic>::now();
        let mut sm = conn::Conn::new(t.timing).map_err(|e| {
            pr_err!("{}: table: {}\n", &*cfg.name, e.as_str());
            EINVAL
        })?;
        let mut md = crate::md::Md::open(&cfg.name, &backing, &cfg.backing_path, cfg.sectors, t.meta)?;
        let mut bitmap = crate::resync::new_bitmap(cfg.sectors)?;
        let stale = crate::resync::new_bitmap(cfg.sectors)?;
        if let Some(md) = md.as_mut() {
            let marked = md.load_bitmap(&backing, &mut bitmap).inspect_err(|e| {
                pr_err!("{}: cannot read the bitmap: error {}\n", &*cfg.name, e.to_errno());
            })?;
            if md.sb().flags & crate::rcore::meta::MDF_FULL_SYNC != 0 {
                // An attach that did not finish: nothing says what this disk still lacks.
                bitmap.set_all();
                md.set_flags(0, crate::rcore::meta::MDF_FULL_SYNC);
                pr_warn!("{}: metadata: an attach was interrupted: the whole device is marked out of sync\n",
                    &*cfg.name);
            } else if marked > 0 {
                pr_info!("{}: bitmap: {} KiB out of sync\n", &*cfg.name, bitmap.weight_sectors() / 2);
            }
        }
        let mut al = None;
        if let Some(md) = md.as_mut() {
            al = Some(Self::recover_al(&cfg, md, &backing, &mut bitmap)?);
        }
        let with_md = md.is_some();
        let gen = md.as_ref().map_or(crate::uuids::Gen::NONE, |m| m.gen());
        let fresh = gen.ours.is_none_or(|u| u.current & !1 == crate::rcore::state::resync::JUST_CREATED);
        if cfg.role == Role::Primary && !gen.consistent && !fresh {
            // An interrupted resync to this disk, or an interrupted attach: its data is not
            // whole, and a primary would serve and replicate it.
            pr_err!("{}: refused as primary: the metadata says the data is inconsistent (an interrupted                 resync or attach): create it as secondary to be resynced
", &*cfg.name);
            return Err(EINVAL);
        }
        let outq = crate::outage::OutageQueue::new(crate::outage::DEFAULT_MAX_BYTES)?;
        // Connecting from the start, as DRBD's `up`.
        let _ = sm.on_connect(0);
        let dev = Arc::pin_init(
            try_pin_init!(Device {
                backing,
                bioset: BioSet::new()?,
                stats: Stats::default(),
                inline_max: AtomicU32::new(t.inline_max),
                group_commit: AtomicBool::new(false),
                seq: AtomicU32::new(1),
                epoch,
                conn <- new_mutex!(Conn {
                    sm,
                    link: None,
                    meta: None,
                    generation: 0,
                    send_queue: KVec::new(),
                    inflight: KVec::new(),
                    tlog: no_tlog(),
                    small_writes: false,
                    stopping: false,
                    send_busy: false,
                    outq,
                    peer_bitmap: PeerBitmap::NotExpected,
                    discard_my_data: false,
                    detach_ok: false,
                    read_queue: KVec::new(),
                    reads_sent: KVec::new(),
                    pulled: None,
                    pull_buf: None,
                }),
                work <- new_condvar!(),
                link_changed <- new_condvar!(),
                slots <- IrqSpinLock::new(Slots { ranges: [None; MAX_INFLIGHT] }, c"rmirror_slots", kernel::static_lock_class!()),
                slot_freed <- new_condvar!(),
                bitmap <- IrqSpinLock::new(bitmap, c"rmirror_bitmap", kernel::static_lock_class!()),
                resync <- new_mutex!(crate::resync::Progress::default()),
                resync_cv <- new_condvar!(),
                resync_rate: AtomicU32::new(0),
                md <- new_mutex!(md),
                uuids <- IrqSpinLock::new(gen, c"rmirror_uuids", kernel::static_lock_class!()),
                al <- IrqSpinLock::new(al, c"rmirror_al", kernel::static_lock_class!()),
                al_cv <- new_condvar!(),
                md_work <- new_condvar!(),
                disk: AtomicU8::new(crate::detach::ATTACHED),
                detach_notice: AtomicBool::new(false),
                detach_rotated: AtomicBool::new(false),
                diskless_inflight: AtomicU32::new(0),
                stale <- IrqSpinLock::new(stale, c"rmirror_stale", kernel::static_lock_class!()),
                events,
                reported <- new_mutex!(crate::events::Reported { role: "", cstate: "", disk: "", repl: "", at_ms: 0 }),
                counters: Arc::new(crate::transport::Counters::default(), GFP_KERNEL)?,
                peer_io <- IrqSpinLock::new(crate::peer_io::PeerIo::new()?, c"rmirror_peer_io", kernel::static_lock_class!()),
                peer_cv <- new_condvar!(),
                ack_cv <- new_condvar!(),
                role: AtomicU8::new(role_u8(cfg.role)),
                cfg,
            }? Error),
            GFP_KERNEL,
        )?;
        if with_md {
            // Marks found by the recovery, and the log's state, on disk before any write.
            dev.md_writeback(true).inspect_err(|e| {
                pr_err!("{}: cannot write the metadata: error {}\n", &*dev.cfg.name, e.to_errno());
            })?;
        }
        let mut entry = Entry { threads: KVec::with_capacity(6, GFP_KERNEL)?, disk: None, dev: dev.clone() };
        let disk_name = CString::try_from_fmt(fmt!("rmirror{}", dev.cfg.index))?;
        entry.disk = Some(Disk::create(dev.clone(), &DiskOptions {
            name: &disk_name,
            backing: &dev.backing,
            capacity: dev.cfg.sectors,
            max_sectors: MAX_IO_SECTORS,
            group: c"rmirror",
            attrs: &crate::sysfs::ATTRS,
        })?);
        dev.report_created();
        start_threads(&dev, &mut entry.threads, listener)?;
        pr_info!("{}: created /dev/rmirror{} ({}, {} sectors on {}, local {}, peer {}, protocol {})\n",
            &*dev.cfg.name, dev.cfg.index, dev.role().as_str(), dev.cfg.sectors, &*dev.cfg.backing_path,
            Addr(dev.cfg.local), Addr(dev.cfg.peer), dev.cfg.protocol.as_str());
        Ok(entry)
    }

    /// Replays the activity log ring of `md` into `bitmap` (see `actlog::recover`) and sets the
    /// superblock's flags for this role: a primary's log is in use from now on (not clean); a
    /// secondary does not use it (clean: what the ring named is in the bitmap now).
    fn recover_al(cfg: &Config, md: &mut crate::md::Md, backing: &BackingDev, bitmap: &mut crate::resync::Fracture)
        -> Result<crate::actlog::Al> {
        use crate::rcore::al as ral;
        let shift = md.sb().al_extent_shift;
        let span = u64::from(ral::MIN_EXTENTS.min(ral::UPDATES_PER_TRANSACTION as u32) - 1) << (shift - 9);
        if span + 1 < u64::from(MAX_IO_SECTORS) {
            pr_err!("{}: metadata: activity log extents of {} bytes are not supported (256 KiB at least)\n",
                &*cfg.name, 1u64 << shift);
            return Err(EINVAL);
        }
        let (al, r) = crate::actlog::recover(md, backing, bitmap, cfg.sectors).inspect_err(|e| {
            pr_err!("{}: cannot read the activity log: error {}\n", &*cfg.name, e.to_errno());
        })?;
        if r.damaged && !r.clean {
            pr_warn!("{}: activity log damaged: the whole device is marked out of sync\n", &*cfg.name);
        } else if !r.clean {
            pr_info!("{}: activity log: not shut down cleanly: {} extents, {} KiB newly marked out of sync\n",
                &*cfg.name, r.extents, r.marked_sectors / 2);
        }
        md.set_role_flags(cfg.role);
        Ok(al)
    }

    /// The current role.
    pub(crate) fn role(&self) -> Role {
        if self.role.load(Ordering::Acquire) == role_u8(Role::Primary) {
            Role::Primary
        } else {
            Role::Secondary
        }
    }

    /// Makes every thread runnable again after [`Device::stop`] (a role change): the device
    /// connects (or accepts) again unless it was standalone.
    fn restart(&self, standalone: bool) {
        let now = self.now_ms();
        {
            let mut c = self.conn.lock();
            c.stopping = false;
            if !standalone {
                let _ = c.sm.on_connect(now);
            }
        }
        if let Some(a) = (*self.al.lock()).as_mut() {
            a.stopped = false;
        }
    }

    /// A new write sequence number.
    pub(crate) fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Current connection state.
    pub(crate) fn cstate(&self) -> CState {
        self.conn.lock().sm.state()
    }

    /// Milliseconds since the device was created (the state machine's clock).
    pub(crate) fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(0)
    }

    /// Waits until `sector..sector+sectors` overlaps no write in flight and a slot is free, and
    /// takes that slot (process context).
    pub(crate) fn slot_acquire(&self, sector: u64, sectors: u64) -> usize {
        let end = sector.saturating_add(sectors);
        let mut s = self.slots.lock();
        loop {
            if let Some(i) = s.take(sector, end) {
                return i;
            }
            self.slot_freed.wait(&mut s);
        }
    }

    /// As [`Device::slot_acquire`], without waiting: `None` if the range must wait.
    pub(crate) fn slot_try_acquire(&self, sector: u64, sectors: u64) -> Option<usize> {
        self.slots.lock().take(sector, sector.saturating_add(sectors))
    }

    /// Frees slot `i` (any context) and wakes the writers waiting for one.
    pub(crate) fn slot_release(&self, i: usize) {
        if let Some(r) = self.slots.lock().ranges.get_mut(i) {
            *r = None;
        }
        self.slot_freed.notify_all();
    }

    /// Asks every thread to stop and wakes them (sockets shut down, condvars notified).
    fn stop(&self) {
        let now = self.now_ms();
        let (link, meta) = {
            let mut c = self.conn.lock();
            c.stopping = true;
            let _ = c.sm.on_disconnect(now);
            (c.link.clone(), c.meta.clone())
        };
        for l in [link, meta].into_iter().flatten() {
            l.shutdown();
        }
        if let Some(a) = (*self.al.lock()).as_mut() {
            a.stopped = true;
        }
        self.work.notify_all();
        self.link_changed.notify_all();
        self.al_cv.notify_all();
        self.md_work.notify_all();
    }

    /// How this device, as a secondary, makes protocol C's writes durable (`state::peer`,
    /// rule 5).
    pub(crate) fn durability(&self) -> crate::rcore::state::peer::Durability {
        use crate::rcore::state::peer::Durability;
        if self.group_commit.load(Ordering::Relaxed) { Durability::Flush } else { Durability::Fua }
    }

    /// Whether a write's pages may be lent to the transport (zero copy): under protocols B and C
    /// its bio ends only after the peer's ack; under A it ends once sent, so its data is copied.
    pub(crate) fn lends_pages(&self) -> bool {
        self.cfg.protocol != crate::rcore::state::protocol::Protocol::A
    }

    /// Whether teardown has begun (for thread loops).
    pub(crate) fn stopping(&self) -> bool {
        self.conn.lock().stopping
    }

    /// Drops the connection of `generation` (if still current): every write queued or awaiting
    /// an ack completes without the peer (and is counted out of sync). The connection's queues
    /// are taken out under the lock and emptied outside it (completions may call back into the
    /// block layer); the next connection brings new ones.
    pub(crate) fn connection_lost(&self, generation: u64, why: &str) {
        let now = self.now_ms();
        let (queued, sent, mut tlog, link, meta, state, kept, was_replicating, reads) = {
            let mut c = self.conn.lock();
            if c.generation != generation || c.link.is_none() {
                return;
            }
            // Writes that will now finish without the peer start a new generation, on disk
            // before they complete (later writes start it lazily, as DRBD's NEW_CUR_UUID).
            let was_replicating = !c.send_queue.is_empty() || !c.inflight.is_empty() || !c.tlog.is_empty();
            // A no-op when the state machine itself declared the loss (heartbeat timeout).
            let _ = c.sm.on_error(now);
            // A replay in flight is sent again on the next connection.
            c.outq.rewind();
            let queued = core::mem::take(&mut c.send_queue);
            let sent = core::mem::take(&mut c.inflight);
            let reads = [core::mem::take(&mut c.reads_sent), core::mem::take(&mut c.read_queue)];
            let tlog = core::mem::replace(&mut c.tlog, no_tlog());
            // Writes sent or waiting to be, in their order, go to the outage queue if it takes
            // them now (an outage that began while replicating); else to the bitmap.
            let mut kept = 0;
            if c.queueing() {
                for r in Iterator::chain(sent.iter(), queued.iter()) {
                    if self.push_outage(&mut c, r) {
                        r.set_queued();
                        kept += 1;
                    }
                }
            }
            (queued, sent, tlog, c.link.take(), c.meta.take(), c.sm.state(), kept, was_replicating, reads)
        };
        // Forwarded reads cannot be answered any more.
        for r in reads {
            self.fail_reads(r);
        }
        // Writes sent under B and C lent their pages to the data socket (zero copy) and end below
        // without the peer: their submitters may then reuse the pages. A shutdown would keep
        // retransmitting what the pages hold then, to a peer that may still read this connection
        // (a cut that heals before the peer notices): abort it instead, nothing undelivered is
        // sent any more. Under A nothing was lent.
        if let Some(l) = &link {
            if !sent.is_empty() && self.lends_pages() { l.abort() } else { l.shutdown() }
        }
        if let Some(m) = &meta {
            m.shutdown();
        }
        self.link_changed.notify_all();
        if self.disk.compare_exchange(crate::detach::ATTACHING, crate::detach::DETACHED, Ordering::AcqRel,
            Ordering::Acquire).is_ok() {
            // Stale regions cannot be pulled, nor written alone: detached again until the next attach.
            self.detach_notice.store(true, Ordering::Release);
            pr_warn!("{}: attach interrupted: the disk is detached again\n", &*self.cfg.name);
        }
        pr_warn!("{}: connection lost: {} (now {}{})\n", &*self.cfg.name, why, state.as_str(),
            if kept > 0 { ", writes in flight queued" } else { "" });
        // Protocols A and B: writes completed before the peer made them durable.
        let unsure = tlog.drain(|sector, len| self.mark_out_of_sync(sector, len));
        if unsure > 0 {
            pr_info!("{}: {} completed writes the peer had not made durable yet marked out of sync\n",
                &*self.cfg.name, unsure);
        }
        if was_replicating {
            // A new generation, on disk before the writes in flight complete without the peer.
            self.writing_without_peer();
            let _ = self.md_writeback(false);
        }
        for r in Iterator::chain(queued.into_iter(), sent) {
            r.net_done(false);
        }
    }
}

impl Operations for Device {
    fn submit_bio(this: &Arc<Self>, bio: Bio) {
        crate::request::submit_bio(this, bio);
    }

    /// The secondary's disk is not for use (DRBD's answer to opening a secondary).
    fn open(&self) -> Result {
        if self.role() == Role::Secondary {
            return Err(crate::bindings::errno::emediumtype());
        }
        Ok(())
    }

    fn show(&self, attr: usize, page: &mut [u8]) -> Result<usize> {
        crate::sysfs::show(self, attr, page)
    }

    fn store(&self, attr: usize, input: &[u8]) -> Result {
        crate::sysfs::store(self, attr, input)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        let dev = &self.dev;
        dev.stop();
        self.threads.clear(); // kthread_stop() each, waiting for them to exit
        // Finishes whatever the threads left queued (a no-op without a live link).
        let generation = dev.conn.lock().generation;
        dev.connection_lost(generation, "device removed");
        // Queued writes will never be replayed: the bitmap keeps them.
        dev.give_up_outage_queue("the device is removed");
        // Every write's clone freed: its request (and its device reference) is gone, so the
        // device is not freed in a completion, and no bio of ours is left anywhere.
        dev.bioset.drain();
        // Every bit is marked now: save the bitmap and the superblock (with the activity log
        // clean: every write completed and what the peer lacks is in the bitmap).
        if dev.has_md() {
            if dev.al_idle() {
                if let Some(md) = (*dev.md.lock()).as_mut() {
                    md.set_flags(crate::rcore::meta::MDF_AL_CLEAN, 0);
                }
            }
            if let Err(e) = dev.md_writeback(true) {
                pr_err!("{}: the bitmap could not be saved (error {}): regions marked since its last save are lost\n",
                    &*dev.cfg.name, e.to_errno());
            }
        }
        self.disk = None; // del_gendisk: no more callbacks use the device pointer
    }
}

impl Entry {
    /// `rmirrorctl primary|secondary`: changes the device's role (a no-op if it has it).
    ///
    /// Promotion is for a failover: refused with `EBUSY` while a connection is up (the peer
    /// of a secondary is the primary: it must demote first), with `ENODATA` without up-to-date
    /// data (a sync target that has not finished), and with `EINVAL` without on-disk metadata
    /// (without generations a failover could not be resynced safely). It starts a new data
    /// generation, so the old primary is resynced from here when it comes back as secondary.
    /// Demotion is refused with `EBUSY` while the disk is open; from then on it cannot be
    /// opened. Either way every thread stops, the connection (if any) is closed, the outage
    /// queue goes to the bitmap, the superblock records the role, and the threads of the new
    /// role start (a standalone device stays standalone).
    pub(crate) fn set_role(&mut self, want: Role) -> Result {
        let dev = self.dev.clone();
        let name = &*dev.cfg.name;
        let verb = want.as_str();
        if dev.role() == want {
            pr_info!("{}: {}: already {}\n", name, verb, verb);
            return Ok(());
        }
        match want {
            Role::Primary => {
                if !dev.has_uuids() {
                    pr_err!("{}: primary: refused: promotion needs on-disk metadata (meta=internal or \
                        meta=DEV) to resync the old primary safely\n", name);
                    return Err(EINVAL);
                }
                if dev.conn.lock().link.is_some() {
                    pr_err!("{}: primary: refused: connected to the primary {} (demote it first)\n", name,
                        Addr(dev.cfg.peer));
                    return Err(EBUSY);
                }
                if dev.inconsistent() || dev.out_of_sync_sectors() > 0 {
                    pr_err!("{}: primary: refused: no up-to-date data here ({} KiB still to be resynced \
                        from the peer)\n", name, dev.out_of_sync_sectors() / 2);
                    return Err(crate::bindings::errno::enodata());
                }
                dev.role.store(role_u8(Role::Primary), Ordering::Release);
            }
            Role::Secondary => {
                if dev.disk() != crate::detach::ATTACHED {
                    pr_err!("{}: secondary: refused: the disk is detached (rmirrorctl attach first)\n", name);
                    return Err(EBUSY);
                }
                let disk = self.disk.as_ref().ok_or(EINVAL)?;
                disk.if_closed(|| dev.role.store(role_u8(Role::Secondary), Ordering::Release))
                    .inspect_err(|_| pr_err!("{}: secondary: refused: the device is open\n", name))?;
            }
        }
        // Every thread stops and the connection goes; the request path is idle (a secondary's
        // disk cannot be opened, a primary's was not open).
        let standalone = dev.cstate() == CState::Standalone;
        dev.stop();
        self.threads.clear();
        let generation = dev.conn.lock().generation;
        dev.connection_lost(generation, "the role changed");
        dev.give_up_outage_queue("the role changed");
        if want == Role::Primary {
            dev.promoted();
            dev.conn.lock().discard_my_data = false;
        }
        if let Some(md) = (*dev.md.lock()).as_mut() {
            md.set_role_flags(want);
        }
        if let Err(e) = dev.md_writeback(true) {
            pr_err!("{}: {}: cannot write the metadata: error {}\n", name, verb, e.to_errno());
        }
        dev.restart(standalone);
        start_threads(&dev, &mut self.threads, None).inspect_err(|e| {
            pr_err!("{}: {}: cannot start the threads: error {} (remove the device)\n", name, verb, e.to_errno());
        })?;
        pr_info!("{}: now {}\n", name, verb);
        Ok(())
    }

    /// Refuses (`EBUSY`) if the disk is open, else marks it so no new open succeeds.
    pub(crate) fn begin_remove(&self) -> Result {
        match &self.disk {
            Some(d) => d.begin_remove(),
            None => Ok(()),
        }
    }

    /// Tears the device down (see [`Entry`]'s drop) and says so.
    pub(crate) fn teardown(self) {
        let dev = self.dev.clone();
        drop(self);
        pr_info!("{}: removed\n", &*dev.cfg.name);
        dev.events.emit(crate::rcore::abi::events::DESTROY, dev.cfg.name.to_str().unwrap_or("?"), &[]);
    }
}

/// Displays an address as `a.b.c.d:port`.
pub(crate) struct Addr(pub(crate) SockAddr);

impl kernel::fmt::Display for Addr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

impl core::fmt::Display for Addr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ip = self.0.ip.to_be_bytes();
        write!(f, "{}.{}.{}.{}:{}", ip[0], ip[1], ip[2], ip[3], self.0.port)
    }
}
