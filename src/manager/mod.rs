//! The manager: holds the partition map and serves it. It is not on the data
//! path: clients fetch the map once and then talk to servers directly.
//!
//! ```text
//!   server --Register(node_id, addr, epoch, replicas)--> manager --RegisterReply(map)--> server
//!   client --GetMap--> manager --MapReply(map)--> client
//!   admin  --Status--> manager --StatusReply(servers, partitions)--> admin
//!   manager --ChangeReplicas(partition, membership, change)--> leader --AdminReply--> manager
//! ```
//! Registrations double as heartbeats that carry the state of each replica
//! ([`status`]), which the manager keeps for `admin`, and each leader's
//! committed membership, which the map follows ([`ManagerCore::learn`]).
//! The initial map is a function of the configuration
//! ([`PartitionMap::build`]); a restarted manager relearns every membership
//! change from the leaders within a heartbeat, and numbers its maps above the
//! epochs servers hold. Every [`PLAN_INTERVAL`] it asks leaders for the
//! membership changes that replace replicas on dead servers
//! ([`ManagerCore::plan`]; ARCHITECTURE.md, "Re-replication").

pub mod control;
pub mod status;

use crate::map::{MapError, NodeId, PartitionId, PartitionMap};
use crate::raft::ConfChange;
use crate::rt::{Net, Runtime};
use crate::wire::{decode_msg, encode_msg, Msg, ServerAction};
use control::{ControlConfig, ControlState};
use status::{Heartbeats, ReplicaRole, ReplicaStatus, ServerState};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// Manager configuration. Every field is validated by [`ManagerConfig::build_map`].
#[derive(Clone, Debug)]
pub struct ManagerConfig {
    /// Where servers and clients reach the manager.
    pub listen_addr: SocketAddr,
    /// The cluster's servers; server `i` (its `--node-id`) is `servers[i]`.
    pub servers: Vec<SocketAddr>,
    /// Tables and the size of each one's initial key space `[0, N)`.
    pub tables: Vec<(String, u64)>,
    /// Replicas per partition (capped at the number of servers).
    pub replicas: usize,
    /// A server not heard from for this long is declared dead, and its
    /// replicas are replaced.
    pub dead_after: Duration,
    /// When a partition is split in two.
    pub split: SplitThresholds,
    /// One of several managers (`--peers`): the control group it runs and
    /// shares with the others. `None`: the only manager, whose drains and
    /// removals are soft state.
    pub control: Option<ControlConfig>,
}

/// A partition whose leader reports more data or more keys than this is
/// split at its middle key (0: never, for that measure).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitThresholds {
    /// Bytes of data (values plus 8 per key).
    pub bytes: u64,
    pub keys: u64,
}

impl Default for SplitThresholds {
    /// TiKV's defaults (`region-split-size` 96 MiB, `region-split-keys`
    /// 960,000): large enough that a split is rare, small enough that a
    /// partition moves (a snapshot) in seconds.
    fn default() -> SplitThresholds {
        SplitThresholds {
            bytes: 96 * 1024 * 1024,
            keys: 960_000,
        }
    }
}

impl ManagerConfig {
    /// Like CockroachDB's `server.time_until_store_dead`: long enough that
    /// a restart or a short network outage never counts.
    pub const DEAD_AFTER_DEFAULT: Duration = Duration::from_secs(300);

    /// Builds the initial map. Listed server addresses with an unspecified IP
    /// (`0.0.0.0`) are not dialable, so they are shown as loopback until the
    /// server registers its advertised address.
    pub fn build_map(&self) -> Result<PartitionMap, MapError> {
        let servers: Vec<SocketAddr> = self
            .servers
            .iter()
            .map(|a| {
                if a.ip().is_unspecified() {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), a.port())
                } else {
                    *a
                }
            })
            .collect();
        PartitionMap::build(&self.tables, &servers, self.replicas)
    }
}

/// How often the manager looks for partitions to repair.
pub const PLAN_INTERVAL: Duration = Duration::from_secs(1);

/// A membership change asked of a leader and not yet seen in its reports
/// is asked again after this long.
const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Partitions at most being moved at once to even out replica counts, in a
/// cluster of up to 8 servers (half the servers in a larger one; repairs
/// are not limited): each move copies a partition.
const BALANCE_MOVES_MAX: usize = 4;

/// A partition moved to even out replica counts is not moved again for
/// balance within this long: moves decided on loads that other moves are
/// still changing must not chase each other back and forth.
const BALANCE_COOLDOWN: Duration = Duration::from_secs(60);

/// Leadership transfers at most asked per plan to even out leader counts.
const BALANCE_TRANSFERS_MAX: usize = 4;

/// A split asked of a partition's leader is not asked again for this long
/// (the leader answers, and its reports show the split, well before).
const SPLIT_RETRY: Duration = Duration::from_secs(5);

/// What the manager asked a partition's leader for.
#[derive(Clone, Debug)]
enum Step {
    Change(ConfChange),
    Transfer(NodeId),
}

/// A step the manager asked a partition's leader for.
#[derive(Clone, Debug)]
struct Move {
    req: u64,
    step: Step,
    /// The membership it was decided on (voters, learners) and the leader
    /// asked: done once the map shows another membership, or (a transfer)
    /// another leader.
    from: (Vec<NodeId>, Vec<NodeId>),
    leader: NodeId,
    sent: Instant,
}

/// The manager's state machine: messages in, replies out. No IO.
pub struct ManagerCore {
    map: PartitionMap,
    heartbeats: Heartbeats,
    /// Replicas every partition should have (capped at the server count).
    replicas: usize,
    /// The highest map epoch a server reported holding: a restarted
    /// manager numbers its maps above it.
    seen_epoch: u64,
    moves: BTreeMap<PartitionId, Move>,
    /// Partitions being moved to even out replica counts, and the server
    /// each is leaving.
    leaving: BTreeMap<PartitionId, NodeId>,
    /// When each partition last started a balancing move.
    balanced_at: BTreeMap<PartitionId, Instant>,
    /// Servers an operator is draining (`admin drain`). Soft state: a
    /// restarted manager forgets it (drain again).
    draining: BTreeSet<NodeId>,
    /// Servers an operator removed (`admin remove-server`): their `--join`
    /// is refused, so a forgotten process does not come back. Soft state.
    removed: BTreeSet<NodeId>,
    split: SplitThresholds,
    /// When each partition was last asked to split.
    split_asked: BTreeMap<PartitionId, Instant>,
    next_req: u64,
    leadership: Leadership,
    /// Partitions an operator is moving (`admin move`), until settled.
    operator_moves: BTreeSet<PartitionId>,
    /// Messages to send that no plan produced (see [`ManagerCore::take_output`]).
    pending_out: Vec<(SocketAddr, Msg)>,
}

/// Whether this manager plans and hands maps out.
#[derive(Clone, Debug)]
enum Leadership {
    /// The only manager: always.
    Sole,
    /// One of several (`--peers`): while it holds the control plane's lease.
    Lease {
        me: NodeId,
        peers: Vec<SocketAddr>,
        /// The lease counter at which this manager took the lease (while
        /// it holds it).
        term: Option<u64>,
        until: Option<Instant>,
        /// The leader's client address, when another manager leads.
        leader: Option<SocketAddr>,
    },
}

impl ManagerCore {
    /// Starting at `now`; servers silent for `dead_after` are dead and
    /// their replicas are replaced, so each partition keeps `replicas`.
    pub fn new(
        map: PartitionMap,
        now: Instant,
        dead_after: Duration,
        replicas: usize,
    ) -> ManagerCore {
        ManagerCore {
            map,
            heartbeats: Heartbeats::new(now, dead_after),
            replicas,
            seen_epoch: 0,
            moves: BTreeMap::new(),
            leaving: BTreeMap::new(),
            balanced_at: BTreeMap::new(),
            draining: BTreeSet::new(),
            removed: BTreeSet::new(),
            split: SplitThresholds::default(),
            split_asked: BTreeMap::new(),
            next_req: 1,
            leadership: Leadership::Sole,
            operator_moves: BTreeSet::new(),
            pending_out: Vec::new(),
        }
    }

    /// One of several managers: it leads only while [`ManagerCore::lease`]
    /// says so.
    pub fn replicated(mut self, me: NodeId, peers: Vec<SocketAddr>) -> ManagerCore {
        self.leadership = Leadership::Lease {
            me,
            peers,
            term: None,
            until: None,
            leader: None,
        };
        self
    }

    /// Whether this manager plans and hands maps out at `now`.
    pub fn leads(&self, now: Instant) -> bool {
        match self.leadership {
            Leadership::Sole => true,
            Leadership::Lease { until, .. } => until.is_some_and(|u| now < u),
        }
    }

    /// The control plane as `admin managers` shows it.
    fn managers_info(&self, now: Instant) -> status::ManagersInfo {
        match &self.leadership {
            Leadership::Sole => status::ManagersInfo::default(),
            Leadership::Lease { me, peers, .. } => status::ManagersInfo {
                leader: self.leads(now).then_some(*me),
                peers: peers.clone(),
            },
        }
    }

    /// What a control-plane round found: until when this manager leads (or
    /// who does), the highest map epoch the lease recorded, and the state
    /// the control group holds (`None`: unread; keep ours).
    pub fn lease(&mut self, now: Instant, round: control::Round) {
        let control::Round {
            state,
            leads_until: until,
            leader,
            epoch,
            term,
        } = round;
        self.seen_epoch = self.seen_epoch.max(epoch);
        let mut new_term = false;
        if let Leadership::Lease {
            until: u,
            leader: l,
            term: t,
            ..
        } = &mut self.leadership
        {
            (*u, *l) = (until, leader);
            new_term = term.is_some() && term != *t;
            *t = term;
        }
        if new_term && self.leads(now) {
            // Above every map an earlier leader handed out: its epochs are
            // below its own term's floor, and terms only grow (a deposed
            // leader still numbering maps stays below ours).
            let floor = term.unwrap_or(0).min(u64::MAX >> 33) << 32;
            self.seen_epoch = self.seen_epoch.max(floor);
            self.bump_epoch();
            self.moves.clear();
            crate::stats::count(crate::stats::Event::ManagerLeads);
            tracing::info!(epoch = self.map.epoch, "leading the control plane");
        }
        if let Some(state) = state {
            self.apply_control(state);
        }
    }

    /// Drains and removals as recorded (by us or by another manager).
    pub fn control_state(&self) -> ControlState {
        ControlState {
            draining: self.draining.clone(),
            removed: self.removed.clone(),
        }
    }

    /// Adopts `state`: a removed server leaves the map.
    pub fn apply_control(&mut self, state: ControlState) {
        for &node in state.removed.difference(&self.removed.clone()) {
            if self.map.servers.remove(&node).is_some() {
                self.heartbeats.forget(node);
                self.bump_epoch();
                tracing::info!(node, "removed a server from the cluster");
            }
        }
        self.draining = state.draining;
        self.removed = state.removed;
    }

    /// `admin moves`: every partition with a step asked, a learner, or a
    /// replica on its way out.
    fn moves_info(&self, now: Instant) -> Vec<status::MoveInfo> {
        let mut ids: BTreeSet<PartitionId> = self.moves.keys().copied().collect();
        ids.extend(self.leaving.keys().copied());
        ids.extend(
            self.map
                .groups
                .iter()
                .filter(|(_, g)| !g.learners.is_empty())
                .map(|(&p, _)| p),
        );
        ids.into_iter()
            .filter(|p| self.map.partitions.contains_key(p))
            .map(|p| {
                let m = self.moves.get(&p);
                let leaving = self.leaving.get(&p).copied();
                let step = m.map(|m| match &m.step {
                    Step::Change(ConfChange::AddLearner(n)) => format!("add learner {n}"),
                    Step::Change(ConfChange::AddVoter(n)) => format!("promote {n}"),
                    Step::Change(ConfChange::Remove(n)) => format!("remove {n}"),
                    Step::Transfer(n) => format!("transfer leadership to {n}"),
                });
                let reason = if self.operator_moves.contains(&p) {
                    "operator"
                } else if leaving.is_some() {
                    "balance"
                } else {
                    "repair"
                };
                status::MoveInfo {
                    partition: p,
                    step,
                    asked_ms: m.map(|m| now.saturating_duration_since(m.sent).as_millis() as u64),
                    learners: self.map.groups[&p].learners.clone(),
                    leaving,
                    reason: reason.to_string(),
                }
            })
            .collect()
    }

    /// `admin move`: starts moving partition `id`'s replica on `from` to
    /// `to` (a learner there; the plan promotes it once caught up, then
    /// removes the one on `from`, as for a balancing move).
    fn move_replica(
        &mut self,
        id: PartitionId,
        from: NodeId,
        to: NodeId,
        now: Instant,
    ) -> Result<String, String> {
        let Some((voters, learners)) = self.membership(id) else {
            return Err(format!(
                "there is no partition {id} (see `admin partitions`)"
            ));
        };
        if !voters.contains(&from) {
            return Err(format!(
                "server {from} holds no voting replica of partition {id} (its replicas: {voters:?})"
            ));
        }
        if voters.contains(&to) || learners.contains(&to) {
            return Err(format!(
                "server {to} already holds a replica of partition {id}"
            ));
        }
        if !self.map.servers.contains_key(&to) {
            return Err(format!("there is no server {to} (see `admin servers`)"));
        }
        if self.heartbeats.state(to, now) != ServerState::Up || self.draining.contains(&to) {
            return Err(format!(
                "server {to} is not up, or is draining: it cannot take a replica"
            ));
        }
        if !learners.is_empty() || self.moves.contains_key(&id) || self.leaving.contains_key(&id) {
            return Err(format!(
                "partition {id} is already moving (see `admin moves`); try again when it is done"
            ));
        }
        let leader = self
            .heartbeats
            .reports(now)
            .filter(|(_, r)| r.partition == id && r.role == ReplicaRole::Leader)
            .max_by_key(|(_, r)| r.term)
            .map(|(n, _)| n);
        let Some(leader) = leader else {
            return Err(format!("partition {id} has no leader right now; try again"));
        };
        self.leaving.insert(id, from);
        self.operator_moves.insert(id);
        self.balanced_at.insert(id, now);
        let mut out = Vec::new();
        let (mut load, mut leads) = (BTreeMap::new(), BTreeMap::new());
        let step = Step::Change(ConfChange::AddLearner(to));
        self.ask(&mut out, now, id, leader, step, &mut load, &mut leads);
        self.pending_out.extend(out);
        tracing::info!(partition = id, from, to, "moving a replica (admin)");
        Ok(format!(
            "moving partition {id}'s replica from server {from} to server {to}: a learner on \
             {to}, promoted once caught up, then the replica on {from} removed (watch `admin moves`)"
        ))
    }

    /// Messages decided outside [`ManagerCore::plan`] (an `admin move`'s
    /// first step), to send now.
    pub fn take_output(&mut self) -> Vec<(SocketAddr, Msg)> {
        std::mem::take(&mut self.pending_out)
    }

    /// The answer of a manager that does not lead, if this one does not.
    fn redirect(&self, req: u64, now: Instant) -> Option<Msg> {
        match self.leadership {
            Leadership::Lease { leader, .. } if !self.leads(now) => {
                Some(Msg::NotManagerLeader { req, leader })
            }
            _ => None,
        }
    }

    /// Splits partitions past these thresholds (default: [`SplitThresholds::default`]).
    pub fn with_split_thresholds(mut self, split: SplitThresholds) -> ManagerCore {
        self.split = split;
        self
    }

    pub fn map(&self) -> &PartitionMap {
        &self.map
    }

    /// A new map: its epoch is above every one handed out, by us or by a
    /// manager before a restart.
    fn bump_epoch(&mut self) {
        self.map.epoch = self.map.epoch.max(self.seen_epoch) + 1;
    }

    /// Handles one request received at `now`; returns the reply, if any.
    /// Refreshes the manager's gauges (see `crate::metrics`).
    pub fn export_metrics(&self, now: Instant) {
        use metrics::gauge;
        gauge!("distkv_manager_is_leader").set(self.leads(now) as u8 as f64);
        gauge!("distkv_manager_map_epoch").set(self.map.epoch as f64);
        gauge!("distkv_manager_partitions").set(self.map.partitions.len() as f64);
        let mut counts: BTreeMap<&'static str, u64> = [
            ServerState::Up,
            ServerState::Unreachable,
            ServerState::Dead,
            ServerState::Unknown,
        ]
        .into_iter()
        .map(|s| (s.name(), 0))
        .chain([("draining", 0)])
        .collect();
        for &n in self.map.servers.keys() {
            let state = match self.heartbeats.state(n, now) {
                ServerState::Dead => ServerState::Dead.name(),
                _ if self.draining.contains(&n) => "draining",
                other => other.name(),
            };
            *counts.entry(state).or_default() += 1;
        }
        for (state, n) in counts {
            gauge!("distkv_manager_servers", "state" => state).set(n as f64);
        }
    }

    pub fn handle(&mut self, msg: Msg, now: Instant) -> Option<Msg> {
        // Requests only the leading manager answers.
        let asked = match &msg {
            Msg::GetMap { req, .. }
            | Msg::Status { req }
            | Msg::ServerAdmin { req, .. }
            | Msg::MoveReplica { req, .. } => Some(*req),
            _ => None,
        };
        if let Some(redirect) = asked.and_then(|req| self.redirect(req, now)) {
            return Some(redirect);
        }
        match msg {
            Msg::GetMap { req, epoch } => {
                // A client holding a map of a manager before a restart
                // takes ours only if its epoch is higher.
                if epoch > self.map.epoch {
                    self.seen_epoch = self.seen_epoch.max(epoch);
                    self.bump_epoch();
                }
                Some(Msg::MapReply {
                    req,
                    map: self.map_for_clients(now),
                })
            }
            Msg::Register {
                node_id,
                addr,
                epoch,
                join,
                replicas,
            } => {
                let result = self.register(node_id, addr, join);
                if result.is_ok() {
                    self.seen_epoch = self.seen_epoch.max(epoch);
                    let learned = self.learn(node_id, &replicas);
                    if learned || self.map.epoch < epoch {
                        self.bump_epoch();
                    }
                    self.heartbeats.record(node_id, replicas, now);
                    metrics::counter!("distkv_manager_heartbeats_total").increment(1);
                }
                // Another manager leads: it answers (with the map, or why not).
                if !self.leads(now) {
                    return None;
                }
                Some(match result {
                    Err(e) => Msg::RegisterReply { result: Err(e) },
                    // The server's map is current: no need to send it.
                    Ok(()) if epoch == self.map.epoch => Msg::Registered { epoch },
                    Ok(()) => Msg::RegisterReply {
                        result: Ok(self.map.clone()),
                    },
                })
            }
            Msg::Status { req } => {
                let mut status = self.heartbeats.status(&self.map, now);
                for s in &mut status.servers {
                    s.draining = self.draining.contains(&s.id);
                }
                status.managers = self.managers_info(now);
                status.moves = self.moves_info(now);
                Some(Msg::StatusReply { req, status })
            }
            Msg::ServerAdmin { req, node, action } => {
                // The only manager: soft state, applied at once (one of
                // several records it in the control group first, see
                // `run_manager`).
                let result = self.server_admin(node, action, now).map(|(text, state)| {
                    self.apply_control(state);
                    text
                });
                Some(Msg::AdminReply { req, result })
            }
            Msg::MoveReplica {
                req,
                partition,
                from,
                to,
            } => Some(Msg::AdminReply {
                req,
                result: self.move_replica(partition, from, to, now),
            }),
            Msg::AdminReply { req, result } => {
                // A leader's answer to a membership change we asked for.
                if let Err(why) = result {
                    let partition = self
                        .moves
                        .iter()
                        .find(|(_, m)| m.req == req)
                        .map(|(&p, _)| p);
                    if let Some(m) = partition.and_then(|p| self.moves.remove(&p)) {
                        tracing::debug!(?partition, step = ?m.step, "refused: {why}");
                    }
                }
                None
            }
            other => {
                tracing::warn!("manager ignores unexpected message {other:?}");
                None
            }
        }
    }

    /// The map as clients get it: each partition's dead servers (declared
    /// dead, not yet replaced) listed last, so a client that knows no
    /// leader tries a live replica first rather than wait out an attempt
    /// on a server that will never answer. Only the order changes.
    fn map_for_clients(&self, now: Instant) -> PartitionMap {
        let mut map = self.map.clone();
        for p in map.partitions.values_mut() {
            p.replicas
                .sort_by_key(|&n| self.heartbeats.state(n, now) == ServerState::Dead);
        }
        map
    }

    /// Adopts the memberships and the splits that `node`'s leaders report,
    /// when newer than the map's. Returns whether the map changed.
    fn learn(&mut self, node: NodeId, replicas: &[ReplicaStatus]) -> bool {
        let mut changed = false;
        for r in replicas {
            let Some(range) = &r.range else {
                continue;
            };
            if self
                .map
                .adopt_splits(r.partition, range.end, &range.splits, Some(node))
            {
                tracing::info!(
                    partition = r.partition,
                    end = ?range.end,
                    splits = range.splits.len(),
                    "partition split"
                );
                changed = true;
            }
        }
        for r in replicas {
            let Some(config) = &r.config else {
                continue;
            };
            let (Some(partition), Some(group)) = (
                self.map.partitions.get_mut(&r.partition),
                self.map.groups.get_mut(&r.partition),
            ) else {
                continue;
            };
            if config.conf_index <= group.conf_index {
                continue;
            }
            let known = |ids: &[NodeId]| ids.iter().all(|n| self.map.servers.contains_key(n));
            if config.voters.is_empty() || !known(&config.voters) || !known(&config.learners) {
                tracing::warn!(
                    partition = r.partition,
                    ?config,
                    "ignoring a membership with no voter or an unknown server"
                );
                continue;
            }
            group.conf_index = config.conf_index;
            // The reporting leader first: clients try it first.
            let mut voters = config.voters.clone();
            if let Some(i) = voters.iter().position(|&v| v == node) {
                voters[..=i].rotate_right(1);
            }
            let same_voters = {
                let (mut a, mut b) = (voters.clone(), partition.replicas.clone());
                a.sort_unstable();
                b.sort_unstable();
                a == b
            };
            if same_voters && group.learners == config.learners {
                continue;
            }
            tracing::info!(
                partition = r.partition,
                voters = ?voters,
                learners = ?config.learners,
                conf_index = config.conf_index,
                "partition membership changed"
            );
            partition.replicas = voters;
            group.learners = config.learners.clone();
            changed = true;
        }
        changed
    }

    /// The steps to ask for at `now`, one per partition at a time, each of
    /// the partition's leader. First repairs: replace the replicas on dead
    /// or draining servers (a learner on the live server with the fewest
    /// replicas, promoted once caught up, then the old replica removed),
    /// bring every partition to the configured replica count, and move
    /// leaderships off draining servers. Then balance: while the live
    /// servers' replica counts differ by more than one, move a replica from
    /// the fullest to the emptiest (at most [`BALANCE_MOVES_MAX`] at once,
    /// or half the live servers if more);
    /// while their leader counts do, hand a leadership over.
    pub fn plan(&mut self, now: Instant) -> Vec<(SocketAddr, Msg)> {
        let mut leaders: BTreeMap<PartitionId, (u64, NodeId)> = BTreeMap::new();
        // What each leader reports holding: (keys, bytes).
        let mut sizes: BTreeMap<PartitionId, (u64, u64)> = BTreeMap::new();
        for (node, r) in self.heartbeats.reports(now) {
            if r.role == ReplicaRole::Leader
                && leaders.get(&r.partition).is_none_or(|&(t, _)| t < r.term)
            {
                leaders.insert(r.partition, (r.term, node));
                sizes.insert(r.partition, (r.keys, r.bytes));
            }
        }
        let mut out = self.plan_splits(now, &leaders, &sizes);
        let states: BTreeMap<NodeId, ServerState> = self
            .map
            .servers
            .keys()
            .map(|&n| (n, self.heartbeats.state(n, now)))
            .collect();
        let up = |n: &NodeId| states.get(n) == Some(&ServerState::Up);
        let dead = |n: &NodeId| states.get(n) == Some(&ServerState::Dead);
        let draining = self.draining.clone();
        // Replicas (and leaderships) per server that may take more: up and
        // not draining.
        let mut load: BTreeMap<NodeId, usize> = states
            .iter()
            .filter(|(n, &s)| s == ServerState::Up && !draining.contains(n))
            .map(|(&n, _)| (n, 0))
            .collect();
        for &p in self.map.partitions.keys() {
            for n in self.map.hosts(p) {
                if let Some(l) = load.get_mut(&n) {
                    *l += 1;
                }
            }
        }
        let mut leads: BTreeMap<NodeId, usize> = load.keys().map(|&n| (n, 0)).collect();
        for &(_, n) in leaders.values() {
            if let Some(l) = leads.get_mut(&n) {
                *l += 1;
            }
        }
        let target = self.replicas.min(self.map.servers.len()).max(1);
        let ids: Vec<PartitionId> = self.map.partitions.keys().copied().collect();
        // Partitions with nothing to repair and a known leader: candidates
        // for balancing.
        let mut settled: Vec<(PartitionId, NodeId)> = Vec::new();
        for &id in &ids {
            let Some((voters, learners)) = self.membership(id) else {
                continue;
            };
            let leader = leaders.get(&id).map(|&(_, l)| l);
            if let Some(m) = self.moves.get(&id) {
                let done = m.from.0 != voters
                    || m.from.1 != learners
                    || (matches!(m.step, Step::Transfer(_)) && leader != Some(m.leader));
                if done || now.saturating_duration_since(m.sent) >= MOVE_TIMEOUT {
                    self.moves.remove(&id);
                } else {
                    continue;
                }
            }
            let Some(leader) = leader else {
                continue;
            };
            let leaving = self.leaving.get(&id).copied();
            if leaving.is_some_and(|n| !voters.contains(&n) && !learners.contains(&n)) {
                self.leaving.remove(&id); // that move is done
            }
            let goes = |n: &NodeId| dead(n) || draining.contains(n);
            let holds = |n: &NodeId| voters.contains(n) || learners.contains(n);
            let step = if let Some(&l) = learners.iter().find(|l| goes(l)) {
                Some(Step::Change(ConfChange::Remove(l)))
            } else if let Some(&l) = learners.first() {
                Some(Step::Change(ConfChange::AddVoter(l)))
            } else if voters.len() > target
                && (draining.contains(&leader) || self.leaving.get(&id) == Some(&leader))
            {
                // The draining (or moved) leader is the one to go: hand its
                // leadership over first (a leader is never removed).
                voters
                    .iter()
                    .filter(|v| **v != leader && up(v) && !draining.contains(v))
                    .min_by_key(|v| (leads.get(v).copied().unwrap_or(usize::MAX), **v))
                    .map(|&v| Step::Transfer(v))
            } else if voters.len() > target {
                // One too many (a replacement was promoted): the dead or
                // draining one goes, else the one being moved away, else
                // the one least needed. Never the leader.
                voters
                    .iter()
                    .filter(|&&v| v != leader)
                    .max_by_key(|&&v| {
                        (
                            dead(&v),
                            draining.contains(&v),
                            self.leaving.get(&id) == Some(&v),
                            !up(&v),
                            load.get(&v).copied().unwrap_or(usize::MAX),
                            v,
                        )
                    })
                    .map(|&v| Step::Change(ConfChange::Remove(v)))
            } else if voters.len() < target || voters.iter().any(goes) {
                load.iter()
                    .filter(|(n, _)| !holds(n))
                    .min_by_key(|(&n, &l)| (l, n))
                    .map(|(&n, _)| Step::Change(ConfChange::AddLearner(n)))
            } else if draining.contains(&leader) {
                // Its replica stays until the leadership is elsewhere.
                voters
                    .iter()
                    .filter(|v| **v != leader && up(v) && !draining.contains(v))
                    .min_by_key(|v| (leads.get(v).copied().unwrap_or(usize::MAX), **v))
                    .map(|&v| Step::Transfer(v))
            } else {
                settled.push((id, leader));
                None
            };
            if let Some(step) = step {
                self.ask(&mut out, now, id, leader, step, &mut load, &mut leads);
            }
        }

        // Balance replica counts: from the fullest server to the emptiest.
        // A settled partition is moving no more (done, or refused).
        for (id, _) in &settled {
            self.leaving.remove(id);
            self.operator_moves.remove(id);
        }
        // A replica on its way out no longer counts where it is leaving.
        for (id, n) in &self.leaving {
            if self.map.hosts(*id).any(|h| h == *n) {
                if let Some(l) = load.get_mut(n) {
                    *l = l.saturating_sub(1);
                }
            }
        }
        let mut moving = self.leaving.len();
        // More at once in a larger cluster (a join must not take an hour),
        // about two per server that can take one.
        let moves_max = BALANCE_MOVES_MAX.max(load.len() / 2);
        for &(id, leader) in &settled {
            if moving >= moves_max {
                break;
            }
            let (Some((&min_n, &min_l)), Some((&max_n, &max_l))) = (
                load.iter().min_by_key(|(&n, &l)| (l, n)),
                load.iter().max_by_key(|(&n, &l)| (l, std::cmp::Reverse(n))),
            ) else {
                break;
            };
            if max_l <= min_l + 1 {
                break;
            }
            let voters = &self.map.partitions[&id].replicas;
            let cooling = self
                .balanced_at
                .get(&id)
                .is_some_and(|&at| now.saturating_duration_since(at) < BALANCE_COOLDOWN);
            if cooling || !voters.contains(&max_n) || voters.contains(&min_n) || max_n == leader {
                continue;
            }
            self.balanced_at.insert(id, now);
            self.leaving.insert(id, max_n);
            moving += 1;
            *load.get_mut(&max_n).unwrap() -= 1; // it will leave
            let step = Step::Change(ConfChange::AddLearner(min_n));
            self.ask(&mut out, now, id, leader, step, &mut load, &mut leads);
        }

        // Balance leader counts: every live server within one of the mean.
        let mean = leaders.len() as f64 / leads.len().max(1) as f64;
        let mut transfers = 0;
        for &(id, leader) in &settled {
            if transfers >= BALANCE_TRANSFERS_MAX || self.moves.contains_key(&id) {
                continue;
            }
            let Some(&have) = leads.get(&leader) else {
                continue;
            };
            let voters = &self.map.partitions[&id].replicas;
            let Some((&to, &to_leads)) = leads
                .iter()
                .filter(|(n, _)| voters.contains(n) && **n != leader)
                .min_by_key(|(&n, &l)| (l, n))
            else {
                continue;
            };
            let off = have as f64 > mean + 1.0 || (to_leads as f64) < mean - 1.0;
            if !off || have <= to_leads + 1 {
                continue;
            }
            transfers += 1;
            self.ask(
                &mut out,
                now,
                id,
                leader,
                Step::Transfer(to),
                &mut load,
                &mut leads,
            );
        }
        out
    }

    /// Asks the leader of every partition past a split threshold to split
    /// it at its middle key (once per [`SPLIT_RETRY`]).
    fn plan_splits(
        &mut self,
        now: Instant,
        leaders: &BTreeMap<PartitionId, (u64, NodeId)>,
        sizes: &BTreeMap<PartitionId, (u64, u64)>,
    ) -> Vec<(SocketAddr, Msg)> {
        let mut out = Vec::new();
        let over = |limit: u64, have: u64| limit > 0 && have > limit;
        for (&id, &(keys, bytes)) in sizes {
            if !(over(self.split.keys, keys) || over(self.split.bytes, bytes)) {
                continue;
            }
            let recently = self
                .split_asked
                .get(&id)
                .is_some_and(|&at| now.saturating_duration_since(at) < SPLIT_RETRY);
            let (Some(&(_, leader)), false) = (leaders.get(&id), recently) else {
                continue;
            };
            let (Some(&addr), true) = (
                self.map.servers.get(&leader),
                self.map.partitions.contains_key(&id),
            ) else {
                continue;
            };
            let req = self.next_req;
            self.next_req += 1;
            tracing::info!(
                partition = id,
                leader,
                keys,
                bytes,
                "asking for a split (past the threshold)"
            );
            self.split_asked.insert(id, now);
            out.push((
                addr,
                Msg::SplitPartition {
                    req,
                    partition: id,
                    at: None,
                },
            ));
        }
        out
    }

    /// Partition `id`'s voters and learners, as the map has them.
    fn membership(&self, id: PartitionId) -> Option<(Vec<NodeId>, Vec<NodeId>)> {
        let voters = self.map.partitions.get(&id)?.replicas.clone();
        let learners = self.map.groups.get(&id)?.learners.clone();
        Some((voters, learners))
    }

    /// Asks `leader` of partition `id` for `step` (and counts it in
    /// `load` / `leads` as if done).
    #[allow(clippy::too_many_arguments)]
    fn ask(
        &mut self,
        out: &mut Vec<(SocketAddr, Msg)>,
        now: Instant,
        id: PartitionId,
        leader: NodeId,
        step: Step,
        load: &mut BTreeMap<NodeId, usize>,
        leads: &mut BTreeMap<NodeId, usize>,
    ) {
        let Some(&addr) = self.map.servers.get(&leader) else {
            return;
        };
        let Some((voters, learners)) = self.membership(id) else {
            return;
        };
        let req = self.next_req;
        self.next_req += 1;
        let msg = match &step {
            Step::Change(change) => {
                if let ConfChange::AddLearner(n) = change {
                    if let Some(l) = load.get_mut(n) {
                        *l += 1;
                    }
                }
                tracing::info!(
                    partition = id,
                    leader,
                    ?change,
                    "asking for a membership change"
                );
                Msg::ChangeReplicas {
                    req,
                    partition: id,
                    voters: voters.clone(),
                    learners: learners.clone(),
                    change: change.clone(),
                }
            }
            Step::Transfer(to) => {
                for (n, d) in [(leader, -1isize), (*to, 1)] {
                    if let Some(l) = leads.get_mut(&n) {
                        *l = l.saturating_add_signed(d);
                    }
                }
                tracing::info!(
                    partition = id,
                    leader,
                    to,
                    "asking for a leadership transfer"
                );
                Msg::TransferLeader {
                    req,
                    partition: id,
                    to: *to,
                }
            }
        };
        self.moves.insert(
            id,
            Move {
                req,
                step,
                from: (voters, learners),
                leader,
                sent: now,
            },
        );
        out.push((addr, msg));
    }

    /// `admin drain / undrain / remove-server`: what to answer and the
    /// control state to record (then [`ManagerCore::apply_control`]), or why
    /// not.
    pub fn server_admin(
        &self,
        node: NodeId,
        action: ServerAction,
        now: Instant,
    ) -> Result<(String, ControlState), String> {
        let state = self.control_state().with(node, action);
        if !self.map.servers.contains_key(&node) {
            return Err(format!("there is no server {node} (see `admin servers`)"));
        }
        let holds = self
            .map
            .partitions
            .keys()
            .filter(|&&p| self.map.hosts(p).any(|n| n == node))
            .count();
        match action {
            ServerAction::Drain => {
                // Servers that can take its replicas: not draining, not dead.
                let others = self
                    .map
                    .servers
                    .keys()
                    .filter(|&&n| {
                        n != node
                            && !self.draining.contains(&n)
                            && self.heartbeats.state(n, now) != ServerState::Dead
                    })
                    .count();
                if others < self.replicas.min(self.map.servers.len()) {
                    return Err(format!(
                        "draining server {node} would leave {others} live servers for {} replicas \
                         per partition; add a server first (server --join)",
                        self.replicas
                    ));
                }
                tracing::info!(node, holds, "draining a server");
                Ok((
                    format!(
                        "server {node} is draining: its {holds} replicas and its leaderships move \
                         to other servers (watch `admin servers`); then \
                         `admin remove-server --node {node}`"
                    ),
                    state,
                ))
            }
            ServerAction::Undrain => Ok((format!("server {node} is no longer draining"), state)),
            ServerAction::Remove if holds > 0 => Err(format!(
                "server {node} still holds {holds} replicas: drain it first \
                 (admin drain --node {node}) and wait until it holds none"
            )),
            ServerAction::Remove => Ok((
                format!(
                    "server {node} is removed from the cluster; stop its process (its \
                         --join, if any, is refused from now on) and take it off the manager's \
                         --servers"
                ),
                state,
            )),
        }
    }

    fn register(&mut self, node_id: NodeId, addr: SocketAddr, join: bool) -> Result<(), String> {
        if addr.ip().is_unspecified() {
            return Err(format!(
                "server {node_id} advertised {addr}, which others cannot dial; set --advertise-addr"
            ));
        }
        if !self.map.servers.contains_key(&node_id) {
            if self.removed.contains(&node_id) {
                return Err(format!(
                    "server {node_id} was removed from the cluster (admin remove-server); \
                     to add a machine again, start it with a new --node-id and --join"
                ));
            }
            if !join {
                let ids: Vec<String> = self.map.servers.keys().map(|i| i.to_string()).collect();
                return Err(format!(
                    "unknown node id {node_id}: the cluster's servers are {}; \
                     start the server with --join to add it to the cluster",
                    ids.join(", ")
                ));
            }
            tracing::info!(node_id, %addr, "server joined the cluster");
            self.map.servers.insert(node_id, addr);
            self.bump_epoch();
        }
        if self
            .map
            .servers
            .insert(node_id, addr)
            .is_some_and(|old| old != addr)
        {
            tracing::info!(node_id, new = %addr, "server address changed");
            self.bump_epoch();
        }
        Ok(())
    }
}

/// What a manager asks of its control-group worker (one at a time, in order).
enum ControlJob {
    Round {
        epoch: u64,
    },
    Write {
        node: NodeId,
        action: ServerAction,
        to: SocketAddr,
        req: u64,
        text: String,
    },
}

/// What the worker answers.
enum ControlDone {
    Round(control::Round),
    Written {
        state: Option<ControlState>,
        to: SocketAddr,
        req: u64,
        result: Result<String, String>,
    },
}

/// Runs the manager until its network endpoint fails (or, with
/// `config.control`, its replica of the control group stops: it keeps its
/// log on `disk`).
pub async fn run_manager<R: Runtime, D: crate::rt::Disk>(
    rt: R,
    disk: D,
    config: ManagerConfig,
) -> io::Result<()> {
    let map = config
        .build_map()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let net = rt.bind(Some(config.listen_addr), None).await?;
    tracing::info!(
        addr = %config.listen_addr,
        partitions = map.partitions.len(),
        servers = map.servers.len(),
        peers = config.control.as_ref().map_or(1, |c| c.peers.len()),
        "manager listening"
    );
    let mut core = ManagerCore::new(map, rt.now(), config.dead_after, config.replicas)
        .with_split_thresholds(config.split);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<ControlDone>();
    let (stopped_tx, mut stopped_rx) = tokio::sync::mpsc::unbounded_channel::<io::Error>();
    let mut jobs = None;
    if let Some(control) = &config.control {
        if control.node_id as usize >= control.peers.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "manager node id {} is not a position in its {} peers",
                    control.node_id,
                    control.peers.len()
                ),
            ));
        }
        core = core.replicated(control.node_id, control.peers.clone());
        let server = crate::server::run_server(rt.clone(), disk, control.server_config());
        let stopped = stopped_tx.clone();
        rt.spawn(async move {
            let e = match server.await {
                Ok(()) => io::Error::other("stopped"),
                Err(e) => e,
            };
            let _ = stopped.send(io::Error::other(format!(
                "this manager's replica of the control group stopped: {e}"
            )));
        });
        // Where clients reach this manager: its listen port on its peer
        // address's host (a listen address of 0.0.0.0 is not dialable).
        let me = control.peers[control.node_id as usize];
        let my_addr = if config.listen_addr.ip().is_unspecified() {
            SocketAddr::new(me.ip(), config.listen_addr.port())
        } else {
            config.listen_addr
        };
        let mut worker = control::Worker::connect(rt.clone(), control, my_addr)
            .await
            .map_err(|e| io::Error::other(format!("cannot reach the control group: {e}")))?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<ControlJob>();
        jobs = Some(tx);
        let done = done_tx.clone();
        rt.spawn(async move {
            while let Some(job) = rx.recv().await {
                let out = match job {
                    ControlJob::Round { epoch } => ControlDone::Round(worker.round(epoch).await),
                    ControlJob::Write {
                        node,
                        action,
                        to,
                        req,
                        text,
                    } => {
                        let (state, result) = match worker.apply(node, action).await {
                            Ok(state) => (Some(state), Ok(text)),
                            Err(e) => (None, Err(e)),
                        };
                        ControlDone::Written {
                            state,
                            to,
                            req,
                            result,
                        }
                    }
                };
                if done.send(out).is_err() {
                    return;
                }
            }
        });
    }
    let net = std::sync::Arc::new(net);
    let mut received = crate::rt::spawn_receiver(&rt, net.clone(), 1024);
    let send = |to: SocketAddr, msg: &Msg| match encode_msg(msg) {
        Ok(bytes) => net.send(to, bytes),
        Err(e) => tracing::error!("cannot encode a message: {e}"),
    };
    let mut next_plan = rt.now() + PLAN_INTERVAL;
    // A round asked of the worker and not answered yet; drains and removals
    // being written (a round read before them must not undo them).
    let (mut round_pending, mut writes_pending) = (false, 0usize);
    loop {
        let wait = next_plan.saturating_duration_since(rt.now());
        enum Event {
            Plan,
            Received(SocketAddr, Vec<u8>),
            Control(ControlDone),
        }
        let event = tokio::select! {
            biased;
            Some(e) = stopped_rx.recv() => return Err(e),
            Some(done) = done_rx.recv() => Event::Control(done),
            _ = rt.sleep(wait) => Event::Plan,
            item = received.recv() => match item {
                Some(item) => {
                    let (from, payload) = item?;
                    Event::Received(from, payload)
                }
                None => return Err(io::Error::other("the network endpoint closed")),
            },
        };
        let now = rt.now();
        match event {
            Event::Plan => {
                next_plan = now + PLAN_INTERVAL;
                if crate::metrics::enabled() {
                    core.export_metrics(now);
                }
                if let Some(jobs) = &jobs {
                    if !round_pending {
                        round_pending = true;
                        let epoch = core.map().epoch;
                        let _ = jobs.send(ControlJob::Round { epoch });
                    }
                }
                if core.leads(now) {
                    for (to, msg) in core.plan(now) {
                        send(to, &msg);
                    }
                }
            }
            Event::Control(ControlDone::Round(round)) => {
                round_pending = false;
                let mut round = round;
                if writes_pending > 0 {
                    round.state = None; // read before a write of ours landed
                }
                core.lease(now, round);
            }
            Event::Control(ControlDone::Written {
                state,
                to,
                req,
                result,
            }) => {
                writes_pending -= 1;
                if let Some(state) = state {
                    core.apply_control(state);
                }
                send(to, &Msg::AdminReply { req, result });
            }
            Event::Received(from, payload) => {
                let msg = match decode_msg(&payload) {
                    Ok(msg) => msg,
                    Err(e) => {
                        tracing::warn!(%from, "dropping message: {e}");
                        continue;
                    }
                };
                match (msg, &jobs) {
                    // One of several managers records a drain or removal in
                    // the control group before it answers.
                    (Msg::ServerAdmin { req, node, action }, Some(jobs)) if core.leads(now) => {
                        match core.server_admin(node, action, now) {
                            Err(e) => send(
                                from,
                                &Msg::AdminReply {
                                    req,
                                    result: Err(e),
                                },
                            ),
                            // Checked against our view; recorded as a change
                            // of the stored sets (so concurrent ones both land).
                            Ok((text, _)) => {
                                writes_pending += 1;
                                let _ = jobs.send(ControlJob::Write {
                                    node,
                                    action,
                                    to: from,
                                    req,
                                    text,
                                });
                            }
                        }
                    }
                    (msg, _) => {
                        if let Some(reply) = core.handle(msg, now) {
                            send(from, &reply);
                        }
                        for (to, msg) in core.take_output() {
                            send(to, &msg);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(node_id: NodeId, addr: SocketAddr) -> Msg {
        Msg::Register {
            node_id,
            addr,
            epoch: 0,
            join: false,
            replicas: Vec::new(),
        }
    }

    fn core() -> ManagerCore {
        let config = ManagerConfig {
            listen_addr: "0.0.0.0:24000".parse().unwrap(),
            servers: vec![
                "0.0.0.0:23000".parse().unwrap(),
                "10.1.1.1:23000".parse().unwrap(),
            ],
            tables: vec![("t".into(), 100)],
            replicas: 3,
            dead_after: ManagerConfig::DEAD_AFTER_DEFAULT,
            split: SplitThresholds::default(),
            control: None,
        };
        ManagerCore::new(
            config.build_map().unwrap(),
            Instant::now(),
            config.dead_after,
            config.replicas,
        )
    }

    #[test]
    fn unspecified_listed_addresses_become_loopback() {
        let c = core();
        assert_eq!(c.map().servers[&0], "127.0.0.1:23000".parse().unwrap());
    }

    #[test]
    fn registration_updates_the_advertised_address_and_bumps_the_epoch() {
        let mut c = core();
        let addr: SocketAddr = "192.168.0.5:23000".parse().unwrap();
        let Some(Msg::RegisterReply { result: Ok(map) }) =
            c.handle(register(0, addr), Instant::now())
        else {
            panic!("expected a map");
        };
        assert_eq!(map.servers[&0], addr);
        assert_eq!(map.epoch, 2);
        // Same address again: no change.
        c.handle(register(0, addr), Instant::now());
        assert_eq!(c.map().epoch, 2);
    }

    #[test]
    fn registration_of_an_unknown_or_undialable_server_is_refused() {
        let mut c = core();
        let reply = c.handle(register(9, "127.0.0.1:1".parse().unwrap()), Instant::now());
        assert!(
            matches!(reply, Some(Msg::RegisterReply { result: Err(e) }) if e.contains("unknown node id 9"))
        );
        let reply = c.handle(register(0, "0.0.0.0:1".parse().unwrap()), Instant::now());
        assert!(matches!(reply, Some(Msg::RegisterReply { result: Err(_) })));
    }

    fn leader_report(partition: u64, conf_index: u64, voters: Vec<NodeId>) -> ReplicaStatus {
        ReplicaStatus {
            partition,
            role: ReplicaRole::Leader,
            term: 2,
            leader: Some(voters[0]),
            commit: conf_index,
            applied: conf_index,
            keys: 0,
            bytes: 0,
            config: Some(status::ReportedConfig {
                conf_index,
                voters,
                learners: vec![],
            }),
            range: None,
        }
    }

    #[test]
    fn a_restarted_manager_numbers_its_maps_above_the_servers_and_relearns_memberships() {
        let mut c = core();
        let addr: SocketAddr = "127.0.0.1:23000".parse().unwrap();
        // A server holding epoch 7 (from the manager before the restart),
        // whose leader of partition 0 reports a membership changed at 12.
        let register = Msg::Register {
            node_id: 0,
            addr,
            epoch: 7,
            join: false,
            replicas: vec![leader_report(0, 12, vec![0, 1])],
        };
        let Some(Msg::RegisterReply { result: Ok(map) }) = c.handle(register, Instant::now())
        else {
            panic!("expected a map");
        };
        assert_eq!(map.epoch, 8, "above the server's epoch");
        assert_eq!(map.groups[&0].conf_index, 12);
        // An older report (a deposed leader) does not undo it, nor does a
        // membership naming a server the map does not know.
        for stale in [
            leader_report(0, 11, vec![1]),
            leader_report(0, 13, vec![0, 9]),
        ] {
            let register = Msg::Register {
                node_id: 1,
                addr: "10.1.1.1:23000".parse().unwrap(),
                epoch: 8,
                join: false,
                replicas: vec![stale],
            };
            c.handle(register, Instant::now());
            assert_eq!(c.map().groups[&0].conf_index, 12);
            assert_eq!(c.map().epoch, 8, "nothing changed");
        }
    }

    #[test]
    fn a_restarted_manager_numbers_its_map_above_a_clients_and_only_then() {
        let mut c = core();
        let now = Instant::now();
        let get = |epoch| Msg::GetMap { req: 1, epoch };
        // A client holding epoch 9 from the manager before a restart.
        let Some(Msg::MapReply { map, .. }) = c.handle(get(9), now) else {
            panic!("no map");
        };
        assert!(map.epoch > 9, "the client must take it: {}", map.epoch);
        // Holding ours (or older), nothing changes.
        for epoch in [map.epoch, 0, 3] {
            let Some(Msg::MapReply { map: again, .. }) = c.handle(get(epoch), now) else {
                panic!("no map");
            };
            assert_eq!(again.epoch, map.epoch);
        }
    }

    #[test]
    fn nothing_is_planned_without_a_dead_server_or_a_leader() {
        let mut c = core();
        let now = Instant::now();
        assert!(c.plan(now).is_empty(), "no leader known yet");
        let register = Msg::Register {
            node_id: 0,
            addr: "127.0.0.1:23000".parse().unwrap(),
            epoch: 1,
            join: false,
            replicas: vec![leader_report(0, 0, vec![0, 1])],
        };
        c.handle(register, now);
        assert!(
            c.plan(now + Duration::from_secs(1)).is_empty(),
            "every server alive: nothing to move (2 servers, 3 replicas wanted: capped at 2)"
        );
    }
}
