// SPDX-License-Identifier: GPL-2.0
//! libFuzzer target: arbitrary bytes through every wire decoder (body in bodies/wire_decode.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../bodies/wire_decode.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
