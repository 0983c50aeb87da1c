//! The replicated control plane (`manager --peers`): several managers, one
//! of which leads, sharing the state that must outlive any one of them.
//!
//! ```text
//!   manager i ──client (fixed map)──> control group: one partition of table
//!        │                            `control`, replicated by the servers
//!        └─ embedded run_server <──── that every manager runs (node id i,
//!                                     at peers[i], its own WAL)
//! ```
//! The control group is an ordinary distkv partition (same Raft, storage,
//! sessions, CHECK guards), placed by a map that is a function of
//! `--peers` ([`control_map`]), so it needs no manager of its own. It holds
//! three keys:
//! - `control0`, the **lease**: which manager leads, its client address, a
//!   counter and the highest map epoch it handed out ([`Lease`]);
//! - `control1`, the servers being drained; `control2`, the servers removed
//!   ([`ControlState`]).
//!
//! Every [`crate::manager::PLAN_INTERVAL`] each manager reads all three
//! ([`Worker::round`]). The holder renews the lease with a CHECK on the value
//! it wrote (a compare-and-set), and leads for [`LEASE_HOLD`] from the
//! moment it *sent* the renewal. Another manager takes the lease over, with
//! the same CHECK, once it has seen the value unchanged for
//! [`TAKEOVER_AFTER`] by its own clock — twice the hold, so a holder whose
//! renewal stopped has stopped planning well before (clock *rates* within
//! 2x; no clocks are compared). Leading only decides who plans moves and
//! hands maps out: every move is still a compare-and-set in the moved
//! group's log, so two managers that both think they lead cannot break a
//! partition, only do some work twice. Drains and removals are written with
//! a CHECK on the writer's lease (a fencing token), so a deposed leader's
//! write fails.
//!
//! Servers heartbeat to every manager, so each keeps the servers' reports
//! (liveness, memberships, splits) and a new leader plans from a warm view
//! at once. Clients and servers keep working while the control group has
//! no quorum, as they do while a lone manager is down.

use crate::client::{Client, ClientConfig, ClientError};
use crate::key::Key;
use crate::map::{NodeId, PartitionMap};
use crate::op::{Op, OpResult};
use crate::rt::Runtime;
use crate::server::{RaftTuning, ServerConfig};
use crate::storage::StorageConfig;
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The control group's only table.
pub const CONTROL_TABLE: &str = "control";

/// A leader leads this long after it sent the renewal that succeeded.
pub const LEASE_HOLD: Duration = Duration::from_secs(3);

/// A lease seen unchanged for this long is taken over.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(6);

/// A manager claims the lease (also its own, after a restart) only once it
/// has run this long: two heartbeat intervals, so it has every server's
/// report (memberships, splits, joined servers) before it hands maps out.
pub const WARMUP: Duration = Duration::from_secs(2);

/// Configuration of a manager that is one of several (`--peers`).
#[derive(Clone, Debug)]
pub struct ControlConfig {
    /// This manager's index in `peers`.
    pub node_id: NodeId,
    /// Every manager's control-group address (Raft traffic between managers).
    pub peers: Vec<SocketAddr>,
    /// Where this manager's replica of the control group keeps its log;
    /// `None`: in memory (the state survives while a majority of managers
    /// runs, not a restart of all of them).
    pub storage: Option<StorageConfig>,
}

impl ControlConfig {
    /// The configuration of the control-group server this manager runs.
    pub fn server_config(&self) -> ServerConfig {
        let addr = self.peers[self.node_id as usize];
        ServerConfig {
            node_id: self.node_id,
            listen_addr: addr,
            advertise_addr: addr,
            managers: Vec::new(),
            fixed_map: Some(control_map(&self.peers)),
            join: false,
            heartbeat_interval: ServerConfig::HEARTBEAT_INTERVAL_DEFAULT,
            storage: self.storage.clone(),
            raft_tick: ServerConfig::RAFT_TICK_DEFAULT,
            raft: RaftTuning::default(),
        }
    }
}

/// The control group's placement: one partition, a replica on every
/// manager.
pub fn control_map(peers: &[SocketAddr]) -> PartitionMap {
    PartitionMap::build(&[(CONTROL_TABLE.to_string(), 1)], peers, peers.len())
        .expect("a control map of at least one peer is valid")
}

fn lease_key() -> Key {
    Key::new(CONTROL_TABLE, 0)
}
fn draining_key() -> Key {
    Key::new(CONTROL_TABLE, 1)
}
fn removed_key() -> Key {
    Key::new(CONTROL_TABLE, 2)
}

/// The control state that must survive every manager: which servers an
/// operator is draining and which it removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ControlState {
    pub draining: BTreeSet<NodeId>,
    pub removed: BTreeSet<NodeId>,
}

/// A set of node ids as stored: `nodes:1,4` (values are never empty).
fn encode_set(set: &BTreeSet<NodeId>) -> Vec<u8> {
    let ids: Vec<String> = set.iter().map(|n| n.to_string()).collect();
    format!("nodes:{}", ids.join(",")).into_bytes()
}

fn decode_set(value: Option<&[u8]>) -> Result<BTreeSet<NodeId>, String> {
    let Some(value) = value else {
        return Ok(BTreeSet::new());
    };
    let text = std::str::from_utf8(value).map_err(|_| "not UTF-8".to_string())?;
    let list = text
        .strip_prefix("nodes:")
        .ok_or_else(|| format!("'{text}' does not start with 'nodes:'"))?;
    list.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("'{s}' is not a node id")))
        .collect()
}

/// Who leads the control plane: the value of `control0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: NodeId,
    /// The holder's client address (where redirected clients go).
    pub addr: SocketAddr,
    /// Bumped by every renewal, so a stalled holder's value stays the same.
    pub counter: u64,
    /// The highest map epoch the holder had handed out: a new leader
    /// numbers its maps above it.
    pub epoch: u64,
}

impl Lease {
    fn encode(&self) -> Vec<u8> {
        format!(
            "lease:{} {} {} {}",
            self.holder, self.addr, self.counter, self.epoch
        )
        .into_bytes()
    }

    fn decode(value: &[u8]) -> Option<Lease> {
        let text = std::str::from_utf8(value).ok()?.strip_prefix("lease:")?;
        let mut words = text.split(' ');
        let lease = Lease {
            holder: words.next()?.parse().ok()?,
            addr: words.next()?.parse().ok()?,
            counter: words.next()?.parse().ok()?,
            epoch: words.next()?.parse().ok()?,
        };
        words.next().is_none().then_some(lease)
    }
}

/// What a round found.
#[derive(Clone, Debug)]
pub struct Round {
    /// `None`: the control group did not answer (no quorum, or a slow one).
    pub state: Option<ControlState>,
    /// Until when this manager leads (`None`: it does not).
    pub leads_until: Option<Instant>,
    /// The leader's client address, when another manager leads.
    pub leader: Option<SocketAddr>,
    /// The highest map epoch the lease recorded.
    pub epoch: u64,
    /// While this manager leads: the lease counter at which it took the
    /// lease (its term: a new leader's is above every earlier one's).
    pub term: Option<u64>,
}

impl ControlState {
    /// This state after `action` on `node` (`admin drain`, `undrain`,
    /// `remove-server`).
    pub fn with(mut self, node: NodeId, action: crate::wire::ServerAction) -> ControlState {
        use crate::wire::ServerAction;
        match action {
            ServerAction::Drain => {
                self.draining.insert(node);
            }
            ServerAction::Undrain => {
                self.draining.remove(&node);
            }
            ServerAction::Remove => {
                self.draining.remove(&node);
                self.removed.insert(node);
            }
        }
        self
    }
}

/// The side of a manager that talks to the control group: reads the state,
/// holds or watches the lease, writes drains and removals. One request at a
/// time, in order.
pub struct Worker<R: Runtime> {
    rt: R,
    /// Its own session (holding the client) on the control group.
    session: crate::client::Session<R>,
    me: NodeId,
    my_addr: SocketAddr,
    /// The lease's value as last read, and since when (our clock).
    seen: Option<(Option<Vec<u8>>, Instant)>,
    /// The lease value we last wrote, while we hold it, and the counter at
    /// which we took it.
    held: Option<Vec<u8>>,
    term: Option<u64>,
    started: Instant,
}

impl<R: Runtime> Worker<R> {
    /// A worker for manager `config.node_id`, whose clients reach it at
    /// `my_addr`.
    pub async fn connect(
        rt: R,
        config: &ControlConfig,
        my_addr: SocketAddr,
    ) -> Result<Worker<R>, ClientError> {
        let map = control_map(&config.peers);
        let mut client_config = ClientConfig::with_managers(vec![my_addr]);
        client_config.fixed_map = Some(map);
        // A round must end well within a lease.
        client_config.command_timeout = Duration::from_millis(1500);
        client_config.attempt_timeout = Duration::from_millis(500);
        let rt_now = rt.now();
        let client = Client::connect(rt.clone(), client_config).await?;
        let session = client.session();
        Ok(Worker {
            rt,
            session,
            me: config.node_id,
            my_addr,
            seen: None,
            held: None,
            term: None,
            started: rt_now,
        })
    }

    /// Reads the control state and renews, takes over or watches the lease.
    /// `epoch`: the highest map epoch this manager handed out.
    pub async fn round(&mut self, epoch: u64) -> Round {
        let start = self.rt.now();
        let read = vec![
            Op::Get { key: lease_key() },
            Op::Get {
                key: draining_key(),
            },
            Op::Get { key: removed_key() },
        ];
        let mut round = Round {
            state: None,
            leads_until: None,
            leader: None,
            epoch: 0,
            term: None,
        };
        let results = match self.session.execute(read).await {
            Ok(results) => results,
            Err(e) => {
                tracing::debug!("control group read failed: {e}");
                self.lose();
                return round;
            }
        };
        let value = |i: usize| match results.get(i) {
            Some(OpResult::Get(v)) => v.clone(),
            _ => None,
        };
        let (raw, draining, removed) = (value(0), value(1), value(2));
        match (
            decode_set(draining.as_deref()),
            decode_set(removed.as_deref()),
        ) {
            (Ok(draining), Ok(removed)) => round.state = Some(ControlState { draining, removed }),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("the control group holds an unreadable server set: {e}")
            }
        }
        let lease = raw.as_deref().and_then(Lease::decode);
        if raw.is_some() && lease.is_none() {
            tracing::error!("the control group holds an unreadable lease; taking it over");
        }
        round.epoch = lease.as_ref().map_or(0, |l| l.epoch);
        if self.seen.as_ref().is_none_or(|(v, _)| *v != raw) {
            self.seen = Some((raw.clone(), start));
        }
        let unchanged_since = self.seen.as_ref().map_or(start, |&(_, at)| at);
        // Ours: we wrote it, or (restarted) we held it before; the CHECK
        // makes a stale claim fail. Nothing is claimed while warming up.
        let warm = start.saturating_duration_since(self.started) >= WARMUP;
        let ours = raw.is_some()
            && (self.held == raw || lease.as_ref().is_some_and(|l| l.holder == self.me));
        let expired =
            lease.is_none() || start.saturating_duration_since(unchanged_since) >= TAKEOVER_AFTER;
        tracing::debug!(?lease, ours, expired, warm, "control round");
        if !warm || (!ours && !expired) {
            self.lose();
            round.leader = lease.filter(|l| l.holder != self.me).map(|l| l.addr);
            return round;
        }
        let counter = lease.as_ref().map_or(0, |l| l.counter) + 1;
        let next = Lease {
            holder: self.me,
            addr: self.my_addr,
            counter,
            epoch: epoch.max(round.epoch),
        }
        .encode();
        let write = vec![
            Op::Check {
                key: lease_key(),
                expected: raw.clone(),
            },
            Op::Put {
                key: lease_key(),
                value: next.clone(),
            },
        ];
        match self.session.execute(write).await {
            Ok(_) => {
                if !ours {
                    tracing::info!(
                        manager = self.me,
                        previous = ?lease.as_ref().map(|l| l.holder),
                        "this manager now leads the control plane"
                    );
                }
                // A continuing hold keeps its term; a new one (taken
                // over, or reclaimed after a restart) starts one.
                if self.held.is_none() || self.term.is_none() {
                    self.term = Some(counter);
                }
                self.seen = Some((Some(next.clone()), start));
                self.held = Some(next);
                round.leads_until = Some(start + LEASE_HOLD);
                round.term = self.term;
            }
            Err(e) => {
                if ours {
                    tracing::warn!("this manager could not renew its lease: {e}");
                }
                self.lose();
                round.leader = lease.filter(|l| l.holder != self.me).map(|l| l.addr);
            }
        }
        round
    }

    /// This manager does not (or no longer) hold the lease.
    fn lose(&mut self) {
        self.held = None;
        self.term = None;
    }

    /// Records `action` on `node` in the control group, if this manager
    /// still holds the lease: reads the sets as stored and writes them back
    /// changed, guarded by the lease and by the values read (so no two
    /// writes overwrite each other). Returns the state recorded.
    pub async fn apply(
        &mut self,
        node: NodeId,
        action: crate::wire::ServerAction,
    ) -> Result<ControlState, String> {
        let not_leader = || "this manager no longer leads the control plane; retry".to_string();
        let Some(held) = self.held.clone() else {
            return Err(not_leader());
        };
        let read = vec![
            Op::Get {
                key: draining_key(),
            },
            Op::Get { key: removed_key() },
        ];
        let results = self
            .session
            .execute(read)
            .await
            .map_err(|e| format!("the control group did not answer: {e}"))?;
        let value = |i: usize| match results.get(i) {
            Some(OpResult::Get(v)) => v.clone(),
            _ => None,
        };
        let (old_draining, old_removed) = (value(0), value(1));
        let state = ControlState {
            draining: decode_set(old_draining.as_deref())?,
            removed: decode_set(old_removed.as_deref())?,
        }
        .with(node, action);
        let ops = vec![
            Op::Check {
                key: lease_key(),
                expected: Some(held),
            },
            Op::Check {
                key: draining_key(),
                expected: old_draining,
            },
            Op::Check {
                key: removed_key(),
                expected: old_removed,
            },
            Op::Put {
                key: draining_key(),
                value: encode_set(&state.draining),
            },
            Op::Put {
                key: removed_key(),
                value: encode_set(&state.removed),
            },
        ];
        match self.session.execute(ops).await {
            Ok(_) => Ok(state),
            Err(ClientError::CheckFailed { index: 0, .. }) => {
                self.lose();
                Err(not_leader())
            }
            Err(ClientError::CheckFailed { .. }) => {
                Err("the control state changed meanwhile; retry".into())
            }
            Err(e) => Err(format!("the control group did not record it: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_and_sets_round_trip_and_garbage_is_refused() {
        let lease = Lease {
            holder: 2,
            addr: "10.0.0.3:24000".parse().unwrap(),
            counter: 17,
            epoch: 40,
        };
        assert_eq!(Lease::decode(&lease.encode()), Some(lease));
        for bad in [
            &b"lease:1 x 2 3"[..],
            b"lease:1 10.0.0.3:1 2",
            b"lease:1 10.0.0.3:1 2 3 4",
            b"x",
        ] {
            assert_eq!(
                Lease::decode(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let set: BTreeSet<NodeId> = [1, 4, 9].into();
        assert_eq!(decode_set(Some(&encode_set(&set))), Ok(set));
        assert_eq!(
            decode_set(Some(&encode_set(&BTreeSet::new()))),
            Ok(BTreeSet::new())
        );
        assert_eq!(decode_set(None), Ok(BTreeSet::new()));
        assert!(decode_set(Some(b"nodes:1,x")).is_err());
        assert!(decode_set(Some(b"1,2")).is_err());
    }

    #[test]
    fn admin_actions_change_the_stored_sets() {
        use crate::wire::ServerAction;
        let s = ControlState::default()
            .with(1, ServerAction::Drain)
            .with(2, ServerAction::Drain);
        assert_eq!(s.draining, [1, 2].into());
        let s = s
            .with(1, ServerAction::Undrain)
            .with(2, ServerAction::Remove);
        assert!(s.draining.is_empty());
        assert_eq!(s.removed, [2].into());
    }

    #[test]
    fn the_control_map_is_one_partition_on_every_peer() {
        let peers: Vec<SocketAddr> = (1..=3)
            .map(|i| format!("10.0.0.{i}:24001").parse().unwrap())
            .collect();
        let map = control_map(&peers);
        assert_eq!(map.partitions.len(), 1);
        assert_eq!(map.partitions[&0].replicas, vec![0, 1, 2]);
        assert_eq!(map.partition_of(&removed_key()).map(|p| p.id), Ok(0));
    }
}
