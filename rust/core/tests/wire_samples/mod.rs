// SPDX-License-Identifier: GPL-2.0
//! One valid sample frame of every wire message kind, shared by the wire tests.
#![allow(dead_code)] // each test crate uses a different subset

use rmirror_core::wire::{
    self, AckKind, BarrierFlags, Channel, Handshake, Message, Ping, Role, Uuids, WriteFlags,
    WriteMeta,
};

/// Device size the samples are valid for.
pub const DEV_SECTORS: u64 = 1 << 24;

/// Limits the samples are valid under.
pub fn limits() -> wire::Limits {
    wire::Limits::new(DEV_SECTORS)
}

/// A handshake with every field set.
pub fn handshake() -> Handshake {
    Handshake {
        proto_min: 1,
        proto_max: 1,
        features: wire::feature::ALL,
        node_id: 2,
        dev_sectors: DEV_SECTORS,
        region_size: 4096,
        uuids: Uuids {
            current: 0x1111,
            bitmap: 0x2222,
            history: [0x3333, 0x4444],
        },
        role: Role::Secondary,
        channel: Channel::Meta,
        replication: 2,
        flags: 0,
    }
}

/// Encodes `m` into a fresh vector.
pub fn encode(m: &Message<'_>) -> Vec<u8> {
    let mut v = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut v).expect("sample encodes");
    assert_eq!(n, v.len());
    v
}

/// Encoded sample frames, at least one per command.
pub fn frames() -> Vec<Vec<u8>> {
    let data: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    let meta = WriteMeta {
        sector: 4096,
        len: 1024,
        seq: 42,
        flags: WriteFlags::FUA | WriteFlags::SYNC,
        volume: 1,
    };
    let mut bitmap = vec![0u8; 64];
    bitmap[3] = 0xf0;
    bitmap[4] = 0x0f;
    bitmap[40] = 0x55;
    let mut rle = vec![0u8; 64];
    let chunk = wire::rle_encode(&bitmap, 0, 512, &mut rle).expect("rle");
    assert_eq!(chunk.bits, 512);
    rle.truncate(chunk.len);
    let msgs = [
        Message::Handshake(handshake()),
        Message::SmallWrite {
            meta,
            data: &data[..1024],
        },
        Message::SmallWrite {
            meta: WriteMeta {
                len: 65536,
                sector: DEV_SECTORS - 128,
                ..meta
            },
            data: &vec![0xa5; 65536],
        },
        Message::WriteNotify { seq: 43, len: 8192 },
        Message::WriteData {
            meta: WriteMeta {
                len: 8192,
                seq: 43,
                ..meta
            },
            data: &data,
        },
        Message::Ack {
            seq: 42,
            kind: AckKind::Received,
        },
        Message::Ack {
            seq: 43,
            kind: AckKind::Durable,
        },
        Message::Ack {
            seq: 44,
            kind: AckKind::Negative,
        },
        Message::Barrier {
            nr: 7,
            flags: BarrierFlags::FLUSH,
        },
        Message::BarrierAck { nr: 7, writes: 3 },
        Message::Ping(Ping {
            seq: 1,
            timestamp: 0x0123_4567_89ab_cdef,
        }),
        Message::Pong(Ping {
            seq: 1,
            timestamp: 0x0123_4567_89ab_cdef,
        }),
        Message::OutOfSync {
            sector: 100,
            sectors: 8,
        },
        Message::Bitmap {
            offset: 0,
            bits: 512,
            last: true,
            rle: &rle,
        },
        Message::ResyncRequest {
            sector: 200,
            sectors: 16,
        },
        Message::ResyncReply {
            sector: 200,
            sectors: 16,
            data: &data,
        },
        Message::ResyncNegative {
            sector: 200,
            sectors: 16,
        },
        Message::Disconnect {
            reason: wire::reason::SHUTDOWN,
        },
        Message::ResyncAck {
            sector: 200,
            sectors: 16,
        },
        Message::Uuids(handshake().uuids),
        Message::InSync { current: 0x1111 },
        Message::Detached { current: 0x2222 },
    ];
    msgs.iter().map(encode).collect()
}
