// SPDX-License-Identifier: GPL-2.0
//! `/dev/rmirror-control`: the dmsetup-style control plane (ioctls, see
//! `Documentation/control-abi.rst`) and the registry of devices.
//!
//! Every ioctl checks `CAP_SYS_ADMIN` first (`EPERM`), then the command number (`ENOTTY`), then
//! the buffer (`EINVAL` with a kernel message naming the problem).

use crate::bindings::{capable_sys_admin, misc::ControlOps, net::SockAddr};
use crate::device::{Config, Device, Entry};
use crate::rcore::abi::{self, status, Cmd, Name};
use crate::rcore::state::protocol::Protocol;
use crate::rcore::table;
use core::fmt::Write;
use kernel::prelude::*;
use kernel::str::CString;
use kernel::sync::{new_mutex, Arc, Mutex};
use kernel::uaccess::{UserPtr, UserSlice};

/// Most devices per node (also the range of minors `/dev/rmirror0..15`).
pub(crate) const MAX_DEVICES: usize = 16;

/// A registry slot (slot = index N of `/dev/rmirrorN`).
enum Slot {
    Free,
    /// Being created or torn down (outside the registry lock): the name and minor are taken.
    Busy(Name),
    Live(Entry),
}

/// All devices, by slot. The lock is held only to look up, reserve and release slots, never
/// while a device is created or torn down, so one slow device (a hung backing disk, a peer that
/// does not answer) does not hold up control operations on the others.
pub(crate) struct Registry {
    slots: [Slot; MAX_DEVICES],
}

impl Registry {
    /// The slot of the live device named `name`.
    fn find(&self, name: &[u8]) -> Result<usize> {
        self.slots
            .iter()
            .position(|s| matches!(s, Slot::Live(e) if e.dev.cfg.name.to_bytes() == name))
            .ok_or(ENXIO)
    }

    /// The live device named `name`.
    fn live(&self, name: &[u8]) -> Result<&Entry> {
        match self.slots.get(self.find(name)?) {
            Some(Slot::Live(e)) => Ok(e),
            _ => Err(ENXIO),
        }
    }

    /// The live device named `name`, to change it (a role change).
    fn live_mut(&mut self, name: &[u8]) -> Result<&mut Entry> {
        let i = self.find(name)?;
        match self.slots.get_mut(i) {
            Some(Slot::Live(e)) => Ok(e),
            _ => Err(ENXIO),
        }
    }

    fn taken(&self, name: &Name) -> bool {
        self.slots.iter().any(|s| match s {
            Slot::Live(e) => e.dev.cfg.name.to_bytes() == name.as_bytes(),
            Slot::Busy(n) => n == name,
            Slot::Free => false,
        })
    }
}

/// The control device's data: the registry.
#[pin_data]
pub(crate) struct Control {
    #[pin]
    registry: Mutex<Registry>,
    /// State-change events of every device.
    events: Arc<crate::events::Events>,
}

impl Control {
    /// An empty registry.
    pub(crate) fn new() -> impl PinInit<Self, Error> {
        try_pin_init!(Control {
            registry <- new_mutex!(Registry { slots: [const { Slot::Free }; MAX_DEVICES] }),
            events: Arc::pin_init(crate::events::Events::new(), GFP_KERNEL)?,
        }? Error)
    }

    /// Tears down every device (module exit; none can be open: an open disk pins the module).
    pub(crate) fn remove_all(&self) {
        for i in 0..MAX_DEVICES {
            let e = {
                let mut reg = self.registry.lock();
                match core::mem::replace(&mut reg.slots[i], Slot::Free) {
                    Slot::Live(e) => e,
                    other => {
                        reg.slots[i] = other;
                        continue;
                    }
                }
            };
            // Marks it so that no open can start.
            let _ = e.begin_remove();
            e.teardown();
        }
    }
}

impl ControlOps for Control {
    /// Checks the command number first (`ENOTTY`, as device-mapper does), then
    /// `CAP_SYS_ADMIN` (`EPERM`), then the buffer (`EINVAL` with a kernel message).
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        let c = Cmd::from_request(cmd).ok_or(ENOTTY)?;
        if !capable_sys_admin() {
            return Err(EPERM);
        }
        let mut buf = KVec::from_elem(0u8, abi::BUF_LEN, GFP_KERNEL)?;
        let (mut reader, mut writer) = UserSlice::new(UserPtr::from_addr(arg), abi::BUF_LEN).reader_writer();
        reader.read_slice(&mut buf)?;
        let buf: &mut [u8; abi::BUF_LEN] = buf.as_mut_slice().try_into().map_err(|_| EINVAL)?;
        self.handle(c, buf)?;
        writer.write_slice(buf)?;
        Ok(0)
    }
}

fn bad(what: &str, why: &str) -> Error {
    pr_err!("{}: {}\n", what, why);
    EINVAL
}

impl Control {
    fn handle(&self, c: Cmd, buf: &mut [u8; abi::BUF_LEN]) -> Result {
        let req = abi::Request::decode(buf).map_err(|e| bad(c.as_str(), e.as_str()))?;
        let name = if c.takes_name() {
            Some(req.name_owned().map_err(|e| bad(c.as_str(), e.as_str()))?)
        } else {
            None
        };
        let name = name.as_ref();
        let reply = |buf: &mut [u8; abi::BUF_LEN], minor: u32, f: &dyn Fn(&mut abi::TextWriter<'_>) -> core::fmt::Result| {
            let mut w = abi::TextWriter::new(abi::reply_area(buf));
            f(&mut w).map_err(|_| ENOSPC)?;
            let n = w.len();
            abi::finish_reply(buf, minor, n).map_err(|_| ENOSPC)
        };
        match (c, name) {
            (Cmd::Version, _) => reply(buf, 0, &|w| {
                write!(w, "rmirror {} abi {} wire {}", crate::VERSION, abi::ABI_VERSION, crate::rcore::wire::VERSION)
            }),
            (Cmd::Create, Some(name)) => {
                let line = req.data_str().map_err(|e| bad(name.as_str(), e.as_str()))?;
                let minor = self.create(name, line)?;
                reply(buf, minor, &|w| write!(w, "/dev/rmirror{}", minor))
            }
            (Cmd::Remove, Some(name)) => {
                self.remove(name)?;
                reply(buf, 0, &|_| Ok(()))
            }
            (Cmd::Status, Some(name)) => {
                let reg = self.registry.lock();
                let e = reg.live(name.as_bytes())?;
                let minor = e.dev.cfg.index;
                let mut w = status::Writer::new(abi::reply_area(buf));
                e.dev.write_status(&mut w).map_err(|_| ENOSPC)?;
                let n = w.len();
                abi::finish_reply(buf, minor, n).map_err(|_| ENOSPC)
            }
            (Cmd::Table, Some(name)) => {
                let reg = self.registry.lock();
                let e = reg.live(name.as_bytes())?;
                let minor = e.dev.cfg.index;
                abi::write_reply(buf, minor, &e.dev.cfg.table).map_err(|_| ENOSPC)
            }
            (Cmd::Connect | Cmd::Disconnect, Some(name)) => {
                // The device is used outside the registry lock (closing a connection completes
                // writes and may write metadata); a removal meanwhile makes it ENXIO.
                let dev = self.registry.lock().live(name.as_bytes())?.dev.clone();
                if c == Cmd::Connect {
                    let discard = match req.data_str().map_err(|e| bad(name.as_str(), e.as_str()))? {
                        "" => false,
                        "discard-my-data" => true,
                        _ => return Err(bad(name.as_str(), "connect: the only option is discard-my-data")),
                    };
                    dev.user_connect(discard)?;
                } else {
                    dev.user_disconnect()?;
                }
                reply(buf, 0, &|_| Ok(()))
            }
            (Cmd::Primary | Cmd::Secondary, Some(name)) => {
                // Under the registry lock: the device is neither removed nor changed twice at once.
                let mut reg = self.registry.lock();
                let e = reg.live_mut(name.as_bytes())?;
                e.set_role(if c == Cmd::Primary { table::Role::Primary } else { table::Role::Secondary })?;
                drop(reg);
                reply(buf, 0, &|_| Ok(()))
            }
            (Cmd::Attach, Some(name)) => {
                let reg = self.registry.lock();
                let dev = reg.live(name.as_bytes())?.dev.clone();
                drop(reg);
                dev.attach_disk()?;
                reply(buf, 0, &|_| Ok(()))
            }
            (Cmd::Events, _) => {
                let data = req.data_str().map_err(|e| bad(c.as_str(), e.as_str()))?;
                let since = abi::events::parse_request(data)
                    .ok_or_else(|| bad(c.as_str(), "expected a sequence number or \"now\""))?;
                let mut w = abi::TextWriter::new(abi::reply_area(buf));
                self.events.read(since, &mut w)?;
                let n = w.len();
                abi::finish_reply(buf, 0, n).map_err(|_| ENOSPC)
            }
            (Cmd::List, _) => {
                let reg = self.registry.lock();
                reply(buf, 0, &|w| {
                    for s in reg.slots.iter() {
                        if let Slot::Live(e) = s {
                            writeln!(w, "{}", e.dev.cfg.name.to_str().unwrap_or("?"))?;
                        }
                    }
                    Ok(())
                })
            }
            _ => Err(EINVAL),
        }
    }

    /// Creates device `name` from table `line` in a reserved slot (the registry lock is not held
    /// while the device is set up).
    fn create(&self, name: &Name, line: &str) -> Result<u32> {
        let t = table::parse(line).map_err(|e| {
            pr_err!("{}: table: {}\n", name.as_str(), e.as_str());
            EINVAL
        })?;
        let mut canon = KVec::from_elem(0u8, table::LINE_MAX, GFP_KERNEL)?;
        let n = t.write(&mut canon).map_err(|_| EINVAL)?;
        canon.truncate(n);
        let slot = {
            let mut reg = self.registry.lock();
            if reg.taken(name) {
                pr_err!("{}: a device with this name exists\n", name.as_str());
                return Err(EEXIST);
            }
            let slot = reg.slots.iter().position(|s| matches!(s, Slot::Free)).ok_or_else(|| {
                pr_err!("{}: all {} device slots in use\n", name.as_str(), MAX_DEVICES);
                ENOSPC
            })?;
            reg.slots[slot] = Slot::Busy(*name);
            slot
        };
        let made = (|| {
            let cfg = Config {
                name: CString::try_from_fmt(fmt!("{}", name.as_str()))?,
                index: slot as u32,
                role: t.role,
                local: addr(t.local),
                peer: addr(t.peer),
                protocol: match t.protocol {
                    table::Protocol::A => Protocol::A,
                    table::Protocol::B => Protocol::B,
                    table::Protocol::C => Protocol::C,
                },
                backing_path: CString::try_from_fmt(fmt!("{}", t.backing))?,
                sectors: t.len,
                node_id: t.node_id,
                on_io_error: t.on_io_error,
                table: canon,
            };
            Device::create(cfg, &t, self.events.clone())
        })();
        let mut reg = self.registry.lock();
        match made {
            Ok(e) => {
                reg.slots[slot] = Slot::Live(e);
                Ok(slot as u32)
            }
            Err(err) => {
                reg.slots[slot] = Slot::Free;
                Err(err)
            }
        }
    }

    /// Removes device `name` (`EBUSY` while open); the teardown runs without the registry lock.
    fn remove(&self, name: &Name) -> Result {
        let (i, e) = {
            let mut reg = self.registry.lock();
            let i = reg.find(name.as_bytes())?;
            let Slot::Live(e) = core::mem::replace(&mut reg.slots[i], Slot::Busy(*name)) else { return Err(ENXIO) };
            if let Err(err) = e.begin_remove() {
                pr_err!("{}: cannot remove: device is open\n", name.as_str());
                reg.slots[i] = Slot::Live(e);
                return Err(err);
            }
            (i, e)
        };
        e.teardown();
        self.registry.lock().slots[i] = Slot::Free;
        Ok(())
    }
}

fn addr(a: table::SockAddr) -> SockAddr {
    SockAddr { ip: u32::from_be_bytes(a.ip), port: a.port }
}

impl Device {
    /// The status line (`key=value` pairs, see the ABI documentation).
    pub(crate) fn write_status(&self, w: &mut status::Writer<'_>) -> core::result::Result<(), abi::AbiError> {
        use core::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        w.field(status::NAME, &*self.cfg.name.to_str().unwrap_or("?"))?;
        w.field(status::MINOR, self.cfg.index)?;
        w.field(status::ROLE, self.role().as_str())?;
        w.field(status::CSTATE, self.cstate().as_str())?;
        w.field(status::PEER, crate::device::Addr(self.cfg.peer))?;
        w.field(status::LOCAL, crate::device::Addr(self.cfg.local))?;
        w.field(status::PROTOCOL, self.cfg.protocol.as_str())?;
        w.field(status::BACKING, self.cfg.backing_path.to_str().unwrap_or("?"))?;
        w.field(status::SIZE, self.cfg.sectors)?;
        w.field(status::INLINE_MAX, self.inline_max.load(Relaxed))?;
        w.field(status::WRITES, s.writes.load(Relaxed))?;
        w.field(status::WRITE_BYTES, s.write_bytes.load(Relaxed))?;
        w.field(status::SMALL_WRITES, s.small_writes.load(Relaxed))?;
        w.field(status::LARGE_WRITES, s.large_writes.load(Relaxed))?;
        w.field(status::ACKS, s.acks.load(Relaxed))?;
        w.field(status::OUT_OF_SYNC, self.out_of_sync_sectors())?;
        w.field(status::INFLIGHT, s.inflight.load(Relaxed))?;
        w.field(status::CONNECT_ATTEMPTS, s.connect_attempts.load(Relaxed))?;
        w.field(status::CONNECTS, s.connects.load(Relaxed))?;
        w.field(status::TIMEOUTS, s.timeouts.load(Relaxed))?;
        w.field(status::PINGS, s.pings.load(Relaxed))?;
        w.field(status::PONGS, s.pongs.load(Relaxed))?;
        w.field(status::REPL, crate::resync::repl_state(self))?;
        w.field(status::DISK, crate::resync::disk_state(self))?;
        w.field(status::RESYNCED, s.resynced.load(Relaxed))?;
        w.field(status::RESYNC_ETA, crate::resync::eta_s(self))?;
        let (queued, bytes, replayed, overflows) = {
            let c = self.conn.lock();
            (c.outq.len(), c.outq.bytes(), c.outq.replayed, c.outq.overflows)
        };
        w.field(status::QUEUED, queued)?;
        w.field(status::QUEUED_BYTES, bytes)?;
        w.field(status::REPLAYED, replayed)?;
        w.field(status::QUEUE_OVERFLOWS, overflows)?;
        let n = &self.counters;
        w.field(status::MSGS_SENT, n.msgs_sent.load(Relaxed))?;
        w.field(status::PUSHES, n.pushes.load(Relaxed))?;
        w.field(status::MSGS_RECEIVED, n.msgs_received.load(Relaxed))?;
        Ok(())
    }
}
