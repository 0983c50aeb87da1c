//! The driver: one Raft group member on one simulated node, on the
//! production trait layer ([`SimRuntime`] for the network, timers and
//! randomness; the harness's [`SimDisk`] for the disk, see [`crate::disk`]).
//!
//! ```text
//!  receiver task: SimNet::recv ─bincode─▶ channel ─┐
//!  client requests (harness mailbox) ──────────────┤
//!  tick timer (every TICK) ────────────────────────┼─▶ Raft::{step,tick,propose,read_index}
//!  group-commit flusher: durable LSN ──────────────┘        │ Ready
//!     ▲                                                      ▼
//!     └── LogWriter::append ◀── a received snapshot (its own record), then
//!         hard state + entries (one record per Ready); a local snapshot
//!         after every K applied entries
//!         messages: sent at once; persisted_messages + on_persisted: once
//!         the durable LSN covers every record appended before them
//! ```
//!
//! # Durability
//! Two record kinds:
//! - `KIND_READY`: a Ready's `hard_state` and `entries` in **one** record
//!   (bincode of `(Option<HardState>, Vec<Entry>)`), so a crash keeps both
//!   or neither: a hard state whose commit index points into entries the
//!   same Ready replaced must never survive without them, and entries of a
//!   new term must never survive without that term.
//! - `KIND_SNAPSHOT`: the state machine at an index, bincode of
//!   `(SnapshotMeta, Vec<u8>)` (the register's encoding, [`RegisterState`]).
//!   Written when a follower installs a snapshot from its leader
//!   (`Ready::snapshot`), **before** that Ready's `KIND_READY` record: a
//!   hard state whose commit index is the snapshot's index (or entries that
//!   follow it) must never survive without the snapshot, and the WAL keeps a
//!   prefix, so whatever of the Ready survives has its snapshot (with the
//!   two records swapped, seed 92 of the 300 catches a restarted node
//!   applying its old, conflicting entry at a commit index that came with
//!   the snapshot; without the snapshot record at all, seed 1 fails
//!   recovery: the entries after the snapshot do not join the log). Also
//!   written after every K applied entries (a local compaction, then
//!   `Raft::compact`): those entries are committed and already durable, so
//!   losing this record only means recovery replays more of the log.
//!
//! The WAL is recovered as a prefix of records; the state is rebuilt by
//! replaying them in order: the hard state is the latest one; a
//! `KIND_READY` record whose entries start at index `i` replaces every entry
//! `>= i` (`i` is always above the snapshot: only applied, hence committed,
//! entries are ever covered by one); a `KIND_SNAPSHOT` record at index `s`
//! (always above the previous snapshot) replaces every entry `<= s`, and
//! keeps the entries after `s` only if the log has `s` with the snapshot's
//! term (the rule of `RaftLog::restore`, so the rebuilt log is the core's).
//! Records are never purged: the snapshot only lets recovery skip them.
//!
//! `persisted_messages` (votes, append acknowledgements) are held until the
//! durable LSN reaches the newest record appended when their Ready was taken
//! (even a Ready with nothing to write waits: its acknowledgement may promise
//! entries of an earlier, still unsynced record); then `on_persisted` is
//! called with that Ready's last entry.
//!
//! The state machine is a register (the newest Normal entry's value) plus
//! the [`chain`] over every entry applied, which the checker compares across
//! nodes. It is in memory and rebuilt on restart from the newest durable
//! snapshot by re-applying the log after it (the core hands out committed
//! entries from the snapshot's index + 1 again).
//!
//! # Snapshots
//! Every K applied entries (K per seed, see `scenario::compact_every`) the
//! driver writes a snapshot record and compacts the core's log there. When
//! the leader needs to catch up a follower behind its log
//! (`Ready::snapshot_request`) the driver offers the register at its
//! applied index; the core streams it in chunks, and the follower's
//! `step_checked` decodes the assembled bytes before the core accepts them.
//! A received snapshot (`Ready::snapshot`) replaces the register, is
//! written to the WAL and counted (`stats::Event::SnapshotInstalled`; the
//! core counts compactions and snapshots sent).

use crate::checker::{chain, fingerprint, Check, LogImage, ReadResult, CHAIN_START};
use crate::shared::{Request, Shared};
use distkv::bugs::{self, Bug};
use distkv::raft::{
    ConfChange, Config, Entry, EntryData, HardState, Index, Membership, Message, NodeId, Raft,
    RaftState, Snapshot, SnapshotCheck, SnapshotMeta, Term,
};
use distkv::rt::sim_rt::{SimNet, SimRuntime};
use distkv::rt::{Net, Runtime, SimDisk};
use distkv::stats::{self, Event};
use distkv::storage::group_commit::{GroupCommitConfig, LogWriter};
use distkv::storage::wal::{Lsn, Record, Wal};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// The tick interval.
pub const TICK: Duration = Duration::from_millis(10);
/// Every this many ticks a node publishes its log for the spot checks.
const PUBLISH_EVERY: u64 = 10;
const WAL_DIR: &str = "raft-wal";
/// WAL record kind: one Ready's `(Option<HardState>, Vec<Entry>)`.
const KIND_READY: u8 = 1;
/// WAL record kind: a snapshot, `(SnapshotMeta, Vec<u8>)` (the bytes are a
/// [`RegisterState`]).
const KIND_SNAPSHOT: u8 = 2;
const GROUP: u64 = 1;

pub fn node_ip(id: NodeId) -> IpAddr {
    IpAddr::from([10, 0, 1, id as u8])
}

pub fn node_addr(id: NodeId) -> SocketAddr {
    SocketAddr::new(node_ip(id), 7000)
}

/// Per-seed settings of a node.
#[derive(Clone, Debug)]
pub struct NodeParams {
    pub id: NodeId,
    /// The initial voters are nodes `1..=voters` (every node starts with
    /// that membership; the others are not members until added).
    pub voters: u64,
    /// Nodes `1..=pool` exist.
    pub pool: u64,
    pub election_ticks: u32,
    pub heartbeat_ticks: u32,
    pub max_entries_per_append: usize,
    pub max_inflight_appends: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    pub group_commit: GroupCommitConfig,
    pub segment_bytes: u64,
    /// Probability (per million) that a message is sent twice.
    pub dup_ppm: u64,
    /// Compact the log (and write a snapshot record) every this many
    /// applied entries.
    pub compact_every: u64,
    /// Most bytes of snapshot data in one InstallSnapshot chunk.
    pub snapshot_chunk_bytes: usize,
    /// Most snapshot chunks in flight to one follower.
    pub max_inflight_snapshot_chunks: usize,
}

/// The state machine, as a snapshot carries it: the register (the newest
/// Normal entry's index and value) and the [`chain`] of every entry applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterState {
    pub value: Option<(Index, Vec<u8>)>,
    pub chain: u64,
}

impl RegisterState {
    fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("register encodes")
    }

    fn decode(data: &[u8]) -> Option<RegisterState> {
        bincode::deserialize(data).ok()
    }
}

impl NodeParams {
    fn raft_config(&self) -> Config {
        Config {
            id: self.id,
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            max_entries_per_append: self.max_entries_per_append,
            max_inflight_appends: self.max_inflight_appends,
            pre_vote: self.pre_vote,
            check_quorum: self.check_quorum,
            snapshot_chunk_bytes: self.snapshot_chunk_bytes,
            max_inflight_snapshot_chunks: self.max_inflight_snapshot_chunks,
            ..Config::new(self.id)
        }
    }
}

/// The durable state, as the WAL's records rebuild it.
#[derive(Debug, Default)]
pub struct Recovered {
    pub hard: HardState,
    /// The newest snapshot and its bytes.
    pub snapshot: Option<(SnapshotMeta, Vec<u8>)>,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
}

/// Rebuilds the durable Raft state from the WAL's records (the rules are in
/// the module docs).
pub fn rebuild(records: &[Record]) -> Result<Recovered, String> {
    let mut out = Recovered::default();
    for r in records {
        if r.group != GROUP {
            return Err(format!("record {}: unexpected group {}", r.lsn, r.group));
        }
        let base = out.snapshot.as_ref().map_or(0, |(m, _)| m.index);
        let last = base + out.entries.len() as Index;
        match r.kind {
            KIND_READY => {
                let (hs, new): (Option<HardState>, Vec<Entry>) =
                    bincode::deserialize(&r.payload)
                        .map_err(|e| format!("record {}: {e}", r.lsn))?;
                if let Some(hs) = hs {
                    out.hard = hs;
                }
                if let Some(first) = new.first() {
                    if first.index <= base || first.index > last + 1 {
                        return Err(format!(
                            "record {} starts at index {} but the log holds {}..={last}",
                            r.lsn,
                            first.index,
                            base + 1
                        ));
                    }
                    out.entries.truncate((first.index - base - 1) as usize);
                    for e in new {
                        if e.index != base + out.entries.len() as Index + 1 {
                            return Err(format!("record {}: entries not contiguous", r.lsn));
                        }
                        out.entries.push(e);
                    }
                }
            }
            KIND_SNAPSHOT => {
                let (meta, data): (SnapshotMeta, Vec<u8>) = bincode::deserialize(&r.payload)
                    .map_err(|e| format!("record {}: {e}", r.lsn))?;
                if meta.index <= base {
                    return Err(format!(
                        "record {}: snapshot at {} after one at {base}",
                        r.lsn, meta.index
                    ));
                }
                let agrees = meta.index <= last
                    && out.entries[(meta.index - base - 1) as usize].term == meta.term;
                if agrees {
                    out.entries.drain(..(meta.index - base) as usize);
                } else {
                    out.entries.clear();
                }
                out.snapshot = Some((meta, data));
            }
            kind => return Err(format!("record {}: unexpected kind {kind}", r.lsn)),
        }
    }
    Ok(out)
}

/// Persisted messages waiting for the durable LSN to reach `lsn`.
struct PendingPersist {
    lsn: Lsn,
    messages: Vec<Message>,
    last: Option<(Index, Term)>,
}

struct Proposal {
    term: Term,
    value: Vec<u8>,
    reply: oneshot::Sender<Result<Index, String>>,
}

struct Driver {
    p: NodeParams,
    rt: SimRuntime,
    shared: Arc<Shared>,
    incarnation: u64,
    raft: Raft,
    net: Arc<SimNet>,
    writer: LogWriter,
    pending: VecDeque<PendingPersist>,
    /// `(term, fingerprint)` of the in-memory log after `mirror_base` (the
    /// snapshot's `(index, term)`), mirrored from Readies.
    mirror: Vec<(Term, u64)>,
    mirror_base: (Index, Term),
    proposals: BTreeMap<Index, Proposal>,
    /// Reads waiting for their ReadState, by ctx.
    reads: BTreeMap<u64, oneshot::Sender<Result<ReadResult, String>>>,
    /// Reads with a read index, waiting for the state machine to reach it.
    ready_reads: Vec<(Index, oneshot::Sender<Result<ReadResult, String>>)>,
    next_ctx: u64,
    applied: Index,
    /// The register's history: every Normal entry applied since `floor`,
    /// and the register at `floor`.
    history: BTreeMap<Index, Vec<u8>>,
    /// The snapshot this incarnation started from or installed last: the
    /// history is exact from here on.
    floor: Index,
    /// The state machine's [`chain`] at `applied`, and at `applied - 1`
    /// (valid when `applied > floor`).
    chain: u64,
    prev_chain: u64,
    ticks: u64,
}

/// The node's `main`: runs on every (re)start of the simulated node.
pub async fn run_node(p: NodeParams, shared: Arc<Shared>, disk: SimDisk) {
    let rt = SimRuntime;
    let id = p.id;
    let net = rt
        .bind(Some(node_addr(id)), None)
        .await
        .unwrap_or_else(|e| panic!("seed {}: node {id} cannot bind: {e}", shared.seed));
    let net = Arc::new(net);
    let (wal, recovered) = match Wal::open(disk, Path::new(WAL_DIR), p.segment_bytes, 1).await {
        Ok(x) => x,
        Err(e) => shared.fail_with(Check::Recovery, format!("node {id}: WAL open failed: {e}")),
    };
    let Recovered {
        mut hard,
        snapshot,
        entries,
    } = rebuild(&recovered.records)
        .unwrap_or_else(|e| shared.fail_with(Check::Recovery, format!("node {id}: {e}")));
    if bugs::enabled(Bug::ForgetVote) {
        // Injected bug: the term/vote are not recovered (the log is).
        hard.term = 0;
        hard.vote = None;
    }
    let (snapshot, register) = match snapshot {
        Some((meta, data)) => {
            let state = RegisterState::decode(&data).unwrap_or_else(|| {
                shared.fail_with(
                    Check::Recovery,
                    format!("node {id}: undecodable snapshot at {}", meta.index),
                )
            });
            let result = shared.checker.lock().unwrap().snapshot(
                id,
                &meta,
                &state.value,
                state.chain,
                "recovered",
            );
            shared.check(result);
            (meta, state)
        }
        None => (
            SnapshotMeta::default(),
            RegisterState {
                value: None,
                chain: CHAIN_START,
            },
        ),
    };
    let mirror = entries
        .iter()
        .map(|e| (e.term, fingerprint(&e.data)))
        .collect();
    let mirror_base = (snapshot.index, snapshot.term);
    let floor = snapshot.index;
    let next_lsn = wal.next_lsn();
    let writer = LogWriter::start(
        &rt,
        Arc::new(tokio::sync::Mutex::new(wal)),
        next_lsn,
        p.group_commit,
    );
    let state = RaftState {
        hard_state: hard,
        snapshot,
        entries,
        initial_membership: Membership::new(1..=p.voters),
    };
    let raft = Raft::new(p.raft_config(), state, rt.rand_u64());

    let (req_tx, req_rx) = mpsc::unbounded_channel();
    let incarnation = {
        let mut views = shared.views.lock().unwrap();
        let v = views.get_mut(&id).unwrap();
        v.incarnation += 1;
        v.up = true;
        v.role = Some(raft.role());
        v.term = raft.term();
        v.mailbox = Some(req_tx);
        v.applied_index = floor;
        v.snapshot_index = floor;
        v.applied.clear();
        v.incarnation
    };
    shared.trace(&format!(
        "start {id}#{incarnation} term {} snapshot {floor} log {} truncated {}",
        hard.term,
        raft.log().last_index(),
        recovered.truncated_tail_bytes
    ));

    // The receive loop runs in its own task: `Net::recv` is not cancel-safe.
    let (msg_tx, msg_rx) = mpsc::unbounded_channel();
    let rx_net = net.clone();
    rt.spawn(async move {
        while let Ok((_, payload)) = rx_net.recv().await {
            if let Ok(msg) = bincode::deserialize::<Message>(&payload) {
                if msg_tx.send(msg).is_err() {
                    return;
                }
            }
        }
    });

    let mut d = Driver {
        p,
        rt,
        shared,
        incarnation,
        raft,
        net,
        writer,
        pending: VecDeque::new(),
        mirror,
        mirror_base,
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        ready_reads: Vec::new(),
        next_ctx: 1,
        applied: floor,
        history: register.value.into_iter().collect(),
        floor,
        chain: register.chain,
        prev_chain: register.chain,
        ticks: 0,
    };
    d.publish_log();
    d.run(req_rx, msg_rx).await;
}

impl Driver {
    async fn run(
        &mut self,
        mut req_rx: mpsc::UnboundedReceiver<Request>,
        mut msg_rx: mpsc::UnboundedReceiver<Message>,
    ) {
        let mut durable = self.writer.durable_watch();
        let mut next_tick = self.rt.now() + TICK;
        loop {
            let wait = next_tick.saturating_duration_since(self.rt.now());
            tokio::select! {
                biased;
                changed = durable.changed() => {
                    if changed.is_err() {
                        panic!("seed {}: node {}: log flusher stopped", self.shared.seed, self.p.id);
                    }
                    self.release_durable();
                }
                _ = self.rt.sleep(wait) => {
                    next_tick += TICK;
                    self.ticks += 1;
                    self.raft.tick();
                    if self.ticks % PUBLISH_EVERY == 0 {
                        self.publish_log();
                    }
                }
                Some(msg) = msg_rx.recv() => {
                    // A snapshot is installed only if it decodes.
                    self.raft.step_checked(msg, &mut |_, data| {
                        if RegisterState::decode(data).is_some() {
                            SnapshotCheck::Install
                        } else {
                            SnapshotCheck::Reject
                        }
                    });
                }
                Some(req) = req_rx.recv() => self.request(req),
            }
            self.process_ready();
        }
    }

    fn request(&mut self, req: Request) {
        match req {
            Request::Propose { value, reply } => match self.raft.propose(value.clone()) {
                Ok(index) => {
                    let term = self.raft.term();
                    self.proposals
                        .insert(index, Proposal { term, value, reply });
                }
                Err(e) => {
                    let _ = reply.send(Err(e.to_string()));
                }
            },
            Request::Transfer { to } => {
                let _ = self.raft.transfer_leader(to);
            }
            Request::ConfChanges { changes, reply } => {
                // Proposed back to back; each answer is the entry's index
                // (appended, not yet committed) or why it was refused.
                let results = changes
                    .into_iter()
                    .map(|change| match change {
                        // The operator never removes the leader (it may
                        // have become one since the operator looked).
                        ConfChange::Remove(id) if id == self.p.id => {
                            Err("the leader does not remove itself".to_string())
                        }
                        change => self
                            .raft
                            .propose_conf_change(change)
                            .map_err(|e| e.to_string()),
                    })
                    .collect();
                let _ = reply.send(results);
            }
            Request::Read { reply } => {
                if bugs::enabled(Bug::StaleRead) && self.raft.role() == distkv::raft::Role::Leader {
                    // Injected bug: serve from local state, no ReadIndex.
                    let result = self.register_at(self.applied);
                    let _ = reply.send(Ok(result));
                    return;
                }
                let ctx = self.next_ctx;
                self.next_ctx += 1;
                match self.raft.read_index(ctx) {
                    Ok(()) => {
                        self.reads.insert(ctx, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
        }
    }

    /// The register at `read_index`, or at the snapshot the history starts
    /// from if that is later (a read may see newer committed state; the
    /// result names the index it was read at).
    fn register_at(&self, read_index: Index) -> ReadResult {
        let read_index = read_index.max(self.floor);
        ReadResult {
            read_index,
            value: self
                .history
                .range(..=read_index)
                .next_back()
                .map(|(i, v)| (*i, v.clone())),
        }
    }

    fn send(&self, msg: Message) {
        let to = node_addr(msg.to);
        let bytes = bincode::serialize(&msg).expect("messages encode");
        if self.p.dup_ppm > 0 && self.rt.rand_u64() % 1_000_000 < self.p.dup_ppm {
            // Injected duplication (madsim does not duplicate datagrams).
            self.net.send(to, bytes.clone());
        }
        self.net.send(to, bytes);
    }

    /// Runs Readies until the core has nothing more (the driver contract).
    fn process_ready(&mut self) {
        while self.raft.has_ready() {
            let rd = self.raft.ready();
            for msg in rd.messages {
                self.send(msg);
            }
            // Persist: a received snapshot in its own record first, then
            // hard state and entries in one record (see the module docs).
            let mut last = None;
            if let Some(snapshot) = rd.snapshot {
                last = Some((snapshot.meta.index, snapshot.meta.term));
                self.install(snapshot);
            }
            if rd.hard_state.is_some() || !rd.entries.is_empty() {
                if let Some(first) = rd.entries.first() {
                    assert!(
                        first.index > self.mirror_base.0,
                        "node {}: entries from {} rewrite the snapshot at {}",
                        self.p.id,
                        first.index,
                        self.mirror_base.0
                    );
                    self.mirror
                        .truncate((first.index - self.mirror_base.0 - 1) as usize);
                    self.mirror
                        .extend(rd.entries.iter().map(|e| (e.term, fingerprint(&e.data))));
                }
                let payload =
                    bincode::serialize(&(rd.hard_state, &rd.entries)).expect("records encode");
                self.writer
                    .append(self.rt.now(), GROUP, KIND_READY, &payload);
            }
            if let Some(e) = rd.entries.last() {
                last = Some((e.index, e.term));
            }
            if !rd.persisted_messages.is_empty() || last.is_some() {
                let mut messages = rd.persisted_messages;
                if bugs::enabled(Bug::AckBeforeFsync) {
                    // Injected bug: votes and acknowledgements go out
                    // before the state they promise is durable.
                    for msg in messages.drain(..) {
                        self.send(msg);
                    }
                }
                self.pending.push_back(PendingPersist {
                    lsn: self.writer.last_appended(),
                    messages,
                    last,
                });
            }
            // Apply.
            if let Some(last) = rd.committed_entries.last().map(|e| e.index) {
                for entry in rd.committed_entries {
                    self.apply(entry);
                }
                self.raft.on_applied(last);
                self.maybe_compact();
            }
            if rd.snapshot_request {
                self.offer_snapshot();
            }
            for rs in rd.read_states {
                if let Some(reply) = self.reads.remove(&rs.ctx) {
                    self.ready_reads.push((rs.index, reply));
                }
            }
            for ctx in rd.aborted_reads {
                if let Some(reply) = self.reads.remove(&ctx) {
                    let _ = reply.send(Err("read aborted: leadership lost".into()));
                }
            }
            self.serve_reads();
            self.release_durable();
        }
        self.publish_state();
    }

    /// The state machine at `applied`.
    fn state(&self) -> RegisterState {
        RegisterState {
            value: self
                .history
                .range(..=self.applied)
                .next_back()
                .map(|(i, v)| (*i, v.clone())),
            chain: self.chain,
        }
    }

    fn append_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) {
        let payload = bincode::serialize(&(meta, data)).expect("records encode");
        self.writer
            .append(self.rt.now(), GROUP, KIND_SNAPSHOT, &payload);
    }

    /// A snapshot received from the leader (`Ready::snapshot`): checked,
    /// written to the WAL, and the new state of the register.
    fn install(&mut self, snapshot: Snapshot) {
        let id = self.p.id;
        let meta = snapshot.meta;
        stats::count(Event::SnapshotInstalled);
        let state = RegisterState::decode(&snapshot.data).expect("step_checked decoded it");
        assert!(
            meta.index > self.applied,
            "node {id}: snapshot at {} but applied {}",
            meta.index,
            self.applied
        );
        let result = self.shared.checker.lock().unwrap().snapshot(
            id,
            &meta,
            &state.value,
            state.chain,
            "installed",
        );
        self.shared.check(result);
        self.append_snapshot(&meta, &snapshot.data);
        // The core kept the entries after the snapshot if its log agrees
        // with it there (RaftLog::restore); so does the mirror.
        let (base, _) = self.mirror_base;
        let agrees = meta.index <= base + self.mirror.len() as Index
            && self.mirror[(meta.index - base - 1) as usize].0 == meta.term;
        if agrees {
            self.mirror.drain(..(meta.index - base) as usize);
        } else {
            self.mirror.clear();
        }
        self.mirror_base = (meta.index, meta.term);
        self.applied = meta.index;
        self.floor = meta.index;
        self.chain = state.chain;
        self.prev_chain = state.chain;
        self.history = state.value.into_iter().collect();
        {
            let mut views = self.shared.views.lock().unwrap();
            let v = views.get_mut(&id).unwrap();
            v.applied_index = meta.index;
            v.snapshot_index = meta.index;
        }
        // Proposals the snapshot covers: whether they are in it is unknown
        // here.
        let rest = self.proposals.split_off(&(meta.index + 1));
        for (_, p) in std::mem::replace(&mut self.proposals, rest) {
            let _ = p
                .reply
                .send(Err("covered by a snapshot: outcome unknown".into()));
        }
        self.shared.trace(&format!(
            "install {id} snapshot {} term {} kept {}",
            meta.index,
            meta.term,
            self.mirror.len()
        ));
        self.publish_log();
        self.shared.installs.lock().unwrap().push(id);
        self.shared.installed.notify_one();
    }

    /// Every `compact_every` applied entries: a snapshot record, then the
    /// core drops the log through the applied index.
    fn maybe_compact(&mut self) {
        let (base, _) = self.mirror_base;
        if self.applied < base + self.p.compact_every {
            return;
        }
        self.raft.compact(self.applied);
        let meta = self.raft.log().snapshot.clone();
        assert_eq!(meta.index, self.applied, "compaction at the applied index");
        let state = self.state();
        let result = self.shared.checker.lock().unwrap().snapshot(
            self.p.id,
            &meta,
            &state.value,
            state.chain,
            "took",
        );
        self.shared.check(result);
        self.append_snapshot(&meta, &state.encode());
        self.mirror.drain(..(meta.index - base) as usize);
        self.mirror_base = (meta.index, meta.term);
    }

    /// `Ready::snapshot_request`: the register at the applied index.
    fn offer_snapshot(&mut self) {
        let mut state = self.state();
        if bugs::enabled(Bug::SnapshotOffByOne) && self.applied > self.floor {
            // Injected bug: the snapshot named `applied` holds the state
            // one entry earlier (taken before the last apply).
            state = RegisterState {
                value: self
                    .history
                    .range(..self.applied)
                    .next_back()
                    .map(|(i, v)| (*i, v.clone())),
                chain: self.prev_chain,
            };
        }
        self.shared
            .trace(&format!("offer {} snapshot {}", self.p.id, self.applied));
        self.raft
            .offer_snapshot(self.applied, Arc::new(state.encode()));
    }

    fn apply(&mut self, entry: Entry) {
        let id = self.p.id;
        assert_eq!(
            entry.index,
            self.applied + 1,
            "node {id}: committed entries out of order"
        );
        self.applied = entry.index;
        self.prev_chain = self.chain;
        self.chain = chain(self.chain, &entry);
        let result = self
            .shared
            .checker
            .lock()
            .unwrap()
            .applied(id, &entry, self.chain);
        self.shared.check(result);
        {
            let mut views = self.shared.views.lock().unwrap();
            let v = views.get_mut(&id).unwrap();
            v.applied_index = entry.index;
            if let EntryData::Normal(value) = &entry.data {
                v.applied.insert(entry.index, value.clone());
            }
        }
        if let EntryData::Normal(value) = &entry.data {
            self.history.insert(entry.index, value.clone());
        }
        if let Some(p) = self.proposals.remove(&entry.index) {
            let ours = p.term == entry.term && entry.data == EntryData::Normal(p.value.clone());
            let _ = p.reply.send(if ours {
                Ok(entry.index)
            } else {
                Err(format!("index {} was taken by another entry", entry.index))
            });
        }
    }

    fn serve_reads(&mut self) {
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.ready_reads)
            .into_iter()
            .partition(|(index, _)| *index <= applied);
        self.ready_reads = waiting;
        for (index, reply) in ready {
            let _ = reply.send(Ok(self.register_at(index)));
        }
    }

    /// Sends what waited for durability and tells the core.
    fn release_durable(&mut self) {
        let durable = match self.writer.durable() {
            Ok(lsn) => lsn,
            Err(e) => panic!(
                "seed {}: node {}: WAL failed: {e}",
                self.shared.seed, self.p.id
            ),
        };
        while self.pending.front().is_some_and(|p| p.lsn <= durable) {
            let p = self.pending.pop_front().unwrap();
            for msg in p.messages {
                self.send(msg);
            }
            if let Some((index, term)) = p.last {
                self.raft.on_persisted(index, term);
            }
        }
    }

    /// Role and term for the clients, and (1) election safety.
    fn publish_state(&mut self) {
        let (role, term) = (self.raft.role(), self.raft.term());
        {
            let mut views = self.shared.views.lock().unwrap();
            let v = views.get_mut(&self.p.id).unwrap();
            debug_assert_eq!(v.incarnation, self.incarnation);
            v.role = Some(role);
            v.term = term;
            v.matches.clear();
            if role == distkv::raft::Role::Leader {
                for peer in (1..=self.p.pool).filter(|&p| p != self.p.id) {
                    if let Some(m) = self.raft.match_index(peer) {
                        v.matches.insert(peer, m);
                    }
                }
            }
            v.commit = self.raft.commit();
            v.membership_committed = self.raft.committed_membership().is_some();
            if v.membership != *self.raft.membership() {
                v.membership = self.raft.membership().clone();
            }
        }
        if role == distkv::raft::Role::Leader {
            let new = {
                let result = self.shared.checker.lock().unwrap().leader(term, self.p.id);
                self.shared.check(result)
            };
            if new {
                self.shared
                    .trace(&format!("leader {} term {term}", self.p.id));
            }
        }
    }

    /// Publishes the log for the log-matching spot checks, after checking
    /// the mirror against the core's own log.
    fn publish_log(&mut self) {
        let log = self.raft.log();
        let (base, base_term) = self.mirror_base;
        let id = self.p.id;
        assert_eq!(
            (log.snapshot.index, log.snapshot.term),
            (base, base_term),
            "node {id}: the driver's mirror of the snapshot diverged from the core's"
        );
        assert_eq!(
            log.last_index(),
            base + self.mirror.len() as Index,
            "node {id}: the driver's mirror of the log diverged from the core's"
        );
        for (index, &(term, _)) in (base + 1..).zip(self.mirror.iter()) {
            assert_eq!(log.term(index), Some(term), "mirror term at {index}");
        }
        let image = LogImage {
            snapshot_index: base,
            snapshot_term: base_term,
            entries: self.mirror.clone(),
            commit: self.raft.commit(),
        };
        let result = self.shared.checker.lock().unwrap().log_shape(id, &image);
        self.shared.check(result);
        self.shared
            .views
            .lock()
            .unwrap()
            .get_mut(&self.p.id)
            .unwrap()
            .log = image;
    }
}

/// The WAL replay rules of the module docs, record by record.
mod rebuild_tests {
    use super::*;

    fn entry(index: Index, term: Term) -> Entry {
        Entry {
            term,
            index,
            data: EntryData::Normal(format!("v{index}").into_bytes()),
        }
    }

    fn ready(lsn: Lsn, hs: Option<HardState>, entries: Vec<Entry>) -> Record {
        Record {
            lsn,
            group: GROUP,
            kind: KIND_READY,
            payload: bincode::serialize(&(hs, entries)).unwrap(),
        }
    }

    fn snapshot(lsn: Lsn, index: Index, term: Term) -> Record {
        let meta = SnapshotMeta {
            index,
            term,
            membership: Membership::new(1..=3),
        };
        Record {
            lsn,
            group: GROUP,
            kind: KIND_SNAPSHOT,
            payload: bincode::serialize(&(meta, b"state".to_vec())).unwrap(),
        }
    }

    fn indexes_terms(r: &Recovered) -> Vec<(Index, Term)> {
        r.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn a_snapshot_that_agrees_with_the_log_keeps_the_entries_after_it() {
        let hs = HardState {
            term: 1,
            vote: Some(1),
            commit: 3,
        };
        let records = [
            ready(1, Some(hs), (1..=5).map(|i| entry(i, 1)).collect()),
            snapshot(2, 3, 1),
            ready(3, None, vec![entry(6, 1)]),
        ];
        let r = rebuild(&records).unwrap();
        assert_eq!(r.hard, hs);
        assert_eq!(r.snapshot.as_ref().map(|(m, _)| m.index), Some(3));
        assert_eq!(indexes_terms(&r), vec![(4, 1), (5, 1), (6, 1)]);
    }

    #[test]
    fn a_snapshot_that_disagrees_with_the_log_replaces_all_of_it() {
        let records = [
            ready(1, None, (1..=5).map(|i| entry(i, 1)).collect()),
            // A leader of term 2 committed a different entry 4.
            snapshot(2, 4, 2),
            ready(3, None, vec![entry(5, 2)]),
        ];
        let r = rebuild(&records).unwrap();
        assert_eq!(
            r.snapshot.as_ref().map(|(m, _)| (m.index, m.term)),
            Some((4, 2))
        );
        assert_eq!(indexes_terms(&r), vec![(5, 2)]);
    }

    #[test]
    fn a_snapshot_past_the_log_replaces_all_of_it() {
        let records = [
            ready(1, None, (1..=2).map(|i| entry(i, 1)).collect()),
            snapshot(2, 9, 3),
        ];
        let r = rebuild(&records).unwrap();
        assert!(r.entries.is_empty());
        assert_eq!(r.snapshot.map(|(m, _)| m.index), Some(9));
    }

    #[test]
    fn records_that_contradict_the_rules_fail_recovery() {
        // Entries that start at or below the snapshot (it covers only
        // committed entries, which are never rewritten).
        let below = [
            ready(1, None, (1..=3).map(|i| entry(i, 1)).collect()),
            snapshot(2, 2, 1),
            ready(3, None, vec![entry(2, 2)]),
        ];
        assert!(rebuild(&below).is_err());
        // Entries that leave a gap after the snapshot.
        let gap = [snapshot(1, 5, 1), ready(2, None, vec![entry(7, 1)])];
        assert!(rebuild(&gap).is_err());
        // A snapshot that does not move forward.
        let backwards = [snapshot(1, 5, 1), snapshot(2, 5, 1)];
        assert!(rebuild(&backwards).is_err());
    }
}
