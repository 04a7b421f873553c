// SPDX-License-Identifier: GPL-2.0
//! Resync decisions from generation UUIDs (like DRBD's `drbd_uuid_compare`) and rate control.
//!
//! Each replica keeps a [`Uuids`] set: `current` names its data generation, `bitmap` names
//! the generation the peer had when this side started recording changes in its fracture
//! bitmap (0 = not recording), and `history` names older generations. [`compare`] looks at
//! both sets after a handshake and decides who is sync source, who is target, whether the
//! bitmap suffices or a full sync is needed, or that the data sets diverged (split brain)
//! or are unrelated. Every verdict carries the number of the rule that decided it (the same
//! numbering as DRBD 8.4, for familiarity). Split brain is reported, never resolved here.
//!
//! The lowest bit of every UUID is reserved (DRBD uses it as a flag) and ignored when
//! comparing; [`Uuids::new_current`] clears it in the value it is given.
//!
//! Rate control: [`TokenBucket`] issues resync bytes at a fixed rate; [`Controller`] is
//! DRBD's dynamic "c-plan-ahead" controller that keeps a fill target of resync bytes in
//! flight, planning corrections over `N` steps. Both are integer-only.

/// Generation UUIDs of one replica (stored in the metadata area, sent in the handshake).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uuids {
    /// Current data generation (0 = no data, [`JUST_CREATED`] = fresh metadata).
    pub current: u64,
    /// Peer's generation at the start of bitmap tracking; 0 if the bitmap is not in use.
    pub bitmap: u64,
    /// Older generations, newest first.
    pub history: [u64; 2],
    /// Flags: [`FLAG_CRASHED_PRIMARY`], [`FLAG_PRIMARY`].
    pub flags: u32,
}

/// `current` of freshly created metadata (DRBD's `UUID_JUST_CREATED`).
pub const JUST_CREATED: u64 = 4;
/// `current` of metadata the user declared identical on both sides (`rmirrorctl create-md
/// --clear-bitmap` on both, for fresh disks that need no initial sync): a data generation both
/// replicas start from, like DRBD's `new-current-uuid --clear-bitmap` on a just-created pair.
pub const DAY0: u64 = 6;
/// This replica was primary when it went down uncleanly (its AL extents are dirty).
pub const FLAG_CRASHED_PRIMARY: u32 = 1 << 0;
/// This replica is primary now.
pub const FLAG_PRIMARY: u32 = 1 << 1;

const MASK: u64 = !1;

impl Uuids {
    /// Fresh metadata: both sides start as [`JUST_CREATED`] and need no initial sync only
    /// if the user says so ([`Uuids::new_current`] on one side makes it the source).
    pub const fn just_created() -> Self {
        Uuids { current: JUST_CREATED, bitmap: 0, history: [0; 2], flags: 0 }
    }

    /// Starts a new data generation `fresh` (a random non-zero value from the caller):
    /// done by a primary when it writes without its peer (outage, disconnect, promotion
    /// while disconnected). If the bitmap was not tracking yet, the old generation becomes
    /// the bitmap UUID (the peer's last known state); otherwise it goes to the history.
    pub fn new_current(&mut self, fresh: u64) {
        let fresh = fresh & MASK;
        if self.bitmap == 0 {
            self.bitmap = self.current;
        } else {
            self.push_history(self.current);
        }
        self.current = fresh;
    }

    /// The primary's disk failed and was detached: the secondary holds the only up-to-date
    /// data, and both sides adopt generation `fresh` (the primary in memory only). The old
    /// generation goes to the history, never to the bitmap UUID: a failed disk that comes back
    /// with its old superblock finds its generation only in the peer's history (rule 60: a
    /// full sync to it; as primary it is refused), because the bitmaps do not track what it
    /// missed.
    pub fn peer_detached(&mut self, fresh: u64) {
        let fresh = fresh & MASK;
        if fresh != self.current & MASK {
            self.push_history(self.current);
            self.current = fresh;
        }
    }

    fn push_history(&mut self, v: u64) {
        self.history[1] = self.history[0];
        self.history[0] = v;
    }

    /// Resync finished on the source: the target now has our generation; stop tracking.
    pub fn sync_finished_source(&mut self) {
        if self.bitmap != 0 {
            self.push_history(self.bitmap);
            self.bitmap = 0;
        }
    }

    /// Resync finished on the target: adopt the source's generation and history.
    pub fn sync_finished_target(&mut self, source: &Uuids) {
        let old = self.current;
        self.current = source.current;
        self.bitmap = 0;
        self.history = source.history;
        if source.bitmap != 0 {
            self.push_history(source.bitmap);
        } else if old != self.current && old != 0 && old != JUST_CREATED {
            self.push_history(old);
        }
    }
}

/// A detached primary (its disk failed, [`Uuids::peer_detached`] applied in memory) meets a
/// peer that missed only that rotation (the link went before the `Detached` notice arrived):
/// nothing needs copying, the notice is sent again. Any other difference is judged by
/// [`compare`] as usual.
pub fn detach_notice_missed(local: &Uuids, peer: &Uuids) -> bool {
    local.current & MASK != peer.current & MASK && local.history[0] & MASK == peer.current & MASK
        && local.bitmap & MASK == peer.bitmap & MASK
}

/// Both replicas hold fresh metadata and nobody said which data counts: the pair must not
/// replicate until the user runs `create-md --overwrite-data-of-peer` on the side whose data
/// is kept (a full sync to the other) or `create-md --clear-bitmap` on both (the disks are
/// identical). [`compare`] would answer rule 10 (no sync), which would assume it silently.
pub fn undecided(local: &Uuids, peer: &Uuids) -> bool {
    local.current & MASK == JUST_CREATED && peer.current & MASK == JUST_CREATED
}

/// Outcome of [`compare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Same generation: nothing to copy.
    NoSync,
    /// This side is the source; `full` = the whole device, else the bitmap's regions.
    SyncSource {
        /// Copy every region instead of the bitmap.
        full: bool,
    },
    /// This side is the target; `full` = the whole device, else the peer's bitmap.
    SyncTarget {
        /// Copy every region instead of the bitmap.
        full: bool,
    },
    /// Both sides changed the data since they last agreed: needs an operator decision.
    SplitBrain,
    /// No common generation: the replicas hold unrelated data.
    Unrelated,
}

impl Decision {
    /// Name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::NoSync => "no-sync",
            Decision::SyncSource { full: false } => "sync-source",
            Decision::SyncSource { full: true } => "sync-source-full",
            Decision::SyncTarget { full: false } => "sync-target",
            Decision::SyncTarget { full: true } => "sync-target-full",
            Decision::SplitBrain => "split-brain",
            Decision::Unrelated => "unrelated-data",
        }
    }
}

/// UUID repair implied by a verdict (a resync start or end whose packet was lost).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fixup {
    /// Nothing to repair.
    None,
    /// Rule 34: we were source and missed the "finished" event: clear our bitmap UUID
    /// ([`Uuids::sync_finished_source`]).
    FinishOwnSync,
    /// Rule 71: our last sync start did not reach the peer: undo it on our side (bitmap
    /// UUID back to `history[0]`, history shifted down).
    UndoOwnSyncStart,
}

/// A decision with the number of the rule that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What to do.
    pub decision: Decision,
    /// DRBD-style rule number (10..=100), for the log line "uuid_compare()=.. by rule ..".
    pub rule: u16,
    /// Repair to apply to our own UUIDs before acting.
    pub fixup: Fixup,
}

const fn v(decision: Decision, rule: u16) -> Verdict {
    Verdict { decision, rule, fixup: Fixup::None }
}

/// DRBD's manual split-brain recovery (`connect --discard-my-data` on the victim): the side
/// that discards its data becomes the sync target. When the split brain was found by rule 90
/// (both bitmaps track changes since the same generation) the union of both bitmaps covers
/// every region either side wrote apart, so a bitmap-based resync suffices (the target's
/// bitmap reaches the source in the bitmap exchange); otherwise the whole device is copied.
/// `None` when neither side or both asked: the split brain stands.
pub fn resolve_split_brain(rule: u16, local_discards: bool, peer_discards: bool) -> Option<Decision> {
    let full = rule != 90;
    match (local_discards, peer_discards) {
        (true, false) => Some(Decision::SyncTarget { full }),
        (false, true) => Some(Decision::SyncSource { full }),
        _ => None,
    }
}

/// Bitmap UUID bump used when a sync source starts a resync (DRBD's `UUID_NEW_BM_OFFSET`).
pub const NEW_BM_OFFSET: u64 = 0x0001_0000_0000_0000;

/// Decides the sync direction from both replicas' UUIDs. `local_wins_ties` breaks the one
/// symmetric case (both crashed while primary with equal UUIDs); exactly one side of a
/// connection must pass `true` (DRBD's `DISCARD_CONCURRENT`, e.g. the node with the
/// lower id). Pure: both sides computing it get mirrored answers.
pub fn compare(local: &Uuids, peer: &Uuids, local_wins_ties: bool) -> Verdict {
    use Decision::*;
    let src = |full| SyncSource { full };
    let tgt = |full| SyncTarget { full };
    let mut me = local.current & MASK;
    let mut pe = peer.current & MASK;

    let no_data = |x: u64| x == JUST_CREATED || x == 0;
    if no_data(me) && no_data(pe) {
        return v(NoSync, 10);
    }
    if no_data(me) {
        return v(tgt(true), 20);
    }
    if no_data(pe) {
        return v(src(true), 30);
    }
    if me == pe {
        let (lb, pb) = (local.bitmap & MASK, peer.bitmap & MASK);
        if pb == 0 && lb != 0 {
            // We were source; the target finished (its bitmap UUID is gone): we missed it.
            if lb == peer.history[0] & MASK {
                return Verdict { decision: src(false), rule: 34, fixup: Fixup::FinishOwnSync };
            }
            return v(src(false), 36);
        }
        if lb == 0 && pb != 0 {
            return v(tgt(false), if local.history[0] & MASK == pb { 35 } else { 37 });
        }
        // Common power failure: whoever crashed as primary may hold writes the other lacks.
        let me_crashed = local.flags & FLAG_CRASHED_PRIMARY != 0;
        let pe_crashed = peer.flags & FLAG_CRASHED_PRIMARY != 0;
        return match (me_crashed, pe_crashed) {
            (false, false) => v(NoSync, 40),
            (true, false) => v(src(false), 40),
            (false, true) => v(tgt(false), 40),
            (true, true) => v(if local_wins_ties { src(false) } else { tgt(false) }, 40),
        };
    }

    // Each side's current generation is in the other's past: a cycle that only
    // independent rotations on both sides can produce (not a DRBD rule).
    let past = |u: &Uuids| [u.bitmap & MASK, u.history[0] & MASK, u.history[1] & MASK];
    if past(peer).contains(&me) && past(local).contains(&pe) {
        return v(SplitBrain, 45);
    }

    pe = peer.bitmap & MASK;
    if me == pe {
        return v(tgt(false), 50);
    }
    pe = peer.history[0] & MASK;
    if me == pe && pe.wrapping_add(NEW_BM_OFFSET) == peer.bitmap & MASK {
        // The peer started a resync as source whose start never reached us.
        return v(tgt(false), 51);
    }
    if peer.history.iter().any(|h| *h & MASK == me && me != 0) {
        return v(tgt(true), 60);
    }

    me = local.bitmap & MASK;
    pe = peer.current & MASK;
    if me == pe {
        return v(src(false), 70);
    }
    me = local.history[0] & MASK;
    if me == pe && me.wrapping_add(NEW_BM_OFFSET) == local.bitmap & MASK {
        return Verdict { decision: src(false), rule: 71, fixup: Fixup::UndoOwnSyncStart };
    }
    if local.history.iter().any(|h| *h & MASK == pe && pe != 0) {
        return v(src(true), 80);
    }

    me = local.bitmap & MASK;
    pe = peer.bitmap & MASK;
    if me == pe && me != 0 {
        return v(SplitBrain, 90);
    }
    // Any older generation in common (bitmap or history, either side): both sides moved
    // on from it independently. DRBD looks at the histories only; the bitmap UUIDs are
    // included so that a divergence is caught whichever side rotated how often.
    for h in past(local) {
        if h != 0 && h != JUST_CREATED && past(peer).contains(&h) {
            return v(SplitBrain, 100);
        }
    }
    v(Unrelated, 100)
}

/// Why a rate configuration was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// A rate of 0 or above 64 GiB/s.
    RateRange,
    /// A step length outside 10..=10000 ms.
    StepRange,
    /// Plan-ahead steps (`N`) outside 1..=256.
    PlanRange,
}

impl Error {
    /// Human-readable message.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::RateRange => "rate must be 1 byte/s .. 64 GiB/s",
            Error::StepRange => "step must be 10..=10000 ms",
            Error::PlanRange => "plan-ahead must be 1..=256 steps",
        }
    }
}

/// Largest accepted rate, bytes per second (keeps every product below 2^63).
pub const MAX_RATE: u64 = 64 << 30;

/// Fixed-rate token bucket: at most `rate` bytes/s, with bursts up to `burst` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u64,
    burst: u64,
    tokens: u64,
    /// Sub-byte remainder, in byte·ms (< 1000).
    frac: u64,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket at `now_ms`; `burst` is raised to at least one second's worth / 10.
    pub fn new(rate: u64, burst: u64, now_ms: u64) -> Result<Self, Error> {
        if rate == 0 || rate > MAX_RATE {
            return Err(Error::RateRange);
        }
        let burst = burst.max(rate / 10).max(1);
        Ok(TokenBucket { rate, burst, tokens: burst, frac: 0, last_ms: now_ms })
    }

    fn refill(&mut self, now_ms: u64) {
        // Capping the elapsed time at 100 s keeps rate * dt below 2^63.
        let dt = now_ms.saturating_sub(self.last_ms).min(100_000);
        self.last_ms = self.last_ms.max(now_ms);
        let milli = self.rate * dt + self.frac;
        self.tokens = self.tokens.saturating_add(milli / 1000).min(self.burst);
        self.frac = if self.tokens == self.burst { 0 } else { milli % 1000 };
    }

    /// How many of the `want` bytes may be issued now (they are taken from the bucket).
    pub fn grant(&mut self, now_ms: u64, want: u64) -> u64 {
        self.refill(now_ms);
        let n = want.min(self.tokens);
        self.tokens -= n;
        n
    }
}

/// Configuration of the dynamic resync controller (DRBD's `c-*` disk options).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerConfig {
    /// Length of one controller step, ms (DRBD's `SLEEP_TIME`, 100 ms): 10..=10000.
    pub step_ms: u32,
    /// Bytes to keep in flight (0 = derive from `delay_target_ms` and the measured rate).
    pub fill_target: u64,
    /// Wanted in-flight time when `fill_target` is 0, ms.
    pub delay_target_ms: u32,
    /// Upper bound, bytes/s (`c-max-rate`).
    pub max_rate: u64,
    /// Rate used before anything completed, bytes/s (`resync-rate`).
    pub initial_rate: u64,
}

impl ControllerConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), Error> {
        if !(10..=10_000).contains(&self.step_ms) {
            return Err(Error::StepRange);
        }
        for r in [self.max_rate, self.initial_rate] {
            if r == 0 || r > MAX_RATE {
                return Err(Error::RateRange);
            }
        }
        if self.fill_target > MAX_RATE || self.delay_target_ms > 100_000 {
            return Err(Error::RateRange);
        }
        Ok(())
    }
}

/// DRBD's plan-ahead resync controller (`drbd_rs_controller`) over `N` steps, in bytes.
///
/// Every step it aims at `want` bytes in flight (the fill target), spreads the missing
/// amount evenly over the next `N` steps, and issues what came back in the last step plus
/// this step's planned correction, capped at `max_rate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Controller<const N: usize> {
    cfg: ControllerConfig,
    plan: [i64; N],
    head: usize,
    total: i64,
    in_flight: u64,
    came_in: u64,
    next_step_ms: u64,
}

impl<const N: usize> Controller<N> {
    /// A controller starting its first step at `now_ms`.
    pub fn new(cfg: ControllerConfig, now_ms: u64) -> Result<Self, Error> {
        cfg.validate()?;
        if N == 0 || N > 256 {
            return Err(Error::PlanRange);
        }
        Ok(Controller { cfg, plan: [0; N], head: 0, total: 0, in_flight: 0, came_in: 0, next_step_ms: now_ms })
    }

    /// Bytes issued and not completed yet.
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Resync requests of `bytes` completed (data arrived / written).
    pub fn completed(&mut self, bytes: u64) {
        let b = bytes.min(self.in_flight);
        self.in_flight -= b;
        self.came_in = self.came_in.saturating_add(b);
    }

    /// Resync requests were lost with the connection: forget them.
    pub fn reset_in_flight(&mut self) {
        self.in_flight = 0;
    }

    fn per_step(&self, rate: u64) -> i64 {
        (rate * u64::from(self.cfg.step_ms) / 1000) as i64
    }

    /// Convenience: [`Controller::completed`] then [`Controller::on_tick`].
    pub fn step(&mut self, now_ms: u64, completed_bytes: u64) -> u64 {
        self.completed(completed_bytes);
        self.on_tick(now_ms)
    }

    /// Timer: returns how many bytes of resync requests to issue now (0 between steps).
    pub fn on_tick(&mut self, now_ms: u64) -> u64 {
        if now_ms < self.next_step_ms {
            return 0;
        }
        self.next_step_ms = now_ms.saturating_add(u64::from(self.cfg.step_ms));
        let steps = N as i64;
        let sect_in = self.came_in.min(MAX_RATE) as i64;
        self.came_in = 0;
        let in_flight = self.in_flight.min(MAX_RATE) as i64;
        let want: i64 = if in_flight + sect_in == 0 {
            self.per_step(self.cfg.initial_rate).saturating_mul(steps)
        } else if self.cfg.fill_target != 0 {
            self.cfg.fill_target as i64
        } else {
            // sect_in per step, times how many steps the delay target spans.
            sect_in.saturating_mul(i64::from(self.cfg.delay_target_ms)) / i64::from(self.cfg.step_ms)
        };
        let correction = want.saturating_sub(in_flight).saturating_sub(self.total);
        let cps = correction / steps;
        for p in self.plan.iter_mut() {
            *p = p.saturating_add(cps);
        }
        self.total = self.total.saturating_add(cps.saturating_mul(steps));
        let curr = self.plan[self.head];
        self.plan[self.head] = 0;
        self.head = (self.head + 1) % N;
        self.total = self.total.saturating_sub(curr);
        let req = sect_in.saturating_add(curr).clamp(0, self.per_step(self.cfg.max_rate)) as u64;
        self.in_flight = self.in_flight.saturating_add(req);
        req
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_brain_resolution_follows_the_discarding_side() {
        assert_eq!(resolve_split_brain(90, true, false), Some(Decision::SyncTarget { full: false }));
        assert_eq!(resolve_split_brain(90, false, true), Some(Decision::SyncSource { full: false }));
        // Without a common bitmap generation the bitmaps do not cover everything.
        assert_eq!(resolve_split_brain(100, true, false), Some(Decision::SyncTarget { full: true }));
        assert_eq!(resolve_split_brain(45, false, true), Some(Decision::SyncSource { full: true }));
        assert_eq!(resolve_split_brain(90, false, false), None);
        assert_eq!(resolve_split_brain(90, true, true), None);
    }
    use Decision::*;

    fn u(current: u64, bitmap: u64, h0: u64, h1: u64) -> Uuids {
        Uuids { current, bitmap, history: [h0, h1], flags: 0 }
    }

    fn both(a: &Uuids, b: &Uuids) -> (Verdict, Verdict) {
        (compare(a, b, true), compare(b, a, false))
    }

    fn mirrored(d: Decision) -> Decision {
        match d {
            SyncSource { full } => SyncTarget { full },
            SyncTarget { full } => SyncSource { full },
            x => x,
        }
    }

    #[test]
    fn initial_sync_is_never_assumed() {
        let fresh = Uuids::just_created();
        assert!(undecided(&fresh, &fresh));
        // --clear-bitmap on both: same generation, nothing to copy.
        let day0 = u(DAY0, 0, 0, 0);
        assert!(!undecided(&day0, &day0));
        assert_eq!(compare(&day0, &day0, true).decision, NoSync);
        // --overwrite-data-of-peer on one side: a full sync from it.
        let mut src = fresh;
        src.new_current(0x1234_5678_9abc_def0);
        assert!(!undecided(&src, &fresh));
        assert_eq!(both(&src, &fresh).0.decision, SyncSource { full: true });
        assert_eq!(both(&src, &fresh).1.decision, SyncTarget { full: true });
        // One side cleared and then written without its peer, the other fresh: full sync.
        let mut w = day0;
        w.new_current(0x42);
        assert_eq!(compare(&w, &day0, true).decision, SyncSource { full: false });
        assert_eq!(compare(&w, &fresh, true).decision, SyncSource { full: true });
        // Both written apart from DAY0: split brain.
        let mut x = day0;
        x.new_current(0x1000);
        assert_eq!(compare(&w, &x, true).decision, SplitBrain);
    }

    #[test]
    fn a_detached_disk_is_never_a_source_again() {
        // In sync at generation 0x100; the primary's disk fails: both adopt 0x200 (the
        // primary in memory), the failed disk keeps 0x100 on its superblock.
        let synced = u(0x100, 0, 0x80, 0);
        let mut sec = synced;
        sec.peer_detached(0x200);
        let mut pri = synced;
        pri.peer_detached(0x200);
        assert_eq!((sec.current, sec.bitmap, sec.history), (0x200, 0, [0x100, 0x80]));
        // Still connected (or reconnecting): the same generation, nothing to resync.
        assert_eq!(compare(&pri, &sec, true).decision, NoSync);
        // Adopting it twice changes nothing (the notice is sent again on every connection).
        let again = { let mut x = sec; x.peer_detached(0x200); x };
        assert_eq!(again, sec);
        // The old disk comes back with its old superblock: a full sync to it, from either
        // side's view; never a source, never a bitmap-based sync (nothing tracked its misses).
        let (x, y) = both(&synced, &sec);
        assert_eq!((x.decision, x.rule), (SyncTarget { full: true }, 60));
        assert_eq!((y.decision, y.rule), (SyncSource { full: true }, 80));
        // The notice was lost: the primary's rotation alone tells them apart.
        assert!(detach_notice_missed(&pri, &synced));
        assert!(!detach_notice_missed(&pri, &sec) && !detach_notice_missed(&synced, &sec));
        // Even after the secondary was promoted and wrote on.
        let mut promoted = sec;
        promoted.new_current(0x300);
        assert_eq!(compare(&synced, &promoted, true).decision, SyncTarget { full: true });
    }

    #[test]
    fn fresh_and_initial() {
        let a = Uuids::just_created();
        assert_eq!(compare(&a, &a, true).decision, NoSync);
        let mut b = a;
        b.new_current(0x1000);
        assert_eq!(b.bitmap, JUST_CREATED);
        let (x, y) = both(&b, &a);
        assert_eq!((x.decision, x.rule), (SyncSource { full: true }, 30));
        assert_eq!((y.decision, y.rule), (SyncTarget { full: true }, 20));
    }

    #[test]
    fn outage_primary_is_source() {
        let base = u(0xA0, 0, 0, 0);
        let mut p = base;
        p.new_current(0xB0);
        let (x, y) = both(&p, &base);
        assert_eq!((x.decision, x.rule), (SyncSource { full: false }, 70));
        assert_eq!((y.decision, y.rule), (SyncTarget { full: false }, 50));
        // Second outage before the resync finished: still bitmap-based.
        p.new_current(0xC0);
        assert_eq!(p.bitmap, 0xA0);
        assert_eq!(compare(&p, &base, true).decision, SyncSource { full: false });
        // Finish.
        let mut s = base;
        s.sync_finished_target(&p);
        p.sync_finished_source();
        assert_eq!(compare(&p, &s, true).decision, NoSync);
        assert_eq!(s, p);
    }

    #[test]
    fn split_brain_detected_both_ways() {
        let base = u(0xA0, 0, 0x10, 0);
        let mut p = base;
        let mut s = base;
        p.new_current(0xB0);
        s.new_current(0xC0);
        let (x, y) = both(&p, &s);
        assert_eq!((x.decision, x.rule), (SplitBrain, 90));
        assert_eq!(y.decision, SplitBrain);
        // Deeper divergence: only history in common.
        p.new_current(0xD0);
        p.sync_finished_source();
        let (x, y) = both(&p, &s);
        assert_eq!(x.decision, SplitBrain);
        assert_eq!(y.decision, SplitBrain);
        assert_eq!(compare(&u(0x50, 0, 0x60, 0), &u(0x70, 0, 0x80, 0), true).decision, Unrelated);
    }

    #[test]
    fn crashed_primary() {
        let mut a = u(0xA0, 0, 0, 0);
        let b = a;
        a.flags = FLAG_CRASHED_PRIMARY;
        let (x, y) = both(&a, &b);
        assert_eq!(x.decision, SyncSource { full: false });
        assert_eq!(y.decision, SyncTarget { full: false });
        let c = a;
        let (x, y) = both(&a, &c);
        assert_eq!(mirrored(x.decision), y.decision);
        assert_eq!(x.rule, 40);
    }

    #[test]
    fn missed_finish_and_lost_start() {
        // Target finished, source crashed before clearing its bitmap UUID.
        let mut src = u(0xB0, 0xA0, 0, 0);
        let mut tgt = u(0xA0, 0, 0, 0);
        tgt.sync_finished_target(&src);
        let (x, y) = both(&src, &tgt);
        assert_eq!((x.decision, x.rule, x.fixup), (SyncSource { full: false }, 34, Fixup::FinishOwnSync));
        assert_eq!((y.decision, y.rule), (SyncTarget { full: false }, 35));
        src.sync_finished_source();
        assert_eq!(compare(&src, &tgt, true).decision, NoSync);
        // Lost sync start: source bumped its bitmap UUID, target never heard.
        let me = u(0xB0, 0xA0 + NEW_BM_OFFSET, 0xA0, 0);
        let peer = u(0xA0, 0, 0, 0);
        let x = compare(&me, &peer, true);
        assert_eq!((x.rule, x.fixup), (71, Fixup::UndoOwnSyncStart));
        assert_eq!(compare(&peer, &me, false).rule, 51);
    }

    /// Random UUID sets built from a tiny alphabet: the verdicts of both sides always
    /// mirror each other (except for the one-sided fix-up rules and the tie-breaker).
    #[test]
    fn verdicts_mirror() {
        let vals = [0u64, JUST_CREATED, 0x10, 0x20, 0x30];
        let mut n = 0u32;
        let total = 5u32.pow(8) * 4;
        while n < total {
            let mut k = n;
            let mut pick = || {
                let x = vals[(k % 5) as usize];
                k /= 5;
                x
            };
            let a = u(pick(), pick(), pick(), pick());
            let b = u(pick(), pick(), pick(), pick());
            let mut a = a;
            let mut b = b;
            a.flags = k & 1;
            b.flags = (k >> 1) & 1;
            let x = compare(&a, &b, true);
            let y = compare(&b, &a, false);
            let asym = matches!(x.rule, 34..=37 | 51 | 71) || matches!(y.rule, 34..=37 | 51 | 71);
            if !asym {
                assert_eq!(mirrored(x.decision), y.decision, "{a:?} {b:?} {x:?} {y:?}");
            }
            n += 1;
        }
    }

    #[test]
    fn token_bucket_rate() {
        let mut tb = TokenBucket::new(1_000_000, 0, 0).unwrap();
        let mut total = tb.grant(0, u64::MAX);
        assert_eq!(total, 100_000, "initial burst");
        for t in 1..=10_000u64 {
            total += tb.grant(t, 4096);
        }
        // 10 s at 1 MB/s plus the initial burst.
        assert!((10_000_000..=10_100_000).contains(&total), "{total}");
        assert_eq!(TokenBucket::new(0, 0, 0), Err(Error::RateRange));
        assert_eq!(tb.grant(u64::MAX, u64::MAX), 100_000);
    }

    #[test]
    fn controller_converges_to_fill_target() {
        let cfg = ControllerConfig {
            step_ms: 100,
            fill_target: 1 << 20,
            delay_target_ms: 0,
            max_rate: 1 << 30,
            initial_rate: 10 << 20,
        };
        let mut c: Controller<20> = Controller::new(cfg, 0).unwrap();
        // The "network" completes a fixed 200 KiB per step (2 MB/s), after one step delay.
        let mut pending = 0u64;
        let mut fill = 0;
        for step in 0..400u64 {
            let done = pending.min(200 << 10);
            pending -= done;
            c.completed(done);
            fill = c.in_flight();
            let issued = c.on_tick(step * 100);
            pending += issued;
            assert_eq!(c.on_tick(step * 100 + 50), 0, "between steps");
        }
        assert!(((1 << 20) * 9 / 10..=(1 << 20) * 11 / 10).contains(&fill), "{fill}");
        assert_eq!(Controller::<0>::new(cfg, 0), Err(Error::PlanRange));
        let mut bad = cfg;
        bad.step_ms = 5;
        assert_eq!(bad.validate(), Err(Error::StepRange));
    }

    #[test]
    fn controller_respects_max_rate() {
        let cfg = ControllerConfig {
            step_ms: 100,
            fill_target: 0,
            delay_target_ms: 1000,
            max_rate: 1 << 20,
            initial_rate: 64 << 20,
        };
        let mut c: Controller<10> = Controller::new(cfg, 0).unwrap();
        for step in 0..100u64 {
            let inf = c.in_flight();
            c.completed(inf);
            assert!(c.on_tick(step * 100) <= (1 << 20) / 10);
        }
    }
}
