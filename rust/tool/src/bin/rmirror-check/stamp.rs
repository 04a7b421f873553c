// SPDX-License-Identifier: GPL-2.0
//! The stamp every block written by `rmirror-check write` carries, and CRC32C.
//!
//! A stamped block of `bs` bytes (all integers little endian):
//!
//! ```text
//!   0..8      magic "RMCHECK1"
//!   8..16     run id
//!  16..24     block index (absolute byte offset / bs)
//!  24..32     seq (the run's global write counter, from 1)
//!  32..bs-4   pseudo-random fill, a function of (run, block, seq)
//!  bs-4..bs   CRC32C of bytes 0..bs-4
//! ```
//!
//! The fill makes every version of a block distinct and reproducible: a test can rebuild any
//! version from the log with [`write`].

/// The first 8 bytes of a stamped block.
pub const MAGIC: [u8; 8] = *b"RMCHECK1";

/// Bytes of the header (magic, run, block, seq).
pub const HEADER: usize = 32;

/// Bytes of the CRC at the end of the block.
pub const CRC: usize = 4;

/// The identity of one version of one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The writer run (`--seed`, or random); written to the log's `R` line.
    pub run: u64,
    /// Block index: absolute byte offset / block size.
    pub block: u64,
    /// The run's write counter.
    pub seq: u64,
}

/// A stamp header found in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// The header as read (its fields may be wrong when `crc_ok` is false).
    pub stamp: Stamp,
    /// Whether the CRC at the end of the block matches the rest of it.
    pub crc_ok: bool,
}

/// Fills `buf` (one whole block, at least `HEADER + CRC` bytes) with the version `stamp`.
/// A shorter buffer is left as it is; block sizes are validated when the arguments are parsed.
pub fn write(buf: &mut [u8], stamp: Stamp) {
    if buf.len() < HEADER + CRC {
        return;
    }
    let end = buf.len() - CRC;
    buf[0..8].copy_from_slice(&MAGIC);
    buf[8..16].copy_from_slice(&stamp.run.to_le_bytes());
    buf[16..24].copy_from_slice(&stamp.block.to_le_bytes());
    buf[24..32].copy_from_slice(&stamp.seq.to_le_bytes());
    fill(&mut buf[HEADER..end], stamp);
    let crc = crc32c(&buf[..end]);
    buf[end..].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the stamp of one whole block: `None` when it does not start with [`MAGIC`].
pub fn read(buf: &[u8]) -> Option<Found> {
    if buf.len() < HEADER + CRC || buf[0..8] != MAGIC {
        return None;
    }
    let end = buf.len() - CRC;
    let stamp = Stamp {
        run: le64(buf, 8),
        block: le64(buf, 16),
        seq: le64(buf, 24),
    };
    let mut crc = [0u8; CRC];
    crc.copy_from_slice(&buf[end..]);
    Some(Found {
        stamp,
        crc_ok: u32::from_le_bytes(crc) == crc32c(&buf[..end]),
    })
}

/// The little-endian u64 at `at` (the caller checked `at + 8 <= buf.len()`).
fn le64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(b)
}

/// The splitmix64 output function: a bijective 64-bit mixer.
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The splitmix64 increment.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The fill of version `stamp`: a splitmix64 stream seeded from (run, block, seq).
fn fill(out: &mut [u8], stamp: Stamp) {
    let mut state = mix(mix(mix(stamp.run) ^ stamp.block) ^ stamp.seq);
    for chunk in out.chunks_mut(8) {
        state = state.wrapping_add(GOLDEN);
        let word = mix(state).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// CRC32C (Castagnoli) of `data`: the core's implementation (`rmirror_core::crc`), the same
/// the driver uses.
pub fn crc32c(data: &[u8]) -> u32 {
    rmirror_core::crc::crc32c(0, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Stamp = Stamp {
        run: 0x1234,
        block: 77,
        seq: 9,
    };

    #[test]
    fn crc32c_check_values() {
        // The standard check value (RFC 3720 B.4 / the CRC catalogue) and iSCSI's 32 zero bytes.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(&[0u8; 32]), 0x8A91_36AA);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62A8_AB43);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn round_trip() {
        for bs in [512usize, 4096, 65536] {
            let mut buf = vec![0u8; bs];
            write(&mut buf, S);
            assert_eq!(&buf[..8], b"RMCHECK1");
            assert_eq!(
                read(&buf),
                Some(Found {
                    stamp: S,
                    crc_ok: true
                })
            );
        }
    }

    #[test]
    fn versions_differ_and_repeat() {
        let mut a = vec![0u8; 4096];
        let mut b = vec![0u8; 4096];
        write(&mut a, S);
        write(&mut b, S);
        assert_eq!(a, b);
        for other in [
            Stamp { seq: 10, ..S },
            Stamp { block: 78, ..S },
            Stamp { run: 0x1235, ..S },
        ] {
            write(&mut b, other);
            assert_ne!(a[HEADER..4092], b[HEADER..4092], "{other:?}");
        }
    }

    #[test]
    fn every_flipped_byte_is_noticed() {
        let mut buf = vec![0u8; 512];
        write(&mut buf, S);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            match read(&bad) {
                None => assert!(i < 8, "byte {i}"),
                Some(f) => assert!(!f.crc_ok, "byte {i}"),
            }
        }
    }

    #[test]
    fn not_stamped() {
        assert_eq!(read(&[0u8; 4096]), None);
        assert_eq!(read(b"RMCHECK1"), None);
        let mut short = [0u8; 20];
        write(&mut short, S);
        assert_eq!(short, [0u8; 20]);
    }
}
