//! History files (docs/protocol.md, "Histories"): one JSON object per line, one per
//! command a benchmark client issued, for an external linearizability
//! checker.
//!
//! ```text
//! {"client":3,"invoke":1200,"complete":5400,"status":"ok","ops":[["PUT","customers1","alice"],["GET","orders7"]],"results":["not_found","bob"]}
//! ```
//! [`HistoryRecord`] writes that format and reads it back. A result's JSON
//! form depends on its operation (`"found"` is a PUT outcome, or a GET's
//! value), so records are read in two steps: the raw JSON, then each result
//! interpreted against its operation ([`HistoryRecord::parse_line`]).

use crate::client::ClientError;
use crate::key::Key;
use crate::op::{Op, OpResult};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
use std::io::{self, BufRead, Write};

/// What is known of a command's effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It took effect; its results are known.
    Ok,
    /// It certainly did not take effect.
    Fail,
    /// It may or may not have taken effect (timed out, connection lost, or
    /// only partly applied).
    Unknown,
}

impl Status {
    /// The status of a command that ended in `error`.
    pub fn of_error(error: &ClientError) -> Status {
        match error {
            ClientError::Invalid { .. }
            | ClientError::Rejected(_)
            | ClientError::Unavailable(_)
            | ClientError::CheckFailed { .. } => Status::Fail,
            ClientError::UnknownOutcome(_) => Status::Unknown,
        }
    }

    /// The status of a command's outcome.
    pub fn of<T>(outcome: &Result<T, ClientError>) -> Status {
        match outcome {
            Ok(_) => Status::Ok,
            Err(e) => Status::of_error(e),
        }
    }
}

/// One operation as a history shows it: `["PUT",k,v]`, `["GET",k]`,
/// `["SWAP",k,v]`, `["DELETE",k]`, `["SCAN",start,end]`,
/// `["CHECK",k,expected]` (`expected` a string, or `null` for "absent").
/// Values are text (the benchmark writes printable ASCII; other bytes are
/// replaced lossily).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "Vec<Option<String>>")]
pub enum HistoryOp {
    Put { key: Key, value: String },
    Get { key: Key },
    Swap { key: Key, value: String },
    Delete { key: Key },
    Scan { start: Key, end: Key },
    Check { key: Key, expected: Option<String> },
}

impl HistoryOp {
    pub fn from_op(op: &Op) -> HistoryOp {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        match op {
            Op::Put { key, value } => HistoryOp::Put {
                key: key.clone(),
                value: text(value),
            },
            Op::Get { key } => HistoryOp::Get { key: key.clone() },
            Op::Swap { key, value } => HistoryOp::Swap {
                key: key.clone(),
                value: text(value),
            },
            Op::Delete { key } => HistoryOp::Delete { key: key.clone() },
            // Workloads never run an EXPORT (`admin backup` does); recorded
            // as the SCAN of its range it is, its result (no rows) would
            // make the checker fail loudly rather than pass wrongly.
            Op::Scan { start, end } | Op::Export { start, end } => HistoryOp::Scan {
                start: start.clone(),
                end: end.clone(),
            },
            Op::Check { key, expected } => HistoryOp::Check {
                key: key.clone(),
                expected: expected.as_deref().map(text),
            },
        }
    }

    /// The operation's words: name, then its arguments as text (`None`:
    /// JSON `null`, only a CHECK's `expected`).
    fn words(&self) -> Vec<Option<String>> {
        let words: Vec<Option<String>> = match self {
            HistoryOp::Put { key, value } => {
                vec![Some(key.to_string()), Some(value.clone())]
            }
            HistoryOp::Get { key } | HistoryOp::Delete { key } => vec![Some(key.to_string())],
            HistoryOp::Swap { key, value } => vec![Some(key.to_string()), Some(value.clone())],
            HistoryOp::Scan { start, end } => vec![Some(start.to_string()), Some(end.to_string())],
            HistoryOp::Check { key, expected } => vec![Some(key.to_string()), expected.clone()],
        };
        std::iter::once(Some(self.name().to_string()))
            .chain(words)
            .collect()
    }

    /// The operation's name, as in requests.
    pub fn name(&self) -> &'static str {
        match self {
            HistoryOp::Put { .. } => "PUT",
            HistoryOp::Get { .. } => "GET",
            HistoryOp::Swap { .. } => "SWAP",
            HistoryOp::Delete { .. } => "DELETE",
            HistoryOp::Scan { .. } => "SCAN",
            HistoryOp::Check { .. } => "CHECK",
        }
    }
}

impl Serialize for HistoryOp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.words().serialize(serializer)
    }
}

impl TryFrom<Vec<Option<String>>> for HistoryOp {
    type Error = String;

    fn try_from(raw: Vec<Option<String>>) -> Result<Self, String> {
        // Only a CHECK's expected value may be `null`.
        let is_check = raw.first() == Some(&Some("CHECK".to_string()));
        let expected = match (is_check, raw.len()) {
            (true, 3) => Some(raw[2].clone()),
            _ => None,
        };
        let words: Vec<String> = raw
            .into_iter()
            .enumerate()
            .map(|(i, word)| match word {
                Some(word) => Ok(word),
                None if is_check && i == 2 => Ok(String::new()),
                None => Err(format!("null in place of argument {i} of an operation")),
            })
            .collect::<Result<_, _>>()?;
        let key =
            |i: usize| -> Result<Key, String> { Key::parse(&words[i]).map_err(|e| e.to_string()) };
        let arity = |n: usize| -> Result<(), String> {
            if words.len() == n {
                Ok(())
            } else {
                Err(format!("{} takes {} arguments: {words:?}", words[0], n - 1))
            }
        };
        let Some(name) = words.first() else {
            return Err("empty operation".into());
        };
        match name.as_str() {
            "CHECK" => arity(3).and_then(|_| {
                Ok(HistoryOp::Check {
                    key: key(1)?,
                    expected: expected.flatten(),
                })
            }),
            "PUT" => arity(3).and_then(|_| {
                Ok(HistoryOp::Put {
                    key: key(1)?,
                    value: words[2].clone(),
                })
            }),
            "GET" => arity(2).and_then(|_| Ok(HistoryOp::Get { key: key(1)? })),
            "SWAP" => arity(3).and_then(|_| {
                Ok(HistoryOp::Swap {
                    key: key(1)?,
                    value: words[2].clone(),
                })
            }),
            "DELETE" => arity(2).and_then(|_| Ok(HistoryOp::Delete { key: key(1)? })),
            "SCAN" => arity(3).and_then(|_| {
                Ok(HistoryOp::Scan {
                    start: key(1)?,
                    end: key(2)?,
                })
            }),
            other => Err(format!("unknown operation '{other}'")),
        }
    }
}

/// One operation's result as a history shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryResult {
    /// PUT / DELETE: `"found"` or `"not_found"`.
    Found(bool),
    /// GET / SWAP: the (old) value or `null`.
    Value(Option<String>),
    /// SCAN: `[key, value]` pairs in key order.
    Scan(Vec<(Key, String)>),
    /// CHECK: `"ok"` (it held; one that did not aborted its command, which
    /// is then `fail` and has no results).
    CheckOk,
}

impl HistoryResult {
    pub fn from_result(result: &OpResult) -> HistoryResult {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        match result {
            OpResult::Put { found } | OpResult::Delete { found } => HistoryResult::Found(*found),
            OpResult::Get(value) | OpResult::Swap(value) => {
                HistoryResult::Value(value.as_deref().map(text))
            }
            OpResult::Scan(rows) => HistoryResult::Scan(
                rows.iter()
                    .map(|(key, value)| (key.clone(), text(value)))
                    .collect(),
            ),
            OpResult::Check => HistoryResult::CheckOk,
            OpResult::Export(_) => HistoryResult::Scan(Vec::new()),
        }
    }

    /// Interprets `json` as the result of `op`.
    fn from_json(op: &HistoryOp, json: serde_json::Value) -> Result<HistoryResult, String> {
        use serde_json::Value;
        let bad = |json: &Value| format!("result {json} does not fit operation {:?}", op.words());
        match (op, json) {
            (HistoryOp::Check { .. }, Value::String(s)) if s == "ok" => Ok(HistoryResult::CheckOk),
            (HistoryOp::Put { .. } | HistoryOp::Delete { .. }, Value::String(s)) => {
                match s.as_str() {
                    "found" => Ok(HistoryResult::Found(true)),
                    "not_found" => Ok(HistoryResult::Found(false)),
                    _ => Err(bad(&Value::String(s))),
                }
            }
            (HistoryOp::Get { .. } | HistoryOp::Swap { .. }, Value::Null) => {
                Ok(HistoryResult::Value(None))
            }
            (HistoryOp::Get { .. } | HistoryOp::Swap { .. }, Value::String(s)) => {
                Ok(HistoryResult::Value(Some(s)))
            }
            (HistoryOp::Scan { .. }, json @ Value::Array(_)) => {
                let rows: Vec<(String, String)> =
                    serde_json::from_value(json.clone()).map_err(|_| bad(&json))?;
                rows.into_iter()
                    .map(|(key, value)| {
                        Key::parse(&key)
                            .map(|key| (key, value))
                            .map_err(|e| e.to_string())
                    })
                    .collect::<Result<_, _>>()
                    .map(HistoryResult::Scan)
            }
            (_, json) => Err(bad(&json)),
        }
    }
}

impl Serialize for HistoryResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            HistoryResult::Found(true) => serializer.serialize_str("found"),
            HistoryResult::Found(false) => serializer.serialize_str("not_found"),
            HistoryResult::Value(value) => value.serialize(serializer),
            HistoryResult::CheckOk => serializer.serialize_str("ok"),
            HistoryResult::Scan(rows) => {
                let mut seq = serializer.serialize_seq(Some(rows.len()))?;
                for (key, value) in rows {
                    seq.serialize_element(&(key.to_string(), value))?;
                }
                seq.end()
            }
        }
    }
}

/// One line of a history file: one command of one sequential client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawRecord")]
pub struct HistoryRecord {
    /// The sequential client that issued it (never two commands outstanding).
    pub client: u64,
    /// When it was sent, in nanoseconds since the benchmark's start.
    pub invoke: u64,
    /// When its outcome arrived, in nanoseconds since the benchmark's start;
    /// `None` (`null`) when the outcome is unknown.
    pub complete: Option<u64>,
    pub status: Status,
    pub ops: Vec<HistoryOp>,
    /// One result per operation, for `ok` commands only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub results: Option<Vec<HistoryResult>>,
}

/// A history line as JSON, before results are interpreted.
/// Unknown fields are ignored, so later additions do not break readers.
#[derive(Deserialize)]
struct RawRecord {
    client: u64,
    invoke: u64,
    complete: Option<u64>,
    status: Status,
    ops: Vec<HistoryOp>,
    #[serde(default)]
    results: Option<Vec<serde_json::Value>>,
}

impl TryFrom<RawRecord> for HistoryRecord {
    type Error = String;

    fn try_from(raw: RawRecord) -> Result<Self, String> {
        let results = match (raw.status, raw.results) {
            (Status::Ok, Some(results)) => {
                if results.len() != raw.ops.len() {
                    return Err(format!(
                        "{} results for {} operations",
                        results.len(),
                        raw.ops.len()
                    ));
                }
                let parsed = raw
                    .ops
                    .iter()
                    .zip(results)
                    .map(|(op, json)| HistoryResult::from_json(op, json))
                    .collect::<Result<Vec<_>, _>>()?;
                Some(parsed)
            }
            (Status::Ok, None) => return Err("an ok command needs its results".into()),
            (_, Some(_)) => return Err("only ok commands have results".into()),
            (_, None) => None,
        };
        match (raw.status, raw.complete) {
            (Status::Unknown, Some(_)) => {
                return Err("an unknown outcome has no completion time".into())
            }
            (Status::Ok | Status::Fail, None) => {
                return Err("a known outcome needs its completion time".into())
            }
            _ => {}
        }
        Ok(HistoryRecord {
            client: raw.client,
            invoke: raw.invoke,
            complete: raw.complete,
            status: raw.status,
            ops: raw.ops,
            results,
        })
    }
}

impl HistoryRecord {
    /// The record of a command by `client` with operations `ops`, sent at
    /// `invoke` and answered with `outcome` at `complete` (nanoseconds since
    /// the benchmark's start). An unknown outcome gets no completion time and
    /// no results, as the format requires.
    pub fn new(
        client: u64,
        invoke: u64,
        complete: u64,
        ops: Vec<HistoryOp>,
        outcome: &Result<Vec<OpResult>, ClientError>,
    ) -> HistoryRecord {
        let status = Status::of(outcome);
        let results = match outcome {
            Ok(results) => Some(results.iter().map(HistoryResult::from_result).collect()),
            Err(_) => None,
        };
        HistoryRecord {
            client,
            invoke,
            complete: (status != Status::Unknown).then_some(complete),
            status,
            ops,
            results,
        }
    }

    /// Writes the record as one line of JSON.
    pub fn write_line<W: Write + ?Sized>(&self, out: &mut W) -> io::Result<()> {
        serde_json::to_writer(&mut *out, self)?;
        out.write_all(b"\n")
    }

    /// Reads one line written by [`HistoryRecord::write_line`].
    pub fn parse_line(line: &str) -> Result<HistoryRecord, serde_json::Error> {
        serde_json::from_str(line)
    }
}

/// Why a history file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HistoryReadError {
    #[error("reading the history: {0}")]
    Io(#[from] io::Error),
    #[error("history line {line}: {error}")]
    Parse {
        line: usize,
        error: serde_json::Error,
    },
}

/// Reads a whole history file (blank lines are skipped).
pub fn read_history<B: BufRead>(input: B) -> Result<Vec<HistoryRecord>, HistoryReadError> {
    let mut records = Vec::new();
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let record = HistoryRecord::parse_line(&line)
            .map_err(|error| HistoryReadError::Parse { line: i + 1, error })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key::parse(s).unwrap()
    }

    fn spec_example() -> HistoryRecord {
        HistoryRecord {
            client: 3,
            invoke: 1200,
            complete: Some(5400),
            status: Status::Ok,
            ops: vec![
                HistoryOp::Put {
                    key: key("customers1"),
                    value: "alice".into(),
                },
                HistoryOp::Get {
                    key: key("orders7"),
                },
            ],
            results: Some(vec![
                HistoryResult::Found(false),
                HistoryResult::Value(Some("bob".into())),
            ]),
        }
    }

    const SPEC_EXAMPLE_LINE: &str = r#"{"client":3,"invoke":1200,"complete":5400,"status":"ok","ops":[["PUT","customers1","alice"],["GET","orders7"]],"results":["not_found","bob"]}"#;

    fn line_of(record: &HistoryRecord) -> String {
        let mut out = Vec::new();
        record.write_line(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_the_spec_example_exactly() {
        assert_eq!(line_of(&spec_example()), format!("{SPEC_EXAMPLE_LINE}\n"));
    }

    #[test]
    fn reads_the_spec_example_as_printed_in_the_spec() {
        // The spec shows it with spaces and a line break; JSON does not care.
        let pretty = r#"{"client": 3, "invoke": 1200, "complete": 5400, "status": "ok",
 "ops": [["PUT","customers1","alice"], ["GET","orders7"]], "results": ["not_found", "bob"]}"#;
        assert_eq!(HistoryRecord::parse_line(pretty).unwrap(), spec_example());
    }

    #[test]
    fn every_operation_and_status_round_trips() {
        let ops = [
            Op::Put {
                key: key("t01"),
                value: b"v".to_vec(),
            },
            Op::Get { key: key("t2") },
            Op::Swap {
                key: key("t3"),
                value: b"found".to_vec(),
            },
            Op::Delete { key: key("t4") },
            Op::Scan {
                start: key("t0"),
                end: key("t10"),
            },
        ];
        let results = vec![
            OpResult::Put { found: true },
            OpResult::Get(None),
            OpResult::Swap(Some(b"not_found".to_vec())),
            OpResult::Delete { found: false },
            OpResult::Scan(vec![(key("t1"), b"v".to_vec()), (key("t3"), b"x".to_vec())]),
        ];
        let hops: Vec<HistoryOp> = ops.iter().map(HistoryOp::from_op).collect();

        let ok = HistoryRecord::new(0, 10, 20, hops.clone(), &Ok(results));
        let text = line_of(&ok);
        assert_eq!(
            text,
            concat!(
                r#"{"client":0,"invoke":10,"complete":20,"status":"ok","#,
                r#""ops":[["PUT","t1","v"],["GET","t2"],["SWAP","t3","found"],["DELETE","t4"],["SCAN","t0","t10"]],"#,
                r#""results":["found",null,"not_found","not_found",[["t1","v"],["t3","x"]]]}"#,
                "\n"
            )
        );
        assert_eq!(HistoryRecord::parse_line(&text).unwrap(), ok);

        let fail = HistoryRecord::new(
            1,
            10,
            20,
            hops.clone(),
            &Err(ClientError::Unavailable("no quorum".into())),
        );
        assert_eq!(fail.status, Status::Fail);
        let text = line_of(&fail);
        assert!(text.contains(r#""complete":20,"status":"fail""#));
        assert!(!text.contains("results"));
        assert_eq!(HistoryRecord::parse_line(&text).unwrap(), fail);

        let unknown = HistoryRecord::new(
            2,
            10,
            20,
            hops,
            &Err(ClientError::UnknownOutcome("timed out".into())),
        );
        let text = line_of(&unknown);
        assert!(text.contains(r#""complete":null,"status":"unknown""#));
        assert!(!text.contains("results"));
        assert_eq!(HistoryRecord::parse_line(&text).unwrap(), unknown);
    }

    #[test]
    fn check_operations_round_trip_with_null_for_absent() {
        let ops = [
            Op::Check {
                key: key("t01"),
                expected: Some(b"v".to_vec()),
            },
            Op::Check {
                key: key("t2"),
                expected: None,
            },
            Op::Put {
                key: key("t2"),
                value: b"w".to_vec(),
            },
        ];
        let hops: Vec<HistoryOp> = ops.iter().map(HistoryOp::from_op).collect();
        let results = vec![
            OpResult::Check,
            OpResult::Check,
            OpResult::Put { found: false },
        ];
        let ok = HistoryRecord::new(0, 10, 20, hops.clone(), &Ok(results));
        let text = line_of(&ok);
        assert_eq!(
            text,
            concat!(
                r#"{"client":0,"invoke":10,"complete":20,"status":"ok","#,
                r#""ops":[["CHECK","t1","v"],["CHECK","t2",null],["PUT","t2","w"]],"#,
                r#""results":["ok","ok","not_found"]}"#,
                "\n"
            )
        );
        assert_eq!(HistoryRecord::parse_line(&text).unwrap(), ok);
        // A command aborted by its CHECK certainly did not take effect.
        let aborted = Err(ClientError::CheckFailed {
            index: 1,
            key: key("t2"),
            actual: Some(b"x".to_vec()),
        });
        let fail = HistoryRecord::new(1, 10, 20, hops, &aborted);
        assert_eq!(fail.status, Status::Fail);
        let text = line_of(&fail);
        assert!(text.contains(r#""status":"fail""#), "{text}");
        assert!(!text.contains("results"));
        assert_eq!(HistoryRecord::parse_line(&text).unwrap(), fail);
    }

    #[test]
    fn error_statuses_follow_what_is_known_of_the_effect() {
        use crate::op::OpError;
        let fail = [
            ClientError::Invalid {
                index: None,
                error: OpError::EmptyCommand,
            },
            ClientError::Rejected("r".into()),
            ClientError::Unavailable("u".into()),
        ];
        for e in fail {
            assert_eq!(Status::of_error(&e), Status::Fail);
        }
        assert_eq!(
            Status::of_error(&ClientError::UnknownOutcome("x".into())),
            Status::Unknown
        );
    }

    #[test]
    fn rejects_inconsistent_lines() {
        let bad = [
            // results for a command that did not succeed
            r#"{"client":0,"invoke":1,"complete":null,"status":"unknown","ops":[["GET","t1"]],"results":[null]}"#,
            // an ok command without results
            r#"{"client":0,"invoke":1,"complete":2,"status":"ok","ops":[["GET","t1"]]}"#,
            // result count mismatch
            r#"{"client":0,"invoke":1,"complete":2,"status":"ok","ops":[["GET","t1"]],"results":[]}"#,
            // a PUT result that is not found/not_found
            r#"{"client":0,"invoke":1,"complete":2,"status":"ok","ops":[["PUT","t1","v"]],"results":["bob"]}"#,
            // unknown with a completion time
            r#"{"client":0,"invoke":1,"complete":2,"status":"unknown","ops":[["GET","t1"]]}"#,
            // bad operation, bad key, bad arity
            r#"{"client":0,"invoke":1,"complete":2,"status":"fail","ops":[["FROB","t1"]]}"#,
            r#"{"client":0,"invoke":1,"complete":2,"status":"fail","ops":[["GET","12"]]}"#,
            r#"{"client":0,"invoke":1,"complete":2,"status":"fail","ops":[["PUT","t1"]]}"#,
            r#"{"client":0,"invoke":1,"complete":2,"status":"fail","ops":[[]]}"#,
            // `null` is only a CHECK's expected value; a CHECK's result is "ok"
            r#"{"client":0,"invoke":1,"complete":2,"status":"fail","ops":[["PUT","t1",null]]}"#,
            r#"{"client":0,"invoke":1,"complete":2,"status":"fail","ops":[["CHECK",null,"v"]]}"#,
            r#"{"client":0,"invoke":1,"complete":2,"status":"fail","ops":[["CHECK","t1"]]}"#,
            r#"{"client":0,"invoke":1,"complete":2,"status":"ok","ops":[["CHECK","t1","v"]],"results":["v"]}"#,
            r#"{"client":0,"invoke":1,"complete":2,"status":"ok","ops":[["CHECK","t1",null]],"results":[null]}"#,
        ];
        for line in bad {
            assert!(HistoryRecord::parse_line(line).is_err(), "accepted {line}");
        }
    }

    #[test]
    fn reads_a_whole_file_and_names_the_bad_line() {
        let good = format!("{SPEC_EXAMPLE_LINE}\n\n{SPEC_EXAMPLE_LINE}\n");
        assert_eq!(read_history(good.as_bytes()).unwrap().len(), 2);
        let bad = format!("{SPEC_EXAMPLE_LINE}\nnot json\n");
        let err = read_history(bad.as_bytes()).unwrap_err();
        assert!(err.to_string().starts_with("history line 2:"), "{err}");
    }
}
