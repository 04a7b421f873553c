# SPDX-License-Identifier: GPL-2.0
"""Harder peer faults under load: the secondary loses power (its QEMU is killed) and boots again, and a
lossy, slow link (netem). Each time every write alpha acknowledged must end up on beta's disk (checked
block by block with rmirror-check) and the two disks must end identical, with only what beta missed
copied by resync."""

import json
import time

import pytest

from helpers import (CHECK, TIMERS, background, connect_pair, copy_file, create, fio, fio_result, klog, load,
                     md5_dev, same_start, status, verify, wait_background, wait_cstate, wait_in_sync)

pytestmark = pytest.mark.usefixtures("clean_pair")


def test_secondary_power_loss_rejoins_and_resyncs_what_it_missed(pair):
    """beta's QEMU is killed mid-load and booted again; alpha carries on alone (the loss detected within
    the timeout), and once beta is back it copies exactly the regions written meanwhile (plus the writes in
    flight at the loss): every acknowledged write is then on beta, and the disks are equal."""
    a, b = pair.alpha, pair.beta
    same_start(pair)
    connect_pair(pair, opts=TIMERS)
    background(a, fio(32, 4, 30), "fio")
    background(a, f"{CHECK} write /dev/rmirror0 --log /tmp/c.log --size 16M --jobs 4 --seconds 40 "
                  f"--rate-per-sec 40 --seed 21", "check")
    a.ok("sleep 4")
    before = status(a)
    t0 = time.monotonic()
    boot = b.power_cycle()
    st = wait_cstate(a, "outage", timeout=5)
    missed = st["out_of_sync"] + st["queued_bytes"] // 512
    load(b)
    create(b, "secondary", opts=TIMERS)
    st_a = wait_in_sync(a)
    back = time.monotonic() - t0
    rc, out = wait_background(a, "check", 300)
    assert rc == 0, out
    written = json.loads(out.strip().splitlines()[-1])
    rc, out = wait_background(a, "fio", 300)
    assert rc == 0, out
    assert fio_result(out)[0] == 0, out
    st_a = wait_in_sync(a)
    resynced = st_a["resynced"] - before["resynced"]
    replayed = st_a["replayed"] - before["replayed"]
    lines = klog(a, "rmirror-test: start")
    print(f"beta rebooted in {boot:.1f}s, replicating again after {back:.1f}s; marked when the loss was seen "
          f"{missed} sectors, resynced {resynced} sectors, replayed {replayed} queued writes; checker {written}; "
          f"{[l for _, l in lines if 'rmirror' in l][-6:]}")
    assert st_a["timeouts"] - before["timeouts"] >= 1, st_a
    # Only what was written while beta was away (4 KiB each, fio's and the checker's) was sent again:
    # replayed from the outage queue (or, had it overflowed, resynced from the bitmap).
    fio_ios = json.loads(out[out.index("{"):])["jobs"][0]["write"]["total_ios"]
    assert replayed > 0 or resynced > 0, st_a
    assert replayed <= written["acked"] + fio_ios and resynced <= (written["acked"] + fio_ios) * 8, st_a
    copy_file(a, b, "/tmp/c.log")
    res = verify(b, "/dev/vdb", ["/tmp/c.log"], 0, 16)
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0, res
    sums = pair.each(lambda vm: md5_dev(vm, nbytes=64 << 20, bs=1 << 20))
    assert sums["alpha"] == sums["beta"], sums


def test_lossy_slow_link_loses_nothing(pair):
    """10% packet loss and 20 ms of delay each way (netem on both guests) for 20 s of fio and checker load:
    writes keep completing, and afterwards (whether or not a timeout hit) every acknowledged write is on
    beta and the disks are equal."""
    a, b = pair.alpha, pair.beta
    same_start(pair)
    connect_pair(pair, opts="ping_interval=1000 timeout=5000 probation=2000 connect_retry=500")
    pair.each(lambda vm: vm.ok("tc qdisc add dev eth0 root netem loss 10% delay 20ms"))
    background(a, fio(32, 4, 30), "fio")
    out = a.ok(f"{CHECK} write /dev/rmirror0 --log /tmp/c.log --size 16M --jobs 4 --seconds 20 "
               f"--rate-per-sec 30 --seed 31", timeout=300)
    written = json.loads(out.strip().splitlines()[-1])
    pair.each(lambda vm: vm.ok("tc qdisc del dev eth0 root"))
    rc, out = wait_background(a, "fio", 300)
    assert rc == 0, out
    err, max_lat = fio_result(out)
    assert err == 0, out
    st = wait_in_sync(a, timeout=300)
    wait_in_sync(b, timeout=60)
    print(f"checker {written}, fio max latency {max_lat:.2f}s, alpha {st}")
    assert written["acked"] > 0 and written["errors"] == 0, written
    copy_file(a, b, "/tmp/c.log")
    res = verify(b, "/dev/vdb", ["/tmp/c.log"], 0, 16)
    assert res["rc"] == 0 and res["missing"] == 0 and res["corrupt"] == 0, res
    sums = pair.each(lambda vm: md5_dev(vm, nbytes=64 << 20, bs=1 << 20))
    assert sums["alpha"] == sums["beta"], sums
