// SPDX-License-Identifier: GPL-2.0
//! Host tests of wire protocol v1: round trips, rejection of bad input, golden bytes,
//! bitmap RLE, and message/ack counts of the small-write and large-write paths.

#[path = "../fuzz/bodies/wire_decode.rs"]
mod body;
mod wire_samples;

use proptest::prelude::*;
use rmirror_core::wire::{
    self, decode, decode_next, fits_inline, frame_len, plan_write, AckKind, BarrierFlags, Channel,
    Command, DecodeError, EncodeError, Handshake, Limits, Message, Ping, RleApply, Role, Uuids,
    WriteFlags, WriteMeta, WritePlan, MAX_DEV_SECTORS, MAX_PAYLOAD, PREAMBLE_LEN, SMALL_WRITE_MAX,
};
use static_assertions::const_assert_eq;
use wire_samples::encode;

const_assert_eq!(wire::PREAMBLE_LEN, 16);
const_assert_eq!(Command::SmallWrite.header_len(), 16);
const_assert_eq!(wire::SMALL_WRITE_MAX, 64 * 1024);
const_assert_eq!(Command::Uuids.header_len(), 40);
const_assert_eq!(Command::InSync.header_len(), 16);
const_assert_eq!(Command::Detached.header_len(), 16);

/// Limits under which every generated message is valid.
const ALL: Limits = Limits {
    dev_sectors: MAX_DEV_SECTORS,
    max_payload: MAX_PAYLOAD,
};

fn pre(b: &[u8]) -> &[u8; PREAMBLE_LEN] {
    b[..PREAMBLE_LEN].try_into().unwrap()
}

// ------------------------------------------------------------------------------------
// Generated messages.
// ------------------------------------------------------------------------------------

/// A message without its borrowed payload (proptest needs owned values).
#[derive(Clone, Debug)]
enum Shape {
    Handshake(Handshake),
    Small(WriteMeta),
    Data(WriteMeta),
    Notify { seq: u32, len: u32 },
    Ack { seq: u32, kind: AckKind },
    Barrier { nr: u32, flags: BarrierFlags },
    BarrierAck { nr: u32, writes: u32 },
    Ping(Ping),
    Pong(Ping),
    OutOfSync { sector: u64, sectors: u32 },
    Bitmap { offset: u64, bits: u32, last: bool },
    ResyncRequest { sector: u64, sectors: u32 },
    ResyncReply { sector: u64, sectors: u32 },
    ResyncNegative { sector: u64, sectors: u32 },
    ResyncAck { sector: u64, sectors: u32 },
    Disconnect { reason: u32 },
    Uuids(Uuids),
    InSync { current: u64 },
    Detached { current: u64 },
}

#[derive(Clone, Debug)]
struct Case {
    shape: Shape,
    payload: Vec<u8>,
}

impl Case {
    fn message(&self) -> Message<'_> {
        let p = &self.payload[..];
        match self.shape.clone() {
            Shape::Handshake(h) => Message::Handshake(h),
            Shape::Small(meta) => Message::SmallWrite { meta, data: p },
            Shape::Data(meta) => Message::WriteData { meta, data: p },
            Shape::Notify { seq, len } => Message::WriteNotify { seq, len },
            Shape::Ack { seq, kind } => Message::Ack { seq, kind },
            Shape::Barrier { nr, flags } => Message::Barrier { nr, flags },
            Shape::BarrierAck { nr, writes } => Message::BarrierAck { nr, writes },
            Shape::Ping(x) => Message::Ping(x),
            Shape::Pong(x) => Message::Pong(x),
            Shape::OutOfSync { sector, sectors } => Message::OutOfSync { sector, sectors },
            Shape::Bitmap { offset, bits, last } => Message::Bitmap {
                offset,
                bits,
                last,
                rle: p,
            },
            Shape::ResyncRequest { sector, sectors } => Message::ResyncRequest { sector, sectors },
            Shape::ResyncReply { sector, sectors } => Message::ResyncReply {
                sector,
                sectors,
                data: p,
            },
            Shape::ResyncNegative { sector, sectors } => {
                Message::ResyncNegative { sector, sectors }
            }
            Shape::ResyncAck { sector, sectors } => Message::ResyncAck { sector, sectors },
            Shape::Disconnect { reason } => Message::Disconnect { reason },
            Shape::Uuids(u) => Message::Uuids(u),
            Shape::InSync { current } => Message::InSync { current },
            Shape::Detached { current } => Message::Detached { current },
        }
    }
}

fn arb_flags() -> impl Strategy<Value = WriteFlags> {
    (0u8..8).prop_map(|b| WriteFlags::from_bits(b).unwrap())
}

/// A sector range of `1..=max` sectors inside the largest device.
fn arb_range(max: u32) -> impl Strategy<Value = (u64, u32)> {
    (1..=max).prop_flat_map(|n| {
        let last = MAX_DEV_SECTORS - u64::from(n);
        (prop_oneof![Just(0), Just(last), 0..=last], Just(n))
    })
}

fn arb_data(len: usize) -> impl Strategy<Value = Vec<u8>> {
    any::<u8>().prop_map(move |seed| {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    })
}

fn arb_write(max_sectors: u32) -> impl Strategy<Value = (WriteMeta, Vec<u8>)> {
    (
        arb_range(max_sectors),
        any::<u32>(),
        arb_flags(),
        any::<u8>(),
    )
        .prop_flat_map(|((sector, n), seq, flags, volume)| {
            let meta = WriteMeta {
                sector,
                len: n << 9,
                seq,
                flags,
                volume,
            };
            (Just(meta), arb_data((n as usize) << 9))
        })
}

fn arb_handshake() -> impl Strategy<Value = Handshake> {
    (
        (1u8..=5).prop_flat_map(|lo| (Just(lo), lo..=255)),
        any::<u32>(),
        any::<u8>(),
        1..=MAX_DEV_SECTORS,
        rmirror_core::bitmap::MIN_REGION_SHIFT..=rmirror_core::bitmap::MAX_REGION_SHIFT,
        any::<[u64; 4]>(),
        prop_oneof![Just(Role::Primary), Just(Role::Secondary)],
        prop_oneof![Just(Channel::Data), Just(Channel::Meta)],
        0u8..=3,
    )
        .prop_map(
            |(
                (proto_min, proto_max),
                features,
                node_id,
                dev_sectors,
                shift,
                u,
                role,
                channel,
                replication,
            )| {
                Handshake {
                    proto_min,
                    proto_max,
                    features,
                    node_id,
                    dev_sectors,
                    region_size: 1 << shift,
                    uuids: Uuids {
                        current: u[0],
                        bitmap: u[1],
                        history: [u[2], u[3]],
                    },
                    role,
                    channel,
                    replication,
                    flags: 0,
                }
            },
        )
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut v = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            v[i / 8] |= 1 << (i % 8);
        }
    }
    v
}

/// Random bit vectors with long runs (closer to real bitmaps than coin flips).
fn arb_bits(max: usize) -> impl Strategy<Value = Vec<bool>> {
    prop::collection::vec((any::<bool>(), 1usize..40), 1..max).prop_map(|runs| {
        runs.into_iter()
            .flat_map(|(b, n)| std::iter::repeat_n(b, n))
            .collect()
    })
}

fn arb_bitmap_case() -> impl Strategy<Value = Case> {
    (arb_bits(100), any::<bool>(), any::<u64>()).prop_map(|(bits, last, off)| {
        let bm = pack_bits(&bits);
        let mut rle = vec![0u8; bits.len() * 2 + wire::RLE_MIN_OUT];
        let c = wire::rle_encode(&bm, 0, bits.len() as u32, &mut rle).unwrap();
        assert_eq!(c.bits as usize, bits.len());
        rle.truncate(c.len);
        let offset = off % (MAX_DEV_SECTORS - bits.len() as u64);
        Case {
            shape: Shape::Bitmap {
                offset,
                bits: c.bits,
                last,
            },
            payload: rle,
        }
    })
}

fn arb_case() -> impl Strategy<Value = Case> {
    let nop = |shape| Case {
        shape,
        payload: Vec::new(),
    };
    prop_oneof![
        arb_handshake().prop_map(move |h| nop(Shape::Handshake(h))),
        arb_write(128).prop_map(|(m, payload)| Case {
            shape: Shape::Small(m),
            payload
        }),
        arb_write(256).prop_map(|(m, payload)| Case {
            shape: Shape::Data(m),
            payload
        }),
        (any::<u32>(), 1u32..=2048)
            .prop_map(move |(seq, n)| nop(Shape::Notify { seq, len: n << 9 })),
        (
            any::<u32>(),
            prop_oneof![
                Just(AckKind::Received),
                Just(AckKind::Durable),
                Just(AckKind::Negative)
            ]
        )
            .prop_map(move |(seq, kind)| nop(Shape::Ack { seq, kind })),
        (any::<u32>(), any::<bool>()).prop_map(move |(nr, f)| nop(Shape::Barrier {
            nr,
            flags: if f {
                BarrierFlags::FLUSH
            } else {
                BarrierFlags::empty()
            }
        })),
        (any::<u32>(), any::<u32>())
            .prop_map(move |(nr, writes)| nop(Shape::BarrierAck { nr, writes })),
        (any::<u32>(), any::<u64>())
            .prop_map(move |(seq, timestamp)| nop(Shape::Ping(Ping { seq, timestamp }))),
        (any::<u32>(), any::<u64>())
            .prop_map(move |(seq, timestamp)| nop(Shape::Pong(Ping { seq, timestamp }))),
        arb_range(u32::MAX)
            .prop_map(move |(sector, sectors)| nop(Shape::OutOfSync { sector, sectors })),
        arb_bitmap_case(),
        arb_range(2048)
            .prop_map(move |(sector, sectors)| nop(Shape::ResyncRequest { sector, sectors })),
        arb_range(256).prop_flat_map(|(sector, sectors)| {
            arb_data((sectors as usize) << 9).prop_map(move |payload| Case {
                shape: Shape::ResyncReply { sector, sectors },
                payload,
            })
        }),
        arb_range(u32::MAX)
            .prop_map(move |(sector, sectors)| nop(Shape::ResyncNegative { sector, sectors })),
        arb_range(u32::MAX).prop_map(move |(sector, sectors)| nop(Shape::ResyncAck { sector, sectors })),
        any::<u32>().prop_map(move |reason| nop(Shape::Disconnect { reason })),
        any::<[u64; 4]>().prop_map(move |u| nop(Shape::Uuids(Uuids {
            current: u[0],
            bitmap: u[1],
            history: [u[2], u[3]],
        }))),
        any::<u64>().prop_map(move |current| nop(Shape::InSync { current })),
        any::<u64>().prop_map(move |current| nop(Shape::Detached { current })),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every valid message encodes, and decodes back to itself.
    #[test]
    fn round_trip(case in arb_case()) {
        let m = case.message();
        prop_assert_eq!(m.validate(&ALL), Ok(()));
        let v = encode(&m);
        prop_assert_eq!(v.len(), m.header_len() + m.payload().len());
        prop_assert_eq!(frame_len(pre(&v), &ALL), Ok(v.len()));
        prop_assert_eq!(decode(&v, &ALL), Ok(m));
        prop_assert_eq!(decode_next(&v, &ALL), Ok(Some((m, v.len()))));
        let (h, p) = v.split_at(m.header_len());
        prop_assert_eq!(wire::decode_parts(h, p, &ALL), Ok(m));
        prop_assert_eq!(p, m.payload());
        let mut hdr = [0u8; wire::MAX_HEADER_LEN];
        prop_assert_eq!(m.encode_header(&mut hdr), Ok(m.header_len()));
        prop_assert_eq!(&hdr[..m.header_len()], h);
        body::check_frame(&v, &ALL);
    }

    /// Every proper prefix of a valid frame is rejected as truncated (and a stream decoder
    /// asks for more); one byte more is rejected as trailing.
    #[test]
    fn truncations_rejected(case in arb_case()) {
        let m = case.message();
        let v = encode(&m);
        for cut in 0..v.len() {
            prop_assert_eq!(decode(&v[..cut], &ALL), Err(DecodeError::Truncated), "cut {}", cut);
            prop_assert_eq!(decode_next(&v[..cut], &ALL), Ok(None));
        }
        let mut longer = v.clone();
        longer.push(0);
        prop_assert_eq!(decode(&longer, &ALL), Err(DecodeError::Trailing));
        prop_assert_eq!(decode_next(&longer, &ALL), Ok(Some((m, v.len()))));
    }

    /// Random bytes never panic any decoder.
    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..400)) {
        body::run(&data);
    }

    /// Random bytes behind a valid magic/command/version never panic either.
    #[test]
    fn random_bodies_never_panic(
        sel in any::<u8>(),
        cmd in 0u8..=0x14,
        rest in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut data = vec![sel, 0x52, 0x4d, cmd, wire::VERSION];
        data.extend_from_slice(&rest);
        body::run(&data);
    }

    /// Mutating any header byte of a valid frame never panics, and whatever still decodes
    /// re-encodes to the same bytes (checked by the body).
    #[test]
    fn mutations_never_panic(case in arb_case(), pos in 0usize..64, mask in 1u8..=255, sel in 0u8..4) {
        let mut v = vec![sel];
        v.extend_from_slice(&encode(&case.message()));
        let pos = 1 + pos % (v.len() - 1);
        v[pos] ^= mask;
        body::run(&v);
    }

    /// Bitmap RLE: chunked encoding with small output buffers reproduces the bitmap.
    #[test]
    fn rle_round_trip(bits in arb_bits(300), start in 0usize..9, out_len in wire::RLE_MIN_OUT..64) {
        let mut padded = vec![false; start];
        padded.extend_from_slice(&bits);
        let bm = pack_bits(&padded);
        let n = bits.len() as u64;
        let mut copy = vec![0xffu8; bm.len()];
        let mut at = start as u64;
        let mut chunks = 0;
        while at < start as u64 + n {
            let mut out = vec![0u8; out_len];
            let left = (start as u64 + n - at) as u32;
            let c = wire::rle_encode(&bm, at, left, &mut out).unwrap();
            prop_assert!(c.bits >= 1 && c.bits <= left && c.len <= out_len);
            let rle = &out[..c.len];
            let dirty = wire::rle_check(rle, c.bits).unwrap();
            prop_assert_eq!(wire::rle_decode(rle, c.bits, &mut copy, at, RleApply::Copy), Ok(dirty));
            body::check_rle(rle, c.bits);
            at += u64::from(c.bits);
            chunks += 1;
        }
        prop_assert!(chunks >= 1);
        for (i, &b) in bits.iter().enumerate() {
            let j = start + i;
            prop_assert_eq!(copy[j / 8] & (1 << (j % 8)) != 0, b, "bit {}", i);
        }
        // Bits outside the range were left alone.
        for j in 0..start {
            prop_assert!(copy[j / 8] & (1 << (j % 8)) != 0);
        }
    }

    /// Merge mode ORs dirty runs in and leaves clean runs alone.
    #[test]
    fn rle_merge_is_or(a in arb_bits(100), b_seed in any::<u64>()) {
        let n = a.len();
        let b: Vec<bool> = (0..n).map(|i| (b_seed >> (i % 64)) & 1 == 1).collect();
        let (ba, mut bb) = (pack_bits(&a), pack_bits(&b));
        let mut rle = vec![0u8; 2 * n + wire::RLE_MIN_OUT];
        let c = wire::rle_encode(&ba, 0, n as u32, &mut rle).unwrap();
        wire::rle_decode(&rle[..c.len], c.bits, &mut bb, 0, RleApply::Merge).unwrap();
        let want = pack_bits(&a.iter().zip(&b).map(|(x, y)| *x || *y).collect::<Vec<_>>());
        prop_assert_eq!(bb, want);
    }

    /// rle_check/rle_decode never panic on garbage and never write on error.
    #[test]
    fn rle_garbage(rle in prop::collection::vec(any::<u8>(), 0..40), bits in 0u32..2000) {
        let mut bm = vec![0x5au8; 260];
        match wire::rle_decode(&rle, bits, &mut bm, 7, RleApply::Copy) {
            Ok(_) => prop_assert!(wire::rle_check(&rle, bits).is_ok()),
            Err(_) => prop_assert!(bm.iter().all(|&x| x == 0x5a)),
        }
        body::check_rle(&rle, bits);
    }
}

// ------------------------------------------------------------------------------------
// Fixed cases.
// ------------------------------------------------------------------------------------

#[test]
fn samples_round_trip_and_every_truncation_rejected() {
    let lim = wire_samples::limits();
    for v in wire_samples::frames() {
        let m = decode(&v, &lim).unwrap();
        assert_eq!(encode(&m), v);
        for cut in 0..v.len() {
            assert_eq!(decode(&v[..cut], &lim), Err(DecodeError::Truncated));
        }
    }
}

#[test]
fn every_command_has_a_sample() {
    let cmds: Vec<u8> = wire_samples::frames().iter().map(|v| v[2]).collect();
    for c in 0..=255u8 {
        if Command::from_u8(c).is_some() {
            assert!(cmds.contains(&c), "no sample for command {c:#x}");
        }
    }
}

/// The bytes of v1 are frozen: these must never change without a version bump.
#[test]
fn golden_bytes() {
    let data = [0xabu8; 512];
    let sw = Message::SmallWrite {
        meta: WriteMeta {
            sector: 0x12_3456_789a,
            len: 512,
            seq: 0x0102_0304,
            flags: WriteFlags::FUA | WriteFlags::PREFLUSH,
            volume: 0x7e,
        },
        data: &data,
    };
    let v = encode(&sw);
    // word = sector | (sectors-1)<<46 | flags<<53 | volume<<56
    let word: u64 = 0x12_3456_789a | (3 << 53) | (0x7e << 56);
    let mut want = vec![0x52, 0x4d, 0x02, 0x01, 0x04, 0x03, 0x02, 0x01];
    want.extend_from_slice(&word.to_le_bytes());
    assert_eq!(&v[..16], &want[..]);
    assert_eq!(&v[16..], &data[..]);

    let ack = encode(&Message::Ack {
        seq: 0xaabb_ccdd,
        kind: AckKind::Durable,
    });
    assert_eq!(
        ack,
        [0x52, 0x4d, 0x05, 0x01, 0, 0, 0, 0, 0xdd, 0xcc, 0xbb, 0xaa, 0x02, 0, 0, 0]
    );

    let wd = encode(&Message::WriteData {
        meta: WriteMeta {
            sector: 9,
            len: 512,
            seq: 5,
            flags: WriteFlags::SYNC,
            volume: 1,
        },
        data: &data,
    });
    assert_eq!(
        &wd[..32],
        &[
            0x52, 0x4d, 0x04, 0x01, 0x10, 0x02, 0, 0, // preamble: length 16 + 512
            5, 0, 0, 0, 0x04, 0x01, 0, 0, // seq, flags, volume, reserved
            9, 0, 0, 0, 0, 0, 0, 0, // sector
            0, 2, 0, 0, 0, 0, 0, 0, // len, reserved
        ]
    );

    let hs = encode(&Message::Handshake(wire_samples::handshake()));
    assert_eq!(hs.len(), 64);
    assert_eq!(
        &hs[..16],
        &[0x52, 0x4d, 0x01, 0x01, 48, 0, 0, 0, 1, 1, 2, 2, 7, 0, 0, 0] // features SMALL_WRITE | PEER_BITMAP | DETACH
    );
    assert_eq!(&hs[16..24], &wire_samples::DEV_SECTORS.to_le_bytes());
    assert_eq!(&hs[24..32], &[0, 0x10, 0, 0, 1, 2, 0, 0]); // region size, channel meta, protocol B
    assert_eq!(&hs[32..40], &0x1111u64.to_le_bytes());
    assert_eq!(&hs[56..64], &0x4444u64.to_le_bytes());

    let ping = encode(&Message::Ping(Ping {
        seq: 1,
        timestamp: 2,
    }));
    assert_eq!(
        ping,
        [0x52, 0x4d, 8, 1, 8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]
    );

    let uuids = encode(&Message::Uuids(wire_samples::handshake().uuids));
    assert_eq!(uuids.len(), 40);
    assert_eq!(&uuids[..8], &[0x52, 0x4d, 0x11, 0x01, 24, 0, 0, 0]); // length 32 - 8
    assert_eq!(&uuids[8..16], &0x1111u64.to_le_bytes()); // current
    assert_eq!(&uuids[16..24], &0x2222u64.to_le_bytes()); // bitmap
    assert_eq!(&uuids[24..32], &0x3333u64.to_le_bytes()); // history0
    assert_eq!(&uuids[32..40], &0x4444u64.to_le_bytes()); // history1

    let in_sync = encode(&Message::InSync {
        current: 0x0102_0304_0506_0708,
    });
    assert_eq!(
        in_sync,
        [0x52, 0x4d, 0x12, 0x01, 0, 0, 0, 0, 8, 7, 6, 5, 4, 3, 2, 1]
    );
}

/// Uuids and InSync carry generation UUIDs: fixed size, no payload, every value valid
/// whatever the device limits, any other length refused from the preamble.
#[test]
fn uuids_and_in_sync() {
    assert_eq!(Command::from_u8(0x11), Some(Command::Uuids));
    assert_eq!(Command::from_u8(0x12), Some(Command::InSync));
    assert_eq!(Command::from_u8(0x13), Some(Command::Detached));
    assert_eq!(Command::from_u8(0x14), None);
    assert_eq!(Command::Detached.as_str(), "detached");
    assert!(!Command::Detached.has_payload());
    assert_eq!(
        (Command::Uuids.as_str(), Command::InSync.as_str()),
        ("uuids", "in-sync")
    );
    assert!(!Command::Uuids.has_payload() && !Command::InSync.has_payload());
    assert_eq!(
        (Command::Uuids.version(), Command::InSync.version()),
        (wire::VERSION, wire::VERSION)
    );
    let tiny = Limits {
        dev_sectors: 1,
        max_payload: 0,
    };
    for v in [0u64, 1, wire_samples::DEV_SECTORS, u64::MAX] {
        let u = Message::Uuids(Uuids {
            current: v,
            bitmap: !v,
            history: [v, u64::MAX],
        });
        let s = Message::InSync { current: v };
        let d = Message::Detached { current: v };
        for m in [u, s, d] {
            assert_eq!(m.command().header_len(), m.header_len());
            assert!(m.payload().is_empty());
            assert_eq!(decode(&encode(&m), &tiny), Ok(m), "{m:?}");
        }
    }
    let lim = wire_samples::limits();
    let u = encode(&Message::Uuids(Uuids::default()));
    let s = encode(&Message::InSync { current: 7 });
    for (frame, len) in [(&u, 24u32), (&s, 0)] {
        for bad in [len + 8, len.wrapping_sub(8), len + 1] {
            let v = patched(frame, 4, &bad.to_le_bytes());
            assert_eq!(
                frame_len(pre(&v), &lim),
                Err(DecodeError::BadLength),
                "{bad}"
            );
        }
        assert_eq!(
            decode(&patched(frame, 3, &[2]), &lim),
            Err(DecodeError::BadVersion)
        );
    }
}

/// Overwrites bytes of `v` at `at` with `b`.
fn patched(v: &[u8], at: usize, b: &[u8]) -> Vec<u8> {
    let mut v = v.to_vec();
    v[at..at + b.len()].copy_from_slice(b);
    v
}

#[test]
fn preamble_errors() {
    let lim = wire_samples::limits();
    let ack = encode(&Message::Ack {
        seq: 1,
        kind: AckKind::Received,
    });
    assert_eq!(
        decode(&patched(&ack, 0, &[0x52, 0x4e]), &lim),
        Err(DecodeError::BadMagic)
    );
    assert_eq!(
        decode(&patched(&ack, 2, &[0]), &lim),
        Err(DecodeError::UnknownCommand(0))
    );
    assert_eq!(
        decode(&patched(&ack, 2, &[0x99]), &lim),
        Err(DecodeError::UnknownCommand(0x99))
    );
    assert_eq!(
        decode(&patched(&ack, 3, &[2]), &lim),
        Err(DecodeError::BadVersion)
    );
    assert_eq!(
        decode(&patched(&ack, 3, &[0]), &lim),
        Err(DecodeError::BadVersion)
    );
    // An ack with a length claims a payload it cannot have.
    let long = patched(&ack, 4, &[4, 0, 0, 0]);
    assert_eq!(frame_len(pre(&long), &lim), Err(DecodeError::BadLength));
    // A hostile length is refused from the preamble alone, before anything is buffered.
    let wd = &wire_samples::frames()[4];
    assert_eq!(wd[2], Command::WriteData as u8);
    let huge = patched(wd, 4, &u32::MAX.to_le_bytes());
    assert_eq!(frame_len(pre(&huge), &lim), Err(DecodeError::Oversized));
    assert_eq!(decode_next(&huge[..16], &lim), Err(DecodeError::Oversized));
    let short = patched(wd, 4, &8u32.to_le_bytes());
    assert_eq!(frame_len(pre(&short), &lim), Err(DecodeError::BadLength));
    let small_lim = Limits {
        dev_sectors: 1 << 24,
        max_payload: 4096,
    };
    assert_eq!(frame_len(pre(wd), &small_lim), Err(DecodeError::Oversized));
    // A 64 KiB small write is over a 4 KiB limit; the 1 KiB one is fine.
    let frames = wire_samples::frames();
    assert_eq!(
        frame_len(pre(&frames[2]), &small_lim),
        Err(DecodeError::Oversized)
    );
    assert_eq!(frame_len(pre(&frames[1]), &small_lim), Ok(16 + 1024));
    // Handshakes may grow (later versions append fields), but not without bound.
    let hs = &frames[0];
    let mut grown = patched(hs, 4, &64u32.to_le_bytes());
    grown.extend_from_slice(&[0xee; 16]);
    assert_eq!(
        decode(&grown, &lim),
        Ok(Message::Handshake(wire_samples::handshake()))
    );
    let big = patched(hs, 4, &1000u32.to_le_bytes());
    assert_eq!(frame_len(pre(&big), &lim), Err(DecodeError::Oversized));
    let cut = patched(hs, 4, &40u32.to_le_bytes());
    assert_eq!(frame_len(pre(&cut), &lim), Err(DecodeError::BadLength));
}

#[test]
fn field_errors() {
    let lim = wire_samples::limits();
    let f = wire_samples::frames();
    let bad = |v: Vec<u8>| decode(&v, &lim).map(|_| ());
    // Reserved bytes must be zero.
    assert_eq!(bad(patched(&f[5], 13, &[1])), Err(DecodeError::BadField)); // ack
    assert_eq!(bad(patched(&f[4], 14, &[1])), Err(DecodeError::BadField)); // write data
    assert_eq!(bad(patched(&f[4], 28, &[1])), Err(DecodeError::BadField));
    assert_eq!(bad(patched(&f[0], 31, &[1])), Err(DecodeError::BadField)); // handshake
    assert_eq!(bad(patched(&f[0], 30, &[2])), Err(DecodeError::BadField)); // unknown handshake flag
    assert!(bad(patched(&f[0], 30, &[1])).is_ok()); // DISCARD_MY_DATA
    assert_eq!(bad(patched(&f[0], 29, &[4])), Err(DecodeError::BadField)); // replication protocol
    assert!(bad(patched(&f[0], 29, &[0])).is_ok()); // not stated: C
    assert_eq!(bad(patched(&f[0], 28, &[2])), Err(DecodeError::BadField)); // unknown channel
    assert_eq!(bad(patched(&f[10], 12, &[1])), Err(DecodeError::BadField)); // ping
    assert_eq!(bad(patched(&f[17], 15, &[1])), Err(DecodeError::BadField)); // disconnect
                                                                            // Unknown flag bits and enum values.
    assert_eq!(bad(patched(&f[4], 12, &[0x08])), Err(DecodeError::BadField)); // write flags
    assert_eq!(bad(patched(&f[8], 12, &[0x02])), Err(DecodeError::BadField)); // barrier flags
    assert_eq!(
        bad(patched(&f[13], 12, &[0x02])),
        Err(DecodeError::BadField)
    ); // bitmap flags
    assert_eq!(bad(patched(&f[5], 12, &[0])), Err(DecodeError::BadField)); // ack kind
    assert_eq!(bad(patched(&f[5], 12, &[4])), Err(DecodeError::BadField));
    assert_eq!(bad(patched(&f[0], 11, &[0])), Err(DecodeError::BadField)); // role
    assert_eq!(bad(patched(&f[0], 11, &[3])), Err(DecodeError::BadField));
    // Small-write flag bits beyond FUA|PREFLUSH|SYNC cannot exist (3-bit field), so the
    // unknown-flag case only arises in WriteData; the volume is a whole byte.
    // Handshake sanity.
    assert_eq!(bad(patched(&f[0], 8, &[0])), Err(DecodeError::BadField)); // proto_min 0
    assert_eq!(bad(patched(&f[0], 8, &[2, 1])), Err(DecodeError::BadField)); // min > max
    assert_eq!(bad(patched(&f[0], 16, &[0; 8])), Err(DecodeError::BadField)); // no sectors
    let too_big = (MAX_DEV_SECTORS + 1).to_le_bytes();
    assert_eq!(
        bad(patched(&f[0], 16, &too_big)),
        Err(DecodeError::OutOfRange)
    );
    assert_eq!(
        bad(patched(&f[0], 24, &[0, 0x18, 0, 0])),
        Err(DecodeError::BadField)
    ); // 6 KiB
    assert_eq!(
        bad(patched(&f[0], 24, &[0, 1, 0, 0])),
        Err(DecodeError::BadField)
    ); // 256 B
       // Zero / unaligned lengths.
    assert_eq!(
        bad(patched(&f[3], 12, &[0, 0, 0, 0])),
        Err(DecodeError::BadField)
    ); // notify 0
    assert_eq!(
        bad(patched(&f[3], 12, &[1, 2, 0, 0])),
        Err(DecodeError::BadField)
    ); // 513
    assert_eq!(
        bad(patched(&f[4], 24, &[0, 0x1e, 0, 0])),
        Err(DecodeError::BadLength)
    ); // len != data
    assert_eq!(
        bad(patched(&f[12], 8, &[0, 0, 0, 0])),
        Err(DecodeError::BadField)
    ); // oos 0 sectors
    assert_eq!(
        bad(patched(&f[14], 8, &[0, 0, 0, 0])),
        Err(DecodeError::BadField)
    );
    assert_eq!(
        bad(patched(&f[15], 8, &[15, 0, 0, 0])),
        Err(DecodeError::BadLength)
    ); // reply size
       // A resync request whose reply could not be sent.
    assert_eq!(
        bad(patched(&f[14], 8, &[0, 0x10, 0, 0])),
        Err(DecodeError::Oversized)
    );
    // Bitmap: RLE must cover exactly `bits`.
    assert_eq!(
        bad(patched(&f[13], 8, &[0xff, 1, 0, 0])),
        Err(DecodeError::BadField)
    );
    assert_eq!(
        bad(patched(&f[13], 8, &[0, 0, 0, 0])),
        Err(DecodeError::BadField)
    );
}

#[test]
fn out_of_range_rejected() {
    let dev = 1000u64;
    let lim = Limits::new(dev);
    let data = vec![0u8; 4096];
    let w = |sector| WriteMeta {
        sector,
        len: 4096,
        seq: 1,
        flags: WriteFlags::empty(),
        volume: 0,
    };
    let mut rle = [0u8; 4];
    let c = wire::rle_encode(&[0x0f], 0, 8, &mut rle).unwrap();
    let cases = |s: u64| {
        [
            Message::SmallWrite {
                meta: w(s),
                data: &data,
            },
            Message::WriteData {
                meta: w(s),
                data: &data,
            },
            Message::OutOfSync {
                sector: s,
                sectors: 8,
            },
            Message::ResyncRequest {
                sector: s,
                sectors: 8,
            },
            Message::ResyncReply {
                sector: s,
                sectors: 8,
                data: &data,
            },
            Message::ResyncNegative {
                sector: s,
                sectors: 8,
            },
            Message::ResyncAck {
                sector: s,
                sectors: 8,
            },
            Message::Bitmap {
                offset: s,
                bits: c.bits,
                last: false,
                rle: &rle[..c.len],
            },
        ]
    };
    for m in cases(dev - 8) {
        assert_eq!(decode(&encode(&m), &lim), Ok(m), "{m:?}");
    }
    for s in [dev - 7, dev, 1 << 40, MAX_DEV_SECTORS - 8] {
        for m in cases(s) {
            assert_eq!(
                decode(&encode(&m), &lim),
                Err(DecodeError::OutOfRange),
                "{m:?}"
            );
        }
    }
    // Sector fields near u64::MAX cannot wrap around (16..24 is the sector in all these).
    let huge = Limits::new(u64::MAX);
    for m in cases(0).into_iter().skip(1) {
        let v = patched(&encode(&m), 16, &(u64::MAX - 3).to_le_bytes());
        assert_eq!(decode(&v, &huge), Err(DecodeError::OutOfRange), "{m:?}");
    }
    // OutOfSync with a u32::MAX sector count.
    let v = encode(&Message::OutOfSync {
        sector: u64::MAX - 5,
        sectors: 1,
    });
    assert_eq!(
        decode(&patched(&v, 8, &u32::MAX.to_le_bytes()), &huge),
        Err(DecodeError::OutOfRange)
    );
}

#[test]
fn encode_refuses_invalid_and_short_buffers() {
    let data = [0u8; 1024];
    let meta = WriteMeta {
        sector: 0,
        len: 1024,
        seq: 1,
        flags: WriteFlags::empty(),
        volume: 0,
    };
    let mut buf = [0u8; 4096];
    let inv = |e| Err(EncodeError::Invalid(e));
    let m = Message::SmallWrite {
        meta,
        data: &data[..512],
    };
    assert_eq!(m.encode(&mut buf), inv(DecodeError::BadLength));
    let m = Message::SmallWrite {
        meta: WriteMeta { len: 1000, ..meta },
        data: &data[..1000],
    };
    assert_eq!(m.encode(&mut buf), inv(DecodeError::BadField));
    let big = vec![0u8; 128 * 1024];
    let m = Message::SmallWrite {
        meta: WriteMeta {
            len: 128 * 1024,
            ..meta
        },
        data: &big,
    };
    assert_eq!(m.encode(&mut buf), inv(DecodeError::Oversized));
    let m = Message::SmallWrite {
        meta: WriteMeta {
            sector: MAX_DEV_SECTORS,
            ..meta
        },
        data: &data,
    };
    assert_eq!(m.encode(&mut buf), inv(DecodeError::OutOfRange));
    let huge = vec![0u8; MAX_PAYLOAD as usize + 512];
    let m = Message::WriteData {
        meta: WriteMeta {
            len: huge.len() as u32,
            ..meta
        },
        data: &huge,
    };
    assert_eq!(m.encode_header(&mut buf), inv(DecodeError::Oversized));
    let m = Message::Bitmap {
        offset: 0,
        bits: 3,
        last: true,
        rle: &[1, 1],
    };
    assert_eq!(m.encode(&mut buf), inv(DecodeError::BadField));
    let m = Message::WriteData { meta, data: &data };
    assert_eq!(m.encode(&mut buf[..1000]), Err(EncodeError::BufferTooSmall));
    assert_eq!(
        m.encode_header(&mut buf[..31]),
        Err(EncodeError::BufferTooSmall)
    );
    assert_eq!(m.encode_header(&mut buf[..32]), Ok(32));
    // The largest write goes as WriteData with a 1 MiB payload.
    let max = vec![1u8; MAX_PAYLOAD as usize];
    let m = Message::WriteData {
        meta: WriteMeta {
            len: MAX_PAYLOAD,
            ..meta
        },
        data: &max,
    };
    assert_eq!(decode(&encode(&m), &Limits::new(1 << 20)), Ok(m));
}

#[test]
fn small_write_decision() {
    assert!(fits_inline(512, wire::INLINE_MAX_DEFAULT));
    assert!(fits_inline(32 * 1024, wire::INLINE_MAX_DEFAULT));
    assert!(!fits_inline(32 * 1024 + 512, wire::INLINE_MAX_DEFAULT));
    assert!(fits_inline(SMALL_WRITE_MAX, u32::MAX));
    assert!(!fits_inline(SMALL_WRITE_MAX + 512, u32::MAX));
    assert!(!fits_inline(0, u32::MAX));
    assert!(!fits_inline(1000, u32::MAX));
    assert!(!fits_inline(4096, 0), "inline_max 0 disables small writes");
}

#[test]
fn flags_and_enums() {
    assert_eq!(WriteFlags::from_bits(7).map(WriteFlags::bits), Some(7));
    assert_eq!(WriteFlags::from_bits(8), None);
    assert_eq!(BarrierFlags::from_bits(2), None);
    let f = WriteFlags::FUA | WriteFlags::SYNC;
    assert!(f.contains(WriteFlags::FUA) && !f.contains(WriteFlags::PREFLUSH));
    assert!(WriteFlags::empty().is_empty());
    for k in [AckKind::Received, AckKind::Durable, AckKind::Negative] {
        assert_eq!(AckKind::from_wire(k.to_wire()), Some(k));
    }
    for c in 0..=255u8 {
        if let Some(cmd) = Command::from_u8(c) {
            assert_eq!(cmd as u8, c);
            assert!(!cmd.as_str().is_empty());
        }
    }
    for e in [
        DecodeError::BadMagic,
        DecodeError::UnknownCommand(9),
        DecodeError::BadVersion,
        DecodeError::Truncated,
        DecodeError::Trailing,
        DecodeError::BadLength,
        DecodeError::Oversized,
        DecodeError::OutOfRange,
        DecodeError::BadField,
    ] {
        assert!(!e.as_str().is_empty());
        assert!(!EncodeError::Invalid(e).to_string().is_empty());
    }
}

#[test]
fn negotiation() {
    let a = wire_samples::handshake();
    let b = Handshake {
        proto_min: 1,
        proto_max: 3,
        features: 0b11,
        ..a
    };
    let n = a.negotiate(&b).unwrap();
    assert_eq!((n.version, n.features), (1, wire::feature::ALL & 0b11));
    let c = Handshake {
        proto_min: 2,
        proto_max: 3,
        ..a
    };
    assert_eq!(a.negotiate(&c), None);
    assert_eq!(b.negotiate(&c).map(|n| n.version), Some(3));
}

// ------------------------------------------------------------------------------------
// Small-write vs large-write: messages and acknowledgements per write.
// ------------------------------------------------------------------------------------

/// A minimal secondary: decodes the byte stream, applies writes to a RAM disk and answers
/// every write with one Durable ack.
struct Peer {
    lim: Limits,
    disk: Vec<u8>,
    /// A WriteNotify waiting for its WriteData: (seq, len).
    announced: Option<(u32, u32)>,
    /// Bytes received, not yet decoded.
    inbox: Vec<u8>,
    /// Messages received.
    received: usize,
    /// Encoded acks to send back.
    outbox: Vec<u8>,
}

impl Peer {
    fn new(sectors: u64) -> Self {
        Peer {
            lim: Limits::new(sectors),
            disk: vec![0; (sectors as usize) << 9],
            announced: None,
            inbox: Vec::new(),
            received: 0,
            outbox: Vec::new(),
        }
    }

    fn apply(&mut self, meta: &WriteMeta, data: &[u8]) {
        let at = (meta.sector as usize) << 9;
        self.disk[at..at + data.len()].copy_from_slice(data);
        let ack = Message::Ack {
            seq: meta.seq,
            kind: AckKind::Durable,
        };
        self.outbox.extend_from_slice(&encode(&ack));
    }

    /// Receives bytes (in arbitrary pieces) and processes every complete frame.
    fn receive(&mut self, bytes: &[u8]) {
        self.inbox.extend_from_slice(bytes);
        let inbox = std::mem::take(&mut self.inbox);
        let mut at = 0;
        while let Some((m, used)) = decode_next(&inbox[at..], &self.lim).expect("valid stream") {
            at += used;
            self.received += 1;
            match m {
                Message::SmallWrite { meta, data } => {
                    assert_eq!(self.announced, None, "small write inside a large one");
                    self.apply(&meta, data);
                }
                Message::WriteNotify { seq, len } => {
                    assert_eq!(self.announced, None);
                    self.announced = Some((seq, len)); // a real peer reserves `len` bytes here
                }
                Message::WriteData { meta, data } => {
                    assert_eq!(self.announced.take(), Some((meta.seq, meta.len)));
                    self.apply(&meta, data);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        self.inbox = inbox[at..].to_vec();
    }
}

/// The primary's side of one write: the frames it sends, header and payload written
/// separately (as the driver does, without copying the data).
fn send_write(meta: WriteMeta, data: &[u8], inline_max: u32) -> Vec<Vec<u8>> {
    let msgs: Vec<Message<'_>> = match plan_write(meta, data, inline_max) {
        WritePlan::Small(m) => vec![m],
        WritePlan::Large { notify, data } => vec![notify, data],
    };
    msgs.iter()
        .map(|m| {
            let mut hdr = [0u8; wire::MAX_HEADER_LEN];
            let hl = m.encode_header(&mut hdr).unwrap();
            let mut frame = hdr[..hl].to_vec();
            frame.extend_from_slice(m.payload());
            frame
        })
        .collect()
}

/// Counts (messages sent, header bytes before the first data byte, acks received) for one
/// write of `len` bytes.
fn one_write(peer: &mut Peer, seq: u32, len: u32, inline_max: u32) -> (usize, usize, usize) {
    let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (seq as u8)).collect();
    let meta = WriteMeta {
        sector: 8 * u64::from(seq),
        len,
        seq,
        flags: WriteFlags::FUA,
        volume: 0,
    };
    let frames = send_write(meta, &data, inline_max);
    let before = peer.received;
    for f in &frames {
        // Deliver in awkward pieces, as TCP may.
        for piece in f.chunks(7) {
            peer.receive(piece);
        }
    }
    assert_eq!(peer.received - before, frames.len());
    assert_eq!(peer.announced, None);
    let at = (meta.sector as usize) << 9;
    assert_eq!(
        &peer.disk[at..at + data.len()],
        &data[..],
        "peer has the data"
    );
    // The primary decodes the acks.
    let acks = std::mem::take(&mut peer.outbox);
    let mut n = 0;
    let mut rest = &acks[..];
    while let Some((m, used)) = decode_next(rest, &peer.lim).unwrap() {
        assert_eq!(
            m,
            Message::Ack {
                seq,
                kind: AckKind::Durable
            }
        );
        n += 1;
        rest = &rest[used..];
    }
    assert!(rest.is_empty());
    let total: usize = frames.iter().map(Vec::len).sum();
    (frames.len(), total - data.len(), n)
}

#[test]
fn message_and_ack_counts_per_write_path() {
    let mut peer = Peer::new(1 << 16);
    let inline = wire::INLINE_MAX_DEFAULT;
    // Small path: one 16-byte message carrying all metadata + data, one ack.
    for (seq, len) in [(1, 512), (2, 4096), (3, 32 * 1024)] {
        assert_eq!(
            one_write(&mut peer, seq, len, inline),
            (1, 16, 1),
            "len {len}"
        );
    }
    // Large path: notify (16 bytes, no sector) + data (32-byte header), one ack.
    for (seq, len) in [(4, 32 * 1024 + 512), (5, 64 * 1024), (6, 1 << 20)] {
        assert_eq!(
            one_write(&mut peer, seq, len, inline),
            (2, 16 + 32, 1),
            "len {len}"
        );
    }
    // Small writes disabled (feature not negotiated): everything takes the large path.
    assert_eq!(one_write(&mut peer, 7, 512, 0), (2, 48, 1));
    // The notify of a large write carries only seq and length.
    let data = vec![0u8; 40960];
    let meta = WriteMeta {
        sector: 77,
        len: 40960,
        seq: 9,
        flags: WriteFlags::empty(),
        volume: 0,
    };
    let frames = send_write(meta, &data, inline);
    assert_eq!(frames[0].len(), 16);
    assert_eq!(
        decode(&frames[0], &ALL),
        Ok(Message::WriteNotify { seq: 9, len: 40960 })
    );
}

/// The example in Documentation/wire-protocol.rst.
#[test]
fn rle_documented_example() {
    let bits: Vec<bool> = [(false, 8), (true, 4), (false, 16), (true, 1)]
        .iter()
        .flat_map(|&(b, n)| std::iter::repeat_n(b, n))
        .collect();
    let bm = pack_bits(&bits);
    let mut out = [0u8; wire::RLE_MIN_OUT];
    let c = wire::rle_encode(&bm, 0, 29, &mut out).unwrap();
    assert_eq!((c.bits, &out[..c.len]), (29, &[0x08, 0x04, 0x10, 0x01][..]));
    // Starting at bit 8 (dirty first): a zero-length clean run comes first.
    let c = wire::rle_encode(&bm, 8, 21, &mut out).unwrap();
    assert_eq!(&out[..c.len], &[0x00, 0x04, 0x10, 0x01]);
    assert_eq!(wire::rle_check(&out[..c.len], 21), Ok(5));
    // A zero run anywhere but first, or runs not summing to `bits`, are rejected.
    assert_eq!(
        wire::rle_check(&[0x01, 0x00, 0x01], 2),
        Err(DecodeError::BadField)
    );
    assert_eq!(
        wire::rle_check(&[0x08, 0x04], 13),
        Err(DecodeError::BadField)
    );
    assert_eq!(
        wire::rle_check(&[0x08, 0x04], 11),
        Err(DecodeError::BadField)
    );
    // Too small an output buffer to make progress.
    assert_eq!(
        wire::rle_encode(&[0xff; 200], 0, 1600, &mut [0u8; 1]),
        Err(EncodeError::BufferTooSmall)
    );
}

#[test]
fn handshake_region_size_outside_the_bitmap_range_is_rejected() {
    for bad in [0u32, 512, 2048, 3000, 1 << 21, u32::MAX] {
        let mut h = wire_samples::handshake();
        h.region_size = bad;
        let m = Message::Handshake(h);
        assert_eq!(
            m.validate(&Limits::new(u64::MAX)),
            Err(DecodeError::BadField),
            "region_size {bad}"
        );
    }
    for good in [4096u32, 65536, 1 << 20] {
        let mut h = wire_samples::handshake();
        h.region_size = good;
        assert_eq!(
            Message::Handshake(h).validate(&Limits::new(u64::MAX)),
            Ok(()),
            "region_size {good}"
        );
    }
}

proptest! {
    /// The zero-copy headers are exactly the bytes the full messages encode, minus the payload,
    /// and a write the full encoding refuses is refused the same way.
    #[test]
    fn write_headers_match_plan_write(
        sector in 0u64..(1 << 40),
        sectors in 1u32..=256,
        seq in any::<u32>(),
        flags in 0u8..4,
        inline_max in prop_oneof![Just(0u32), Just(4096u32), Just(32768u32), Just(65536u32)],
    ) {
        let len = sectors << 9;
        let meta = WriteMeta { sector, len, seq, flags: WriteFlags::from_bits(flags).unwrap_or(WriteFlags::empty()), volume: 0 };
        let data = vec![0xa5u8; len as usize];
        let full: Vec<Vec<u8>> = send_write_checked(meta, &data, inline_max);
        match wire::write_headers(meta, inline_max) {
            Ok(wire::WriteHeaders::Small(h)) => {
                prop_assert_eq!(full.len(), 1);
                prop_assert_eq!(h.as_bytes(), &full[0][..full[0].len() - data.len()]);
            }
            Ok(wire::WriteHeaders::Large(n, d)) => {
                prop_assert_eq!(full.len(), 2);
                prop_assert_eq!(n.as_bytes(), &full[0][..]);
                prop_assert_eq!(d.as_bytes(), &full[1][..full[1].len() - data.len()]);
            }
            Err(e) => prop_assert!(full.is_empty(), "write_headers refused ({e:?}) what encode accepts"),
        }
    }
}

/// Like `send_write`, but empty when the messages do not encode.
fn send_write_checked(meta: WriteMeta, data: &[u8], inline_max: u32) -> Vec<Vec<u8>> {
    let msgs: Vec<Message<'_>> = match plan_write(meta, data, inline_max) {
        WritePlan::Small(m) => vec![m],
        WritePlan::Large { notify, data } => vec![notify, data],
    };
    let mut out = Vec::new();
    for m in &msgs {
        let mut buf = vec![0u8; m.encoded_len()];
        match m.encode(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(_) => return Vec::new(),
        }
    }
    out
}
