// SPDX-License-Identifier: GPL-2.0
//! Control ABI v1 between `rmirror.ko` and `rmirrorctl`: ioctl numbers, the 4096-byte buffer, names, status text.
//!
//! The control node `/dev/rmirror-control` takes eight ioctls, all `_IOWR(0xE7, nr, 4096)` on one
//! 4096-byte buffer. Every integer is little-endian; text fields are ASCII/UTF-8, NUL-padded.
//!
//! ```text
//!  offset  size  field
//!  0       4     abi_version  in: must be ABI_VERSION (1), else EINVAL; out: 1
//!  4       4     flags        in: must be 0, else EINVAL; out: 0
//!  8       4     minor        out: N of /dev/rmirrorN (CREATE, STATUS, TABLE)
//!  12      4     data_len     in: bytes of `data` used (CREATE); out: bytes of text in `data`
//!  16      64    name         in: 1..=63 chars of [A-Za-z0-9_.-], NUL-padded
//!  80      4016  data         in CREATE: table line; out: status / list / table / version text
//!  4096          (end)
//! ```
//!
//! `data_len` never exceeds [`DATA_MAX`] (4015), so the text plus a terminating NUL always fits;
//! a NUL inside the first `data_len` bytes ends the text early (C-string semantics).
//!
//! Everything here is pure `no_std` code without allocation: the kernel decodes requests and
//! writes replies with it, the tool encodes requests and decodes replies with the same code.

use core::fmt;

use super::table::{Protocol, Role, SockAddr};

/// ioctl "type" (magic) byte shared by all rmirror control commands.
pub const IOC_TYPE: u8 = 0xE7;
/// The only ABI version this code speaks; a request with another version gets `EINVAL`.
pub const ABI_VERSION: u32 = 1;
/// Size of the one buffer every command uses (also the ioctl's encoded size).
pub const BUF_LEN: usize = 4096;

/// Byte offset of `abi_version` (u32 LE).
pub const OFF_ABI_VERSION: usize = 0;
/// Byte offset of `flags` (u32 LE).
pub const OFF_FLAGS: usize = 4;
/// Byte offset of `minor` (u32 LE).
pub const OFF_MINOR: usize = 8;
/// Byte offset of `data_len` (u32 LE).
pub const OFF_DATA_LEN: usize = 12;
/// Byte offset of the NUL-padded `name` field.
pub const OFF_NAME: usize = 16;
/// Size of the `name` field in bytes (including room for the terminating NUL).
pub const NAME_LEN: usize = 64;
/// Longest valid device name (the field always keeps one NUL).
pub const NAME_MAX: usize = NAME_LEN - 1;
/// Byte offset of the `data` field.
pub const OFF_DATA: usize = 80;
/// Size of the `data` field in bytes.
pub const DATA_LEN: usize = 4016;
/// Largest valid `data_len`: the text always leaves room for a terminating NUL.
pub const DATA_MAX: usize = DATA_LEN - 1;

const _: () = assert!(OFF_FLAGS == OFF_ABI_VERSION + 4);
const _: () = assert!(OFF_MINOR == OFF_FLAGS + 4);
const _: () = assert!(OFF_DATA_LEN == OFF_MINOR + 4);
const _: () = assert!(OFF_NAME == OFF_DATA_LEN + 4);
const _: () = assert!(OFF_DATA == OFF_NAME + NAME_LEN);
const _: () = assert!(OFF_DATA + DATA_LEN == BUF_LEN);
const _: () = assert!(BUF_LEN == 4096);

// ---------------------------------------------------------------------------------------------
// ioctl request numbers
// ---------------------------------------------------------------------------------------------

/// `_IOC_NONE`: no data transfer.
pub const IOC_NONE: u32 = 0;
/// `_IOC_WRITE`: userspace writes, the kernel reads (`copy_from_user`).
pub const IOC_WRITE: u32 = 1;
/// `_IOC_READ`: the kernel writes, userspace reads (`copy_to_user`).
pub const IOC_READ: u32 = 2;

/// Bits of the command number field.
pub const IOC_NRBITS: u32 = 8;
/// Bits of the type (magic) field.
pub const IOC_TYPEBITS: u32 = 8;
/// Bits of the size field (14 on x86_64, arm64, riscv; not on powerpc/mips/sparc/alpha).
pub const IOC_SIZEBITS: u32 = 14;
/// Shift of the command number field.
pub const IOC_NRSHIFT: u32 = 0;
/// Shift of the type field.
pub const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
/// Shift of the size field.
pub const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
/// Shift of the direction field.
pub const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
/// Largest size the size field can carry.
pub const IOC_SIZE_MAX: usize = (1 << IOC_SIZEBITS) - 1;

/// Linux `_IOC(dir, type, nr, size)` for the asm-generic layout used by x86_64:
///
/// ```text
///  31 30 29             16 15        8 7         0
/// +-----+-----------------+-----------+-----------+
/// | dir |      size       |   type    |    nr     |
/// +-----+-----------------+-----------+-----------+
///  dir: bit 0 = _IOC_WRITE, bit 1 = _IOC_READ
/// ```
///
/// i.e. `dir << 30 | size << 16 | type << 8 | nr`. `dir` is masked to 2 bits and `size` to
/// 14 bits (as the C macros do); callers with untrusted sizes check [`IOC_SIZE_MAX`] first.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    ((dir & 0x3) << IOC_DIRSHIFT)
        | (((size & IOC_SIZE_MAX) as u32) << IOC_SIZESHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
}

/// Linux `_IOR(type, nr, size)` (the kernel writes to userspace).
pub const fn ior(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ, ty, nr, size)
}

/// Linux `_IOW(type, nr, size)` (userspace writes to the kernel).
pub const fn iow(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_WRITE, ty, nr, size)
}

/// Linux `_IOWR(type, nr, size)` (both directions).
pub const fn iowr(ty: u8, nr: u8, size: usize) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size)
}

/// One control command; the discriminant is its ioctl `nr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Cmd {
    /// Report the module version text ("rmirror <ver>") in `data`.
    Version = 0,
    /// Create device `name` from the table line in `data`; returns its `minor`.
    Create = 1,
    /// Remove device `name`.
    Remove = 2,
    /// Report the status text of device `name` (and its `minor`).
    Status = 3,
    /// Report all device names, one per line, each `\n`-terminated.
    List = 4,
    /// Report the table line device `name` was created with (and its `minor`).
    Table = 5,
    /// Let device `name`, standalone, connect to its peer again (`EALREADY` if it is not
    /// standalone).
    Connect = 6,
    /// Make device `name` standalone: close its connection and stop connecting (a no-op if
    /// it is standalone already).
    Disconnect = 7,
    /// Promote device `name` to primary (`EBUSY` while connected to a primary, `ENODATA`
    /// without up-to-date data; a no-op if it is primary already).
    Primary = 8,
    /// Demote device `name` to secondary (`EBUSY` while it is open; a no-op if it is
    /// secondary already).
    Secondary = 9,
    /// Re-attach the backing device of primary `name` after its disk was detached (on an
    /// I/O error under `on_io_error=detach`): the regions it missed are pulled back from the
    /// peer (`EALREADY` if attached, `ENOTCONN` without a connection to pull from).
    Attach = 10,
    /// Report the event lines from sequence number `data` on (decimal; see [`events`]),
    /// waiting up to a second for one; `data` = `now`: only the next sequence number.
    Events = 11,
}

impl Cmd {
    /// Every command, in `nr` order.
    pub const ALL: [Cmd; 12] = [
        Cmd::Version,
        Cmd::Create,
        Cmd::Remove,
        Cmd::Status,
        Cmd::List,
        Cmd::Table,
        Cmd::Connect,
        Cmd::Disconnect,
        Cmd::Primary,
        Cmd::Secondary,
        Cmd::Attach,
        Cmd::Events,
    ];

    /// The ioctl command number (`_IOC_NR`).
    pub const fn nr(self) -> u8 {
        self as u8
    }

    /// The command with ioctl number `nr`, if any.
    pub const fn from_nr(nr: u8) -> Option<Cmd> {
        match nr {
            0 => Some(Cmd::Version),
            1 => Some(Cmd::Create),
            2 => Some(Cmd::Remove),
            3 => Some(Cmd::Status),
            4 => Some(Cmd::List),
            5 => Some(Cmd::Table),
            6 => Some(Cmd::Connect),
            7 => Some(Cmd::Disconnect),
            8 => Some(Cmd::Primary),
            9 => Some(Cmd::Secondary),
            10 => Some(Cmd::Attach),
            11 => Some(Cmd::Events),
            _ => None,
        }
    }

    /// The full ioctl request number: `_IOWR(0xE7, nr, 4096)`.
    pub const fn request(self) -> u32 {
        iowr(IOC_TYPE, self.nr(), BUF_LEN)
    }

    /// Decodes an ioctl request number. Only the exact numbers of [`Cmd::request`] match;
    /// any other type, direction, size or nr is `None` (the kernel answers `ENOTTY`).
    pub const fn from_request(request: u32) -> Option<Cmd> {
        let nr = (request & 0xff) as u8;
        match Cmd::from_nr(nr) {
            Some(cmd) if cmd.request() == request => Some(cmd),
            _ => None,
        }
    }

    /// Upper-case name of the command, as in this documentation ("CREATE").
    pub const fn as_str(self) -> &'static str {
        match self {
            Cmd::Version => "VERSION",
            Cmd::Create => "CREATE",
            Cmd::Remove => "REMOVE",
            Cmd::Status => "STATUS",
            Cmd::List => "LIST",
            Cmd::Table => "TABLE",
            Cmd::Connect => "CONNECT",
            Cmd::Disconnect => "DISCONNECT",
            Cmd::Primary => "PRIMARY",
            Cmd::Secondary => "SECONDARY",
            Cmd::Attach => "ATTACH",
            Cmd::Events => "EVENTS",
        }
    }

    /// Whether the command reads the `name` field.
    pub const fn takes_name(self) -> bool {
        !matches!(self, Cmd::Version | Cmd::List | Cmd::Events)
    }
}

/// `RMIRROR_IOC_VERSION` = `_IOWR(0xE7, 0, 4096)`.
pub const IOC_VERSION: u32 = Cmd::Version.request();
/// `RMIRROR_IOC_CREATE` = `_IOWR(0xE7, 1, 4096)`.
pub const IOC_CREATE: u32 = Cmd::Create.request();
/// `RMIRROR_IOC_REMOVE` = `_IOWR(0xE7, 2, 4096)`.
pub const IOC_REMOVE: u32 = Cmd::Remove.request();
/// `RMIRROR_IOC_STATUS` = `_IOWR(0xE7, 3, 4096)`.
pub const IOC_STATUS: u32 = Cmd::Status.request();
/// `RMIRROR_IOC_LIST` = `_IOWR(0xE7, 4, 4096)`.
pub const IOC_LIST: u32 = Cmd::List.request();
/// `RMIRROR_IOC_TABLE` = `_IOWR(0xE7, 5, 4096)`.
pub const IOC_TABLE: u32 = Cmd::Table.request();
/// `RMIRROR_IOC_CONNECT` = `_IOWR(0xE7, 6, 4096)`.
pub const IOC_CONNECT: u32 = Cmd::Connect.request();
/// `RMIRROR_IOC_DISCONNECT` = `_IOWR(0xE7, 7, 4096)`.
pub const IOC_DISCONNECT: u32 = Cmd::Disconnect.request();
/// `RMIRROR_IOC_PRIMARY` = `_IOWR(0xE7, 8, 4096)`.
pub const IOC_PRIMARY: u32 = Cmd::Primary.request();
/// `RMIRROR_IOC_SECONDARY` = `_IOWR(0xE7, 9, 4096)`.
pub const IOC_SECONDARY: u32 = Cmd::Secondary.request();
/// `RMIRROR_IOC_ATTACH` = `_IOWR(0xE7, 10, 4096)`.
pub const IOC_ATTACH: u32 = Cmd::Attach.request();
/// `RMIRROR_IOC_EVENTS` = `_IOWR(0xE7, 11, 4096)`.
pub const IOC_EVENTS: u32 = Cmd::Events.request();

const _: () = assert!(BUF_LEN <= IOC_SIZE_MAX);
const _: () = assert!(IOC_VERSION == 0xD000_E700);
const _: () = assert!(IOC_CREATE == 0xD000_E701);
const _: () = assert!(IOC_REMOVE == 0xD000_E702);
const _: () = assert!(IOC_STATUS == 0xD000_E703);
const _: () = assert!(IOC_LIST == 0xD000_E704);
const _: () = assert!(IOC_TABLE == 0xD000_E705);
const _: () = assert!(IOC_CONNECT == 0xD000_E706);
const _: () = assert!(IOC_DISCONNECT == 0xD000_E707);

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a control buffer, name or status text was rejected. The kernel maps all of these
/// to `EINVAL`, except [`AbiError::NoSpace`] (a reply that does not fit: a kernel bug or a
/// full LIST; see `Documentation/control-abi.rst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiError {
    /// `abi_version` is not [`ABI_VERSION`].
    BadVersion,
    /// `flags` has bits set (none are defined yet).
    BadFlags,
    /// `data_len` is larger than [`DATA_MAX`].
    BadDataLen,
    /// The name is empty.
    NameEmpty,
    /// The name is longer than [`NAME_MAX`] bytes (or the field has no NUL).
    NameTooLong,
    /// The name contains a character outside `[A-Za-z0-9_.-]`.
    NameBadChar,
    /// Text is not valid UTF-8.
    BadUtf8,
    /// The text does not fit in the destination buffer.
    NoSpace,
    /// A status key is empty or has characters outside `[a-z0-9_]`.
    BadStatusKey,
    /// A status value contains whitespace.
    BadStatusValue,
    /// Status text contains a token that is not `key=value`.
    BadStatusText,
}

impl AbiError {
    /// Human-readable reason, for kernel messages and the tool.
    pub const fn as_str(&self) -> &'static str {
        match self {
            AbiError::BadVersion => "unsupported ABI version (expected 1)",
            AbiError::BadFlags => "unknown flags (must be 0)",
            AbiError::BadDataLen => "data_len larger than the data field (max 4015)",
            AbiError::NameEmpty => "empty device name",
            AbiError::NameTooLong => "device name longer than 63 bytes",
            AbiError::NameBadChar => "device name may contain only A-Z a-z 0-9 _ . -",
            AbiError::BadUtf8 => "text is not valid UTF-8",
            AbiError::NoSpace => "text does not fit in the buffer",
            AbiError::BadStatusKey => "status key must be [a-z0-9_]+",
            AbiError::BadStatusValue => "status value contains whitespace",
            AbiError::BadStatusText => "malformed status text (expected key=value pairs)",
        }
    }
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------------------------
// Names
// ---------------------------------------------------------------------------------------------

/// Checks a device name: 1..=63 bytes of `[A-Za-z0-9_.-]`; returns it as `&str`.
pub fn validate_name(name: &[u8]) -> Result<&str, AbiError> {
    if name.is_empty() {
        return Err(AbiError::NameEmpty);
    }
    if name.len() > NAME_MAX {
        return Err(AbiError::NameTooLong);
    }
    if !name.iter().all(|&b| is_name_byte(b)) {
        return Err(AbiError::NameBadChar);
    }
    // All bytes are ASCII, so this cannot fail; map the impossible error anyway (no panics).
    core::str::from_utf8(name).map_err(|_| AbiError::NameBadChar)
}

/// Whether `b` may appear in a device name.
pub const fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'
}

/// A validated device name stored inline (no allocation), for keeping in device state.
///
/// # Invariants
///
/// `bytes[..len]` passed [`validate_name`]; `len <= NAME_MAX`; the rest of `bytes` is zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name {
    bytes: [u8; NAME_MAX],
    len: u8,
}

const _: () = assert!(NAME_MAX <= u8::MAX as usize);

impl Name {
    /// Validates `name` (see [`validate_name`]) and copies it.
    pub fn new(name: &[u8]) -> Result<Name, AbiError> {
        let s = validate_name(name)?;
        let mut bytes = [0u8; NAME_MAX];
        let dst = bytes.get_mut(..s.len()).ok_or(AbiError::NameTooLong)?;
        dst.copy_from_slice(s.as_bytes());
        // INVARIANT: validated above, s.len() <= NAME_MAX <= u8::MAX.
        Ok(Name {
            bytes,
            len: s.len() as u8,
        })
    }

    /// The name as bytes.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

// ---------------------------------------------------------------------------------------------
// Buffer helpers
// ---------------------------------------------------------------------------------------------

fn get_u32(buf: &[u8; BUF_LEN], off: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = buf.get(off..off + 4) {
        b.copy_from_slice(src);
    }
    u32::from_le_bytes(b)
}

fn put_u32(buf: &mut [u8; BUF_LEN], off: usize, v: u32) {
    if let Some(dst) = buf.get_mut(off..off + 4) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// The bytes of `field` up to (not including) its first NUL.
fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => field.get(..n).unwrap_or(field),
        None => field,
    }
}

/// The `name` field of `buf` (all 64 bytes).
fn name_field(buf: &[u8; BUF_LEN]) -> &[u8] {
    buf.get(OFF_NAME..OFF_NAME + NAME_LEN).unwrap_or(&[])
}

/// The `data` field of `buf` (all 4016 bytes).
fn data_field(buf: &[u8; BUF_LEN]) -> &[u8] {
    buf.get(OFF_DATA..).unwrap_or(&[])
}

/// Reads the header of `buf` and returns the text in `data` (bounded by `data_len` and the first NUL).
fn checked_text(buf: &[u8; BUF_LEN]) -> Result<&[u8], AbiError> {
    if get_u32(buf, OFF_ABI_VERSION) != ABI_VERSION {
        return Err(AbiError::BadVersion);
    }
    if get_u32(buf, OFF_FLAGS) != 0 {
        return Err(AbiError::BadFlags);
    }
    let len = usize::try_from(get_u32(buf, OFF_DATA_LEN)).map_err(|_| AbiError::BadDataLen)?;
    if len > DATA_MAX {
        return Err(AbiError::BadDataLen);
    }
    let data = data_field(buf).get(..len).ok_or(AbiError::BadDataLen)?;
    Ok(until_nul(data))
}

/// A decoded request (what userspace sent), borrowing the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request<'a> {
    /// Raw `name` field up to its first NUL (all 64 bytes if it has none); not validated,
    /// use [`Request::name_str`].
    pub name: &'a [u8],
    /// The first `data_len` bytes of `data`, cut at the first NUL.
    pub data: &'a [u8],
}

impl<'a> Request<'a> {
    /// Decodes a request: checks `abi_version` (must be 1), `flags` (must be 0) and
    /// `data_len` (must be <= [`DATA_MAX`]). The name is checked lazily by [`Request::name_str`]
    /// because VERSION and LIST ignore it.
    pub fn decode(buf: &'a [u8; BUF_LEN]) -> Result<Request<'a>, AbiError> {
        let data = checked_text(buf)?;
        Ok(Request {
            name: until_nul(name_field(buf)),
            data,
        })
    }

    /// The validated device name.
    pub fn name_str(&self) -> Result<&'a str, AbiError> {
        validate_name(self.name)
    }

    /// The validated device name, copied out of the buffer (so the buffer can take the reply).
    pub fn name_owned(&self) -> Result<Name, AbiError> {
        Name::new(self.name)
    }

    /// The data text (for CREATE: the table line) as UTF-8.
    pub fn data_str(&self) -> Result<&'a str, AbiError> {
        core::str::from_utf8(self.data).map_err(|_| AbiError::BadUtf8)
    }

    /// Encodes the request into `buf` (userspace side): `abi_version` 1, `flags` 0, `minor` 0,
    /// `data_len`, `name` and `data` NUL-padded; every other byte zeroed.
    ///
    /// Only lengths are checked (name <= 64 bytes, data <= [`DATA_MAX`]); the name is sent
    /// as given so that the kernel's validation can be tested. A 64-byte name has no NUL.
    pub fn encode(&self, buf: &mut [u8; BUF_LEN]) -> Result<(), AbiError> {
        if self.name.len() > NAME_LEN {
            return Err(AbiError::NameTooLong);
        }
        if self.data.len() > DATA_MAX {
            return Err(AbiError::BadDataLen);
        }
        buf.fill(0);
        put_u32(buf, OFF_ABI_VERSION, ABI_VERSION);
        put_u32(buf, OFF_FLAGS, 0);
        put_u32(buf, OFF_MINOR, 0);
        // data.len() <= DATA_MAX < u32::MAX.
        put_u32(buf, OFF_DATA_LEN, self.data.len() as u32);
        if let Some(dst) = buf.get_mut(OFF_NAME..OFF_NAME + self.name.len()) {
            dst.copy_from_slice(self.name);
        }
        if let Some(dst) = buf.get_mut(OFF_DATA..OFF_DATA + self.data.len()) {
            dst.copy_from_slice(self.data);
        }
        Ok(())
    }
}

/// A decoded reply (what the kernel wrote back), borrowing the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply<'a> {
    /// `minor`: N of /dev/rmirrorN (CREATE, STATUS, TABLE; 0 otherwise).
    pub minor: u32,
    /// The reply text: the first `data_len` bytes of `data`, cut at the first NUL.
    pub data: &'a [u8],
}

impl<'a> Reply<'a> {
    /// Decodes a reply: checks `abi_version`, `flags` and `data_len` like [`Request::decode`].
    pub fn decode(buf: &'a [u8; BUF_LEN]) -> Result<Reply<'a>, AbiError> {
        let data = checked_text(buf)?;
        Ok(Reply {
            minor: get_u32(buf, OFF_MINOR),
            data,
        })
    }

    /// The reply text as UTF-8.
    pub fn text(&self) -> Result<&'a str, AbiError> {
        core::str::from_utf8(self.data).map_err(|_| AbiError::BadUtf8)
    }
}

/// The writable part of `data` for a reply ([`DATA_MAX`] bytes: the final NUL is kept free).
/// Format the reply text into it (e.g. with [`status::Writer`]), then call [`finish_reply`].
pub fn reply_area(buf: &mut [u8; BUF_LEN]) -> &mut [u8] {
    buf.get_mut(OFF_DATA..OFF_DATA + DATA_MAX)
        .unwrap_or(&mut [])
}

/// Completes a reply whose `len` bytes of text are already in [`reply_area`]: sets
/// `abi_version` 1, `flags` 0, `minor`, `data_len` = `len` and zeroes the rest of `data`
/// (so no request bytes leak back). The `name` field is left as the request had it.
pub fn finish_reply(buf: &mut [u8; BUF_LEN], minor: u32, len: usize) -> Result<(), AbiError> {
    if len > DATA_MAX {
        return Err(AbiError::NoSpace);
    }
    put_u32(buf, OFF_ABI_VERSION, ABI_VERSION);
    put_u32(buf, OFF_FLAGS, 0);
    put_u32(buf, OFF_MINOR, minor);
    put_u32(buf, OFF_DATA_LEN, len as u32);
    if let Some(rest) = buf.get_mut(OFF_DATA + len..) {
        rest.fill(0);
    }
    Ok(())
}

/// Writes a whole reply: copies `text` into `data`, then [`finish_reply`].
pub fn write_reply(buf: &mut [u8; BUF_LEN], minor: u32, text: &[u8]) -> Result<(), AbiError> {
    if text.len() > DATA_MAX {
        return Err(AbiError::NoSpace);
    }
    if let Some(dst) = buf.get_mut(OFF_DATA..OFF_DATA + text.len()) {
        dst.copy_from_slice(text);
    }
    finish_reply(buf, minor, text.len())
}

// ---------------------------------------------------------------------------------------------
// Text formatting into byte slices
// ---------------------------------------------------------------------------------------------

/// A [`core::fmt::Write`] sink over a byte slice, without allocation.
///
/// A write that does not fit writes nothing and fails with [`fmt::Error`] (no partial
/// UTF-8 sequences); [`TextWriter::overflowed`] remembers it.
#[derive(Debug)]
pub struct TextWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
    overflow: bool,
}

impl<'a> TextWriter<'a> {
    /// A writer that fills `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> TextWriter<'a> {
        TextWriter {
            buf,
            len: 0,
            overflow: false,
        }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether some write did not fit.
    pub fn overflowed(&self) -> bool {
        self.overflow
    }

    /// The bytes written so far.
    pub fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    /// Forgets everything after the first `len` bytes (used to undo a failed field).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
        }
    }

    /// Appends raw bytes; fails (writing nothing) if they do not fit.
    pub fn write_bytes(&mut self, bytes: &[u8]) -> Result<(), AbiError> {
        let end = self.len.checked_add(bytes.len()).ok_or(AbiError::NoSpace)?;
        match self.buf.get_mut(self.len..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len = end;
                Ok(())
            }
            None => {
                self.overflow = true;
                Err(AbiError::NoSpace)
            }
        }
    }
}

impl fmt::Write for TextWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.write_bytes(s.as_bytes()).map_err(|_| fmt::Error)
    }
}

// ---------------------------------------------------------------------------------------------
// Status text
// ---------------------------------------------------------------------------------------------

/// Status text: one line of space-separated `key=value` pairs in a fixed order.
///
/// Values never contain whitespace; new keys are only ever appended; readers ignore
/// unknown keys. The kernel writes it with [`status::Status::write`] (or a
/// [`status::Writer`]), the tool reads it with [`status::parse`].
pub mod status {
    use core::fmt::{self, Write as _};

    use super::{AbiError, Protocol, Role, SockAddr, TextWriter};

    /// Key: device name.
    pub const NAME: &str = "name";
    /// Key: minor (N of /dev/rmirrorN).
    pub const MINOR: &str = "minor";
    /// Key: role (`primary` | `secondary`).
    pub const ROLE: &str = "role";
    /// Key: connection state (`standalone`, `connecting`, `connected`, ...).
    pub const CSTATE: &str = "cstate";
    /// Key: peer address `IP:PORT`.
    pub const PEER: &str = "peer";
    /// Key: local address `IP:PORT`.
    pub const LOCAL: &str = "local";
    /// Key: replication protocol (`A` | `B` | `C`).
    pub const PROTOCOL: &str = "protocol";
    /// Key: backing device path.
    pub const BACKING: &str = "backing";
    /// Key: device size in 512-byte sectors.
    pub const SIZE: &str = "size";
    /// Key: largest write (bytes) sent inline on the small-write path; 0 = disabled.
    pub const INLINE_MAX: &str = "inline_max";
    /// Key: number of write requests.
    pub const WRITES: &str = "writes";
    /// Key: bytes written.
    pub const WRITE_BYTES: &str = "write_bytes";
    /// Key: writes that took the small (inline) path.
    pub const SMALL_WRITES: &str = "small_writes";
    /// Key: writes that took the large path.
    pub const LARGE_WRITES: &str = "large_writes";
    /// Key: acknowledgements received from the peer.
    pub const ACKS: &str = "acks";
    /// Key: sectors marked out of sync.
    pub const OUT_OF_SYNC: &str = "out_of_sync";
    /// Key: requests in flight.
    pub const INFLIGHT: &str = "inflight";
    /// Key: connection attempts (connects on the primary, accepted sockets on the secondary).
    pub const CONNECT_ATTEMPTS: &str = "connect_attempts";
    /// Key: connections that completed their handshake.
    pub const CONNECTS: &str = "connects";
    /// Key: connections declared dead because the peer went silent (heartbeat timeout).
    pub const TIMEOUTS: &str = "timeouts";
    /// Key: heartbeat pings sent.
    pub const PINGS: &str = "pings";
    /// Key: heartbeat pongs received.
    pub const PONGS: &str = "pongs";
    /// Key: replication state (`off`, `established`, `sync_source`, `sync_target`).
    pub const REPL: &str = "repl";
    /// Key: this node's disk state (`up_to_date`, `consistent`, `inconsistent`; a primary's
    /// `detached` after its disk failed, `attaching` while it pulls back what it missed).
    pub const DISK: &str = "disk";
    /// Key: sectors copied by resync.
    pub const RESYNCED: &str = "resynced";
    /// Key: estimated seconds until the resync ends (0: none running or not known yet).
    pub const RESYNC_ETA: &str = "resync_eta";
    /// Key: writes in the outage queue.
    pub const QUEUED: &str = "queued";
    /// Key: bytes in the outage queue.
    pub const QUEUED_BYTES: &str = "queued_bytes";
    /// Key: writes sent by outage-queue replays, in total.
    pub const REPLAYED: &str = "replayed";
    /// Key: times the outage queue was given up (overflow or `outage_max`) for the bitmap.
    pub const QUEUE_OVERFLOWS: &str = "queue_overflows";
    /// Key: protocol messages sent on both sockets, in total.
    pub const MSGS_SENT: &str = "msgs_sent";
    /// Key: sends that pushed their data to the wire at once (not held back for the next
    /// message, `MSG_MORE`): at most one TCP push each.
    pub const PUSHES: &str = "pushes";
    /// Key: protocol messages received on both sockets, in total.
    pub const MSGS_RECEIVED: &str = "msgs_received";

    /// All keys of ABI v1 in their fixed order.
    pub const KEYS: [&str; 33] = [
        NAME,
        MINOR,
        ROLE,
        CSTATE,
        PEER,
        LOCAL,
        PROTOCOL,
        BACKING,
        SIZE,
        INLINE_MAX,
        WRITES,
        WRITE_BYTES,
        SMALL_WRITES,
        LARGE_WRITES,
        ACKS,
        OUT_OF_SYNC,
        INFLIGHT,
        CONNECT_ATTEMPTS,
        CONNECTS,
        TIMEOUTS,
        PINGS,
        PONGS,
        REPL,
        DISK,
        RESYNCED,
        RESYNC_ETA,
        QUEUED,
        QUEUED_BYTES,
        REPLAYED,
        QUEUE_OVERFLOWS,
        MSGS_SENT,
        PUSHES,
        MSGS_RECEIVED,
    ];

    /// Appends `key=value` pairs, space-separated, into a byte slice.
    #[derive(Debug)]
    pub struct Writer<'a> {
        out: TextWriter<'a>,
    }

    impl<'a> Writer<'a> {
        /// A writer filling `buf` (e.g. [`super::reply_area`]).
        pub fn new(buf: &'a mut [u8]) -> Writer<'a> {
            Writer {
                out: TextWriter::new(buf),
            }
        }

        /// Appends ` key=value` (no leading space for the first pair).
        ///
        /// Fails without writing anything if the key is not `[a-z0-9_]+`, if the formatted
        /// value contains whitespace, or if the pair does not fit.
        pub fn field(&mut self, key: &str, value: impl fmt::Display) -> Result<(), AbiError> {
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(AbiError::BadStatusKey);
            }
            let start = self.out.len();
            let res = self.field_inner(start, key, value);
            if res.is_err() {
                self.out.truncate(start);
            }
            res
        }

        fn field_inner(
            &mut self,
            start: usize,
            key: &str,
            value: impl fmt::Display,
        ) -> Result<(), AbiError> {
            if start != 0 {
                self.out.write_bytes(b" ")?;
            }
            self.out.write_bytes(key.as_bytes())?;
            self.out.write_bytes(b"=")?;
            let vstart = self.out.len();
            write!(self.out, "{value}").map_err(|_| AbiError::NoSpace)?;
            let value = self.out.written().get(vstart..).unwrap_or(&[]);
            if value.iter().any(|b| b.is_ascii_whitespace()) {
                return Err(AbiError::BadStatusValue);
            }
            Ok(())
        }

        /// Bytes written so far.
        pub fn len(&self) -> usize {
            self.out.len()
        }

        /// Whether nothing was written yet.
        pub fn is_empty(&self) -> bool {
            self.out.is_empty()
        }

        /// The text written so far.
        pub fn written(&self) -> &[u8] {
            self.out.written()
        }

        /// Ends writing; returns the text length (for [`super::finish_reply`]).
        pub fn finish(self) -> usize {
            self.out.len()
        }
    }

    /// Everything the status line of ABI v1 reports, written in the fixed key order.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Status<'a> {
        /// Device name.
        pub name: &'a str,
        /// N of /dev/rmirrorN.
        pub minor: u32,
        /// Configured role.
        pub role: Role,
        /// Connection state name (lower case, no spaces), e.g. `"connecting"`.
        pub cstate: &'a str,
        /// Peer address.
        pub peer: SockAddr,
        /// Local address.
        pub local: SockAddr,
        /// Replication protocol.
        pub protocol: Protocol,
        /// Backing device path.
        pub backing: &'a str,
        /// Size in 512-byte sectors.
        pub size: u64,
        /// Inline (small-write) threshold in bytes.
        pub inline_max: u32,
        /// Write requests.
        pub writes: u64,
        /// Bytes written.
        pub write_bytes: u64,
        /// Writes on the small path.
        pub small_writes: u64,
        /// Writes on the large path.
        pub large_writes: u64,
        /// Peer acknowledgements.
        pub acks: u64,
        /// Out-of-sync sectors.
        pub out_of_sync: u64,
        /// Requests in flight.
        pub inflight: u64,
        /// Connection attempts.
        pub connect_attempts: u64,
        /// Connections established.
        pub connects: u64,
        /// Heartbeat timeouts.
        pub timeouts: u64,
        /// Pings sent.
        pub pings: u64,
        /// Pongs received.
        pub pongs: u64,
        /// Replication state name.
        pub repl: &'a str,
        /// Disk state name.
        pub disk: &'a str,
        /// Sectors resynced.
        pub resynced: u64,
        /// Resync ETA in seconds.
        pub resync_eta: u64,
        /// Writes in the outage queue.
        pub queued: u64,
        /// Bytes in the outage queue.
        pub queued_bytes: u64,
        /// Writes replayed from the outage queue.
        pub replayed: u64,
        /// Outage queue give-ups.
        pub queue_overflows: u64,
        /// Messages sent.
        pub msgs_sent: u64,
        /// Sends pushed at once.
        pub pushes: u64,
        /// Messages received.
        pub msgs_received: u64,
    }

    impl Status<'_> {
        /// Writes the status line into `out`; returns its length.
        pub fn write(&self, out: &mut [u8]) -> Result<usize, AbiError> {
            let mut w = Writer::new(out);
            w.field(NAME, self.name)?;
            w.field(MINOR, self.minor)?;
            w.field(ROLE, self.role.as_str())?;
            w.field(CSTATE, self.cstate)?;
            w.field(PEER, self.peer)?;
            w.field(LOCAL, self.local)?;
            w.field(PROTOCOL, self.protocol)?;
            w.field(BACKING, self.backing)?;
            w.field(SIZE, self.size)?;
            w.field(INLINE_MAX, self.inline_max)?;
            w.field(WRITES, self.writes)?;
            w.field(WRITE_BYTES, self.write_bytes)?;
            w.field(SMALL_WRITES, self.small_writes)?;
            w.field(LARGE_WRITES, self.large_writes)?;
            w.field(ACKS, self.acks)?;
            w.field(OUT_OF_SYNC, self.out_of_sync)?;
            w.field(INFLIGHT, self.inflight)?;
            w.field(CONNECT_ATTEMPTS, self.connect_attempts)?;
            w.field(CONNECTS, self.connects)?;
            w.field(TIMEOUTS, self.timeouts)?;
            w.field(PINGS, self.pings)?;
            w.field(PONGS, self.pongs)?;
            w.field(REPL, self.repl)?;
            w.field(DISK, self.disk)?;
            w.field(RESYNCED, self.resynced)?;
            w.field(RESYNC_ETA, self.resync_eta)?;
            w.field(QUEUED, self.queued)?;
            w.field(QUEUED_BYTES, self.queued_bytes)?;
            w.field(REPLAYED, self.replayed)?;
            w.field(QUEUE_OVERFLOWS, self.queue_overflows)?;
            w.field(MSGS_SENT, self.msgs_sent)?;
            w.field(PUSHES, self.pushes)?;
            w.field(MSGS_RECEIVED, self.msgs_received)?;
            Ok(w.finish())
        }
    }

    /// Iterator over the `(key, value)` pairs of a status line; see [`parse`].
    #[derive(Debug, Clone)]
    pub struct Fields<'a> {
        tokens: core::str::SplitAsciiWhitespace<'a>,
    }

    impl<'a> Iterator for Fields<'a> {
        type Item = Result<(&'a str, &'a str), AbiError>;

        fn next(&mut self) -> Option<Self::Item> {
            let tok = self.tokens.next()?;
            Some(match tok.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok((k, v)),
                _ => Err(AbiError::BadStatusText),
            })
        }
    }

    /// Splits status text into `(key, value)` pairs, in order. Any whitespace separates
    /// pairs; a token without `=` or with an empty key is an error item. Unknown keys are
    /// returned like known ones (readers must ignore what they do not know).
    pub fn parse(text: &str) -> Fields<'_> {
        Fields {
            tokens: text.split_ascii_whitespace(),
        }
    }

    /// The value of the first pair with `key`, skipping malformed tokens.
    pub fn get<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        parse(text)
            .filter_map(Result::ok)
            .find(|&(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

/// Event lines (the EVENTS command, `rmirrorctl events`), one per state change of a device:
/// `SEQ KIND name=NAME KEY=VALUE ...`, with `SEQ` a decimal sequence number (module-wide,
/// increasing by one per event), `KIND` one of [`KINDS`], and the keys and values of the
/// status text ([`KEYS`]): a `create` line carries all of them, a `change` line the ones that
/// changed, a `destroy` line none. Like `drbdsetup events2`, the tool first prints an `exists`
/// line per device (from STATUS), then the changes.
pub mod events {
    use super::status;

    /// Kind: the device's state when the reader started (printed by the tool, never sent).
    pub const EXISTS: &str = "exists";
    /// Kind: a device was created.
    pub const CREATE: &str = "create";
    /// Kind: some of the device's states changed.
    pub const CHANGE: &str = "change";
    /// Kind: the device was removed.
    pub const DESTROY: &str = "destroy";
    /// Every kind.
    pub const KINDS: [&str; 4] = [EXISTS, CREATE, CHANGE, DESTROY];
    /// The states an event reports, with their status keys: role, connection, disk and
    /// replication (resync) state.
    pub const KEYS: [&str; 4] = [status::ROLE, status::CSTATE, status::DISK, status::REPL];
    /// EVENTS data asking for the next sequence number only.
    pub const NOW: &str = "now";
    /// The longest event line the kernel writes.
    pub const LINE_MAX: usize = 160;

    /// What an EVENTS request asks for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Since {
        /// The next sequence number (`now`).
        Now,
        /// Every kept event from this sequence number on.
        Seq(u64),
    }

    /// Parses an EVENTS request's data.
    pub fn parse_request(data: &str) -> Option<Since> {
        if data == NOW {
            return Some(Since::Now);
        }
        if data.is_empty() || data.len() > 20 || !data.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        data.parse().ok().map(Since::Seq)
    }

    /// Splits an event line into its sequence number, kind and `key=value` text (read that
    /// with [`status::parse`]); `None` for a malformed line.
    pub fn parse_line(line: &str) -> Option<(u64, &str, &str)> {
        let line = line.trim();
        let (seq, rest) = line.split_once(' ')?;
        let (kind, fields) = rest.split_once(' ').unwrap_or((rest, ""));
        let seq = seq.parse().ok()?;
        KINDS.contains(&kind).then_some((seq, kind, fields))
    }
}

#[cfg(test)]
mod tests {
    use super::status::{self, Status};
    use super::*;
    use proptest::prelude::*;

    static_assertions::const_assert_eq!(OFF_DATA + DATA_LEN, 4096);
    static_assertions::const_assert_eq!(IOC_LIST, 0xD000_E704);

    #[test]
    fn ioctl_numbers_match_linux_macros() {
        // Values from the C macros on x86_64, e.g. BLKGETSIZE64 = _IOR(0x12, 114, size_t).
        assert_eq!(ior(0x12, 114, 8), 0x8008_1272);
        // FS_IOC_GETFLAGS = _IOR('f', 1, long).
        assert_eq!(ior(b'f', 1, 8), 0x8008_6601);
        // LOOP_CTL_* use _IO (dir none, size 0): _IO(0x4C, 0x80) = 0x4C80.
        assert_eq!(ioc(IOC_NONE, 0x4C, 0x80, 0), 0x4C80);
        // _IOW('V', 5, int) (VIDIOC_S_FMT-like) = 0x40045605.
        assert_eq!(iow(b'V', 5, 4), 0x4004_5605);
        assert_eq!(iowr(IOC_TYPE, 0, BUF_LEN), 0xD000_E700);
    }

    #[test]
    fn cmd_round_trip() {
        for (i, cmd) in Cmd::ALL.iter().enumerate() {
            assert_eq!(usize::from(cmd.nr()), i);
            assert_eq!(Cmd::from_nr(cmd.nr()), Some(*cmd));
            assert_eq!(Cmd::from_request(cmd.request()), Some(*cmd));
            assert!(!cmd.as_str().is_empty());
        }
        assert_eq!(Cmd::ALL.len(), 12);
        assert_eq!(Cmd::from_nr(12), None);
        assert_eq!(Cmd::Events.request(), 0xD000_E70B);
        assert!(!Cmd::Events.takes_name());
        assert_eq!(Cmd::Attach.request(), 0xD000_E70A);
        assert_eq!(Cmd::Attach.as_str(), "ATTACH");
        assert!(Cmd::Attach.takes_name());
        assert_eq!(Cmd::Connect.request(), 0xD000_E706);
        assert_eq!(Cmd::Disconnect.request(), 0xD000_E707);
        assert_eq!(Cmd::Primary.request(), 0xD000_E708);
        assert_eq!(Cmd::Secondary.request(), 0xD000_E709);
        assert_eq!(Cmd::Primary.as_str(), "PRIMARY");
        assert!(Cmd::Secondary.takes_name());
        assert_eq!(Cmd::Connect.as_str(), "CONNECT");
        assert_eq!(Cmd::Disconnect.as_str(), "DISCONNECT");
        assert!(Cmd::Connect.takes_name());
        assert!(Cmd::Disconnect.takes_name());
        assert!(Cmd::Create.takes_name());
        assert!(!Cmd::List.takes_name());
        assert!(!Cmd::Version.takes_name());
    }

    #[test]
    fn event_lines_and_requests() {
        use super::events::{self, Since};
        assert_eq!(events::parse_request("now"), Some(Since::Now));
        assert_eq!(events::parse_request("0"), Some(Since::Seq(0)));
        assert_eq!(events::parse_request("18446744073709551615"), Some(Since::Seq(u64::MAX)));
        for bad in ["", "-1", "1 2", "18446744073709551616", "x", "Now", "+3"] {
            assert_eq!(events::parse_request(bad), None, "{bad}");
        }
        let (seq, kind, rest) = events::parse_line("17 change name=r0 cstate=outage\n").unwrap();
        assert_eq!((seq, kind), (17, "change"));
        assert_eq!(status::get(rest, "name"), Some("r0"));
        assert_eq!(status::get(rest, "cstate"), Some("outage"));
        assert_eq!(events::parse_line("3 destroy"), Some((3, "destroy", "")));
        for bad in ["", "x change name=r0", "3 rename name=r0", "3"] {
            assert_eq!(events::parse_line(bad), None, "{bad}");
        }
    }

    #[test]
    fn from_request_rejects_near_misses() {
        let ok = Cmd::Status.request();
        assert_eq!(Cmd::from_request(ok ^ (1 << 30)), None); // dir W only
        assert_eq!(Cmd::from_request(ok ^ (1 << 31)), None); // dir R only
        assert_eq!(Cmd::from_request(iowr(IOC_TYPE, 3, 4095)), None); // size
        assert_eq!(Cmd::from_request(iowr(IOC_TYPE, 3, 8)), None);
        assert_eq!(Cmd::from_request(iowr(0xE6, 3, BUF_LEN)), None); // type
        assert_eq!(Cmd::from_request(iowr(IOC_TYPE, 12, BUF_LEN)), None); // nr
        assert_eq!(Cmd::from_request(iowr(IOC_TYPE, 255, BUF_LEN)), None);
        assert_eq!(Cmd::from_request(0), None);
        assert_eq!(Cmd::from_request(u32::MAX), None);
    }

    #[test]
    fn names() {
        assert_eq!(validate_name(b"r0"), Ok("r0"));
        assert_eq!(validate_name(b"A-z_0.9"), Ok("A-z_0.9"));
        assert_eq!(validate_name(&[b'a'; 63]).map(str::len), Ok(63));
        assert_eq!(validate_name(&[b'a'; 64]), Err(AbiError::NameTooLong));
        assert_eq!(validate_name(b""), Err(AbiError::NameEmpty));
        for bad in [
            &b"a b"[..],
            b"a/b",
            b"a\0",
            b"\xff",
            b"r\n",
            b"caf\xc3\xa9",
            b"a:b",
        ] {
            assert_eq!(validate_name(bad), Err(AbiError::NameBadChar), "{bad:?}");
        }
        let n = Name::new(b"disk.1").unwrap();
        assert_eq!(n.as_str(), "disk.1");
        assert_eq!(n.to_string(), "disk.1");
        assert_eq!(format!("{n:?}"), "\"disk.1\"");
        assert_eq!(Name::new(b"x y"), Err(AbiError::NameBadChar));
        assert_eq!(Name::new(&[b'z'; 63]).unwrap().as_bytes(), &[b'z'; 63][..]);
    }

    #[test]
    fn request_round_trip() {
        let mut buf = [0xAAu8; BUF_LEN];
        let line = b"0 8 rmirror /dev/vdb primary 10.0.0.1:1 10.0.0.2:1 C";
        Request {
            name: b"r0",
            data: line,
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(&buf[0..4], &1u32.to_le_bytes());
        assert_eq!(&buf[4..12], &[0; 8]);
        assert_eq!(&buf[12..16], &(line.len() as u32).to_le_bytes());
        assert_eq!(&buf[16..18], b"r0");
        assert!(buf[18..80].iter().all(|&b| b == 0));
        assert!(buf[80 + line.len()..].iter().all(|&b| b == 0));
        let req = Request::decode(&buf).unwrap();
        assert_eq!(req.name_str(), Ok("r0"));
        assert_eq!(req.name_owned().unwrap().as_str(), "r0");
        assert_eq!(req.data_str().unwrap().as_bytes(), line);
    }

    #[test]
    fn request_decode_errors() {
        let mut buf = [0u8; BUF_LEN];
        Request {
            name: b"r0",
            data: b"x",
        }
        .encode(&mut buf)
        .unwrap();
        let good = buf;

        buf[0] = 2;
        assert_eq!(Request::decode(&buf), Err(AbiError::BadVersion));
        buf = good;
        buf[0] = 0;
        assert_eq!(Request::decode(&buf), Err(AbiError::BadVersion));
        buf = good;
        buf[7] = 0x80;
        assert_eq!(Request::decode(&buf), Err(AbiError::BadFlags));
        buf = good;
        buf[12..16].copy_from_slice(&(DATA_MAX as u32 + 1).to_le_bytes());
        assert_eq!(Request::decode(&buf), Err(AbiError::BadDataLen));
        buf[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Request::decode(&buf), Err(AbiError::BadDataLen));
        buf[12..16].copy_from_slice(&(DATA_MAX as u32).to_le_bytes());
        assert_eq!(Request::decode(&buf).unwrap().data, b"x"); // cut at the first NUL

        // Name field without NUL: decodes (VERSION/LIST ignore it), name_str fails.
        buf = good;
        buf[16..80].fill(b'a');
        let req = Request::decode(&buf).unwrap();
        assert_eq!(req.name.len(), 64);
        assert_eq!(req.name_str(), Err(AbiError::NameTooLong));
        buf[16] = 0;
        assert_eq!(
            Request::decode(&buf).unwrap().name_str(),
            Err(AbiError::NameEmpty)
        );

        buf = good;
        buf[80] = 0xff;
        assert_eq!(
            Request::decode(&buf).unwrap().data_str(),
            Err(AbiError::BadUtf8)
        );
    }

    #[test]
    fn request_encode_limits() {
        let mut buf = [0u8; BUF_LEN];
        let big = [b'x'; DATA_LEN];
        assert_eq!(
            Request {
                name: b"a",
                data: &big
            }
            .encode(&mut buf),
            Err(AbiError::BadDataLen)
        );
        assert!(Request {
            name: b"a",
            data: &big[..DATA_MAX]
        }
        .encode(&mut buf)
        .is_ok());
        assert_eq!(
            Request {
                name: &[b'n'; 65],
                data: b""
            }
            .encode(&mut buf),
            Err(AbiError::NameTooLong)
        );
        // 64 bytes are sent raw (no NUL) so the kernel's check can be exercised.
        Request {
            name: &[b'n'; 64],
            data: b"",
        }
        .encode(&mut buf)
        .unwrap();
        assert_eq!(
            Request::decode(&buf).unwrap().name_str(),
            Err(AbiError::NameTooLong)
        );
    }

    #[test]
    fn reply_round_trip() {
        let mut buf = [0x55u8; BUF_LEN];
        write_reply(&mut buf, 7, b"rmirror 0.1.0").unwrap();
        let r = Reply::decode(&buf).unwrap();
        assert_eq!(r.minor, 7);
        assert_eq!(r.text(), Ok("rmirror 0.1.0"));
        assert!(buf[80 + 13..].iter().all(|&b| b == 0));
        // name field is left untouched
        assert_eq!(buf[16], 0x55);

        assert_eq!(
            write_reply(&mut buf, 0, &[b'a'; DATA_LEN]),
            Err(AbiError::NoSpace)
        );
        write_reply(&mut buf, 0, &[b'a'; DATA_MAX]).unwrap();
        assert_eq!(buf[BUF_LEN - 1], 0);
        assert_eq!(Reply::decode(&buf).unwrap().data.len(), DATA_MAX);
        assert_eq!(finish_reply(&mut buf, 0, DATA_LEN), Err(AbiError::NoSpace));
    }

    #[test]
    fn reply_area_then_finish() {
        let mut buf = [0xEEu8; BUF_LEN];
        let area = reply_area(&mut buf);
        assert_eq!(area.len(), DATA_MAX);
        let mut w = status::Writer::new(area);
        w.field("name", "r0").unwrap();
        w.field("minor", 3u32).unwrap();
        let n = w.finish();
        finish_reply(&mut buf, 3, n).unwrap();
        let r = Reply::decode(&buf).unwrap();
        assert_eq!(r.text(), Ok("name=r0 minor=3"));
        assert_eq!(r.minor, 3);
    }

    fn sample_status() -> Status<'static> {
        Status {
            name: "r0",
            minor: 0,
            role: Role::Primary,
            cstate: "connecting",
            peer: SockAddr {
                ip: [10, 0, 0, 2],
                port: 7788,
            },
            local: SockAddr {
                ip: [10, 0, 0, 1],
                port: 7788,
            },
            protocol: Protocol::C,
            backing: "/dev/vdb",
            size: 2048,
            inline_max: 4096,
            writes: 1,
            write_bytes: 4096,
            small_writes: 1,
            large_writes: 0,
            acks: 1,
            out_of_sync: 0,
            inflight: 0,
            connect_attempts: 2,
            connects: 1,
            timeouts: 0,
            pings: 5,
            pongs: 4,
            repl: "off",
            disk: "up_to_date",
            resynced: 0,
            resync_eta: 0,
            queued: 0,
            queued_bytes: 0,
            replayed: 0,
            queue_overflows: 0,
            msgs_sent: 7,
            pushes: 6,
            msgs_received: 9,
        }
    }

    #[test]
    fn status_line() {
        let mut out = [0u8; 512];
        let n = sample_status().write(&mut out).unwrap();
        let text = core::str::from_utf8(&out[..n]).unwrap();
        assert_eq!(
            text,
            "name=r0 minor=0 role=primary cstate=connecting peer=10.0.0.2:7788 \
             local=10.0.0.1:7788 protocol=C backing=/dev/vdb size=2048 inline_max=4096 \
             writes=1 write_bytes=4096 small_writes=1 large_writes=0 acks=1 out_of_sync=0 inflight=0 \
             connect_attempts=2 connects=1 timeouts=0 pings=5 pongs=4 repl=off disk=up_to_date \
             resynced=0 resync_eta=0 queued=0 queued_bytes=0 replayed=0 queue_overflows=0 \
             msgs_sent=7 pushes=6 msgs_received=9"
        );
        let keys: Vec<&str> = status::parse(text).map(|kv| kv.unwrap().0).collect();
        assert_eq!(keys, status::KEYS);
        assert_eq!(status::get(text, "cstate"), Some("connecting"));
        assert_eq!(status::get(text, "nope"), None);

        // Too small: error, nothing half-written beyond the last whole pair.
        let mut small = [0u8; 40];
        assert_eq!(sample_status().write(&mut small), Err(AbiError::NoSpace));
    }

    #[test]
    fn status_writer_rejects_bad_fields() {
        let mut out = [0u8; 64];
        let mut w = status::Writer::new(&mut out);
        w.field("a", 1).unwrap();
        assert_eq!(w.field("b", "x y"), Err(AbiError::BadStatusValue));
        assert_eq!(w.field("b", "x\ty"), Err(AbiError::BadStatusValue));
        assert_eq!(w.field("", 1), Err(AbiError::BadStatusKey));
        assert_eq!(w.field("B", 1), Err(AbiError::BadStatusKey));
        assert_eq!(w.field("a=b", 1), Err(AbiError::BadStatusKey));
        assert_eq!(w.field("c", "z".repeat(100)), Err(AbiError::NoSpace));
        w.field("d", "").unwrap();
        assert_eq!(w.written(), b"a=1 d=");
        assert_eq!(w.len(), 6);
        assert!(!w.is_empty());
    }

    #[test]
    fn status_parse_errors_and_unknown_keys() {
        let items: Vec<_> = status::parse("a=1 junk =x b=c=d\n e=").collect();
        assert_eq!(
            items,
            vec![
                Ok(("a", "1")),
                Err(AbiError::BadStatusText),
                Err(AbiError::BadStatusText),
                Ok(("b", "c=d")),
                Ok(("e", "")),
            ]
        );
        assert_eq!(status::parse("").count(), 0);
    }

    #[test]
    fn text_writer() {
        use core::fmt::Write;
        let mut b = [0u8; 4];
        let mut w = TextWriter::new(&mut b);
        assert!(w.is_empty());
        write!(w, "ab").unwrap();
        assert!(write!(w, "cde").is_err());
        assert!(w.overflowed());
        assert_eq!(w.written(), b"ab");
        write!(w, "cd").unwrap();
        assert_eq!(w.written(), b"abcd");
        w.truncate(1);
        assert_eq!(w.written(), b"a");
    }

    #[test]
    fn errors_have_messages() {
        use AbiError::*;
        for e in [
            BadVersion,
            BadFlags,
            BadDataLen,
            NameEmpty,
            NameTooLong,
            NameBadChar,
            BadUtf8,
            NoSpace,
            BadStatusKey,
            BadStatusValue,
            BadStatusText,
        ] {
            assert!(!e.as_str().is_empty());
            assert_eq!(e.to_string(), e.as_str());
        }
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), BUF_LEN)) {
            let mut buf = [0u8; BUF_LEN];
            buf.copy_from_slice(&bytes);
            if let Ok(r) = Request::decode(&buf) {
                let _ = r.name_str();
                let _ = r.data_str();
                prop_assert!(r.data.len() <= DATA_MAX);
            }
            let _ = Reply::decode(&buf);
        }

        #[test]
        fn header_fuzz_never_panics(ver: u32, flags: u32, len: u32, name in proptest::collection::vec(any::<u8>(), 0..=64)) {
            let mut buf = [0u8; BUF_LEN];
            buf[0..4].copy_from_slice(&ver.to_le_bytes());
            buf[4..8].copy_from_slice(&flags.to_le_bytes());
            buf[12..16].copy_from_slice(&len.to_le_bytes());
            buf[16..16 + name.len()].copy_from_slice(&name);
            match Request::decode(&buf) {
                Ok(r) => {
                    prop_assert!(ver == 1 && flags == 0 && (len as usize) <= DATA_MAX);
                    let _ = r.name_str();
                }
                Err(_) => prop_assert!(ver != 1 || flags != 0 || len as usize > DATA_MAX),
            }
        }

        #[test]
        fn valid_names_round_trip(name in "[A-Za-z0-9_.-]{1,63}") {
            let mut buf = [0u8; BUF_LEN];
            Request { name: name.as_bytes(), data: b"" }.encode(&mut buf).unwrap();
            prop_assert_eq!(Request::decode(&buf).unwrap().name_str(), Ok(name.as_str()));
        }

        #[test]
        fn reply_text_round_trip(text in "[ -~\n]{0,300}", minor: u32) {
            let mut buf = [0u8; BUF_LEN];
            write_reply(&mut buf, minor, text.as_bytes()).unwrap();
            let r = Reply::decode(&buf).unwrap();
            prop_assert_eq!(r.minor, minor);
            prop_assert_eq!(r.text(), Ok(text.as_str()));
        }

        #[test]
        fn status_parse_never_panics(s in ".{0,200}") {
            for item in status::parse(&s) {
                let _ = item;
            }
            let _ = status::get(&s, "name");
        }
    }
}
