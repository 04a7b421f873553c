# SPDX-License-Identifier: GPL-2.0
"""Self-test of the VM test bed (needs no rmirror module): boot, identity, the private network, the
backing disks, the agent's exit codes/streams/timeouts, iptables in the guest and the kernel log scanner."""

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
