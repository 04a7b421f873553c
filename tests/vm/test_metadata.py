# SPDX-License-Identifier: GPL-2.0
"""On-disk metadata (Documentation/ondisk-format.rst): `rmirrorctl create-md` initialises it, the kernel
refuses a device whose metadata is missing, of another version, corrupt or too small (the reason in the
kernel log, the errno to the caller, nothing written), and the fracture bitmap survives the removal of a
device: writes made while the peer was away are resynced after the device is created again, exactly
those regions and no more.

Alpha keeps external metadata (dm-linear splits its disk into a data and a metadata device), beta
internal metadata at the end of its disk, so both layouts run in one scenario."""

import json

import pytest

from helpers import (CHECK, CTL, IP, PEER, S, copy_file, create, cut, dmesg_during, expect_error, fio, fio_result,
                     heal, load, md5_dev, q, remove, same_start, status, sysfs_write, table, verify,
                     wait_background, background, wait_cstate, wait_in_sync)

pytestmark = pytest.mark.usefixtures("clean_pair")

DISK_MIB = 256
DAY0 = 6                      # core state::resync::DAY0, the --clear-bitmap generation
SMALL = 32 * 2048             # a 32 MiB device where a full sync must run
DATA = S                      # alpha's data device: the first 240 MiB of vdb
META_SECTORS = 16 * 2048      # alpha's metadata device: the 16 MiB after it
EXT = "/dev/mapper/rmdata"
EXT_META = "/dev/mapper/rmmeta"


def dump_md(vm, dev="/dev/vdb", meta_dev=None):
    extra = f" --meta-dev {meta_dev}" if meta_dev else ""
    return json.loads(vm.ok(f"{CTL} dump-md {dev}{extra} -o json"))


def md5_tail(vm, mib=1):
    """md5 of the last `mib` MiB of vdb (where internal metadata lives)."""
    return md5_dev(vm, "/dev/vdb", mib << 20, (DISK_MIB - mib) << 20)


def split_alpha(a):
    """dm-linear data and metadata devices on alpha's disk."""
    a.ok(f"dmsetup create rmdata --table {q(f'0 {DATA} linear /dev/vdb 0')} && "
         f"dmsetup create rmmeta --table {q(f'0 {META_SECTORS} linear /dev/vdb {DATA}')} && "
         f"dmsetup mknodes && test -b {EXT} && test -b {EXT_META}")


def test_metadata_refused_with_reason_and_nothing_written(pair):
    """Every kind of bad metadata is refused by create with its errno and a kernel message naming the
    problem; the disk is byte-for-byte unchanged afterwards. create-md refuses a disk in use and
    existing metadata without --force."""
    a = pair.alpha
    load(a)
    a.ok(f"dd if=/dev/zero of=/dev/vdb bs=1M seek={DISK_MIB - 1} count=1 oflag=direct 2>/dev/null")
    line = table(a, "primary", opts="meta=internal")
    cmd = f"{CTL} create r0 --table {q(line)}"

    def refused(errno, reason, cmd=cmd):
        before = md5_tail(a), md5_dev(a)
        rc, out, err, msgs = dmesg_during(a, cmd)
        assert rc != 0, f"create succeeded with bad metadata: {out}{err}"
        assert f"({errno})" in err, f"want {errno}: {err}"
        assert reason in msgs, f"no {reason!r} in the kernel log:\n{msgs}"
        assert (md5_tail(a), md5_dev(a)) == before, "a refused create wrote to the disk"
        assert a.run(f"test -e /dev/rmirror0")[0] != 0

    refused("ENODATA", "no rmirror metadata")
    out = a.ok(f"{CTL} create-md /dev/vdb")
    md = dump_md(a)
    data = md["data_sectors"]
    assert S <= data < DISK_MIB * 2048, (S, md)
    assert str(data) in out, f"create-md does not say the usable size: {out}"
    sb = md["sb_offset"] * 512
    # The table's length beyond the data area.
    refused("ENOSPC", "exceeds the data area",
            cmd=f"{CTL} create r0 --table {q(table(a, 'primary', sectors=data + 8, opts='meta=internal'))}")
    # One byte flipped in the reserved part of the superblock: the checksum catches it.
    a.ok(f"printf '\\001' | dd of=/dev/vdb bs=1 seek={sb + 0x200} conv=notrunc 2>/dev/null && sync")
    refused("EBADMSG", "metadata checksum mismatch")
    # A version this code does not read (checked before the checksum).
    a.ok(f"{CTL} create-md /dev/vdb --force")
    a.ok(f"printf '\\002' | dd of=/dev/vdb bs=1 seek={sb + 4} conv=notrunc 2>/dev/null && sync")
    refused("EOPNOTSUPP", "unsupported metadata version")
    # External metadata where the table says internal, and the reverse.
    a.ok(f"{CTL} create-md /dev/vdb --force")
    md5_before = md5_tail(a)
    rc, out, err = a.run3(f"{CTL} create-md /dev/vdb")
    assert rc != 0 and "--force" in err, f"create-md overwrote metadata without --force: {out}{err}"
    assert md5_tail(a) == md5_before
    # Valid metadata: the device comes up, its table names the metadata, and create-md cannot touch the
    # disk while the device holds it.
    a.ok(cmd)
    assert "meta=internal" in a.ok(f"{CTL} table r0")
    st = status(a)
    assert st["out_of_sync"] == 0, st
    expect_error(a, f"{CTL} create-md /dev/vdb --force", "create-md", "/dev/vdb", "EBUSY")
    remove(a)
    md = dump_md(a)
    assert md["out_of_sync_sectors"] == 0 and md["data_sectors"] == data, md


def test_bitmap_survives_removal_and_resyncs_only_what_was_missed(pair):
    """Alpha (external metadata) writes while beta is unreachable, with the outage queue off so every
    write goes to the fracture bitmap; alpha's device is removed and created again, and its bitmap comes
    back from disk; after the link heals exactly the marked regions are copied; every acknowledged
    write is on beta and the data areas are md5-equal."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    same_start(pair)
    split_alpha(a)
    # Fresh zeroed disks, declared identical on both sides: no initial sync.
    a.ok(f"{CTL} create-md {EXT} --meta-dev {EXT_META} --clear-bitmap")
    b.ok(f"{CTL} create-md /dev/vdb --force --clear-bitmap")
    alpha_line = table(a, "primary", backing=EXT, opts=f"timeout=2000 ping_interval=500 probation=1000 "
                                                          f"meta={EXT_META}")
    create(b, "secondary", opts="timeout=2000 ping_interval=500 probation=1000 meta=internal")
    a.ok(f"{CTL} create r0 --table {q(alpha_line)}")
    wait_cstate(b)
    wait_cstate(a)
    a.ok(f"{CHECK} write /dev/rmirror0 --log /tmp/c1.log --size 16M --jobs 4 --count 200 --seed 1", timeout=300)
    # Writes with beta unreachable go to the bitmap (no outage queue).
    rc, err = sysfs_write(a, "/sys/block/rmirror0/rmirror/outage_queue_bytes", 0)
    assert rc == 0, err
    pair.each(lambda vm: cut(vm, IP[PEER[vm.name]]))
    wait_cstate(a, "outage", timeout=30)
    background(a, fio(32, 8, 100), "fio")
    a.ok(f"{CHECK} write /dev/rmirror0 --log /tmp/c2.log --size 16M --jobs 4 --count 300 --seed 2", timeout=300)
    rc, out = wait_background(a, "fio", 300)
    assert rc == 0, out
    assert fio_result(out)[0] == 0, out
    marked = status(a)["out_of_sync"]
    assert marked > 0
    remove(a)
    md = dump_md(a, EXT, EXT_META)
    assert md["out_of_sync_sectors"] == marked, (md, marked)
    # The bitmap comes back with the device.
    rc, out, err, msgs = dmesg_during(a, f"{CTL} create r0 --table {q(alpha_line)}")
    assert rc == 0, out + err
    assert f"bitmap: {marked // 2} KiB out of sync" in msgs, msgs
    assert status(a)["out_of_sync"] == marked
    pair.each(lambda vm: vm.ok("iptables -F"))
    st = wait_in_sync(a)
    # Exactly the marked regions were copied (this connection's resync, nothing else was written).
    assert st["resynced"] == marked, (st, marked)
    for log in ("/tmp/c1.log", "/tmp/c2.log"):
        copy_file(a, b, log)
    res = verify(b, "/dev/vdb", ["/tmp/c1.log", "/tmp/c2.log"], 0, 16)
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0, res
    assert res["present"] > 0, res
    assert md5_dev(a, EXT, 64 << 20) == md5_dev(b, "/dev/vdb", 64 << 20)
    a.ok("sleep 1")  # the md threads write the superblocks within 100 ms
    ma, mb = dump_md(a, EXT, EXT_META), dump_md(b)
    pair.each(remove)
    assert ma["out_of_sync_sectors"] == 0 and mb["out_of_sync_sectors"] == 0, (ma, mb)
    # Both hold the generation alpha started when it wrote without beta; the resync ended it.
    assert ma["current_uuid"] == mb["current_uuid"] != f"{DAY0:016X}", (ma, mb)
    assert ma["bitmap_uuid"] == mb["bitmap_uuid"] == f"{0:016X}", (ma, mb)
    assert "consistent" in mb["flags"], mb


def test_initial_sync_is_never_assumed(pair):
    """Fresh metadata on both sides: the primary refuses to replicate and goes standalone, saying what
    to do, and beta's disk is untouched. Then alpha's metadata is written with --overwrite-data-of-peer:
    a full sync copies alpha's data (written earlier) to beta, every acknowledged write lands there and
    the devices are md5-equal; beta is consistent and both hold the same generation."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    same_start(pair)
    pair.each(lambda vm: vm.ok(f"{CTL} create-md /dev/vdb --force"))
    create(b, "secondary", sectors=SMALL, opts="meta=internal")
    before = md5_dev(b, "/dev/vdb", SMALL * 512)
    rc, out, err, msgs = dmesg_during(a, f"{CTL} create r0 --table "
                                      f"{q(table(a, 'primary', sectors=SMALL, opts='meta=internal'))} && "
                                      f"sleep 4")
    assert rc == 0, out + err
    assert "both sides have fresh metadata" in msgs and "standalone" in msgs, msgs
    st = wait_cstate(a, "standalone", timeout=30)
    attempts = st["connect_attempts"]
    a.ok(f"{CHECK} write /dev/rmirror0 --log /tmp/i1.log --size 8M --jobs 4 --count 200 --seed 11", timeout=300)
    a.ok("sleep 3")
    st = status(a)
    assert st["cstate"] == "standalone" and st["connect_attempts"] == attempts, st
    assert st["out_of_sync"] > 0, st
    assert md5_dev(b, "/dev/vdb", SMALL * 512) == before, "beta's disk changed without a connection"
    assert status(b)["disk"] == "inconsistent", status(b)
    # The user says alpha's data counts.
    remove(a)
    a.ok(f"{CTL} create-md /dev/vdb --force --overwrite-data-of-peer")
    rc, out, err, msgs = dmesg_during(a, f"{CTL} create r0 --table "
                                      f"{q(table(a, 'primary', sectors=SMALL, opts='meta=internal'))}")
    assert rc == 0, out + err
    st = wait_in_sync(a, timeout=300)
    assert st["resynced"] == SMALL, st
    msgs = a.ok("dmesg")
    assert "full sync to the peer" in msgs and "sync-source-full (rule 30)" in msgs, msgs
    copy_file(a, b, "/tmp/i1.log")
    res = verify(b, "/dev/vdb", ["/tmp/i1.log"], 0, 8)
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0 and res["present"] > 0, res
    assert md5_dev(a, "/dev/vdb", SMALL * 512) == md5_dev(b, "/dev/vdb", SMALL * 512)
    assert status(b)["disk"] == "up_to_date"
    a.ok("sleep 1")
    ma, mb = dump_md(a), dump_md(b)
    pair.each(remove)
    assert ma["current_uuid"] == mb["current_uuid"] and "consistent" in mb["flags"], (ma, mb)


def test_split_brain_is_detected_and_nothing_is_overwritten(pair):
    """Both sides write while apart: alpha as primary during a partition, beta after its device was
    created again as a primary (a manual failover). When beta is a secondary again and the link heals,
    both sides log split brain, alpha goes standalone, and each disk still holds its own writes."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    same_start(pair)
    pair.each(lambda vm: vm.ok(f"{CTL} create-md /dev/vdb --force --clear-bitmap"))
    opts = "meta=internal timeout=2000 ping_interval=500 probation=1000"
    create(b, "secondary", opts=opts)
    create(a, "primary", opts=opts)
    wait_cstate(b)
    wait_cstate(a)
    a.ok(f"{CHECK} write /dev/rmirror0 --log /tmp/s1.log --size 8M --jobs 4 --count 100 --seed 21", timeout=300)
    pair.each(lambda vm: cut(vm, IP[PEER[vm.name]]))
    wait_cstate(a, "outage", timeout=30)
    # Alpha writes during the partition (kept in its outage queue: still a new generation).
    a.ok(f"{CHECK} write /dev/rmirror0 --log /tmp/s2.log --offset 8M --size 8M --jobs 4 --count 100 "
         f"--seed 22", timeout=300)
    # Beta is promoted by hand and written.
    remove(b)
    create(b, "primary", opts=opts)
    b.ok(f"{CHECK} write /dev/rmirror0 --log /tmp/s3.log --offset 16M --size 8M --jobs 4 --count 100 "
         f"--seed 23", timeout=300)
    remove(b)
    md5_beta = md5_dev(b, "/dev/vdb", 24 << 20)
    create(b, "secondary", opts=opts)
    t0 = pair.each(lambda vm: vm.ok("echo rmirror-test: heal > /dev/kmsg && iptables -F"))
    st = wait_cstate(a, "standalone", timeout=60)
    msgs_a, msgs_b = a.ok("dmesg"), b.ok("dmesg")
    assert "split-brain" in msgs_a and "split brain: both sides wrote while apart" in msgs_a, msgs_a
    assert "split brain" in msgs_b, msgs_b
    a.ok("sleep 3")
    assert status(a)["connect_attempts"] == st["connect_attempts"], "standalone, yet still connecting"
    # Nothing was overwritten: beta holds its own writes and none of alpha's partition writes.
    remove(b)
    assert md5_dev(b, "/dev/vdb", 24 << 20) == md5_beta, "beta's disk changed after the split brain"
    res = verify(b, "/dev/vdb", ["/tmp/s3.log"], 16, 8)
    assert res["rc"] == 0 and res["missing"] == 0 and res["present"] > 0, res
    for log in ("/tmp/s1.log", "/tmp/s2.log"):
        copy_file(a, b, log)
    res = verify(b, "/dev/vdb", ["/tmp/s2.log"], 8, 8)
    assert res["present"] == 0, f"alpha's partition writes reached beta: {res}"
    remove(a)
    res = verify(a, "/dev/vdb", ["/tmp/s1.log", "/tmp/s2.log"], 0, 16)
    assert res["rc"] == 0 and res["missing"] == 0 and res["present"] > 0, res
