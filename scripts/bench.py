#!/usr/bin/python3
# SPDX-License-Identifier: GPL-2.0
"""rmirror benchmark (`make bench`): fio on the raw disk, rmirror and the kernel's DRBD 8.4, side by side.

Two topologies, each booted once, every configuration measured on the same disks in the same run:

  two-vm  the test bed of scripts/vm.py: alpha primary, beta secondary, each on its /dev/vdb, linked by
          tap devices in a host bridge (Pair(net="tap"), the fastest QEMU back end here; --net socket
          for the tests' socket network)
  one-vm  ONE guest with two backing disks: the primary on /dev/vdb at 127.0.0.1, the secondary on
          /dev/vdd at 127.0.0.2, connected over the guest's loopback; no emulated network, so the
          drivers' own CPU and I/O costs dominate

Configurations: raw (the primary's backing disk), rmirror protocols A, B and C connected, rmirror
standalone (the connected primary after `rmirrorctl disconnect`), DRBD 8.4 protocol C connected and DRBD
standalone (`drbdsetup disconnect`). Both systems keep internal metadata (created afresh for each
configuration, no initial sync: `create-md --clear-bitmap`, DRBD's `new-current-uuid --clear-bitmap`)
and an activity log of 1237 extents of 4 MiB. fio jobs (libaio, direct=1, on the block device, one
fio run per configuration, the jobs one after the other): 4k randwrite QD1 (mean and p99 completion
latency), 4k randwrite QD32 x 2 jobs (IOPS), 1 MiB sequential write QD4 (MB/s), 4k randread QD32
(IOPS). Plus the link's RTT (ping) and TCP throughput (iperf3), and in the two-vm topology the packets
and virtio-net interrupts per write of rmirror and DRBD (protocol C, 4k and 1 MiB writes at QD1).

It prints a table of figures and ratios, writes bench.json and bench.txt and draws bench.png (gnuplot)
in the output directory. Documentation/bench.rst explains the set-up and how to read it.

CLI::

    scripts/bench.py run [--smoke] [--out DIR] [--runtime S] [--topology two-vm,one-vm] [--configs ...]
    scripts/bench.py report DIR/bench.json        print the table and draw the plot again
    scripts/bench.py netdevs [--seconds S]         compare QEMU's network back ends for the two-vm link

`run --smoke` (`make bench-smoke`) is the short version `make check` runs so that this cannot rot: one-vm
only, raw, rmirror C and DRBD C, two 1-second jobs; it checks only that every figure was produced.
The kernel, rootfs, module and tool come from the options or RMIRROR_KERNEL, RMIRROR_ROOTFS,
RMIRROR_MODULE, RMIRROR_TOOL (as scripts/vm.py); drbd.ko and its dependencies from --kdir (default: the
kernel build tree the bzImage is in).
"""

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vm as vmlib  # noqa: E402

CTL = "/p/rmirrorctl"
DRBDSETUP = "/usr/lib/drbd/drbdsetup-84"
RMIRROR_PORT = 7788
DRBD_PORT = 7789
#: Activity log extents (4 MiB each) for both systems: rmirror's default for new metadata, DRBD 8.4's default.
AL_EXTENTS = 1237
#: Lines of a guest's kernel log that LOG_PATTERNS would flag but that come from DRBD's own threads
#: (drbd_w_<res>, drbd_r_..., drbd_a_...): DRBD 8.4's worker takes a mutex inside prepare_to_wait(), which
#: DEBUG_ATOMIC_SLEEP reports once ("do not call blocking ops when !TASK_RUNNING"). Not ours to fix; they
#: are listed in the results, not counted as failures.
DRBD_LOG_TOKEN = ": drbd_"

#: fio jobs: name -> options of its job file section. Run in this order, each after the previous one
#: (stonewall).
JOBS = {
    "qd1": {"rw": "randwrite", "bs": "4k", "iodepth": 1, "numjobs": 1},
    "qd32": {"rw": "randwrite", "bs": "4k", "iodepth": 32, "numjobs": 2},
    "seq1m": {"rw": "write", "bs": "1M", "iodepth": 4, "numjobs": 1},
    "randread": {"rw": "randread", "bs": "4k", "iodepth": 32, "numjobs": 1},
}
#: The jobs that count packets per write (two-vm, protocol C): QD1, so that nothing is batched.
#: Run between readings of both backing disks' request counters (rmirror-C, drbd-C).
DISK_JOB = {"rw": "randwrite", "bs": "4k", "iodepth": 32, "numjobs": 1}
PACKET_JOBS = {
    "4k": {"rw": "randwrite", "bs": "4k", "iodepth": 1, "numjobs": 1},
    "1m": {"rw": "write", "bs": "1M", "iodepth": 1, "numjobs": 1},
}
#: The figures in the table: key, job, fio figure, label, unit, whether higher is better.
METRICS = [
    ("qd1_lat_us", "qd1", "clat_mean_us", "4k randwrite QD1 mean lat", "us", False),
    ("qd1_p99_us", "qd1", "clat_p99_us", "4k randwrite QD1 p99 lat", "us", False),
    ("qd32_iops", "qd32", "iops", "4k randwrite QD32x2", "IOPS", True),
    ("seq1m_mbs", "seq1m", "mbs", "1 MiB seq write QD4", "MB/s", True),
    ("randread_iops", "randread", "iops", "4k randread QD32", "IOPS", True),
]
#: rmirror-C-gc: protocol C with the secondary's group commit (sysfs peer_durability=flush: one flush
#: for a batch of completed writes before their acks, instead of FUA per write).
CONFIGS = ["raw", "rmirror-C", "rmirror-C-gc", "rmirror-B", "rmirror-A", "rmirror-standalone", "drbd-C",
           "drbd-standalone"]
SHORT = {"raw": "raw", "rmirror-C": "rm-C", "rmirror-C-gc": "rm-C-gc", "rmirror-B": "rm-B", "rmirror-A": "rm-A",
         "rmirror-standalone": "rm-SA", "drbd-C": "drbd-C", "drbd-standalone": "drbd-SA"}
#: Plot colours: rmirror in blues, DRBD in oranges.
COLORS = {"raw": "#444444", "rmirror-C": "#08519c", "rmirror-C-gc": "#2171b5", "rmirror-B": "#3182bd", "rmirror-A": "#6baed6",
          "rmirror-standalone": "#bdd7e7", "drbd-C": "#d94801", "drbd-standalone": "#fdae6b"}
#: Ratios printed (numerator, denominator), when both were measured.
RATIOS = [("rmirror-C", "raw"), ("rmirror-B", "raw"), ("rmirror-A", "raw"), ("rmirror-standalone", "raw"),
          ("drbd-C", "raw"), ("drbd-standalone", "raw"), ("rmirror-C", "drbd-C"), ("rmirror-C-gc", "drbd-C"),
          ("rmirror-C-gc", "rmirror-C"), ("rmirror-standalone", "drbd-standalone")]
#: The connected configurations whose packets (two-vm) and disk requests per write are counted.
COUNTED = ("rmirror-C", "rmirror-C-gc", "drbd-C")
TOPOLOGIES = ["two-vm", "one-vm"]

#: Full run and smoke run settings.
FULL = {"rounds": 1, "runtime": 10, "ramp": 2, "region_mib": 256, "disk_mib": 512, "ping": 20, "iperf": 5, "packets": 5,
        "link_end": True, "jobs": list(JOBS), "configs": CONFIGS, "topologies": TOPOLOGIES}
SMOKE = {"rounds": 1, "runtime": 1, "ramp": 0, "region_mib": 32, "disk_mib": 128, "ping": 5, "iperf": 1, "packets": 0,
         "link_end": False, "jobs": ["qd1", "seq1m"], "configs": ["raw", "rmirror-C", "drbd-C"],
         "topologies": ["one-vm"]}


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# ---- guests ----------------------------------------------------------------------------------------------
class Node:
    """One end of a mirror: its guest, backing disk, address and the names of its devices."""

    def __init__(self, vm, disk, ip, res, minor, node_id):
        self.vm, self.disk, self.ip, self.res, self.minor, self.node_id = vm, disk, ip, res, minor, node_id


class Topology:
    """Guests with a primary and a secondary Node: boot(), then stop(). After stop(), `problems` lists the
    kernel log lines (LOG_PATTERNS) that fail the run and `drbd_lines` those of DRBD's own threads."""

    name = ""
    describe = ""

    def __init__(self, kernel, rootfs, payload, disk_mib):
        self.kernel, self.rootfs, self.payload, self.disk_mib = kernel, rootfs, payload, disk_mib
        self.workdir = tempfile.mkdtemp(prefix=f"rmirror-bench-{self.name}-")
        self.vms = []
        self.problems, self.drbd_lines = [], []
        self.boot_seconds = {}

    def disk_file(self, label):
        path = os.path.join(self.workdir, f"{label}.raw")
        with open(path, "wb") as f:
            f.truncate(self.disk_mib << 20)
        return path

    def payload_image(self):
        path = os.path.join(self.workdir, "payload.img")
        vmlib.make_ext4_image(path, self.payload)
        return path

    def guests(self):
        """The distinct guests (one or two)."""
        return list(dict.fromkeys(n.vm for n in (self.pri, self.sec)))

    def each(self, fn):
        """fn(vm) on every distinct guest, one after the other."""
        return [fn(vm) for vm in self.guests()]

    def boot(self):
        """Start the guests and wait for their agents (all stopped again if one fails)."""
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        for vm in self.vms:
            vm.ignore_log(DRBD_LOG_TOKEN)
            self.boot_seconds[vm.name] = round(vm.boot_seconds, 1)
        return self

    def stop(self):
        for vm in self.vms:
            vm.shutdown()
        keep = False
        for vm in self.vms:
            bad = vm.new_log_problems()
            self.problems += [f"{vm.name}: {ln}" for ln in bad]
            self.drbd_lines += [f"{vm.name}: {ln}" for ln in vm.dmesg().splitlines()
                                if vmlib.log_problem(ln) and DRBD_LOG_TOKEN in ln]
            keep = keep or bad or vm.broken
        if keep or os.environ.get("RMIRROR_KEEP") == "1":
            for f in os.listdir(self.workdir):
                if f.endswith(".raw"):
                    os.unlink(os.path.join(self.workdir, f))
            log(f"kept {self.workdir} (console logs)")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


class TwoVm(Topology):
    """scripts/vm.py's Pair: alpha primary, beta secondary, linked by `net` (vm.py's "tap" or "socket")."""

    name = "two-vm"

    def __init__(self, kernel, rootfs, payload, disk_mib, net="tap"):
        super().__init__(kernel, rootfs, payload, disk_mib)
        self.net = net
        self.describe = ("alpha primary, beta secondary, QEMU "
                         + ("tap netdevs in a host bridge" if net == "tap" else "socket netdev (TCP)"))
        self.pair = None

    def start(self):
        self.pair = vmlib.Pair(self.kernel, self.rootfs, self.payload, workdir=self.workdir,
                               disk_mib=self.disk_mib, append="kmemleak=off", net=self.net)
        self.pair.start()
        self.vms = [self.pair.alpha, self.pair.beta]
        self.pri = Node(self.pair.alpha, "/dev/vdb", "10.99.0.1", "r0", 0, 0)
        self.sec = Node(self.pair.beta, "/dev/vdb", "10.99.0.2", "r1", 1, 1)

    def stop(self):
        if self.pair is not None:
            self.vms = list(self.pair.vms.values())     # also those of a start that failed half-way
        super().stop()
        if self.pair is not None:
            vmlib.remove_links(self.pair.host_links)
            self.pair.host_links = []


class OneVm(Topology):
    name = "one-vm"
    describe = "one guest: primary /dev/vdb at 127.0.0.1, secondary /dev/vdd at 127.0.0.2, over loopback"

    def start(self):
        port = vmlib.free_port()      # the guest's eth0 listens for a peer that never comes
        vm = vmlib.Vm("alpha", self.workdir, self.kernel, self.rootfs, self.payload_image(),
                      self.disk_file("alpha.vdb"), f"listen=127.0.0.1:{port}", append="kmemleak=off",
                      extra_disks=[self.disk_file("alpha.vdd")])
        self.vms = [vm]
        vm.start()
        vm.wait_ready()
        self.pri = Node(vm, "/dev/vdb", "127.0.0.1", "r0", 0, 0)
        self.sec = Node(vm, "/dev/vdd", "127.0.0.2", "r1", 1, 1)


# ---- the two-vm link: QEMU network back ends --------------------------------------------------------------
def free_udp_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: QEMU 7.2's back ends that can link two guests on one host (scripts/bench.py netdevs compares them).
NETDEVS = ["socket-tcp", "socket-udp", "stream-tcp", "stream-unix", "dgram-udp", "dgram-unix", "tap-bridge"]


class Link:
    """The network between alpha and beta, by QEMU back end name (NETDEVS), for `bench.py netdevs`.
    socket-tcp is what scripts/vm.py's Pair uses by default, tap-bridge its net="tap"."""

    def __init__(self, kind, workdir):
        if kind not in NETDEVS:
            raise ValueError(f"unknown netdev {kind!r}; known: {', '.join(NETDEVS)}")
        self.kind, self.workdir = kind, workdir
        self.host_links = []

    def specs(self):
        """(alpha's -netdev, beta's -netdev, a function telling that alpha's end is ready, or None)."""
        k, w = self.kind, self.workdir
        if k == "socket-tcp":
            p = vmlib.free_port()
            return f"socket,listen=127.0.0.1:{p}", f"socket,connect=127.0.0.1:{p}", lambda: vmlib.port_listening(p)
        if k == "stream-tcp":
            p = vmlib.free_port()
            addr = f"addr.type=inet,addr.host=127.0.0.1,addr.port={p}"
            return f"stream,server=on,{addr}", f"stream,server=off,{addr}", lambda: vmlib.port_listening(p)
        if k == "stream-unix":
            path = os.path.join(w, "net.sock")
            addr = f"addr.type=unix,addr.path={path}"
            return f"stream,server=on,{addr}", f"stream,server=off,{addr}", lambda: os.path.exists(path)
        if k == "socket-udp":
            pa, pb = free_udp_port(), free_udp_port()
            return (f"socket,udp=127.0.0.1:{pb},localaddr=127.0.0.1:{pa}",
                    f"socket,udp=127.0.0.1:{pa},localaddr=127.0.0.1:{pb}", None)
        if k == "dgram-udp":
            pa, pb = free_udp_port(), free_udp_port()

            def spec(mine, theirs):
                return (f"dgram,local.type=inet,local.host=127.0.0.1,local.port={mine},"
                        f"remote.type=inet,remote.host=127.0.0.1,remote.port={theirs}")
            return spec(pa, pb), spec(pb, pa), None
        if k == "dgram-unix":
            a, b = os.path.join(w, "a.dgram"), os.path.join(w, "b.dgram")

            def spec(mine, theirs):
                return f"dgram,local.type=unix,local.path={mine},remote.type=unix,remote.path={theirs}"
            return spec(a, b), spec(b, a), None
        br, taps = vmlib.make_tap_bridge()
        self.host_links = taps + [br]
        return f"tap,{vmlib.tap_netdev(taps[0])}", f"tap,{vmlib.tap_netdev(taps[1])}", None

    def boot(self, kernel, rootfs, payload, disk_file, append=""):
        """Start alpha and beta linked by this back end, wait for both agents; returns (alpha, beta)."""
        specs = self.specs()
        vms = []
        for name, spec in zip(("alpha", "beta"), specs):
            backend, _, opts = spec.partition(",")
            vms.append(vmlib.Vm(name, self.workdir, kernel, rootfs, payload, disk_file(f"{name}.vdb"), opts,
                                append=append, net_backend=backend))
        alpha, beta = vms
        ready = specs[2]
        started = []
        try:
            alpha.start()
            started.append(alpha)
            deadline = time.monotonic() + 20
            while ready is not None and not ready():
                if time.monotonic() > deadline or not alpha.alive():
                    raise vmlib.GuestError(f"alpha's {self.kind} netdev never got ready:\n{alpha.qemu_output()}")
                time.sleep(0.05)
            beta.start()
            started.append(beta)
            for vm in vms:
                vm.wait_ready()
        except BaseException:
            for vm in started:
                vm.shutdown(0)
            raise
        log(f"booted alpha {alpha.boot_seconds:.1f}s, beta {beta.boot_seconds:.1f}s ({self.kind})")
        return alpha, beta

    def close(self):
        vmlib.remove_links(self.host_links)
        self.host_links = []


# ---- measurements -------------------------------------------------------------------------------------------
def measure_link(client, server, client_ip, server_ip, pings, seconds):
    """RTT (busybox ping, ms) and TCP throughput (iperf3, one stream, MB/s) from client to server."""
    server.ok(f"killall iperf3 2>/dev/null; iperf3 -s -1 -D -B {server_ip} --logfile /tmp/iperf3.log; sleep 0.3")
    out = client.ok(f"ping -c 1 -W 5 {server_ip} >/dev/null; ping -q -c {pings} -i 0.2 {server_ip}", 120)
    line = [ln for ln in out.splitlines() if "min/avg/max" in ln]
    if not line:
        raise vmlib.GuestError(f"no ping summary in: {out}")
    rtt_min, rtt_avg, rtt_max = (float(x) for x in line[0].split("=")[1].split()[0].split("/"))
    vms = list(dict.fromkeys((client, server)))
    h0 = host_cpu(vms)
    out = client.ok(f"iperf3 -c {server_ip} -B {client_ip} -t {seconds} -J", seconds + 120)
    use = host_use(h0, host_cpu(vms))
    res = json.loads(out[out.index("{"):])
    recv = res["end"]["sum_received"]
    return {"rtt_ms": rtt_avg, "rtt_min_ms": rtt_min, "rtt_max_ms": rtt_max,
            "tcp_mbs": recv["bits_per_second"] / 8e6,
            "tcp_retransmits": res["end"]["sum_sent"].get("retransmits", 0), **use}


def fio_jobfile(dev, jobs, runtime, ramp, region_mib):
    lines = ["[global]", f"filename={dev}", "ioengine=libaio", "direct=1", f"size={region_mib}M",
             "time_based=1", f"runtime={runtime}", "norandommap=1", "randrepeat=0", "group_reporting=1"]
    if ramp:
        lines.append(f"ramp_time={ramp}")
    for name, job in jobs.items():
        lines += ["", f"[{name}]", "stonewall"] + [f"{k}={v}" for k, v in job.items()]
    return "\n".join(lines) + "\n"


def fio_figures(group):
    """The figures of one fio JSON job entry (a reporting group): of its writes, or of its reads."""
    side = group["write"] if group["write"]["total_ios"] > 0 else group["read"]
    clat = side["clat_ns"]
    return {"iops": side["iops"], "mbs": side["bw_bytes"] / 1e6, "ios": side["total_ios"],
            "clat_mean_us": clat["mean"] / 1000, "clat_p99_us": clat.get("percentile", {}).get("99.000000", 0) / 1000,
            "errors": group.get("error", 0)}


def run_fio(vm, dev, jobs, runtime, ramp, region_mib, before="", after=""):
    """Run `jobs` (name -> options) on `dev` in one fio command; {name: figures}. `before`/`after` are shell
    lines run around fio in the same guest command, their stdout returned as the "before"/"after" keys."""
    vm.put("/tmp/bench.fio", fio_jobfile(dev, jobs, runtime, ramp, region_mib))
    script = (f"{before}\necho @@FIO\nfio --output-format=json /tmp/bench.fio\nrc=$?\necho @@AFTER\n{after}\n"
              "exit $rc\n")
    budget = len(jobs) * (runtime + ramp) + 120
    out = vm.ok(script, budget)
    pre, _, rest = out.partition("@@FIO\n")
    text, _, post = rest.partition("@@AFTER\n")
    res = json.loads(text[text.index("{"):])
    figs = {g["jobname"]: fio_figures(g) for g in res["jobs"]}
    missing = set(jobs) - set(figs)
    if missing:
        raise vmlib.GuestError(f"fio reported no figures for {sorted(missing)}: {text[:2000]}")
    for name, f in figs.items():
        if f["errors"]:
            raise vmlib.GuestError(f"fio job {name} on {dev} failed with error {f['errors']}")
    figs["before"], figs["after"] = pre, post
    return figs


# ---- the host's CPU ------------------------------------------------------------------------------------------
def host_cpu(vms):
    """The host's CPU time so far, in clock ticks: (all CPUs' time, their busy time, the QEMU processes' time
    summed over `vms`). Busy is everything but idle and iowait; a QEMU's time is its utime + stime."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]     # user nice system idle iowait irq softirq steal
    qemu = 0
    for vm in vms:
        if vm.proc is not None:
            with open(f"/proc/{vm.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # from field 3 (state) on
            qemu += int(fields[11]) + int(fields[12])
    return sum(v), sum(v) - v[3] - v[4], qemu


def host_use(before, after):
    """{"host_cores": CPUs of the host busy on average, "qemu_cores": of which the guests' QEMU processes}
    between two host_cpu() readings (the difference is the host's other work: noise in the figures)."""
    ncpu = os.cpu_count() or 1
    wall = max(1, after[0] - before[0]) / ncpu
    return {"host_cores": (after[1] - before[1]) / wall, "qemu_cores": (after[2] - before[2]) / wall}


#: Counters of eth0 on a guest: "rx_packets tx_packets irqs" (irqs: virtio-net's input and output queue
#: interrupts, all CPUs).
COUNTERS = r"""
d=$(basename "$(readlink /sys/class/net/eth0/device)")
set -- $(grep ' eth0:' /proc/net/dev | tr ':' ' ')
irq=$(awk -v d="$d" '$NF ~ "^" d "-(input|output)" { for (i = 2; i <= NF && $i ~ /^[0-9]+$/; i++) s += $i }
      END { print s + 0 }' /proc/interrupts)
echo "$3 ${11} $irq"
"""


def parse_counters(text):
    rx, tx, irq = (int(x) for x in text.split())
    return rx, tx, irq


# ---- configurations ------------------------------------------------------------------------------------------
def wait_for(what, fn, timeout=90):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise vmlib.GuestError(f"timed out waiting for {what}")
        time.sleep(0.5)


def rmirror_status(node):
    st = json.loads(node.vm.ok(f"{CTL} status {node.res} -o json"))
    return st[0] if isinstance(st, list) else st


def rmirror_up(topo, protocol, durability="fua"):
    """Fresh internal metadata on both disks (identical: no initial sync), the secondary (its
    peer_durability set to `durability`) then the primary; returns the primary's device once it
    replicates."""
    devs = {}
    for n, role in ((topo.sec, "secondary"), (topo.pri, "primary")):
        peer = topo.pri if n is topo.sec else topo.sec
        out = n.vm.ok(f"{CTL} create-md --force --clear-bitmap --node-id {n.node_id} {n.disk} >/dev/null && "
                      f"{CTL} create {n.res} --backing {n.disk} --meta internal --role {role} "
                      f"--local {n.ip}:{RMIRROR_PORT} --peer {peer.ip}:{RMIRROR_PORT} --protocol {protocol}")
        devs[role] = out.strip().splitlines()[-1]
        if role == "secondary":
            n.vm.ok(f"echo {durability} > /sys/block/{os.path.basename(devs[role])}/rmirror/peer_durability")
    for role, n in (("primary", topo.pri), ("secondary", topo.sec)):
        al = n.vm.ok(f"cat /sys/block/{os.path.basename(devs[role])}/rmirror/al_extents").strip()
        if al != str(AL_EXTENTS):
            raise vmlib.GuestError(f"rmirror's {role} has al_extents {al}, the bench compares {AL_EXTENTS}")

    def ready():
        st = rmirror_status(topo.pri)
        return (st.get("cstate") == "connected" and st.get("repl") == "established"
                and st.get("disk") == "up_to_date")
    wait_for("rmirror to connect", ready)
    return devs["primary"]


def rmirror_standalone(topo):
    topo.pri.vm.ok(f"{CTL} disconnect {topo.pri.res}")
    wait_for("rmirror standalone", lambda: rmirror_status(topo.pri).get("cstate") == "standalone")


def rmirror_down(topo):
    for n in (topo.pri, topo.sec):
        n.vm.ok(f"{CTL} remove {n.res}", 120)


def drbd_cmd(n, args):
    return n.vm.ok(f"{DRBDSETUP} {args}").strip()


def drbd_up(topo, protocol="C"):
    """DRBD 8.4 by drbdsetup, no config file: v08 internal metadata on both disks, attach (al-extents as
    rmirror's), connect, skip the initial sync (new-current-uuid --clear-bitmap), promote the primary."""
    for n in (topo.sec, topo.pri):
        peer = topo.pri if n is topo.sec else topo.sec
        n.vm.ok(f"drbdmeta --force /dev/drbd{n.minor} v08 {n.disk} internal create-md </dev/null >/tmp/drbdmeta.out "
                f"2>&1 || {{ cat /tmp/drbdmeta.out; exit 1; }}\n"
                f"{DRBDSETUP} new-resource {n.res} && {DRBDSETUP} new-minor {n.res} {n.minor} 0 && "
                f"{DRBDSETUP} attach {n.minor} {n.disk} {n.disk} internal --al-extents={AL_EXTENTS} && "
                f"{DRBDSETUP} connect {n.res} ipv4:{n.ip}:{DRBD_PORT} ipv4:{peer.ip}:{DRBD_PORT} "
                f"--protocol={protocol}")
    p = topo.pri
    wait_for("DRBD to connect", lambda: drbd_cmd(p, f"cstate {p.minor}") == "Connected")
    drbd_cmd(p, f"new-current-uuid {p.minor} --clear-bitmap")
    drbd_cmd(p, f"primary {p.minor}")
    wait_for("DRBD UpToDate", lambda: drbd_cmd(p, f"dstate {p.minor}") == "UpToDate/UpToDate")
    p.vm.ok(f"test -b /dev/drbd{p.minor} || mknod /dev/drbd{p.minor} b 147 {p.minor}")
    return f"/dev/drbd{p.minor}"


def drbd_standalone(topo):
    p, s = topo.pri, topo.sec
    drbd_cmd(p, f"disconnect ipv4:{p.ip}:{DRBD_PORT} ipv4:{s.ip}:{DRBD_PORT}")
    wait_for("DRBD standalone", lambda: drbd_cmd(p, f"cstate {p.minor}") == "StandAlone")


def drbd_down(topo):
    for n in (topo.pri, topo.sec):
        drbd_cmd(n, f"down {n.res}")


class Configs:
    """Sets up one configuration after another on a topology. A standalone configuration follows its
    connected one (the same devices, disconnected), anything else starts from fresh devices."""

    def __init__(self, topo):
        self.topo, self.state, self.dev = topo, None, None

    def down(self):
        if self.state and self.state.startswith("rmirror"):
            rmirror_down(self.topo)
        elif self.state and self.state.startswith("drbd"):
            drbd_down(self.topo)
        self.state, self.dev = None, None

    def up(self, config):
        t = self.topo
        if config == "rmirror-standalone" and self.state != "rmirror-C":
            self.up("rmirror-C")
        if config == "drbd-standalone" and self.state != "drbd-C":
            self.up("drbd-C")
        if config == "rmirror-standalone":
            rmirror_standalone(t)
        elif config == "drbd-standalone":
            drbd_standalone(t)
        else:
            self.down()
            if config == "raw":
                self.dev = t.pri.disk
            elif config == "rmirror-C-gc":
                self.dev = rmirror_up(t, "C", "flush")
            elif config.startswith("rmirror-"):
                self.dev = rmirror_up(t, config[-1])
            elif config == "drbd-C":
                self.dev = drbd_up(t, "C")
            else:
                raise ValueError(f"unknown configuration {config!r}")
        self.state = config
        return self.dev


# ---- profiles (--profile JOB) ------------------------------------------------------------------------------
def perf_payload():
    """Payload entries for the host's perf (Debian's linux-perf) and the libraries it needs, or exit."""
    perf = shutil.which("perf")
    if not perf:
        sys.exit("bench.py: --profile needs perf on the host (apt-get install linux-perf)")
    out = {"perf/perf": os.path.realpath(perf)}
    ldd = subprocess.run(["ldd", perf], stdout=subprocess.PIPE, text=True, check=True).stdout
    for line in ldd.splitlines():
        if "=> /" in line:
            lib = line.split("=> ")[1].split(" (")[0]
            out[f"perf/lib/{os.path.basename(lib)}"] = os.path.realpath(lib)
    return out


#: perf in the guest, from the payload. Samples every CPU with the cpu-clock timer (a TCG guest has no
#: hardware counters), with call graphs.
PERF = "LD_LIBRARY_PATH=/p/perf/lib /p/perf/perf"
PERF_START = (f"echo 0 > /proc/sys/kernel/kptr_restrict; {PERF} record -q -a -g -e cpu-clock -F 499 "
              "-o /tmp/perf.data >/tmp/perf.log 2>&1 & echo $! > /tmp/perf.pid; sleep 1")
PERF_STOP = (f"kill -INT $(cat /tmp/perf.pid); while kill -0 $(cat /tmp/perf.pid) 2>/dev/null; do sleep 0.2; done; "
             f"{PERF} report -i /tmp/perf.data --stdio --no-children --sort sym --percent-limit 0.7 -g none "
             "2>/dev/null | grep -v '^$' | head -60; echo '@@BY-COMM'; "
             f"{PERF} report -i /tmp/perf.data --stdio --no-children --sort comm --percent-limit 1 -g none "
             "2>/dev/null | grep -v '^$' | head -30; rm -f /tmp/perf.data")


def profile(topo, dev, job, s):
    """A cpu-clock profile of every CPU of the primary's guest while `job` runs on `dev`: perf report's text."""
    figs = run_fio(topo.pri.vm, dev, {job: JOBS[job]}, s["runtime"], 0, s["region_mib"], PERF_START, PERF_STOP)
    return figs["after"]


# ---- a run --------------------------------------------------------------------------------------------------
def load_modules(topo, drbd_modules):
    def load(vm):
        script = "insmod /p/rmirror.ko\n"
        for name in drbd_modules:
            extra = " usermode_helper=/bin/true" if name == "drbd.ko" else ""
            script += f"insmod /p/{name}{extra}\n"
        vm.ok("set -e\n" + script)
    topo.each(load)


def prefill(topo, s):
    """Write the measured region of every backing disk once (1 MiB sequential): the sparse disk files then
    have it allocated, so the first configuration does not pay for the host's block allocation."""
    for n in (topo.pri, topo.sec):
        n.vm.ok(f"fio --name=prefill --filename={n.disk} --rw=write --bs=1M --iodepth=8 --ioengine=libaio "
                f"--direct=1 --size={s['region_mib']}M --output-format=terse >/dev/null", 600)


def count_packets(topo, dev, s):
    """Packets and virtio-net interrupts per write of the PACKET_JOBS, on the primary's eth0 (and the
    secondary's interrupts)."""
    out = {}
    for name, job in PACKET_JOBS.items():
        sec0 = parse_counters(topo.sec.vm.ok(COUNTERS))
        figs = run_fio(topo.pri.vm, dev, {name: job}, s["packets"], 0, s["region_mib"], COUNTERS, COUNTERS)
        sec1 = parse_counters(topo.sec.vm.ok(COUNTERS))
        p0, p1 = parse_counters(figs["before"]), parse_counters(figs["after"])
        n = max(1, figs[name]["ios"])
        out[name] = {"writes": figs[name]["ios"], "tx_per_write": (p1[1] - p0[1]) / n,
                     "rx_per_write": (p1[0] - p0[0]) / n, "irq_per_write": (p1[2] - p0[2]) / n,
                     "peer_irq_per_write": (sec1[2] - sec0[2]) / n}
    return out


#: Write and flush requests the disk completed so far (/sys/block/X/stat fields 5 and 16).
def disk_stat_cmd(disk):
    return f"set -- $(cat /sys/block/{os.path.basename(disk)}/stat); echo $5 ${{16}}"


def count_disk_requests(topo, dev, s):
    """Write and flush requests per write on each backing disk while DISK_JOB runs on `dev`: what one
    replicated write costs the disks (a FUA write on a disk without FUA is a write and a flush)."""
    nodes = (("primary", topo.pri), ("secondary", topo.sec))
    before = {role: n.vm.ok(disk_stat_cmd(n.disk)).split() for role, n in nodes}
    figs = run_fio(topo.pri.vm, dev, {"disk": DISK_JOB}, s["packets"], 0, s["region_mib"])
    after = {role: n.vm.ok(disk_stat_cmd(n.disk)).split() for role, n in nodes}
    n = max(1, figs["disk"]["ios"])
    out = {"writes": figs["disk"]["ios"]}
    for role, _ in nodes:
        (w0, f0), (w1, f1) = (map(int, before[role]), map(int, after[role]))
        out[role] = {"writes_per_write": (w1 - w0) / n, "flushes_per_write": (f1 - f0) / n}
    return out


def run_topology(topo_cls, args, s, payload, drbd_modules):
    t0 = time.monotonic()
    kw = {"net": args.net} if topo_cls is TwoVm else {}
    for attempt in (1, 2):
        # a TCG guest very rarely stops early in boot (seen once, after "hpet: ... reserved for per-cpu
        # timers" on a loaded host): boot once more rather than lose the run
        topo = topo_cls(args.kernel, args.rootfs, payload, s["disk_mib"], **kw)
        log(f"{topo.name}: booting ({topo.describe})")
        try:
            topo.boot()
            break
        except vmlib.GuestError as e:
            if attempt == 2:
                raise
            log(f"{topo.name}: boot failed, trying once more: {str(e).splitlines()[0]}")
    res = {"describe": topo.describe, "configs": {}, "packets": {}}
    try:
        res["boot_seconds"] = topo.boot_seconds
        load_modules(topo, drbd_modules)
        prefill(topo, s)
        res["link"] = measure_link(topo.pri.vm, topo.sec.vm, topo.pri.ip, topo.sec.ip, s["ping"], s["iperf"])
        log(f"{topo.name}: link RTT {res['link']['rtt_ms']:.3f} ms, TCP {res['link']['tcp_mbs']:.1f} MB/s")
        cfg = Configs(topo)
        jobs = {j: JOBS[j] for j in s["jobs"]}
        rounds = []
        for rnd in range(s["rounds"]):
            # Rounds interleave the configurations, so that a slow spell of the shared host falls on all
            # of them; the counts and profiles are taken in the first round only.
            first = rnd == 0
            rounds.append({})
            for config in s["configs"]:
                c0 = time.monotonic()
                dev = cfg.up(config)
                figs = {}
                for j, job in jobs.items():
                    # one fio per job, so that the host's CPU use is known per job
                    h0 = host_cpu(topo.vms)
                    figs[j] = run_fio(topo.pri.vm, dev, {j: job}, s["runtime"], s["ramp"], s["region_mib"])[j]
                    figs[j].update(host_use(h0, host_cpu(topo.vms)))
                rounds[-1][config] = figs
                if first and topo.name == "two-vm" and s["packets"] and config in COUNTED:
                    res["packets"][config] = count_packets(topo, dev, s)
                if first and s["packets"] and config in COUNTED:
                    res.setdefault("disk_requests", {})[config] = count_disk_requests(topo, dev, s)
                if first and args.profile:
                    text = profile(topo, dev, args.profile, s)
                    res.setdefault("profiles", {})[config] = text
                    with open(os.path.join(args.out, f"profile-{topo.name}-{config}-{args.profile}.txt"),
                              "w") as f:
                        f.write(text)
                tag = f" (round {rnd + 1}/{s['rounds']})" if s["rounds"] > 1 else ""
                log(f"{topo.name}: {config} on {dev}{tag} done in {time.monotonic() - c0:.0f}s: "
                    + ", ".join(f"{k} {figs[j][f]:.1f}{u}" for k, j, f, _, u, _ in METRICS if j in jobs))
            res["configs"] = median_configs(rounds)
            if s["rounds"] > 1:
                res["rounds"] = rounds
        cfg.down()
        if s["link_end"]:
            # the link once more: on a shared host its figures move, and this shows by how much
            res["link_end"] = measure_link(topo.pri.vm, topo.sec.vm, topo.pri.ip, topo.sec.ip, s["ping"],
                                           s["iperf"])
    except (vmlib.GuestError, ValueError, KeyError, json.JSONDecodeError) as e:
        res["error"] = str(e)       # the figures so far are kept
        log(f"{topo.name} FAILED: {e}")
    finally:
        topo.stop()
    res["kernel_log_problems"] = topo.problems
    res["drbd_kernel_log_lines"] = topo.drbd_lines
    res["seconds"] = round(time.monotonic() - t0, 1)
    return res


def median_configs(rounds):
    """{config: {job: figures}} whose every figure is the median of that figure over `rounds` (a list of
    such dicts, one per round; a configuration counts in the rounds that measured it)."""
    out = {}
    for config in dict.fromkeys(c for r in rounds for c in r):
        runs = [r[config] for r in rounds if config in r]
        out[config] = {j: {f: statistics.median(run[j][f] for run in runs) for f in figs}
                       for j, figs in runs[0].items()}
    return out


def metric_values(res):
    """{config: {metric key: value}} of one topology's results."""
    return metric_values_of(res["configs"])


def metric_values_of(configs):
    out = {}
    for config, jobs in configs.items():
        out[config] = {k: jobs[j][f] for k, j, f, _, _, _ in METRICS if j in jobs}
    return out


def ratio_spread(res):
    """{"a/b": {metric: (lowest, highest)}}: each ratio computed within each round (both configurations
    measured minutes apart), its range over the rounds; empty for a single round."""
    per = [ratios(metric_values_of(r)) for r in res.get("rounds", [])]
    out = {}
    for rat in per:
        for h, ms in rat.items():
            for k, v in ms.items():
                lo, hi = out.setdefault(h, {}).get(k, (v, v))
                out[h][k] = (min(lo, v), max(hi, v))
    return out


def ratios(values):
    """{"a/b": {metric: a's value / b's value}} for the RATIOS measured."""
    out = {}
    for a, b in RATIOS:
        if a in values and b in values:
            out[f"{a}/{b}"] = {k: values[a][k] / values[b][k] for k in values[a]
                               if k in values[b] and values[b][k]}
    return out


def fmt(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    return f"{v:.0f}" if a >= 1000 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 else f"{v:.3f}"


#: Kernel options whose instrumentation costs dominate a TCG guest's driver figures.
DEBUG_OPTIONS = {"CONFIG_KASAN": "KASAN", "CONFIG_PROVE_LOCKING": "lockdep", "CONFIG_DEBUG_KMEMLEAK": "kmemleak",
                 "CONFIG_DEBUG_OBJECTS": "debug objects", "CONFIG_DEBUG_LIST": "list debugging"}


def kernel_info(kdir):
    """The kernel build's release and the debugging options it has on (from its .config)."""
    kdir = os.path.realpath(kdir)
    try:
        with open(os.path.join(kdir, ".config")) as f:
            on = {l.split("=")[0] for l in f if l.rstrip().endswith("=y")}
    except OSError:
        on = set()
    try:
        with open(os.path.join(kdir, "include/config/kernel.release")) as f:
            release = f.read().strip()
    except OSError:
        release = "?"
    return {"build": os.path.basename(kdir), "release": release,
            "debug": [name for opt, name in DEBUG_OPTIONS.items() if opt in on]}


def table(doc):
    """The text table of a results document."""
    lines = []
    k = doc.get("kernel")
    if k:
        lines.append(f"kernel {k['release']} ({k['build']}), debugging: {', '.join(k['debug']) or 'none'}")
    for name, res in doc["topologies"].items():
        vals = metric_values(res)
        configs = [c for c in CONFIGS if c in vals]
        lines += ["", f"== {name}: {res['describe']}"]
        link = res.get("link")
        if link:
            lines.append(f"   link: RTT {link['rtt_ms']:.3f} ms (min {link['rtt_min_ms']:.3f}, max "
                         f"{link['rtt_max_ms']:.3f}), TCP {link['tcp_mbs']:.1f} MB/s (iperf3, one stream"
                         + (f"; host CPUs busy {link['host_cores']:.2f}" if "host_cores" in link else "") + ")")
        end = res.get("link_end")
        if end:
            lines.append(f"   link after the runs: RTT {end['rtt_ms']:.3f} ms, TCP {end['tcp_mbs']:.1f} MB/s")
        if res.get("error"):
            lines.append(f"   FAILED: {res['error'].splitlines()[0]}")
        lines.append("")
        w = 31
        med = f" (median of {len(res['rounds'])} rounds)" if res.get("rounds") else ""
        lines.append(f"{'figure' + med:{w}}" + "".join(f"{SHORT[c]:>9}" for c in configs))
        for k, j, f, label, unit, _ in METRICS:
            if any(k in vals[c] for c in configs):
                lines.append(f"{label + ' (' + unit + ')':{w}}" + "".join(f"{fmt(vals[c].get(k)):>9}" for c in configs))
        rat = ratios(vals)
        if rat:
            heads = list(rat)
            head_cells = "".join(f"{SHORT[h.split('/')[0]] + '/' + SHORT[h.split('/')[1]]:>16}" for h in heads)
            lines += ["", f"{'ratio (latency: lower is better)':{w}}" + head_cells]
            for k, j, f, label, unit, _ in METRICS:
                if any(k in rat[h] for h in heads):
                    lines.append(f"{label:{w}}" + "".join(f"{fmt(rat[h].get(k)):>16}" for h in heads))
            spread = ratio_spread(res)
            if spread:
                n = len(res["rounds"])
                lines += ["", f"{'each round (' + str(n) + '): low-high':{w}}" + head_cells]
                for k, j, f, label, unit, _ in METRICS:
                    if any(k in spread.get(h, {}) for h in heads):
                        cells = []
                        for h in heads:
                            lo_hi = spread.get(h, {}).get(k)
                            cells.append(f"{fmt(lo_hi[0]) + '-' + fmt(lo_hi[1]) if lo_hi else '-':>16}")
                        lines.append(f"{label:{w}}" + "".join(cells))
        lines += host_lines(res, configs, w)
        if res.get("disk_requests"):
            lines += ["", f"{'per write (4k QD32), disk reqs':{w}}{'pri wr':>9}{'pri fl':>9}{'sec wr':>9}{'sec fl':>9}"
                      f"{'writes':>8}"]
            for config, d in res["disk_requests"].items():
                lines.append(f"{config:{w}}" + "".join(f"{d[r][k]:>9.2f}" for r in ("primary", "secondary")
                                                      for k in ("writes_per_write", "flushes_per_write"))
                             + f"{d['writes']:>8}")
        if res.get("packets"):
            lines += ["", f"{'per write, primary eth0':{w}}{'tx pkts':>9}{'rx pkts':>9}{'irqs':>9}{'peer irqs':>10}"
                      f"{'writes':>8}"]
            for config, jobs in res["packets"].items():
                for job, p in jobs.items():
                    label = f"{config} {'4k' if job == '4k' else '1 MiB'} QD1"
                    lines.append(f"{label:{w}}{fmt(p['tx_per_write']):>9}{fmt(p['rx_per_write']):>9}"
                                 f"{fmt(p['irq_per_write']):>9}{fmt(p['peer_irq_per_write']):>10}{p['writes']:>8}")
        if res.get("drbd_kernel_log_lines"):
            lines.append(f"   (DRBD's own threads logged {len(res['drbd_kernel_log_lines'])} debug-kernel warning "
                         "line(s), see drbd_kernel_log_lines in the JSON)")
        for p in res.get("kernel_log_problems", []):
            lines.append(f"   KERNEL LOG PROBLEM: {p}")
    return "\n".join(lines) + "\n"


#: The figures also given per second of host CPU: (job, fio figure, label, unit), from METRICS.
PER_CPU = [(j, f, label, unit.removesuffix("/s")) for k, j, f, label, unit, _ in METRICS
           if k in ("qd32_iops", "seq1m_mbs")]


def host_lines(res, configs, w):
    """The table's host-CPU blocks: how many of the host's CPUs were busy during each job (and how many of
    them ran the guests' QEMU), and the throughput figures per second of host CPU, with rm-C/drbd-C of
    those. Under TCG the guests' CPUs and devices are the host's CPU time, so when the host is saturated a
    driver's throughput is set by the host CPU it costs per write: the second block compares that cost."""
    cfg = res.get("configs", {})
    shown = [c for c in configs if all("host_cores" in f for f in cfg[c].values())]
    if not shown:
        return []
    jobs = [j for j in JOBS if any(j in cfg[c] for c in shown)]
    lines = ["", f"{'host CPUs busy (QEMU)':{w}}" + "".join(f"{SHORT[c]:>12}" for c in shown)]
    for j in jobs:
        cells = []
        for c in shown:
            f = cfg[c].get(j)
            cells.append(f"{f['host_cores']:.2f} ({f['qemu_cores']:.2f})" if f else "-")
        lines.append(f"{j:{w}}" + "".join(f"{x:>12}" for x in cells))
    pair = "rmirror-C" in shown and "drbd-C" in shown
    lines += ["", f"{'per second of host CPU':{w}}" + "".join(f"{SHORT[c]:>9}" for c in shown)
              + (f"{'rm-C/drbd-C':>14}" if pair else "")]
    for j, fig, label, unit in PER_CPU:
        if j not in jobs:
            continue
        per = {c: cfg[c][j][fig] / cfg[c][j]["host_cores"] for c in shown
               if j in cfg[c] and cfg[c][j]["host_cores"] > 0}
        row = f"{label + ' (' + unit + ')':{w}}" + "".join(f"{fmt(per.get(c)):>9}" for c in shown)
        if pair and per.get("drbd-C"):
            row += f"{fmt(per['rmirror-C'] / per['drbd-C']):>14}"
        lines.append(row)
    return lines


def plot(doc, png):
    """bench.png: per topology, every figure relative to the raw disk (latencies inverted: raw/x), so
    that higher is better everywhere; rmirror and DRBD side by side in each group."""
    names = list(doc["topologies"])
    tmp = tempfile.mkdtemp(prefix="rmirror-plot-")
    try:
        gp = ["set terminal pngcairo size 1400,%d font 'sans,10'" % (420 * len(names)), f"set output '{png}'",
              f"set multiplot layout {len(names)},1", "set style data histograms",
              "set style histogram clustered gap 1", "set style fill solid 0.9 border -1", "set boxwidth 0.9",
              "set logscale y", "set grid ytics", "set key outside right top vertical",
              "set ylabel 'relative to the raw disk (higher is better; latency: raw / x)'",
              "set xtics nomirror", "set yrange [*:2]"]
        for name in names:
            res = doc["topologies"][name]
            vals = metric_values(res)
            configs = [c for c in CONFIGS if c in vals and c != "raw"]
            dat = os.path.join(tmp, f"{name}.dat")
            with open(dat, "w") as f:
                f.write("# metric " + " ".join(configs) + "\n")
                for k, j, fig, label, unit, higher in METRICS:
                    if "raw" not in vals or k not in vals["raw"]:
                        continue
                    row = []
                    for c in configs:
                        v, r = vals[c].get(k), vals["raw"][k]
                        row.append(f"{(v / r if higher else r / v):.4f}" if v and r else "NaN")
                    f.write(f"\"{label.replace(' mean lat', ' lat').replace(' p99 lat', ' p99')}\" "
                            + " ".join(row) + "\n")
            link = res.get("link") or {"rtt_ms": math.nan, "tcp_mbs": math.nan}
            gp.append(f"set title '{name}: {res['describe']} (RTT {link['rtt_ms']:.2f} ms, "
                      f"{link['tcp_mbs']:.0f} MB/s)'")
            if not configs or "raw" not in vals:
                gp.append("set label 1 'no figures' at graph 0.5, 0.5 center")
                gp.append("plot [0:1] [0.01:2] NaN notitle")
                gp.append("unset label 1")
                continue
            gp.append("plot " + ", ".join(
                f"'{dat}' using {i + 2}:xtic(1) title '{c}' lc rgb '{COLORS[c]}'" for i, c in enumerate(configs)))
        gp.append("unset multiplot")
        script = os.path.join(tmp, "bench.gp")
        with open(script, "w") as f:
            f.write("\n".join(gp) + "\n")
        r = subprocess.run(["gnuplot", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0 or not os.path.isfile(png):
            raise RuntimeError(f"gnuplot failed: {r.stdout}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check(doc, s):
    """The smoke's assertions: every figure of every configuration and job, and the link's, is a finite
    positive number. Returns a list of what is missing."""
    bad = []
    for name in s["topologies"]:
        res = doc["topologies"].get(name)
        if res is None:
            bad.append(f"{name}: no results")
            continue
        for k in ("rtt_ms", "tcp_mbs"):
            v = res.get("link", {}).get(k)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                bad.append(f"{name}: link {k} = {v!r}")
        vals = metric_values(res)
        for config in s["configs"]:
            for k, j, f, _, _, _ in METRICS:
                if j not in s["jobs"]:
                    continue
                v = vals.get(config, {}).get(k)
                if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                    bad.append(f"{name}: {config} {k} = {v!r}")
    return bad


def drbd_modules(kdir):
    """Payload entries for drbd.ko and the modules it depends on (modinfo -F depends), dependencies first."""
    found = {}

    def locate(name):
        hits = subprocess.run(["find", os.path.realpath(kdir), "-name", f"{name}.ko", "-not", "-path", "*/.tmp*"],
                              stdout=subprocess.PIPE, text=True).stdout.split()
        if not hits:
            sys.exit(f"bench.py: {name}.ko not found under {kdir} (BLK_DEV_DRBD=m in scripts/kernel.config)")
        return hits[0]

    def add(name):
        if f"{name}.ko" in found:
            return
        path = locate(name)
        deps = subprocess.run(["modinfo", "-F", "depends", path], stdout=subprocess.PIPE, text=True).stdout.strip()
        for d in filter(None, deps.split(",")):
            add(d)
        found[f"{name}.ko"] = path
    add("drbd")
    return found


def cmd_run(args):
    s = dict(SMOKE if args.smoke else FULL)
    for key in ("runtime", "ramp", "rounds"):
        if getattr(args, key) is not None:
            s[key] = getattr(args, key)
    if s["rounds"] < 1:
        sys.exit("bench.py: --rounds must be at least 1")
    if args.topology:
        s["topologies"] = args.topology.split(",")
    if args.configs:
        s["configs"] = args.configs.split(",")
    for t in s["topologies"]:
        if t not in TOPOLOGIES:
            sys.exit(f"bench.py: unknown topology {t!r}")
    for c in s["configs"]:
        if c not in CONFIGS:
            sys.exit(f"bench.py: unknown configuration {c!r}")
    payload = vmlib.resolve(args, need_module=True)
    if "two-vm" in s["topologies"] and args.net == "tap" and (os.geteuid() != 0 or not os.path.exists("/dev/net/tun")):
        log("the tap link needs root and /dev/net/tun: two-vm uses the socket netdev (a much slower link)")
        args.net = "socket"
    kdir = args.kdir or os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(args.kernel)))))
    mods = drbd_modules(kdir)
    payload.update(mods)
    if args.profile:
        if args.profile not in JOBS:
            sys.exit(f"bench.py: --profile: unknown job {args.profile!r} (one of {', '.join(JOBS)})")
        payload.update(perf_payload())
    os.makedirs(args.out, exist_ok=True)
    t0 = time.monotonic()
    doc = {"version": 1, "kind": "smoke" if args.smoke else "full",
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "settings": {k: s[k] for k in ("rounds", "runtime", "ramp", "region_mib", "disk_mib", "jobs",
                                            "configs")},
           "jobs": {j: JOBS[j] for j in s["jobs"]}, "al_extents": AL_EXTENTS,
           "qemu": subprocess.run(["qemu-system-x86_64", "--version"], stdout=subprocess.PIPE,
                                  text=True).stdout.splitlines()[0],
           "smp": vmlib.DEFAULT_SMP, "mem_mib": vmlib.DEFAULT_MEM, "host_cpus": os.cpu_count(),
           "accel": "kvm" if os.environ.get("RMIRROR_KVM") == "1" else "tcg", "kernel": kernel_info(kdir),
           "topologies": {}}
    failed = []
    for name in s["topologies"]:
        cls = TwoVm if name == "two-vm" else OneVm
        try:
            doc["topologies"][name] = res = run_topology(cls, args, s, payload, list(mods))
            if "error" in res:
                failed.append(f"{name}: {res['error']}")
        except vmlib.GuestError as e:
            failed.append(f"{name}: {e}")
            log(f"{name} FAILED: {e}")
    doc["seconds"] = round(time.monotonic() - t0, 1)
    path = os.path.join(args.out, "bench.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    text = table(doc)
    with open(os.path.join(args.out, "bench.txt"), "w") as f:
        f.write(text)
    print(text, flush=True)
    if doc["topologies"]:
        plot(doc, os.path.join(os.path.abspath(args.out), "bench.png"))
    log(f"wrote {path}, bench.txt and bench.png in {args.out} ({doc['seconds']:.0f}s)")
    with open(path) as f:
        reread = json.load(f)            # well-formed
    problems = [p for r in reread["topologies"].values() for p in r.get("kernel_log_problems", [])]
    if args.smoke:
        failed += check(reread, s)
    if failed or problems:
        sys.exit("bench.py: " + "; ".join(failed + [f"kernel log: {p}" for p in problems]))


def cmd_report(args):
    with open(args.json) as f:
        doc = json.load(f)
    print(table(doc), end="")
    png = args.png or os.path.join(os.path.dirname(os.path.abspath(args.json)), "bench.png")
    plot(doc, png)
    log(f"wrote {png}")


def cmd_netdevs(args):
    """Boot alpha and beta once per back end and measure the link with the bench's own tool."""
    args.kernel = args.kernel or os.environ.get("RMIRROR_KERNEL") or vmlib.DEFAULT_KERNEL
    args.rootfs = args.rootfs or os.environ.get("RMIRROR_ROOTFS") or vmlib.default_rootfs()
    kinds = args.only.split(",") if args.only else NETDEVS
    results = {}
    for kind in kinds:
        workdir = tempfile.mkdtemp(prefix=f"rmirror-netdev-{kind}-")
        link = Link(kind, workdir)
        vms = []
        try:
            payload = os.path.join(workdir, "payload.img")
            vmlib.make_ext4_image(payload, {"hello": b"netdev\n"})

            def disk(label):
                path = os.path.join(workdir, f"{label}.raw")
                with open(path, "wb") as f:
                    f.truncate(64 << 20)
                return path
            vms = list(link.boot(args.kernel, args.rootfs, payload, disk, append="kmemleak=off"))
            a, b = vms
            r = {}
            for mtu in args.mtu.split(","):
                for vm in vms:
                    vm.ok(f"ip link set eth0 mtu {mtu}")
                r[mtu] = measure_link(a, b, "10.99.0.1", "10.99.0.2", args.pings, args.seconds)
                # virtio-net feature bits the guest negotiated: 0 CSUM, 11 HOST_TSO4 (the guest may send
                # 64 KiB TCP segments as one frame), 15 MRG_RXBUF
                bits = a.ok("cat /sys/bus/virtio/devices/$(basename $(readlink /sys/class/net/eth0/device))"
                            "/features").strip()
                r[mtu]["virtio_net_features"] = {name: bits[i] == "1" for name, i in
                                                 (("csum", 0), ("host_tso4", 11), ("mrg_rxbuf", 15))}
                log(f"{kind} mtu {mtu}: RTT {r[mtu]['rtt_ms']:.3f} ms, TCP {r[mtu]['tcp_mbs']:.2f} MB/s")
            results[kind] = r
        except (vmlib.GuestError, subprocess.CalledProcessError, json.JSONDecodeError) as e:
            log(f"{kind}: FAILED: {e}")
            results[kind] = {"error": str(e)[:500]}
        finally:
            for vm in vms:
                vm.shutdown()
            link.close()
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n{'netdev':14}{'mtu':>6}{'RTT ms':>9}{'TCP MB/s':>10}{'retrans':>9}")
    for kind, r in results.items():
        if "error" in r:
            print(f"{kind:14}  failed: {r['error'][:100]}")
            continue
        for mtu, m in r.items():
            print(f"{kind:14}{mtu:>6}{m['rtt_ms']:>9.3f}{m['tcp_mbs']:>10.2f}{m['tcp_retransmits']:>9}")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "netdevs.json"), "w") as f:
            json.dump(results, f, indent=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="boot the topologies and measure every configuration")
    r.add_argument("--smoke", action="store_true", help="the short version make check runs")
    r.add_argument("--out", default=os.path.join(vmlib.TOP, "bench-results"))
    r.add_argument("--runtime", type=int, help="seconds per fio job (full: 10, smoke: 1)")
    r.add_argument("--rounds", type=int, help="run every configuration's jobs this many times, interleaved; "
                   "figures are medians, and the table adds each ratio's range over the rounds (default 1)")
    r.add_argument("--ramp", type=int, help="fio ramp_time per job, seconds (full: 2, smoke: 0)")
    r.add_argument("--topology", help=f"comma-separated subset of {','.join(TOPOLOGIES)}")
    r.add_argument("--configs", help=f"comma-separated subset of {','.join(CONFIGS)}")
    r.add_argument("--net", default="tap", choices=("tap", "socket"),
                   help="the two-vm link: tap devices in a host bridge (default, needs root) or vm.py's socket")
    r.add_argument("--kdir", help="kernel build tree with drbd.ko (default: the bzImage's)")
    r.add_argument("--profile", metavar="JOB", help=f"after each configuration's jobs, run JOB (one of "
                   f"{', '.join(JOBS)}) once more under perf (the host's linux-perf) on the primary's guest; "
                   "writes profile-TOPOLOGY-CONFIG-JOB.txt")
    for opt in ("--kernel", "--rootfs", "--module", "--tool"):
        r.add_argument(opt)
    r.set_defaults(fn=cmd_run)
    p = sub.add_parser("report", help="print the table and draw the plot of a bench.json again")
    p.add_argument("json")
    p.add_argument("--png")
    p.set_defaults(fn=cmd_report)
    n = sub.add_parser("netdevs", help="compare QEMU network back ends for the two-vm link")
    n.add_argument("--only", help=f"comma-separated subset of {','.join(NETDEVS)}")
    n.add_argument("--mtu", default="1500", help="comma-separated guest MTUs to measure (default 1500)")
    n.add_argument("--seconds", type=int, default=5, help="iperf3 seconds per measurement")
    n.add_argument("--pings", type=int, default=20)
    n.add_argument("--out", help="also write netdevs.json here")
    n.add_argument("--kernel")
    n.add_argument("--rootfs")
    n.set_defaults(fn=cmd_netdevs)
    args = ap.parse_args()
    args.fn(args)


if __name__ == "__main__":
    main()
