// SPDX-License-Identifier: GPL-2.0
//! The rmirror table line (dmsetup-style device description): parser and canonical writer.
//!
//! Grammar (one line, fields separated by ASCII whitespace):
//!
//! ```text
//! <start> <len> rmirror <backing-path> <role> <local-addr> <peer-addr> <protocol> [<key>=<value> ...]
//!
//! start         0 (one target per device)
//! len           size in 512-byte sectors, 1..=2^55-1 (the kernel checks it against the backing size)
//! backing-path  absolute path, at most 255 bytes, no control characters (e.g. /dev/vdb)
//! role          primary | secondary
//! local-addr    IPv4:PORT, dotted quad without leading zeros, port 1..=65535
//! peer-addr     IPv4:PORT
//! protocol      A | B | C
//! options       inline_max=<bytes>  0..=32768, a multiple of 512 (0 disables the small-write path),
//!                                   default 4096
//!               node_id=<n>         0..=31, default 0 for primary and 1 for secondary
//!               ping_interval=<ms>  heartbeat period each way, 100..=60000, default 1000
//!               timeout=<ms>        outage after this long without traffic or a pong,
//!                                   > ping_interval and <= 600000, default 5000
//!               probation=<ms>      heartbeats needed without a miss after an outage before
//!                                   replication resumes, 0..=600000, default 3000
//!               connect_retry=<ms>  delay between connection attempts, 100..=600000, default 1000
//!               outage_max=<ms>     longest outage whose writes stay queued, 0 (no limit) or
//!                                   timeout..=86400000, default 60000
//!               meta=<where>        the metadata (superblock, activity log, fracture bitmap):
//!                                   internal (at the end of the backing device), an absolute
//!                                   device path (external), or core (in memory only, like
//!                                   dm-mirror's core log: nothing survives a removal); default
//!                                   core. Written by `rmirrorctl create-md`.
//!               on_io_error=<policy> what a primary does when its backing device fails a
//!                                   write: detach (the default: stop using the disk, go on
//!                                   through the peer, `rmirrorctl attach` to resync it back) or
//!                                   pass_on (fail the write to the application, like DRBD's)
//!               each option at most once; unknown keys are errors
//! ```
//!
//! Example: `0 2097152 rmirror /dev/vdb primary 10.0.0.1:7788 10.0.0.2:7788 C inline_max=4096`.
//!
//! [`Table::write`] (and `Display`) produce the canonical form: single spaces, options only
//! where they differ from their defaults (like dmsetup's table output), so a line written
//! without options reads back unchanged. `parse(write(t)) == t` for every table `parse` accepts.

use core::fmt::{self, Write as _};

use super::abi::TextWriter;
use super::state::conn::Config as Timing;

/// The target type name in the third field.
pub const TARGET: &str = "rmirror";
/// Longest backing device path in bytes.
pub const BACKING_MAX: usize = 255;
/// Largest `len` (sectors) such that `len << 9` still fits in a `u64`.
pub const LEN_MAX: u64 = u64::MAX >> SECTOR_SHIFT;
/// log2 of the sector size the table counts in.
pub const SECTOR_SHIFT: u32 = 9;
/// Largest `inline_max` in bytes.
pub const INLINE_MAX_LIMIT: u32 = 32768;
/// `inline_max` must be a multiple of this (the sector size).
pub const INLINE_MAX_ALIGN: u32 = 512;
/// `inline_max` when the option is absent.
pub const INLINE_MAX_DEFAULT: u32 = 4096;
/// Largest `node_id`.
pub const NODE_ID_MAX: u8 = 31;
/// Upper bound of the canonical line length ([`Table::write`] never needs more; a buffer of
/// this size always suffices).
pub const LINE_MAX: usize = 1024;

// "0 " + u64 (20) + " rmirror " + path + " secondary " + 2 x "255.255.255.255:65535 "
// + "C" + " inline_max=" + u32 (10) + " node_id=" + u8 (3) + five " <timer>=" + u32
// + " meta=" + path + " on_io_error=pass_on"
const _: () = assert!(
    2 + 20 + 9 + BACKING_MAX + 11 + 2 * 22 + 1 + 12 + 10 + 9 + 3 + 5 * (15 + 10) + 6 + BACKING_MAX + 20
        <= LINE_MAX
);
const _: () = assert!(INLINE_MAX_LIMIT.is_multiple_of(INLINE_MAX_ALIGN));
const _: () = assert!(INLINE_MAX_DEFAULT.is_multiple_of(INLINE_MAX_ALIGN));
const _: () = assert!(INLINE_MAX_DEFAULT <= INLINE_MAX_LIMIT);

/// Why a table line was rejected; [`TableError::as_str`] is the reason the kernel logs as
/// `rmirror: <name>: table: <reason>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableError {
    /// Fewer than the eight mandatory fields.
    TooFewFields,
    /// `start` is not 0.
    BadStart,
    /// `len` is not a decimal number in `1..=LEN_MAX`.
    BadLen,
    /// The target type is not `rmirror`.
    BadTarget,
    /// The backing path is not absolute or has control characters.
    BadBacking,
    /// The backing path is longer than [`BACKING_MAX`].
    BackingTooLong,
    /// Role is neither `primary` nor `secondary`.
    BadRole,
    /// The local address is not `IPv4:PORT`.
    BadLocal,
    /// The peer address is not `IPv4:PORT`.
    BadPeer,
    /// Protocol is not `A`, `B` or `C`.
    BadProtocol,
    /// An option token is not `key=value`.
    BadOption,
    /// An option key is not known.
    UnknownOption,
    /// An option is given twice.
    DuplicateOption,
    /// `inline_max` is out of range or not a multiple of 512.
    BadInlineMax,
    /// `node_id` is out of range.
    BadNodeId,
    /// A timing option is not a number of milliseconds.
    BadTimingValue,
    /// The timing options break a rule of [`Timing::validate`].
    BadTiming(super::state::conn::Error),
    /// `meta` is neither internal, core nor an absolute device path.
    BadMeta,
    /// `on_io_error` is neither detach nor pass_on.
    BadOnIoError,
    /// The output buffer of [`Table::write`] is too small.
    NoSpace,
}

impl TableError {
    /// Human-readable reason (fixed text per field).
    pub fn as_str(&self) -> &'static str {
        match self {
            TableError::TooFewFields => {
                "too few fields: expected '<start> <len> rmirror <backing> <role> <local-addr> <peer-addr> <protocol> [key=value...]'"
            }
            TableError::BadStart => "bad start: expected 0 (one target per device)",
            TableError::BadLen => "bad length: expected a sector count greater than 0",
            TableError::BadTarget => "bad target type: expected rmirror",
            TableError::BadBacking => {
                "bad backing device: expected an absolute path such as /dev/vdb"
            }
            TableError::BackingTooLong => "bad backing device: path longer than 255 bytes",
            TableError::BadRole => "bad role: expected primary or secondary",
            TableError::BadLocal => {
                "bad local address: expected IPv4:PORT with port 1-65535, e.g. 10.0.0.1:7788"
            }
            TableError::BadPeer => {
                "bad peer address: expected IPv4:PORT with port 1-65535, e.g. 10.0.0.2:7788"
            }
            TableError::BadProtocol => "bad protocol: expected A, B or C",
            TableError::BadOption => "bad option: expected key=value",
            TableError::UnknownOption => {
                "unknown option: expected inline_max, node_id, ping_interval, timeout, probation, connect_retry, outage_max, meta or on_io_error"
            }
            TableError::DuplicateOption => "option given more than once",
            TableError::BadInlineMax => {
                "bad inline_max: expected 0 to 32768 bytes, a multiple of 512"
            }
            TableError::BadNodeId => "bad node_id: expected 0 to 31",
            TableError::BadTimingValue => "bad timing option: expected milliseconds",
            TableError::BadTiming(e) => e.as_str(),
            TableError::BadMeta => {
                "bad meta: expected internal, core or the absolute path of a metadata device"
            }
            TableError::BadOnIoError => "bad on_io_error: expected detach or pass_on",
            TableError::NoSpace => "table line does not fit in the output buffer",
        }
    }
}

impl fmt::Display for TableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a device is created with: the wire protocol's handshake role, one type for both.
pub use super::wire::Role;

/// Table and status spellings of [`Role`] (an inherent impl here, beside the grammar that
/// defines them; the type itself lives in `wire`).
impl Role {
    /// The table/status spelling: `primary` | `secondary`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }

    /// Parses the table/status spelling (exact, lower case).
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "primary" => Some(Role::Primary),
            "secondary" => Some(Role::Secondary),
            _ => None,
        }
    }

    /// The `node_id` a table gets without a `node_id=` option: 0 for primary, 1 for secondary.
    pub const fn default_node_id(self) -> u8 {
        match self {
            Role::Primary => 0,
            Role::Secondary => 1,
        }
    }
}

/// Replication protocol, named as in DRBD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// Asynchronous: a write completes once written locally and sent to the peer.
    A,
    /// Memory-synchronous: completes once the peer has received the data.
    B,
    /// Synchronous: completes once the peer has written the data to stable storage.
    C,
}

impl Protocol {
    /// The table/status spelling: `A` | `B` | `C`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::A => "A",
            Protocol::B => "B",
            Protocol::C => "C",
        }
    }

    /// Parses the table/status spelling (exact, upper case).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s {
            "A" => Some(Protocol::A),
            "B" => Some(Protocol::B),
            "C" => Some(Protocol::C),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv4 socket address as written in tables: `a.b.c.d:port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SockAddr {
    /// Address octets in network order (`[10, 0, 0, 1]` is 10.0.0.1).
    pub ip: [u8; 4],
    /// Port in host order.
    pub port: u16,
}

impl SockAddr {
    /// Parses `a.b.c.d:port`: four decimal octets 0..=255 without leading zeros
    /// (so `010` is never read as octal by anyone), port 1..=65535.
    pub fn parse(s: &str) -> Option<SockAddr> {
        let (ip, port) = s.split_once(':')?;
        let port = parse_dec(port)?;
        if port == 0 || port > u64::from(u16::MAX) {
            return None;
        }
        let mut octets = [0u8; 4];
        let mut parts = ip.split('.');
        for o in octets.iter_mut() {
            let p = parts.next()?;
            if p.len() > 1 && p.starts_with('0') {
                return None;
            }
            *o = u8::try_from(parse_dec(p)?).ok()?;
        }
        if parts.next().is_some() {
            return None;
        }
        Some(SockAddr {
            ip: octets,
            port: u16::try_from(port).ok()?,
        })
    }
}

impl fmt::Display for SockAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.ip;
        write!(f, "{a}.{b}.{c}.{d}:{}", self.port)
    }
}

/// Where a device keeps its metadata (the `meta=` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meta<'a> {
    /// In memory only: the fracture bitmap is lost when the device is removed (the default).
    Core,
    /// At the end of the backing device (`core::meta::Layout::internal`).
    Internal,
    /// At the start of this separate device (`core::meta::Layout::external`).
    External(&'a str),
}

impl<'a> Meta<'a> {
    /// Parses the option's value.
    pub fn parse(s: &'a str) -> Result<Self, TableError> {
        match s {
            "core" => Ok(Meta::Core),
            "internal" => Ok(Meta::Internal),
            _ => parse_backing(s).map(Meta::External).map_err(|_| TableError::BadMeta),
        }
    }
}

impl fmt::Display for Meta<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Meta::Core => f.write_str("core"),
            Meta::Internal => f.write_str("internal"),
            Meta::External(p) => f.write_str(p),
        }
    }
}

/// What a primary does when its backing device fails a write (the `on_io_error=` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnIoError {
    /// Detach the disk and go on through the peer (the default).
    #[default]
    Detach,
    /// Fail the write to the application and keep the disk.
    PassOn,
}

impl OnIoError {
    /// Parses the option's value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "detach" => Some(OnIoError::Detach),
            "pass_on" => Some(OnIoError::PassOn),
            _ => None,
        }
    }

    /// The option's value.
    pub fn as_str(self) -> &'static str {
        match self {
            OnIoError::Detach => "detach",
            OnIoError::PassOn => "pass_on",
        }
    }
}

/// A parsed table line, borrowing the backing path from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table<'a> {
    /// First sector (always 0).
    pub start: u64,
    /// Device size in 512-byte sectors.
    pub len: u64,
    /// Absolute path of the backing block device.
    pub backing: &'a str,
    /// Role of this node.
    pub role: Role,
    /// Address this node listens on / binds to.
    pub local: SockAddr,
    /// Address of the peer.
    pub peer: SockAddr,
    /// Replication protocol.
    pub protocol: Protocol,
    /// Largest write (bytes) sent on the small/inline path; 0 disables it.
    pub inline_max: u32,
    /// This node's id (0..=31).
    pub node_id: u8,
    /// Heartbeat, timeout, probation and retry timers (validated).
    pub timing: Timing,
    /// Where the metadata lives.
    pub meta: Meta<'a>,
    /// The local I/O error policy.
    pub on_io_error: OnIoError,
}

impl Table<'_> {
    /// Writes the canonical line into `out` (single spaces, no newline, options only where
    /// they differ from their defaults, `inline_max` before `node_id`); returns its length.
    /// [`LINE_MAX`] bytes always suffice.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, TableError> {
        let mut w = TextWriter::new(out);
        write!(w, "{self}").map_err(|_| TableError::NoSpace)?;
        Ok(w.len())
    }
}

impl fmt::Display for Table<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {TARGET} {} {} {} {} {}",
            self.start,
            self.len,
            self.backing,
            self.role.as_str(),
            self.local,
            self.peer,
            self.protocol,
        )?;
        if self.inline_max != INLINE_MAX_DEFAULT {
            write!(f, " inline_max={}", self.inline_max)?;
        }
        if self.node_id != self.role.default_node_id() {
            write!(f, " node_id={}", self.node_id)?;
        }
        for (key, v, d) in timing_options(&self.timing) {
            if v != d {
                write!(f, " {key}={v}")?;
            }
        }
        if self.meta != Meta::Core {
            write!(f, " meta={}", self.meta)?;
        }
        if self.on_io_error != OnIoError::Detach {
            write!(f, " on_io_error={}", self.on_io_error.as_str())?;
        }
        Ok(())
    }
}

/// The timing options in canonical order: key, value, default.
fn timing_options(t: &Timing) -> [(&'static str, u32, u32); 5] {
    let d = Timing::DEFAULT;
    [
        ("ping_interval", t.ping_interval_ms, d.ping_interval_ms),
        ("timeout", t.timeout_ms, d.timeout_ms),
        ("probation", t.probation_ms, d.probation_ms),
        ("connect_retry", t.connect_retry_ms, d.connect_retry_ms),
        ("outage_max", t.outage_max_ms, d.outage_max_ms),
    ]
}

/// The timing field named `key`, if it is one.
fn timing_field<'t>(t: &'t mut Timing, key: &str) -> Option<&'t mut u32> {
    Some(match key {
        "ping_interval" => &mut t.ping_interval_ms,
        "timeout" => &mut t.timeout_ms,
        "probation" => &mut t.probation_ms,
        "connect_retry" => &mut t.connect_retry_ms,
        "outage_max" => &mut t.outage_max_ms,
        _ => return None,
    })
}

/// Parses a non-empty string of ASCII digits (no sign, no spaces) into a `u64`.
fn parse_dec(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for b in s.bytes() {
        if !b.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

fn parse_backing(s: &str) -> Result<&str, TableError> {
    if s.len() > BACKING_MAX {
        return Err(TableError::BackingTooLong);
    }
    if !s.starts_with('/') || s.bytes().any(|b| b.is_ascii_control()) {
        return Err(TableError::BadBacking);
    }
    Ok(s)
}

/// Parses one table line (see the module documentation for the grammar).
pub fn parse(line: &str) -> Result<Table<'_>, TableError> {
    let mut f = line.split_ascii_whitespace();
    let mut next = || f.next().ok_or(TableError::TooFewFields);

    let start = next()?;
    let len = next()?;
    let target = next()?;
    let backing = next()?;
    let role = next()?;
    let local = next()?;
    let peer = next()?;
    let protocol = next()?;

    if parse_dec(start) != Some(0) {
        return Err(TableError::BadStart);
    }
    let len = match parse_dec(len) {
        Some(n) if n > 0 && n <= LEN_MAX => n,
        _ => return Err(TableError::BadLen),
    };
    if target != TARGET {
        return Err(TableError::BadTarget);
    }
    let backing = parse_backing(backing)?;
    let role = Role::parse(role).ok_or(TableError::BadRole)?;
    let local = SockAddr::parse(local).ok_or(TableError::BadLocal)?;
    let peer = SockAddr::parse(peer).ok_or(TableError::BadPeer)?;
    let protocol = Protocol::parse(protocol).ok_or(TableError::BadProtocol)?;

    let mut inline_max = None;
    let mut node_id = None;
    let mut timing = Timing::DEFAULT;
    let mut timing_seen = 0u8;
    let mut meta = None;
    let mut on_io_error = None;
    for opt in f {
        let (key, value) = opt.split_once('=').ok_or(TableError::BadOption)?;
        match key {
            "inline_max" => {
                if inline_max.is_some() {
                    return Err(TableError::DuplicateOption);
                }
                inline_max = Some(match parse_dec(value) {
                    Some(n)
                        if n <= u64::from(INLINE_MAX_LIMIT)
                            && n.is_multiple_of(u64::from(INLINE_MAX_ALIGN)) =>
                    {
                        u32::try_from(n).map_err(|_| TableError::BadInlineMax)?
                    }
                    _ => return Err(TableError::BadInlineMax),
                });
            }
            "node_id" => {
                if node_id.is_some() {
                    return Err(TableError::DuplicateOption);
                }
                node_id = Some(match parse_dec(value) {
                    Some(n) if n <= u64::from(NODE_ID_MAX) => {
                        u8::try_from(n).map_err(|_| TableError::BadNodeId)?
                    }
                    _ => return Err(TableError::BadNodeId),
                });
            }
            "meta" => {
                if meta.is_some() {
                    return Err(TableError::DuplicateOption);
                }
                meta = Some(Meta::parse(value)?);
            }
            "on_io_error" => {
                if on_io_error.is_some() {
                    return Err(TableError::DuplicateOption);
                }
                on_io_error = Some(OnIoError::parse(value).ok_or(TableError::BadOnIoError)?);
            }
            "" => return Err(TableError::BadOption),
            _ => {
                let bit = 1u8
                    << timing_options(&timing)
                        .iter()
                        .position(|o| o.0 == key)
                        .ok_or(TableError::UnknownOption)?;
                if timing_seen & bit != 0 {
                    return Err(TableError::DuplicateOption);
                }
                timing_seen |= bit;
                let v = parse_dec(value)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or(TableError::BadTimingValue)?;
                *timing_field(&mut timing, key).ok_or(TableError::UnknownOption)? = v;
            }
        }
    }

    Ok(Table {
        start: 0,
        len,
        backing,
        role,
        local,
        peer,
        protocol,
        inline_max: inline_max.unwrap_or(INLINE_MAX_DEFAULT),
        node_id: node_id.unwrap_or(role.default_node_id()),
        timing: {
            timing.validate().map_err(TableError::BadTiming)?;
            timing
        },
        meta: meta.unwrap_or(Meta::Core),
        on_io_error: on_io_error.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GOOD: &str = "0 2048 rmirror /dev/vdb primary 10.0.0.1:7788 10.0.0.2:7788 C";

    fn good() -> Table<'static> {
        Table {
            start: 0,
            len: 2048,
            backing: "/dev/vdb",
            role: Role::Primary,
            local: SockAddr {
                ip: [10, 0, 0, 1],
                port: 7788,
            },
            peer: SockAddr {
                ip: [10, 0, 0, 2],
                port: 7788,
            },
            protocol: Protocol::C,
            inline_max: 4096,
            node_id: 0,
            timing: Timing::DEFAULT,
            meta: Meta::Core,
            on_io_error: OnIoError::Detach,
        }
    }

    fn with(field: usize, value: &str) -> String {
        let mut v: Vec<&str> = GOOD.split(' ').collect();
        v[field] = value;
        v.join(" ")
    }

    #[test]
    fn parses_minimal_line_with_defaults() {
        assert_eq!(parse(GOOD), Ok(good()));
    }

    #[test]
    fn parses_options_and_whitespace() {
        let t = parse(
            "\t0  2048 rmirror /dev/vdb secondary 10.0.0.2:7788 10.0.0.1:7788 C node_id=5 inline_max=0\n",
        )
        .unwrap();
        assert_eq!(t.role, Role::Secondary);
        assert_eq!(t.node_id, 5);
        assert_eq!(t.inline_max, 0);
        let line = format!("{GOOD} inline_max=32768");
        let t = parse(&line).unwrap();
        assert_eq!(t.inline_max, 32768);
        assert_eq!(t.node_id, 0);
        assert_eq!(parse(&with(4, "secondary")).unwrap().node_id, 1);
        assert_eq!(parse(&with(7, "A")).unwrap().protocol, Protocol::A);
        assert_eq!(parse(&with(7, "B")).unwrap().protocol, Protocol::B);
        assert_eq!(parse(&with(1, &LEN_MAX.to_string())).unwrap().len, LEN_MAX);
        assert_eq!(
            parse(&with(3, "/dev/disk/by-id/virtio-x=y"))
                .unwrap()
                .backing,
            "/dev/disk/by-id/virtio-x=y"
        );
    }

    #[test]
    fn canonical_write() {
        let mut out = [0u8; LINE_MAX];
        let n = good().write(&mut out).unwrap();
        assert_eq!(&out[..n], GOOD.as_bytes());
        let t = Table {
            inline_max: 0,
            node_id: 1,
            ..good()
        };
        assert_eq!(t.to_string(), format!("{GOOD} inline_max=0 node_id=1"));
        let t = Table {
            role: Role::Secondary,
            node_id: 1,
            ..good()
        };
        assert_eq!(t.to_string(), GOOD.replace("primary", "secondary"));
        let t = Table {
            role: Role::Secondary,
            node_id: 0,
            ..good()
        };
        assert!(t.to_string().ends_with(" C node_id=0"));
        assert_eq!(good().to_string().as_bytes(), &out[..n]);
        let mut small = [0u8; 10];
        assert_eq!(good().write(&mut small), Err(TableError::NoSpace));
        // The longest possible line fits LINE_MAX.
        let long_path = format!("/{}", "p".repeat(BACKING_MAX - 1));
        let t = Table {
            start: u64::MAX,
            len: u64::MAX,
            backing: &long_path,
            role: Role::Secondary,
            local: SockAddr {
                ip: [255; 4],
                port: u16::MAX,
            },
            peer: SockAddr {
                ip: [255; 4],
                port: u16::MAX,
            },
            protocol: Protocol::C,
            inline_max: u32::MAX,
            node_id: u8::MAX,
            timing: Timing {
                ping_interval_ms: u32::MAX,
                timeout_ms: u32::MAX,
                probation_ms: u32::MAX,
                connect_retry_ms: u32::MAX,
                outage_max_ms: u32::MAX,
            },
            meta: Meta::External(&long_path),
            on_io_error: OnIoError::PassOn,
        };
        assert!(t.write(&mut out).is_ok());
    }

    #[test]
    fn timing_options() {
        let line =
            format!("{GOOD} timeout=2000 ping_interval=500 probation=0 connect_retry=200 outage_max=0");
        let t = parse(&line).unwrap();
        let want = Timing {
            ping_interval_ms: 500,
            timeout_ms: 2000,
            probation_ms: 0,
            connect_retry_ms: 200,
            outage_max_ms: 0,
        };
        assert_eq!(t.timing, want);
        assert_eq!(
            t.to_string(),
            format!(
                "{GOOD} ping_interval=500 timeout=2000 probation=0 connect_retry=200 outage_max=0"
            )
        );
        assert_eq!(parse(&t.to_string()), Ok(t));
        assert_eq!(
            parse(&format!("{GOOD} timeout=5000")).unwrap().to_string(),
            GOOD
        );
        use crate::state::conn::Error as E;
        for (opt, err) in [
            ("timeout=x", TableError::BadTimingValue),
            ("timeout=", TableError::BadTimingValue),
            ("timeout=4294967296", TableError::BadTimingValue),
            (
                "timeout=1000",
                TableError::BadTiming(E::TimeoutNotAboveInterval),
            ),
            (
                "ping_interval=99",
                TableError::BadTiming(E::PingIntervalRange),
            ),
            ("probation=600001", TableError::BadTiming(E::ProbationRange)),
            ("connect_retry=50", TableError::BadTiming(E::RetryRange)),
            ("outage_max=10", TableError::BadTiming(E::OutageMaxRange)),
            ("timeout=2000 timeout=3000", TableError::DuplicateOption),
            ("keepalive=1", TableError::UnknownOption),
        ] {
            assert_eq!(parse(&format!("{GOOD} {opt}")), Err(err), "{opt}");
        }
    }

    #[test]
    fn too_few_fields() {
        assert_eq!(parse(""), Err(TableError::TooFewFields));
        assert_eq!(parse("   \n"), Err(TableError::TooFewFields));
        let fields: Vec<&str> = GOOD.split(' ').collect();
        for n in 0..fields.len() {
            assert_eq!(
                parse(&fields[..n].join(" ")),
                Err(TableError::TooFewFields),
                "{n} fields"
            );
        }
    }

    #[test]
    fn every_field_bad() {
        use TableError::*;
        let cases: &[(usize, &str, TableError)] = &[
            (0, "1", BadStart),
            (0, "-0", BadStart),
            (0, "+0", BadStart),
            (0, "x", BadStart),
            (0, "00000000000000000000000000001", BadStart),
            (1, "0", BadLen),
            (1, "-1", BadLen),
            (1, "+1", BadLen),
            (1, "1k", BadLen),
            (1, "0x10", BadLen),
            (1, "18446744073709551616", BadLen),
            (1, &(LEN_MAX + 1).to_string(), BadLen),
            (2, "linear", BadTarget),
            (2, "RMIRROR", BadTarget),
            (3, "dev/vdb", BadBacking),
            (3, "vdb", BadBacking),
            (3, "/dev/\u{1}vdb", BadBacking),
            (3, "/dev/\u{7f}", BadBacking),
            (4, "Primary", BadRole),
            (4, "master", BadRole),
            (4, "prim", BadRole),
            (5, "10.0.0.1", BadLocal),
            (5, "10.0.0.1:0", BadLocal),
            (5, "10.0.0.1:65536", BadLocal),
            (5, "10.0.0.1:", BadLocal),
            (5, "10.0.0.1:-1", BadLocal),
            (5, "10.0.0.1:+80", BadLocal),
            (5, "10.0.0:1", BadLocal),
            (5, "10.0.0.1.1:1", BadLocal),
            (5, "10.0.0.256:1", BadLocal),
            (5, "10.0.0.01:1", BadLocal),
            (5, "10..0.1:1", BadLocal),
            (5, "[::1]:7788", BadLocal),
            (5, "host:7788", BadLocal),
            (5, "10.0.0.1:7788:1", BadLocal),
            (6, "10.0.0.2", BadPeer),
            (6, "10.0.0.2:99999", BadPeer),
            (6, "1.2.3.4.5:1", BadPeer),
            (7, "D", BadProtocol),
            (7, "c", BadProtocol),
            (7, "CC", BadProtocol),
        ];
        for (field, value, err) in cases {
            assert_eq!(
                parse(&with(*field, value)),
                Err(*err),
                "field {field} = {value:?}"
            );
        }
        let long = format!("/{}", "a".repeat(BACKING_MAX));
        assert_eq!(parse(&with(3, &long)), Err(BackingTooLong));
        let ok = format!("/{}", "a".repeat(BACKING_MAX - 1));
        assert_eq!(parse(&with(3, &ok)).unwrap().backing, ok);
    }

    #[test]
    fn bad_options() {
        use TableError::*;
        let cases: &[(&str, TableError)] = &[
            ("inline_max", BadOption),
            ("=1", BadOption),
            ("foo=1", UnknownOption),
            ("INLINE_MAX=512", UnknownOption),
            ("inline_max=", BadInlineMax),
            ("inline_max=100", BadInlineMax),
            ("inline_max=32769", BadInlineMax),
            ("inline_max=33280", BadInlineMax),
            ("inline_max=-512", BadInlineMax),
            ("inline_max=4k", BadInlineMax),
            ("inline_max=99999999999999999999999", BadInlineMax),
            ("node_id=32", BadNodeId),
            ("node_id=", BadNodeId),
            ("node_id=-1", BadNodeId),
            ("node_id=256", BadNodeId),
            ("inline_max=512 inline_max=512", DuplicateOption),
            ("node_id=1 node_id=1", DuplicateOption),
        ];
        for (opts, err) in cases {
            assert_eq!(parse(&format!("{GOOD} {opts}")), Err(*err), "{opts:?}");
        }
        for ok in ["inline_max=0", "inline_max=512", "node_id=0", "node_id=31"] {
            assert!(parse(&format!("{GOOD} {ok}")).is_ok(), "{ok}");
        }
    }

    #[test]
    fn meta_option() {
        let t = parse(GOOD).unwrap();
        assert_eq!(t.meta, Meta::Core);
        let line = format!("{GOOD} meta=internal");
        let t = parse(&line).unwrap();
        assert_eq!(t.meta, Meta::Internal);
        assert_eq!(t.to_string(), line);
        let line = format!("{GOOD} meta=/dev/vdc");
        let t = parse(&line).unwrap();
        assert_eq!(t.meta, Meta::External("/dev/vdc"));
        assert_eq!(t.to_string(), format!("{GOOD} meta=/dev/vdc"));
        // core is the default, so the canonical line leaves it out
        assert_eq!(parse(&format!("{GOOD} meta=core")).unwrap().to_string(), GOOD);
        for bad in ["meta=", "meta=Internal", "meta=vdc", "meta=/dev/\x01"] {
            let line = format!("{GOOD} {bad}");
            assert_eq!(parse(&line), Err(TableError::BadMeta), "{bad}");
        }
        let long = format!("{GOOD} meta=/{}", "a".repeat(BACKING_MAX));
        assert_eq!(parse(&long), Err(TableError::BadMeta));
        assert_eq!(
            parse(&format!("{GOOD} meta=core meta=internal")),
            Err(TableError::DuplicateOption)
        );
    }

    #[test]
    fn on_io_error_option() {
        assert_eq!(parse(GOOD).unwrap().on_io_error, OnIoError::Detach);
        let line = format!("{GOOD} on_io_error=pass_on");
        let t = parse(&line).unwrap();
        assert_eq!(t.on_io_error, OnIoError::PassOn);
        assert_eq!(t.to_string(), line);
        // detach is the default, so the canonical line leaves it out
        assert_eq!(parse(&format!("{GOOD} on_io_error=detach")).unwrap().to_string(), GOOD);
        for bad in ["on_io_error=", "on_io_error=Detach", "on_io_error=call-local-io-error"] {
            assert_eq!(parse(&format!("{GOOD} {bad}")), Err(TableError::BadOnIoError), "{bad}");
        }
        assert_eq!(
            parse(&format!("{GOOD} on_io_error=detach on_io_error=pass_on")),
            Err(TableError::DuplicateOption)
        );
    }

    #[test]
    fn sockaddr() {
        let a = SockAddr::parse("0.0.0.0:1").unwrap();
        assert_eq!(a.ip, [0; 4]);
        assert_eq!(a.to_string(), "0.0.0.0:1");
        let a = SockAddr::parse("255.255.255.255:65535").unwrap();
        assert_eq!(a.to_string(), "255.255.255.255:65535");
        assert_eq!(SockAddr::parse("1.2.3.4:007").unwrap().port, 7);
        assert_eq!(SockAddr::parse(""), None);
        assert_eq!(SockAddr::parse(":"), None);
        assert_eq!(SockAddr::parse("1.2.3.4 :1"), None);
    }

    #[test]
    fn names_and_messages() {
        assert_eq!(Role::Primary.as_str(), "primary");
        assert_eq!(Role::Secondary.as_str(), "secondary");
        assert_eq!(Role::parse("secondary"), Some(Role::Secondary));
        assert_eq!(Role::parse("Primary"), None);
        assert_eq!(Role::Primary.default_node_id(), 0);
        assert_eq!(Role::Secondary.default_node_id(), 1);
        assert_eq!(Protocol::C.to_string(), "C");
        use TableError::*;
        let all = [
            TooFewFields,
            BadStart,
            BadLen,
            BadTarget,
            BadBacking,
            BackingTooLong,
            BadRole,
            BadLocal,
            BadPeer,
            BadProtocol,
            BadOption,
            UnknownOption,
            DuplicateOption,
            BadInlineMax,
            BadNodeId,
            BadTimingValue,
            BadTiming(crate::state::conn::Error::TimeoutRange),
            BadMeta,
            NoSpace,
        ];
        let mut seen = std::collections::HashSet::new();
        for e in all {
            assert!(!e.as_str().is_empty());
            assert!(seen.insert(e.as_str()), "duplicate message {e:?}");
            assert_eq!(e.to_string(), e.as_str());
        }
    }

    fn arb_addr() -> impl Strategy<Value = SockAddr> {
        (any::<[u8; 4]>(), 1u16..).prop_map(|(ip, port)| SockAddr { ip, port })
    }

    prop_compose! {
        fn arb_table_parts()(
            len in 1..=LEN_MAX,
            backing in "/[A-Za-z0-9/_.=:+-]{0,254}",
            secondary: bool,
            local in arb_addr(),
            peer in arb_addr(),
            protocol in prop_oneof![Just(Protocol::A), Just(Protocol::B), Just(Protocol::C)],
            inline_max in (0..=INLINE_MAX_LIMIT / INLINE_MAX_ALIGN).prop_map(|k| k * INLINE_MAX_ALIGN),
            node_id in 0..=NODE_ID_MAX,
        ) -> (u64, String, Role, SockAddr, SockAddr, Protocol, u32, u8) {
            let role = if secondary { Role::Secondary } else { Role::Primary };
            (len, backing, role, local, peer, protocol, inline_max, node_id)
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in ".{0,300}") {
            let _ = parse(&s);
        }

        #[test]
        fn parse_never_panics_on_near_tables(
            s in "[0-9]{1,3} [0-9]{1,22} rmirror /[a-z]{1,5} (primary|secondary|x) [0-9.:]{0,25} [0-9.:]{0,25} [A-D]( [a-z_]{0,12}=[0-9]{0,8}){0,3}"
        ) {
            if let Ok(t) = parse(&s) {
                let mut out = [0u8; LINE_MAX];
                let n = t.write(&mut out).unwrap();
                let line = core::str::from_utf8(&out[..n]).unwrap();
                prop_assert_eq!(parse(line), Ok(t));
            }
        }

        #[test]
        fn write_then_parse_round_trips(p in arb_table_parts()) {
            let (len, backing, role, local, peer, protocol, inline_max, node_id) = p;
            let timing = Timing { timeout_ms: 2000 + u32::from(node_id), ..Timing::DEFAULT };
            let meta = match node_id % 3 {
                0 => Meta::Core,
                1 => Meta::Internal,
                _ => Meta::External(&backing),
            };
            let on_io_error = if inline_max % 1024 == 0 { OnIoError::Detach } else { OnIoError::PassOn };
            let t = Table { start: 0, len, backing: &backing, role, local, peer, protocol, inline_max, node_id, timing, meta, on_io_error };
            let mut out = [0u8; LINE_MAX];
            let n = t.write(&mut out).unwrap();
            let line = core::str::from_utf8(&out[..n]).unwrap();
            prop_assert_eq!(parse(line), Ok(t));
        }
    }
}
