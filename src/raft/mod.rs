//! A sans-IO Raft core: one Raft group's consensus, with no network, clock
//! or disk inside.
//!
//! ```text
//!   inputs                         Raft                         outputs (Ready)
//!   tick() ───────────────▶ ┌────────────────────┐ ──▶ hard_state, entries, snapshot: PERSIST
//!   step(Message) ────────▶ │ role, term, vote,  │ ──▶ messages: send now
//!   propose(data) ────────▶ │ log, progress,     │ ──▶ persisted_messages: send AFTER persisting
//!   read_index(ctx) ──────▶ │ pending reads      │ ──▶ committed_entries: apply in order
//!   transfer_leader(to) ──▶ │                    │ ──▶ read_states: serve when applied ≥ index
//!   on_persisted(i, t) ───▶ └────────────────────┘ ──▶ aborted_reads: answer "not leader"
//! ```
//!
//! # The driver's contract
//! 1. Call [`Raft::tick`] at a fixed interval; [`Raft::step`] each message.
//! 2. When [`Raft::has_ready`], take [`Raft::ready`]: persist `hard_state`,
//!    `snapshot` and `entries` (appending `entries` replaces any stored
//!    entries from `entries[0].index` on); send `messages` at once; send
//!    `persisted_messages` only **after** that write is durable, then call
//!    [`Raft::on_persisted`] with the last entry's index and term. A vote or
//!    an acknowledgement that goes out before the state it promises is on
//!    disk is how Raft loses data after a crash.
//! 3. Apply `committed_entries` in order (they are always locally durable),
//!    then call [`Raft::on_applied`]. Answer a client only after its entry is
//!    applied.
//! 4. Serve a `read_state` once the applied index reaches its index.
//! 5. Check [`Raft::has_ready`] again after `on_persisted`/`step`/`tick`:
//!    persisting can advance the commit index and produce more work.
//! 6. Proposals and reads are batched: their appends and the heartbeat round
//!    that confirms reads go out from the next `ready`, one message per
//!    follower for everything proposed or read since the last one. A driver
//!    that takes a burst of client commands before calling `ready` gets one
//!    append (and one log write) for all of them.
//!
//! Features: randomized election timeouts (§5.2), pre-vote and check-quorum
//! (dissertation §9.6, §6.2), pipelined replication with a bounded window and
//! fast conflict backtracking (§5.3), the Figure 8 commit rule (§5.4.2),
//! InstallSnapshot (§7), ReadIndex reads (§6.4), leadership transfer (§3.10),
//! and one-server-at-a-time membership changes with learners (§4.1).

mod log;
pub mod types;

#[cfg(test)]
mod tests;

pub use log::RaftLog;
pub use types::*;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

/// Tuning of one Raft group. Times are in ticks (the driver's tick interval).
#[derive(Clone, Debug)]
pub struct Config {
    pub id: NodeId,
    /// The group's id (the partition), only to name it in logs.
    pub group: u64,
    /// A follower that hears no leader for `election_ticks` to
    /// `2 * election_ticks` ticks starts an election.
    pub election_ticks: u32,
    /// A leader sends heartbeats every `heartbeat_ticks` ticks.
    pub heartbeat_ticks: u32,
    /// Most entries in one append message.
    pub max_entries_per_append: usize,
    /// Most bytes of entry payload in one append message (at least one
    /// entry is always sent), so messages stay far below the frame limit.
    pub max_append_bytes: usize,
    /// Most append messages in flight to one follower (pipelining window).
    pub max_inflight_appends: usize,
    pub pre_vote: bool,
    pub check_quorum: bool,
    /// For members that can lose their state: servers without
    /// `--persistence`, and durable servers whose disk was wiped or replaced
    /// (the server cannot tell a new disk from a wiped one). A member that
    /// starts with an empty log may have lost a log and votes it gave before,
    /// so until it has caught up with a leader (accepted an append that
    /// brings its log up to that leader's commit index, or won an election,
    /// which only a log holding every committed entry can) it votes only for
    /// candidates whose log is empty too. A new group still elects its first
    /// leader; an emptied member cannot help elect a leader that lacks
    /// entries it acknowledged. Leaders also repair a follower whose log
    /// ends below what it acknowledged (see `handle_append_response`).
    /// Two refinements keep a survivor's data when a majority restarted
    /// empty (see `amnesiac_may_grant`): an empty candidate is refused while
    /// a peer with a log is heard, and a candidate with a log may be chosen
    /// once every other voter is heard, with a log it is up to date with.
    pub amnesia_guard: bool,
    /// How long (ticks since start) a member under the amnesia guard
    /// listens before it grants a vote to an empty candidate: at least the
    /// longest election timeout (`2 * election_ticks`), so that every live
    /// peer that campaigns has been heard once. Also how recent what it
    /// heard of a peer must be to count.
    pub amnesia_listen_ticks: u32,
    /// For a group split off another (its log starts at a snapshot in this
    /// term): its first leader, elected in the next term, is one the split
    /// asked for, and is counted as such (`Event::SplitLeader`), not as an
    /// election. 0: not split-born.
    pub born_at_term: Term,
    /// Most bytes of snapshot data in one InstallSnapshot message.
    pub snapshot_chunk_bytes: usize,
    /// Most snapshot chunks in flight to one follower (flow control: the
    /// follower acknowledges each chunk).
    pub max_inflight_snapshot_chunks: usize,
}

impl Config {
    pub fn new(id: NodeId) -> Config {
        Config {
            id,
            group: 0,
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_entries_per_append: 256,
            max_append_bytes: 1024 * 1024,
            max_inflight_appends: 64,
            pre_vote: true,
            check_quorum: true,
            amnesia_guard: false,
            amnesia_listen_ticks: 20,
            born_at_term: 0,
            snapshot_chunk_bytes: 1024 * 1024,
            max_inflight_snapshot_chunks: 4,
        }
    }
}

/// What an amnesiac member last heard from a campaigning peer.
#[derive(Clone, Copy, Debug)]
struct Heard {
    /// `Raft::ticks` when it arrived.
    tick: u64,
    /// The peer's term then.
    term: Term,
    /// Where the peer's log ended, and that entry's term.
    last_log_index: Index,
    last_log_term: Term,
}

/// What a member is doing now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Follower,
    PreCandidate,
    Candidate,
    Leader,
}

/// Why a proposal or read was refused (nothing was appended).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<NodeId> },
    #[error("leadership is being transferred")]
    Transferring,
    #[error("a membership change is still in progress")]
    ChangeInProgress,
    #[error("the leader has not committed an entry of its term yet")]
    NotReady,
}

/// A read that may be served once the state machine has applied `index`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadState {
    pub ctx: u64,
    pub index: Index,
}

/// Everything the driver must do after the last call (see the module docs).
#[derive(Debug, Default)]
pub struct Ready {
    pub hard_state: Option<HardState>,
    pub snapshot: Option<Snapshot>,
    pub entries: Vec<Entry>,
    pub messages: Vec<Message>,
    pub persisted_messages: Vec<Message>,
    pub committed_entries: Vec<Entry>,
    pub read_states: Vec<ReadState>,
    /// Reads that will never complete here (leadership lost).
    pub aborted_reads: Vec<u64>,
    /// A follower needs a snapshot and the leader holds none that reaches
    /// its log's first index: take one of the state machine at the applied
    /// index and hand it to [`Raft::offer_snapshot`].
    pub snapshot_request: bool,
}

/// What a member restarts from: its durable state.
#[derive(Clone, Debug, Default)]
pub struct RaftState {
    pub hard_state: HardState,
    pub snapshot: SnapshotMeta,
    /// Entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// Membership before any entry (used when there is no snapshot).
    pub initial_membership: Membership,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProgressState {
    /// Find the follower's last matching index, one message at a time.
    Probe,
    /// Stream entries optimistically, up to the inflight window.
    Replicate,
    /// A snapshot was sent; wait for it to land.
    Snapshot { index: Index },
}

/// The leader's view of one follower (§5.3 `nextIndex`/`matchIndex`).
#[derive(Clone, Debug)]
struct Progress {
    match_index: Index,
    next_index: Index,
    state: ProgressState,
    /// Last index of each append in flight (Replicate).
    inflight: VecDeque<Index>,
    /// Probe: a message is out, wait for its answer or a heartbeat.
    probe_sent: bool,
    /// Heard from since the last check-quorum round.
    active: bool,
    /// Ticks since the snapshot transfer last made progress (resumed after
    /// an election timeout).
    snapshot_ticks: u32,
    /// The snapshot transfer in progress (state `Snapshot`).
    snapshot: Option<SnapshotSend>,
    /// The commit index this follower was last told.
    commit_sent: Index,
    /// `match_index` at the previous heartbeat response: if it did not move
    /// while entries were outstanding, they were lost.
    match_at_heartbeat: Index,
}

impl Progress {
    fn new(next_index: Index) -> Progress {
        Progress {
            match_index: 0,
            next_index,
            state: ProgressState::Probe,
            inflight: VecDeque::new(),
            probe_sent: false,
            active: true,
            snapshot_ticks: 0,
            snapshot: None,
            commit_sent: 0,
            match_at_heartbeat: 0,
        }
    }

    fn become_probe(&mut self) {
        self.state = ProgressState::Probe;
        self.next_index = self.match_index + 1;
        self.inflight.clear();
        self.probe_sent = false;
        self.snapshot = None;
    }
}

/// A snapshot this leader can send: the driver's bytes of its state machine
/// at `meta.index`, with their checksum. Cloning shares the bytes.
#[derive(Clone, Debug)]
struct OutgoingSnapshot {
    meta: SnapshotMeta,
    data: Arc<Vec<u8>>,
    crc: u32,
}

/// One follower's snapshot transfer: bytes `..acked` arrived, bytes
/// `acked..sent` are in flight.
#[derive(Clone, Debug)]
struct SnapshotSend {
    snapshot: OutgoingSnapshot,
    sent: u64,
    acked: u64,
    /// The last chunk went out (and nothing was rewound since).
    done_sent: bool,
    /// After a timeout: one chunk at a time until the follower answers, so
    /// an unreachable follower costs one chunk per election timeout.
    probing: bool,
    /// The offset of the last rewind, so the rejections of the other chunks
    /// that were in flight behind a lost one do not rewind again.
    rewound_to: Option<u64>,
}

/// The driver's verdict on a whole received snapshot (see
/// [`Raft::step_checked`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotCheck {
    /// Its bytes decode: install it now.
    Install,
    /// They do not: ask the leader again.
    Reject,
    /// The driver decodes it elsewhere and reports with
    /// [`Raft::snapshot_checked`]; the core keeps it until then.
    Later,
}

/// A snapshot being received: the chunks so far, in order.
struct SnapshotAssembly {
    meta: SnapshotMeta,
    len: u64,
    crc: u32,
    data: Vec<u8>,
    /// The leader's commit index, as its latest chunk said.
    commit: Index,
}

struct PendingRead {
    ctx: u64,
    index: Index,
    seq: u64,
    acks: BTreeSet<NodeId>,
}

/// One member of one Raft group. See the module docs.
pub struct Raft {
    cfg: Config,
    term: Term,
    vote: Option<NodeId>,
    role: Role,
    leader: Option<NodeId>,
    log: RaftLog,
    membership: Membership,
    /// Index of the newest membership entry in the log (0: none).
    membership_index: Index,
    progress: BTreeMap<NodeId, Progress>,
    votes: BTreeMap<NodeId, bool>,
    election_elapsed: u32,
    heartbeat_elapsed: u32,
    randomized_timeout: u32,
    rng: u64,
    transferee: Option<NodeId>,
    read_seq: u64,
    pending_reads: VecDeque<PendingRead>,
    /// Leader: proposals appended since the last [`Raft::ready`], whose
    /// appends go out together there (one message per follower for a whole
    /// batch of proposals).
    append_due: bool,
    /// Leader: reads registered since the last [`Raft::ready`], confirmed
    /// together by one heartbeat round (number `read_seq + 1`) sent there.
    heartbeat_due: bool,
    /// Reads that arrived before the leader committed an entry of its term.
    reads_waiting_for_commit: Vec<u64>,
    /// The snapshot to send to followers that are behind the log's first
    /// index, taken by the driver on request (`Ready::snapshot_request`)
    /// and kept while transfers may use it.
    local_snapshot: Option<OutgoingSnapshot>,
    /// A follower needs a snapshot and `local_snapshot` cannot serve it.
    snapshot_wanted: bool,
    /// Follower: the snapshot being received.
    assembly: Option<SnapshotAssembly>,
    /// Follower: a whole snapshot the driver is checking
    /// ([`SnapshotCheck::Later`]), and the leader that sent it.
    checking: Option<(NodeId, Snapshot, u32, Index)>,
    /// Index of the last snapshot installed from a leader (for an injected
    /// bug in the simulation).
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    installed_index: Index,
    /// Membership before the first entry, when there is no snapshot.
    initial_membership: Membership,
    /// Highest committed index handed to the driver in a `Ready`.
    apply_handed: Index,
    /// See [`Config::amnesia_guard`]: started empty and not caught up yet.
    amnesiac: bool,
    /// The running campaign was started by the leader's `TimeoutNow` (a
    /// leadership transfer).
    handed_over: bool,
    /// Ticks since this member started (for `amnesia_listen_ticks`).
    ticks: u64,
    /// While amnesiac: the last PreVote/Vote heard from each peer.
    heard: BTreeMap<NodeId, Heard>,
    // Output.
    persisted_hard_state: HardState,
    unpersisted_from: Option<Index>,
    received_snapshot: Option<Snapshot>,
    messages: Vec<Message>,
    persisted_messages: Vec<Message>,
    read_states: Vec<ReadState>,
    aborted_reads: Vec<u64>,
}

impl Raft {
    /// Restores a member from its durable state. `seed` drives the election
    /// timeout randomization (pass the simulation's random numbers).
    pub fn new(cfg: Config, state: RaftState, seed: u64) -> Raft {
        assert!(
            cfg.election_ticks > cfg.heartbeat_ticks,
            "election timeout must exceed the heartbeat"
        );
        let log = RaftLog::new(
            state.snapshot.clone(),
            state.entries,
            state.hard_state.commit,
        );
        let apply_handed = log.applied;
        let amnesiac = cfg.amnesia_guard && log.last_index() == 0;
        let mut raft = Raft {
            amnesiac,
            handed_over: false,
            ticks: 0,
            heard: BTreeMap::new(),
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            role: Role::Follower,
            leader: None,
            membership: Membership::default(),
            membership_index: 0,
            progress: BTreeMap::new(),
            votes: BTreeMap::new(),
            election_elapsed: 0,
            heartbeat_elapsed: 0,
            randomized_timeout: cfg.election_ticks,
            rng: seed ^ crate::hash::GAMMA,
            transferee: None,
            read_seq: 0,
            append_due: false,
            heartbeat_due: false,
            pending_reads: VecDeque::new(),
            reads_waiting_for_commit: Vec::new(),
            local_snapshot: None,
            snapshot_wanted: false,
            assembly: None,
            checking: None,
            installed_index: 0,
            initial_membership: state.initial_membership,
            apply_handed,
            persisted_hard_state: state.hard_state,
            unpersisted_from: None,
            received_snapshot: None,
            messages: Vec::new(),
            persisted_messages: Vec::new(),
            read_states: Vec::new(),
            aborted_reads: Vec::new(),
            log,
            cfg,
        };
        raft.recompute_membership();
        raft.reset_randomized_timeout();
        raft
    }

    // ----- accessors -------------------------------------------------------

    pub fn id(&self) -> NodeId {
        self.cfg.id
    }
    pub fn term(&self) -> Term {
        self.term
    }
    pub fn vote(&self) -> Option<NodeId> {
        self.vote
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }
    pub fn log(&self) -> &RaftLog {
        &self.log
    }
    pub fn commit(&self) -> Index {
        self.log.commit
    }
    pub fn membership(&self) -> &Membership {
        &self.membership
    }
    /// Index of the newest membership change in the log (0: none since the
    /// snapshot or the initial membership); it may not be committed yet.
    pub fn membership_index(&self) -> Index {
        self.membership_index
    }
    /// The membership, when its newest change is committed (`None` while a
    /// change is in flight), with an index it is known to hold at: the
    /// change's own, or the snapshot's when the log holds no change (the
    /// change is in the snapshot, or there never was one). Indexes of the
    /// group's committed memberships only grow, so a newer report of one
    /// never goes back. Only a leader's answer is current: a follower's
    /// commit index may lag.
    pub fn committed_membership(&self) -> Option<(Index, &Membership)> {
        (self.membership_index <= self.log.commit).then_some((
            self.membership_index.max(self.log.snapshot.index),
            &self.membership,
        ))
    }
    pub fn hard_state(&self) -> HardState {
        HardState {
            term: self.term,
            vote: self.vote,
            commit: self.log.commit,
        }
    }
    /// The follower's replication position as the leader sees it.
    pub fn match_index(&self, id: NodeId) -> Option<Index> {
        self.progress.get(&id).map(|p| p.match_index)
    }

    /// Whether this leader heard from `id` since its last check-quorum
    /// round (about an election timeout): a peer that is likely up.
    pub fn recently_active(&self, id: NodeId) -> bool {
        self.progress.get(&id).is_some_and(|p| p.active)
    }

    // ----- randomness and timers --------------------------------------------

    fn next_random(&mut self) -> u64 {
        // The SplitMix64 generator: deterministic from the seed.
        let z = crate::hash::splitmix64(self.rng);
        self.rng = self.rng.wrapping_add(crate::hash::GAMMA);
        z
    }

    /// Makes this member's election timeout fire within `ticks` ticks (a
    /// new group's designated first candidate; see `born_at_term`). Only
    /// shortens a wait, so it changes nothing a timeout could not.
    pub fn hasten_election(&mut self, ticks: u32) {
        self.randomized_timeout = self
            .randomized_timeout
            .min(self.election_elapsed.saturating_add(ticks.max(1)));
    }

    fn reset_randomized_timeout(&mut self) {
        let e = self.cfg.election_ticks as u64;
        self.randomized_timeout = (e + self.next_random() % e) as u32;
    }

    fn is_voter(&self) -> bool {
        self.membership.voters.contains(&self.cfg.id)
    }

    /// Whether `id`'s votes and acknowledgements count toward a majority:
    /// only the voters' (with the injected bug `removed-member-votes`, a
    /// learner's too).
    fn counts_toward_quorum(&self, id: NodeId) -> bool {
        self.membership.voters.contains(&id)
            || (crate::bug!(RemovedMemberVotes) && self.membership.learners.contains(&id))
    }

    /// Advances time by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        match self.role {
            Role::Leader => self.tick_leader(),
            _ => {
                self.election_elapsed += 1;
                if self.election_elapsed >= self.randomized_timeout && self.is_voter() {
                    self.election_elapsed = 0;
                    self.start_election(false);
                }
            }
        }
    }

    fn tick_leader(&mut self) {
        self.heartbeat_elapsed += 1;
        self.election_elapsed += 1;
        if self.election_elapsed >= self.cfg.election_ticks {
            self.election_elapsed = 0;
            if self.cfg.check_quorum && !self.quorum_active() {
                // §6.2: a leader that cannot reach a majority steps down, so
                // clients go find the real one.
                let term = self.term;
                self.become_follower(term, None);
                return;
            }
            if self.transferee.is_some() {
                self.transferee = None; // transfer timed out
            }
        }
        let mut resume = Vec::new();
        for (&id, pr) in self.progress.iter_mut() {
            if let ProgressState::Snapshot { .. } = pr.state {
                pr.snapshot_ticks += 1;
                if pr.snapshot_ticks < self.cfg.election_ticks {
                    continue;
                }
                pr.snapshot_ticks = 0;
                match pr.snapshot.as_mut() {
                    Some(s) if s.acked < s.snapshot.data.len() as u64 => {
                        // Chunks were lost, or the follower is away: resume
                        // from what it acknowledged, one chunk at a time.
                        s.sent = s.acked;
                        s.done_sent = false;
                        s.probing = true;
                        s.rewound_to = None;
                        resume.push(id);
                    }
                    // Everything arrived but no install was reported (the
                    // follower restarted, or its answer was lost): start over.
                    _ => pr.become_probe(),
                }
            }
        }
        for id in resume {
            self.send_snapshot_chunks(id);
        }
        if self.local_snapshot.is_some() && self.progress.values().all(|p| p.snapshot.is_none()) {
            // No transfer uses it: free the memory (the next one takes a
            // fresh snapshot, which is also newer).
            self.local_snapshot = None;
        }
        #[cfg(feature = "sim")]
        let heartbeat_ticks = if crate::bugs::enabled(crate::bugs::Bug::SlowHeartbeat) {
            2 * self.cfg.election_ticks // injected bug
        } else {
            self.cfg.heartbeat_ticks
        };
        #[cfg(not(feature = "sim"))]
        let heartbeat_ticks = self.cfg.heartbeat_ticks;
        if self.heartbeat_elapsed >= heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            // Carry the newest pending read, so a lost confirmation round
            // is retried by the next heartbeat.
            let read_seq = if self.pending_reads.is_empty() {
                0
            } else {
                self.read_seq
            };
            self.broadcast_heartbeat(read_seq);
        }
    }

    fn quorum_active(&mut self) -> bool {
        let me = self.cfg.id;
        let active = self
            .membership
            .voters
            .iter()
            .filter(|id| **id == me || self.progress.get(id).is_some_and(|p| p.active))
            .count();
        for pr in self.progress.values_mut() {
            pr.active = false;
        }
        active >= self.membership.quorum()
    }

    // ----- role changes -----------------------------------------------------

    fn abort_reads(&mut self) {
        self.aborted_reads
            .extend(self.pending_reads.drain(..).map(|r| r.ctx));
        self.aborted_reads
            .append(&mut self.reads_waiting_for_commit);
    }

    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.vote = None;
        }
        if self.role == Role::Leader {
            tracing::info!(
                group = self.cfg.group,
                id = self.cfg.id,
                term = self.term,
                leader = ?leader,
                "stepped down as leader"
            );
            self.abort_reads();
            // Transfers end with the leadership: free their snapshot.
            self.local_snapshot = None;
            self.snapshot_wanted = false;
            for pr in self.progress.values_mut() {
                pr.snapshot = None;
            }
        }
        self.role = Role::Follower;
        self.leader = leader;
        self.transferee = None;
        self.election_elapsed = 0;
        self.reset_randomized_timeout();
    }

    /// Starts an election now (pre-vote first unless `transfer` or disabled).
    pub fn campaign(&mut self) {
        if self.is_voter() && self.role != Role::Leader {
            self.start_election(false);
        }
    }

    fn start_election(&mut self, transfer: bool) {
        if !transfer {
            self.handed_over = false; // a campaign of our own
        }
        if self.cfg.pre_vote && !transfer {
            self.role = Role::PreCandidate;
            self.leader = None;
            self.votes.clear();
            // §9.6: ask first whether we could win, without disrupting anyone.
            self.request_votes(self.term + 1, true, false);
        } else {
            self.term += 1;
            self.vote = Some(self.cfg.id);
            self.role = Role::Candidate;
            self.leader = None;
            self.votes.clear();
            self.request_votes(self.term, false, transfer);
        }
        self.reset_randomized_timeout();
    }

    fn request_votes(&mut self, term: Term, pre: bool, transfer: bool) {
        self.votes.insert(self.cfg.id, true);
        if self.tally() {
            return; // a single-voter group wins at once
        }
        let (last_log_index, last_log_term) = (self.log.last_index(), self.log.last_term());
        let voters: Vec<NodeId> = if crate::bug!(RemovedMemberVotes) {
            // Injected bug: learners are asked too (and counted).
            self.membership.members().collect()
        } else {
            self.membership.voters.iter().copied().collect()
        };
        for to in voters.into_iter().filter(|&v| v != self.cfg.id) {
            let body = if pre {
                MessageBody::PreVote {
                    last_log_index,
                    last_log_term,
                }
            } else {
                MessageBody::Vote {
                    last_log_index,
                    last_log_term,
                    transfer,
                }
            };
            let msg = Message {
                from: self.cfg.id,
                to,
                term,
                body,
            };
            if pre {
                self.messages.push(msg);
            } else {
                // Our vote for ourselves and the new term must be durable
                // before we ask (a restarted node must not vote twice).
                self.persisted_messages.push(msg);
            }
        }
    }

    /// Counts votes; moves on if the election is decided. Returns whether it won.
    fn tally(&mut self) -> bool {
        let quorum = self.membership.quorum();
        let granted = if crate::bug!(RemovedMemberVotes) {
            // Injected bug: every grant counts, whoever sent it.
            self.votes.values().filter(|g| **g).count()
        } else {
            self.membership
                .voters
                .iter()
                .filter(|v| self.votes.get(v) == Some(&true))
                .count()
        };
        let rejected = self
            .membership
            .voters
            .iter()
            .filter(|v| self.votes.get(v) == Some(&false))
            .count();
        if granted >= quorum {
            match self.role {
                Role::PreCandidate => self.start_election(true),
                Role::Candidate => self.become_leader(),
                _ => {}
            }
            true
        } else {
            if rejected >= quorum || (self.membership.voters.len() - rejected) < quorum {
                let term = self.term;
                self.become_follower(term, None);
            }
            false
        }
    }

    fn become_leader(&mut self) {
        // A leadership handed over on request (an operator, the manager's
        // balancing) is not an election the stability checks count.
        crate::stats::count(if self.handed_over {
            crate::stats::Event::HandedOver
        } else if self.cfg.born_at_term > 0 && self.term == self.cfg.born_at_term + 1 {
            crate::stats::Event::SplitLeader
        } else {
            crate::stats::Event::Election
        });
        self.handed_over = false;
        tracing::info!(
            group = self.cfg.group,
            id = self.cfg.id,
            term = self.term,
            "became leader"
        );
        // Leader Completeness (§5.4): our log holds every committed entry.
        self.amnesiac = false;
        self.heard.clear();
        self.role = Role::Leader;
        self.leader = Some(self.cfg.id);
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        self.transferee = None;
        let next = self.log.last_index() + 1;
        let me = self.cfg.id;
        self.progress = self
            .membership
            .members()
            .filter(|&id| id != me)
            .map(|id| (id, Progress::new(next)))
            .collect();
        // §5.4.2 and §6.4: commit an entry of our own term right away.
        self.append_as_leader(EntryData::Noop);
        self.broadcast_append();
    }

    // ----- proposals ----------------------------------------------------------

    fn append_as_leader(&mut self, data: EntryData) -> Index {
        let index = self.log.last_index() + 1;
        let entry = Entry {
            term: self.term,
            index,
            data,
        };
        if let EntryData::ConfChange(change) = &entry.data {
            self.apply_membership(change, index);
        }
        self.log.push(entry);
        self.unpersisted_from.get_or_insert(index);
        index
    }

    fn check_can_propose(&self) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.transferee.is_some() {
            return Err(ProposeError::Transferring);
        }
        Ok(())
    }

    /// Appends a command (leader only). Returns its index; it is committed
    /// when it shows up in `committed_entries` with this term. The append
    /// goes to the followers from the next [`Raft::ready`].
    pub fn propose(&mut self, data: Vec<u8>) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        let index = self.append_as_leader(EntryData::Normal(data));
        self.append_due = true;
        Ok(index)
    }

    /// Proposes a membership change. Only one may be uncommitted at a time,
    /// and only after the leader committed an entry of its term (the fix
    /// for the single-server-change bug, Ongaro 2015).
    pub fn propose_conf_change(&mut self, change: ConfChange) -> Result<Index, ProposeError> {
        self.check_can_propose()?;
        // Injected bug `conf-change-unsafe`: neither check.
        let unchecked = crate::bug!(ConfChangeUnsafe);
        if self.membership_index > self.log.commit && !unchecked {
            return Err(ProposeError::ChangeInProgress);
        }
        if self.log.term(self.log.commit) != Some(self.term) && !unchecked {
            return Err(ProposeError::NotReady);
        }
        let index = self.append_as_leader(EntryData::ConfChange(change));
        self.append_due = true;
        Ok(index)
    }

    /// Asks for a linearizable read point (§6.4). A [`ReadState`] with `ctx`
    /// comes out once a quorum confirmed this leader is still the leader, by
    /// a heartbeat round sent from the next [`Raft::ready`] (one round for
    /// every read asked until then).
    pub fn read_index(&mut self, ctx: u64) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.log.term(self.log.commit) != Some(self.term) {
            // Our commit index may still be behind the previous leader's:
            // wait for the no-op of our term to commit.
            self.reads_waiting_for_commit.push(ctx);
            return Ok(());
        }
        self.start_read(ctx);
        Ok(())
    }

    fn start_read(&mut self, ctx: u64) {
        if self.membership.voters.len() == 1 && self.is_voter() {
            self.read_states.push(ReadState {
                ctx,
                index: self.log.commit,
            });
            return;
        }
        // Confirmed by the next round, sent from `ready` for every read
        // registered until then: a round sent after the read arrived.
        let mut acks = BTreeSet::new();
        acks.insert(self.cfg.id);
        self.pending_reads.push_back(PendingRead {
            ctx,
            index: self.log.commit,
            seq: self.read_seq + 1,
            acks,
        });
        self.heartbeat_due = true;
    }

    /// Sends what proposals and reads since the last `ready` deferred: the
    /// appends (all new entries in one message per follower) and one
    /// heartbeat round for all new reads.
    fn send_deferred(&mut self) {
        let (append, heartbeat) = (
            std::mem::take(&mut self.append_due),
            std::mem::take(&mut self.heartbeat_due),
        );
        if self.role != Role::Leader {
            return; // stepped down: the reads were aborted, the entries are moot
        }
        if append {
            self.broadcast_append();
        }
        if heartbeat {
            self.read_seq += 1;
            self.broadcast_heartbeat(self.read_seq);
        }
    }

    /// Hands leadership to `to` (dissertation §3.10): stop taking proposals,
    /// bring `to` up to date, then tell it to start an election.
    pub fn transfer_leader(&mut self, to: NodeId) -> Result<(), ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if to == self.cfg.id || !self.membership.voters.contains(&to) {
            return Ok(());
        }
        self.transferee = Some(to);
        self.election_elapsed = 0;
        if self.progress[&to].match_index == self.log.last_index() {
            self.send(to, MessageBody::TimeoutNow, false);
        } else {
            self.send_append(to);
        }
        Ok(())
    }

    // ----- membership -----------------------------------------------------------

    fn apply_membership(&mut self, change: &ConfChange, index: Index) {
        self.membership.apply(change);
        self.membership_index = index;
        if self.role == Role::Leader {
            let next = self.log.last_index() + 1;
            let me = self.cfg.id;
            let members: Vec<NodeId> = self.membership.members().collect();
            for id in &members {
                if *id != me {
                    self.progress
                        .entry(*id)
                        .or_insert_with(|| Progress::new(next));
                }
            }
            self.progress.retain(|id, _| members.contains(id));
        }
    }

    /// Rebuilds the membership from the snapshot (or the initial one) and
    /// the log's change entries (after the log was truncated or restored).
    fn recompute_membership(&mut self) {
        let last = self.log.last_index();
        self.membership = self.membership_at(last);
        self.membership_index = (self.log.first_index()..=last)
            .rev()
            .find(|&i| {
                matches!(
                    self.log.entry(i),
                    Some(Entry {
                        data: EntryData::ConfChange(_),
                        ..
                    })
                )
            })
            .unwrap_or(0);
    }

    // ----- sending ----------------------------------------------------------------

    fn send(&mut self, to: NodeId, body: MessageBody, after_persist: bool) {
        let msg = Message {
            from: self.cfg.id,
            to,
            term: self.term,
            body,
        };
        if after_persist {
            self.persisted_messages.push(msg);
        } else {
            self.messages.push(msg);
        }
    }

    fn broadcast_append(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            self.send_append(id);
        }
    }

    fn broadcast_heartbeat(&mut self, read_seq: u64) {
        let peers: Vec<(NodeId, Index)> = self
            .progress
            .iter()
            .map(|(id, p)| (*id, p.match_index))
            .collect();
        for (to, matched) in peers {
            // Never tell a follower to commit past what it is known to have.
            let commit = self.log.commit.min(matched);
            let pr = self.progress.get_mut(&to).unwrap();
            pr.commit_sent = pr.commit_sent.max(commit);
            self.send(to, MessageBody::Heartbeat { commit, read_seq }, false);
        }
    }

    /// After the commit index advanced: followers with entries to receive
    /// learn it from the append; the others from a heartbeat, so they apply
    /// without waiting for the heartbeat interval.
    fn broadcast_commit(&mut self) {
        let peers: Vec<NodeId> = self.progress.keys().copied().collect();
        for id in peers {
            self.send_commit(id);
        }
    }

    /// Tells `to` the commit index if it can use a newer one than it was told.
    fn send_commit(&mut self, to: NodeId) {
        let Some(pr) = self.progress.get(&to) else {
            return;
        };
        let commit = self.log.commit.min(pr.match_index);
        if commit <= pr.commit_sent || self.send_append(to) {
            return;
        }
        self.progress.get_mut(&to).unwrap().commit_sent = commit;
        self.send(
            to,
            MessageBody::Heartbeat {
                commit,
                read_seq: 0,
            },
            false,
        );
    }

    /// Sends `to` what it is missing, if its window allows. Returns whether
    /// a message went out.
    fn send_append(&mut self, to: NodeId) -> bool {
        let last = self.log.last_index();
        let Some(pr) = self.progress.get(&to) else {
            return false;
        };
        let paused = match pr.state {
            ProgressState::Snapshot { .. } => true,
            ProgressState::Probe => pr.probe_sent,
            ProgressState::Replicate => pr.inflight.len() >= self.cfg.max_inflight_appends,
        };
        if paused {
            return false;
        }
        let prev_log_index = pr.next_index - 1;
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            self.send_snapshot(to);
            return true;
        };
        let entries = self.log.slice_bytes(
            pr.next_index,
            last,
            self.cfg.max_entries_per_append,
            self.cfg.max_append_bytes,
        );
        if entries.is_empty() && pr.state == ProgressState::Replicate {
            return false; // nothing new; heartbeats carry liveness
        }
        let sent_last = prev_log_index + entries.len() as Index;
        let commit = self.log.commit;
        let pr = self.progress.get_mut(&to).unwrap();
        pr.commit_sent = pr.commit_sent.max(commit.min(sent_last));
        match pr.state {
            ProgressState::Replicate => {
                pr.next_index = sent_last + 1;
                pr.inflight.push_back(sent_last);
            }
            _ => pr.probe_sent = true,
        }
        self.send(
            to,
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            },
            false,
        );
        true
    }

    /// Starts a snapshot transfer to `to`, whose next entry is no longer in
    /// the log. Any snapshot at or after the log's first index will do; if
    /// we hold none, the driver is asked for one (`Ready::snapshot_request`)
    /// and the transfer starts in [`Raft::offer_snapshot`].
    fn send_snapshot(&mut self, to: NodeId) {
        #[cfg(feature = "sim")]
        if crate::bugs::enabled(crate::bugs::Bug::ForgetInstalledSnapshot)
            && self.installed_index == self.log.snapshot.index
            && self.installed_index > 0
        {
            // Injected bug: a log that starts at a snapshot received from a
            // leader has nothing to send (as before snapshots were taken on
            // demand).
            tracing::error!(
                group = self.cfg.group,
                to,
                "follower needs a snapshot but none is available"
            );
            return;
        }
        let first = self.log.snapshot.index;
        let usable = self
            .local_snapshot
            .as_ref()
            .filter(|s| s.meta.index >= first)
            .cloned();
        let pr = self.progress.get_mut(&to).unwrap();
        let Some(snapshot) = usable else {
            self.snapshot_wanted = true;
            if pr.state != ProgressState::Probe {
                pr.become_probe();
            }
            pr.probe_sent = true; // until the snapshot is offered
            return;
        };
        pr.state = ProgressState::Snapshot {
            index: snapshot.meta.index,
        };
        pr.inflight.clear();
        pr.snapshot_ticks = 0;
        pr.snapshot = Some(SnapshotSend {
            snapshot,
            sent: 0,
            acked: 0,
            done_sent: false,
            probing: false,
            rewound_to: None,
        });
        crate::stats::count(crate::stats::Event::SnapshotSent);
        self.send_snapshot_chunks(to);
    }

    /// Sends the next chunks of `to`'s snapshot transfer, as far as its
    /// window allows.
    fn send_snapshot_chunks(&mut self, to: NodeId) {
        let chunk_bytes = self.cfg.snapshot_chunk_bytes.max(1) as u64;
        let commit = self.log.commit;
        let window = chunk_bytes * self.cfg.max_inflight_snapshot_chunks.max(1) as u64;
        loop {
            let Some(s) = self.progress.get_mut(&to).and_then(|p| p.snapshot.as_mut()) else {
                return;
            };
            let in_flight = s.sent.saturating_sub(s.acked);
            let full = if s.probing {
                in_flight > 0
            } else {
                in_flight >= window
            };
            if s.done_sent || full {
                return;
            }
            let len = s.snapshot.data.len() as u64;
            let offset = s.sent.min(len);
            let end = (offset + chunk_bytes).min(len);
            let chunk = SnapshotChunk {
                meta: s.snapshot.meta.clone(),
                len,
                crc: s.snapshot.crc,
                offset,
                data: s.snapshot.data[offset as usize..end as usize].to_vec(),
                done: end == len,
                commit,
            };
            s.sent = end;
            s.done_sent = chunk.done;
            self.send(to, MessageBody::InstallSnapshot(chunk), false);
        }
    }

    /// The driver's answer to [`Ready::snapshot_request`]: `data` is its
    /// state machine at `index`, which it has applied. Followers waiting for
    /// a snapshot get it now.
    pub fn offer_snapshot(&mut self, index: Index, data: Arc<Vec<u8>>) {
        self.snapshot_wanted = false;
        if self.role != Role::Leader || index < self.log.snapshot.index || index > self.log.applied
        {
            return;
        }
        let Some(term) = self.log.term(index) else {
            return;
        };
        let meta = SnapshotMeta {
            index,
            term,
            membership: self.membership_at(index),
        };
        let crc = crc32fast::hash(&data);
        self.local_snapshot = Some(OutgoingSnapshot { meta, data, crc });
        let waiting: Vec<NodeId> = self
            .progress
            .iter()
            .filter(|(_, p)| {
                p.state == ProgressState::Probe && p.next_index <= self.log.snapshot.index
            })
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            self.progress.get_mut(&id).unwrap().probe_sent = false;
            self.send_append(id);
        }
    }

    // ----- receiving --------------------------------------------------------------

    /// Handles one message from another member of the group.
    pub fn step(&mut self, msg: Message) {
        self.step_checked(msg, &mut |_, _| SnapshotCheck::Install);
    }

    /// Like [`Raft::step`], with a last check of a received snapshot: once
    /// all its chunks arrived and its checksum verifies, `check` sees its
    /// data, and the snapshot is installed only if it says so (the driver
    /// decodes it there, so whatever the core installs can be applied), or
    /// later, if the driver decodes it elsewhere and then reports
    /// [`Raft::snapshot_checked`] (decoding a large partition takes long).
    pub fn step_checked(
        &mut self,
        msg: Message,
        check: &mut dyn FnMut(&SnapshotMeta, &Arc<Vec<u8>>) -> SnapshotCheck,
    ) {
        if msg.to != self.cfg.id {
            return;
        }
        if self.amnesiac {
            self.note_campaigner(&msg);
        }
        if msg.term > self.term {
            match &msg.body {
                MessageBody::PreVote { .. } => {} // hypothetical: changes nothing
                MessageBody::PreVoteResponse { granted: true } => {}
                MessageBody::Vote { transfer, .. } if self.in_lease() && !*transfer => {
                    // §6.2 / §9.6: we heard from a live leader recently, so
                    // this candidate is disruptive; ignore it.
                    return;
                }
                MessageBody::Append { .. }
                | MessageBody::Heartbeat { .. }
                | MessageBody::InstallSnapshot(_) => self.become_follower(msg.term, Some(msg.from)),
                _ => self.become_follower(msg.term, None),
            }
        } else if msg.term < self.term {
            match msg.body {
                MessageBody::Append { .. } | MessageBody::Heartbeat { .. } => {
                    // A stale leader: our answer's term makes it step down.
                    let hint = RejectHint {
                        rejected: 0,
                        hint_index: 0,
                        hint_term: 0,
                    };
                    self.send(msg.from, MessageBody::AppendResponse(Err(hint)), false);
                }
                MessageBody::PreVote { .. } => {
                    self.send(
                        msg.from,
                        MessageBody::PreVoteResponse { granted: false },
                        false,
                    );
                }
                _ => {}
            }
            return;
        }
        match msg.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => {
                // Grant if the sender could win: it would be in a later term,
                // its log is up to date, and we have no live leader.
                let granted = msg.term > self.term
                    && !self.in_lease()
                    && self.log.is_up_to_date(last_log_index, last_log_term)
                    && (!self.amnesiac
                        || self.amnesiac_may_grant(
                            msg.from,
                            msg.term,
                            last_log_index,
                            last_log_term,
                        ));
                let term = if granted { msg.term } else { self.term };
                self.messages.push(Message {
                    from: self.cfg.id,
                    to: msg.from,
                    term,
                    body: MessageBody::PreVoteResponse { granted },
                });
            }
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => {
                // §5.2, §5.4.1: one vote per term, only for an up-to-date log.
                let granted = self.vote.is_none_or(|v| v == msg.from)
                    && self.log.is_up_to_date(last_log_index, last_log_term)
                    && (!self.amnesiac
                        || self.amnesiac_may_grant(
                            msg.from,
                            msg.term,
                            last_log_index,
                            last_log_term,
                        ));
                if granted {
                    self.vote = Some(msg.from);
                    self.election_elapsed = 0;
                }
                self.send(msg.from, MessageBody::VoteResponse { granted }, true);
            }
            MessageBody::PreVoteResponse { granted } => {
                // A grant carries the term we would campaign in; anything
                // else is left over from an earlier round.
                if self.role == Role::PreCandidate && (!granted || msg.term == self.term + 1) {
                    self.votes.insert(msg.from, granted);
                    self.tally();
                }
            }
            MessageBody::VoteResponse { granted } => {
                if self.role == Role::Candidate {
                    self.votes.insert(msg.from, granted);
                    self.tally();
                }
            }
            MessageBody::Append {
                prev_log_index,
                prev_log_term,
                entries,
                commit,
            } => {
                self.follow(msg.from);
                self.handle_append(msg.from, prev_log_index, prev_log_term, entries, commit);
            }
            MessageBody::Heartbeat { commit, read_seq } => {
                self.follow(msg.from);
                if commit > self.log.last_index() {
                    // A heartbeat's commit index is at most our matchIndex,
                    // so the leader thinks we hold entries we do not: we
                    // restarted without durable state. Say where our log
                    // ends, or an idle leader would never repair it.
                    let hint = RejectHint {
                        rejected: commit,
                        hint_index: self.log.last_index(),
                        hint_term: self.log.last_term(),
                    };
                    self.send(msg.from, MessageBody::AppendResponse(Err(hint)), false);
                }
                if commit > self.log.commit {
                    self.log.commit = commit.min(self.log.last_index());
                }
                self.send(msg.from, MessageBody::HeartbeatResponse { read_seq }, false);
            }
            MessageBody::InstallSnapshot(chunk) => {
                self.follow(msg.from);
                self.handle_snapshot_chunk(msg.from, chunk, check);
            }
            MessageBody::SnapshotAck {
                index,
                received,
                rejected,
            } => self.handle_snapshot_ack(msg.from, index, received, rejected),
            MessageBody::AppendResponse(result) => self.handle_append_response(msg.from, result),
            MessageBody::HeartbeatResponse { read_seq } => {
                self.handle_heartbeat_response(msg.from, read_seq)
            }
            MessageBody::TimeoutNow => {
                if self.is_voter() && self.role != Role::Leader {
                    self.handed_over = true;
                    self.start_election(true);
                }
            }
        }
    }

    /// While amnesiac: remember what a campaigning peer said of its log
    /// and term (PreVote carries the term it would campaign in, one above
    /// its own).
    fn note_campaigner(&mut self, msg: &Message) {
        let (term, last_log_index, last_log_term) = match msg.body {
            MessageBody::PreVote {
                last_log_index,
                last_log_term,
            } => (msg.term.saturating_sub(1), last_log_index, last_log_term),
            MessageBody::Vote {
                last_log_index,
                last_log_term,
                ..
            } => (msg.term, last_log_index, last_log_term),
            _ => return,
        };
        self.heard.insert(
            msg.from,
            Heard {
                tick: self.ticks,
                term,
                last_log_index,
                last_log_term,
            },
        );
    }

    /// The amnesia guard's vote rule (`Config::amnesia_guard`), for a
    /// candidate `from` in `term` whose log ends at `last_log_index` (the
    /// up-to-date check of §5.4.1 applies as well). The argument is in
    /// ARCHITECTURE.md, "Replicas that lose their state".
    ///
    /// - An **empty** candidate: only after listening for
    ///   `amnesia_listen_ticks`, and only if no peer heard within that time
    ///   has a log. An empty candidate can win only with voters that are
    ///   all empty, so this only withholds votes (never unsafe); it keeps
    ///   two replicas that restarted empty from electing each other and
    ///   erasing the log of a survivor that is up and campaigning.
    /// - A candidate **with a log**: only if every other voter (all but us
    ///   and the candidate) was heard within `amnesia_listen_ticks`, in a
    ///   term below `term`, with a log the candidate's is at least as up
    ///   to date as (§5.4.1; an empty log always is). We vote on behalf of
    ///   the logs we heard of, in place of the one we lost: an entry
    ///   committed on a majority is in the candidate's log unless every
    ///   member of that majority but the candidate lost its state (which
    ///   may lose data anyway); and no other voter can have led, or be
    ///   leading, `term` with a vote we gave before we lost it.
    fn amnesiac_may_grant(
        &self,
        from: NodeId,
        term: Term,
        last_log_index: Index,
        last_log_term: Term,
    ) -> bool {
        let window = self.cfg.amnesia_listen_ticks as u64;
        let recent = |id: &NodeId| {
            self.heard
                .get(id)
                .filter(|h| self.ticks.saturating_sub(h.tick) < window)
        };
        if last_log_index == 0 {
            self.ticks >= window
                && !self
                    .heard
                    .keys()
                    .any(|id| recent(id).is_some_and(|h| h.last_log_index > 0))
        } else {
            let me = self.cfg.id;
            self.membership
                .voters
                .iter()
                .filter(|&&v| v != me && v != from)
                .all(|v| {
                    recent(v).is_some_and(|h| {
                        h.term < term
                            && (last_log_term, last_log_index)
                                >= (h.last_log_term, h.last_log_index)
                    })
                })
        }
    }

    /// Whether we heard from a live leader within the minimum election
    /// timeout (check-quorum makes that a lease on our vote).
    fn in_lease(&self) -> bool {
        self.cfg.check_quorum
            && self.leader.is_some()
            && self.election_elapsed < self.cfg.election_ticks
    }

    fn follow(&mut self, leader: NodeId) {
        if self.role != Role::Follower {
            let term = self.term;
            self.become_follower(term, Some(leader));
        }
        self.leader = Some(leader);
        self.election_elapsed = 0;
    }

    fn handle_append(
        &mut self,
        from: NodeId,
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    ) {
        if prev_log_index < self.log.commit {
            // Everything through our commit index matches the leader's log
            // (Log Matching); answer with it so the leader moves on. This
            // answer goes out at once, so it may only claim what is durable:
            // the commit index can be ahead of the durable log while the
            // append that carried it is being written, and a leader whose
            // matchIndex exceeds our log after a crash never repairs it.
            let matched = self.log.commit.min(self.log.persisted);
            self.send(from, MessageBody::AppendResponse(Ok(matched)), false);
            return;
        }
        if self.log.term(prev_log_index) != Some(prev_log_term) {
            // §5.3: reject, and say where our log could match.
            let hint_index = prev_log_index.min(self.log.last_index());
            let hint_index = self.find_conflict_by_term(hint_index, prev_log_term);
            let hint = RejectHint {
                rejected: prev_log_index,
                hint_index,
                hint_term: self.log.term(hint_index).unwrap_or(0),
            };
            self.send(from, MessageBody::AppendResponse(Err(hint)), false);
            return;
        }
        let last_new = prev_log_index + entries.len() as Index;
        let has_conf = entries
            .iter()
            .any(|e| matches!(e.data, EntryData::ConfChange(_)));
        if let Some(first) = self.log.merge(entries) {
            self.unpersisted_from = Some(self.unpersisted_from.map_or(first, |u| u.min(first)));
            // A change takes effect when appended and is undone if its entry
            // is truncated (§4.1): rebuild when either may have happened.
            if has_conf || first <= self.membership_index {
                self.recompute_membership();
            }
        }
        if commit > self.log.commit {
            self.log.commit = commit.min(last_new);
        }
        if self
            .assembly
            .as_ref()
            .is_some_and(|a| a.meta.index <= self.log.commit)
        {
            self.assembly = None; // the log got there first
        }
        if self.amnesiac && self.log.last_index() >= commit {
            // Caught up with a leader: everything committed is here now.
            self.amnesiac = false;
            self.heard.clear();
        }
        // The acknowledgement promises these entries are on our disk.
        self.send(from, MessageBody::AppendResponse(Ok(last_new)), true);
    }

    /// The largest index at or below `index` whose term is at most `term`:
    /// everything after it certainly conflicts with a log whose entry at
    /// `index` has `term` (fast backtracking, §5.3).
    fn find_conflict_by_term(&self, index: Index, term: Term) -> Index {
        let mut i = index;
        while i > self.log.snapshot.index {
            match self.log.term(i) {
                Some(t) if t > term => i -= 1,
                _ => break,
            }
        }
        i
    }

    /// InstallSnapshot (§7) in chunks: append a chunk that starts where the
    /// assembled bytes end, acknowledge every chunk with the bytes held (so
    /// a lost chunk is resent and a duplicate or stale one is ignored), and
    /// install once the whole snapshot is here and verifies.
    fn handle_snapshot_chunk(
        &mut self,
        from: NodeId,
        chunk: SnapshotChunk,
        check: &mut dyn FnMut(&SnapshotMeta, &Arc<Vec<u8>>) -> SnapshotCheck,
    ) {
        let index = chunk.meta.index;
        if index <= self.log.commit {
            // We have all of it already. Sent at once: claim only what is
            // durable (see handle_append).
            self.assembly = None;
            let matched = self.log.commit.min(self.log.persisted);
            self.send(from, MessageBody::AppendResponse(Ok(matched)), false);
            return;
        }
        let ack = |received: u64, rejected: bool| MessageBody::SnapshotAck {
            index,
            received,
            rejected,
        };
        if self
            .checking
            .as_ref()
            .is_some_and(|(_, s, crc, _)| s.meta == chunk.meta && *crc == chunk.crc)
        {
            // The driver is checking this one: it is all here.
            self.send(from, ack(chunk.len, false), false);
            return;
        }
        let same = self
            .assembly
            .as_ref()
            .is_some_and(|a| a.meta == chunk.meta && a.len == chunk.len && a.crc == chunk.crc);
        if !same {
            if chunk.offset != 0 {
                // A chunk of a transfer we do not hold (we restarted, or a
                // newer one began): ask for the start.
                self.send(from, ack(0, true), false);
                return;
            }
            self.assembly = Some(SnapshotAssembly {
                meta: chunk.meta.clone(),
                len: chunk.len,
                crc: chunk.crc,
                data: Vec::new(),
                commit: 0,
            });
        }
        let a = self.assembly.as_mut().unwrap();
        let received = a.data.len() as u64;
        if chunk.offset != received {
            // A duplicate (behind) or a chunk after a lost one (ahead).
            let rejected = chunk.offset > received;
            self.send(from, ack(received, rejected), false);
            return;
        }
        let end = received.saturating_add(chunk.data.len() as u64);
        if end > a.len || chunk.done != (end == a.len) {
            tracing::warn!(from, index, "dropping a malformed snapshot chunk");
            self.assembly = None;
            self.send(from, ack(0, true), false);
            return;
        }
        a.data.extend_from_slice(&chunk.data);
        a.commit = a.commit.max(chunk.commit);
        if !chunk.done {
            self.send(from, ack(end, false), false);
            return;
        }
        let a = self.assembly.take().unwrap();
        let data = Arc::new(a.data);
        let verdict = if crc32fast::hash(&data) != a.crc {
            SnapshotCheck::Reject
        } else {
            check(&a.meta, &data)
        };
        if verdict == SnapshotCheck::Reject {
            tracing::warn!(
                from,
                index,
                "received snapshot does not verify; asking again"
            );
            self.send(from, ack(0, true), false);
            return;
        }
        // Everything arrived: say so at once (the install's own answer waits
        // until it is durable), so the leader does not resend meanwhile.
        self.send(from, ack(end, false), false);
        let snapshot = Snapshot { meta: a.meta, data };
        match verdict {
            SnapshotCheck::Later => self.checking = Some((from, snapshot, a.crc, a.commit)),
            _ => self.install_snapshot(from, snapshot, a.commit),
        }
    }

    /// The driver's verdict on the snapshot at `index` it was checking
    /// ([`SnapshotCheck::Later`]): install it if it decodes and the log has
    /// not got there first meanwhile, else ask the leader again.
    pub fn snapshot_checked(&mut self, index: Index, decodes: bool) {
        let Some((from, snapshot, _, commit)) =
            self.checking.take_if(|(_, s, _, _)| s.meta.index == index)
        else {
            return;
        };
        if index <= self.log.commit || self.role != Role::Follower {
            return; // the log got there first, or we campaign or lead now
        }
        if !decodes {
            tracing::warn!(
                from,
                index,
                "received snapshot does not decode; asking again"
            );
            let body = MessageBody::SnapshotAck {
                index,
                received: 0,
                rejected: true,
            };
            self.send(from, body, false);
            return;
        }
        self.install_snapshot(from, snapshot, commit);
    }

    /// Installs a snapshot from leader `from`, whose commit index was
    /// `commit` when it sent it.
    fn install_snapshot(&mut self, from: NodeId, snapshot: Snapshot, commit: Index) {
        let meta = snapshot.meta.clone();
        if self.amnesiac && meta.index >= commit {
            // Caught up with a leader, as by an append (see handle_append);
            // an idle group may send no append after the snapshot.
            self.amnesiac = false;
            self.heard.clear();
        }
        self.log.restore(meta.clone());
        self.unpersisted_from = None;
        self.apply_handed = self.apply_handed.max(meta.index);
        self.recompute_membership();
        // As leader, this node sends a snapshot of its state machine, which
        // now starts as this one (taken on request, like any other).
        self.installed_index = meta.index;
        self.received_snapshot = Some(snapshot);
        self.send(from, MessageBody::AppendResponse(Ok(meta.index)), true);
    }

    /// Flow control of a snapshot transfer: the follower holds `received`
    /// bytes of the snapshot at `index`.
    fn handle_snapshot_ack(&mut self, from: NodeId, index: Index, received: u64, rejected: bool) {
        if self.role != Role::Leader {
            return;
        }
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.active = true;
        let Some(s) = pr.snapshot.as_mut() else {
            return;
        };
        if s.snapshot.meta.index != index {
            return; // about another transfer
        }
        let len = s.snapshot.data.len() as u64;
        let received = received.min(len);
        if received > s.acked {
            s.acked = received;
            s.probing = false;
            s.rewound_to = None;
            pr.snapshot_ticks = 0;
        }
        if rejected && s.rewound_to != Some(received) {
            // The follower wants the chunk at `received`: everything sent
            // after it is lost or ignored.
            s.acked = received;
            s.sent = received;
            s.done_sent = false;
            s.rewound_to = Some(received);
        } else if received > s.sent {
            // It already held more (a resumed transfer): skip ahead.
            s.sent = received;
        }
        self.send_snapshot_chunks(from);
    }

    fn handle_append_response(&mut self, from: NodeId, result: Result<Index, RejectHint>) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        let Some(pr) = self.progress.get_mut(&from) else {
            return;
        };
        pr.active = true;
        match result {
            Ok(matched) => {
                if matched > pr.match_index {
                    pr.match_index = matched;
                }
                pr.next_index = pr.next_index.max(matched + 1);
                while pr.inflight.front().is_some_and(|&i| i <= matched) {
                    pr.inflight.pop_front();
                }
                match pr.state {
                    ProgressState::Probe => {
                        pr.state = ProgressState::Replicate;
                        pr.probe_sent = false;
                        pr.inflight.clear();
                        pr.next_index = pr.match_index + 1;
                    }
                    ProgressState::Snapshot { index } if pr.match_index >= index => {
                        pr.become_probe();
                    }
                    _ => {}
                }
                let caught_up = pr.match_index == last;
                if self.maybe_commit() {
                    self.broadcast_commit();
                }
                if self.transferee == Some(from) && caught_up {
                    self.send(from, MessageBody::TimeoutNow, false);
                }
                self.send_commit(from);
                self.send_append(from);
            }
            Err(hint) => {
                if hint.rejected == 0 && hint.hint_index == 0 {
                    return; // our answer to a stale leader; nothing to do
                }
                // Members that can lose their state (`amnesia_guard`) can
                // lose their log: a follower whose log ends below its matchIndex
                // is repaired even if the answer could be a stale one (then
                // the cost is only a resend).
                let lost_log = self.cfg.amnesia_guard && hint.hint_index < pr.match_index;
                match pr.state {
                    _ if lost_log => {}
                    ProgressState::Replicate if hint.rejected <= pr.match_index => return, // stale
                    ProgressState::Probe if hint.rejected != pr.next_index - 1 => return,  // stale
                    _ => {}
                }
                if hint.rejected <= pr.match_index {
                    // The follower lacks an entry it acknowledged: it
                    // restarted without durable state (`amnesia_guard`), or
                    // this is a duplicate of an old probe's answer. Probing
                    // from below is safe either way (matchIndex only feeds
                    // the commit index, which never moves back), and without
                    // it an emptied follower would never be repaired.
                    pr.match_index = hint.hint_index.min(hint.rejected.saturating_sub(1));
                }
                let next = {
                    // Skip the follower's whole conflicting term at once.
                    let i = self.find_conflict_by_term(hint.hint_index, hint.hint_term);
                    (i + 1).max(pr_match(&self.progress, from) + 1)
                };
                let pr = self.progress.get_mut(&from).unwrap();
                pr.become_probe();
                pr.next_index = next.min(hint.rejected).max(pr.match_index + 1);
                self.send_append(from);
            }
        }
    }

    fn handle_heartbeat_response(&mut self, from: NodeId, read_seq: u64) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.log.last_index();
        if let Some(pr) = self.progress.get_mut(&from) {
            pr.active = true;
            pr.probe_sent = false;
            if let Some(s) = pr.snapshot.as_mut().filter(|s| s.probing) {
                // A follower whose transfer stalled is reachable again:
                // resume from what it acknowledged, without waiting for the
                // next timeout.
                s.sent = s.acked;
                s.done_sent = false;
                self.send_snapshot_chunks(from);
            } else if pr.match_index < last {
                if pr.state == ProgressState::Replicate && pr.match_index == pr.match_at_heartbeat {
                    // Nothing acknowledged for a whole heartbeat round while
                    // entries were out: they were lost. Probe and resend.
                    pr.become_probe();
                }
                pr.match_at_heartbeat = pr.match_index;
                self.send_append(from);
            }
        }
        if read_seq == 0 || !self.counts_toward_quorum(from) {
            return;
        }
        for read in self.pending_reads.iter_mut() {
            if read.seq <= read_seq {
                read.acks.insert(from);
            }
        }
        let quorum = self.membership.quorum();
        // Release in order: a later read confirmed implies earlier ones are.
        let confirmed = self.pending_reads.iter().rposition(|r| {
            r.acks
                .iter()
                .filter(|a| self.counts_toward_quorum(**a))
                .count()
                >= quorum
        });
        if let Some(last_confirmed) = confirmed {
            for read in self.pending_reads.drain(..=last_confirmed) {
                self.read_states.push(ReadState {
                    ctx: read.ctx,
                    index: read.index,
                });
            }
        }
    }

    /// The Figure 8 rule: advance commit to the highest index stored on a
    /// majority **whose entry is from the current term** (§5.4.2).
    fn maybe_commit(&mut self) -> bool {
        let me = self.cfg.id;
        let mut matched: Vec<Index> = self
            .membership
            .members()
            .filter(|id| self.counts_toward_quorum(*id))
            .map(|id| {
                if id == me {
                    self.log.persisted
                } else {
                    self.progress.get(&id).map_or(0, |p| p.match_index)
                }
            })
            .collect();
        if matched.is_empty() {
            return false;
        }
        matched.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = matched[self.membership.quorum() - 1];
        #[cfg(feature = "sim")]
        let candidate = if crate::bugs::enabled(crate::bugs::Bug::CommitWithoutQuorum) {
            matched[0]
        } else {
            candidate
        };
        if candidate > self.log.commit && self.log.term(candidate) == Some(self.term) {
            self.log.commit = candidate;
            self.on_commit_advanced();
            return true;
        }
        false
    }

    fn on_commit_advanced(&mut self) {
        if self.log.term(self.log.commit) == Some(self.term) {
            for ctx in std::mem::take(&mut self.reads_waiting_for_commit) {
                self.start_read(ctx);
            }
        }
        // A leader removed from the group steps down once that is committed.
        if self.role == Role::Leader && !self.is_voter() && self.membership_index <= self.log.commit
        {
            let term = self.term;
            self.become_follower(term, None);
        }
    }

    // ----- persistence and application -----------------------------------------------

    /// Whether [`Raft::ready`] has anything.
    pub fn has_ready(&self) -> bool {
        self.append_due
            || self.heartbeat_due
            || self.hard_state() != self.persisted_hard_state
            || self.unpersisted_from.is_some()
            || self.received_snapshot.is_some()
            || self.snapshot_wanted
            || !self.messages.is_empty()
            || !self.persisted_messages.is_empty()
            || !self.read_states.is_empty()
            || !self.aborted_reads.is_empty()
            || self.apply_handed < self.log.commit.min(self.log.persisted)
    }

    /// Takes everything the driver must do now. See the module docs. If it
    /// has a `snapshot`, install it before applying `committed_entries`.
    pub fn ready(&mut self) -> Ready {
        self.send_deferred();
        let hard_state = self.hard_state();
        let entries = match self.unpersisted_from.take() {
            Some(from) => self.log.slice(from, self.log.last_index(), usize::MAX),
            None => Vec::new(),
        };
        let apply_to = self.log.commit.min(self.log.persisted);
        let committed_entries = if apply_to > self.apply_handed {
            let from = self.apply_handed + 1;
            self.apply_handed = apply_to;
            self.log.slice(from, apply_to, usize::MAX)
        } else {
            Vec::new()
        };
        Ready {
            hard_state: (hard_state != self.persisted_hard_state).then(|| {
                self.persisted_hard_state = hard_state;
                hard_state
            }),
            snapshot: self.received_snapshot.take(),
            entries,
            messages: std::mem::take(&mut self.messages),
            persisted_messages: std::mem::take(&mut self.persisted_messages),
            committed_entries,
            read_states: std::mem::take(&mut self.read_states),
            aborted_reads: std::mem::take(&mut self.aborted_reads),
            snapshot_request: std::mem::take(&mut self.snapshot_wanted),
        }
    }

    /// The driver made the log durable through `index` (whose entry has
    /// `term`). A later overwrite of that index makes the call a no-op.
    pub fn on_persisted(&mut self, index: Index, term: Term) {
        if index > self.log.persisted && self.log.term(index) == Some(term) {
            self.log.persisted = index;
            if self.role == Role::Leader && self.maybe_commit() {
                self.broadcast_commit();
            }
        }
    }

    /// The driver applied every committed entry through `index`.
    pub fn on_applied(&mut self, index: Index) {
        assert!(index <= self.log.commit, "applied past the commit index");
        self.log.applied = self.log.applied.max(index);
    }

    /// Drops the log through `index` (applied): the state machine holds its
    /// effect. Costs nothing beyond freeing the entries: a follower that
    /// needs them later gets a snapshot, which the driver takes on request
    /// ([`Ready::snapshot_request`]).
    pub fn compact(&mut self, index: Index) {
        if index <= self.log.snapshot.index {
            return;
        }
        let Some(term) = self.log.term(index) else {
            return;
        };
        let membership = self.membership_at(index);
        let meta = SnapshotMeta {
            index,
            term,
            membership,
        };
        self.log.compact(meta);
        crate::stats::count(crate::stats::Event::Compaction);
    }

    /// The membership in effect right after `index` (at or after the
    /// snapshot): the snapshot's (or the initial one) plus the changes in
    /// the log up to `index`.
    pub fn membership_at(&self, index: Index) -> Membership {
        let mut m = if self.log.snapshot.index > 0 {
            self.log.snapshot.membership.clone()
        } else {
            self.initial_membership.clone()
        };
        for i in self.log.first_index()..=index {
            if let Some(Entry {
                data: EntryData::ConfChange(change),
                ..
            }) = self.log.entry(i)
            {
                m.apply(change);
            }
        }
        m
    }
}

fn pr_match(progress: &BTreeMap<NodeId, Progress>, id: NodeId) -> Index {
    progress.get(&id).map_or(0, |p| p.match_index)
}
