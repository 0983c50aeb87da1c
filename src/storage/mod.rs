//! Durable storage for a server's partitions: a shared write-ahead log with
//! group commit, per-partition snapshots, and crash recovery.
//!
//! ```text
//!  driver: command applied ──log_command──▶ LogWriter (group commit) ──▶ Wal segments
//!          reply held until durable LSN ≥ its LSN  ◀── durable LSN ──┘
//!  every `checkpoint_log_bytes` of log: clone stores at LSN L, wait until L
//!  is durable, write snapshots (tmp, sync, rename, sync dir), purge log ≤ L
//!
//!  start: newest snapshot per partition ─▶ replay log records after it ─▶ stores
//! ```
//! Restart cost is the data (snapshots) plus the log written since the last
//! checkpoint, never the whole history.
//!
//! Log records carry a [`LogEntry`]: a partition coming into existence on
//! this server (`Host`, with its range) or a command that changed state
//! (`Command`, replayed through the same deterministic state machine, which
//! also rebuilds the session table that makes retries exactly-once).

pub mod group_commit;
pub mod snapshot;
pub mod wal;

use crate::kv::PartitionStore;
use crate::map::{Partition, PartitionId};
use crate::op::Op;
use crate::rt::{Disk, Runtime};
use bincode::Options;
use group_commit::{GroupCommitConfig, LogWriter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wal::{Lsn, Wal, WalError};

/// Record kind of a bincode-encoded [`LogEntry`].
pub const KIND_ENTRY: u8 = 1;

/// What a log record says happened.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEntry {
    /// This server started hosting a partition (empty).
    Host(Partition),
    /// A command of `(session, seq)` that changed the partition's state.
    Command {
        session: u64,
        seq: u64,
        ops: Vec<Op>,
    },
}

fn entry_options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(wal::RECORD_PAYLOAD_LEN_MAX as u64)
}

/// Storage configuration.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// Directory of the write-ahead log segments.
    pub log_dir: PathBuf,
    /// Directory of the snapshots.
    pub db_dir: PathBuf,
    pub group_commit: GroupCommitConfig,
    /// Size at which the log starts a new segment, in bytes.
    pub segment_bytes_max: u64,
    /// Log bytes written after which all partitions are snapshotted and the
    /// log before the snapshot is deleted.
    pub checkpoint_log_bytes: u64,
}

impl StorageConfig {
    pub const CHECKPOINT_LOG_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(transparent)]
    Wal(#[from] WalError),
    #[error(transparent)]
    Snapshot(#[from] snapshot::SnapshotError),
    #[error("write-ahead log record {lsn}: {reason}")]
    BadEntry { lsn: Lsn, reason: String },
    #[error("the write-ahead log starts at record {log_first} but the snapshot of partition {partition} ends at {snapshot}: records in between are missing")]
    Gap {
        partition: PartitionId,
        snapshot: Lsn,
        log_first: Lsn,
    },
}

/// What recovery found, for logs and tests.
#[derive(Debug, Default)]
pub struct Recovery {
    pub stores: BTreeMap<PartitionId, PartitionStore>,
    pub snapshots_loaded: usize,
    pub records_replayed: usize,
    pub truncated_tail_bytes: u64,
}

/// A server's durable storage. See the module docs.
pub struct Storage<D: Disk> {
    disk: D,
    config: StorageConfig,
    wal: Arc<tokio::sync::Mutex<Wal<D>>>,
    log: LogWriter,
    bytes_since_checkpoint: u64,
    checkpoint_running: Arc<AtomicBool>,
    checkpoints_done: Arc<std::sync::atomic::AtomicU64>,
}

impl<D: Disk> Storage<D> {
    /// Recovers the stores from disk and starts the log flusher.
    pub async fn open<R: Runtime>(
        rt: &R,
        disk: D,
        config: StorageConfig,
    ) -> Result<(Storage<D>, Recovery), StorageError> {
        let mut recovery = Recovery::default();
        let mut covered: BTreeMap<PartitionId, Lsn> = BTreeMap::new();
        for (lsn, store) in snapshot::load_snapshots(&disk, &config.db_dir).await? {
            covered.insert(store.range().id, lsn);
            recovery.stores.insert(store.range().id, store);
            recovery.snapshots_loaded += 1;
        }
        let newest = covered.values().copied().max().unwrap_or(0);
        let (wal, recovered) = Wal::open(
            disk.clone(),
            &config.log_dir,
            config.segment_bytes_max,
            newest + 1,
        )
        .await?;
        recovery.truncated_tail_bytes = recovered.truncated_tail_bytes;
        let log_first = recovered.records.first().map_or(wal.next_lsn(), |r| r.lsn);
        for (&partition, &snapshot) in &covered {
            if log_first > snapshot + 1 {
                return Err(StorageError::Gap {
                    partition,
                    snapshot,
                    log_first,
                });
            }
        }
        for record in recovered.records {
            let bad = |reason: String| StorageError::BadEntry {
                lsn: record.lsn,
                reason,
            };
            if record.kind != KIND_ENTRY {
                return Err(bad(format!("unknown record kind {}", record.kind)));
            }
            let entry: LogEntry = entry_options()
                .reject_trailing_bytes()
                .deserialize(&record.payload)
                .map_err(|e| bad(format!("does not decode: {e}")))?;
            if covered.get(&record.group).is_some_and(|&l| record.lsn <= l) {
                continue; // already in the snapshot
            }
            match entry {
                LogEntry::Host(range) if !range.is_valid_range() => {
                    return Err(bad(format!(
                        "partition {} has an empty range or no replicas",
                        range.id
                    )));
                }
                LogEntry::Host(range) => {
                    recovery
                        .stores
                        .entry(range.id)
                        .or_insert_with(|| PartitionStore::new(range));
                }
                LogEntry::Command { session, seq, ops } => {
                    let store = recovery.stores.get_mut(&record.group).ok_or_else(|| {
                        bad(format!(
                            "command for partition {} that was never hosted",
                            record.group
                        ))
                    })?;
                    // The outcome was decided before it was logged; replay
                    // reproduces it (and the session table) exactly.
                    let _ = store.execute_once(session, seq, &ops);
                    recovery.records_replayed += 1;
                }
            }
        }
        let next_lsn = wal.next_lsn();
        let wal = Arc::new(tokio::sync::Mutex::new(wal));
        let log = LogWriter::start(rt, wal.clone(), next_lsn, config.group_commit);
        tracing::info!(
            snapshots = recovery.snapshots_loaded,
            replayed = recovery.records_replayed,
            partitions = recovery.stores.len(),
            next_lsn,
            "storage recovered"
        );
        Ok((
            Storage {
                disk,
                config,
                wal,
                log,
                bytes_since_checkpoint: 0,
                checkpoint_running: Arc::new(AtomicBool::new(false)),
                checkpoints_done: Arc::new(Default::default()),
            },
            recovery,
        ))
    }

    fn append(&mut self, rt_now: std::time::Instant, group: u64, entry: &LogEntry) -> Lsn {
        let payload = entry_options().serialize(entry).expect("entry encodes");
        self.bytes_since_checkpoint += payload.len() as u64;
        self.log.append(rt_now, group, KIND_ENTRY, &payload)
    }

    /// Logs that this server now hosts `range` (an empty partition).
    pub fn log_host(&mut self, now: std::time::Instant, range: &Partition) -> Lsn {
        self.append(now, range.id, &LogEntry::Host(range.clone()))
    }

    /// Logs a command that changed `partition`'s state.
    pub fn log_command(
        &mut self,
        now: std::time::Instant,
        partition: PartitionId,
        session: u64,
        seq: u64,
        ops: &[Op],
    ) -> Lsn {
        self.append(
            now,
            partition,
            &LogEntry::Command {
                session,
                seq,
                ops: ops.to_vec(),
            },
        )
    }

    pub fn last_appended(&self) -> Lsn {
        self.log.last_appended()
    }

    pub fn durable(&self) -> Result<Lsn, String> {
        self.log.durable()
    }

    pub async fn durable_changed(&mut self) -> Result<Lsn, String> {
        self.log.durable_changed().await
    }

    /// Records appended but not yet durable (for backpressure).
    pub fn pending_records(&self) -> u64 {
        self.last_appended() - self.durable().unwrap_or(0).min(self.last_appended())
    }

    /// Completed checkpoints since start.
    pub fn checkpoints_done(&self) -> u64 {
        self.checkpoints_done.load(Ordering::Relaxed)
    }

    /// Starts a checkpoint in the background if enough log was written since
    /// the last one and none is running.
    pub fn maybe_checkpoint<R: Runtime>(
        &mut self,
        rt: &R,
        stores: &BTreeMap<PartitionId, PartitionStore>,
    ) {
        if self.bytes_since_checkpoint < self.config.checkpoint_log_bytes
            || self.checkpoint_running.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.bytes_since_checkpoint = 0;
        let lsn = self.last_appended();
        let stores: Vec<PartitionStore> = stores.values().cloned().collect();
        let mut durable = self.log.durable_watch();
        let (disk, dir, wal) = (
            self.disk.clone(),
            self.config.db_dir.clone(),
            self.wal.clone(),
        );
        let (running, done) = (
            self.checkpoint_running.clone(),
            self.checkpoints_done.clone(),
        );
        rt.spawn(async move {
            // A snapshot must never get ahead of the durable log: if it did,
            // a crash could leave the log shorter than the snapshot and later
            // records would reuse LSNs the snapshot already claims.
            while !matches!(*durable.borrow(), Ok(d) if d >= lsn) {
                if durable.changed().await.is_err() || durable.borrow().is_err() {
                    running.store(false, Ordering::Release);
                    return;
                }
            }
            let result: Result<usize, StorageError> = async {
                for store in &stores {
                    snapshot::write_snapshot(&disk, &dir, store.range().id, lsn, store).await?;
                }
                let purged = wal.lock().await.purge_through(lsn).await?;
                for store in &stores {
                    snapshot::remove_older_snapshots(&disk, &dir, store.range().id, lsn).await?;
                }
                Ok(purged)
            }
            .await;
            match result {
                Ok(purged) => {
                    done.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        lsn,
                        partitions = stores.len(),
                        purged_segments = purged,
                        "checkpoint done"
                    );
                }
                Err(e) => {
                    tracing::error!(lsn, "checkpoint failed (the log still has everything): {e}")
                }
            }
            running.store(false, Ordering::Release);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use crate::map::PartitionMap;
    use crate::rt::tokio_rt::TokioRuntime;
    use crate::rt::SimDisk;
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    fn config(checkpoint_log_bytes: u64) -> StorageConfig {
        StorageConfig {
            log_dir: PathBuf::from("/data/log"),
            db_dir: PathBuf::from("/data/db"),
            group_commit: GroupCommitConfig {
                batch_size: 8,
                batch_timeout: Duration::ZERO,
            },
            segment_bytes_max: 2048,
            checkpoint_log_bytes,
        }
    }

    fn partitions() -> Vec<Partition> {
        let servers = ["127.0.0.1:1".parse().unwrap()];
        let map = PartitionMap::build(&[("a".into(), 10), ("b".into(), 10)], &servers, 1).unwrap();
        map.partitions.into_values().collect()
    }

    type Model = BTreeMap<PartitionId, BTreeMap<u64, Vec<u8>>>;

    fn contents(stores: &BTreeMap<PartitionId, PartitionStore>) -> Model {
        stores
            .iter()
            .map(|(id, s)| {
                let all = Op::Scan {
                    start: Key::new(s.range().table.clone(), 0),
                    end: Key::new(s.range().table.clone(), u64::MAX),
                };
                let rows = match s.clone().execute(&[all]).unwrap().pop() {
                    Some(crate::op::OpResult::Scan(rows)) => rows,
                    other => panic!("scan returned {other:?}"),
                };
                (*id, rows.into_iter().map(|(k, v)| (k.num, v)).collect())
            })
            .collect()
    }

    /// redb-style crash test. Runs a workload through `Storage` (group
    /// commit, segment rotation, background checkpoints and log purges) on a
    /// disk that records its durable image after every fsync. Each image is
    /// exactly what a power cut at that instant, keeping no unsynced byte,
    /// leaves. Reopening every image must give the state after some prefix
    /// of the commands that includes every command acknowledged before the
    /// image was taken.
    #[tokio::test]
    async fn every_fsync_point_reopens_to_a_prefix_with_all_acknowledged_writes() {
        let rt = TokioRuntime;
        let disk = SimDisk::new();
        disk.record_sync_images();
        let (mut storage, recovery) = Storage::open(&rt, disk.clone(), config(600)).await.unwrap();
        assert!(recovery.stores.is_empty());
        let mut stores = BTreeMap::new();
        for range in partitions() {
            storage.log_host(rt.now(), &range);
            stores.insert(range.id, PartitionStore::new(range));
        }
        let empty = contents(&stores);
        // prefixes[i] = state after the first i commands.
        let mut prefixes = vec![empty];
        // acked_at[i] = images recorded when command i was acknowledged.
        let mut acked_at = Vec::new();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        let ids: Vec<PartitionId> = stores.keys().copied().collect();
        let mut seq = 0;
        while prefixes.len() < 300 {
            let batch = rng.gen_range(1..=5);
            for _ in 0..batch {
                let id = ids[rng.gen_range(0..ids.len())];
                let store = stores.get_mut(&id).unwrap();
                let key = Key::new(
                    store.range().table.clone(),
                    store.range().start + rng.gen_range(0..4),
                );
                let op = if rng.gen_bool(0.8) {
                    Op::Put {
                        key,
                        value: format!("v{seq}").into_bytes(),
                    }
                } else {
                    Op::Delete { key }
                };
                seq += 1;
                let executed = store
                    .execute_once(1, seq, std::slice::from_ref(&op))
                    .unwrap();
                assert!(executed.changed || matches!(op, Op::Delete { .. }));
                if executed.changed {
                    storage.log_command(rt.now(), id, 1, seq, &[op]);
                }
                prefixes.push(contents(&stores));
            }
            let want = storage.last_appended();
            while !matches!(storage.durable(), Ok(d) if d >= want) {
                storage.durable_changed().await.unwrap();
            }
            let images_now = disk.sync_image_count();
            acked_at.resize(prefixes.len() - 1, images_now);
            storage.maybe_checkpoint(&rt, &stores);
            tokio::task::yield_now().await;
        }
        // Let a running checkpoint finish so its fsync points are covered too.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            storage.checkpoints_done() > 0,
            "the workload must exercise checkpoints"
        );
        let images = disk.sync_images();
        assert!(images.len() > 100, "only {} fsync points", images.len());
        for (k, image) in images.into_iter().enumerate() {
            let (_, recovery) = Storage::open(&rt, image, config(600))
                .await
                .unwrap_or_else(|e| panic!("image {k} does not reopen: {e}"));
            let got = contents(&recovery.stores);
            let required = acked_at.iter().filter(|&&m| m <= k).count();
            let matches: Vec<usize> = (0..prefixes.len())
                .filter(|&j| prefixes[j] == got || (got.is_empty() && j == 0))
                .collect();
            assert!(
                matches.iter().any(|&j| j >= required),
                "image {k}: recovered state matches prefixes {matches:?}, but {required} commands were acknowledged"
            );
        }
    }
}
