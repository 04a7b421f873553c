// SPDX-License-Identifier: GPL-2.0
//! Consistency points: writes grouped into numbered points, each closed with a block-in-use map.
//!
//! Writes arriving while point `n` is open are recorded in the open point's map (one bit
//! per region, caller-provided words) and held by the driver; [`Points::close`] ends point
//! `n`: the driver then issues all of its writes together, locally and to the secondary,
//! and sends the closed map (copied into the caller's buffer) so the secondary knows which
//! regions point `n` touched. The secondary acks a point once all its writes are durable
//! ([`Points::ack`], cumulative and in order). At most `max_unacked` closed points may await
//! their ack, which bounds how far the secondary may fall behind.
//!
//! ```text
//!   acked ........ closed, unacked (<= max_unacked) ........ open (collecting)
//!   1 ... a        a+1 ... n-1                                n
//! ```

use core::ops::DerefMut;

/// Why an operation was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The map (or output buffer) has fewer than `ceil(regions / 64)` words.
    MapTooSmall,
    /// A write past the last region.
    OutOfRange,
    /// `max_unacked` closed points already await their ack (back-pressure).
    TooManyUnacked,
    /// An ack for a point that is not closed-and-unacked (stale or bogus peer input).
    BadAck,
    /// `max_unacked` of 0.
    BadLimit,
}

impl Error {
    /// Human-readable message.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::MapTooSmall => "block-in-use map too small for the device",
            Error::OutOfRange => "write beyond the end of the device",
            Error::TooManyUnacked => "too many consistency points await their ack",
            Error::BadAck => "ack for a consistency point that is not pending",
            Error::BadLimit => "max unacked points must be at least 1",
        }
    }
}

/// A point just closed by [`Points::close`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Closed {
    /// Its number (the first point is 1).
    pub number: u64,
    /// How many regions it touched (bits set in the copied map).
    pub regions: u64,
}

/// Consistency point bookkeeping over a caller-provided block-in-use map `S`
/// (`&mut [u64]`, an array, or a `Vec` on the host).
#[derive(Debug)]
pub struct Points<S> {
    map: S,
    regions: u64,
    open: u64,
    acked: u64,
    max_unacked: u64,
    dirty: bool,
}

/// Words needed for a map of `regions` bits.
pub const fn words_for(regions: u64) -> u64 {
    regions.div_ceil(64)
}

impl<S: DerefMut<Target = [u64]>> Points<S> {
    /// Point 1 open, nothing acked; `map` must hold `regions` bits and is cleared.
    pub fn new(mut map: S, regions: u64, max_unacked: u64) -> Result<Self, Error> {
        if (map.len() as u64) < words_for(regions) {
            return Err(Error::MapTooSmall);
        }
        if max_unacked == 0 {
            return Err(Error::BadLimit);
        }
        map.fill(0);
        Ok(Points { map, regions, open: 1, acked: 0, max_unacked, dirty: false })
    }

    /// Number of the open point.
    pub fn open(&self) -> u64 {
        self.open
    }

    /// Highest acked point (0 = none).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Closed points awaiting their ack.
    pub fn unacked(&self) -> u64 {
        self.open - 1 - self.acked
    }

    /// Whether the open point has recorded any write.
    pub fn is_dirty(&self) -> bool {
        self.dirty
    }

    /// Records a write of `count` regions from `first`; returns the point it belongs to
    /// (the driver holds the write until that point closes).
    pub fn write(&mut self, first: u64, count: u64) -> Result<u64, Error> {
        let end = first.checked_add(count).ok_or(Error::OutOfRange)?;
        if end > self.regions {
            return Err(Error::OutOfRange);
        }
        for r in first..end {
            self.map[(r / 64) as usize] |= 1 << (r % 64);
        }
        self.dirty = true;
        Ok(self.open)
    }

    /// Ends the open point: copies its block-in-use map into `out` (to send to the
    /// secondary), clears it, and opens the next point.
    pub fn close(&mut self, out: &mut [u64]) -> Result<Closed, Error> {
        let words = words_for(self.regions) as usize;
        if out.len() < words {
            return Err(Error::MapTooSmall);
        }
        if self.unacked() >= self.max_unacked {
            return Err(Error::TooManyUnacked);
        }
        let mut regions = 0u64;
        for (o, m) in out.iter_mut().zip(self.map.iter_mut()).take(words) {
            regions += u64::from(m.count_ones());
            *o = *m;
            *m = 0;
        }
        let number = self.open;
        self.open += 1;
        self.dirty = false;
        Ok(Closed { number, regions })
    }

    /// The secondary has every write of points up to `number` durable (cumulative).
    pub fn ack(&mut self, number: u64) -> Result<(), Error> {
        if number <= self.acked || number >= self.open {
            return Err(Error::BadAck);
        }
        self.acked = number;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_cycle() {
        let mut map = [0u64; 2];
        let mut out = [0u64; 2];
        let mut p = Points::new(&mut map[..], 100, 2).unwrap();
        assert_eq!(p.write(3, 2), Ok(1));
        assert_eq!(p.write(64, 1), Ok(1));
        assert_eq!(p.write(99, 2), Err(Error::OutOfRange));
        assert_eq!(p.write(u64::MAX, 2), Err(Error::OutOfRange));
        let c = p.close(&mut out).unwrap();
        assert_eq!(c, Closed { number: 1, regions: 3 });
        assert_eq!(out, [0b11000, 1]);
        assert!(!p.is_dirty());
        assert_eq!(p.write(0, 1), Ok(2));
        assert_eq!(p.close(&mut out).unwrap().number, 2);
        assert_eq!(out, [1, 0]);
        assert_eq!(p.close(&mut out), Err(Error::TooManyUnacked));
        assert_eq!(p.ack(3), Err(Error::BadAck));
        assert_eq!(p.ack(2), Ok(()));
        assert_eq!(p.ack(1), Err(Error::BadAck));
        assert_eq!(p.unacked(), 0);
        assert_eq!(p.close(&mut [0u64; 1]), Err(Error::MapTooSmall));
    }

    #[test]
    fn sizes() {
        assert_eq!(words_for(0), 0);
        assert_eq!(words_for(64), 1);
        assert_eq!(words_for(65), 2);
        assert!(Points::new(&mut [0u64; 1][..], 65, 1).is_err());
        assert!(Points::new(&mut [0u64; 1][..], 64, 0).is_err());
    }
}
