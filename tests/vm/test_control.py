# SPDX-License-Identifier: GPL-2.0
"""rmirror control path against .notes/ABI.md: module load/unload, /dev/rmirror-control, error codes of
every bad input, sysfs attributes, rmmod with open and idle devices, connect/disconnect and the connection
timers in sysfs."""

import re
import time

import pytest

from helpers import (CTL, KO, S, DISK_SECTORS, connect_pair, create, dmesg_during, expect_error, load, loaded, md5_dev,
                     q, remove, status, sysfs_write, table, wait_cstate, wait_in_sync)


pytestmark = pytest.mark.usefixtures("clean_pair")


def test_load_unload_cycles(pair):
    a = pair.alpha
    for i in range(5):
        a.ok(f"insmod {KO}")
        out = a.ok("stat -c '%F %a %u' /dev/rmirror-control; grep -c '^rmirror ' /proc/modules")
        assert out.split("\n")[:2] == ["character special file 600 0", "1"], f"cycle {i}: {out}"
        a.ok("rmmod rmirror")
        a.ok("test ! -e /dev/rmirror-control && ! grep -q '^rmirror ' /proc/modules")
    # loading twice is refused by the kernel, the first instance stays usable
    a.ok(f"insmod {KO}")
    rc, out = a.run(f"insmod {KO}")
    assert rc != 0 and "exists" in out, out
    a.ok("test -c /dev/rmirror-control")


def test_list_empty(pair):
    a = pair.alpha
    load(a)
    rc, out = a.run(f"{CTL} list")
    assert rc == 0 and out.strip() == "", f"list with no devices: rc={rc} {out!r}"


def test_unprivileged_is_eperm(pair):
    """Every ioctl needs CAP_SYS_ADMIN, checked before anything else (even the command number)."""
    a = pair.alpha
    load(a)
    a.ok("chmod 0666 /dev/rmirror-control")
    drop = "setpriv --reuid=1000 --regid=1000 --clear-groups"
    assert a.ok(f"{drop} id -u").strip() == "1000"
    expect_error(a, f"{drop} {CTL} create r0 --table {q(table(a, 'primary'))}", "create", "r0", "EPERM")
    expect_error(a, f"{drop} {CTL} status r0", "status", "r0", "EPERM")
    expect_error(a, f"{drop} {CTL} remove r0", "remove", "r0", "EPERM")
    # device-mapper's order: the command number is checked first, so an unknown ioctl is ENOTTY for anyone
    rc, out, err = a.run3(f"{drop} {CTL} debug-ioctl 99")
    assert rc != 0 and "(ENOTTY)" in err, f"unknown ioctl as non-root must be ENOTTY (checked before EPERM): {err!r}"
    a.ok("test ! -e /dev/rmirror0")
    # and root still works on the same node
    create(a, "primary")
    a.ok("test -b /dev/rmirror0")


MALFORMED = [
    ("garbage", "not a table"),
    ("too-few-fields", "0 {S} rmirror /dev/vdb primary 10.99.0.1:7788"),
    ("start-not-zero", "8 {S} rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C"),
    ("zero-length", "0 0 rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C"),
    ("wrong-target", "0 {S} linear /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C"),
    ("relative-backing", "0 {S} rmirror vdb primary 10.99.0.1:7788 10.99.0.2:7788 C"),
    ("bad-role", "0 {S} rmirror /dev/vdb master 10.99.0.1:7788 10.99.0.2:7788 C"),
    ("port-zero", "0 {S} rmirror /dev/vdb primary 10.99.0.1:0 10.99.0.2:7788 C"),
    ("bad-ip", "0 {S} rmirror /dev/vdb primary 10.99.0.300:7788 10.99.0.2:7788 C"),
    ("protocol-X", "0 {S} rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 X"),
    ("inline-not-512", "0 {S} rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C inline_max=1000"),
    ("inline-too-big", "0 {S} rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C inline_max=65536"),
    ("node-id-32", "0 {S} rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C node_id=32"),
    ("unknown-key", "0 {S} rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C bogus=1"),
    ("longer-than-backing", "0 {BIG} rmirror /dev/vdb primary 10.99.0.1:7788 10.99.0.2:7788 C"),
]


def test_malformed_table_is_einval(pair):
    """Every line of MALFORMED (one module load for all: each case is a create that must change nothing):
    EINVAL, a 'rmirror: r0: table: <reason>' kernel line, no device left behind."""
    a = pair.alpha
    load(a)
    wrong = []
    for case, line in MALFORMED:
        line = line.format(S=S, BIG=DISK_SECTORS + 8)
        rc, out, err, msgs = dmesg_during(a, f"{CTL} create r0 --table {q(line)}")
        m = re.search(r"^rmirrorctl: create r0: .+ \((E[A-Z]+)\)$", err, re.M)
        if rc == 0 or not m or m.group(1) != "EINVAL":
            wrong.append(f"{case}: table {line!r}: rc {rc}, stderr {err!r}")
        elif not re.search(r"rmirror: r0: table: \S", msgs):
            wrong.append(f"{case}: no 'rmirror: r0: table: <reason>' kernel message; dmesg:\n{msgs}")
        elif a.run("test ! -e /dev/rmirror0 && test ! -e /sys/block/rmirror0")[0] != 0:
            wrong.append(f"{case}: a device was left behind")
    expect_error(a, f"{CTL} status r0", "status", "r0", "ENXIO")
    assert not wrong, "\n".join(wrong)


def test_bad_names_are_einval(pair):
    a = pair.alpha
    load(a)
    for name in ("bad/name", "x" * 64, "sp ace"):
        rc, out, err = a.run3(f"{CTL} create {q(name)} --table {q(table(a, 'primary'))}")
        assert rc != 0 and "(EINVAL)" in err, f"name {name!r}: {err!r}"
    a.ok("test ! -e /dev/rmirror0")


def test_missing_backing_is_enoent(pair):
    a = pair.alpha
    load(a)
    expect_error(a, f"{CTL} create r0 --table {q(table(a, 'primary', backing='/dev/vdz'))}",
                 "create", "r0", "ENOENT")
    a.ok("test ! -e /dev/rmirror0")


def test_duplicate_name_is_eexist(pair):
    a = pair.alpha
    load(a)
    a.ok("truncate -s 64M /tmp/loop0.img && losetup /dev/loop0 /tmp/loop0.img")
    create(a, "primary")
    expect_error(a, f"{CTL} create r0 --table {q(table(a, 'primary', sectors=65536, backing='/dev/loop0'))}",
                 "create", "r0", "EEXIST")
    # a second device with its own name and backing works and gets the next minor
    a.ok(f"{CTL} create r1 --table {q(table(a, 'primary', sectors=65536, backing='/dev/loop0'))}")
    assert status(a, "r1")["minor"] == 1
    a.ok("test -b /dev/rmirror1 && test -b /dev/rmirror0")
    assert a.ok(f"{CTL} list").split() == ["r0", "r1"]
    remove(a, "r1")
    remove(a, "r0")
    assert a.ok(f"{CTL} list").strip() == ""


def test_backing_in_use_is_ebusy(pair):
    a = pair.alpha
    load(a)
    create(a, "primary")
    # the same backing device for a second rmirror device is exclusive-opened already
    expect_error(a, f"{CTL} create r1 --table {q(table(a, 'primary'))}", "create", "r1", "EBUSY")


def test_unknown_ioctl_is_enotty(pair):
    a = pair.alpha
    load(a)
    rc, out, err = a.run3(f"{CTL} debug-ioctl 99")
    assert rc != 0
    assert re.search(r"^rmirrorctl: debug-ioctl \S+: .+ \(ENOTTY\)$", err, re.M), err


def test_unknown_name_is_enxio(pair):
    a = pair.alpha
    load(a)
    expect_error(a, f"{CTL} status nosuch", "status", "nosuch", "ENXIO")
    expect_error(a, f"{CTL} remove nosuch", "remove", "nosuch", "ENXIO")
    create(a, "primary")
    expect_error(a, f"{CTL} status r00", "status", "r00", "ENXIO")


def test_remove_while_open_is_ebusy(pair):
    a = pair.alpha
    load(a)
    create(a, "primary")
    a.ok("exec 3<>/dev/rmirror0")      # the primary can be opened at all
    expect_error(a, f"exec 3<>/dev/rmirror0; {CTL} remove r0", "remove", "r0", "EBUSY")
    a.ok("test -b /dev/rmirror0")
    assert status(a)["name"] == "r0"
    remove(a)
    a.ok("test ! -e /dev/rmirror0 && test ! -e /sys/block/rmirror0")


def test_remove_while_mounted_is_ebusy(pair):
    a = pair.alpha
    connect_pair(pair)
    a.ok("mkfs.ext4 -q -F -E nodiscard /dev/rmirror0 && mount /dev/rmirror0 /mnt/a", timeout=180)
    expect_error(a, f"{CTL} remove r0", "remove", "r0", "EBUSY")
    a.ok("echo still-works > /mnt/a/f && sync && cat /mnt/a/f")
    a.ok("umount /mnt/a")
    remove(a)
    remove(pair.beta)


def test_secondary_open_is_emediumtype(pair):
    b = pair.beta
    load(b)
    create(b, "secondary")
    b.ok("test -b /dev/rmirror0")
    rc, out = b.run("dd if=/dev/rmirror0 of=/dev/null bs=4096 count=1")
    assert rc != 0 and "Wrong medium type" in out, out
    assert status(b)["role"] == "secondary"


def test_status_fields(pair):
    a = pair.alpha
    load(a)
    create(a, "primary")
    st = status(a)
    want = {"name": "r0", "minor": 0, "role": "primary", "peer": "10.99.0.2:7788", "local": "10.99.0.1:7788",
            "protocol": "C", "backing": "/dev/vdb", "size": S, "inline_max": 4096}
    assert {k: st.get(k) for k in want} == want, st
    assert st["cstate"] in ("standalone", "connecting"), st     # beta has no device: never connected
    for k in ("writes", "write_bytes", "small_writes", "large_writes", "acks", "out_of_sync", "inflight"):
        assert isinstance(st.get(k), int), f"{k} missing or not a number in {st}"
    text = a.ok(f"{CTL} status r0").strip()
    keys = [kv.split("=", 1)[0] for kv in text.split()]
    order = ["name", "minor", "role", "cstate", "peer", "local", "protocol", "backing", "size", "inline_max",
             "writes", "write_bytes", "small_writes", "large_writes", "acks", "out_of_sync", "inflight"]
    assert keys[:len(order)] == order, text
    assert a.ok(f"{CTL} table r0").split() == table(a, "primary").split()
    assert a.ok("cat /sys/block/rmirror0/size").strip() == str(S)


def test_threads_named_per_device(pair):
    """Each device's kernel threads carry its minor (rmirror<minor>_conn/_meta on both roles, _send/_sync/
    _reply on a primary, _recv/_ack on a secondary), so two devices' threads can be told apart in ps and in
    lockdep reports."""
    a = pair.alpha
    load(a)
    a.ok("truncate -s 64M /tmp/loop1.img && losetup /dev/loop1 /tmp/loop1.img")
    create(a, "primary")
    a.ok(f"{CTL} create r1 --table {q(table(a, 'secondary', sectors=64 * 2048, backing='/dev/loop1').replace(':7788', ':7789'))}")
    comms = sorted(a.ok("cat /proc/[0-9]*/comm | grep '^rmirror[0-9]' || true").split())
    assert comms == ["rmirror0_conn", "rmirror0_meta", "rmirror0_reply", "rmirror0_send", "rmirror0_sync",
                     "rmirror1_ack", "rmirror1_conn", "rmirror1_meta", "rmirror1_recv"], comms
    a.ok(f"{CTL} remove r1; {CTL} remove r0")
    assert a.ok("cat /proc/[0-9]*/comm | grep -c '^rmirror[0-9]' || true").strip() == "0"


def test_sysfs_attributes(pair):
    a = pair.alpha
    load(a)
    create(a, "primary")
    d = "/sys/block/rmirror0/rmirror"
    got = {k: a.ok(f"cat {d}/{k}").strip() for k in ("name", "role", "peer", "local", "protocol", "backing",
                                                      "inline_max")}
    assert got == {"name": "r0", "role": "primary", "peer": "10.99.0.2:7788", "local": "10.99.0.1:7788",
                   "protocol": "C", "backing": "/dev/vdb", "inline_max": "4096"}, got
    assert a.ok(f"cat {d}/cstate").strip() in ("standalone", "connecting")

    a.ok("dmesg -c > /dev/null")
    rc, out = sysfs_write(a, f"{d}/inline_max", "bogus")
    assert rc != 0 and "Invalid argument" in out, out
    assert "inline_max" in a.ok("dmesg"), "no kernel message for an invalid inline_max"
    rc, out = sysfs_write(a, f"{d}/inline_max", "8192")
    assert rc == 0, out
    assert a.ok(f"cat {d}/inline_max").strip() == "8192"
    assert status(a)["inline_max"] == 8192
    for bad in ("1000", "32769", "33280", "-512", ""):
        rc, out = sysfs_write(a, f"{d}/inline_max", bad)
        assert rc != 0 and "Invalid argument" in out, f"inline_max={bad!r} accepted: {out}"
        assert a.ok(f"cat {d}/inline_max").strip() == "8192"
    for good in ("0", "32768", "4096"):
        assert sysfs_write(a, f"{d}/inline_max", good)[0] == 0
        assert a.ok(f"cat {d}/inline_max").strip() == good
    # read-only attributes
    rc, out = sysfs_write(a, f"{d}/role", "secondary")
    assert rc != 0
    assert a.ok(f"cat {d}/role").strip() == "primary"


def test_rmmod_while_open_fails_device_keeps_working(pair):
    a = pair.alpha
    connect_pair(pair)
    out = a.ok("exec 3<>/dev/rmirror0; "
               "if rmmod rmirror; then echo RMMOD-SUCCEEDED; fi; "
               "grep -c '^rmirror ' /proc/modules; "
               "dd if=/dev/urandom of=/tmp/blk bs=64k count=4 2>/dev/null; "
               "dd if=/tmp/blk of=/dev/rmirror0 bs=64k oflag=direct 2>/dev/null && "
               "dd if=/dev/rmirror0 of=/tmp/back bs=64k count=4 iflag=direct 2>/dev/null && "
               "cmp /tmp/blk /tmp/back && echo IO-OK", timeout=120)
    assert "RMMOD-SUCCEEDED" not in out, out
    assert out.split("\n")[0] == "1" and "IO-OK" in out, out
    assert status(a)["cstate"] == "connected"


def test_rmmod_while_the_control_device_is_open_fails(pair):
    """An open /dev/rmirror-control pins the module, like device-mapper's control device: `rmirrorctl
    events` sleeps in the EVENTS ioctl, and the module's code must not go away under it. rmmod fails while
    it runs (and nothing crashes: the log scan), and succeeds once it has exited."""
    a = pair.alpha
    load(a)
    out = a.ok(f"({CTL} events --timeout 4 > /tmp/ev.out 2>&1 &); sleep 1; "
               "if rmmod rmirror 2>/dev/null; then echo RMMOD-SUCCEEDED; fi; "
               "for i in $(seq 80); do pidof rmirrorctl > /dev/null || break; sleep 0.1; done; "
               "rmmod rmirror && echo UNLOADED", timeout=60)
    assert "RMMOD-SUCCEEDED" not in out and "UNLOADED" in out, out
    assert not loaded(a)


def test_rmmod_idle_removes_devices(pair):
    a = pair.alpha
    load(a)
    a.ok("truncate -s 64M /tmp/loop0.img && losetup /dev/loop0 /tmp/loop0.img")
    create(a, "primary")
    a.ok(f"{CTL} create r1 --table {q(table(a, 'primary', sectors=65536, backing='/dev/loop0'))}")
    a.ok("test -b /dev/rmirror0 && test -b /dev/rmirror1")
    a.ok("rmmod rmirror", timeout=60)
    assert not loaded(a)
    a.ok("test ! -e /dev/rmirror0 && test ! -e /dev/rmirror1 && test ! -e /sys/block/rmirror0 && "
         "test ! -e /sys/block/rmirror1 && test ! -e /dev/rmirror-control")
    # the backing devices were released: they can be opened exclusively again
    a.ok("mkfs.ext4 -q -F /dev/loop0 && mount /dev/loop0 /mnt/a && umount /mnt/a")
    load(a)
    assert a.ok(f"{CTL} list").strip() == ""
    create(a, "primary")


# ---- connect / disconnect (DRBD's drbdsetup connect/disconnect) and the connection timers in sysfs -----------

DROP = "setpriv --reuid=1000 --regid=1000 --clear-groups"
AREA = (8 << 20, 1 << 20)          # (offset, bytes) of /dev/rmirror0 the disconnect tests write
# Quick retries, the default 5 s timeout: TCG guests on a loaded host miss 2 s heartbeats now and then.
RETRY = "connect_retry=500"


def test_disconnect_connect_primary(pair):
    """`disconnect` on the primary: standalone at once, no more connection attempts, writes complete locally
    and are marked out of sync, not replicated; `disconnect` again is a no-op; `connect` (EALREADY while
    connected) reconnects and resyncs: the written area is then identical on both backing disks."""
    a, b = pair.alpha, pair.beta
    connect_pair(pair, opts=RETRY)
    a.ok("dmesg -c > /dev/null")
    err = expect_error(a, f"{CTL} connect r0", "connect", "r0", "EALREADY")
    assert "hint: r0 is not standalone: it is already connecting or connected" in err, err
    assert "rmirror: r0: connect: not standalone (connected)" in a.ok("dmesg")

    before = status(a)
    rc, out, err, msgs = dmesg_during(a, f"{CTL} disconnect r0")
    assert rc == 0, err
    assert "rmirror: r0: disconnected by the user: standalone" in msgs, msgs
    assert status(a)["cstate"] == "standalone"
    off, n = AREA
    want = a.ok(f"dd if=/dev/urandom of=/tmp/blk bs=64k count={n >> 16} 2>/dev/null && "
                f"dd if=/tmp/blk of=/dev/rmirror0 bs=64k seek={off >> 16} oflag=direct 2>/dev/null && "
                "md5sum < /tmp/blk", timeout=120).split()[0]
    st = status(a)
    assert st["cstate"] == "standalone" and st["out_of_sync"] == n >> 9, st
    b_attempts = status(b)["connect_attempts"]
    time.sleep(3)
    st2 = status(a)
    assert (st2["cstate"], st2["connect_attempts"]) == ("standalone", st["connect_attempts"]), (st, st2)
    assert status(b)["connect_attempts"] == b_attempts, "alpha kept connecting while standalone"
    # idempotent, as drbdsetup disconnect
    rc, out, err, msgs = dmesg_during(a, f"{CTL} disconnect r0")
    assert rc == 0 and "r0: disconnect: already standalone" in msgs, (err, msgs)
    assert md5_dev(b, offset=off, nbytes=n) != want, "written while standalone, yet on the peer"

    rc, out, err, msgs = dmesg_during(a, f"{CTL} connect r0")
    assert rc == 0 and "rmirror: r0: connect: connecting to the peer 10.99.0.2:7788 again" in msgs, (err, msgs)
    wait_cstate(a, timeout=60)
    st = wait_in_sync(a, timeout=120)
    assert st["connects"] > before["connects"] and st["resynced"] - before["resynced"] >= n >> 9, st
    assert md5_dev(b, offset=off, nbytes=n) == want, "the resync did not bring the standalone writes"
    assert md5_dev(a, offset=off, nbytes=n) == want


def test_disconnect_connect_secondary(pair):
    """`disconnect` on the secondary: standalone; it still accepts the primary's sockets but closes them at
    once (one log line), so the primary keeps retrying every connect_retry without waiting for a handshake,
    and never connects; `connect` on the secondary lets it in again."""
    a, b = pair.alpha, pair.beta
    connect_pair(pair, opts=RETRY)
    a.ok("dmesg -c > /dev/null")
    rc, out, err, msgs = dmesg_during(b, f"{CTL} disconnect r0")
    assert rc == 0 and "rmirror: r0: disconnected by the user: standalone" in msgs, (err, msgs)
    b1 = status(b)
    assert b1["cstate"] == "standalone"
    s1 = status(a)
    time.sleep(3)
    s2 = status(a)
    # connect_retry is 500 ms: a primary waiting for each handshake (timeout 5 s) would manage at most 1
    assert s2["connect_attempts"] - s1["connect_attempts"] >= 3, (s1, s2)
    assert s2["connects"] == s1["connects"] and s2["cstate"] != "connected", (s1, s2)
    b2 = status(b)
    assert b2["cstate"] == "standalone" and b2["connects"] == b1["connects"], (b1, b2)
    assert b2["connect_attempts"] > b1["connect_attempts"], "beta did not even accept the sockets"
    blog = b.ok("dmesg")
    assert blog.count("r0: refused a connection from 10.99.0.1:7788: standalone") == 1, blog
    alog = a.ok("dmesg")
    assert ("the peer closed the connection before its handshake" in alog
            or "cannot send the handshake" in alog), alog
    assert "no handshake received in time" not in alog, alog

    rc, out, err, msgs = dmesg_during(b, f"{CTL} connect r0")
    assert rc == 0 and "rmirror: r0: connect: accepting the peer 10.99.0.1:7788 again" in msgs, (err, msgs)
    wait_cstate(b, timeout=30)
    assert wait_cstate(a, timeout=30)["connects"] > s2["connects"]


def test_connect_disconnect_errors(pair):
    """Unknown names are ENXIO, unprivileged callers EPERM (and change nothing), `connect` on a device that
    is connecting is EALREADY with a kernel message; a lone primary goes standalone and back."""
    a = pair.alpha
    load(a)
    for verb in ("connect", "disconnect"):
        expect_error(a, f"{CTL} {verb} nosuch", verb, "nosuch", "ENXIO")
    create(a, "primary", opts=RETRY)
    for verb in ("connect", "disconnect"):
        expect_error(a, f"{CTL} {verb} r00", verb, "r00", "ENXIO")
    a.ok("dmesg -c > /dev/null")
    expect_error(a, f"{CTL} connect r0", "connect", "r0", "EALREADY")
    assert re.search(r"rmirror: r0: connect: not standalone \((connecting|handshake)\)", a.ok("dmesg"))
    a.ok("chmod 0666 /dev/rmirror-control")
    for verb in ("connect", "disconnect"):
        expect_error(a, f"{DROP} {CTL} {verb} r0", verb, "r0", "EPERM")
    assert status(a)["cstate"] != "standalone"
    a.ok(f"{CTL} disconnect r0")
    assert status(a)["cstate"] == "standalone"
    a.ok(f"{CTL} connect r0")
    assert status(a)["cstate"] in ("connecting", "handshake")


TIMER_FILES = {"ping_interval": 1000, "timeout": 5000, "probation": 3000, "connect_retry": 1000, "outage_max": 60000}


def write_with_dmesg(vm, path, value):
    """Write `value` to a sysfs file with the kernel ring buffer cleared first: (rc, shell error, kernel lines)."""
    rc, out, err = vm.run3(f"dmesg -c > /dev/null; busybox ash -c {q(f'echo {value} > {path}')}; rc=$?; "
                           "dmesg; exit $rc")
    return rc, err, out


def test_sysfs_timers(pair):
    """The connection timers are sysfs files: defaults read back; a bad value is EINVAL with the rule in the
    kernel log (checked against the other timers too); a change while connected is EBUSY; after
    `disconnect` a change is taken, read back, and used by the next connection (pings every 100 ms);
    `rmirrorctl table` keeps the creation values."""
    a, b = pair.alpha, pair.beta
    d = "/sys/block/rmirror0/rmirror"
    pair.each(load)
    create(b, "secondary")
    create(a, "primary")
    read = f"for f in {' '.join(TIMER_FILES)}; do echo $f=$(cat {d}/$f); done"
    assert dict(l.split("=") for l in a.ok(read).split()) == {k: str(v) for k, v in TIMER_FILES.items()}
    wait_cstate(a, timeout=30)
    for f, v, msg in (("ping_interval", "0", "ping_interval: ping interval must be 100..=60000 ms"),
                      ("timeout", "abc", "timeout: expected milliseconds, a decimal number"),
                      ("timeout", "", "timeout: expected milliseconds, a decimal number"),
                      ("timeout", "700000", "timeout: timeout must be at most 600000 ms"),
                      ("timeout", "1000", "timeout: timeout must be greater than the ping interval"),
                      ("connect_retry", "99", "connect_retry: connect retry must be 100..=600000 ms"),
                      ("outage_max", "4999", "outage_max: outage max must be 0 or timeout..=86400000 ms")):
        rc, err, msgs = write_with_dmesg(a, f"{d}/{f}", v)
        assert rc != 0 and "Invalid argument" in err, (f, v, err)
        assert f"rmirror: r0: {msg}" in msgs, (f, v, msgs)
    rc, err, msgs = write_with_dmesg(a, f"{d}/timeout", "3000")
    assert rc != 0 and "busy" in err.lower(), err
    assert "rmirror: r0: timeout: cannot change while connected (rmirrorctl disconnect first)" in msgs, msgs
    assert dict(l.split("=") for l in a.ok(read).split()) == {k: str(v) for k, v in TIMER_FILES.items()}

    a.ok(f"{CTL} disconnect r0")
    for f, v in (("ping_interval", 100), ("timeout", 3000), ("outage_max", 0), ("probation", 0)):
        rc, out = sysfs_write(a, f"{d}/{f}", v)
        assert rc == 0, (f, v, out)
        assert a.ok(f"cat {d}/{f}").strip() == str(v)
    rc, err, msgs = write_with_dmesg(a, f"{d}/outage_max", "2999")       # below the new timeout
    assert rc != 0 and "outage max must be 0 or timeout" in msgs, (err, msgs)
    assert a.ok(f"{CTL} table r0").split() == table(a, "primary").split()
    a.ok(f"{CTL} connect r0")
    wait_cstate(a, timeout=30)
    # 100 ms pings: at least 6 in 2 s (1000 ms ones: at most 3)
    pings = f"sed 's/.* pings=\\([0-9]*\\) .*/\\1/' {d}/stats"
    out = a.ok(f"p0=$({pings}); sleep 2; p1=$({pings}); echo $((p1 - p0))")
    assert int(out.strip()) >= 6, f"{out.strip()} pings in 2 s with ping_interval=100"
    assert status(a)["cstate"] == "connected"
