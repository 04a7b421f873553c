# SPDX-License-Identifier: GPL-2.0
"""pytest fixtures for the rmirror VM tests: one alpha/beta guest pair (scripts/vm.py) that the test modules
take turns on (a module that scans for leaks boots its own, with kmemleak on).

Environment:
  RMIRROR_KERNEL  bzImage (default /var/cache/rmirror/kernel/current/arch/x86/boot/bzImage)
  RMIRROR_ROOTFS  root file system image from scripts/rootfs.sh (default: run scripts/rootfs.sh)
  RMIRROR_MODULE  rmirror.ko     } modules that set NEEDS_MODULE = True are skipped when these are unset,
  RMIRROR_TOOL    rmirrorctl     } and fail when they are set to a missing file; rmirror-check (the
                                 per-block checker) is taken from rmirrorctl's directory
  RMIRROR_KVM=1   use KVM instead of TCG;  RMIRROR_SMP=N  vCPUs per guest (default 2)
  RMIRROR_KEEP=1  keep the work directory (console logs) of every pair, not only of failed ones
"""

import os
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(TOP, "scripts"))
import vm as vmlib  # noqa: E402

BOOT_TIMES = []


def _kernel():
    k = os.environ.get("RMIRROR_KERNEL") or vmlib.DEFAULT_KERNEL
    if not os.path.isfile(k):
        pytest.exit(f"no kernel at {k} (set RMIRROR_KERNEL; build it with scripts/kernel.sh)", returncode=2)
    return k


def _net():
    """The link between the guests: RMIRROR_NET=tap (tap devices in a host bridge: root) or socket
    (QEMU's socket netdev, the default). See scripts/vm.py."""
    net = os.environ.get("RMIRROR_NET", "socket")
    if net not in ("socket", "tap"):
        pytest.exit(f"RMIRROR_NET must be socket or tap, not {net!r}", returncode=2)
    return net


_rootfs_cache = []


def _rootfs():
    if not _rootfs_cache:
        r = os.environ.get("RMIRROR_ROOTFS")
        if not r:
            out = subprocess.run([os.path.join(TOP, "scripts/rootfs.sh")], check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
            r = out.strip().splitlines()[-1]
        if not os.path.isfile(r):
            pytest.exit(f"no rootfs image at {r}", returncode=2)
        _rootfs_cache.append(r)
    return _rootfs_cache[0]


def _payload(needs_module):
    payload = {}
    for var, dst in (("RMIRROR_MODULE", "rmirror.ko"), ("RMIRROR_TOOL", "rmirrorctl")):
        path = os.environ.get(var)
        if not path:
            if needs_module:
                pytest.skip(f"{var} is not set")
            continue
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{var}={path} does not exist")
        payload[dst] = path
        if dst == "rmirrorctl":
            check = os.path.join(os.path.dirname(path), "rmirror-check")
            if not os.path.isfile(check):
                raise FileNotFoundError(f"{check} does not exist (built with rmirrorctl: make tools)")
            payload["rmirror-check"] = check
    return payload


_SHARED = {}


@pytest.fixture(scope="session")
def _shared_pairs():
    """Pairs shared by every module that boots with the same options: a boot costs ~30 s of TCG time,
    so the modules take turns on one pair (see `pair`). Powered off, and their logs checked a last time,
    at the end of the session."""
    yield _SHARED
    errors = []
    for p in _SHARED.values():
        try:
            p.__exit__(None, None, None)
        except Exception as e:      # noqa: BLE001 - the first one is raised below
            errors.append(e)
    _SHARED.clear()
    if errors:
        raise errors[0]


@pytest.fixture(scope="module")
def pair(request, _shared_pairs):
    """A booted alpha/beta pair for the tests of one module. Its kernel logs are checked after every test
    (see _log_check) and once more after power-off: BUG:/WARNING:/Oops/... lines fail the run.

    Modules take turns on one pair (booted by the first of them): each gets it reset (modules unloaded,
    firewall, qdiscs and device-mapper cleared, see helpers.reset) and with both backing disks zeroed, as
    after a boot. A guest that an earlier test hung or crashed is rebooted (see _log_check). Modules that
    scan for leaks (KMEMLEAK = True) boot a pair of their own with kmemleak on, powered off after them."""
    needs_module = getattr(request.module, "NEEDS_MODULE", True)
    payload = _payload(needs_module)
    smp = int(os.environ.get("RMIRROR_SMP", vmlib.DEFAULT_SMP))
    # kmemleak records every allocation with its backtrace, a cost every test pays under TCG; only the
    # modules that scan for leaks (KMEMLEAK = True) boot with it on.
    if getattr(request.module, "KMEMLEAK", False):
        with vmlib.Pair(_kernel(), _rootfs(), payload, smp=smp, net=_net()) as p:
            BOOT_TIMES.append((request.module.__name__, p.alpha.boot_seconds, p.beta.boot_seconds))
            yield p
        return
    key = (smp, tuple(sorted(payload.items())))
    p = _shared_pairs.get(key)
    if p is None:
        p = vmlib.Pair(_kernel(), _rootfs(), payload, smp=smp, append="kmemleak=off", net=_net())
        p.__enter__()
        _shared_pairs[key] = p
        BOOT_TIMES.append((request.module.__name__, p.alpha.boot_seconds, p.beta.boot_seconds))
    else:
        if any(vm.broken for vm in p.vms.values()):
            p.restart()
            BOOT_TIMES.append((request.module.__name__, p.alpha.boot_seconds, p.beta.boot_seconds))
        from helpers import reset_pair
        reset_pair(p)
        p.wipe_disks()
        p.check_logs()
    p.clean = True
    yield p


@pytest.fixture
def clean_pair(pair):
    """Each test starts from, and leaves, unloaded modules and nothing mounted (modules opt in with
    `pytestmark = pytest.mark.usefixtures("clean_pair")`). The reset after a test is done by _log_check,
    in the same guest command as its end marker, and fails the test if the module cannot be unloaded; it
    is what the next test starts from, so the reset before a test runs only when that one did not
    complete (or the pair is new to the module). After a failed test the backing disks are zeroed again
    too, as for a new module, so what it left behind cannot fail the next one."""
    from helpers import reset_pair
    if not getattr(pair, "clean", False):
        reset_pair(pair)
    if getattr(pair, "failed", False):
        # The test before failed: whatever it left on the disks (a detached disk never pulled back, a
        # resync cut short) must not fail this one, whose tests may declare the two disks in sync.
        pair.wipe_disks()
        pair.failed = False
    pair.clean = False
    yield


def pytest_runtest_protocol(item, nextitem):
    """Remember the next test, whose start marker the teardown of this one writes (see _log_check)."""
    item.rmirror_next = nextitem


def _start_marker(nodeid):
    return f"rmirror-test: start {nodeid}"


@pytest.fixture(autouse=True)
def _log_check(request):
    """Mark each test's start and end in the guests' kernel logs and fail the test (at teardown) if a
    guest logged BUG:/WARNING:/Oops/... while it ran (the reset after it included).

    Every guest command costs an agent round trip (~0.2 s under TCG), so the teardown is one command per
    guest: the clean_pair reset (if the test uses it), the end marker, and the start marker of the next
    test of the same module, which then skips its own."""
    if "pair" not in request.fixturenames:
        yield
        return
    from helpers import RESET
    p = request.getfixturevalue("pair")
    node = request.node
    broken = [f"{vm.name} ({vm.broken})" for vm in p.vms.values() if vm.broken]
    if broken:
        # an earlier test hung or crashed a guest (and failed for it): carry on with a fresh pair
        vmlib.log(f"guest(s) {', '.join(broken)} unusable: rebooting the pair for {node.nodeid}")
        p.restart()
        p.started = None
    if getattr(p, "started", None) != node.nodeid:
        p.each(lambda vm: vm.kmsg(_start_marker(node.nodeid)))
    p.started = None
    yield
    reset = "clean_pair" in request.fixturenames
    nxt = getattr(node, "rmirror_next", None)
    nxt = nxt if nxt is not None and nxt.module is node.module and "pair" in nxt.fixturenames else None
    end = f"rmirror-test: end {node.nodeid}"
    script = (f"( {RESET} ) > /tmp/reset.out 2>&1; rc=$?; cat /tmp/reset.out\n" if reset else "rc=0\n")
    script += f"echo {vmlib.shquote(end)} > /dev/kmsg\n"
    if nxt is not None:
        script += f"[ $rc = 0 ] && echo {vmlib.shquote(_start_marker(nxt.nodeid))} > /dev/kmsg\n"
    script += "exit $rc\n"
    res = p.each(lambda vm: None if vm.broken else vm.run(script, 120))
    p.each(lambda vm: vm.broken or vm.wait_console(end))
    p.check_logs()
    failed = {name: r[1] for name, r in res.items() if r is not None and r[0] != 0}
    assert not failed, f"cleanup failed (rmmod rmirror with a device still in use?): {failed}"
    if reset:
        p.clean = True
    if nxt is not None:
        p.started = nxt.nodeid


def pytest_terminal_summary(terminalreporter):
    if BOOT_TIMES:
        terminalreporter.write_sep("-", "rmirror guest boot times (QEMU start to agent answer, both at once)")
        for mod, a, b in BOOT_TIMES:
            terminalreporter.write_line(f"{mod}: alpha {a:.1f}s, beta {b:.1f}s")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, add each guest's kernel log since the test's start marker to the report."""
    outcome = yield
    rep = outcome.get_result()
    p = item.funcargs.get("pair") if hasattr(item, "funcargs") else None
    if not rep.failed or p is None:
        return
    p.failed = True
    for name, vm in p.vms.items():
        text = vm.dmesg()
        mark = text.rfind(f"rmirror-test: start {item.nodeid}")
        if mark >= 0:
            text = text[text.rfind("\n", 0, mark) + 1:]
        lines = text.splitlines()[-150:]
        rep.sections.append((f"{name} kernel log ({call.when})", "\n".join(lines)))
