# SPDX-License-Identifier: GPL-2.0
"""Self-test of the VM test bed (needs no rmirror module): boot, identity, the private network, the
backing disks, the agent's exit codes/streams/timeouts, iptables in the guest and the kernel log scanner."""

import os
import re
import time
import uuid

import pytest

import vm as vmlib

NEEDS_MODULE = False


def test_identity(pair):
    for name, vm in pair.vms.items():
        out = vm.ok("hostname; cat /sys/block/vdb/size; cat /sys/block/vda/ro /sys/block/vdc/ro; "
                    "ip -4 -o addr show eth0; grep -c ' /p ext4 ro' /proc/mounts; id -u tester; id -u nobody")
        lines = out.split("\n")
        assert lines[0] == name
        assert int(lines[1]) == pair.disk_mib * 2048
        assert lines[2:4] == ["1", "1"], "rootfs and payload must be read-only disks"
        assert vmlib.GUESTS[name][0] in lines[4]
        assert lines[5:8] == ["1", "1000", "65534"]


def test_tools_present(pair):
    out = pair.alpha.ok("fio --version; ip -V; tc -V 2>/dev/null; iptables -V; mkfs.ext4 -V 2>&1 | head -1; "
                        "e2fsck -V 2>&1 | head -1; dmsetup --version; setpriv --version; "
                        "blockdev --version; debugfs -V 2>&1 | head -1; echo x | md5sum; echo x | sha256sum")
    for want in ("fio-", "iproute2", "iptables v", "mke2fs", "e2fsck", "Library version", "util-linux",
                 "401b30e3b8b5d629635a5c613cdb7919", "debugfs"):
        assert want in out, out


def test_ping_both_ways(pair):
    pair.alpha.ok("ping -c 2 -W 5 10.99.0.2")
    pair.beta.ok("ping -c 2 -W 5 10.99.0.1")


def test_disks_are_private(pair):
    tag = uuid.uuid4().hex
    pair.alpha.ok(f"echo alpha-{tag} | dd of=/dev/vdb bs=4096 conv=sync oflag=direct 2>/dev/null")
    pair.beta.ok(f"echo beta-{tag} | dd of=/dev/vdb bs=4096 conv=sync oflag=direct 2>/dev/null")
    assert pair.alpha.ok("head -c 4096 /dev/vdb | tr -d '\\0'").strip() == f"alpha-{tag}"
    assert pair.beta.ok("head -c 4096 /dev/vdb | tr -d '\\0'").strip() == f"beta-{tag}"
    # a bigger direct write and read-back
    pair.alpha.ok("dd if=/dev/urandom of=/tmp/x bs=1M count=4 2>/dev/null && "
                  "dd if=/tmp/x of=/dev/vdb bs=64k seek=16 oflag=direct 2>/dev/null && "
                  "dd if=/dev/vdb of=/tmp/y bs=64k skip=16 count=64 iflag=direct 2>/dev/null && cmp /tmp/x /tmp/y")


def test_stalled_boot_is_power_cycled_again(pair, monkeypatch):
    """A boot whose console stays silent for BOOT_STALL seconds (planted: beta's first QEMU after the power
    cycle starts paused, -S) is killed and booted again, and the guest then answers."""
    beta = pair.beta
    monkeypatch.setattr(vmlib, "BOOT_STALL", 5)
    argv, starts = beta.qemu_argv, []

    def first_paused():
        starts.append(time.monotonic())
        return argv() + (["-S"] if len(starts) == 1 else [])
    monkeypatch.setattr(beta, "qemu_argv", first_paused)
    beta.power_cycle()
    assert len(starts) == 2, f"QEMU started {len(starts)} times"
    assert starts[1] - starts[0] >= 5
    assert beta.ok("echo up").strip() == "up"
    pair.beta.ok("ping -c 1 -W 5 10.99.0.1")


def test_agent_streams_and_codes(pair):
    rc, out, err = pair.alpha.run3("echo out; echo err >&2; exit 3")
    assert (rc, out, err) == (3, "out\n", "err\n")
    rc, out = pair.alpha.run("printf 'a b\\tc\\n\\001 end'; true")
    assert (rc, out) == (0, "a b\tc\n\001 end")
    out = pair.beta.ok("head -c 300000 /dev/zero | tr '\\0' x")
    assert out == "x" * 300000
    with pytest.raises(vmlib.CommandFailed) as e:
        pair.beta.ok("echo visible; false")
    assert "visible" in str(e.value)


def test_agent_timeout_kills_session(pair):
    t = time.monotonic()
    rc, out = pair.alpha.run("sleep 300 & sleep 301; echo not-reached", timeout=3)
    assert rc == 137 and "not-reached" not in out
    assert time.monotonic() - t < 30
    # the whole session is gone, including the background sleep, and the agent still answers
    assert pair.alpha.ok("ps | grep -c '[s]leep 30[01]' || true").strip() == "0"


def test_iptables_blocks_port(pair):
    """The fault-injection path later tests rely on: drop TCP 7788 on beta, then allow it again."""
    a, b = pair.alpha, pair.beta

    def try_connect():
        b.ok("(nc -l -p 7788 > /tmp/nc.out 2>/dev/null &); "
             "for i in $(seq 100); do netstat -ltn | grep -q ':7788 ' && exit 0; sleep 0.1; done; exit 1")
        a.run("echo hello | nc -w 3 10.99.0.2 7788", timeout=20)
        time.sleep(0.5)
        got = b.ok("cat /tmp/nc.out; rm -f /tmp/nc.out; killall nc 2>/dev/null; true")
        return "hello" in got

    try:
        assert try_connect(), "TCP 10.99.0.2:7788 must be reachable without rules"
        b.ok("iptables -A INPUT -p tcp --dport 7788 -j DROP")
        assert "DROP" in b.ok("iptables -S INPUT")
        assert not try_connect(), "iptables DROP on beta did not block TCP 7788"
        b.ok("iptables -D INPUT -p tcp --dport 7788 -j DROP")
        assert try_connect()
    finally:
        b.run("iptables -F")


def test_tc_netem(pair):
    try:
        pair.alpha.ok("tc qdisc add dev eth0 root netem delay 200ms")
        out = pair.alpha.ok("ping -c 2 -W 5 10.99.0.2")
        times = [float(t) for t in re.findall(r"time=([0-9.]+) ms", out)]
        assert len(times) == 2 and min(times) >= 200, out
    finally:
        pair.alpha.run("tc qdisc del dev eth0 root")


def test_log_scanner_catches_bug(pair):
    """Inject a 'BUG:' line into alpha's kernel log: the scanner must report it (this test expects that
    failure, then tells the pair to ignore the line so the run stays green)."""
    tok = f"rmirror-scanner-selftest-{uuid.uuid4().hex[:8]}"
    pair.alpha.kmsg(f"BUG: {tok}")
    deadline = time.monotonic() + 20
    while tok not in pair.dmesg("alpha") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert tok in pair.dmesg("alpha"), "injected line never reached the console log"
    try:
        with pytest.raises(vmlib.LogScanError) as e:
            pair.check_logs()
        assert f"BUG: {tok}" in str(e.value)
    finally:
        pair.alpha.ignore_log(tok)
    pair.check_logs()   # reported once, now clean


def test_log_scanner_patterns(tmp_path):
    """Every pattern in LOG_PATTERNS is caught, ordinary lines are not (offline, on a fake log)."""
    vm = vmlib.Vm("alpha", str(tmp_path), "k", "r", "p", "d", "n")
    lines = ["[    1.0] BUG: kernel NULL pointer dereference", "[    1.1] WARNING: CPU: 0 PID: 1 at x.c:1",
             "[    1.2] Oops: 0000 [#1] SMP", "[    1.3] BUG: KASAN: use-after-free",
             "[    1.4] general protection fault, probably for non-canonical address",
             "[    1.5] Kernel panic - not syncing: x", "[    1.6] rmirror: r0: connected", "[ 1.7] ACPI: Warning"]
    with open(vm.console, "w") as f:
        f.write("\n".join(lines) + "\n")
    bad = vm.new_log_problems()
    assert bad == lines[:6]
    assert vm.new_log_problems() == []


#: The first lines of the splats of the test kernel's debug options, in the kernel's own formats (7.2 source:
#: kernel/locking/lockdep.c, mm/kasan/report.c, kernel/sched/core.c, lib/debugobjects.c, kernel/panic.c),
#: each with the LOG_PATTERNS string that names its class (None: only the generic "BUG:" catches it).
SPLATS = [
    ("lockdep", "WARNING: possible circular locking dependency detected",
     "possible circular locking dependency"),
    ("lockdep", "WARNING: possible recursive locking detected", "possible recursive locking"),
    ("lockdep", "WARNING: inconsistent lock state", "inconsistent lock state"),
    ("lockdep", "WARNING: possible irq lock inversion dependency detected", "possible irq lock inversion"),
    ("lockdep", "WARNING: HARDIRQ-safe -> HARDIRQ-unsafe lock order detected", "lock order detected"),
    ("lockdep", "WARNING: suspicious RCU usage", "suspicious RCU usage"),
    ("lockdep", "[ BUG: Invalid wait context ]", "Invalid wait context"),
    ("lockdep", "WARNING: bad unlock balance detected!", "bad unlock balance"),
    ("lockdep", "WARNING: held lock freed!", "held lock freed"),
    ("lockdep", "WARNING: kworker/1:2/57 still has locks held!", "still has locks held"),
    ("lockdep", "WARNING: Nested lock was not taken", "Nested lock was not taken"),
    ("lockdep", "WARNING: bad contention detected!", "bad contention detected"),
    ("lockdep", "WARNING: chain_key collision", "chain_key collision"),
    ("lockdep", "DEBUG_LOCKS_WARN_ON(lock->magic != lock)", "DEBUG_LOCKS_WARN_ON"),
    ("lockdep off", "BUG: MAX_LOCKDEP_ENTRIES too low!", None),
    ("lockdep off", "turning off the locking correctness validator.",
     "turning off the locking correctness validator"),
    ("lockdep off", "INFO: trying to register non-static key.", "trying to register non-static key"),
    ("lockdep off", "Disabling lock debugging due to kernel taint",
     "Disabling lock debugging due to kernel taint"),
    ("KASAN", "BUG: KASAN: slab-use-after-free in rmirror_fake+0x1c/0x40 [rmirror]", "KASAN:"),
    ("KASAN", "BUG: KASAN: invalid-access", "KASAN:"),
    ("KASAN", "KASAN: null-ptr-deref in range [0x0000000000000008-0x000000000000000f]", "KASAN:"),
    ("atomic sleep", "BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580",
     "sleeping function called from invalid context"),
    ("atomic sleep", "BUG: scheduling while atomic: kworker/1:2/57/0x00000002", "scheduling while atomic"),
    ("debug objects", "ODEBUG: free active (active state 0) object: ffff888004a1c2a0 object type: timer_list "
     "hint: rmirror_fake_timer+0x0/0x20 [rmirror]", "ODEBUG:"),
    ("debug objects", "ODEBUG: Out of memory. ODEBUG disabled", "ODEBUG:"),
]

#: Lines of a clean boot of the test kernel (2 vCPUs) that must not fail a run, copied from a real console log
#: (they name KASAN, lockdep, RCU, panic or a failure in words a loose pattern would catch), and a
#: fault-injection notice (lib/fault-inject.c) that tests cause on purpose.
BENIGN = [
    "[    0.000000] KernelAddressSanitizer initialized (generic)",
    "[    0.000000] Kernel command line: console=ttyS0 loglevel=8 no_timer_check printk.devkmsg=on pci=noacpi "
    "root=/dev/vda ro rootfstype=ext4 init=/init panic=-1 rmirror.host=alpha rmirror.ip=10.99.0.1/24",
    "[    0.000000] rcu: \tRCU lockdep checking is enabled.",
    "[    0.000000] Lock dependency validator: Copyright (c) 2006 Red Hat, Inc., Ingo Molnar",
    "[    0.000000] ... MAX_LOCKDEP_SUBCLASSES:  8",
    "[    0.000000] ... MAX_LOCK_DEPTH:          48",
    "[    0.000000] ... MAX_LOCKDEP_KEYS:        8192",
    "[    0.000000] ... MAX_LOCKDEP_ENTRIES:     32768",
    "[    0.000000] ... MAX_LOCKDEP_CHAINS:      65536",
    "[    0.000000]  memory used by lock dependency info: 6429 kB",
    "[    0.006578] calibrate_delay_direct() failed to get a good estimate for loops_per_jiffy.",
    "[    1.062578] clocksource: Marking clocksource tsc-early unstable due to frequency skew",
    "[   13.167189] pci 0000:00:02.0: BAR 0 [io  size 0x0080]: failed to assign",
    "[   25.610868] kmemleak: Kernel memory leak detector initialized (mem pool available: 15075)",
    "[   30.1] rmirror-test: end tests/vm/test_testbed.py::test_log_scanner_catches_bug",
    "[   30.2] FAULT_INJECTION: forcing a failure.",
]


@pytest.mark.parametrize("cls,line,pattern", SPLATS, ids=[f"{c}:{p or 'BUG:'}" for c, _, p in SPLATS])
def test_log_scanner_splat_offline(cls, line, pattern):
    """Each splat's first line fails the run, and the string that names its class catches it on its own
    (without the generic "WARNING: "/"BUG: " prefix)."""
    assert vmlib.log_problem(f"[   12.345678] {line}") is not None
    if pattern is not None:
        assert pattern in vmlib.LOG_PATTERNS
        bare = re.sub(r"^(\[ )?(WARNING|BUG): ", r"\1", line)
        assert vmlib.log_problem(f"[   12.345678] {bare}") is not None, bare
        assert vmlib.log_problem(f"[   12.345678] {line} token", ignored=("token",)) is None


def test_log_scanner_benign_offline():
    for line in BENIGN:
        assert vmlib.log_problem(line) is None, line


def test_clean_boot_log(pair):
    """Nothing in either guest's console log so far fails the run, and the log does contain the boot lines
    of lockdep and KASAN that a loose pattern would flag."""
    for name, vm in pair.vms.items():
        text = vm.dmesg()
        for want in ("Lock dependency validator", "MAX_LOCKDEP_ENTRIES", "KernelAddressSanitizer initialized",
                     "RCU lockdep checking is enabled"):
            assert want in text, f"{name}: no {want!r} in the boot log"
        _, bad = vm.log_problems(0)
        assert bad == [], f"{name}: a clean boot log was flagged: {bad}"


def test_log_scanner_catches_splats(pair):
    """Write every splat's first line to beta's kernel log through /dev/kmsg: the scanner reports each."""
    tok = f"rmirror-splat-selftest-{uuid.uuid4().hex[:8]}"
    lines = [f"{line} {tok}-{i}" for i, (_, line, _) in enumerate(SPLATS)]
    pair.beta.ok("\n".join(f"echo {vmlib.shquote(ln)} > /dev/kmsg" for ln in lines))
    pair.beta.kmsg(f"rmirror-test: injected {tok}", wait=True)
    try:
        with pytest.raises(vmlib.LogScanError) as e:
            pair.check_logs()
        missed = [ln for ln in lines if ln not in str(e.value)]
        assert not missed, f"the scanner missed {missed}"
    finally:
        pair.beta.ignore_log(tok)
    pair.check_logs()


def test_two_cpus(pair):
    """Guests have 2 vCPUs unless RMIRROR_SMP says otherwise, and really run that many."""
    if "RMIRROR_SMP" not in os.environ:
        assert pair.smp == vmlib.DEFAULT_SMP == 2
    online = "0" if pair.smp == 1 else f"0-{pair.smp - 1}"
    for name, vm in pair.vms.items():
        out = vm.ok("nproc; cat /sys/devices/system/cpu/online").split()
        assert out == [str(pair.smp), online], f"{name}: {out}"


def test_debug_kernel_active(pair):
    """lockdep (still on), KASAN, debug objects and the fault-injection knobs are in the guest kernel."""
    for name, vm in pair.vms.items():
        assert "KernelAddressSanitizer initialized" in vm.dmesg(), f"{name}: KASAN is not on"
        out = vm.ok("head -1 /proc/lockdep; "
                    "awk '$1 == \"debug_locks:\" || $1 == \"lock-classes:\" {print $1, $2}' "
                    "/proc/lockdep_stats; "
                    "grep -c . /sys/kernel/debug/debug_objects/stats; "
                    "for d in failslab fail_page_alloc fail_make_request; do "
                    "test -f /sys/kernel/debug/$d/probability && echo $d; done; "
                    "test -f /proc/self/make-it-fail && echo make-it-fail; "
                    "test -f /sys/block/vdb/make-it-fail && echo vdb-make-it-fail")
        lines = out.splitlines()
        assert lines[0] == "all lock classes:", f"{name}: no /proc/lockdep: {out}"
        stats = dict(ln.split() for ln in lines[1:3])
        assert stats["debug_locks:"] == "1", f"{name}: lockdep has switched itself off: {out}"
        assert int(stats["lock-classes:"]) > 0, out
        assert int(lines[3]) > 0, f"{name}: no debug_objects stats: {out}"
        assert lines[4:] == ["failslab", "fail_page_alloc", "fail_make_request", "make-it-fail",
                             "vdb-make-it-fail"], f"{name}: {out}"
