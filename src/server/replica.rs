//! One server's replicas, sans-IO: every partition it holds is a member of
//! that partition's Raft group, with the partition's state machine beside it.
//!
//! ```text
//!  Execute (writes) ──propose(Command)──▶ Raft ──committed──▶ apply ──▶ reply
//!  Execute (reads)  ──read_index(ctx)───▶ Raft ──ReadState(i)──▶ applied ≥ i ──▶ read ──▶ reply
//!  Raft messages ─────step──────────────▶ Raft
//!  tick (one timer for all groups) ─────▶ Raft
//!                                          │ Ready
//!                                          ▼
//!   Output: records to persist (+ messages and "persisted" notices to
//!   release once they are durable), messages to send now (by server),
//!   client replies
//! ```
//! The driver ([`super::run_server`]) owns the I/O: it logs what an
//! [`Output`] asks, sends messages, and reports durability back through
//! [`ServerCore::persisted`].
//!
//! A write is answered after its entry is committed and applied; a read
//! after the leader confirmed its leadership with a quorum (ReadIndex,
//! Raft dissertation §6.4) and the state machine caught up to the read
//! index, so a deposed leader never serves a stale read. Every write
//! carries the client's `(session, seq)`; the state machine's session table
//! (replicated, and in snapshots) applies a retried write at most once and
//! answers it with the original outcome. The leader stamps its wall clock
//! (`now_ms`, from the driver) into every command: the replicas expire idle
//! sessions by that log time (see `kv` and ARCHITECTURE.md "Sessions").

use crate::kv::{
    ApplyError, ExportPage, Finished, LogCommand, PartitionStore, SessionError, TxnId, TxnOp,
    TxnOutcome, TxnState, WaitKey,
};
use crate::manager::status::{ReplicaRole, ReplicaStatus, ReportedConfig, ReportedRange};
use crate::map::{NodeId, Partition, PartitionId, PartitionMap, SPLIT_BASE_INDEX, SPLIT_BASE_TERM};
use crate::op::{Op, OpResult};
use crate::raft::{
    ConfChange, Config, Entry, EntryData, HardState, Index, Membership, Message, ProposeError,
    Raft, RaftState, Role, SnapshotCheck, SnapshotMeta, Term,
};
use crate::storage::snapshot::{decode_store, encode_store};
use crate::storage::{GroupSnapshot, RecoveredGroup};
use crate::wire::{ExecError, Msg};
use bincode::Options;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Raft timing and limits for every group of a server.
#[derive(Clone, Debug)]
pub struct RaftTuning {
    /// Ticks without a leader before an election (randomized up to twice).
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    /// Applied entries kept in memory before the older half is dropped
    /// (the state machine holds their effect; a follower that needs them
    /// gets a snapshot).
    pub compact_entries: u64,
    /// Client sessions idle longer than this (in log time) are dropped from
    /// the session table. A leader stamps it into every command it proposes,
    /// so all replicas expire alike; it should be the same on every server.
    pub session_ttl: Duration,
}

impl RaftTuning {
    /// Far above twice a client's command deadline (5 s by default), so a
    /// command's retries always land within half a TTL of its first
    /// attempt: see ARCHITECTURE.md "Sessions".
    pub const SESSION_TTL_DEFAULT: Duration = Duration::from_secs(300);
}

impl Default for RaftTuning {
    fn default() -> RaftTuning {
        RaftTuning {
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_entries: 10_000,
            session_ttl: RaftTuning::SESSION_TTL_DEFAULT,
        }
    }
}

pub use crate::kv::Command;

/// What a client asks of one partition (`Msg::Execute` without routing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub session: u64,
    pub seq: u64,
    /// See [`Command::sent_ms`].
    pub sent_ms: u64,
    pub ops: Vec<Op>,
}

fn command_options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(crate::storage::wal::RECORD_PAYLOAD_LEN_MAX as u64)
}

/// Where a reply goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReplyTo {
    pub addr: SocketAddr,
    pub req: u64,
}

struct Proposal {
    term: Term,
    to: ReplyTo,
    /// What it asked, to propose again if a transaction's locks block it.
    pending: Pending,
}

/// A request the leader holds: proposed, or waiting for locks.
#[derive(Clone)]
enum Pending {
    Execute(Request),
    Txn(TxnOp),
    /// A range split (from `admin` or the manager), answered with an
    /// `AdminReply`.
    Split {
        at: u64,
        end: Option<u64>,
    },
}

/// A transaction this leader is recovering (its coordinator went silent):
/// what each other participant said when fenced.
struct Recovery {
    participants: Vec<PartitionId>,
    sent_ms: u64,
    answers: BTreeMap<PartitionId, Vote>,
}

/// A participant's answer to recovery's fence.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Vote {
    Prepared,
    Committed,
    Aborted,
    /// It no longer knows the attempt (its record expired).
    Forgotten,
}

struct Read {
    to: ReplyTo,
    ops: Vec<Op>,
}

/// What a replica asks the driver to persist. `messages` go out, and
/// [`ServerCore::persisted`] is called with `last`, only once the records
/// logged for this (and every earlier) `Persist` are durable.
#[derive(Debug, Default)]
pub struct Persist {
    pub partition: PartitionId,
    /// A snapshot received from the leader: its position and the
    /// state machine's bytes ([`encode_store`]).
    pub snapshot: Option<(SnapshotMeta, Arc<Vec<u8>>)>,
    pub hard_state: Option<HardState>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub last: Option<(Index, Term)>,
}

impl Persist {
    /// Whether there is anything to log.
    pub fn has_records(&self) -> bool {
        self.snapshot.is_some() || self.hard_state.is_some() || !self.entries.is_empty()
    }
}

/// Everything the driver must do after a call into the core.
#[derive(Debug, Default)]
pub struct Output {
    /// Replicas created by a new map (a durable server logs them first).
    pub hosted: Vec<Partition>,
    /// Replicas dropped because their group removed them (logged).
    pub unhosted: Vec<PartitionId>,
    pub persist: Vec<Persist>,
    /// Raft messages to send now, batched per destination server.
    pub messages: BTreeMap<NodeId, Vec<(PartitionId, Message)>>,
    pub replies: Vec<(SocketAddr, Msg)>,
    /// O(data) work to run off the event loop; hand each result to
    /// [`ServerCore::snapshot_done`].
    pub snapshot_jobs: Vec<SnapshotJob>,
    /// Tell the manager now rather than at the next heartbeat (a leader
    /// split its partition: the map must show it for clients to route).
    pub report_now: bool,
}

/// Work on a whole partition's state, which takes time in proportion to its
/// size: the driver runs it away from its event loop (`Runtime::
/// spawn_blocking`), so that no partition on the server waits for it.
pub enum SnapshotJob {
    /// Encode `store`, the partition's state machine at Raft index `index`
    /// (an O(1) copy: persistent maps), for followers behind the leader's
    /// log.
    Encode {
        partition: PartitionId,
        index: Index,
        store: Box<PartitionStore>,
    },
    /// Decode a whole snapshot received for `partition` at `index`, which
    /// the Raft core installs once it decodes (`Raft::snapshot_checked`).
    Decode {
        partition: PartitionId,
        index: Index,
        data: Arc<Vec<u8>>,
    },
}

impl SnapshotJob {
    /// Does the work (pure CPU: callable from any thread).
    pub fn run(self) -> SnapshotDone {
        match self {
            SnapshotJob::Encode {
                partition,
                index,
                store,
            } => SnapshotDone::Encoded {
                partition,
                index,
                data: encode_store(&store),
            },
            SnapshotJob::Decode {
                partition,
                index,
                data,
            } => SnapshotDone::Decoded {
                partition,
                index,
                store: decode_store(&data)
                    .ok()
                    .filter(|store| store.range().id == partition)
                    .map(Box::new),
            },
        }
    }
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SnapshotJob::Encode {
                partition, index, ..
            } => write!(f, "Encode {{ partition: {partition}, index: {index} }}"),
            SnapshotJob::Decode {
                partition,
                index,
                data,
            } => write!(
                f,
                "Decode {{ partition: {partition}, index: {index}, bytes: {} }}",
                data.len()
            ),
        }
    }
}

/// The result of a [`SnapshotJob`].
pub enum SnapshotDone {
    Encoded {
        partition: PartitionId,
        index: Index,
        data: Vec<u8>,
    },
    /// `None`: the bytes do not decode (or hold another partition).
    Decoded {
        partition: PartitionId,
        index: Index,
        store: Option<Box<PartitionStore>>,
    },
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.hosted.is_empty()
            && self.unhosted.is_empty()
            && self.persist.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.snapshot_jobs.is_empty()
            && !self.report_now
    }
}

/// One partition's replica on this server.
pub struct Replica {
    pub raft: Raft,
    pub store: PartitionStore,
    /// Index the store has applied.
    applied: Index,
    proposals: BTreeMap<Index, Proposal>,
    reads: BTreeMap<u64, Read>,
    ready_reads: VecDeque<(Index, Read)>,
    next_ctx: u64,
    was_leader: bool,
    /// A snapshot received in `step`, already decoded (see [`ServerCore::step`]).
    incoming: Option<(Index, PartitionStore)>,
    /// Term and vote as last handed to the log.
    logged: HardState,
    /// Callers of requests waiting in the store's queue for locks (leader
    /// only): answered when the store reports them finished.
    held: BTreeMap<WaitKey, (ReplyTo, Pending)>,
    /// Confirmed reads that touch locked keys, run once one is resolved.
    blocked_reads: Vec<Read>,
    /// Set when applying released locks.
    released: bool,
    /// Prepared transactions: ticks this leader has seen each one prepared.
    txn_age: BTreeMap<TxnId, u32>,
    recoveries: BTreeMap<TxnId, Recovery>,
    /// The index of the snapshot being encoded for followers, if any (at
    /// most one per replica; compaction keeps the entries after it).
    encoding: Option<Index>,
    /// Partitions split off by entries just applied, with the group's
    /// membership at the split, for the server to create (see
    /// [`ServerCore::split_off`]).
    births: Vec<(PartitionStore, Membership)>,
}

impl Replica {
    fn new(raft: Raft, store: PartitionStore) -> Replica {
        let applied = raft.log().applied;
        let logged = raft.hard_state();
        Replica {
            logged,
            raft,
            store,
            applied,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            ready_reads: VecDeque::new(),
            next_ctx: 1,
            was_leader: false,
            incoming: None,
            held: BTreeMap::new(),
            blocked_reads: Vec::new(),
            released: false,
            txn_age: BTreeMap::new(),
            recoveries: BTreeMap::new(),
            encoding: None,
            births: Vec::new(),
        }
    }

    pub fn applied(&self) -> Index {
        self.applied
    }

    /// This replica's state for a checkpoint (call right after the core's
    /// output was logged, so it matches the log).
    pub fn group_snapshot(&self) -> GroupSnapshot {
        let log = self.raft.log();
        GroupSnapshot {
            store: self.store.clone(),
            meta: SnapshotMeta {
                index: self.applied,
                term: log.term(self.applied).unwrap_or(0),
                membership: self.raft.membership().clone(),
            },
            hard_state: self.raft.hard_state(),
            tail: log.slice(self.applied + 1, log.last_index(), usize::MAX),
        }
    }
}

/// The server's replicas and the map they come from. See the module docs.
pub struct ServerCore {
    node_id: NodeId,
    map: Option<PartitionMap>,
    replicas: BTreeMap<PartitionId, Replica>,
    tuning: RaftTuning,
    rng: u64,
    out: Output,
    /// The wall clock as of the last request (for proposing again).
    now_ms: u64,
    /// Recovery's questions in flight: request id -> (our partition, the
    /// transaction, the partition asked).
    fences: BTreeMap<u64, (PartitionId, TxnId, PartitionId)>,
    next_req: u64,
    /// Replicas dropped, with the map's `conf_index` that removed them: a
    /// map placing one here again must be newer (not a stale placement).
    removed: BTreeMap<PartitionId, u64>,
    /// Partitions with client commands (writes proposed, reads registered)
    /// not yet run through their Readies: [`ServerCore::take_output`] runs
    /// them, so the commands that arrived together (the driver hands a
    /// burst of messages before taking the output) share one append per
    /// follower, one log record and one read-confirming heartbeat round.
    batched: BTreeSet<PartitionId>,
}

impl ServerCore {
    /// A core with the replicas recovered from disk (none in memory mode).
    /// `seed` randomizes election timeouts.
    pub fn new(
        node_id: NodeId,
        recovered: BTreeMap<PartitionId, RecoveredGroup>,
        tuning: RaftTuning,
        seed: u64,
    ) -> ServerCore {
        let mut core = ServerCore {
            node_id,
            map: None,
            replicas: BTreeMap::new(),
            tuning,
            rng: seed,
            out: Output::default(),
            now_ms: 0,
            fences: BTreeMap::new(),
            next_req: 1 << 62,
            removed: BTreeMap::new(),
            batched: BTreeSet::new(),
        };
        for (id, group) in recovered {
            let replica = core.replica(group.raft, group.store);
            core.replicas.insert(id, replica);
        }
        // Re-apply what is known committed, once every replica is back (a
        // split re-applied must find the partition it made, if recovered).
        let ids: Vec<PartitionId> = core.replicas.keys().copied().collect();
        for id in ids {
            core.process(id);
        }
        core
    }

    fn next_seed(&mut self) -> u64 {
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.rng
    }

    fn replica(&mut self, state: RaftState, store: PartitionStore) -> Replica {
        // Split-born ids have the high bit set (`split_child_id`).
        let split_born = store.range().id >= 1 << 63;
        let config = Config {
            group: store.range().id,
            born_at_term: if split_born { SPLIT_BASE_TERM } else { 0 },
            election_ticks: self.tuning.election_ticks,
            heartbeat_ticks: self.tuning.heartbeat_ticks,
            // Without --persistence every restart empties a replica; with
            // it, an operator may have wiped or replaced the disk.
            amnesia_guard: !no_amnesia_guard(),
            amnesia_listen_ticks: 2 * self.tuning.election_ticks,
            ..Config::new(self.node_id)
        };
        let seed = self.next_seed();
        let raft = Raft::new(config, state, seed);
        Replica::new(raft, store)
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn map(&self) -> Option<&PartitionMap> {
        self.map.as_ref()
    }

    pub fn replicas(&self) -> &BTreeMap<PartitionId, Replica> {
        &self.replicas
    }

    /// Takes what the driver must do now.
    pub fn take_output(&mut self) -> Output {
        for partition in std::mem::take(&mut self.batched) {
            self.process(partition);
        }
        std::mem::take(&mut self.out)
    }

    /// Every replica's state for a checkpoint.
    pub fn group_snapshots(&self) -> Vec<GroupSnapshot> {
        self.replicas
            .values()
            .map(Replica::group_snapshot)
            .collect()
    }

    /// Adopts `map` if it is newer than ours: creates a replica (empty) for
    /// every partition placed on us that we do not hold yet, and drops the
    /// replicas their groups removed.
    ///
    /// A replica is dropped only when the map's membership, committed at
    /// `conf_index`, leaves us out and our log ends before that index: the
    /// leader stops sending to a member once it appends the member's
    /// removal, so a removed replica never holds it, while a replica that
    /// was added again holds every change since. (Every entry the group
    /// committed is on a quorum of the new membership, so nothing is lost
    /// with us.)
    pub fn install_map(&mut self, map: PartitionMap) {
        if self.map.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
            return;
        }
        let me = self.node_id;
        let held: Vec<PartitionId> = self.replicas.keys().copied().collect();
        for id in held {
            let Some(group) = map.groups.get(&id) else {
                continue;
            };
            let last = self.replicas[&id].raft.log().last_index();
            if map.hosts(id).any(|n| n == me) || group.conf_index <= last {
                continue;
            }
            self.drop_replica(id, group.conf_index);
        }
        for partition in map.partitions.values() {
            let Some(group) = map.groups.get(&partition.id) else {
                continue;
            };
            if !map.hosts(partition.id).any(|n| n == me)
                || self.replicas.contains_key(&partition.id)
                || self
                    .removed
                    .get(&partition.id)
                    .is_some_and(|&c| c >= group.conf_index)
            {
                continue;
            }
            tracing::info!(
                node_id = me,
                partition = partition.id,
                table = %partition.table,
                start = partition.start,
                end = ?partition.end,
                voters = ?partition.replicas,
                learners = ?group.learners,
                "hosting a replica"
            );
            // The group's initial voters, whatever it has now: the log
            // (or a snapshot) brings the membership changes since.
            // And its initial range: the log replays the splits since.
            let range = Partition {
                replicas: group.initial.clone(),
                end: group.initial_end,
                ..partition.clone()
            };
            let state = RaftState {
                initial_membership: Membership::new(group.initial.iter().copied()),
                ..RaftState::default()
            };
            let replica = self.replica(state, PartitionStore::new(range.clone()));
            self.replicas.insert(partition.id, replica);
            self.removed.remove(&partition.id);
            self.out.hosted.push(range);
        }
        self.map = Some(map);
        let ids: Vec<PartitionId> = self.replicas.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    /// Drops our replica of `partition`, which its group removed (the map
    /// says so as of `conf_index`); whoever waits on it is told.
    fn drop_replica(&mut self, partition: PartitionId, conf_index: u64) {
        let Some(mut r) = self.replicas.remove(&partition) else {
            return;
        };
        let node_id = self.node_id;
        tracing::info!(
            node_id,
            partition,
            conf_index,
            "dropping a replica its group removed"
        );
        crate::stats::count(crate::stats::Event::ReplicaDropped);
        let leader = r.raft.leader().filter(|&l| l != node_id);
        let lost = ExecError::LeaderChanged {
            node_id,
            partition,
            leader,
        };
        for (_, p) in std::mem::take(&mut r.proposals) {
            answer(&mut self.out, p.to, &p.pending, lost.clone());
        }
        for (_, (to, pending)) in std::mem::take(&mut r.held) {
            answer(&mut self.out, to, &pending, lost.clone());
        }
        let reads = std::mem::take(&mut r.reads).into_values();
        for read in reads.chain(std::mem::take(&mut r.blocked_reads)) {
            let e = ExecError::NotLeader {
                node_id,
                partition,
                leader,
            };
            self.out.replies.push((
                read.to.addr,
                Msg::ExecuteReply {
                    req: read.to.req,
                    result: Err(e),
                },
            ));
        }
        self.removed.insert(partition, conf_index);
        self.out.unhosted.push(partition);
    }

    /// The epoch of our map (0: none yet).
    pub fn epoch(&self) -> u64 {
        self.map.as_ref().map_or(0, |m| m.epoch)
    }

    /// The state of every replica, for the manager (heartbeats).
    pub fn status(&self) -> Vec<ReplicaStatus> {
        self.replicas
            .iter()
            .map(|(&partition, r)| ReplicaStatus {
                partition,
                role: match r.raft.role() {
                    Role::Leader => ReplicaRole::Leader,
                    Role::Follower => ReplicaRole::Follower,
                    Role::PreCandidate | Role::Candidate => ReplicaRole::Candidate,
                },
                term: r.raft.term(),
                leader: r.raft.leader(),
                commit: r.raft.commit(),
                applied: r.applied,
                keys: r.store.len() as u64,
                bytes: r.store.bytes(),
                config: (r.raft.role() == Role::Leader)
                    .then(|| r.raft.committed_membership())
                    .flatten()
                    .map(|(conf_index, m)| ReportedConfig {
                        conf_index,
                        voters: m.voters.iter().copied().collect(),
                        learners: m.learners.iter().copied().collect(),
                    }),
                range: (r.raft.role() == Role::Leader).then(|| ReportedRange {
                    end: r.store.range().end,
                    splits: r.store.splits().to_vec(),
                }),
            })
            .collect()
    }

    /// Asks this server's replica of `partition`, which must lead it, to
    /// propose `change` to the group's membership, if the membership still
    /// is `voters` + `learners` with no change in flight (the manager
    /// decided on that view). A learner becomes a voter only once it has
    /// caught up, and the leader never removes itself (transfer the
    /// leadership first). Returns what happens, or why not.
    pub fn change_replicas(
        &mut self,
        partition: PartitionId,
        voters: &[NodeId],
        learners: &[NodeId],
        change: ConfChange,
    ) -> Result<String, String> {
        let me = self.node_id;
        let r = self.replica_mut(partition)?;
        if r.raft.role() != Role::Leader {
            return Err(format!(
                "server {me} does not lead partition {partition} (leader: {:?})",
                r.raft.leader()
            ));
        }
        let Some((_, current)) = r.raft.committed_membership() else {
            return Err(format!(
                "partition {partition} has a membership change in flight"
            ));
        };
        let same = |ids: &[NodeId], set: &std::collections::BTreeSet<NodeId>| {
            ids.len() == set.len() && ids.iter().all(|id| set.contains(id))
        };
        if !same(voters, &current.voters) || !same(learners, &current.learners) {
            return Err(format!(
                "partition {partition}'s membership is voters {:?} learners {:?}, not the one the change was decided on",
                current.voters, current.learners
            ));
        }
        match change {
            ConfChange::AddLearner(n)
                if current.voters.contains(&n) || current.learners.contains(&n) =>
            {
                return Err(format!(
                    "server {n} already holds a replica of partition {partition}"
                ));
            }
            ConfChange::AddVoter(n) if !current.learners.contains(&n) => {
                return Err(format!(
                    "server {n} is not a learner of partition {partition}"
                ));
            }
            ConfChange::AddVoter(n) => {
                let matched = r.raft.match_index(n).unwrap_or(0);
                let commit = r.raft.commit();
                // Only once it holds everything committed: a learner starts
                // empty, so it is under the amnesia guard until it caught
                // up with a leader, and may not vote before. Promoted
                // earlier, it would be a voter whose vote the group cannot
                // get: with another voter dead (the very reason for the
                // move), no election could be won.
                if matched == 0 || matched < commit {
                    return Err(format!(
                        "learner {n} of partition {partition} has not caught up (at {matched}, commit {commit})"
                    ));
                }
            }
            ConfChange::Remove(n) if n == me => {
                return Err(format!(
                    "server {me} leads partition {partition}: transfer the leadership before removing it"
                ));
            }
            ConfChange::Remove(n)
                if !current.voters.contains(&n) && !current.learners.contains(&n) =>
            {
                return Err(format!(
                    "server {n} holds no replica of partition {partition}"
                ));
            }
            _ => {}
        }
        let change = match change {
            // Injected bug: the new replica votes at once, empty.
            ConfChange::AddLearner(n) if crate::bug!(AddVoterBeforeCatchUp) => {
                ConfChange::AddVoter(n)
            }
            change => change,
        };
        r.raft
            .propose_conf_change(change.clone())
            .map_err(|e| format!("partition {partition} refused {change:?}: {e}"))?;
        tracing::info!(
            node_id = me,
            partition,
            ?change,
            "proposed a membership change"
        );
        crate::stats::count(crate::stats::Event::MembershipChange);
        self.process(partition);
        Ok(format!("partition {partition}: proposed {change:?}"))
    }

    /// Asks this server's replica of `partition`, which must lead it, to
    /// split the partition at key number `at` (`None`: at its middle key)
    /// through its log. The answer (an `AdminReply` to `to`) comes once the
    /// split applied, or was refused there (see [`PartitionStore::split`]);
    /// an error now says why it was not proposed.
    pub fn split(
        &mut self,
        to: ReplyTo,
        partition: PartitionId,
        at: Option<u64>,
        now_ms: u64,
    ) -> Result<(), String> {
        self.now_ms = self.now_ms.max(now_ms);
        let me = self.node_id;
        let r = self.replica_mut(partition)?;
        if r.raft.role() != Role::Leader {
            return Err(format!(
                "server {me} does not lead partition {partition} (leader: {})",
                r.raft
                    .leader()
                    .map_or("unknown".to_string(), |l| format!("server {l}"))
            ));
        }
        if let Some((at, id)) = r.store.pending_split() {
            return Err(format!(
                "partition {partition} is already splitting at key number {at} (into partition {id})"
            ));
        }
        let range = r.store.range();
        let at = match at {
            Some(at) => at,
            None => r.store.middle_key().ok_or_else(|| {
                format!("partition {partition} holds fewer than two keys: nothing to split")
            })?,
        };
        if at <= range.start || !range.contains(at) {
            return Err(format!(
                "key number {at} is not inside partition {partition} ({}[{}, {})): both halves must hold keys",
                range.table,
                range.start,
                range.end.map_or("inf".into(), |e| e.to_string())
            ));
        }
        let end = range.end;
        self.propose(partition, to, Pending::Split { at, end });
        Ok(())
    }

    /// Creates the replicas of partitions just split off `parent` (their
    /// stores hold the parent's keys from the split point on): each starts
    /// as if installed from a snapshot at [`SPLIT_BASE_INDEX`], with the
    /// parent's membership at the split, and is logged (a `Host` record,
    /// then the snapshot) so it survives a restart. A replica of the child
    /// created empty from the map meanwhile (its log is empty) takes this
    /// state, keeping its term and vote; one that already has a log (a
    /// snapshot from the child's leader got here first) is newer and stays.
    fn split_off(&mut self, parent: PartitionId) {
        let Some(r) = self.replicas.get_mut(&parent) else {
            return;
        };
        let births = std::mem::take(&mut r.births);
        let parent_leads = r.raft.role() == Role::Leader;
        for (store, membership) in births {
            let child = store.range().id;
            let mut hard_state = HardState {
                term: SPLIT_BASE_TERM,
                vote: None,
                commit: SPLIT_BASE_INDEX,
            };
            if let Some(existing) = self.replicas.get(&child) {
                if existing.raft.log().last_index() > 0 {
                    continue;
                }
                if existing.raft.term() >= SPLIT_BASE_TERM {
                    hard_state.term = existing.raft.term();
                    hard_state.vote = existing.raft.vote();
                }
            }
            if self.removed.contains_key(&child) {
                // Dropped here since (we replay an old split after a
                // restart, or were removed before we applied it).
                continue;
            }
            tracing::info!(
                node_id = self.node_id,
                parent,
                partition = child,
                table = %store.range().table,
                start = store.range().start,
                end = ?store.range().end,
                keys = store.len(),
                "a range split off: hosting its replica"
            );
            let meta = SnapshotMeta {
                index: SPLIT_BASE_INDEX,
                term: SPLIT_BASE_TERM,
                membership,
            };
            let state = RaftState {
                hard_state,
                snapshot: meta.clone(),
                entries: Vec::new(),
                initial_membership: Membership::default(),
            };
            let range = store.range().clone();
            let data = Arc::new(encode_store(&store));
            let mut replica = self.replica(state, store);
            if parent_leads {
                self.out.report_now = true;
                // The new group needs a leader: ours campaigns after a
                // heartbeat or two, by when the other replicas applied the
                // split too, instead of after a whole election timeout.
                replica
                    .raft
                    .hasten_election(2 * self.tuning.heartbeat_ticks);
            }
            self.replicas.insert(child, replica);
            self.out.hosted.push(range);
            self.out.persist.push(Persist {
                partition: child,
                snapshot: Some((meta, data)),
                hard_state: Some(hard_state),
                entries: Vec::new(),
                messages: Vec::new(),
                last: Some((SPLIT_BASE_INDEX, SPLIT_BASE_TERM)),
            });
            self.process(child);
        }
    }

    /// Our replica of `partition`, or why there is none (for the operator).
    fn replica_mut(&mut self, partition: PartitionId) -> Result<&mut Replica, String> {
        let me = self.node_id;
        self.replicas
            .get_mut(&partition)
            .ok_or_else(|| format!("server {me} holds no replica of partition {partition}"))
    }

    /// Asks this server's replica of `partition`, which must lead it, to
    /// hand the leadership to server `to` (Raft's leadership transfer: `to`
    /// is caught up, then told to campaign at once). Returns what happens,
    /// for the operator, or why not.
    pub fn transfer_leader(
        &mut self,
        partition: PartitionId,
        to: NodeId,
    ) -> Result<String, String> {
        let me = self.node_id;
        let r = self.replica_mut(partition)?;
        if to == me && r.raft.role() == Role::Leader {
            return Ok(format!("server {me} already leads partition {partition}"));
        }
        if !r.raft.membership().voters.contains(&to) {
            return Err(format!(
                "server {to} holds no voting replica of partition {partition} (its replicas: {:?})",
                r.raft.membership().voters
            ));
        }
        if let Err(e) = r.raft.transfer_leader(to) {
            let leader = r
                .raft
                .leader()
                .map_or("unknown".to_string(), |l| format!("server {l}"));
            return Err(format!(
                "server {me} does not lead partition {partition} ({e}; leader: {leader})"
            ));
        }
        tracing::info!(node_id = me, partition, to, "transferring leadership");
        self.process(partition);
        Ok(format!(
            "server {me} is handing the leadership of partition {partition} to server {to}"
        ))
    }

    /// Graceful shutdown: asks every replica that leads its group to hand
    /// the leadership to its most caught-up other voter among those heard
    /// from lately (a crashed one would stall the group until the hand-off
    /// gives up), or the most caught-up one if none was. Returns how many
    /// still lead with someone to hand it to (call again each tick until
    /// none; a transfer under way is simply asked again).
    pub fn hand_off_leaderships(&mut self) -> usize {
        let me = self.node_id;
        let mut leading = 0;
        let ids: Vec<PartitionId> = self.replicas.keys().copied().collect();
        for id in ids {
            let r = self.replicas.get_mut(&id).unwrap();
            if r.raft.role() != Role::Leader {
                continue;
            }
            let target = r
                .raft
                .membership()
                .voters
                .iter()
                .copied()
                .filter(|&v| v != me)
                .max_by_key(|&v| {
                    (
                        r.raft.recently_active(v),
                        r.raft.match_index(v).unwrap_or(0),
                    )
                });
            if let Some(to) = target {
                leading += 1;
                let _ = r.raft.transfer_leader(to);
                self.process(id);
            }
        }
        leading
    }

    /// Advances every group's clock by one tick.
    pub fn tick(&mut self) {
        let ids: Vec<PartitionId> = self.replicas.keys().copied().collect();
        for id in ids {
            self.replicas.get_mut(&id).unwrap().raft.tick();
            self.process(id);
            self.recover(id);
        }
    }

    /// Ticks a leader waits for a prepared transaction's resolution before
    /// it resolves it itself (its coordinator may be gone).
    fn recover_after_ticks(&self) -> u32 {
        self.tuning.election_ticks.saturating_mul(4).max(1)
    }

    /// Recovery (docs/transactions.md): a leader holding a transaction
    /// prepared for too long fences every other participant. Each answer
    /// is final (a fence records "aborted" where it had not prepared), so
    /// the transaction committed exactly when every participant says
    /// prepared or committed; then the leader sends the decision to all.
    fn recover(&mut self, partition: PartitionId) {
        let after = self.recover_after_ticks();
        let Some(r) = self.replicas.get_mut(&partition) else {
            return;
        };
        if r.raft.role() != Role::Leader {
            return;
        }
        let prepared: BTreeMap<TxnId, (Vec<PartitionId>, u64)> = r
            .store
            .prepared_txns()
            .map(|(id, participants, sent_ms)| (id, (participants.to_vec(), sent_ms)))
            .collect();
        r.txn_age.retain(|id, _| prepared.contains_key(id));
        r.recoveries.retain(|id, _| prepared.contains_key(id));
        let mut asks = Vec::new();
        for (id, (participants, sent_ms)) in prepared {
            let age = r.txn_age.entry(id).or_insert(0);
            *age += 1;
            if *age % after != 0 {
                continue;
            }
            tracing::info!(partition, txn = %id, ?participants, "transaction prepared for too long: recovering it");
            r.recoveries.insert(
                id,
                Recovery {
                    participants: participants.clone(),
                    sent_ms,
                    answers: BTreeMap::new(),
                },
            );
            asks.push((id, participants, sent_ms));
        }
        for (id, participants, sent_ms) in asks {
            self.fences
                .retain(|_, (p, txn, _)| !(*p == partition && *txn == id));
            for q in participants.into_iter().filter(|&q| q != partition) {
                let req = self.next_req;
                self.next_req += 1;
                self.fences.insert(req, (partition, id, q));
                self.send_to_replicas(q, req, TxnOp::Fence { id, sent_ms });
            }
        }
    }

    /// Sends a transaction step to every replica of `partition` (whichever
    /// leads it proposes it; the others refuse).
    fn send_to_replicas(&mut self, partition: PartitionId, req: u64, op: TxnOp) {
        let Some(map) = &self.map else {
            return;
        };
        let Some(p) = map.partitions.get(&partition) else {
            return;
        };
        for node in &p.replicas {
            if let Some(&addr) = map.servers.get(node) {
                let msg = Msg::Txn {
                    req,
                    partition,
                    op: op.clone(),
                };
                self.out.replies.push((addr, msg));
            }
        }
    }

    /// A reply to one of our recovery fences.
    pub fn fence_reply(&mut self, req: u64, result: Result<TxnState, ExecError>) {
        let Some(&(partition, id, asked)) = self.fences.get(&req) else {
            return;
        };
        let vote = match result {
            Ok(TxnState::Prepared { .. }) => Vote::Prepared,
            Ok(TxnState::Committed { .. }) => Vote::Committed,
            Ok(TxnState::Aborted(_)) => Vote::Aborted,
            Err(ExecError::TxnForgotten { .. }) => Vote::Forgotten,
            // Not the leader, or not now: the next round asks again.
            Err(_) => return,
        };
        self.fences.remove(&req);
        let Some(r) = self.replicas.get_mut(&partition) else {
            return;
        };
        let Some(recovery) = r.recoveries.get_mut(&id) else {
            return;
        };
        recovery.answers.insert(asked, vote);
        let votes: Vec<Vote> = recovery.answers.values().copied().collect();
        let others = recovery.participants.len().saturating_sub(1);
        let commit = if crate::bug!(TxnRecoverWithMissingPrepare) && votes.contains(&Vote::Prepared)
        {
            // Injected bug: one prepared answer is taken for all.
            true
        } else if votes.contains(&Vote::Aborted) {
            false
        } else if votes.contains(&Vote::Committed) {
            true
        } else if votes.len() < others {
            return;
        } else if votes.iter().all(|&v| v == Vote::Prepared) {
            true
        } else {
            // Some participant forgot it (resolved longer than the session
            // TTL ago) and no other tells the decision: never guess.
            let sent_ms = recovery.sent_ms;
            tracing::error!(
                partition,
                txn = %id,
                sent_ms,
                "cannot recover a transaction: a participant no longer remembers it and none \
                 other knows its outcome; its locks stay until one does"
            );
            r.recoveries.remove(&id);
            return;
        };
        let participants = r.recoveries.remove(&id).unwrap().participants;
        tracing::info!(partition, txn = %id, commit, "recovered a transaction");
        metrics::counter!("distkv_txn_recoveries_total").increment(1);
        crate::stats::count(crate::stats::Event::TxnRecovered);
        for q in participants {
            let req = self.next_req;
            self.next_req += 1;
            self.send_to_replicas(q, req, TxnOp::Resolve { id, commit });
        }
    }

    /// Delivers Raft messages from server `from`.
    pub fn step(&mut self, from: NodeId, messages: Vec<(PartitionId, Message)>) {
        let mut touched = Vec::new();
        for (partition, msg) in messages {
            let Some(replica) = self.replicas.get_mut(&partition) else {
                tracing::debug!(partition, from, "message for a partition we do not hold");
                continue;
            };
            if msg.from != from || msg.to != self.node_id {
                tracing::warn!(partition, from, "dropping a misaddressed Raft message");
                continue;
            }
            // A snapshot is decoded once all its chunks arrived, before the
            // core installs it, so whatever the core accepts can be applied:
            // by the driver, off the event loop (`snapshot_done` reports).
            let jobs = &mut self.out.snapshot_jobs;
            replica.raft.step_checked(msg, &mut |meta, data| {
                jobs.push(SnapshotJob::Decode {
                    partition,
                    index: meta.index,
                    data: data.clone(),
                });
                SnapshotCheck::Later
            });
            if touched.last() != Some(&partition) {
                touched.push(partition);
            }
        }
        touched.sort_unstable();
        touched.dedup();
        for id in touched {
            self.process(id);
        }
    }

    /// A [`SnapshotJob`] finished.
    pub fn snapshot_done(&mut self, done: SnapshotDone) {
        match done {
            SnapshotDone::Encoded {
                partition,
                index,
                data,
            } => {
                let Some(r) = self.replicas.get_mut(&partition) else {
                    return;
                };
                if r.encoding == Some(index) {
                    r.encoding = None;
                }
                tracing::info!(
                    partition,
                    index,
                    bytes = data.len(),
                    "sending a snapshot to a follower behind the log"
                );
                metrics::counter!("distkv_snapshots_sent_total").increment(1);
                // Ignored if we no longer lead, or compacted past it.
                r.raft.offer_snapshot(index, Arc::new(data));
                self.process(partition);
            }
            SnapshotDone::Decoded {
                partition,
                index,
                store,
            } => {
                let Some(r) = self.replicas.get_mut(&partition) else {
                    return;
                };
                let decodes = store.is_some();
                if !decodes {
                    tracing::warn!(partition, index, "dropping an undecodable snapshot");
                }
                if let Some(store) = store {
                    r.incoming = Some((index, *store));
                }
                r.raft.snapshot_checked(index, decodes);
                self.process(partition);
                let r = self.replicas.get_mut(&partition).unwrap();
                if r.incoming.as_ref().is_some_and(|(i, _)| *i == index) {
                    // Not installed (the log got there first): free it.
                    r.incoming = None;
                }
            }
        }
    }

    /// The records of earlier `Persist`s of `partition` up to `last` are
    /// durable.
    pub fn persisted(&mut self, partition: PartitionId, last: Option<(Index, Term)>) {
        if let (Some((index, term)), Some(replica)) = (last, self.replicas.get_mut(&partition)) {
            replica.raft.on_persisted(index, term);
            self.process(partition);
        }
    }

    /// A client's command on one of our partitions. The reply comes out in
    /// an [`Output`], now or once the command has committed. `now_ms` is
    /// this server's wall clock (ms since the Unix epoch): a leader stamps
    /// it into the commands it proposes (log time, see [`Command`]).
    pub fn execute(&mut self, to: ReplyTo, partition: PartitionId, request: Request, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let node_id = self.node_id;
        if self.map.is_none() && self.replicas.is_empty() {
            self.reply(to, Err(ExecError::NotReady { node_id }));
            return;
        }
        let Some(replica) = self.replicas.get_mut(&partition) else {
            self.reply(to, Err(ExecError::WrongPartition { node_id, partition }));
            return;
        };
        if request.ops.iter().any(Op::is_export) {
            self.reply(to, Err(ApplyError::ExportOutsideTxn.into()));
            return;
        }
        if !request.ops.iter().any(Op::is_write) {
            #[cfg(feature = "sim")]
            let stale_read = crate::bugs::enabled(crate::bugs::Bug::StaleRead);
            #[cfg(not(feature = "sim"))]
            let stale_read = false;
            if stale_read && replica.raft.role() == Role::Leader {
                // Injected bug: serve from local state, no ReadIndex.
                let result = replica.store.execute(&request.ops).map_err(ExecError::from);
                self.reply(to, result);
                return;
            }
            let ctx = replica.next_ctx;
            replica.next_ctx += 1;
            match replica.raft.read_index(ctx) {
                Ok(()) => {
                    replica.reads.insert(
                        ctx,
                        Read {
                            to,
                            ops: request.ops,
                        },
                    );
                }
                Err(e) => {
                    let leader = leader_of(&e, &replica.raft);
                    let e = ExecError::NotLeader {
                        node_id,
                        partition,
                        leader,
                    };
                    self.reply(to, Err(e));
                    return;
                }
            }
            self.batched.insert(partition);
        } else {
            self.propose(partition, to, Pending::Execute(request));
        }
    }

    /// A page of the copy an EXPORT attempt left on our replica of
    /// `partition` (see `kv::export`), or (`release`) drops it. Any replica
    /// that applied the prepare holds the same copy, so no leadership is
    /// needed.
    pub fn export_read(
        &mut self,
        partition: PartitionId,
        txn: TxnId,
        from: u64,
        to: u64,
        max_bytes: u32,
        release: bool,
    ) -> Result<ExportPage, ExecError> {
        let node_id = self.node_id;
        let Some(replica) = self.replicas.get_mut(&partition) else {
            return Err(ExecError::WrongPartition { node_id, partition });
        };
        let store = &mut replica.store;
        let page = if release {
            store.release_export(txn)
        } else {
            store.export_page(txn, from, to, max_bytes as usize)
        };
        page.ok_or(ExecError::NoExport {
            node_id,
            partition,
            txn: txn.to_string(),
        })
    }

    /// A step of a cross-partition transaction on one of our partitions
    /// (from a coordinating client, or from another server's recovery). The
    /// reply, the attempt's state here, comes once the step is applied; a
    /// prepare that must wait for locks is answered when it gets them.
    pub fn txn(&mut self, to: ReplyTo, partition: PartitionId, op: TxnOp, now_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        let node_id = self.node_id;
        if self.map.is_none() && self.replicas.is_empty() {
            self.txn_reply(to, Err(ExecError::NotReady { node_id }));
        } else if !self.replicas.contains_key(&partition) {
            self.txn_reply(to, Err(ExecError::WrongPartition { node_id, partition }));
        } else {
            self.propose(partition, to, Pending::Txn(op));
        }
    }

    /// Proposes a write command or a transaction step on `partition`,
    /// stamped with log time; the proposer answers it once applied.
    fn propose(&mut self, partition: PartitionId, to: ReplyTo, pending: Pending) {
        let node_id = self.node_id;
        let session_ttl_ms = u64::try_from(self.tuning.session_ttl.as_millis()).unwrap_or(u64::MAX);
        let time_ms = self.now_ms;
        let Some(replica) = self.replicas.get_mut(&partition) else {
            return;
        };
        let entry = match &pending {
            Pending::Execute(request) => LogCommand::Command(Command {
                session: request.session,
                seq: request.seq,
                sent_ms: request.sent_ms,
                time_ms,
                session_ttl_ms,
                ops: request.ops.clone(),
            }),
            Pending::Txn(op) => LogCommand::Txn {
                time_ms,
                session_ttl_ms,
                op: op.clone(),
            },
            Pending::Split { at, end } => LogCommand::Split { at: *at, end: *end },
        };
        let data = command_options()
            .serialize(&entry)
            .expect("commands within limits encode");
        match replica.raft.propose(data) {
            Ok(index) => {
                let term = replica.raft.term();
                let proposal = Proposal { term, to, pending };
                if let Some(old) = replica.proposals.insert(index, proposal) {
                    // The index was proposed before in an older term and
                    // overwritten: that command's fate is unknown.
                    let lost = ExecError::LeaderChanged {
                        node_id,
                        partition,
                        leader: Some(node_id),
                    };
                    answer(&mut self.out, old.to, &old.pending, lost);
                }
            }
            Err(e) => {
                let leader = leader_of(&e, &replica.raft);
                let e = ExecError::NotLeader {
                    node_id,
                    partition,
                    leader,
                };
                answer(&mut self.out, to, &pending, e);
                return;
            }
        }
        self.batched.insert(partition);
    }

    fn txn_reply(&mut self, to: ReplyTo, result: Result<TxnState, ExecError>) {
        self.out.replies.push((
            to.addr,
            Msg::TxnReply {
                req: to.req,
                result,
            },
        ));
    }

    fn reply(&mut self, to: ReplyTo, result: Result<Vec<OpResult>, ExecError>) {
        self.out.replies.push((
            to.addr,
            Msg::ExecuteReply {
                req: to.req,
                result,
            },
        ));
    }

    /// Runs `partition`'s Readies until its core has nothing more.
    fn process(&mut self, partition: PartitionId) {
        let node_id = self.node_id;
        let compact_entries = self.tuning.compact_entries;
        let Some(r) = self.replicas.get_mut(&partition) else {
            return;
        };
        let out = &mut self.out;
        let reply = |out: &mut Output, to: ReplyTo, result| {
            out.replies.push((
                to.addr,
                Msg::ExecuteReply {
                    req: to.req,
                    result,
                },
            ))
        };
        while r.raft.has_ready() {
            let rd = r.raft.ready();
            for msg in rd.messages {
                out.messages
                    .entry(msg.to)
                    .or_default()
                    .push((partition, msg));
            }
            // A hard state whose term and vote did not change only moves the
            // commit index, which need not be durable (a restarted member
            // learns it from the leader): log it only along with entries, so
            // followers do not spend an fsync on every commit.
            let hard_state = rd.hard_state.filter(|hs| {
                hs.term != r.logged.term || hs.vote != r.logged.vote || !rd.entries.is_empty()
            });
            if let Some(hs) = hard_state {
                r.logged = hs;
            }
            let mut persist = Persist {
                partition,
                hard_state,
                last: rd.entries.last().map(|e| (e.index, e.term)),
                entries: rd.entries,
                messages: rd.persisted_messages,
                snapshot: None,
            };
            if let Some(snapshot) = rd.snapshot {
                crate::stats::count(crate::stats::Event::SnapshotInstalled);
                metrics::counter!("distkv_snapshots_installed_total").increment(1);
                let meta = snapshot.meta.clone();
                tracing::info!(
                    partition,
                    index = meta.index,
                    bytes = snapshot.data.len(),
                    leader = ?r.raft.leader(),
                    "installing a snapshot from the leader"
                );
                match r.incoming.take() {
                    Some((index, store)) if index == meta.index => {
                        r.store = store;
                    }
                    _ => {
                        // step() decoded every snapshot it passed on.
                        r.store = decode_store(&snapshot.data)
                            .expect("snapshots are checked before the core sees them");
                    }
                }
                r.applied = meta.index;
                // Entries the snapshot replaced: their commands' fate is
                // unknown here.
                let covered: Vec<Index> =
                    r.proposals.range(..=meta.index).map(|(i, _)| *i).collect();
                for i in covered {
                    let p = r.proposals.remove(&i).unwrap();
                    let lost = ExecError::LeaderChanged {
                        node_id,
                        partition,
                        leader: r.raft.leader(),
                    };
                    answer(out, p.to, &p.pending, lost);
                }
                r.released = true;
                if persist.last.is_none() {
                    persist.last = Some((meta.index, meta.term));
                }
                persist.snapshot = Some((meta, snapshot.data));
            }
            #[cfg(feature = "sim")]
            if crate::bugs::enabled(crate::bugs::Bug::AckBeforeFsync) {
                // Injected bug: votes and acknowledgements go out before
                // the state they promise is durable.
                for msg in persist.messages.drain(..) {
                    out.messages
                        .entry(msg.to)
                        .or_default()
                        .push((partition, msg));
                }
            }
            if persist.has_records() || !persist.messages.is_empty() || persist.last.is_some() {
                out.persist.push(persist);
            }
            if let Some(last) = rd.committed_entries.last().map(|e| e.index) {
                for entry in rd.committed_entries {
                    apply(r, node_id, partition, entry, out);
                }
                r.raft.on_applied(last);
            }
            for rs in rd.read_states {
                if let Some(read) = r.reads.remove(&rs.ctx) {
                    r.ready_reads.push_back((rs.index, read));
                }
            }
            for ctx in rd.aborted_reads {
                if let Some(read) = r.reads.remove(&ctx) {
                    let e = ExecError::NotLeader {
                        node_id,
                        partition,
                        leader: r.raft.leader(),
                    };
                    reply(out, read.to, Err(e));
                }
            }
            while r.ready_reads.front().is_some_and(|(i, _)| *i <= r.applied) {
                let (_, read) = r.ready_reads.pop_front().unwrap();
                if r.store.is_blocked(&read.ops) && !crate::bug!(TxnReadIgnoresLocks) {
                    // A prepared transaction may be writing what it reads:
                    // wait for its resolution (strict serializability).
                    r.blocked_reads.push(read);
                    continue;
                }
                let result = r.store.execute(&read.ops).map_err(ExecError::from);
                reply(out, read.to, result);
            }
            if rd.snapshot_request && r.encoding.is_none() {
                // A follower is behind our log: encode the state machine
                // once for it (and any other that needs it meanwhile). That
                // is O(data), so the driver does it off the event loop, from
                // an O(1) copy; `snapshot_done` offers the bytes. Only when
                // a follower needs it, never per write or per compaction.
                r.encoding = Some(r.applied);
                out.snapshot_jobs.push(SnapshotJob::Encode {
                    partition,
                    index: r.applied,
                    store: Box::new(r.store.clone()),
                });
            }
        }
        // A deposed leader's proposals may or may not commit under the new
        // leader: say so now rather than let the client time out.
        let is_leader = r.raft.role() == Role::Leader;
        if r.was_leader && !is_leader {
            for (_, p) in std::mem::take(&mut r.proposals) {
                let lost = ExecError::LeaderChanged {
                    node_id,
                    partition,
                    leader: r.raft.leader(),
                };
                answer(out, p.to, &p.pending, lost);
            }
            // Queued requests run when they can, under any leader.
            for (_, (to, pending)) in std::mem::take(&mut r.held) {
                let e = ExecError::LeaderChanged {
                    node_id,
                    partition,
                    leader: r.raft.leader(),
                };
                answer(out, to, &pending, e);
            }
            let reads = std::mem::take(&mut r.reads).into_values();
            for read in reads.chain(std::mem::take(&mut r.blocked_reads)) {
                let e = ExecError::NotLeader {
                    node_id,
                    partition,
                    leader: r.raft.leader(),
                };
                reply(out, read.to, Err(e));
            }
        }
        r.was_leader = is_leader;
        if !is_leader {
            r.txn_age.clear();
            r.recoveries.clear();
        }
        // Locks were released: reads that waited for them run now.
        if std::mem::take(&mut r.released) && is_leader {
            let reads = std::mem::take(&mut r.blocked_reads);
            for read in reads {
                if r.store.is_blocked(&read.ops) {
                    r.blocked_reads.push(read);
                } else {
                    let result = r.store.execute(&read.ops).map_err(ExecError::from);
                    reply(out, read.to, result);
                }
            }
        }
        // Bound the in-memory log: drop applied entries (at an index that is
        // durable here). Nothing is encoded: the state machine is the
        // snapshot, and a follower that falls behind the log gets its bytes
        // on demand (`snapshot_request` above). Half of the entries stay, so
        // a follower that is merely a little behind still gets entries.
        // While a snapshot is being encoded, the entries after it stay, so
        // the follower that gets it can go on with entries.
        let log = r.raft.log();
        if r.applied >= log.first_index() + compact_entries && r.applied <= log.persisted {
            let keep_after = r.applied - compact_entries / 2;
            r.raft
                .compact(r.encoding.map_or(keep_after, |i| keep_after.min(i)));
        }
        if !r.births.is_empty() {
            self.split_off(partition);
        }
    }
}

#[cfg(feature = "sim")]
fn no_amnesia_guard() -> bool {
    crate::bugs::enabled(crate::bugs::Bug::NoAmnesiaGuard)
}

#[cfg(not(feature = "sim"))]
fn no_amnesia_guard() -> bool {
    false
}

/// Who the leader is, as far as a refusal tells.
fn leader_of(e: &ProposeError, raft: &Raft) -> Option<NodeId> {
    match e {
        ProposeError::NotLeader { leader } => *leader,
        _ => raft.leader().filter(|&l| l != raft.id()),
    }
}

/// Answers a held request with an error, in the reply type it expects.
fn answer(out: &mut Output, to: ReplyTo, pending: &Pending, error: ExecError) {
    let msg = match pending {
        Pending::Execute(_) => Msg::ExecuteReply {
            req: to.req,
            result: Err(error),
        },
        Pending::Txn(_) => Msg::TxnReply {
            req: to.req,
            result: Err(error),
        },
        Pending::Split { .. } => Msg::AdminReply {
            req: to.req,
            result: Err(error.to_string()),
        },
    };
    out.replies.push((to.addr, msg));
}

/// A command's outcome as a reply.
fn exec_result(
    result: Result<crate::kv::Outcome, SessionError>,
) -> Result<Vec<OpResult>, ExecError> {
    match result {
        Ok(outcome) => outcome.map_err(ExecError::from),
        Err(SessionError::Stale(e)) => Err(ExecError::from(e)),
        Err(SessionError::Expired(e)) => Err(ExecError::from(e)),
        Err(SessionError::Queued) => unreachable!("a queued command has no outcome yet"),
    }
}

/// What applying an entry came to, for its proposer.
enum Applied {
    Execute(Result<Vec<OpResult>, ExecError>),
    Txn(Result<TxnState, ExecError>),
    /// A split's outcome, for the admin or manager that asked.
    Admin(Result<String, String>),
    /// Blocked by locks, or a prepare that waits: hold it and propose it
    /// again once locks are released.
    Hold,
    Nothing,
}

/// Applies one committed entry to the state machine and answers its
/// proposer, if it is waiting here.
fn apply(r: &mut Replica, node_id: NodeId, partition: PartitionId, entry: Entry, out: &mut Output) {
    debug_assert_eq!(entry.index, r.applied + 1, "entries apply in order");
    r.applied = entry.index;
    let applied = match &entry.data {
        EntryData::Normal(data) => {
            match command_options()
                .reject_trailing_bytes()
                .deserialize::<LogCommand>(data)
            {
                Ok(LogCommand::Command(c)) => match r.store.execute_once(&c) {
                    Err(SessionError::Queued) => Applied::Hold,
                    result => Applied::Execute(exec_result(result)),
                },
                Ok(LogCommand::Txn {
                    time_ms,
                    session_ttl_ms,
                    op,
                }) => {
                    let before = r.store.prepared_count();
                    let outcome = r.store.apply_txn_entry(time_ms, session_ttl_ms, &op);
                    if r.store.prepared_count() < before {
                        r.released = true;
                    }
                    match outcome {
                        TxnOutcome::State(state) => Applied::Txn(Ok(state)),
                        TxnOutcome::Wait => Applied::Hold,
                        TxnOutcome::Unknown => Applied::Txn(Err(ExecError::TxnForgotten {
                            partition,
                            txn: op.id().to_string(),
                        })),
                    }
                }
                Ok(LogCommand::Split { at, end }) => {
                    match r.store.begin_split(entry.index, at, end) {
                        Ok(()) => {
                            let (_, id) = r.store.pending_split().expect("just begun");
                            let key = crate::key::Key::new(r.store.range().table.clone(), at);
                            Applied::Admin(Ok(if r.store.split_ready() {
                                format!("partition {partition} split: {key} on is partition {id}")
                            } else {
                                format!(
                                    "partition {partition} is splitting: {key} on becomes partition {id} \
                                     once the transactions holding locks there are resolved"
                                )
                            }))
                        }
                        Err(why) => Applied::Admin(Err(why)),
                    }
                }
                Err(e) => {
                    // Only our own code proposes, so this is a bug; every
                    // replica skips the entry the same way.
                    tracing::error!(
                        partition,
                        index = entry.index,
                        "skipping an undecodable entry: {e}"
                    );
                    Applied::Nothing
                }
            }
        }
        EntryData::Noop | EntryData::ConfChange(_) => Applied::Nothing,
    };
    if r.store.split_ready() {
        // The membership at this entry: every replica splits here, with
        // the same one (not the newest in the log, which may differ).
        let m = r.raft.membership_at(entry.index);
        let child = r.store.finish_split(
            m.voters.iter().copied().collect(),
            m.learners.iter().copied().collect(),
        );
        if r.raft.role() == Role::Leader {
            crate::stats::count(crate::stats::Event::RangeSplit);
        }
        r.births.push((child, m));
    }
    // Queued requests this entry let run: answer those held here.
    for finished in r.store.take_finished() {
        let (key, result) = match finished {
            Finished::Command { key, outcome } => (key, Applied::Execute(exec_result(outcome))),
            Finished::Txn { key, state } => (key, Applied::Txn(Ok(state))),
        };
        if let Some((to, _)) = r.held.remove(&key) {
            let msg = match result {
                Applied::Execute(result) => Msg::ExecuteReply {
                    req: to.req,
                    result,
                },
                Applied::Txn(result) => Msg::TxnReply {
                    req: to.req,
                    result,
                },
                Applied::Admin(_) | Applied::Hold | Applied::Nothing => continue,
            };
            out.replies.push((to.addr, msg));
        }
    }
    let Some(p) = r.proposals.remove(&entry.index) else {
        return;
    };
    if p.term != entry.term || matches!(applied, Applied::Nothing) {
        // Another entry took the index: ours was overwritten.
        let lost = ExecError::LeaderChanged {
            node_id,
            partition,
            leader: r.raft.leader(),
        };
        answer(out, p.to, &p.pending, lost);
        return;
    }
    let msg = match applied {
        Applied::Execute(result) => Msg::ExecuteReply {
            req: p.to.req,
            result,
        },
        Applied::Txn(result) => Msg::TxnReply {
            req: p.to.req,
            result,
        },
        Applied::Admin(result) => Msg::AdminReply {
            req: p.to.req,
            result,
        },
        Applied::Hold | Applied::Nothing => {
            let key = match &p.pending {
                Pending::Execute(request) => WaitKey::Command {
                    session: request.session,
                    seq: request.seq,
                },
                Pending::Txn(op) => WaitKey::Txn(op.id()),
                Pending::Split { .. } => return,
            };
            crate::stats::count(crate::stats::Event::TxnWaited);
            r.held.insert(key, (p.to, p.pending));
            return;
        }
    };
    out.replies.push((p.to.addr, msg));
}
