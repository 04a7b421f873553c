// SPDX-License-Identifier: GPL-2.0
//! On-disk metadata verbs: `create-md` writes a superblock, an empty activity log and a clean
//! bitmap (as DRBD's `drbdadm create-md`), `dump-md` reads them back.
//!
//! The format is the core's (`rmirror_core::meta`, `Documentation/ondisk-format.rst`); this
//! module only chooses the devices, does the I/O and prints. Block devices are opened with
//! `O_DIRECT` (the kernel writes metadata with bios, past the page cache) and, for writing,
//! `O_EXCL` (a device that is mounted or held by the kernel gives `EBUSY`). Regular files are
//! accepted too, sized by their length, so all of this is tested on the host.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use clap::Args;
use rmirror_core::meta::{self, Kind, Layout, Superblock, BLOCK_SECTORS, SUPERBLOCK_SIZE};
use rmirror_core::state::resync;
use rmirror_core::table::{Meta, SECTOR_SHIFT};
use rmirror_core::{al, bitmap};
use serde_json::{Map, Value};

use crate::error::Failure;
use crate::output::{self, Format};
use crate::sys;

/// Arguments of `create-md`.
#[derive(Debug, Clone, Args)]
pub struct CreateMdArgs {
    /// Backing (data) device, e.g. /dev/vdb (a regular file works too)
    pub backing: PathBuf,

    /// Put the metadata at the start of this separate device instead of at the end of BACKING
    #[arg(long, value_name = "PATH")]
    pub meta_dev: Option<PathBuf>,

    /// Node id recorded in the metadata, 0..=31 (use the table's node_id: by default 0 on the
    /// primary, 1 on the secondary)
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u32).range(0..=i64::from(meta::MAX_NODE_ID)))]
    pub node_id: u32,

    /// Bitmap region size in bytes: a power of two from 4096 to 1048576
    #[arg(long, value_name = "BYTES", default_value_t = 1 << bitmap::DEFAULT_REGION_SHIFT,
          value_parser = parse_region_size)]
    pub region_size: u32,

    /// Activity log ring size in 4 KiB slots
    #[arg(long, value_name = "N", default_value_t = al::DEFAULT_RING_SLOTS,
          value_parser = clap::value_parser!(u32).range(
              i64::from(al::min_ring_slots(al::DEFAULT_EXTENTS))..=i64::from(al::MAX_RING_SLOTS)))]
    pub al_slots: u32,

    /// Overwrite rmirror metadata that is already there (its bitmap is lost)
    #[arg(long)]
    pub force: bool,

    /// Declare this disk identical to its peer's (fresh, e.g. both zeroed): give the same flag
    /// on both nodes and they replicate without an initial sync
    #[arg(long, conflicts_with = "overwrite_data_of_peer")]
    pub clear_bitmap: bool,

    /// This node's data is the data: at the first connection the peer (with fresh metadata)
    /// receives a full copy of it
    #[arg(long)]
    pub overwrite_data_of_peer: bool,
}

/// Arguments of `dump-md`.
#[derive(Debug, Clone, Args)]
pub struct DumpMdArgs {
    /// Backing (data) device, e.g. /dev/vdb (a regular file works too)
    pub backing: PathBuf,

    /// The separate metadata device, for external metadata
    #[arg(long, value_name = "PATH")]
    pub meta_dev: Option<PathBuf>,

    /// Output format
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

/// clap value parser for `--region-size`: a power of two from 4 KiB to 1 MiB.
fn parse_region_size(s: &str) -> Result<u32, String> {
    let range = bitmap::MIN_REGION_SHIFT..=bitmap::MAX_REGION_SHIFT;
    match s.parse::<u32>() {
        Ok(n) if n.is_power_of_two() && range.contains(&n.trailing_zeros()) => Ok(n),
        _ => Err("expected a power of two from 4096 to 1048576 (bytes)".to_string()),
    }
}

/// The errno for a metadata error: the one the kernel returns when it refuses a device.
///
/// | error | errno |
/// |---|---|
/// | `BadMagic` | `ENODATA` |
/// | `BadChecksum` | `EBADMSG` |
/// | `UnsupportedVersion`, `UnsupportedFeatures` | `EOPNOTSUPP` |
/// | `SizeChanged`, `DeviceTooSmall`, `MetaDeviceTooSmall` | `ENOSPC` |
/// | all others | `EUCLEAN` |
///
/// The table itself is the core's (`meta::Error::errno`, which the kernel driver calls too),
/// so the tool and the kernel cannot drift apart; the tests check it against libc's numbers.
pub fn meta_errno(e: meta::Error) -> i32 {
    e.errno()
}

/// A metadata error as a [`Failure`]: the core's text and [`meta_errno`].
fn md_failure(e: meta::Error) -> Failure {
    Failure::new(meta_errno(e), e.as_str())
}

/// Names of the `MDF_*` flags, in bit order (as `dump-md` prints them).
const FLAG_NAMES: [(u64, &str); 9] = [
    (meta::MDF_CONSISTENT, "consistent"),
    (meta::MDF_PRIMARY_IND, "primary"),
    (meta::MDF_CONNECTED_IND, "connected"),
    (meta::MDF_FULL_SYNC, "full_sync"),
    (meta::MDF_WAS_UP_TO_DATE, "was_up_to_date"),
    (meta::MDF_PEER_OUT_DATED, "peer_outdated"),
    (meta::MDF_CRASHED_PRIMARY, "crashed_primary"),
    (meta::MDF_AL_CLEAN, "al_clean"),
    (meta::MDF_AL_DISABLED, "al_disabled"),
];

const _: () = {
    let mut all = 0;
    let mut i = 0;
    while i < FLAG_NAMES.len() {
        all |= FLAG_NAMES[i].0;
        i += 1;
    }
    assert!(all == meta::MDF_KNOWN);
};

/// The names of the flags set in `flags`.
fn flag_names(flags: u64) -> Vec<&'static str> {
    FLAG_NAMES
        .iter()
        .filter(|&&(bit, _)| flags & bit != 0)
        .map(|&(_, name)| name)
        .collect()
}

fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Internal => "internal",
        Kind::External => "external",
    }
}

/// A UUID as 16 hex digits.
fn hex(uuid: u64) -> String {
    format!("{uuid:016x}")
}

/// `bytes` in binary units, one decimal when not exact (truncated): "1022 MiB", "1.5 GiB".
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut unit = 0;
    let mut div = 1024u64;
    while unit + 1 < UNITS.len() && bytes / div >= 1024 {
        div *= 1024;
        unit += 1;
    }
    let (whole, rest) = (bytes / div, bytes % div);
    if rest == 0 {
        format!("{whole} {}", UNITS[unit])
    } else {
        // rest < div <= 2^60, so rest * 10 fits.
        format!("{whole}.{} {}", rest * 10 / div, UNITS[unit])
    }
}

/// Block size of all metadata I/O.
const BLOCK: usize = SUPERBLOCK_SIZE;
/// Largest single read or write (zeroing, bitmap scan).
const CHUNK: usize = 1 << 20;

/// A zeroed buffer at a 4 KiB-aligned address, as `O_DIRECT` needs: a `Vec` with slack, used
/// from its first aligned byte (no `unsafe`).
struct Aligned {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let raw = vec![0u8; len + BLOCK];
        let start = (BLOCK - raw.as_ptr() as usize % BLOCK) % BLOCK;
        Aligned { raw, start, len }
    }

    fn bytes(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

/// How a device is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    /// `O_RDONLY`: works while the kernel uses the device.
    Read,
    /// `O_RDWR`, plus `O_EXCL` on block devices: fails with `EBUSY` while the device is in use.
    Exclusive,
}

/// An open data or metadata device (a block device or a regular file).
struct Dev {
    file: File,
    /// The path as given, the context of errors.
    path: String,
    /// Size in 512-byte sectors.
    sectors: u64,
    /// What the device is: `(true, rdev, 0)` for a block device, `(false, dev, ino)` for a file.
    id: (bool, u64, u64),
}

impl Dev {
    fn open(path: &Path, access: Access) -> Result<Dev, Failure> {
        let name = path.display().to_string();
        let ctx = |e: io::Error| Failure::io(&e).context(name.clone());
        let st = fs::metadata(path).map_err(ctx)?;
        let block = st.file_type().is_block_device();
        if !block && !st.is_file() {
            return Err(
                Failure::new(libc::ENOTBLK, "not a block device or regular file").context(name),
            );
        }
        let mut flags = 0;
        if block {
            flags |= libc::O_DIRECT;
            if access == Access::Exclusive {
                flags |= libc::O_EXCL;
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(access == Access::Exclusive)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => ctx(e).hint(format!(
                    "{name} is in use: mounted, held by an rmirror device or open exclusively"
                )),
                _ => ctx(e),
            })?;
        let (bytes, id) = if block {
            (sys::blkgetsize64(&file).map_err(ctx)?, (true, st.rdev(), 0))
        } else {
            (st.len(), (false, st.dev(), st.ino()))
        };
        Ok(Dev {
            file,
            path: name,
            sectors: bytes >> SECTOR_SHIFT,
            id,
        })
    }

    fn ctx(&self, e: io::Error) -> Failure {
        Failure::io(&e).context(self.path.clone())
    }

    /// Reads `buf.len` bytes at `sector`.
    fn read(&self, sector: u64, buf: &mut Aligned) -> Result<(), Failure> {
        self.file
            .read_exact_at(buf.bytes_mut(), sector << SECTOR_SHIFT)
            .map_err(|e| self.ctx(e))
    }

    /// Reads the 4 KiB block at `sector`.
    fn read_block(&self, sector: u64) -> Result<[u8; BLOCK], Failure> {
        let mut buf = Aligned::new(BLOCK);
        self.read(sector, &mut buf)?;
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(buf.bytes());
        Ok(block)
    }

    fn write(&self, sector: u64, buf: &Aligned) -> Result<(), Failure> {
        self.file
            .write_all_at(buf.bytes(), sector << SECTOR_SHIFT)
            .map_err(|e| self.ctx(e))
    }

    /// Writes zeros over `sectors` sectors from `sector` (both multiples of 8).
    fn zero(&self, sector: u64, sectors: u64) -> Result<(), Failure> {
        let chunk_sectors = (CHUNK >> SECTOR_SHIFT) as u64;
        let mut buf = Aligned::new(CHUNK);
        let mut done = 0;
        while done < sectors {
            let n = (sectors - done).min(chunk_sectors);
            if n < chunk_sectors {
                buf = Aligned::new((n << SECTOR_SHIFT) as usize);
            }
            self.write(sector + done, &buf)?;
            done += n;
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), Failure> {
        self.file.sync_all().map_err(|e| self.ctx(e))
    }
}

/// The data device and, for external metadata, the metadata device.
struct Devices {
    data: Dev,
    meta: Option<Dev>,
}

impl Devices {
    fn open(backing: &Path, meta_dev: Option<&Path>, access: Access) -> Result<Devices, Failure> {
        let data = Dev::open(backing, access)?;
        let meta = meta_dev.map(|p| Dev::open(p, access)).transpose()?;
        if let Some(m) = &meta {
            if m.id == data.id {
                return Err(Failure::invalid(
                    "the metadata device is the backing device (for internal metadata omit --meta-dev)",
                )
                .context(m.path.clone()));
            }
        }
        Ok(Devices { data, meta })
    }

    /// The device holding the metadata.
    fn md(&self) -> &Dev {
        self.meta.as_ref().unwrap_or(&self.data)
    }

    fn kind(&self) -> Kind {
        if self.meta.is_some() {
            Kind::External
        } else {
            Kind::Internal
        }
    }

    /// Where the superblock is: the last 4 KiB block of the backing device (internal) or the
    /// first of the metadata device (external).
    fn sb_offset(&self) -> Result<u64, Failure> {
        match self.kind() {
            Kind::Internal => meta::internal_sb_offset(self.data.sectors).ok_or_else(|| {
                md_failure(meta::Error::DeviceTooSmall).context(self.data.path.clone())
            }),
            Kind::External => Ok(0),
        }
    }

    /// Reads and checks the superblock as the kernel does: decodes it, checks its kind and
    /// position, and checks the layout against the sizes of the devices.
    fn read_sb(&self) -> Result<Superblock, Failure> {
        let md = self.md();
        let fail = |e: meta::Error| {
            let f = md_failure(e).context(md.path.clone());
            match e {
                meta::Error::BadMagic => f.hint(format!(
                    "create metadata with: rmirrorctl create-md {}{}",
                    self.data.path,
                    self.meta
                        .as_ref()
                        .map_or(String::new(), |m| format!(" --meta-dev {}", m.path))
                )),
                _ => f,
            }
        };
        let sb_offset = self.sb_offset()?;
        let sb = Superblock::decode(&md.read_block(sb_offset)?).map_err(fail)?;
        if sb.layout.kind != self.kind() || sb.layout.sb_offset != sb_offset {
            let what = format!(
                "{} holds {} metadata, not {}",
                md.path,
                kind_name(sb.layout.kind),
                kind_name(self.kind())
            );
            return Err(Failure::new(meta_errno(meta::Error::Invalid), what));
        }
        sb.layout
            .check_devices(self.data.sectors, md.sectors)
            .map_err(fail)?;
        Ok(sb)
    }
}

/// The usable data size recorded in the metadata, in sectors: `create`'s default `len` for
/// `meta=internal` and `meta=PATH` (the backing size for `meta=core`).
pub fn data_sectors(backing: &Path, meta_dev: Option<&Path>) -> Result<u64, Failure> {
    let devs = Devices::open(backing, meta_dev, Access::Read)?;
    Ok(devs.read_sb()?.layout.data_sectors)
}

/// Drops the context of errors about `subject` itself (the verb's own argument already names
/// it: `rmirrorctl: dump-md /dev/vdb: ...`).
fn about(subject: &Path) -> impl Fn(Failure) -> Failure + '_ {
    move |mut f| {
        if f.context.as_deref() == Some(&*subject.display().to_string()) {
            f.context = None;
        }
        f
    }
}

/// One line describing a superblock, for messages.
fn describe(sb: &Superblock) -> String {
    let flags = flag_names(sb.flags);
    format!(
        "version {}, {}, node id {}, {} data sectors, device uuid {}, flags {}",
        meta::VERSION,
        kind_name(sb.layout.kind),
        sb.node_id,
        sb.layout.data_sectors,
        hex(sb.device_uuid),
        if flags.is_empty() {
            "none".to_string()
        } else {
            flags.join(",")
        }
    )
}

/// A random, non-zero device UUID from the kernel's generator.
fn random_uuid() -> Result<u64, Failure> {
    let ctx = |e: io::Error| Failure::io(&e).context("/dev/urandom");
    let mut f = File::open("/dev/urandom").map_err(ctx)?;
    loop {
        let mut b = [0u8; 8];
        f.read_exact(&mut b).map_err(ctx)?;
        let v = u64::from_le_bytes(b);
        if v != 0 {
            return Ok(v);
        }
    }
}

/// `create-md`: writes fresh metadata and returns the summary to print.
pub fn create_md(args: &CreateMdArgs) -> Result<String, Failure> {
    create(args).map_err(about(&args.backing))
}

fn create(args: &CreateMdArgs) -> Result<String, Failure> {
    let devs = Devices::open(&args.backing, args.meta_dev.as_deref(), Access::Exclusive)?;
    let md = devs.md();
    let region_shift = args.region_size.trailing_zeros();
    let layout = match &devs.meta {
        None => Layout::internal(devs.data.sectors, region_shift, args.al_slots)
            .map_err(|e| md_failure(e).context(md.path.clone()))?,
        Some(m) => Layout::external(m.sectors, devs.data.sectors, region_shift, args.al_slots)
            .map_err(|e| {
                let f = md_failure(e);
                match e {
                    meta::Error::MetaDeviceTooSmall => {
                        let need =
                            meta::bm_sectors_for(devs.data.sectors, region_shift).map(|bm| {
                                BLOCK_SECTORS + u64::from(args.al_slots) * BLOCK_SECTORS + bm
                            });
                        let f = f.context(m.path.clone());
                        match need {
                            Ok(n) => f.hint(format!(
                                "metadata for {} needs {n} sectors ({}), {} has {}",
                                devs.data.path,
                                human_size(n << SECTOR_SHIFT),
                                m.path,
                                m.sectors
                            )),
                            Err(_) => f,
                        }
                    }
                    meta::Error::DeviceTooSmall => f.context(devs.data.path.clone()),
                    _ => f,
                }
            })?,
    };
    let mut sb = Superblock::new(layout, random_uuid()?, args.node_id)
        .map_err(|e| md_failure(e).context(md.path.clone()))?;
    // The initial sync is never assumed: fresh metadata on both sides does not replicate.
    let generation = if args.clear_bitmap {
        sb.uuids.current = resync::DAY0;
        sb.flags |= meta::MDF_CONSISTENT;
        "identical to the peer (--clear-bitmap): no initial sync if the peer says so too"
    } else if args.overwrite_data_of_peer {
        let mut u = resync::Uuids::just_created();
        u.new_current(random_uuid()? | 2);
        sb.uuids = meta::Uuids {
            current: u.current,
            bitmap: u.bitmap,
            history: u.history,
        };
        sb.flags |= meta::MDF_CONSISTENT;
        "this node's data counts (--overwrite-data-of-peer): full sync to a fresh peer"
    } else {
        "fresh: no replication until one side is created with --overwrite-data-of-peer or both \
         with --clear-bitmap"
    };

    // Never overwrite metadata by accident, damaged metadata included.
    let old = md.read_block(layout.sb_offset)?;
    let mut out = String::new();
    if old[..4] == meta::MAGIC.to_le_bytes() {
        let what = match Superblock::decode(&old) {
            Ok(old) => format!("rmirror metadata ({})", describe(&old)),
            Err(e) => format!("damaged rmirror metadata ({})", e.as_str()),
        };
        if !args.force {
            return Err(Failure::new(libc::EEXIST, format!("already holds {what}"))
                .context(md.path.clone())
                .hint("use --force to overwrite it (its bitmap is lost)"));
        }
        out.push_str(&format!("overwriting {what} on {}\n", md.path));
    }

    // The superblock goes first and comes back last: a crash in between leaves no superblock
    // that describes a half-written bitmap or ring.
    md.zero(layout.sb_offset, BLOCK_SECTORS)?;
    md.zero(layout.bm_offset, layout.bm_sectors)?;
    // An all-zero ring holds no transaction: al::recover finds it complete and empty.
    md.zero(layout.al_offset, layout.al_sectors())?;
    md.sync()?;
    let mut buf = Aligned::new(BLOCK);
    let block: &mut [u8; SUPERBLOCK_SIZE] = buf
        .bytes_mut()
        .try_into()
        .map_err(|_| Failure::new(libc::EINVAL, "superblock buffer size"))?;
    sb.encode(block).map_err(md_failure)?;
    md.write(layout.sb_offset, &buf)?;
    md.sync()?;
    if devs.read_sb()? != sb {
        return Err(
            Failure::new(libc::EIO, "superblock read back differs").context(md.path.clone())
        );
    }

    let (md_start, md_len) = layout.md_area();
    let data_bytes = layout.data_sectors << SECTOR_SHIFT;
    let meta_opt = devs.meta.as_ref().map_or("internal", |m| m.path.as_str());
    out.push_str(&format!(
        "created {} metadata on {} (version {}, node id {}, device uuid {})\n\
         data: {} sectors ({}), {data_bytes} bytes\n\
         metadata: sectors {md_start}..{} of {}: bitmap {} sectors, activity log {} slots, superblock at {}\n\
         generation: {generation}\n\
         table: 0 {} rmirror {} ROLE LOCAL PEER C meta={meta_opt}\n",
        kind_name(layout.kind),
        md.path,
        meta::VERSION,
        sb.node_id,
        hex(sb.device_uuid),
        layout.data_sectors,
        human_size(data_bytes),
        md_start + md_len,
        md.path,
        layout.bm_sectors,
        layout.al_slots,
        layout.sb_offset,
        layout.data_sectors,
        devs.data.path,
    ));
    Ok(out)
}

/// Number of set bits of the on-disk bitmap for regions of the data area (bits beyond it are
/// ignored, as the driver does).
fn bitmap_weight(md: &Dev, layout: &Layout) -> Result<u64, Failure> {
    let regions = bitmap::nr_regions(layout.data_sectors, layout.region_shift)
        .ok_or_else(|| md_failure(meta::Error::InvalidRegionSize))?;
    let mut bytes_left = regions.div_ceil(64) * 8;
    let mut sector = layout.bm_offset;
    let mut word_no = 0u64;
    let mut weight = 0u64;
    let mut buf = Aligned::new(CHUNK);
    while bytes_left > 0 {
        // Whole 4 KiB blocks, as O_DIRECT wants.
        let n = bytes_left.min(CHUNK as u64).next_multiple_of(BLOCK as u64);
        if (n as usize) < CHUNK {
            buf = Aligned::new(n as usize);
        }
        md.read(sector, &mut buf)?;
        for chunk in buf.bytes().chunks_exact(8) {
            let base = word_no * 64;
            if base >= regions {
                break;
            }
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            let mut v = u64::from_le_bytes(w);
            if regions - base < 64 {
                v &= (1u64 << (regions - base)) - 1;
            }
            weight += u64::from(v.count_ones());
            word_no += 1;
        }
        bytes_left = bytes_left.saturating_sub(n);
        sector += n >> SECTOR_SHIFT;
    }
    Ok(weight)
}

/// A value of `dump-md`.
enum Field {
    Num(u64),
    Str(String),
    List(Vec<String>),
}

/// `dump-md`: reads the metadata (read-only) and returns it rendered in `args.output`.
pub fn dump_md(args: &DumpMdArgs) -> Result<String, Failure> {
    dump(args).map_err(about(&args.backing))
}

fn dump(args: &DumpMdArgs) -> Result<String, Failure> {
    let devs = Devices::open(&args.backing, args.meta_dev.as_deref(), Access::Read)?;
    let sb = devs.read_sb()?;
    let l = &sb.layout;
    let weight = bitmap_weight(devs.md(), l)?;
    let region_sectors = 1u64 << (l.region_shift - SECTOR_SHIFT);
    let fields = [
        ("meta_device", Field::Str(devs.md().path.clone())),
        ("version", Field::Num(u64::from(meta::VERSION))),
        ("kind", Field::Str(kind_name(l.kind).to_string())),
        (
            "flags",
            Field::List(flag_names(sb.flags).into_iter().map(String::from).collect()),
        ),
        ("device_uuid", Field::Str(hex(sb.device_uuid))),
        ("current_uuid", Field::Str(hex(sb.uuids.current))),
        ("bitmap_uuid", Field::Str(hex(sb.uuids.bitmap))),
        (
            "history_uuids",
            Field::List(sb.uuids.history.iter().map(|&u| hex(u)).collect()),
        ),
        ("node_id", Field::Num(u64::from(sb.node_id))),
        ("data_sectors", Field::Num(l.data_sectors)),
        ("sb_offset", Field::Num(l.sb_offset)),
        ("al_offset", Field::Num(l.al_offset)),
        ("al_slots", Field::Num(u64::from(l.al_slots))),
        ("al_extent_size", Field::Num(1u64 << sb.al_extent_shift)),
        ("al_extents", Field::Num(u64::from(sb.al_nr_extents))),
        ("bm_offset", Field::Num(l.bm_offset)),
        ("bm_sectors", Field::Num(l.bm_sectors)),
        ("region_size", Field::Num(1u64 << l.region_shift)),
        ("bitmap_weight", Field::Num(weight)),
        (
            "out_of_sync_sectors",
            Field::Num(weight.saturating_mul(region_sectors).min(l.data_sectors)),
        ),
    ];
    Ok(match args.output {
        Format::Normal => fields
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Field::Num(n) => n.to_string(),
                    Field::Str(s) => s.clone(),
                    Field::List(l) if l.is_empty() => "none".to_string(),
                    Field::List(l) => l.join(","),
                };
                format!("{:<21}{v}\n", format!("{k}:"))
            })
            .collect(),
        Format::Json => {
            let mut map = Map::new();
            for (k, v) in fields {
                let v = match v {
                    Field::Num(n) => Value::from(n),
                    Field::Str(s) => Value::String(s),
                    Field::List(l) => Value::Array(l.into_iter().map(Value::String).collect()),
                };
                map.insert(k.to_string(), v);
            }
            output::pretty(&Value::Object(map))
        }
    })
}

/// `create`'s default `len` for the metadata the table names.
pub fn default_len(backing: &str, which: Meta<'_>) -> Result<u64, Failure> {
    match which {
        Meta::Core => crate::create::backing_sectors(backing),
        Meta::Internal => data_sectors(Path::new(backing), None),
        Meta::External(p) => data_sectors(Path::new(backing), Some(Path::new(p))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const MIB: u64 = 1 << 20;

    fn file(dir: &TempDir, name: &str, bytes: u64) -> PathBuf {
        let p = dir.path().join(name);
        File::create(&p).unwrap().set_len(bytes).unwrap();
        p
    }

    fn create_args(backing: &Path, meta_dev: Option<&Path>) -> CreateMdArgs {
        CreateMdArgs {
            backing: backing.to_path_buf(),
            meta_dev: meta_dev.map(Path::to_path_buf),
            node_id: 0,
            region_size: 4096,
            al_slots: al::DEFAULT_RING_SLOTS,
            force: false,
            clear_bitmap: false,
            overwrite_data_of_peer: false,
        }
    }

    #[test]
    fn initial_sync_choices() {
        let dir = tempfile::tempdir().unwrap();
        let disk = file(&dir, "disk", 8 * MIB);
        let mut args = create_args(&disk, None);
        let text = create_md(&args).unwrap();
        assert!(text.contains("generation: fresh"), "{text}");
        args.force = true;
        args.clear_bitmap = true;
        let text = create_md(&args).unwrap();
        assert!(text.contains("--clear-bitmap"), "{text}");
        let v = dump_json(&disk, None);
        assert_eq!(v["current_uuid"], format!("{:016X}", resync::DAY0));
        assert!(
            v["flags"]
                .as_array()
                .unwrap()
                .contains(&"consistent".into()),
            "{v}"
        );
        args.clear_bitmap = false;
        args.overwrite_data_of_peer = true;
        create_md(&args).unwrap();
        let v = dump_json(&disk, None);
        let current = u64::from_str_radix(v["current_uuid"].as_str().unwrap(), 16).unwrap();
        assert!(current != meta::UUID_JUST_CREATED && current != resync::DAY0 && current & 1 == 0);
        assert_eq!(v["bitmap_uuid"], "0000000000000004");
        // A fresh peer is a full-sync target of this side.
        let ours = resync::Uuids {
            current,
            bitmap: 4,
            history: [0; 2],
            flags: 0,
        };
        assert_eq!(
            resync::compare(&ours, &resync::Uuids::just_created(), true).decision,
            resync::Decision::SyncSource { full: true }
        );
    }

    fn dump_args(backing: &Path, meta_dev: Option<&Path>, output: Format) -> DumpMdArgs {
        DumpMdArgs {
            backing: backing.to_path_buf(),
            meta_dev: meta_dev.map(Path::to_path_buf),
            output,
        }
    }

    fn dump_json(backing: &Path, meta_dev: Option<&Path>) -> Value {
        serde_json::from_str(&dump_md(&dump_args(backing, meta_dev, Format::Json)).unwrap())
            .unwrap()
    }

    #[test]
    fn errno_mapping() {
        use meta::Error as E;
        let cases = [
            (E::BadMagic, libc::ENODATA),
            (E::BadChecksum, libc::EBADMSG),
            (E::UnsupportedVersion, libc::EOPNOTSUPP),
            (E::UnsupportedFeatures, libc::EOPNOTSUPP),
            (E::SizeChanged, libc::ENOSPC),
            (E::DeviceTooSmall, libc::ENOSPC),
            (E::MetaDeviceTooSmall, libc::ENOSPC),
            (E::Invalid, libc::EUCLEAN),
            (E::InvalidRegionSize, libc::EUCLEAN),
            (E::InvalidAl, libc::EUCLEAN),
            (E::DeviceTooLarge, libc::EUCLEAN),
            (E::Overlap, libc::EUCLEAN),
        ];
        for (e, errno) in cases {
            assert_eq!(meta_errno(e), errno, "{e:?}");
        }
        assert_eq!(
            md_failure(E::BadChecksum).render("dump-md", Some("/dev/vdb")),
            "rmirrorctl: dump-md /dev/vdb: metadata checksum mismatch (EBADMSG)\n"
        );
    }

    #[test]
    fn small_helpers() {
        assert_eq!(human_size(2093056 << 9), "1022 MiB");
        assert_eq!(human_size(512), "512 bytes");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "15.9 EiB");
        assert_eq!(flag_names(meta::MDF_KNOWN).len(), 9);
        assert_eq!(
            flag_names(meta::MDF_CONSISTENT | meta::MDF_AL_CLEAN),
            ["consistent", "al_clean"]
        );
        assert_eq!(hex(4), "0000000000000004");
        assert_eq!(parse_region_size("4096"), Ok(4096));
        assert_eq!(parse_region_size("1048576"), Ok(1 << 20));
        for bad in ["2048", "4097", "2097152", "-1", "4k"] {
            assert!(parse_region_size(bad).is_err(), "{bad}");
        }
        for len in [1, 4096, 5000] {
            let mut a = Aligned::new(len);
            assert_eq!(a.bytes_mut().as_ptr() as usize % BLOCK, 0);
            assert_eq!(a.bytes().len(), len);
        }
    }

    #[test]
    fn internal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let disk = file(&dir, "disk", 8 * MIB + 1000);
        let mut args = create_args(&disk, None);
        args.node_id = 1;
        let text = create_md(&args).unwrap();
        let l = Layout::internal((8 * MIB + 1000) >> 9, 12, 8).unwrap();
        assert!(
            text.contains(&format!(
                "data: {} sectors (7.9 MiB), {} bytes\n",
                l.data_sectors,
                l.data_sectors << 9
            )),
            "{text}"
        );
        assert!(text.starts_with(&format!("created internal metadata on {}", disk.display())));
        assert_eq!(data_sectors(&disk, None), Ok(l.data_sectors));

        let v = dump_json(&disk, None);
        assert_eq!(v["kind"], "internal");
        assert_eq!(v["version"], 1);
        assert_eq!(v["flags"], serde_json::json!(["al_clean"]));
        assert_eq!(v["current_uuid"], "0000000000000004");
        assert_eq!(
            v["history_uuids"],
            serde_json::json!(["0000000000000000", "0000000000000000"])
        );
        assert_eq!(v["node_id"], 1);
        assert_eq!(v["data_sectors"], l.data_sectors);
        assert_eq!(v["sb_offset"], l.sb_offset);
        assert_eq!(v["al_offset"], l.al_offset);
        assert_eq!(v["bm_offset"], l.bm_offset);
        assert_eq!(v["bm_sectors"], l.bm_sectors);
        assert_eq!(v["region_size"], 4096);
        assert_eq!(v["al_slots"], 8);
        assert_eq!(v["bitmap_weight"], 0);
        assert_eq!(v["out_of_sync_sectors"], 0);
        assert_eq!(v["device_uuid"].as_str().unwrap().len(), 16);

        let text = dump_md(&dump_args(&disk, None, Format::Normal)).unwrap();
        assert!(text.contains("\nkind:                internal\n"), "{text}");
        assert!(text.contains("\nflags:               al_clean\n"), "{text}");

        // The activity log ring is all zero: an empty, complete log.
        let md = Dev::open(&disk, Access::Read).unwrap();
        let ring: Vec<[u8; BLOCK]> = (0..l.al_slots)
            .map(|s| md.read_block(l.al_slot_sector(s)).unwrap())
            .collect();
        let sb = Superblock::decode(&md.read_block(l.sb_offset).unwrap()).unwrap();
        let mut state = vec![al::Slot::EMPTY; sb.al_nr_extents as usize];
        let rec = al::recover(sb.device_uuid, sb.al_extent_shift, ring.iter(), &mut state);
        assert!(rec.complete && rec.valid == 0 && rec.next_seq == 0);
    }

    #[test]
    fn external_round_trip_and_weight() {
        let dir = tempfile::tempdir().unwrap();
        let data = file(&dir, "data", 64 * MIB);
        let meta_dev = file(&dir, "meta", MIB);
        let mut args = create_args(&data, Some(&meta_dev));
        args.region_size = 64 << 10;
        args.al_slots = 16;
        let text = create_md(&args).unwrap();
        assert!(
            text.contains("data: 131072 sectors (64 MiB), 67108864 bytes\n"),
            "{text}"
        );
        let v = dump_json(&data, Some(&meta_dev));
        assert_eq!(v["kind"], "external");
        assert_eq!(v["meta_device"], meta_dev.to_str().unwrap());
        assert_eq!(
            (v["sb_offset"].as_u64(), v["al_offset"].as_u64()),
            (Some(0), Some(8))
        );
        assert_eq!(v["bm_offset"], 8 + 16 * 8);
        assert_eq!(v["region_size"], 65536);
        assert_eq!(v["data_sectors"], 131072);
        assert_eq!(
            default_len(
                data.to_str().unwrap(),
                Meta::External(meta_dev.to_str().unwrap())
            ),
            Ok(131072)
        );
        // Internal metadata is not there.
        assert_eq!(data_sectors(&data, None).unwrap_err().errno, libc::ENODATA);

        // 1024 regions of 128 sectors. Set regions 0, 63, 64 and the last one, plus bits
        // beyond the data area (ignored).
        let f = OpenOptions::new().write(true).open(&meta_dev).unwrap();
        let bm = (8 + 16 * 8) * 512;
        f.write_all_at(&0x8000_0000_0000_0001u64.to_le_bytes(), bm)
            .unwrap();
        f.write_all_at(&[1], bm + 8).unwrap();
        f.write_all_at(&[0x80, 0xff], bm + 127).unwrap();
        drop(f);
        let v = dump_json(&data, Some(&meta_dev));
        assert_eq!(v["bitmap_weight"], 4);
        assert_eq!(v["out_of_sync_sectors"], 4 * 128);

        // A metadata device too small, the data device as its own metadata device.
        let tiny = file(&dir, "tiny", 32 * 1024);
        let e = create_md(&create_args(&data, Some(&tiny))).unwrap_err();
        assert_eq!(e.errno, libc::ENOSPC);
        assert_eq!(e.detail.as_deref(), Some("metadata device too small"));
        assert_eq!(e.hints.len(), 1, "{e:?}");
        let e = create_md(&create_args(&data, Some(&data))).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
    }

    #[test]
    fn refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let disk = file(&dir, "disk", 4 * MIB);
        let mut args = create_args(&disk, None);
        create_md(&args).unwrap();
        let first = dump_json(&disk, None);
        let e = create_md(&args).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        let detail = e.detail.unwrap();
        assert!(
            detail.contains("already holds rmirror metadata (version 1, internal, node id 0"),
            "{detail}"
        );
        assert!(detail.contains(first["device_uuid"].as_str().unwrap()));
        assert_eq!(e.context, None);
        assert_eq!(dump_json(&disk, None), first);
        args.force = true;
        let text = create_md(&args).unwrap();
        assert!(text.starts_with("overwriting rmirror metadata"), "{text}");
        assert_ne!(dump_json(&disk, None)["device_uuid"], first["device_uuid"]);
    }

    #[test]
    fn bad_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let disk = file(&dir, "disk", 4 * MIB);
        let e = dump_md(&dump_args(&disk, None, Format::Normal)).unwrap_err();
        assert_eq!(e.errno, libc::ENODATA);
        assert_eq!(e.detail.as_deref(), Some("no rmirror metadata (bad magic)"));
        assert_eq!(e.context, None);
        assert!(e.hints[0].contains("rmirrorctl create-md"), "{e:?}");

        create_md(&create_args(&disk, None)).unwrap();
        let sb = meta::internal_sb_offset((4 * MIB) >> 9).unwrap() << 9;
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, sb + 0x50).unwrap();
        f.write_all_at(&[b[0] ^ 1], sb + 0x50).unwrap();
        let e = dump_md(&dump_args(&disk, None, Format::Json)).unwrap_err();
        assert_eq!(
            e.render("dump-md", Some("d")),
            "rmirrorctl: dump-md d: metadata checksum mismatch (EBADMSG)\n"
        );
        // Damaged metadata is not overwritten without --force either.
        let e = create_md(&create_args(&disk, None)).unwrap_err();
        assert_eq!(e.errno, libc::EEXIST);
        assert!(e
            .detail
            .unwrap()
            .contains("damaged rmirror metadata (metadata checksum mismatch)"));

        // The device grew: the superblock is no longer in the last block.
        f.set_len(5 * MIB).unwrap();
        assert_eq!(data_sectors(&disk, None).unwrap_err().errno, libc::ENODATA);

        // Too small for metadata, not a file, missing.
        let small = file(&dir, "small", 512 * 1024);
        let e = create_md(&create_args(&small, None)).unwrap_err();
        assert_eq!(
            (e.errno, e.detail.as_deref()),
            (libc::ENOSPC, Some("device too small for metadata"))
        );
        let e = dump_md(&dump_args(dir.path(), None, Format::Normal)).unwrap_err();
        assert_eq!(e.errno, libc::ENOTBLK);
        let e = data_sectors(&dir.path().join("none"), None).unwrap_err();
        assert_eq!(e.errno, libc::ENOENT);
        assert!(e.context.unwrap().ends_with("/none"));
    }

    #[test]
    fn external_is_not_internal() {
        let dir = tempfile::tempdir().unwrap();
        let data = file(&dir, "data", 4 * MIB);
        let meta_dev = file(&dir, "meta", 4 * MIB);
        // Internal metadata on `meta_dev`, then read as if it were external: no superblock at
        // sector 0.
        create_md(&create_args(&meta_dev, None)).unwrap();
        assert_eq!(
            data_sectors(&data, Some(&meta_dev)).unwrap_err().errno,
            libc::ENODATA
        );
        // An external superblock where the internal one belongs.
        let other = file(&dir, "other", 4 * MIB);
        let layout = Layout::external(2048, 4096, 12, 8).unwrap();
        let mut buf = [0u8; SUPERBLOCK_SIZE];
        Superblock::new(layout, 7, 0)
            .unwrap()
            .encode(&mut buf)
            .unwrap();
        let sb = meta::internal_sb_offset((4 * MIB) >> 9).unwrap() << 9;
        let f = OpenOptions::new().write(true).open(&other).unwrap();
        f.write_all_at(&buf, sb).unwrap();
        let e = data_sectors(&other, None).unwrap_err();
        assert_eq!(e.errno, libc::EUCLEAN);
        assert_eq!(
            e.detail,
            Some(format!(
                "{} holds external metadata, not internal",
                other.display()
            ))
        );
        // External metadata, data device shrunk below the recorded size.
        create_md(&create_args(&data, Some(&meta_dev))).unwrap();
        File::options()
            .write(true)
            .open(&data)
            .unwrap()
            .set_len(2 * MIB)
            .unwrap();
        let e = data_sectors(&data, Some(&meta_dev)).unwrap_err();
        assert_eq!(
            (e.errno, e.detail.as_deref()),
            (libc::ENOSPC, Some("device size differs from the metadata"))
        );
    }
}
