// SPDX-License-Identifier: GPL-2.0
//! State-change events (`rmirrorctl events`, like `drbdsetup events2`; format in
//! `rcore::abi::events`): a module-wide ring of the last [`RING`] event lines, read with the
//! EVENTS ioctl from a sequence number on.
//!
//! Each device reports its own changes from its meta thread, at every tick (100 ms) and after
//! every message: the connection states its machine entered since the last report (the core's
//! journal, so no state is missed however short), and its role, disk and replication states
//! compared with what it reported last. `create` and `destroy` lines come from the control
//! plane.

use crate::device::Device;
use crate::rcore::abi::{events, status, TextWriter};
use core::fmt::Write;
use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, CondVar, Mutex};

/// Event lines kept.
pub(crate) const RING: usize = 256;

struct Ring {
    /// Line `seq` is at `seq % RING` (without its newline), with its length.
    lines: KVec<[u8; events::LINE_MAX]>,
    lens: KVec<u8>,
    /// Sequence number of the next event.
    next: u64,
}

/// The module's event ring.
#[pin_data]
pub(crate) struct Events {
    #[pin]
    ring: Mutex<Ring>,
    /// Signalled on every new event.
    #[pin]
    added: CondVar,
}

/// What a device reported last (see [`Device::report_events`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Reported {
    pub(crate) role: &'static str,
    pub(crate) cstate: &'static str,
    pub(crate) disk: &'static str,
    pub(crate) repl: &'static str,
    /// When (device clock, ms) it was last compared.
    pub(crate) at_ms: u64,
}

/// How often a device compares its states with what it reported.
const REPORT_EVERY_MS: u64 = 50;

impl Reported {
    fn fields(&self) -> [(&'static str, &'static str); 4] {
        [(status::ROLE, self.role), (status::CSTATE, self.cstate), (status::DISK, self.disk),
            (status::REPL, self.repl)]
    }
}

impl Events {
    pub(crate) fn new() -> impl PinInit<Self, Error> {
        try_pin_init!(Events {
            ring <- new_mutex!(Ring {
                lines: KVec::from_elem([0u8; events::LINE_MAX], RING, GFP_KERNEL)?,
                lens: KVec::from_elem(0u8, RING, GFP_KERNEL)?,
                next: 0,
            }),
            added <- new_condvar!(),
        }? Error)
    }

    /// Adds the event `kind` of device `name` with `fields` (process context).
    pub(crate) fn emit(&self, kind: &str, name: &str, fields: &[(&str, &str)]) {
        let mut line = [0u8; events::LINE_MAX];
        let mut ring = self.ring.lock();
        let seq = ring.next;
        let n = {
            let mut w = TextWriter::new(&mut line);
            let _ = write!(w, "{} {} {}={}", seq, kind, status::NAME, name);
            for (k, v) in fields {
                let _ = write!(w, " {}={}", k, v);
            }
            w.len()
        };
        let i = (seq % RING as u64) as usize;
        let r = &mut *ring;
        if let (Some(l), Some(len)) = (r.lines.get_mut(i), r.lens.get_mut(i)) {
            *l = line;
            *len = u8::try_from(n).unwrap_or(0);
        }
        ring.next += 1;
        drop(ring);
        self.added.notify_all();
    }

    /// EVENTS: writes the kept lines from `since` on (whole lines, as many as fit), waiting up
    /// to a second for one if there is none yet; `Now` writes the next sequence number.
    pub(crate) fn read(&self, since: events::Since, w: &mut TextWriter<'_>) -> Result {
        let mut ring = self.ring.lock();
        let since = match since {
            events::Since::Now => return write!(w, "{}", ring.next).map_err(|_| ENOSPC),
            events::Since::Seq(s) => s,
        };
        if since >= ring.next {
            let r = self.added.wait_interruptible_timeout(&mut ring, kernel::time::msecs_to_jiffies(1000));
            if matches!(r, kernel::sync::CondVarTimeoutResult::Signal { .. }) {
                return Err(ERESTARTSYS);
            }
        }
        // Lines older than the ring are gone: the reader sees the gap in the numbers.
        let first = since.max(ring.next.saturating_sub(RING as u64));
        for seq in first..ring.next {
            let i = (seq % RING as u64) as usize;
            let (Some(l), Some(len)) = (ring.lines.get(i), ring.lens.get(i)) else { break };
            let text = l.get(..usize::from(*len)).unwrap_or(&[]);
            let before = w.len();
            if w.write_bytes(text).is_err() || w.write_bytes(b"\n").is_err() {
                w.truncate(before);
                break;
            }
        }
        Ok(())
    }
}

impl Device {
    /// The states events report, as they are now.
    pub(crate) fn current_states(&self) -> Reported {
        Reported {
            role: self.role().as_str(),
            cstate: self.cstate().as_str(),
            disk: crate::resync::disk_state(self),
            repl: crate::resync::repl_state(self),
            at_ms: 0,
        }
    }

    /// The `create` event, with every state.
    pub(crate) fn report_created(&self) {
        let now = self.current_states();
        let _ = self.conn.lock().sm.take_journal();
        *self.reported.lock() = now;
        self.events.emit(events::CREATE, &self.cfg.name.to_str().unwrap_or("?"), &now.fields());
    }

    /// Reports what changed since the last report (meta thread; at most every
    /// [`REPORT_EVERY_MS`], it runs after every message too).
    pub(crate) fn report_events(&self) {
        let mut last = self.reported.lock();
        let now_ms = self.now_ms();
        if now_ms.saturating_sub(last.at_ms) < REPORT_EVERY_MS && last.at_ms != 0 {
            return;
        }
        last.at_ms = now_ms;
        let journal = self.conn.lock().sm.take_journal();
        let name = self.cfg.name.to_str().unwrap_or("?");
        if journal.dropped > 0 {
            pr_info!("{}: events: {} connection states not reported (they changed too fast)\n", name,
                journal.dropped);
        }
        for st in journal.states() {
            if st.as_str() != last.cstate {
                last.cstate = st.as_str();
                self.events.emit(events::CHANGE, name, &[(status::CSTATE, last.cstate)]);
            }
        }
        let now = Reported { cstate: last.cstate, at_ms: now_ms, ..self.current_states() };
        let mut changed: [(&str, &str); 4] = [("", ""); 4];
        let mut n = 0;
        for ((k, old), (_, new)) in Iterator::zip(last.fields().into_iter(), now.fields()) {
            if old != new {
                if let Some(c) = changed.get_mut(n) {
                    *c = (k, new);
                    n += 1;
                }
            }
        }
        if n > 0 {
            *last = now;
            self.events.emit(events::CHANGE, name, changed.get(..n).unwrap_or(&[]));
        }
    }
}
