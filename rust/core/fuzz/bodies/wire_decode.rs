// SPDX-License-Identifier: GPL-2.0
//! Body of the `wire_decode` fuzz target, shared by libFuzzer and the host test
//! `tests/fuzz_wire_decode.rs`: arbitrary bytes must never panic any wire decoder, and
//! whatever decodes must re-encode to the same bytes.

use rmirror_core::wire::{self, Limits, Message};

/// Picks the receiver limits from a selector byte, so the fuzzer explores all of them.
pub fn limits(sel: u8) -> Limits {
    match sel & 3 {
        0 => Limits::new(wire::MAX_DEV_SECTORS),
        1 => Limits::new(1 << 21),
        2 => Limits {
            dev_sectors: 64,
            max_payload: 4096,
        },
        _ => Limits {
            dev_sectors: u64::MAX,
            max_payload: u32::MAX,
        },
    }
}

/// Runs every decoder on `data` (first byte: limits selector, rest: input).
pub fn run(data: &[u8]) {
    let Some((&sel, input)) = data.split_first() else {
        return;
    };
    let lim = limits(sel);

    // The whole input as one frame.
    check_frame(input, &lim);

    // The input as a stream of frames.
    let mut buf = input;
    while let Ok(Some((m, used))) = wire::decode_next(buf, &lim) {
        assert!(used >= wire::PREAMBLE_LEN && used <= buf.len());
        check_message(&m, &buf[..used], &lim);
        buf = &buf[used..];
    }

    // The input as a bitmap RLE chunk, with the bit count taken from the selector.
    let bits = u32::from(sel) * 37 + 1;
    check_rle(input, bits);
}

/// Decodes `frame` as exactly one frame and checks `frame_len` agrees.
pub fn check_frame(frame: &[u8], lim: &Limits) {
    let res = wire::decode(frame, lim);
    if let Some(pre) = frame.get(..wire::PREAMBLE_LEN) {
        let pre: &[u8; wire::PREAMBLE_LEN] = pre.try_into().expect("16 bytes");
        match wire::frame_len(pre, lim) {
            Ok(n) => {
                assert!(n >= wire::PREAMBLE_LEN);
                assert!(
                    n <= wire::HANDSHAKE_MAX_LEN
                        .max(wire::MAX_HEADER_LEN + wire::MAX_PAYLOAD as usize)
                );
                if res.is_ok() {
                    assert_eq!(n, frame.len());
                }
            }
            // A preamble error is exactly what decode reports.
            Err(e) => assert_eq!(res, Err(e)),
        }
    } else {
        assert_eq!(res, Err(wire::DecodeError::Truncated));
    }
    if let Ok(m) = res {
        check_message(&m, frame, lim);
    }
}

/// Invariants of a successfully decoded message `m` from the bytes `frame`.
pub fn check_message(m: &Message<'_>, frame: &[u8], lim: &Limits) {
    assert_eq!(m.validate(lim), Ok(()));
    assert_eq!(frame.get(2).copied(), Some(m.command() as u8));
    let hl = m.header_len();
    assert_eq!(wire::decode_parts(&frame[..hl], &frame[hl..], lim), Ok(*m));

    let mut out = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut out).expect("a decoded message re-encodes");
    assert_eq!(n, out.len());
    if n == frame.len() {
        // The v1 encoding is canonical: same message, same bytes.
        assert_eq!(&out[..], frame);
    } else {
        // Only a handshake may be longer (fields appended by a later version).
        assert!(matches!(m, Message::Handshake(_)));
        assert!(frame.len() > n);
        assert_eq!(wire::decode(&out, lim), Ok(*m));
    }
    let mut hdr = [0u8; wire::MAX_HEADER_LEN];
    assert_eq!(m.encode_header(&mut hdr), Ok(hl));
    assert_eq!(&hdr[..hl], &out[..hl]);
    assert_eq!(&out[hl..], m.payload());
}

/// `rle` as a bitmap chunk of `bits` bits: check, decode, re-encode.
pub fn check_rle(rle: &[u8], bits: u32) {
    let Ok(dirty) = wire::rle_check(rle, bits) else {
        return;
    };
    assert!(dirty <= u64::from(bits));
    let mut bm = vec![0u8; (bits as usize).div_ceil(8) + 1];
    assert_eq!(
        wire::rle_decode(rle, bits, &mut bm, 3, wire::RleApply::Copy),
        Ok(dirty)
    );
    let mut bm = vec![0u8; (bits as usize).div_ceil(8)];
    assert_eq!(
        wire::rle_decode(rle, bits, &mut bm, 0, wire::RleApply::Merge),
        Ok(dirty)
    );
    let ones: u64 = bm.iter().map(|b| u64::from(b.count_ones())).sum();
    assert_eq!(ones, dirty);
    let mut out = vec![0u8; rle.len()];
    let chunk = wire::rle_encode(&bm, 0, bits, &mut out).expect("re-encode");
    assert_eq!(chunk.bits, bits);
    assert_eq!(&out[..chunk.len], rle, "RLE encoding is canonical");
}
