# SPDX-License-Identifier: GPL-2.0
"""Helpers for the rmirror VM tests: module load, device create/remove, status, error assertions."""

import json
import re
import time

CTL = "/p/rmirrorctl"
KO = "/p/rmirror.ko"
PORT = 7788
IP = {"alpha": "10.99.0.1", "beta": "10.99.0.2"}
PEER = {"alpha": "beta", "beta": "alpha"}
DISK_SECTORS = 256 * 2048          # vdb is 256 MiB
S = 240 * 2048                     # sectors mirrored by the tests (leaves room for on-disk metadata)


def q(s):
    """Quote for sh."""
    return "'" + str(s).replace("'", "'\\''") + "'"


def table(vm, role, sectors=S, backing="/dev/vdb", protocol="C", opts=""):
    """The table line for `vm` in `role`, addresses from the guest's name."""
    me, peer = IP[vm.name], IP[PEER[vm.name]]
    t = f"0 {sectors} rmirror {backing} {role} {me}:{PORT} {peer}:{PORT} {protocol}"
    return f"{t} {opts}".strip()


def loaded(vm):
    return vm.run("grep -q '^rmirror ' /proc/modules")[0] == 0


def load(vm):
    if not loaded(vm):
        vm.ok(f"insmod {KO}")
    vm.ok("test -c /dev/rmirror-control")


RESET = """
for m in /mnt/a /mnt/b; do umount $m 2>/dev/null; done
iptables -F 2>/dev/null; tc qdisc del dev eth0 root 2>/dev/null
if grep -q '^rmirror ' /proc/modules; then rmmod rmirror || exit 1; fi
for l in /dev/loop[0-9]*; do losetup -d $l 2>/dev/null; done; rm -f /tmp/loop*.img
! grep -q '^rmirror ' /proc/modules
"""


def reset(vm):
    """Back to a clean guest: nothing mounted on /mnt/a, /mnt/b, no firewall rules or qdisc, the module
    unloaded (module exit removes every idle device), loop devices detached. One agent round trip."""
    rc, out = vm.run(RESET, 120)
    assert rc == 0, f"{vm.name}: cleanup failed (rmmod rmirror with a device still in use?): {out}"


def reset_pair(p):
    """reset() on both guests at once."""
    p.each(lambda vm: vm.broken or reset(vm))


def create(vm, role, name="r0", **kw):
    return vm.ok(f"{CTL} create {name} --table {q(table(vm, role, **kw))}")


def remove(vm, name="r0"):
    return vm.ok(f"{CTL} remove {name}")


def status(vm, name="r0"):
    """`rmirrorctl status NAME -o json` as a dict."""
    out = vm.ok(f"{CTL} status {name} -o json")
    st = json.loads(out)
    if isinstance(st, list):
        assert len(st) == 1, f"status of one device gave {st!r}"
        st = st[0]
    assert isinstance(st, dict), f"status -o json is not an object: {out!r}"
    return st


def wait_cstate(vm, want="connected", name="r0", timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        st = status(vm, name)
        if st.get("cstate") == want:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{vm.name}: {name} cstate={st.get('cstate')} after {timeout}s, want {want}: "
                                 f"{st}")
        time.sleep(0.5)


def connect_pair(p, name="r0", **kw):
    """Load the module on both guests, create beta = secondary and alpha = primary, wait until both say
    cstate=connected. Returns alpha's status."""
    p.each(load)
    create(p.beta, "secondary", name, **kw)
    create(p.alpha, "primary", name, **kw)
    wait_cstate(p.beta, name=name)
    return wait_cstate(p.alpha, name=name)


ERR_RE = re.compile(r"^rmirrorctl: (?P<verb>\S+) (?P<name>\S+): (?P<msg>.+) \((?P<errno>E[A-Z0-9]+)\)$")


def expect_error(vm, cmd, verb, name, errno, timeout=60):
    """Run `cmd`, which must fail with `rmirrorctl: <verb> <name>: <strerror> (<errno>)` on stderr.
    Returns the stderr text."""
    rc, out, err = vm.run3(cmd, timeout)
    assert rc != 0, f"{vm.name}: expected {errno} from:\n  $ {cmd}\nbut it succeeded: {out}{err}"
    lines = [m for m in map(ERR_RE.match, err.strip().splitlines()) if m]
    assert lines, f"{vm.name}: no 'rmirrorctl: VERB NAME: MSG (ERRNO)' line in stderr of {cmd!r}: {err!r}"
    m = lines[-1]
    assert (m["verb"], m["name"], m["errno"]) == (verb, name, errno), \
        f"{vm.name}: expected 'rmirrorctl: {verb} {name}: ... ({errno})', got {m.group(0)!r}"
    return err


def dmesg_during(vm, cmd, timeout=60):
    """Run `cmd` with the guest's printk ring buffer cleared first; return (rc, out, err, new kernel lines).
    (Clearing the ring buffer does not touch the console log the harness scans.)"""
    vm.ok("dmesg -c > /dev/null")
    rc, out, err = vm.run3(cmd, timeout)
    msgs = vm.ok("dmesg")
    return rc, out, err, msgs


def sysfs_write(vm, path, value):
    """Write `value` to a sysfs file; return (rc, error text). busybox's shell reports the errno text."""
    rc, out, err = vm.run3(f"busybox ash -c {q(f'echo {value} > {path}')}")
    return rc, out + err
