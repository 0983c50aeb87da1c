//! Durable storage for a server's partitions: a shared write-ahead log with
//! group commit, per-partition snapshots, and crash recovery.
//!
//! ```text
//!  driver: command applied ──log_command──▶ LogWriter (group commit) ──▶ Wal segments
//!          reply held until durable LSN ≥ its LSN  ◀── durable LSN ──┘
//!  every `checkpoint_log_bytes` of log: clone stores at LSN L (O(1) each),
//!  wait until L is durable, encode and write snapshots (tmp, sync, rename,
//!  sync dir), purge log ≤ L
//!  received snapshot: its own file (durably) first, then a small record
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
use crate::raft::{Entry, HardState, Membership, RaftState, SnapshotMeta};
use crate::rt::{Disk, Runtime};
use bincode::Options;
use group_commit::{GroupCommitConfig, LogWriter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use wal::{Lsn, Wal, WalError};

/// Record kind of a bincode-encoded [`LogEntry`]. (Kind 1 was the
/// single-copy format before replication; such logs are refused.)
pub const KIND_ENTRY: u8 = 2;

/// What a log record says happened to one partition's replica (the record's
/// `group` is the partition id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogEntry {
    /// This server started hosting a replica of the partition (empty; its
    /// Raft group's initial members are `replicas`).
    Host(Partition),
    /// One Raft `Ready`: the new hard state, if it changed, and entries,
    /// which replace every entry from the first one's index on. One record,
    /// so a crash keeps both or neither.
    Raft {
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
    },
    /// A snapshot received from the leader, whole in the record (written by
    /// earlier versions only; still read): it replaces the partition's
    /// state and the log up to `meta.index`. `data` is
    /// [`snapshot::encode_store`] of the state.
    Snapshot { meta: SnapshotMeta, data: Vec<u8> },
    /// A snapshot received from the leader (InstallSnapshot), in its own
    /// file `recv-<partition>-<meta.index>.snap` (made durable before this
    /// record was appended) of `len` bytes with CRC-32 `crc`: it replaces
    /// the partition's state and the log up to `meta.index`.
    SnapshotFile {
        meta: SnapshotMeta,
        len: u64,
        crc: u32,
    },
    /// The replica was removed from its group and dropped: recovery
    /// forgets the partition and every earlier record of it (a later
    /// `Host` starts it anew).
    Unhost,
}

fn entry_options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(wal::RECORD_PAYLOAD_LEN_MAX as u64)
}

/// One replica's state at a checkpoint: the state machine through
/// `meta.index`, the hard state, and the log entries after `meta.index`
/// (committed or not). Everything the log held for this group up to the
/// checkpoint's LSN, so the log before it can be deleted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSnapshot {
    pub store: PartitionStore,
    pub meta: SnapshotMeta,
    pub hard_state: HardState,
    pub tail: Vec<Entry>,
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

/// One replica as recovered: the state machine at `raft.snapshot.index`
/// and the Raft state to restart the group member from (its committed
/// entries after the snapshot are re-applied by the server).
#[derive(Debug)]
pub struct RecoveredGroup {
    pub store: PartitionStore,
    pub raft: RaftState,
}

/// What recovery found, for logs and tests.
#[derive(Debug, Default)]
pub struct Recovery {
    pub groups: BTreeMap<PartitionId, RecoveredGroup>,
    pub snapshots_loaded: usize,
    pub records_replayed: usize,
    pub truncated_tail_bytes: u64,
}

/// A replica being rebuilt from its snapshot and log records.
struct Rebuild {
    store: PartitionStore,
    meta: SnapshotMeta,
    hard_state: HardState,
    /// Entries `meta.index + 1 ..`, contiguous.
    entries: Vec<Entry>,
}

impl Rebuild {
    fn new(range: Partition) -> Rebuild {
        Rebuild {
            store: PartitionStore::new(range),
            meta: SnapshotMeta::default(),
            hard_state: HardState::default(),
            entries: Vec::new(),
        }
    }

    fn from_snapshot(s: GroupSnapshot) -> Rebuild {
        Rebuild {
            store: s.store,
            meta: s.meta,
            hard_state: s.hard_state,
            entries: s.tail,
        }
    }

    fn last_index(&self) -> u64 {
        self.meta.index + self.entries.len() as u64
    }

    /// Entries replace the log from the first one's index on (entries the
    /// snapshot already covers are skipped: they are committed, so equal).
    fn append(&mut self, entries: Vec<Entry>) -> Result<(), String> {
        let mut entries = entries
            .into_iter()
            .skip_while(|e| e.index <= self.meta.index);
        let Some(first) = entries.next() else {
            return Ok(());
        };
        if first.index > self.last_index() + 1 {
            return Err(format!(
                "entries start at index {} but the log ends at {}",
                first.index,
                self.last_index()
            ));
        }
        self.entries
            .truncate((first.index - self.meta.index - 1) as usize);
        for e in std::iter::once(first).chain(entries) {
            if e.index != self.last_index() + 1 {
                return Err(format!("entries are not contiguous at index {}", e.index));
            }
            self.entries.push(e);
        }
        Ok(())
    }

    /// A snapshot from the leader replaces the state machine; the log after
    /// it survives only if it agrees with the snapshot's last entry.
    fn install(&mut self, meta: SnapshotMeta, data: &[u8]) -> Result<(), String> {
        let store = snapshot::decode_store(data)?;
        if store.range().id != self.store.range().id {
            return Err(format!(
                "snapshot of partition {} in the log of partition {}",
                store.range().id,
                self.store.range().id
            ));
        }
        let keep_from = meta.index.saturating_sub(self.meta.index) as usize;
        let agrees = meta.index > self.meta.index
            && self
                .entries
                .get(keep_from.wrapping_sub(1))
                .is_some_and(|e| e.index == meta.index && e.term == meta.term);
        self.entries = if agrees {
            self.entries.split_off(keep_from)
        } else {
            Vec::new()
        };
        self.store = store;
        self.meta = meta;
        Ok(())
    }

    fn finish(self) -> RecoveredGroup {
        let initial_membership = Membership::new(self.store.range().replicas.iter().copied());
        RecoveredGroup {
            raft: RaftState {
                hard_state: self.hard_state,
                snapshot: self.meta,
                entries: self.entries,
                initial_membership,
            },
            store: self.store,
        }
    }
}

/// Writes received snapshots' files (see [`Storage::snapshot_writer`]).
#[derive(Clone)]
pub struct SnapshotWriter<D: Disk> {
    disk: D,
    dir: PathBuf,
}

impl<D: Disk> SnapshotWriter<D> {
    /// Writes `recv-<partition>-<index>.snap` durably (synced, renamed into
    /// place, directory synced).
    pub async fn write(
        &self,
        partition: PartitionId,
        index: u64,
        data: &[u8],
    ) -> Result<(), StorageError> {
        snapshot::write_received(&self.disk, &self.dir, partition, index, data).await?;
        Ok(())
    }
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
    /// The running checkpoint's LSN and the gate its task waits on until
    /// the log is durable through that LSN (opened by the driver's own
    /// durable-LSN updates, so only one task ever waits on the log's
    /// watch channel: see [`Storage::checkpoint`]).
    checkpoint_gate: Option<(Lsn, tokio::sync::oneshot::Sender<()>)>,
}

impl<D: Disk> Storage<D> {
    /// Recovers the replicas from disk and starts the log flusher.
    pub async fn open<R: Runtime>(
        rt: &R,
        disk: D,
        config: StorageConfig,
    ) -> Result<(Storage<D>, Recovery), StorageError> {
        let mut recovery = Recovery::default();
        let mut covered: BTreeMap<PartitionId, Lsn> = BTreeMap::new();
        let mut groups: BTreeMap<PartitionId, Rebuild> = BTreeMap::new();
        for (lsn, group) in snapshot::load_snapshots(&disk, &config.db_dir).await? {
            let id = group.store.range().id;
            covered.insert(id, lsn);
            groups.insert(id, Rebuild::from_snapshot(group));
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
        // Partitions dropped in the log: everything of theirs before the
        // drop is moot (a checkpoint may have removed their snapshots).
        let mut dropped: BTreeMap<PartitionId, Lsn> = BTreeMap::new();
        let mut entries = Vec::with_capacity(recovered.records.len());
        for record in recovered.records {
            let bad = |reason: String| StorageError::BadEntry {
                lsn: record.lsn,
                reason,
            };
            if record.kind != KIND_ENTRY {
                return Err(bad(format!(
                    "unknown record kind {} (a log from an older, unreplicated version?)",
                    record.kind
                )));
            }
            let entry: LogEntry = entry_options()
                .reject_trailing_bytes()
                .deserialize(&record.payload)
                .map_err(|e| bad(format!("does not decode: {e}")))?;
            if entry == LogEntry::Unhost {
                dropped.insert(record.group, record.lsn);
            }
            entries.push((record.lsn, record.group, entry));
        }
        for (&partition, &lsn) in &dropped {
            if covered.get(&partition).is_some_and(|&l| l < lsn) {
                covered.remove(&partition);
                groups.remove(&partition);
            }
        }
        for (&partition, &snapshot) in &covered {
            if log_first > snapshot + 1 {
                return Err(StorageError::Gap {
                    partition,
                    snapshot,
                    log_first,
                });
            }
        }
        for (lsn, group_id, entry) in entries {
            let bad = |reason: String| StorageError::BadEntry { lsn, reason };
            if covered.get(&group_id).is_some_and(|&l| lsn <= l) {
                continue; // already in the snapshot
            }
            if dropped.get(&group_id).is_some_and(|&l| lsn < l) {
                continue; // the replica was dropped later
            }
            let group = |groups: &mut BTreeMap<PartitionId, Rebuild>| {
                groups.remove(&group_id).ok_or_else(|| {
                    bad(format!(
                        "record for partition {group_id} that was never hosted"
                    ))
                })
            };
            match entry {
                LogEntry::Host(range) if !range.is_valid_range() || range.id != group_id => {
                    return Err(bad(format!(
                        "partition {} has an empty range or no replicas, or is not the record's group",
                        range.id
                    )));
                }
                LogEntry::Host(range) => {
                    // A new, empty replica (after an earlier one was dropped).
                    groups.insert(range.id, Rebuild::new(range));
                }
                LogEntry::Unhost => {
                    groups.remove(&group_id);
                    recovery.records_replayed += 1;
                }
                LogEntry::Raft {
                    hard_state,
                    entries,
                } => {
                    let mut g = group(&mut groups)?;
                    if let Some(hs) = hard_state {
                        g.hard_state = hs;
                    }
                    g.append(entries).map_err(bad)?;
                    groups.insert(group_id, g);
                    recovery.records_replayed += 1;
                }
                LogEntry::Snapshot { meta, data } => {
                    let mut g = group(&mut groups)?;
                    g.install(meta, &data).map_err(bad)?;
                    groups.insert(group_id, g);
                    recovery.records_replayed += 1;
                }
                LogEntry::SnapshotFile { meta, len, crc } => {
                    let mut g = group(&mut groups)?;
                    let data = snapshot::read_received(&disk, &config.db_dir, group_id, meta.index)
                        .await?;
                    if data.len() as u64 != len || crc32fast::hash(&data) != crc {
                        return Err(bad(format!(
                            "the received snapshot at index {} is not the one logged",
                            meta.index
                        )));
                    }
                    g.install(meta, &data).map_err(bad)?;
                    groups.insert(group_id, g);
                    recovery.records_replayed += 1;
                }
            }
        }
        recovery.groups = groups.into_iter().map(|(id, g)| (id, g.finish())).collect();
        let next_lsn = wal.next_lsn();
        let wal = Arc::new(tokio::sync::Mutex::new(wal));
        let log = LogWriter::start(rt, wal.clone(), next_lsn, config.group_commit);
        tracing::info!(
            snapshots = recovery.snapshots_loaded,
            replayed = recovery.records_replayed,
            partitions = recovery.groups.len(),
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
                checkpoint_gate: None,
            },
            recovery,
        ))
    }

    fn append(&mut self, now: std::time::Instant, group: u64, entry: &LogEntry) -> Lsn {
        let payload = entry_options().serialize(entry).expect("entry encodes");
        self.bytes_since_checkpoint += payload.len() as u64;
        self.log.append(now, group, KIND_ENTRY, &payload)
    }

    /// Logs that this server now hosts a replica of `range` (empty).
    pub fn log_host(&mut self, now: std::time::Instant, range: &Partition) -> Lsn {
        self.append(now, range.id, &LogEntry::Host(range.clone()))
    }

    /// Logs that this server dropped its replica of `partition`.
    pub fn log_unhost(&mut self, now: std::time::Instant, partition: PartitionId) -> Lsn {
        self.append(now, partition, &LogEntry::Unhost)
    }

    /// Logs one Raft `Ready` of `partition`'s replica.
    pub fn log_raft(
        &mut self,
        now: std::time::Instant,
        partition: PartitionId,
        hard_state: Option<HardState>,
        entries: Vec<Entry>,
    ) -> Lsn {
        self.append(
            now,
            partition,
            &LogEntry::Raft {
                hard_state,
                entries,
            },
        )
    }

    /// Logs a snapshot received from the leader: first its bytes go to a
    /// file of their own, durably; then a small record that refers to it
    /// is appended (durable with the log's next fsync, like any record).
    /// A crash before the record is durable leaves an unreferenced file,
    /// which recovery ignores and a later checkpoint removes. (The server
    /// does the two steps apart, [`Storage::snapshot_writer`] off its event
    /// loop and then [`Storage::log_snapshot_file`], holding the
    /// partition's later records meanwhile.)
    pub async fn log_received_snapshot<R: Runtime>(
        &mut self,
        rt: &R,
        partition: PartitionId,
        meta: SnapshotMeta,
        data: &[u8],
    ) -> Result<Lsn, StorageError> {
        let writer = self.snapshot_writer();
        writer.write(partition, meta.index, data).await?;
        Ok(self.log_snapshot_file(rt.now(), partition, meta, data))
    }

    /// What writes a received snapshot's file, durably, from any task.
    pub fn snapshot_writer(&self) -> SnapshotWriter<D> {
        SnapshotWriter {
            disk: self.disk.clone(),
            dir: self.config.db_dir.clone(),
        }
    }

    /// Logs the record that refers to a received snapshot whose file
    /// [`SnapshotWriter::write`] made durable.
    pub fn log_snapshot_file(
        &mut self,
        now: std::time::Instant,
        partition: PartitionId,
        meta: SnapshotMeta,
        data: &[u8],
    ) -> Lsn {
        let entry = LogEntry::SnapshotFile {
            meta,
            len: data.len() as u64,
            crc: crc32fast::hash(data),
        };
        self.append(now, partition, &entry)
    }

    pub fn last_appended(&self) -> Lsn {
        self.log.last_appended()
    }

    pub fn durable(&self) -> Result<Lsn, String> {
        self.log.durable()
    }

    pub async fn durable_changed(&mut self) -> Result<Lsn, String> {
        let durable = self.log.durable_changed().await;
        self.open_checkpoint_gate();
        durable
    }

    /// Lets a waiting checkpoint go on once the log is durable through its
    /// LSN, or stops it if the log failed.
    fn open_checkpoint_gate(&mut self) {
        let Some(&(lsn, _)) = self.checkpoint_gate.as_ref() else {
            return;
        };
        match self.durable() {
            Ok(durable) if durable < lsn => {}
            Ok(_) => {
                if let Some((_, gate)) = self.checkpoint_gate.take() {
                    let _ = gate.send(());
                }
            }
            // Dropping the gate stops the checkpoint.
            Err(_) => self.checkpoint_gate = None,
        }
    }

    /// Records appended but not yet durable (for backpressure).
    pub fn pending_records(&self) -> u64 {
        self.last_appended() - self.durable().unwrap_or(0).min(self.last_appended())
    }

    /// Completed checkpoints since start.
    pub fn checkpoints_done(&self) -> u64 {
        self.checkpoints_done.load(Ordering::Relaxed)
    }

    /// Whether enough log was written since the last checkpoint to start
    /// another, and none is running.
    pub fn checkpoint_due(&self) -> bool {
        self.bytes_since_checkpoint >= self.config.checkpoint_log_bytes
            && !self.checkpoint_running.load(Ordering::Acquire)
    }

    /// Starts a checkpoint in the background: `groups` must be every hosted
    /// replica's state as of the last appended record.
    pub fn checkpoint<R: Runtime>(&mut self, rt: &R, groups: Vec<GroupSnapshot>) {
        if self.checkpoint_running.swap(true, Ordering::AcqRel) {
            return;
        }
        self.bytes_since_checkpoint = 0;
        let lsn = self.last_appended();
        let (gate, opened) = tokio::sync::oneshot::channel();
        self.checkpoint_gate = Some((lsn, gate));
        self.open_checkpoint_gate();
        let (disk, dir, wal) = (
            self.disk.clone(),
            self.config.db_dir.clone(),
            self.wal.clone(),
        );
        let (running, done) = (
            self.checkpoint_running.clone(),
            self.checkpoints_done.clone(),
        );
        let clock = rt.clone();
        rt.spawn(async move {
            // A snapshot must never get ahead of the durable log: if it did,
            // a crash could leave the log shorter than the snapshot and later
            // records would reuse LSNs the snapshot already claims. The
            // driver opens the gate from its own durable-LSN updates; this
            // task does not wait on the log's watch channel itself, because
            // a watch with two waiters wakes them in an order drawn from
            // tokio's thread-local RNG, which the simulator does not seed.
            if opened.await.is_err() {
                running.store(false, Ordering::Release);
                return;
            }
            let started = clock.now();
            let result: Result<usize, StorageError> = async {
                for group in &groups {
                    snapshot::write_snapshot(&disk, &dir, group.store.range().id, lsn, group)
                        .await?;
                }
                // Snapshots of partitions dropped since the last checkpoint
                // go before the log that says they were dropped.
                let kept: std::collections::BTreeSet<PartitionId> =
                    groups.iter().map(|g| g.store.range().id).collect();
                snapshot::remove_snapshots_except(&disk, &dir, &kept, lsn).await?;
                let purged = wal.lock().await.purge_through(lsn).await?;
                for group in &groups {
                    let partition = group.store.range().id;
                    snapshot::remove_older_snapshots(&disk, &dir, partition, lsn).await?;
                    snapshot::remove_received_through(&disk, &dir, partition, group.meta.index)
                        .await?;
                }
                Ok(purged)
            }
            .await;
            match result {
                Ok(purged) => {
                    done.fetch_add(1, Ordering::Relaxed);
                    crate::stats::count(crate::stats::Event::Checkpoint);
                    tracing::info!(
                        lsn,
                        partitions = groups.len(),
                        purged_segments = purged,
                        took_ms = clock.now().saturating_duration_since(started).as_millis() as u64,
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
    use crate::kv::LogCommand;
    use crate::map::PartitionMap;
    use crate::op::Op;
    use crate::raft::EntryData;
    use crate::rt::tokio_rt::TokioRuntime;
    use crate::rt::SimDisk;
    use crate::server::replica::Command;
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

    /// The state machines a recovery restarts from, with their committed
    /// entries re-applied (what the server does on start).
    fn recovered_stores(recovery: Recovery) -> BTreeMap<PartitionId, PartitionStore> {
        recovery
            .groups
            .into_iter()
            .map(|(id, g)| {
                let mut store = g.store;
                for e in g.raft.entries {
                    if e.index > g.raft.hard_state.commit {
                        break;
                    }
                    if let EntryData::Normal(data) = &e.data {
                        let c: LogCommand =
                            bincode::DefaultOptions::new().deserialize(data).unwrap();
                        match c {
                            LogCommand::Command(c) => {
                                let _ = store.execute_once(&c);
                            }
                            LogCommand::Txn {
                                time_ms,
                                session_ttl_ms,
                                op,
                            } => {
                                store.apply_txn_entry(time_ms, session_ttl_ms, &op);
                            }
                            LogCommand::Split { .. } => unreachable!("no splits here"),
                        }
                    }
                }
                (id, store)
            })
            .collect()
    }

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

    /// A snapshot received from the leader is stored as a file of its own
    /// plus a small record that refers to it. A power cut at any fsync
    /// point reopens to the state before it (no record yet; an unreferenced
    /// file is ignored) or after it, never to an error.
    #[tokio::test]
    async fn a_received_snapshot_survives_a_crash_at_every_fsync_point() {
        let rt = TokioRuntime;
        let disk = SimDisk::new();
        disk.record_sync_images();
        let (mut storage, _) = Storage::open(&rt, disk.clone(), config(1 << 30))
            .await
            .unwrap();
        let range = partitions().remove(0);
        let id = range.id;
        storage.log_host(rt.now(), &range);
        let mut leader_store = PartitionStore::new(range.clone());
        let key = Key::new(range.table.clone(), range.start);
        let put = Op::Put {
            key,
            value: vec![7; 60_000],
        };
        leader_store
            .execute_once(&crate::kv::Command::untimed(9, 1, vec![put]))
            .unwrap()
            .unwrap();
        let want = storage.last_appended();
        while !matches!(storage.durable(), Ok(d) if d >= want) {
            storage.durable_changed().await.unwrap();
        }
        let data = snapshot::encode_store(&leader_store);
        let meta = SnapshotMeta {
            index: 5,
            term: 2,
            membership: Membership::new([0]),
        };
        let before = disk.sync_image_count();
        storage
            .log_received_snapshot(&rt, id, meta.clone(), &data)
            .await
            .unwrap();
        let hs = HardState {
            term: 2,
            vote: None,
            commit: 5,
        };
        storage.log_raft(rt.now(), id, Some(hs), Vec::new());
        let want = storage.last_appended();
        while !matches!(storage.durable(), Ok(d) if d >= want) {
            storage.durable_changed().await.unwrap();
        }
        let images = disk.sync_images();
        assert!(images.len() > before + 2, "file, directory and log syncs");
        let mut saw_installed = false;
        for (k, image) in images.into_iter().enumerate().skip(before) {
            let (_, recovery) = Storage::open(&rt, image, config(1 << 30))
                .await
                .unwrap_or_else(|e| panic!("image {k} does not reopen: {e}"));
            let group = &recovery.groups[&id];
            if group.raft.snapshot.index == 5 {
                assert_eq!(group.raft.snapshot, meta);
                assert_eq!(group.store, leader_store);
                saw_installed = true;
            } else {
                assert_eq!(group.raft.snapshot.index, 0, "image {k}");
                assert!(group.store.is_empty(), "image {k}");
            }
        }
        assert!(saw_installed, "the last image has the snapshot");
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
        assert!(recovery.groups.is_empty());
        let mut stores = BTreeMap::new();
        // Each partition's log: one entry per command, committed at once
        // (a single-member group).
        let mut last_index: BTreeMap<PartitionId, u64> = BTreeMap::new();
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
                let command = Command::untimed(1, seq, vec![op]);
                let outcome = store.execute_once(&command).unwrap();
                if outcome.is_ok() {
                    let index = last_index.entry(id).or_default();
                    *index += 1;
                    let entry = Entry {
                        term: 1,
                        index: *index,
                        data: EntryData::Normal(
                            bincode::DefaultOptions::new()
                                .serialize(&LogCommand::Command(command.clone()))
                                .unwrap(),
                        ),
                    };
                    let hs = HardState {
                        term: 1,
                        vote: None,
                        commit: *index,
                    };
                    storage.log_raft(rt.now(), id, Some(hs), vec![entry]);
                }
                prefixes.push(contents(&stores));
            }
            let want = storage.last_appended();
            while !matches!(storage.durable(), Ok(d) if d >= want) {
                storage.durable_changed().await.unwrap();
            }
            let images_now = disk.sync_image_count();
            acked_at.resize(prefixes.len() - 1, images_now);
            if storage.checkpoint_due() {
                let groups = stores
                    .values()
                    .map(|store| {
                        let index = last_index.get(&store.range().id).copied().unwrap_or(0);
                        GroupSnapshot {
                            store: store.clone(),
                            meta: SnapshotMeta {
                                index,
                                term: if index > 0 { 1 } else { 0 },
                                membership: Membership::new([0]),
                            },
                            hard_state: HardState {
                                term: 1,
                                vote: None,
                                commit: index,
                            },
                            tail: Vec::new(),
                        }
                    })
                    .collect();
                storage.checkpoint(&rt, groups);
            }
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
            let got = contents(&recovered_stores(recovery));
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
