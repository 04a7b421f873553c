# SPDX-License-Identifier: GPL-2.0
"""The data path: writes through alpha's /dev/rmirror0 reach beta's backing disk, byte for byte.

fio with crc32c verification (mixed 4 KiB - 128 KiB writes, so both the small-write and the
notify+data paths are used), then md5 of both backing disks; ext4 built, written, checked on
alpha, then read back from beta's own disk."""

import pytest

from helpers import CTL, S, connect_pair, q, remove, reset, status

MIB = S // 2048  # mirrored size in MiB


@pytest.fixture(autouse=True)
def clean(pair):
    for vm in (pair.alpha, pair.beta):
        reset(vm)
    yield
    for vm in (pair.alpha, pair.beta):
        if not vm.broken:
            reset(vm)


def disk_md5(vm, sectors=S):
    """md5 of the first `sectors` sectors of the guest's backing disk."""
    out = vm.ok(f"dd if=/dev/vdb bs=1M count={sectors // 2048} 2>/dev/null | md5sum", timeout=300)
    return out.split()[0]


def test_fio_verify_and_disks_identical(pair):
    a, b = pair.alpha, pair.beta
    # Start from disks that differ, so equality at the end means the mirror wrote them.
    a.ok("dd if=/dev/urandom of=/dev/vdb bs=1M count=4 2>/dev/null; sync")
    connect_pair(pair)
    fio = ("fio --name=mirror --filename=/dev/rmirror0 --direct=1 --ioengine=psync --rw=randwrite "
           "--bsrange=4k-128k --bs_unaligned=0 --size=24m --offset=0 --io_size=24m --verify=crc32c "
           "--verify_fatal=1 --do_verify=1 --randrepeat=1 --output-format=terse")
    a.ok(fio, timeout=600)
    # Plus a sequential pass that covers the whole mirrored area with large writes.
    a.ok(f"dd if=/dev/urandom of=/dev/rmirror0 bs=128k count={MIB * 8} oflag=direct 2>/dev/null", timeout=600)
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=64 seek=100 oflag=direct 2>/dev/null")
    st = status(a)
    assert st["cstate"] == "connected"
    assert st["small_writes"] > 0, st      # 4 KiB writes took the inline path
    assert st["large_writes"] > 0, st      # 128 KiB writes took notify + data
    assert st["acks"] == st["writes"], st  # protocol C: every write was acknowledged durable
    assert st["out_of_sync"] == 0 and st["inflight"] == 0, st
    remove(a)
    remove(b)
    assert disk_md5(a) == disk_md5(b)


def test_small_write_threshold_is_live(pair):
    a = pair.alpha
    connect_pair(pair)
    a.ok("echo 0 > /sys/block/rmirror0/rmirror/inline_max")
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=8 oflag=direct 2>/dev/null")
    st = status(a)
    assert st["small_writes"] == 0 and st["large_writes"] == 8, st
    a.ok("echo 8192 > /sys/block/rmirror0/rmirror/inline_max")
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=8k count=4 oflag=direct 2>/dev/null")
    st = status(a)
    assert st["small_writes"] == 4 and st["large_writes"] == 8, st


def test_ext4_files_reach_the_secondary_disk(pair):
    a, b = pair.alpha, pair.beta
    connect_pair(pair)
    a.ok("mkfs.ext4 -q -F /dev/rmirror0", timeout=300)
    a.ok("mkdir -p /mnt/a && mount /dev/rmirror0 /mnt/a")
    a.ok("dd if=/dev/urandom of=/mnt/a/big bs=1M count=6 2>/dev/null && "
         "mkdir /mnt/a/dir && for i in $(seq 1 40); do echo file $i > /mnt/a/dir/f$i; done && "
         "cp /p/rmirrorctl /mnt/a/tool && sync", timeout=300)
    want = a.ok("cd /mnt/a && md5sum big tool dir/f1 dir/f40 && ls dir | wc -l")
    a.ok("umount /mnt/a")
    a.ok("fsck.ext4 -fn /dev/rmirror0", timeout=300)
    # Flushes travelled as barriers: the journal commits must have been acknowledged.
    st = status(a)
    assert st["acks"] == st["writes"] and st["out_of_sync"] == 0, st
    remove(a)
    remove(b)
    b.ok("mkdir -p /mnt/b && mount -o ro,noload /dev/vdb /mnt/b")
    got = b.ok("cd /mnt/b && md5sum big tool dir/f1 dir/f40 && ls dir | wc -l")
    b.ok("umount /mnt/b")
    assert got == want
    assert "40" in got.splitlines()[-1]


def test_writes_without_peer_complete_and_are_counted(pair):
    """With the secondary gone, the primary keeps serving writes and counts them out of sync
    (the fracture bitmap and resync consume this next)."""
    a, b = pair.alpha, pair.beta
    connect_pair(pair)
    remove(b)
    a.ok("for i in $(seq 1 100); do grep -q 'cstate=connected' /sys/block/rmirror0/rmirror/stats || exit 0; "
         "sleep 0.1; done; exit 1")
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=16 oflag=direct 2>/dev/null")
    st = status(a)
    assert st["out_of_sync"] == 16 * 8, st
    assert st["cstate"] != "connected", st
