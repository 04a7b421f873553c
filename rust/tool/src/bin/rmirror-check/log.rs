// SPDX-License-Identifier: GPL-2.0
//! The write log: one record per text line, and the per-block history read back from logs.
//!
//! ```text
//!   R <run> <bs>                    a writer run starts (run id, block size)
//!   I <block> <seq>                 write seq of block is issued (logged before pwrite)
//!   A <block> <seq>                 write seq of block is acknowledged (pwrite succeeded)
//!   E <block> <seq> <errno>         write seq of block failed
//!   X <issued> <acked> <errors>     the run ended cleanly, with these totals
//! ```
//!
//! All numbers are decimal. A writer takes seq and logs `I` under one lock, so a run's `I`
//! lines are in seq order and a log cut short is a prefix of the issue order. A last line
//! without its newline is ignored (the writer died while writing it).

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::Path;

/// One line of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `R`: a run starts; the records up to the next `R` belong to it.
    Run { run: u64, bs: u64 },
    /// `I`: a write was issued.
    Issued { block: u64, seq: u64 },
    /// `A`: a write was acknowledged.
    Acked { block: u64, seq: u64 },
    /// `E`: a write failed with `errno`.
    Failed { block: u64, seq: u64, errno: i32 },
    /// `X`: the run ended cleanly.
    End {
        issued: u64,
        acked: u64,
        errors: u64,
    },
}

impl fmt::Display for Record {
    /// The line without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Record::Run { run, bs } => write!(f, "R {run} {bs}"),
            Record::Issued { block, seq } => write!(f, "I {block} {seq}"),
            Record::Acked { block, seq } => write!(f, "A {block} {seq}"),
            Record::Failed { block, seq, errno } => write!(f, "E {block} {seq} {errno}"),
            Record::End {
                issued,
                acked,
                errors,
            } => write!(f, "X {issued} {acked} {errors}"),
        }
    }
}

impl Record {
    /// Parses one line (without its newline).
    pub fn parse(line: &str) -> Result<Record, String> {
        let mut words = line.split_ascii_whitespace();
        let kind = words.next().ok_or("empty line")?;
        let nums = words
            .map(|w| w.parse::<u64>().map_err(|e| format!("{w:?}: {e}")))
            .collect::<Result<Vec<u64>, String>>()?;
        let record = match (kind, nums.as_slice()) {
            ("R", &[run, bs]) => Record::Run { run, bs },
            ("I", &[block, seq]) => Record::Issued { block, seq },
            ("A", &[block, seq]) => Record::Acked { block, seq },
            ("E", &[block, seq, errno]) => Record::Failed {
                block,
                seq,
                errno: i32::try_from(errno).map_err(|_| format!("errno {errno} out of range"))?,
            },
            ("X", &[issued, acked, errors]) => Record::End {
                issued,
                acked,
                errors,
            },
            ("R" | "I" | "A" | "E" | "X", _) => {
                return Err(format!("wrong number of fields for {kind:?}"))
            }
            _ => return Err(format!("unknown record {kind:?}")),
        };
        Ok(record)
    }
}

/// A version of a block: the run (its index in the order the logs were read) and its seq.
/// Later runs are newer, so versions order first by run, then by seq.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Index into [`History::runs`].
    pub run: usize,
    /// The run's write counter.
    pub seq: u64,
}

/// One writer run found in the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    /// The run id (stamped into every block).
    pub id: u64,
    /// The block size the run wrote.
    pub bs: u64,
    /// The highest seq logged as issued.
    pub last_seq: u64,
    /// Whether the run's `X` line was read (its log is complete).
    pub complete: bool,
}

/// What the logs say about one block.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockHistory {
    /// Every version issued for the block, ascending.
    pub issued: Vec<Version>,
    /// The newest acknowledged version.
    pub acked: Option<Version>,
}

impl BlockHistory {
    /// Whether `v` was issued for this block.
    pub fn was_issued(&self, v: Version) -> bool {
        self.issued.binary_search(&v).is_ok()
    }

    /// The newest version issued at or before `limit`.
    pub fn latest_at_most(&self, limit: Version) -> Option<Version> {
        let n = self.issued.partition_point(|&v| v <= limit);
        n.checked_sub(1).map(|i| self.issued[i])
    }
}

/// Every run and block history of a set of logs, read in the order the runs happened.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The runs, oldest first.
    pub runs: Vec<Run>,
    /// Per block index.
    blocks: HashMap<u64, BlockHistory>,
    /// Records outside `keep` are skipped (their blocks are not checked).
    keep: Option<std::ops::Range<u64>>,
    /// Last lines ignored because they had no newline.
    pub truncated_lines: usize,
}

impl History {
    /// An empty history that keeps only blocks in `keep` (all blocks with `None`).
    pub fn new(keep: Option<std::ops::Range<u64>>) -> History {
        History {
            keep,
            ..History::default()
        }
    }

    /// Reads one log file (runs in it are newer than those read before).
    pub fn read_file(&mut self, path: &Path) -> Result<(), String> {
        let name = path.display();
        let file = File::open(path).map_err(|e| format!("log {name}: {e}"))?;
        self.read(BufReader::new(file), &name.to_string())
    }

    /// Reads a log from `input`; `name` is used in error messages.
    pub fn read(&mut self, mut input: impl BufRead, name: &str) -> Result<(), String> {
        let mut current = None;
        let mut line = Vec::new();
        for lineno in 1.. {
            line.clear();
            let n = input
                .read_until(b'\n', &mut line)
                .map_err(|e| format!("log {name}: {e}"))?;
            if n == 0 {
                break;
            }
            if line.pop() != Some(b'\n') {
                self.truncated_lines += 1;
                break;
            }
            let at = |msg: String| format!("log {name} line {lineno}: {msg}");
            let text = std::str::from_utf8(&line).map_err(|_| at("not text".to_string()))?;
            let record = Record::parse(text).map_err(at)?;
            self.add(&mut current, record).map_err(at)?;
        }
        Ok(())
    }

    /// Applies one record; `current` is the index of the run the records belong to.
    fn add(&mut self, current: &mut Option<usize>, record: Record) -> Result<(), String> {
        if let Record::Run { run, bs } = record {
            if self.run_index(run).is_some() {
                return Err(format!(
                    "run {run} appears twice (give each writer run its own --seed)"
                ));
            }
            self.runs.push(Run {
                id: run,
                bs,
                last_seq: 0,
                complete: false,
            });
            *current = Some(self.runs.len() - 1);
            return Ok(());
        }
        let r = current.ok_or("record before the first R line")?;
        let (block, seq) = match record {
            Record::Issued { block, seq }
            | Record::Acked { block, seq }
            | Record::Failed { block, seq, .. } => (block, seq),
            Record::End { .. } => {
                self.runs[r].complete = true;
                return Ok(());
            }
            Record::Run { .. } => return Ok(()),
        };
        let run = &mut self.runs[r];
        if run.complete {
            return Err("record after the X line of its run".to_string());
        }
        if let Record::Issued { .. } = record {
            if seq <= run.last_seq {
                return Err(format!("seq {seq} issued after seq {}", run.last_seq));
            }
            run.last_seq = seq;
        }
        if self.keep.as_ref().is_some_and(|k| !k.contains(&block)) {
            return Ok(());
        }
        let v = Version { run: r, seq };
        let h = self.blocks.entry(block).or_default();
        match record {
            Record::Issued { .. } => h.issued.push(v),
            _ if !h.was_issued(v) => {
                return Err(format!(
                    "block {block} seq {seq} completed but never issued"
                ))
            }
            Record::Acked { .. } => h.acked = h.acked.max(Some(v)),
            _ => {}
        }
        Ok(())
    }

    /// The index of run `id`.
    pub fn run_index(&self, id: u64) -> Option<usize> {
        self.runs.iter().position(|r| r.id == id)
    }

    /// The history of `block` (`None` when no record names it).
    pub fn block(&self, block: u64) -> Option<&BlockHistory> {
        self.blocks.get(&block)
    }

    /// Whether `v` may be a write whose `I` line was lost: its run has no `X` line and `v` is
    /// newer than every seq the run logged.
    pub fn in_lost_tail(&self, v: Version) -> bool {
        self.runs
            .get(v.run)
            .is_some_and(|r| !r.complete && v.seq > r.last_seq)
    }

    /// `seq S`, or `seq S of run ID` when the logs hold several runs.
    pub fn describe(&self, v: Version) -> String {
        match self.runs.get(v.run) {
            Some(r) if self.runs.len() > 1 => format!("seq {} of run {}", v.seq, r.id),
            _ => format!("seq {}", v.seq),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(logs: &[&str]) -> Result<History, String> {
        let mut h = History::new(None);
        for (i, text) in logs.iter().enumerate() {
            h.read(text.as_bytes(), &format!("log{i}"))?;
        }
        Ok(h)
    }

    fn v(run: usize, seq: u64) -> Version {
        Version { run, seq }
    }

    #[test]
    fn records_round_trip() {
        for r in [
            Record::Run { run: 99, bs: 4096 },
            Record::Issued { block: 1, seq: 2 },
            Record::Acked { block: 3, seq: 4 },
            Record::Failed {
                block: 5,
                seq: 6,
                errno: libc::EIO,
            },
            Record::End {
                issued: 7,
                acked: 8,
                errors: 9,
            },
        ] {
            assert_eq!(Record::parse(&r.to_string()), Ok(r));
        }
        assert_eq!(Record::parse("E 1 2 5").unwrap().to_string(), "E 1 2 5");
        for bad in [
            "",
            "I",
            "I 1",
            "I 1 2 3",
            "Q 1 2",
            "I 1 -2",
            "I x 2",
            "E 1 2 4294967296",
        ] {
            assert!(Record::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn block_histories() {
        let h = history(&["R 7 4096\nI 10 1\nI 11 2\nA 11 2\nA 10 1\nI 10 3\nE 10 3 5\nI 10 4\n"])
            .unwrap();
        assert_eq!(
            h.runs,
            [Run {
                id: 7,
                bs: 4096,
                last_seq: 4,
                complete: false
            }]
        );
        let b = h.block(10).unwrap();
        assert_eq!(b.issued, [v(0, 1), v(0, 3), v(0, 4)]);
        assert_eq!(b.acked, Some(v(0, 1)));
        assert!(b.was_issued(v(0, 3)) && !b.was_issued(v(0, 2)));
        assert_eq!(b.latest_at_most(v(0, 0)), None);
        assert_eq!(b.latest_at_most(v(0, 2)), Some(v(0, 1)));
        assert_eq!(b.latest_at_most(v(0, 9)), Some(v(0, 4)));
        assert_eq!(h.block(11).unwrap().acked, Some(v(0, 2)));
        assert_eq!(h.block(12), None);
        assert!(h.in_lost_tail(v(0, 5)) && !h.in_lost_tail(v(0, 4)));
        assert_eq!(h.describe(v(0, 4)), "seq 4");
    }

    #[test]
    fn runs_in_log_order() {
        let h = history(&[
            "R 5 4096\nI 1 1\nA 1 1\nI 1 2\nA 1 2\nX 2 2 0\n",
            "R 6 4096\nI 1 1\nA 1 1\nX 1 1 0\n",
        ])
        .unwrap();
        let b = h.block(1).unwrap();
        assert_eq!(b.issued, [v(0, 1), v(0, 2), v(1, 1)]);
        assert_eq!(b.acked, Some(v(1, 1)));
        assert!(h.runs.iter().all(|r| r.complete));
        assert!(!h.in_lost_tail(v(1, 7)));
        assert_eq!(h.describe(v(1, 1)), "seq 1 of run 6");
    }

    #[test]
    fn truncated_last_line_is_ignored() {
        let h = history(&["R 5 4096\nI 1 1\nA 1 1\nI 2 2\nA 2 2"]).unwrap();
        assert_eq!(h.truncated_lines, 1);
        assert_eq!(h.block(2).unwrap().acked, None);
        assert_eq!(h.block(1).unwrap().acked, Some(v(0, 1)));
    }

    #[test]
    fn kept_range() {
        let mut h = History::new(Some(10..20));
        h.read(&b"R 1 512\nI 9 1\nI 10 2\nA 10 2\nI 25 3\n"[..], "log")
            .unwrap();
        assert!(h.block(9).is_none() && h.block(25).is_none());
        assert_eq!(h.block(10).unwrap().acked, Some(v(0, 2)));
        assert_eq!(h.runs[0].last_seq, 3);
    }

    #[test]
    fn bad_logs() {
        for (logs, msg) in [
            (
                &["I 1 1\n"][..],
                "log log0 line 1: record before the first R line",
            ),
            (
                &["R 1 4096\nI 1 1\nbogus\n"],
                "log log0 line 3: unknown record \"bogus\"",
            ),
            (
                &["R 1 4096\nA 1 1\n"],
                "log log0 line 2: block 1 seq 1 completed but never issued",
            ),
            (
                &["R 1 4096\nI 1 2\nI 2 2\n"],
                "log log0 line 3: seq 2 issued after seq 2",
            ),
            (
                &["R 1 4096\nX 0 0 0\nI 1 1\n"],
                "log log0 line 3: record after the X line",
            ),
            (
                &["R 1 4096\n", "R 1 4096\n"],
                "log log1 line 1: run 1 appears twice",
            ),
        ] {
            let e = history(logs).unwrap_err();
            assert!(e.starts_with(msg), "{e}");
        }
        let e = History::new(None)
            .read(&b"R 1 4096\n\xff\n"[..], "log")
            .unwrap_err();
        assert_eq!(e, "log log line 2: not text");
    }
}
