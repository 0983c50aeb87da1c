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
//!     └── LogWriter::append(one record per Ready) ◀── hard state + entries
//!         messages: sent at once; persisted_messages + on_persisted: once
//!         the durable LSN covers every record appended before them
//! ```
//!
//! # Durability
//! Each Ready's `hard_state` and `entries` go into **one** WAL record
//! (bincode of `(Option<HardState>, Vec<Entry>)`), so a crash keeps both or
//! neither: a hard state whose commit index points into entries the same
//! Ready replaced must never survive without them, and entries of a new term
//! must never survive without that term. The WAL is recovered as a prefix of
//! records; the state is rebuilt by replaying them: the hard state is the
//! latest one, and a record whose entries start at index `i` replaces every
//! entry `>= i`.
//!
//! `persisted_messages` (votes, append acknowledgements) are held until the
//! durable LSN reaches the newest record appended when their Ready was taken
//! (even a Ready with nothing to write waits: its acknowledgement may promise
//! entries of an earlier, still unsynced record); then `on_persisted` is
//! called with that Ready's last entry.
//!
//! The state machine is a register (the newest Normal entry's value); it is
//! in memory only and rebuilt on restart by re-applying the log (the core
//! hands out committed entries from index 1 again).

use crate::checker::{fingerprint, Check, LogImage, ReadResult};
use crate::shared::{Request, Shared};
use distkv::bugs::{self, Bug};
use distkv::raft::{
    Config, Entry, EntryData, HardState, Index, Membership, Message, NodeId, Raft, RaftState, Term,
};
use distkv::rt::sim_rt::{SimNet, SimRuntime};
use distkv::rt::{Net, Runtime, SimDisk};
use distkv::storage::group_commit::{GroupCommitConfig, LogWriter};
use distkv::storage::wal::{Lsn, Record, Wal};
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
    pub n: u64,
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
            ..Config::new(self.id)
        }
    }
}

/// Rebuilds the durable Raft state from the WAL's records.
pub fn rebuild(records: &[Record]) -> Result<(HardState, Vec<Entry>), String> {
    let mut hard = HardState::default();
    let mut entries: Vec<Entry> = Vec::new();
    for r in records {
        if r.kind != KIND_READY || r.group != GROUP {
            return Err(format!(
                "unexpected record kind {} group {}",
                r.kind, r.group
            ));
        }
        let (hs, new): (Option<HardState>, Vec<Entry>) =
            bincode::deserialize(&r.payload).map_err(|e| format!("record {}: {e}", r.lsn))?;
        if let Some(hs) = hs {
            hard = hs;
        }
        if let Some(first) = new.first() {
            if first.index == 0 || first.index > entries.len() as Index + 1 {
                return Err(format!(
                    "record {} starts at index {} but the log ends at {}",
                    r.lsn,
                    first.index,
                    entries.len()
                ));
            }
            entries.truncate(first.index as usize - 1);
            for e in new {
                if e.index != entries.len() as Index + 1 {
                    return Err(format!("record {}: entries not contiguous", r.lsn));
                }
                entries.push(e);
            }
        }
    }
    Ok((hard, entries))
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
    /// `(term, fingerprint)` of the in-memory log, mirrored from Readies.
    mirror: Vec<(Term, u64)>,
    proposals: BTreeMap<Index, Proposal>,
    /// Reads waiting for their ReadState, by ctx.
    reads: BTreeMap<u64, oneshot::Sender<Result<ReadResult, String>>>,
    /// Reads with a read index, waiting for the state machine to reach it.
    ready_reads: Vec<(Index, oneshot::Sender<Result<ReadResult, String>>)>,
    next_ctx: u64,
    applied: Index,
    /// The register's history: every applied Normal entry.
    history: BTreeMap<Index, Vec<u8>>,
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
    let (mut hard, entries) = rebuild(&recovered.records)
        .unwrap_or_else(|e| shared.fail_with(Check::Recovery, format!("node {id}: {e}")));
    if bugs::enabled(Bug::ForgetVote) {
        // Injected bug: the term/vote are not recovered (the log is).
        hard.term = 0;
        hard.vote = None;
    }
    let mirror = entries
        .iter()
        .map(|e| (e.term, fingerprint(&e.data)))
        .collect();
    let next_lsn = wal.next_lsn();
    let writer = LogWriter::start(
        &rt,
        Arc::new(tokio::sync::Mutex::new(wal)),
        next_lsn,
        p.group_commit,
    );
    let state = RaftState {
        hard_state: hard,
        snapshot: Default::default(),
        entries,
        initial_membership: Membership::new(1..=p.n),
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
        v.applied_index = 0;
        v.applied.clear();
        v.incarnation
    };
    shared.trace(&format!(
        "start {id}#{incarnation} term {} log {} truncated {}",
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
        proposals: BTreeMap::new(),
        reads: BTreeMap::new(),
        ready_reads: Vec::new(),
        next_ctx: 1,
        applied: 0,
        history: BTreeMap::new(),
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
                Some(msg) = msg_rx.recv() => self.raft.step(msg),
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

    fn register_at(&self, read_index: Index) -> ReadResult {
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
            assert!(rd.snapshot.is_none(), "no compaction here, so no snapshots");
            for msg in rd.messages {
                self.send(msg);
            }
            // Persist: hard state and entries in one record.
            if rd.hard_state.is_some() || !rd.entries.is_empty() {
                if let Some(first) = rd.entries.first() {
                    self.mirror.truncate(first.index as usize - 1);
                    self.mirror
                        .extend(rd.entries.iter().map(|e| (e.term, fingerprint(&e.data))));
                }
                let payload =
                    bincode::serialize(&(rd.hard_state, &rd.entries)).expect("records encode");
                self.writer
                    .append(self.rt.now(), GROUP, KIND_READY, &payload);
            }
            let last = rd.entries.last().map(|e| (e.index, e.term));
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

    fn apply(&mut self, entry: Entry) {
        let id = self.p.id;
        assert_eq!(
            entry.index,
            self.applied + 1,
            "node {id}: committed entries out of order"
        );
        self.applied = entry.index;
        let result = self.shared.checker.lock().unwrap().applied(id, &entry);
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
                for peer in (1..=self.p.n).filter(|&p| p != self.p.id) {
                    if let Some(m) = self.raft.match_index(peer) {
                        v.matches.insert(peer, m);
                    }
                }
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
        assert_eq!(
            log.last_index(),
            self.mirror.len() as Index,
            "node {}: the driver's mirror of the log diverged from the core's",
            self.p.id
        );
        for (i, &(term, _)) in self.mirror.iter().enumerate() {
            assert_eq!(
                log.term(i as Index + 1),
                Some(term),
                "mirror term at {}",
                i + 1
            );
        }
        let image = LogImage {
            entries: self.mirror.clone(),
            commit: self.raft.commit(),
        };
        self.shared
            .views
            .lock()
            .unwrap()
            .get_mut(&self.p.id)
            .unwrap()
            .log = image;
    }
}
