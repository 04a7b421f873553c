// SPDX-License-Identifier: GPL-2.0
//! Runs the `wire_decode` fuzz target's body over a small corpus, so `cargo test` exercises
//! it without libFuzzer: sample frames, all their truncations, byte mutations, and any
//! files in fuzz/corpus/wire_decode/ (left by `cargo fuzz run`).

#[path = "../fuzz/bodies/wire_decode.rs"]
mod body;
mod fuzz_common;
mod wire_samples;


/// Inputs as the fuzz target sees them: selector byte, then the bytes.
fn inputs() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for frame in wire_samples::frames() {
        for sel in 0..4u8 {
            let mut x = vec![sel];
            x.extend_from_slice(&frame);
            v.push(x);
        }
    }
    v
}

#[test]
fn body_over_samples_and_truncations() {
    for input in inputs() {
        body::run(&input);
        for cut in 0..input.len().min(200) {
            body::run(&input[..cut]);
        }
        // Two frames back to back, and a frame followed by garbage.
        let mut two = input.clone();
        two.extend_from_slice(&input[1..]);
        body::run(&two);
        let mut junk = input.clone();
        junk.extend_from_slice(&[0xff; 20]);
        body::run(&junk);
    }
}

#[test]
fn body_over_byte_mutations() {
    for input in inputs().into_iter().step_by(2) {
        for pos in 1..input.len().min(1 + rmirror_core::wire::MAX_HEADER_LEN) {
            for mask in [0x01u8, 0x02, 0x10, 0x80, 0xff] {
                let mut m = input.clone();
                m[pos] ^= mask;
                body::run(&m);
            }
        }
    }
}

#[test]
fn body_over_corpus_files() {
    fuzz_common::replay_corpus("wire_decode", body::run);
}

/// Writes the sample inputs as a seed corpus for `cargo fuzz run wire_decode`:
/// `cargo test -p rmirror-core --test fuzz_wire_decode -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    fuzz_common::write_seeds("wire_decode", &inputs());
}
