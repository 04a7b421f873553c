// SPDX-License-Identifier: GPL-2.0
//! The rmirror-check binary on regular files: exit codes, JSON lines, messages and signals.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_rmirror-check");

/// A scratch directory with a 1 MiB zero-filled disk file, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rmirror-check-it-{}-{name}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        fs::create_dir_all(&dir).unwrap();
        File::create(dir.join("disk"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        Scratch(dir)
    }

    fn disk(&self) -> PathBuf {
        self.0.join("disk")
    }

    fn log(&self) -> PathBuf {
        self.0.join("w.log")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The one JSON line on stdout.
fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 1, "{text}");
    serde_json::from_str(&text).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `cmd` (write or verify) on the scratch disk and log, 1 MiB, buffered I/O.
fn sub(cmd: &str, s: &Scratch, extra: &[&str]) -> Output {
    let (disk, log) = (s.disk(), s.log());
    let mut args = vec![
        cmd,
        path(&disk),
        "--log",
        path(&log),
        "--size",
        "1M",
        "--no-direct",
    ];
    args.extend_from_slice(extra);
    run(&args)
}

fn write(s: &Scratch, extra: &[&str]) -> Output {
    sub("write", s, extra)
}

fn verify(s: &Scratch, extra: &[&str]) -> Output {
    sub("verify", s, extra)
}

/// A block whose last write was acknowledged, from the log.
fn acked_block(s: &Scratch) -> u64 {
    let log = fs::read_to_string(s.log()).unwrap();
    let line = log.lines().rev().find(|l| l.starts_with("A ")).unwrap();
    line.split(' ').nth(1).unwrap().parse().unwrap()
}

fn modify(s: &Scratch, block: u64, f: impl FnOnce(&mut [u8])) {
    let disk = OpenOptions::new()
        .read(true)
        .write(true)
        .open(s.disk())
        .unwrap();
    let mut buf = vec![0u8; 4096];
    disk.read_exact_at(&mut buf, block * 4096).unwrap();
    f(&mut buf);
    disk.write_all_at(&buf, block * 4096).unwrap();
}

#[test]
fn write_then_verify() {
    let s = Scratch::new("clean");
    let w = write(&s, &["--count", "500", "--jobs", "3", "--seed", "7"]);
    assert!(w.status.success(), "{}", stderr(&w));
    let j = json(&w);
    assert_eq!(
        (&j["issued"], &j["acked"], &j["errors"]),
        (&500.into(), &500.into(), &0.into())
    );
    assert!(j["seconds"].as_f64().unwrap() >= 0.0);

    let v = verify(&s, &["--prefix"]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    let j = json(&v);
    assert_eq!(j["blocks"], 256);
    assert_eq!(
        (&j["missing"], &j["corrupt"], &j["later"]),
        (&0.into(), &0.into(), &0.into())
    );
    assert_eq!(j["present"], j["acknowledged"]);
    assert_eq!(j["max_seq_on_disk"], 500);
    assert!(j["not_prefix"].is_u64());
    assert!(stderr(&v).is_empty(), "{}", stderr(&v));
}

#[test]
fn lost_and_corrupt_blocks_fail() {
    let s = Scratch::new("faults");
    assert!(write(&s, &["--count", "300"]).status.success());
    let b = acked_block(&s);

    modify(&s, b, |d| d.fill(0));
    let v = verify(&s, &[]);
    assert_eq!(v.status.code(), Some(1));
    assert_eq!(
        (&json(&v)["missing"], &json(&v)["corrupt"]),
        (&1.into(), &0.into())
    );
    assert!(
        stderr(&v).starts_with(&format!("rmirror-check: block {b}: acked seq ")),
        "{}",
        stderr(&v)
    );
    assert!(stderr(&v).trim_end().ends_with(", disk has no stamp"));

    assert!(write(&s, &["--count", "300"]).status.success());
    let b = acked_block(&s);
    modify(&s, b, |d| d[2000] ^= 0x40);
    let v = verify(&s, &[]);
    assert_eq!(v.status.code(), Some(1));
    assert_eq!(
        (&json(&v)["missing"], &json(&v)["corrupt"]),
        (&0.into(), &1.into())
    );
    assert!(
        stderr(&v).contains(&format!("block {b}: bad CRC")),
        "{}",
        stderr(&v)
    );
}

#[test]
fn sigterm_stops_cleanly() {
    let s = Scratch::new("sigterm");
    let (disk, log) = (s.disk(), s.log());
    let child = Command::new(BIN)
        .args([
            "write",
            path(&disk),
            "--log",
            path(&log),
            "--size",
            "1M",
            "--no-direct",
        ])
        .args(["--jobs", "2", "--rate-per-sec", "500"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The R line is written after the handlers are installed.
    for _ in 0..1000 {
        if fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
            break;
        }
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(200));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let w = child.wait_with_output().unwrap();
    assert_eq!(w.status.code(), Some(0), "{}", stderr(&w));
    let j = json(&w);
    let issued = j["issued"].as_u64().unwrap();
    assert!(issued > 0 && issued < 2000, "{j}");
    assert_eq!(j["acked"], j["issued"]);
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.ends_with(&format!("X {issued} {issued} 0\n")),
        "{text}"
    );
    assert_eq!(verify(&s, &[]).status.code(), Some(0));
}

#[test]
fn seconds_and_rate_limit() {
    let s = Scratch::new("seconds");
    let w = write(&s, &["--seconds", "0.5", "--rate-per-sec", "40"]);
    assert!(w.status.success(), "{}", stderr(&w));
    let j = json(&w);
    let issued = j["issued"].as_u64().unwrap();
    // At most one write per 25 ms slot, the slot at 0 included.
    assert!((1..=21).contains(&issued), "{j}");
    assert!(j["seconds"].as_f64().unwrap() >= 0.5, "{j}");
}

/// Writes beyond RLIMIT_FSIZE fail with EFBIG: logged as E lines, exit 1 unless --allow-errors.
#[test]
fn failed_writes() {
    let s = Scratch::new("efbig");
    let (disk, log) = (s.disk(), s.log());
    let script = format!(
        "trap '' XFSZ; ulimit -f 8; exec {BIN} write {} --log {} --size 64K --no-direct \
         --jobs 1 --count 20 --seed 1 \"$@\"",
        path(&disk),
        path(&log)
    );
    let sh = |extra: &[&str]| {
        Command::new("sh")
            .args(["-c", &script, "sh"])
            .args(extra)
            .output()
            .unwrap()
    };
    let w = sh(&[]);
    assert_eq!(w.status.code(), Some(1), "{}", stderr(&w));
    let j = json(&w);
    let errors = j["errors"].as_u64().unwrap();
    assert!(
        errors > 0 && j["acked"].as_u64().unwrap() + errors == 20,
        "{j}"
    );
    assert!(stderr(&w).contains(&format!("{errors} writes failed")));
    let text = fs::read_to_string(&log).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("E ") && l.ends_with(" 27")),
        "{text}"
    );
    assert_eq!(sh(&["--allow-errors"]).status.code(), Some(0));
    // Failed writes are not acknowledged: their blocks need not hold anything.
    let v = run(&[
        "verify",
        path(&disk),
        "--log",
        path(&log),
        "--size",
        "64K",
        "--no-direct",
    ]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
}

#[test]
fn usage_and_io_errors_exit_2() {
    let s = Scratch::new("usage");
    assert_eq!(run(&[]).status.code(), Some(2));
    assert_eq!(
        write(&s, &["--count", "1", "--seconds", "1"]).status.code(),
        Some(2)
    );
    let w = write(&s, &["--bs", "1000"]);
    assert_eq!(w.status.code(), Some(2));
    assert!(
        stderr(&w).contains("--bs 1000: must be a multiple of 512"),
        "{}",
        stderr(&w)
    );
    if Path::new("/dev/full").exists() {
        let w = run(&[
            "write",
            path(&s.disk()),
            "--log",
            "/dev/full",
            "--size",
            "1M",
            "--no-direct",
        ]);
        assert_eq!(w.status.code(), Some(2));
        assert!(
            stderr(&w).contains("log /dev/full: No space left"),
            "{}",
            stderr(&w)
        );
    }
    let v = verify(&s, &[]);
    assert_eq!(v.status.code(), Some(2));
    assert!(
        stderr(&v).starts_with("rmirror-check: verify "),
        "{}",
        stderr(&v)
    );
    assert!(stderr(&v).contains("w.log"), "{}", stderr(&v));
    let v = run(&[
        "verify",
        "/nonexistent/disk",
        "--log",
        "/dev/null",
        "--size",
        "1M",
    ]);
    assert_eq!(v.status.code(), Some(2));
    assert!(
        stderr(&v).contains("open /nonexistent/disk"),
        "{}",
        stderr(&v)
    );
}
