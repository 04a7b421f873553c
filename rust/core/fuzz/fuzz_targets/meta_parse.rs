// SPDX-License-Identifier: GPL-2.0
//! libFuzzer target: arbitrary bytes through the metadata parsers (body in bodies/meta_parse.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../bodies/meta_parse.rs"]
mod body;

fuzz_target!(|data: &[u8]| body::run(data));
