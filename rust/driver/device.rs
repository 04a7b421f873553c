// SPDX-License-Identifier: GPL-2.0
//! One replicated device: its configuration, connection state, counters and lifetime.

use crate::bindings::{bdev::BackingDev, bio::BioSet, disk::Disk, net::SockAddr, thread::Thread};
use crate::rcore::table;
use crate::request::Request;
use crate::transport::Transport;
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::{new_condvar, new_mutex, Arc, CondVar, Mutex};

/// Most mirrored writes in flight (queued for the peer or awaiting its ack) per device.
pub(crate) const MAX_INFLIGHT: usize = 128;
/// Largest bio we accept, in sectors (128 KiB): also the largest payload on the wire.
pub(crate) const MAX_IO_SECTORS: u32 = 256;

pub(crate) use crate::rcore::table::Role;

/// Connection state as shown to users (DRBD's cstate, reduced for the skeleton).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CState {
    /// Not trying to connect (being torn down).
    StandAlone,
    /// Primary: trying to connect; secondary: waiting for the primary to connect.
    Connecting,
    /// A connection exists, the handshake is under way.
    Handshake,
    /// Replicating.
    Connected,
}

impl CState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CState::StandAlone => "standalone",
            CState::Connecting => "connecting",
            CState::Handshake => "handshake",
            CState::Connected => "connected",
        }
    }
}

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
    pub(crate) out_of_sync: AtomicU64,
    pub(crate) inflight: AtomicU32,
}

/// Connection state shared by the request path and the peer threads (under [`Device::conn`]).
pub(crate) struct Conn {
    pub(crate) cstate: CState,
    /// The live connection, if any.
    pub(crate) link: Option<Arc<dyn Transport>>,
    /// Incremented for every new connection, so a thread never tears down a newer one.
    pub(crate) generation: u64,
    /// Writes waiting for the sender thread, in submission order.
    pub(crate) send_queue: KVec<Arc<Request>>,
    /// Writes sent and awaiting the peer's ack.
    pub(crate) inflight: KVec<Arc<Request>>,
    /// Both sides negotiated the small-write message.
    pub(crate) small_writes: bool,
    /// Set once at teardown: threads exit, nothing new is queued.
    pub(crate) stopping: bool,
}

/// A replicated device.
#[pin_data]
pub(crate) struct Device {
    pub(crate) cfg: Config,
    pub(crate) backing: BackingDev,
    pub(crate) bioset: BioSet,
    pub(crate) stats: Stats,
    /// Small-write threshold in bytes (sysfs `inline_max`).
    pub(crate) inline_max: AtomicU32,
    seq: AtomicU32,
    removing: AtomicBool,
    #[pin]
    pub(crate) conn: Mutex<Conn>,
    /// Signalled when the send queue gains work or the device stops.
    #[pin]
    pub(crate) work: CondVar,
    /// Signalled when in-flight room frees up or the connection state changes.
    #[pin]
    pub(crate) room: CondVar,
}

/// Everything the registry keeps for a device, in teardown order (fields drop top to bottom:
/// threads stop first, then the disk goes, then the device's last registry reference).
pub(crate) struct Entry {
    threads: KVec<Thread>,
    disk: Option<Disk>,
    pub(crate) dev: Arc<Device>,
}

impl Device {
    /// Creates the device, its disk and its threads.
    pub(crate) fn create(cfg: Config, t: &table::Table<'_>) -> Result<Entry> {
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
        let dev = Arc::pin_init(
            try_pin_init!(Device {
                backing,
                bioset: BioSet::new()?,
                stats: Stats::default(),
                inline_max: AtomicU32::new(t.inline_max),
                seq: AtomicU32::new(1),
                removing: AtomicBool::new(false),
                conn <- new_mutex!(Conn {
                    cstate: CState::Connecting,
                    link: None,
                    generation: 0,
                    send_queue: KVec::with_capacity(MAX_INFLIGHT, GFP_KERNEL)?,
                    inflight: KVec::with_capacity(MAX_INFLIGHT, GFP_KERNEL)?,
                    small_writes: false,
                    stopping: false,
                }),
                work <- new_condvar!(),
                room <- new_condvar!(),
                cfg,
            }? Error),
            GFP_KERNEL,
        )?;
        let mut entry = Entry { threads: KVec::new(), disk: None, dev: dev.clone() };
        entry.disk = Some(Disk::create(dev.clone(), dev.cfg.index, &dev.backing, dev.cfg.sectors, MAX_IO_SECTORS)?);
        match dev.cfg.role {
            Role::Primary => {
                entry.threads.push(Thread::start(c"rmirror_conn", dev.clone(), crate::receiver::primary_conn)?, GFP_KERNEL)?;
                entry.threads.push(Thread::start(c"rmirror_send", dev.clone(), crate::sender::run)?, GFP_KERNEL)?;
            }
            Role::Secondary => {
                let l = listener.ok_or(EINVAL)?;
                let arg = Arc::new(crate::receiver::Listener { dev: dev.clone(), sock: l }, GFP_KERNEL)?;
                entry.threads.push(Thread::start(c"rmirror_recv", arg, crate::receiver::secondary_listen)?, GFP_KERNEL)?;
            }
        }
        pr_info!("{}: created /dev/rmirror{} ({}, {} sectors on {}, local {}, peer {}, protocol {})\n",
            &*dev.cfg.name, dev.cfg.index, dev.cfg.role.as_str(), dev.cfg.sectors, &*dev.cfg.backing_path,
            Addr(dev.cfg.local), Addr(dev.cfg.peer), dev.cfg.protocol.as_str());
        Ok(entry)
    }

    /// A new write sequence number.
    pub(crate) fn next_seq(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }

    /// Current connection state.
    pub(crate) fn cstate(&self) -> CState {
        self.conn.lock().cstate
    }

    /// `fops->open`: the secondary's disk is not for use; a disk being removed takes no opens.
    pub(crate) fn open(&self) -> Result {
        if self.removing.load(Ordering::Acquire) {
            return Err(ENXIO);
        }
        if self.cfg.role == Role::Secondary {
            return Err(crate::bindings::errno::emediumtype());
        }
        Ok(())
    }

    /// Called under the disk's open mutex once removal is certain.
    pub(crate) fn mark_removing(&self) {
        self.removing.store(true, Ordering::Release);
    }

    /// Asks every thread to stop and wakes them (sockets shut down, condvars notified).
    fn stop(&self) {
        let link = {
            let mut c = self.conn.lock();
            c.stopping = true;
            c.cstate = CState::StandAlone;
            c.link.clone()
        };
        if let Some(l) = link {
            l.shutdown();
        }
        self.work.notify_all();
        self.room.notify_all();
    }

    /// Whether teardown has begun (for thread loops).
    pub(crate) fn stopping(&self) -> bool {
        self.conn.lock().stopping
    }

    /// Drops the connection of `generation` (if still current): every write queued or awaiting
    /// an ack completes without the peer (and is counted out of sync). Bios are ended outside
    /// the lock; the emptied queues (their capacity kept) go back afterwards.
    pub(crate) fn connection_lost(&self, generation: u64, why: &str) {
        let (mut queued, mut sent, link) = {
            let mut c = self.conn.lock();
            if c.generation != generation || c.link.is_none() {
                return;
            }
            if !c.stopping {
                c.cstate = CState::Connecting;
            }
            (
                core::mem::replace(&mut c.send_queue, KVec::new()),
                core::mem::replace(&mut c.inflight, KVec::new()),
                c.link.take(),
            )
        };
        if let Some(l) = link {
            l.shutdown();
        }
        pr_warn!("{}: connection lost: {}\n", &*self.cfg.name, why);
        for r in queued.drain_all() {
            r.net_done(false);
        }
        for r in sent.drain_all() {
            r.net_done(false);
        }
        {
            let mut c = self.conn.lock();
            if c.send_queue.capacity() == 0 {
                c.send_queue = queued;
            }
            if c.inflight.capacity() == 0 {
                c.inflight = sent;
            }
        }
        self.room.notify_all();
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        // Whatever path drops an entry (failed create, teardown), threads must see the stop
        // request before the fields drop and `kthread_stop` waits for them.
        self.dev.stop();
    }
}

impl Entry {
    /// Refuses (`EBUSY`) if the disk is open, else marks it so no new open succeeds.
    pub(crate) fn begin_remove(&self) -> Result {
        match &self.disk {
            Some(d) => d.begin_remove(),
            None => Ok(()),
        }
    }

    /// Tears the device down: threads stopped, pending writes finished, disk deleted.
    pub(crate) fn teardown(mut self) {
        let dev = self.dev.clone();
        dev.stop();
        self.threads.clear(); // kthread_stop() each, waiting for them to exit
        // Finishes whatever the threads left queued (a no-op without a live link).
        let generation = dev.conn.lock().generation;
        dev.connection_lost(generation, "device removed");
        while dev.stats.inflight.load(Ordering::Acquire) != 0 {
            crate::bindings::thread::sleep_ms(10);
        }
        self.disk = None; // del_gendisk: no more callbacks use the device pointer
        pr_info!("{}: removed\n", &*dev.cfg.name);
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
