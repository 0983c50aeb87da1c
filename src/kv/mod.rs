//! The key-value state machine: one ordered map per partition.
//!
//! A command's operations are validated as a whole first, then applied one
//! after another with nothing able to fail in between, so a command is all or
//! nothing. The store is a plain deterministic value: the same commands in the
//! same order give the same state on every replica.

use crate::key::Key;
use crate::map::Partition;
use crate::op::{Op, OpResult, RESULT_BYTES_MAX, RESULT_OVERHEAD_BYTES, SCAN_RESULT_ROWS_MAX};
use std::collections::BTreeMap;

/// Why a command was refused by a partition. Nothing was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum ApplyError {
    #[error("key {key} is not in partition {partition} ({table}[{start}, {end}))")]
    WrongPartition {
        key: String,
        partition: u64,
        table: String,
        start: u64,
        end: String,
    },
    #[error(
        "SCAN {start}..{end} would return more than {SCAN_RESULT_ROWS_MAX} rows; narrow the range"
    )]
    ScanTooLarge { start: String, end: String },
    #[error("the results of this command from partition {partition} (GET and SWAP values, SCAN rows) would exceed {RESULT_BYTES_MAX} bytes; split it into smaller commands or narrow its SCANs")]
    ResultTooLarge { partition: u64 },
    #[error("invalid operation: {0}")]
    Invalid(String),
}

/// One partition's data: key number -> value, within one table's range.
/// Serializable: a snapshot is exactly this value.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionStore {
    range: Partition,
    data: BTreeMap<u64, Vec<u8>>,
    /// Client session id -> (last command sequence number, its outcome), so a
    /// retried command returns its first outcome instead of running again.
    /// The outcome of a read-only command is not kept (`None`): running it
    /// again is harmless, and SCAN results can be large.
    sessions: BTreeMap<u64, (u64, Option<Outcome>)>,
}

/// What a command came to: one result per operation, or why none applied.
pub type Outcome = Result<Vec<OpResult>, ApplyError>;

/// Why a command was refused as a duplicate (see [`PartitionStore::execute_once`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("request {seq} of session {session} is older than its last request {last}; not executed")]
pub struct StaleRequest {
    pub session: u64,
    pub seq: u64,
    pub last: u64,
}

impl PartitionStore {
    pub fn new(range: Partition) -> PartitionStore {
        PartitionStore {
            range,
            data: BTreeMap::new(),
            sessions: BTreeMap::new(),
        }
    }

    pub fn range(&self) -> &Partition {
        &self.range
    }

    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn check_key(&self, key: &Key) -> Result<(), ApplyError> {
        if key.table == self.range.table && self.range.contains(key.num) {
            Ok(())
        } else {
            Err(ApplyError::WrongPartition {
                key: key.to_string(),
                partition: self.range.id,
                table: self.range.table.clone(),
                start: self.range.start,
                end: self
                    .range
                    .end
                    .map_or_else(|| "inf".to_string(), |e| e.to_string()),
            })
        }
    }

    /// The part of `[start, end]` this partition holds, if any.
    fn clip(&self, start: &Key, end: &Key) -> Option<(u64, u64)> {
        if start.table != self.range.table || end.table != self.range.table {
            return None;
        }
        let lo = start.num.max(self.range.start);
        let hi = end.num.min(self.range.last());
        (lo <= hi).then_some((lo, hi))
    }

    /// Checks that every operation can be applied here and that the results
    /// fit in a reply ([`RESULT_BYTES_MAX`], counted as the command will
    /// produce them: a GET after a PUT of the same key returns the new
    /// value). It depends only on the state and `ops`, so every replica
    /// decides the same. After this succeeds, [`PartitionStore::apply`]
    /// cannot fail.
    pub fn validate(&self, ops: &[Op]) -> Result<(), ApplyError> {
        let too_large = || ApplyError::ResultTooLarge {
            partition: self.range.id,
        };
        let mut result_bytes = 0usize;
        // The value length of each key as this command's earlier operations
        // left it (`None`: deleted).
        let mut written: BTreeMap<u64, Option<usize>> = BTreeMap::new();
        let len_now = |written: &BTreeMap<u64, Option<usize>>, num: u64| match written.get(&num) {
            Some(len) => *len,
            None => self.data.get(&num).map(Vec::len),
        };
        for op in ops {
            op.validate()
                .map_err(|e| ApplyError::Invalid(e.to_string()))?;
            let value_bytes = match op {
                Op::Scan { start, end } => {
                    // A SCAN may be wider than the partition (the client
                    // splits it); it only has to be in this table.
                    if start.table != self.range.table {
                        self.check_key(start)?;
                    }
                    let Some((lo, hi)) = self.clip(start, end) else {
                        result_bytes += RESULT_OVERHEAD_BYTES;
                        continue;
                    };
                    if self.data.range(lo..=hi).nth(SCAN_RESULT_ROWS_MAX).is_some() {
                        return Err(ApplyError::ScanTooLarge {
                            start: start.to_string(),
                            end: end.to_string(),
                        });
                    }
                    let row = self.range.table.len() + 20 + RESULT_OVERHEAD_BYTES;
                    let mut bytes = 0usize;
                    for (num, value) in self.data.range(lo..=hi) {
                        let len = written.get(num).copied().unwrap_or(Some(value.len()));
                        bytes += len.map_or(0, |len| row + len);
                        if result_bytes + bytes > RESULT_BYTES_MAX {
                            return Err(too_large());
                        }
                    }
                    // Keys this command created in the range.
                    for (num, len) in written.range(lo..=hi) {
                        if !self.data.contains_key(num) {
                            bytes += len.map_or(0, |len| row + len);
                        }
                    }
                    bytes
                }
                Op::Get { key } => {
                    self.check_key(key)?;
                    len_now(&written, key.num).unwrap_or(0)
                }
                Op::Swap { key, value } => {
                    self.check_key(key)?;
                    let old = len_now(&written, key.num);
                    if old.is_some() {
                        written.insert(key.num, Some(value.len()));
                    }
                    old.unwrap_or(0)
                }
                Op::Put { key, value } => {
                    self.check_key(key)?;
                    written.insert(key.num, Some(value.len()));
                    0
                }
                Op::Delete { key } => {
                    self.check_key(key)?;
                    written.insert(key.num, None);
                    0
                }
            };
            result_bytes += RESULT_OVERHEAD_BYTES + value_bytes;
            if result_bytes > RESULT_BYTES_MAX {
                return Err(too_large());
            }
        }
        Ok(())
    }

    /// Validates, then applies every operation in order, atomically.
    pub fn execute(&mut self, ops: &[Op]) -> Result<Vec<OpResult>, ApplyError> {
        self.validate(ops)?;
        Ok(ops.iter().map(|op| self.apply(op)).collect())
    }

    /// Executes a command of a sequential client session at most once.
    ///
    /// Sessions number their commands 1, 2, 3, ... and send the next only after
    /// the previous one's reply. A retry carries the same number and gets the
    /// recorded outcome back without running again; an older number (a delayed
    /// duplicate) is refused. Memory: one entry per session ever seen (expiry
    /// comes with replication, where it must be deterministic).
    pub fn execute_once(
        &mut self,
        session: u64,
        seq: u64,
        ops: &[Op],
    ) -> Result<Outcome, StaleRequest> {
        #[cfg(feature = "sim")]
        let duplicate_apply = crate::bugs::enabled(crate::bugs::Bug::DuplicateApply);
        #[cfg(not(feature = "sim"))]
        let duplicate_apply = false;
        let last = self
            .sessions
            .get(&session)
            .filter(|_| !duplicate_apply)
            .map(|(last, _)| *last);
        match last {
            Some(last) if seq < last => {
                return Err(StaleRequest { session, seq, last });
            }
            Some(last) if seq == last => {
                let result = match &self.sessions[&session].1 {
                    Some(outcome) => outcome.clone(),
                    // A retried read-only command: running it again is safe.
                    None => self.execute(ops),
                };
                return Ok(result);
            }
            _ => {}
        }
        let outcome = self.execute(ops);
        let writes = ops.iter().any(Op::is_write);
        self.sessions
            .insert(session, (seq, writes.then(|| outcome.clone())));
        Ok(outcome)
    }

    /// Applies one already-validated operation.
    fn apply(&mut self, op: &Op) -> OpResult {
        match op {
            Op::Put { key, value } => OpResult::Put {
                found: self.data.insert(key.num, value.clone()).is_some(),
            },
            Op::Get { key } => OpResult::Get(self.data.get(&key.num).cloned()),
            Op::Swap { key, value } => match self.data.get_mut(&key.num) {
                Some(slot) => OpResult::Swap(Some(std::mem::replace(slot, value.clone()))),
                None => OpResult::Swap(None),
            },
            Op::Delete { key } => OpResult::Delete {
                found: self.data.remove(&key.num).is_some(),
            },
            Op::Scan { start, end } => OpResult::Scan(match self.clip(start, end) {
                Some((lo, hi)) => self
                    .data
                    .range(lo..=hi)
                    .map(|(num, value)| (Key::new(self.range.table.clone(), *num), value.clone()))
                    .collect(),
                None => Vec::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::parse_op;

    fn store() -> PartitionStore {
        PartitionStore::new(Partition {
            id: 7,
            table: "t".into(),
            start: 10,
            end: Some(20),
            replicas: vec![0],
        })
    }

    fn run(s: &mut PartitionStore, lines: &[&str]) -> Result<Vec<OpResult>, ApplyError> {
        let ops: Vec<Op> = lines.iter().map(|l| parse_op(l).unwrap()).collect();
        s.execute(&ops)
    }

    #[test]
    fn put_get_swap_delete_follow_the_spec() {
        let mut s = store();
        let r = run(
            &mut s,
            &[
                "PUT t10 a",
                "PUT t10 b",
                "GET t10",
                "SWAP t11 x",
                "GET t11",
                "SWAP t10 c",
                "DELETE t10",
                "DELETE t10",
                "GET t10",
            ],
        )
        .unwrap();
        assert_eq!(
            r,
            vec![
                OpResult::Put { found: false },
                OpResult::Put { found: true },
                OpResult::Get(Some(b"b".to_vec())),
                OpResult::Swap(None),
                OpResult::Get(None),
                OpResult::Swap(Some(b"b".to_vec())),
                OpResult::Delete { found: true },
                OpResult::Delete { found: false },
                OpResult::Get(None),
            ]
        );
    }

    #[test]
    fn scan_is_inclusive_ordered_and_clipped_to_the_partition() {
        let mut s = store();
        run(&mut s, &["PUT t12 a", "PUT t19 b", "PUT t10 c"]).unwrap();
        let r = run(&mut s, &["SCAN t0 t12", "SCAN t12 t100", "SCAN t15 t11"]).unwrap();
        let rows = |v: &[(u64, &str)]| {
            OpResult::Scan(
                v.iter()
                    .map(|(n, val)| (Key::new("t", *n), val.as_bytes().to_vec()))
                    .collect(),
            )
        };
        assert_eq!(r[0], rows(&[(10, "c"), (12, "a")]));
        assert_eq!(r[1], rows(&[(12, "a"), (19, "b")]));
        assert_eq!(r[2], rows(&[]));
    }

    #[test]
    fn a_retried_command_is_applied_once_and_returns_its_first_reply() {
        let mut s = store();
        let ops = vec![parse_op("PUT t10 a").unwrap()];
        let first = s.execute_once(1, 1, &ops).unwrap();
        assert_eq!(first, Ok(vec![OpResult::Put { found: false }]));
        // The retry would answer `found` if it ran again.
        let retry = s.execute_once(1, 1, &ops).unwrap();
        assert_eq!(
            retry, first,
            "a deduplicated retry answers the first outcome"
        );
        assert_eq!(
            s.execute_once(1, 2, &ops).unwrap(),
            Ok(vec![OpResult::Put { found: true }])
        );
        assert!(
            s.execute_once(1, 1, &ops).is_err(),
            "stale duplicate refused"
        );
        // Another session is independent.
        assert_eq!(
            s.execute_once(2, 1, &ops).unwrap(),
            Ok(vec![OpResult::Put { found: true }])
        );
        let read = s
            .execute_once(2, 2, &[parse_op("GET t10").unwrap()])
            .unwrap();
        assert_eq!(read, Ok(vec![OpResult::Get(Some(b"a".to_vec()))]));
    }

    fn big_store(keys: u64) -> PartitionStore {
        let mut s = PartitionStore::new(Partition {
            id: 3,
            table: "t".into(),
            start: 0,
            end: None,
            replicas: vec![0],
        });
        let value = vec![b'v'; crate::op::VALUE_LEN_MAX];
        for num in 0..keys {
            s.data.insert(num, value.clone());
        }
        s
    }

    fn gets(nums: impl Iterator<Item = u64>) -> Vec<Op> {
        nums.map(|num| Op::Get {
            key: Key::new("t", num),
        })
        .collect()
    }

    /// The encoded reply to `results`, as the server would send it.
    fn reply_len(results: Vec<OpResult>) -> usize {
        let reply = crate::wire::Msg::ExecuteReply {
            req: u64::MAX,
            result: Ok(results),
        };
        crate::wire::encode_msg(&reply).unwrap().len()
    }

    #[test]
    fn a_command_whose_results_exceed_the_reply_limit_is_refused_whole() {
        let mut s = big_store(300);
        let err = s.execute(&gets(0..300)).unwrap_err();
        assert_eq!(err, ApplyError::ResultTooLarge { partition: 3 });
        // A write in an oversized command is not applied either, and the
        // session table keeps only the small refusal.
        let before = s.data.clone();
        let mut ops = vec![Op::Put {
            key: Key::new("t", 1000),
            value: b"w".to_vec(),
        }];
        ops.extend(gets(0..100));
        ops.push(Op::Swap {
            key: Key::new("t", 0),
            value: b"w".to_vec(),
        });
        let executed = s.execute_once(9, 1, &ops).unwrap();
        assert_eq!(executed, Err(ApplyError::ResultTooLarge { partition: 3 }));
        assert_eq!(s.data, before, "nothing of the command was applied");
        // The largest command that fits is answered, and its reply fits in
        // a frame with room to spare.
        let fit = RESULT_BYTES_MAX / (crate::op::VALUE_LEN_MAX + RESULT_OVERHEAD_BYTES);
        assert!(s.execute(&gets(0..fit as u64 + 1)).is_err());
        let results = s.execute(&gets(0..fit as u64)).unwrap();
        assert!(reply_len(results) <= RESULT_BYTES_MAX);
    }

    #[test]
    fn result_bytes_count_the_commands_own_writes() {
        // Empty store: only the command's own PUT makes the GETs large.
        let mut s = big_store(0);
        let mut ops = vec![Op::Put {
            key: Key::new("t", 5),
            value: vec![b'v'; crate::op::VALUE_LEN_MAX],
        }];
        ops.extend(gets(std::iter::repeat_n(5, 70)));
        assert_eq!(
            s.execute(&ops),
            Err(ApplyError::ResultTooLarge { partition: 3 })
        );
        // A DELETE before the GETs makes them small again.
        ops.insert(
            1,
            Op::Delete {
                key: Key::new("t", 5),
            },
        );
        assert!(s.execute(&ops).is_ok());
        // SCANs count rows the command created, and across SCANs.
        let mut s = big_store(30);
        let scan = Op::Scan {
            start: Key::new("t", 0),
            end: Key::new("t", 100),
        };
        assert!(s.execute(&[scan.clone(), scan.clone()]).is_ok());
        let mut ops: Vec<Op> = (30..64)
            .map(|num| Op::Put {
                key: Key::new("t", num),
                value: vec![b'v'; crate::op::VALUE_LEN_MAX],
            })
            .collect();
        ops.push(scan.clone());
        let before = s.data.clone();
        assert_eq!(
            s.execute(&ops),
            Err(ApplyError::ResultTooLarge { partition: 3 })
        );
        assert_eq!(s.data, before);
        assert_eq!(
            s.execute(&[scan.clone(), scan.clone(), scan]),
            Err(ApplyError::ResultTooLarge { partition: 3 })
        );
    }

    #[test]
    fn a_command_with_one_bad_operation_applies_nothing() {
        let mut s = store();
        let before = s.clone();
        let err = run(&mut s, &["PUT t10 a", "PUT t25 b"]).unwrap_err();
        assert!(matches!(err, ApplyError::WrongPartition { .. }), "{err}");
        assert_eq!(s, before, "the first PUT must not have been applied");
        let err = run(&mut s, &["PUT t10 a", "GET u10"]).unwrap_err();
        assert!(matches!(err, ApplyError::WrongPartition { .. }), "{err}");
        assert_eq!(s, before);
    }
}
