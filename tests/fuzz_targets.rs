//! The fuzz targets' checks (`fuzz/src/lib.rs`), run under proptest so a
//! plain `cargo test` exercises them too. `cargo fuzz` explores far more
//! inputs; see `fuzz/README.md`.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use distkv::key::Key;
use distkv::map::PartitionMap;
use distkv::op::Op;
use distkv::wire::frame::encode_frame;
use distkv::wire::{encode_msg, Msg};
use proptest::prelude::*;

/// Well-formed messages, so mutations of them reach deep into the decoder.
fn sample_payloads() -> Vec<Vec<u8>> {
    let addr = "127.0.0.1:23000".parse().unwrap();
    let map = PartitionMap::build(&[("t".into(), 10), ("u".into(), 3)], &[addr, addr], 2).unwrap();
    let msgs = [
        Msg::Hello {
            advertise: Some(addr),
        },
        Msg::GetMap { req: 7 },
        Msg::MapReply { req: 7, map },
        Msg::Register { node_id: 1, addr },
        Msg::Execute {
            req: 1,
            session: 2,
            seq: 3,
            partition: 0,
            ops: vec![
                Op::Put {
                    key: Key::new("t", 1),
                    value: b"abc".to_vec(),
                },
                Op::Scan {
                    start: Key::new("t", 0),
                    end: Key::new("t", u64::MAX),
                },
            ],
        },
    ];
    msgs.iter().map(|m| encode_msg(m).unwrap()).collect()
}

/// A request-line generator that parses often: well-formed requests of every
/// operation (odd tables, leading zeros, numbers near and past `u64::MAX`,
/// mixed case, odd spacing), and noisy lines for the error paths.
fn request_line() -> impl Strategy<Value = String> {
    let table = "[a-zA-Z_]{1,8}";
    let digits = prop_oneof![
        "[0-9]{1,6}",
        "0{0,5}[0-9]{1,3}",
        "1[0-9]{19}",
        "[0-9]{20,22}"
    ];
    let value = "[!-~]{1,12}";
    let sep = prop_oneof![Just(" "), Just("  "), Just("\t"), Just(" \u{3000}")];
    let well_formed = (
        0usize..5,
        table,
        digits.clone(),
        digits,
        value,
        sep,
        any::<bool>(),
    )
        .prop_map(|(op, table, a, b, value, sep, lower)| {
            let words = match op {
                0 => vec!["PUT".to_string(), format!("{table}{a}"), value],
                1 => vec!["GET".to_string(), format!("{table}{a}")],
                2 => vec!["SWAP".to_string(), format!("{table}{a}"), value],
                3 => vec!["DELETE".to_string(), format!("{table}{a}")],
                _ => vec![
                    "SCAN".to_string(),
                    format!("{table}{a}"),
                    format!("{table}{b}"),
                ],
            };
            let mut line = words.join(sep);
            if lower {
                line = line.replacen(&words[0], &words[0].to_lowercase(), 1);
            }
            line
        });
    let name = prop_oneof![
        Just("PUT"),
        Just("GET"),
        Just("SWAP"),
        Just("DELETE"),
        Just("SCAN"),
        Just("STOP"),
        Just("FROB"),
    ];
    let word = prop_oneof![
        "[a-zA-Z_]{1,8}[0-9]{1,22}",
        "[a-z]{0,70}[0-9]{0,30}",
        "\\PC{1,8}",
        "[!-~]{1,12}",
    ];
    let noisy = (name, proptest::collection::vec(word, 0..4)).prop_map(|(name, words)| {
        let mut line = name.to_string();
        for w in words {
            line.push(' ');
            line.push_str(&w);
        }
        line
    });
    prop_oneof![4 => well_formed, 1 => noisy]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn frame_decode_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        checks::check_frame_decode(&bytes);
    }

    #[test]
    fn frame_decode_on_mutated_valid_frames(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<proptest::sample::Index>(), any::<u8>()), 0..4),
        cut in any::<proptest::sample::Index>(),
        reframe: bool,
    ) {
        let payload = &sample_payloads()[which];
        // Mutate the payload; with `reframe`, wrap it in a valid frame again so
        // the message decoder sees the mutation (the crc would hide it).
        let mut bytes = payload.clone();
        for (i, b) in &flips {
            let i = i.index(bytes.len());
            bytes[i] ^= b;
        }
        let mut data = if reframe { encode_frame(&bytes) } else { bytes };
        if !flips.is_empty() {
            data.truncate(cut.index(data.len() + 1).max(1));
        }
        checks::check_frame_decode(&data);
    }

    #[test]
    fn parse_op_on_request_like_lines(line in request_line()) {
        checks::check_parse_op(line.as_bytes());
    }

    #[test]
    fn parse_op_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
        checks::check_parse_op(&bytes);
    }
}

#[test]
fn parse_op_checks_accept_every_operation() {
    for line in [
        "PUT customers007 alice",
        "get t18446744073709551615",
        "SWAP a_b0 x",
        "DELETE t1",
        "SCAN t9 t1",
        "SCAN t0 t18446744073709551615",
    ] {
        checks::check_parse_op(line.as_bytes());
    }
}
