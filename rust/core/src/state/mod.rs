// SPDX-License-Identifier: GPL-2.0
//! Pure, sans-IO state machines: time and events come in as arguments, actions go out.
//!
//! Nothing here reads a clock, sleeps, allocates or does I/O; the driver (and the host
//! simulator in `tests/sim.rs`) feed events and carry out the returned actions.
//! See `Documentation/state-machines.rst`.
//!
//! - [`conn`]: connection with two-way heartbeats, outage and probation.
//! - [`outage`]: in-order queue of writes kept during a short outage.
//! - [`protocol`]: per-request completion under protocols A, B and C.
//! - [`peer`]: the secondary's writes in flight: which may start now, what must drain first.
//! - [`tlog`]: transfer log of protocols A and B (writes completed, not yet durable).
//! - [`resync`]: sync direction from generation UUIDs; resync rate control.
//! - [`cp`]: consistency points and their block-in-use maps.
//! - [`device`]: roles and disk states, with validators of requested transitions.

pub mod conn;
pub mod cp;
pub mod device;
pub mod outage;
pub mod peer;
pub mod protocol;
pub mod resync;
pub mod tlog;
