// SPDX-License-Identifier: GPL-2.0
//! On-disk metadata: the 4 KiB superblock and the layout of superblock, AL ring and bitmap.
//!
//! Internal metadata sits at the end of the backing device, external metadata at the start
//! of a separate device (`Documentation/ondisk-format.rst` has the diagrams):
//!
//! ```text
//!   internal:  | data (data_sectors) | bitmap | AL ring | superblock (last 4 KiB) |
//!   external:  data device: | data (data_sectors) ... |
//!              meta device: | superblock | AL ring | bitmap | (unused) |
//! ```
//!
//! Every area is 4 KiB aligned and a multiple of 4 KiB. All fields are little-endian; the
//! superblock carries magic, version, feature flags and a CRC32C of the whole block. This
//! module decides offsets and parses bytes; the driver does the I/O.

use super::le::{get_u32, get_u64, put_u32, put_u64};
use super::al;
use super::bitmap;
use super::crc::crc32c;

/// Size of the superblock in bytes.
pub const SUPERBLOCK_SIZE: usize = 4096;
/// Sectors per superblock (and per 4 KiB block).
pub const BLOCK_SECTORS: u64 = 8;
/// Superblock magic: "RMMD" read as a little-endian `u32`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"RMMD");
/// Format version written by this code. Bumped only for changes older code cannot read.
pub const VERSION: u32 = 1;
/// Compatible features this code knows (none yet). Unknown compatible bits are ignored
/// and cleared when the superblock is rewritten.
pub const FEATURES_COMPAT_KNOWN: u64 = 0;
/// Incompatible features this code knows (none yet). A superblock with any other bit set
/// is refused.
pub const FEATURES_INCOMPAT_KNOWN: u64 = 0;

/// Flag: the data is consistent (a full resync is not needed to make it usable).
pub const MDF_CONSISTENT: u64 = 1 << 0;
/// Flag: this node was primary when the flags were last written.
pub const MDF_PRIMARY_IND: u64 = 1 << 1;
/// Flag: the peer was connected when the flags were last written.
pub const MDF_CONNECTED_IND: u64 = 1 << 2;
/// Flag: a full resync is required (the whole bitmap is set).
pub const MDF_FULL_SYNC: u64 = 1 << 3;
/// Flag: the data was up to date at some point.
pub const MDF_WAS_UP_TO_DATE: u64 = 1 << 4;
/// Flag: the peer is known to be outdated.
pub const MDF_PEER_OUT_DATED: u64 = 1 << 5;
/// Flag: this node crashed while primary: its activity log extents need resync.
pub const MDF_CRASHED_PRIMARY: u64 = 1 << 6;
/// Flag: the activity log was cleanly shut down (no extent active); skip its extents.
pub const MDF_AL_CLEAN: u64 = 1 << 7;
/// Flag: the activity log is disabled (every write is logged in the bitmap instead).
pub const MDF_AL_DISABLED: u64 = 1 << 8;
/// All flags this code knows; a superblock with other flag bits is refused.
pub const MDF_KNOWN: u64 = (1 << 9) - 1;

/// Current UUID of freshly created metadata (as DRBD's `UUID_JUST_CREATED`).
pub const UUID_JUST_CREATED: u64 = 4;
/// Highest node id.
pub const MAX_NODE_ID: u32 = 31;
/// Smallest usable data area, in sectors (1 MiB).
pub const MIN_DATA_SECTORS: u64 = 2048;

// Superblock field offsets (bytes).
const OFF_MAGIC: usize = 0x000; // u32
const OFF_VERSION: usize = 0x004; // u32
const OFF_CRC: usize = 0x008; // u32, crc32c of the block with this field zero
const OFF_SIZE: usize = 0x00c; // u32, SUPERBLOCK_SIZE
const OFF_FEAT_COMPAT: usize = 0x010; // u64
const OFF_FEAT_INCOMPAT: usize = 0x018; // u64
const OFF_FLAGS: usize = 0x020; // u64, MDF_*
const OFF_DEVICE_UUID: usize = 0x028; // u64
const OFF_CURRENT_UUID: usize = 0x030; // u64
const OFF_BITMAP_UUID: usize = 0x038; // u64
const OFF_HISTORY_UUID: usize = 0x040; // u64[2]
const OFF_DATA_SECTORS: usize = 0x050; // u64
const OFF_SB_OFFSET: usize = 0x058; // u64, sector on the metadata device
const OFF_AL_OFFSET: usize = 0x060; // u64, sector on the metadata device
const OFF_BM_OFFSET: usize = 0x068; // u64, sector on the metadata device
const OFF_BM_SECTORS: usize = 0x070; // u64
const OFF_MD_KIND: usize = 0x078; // u32, 0 internal, 1 external
const OFF_REGION_SHIFT: usize = 0x07c; // u32
const OFF_AL_EXTENT_SHIFT: usize = 0x080; // u32
const OFF_AL_RING_SLOTS: usize = 0x084; // u32
const OFF_AL_NR_EXTENTS: usize = 0x088; // u32
const OFF_NODE_ID: usize = 0x08c; // u32
/// First reserved byte; 0x090..0x1000 is written as zero and ignored on read.
const OFF_RESERVED: usize = 0x090;

const _: () = assert!(OFF_NODE_ID + 4 == OFF_RESERVED);
const _: () = assert!(OFF_RESERVED <= SUPERBLOCK_SIZE);
const _: () = assert!(SUPERBLOCK_SIZE as u64 == BLOCK_SECTORS * 512);
const _: () = assert!(SUPERBLOCK_SIZE == al::SLOT_SIZE && SUPERBLOCK_SIZE == bitmap::PAGE_SIZE);

/// Errors of metadata parsing and layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// No superblock: wrong magic.
    BadMagic,
    /// A format version this code does not read.
    UnsupportedVersion,
    /// Checksum mismatch.
    BadChecksum,
    /// Incompatible feature bits this code does not know.
    UnsupportedFeatures,
    /// A field is out of range or inconsistent with another.
    Invalid,
    /// Region size is not a power of two from 4 KiB to 1 MiB.
    InvalidRegionSize,
    /// Activity log parameters are invalid.
    InvalidAl,
    /// The device is too small for metadata plus the minimum data area.
    DeviceTooSmall,
    /// The metadata device is too small for the data device.
    MetaDeviceTooSmall,
    /// The device is too large (for the AL extent numbers or the bitmap).
    DeviceTooLarge,
    /// Metadata areas overlap each other or the data.
    Overlap,
    /// The device's size differs from what the metadata was created for.
    SizeChanged,
}

impl Error {
    /// Human-readable description, for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Error::BadMagic => "no rmirror metadata (bad magic)",
            Error::UnsupportedVersion => "unsupported metadata version",
            Error::BadChecksum => "metadata checksum mismatch",
            Error::UnsupportedFeatures => "metadata uses unsupported features",
            Error::Invalid => "invalid metadata field",
            Error::InvalidRegionSize => {
                "bitmap region size must be a power of two from 4 KiB to 1 MiB"
            }
            Error::InvalidAl => "invalid activity log parameters",
            Error::DeviceTooSmall => "device too small for metadata",
            Error::MetaDeviceTooSmall => "metadata device too small",
            Error::DeviceTooLarge => "device too large",
            Error::Overlap => "metadata areas overlap",
            Error::SizeChanged => "device size differs from the metadata",
        }
    }

    /// The Linux errno the kernel and `rmirrorctl` report this as (positive): no metadata
    /// `ENODATA`, a bad checksum `EBADMSG`, an unknown version or feature `EOPNOTSUPP`, a size
    /// mismatch `ENOSPC`, anything else inconsistent `EUCLEAN` (as filesystems report
    /// corrupted metadata).
    pub fn errno(&self) -> i32 {
        const ENOSPC: i32 = 28;
        const ENODATA: i32 = 61;
        const EBADMSG: i32 = 74;
        const EOPNOTSUPP: i32 = 95;
        const EUCLEAN: i32 = 117;
        match self {
            Error::BadMagic => ENODATA,
            Error::BadChecksum => EBADMSG,
            Error::UnsupportedVersion | Error::UnsupportedFeatures => EOPNOTSUPP,
            Error::DeviceTooSmall | Error::MetaDeviceTooSmall | Error::SizeChanged => ENOSPC,
            Error::Invalid
            | Error::InvalidRegionSize
            | Error::InvalidAl
            | Error::DeviceTooLarge
            | Error::Overlap => EUCLEAN,
        }
    }
}

/// Where the metadata lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// At the end of the backing (data) device.
    Internal = 0,
    /// At the start of a separate metadata device.
    External = 1,
}

/// Positions and sizes (in 512-byte sectors) of the data and metadata areas.
///
/// Offsets of the superblock, AL ring and bitmap are on the metadata device (the backing
/// device itself for [`Kind::Internal`]); the data area always starts at sector 0 of the data
/// device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Internal or external metadata.
    pub kind: Kind,
    /// Usable data sectors (the size of `/dev/rmirrorN`).
    pub data_sectors: u64,
    /// log2 of the bitmap region size in bytes.
    pub region_shift: u32,
    /// Sector of the superblock.
    pub sb_offset: u64,
    /// First sector of the AL ring.
    pub al_offset: u64,
    /// Number of AL ring slots (4 KiB each).
    pub al_slots: u32,
    /// First sector of the bitmap.
    pub bm_offset: u64,
    /// Sectors reserved for the bitmap (whole 4 KiB pages).
    pub bm_sectors: u64,
}

/// Sectors of bitmap (whole 4 KiB pages) for `data_sectors` sectors of data.
pub fn bm_sectors_for(data_sectors: u64, region_shift: u32) -> Result<u64, Error> {
    let bits = bitmap::nr_regions(data_sectors, region_shift).ok_or(Error::InvalidRegionSize)?;
    bitmap::nr_pages_for(bits)
        .checked_mul(BLOCK_SECTORS)
        .ok_or(Error::DeviceTooLarge)
}

/// Sector of the internal superblock on a backing device of `backing_sectors`: the last
/// 4 KiB-aligned block.
pub fn internal_sb_offset(backing_sectors: u64) -> Option<u64> {
    (backing_sectors & !(BLOCK_SECTORS - 1)).checked_sub(BLOCK_SECTORS)
}

fn check_common(region_shift: u32, al_slots: u32) -> Result<(), Error> {
    if !(bitmap::MIN_REGION_SHIFT..=bitmap::MAX_REGION_SHIFT).contains(&region_shift) {
        return Err(Error::InvalidRegionSize);
    }
    if !(al::MIN_RING_SLOTS..=al::MAX_RING_SLOTS).contains(&al_slots) {
        return Err(Error::InvalidAl);
    }
    Ok(())
}

impl Layout {
    /// Metadata at the end of a backing device of `backing_sectors`:
    /// `| data | bitmap | AL ring | superblock |`, the superblock in the last 4 KiB-aligned
    /// block. The data area is what remains, rounded down to 4 KiB.
    pub fn internal(backing_sectors: u64, region_shift: u32, al_slots: u32) -> Result<Self, Error> {
        check_common(region_shift, al_slots)?;
        let sb_offset = internal_sb_offset(backing_sectors).ok_or(Error::DeviceTooSmall)?;
        let al_sectors = u64::from(al_slots) * BLOCK_SECTORS;
        let al_offset = sb_offset
            .checked_sub(al_sectors)
            .ok_or(Error::DeviceTooSmall)?;
        // A bitmap for everything before the AL is big enough for the (smaller) data area.
        let bm_sectors = bm_sectors_for(al_offset, region_shift)?;
        let bm_offset = al_offset
            .checked_sub(bm_sectors)
            .ok_or(Error::DeviceTooSmall)?;
        let layout = Layout {
            kind: Kind::Internal,
            data_sectors: bm_offset,
            region_shift,
            sb_offset,
            al_offset,
            al_slots,
            bm_offset,
            bm_sectors,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Metadata at the start of a separate device of `meta_dev_sectors`:
    /// `| superblock | AL ring | bitmap |`, for a data device of `data_sectors` (all usable).
    pub fn external(
        meta_dev_sectors: u64,
        data_sectors: u64,
        region_shift: u32,
        al_slots: u32,
    ) -> Result<Self, Error> {
        check_common(region_shift, al_slots)?;
        if data_sectors < MIN_DATA_SECTORS {
            return Err(Error::DeviceTooSmall);
        }
        let al_offset = BLOCK_SECTORS;
        let bm_offset = al_offset + u64::from(al_slots) * BLOCK_SECTORS;
        let bm_sectors = bm_sectors_for(data_sectors, region_shift)?;
        let end = bm_offset
            .checked_add(bm_sectors)
            .ok_or(Error::DeviceTooLarge)?;
        if end > meta_dev_sectors {
            return Err(Error::MetaDeviceTooSmall);
        }
        let layout = Layout {
            kind: Kind::External,
            data_sectors,
            region_shift,
            sb_offset: 0,
            al_offset,
            al_slots,
            bm_offset,
            bm_sectors,
        };
        layout.validate()?;
        Ok(layout)
    }

    /// Sectors of the AL ring.
    pub fn al_sectors(&self) -> u64 {
        u64::from(self.al_slots) * BLOCK_SECTORS
    }

    /// Sector of AL ring slot `slot` (see `al::Transaction::ring_slot`).
    pub fn al_slot_sector(&self, slot: u32) -> u64 {
        self.al_offset
            .saturating_add(u64::from(slot).saturating_mul(BLOCK_SECTORS))
    }

    /// Sector of bitmap page `page` (see `bitmap::Bitmap::encode_page`).
    pub fn bm_page_sector(&self, page: usize) -> u64 {
        self.bm_offset
            .saturating_add((page as u64).saturating_mul(BLOCK_SECTORS))
    }

    /// First sector and size of the whole metadata area on the metadata device.
    pub fn md_area(&self) -> (u64, u64) {
        let start = self.sb_offset.min(self.al_offset).min(self.bm_offset);
        let end = (self.sb_offset.saturating_add(BLOCK_SECTORS))
            .max(self.al_offset.saturating_add(self.al_sectors()))
            .max(self.bm_offset.saturating_add(self.bm_sectors));
        (start, end - start)
    }

    /// Checks internal consistency: alignment, sizes, bitmap coverage, no overlaps. Never
    /// panics, whatever the field values.
    pub fn validate(&self) -> Result<(), Error> {
        check_common(self.region_shift, self.al_slots)?;
        if self.data_sectors < MIN_DATA_SECTORS {
            return Err(Error::DeviceTooSmall);
        }
        let aligned = |x: u64| x.is_multiple_of(BLOCK_SECTORS);
        if !aligned(self.sb_offset)
            || !aligned(self.al_offset)
            || !aligned(self.bm_offset)
            || !aligned(self.bm_sectors)
        {
            return Err(Error::Invalid);
        }
        if self.bm_sectors < bm_sectors_for(self.data_sectors, self.region_shift)? {
            return Err(Error::Invalid);
        }
        let area = |start: u64, len: u64| start.checked_add(len).map(|end| (start, end));
        let sb = area(self.sb_offset, BLOCK_SECTORS).ok_or(Error::Invalid)?;
        let al = area(self.al_offset, self.al_sectors()).ok_or(Error::Invalid)?;
        let bm = area(self.bm_offset, self.bm_sectors).ok_or(Error::Invalid)?;
        let disjoint = |a: (u64, u64), b: (u64, u64)| a.1 <= b.0 || b.1 <= a.0;
        if !disjoint(sb, al) || !disjoint(sb, bm) || !disjoint(al, bm) {
            return Err(Error::Overlap);
        }
        if self.kind == Kind::Internal {
            let data = (0, self.data_sectors);
            if !disjoint(data, sb) || !disjoint(data, al) || !disjoint(data, bm) {
                return Err(Error::Overlap);
            }
        }
        Ok(())
    }

    /// Checks the layout against the devices found at attach time: for internal metadata
    /// `meta_dev_sectors` is the backing device itself and the superblock must be in its last
    /// block; for external metadata both devices must be large enough.
    pub fn check_devices(&self, data_dev_sectors: u64, meta_dev_sectors: u64) -> Result<(), Error> {
        let (start, len) = self.md_area();
        let md_end = start.checked_add(len).ok_or(Error::Invalid)?;
        if md_end > meta_dev_sectors {
            return Err(Error::MetaDeviceTooSmall);
        }
        match self.kind {
            Kind::Internal => {
                if data_dev_sectors != meta_dev_sectors
                    || internal_sb_offset(meta_dev_sectors) != Some(self.sb_offset)
                {
                    return Err(Error::SizeChanged);
                }
            }
            Kind::External => {
                if data_dev_sectors < self.data_sectors {
                    return Err(Error::SizeChanged);
                }
            }
        }
        Ok(())
    }
}

/// Generation UUIDs (DRBD's `UI_CURRENT`, `UI_BITMAP`, `UI_HISTORY_START..END`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Uuids {
    /// Current data generation.
    pub current: u64,
    /// Generation the bitmap tracks changes since (0 when the bitmap is empty).
    pub bitmap: u64,
    /// Older generations, newest first.
    pub history: [u64; 2],
}

/// The decoded superblock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// Compatible feature bits (only known ones are kept).
    pub features_compat: u64,
    /// Incompatible feature bits (all known, else decode fails).
    pub features_incompat: u64,
    /// `MDF_*` flags.
    pub flags: u64,
    /// Random id of this metadata instance (tags AL transactions).
    pub device_uuid: u64,
    /// Generation UUIDs.
    pub uuids: Uuids,
    /// Areas and sizes.
    pub layout: Layout,
    /// log2 of the AL extent size in bytes.
    pub al_extent_shift: u32,
    /// Number of AL extents that may be active at once.
    pub al_nr_extents: u32,
    /// This node's id.
    pub node_id: u32,
}

impl Superblock {
    /// Fresh metadata for `layout` (as `rmirrorctl create-md` writes it): AL clean,
    /// current UUID [`UUID_JUST_CREATED`], default AL extent size and count.
    pub fn new(layout: Layout, device_uuid: u64, node_id: u32) -> Result<Self, Error> {
        let sb = Superblock {
            features_compat: 0,
            features_incompat: 0,
            flags: MDF_AL_CLEAN,
            device_uuid,
            uuids: Uuids {
                current: UUID_JUST_CREATED,
                ..Uuids::default()
            },
            layout,
            al_extent_shift: al::DEFAULT_EXTENT_SHIFT.max(layout.region_shift),
            al_nr_extents: al::DEFAULT_EXTENTS,
            node_id,
        };
        sb.validate()?;
        Ok(sb)
    }

    /// The activity log configuration this superblock describes.
    pub fn al_config(&self) -> al::Config {
        al::Config {
            extent_shift: self.al_extent_shift,
            nr_extents: self.al_nr_extents,
            ring_slots: self.layout.al_slots,
            device_uuid: self.device_uuid,
        }
    }

    /// Whether flag(s) `f` are all set.
    pub fn has(&self, f: u64) -> bool {
        self.flags & f == f
    }

    /// Checks every field and the relations between them.
    pub fn validate(&self) -> Result<(), Error> {
        if self.features_incompat & !FEATURES_INCOMPAT_KNOWN != 0 {
            return Err(Error::UnsupportedFeatures);
        }
        if self.flags & !MDF_KNOWN != 0 || self.node_id > MAX_NODE_ID {
            return Err(Error::Invalid);
        }
        self.layout.validate()?;
        if self.al_extent_shift < self.layout.region_shift {
            return Err(Error::InvalidAl);
        }
        self.al_config().validate().map_err(|_| Error::InvalidAl)?;
        // AL extent numbers are u32 with u32::MAX reserved.
        let extents = self.layout.data_sectors >> (self.al_extent_shift - 9);
        if extents >= u64::from(al::EXTENT_NONE) {
            return Err(Error::DeviceTooLarge);
        }
        Ok(())
    }

    /// Parses and checks a superblock. Never panics.
    pub fn decode(buf: &[u8; SUPERBLOCK_SIZE]) -> Result<Self, Error> {
        if get_u32(buf, OFF_MAGIC) != MAGIC {
            return Err(Error::BadMagic);
        }
        if get_u32(buf, OFF_VERSION) != VERSION {
            return Err(Error::UnsupportedVersion);
        }
        let crc = crc32c(
            crc32c(crc32c(0, &buf[..OFF_CRC]), &[0; 4]),
            &buf[OFF_CRC + 4..],
        );
        if crc != get_u32(buf, OFF_CRC) {
            return Err(Error::BadChecksum);
        }
        if get_u32(buf, OFF_SIZE) != SUPERBLOCK_SIZE as u32 {
            return Err(Error::Invalid);
        }
        let kind = match get_u32(buf, OFF_MD_KIND) {
            0 => Kind::Internal,
            1 => Kind::External,
            _ => return Err(Error::Invalid),
        };
        let sb = Superblock {
            features_compat: get_u64(buf, OFF_FEAT_COMPAT) & FEATURES_COMPAT_KNOWN,
            features_incompat: get_u64(buf, OFF_FEAT_INCOMPAT),
            flags: get_u64(buf, OFF_FLAGS),
            device_uuid: get_u64(buf, OFF_DEVICE_UUID),
            uuids: Uuids {
                current: get_u64(buf, OFF_CURRENT_UUID),
                bitmap: get_u64(buf, OFF_BITMAP_UUID),
                history: [
                    get_u64(buf, OFF_HISTORY_UUID),
                    get_u64(buf, OFF_HISTORY_UUID + 8),
                ],
            },
            layout: Layout {
                kind,
                data_sectors: get_u64(buf, OFF_DATA_SECTORS),
                region_shift: get_u32(buf, OFF_REGION_SHIFT),
                sb_offset: get_u64(buf, OFF_SB_OFFSET),
                al_offset: get_u64(buf, OFF_AL_OFFSET),
                al_slots: get_u32(buf, OFF_AL_RING_SLOTS),
                bm_offset: get_u64(buf, OFF_BM_OFFSET),
                bm_sectors: get_u64(buf, OFF_BM_SECTORS),
            },
            al_extent_shift: get_u32(buf, OFF_AL_EXTENT_SHIFT),
            al_nr_extents: get_u32(buf, OFF_AL_NR_EXTENTS),
            node_id: get_u32(buf, OFF_NODE_ID),
        };
        sb.validate()?;
        Ok(sb)
    }

    /// Writes the superblock (reserved bytes zero, checksum filled in). Fails if
    /// [`Superblock::validate`] does, so invalid metadata is never written.
    pub fn encode(&self, buf: &mut [u8; SUPERBLOCK_SIZE]) -> Result<(), Error> {
        self.validate()?;
        buf.fill(0);
        put_u32(buf, OFF_MAGIC, MAGIC);
        put_u32(buf, OFF_VERSION, VERSION);
        put_u32(buf, OFF_SIZE, SUPERBLOCK_SIZE as u32);
        put_u64(
            buf,
            OFF_FEAT_COMPAT,
            self.features_compat & FEATURES_COMPAT_KNOWN,
        );
        put_u64(buf, OFF_FEAT_INCOMPAT, self.features_incompat);
        put_u64(buf, OFF_FLAGS, self.flags);
        put_u64(buf, OFF_DEVICE_UUID, self.device_uuid);
        put_u64(buf, OFF_CURRENT_UUID, self.uuids.current);
        put_u64(buf, OFF_BITMAP_UUID, self.uuids.bitmap);
        put_u64(buf, OFF_HISTORY_UUID, self.uuids.history[0]);
        put_u64(buf, OFF_HISTORY_UUID + 8, self.uuids.history[1]);
        let l = &self.layout;
        put_u64(buf, OFF_DATA_SECTORS, l.data_sectors);
        put_u64(buf, OFF_SB_OFFSET, l.sb_offset);
        put_u64(buf, OFF_AL_OFFSET, l.al_offset);
        put_u64(buf, OFF_BM_OFFSET, l.bm_offset);
        put_u64(buf, OFF_BM_SECTORS, l.bm_sectors);
        put_u32(buf, OFF_MD_KIND, l.kind as u32);
        put_u32(buf, OFF_REGION_SHIFT, l.region_shift);
        put_u32(buf, OFF_AL_EXTENT_SHIFT, self.al_extent_shift);
        put_u32(buf, OFF_AL_RING_SLOTS, l.al_slots);
        put_u32(buf, OFF_AL_NR_EXTENTS, self.al_nr_extents);
        put_u32(buf, OFF_NODE_ID, self.node_id);
        let crc = crc32c(0, buf);
        put_u32(buf, OFF_CRC, crc);
        Ok(())
    }
}





#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIB: u64 = 1 << 21; // sectors

    fn sample() -> Superblock {
        let layout = Layout::internal(10 * GIB + 5, 12, al::DEFAULT_RING_SLOTS).unwrap();
        let mut sb = Superblock::new(layout, 0xfeed_f00d_dead_beef, 1).unwrap();
        sb.flags |= MDF_CONSISTENT | MDF_CRASHED_PRIMARY;
        sb.uuids = Uuids {
            current: 0x1111,
            bitmap: 0x2222,
            history: [0x3333, 0x4444],
        };
        sb
    }

    #[test]
    fn internal_layout_example() {
        // 10 GiB + 5 sectors: superblock in the last aligned block.
        let l = Layout::internal(10 * GIB + 5, 12, 8).unwrap();
        assert_eq!(l.sb_offset, 10 * GIB - 8);
        assert_eq!(l.al_offset, 10 * GIB - 8 - 64);
        // Just under 10 GiB / 4 KiB = 2.6M bits = 80 pages.
        assert_eq!(l.bm_sectors, 80 * 8);
        assert_eq!(l.data_sectors, l.bm_offset);
        assert_eq!(l.md_area(), (l.bm_offset, 80 * 8 + 64 + 8));
        assert_eq!(l.al_slot_sector(3), l.al_offset + 24);
        assert_eq!(l.bm_page_sector(2), l.bm_offset + 16);
        assert_eq!(l.check_devices(10 * GIB + 5, 10 * GIB + 5), Ok(()));
        assert_eq!(l.check_devices(11 * GIB, 11 * GIB), Err(Error::SizeChanged));
        assert_eq!(l.check_devices(10 * GIB, 10 * GIB), Ok(())); // same last aligned block
        assert_eq!(
            l.check_devices(10 * GIB - 1, 10 * GIB - 1),
            Err(Error::MetaDeviceTooSmall)
        );
        assert_eq!(Layout::internal(100, 12, 8), Err(Error::DeviceTooSmall));
        assert_eq!(Layout::internal(7, 12, 8), Err(Error::DeviceTooSmall));
        assert_eq!(Layout::internal(GIB, 11, 8), Err(Error::InvalidRegionSize));
        assert_eq!(Layout::internal(GIB, 12, 1), Err(Error::InvalidAl));
        assert_eq!(
            Layout::internal(u64::MAX, 20, 8).map(|l| l.validate()),
            Ok(Ok(()))
        );
    }

    #[test]
    fn external_layout_example() {
        let l = Layout::external(GIB, 100 * GIB, 12, 8).unwrap();
        assert_eq!((l.sb_offset, l.al_offset, l.bm_offset), (0, 8, 72));
        assert_eq!(l.bm_sectors, 800 * 8);
        assert_eq!(l.data_sectors, 100 * GIB);
        assert_eq!(l.check_devices(100 * GIB, GIB), Ok(()));
        assert_eq!(l.check_devices(100 * GIB - 1, GIB), Err(Error::SizeChanged));
        assert_eq!(
            l.check_devices(100 * GIB, 72),
            Err(Error::MetaDeviceTooSmall)
        );
        assert_eq!(
            Layout::external(1000, 100 * GIB, 12, 8),
            Err(Error::MetaDeviceTooSmall)
        );
        assert_eq!(
            Layout::external(GIB, 100, 12, 8),
            Err(Error::DeviceTooSmall)
        );
        assert_eq!(Layout::external(u64::MAX, u64::MAX, 12, 8).err(), None);
    }

    #[test]
    fn superblock_round_trip_and_rejects() {
        let sb = sample();
        let mut buf = [0u8; SUPERBLOCK_SIZE];
        sb.encode(&mut buf).unwrap();
        assert_eq!(&buf[..4], b"RMMD");
        assert_eq!(Superblock::decode(&buf), Ok(sb));
        assert!(sb.has(MDF_CONSISTENT | MDF_AL_CLEAN) && !sb.has(MDF_FULL_SYNC));
        assert_eq!(sb.al_config().ring_slots, 8);

        let reseal = |b: &mut [u8; SUPERBLOCK_SIZE]| {
            put_u32(b, OFF_CRC, 0);
            let crc = crc32c(0, b);
            put_u32(b, OFF_CRC, crc);
        };
        let mutate = |off: usize, v: u64, wide: bool| {
            let mut b = buf;
            if wide {
                put_u64(&mut b, off, v);
            } else {
                put_u32(&mut b, off, v as u32);
            }
            reseal(&mut b);
            Superblock::decode(&b)
        };
        let mut b = buf;
        b[0] ^= 1;
        assert_eq!(Superblock::decode(&b), Err(Error::BadMagic));
        let mut b = buf;
        b[200] ^= 1;
        assert_eq!(Superblock::decode(&b), Err(Error::BadChecksum));
        // Reserved bytes are ignored (but covered by the checksum).
        let mut b = buf;
        b[200] = 7;
        reseal(&mut b);
        assert_eq!(Superblock::decode(&b), Ok(sb));
        assert_eq!(
            mutate(OFF_VERSION, 2, false),
            Err(Error::UnsupportedVersion)
        );
        assert_eq!(
            mutate(OFF_FEAT_INCOMPAT, 1, true),
            Err(Error::UnsupportedFeatures)
        );
        assert_eq!(mutate(OFF_FEAT_COMPAT, 1 << 40, true), Ok(sb));
        assert_eq!(mutate(OFF_FLAGS, 1 << 9, true), Err(Error::Invalid));
        assert_eq!(mutate(OFF_SIZE, 512, false), Err(Error::Invalid));
        assert_eq!(mutate(OFF_MD_KIND, 2, false), Err(Error::Invalid));
        assert_eq!(mutate(OFF_NODE_ID, 32, false), Err(Error::Invalid));
        assert_eq!(
            mutate(OFF_REGION_SHIFT, 21, false),
            Err(Error::InvalidRegionSize)
        );
        assert_eq!(
            mutate(OFF_AL_EXTENT_SHIFT, 11, false),
            Err(Error::InvalidAl)
        );
        assert_eq!(
            mutate(OFF_AL_NR_EXTENTS, 6002, false),
            Err(Error::InvalidAl)
        );
        assert_eq!(mutate(OFF_AL_RING_SLOTS, 0, false), Err(Error::InvalidAl));
        assert_eq!(mutate(OFF_BM_SECTORS, 8, true), Err(Error::Invalid));
        assert_eq!(
            mutate(OFF_AL_OFFSET, sb.layout.sb_offset, true),
            Err(Error::Overlap)
        );
        assert_eq!(
            mutate(OFF_DATA_SECTORS, sb.layout.bm_offset + 8, true),
            Err(Error::Overlap)
        );
        assert_eq!(
            mutate(OFF_DATA_SECTORS, sb.layout.bm_offset * 2, true),
            Err(Error::Invalid)
        );
        assert_eq!(
            mutate(OFF_BM_OFFSET, u64::MAX - 7, true),
            Err(Error::Invalid)
        );
        // Never write invalid metadata.
        let mut bad = sb;
        bad.node_id = 99;
        assert_eq!(bad.encode(&mut buf), Err(Error::Invalid));
        for e in [Error::BadMagic, Error::Overlap, Error::SizeChanged] {
            assert!(!e.as_str().is_empty());
        }
        assert_eq!(Error::BadMagic.errno(), 61);
        assert_eq!(Error::BadChecksum.errno(), 74);
        assert_eq!(Error::UnsupportedVersion.errno(), 95);
        assert_eq!(Error::SizeChanged.errno(), 28);
        assert_eq!(Error::Overlap.errno(), 117);
    }

    #[test]
    fn too_large_for_small_extents() {
        // 4 KiB extents over 32 TiB: 2^33 extents do not fit u32.
        let l = Layout::external(u64::MAX, 1 << 36, 12, 8).unwrap();
        let mut sb = Superblock::new(l, 1, 0).unwrap();
        sb.al_extent_shift = 12;
        assert_eq!(sb.validate(), Err(Error::DeviceTooLarge));
    }

    fn check_layout(l: &Layout, dev: u64) {
        l.validate().unwrap();
        let (start, len) = l.md_area();
        // Metadata and data fit the device.
        assert!(start + len <= dev);
        if l.kind == Kind::Internal {
            assert!(l.data_sectors <= start);
            assert_eq!(l.data_sectors % 8, 0);
            assert!(l.data_sectors + len <= dev);
            // Waste is small: at most alignment, one bitmap page, and the bitmap's own share.
            assert!(dev - (l.data_sectors + len) < 8);
        }
        // The bitmap covers the data.
        let bits = bitmap::nr_regions(l.data_sectors, l.region_shift).unwrap();
        assert!(l.bm_sectors * 512 * 8 >= bits);
        // Areas pairwise disjoint.
        let areas = [
            (l.sb_offset, l.sb_offset + 8),
            (l.al_offset, l.al_offset + l.al_sectors()),
            (l.bm_offset, l.bm_offset + l.bm_sectors),
        ];
        for (i, a) in areas.iter().enumerate() {
            for b in &areas[i + 1..] {
                assert!(a.1 <= b.0 || b.1 <= a.0);
            }
            if l.kind == Kind::Internal {
                assert!(a.0 >= l.data_sectors);
            }
        }
    }

    proptest! {
        #[test]
        fn internal_layouts_are_sound(
            dev in prop_oneof![4000u64..1 << 24, any::<u64>()],
            shift in 12u32..=20,
            slots in 2u32..=1024,
        ) {
            match Layout::internal(dev, shift, slots) {
                Ok(l) => check_layout(&l, dev),
                Err(e) => prop_assert_eq!(e, Error::DeviceTooSmall),
            }
        }

        #[test]
        fn external_layouts_are_sound(
            meta in 0u64..1 << 24,
            data in prop_oneof![2048u64..1 << 40, any::<u64>()],
            shift in 12u32..=20,
            slots in 2u32..=1024,
        ) {
            match Layout::external(meta, data, shift, slots) {
                Ok(l) => {
                    check_layout(&l, meta);
                    prop_assert_eq!(l.data_sectors, data);
                }
                Err(e) => prop_assert!(matches!(e, Error::MetaDeviceTooSmall | Error::DeviceTooSmall)),
            }
        }

        #[test]
        fn decode_random_bytes_never_panics(
            bytes in proptest::collection::vec(any::<u8>(), SUPERBLOCK_SIZE),
            fix in any::<bool>(),
        ) {
            let mut buf = [0u8; SUPERBLOCK_SIZE];
            buf.copy_from_slice(&bytes);
            if fix {
                put_u32(&mut buf, OFF_MAGIC, MAGIC);
                put_u32(&mut buf, OFF_VERSION, VERSION);
                put_u32(&mut buf, OFF_CRC, 0);
                let crc = crc32c(0, &buf);
                put_u32(&mut buf, OFF_CRC, crc);
            }
            if let Ok(sb) = Superblock::decode(&buf) {
                let mut again = [0u8; SUPERBLOCK_SIZE];
                sb.encode(&mut again).unwrap();
                prop_assert_eq!(Superblock::decode(&again), Ok(sb));
            }
        }

        #[test]
        fn encode_decode_round_trip(
            internal in any::<bool>(),
            dev in 1u64 << 12..1 << 40,
            shift in 12u32..=20,
            slots in 8u32..=64,
            flags in 0u64..=MDF_KNOWN,
            uuids in any::<[u64; 5]>(),
            node in 0u32..=MAX_NODE_ID,
            ext_shift in 0u32..=10,
            nr in al::MIN_EXTENTS..=al::MAX_EXTENTS,
        ) {
            let layout = if internal {
                Layout::internal(dev, shift, slots)
            } else {
                Layout::external(dev, dev, shift, slots)
            };
            let Ok(layout) = layout else { return Ok(()) };
            let mut sb = Superblock::new(layout, uuids[0], node).unwrap();
            sb.flags = flags;
            sb.uuids = Uuids { current: uuids[1], bitmap: uuids[2], history: [uuids[3], uuids[4]] };
            sb.al_extent_shift = (shift + ext_shift).min(al::MAX_EXTENT_SHIFT);
            sb.al_nr_extents = nr;
            let mut buf = [0u8; SUPERBLOCK_SIZE];
            if sb.validate().is_ok() {
                sb.encode(&mut buf).unwrap();
                prop_assert_eq!(Superblock::decode(&buf), Ok(sb));
            }
        }
    }
}
