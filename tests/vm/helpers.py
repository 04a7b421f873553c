# SPDX-License-Identifier: GPL-2.0
"""Helpers for the rmirror VM tests: module load, device create/remove, status, error assertions."""

import base64
import json
import re
import struct
import time

CTL = "/p/rmirrorctl"
CHECK = "/p/rmirror-check"
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


# Each step runs only when there is something to undo (checked with shell builtins: every exec costs
# ~50 ms under TCG, and this runs after every test).
RESET = """
while read -r _ m _; do case $m in /mnt/a|/mnt/b) umount $m ;; esac; done < /proc/mounts
iptables -F 2>/dev/null; tc qdisc del dev eth0 root 2>/dev/null
for f in /sys/kernel/debug/fail*/probability; do echo 0 > $f; done 2>/dev/null
for c in /proc/[0-9]*/comm; do n=; read -r n 2>/dev/null < "$c"; [ "$n" = rmirrorctl ] && { killall rmirrorctl; sleep 0.3; break; }; done
loaded=; while read -r n _; do [ "$n" = rmirror ] && loaded=1; done < /proc/modules
[ -n "$loaded" ] && { rmmod rmirror || exit 1; }
for d in /sys/block/dm-*; do [ -e "$d" ] && { dmsetup remove_all; break; }; done
for l in /sys/block/loop*/loop/backing_file; do [ -e "$l" ] && { d=${l#/sys/block/}; losetup -d /dev/${d%%/*}; }; done 2>/dev/null
for f in /tmp/loop*.img; do [ -e "$f" ] && rm -f /tmp/loop*.img; break; done
while read -r n _; do [ "$n" = rmirror ] && exit 1; done < /proc/modules
exit 0
"""


def reset(vm):
    """Back to a clean guest: nothing mounted on /mnt/a, /mnt/b, no firewall rules or qdisc, no fault
    injection armed, no rmirrorctl left running (an open control device pins the module), the module unloaded (module exit removes every idle device), loop devices detached.
    One agent round trip."""
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


# ---- used by test_soundness.py ---------------------------------------------------------------------------

def md5_dev(vm, dev="/dev/vdb", nbytes=1 << 20, offset=0, bs=65536):
    """md5 of `nbytes` at byte `offset` of block device `dev`, read past stale page cache (the page cache
    is dropped first: busybox dd does not honour iflag=direct, and the driver writes the backing disk with
    bios). `offset` and `nbytes` must be multiples of `bs`."""
    assert offset % bs == 0 and nbytes % bs == 0, (offset, nbytes, bs)
    return vm.ok(f"echo 3 > /proc/sys/vm/drop_caches; "
                 f"dd if={dev} bs={bs} skip={offset // bs} count={nbytes // bs} 2>/dev/null | md5sum",
                 timeout=300).split()[0]


def exclusive_open(vm, dev="/dev/vdb"):
    """Whether `dev` can be opened with O_EXCL (an exclusive claim, as mkfs or mount take it), i.e. no driver
    still holds it. Returns (ok, output). The probe is busybox blkdiscard with a zero length: it opens the
    device O_RDWR|O_EXCL, then the kernel rejects the empty range (EINVAL) or discard as such (EOPNOTSUPP)
    before touching any data."""
    rc, out = vm.run(f"blkdiscard -o 0 -l 0 {dev}")
    return "can't open" not in out, out


def fault_attr(vm, path, **values):
    """Write fault-injection debugfs attributes (Documentation/fault-injection/fault-injection.rst) under
    `path`, e.g. fault_attr(vm, "/sys/kernel/debug/failslab", probability=10, task_filter="Y"): underscores
    in names become dashes. One agent round trip; fails if a file is missing or refuses the value."""
    cmds = [f"echo {v} > {path}/{k.replace('_', '-')}" for k, v in values.items()]
    vm.ok(" && ".join(cmds))


def fault_attr_read(vm, path, *names):
    """{name: value} of fault-injection attributes (integers where they parse)."""
    out = vm.ok("; ".join(f"echo \"{n}=$(cat {path}/{n.replace('_', '-')})\"" for n in names))
    res = {}
    for line in out.strip().splitlines():
        k, _, v = line.partition("=")
        try:
            res[k] = int(v)
        except ValueError:
            res[k] = v
    return res


def starved(script, seconds=240):
    """A sh script that runs `script` at nice -20 while one busy loop per CPU, also at nice -20 and pinned to
    its CPU, hogs the guest. Nice-0 threads, such as the kernel threads a driver starts (and kthreadd, which
    forks them), then wait hundreds of milliseconds for a CPU after being woken, while `script` keeps going:
    this widens the window between a thread's creation and its first run. Everything happens in one agent
    command (the agent itself runs at nice 0); the loops are killed when `script` ends, and end by themselves
    after `seconds`. The script's exit code, stdout and stderr are the wrapper's."""
    return (f"cat > /tmp/starved.sh <<'RMIRROR_STARVED_EOF'\n{script}\nRMIRROR_STARVED_EOF\n"
            "pids=; for c in $(seq 0 $(($(nproc) - 1))); do "
            f"timeout {int(seconds)} nice -n -20 taskset -c $c sh -c 'while :; do :; done' "
            "</dev/null >/dev/null 2>&1 & pids=\"$pids $!\"; done\n"
            "nice -n -20 sh /tmp/starved.sh; rc=$?\n"
            "kill $pids 2>/dev/null; wait\n"
            "exit $rc\n")


# ---- used by test_outage.py and test_hostile.py --------------------------------------------------------

def background(vm, script, name):
    """Start `script` (sh) in its own session in the guest, detached: stdout and stderr go to
    /tmp/<name>.out, its exit code to /tmp/<name>.rc once it ends. Returns at once."""
    vm.ok(f"cat > /tmp/{name}.sh <<'RMIRROR_BG_EOF'\n{script}\nRMIRROR_BG_EOF\n"
          f"rm -f /tmp/{name}.rc; setsid sh -c 'sh /tmp/{name}.sh > /tmp/{name}.out 2>&1; echo $? > /tmp/{name}.rc' "
          "</dev/null >/dev/null 2>&1 &")


def wait_background(vm, name, timeout=300):
    """Wait for a background() script to end; return (rc, output)."""
    vm.ok(f"for i in $(seq 1 {timeout * 5}); do test -e /tmp/{name}.rc && exit 0; sleep 0.2; done; exit 1",
          timeout=timeout + 30)
    return int(vm.ok(f"cat /tmp/{name}.rc").strip()), vm.ok(f"cat /tmp/{name}.out")


KLOG_RE = re.compile(r"^\[\s*(\d+\.\d+)\] (.*)$")


def klog(vm, since=None):
    """[(seconds, text)] of the guest's kernel lines (after the last line containing `since`, if given)."""
    text = vm.ok("dmesg")
    lines = text.splitlines()
    start = max((i for i, l in enumerate(lines) if since is not None and since in l), default=-1)
    out = []
    for line in lines[start + 1:]:
        m = KLOG_RE.match(line)
        if m:
            out.append((float(m[1]), m[2]))
    return out


def klog_marker(vm, text):
    """Writes `text` to the guest's kernel log; returns its timestamp (kernel clock, seconds)."""
    vm.ok(f"echo {q(text)} > /dev/kmsg")
    for t, line in reversed(klog(vm)):
        if text in line:
            return t
    raise AssertionError(f"{vm.name}: marker {text!r} not in dmesg")


def first_after(lines, t0, needle):
    """Time of the first line at or after t0 containing `needle`, or None."""
    return next((t for t, line in lines if t >= t0 and needle in line), None)


def cut(vm, peer_ip, marker=None):
    """Drop every packet between this guest and `peer_ip` (both directions). With `marker`, write it to the
    kernel log in the same command, right after the rules are in, and return its timestamp."""
    cmd = f"iptables -A INPUT -s {peer_ip} -j DROP && iptables -A OUTPUT -d {peer_ip} -j DROP"
    if marker is None:
        vm.ok(cmd)
        return None
    vm.ok(f"{cmd} && echo {q(marker)} > /dev/kmsg")
    return next(t for t, line in reversed(klog(vm)) if marker in line)


def heal(vm):
    vm.ok("iptables -F")


# Wire frames, encoded straight from Documentation/wire-protocol.rst (a fake peer in busybox nc).
MAGIC, VERSION = 0x4D52, 1
HANDSHAKE, SMALL_WRITE, WRITE_NOTIFY = 0x01, 0x02, 0x03


def preamble(cmd, length, args):
    assert len(args) == 8
    return struct.pack("<HBBI", MAGIC, cmd, VERSION, length) + args


def handshake(sectors, role=1, channel=0, uuids=(0, 0, 0, 0)):
    """64 bytes: versions 1..1, node 0, `role` (1 primary), features SMALL_WRITE, 4 KiB regions,
    `channel` 0 (data socket) or 1 (meta socket), generation `uuids` (zero: no metadata, meta=core)."""
    args = struct.pack("<BBBBI", 1, 1, 0, role, 1)
    return (preamble(HANDSHAKE, 48, args) + struct.pack("<QIB3x", sectors, 4096, channel)
            + struct.pack("<4Q", *uuids))


def small_write(seq, sector, data, flags=0, volume=0):
    """A SmallWrite: its 16-byte header (the whole metadata in 128 bits), then the data."""
    sectors = len(data) // 512
    word = sector | (sectors - 1) << 46 | flags << 53 | volume << 56
    return struct.pack("<HBBIQ", MAGIC, SMALL_WRITE, VERSION, seq, word) + data


RESYNC_REPLY = 0x0D


def resync_reply(sector, sectors, data):
    """A ResyncReply (resync data, or the answer to a forwarded read) of `sectors` at `sector`."""
    return preamble(RESYNC_REPLY, 8 + len(data), struct.pack("<II", sectors, 0)) + struct.pack("<Q", sector) + data


# ---- fault scenarios: load, checker, sync ----------------------------------------------------------------

# Fast timers, so a fault is detected in seconds even under TCG.
TIMERS = "ping_interval=500 timeout=2000 probation=2000 connect_retry=500"
TIMEOUT_S = 2.0


def fio(offset_mib, size_mib, rate):
    """4 KiB random writes at `rate` IOPS over [offset, offset+size) MiB of r0, then a crc32c read-back;
    JSON to stdout."""
    return (f"fio --name=load --filename=/dev/rmirror0 --ioengine=libaio --direct=1 --rw=randwrite --bs=4k "
            f"--offset={offset_mib}M --size={size_mib}M --iodepth=4 --rate_iops={rate} --verify=crc32c "
            f"--verify_fatal=1 --do_verify=1 --randrepeat=0 --output-format=json")


def fio_result(out):
    """(error, max completion latency in seconds) of a fio JSON report."""
    rep = json.loads(out[out.index("{"):])
    job = rep["jobs"][0]
    return job["error"], job["write"]["clat_ns"]["max"] / 1e9


def verify(vm, dev, logs, offset_mib, size_mib, prefix=False):
    """rmirror-check verify (--prefix too with `prefix`): the JSON counts, with the exit status as "rc" and
    stderr's examples as "problems" (the caller decides what must be 0)."""
    args = " ".join(f"--log {log}" for log in logs) + (" --prefix" if prefix else "")
    rc, out, err = vm.run3(f"{CHECK} verify {dev} {args} --offset {offset_mib}M --size {size_mib}M", 300)
    assert rc in (0, 1), f"{vm.name}: rmirror-check verify failed to run ({rc}): {out}{err}"
    res = json.loads(out.strip().splitlines()[-1])
    res["rc"], res["problems"] = rc, err
    # In full in the report of a failed test (an assertion's message is shortened).
    print(f"{vm.name}: rmirror-check verify {dev} {args}: rc {rc}, {json.dumps(res)}")
    return res


def copy_file(src, dst, path):
    """Copy a small file from one guest to the other (through the test driver)."""
    blob = base64.b64encode(src.ok(f"cat {path}").encode()).decode()
    dst.ok(f"echo {blob} | base64 -d > {path}")


def wait_in_sync(vm, timeout=180, name="r0"):
    """Wait until device `name` of `vm` reports nothing out of sync, nothing left in its outage queue (a
    replay sends it after probation, with replication already established) and replication established;
    returns its status."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(vm, name)
        if st["out_of_sync"] == 0 and st["queued"] == 0 and st["repl"] == "established":
            return st
        assert time.monotonic() < deadline, f"{vm.name}: {name} not in sync after {timeout}s: {st}"
        time.sleep(0.3)


def same_start(pair, mib=64):
    """Zero the first `mib` MiB of both backing disks (before the devices exist), so that md5 comparisons
    after a test see only what it wrote: the fracture bitmap lives in memory, and an earlier test that
    removed its devices with regions still out of sync leaves the disks different."""
    pair.each(lambda vm: vm.ok(f"dd if=/dev/zero of=/dev/vdb bs=1M count={mib} oflag=direct 2>/dev/null",
                               timeout=300))
