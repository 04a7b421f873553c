# SPDX-License-Identifier: GPL-2.0
"""Data path: writes through alpha's /dev/rmirror0 (primary, protocol C) land on both backing disks."""

import uuid

import pytest

from helpers import CTL, connect_pair, create, load, remove, status, sysfs_write

# Mixed sizes: 4 KiB writes take the inline (small-write) path (inline_max defaults to 4096), 128 KiB ones
# the long path; randommap (fio's default) means no block is written twice, so verify is exact.
FIO = ("fio --name=mirror --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw=randwrite "
       "--bssplit=4k/40:8k/10:32k/15:64k/10:128k/25 --size=12M --iodepth=8 --verify=crc32c "
       "--verify_fatal=1 --do_verify=1 --randrepeat=0 --output-format=terse --terse-version=3")


pytestmark = pytest.mark.usefixtures("clean_pair")

# The fio test mirrors 32 MiB: its sequential pass and the md5 of both disks cover the whole device
# (the emulated link carries ~5 MB/s, so the full 240 MiB took three minutes for no more coverage).
FIO_SECTORS = 32 * 2048


def md5_first(vm, sectors):
    """md5 of the first `sectors` sectors of the guest's /dev/vdb."""
    bs, count = (1 << 20, sectors // 2048) if sectors % 2048 == 0 else (512, sectors)
    return vm.ok(f"dd if=/dev/vdb bs={bs} count={count} 2>/dev/null | md5sum", timeout=300).split()[0]


def test_fio_verify_and_disks_equal(pair):
    a, b = pair.alpha, pair.beta
    # different garbage on the two disks first, so "equal" cannot come from two untouched disks
    a.ok("dd if=/dev/urandom of=/dev/vdb bs=1M count=16 oflag=direct 2>/dev/null")
    b.ok("dd if=/dev/urandom of=/dev/vdb bs=1M count=16 oflag=direct 2>/dev/null")
    connect_pair(pair, sectors=FIO_SECTORS)
    before = status(a)
    out = a.ok(FIO, timeout=600)
    fields = out.strip().split("\n")[-1].split(";")
    assert fields[4] == "0", f"fio error {fields[4]}: {out}"
    st = status(a)
    assert st["cstate"] == "connected", st
    assert st["small_writes"] > before["small_writes"], f"no small (inline) writes counted: {st}"
    assert st["large_writes"] > before["large_writes"], f"no large writes counted: {st}"
    assert st["writes"] - before["writes"] >= st["small_writes"] + st["large_writes"] - \
        before["small_writes"] - before["large_writes"], st
    assert st["write_bytes"] - before["write_bytes"] >= 12 << 20, st
    assert st["acks"] > before["acks"], st
    assert st["inflight"] == 0 and st["out_of_sync"] == 0, st
    # A sequential pass over the whole mirrored area with large writes, then some small ones.
    a.ok(f"dd if=/dev/urandom of=/dev/rmirror0 bs=128k count={FIO_SECTORS // 256} oflag=direct 2>/dev/null",
         timeout=600)
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=64 seek=100 oflag=direct 2>/dev/null")
    st = status(a)
    # Protocol C: every write (and flush) was acknowledged as durable by the peer.
    assert st["acks"] == st["writes"] and st["out_of_sync"] == 0 and st["inflight"] == 0, st
    remove(a)
    remove(b)
    sums = pair.each(lambda vm: md5_first(vm, FIO_SECTORS))
    ma, mb = sums["alpha"], sums["beta"]
    assert ma == mb, f"backing disks differ after fio: alpha {ma} beta {mb}"


def test_ext4_files_reach_secondary(pair):
    a, b = pair.alpha, pair.beta
    connect_pair(pair)
    tag = uuid.uuid4().hex
    a.ok("mkfs.ext4 -q -F -E nodiscard /dev/rmirror0 && mount /dev/rmirror0 /mnt/a", timeout=300)
    a.ok(f"echo {tag} > /mnt/a/tag.txt && mkdir -p /mnt/a/d/e && "
         "head -c 1048576 /dev/urandom > /mnt/a/d/one-mib && "
         "head -c 5000000 /dev/urandom > /mnt/a/d/e/five-mb && "
         "head -c 3000 /dev/urandom > /mnt/a/small && ln -s d/one-mib /mnt/a/link", timeout=120)
    files = "tag.txt d/one-mib d/e/five-mb small link"
    want = a.ok(f"cd /mnt/a && sha256sum {files}")
    a.ok("umount /mnt/a", timeout=120)
    a.ok("fsck.ext4 -fn /dev/rmirror0", timeout=300)
    st = status(a)
    assert st["cstate"] == "connected", st
    # The journal's flushes travelled as barriers and were acknowledged too.
    assert st["acks"] == st["writes"] and st["out_of_sync"] == 0, st
    remove(b)
    b.ok("mount -o ro,noload /dev/vdb /mnt/b")
    try:
        got = b.ok(f"cd /mnt/b && sha256sum {files}")
        assert got == want, f"files differ on beta's disk:\nalpha:\n{want}\nbeta:\n{got}"
        assert b.ok("cat /mnt/b/tag.txt").strip() == tag
        assert b.ok("readlink /mnt/b/link").strip() == "d/one-mib"
    finally:
        b.run("umount /mnt/b")
    b.ok("e2fsck -fn /dev/vdb", timeout=300)
    remove(a)


def data_msgs(before, after, peer_before, peer_after):
    """Messages a node sent between two status snapshots, heartbeats left out: its own pings and its
    answers to the peer's (each within one, as a ping may be in flight at either end)."""
    d = lambda s0, s1, k: s1[k] - s0[k]  # noqa: E731
    return d(before, after, "msgs_sent") - d(before, after, "pings") - d(peer_before, peer_after, "pings")


def test_small_write_threshold_is_live(pair):
    """sysfs inline_max moves writes between the small-write and the notify+data path at once; the
    driver's message counters show one message per small write and two per long-path write, and one ack
    per write at QD1 from the secondary (protocol C)."""
    a, b = pair.alpha, pair.beta
    connect_pair(pair)
    a.ok("echo 0 > /sys/block/rmirror0/rmirror/inline_max")
    a0, b0 = status(a), status(b)
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=8 oflag=direct 2>/dev/null")
    a1, b1 = status(a), status(b)
    assert a1["small_writes"] == 0 and a1["large_writes"] == 8, a1
    long_path = data_msgs(a0, a1, b0, b1)
    assert 15 <= long_path <= 17, f"8 long-path writes should be 16 messages (notify + data): {long_path}"
    a.ok("echo 8192 > /sys/block/rmirror0/rmirror/inline_max")
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=8k count=4 oflag=direct 2>/dev/null")
    a2, b2 = status(a), status(b)
    assert a2["small_writes"] == 4 and a2["large_writes"] == 8, a2
    small = data_msgs(a1, a2, b1, b2)
    acks = data_msgs(b1, b2, a1, a2)
    assert 3 <= small <= 5, f"4 small writes should be 4 messages: {small}"
    assert 3 <= acks <= 5, f"4 writes at QD1 should be 4 acks: {acks}"
    print(f"messages sent: 8 long-path writes {long_path}, 4 small writes {small}, their acks {acks}; "
          f"pushes {a2['pushes'] - a1['pushes']} (primary), {b2['pushes'] - b1['pushes']} (secondary)")


def test_io_uring_writes_without_waiting(pair):
    """The device supports REQ_NOWAIT (its backing disk does): io_uring submits inline and gets
    BLK_STS_AGAIN where a write would wait (an activity log transaction for a new extent, an overlapping
    write in flight), then resubmits from a worker. With on-disk metadata, so the first writes to an
    extent need a transaction. The data verifies and both disks end equal."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    pair.each(lambda vm: vm.ok(f"{CTL} create-md /dev/vdb --force --clear-bitmap"))
    connect_pair(pair, opts="meta=internal")
    a.ok("fio --name=uring --filename=/dev/rmirror0 --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k "
         "--size=4M --offset=8M --iodepth=16 --verify=crc32c --verify_fatal=1 --do_verify=1 --randrepeat=0 "
         "--output-format=terse --terse-version=3", timeout=300)
    # RWF_NOWAIT writes (a device without REQ_NOWAIT refuses them: EOPNOTSUPP) to extents now active,
    # without overlaps: none has to wait, so none gets EAGAIN either.
    a.ok("fio --name=nowait --filename=/dev/rmirror0 --ioengine=pvsync2 --nowait=1 --direct=1 --rw=write "
         "--bs=4k --size=256k --offset=8M --output-format=terse --terse-version=3", timeout=120)
    a.ok("for i in $(seq 1 300); do grep -q 'inflight=0 ' /sys/block/rmirror0/rmirror/stats && exit 0; "
         "sleep 0.1; done; exit 1")
    sums = pair.each(lambda vm: vm.ok("dd if=/dev/vdb bs=1M skip=8 count=4 2>/dev/null | md5sum").split()[0])
    assert sums["alpha"] == sums["beta"], sums


def test_writes_without_peer_complete_and_are_counted(pair):
    """With the secondary gone, the primary keeps serving writes: an outage that began while replicating
    keeps them in the outage queue (16 writes of 4 KiB, nothing marked in the bitmap), whose bound cannot
    change while it holds writes (EBUSY); with the queue off, the same writes are marked in the bitmap."""
    a, b = pair.alpha, pair.beta
    connect_pair(pair)
    remove(b)
    a.ok("for i in $(seq 1 100); do grep -q 'cstate=connected' /sys/block/rmirror0/rmirror/stats || exit 0; "
         "sleep 0.1; done; exit 1")
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=16 oflag=direct 2>/dev/null")
    st = status(a)
    assert st["queued"] == 16 and st["queued_bytes"] == 16 * 4096 and st["out_of_sync"] == 0, st
    assert st["cstate"] != "connected", st
    rc, out = sysfs_write(a, "/sys/block/rmirror0/rmirror/outage_queue_bytes", 0)
    assert rc != 0 and "busy" in out.lower(), out
    remove(a)
    # A primary that never connected has no outage to queue for: its writes go to the bitmap.
    create(a, "primary")
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=16 oflag=direct 2>/dev/null")
    st = status(a)
    assert st["out_of_sync"] == 16 * 8 and st["queued"] == 0, st
