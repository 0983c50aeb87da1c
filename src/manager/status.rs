//! What the manager knows of the cluster beyond the map: each server's
//! heartbeats and the state of its replicas, as `admin servers` and `admin
//! partitions` show it.
//!
//! ```text
//!   server --Register{status: [ReplicaStatus]}--> manager   (every heartbeat)
//!   admin  --Status--> manager --StatusReply(ClusterStatus)--> admin
//! ```
//! A server's report is as of its last Raft tick before the heartbeat, so a
//! partition's leader and applied index may lag by up to one heartbeat
//! interval. A server not heard from for [`UNREACHABLE_AFTER`] is shown as
//! unreachable, and after the manager's `--dead-after` as dead, which
//! re-replication acts on ([`super::ManagerCore::plan`]).

use crate::map::{NodeId, PartitionId, PartitionMap};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A server not heard from for this long is shown as unreachable (three
/// default heartbeat intervals).
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

/// A replica's Raft role, as reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplicaRole {
    Leader,
    Follower,
    /// Campaigning (pre-vote or vote): the group has no leader it knows of.
    Candidate,
}

/// One replica, as its server reports it in a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub partition: PartitionId,
    pub role: ReplicaRole,
    pub term: u64,
    /// The leader this replica follows, if it knows one.
    pub leader: Option<NodeId>,
    /// Raft log indexes: known committed, and applied to the store.
    pub commit: u64,
    pub applied: u64,
    /// Keys in the replica's store.
    pub keys: u64,
    /// Bytes of data in the replica's store (values plus 8 per key).
    pub bytes: u64,
    /// The group's committed membership, reported by its leader (followers
    /// and leaders with a change in flight send `None`). The manager's map
    /// follows it.
    pub config: Option<ReportedConfig>,
    /// The partition's range as its leader has applied it, with every range
    /// split off it (leaders only). The manager's map follows it too.
    pub range: Option<ReportedRange>,
}

/// A partition's range as its leader reports it: where it ends now, and the
/// ranges split off it, oldest first ([`crate::map::PartitionMap::adopt_splits`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedRange {
    pub end: Option<u64>,
    pub splits: Vec<crate::map::SplitOff>,
}

/// A group's committed membership, as its leader reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedConfig {
    /// A log index at which it holds (see `Raft::committed_membership`).
    pub conf_index: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// Whether the manager hears a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerState {
    /// Heard within [`UNREACHABLE_AFTER`].
    Up,
    /// Heard before, but not for [`UNREACHABLE_AFTER`].
    Unreachable,
    /// Not heard for the manager's `--dead-after` (or never, for that long
    /// since the manager started): considered gone for good.
    Dead,
    /// Never heard since the manager started.
    Unknown,
}

impl ServerState {
    pub fn name(self) -> &'static str {
        match self {
            ServerState::Up => "up",
            ServerState::Unreachable => "unreachable",
            ServerState::Dead => "dead",
            ServerState::Unknown => "unknown",
        }
    }
}

/// A server, as `admin servers` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: NodeId,
    pub addr: SocketAddr,
    pub state: ServerState,
    /// Milliseconds since its last heartbeat (`None`: never heard).
    pub last_heartbeat_ms: Option<u64>,
    /// Replicas the map places on it, and how many of them it reported
    /// leading in its last heartbeat.
    pub replicas: usize,
    pub leaders: usize,
    /// An operator is draining it (`admin drain`): its replicas and
    /// leaderships are moving to other servers.
    pub draining: bool,
}

/// A partition, as `admin partitions` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub id: PartitionId,
    pub table: String,
    /// Key numbers `[start, end)`; `end` is `None` for the open-ended last
    /// partition of a table.
    pub start: u64,
    pub end: Option<u64>,
    pub replicas: Vec<NodeId>,
    /// Replicas catching up before they vote (a move or re-replication in
    /// progress).
    pub learners: Vec<NodeId>,
    /// The replica that reported leading it in the highest term, among the
    /// servers that are up.
    pub leader: Option<NodeId>,
    pub term: u64,
    /// The leader's applied index, key count and bytes of data (without a
    /// leader: the highest any replica reported).
    pub applied: u64,
    pub keys: u64,
    pub bytes: u64,
    /// Replicas whose server is up and reported them.
    pub reporting: Vec<NodeId>,
}

/// The answer to `Msg::Status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub epoch: u64,
    pub servers: Vec<ServerInfo>,
    pub partitions: Vec<PartitionInfo>,
    /// The control plane, as the manager that answered sees it.
    pub managers: ManagersInfo,
    /// Membership changes under way (`admin moves`).
    pub moves: Vec<MoveInfo>,
}

/// A partition whose replicas are moving (`admin moves`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoveInfo {
    pub partition: PartitionId,
    /// What the manager last asked the partition's leader for, e.g.
    /// `add learner 3`, `promote 3`, `remove 1`, `transfer leadership to 2`
    /// (`None`: nothing asked right now, e.g. a learner still catching up).
    pub step: Option<String>,
    /// Milliseconds since that was asked.
    pub asked_ms: Option<u64>,
    /// Replicas being added (learners catching up).
    pub learners: Vec<NodeId>,
    /// The server the partition is moving away from, if known.
    pub leaving: Option<NodeId>,
    /// Why: `repair` (a dead or draining server), `balance`, or
    /// `operator` (`admin move`).
    pub reason: String,
}

/// The managers (`admin managers`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagersInfo {
    /// The answering manager (it leads): its position in `peers`, or `None`
    /// when it is the only manager.
    pub leader: Option<NodeId>,
    /// Every manager's control-group address (`--peers`); empty for a lone
    /// manager.
    pub peers: Vec<std::net::SocketAddr>,
}

/// The servers' last heartbeats.
#[derive(Debug)]
pub struct Heartbeats {
    last: BTreeMap<NodeId, (Instant, Vec<ReplicaStatus>)>,
    /// When the manager started: a server never heard from is dead once
    /// this is `dead_after` ago.
    since: Instant,
    dead_after: Duration,
}

impl Heartbeats {
    /// Counting from `now`; a server silent for `dead_after` is dead.
    pub fn new(now: Instant, dead_after: Duration) -> Heartbeats {
        Heartbeats {
            last: BTreeMap::new(),
            since: now,
            dead_after,
        }
    }

    /// Server `node` reported `replicas` at `now`.
    pub fn record(&mut self, node: NodeId, replicas: Vec<ReplicaStatus>, now: Instant) {
        self.last.insert(node, (now, replicas));
    }

    /// Forgets server `node` (removed from the cluster).
    pub fn forget(&mut self, node: NodeId) {
        self.last.remove(&node);
    }

    /// Whether `node` was heard within [`UNREACHABLE_AFTER`] of `now`.
    pub fn is_up(&self, node: NodeId, now: Instant) -> bool {
        self.last
            .get(&node)
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < UNREACHABLE_AFTER)
    }

    /// How the manager sees server `node` at `now`.
    pub fn state(&self, node: NodeId, now: Instant) -> ServerState {
        let heard = self.last.get(&node);
        let silent = now.saturating_duration_since(heard.map_or(self.since, |(at, _)| *at));
        match heard {
            _ if silent >= self.dead_after => ServerState::Dead,
            None => ServerState::Unknown,
            Some(_) if self.is_up(node, now) => ServerState::Up,
            Some(_) => ServerState::Unreachable,
        }
    }

    /// Every report from a server that is up at `now`, with its server.
    pub fn reports(&self, now: Instant) -> impl Iterator<Item = (NodeId, &ReplicaStatus)> {
        self.last
            .iter()
            .filter(move |(&node, _)| self.is_up(node, now))
            .flat_map(|(&node, (_, replicas))| replicas.iter().map(move |r| (node, r)))
    }

    /// The cluster as of `now`, from `map` and the heartbeats.
    pub fn status(&self, map: &PartitionMap, now: Instant) -> ClusterStatus {
        let up = |node: NodeId| self.is_up(node, now);
        // Reports per partition, from servers that are up.
        let mut reports: BTreeMap<PartitionId, Vec<(NodeId, &ReplicaStatus)>> = BTreeMap::new();
        for (&node, (_, replicas)) in &self.last {
            if up(node) {
                for r in replicas {
                    reports.entry(r.partition).or_default().push((node, r));
                }
            }
        }
        // In key order, table by table.
        let partitions: Vec<PartitionInfo> = map
            .tables
            .values()
            .flat_map(|t| t.partitions.iter().filter_map(|id| map.partitions.get(id)))
            .map(|p| {
                let hosts: Vec<NodeId> = map.hosts(p.id).collect();
                let seen: Vec<&(NodeId, &ReplicaStatus)> = reports
                    .get(&p.id)
                    .map(|v| v.iter().filter(|(n, _)| hosts.contains(n)).collect())
                    .unwrap_or_default();
                let leader = seen
                    .iter()
                    .filter(|(_, r)| r.role == ReplicaRole::Leader)
                    .max_by_key(|(_, r)| r.term);
                let (applied, keys, bytes) = match leader {
                    Some((_, r)) => (r.applied, r.keys, r.bytes),
                    None => seen
                        .iter()
                        .map(|(_, r)| (r.applied, r.keys, r.bytes))
                        .max()
                        .unwrap_or((0, 0, 0)),
                };
                PartitionInfo {
                    id: p.id,
                    table: p.table.clone(),
                    start: p.start,
                    end: p.end,
                    replicas: p.replicas.clone(),
                    learners: map
                        .groups
                        .get(&p.id)
                        .map(|g| g.learners.clone())
                        .unwrap_or_default(),
                    leader: leader.map(|(n, _)| *n),
                    term: seen.iter().map(|(_, r)| r.term).max().unwrap_or(0),
                    applied,
                    keys,
                    bytes,
                    reporting: seen.iter().map(|(n, _)| *n).collect(),
                }
            })
            .collect();
        let servers = map
            .servers
            .iter()
            .map(|(&id, &addr)| {
                let heard = self.last.get(&id);
                ServerInfo {
                    id,
                    addr,
                    state: self.state(id, now),
                    last_heartbeat_ms: heard
                        .map(|(at, _)| now.saturating_duration_since(*at).as_millis() as u64),
                    replicas: map
                        .partitions
                        .keys()
                        .filter(|&&p| map.hosts(p).any(|n| n == id))
                        .count(),
                    leaders: partitions.iter().filter(|p| p.leader == Some(id)).count(),
                    draining: false,
                }
            })
            .collect();
        ClusterStatus {
            epoch: map.epoch,
            servers,
            partitions,
            managers: ManagersInfo::default(),
            moves: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> PartitionMap {
        let servers: Vec<SocketAddr> = (0..3)
            .map(|i| format!("127.0.0.1:{}", 23000 + i).parse().unwrap())
            .collect();
        PartitionMap::build(&[("t".to_string(), 30)], &servers, 2).unwrap()
    }

    fn report(partition: PartitionId, role: ReplicaRole, term: u64, applied: u64) -> ReplicaStatus {
        ReplicaStatus {
            partition,
            role,
            term,
            leader: None,
            commit: applied,
            applied,
            keys: applied / 2,
            bytes: applied * 10,
            config: None,
            range: None,
        }
    }

    #[test]
    fn leaders_come_from_the_newest_term_of_servers_that_are_up() {
        let map = map();
        let start = Instant::now();
        let mut h = Heartbeats::new(start, Duration::from_secs(10));
        let p = *map.partitions.keys().next().unwrap();
        let replicas = map.partitions[&p].replicas.clone();
        let (a, b) = (replicas[0], replicas[1]);
        // `a` led in term 2; `b` leads in term 3 (a's report is stale).
        h.record(a, vec![report(p, ReplicaRole::Leader, 2, 10)], start);
        h.record(b, vec![report(p, ReplicaRole::Leader, 3, 12)], start);
        let s = h.status(&map, start + Duration::from_millis(500));
        let info = &s.partitions[0];
        assert_eq!(
            (info.leader, info.term, info.applied, info.keys),
            (Some(b), 3, 12, 6)
        );
        assert_eq!(info.reporting, vec![a, b]);
        let server = |s: &ClusterStatus, id| s.servers.iter().find(|x| x.id == id).unwrap().clone();
        assert_eq!(server(&s, b).leaders, 1);
        assert_eq!(server(&s, a).leaders, 0);
        assert_eq!(server(&s, b).state, ServerState::Up);

        // `b` goes silent: unreachable, its report no longer counts.
        h.record(
            a,
            vec![report(p, ReplicaRole::Follower, 3, 12)],
            start + UNREACHABLE_AFTER,
        );
        let later = start + UNREACHABLE_AFTER + Duration::from_millis(1);
        let s = h.status(&map, later);
        assert_eq!(server(&s, b).state, ServerState::Unreachable);
        assert_eq!(server(&s, b).last_heartbeat_ms, Some(3001));
        assert_eq!(s.partitions[0].leader, None);
        assert_eq!(s.partitions[0].reporting, vec![a]);
        let never = (0..3).find(|n| *n != a && *n != b).unwrap();
        assert_eq!(server(&s, never).state, ServerState::Unknown);

        // Silent for --dead-after (10 s here): dead; so is one never heard
        // for that long since the manager started.
        let s = h.status(&map, start + Duration::from_secs(10));
        assert_eq!(server(&s, b).state, ServerState::Dead);
        assert_eq!(server(&s, never).state, ServerState::Dead);
        assert_eq!(server(&s, a).state, ServerState::Unreachable);
    }

    #[test]
    fn replica_counts_follow_the_map() {
        let map = map();
        let now = Instant::now();
        let s = Heartbeats::new(now, Duration::from_secs(60)).status(&map, now);
        let total: usize = s.servers.iter().map(|x| x.replicas).sum();
        assert_eq!(total, map.partitions.len() * 2);
        assert!(s
            .partitions
            .iter()
            .all(|p| p.leader.is_none() && p.reporting.is_empty()));
    }
}
