# SPDX-License-Identifier: GPL-2.0
"""Crashes of the primary and the activity log (write-intent log, Documentation/state-machines.rst): what
it costs a write, and that after a power loss of the primary (its QEMU killed) the extents it names are
all that must be resynced, and are.

Only beta's QEMU can be killed in this bed (alpha's owns the link's listening socket), so the crash tests
make beta the primary."""

import json
import re
import time

import pytest

from helpers import (CHECK, CTL, IP, PEER, S, TIMERS, cut, background, create, dmesg_during, expect_error, klog,
                     klog_marker, load, md5_dev,
                     status, sysfs_write, verify, wait_background, wait_cstate, wait_in_sync)

pytestmark = pytest.mark.usefixtures("clean_pair")

MD = "meta=internal"
AL = "/sys/block/rmirror0/rmirror"


def md_pair(pair, primary, secondary, opts=TIMERS):
    """Fresh metadata on both (declared identical: the disks are zero), then `secondary` and `primary`
    created and connected."""
    pair.each(load)
    pair.each(lambda vm: vm.ok(f"{CTL} create-md /dev/vdb --force --clear-bitmap"))
    create(secondary, "secondary", opts=f"{opts} {MD}")
    create(primary, "primary", opts=f"{opts} {MD}")
    wait_cstate(secondary)
    wait_cstate(primary)


def al_stats(vm):
    """The activity_log sysfs file as a dict of ints."""
    return {k: int(v) for k, v in (line.split() for line in vm.ok(f"cat {AL}/activity_log").splitlines())}


def recreate_after_crash(vm, role):
    """After `vm`'s power loss: load the module and create r0 again in `role` (beta's table, TIMERS, internal
    metadata). The kernel must say that the activity log was not shut down cleanly; returns (extents it
    named, KiB newly marked, the kernel messages)."""
    load(vm)
    rc, out, err, msgs = dmesg_during(vm, f"{CTL} create r0 --table "
                                          f"'0 {S} rmirror /dev/vdb {role} {IP['beta']}:7788 {IP['alpha']}:7788 C "
                                          f"{TIMERS} {MD}'")
    assert rc == 0, out + err
    m = re.search(r"activity log: not shut down cleanly: (\d+) extents, (\d+) KiB newly marked", msgs)
    assert m, msgs
    return int(m[1]), int(m[2]), msgs


def fio_job(rw, seconds, size_mib=64):
    return (f"fio --name=al --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw={rw} --bs=4k "
            f"--size={size_mib}M --iodepth=4 --runtime={seconds} --time_based --randrepeat=0 "
            f"--output-format=json")


def test_activity_log_cost_and_al_extents(pair):
    """The price of the write-intent log, measured side by side on one connected pair: a random 4 KiB
    job over 64 MiB (16 extents of 4 MiB) with every extent already active (al_extents 1237, warmed), the
    same job with only 7 active extents (most writes need a transaction first), and a sequential job with
    7 (one transaction per extent). Reports the fraction of writes that waited for a transaction and the
    latency they added; the random job with 7 extents must need far more transactions than the sequential
    one. al_extents is validated (EINVAL with the rule in the kernel log) and applied under load."""
    a, b = pair.alpha, pair.beta
    md_pair(pair, a, b)
    assert al_stats(a)["extents"] == 1237
    for bad in ("6", "6002", "x"):
        rc, err = sysfs_write(a, f"{AL}/al_extents", bad)
        assert rc != 0 and "Invalid argument" in err, (bad, rc, err)
    assert "al_extents: expected" in a.ok("dmesg | grep al_extents | tail -1"), a.ok("dmesg | tail")
    rows = {}
    # Every extent of the 64 MiB becomes active first: one write in each.
    a.ok("for i in $(seq 0 15); do dd if=/dev/zero of=/dev/rmirror0 bs=4k count=1 seek=$((i * 1024)) "
         "oflag=direct 2>/dev/null || exit 1; done")
    assert al_stats(a)["transactions"] >= 1
    for name, rw, extents in (("random, extents active", "randwrite", None), ("random, 7 extents", "randwrite", 7),
                              ("sequential, 7 extents", "write", 7)):
        if rw == "randwrite" and extents:
            background(a, fio_job("randwrite", 2), "warm")  # resized under load
            a.ok("sleep 1")
            rc, err = sysfs_write(a, f"{AL}/al_extents", extents)
            assert rc == 0, err
            wait_background(a, "warm", 120)
        elif extents:
            # Setting it again starts an empty log: the sequential job's first extent is not active
            # (whatever the random job left), so it needs at least one transaction.
            rc, err = sysfs_write(a, f"{AL}/al_extents", extents)
            assert rc == 0, err
        s0 = al_stats(a)
        out = a.ok(fio_job(rw, 4), timeout=300)
        s1 = al_stats(a)
        job = json.loads(out[out.index("{"):])["jobs"][0]
        assert job["error"] == 0, out
        d = {k: s1[k] - s0[k] for k in ("writes", "waited", "wait_us", "transactions", "retired")}
        clat = job["write"]["clat_ns"]["mean"] / 1000
        rows[name] = dict(d, extents=s1["extents"], ios=job["write"]["total_ios"], clat_us=round(clat),
                          waited_frac=round(d["waited"] / max(d["writes"], 1), 4),
                          added_us_per_write=round(d["wait_us"] / max(d["writes"], 1), 1),
                          added_us_per_waited=round(d["wait_us"] / max(d["waited"], 1), 1))
    for name, r in rows.items():
        print(f"activity log, {name}: {r}")
    warm, rnd, seq = rows["random, extents active"], rows["random, 7 extents"], rows["sequential, 7 extents"]
    print(f"mean completion latency: random with 7 extents {rnd['clat_us'] / max(warm['clat_us'], 1):.2f}x the "
          f"warmed job's")
    assert warm["writes"] >= warm["ios"] > 0 and rnd["writes"] >= rnd["ios"] > 0, rows
    assert warm["transactions"] <= 2, rows  # nothing new to activate
    assert rnd["waited_frac"] > 0.3 and rnd["retired"] > 0, rows
    assert seq["waited_frac"] < 0.05 and seq["transactions"] >= 1, rows
    assert rnd["waited_frac"] > 10 * seq["waited_frac"], rows
    assert a.ok(f"cat {AL}/al_extents").strip() == "7"


def test_primary_power_loss_in_an_outage_resyncs_its_log_and_bitmap(pair):
    """beta (primary, protocol C) loses power mid-load during an outage: fio and the per-block checker
    write (the checker's log streamed to alpha), rmirror's port is cut, and beta keeps writes in its outage
    queue (in memory only) when its QEMU is killed. beta boots and its device is created again: the
    activity log was not shut down cleanly, so the extents it names are marked out of sync on top of the
    bitmap on disk, and when the link heals exactly those regions are copied to alpha. Every write beta
    acknowledged, before the cut and during the outage, is then on alpha, and the disks end md5-equal
    (writes in flight or queued at the crash reached one disk and not the other: only the log knows
    where)."""
    a, b = pair.alpha, pair.beta
    md_pair(pair, b, a)
    # (busybox nc ends the connection when its stdin ends: give it one that does not)
    a.ok("(sleep 600 | nc -l -p 9000 > /tmp/c.log 2>/dev/null &); "
         "for i in $(seq 100); do netstat -ltn | grep -q ':9000 ' && exit 0; sleep 0.1; done; exit 1")
    background(b, "fio --name=load --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw=randwrite "
                  "--bs=4k --offset=32M --size=16M --iodepth=4 --rate_iops=40 --runtime=60 --time_based",
               "fio")
    background(b, f"rm -f /tmp/cf; mkfifo /tmp/cf; nc {IP['alpha']} 9000 < /tmp/cf & "
                  f"{CHECK} write /dev/rmirror0 --log /tmp/cf --size 16M --jobs 4 --seconds 60 "
                  f"--rate-per-sec 40 --seed 41", "check")
    b.ok("sleep 4")
    # rmirror's port only (alpha's rules survive beta's reboot; the checker's log keeps flowing).
    a.ok("for c in INPUT OUTPUT; do for p in --dport --sport; do "
         "iptables -A $c -p tcp $p 7788 -j DROP; done; done")
    wait_cstate(b, "outage", timeout=30)
    b.ok("sleep 1")
    st_q = status(b)
    assert st_q["queued"] > 0, st_q
    before = al_stats(b)
    assert before["transactions"] > 0, before
    assert b.run("pidof fio")[0] == 0, b.run("cat /tmp/fio.out")
    assert b.run("pidof rmirror-check")[0] == 0, b.run("cat /tmp/check.out")
    boot = b.power_cycle()
    extents, kib, msgs = recreate_after_crash(b, "primary")
    marked = status(b)["out_of_sync"]  # the bitmap from disk plus the log's extents (no link yet)
    assert marked >= 2 * kib > 0, (marked, kib, msgs)
    # Only the log's extents (4 MiB each) are marked, never more; the checker's 16 MiB and fio's 16 MiB
    # are 8 extents.
    assert marked <= extents * 8192 and extents <= 8, (marked, extents)
    assert al_stats(b)["next_seq"] > 0
    a.ok("iptables -F")
    t0 = time.monotonic()
    st = wait_in_sync(b, timeout=300)
    took = time.monotonic() - t0
    resynced = st["resynced"]
    print(f"beta rebooted in {boot:.1f}s with {st_q['queued']} writes queued just before the crash: the log named "
          f"{extents} extents ({kib} KiB newly marked), {marked * 512} bytes marked in all and {resynced * 512} "
          f"bytes resynced in {took:.1f}s, of a {S * 512}-byte device ({100 * resynced / S:.2f}%); "
          f"AL before the crash {before}")
    assert resynced == marked, (resynced, marked)
    a.run("killall nc sleep 2>/dev/null; true")
    res = verify(a, "/dev/vdb", ["/tmp/c.log"], 0, 16)
    print(f"checker on alpha: {res}")
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0, res
    assert res["present"] > 0, res
    sums = pair.each(lambda vm: md5_dev(vm, nbytes=64 << 20, bs=1 << 20))
    assert sums["alpha"] == sums["beta"], sums


def test_failover_after_primary_power_loss_and_the_old_primary_rejoins(pair):
    """The failover a replicated disk is bought for. beta (primary, protocol C) has an ext4 mounted and
    files being written with fsync, and the per-block checker writing raw blocks behind the filesystem (its
    log streamed to alpha), when it loses power. alpha is promoted: every write beta acknowledged is on
    alpha, and the filesystem passes e2fsck. beta boots and comes back as secondary: its activity log's
    extents and alpha's writes since the promotion are copied to it from alpha (the new generation), and
    the disks end md5-equal. While beta is connected to the primary it cannot be promoted (EBUSY), a
    mounted primary cannot be demoted (EBUSY); a planned switchover back to beta copies nothing."""
    a, b = pair.alpha, pair.beta
    md_pair(pair, b, a)
    b.ok("mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=1,lazy_journal_init=1 /dev/rmirror0 64M && "
         "mount -o noinit_itable /dev/rmirror0 /mnt/b", timeout=300)
    a.ok("(sleep 600 | nc -l -p 9000 > /tmp/c.log 2>/dev/null &); "
         "for i in $(seq 100); do netstat -ltn | grep -q ':9000 ' && exit 0; sleep 0.1; done; exit 1")
    background(b, "i=0; while :; do head -c 65536 /dev/urandom > /mnt/b/f$i && sync /mnt/b/f$i; "
                  "i=$((i + 1)); done", "files")
    background(b, f"rm -f /tmp/cf; mkfifo /tmp/cf; nc {IP['alpha']} 9000 < /tmp/cf & "
                  f"{CHECK} write /dev/rmirror0 --log /tmp/cf --offset 128M --size 16M --jobs 4 --seconds 60 "
                  f"--rate-per-sec 40 --seed 51", "check")
    b.ok("sleep 6")
    assert b.run("pidof rmirror-check")[0] == 0, b.run("cat /tmp/check.out")
    files = int(b.ok("ls /mnt/b | grep -c '^f'").strip())
    assert files > 0
    boot = b.power_cycle()
    deadline = time.monotonic() + 30
    while status(a)["cstate"] == "connected":
        assert time.monotonic() < deadline, "alpha never noticed beta's power loss"
        time.sleep(0.5)
    rc, out, err, msgs = dmesg_during(a, f"{CTL} primary r0")
    assert rc == 0, out + err
    assert "r0: now primary" in msgs, msgs
    st = status(a)
    assert st["role"] == "primary" and st["disk"] == "up_to_date", st
    a.run("killall nc sleep 2>/dev/null; true")
    res = verify(a, "/dev/rmirror0", ["/tmp/c.log"], 128, 16)
    print(f"checker on alpha after the failover: {res}")
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0 and res["present"] > 0, res
    rc, out = a.run("e2fsck -fy /dev/rmirror0 2>&1", timeout=300)
    assert rc in (0, 1), out  # 1: the journal was replayed
    rc, out = a.run("e2fsck -fn /dev/rmirror0 2>&1", timeout=300)
    assert rc == 0, out
    a.ok("mount /dev/rmirror0 /mnt/a")
    have = int(a.ok("ls /mnt/a | grep -c '^f'").strip())
    assert have >= files - 1, (have, files)  # every file synced before the crash (one may be partial)
    # A mounted primary cannot be demoted.
    expect_error(a, f"{CTL} secondary r0", "secondary", "r0", "EBUSY")
    a.ok("head -c 1048576 /dev/urandom > /mnt/a/after && sync")
    # beta comes back as secondary: the new primary's generation wins.
    _, b_kib, _ = recreate_after_crash(b, "secondary")
    t0 = time.monotonic()
    st = wait_in_sync(a, timeout=300)
    wait_in_sync(b, timeout=60)
    took = time.monotonic() - t0
    resynced = st["resynced"]
    print(f"beta rebooted in {boot:.1f}s and rejoined as secondary: its log marked {b_kib} KiB; "
          f"{resynced * 512} bytes resynced in {took:.1f}s of a {S * 512}-byte device "
          f"({100 * resynced / S:.2f}%)")
    assert resynced > 0
    # Bounded by beta's log extents plus what alpha wrote since the promotion (1 MiB file, fsck, mount).
    assert resynced * 512 <= b_kib * 1024 + (32 << 20), (resynced, b_kib)
    a.ok("umount /mnt/a")
    sums = pair.each(lambda vm: md5_dev(vm, nbytes=S * 512, bs=1 << 20))
    assert sums["alpha"] == sums["beta"], sums
    # beta is connected to its primary: it cannot be promoted.
    rc, out, err, msgs = dmesg_during(b, f"{CTL} primary r0")
    assert rc != 0 and "(EBUSY)" in err, out + err
    assert "primary: refused: connected to the primary" in msgs, msgs
    # A planned switchover back: demote alpha, promote beta; nothing needs copying.
    a.ok(f"{CTL} secondary r0")
    assert status(a)["role"] == "secondary"
    deadline = time.monotonic() + 30
    while status(b)["cstate"] == "connected":
        assert time.monotonic() < deadline, "beta still connected to a demoted alpha"
        time.sleep(0.5)
    before = status(b)["resynced"]
    b.ok(f"{CTL} primary r0")
    st = wait_in_sync(b, timeout=120)
    assert st["resynced"] == before and st["role"] == "primary", (st, before)
    b.ok("mount /dev/rmirror0 /mnt/b && test -s /mnt/b/after && umount /mnt/b")


def not_connected(vm, timeout=30):
    deadline = time.monotonic() + timeout
    while status(vm)["cstate"] == "connected":
        assert time.monotonic() < deadline, f"{vm.name}: still connected after {timeout}s"
        time.sleep(0.3)


def test_split_brain_ten_times_detected_and_resolved_by_the_user(pair):
    """Ten split brains in a row, made on purpose: the link is cut, the secondary is promoted, both sides
    write, one side is demoted again and the link heals. Every time both sides detect it, stand alone and
    keep their own data (the disks differ: nothing was resolved silently); then the user resolves it with
    `connect --discard-my-data` on the demoted side and `connect` on the other, and the disks end
    md5-equal with the kept side's data. The kept side alternates, so both directions are exercised."""
    a, b = pair.alpha, pair.beta
    # Faster timers than TIMERS: each round waits for both sides to see the cut.
    md_pair(pair, a, b, opts="ping_interval=250 timeout=1200 probation=500 connect_retry=300")
    prim, sec = a, b
    size = 4 << 20
    copied = []
    for i in range(10):
        pair.each(lambda vm: cut(vm, IP[PEER[vm.name]]))
        not_connected(sec)
        not_connected(prim)
        sec.ok(f"{CTL} primary r0")
        blk = {prim.name: 64 * i, sec.name: 64 * i + 16}
        pair.each(lambda vm: vm.ok(f"dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=8 seek={blk[vm.name]} "
                                   f"oflag=direct 2>/dev/null"))
        keep, lose = (a, b) if i % 2 == 0 else (b, a)
        lose.ok(f"{CTL} secondary r0")
        pair.each(lambda vm: vm.ok(f"echo rmirror-test: split brain {i} > /dev/kmsg; iptables -F"))
        wait_cstate(keep, "standalone", timeout=60)
        wait_cstate(lose, "standalone", timeout=60)
        # Both said so since the round's marker (grepped in the guest: the whole log is long by now).
        said = pair.each(lambda vm: vm.ok(f"dmesg | sed -n '/rmirror-test: split brain {i}$/,$p' | "
                                          f"grep -c 'split brain: both sides wrote' || true").strip())
        assert all(int(n) >= 1 for n in said.values()), (i, said)
        got = pair.each(lambda vm: md5_dev(vm, "/dev/vdb", size))
        want = got[keep.name]
        assert got[lose.name] != want, f"round {i}: the split brain was resolved silently"
        before = status(keep)["resynced"]
        lose.ok(f"{CTL} connect r0 --discard-my-data")
        keep.ok(f"{CTL} connect r0")
        st = wait_in_sync(keep, timeout=120)
        wait_in_sync(lose, timeout=60)
        copied.append(st["resynced"] - before)
        got = pair.each(lambda vm: md5_dev(vm, "/dev/vdb", size))
        assert got[keep.name] == got[lose.name] == want, (i, got, want)
        prim, sec = keep, lose
    print(f"ten split brains detected and resolved; sectors copied each time: {copied}")
    # Both sides' writes of each round (8 blocks each) were copied, never the whole device.
    assert all(128 <= c < 8192 for c in copied), copied
    expect_error(prim, f"{CTL} connect r0 --discard-my-data", "connect", "r0", "EINVAL")


def flaky(vm, sectors, fail_writes):
    """alpha's /dev/mapper/flaky over all of /dev/vdb: a plain mapping, or dm-flakey failing every write
    (reads still work) from now on."""
    t = f"0 {sectors} flakey /dev/vdb 0 0 3600 1 error_writes" if fail_writes else f"0 {sectors} linear /dev/vdb 0"
    vm.ok(f"dmsetup suspend flaky && dmsetup reload flaky --table '{t}' && dmsetup resume flaky")


def flaky_pair(pair):
    """alpha primary on /dev/mapper/flaky (a plain mapping of its disk for now), beta secondary, fresh
    metadata on both, connected. Returns the disk's size in sectors."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    sectors = int(a.ok("blockdev --getsz /dev/vdb").strip())
    a.ok(f"dmsetup create flaky --table '0 {sectors} linear /dev/vdb 0' && dmsetup mknodes && test -b /dev/mapper/flaky")
    a.ok(f"{CTL} create-md /dev/mapper/flaky --force --clear-bitmap")
    b.ok(f"{CTL} create-md /dev/vdb --force --clear-bitmap")
    create(b, "secondary", opts=f"{TIMERS} {MD}")
    create(a, "primary", backing="/dev/mapper/flaky", opts=f"{TIMERS} {MD}")
    wait_cstate(b)
    wait_cstate(a)
    return sectors


def wait_disk(vm, state, timeout):
    deadline = time.monotonic() + timeout
    while status(vm)["disk"] != state:
        assert time.monotonic() < deadline, status(vm)
        time.sleep(0.5)


def flaky_md5_equal(pair, mib):
    """alpha's disk (under flaky) and beta's are md5-equal over their first `mib` MiB."""
    sums = {"alpha": md5_dev(pair.alpha, dev="/dev/mapper/flaky", nbytes=mib << 20, bs=1 << 20),
            "beta": md5_dev(pair.beta, nbytes=mib << 20, bs=1 << 20)}
    assert sums["alpha"] == sums["beta"], sums


def pass_on_failing(pair, sectors):
    """alpha's device created again with on_io_error=pass_on, then its disk fails every write."""
    a = pair.alpha
    a.ok(f"{CTL} remove r0")
    create(a, "primary", backing="/dev/mapper/flaky", opts=f"{TIMERS} {MD} on_io_error=pass_on")
    wait_cstate(a)
    flaky(a, sectors, True)


def test_local_disk_failure_detaches_serves_through_the_peer_and_reattaches(pair):
    """alpha (primary, protocol C, on_io_error=detach by default) sits on a device-mapper device over its
    disk. Under load (the per-block checker and a fio job that verifies what it wrote), the device starts
    failing every write (dm-flakey, error_writes): alpha detaches its disk, says so in its status and
    kernel log, and goes on through beta: no write fails, fio's read-back verifies through the peer, and
    every write the checker saw acknowledged reads back through /dev/rmirror0. beta adopted a new
    generation. Then the disk is repaired and `rmirrorctl attach` pulls back exactly the regions written
    while detached; the disks end md5-equal. attach is refused with EALREADY when attached. With
    on_io_error=pass_on a failing disk's write fails to the application and the disk stays attached.
    `rmirrorctl events` follows it all: the device's creation, its connection, and every disk state in
    order (detached, attaching, up to date); its JSON form parses."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    background(a, f"exec {CTL} events r0 --timeout 200", "events")
    sectors = flaky_pair(pair)
    expect_error(a, f"{CTL} attach r0", "attach", "r0", "EALREADY")
    b_uuid = json.loads(b.ok(f"echo 3 > /proc/sys/vm/drop_caches; {CTL} dump-md /dev/vdb -o json"))
    background(a, f"{CHECK} write /dev/rmirror0 --log /tmp/c.log --size 16M --jobs 4 --seconds 12 "
                  f"--rate-per-sec 40 --seed 61", "check")
    background(a, "fio --name=v --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw=randwrite --bs=4k "
                  "--offset=64M --size=3M --iodepth=4 --verify=crc32c --verify_fatal=1 --do_verify=1 "
                  "--randrepeat=0 --rate_iops=150 --output-format=json", "fio")
    a.ok("sleep 3")
    a.ok("dmesg -c > /dev/null")
    flaky(a, sectors, True)
    wait_disk(a, "detached", 30)
    msgs = a.ok("dmesg")
    assert "the backing device failed" in msgs and "disk detached" in msgs, msgs
    wait_background(a, "check", 120)
    wait_background(a, "fio", 300)
    rep = json.loads(a.ok("cat /tmp/fio.out")[a.ok("cat /tmp/fio.out").index("{"):])
    job = rep["jobs"][0]
    assert job["error"] == 0 and job["read"]["total_ios"] > 0, job
    st = status(a)
    assert st["disk"] == "detached" and st["cstate"] == "connected", st
    # Every acknowledged write reads back, through the peer.
    res = verify(a, "/dev/rmirror0", ["/tmp/c.log"], 0, 16)
    print(f"checker through the peer, alpha's disk detached: {res}; fio wrote {job['write']['total_ios']} and "
          f"read back {job['read']['total_ios']} blocks without an error")
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0 and res["present"] > 0, res
    # beta holds the only up-to-date copy: a new generation on its disk.
    b_after = json.loads(b.ok(f"echo 3 > /proc/sys/vm/drop_caches; {CTL} dump-md /dev/vdb -o json"))
    assert b_after["current_uuid"] != b_uuid["current_uuid"], (b_uuid, b_after)
    # The disk still fails: attach says so and stays detached.
    rc, out, err, msgs = dmesg_during(a, f"{CTL} attach r0")
    assert rc != 0 and "(EIO)" in err and "still detached" in msgs, out + err + msgs
    flaky(a, sectors, False)
    before = status(a)["resynced"]
    rc, out, err, msgs = dmesg_during(a, f"{CTL} attach r0")
    assert rc == 0, out + err
    m = re.search(r"attach: pulling (\d+) KiB back", msgs)
    assert m and int(m[1]) > 0, msgs
    wait_disk(a, "up_to_date", 120)
    pulled = status(a)["resynced"] - before
    print(f"attach pulled {pulled * 512} bytes back ({m[1]} KiB stale) of a {S * 512}-byte device")
    assert pulled == int(m[1]) * 2, (pulled, m[1])  # sectors vs KiB
    assert pulled * 512 <= 20 << 20, pulled  # the checker's 16 MiB and fio's 3 MiB at most
    assert "disk up to date and in use again" in a.ok("dmesg"), a.ok("dmesg | tail")
    expect_error(a, f"{CTL} attach r0", "attach", "r0", "EALREADY")
    a.ok("sleep 0.5; killall rmirrorctl; for i in $(seq 50); do pidof rmirrorctl > /dev/null || exit 0; sleep 0.1; done; exit 1")
    ev = [line for line in a.ok("cat /tmp/events.out").splitlines() if line != "Terminated"]
    print("events:\n  " + "\n  ".join(ev))
    want = ["create name=r0 role=primary", "change name=r0 cstate=connected", "change name=r0 disk=detached",
            "change name=r0 disk=attaching", "change name=r0 disk=up_to_date"]
    at = [next((i for i, line in enumerate(ev) if line.startswith(w)), None) for w in want]
    assert None not in at and at == sorted(at), (at, ev)
    assert all(line.split()[0] in ("create", "change") and "name=r0" in line for line in ev), ev
    js = json.loads(a.ok(f"{CTL} events r0 -o json --timeout 0"))
    assert js == {"kind": "exists", "name": "r0", "role": "primary", "cstate": "connected", "repl": "established",
                  "disk": "up_to_date"}, js
    res = verify(a, "/dev/mapper/flaky", ["/tmp/c.log"], 0, 16)
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0, res
    flaky_md5_equal(pair, 72)  # (everything written is in the first 67 MiB)
    # pass_on: the write fails to the application, the disk stays in use.
    pass_on_failing(pair, sectors)
    rc, out = a.run("dd if=/dev/zero of=/dev/rmirror0 bs=4k count=1 seek=100 oflag=direct 2>&1")
    assert rc != 0 and "Input/output error" in out, out
    assert status(a)["disk"] == "up_to_date", status(a)
    flaky(a, sectors, False)


def test_activity_log_failure_detaches_once_and_reads_stream_through_the_peer(pair):
    """The disk fails at an activity log transaction (a write to an extent not yet active): alpha detaches
    and the write completes through beta. Nothing more is written to the failed disk: the transaction is
    tried once (it used to be retried in a hot loop, tens of thousands of failed writes and kernel lines
    that starved the guest). Then 1 MiB reads, eight at a time, stream through the peer: megabytes of
    replies must not hold back the heartbeats (on the meta socket they used to, and the peer declared a
    healthy connection dead); the data read is beta's. After attach the disks are md5-equal. With
    on_io_error=pass_on a write that needs a transaction fails, and the transaction is not retried in a
    loop either."""
    a, b = pair.alpha, pair.beta
    sectors = flaky_pair(pair)
    flaky(a, sectors, True)
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=1 seek=2048 oflag=direct")
    st = status(a)
    assert st["disk"] == "detached" and st["cstate"] == "connected", st
    before = {"alpha": st, "beta": status(b)}
    rc, out = a.run("fio --name=r --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw=read --bs=1M "
                    "--iodepth=8 --size=32M --output-format=terse", timeout=300)
    assert rc == 0, out
    after = {"alpha": status(a), "beta": status(b)}
    msgs = "\n".join(line for _, line in klog(a, "rmirror-test: start"))
    failed = msgs.count("could not be written")
    print(f"activity log transactions failed: {failed}; forwarded reads: fio {out.split(';')[5:7]} KiB, KiB/s; "
          f"timeouts {[after[n]['timeouts'] - before[n]['timeouts'] for n in after]}, "
          f"pings/pongs {[(after[n]['pings'] - before[n]['pings'], after[n]['pongs'] - before[n]['pongs']) for n in after]}")
    assert "an activity log write failed" in msgs, msgs
    assert failed == 1, f"the failed disk was written {failed} times: {msgs[-2000:]}"
    for n in after:
        assert after[n]["timeouts"] == before[n]["timeouts"] and after[n]["cstate"] == "connected", (n, after[n])
    sums = {"alpha": md5_dev(a, dev="/dev/rmirror0", nbytes=32 << 20, bs=1 << 20),
            "beta": md5_dev(b, nbytes=32 << 20, bs=1 << 20)}
    assert sums["alpha"] == sums["beta"], sums
    flaky(a, sectors, False)
    a.ok(f"{CTL} attach r0")
    wait_disk(a, "up_to_date", 60)
    flaky_md5_equal(pair, 32)
    # on_io_error=pass_on keeps the failing disk: each write that needs a transaction tries it once and
    # fails (zeros, as on the disks: nothing differs if the peer got it), and nothing retries it in a loop.
    pass_on_failing(pair, sectors)
    t0 = klog_marker(a, "rmirror-test: pass_on")
    for blk in (4096, 5120):
        rc, out = a.run(f"dd if=/dev/zero of=/dev/rmirror0 bs=4k count=1 seek={blk} oflag=direct 2>&1")
        assert rc != 0 and "Input/output error" in out, out
    a.ok("sleep 1")
    failed = sum(1 for t, line in klog(a, "rmirror-test: start") if t >= t0 and "could not be written" in line)
    assert failed == 2 and status(a)["disk"] == "up_to_date", (failed, status(a))
    flaky(a, sectors, False)


HALF_MIB = 128                      # each node's disk split in two: d0 (r0) and d1 (r1)
BIDI_LEN = 100 * 2048               # sectors of r0 and r1 (their metadata at the end of each half)


def split_disk(vm, fresh):
    """/dev/mapper/d0 and d1: the two halves of vm's disk (again after a reboot); with `fresh`, new
    metadata on both, declared in sync (the disks are zero)."""
    half = HALF_MIB * 2048
    vm.ok(f"dmsetup create d0 --table '0 {half} linear /dev/vdb 0' && "
          f"dmsetup create d1 --table '0 {half} linear /dev/vdb {half}' && dmsetup mknodes && test -b /dev/mapper/d1")
    if fresh:
        vm.ok(f"{CTL} create-md /dev/mapper/d0 --force --clear-bitmap && "
              f"{CTL} create-md /dev/mapper/d1 --force --clear-bitmap")


def bidi_create(vm, name, role):
    """r0 (port 7788, beta primary) or r1 (port 7789, alpha primary) on vm's half of the disk."""
    port = 7788 if name == "r0" else 7789
    dev = "/dev/mapper/d0" if name == "r0" else "/dev/mapper/d1"
    me, peer = IP[vm.name], IP[PEER[vm.name]]
    return vm.run3(f"{CTL} create {name} --table '0 {BIDI_LEN} rmirror {dev} {role} {me}:{port} {peer}:{port} C "
                   f"{TIMERS} {MD}'")


def test_both_directions_at_once_then_power_loss(pair):
    """Seed 002's bidirectional mirroring: each node is primary for one device and secondary for the other,
    on two halves of its disk (dm-linear). beta is primary for r0 and alpha for r1, both under the per-block
    checker, when beta loses power (only beta's QEMU can be killed here, so the roles are the issue's
    mirrored). r0 fails over to alpha, which holds every write beta acknowledged; r1 keeps running on alpha,
    degraded, without an error. beta comes back as secondary of both: each device resyncs (r0 from its new
    primary, r1 what alpha wrote meanwhile) and both end md5-equal on the two nodes."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    pair.each(lambda vm: split_disk(vm, True))
    # (r0 first on both: it is /dev/rmirror0 on both, r1 /dev/rmirror1)
    for vm, name, role in ((a, "r0", "secondary"), (b, "r0", "primary"), (b, "r1", "secondary"),
                           (a, "r1", "primary")):
        rc, out, err = bidi_create(vm, name, role)
        assert rc == 0, out + err
    for vm in (a, b):
        for name in ("r0", "r1"):
            wait_cstate(vm, name=name)
    a.ok("(sleep 600 | nc -l -p 9000 > /tmp/c0.log 2>/dev/null &); "
         "for i in $(seq 100); do netstat -ltn | grep -q ':9000 ' && exit 0; sleep 0.1; done; exit 1")
    background(b, f"rm -f /tmp/cf; mkfifo /tmp/cf; nc {IP['alpha']} 9000 < /tmp/cf & "
                  f"{CHECK} write /dev/rmirror0 --log /tmp/cf --size 8M --jobs 4 --seconds 60 "
                  f"--rate-per-sec 30 --seed 71", "check")
    background(a, f"{CHECK} write /dev/rmirror1 --log /tmp/c1.log --size 8M --jobs 4 --seconds 14 "
                  f"--rate-per-sec 30 --seed 72", "check1")
    b.ok("sleep 4")
    assert b.run("pidof rmirror-check")[0] == 0, b.run("cat /tmp/check.out")
    boot = b.power_cycle()
    # r0 fails over to alpha.
    deadline = time.monotonic() + 30
    while status(a, "r0")["cstate"] == "connected":
        assert time.monotonic() < deadline, "alpha never noticed beta's power loss"
        time.sleep(0.5)
    a.ok(f"{CTL} primary r0")
    a.run("killall nc sleep 2>/dev/null; true")
    res0 = verify(a, "/dev/rmirror0", ["/tmp/c0.log"], 0, 8)
    print(f"r0 failed over to alpha: checker {res0}")
    assert res0["rc"] == 0 and res0["missing"] == 0 and res0["corrupt"] == 0 and res0["present"] > 0, res0
    # r1 went on on alpha without its peer, and never failed a write.
    rc, out = wait_background(a, "check1", 120)
    assert rc == 0, out
    st1 = status(a, "r1")
    assert st1["role"] == "primary" and st1["cstate"] != "connected" and st1["disk"] == "up_to_date", st1
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=16 seek=4096 oflag=direct 2>/dev/null")
    # beta returns as secondary of both.
    load(b)
    split_disk(b, False)
    for name in ("r0", "r1"):
        rc, out, err = bidi_create(b, name, "secondary")
        assert rc == 0, out + err
    t0 = time.monotonic()
    resynced = {}
    for name in ("r0", "r1"):
        st = wait_in_sync(a, timeout=300, name=name)
        resynced[name] = st["resynced"] + st["replayed"]
    print(f"beta rebooted in {boot:.1f}s and rejoined both as secondary in {time.monotonic() - t0:.1f}s: "
          f"r0 resynced {resynced['r0'] * 512} bytes, r1 {resynced['r1']} (sectors resynced + writes replayed)")
    assert resynced["r0"] > 0, resynced
    res1 = verify(a, "/dev/rmirror1", ["/tmp/c1.log"], 0, 8)
    assert res1["rc"] == 0 and res1["missing"] == 0 and res1["corrupt"] == 0 and res1["present"] > 0, res1
    for dev in ("/dev/mapper/d0", "/dev/mapper/d1"):
        # (everything written is in the first 24 MiB of each)
        sums = pair.each(lambda vm: md5_dev(vm, dev, nbytes=24 << 20, bs=1 << 20))
        assert sums["alpha"] == sums["beta"], (dev, sums)
