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

pub mod status;

use crate::map::{MapError, NodeId, PartitionId, PartitionMap};
use crate::raft::ConfChange;
use crate::rt::{Net, Runtime};
use crate::wire::{decode_msg, encode_msg, Msg};
use status::{Heartbeats, ReplicaRole, ReplicaStatus, ServerState};
use std::collections::BTreeMap;
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

/// A membership change the manager asked a partition's leader for.
#[derive(Clone, Debug)]
struct Move {
    req: u64,
    change: ConfChange,
    /// The membership it was decided on (voters, learners): done once the
    /// map shows another.
    from: (Vec<NodeId>, Vec<NodeId>),
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
    next_req: u64,
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
            next_req: 1,
        }
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
    pub fn handle(&mut self, msg: Msg, now: Instant) -> Option<Msg> {
        match msg {
            Msg::GetMap { req } => Some(Msg::MapReply {
                req,
                map: self.map.clone(),
            }),
            Msg::Register {
                node_id,
                addr,
                epoch,
                replicas,
            } => {
                let mut result = self.register(node_id, addr);
                if result.is_ok() {
                    self.seen_epoch = self.seen_epoch.max(epoch);
                    let learned = self.learn(node_id, &replicas);
                    if learned || self.map.epoch < epoch {
                        self.bump_epoch();
                    }
                    result = Ok(self.map.clone());
                    self.heartbeats.record(node_id, replicas, now);
                }
                Some(Msg::RegisterReply { result })
            }
            Msg::Status { req } => Some(Msg::StatusReply {
                req,
                status: self.heartbeats.status(&self.map, now),
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
                        tracing::debug!(?partition, change = ?m.change, "membership change refused: {why}");
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

    /// Adopts the memberships that `node`'s leaders report, when newer than
    /// the map's. Returns whether the map changed.
    fn learn(&mut self, node: NodeId, replicas: &[ReplicaStatus]) -> bool {
        let mut changed = false;
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

    /// The membership changes to ask for at `now`, one per partition at a
    /// time, each to the partition's leader: replace the replicas on dead
    /// servers (a learner on the live server with the fewest replicas, then
    /// promoted once caught up, then the dead replica removed), and bring
    /// every partition to the configured replica count.
    pub fn plan(&mut self, now: Instant) -> Vec<(SocketAddr, Msg)> {
        let mut leaders: BTreeMap<PartitionId, (u64, NodeId)> = BTreeMap::new();
        for (node, r) in self.heartbeats.reports(now) {
            if r.role == ReplicaRole::Leader
                && leaders.get(&r.partition).is_none_or(|&(t, _)| t < r.term)
            {
                leaders.insert(r.partition, (r.term, node));
            }
        }
        let states: BTreeMap<NodeId, ServerState> = self
            .map
            .servers
            .keys()
            .map(|&n| (n, self.heartbeats.state(n, now)))
            .collect();
        let up = |n: &NodeId| states.get(n) == Some(&ServerState::Up);
        let dead = |n: &NodeId| states.get(n) == Some(&ServerState::Dead);
        let mut load: BTreeMap<NodeId, usize> = states
            .iter()
            .filter(|(_, &s)| s == ServerState::Up)
            .map(|(&n, _)| (n, 0))
            .collect();
        for &p in self.map.partitions.keys() {
            for n in self.map.hosts(p) {
                if let Some(l) = load.get_mut(&n) {
                    *l += 1;
                }
            }
        }
        let target = self.replicas.min(self.map.servers.len()).max(1);
        let mut out = Vec::new();
        let ids: Vec<PartitionId> = self.map.partitions.keys().copied().collect();
        for id in ids {
            let voters = self.map.partitions[&id].replicas.clone();
            let learners = self.map.groups[&id].learners.clone();
            if let Some(m) = self.moves.get(&id) {
                let done = m.from.0 != voters || m.from.1 != learners;
                if done || now.saturating_duration_since(m.sent) >= MOVE_TIMEOUT {
                    self.moves.remove(&id);
                } else {
                    continue;
                }
            }
            let Some(&(_, leader)) = leaders.get(&id) else {
                continue;
            };
            let Some(&leader_addr) = self.map.servers.get(&leader) else {
                continue;
            };
            let holds = |n: &NodeId| voters.contains(n) || learners.contains(n);
            let change = if let Some(&l) = learners.iter().find(|l| dead(l)) {
                Some(ConfChange::Remove(l))
            } else if let Some(&l) = learners.first() {
                Some(ConfChange::AddVoter(l))
            } else if voters.len() > target {
                // One too many (a replacement was promoted): the dead one
                // goes, else the one least needed.
                voters
                    .iter()
                    .filter(|&&v| v != leader)
                    .max_by_key(|&&v| (dead(&v), !up(&v), load.get(&v).copied().unwrap_or(0), v))
                    .map(|&v| ConfChange::Remove(v))
            } else if voters.len() < target || voters.iter().any(dead) {
                load.iter()
                    .filter(|(n, _)| !holds(n))
                    .min_by_key(|(&n, &l)| (l, n))
                    .map(|(&n, _)| ConfChange::AddLearner(n))
            } else {
                None
            };
            let Some(change) = change else {
                continue;
            };
            if let ConfChange::AddLearner(n) = change {
                *load.get_mut(&n).unwrap() += 1;
            }
            tracing::info!(
                partition = id,
                leader,
                ?change,
                "asking for a membership change"
            );
            let req = self.next_req;
            self.next_req += 1;
            self.moves.insert(
                id,
                Move {
                    req,
                    change: change.clone(),
                    from: (voters.clone(), learners.clone()),
                    sent: now,
                },
            );
            out.push((
                leader_addr,
                Msg::ChangeReplicas {
                    req,
                    partition: id,
                    voters,
                    learners,
                    change,
                },
            ));
        }
        out
    }

    fn register(&mut self, node_id: NodeId, addr: SocketAddr) -> Result<PartitionMap, String> {
        let Some(known) = self.map.servers.get_mut(&node_id) else {
            return Err(format!(
                "unknown node id {node_id}: the manager's --servers lists {} servers (ids 0..{})",
                self.map.servers.len(),
                self.map.servers.len()
            ));
        };
        if addr.ip().is_unspecified() {
            return Err(format!(
                "server {node_id} advertised {addr}, which others cannot dial; set --advertise-addr"
            ));
        }
        if *known != addr {
            tracing::info!(node_id, old = %known, new = %addr, "server address changed");
            *known = addr;
            self.bump_epoch();
        }
        Ok(self.map.clone())
    }
}

/// Runs the manager until its network endpoint fails.
pub async fn run_manager<R: Runtime>(rt: R, config: ManagerConfig) -> io::Result<()> {
    let map = config
        .build_map()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let net = rt.bind(Some(config.listen_addr), None).await?;
    tracing::info!(
        addr = %config.listen_addr,
        partitions = map.partitions.len(),
        servers = map.servers.len(),
        "manager listening"
    );
    let mut core = ManagerCore::new(map, rt.now(), config.dead_after, config.replicas);
    let net = std::sync::Arc::new(net);
    // `Net::recv` is not cancel-safe: receive in a task of its own.
    let (inbox, mut received) = tokio::sync::mpsc::channel(1024);
    {
        let net = net.clone();
        rt.spawn(async move {
            loop {
                let item = net.recv().await;
                let stop = item.is_err();
                if inbox.send(item).await.is_err() || stop {
                    return;
                }
            }
        });
    }
    let send = |to: SocketAddr, msg: &Msg| match encode_msg(msg) {
        Ok(bytes) => net.send(to, bytes),
        Err(e) => tracing::error!("cannot encode a message: {e}"),
    };
    let mut next_plan = rt.now() + PLAN_INTERVAL;
    loop {
        let wait = next_plan.saturating_duration_since(rt.now());
        let item = tokio::select! {
            biased;
            _ = rt.sleep(wait) => None,
            item = received.recv() => match item {
                Some(item) => Some(item?),
                None => return Err(io::Error::other("the network endpoint closed")),
            },
        };
        let Some((from, payload)) = item else {
            next_plan = rt.now() + PLAN_INTERVAL;
            for (to, msg) in core.plan(rt.now()) {
                send(to, &msg);
            }
            continue;
        };
        let msg = match decode_msg(&payload) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(%from, "dropping message: {e}");
                continue;
            }
        };
        if let Some(reply) = core.handle(msg, rt.now()) {
            send(from, &reply);
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
            config: Some(status::ReportedConfig {
                conf_index,
                voters,
                learners: vec![],
            }),
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
                replicas: vec![stale],
            };
            c.handle(register, Instant::now());
            assert_eq!(c.map().groups[&0].conf_index, 12);
            assert_eq!(c.map().epoch, 8, "nothing changed");
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
            replicas: vec![leader_report(0, 0, vec![0, 1])],
        };
        c.handle(register, now);
        assert!(
            c.plan(now + Duration::from_secs(1)).is_empty(),
            "every server alive: nothing to move (2 servers, 3 replicas wanted: capped at 2)"
        );
    }
}
