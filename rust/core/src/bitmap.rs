// SPDX-License-Identifier: GPL-2.0
//! Fracture bitmap: one bit per region marks data that may differ from the peer (out of sync).
//!
//! The bitmap lives in caller-provided `u64` words (the kernel driver allocates them, this code
//! never allocates). Bit `r` stands for region `r`, i.e. sectors
//! `[r << (region_shift - 9), (r + 1) << (region_shift - 9))` of the data area; the last region
//! may be partial. The layout of the words is also the on-disk layout (see
//! `Documentation/ondisk-format.rst`): word `w` holds regions `64 * w ..= 64 * w + 63`, least
//! significant bit first, stored little-endian, 512 words per 4 KiB page.
//!
//! Besides the bits, the storage holds one "needs writeout" bit per 4 KiB bitmap page: every
//! change marks its page, [`Bitmap::encode_page`] takes a snapshot and clears the mark, so the
//! driver writes only the pages that changed.
//!
//! The storage is split as follows (all in one slice of [`Bitmap::storage_words`] words):
//!
//! ```text
//!   [ bit words: nr_words = ceil(nr_bits / 64) | page-dirty words: ceil(nr_pages / 64) ]
//! ```
//!
//! Region states follow dm-dirty-log's vocabulary: a set bit is "out of sync" (must be copied to
//! the peer by resync), a clear bit is "in sync". Setting rounds outwards (a partial write dirties
//! the whole region), clearing after resync rounds inwards (only fully copied regions are clean),
//! as in DRBD's `drbd_set_out_of_sync()` / `drbd_set_in_sync()`.

use core::ops::{Deref, DerefMut};

use super::wire::{self, RleApply, RleChunk};

/// Bytes in one on-disk bitmap page.
pub const PAGE_SIZE: usize = 4096;
/// Bitmap words (`u64`) in one on-disk page.
pub const WORDS_PER_PAGE: usize = PAGE_SIZE / 8;
/// Regions (bits) in one on-disk page.
pub const BITS_PER_PAGE: u64 = (PAGE_SIZE as u64) * 8;
/// Smallest region size: 4 KiB (log2 in bytes).
pub const MIN_REGION_SHIFT: u32 = 12;
/// Largest region size: 1 MiB (log2 in bytes).
pub const MAX_REGION_SHIFT: u32 = 20;
/// Default region size: 4 KiB, like DRBD (log2 in bytes).
pub const DEFAULT_REGION_SHIFT: u32 = 12;
/// log2 of the 512-byte sector all block offsets are counted in.
pub const SECTOR_SHIFT: u32 = 9;

const _: () = assert!(WORDS_PER_PAGE == 512);
const _: () = assert!(BITS_PER_PAGE == 32768);

/// Errors of the bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// Region size is not a power of two between 4 KiB and 1 MiB.
    InvalidRegionSize,
    /// The data area is empty or needs more words than the address space holds.
    InvalidDeviceSize,
    /// The caller-provided storage is shorter than [`Bitmap::storage_words`].
    StorageTooSmall,
    /// A sector or region range reaches beyond the end of the data area.
    OutOfRange,
    /// A page index is not below [`Bitmap::nr_pages`].
    PageOutOfRange,
    /// An RLE chunk is malformed (`wire::rle_check` rejected it).
    RleInvalid,
    /// The RLE output buffer cannot hold a single run (use `wire::RLE_MIN_OUT` bytes).
    RleBufferTooSmall,
}

impl Error {
    /// Human-readable description, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::InvalidRegionSize => "region size must be a power of two from 4 KiB to 1 MiB",
            Error::InvalidDeviceSize => "data area size is zero or too large for the bitmap",
            Error::StorageTooSmall => "bitmap storage is smaller than storage_words()",
            Error::OutOfRange => "range reaches beyond the end of the bitmap",
            Error::PageOutOfRange => "bitmap page index out of range",
            Error::RleInvalid => "malformed RLE bitmap chunk",
            Error::RleBufferTooSmall => "RLE output buffer too small",
        }
    }
}

/// A run of consecutive regions: `start .. start + len` (in region numbers, i.e. bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First region of the run.
    pub start: u64,
    /// Number of regions in the run (never 0 when returned by the bitmap).
    pub len: u64,
}

impl Range {
    /// One past the last region of the run.
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
    }
}

/// Number of regions (bits) needed for `device_sectors` sectors of data, `None` on a bad
/// region size.
pub fn nr_regions(device_sectors: u64, region_shift: u32) -> Option<u64> {
    if !(MIN_REGION_SHIFT..=MAX_REGION_SHIFT).contains(&region_shift) {
        return None;
    }
    let shift = region_shift - SECTOR_SHIFT;
    let mask = (1u64 << shift) - 1;
    Some((device_sectors >> shift) + u64::from(device_sectors & mask != 0))
}

/// Number of 4 KiB pages the bitmap of `nr_bits` regions occupies on disk.
pub fn nr_pages_for(nr_bits: u64) -> u64 {
    nr_bits.div_ceil(BITS_PER_PAGE)
}

/// The fracture bitmap over caller-provided storage `S` (a `&mut [u64]`, `KVec<u64>`, ...).
///
/// # Invariants
///
/// - `store.len() >= nr_words + page_words`, `nr_words == ceil(nr_bits / 64)`.
/// - Bits at and above `nr_bits` in the last word are zero.
/// - `weight` equals the number of set bits.
pub struct Bitmap<S> {
    store: S,
    nr_bits: u64,
    nr_words: usize,
    nr_pages: usize,
    region_shift: u32,
    device_sectors: u64,
    weight: u64,
}

impl<S> Bitmap<S>
where
    S: Deref<Target = [u64]> + DerefMut,
{
    /// Words of storage [`Bitmap::new`] needs for a data area of `device_sectors` sectors.
    pub fn storage_words(device_sectors: u64, region_shift: u32) -> Result<usize, Error> {
        let nr_bits = nr_regions(device_sectors, region_shift).ok_or(Error::InvalidRegionSize)?;
        let (words, pages) = Self::sizes(nr_bits)?;
        words
            .checked_add(pages.div_ceil(64))
            .ok_or(Error::InvalidDeviceSize)
    }

    fn sizes(nr_bits: u64) -> Result<(usize, usize), Error> {
        if nr_bits == 0 {
            return Err(Error::InvalidDeviceSize);
        }
        let words = usize::try_from(nr_bits.div_ceil(64)).map_err(|_| Error::InvalidDeviceSize)?;
        let pages = usize::try_from(nr_pages_for(nr_bits)).map_err(|_| Error::InvalidDeviceSize)?;
        Ok((words, pages))
    }

    /// Creates an all-clean bitmap for `device_sectors` sectors with regions of
    /// `1 << region_shift` bytes over `store`, which is zeroed. No page is marked dirty.
    pub fn new(mut store: S, device_sectors: u64, region_shift: u32) -> Result<Self, Error> {
        let nr_bits = nr_regions(device_sectors, region_shift).ok_or(Error::InvalidRegionSize)?;
        let (nr_words, nr_pages) = Self::sizes(nr_bits)?;
        let need = nr_words
            .checked_add(nr_pages.div_ceil(64))
            .ok_or(Error::InvalidDeviceSize)?;
        let Some(used) = store.get_mut(..need) else {
            return Err(Error::StorageTooSmall);
        };
        used.fill(0);
        Ok(Bitmap {
            store,
            nr_bits,
            nr_words,
            nr_pages,
            region_shift,
            device_sectors,
            weight: 0,
        })
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> S {
        self.store
    }

    /// Number of regions (bits).
    pub fn nr_bits(&self) -> u64 {
        self.nr_bits
    }

    /// log2 of the region size in bytes.
    pub fn region_shift(&self) -> u32 {
        self.region_shift
    }

    /// Sectors per region.
    pub fn region_sectors(&self) -> u64 {
        1u64 << (self.region_shift - SECTOR_SHIFT)
    }

    /// Size of the data area the bitmap covers, in sectors.
    pub fn device_sectors(&self) -> u64 {
        self.device_sectors
    }

    /// Number of out-of-sync regions (set bits); kept incrementally, O(1).
    pub fn weight(&self) -> u64 {
        self.weight
    }

    /// Number of out-of-sync sectors, counting every set region as full (an upper bound).
    pub fn weight_sectors(&self) -> u64 {
        self.weight.saturating_mul(self.region_sectors())
    }

    /// Number of 4 KiB pages of the bitmap on disk.
    pub fn nr_pages(&self) -> usize {
        self.nr_pages
    }

    /// First sector of region `region`.
    pub fn region_to_sector(&self, region: u64) -> u64 {
        region.saturating_mul(self.region_sectors())
    }

    /// Sector range `[start, end)` of `run`, clipped to the data area.
    pub fn run_to_sectors(&self, run: Range) -> (u64, u64) {
        let start = self.region_to_sector(run.start).min(self.device_sectors);
        let end = self.region_to_sector(run.end()).min(self.device_sectors);
        (start, end)
    }

    fn sector_end(&self, sector: u64, sectors: u64) -> Result<u64, Error> {
        let end = sector.checked_add(sectors).ok_or(Error::OutOfRange)?;
        if end > self.device_sectors {
            return Err(Error::OutOfRange);
        }
        Ok(end)
    }

    /// Regions touched by sectors `[sector, sector + sectors)`, rounded outwards, as
    /// `[first, end)`.
    pub fn regions_touched(&self, sector: u64, sectors: u64) -> Result<(u64, u64), Error> {
        let end = self.sector_end(sector, sectors)?;
        if sectors == 0 {
            return Ok((0, 0));
        }
        let shift = self.region_shift - SECTOR_SHIFT;
        Ok((sector >> shift, ((end - 1) >> shift) + 1))
    }

    /// Regions fully covered by sectors `[sector, sector + sectors)`, rounded inwards, as
    /// `[first, end)`. The partial last region of the device counts as covered when the range
    /// reaches the end of the device.
    pub fn regions_covered(&self, sector: u64, sectors: u64) -> Result<(u64, u64), Error> {
        let end = self.sector_end(sector, sectors)?;
        let rs = self.region_sectors();
        let first = sector.div_ceil(rs);
        let last = if end == self.device_sectors {
            self.nr_bits
        } else {
            end / rs
        };
        if first >= last {
            return Ok((0, 0));
        }
        Ok((first, last))
    }

    /// Marks every region touched by sectors `[sector, sector + sectors)` out of sync
    /// (rounding outwards). Returns how many bits were newly set.
    pub fn set_range(&mut self, sector: u64, sectors: u64) -> Result<u64, Error> {
        let (first, end) = self.regions_touched(sector, sectors)?;
        Ok(self.update(first, end, true))
    }

    /// Marks the regions fully covered by sectors `[sector, sector + sectors)` in sync
    /// (rounding inwards): call it as resync completes a range. Returns how many bits were
    /// cleared.
    pub fn clear_range(&mut self, sector: u64, sectors: u64) -> Result<u64, Error> {
        let (first, end) = self.regions_covered(sector, sectors)?;
        Ok(self.update(first, end, false))
    }

    /// Sets regions `[first, first + count)`. Returns how many bits were newly set.
    pub fn set_bits(&mut self, first: u64, count: u64) -> Result<u64, Error> {
        let end = self.bit_end(first, count)?;
        Ok(self.update(first, end, true))
    }

    /// Clears regions `[first, first + count)`, e.g. once resync copied them. Returns how many
    /// bits were cleared.
    pub fn clear_bits(&mut self, first: u64, count: u64) -> Result<u64, Error> {
        let end = self.bit_end(first, count)?;
        Ok(self.update(first, end, false))
    }

    /// Marks the whole device out of sync (full sync). Returns how many bits were newly set.
    pub fn set_all(&mut self) -> u64 {
        self.update(0, self.nr_bits, true)
    }

    /// Marks the whole device in sync. Returns how many bits were cleared.
    pub fn clear_all(&mut self) -> u64 {
        self.update(0, self.nr_bits, false)
    }

    fn bit_end(&self, first: u64, count: u64) -> Result<u64, Error> {
        let end = first.checked_add(count).ok_or(Error::OutOfRange)?;
        if end > self.nr_bits {
            return Err(Error::OutOfRange);
        }
        Ok(end)
    }

    /// Sets or clears bits `[first, end)` (`end <= nr_bits` checked by callers), keeps the
    /// weight and marks changed pages dirty. Returns the number of bits that changed.
    fn update(&mut self, first: u64, end: u64, set: bool) -> u64 {
        let mut changed_total = 0u64;
        let mut bit = first;
        let (words, pages) = self.store.split_at_mut(self.nr_words);
        while bit < end {
            let w = (bit / 64) as usize;
            let lo = (bit % 64) as u32;
            let n = (end - bit).min(64 - u64::from(lo)) as u32;
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << lo
            };
            if let Some(word) = words.get_mut(w) {
                let old = *word;
                let new = if set { old | mask } else { old & !mask };
                let changed = u64::from((old ^ new).count_ones());
                if changed != 0 {
                    *word = new;
                    changed_total += changed;
                    mark_dirty(pages, w / WORDS_PER_PAGE);
                }
            }
            bit += u64::from(n);
        }
        if set {
            self.weight += changed_total;
        } else {
            self.weight -= changed_total;
        }
        changed_total
    }

    /// Whether region `region` is out of sync (false beyond the end).
    pub fn test(&self, region: u64) -> bool {
        if region >= self.nr_bits {
            return false;
        }
        self.store
            .get((region / 64) as usize)
            .is_some_and(|w| w & (1u64 << (region % 64)) != 0)
    }

    /// Whether any region touched by sectors `[sector, sector + sectors)` is out of sync.
    pub fn test_range(&self, sector: u64, sectors: u64) -> Result<bool, Error> {
        let (first, end) = self.regions_touched(sector, sectors)?;
        Ok(first < end && self.find_next(first, true).is_some_and(|b| b < end))
    }

    /// First region at or after `from` whose bit equals `value`.
    fn find_next(&self, from: u64, value: bool) -> Option<u64> {
        if from >= self.nr_bits {
            return None;
        }
        let words = self.store.get(..self.nr_words)?;
        let mut w = (from / 64) as usize;
        let flip = if value { 0 } else { u64::MAX };
        let mut cur = (words.get(w)? ^ flip) & (u64::MAX << (from % 64));
        loop {
            if cur != 0 {
                let bit = (w as u64) * 64 + u64::from(cur.trailing_zeros());
                return (bit < self.nr_bits).then_some(bit);
            }
            w += 1;
            cur = words.get(w)? ^ flip;
        }
    }

    /// First out-of-sync region at or after `from`.
    pub fn find_next_set(&self, from: u64) -> Option<u64> {
        self.find_next(from, true)
    }

    /// First in-sync region at or after `from`.
    pub fn find_next_clear(&self, from: u64) -> Option<u64> {
        self.find_next(from, false)
    }

    /// The first run of out-of-sync regions starting at or after `from`.
    pub fn next_dirty(&self, from: u64) -> Option<Range> {
        let start = self.find_next(from, true)?;
        let end = self.find_next(start, false).unwrap_or(self.nr_bits);
        Some(Range {
            start,
            len: end - start,
        })
    }

    /// Iterator over the runs of out-of-sync regions, in order, starting at region `from`.
    pub fn runs(&self, from: u64) -> Runs<'_, S> {
        Runs {
            bm: self,
            pos: from,
        }
    }

    // ---- page persistence ----

    /// Whether page `idx` changed since it was last encoded (or loaded-and-marked).
    pub fn is_page_dirty(&self, idx: usize) -> bool {
        idx < self.nr_pages
            && self
                .store
                .get(self.nr_words + idx / 64)
                .is_some_and(|w| w & (1u64 << (idx % 64)) != 0)
    }

    /// First page at or after `from` that needs writeout.
    pub fn next_dirty_page(&self, from: usize) -> Option<usize> {
        let pages = self.store.get(self.nr_words..)?;
        let mut idx = from;
        while idx < self.nr_pages {
            let word = pages.get(idx / 64)? & (u64::MAX << (idx % 64));
            if word != 0 {
                let found = (idx / 64) * 64 + word.trailing_zeros() as usize;
                return (found < self.nr_pages).then_some(found);
            }
            idx = (idx / 64 + 1) * 64;
        }
        None
    }

    /// Number of pages needing writeout.
    pub fn dirty_page_count(&self) -> usize {
        self.store
            .get(self.nr_words..)
            .map_or(0, |p| p.iter().map(|w| w.count_ones() as usize).sum())
    }

    /// Marks page `idx` for writeout (e.g. again after a failed write).
    pub fn mark_page_dirty(&mut self, idx: usize) -> Result<(), Error> {
        if idx >= self.nr_pages {
            return Err(Error::PageOutOfRange);
        }
        let (_, pages) = self.store.split_at_mut(self.nr_words);
        mark_dirty(pages, idx);
        Ok(())
    }

    /// Marks every page for writeout (e.g. after creating or resizing the metadata).
    pub fn mark_all_pages_dirty(&mut self) {
        for idx in 0..self.nr_pages {
            let (_, pages) = self.store.split_at_mut(self.nr_words);
            mark_dirty(pages, idx);
        }
    }

    /// Pages `[first, end)` that hold the bits of sectors `[sector, sector + sectors)`. The
    /// driver writes the dirty ones among them before an activity-log transaction evicts the
    /// extent covering those sectors (see `al`).
    pub fn pages_of(&self, sector: u64, sectors: u64) -> Result<core::ops::Range<usize>, Error> {
        let (first, end) = self.regions_touched(sector, sectors)?;
        if first >= end {
            return Ok(0..0);
        }
        let p0 = (first / BITS_PER_PAGE) as usize;
        let p1 = ((end - 1) / BITS_PER_PAGE) as usize + 1;
        Ok(p0..p1)
    }

    /// Writes page `idx` in on-disk format (little-endian words; bits beyond the end zero) into
    /// `buf` and clears its writeout mark: if the write fails, call
    /// [`Bitmap::mark_page_dirty`] again.
    pub fn encode_page(&mut self, idx: usize, buf: &mut [u8; PAGE_SIZE]) -> Result<(), Error> {
        if idx >= self.nr_pages {
            return Err(Error::PageOutOfRange);
        }
        let (words, pages) = self.store.split_at_mut(self.nr_words);
        let first = idx * WORDS_PER_PAGE;
        for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
            let w = words.get(first + i).copied().unwrap_or(0);
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        if let Some(word) = pages.get_mut(idx / 64) {
            *word &= !(1u64 << (idx % 64));
        }
        Ok(())
    }

    /// Replaces page `idx` with on-disk data `buf`. Bits beyond the end of the device are
    /// ignored. The page is not marked for writeout. Returns the page's new weight.
    pub fn load_page(&mut self, idx: usize, buf: &[u8; PAGE_SIZE]) -> Result<u64, Error> {
        if idx >= self.nr_pages {
            return Err(Error::PageOutOfRange);
        }
        let nr_bits = self.nr_bits;
        let first = idx * WORDS_PER_PAGE;
        let words = self
            .store
            .get_mut(..self.nr_words)
            .ok_or(Error::StorageTooSmall)?;
        let mut old_weight = 0u64;
        let mut new_weight = 0u64;
        for (i, chunk) in buf.chunks_exact(8).enumerate() {
            let w = first + i;
            let Some(word) = words.get_mut(w) else { break };
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(chunk);
            let mut v = u64::from_le_bytes(bytes);
            let base = (w as u64) * 64;
            if base + 64 > nr_bits {
                let keep = nr_bits - base; // 1..=63 here
                v &= (1u64 << keep) - 1;
            }
            old_weight += u64::from(word.count_ones());
            new_weight += u64::from(v.count_ones());
            *word = v;
        }
        self.weight = self.weight - old_weight + new_weight;
        Ok(new_weight)
    }

    // ---- run-length encoding for transfer ----

    /// Run-length encodes regions `[from_bit, from_bit + max_bits)` (clipped to the end of the
    /// bitmap) into `out`, in the wire format of `wire::rle_encode` (LEB128 run lengths,
    /// alternating in sync / out of sync, starting in sync; see `wire.rs`), but scanning whole
    /// words. Only whole runs are written; the next chunk starts at `from_bit + bits`. With
    /// `out.len() >= wire::RLE_MIN_OUT` at least one bit is covered.
    pub fn rle_encode(
        &self,
        from_bit: u64,
        max_bits: u32,
        out: &mut [u8],
    ) -> Result<RleChunk, Error> {
        if from_bit > self.nr_bits {
            return Err(Error::OutOfRange);
        }
        let end = from_bit
            .saturating_add(u64::from(max_bits))
            .min(self.nr_bits);
        let mut pos = from_bit;
        let mut written = 0usize;
        let mut value = false;
        while pos < end {
            let run_end = self.find_next(pos, !value).unwrap_or(end).min(end);
            if !wire::varint_put(out, &mut written, run_end - pos) {
                break;
            }
            pos = run_end;
            value = !value;
        }
        if pos == from_bit {
            if end == from_bit {
                return Ok(RleChunk { len: 0, bits: 0 });
            }
            return Err(Error::RleBufferTooSmall);
        }
        // pos - from_bit <= max_bits
        let bits = u32::try_from(pos - from_bit).map_err(|_| Error::OutOfRange)?;
        Ok(RleChunk { len: written, bits })
    }

    /// Applies an RLE chunk describing `bits` regions from `from_bit` on (as received in a
    /// bitmap message): [`RleApply::Merge`] ORs the out-of-sync runs in, [`RleApply::Copy`]
    /// also clears the in-sync runs. The chunk is validated with `wire::rle_check` first;
    /// nothing changes on error. Returns the number of out-of-sync regions in the chunk.
    pub fn rle_decode(
        &mut self,
        from_bit: u64,
        bits: u32,
        rle: &[u8],
        mode: RleApply,
    ) -> Result<u64, Error> {
        if from_bit
            .checked_add(u64::from(bits))
            .is_none_or(|end| end > self.nr_bits)
        {
            return Err(Error::OutOfRange);
        }
        let dirty = wire::rle_check(rle, bits).map_err(|_| Error::RleInvalid)?;
        let mut pos = from_bit;
        let mut value = false;
        let mut at = 0;
        while at < rle.len() {
            // Cannot fail after rle_check; stop quietly if it ever does.
            let Ok(len) = wire::varint_get(rle, &mut at) else {
                break;
            };
            let end = pos.saturating_add(len).min(from_bit + u64::from(bits));
            if value || mode == RleApply::Copy {
                let _ = self.update(pos, end, value);
            }
            pos = end;
            value = !value;
        }
        Ok(dirty)
    }

    /// [`Bitmap::rle_decode`] in [`RleApply::Merge`] mode: OR a peer's chunk into ours.
    pub fn rle_decode_merge(&mut self, from_bit: u64, bits: u32, rle: &[u8]) -> Result<u64, Error> {
        self.rle_decode(from_bit, bits, rle, RleApply::Merge)
    }
}

fn mark_dirty(pages: &mut [u64], idx: usize) {
    if let Some(word) = pages.get_mut(idx / 64) {
        *word |= 1u64 << (idx % 64);
    }
}

/// Iterator over runs of out-of-sync regions, see [`Bitmap::runs`].
pub struct Runs<'a, S> {
    bm: &'a Bitmap<S>,
    pos: u64,
}

impl<S> Iterator for Runs<'_, S>
where
    S: Deref<Target = [u64]> + DerefMut,
{
    type Item = Range;

    fn next(&mut self) -> Option<Range> {
        let run = self.bm.next_dirty(self.pos)?;
        self.pos = run.end();
        Some(run)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Bm = Bitmap<Vec<u64>>;

    fn bm(sectors: u64, shift: u32) -> Bm {
        let words = Bm::storage_words(sectors, shift).unwrap();
        Bitmap::new(vec![u64::MAX; words], sectors, shift).unwrap()
    }

    fn model_runs(m: &[bool], from: usize) -> Vec<Range> {
        let mut out = Vec::new();
        let mut i = from;
        while i < m.len() {
            if m[i] {
                let s = i;
                while i < m.len() && m[i] {
                    i += 1;
                }
                out.push(Range {
                    start: s as u64,
                    len: (i - s) as u64,
                });
            } else {
                i += 1;
            }
        }
        out
    }

    #[test]
    fn sizes_and_errors() {
        assert_eq!(nr_regions(8, 12), Some(1));
        assert_eq!(nr_regions(9, 12), Some(2));
        assert_eq!(nr_regions(0, 12), Some(0));
        assert_eq!(nr_regions(8, 11), None);
        assert_eq!(nr_regions(8, 21), None);
        assert_eq!(Bm::storage_words(0, 12), Err(Error::InvalidDeviceSize));
        assert_eq!(Bm::storage_words(8 * 64, 12), Ok(2));
        assert_eq!(Bm::storage_words(8 * 64 + 1, 12), Ok(3));
        assert!(Bitmap::new(vec![0u64; 1], 8 * 65, 12).is_err());
        let mut b = bm(100, 12);
        assert_eq!(b.nr_bits(), 13);
        assert_eq!(b.set_range(99, 2), Err(Error::OutOfRange));
        assert_eq!(b.set_range(u64::MAX, 2), Err(Error::OutOfRange));
        assert_eq!(b.set_bits(13, 1), Err(Error::OutOfRange));
        assert_eq!(b.mark_page_dirty(1), Err(Error::PageOutOfRange));
        assert!(!b.test(1000));
        for e in [
            Error::OutOfRange,
            Error::RleInvalid,
            Error::InvalidRegionSize,
        ] {
            assert!(!e.as_str().is_empty());
        }
    }

    #[test]
    fn rounding() {
        // 8-sector (4 KiB) regions, device of 100 sectors = 13 regions, last one partial.
        let mut b = bm(100, 12);
        assert_eq!(b.set_range(7, 2).unwrap(), 2); // touches regions 0 and 1
        assert_eq!(b.weight(), 2);
        assert_eq!(b.clear_range(1, 15).unwrap(), 1); // covers region 1 only
        assert!(b.test(0) && !b.test(1));
        assert_eq!(b.set_range(99, 1).unwrap(), 1);
        assert!(b.test(12));
        // The partial last region is cleared when the range reaches the end of the device.
        assert_eq!(b.clear_range(96, 4).unwrap(), 1);
        assert_eq!(b.weight(), 1);
        assert_eq!(b.set_all(), 12);
        assert_eq!(b.weight(), 13);
        assert_eq!(b.next_dirty(0), Some(Range { start: 0, len: 13 }));
        assert_eq!(b.find_next_clear(0), None);
        assert_eq!(b.clear_all(), 13);
        assert_eq!(b.next_dirty(0), None);
    }

    #[test]
    fn rle_errors_and_wire_compat() {
        let mut b = bm(8 * 1000, 12);
        assert_eq!(b.rle_decode_merge(0, 1000, &[0x80]), Err(Error::RleInvalid));
        assert_eq!(
            b.rle_decode_merge(0, 1000, &[0xff; 11]),
            Err(Error::RleInvalid)
        );
        assert_eq!(
            b.rle_decode_merge(0, 1000, &[10, 0xde]),
            Err(Error::RleInvalid)
        );
        assert_eq!(
            b.rle_decode_merge(0, 1001, &[10, 0xdf, 0x07]),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            b.rle_decode_merge(1, 1000, &[10, 0xde, 0x07]),
            Err(Error::OutOfRange)
        );
        assert_eq!(
            b.rle_decode_merge(0, 999, &[10, 0xde, 0x07]),
            Err(Error::RleInvalid)
        );
        assert_eq!(b.weight(), 0);
        assert_eq!(b.rle_decode_merge(0, 1000, &[10, 0xde, 0x07]), Ok(990));
        assert_eq!(b.weight(), 990);
        // Copy mode clears the in-sync runs.
        assert_eq!(b.rle_decode(0, 20, &[5, 10, 5], RleApply::Copy), Ok(10));
        assert_eq!(b.next_dirty(0), Some(Range { start: 5, len: 10 }));
        assert_eq!(
            b.next_dirty(15),
            Some(Range {
                start: 20,
                len: 980
            })
        );
        // Encoder: buffer too small, empty range, chunk cap.
        assert_eq!(
            b.rle_encode(0, 1000, &mut [0u8; 0]),
            Err(Error::RleBufferTooSmall)
        );
        assert_eq!(
            b.rle_encode(1000, 5, &mut [0u8; 4]),
            Ok(RleChunk { len: 0, bits: 0 })
        );
        assert_eq!(b.rle_encode(1001, 5, &mut [0u8; 4]), Err(Error::OutOfRange));
        let mut out = [0u8; 8];
        assert_eq!(
            b.rle_encode(7, 3, &mut out),
            Ok(RleChunk { len: 2, bits: 3 })
        );
        assert_eq!(&out[..2], &[0, 3]);
    }

    /// On-disk bytes of the whole bitmap (what wire.rs's byte-wise RLE works on).
    fn bytes_of(b: &mut Bm) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..b.nr_pages() {
            let mut page = [0u8; PAGE_SIZE];
            b.encode_page(i, &mut page).unwrap();
            v.extend_from_slice(&page);
        }
        v
    }

    #[derive(Clone, Debug)]
    enum Op {
        SetRange(u64, u64),
        ClearRange(u64, u64),
        SetBits(u64, u64),
        ClearBits(u64, u64),
    }

    fn op(max: u64) -> impl Strategy<Value = Op> {
        (0..4u8, 0..max, 0..max / 2 + 2).prop_map(|(k, a, n)| match k {
            0 => Op::SetRange(a, n),
            1 => Op::ClearRange(a, n),
            2 => Op::SetBits(a, n),
            _ => Op::ClearBits(a, n),
        })
    }

    fn apply(b: &mut Bm, m: &mut [bool], o: &Op) {
        let rs = b.region_sectors();
        let dev = b.device_sectors();
        let nbits = m.len() as u64;
        let changed = |m: &mut [bool], lo: u64, hi: u64, v: bool| {
            let mut c = 0;
            for x in &mut m[lo as usize..hi as usize] {
                if *x != v {
                    c += 1;
                    *x = v;
                }
            }
            c
        };
        match *o {
            Op::SetRange(s, n) => {
                let r = b.set_range(s, n);
                if s + n > dev {
                    assert_eq!(r, Err(Error::OutOfRange));
                } else if n == 0 {
                    assert_eq!(r, Ok(0));
                } else {
                    let c = changed(m, s / rs, (s + n - 1) / rs + 1, true);
                    assert_eq!(r, Ok(c));
                }
            }
            Op::ClearRange(s, n) => {
                let r = b.clear_range(s, n);
                if s + n > dev {
                    assert_eq!(r, Err(Error::OutOfRange));
                } else {
                    // Region i is cleared iff it lies fully inside [s, s+n) (clipped to dev).
                    let mut c = 0;
                    for i in 0..nbits {
                        let (a, e) = (i * rs, ((i + 1) * rs).min(dev));
                        if s <= a && e <= s + n && m[i as usize] {
                            m[i as usize] = false;
                            c += 1;
                        }
                    }
                    assert_eq!(r, Ok(c));
                }
            }
            Op::SetBits(f, n) | Op::ClearBits(f, n) => {
                let set = matches!(o, Op::SetBits(..));
                let r = if set {
                    b.set_bits(f, n)
                } else {
                    b.clear_bits(f, n)
                };
                if f + n > nbits {
                    assert_eq!(r, Err(Error::OutOfRange));
                } else {
                    assert_eq!(r, Ok(changed(m, f, f + n, set)));
                }
            }
        }
    }

    fn check_model(b: &Bm, m: &[bool]) {
        for (i, &v) in m.iter().enumerate() {
            assert_eq!(b.test(i as u64), v, "bit {i}");
        }
        assert_eq!(b.weight(), m.iter().filter(|&&v| v).count() as u64);
        assert_eq!(b.runs(0).collect::<Vec<_>>(), model_runs(m, 0));
        let mid = m.len() / 3;
        let expect: Vec<Range> = model_runs(m, mid);
        assert_eq!(b.runs(mid as u64).collect::<Vec<_>>(), expect);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn algebra(
            sectors in 1u64..300_000,
            shift in 12u32..=14,
            ops in proptest::collection::vec(op(300_000), 1..40),
        ) {
            let mut b = bm(sectors, shift);
            let mut m = vec![false; b.nr_bits() as usize];
            let ops: Vec<Op> = ops.into_iter().map(|o| match o {
                Op::SetRange(a, n) => Op::SetRange(a % (sectors + 1), n % (sectors / 2 + 2)),
                Op::ClearRange(a, n) => Op::ClearRange(a % (sectors + 1), n % (sectors + 2)),
                Op::SetBits(a, n) => Op::SetBits(a % (m.len() as u64 + 1), n % (m.len() as u64 / 2 + 2)),
                Op::ClearBits(a, n) => Op::ClearBits(a % (m.len() as u64 + 1), n % (m.len() as u64 + 2)),
            }).collect();
            // Snapshot of "what is on disk": start with everything persisted.
            let mut disk = vec![[0u8; PAGE_SIZE]; b.nr_pages()];
            for (i, page) in disk.iter_mut().enumerate() {
                b.encode_page(i, page).unwrap();
            }
            prop_assert_eq!(b.dirty_page_count(), 0);
            for o in &ops {
                apply(&mut b, &mut m, o);
                check_model(&b, &m);
            }
            // Every page whose content differs from disk must be marked dirty.
            for (i, page) in disk.iter_mut().enumerate() {
                let dirty = b.is_page_dirty(i);
                let mut now = [0u8; PAGE_SIZE];
                b.encode_page(i, &mut now).unwrap();
                prop_assert!(dirty || now == *page, "page {} changed but not marked", i);
                *page = now;
            }
            prop_assert_eq!(b.dirty_page_count(), 0);
            // Page persistence round trip.
            let mut c = bm(sectors, shift);
            for (i, page) in disk.iter().enumerate() {
                c.load_page(i, page).unwrap();
            }
            check_model(&c, &m);
            // RLE round trip in small chunks, byte-identical to wire::rle_encode.
            let bytes = bytes_of(&mut b);
            let mut d = bm(sectors, shift);
            let mut e = bm(sectors, shift);
            e.set_all();
            let mut pos = 0;
            let mut buf = [0u8; wire::RLE_MIN_OUT + 3];
            let mut wbuf = [0u8; wire::RLE_MIN_OUT + 3];
            while pos < b.nr_bits() {
                let cap = 5000u32;
                let chunk = b.rle_encode(pos, cap, &mut buf).unwrap();
                prop_assert!(chunk.bits > 0);
                let want = (b.nr_bits() - pos).min(u64::from(cap)) as u32;
                let w = wire::rle_encode(&bytes, pos, want, &mut wbuf).unwrap();
                prop_assert_eq!(w, chunk);
                prop_assert_eq!(&wbuf[..w.len], &buf[..chunk.len]);
                let rle = &buf[..chunk.len];
                let dirty = d.rle_decode_merge(pos, chunk.bits, rle).unwrap();
                prop_assert_eq!(e.rle_decode(pos, chunk.bits, rle, RleApply::Copy), Ok(dirty));
                pos += u64::from(chunk.bits);
            }
            prop_assert_eq!(pos, b.nr_bits());
            check_model(&d, &m);
            check_model(&e, &m);
        }

        #[test]
        fn dirty_pages_tracked(
            ops in proptest::collection::vec(op(600_000), 1..30),
        ) {
            let sectors = 600_000u64; // 75_000 regions of 4 KiB = 3 pages
            let mut b = bm(sectors, 12);
            let mut m = vec![false; b.nr_bits() as usize];
            let mut disk = vec![[0u8; PAGE_SIZE]; b.nr_pages()];
            for o in &ops {
                let before: Vec<bool> = (0..b.nr_pages()).map(|i| b.is_page_dirty(i)).collect();
                apply(&mut b, &mut m, o);
                // Marks are only ever added by changes.
                for (i, &was) in before.iter().enumerate() {
                    prop_assert!(!was || b.is_page_dirty(i));
                }
                // Flush the dirty pages, pages not marked must equal the disk copy.
                for (i, page) in disk.iter_mut().enumerate() {
                    let dirty = b.is_page_dirty(i);
                    let mut now = [0u8; PAGE_SIZE];
                    b.encode_page(i, &mut now).unwrap();
                    if !dirty {
                        prop_assert!(now == *page, "clean page {} changed", i);
                    }
                    *page = now;
                }
                prop_assert_eq!(b.next_dirty_page(0), None);
            }
        }

        #[test]
        fn rle_decode_random_never_panics(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            from in 0u64..2000,
            bits in 0u32..2000,
        ) {
            let mut b = bm(8 * 1500, 12);
            b.set_bits(100, 50).unwrap();
            let w = b.weight();
            match b.rle_decode(from, bits, &data, RleApply::Copy) {
                Ok(n) => prop_assert!(n <= u64::from(bits)),
                Err(_) => prop_assert_eq!(b.weight(), w),
            }
        }
    }

    #[test]
    fn page_helpers() {
        let mut b = bm(8 * 70_000, 12); // 3 pages
        assert_eq!(b.nr_pages(), 3);
        assert_eq!(b.pages_of(8 * 32_767, 16).unwrap(), 0..2);
        assert_eq!(b.pages_of(0, 0).unwrap(), 0..0);
        b.set_bits(32_768 * 2, 1).unwrap();
        assert_eq!(b.next_dirty_page(0), Some(2));
        assert_eq!(b.next_dirty_page(3), None);
        b.mark_all_pages_dirty();
        assert_eq!(b.dirty_page_count(), 3);
        let mut page = [0u8; PAGE_SIZE];
        b.encode_page(2, &mut page).unwrap();
        assert_eq!(page[0], 1);
        assert_eq!(b.dirty_page_count(), 2);
        // Loading garbage beyond the end keeps only valid bits.
        let mut c = bm(8 * 70_000, 12);
        assert_eq!(c.load_page(2, &[0xff; PAGE_SIZE]).unwrap(), 70_000 - 65_536);
        assert_eq!(c.weight(), 70_000 - 65_536);
        assert_eq!(c.load_page(2, &[0; PAGE_SIZE]).unwrap(), 0);
        assert_eq!(c.weight(), 0);
        assert_eq!(c.dirty_page_count(), 0);
        assert_eq!(c.test_range(0, 8 * 70_000), Ok(false));
        c.set_bits(69_999, 1).unwrap();
        assert_eq!(c.test_range(8 * 69_999, 8), Ok(true));
        assert_eq!(c.test_range(8 * 69_998, 8), Ok(false));
        assert_eq!(
            c.run_to_sectors(Range {
                start: 69_999,
                len: 1
            }),
            (8 * 69_999, 8 * 70_000)
        );
    }
}
