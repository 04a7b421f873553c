// SPDX-License-Identifier: GPL-2.0
//! `rmirrorctl create-md` and `dump-md` on regular files: output, exit codes and messages.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use tempfile::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_rmirrorctl");
const MIB: u64 = 1 << 20;

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn disk(dir: &TempDir, name: &str, bytes: u64) -> PathBuf {
    let p = dir.path().join(name);
    File::create(&p).unwrap().set_len(bytes).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: Output) -> String {
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

fn fails(o: Output) -> String {
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(o.stdout.is_empty());
    stderr(&o)
}

fn dump_json(args: &[&str]) -> Value {
    let mut a = vec!["dump-md"];
    a.extend_from_slice(args);
    a.extend_from_slice(&["-o", "json"]);
    serde_json::from_str(&ok(run(&a))).unwrap()
}

#[test]
fn create_md_dump_md_internal() {
    let dir = tempfile::tempdir().unwrap();
    // 1 GiB: the example of the documentation.
    let d = disk(&dir, "vdb", 1 << 30);
    let out = ok(run(&["create-md", s(&d), "--node-id", "1"]));
    assert!(
        out.contains("data: 2097016 sectors (1023.9 MiB), 1073672192 bytes\n"),
        "{out}"
    );
    assert!(
        out.ends_with(&format!(
            "\ntable: 0 2097016 rmirror {} ROLE LOCAL PEER C meta=internal\n",
            s(&d)
        )),
        "{out}"
    );
    let v = dump_json(&[s(&d)]);
    assert_eq!(v["kind"], "internal");
    assert_eq!(v["data_sectors"], 2097016);
    assert_eq!(v["node_id"], 1);
    assert_eq!(v["flags"], serde_json::json!(["al_clean"]));
    assert_eq!(v["bitmap_weight"], 0);
    let text = ok(run(&["dump-md", s(&d)]));
    assert!(
        text.starts_with(&format!(
            "meta_device:         {}\nversion:             1\n",
            s(&d)
        )),
        "{text}"
    );
    assert!(text.contains("\ndata_sectors:        2097016\n"), "{text}");
    assert!(
        text.contains("\ncurrent_uuid:        0000000000000004\n"),
        "{text}"
    );
}

#[test]
fn create_md_dump_md_external() {
    let dir = tempfile::tempdir().unwrap();
    let data = disk(&dir, "data", 16 * MIB);
    let meta = disk(&dir, "meta", MIB);
    let out = ok(run(&[
        "create-md",
        s(&data),
        "--meta-dev",
        s(&meta),
        "--al-slots",
        "4",
    ]));
    assert!(
        out.contains("data: 32768 sectors (16 MiB), 16777216 bytes\n"),
        "{out}"
    );
    assert!(out.ends_with(&format!(" C meta={}\n", s(&meta))), "{out}");
    let v = dump_json(&[s(&data), "--meta-dev", s(&meta)]);
    assert_eq!(v["kind"], "external");
    assert_eq!(v["data_sectors"], 32768);
    assert_eq!(v["al_slots"], 4);
    assert_eq!(
        (
            v["sb_offset"].as_u64(),
            v["al_offset"].as_u64(),
            v["bm_offset"].as_u64()
        ),
        (Some(0), Some(8), Some(40))
    );
    // The data file is untouched.
    assert!(std::fs::read(&data).unwrap().iter().all(|&b| b == 0));
}

#[test]
fn create_md_refuses_existing_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(&dir, "vdb", 4 * MIB);
    ok(run(&["create-md", s(&d)]));
    let uuid = dump_json(&[s(&d)])["device_uuid"].clone();
    let err = fails(run(&["create-md", s(&d)]));
    let first = err.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("rmirrorctl: create-md {}: already holds rmirror metadata (version 1, internal, node id 0, ", s(&d))),
        "{err}"
    );
    assert!(first.ends_with(" (EEXIST)"), "{err}");
    assert!(err.contains("hint: use --force"), "{err}");
    assert_eq!(dump_json(&[s(&d)])["device_uuid"], uuid);
    let out = ok(run(&["create-md", s(&d), "--force"]));
    assert!(out.starts_with("overwriting rmirror metadata"), "{out}");
    assert_ne!(dump_json(&[s(&d)])["device_uuid"], uuid);
}

#[test]
fn dump_md_checksum_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(&dir, "vdb", 4 * MIB);
    ok(run(&["create-md", s(&d)]));
    // The superblock is the last 4 KiB block; flip one byte of its node_id.
    let f = OpenOptions::new().read(true).write(true).open(&d).unwrap();
    let at = 4 * MIB - 4096 + 0x8c;
    let mut b = [0u8];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    let err = fails(run(&["dump-md", s(&d)]));
    assert_eq!(
        err,
        format!(
            "rmirrorctl: dump-md {}: metadata checksum mismatch (EBADMSG)\n",
            s(&d)
        )
    );
}

#[test]
fn dump_md_without_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let d = disk(&dir, "vdb", 4 * MIB);
    let err = fails(run(&["dump-md", s(&d), "-o", "json"]));
    assert_eq!(
        err,
        format!(
            "rmirrorctl: dump-md {0}: no rmirror metadata (bad magic) (ENODATA)\n\
             rmirrorctl: dump-md {0}: hint: create metadata with: rmirrorctl create-md {0}\n",
            s(&d)
        )
    );
    // create takes its length from the metadata: a clear error before the control device.
    let err = fails(run(&[
        "--control",
        "/nonexistent/ctl",
        "create",
        "r0",
        "--backing",
        s(&d),
        "--role",
        "primary",
        "--local",
        "10.0.0.1:7788",
        "--peer",
        "10.0.0.2:7788",
        "--meta",
        "internal",
    ]));
    assert!(
        err.starts_with(&format!(
            "rmirrorctl: create r0: {}: no rmirror metadata (bad magic) (ENODATA)\n",
            s(&d)
        )),
        "{err}"
    );
    // With metadata the line is fine and the control device is next.
    ok(run(&["create-md", s(&d)]));
    let err = fails(run(&[
        "--control",
        "/nonexistent/ctl",
        "create",
        "r0",
        "--backing",
        s(&d),
        "--role",
        "primary",
        "--local",
        "10.0.0.1:7788",
        "--peer",
        "10.0.0.2:7788",
        "--meta",
        "internal",
    ]));
    assert!(
        err.starts_with(
            "rmirrorctl: create r0: /nonexistent/ctl: No such file or directory (ENOENT)"
        ),
        "{err}"
    );
}

#[test]
fn md_usage_errors() {
    let o = run(&["create-md", "/dev/null", "--region-size", "3000"]);
    assert_eq!(o.status.code(), Some(2));
    let err = fails(run(&["dump-md", "/dev/null"]));
    assert_eq!(
        err,
        "rmirrorctl: dump-md /dev/null: not a block device or regular file (ENOTBLK)\n"
    );
}
