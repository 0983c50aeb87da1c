//! The key-value state machine: one ordered map per partition.
//!
//! A command's operations are validated as a whole first, then applied one
//! after another with nothing able to fail in between, so a command is all or
//! nothing. The store is a plain deterministic value: the same commands in the
//! same order give the same state on every replica.

use crate::key::Key;
use crate::map::Partition;
use crate::op::{Op, OpResult, SCAN_RESULT_BYTES_MAX, SCAN_RESULT_ROWS_MAX};
use imbl::OrdMap;

mod ordmap_serde;

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
    #[error("the SCANs of this command would return more than {SCAN_RESULT_BYTES_MAX} bytes from one partition; narrow the range")]
    ScanTooManyBytes,
    #[error("invalid operation: {0}")]
    Invalid(String),
}

/// One partition's data: key number -> value, within one table's range.
/// Serializable: a snapshot is exactly this value.
///
/// Both maps are persistent B-trees (`imbl::OrdMap`): `clone` is O(1) and
/// shares structure, so a checkpoint or a snapshot for a follower takes a
/// point-in-time copy without stopping the replica (ARCHITECTURE.md,
/// "Snapshots and large partitions"). They serialize like a `BTreeMap`
/// (length, then pairs in key order).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionStore {
    range: Partition,
    #[serde(deserialize_with = "ordmap_serde::deserialize")]
    data: OrdMap<u64, Vec<u8>>,
    /// Client session id -> (last command sequence number, its outcome), so a
    /// retried command returns its first outcome instead of running again.
    /// The outcome of a read-only command is not kept (`None`): running it
    /// again is harmless, and SCAN results can be large.
    #[serde(deserialize_with = "ordmap_serde::deserialize")]
    sessions: OrdMap<u64, (u64, Option<Outcome>)>,
}

/// What a command came to: one result per operation, or why none applied.
pub type Outcome = Result<Vec<OpResult>, ApplyError>;

/// The outcome of [`PartitionStore::execute_once`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    pub result: Result<Vec<OpResult>, ApplyError>,
    /// Whether this call changed the state (ran now, succeeded, and wrote):
    /// exactly the commands a durable server must log.
    pub changed: bool,
}

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
            data: OrdMap::new(),
            sessions: OrdMap::new(),
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

    /// Checks that every operation can be applied here. After this succeeds,
    /// [`PartitionStore::apply`] cannot fail.
    pub fn validate(&self, ops: &[Op]) -> Result<(), ApplyError> {
        let mut scan_bytes = 0usize;
        for op in ops {
            op.validate()
                .map_err(|e| ApplyError::Invalid(e.to_string()))?;
            match op {
                Op::Scan { start, end } => {
                    // A SCAN may be wider than the partition (the client
                    // splits it); it only has to be in this table.
                    if start.table != self.range.table {
                        self.check_key(start)?;
                    }
                    if let Some((lo, hi)) = self.clip(start, end) {
                        if self.data.range(lo..=hi).nth(SCAN_RESULT_ROWS_MAX).is_some() {
                            return Err(ApplyError::ScanTooLarge {
                                start: start.to_string(),
                                end: end.to_string(),
                            });
                        }
                        let row_key = self.range.table.len() + 20;
                        for (_, value) in self.data.range(lo..=hi) {
                            scan_bytes += row_key + value.len();
                            if scan_bytes > SCAN_RESULT_BYTES_MAX {
                                return Err(ApplyError::ScanTooManyBytes);
                            }
                        }
                    }
                }
                Op::Put { key, .. }
                | Op::Get { key }
                | Op::Swap { key, .. }
                | Op::Delete { key } => self.check_key(key)?,
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
    ) -> Result<Executed, StaleRequest> {
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
                return Ok(Executed {
                    result,
                    changed: false,
                });
            }
            _ => {}
        }
        let outcome = self.execute(ops);
        let writes = ops.iter().any(Op::is_write);
        let changed = outcome.is_ok() && writes;
        self.sessions
            .insert(session, (seq, writes.then(|| outcome.clone())));
        Ok(Executed {
            result: outcome,
            changed,
        })
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
        assert_eq!(first.result, Ok(vec![OpResult::Put { found: false }]));
        assert!(first.changed);
        // The retry would answer `found` if it ran again.
        let retry = s.execute_once(1, 1, &ops).unwrap();
        assert_eq!(retry.result, first.result);
        assert!(!retry.changed, "a deduplicated retry changes nothing");
        assert_eq!(
            s.execute_once(1, 2, &ops).unwrap().result,
            Ok(vec![OpResult::Put { found: true }])
        );
        assert!(
            s.execute_once(1, 1, &ops).is_err(),
            "stale duplicate refused"
        );
        // Another session is independent.
        assert_eq!(
            s.execute_once(2, 1, &ops).unwrap().result,
            Ok(vec![OpResult::Put { found: true }])
        );
        let read = s
            .execute_once(2, 2, &[parse_op("GET t10").unwrap()])
            .unwrap();
        assert!(!read.changed, "reads are not logged");
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
