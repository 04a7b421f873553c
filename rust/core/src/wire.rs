// SPDX-License-Identifier: GPL-2.0
//! Wire protocol v1: framing, encoding and validating decoding of every message two peers exchange.
//!
//! Documentation/wire-protocol.rst describes the format byte by byte; this file is the
//! normative implementation. A shipped layout never changes without bumping [`VERSION`].
//!
//! # Framing
//!
//! Every message starts with a 16-byte *preamble* ([`PREAMBLE_LEN`]); all integers are
//! little-endian:
//!
//! ```text
//!  off  size  field
//!    0     2  magic    = MAGIC (0x4D52, the bytes "RM" on the wire)
//!    2     1  command  (Command)
//!    3     1  version  = VERSION (1)
//!    4     4  length   bytes that follow the preamble (fixed fields + payload)
//!    8     8  arguments, command specific
//! ```
//!
//! The one exception is [`Command::SmallWrite`], whose bytes 4..16 carry the complete
//! write metadata instead of a length (the payload length is part of that metadata), so a
//! small write costs exactly 16 bytes of header. [`frame_len`] turns any preamble into the
//! total frame length, checking magic, command, version and the length against
//! [`Limits`] before the receiver allocates or reads anything more.
//!
//! # Receiving
//!
//! Read [`PREAMBLE_LEN`] bytes, call [`frame_len`], read the rest of the frame, call
//! [`decode`] (or [`decode_parts`] with the header and payload in separate buffers). Any
//! error means the peer is broken or hostile: drop the connection, write nothing.
//!
//! # Sending
//!
//! Build a [`Message`], then either [`Message::encode`] it whole, or send
//! [`Message::encode_header`] followed by [`Message::payload`] (no copy of the data).
//! Encoding validates the message first (see [`Message::validate`]), so a sender can never
//! produce a frame the receiver would reject for a reason other than its device limits.

/// Magic number at offset 0 of every message, a little-endian `u16`: the bytes `0x52 0x4D`
/// ("RM").
pub const MAGIC: u16 = 0x4D52;
/// Protocol version implemented here; sent at offset 3 of every message.
pub const VERSION: u8 = 1;
/// Oldest protocol version this code can speak (sent as `proto_min` in the handshake).
pub const VERSION_MIN: u8 = 1;
/// Version byte of every [`Command::Handshake`] frame, whatever versions the sides speak:
/// the handshake layout is frozen (later versions may only append fields), so any two
/// versions can read each other's handshake.
pub const HANDSHAKE_VERSION: u8 = 1;
/// Length of the preamble every message starts with; the total length follows from it.
pub const PREAMBLE_LEN: usize = 16;
/// Hard cap on any message payload (data, RLE bytes), whatever [`Limits::max_payload`] says.
pub const MAX_PAYLOAD: u32 = 1 << 20;
/// log2 of the sector size: all sector numbers and counts are in 512-byte units.
pub const SECTOR_SHIFT: u32 = 9;
/// Sector size in bytes.
pub const SECTOR_SIZE: u32 = 1 << SECTOR_SHIFT;
/// Largest fixed header of any message (the handshake); header buffers of this size suffice.
pub const MAX_HEADER_LEN: usize = 64;
/// Largest handshake frame accepted: later versions may append fields to the v1 handshake,
/// a v1 receiver ignores up to `HANDSHAKE_MAX_LEN - 64` such bytes.
pub const HANDSHAKE_MAX_LEN: usize = 256;

/// Bits of the sector number in a [`Command::SmallWrite`] header.
pub const SMALL_SECTOR_BITS: u32 = 46;
/// Largest device v1 supports, in sectors (2^46 sectors = 32 PiB): every sector number of
/// such a device fits into a small-write header.
pub const MAX_DEV_SECTORS: u64 = 1 << SMALL_SECTOR_BITS;
/// Largest payload a [`Command::SmallWrite`] can express: 128 sectors = 64 KiB.
pub const SMALL_WRITE_MAX: u32 = 1 << (SMALL_LEN_BITS + SECTOR_SHIFT);
/// Default inline threshold: writes up to this many bytes go as one small-write message.
pub const INLINE_MAX_DEFAULT: u32 = 32 * 1024;

// Small-write word (bytes 8..16 of a SmallWrite, one u64 LE), see SmallWrite docs.
const SMALL_LEN_SHIFT: u32 = SMALL_SECTOR_BITS; // bits 46..=52: sectors - 1
const SMALL_LEN_BITS: u32 = 7;
const SMALL_FLAGS_SHIFT: u32 = SMALL_LEN_SHIFT + SMALL_LEN_BITS; // bits 53..=55: WriteFlags
const SMALL_FLAGS_BITS: u32 = 3;
const SMALL_VOLUME_SHIFT: u32 = SMALL_FLAGS_SHIFT + SMALL_FLAGS_BITS; // bits 56..=63: volume
const SMALL_SECTOR_MASK: u64 = (1 << SMALL_SECTOR_BITS) - 1;
const SMALL_LEN_MASK: u64 = (1 << SMALL_LEN_BITS) - 1;
const SMALL_FLAGS_MASK: u64 = (1 << SMALL_FLAGS_BITS) - 1;

// Compile-time layout checks.
const _: () = assert!(SMALL_VOLUME_SHIFT == 56 && SMALL_VOLUME_SHIFT + 8 == 64);
const _: () = assert!(SMALL_SECTOR_BITS >= 40);
const _: () = assert!(SMALL_WRITE_MAX == 64 * 1024 && SMALL_WRITE_MAX >= INLINE_MAX_DEFAULT);
const _: () = assert!((WriteFlags::ALL.0 as u64) <= SMALL_FLAGS_MASK);
const _: () = assert!(PREAMBLE_LEN == 16 && PREAMBLE_LEN * 8 == 128);
const _: () = assert!(Command::SmallWrite.header_len() == PREAMBLE_LEN);
const _: () = assert!(Command::Handshake.header_len() == MAX_HEADER_LEN);
const _: () = assert!(Command::Uuids.header_len() <= MAX_HEADER_LEN);
const _: () = assert!(HANDSHAKE_MAX_LEN >= MAX_HEADER_LEN);
const _: () = assert!((MAX_PAYLOAD as usize) + MAX_HEADER_LEN <= u32::MAX as usize);
const _: () = assert!(MAX_PAYLOAD.is_multiple_of(SECTOR_SIZE));

/// Byte offsets shared by every preamble.
mod off {
    /// `u16` magic.
    pub(super) const MAGIC: usize = 0;
    /// `u8` command.
    pub(super) const CMD: usize = 2;
    /// `u8` version.
    pub(super) const VERSION: usize = 3;
    /// `u32` length of everything after the preamble (not in SmallWrite).
    pub(super) const LENGTH: usize = 4;
    /// First command-specific byte.
    pub(super) const ARG: usize = 8;
    /// First byte after the preamble.
    pub(super) const EXT: usize = 16;
}

/// Feature bits exchanged in the handshake; the connection uses the AND of both sides.
pub mod feature {
    /// The sender accepts [`super::Command::SmallWrite`] (otherwise all writes use
    /// WriteNotify + WriteData).
    pub const SMALL_WRITE: u32 = 1 << 0;
    /// The secondary sends its own bitmap on the meta socket after the handshake, and the
    /// primary ORs it into its own before it sends its bitmap (regions the secondary may hold
    /// differently: a crashed primary's activity log extents, its writes never replicated).
    pub const PEER_BITMAP: u32 = 1 << 1;
    /// The primary may detach a failed disk and go on through the secondary: it sends
    /// [`super::Message::Detached`], then [`super::Message::ResyncRequest`]s on the data socket
    /// for the data it reads (and pulls back after re-attaching), answered by
    /// [`super::Message::ResyncReply`] (or [`super::Message::ResyncNegative`]) on the meta socket,
    /// in order.
    pub const DETACH: u32 = 1 << 2;
    /// Every feature this implementation supports.
    pub const ALL: u32 = SMALL_WRITE | PEER_BITMAP | DETACH;
}

/// Well-known [`Message::Disconnect`] reason codes (others are passed through as numbers).
pub mod reason {
    /// Orderly shutdown (administrative disconnect / down).
    pub const SHUTDOWN: u32 = 0;
    /// The peer sent something that failed to decode or broke the protocol's rules.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// No common protocol version or incompatible handshake.
    pub const INCOMPATIBLE: u32 = 2;
    /// Local I/O error makes us unable to continue as a peer.
    pub const IO_ERROR: u32 = 3;
    /// Both sides claim data the other lacks (split brain).
    pub const SPLIT_BRAIN: u32 = 4;
    /// Configuration mismatch (device size, region size, roles).
    pub const CONFIG_MISMATCH: u32 = 5;
    /// The peer stopped answering pings.
    pub const TIMEOUT: u32 = 6;
}

/// Limits the receiver applies to every decoded message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Size of the replicated device in sectors; every sector range must lie below it.
    pub dev_sectors: u64,
    /// Largest payload accepted (additionally capped by [`MAX_PAYLOAD`]).
    pub max_payload: u32,
}

impl Limits {
    /// Limits for a device of `dev_sectors` sectors and the default [`MAX_PAYLOAD`].
    pub const fn new(dev_sectors: u64) -> Self {
        Limits {
            dev_sectors,
            max_payload: MAX_PAYLOAD,
        }
    }

    /// The effective payload cap, `min(max_payload, MAX_PAYLOAD)`.
    pub const fn payload_cap(&self) -> u32 {
        if self.max_payload < MAX_PAYLOAD {
            self.max_payload
        } else {
            MAX_PAYLOAD
        }
    }
}

/// Limits [`Message::encode`] checks against: any device size, the hard payload cap.
const ENCODE_LIMITS: Limits = Limits {
    dev_sectors: u64::MAX,
    max_payload: MAX_PAYLOAD,
};

/// Why a byte sequence is not a valid message. Any of these ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// The first two bytes are not [`MAGIC`].
    BadMagic,
    /// The command byte is not a known [`Command`].
    UnknownCommand(u8),
    /// The version byte is not [`VERSION`] ([`HANDSHAKE_VERSION`] for a handshake).
    BadVersion,
    /// Fewer bytes than the frame needs.
    Truncated,
    /// More bytes than the frame's length (the buffer must hold exactly one frame).
    Trailing,
    /// The length field is impossible for the command (e.g. too short for its fields).
    BadLength,
    /// The payload exceeds the negotiated limit or [`MAX_PAYLOAD`].
    Oversized,
    /// A sector range reaches beyond the device (or overflows).
    OutOfRange,
    /// A field has an invalid value (unknown flag bits, non-zero reserved bytes, zero or
    /// unaligned length, malformed bitmap RLE, ...).
    BadField,
}

impl DecodeError {
    /// Human-readable description.
    pub const fn as_str(&self) -> &'static str {
        match self {
            DecodeError::BadMagic => "bad magic",
            DecodeError::UnknownCommand(_) => "unknown command",
            DecodeError::BadVersion => "unsupported protocol version",
            DecodeError::Truncated => "truncated message",
            DecodeError::Trailing => "trailing bytes after message",
            DecodeError::BadLength => "length field invalid for command",
            DecodeError::Oversized => "payload too large",
            DecodeError::OutOfRange => "sector range beyond device",
            DecodeError::BadField => "invalid field value",
        }
    }
}

impl core::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DecodeError::UnknownCommand(c) => write!(f, "unknown command {c:#04x}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is shorter than [`Message::encoded_len`] / [`Message::header_len`].
    BufferTooSmall,
    /// The message is invalid; the receiver would reject it with this error.
    Invalid(DecodeError),
}

impl EncodeError {
    /// Human-readable description.
    pub const fn as_str(&self) -> &'static str {
        match self {
            EncodeError::BufferTooSmall => "output buffer too small",
            EncodeError::Invalid(_) => "invalid message",
        }
    }
}

impl core::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            EncodeError::Invalid(e) => write!(f, "invalid message: {e}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl From<DecodeError> for EncodeError {
    fn from(e: DecodeError) -> Self {
        EncodeError::Invalid(e)
    }
}

/// Command codes (byte 2 of every message). Values never change within a version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Command {
    /// Version/feature negotiation and device identity; first message each way.
    Handshake = 0x01,
    /// A write up to the inline threshold: all metadata in the 16-byte header, then data.
    SmallWrite = 0x02,
    /// Announces a larger write (sequence number and length only).
    WriteNotify = 0x03,
    /// Metadata and data of a write announced by WriteNotify.
    WriteData = 0x04,
    /// Acknowledgement of a write (received / durable / negative).
    Ack = 0x05,
    /// Consistency-point boundary: all earlier writes belong to epoch `nr`.
    Barrier = 0x06,
    /// All writes of epoch `nr` are durable on the peer.
    BarrierAck = 0x07,
    /// Keep-alive request.
    Ping = 0x08,
    /// Keep-alive answer, echoing the ping.
    Pong = 0x09,
    /// A sector range is out of sync (the sender could not replicate it).
    OutOfSync = 0x0A,
    /// A chunk of the dirty bitmap, run-length encoded.
    Bitmap = 0x0B,
    /// Ask the peer for the data of a sector range (resync target -> source).
    ResyncRequest = 0x0C,
    /// Data of a requested sector range (resync source -> target).
    ResyncReply = 0x0D,
    /// The requested sector range cannot be served (read error on the source).
    ResyncNegative = 0x0E,
    /// The sender closes the connection, with a reason.
    Disconnect = 0x0F,
    /// Resync data of a sector range is durable on the sync target (target -> source).
    ResyncAck = 0x10,
    /// The sync source's generation UUIDs, sent right before its bitmap (source -> target).
    Uuids = 0x11,
    /// The sync target's bitmap is empty and it adopted the source's generation (target ->
    /// source); the source may end its resync.
    InSync = 0x12,
    /// The primary's disk failed and was detached: the secondary holds the only up-to-date
    /// copy and starts generation `current` (primary -> secondary, data socket).
    Detached = 0x13,
}

impl Command {
    /// The command for a wire value, `None` if unknown.
    pub const fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Command::Handshake,
            0x02 => Command::SmallWrite,
            0x03 => Command::WriteNotify,
            0x04 => Command::WriteData,
            0x05 => Command::Ack,
            0x06 => Command::Barrier,
            0x07 => Command::BarrierAck,
            0x08 => Command::Ping,
            0x09 => Command::Pong,
            0x0A => Command::OutOfSync,
            0x0B => Command::Bitmap,
            0x0C => Command::ResyncRequest,
            0x0D => Command::ResyncReply,
            0x0E => Command::ResyncNegative,
            0x0F => Command::Disconnect,
            0x10 => Command::ResyncAck,
            0x11 => Command::Uuids,
            0x12 => Command::InSync,
            0x13 => Command::Detached,
            _ => return None,
        })
    }

    /// Length of the fixed header (preamble + fixed fields), i.e. the bytes before any
    /// payload.
    pub const fn header_len(self) -> usize {
        match self {
            Command::Handshake => 64,
            Command::Uuids => 40,
            Command::WriteData => 32,
            Command::Ping
            | Command::Pong
            | Command::OutOfSync
            | Command::Bitmap
            | Command::ResyncRequest
            | Command::ResyncReply
            | Command::ResyncNegative
            | Command::ResyncAck => 24,
            Command::SmallWrite
            | Command::WriteNotify
            | Command::Ack
            | Command::Barrier
            | Command::BarrierAck
            | Command::Disconnect
            | Command::InSync
            | Command::Detached => 16,
        }
    }

    /// The version byte frames of this command carry: [`HANDSHAKE_VERSION`] for the
    /// handshake, [`VERSION`] for everything else.
    pub const fn version(self) -> u8 {
        match self {
            Command::Handshake => HANDSHAKE_VERSION,
            _ => VERSION,
        }
    }

    /// Whether the message carries a variable-size payload after its fixed header.
    pub const fn has_payload(self) -> bool {
        matches!(
            self,
            Command::SmallWrite | Command::WriteData | Command::Bitmap | Command::ResyncReply
        )
    }

    /// Name of the command, for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Command::Handshake => "handshake",
            Command::SmallWrite => "small-write",
            Command::WriteNotify => "write-notify",
            Command::WriteData => "write-data",
            Command::Ack => "ack",
            Command::Barrier => "barrier",
            Command::BarrierAck => "barrier-ack",
            Command::Ping => "ping",
            Command::Pong => "pong",
            Command::OutOfSync => "out-of-sync",
            Command::Bitmap => "bitmap",
            Command::ResyncRequest => "resync-request",
            Command::ResyncReply => "resync-reply",
            Command::ResyncNegative => "resync-negative",
            Command::Disconnect => "disconnect",
            Command::ResyncAck => "resync-ack",
            Command::Uuids => "uuids",
            Command::InSync => "in-sync",
            Command::Detached => "detached",
        }
    }
}

/// Defines a small flag-set newtype over `u8` whose constructor rejects unknown bits.
macro_rules! flag_set {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $flag:ident = $val:expr,)* }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
        pub struct $name(u8);

        impl $name {
            $($(#[$fm])* pub const $flag: Self = Self($val);)*
            /// Every defined flag.
            pub const ALL: Self = Self(0 $(| $val)*);

            /// No flag set.
            pub const fn empty() -> Self {
                Self(0)
            }
            /// The wire value.
            pub const fn bits(self) -> u8 {
                self.0
            }
            /// Flags from a wire value; `None` if an undefined bit is set.
            pub const fn from_bits(bits: u8) -> Option<Self> {
                if bits & !Self::ALL.0 == 0 {
                    Some(Self(bits))
                } else {
                    None
                }
            }
            /// Whether every flag of `other` is set in `self`.
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }
            /// Whether no flag is set.
            pub const fn is_empty(self) -> bool {
                self.0 == 0
            }
            /// The flags of both.
            pub const fn union(self, other: Self) -> Self {
                Self(self.0 | other.0)
            }
        }

        impl core::ops::BitOr for $name {
            type Output = Self;
            fn bitor(self, rhs: Self) -> Self {
                self.union(rhs)
            }
        }

        impl core::ops::BitOrAssign for $name {
            fn bitor_assign(&mut self, rhs: Self) {
                *self = self.union(rhs);
            }
        }
    };
}

flag_set! {
    /// Flags of a replicated write, mirroring the bio's `REQ_*` flags.
    WriteFlags {
        /// Forced unit access: the peer must make this write durable before acking Durable.
        FUA = 1 << 0,
        /// The peer must flush its volatile cache before applying this write.
        PREFLUSH = 1 << 1,
        /// Synchronous write (latency hint, `REQ_SYNC`).
        SYNC = 1 << 2,
    }
}

flag_set! {
    /// Flags of a [`Message::Barrier`].
    BarrierFlags {
        /// The peer must flush its disk cache before answering with a BarrierAck.
        FLUSH = 1 << 0,
    }
}

/// Everything the peer needs to apply one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteMeta {
    /// First sector written.
    pub sector: u64,
    /// Length in bytes: a non-zero multiple of [`SECTOR_SIZE`].
    pub len: u32,
    /// Sequence number of the write on this connection; acks refer to it.
    pub seq: u32,
    /// Write flags.
    pub flags: WriteFlags,
    /// Volume number within the connection (0 for a single-volume resource).
    pub volume: u8,
}

/// Which acknowledgement an [`Message::Ack`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AckKind {
    /// The peer received the write (protocol B).
    Received,
    /// The write is on the peer's stable storage (protocol C).
    Durable,
    /// The peer failed to apply the write; the range is now out of sync.
    Negative,
}

impl AckKind {
    /// Wire value (1, 2, 3).
    pub const fn to_wire(self) -> u8 {
        match self {
            AckKind::Received => 1,
            AckKind::Durable => 2,
            AckKind::Negative => 3,
        }
    }
    /// From a wire value, `None` if unknown.
    pub const fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(AckKind::Received),
            2 => Some(AckKind::Durable),
            3 => Some(AckKind::Negative),
            _ => None,
        }
    }
}

/// Role of the handshake's sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Accepts writes from above and replicates them.
    Primary,
    /// Receives replicated writes.
    Secondary,
}

impl Role {
    /// Wire value (1 primary, 2 secondary; 0 is never valid).
    pub const fn to_wire(self) -> u8 {
        match self {
            Role::Primary => 1,
            Role::Secondary => 2,
        }
    }
    /// From a wire value, `None` if unknown.
    pub const fn from_wire(v: u8) -> Option<Self> {
        match v {
            1 => Some(Role::Primary),
            2 => Some(Role::Secondary),
            _ => None,
        }
    }
}

/// Data generation identifiers, as in DRBD's UUID set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Uuids {
    /// Generation of the current data.
    pub current: u64,
    /// Generation at which the bitmap started tracking (0 if the bitmap is clean).
    pub bitmap: u64,
    /// The two previous generations, newest first.
    pub history: [u64; 2],
}

/// Which of a connection's two sockets a handshake opens. A connection is a pair: the data
/// socket carries writes (and later resync data) from the primary, the meta socket carries
/// heartbeats in both directions and the secondary's acks, so neither waits behind bulk data
/// (DRBD's data and meta sockets). The data socket's handshake comes first; the next meta
/// handshake from the same peer completes the pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Writes and resync data (wire value 0).
    #[default]
    Data,
    /// Heartbeats and acknowledgements (wire value 1).
    Meta,
}

impl Channel {
    /// Wire value.
    pub const fn to_wire(self) -> u8 {
        match self {
            Channel::Data => 0,
            Channel::Meta => 1,
        }
    }
    /// From a wire value, `None` if unknown.
    pub const fn from_wire(v: u8) -> Option<Self> {
        match v {
            0 => Some(Channel::Data),
            1 => Some(Channel::Meta),
            _ => None,
        }
    }
}

/// Content of a [`Message::Handshake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Oldest protocol version the sender speaks (>= 1).
    pub proto_min: u8,
    /// Newest protocol version the sender speaks (>= `proto_min`).
    pub proto_max: u8,
    /// Features the sender supports ([`feature`] bits; unknown bits are allowed).
    pub features: u32,
    /// The sender's node id.
    pub node_id: u8,
    /// Size of the sender's device in sectors (1..=[`MAX_DEV_SECTORS`]).
    pub dev_sectors: u64,
    /// Bytes of device covered by one bitmap bit (a power of two, 4 KiB to 1 MiB: the
    /// fracture bitmap's range).
    pub region_size: u32,
    /// The sender's data generations.
    pub uuids: Uuids,
    /// The sender's role.
    pub role: Role,
    /// The socket this handshake opens.
    pub channel: Channel,
    /// The replication protocol the sender's table names: 1 = A, 2 = B, 3 = C (as
    /// `state::protocol::Protocol::as_u8`), or 0 from a sender that does not state it (read
    /// as C). Both sides of a connection must name the same one: it decides which acks the
    /// secondary sends.
    pub replication: u8,
    /// [`hs_flags`] bits (unknown bits are refused).
    pub flags: u8,
}

/// Flags of a [`Handshake`] (byte 30).
pub mod hs_flags {
    /// The sender resolves a split brain by discarding its own data: it becomes the sync
    /// target (`rmirrorctl connect NAME --discard-my-data`, DRBD's `--discard-my-data`).
    pub const DISCARD_MY_DATA: u8 = 1 << 0;
    /// Every flag this implementation knows.
    pub const KNOWN: u8 = DISCARD_MY_DATA;
}

/// What two handshakes agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Protocol version to use: the highest both speak.
    pub version: u8,
    /// Features both support.
    pub features: u32,
}

impl Handshake {
    /// Negotiates the protocol version and features with the peer's handshake; `None` if
    /// the version ranges do not overlap.
    pub const fn negotiate(&self, peer: &Handshake) -> Option<Negotiated> {
        let lo = if self.proto_min > peer.proto_min {
            self.proto_min
        } else {
            peer.proto_min
        };
        let hi = if self.proto_max < peer.proto_max {
            self.proto_max
        } else {
            peer.proto_max
        };
        if lo > hi || lo == 0 {
            return None;
        }
        Some(Negotiated {
            version: hi,
            features: self.features & peer.features,
        })
    }
}

/// Content of a [`Message::Ping`] or [`Message::Pong`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ping {
    /// Sequence number chosen by the pinging side; the pong echoes it.
    pub seq: u32,
    /// The pinging side's clock (e.g. nanoseconds); opaque to the other side, echoed.
    pub timestamp: u64,
}

/// One decoded (or to-be-encoded) message. Payload slices borrow the frame buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Version/feature negotiation and device identity.
    Handshake(Handshake),
    /// A write of at most [`SMALL_WRITE_MAX`] bytes; header exactly 16 bytes (128 bits,
    /// magic and command included) carrying all metadata, then `data`:
    ///
    /// ```text
    ///  byte   0       1       2       3       4       5       6       7
    ///       +-------+-------+-------+-------+-------+-------+-------+-------+
    ///       |  0x52 |  0x4D |  0x02 |  0x01 |      seq (u32, little-endian) |
    ///       +-------+-------+-------+-------+-------+-------+-------+-------+
    ///        magic "RM"       cmd     ver
    ///  byte   8..16: one u64, little-endian:
    ///   63        56 55   53 52       46 45                                  0
    ///  +------------+-------+-----------+-------------------------------------+
    ///  |   volume   | flags | sectors-1 |           sector (46 bits)          |
    ///  +------------+-------+-----------+-------------------------------------+
    ///  byte  16..: data, sectors * 512 bytes (1 ..= 128 sectors)
    /// ```
    SmallWrite {
        /// All metadata of the write.
        meta: WriteMeta,
        /// The data, `meta.len` bytes.
        data: &'a [u8],
    },
    /// Announces a write of `len` bytes that follows as WriteData with the same `seq`.
    WriteNotify {
        /// Sequence number of the announced write.
        seq: u32,
        /// Total length in bytes of the announced write.
        len: u32,
    },
    /// Metadata and data of a write announced by WriteNotify.
    WriteData {
        /// All metadata of the write.
        meta: WriteMeta,
        /// The data, `meta.len` bytes.
        data: &'a [u8],
    },
    /// Acknowledgement of write `seq`.
    Ack {
        /// Sequence number of the acknowledged write.
        seq: u32,
        /// What is acknowledged.
        kind: AckKind,
    },
    /// Consistency-point boundary closing epoch `nr`.
    Barrier {
        /// Barrier (epoch) number.
        nr: u32,
        /// Barrier flags.
        flags: BarrierFlags,
    },
    /// Epoch `nr` is complete and durable on the peer.
    BarrierAck {
        /// Barrier (epoch) number being acknowledged.
        nr: u32,
        /// Number of writes the peer counted in the epoch.
        writes: u32,
    },
    /// Keep-alive request.
    Ping(Ping),
    /// Keep-alive answer; echoes the ping's fields.
    Pong(Ping),
    /// Sector range `sector..sector+sectors` is out of sync.
    OutOfSync {
        /// First sector.
        sector: u64,
        /// Number of sectors (>= 1).
        sectors: u32,
    },
    /// A run-length encoded bitmap chunk (see [`rle_encode`]).
    Bitmap {
        /// Number of the first bitmap bit (region) this chunk describes.
        offset: u64,
        /// Number of bits described (>= 1); the RLE runs sum to exactly this.
        bits: u32,
        /// This is the last chunk of the bitmap exchange.
        last: bool,
        /// The RLE bytes.
        rle: &'a [u8],
    },
    /// Asks for the data of `sector..sector+sectors`.
    ResyncRequest {
        /// First sector.
        sector: u64,
        /// Number of sectors (>= 1, reply must fit the payload limit).
        sectors: u32,
    },
    /// Data of a requested range.
    ResyncReply {
        /// First sector.
        sector: u64,
        /// Number of sectors (>= 1).
        sectors: u32,
        /// The data, `sectors * 512` bytes.
        data: &'a [u8],
    },
    /// A requested range cannot be served.
    ResyncNegative {
        /// First sector.
        sector: u64,
        /// Number of sectors (>= 1).
        sectors: u32,
    },
    /// The resync data of `sector..sector+sectors` is durable on the sync target.
    ResyncAck {
        /// First sector.
        sector: u64,
        /// Number of sectors (>= 1).
        sectors: u32,
    },
    /// The sender closes the connection.
    Disconnect {
        /// Reason code ([`reason`] constants; others allowed).
        reason: u32,
    },
    /// The sync source's generation UUIDs, sent on the data socket right before its bitmap on
    /// every connection (they may have changed since the handshake). Any values are valid.
    Uuids(Uuids),
    /// The sync target's bitmap is empty and it adopted generation `current`; the source may
    /// end its resync (sent on the meta socket).
    InSync {
        /// The generation the target adopted (the source's current UUID).
        current: u64,
    },
    /// The primary detached its failed disk ([`feature::DETACH`]): from now on it reads and
    /// writes through the secondary, which adopts `current` as its current generation (so
    /// the failed disk, whose generation is older, can never be a sync source again).
    Detached {
        /// The new current UUID.
        current: u64,
    },
}

/// Whether a write of `len_bytes` goes as one [`Message::SmallWrite`] (the small-write
/// decision): non-zero, sector aligned, at most `inline_max` and at most
/// [`SMALL_WRITE_MAX`]. Only use small writes when both sides negotiated
/// [`feature::SMALL_WRITE`] (pass `inline_max = 0` otherwise).
pub const fn fits_inline(len_bytes: u32, inline_max: u32) -> bool {
    len_bytes != 0
        && len_bytes.is_multiple_of(SECTOR_SIZE)
        && len_bytes <= inline_max
        && len_bytes <= SMALL_WRITE_MAX
}

/// The messages that replicate one write (see [`plan_write`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WritePlan<'a> {
    /// One SmallWrite carries metadata and data.
    Small(Message<'a>),
    /// A WriteNotify, then a WriteData.
    Large {
        /// The WriteNotify (sequence number and length only).
        notify: Message<'a>,
        /// The WriteData (metadata and data).
        data: Message<'a>,
    },
}

/// Chooses the messages for one write of `data` described by `meta` (`meta.len` should be
/// `data.len()`; encoding checks it).
pub fn plan_write<'a>(meta: WriteMeta, data: &'a [u8], inline_max: u32) -> WritePlan<'a> {
    if fits_inline(meta.len, inline_max) {
        WritePlan::Small(Message::SmallWrite { meta, data })
    } else {
        WritePlan::Large {
            notify: Message::WriteNotify {
                seq: meta.seq,
                len: meta.len,
            },
            data: Message::WriteData { meta, data },
        }
    }
}

/// One encoded header (the payload, if any, follows it on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    bytes: [u8; MAX_HEADER_LEN],
    len: usize,
}

impl Header {
    /// The encoded bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len).unwrap_or(&[])
    }
}

/// The headers of the messages that replicate one write, for a sender that sends the
/// `meta.len` payload bytes itself, straight from its pages, right after the last header
/// (zero copy). The bytes are exactly those [`plan_write`]'s messages encode, minus the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteHeaders {
    /// One SmallWrite header; the payload follows it.
    Small(Header),
    /// A WriteNotify, then the WriteData header; the payload follows the second.
    Large(Header, Header),
}

impl WriteHeaders {
    /// Whether this is the small-write message.
    pub const fn is_small(&self) -> bool {
        matches!(self, WriteHeaders::Small(_))
    }
}

/// Encodes the headers of a write of `meta.len` bytes (see [`WriteHeaders`]), checked as
/// [`Message::encode`] checks the full messages.
pub fn write_headers(meta: WriteMeta, inline_max: u32) -> Result<WriteHeaders, EncodeError> {
    let len = meta.len as usize;
    let header = |m: Message<'_>, payload_len: usize| {
        let (bytes, len) = m.header_unchecked(payload_len);
        Header { bytes, len }
    };
    if fits_inline(meta.len, inline_max) {
        check_write(&meta, len, &ENCODE_LIMITS, true)?;
        Ok(WriteHeaders::Small(header(
            Message::SmallWrite { meta, data: &[] },
            len,
        )))
    } else {
        check_write(&meta, len, &ENCODE_LIMITS, false)?;
        let notify = Message::WriteNotify {
            seq: meta.seq,
            len: meta.len,
        };
        notify.validate(&ENCODE_LIMITS)?;
        Ok(WriteHeaders::Large(
            header(notify, 0),
            header(Message::WriteData { meta, data: &[] }, len),
        ))
    }
}

/// Whether `sector..sector+sectors` lies within a device of `dev` sectors (overflow safe).
const fn in_range(sector: u64, sectors: u64, dev: u64) -> bool {
    match sector.checked_add(sectors) {
        Some(end) => end <= dev,
        None => false,
    }
}

/// Checks a write's metadata and data against the limits.
fn check_write(
    meta: &WriteMeta,
    data_len: usize,
    lim: &Limits,
    small: bool,
) -> Result<(), DecodeError> {
    if meta.len == 0 || !meta.len.is_multiple_of(SECTOR_SIZE) {
        return Err(DecodeError::BadField);
    }
    if (small && meta.len > SMALL_WRITE_MAX) || meta.len > lim.payload_cap() {
        return Err(DecodeError::Oversized);
    }
    if data_len != meta.len as usize {
        return Err(DecodeError::BadLength);
    }
    if small && meta.sector > SMALL_SECTOR_MASK {
        return Err(DecodeError::OutOfRange);
    }
    if !in_range(
        meta.sector,
        u64::from(meta.len >> SECTOR_SHIFT),
        lim.dev_sectors,
    ) {
        return Err(DecodeError::OutOfRange);
    }
    Ok(())
}

/// Checks a sector range of `sectors >= 1` sectors.
fn check_range(sector: u64, sectors: u32, lim: &Limits) -> Result<(), DecodeError> {
    if sectors == 0 {
        return Err(DecodeError::BadField);
    }
    if !in_range(sector, u64::from(sectors), lim.dev_sectors) {
        return Err(DecodeError::OutOfRange);
    }
    Ok(())
}

/// Checks that a range of `sectors` sectors fits the payload limit as data.
fn check_data_size(sectors: u32, lim: &Limits) -> Result<(), DecodeError> {
    if u64::from(sectors) << SECTOR_SHIFT > u64::from(lim.payload_cap()) {
        return Err(DecodeError::Oversized);
    }
    Ok(())
}

impl<'a> Message<'a> {
    /// The message's command code.
    pub const fn command(&self) -> Command {
        match self {
            Message::Handshake(_) => Command::Handshake,
            Message::SmallWrite { .. } => Command::SmallWrite,
            Message::WriteNotify { .. } => Command::WriteNotify,
            Message::WriteData { .. } => Command::WriteData,
            Message::Ack { .. } => Command::Ack,
            Message::Barrier { .. } => Command::Barrier,
            Message::BarrierAck { .. } => Command::BarrierAck,
            Message::Ping(_) => Command::Ping,
            Message::Pong(_) => Command::Pong,
            Message::OutOfSync { .. } => Command::OutOfSync,
            Message::Bitmap { .. } => Command::Bitmap,
            Message::ResyncRequest { .. } => Command::ResyncRequest,
            Message::ResyncReply { .. } => Command::ResyncReply,
            Message::ResyncNegative { .. } => Command::ResyncNegative,
            Message::ResyncAck { .. } => Command::ResyncAck,
            Message::Disconnect { .. } => Command::Disconnect,
            Message::Uuids(_) => Command::Uuids,
            Message::InSync { .. } => Command::InSync,
            Message::Detached { .. } => Command::Detached,
        }
    }

    /// Bytes before the payload (the fixed header); 16 for a SmallWrite.
    pub const fn header_len(&self) -> usize {
        self.command().header_len()
    }

    /// The payload sent after the header (data or RLE bytes; empty for other messages).
    pub const fn payload(&self) -> &'a [u8] {
        match *self {
            Message::SmallWrite { data, .. }
            | Message::WriteData { data, .. }
            | Message::ResyncReply { data, .. } => data,
            Message::Bitmap { rle, .. } => rle,
            _ => &[],
        }
    }

    /// Total encoded length: header plus payload.
    pub const fn encoded_len(&self) -> usize {
        self.header_len().saturating_add(self.payload().len())
    }

    /// Checks the message against `lim` exactly as [`decode`] does after parsing: lengths,
    /// ranges, payload sizes, handshake sanity, bitmap RLE well-formedness.
    pub fn validate(&self, lim: &Limits) -> Result<(), DecodeError> {
        match self {
            Message::Handshake(h) => {
                if h.proto_min == 0 || h.proto_min > h.proto_max || h.replication > 3 || h.flags & !hs_flags::KNOWN != 0 {
                    return Err(DecodeError::BadField);
                }
                if h.dev_sectors == 0 {
                    return Err(DecodeError::BadField);
                }
                if h.dev_sectors > MAX_DEV_SECTORS {
                    return Err(DecodeError::OutOfRange);
                }
                if !h.region_size.is_power_of_two()
                    || h.region_size < 1 << crate::bitmap::MIN_REGION_SHIFT
                    || h.region_size > 1 << crate::bitmap::MAX_REGION_SHIFT
                {
                    return Err(DecodeError::BadField);
                }
                Ok(())
            }
            Message::SmallWrite { meta, data } => check_write(meta, data.len(), lim, true),
            Message::WriteData { meta, data } => check_write(meta, data.len(), lim, false),
            Message::WriteNotify { len, .. } => {
                if *len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
                    return Err(DecodeError::BadField);
                }
                if *len > lim.payload_cap() {
                    return Err(DecodeError::Oversized);
                }
                Ok(())
            }
            Message::Ack { .. }
            | Message::Barrier { .. }
            | Message::BarrierAck { .. }
            | Message::Ping(_)
            | Message::Pong(_)
            | Message::Disconnect { .. }
            | Message::Uuids(_)
            | Message::InSync { .. }
            | Message::Detached { .. } => Ok(()),
            Message::OutOfSync { sector, sectors }
            | Message::ResyncNegative { sector, sectors }
            | Message::ResyncAck { sector, sectors } => check_range(*sector, *sectors, lim),
            Message::ResyncRequest { sector, sectors } => {
                check_range(*sector, *sectors, lim)?;
                check_data_size(*sectors, lim)
            }
            Message::ResyncReply {
                sector,
                sectors,
                data,
            } => {
                check_range(*sector, *sectors, lim)?;
                check_data_size(*sectors, lim)?;
                if data.len() as u64 != u64::from(*sectors) << SECTOR_SHIFT {
                    return Err(DecodeError::BadLength);
                }
                Ok(())
            }
            Message::Bitmap {
                offset, bits, rle, ..
            } => {
                if *bits == 0 {
                    return Err(DecodeError::BadField);
                }
                if rle.len() > lim.payload_cap() as usize {
                    return Err(DecodeError::Oversized);
                }
                if !in_range(*offset, u64::from(*bits), lim.dev_sectors) {
                    return Err(DecodeError::OutOfRange);
                }
                rle_check(rle, *bits).map(|_| ())
            }
        }
    }

    /// Builds the fixed header into a buffer; returns it and its length.
    fn header(&self) -> Result<([u8; MAX_HEADER_LEN], usize), EncodeError> {
        self.validate(&ENCODE_LIMITS)?;
        Ok(self.header_unchecked(self.payload().len()))
    }

    /// Builds the fixed header of a message (validated by the caller) whose payload has
    /// `payload_len` bytes.
    fn header_unchecked(&self, payload_len: usize) -> ([u8; MAX_HEADER_LEN], usize) {
        let cmd = self.command();
        let hl = cmd.header_len();
        let mut h = [0u8; MAX_HEADER_LEN];
        put_u16(&mut h, off::MAGIC, MAGIC);
        put_u8(&mut h, off::CMD, cmd as u8);
        put_u8(&mut h, off::VERSION, cmd.version());
        if cmd != Command::SmallWrite {
            // Header and payload sizes are bounded by the validation above
            // (payload <= MAX_PAYLOAD), so this fits a u32.
            let len = (hl - PREAMBLE_LEN).saturating_add(payload_len);
            put_u32(&mut h, off::LENGTH, u32::try_from(len).unwrap_or(u32::MAX));
        }
        const A: usize = off::ARG;
        const E: usize = off::EXT;
        match *self {
            Message::Handshake(hs) => {
                put_u8(&mut h, A, hs.proto_min); //          8: u8  proto_min
                put_u8(&mut h, A + 1, hs.proto_max); //      9: u8  proto_max
                put_u8(&mut h, A + 2, hs.node_id); //       10: u8  node_id
                put_u8(&mut h, A + 3, hs.role.to_wire()); // 11: u8  role
                put_u32(&mut h, A + 4, hs.features); //     12: u32 features
                put_u64(&mut h, E, hs.dev_sectors); //      16: u64 dev_sectors
                put_u32(&mut h, E + 8, hs.region_size); //  24: u32 region_size
                put_u8(&mut h, E + 12, hs.channel.to_wire()); // 28: u8 channel
                put_u8(&mut h, E + 13, hs.replication); //   29: u8 replication
                put_u8(&mut h, E + 14, hs.flags); //         30: u8 flags, 31 reserved
                put_u64(&mut h, E + 16, hs.uuids.current); // 32: u64 current uuid
                put_u64(&mut h, E + 24, hs.uuids.bitmap); //  40: u64 bitmap uuid
                put_u64(&mut h, E + 32, hs.uuids.history[0]); // 48: u64 history[0]
                put_u64(&mut h, E + 40, hs.uuids.history[1]); // 56: u64 history[1]
            }
            Message::SmallWrite { meta, .. } => {
                put_u32(&mut h, off::LENGTH, meta.seq); //  4: u32 seq
                put_u64(&mut h, A, small_word(&meta)); //   8: u64 packed word
            }
            Message::WriteNotify { seq, len } => {
                put_u32(&mut h, A, seq); //      8: u32 seq
                put_u32(&mut h, A + 4, len); // 12: u32 len (bytes)
            }
            Message::WriteData { meta, .. } => {
                put_u32(&mut h, A, meta.seq); //           8: u32 seq
                put_u8(&mut h, A + 4, meta.flags.bits()); // 12: u8 flags
                put_u8(&mut h, A + 5, meta.volume); //     13: u8 volume
                                                    //                                         14: u16 reserved
                put_u64(&mut h, E, meta.sector); //        16: u64 sector
                put_u32(&mut h, E + 8, meta.len); //       24: u32 len (bytes)
                                                  //                                         28: u32 reserved
            }
            Message::Ack { seq, kind } => {
                put_u32(&mut h, A, seq); //               8: u32 seq
                put_u8(&mut h, A + 4, kind.to_wire()); // 12: u8 kind, 13..16 reserved
            }
            Message::Barrier { nr, flags } => {
                put_u32(&mut h, A, nr); //             8: u32 nr
                put_u8(&mut h, A + 4, flags.bits()); // 12: u8 flags, 13..16 reserved
            }
            Message::BarrierAck { nr, writes } => {
                put_u32(&mut h, A, nr); //         8: u32 nr
                put_u32(&mut h, A + 4, writes); // 12: u32 writes
            }
            Message::Ping(p) | Message::Pong(p) => {
                put_u32(&mut h, A, p.seq); //       8: u32 seq, 12..16 reserved
                put_u64(&mut h, E, p.timestamp); // 16: u64 timestamp
            }
            Message::OutOfSync { sector, sectors }
            | Message::ResyncRequest { sector, sectors }
            | Message::ResyncReply {
                sector, sectors, ..
            }
            | Message::ResyncNegative { sector, sectors }
            | Message::ResyncAck { sector, sectors } => {
                put_u32(&mut h, A, sectors); //  8: u32 sectors, 12..16 reserved
                put_u64(&mut h, E, sector); //  16: u64 sector
            }
            Message::Bitmap {
                offset, bits, last, ..
            } => {
                put_u32(&mut h, A, bits); //                8: u32 bits
                put_u8(&mut h, A + 4, u8::from(last)); //  12: u8 flags (bit 0: last), 13..16 reserved
                put_u64(&mut h, E, offset); //             16: u64 offset (first bit)
            }
            Message::Disconnect { reason } => {
                put_u32(&mut h, A, reason); // 8: u32 reason, 12..16 reserved
            }
            Message::Uuids(u) => {
                put_u64(&mut h, A, u.current); //          8: u64 current uuid
                put_u64(&mut h, E, u.bitmap); //          16: u64 bitmap uuid
                put_u64(&mut h, E + 8, u.history[0]); //  24: u64 history[0]
                put_u64(&mut h, E + 16, u.history[1]); // 32: u64 history[1]
            }
            Message::InSync { current } => {
                put_u64(&mut h, A, current); // 8: u64 current uuid adopted
            }
            Message::Detached { current } => {
                put_u64(&mut h, A, current); // 8: u64 the secondary's new current uuid
            }
        }
        (h, hl)
    }

    /// Encodes the fixed header only into `out`; the caller sends [`Message::payload`]
    /// right after it. Returns the header length.
    pub fn encode_header(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let (h, hl) = self.header()?;
        let dst = out.get_mut(..hl).ok_or(EncodeError::BufferTooSmall)?;
        dst.copy_from_slice(h.get(..hl).ok_or(EncodeError::BufferTooSmall)?);
        Ok(hl)
    }

    /// Encodes the whole message (header and payload) into `out`; returns its length.
    pub fn encode(&self, out: &mut [u8]) -> Result<usize, EncodeError> {
        let payload = self.payload();
        let total = self.encoded_len();
        if out.len() < total {
            // Validate first so an invalid message reports Invalid, not BufferTooSmall.
            self.validate(&ENCODE_LIMITS)?;
            return Err(EncodeError::BufferTooSmall);
        }
        let hl = self.encode_header(out)?;
        let dst = out.get_mut(hl..total).ok_or(EncodeError::BufferTooSmall)?;
        dst.copy_from_slice(payload);
        Ok(total)
    }
}

/// Packs a small write's metadata into the u64 at bytes 8..16 (validated before).
const fn small_word(m: &WriteMeta) -> u64 {
    let sectors_m1 = ((m.len >> SECTOR_SHIFT) as u64).wrapping_sub(1) & SMALL_LEN_MASK;
    (m.sector & SMALL_SECTOR_MASK)
        | (sectors_m1 << SMALL_LEN_SHIFT)
        | (((m.flags.bits() as u64) & SMALL_FLAGS_MASK) << SMALL_FLAGS_SHIFT)
        | ((m.volume as u64) << SMALL_VOLUME_SHIFT)
}

fn put_u8(h: &mut [u8; MAX_HEADER_LEN], at: usize, v: u8) {
    if let Some(b) = h.get_mut(at) {
        *b = v;
    }
}

fn put_u16(h: &mut [u8; MAX_HEADER_LEN], at: usize, v: u16) {
    if let Some(d) = h.get_mut(at..at + 2) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u32(h: &mut [u8; MAX_HEADER_LEN], at: usize, v: u32) {
    if let Some(d) = h.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn put_u64(h: &mut [u8; MAX_HEADER_LEN], at: usize, v: u64) {
    if let Some(d) = h.get_mut(at..at + 8) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}

fn get_u8(b: &[u8], at: usize) -> Result<u8, DecodeError> {
    b.get(at).copied().ok_or(DecodeError::Truncated)
}

fn get_u16(b: &[u8], at: usize) -> Result<u16, DecodeError> {
    let s: [u8; 2] = b
        .get(at..at + 2)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    Ok(u16::from_le_bytes(s))
}

fn get_u32(b: &[u8], at: usize) -> Result<u32, DecodeError> {
    let s: [u8; 4] = b
        .get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    Ok(u32::from_le_bytes(s))
}

fn get_u64(b: &[u8], at: usize) -> Result<u64, DecodeError> {
    let s: [u8; 8] = b
        .get(at..at + 8)
        .and_then(|s| s.try_into().ok())
        .ok_or(DecodeError::Truncated)?;
    Ok(u64::from_le_bytes(s))
}

/// Requires `b[from..to]` to be all zero (reserved bytes).
fn reserved(b: &[u8], from: usize, to: usize) -> Result<(), DecodeError> {
    let s = b.get(from..to).ok_or(DecodeError::Truncated)?;
    if s.iter().all(|&x| x == 0) {
        Ok(())
    } else {
        Err(DecodeError::BadField)
    }
}

/// Validates a preamble and returns the command, header length and payload length.
fn parts(pre: &[u8], lim: &Limits) -> Result<(Command, usize, usize), DecodeError> {
    if get_u16(pre, off::MAGIC)? != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let c = get_u8(pre, off::CMD)?;
    let cmd = Command::from_u8(c).ok_or(DecodeError::UnknownCommand(c))?;
    if get_u8(pre, off::VERSION)? != cmd.version() {
        return Err(DecodeError::BadVersion);
    }
    let hl = cmd.header_len();
    let cap = lim.payload_cap() as usize;
    if cmd == Command::SmallWrite {
        let w = get_u64(pre, off::ARG)?;
        let sectors = ((w >> SMALL_LEN_SHIFT) & SMALL_LEN_MASK) + 1;
        let pl = (sectors << SECTOR_SHIFT) as usize; // <= 64 KiB
        if pl > cap {
            return Err(DecodeError::Oversized);
        }
        return Ok((cmd, hl, pl));
    }
    let len = get_u32(pre, off::LENGTH)? as usize;
    let ext = hl - PREAMBLE_LEN;
    let pl = len.checked_sub(ext).ok_or(DecodeError::BadLength)?;
    if cmd == Command::Handshake {
        // Later versions may append fields; up to HANDSHAKE_MAX_LEN total is skipped.
        if len > HANDSHAKE_MAX_LEN - PREAMBLE_LEN {
            return Err(DecodeError::Oversized);
        }
    } else if !cmd.has_payload() {
        if pl != 0 {
            return Err(DecodeError::BadLength);
        }
    } else if pl > cap {
        return Err(DecodeError::Oversized);
    }
    Ok((cmd, hl, pl))
}

/// Total length of the message whose first 16 bytes are `pre` (including those 16 bytes).
///
/// Checks magic, command, version and that the length is possible for the command and
/// within `lim`'s payload cap, so the caller can safely allocate/read that many bytes.
pub fn frame_len(pre: &[u8; PREAMBLE_LEN], lim: &Limits) -> Result<usize, DecodeError> {
    let (_, hl, pl) = parts(pre, lim)?;
    Ok(hl + pl)
}

/// Like [`frame_len`], but returns `(header_len, payload_len)` separately, so the caller
/// can read the payload into its own buffer and use [`decode_parts`].
pub fn frame_parts(pre: &[u8; PREAMBLE_LEN], lim: &Limits) -> Result<(usize, usize), DecodeError> {
    let (_, hl, pl) = parts(pre, lim)?;
    Ok((hl, pl))
}

/// Decodes exactly one whole frame `msg` (header and payload) and validates it against
/// `lim`. Never panics; any malformed, truncated, oversized or out-of-range input is an
/// error.
pub fn decode<'a>(msg: &'a [u8], lim: &Limits) -> Result<Message<'a>, DecodeError> {
    let pre = msg.get(..PREAMBLE_LEN).ok_or(DecodeError::Truncated)?;
    let (_, hl, pl) = parts(pre, lim)?;
    let total = hl + pl;
    if msg.len() < total {
        return Err(DecodeError::Truncated);
    }
    if msg.len() > total {
        return Err(DecodeError::Trailing);
    }
    let (header, payload) = msg.split_at(hl);
    decode_parts(header, payload, lim)
}

/// Decodes a frame whose fixed header (`header`, [`frame_parts`]' first value long) and
/// payload (second value long) are in separate buffers.
pub fn decode_parts<'a>(
    header: &'a [u8],
    payload: &'a [u8],
    lim: &Limits,
) -> Result<Message<'a>, DecodeError> {
    let pre = header.get(..PREAMBLE_LEN).ok_or(DecodeError::Truncated)?;
    let (cmd, hl, pl) = parts(pre, lim)?;
    for (have, want) in [(header.len(), hl), (payload.len(), pl)] {
        if have < want {
            return Err(DecodeError::Truncated);
        }
        if have > want {
            return Err(DecodeError::Trailing);
        }
    }
    let h = header;
    const A: usize = off::ARG;
    const E: usize = off::EXT;
    let msg = match cmd {
        Command::Handshake => {
            reserved(h, E + 15, E + 16)?; // 31 reserved
            Message::Handshake(Handshake {
                replication: get_u8(h, E + 13)?,
                flags: get_u8(h, E + 14)?,
                channel: Channel::from_wire(get_u8(h, E + 12)?).ok_or(DecodeError::BadField)?,
                proto_min: get_u8(h, A)?,
                proto_max: get_u8(h, A + 1)?,
                node_id: get_u8(h, A + 2)?,
                role: Role::from_wire(get_u8(h, A + 3)?).ok_or(DecodeError::BadField)?,
                features: get_u32(h, A + 4)?,
                dev_sectors: get_u64(h, E)?,
                region_size: get_u32(h, E + 8)?,
                uuids: Uuids {
                    current: get_u64(h, E + 16)?,
                    bitmap: get_u64(h, E + 24)?,
                    history: [get_u64(h, E + 32)?, get_u64(h, E + 40)?],
                },
            })
        }
        Command::SmallWrite => {
            let w = get_u64(h, A)?;
            let flags = ((w >> SMALL_FLAGS_SHIFT) & SMALL_FLAGS_MASK) as u8;
            let sectors = (((w >> SMALL_LEN_SHIFT) & SMALL_LEN_MASK) + 1) as u32;
            Message::SmallWrite {
                meta: WriteMeta {
                    sector: w & SMALL_SECTOR_MASK,
                    len: sectors << SECTOR_SHIFT,
                    seq: get_u32(h, off::LENGTH)?,
                    flags: WriteFlags::from_bits(flags).ok_or(DecodeError::BadField)?,
                    volume: (w >> SMALL_VOLUME_SHIFT) as u8,
                },
                data: payload,
            }
        }
        Command::WriteNotify => Message::WriteNotify {
            seq: get_u32(h, A)?,
            len: get_u32(h, A + 4)?,
        },
        Command::WriteData => {
            reserved(h, A + 6, A + 8)?;
            reserved(h, E + 12, E + 16)?;
            Message::WriteData {
                meta: WriteMeta {
                    sector: get_u64(h, E)?,
                    len: get_u32(h, E + 8)?,
                    seq: get_u32(h, A)?,
                    flags: WriteFlags::from_bits(get_u8(h, A + 4)?).ok_or(DecodeError::BadField)?,
                    volume: get_u8(h, A + 5)?,
                },
                data: payload,
            }
        }
        Command::Ack => {
            reserved(h, A + 5, A + 8)?;
            let kind = AckKind::from_wire(get_u8(h, A + 4)?).ok_or(DecodeError::BadField)?;
            Message::Ack {
                seq: get_u32(h, A)?,
                kind,
            }
        }
        Command::Barrier => {
            reserved(h, A + 5, A + 8)?;
            let flags = BarrierFlags::from_bits(get_u8(h, A + 4)?).ok_or(DecodeError::BadField)?;
            Message::Barrier {
                nr: get_u32(h, A)?,
                flags,
            }
        }
        Command::BarrierAck => Message::BarrierAck {
            nr: get_u32(h, A)?,
            writes: get_u32(h, A + 4)?,
        },
        Command::Ping | Command::Pong => {
            reserved(h, A + 4, A + 8)?;
            let p = Ping {
                seq: get_u32(h, A)?,
                timestamp: get_u64(h, E)?,
            };
            if cmd == Command::Ping {
                Message::Ping(p)
            } else {
                Message::Pong(p)
            }
        }
        Command::OutOfSync
        | Command::ResyncRequest
        | Command::ResyncReply
        | Command::ResyncNegative
        | Command::ResyncAck => {
            reserved(h, A + 4, A + 8)?;
            let sectors = get_u32(h, A)?;
            let sector = get_u64(h, E)?;
            match cmd {
                Command::OutOfSync => Message::OutOfSync { sector, sectors },
                Command::ResyncRequest => Message::ResyncRequest { sector, sectors },
                Command::ResyncNegative => Message::ResyncNegative { sector, sectors },
                Command::ResyncAck => Message::ResyncAck { sector, sectors },
                _ => Message::ResyncReply {
                    sector,
                    sectors,
                    data: payload,
                },
            }
        }
        Command::Bitmap => {
            reserved(h, A + 5, A + 8)?;
            let flags = get_u8(h, A + 4)?;
            if flags & !1 != 0 {
                return Err(DecodeError::BadField);
            }
            Message::Bitmap {
                offset: get_u64(h, E)?,
                bits: get_u32(h, A)?,
                last: flags & 1 != 0,
                rle: payload,
            }
        }
        Command::Disconnect => {
            reserved(h, A + 4, A + 8)?;
            Message::Disconnect {
                reason: get_u32(h, A)?,
            }
        }
        Command::Uuids => Message::Uuids(Uuids {
            current: get_u64(h, A)?,
            bitmap: get_u64(h, E)?,
            history: [get_u64(h, E + 8)?, get_u64(h, E + 16)?],
        }),
        Command::InSync => Message::InSync {
            current: get_u64(h, A)?,
        },
        Command::Detached => Message::Detached {
            current: get_u64(h, A)?,
        },
    };
    msg.validate(lim)?;
    Ok(msg)
}

/// Decodes the first frame of a byte stream `buf`.
///
/// Returns `Ok(None)` if `buf` does not yet hold a whole frame (read more), or the message
/// and the number of bytes it used. The preamble is validated as soon as 16 bytes are
/// there, so a hostile length is rejected before any more is buffered.
pub fn decode_next<'a>(
    buf: &'a [u8],
    lim: &Limits,
) -> Result<Option<(Message<'a>, usize)>, DecodeError> {
    let Some(pre) = buf.get(..PREAMBLE_LEN) else {
        return Ok(None);
    };
    let (_, hl, pl) = parts(pre, lim)?;
    let total = hl + pl;
    match buf.get(..total) {
        None => Ok(None),
        Some(frame) => decode(frame, lim).map(|m| Some((m, total))),
    }
}

// ---------------------------------------------------------------------------------------
// Bitmap run-length encoding.
//
// A chunk describes `bits` consecutive bitmap bits as runs that alternate clean (0) and
// dirty (1), always starting with a clean run. Each run length is an unsigned LEB128
// varint (7 bits per byte, least significant group first, bit 7 = "more bytes follow",
// at most 10 bytes, no superfluous trailing zero groups). Only the first run may be 0
// (the chunk starts dirty); the run lengths sum to exactly `bits`. The encoding of a given
// bit sequence is therefore unique.
// ---------------------------------------------------------------------------------------

/// Longest LEB128 encoding of a `u64`.
const VARINT_MAX: usize = 10;
/// Minimal output buffer for which [`rle_encode`] always makes progress.
pub const RLE_MIN_OUT: usize = 2 * VARINT_MAX;

/// How [`rle_decode`] applies a chunk to a bitmap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RleApply {
    /// Set dirty runs and clear clean runs (the bitmap becomes the peer's).
    Copy,
    /// Set dirty runs, leave clean runs alone (OR the peer's bitmap into ours).
    Merge,
}

/// Result of [`rle_encode`]: bytes produced and bits covered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RleChunk {
    /// RLE bytes written to the output.
    pub len: usize,
    /// Bitmap bits described by them (the chunk's `bits`).
    pub bits: u32,
}

/// Reads one varint from `rle` at `*pos`, advancing `*pos` (also used by `bitmap`).
pub(crate) fn varint_get(rle: &[u8], pos: &mut usize) -> Result<u64, DecodeError> {
    let mut v: u64 = 0;
    let mut i = 0;
    loop {
        let b = *rle.get(*pos).ok_or(DecodeError::BadField)?;
        *pos += 1;
        let group = u64::from(b & 0x7f);
        if i == VARINT_MAX - 1 && (b & 0x80 != 0 || group > 1) {
            return Err(DecodeError::BadField); // longer than 10 bytes or > u64::MAX
        }
        v |= group << (7 * i);
        if b & 0x80 == 0 {
            if i > 0 && b == 0 {
                return Err(DecodeError::BadField); // overlong (non-canonical)
            }
            return Ok(v);
        }
        i += 1;
    }
}

/// Writes `v` as a varint to `out` at `*pos` if it fits; returns whether it did (also used by
/// `bitmap`).
pub(crate) fn varint_put(out: &mut [u8], pos: &mut usize, mut v: u64) -> bool {
    let mut tmp = [0u8; VARINT_MAX];
    let mut n = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if let Some(t) = tmp.get_mut(n) {
            *t = if v != 0 { b | 0x80 } else { b };
        }
        n += 1;
        if v == 0 {
            break;
        }
    }
    let Some(end) = pos.checked_add(n) else {
        return false;
    };
    match (out.get_mut(*pos..end), tmp.get(..n)) {
        (Some(d), Some(s)) => {
            d.copy_from_slice(s);
            *pos = end;
            true
        }
        _ => false,
    }
}

/// Checks that `rle` is a valid encoding of exactly `bits` bits; returns the number of
/// dirty bits.
pub fn rle_check(rle: &[u8], bits: u32) -> Result<u64, DecodeError> {
    let mut pos = 0;
    let mut covered: u64 = 0;
    let mut dirty_bits: u64 = 0;
    let mut dirty = false;
    let mut first = true;
    while pos < rle.len() {
        let run = varint_get(rle, &mut pos)?;
        if run == 0 && !first {
            return Err(DecodeError::BadField);
        }
        covered = covered.checked_add(run).ok_or(DecodeError::BadField)?;
        if covered > u64::from(bits) {
            return Err(DecodeError::BadField);
        }
        if dirty {
            dirty_bits += run; // <= covered <= u32::MAX
        }
        dirty = !dirty;
        first = false;
    }
    if covered != u64::from(bits) {
        return Err(DecodeError::BadField);
    }
    Ok(dirty_bits)
}

/// Number of bits in `bitmap`, saturating.
fn bitmap_bits(bitmap: &[u8]) -> u64 {
    (bitmap.len() as u64).saturating_mul(8)
}

/// Value of bit `i` (bit `i % 8` of byte `i / 8`, like the kernel's little-endian bitmaps).
fn test_bit(bitmap: &[u8], i: u64) -> bool {
    usize::try_from(i / 8)
        .ok()
        .and_then(|b| bitmap.get(b))
        .is_some_and(|byte| byte & (1 << (i % 8)) != 0)
}

/// Length of the run of bits equal to `value` starting at `pos`, not reaching `end`.
fn run_len(bitmap: &[u8], pos: u64, end: u64, value: bool) -> u64 {
    let fill = if value { 0xff } else { 0x00 };
    let mut p = pos;
    while p < end {
        if p.is_multiple_of(8) && end - p >= 8 {
            let whole = usize::try_from(p / 8)
                .ok()
                .and_then(|b| bitmap.get(b))
                .copied();
            if whole == Some(fill) {
                p += 8;
                continue;
            }
        }
        if test_bit(bitmap, p) != value {
            break;
        }
        p += 1;
    }
    p - pos
}

/// Sets or clears bits `from..from+len` (the range is checked by the caller; bits outside
/// `bitmap` are ignored).
fn fill_bits(bitmap: &mut [u8], from: u64, len: u64, value: bool) {
    let end = from.saturating_add(len);
    let mut p = from;
    while p < end {
        let Some(byte) = usize::try_from(p / 8).ok().and_then(|b| bitmap.get_mut(b)) else {
            return;
        };
        if p.is_multiple_of(8) && end - p >= 8 {
            *byte = if value { 0xff } else { 0x00 };
            p += 8;
            continue;
        }
        let mask = 1u8 << (p % 8);
        if value {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
        p += 1;
    }
}

/// Run-length encodes bits `start..start+nbits` of `bitmap` into `out`.
///
/// Encodes as many whole runs as fit into `out` and reports how many bytes were written and
/// how many bits they cover; the next chunk starts at `start + bits`. With
/// `out.len() >= RLE_MIN_OUT` at least one bit is always covered (when `nbits > 0`).
/// Fails if the range is beyond `bitmap` or no progress is possible.
pub fn rle_encode(
    bitmap: &[u8],
    start: u64,
    nbits: u32,
    out: &mut [u8],
) -> Result<RleChunk, EncodeError> {
    let end = start
        .checked_add(u64::from(nbits))
        .filter(|&e| e <= bitmap_bits(bitmap))
        .ok_or(EncodeError::Invalid(DecodeError::OutOfRange))?;
    let mut pos = start;
    let mut wpos = 0;
    let mut value = false;
    while pos < end {
        let run = run_len(bitmap, pos, end, value);
        if !varint_put(out, &mut wpos, run) {
            break;
        }
        pos += run;
        value = !value;
    }
    // A chunk must not end with the empty first run only (it would cover no bits).
    if pos == start {
        if nbits == 0 {
            return Ok(RleChunk { len: 0, bits: 0 });
        }
        return Err(EncodeError::BufferTooSmall);
    }
    // pos - start <= nbits, fits u32.
    let bits =
        u32::try_from(pos - start).map_err(|_| EncodeError::Invalid(DecodeError::BadField))?;
    Ok(RleChunk { len: wpos, bits })
}

/// Applies the RLE chunk `rle` describing `bits` bits to `bitmap` at bit `start`.
///
/// The chunk is validated completely before the bitmap is touched (nothing is written on
/// error). Returns the number of dirty bits in the chunk.
pub fn rle_decode(
    rle: &[u8],
    bits: u32,
    bitmap: &mut [u8],
    start: u64,
    mode: RleApply,
) -> Result<u64, DecodeError> {
    start
        .checked_add(u64::from(bits))
        .filter(|&e| e <= bitmap_bits(bitmap))
        .ok_or(DecodeError::OutOfRange)?;
    let dirty_bits = rle_check(rle, bits)?;
    let mut pos = 0;
    let mut at = start;
    let mut dirty = false;
    while pos < rle.len() {
        let run = varint_get(rle, &mut pos)?;
        if dirty || mode == RleApply::Copy {
            fill_bits(bitmap, at, run, dirty);
        }
        at += run; // checked by rle_check: sum == bits
        dirty = !dirty;
    }
    Ok(dirty_bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIM: Limits = Limits {
        dev_sectors: 1 << 30,
        max_payload: MAX_PAYLOAD,
    };

    fn enc(m: &Message<'_>) -> Vec<u8> {
        let mut v = vec![0u8; m.encoded_len()];
        let n = m.encode(&mut v).expect("encode");
        assert_eq!(n, v.len());
        v
    }

    #[test]
    fn small_write_header_is_16_bytes() {
        let data = [7u8; 4096];
        let meta = WriteMeta {
            sector: 12345,
            len: 4096,
            seq: 0xdead_beef,
            flags: WriteFlags::FUA,
            volume: 3,
        };
        let m = Message::SmallWrite { meta, data: &data };
        assert_eq!(m.header_len(), 16);
        let v = enc(&m);
        assert_eq!(v.len(), 16 + 4096);
        assert_eq!(&v[0..2], b"RM");
        assert_eq!(v[2], Command::SmallWrite as u8);
        assert_eq!(v[3], VERSION);
        assert_eq!(decode(&v, &LIM), Ok(m));
    }

    #[test]
    fn out_of_range_rejected() {
        let data = [0u8; 1024];
        let lim = Limits::new(100);
        for (sector, ok) in [(98, true), (99, false), (1 << 40, false)] {
            let meta = WriteMeta {
                sector,
                len: 1024,
                seq: 1,
                flags: WriteFlags::empty(),
                volume: 0,
            };
            for m in [
                Message::WriteData { meta, data: &data },
                Message::SmallWrite { meta, data: &data },
            ] {
                let v = enc(&m);
                let want = if ok {
                    Ok(m)
                } else {
                    Err(DecodeError::OutOfRange)
                };
                assert_eq!(decode(&v, &lim), want, "sector {sector}");
            }
        }
        // sector + len overflowing u64 is rejected, not wrapped.
        let meta = WriteMeta {
            sector: 0,
            len: 1024,
            seq: 1,
            flags: WriteFlags::empty(),
            volume: 0,
        };
        let mut v = enc(&Message::WriteData { meta, data: &data });
        v[16..24].copy_from_slice(&(u64::MAX - 1).to_le_bytes());
        assert_eq!(
            decode(&v, &Limits::new(u64::MAX)),
            Err(DecodeError::OutOfRange)
        );
    }

    #[test]
    fn varint_canonical() {
        let mut buf = [0u8; VARINT_MAX];
        for v in [0u64, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut w = 0;
            assert!(varint_put(&mut buf, &mut w, v));
            let mut r = 0;
            assert_eq!(varint_get(&buf[..w], &mut r), Ok(v));
            assert_eq!(r, w);
        }
        // Overlong zero group, 11-byte and > u64::MAX encodings are rejected.
        for bad in [
            &[0x80u8, 0x00][..],
            &[0xff; 11][..],
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..],
        ] {
            let mut r = 0;
            assert_eq!(varint_get(bad, &mut r), Err(DecodeError::BadField));
        }
        // Too small an output buffer: nothing written.
        let mut w = 0;
        assert!(!varint_put(&mut buf[..1], &mut w, 300));
        assert_eq!(w, 0);
    }
}
