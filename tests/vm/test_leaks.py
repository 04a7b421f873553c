# SPDX-License-Identifier: GPL-2.0
"""Nothing leaks: kmemleak (CONFIG_DEBUG_KMEMLEAK, on-demand scans) after create / I/O / connection
loss / remove cycles on both sides, including a hostile connection to the secondary.

Only reports whose allocation backtrace passes through rmirror count (boot-time false positives
of other subsystems are not ours to judge). The module stays loaded while scanning, so those
backtraces still resolve to rmirror's symbols."""

import base64
import time

import pytest

from helpers import CTL, PORT, connect_pair, load, remove, status

KMEMLEAK_FILE = "/sys/kernel/debug/kmemleak"
KMEMLEAK = True          # conftest: boot this module's guests with kmemleak on


pytestmark = pytest.mark.usefixtures("clean_pair")


def kmemleak_available(vm):
    rc, _ = vm.run(f"test -r {KMEMLEAK_FILE} && cat {KMEMLEAK_FILE} >/dev/null")
    return rc == 0


def our_leaks(vm):
    """Scan (twice, after the minimum object age) and return the reports that involve rmirror."""
    time.sleep(6)  # kmemleak ignores objects younger than 5 s
    vm.ok(f"echo scan > {KMEMLEAK_FILE}", timeout=300)
    vm.ok(f"echo scan > {KMEMLEAK_FILE}", timeout=300)
    text = vm.ok(f"cat {KMEMLEAK_FILE}")
    reports = [r for r in text.split("unreferenced object") if r.strip()]
    return [r for r in reports if "rmirror" in r]


def test_kmemleak_is_active(pair):
    """The leak test below is only meaningful if the detector runs."""
    for vm in (pair.alpha, pair.beta):
        assert kmemleak_available(vm), f"{vm.name}: {KMEMLEAK_FILE} not readable (kernel without kmemleak?)"
        assert vm.run("dmesg | grep -q 'kmemleak.*disabled'")[0] != 0, vm.ok("dmesg | grep kmemleak")


def test_no_leaks_after_create_io_remove_cycles(pair):
    a, b = pair.alpha, pair.beta
    for vm in (a, b):
        load(vm)
        vm.ok(f"echo clear > {KMEMLEAK_FILE}")
    for i in range(2):
        connect_pair(pair)
        a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=64 oflag=direct 2>/dev/null && "
             "dd if=/dev/urandom of=/dev/rmirror0 bs=128k count=16 oflag=direct 2>/dev/null && "
             "dd if=/dev/rmirror0 of=/dev/null bs=64k count=32 2>/dev/null && sync")
        if i == 1:
            # Lose the connection with writes around, then carry on without the peer: the writes go to
            # the outage queue (with copies of their data), which the removal below must free.
            remove(b)
            a.ok("for i in $(seq 1 100); do grep -q 'cstate=connected' /sys/block/rmirror0/rmirror/stats "
                 "|| exit 0; sleep 0.1; done; exit 1")
            a.ok("dd if=/dev/urandom of=/dev/rmirror0 bs=4k count=16 oflag=direct 2>/dev/null")
            assert status(a)["queued"] > 0
        else:
            remove(b)
        remove(a)
    # A hostile connection to a secondary (garbage after a TCP connect) is dropped and freed.
    load(b)
    b.ok(f"{CTL} create r0 --table '0 65536 rmirror /dev/vdb secondary 10.99.0.2:{PORT} 10.99.0.1:{PORT} C'")
    junk = base64.b64encode(b"\xde\xad\xbe\xef" * 64).decode()
    a.run(f"echo {junk} | base64 -d | timeout 5 nc 10.99.0.2 {PORT}", timeout=30)
    b.ok("for i in $(seq 1 50); do dmesg | grep -q 'refused a connection from .*: bad magic' && exit 0; sleep 0.1; "
         "done; exit 1")
    remove(b)
    for vm in (a, b):
        leaks = our_leaks(vm)
        assert not leaks, f"{vm.name}: kmemleak reports involving rmirror:\n" + "\n".join(leaks)
