#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0
"""rmirror test bed: boot two QEMU guests, alpha and beta, linked by a private network, and run commands.

Library (python3 stdlib only)::

    with Pair(kernel, rootfs, {"rmirror.ko": ko, "rmirrorctl": tool}) as p:
        rc, out = p.alpha.run("uname -r", timeout=30)
        out = p.beta.ok("ip addr show eth0")          # raises CommandFailed on a non-zero exit
        text = p.dmesg("alpha")                        # the guest's kernel log (its serial console)

Each guest (QEMU TCG; RMIRROR_KVM=1 to use KVM where it works) gets 2 vCPUs and 1024 MiB (Pair(smp=, mem=);
RMIRROR_SMP for the CLI and the tests) and:
  vda  the shared root file system image (scripts/rootfs.sh), read-only
  vdb  its own backing disk, a fresh sparse raw file per Pair (default 256 MiB)
  vdc  the "payload" image (ext4, read-only, mounted at /p): the files given to Pair
  vdd  ... raw files given as Vm(extra_disks=...), cache=unsafe like vdb (none in a Pair; scripts/bench.py)
  eth0 virtio-net, linked to the other guest by a QEMU socket network on 127.0.0.1 only;
       alpha is 10.99.0.1/24, beta 10.99.0.2/24. Pair(net="tap") links them instead through two tap
       devices in a bridge on the host (root only, removed at exit): QEMU then offers checksum and TSO
       offloads, and TCP between the guests is 7-30x faster under TCG (scripts/bench.py netdevs,
       Documentation/bench.rst); the tests keep the socket network
  ttyS0 the kernel console (console=ttyS0 loglevel=8: every level), written to <workdir>/<name>.console.log
  a virtio-serial port "rmirror.agent" to a host unix socket, served in the guest by /sbin/rmirror-agent
At exit the guests are powered off (sync; poweroff -f; hard kill after a grace period) and their kernel logs
are scanned: any line with BUG:, WARNING:, Oops, general protection fault, Kernel panic, KASAN:, a lockdep,
atomic-sleep or ODEBUG: report, or lockdep switching itself off (LOG_PATTERNS) makes the Pair raise
LogScanError listing the lines.

CLI::

    scripts/vm.py demo      [--kernel K] [--rootfs R] [--module M] [--tool T]   the `make demo` scenario
    scripts/vm.py selftest  [--kernel K] [--rootfs R]       boot, ping, disk I/O, log scanner, boot time
    scripts/vm.py shell     [...] [--module M] [--tool T]   boot, then read commands "alpha: cmd" / "beta: cmd"

Defaults come from RMIRROR_KERNEL, RMIRROR_ROOTFS, RMIRROR_MODULE, RMIRROR_TOOL; the kernel falls back to
/var/cache/rmirror/kernel/current/arch/x86/boot/bzImage and the rootfs to the output of scripts/rootfs.sh.
"""

import argparse
import base64
import ctypes
import itertools
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("RMIRROR_CACHE", "/var/cache/rmirror")
DEFAULT_KERNEL = os.path.join(CACHE, "kernel/current/arch/x86/boot/bzImage")

#: Substrings of a kernel log line that fail a run (case-sensitive). Each splat of the test kernel's debug
#: options (scripts/kernel.config) has a first line that matches; the strings are the kernel's own formats
#: (7.2 source). The generic "BUG:"/"WARNING:" already catch most of them; the specific strings name each
#: class and still match if the prefix is lost (a line cut or interleaved by another CPU).
LOG_PATTERNS = (
    # BUG()/BUG_ON(), WARN*() (also most lockdep splats: "WARNING: possible ... detected"), oopses, panics
    "BUG:", "WARNING:", "Oops", "general protection fault", "Kernel panic",
    # KASAN (mm/kasan/report.c): "BUG: KASAN: use-after-free in f+0x1/0x2", and for a wild pointer
    # "KASAN: null-ptr-deref in range [...]". Not a bare "KASAN", which would match any mention of it; the
    # boot line "KernelAddressSanitizer initialized (generic)" matches neither.
    "KASAN:",
    # lockdep (kernel/locking/lockdep.c), after "WARNING: " or between "[ BUG: ... ]"
    "possible circular locking dependency", "possible recursive locking", "inconsistent lock state",
    "possible irq lock inversion", "lock order detected",            # "...: HARDIRQ-safe -> HARDIRQ-unsafe ..."
    "suspicious RCU usage", "Invalid wait context", "bad unlock balance", "held lock freed",
    "still has locks held", "Nested lock was not taken", "bad contention detected", "chain_key collision",
    "DEBUG_LOCKS_WARN_ON",
    # lockdep switching itself off (some of these lines are KERN_DEBUG: the console gets them with loglevel=8)
    "turning off the locking correctness validator", "trying to register non-static key",
    "Disabling lock debugging due to kernel taint",
    # DEBUG_ATOMIC_SLEEP (kernel/sched/core.c)
    "sleeping function called from invalid context", "scheduling while atomic",
    # DEBUG_OBJECTS (lib/debugobjects.c, pr_fmt "ODEBUG: "): "ODEBUG: free active (active state 0) object: ..."
    "ODEBUG:",
)


def log_problem(line, ignored=()):
    """The first LOG_PATTERNS string in kernel log `line`, or None (also if the line contains one of the
    `ignored` substrings)."""
    for p in LOG_PATTERNS:
        if p in line:
            return None if any(t in line for t in ignored) else p
    return None

#: The two guests: name -> (IPv4 address/prefix, MAC address).
GUESTS = {
    "alpha": ("10.99.0.1/24", "52:54:00:99:00:01"),
    "beta": ("10.99.0.2/24", "52:54:00:99:00:02"),
}

#: vCPUs and MiB of RAM per guest. The test kernel runs lockdep and generic KASAN (which keeps 1/8 of RAM
#: as shadow and pads every slab object): 1024 MiB leaves room for fio and tmpfs files.
DEFAULT_SMP = 2
DEFAULT_MEM = 1024

#: Seconds allowed for a guest to boot to a working agent (the debug kernel under TCG: 20-80 s, see
#: Documentation/architecture.rst).
BOOT_TIMEOUT = float(os.environ.get("RMIRROR_BOOT_TIMEOUT", "300"))

#: Seconds without a new console byte after which a guest whose init is not up yet counts as hung in its
#: boot. The longest silence in a normal boot under TCG is ~9 s (mounting the root file system); CI of stop 19
#: saw a power-cycled beta print nothing after 0.97 s of kernel init (before any module loads) for 300 s.
BOOT_STALL = float(os.environ.get("RMIRROR_BOOT_STALL", "90"))


class GuestError(Exception):
    """A guest could not be started or stopped responding."""


class BootStalled(GuestError):
    """The guest's console stayed silent for BOOT_STALL seconds before its init was up (a hung boot, not a
    slow one). Its starter boots it again, once (Vm.power_cycle, Pair.start)."""


class CommandFailed(GuestError):
    """A command run with Vm.ok() exited non-zero."""

    def __init__(self, vm, cmd, rc, out, err):
        self.vm, self.cmd, self.rc, self.out, self.err = vm, cmd, rc, out, err
        super().__init__(f"{vm}: command failed (exit {rc}):\n  $ {cmd.strip()}\n"
                         f"--- stdout ---\n{out}--- stderr ---\n{err}")


class CommandTimeout(GuestError):
    """A command did not finish in time; the guest is then marked broken."""


class LogScanError(AssertionError):
    """A guest kernel log contains BUG:/WARNING:/Oops/KASAN:/lockdep/... lines (LOG_PATTERNS)."""


def log(msg):
    print(f"[vm] {msg}", file=sys.stderr, flush=True)


def _pdeathsig():
    """preexec_fn: kill QEMU when the harness dies (PR_SET_PDEATHSIG = 1)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def free_port():
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_listening(port):
    """Whether something LISTENs on 127.0.0.1:port, read from /proc/net/tcp (connecting would be accepted
    by QEMU's socket netdev as *the* peer, so it must not be probed with connect())."""
    want = f"0100007F:{port:04X}"
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == want and fields[3] == "0A":
                    return True
    except OSError:
        pass
    return False


_tap_ids = itertools.count()


#: Host interfaces made by make_tap_bridge, per process (a file named by its pid lists them): a run killed
#: before it could remove its own (SIGKILL, a CI timeout) has them removed by the next one.
LINKS_DIR = "/run/rmirror-links"


def _record_links(names, add):
    """Add `names` to (or drop them from) this process's record in LINKS_DIR."""
    path = os.path.join(LINKS_DIR, str(os.getpid()))
    try:
        with open(path) as f:
            have = f.read().split()
    except OSError:
        have = []
    have = have + [n for n in names if n not in have] if add else [n for n in have if n not in names]
    try:
        if have:
            os.makedirs(LINKS_DIR, exist_ok=True)
            with open(path, "w") as f:
                f.write(" ".join(have))
        elif os.path.exists(path):
            os.unlink(path)
    except OSError:
        pass


def sweep_stale_links():
    """Remove the tap interfaces of processes that are gone (see LINKS_DIR)."""
    try:
        pids = os.listdir(LINKS_DIR)
    except OSError:
        return
    for pid in pids:
        if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
            continue
        path = os.path.join(LINKS_DIR, pid)
        try:
            with open(path) as f:
                names = f.read().split()
            for n in names:
                subprocess.run(["ip", "link", "del", n], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            os.unlink(path)
        except OSError:
            pass


def make_tap_bridge():
    """Create a bridge and two tap devices in it on the host (needs root and /dev/net/tun); returns
    (bridge, [tap, tap]). The host side has MTU 65520, so the guests' MTU alone decides. Remove them with
    remove_links()."""
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        raise GuestError("a tap network needs root and /dev/net/tun")
    sweep_stale_links()
    tag = f"{os.getpid() % 100000}{next(_tap_ids)}"          # interface names: at most 15 characters
    br, taps = f"rmb{tag}", [f"rmt{tag}a", f"rmt{tag}b"]
    cmds = [["ip", "link", "add", br, "type", "bridge"]]
    for t in taps:
        cmds += [["ip", "tuntap", "add", "dev", t, "mode", "tap", "vnet_hdr"], ["ip", "link", "set", t, "mtu", "65520"],
                 ["ip", "link", "set", t, "master", br], ["ip", "link", "set", t, "up"]]
    cmds += [["ip", "link", "set", br, "mtu", "65520"], ["ip", "link", "set", br, "up"]]
    made = []
    for c in cmds:
        r = subprocess.run(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            remove_links(made)
            raise GuestError(f"{' '.join(c)} failed: {r.stdout.strip()}")
        if c[2] == "add":
            made.insert(0, c[3] if c[1] == "link" else c[4])
            _record_links(made, True)
    return br, taps


def remove_links(names):
    """Delete host network interfaces (those of make_tap_bridge)."""
    for n in names:
        subprocess.run(["ip", "link", "del", n], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _record_links(list(names), False)


def tap_netdev(tap):
    """The -netdev options (type tap) for one tap device of make_tap_bridge."""
    return f"ifname={tap},script=no,downscript=no,vnet_hdr=on"


def make_ext4_image(path, files, label="payload"):
    """Create an ext4 image at `path` holding `files` ({guest relative path: host path or bytes}),
    with mke2fs -d (no mounting). Executables keep their mode."""
    stage = tempfile.mkdtemp(prefix="rmirror-payload-")
    try:
        total = 0
        for rel, src in files.items():
            dst = os.path.join(stage, rel.lstrip("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if isinstance(src, (bytes, str)) and not (isinstance(src, str) and os.path.exists(src)):
                data = src.encode() if isinstance(src, str) else src
                with open(dst, "wb") as f:
                    f.write(data)
                os.chmod(dst, 0o755 if data.startswith(b"#!") else 0o644)
            else:
                shutil.copy2(src, dst)
            total += os.path.getsize(dst)
        size_mib = total * 13 // 10 // (1 << 20) + 16
        with open(path, "wb") as f:
            f.truncate(size_mib << 20)
        r = subprocess.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", "4096", "-O", "^has_journal",
                            "-L", label, "-E", "root_owner=0:0", "-d", stage, path],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise GuestError(f"mke2fs -d for the payload failed: {r.stdout}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)


class Vm:
    """One QEMU guest with a command agent."""

    def __init__(self, name, workdir, kernel, rootfs, payload, disk, netdev, smp=DEFAULT_SMP, mem=DEFAULT_MEM,
                 append="", extra_disks=(), net_backend="socket"):
        self.name = name
        self.workdir = workdir
        self.kernel, self.rootfs, self.payload, self.disk = kernel, rootfs, payload, disk
        self.extra_disks = list(extra_disks)    # raw files attached after the payload: vdd, vde, ...
        self.netdev = netdev                    # options of the -netdev, e.g. "listen=127.0.0.1:4321"
        self.net_backend = net_backend          # its type: socket, tap, stream, dgram
        self.smp, self.mem, self.append = smp, mem, append
        self.console = os.path.join(workdir, f"{name}.console.log")
        self.qemu_log = os.path.join(workdir, f"{name}.qemu.log")
        self.sock_path = os.path.join(workdir, f"{name}.agent")
        self.proc = None
        self.sock = None
        self.buf = b""
        self.ids = itertools.count(1)
        self.broken = None          # reason string once the agent cannot be trusted any more
        self.boot_seconds = None
        self.ignored = []           # log substrings a test produced on purpose (see ignore_log)
        self.checked = 0            # console log offset up to which problems were reported
        self.lock = threading.Lock()

    # ---- lifecycle ---------------------------------------------------------------------------------
    def qemu_argv(self):
        ip, mac = GUESTS[self.name]
        kvm = os.environ.get("RMIRROR_KVM") == "1"
        # pci=noacpi: no ACPI _PRT evaluation for PCI interrupt routing (virtio uses MSI-X anyway). Under TCG
        # with lockdep and KASAN, and the host's two cores shared by four vCPUs, QEMU's _PRT loop ran into
        # ACPICA's 30 s loop timeout ("AE_AML_LOOP_TIMEOUT") once per device, and boots took minutes.
        # loglevel=8: KERN_DEBUG reaches the console too (lockdep's "BUG: MAX_LOCKDEP_ENTRIES too low!" and
        # "turning off the locking correctness validator." are KERN_DEBUG); a boot prints 16 such lines.
        append = (f"console=ttyS0 loglevel=8 no_timer_check printk.devkmsg=on pci=noacpi root=/dev/vda ro "
                  f"rootfstype=ext4 init=/init panic=-1 rmirror.host={self.name} rmirror.ip={ip} "
                  f"{self.append}").strip()
        argv = ["qemu-system-x86_64",
                "-accel", "kvm" if kvm else "tcg",
                "-cpu", "host" if kvm else os.environ.get("RMIRROR_CPU", "qemu64"),
                "-m", str(self.mem), "-smp", str(self.smp),
                "-name", self.name,
                "-nodefaults", "-no-reboot", "-display", "none", "-monitor", "none",
                "-serial", f"file:{self.console}",
                "-kernel", self.kernel, "-append", append,
                "-drive", f"file={self.rootfs},if=none,id=root,format=raw,readonly=on",
                "-device", "virtio-blk-pci,drive=root",
                "-drive", f"file={self.disk},if=none,id=disk,format=raw,cache=unsafe",
                "-device", "virtio-blk-pci,drive=disk",
                "-drive", f"file={self.payload},if=none,id=payload,format=raw,readonly=on",
                "-device", "virtio-blk-pci,drive=payload"]
        for i, extra in enumerate(self.extra_disks):
            argv += ["-drive", f"file={extra},if=none,id=extra{i},format=raw,cache=unsafe",
                     "-device", f"virtio-blk-pci,drive=extra{i}"]
        argv += ["-netdev", f"{self.net_backend},id=n0,{self.netdev}",
                 "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
                 "-device", "virtio-serial-pci",
                 "-chardev", f"socket,id=agent,path={self.sock_path},server=on,wait=off",
                 "-device", "virtserialport,chardev=agent,name=rmirror.agent",
                 "-device", "virtio-rng-pci"]
        return argv

    def start(self):
        """Launch QEMU and connect to the agent socket (does not wait for the guest to boot)."""
        self.t0 = time.monotonic()
        with open(self.qemu_log, "wb") as qlog:
            self.proc = subprocess.Popen(self.qemu_argv(), stdin=subprocess.DEVNULL, stdout=qlog,
                                         stderr=subprocess.STDOUT, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise GuestError(f"{self.name}: QEMU exited with {self.proc.returncode}:\n{self.qemu_output()}")
            if os.path.exists(self.sock_path):
                try:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(self.sock_path)
                    self.sock = s
                    break
                except OSError:
                    s.close()
            if time.monotonic() > deadline:
                raise GuestError(f"{self.name}: agent socket {self.sock_path} never appeared")
            time.sleep(0.05)

    def qemu_output(self):
        try:
            with open(self.qemu_log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def wait_ready(self, timeout=BOOT_TIMEOUT):
        """Ping the agent until it answers; records boot_seconds (QEMU start to first answer).

        A ping sent before the agent runs waits in the serial port and is then run like any command, in
        order. So pings go out every 10 s until init's "rmirror-init: up" line is on the console and every
        0.5 s after that, and once one is answered a last one is awaited: a debug kernel under TCG can take
        a minute to boot, and the first real command must not queue behind a hundred stale pings."""
        deadline = time.monotonic() + timeout
        pings = set()
        next_ping = 0.0
        init_up = False
        console_size, console_grew = -1, time.monotonic()
        while self.boot_seconds is None or pings:
            now = time.monotonic()
            if now > deadline:
                self.broken = "did not boot"
                raise GuestError(f"{self.name}: no agent answer after {timeout:.0f}s; console tail:\n"
                                 + self.tail())
            if now >= next_ping:
                text = self.dmesg()
                init_up = init_up or "rmirror-init: up" in text
                if len(text) != console_size:
                    console_size, console_grew = len(text), now
                elif not init_up and now - console_grew > BOOT_STALL:
                    self.broken = "boot stalled"
                    raise BootStalled(f"{self.name}: boot stalled: no console output for {now - console_grew:.0f}s "
                                      f"before init was up; console tail:\n" + self.tail())
                pings.add(self._send("echo ready", 10))
                next_ping = now + (0.5 if init_up else 10.0)
            line = self._readline(min(deadline, next_ping))
            if line is None:
                continue
            parts = line.split(b" ")
            if len(parts) >= 2 and parts[0] == b"RMR" and parts[1].isdigit() and int(parts[1]) in pings:
                if self.boot_seconds is None:
                    self.boot_seconds = time.monotonic() - self.t0
                    pings = {self._send("true", 10)}     # answered after every ping sent before it
                    next_ping = deadline = time.monotonic() + timeout
                else:
                    pings.clear()
        return self.boot_seconds

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def power_cycle(self, timeout=BOOT_TIMEOUT):
        """Power loss and reboot: kill QEMU (nothing is flushed or shut down in the guest; writes QEMU
        completed are in the disk file, as on a disk with a non-volatile cache), then boot the guest again
        on the same disks. The old console log is scanned first (problems raise LogScanError) and kept as
        <name>.console.<n>.log; the network is re-joined (beta's QEMU connects to alpha's listening socket
        netdev again, which QEMU accepts once the old connection is gone), so only beta can be cycled."""
        if self.name != "beta":
            raise GuestError("only beta can be power cycled (alpha's QEMU owns the socket netdev)")
        bad = self.new_log_problems()
        if bad:
            raise LogScanError(f"{self.name} kernel log before the power loss:\n" + "\n".join(bad))
        self._relaunch()
        try:
            return self.wait_ready(timeout)
        except BootStalled as e:
            log(f"{e}\n{self.name}: power-cycling it once more")
        self._relaunch()
        return self.wait_ready(timeout)

    def _relaunch(self):
        """Kill QEMU and start it again on the same disks (the console log so far is kept as
        <name>.console.<n>.log)."""
        with self.lock:
            if self.proc is not None:
                self.proc.kill()
                self.proc.wait()
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            n = sum(1 for f in os.listdir(self.workdir) if f.startswith(f"{self.name}.console."))
            os.rename(self.console, os.path.join(self.workdir, f"{self.name}.console.{n}.log"))
            if os.path.exists(self.sock_path):
                os.unlink(self.sock_path)
            self.buf, self.checked, self.boot_seconds, self.broken = b"", 0, None, None
            self.start()

    def shutdown(self, timeout=30):
        """sync + poweroff -f in the guest; kill QEMU if it is still running after `timeout` seconds."""
        if self.proc is None:
            return
        if self.alive() and self.sock is not None and not self.broken:
            try:
                self._send("sync; echo rmirror-vm: poweroff > /dev/kmsg; poweroff -f", 60)
            except GuestError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"{self.name}: no clean poweroff after {timeout}s, killing QEMU")
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    # ---- agent protocol ----------------------------------------------------------------------------
    def _send(self, script, guest_timeout):
        rid = next(self.ids)
        b64 = base64.b64encode(script.encode()).decode()
        try:
            self.sock.sendall(f"RMX {rid} {int(guest_timeout)} {b64}\n".encode())
        except OSError as e:
            self.broken = f"agent socket: {e}"
            raise GuestError(f"{self.name}: cannot send to the agent ({e}); QEMU "
                             f"{'running' if self.alive() else 'exited'}; console tail:\n{self.tail()}") from e
        return rid

    def _readline(self, deadline):
        """One line from the agent (bytes, without newline) or None at the deadline."""
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                r, _, _ = select.select([self.sock], [], [], min(left, 0.5))
                data = self.sock.recv(1 << 20) if r else None
            except OSError as e:
                self.broken = f"agent socket: {e}"
                raise GuestError(f"{self.name}: agent socket error {e}; QEMU "
                                 f"{'running' if self.alive() else 'exited'}; console tail:\n{self.tail()}") from e
            if data is None:
                if not self.alive():
                    self.broken = "QEMU exited"
                    raise GuestError(f"{self.name}: QEMU exited ({self.proc.returncode}); console tail:\n"
                                     + self.tail())
                continue
            if not data:
                self.broken = "agent socket closed"
                raise GuestError(f"{self.name}: agent socket closed; console tail:\n" + self.tail())
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def run3(self, cmd, timeout=60):
        """Run `cmd` with sh in the guest; return (rc, stdout, stderr). After `timeout` seconds the guest
        kills the command's session (rc 137); if even the answer does not come, CommandTimeout is raised
        and the guest is marked broken."""
        with self.lock:
            if self.broken:
                raise GuestError(f"{self.name}: guest is unusable ({self.broken})")
            rid = self._send(cmd, timeout)
            deadline = time.monotonic() + timeout + 30
            while True:
                line = self._readline(deadline)
                if line is None:
                    self.broken = f"no answer to command {rid}"
                    raise CommandTimeout(f"{self.name}: no answer within {timeout + 30:.0f}s to:\n  $ {cmd}\n"
                                         f"console tail:\n{self.tail()}")
                parts = line.split(b" ")
                if len(parts) != 5 or parts[0] != b"RMR" or parts[1] != str(rid).encode():
                    continue    # stale answer (a boot ping) or noise
                rc = int(parts[2])
                out = base64.b64decode(parts[3][2:]).decode(errors="replace")
                err = base64.b64decode(parts[4][2:]).decode(errors="replace")
                return rc, out, err

    def run(self, cmd, timeout=60):
        """Run `cmd`; return (rc, stdout + stderr)."""
        rc, out, err = self.run3(cmd, timeout)
        return rc, out + err

    def ok(self, cmd, timeout=60):
        """Run `cmd`; return its stdout, raise CommandFailed (with stdout and stderr) on a non-zero exit."""
        rc, out, err = self.run3(cmd, timeout)
        if rc != 0:
            raise CommandFailed(self.name, cmd, rc, out, err)
        return out

    def put(self, path, data, mode=0o644):
        """Write `data` (str or bytes) to `path` in the guest."""
        if isinstance(data, str):
            data = data.encode()
        b64 = base64.b64encode(data).decode()
        self.ok(f"echo {b64} | base64 -d > {path} && chmod {mode:o} {path}")

    def kmsg(self, text, wait=False):
        """Write a line to the guest's kernel log (test markers). With `wait`, return only once the line
        has reached the console log file (so every earlier kernel message has too), at most 20 s."""
        self.run(f"echo {shquote(text)} > /dev/kmsg", 20)
        if wait:
            self.wait_console(text)

    def wait_console(self, text, timeout=20):
        """Wait (at most `timeout` s) until `text` is in the last 64 KiB of the console log file."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with open(self.console, "rb") as f:
                    f.seek(max(0, os.fstat(f.fileno()).st_size - 65536))
                    if text.encode() in f.read():
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    # ---- kernel log --------------------------------------------------------------------------------
    def dmesg(self):
        """The guest's kernel log as captured from its serial console (complete, survives a crash)."""
        try:
            with open(self.console, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def tail(self, n=40):
        return "\n".join(self.dmesg().splitlines()[-n:])

    def ignore_log(self, token):
        """Do not count log lines containing `token` as problems (for lines a test injects on purpose)."""
        self.ignored.append(token)

    def log_problems(self, start=0):
        """(offset after the scanned text, [offending lines]) for the console log from byte `start`."""
        try:
            with open(self.console, "rb") as f:
                f.seek(start)
                data = f.read()
        except OSError:
            data = b""
        chunk = data.decode(errors="replace")
        bad = [ln for ln in chunk.splitlines() if log_problem(ln, self.ignored)]
        return start + len(data), bad

    def new_log_problems(self):
        """Problems logged since the previous call (each reported once)."""
        end, bad = self.log_problems(self.checked)
        self.checked = end
        return bad


def shquote(s):
    return "'" + str(s).replace("'", "'\\''") + "'"


class Pair:
    """The two guests, alpha and beta, as a context manager. `payload` maps guest paths under /p to host
    files (or to bytes/str contents). `net`: "socket" (QEMU socket netdev, the default) or "tap" (two tap
    devices in a host bridge, see make_tap_bridge)."""

    def __init__(self, kernel, rootfs, payload=None, workdir=None, disk_mib=256, smp=DEFAULT_SMP,
                 mem=DEFAULT_MEM, append="", keep=None, net="socket"):
        self.kernel, self.rootfs = kernel, rootfs
        self.payload_files = dict(payload or {})
        self.disk_mib, self.smp, self.mem, self.append = disk_mib, smp, mem, append
        self.keep = os.environ.get("RMIRROR_KEEP") == "1" if keep is None else keep
        self.own_workdir = workdir is None
        self.workdir = workdir
        self.vms = {}
        if net not in ("socket", "tap"):
            raise GuestError(f"unknown net {net!r} (socket or tap)")
        self.net = net
        self.host_links = []        # the tap network's bridge and taps
        for f in (kernel, rootfs):
            if not os.path.isfile(f):
                raise GuestError(f"missing {f}")

    def __getitem__(self, name):
        return self.vms[name]

    @property
    def alpha(self):
        return self.vms["alpha"]

    @property
    def beta(self):
        return self.vms["beta"]

    def restart(self, retry=True):
        """Power off (keeping the work directory with the old logs) and boot a fresh pair."""
        self.stop(check=False, keep=True)
        if self.own_workdir:
            self.workdir = None
        else:
            self.workdir = os.path.join(self.workdir, f"restart-{time.time():.0f}")
        self.vms = {}
        return self.start(retry)

    def start(self, retry=True):
        """Boot the pair; a boot that stalls (BootStalled) is retried once with a fresh pair if `retry`."""
        if self.workdir is None:
            self.workdir = tempfile.mkdtemp(prefix="rmirror-vm-")
        os.makedirs(self.workdir, exist_ok=True)
        payload = os.path.join(self.workdir, "payload.img")
        make_ext4_image(payload, self.payload_files)
        if self.net == "tap":
            self._start_tap(payload)
        else:
            self._start_socket(payload)
        try:
            for vm in self.vms.values():
                vm.wait_ready()
        except BootStalled as e:
            if not retry:
                raise
            log(f"{e}\nbooting the pair once more")
            return self.restart(retry=False)
        log("booted: " + ", ".join(f"{n} {vm.boot_seconds:.1f}s" for n, vm in self.vms.items())
            + f" (workdir {self.workdir})")
        return self

    def _vm(self, name, payload, netdev, net_backend="socket"):
        disk = os.path.join(self.workdir, f"{name}.vdb.raw")
        with open(disk, "wb") as f:
            f.truncate(self.disk_mib << 20)
        self.vms[name] = Vm(name, self.workdir, self.kernel, self.rootfs, payload, disk, netdev,
                            smp=self.smp, mem=self.mem, append=self.append, net_backend=net_backend)
        return self.vms[name]

    def _start_socket(self, payload):
        """alpha's QEMU listens, beta's connects (a few attempts: the free port may be taken meanwhile)."""
        for attempt in range(5):
            port = free_port()
            self._vm("alpha", payload, f"listen=127.0.0.1:{port}")
            self._vm("beta", payload, f"connect=127.0.0.1:{port}")
            self.alpha.start()
            deadline = time.monotonic() + 20
            while not port_listening(port) and self.alpha.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if not port_listening(port):
                log(f"alpha is not listening on port {port}; retrying:\n{self.alpha.qemu_output()}")
                self.alpha.shutdown(0)
                continue
            self.beta.start()
            return
        raise GuestError("could not start the guest network (socket netdev) after 5 attempts")

    def _start_tap(self, payload):
        """Each QEMU on its own tap device of a host bridge (made once per Pair, kept across restarts)."""
        if not self.host_links:
            br, taps = make_tap_bridge()
            self.host_links = taps + [br]
        for name, tap in zip(GUESTS, self.host_links):
            self._vm(name, payload, tap_netdev(tap), net_backend="tap").start()

    def wipe_disks(self):
        """Make both backing disks read as zeros again, as after boot: the guests drop their cached blocks of
        /dev/vdb (nothing may have it open) and the host punches the whole file out (it stays sparse)."""
        self.each(lambda vm: vm.ok("sync; blockdev --flushbufs /dev/vdb && echo 3 > /proc/sys/vm/drop_caches"))
        for vm in self.vms.values():
            subprocess.run(["fallocate", "--punch-hole", "--offset", "0", "--length", str(self.disk_mib << 20),
                            vm.disk], check=True)
        self.each(lambda vm: vm.ok("echo 3 > /proc/sys/vm/drop_caches; "
                                   "test \"$(dd if=/dev/vdb bs=1M count=1 2>/dev/null | tr -d '\\0' | wc -c)\" = 0"))

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop(check=False)
            raise

    def __exit__(self, et, ev, tb):
        self.stop(check=et is None)
        return False

    def dmesg(self, name):
        """The full kernel log of guest `name`."""
        return self.vms[name].dmesg()

    def each(self, fn):
        """Call fn(vm) for both guests at once (each in its own thread); return {name: result}. The first
        exception (in guest order) is re-raised after both calls have finished."""
        res, errs = {}, {}

        def call(name, vm):
            try:
                res[name] = fn(vm)
            except BaseException as e:      # noqa: B036 - re-raised below
                errs[name] = e
        threads = [threading.Thread(target=call, args=(n, vm)) for n, vm in self.vms.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for name in self.vms:
            if name in errs:
                raise errs[name]
        return res

    def check_logs(self):
        """Raise LogScanError if a guest logged BUG:/WARNING:/... since the previous check."""
        msgs = []
        for name, vm in self.vms.items():
            bad = vm.new_log_problems()
            if bad:
                msgs.append(f"{name} kernel log ({vm.console}):\n" + "\n".join("  " + b for b in bad))
        if msgs:
            raise LogScanError("kernel log problems:\n" + "\n".join(msgs))

    def stop(self, check=True, keep=False):
        """Power both guests off, then (if `check`) raise LogScanError for unreported log problems. The work
        directory (console logs) is kept if `keep`, RMIRROR_KEEP=1, a guest broke or a log had problems."""
        threads = [threading.Thread(target=vm.shutdown) for vm in self.vms.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        remove_links(self.host_links)
        self.host_links = []
        problems = None
        try:
            self.check_logs()
        except LogScanError as e:
            problems = e
        if problems is not None:
            log(str(problems))
        keep = keep or self.keep or problems is not None or any(vm.broken for vm in self.vms.values())
        if self.own_workdir and self.workdir and not keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.workdir:
            for vm in self.vms.values():
                if os.path.exists(vm.disk):
                    os.unlink(vm.disk)      # the big files; the logs stay
            log(f"kept {self.workdir}")
        if problems is not None and check:
            raise problems


# ---- CLI -------------------------------------------------------------------------------------------------
def default_rootfs():
    r = subprocess.run([os.path.join(TOP, "scripts/rootfs.sh")], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("scripts/rootfs.sh failed")
    return r.stdout.strip().splitlines()[-1]


def resolve(args, need_module=False):
    args.kernel = args.kernel or os.environ.get("RMIRROR_KERNEL") or DEFAULT_KERNEL
    args.rootfs = args.rootfs or os.environ.get("RMIRROR_ROOTFS") or default_rootfs()
    args.module = getattr(args, "module", None) or os.environ.get("RMIRROR_MODULE")
    args.tool = getattr(args, "tool", None) or os.environ.get("RMIRROR_TOOL")
    payload = {}
    if need_module:
        for what, path in (("module (--module/RMIRROR_MODULE)", args.module),
                           ("tool (--tool/RMIRROR_TOOL)", args.tool)):
            if not path or not os.path.isfile(path):
                sys.exit(f"vm.py: need the rmirror {what}; got {path!r}")
    if args.module:
        payload["rmirror.ko"] = args.module
    if args.tool:
        payload["rmirrorctl"] = args.tool
    return payload


def banner(text):
    print(f"\n===== {text} " + "=" * max(0, 70 - len(text)), flush=True)


def show(vm, cmd, timeout=120):
    """Run `cmd` on `vm`, echoing it and its output like a terminal session; fail on error."""
    print(f"{vm.name}# {cmd}", flush=True)
    rc, out, err = vm.run3(cmd, timeout)
    for line in (out + err).rstrip("\n").splitlines():
        print(f"    {line}")
    if rc != 0:
        raise CommandFailed(vm.name, cmd, rc, out, err)
    return out


DEMO_SECTORS = 491520   # 240 MiB of the 256 MiB disks


def wait_connected(vm, name="r0", timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        rc, out = vm.run(f"/p/rmirrorctl status {name}", 30)
        if rc == 0 and "cstate=connected" in out.split():
            return out
        if time.monotonic() > deadline:
            raise GuestError(f"{vm.name}: {name} not connected after {timeout}s: {out.strip()}")
        time.sleep(0.5)


def cmd_demo(args):
    payload = resolve(args, need_module=True)
    S = DEMO_SECTORS
    with Pair(args.kernel, args.rootfs, payload, smp=args.smp) as p:
        a, b = p.alpha, p.beta
        banner(f"booted alpha ({a.boot_seconds:.1f}s) and beta ({b.boot_seconds:.1f}s) under "
               f"{'KVM' if os.environ.get('RMIRROR_KVM') == '1' else 'QEMU TCG'}")
        show(a, "uname -r; ip -4 -o addr show eth0")
        show(a, "ping -c 2 -W 5 10.99.0.2")
        banner("load the module on both")
        for vm in (a, b):
            show(vm, "insmod /p/rmirror.ko && ls -l /dev/rmirror-control")
        banner("create the pair: beta = secondary, alpha = primary (protocol C)")
        show(b, f'/p/rmirrorctl create r0 --table "0 {S} rmirror /dev/vdb secondary '
                f'10.99.0.2:7788 10.99.0.1:7788 C"')
        show(a, f'/p/rmirrorctl create r0 --table "0 {S} rmirror /dev/vdb primary '
                f'10.99.0.1:7788 10.99.0.2:7788 C"')
        print("waiting for cstate=connected ...", flush=True)
        wait_connected(a)
        wait_connected(b)
        banner("write a file on alpha through /dev/rmirror0")
        show(a, "mkfs.ext4 -q -F /dev/rmirror0 && mount /dev/rmirror0 /mnt/a")
        show(a, "echo 'hello from alpha, replicated by rmirror' > /mnt/a/hello.txt && "
                "date > /mnt/a/written-at && ls -l /mnt/a && sha256sum /mnt/a/hello.txt")
        show(a, "umount /mnt/a")
        banner("status on both sides")
        show(a, "/p/rmirrorctl status r0")
        show(b, "/p/rmirrorctl status r0")
        show(a, "/p/rmirrorctl status r0 -o json")
        banner("remove r0 on beta and read beta's own disk")
        show(b, "/p/rmirrorctl remove r0")
        show(b, "mount -o ro,noload /dev/vdb /mnt/b && ls -l /mnt/b && cat /mnt/b/hello.txt && "
                "sha256sum /mnt/b/hello.txt && umount /mnt/b")
        show(a, "/p/rmirrorctl remove r0")
        for vm in (a, b):
            show(vm, "rmmod rmirror && dmesg | grep 'rmirror:' | tail -n 8")
        banner("done; powering off (kernel logs are checked for BUG/WARNING/Oops)")
    print("demo OK")


def cmd_selftest(args):
    payload = resolve(args)
    payload["hello.txt"] = b"payload says hello\n"
    t0 = time.monotonic()
    with Pair(args.kernel, args.rootfs, payload, smp=args.smp) as p:
        print(f"boot: alpha {p.alpha.boot_seconds:.1f}s, beta {p.beta.boot_seconds:.1f}s "
              f"(smp={args.smp}, both booting at once)")
        for vm in (p.alpha, p.beta):
            print(vm.ok("hostname; uname -r; ip -4 -o addr show eth0; cat /p/hello.txt; "
                        "cat /sys/block/vdb/size").strip())
        t = time.monotonic()
        p.alpha.ok("ping -c 3 -W 5 10.99.0.2")
        print(f"ping alpha -> beta ok ({time.monotonic() - t:.1f}s)")
        t = time.monotonic()
        p.alpha.ok("dd if=/dev/urandom of=/tmp/x bs=1M count=8 2>/dev/null && "
                   "dd if=/tmp/x of=/dev/vdb bs=1M oflag=direct 2>/dev/null && "
                   "cmp /tmp/x /dev/vdb -n 8388608")
        print(f"vdb write+readback 8 MiB ok ({time.monotonic() - t:.1f}s)")
        tok = f"rmirror-selftest-{os.getpid()}"
        p.alpha.kmsg(f"BUG: {tok}")
        time.sleep(0.5)
        try:
            p.check_logs()
            sys.exit("log scanner did NOT catch the injected BUG: line")
        except LogScanError as e:
            assert tok in str(e)
            print("log scanner caught the injected line, as it should")
        p.alpha.ignore_log(tok)
    print(f"selftest OK in {time.monotonic() - t0:.1f}s")


def cmd_shell(args):
    payload = resolve(args)
    with Pair(args.kernel, args.rootfs, payload, smp=args.smp, keep=True) as p:
        print(f"booted (workdir {p.workdir}); type 'alpha: CMD' or 'beta: CMD', EOF to quit", flush=True)
        for line in sys.stdin:
            name, _, cmd = line.partition(":")
            if name.strip() not in GUESTS:
                print("usage: alpha: CMD | beta: CMD")
                continue
            rc, out = p[name.strip()].run(cmd, 600)
            print(out, end="")
            print(f"[exit {rc}]", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("demo", cmd_demo), ("selftest", cmd_selftest), ("shell", cmd_shell)):
        sp = sub.add_parser(name)
        sp.add_argument("--kernel")
        sp.add_argument("--rootfs")
        sp.add_argument("--module")
        sp.add_argument("--tool")
        sp.add_argument("--smp", type=int, default=int(os.environ.get("RMIRROR_SMP", DEFAULT_SMP)),
                        help=f"vCPUs per guest (default RMIRROR_SMP or {DEFAULT_SMP})")
        sp.set_defaults(fn=fn)
    args = ap.parse_args()
    try:
        args.fn(args)
    except (GuestError, LogScanError) as e:
        sys.exit(f"vm.py {args.cmd}: {e}")


if __name__ == "__main__":
    main()
