// SPDX-License-Identifier: GPL-2.0
//! `rmirror-check verify`: classifies every block of the range against the write logs.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use clap::Args;
use serde_json::{Map, Value};

use crate::log::{History, Version};
use crate::stamp;
use crate::sys::AlignedBuf;
use crate::target::{Range, Target};

/// The device is read this many bytes at a time (rounded down to whole blocks).
const CHUNK: usize = 1 << 20;

/// Examples printed per kind of check (blocks, prefix).
pub const MAX_EXAMPLES: usize = 10;

/// Arguments of `verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: Target,

    /// Log of a writer run; repeat for several runs, oldest first
    #[arg(long = "log", value_name = "FILE", required = true)]
    pub logs: Vec<PathBuf>,

    /// Also check that the disk holds a prefix of the issue order (exact with --jobs 1)
    #[arg(long)]
    pub prefix: bool,
}

/// The verdict; printed as one JSON line, examples on stderr.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Blocks in the range.
    pub blocks: u64,
    /// Blocks with an acknowledged write.
    pub acknowledged: u64,
    /// Blocks holding their last acknowledged write.
    pub present: u64,
    /// Blocks holding an issued write newer than their last acknowledged one (if any).
    pub later: u64,
    /// Blocks that lost an acknowledged write: no stamp, or an older one.
    pub missing: u64,
    /// Blocks with a stamp that cannot be right: bad CRC, another block's stamp, or a
    /// version never issued for this block.
    pub corrupt: u64,
    /// Blocks never acknowledged that hold no stamp of a logged run.
    pub untouched: u64,
    /// The newest version found on the disk.
    pub newest: Option<Version>,
    /// With `--prefix`: blocks that do not hold the newest version issued up to `newest`.
    pub not_prefix: Option<u64>,
    /// Up to [`MAX_EXAMPLES`] of each kind, e.g. "block 123: acked seq 45, disk has seq 40".
    pub examples: Vec<String>,
}

impl Report {
    /// The JSON line: blocks, acknowledged, present, later, missing, corrupt, untouched,
    /// max_seq_on_disk (null for none) and, with `--prefix`, not_prefix.
    pub fn json(&self) -> String {
        let mut m = Map::new();
        for (key, n) in [
            ("blocks", self.blocks),
            ("acknowledged", self.acknowledged),
            ("present", self.present),
            ("later", self.later),
            ("missing", self.missing),
            ("corrupt", self.corrupt),
            ("untouched", self.untouched),
        ] {
            m.insert(key.to_string(), Value::from(n));
        }
        m.insert(
            "max_seq_on_disk".to_string(),
            self.newest.map_or(Value::Null, |v| Value::from(v.seq)),
        );
        if let Some(n) = self.not_prefix {
            m.insert("not_prefix".to_string(), Value::from(n));
        }
        Value::Object(m).to_string()
    }

    /// Whether no acknowledged write is lost, nothing is corrupt and (with `--prefix`) the
    /// disk is a prefix of the writes.
    pub fn passed(&self) -> bool {
        self.missing == 0 && self.corrupt == 0 && self.not_prefix.unwrap_or(0) == 0
    }
}

/// Reads the logs and checks the device; errors (logs, I/O) are returned as messages.
pub fn run(args: &VerifyArgs) -> Result<Report, String> {
    let range = args.target.range()?;
    let mut history = History::new(Some(range.first..range.end()));
    for log in &args.logs {
        history.read_file(log)?;
    }
    if let Some(r) = history.runs.iter().find(|r| r.bs != range.bs as u64) {
        return Err(format!(
            "run {} wrote blocks of {} bytes: use --bs {}",
            r.id, r.bs, r.bs
        ));
    }
    let dev = args.target.open(false, false)?;
    check(&dev, range, &history, args.prefix)
        .map_err(|e| format!("read {}: {e}", args.target.dev.display()))
}

/// What a block holds, judged against the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    /// No stamp, or (`foreign`) a stamp of a run that is not in the logs.
    Blank { foreign: Option<u64> },
    /// A version issued for this block, or one from the lost log tail of an unfinished run.
    Version(Version),
    /// A stamp that cannot be right; the reason.
    Bad(String),
}

/// Judges the content `data` of block `block`.
fn judge(data: &[u8], block: u64, history: &History) -> Held {
    let Some(found) = stamp::read(data) else {
        return Held::Blank { foreign: None };
    };
    let s = found.stamp;
    let Some(run) = history.run_index(s.run) else {
        return Held::Blank {
            foreign: Some(s.run),
        };
    };
    if !found.crc_ok {
        return Held::Bad(format!(
            "bad CRC (header: block {}, seq {})",
            s.block, s.seq
        ));
    }
    let v = Version { run, seq: s.seq };
    if s.block != block {
        return Held::Bad(format!(
            "holds block {}'s {} (misdirected write)",
            s.block,
            history.describe(v)
        ));
    }
    let issued = history.block(block).is_some_and(|h| h.was_issued(v));
    if issued || history.in_lost_tail(v) {
        Held::Version(v)
    } else {
        Held::Bad(format!(
            "disk has {}, never issued for this block",
            history.describe(v)
        ))
    }
}

/// Reads every block of `range` from `dev` and classifies it; with `prefix`, also checks that
/// the disk is a prefix of the issue order.
pub fn check(dev: &File, range: Range, history: &History, prefix: bool) -> io::Result<Report> {
    let bs = range.bs;
    let per_chunk = (CHUNK / bs).max(1);
    let mut buf = AlignedBuf::new(per_chunk * bs)?;
    let mut report = Report {
        blocks: range.count,
        ..Report::default()
    };
    let mut examples = Examples::default();
    // With --prefix: every block that has a history or holds a stamp of a logged run.
    let mut kept = Vec::new();
    let mut block = range.first;
    while block < range.end() {
        let n = (range.end() - block).min(per_chunk as u64) as usize;
        let chunk = &mut buf[..n * bs];
        dev.read_exact_at(chunk, range.pos(block))
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    e.kind(),
                    format!("device ends inside block {block}..{}", block + n as u64),
                ),
                _ => e,
            })?;
        for (b, data) in (block..).zip(chunk.chunks_exact(bs)) {
            let held = judge(data, b, history);
            if let Some(p) = report.classify(b, &held, history) {
                examples.note(format!("block {b}: {p}"));
            }
            if prefix && (history.block(b).is_some() || !matches!(held, Held::Blank { .. })) {
                kept.push((b, held));
            }
        }
        block += n as u64;
    }
    report.examples = examples.finish();
    if prefix {
        let mut examples = Examples::default();
        let mut violations = 0;
        for (b, held) in &kept {
            if let Some(p) = prefix_problem(*b, held, report.newest, history) {
                violations += 1;
                examples.note(format!("block {b}: {p}"));
            }
        }
        report.not_prefix = Some(violations);
        report.examples.extend(examples.finish());
    }
    Ok(report)
}

impl Report {
    /// Counts block `b` holding `held`; returns the problem, if any.
    fn classify(&mut self, b: u64, held: &Held, history: &History) -> Option<String> {
        if let Held::Version(v) = held {
            self.newest = self.newest.max(Some(*v));
        }
        let acked = history.block(b).and_then(|h| h.acked);
        if acked.is_some() {
            self.acknowledged += 1;
        }
        match (held, acked) {
            (Held::Bad(why), _) => {
                self.corrupt += 1;
                Some(why.clone())
            }
            (Held::Version(v), Some(a)) if *v == a => {
                self.present += 1;
                None
            }
            (Held::Version(v), Some(a)) if *v < a => {
                self.missing += 1;
                Some(format!(
                    "acked {}, disk has {}",
                    history.describe(a),
                    history.describe(*v)
                ))
            }
            (Held::Version(_), _) => {
                self.later += 1;
                None
            }
            (Held::Blank { foreign }, Some(a)) => {
                self.missing += 1;
                let has = match foreign {
                    Some(run) => format!("a stamp of run {run}, which is in no log"),
                    None => "no stamp".to_string(),
                };
                Some(format!("acked {}, disk has {has}", history.describe(a)))
            }
            (Held::Blank { .. }, None) => {
                self.untouched += 1;
                None
            }
        }
    }
}

/// Whether block `b` breaks the prefix property: up to the newest version on the disk
/// (`newest`), the block must hold the last version issued for it, or no stamp if none was.
/// A version from the lost log tail of an unfinished run is accepted when it is newer than
/// the logged expectation.
fn prefix_problem(
    b: u64,
    held: &Held,
    newest: Option<Version>,
    history: &History,
) -> Option<String> {
    let expected = newest.and_then(|p| history.block(b).and_then(|h| h.latest_at_most(p)));
    let has = match held {
        Held::Bad(why) => why.clone(),
        Held::Blank { .. } if expected.is_none() => return None,
        Held::Blank { .. } => "no stamp".to_string(),
        Held::Version(v) if Some(*v) == expected => return None,
        Held::Version(v) if history.in_lost_tail(*v) && Some(*v) > expected => return None,
        Held::Version(v) => format!("disk has {}", history.describe(*v)),
    };
    let upto = newest.map_or("nothing".to_string(), |p| history.describe(p));
    let want = expected.map_or("no stamp".to_string(), |e| history.describe(e));
    Some(format!(
        "not a prefix of the writes up to {upto}: expected {want}, {has}"
    ))
}

/// The first [`MAX_EXAMPLES`] problems of one kind, and how many more there were.
#[derive(Default)]
struct Examples {
    shown: Vec<String>,
    more: u64,
}

impl Examples {
    fn note(&mut self, problem: String) {
        if self.shown.len() < MAX_EXAMPLES {
            self.shown.push(problem);
        } else {
            self.more += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.more > 0 {
            self.shown.push(format!("... and {} more", self.more));
        }
        self.shown
    }
}
