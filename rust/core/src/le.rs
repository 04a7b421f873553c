// SPDX-License-Identifier: GPL-2.0
//! Little-endian fields of fixed-layout on-disk blocks (superblock, activity-log slots).
//!
//! Callers index with compile-time offsets inside 4 KiB blocks; should one ever fall outside the
//! buffer, a put does nothing and a get reads zero, which the block's checksum then rejects. No
//! panics either way.

fn get<const N: usize>(buf: &[u8], off: usize) -> [u8; N] {
    let mut b = [0u8; N];
    if let Some(s) = off.checked_add(N).and_then(|end| buf.get(off..end)) {
        b.copy_from_slice(s);
    }
    b
}

fn put<const N: usize>(buf: &mut [u8], off: usize, v: [u8; N]) {
    if let Some(d) = off.checked_add(N).and_then(|end| buf.get_mut(off..end)) {
        d.copy_from_slice(&v);
    }
}

/// Reads a `u16` at `off`.
pub(crate) fn get_u16(buf: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(get(buf, off))
}

/// Reads a `u32` at `off`.
pub(crate) fn get_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(get(buf, off))
}

/// Reads a `u64` at `off`.
pub(crate) fn get_u64(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(get(buf, off))
}

/// Writes a `u16` at `off`.
pub(crate) fn put_u16(buf: &mut [u8], off: usize, v: u16) {
    put(buf, off, v.to_le_bytes());
}

/// Writes a `u32` at `off`.
pub(crate) fn put_u32(buf: &mut [u8], off: usize, v: u32) {
    put(buf, off, v.to_le_bytes());
}

/// Writes a `u64` at `off`.
pub(crate) fn put_u64(buf: &mut [u8], off: usize, v: u64) {
    put(buf, off, v.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_out_of_range() {
        let mut b = [0u8; 16];
        put_u16(&mut b, 0, 0xBEEF);
        put_u32(&mut b, 2, 0x1234_5678);
        put_u64(&mut b, 8, u64::MAX - 1);
        assert_eq!(b[..2], [0xEF, 0xBE]);
        assert_eq!((get_u16(&b, 0), get_u32(&b, 2), get_u64(&b, 8)), (0xBEEF, 0x1234_5678, u64::MAX - 1));
        put_u64(&mut b, 12, 7); // does not fit: nothing written
        put_u32(&mut b, usize::MAX, 7);
        assert_eq!(get_u64(&b, 8), u64::MAX - 1);
        assert_eq!((get_u32(&b, 14), get_u64(&b, usize::MAX)), (0, 0));
    }
}
