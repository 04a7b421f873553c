// SPDX-License-Identifier: GPL-2.0
//! Runs the `meta_parse` fuzz target's body over seeds, so `cargo test` exercises it without
//! libFuzzer: valid superblocks, AL ring slots and RLE chunks, their truncations and byte
//! mutations, and any files in fuzz/corpus/meta_parse/ (left by `cargo fuzz run`).

#[path = "../fuzz/bodies/meta_parse.rs"]
mod body;
mod fuzz_common;

use rmirror_core::al::{self, Activation, Log, Slot};
use rmirror_core::bitmap::Bitmap;
use rmirror_core::meta::{self, Layout, Superblock, Uuids};

fn superblocks() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    let layouts = [
        Layout::internal(1 << 30, 12, 8).unwrap(),
        Layout::internal((1 << 21) + 13, 16, 32).unwrap(),
        Layout::external(1 << 20, 1 << 32, 20, 8).unwrap(),
    ];
    for (i, l) in layouts.into_iter().enumerate() {
        let mut sb = Superblock::new(l, 0xabcd_0000 + i as u64, i as u32).unwrap();
        sb.flags |= meta::MDF_CONSISTENT | meta::MDF_CRASHED_PRIMARY;
        sb.uuids = Uuids {
            current: 7,
            bitmap: 9,
            history: [11, 13],
        };
        let mut buf = [0u8; 4096];
        sb.encode(&mut buf).unwrap();
        v.push(buf.to_vec());
    }
    v
}

fn al_slots() -> Vec<Vec<u8>> {
    let cfg = al::Config::new(0x55);
    let mut log = Log::new(cfg, vec![Slot::EMPTY; cfg.nr_extents as usize], 0).unwrap();
    let mut v = Vec::new();
    for e in 0..3u64 {
        assert_eq!(log.begin_write(e * 8192 * 3, 8), Ok(Activation::Wait));
        let mut buf = [0u8; 4096];
        let tr = log.encode_transaction(&mut buf).unwrap();
        log.commit(tr).unwrap();
        v.push(buf.to_vec());
    }
    // Two slots back to back: a ring.
    v.push([v[0].clone(), v[1].clone()].concat());
    v
}

fn rle_chunks() -> Vec<Vec<u8>> {
    let sectors = 8 * 3000;
    let words = Bitmap::<Vec<u64>>::storage_words(sectors, 12).unwrap();
    let mut bm = Bitmap::new(vec![0u64; words], sectors, 12).unwrap();
    bm.set_bits(3, 5).unwrap();
    bm.set_bits(40, 200).unwrap();
    bm.set_bits(0, 1).unwrap();
    let mut v = Vec::new();
    for (from, bits) in [(0, 1), (0, 12), (1, 100), (3, 600), (5, 2000)] {
        let mut out = [0u8; 64];
        let c = bm.rle_encode(from, bits, &mut out).unwrap();
        v.push(out[..c.len].to_vec());
    }
    v.push(vec![0xff; 4096]);
    v
}

/// Inputs as the fuzz target sees them: selector byte, then the bytes.
fn inputs() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for seed in superblocks()
        .into_iter()
        .chain(al_slots())
        .chain(rle_chunks())
    {
        for sel in [0u8, 1, 2, 3, 17, 200, 255] {
            let mut x = vec![sel];
            x.extend_from_slice(&seed);
            v.push(x);
        }
    }
    v
}

#[test]
fn body_over_seeds_and_truncations() {
    for input in inputs() {
        body::run(&input);
        for cut in [0, 1, 2, 5, 9, 17, 100, 200, 4000] {
            if cut < input.len() {
                body::run(&input[..cut]);
            }
        }
    }
}

#[test]
fn body_over_byte_mutations() {
    for input in inputs().into_iter().step_by(3) {
        for pos in (1..input.len().min(0x300)).step_by(3) {
            for mask in [0x01u8, 0x80, 0xff] {
                let mut m = input.clone();
                m[pos] ^= mask;
                body::run(&m);
            }
        }
    }
}

#[test]
fn body_over_corpus_files() {
    fuzz_common::replay_corpus("meta_parse", body::run);
}

/// Writes the seeds as a corpus for `cargo fuzz run meta_parse`:
/// `cargo test -p rmirror-core --test fuzz_meta_parse -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    fuzz_common::write_seeds("meta_parse", &inputs());
}
