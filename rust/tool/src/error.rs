// SPDX-License-Identifier: GPL-2.0
//! rmirrorctl's one error type: an errno plus context, printed as `rmirrorctl: <verb> <name>: ... (EXXX)`.

use std::io;

use crate::{errno, sys};

/// A failed command: what went wrong (an errno, named in the message) and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The errno; its symbolic name ends the message (tests grep for it).
    pub errno: i32,
    /// What the error is about, printed before the message (a path, `table`, ...).
    pub context: Option<String>,
    /// A specific message replacing `strerror(errno)` (for errors found by the tool itself).
    pub detail: Option<String>,
    /// Extra lines printed after the error (likely reasons).
    pub hints: Vec<String>,
}

impl Failure {
    /// An error from the system, described by `strerror(errno)`.
    pub fn os(errno: i32) -> Failure {
        Failure {
            errno,
            context: None,
            detail: None,
            hints: Vec::new(),
        }
    }

    /// An error the tool found itself, reported with `errno` and a specific message.
    pub fn new(errno: i32, detail: impl Into<String>) -> Failure {
        Failure {
            detail: Some(detail.into()),
            ..Failure::os(errno)
        }
    }

    /// An invalid argument found by the tool (`EINVAL`).
    pub fn invalid(detail: impl Into<String>) -> Failure {
        Failure::new(libc::EINVAL, detail)
    }

    /// Converts an I/O error (`EIO` when it carries no errno).
    pub fn io(err: &io::Error) -> Failure {
        match err.raw_os_error() {
            Some(e) => Failure::os(e),
            None => Failure::new(libc::EIO, err.to_string()),
        }
    }

    /// Adds what the error is about (printed before the message).
    pub fn context(mut self, context: impl Into<String>) -> Failure {
        self.context = Some(context.into());
        self
    }

    /// Adds a hint line.
    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hints.push(hint.into());
        self
    }

    /// The lines to print on stderr for `verb` on device `name`:
    /// `rmirrorctl: create r0: Invalid argument (EINVAL)`, then
    /// `rmirrorctl: create r0: hint: ...` per hint.
    pub fn render(&self, verb: &str, name: Option<&str>) -> String {
        let prefix = match name {
            Some(n) => format!("rmirrorctl: {verb} {n}"),
            None => format!("rmirrorctl: {verb}"),
        };
        let msg = self
            .detail
            .clone()
            .unwrap_or_else(|| sys::strerror(self.errno));
        let mut out = match &self.context {
            Some(c) => format!("{prefix}: {c}: {msg} ({})\n", errno::name(self.errno)),
            None => format!("{prefix}: {msg} ({})\n", errno::name(self.errno)),
        };
        for h in &self.hints {
            out.push_str(&format!("{prefix}: hint: {h}\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_errno() {
        assert_eq!(
            Failure::os(libc::EINVAL).render("create", Some("r0")),
            "rmirrorctl: create r0: Invalid argument (EINVAL)\n"
        );
        assert_eq!(
            Failure::os(libc::ENXIO).render("status", Some("nope")),
            "rmirrorctl: status nope: No such device or address (ENXIO)\n"
        );
        assert_eq!(
            Failure::os(libc::ENOTTY).render("debug-ioctl", Some("0xd000e708")),
            "rmirrorctl: debug-ioctl 0xd000e708: Inappropriate ioctl for device (ENOTTY)\n"
        );
        assert_eq!(
            Failure::os(libc::EPERM).render("list", None),
            "rmirrorctl: list: Operation not permitted (EPERM)\n"
        );
    }

    #[test]
    fn context_detail_hints() {
        let f = Failure::os(libc::ENOENT).context("/dev/rmirror-control");
        assert_eq!(
            f.render("list", None),
            "rmirrorctl: list: /dev/rmirror-control: No such file or directory (ENOENT)\n"
        );
        let f = Failure::invalid("bad role: expected primary or secondary").context("table");
        assert_eq!(
            f.render("create", Some("r0")),
            "rmirrorctl: create r0: table: bad role: expected primary or secondary (EINVAL)\n"
        );
        let f = Failure::os(libc::EINVAL).hint("table: bad protocol: expected A, B or C");
        assert_eq!(
            f.render("create", Some("r0")),
            "rmirrorctl: create r0: Invalid argument (EINVAL)\n\
             rmirrorctl: create r0: hint: table: bad protocol: expected A, B or C\n"
        );
    }

    #[test]
    fn io_errors() {
        let e = io::Error::from_raw_os_error(libc::EBUSY);
        assert_eq!(Failure::io(&e), Failure::os(libc::EBUSY));
        let e = io::Error::other("weird");
        assert_eq!(Failure::io(&e).errno, libc::EIO);
    }
}
