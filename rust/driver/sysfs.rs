// SPDX-License-Identifier: GPL-2.0
//! `/sys/block/rmirrorN/rmirror/`: read-only views of the configuration and state, and the
//! tunables (`inline_max`, `resync_rate`, `outage_queue_bytes`, `al_extents`, `peer_durability` and the
//! connection timers), each
//! validated on write; see `Documentation/ABI-sysfs.rst`.

use crate::bindings::disk::Attribute;
use crate::device::{Addr, Device};
use crate::rcore::abi::{status, TextWriter};
use crate::outage::MAX_BYTES_LIMIT;
use crate::rcore::state::conn;
use crate::rcore::state::peer::Durability;
use crate::rcore::state::resync::MAX_RATE;
use crate::rcore::table::{INLINE_MAX_ALIGN, INLINE_MAX_LIMIT};
use core::fmt::Write;
use core::sync::atomic::Ordering;
use kernel::prelude::*;

/// Attribute ids: indexes into [`ATTRS`].
const NAME: usize = 0;
const ROLE: usize = 1;
const CSTATE: usize = 2;
const PEER: usize = 3;
const LOCAL: usize = 4;
const PROTOCOL: usize = 5;
const BACKING: usize = 6;
const INLINE_MAX: usize = 7;
const STATS: usize = 8;
const REPL: usize = 9;
const DISK: usize = 10;
const RESYNC_RATE: usize = 11;
const OUTAGE_QUEUE_BYTES: usize = 12;
const PING_INTERVAL: usize = 13;
const TIMEOUT: usize = 14;
const PROBATION: usize = 15;
const CONNECT_RETRY: usize = 16;
const OUTAGE_MAX: usize = 17;
const AL_EXTENTS: usize = 18;
const ACTIVITY_LOG: usize = 19;
const PEER_DURABILITY: usize = 20;

const fn ro(name: &'static kernel::str::CStr) -> Attribute {
    Attribute { name, writable: false }
}

/// The files of `/sys/block/rmirrorN/rmirror/`, by id.
pub(crate) static ATTRS: [Attribute; 21] = [
    ro(c"name"),
    ro(c"role"),
    ro(c"cstate"),
    ro(c"peer"),
    ro(c"local"),
    ro(c"protocol"),
    ro(c"backing"),
    Attribute { name: c"inline_max", writable: true },
    ro(c"stats"),
    ro(c"repl"),
    ro(c"disk"),
    Attribute { name: c"resync_rate", writable: true },
    Attribute { name: c"outage_queue_bytes", writable: true },
    Attribute { name: c"ping_interval", writable: true },
    Attribute { name: c"timeout", writable: true },
    Attribute { name: c"probation", writable: true },
    Attribute { name: c"connect_retry", writable: true },
    Attribute { name: c"outage_max", writable: true },
    Attribute { name: c"al_extents", writable: true },
    ro(c"activity_log"),
    Attribute { name: c"peer_durability", writable: true },
];

/// The connection timer behind attribute `attr` (milliseconds), with its file name.
fn timer(cfg: &mut conn::Config, attr: usize) -> Option<(&'static str, &mut u32)> {
    Some(match attr {
        PING_INTERVAL => ("ping_interval", &mut cfg.ping_interval_ms),
        TIMEOUT => ("timeout", &mut cfg.timeout_ms),
        PROBATION => ("probation", &mut cfg.probation_ms),
        CONNECT_RETRY => ("connect_retry", &mut cfg.connect_retry_ms),
        OUTAGE_MAX => ("outage_max", &mut cfg.outage_max_ms),
        _ => return None,
    })
}

/// Formats attribute `attr` into `page`; returns the length.
pub(crate) fn show(dev: &Device, attr: usize, page: &mut [u8]) -> Result<usize> {
    if attr == STATS {
        let end = page.len() - 1;
        let mut w = status::Writer::new(&mut page[..end]);
        dev.write_status(&mut w).map_err(|_| ENOSPC)?;
        let n = w.len();
        page[n] = b'\n';
        return Ok(n + 1);
    }
    let mut w = TextWriter::new(page);
    let r = match attr {
        NAME => writeln!(w, "{}", dev.cfg.name.to_str().unwrap_or("?")),
        ROLE => writeln!(w, "{}", dev.role().as_str()),
        CSTATE => writeln!(w, "{}", dev.cstate().as_str()),
        PEER => writeln!(w, "{}", Addr(dev.cfg.peer)),
        LOCAL => writeln!(w, "{}", Addr(dev.cfg.local)),
        PROTOCOL => writeln!(w, "{}", dev.cfg.protocol.as_str()),
        BACKING => writeln!(w, "{}", dev.cfg.backing_path.to_str().unwrap_or("?")),
        INLINE_MAX => writeln!(w, "{}", dev.inline_max.load(Ordering::Relaxed)),
        REPL => writeln!(w, "{}", crate::resync::repl_state(dev)),
        DISK => writeln!(w, "{}", crate::resync::disk_state(dev)),
        RESYNC_RATE => writeln!(w, "{}", dev.resync_rate.load(Ordering::Relaxed)),
        OUTAGE_QUEUE_BYTES => writeln!(w, "{}", dev.conn.lock().outq.max_bytes()),
        PING_INTERVAL | TIMEOUT | PROBATION | CONNECT_RETRY | OUTAGE_MAX => {
            let mut cfg = *dev.conn.lock().sm.config();
            let (_, v) = timer(&mut cfg, attr).ok_or(EINVAL)?;
            writeln!(w, "{}", *v)
        }
        AL_EXTENTS => match dev.al.lock().as_ref() {
            Some(a) => writeln!(w, "{}", a.log.config().nr_extents),
            None => writeln!(w, "0"),
        },
        ACTIVITY_LOG => {
            let snap = dev.al.lock().as_ref().map(|a| (a.stats, a.log.used(), *a.log.config(), a.log.next_seq()));
            match snap {
                Some((st, used, cfg, seq)) => write!(w,
                    "extents {}\nextent_bytes {}\nin_use {}\nwrites {}\nwaited {}\nwait_us {}\n\
                     transactions {}\nretired {}\nbusy {}\nnext_seq {}\n",
                    cfg.nr_extents, 1u64 << cfg.extent_shift, used, st.writes, st.waited, st.wait_us,
                    st.transactions, st.retired, st.busy, seq),
                None => writeln!(w, "none"),
            }
        }
        PEER_DURABILITY => writeln!(w, "{}", dev.durability().as_str()),
        _ => return Err(EINVAL),
    };
    r.map_err(|_| ENOSPC)?;
    Ok(w.len())
}

/// Parses and applies a write to attribute `attr`.
pub(crate) fn store(dev: &Device, attr: usize, input: &[u8]) -> Result {
    match attr {
        INLINE_MAX => {
            let v = parse_u32(input)
                .filter(|v| *v <= INLINE_MAX_LIMIT && v % INLINE_MAX_ALIGN == 0)
                .ok_or_else(|| {
                    pr_err!("{}: inline_max: expected a multiple of {} from 0 to {}\n",
                        &*dev.cfg.name, INLINE_MAX_ALIGN, INLINE_MAX_LIMIT);
                    EINVAL
                })?;
            dev.inline_max.store(v, Ordering::Relaxed);
            Ok(())
        }
        RESYNC_RATE => {
            let v = parse_u32(input).filter(|v| u64::from(*v) * 1024 <= MAX_RATE).ok_or_else(|| {
                pr_err!("{}: resync_rate: expected KiB/s from 0 (no cap) to {}\n", &*dev.cfg.name, MAX_RATE / 1024);
                EINVAL
            })?;
            dev.resync_rate.store(v, Ordering::Relaxed);
            Ok(())
        }
        OUTAGE_QUEUE_BYTES => {
            let v = parse_u32(input).map(u64::from).filter(|v| *v <= MAX_BYTES_LIMIT).ok_or_else(|| {
                pr_err!("{}: outage_queue_bytes: expected bytes from 0 (no queue) to {}\n", &*dev.cfg.name,
                    MAX_BYTES_LIMIT);
                EINVAL
            })?;
            dev.conn.lock().outq.set_max_bytes(v).inspect_err(|_| {
                pr_err!("{}: outage_queue_bytes: cannot change while writes are queued\n", &*dev.cfg.name);
            })
        }
        PING_INTERVAL | TIMEOUT | PROBATION | CONNECT_RETRY | OUTAGE_MAX => store_timer(dev, attr, input),
        AL_EXTENTS => {
            let v = parse_u32(input).ok_or_else(|| {
                pr_err!("{}: al_extents: expected a number of extents from {} to {}\n", &*dev.cfg.name,
                    crate::rcore::al::MIN_EXTENTS, crate::rcore::al::MAX_EXTENTS);
                EINVAL
            })?;
            dev.al_resize(v)
        }
        // Takes effect for the writes received from then on: each write records how it was
        // submitted (`peer_io::Owed`), so a change never leaves an ack without its guarantee.
        PEER_DURABILITY => {
            let d = Durability::parse(input).ok_or_else(|| {
                pr_err!("{}: peer_durability: expected fua or flush\n", &*dev.cfg.name);
                EINVAL
            })?;
            dev.group_commit.store(d == Durability::Flush, Ordering::Relaxed);
            pr_info!("{}: peer_durability set to {}\n", &*dev.cfg.name, d.as_str());
            Ok(())
        }
        _ => Err(EACCES),
    }
}

/// A connection timer: the state machine takes the new configuration after checking it whole
/// (`EINVAL`), and refuses it while a connection is up (`EBUSY`), so timers never change under
/// a running handshake or heartbeat.
fn store_timer(dev: &Device, attr: usize, input: &[u8]) -> Result {
    let value = parse_u32(input);
    let (file, r) = {
        let mut c = dev.conn.lock();
        let mut cfg = *c.sm.config();
        let (file, slot) = timer(&mut cfg, attr).ok_or(EACCES)?;
        let r = match value {
            Some(v) => {
                *slot = v;
                Some(c.sm.set_config(cfg))
            }
            None => None,
        };
        (file, r)
    };
    let name = &*dev.cfg.name;
    match (value, r) {
        (Some(v), Some(Ok(()))) => {
            pr_info!("{}: {} set to {} ms\n", name, file, v);
            Ok(())
        }
        (_, Some(Err(conn::Error::Busy))) => {
            pr_err!("{}: {}: cannot change while connected (rmirrorctl disconnect first)\n", name, file);
            Err(EBUSY)
        }
        (_, Some(Err(e))) => {
            pr_err!("{}: {}: {}\n", name, file, e.as_str());
            Err(EINVAL)
        }
        _ => {
            pr_err!("{}: {}: expected milliseconds, a decimal number\n", name, file);
            Err(EINVAL)
        }
    }
}

/// Decimal digits with an optional trailing newline, as `echo` writes them.
fn parse_u32(input: &[u8]) -> Option<u32> {
    let s = core::str::from_utf8(input).ok()?;
    let s = s.strip_suffix('\n').unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}
