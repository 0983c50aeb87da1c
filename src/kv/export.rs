//! Point-in-time copies of a partition's data, for backups ([`Op::Export`]).
//!
//! A backup is one transaction whose operations are EXPORTs of every table.
//! Each participant's prepare takes read locks on its whole range, like a
//! SCAN, and at that moment keeps an O(1) copy of its data (the map is a
//! persistent B-tree). The locks keep the data unchanged until the commit,
//! so every copy is the partition's state at the transaction's commit point:
//! together they are one consistent cut of the cluster, as strictly
//! serializable as any other command. The locks go with the decision (a few
//! milliseconds); the copies stay, and the backup reads them page by page
//! (`Msg::ExportRead`) while writes go on. Old versions of changed keys are
//! what a copy costs in memory.
//!
//! The copies are taken while applying the prepare, so every replica holds
//! the same one and any of them can serve the pages. They are not replicated
//! state: not in snapshots or checkpoints (a replica that restarts or
//! installs a snapshot loses them, and the backup starts over), and they
//! go when their attempt aborts, or one session TTL of log time after they
//! were taken or last read here.

use super::{PartitionStore, TxnId};
use crate::op::{ExportPart, Op};
use imbl::OrdMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Rows of one page of an export, with their key numbers (the table is the
/// partition's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportPage {
    pub rows: Vec<ExportRow>,
    /// Whether rows past the last one remain in the requested range.
    pub more: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRow {
    pub num: u64,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The copies a partition keeps, by the exporting command's `(session,
/// seq)`. Not replicated state (see the module comment): equal whatever
/// they hold, so comparing replicas compares what is replicated.
#[derive(Clone, Debug, Default)]
pub(super) struct Exports(BTreeMap<(u64, u64), Export>);

impl PartialEq for Exports {
    fn eq(&self, _: &Exports) -> bool {
        true
    }
}

impl Eq for Exports {}

#[derive(Clone, Debug)]
struct Export {
    attempt: u32,
    data: OrdMap<u64, Vec<u8>>,
    /// Log time when it was taken, or last read here.
    used_ms: u64,
}

/// Bytes of rows in a page, at most (one row may exceed it alone).
pub const EXPORT_PAGE_BYTES_MAX: usize = 4 * 1024 * 1024;

impl PartitionStore {
    /// An EXPORT's part here, counted on the data as it is now.
    pub(super) fn export_part(&self, start: u64, end: u64) -> ExportPart {
        let (keys, bytes) = if start <= self.range.start && end >= self.range.last() {
            (self.data.len() as u64, self.bytes)
        } else if start > end {
            (0, 0)
        } else {
            self.data
                .range(start..=end)
                .fold((0, 0), |(k, b), (_, v)| (k + 1, b + super::entry_bytes(v)))
        };
        ExportPart {
            partition: self.range.id,
            keys,
            bytes,
        }
    }

    /// Keeps a copy of the data for a prepare that holds EXPORTs (called
    /// when it takes its locks). A later attempt of the same command
    /// replaces an earlier one's, never the other way round (a late
    /// duplicate of an earlier attempt).
    pub(super) fn capture_export(&mut self, id: TxnId, ops: &[Op]) {
        if !ops.iter().any(Op::is_export) {
            return;
        }
        let key = (id.session, id.seq);
        if self
            .exports
            .0
            .get(&key)
            .is_some_and(|e| e.attempt > id.attempt)
        {
            return;
        }
        let export = Export {
            attempt: id.attempt,
            data: self.data.clone(),
            used_ms: self.log_time_ms,
        };
        self.exports.0.insert(key, export);
    }

    /// Drops the copy of an aborted attempt.
    pub(super) fn drop_export(&mut self, id: TxnId) {
        let key = (id.session, id.seq);
        if self
            .exports
            .0
            .get(&key)
            .is_some_and(|e| e.attempt == id.attempt)
        {
            self.exports.0.remove(&key);
        }
    }

    /// Drops copies unused for `ttl_ms` of log time.
    pub(super) fn expire_exports(&mut self, ttl_ms: u64) {
        let horizon = self.log_time_ms.saturating_sub(ttl_ms);
        self.exports.0.retain(|_, e| e.used_ms >= horizon);
    }

    /// Drops the copy of attempt `txn` (the backup is done with it): an
    /// empty page, or `None` if there was none.
    pub fn release_export(&mut self, txn: TxnId) -> Option<ExportPage> {
        let key = (txn.session, txn.seq);
        self.exports
            .0
            .get(&key)
            .filter(|e| e.attempt == txn.attempt)?;
        self.exports.0.remove(&key);
        Some(ExportPage {
            rows: Vec::new(),
            more: false,
        })
    }

    /// How many copies this replica holds.
    pub fn export_count(&self) -> usize {
        self.exports.0.len()
    }

    /// A page of the copy kept for transaction attempt `txn`: its rows with
    /// key numbers in `[from, to]`, ascending, up to about `max_bytes` (an
    /// empty range: none, the copy is only kept alive). The copy holds the
    /// partition's range when it was taken, all of it even if part of the
    /// range was split off since. `None`: no copy of that attempt here
    /// (never taken on this replica, or not yet: an earlier attempt's may
    /// still be here; aborted; released; expired).
    pub fn export_page(
        &mut self,
        txn: TxnId,
        from: u64,
        to: u64,
        max_bytes: usize,
    ) -> Option<ExportPage> {
        let now = self.log_time_ms;
        let (lo, hi) = (from, to);
        let export = self
            .exports
            .0
            .get_mut(&(txn.session, txn.seq))
            .filter(|e| e.attempt == txn.attempt)?;
        export.used_ms = now;
        let mut page = ExportPage {
            rows: Vec::new(),
            more: false,
        };
        if lo > hi {
            return Some(page);
        }
        let max_bytes = max_bytes.clamp(1, EXPORT_PAGE_BYTES_MAX);
        let mut bytes = 0usize;
        for (num, value) in export.data.range(lo..=hi) {
            if bytes >= max_bytes {
                page.more = true;
                break;
            }
            bytes += value.len() + 16;
            page.rows.push(ExportRow {
                num: *num,
                value: value.clone(),
            });
        }
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::kv::{Prepare, TxnOp, TxnOutcome, TxnState};
    use crate::map::Partition;
    use crate::op::{parse_op, OpResult};

    fn store() -> PartitionStore {
        PartitionStore::new(Partition {
            id: 3,
            table: "t".into(),
            start: 0,
            end: Some(100),
            replicas: vec![0],
        })
    }

    fn put(s: &mut PartitionStore, line: &str) {
        s.execute(&[parse_op(line).unwrap()]).unwrap();
    }

    fn prepare(id: TxnId, ops: Vec<Op>) -> TxnOp {
        TxnOp::Prepare(Prepare {
            id,
            priority_ms: 1,
            sent_ms: 1,
            participants: vec![3, 4],
            ops,
            committed_before: None,
        })
    }

    /// An EXPORT of the whole partition, as the client clips it.
    fn export_all() -> Vec<Op> {
        vec![Op::Export {
            start: Key::new("t", 0),
            end: Key::new("t", 99),
        }]
    }

    fn all_rows(s: &mut PartitionStore, txn: TxnId, page: usize) -> Vec<(u64, Vec<u8>)> {
        let mut rows = Vec::new();
        let mut from = 0;
        loop {
            let p = s.export_page(txn, from, u64::MAX, page).expect("a copy");
            rows.extend(p.rows.iter().map(|r| (r.num, r.value.clone())));
            match p.rows.last() {
                Some(last) if p.more => from = last.num + 1,
                _ => return rows,
            }
        }
    }

    #[test]
    fn an_export_is_the_data_at_its_prepare_and_later_writes_do_not_show() {
        let mut s = store();
        for i in 0..50 {
            put(&mut s, &format!("PUT t{i} v{i}"));
        }
        let id = TxnId {
            session: 9,
            seq: 1,
            attempt: 0,
        };
        let TxnOutcome::State(TxnState::Prepared { results }) =
            s.apply_txn_entry(10, 300_000, &prepare(id, export_all()))
        else {
            panic!("the export prepares");
        };
        let part = ExportPart {
            partition: 3,
            keys: 50,
            bytes: (0..50).map(|i| format!("v{i}").len() as u64 + 8).sum(),
        };
        assert_eq!(results, vec![OpResult::Export(vec![part])]);
        // Writes after the commit do not show in the copy.
        s.apply_txn_entry(11, 300_000, &TxnOp::Resolve { id, commit: true });
        put(&mut s, "PUT t1 changed");
        put(&mut s, "DELETE t2");
        put(&mut s, "PUT t70 new");
        let rows = all_rows(&mut s, id, 64);
        assert_eq!(rows.len(), 50, "paged through every key of the copy");
        assert_eq!(rows[1], (1, b"v1".to_vec()));
        assert_eq!(rows[2], (2, b"v2".to_vec()));
        assert!(rows.iter().all(|(n, _)| *n < 50));
        let other = TxnId { seq: 2, ..id };
        assert_eq!(
            s.export_page(other, 0, u64::MAX, 64),
            None,
            "another command"
        );
        let later = TxnId { attempt: 1, ..id };
        assert_eq!(
            s.export_page(later, 0, u64::MAX, 64),
            None,
            "another attempt"
        );
        assert!(s.release_export(id).is_some());
        assert_eq!(s.export_page(id, 0, u64::MAX, 64), None, "released");
    }

    #[test]
    fn an_aborted_attempt_drops_its_copy_and_expiry_drops_unused_ones() {
        let mut s = store();
        put(&mut s, "PUT t1 a");
        let id = TxnId {
            session: 9,
            seq: 1,
            attempt: 0,
        };
        s.apply_txn_entry(10, 1_000, &prepare(id, export_all()));
        assert_eq!(s.export_count(), 1);
        s.apply_txn_entry(11, 1_000, &TxnOp::Resolve { id, commit: false });
        assert_eq!(s.export_count(), 0);
        let next = TxnId { attempt: 1, ..id };
        s.apply_txn_entry(12, 1_000, &prepare(next, export_all()));
        s.apply_txn_entry(
            13,
            1_000,
            &TxnOp::Resolve {
                id: next,
                commit: true,
            },
        );
        // A late abort of the first attempt leaves the second's copy.
        s.apply_txn_entry(14, 1_000, &TxnOp::Resolve { id, commit: false });
        assert_eq!(s.export_count(), 1);
        assert!(s.export_page(next, 0, 10, 64).is_some());
        assert!(
            s.export_page(id, 0, 10, 64).is_none(),
            "the aborted attempt's is gone"
        );
        // Reading it at log time 14 keeps it until 1,014.
        s.apply_txn_entry(1_000, 1_000, &TxnOp::Resolve { id, commit: false });
        assert_eq!(s.export_count(), 1);
        s.apply_txn_entry(1_015, 1_000, &TxnOp::Resolve { id, commit: false });
        assert_eq!(s.export_count(), 0);
    }

    /// A replica that applied an aborted attempt's prepare and not yet the
    /// next attempt's holds the old copy: it must not pass for the
    /// committed one. And an earlier attempt's prepare arriving after a
    /// later one's (never seen here before) does not replace its copy.
    #[test]
    fn only_the_asked_attempts_copy_is_served() {
        let mut s = store();
        put(&mut s, "PUT t1 old");
        let first = TxnId {
            session: 9,
            seq: 1,
            attempt: 0,
        };
        s.apply_txn_entry(10, 300_000, &prepare(first, export_all()));
        let second = TxnId {
            attempt: 1,
            ..first
        };
        assert_eq!(s.export_page(second, 0, 99, 64), None);
        s.apply_txn_entry(
            11,
            300_000,
            &TxnOp::Resolve {
                id: first,
                commit: false,
            },
        );
        put(&mut s, "PUT t1 new");
        s.apply_txn_entry(12, 300_000, &prepare(second, export_all()));
        // A late duplicate of attempt 0's prepare changes nothing.
        s.apply_txn_entry(13, 300_000, &prepare(first, export_all()));
        let page = s.export_page(second, 0, 99, 64).expect("attempt 1's copy");
        assert_eq!(page.rows[0].value, b"new".to_vec());

        let mut s = store();
        let (late, current) = (TxnId { seq: 2, ..first }, TxnId { seq: 2, ..second });
        s.apply_txn_entry(10, 300_000, &prepare(current, export_all()));
        s.apply_txn_entry(11, 300_000, &prepare(late, export_all()));
        assert!(s.export_page(current, 0, 99, 64).is_some());
        assert_eq!(s.export_page(late, 0, 99, 64), None);
    }

    #[test]
    fn a_store_refuses_an_export_outside_a_transaction_and_mixed_with_writes() {
        let mut s = store();
        let command = crate::kv::Command::untimed(1, 1, export_all());
        assert_eq!(
            s.execute_once(&command),
            Ok(Err(crate::kv::ApplyError::ExportOutsideTxn))
        );
        let mut ops = export_all();
        ops.push(parse_op("PUT t1 a").unwrap());
        assert!(s.validate(&ops).is_err());
    }
}
