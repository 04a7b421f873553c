// SPDX-License-Identifier: GPL-2.0
//! `rmirror-check write`: stamped whole-block writes from several threads, each one logged as
//! issued before it starts and as acknowledged (or failed) after it returns.

use std::collections::hash_map::RandomState;
use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, BufWriter, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::json;

use crate::log::Record;
use crate::stamp::{self, Stamp};
use crate::sys::{self, AlignedBuf};
use crate::target::{Range, Target};

/// The log is flushed at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// A thread whose write failed waits this long before its next one (a dead device would
/// otherwise fill the log with errors).
const ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Sleeps are cut into pieces this long to notice signals and the deadline.
const POLL: Duration = Duration::from_millis(50);

/// Arguments of `write`.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    #[command(flatten)]
    pub target: Target,

    /// Log file to create (an existing one is truncated)
    #[arg(long, value_name = "FILE")]
    pub log: PathBuf,

    /// Writer threads; thread T writes the blocks whose index % JOBS == T
    #[arg(long, value_name = "N", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub jobs: u32,

    /// Stop after S seconds (fractions allowed) [default: run until SIGINT or SIGTERM]
    #[arg(long, value_name = "S", value_parser = parse_seconds, conflicts_with = "count")]
    pub seconds: Option<Duration>,

    /// Stop after N writes [default: run until SIGINT or SIGTERM]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Run id stamped into every block; also seeds the choice of blocks (decimal or 0x hex)
    /// [default: random]
    #[arg(long, value_name = "X", value_parser = parse_u64)]
    pub seed: Option<u64>,

    /// Limit all threads together to R writes per second (fractions allowed)
    #[arg(long, value_name = "R", value_parser = parse_rate)]
    pub rate_per_sec: Option<f64>,

    /// Open with O_DSYNC: a write is acknowledged only once it is on stable storage
    #[arg(long)]
    pub dsync: bool,

    /// Exit 0 even when writes failed
    #[arg(long)]
    pub allow_errors: bool,
}

/// What a finished run did; printed as one JSON line.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The run id (also in the log's `R` line).
    pub run: u64,
    /// Writes issued (the last seq).
    pub issued: u64,
    /// Writes acknowledged.
    pub acked: u64,
    /// Writes that failed.
    pub errors: u64,
    /// Duration of the run.
    pub seconds: f64,
}

impl Summary {
    /// `{"issued":..,"acked":..,"errors":..,"seconds":..}`
    pub fn json(&self) -> String {
        json!({
            "issued": self.issued,
            "acked": self.acked,
            "errors": self.errors,
            "seconds": (self.seconds * 1000.0).round() / 1000.0,
        })
        .to_string()
    }
}

/// Runs the writer until the deadline, the count, `stop` (set by the signal handler) or a
/// failure of the log. Setup and log errors are returned as messages.
pub fn run(args: &WriteArgs, stop: &AtomicBool) -> Result<Summary, String> {
    let range = args.target.range()?;
    if u64::from(args.jobs) > range.count {
        return Err(format!(
            "--jobs {} exceeds the {} blocks of the range",
            args.jobs, range.count
        ));
    }
    let dev = args.target.open(true, args.dsync)?;
    let log_name = args.log.display().to_string();
    let log_file = File::create(&args.log).map_err(|e| format!("log {log_name}: {e}"))?;
    let run = args.seed.unwrap_or_else(random_u64);
    let log = Log::new(log_file, args.count);
    log.put(Record::Run {
        run,
        bs: range.bs as u64,
    });
    log.flush();
    if let Some(e) = log.failure() {
        return Err(format!("log {log_name}: {e}"));
    }
    let bufs = (0..args.jobs)
        .map(|_| AlignedBuf::new(range.bs))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| format!("buffers: {e}"))?;

    let start = Instant::now();
    let shared = Shared {
        dev,
        range,
        run,
        jobs: u64::from(args.jobs),
        log,
        stop,
        quit: AtomicBool::new(false),
        deadline: args.seconds.and_then(|d| start.checked_add(d)),
        pacer: args.rate_per_sec.map(|rate| Pacer::new(start, rate)),
    };
    let trouble = run_threads(&shared, bufs);
    let seconds = start.elapsed().as_secs_f64();

    let (issued, acked, errors) = shared.log.totals();
    shared.log.put(Record::End {
        issued,
        acked,
        errors,
    });
    shared.log.finish();
    if let Some(e) = trouble {
        return Err(e);
    }
    if let Some(e) = shared.log.failure() {
        return Err(format!("log {log_name}: {e}"));
    }
    Ok(Summary {
        run,
        issued,
        acked,
        errors,
        seconds,
    })
}

/// What the threads share.
struct Shared<'a> {
    dev: File,
    range: Range,
    run: u64,
    jobs: u64,
    log: Log,
    /// Set by SIGINT/SIGTERM.
    stop: &'a AtomicBool,
    /// Set when the run must end for another reason: `--count` writes were issued, the log
    /// failed or a thread failed to start.
    quit: AtomicBool,
    deadline: Option<Instant>,
    pacer: Option<Pacer>,
}

impl Shared<'_> {
    /// Whether new writes may be issued.
    fn keep_going(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
            && !self.quit.load(Ordering::SeqCst)
            && self.deadline.is_none_or(|d| Instant::now() < d)
    }
}

/// Starts the writer threads and the log flusher and waits for the writers to finish their
/// last write. Returns a message if a thread could not start or panicked.
fn run_threads(shared: &Shared<'_>, bufs: Vec<AlignedBuf>) -> Option<String> {
    let done = AtomicBool::new(false);
    thread::scope(|s| {
        let mut trouble = None;
        let flusher = thread::Builder::new()
            .name("flush".to_string())
            .spawn_scoped(s, || {
                while !done.load(Ordering::SeqCst) {
                    thread::park_timeout(FLUSH_EVERY);
                    shared.log.flush();
                }
            });
        let mut writers = Vec::new();
        if let Err(e) = &flusher {
            trouble = Some(format!("start flusher: {e}"));
        } else {
            for (t, buf) in (0u64..).zip(bufs) {
                match thread::Builder::new()
                    .name(format!("write{t}"))
                    .spawn_scoped(s, move || writer(shared, t, buf))
                {
                    Ok(h) => writers.push(h),
                    Err(e) => {
                        shared.quit.store(true, Ordering::SeqCst);
                        trouble = Some(format!("start writer {t}: {e}"));
                        break;
                    }
                }
            }
        }
        for w in writers {
            if w.join().is_err() {
                trouble.get_or_insert_with(|| "a writer thread panicked".to_string());
            }
        }
        done.store(true, Ordering::SeqCst);
        if let Ok(f) = flusher {
            f.thread().unpark();
            let _ = f.join();
        }
        trouble
    })
}

/// One writer thread: picks a random block of its own, logs it as issued, writes it and logs
/// the outcome, until told to stop. Thread `t` owns the blocks with index % jobs == t, so no
/// block is ever written by two writes at once.
fn writer(shared: &Shared<'_>, t: u64, mut buf: AlignedBuf) {
    let owned = Owned::new(shared.range, shared.jobs, t);
    let mut rng = Rng(stamp::mix(shared.run ^ stamp::mix(t + 1)));
    while shared.keep_going() {
        if let Some(p) = &shared.pacer {
            if !p.wait(|| shared.keep_going()) {
                break;
            }
        }
        let block = owned.pick(&mut rng);
        let Some(seq) = shared.log.issue(block) else {
            // Also ends the other threads' waits for a --rate-per-sec slot.
            shared.quit.store(true, Ordering::SeqCst);
            break;
        };
        stamp::write(
            &mut buf,
            Stamp {
                run: shared.run,
                block,
                seq,
            },
        );
        let result = sys::write_all_at(&shared.dev, &buf, shared.range.pos(block));
        let failed = result.is_err();
        shared.log.complete(block, seq, result);
        if failed {
            thread::sleep(ERROR_PAUSE);
        }
    }
}

/// The blocks of one thread: `start + i * step` for `i < count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Owned {
    start: u64,
    step: u64,
    count: u64,
}

impl Owned {
    /// The blocks of `range` whose index % `jobs` == `t`.
    fn new(range: Range, jobs: u64, t: u64) -> Owned {
        let start = range.first + (t + jobs - range.first % jobs) % jobs;
        let count = range.end().saturating_sub(start).div_ceil(jobs);
        Owned {
            start,
            step: jobs,
            count,
        }
    }

    /// A uniformly chosen block (`count` > 0: `--jobs` is at most the number of blocks).
    fn pick(&self, rng: &mut Rng) -> u64 {
        self.start + rng.below(self.count) * self.step
    }
}

/// splitmix64: small, fast, deterministic for a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(stamp::GOLDEN);
        stamp::mix(self.0)
    }

    /// A number below `n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

/// Spreads writes evenly: the k-th write of all threads starts no earlier than `start + k / rate`.
struct Pacer {
    start: Instant,
    rate: f64,
    next: AtomicU64,
}

impl Pacer {
    fn new(start: Instant, rate: f64) -> Pacer {
        Pacer {
            start,
            rate,
            next: AtomicU64::new(0),
        }
    }

    /// Waits for the next slot; false if `keep_going` turned false meanwhile.
    fn wait(&self, keep_going: impl Fn() -> bool) -> bool {
        let k = self.next.fetch_add(1, Ordering::SeqCst);
        let Some(due) = Duration::try_from_secs_f64(k as f64 / self.rate)
            .ok()
            .and_then(|d| self.start.checked_add(d))
        else {
            return false;
        };
        loop {
            if !keep_going() {
                return false;
            }
            let now = Instant::now();
            if now >= due {
                return true;
            }
            thread::sleep((due - now).min(POLL));
        }
    }
}

/// The log: one buffered writer under a mutex; the seq counter lives under the same mutex so
/// that `I` lines are written in seq order.
struct Log {
    inner: Mutex<LogInner>,
}

struct LogInner {
    out: BufWriter<File>,
    /// The next seq to issue (seqs start at 1).
    next_seq: u64,
    /// The last seq that may be issued (`--count`).
    limit: u64,
    acked: u64,
    errors: u64,
    /// The first error writing the log; no write is issued after it.
    failure: Option<String>,
}

impl LogInner {
    fn put(&mut self, record: Record) {
        if self.failure.is_none() {
            if let Err(e) = writeln!(self.out, "{record}") {
                self.failure = Some(e.to_string());
            }
        }
    }
}

impl Log {
    fn new(file: File, count: Option<u64>) -> Log {
        Log {
            inner: Mutex::new(LogInner {
                out: BufWriter::with_capacity(64 << 10, file),
                next_seq: 1,
                limit: count.unwrap_or(u64::MAX),
                acked: 0,
                errors: 0,
                failure: None,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, LogInner> {
        // The data stays consistent even if a holder panicked: every update is a single step.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, record: Record) {
        self.lock().put(record);
    }

    /// Takes the next seq for a write of `block` and logs it as issued. `None` when `--count`
    /// writes were issued or the log failed (no write may start without its `I` line).
    fn issue(&self, block: u64) -> Option<u64> {
        let mut l = self.lock();
        let seq = l.next_seq;
        if l.failure.is_some() || seq > l.limit {
            return None;
        }
        l.put(Record::Issued { block, seq });
        if l.failure.is_some() {
            return None;
        }
        l.next_seq += 1;
        Some(seq)
    }

    /// Logs the outcome of write `seq` of `block`.
    fn complete(&self, block: u64, seq: u64, result: io::Result<()>) {
        let mut l = self.lock();
        match result {
            Ok(()) => {
                l.acked += 1;
                l.put(Record::Acked { block, seq });
            }
            Err(e) => {
                l.errors += 1;
                let errno = e.raw_os_error().unwrap_or(libc::EIO);
                l.put(Record::Failed { block, seq, errno });
            }
        }
    }

    /// Issued, acknowledged and failed writes so far.
    fn totals(&self) -> (u64, u64, u64) {
        let l = self.lock();
        (l.next_seq - 1, l.acked, l.errors)
    }

    fn flush(&self) {
        let mut l = self.lock();
        if l.failure.is_none() {
            if let Err(e) = l.out.flush() {
                l.failure = Some(e.to_string());
            }
        }
    }

    /// Flushes and syncs the log to stable storage.
    fn finish(&self) {
        self.flush();
        let mut l = self.lock();
        if l.failure.is_none() {
            if let Err(e) = l.out.get_ref().sync_data() {
                l.failure = Some(e.to_string());
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.lock().failure.clone()
    }
}

/// A random u64 (std's per-process random hash keys, the time and the pid).
fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    let now = SystemTime::now().duration_since(UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

/// Parses `--seconds`: a positive number of seconds.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if secs <= 0.0 {
        return Err(format!("{s:?}: must be positive"));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

/// Parses `--rate-per-sec`: a positive, finite number.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err(format!("{s:?}: must be a positive number")),
        Err(e) => Err(format!("{s:?}: {e}")),
    }
}

/// Parses a u64 given in decimal or `0x` hex.
fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_block_has_one_owner() {
        for (first, count, jobs) in [(0, 10, 1), (0, 10, 4), (3, 10, 4), (7, 5, 5), (1, 64, 3)] {
            let range = Range {
                first,
                count,
                bs: 512,
            };
            let mut owner = vec![None; count as usize];
            for t in 0..jobs {
                let o = Owned::new(range, jobs, t);
                assert!(o.count > 0);
                for i in 0..o.count {
                    let b = o.start + i * o.step;
                    assert!(range.contains(b) && b % jobs == t);
                    assert_eq!(owner[(b - first) as usize].replace(t), None);
                }
                let mut rng = Rng(t);
                for _ in 0..100 {
                    let b = o.pick(&mut rng);
                    assert!(range.contains(b) && b % jobs == t);
                }
            }
            assert!(owner.iter().all(Option::is_some));
        }
    }

    #[test]
    fn rng_below() {
        let mut rng = Rng(1);
        let mut seen = [false; 7];
        for _ in 0..1000 {
            seen[rng.below(7) as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn pacer_spaces_writes() {
        let p = Pacer::new(Instant::now(), 100.0);
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(p.wait(|| true));
        }
        assert!(t0.elapsed() >= Duration::from_millis(45));
        assert!(!p.wait(|| false));
    }

    #[test]
    fn option_values() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("inf").is_err());
        assert!(parse_seconds("x").is_err());
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("NaN").is_err());
        assert_eq!(parse_u64("0x10"), Ok(16));
        assert_eq!(parse_u64("16"), Ok(16));
        assert!(parse_u64("-1").is_err());
    }

    #[test]
    fn summary_json() {
        let s = Summary {
            run: 1,
            issued: 10,
            acked: 9,
            errors: 1,
            seconds: 1.23456,
        };
        assert_eq!(
            s.json(),
            r#"{"issued":10,"acked":9,"errors":1,"seconds":1.235}"#
        );
    }
}
