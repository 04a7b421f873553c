// SPDX-License-Identifier: GPL-2.0
//! Deterministic simulator: two replicas, a faulty network, crashes, all from one seed.
//!
//! Each seed runs a random workload on the primary while the network resets, stalls and
//! partitions, nodes crash (losing their volatile disk caches) and restart, and the
//! secondary is sometimes promoted during a partition (split brain). Then the faults stop
//! and the run must converge. Checks:
//!
//! - (a) replicas are identical once resync completes, with empty bitmaps;
//! - (b) when the primary crashes, the secondary holds every write acked under protocol C
//!   (failover promise), and no flushed write is ever lost; the secondary makes those writes
//!   durable by FUA (even seeds) or by group commit, one flush before a batch of acks (odd
//!   seeds, `state::peer::Durability`; writes that complete during a flush wait for the next);
//! - (c) resync copies only regions marked in the fracture bitmap (activity-log extents are
//!   marked there on restart): copied <= marked for every resync;
//! - (d) split brain is always detected when both sides wrote apart, and never reported
//!   when the secondary was not promoted.
//!
//! `consistency_points` runs a separate, smaller simulation of `state::cp`.
//!
//! `RMIRROR_SIM_SEEDS` (default 10000) sets how many seeds `many_seeds` runs;
//! `RMIRROR_SIM_SEED=N ... -- replay_one --nocapture` replays one seed with a trace.

#[path = "sim/cp.rs"]
mod cp;
#[path = "sim/disk.rs"]
mod disk;
#[path = "sim/rng.rs"]
mod rng;
#[path = "sim/world.rs"]
mod world;

use std::time::Instant;

use world::{Bugs, Stats, World};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn repro(seed: u64) -> String {
    format!("RMIRROR_SIM_SEED={seed} cargo test -p rmirror-core --test sim -- replay_one --nocapture")
}

/// Runs seeds `lo..hi`; returns totals or the first failure.
fn run_range(lo: u64, hi: u64, bugs: Bugs) -> Result<Stats, (u64, String)> {
    let mut tot = Stats::default();
    for seed in lo..hi {
        let (r, _) = World::new(seed, bugs, false).run();
        let s = r.map_err(|e| (seed, e))?;
        tot.merge(&s);
    }
    Ok(tot)
}

#[test]
fn many_seeds() {
    let n = env_u64("RMIRROR_SIM_SEEDS").unwrap_or(10_000);
    let base = env_u64("RMIRROR_SIM_BASE").unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(1, |p| p.get()).clamp(1, 4) as u64;
    let start = Instant::now();
    let chunk = n.div_ceil(threads);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let lo = base + t * chunk;
            let hi = (lo + chunk).min(base + n);
            std::thread::spawn(move || run_range(lo, hi.max(lo), Bugs::default()))
        })
        .collect();
    let mut tot = Stats::default();
    let mut first_fail: Option<(u64, String)> = None;
    for h in handles {
        match h.join().unwrap() {
            Ok(s) => tot.merge(&s),
            Err((seed, e)) => {
                if first_fail.as_ref().is_none_or(|f| seed < f.0) {
                    first_fail = Some((seed, e));
                }
            }
        }
    }
    if let Some((seed, e)) = first_fail {
        panic!("seed {seed} failed: {e}\nreproduce: {}", repro(seed));
    }
    println!(
        "{n} seeds in {:.1?}: {} writes, {} outages, {} crashes, {} resyncs ({} regions copied of {} marked), \
         {} replayed from outage queues, {} queue drains, {} queued writes marked as their extent was retired, \
         {} split brains injected / {} detections / {} resolved, {} full syncs",
        start.elapsed(),
        tot.writes,
        tot.outages,
        tot.crashes,
        tot.resyncs,
        tot.copied,
        tot.marked,
        tot.replayed,
        tot.drained,
        tot.retire_marks,
        tot.sb_injected,
        tot.split_brains,
        tot.sb_resolved,
        tot.full_syncs
    );
    assert!(
        tot.split_brains > 0 && tot.sb_resolved > 0 && tot.replayed > 0 && tot.drained > 0 && tot.crashes > 0
            && tot.retire_marks > 0
            || n < 200
    );
}

#[test]
fn replay_one() {
    let Some(seed) = env_u64("RMIRROR_SIM_SEED") else {
        return;
    };
    let (r, trace) = World::new(seed, Bugs::default(), true).run();
    for l in &trace {
        println!("{l}");
    }
    match r {
        Ok(s) => println!("seed {seed} ok: {s:?}"),
        Err(e) => panic!("seed {seed} failed: {e}"),
    }
}

/// Each deliberate bug must be caught within a few hundred seeds (a few thousand for the rarer
/// ones): the checks can fail.
#[test]
fn deliberate_bugs_are_caught() {
    // (bug, a substring of the check that must catch it, seeds to try)
    let cases = [
        ("ack before durable", Bugs { ack_before_durable: true, ..Bugs::default() }, "acked under C", 500),
        ("no activity-log recovery", Bugs { skip_al_recovery: true, ..Bugs::default() }, "differ", 500),
        ("no uuid rotation", Bugs { no_uuid_rotation: true, ..Bugs::default() }, "", 500),
        ("no rotation on promote", Bugs { no_rotation_on_promote: true, ..Bugs::default() }, "split brain missed", 500),
        ("group commit acks before its flush", Bugs { ack_without_flush: true, ..Bugs::default() }, "acked under C", 500),
        ("group commit acks writes completed during its flush",
         Bugs { ack_completed_mid_flush: true, ..Bugs::default() }, "acked under C", 5000),
        ("resync ignores the bitmap", Bugs { resync_everything: true, ..Bugs::default() }, "were marked", 500),
        // Needs an outage, an extent retired with a queued write in it, and a crash of the
        // primary before the replay, without a full sync to hide it.
        ("the source ignores the target's bitmap", Bugs { ignore_peer_bitmap: true, ..Bugs::default() }, "left at resync end",
         2000),
        ("retired extents forget queued writes", Bugs { skip_retire_marks: true, ..Bugs::default() }, "differ",
         5000),
    ];
    for (name, bugs, check, seeds) in cases {
        match run_range(0, seeds, bugs) {
            Ok(_) => panic!("bug '{name}' was not caught in {seeds} seeds"),
            Err((seed, e)) => {
                println!("bug '{name}' caught at seed {seed}: {e}");
                assert!(e.contains(check), "bug '{name}' caught by an unexpected check: {e}");
            }
        }
    }
}

/// Consistency points: maps match the writes, acks are in order, the secondary always holds
/// a point-in-time image when the primary dies.
#[test]
fn consistency_points() {
    let n = env_u64("RMIRROR_SIM_SEEDS").unwrap_or(10_000).min(5000);
    for seed in 0..n {
        if let Err(e) = cp::run(seed) {
            panic!("cp seed {seed} failed: {e}");
        }
    }
}
