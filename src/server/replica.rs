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

use crate::kv::{PartitionStore, SessionError};
use crate::map::{NodeId, Partition, PartitionId, PartitionMap};
use crate::op::{Op, OpResult};
use crate::raft::{
    Config, Entry, EntryData, HardState, Index, Membership, Message, ProposeError, Raft, RaftState,
    Role, SnapshotCheck, SnapshotMeta, Term,
};
use crate::storage::snapshot::{decode_store, encode_store};
use crate::storage::{GroupSnapshot, RecoveredGroup};
use crate::wire::{ExecError, Msg};
use bincode::Options;
use std::collections::{BTreeMap, VecDeque};
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub addr: SocketAddr,
    pub req: u64,
}

struct Proposal {
    term: Term,
    to: ReplyTo,
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
    pub persist: Vec<Persist>,
    /// Raft messages to send now, batched per destination server.
    pub messages: BTreeMap<NodeId, Vec<(PartitionId, Message)>>,
    pub replies: Vec<(SocketAddr, Msg)>,
    /// O(data) work to run off the event loop; hand each result to
    /// [`ServerCore::snapshot_done`].
    pub snapshot_jobs: Vec<SnapshotJob>,
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
        store: PartitionStore,
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
                    .filter(|store| store.range().id == partition),
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
        store: Option<PartitionStore>,
    },
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.hosted.is_empty()
            && self.persist.is_empty()
            && self.messages.is_empty()
            && self.replies.is_empty()
            && self.snapshot_jobs.is_empty()
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
    /// The index of the snapshot being encoded for followers, if any (at
    /// most one per replica; compaction keeps the entries after it).
    encoding: Option<Index>,
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
            encoding: None,
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
        };
        for (id, group) in recovered {
            let replica = core.replica(group.raft, group.store);
            core.replicas.insert(id, replica);
            // Re-apply what is known committed.
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
        let config = Config {
            group: store.range().id,
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
        std::mem::take(&mut self.out)
    }

    /// Every replica's state for a checkpoint.
    pub fn group_snapshots(&self) -> Vec<GroupSnapshot> {
        self.replicas
            .values()
            .map(Replica::group_snapshot)
            .collect()
    }

    /// Adopts `map` if it is newer than ours and creates a replica (empty)
    /// for every partition placed on us that we do not hold yet.
    pub fn install_map(&mut self, map: PartitionMap) {
        if self.map.as_ref().is_some_and(|m| m.epoch >= map.epoch) {
            return;
        }
        for partition in map.partitions.values() {
            if !partition.replicas.contains(&self.node_id)
                || self.replicas.contains_key(&partition.id)
            {
                continue;
            }
            tracing::info!(
                node_id = self.node_id,
                partition = partition.id,
                table = %partition.table,
                start = partition.start,
                end = ?partition.end,
                replicas = ?partition.replicas,
                "hosting a replica"
            );
            let state = RaftState {
                initial_membership: Membership::new(partition.replicas.iter().copied()),
                ..RaftState::default()
            };
            let replica = self.replica(state, PartitionStore::new(partition.clone()));
            self.replicas.insert(partition.id, replica);
            self.out.hosted.push(partition.clone());
        }
        self.map = Some(map);
        let ids: Vec<PartitionId> = self.replicas.keys().copied().collect();
        for id in ids {
            self.process(id);
        }
    }

    /// Advances every group's clock by one tick.
    pub fn tick(&mut self) {
        let ids: Vec<PartitionId> = self.replicas.keys().copied().collect();
        for id in ids {
            self.replicas.get_mut(&id).unwrap().raft.tick();
            self.process(id);
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
                    r.incoming = Some((index, store));
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
        let Request {
            session,
            seq,
            sent_ms,
            ops,
        } = request;
        let node_id = self.node_id;
        if self.map.is_none() && self.replicas.is_empty() {
            self.reply(to, Err(ExecError::NotReady { node_id }));
            return;
        }
        let Some(replica) = self.replicas.get_mut(&partition) else {
            self.reply(to, Err(ExecError::WrongPartition { node_id, partition }));
            return;
        };
        let not_leader = |leader: Option<NodeId>| ExecError::NotLeader {
            node_id,
            partition,
            leader,
        };
        if !ops.iter().any(Op::is_write) {
            #[cfg(feature = "sim")]
            let stale_read = crate::bugs::enabled(crate::bugs::Bug::StaleRead);
            #[cfg(not(feature = "sim"))]
            let stale_read = false;
            if stale_read && replica.raft.role() == Role::Leader {
                // Injected bug: serve from local state, no ReadIndex.
                let result = replica.store.execute(&ops).map_err(ExecError::from);
                self.reply(to, result);
                return;
            }
            let ctx = replica.next_ctx;
            replica.next_ctx += 1;
            match replica.raft.read_index(ctx) {
                Ok(()) => {
                    replica.reads.insert(ctx, Read { to, ops });
                }
                Err(e) => {
                    let leader = leader_of(&e, &replica.raft);
                    self.reply(to, Err(not_leader(leader)));
                    return;
                }
            }
        } else {
            let command = Command {
                session,
                seq,
                sent_ms,
                time_ms: now_ms,
                session_ttl_ms: u64::try_from(self.tuning.session_ttl.as_millis())
                    .unwrap_or(u64::MAX),
                ops,
            };
            let data = command_options()
                .serialize(&command)
                .expect("commands within limits encode");
            match replica.raft.propose(data) {
                Ok(index) => {
                    let term = replica.raft.term();
                    if let Some(old) = replica.proposals.insert(index, Proposal { term, to }) {
                        // The index was proposed before in an older term and
                        // overwritten: that command's fate is unknown.
                        let leader = Some(node_id);
                        let lost = ExecError::LeaderChanged {
                            node_id,
                            partition,
                            leader,
                        };
                        self.reply(old.to, Err(lost));
                    }
                }
                Err(e) => {
                    let leader = leader_of(&e, &replica.raft);
                    self.reply(to, Err(not_leader(leader)));
                    return;
                }
            }
        }
        self.process(partition);
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
                    reply(out, p.to, Err(lost));
                }
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
                    store: r.store.clone(),
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
                reply(out, p.to, Err(lost));
            }
            for (_, read) in std::mem::take(&mut r.reads) {
                let e = ExecError::NotLeader {
                    node_id,
                    partition,
                    leader: r.raft.leader(),
                };
                reply(out, read.to, Err(e));
            }
        }
        r.was_leader = is_leader;
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

/// Applies one committed entry to the state machine and answers its
/// proposer, if it is waiting here.
fn apply(r: &mut Replica, node_id: NodeId, partition: PartitionId, entry: Entry, out: &mut Output) {
    debug_assert_eq!(entry.index, r.applied + 1, "entries apply in order");
    r.applied = entry.index;
    let result = match &entry.data {
        EntryData::Normal(data) => {
            match command_options()
                .reject_trailing_bytes()
                .deserialize::<Command>(data)
            {
                Ok(c) => Some(match r.store.execute_once(&c) {
                    Ok(outcome) => outcome.map_err(ExecError::from),
                    Err(SessionError::Stale(e)) => Err(ExecError::from(e)),
                    Err(SessionError::Expired(e)) => Err(ExecError::from(e)),
                }),
                Err(e) => {
                    // Only our own code proposes, so this is a bug; every
                    // replica skips the entry the same way.
                    tracing::error!(
                        partition,
                        index = entry.index,
                        "skipping an undecodable entry: {e}"
                    );
                    None
                }
            }
        }
        EntryData::Noop | EntryData::ConfChange(_) => None,
    };
    if let Some(p) = r.proposals.remove(&entry.index) {
        let result = match result {
            Some(result) if p.term == entry.term => result,
            // Another entry took the index: ours was overwritten.
            _ => Err(ExecError::LeaderChanged {
                node_id,
                partition,
                leader: r.raft.leader(),
            }),
        };
        out.replies.push((
            p.to.addr,
            Msg::ExecuteReply {
                req: p.to.req,
                result,
            },
        ));
    }
}
