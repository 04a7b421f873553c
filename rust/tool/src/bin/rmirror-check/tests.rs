// SPDX-License-Identifier: GPL-2.0
//! End-to-end checks of the writer and the verifier on regular files, with planted faults.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use clap::{CommandFactory, Parser};

use crate::log::{History, Record};
use crate::stamp::{self, Stamp};
use crate::target::Target;
use crate::verify::{self, Report, VerifyArgs};
use crate::write::{self, Summary, WriteArgs};
use crate::{Cli, Command};

const BS: u64 = 4096;

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rmirror-check-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A zero-filled "disk" of `blocks` blocks.
    fn disk(&self, name: &str, blocks: u64) -> PathBuf {
        let p = self.path(name);
        File::create(&p).unwrap().set_len(blocks * BS).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn target(dev: &Path, blocks: u64) -> Target {
    Target {
        dev: dev.to_path_buf(),
        offset: 0,
        size: blocks * BS,
        bs: BS,
        no_direct: true,
    }
}

/// Runs the writer in-process: `count` writes from `jobs` threads.
fn write(dev: &Path, log: &Path, blocks: u64, jobs: u32, count: u64) -> Summary {
    let args = WriteArgs {
        target: target(dev, blocks),
        log: log.to_path_buf(),
        jobs,
        seconds: None,
        count: Some(count),
        seed: Some(0x5eed),
        rate_per_sec: None,
        dsync: false,
        allow_errors: false,
    };
    write::run(&args, &AtomicBool::new(false)).unwrap()
}

fn verify(dev: &Path, logs: &[&Path], blocks: u64, prefix: bool) -> Report {
    let args = VerifyArgs {
        target: target(dev, blocks),
        logs: logs.iter().map(|p| p.to_path_buf()).collect(),
        prefix,
    };
    verify::run(&args).unwrap()
}

/// The `I` records of a log, in order.
fn issued(log: &Path) -> Vec<(u64, u64)> {
    fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| match Record::parse(l).unwrap() {
            Record::Issued { block, seq } => Some((block, seq)),
            _ => None,
        })
        .collect()
}

fn history(log: &Path) -> History {
    let mut h = History::new(None);
    h.read_file(log).unwrap();
    h
}

/// Writes version (`block`, `seq`) of run 0x5eed, as the writer would.
fn plant(dev: &Path, block: u64, seq: u64) {
    let mut buf = vec![0u8; BS as usize];
    stamp::write(
        &mut buf,
        Stamp {
            run: 0x5eed,
            block,
            seq,
        },
    );
    put(dev, block, &buf);
}

fn put(dev: &Path, block: u64, data: &[u8]) {
    let f = OpenOptions::new().write(true).open(dev).unwrap();
    f.write_all_at(data, block * BS).unwrap();
}

fn get(dev: &Path, block: u64) -> Vec<u8> {
    let mut buf = vec![0u8; BS as usize];
    File::open(dev)
        .unwrap()
        .read_exact_at(&mut buf, block * BS)
        .unwrap();
    buf
}

/// A block acknowledged at least twice: (block, previous seq, last seq).
fn rewritten_block(log: &Path) -> (u64, u64, u64) {
    let h = history(log);
    let issues = issued(log);
    issues
        .iter()
        .rev()
        .find_map(|&(b, _)| {
            let bh = h.block(b)?;
            let n = bh.issued.len();
            (n >= 2 && bh.acked == Some(bh.issued[n - 1]))
                .then(|| (b, bh.issued[n - 2].seq, bh.issued[n - 1].seq))
        })
        .unwrap()
}

/// A clean run on a fresh disk: 64 blocks, 4 threads, 400 writes.
fn clean(s: &Scratch) -> (PathBuf, PathBuf) {
    let dev = s.disk("disk", 64);
    let log = s.path("w.log");
    let sum = write(&dev, &log, 64, 4, 400);
    assert_eq!((sum.issued, sum.acked, sum.errors), (400, 400, 0));
    assert_eq!(sum.run, 0x5eed);
    (dev, log)
}

#[test]
fn cli() {
    Cli::command().debug_assert();
    let c = Cli::try_parse_from([
        "rmirror-check",
        "write",
        "/dev/vdb",
        "--log",
        "w",
        "--size",
        "64M",
        "--seconds",
        "2.5",
        "--seed",
        "0x10",
        "--rate-per-sec",
        "20",
        "--no-direct",
    ])
    .unwrap();
    let Command::Write(w) = c.command else {
        panic!("{c:?}")
    };
    assert_eq!(
        (w.target.size, w.target.bs, w.target.offset),
        (64 << 20, 4096, 0)
    );
    assert_eq!((w.jobs, w.seed, w.count), (4, Some(16), None));
    assert!(w.target.no_direct && !w.allow_errors);
    let c = Cli::try_parse_from([
        "rmirror-check",
        "verify",
        "/dev/vdb",
        "--log",
        "a",
        "--log",
        "b",
        "--size",
        "1M",
        "--prefix",
    ])
    .unwrap();
    let Command::Verify(v) = c.command else {
        panic!("{c:?}")
    };
    assert_eq!(v.logs, [PathBuf::from("a"), PathBuf::from("b")]);
    assert!(v.prefix);
    for bad in [
        &[
            "write",
            "/d",
            "--log",
            "w",
            "--size",
            "1M",
            "--seconds",
            "1",
            "--count",
            "5",
        ][..],
        &["write", "/d", "--log", "w"],
        &["write", "/d", "--size", "1M"],
        &["write", "/d", "--log", "w", "--size", "1M", "--jobs", "0"],
        &["verify", "/d", "--size", "1M"],
        &["verify", "/d", "--log", "w", "--size", "1Q"],
    ] {
        let e = Cli::try_parse_from(std::iter::once("rmirror-check").chain(bad.iter().copied()))
            .unwrap_err();
        assert_eq!(e.exit_code(), 2, "{bad:?}");
    }
}

/// (a) After a clean run every acknowledged block holds its last write.
#[test]
fn clean_run_passes() {
    let s = Scratch::new("clean");
    let (dev, log) = clean(&s);
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("R 24301 4096\n"));
    assert!(text.ends_with("X 400 400 0\n"));
    let r = verify(&dev, &[&log], 64, false);
    assert!(r.passed(), "{r:?}");
    assert_eq!((r.blocks, r.missing, r.corrupt, r.later), (64, 0, 0, 0));
    assert_eq!(r.present, r.acknowledged);
    assert_eq!(r.untouched, 64 - r.acknowledged);
    assert_eq!(r.newest.map(|v| v.seq), Some(400));
    assert_eq!(r.not_prefix, None);
    assert!(r.examples.is_empty());
    let json: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "blocks",
            "acknowledged",
            "present",
            "later",
            "missing",
            "corrupt",
            "untouched",
            "max_seq_on_disk"
        ]
    );
    assert_eq!(json["max_seq_on_disk"], 400);
}

/// (b) An older version of an acknowledged block is a lost write.
#[test]
fn older_version_is_missing() {
    let s = Scratch::new("older");
    let (dev, log) = clean(&s);
    let (b, prev, last) = rewritten_block(&log);
    plant(&dev, b, prev);
    let r = verify(&dev, &[&log], 64, false);
    assert!(!r.passed());
    assert_eq!((r.missing, r.corrupt), (1, 0));
    assert_eq!(
        r.examples,
        [format!("block {b}: acked seq {last}, disk has seq {prev}")]
    );
}

/// (c) A zeroed acknowledged block is a lost write.
#[test]
fn zeroed_block_is_missing() {
    let s = Scratch::new("zeroed");
    let (dev, log) = clean(&s);
    let (b, _, last) = rewritten_block(&log);
    put(&dev, b, &[0u8; BS as usize]);
    let r = verify(&dev, &[&log], 64, false);
    assert!(!r.passed());
    assert_eq!((r.missing, r.corrupt), (1, 0));
    assert_eq!(
        r.examples,
        [format!("block {b}: acked seq {last}, disk has no stamp")]
    );
}

/// (d) A flipped byte, a misdirected write and a version never issued are corrupt.
#[test]
fn damaged_blocks_are_corrupt() {
    let s = Scratch::new("corrupt");
    let (dev, log) = clean(&s);
    let (b, _, _) = rewritten_block(&log);
    let mut data = get(&dev, b);
    data[1000] ^= 1;
    put(&dev, b, &data);
    let r = verify(&dev, &[&log], 64, false);
    assert!(!r.passed());
    assert_eq!(
        (r.missing, r.corrupt, r.present),
        (0, 1, r.acknowledged - 1)
    );
    assert!(
        r.examples[0].starts_with(&format!("block {b}: bad CRC")),
        "{r:?}"
    );

    // Block c's content written to block b (a misdirected write).
    let h = history(&log);
    let c = (0..64)
        .find(|&c| c != b && h.block(c).is_some_and(|x| x.acked.is_some()))
        .unwrap();
    put(&dev, b, &get(&dev, c));
    let r = verify(&dev, &[&log], 64, false);
    assert_eq!(r.corrupt, 1);
    assert!(
        r.examples[0].contains(&format!("holds block {c}'s seq")),
        "{r:?}"
    );

    // A well-formed stamp of a seq that was issued for another block.
    let (other_block, other_seq) = *issued(&log).iter().find(|&&(x, _)| x != b).unwrap();
    assert_ne!(other_block, b);
    plant(&dev, b, other_seq);
    let r = verify(&dev, &[&log], 64, false);
    assert_eq!(r.corrupt, 1);
    assert_eq!(
        r.examples,
        [format!(
            "block {b}: disk has seq {other_seq}, never issued for this block"
        )]
    );
}

/// (e) A write issued but not acknowledged may land: "later" is fine.
#[test]
fn later_issued_version_is_allowed() {
    let s = Scratch::new("later");
    let (dev, log) = clean(&s);
    let (b, _, _) = rewritten_block(&log);
    // The run also issued seq 401 for block b, which never returned (no A line).
    let text = fs::read_to_string(&log).unwrap();
    let text = text.replace("X 400 400 0\n", &format!("I {b} 401\nX 401 400 0\n"));
    fs::write(&log, text).unwrap();
    plant(&dev, b, 401);
    let r = verify(&dev, &[&log], 64, false);
    assert!(r.passed(), "{r:?}");
    assert_eq!((r.later, r.missing, r.corrupt), (1, 0, 0));
    assert_eq!(r.present, r.acknowledged - 1);
    assert_eq!(r.newest.map(|v| v.seq), Some(401));

    // A seq the complete log never issued is corrupt ...
    plant(&dev, b, 402);
    let r = verify(&dev, &[&log], 64, false);
    assert_eq!(r.corrupt, 1);
    // ... but may be a lost log tail when the writer died (no X line, torn last line).
    let text = fs::read_to_string(&log).unwrap();
    fs::write(&log, text.replace("X 401 400 0\n", "A 3")).unwrap();
    let r = verify(&dev, &[&log], 64, false);
    assert!(r.passed(), "{r:?}");
    assert_eq!((r.later, r.corrupt), (1, 0));
}

/// Runs are ordered by the order of the logs; a stamp of a run in no log counts as no stamp.
#[test]
fn several_runs() {
    let s = Scratch::new("runs");
    let dev = s.disk("disk", 16);
    let (log1, log2) = (s.path("1.log"), s.path("2.log"));
    let mut args = WriteArgs {
        target: target(&dev, 16),
        log: log1.clone(),
        jobs: 2,
        seconds: None,
        count: Some(50),
        seed: Some(1),
        rate_per_sec: None,
        dsync: false,
        allow_errors: false,
    };
    write::run(&args, &AtomicBool::new(false)).unwrap();
    args.log = log2.clone();
    args.seed = Some(2);
    write::run(&args, &AtomicBool::new(false)).unwrap();
    let r = verify(&dev, &[&log1, &log2], 16, false);
    assert!(r.passed(), "{r:?}");
    assert_eq!(r.newest.map(|v| (v.run, v.seq)), Some((1, 50)));
    // Without the first log, blocks only run 1 wrote hold "foreign" stamps: untouched.
    let r2 = verify(&dev, &[&log2], 16, false);
    assert!(r2.passed(), "{r2:?}");
    assert_eq!(r2.present + r2.untouched, 16);
    // The same run twice is refused.
    let args = VerifyArgs {
        target: target(&dev, 16),
        logs: vec![log1.clone(), log1.clone()],
        prefix: false,
    };
    assert!(verify::run(&args)
        .unwrap_err()
        .contains("run 1 appears twice"));
}

/// Only the range is written; verify may check a part of it.
#[test]
fn offset_ranges() {
    let s = Scratch::new("offset");
    let dev = s.disk("disk", 64);
    let log = s.path("w.log");
    let args = WriteArgs {
        target: Target {
            offset: 16 * BS,
            size: 32 * BS,
            ..target(&dev, 0)
        },
        log: log.clone(),
        jobs: 3,
        seconds: None,
        count: Some(300),
        seed: Some(0x5eed),
        rate_per_sec: None,
        dsync: false,
        allow_errors: false,
    };
    write::run(&args, &AtomicBool::new(false)).unwrap();
    assert!(issued(&log).iter().all(|&(b, _)| (16..48).contains(&b)));
    let whole = verify(&dev, &[&log], 64, false);
    assert!(whole.passed(), "{whole:?}");
    // Threads may start late and write few blocks: count what the log says.
    let h = history(&log);
    let acked = (0..64).filter(|&b| h.block(b).is_some_and(|x| x.acked.is_some()));
    assert!(acked.clone().all(|b| (16..48).contains(&b)));
    assert_eq!(whole.present, acked.count() as u64);
    assert_eq!(whole.untouched, 64 - whole.present);
    let part = verify::run(&VerifyArgs {
        target: Target {
            offset: 40 * BS,
            size: 8 * BS,
            ..target(&dev, 0)
        },
        logs: vec![log.clone()],
        prefix: true,
    })
    .unwrap();
    assert!(part.passed(), "{part:?}");
    assert_eq!((part.blocks, part.not_prefix), (8, Some(0)));
    assert_eq!(part.present + part.untouched, 8);
    // A fault outside the checked part is not seen.
    plant(&dev, 20, 1_000_000);
    let part2 = verify::run(&VerifyArgs {
        target: Target {
            offset: 40 * BS,
            size: 8 * BS,
            ..target(&dev, 0)
        },
        logs: vec![log.clone()],
        prefix: false,
    })
    .unwrap();
    assert!(part2.passed());
    assert_eq!(verify(&dev, &[&log], 64, false).corrupt, 1);
}

/// (f) A disk holding the writes up to some seq is a prefix; a reverted block breaks it.
#[test]
fn prefix_of_history() {
    let s = Scratch::new("prefix");
    let dev = s.disk("disk", 32);
    let log = s.path("w.log");
    write(&dev, &log, 32, 1, 200);
    let full = verify(&dev, &[&log], 32, true);
    assert!(full.passed(), "{full:?}");
    assert_eq!(full.not_prefix, Some(0));

    // A fresh disk with the writes up to seq 120 applied, in order.
    let cut = s.disk("cut", 32);
    let writes = issued(&log);
    for &(b, seq) in writes.iter().filter(|&&(_, seq)| seq <= 120) {
        plant(&cut, b, seq);
    }
    let r = verify(&cut, &[&log], 32, true);
    assert_eq!(r.not_prefix, Some(0), "{r:?}");
    assert_eq!(r.newest.map(|v| v.seq), Some(120));
    assert!(r.missing > 0, "writes after 120 were acknowledged");
    assert!(r.examples[0].contains(": acked seq"), "{r:?}");
    assert!(
        r.examples.iter().all(|e| !e.contains("not a prefix")),
        "{r:?}"
    );

    // Revert one block that was rewritten before seq 120 to its previous version.
    let h = history(&log);
    let (b, prev) = (0..32)
        .find_map(|b| {
            let v: Vec<u64> = h
                .block(b)?
                .issued
                .iter()
                .map(|v| v.seq)
                .filter(|&q| q < 120)
                .collect();
            (v.len() >= 2).then(|| (b, v[v.len() - 2]))
        })
        .unwrap();
    let keep = get(&cut, b);
    plant(&cut, b, prev);
    let r = verify(&cut, &[&log], 32, true);
    assert_eq!(r.not_prefix, Some(1), "{r:?}");
    let ex = r.examples.last().unwrap();
    assert!(
        ex.starts_with(&format!(
            "block {b}: not a prefix of the writes up to seq 120"
        )),
        "{ex}"
    );
    assert!(!r.passed());
    put(&cut, b, &keep);

    // One write from after the cut lands: the writes between are missing from other blocks.
    let &(b2, seq2) = writes
        .iter()
        .find(|&&(x, q)| q > 130 && writes.iter().any(|&(y, p)| y != x && p > 120 && p < q))
        .unwrap();
    plant(&cut, b2, seq2);
    let r = verify(&cut, &[&log], 32, true);
    assert_eq!(r.newest.map(|v| v.seq), Some(seq2));
    assert!(r.not_prefix.unwrap() >= 1, "{r:?}");
    assert_eq!((r.corrupt, r.later), (0, 0));
}

/// A stop request (the signal flag) ends the run cleanly, with a complete log.
#[test]
fn stop_flag_ends_run() {
    let s = Scratch::new("stop");
    let dev = s.disk("disk", 8);
    let log = s.path("w.log");
    let args = WriteArgs {
        target: target(&dev, 8),
        log: log.clone(),
        jobs: 2,
        seconds: None,
        count: None,
        seed: Some(3),
        rate_per_sec: None,
        dsync: false,
        allow_errors: false,
    };
    let sum = write::run(&args, &AtomicBool::new(true)).unwrap();
    assert_eq!((sum.issued, sum.acked), (0, 0));
    assert_eq!(fs::read_to_string(&log).unwrap(), "R 3 4096\nX 0 0 0\n");
}

/// Setup problems are errors, not panics.
#[test]
fn setup_errors() {
    let s = Scratch::new("errors");
    let dev = s.disk("disk", 8);
    let log = s.path("w.log");
    let mut args = WriteArgs {
        target: target(&dev, 8),
        log: log.clone(),
        jobs: 9,
        seconds: None,
        count: Some(1),
        seed: None,
        rate_per_sec: None,
        dsync: false,
        allow_errors: false,
    };
    let stop = AtomicBool::new(false);
    assert!(write::run(&args, &stop)
        .unwrap_err()
        .contains("--jobs 9 exceeds the 8 blocks"));
    args.jobs = 1;
    args.target.size = 16 * BS;
    assert!(write::run(&args, &stop)
        .unwrap_err()
        .contains("ends beyond"));
    args.target.size = 8 * BS;
    args.target.dev = s.path("nope");
    assert!(write::run(&args, &stop).unwrap_err().starts_with("open "));
    args.target.dev = dev.clone();
    args.log = s.path("no/such/dir/w.log");
    assert!(write::run(&args, &stop).unwrap_err().starts_with("log "));

    args.log = log.clone();
    write::run(&args, &stop).unwrap();
    let mut v = VerifyArgs {
        target: target(&dev, 8),
        logs: vec![log.clone()],
        prefix: false,
    };
    v.target.bs = 512;
    v.target.size = 8 * BS;
    assert!(verify::run(&v).unwrap_err().contains("use --bs 4096"));
    v.target.bs = BS;
    v.logs = vec![s.path("missing.log")];
    assert!(verify::run(&v).unwrap_err().starts_with("log "));
}
