//! Tests that read like the Raft paper: each states a property, cites the
//! section, and drives the core directly through an in-memory network.
//!
//! "§" refers to the extended Raft paper (Ongaro & Ousterhout, 2014);
//! "dissertation §" to Ongaro's PhD dissertation (2014).

use super::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// What a node has on disk.
#[derive(Clone, Default)]
struct Disk {
    hard_state: HardState,
    snapshot: SnapshotMeta,
    /// The state machine at `snapshot.index` (an installed snapshot's).
    state: Vec<(Index, Vec<u8>)>,
    entries: Vec<Entry>,
}

/// The test state machine's snapshot: every applied entry's data.
fn encode_state(applied: &[(Index, Vec<u8>)]) -> Vec<u8> {
    bincode::serialize(applied).unwrap()
}

struct Node {
    raft: Raft,
    disk: Disk,
    /// Data of every applied Normal entry, in order.
    applied: Vec<(Index, Vec<u8>)>,
    read_states: Vec<ReadState>,
    aborted_reads: Vec<u64>,
}

/// An in-memory cluster with a lossy, partitionable network.
struct Cluster {
    nodes: BTreeMap<NodeId, Node>,
    queue: VecDeque<Message>,
    /// Links (from, to) that drop everything.
    cut: BTreeSet<(NodeId, NodeId)>,
    initial: Membership,
    config: fn(NodeId) -> Config,
    /// Leaders seen, per term (election safety).
    leaders: BTreeMap<Term, BTreeSet<NodeId>>,
    /// Every (index, term) a node ever applied (state machine safety).
    applied_terms: BTreeMap<Index, Term>,
    delivered: usize,
    /// Snapshots the leaders' drivers took on request, and installed ones.
    snapshots_taken: usize,
    snapshots_installed: usize,
}

fn default_config(id: NodeId) -> Config {
    Config::new(id)
}

impl Cluster {
    fn new(n: u64) -> Cluster {
        Cluster::with_config(n, default_config)
    }

    fn with_config(n: u64, config: fn(NodeId) -> Config) -> Cluster {
        let initial = Membership::new(1..=n);
        let mut c = Cluster {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            initial: initial.clone(),
            config,
            leaders: BTreeMap::new(),
            applied_terms: BTreeMap::new(),
            delivered: 0,
            snapshots_taken: 0,
            snapshots_installed: 0,
        };
        for id in 1..=n {
            c.start(id, Disk::default());
        }
        c
    }

    fn start(&mut self, id: NodeId, disk: Disk) {
        let state = RaftState {
            hard_state: disk.hard_state,
            snapshot: disk.snapshot.clone(),
            entries: disk.entries.clone(),
            initial_membership: self.initial.clone(),
        };
        let raft = Raft::new((self.config)(id), state, id * 7919);
        let applied = disk.state.clone();
        self.nodes.insert(
            id,
            Node {
                raft,
                disk,
                applied,
                read_states: Vec::new(),
                aborted_reads: Vec::new(),
            },
        );
    }

    /// Crash and restart from what is on disk.
    fn restart(&mut self, id: NodeId) {
        // Messages already in flight to or from it stay in flight: a
        // restarted node must cope with its previous life's traffic.
        let disk = self.nodes[&id].disk.clone();
        self.start(id, disk);
    }

    fn raft(&self, id: NodeId) -> &Raft {
        &self.nodes[&id].raft
    }

    fn raft_mut(&mut self, id: NodeId) -> &mut Raft {
        &mut self.nodes.get_mut(&id).unwrap().raft
    }

    fn isolate(&mut self, id: NodeId) {
        for &other in self.nodes.keys() {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    /// Runs one node's Ready the way a driver must: persist, then send.
    fn handle_ready(&mut self, id: NodeId) {
        let node = self.nodes.get_mut(&id).unwrap();
        if !node.raft.has_ready() {
            return;
        }
        let ready = node.raft.ready();
        if let Some(hs) = ready.hard_state {
            node.disk.hard_state = hs;
        }
        if let Some(snapshot) = &ready.snapshot {
            let state: Vec<(Index, Vec<u8>)> =
                bincode::deserialize(&snapshot.data).expect("snapshots verify before install");
            node.disk.snapshot = snapshot.meta.clone();
            node.disk.state = state.clone();
            node.disk.entries.retain(|e| e.index > snapshot.meta.index);
            node.applied = state;
            self.snapshots_installed += 1;
        }
        if let Some(first) = ready.entries.first() {
            node.disk.entries.retain(|e| e.index < first.index);
            node.disk.entries.extend(ready.entries.iter().cloned());
        }
        self.queue.extend(ready.messages);
        // Durable now: the messages that depended on it may go.
        self.queue.extend(ready.persisted_messages);
        if let Some(last) = ready.entries.last() {
            node.raft.on_persisted(last.index, last.term);
        }
        for entry in ready.committed_entries {
            if let Some(&t) = self.applied_terms.get(&entry.index) {
                assert_eq!(
                    t, entry.term,
                    "§5.4.3 State Machine Safety: index {} applied with two terms",
                    entry.index
                );
            }
            self.applied_terms.insert(entry.index, entry.term);
            if let EntryData::Normal(data) = entry.data {
                node.applied.push((entry.index, data));
            }
            node.raft.on_applied(entry.index);
        }
        node.read_states.extend(ready.read_states);
        node.aborted_reads.extend(ready.aborted_reads);
        if ready.snapshot_request {
            let index = node.raft.log().applied;
            let data = encode_state(&node.applied);
            node.raft.offer_snapshot(index, std::sync::Arc::new(data));
            self.snapshots_taken += 1;
        }
        if node.raft.role() == Role::Leader {
            let term = node.raft.term();
            self.leaders.entry(term).or_default().insert(id);
            assert_eq!(
                self.leaders[&term].len(),
                1,
                "§5.2 Election Safety: two leaders in term {term}"
            );
        }
    }

    /// Delivers messages until nothing moves.
    fn settle(&mut self) {
        for _ in 0..100_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.handle_ready(id);
            }
            let Some(msg) = self.queue.pop_front() else {
                if self.nodes.values().any(|n| n.raft.has_ready()) {
                    continue; // e.g. on_persisted advanced the commit index
                }
                return;
            };
            if self.cut.contains(&(msg.from, msg.to)) || !self.nodes.contains_key(&msg.to) {
                continue;
            }
            self.delivered += 1;
            self.raft_mut(msg.to).step(msg);
        }
        panic!("the cluster did not settle");
    }

    fn tick_all(&mut self, ticks: u32) {
        for _ in 0..ticks {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                self.raft_mut(id).tick();
            }
            self.settle();
        }
    }

    fn elect(&mut self, id: NodeId) {
        self.raft_mut(id).campaign();
        self.settle();
        assert_eq!(
            self.raft(id).role(),
            Role::Leader,
            "node {id} should have won"
        );
    }

    fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.raft.role() == Role::Leader)
            .map(|(id, _)| *id)
            .collect();
        leaders
            .iter()
            .copied()
            .max_by_key(|id| self.raft(*id).term())
    }

    fn propose(&mut self, id: NodeId, data: &str) -> Index {
        let index = self.raft_mut(id).propose(data.as_bytes().to_vec()).unwrap();
        self.settle();
        index
    }

    fn applied(&self, id: NodeId) -> Vec<String> {
        self.nodes[&id]
            .applied
            .iter()
            .map(|(_, d)| String::from_utf8_lossy(d).into_owned())
            .collect()
    }

    /// §5.3 Log Matching: if two logs have an entry with the same index and
    /// term, they are identical up to it.
    fn check_log_matching(&self) {
        let logs: Vec<&RaftLog> = self.nodes.values().map(|n| n.raft.log()).collect();
        for a in &logs {
            for b in &logs {
                let hi = a.last_index().min(b.last_index());
                let lo = a.first_index().max(b.first_index());
                for i in (lo..=hi).rev() {
                    if a.term(i) == b.term(i) {
                        for j in lo..=i {
                            assert_eq!(a.entry(j), b.entry(j), "§5.3 Log Matching violated at {j}");
                        }
                        break;
                    }
                }
            }
        }
    }
}

/// Message kinds in the queue, for exact-transcript assertions.
fn kinds(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .map(|m| {
            let kind = match &m.body {
                MessageBody::PreVote { .. } => "PreVote",
                MessageBody::PreVoteResponse { .. } => "PreVoteResponse",
                MessageBody::Vote { .. } => "Vote",
                MessageBody::VoteResponse { .. } => "VoteResponse",
                MessageBody::Append { .. } => "Append",
                MessageBody::AppendResponse(_) => "AppendResponse",
                MessageBody::Heartbeat { .. } => "Heartbeat",
                MessageBody::HeartbeatResponse { .. } => "HeartbeatResponse",
                MessageBody::InstallSnapshot(_) => "InstallSnapshot",
                MessageBody::SnapshotAck { .. } => "SnapshotAck",
                MessageBody::TimeoutNow => "TimeoutNow",
            };
            format!("{}->{} {kind} t{}", m.from, m.to, m.term)
        })
        .collect()
}

#[test]
fn a_follower_that_hears_no_leader_campaigns_with_prevote_first() {
    // §5.2: "If a follower receives no communication over a period of time
    // called the election timeout, then it ... begins an election."
    // Dissertation §9.6: with pre-vote it first asks whether it could win,
    // without raising its term.
    let mut r = Raft::new(
        Config::new(1),
        RaftState {
            initial_membership: Membership::new([1, 2, 3]),
            ..Default::default()
        },
        1,
    );
    for _ in 0..20 {
        r.tick();
    }
    assert_eq!(r.role(), Role::PreCandidate);
    assert_eq!(r.term(), 0, "pre-vote does not change the term");
    let ready = r.ready();
    assert_eq!(
        kinds(&ready.messages),
        vec!["1->2 PreVote t1", "1->3 PreVote t1"]
    );
    assert!(ready.persisted_messages.is_empty());
}

#[test]
fn a_candidate_persists_its_vote_before_asking_for_votes() {
    // Figure 2: currentTerm and votedFor are persistent state, updated on
    // stable storage before responding to RPCs. Our own vote is durable
    // before we ask anyone else for theirs.
    let mut cfg = Config::new(1);
    cfg.pre_vote = false;
    let mut r = Raft::new(
        cfg,
        RaftState {
            initial_membership: Membership::new([1, 2, 3]),
            ..Default::default()
        },
        1,
    );
    r.campaign();
    let ready = r.ready();
    assert_eq!(
        ready.hard_state,
        Some(HardState {
            term: 1,
            vote: Some(1),
            commit: 0
        })
    );
    assert!(
        ready.messages.is_empty(),
        "vote requests must wait for the persisted vote"
    );
    assert_eq!(
        kinds(&ready.persisted_messages),
        vec!["1->2 Vote t1", "1->3 Vote t1"]
    );
}

#[test]
fn election_safety_at_most_one_leader_per_term_under_partitions() {
    // §5.2 Election Safety: at most one leader can be elected in a given term.
    // The Cluster asserts it after every step; here we shake it with
    // changing partitions.
    let mut c = Cluster::new(5);
    for round in 0..40u64 {
        c.heal();
        // A pseudo-random minority or majority split per round.
        let cut = 1 + (round * 7 % 5);
        for a in 1..=5 {
            for b in 1..=5 {
                if (a <= cut) != (b <= cut) && round % 3 != 0 {
                    c.cut.insert((a, b));
                }
            }
        }
        c.tick_all(25);
    }
    assert!(!c.leaders.is_empty());
    c.check_log_matching();
}

#[test]
fn a_leader_replicates_and_commits_on_a_majority() {
    // §5.3: "Once the leader has created a log entry ... replicated it on a
    // majority of the servers ... the entry is committed" and applied.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "x=1");
    c.propose(1, "x=2");
    for id in 1..=3 {
        assert_eq!(c.applied(id), vec!["x=1", "x=2"], "node {id}");
    }
    // With one follower gone, a majority (2 of 3) still commits.
    c.isolate(3);
    c.propose(1, "x=3");
    assert_eq!(c.applied(2), vec!["x=1", "x=2", "x=3"]);
    assert_eq!(c.applied(3), vec!["x=1", "x=2"]);
    // With both gone, nothing commits.
    c.isolate(2);
    c.propose(1, "x=4");
    assert_eq!(
        c.applied(1),
        vec!["x=1", "x=2", "x=3"],
        "no majority: not committed"
    );
    c.heal();
    // Lost appends are noticed when a heartbeat round passes without
    // progress: within two heartbeat intervals.
    c.tick_all(2 * Config::new(1).heartbeat_ticks + 1);
    for id in 1..=3 {
        assert_eq!(
            c.applied(id),
            vec!["x=1", "x=2", "x=3", "x=4"],
            "node {id} after heal"
        );
    }
    c.check_log_matching();
}

#[test]
fn a_vote_goes_only_to_a_log_at_least_as_up_to_date() {
    // §5.4.1: "the voter denies its vote if its own log is more up-to-date
    // than that of the candidate."
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    c.propose(1, "a");
    c.heal();
    c.isolate(1);
    // Node 3 missed "a": it cannot win; node 2 can.
    c.raft_mut(3).campaign();
    c.settle();
    assert_ne!(c.raft(3).role(), Role::Leader);
    c.tick_all(40);
    assert_eq!(
        c.leader(),
        Some(2),
        "only the up-to-date node can be elected"
    );
}

#[test]
fn a_restarted_node_does_not_vote_twice_in_a_term() {
    // Figure 2 / §5.2: votedFor is persistent, so a server that crashes and
    // restarts cannot grant a second vote in the same term.
    let mut cfg = Config::new(1);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let state = RaftState {
        initial_membership: Membership::new([1, 2, 3]),
        ..Default::default()
    };
    let mut voter = Raft::new(cfg.clone(), state.clone(), 1);
    let ask = |from: NodeId| Message {
        from,
        to: 1,
        term: 5,
        body: MessageBody::Vote {
            last_log_index: 0,
            last_log_term: 0,
            transfer: false,
        },
    };
    voter.step(ask(2));
    let ready = voter.ready();
    let hs = ready.hard_state.unwrap();
    assert_eq!(
        hs,
        HardState {
            term: 5,
            vote: Some(2),
            commit: 0
        }
    );
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: true }
    ));
    // Crash, restart from the persisted hard state, and be asked by 3.
    let mut restarted = Raft::new(
        cfg,
        RaftState {
            hard_state: hs,
            ..state
        },
        2,
    );
    restarted.step(ask(3));
    let ready = restarted.ready();
    assert!(matches!(
        ready.persisted_messages[0].body,
        MessageBody::VoteResponse { granted: false }
    ));
}

#[test]
fn figure_8_a_leader_does_not_commit_old_terms_by_counting_replicas() {
    // §5.4.2, Figure 8: an entry from an earlier term stored on a majority
    // can still be overwritten, so a leader only commits entries of its own
    // term by counting; older ones commit indirectly.
    //
    // Node 1 leads term 2 with entry (2, t2) on nodes 1 and 2... then node 5
    // leads term 3 with (2, t3) only on itself. Node 1 comes back as leader
    // of term 4 and gets (2, t2) onto node 3: a majority (1, 2, 3) holds it,
    // but it must NOT count as committed until an entry of term 4 is.
    let e = |index, term| Entry {
        term,
        index,
        data: EntryData::Normal(format!("t{term}").into_bytes()),
    };
    let entry1 = e(1, 1);
    let mut cfg = Config::new(1);
    cfg.pre_vote = false;
    cfg.check_quorum = false;
    let members = Membership::new([1, 2, 3, 4, 5]);
    let state = RaftState {
        hard_state: HardState {
            term: 3,
            vote: Some(1),
            commit: 1,
        },
        entries: vec![entry1.clone(), e(2, 2)],
        initial_membership: members.clone(),
        ..Default::default()
    };
    let mut leader = Raft::new(cfg, state, 1);
    leader.campaign(); // term 4
    let _ = leader.ready();
    for voter in [2, 3] {
        leader.step(Message {
            from: voter,
            to: 1,
            term: 4,
            body: MessageBody::VoteResponse { granted: true },
        });
    }
    assert_eq!(leader.role(), Role::Leader);
    assert_eq!(
        leader.log().last_index(),
        3,
        "the term-4 no-op is appended at 3"
    );
    // Nodes 2 and 3 now store index 2 (term 2), but not yet the no-op.
    for follower in [2, 3] {
        leader.step(Message {
            from: follower,
            to: 1,
            term: 4,
            body: MessageBody::AppendResponse(Ok(2)),
        });
    }
    leader.on_persisted(3, 4);
    assert_eq!(
        leader.commit(),
        1,
        "index 2 (term 2) is on a majority but must not be committed by counting"
    );
    // Once the term-4 entry is on a majority (1, 2, 3), both commit.
    leader.step(Message {
        from: 2,
        to: 1,
        term: 4,
        body: MessageBody::AppendResponse(Ok(3)),
    });
    assert_eq!(leader.commit(), 1, "2 of 5 is not a majority");
    leader.step(Message {
        from: 3,
        to: 1,
        term: 4,
        body: MessageBody::AppendResponse(Ok(3)),
    });
    assert_eq!(leader.commit(), 3);
}

#[test]
fn a_follower_with_a_conflicting_suffix_is_repaired_by_the_leader() {
    // §5.3: "the leader handles inconsistencies by forcing the followers'
    // logs to duplicate its own"; Log Matching holds afterwards.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    // Node 1 appends entries only it has, then loses leadership.
    c.isolate(1);
    for i in 0..5 {
        c.raft_mut(1)
            .propose(format!("lost{i}").into_bytes())
            .unwrap();
    }
    c.settle();
    c.tick_all(40);
    let leader = c.leader().unwrap();
    assert_ne!(leader, 1);
    c.propose(leader, "b");
    c.heal();
    c.tick_all(10);
    for id in 1..=3 {
        assert_eq!(
            c.applied(id),
            vec!["a", "b"],
            "node {id}: uncommitted entries of the old leader are gone"
        );
    }
    c.check_log_matching();
}

#[test]
fn fast_backtracking_skips_a_conflicting_term_in_one_round_trip() {
    // §5.3 (optimization): the follower reports the conflicting term so the
    // leader can skip all its entries at once instead of one per round trip.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.isolate(1);
    for i in 0..50 {
        c.raft_mut(1)
            .propose(format!("lost{i}").into_bytes())
            .unwrap();
    }
    c.settle();
    c.tick_all(40);
    let leader = c.leader().unwrap();
    c.propose(leader, "b");
    c.heal();
    let before = c.delivered;
    c.tick_all(3);
    let rejects = c.delivered - before;
    assert!(
        rejects < 30,
        "{rejects} messages to repair 50 conflicting entries"
    );
    assert_eq!(c.applied(1), vec!["a", "b"]);
}

#[test]
fn prevote_keeps_a_partitioned_node_from_disrupting_the_cluster() {
    // Dissertation §9.6: a server rejoining after a partition must not
    // force the leader to step down by arriving with a higher term.
    let mut c = Cluster::new(3);
    c.elect(1);
    let term = c.raft(1).term();
    c.isolate(3);
    c.tick_all(100);
    assert_eq!(
        c.raft(3).term(),
        term,
        "pre-vote: no term inflation while partitioned"
    );
    c.heal();
    c.tick_all(10);
    assert_eq!(c.leader(), Some(1));
    assert_eq!(c.raft(1).term(), term, "the leader was not disrupted");
}

#[test]
fn check_quorum_makes_an_isolated_leader_step_down() {
    // Dissertation §6.2: "a leader steps down if an election timeout elapses
    // without a successful round of heartbeats to a majority."
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.tick_all(25);
    assert_ne!(c.raft(1).role(), Role::Leader);
    assert!(
        c.leader().is_some_and(|l| l != 1),
        "the majority elected a new leader"
    );
}

#[test]
fn a_partitioned_leader_accepts_writes_it_can_never_commit() {
    // §5.3/§5.4: entries on a minority are never committed; after the
    // partition heals they are replaced.
    let mut c = Cluster::new(5);
    c.elect(1);
    c.cut.extend([
        (1, 3),
        (3, 1),
        (1, 4),
        (4, 1),
        (1, 5),
        (5, 1),
        (2, 3),
        (3, 2),
        (2, 4),
        (4, 2),
        (2, 5),
        (5, 2),
    ]);
    let index = c.raft_mut(1).propose(b"minority".to_vec()).unwrap();
    c.settle();
    assert!(c.raft(1).commit() < index, "2 of 5 is not a majority");
    c.tick_all(40);
    let new_leader = c.leader().unwrap();
    assert!([3, 4, 5].contains(&new_leader));
    c.propose(new_leader, "majority");
    c.heal();
    c.tick_all(10);
    for id in 1..=5 {
        assert_eq!(c.applied(id), vec!["majority"], "node {id}");
    }
}

#[test]
fn read_index_completes_only_after_a_quorum_confirms_leadership() {
    // §6.4: the leader records its commit index, then confirms with a round
    // of heartbeats to a majority that it is still the leader.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.isolate(1);
    c.raft_mut(1).read_index(7).unwrap();
    c.settle();
    assert!(
        c.nodes[&1].read_states.is_empty(),
        "no quorum: the read must not complete"
    );
    c.heal();
    c.tick_all(2);
    assert_eq!(
        c.nodes[&1].read_states,
        vec![ReadState {
            ctx: 7,
            index: c.raft(1).commit()
        }]
    );
}

#[test]
fn proposals_and_reads_between_readies_go_out_together() {
    // Batching (not in the paper): everything proposed since the last Ready
    // leaves in one append per follower, and every read registered since
    // then is confirmed by one heartbeat round sent after it arrived.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "first");
    for data in ["a", "b", "c"] {
        c.raft_mut(1).propose(data.as_bytes().to_vec()).unwrap();
    }
    c.raft_mut(1).read_index(1).unwrap();
    c.raft_mut(1).read_index(2).unwrap();
    let ready = c.raft_mut(1).ready();
    let appends: Vec<(NodeId, usize)> = ready
        .messages
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::Append { entries, .. } => Some((m.to, entries.len())),
            _ => None,
        })
        .collect();
    assert_eq!(
        appends,
        vec![(2, 3), (3, 3)],
        "one append of 3 entries each"
    );
    let rounds: BTreeSet<u64> = ready
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::Heartbeat { read_seq, .. } if read_seq > 0 => Some(read_seq),
            _ => None,
        })
        .collect();
    assert_eq!(rounds.len(), 1, "one read round for both reads: {rounds:?}");
    assert_eq!(ready.entries.len(), 3, "one log write for the three");
    // A read registered now was not covered by that round: acknowledgements
    // of it must not confirm it.
    c.raft_mut(1).read_index(3).unwrap();
    c.queue.extend(ready.messages);
    if let Some(last) = ready.entries.last() {
        c.raft_mut(1).on_persisted(last.index, last.term);
    }
    while let Some(msg) = c.queue.pop_front() {
        let to = msg.to;
        c.raft_mut(to).step(msg);
        if to != 1 {
            let rd = c.raft_mut(to).ready();
            if let Some(last) = rd.entries.last() {
                c.raft_mut(to).on_persisted(last.index, last.term);
            }
            c.queue.extend(rd.messages);
            c.queue.extend(rd.persisted_messages);
        }
    }
    let ready = c.raft_mut(1).ready();
    let confirmed: Vec<u64> = ready.read_states.iter().map(|r| r.ctx).collect();
    assert_eq!(confirmed, vec![1, 2], "read 3 waits for a later round");
    c.queue.extend(ready.messages);
    c.settle();
    let ctxs: Vec<u64> = c.nodes[&1].read_states.iter().map(|r| r.ctx).collect();
    assert_eq!(ctxs, vec![3], "and gets it");
    assert_eq!(c.applied(2), vec!["first", "a", "b", "c"]);
}

#[test]
fn a_deposed_leader_never_serves_a_read() {
    // The etcd 0.4 stale-read bug: a leader cut off from the majority must
    // not answer reads from its own state. Its pending read is aborted when
    // it steps down.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(1);
    c.raft_mut(1).read_index(9).unwrap();
    c.tick_all(40);
    assert!(c.nodes[&1].read_states.is_empty());
    assert_eq!(c.nodes[&1].aborted_reads, vec![9]);
    assert!(matches!(
        c.raft_mut(1).read_index(10),
        Err(ProposeError::NotLeader { .. })
    ));
}

#[test]
fn leadership_transfer_hands_over_to_an_up_to_date_follower() {
    // Dissertation §3.10: stop accepting proposals, bring the target up to
    // date, send TimeoutNow; the target wins the next term.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.raft_mut(1).transfer_leader(3).unwrap();
    assert_eq!(
        c.raft_mut(1).propose(b"b".to_vec()),
        Err(ProposeError::Transferring)
    );
    c.settle();
    assert_eq!(c.leader(), Some(3));
    c.propose(3, "b");
    assert_eq!(c.applied(1), vec!["a", "b"]);
}

#[test]
fn membership_changes_one_server_at_a_time_with_a_learner_first() {
    // Dissertation §4.1-4.2: add a server as a non-voting learner until it
    // catches up, then make it a voter; only one change may be pending.
    let mut c = Cluster::new(3);
    c.elect(1);
    c.propose(1, "a");
    c.start(4, Disk::default());
    c.raft_mut(1)
        .propose_conf_change(ConfChange::AddLearner(4))
        .unwrap();
    assert_eq!(
        c.raft_mut(1).propose_conf_change(ConfChange::AddVoter(4)),
        Err(ProposeError::ChangeInProgress)
    );
    c.settle();
    c.tick_all(3);
    assert_eq!(c.applied(4), vec!["a"], "the learner received the log");
    assert!(c.raft(1).membership().learners.contains(&4));
    c.raft_mut(1)
        .propose_conf_change(ConfChange::AddVoter(4))
        .unwrap();
    c.settle();
    assert_eq!(c.raft(1).membership().voters.len(), 4);
    // Now 3 of 4 are needed: with 2 gone nothing commits.
    c.isolate(2);
    c.isolate(3);
    c.heal_link(1, 4);
    let index = c.raft_mut(1).propose(b"b".to_vec()).unwrap();
    c.settle();
    assert!(c.raft(1).commit() < index);
    c.heal();
    c.tick_all(3);
    assert_eq!(c.applied(4), vec!["a", "b"]);
    // Remove node 2.
    c.raft_mut(1)
        .propose_conf_change(ConfChange::Remove(2))
        .unwrap();
    c.settle();
    assert!(!c.raft(1).membership().voters.contains(&2));
    c.check_log_matching();
}

/// Node 1 leads; node 3 misses ten entries that nodes 1 and 2 then compact
/// away, so it catches up by installing node 1's snapshot. Returns the
/// cluster and the snapshot's index.
fn node_3_catches_up_by_snapshot() -> (Cluster, Index) {
    let mut c = Cluster::new(3);
    c.elect(1);
    c.isolate(3);
    for i in 0..10 {
        c.propose(1, &format!("v{i}"));
    }
    let applied = c.raft(1).log().applied;
    assert_eq!(c.raft(2).log().applied, applied);
    for id in [1, 2] {
        c.raft_mut(id).compact(applied);
    }
    assert!(c.raft(1).log().first_index() > 1);
    c.heal();
    c.tick_all(5);
    assert_eq!(
        c.raft(3).log().snapshot.index,
        applied,
        "node 3 installed the snapshot"
    );
    (c, applied)
}

#[test]
fn a_follower_too_far_behind_gets_a_snapshot() {
    // §7: "the leader must occasionally send snapshots to followers that
    // lag behind" because the entries they need were discarded.
    let (mut c, _) = node_3_catches_up_by_snapshot();
    c.propose(1, "after");
    assert_eq!(c.applied(3).last().map(String::as_str), Some("after"));
    assert_eq!(c.applied(3), c.applied(1), "the snapshot carried the state");
}

#[test]
fn a_node_that_installed_a_snapshot_can_send_it_as_leader() {
    // §7: a leader sends a snapshot to a follower that needs entries it
    // discarded. A node whose log starts with an installed snapshot must be
    // able to do the same once it leads.
    let (mut c, applied) = node_3_catches_up_by_snapshot();
    // Node 2 loses its disk and node 1 goes away: node 3 leads, and the
    // entries node 2 needs exist only in node 3's snapshot.
    c.start(2, Disk::default());
    c.isolate(1);
    c.elect(3);
    c.propose(3, "after");
    assert!(
        c.raft(2).log().snapshot.index >= applied,
        "node 3 sent node 2 the snapshot it installed"
    );
    assert_eq!(c.applied(2).last().map(String::as_str), Some("after"));
}

#[test]
fn a_single_voter_commits_alone() {
    let mut c = Cluster::new(1);
    c.elect(1);
    c.propose(1, "solo");
    assert_eq!(c.applied(1), vec!["solo"]);
    c.raft_mut(1).read_index(1).unwrap();
    c.settle();
    assert_eq!(c.nodes[&1].read_states.len(), 1);
}

#[test]
fn committed_entries_survive_any_crash_and_restart_schedule() {
    // §5.4 Leader Completeness + State Machine Safety, exercised: crash and
    // restart nodes (from their persisted state) while proposing; every
    // node that applies an index applies the same entry (asserted inside
    // the cluster), and everything committed stays in the leaders' logs.
    let mut c = Cluster::new(3);
    let mut proposed = 0;
    for round in 0..60u64 {
        if let Some(l) = c.leader() {
            if c.raft_mut(l)
                .propose(format!("p{proposed}").into_bytes())
                .is_ok()
            {
                proposed += 1;
            }
        }
        c.tick_all(3);
        if round % 7 == 3 {
            let victim = 1 + round % 3;
            c.restart(victim);
        }
    }
    c.tick_all(40);
    let leader = c.leader().expect("a leader after the storm");
    let committed = c.raft(leader).commit();
    for (index, term) in c.applied_terms.clone() {
        if index <= committed {
            assert_eq!(
                c.raft(leader).log().term(index).or(Some(term)),
                Some(term),
                "committed entry {index} changed"
            );
        }
    }
    c.check_log_matching();
}

impl Cluster {
    fn heal_link(&mut self, a: NodeId, b: NodeId) {
        self.cut.remove(&(a, b));
        self.cut.remove(&(b, a));
    }
}

impl Cluster {
    /// Delivers one random queued message (reordering), maybe dropping or
    /// duplicating it.
    fn deliver_random(&mut self, rng: &mut rand::rngs::SmallRng) {
        use rand::Rng;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.handle_ready(id);
        }
        if self.queue.is_empty() {
            return;
        }
        let i = rng.gen_range(0..self.queue.len());
        let msg = self.queue.remove(i).unwrap();
        if rng.gen_bool(0.1) || self.cut.contains(&(msg.from, msg.to)) {
            return; // lost
        }
        if rng.gen_bool(0.05) {
            self.queue.push_back(msg.clone()); // duplicated
        }
        self.raft_mut(msg.to).step(msg);
    }
}

#[test]
fn random_faults_never_violate_safety_and_the_cluster_recovers() {
    // Election Safety, Log Matching and State Machine Safety (§5.2-5.4) are
    // asserted after every step by the Cluster; here the network drops,
    // duplicates and reorders messages, nodes crash and restart from disk,
    // and partitions come and go. Afterwards everything heals and the
    // cluster must elect a leader and converge (liveness).
    use rand::{Rng, SeedableRng};
    for seed in 0..150u64 {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let n = if seed % 2 == 0 { 3 } else { 5 };
        let mut c = Cluster::new(n);
        let mut proposed = 0u64;
        for _step in 0..600 {
            match rng.gen_range(0..100) {
                0..=59 => c.deliver_random(&mut rng),
                60..=79 => {
                    let id = rng.gen_range(1..=n);
                    c.raft_mut(id).tick();
                }
                80..=89 => {
                    if let Some(l) = c.leader() {
                        if c.raft_mut(l)
                            .propose(format!("s{seed}-{proposed}").into_bytes())
                            .is_ok()
                        {
                            proposed += 1;
                        }
                    }
                }
                90..=93 => {
                    let id = rng.gen_range(1..=n);
                    c.restart(id);
                }
                94..=96 => {
                    let (a, b) = (rng.gen_range(1..=n), rng.gen_range(1..=n));
                    c.cut.insert((a, b));
                }
                _ => c.heal(),
            }
        }
        // Liveness: heal, let time pass, and require convergence.
        c.heal();
        c.tick_all(60);
        let leader = c
            .leader()
            .unwrap_or_else(|| panic!("seed {seed}: no leader after healing"));
        let index = c.raft_mut(leader).propose(b"final".to_vec());
        assert!(
            index.is_ok(),
            "seed {seed}: leader refuses proposals: {index:?}"
        );
        c.tick_all(10);
        let expected = c.applied(leader);
        assert_eq!(
            expected.last().map(String::as_str),
            Some("final"),
            "seed {seed}"
        );
        for id in 1..=n {
            let applied = c.applied(id);
            // A restarted node re-applies from its snapshot/log; compare the
            // tail it applied since the last restart with the leader's.
            assert!(
                expected.ends_with(&applied),
                "seed {seed}: node {id} applied {applied:?}, leader {expected:?}"
            );
            assert_eq!(
                c.raft(id).commit(),
                c.raft(leader).commit(),
                "seed {seed}: node {id} did not converge"
            );
        }
        c.check_log_matching();
    }
}

#[test]
fn a_follower_never_acknowledges_entries_that_are_not_durable_yet() {
    // Figure 2: an AppendEntries success promises the entries are on the
    // follower's disk; the leader never lowers matchIndex. A follower learns
    // the commit index from the same append that carries the entries, so its
    // commit index can be ahead of its durable log while the write is in
    // flight. Answering a stale (duplicated, reordered) append with
    // `Ok(commit)` at once would claim entries a crash can still lose: the
    // leader's matchIndex would then exceed the restarted follower's log,
    // every later append would be rejected as "stale", and the follower
    // would never catch up (found by the sim_raft simulation, seed 286).
    let mut f = Raft::new(
        Config::new(2),
        RaftState {
            initial_membership: Membership::new([1, 2, 3]),
            ..Default::default()
        },
        2,
    );
    let entries: Vec<Entry> = (1..=3)
        .map(|i| Entry {
            term: 1,
            index: i,
            data: EntryData::Normal(vec![i as u8]),
        })
        .collect();
    let append = |prev: Index, entries: Vec<Entry>, commit: Index| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::Append {
            prev_log_index: prev,
            prev_log_term: if prev == 0 { 0 } else { 1 },
            entries,
            commit,
        },
    };
    f.step(append(0, entries.clone(), 3));
    let ready = f.ready();
    assert_eq!(ready.entries.len(), 3, "entries 1..=3 to persist");
    assert_eq!(f.commit(), 3, "commit learned from the same append");
    // Not durable yet. A duplicate of an older append arrives.
    f.step(append(1, entries[1..2].to_vec(), 2));
    let ready = f.ready();
    let claimed: Vec<Index> = ready
        .messages
        .iter()
        .filter_map(|m| match m.body {
            MessageBody::AppendResponse(Ok(i)) => Some(i),
            _ => None,
        })
        .collect();
    assert!(
        claimed.iter().all(|&i| i == 0),
        "an immediate acknowledgement claims only durable entries, got {claimed:?}"
    );
    // Once durable, the same stale append is answered with the commit index.
    f.on_persisted(3, 1);
    f.step(append(1, entries[1..2].to_vec(), 2));
    let ready = f.ready();
    assert!(ready
        .messages
        .iter()
        .any(|m| m.body == MessageBody::AppendResponse(Ok(3))));
}

#[test]
fn a_member_without_durable_state_votes_only_after_catching_up() {
    // Not in the paper, which assumes durable state: a member that restarts
    // empty (a server without --persistence) may have acknowledged entries
    // and granted votes before the crash. Until it has caught up with a
    // leader it must not help elect a candidate that may lack those entries,
    // yet a brand-new cluster (every log empty) must still elect a leader.
    let mut cfg = Config::new(3);
    cfg.amnesia_guard = true;
    cfg.check_quorum = false;
    let state = RaftState {
        initial_membership: Membership::new([1, 2, 3]),
        ..Default::default()
    };
    let vote = |from: NodeId, term: Term, last_log_index: Index| Message {
        from,
        to: 3,
        term,
        body: MessageBody::Vote {
            last_log_index,
            last_log_term: if last_log_index == 0 { 0 } else { 1 },
            transfer: false,
        },
    };
    // A new cluster: the candidate's log is empty too (granted once the
    // member listened for a while and heard nobody with a log).
    let mut fresh = Raft::new(cfg.clone(), state.clone(), 1);
    for _ in 0..cfg.amnesia_listen_ticks {
        fresh.tick();
    }
    let _ = fresh.ready();
    fresh.step(vote(1, 1, 0));
    assert_eq!(vote_granted(&mut fresh), Some(true));

    // Restarted empty: a candidate with a non-empty log is refused.
    let mut amnesiac = Raft::new(cfg.clone(), state.clone(), 2);
    amnesiac.step(vote(1, 3, 4));
    assert_eq!(vote_granted(&mut amnesiac), Some(false));
    // Leader 2 sends its log up to its commit index: caught up.
    let entries: Vec<Entry> = (1..=4)
        .map(|i| Entry {
            term: 1,
            index: i,
            data: EntryData::Normal(vec![i as u8]),
        })
        .collect();
    amnesiac.step(Message {
        from: 2,
        to: 3,
        term: 3,
        body: MessageBody::Append {
            prev_log_index: 0,
            prev_log_term: 0,
            entries,
            commit: 4,
        },
    });
    let _ = amnesiac.ready();
    amnesiac.step(vote(1, 4, 4));
    assert_eq!(
        vote_granted(&mut amnesiac),
        Some(true),
        "after catching up it votes normally"
    );

    // Without the guard (durable members) the same request is granted.
    cfg.amnesia_guard = false;
    let mut durable = Raft::new(cfg, state, 3);
    durable.step(vote(1, 3, 4));
    assert_eq!(vote_granted(&mut durable), Some(true));
}

/// The answer to a Vote request in `r`'s next `Ready`, if any.
fn vote_granted(r: &mut Raft) -> Option<bool> {
    let ready = r.ready();
    ready
        .persisted_messages
        .iter()
        .chain(&ready.messages)
        .find_map(|m| match m.body {
            MessageBody::VoteResponse { granted } => Some(granted),
            _ => None,
        })
}

#[test]
fn a_snapshot_that_reaches_the_leaders_commit_lifts_the_amnesia_guard() {
    // A replica that starts empty may be caught up by a snapshot alone (an
    // idle group sends no append after it). The snapshot's chunks carry
    // the leader's commit index: one that reaches it lifts the guard, as
    // an append does; one that does not, does not. (Found by the whole-
    // system simulation: a replacement replica promoted after catching up
    // by a snapshot could never vote, and with another voter dead its
    // group never elected a leader again.)
    let mut cfg = Config::new(3);
    cfg.amnesia_guard = true;
    cfg.check_quorum = false;
    let state = RaftState {
        initial_membership: Membership::new([1, 2, 3]),
        ..Default::default()
    };
    let data = encode_state(&[(1, b"x".to_vec())]);
    let meta = SnapshotMeta {
        index: 5,
        term: 1,
        membership: Membership::new([1, 2, 3]),
    };
    let snapshot = |commit: Index| Message {
        from: 2,
        to: 3,
        term: 2,
        body: MessageBody::InstallSnapshot(SnapshotChunk {
            meta: meta.clone(),
            len: data.len() as u64,
            crc: crc32fast::hash(&data),
            offset: 0,
            data: data.clone(),
            done: true,
            commit,
        }),
    };
    let vote = Message {
        from: 1,
        to: 3,
        term: 3,
        body: MessageBody::Vote {
            last_log_index: 5,
            last_log_term: 1,
            transfer: false,
        },
    };
    for (commit, votes) in [(7, false), (5, true)] {
        let mut r = Raft::new(cfg.clone(), state.clone(), 1);
        r.step(snapshot(commit));
        assert_eq!(r.ready().snapshot.map(|s| s.meta.index), Some(5));
        r.step(vote.clone());
        assert_eq!(
            vote_granted(&mut r),
            Some(votes),
            "snapshot at 5, leader's commit {commit}"
        );
    }
}

#[test]
fn a_follower_that_restarts_empty_is_repaired_by_the_same_leader() {
    // Without durable state (servers without --persistence) a follower can
    // come back with an empty log while the leader's matchIndex for it is
    // high. Its rejections must lower matchIndex, or the leader would keep
    // probing at the old matchIndex forever and never re-replicate the log.
    fn config(id: NodeId) -> Config {
        Config {
            amnesia_guard: true,
            // Repair, not elections, is under test: vote at once.
            amnesia_listen_ticks: 0,
            ..Config::new(id)
        }
    }
    let mut c = Cluster::with_config(3, config);
    c.elect(1);
    c.propose(1, "x=1");
    c.propose(1, "x=2");
    assert_eq!(c.applied(3), vec!["x=1", "x=2"]);
    // Node 3 loses everything (no disk) and restarts.
    c.start(3, Disk::default());
    c.propose(1, "x=3");
    c.tick_all(4 * Config::new(1).heartbeat_ticks);
    assert_eq!(
        c.applied(3),
        vec!["x=1", "x=2", "x=3"],
        "the emptied follower has the whole log again"
    );
    assert_eq!(c.raft(1).match_index(3), Some(c.raft(1).log().last_index()));
    c.check_log_matching();
}

#[test]
fn an_idle_leader_repairs_a_follower_that_restarted_empty() {
    // Like the test above, but nothing is proposed after the restart: the
    // leader has nothing to append, so only heartbeats reach the emptied
    // follower. A heartbeat's commit index is at most the follower's
    // matchIndex; a follower whose log is shorter must say so (found by the
    // real-process tests: an idle in-memory partition stayed unrepaired,
    // and could then neither elect a leader nor keep its data).
    fn config(id: NodeId) -> Config {
        Config {
            amnesia_guard: true,
            // Repair, not elections, is under test: vote at once.
            amnesia_listen_ticks: 0,
            ..Config::new(id)
        }
    }
    let mut c = Cluster::with_config(3, config);
    c.elect(1);
    c.propose(1, "x=1");
    c.propose(1, "x=2");
    c.tick_all(2 * Config::new(1).heartbeat_ticks);
    c.start(3, Disk::default());
    c.tick_all(4 * Config::new(1).heartbeat_ticks);
    assert_eq!(
        c.applied(3),
        vec!["x=1", "x=2"],
        "the emptied follower has the whole log again"
    );
    c.check_log_matching();
}

#[test]
fn two_members_restarted_empty_elect_the_survivor_and_keep_its_log() {
    // Not in the paper (durable state assumed). Without --persistence,
    // nodes 2 and 3 crash while node 1 holds the log, and come back empty
    // after node 1 stepped down. A majority lost its state, so data may be
    // lost, but here the survivor still has it: the two empty members must
    // not elect each other and overwrite it (issue 9 item 9). Before the
    // fix, one of them won with the other's vote and node 1's entries were
    // truncated away: nobody applied x=1, x=2 again.
    fn config(id: NodeId) -> Config {
        Config {
            amnesia_guard: true,
            ..Config::new(id)
        }
    }
    let e = Config::new(1).election_ticks;
    let mut c = Cluster::with_config(3, config);
    // A fresh group (all empty) elects a leader once its members listened.
    c.tick_all(4 * e);
    let survivor = c.leader().expect("a fresh group elects a leader");
    c.propose(survivor, "x=1");
    c.propose(survivor, "x=2");
    c.tick_all(2);
    let others: Vec<NodeId> = (1..=3).filter(|&id| id != survivor).collect();
    for id in &others {
        c.nodes.remove(id); // crashed
    }
    c.tick_all(3 * e); // check-quorum: the survivor steps down
    assert_ne!(c.raft(survivor).role(), Role::Leader);
    for &id in &others {
        c.start(id, Disk::default()); // restarted without a disk
    }
    c.tick_all(10 * e);
    assert_eq!(c.leader(), Some(survivor), "the member with the log leads");
    for id in 1..=3 {
        assert_eq!(c.applied(id), vec!["x=1", "x=2"], "node {id}");
    }
    c.check_log_matching();
    // One more crash (of the survivor, now the leader): the two that were
    // caught up elect one of them, and everything is still there.
    c.nodes.remove(&survivor);
    c.tick_all(4 * e);
    let leader = c.leader().filter(|&l| l != survivor);
    let leader = leader.expect("the two caught-up members elect a leader");
    c.start(survivor, Disk::default());
    c.propose(leader, "x=3");
    c.tick_all(4 * e);
    for id in 1..=3 {
        assert_eq!(c.applied(id), vec!["x=1", "x=2", "x=3"], "node {id}");
    }
    c.check_log_matching();
}

#[test]
fn three_of_five_restarted_empty_elect_one_of_the_two_survivors() {
    // The same with five members, two of which keep their logs: the three
    // empty ones must neither elect one of them (the survivors are heard)
    // nor wait forever (each votes for a survivor that is up to date with
    // every other log it heard of).
    fn config(id: NodeId) -> Config {
        Config {
            amnesia_guard: true,
            ..Config::new(id)
        }
    }
    let e = Config::new(1).election_ticks;
    let mut c = Cluster::with_config(5, config);
    c.tick_all(4 * e);
    let leader = c.leader().expect("a fresh group elects a leader");
    c.propose(leader, "x=1");
    c.propose(leader, "x=2");
    c.tick_all(2);
    let survivors = [leader, leader % 5 + 1];
    let others: Vec<NodeId> = (1..=5).filter(|id| !survivors.contains(id)).collect();
    for id in &others {
        c.nodes.remove(id);
    }
    c.tick_all(3 * e);
    for &id in &others {
        c.start(id, Disk::default());
    }
    c.tick_all(10 * e);
    let now = c.leader().expect("a leader");
    assert!(survivors.contains(&now), "a survivor leads, not {now}");
    for id in 1..=5 {
        assert_eq!(c.applied(id), vec!["x=1", "x=2"], "node {id}");
    }
    c.check_log_matching();
}

#[test]
fn an_amnesiac_member_votes_for_a_log_only_if_it_is_up_to_date_with_every_other_voter() {
    // The two refinements of the amnesia guard, message by message, on a
    // member (3) that restarted empty in a group of 1, 2, 3.
    let cfg = Config {
        amnesia_guard: true,
        check_quorum: false,
        ..Config::new(3)
    };
    let listen = cfg.amnesia_listen_ticks;
    let state = RaftState {
        initial_membership: Membership::new([1, 2, 3]),
        ..Default::default()
    };
    let pre_vote = |from: NodeId, term: Term, last_log_index: Index| Message {
        from,
        to: 3,
        term,
        body: MessageBody::PreVote {
            last_log_index,
            last_log_term: if last_log_index == 0 { 0 } else { 1 },
        },
    };
    let vote = |from: NodeId, term: Term, last_log_index: Index| Message {
        body: MessageBody::Vote {
            last_log_index,
            last_log_term: if last_log_index == 0 { 0 } else { 1 },
            transfer: false,
        },
        ..pre_vote(from, term, last_log_index)
    };
    let granted = |r: &mut Raft| {
        let ready = r.ready();
        ready
            .persisted_messages
            .iter()
            .chain(&ready.messages)
            .find_map(|m| match m.body {
                MessageBody::VoteResponse { granted } => Some(granted),
                MessageBody::PreVoteResponse { granted } => Some(granted),
                _ => None,
            })
    };
    let ticks = |r: &mut Raft, n: u32| {
        for _ in 0..n {
            r.tick();
        }
        let _ = r.ready();
    };
    // Rule 1: an empty candidate only after listening, and not while a
    // peer with a log is heard.
    let mut r = Raft::new(cfg.clone(), state.clone(), 1);
    r.step(pre_vote(2, 1, 0));
    assert_eq!(granted(&mut r), Some(false), "still listening");
    ticks(&mut r, listen);
    r.step(pre_vote(1, 5, 7)); // node 1 has a log
    let _ = r.ready();
    r.step(pre_vote(2, 5, 0));
    assert_eq!(granted(&mut r), Some(false), "node 1 with a log is up");
    ticks(&mut r, listen); // node 1 fell silent
    r.step(pre_vote(2, 5, 0));
    assert_eq!(granted(&mut r), Some(true), "nobody with a log is heard");

    // Rule 2: a candidate with a log only if the third voter is heard, in a
    // lower term, with a log the candidate's is up to date with (it votes
    // on node 2's behalf, in place of its own lost log).
    let mut r = Raft::new(cfg.clone(), state.clone(), 2);
    r.step(vote(1, 5, 7));
    assert_eq!(granted(&mut r), Some(false), "node 2 unheard");
    let mut r = Raft::new(cfg.clone(), state.clone(), 3);
    r.step(pre_vote(2, 5, 9)); // node 2 has a longer log
    let _ = r.ready();
    r.step(vote(1, 6, 7));
    assert_eq!(granted(&mut r), Some(false), "node 2's log is longer");
    let mut r = Raft::new(cfg.clone(), state.clone(), 7);
    r.step(pre_vote(2, 5, 4)); // node 2 has a shorter log
    let _ = r.ready();
    r.step(vote(1, 6, 7));
    assert_eq!(granted(&mut r), Some(true), "node 1 is up to date with 2");
    let mut r = Raft::new(cfg.clone(), state.clone(), 4);
    r.step(pre_vote(2, 7, 0)); // node 2 is empty, but in term 6
    let _ = r.ready();
    r.step(vote(1, 6, 7));
    assert_eq!(granted(&mut r), Some(false), "node 2 may lead term 6");
    let mut r = Raft::new(cfg.clone(), state.clone(), 5);
    r.step(pre_vote(2, 5, 0)); // node 2 is empty, in term 4
    let _ = r.ready();
    ticks(&mut r, listen);
    r.step(vote(1, 6, 7));
    assert_eq!(granted(&mut r), Some(false), "heard too long ago");
    let mut r = Raft::new(cfg, state, 6);
    r.step(pre_vote(2, 5, 0));
    let _ = r.ready();
    r.step(pre_vote(1, 6, 7));
    assert_eq!(granted(&mut r), Some(true), "pre-vote for the survivor");
    r.step(vote(1, 6, 7));
    assert_eq!(granted(&mut r), Some(true), "vote for the survivor");
}

// ----- snapshots in chunks (§7) -------------------------------------------

/// Small chunks and a window of two, so a short snapshot takes many messages.
fn chunky_config(id: NodeId) -> Config {
    Config {
        snapshot_chunk_bytes: 8,
        max_inflight_snapshot_chunks: 2,
        ..Config::new(id)
    }
}

/// A 3-node cluster where node 3 missed `n` entries that node 1 (the
/// leader) and node 2 then compacted away.
fn cluster_with_follower_behind_the_log(n: usize) -> Cluster {
    let mut c = Cluster::with_config(3, chunky_config);
    c.elect(1);
    c.isolate(3);
    for i in 0..n {
        c.propose(1, &format!("value-{i}"));
    }
    let applied = c.raft(1).log().applied;
    c.raft_mut(1).compact(applied);
    c.raft_mut(2).compact(applied);
    c
}

/// Ticks and delivers everything but snapshot chunks until the leader
/// has started sending chunks.
fn tick_until_chunks_are_sent(c: &mut Cluster) {
    for _ in 0..20 {
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        for &id in &ids {
            c.raft_mut(id).tick();
        }
        loop {
            for &id in &ids {
                c.handle_ready(id);
            }
            let Some(i) = c
                .queue
                .iter()
                .position(|m| !matches!(m.body, MessageBody::InstallSnapshot(_)))
            else {
                break;
            };
            let msg = c.queue.remove(i).unwrap();
            if !c.cut.contains(&(msg.from, msg.to)) {
                c.raft_mut(msg.to).step(msg);
            }
        }
        if !chunks_in_queue(c).is_empty() {
            return;
        }
    }
    panic!("the leader sent no snapshot");
}

fn chunks_in_queue(c: &Cluster) -> Vec<(u64, usize, bool)> {
    c.queue
        .iter()
        .filter_map(|m| match &m.body {
            MessageBody::InstallSnapshot(chunk) => {
                Some((chunk.offset, chunk.data.len(), chunk.done))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_node_that_installed_a_snapshot_becomes_leader_and_catches_up_a_follower_behind_it() {
    // §7: "the leader must occasionally send snapshots to followers that
    // lag behind". Any leader, including one whose own log starts at a
    // snapshot it received: its state machine is the snapshot it sends.
    let mut c = Cluster::with_config(5, chunky_config);
    c.elect(1);
    c.isolate(4);
    c.isolate(5);
    for i in 0..10 {
        c.propose(1, &format!("v{i}"));
    }
    let applied = c.raft(1).log().applied;
    for id in 1..=3 {
        c.raft_mut(id).compact(applied);
    }
    // Node 4 comes back, behind the log: it installs a snapshot from 1.
    c.heal_link(1, 4);
    c.tick_all(5);
    assert_eq!(c.raft(4).log().snapshot.index, applied);
    assert_eq!(c.snapshots_installed, 1);
    // Node 4 takes over (dissertation §3.10), then nodes 1 and 3 go away.
    c.heal_link(2, 4);
    c.heal_link(3, 4);
    c.raft_mut(1).transfer_leader(4).unwrap();
    c.settle();
    assert_eq!(c.raft(4).role(), Role::Leader);
    c.heal();
    c.isolate(1);
    c.isolate(3);
    // Node 5 is behind node 4's first log index: it gets node 4's snapshot.
    c.tick_all(5);
    assert_eq!(c.snapshots_installed, 2, "node 5 installed a snapshot");
    assert!(c.raft(5).log().snapshot.index >= applied);
    c.propose(4, "after");
    assert_eq!(c.applied(5), c.applied(2));
    assert_eq!(c.applied(5).last().map(String::as_str), Some("after"));
}

#[test]
fn a_snapshot_travels_in_chunks_within_a_bounded_window() {
    // The leader keeps at most `max_inflight_snapshot_chunks` chunks in
    // flight and sends more as the follower acknowledges them.
    let mut c = cluster_with_follower_behind_the_log(10);
    c.heal();
    tick_until_chunks_are_sent(&mut c);
    let chunks = chunks_in_queue(&c);
    assert_eq!(chunks.len(), 2, "a window of two chunks: {chunks:?}");
    assert_eq!(chunks[0].0, 0);
    assert_eq!(chunks[1].0, 8);
    assert!(chunks.iter().all(|&(_, len, _)| len <= 8));
    assert_eq!(c.snapshots_taken, 1);
    c.settle();
    assert_eq!(c.snapshots_installed, 1);
    assert_eq!(c.applied(3), c.applied(1));
    c.propose(1, "after");
    assert_eq!(c.applied(3), c.applied(1));
}

#[test]
fn lost_duplicated_and_reordered_chunks_still_install_the_snapshot_once() {
    // A follower appends only the chunk that starts where its bytes end,
    // asks again from there when one is missing, and ignores duplicates.
    use rand::SeedableRng;
    for seed in 0..20 {
        let mut c = cluster_with_follower_behind_the_log(20);
        c.heal();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        for _ in 0..400 {
            if c.raft(3).log().snapshot.index > 0 {
                break;
            }
            c.deliver_random(&mut rng);
            if c.queue.is_empty() {
                let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
                for id in ids {
                    c.raft_mut(id).tick();
                }
            }
        }
        c.settle();
        c.tick_all(30);
        assert!(
            c.raft(3).log().snapshot.index > 0,
            "seed {seed}: no snapshot"
        );
        c.propose(1, "after");
        assert_eq!(c.applied(3), c.applied(1), "seed {seed}");
        c.check_log_matching();
    }
}

#[test]
fn a_transfer_cut_off_midway_resumes_where_the_follower_stopped() {
    // After an election timeout without progress the leader resumes from
    // the last acknowledged byte, not from the start.
    let mut c = cluster_with_follower_behind_the_log(10);
    c.heal();
    tick_until_chunks_are_sent(&mut c);
    // Run until some, but not all, chunks arrived, then cut the link.
    let mut steps = 0;
    loop {
        let ids: Vec<NodeId> = c.nodes.keys().copied().collect();
        for id in ids {
            c.handle_ready(id);
        }
        let msg = c.queue.pop_front().expect("the transfer is running");
        let received = matches!(&msg.body, MessageBody::InstallSnapshot(ch) if ch.offset >= 24);
        c.raft_mut(msg.to).step(msg);
        steps += 1;
        if received || steps > 1000 {
            break;
        }
    }
    c.isolate(3);
    c.settle();
    c.tick_all(25);
    assert_eq!(
        c.raft(3).log().snapshot.index,
        0,
        "not installed while cut off"
    );
    c.heal();
    // The follower answers a heartbeat: the leader resumes from the
    // acknowledged offset (past the start), one chunk until it hears back.
    tick_until_chunks_are_sent(&mut c);
    let offsets: Vec<u64> = chunks_in_queue(&c).iter().map(|c| c.0).collect();
    assert!(
        !offsets.is_empty() && offsets.iter().all(|&o| o > 0),
        "resumed, not restarted: {offsets:?}"
    );
    c.settle();
    c.tick_all(3);
    assert_eq!(c.snapshots_installed, 1);
    assert_eq!(c.applied(3), c.applied(1));
}

#[test]
fn a_follower_installs_only_a_snapshot_whose_checksum_verifies() {
    let mut r = Raft::new(
        Config::new(2),
        RaftState {
            initial_membership: Membership::new([1, 2, 3]),
            ..Default::default()
        },
        1,
    );
    let data = encode_state(&[(1, b"x".to_vec())]);
    let meta = SnapshotMeta {
        index: 5,
        term: 1,
        membership: Membership::new([1, 2, 3]),
    };
    let chunk = |crc: u32| Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::InstallSnapshot(SnapshotChunk {
            meta: meta.clone(),
            len: data.len() as u64,
            crc,
            offset: 0,
            data: data.clone(),
            done: true,
            commit: 5,
        }),
    };
    r.step(chunk(crc32fast::hash(&data) ^ 1));
    let rd = r.ready();
    assert!(rd.snapshot.is_none(), "a bad checksum is not installed");
    assert_eq!(r.log().snapshot.index, 0);
    assert!(rd.messages.iter().any(|m| matches!(
        m.body,
        MessageBody::SnapshotAck {
            received: 0,
            rejected: true,
            ..
        }
    )));
    // The driver's own check can refuse it too.
    r.step_checked(chunk(crc32fast::hash(&data)), &mut |_, _| {
        SnapshotCheck::Reject
    });
    assert!(r.ready().snapshot.is_none());
    r.step(chunk(crc32fast::hash(&data)));
    let rd = r.ready();
    assert_eq!(rd.snapshot.map(|s| s.meta.index), Some(5));
    assert_eq!(r.log().snapshot.index, 5);
}

#[test]
fn a_snapshot_checked_later_is_installed_once_the_driver_says_it_decodes() {
    // Decoding a large partition takes long, so the driver may decode a
    // whole received snapshot off its event loop (SnapshotCheck::Later):
    // the core keeps it, tells the leader everything arrived (so chunks are
    // not resent meanwhile), and installs it only on a good verdict.
    let mut r = Raft::new(
        Config::new(2),
        RaftState {
            initial_membership: Membership::new([1, 2, 3]),
            ..Default::default()
        },
        1,
    );
    let data = encode_state(&[(1, b"x".to_vec())]);
    let meta = SnapshotMeta {
        index: 5,
        term: 1,
        membership: Membership::new([1, 2, 3]),
    };
    let chunk = Message {
        from: 1,
        to: 2,
        term: 1,
        body: MessageBody::InstallSnapshot(SnapshotChunk {
            meta: meta.clone(),
            len: data.len() as u64,
            crc: crc32fast::hash(&data),
            offset: 0,
            data: data.clone(),
            done: true,
            commit: 5,
        }),
    };
    let acked = |rd: &Ready, received: u64, rejected: bool| {
        rd.messages.iter().any(|m| {
            m.body
                == MessageBody::SnapshotAck {
                    index: 5,
                    received,
                    rejected,
                }
        })
    };
    let len = data.len() as u64;
    r.step_checked(chunk.clone(), &mut |_, _| SnapshotCheck::Later);
    let rd = r.ready();
    assert!(
        rd.snapshot.is_none(),
        "nothing installed while it is checked"
    );
    assert!(acked(&rd, len, false), "the leader hears it all arrived");
    // A resent chunk of it is acknowledged whole, not assembled again.
    r.step_checked(chunk.clone(), &mut |_, _| panic!("checked twice"));
    assert!(acked(&r.ready(), len, false));
    // It does not decode: ask again from the start.
    r.snapshot_checked(5, false);
    let rd = r.ready();
    assert!(rd.snapshot.is_none());
    assert!(acked(&rd, 0, true));
    assert_eq!(r.log().snapshot.index, 0);
    // Sent again, and this time it decodes.
    r.step_checked(chunk, &mut |_, _| SnapshotCheck::Later);
    let _ = r.ready();
    r.snapshot_checked(4, true); // another snapshot's verdict: ignored
    assert!(r.ready().snapshot.is_none());
    r.snapshot_checked(5, true);
    let rd = r.ready();
    assert_eq!(rd.snapshot.map(|s| s.meta.index), Some(5));
    assert_eq!(r.log().snapshot.index, 5);
    assert!(rd
        .persisted_messages
        .iter()
        .any(|m| m.body == MessageBody::AppendResponse(Ok(5))));
}
