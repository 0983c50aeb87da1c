//! The checks behind the fuzz targets, as plain functions: the cargo-fuzz
//! targets in `fuzz_targets/` call them on libFuzzer's inputs, and the main
//! crate's `tests/fuzz_targets.rs` runs them under proptest (it includes this
//! file with `#[path]`), so they are exercised by a plain `cargo test` too.
//!
//! Every check panics only on a real bug.

use distkv::key::Key;
use distkv::op::{format_reply, parse_op, Op, OpResult};
use distkv::wire::frame::{decode_frame, encode_frame, FRAME_HEADER_LEN};
use distkv::wire::{decode_msg, encode_msg};

/// Bytes from the network: the frame decoder and the message decoder must
/// never panic, and whatever decodes must survive a round trip.
pub fn check_frame_decode(data: &[u8]) {
    // As a frame (what a connection reader does).
    if let Ok((payload, used)) = decode_frame(data) {
        assert_eq!(used, FRAME_HEADER_LEN + payload.len());
        assert!(used <= data.len());
        check_msg(payload);
    }
    // As a payload directly (a frame's crc is easy to forge: this is what a
    // hostile peer can feed the message decoder).
    check_msg(data);
    // Wrapped in a valid frame: it decodes back to the same bytes.
    if data.len() <= 1 << 20 {
        let frame = encode_frame(data);
        let (payload, used) = decode_frame(&frame).expect("a fresh frame decodes");
        assert_eq!(payload, data);
        assert_eq!(used, frame.len());
    }
}

fn check_msg(payload: &[u8]) {
    if let Ok(msg) = decode_msg(payload) {
        let bytes = encode_msg(&msg).expect("a decoded message re-encodes");
        assert_eq!(decode_msg(&bytes).expect("re-encoded message decodes"), msg);
    }
}

/// A request line: parsing never panics; a parsed operation formats with a
/// plausible result without panicking, its reply names the same key(s), and
/// the operation written back as a request parses to the same operation.
pub fn check_parse_op(data: &[u8]) {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(op) = parse_op(line) else {
        return;
    };
    let flag = data.first().is_some_and(|b| b & 1 == 1);
    let key_len = data.last().map_or(0, |b| usize::from(b % 24));
    let value = b"v".to_vec();
    let (request, result) = match &op {
        Op::Put { key, value } => (
            format!("PUT {key} {}", text(value)),
            OpResult::Put { found: flag },
        ),
        Op::Get { key } => (format!("GET {key}"), OpResult::Get(Some(value.clone()))),
        Op::Swap { key, value } => (format!("SWAP {key} {}", text(value)), OpResult::Swap(None)),
        Op::Delete { key } => (format!("DELETE {key}"), OpResult::Delete { found: flag }),
        Op::Scan { start, end } => (
            format!("SCAN {start} {end}"),
            OpResult::Scan(vec![(start.clone(), value.clone()), (end.clone(), value)]),
        ),
    };
    // The canonical request parses to the same operation.
    assert_eq!(parse_op(&request).as_ref(), Ok(&op), "request {request:?}");

    for width in [0, key_len] {
        let reply = format_reply(&op, &result, width);
        assert!(!reply.starts_with("ERROR"), "{reply:?}");
        let first: Vec<&str> = reply.lines().next().unwrap().split_whitespace().collect();
        assert_eq!(first[0], op.name());
        let reparsed = |word: &str| Key::parse(word).unwrap_or_else(|e| panic!("{word:?}: {e}"));
        match &op {
            Op::Put { key, .. } | Op::Delete { key } => {
                assert_eq!(first.len(), 3, "{reply:?}");
                assert_eq!(&reparsed(first[1]), key);
                let found = if flag { "found" } else { "not_found" };
                assert_eq!(first[2], found);
            }
            Op::Get { key } | Op::Swap { key, .. } => {
                assert_eq!(first.len(), 3, "{reply:?}");
                assert_eq!(&reparsed(first[1]), key);
                let expected = if matches!(op, Op::Get { .. }) {
                    "v"
                } else {
                    "null"
                };
                assert_eq!(first[2], expected);
            }
            Op::Scan { start, end } => {
                assert_eq!(first.len(), 4, "{reply:?}");
                assert_eq!(&reparsed(first[1]), start);
                assert_eq!(&reparsed(first[2]), end);
                assert_eq!(first[3], "BEGIN");
                let lines: Vec<&str> = reply.lines().collect();
                assert_eq!(lines.len(), 4, "{reply:?}");
                assert_eq!(&reparsed(lines[1].split(' ').next().unwrap()), start);
                assert_eq!(&reparsed(lines[2].split(' ').next().unwrap()), end);
                assert_eq!(lines[3], "SCAN END");
            }
        }
        if width > 0 {
            // Padded keys have at least `width` digits.
            let digits = first[1]
                .bytes()
                .rev()
                .take_while(u8::is_ascii_digit)
                .count();
            assert!(digits >= width, "{reply:?} with key_len {width}");
        }
    }
}

fn text(value: &[u8]) -> &str {
    std::str::from_utf8(value).expect("values parsed from text are UTF-8")
}
