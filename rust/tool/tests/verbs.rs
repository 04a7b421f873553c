// SPDX-License-Identifier: GPL-2.0
//! `rmirrorctl connect`, `disconnect`, `primary` and `secondary` without a module: usage, exit
//! codes and messages.

use std::process::{Command, Output};

use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_rmirrorctl");

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn missing_control_node() {
    for verb in ["connect", "disconnect", "primary", "secondary"] {
        let o = run(&["--control", "/nonexistent/rmirror-control", verb, "r0"]);
        assert_eq!(o.status.code(), Some(1), "{verb}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
        assert_eq!(
            stderr(&o),
            format!(
                "rmirrorctl: {verb} r0: /nonexistent/rmirror-control: No such file or directory (ENOENT)\n\
                 rmirrorctl: {verb} r0: hint: is the rmirror module loaded? (modprobe rmirror)\n"
            )
        );
    }
}

#[test]
fn not_a_control_node() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("ctl");
    std::fs::write(&path, b"").unwrap();
    for verb in ["connect", "disconnect", "primary", "secondary"] {
        let o = run(&["--control", path.to_str().unwrap(), verb, "r0"]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            stderr(&o),
            format!("rmirrorctl: {verb} r0: Inappropriate ioctl for device (ENOTTY)\n")
        );
    }
}

#[test]
fn usage() {
    for args in [
        &["connect"][..],
        &["disconnect"],
        &["connect", "r0", "extra"],
        &["primary"],
        &["secondary", "r0", "r1"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
    }
    let o = run(&["connect", "--help"]);
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("EALREADY"), "{help}");
    let o = run(&["--help"]);
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("connect") && help.contains("disconnect"),
        "{help}"
    );
}
