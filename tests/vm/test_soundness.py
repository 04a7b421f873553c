# SPDX-License-Identifier: GPL-2.0
"""Soundness of the driver (issue #6, "sound base"): one test per defect found there.

1. a kernel thread that fails to start must not leak the backing device (fault injection through the
   driver's fault_attr /sys/kernel/debug/fail_rmirror_thread);
2. create/remove racing I/O, and create/remove racing the start of the device's threads, on 2 vCPUs (the
   kernel log scanner, with lockdep and KASAN in the test kernel, judges what the loops provoke);
3. removing a device whose peer is unreachable does not block the control plane for other devices;
4. the disk does not advertise discard, write-zeroes or secure erase, which it does not mirror;
5. overlapping writes in flight at once leave both disks identical;
6. writes make progress, without EIO, while slab (and page) allocations of the writer fail.

The races want 2 vCPUs per guest (scripts/vm.py's default; RMIRROR_SMP): the tests run with 1 as well, with
less chance to catch a race."""

import os
import re
import time

import pytest

from helpers import (CTL, ERR_RE, IP, PORT, S, connect_pair, create, exclusive_open, fault_attr,
                     fault_attr_read, load, loaded, md5_dev, q, remove, reset_pair, starved, status, table)

pytestmark = pytest.mark.usefixtures("clean_pair")

FAIL_THREAD = "/sys/kernel/debug/fail_rmirror_thread"
FAILSLAB = "/sys/kernel/debug/failslab"
FAIL_PAGE = "/sys/kernel/debug/fail_page_alloc"
#: A port on beta where nothing listens: a primary with this peer gets its connects refused at once.
NOPEER_PORT = PORT + 2


@pytest.fixture(autouse=True)
def _backing_released(pair):
    """After every test, once the module is unloaded (the reset here; the harness's reset after the test
    then finds nothing to undo), /dev/vdb must be free for an exclusive open on both guests. A leaked claim
    would make every later create on vdb fail with EBUSY, so the guest is then marked unusable and the next
    test gets a fresh pair."""
    yield
    reset_pair(pair)
    bad = []
    for vm in (pair.alpha, pair.beta):
        if vm.broken:
            continue
        ok, out = exclusive_open(vm)
        if not ok:
            bad.append(f"{vm.name}: {out.strip()}")
            vm.broken = "/dev/vdb still claimed after rmmod rmirror (leaked backing device)"
    assert not bad, "backing disk still claimed after the module was unloaded:\n" + "\n".join(bad)


def primary_line(vm, peer_port=PORT, local_port=PORT, backing="/dev/vdb", sectors=S):
    """A primary's table line with explicit ports (helpers.table() always uses PORT)."""
    return f"0 {sectors} rmirror {backing} primary {IP[vm.name]}:{local_port} 10.99.0.2:{peer_port} C"


# ---- 1. a failed thread start releases everything ------------------------------------------------------

# threads a device starts: meta, connection, sender, resync, reply; or meta, connection (listener), receiver,
# acker
THREADS = {"primary": 5, "secondary": 4}


# One failing create: fault attribute armed, kernel log cleared, create (its stderr is the script's),
# then the attribute's state and disarmed.
FAILING_CREATE = """
F={attr}
echo 1 > $F/interval; echo 1 > $F/verbose; echo 1 > $F/times; echo {space} > $F/space; echo 100 > $F/probability
dmesg -c > /dev/null
{ctl} create r0 --table '{line}'
echo "create-rc=$?"
echo "space=$(cat $F/space) times=$(cat $F/times)"
echo 0 > $F/probability; echo 0 > $F/times
"""


# (A primary failing its second thread was a fourth case: the last one covers a partial start, and
# the time budget needed its 15 s.)
@pytest.mark.parametrize("role,space", [("primary", 1), ("primary", 5), ("secondary", 4)],
                         ids=["primary-first-thread", "primary-last-thread", "secondary-last-thread"])
def test_thread_start_failure_releases_backing(pair, role, space):
    """The driver's fault_attr fail_rmirror_thread is consulted (should_fail(attr, 1)) once per kernel
    thread it starts: a primary starts 5 (meta, connection, sender, resync, reply), a secondary 4 (meta,
    connection, receiver, acker: the acker fails with the receiver running). `space` is a budget that each call decrements by its size (1) while it is larger
    than the size, failures being suppressed until then (lib/fault-inject.c: `if (space > size) { space -=
    size; return false; }`): space=N lets N-1 calls pass and fails the Nth (space=2: the connection thread,
    with the meta thread already started; space=1: the first). times=1 allows a single failure.

    The failed create must return ENOMEM and leave nothing behind: the same device can be created again
    (the backing disk is not still claimed, a secondary's port not still bound), and after its removal
    another tool can open /dev/vdb exclusively. The old bug: a thread stopped before it ever ran never
    freed its argument, which holds the device and with it the exclusive claim on the backing disk. The
    last iterations run with the CPUs hogged (helpers.starved), so that the thread started first has not
    run yet when the failed create stops it."""
    a = pair.alpha
    load(a)
    rc, _ = a.run(f"test -d {FAIL_THREAD}")
    assert rc == 0, (f"{FAIL_THREAD} missing: the driver must register a fault_attr 'fail_rmirror_thread' "
                     "(fault_create_debugfs_attr) consulted before each kernel thread start")
    line = table(a, role)
    create_cmd = f"{CTL} create r0 --table {q(line)}"

    # The premise: one create consults the attribute once per thread (space counts the passing calls).
    fault_attr(a, FAIL_THREAD, probability=100, interval=1, times=1, space=100, verbose=1, task_filter="N")
    a.ok(create_cmd)
    remove(a)
    got = fault_attr_read(a, FAIL_THREAD, "space", "times")
    fault_attr(a, FAIL_THREAD, probability=0)
    assert got == {"space": 100 - THREADS[role], "times": 1}, \
        f"a {role} should consult fail_rmirror_thread {THREADS[role]} time(s) and pass: {got}"

    for i in range(4):
        script = FAILING_CREATE.format(attr=FAIL_THREAD, space=space, ctl=CTL, line=line)
        rc, out, err = a.run3(starved(script) if i >= 2 else script, 240)
        msgs = a.ok("dmesg")
        assert rc == 0 and "create-rc=1" in out, f"iteration {i}: create with a failing thread start: {out}{err}"
        m = [m for m in map(ERR_RE.match, err.strip().splitlines()) if m]
        assert m and (m[-1]["verb"], m[-1]["name"], m[-1]["errno"]) == ("create", "r0", "ENOMEM"), \
            f"iteration {i}: expected 'rmirrorctl: create r0: ... (ENOMEM)', got {err!r}"
        # One failure was injected (times 1 -> 0); with space=2 one call passed first (space 2 -> 1).
        assert "space=1 times=0" in out, f"iteration {i}: fault attribute after the create: {out}"
        assert "FAULT_INJECTION: forcing a failure" in msgs and "fail_rmirror_thread" in msgs, \
            f"iteration {i}: no FAULT_INJECTION message for fail_rmirror_thread:\n{msgs}"
        assert a.ok(f"{CTL} list").strip() == "", f"iteration {i}: a failed create left a device behind"
        a.ok("test ! -e /dev/rmirror0 && test ! -e /sys/block/rmirror0")
        # Everything the failed create took is free again: the same device can be created and removed.
        rc, out = a.run(create_cmd)
        assert rc == 0, (f"iteration {i}: creating r0 again after the failed create: {out.strip()} "
                         "(backing disk or port still held by the failed device?)")
        assert status(a)["role"] == role
        remove(a)
    # Another tool can claim the disk exclusively (mkfs opens it with O_EXCL).
    a.ok("mkfs.ext4 -F -q /dev/vdb 4M", timeout=120)
    a.ok("rmmod rmirror")
    assert not loaded(a)


# ---- 2. create/remove racing I/O and thread start -----------------------------------------------------

# The writer runs in a subshell that holds the disk open (fd 3) from before it starts until it is told to
# go, so every remove attempt made while it runs must see the disk open; attempts go on until the writer
# is done. Prints "busy=<EBUSY answers> writer=<writer's exit code>" and the writer's output.
RACE = """
rm -f /tmp/opened /tmp/w.rc /tmp/release /tmp/w.out
( exec 3<>/dev/rmirror0
  touch /tmp/opened
  {writer} > /tmp/w.out 2>&1
  echo $? > /tmp/w.rc
  while [ ! -e /tmp/release ]; do sleep 0.05; done ) &
while [ ! -e /tmp/opened ]; do sleep 0.05; done
n=0
while :; do
  if err=$({ctl} remove r0 2>&1 >/dev/null); then echo "REMOVED-WHILE-OPEN"; break; fi
  case "$err" in *"(EBUSY)"*) n=$((n+1)) ;; *) echo "UNEXPECTED: $err"; break ;; esac
  [ -e /tmp/w.rc ] && break
done
touch /tmp/release
wait
echo "busy=$n writer=$(cat /tmp/w.rc)"
cat /tmp/w.out
"""

WRITERS = [
    "dd if=/tmp/src of=/dev/rmirror0 bs=64k oflag=direct",
    "fio --name=w --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw=randwrite --bs=4k --size=8M "
    "--iodepth=16 --time_based --runtime=2 --randrepeat=0 --output-format=terse --terse-version=3",
    "dd if=/tmp/src of=/dev/rmirror0 bs=4k count=256 seek=100 oflag=direct",
]


def test_create_remove_racing_io(pair):
    """Create r0 on alpha, write to it in the background (dd or fio with 16 writes in flight) and try to
    remove it meanwhile: every attempt must fail with EBUSY while the disk is open, every write must
    succeed, and once the writer is done the removal must succeed. The peer alternates between beta's
    secondary with the connection up before the I/O, the same while the connection is still coming up
    (I/O races the handshake, and removal races both), and no peer (connects refused)."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    create(b, "secondary")
    a.ok("dd if=/dev/urandom of=/tmp/src bs=64k count=24 2>/dev/null")
    modes = ("connected", "connecting", "no-peer")
    # Six rounds pair each mode with two different writers (twelve rounds used to repeat three pairings).
    for i in range(6):
        mode = modes[i % 3]
        line = primary_line(a, peer_port=NOPEER_PORT if mode == "no-peer" else PORT)
        a.ok(f"{CTL} create r0 --table {q(line)}")
        if mode == "connected":
            st = status(a)
            deadline = time.monotonic() + 60
            while st["cstate"] != "connected" and time.monotonic() < deadline:
                time.sleep(0.3)
                st = status(a)
            assert st["cstate"] == "connected", f"iteration {i}: not connected: {st}"
        writer = WRITERS[(i + i // 3) % len(WRITERS)]
        out = a.ok(RACE.format(writer=writer, ctl=CTL), timeout=180)
        m = re.search(r"^busy=(\d+) writer=(\d+)$", out, re.M)
        assert m and "REMOVED-WHILE-OPEN" not in out and "UNEXPECTED" not in out, \
            f"iteration {i} ({mode}): remove while open must fail with EBUSY:\n{out}"
        assert int(m[1]) >= 1 and m[2] == "0", f"iteration {i} ({mode}, {writer}): writer failed:\n{out}"
        if "fio" in writer:
            fields = out.strip().splitlines()[-1].split(";")
            assert len(fields) > 4 and fields[4] == "0", f"iteration {i}: fio error: {out}"
        rc, out = a.run(f"{CTL} remove r0", 120)
        assert rc == 0, f"iteration {i} ({mode}): remove after the writer finished: {out}"
        a.ok("test ! -e /dev/rmirror0")
    assert a.ok(f"{CTL} list").strip() == ""
    remove(b)
    for vm in (a, b):
        vm.ok("rmmod rmirror", timeout=120)
        assert not loaded(vm)


# Tight create/remove loops; prints "ok <n>" or the first failure. Under helpers.starved() the device's
# threads have usually not run yet when the remove stops them.
LOOP = """
i=0
while [ $i -lt {n} ]; do
  i=$((i+1))
  if ! err=$({ctl} create r0 --table '{line}' 2>&1 >/dev/null); then
    echo "create $i failed: $err"; exit 1
  fi
  if ! err=$({ctl} remove r0 2>&1 >/dev/null); then
    echo "remove $i failed: $err"; exit 2
  fi
done
echo "ok $i"
"""


def test_create_remove_races_thread_start(pair):
    """Create and remove at once, many times, with the CPUs of alpha hogged so that the threads a device
    starts have usually not run when removal stops them: a primary without a peer, a secondary, and a
    primary connecting to beta while beta creates and removes its secondary in a loop of its own (accept
    and handshake race teardown on both sides). Each create uses /dev/vdb again, so a claim leaked by a
    device that went away fails the next create with EBUSY."""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    for line in (primary_line(a, peer_port=NOPEER_PORT), table(a, "secondary")):
        rc, out = a.run(starved(LOOP.format(n=4, ctl=CTL, line=line)), 300)
        assert rc == 0 and out.strip() == "ok 4", f"alpha: {line}: {out}"
    scripts = {"alpha": starved(LOOP.format(n=4, ctl=CTL, line=table(a, "primary"))),
               "beta": LOOP.format(n=8, ctl=CTL, line=table(b, "secondary"))}
    outs = pair.each(lambda vm: vm.run(scripts[vm.name], 300))
    for name, (rc, out) in outs.items():
        assert rc == 0 and out.strip().startswith("ok "), f"{name}: concurrent create/remove loop: {out}"
    for vm in (a, b):
        assert vm.ok(f"{CTL} list").strip() == ""
        vm.ok("rmmod rmirror", timeout=120)
        assert not loaded(vm)


# ---- 3. a hanging connect does not block the control plane -------------------------------------------

# In /proc/net/tcp: beta's address and port 7789 (PORT + 1), little-endian address, port in hex; 02 = SYN_SENT.
R1_PORT = PORT + 1
SYN_SENT_R1 = f"awk '$3 == \"0200630A:{R1_PORT:04X}\" && $4 == \"02\"' /proc/net/tcp | grep -q ."
# Create r1, wait for its connect to hang, remove it in the background, and time each command on r0
# meanwhile ("cmd|<command>|<exit code>|<seconds>|<r1's removal: pending or done at the start>|<output>"); then wait up to 30 s for r1's removal
# ("r1done=<exit code> <start> <end>", times from /proc/uptime).
UNREACHABLE = """
up() {{ cut -d' ' -f1 /proc/uptime; }}
echo "t0=$(up)"
{ctl} create r1 --table '{r1}' || exit 1
i=0
until {syn_sent}; do
  i=$((i+1)); [ $i -gt 100 ] && {{ echo "r1 never tried to connect (no SYN_SENT socket)"; cat /proc/net/tcp; exit 1; }}
  sleep 0.1
done
echo "t1=$(up)"
rm -f /tmp/r1.done
( s=$(up); {ctl} remove r1 > /tmp/r1.out 2>&1; echo "$? $s $(up)" > /tmp/r1.done ) > /dev/null 2>&1 &
sleep 0.5
if [ -e /tmp/r1.done ]; then echo "r1=done"; else echo "r1=pending"; fi
for c in 'status r0' 'list' 'table r0' 'remove r0'; do
  if [ -e /tmp/r1.done ]; then r1=done; else r1=pending; fi
  s=$(up); {ctl} $c > /tmp/c.out 2>&1; rc=$?; e=$(up)
  echo "cmd|$c|$rc|$(awk -v s=$s -v e=$e 'BEGIN {{ print e - s }}')|$r1|$(head -c 300 /tmp/c.out | tr '\\n' ' ')"
done
i=0; while [ ! -e /tmp/r1.done ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
sleep 0.1
echo "r1done=$(cat /tmp/r1.done 2>/dev/null)"
echo "r1out=$(cat /tmp/r1.out 2>/dev/null | tr '\\n' ' ')"
"""


def test_remove_not_blocked_by_unreachable_peer(pair):
    """r0 (vdb, connected to beta) and r1 (a loop device, peer beta:7789 whose SYNs alpha's firewall drops,
    so its connect hangs in SYN_SENT). While `remove r1` tears r1 down, status, list, table and remove of
    r0 must each answer within 5 s (they must not wait behind r1's teardown or its connect), and r1's
    removal itself must finish within 15 s. (The driver before issue #6 held the registry lock across the
    teardown, yet passes in practice: kthread_stop() makes wait_woken() return at once, so r1's blocking
    connect ends within about 0.4-2.6 s instead of its 10 s send timeout.)"""
    a, b = pair.alpha, pair.beta
    connect_pair(pair)
    a.ok("truncate -s 64M /tmp/loop0.img && losetup /dev/loop0 /tmp/loop0.img")
    a.ok(f"iptables -A OUTPUT -d {IP['beta']} -p tcp --dport {R1_PORT} -j DROP")
    r1 = primary_line(a, peer_port=R1_PORT, local_port=R1_PORT, backing="/dev/loop0", sectors=65536)
    out = a.ok(UNREACHABLE.format(ctl=CTL, r1=r1, syn_sent=SYN_SENT_R1), timeout=180)
    print(out)
    info = dict(ln.split("=", 1) for ln in out.splitlines() if re.match(r"^[a-z0-9]+=", ln))
    r1_done = info.get("r1done", "").split()
    r1_took = float(r1_done[2]) - float(r1_done[1]) if len(r1_done) == 3 else None
    context = (f"(r1 created at {info.get('t0')}, SYN_SENT seen at {info.get('t1')}, r1 {info.get('r1')} 0.5 s "
               f"after its remove started; remove r1: {info.get('r1done')!r} {info.get('r1out')!r})")
    times, slow = {}, {}
    for ln in out.splitlines():
        if ln.startswith("cmd|"):
            _, cmd, rc, secs, r1_state, text = ln.split("|", 5)
            times[cmd] = (float(secs), r1_state)
            assert rc == "0", f"`rmirrorctl {cmd}` failed while r1 was being removed: {text} {context}"
            # Only a command that started while r1's removal was still going can have waited for it (a
            # slow command after that is the host's doing: TCG guests stall when the host is busy).
            if float(secs) >= 5.0 and r1_state == "pending":
                slow[cmd] = float(secs)
    assert len(times) == 4 and not slow, \
        f"commands on r0 waited for r1's teardown: {slow} (all: {times}) {context}"
    assert r1_took is not None and r1_done[0] == "0", f"remove r1 failed or did not finish {context}"
    assert r1_took < 15.0, f"remove r1 (peer unreachable, connect hanging) took {r1_took:.1f}s {context}"
    assert a.ok(f"{CTL} list").strip() == ""
    remove(b)


# ---- 4. no discard, write-zeroes or secure erase advertised ------------------------------------------

def queue_limits(vm, disk):
    """{file: value} of the discard, write-zeroes and atomic-write limits in /sys/block/<disk>/queue."""
    out = vm.ok(f"cd /sys/block/{disk}/queue && for f in discard_max_bytes discard_max_hw_bytes "
                "write_zeroes_max_bytes write_zeroes_unmap_max_bytes write_zeroes_unmap_max_hw_bytes "
                "atomic_write_max_bytes; do [ -e $f ] && echo \"$f=$(cat $f)\"; done; true")
    return {k: int(v) for k, v in (ln.split("=") for ln in out.split())}


def blkdiscard(vm, args):
    """(rc, output) of busybox blkdiscard (which opens the device O_EXCL)."""
    return vm.run(f"blkdiscard {args}")


def test_discard_and_secure_erase_not_advertised(pair):
    """The disk must not advertise what it does not mirror: discard_max_bytes, write_zeroes_max_bytes (and
    their hw/unmap variants) are 0 on both sides, although the backing virtio disk advertises discard and
    write-zeroes (asserted, so that the stacking of the backing disk's limits is really tested). Secure
    erase has no sysfs file: BLKSECDISCARD checks the limit before the range, so an unaligned range gives
    EOPNOTSUPP when secure erase is not advertised and EINVAL when it is. blkdiscard (plain and --secure,
    busybox's -s) fails with "Operation not supported", and no data changes on either disk, nor the write
    counters. (QEMU's virtio-blk does not offer secure erase, so the backing disk cannot show a
    secure-erase limit that the disk would inherit by stacking; the probe still pins the disk's answer.)"""
    a, b = pair.alpha, pair.beta
    pair.each(load)
    vdb = queue_limits(a, "vdb")
    # The backing disk's own answer to secure erase, before anything claims it (nothing is erased: EINVAL
    # or EOPNOTSUPP come before any I/O).
    rc, vdb_sec = blkdiscard(a, "-s -o 1 -l 512 /dev/vdb")
    assert rc != 0, vdb_sec
    assert vdb.get("discard_max_bytes", 0) > 0 and vdb.get("write_zeroes_max_bytes", 0) > 0, \
        f"the backing disk advertises no discard/write-zeroes, so the stacking is not tested: {vdb}"
    connect_pair(pair)
    a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=64k count=16 oflag=direct 2>/dev/null")
    before = {"alpha": md5_dev(a), "beta": md5_dev(b), "rmirror0": md5_dev(a, "/dev/rmirror0")}
    assert before["alpha"] == before["beta"] == before["rmirror0"], before
    st0 = status(a)

    for vm in (a, b):
        lim = queue_limits(vm, "rmirror0")
        assert lim.get("discard_max_bytes") == 0 and lim.get("write_zeroes_max_bytes") == 0, \
            f"{vm.name}: /sys/block/rmirror0/queue advertises discard/write-zeroes: {lim} (vdb: {vdb})"
        assert all(v == 0 for v in lim.values()), f"{vm.name}: rmirror0 limits {lim} (vdb: {vdb})"

    # Secure erase: not advertised (EOPNOTSUPP before the range check), whatever vdb says.
    rc, out = blkdiscard(a, "-s -o 1 -l 512 /dev/rmirror0")
    assert rc != 0 and "Operation not supported" in out, \
        f"rmirror0 advertises secure erase (vdb answered: {vdb_sec.strip()}): {out}"
    rc, out = blkdiscard(a, "-s /dev/rmirror0")
    assert rc != 0 and "Operation not supported" in out, f"blkdiscard -s /dev/rmirror0: {out}"
    # Plain discard, whole disk and the first MiB.
    for args in ("/dev/rmirror0", "-o 0 -l 1048576 /dev/rmirror0"):
        rc, out = blkdiscard(a, args)
        assert rc != 0 and "Operation not supported" in out, f"blkdiscard {args}: {out}"

    after = {"alpha": md5_dev(a), "beta": md5_dev(b), "rmirror0": md5_dev(a, "/dev/rmirror0")}
    assert after == before, f"data changed: before {before} after {after}"
    st = status(a)
    assert (st["writes"], st["write_bytes"]) == (st0["writes"], st0["write_bytes"]), \
        f"discard/secure erase reached the write path: before {st0} after {st}"
    assert st["cstate"] == "connected" and st["out_of_sync"] == 0, st


# ---- 5. overlapping writes in flight ------------------------------------------------------------------

CLASH_REGION = 256 << 10
# Two processes writing 4..64 KiB anywhere in 256 KiB (no random map, so blocks are rewritten all the time),
# each in batches of 16 writes submitted at once (one io_submit) after the previous 16 have completed: under
# protocol C completions wait for the peer's acks, so without batches each write would be submitted alone,
# as an ack frees a slot, and overlapping writes would rarely be in flight together. fio's buffers are
# random and scrambled per write, so any two writes to a block differ.
CLASH = ("fio --name=clash --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw=randwrite "
         f"--size={CLASH_REGION} --bsrange=4k-64k --norandommap --randrepeat=0 --iodepth=16 "
         "--iodepth_batch_submit=16 --iodepth_batch_complete_min=16 --numjobs=2 "
         "--time_based --runtime={runtime} --group_reporting --output-format=terse --terse-version=3")


def differing_blocks(pair, nbytes, bs=4096):
    """The indexes of the `bs`-byte blocks in the first `nbytes` of /dev/vdb that differ between the guests."""
    script = (f"echo 3 > /proc/sys/vm/drop_caches; i=0; while [ $i -lt {nbytes // bs} ]; do "
              f"dd if=/dev/vdb bs={bs} skip=$i count=1 2>/dev/null | md5sum; i=$((i+1)); done")
    sums = pair.each(lambda vm: vm.ok(script, timeout=300).split("\n"))
    return [i for i, (x, y) in enumerate(zip(sums["alpha"], sums["beta"])) if x != y]


def test_overlapping_writes_keep_disks_identical(pair):
    """Protocol C, two fio processes writing overlapping O_DIRECT ranges at once. The primary's disk may
    order two overlapping writes in flight either way (QEMU's virtio-blk sorts a batch of requests by
    sector, its thread pool runs them in parallel) while the secondary applies them one by one in wire
    order: unless the driver keeps overlapping writes apart, the disks diverge. After each of 3 rounds every write is acknowledged and the region is
    identical on both backing disks.

    The backing disks start with different garbage, which one sequential write through the mirror then
    replaces on both (so "equal" cannot come from untouched disks, and an untouched block cannot make them
    differ: a round of ~120 random writes, as under TCG, leaves some 4 KiB block of the region unwritten in
    about one run in six, which failed CI of stop 19). A failed comparison names the 4 KiB blocks that
    differ."""
    a = pair.alpha
    pair.each(lambda vm: vm.ok(f"dd if=/dev/urandom of=/dev/vdb bs=64k count={CLASH_REGION >> 16} "
                               "oflag=direct 2>/dev/null"))
    connect_pair(pair)
    a.ok(f"dd if=/dev/urandom of=/dev/rmirror0 bs=64k count={CLASH_REGION >> 16} oflag=direct 2>/dev/null")
    sums = pair.each(lambda vm: md5_dev(vm, "/dev/vdb", CLASH_REGION))
    assert sums["alpha"] == sums["beta"], \
        f"a sequential write through the mirror left the disks different: {differing_blocks(pair, CLASH_REGION)}"
    for rnd in range(3):
        out = a.ok(CLASH.format(runtime=8), timeout=180)
        fields = out.strip().splitlines()[-1].split(";")
        assert fields[4] == "0", f"round {rnd}: fio error {fields[4]}: {out}"
        st = status(a)
        assert st["cstate"] == "connected", f"round {rnd}: connection lost: {st}"
        assert st["acks"] == st["writes"] and st["out_of_sync"] == 0 and st["inflight"] == 0, \
            f"round {rnd}: {st}"
        sums = pair.each(lambda vm: md5_dev(vm, "/dev/vdb", CLASH_REGION))
        print(f"round {rnd}: {st['writes']} writes so far, alpha {sums['alpha']} beta {sums['beta']}")
        assert sums["alpha"] == sums["beta"], \
            f"round {rnd}: the disks differ after overlapping writes ({st['writes']} writes so far): " \
            f"4 KiB blocks {differing_blocks(pair, CLASH_REGION)}"


# ---- 6. forward progress under allocation failures ----------------------------------------------------

# dd reads a FIFO, so it is already running (exec'ed, files open, buffer faulted in by the first block)
# when make-it-fail is set for it: exec and dd's own start-up would otherwise fail under failslab, outside
# the driver. bs is at most 16 KiB so that the block layer's O_DIRECT path uses its 4 on-stack bio_vecs
# (__blkdev_direct_IO_simple kmallocs them for more pages): the allocations that remain in the writer's
# context are the write path's, below the block device (the driver's, and those of the block layer and
# virtio, which fall back by themselves). Prints "rc=<dd's exit code> left=<times left>" and dd's errors.
PRESSURE = """
F={attr}
rm -f /tmp/fifo; mkfifo /tmp/fifo
dd if=/tmp/fifo of=/dev/rmirror0 bs={bs} seek={seek} iflag=fullblock oflag=direct status=none 2>/tmp/dd.err &
pid=$!
exec 3>/tmp/fifo
acks() {{ tr ' ' '\\n' < /sys/block/rmirror0/rmirror/stats | sed -n 's/^acks=//p'; }}
a0=$(acks)
head -c {bs} /tmp/src >&3
i=0; while [ "$(acks)" = "$a0" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done
[ "$(acks)" != "$a0" ] || {{ echo "first block never acknowledged"; kill $pid; exit 1; }}
echo 1 > /proc/$pid/make-it-fail
{setup}
tail -c +$(({bs} + 1)) /tmp/src >&3
exec 3>&-
wait $pid
rc=$?
echo 0 > $F/probability
echo "rc=$rc left=$(cat $F/times)"
cat /tmp/dd.err
"""

TIMES = 1000000


def pressure_setup(attr, probability, extra=""):
    return (f"echo N > $F/task-filter; echo 0 > $F/probability; echo Y > $F/task-filter; "
            f"echo N > $F/ignore-gfp-wait; echo 1 > $F/verbose; echo 1 > $F/interval; echo 0 > $F/space; "
            f"echo {TIMES} > $F/times; {extra} echo {probability} > $F/probability")


def test_writes_progress_under_allocation_failures(pair):
    """dd writes through alpha's /dev/rmirror0 (connected to beta, protocol C) while failslab (and in the
    last phase fail_page_alloc) fails the allocations of dd's task, task-filter=Y with make-it-fail=1 for dd
    only, ignore-gfp-wait=N so that sleeping (GFP_NOIO/GFP_KERNEL) allocations fail too. Every write must
    complete without EIO (the write path needs reserves, e.g. mempools, not a plain allocation), failslab's
    failures must really have been injected (the attribute's `times` counts down; dmesg shows only those of
    allocations without __GFP_NOWARN, and rate-limited), every write must be acknowledged by the peer, and
    the data must be on both disks exactly as written."""
    a, b = pair.alpha, pair.beta
    for attr in (FAILSLAB, FAIL_PAGE):
        rc, _ = a.run(f"test -w {attr}/probability && test -w {attr}/task-filter && test -e /proc/self/make-it-fail")
        assert rc == 0, f"{attr} or make-it-fail missing: the test kernel needs CONFIG_FAILSLAB, " \
                        "CONFIG_FAIL_PAGE_ALLOC and CONFIG_FAULT_INJECTION_DEBUG_FS"
    connect_pair(pair)
    phases = [
        # (attribute, probability, bs, bytes, seek in bs units, extra setup)
        (FAILSLAB, 10, 16384, 4 << 20, 0, ""),
        (FAILSLAB, 20, 4096, 1 << 20, (4 << 20) // 4096, ""),
        (FAIL_PAGE, 20, 16384, 2 << 20, (6 << 20) // 16384,
         "echo N > $F/ignore-gfp-highmem; echo 0 > $F/min-order;"),
    ]
    try:
        for attr, prob, bs, nbytes, seek, extra in phases:
            name = os.path.basename(attr)
            a.ok(f"dd if=/dev/urandom of=/tmp/src bs=64k count={nbytes >> 16} 2>/dev/null")
            want = a.ok("md5sum < /tmp/src").split()[0]
            st0 = status(a)
            a.ok("dmesg -c > /dev/null")
            out = a.ok(PRESSURE.format(attr=attr, bs=bs, seek=seek, setup=pressure_setup(attr, prob, extra)),
                       timeout=300)
            msgs = a.ok("dmesg")
            m = re.search(r"^rc=(\d+) left=(-?\d+)$", out, re.M)
            assert m, f"{name}: {out}"
            injected = TIMES - int(m[2])
            shown = msgs.count("FAULT_INJECTION: forcing a failure")
            assert m[1] == "0", (f"{name} p={prob}% bs={bs}: dd failed ({injected} failures injected):\n{out}\n"
                                 f"kernel log:\n{msgs[-3000:]}")
            if attr == FAILSLAB:
                # failslab hits allocations in the writer's own write path (the driver's, the block
                # layer's and virtio's), whatever the driver's design: none at all means the set-up failed.
                # (fail_page_alloc may legitimately inject nothing: a write path that allocates no pages in
                # the writer's context gives it nothing to fail.)
                assert injected > 0, f"{name}: no failure was injected (dmesg shows {shown})"
            st = status(a)
            assert st["cstate"] == "connected", f"{name}: connection lost: {st}"
            assert st["writes"] - st0["writes"] >= nbytes // bs, (st0, st)
            assert st["acks"] == st["writes"] and st["out_of_sync"] == 0 and st["inflight"] == 0, st
            sums = pair.each(lambda vm: md5_dev(vm, "/dev/vdb", nbytes, seek * bs))
            assert sums == {"alpha": want, "beta": want}, \
                f"{name}: data on the disks differs from what dd wrote ({want}): {sums}"
            print(f"{name}: p={prob}% bs={bs}: {injected} failures injected, {shown} shown in dmesg")
    finally:
        for attr in (FAILSLAB, FAIL_PAGE):
            a.run(f"echo 0 > {attr}/probability; echo N > {attr}/task-filter; echo 1 > {attr}/times; "
                  f"echo Y > {attr}/ignore-gfp-wait; echo 2 > {attr}/verbose")
