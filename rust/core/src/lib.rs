// SPDX-License-Identifier: GPL-2.0
//! rmirror's shared core: all replication logic that needs no kernel, as pure `no_std` code.
//!
//! The same source is a crate on the host (`cargo test`) and a module inside `rmirror.ko`
//! (`#[path = "../core/src/lib.rs"] mod rcore;`), the way pin-init lives in both places.
//! Rules for everything below: no `unsafe`, no allocation, no floating point, no `u128`
//! arithmetic, no panics on input from outside (overflow checks are on in the kernel).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

pub mod abi;
pub mod al;
pub mod bitmap;
pub mod crc;
mod le;
pub mod meta;
pub mod state;
pub mod table;
pub mod wire;
