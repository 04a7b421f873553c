# SPDX-License-Identifier: GPL-2.0
"""A malformed or hostile peer: the connection is dropped, nothing is written, nothing crashes.

beta is a real secondary; alpha does not load the module but plays the primary with busybox nc,
sending frames encoded here in Python straight from Documentation/wire-protocol.rst (so this
also checks the document against the driver): a data socket with the frames under test, then,
once its handshake is through, a meta socket that completes the connection. A well-formed small
write is the positive control: it does reach the disk and is acked on the meta socket, so
"nothing written" in the other cases means something."""

import base64
import struct

import pytest

from helpers import (HANDSHAKE, MAGIC, S, WRITE_NOTIFY, PORT, create, handshake, load, md5_dev, preamble,
                     reset_pair, resync_reply, small_write, status)

TARGET = 2048  # sector the tests aim at (1 MiB into the device)


def write_notify(seq, length):
    return preamble(WRITE_NOTIFY, 0, struct.pack("<II", seq, length))


BITMAP, RESYNC_ACK, UUIDS, IN_SYNC = 0x0B, 0x10, 0x11, 0x12
REGIONS = S // 8  # bitmap bits of the device (4 KiB regions)


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        out.append(b | (0x80 if v else 0))
        if not v:
            return bytes(out)


def bitmap(offset, bits, rle, last=True):
    """A Bitmap chunk: `bits` regions from `offset`, run-length encoded (clean run first)."""
    return preamble(BITMAP, 8 + len(rle), struct.pack("<IB3x", bits, int(last))) + struct.pack("<Q", offset) + rle


@pytest.fixture(scope="module", autouse=True)
def secondary(pair):
    """One secondary on beta for the whole module: it takes a new connection at any time, so each case
    simply connects again (every case checks that beta is still listening afterwards)."""
    b = pair.beta
    b.ok("dd if=/dev/zero of=/dev/vdb bs=1M count=2 seek=1 oflag=direct 2>/dev/null")
    load(b)
    create(b, "secondary")
    yield
    reset_pair(pair)
    pair.clean = True


def target_md5(vm):
    """md5 of the 4 KiB at TARGET on the guest's own disk, read past the page cache."""
    return md5_dev(vm, "/dev/vdb", 4096, TARGET << 9, 4096)


def send_as_primary(pair, frames):
    """Connect from alpha (the configured peer address) and send `frames` on a data socket; half a
    second later open the meta socket (its handshake only). Wait for beta to refuse, drop or finish
    with the connection. Returns beta's kernel lines about it and what beta sent on the meta socket."""
    a, b = pair.alpha, pair.beta
    b.ok("dmesg -c >/dev/null")
    for name, blob in (("frames", frames), ("meta", handshake(S, channel=1))):
        a.ok(f"echo {base64.b64encode(blob).decode()} | base64 -d > /tmp/{name}")
    # Keep both sockets open a little after sending so beta reads everything we sent.
    a.run(f"(cat /tmp/frames; sleep 1.5) | timeout 10 nc 10.99.0.2 {PORT} > /tmp/reply & sleep 0.5; "
          f"(cat /tmp/meta; sleep 1.2) | timeout 10 nc 10.99.0.2 {PORT} > /tmp/meta_reply; wait", timeout=30)
    b.ok("for i in $(seq 1 50); do dmesg | grep -Eq 'connection lost|refused a connection' && exit 0; "
         "sleep 0.1; done; exit 1")
    return b.ok("dmesg | grep 'rmirror: r0'"), a.ok("od -An -v -tx1 /tmp/meta_reply | tr -d ' \\n'")


def frames_of(blob):
    """Splits a stream of (non-SmallWrite) frames: [(command, frame bytes)]."""
    out = []
    while len(blob) >= 16:
        magic, cmd, _, length = struct.unpack_from("<HBBI", blob)
        assert magic == MAGIC, blob.hex()
        out.append((cmd, blob[:16 + length]))
        blob = blob[16 + length:]
    return out


@pytest.mark.parametrize("case,frames,reason", [
    ("garbage", lambda: b"\xde\xad\xbe\xef" * 8, "bad magic"),
    ("bad version", lambda: handshake(S)[:3] + b"\x09" + handshake(S)[4:], "unsupported protocol version"),
    ("unknown command", lambda: preamble(0x7F, 0, bytes(8)), "unknown command"),
    ("wrong role", lambda: handshake(S, role=2), "the peer has the same role"),
    ("bigger device", lambda: handshake(S + 8), "the peer's device is larger than ours"),
    ("write beyond the device", lambda: handshake(S) + small_write(1, S - 4, bytes(range(256)) * 16),
     "sector range beyond device"),
    ("oversized notify", lambda: handshake(S) + write_notify(1, 64 << 20), "payload too large"),
    ("notify then small write", lambda: handshake(S) + write_notify(1, 65536)
     + small_write(2, TARGET, b"\x5a" * 4096), "small write while a large write was announced"),
    ("truncated write", lambda: handshake(S) + small_write(1, TARGET, b"\x5a" * 4096)[:1000],
     "the peer closed the connection"),
    ("bitmap beyond the device", lambda: handshake(S) + bitmap(REGIONS, 8, varint(0) + varint(8)),
     "bitmap chunk does not fit the device"),
    ("bitmap runs not summing up", lambda: handshake(S) + bitmap(0, 64, varint(8) + varint(8)), None),
    ("resync data beyond the device", lambda: handshake(S) + resync_reply(S - 4, 8, b"\x5a" * 4096),
     "sector range beyond device"),
    ("resync data cut short", lambda: handshake(S) + resync_reply(TARGET, 8, b"\x5a" * 2048)
     + small_write(1, TARGET, b"\x5a" * 4096), None),
    ("meta handshake on the data socket", lambda: handshake(S, channel=1), "a meta socket without a data socket"),
    ("unknown channel", lambda: handshake(S, channel=2), "invalid field value"),
    ("unknown volume", lambda: handshake(S) + small_write(1, TARGET, b"\x5a" * 4096, volume=5),
     "write for an unknown volume"),
    ("generations from a peer with metadata", lambda: handshake(S, uuids=(7, 0, 0, 0)),
     "the peer keeps metadata and we do not"),
    ("uuids cut short", lambda: handshake(S) + preamble(UUIDS, 16, struct.pack("<Q", 6)) + bytes(16)
     + small_write(1, TARGET, b"\x5a" * 4096), "length field invalid for command"),
    ("in-sync on the data socket", lambda: handshake(S) + preamble(IN_SYNC, 0, struct.pack("<Q", 6))
     + small_write(1, TARGET, b"\x5a" * 4096), "unexpected message on the data socket"),
])
def test_hostile_frames_drop_the_connection_and_write_nothing(pair, case, frames, reason):
    b = pair.beta
    before = target_md5(b)
    log, _ = send_as_primary(pair, frames())
    assert "connection lost" in log or "refused a connection" in log, log
    if reason:
        assert reason in log, f"{case}: expected '{reason}' in:\n{log}"
    assert target_md5(b) == before, f"{case}: beta's disk changed"
    # The secondary is still there, listening, and takes the next connection ("outage" once a
    # connection was complete: the state machine's name for a lost one).
    assert status(b)["cstate"] in ("connecting", "outage")


def test_well_formed_small_write_is_applied_and_acked(pair):
    """Positive control for the test above: the same path with a valid frame writes the disk and
    answers on the meta socket with one Durable ack for seq 1 (16 bytes: magic, cmd 0x05, version,
    length 0, seq, kind 2), after its own meta handshake (and maybe pings)."""
    b = pair.beta
    before = target_md5(b)
    _, reply = send_as_primary(pair, handshake(S) + small_write(1, TARGET, b"\x5a" * 4096))
    assert target_md5(b) != before
    assert b.ok(f"dd if=/dev/vdb bs=512 skip={TARGET} count=8 2>/dev/null | od -An -v -tx1 | tr -s ' ' '\\n' "
                "| sort -u").split() == ["5a"]
    frames = frames_of(bytes.fromhex(reply))
    assert frames[0][0] == HANDSHAKE and frames[0][1][28] == 1, reply  # beta's meta handshake
    acks = [f for cmd, f in frames if cmd == 0x05]
    assert len(acks) == 1, reply
    assert struct.unpack_from("<I", acks[0], 8)[0] == 1 and acks[0][12] == 2, reply


def test_well_formed_bitmap_and_resync_data_are_applied_and_acked(pair):
    """Positive control for the bitmap and resync cases: a clean bitmap (one run of every region) and one
    chunk of resync data at TARGET: beta writes it and answers ResyncAck(TARGET, 8) on the meta socket."""
    b = pair.beta
    before = target_md5(b)
    frames = handshake(S) + bitmap(0, REGIONS, varint(REGIONS)) + resync_reply(TARGET, 8, b"\xa5" * 4096)
    _, reply = send_as_primary(pair, frames)
    assert target_md5(b) != before
    acks = [f for cmd, f in frames_of(bytes.fromhex(reply)) if cmd == RESYNC_ACK]
    assert len(acks) == 1, reply
    assert struct.unpack_from("<IIQ", acks[0], 8) == (8, 0, TARGET), reply


def test_connections_from_other_addresses_are_refused(pair):
    a, b = pair.alpha, pair.beta
    b.ok("dmesg -c >/dev/null")
    # busybox nc has no -s: a host route with a preferred source makes alpha connect from .9.
    a.ok("ip addr add 10.99.0.9/24 dev eth0 && ip route add 10.99.0.2/32 dev eth0 src 10.99.0.9")
    try:
        blob = base64.b64encode(handshake(S) + small_write(1, TARGET, b"\x5a" * 4096)).decode()
        a.ok(f"echo {blob} | base64 -d > /tmp/frames")
        before = target_md5(b)
        a.run(f"(cat /tmp/frames; sleep 1) | timeout 5 nc 10.99.0.2 {PORT}", timeout=30)
        b.ok("for i in $(seq 1 50); do dmesg | grep -q 'refused a connection from 10.99.0.9' && exit 0; "
             "sleep 0.1; done; exit 1")
        assert target_md5(b) == before
    finally:
        a.run("ip route del 10.99.0.2/32; ip addr del 10.99.0.9/24 dev eth0")
