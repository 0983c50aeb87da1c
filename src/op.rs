//! Operations, their results, and their text forms (docs/protocol.md,
//! "Operations and replies").
//!
//! ```text
//!   "PUT customers1 alice" --parse_op--> Op::Put --(executed)--> OpResult::Put{found}
//!                                                       format_reply --> "PUT customers1 not_found"
//! ```

use crate::key::{Key, KeyError};
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// Largest value, in bytes.
pub const VALUE_LEN_MAX: usize = 64 * 1024;
/// Most operations in one command.
pub const OPS_PER_COMMAND_MAX: usize = 1024;
/// Most key/value pairs one SCAN returns; a wider result is an error rather
/// than an unbounded reply. Narrow the range or page through it.
pub const SCAN_RESULT_ROWS_MAX: usize = 100_000;
/// Most bytes of results (GET and SWAP values, SCAN rows with their keys) one
/// command may get back from one partition, so every reply fits in a frame
/// (and a write command's outcome, kept in the session table for retries,
/// stays small). A command over it is refused as a whole before it applies.
pub const RESULT_BYTES_MAX: usize = 4 * 1024 * 1024;
/// What one result costs against [`RESULT_BYTES_MAX`] besides its value
/// bytes: an upper bound of its encoding overhead (tag, lengths).
pub const RESULT_OVERHEAD_BYTES: usize = 16;
/// Most bytes (key text and values) in one command, so every request fits in
/// a frame.
pub const COMMAND_BYTES_MAX: usize = 4 * 1024 * 1024;

/// One operation of a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put {
        key: Key,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Get {
        key: Key,
    },
    Swap {
        key: Key,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        key: Key,
    },
    /// Inclusive on both ends; `start` and `end` are in one table.
    Scan {
        start: Key,
        end: Key,
    },
    /// A guard: the command goes on only if `key` holds `expected` at this
    /// point of the command (`None`: the key is absent). Otherwise the whole
    /// command is aborted with nothing applied, and the partition reports the
    /// actual value (`ApplyError::CheckFailed`). A read. Added last, so the
    /// encodings of the other variants are unchanged.
    Check {
        key: Key,
        #[serde(with = "serde_bytes")]
        expected: Option<Vec<u8>>,
    },
    /// A point-in-time copy of `[start, end]` (one table), for backups: the
    /// partition keeps an O(1) copy of its data as of this command, which
    /// the caller then pages through (`Msg::ExportRead`), instead of the
    /// rows coming back in the reply (a SCAN is capped at
    /// [`SCAN_RESULT_ROWS_MAX`]). Not part of the text protocol; a command
    /// holds only EXPORTs, and always runs as a transaction (its copies are
    /// taken when the prepares apply, on every replica alike). A read.
    Export {
        start: Key,
        end: Key,
    },
}

/// The result of one operation, in the same position as its [`Op`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// `found`: the key existed and was replaced.
    Put {
        found: bool,
    },
    Get(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// The old value if the key existed (and was replaced).
    Swap(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    Delete {
        found: bool,
    },
    /// Present keys in `[start, end]`, ascending.
    Scan(Vec<(Key, Vec<u8>)>),
    /// The CHECK held. (A CHECK that does not hold has no result: it aborts
    /// the whole command, see [`Op::Check`].)
    Check,
    /// What each partition in the range copied, in key order.
    Export(Vec<ExportPart>),
}

/// One partition's part of an [`Op::Export`]: the copy it keeps, to be read
/// page by page (`Msg::ExportRead`) with the command's session and number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportPart {
    pub partition: u64,
    /// Keys in the copy, and their bytes (each value's length plus 8), so
    /// the reader can tell it got all of it.
    pub keys: u64,
    pub bytes: u64,
}

/// Why an operation's text or content was rejected. Shown to users as
/// `ERROR <message>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpError {
    #[error("unknown operation '{0}' (expected PUT, GET, SWAP, DELETE, SCAN or CHECK)")]
    UnknownOperation(String),
    #[error("wrong number of arguments for {op}: expected {expected}, got {got}")]
    WrongArgCount {
        op: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("SCAN across tables: '{0}' and '{1}' are in different tables")]
    ScanAcrossTables(String, String),
    #[error("value too large: {0} bytes (limit {VALUE_LEN_MAX})")]
    ValueTooLarge(usize),
    #[error("empty value")]
    EmptyValue,
    #[error("unknown table '{0}'")]
    UnknownTable(String),
    #[error("too many operations in one command: {0} (limit {OPS_PER_COMMAND_MAX})")]
    TooManyOps(usize),
    #[error("empty command: add operations with 'op' before 'done'")]
    EmptyCommand,
    #[error("command too large: {0} bytes of keys and values (limit {COMMAND_BYTES_MAX})")]
    CommandTooLarge(usize),
    #[error("EXPORT cannot share a command with other operations")]
    ExportNotAlone,
}

impl Op {
    /// The operation's name as written in requests and replies.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Put { .. } => "PUT",
            Op::Get { .. } => "GET",
            Op::Swap { .. } => "SWAP",
            Op::Delete { .. } => "DELETE",
            Op::Scan { .. } => "SCAN",
            Op::Check { .. } => "CHECK",
            Op::Export { .. } => "EXPORT",
        }
    }

    /// The table the operation touches.
    pub fn table(&self) -> &str {
        match self {
            Op::Put { key, .. }
            | Op::Get { key }
            | Op::Swap { key, .. }
            | Op::Delete { key }
            | Op::Check { key, .. } => &key.table,
            Op::Scan { start, .. } | Op::Export { start, .. } => &start.table,
        }
    }

    /// Bytes of key text and values, for the command size limit.
    pub fn size_bytes(&self) -> usize {
        let key = |k: &Key| k.table.len() + 20;
        match self {
            Op::Put { key: k, value } | Op::Swap { key: k, value } => key(k) + value.len(),
            Op::Get { key: k } | Op::Delete { key: k } => key(k),
            Op::Scan { start, end } | Op::Export { start, end } => key(start) + key(end),
            Op::Check { key: k, expected } => key(k) + expected.as_ref().map_or(0, Vec::len),
        }
    }

    /// Whether it is an [`Op::Export`].
    pub fn is_export(&self) -> bool {
        matches!(self, Op::Export { .. })
    }

    /// Whether the operation may change state.
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Swap { .. } | Op::Delete { .. })
    }

    /// Checks what parsing cannot: value limits and that SCAN stays in one
    /// table. Values built through the library API get the same checks.
    pub fn validate(&self) -> Result<(), OpError> {
        match self {
            Op::Put { value, .. } | Op::Swap { value, .. } => validate_value(value),
            Op::Check {
                expected: Some(value),
                ..
            } => validate_value(value),
            Op::Scan { start, end } | Op::Export { start, end } if start.table != end.table => Err(
                OpError::ScanAcrossTables(start.to_string(), end.to_string()),
            ),
            _ => Ok(()),
        }
    }
}

fn validate_value(value: &[u8]) -> Result<(), OpError> {
    if value.is_empty() {
        Err(OpError::EmptyValue)
    } else if value.len() > VALUE_LEN_MAX {
        Err(OpError::ValueTooLarge(value.len()))
    } else {
        Ok(())
    }
}

/// Checks a whole command's shape and every operation in it.
pub fn validate_command(ops: &[Op]) -> Result<(), (Option<usize>, OpError)> {
    if ops.is_empty() {
        return Err((None, OpError::EmptyCommand));
    }
    if ops.len() > OPS_PER_COMMAND_MAX {
        return Err((None, OpError::TooManyOps(ops.len())));
    }
    let bytes: usize = ops.iter().map(Op::size_bytes).sum();
    if bytes > COMMAND_BYTES_MAX {
        return Err((None, OpError::CommandTooLarge(bytes)));
    }
    for (i, op) in ops.iter().enumerate() {
        op.validate().map_err(|e| (Some(i), e))?;
    }
    let exports = ops.iter().filter(|op| op.is_export()).count();
    if exports > 0 && exports < ops.len() {
        return Err((None, OpError::ExportNotAlone));
    }
    Ok(())
}

/// Parses one operation from its words, e.g. `["PUT", "customers1", "alice"]`.
/// The operation name is case-insensitive. `STOP` is not an operation; the
/// front ends handle it.
pub fn parse_op_words(words: &[&str]) -> Result<Op, OpError> {
    let Some((name, args)) = words.split_first() else {
        return Err(OpError::UnknownOperation(String::new()));
    };
    let upper = name.to_ascii_uppercase();
    let want = |op: &'static str, expected: usize| {
        if args.len() == expected {
            Ok(())
        } else {
            Err(OpError::WrongArgCount {
                op,
                expected,
                got: args.len(),
            })
        }
    };
    let op = match upper.as_str() {
        "PUT" => {
            want("PUT", 2)?;
            Op::Put {
                key: Key::parse(args[0])?,
                value: args[1].as_bytes().to_vec(),
            }
        }
        "GET" => {
            want("GET", 1)?;
            Op::Get {
                key: Key::parse(args[0])?,
            }
        }
        "SWAP" => {
            want("SWAP", 2)?;
            Op::Swap {
                key: Key::parse(args[0])?,
                value: args[1].as_bytes().to_vec(),
            }
        }
        "DELETE" => {
            want("DELETE", 1)?;
            Op::Delete {
                key: Key::parse(args[0])?,
            }
        }
        "SCAN" => {
            want("SCAN", 2)?;
            Op::Scan {
                start: Key::parse(args[0])?,
                end: Key::parse(args[1])?,
            }
        }
        "CHECK" => {
            want("CHECK", 2)?;
            Op::Check {
                key: Key::parse(args[0])?,
                // The word `null` (exactly, like the `null` of replies) means
                // "absent"; the text interfaces cannot expect the value `null`.
                expected: (args[1] != "null").then(|| args[1].as_bytes().to_vec()),
            }
        }
        _ => return Err(OpError::UnknownOperation(name.to_string())),
    };
    op.validate()?;
    Ok(op)
}

/// Parses one operation line, e.g. `PUT customers1 alice`.
pub fn parse_op(line: &str) -> Result<Op, OpError> {
    let words: Vec<&str> = line.split_whitespace().collect();
    parse_op_words(&words)
}

/// Formats the reply to `op` given its `result`, exactly as docs/protocol.md shows it.
/// A SCAN reply spans several lines; the returned text has no final newline.
/// `key_len` zero-pads key numbers (0 = canonical form).
pub fn format_reply(op: &Op, result: &OpResult, key_len: usize) -> String {
    let k = |key: &Key| key.display_padded(key_len);
    let v = |value: &Option<Vec<u8>>| match value {
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        None => "null".to_string(),
    };
    let found = |f: bool| if f { "found" } else { "not_found" };
    match (op, result) {
        (Op::Put { key, .. }, OpResult::Put { found: f }) => {
            format!("PUT {} {}", k(key), found(*f))
        }
        (Op::Get { key }, OpResult::Get(value)) => format!("GET {} {}", k(key), v(value)),
        (Op::Swap { key, .. }, OpResult::Swap(old)) => format!("SWAP {} {}", k(key), v(old)),
        (Op::Delete { key }, OpResult::Delete { found: f }) => {
            format!("DELETE {} {}", k(key), found(*f))
        }
        (Op::Scan { start, end }, OpResult::Scan(rows)) => {
            let mut out = format!("SCAN {} {} BEGIN\n", k(start), k(end));
            for (key, value) in rows {
                let _ = writeln!(out, "{} {}", k(key), String::from_utf8_lossy(value));
            }
            out.push_str("SCAN END");
            out
        }
        (Op::Check { key, .. }, OpResult::Check) => format!("CHECK {} ok", k(key)),
        // A result of the wrong kind is a bug in whoever produced it; say so
        // instead of printing something that looks like a real reply.
        (op, result) => format!(
            "ERROR internal: result {result:?} does not match operation {}",
            op.name()
        ),
    }
}

/// The reply line of a CHECK that did not hold, `CHECK <key> mismatch
/// <actual>` (`null` if absent): printed in place of its reply, as the reason
/// its command was aborted.
pub fn format_check_mismatch(key: &Key, actual: Option<&[u8]>, key_len: usize) -> String {
    let actual = actual.map_or_else(
        || "null".to_string(),
        |bytes| String::from_utf8_lossy(bytes).into_owned(),
    );
    format!("CHECK {} mismatch {actual}", key.display_padded(key_len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    #[test]
    fn parses_every_operation() {
        assert_eq!(
            parse_op("PUT customers1 alice").unwrap(),
            Op::Put {
                key: key("customers1"),
                value: b"alice".to_vec()
            }
        );
        assert_eq!(
            parse_op("  get   customers007 ").unwrap(),
            Op::Get {
                key: key("customers7")
            }
        );
        assert_eq!(
            parse_op("SWAP t1 x").unwrap(),
            Op::Swap {
                key: key("t1"),
                value: b"x".to_vec()
            }
        );
        assert_eq!(
            parse_op("DELETE t1").unwrap(),
            Op::Delete { key: key("t1") }
        );
        assert_eq!(
            parse_op("SCAN t1 t10").unwrap(),
            Op::Scan {
                start: key("t1"),
                end: key("t10")
            }
        );
    }

    #[test]
    fn rejects_bad_operations_with_the_reason() {
        assert!(matches!(
            parse_op("FROB t1"),
            Err(OpError::UnknownOperation(_))
        ));
        assert!(matches!(
            parse_op("PUT t1"),
            Err(OpError::WrongArgCount {
                op: "PUT",
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            parse_op("GET t1 t2"),
            Err(OpError::WrongArgCount { op: "GET", .. })
        ));
        assert!(matches!(parse_op("GET 12"), Err(OpError::Key(_))));
        assert!(matches!(
            parse_op("SCAN a1 b2"),
            Err(OpError::ScanAcrossTables(..))
        ));
        let big = "x".repeat(VALUE_LEN_MAX + 1);
        assert!(matches!(
            parse_op(&format!("PUT t1 {big}")),
            Err(OpError::ValueTooLarge(_))
        ));
        assert!(matches!(parse_op(""), Err(OpError::UnknownOperation(_))));
    }

    #[test]
    fn formats_replies_byte_for_byte() {
        let put = parse_op("PUT customers007 alice").unwrap();
        assert_eq!(
            format_reply(&put, &OpResult::Put { found: false }, 0),
            "PUT customers7 not_found"
        );
        assert_eq!(
            format_reply(&put, &OpResult::Put { found: true }, 4),
            "PUT customers0007 found"
        );
        let get = parse_op("GET t3").unwrap();
        assert_eq!(format_reply(&get, &OpResult::Get(None), 0), "GET t3 null");
        assert_eq!(
            format_reply(&get, &OpResult::Get(Some(b"v".to_vec())), 0),
            "GET t3 v"
        );
        let swap = parse_op("SWAP t3 new").unwrap();
        assert_eq!(
            format_reply(&swap, &OpResult::Swap(None), 0),
            "SWAP t3 null"
        );
        assert_eq!(
            format_reply(&swap, &OpResult::Swap(Some(b"old".to_vec())), 0),
            "SWAP t3 old"
        );
        let del = parse_op("DELETE t3").unwrap();
        assert_eq!(
            format_reply(&del, &OpResult::Delete { found: true }, 0),
            "DELETE t3 found"
        );
        let scan = parse_op("SCAN t01 t10").unwrap();
        let rows = vec![(key("t2"), b"a".to_vec()), (key("t10"), b"b".to_vec())];
        assert_eq!(
            format_reply(&scan, &OpResult::Scan(rows), 0),
            "SCAN t1 t10 BEGIN\nt2 a\nt10 b\nSCAN END"
        );
        assert_eq!(
            format_reply(&scan, &OpResult::Scan(vec![]), 0),
            "SCAN t1 t10 BEGIN\nSCAN END"
        );
    }

    #[test]
    fn check_parses_validates_and_formats() {
        assert_eq!(
            parse_op("check customers07 alice").unwrap(),
            Op::Check {
                key: key("customers7"),
                expected: Some(b"alice".to_vec())
            }
        );
        // The word `null` expects the key to be absent; `NULL` is a value.
        assert_eq!(
            parse_op("CHECK t1 null").unwrap(),
            Op::Check {
                key: key("t1"),
                expected: None
            }
        );
        assert_eq!(
            parse_op("CHECK t1 NULL").unwrap(),
            Op::Check {
                key: key("t1"),
                expected: Some(b"NULL".to_vec())
            }
        );
        assert!(matches!(
            parse_op("CHECK t1"),
            Err(OpError::WrongArgCount {
                op: "CHECK",
                expected: 2,
                got: 1
            })
        ));
        let big = "x".repeat(VALUE_LEN_MAX + 1);
        assert!(matches!(
            parse_op(&format!("CHECK t1 {big}")),
            Err(OpError::ValueTooLarge(_))
        ));
        let empty = Op::Check {
            key: key("t1"),
            expected: Some(Vec::new()),
        };
        assert_eq!(empty.validate(), Err(OpError::EmptyValue));
        let check = parse_op("CHECK t01 abc").unwrap();
        assert!(!check.is_write());
        assert_eq!(check.size_bytes(), 1 + 20 + 3);
        assert_eq!(check.table(), "t");
        assert_eq!(format_reply(&check, &OpResult::Check, 3), "CHECK t001 ok");
        assert_eq!(
            format_check_mismatch(&key("t1"), Some(b"v"), 0),
            "CHECK t1 mismatch v"
        );
        assert_eq!(
            format_check_mismatch(&key("t1"), None, 0),
            "CHECK t1 mismatch null"
        );
        assert_eq!(
            parse_op("FROB t1").unwrap_err().to_string(),
            "unknown operation 'FROB' (expected PUT, GET, SWAP, DELETE, SCAN or CHECK)"
        );
    }

    #[test]
    fn the_value_null_is_a_value_not_a_delete() {
        // Pitfall: an earlier implementation stored deletes as "NULL".
        let put = parse_op("PUT t1 NULL").unwrap();
        assert_eq!(
            put,
            Op::Put {
                key: key("t1"),
                value: b"NULL".to_vec()
            }
        );
    }

    /// Values are encoded as byte strings (`serde_bytes`): the bytes must
    /// be exactly those of the plain `Vec<u8>` encoding they replaced, so
    /// logs and peers from before read the same.
    #[test]
    fn byte_string_encoding_is_unchanged() {
        use bincode::Options;
        // The variants' order is what matters; some are never built.
        #[allow(dead_code)]
        #[derive(serde::Serialize)]
        enum PlainOp {
            Put { key: Key, value: Vec<u8> },
            Get { key: Key },
            Swap { key: Key, value: Vec<u8> },
            Delete { key: Key },
            Scan { start: Key, end: Key },
            Check { key: Key, expected: Option<Vec<u8>> },
        }
        #[allow(dead_code)]
        #[derive(serde::Serialize)]
        enum PlainResult {
            Put { found: bool },
            Get(Option<Vec<u8>>),
            Swap(Option<Vec<u8>>),
        }
        let value: Vec<u8> = (0..=255).chain(0..300u32).map(|b| b as u8).collect();
        let k = key("t7");
        let options = bincode::DefaultOptions::new();
        let same = |new: Vec<u8>, old: Vec<u8>| assert_eq!(new, old);
        same(
            options
                .serialize(&Op::Put {
                    key: k.clone(),
                    value: value.clone(),
                })
                .unwrap(),
            options
                .serialize(&PlainOp::Put {
                    key: k.clone(),
                    value: value.clone(),
                })
                .unwrap(),
        );
        same(
            options
                .serialize(&Op::Swap {
                    key: k.clone(),
                    value: value.clone(),
                })
                .unwrap(),
            options
                .serialize(&PlainOp::Swap {
                    key: k.clone(),
                    value: value.clone(),
                })
                .unwrap(),
        );
        for expected in [None, Some(value.clone())] {
            same(
                options
                    .serialize(&Op::Check {
                        key: k.clone(),
                        expected: expected.clone(),
                    })
                    .unwrap(),
                options
                    .serialize(&PlainOp::Check {
                        key: k.clone(),
                        expected,
                    })
                    .unwrap(),
            );
        }
        for v in [None, Some(value.clone())] {
            same(
                options.serialize(&OpResult::Get(v.clone())).unwrap(),
                options.serialize(&PlainResult::Get(v.clone())).unwrap(),
            );
            same(
                options.serialize(&OpResult::Swap(v.clone())).unwrap(),
                options.serialize(&PlainResult::Swap(v)).unwrap(),
            );
        }
        let decoded: Op = options
            .deserialize(
                &options
                    .serialize(&PlainOp::Put {
                        key: key("t7"),
                        value: value.clone(),
                    })
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            decoded,
            Op::Put {
                key: key("t7"),
                value
            }
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(line in "\\PC{0,60}") {
            let _ = parse_op(&line);
        }

        #[test]
        fn well_formed_lines_parse(table in "[a-z_]{1,10}", a: u64, b: u64, value in "[!-~]{1,30}") {
            let op = parse_op(&format!("PUT {table}{a} {value}")).unwrap();
            prop_assert_eq!(op, Op::Put { key: Key::new(table.clone(), a), value: value.into_bytes() });
            let (lo, hi) = (a.min(b), a.max(b));
            let scan = parse_op(&format!("SCAN {table}{lo} {table}{hi}")).unwrap();
            let is_scan = matches!(scan, Op::Scan { .. });
            prop_assert!(is_scan);
        }
    }
}
