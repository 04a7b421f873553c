// SPDX-License-Identifier: GPL-2.0
//! Consistency-point simulation: writes grouped into points, shipped with their
//! block-in-use maps, applied point by point on the secondary.
//!
//! Checks: each point's map is exactly the set of regions its writes touched; acks are
//! accepted in order and bogus ones refused; when the primary dies at a random moment the
//! secondary equals the primary's state at the end of some point (point-in-time
//! consistency) that is at least the last acked one.

use std::collections::VecDeque;

use rmirror_core::state::cp::{self, Points};

use crate::rng::Rng;

const REGIONS: u64 = 64;

struct PointMsg {
    at: u64,
    number: u64,
    map: Vec<u64>,
    writes: Vec<(u64, u64, u64)>,
}

/// Runs one seed; `Err` describes the first violation.
pub fn run(seed: u64) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0xC0);
    let max_unacked = rng.range(1, 4);
    let words = cp::words_for(REGIONS) as usize;
    let mut p = Points::new(vec![0u64; words], REGIONS, max_unacked).map_err(|e| e.as_str().to_string())?;
    let mut held: Vec<(u64, u64, u64)> = Vec::new();
    let mut pri = vec![0u64; REGIONS as usize];
    // snapshots[k] = primary state at the end of point k (snapshot 0 = initial).
    let mut snapshots = vec![pri.clone()];
    let mut to_sec: VecDeque<PointMsg> = VecDeque::new();
    let mut to_pri: VecDeque<(u64, u64)> = VecDeque::new();
    let mut sec = vec![0u64; REGIONS as usize];
    let mut sec_applied = 0u64;
    let interval = rng.range(3, 30);
    let crash_at = rng.range(50, 600);
    let mut next_close = interval;
    let mut val = 0u64;
    let mut out = vec![0u64; words];
    for now in 0..crash_at {
        if rng.chance(1, 2) {
            let cnt = rng.range(1, 4);
            let first = rng.below(REGIONS - cnt + 1);
            val += 1;
            let n = p.write(first, cnt).map_err(|e| e.as_str().to_string())?;
            if n != p.open() {
                return Err("write recorded in a point that is not open".into());
            }
            held.push((first, cnt, val));
        }
        if now >= next_close && p.is_dirty() {
            match p.close(&mut out) {
                Ok(c) => {
                    for &(f, n, v) in &held {
                        for r in f..f + n {
                            pri[r as usize] = v;
                        }
                    }
                    snapshots.push(pri.clone());
                    if snapshots.len() as u64 != c.number + 1 {
                        return Err(format!("point numbers not consecutive: {}", c.number));
                    }
                    let at = now + rng.range(1, 20);
                    let at = to_sec.back().map_or(at, |m| at.max(m.at));
                    to_sec.push_back(PointMsg { at, number: c.number, map: out.clone(), writes: std::mem::take(&mut held) });
                    next_close = now + interval;
                }
                Err(cp::Error::TooManyUnacked) => {
                    if p.unacked() != max_unacked {
                        return Err("back-pressure with room left".into());
                    }
                }
                Err(e) => return Err(e.as_str().to_string()),
            }
        }
        while to_sec.front().is_some_and(|m| m.at <= now) {
            let m = to_sec.pop_front().unwrap();
            // The map must name exactly the regions the point's writes touched.
            let mut want = vec![0u64; words];
            for &(f, n, _) in &m.writes {
                for r in f..f + n {
                    want[(r / 64) as usize] |= 1 << (r % 64);
                }
            }
            if want != m.map {
                return Err(format!("point {}: block-in-use map {:x?} != written {:x?}", m.number, m.map, want));
            }
            if m.number != sec_applied + 1 {
                return Err(format!("point {} applied out of order", m.number));
            }
            for (f, n, v) in m.writes {
                for r in f..f + n {
                    sec[r as usize] = v;
                }
            }
            sec_applied = m.number;
            // Cumulative acks: sometimes skip one.
            if rng.chance(2, 3) || to_sec.is_empty() {
                to_pri.push_back((now + rng.range(1, 10), m.number));
            }
        }
        while to_pri.front().is_some_and(|a| a.0 <= now) {
            let (_, n) = to_pri.pop_front().unwrap();
            let before = p.acked();
            if rng.chance(1, 10) {
                // A bogus ack (from the future, or stale) is refused and changes nothing.
                let bogus = if rng.chance(1, 2) { p.open() } else { before };
                if p.ack(bogus) != Err(cp::Error::BadAck) || p.acked() != before {
                    return Err(format!("bogus ack {bogus} accepted"));
                }
            }
            p.ack(n).map_err(|e| format!("ack {n}: {}", e.as_str()))?;
        }
    }
    // The primary dies now: the secondary must hold a point-in-time image, at least as new
    // as the last acked point.
    if sec != snapshots[sec_applied as usize] {
        return Err(format!("secondary is not the image of point {sec_applied}"));
    }
    if p.acked() > sec_applied {
        return Err(format!("point {} acked but secondary applied only {sec_applied}", p.acked()));
    }
    Ok(())
}
