//! The key-value state machine: one ordered map per partition.
//!
//! A command's operations are validated as a whole first, then applied one
//! after another with nothing able to fail in between, so a command is all or
//! nothing. The store is a plain deterministic value: the same commands in the
//! same order give the same state on every replica.
//!
//! It also keeps the client session table that makes retries safe, and
//! expires idle sessions by *log time*: the leader stamps its clock into
//! every command it proposes, and every replica's log time is the largest
//! stamp applied so far, so expiry happens at the same log position
//! everywhere (Raft dissertation §6.3). ARCHITECTURE.md "Sessions" argues
//! why an expired session never gets a command applied twice.

use crate::key::Key;
use crate::map::{split_child_id, NodeId, Partition, PartitionId, SplitOff};
use crate::op::{Op, OpResult, RESULT_BYTES_MAX, RESULT_OVERHEAD_BYTES, SCAN_RESULT_ROWS_MAX};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

mod export;
mod ordmap_serde;
mod txn;

pub use export::{ExportPage, ExportRow, EXPORT_PAGE_BYTES_MAX};

pub use txn::{
    conflicts, AbortReason, Finished, Prepare, Resolution, TxnId, TxnOp, TxnOutcome, TxnState,
    WaitKey,
};
use txn::{QueueKey, TxnRecord, Waiting};

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
    /// Operation `op` (0-based, in the command as this partition got it) is
    /// a CHECK that did not hold: `key` held `actual` (`None`: absent) at
    /// that point of the command. Added last, so the encodings of the other
    /// variants are unchanged.
    #[error("check failed: op {} ({key} holds {})", op + 1, actual.as_deref().map_or_else(|| "null".into(), String::from_utf8_lossy))]
    CheckFailed {
        op: usize,
        key: Key,
        actual: Option<Vec<u8>>,
    },
    /// An EXPORT sent as a plain command: its copies are taken only by a
    /// transaction's prepares (the client library runs it as one).
    #[error("EXPORT runs only as a transaction")]
    ExportOutsideTxn,
}

/// One partition's data: key number -> value, within one table's range.
/// Serializable: a snapshot is exactly this value.
///
/// The data and the session table are persistent B-trees (`imbl::OrdMap`):
/// `clone` is O(1) and shares structure, so a checkpoint or a snapshot for a
/// follower takes a point-in-time copy without stopping the replica
/// (ARCHITECTURE.md, "Snapshots and large partitions"). They serialize like
/// a `BTreeMap` (length, then pairs in key order).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStore {
    range: Partition,
    #[serde(deserialize_with = "ordmap_serde::deserialize")]
    data: OrdMap<u64, Vec<u8>>,
    /// Client session id -> its last command, so a retried command returns
    /// its first outcome instead of running again.
    #[serde(deserialize_with = "ordmap_serde::deserialize")]
    sessions: OrdMap<u64, SessionRecord>,
    /// The same sessions ordered by `(last_ms, session)`: the idlest first,
    /// so expiry takes only the expired ones. (A plain set: the table is
    /// bounded by expiry, so copying it with a snapshot is cheap.)
    idle: BTreeSet<(u64, u64)>,
    /// Log time, ms since the Unix epoch: the largest leader stamp of the
    /// commands applied so far. Never goes backwards.
    log_time_ms: u64,
    /// Cross-partition transaction attempts this partition took part in:
    /// prepared ones (holding locks) and, until they expire like sessions,
    /// resolved ones (so a duplicate or late message gets the same answer).
    #[serde(deserialize_with = "ordmap_serde::deserialize")]
    txns: OrdMap<TxnId, TxnRecord>,
    /// The prepared ones among them, with their prepares (the locks they
    /// hold): conflict checks go through these alone.
    prepared: BTreeMap<TxnId, Prepare>,
    /// Resolved ones by `(done_ms, id)`, oldest first, for expiry: with
    /// their results, then (`txn_markers`) only their fate.
    txn_idle: BTreeSet<(u64, TxnId)>,
    txn_markers: BTreeSet<(u64, TxnId)>,
    /// Requests waiting for locks, oldest first (see `txn`): run by the
    /// state machine itself as soon as they can, so nothing overtakes them.
    queue: BTreeMap<QueueKey, Waiting>,
    /// Ranges split off this partition, oldest first (see
    /// [`PartitionStore::begin_split`]).
    splits: Vec<SplitOff>,
    /// A split decided and waiting for locks on the keys it moves.
    split_pending: Option<PendingSplit>,
    /// Bytes of data held: every value's length plus 8 per key.
    bytes: u64,
    /// Queued requests that finished while applying the last entry, for
    /// the leader to answer (not replicated state: derived from the log).
    #[serde(skip)]
    finished: Vec<Finished>,
    /// Point-in-time copies kept for backups (see `export`; not replicated
    /// state either).
    #[serde(skip)]
    exports: export::Exports,
}

/// A split begun and not done yet (see [`PartitionStore::begin_split`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct PendingSplit {
    /// The new partition's first key number.
    at: u64,
    /// The index of the entry that began it.
    index: u64,
    /// Injected bug `SplitMissesLastWrites`: the data when the split began,
    /// which the new partition gets instead of the data when it is done.
    #[cfg(feature = "sim")]
    #[serde(skip)]
    data_at_start: Option<OrdMap<u64, Vec<u8>>>,
}

/// Whether `op` touches a key from `at` on (in its table).
fn op_reaches(op: &Op, at: u64) -> bool {
    match op {
        Op::Scan { end, .. } | Op::Export { end, .. } => end.num >= at,
        Op::Put { key, .. }
        | Op::Get { key }
        | Op::Swap { key, .. }
        | Op::Delete { key }
        | Op::Check { key, .. } => key.num >= at,
    }
}

/// Bytes a key and its value count for in [`PartitionStore::bytes`].
fn entry_bytes(value: &[u8]) -> u64 {
    8 + value.len() as u64
}

/// A session's entry in the session table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRecord {
    /// The sequence number of its last command here (or of its last
    /// transaction prepared here).
    seq: u64,
    /// That command's outcome. Not kept for a read-only command (`None`):
    /// running it again is harmless, and SCAN results can be large.
    outcome: Option<Outcome>,
    /// Log time of its last command here; it expires when log time passes
    /// this by more than the session TTL.
    last_ms: u64,
}

/// A client command as it travels in a Raft entry: the client's request
/// and the proposing leader's stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub session: u64,
    pub seq: u64,
    /// The client's wall-clock time (ms since the Unix epoch) when it first
    /// sent this command; every retry carries the same. A partition that
    /// does not know the session runs the command only if this is recent
    /// (see [`PartitionStore::execute_once`]).
    pub sent_ms: u64,
    /// The proposing leader's wall-clock time (ms since the Unix epoch).
    pub time_ms: u64,
    /// The proposing leader's session TTL: sessions idle longer than this
    /// (in log time) are dropped when this command applies.
    pub session_ttl_ms: u64,
    pub ops: Vec<Op>,
}

impl Command {
    /// A command without a time stamp: it leaves log time alone and
    /// expires nothing (for tests and tools that replay commands).
    pub fn untimed(session: u64, seq: u64, ops: Vec<Op>) -> Command {
        Command {
            session,
            seq,
            sent_ms: 0,
            time_ms: 0,
            session_ttl_ms: u64::MAX,
            ops,
        }
    }
}

/// An entry of a partition's Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogCommand {
    /// A client command on this partition alone.
    Command(Command),
    /// A step of a cross-partition transaction, stamped like a command.
    Txn {
        time_ms: u64,
        session_ttl_ms: u64,
        op: TxnOp,
    },
    /// Split the keys from `at` on off into a new partition
    /// ([`PartitionStore::begin_split`]), if the range still ends at `end`.
    Split { at: u64, end: Option<u64> },
}

/// What a command came to: one result per operation, or why none applied.
pub type Outcome = Result<Vec<OpResult>, ApplyError>;

/// Why a command was refused as a duplicate (see [`PartitionStore::execute_once`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("request {seq} of session {session} is older than its last request {last}; not executed")]
pub struct StaleRequest {
    pub session: u64,
    pub seq: u64,
    pub last: u64,
}

/// Why a command was refused because its session expired here (see
/// [`PartitionStore::execute_once`]). This command was not executed; an
/// earlier attempt of it, or an earlier command of the session, may have
/// been.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("session {session} expired in partition {partition} (idle longer than the session TTL of {ttl_s} s, or a request delayed that long); request {seq} was not executed, and an earlier request of the session may or may not have been")]
pub struct SessionExpired {
    pub session: u64,
    pub seq: u64,
    pub partition: u64,
    pub ttl_s: u64,
}

/// Why [`PartitionStore::execute_once`] did not run a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Stale(#[from] StaleRequest),
    #[error(transparent)]
    Expired(#[from] SessionExpired),
    /// It touches keys a prepared transaction holds: it waits in the
    /// partition's queue and runs once it can ([`PartitionStore::take_finished`]).
    #[error("waiting for a prepared transaction's locks")]
    Queued,
}

impl PartitionStore {
    pub fn new(range: Partition) -> PartitionStore {
        PartitionStore {
            range,
            data: OrdMap::new(),
            sessions: OrdMap::new(),
            idle: BTreeSet::new(),
            log_time_ms: 0,
            txns: OrdMap::new(),
            prepared: BTreeMap::new(),
            txn_idle: BTreeSet::new(),
            txn_markers: BTreeSet::new(),
            queue: BTreeMap::new(),
            splits: Vec::new(),
            split_pending: None,
            bytes: 0,
            finished: Vec::new(),
            exports: export::Exports::default(),
        }
    }

    /// Bytes of data held (values plus 8 per key).
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The ranges split off this partition so far, oldest first.
    pub fn splits(&self) -> &[SplitOff] {
        &self.splits
    }

    /// The key a split would best happen at: the middle key, so each half
    /// gets about half the keys. `None` if there are fewer than two keys.
    pub fn middle_key(&self) -> Option<u64> {
        if self.data.len() < 2 {
            return None;
        }
        self.data.keys().nth(self.data.len() / 2).copied()
    }

    /// Starts a range split, the state machine side of it (ARCHITECTURE.md,
    /// "Range splits"), applied from the entry at `index` of this
    /// partition's log: the keys from `at` on are to become a new partition
    /// (id [`split_child_id`]`(self, index)`). The split itself happens at
    /// the first entry after which no prepared transaction and no queued
    /// request touches a key from `at` on (at once if none does; see
    /// [`PartitionStore::split_ready`]); meanwhile new prepares that touch
    /// those keys are refused as conflicts (their coordinators retry them,
    /// and after the split route them to the new partition), so it never
    /// waits for long. Deterministic, like everything the log applies.
    ///
    /// Refused (nothing changes) when the range does not end at `end` any
    /// more (an earlier split won), when `at` is not inside the range, or
    /// while another split is pending.
    pub fn begin_split(&mut self, index: u64, at: u64, end: Option<u64>) -> Result<(), String> {
        if let Some(p) = &self.split_pending {
            return Err(format!(
                "partition {} is already splitting at {}",
                self.range.id,
                Key::new(self.range.table.clone(), p.at)
            ));
        }
        if self.range.end != end {
            return Err(format!(
                "partition {} changed since the split was proposed (it ends at {}, not {})",
                self.range.id,
                self.range.end.map_or("inf".into(), |e| e.to_string()),
                end.map_or("inf".into(), |e| e.to_string()),
            ));
        }
        if at <= self.range.start || !self.range.contains(at) {
            return Err(format!(
                "{} is not inside partition {} ({}[{}, {})): a split needs keys on both sides",
                Key::new(self.range.table.clone(), at),
                self.range.id,
                self.range.table,
                self.range.start,
                self.range.end.map_or("inf".into(), |e| e.to_string()),
            ));
        }
        self.split_pending = Some(PendingSplit {
            at,
            index,
            #[cfg(feature = "sim")]
            data_at_start: crate::bug!(SplitMissesLastWrites).then(|| self.data.clone()),
        });
        Ok(())
    }

    /// The pending split's point and the id of the partition it makes, if
    /// a split is pending.
    pub fn pending_split(&self) -> Option<(u64, PartitionId)> {
        self.split_pending
            .as_ref()
            .map(|p| (p.at, split_child_id(self.range.id, p.index)))
    }

    /// Whether `ops` touch keys a pending split is moving (from its point
    /// on): a prepare that does is refused until the split is done.
    fn split_blocks(&self, ops: &[Op]) -> bool {
        self.split_pending
            .as_ref()
            .is_some_and(|p| ops.iter().any(|op| op_reaches(op, p.at)))
    }

    /// Whether the pending split can happen now: no prepared transaction
    /// and no queued request touches a key from its point on (those stay
    /// where their coordinators send their decisions).
    pub fn split_ready(&self) -> bool {
        self.split_pending.as_ref().is_some_and(|p| {
            let reaches = |ops: &[Op]| ops.iter().any(|op| op_reaches(op, p.at));
            !self.prepared.values().any(|t| reaches(&t.ops))
                && !self.queue.values().any(|w| reaches(w.ops()))
        })
    }

    /// Does the pending split (call when [`PartitionStore::split_ready`]):
    /// this store keeps the keys before the split point and returns the new
    /// partition's store, which gets the keys from it on, and copies of the
    /// session table and of the resolved transactions, so a retry of a
    /// command or a late transaction message that a newer map sends there
    /// gets the same answer as here. `voters` and `learners`: this group's
    /// membership at this point of its log, the new group's first.
    pub fn finish_split(&mut self, voters: Vec<NodeId>, learners: Vec<NodeId>) -> PartitionStore {
        let pending = self.split_pending.take().expect("a split is pending");
        let at = pending.at;
        let child = split_child_id(self.range.id, pending.index);
        #[cfg(feature = "sim")]
        let source = pending.data_at_start.unwrap_or_else(|| self.data.clone());
        #[cfg(not(feature = "sim"))]
        let source = self.data.clone();
        let right: OrdMap<u64, Vec<u8>> =
            source.range(at..).map(|(k, v)| (*k, v.clone())).collect();
        let moved: Vec<u64> = self.data.range(at..).map(|(k, _)| *k).collect();
        for k in moved {
            if let Some(v) = self.data.remove(&k) {
                self.bytes = self.bytes.saturating_sub(entry_bytes(&v));
            }
        }
        let right_bytes: u64 = right.values().map(|v| entry_bytes(v)).sum();
        let split = SplitOff {
            child,
            index: pending.index,
            start: at,
            end: self.range.end,
            voters: voters.clone(),
            learners,
        };
        let store = PartitionStore {
            range: Partition {
                id: child,
                table: self.range.table.clone(),
                start: at,
                end: self.range.end,
                replicas: voters,
            },
            data: right,
            sessions: self.sessions.clone(),
            idle: self.idle.clone(),
            log_time_ms: self.log_time_ms,
            txns: self.txns.clone(),
            prepared: BTreeMap::new(),
            txn_idle: self.txn_idle.clone(),
            txn_markers: self.txn_markers.clone(),
            queue: BTreeMap::new(),
            splits: Vec::new(),
            split_pending: None,
            bytes: right_bytes,
            finished: Vec::new(),
            exports: export::Exports::default(),
        };
        self.range.end = Some(at);
        self.splits.push(split);
        store
    }

    /// How many client sessions the table holds.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Log time, ms since the Unix epoch (0 before any stamped command).
    pub fn log_time_ms(&self) -> u64 {
        self.log_time_ms
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
    /// decides the same. It also evaluates every CHECK against the values
    /// the command's earlier operations leave, in order: the first that does
    /// not hold refuses the command ([`ApplyError::CheckFailed`]). After this
    /// succeeds, [`PartitionStore::apply`] cannot fail.
    pub fn validate(&self, ops: &[Op]) -> Result<(), ApplyError> {
        let too_large = || ApplyError::ResultTooLarge {
            partition: self.range.id,
        };
        if ops.iter().any(Op::is_export) && !ops.iter().all(Op::is_export) {
            return Err(ApplyError::Invalid(
                crate::op::OpError::ExportNotAlone.to_string(),
            ));
        }
        let mut result_bytes = 0usize;
        // The value of each key as this command's earlier operations left it
        // (`None`: deleted).
        let mut written: BTreeMap<u64, Option<&[u8]>> = BTreeMap::new();
        let len_now = |written: &BTreeMap<u64, Option<&[u8]>>, num: u64| match written.get(&num) {
            Some(value) => value.map(<[u8]>::len),
            None => self.data.get(&num).map(Vec::len),
        };
        for (i, op) in ops.iter().enumerate() {
            op.validate()
                .map_err(|e| ApplyError::Invalid(e.to_string()))?;
            let value_bytes = match op {
                Op::Scan { start, end } => {
                    // The client narrows a SCAN to each partition's range
                    // as its map has it: one that reaches past ours was
                    // routed by a map from before a split.
                    if start.table != self.range.table || start.num <= end.num {
                        self.check_key(start)?;
                        self.check_key(end)?;
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
                        let len = match written.get(num) {
                            Some(value) => value.map(<[u8]>::len),
                            None => Some(value.len()),
                        };
                        bytes += len.map_or(0, |len| row + len);
                        if result_bytes + bytes > RESULT_BYTES_MAX {
                            return Err(too_large());
                        }
                    }
                    // Keys this command created in the range.
                    for (num, value) in written.range(lo..=hi) {
                        if !self.data.contains_key(num) {
                            bytes += value.map_or(0, |value| row + value.len());
                        }
                    }
                    bytes
                }
                Op::Export { start, end } => {
                    // Routed like a SCAN; its rows come back page by page.
                    if start.table != self.range.table || start.num <= end.num {
                        self.check_key(start)?;
                        self.check_key(end)?;
                    }
                    0
                }
                Op::Get { key } => {
                    self.check_key(key)?;
                    len_now(&written, key.num).unwrap_or(0)
                }
                Op::Swap { key, value } => {
                    self.check_key(key)?;
                    let old = len_now(&written, key.num);
                    if old.is_some() {
                        written.insert(key.num, Some(value));
                    }
                    old.unwrap_or(0)
                }
                Op::Put { key, value } => {
                    self.check_key(key)?;
                    written.insert(key.num, Some(value));
                    0
                }
                Op::Delete { key } => {
                    self.check_key(key)?;
                    written.insert(key.num, None);
                    0
                }
                Op::Check { key, expected } => {
                    self.check_key(key)?;
                    let actual = match written.get(&key.num) {
                        Some(value) => *value,
                        None => self.data.get(&key.num).map(Vec::as_slice),
                    };
                    if actual != expected.as_deref() {
                        return Err(ApplyError::CheckFailed {
                            op: i,
                            key: key.clone(),
                            actual: actual.map(<[u8]>::to_vec),
                        });
                    }
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

    /// Executes a command of a sequential client session at most once, and
    /// expires idle sessions by log time.
    ///
    /// Sessions number their commands 1, 2, 3, ... and send the next only
    /// after the previous one's reply. A retry carries the same number and
    /// gets the recorded outcome back without running again; an older number
    /// (a delayed duplicate) is refused.
    ///
    /// First log time advances to the command's stamp (if later), and every
    /// session idle for longer than the command's TTL is dropped. A command
    /// of a session the table does not know runs only if the client first
    /// sent it (`sent_ms`, the client's clock) less than half a TTL before
    /// log time: an older one may be a retry or a late duplicate of a command
    /// that ran before its session expired, and running it again could apply
    /// it twice, so it is refused ([`SessionExpired`]).
    /// Everything here depends on the log alone, so every replica decides
    /// the same.
    pub fn execute_once(&mut self, command: &Command) -> Result<Outcome, SessionError> {
        self.advance_log_time(command.time_ms, command.session_ttl_ms);
        self.run_command(command, None)
    }

    /// Runs a command (see [`PartitionStore::execute_once`]); `queued`: it
    /// comes from the wait queue at that key.
    fn run_command(
        &mut self,
        command: &Command,
        queued: Option<QueueKey>,
    ) -> Result<Outcome, SessionError> {
        let Command {
            session,
            seq,
            sent_ms,
            session_ttl_ms,
            ref ops,
            ..
        } = *command;
        if queued.is_none() && self.is_queued(&WaitKey::Command { session, seq }) {
            return Err(SessionError::Queued);
        }
        if ops.iter().any(Op::is_export) {
            return Ok(Err(ApplyError::ExportOutsideTxn));
        }
        #[cfg(feature = "sim")]
        let duplicate_apply = crate::bugs::enabled(crate::bugs::Bug::DuplicateApply);
        #[cfg(not(feature = "sim"))]
        let duplicate_apply = false;
        let last = self
            .sessions
            .get(&session)
            .filter(|_| !duplicate_apply)
            .map(|record| record.seq);
        // A queued command's own place-holder (recorded when it was queued,
        // see `wait`) does not make it a retry; and it passed the freshness
        // rule below when it was queued, which is what makes running it
        // safe (it has not run anywhere, and duplicates find it queued).
        let last = last.filter(|&l| queued.is_none() || l != seq);
        let result = match last {
            None if queued.is_none()
                && sent_ms.saturating_add(session_ttl_ms / 2) < self.log_time_ms =>
            {
                return Err(SessionError::Expired(SessionExpired {
                    session,
                    seq,
                    partition: self.range.id,
                    ttl_s: session_ttl_ms / 1000,
                }));
            }
            Some(last) if seq < last => {
                return Err(StaleRequest { session, seq, last }.into());
            }
            Some(last) if seq == last => match &self.sessions[&session].outcome {
                Some(outcome) => outcome.clone(),
                None if self.command_must_wait(command, queued) => {
                    return Err(self.wait(command, queued))
                }
                // A retried read-only command: running it again is safe.
                None => self.execute(ops),
            },
            _ if self.command_must_wait(command, queued) => return Err(self.wait(command, queued)),
            _ => {
                let outcome = self.execute(ops);
                let writes = ops.iter().any(Op::is_write);
                self.record(session, seq, writes.then(|| outcome.clone()));
                return Ok(outcome);
            }
        };
        // A retry keeps its session alive too.
        let last_ms = self.log_time_ms;
        if let Some(record) = self.sessions.get_mut(&session) {
            self.idle.remove(&(record.last_ms, session));
            record.last_ms = last_ms;
            self.idle.insert((last_ms, session));
        }
        Ok(result)
    }

    /// Advances log time to a leader's stamp (if later) and drops what
    /// expired: idle sessions and old resolved transactions.
    fn advance_log_time(&mut self, time_ms: u64, ttl_ms: u64) {
        self.log_time_ms = self.log_time_ms.max(time_ms);
        self.expire_sessions(ttl_ms);
        self.expire_txns(ttl_ms);
        self.expire_exports(ttl_ms);
    }

    /// Applies a transaction entry of the log (see [`LogCommand::Txn`]).
    pub fn apply_txn_entry(&mut self, time_ms: u64, session_ttl_ms: u64, op: &TxnOp) -> TxnOutcome {
        self.advance_log_time(time_ms, session_ttl_ms);
        self.apply_txn(op, session_ttl_ms)
    }

    /// Records `session`'s command `seq` at the current log time.
    fn record(&mut self, session: u64, seq: u64, outcome: Option<Outcome>) {
        let last_ms = self.log_time_ms;
        if let Some(old) = self.sessions.insert(
            session,
            SessionRecord {
                seq,
                outcome,
                last_ms,
            },
        ) {
            self.idle.remove(&(old.last_ms, session));
        }
        self.idle.insert((last_ms, session));
    }

    /// Drops every session idle for longer than `ttl_ms` of log time.
    fn expire_sessions(&mut self, ttl_ms: u64) {
        let horizon = self.log_time_ms.saturating_sub(ttl_ms);
        while let Some(&(last_ms, session)) = self.idle.first() {
            if last_ms >= horizon {
                break;
            }
            self.idle.pop_first();
            self.sessions.remove(&session);
            crate::stats::count(crate::stats::Event::SessionExpired);
            // Its commands still waiting for locks go too: a later command
            // of the session may have run meanwhile, and once the session is
            // forgotten nothing would keep them from running after it.
            self.expire_queued(session, ttl_ms);
        }
        debug_assert_eq!(self.idle.len(), self.sessions.len());
    }

    /// The results [`PartitionStore::execute`] would give now, without
    /// changing anything: a prepare computes them under its locks and
    /// applies the operations only when it commits. (Cheaper than running
    /// them on a copy of the data, which copies the tree nodes it writes.)
    pub(crate) fn results_of(&self, ops: &[Op]) -> Result<Vec<OpResult>, ApplyError> {
        self.validate(ops)?;
        // The value of each key as the earlier operations left it (`None`:
        // deleted).
        let mut written: BTreeMap<u64, Option<&[u8]>> = BTreeMap::new();
        let now = |written: &BTreeMap<u64, Option<&[u8]>>, num: u64| match written.get(&num) {
            Some(value) => value.map(<[u8]>::to_vec),
            None => self.data.get(&num).cloned(),
        };
        let mut results = Vec::with_capacity(ops.len());
        for op in ops {
            results.push(match op {
                Op::Put { key, value } => {
                    let found = match written.get(&key.num) {
                        Some(value) => value.is_some(),
                        None => self.data.contains_key(&key.num),
                    };
                    written.insert(key.num, Some(value));
                    OpResult::Put { found }
                }
                Op::Get { key } => OpResult::Get(now(&written, key.num)),
                Op::Swap { key, value } => {
                    let old = now(&written, key.num);
                    if old.is_some() {
                        written.insert(key.num, Some(value));
                    }
                    OpResult::Swap(old)
                }
                Op::Delete { key } => {
                    let found = match written.get(&key.num) {
                        Some(value) => value.is_some(),
                        None => self.data.contains_key(&key.num),
                    };
                    written.insert(key.num, None);
                    OpResult::Delete { found }
                }
                Op::Scan { start, end } => OpResult::Scan(match self.clip(start, end) {
                    None => Vec::new(),
                    Some((lo, hi)) => {
                        let mut rows: BTreeMap<u64, &[u8]> = self
                            .data
                            .range(lo..=hi)
                            .map(|(num, value)| (*num, value.as_slice()))
                            .collect();
                        for (num, value) in written.range(lo..=hi) {
                            match value {
                                Some(value) => rows.insert(*num, value),
                                None => rows.remove(num),
                            };
                        }
                        rows.into_iter()
                            .map(|(num, value)| {
                                (Key::new(self.range.table.clone(), num), value.to_vec())
                            })
                            .collect()
                    }
                }),
                // `validate` checked it holds.
                Op::Check { .. } => OpResult::Check,
                // Alone in its command (`validate`): nothing written before.
                Op::Export { start, end } => self.export_result(start, end),
            });
        }
        Ok(results)
    }

    /// Applies one already-validated operation.
    fn apply(&mut self, op: &Op) -> OpResult {
        match op {
            Op::Put { key, value } => {
                self.bytes += entry_bytes(value);
                let old = self.data.insert(key.num, value.clone());
                if let Some(old) = &old {
                    self.bytes = self.bytes.saturating_sub(entry_bytes(old));
                }
                OpResult::Put {
                    found: old.is_some(),
                }
            }
            Op::Get { key } => OpResult::Get(self.data.get(&key.num).cloned()),
            Op::Swap { key, value } => match self.data.get_mut(&key.num) {
                Some(slot) => {
                    // (Saturating: `bytes` comes from a snapshot, which
                    // must not be able to make a write panic.)
                    self.bytes =
                        (self.bytes + value.len() as u64).saturating_sub(slot.len() as u64);
                    OpResult::Swap(Some(std::mem::replace(slot, value.clone())))
                }
                None => OpResult::Swap(None),
            },
            Op::Delete { key } => {
                let old = self.data.remove(&key.num);
                if let Some(old) = &old {
                    self.bytes = self.bytes.saturating_sub(entry_bytes(old));
                }
                OpResult::Delete {
                    found: old.is_some(),
                }
            }
            Op::Scan { start, end } => OpResult::Scan(match self.clip(start, end) {
                Some((lo, hi)) => self
                    .data
                    .range(lo..=hi)
                    .map(|(num, value)| (Key::new(self.range.table.clone(), *num), value.clone()))
                    .collect(),
                None => Vec::new(),
            }),
            // `validate` checked it holds.
            Op::Check { .. } => OpResult::Check,
            Op::Export { start, end } => self.export_result(start, end),
        }
    }

    fn export_result(&self, start: &Key, end: &Key) -> OpResult {
        let part = match self.clip(start, end) {
            Some((lo, hi)) => self.export_part(lo, hi),
            None => self.export_part(1, 0),
        };
        OpResult::Export(vec![part])
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
    fn results_of_matches_execute_and_changes_nothing() {
        let commands: &[&[&str]] = &[
            &["PUT t10 a", "PUT t10 b", "GET t10", "SWAP t11 x", "GET t11"],
            &[
                "SWAP t12 c",
                "DELETE t12",
                "DELETE t12",
                "GET t12",
                "PUT t13 n",
            ],
            &[
                "SCAN t10 t19",
                "PUT t14 p",
                "DELETE t12",
                "SCAN t10 t19",
                "GET t14",
            ],
            &[
                "DELETE t13",
                "SWAP t13 q",
                "PUT t19 z",
                "SCAN t12 t19",
                "CHECK t19 z",
            ],
            &[
                "CHECK t12 null",
                "PUT t12 again",
                "SCAN t11 t12",
                "SCAN t15 t16",
            ],
        ];
        let mut s = store();
        run(&mut s, &["PUT t12 old", "PUT t15 v", "PUT t16 w"]).unwrap();
        for lines in commands {
            let ops: Vec<Op> = lines.iter().map(|l| parse_op(l).unwrap()).collect();
            let before = s.data.clone();
            let predicted = s.results_of(&ops);
            assert_eq!(s.data, before, "{lines:?} changed the data");
            assert_eq!(predicted, s.execute(&ops), "{lines:?}");
        }
        let ops = vec![parse_op("CHECK t10 nope").unwrap()];
        assert!(s.results_of(&ops).is_err());
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
    fn check_sees_the_earlier_operations_of_its_command() {
        let mut s = store();
        let r = run(
            &mut s,
            &[
                "CHECK t10 null",
                "PUT t10 a",
                "CHECK t10 a",
                "SWAP t10 b",
                "CHECK t10 b",
                "DELETE t10",
                "CHECK t10 null",
                "PUT t11 c",
            ],
        )
        .unwrap();
        assert_eq!(r[0], OpResult::Check);
        assert_eq!(r[2], OpResult::Check);
        assert_eq!(r[6], OpResult::Check);
        assert_eq!(r[7], OpResult::Put { found: false });
        let r = run(&mut s, &["GET t10", "CHECK t11 c"]).unwrap();
        assert_eq!(r, vec![OpResult::Get(None), OpResult::Check]);
    }

    #[test]
    fn a_failed_check_aborts_the_whole_command_and_names_the_op() {
        let mut s = store();
        run(&mut s, &["PUT t10 a"]).unwrap();
        let before = s.clone();
        // The first CHECK that does not hold decides, with the value the
        // command's earlier operations left.
        let err = run(
            &mut s,
            &[
                "PUT t11 x",
                "CHECK t10 a",
                "SWAP t10 b",
                "CHECK t10 a",
                "CHECK t12 z",
            ],
        )
        .unwrap_err();
        assert_eq!(
            err,
            ApplyError::CheckFailed {
                op: 3,
                key: Key::new("t", 10),
                actual: Some(b"b".to_vec()),
            }
        );
        assert_eq!(err.to_string(), "check failed: op 4 (t10 holds b)");
        assert_eq!(s, before, "nothing of the command was applied");
        let err = run(&mut s, &["CHECK t12 z", "DELETE t10"]).unwrap_err();
        assert_eq!(
            err,
            ApplyError::CheckFailed {
                op: 0,
                key: Key::new("t", 12),
                actual: None,
            }
        );
        assert_eq!(s, before);
        // A CHECK outside the partition is refused like any operation.
        let err = run(&mut s, &["CHECK t25 a"]).unwrap_err();
        assert!(matches!(err, ApplyError::WrongPartition { .. }), "{err}");
    }

    /// A command aborted by its CHECK is a finished command of its session:
    /// a retry gets the same abort back, even once the CHECK would hold,
    /// instead of running into a different answer.
    #[test]
    fn a_retry_of_a_check_aborted_command_gets_the_same_abort() {
        let mut s = store();
        let guarded = vec![
            parse_op("CHECK t10 a").unwrap(),
            parse_op("PUT t10 b").unwrap(),
        ];
        let first = once(&mut s, 1, 1, &guarded).unwrap();
        let aborted = Err(ApplyError::CheckFailed {
            op: 0,
            key: Key::new("t", 10),
            actual: None,
        });
        assert_eq!(first, aborted);
        // Another session makes the CHECK hold.
        once(&mut s, 2, 1, &[parse_op("PUT t10 a").unwrap()])
            .unwrap()
            .unwrap();
        assert_eq!(once(&mut s, 1, 1, &guarded).unwrap(), aborted);
        let get = [parse_op("GET t10").unwrap()];
        assert_eq!(
            s.execute(&get).unwrap(),
            vec![OpResult::Get(Some(b"a".to_vec()))],
            "the retry did not apply the PUT"
        );
        // The session's next command runs.
        assert_eq!(
            once(&mut s, 1, 2, &guarded).unwrap(),
            Ok(vec![OpResult::Check, OpResult::Put { found: true }])
        );
    }

    #[test]
    fn scan_is_inclusive_ordered_and_must_lie_in_the_partition() {
        let mut s = store();
        run(&mut s, &["PUT t12 a", "PUT t19 b", "PUT t10 c"]).unwrap();
        let r = run(&mut s, &["SCAN t10 t12", "SCAN t12 t19", "SCAN t15 t11"]).unwrap();
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
        // The client narrows a SCAN to the partition as its map has it: one
        // reaching past the range was routed by a map from before a split,
        // and answering for our part alone would drop the rest's rows.
        for scan in ["SCAN t0 t12", "SCAN t12 t100", "SCAN u10 u12"] {
            let err = run(&mut s, &[scan]).unwrap_err();
            assert!(
                matches!(err, ApplyError::WrongPartition { .. }),
                "{scan}: {err}"
            );
        }
    }

    fn split_store() -> PartitionStore {
        let mut s = PartitionStore::new(Partition {
            id: 7,
            table: "t".into(),
            start: 10,
            end: None,
            replicas: vec![0, 1, 2],
        });
        for n in 10..30 {
            let c = Command::untimed(1, n, vec![parse_op(&format!("PUT t{n} v{n}")).unwrap()]);
            s.execute_once(&c).unwrap().unwrap();
        }
        s
    }

    #[test]
    fn a_split_moves_the_keys_from_its_point_on_and_shares_the_session_table() {
        let mut left = split_store();
        let bytes = left.bytes();
        assert_eq!(
            bytes,
            (10..30)
                .map(|n| 8 + format!("v{n}").len() as u64)
                .sum::<u64>()
        );
        assert_eq!(left.middle_key(), Some(20));
        left.begin_split(40, 20, None).unwrap();
        assert!(left.split_ready(), "nothing holds locks");
        let mut right = left.finish_split(vec![0, 1, 2], vec![3]);
        let child = crate::map::split_child_id(7, 40);
        assert_eq!(right.range().id, child);
        assert_eq!((right.range().start, right.range().end), (20, None));
        assert_eq!((left.range().start, left.range().end), (10, Some(20)));
        assert_eq!((left.len(), right.len()), (10, 10));
        assert_eq!(left.bytes() + right.bytes(), bytes);
        assert_eq!(
            left.splits(),
            &[SplitOff {
                child,
                index: 40,
                start: 20,
                end: None,
                voters: vec![0, 1, 2],
                learners: vec![3],
            }]
        );
        // Each half holds exactly its keys, and refuses the other's.
        assert_eq!(
            run(&mut left, &["GET t19"]).unwrap(),
            vec![OpResult::Get(Some(b"v19".to_vec()))]
        );
        assert_eq!(
            run(&mut right, &["GET t20"]).unwrap(),
            vec![OpResult::Get(Some(b"v20".to_vec()))]
        );
        assert!(matches!(
            run(&mut left, &["PUT t20 x"]),
            Err(ApplyError::WrongPartition { .. })
        ));
        assert!(matches!(
            run(&mut right, &["GET t19"]),
            Err(ApplyError::WrongPartition { .. })
        ));
        // A retry of a command that ran before the split gets its first
        // outcome on both sides (whichever the newer map sends it to).
        let retry = Command::untimed(1, 29, vec![parse_op("PUT t29 v29").unwrap()]);
        let first = Ok(vec![OpResult::Put { found: false }]);
        assert_eq!(right.execute_once(&retry), Ok(first.clone()));
        assert_eq!(left.execute_once(&retry), Ok(first));
        // A new command with a right-hand key is refused on the left, and
        // the refusal is its recorded outcome there: it never runs there.
        let late = Command::untimed(1, 30, vec![parse_op("PUT t21 y").unwrap()]);
        assert!(matches!(
            left.execute_once(&late),
            Ok(Err(ApplyError::WrongPartition { .. }))
        ));
        assert!(matches!(
            left.execute_once(&late),
            Ok(Err(ApplyError::WrongPartition { .. }))
        ));
        assert_eq!(
            right.execute_once(&late),
            Ok(Ok(vec![OpResult::Put { found: true }]))
        );
        // Bytes follow writes.
        let before = right.bytes();
        run(
            &mut right,
            &["PUT t21 longer-value", "DELETE t22", "SWAP t23 s"],
        )
        .unwrap();
        assert_eq!(right.bytes(), before + 12 - 1 - 11 - 2);
    }

    #[test]
    fn a_split_is_refused_when_stale_or_outside_and_waits_for_locks_on_its_keys() {
        let mut s = split_store();
        let before = s.clone();
        // The range changed since it was proposed.
        assert!(s.begin_split(5, 20, Some(50)).is_err());
        // Not strictly inside.
        assert!(s.begin_split(5, 10, None).is_err());
        assert!(s.begin_split(5, 5, None).is_err());
        assert_eq!(s, before);
        // A prepared transaction holding a key from the split point on.
        let txn = |seq: u64, op: &str| Prepare {
            id: TxnId {
                session: 9,
                seq,
                attempt: 0,
            },
            priority_ms: 1,
            sent_ms: 0,
            participants: vec![7, 8],
            ops: vec![parse_op(op).unwrap()],
            committed_before: None,
        };
        let state = |o: TxnOutcome| match o {
            TxnOutcome::State(state) => state,
            other => panic!("{other:?}"),
        };
        let held = txn(1, "PUT t25 z");
        s.apply_txn_entry(0, u64::MAX, &TxnOp::Prepare(held.clone()));
        s.begin_split(6, 20, None).unwrap();
        assert!(!s.split_ready(), "waits for the lock on t25");
        assert!(s.begin_split(7, 15, None).is_err(), "one split at a time");
        // New prepares on the keys that move are refused (retried, they
        // go to the new partition); others go on.
        let refused = s.apply_txn_entry(0, u64::MAX, &TxnOp::Prepare(txn(2, "PUT t21 r")));
        assert_eq!(state(refused), TxnState::Aborted(AbortReason::Conflict));
        let left = s.apply_txn_entry(0, u64::MAX, &TxnOp::Prepare(txn(3, "PUT t12 l")));
        assert!(matches!(state(left), TxnState::Prepared { .. }));
        assert!(!s.split_ready());
        // The holder resolved: the split happens; the left half keeps the
        // transaction prepared on its keys.
        let resolve = TxnOp::Resolve {
            id: held.id,
            commit: true,
        };
        s.apply_txn_entry(0, u64::MAX, &resolve);
        assert!(s.split_ready());
        let right = s.finish_split(vec![0], vec![]);
        assert_eq!((s.prepared_count(), right.prepared_count()), (1, 0));
        let mut right = right;
        assert_eq!(
            run(&mut right, &["GET t25"]).unwrap(),
            vec![OpResult::Get(Some(b"z".to_vec()))],
            "the committed write moved with its key"
        );
        // A split proposed on the old range is refused.
        assert!(s.begin_split(8, 15, None).is_err());
        assert!(s.begin_split(8, 15, Some(20)).is_ok());
    }

    fn once(
        s: &mut PartitionStore,
        session: u64,
        seq: u64,
        ops: &[Op],
    ) -> Result<Outcome, SessionError> {
        s.execute_once(&Command::untimed(session, seq, ops.to_vec()))
    }

    #[test]
    fn a_retried_command_is_applied_once_and_returns_its_first_reply() {
        let mut s = store();
        let ops = vec![parse_op("PUT t10 a").unwrap()];
        let first = once(&mut s, 1, 1, &ops).unwrap();
        assert_eq!(first, Ok(vec![OpResult::Put { found: false }]));
        // The retry would answer `found` if it ran again.
        let retry = once(&mut s, 1, 1, &ops).unwrap();
        assert_eq!(
            retry, first,
            "a deduplicated retry answers the first outcome"
        );
        assert_eq!(
            once(&mut s, 1, 2, &ops).unwrap(),
            Ok(vec![OpResult::Put { found: true }])
        );
        assert!(matches!(
            once(&mut s, 1, 1, &ops),
            Err(SessionError::Stale(_))
        ));
        // Another session is independent.
        assert_eq!(
            once(&mut s, 2, 1, &ops).unwrap(),
            Ok(vec![OpResult::Put { found: true }])
        );
        let read = once(&mut s, 2, 2, &[parse_op("GET t10").unwrap()]).unwrap();
        assert_eq!(read, Ok(vec![OpResult::Get(Some(b"a".to_vec()))]));
    }

    const TTL_MS: u64 = 60_000;
    /// Log time at the start of these tests (any wall-clock time will do).
    const T0: u64 = 1_800_000_000_000;

    /// A command as a leader with clock `time_ms` stamps it.
    fn stamped(session: u64, seq: u64, sent_ms: u64, time_ms: u64, op: &str) -> Command {
        Command {
            session,
            seq,
            sent_ms,
            time_ms,
            session_ttl_ms: TTL_MS,
            ops: vec![parse_op(op).unwrap()],
        }
    }

    /// Raft dissertation §6.3: sessions expire deterministically by log
    /// time, so a workload that opens a new session per command (the worst
    /// case) keeps a table of about TTL × rate sessions, not one per
    /// session ever seen.
    #[test]
    fn the_session_table_stays_flat_when_every_command_opens_a_session() {
        let mut s = store();
        let mut sizes = Vec::new();
        for i in 0..5000u64 {
            // One command every 100 ms of leader time, each a new session.
            let now = T0 + i * 100;
            let c = stamped(i + 1, 1, now, now, "PUT t10 v");
            assert!(s.execute_once(&c).unwrap().is_ok());
            sizes.push(s.session_count());
        }
        // 60 s of TTL at 10 sessions/s: 600 live sessions, then flat.
        let largest = *sizes.iter().max().unwrap();
        assert!(largest <= TTL_MS as usize / 100 + 1, "{largest}");
        assert_eq!(
            sizes[1000], sizes[4999],
            "flat: {} vs {}",
            sizes[1000], sizes[4999]
        );
        assert_eq!(s.log_time_ms(), T0 + 4999 * 100);
        // Replicas that apply the same log agree, session table included.
        let mut other = store();
        for i in 0..5000u64 {
            let now = T0 + i * 100;
            other
                .execute_once(&stamped(i + 1, 1, now, now, "PUT t10 v"))
                .unwrap()
                .unwrap();
        }
        assert_eq!(other, s);
    }

    #[test]
    fn log_time_never_goes_backwards_across_leaders() {
        let mut s = store();
        s.execute_once(&stamped(1, 1, T0, T0, "PUT t10 a"))
            .unwrap()
            .unwrap();
        let ahead = T0 + 10 * TTL_MS;
        s.execute_once(&stamped(2, 1, ahead, ahead, "PUT t11 a"))
            .unwrap()
            .unwrap();
        assert_eq!(
            s.session_count(),
            1,
            "session 1 idled out at the later stamp"
        );
        // A new leader whose clock is behind stamps an earlier time: log
        // time stays, and its command is judged at the later log time.
        let behind = T0 + TTL_MS;
        s.execute_once(&stamped(3, 1, ahead, behind, "PUT t12 a"))
            .unwrap()
            .unwrap();
        assert_eq!(s.log_time_ms(), ahead);
        assert_eq!(s.session_count(), 2);
        let err = s
            .execute_once(&stamped(1, 2, T0, behind, "PUT t10 b"))
            .unwrap_err();
        assert!(matches!(err, SessionError::Expired(_)), "{err}");
    }

    /// The safety argument of ARCHITECTURE.md "Sessions": a retry (or a late
    /// duplicate) of a command that ran before its session expired is
    /// refused, never applied a second time.
    #[test]
    fn a_retry_after_its_session_expired_is_refused_not_applied_again() {
        let mut s = store();
        let put = stamped(1, 1, T0, T0, "PUT t10 first");
        assert_eq!(
            s.execute_once(&put).unwrap(),
            Ok(vec![OpResult::Put { found: false }])
        );
        // Another session overwrites the key, later than the TTL.
        let later = T0 + TTL_MS + 1;
        s.execute_once(&stamped(2, 1, later, later, "PUT t10 second"))
            .unwrap()
            .unwrap();
        assert_eq!(s.session_count(), 1, "session 1 expired");
        // The retry of session 1's PUT arrives now, at whichever leader.
        let retry = Command {
            time_ms: later + 5,
            ..put.clone()
        };
        let err = s.execute_once(&retry).unwrap_err();
        assert!(
            matches!(&err, SessionError::Expired(e) if e.session == 1 && e.seq == 1),
            "{err}"
        );
        assert!(err.to_string().contains("may or may not"), "{err}");
        let get = [parse_op("GET t10").unwrap()];
        assert_eq!(
            s.execute(&get).unwrap(),
            vec![OpResult::Get(Some(b"second".to_vec()))],
            "the expired session's PUT was not applied again"
        );
        // A late duplicate of an older command of the session as well.
        let older = stamped(1, 0, T0 - 1, later + 6, "PUT t10 zeroth");
        assert!(matches!(
            s.execute_once(&older),
            Err(SessionError::Expired(_))
        ));
        // The session's next command is new: it runs, and the session is
        // known here again.
        let next = stamped(1, 2, later + 7, later + 8, "PUT t10 third");
        assert_eq!(
            s.execute_once(&next).unwrap(),
            Ok(vec![OpResult::Put { found: true }])
        );
        assert!(matches!(s.execute_once(&put), Err(SessionError::Stale(_))));
    }

    #[test]
    fn a_session_in_use_never_expires_and_new_sessions_start_freely() {
        let mut s = store();
        // A session that writes every 0.9 TTL stays, even for a command
        // that took almost half a TTL to reach the log.
        for i in 0..10u64 {
            let now = T0 + i * TTL_MS * 9 / 10;
            let c = stamped(1, i + 1, now - TTL_MS / 2, now, "PUT t10 v");
            assert!(s.execute_once(&c).unwrap().is_ok(), "command {i}");
            assert_eq!(s.session_count(), 1);
        }
        // Within half a TTL of its sending, a command of an unknown session
        // starts it: a first write that took a while to reach the log
        // (retries, a slow leader) still runs.
        let now = s.log_time_ms();
        let late_first = stamped(2, 1, now - TTL_MS / 2, now, "PUT t11 v");
        assert!(s.execute_once(&late_first).unwrap().is_ok());
        // A retry of it is answered from the table, even with a later stamp.
        let retry = Command {
            time_ms: now + TTL_MS / 2,
            ..late_first
        };
        assert_eq!(
            s.execute_once(&retry).unwrap(),
            Ok(vec![OpResult::Put { found: false }])
        );
    }

    #[test]
    fn the_session_table_survives_a_snapshot_round_trip() {
        use crate::storage::snapshot::{decode_store, encode_store};
        let mut s = store();
        for i in 0..100u64 {
            let now = T0 + i * 1000;
            s.execute_once(&stamped(i + 1, 1, now, now, "PUT t10 v"))
                .unwrap()
                .unwrap();
        }
        let copy = decode_store(&encode_store(&s)).unwrap();
        assert_eq!(copy, s);
        // And it goes on expiring the same way as the original.
        let (mut a, mut b) = (s, copy);
        let now = T0 + 150_000;
        let c = stamped(1000, 1, now, now, "PUT t11 v");
        a.execute_once(&c).unwrap().unwrap();
        b.execute_once(&c).unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.session_count(),
            1 + 10,
            "sessions from the last 60 s remain"
        );
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
        let executed = once(&mut s, 9, 1, &ops).unwrap();
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
