// SPDX-License-Identifier: GPL-2.0
//! CRC32C (Castagnoli), with lookup tables computed at compile time by a `const fn`.
//!
//! Polynomial 0x1EDC6F41, used bit-reflected (0x82F63B78), initial value and final XOR
//! `0xFFFF_FFFF`: the same CRC as iSCSI, ext4/btrfs metadata and the kernel's `crc32c()`
//! users after their usual pre/post inversion. The check value of `"123456789"` is
//! `0xE306_9283`.
//!
//! [`crc32c`] takes a *finished* CRC as its seed (the zlib convention), so it chains:
//! `crc32c(crc32c(0, a), b) == crc32c(0, a ++ b)`, and a fresh computation starts from
//! seed `0`. Use [`crc32c`] with seed `0` unless you are continuing a previous result.
//!
//! The implementation is "slicing by 8" (8 KiB of tables in `.rodata`), plain safe
//! indexing with indices that are always `< 256` by construction, no `unsafe`, no
//! allocation, no panics.

/// The reflected CRC32C polynomial (0x1EDC6F41 bit-reversed).
pub const POLY: u32 = 0x82F6_3B78;

/// Number of slicing tables (bytes consumed per inner-loop step).
const SLICES: usize = 8;

/// Builds the slicing-by-8 tables at compile time.
///
/// `t[0]` is the classic byte-at-a-time table; `t[k][i]` is the CRC contribution of byte
/// `i` followed by `k` zero bytes.
const fn make_tables() -> [[u32; 256]; SLICES] {
    let mut t = [[0u32; 256]; SLICES];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            bit += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut k = 1;
    while k < SLICES {
        let mut i = 0;
        while i < 256 {
            let prev = t[k - 1][i];
            t[k][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        k += 1;
    }
    t
}

/// The lookup tables, evaluated by the compiler (no run-time initialisation).
static TABLES: [[u32; 256]; SLICES] = make_tables();

// The byte-wise table must match the well-known first entries of the CRC32C table.
const _: () = assert!(make_tables()[0][1] == 0xF26B_8303);
const _: () = assert!(make_tables()[0][255] == 0xAD7D_5351);

/// Index into a 256-entry table by the low byte of `x` (always in bounds).
#[inline(always)]
fn lo(x: u32) -> usize {
    (x & 0xff) as usize
}

/// Updates a *raw* (not inverted) CRC register with `data`.
///
/// This is the kernel's `crc32c_le()` convention: no pre/post inversion. Most callers want
/// [`crc32c`] instead.
pub fn update_raw(mut crc: u32, data: &[u8]) -> u32 {
    let t = &TABLES;
    let mut chunks = data.chunks_exact(SLICES);
    for c in &mut chunks {
        let a = crc ^ u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        let b = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        crc = t[7][lo(a)]
            ^ t[6][lo(a >> 8)]
            ^ t[5][lo(a >> 16)]
            ^ t[4][lo(a >> 24)]
            ^ t[3][lo(b)]
            ^ t[2][lo(b >> 8)]
            ^ t[1][lo(b >> 16)]
            ^ t[0][lo(b >> 24)];
    }
    for &byte in chunks.remainder() {
        crc = (crc >> 8) ^ t[0][lo(crc ^ u32::from(byte))];
    }
    crc
}

/// CRC32C of `data`, continuing from the finished CRC `seed` (use `0` to start).
///
/// `crc32c(0, b"123456789") == 0xE306_9283`, and
/// `crc32c(crc32c(0, a), b) == crc32c(0, [a, b].concat())`.
pub fn crc32c(seed: u32, data: &[u8]) -> u32 {
    !update_raw(!seed, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit-at-a-time reference implementation.
    fn reference(seed: u32, data: &[u8]) -> u32 {
        let mut c = !seed;
        for &b in data {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
            }
        }
        !c
    }

    #[test]
    fn check_value() {
        assert_eq!(crc32c(0, b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(0, b""), 0);
    }

    #[test]
    fn rfc3720_vectors() {
        // iSCSI (RFC 3720, B.4) test vectors.
        assert_eq!(crc32c(0, &[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(0, &[0xffu8; 32]), 0x62A8_AB43);
        let inc: Vec<u8> = (0u8..32).collect();
        assert_eq!(crc32c(0, &inc), 0x46DD_794E);
        let dec: Vec<u8> = (0u8..32).rev().collect();
        assert_eq!(crc32c(0, &dec), 0x113F_DB5C);
    }

    #[test]
    fn matches_reference_and_chains() {
        let data: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            let d = &data[..len];
            assert_eq!(crc32c(0, d), reference(0, d), "len {len}");
            let split = len / 3;
            assert_eq!(crc32c(crc32c(0, &d[..split]), &d[split..]), crc32c(0, d));
        }
        assert_eq!(crc32c(0x1234_5678, &data), reference(0x1234_5678, &data));
    }
}
