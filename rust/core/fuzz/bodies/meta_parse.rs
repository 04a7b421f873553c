// SPDX-License-Identifier: GPL-2.0
//! Body of the `meta_parse` fuzz target, shared by libFuzzer and the host test
//! `tests/fuzz_meta_parse.rs`: arbitrary bytes as a superblock, AL ring slots, a bitmap page,
//! an RLE bitmap chunk and layout parameters must never panic, and whatever parses must
//! re-encode consistently.

use rmirror_core::al;
use rmirror_core::bitmap::{self, Bitmap};
use rmirror_core::crc::crc32c;
use rmirror_core::meta::{self, Layout, Superblock};
use rmirror_core::wire::RleApply;

/// Byte offset of the superblock's crc32c field (Documentation/ondisk-format.rst).
const SB_CRC: usize = 0x008;
/// Byte offset of an AL slot's crc32c field.
const AL_CRC: usize = 0x004;

/// Copies `input` into a zero-padded 4 KiB block.
fn block(input: &[u8]) -> [u8; 4096] {
    let mut b = [0u8; 4096];
    let n = input.len().min(4096);
    b[..n].copy_from_slice(&input[..n]);
    b
}

/// Stores a valid crc32c at `off` (so the fuzzer gets past the checksum).
fn reseal(b: &mut [u8; 4096], off: usize) {
    b[off..off + 4].fill(0);
    let crc = crc32c(0, b);
    b[off..off + 4].copy_from_slice(&crc.to_le_bytes());
}

fn u64_at(input: &[u8], i: usize) -> u64 {
    let mut b = [0u8; 8];
    for (k, x) in b.iter_mut().enumerate() {
        *x = input.get(i * 8 + k).copied().unwrap_or(0);
    }
    u64::from_le_bytes(b)
}

/// Runs every metadata parser on `data` (first byte: selector, rest: input).
pub fn run(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    check_superblock(input, sel & 1 != 0);
    check_al_ring(input, sel & 2 != 0);
    check_bitmap(input, sel);
    check_layouts(input);
}

/// The input as a superblock: decode, and re-encode what decodes.
pub fn check_superblock(input: &[u8], fix_crc: bool) {
    let mut b = block(input);
    if fix_crc {
        b[0..4].copy_from_slice(&meta::MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&meta::VERSION.to_le_bytes());
        reseal(&mut b, SB_CRC);
    }
    let Ok(sb) = Superblock::decode(&b) else {
        return;
    };
    assert!(sb.layout.validate().is_ok());
    assert!(sb.al_config().validate().is_ok());
    let mut again = [0u8; 4096];
    sb.encode(&mut again).expect("a decoded superblock encodes");
    assert_eq!(Superblock::decode(&again), Ok(sb));
    let (start, len) = sb.layout.md_area();
    let _ = sb
        .layout
        .check_devices(start.saturating_add(len), start.saturating_add(len));
    let _ = sb.layout.al_slot_sector(u32::MAX);
    let _ = sb.layout.bm_page_sector(usize::MAX);
}

/// The input as AL ring slots (4 KiB each, last one padded): recovery never panics.
pub fn check_al_ring(input: &[u8], fix_crc: bool) {
    let mut ring: Vec<[u8; 4096]> = input.chunks(4096).map(block).collect();
    if ring.is_empty() {
        ring.push([0u8; 4096]);
    }
    let uuid = u64_at(input, 2); // the slot's own uuid field (offset 0x10)
    if fix_crc {
        for slot in &mut ring {
            slot[0..4].copy_from_slice(&al::MAGIC.to_le_bytes());
            reseal(slot, AL_CRC);
        }
    }
    let shift = u32::from(ring[0][0x1e]);
    let mut state = vec![al::Slot::EMPTY; 64];
    let rec = al::recover(uuid, shift, ring.iter(), &mut state);
    assert!(rec.valid as usize + rec.torn as usize <= ring.len());
    for e in rec.extents() {
        let _ = rec.extent_to_sectors(e);
    }
}

/// The input as a bitmap page and as an RLE chunk.
pub fn check_bitmap(input: &[u8], sel: u8) {
    // 1..=4 pages, ending anywhere inside the last one.
    let bits = 1 + u64::from(sel) * 397;
    let sectors = bits * 8;
    let words = Bitmap::<Vec<u64>>::storage_words(sectors, 12).expect("small bitmap");
    let mut bm = Bitmap::new(vec![0u64; words], sectors, 12).expect("small bitmap");
    let page = block(input);
    let last = bm.nr_pages() - 1;
    let w = bm.load_page(last, &page).expect("page in range");
    assert!(w <= bm.nr_bits() && bm.weight() == w);
    let mut out = [0u8; bitmap::PAGE_SIZE];
    bm.encode_page(last, &mut out).expect("page in range");
    assert_eq!(bm.load_page(last, &out), Ok(w));

    // RLE chunk: Copy mode on success must reproduce the (canonical) input exactly.
    let from = u64::from(sel) % 7;
    let nbits = (bits.saturating_sub(from)).min(u64::from(sel) * 11 + 1) as u32;
    let before = bm.weight();
    match bm.rle_decode(from, nbits, input, RleApply::Copy) {
        Ok(dirty) => {
            assert!(dirty <= u64::from(nbits));
            let mut enc = vec![0u8; input.len() + 20];
            let chunk = bm
                .rle_encode(from, nbits, &mut enc)
                .expect("room for the encoding");
            assert_eq!(chunk.bits, nbits);
            assert_eq!(&enc[..chunk.len], input);
        }
        Err(_) => assert_eq!(bm.weight(), before),
    }
}

/// Layout calculators with sizes taken from the input.
pub fn check_layouts(input: &[u8]) {
    let a = u64_at(input, 0);
    let b = u64_at(input, 1);
    let shift = 12 + (a as u32 % 9);
    let slots = (b >> 54) as u32; // 0..1023
    for dev in [a, a >> 20, a >> 40] {
        if let Ok(l) = Layout::internal(dev, shift, slots) {
            assert!(l.validate().is_ok());
            assert_eq!(l.check_devices(dev, dev), Ok(()));
        }
        if let Ok(l) = Layout::external(dev, b >> 24, shift, slots) {
            assert!(l.validate().is_ok());
            assert_eq!(l.check_devices(b >> 24, dev), Ok(()));
        }
    }
}
