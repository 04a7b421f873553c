// SPDX-License-Identifier: GPL-2.0
//! rmirror: a bio-based block device that mirrors every write to a peer node (crate root).
//!
//! Table of contents, following a write from the top:
//! - [`control`]: `/dev/rmirror-control` ioctls (create, remove, status, list) and the registry;
//! - [`device`]: one replicated device: configuration, connection state, teardown;
//! - [`request`]: the request path: reads remapped, writes cloned locally and queued for the peer,
//!   completion decided by the core's protocol state machine;
//! - [`sender`] / [`receiver`]: the threads that talk to the peer (primary: send writes, collect
//!   acks; secondary: apply writes, acknowledge once durable);
//! - [`transport`]: the message transport behind a small trait (TCP now, RDMA later);
//! - [`sysfs`]: `/sys/block/rmirrorN/rmirror/` attributes;
//! - [`rcore`]: the shared `no_std` core (wire format, logs, bitmap, state machines), the same
//!   source the host tests run;
//! - [`bindings`]: the only module with `unsafe`: bio-based disk, bios, block devices, sockets,
//!   threads.

use kernel::prelude::*;

mod bindings;
mod control;
mod device;
#[allow(dead_code, unreachable_pub, unused_attributes, missing_docs)]
#[path = "../core/src/lib.rs"]
mod rcore;
mod receiver;
// The core refers to its own modules as `crate::...`; make those paths resolve here too.
#[allow(unused_imports)]
use rcore::{abi, al, bitmap, crc, meta, state, table, wire};
mod request;
mod sender;
mod sysfs;
mod transport;

module! {
    type: Rmirror,
    name: "rmirror",
    authors: ["rmirror developers"],
    description: "rmirror: block device replication over TCP",
    license: "GPL",
}

/// Version of this driver (reported by the VERSION ioctl).
pub(crate) const VERSION: &str = "0.1.0";

/// The module: owns the control device; devices live in the control registry.
#[pin_data(PinnedDrop)]
struct Rmirror {
    #[pin]
    control: control::Registration,
}

impl kernel::InPlaceModule for Rmirror {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        control::init_registry();
        pr_info!("loaded (wire protocol v{})\n", rcore::wire::VERSION);
        try_pin_init!(Self { control <- control::register() })
    }
}

#[pinned_drop]
impl PinnedDrop for Rmirror {
    fn drop(self: Pin<&mut Self>) {
        // No device can be open here: every open holds a module reference.
        control::remove_all();
        pr_info!("unloaded\n");
    }
}
