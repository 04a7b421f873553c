// SPDX-License-Identifier: GPL-2.0
//! Activity log (write-intent log): the bounded set of extents that may hold writes in flight.
//!
//! The data area is split into extents of `1 << extent_shift` bytes (default 4 MiB). Before a
//! write is issued, every extent it touches must be *active*; activating an extent (possibly
//! evicting the least recently used idle one) is persisted as a transaction in an on-disk ring
//! of 4 KiB slots. After a crash of the primary, [`recover`] reads the ring and yields every
//! extent that may hold an incomplete write; the driver marks them out of sync in the bitmap.
//! This is DRBD's activity log (`drbd_actlog.c` on top of `lru_cache.c`) and the "write intent
//! log" of the patent seed: regions possibly affected by a write, irrespective of failure.
//!
//! The log never allocates: its slot table lives in caller storage (`&mut [Slot]`,
//! `KVec<Slot>`, ...) of at least `nr_extents` entries. It does no I/O either: it tells the
//! driver what to write and parses what was read. The protocol for the driver is:
//!
//! 1. [`Log::begin_write`] for each write (under the driver's AL lock):
//!    - [`Activation::Active`]: issue the write now;
//!    - [`Activation::Wait`]: the write holds references, but some extent is not committed
//!      yet; keep the bio until [`Log::is_committed`] says so;
//!    - [`Error::Busy`]: nothing was taken; retry after an [`Log::end_write`] or a commit.
//! 2. Whenever [`Log::needs_transaction`]: [`Log::encode_transaction`] into a 4 KiB buffer;
//!    write the bitmap pages that cover [`Log::evicted`] extents; write the buffer to ring slot
//!    [`Transaction::ring_slot`] with `REQ_PREFLUSH | REQ_FUA`; then [`Log::commit`] (or
//!    [`Log::abort`] on I/O error). Only one transaction is in flight at a time.
//! 3. [`Log::end_write`] when a write completes (or is failed before being issued).
//!
//! On-disk transaction format (4 KiB slot, little-endian; `Documentation/ondisk-format.rst`):
//!
//! ```text
//!   0x000 u32 magic "RMAL"        0x004 u32 crc32c (whole slot, this field zero)
//!   0x008 u64 seq                 0x010 u64 device_uuid
//!   0x018 u16 version (1)         0x01a u16 type (0 = update)
//!   0x01c u16 n_updates (<= 64)   0x01e u16 extent_shift
//!   0x020 u32 context_size (N)    0x024 u32 context_start
//!   0x028 u32 context_len (<=880) 0x02c u32 ring_slots
//!   0x030 u64 reserved[2] (zero)
//!   0x040 {u32 slot, u32 extent} updates[64]       (512 bytes)
//!   0x240 u32 context[880]: extents of slots context_start.. (3520 bytes)
//! ```
//!
//! Each transaction carries its updates (slot `s` now holds extent `e`) and a rolling window
//! of the committed slot table (the "context"), so that any `ring_slots - 1` consecutive
//! transactions together describe the whole table even if the newest slot is torn.

use core::ops::{Deref, DerefMut};

use super::le::{get_u16, get_u32, get_u64, put_u16, put_u32, put_u64};
use super::crc::crc32c;

/// Size of one ring slot (one transaction) in bytes.
pub const SLOT_SIZE: usize = 4096;
/// Magic of a transaction slot: "RMAL" read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RMAL");
/// On-disk format version of transactions written by this code.
pub const VERSION: u16 = 1;
/// Transaction type: slot updates plus a context window.
pub const TYPE_UPDATE: u16 = 0;
/// Maximum number of slot updates in one transaction (as DRBD).
pub const UPDATES_PER_TRANSACTION: usize = 64;
/// Number of context entries in one transaction.
pub const CONTEXT_PER_TRANSACTION: usize = (SLOT_SIZE - HEADER_SIZE - UPDATES_SIZE) / 4;
/// Fewest active extents (`al-extents`) accepted.
pub const MIN_EXTENTS: u32 = 7;
/// Most active extents (`al-extents`) accepted.
pub const MAX_EXTENTS: u32 = 6001;
/// Default number of active extents (DRBD's default `al-extents`).
pub const DEFAULT_EXTENTS: u32 = 1237;
/// Smallest extent: 4 KiB (log2 in bytes).
pub const MIN_EXTENT_SHIFT: u32 = 12;
/// Largest extent: 1 GiB (log2 in bytes).
pub const MAX_EXTENT_SHIFT: u32 = 30;
/// Default extent size: 4 MiB (log2 in bytes).
pub const DEFAULT_EXTENT_SHIFT: u32 = 22;
/// Fewest ring slots accepted.
pub const MIN_RING_SLOTS: u32 = 2;
/// Most ring slots accepted.
pub const MAX_RING_SLOTS: u32 = 1024;
/// Default ring size in slots (32 KiB, as DRBD); enough for [`MAX_EXTENTS`].
pub const DEFAULT_RING_SLOTS: u32 = 8;
/// Extent number meaning "slot holds no extent".
pub const EXTENT_NONE: u32 = u32::MAX;

const HEADER_SIZE: usize = 0x40;
const UPDATES_SIZE: usize = UPDATES_PER_TRANSACTION * 8;
const OFF_MAGIC: usize = 0x00;
const OFF_CRC: usize = 0x04;
const OFF_SEQ: usize = 0x08;
const OFF_UUID: usize = 0x10;
const OFF_VERSION: usize = 0x18;
const OFF_TYPE: usize = 0x1a;
const OFF_N_UPDATES: usize = 0x1c;
const OFF_EXTENT_SHIFT: usize = 0x1e;
const OFF_CONTEXT_SIZE: usize = 0x20;
const OFF_CONTEXT_START: usize = 0x24;
const OFF_CONTEXT_LEN: usize = 0x28;
const OFF_RING_SLOTS: usize = 0x2c;
const OFF_UPDATES: usize = HEADER_SIZE;
const OFF_CONTEXT: usize = HEADER_SIZE + UPDATES_SIZE;
/// Pending slot changes the log queues at most (two transactions' worth).
const QUEUE_LEN: usize = 2 * UPDATES_PER_TRANSACTION;
const NIL: u32 = u32::MAX;
const SECTOR_SHIFT: u32 = 9;

const _: () = assert!(OFF_CONTEXT == 0x240);
const _: () = assert!(CONTEXT_PER_TRANSACTION == 880);
const _: () = assert!(OFF_CONTEXT + CONTEXT_PER_TRANSACTION * 4 == SLOT_SIZE);
const _: () =
    assert!(MAX_EXTENTS as usize <= CONTEXT_PER_TRANSACTION * (DEFAULT_RING_SLOTS as usize - 1));

/// Errors of the activity log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A configuration value is out of range (see [`Config::validate`]).
    InvalidConfig,
    /// The ring is too small to hold a full context window for `nr_extents`.
    RingTooSmall,
    /// The caller-provided slot storage is shorter than `nr_extents`.
    StorageTooSmall,
    /// The sector range overflows or lies beyond the last representable extent.
    OutOfRange,
    /// The write spans more extents than [`Log::max_span`]; split it.
    RangeTooLarge,
    /// No idle extent can be evicted (or the update queue is full): wait and retry.
    Busy,
    /// `end_write` for an extent that holds no reference: a driver bug.
    NotActive,
    /// A transaction is already in flight: commit or abort it first.
    TransactionInFlight,
    /// `commit`/`abort` with a transaction that is not the one in flight.
    StaleTransaction,
}

impl Error {
    /// Human-readable description, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::InvalidConfig => "invalid activity log configuration",
            Error::RingTooSmall => "activity log ring too small for the number of extents",
            Error::StorageTooSmall => "activity log slot storage smaller than nr_extents",
            Error::OutOfRange => "write range beyond the last activity log extent",
            Error::RangeTooLarge => "write spans more activity log extents than allowed",
            Error::Busy => "all activity log extents busy",
            Error::NotActive => "end of a write whose extent is not active",
            Error::TransactionInFlight => "an activity log transaction is already in flight",
            Error::StaleTransaction => "not the activity log transaction in flight",
        }
    }
}

/// Activity log parameters (stored in the superblock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// log2 of the extent size in bytes, [`MIN_EXTENT_SHIFT`]..=[`MAX_EXTENT_SHIFT`].
    pub extent_shift: u32,
    /// Capacity: number of extents that may be active at once ("al-extents").
    pub nr_extents: u32,
    /// Number of 4 KiB slots in the on-disk ring.
    pub ring_slots: u32,
    /// Tag written into every transaction; recovery ignores slots with another tag (a ring
    /// left over from an earlier metadata incarnation). The superblock's `device_uuid`.
    pub device_uuid: u64,
}

impl Config {
    /// Defaults: 4 MiB extents, 1237 of them, 8 ring slots.
    pub const fn new(device_uuid: u64) -> Self {
        Config {
            extent_shift: DEFAULT_EXTENT_SHIFT,
            nr_extents: DEFAULT_EXTENTS,
            ring_slots: DEFAULT_RING_SLOTS,
            device_uuid,
        }
    }

    /// Checks ranges and that the ring can hold a full context rotation plus one torn slot.
    pub fn validate(&self) -> Result<(), Error> {
        self.validate_with(CONTEXT_PER_TRANSACTION as u32)
    }

    fn validate_with(&self, context_len: u32) -> Result<(), Error> {
        if !(MIN_EXTENT_SHIFT..=MAX_EXTENT_SHIFT).contains(&self.extent_shift)
            || !(MIN_EXTENTS..=MAX_EXTENTS).contains(&self.nr_extents)
            || !(MIN_RING_SLOTS..=MAX_RING_SLOTS).contains(&self.ring_slots)
        {
            return Err(Error::InvalidConfig);
        }
        if self.ring_slots < self.nr_extents.div_ceil(context_len) + 1 {
            return Err(Error::RingTooSmall);
        }
        Ok(())
    }

    /// Sectors per extent.
    pub fn extent_sectors(&self) -> u64 {
        1u64 << (self.extent_shift - SECTOR_SHIFT)
    }

    /// Size of the ring in sectors.
    pub fn ring_sectors(&self) -> u64 {
        u64::from(self.ring_slots) * (SLOT_SIZE as u64 >> SECTOR_SHIFT)
    }
}

/// Smallest ring (in slots) that works for `nr_extents` active extents.
pub fn min_ring_slots(nr_extents: u32) -> u32 {
    nr_extents
        .div_ceil(CONTEXT_PER_TRANSACTION as u32)
        .saturating_add(1)
        .max(MIN_RING_SLOTS)
}

/// One entry of the slot table (caller storage; contents are private to this module).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// Extent this slot holds, or is changing to ([`EXTENT_NONE`] if empty); the hash key.
    extent: u32,
    /// Extent as last committed to disk.
    committed: u32,
    /// Writes holding this extent.
    refcnt: u32,
    /// LRU / in-use list links (during recovery: the stamp's sequence number).
    prev: u32,
    next: u32,
    /// Next slot in the same hash chain.
    hash_next: u32,
    /// Head of hash bucket number "this slot's index".
    hash_head: u32,
    flags: u32,
}

const F_IN_USE: u32 = 1 << 0;
const F_CHANGING: u32 = 1 << 1;
// Recovery only:
const F_COVERED: u32 = 1 << 2;
const F_STAMP_UPDATE: u32 = 1 << 3;

impl Slot {
    /// An empty slot, to initialise storage with.
    pub const EMPTY: Slot = Slot {
        extent: EXTENT_NONE,
        committed: EXTENT_NONE,
        refcnt: 0,
        prev: NIL,
        next: NIL,
        hash_next: NIL,
        hash_head: NIL,
        flags: 0,
    };
}

impl Default for Slot {
    fn default() -> Self {
        Slot::EMPTY
    }
}

/// Result of [`Log::begin_write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Activation {
    /// All extents are active and committed: issue the write.
    Active,
    /// References are held, but at least one extent's activation is not yet on disk: hold
    /// the write until [`Log::is_committed`] (after the next one or two commits).
    Wait,
}

/// A transaction that was encoded and must be written to the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// Sequence number.
    pub seq: u64,
    /// Ring slot to write to (`seq % ring_slots`); its sector offset in the AL area is
    /// `ring_slot * 8`.
    pub ring_slot: u32,
    /// Number of slot updates it carries.
    pub n_updates: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Update {
    slot: u32,
    extent: u32,
    old: u32,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: u32,
    tail: u32,
    len: u32,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };

    fn push_front(&mut self, slots: &mut [Slot], i: u32) {
        slots[i as usize].prev = NIL;
        slots[i as usize].next = self.head;
        if self.head != NIL {
            slots[self.head as usize].prev = i;
        } else {
            self.tail = i;
        }
        self.head = i;
        self.len += 1;
    }

    fn remove(&mut self, slots: &mut [Slot], i: u32) {
        let (p, n) = (slots[i as usize].prev, slots[i as usize].next);
        if p != NIL {
            slots[p as usize].next = n;
        } else {
            self.head = n;
        }
        if n != NIL {
            slots[n as usize].prev = p;
        } else {
            self.tail = p;
        }
        slots[i as usize].prev = NIL;
        slots[i as usize].next = NIL;
        self.len -= 1;
    }
}

/// The activity log over caller-provided slot storage `S`.
///
/// # Invariants
///
/// - `slots.len() >= n`; every slot index stored in a list, hash chain or queue is `< n`.
/// - A slot is on exactly one list: `in_use` if `refcnt > 0` or changing, else `idle`
///   (ordered most recently used first).
/// - Every slot with `extent != EXTENT_NONE` is in the hash chain of `bucket(extent)`;
///   no extent is held by two slots.
/// - The queue holds one entry per changing slot; the first `inflight` entries are in the
///   transaction being written.
pub struct Log<S> {
    slots: S,
    cfg: Config,
    n: u32,
    context_len: u32,
    idle: List,
    in_use: List,
    queue: [Update; QUEUE_LEN],
    queued: usize,
    inflight: Option<Transaction>,
    next_seq: u64,
}

impl<S> Log<S>
where
    S: Deref<Target = [Slot]> + DerefMut,
{
    /// Creates an empty log over `slots` (at least `cfg.nr_extents` entries, overwritten).
    /// `next_seq` continues the ring: pass [`Recovered::next_seq`].
    pub fn new(cfg: Config, slots: S, next_seq: u64) -> Result<Self, Error> {
        Self::with_context_len(cfg, slots, next_seq, CONTEXT_PER_TRANSACTION as u32)
    }

    fn with_context_len(
        cfg: Config,
        mut slots: S,
        next_seq: u64,
        context_len: u32,
    ) -> Result<Self, Error> {
        cfg.validate_with(context_len)?;
        let n = cfg.nr_extents;
        let table = slots.get_mut(..n as usize).ok_or(Error::StorageTooSmall)?;
        table.fill(Slot::EMPTY);
        let mut idle = List::EMPTY;
        for i in 0..n {
            idle.push_front(table, i);
        }
        Ok(Log {
            slots,
            cfg,
            n,
            context_len,
            idle,
            in_use: List::EMPTY,
            queue: [Update::default(); QUEUE_LEN],
            queued: 0,
            inflight: None,
            next_seq,
        })
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> S {
        self.slots
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Sequence number the next transaction will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Most extents one write may touch; [`Log::max_write_sectors`] in sectors.
    pub fn max_span(&self) -> u32 {
        self.n.min(UPDATES_PER_TRANSACTION as u32)
    }

    /// Largest write (in sectors) that fits [`Log::max_span`] at any alignment: the driver
    /// splits bigger bios.
    pub fn max_write_sectors(&self) -> u64 {
        u64::from(self.max_span() - 1) * self.cfg.extent_sectors() + 1
    }

    /// Number of extents with writes in flight or being activated.
    pub fn used(&self) -> u32 {
        self.in_use.len
    }

    /// Extent number containing `sector`.
    pub fn extent_of(&self, sector: u64) -> u64 {
        sector >> (self.cfg.extent_shift - SECTOR_SHIFT)
    }

    /// Sector range `(first sector, sectors)` of extent `extent`.
    pub fn extent_to_sectors(&self, extent: u32) -> (u64, u64) {
        extent_to_sectors(self.cfg.extent_shift, extent)
    }

    fn span(&self, sector: u64, sectors: u64) -> Result<(u32, u32), Error> {
        let end = sector.checked_add(sectors).ok_or(Error::OutOfRange)?;
        let first = self.extent_of(sector);
        let last = self.extent_of(end - 1);
        if last >= u64::from(EXTENT_NONE) {
            return Err(Error::OutOfRange);
        }
        if last - first >= u64::from(self.max_span()) {
            return Err(Error::RangeTooLarge);
        }
        Ok((first as u32, last as u32))
    }

    fn bucket(&self, extent: u32) -> u32 {
        extent.wrapping_mul(0x9e37_79b1) % self.n
    }

    fn find(&self, extent: u32) -> Option<u32> {
        let mut i = self.slots[self.bucket(extent) as usize].hash_head;
        while i != NIL {
            let s = &self.slots[i as usize];
            if s.extent == extent {
                return Some(i);
            }
            i = s.hash_next;
        }
        None
    }

    fn hash_insert(&mut self, i: u32) {
        let b = self.bucket(self.slots[i as usize].extent) as usize;
        self.slots[i as usize].hash_next = self.slots[b].hash_head;
        self.slots[b].hash_head = i;
    }

    fn hash_remove(&mut self, i: u32) {
        let b = self.bucket(self.slots[i as usize].extent) as usize;
        let next = self.slots[i as usize].hash_next;
        if self.slots[b].hash_head == i {
            self.slots[b].hash_head = next;
        } else {
            let mut j = self.slots[b].hash_head;
            while j != NIL {
                if self.slots[j as usize].hash_next == i {
                    self.slots[j as usize].hash_next = next;
                    break;
                }
                j = self.slots[j as usize].hash_next;
            }
        }
        self.slots[i as usize].hash_next = NIL;
    }

    /// Takes references on every extent of sectors `[sector, sector + sectors)`, activating
    /// the missing ones (evicting the least recently used idle extents). All or nothing: on
    /// error no reference is held. A zero-length write needs no extent.
    pub fn begin_write(&mut self, sector: u64, sectors: u64) -> Result<Activation, Error> {
        if sectors == 0 {
            return Ok(Activation::Active);
        }
        let (first, last) = self.span(sector, sectors)?;
        // Check first, so that failure changes nothing.
        let mut missing = 0u32;
        let mut idle_hits = 0u32;
        for e in first..=last {
            match self.find(e) {
                None => missing += 1,
                Some(i) if self.slots[i as usize].flags & F_IN_USE == 0 => idle_hits += 1,
                Some(_) => {}
            }
        }
        if missing > self.idle.len - idle_hits || missing as usize > QUEUE_LEN - self.queued {
            return Err(Error::Busy);
        }
        let mut wait = false;
        for e in first..=last {
            if let Some(i) = self.find(e) {
                self.get_ref(i);
                wait |= self.slots[i as usize].flags & F_CHANGING != 0;
            } else {
                self.activate(e);
                wait = true;
            }
        }
        Ok(if wait {
            Activation::Wait
        } else {
            Activation::Active
        })
    }

    fn get_ref(&mut self, i: u32) {
        let slots = &mut *self.slots;
        if slots[i as usize].flags & F_IN_USE == 0 {
            self.idle.remove(slots, i);
            self.in_use.push_front(slots, i);
            slots[i as usize].flags |= F_IN_USE;
        }
        slots[i as usize].refcnt += 1;
    }

    /// Gives extent `extent` the least recently used idle slot, queueing the change.
    fn activate(&mut self, extent: u32) {
        let victim = self.idle.tail; // non-NIL: checked by begin_write
        {
            let slots = &mut *self.slots;
            self.idle.remove(slots, victim);
            self.in_use.push_front(slots, victim);
        }
        let old = self.slots[victim as usize].committed;
        if self.slots[victim as usize].extent != EXTENT_NONE {
            self.hash_remove(victim);
        }
        let s = &mut self.slots[victim as usize];
        s.extent = extent;
        s.refcnt = 1;
        s.flags = F_IN_USE | F_CHANGING;
        self.hash_insert(victim);
        self.queue[self.queued] = Update {
            slot: victim,
            extent,
            old,
        };
        self.queued += 1;
    }

    /// Drops the references [`Log::begin_write`] took for the same range. An extent whose
    /// last reference goes becomes the most recently used idle one.
    pub fn end_write(&mut self, sector: u64, sectors: u64) -> Result<(), Error> {
        if sectors == 0 {
            return Ok(());
        }
        let (first, last) = self.span(sector, sectors)?;
        for e in first..=last {
            match self.find(e) {
                Some(i) if self.slots[i as usize].refcnt > 0 => {}
                _ => return Err(Error::NotActive),
            }
        }
        for e in first..=last {
            if let Some(i) = self.find(e) {
                self.slots[i as usize].refcnt -= 1;
                self.maybe_idle(i);
            }
        }
        Ok(())
    }

    fn maybe_idle(&mut self, i: u32) {
        let slots = &mut *self.slots;
        let s = slots[i as usize];
        if s.refcnt == 0 && s.flags & F_CHANGING == 0 && s.flags & F_IN_USE != 0 {
            self.in_use.remove(slots, i);
            self.idle.push_front(slots, i);
            slots[i as usize].flags &= !F_IN_USE;
        }
    }

    /// Whether every extent of the range is active and its activation is on disk.
    pub fn is_committed(&self, sector: u64, sectors: u64) -> bool {
        if sectors == 0 {
            return true;
        }
        let Ok((first, last)) = self.span(sector, sectors) else {
            return false;
        };
        (first..=last).all(|e| {
            self.find(e)
                .is_some_and(|i| self.slots[i as usize].flags & F_CHANGING == 0)
        })
    }

    /// Whether activations wait for a transaction and none is in flight.
    pub fn needs_transaction(&self) -> bool {
        self.inflight.is_none() && self.queued > 0
    }

    /// The transaction in flight, if any.
    pub fn inflight(&self) -> Option<Transaction> {
        self.inflight
    }

    /// Encodes the next transaction (up to [`UPDATES_PER_TRANSACTION`] queued activations plus
    /// the next context window) into `buf` and marks it in flight. May be called with nothing
    /// queued, to refresh the on-disk context.
    pub fn encode_transaction(&mut self, buf: &mut [u8; SLOT_SIZE]) -> Result<Transaction, Error> {
        if self.inflight.is_some() {
            return Err(Error::TransactionInFlight);
        }
        let n_updates = self.queued.min(UPDATES_PER_TRANSACTION);
        // The window follows from the sequence number, so that any `rotation` consecutive
        // transactions cover the whole table, even across restarts of the log. (`n`,
        // `context_len` and `ring_slots` are non-zero by `Config::validate`; the checked
        // forms keep a division by zero out of the kernel's code.)
        let rotation = self.n.checked_div(self.context_len).unwrap_or(0)
            + u32::from(self.n.checked_rem(self.context_len).unwrap_or(0) != 0);
        let ctx_start = self.next_seq.checked_rem(u64::from(rotation)).unwrap_or(0) as u32 * self.context_len;
        let ctx_len = self.context_len.min(self.n.saturating_sub(ctx_start));
        let tr = Transaction {
            seq: self.next_seq,
            ring_slot: self.next_seq.checked_rem(u64::from(self.cfg.ring_slots)).unwrap_or(0) as u32,
            n_updates: n_updates as u32,
        };
        buf.fill(0);
        put_u32(buf, OFF_MAGIC, MAGIC);
        put_u64(buf, OFF_SEQ, tr.seq);
        put_u64(buf, OFF_UUID, self.cfg.device_uuid);
        put_u16(buf, OFF_VERSION, VERSION);
        put_u16(buf, OFF_TYPE, TYPE_UPDATE);
        put_u16(buf, OFF_N_UPDATES, n_updates as u16);
        put_u16(buf, OFF_EXTENT_SHIFT, self.cfg.extent_shift as u16);
        put_u32(buf, OFF_CONTEXT_SIZE, self.n);
        put_u32(buf, OFF_CONTEXT_START, ctx_start);
        put_u32(buf, OFF_CONTEXT_LEN, ctx_len);
        put_u32(buf, OFF_RING_SLOTS, self.cfg.ring_slots);
        for (k, u) in self.queue.iter().take(n_updates).enumerate() {
            put_u32(buf, OFF_UPDATES + 8 * k, u.slot);
            put_u32(buf, OFF_UPDATES + 8 * k + 4, u.extent);
        }
        let window = self.slots.iter().skip(ctx_start as usize).take(ctx_len as usize);
        for (k, s) in window.enumerate() {
            put_u32(buf, OFF_CONTEXT + 4 * k, s.committed);
        }
        let crc = crc32c(0, buf);
        put_u32(buf, OFF_CRC, crc);
        self.inflight = Some(tr);
        Ok(tr)
    }

    /// Extents that `tr` evicts. Before `tr` is written, the driver must write out the dirty
    /// bitmap pages covering them (`bitmap::Bitmap::pages_of`): once the transaction is on
    /// disk, a crash no longer reports those extents, so their out-of-sync bits must be.
    pub fn evicted(&self, tr: &Transaction) -> impl Iterator<Item = u32> + '_ {
        let n = if self.inflight == Some(*tr) {
            tr.n_updates as usize
        } else {
            0
        };
        let updates = &self.queue[..n];
        // An extent evicted from one slot and re-activated in another by the same
        // transaction stays on disk.
        updates
            .iter()
            .map(|u| u.old)
            .filter(move |&e| e != EXTENT_NONE && !updates.iter().any(|u| u.extent == e))
    }

    /// Records that `tr` is on stable storage: its activations become committed and writes
    /// waiting for them may be issued ([`Log::is_committed`]).
    pub fn commit(&mut self, tr: Transaction) -> Result<(), Error> {
        if self.inflight != Some(tr) {
            return Err(Error::StaleTransaction);
        }
        let n = tr.n_updates as usize;
        for k in 0..n {
            let u = self.queue[k];
            let s = &mut self.slots[u.slot as usize];
            s.committed = u.extent;
            s.flags &= !F_CHANGING;
            self.maybe_idle(u.slot);
        }
        self.queue.copy_within(n..self.queued, 0);
        self.queued -= n;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.inflight = None;
        Ok(())
    }

    /// Forgets the in-flight transaction after a failed write; its activations stay queued
    /// for the next transaction (same sequence number, same ring slot).
    pub fn abort(&mut self, tr: Transaction) -> Result<(), Error> {
        if self.inflight != Some(tr) {
            return Err(Error::StaleTransaction);
        }
        self.inflight = None;
        Ok(())
    }

    /// Extents currently active or being activated (for status output and tests).
    pub fn active_extents(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots[..self.n as usize]
            .iter()
            .map(|s| s.extent)
            .filter(|&e| e != EXTENT_NONE)
    }

    /// Whether no write holds an extent and nothing waits for a transaction: the log may be
    /// marked clean in the superblock (`meta::MDF_AL_CLEAN`).
    pub fn is_idle(&self) -> bool {
        self.in_use.len == 0 && self.queued == 0 && self.inflight.is_none()
    }
}

/// Whether the `sectors` at `sector` touch any of `extents` (of `1 << extent_shift` bytes,
/// `extent_shift` >= 9): a write the peer may lack in extents a transaction retires must be
/// marked out of sync first ([`Log::evicted`]). An empty range touches its first sector's
/// extent.
pub fn touches_any(extent_shift: u32, extents: &[u32], sector: u64, sectors: u64) -> bool {
    let shift = extent_shift.saturating_sub(SECTOR_SHIFT).min(63);
    let first = sector >> shift;
    let last = sector.saturating_add(sectors.max(1) - 1) >> shift;
    extents.iter().any(|&e| (first..=last).contains(&u64::from(e)))
}

/// Sector range `(first sector, sectors)` of `extent` for extents of `1 << extent_shift`
/// bytes (saturating; `extent_shift` must be >= 9).
pub fn extent_to_sectors(extent_shift: u32, extent: u32) -> (u64, u64) {
    let size = 1u64 << extent_shift.saturating_sub(SECTOR_SHIFT).min(63);
    (u64::from(extent).saturating_mul(size), size)
}

/// Outcome of [`recover`]: the replayed slot table and what the driver needs to resume.
pub struct Recovered<'a> {
    slots: &'a [Slot],
    /// Sequence number to continue with ([`Log::new`]).
    pub next_seq: u64,
    /// Newest valid transaction, if any.
    pub newest_seq: Option<u64>,
    /// Valid transactions replayed.
    pub valid: u32,
    /// Slots carrying this device's magic and uuid that failed the checksum or sanity checks
    /// (one torn slot after a crash is normal).
    pub torn: u32,
    /// Whether the replayed table is trustworthy. When false (corruption beyond one torn
    /// slot, gaps in the sequence, unknown versions, slots the storage cannot hold), the driver
    /// must treat the whole device as possibly dirty.
    pub complete: bool,
    /// log2 extent size the extents are expressed in.
    pub extent_shift: u32,
}

impl Recovered<'_> {
    /// Every extent that may hold an incomplete write (may repeat an extent).
    pub fn extents(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|s| s.flags & F_COVERED != 0 && s.committed != EXTENT_NONE)
            .map(|s| s.committed)
    }

    /// Sector range `(first sector, sectors)` of `extent`.
    pub fn extent_to_sectors(&self, extent: u32) -> (u64, u64) {
        extent_to_sectors(self.extent_shift, extent)
    }

    /// Sector ranges `(first sector, sectors)` of [`Recovered::extents`], clipped to a data
    /// area of `device_sectors` (extents wholly beyond it are skipped): pass each to
    /// `bitmap::Bitmap::set_range`.
    pub fn sector_ranges(&self, device_sectors: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.extents().filter_map(move |e| {
            let (start, len) = self.extent_to_sectors(e);
            let end = start.saturating_add(len).min(device_sectors);
            (start < end).then_some((start, end - start))
        })
    }
}

/// A decoded transaction header (after checksum and sanity checks).
struct Header {
    seq: u64,
    n_updates: usize,
    extent_shift: u32,
    context_size: u32,
    context_start: u32,
    context_len: u32,
}

enum Slotted {
    Foreign,
    Torn,
    Unsupported,
    Valid(Header),
}

fn parse(buf: &[u8; SLOT_SIZE], device_uuid: u64) -> Slotted {
    if get_u32(buf, OFF_MAGIC) != MAGIC || get_u64(buf, OFF_UUID) != device_uuid {
        return Slotted::Foreign;
    }
    let crc = crc32c(
        crc32c(crc32c(0, &buf[..OFF_CRC]), &[0; 4]),
        &buf[OFF_CRC + 4..],
    );
    if crc != get_u32(buf, OFF_CRC) {
        return Slotted::Torn;
    }
    if get_u16(buf, OFF_VERSION) != VERSION || get_u16(buf, OFF_TYPE) != TYPE_UPDATE {
        return Slotted::Unsupported;
    }
    let h = Header {
        seq: get_u64(buf, OFF_SEQ),
        n_updates: usize::from(get_u16(buf, OFF_N_UPDATES)),
        extent_shift: u32::from(get_u16(buf, OFF_EXTENT_SHIFT)),
        context_size: get_u32(buf, OFF_CONTEXT_SIZE),
        context_start: get_u32(buf, OFF_CONTEXT_START),
        context_len: get_u32(buf, OFF_CONTEXT_LEN),
    };
    let ctx_end = h.context_start.checked_add(h.context_len);
    if h.n_updates > UPDATES_PER_TRANSACTION
        || h.context_len as usize > CONTEXT_PER_TRANSACTION
        || h.context_size > MAX_EXTENTS
        || ctx_end.is_none_or(|e| e > h.context_size)
    {
        return Slotted::Torn;
    }
    Slotted::Valid(h)
}

/// Replays the on-disk ring. `ring` yields the slots (any order); `device_uuid` and
/// `extent_shift` come from the superblock; `state` is scratch storage of at least the
/// superblock's `al_nr_extents` entries (it is overwritten; reuse it for [`Log::new`] after
/// the recovered extents were marked in the bitmap). Never panics on any slot content.
///
/// Every slot index gets the value of the newest transaction that mentions it (updates
/// beat the context of the same transaction), so the order of `ring` does not matter.
pub fn recover<'a, 'b>(
    device_uuid: u64,
    extent_shift: u32,
    ring: impl IntoIterator<Item = &'b [u8; SLOT_SIZE]>,
    state: &'a mut [Slot],
) -> Recovered<'a> {
    for s in state.iter_mut() {
        *s = Slot::EMPTY;
    }
    let mut valid = 0u32;
    let mut torn = 0u32;
    let mut complete = true;
    let mut min_seq = u64::MAX;
    let mut max_seq = 0u64;
    let mut max_ctx = 0u32;
    for buf in ring {
        let h = match parse(buf, device_uuid) {
            Slotted::Foreign => continue,
            Slotted::Torn => {
                torn += 1;
                continue;
            }
            Slotted::Unsupported => {
                complete = false;
                continue;
            }
            Slotted::Valid(h) => h,
        };
        if h.extent_shift != extent_shift {
            complete = false;
            continue;
        }
        valid += 1;
        min_seq = min_seq.min(h.seq);
        max_seq = max_seq.max(h.seq);
        max_ctx = max_ctx.max(h.context_size);
        if h.context_size as usize > state.len() {
            complete = false;
        }
        for k in 0..h.context_len {
            let idx = h.context_start + k; // < context_size, checked by parse
            let extent = get_u32(buf, OFF_CONTEXT + 4 * k as usize);
            stamp(state, idx, extent, h.seq, false);
        }
        for k in 0..h.n_updates {
            let idx = get_u32(buf, OFF_UPDATES + 8 * k);
            let extent = get_u32(buf, OFF_UPDATES + 8 * k + 4);
            if idx >= h.context_size || idx as usize >= state.len() {
                complete = false;
                continue;
            }
            stamp(state, idx, extent, h.seq, true);
        }
    }
    if valid == 0 {
        min_seq = 0;
    }
    // Transactions are written one at a time, so valid ones form one run of sequence
    // numbers (duplicates would also break this count: treated as damage).
    if valid > 0 && max_seq - min_seq != u64::from(valid - 1) {
        complete = false;
    }
    if torn > 1 {
        complete = false;
    }
    // Slots no replayed transaction mentions are unknown, unless the ring still holds the
    // very first transaction (the log starts empty at sequence 0).
    if min_seq != 0 {
        let covered = state
            .iter()
            .take(max_ctx as usize)
            .all(|s| s.flags & F_COVERED != 0);
        complete &= covered;
    }
    Recovered {
        slots: state,
        next_seq: if valid == 0 {
            0
        } else {
            max_seq.wrapping_add(1)
        },
        newest_seq: (valid > 0).then_some(max_seq),
        valid,
        torn,
        complete,
        extent_shift,
    }
}

/// Records `extent` for slot `idx` if (seq, is_update) is at least as new as what it holds.
fn stamp(state: &mut [Slot], idx: u32, extent: u32, seq: u64, is_update: bool) {
    let Some(s) = state.get_mut(idx as usize) else {
        return;
    };
    let old_seq = (u64::from(s.prev) << 32) | u64::from(s.next);
    let old_upd = s.flags & F_STAMP_UPDATE != 0;
    if s.flags & F_COVERED != 0 && (old_seq, old_upd) > (seq, is_update) {
        return;
    }
    s.committed = extent;
    s.prev = (seq >> 32) as u32;
    s.next = seq as u32;
    s.flags = F_COVERED | if is_update { F_STAMP_UPDATE } else { 0 };
}







#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UUID: u64 = 0x1234_5678_9abc_def0;
    const ES: u64 = 1 << (DEFAULT_EXTENT_SHIFT - SECTOR_SHIFT); // sectors per extent

    fn cfg(n: u32, ring: u32) -> Config {
        Config {
            extent_shift: DEFAULT_EXTENT_SHIFT,
            nr_extents: n,
            ring_slots: ring,
            device_uuid: UUID,
        }
    }

    fn log(n: u32, ring: u32) -> Log<Vec<Slot>> {
        Log::new(cfg(n, ring), vec![Slot::EMPTY; n as usize], 0).unwrap()
    }

    fn commit_all(l: &mut Log<Vec<Slot>>, ring: &mut [[u8; SLOT_SIZE]]) {
        while l.needs_transaction() {
            let mut buf = [0u8; SLOT_SIZE];
            let tr = l.encode_transaction(&mut buf).unwrap();
            ring[tr.ring_slot as usize] = buf;
            l.commit(tr).unwrap();
        }
    }

    #[test]
    fn touches_any_extent() {
        // 4 MiB extents: 8192 sectors each.
        assert!(touches_any(DEFAULT_EXTENT_SHIFT, &[1], ES, 8));
        assert!(touches_any(DEFAULT_EXTENT_SHIFT, &[1], ES - 8, 16), "straddles into extent 1");
        assert!(!touches_any(DEFAULT_EXTENT_SHIFT, &[1], ES - 8, 8), "ends just before extent 1");
        assert!(!touches_any(DEFAULT_EXTENT_SHIFT, &[0, 2], ES, 8));
        assert!(touches_any(DEFAULT_EXTENT_SHIFT, &[3], 3 * ES, 0), "empty range: its extent");
        assert!(!touches_any(DEFAULT_EXTENT_SHIFT, &[], 0, 8));
        assert!(!touches_any(DEFAULT_EXTENT_SHIFT, &[0], u64::MAX, 8), "saturates, never wraps");
    }

    #[test]
    fn config_checks() {
        assert_eq!(Config::new(1).validate(), Ok(()));
        assert_eq!(cfg(6, 8).validate(), Err(Error::InvalidConfig));
        assert_eq!(cfg(6002, 8).validate(), Err(Error::InvalidConfig));
        assert_eq!(cfg(881, 2).validate(), Err(Error::RingTooSmall));
        assert_eq!(cfg(880, 2).validate(), Ok(()));
        assert_eq!(cfg(MAX_EXTENTS, DEFAULT_RING_SLOTS).validate(), Ok(()));
        assert_eq!(min_ring_slots(MAX_EXTENTS), 8);
        assert_eq!(min_ring_slots(7), 2);
        assert_eq!(Config::new(1).ring_sectors(), 64);
        assert!(matches!(
            Log::new(cfg(7, 2), vec![Slot::EMPTY; 6], 0),
            Err(Error::StorageTooSmall)
        ));
        for e in [Error::Busy, Error::NotActive, Error::StaleTransaction] {
            assert!(!e.as_str().is_empty());
        }
    }

    #[test]
    fn activation_and_lru() {
        let mut l = log(7, 2);
        let mut ring = vec![[0u8; SLOT_SIZE]; 2];
        assert_eq!(l.begin_write(0, 0), Ok(Activation::Active));
        assert_eq!(l.begin_write(0, 8), Ok(Activation::Wait));
        assert!(!l.is_committed(0, 8));
        assert!(l.needs_transaction());
        // A second write to the same, not yet committed, extent waits too.
        assert_eq!(l.begin_write(8, 8), Ok(Activation::Wait));
        let mut buf = [0u8; SLOT_SIZE];
        let tr = l.encode_transaction(&mut buf).unwrap();
        assert_eq!(
            tr,
            Transaction {
                seq: 0,
                ring_slot: 0,
                n_updates: 1
            }
        );
        assert_eq!(
            l.encode_transaction(&mut buf),
            Err(Error::TransactionInFlight)
        );
        assert!(!l.needs_transaction());
        assert_eq!(
            l.abort(Transaction { seq: 9, ..tr }),
            Err(Error::StaleTransaction)
        );
        l.commit(tr).unwrap();
        assert_eq!(l.commit(tr), Err(Error::StaleTransaction));
        assert!(l.is_committed(0, 16));
        assert_eq!(l.begin_write(16, 8), Ok(Activation::Active));
        // Fill all 7 slots with extents 0..7, all busy.
        for e in 1..7 {
            assert_eq!(l.begin_write(e * ES, 1), Ok(Activation::Wait));
        }
        commit_all(&mut l, &mut ring);
        assert_eq!(l.used(), 7);
        assert_eq!(l.begin_write(7 * ES, 1), Err(Error::Busy));
        // Release extents 3 then 5: 3 is the LRU idle one and gets evicted first.
        l.end_write(3 * ES, 1).unwrap();
        l.end_write(5 * ES, 1).unwrap();
        assert_eq!(l.end_write(5 * ES, 1), Err(Error::NotActive));
        assert_eq!(l.begin_write(7 * ES, 1), Ok(Activation::Wait));
        let tr = l.encode_transaction(&mut buf).unwrap();
        assert_eq!(l.evicted(&tr).collect::<Vec<_>>(), vec![3]);
        l.commit(tr).unwrap();
        let mut act: Vec<u32> = l.active_extents().collect();
        act.sort();
        assert_eq!(act, vec![0, 1, 2, 4, 5, 6, 7]);
        // A write spanning 5 (idle, present) and 6 (busy) needs no transaction.
        assert_eq!(l.begin_write(6 * ES - 1, 2), Ok(Activation::Active));
        // All or nothing: 7 is present, 8 and 9 would need two evictions but none is idle.
        assert_eq!(l.begin_write(7 * ES, 3 * ES), Err(Error::Busy));
        assert_eq!(l.used(), 7);
        assert_eq!(l.begin_write(0, 64 * ES), Err(Error::RangeTooLarge));
        assert_eq!(l.max_span(), 7);
        assert_eq!(l.max_write_sectors(), 6 * ES + 1);
        assert_eq!(l.begin_write(u64::MAX, 2), Err(Error::OutOfRange));
        assert_eq!(
            l.begin_write((u64::from(u32::MAX)) * ES, 1),
            Err(Error::OutOfRange)
        );
        assert!(!l.is_idle());
        assert_eq!(l.extent_to_sectors(2), (2 * ES, ES));
    }

    #[test]
    fn queue_spills_over_two_transactions() {
        let mut l = log(200, 2);
        let mut ring = vec![[0u8; SLOT_SIZE]; 2];
        for e in 0..100u64 {
            assert_eq!(l.begin_write(e * ES, 1), Ok(Activation::Wait));
        }
        let mut buf = [0u8; SLOT_SIZE];
        let tr = l.encode_transaction(&mut buf).unwrap();
        assert_eq!(tr.n_updates, 64);
        // While one transaction is in flight, more activations queue (up to 128 in total).
        for e in 100..128u64 {
            assert_eq!(l.begin_write(e * ES, 1), Ok(Activation::Wait));
        }
        assert_eq!(l.begin_write(128 * ES, 1), Err(Error::Busy));
        ring[tr.ring_slot as usize] = buf;
        l.commit(tr).unwrap();
        assert!(l.is_committed(63 * ES, 1));
        assert!(!l.is_committed(64 * ES, 1));
        commit_all(&mut l, &mut ring);
        for e in 0..128u64 {
            assert!(l.is_committed(e * ES, ES));
            l.end_write(e * ES, 1).unwrap();
        }
        assert!(l.is_idle());
        let mut state = vec![Slot::EMPTY; 200];
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, ring.iter(), &mut state);
        assert!(rec.complete);
        assert_eq!(rec.next_seq, 2);
        let mut got: Vec<u32> = rec.extents().collect();
        got.sort();
        assert_eq!(got, (0..128).collect::<Vec<_>>());
        assert_eq!(rec.extent_to_sectors(1), (ES, ES));
    }

    #[test]
    fn recover_edge_cases() {
        let mut state = vec![Slot::EMPTY; 16];
        let zero = vec![[0u8; SLOT_SIZE]; 4];
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, zero.iter(), &mut state);
        assert!(rec.complete && rec.valid == 0 && rec.next_seq == 0 && rec.newest_seq.is_none());
        assert_eq!(rec.extents().count(), 0);

        let mut l = log(16, 2);
        let mut ring = vec![[0u8; SLOT_SIZE]; 2];
        assert_eq!(l.begin_write(5 * ES, 1), Ok(Activation::Wait));
        commit_all(&mut l, &mut ring);
        // Another device's uuid: ignored.
        let rec = recover(UUID + 1, DEFAULT_EXTENT_SHIFT, ring.iter(), &mut state);
        assert_eq!((rec.valid, rec.torn, rec.complete), (0, 0, true));
        // Different extent size: cannot be trusted.
        let rec = recover(UUID, 20, ring.iter(), &mut state);
        assert!(!rec.complete);
        // Too little state for the context size.
        let mut small = vec![Slot::EMPTY; 8];
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, ring.iter(), &mut small);
        assert!(!rec.complete);
        // One torn slot is normal, two are not.
        let mut bad = ring.clone();
        bad[0][100] ^= 1;
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, bad.iter(), &mut state);
        assert_eq!((rec.valid, rec.torn, rec.complete), (0, 1, true));
        let bad2 = [bad[0], bad[0]];
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, bad2.iter(), &mut state);
        assert!(!rec.complete);
        // A future version is not understood.
        let mut fut = ring[0];
        put_u16(&mut fut, OFF_VERSION, 2);
        put_u32(&mut fut, OFF_CRC, 0);
        let crc = crc32c(0, &fut);
        put_u32(&mut fut, OFF_CRC, crc);
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, [&fut], &mut state);
        assert!(!rec.complete);
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, ring.iter(), &mut state);
        assert_eq!(rec.extents().collect::<Vec<_>>(), vec![5]);
        assert_eq!(
            rec.sector_ranges(6 * ES).collect::<Vec<_>>(),
            vec![(5 * ES, ES)]
        );
        assert_eq!(
            rec.sector_ranges(5 * ES + 3).collect::<Vec<_>>(),
            vec![(5 * ES, 3)]
        );
        assert_eq!(rec.sector_ranges(5 * ES).count(), 0);
    }

    /// Rolling context with N > context_len: needs several transactions per rotation.
    #[test]
    fn rolling_context() {
        let c = cfg(20, 5); // context_len 6 -> 4 transactions per rotation + 1 torn
        let mut l = Log::with_context_len(c, vec![Slot::EMPTY; 20], 0, 6).unwrap();
        assert_eq!(
            Log::with_context_len(cfg(20, 4), vec![Slot::EMPTY; 20], 0, 6).err(),
            Some(Error::RingTooSmall)
        );
        let mut ring = vec![[0u8; SLOT_SIZE]; 5];
        for e in 0..20u64 {
            assert_eq!(l.begin_write(e * ES, 1), Ok(Activation::Wait));
            commit_all(&mut l, &mut ring);
        }
        // Many more (empty) transactions: the activations' own updates leave the ring, the
        // context keeps them.
        for _ in 0..17 {
            let mut buf = [0u8; SLOT_SIZE];
            let tr = l.encode_transaction(&mut buf).unwrap();
            ring[tr.ring_slot as usize] = buf;
            l.commit(tr).unwrap();
        }
        // Tear the newest slot.
        let newest = ((l.next_seq() - 1) % 5) as usize;
        ring[newest][2000] ^= 0xff;
        let mut state = vec![Slot::EMPTY; 20];
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, ring.iter().rev(), &mut state);
        assert!(rec.complete);
        assert_eq!(rec.torn, 1);
        let mut got: Vec<u32> = rec.extents().collect();
        got.sort();
        assert_eq!(got, (0..20).collect::<Vec<_>>());
        // Two torn slots leave a slot uncovered: incomplete.
        ring[(newest + 1) % 5][2000] ^= 0xff;
        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, ring.iter(), &mut state);
        assert!(!rec.complete);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Begin(u32, u64, u64),
        End(usize),
        Encode,
        Flush,
        Abort,
        Crash(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0..24u32, 0..ES, 1..2 * ES).prop_map(|(e, o, n)| Op::Begin(e, o, n)),
            4 => any::<usize>().prop_map(Op::End),
            3 => Just(Op::Encode),
            3 => Just(Op::Flush),
            1 => Just(Op::Abort),
            1 => (0..3u8).prop_map(Op::Crash),
        ]
    }

    struct Write {
        sector: u64,
        sectors: u64,
        issued: bool,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// After any sequence of activations, commits, ends and crashes (losing or tearing the
        /// unflushed transaction), recovery yields every extent with an issued, unfinished
        /// write, and reports itself complete.
        #[test]
        fn crash_recovery_superset(
            n in 7u32..14,
            ctx in 2u32..8,
            extra in 0u32..3,
            ops in proptest::collection::vec(op(), 1..150),
        ) {
            let ring_slots = n.div_ceil(ctx) + 1 + extra;
            let c = cfg(n, ring_slots);
            let mut l = Log::with_context_len(c, vec![Slot::EMPTY; n as usize], 0, ctx).unwrap();
            let mut ring = vec![[0u8; SLOT_SIZE]; ring_slots as usize];
            let mut pending: Option<(Transaction, Box<[u8; SLOT_SIZE]>)> = None;
            let mut writes: Vec<Write> = Vec::new();
            for o in ops {
                match o {
                    Op::Begin(e, off, len) => {
                        let sector = u64::from(e) * ES + off;
                        match l.begin_write(sector, len) {
                            Ok(a) => writes.push(Write { sector, sectors: len, issued: a == Activation::Active }),
                            Err(Error::Busy) => {}
                            Err(err) => prop_assert!(false, "unexpected {:?}", err),
                        }
                    }
                    Op::End(i) => {
                        if !writes.is_empty() {
                            let w = writes.swap_remove(i % writes.len());
                            l.end_write(w.sector, w.sectors).unwrap();
                        }
                    }
                    Op::Encode => {
                        if pending.is_none() {
                            let mut buf = Box::new([0u8; SLOT_SIZE]);
                            let tr = l.encode_transaction(&mut buf).unwrap();
                            // Evicted extents have no write in flight.
                            for ev in l.evicted(&tr) {
                                let (s, len) = l.extent_to_sectors(ev);
                                for w in writes.iter().filter(|w| w.issued) {
                                    prop_assert!(w.sector + w.sectors <= s || w.sector >= s + len);
                                }
                            }
                            pending = Some((tr, buf));
                        }
                    }
                    Op::Flush => {
                        if let Some((tr, buf)) = pending.take() {
                            ring[tr.ring_slot as usize] = *buf;
                            l.commit(tr).unwrap();
                            for w in &mut writes {
                                if !w.issued && l.is_committed(w.sector, w.sectors) {
                                    w.issued = true;
                                }
                            }
                        }
                    }
                    Op::Abort => {
                        if let Some((tr, _)) = pending.take() {
                            l.abort(tr).unwrap();
                        }
                    }
                    Op::Crash(how) => {
                        if let Some((tr, buf)) = pending.take() {
                            let dst = &mut ring[tr.ring_slot as usize];
                            match how {
                                0 => {}                                   // never reached the disk
                                1 => *dst = *buf,                         // reached it, not acknowledged
                                _ => dst[..2048].copy_from_slice(&buf[..2048]), // torn
                            }
                        }
                        let mut state = vec![Slot::EMPTY; n as usize];
                        let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, ring.iter(), &mut state);
                        prop_assert!(rec.complete);
                        prop_assert!(rec.torn <= 1);
                        let got: std::collections::BTreeSet<u32> = rec.extents().collect();
                        for w in writes.iter().filter(|w| w.issued) {
                            let first = (w.sector / ES) as u32;
                            let last = ((w.sector + w.sectors - 1) / ES) as u32;
                            for e in first..=last {
                                prop_assert!(got.contains(&e), "extent {} lost", e);
                            }
                        }
                        let next = rec.next_seq;
                        prop_assert!(next >= l.next_seq());
                        writes.clear();
                        l = Log::with_context_len(c, state, next, ctx).unwrap();
                    }
                }
            }
        }

        #[test]
        fn recover_random_slots_never_panics(
            slots in proptest::collection::vec(proptest::collection::vec(any::<u8>(), SLOT_SIZE), 1..4),
            fix_header in any::<bool>(),
        ) {
            let mut ring: Vec<[u8; SLOT_SIZE]> = slots.iter().map(|v| {
                let mut a = [0u8; SLOT_SIZE];
                a.copy_from_slice(v);
                a
            }).collect();
            if fix_header {
                // Valid magic/uuid/crc with garbage counts and offsets.
                for a in &mut ring {
                    put_u32(a, OFF_MAGIC, MAGIC);
                    put_u64(a, OFF_UUID, UUID);
                    put_u16(a, OFF_VERSION, VERSION);
                    put_u16(a, OFF_TYPE, TYPE_UPDATE);
                    put_u16(a, OFF_EXTENT_SHIFT, DEFAULT_EXTENT_SHIFT as u16);
                    put_u32(a, OFF_CRC, 0);
                    let crc = crc32c(0, a);
                    put_u32(a, OFF_CRC, crc);
                }
            }
            let mut state = vec![Slot::EMPTY; 10];
            let rec = recover(UUID, DEFAULT_EXTENT_SHIFT, ring.iter(), &mut state);
            let _ = rec.extents().count();
        }
    }
}
