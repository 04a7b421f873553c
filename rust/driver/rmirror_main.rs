// SPDX-License-Identifier: GPL-2.0
//! rmirror: a bio-based block device that mirrors every write to a peer node (crate root).
//!
//! Table of contents, following a write from the top:
//! - [`control`]: `/dev/rmirror-control` ioctls (create, remove, status, list) and the registry;
//! - [`device`]: one replicated device: configuration, connection state, teardown;
//! - [`request`]: the request path: reads remapped, writes cloned locally and queued for the peer,
//!   completion decided by the core's protocol state machine;
//! - [`conn`]: connections: connect (primary) or accept (secondary) the data and meta sockets,
//!   handshake, and the glue to the core's connection state machine;
//! - [`heartbeat`]: the meta socket's thread on both sides: pings both ways, dead-peer
//!   detection, probation, and the primary's acks;
//! - [`resync`]: the fracture bitmap, and the resync that copies exactly its marked regions;
//! - [`md`]: on-disk metadata: checked at create, the bitmap loaded and written back;
//! - [`actlog`]: the activity (write-intent) log: extents made active on disk before writes
//!   land in them, replayed after a crash of the primary;
//! - [`uuids`]: generation UUIDs: who may sync from whom, split brain, the initial sync;
//! - [`sender`] / [`receiver`]: the data socket's threads (primary: send writes; secondary:
//!   apply writes, acknowledge on the meta socket once durable);
//! - [`transport`]: the message transport behind a small trait (TCP now, RDMA later);
//! - [`sysfs`]: `/sys/block/rmirrorN/rmirror/` attributes;
//! - [`rcore`]: the shared `no_std` core (wire format, logs, bitmap, state machines), the same
//!   source the host tests run;
//! - [`bindings`]: the only module with `unsafe`, generic safe abstractions over the kernel:
//!   bio-based disk, bios and front-padded clones, block devices, sockets, threads, an irq-safe
//!   lock, a misc device with driver data.

use bindings::misc::ControlDevice;
use kernel::prelude::*;

mod actlog;
mod bindings;
mod conn;
mod control;
mod detach;
mod events;
mod device;
mod heartbeat;
mod md;
#[allow(dead_code, unreachable_pub, unused_attributes, missing_docs)]
#[path = "../core/src/lib.rs"]
mod rcore;
mod outage;
mod peer_io;
mod receiver;
mod resync;
// The core refers to its own modules as `crate::...`; make those paths resolve here too.
#[allow(unused_imports)]
use rcore::{abi, al, bitmap, crc, meta, state, table, wire};
mod request;
mod sender;
mod sysfs;
mod transport;
mod uuids;

module! {
    type: Rmirror,
    name: "rmirror",
    authors: ["rmirror developers"],
    description: "rmirror: block device replication over TCP",
    license: "GPL",
}

/// Version of this driver (reported by the VERSION ioctl).
pub(crate) const VERSION: &str = "0.1.0";

/// The module: owns the control device, whose data is the registry of devices. Fields drop in
/// order: the control device (deregistered, registry empty by then), then the fault points.
#[pin_data(PinnedDrop)]
struct Rmirror {
    #[pin]
    control: ControlDevice<control::Control>,
    _faults: FaultPoints,
}

/// The module's fault-injection points, removed when dropped.
struct FaultPoints;

impl FaultPoints {
    fn new() -> Self {
        bindings::thread::fault_init();
        FaultPoints
    }
}

impl Drop for FaultPoints {
    fn drop(&mut self) {
        bindings::thread::fault_exit();
    }
}

impl kernel::InPlaceModule for Rmirror {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        pr_info!("loaded (wire protocol v{})\n", rcore::wire::VERSION);
        try_pin_init!(Self {
            _faults: FaultPoints::new(),
            control <- ControlDevice::register(c"rmirror-control", control::Control::new()),
        })
    }
}

#[pinned_drop]
impl PinnedDrop for Rmirror {
    fn drop(self: Pin<&mut Self>) {
        // No device can be open here: every open holds a module reference.
        self.control.data().remove_all();
        pr_info!("unloaded\n");
    }
}
