# SPDX-License-Identifier: GPL-2.0
"""A malformed or hostile secondary: the primary drops the connection, writes nothing, crashes nothing.

The mirror image of test_hostile.py. alpha is a real primary; beta does not load the module but plays
the secondary with busybox nc as a persistent server (`nc -ll -e`): for each socket the primary
connects it reads the primary's handshake, takes the channel from it (byte 28) and answers with the
frames of that channel, encoded here from Documentation/wire-protocol.rst: its own handshake, then
the frames under test. The primary reads the data socket's frames once the connection is complete
(its reply thread, the receiver of forwarded reads and pulls) and the meta socket's frames in its
heartbeat thread: every case checks that the connection did come up ("connected to"), so the frames
were read by a complete connection, and that it went down for the case's reason."""

import base64
import struct

import pytest

from helpers import RESYNC_REPLY, S, PORT, create, handshake, load, md5_dev, preamble, remove, reset_pair, \
    resync_reply, small_write, status

TARGET = 2048  # sector the tests aim at (1 MiB into the device)
ACK, RESYNC_NEGATIVE, BARRIER_ACK, PING = 0x05, 0x0E, 0x07, 0x08

# One connection of the fake secondary: stdin/stdout are the socket.
FAKE = """#!/bin/sh
head -c 64 > /tmp/fake.hs.$$
ch=$(od -An -tu1 -j28 -N1 /tmp/fake.hs.$$ | tr -d ' ')
echo "rmirror-test: fake secondary: channel $ch" > /dev/kmsg
cat /tmp/fake.reply$ch
exec timeout 5 cat > /dev/null
"""


def ack(seq, kind=2):
    return preamble(ACK, 0, struct.pack("<IB3x", seq, kind))


@pytest.fixture(scope="module", autouse=True)
def primary_host(pair):
    """The module on alpha for the whole module (each case creates and removes its primary) and the fake's
    script on beta."""
    a, b = pair.alpha, pair.beta
    a.ok(f"dd if=/dev/urandom of=/dev/vdb bs=512 seek={TARGET} count=8 oflag=direct 2>/dev/null")
    load(a)
    b.ok(f"echo {base64.b64encode(FAKE.encode()).decode()} | base64 -d > /tmp/fake.sh && chmod +x /tmp/fake.sh")
    yield
    reset_pair(pair)
    pair.clean = True


def target_md5(vm):
    """md5 of the 4 KiB at TARGET on the guest's own disk, read past the page cache."""
    return md5_dev(vm, "/dev/vdb", 4096, TARGET << 9, 4096)


def stop_fake(vm):
    """Stops the server and the connections it forked (which may hold its listening socket too)."""
    vm.ok(f"killall nc timeout 2>/dev/null; "
          f"for i in $(seq 100); do netstat -ltn | grep -q ':{PORT} ' || exit 0; sleep 0.1; done; exit 1")


def connect_to_fake(pair, data_frames, meta_frames):
    """beta answers the primary's data socket with its handshake + `data_frames` and the meta socket with
    its handshake + `meta_frames`; alpha creates a primary and waits until it has lost that connection.
    Returns alpha's kernel lines about r0."""
    a, b = pair.alpha, pair.beta
    for ch, blob in ((0, handshake(S, role=2) + data_frames), (1, handshake(S, role=2, channel=1) + meta_frames)):
        b.ok(f"echo {base64.b64encode(blob).decode()} | base64 -d > /tmp/fake.reply{ch}")
    b.ok(f"(nc -ll -p {PORT} -e /tmp/fake.sh > /dev/null 2>&1 &); "
         f"for i in $(seq 100); do netstat -ltn | grep -q ':{PORT} ' && exit 0; sleep 0.1; done; exit 1")
    a.ok("dmesg -c > /dev/null")
    try:
        create(a, "primary")
        try:
            a.ok("for i in $(seq 1 150); do dmesg | grep -q 'connection lost' && exit 0; sleep 0.1; done; exit 1",
                 timeout=60)
        finally:
            stop_fake(b)
        log = a.ok("dmesg | grep 'rmirror: r0'")
        assert status(a)["cstate"] in ("connecting", "outage"), log
    finally:
        remove(a)
    return log


CASES = [
    ("garbage on the data socket", b"\xde\xad\xbe\xef" * 8, b"", "bad magic"),
    ("a read reply without a request", resync_reply(TARGET, 8, b"\x5a" * 4096), b"",
     "a read reply without a request"),
    ("a read refusal without a request", preamble(RESYNC_NEGATIVE, 8, struct.pack("<II", 8, 0))
     + struct.pack("<Q", TARGET), b"", "a read reply without a request"),
    ("an oversized read reply", preamble(RESYNC_REPLY, 64 << 20, struct.pack("<II", 1 << 17, 0)), b"",
     "payload too large"),
    ("a read reply beyond the device", resync_reply(S - 4, 8, b"\x5a" * 4096), b"", "sector range beyond device"),
    ("a write from the secondary", small_write(1, TARGET, b"\x5a" * 4096), b"",
     "unexpected message on the data socket"),
    ("garbage on the meta socket", b"", b"\xde\xad\xbe\xef" * 8, "bad magic"),
    ("an ack for a write never sent", b"", ack(77), "ack for an unknown write"),
    ("a barrier ack for a barrier never sent", b"", preamble(BARRIER_ACK, 0, struct.pack("<II", 3, 1)), None),
    ("a write on the meta socket", b"", small_write(1, TARGET, b"\x5a" * 4096),
     "unexpected message on the meta socket"),
]


@pytest.mark.parametrize("case,data,meta,reason", CASES, ids=[c[0] for c in CASES])
def test_hostile_secondary_drops_the_connection_and_writes_nothing(pair, case, data, meta, reason):
    a = pair.alpha
    before = target_md5(a)
    log = connect_to_fake(pair, data, meta)
    lines = log.splitlines()
    up = [i for i, line in enumerate(lines) if "connected to 10.99.0.2" in line]
    lost = [i for i, line in enumerate(lines) if "connection lost" in line]
    assert up and lost and up[0] < lost[0], f"{case}: the connection did not come up before it was lost:\n{log}"
    assert "timed out" not in lines[lost[0]], f"{case}: lost by a timeout, not by the frames:\n{log}"
    if reason:
        assert reason in lines[lost[0]], f"{case}: expected '{reason}' in:\n{lines[lost[0]]}"
    assert target_md5(a) == before, f"{case}: alpha's disk changed"


def test_well_behaved_fake_secondary_stays_connected(pair):
    """Positive control: handshakes only, then a Ping on the meta socket. The primary comes up, answers the
    Ping, and keeps the connection until the fake goes silent (its timeout, 5 s), not before."""
    log = connect_to_fake(pair, b"", preamble(PING, 8, struct.pack("<II", 1, 0)) + struct.pack("<Q", 0))
    lines = log.splitlines()
    lost = [line for line in lines if "connection lost" in line]
    assert any("connected to 10.99.0.2" in line for line in lines), log
    assert lost and ("timed out" in lost[0] or "closed" in lost[0]), log
