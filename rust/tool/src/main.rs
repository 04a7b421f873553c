// SPDX-License-Identifier: GPL-2.0
//! rmirrorctl: create, remove and inspect rmirror replication devices through /dev/rmirror-control.
//!
//! Verbs follow dmsetup (`create`, `remove`, `status`, `table`, `list`, `version`), plus DRBD's
//! `connect` and `disconnect`, and `create-md` and `dump-md` for on-disk metadata (no kernel
//! involved); output formats follow
//! nvme-cli (`-o normal|json`). Errors are printed as
//! `rmirrorctl: <verb> <name>: <strerror> (<ERRNO>)` with exit status 1; usage errors exit 2.

mod control;
mod create;
mod errno;
mod error;
mod md;
mod output;
mod sys;

use std::io::{self, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rmirror_core::abi::{self, Cmd};
use rmirror_core::table;

use control::Control;
use create::CreateArgs;
use error::Failure;
use md::{CreateMdArgs, DumpMdArgs};
use output::Format;

/// Control rmirror block replication devices (/dev/rmirrorN).
#[derive(Debug, Parser)]
#[command(name = "rmirrorctl", version)]
pub struct Cli {
    /// Control device of the rmirror module
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "/dev/rmirror-control"
    )]
    pub control: PathBuf,

    /// What to do
    #[command(subcommand)]
    pub command: Command,
}

/// The verbs.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create device NAME from a table line or from options; prints /dev/rmirrorN
    #[command(after_help = "Examples:\n  \
        rmirrorctl create r0 --backing /dev/vdb --role primary --local 10.0.0.1:7788 --peer 10.0.0.2:7788\n  \
        rmirrorctl create r0 --table \"0 2097152 rmirror /dev/vdb primary 10.0.0.1:7788 10.0.0.2:7788 C\"")]
    Create(CreateArgs),

    /// Write fresh metadata for BACKING: clean bitmap, empty activity log, superblock
    #[command(
        after_help = "Internal metadata takes the end of BACKING; the data size it leaves is \
        printed and becomes the len of the table line (`create --meta internal`).\n\n\
        Examples:\n  \
        rmirrorctl create-md /dev/vdb\n  \
        rmirrorctl create-md /dev/vdb --meta-dev /dev/vdc --node-id 1"
    )]
    CreateMd(CreateMdArgs),

    /// Print the metadata of BACKING (read-only; works while a device uses it)
    DumpMd(DumpMdArgs),

    /// Remove device NAME (fails with EBUSY while it is open or mounted)
    Remove {
        /// Device name
        name: String,
    },

    /// Make device NAME standalone: close its connection, stop connecting or accepting
    #[command(
        after_help = "On a primary, writes go on locally and are marked out of sync (resynced \
        after `connect`); queued outage writes go to the bitmap. Disconnecting a standalone device \
        does nothing and succeeds."
    )]
    Disconnect {
        /// Device name
        name: String,
    },

    /// Let standalone device NAME connect to (primary) or accept (secondary) its peer again
    #[command(
        after_help = "Fails with EALREADY unless NAME is standalone (after `disconnect`, or \
        after a handshake refused a split brain, unrelated data or another protocol).\n\n\
        Split brain (both sides wrote while apart): on the side whose writes are to be thrown \
        away, as secondary, run `connect NAME --discard-my-data`; then `connect NAME` on the \
        other. The next handshake makes the discarding side the sync target, and the regions \
        either side wrote are copied to it (EINVAL on a primary)."
    )]
    Connect {
        /// Device name
        name: String,
        /// Resolve a split brain by discarding this side's data (secondary only)
        #[arg(long)]
        discard_my_data: bool,
    },

    /// Promote device NAME to primary: it takes writes and replicates them to its peer
    #[command(
        after_help = "For a failover: the peer (the old primary) is gone or has been demoted.         Fails with EBUSY while connected to a primary (demote it first), with ENODATA when NAME         has no up-to-date data (a resync to it has not finished), with EINVAL without on-disk         metadata. Promotion starts a new data generation; the old primary rejoins as secondary         and is resynced from NAME (its writes never replicated are discarded). Promoting a         primary does nothing and succeeds."
    )]
    Primary {
        /// Device name
        name: String,
    },

    /// Demote device NAME to secondary: it stops taking writes and follows its peer
    #[command(
        after_help = "Fails with EBUSY while NAME is open or mounted. Queued outage writes go to         the bitmap; the connection is made again in the new direction (a secondary accepts).         Demoting a secondary does nothing and succeeds."
    )]
    Secondary {
        /// Device name
        name: String,
    },

    /// Re-attach the failed disk of primary NAME and pull back from the peer what it missed
    #[command(
        after_help = "After an I/O error under on_io_error=detach the primary stops using its disk \
        and reads and writes through the peer (status: disk=detached). Once the backing device works \
        again, attach pulls every region written while detached from the peer (disk=attaching), \
        then uses the disk again (disk=up_to_date). Fails with EALREADY when the disk is attached, \
        with ENOTCONN when the peer is not connected (nothing to pull from)."
    )]
    Attach {
        /// Device name
        name: String,
    },

    /// Follow state changes: role, connection, disk and resync state, one line each
    #[command(
        after_help = "Like drbdsetup events2: first an `exists` line per device with its states, then \
        `create`, `change` (the states that changed) and `destroy` lines as they happen, until \
        interrupted or --timeout. Lines look like `change name=r0 cstate=outage`; with -o json each \
        is an object with \"kind\", \"name\" and the states (and \"seq\", the kernel's event number)."
    )]
    Events {
        /// Only this device's events [default: all devices]
        name: Option<String>,
        /// Output format
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
        /// Stop after this many seconds [default: never]
        #[arg(long, value_name = "SECONDS")]
        timeout: Option<u64>,
    },

    /// Show the status of device NAME, or of all devices
    Status {
        /// Device name [default: all devices]
        name: Option<String>,
        /// Output format
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },

    /// List device names
    #[command(visible_alias = "ls")]
    List {
        /// Output format
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },

    /// Print the table line of device NAME, or "NAME: LINE" for all devices
    Table {
        /// Device name [default: all devices]
        name: Option<String>,
    },

    /// Print the versions of rmirrorctl and of the loaded rmirror module
    Version,

    /// Send a raw ioctl _IOC(READ|WRITE, TYPE, NR, SIZE) with a VERSION request buffer
    #[command(hide = true)]
    DebugIoctl {
        /// ioctl number (decimal or 0x hex)
        #[arg(value_parser = parse_u8)]
        nr: u8,
        /// Size encoded in the request (0..=16383)
        #[arg(long, default_value_t = abi::BUF_LEN as u16, value_parser = clap::value_parser!(u16).range(0..=abi::IOC_SIZE_MAX as i64))]
        size: u16,
        /// ioctl type (magic) byte (decimal or 0x hex)
        #[arg(long = "type", default_value = "0xE7", value_parser = parse_u8)]
        ty: u8,
    },
}

impl Command {
    /// The verb and device name used in error messages.
    fn label(&self) -> (&'static str, Option<String>) {
        match self {
            Command::Create(a) => ("create", Some(a.name.clone())),
            Command::CreateMd(a) => ("create-md", Some(a.backing.display().to_string())),
            Command::DumpMd(a) => ("dump-md", Some(a.backing.display().to_string())),
            Command::Remove { name } => ("remove", Some(name.clone())),
            Command::Connect { name, .. } => ("connect", Some(name.clone())),
            Command::Disconnect { name } => ("disconnect", Some(name.clone())),
            Command::Primary { name } => ("primary", Some(name.clone())),
            Command::Secondary { name } => ("secondary", Some(name.clone())),
            Command::Attach { name } => ("attach", Some(name.clone())),
            Command::Status { name, .. } => ("status", name.clone()),
            Command::Events { name, .. } => ("events", name.clone()),
            Command::List { .. } => ("list", None),
            Command::Table { name } => ("table", name.clone()),
            Command::Version => ("version", None),
            Command::DebugIoctl { nr, size, ty } => (
                "debug-ioctl",
                Some(format!("{:#010x}", abi::iowr(*ty, *nr, usize::from(*size)))),
            ),
        }
    }
}

/// Parses a byte given in decimal or `0x` hex.
fn parse_u8(s: &str) -> Result<u8, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("expected 0..=255 (decimal or 0x hex): {e}"))
}

fn out(text: &str) {
    // A closed stdout (e.g. `| head`) is not worth a panic.
    let _ = io::stdout().lock().write_all(text.as_bytes());
}

fn open(cli: &Cli) -> Result<Control, Failure> {
    Control::open(&cli.control).map_err(|f| match f.errno {
        libc::ENOENT => f.hint("is the rmirror module loaded? (modprobe rmirror)"),
        libc::EACCES => f.hint("the control device needs root"),
        _ => f,
    })
}

/// Adds the likely reason to errors of commands on a named device.
fn explain(f: Failure, cmd: Cmd, name: &str, data: &str) -> Failure {
    if f.detail.is_some() {
        return f;
    }
    match (cmd, f.errno) {
        (_, libc::EPERM) => f.hint("rmirror control needs CAP_SYS_ADMIN"),
        (Cmd::Create, libc::EINVAL) => {
            if let Err(e) = abi::validate_name(name.as_bytes()) {
                f.hint(format!("name: {e}"))
            } else {
                match table::parse(data) {
                    Err(e) => f.hint(format!("table: {e}")),
                    Ok(_) => f.hint("see the kernel log (dmesg) for the reason"),
                }
            }
        }
        (Cmd::Create, libc::EEXIST) => f.hint(format!("a device named {name} already exists")),
        (Cmd::Create, libc::ENOENT) => f.hint("the backing device does not exist"),
        (Cmd::Create, libc::EBUSY) => f.hint("the backing device is in use"),
        (Cmd::Create, libc::ENOSPC) => match dump_md_command(data) {
            Some(dump) => f.hint(format!(
                "too many rmirror devices, or the metadata does not fit the devices: {dump}"
            )),
            None => f.hint("too many rmirror devices"),
        },
        (Cmd::Create, libc::ENODATA | libc::EBADMSG | libc::EOPNOTSUPP | libc::EUCLEAN) => {
            match dump_md_command(data) {
                Some(dump) => f.hint(format!("the metadata was refused (dmesg has why): {dump}")),
                None => f,
            }
        }
        (_, libc::ENXIO) => f.hint(format!("no rmirror device named {name}")),
        (Cmd::Remove, libc::EBUSY) => f.hint(format!("{name} is open or mounted")),
        (Cmd::Connect, libc::EALREADY) => f.hint(format!(
            "{name} is not standalone: it is already connecting or connected"
        )),
        (Cmd::Primary, libc::EBUSY) => f.hint(format!(
            "the peer of {name} is primary: run `rmirrorctl secondary {name}` there first (or disconnect)"
        )),
        (Cmd::Primary, libc::ENODATA) => f.hint(format!(
            "{name} has no up-to-date data: a resync to it has not finished"
        )),
        (Cmd::Secondary, libc::EBUSY) => f.hint(format!("{name} is open or mounted")),
        (Cmd::Attach, libc::EALREADY) => f.hint(format!("the disk of {name} is attached")),
        (Cmd::Attach, libc::ENOTCONN) => f.hint(format!(
            "{name} is not connected: its missed regions can only be pulled from the peer"
        )),
        (Cmd::Connect, libc::EINVAL) if data == "discard-my-data" && abi::validate_name(name.as_bytes()).is_ok() => {
            f.hint(format!("{name} is primary: a primary never discards its data (rmirrorctl secondary {name} first)"))
        }
        (_, libc::EINVAL) if cmd.takes_name() => match abi::validate_name(name.as_bytes()) {
            Err(e) => f.hint(format!("name: {e}")),
            Ok(_) => f,
        },
        _ => f,
    }
}

/// `rmirrorctl dump-md ...` for the metadata a table line names (`None` for `meta=core`).
fn dump_md_command(line: &str) -> Option<String> {
    let t = table::parse(line).ok()?;
    match t.meta {
        table::Meta::Core => None,
        table::Meta::Internal => Some(format!("rmirrorctl dump-md {}", t.backing)),
        table::Meta::External(p) => {
            Some(format!("rmirrorctl dump-md {} --meta-dev {p}", t.backing))
        }
    }
}

fn call(ctl: &Control, cmd: Cmd, name: &str, data: &str) -> Result<control::Answer, Failure> {
    ctl.call(cmd, name, data.as_bytes())
        .map_err(|f| explain(f, cmd, name, data))
}

/// `events`: the `exists` lines, then every event from the kernel's ring as it comes.
fn follow_events(
    ctl: &Control,
    name: Option<&str>,
    format: Format,
    timeout: Option<u64>,
) -> Result<(), Failure> {
    use std::io::Write as _;
    let deadline = timeout.map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s));
    // The position first, then the states: a change in between is printed twice, never lost.
    let now = call(ctl, Cmd::Events, "", abi::events::NOW)?;
    let mut next: u64 =
        now.text.trim().parse().map_err(|_| {
            Failure::invalid("events: the kernel's answer is not a sequence number")
        })?;
    let lines = match name {
        // A device that does not exist yet is followed from its creation on.
        Some(n) => match call(ctl, Cmd::Status, n, "") {
            Ok(a) => vec![a.text],
            Err(f) if f.errno == libc::ENXIO => Vec::new(),
            Err(f) => return Err(f),
        },
        None => each_device(ctl, Cmd::Status)?
            .into_iter()
            .map(|(_, a)| a.text)
            .collect(),
    };
    let mut stdout = std::io::stdout().lock();
    let mut print = |line: String| -> Result<(), Failure> {
        writeln!(stdout, "{line}")
            .and_then(|_| stdout.flush())
            .map_err(|e| Failure::invalid(format!("events: {e}")))
    };
    for l in &lines {
        print(output::event_line(None, abi::events::EXISTS, l, format))?;
    }
    while deadline.is_none_or(|d| std::time::Instant::now() < d) {
        let got = call(ctl, Cmd::Events, "", &next.to_string())?;
        for line in got.text.lines() {
            let Some((seq, kind, fields)) = abi::events::parse_line(line) else {
                continue;
            };
            next = seq + 1;
            if name.is_some_and(|n| abi::status::get(fields, abi::status::NAME) != Some(n)) {
                continue;
            }
            print(output::event_line(Some(seq), kind, fields, format))?;
        }
    }
    Ok(())
}

/// The names of all devices.
fn names(ctl: &Control) -> Result<Vec<String>, Failure> {
    Ok(output::list_names(&call(ctl, Cmd::List, "", "")?.text))
}

/// Runs `f` for every device, skipping devices removed meanwhile (ENXIO).
fn each_device(ctl: &Control, cmd: Cmd) -> Result<Vec<(String, control::Answer)>, Failure> {
    let mut v = Vec::new();
    for n in names(ctl)? {
        match call(ctl, cmd, &n, "") {
            Ok(a) => v.push((n, a)),
            Err(f) if f.errno == libc::ENXIO => {}
            Err(f) => return Err(f),
        }
    }
    Ok(v)
}

/// Runs the command; output goes to stdout as it is produced.
fn run(cli: &Cli) -> Result<(), Failure> {
    match &cli.command {
        Command::Create(args) => {
            let line = match &args.table {
                Some(line) => line.clone(),
                None => args.opts.line(md::default_len)?,
            };
            let ctl = open(cli)?;
            let a = call(&ctl, Cmd::Create, &args.name, &line)?;
            out(&format!("/dev/rmirror{}\n", a.minor));
        }
        Command::CreateMd(args) => out(&md::create_md(args)?),
        Command::DumpMd(args) => out(&md::dump_md(args)?),
        Command::Remove { name } => {
            call(&open(cli)?, Cmd::Remove, name, "")?;
        }
        Command::Connect {
            name,
            discard_my_data,
        } => {
            let opt = if *discard_my_data {
                "discard-my-data"
            } else {
                ""
            };
            call(&open(cli)?, Cmd::Connect, name, opt)?;
        }
        Command::Disconnect { name } => {
            call(&open(cli)?, Cmd::Disconnect, name, "")?;
        }
        Command::Primary { name } => {
            call(&open(cli)?, Cmd::Primary, name, "")?;
        }
        Command::Secondary { name } => {
            call(&open(cli)?, Cmd::Secondary, name, "")?;
        }
        Command::Attach { name } => {
            call(&open(cli)?, Cmd::Attach, name, "")?;
        }
        Command::Events {
            name,
            output,
            timeout,
        } => {
            follow_events(&open(cli)?, name.as_deref(), *output, *timeout)?;
        }
        Command::Status { name, output } => {
            let ctl = open(cli)?;
            let lines = match name {
                Some(n) => vec![call(&ctl, Cmd::Status, n, "")?.text],
                None => each_device(&ctl, Cmd::Status)?
                    .into_iter()
                    .map(|(_, a)| a.text)
                    .collect(),
            };
            out(&output::render_status(&lines, *output, name.is_some()));
        }
        Command::List { output } => {
            out(&output::render_list(&names(&open(cli)?)?, *output));
        }
        Command::Table { name } => {
            let ctl = open(cli)?;
            match name {
                Some(n) => out(&format!(
                    "{}\n",
                    call(&ctl, Cmd::Table, n, "")?.text.trim_end()
                )),
                None => {
                    for (n, a) in each_device(&ctl, Cmd::Table)? {
                        out(&format!("{n}: {}\n", a.text.trim_end()));
                    }
                }
            }
        }
        Command::Version => {
            out(&format!(
                "rmirrorctl {} (control ABI {})\n",
                env!("CARGO_PKG_VERSION"),
                abi::ABI_VERSION
            ));
            let a = call(&open(cli)?, Cmd::Version, "", "")?;
            out(&format!("{}\n", a.text.trim_end()));
        }
        Command::DebugIoctl { nr, size, ty } => {
            let request = abi::iowr(*ty, *nr, usize::from(*size));
            let mut buf = vec![0u8; abi::BUF_LEN.max(usize::from(*size))];
            let mut head = Box::new([0u8; abi::BUF_LEN]);
            abi::Request {
                name: b"",
                data: b"",
            }
            .encode(&mut head)
            .map_err(|e| Failure::invalid(e.as_str()))?;
            buf[..abi::BUF_LEN].copy_from_slice(&head[..]);
            open(cli)?.raw(request, &mut buf)?;
            head.copy_from_slice(&buf[..abi::BUF_LEN]);
            let text = control::decode_reply(&head)
                .map(|a| a.text)
                .unwrap_or_default();
            out(&format!("{request:#010x}: ok {}\n", text.trim_end()));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            let (verb, name) = cli.command.label();
            eprint!("{}", f.render(verb, name.as_deref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rmirrorctl").chain(args.iter().copied()))
    }

    #[test]
    fn create_forms() {
        let c = parse(&[
            "create",
            "r0",
            "--table",
            "0 8 rmirror /dev/vdb primary 1.1.1.1:1 2.2.2.2:2 C",
        ])
        .unwrap();
        let Command::Create(a) = c.command else {
            panic!()
        };
        assert!(a.table.is_some());
        assert_eq!(c.control, PathBuf::from("/dev/rmirror-control"));

        let c = parse(&[
            "--control",
            "/tmp/ctl",
            "create",
            "r0",
            "--backing",
            "/dev/vdb",
            "--role",
            "secondary",
            "--local",
            "10.0.0.2:7788",
            "--peer",
            "10.0.0.1:7788",
            "--protocol",
            "C",
            "--len",
            "8",
        ])
        .unwrap();
        assert_eq!(c.control, PathBuf::from("/tmp/ctl"));
        let Command::Create(a) = c.command else {
            panic!()
        };
        assert_eq!(
            a.opts.line(|_, _| unreachable!()).unwrap(),
            "0 8 rmirror /dev/vdb secondary 10.0.0.2:7788 10.0.0.1:7788 C"
        );
    }

    #[test]
    fn usage_errors() {
        use clap::error::ErrorKind;
        // neither form
        assert_eq!(
            parse(&["create", "r0"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        // both forms
        let e = parse(&["create", "r0", "--table", "x", "--role", "primary"]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ArgumentConflict);
        // bad values
        for bad in [
            &[
                "create",
                "r0",
                "--backing",
                "/d",
                "--role",
                "boss",
                "--local",
                "1.1.1.1:1",
                "--peer",
                "1.1.1.1:2",
            ][..],
            &[
                "create",
                "r0",
                "--backing",
                "/d",
                "--role",
                "primary",
                "--local",
                "1.1.1.1",
                "--peer",
                "1.1.1.1:2",
            ],
            &[
                "create",
                "r0",
                "--backing",
                "/d",
                "--role",
                "primary",
                "--local",
                "1.1.1.1:1",
                "--peer",
                "1.1.1.1:2",
                "--protocol",
                "D",
            ],
            &["status", "-o", "xml"],
            &["debug-ioctl", "256"],
            &["debug-ioctl", "1", "--size", "16384"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&[]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn other_verbs() {
        assert!(matches!(
            parse(&["status"]).unwrap().command,
            Command::Status {
                name: None,
                output: Format::Normal
            }
        ));
        assert!(matches!(
            parse(&["status", "r0", "-o", "json"]).unwrap().command,
            Command::Status {
                name: Some(_),
                output: Format::Json
            }
        ));
        assert!(matches!(
            parse(&["ls", "--output", "json"]).unwrap().command,
            Command::List {
                output: Format::Json
            }
        ));
        assert!(matches!(
            parse(&["table", "r0"]).unwrap().command,
            Command::Table { name: Some(_) }
        ));
        assert!(matches!(
            parse(&["remove", "r0"]).unwrap().command,
            Command::Remove { .. }
        ));
        assert!(matches!(
            parse(&["version"]).unwrap().command,
            Command::Version
        ));
        let c = parse(&["connect", "r0"]).unwrap();
        assert!(
            matches!(&c.command, Command::Connect { name, discard_my_data: false } if name == "r0")
        );
        let c = parse(&["connect", "r0", "--discard-my-data"]).unwrap();
        assert!(matches!(
            &c.command,
            Command::Connect {
                discard_my_data: true,
                ..
            }
        ));
        assert_eq!(c.command.label(), ("connect", Some("r0".into())));
        let c = parse(&["primary", "r0"]).unwrap();
        assert_eq!(c.command.label(), ("primary", Some("r0".into())));
        let c = parse(&["secondary", "r1"]).unwrap();
        assert_eq!(c.command.label(), ("secondary", Some("r1".into())));
        let c = parse(&["attach", "r2"]).unwrap();
        assert_eq!(c.command.label(), ("attach", Some("r2".into())));
        assert!(parse(&["attach"]).is_err());
        let c = parse(&["disconnect", "r1"]).unwrap();
        assert!(matches!(&c.command, Command::Disconnect { name } if name == "r1"));
        assert_eq!(c.command.label(), ("disconnect", Some("r1".into())));
        for bad in [
            &["connect"][..],
            &["disconnect"],
            &["connect", "r0", "r1"],
            &["disconnect", "r0", "--force"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let c = parse(&["debug-ioctl", "0x06", "--size", "8", "--type", "0xE6"]).unwrap();
        assert_eq!(
            c.command.label(),
            (
                "debug-ioctl",
                Some(format!("{:#010x}", abi::iowr(0xE6, 6, 8)))
            )
        );
        let c = parse(&["debug-ioctl", "6"]).unwrap();
        assert_eq!(c.command.label().1.unwrap(), "0xd000e706");
    }

    #[test]
    fn md_verbs() {
        let c = parse(&["create-md", "/dev/vdb"]).unwrap();
        let Command::CreateMd(a) = &c.command else {
            panic!()
        };
        assert_eq!(
            (
                a.meta_dev.is_none(),
                a.node_id,
                a.region_size,
                a.al_slots,
                a.force
            ),
            (true, 0, 4096, rmirror_core::al::DEFAULT_RING_SLOTS, false)
        );
        assert_eq!(c.command.label(), ("create-md", Some("/dev/vdb".into())));
        let c = parse(&[
            "create-md",
            "/dev/vdb",
            "--meta-dev",
            "/dev/vdc",
            "--node-id",
            "31",
            "--region-size",
            "65536",
            "--al-slots",
            "1024",
            "--force",
        ])
        .unwrap();
        let Command::CreateMd(a) = &c.command else {
            panic!()
        };
        assert_eq!(
            a.meta_dev.as_deref(),
            Some(std::path::Path::new("/dev/vdc"))
        );
        assert_eq!(
            (a.node_id, a.region_size, a.al_slots, a.force),
            (31, 65536, 1024, true)
        );
        let c = parse(&["dump-md", "/dev/vdb", "-o", "json"]).unwrap();
        assert!(matches!(
            &c.command,
            Command::DumpMd(DumpMdArgs {
                output: Format::Json,
                meta_dev: None,
                ..
            })
        ));
        assert_eq!(c.command.label(), ("dump-md", Some("/dev/vdb".into())));
        for bad in [
            &["create-md"][..],
            &["create-md", "/dev/vdb", "--node-id", "32"],
            &["create-md", "/dev/vdb", "--region-size", "1000"],
            &["create-md", "/dev/vdb", "--al-slots", "2"],
            &["create-md", "/dev/vdb", "--al-slots", "1025"],
            &["dump-md", "/dev/vdb", "-o", "xml"],
            &["create", "r0", "--table", "x", "--meta", "internal"],
            &[
                "create",
                "r0",
                "--backing",
                "/dev/vdb",
                "--role",
                "primary",
                "--local",
                "1.1.1.1:1",
                "--peer",
                "1.1.1.1:2",
                "--meta",
                "vdc",
            ],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let c = parse(&[
            "create",
            "r0",
            "--backing",
            "/dev/vdb",
            "--role",
            "primary",
            "--local",
            "1.1.1.1:1",
            "--peer",
            "1.1.1.1:2",
            "--meta",
            "internal",
            "--len",
            "4096",
        ])
        .unwrap();
        let Command::Create(a) = c.command else {
            panic!()
        };
        assert_eq!(
            a.opts.line(|_, _| unreachable!()).unwrap(),
            "0 4096 rmirror /dev/vdb primary 1.1.1.1:1 1.1.1.1:2 C meta=internal"
        );
    }

    #[test]
    fn hints() {
        let line = "0 8 rmirror /dev/vdb primary 10.0.0.1:1 10.0.0.2:1 X";
        let f = explain(Failure::os(libc::EINVAL), Cmd::Create, "r0", line);
        assert_eq!(
            f.render("create", Some("r0")),
            "rmirrorctl: create r0: Invalid argument (EINVAL)\n\
             rmirrorctl: create r0: hint: table: bad protocol: expected A, B or C\n"
        );
        let f = explain(Failure::os(libc::EINVAL), Cmd::Create, "a/b", line);
        assert_eq!(
            f.hints,
            ["name: device name may contain only A-Z a-z 0-9 _ . -"]
        );
        let f = explain(
            Failure::os(libc::EINVAL),
            Cmd::Create,
            "r0",
            &line.replace(" X", " A"),
        );
        assert_eq!(f.hints, ["see the kernel log (dmesg) for the reason"]);
        let md_line = "0 8 rmirror /dev/vdb primary 10.0.0.1:1 10.0.0.2:1 C meta=/dev/vdc";
        let f = explain(Failure::os(libc::EBADMSG), Cmd::Create, "r0", md_line);
        assert_eq!(
            f.hints,
            ["the metadata was refused (dmesg has why): rmirrorctl dump-md /dev/vdb --meta-dev /dev/vdc"]
        );
        let f = explain(
            Failure::os(libc::ENOSPC),
            Cmd::Create,
            "r0",
            &line.replace(" X", " C"),
        );
        assert_eq!(f.hints, ["too many rmirror devices"]);
        let f = explain(
            Failure::os(libc::ENOSPC),
            Cmd::Create,
            "r0",
            &line.replace(" X", " C meta=internal"),
        );
        assert!(
            f.hints[0].ends_with(": rmirrorctl dump-md /dev/vdb"),
            "{f:?}"
        );
        let f = explain(Failure::os(libc::ENXIO), Cmd::Status, "r9", "");
        assert_eq!(
            f.render("status", Some("r9")),
            "rmirrorctl: status r9: No such device or address (ENXIO)\n\
             rmirrorctl: status r9: hint: no rmirror device named r9\n"
        );
        let f = explain(Failure::os(libc::EINVAL), Cmd::Status, "", "");
        assert_eq!(f.hints, ["name: empty device name"]);
        let f = explain(Failure::os(libc::EINVAL), Cmd::Status, "r0", "");
        assert!(f.hints.is_empty());
    }

    #[test]
    fn connect_disconnect_hints() {
        let f = explain(Failure::os(libc::EALREADY), Cmd::Connect, "r0", "");
        assert_eq!(
            f.render("connect", Some("r0")),
            "rmirrorctl: connect r0: Operation already in progress (EALREADY)\n\
             rmirrorctl: connect r0: hint: r0 is not standalone: it is already connecting or connected\n"
        );
        let f = explain(Failure::os(libc::EBUSY), Cmd::Primary, "r0", "");
        assert_eq!(
            f.hints,
            ["the peer of r0 is primary: run `rmirrorctl secondary r0` there first (or disconnect)"]
        );
        let f = explain(Failure::os(libc::ENODATA), Cmd::Primary, "r0", "");
        assert_eq!(
            f.hints,
            ["r0 has no up-to-date data: a resync to it has not finished"]
        );
        let f = explain(
            Failure::os(libc::EINVAL),
            Cmd::Connect,
            "r0",
            "discard-my-data",
        );
        assert_eq!(
            f.hints,
            ["r0 is primary: a primary never discards its data (rmirrorctl secondary r0 first)"]
        );
        let f = explain(Failure::os(libc::EBUSY), Cmd::Secondary, "r0", "");
        assert_eq!(f.hints, ["r0 is open or mounted"]);
        let f = explain(Failure::os(libc::EALREADY), Cmd::Attach, "r0", "");
        assert_eq!(f.hints, ["the disk of r0 is attached"]);
        let f = explain(Failure::os(libc::ENOTCONN), Cmd::Attach, "r0", "");
        assert_eq!(
            f.hints,
            ["r0 is not connected: its missed regions can only be pulled from the peer"]
        );
        for cmd in [
            Cmd::Connect,
            Cmd::Disconnect,
            Cmd::Primary,
            Cmd::Secondary,
            Cmd::Attach,
        ] {
            let f = explain(Failure::os(libc::ENXIO), cmd, "r9", "");
            assert_eq!(f.hints, ["no rmirror device named r9"]);
            let f = explain(Failure::os(libc::EPERM), cmd, "r0", "");
            assert_eq!(f.hints, ["rmirror control needs CAP_SYS_ADMIN"]);
            let f = explain(Failure::os(libc::EINVAL), cmd, "a b", "");
            assert_eq!(
                f.hints,
                ["name: device name may contain only A-Z a-z 0-9 _ . -"]
            );
        }
        // Only connect has a reason to be EALREADY.
        let f = explain(Failure::os(libc::EALREADY), Cmd::Disconnect, "r0", "");
        assert!(f.hints.is_empty());
    }

    #[test]
    fn parse_u8_forms() {
        assert_eq!(parse_u8("0xE7"), Ok(0xE7));
        assert_eq!(parse_u8("5"), Ok(5));
        assert!(parse_u8("0x100").is_err());
        assert!(parse_u8("-1").is_err());
    }
}
