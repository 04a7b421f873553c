// SPDX-License-Identifier: GPL-2.0
//! Generation UUIDs (DRBD's data generations): kept in the superblock, sent in the handshake,
//! and compared with the peer's by the core (`rcore::state::resync::compare`) to decide whether
//! the connection may replicate, in which direction, and whether the bitmap suffices or a full
//! sync is needed.
//!
//! The primary is always the sync source: a verdict that would make it a target (the peer holds
//! newer data), split brain (both sides wrote while apart) and unrelated data are refused,
//! logged, and the primary goes standalone; nothing is overwritten. A failover makes the
//! secondary primary (`rmirrorctl primary`, which starts a new generation: [`Device::promoted`]),
//! and the old primary comes back as secondary, the sync target.
//! Fresh metadata on both sides is refused too (nobody said which data counts; see
//! `rmirrorctl create-md --overwrite-data-of-peer` and `--clear-bitmap`).
//!
//! The primary starts a new generation (`Uuids::new_current`) once per absence of its peer: the
//! first write that does not reach it (marked in the bitmap or kept in the outage queue), or a
//! lost replicating connection, whose new UUID is on disk before the writes in flight complete.
//! On every connection the primary sends its UUIDs again (`Uuids`, right before its bitmap:
//! they may have changed since the handshake). When the secondary's bitmap is empty after the
//! bitmap or the last resync write, it adopts them (`sync_finished_target`), writes them to
//! disk and answers `InSync` with its new current UUID; only then does the primary end the
//! generation (`sync_finished_source`), as DRBD's source finishes only after the target
//! confirmed (a lost `InSync` is repaired by rule 34 at the next handshake). With `meta=core`
//! no generations are kept and the handshake carries zeros: the primary is the source.

use crate::device::{Device, Role};
use crate::rcore::state::resync::{self, compare, Decision, Fixup, Uuids};
use crate::rcore::wire;
use kernel::prelude::*;

/// The device's generations and what is pending about them (under [`Device::uuids`], a leaf
/// lock taken from any context).
pub(crate) struct Gen {
    /// Our UUIDs; `None` with `meta=core`.
    pub(crate) ours: Option<Uuids>,
    /// Secondary: the sync source's UUIDs from its `Uuids` message, with the connection's
    /// generation.
    pub(crate) peer: Option<(u64, Uuids)>,
    /// Primary: the peer said `InSync` with this current UUID on this connection.
    pub(crate) peer_in_sync: Option<(u64, u64)>,
    /// Primary: a generation was started for the current absence of the peer (set at load
    /// when the bitmap UUID is, as DRBD starts one only when it is clear).
    pub(crate) written_apart: bool,
    /// Primary: the current UUID sent in a `Uuids` message (the peer may have adopted it, so
    /// writing apart must start a new one even if `written_apart`).
    pub(crate) shared: Option<u64>,
    /// The data is consistent (`MDF_CONSISTENT`): false on a sync target until it finishes.
    pub(crate) consistent: bool,
    /// The superblock must be written.
    pub(crate) dirty: bool,
}

impl Gen {
    /// No generations (`meta=core`).
    pub(crate) const NONE: Gen = Gen {
        ours: None,
        peer: None,
        peer_in_sync: None,
        written_apart: false,
        shared: None,
        consistent: true,
        dirty: false,
    };
}

/// Why a handshake was refused when both sides wrote while apart. A primary goes standalone,
/// and so does a secondary: the user decides which side's data is discarded.
pub(crate) const SPLIT_BRAIN: &str = "split brain: both sides wrote while apart; nothing is overwritten \
    (on the side whose writes are to be discarded, as secondary: rmirrorctl connect NAME --discard-my-data; \
    then rmirrorctl connect NAME on the other)";

/// The wire form of `u` (flags are not on the wire).
pub(crate) fn to_wire(u: &Uuids) -> wire::Uuids {
    wire::Uuids { current: u.current, bitmap: u.bitmap, history: u.history }
}

pub(crate) fn from_wire(w: &wire::Uuids) -> Uuids {
    Uuids { current: w.current, bitmap: w.bitmap, history: w.history, flags: 0 }
}

/// Formats UUIDs as DRBD does: `current:bitmap:history0:history1` in hex.
struct Show(Uuids);

impl core::fmt::Display for Show {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let u = &self.0;
        write!(f, "{:016X}:{:016X}:{:016X}:{:016X}", u.current, u.bitmap, u.history[0], u.history[1])
    }
}

impl kernel::fmt::Display for Show {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Display::fmt(self, f)
    }
}

impl Device {
    /// Whether generations are kept (on-disk metadata).
    pub(crate) fn has_uuids(&self) -> bool {
        self.uuids.lock().ours.is_some()
    }

    /// Our UUIDs for the handshake (zeros without metadata).
    pub(crate) fn wire_uuids(&self) -> wire::Uuids {
        self.uuids.lock().ours.as_ref().map(to_wire).unwrap_or_default()
    }

    /// Primary: our UUIDs for the `Uuids` message, remembered as shared with the peer.
    pub(crate) fn share_uuids(&self) -> wire::Uuids {
        let mut g = self.uuids.lock();
        let u = g.ours.as_ref().map(to_wire).unwrap_or_default();
        g.shared = g.ours.map(|o| o.current);
        u
    }

    /// Decides, from both sides' UUIDs, whether the new connection may replicate. `Err` is the
    /// reason to refuse it; on the primary, a refusal also means standalone (`true` in the
    /// error: retrying cannot help).
    pub(crate) fn check_uuids(&self, peer: &wire::Uuids, peer_discards: bool)
        -> core::result::Result<(), (&'static str, bool)> {
        let peer = from_wire(peer);
        let (ours, verdict) = {
            let mut g = self.uuids.lock();
            let Some(ours) = g.ours else {
                if peer.current != 0 {
                    return Err(("the peer keeps metadata and we do not (meta=core)", true));
                }
                return Ok(());
            };
            if peer.current == 0 {
                return Err(("the peer keeps no metadata (meta=core) and we do", true));
            }
            if resync::undecided(&ours, &peer) {
                return Err(("both sides have fresh metadata: run create-md --overwrite-data-of-peer on \
                    the side whose data counts, or create-md --clear-bitmap on both", true));
            }
            let mut v = compare(&ours, &peer, self.role() == Role::Primary);
            if self.disk() != crate::detach::ATTACHED && self.role() == Role::Primary
                && resync::detach_notice_missed(&ours, &peer) {
                // Our disk is detached and the peer missed only the generation of its Detached
                // notice (the link went first): it is sent again on this connection.
                v = resync::Verdict { decision: Decision::NoSync, rule: 0, fixup: Fixup::None };
            }
            if v.fixup == Fixup::FinishOwnSync {
                // Rule 34: the peer finished our last resync but its InSync never arrived.
                if let Some(o) = g.ours.as_mut() {
                    o.sync_finished_source();
                }
                g.written_apart = false;
                g.dirty = true;
            }
            (g.ours.unwrap_or(ours), v)
        };
        if verdict.fixup == Fixup::FinishOwnSync
            && (self.bitmap.lock().weight() > 0 || !self.conn.lock().outq.is_empty())
        {
            // Written apart again since: the peer's generation is behind once more.
            self.writing_without_peer();
        }
        pr_info!("{}: generations: ours {}, peer's {}: {} (rule {})\n", &*self.cfg.name, Show(ours),
            Show(peer), verdict.decision.as_str(), verdict.rule);
        let mut decision = verdict.decision;
        if decision == Decision::SplitBrain {
            // The user's resolution: the side that said `connect --discard-my-data` (always the
            // secondary) becomes the sync target, from both bitmaps (see resolve_split_brain).
            let ours_discard = core::mem::take(&mut self.conn.lock().discard_my_data);
            if let Some(d) = resync::resolve_split_brain(verdict.rule, ours_discard, peer_discards) {
                pr_warn!("{}: split brain resolved: {} ({}): {}\n", &*self.cfg.name,
                    if ours_discard { "our data is discarded" } else { "the peer discards its data" },
                    "discard-my-data", d.as_str());
                decision = d;
            } else if ours_discard {
                // Both sides asked: nothing is resolved; the flag stays for the next try.
                self.conn.lock().discard_my_data = true;
            }
        }
        match (self.role(), decision) {
            (Role::Secondary, Decision::NoSync) if self.inconsistent() && self.bitmap.lock().weight() == 0 => {
                // Same generation, but our data is known incomplete and no bitmap says where (a
                // re-attached disk whose pull was interrupted): everything.
                let n = self.bitmap.lock().set_all();
                pr_info!("{}: inconsistent data: full sync from the peer: {} regions marked
", &*self.cfg.name, n);
                Ok(())
            }
            (Role::Primary, Decision::NoSync) | (Role::Secondary, Decision::NoSync) => Ok(()),
            (Role::Secondary, Decision::SyncTarget { full: true }) => {
                // Resolved split brain without a common bitmap generation: everything.
                let n = self.bitmap.lock().set_all();
                pr_info!("{}: full sync from the peer: {} regions marked\n", &*self.cfg.name, n);
                Ok(())
            }
            (Role::Primary, Decision::SyncSource { full }) => {
                if full {
                    let n = self.bitmap.lock().set_all();
                    pr_info!("{}: full sync to the peer: {} regions marked\n", &*self.cfg.name, n);
                }
                Ok(())
            }
            // Inconsistent only once the bitmap says what is missing (a replayed outage queue
            // keeps this side a consistent prefix).
            (Role::Secondary, Decision::SyncTarget { .. }) => Ok(()),
            (_, Decision::SplitBrain) => Err((SPLIT_BRAIN, true)),
            (_, Decision::Unrelated) => Err(("the peer holds unrelated data", true)),
            (Role::Primary, Decision::SyncTarget { .. }) => Err(("the peer holds newer data: the \
                primary will not overwrite it", true)),
            (Role::Secondary, Decision::SyncSource { .. }) => Err(("we hold newer data than the \
                primary: refusing to be overwritten", true)),
        }
    }

    /// Primary: a write will not reach the peer (any context). The first one of an absence of
    /// the peer starts a new data generation (not from fresh metadata: the initial sync is the
    /// user's decision).
    pub(crate) fn writing_without_peer(&self) {
        if self.role() != Role::Primary || self.disk() == crate::detach::DETACHED {
            // A detached primary writes nothing without its peer (such writes fail).
            return;
        }
        let mut g = self.uuids.lock();
        let Some(current) = g.ours.map(|o| o.current) else { return };
        if (g.written_apart && g.shared != Some(current)) || current & !1 == resync::JUST_CREATED {
            return;
        }
        let Some(ours) = g.ours.as_mut() else { return };
        ours.new_current(crate::bindings::random_u64() | 2);
        g.written_apart = true;
        g.consistent = true;
        g.dirty = true;
    }

    /// Promotion (while disconnected): a new data generation, so whatever the old primary
    /// wrote that never reached us is told apart when it comes back (it becomes the sync
    /// target, or a split brain if it wrote while apart too).
    pub(crate) fn promoted(&self) {
        let mut g = self.uuids.lock();
        let Some(ours) = g.ours.as_mut() else { return };
        ours.new_current(crate::bindings::random_u64() | 2);
        g.written_apart = true;
        g.shared = None;
        g.peer = None;
        g.peer_in_sync = None;
        g.consistent = true;
        g.dirty = true;
    }

    /// Secondary: the source's UUIDs for connection `generation` (its `Uuids` message).
    pub(crate) fn peer_uuids(&self, generation: u64, peer: &wire::Uuids) {
        let mut g = self.uuids.lock();
        if g.ours.is_some() {
            g.peer = Some((generation, from_wire(peer)));
        }
    }

    /// Secondary: the bitmap of connection `generation` says data is missing: the superblock
    /// records it (on disk before any resync data is written).
    pub(crate) fn target_inconsistent(&self) -> Result {
        {
            let mut g = self.uuids.lock();
            if g.ours.is_none() || !g.consistent {
                return Ok(());
            }
            g.consistent = false;
            g.dirty = true;
        }
        self.md_writeback(false)
    }

    /// Secondary: our bitmap became empty on connection `generation`: adopt the source's
    /// generation and write it to disk. Returns the current UUID to confirm with `InSync`.
    pub(crate) fn target_in_sync(&self, generation: u64) -> Option<u64> {
        let current = {
            let mut g = self.uuids.lock();
            let Some((gen, p)) = g.peer else { return None };
            if gen != generation {
                return None;
            }
            let ours = g.ours.as_mut()?;
            let adopt = ours.current != p.current || ours.bitmap != 0;
            if adopt {
                ours.sync_finished_target(&p);
            }
            let current = ours.current;
            g.dirty |= adopt;
            if !g.consistent {
                g.consistent = true;
                g.dirty = true;
            }
            current
        };
        self.md_writeback(false).ok()?;
        Some(current)
    }

    /// Primary: the peer confirmed `InSync` with `current` on connection `generation`.
    pub(crate) fn peer_in_sync(&self, generation: u64, current: u64) {
        self.uuids.lock().peer_in_sync = Some((generation, current));
        self.source_check_finished(generation);
    }

    /// Primary: ends the generation once the peer confirmed it holds it and nothing is left to
    /// copy on connection `generation`.
    pub(crate) fn source_check_finished(&self, generation: u64) {
        if self.bitmap.lock().weight() > 0 || !self.resync.lock().pending.is_empty() {
            return;
        }
        let mut g = self.uuids.lock();
        let Some(ours) = g.ours.as_mut() else { return };
        let current = ours.current;
        if g.peer_in_sync.take_if(|(gen, cur)| *gen == generation && *cur == current).is_none() {
            return;
        }
        if let Some(ours) = g.ours.as_mut() {
            if ours.bitmap != 0 {
                ours.sync_finished_source();
                g.dirty = true;
            }
        }
        g.written_apart = false;
    }

    /// Whether this side's data is known inconsistent (a sync target that has not finished).
    pub(crate) fn inconsistent(&self) -> bool {
        !self.uuids.lock().consistent
    }
}
