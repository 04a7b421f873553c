// SPDX-License-Identifier: GPL-2.0
//! `/dev/rmirror-control`: the dmsetup-style control plane (ioctls, see
//! `Documentation/control-abi.rst`) and the registry of devices.
//!
//! Every ioctl checks `CAP_SYS_ADMIN` first (`EPERM`), then the command number (`ENOTTY`), then
//! the buffer (`EINVAL` with a kernel message naming the problem).

use crate::bindings::{capable_sys_admin, global::DEVICES, net::SockAddr};
use crate::device::{Config, Device, Entry};
use crate::rcore::abi::{self, status, Cmd, Name};
use crate::rcore::state::protocol::Protocol;
use crate::rcore::table;
use core::fmt::Write;
use kernel::fs::File;
use kernel::miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration};
use kernel::prelude::*;
use kernel::str::CString;
use kernel::uaccess::{UserPtr, UserSlice};

/// Most devices per node (also the range of minors `/dev/rmirror0..15`).
pub(crate) const MAX_DEVICES: usize = 16;

/// All devices, by slot (slot = index N of `/dev/rmirrorN`).
pub(crate) struct Registry {
    slots: [Option<Entry>; MAX_DEVICES],
}

impl Registry {
    /// An empty registry (const, for the global lock).
    pub(crate) const fn new() -> Self {
        Registry { slots: [const { None }; MAX_DEVICES] }
    }

    fn find(&self, name: &[u8]) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.as_ref().is_some_and(|e| e.dev.cfg.name.to_bytes() == name))
    }
}

/// Initializes the registry (module init).
pub(crate) fn init_registry() {
    crate::bindings::global::init();
}

/// The registered control device.
pub(crate) type Registration = MiscDeviceRegistration<Control>;

/// Registers `/dev/rmirror-control`.
pub(crate) fn register() -> impl PinInit<Registration, Error> {
    MiscDeviceRegistration::register(MiscDeviceOptions { name: c"rmirror-control" })
}

/// Tears down every device (module exit).
pub(crate) fn remove_all() {
    let mut reg = DEVICES.lock();
    for slot in reg.slots.iter_mut() {
        if let Some(e) = slot.take() {
            // Cannot be open (an open disk pins the module); marks it so no open can start.
            let _ = e.begin_remove();
            e.teardown();
        }
    }
}

/// An open file of the control device (no per-file state).
pub(crate) struct Control;

#[vtable]
impl MiscDevice for Control {
    type Ptr = KBox<Self>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<KBox<Self>> {
        Ok(KBox::new(Control, GFP_KERNEL)?)
    }

    fn ioctl(_me: &Control, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        if !capable_sys_admin() {
            return Err(EPERM);
        }
        let c = Cmd::from_request(cmd).ok_or(ENOTTY)?;
        let mut buf = KVec::from_elem(0u8, abi::BUF_LEN, GFP_KERNEL)?;
        let (mut reader, mut writer) = UserSlice::new(UserPtr::from_addr(arg), abi::BUF_LEN).reader_writer();
        reader.read_slice(&mut buf)?;
        let buf: &mut [u8; abi::BUF_LEN] = buf.as_mut_slice().try_into().map_err(|_| EINVAL)?;
        handle(c, buf)?;
        writer.write_slice(buf)?;
        Ok(0)
    }
}

fn bad(what: &str, why: &str) -> Error {
    pr_err!("{}: {}\n", what, why);
    EINVAL
}

fn handle(c: Cmd, buf: &mut [u8; abi::BUF_LEN]) -> Result {
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
            let minor = create(name, line)?;
            reply(buf, minor, &|w| write!(w, "/dev/rmirror{}", minor))
        }
        (Cmd::Remove, Some(name)) => {
            remove(name)?;
            reply(buf, 0, &|_| Ok(()))
        }
        (Cmd::Status, Some(name)) => {
            let reg = DEVICES.lock();
            let e = reg.slots[reg.find(name.as_bytes()).ok_or(ENXIO)?].as_ref().ok_or(ENXIO)?;
            let minor = e.dev.cfg.index;
            let mut w = status::Writer::new(abi::reply_area(buf));
            e.dev.write_status(&mut w).map_err(|_| ENOSPC)?;
            let n = w.len();
            abi::finish_reply(buf, minor, n).map_err(|_| ENOSPC)
        }
        (Cmd::Table, Some(name)) => {
            let reg = DEVICES.lock();
            let e = reg.slots[reg.find(name.as_bytes()).ok_or(ENXIO)?].as_ref().ok_or(ENXIO)?;
            let minor = e.dev.cfg.index;
            abi::write_reply(buf, minor, &e.dev.cfg.table).map_err(|_| ENOSPC)
        }
        (Cmd::List, _) => {
            let reg = DEVICES.lock();
            reply(buf, 0, &|w| {
                for e in reg.slots.iter().flatten() {
                    writeln!(w, "{}", e.dev.cfg.name.to_str().unwrap_or("?"))?;
                }
                Ok(())
            })
        }
        _ => Err(EINVAL),
    }
}

fn addr(a: table::SockAddr) -> SockAddr {
    SockAddr { ip: u32::from_be_bytes(a.ip), port: a.port }
}

fn create(name: &Name, line: &str) -> Result<u32> {
    let t = table::parse(line).map_err(|e| {
        pr_err!("{}: table: {}\n", name.as_str(), e.as_str());
        EINVAL
    })?;
    if t.protocol != table::Protocol::C {
        pr_err!("{}: table: protocol {} is not supported yet (only C)\n", name.as_str(), t.protocol.as_str());
        return Err(EINVAL);
    }
    let mut reg = DEVICES.lock();
    if reg.find(name.as_bytes()).is_some() {
        pr_err!("{}: a device with this name exists\n", name.as_str());
        return Err(EEXIST);
    }
    let slot = reg.slots.iter().position(|s| s.is_none()).ok_or_else(|| {
        pr_err!("{}: all {} device slots in use\n", name.as_str(), MAX_DEVICES);
        ENOSPC
    })?;
    let mut canon = KVec::from_elem(0u8, table::LINE_MAX, GFP_KERNEL)?;
    let n = t.write(&mut canon).map_err(|_| EINVAL)?;
    canon.truncate(n);
    let cfg = Config {
        name: CString::try_from_fmt(fmt!("{}", name.as_str()))?,
        index: slot as u32,
        role: t.role,
        local: addr(t.local),
        peer: addr(t.peer),
        protocol: Protocol::C,
        backing_path: CString::try_from_fmt(fmt!("{}", t.backing))?,
        sectors: t.len,
        node_id: t.node_id,
        table: canon,
    };
    reg.slots[slot] = Some(Device::create(cfg, &t)?);
    Ok(slot as u32)
}

fn remove(name: &Name) -> Result {
    let mut reg = DEVICES.lock();
    let i = reg.find(name.as_bytes()).ok_or(ENXIO)?;
    let e = reg.slots[i].take().ok_or(ENXIO)?;
    if let Err(err) = e.begin_remove() {
        pr_err!("{}: cannot remove: device is open\n", name.as_str());
        reg.slots[i] = Some(e);
        return Err(err);
    }
    e.teardown();
    Ok(())
}

impl Device {
    /// The status line (`key=value` pairs, see the ABI documentation).
    pub(crate) fn write_status(&self, w: &mut status::Writer<'_>) -> core::result::Result<(), abi::AbiError> {
        use core::sync::atomic::Ordering::Relaxed;
        let s = &self.stats;
        w.field(status::NAME, &*self.cfg.name.to_str().unwrap_or("?"))?;
        w.field(status::MINOR, self.cfg.index)?;
        w.field(status::ROLE, self.cfg.role.as_str())?;
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
        w.field(status::OUT_OF_SYNC, s.out_of_sync.load(Relaxed))?;
        w.field(status::INFLIGHT, s.inflight.load(Relaxed))?;
        Ok(())
    }
}
