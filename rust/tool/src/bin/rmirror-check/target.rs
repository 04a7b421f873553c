// SPDX-License-Identifier: GPL-2.0
//! The device and block range both subcommands work on, and the byte-size syntax of options.

use std::fs::File;
use std::path::PathBuf;

use clap::Args;

use crate::stamp;
use crate::sys;

/// Largest accepted `--bs`.
const MAX_BS: u64 = 64 << 20;

/// The device and the range of whole blocks inside it.
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Block device, or a regular file (then usually with --no-direct)
    #[arg(value_name = "DEV")]
    pub dev: PathBuf,

    /// Start of the range in bytes, a multiple of --bs (suffixes K, M, G, T are powers of 1024)
    #[arg(long, value_name = "BYTES", default_value = "0", value_parser = parse_bytes)]
    pub offset: u64,

    /// Length of the range in bytes, a multiple of --bs
    #[arg(long, value_name = "BYTES", value_parser = parse_bytes)]
    pub size: u64,

    /// Block size in bytes: a multiple of 512
    #[arg(long, value_name = "BYTES", default_value = "4096", value_parser = parse_bytes)]
    pub bs: u64,

    /// Use buffered I/O instead of O_DIRECT (regular files on tmpfs and the like)
    #[arg(long)]
    pub no_direct: bool,
}

/// A validated range: blocks `first .. first + count` of `bs` bytes each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// Index of the first block (offset / bs).
    pub first: u64,
    /// Number of blocks.
    pub count: u64,
    /// Block size in bytes.
    pub bs: usize,
}

impl Range {
    /// One past the last block index.
    pub fn end(&self) -> u64 {
        self.first + self.count
    }

    /// Whether block index `block` is inside the range.
    pub fn contains(&self, block: u64) -> bool {
        (self.first..self.end()).contains(&block)
    }

    /// Byte offset of block `block` on the device.
    pub fn pos(&self, block: u64) -> u64 {
        block * self.bs as u64
    }
}

impl Target {
    /// Checks the options: block size, alignment of the range and its arithmetic.
    pub fn range(&self) -> Result<Range, String> {
        let bs = self.bs;
        if bs == 0 || !bs.is_multiple_of(512) || bs > MAX_BS {
            return Err(format!(
                "--bs {bs}: must be a multiple of 512 between 512 and {MAX_BS}"
            ));
        }
        debug_assert!(bs as usize >= stamp::HEADER + stamp::CRC);
        if !self.offset.is_multiple_of(bs) {
            return Err(format!(
                "--offset {}: must be a multiple of --bs {bs}",
                self.offset
            ));
        }
        if self.size == 0 || !self.size.is_multiple_of(bs) {
            return Err(format!(
                "--size {}: must be a positive multiple of --bs {bs}",
                self.size
            ));
        }
        if self.offset.checked_add(self.size).is_none() {
            return Err("--offset + --size overflows".to_string());
        }
        Ok(Range {
            first: self.offset / bs,
            count: self.size / bs,
            bs: bs as usize,
        })
    }

    /// Opens the device (O_DIRECT unless --no-direct; O_DSYNC with `dsync`) and checks that
    /// the range lies inside it.
    pub fn open(&self, write: bool, dsync: bool) -> Result<File, String> {
        let name = self.dev.display();
        let file = sys::open_dev(&self.dev, write, !self.no_direct, dsync).map_err(|e| {
            let hint = match e.raw_os_error() {
                Some(libc::EINVAL) if !self.no_direct => {
                    " (no O_DIRECT here? use --no-direct for regular files)"
                }
                _ => "",
            };
            format!("open {name}: {e}{hint}")
        })?;
        let len = sys::dev_len(&file).map_err(|e| format!("size of {name}: {e}"))?;
        if self.offset + self.size > len {
            return Err(format!(
                "range {}+{} ends beyond {name} ({len} bytes)",
                self.offset, self.size
            ));
        }
        Ok(file)
    }
}

/// Parses a byte count: decimal, `0x` hex, or decimal with a K, M, G or T suffix (powers of
/// 1024; `KiB`, `MiB`, ... are accepted too).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(hex) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).map_err(|e| format!("{s:?}: {e}"));
    }
    let digits = t.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &t[digits.len()..];
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        "T" | "TIB" => 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown suffix {suffix:?} (use K, M, G or T)"
            ))
        }
    };
    let n: u64 = digits.parse().map_err(|e| format!("{s:?}: {e}"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts() {
        assert_eq!(parse_bytes("0"), Ok(0));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0x1000"), Ok(4096));
        assert_eq!(parse_bytes("4K"), Ok(4096));
        assert_eq!(parse_bytes("4k"), Ok(4096));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("2T"), Ok(2 << 40));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("4X").is_err());
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("K").is_err());
        assert!(parse_bytes("99999999999T").is_err());
    }

    fn target(offset: u64, size: u64, bs: u64) -> Target {
        Target {
            dev: PathBuf::from("/dev/null"),
            offset,
            size,
            bs,
            no_direct: true,
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(
            target(8192, 1 << 20, 4096).range(),
            Ok(Range {
                first: 2,
                count: 256,
                bs: 4096
            })
        );
        let r = target(0, 1024, 512).range().unwrap();
        assert!(r.contains(0) && r.contains(1) && !r.contains(2));
        assert_eq!(r.pos(1), 512);
        for (t, what) in [
            (target(0, 4096, 0), "--bs 0"),
            (target(0, 4096, 1000), "--bs 1000"),
            (target(0, 4096, 128 << 20), "--bs 134217728"),
            (target(512, 8192, 4096), "--offset 512"),
            (target(0, 0, 4096), "--size 0"),
            (target(0, 6144, 4096), "--size 6144"),
            (target(u64::MAX - 4095, 4096, 4096), "overflows"),
        ] {
            let e = t.range().unwrap_err();
            assert!(e.contains(what), "{e}");
        }
    }
}
