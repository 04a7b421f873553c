// SPDX-License-Identifier: GPL-2.0
//! `rmirrorctl create`: its options and how they become a table line.

use std::fs::File;
use std::io;

use clap::{Args, ValueEnum};
use rmirror_core::state::conn::Config as Timing;
use rmirror_core::table::{self, Meta, OnIoError, Protocol, Role, SockAddr, Table, TableError};

use crate::error::Failure;
use crate::sys;

/// Arguments of `create`: a device name and either `--table` or the options form.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Device name: 1-63 characters of A-Z a-z 0-9 _ . -
    pub name: String,

    /// Whole table line, sent to the kernel as is:
    /// "0 LEN rmirror BACKING ROLE LOCAL PEER PROTOCOL [inline_max=N] [node_id=N] [meta=WHERE] ..."
    #[arg(
        long,
        value_name = "LINE",
        conflicts_with_all = ["backing", "role", "local", "peer", "protocol", "inline_max", "node_id", "len", "meta", "on_io_error"]
    )]
    pub table: Option<String>,

    #[command(flatten)]
    pub opts: TableOpts,
}

/// The options form of `create`, turned into a table line by [`TableOpts::line`].
#[derive(Debug, Clone, Default, Args)]
pub struct TableOpts {
    /// Backing block device (absolute path), e.g. /dev/vdb
    #[arg(long, value_name = "PATH", required_unless_present = "table")]
    pub backing: Option<String>,

    /// Role of this node
    #[arg(long, value_enum, required_unless_present = "table")]
    pub role: Option<RoleArg>,

    /// Local address to listen on / connect from: IPv4:PORT
    #[arg(long, value_name = "IP:PORT", value_parser = parse_addr, required_unless_present = "table")]
    pub local: Option<SockAddr>,

    /// Peer address: IPv4:PORT
    #[arg(long, value_name = "IP:PORT", value_parser = parse_addr, required_unless_present = "table")]
    pub peer: Option<SockAddr>,

    /// Replication protocol [default: C]
    #[arg(long, value_enum)]
    pub protocol: Option<ProtocolArg>,

    /// Largest write in bytes sent on the small-write path (0..=32768, multiple of 512; 0 disables) [default: 4096]
    #[arg(long, value_name = "BYTES")]
    pub inline_max: Option<u32>,

    /// Node id, 0..=31 [default: 0 for primary, 1 for secondary]
    #[arg(long, value_name = "ID")]
    pub node_id: Option<u8>,

    /// Heartbeat period in ms, each way (100..=60000) [default: 1000]
    #[arg(long, value_name = "MS")]
    pub ping_interval: Option<u32>,

    /// Outage after this many ms without traffic or a pong (> ping interval, <= 600000) [default: 5000]
    #[arg(long, value_name = "MS")]
    pub timeout: Option<u32>,

    /// Heartbeats needed without a miss after an outage before replication resumes, ms (0..=600000) [default: 3000]
    #[arg(long, value_name = "MS")]
    pub probation: Option<u32>,

    /// Delay between connection attempts in ms (100..=600000) [default: 1000]
    #[arg(long, value_name = "MS")]
    pub connect_retry: Option<u32>,

    /// Longest outage whose writes stay queued, ms (0 = no limit, else timeout..=86400000) [default: 60000]
    #[arg(long, value_name = "MS")]
    pub outage_max: Option<u32>,

    /// Where the metadata is: "internal" (end of the backing device), the absolute path of a
    /// metadata device, or "core" (in memory only); internal and external metadata are written
    /// by create-md [default: core]
    #[arg(long, value_name = "internal|core|PATH", value_parser = parse_meta)]
    pub meta: Option<String>,

    /// What a primary does when its backing device fails a write: detach it and go on
    /// through the peer, or pass the error on to the application [default: detach]
    #[arg(long, value_enum)]
    pub on_io_error: Option<OnIoErrorArg>,

    /// Device size in 512-byte sectors [default: the data size recorded in the metadata with
    /// --meta internal or PATH, else the size of the backing device]
    #[arg(long, value_name = "SECTORS")]
    pub len: Option<u64>,
}

/// `--role` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// Accepts I/O and replicates writes to the peer
    Primary,
    /// Receives the primary's writes; /dev/rmirrorN cannot be opened
    Secondary,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Primary => Role::Primary,
            RoleArg::Secondary => Role::Secondary,
        }
    }
}

/// `--on-io-error` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnIoErrorArg {
    /// Stop using the failed disk; reads and writes go through the peer
    Detach,
    /// Fail the I/O to the application; keep using the disk
    #[value(name = "pass_on")]
    PassOn,
}

impl From<OnIoErrorArg> for OnIoError {
    fn from(p: OnIoErrorArg) -> OnIoError {
        match p {
            OnIoErrorArg::Detach => OnIoError::Detach,
            OnIoErrorArg::PassOn => OnIoError::PassOn,
        }
    }
}

/// `--protocol` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    /// Asynchronous
    #[value(name = "A")]
    A,
    /// Memory-synchronous
    #[value(name = "B")]
    B,
    /// Synchronous
    #[value(name = "C")]
    C,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::A => Protocol::A,
            ProtocolArg::B => Protocol::B,
            ProtocolArg::C => Protocol::C,
        }
    }
}

/// clap value parser for `IPv4:PORT`.
pub fn parse_addr(s: &str) -> Result<SockAddr, String> {
    SockAddr::parse(s).ok_or_else(|| {
        "expected IPv4:PORT with port 1-65535 and no leading zeros, e.g. 10.0.0.1:7788".to_string()
    })
}

/// clap value parser for `--meta`: checked here, kept as a string (a `Meta` borrows it).
pub fn parse_meta(s: &str) -> Result<String, String> {
    Meta::parse(s)
        .map(|_| s.to_string())
        .map_err(|e| e.as_str().to_string())
}

fn table_failure(e: TableError) -> Failure {
    Failure::invalid(e.as_str()).context("table")
}

impl TableOpts {
    /// Builds and validates the canonical table line; `len` is `--len` or, when absent, the
    /// result of `default_len(backing, meta)` in sectors (`md::default_len`: the backing
    /// size, or the data size in the metadata).
    pub fn line(
        &self,
        default_len: impl FnOnce(&str, Meta<'_>) -> Result<u64, Failure>,
    ) -> Result<String, Failure> {
        let missing = |what: &str| Failure::invalid(format!("missing --{what}"));
        let backing = self.backing.as_deref().ok_or_else(|| missing("backing"))?;
        let role: Role = self.role.ok_or_else(|| missing("role"))?.into();
        let meta = match self.meta.as_deref() {
            Some(m) => Meta::parse(m).map_err(table_failure)?,
            None => Meta::Core,
        };
        let mut t = Table {
            start: 0,
            len: self.len.unwrap_or(1),
            backing,
            role,
            local: self.local.ok_or_else(|| missing("local"))?,
            peer: self.peer.ok_or_else(|| missing("peer"))?,
            protocol: self.protocol.map_or(Protocol::C, Protocol::from),
            inline_max: self.inline_max.unwrap_or(table::INLINE_MAX_DEFAULT),
            node_id: self.node_id.unwrap_or(role.default_node_id()),
            timing: {
                let d = Timing::DEFAULT;
                Timing {
                    ping_interval_ms: self.ping_interval.unwrap_or(d.ping_interval_ms),
                    timeout_ms: self.timeout.unwrap_or(d.timeout_ms),
                    probation_ms: self.probation.unwrap_or(d.probation_ms),
                    connect_retry_ms: self.connect_retry.unwrap_or(d.connect_retry_ms),
                    outage_max_ms: self.outage_max.unwrap_or(d.outage_max_ms),
                }
            },
            meta,
            on_io_error: self.on_io_error.map_or(OnIoError::Detach, OnIoError::from),
        };
        // A path with whitespace would split into several fields: catch it by name.
        if backing.chars().any(char::is_whitespace) {
            return Err(table_failure(TableError::BadBacking));
        }
        // Validate everything before touching the backing device ...
        table::parse(&t.to_string()).map_err(table_failure)?;
        if self.len.is_none() {
            t.len = default_len(backing, meta)?;
        }
        // ... and the final line again (the size may be 0 or too large).
        let line = t.to_string();
        table::parse(&line).map_err(table_failure)?;
        Ok(line)
    }
}

/// Size of the backing device in 512-byte sectors (`BLKGETSIZE64`; plain files by length).
pub fn backing_sectors(path: &str) -> Result<u64, Failure> {
    let ctx = |e: io::Error| Failure::io(&e).context(path.to_string());
    let file = File::open(path).map_err(ctx)?;
    let meta = file.metadata().map_err(ctx)?;
    let bytes = if meta.is_file() {
        meta.len()
    } else {
        sys::blkgetsize64(&file).map_err(ctx)?
    };
    Ok(bytes >> table::SECTOR_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> TableOpts {
        TableOpts {
            backing: Some("/dev/vdb".into()),
            role: Some(RoleArg::Primary),
            local: parse_addr("10.0.0.1:7788").ok(),
            peer: parse_addr("10.0.0.2:7788").ok(),
            ..TableOpts::default()
        }
    }

    fn no_size(_: &str, _: Meta<'_>) -> Result<u64, Failure> {
        panic!("size must not be looked up")
    }

    #[test]
    fn options_to_line() {
        let mut o = opts();
        o.len = Some(2048);
        assert_eq!(
            o.line(no_size).unwrap(),
            "0 2048 rmirror /dev/vdb primary 10.0.0.1:7788 10.0.0.2:7788 C"
        );
        o.role = Some(RoleArg::Secondary);
        o.protocol = Some(ProtocolArg::A);
        o.inline_max = Some(0);
        assert_eq!(
            o.line(no_size).unwrap(),
            "0 2048 rmirror /dev/vdb secondary 10.0.0.1:7788 10.0.0.2:7788 A inline_max=0"
        );
        o.node_id = Some(7);
        assert!(o.line(no_size).unwrap().ends_with(" node_id=7"));
    }

    #[test]
    fn len_from_backing() {
        let line = opts()
            .line(|p, m| {
                assert_eq!((p, m), ("/dev/vdb", Meta::Core));
                Ok(4096)
            })
            .unwrap();
        assert!(line.starts_with("0 4096 rmirror "));
    }

    #[test]
    fn meta_option() {
        let mut o = opts();
        o.len = Some(2048);
        o.meta = Some("internal".into());
        assert_eq!(
            o.line(no_size).unwrap(),
            "0 2048 rmirror /dev/vdb primary 10.0.0.1:7788 10.0.0.2:7788 C meta=internal"
        );
        o.meta = Some("core".into());
        assert!(o.line(no_size).unwrap().ends_with(" C"));
        o.meta = Some("/dev/vdc".into());
        assert!(o.line(no_size).unwrap().ends_with(" C meta=/dev/vdc"));
        o.meta = Some("vdc".into());
        assert_eq!(
            o.line(no_size).unwrap_err().detail.as_deref(),
            Some(TableError::BadMeta.as_str())
        );
        assert!(parse_meta("vdc").is_err());
        assert_eq!(parse_meta("internal").as_deref(), Ok("internal"));

        // Without --len the length comes from whatever the metadata says.
        let mut o = opts();
        o.meta = Some("/dev/vdc".into());
        let line = o
            .line(|p, m| {
                assert_eq!((p, m), ("/dev/vdb", Meta::External("/dev/vdc")));
                Ok(4000)
            })
            .unwrap();
        assert!(line.starts_with("0 4000 rmirror /dev/vdb "), "{line}");
    }

    #[test]
    fn len_from_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let mut o = opts();
        o.backing = Some(disk.to_str().unwrap().to_string());
        o.meta = Some("internal".into());
        let e = o.line(crate::md::default_len).unwrap_err();
        assert_eq!(e.errno, libc::ENODATA);
        assert_eq!(e.context.as_deref(), o.backing.as_deref());
        crate::md::create_md(&crate::md::CreateMdArgs {
            backing: disk.clone(),
            meta_dev: None,
            node_id: 0,
            region_size: 4096,
            al_slots: 8,
            force: false,
            clear_bitmap: false,
            overwrite_data_of_peer: false,
        })
        .unwrap();
        let data = rmirror_core::meta::Layout::internal(16384, 12, 8)
            .unwrap()
            .data_sectors;
        let line = o.line(crate::md::default_len).unwrap();
        assert_eq!(
            line,
            format!(
                "0 {data} rmirror {} primary 10.0.0.1:7788 10.0.0.2:7788 C meta=internal",
                disk.display()
            )
        );
        // meta=core keeps the backing size.
        o.meta = None;
        assert!(o
            .line(crate::md::default_len)
            .unwrap()
            .starts_with("0 16384 rmirror "));
    }

    #[test]
    fn invalid_options() {
        let mut o = opts();
        o.inline_max = Some(100);
        let e = o.line(no_size).unwrap_err();
        assert_eq!(e.errno, libc::EINVAL);
        assert_eq!(
            e.render("create", Some("r0")),
            "rmirrorctl: create r0: table: bad inline_max: expected 0 to 32768 bytes, a multiple of 512 (EINVAL)\n"
        );

        let mut o = opts();
        o.node_id = Some(32);
        assert_eq!(
            o.line(no_size).unwrap_err().detail.as_deref(),
            Some(TableError::BadNodeId.as_str())
        );

        let mut o = opts();
        o.backing = Some("vdb".into());
        assert_eq!(
            o.line(no_size).unwrap_err().detail.as_deref(),
            Some(TableError::BadBacking.as_str())
        );

        let mut o = opts();
        o.backing = Some("/dev/my disk".into());
        assert_eq!(
            o.line(no_size).unwrap_err().detail.as_deref(),
            Some(TableError::BadBacking.as_str())
        );

        let mut o = opts();
        o.len = Some(0);
        assert_eq!(
            o.line(no_size).unwrap_err().detail.as_deref(),
            Some(TableError::BadLen.as_str())
        );

        // A backing device smaller than one sector.
        let e = opts().line(|_, _| Ok(0)).unwrap_err();
        assert_eq!(e.detail.as_deref(), Some(TableError::BadLen.as_str()));

        // Size lookup errors pass through.
        let e = opts()
            .line(|_, _| Err(Failure::os(libc::ENOENT).context("/dev/vdb")))
            .unwrap_err();
        assert_eq!(e.errno, libc::ENOENT);

        let mut o = opts();
        o.peer = None;
        assert_eq!(
            o.line(no_size).unwrap_err().detail.as_deref(),
            Some("missing --peer")
        );
    }

    #[test]
    fn addr_parser() {
        assert_eq!(parse_addr("1.2.3.4:5").unwrap().port, 5);
        assert!(parse_addr("1.2.3.4").is_err());
        assert!(parse_addr("1.2.3.4:0").is_err());
    }

    #[test]
    fn backing_size_of_a_file() {
        let path = std::env::temp_dir().join(format!("rmirrorctl-size-{}", std::process::id()));
        std::fs::write(&path, vec![0u8; 4096 + 100]).unwrap();
        let n = backing_sectors(path.to_str().unwrap());
        std::fs::remove_file(&path).unwrap();
        assert_eq!(n, Ok(8));
        let e = backing_sectors("/nonexistent/vdz").unwrap_err();
        assert_eq!(e.errno, libc::ENOENT);
        assert_eq!(e.context.as_deref(), Some("/nonexistent/vdz"));
    }
}
