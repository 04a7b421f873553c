// SPDX-License-Identifier: GPL-2.0
//! rmirror-check: a per-block checker for fault-injection tests.
//!
//! `write` stamps whole blocks from several threads and logs every write as issued before it
//! starts and as acknowledged after it returns; after a fault scenario, `verify` reads a disk
//! (e.g. the secondary's) and checks that every block holds its last acknowledged version or a
//! later issued one, so "no acknowledged write is lost" can be asserted. Both print one JSON
//! line on stdout. Exit status: 0 passed, 1 check failed (lost or corrupt blocks, failed
//! writes), 2 usage or I/O errors. See Documentation/rmirror-check.rst.

mod log;
mod stamp;
mod sys;
mod target;
mod verify;
mod write;

#[cfg(test)]
mod tests;

use std::io::{self, Write as _};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use verify::VerifyArgs;
use write::WriteArgs;

/// Exit status when a check failed.
const EXIT_FAILED: u8 = 1;
/// Exit status for usage and I/O errors (also clap's).
const EXIT_ERROR: u8 = 2;

/// Write stamped blocks with a log, then verify a disk against the log.
#[derive(Debug, Parser)]
#[command(name = "rmirror-check", version)]
pub struct Cli {
    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write stamped blocks; log each write as issued (I), acknowledged (A) or failed (E)
    #[command(
        after_help = "Prints {\"issued\":N,\"acked\":N,\"errors\":N,\"seconds\":S}; \
        exits 1 if writes failed (unless --allow-errors).\n\
        SIGINT/SIGTERM stop issuing, wait for the writes in flight and flush the log.\n\n\
        Example:\n  \
        rmirror-check write /dev/rmirror0 --size 64M --jobs 4 --seconds 30 --log /tmp/w.log"
    )]
    Write(WriteArgs),

    /// Check that every block holds its last acknowledged write, or a later issued one
    #[command(
        after_help = "Prints {\"blocks\":N,\"acknowledged\":N,\"present\":N,\"later\":N,\
        \"missing\":N,\"corrupt\":N,\"untouched\":N,\"max_seq_on_disk\":N|null[,\"not_prefix\":N]} \
        and examples of problems on stderr; exits 1 if missing, corrupt or not_prefix is not 0.\n\n\
        Example:\n  \
        rmirror-check verify /dev/vdb --size 64M --log /tmp/w.log"
    )]
    Verify(VerifyArgs),
}

/// Prints a line on stdout; a closed stdout (e.g. `| head`) is not worth a panic.
fn out(line: &str) {
    let _ = writeln!(io::stdout().lock(), "{line}");
}

/// Prints `rmirror-check: <msg>` on stderr.
fn err(msg: &str) {
    let _ = writeln!(io::stderr().lock(), "rmirror-check: {msg}");
}

fn write_main(args: &WriteArgs) -> ExitCode {
    let verb = format!("write {}", args.target.dev.display());
    if let Err(e) = sys::catch_stop_signals() {
        err(&format!("{verb}: signal handlers: {e}"));
        return ExitCode::from(EXIT_ERROR);
    }
    match write::run(args, &sys::STOP) {
        Ok(summary) => {
            out(&summary.json());
            if summary.errors > 0 && !args.allow_errors {
                err(&format!("{verb}: {} writes failed", summary.errors));
                return ExitCode::from(EXIT_FAILED);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            err(&format!("{verb}: {e}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn verify_main(args: &VerifyArgs) -> ExitCode {
    let verb = format!("verify {}", args.target.dev.display());
    match verify::run(args) {
        Ok(report) => {
            out(&report.json());
            for e in &report.examples {
                err(e);
            }
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_FAILED)
            }
        }
        Err(e) => {
            err(&format!("{verb}: {e}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Write(args) => write_main(args),
        Command::Verify(args) => verify_main(args),
    }
}
