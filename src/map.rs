//! The partition map: tables, their key ranges, and which servers hold each
//! range. The manager builds it ([`PartitionMap::build`], a pure function of
//! its configuration) and serves it; clients cache it and route by it.
//!
//! ```text
//!  table "customers", key space N = 1000, 3 servers:
//!    [0, 333) -> p0 on s0   [333, 666) -> p1 on s1   [666, inf) -> p2 on s2
//! ```
//! The last range of a table is open-ended, so numbers beyond the initial key
//! space are still valid keys.

use crate::key::Key;
use crate::op::{Op, OpError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;

pub type NodeId = u64;
pub type PartitionId = u64;

/// One key range of one table and the servers that hold it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub id: PartitionId,
    pub table: String,
    /// First key number in the range.
    pub start: u64,
    /// One past the last key number, or `None` for the open-ended last range.
    pub end: Option<u64>,
    /// Servers holding a voting replica: the voters of the partition's Raft
    /// group. The first is where clients look for the leader first. (In a
    /// replica's own store, which never changes with the membership: the
    /// group's initial voters.)
    pub replicas: Vec<NodeId>,
}

impl Partition {
    /// Whether the range holds at least one key number. Maps from the
    /// network and partitions read from disk are checked with this. (A
    /// replica's own copy may list no voters: a partition split off another
    /// starts from its parent's state, never from an initial membership.)
    pub fn is_valid_range(&self) -> bool {
        self.end.is_none_or(|end| end > self.start)
    }

    pub fn contains(&self, num: u64) -> bool {
        num >= self.start && self.end.is_none_or(|end| num < end)
    }

    /// The last key number in the range.
    pub fn last(&self) -> u64 {
        self.end.map_or(u64::MAX, |end| end - 1)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    pub name: String,
    /// Size of the initial key space `[0, key_space)`.
    pub key_space: u64,
    /// Partition ids in key order.
    pub partitions: Vec<PartitionId>,
}

/// What the map knows of a partition's Raft group besides its voters
/// ([`Partition::replicas`]), learned from the group's leader: the group's
/// membership changes are decided in its own log, and the map follows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupConfig {
    /// The group's voters when it was created. A new replica starts from
    /// them: the log replays every later change on top.
    pub initial: Vec<NodeId>,
    /// Replicas that receive the log but do not vote (yet): a replica
    /// being added catches up as a learner first.
    pub learners: Vec<NodeId>,
    /// A log index at which this membership holds, committed (0: the
    /// initial one). Only grows; a newer report replaces an older one.
    pub conf_index: u64,
    /// How many ranges the map knows were split off this partition (its
    /// range's version: only grows, with every split its group applies).
    pub splits: u64,
    /// Where the partition's range ended when its group was created. A new
    /// replica starts from it (with the initial voters), not from today's
    /// range: its log replays the splits since, and an entry from before a
    /// split must apply as it did everywhere else.
    pub initial_end: Option<u64>,
}

/// A range split off a partition: a new partition, with its own Raft group
/// on the same replicas, holding the keys from `start` on (ARCHITECTURE.md,
/// "Range splits"). Decided in the parent's log, so every replica splits at
/// the same point; the parent keeps the keys before `start`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitOff {
    /// The new partition: [`split_child_id`] of the parent and `index`.
    pub child: PartitionId,
    /// The index of the split entry in the parent's log.
    pub index: u64,
    /// The child's range when it was split off (it may have split since).
    pub start: u64,
    pub end: Option<u64>,
    /// The parent's membership at the split: the child's first.
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
}

/// The log index and term a partition split off another starts its Raft
/// log at: its replicas all begin with the same state machine (the parent's
/// keys from the split point on) as if installed from a snapshot at this
/// position, so a replica created empty (it learned of the partition from
/// the map before its own parent replica applied the split) is behind the
/// log and gets that state by snapshot, never by entries from index 1.
pub const SPLIT_BASE_INDEX: u64 = 5;
pub const SPLIT_BASE_TERM: u64 = 5;

/// The id of the partition split off `parent` by the entry at `index` of
/// the parent's log. Derived, not allocated: every replica computes the
/// same id when it applies the split, and no control-plane state is needed
/// (a restarted manager cannot hand out an id twice). The high bit tells
/// split-born ids from the initial ones (`0..`); two different `(parent,
/// index)` pairs give the same id with probability 2^-63 (SplitMix64 is a
/// bijection; the high bit halves the space), i.e. about 5e-8 for a
/// cluster that ever made a million splits.
pub fn split_child_id(parent: PartitionId, index: u64) -> PartitionId {
    use crate::hash::splitmix64;
    splitmix64(parent ^ splitmix64(index)) | (1 << 63)
}

/// Everything a client needs to route a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMap {
    /// Bumped on every change, so holders can tell which map is newer.
    pub epoch: u64,
    pub tables: BTreeMap<String, Table>,
    pub partitions: BTreeMap<PartitionId, Partition>,
    /// Where each server can be reached (its advertised address).
    pub servers: BTreeMap<NodeId, SocketAddr>,
    /// Every partition's group, beyond its voters.
    pub groups: BTreeMap<PartitionId, GroupConfig>,
}

/// Why a cluster configuration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("no servers given")]
    NoServers,
    #[error("no tables given")]
    NoTables,
    #[error("invalid table name '{0}': use letters and '_' only")]
    BadTableName(String),
    #[error("table '{0}' is listed twice")]
    DuplicateTable(String),
    #[error("table '{0}' has an empty key space; give N >= 1")]
    EmptyKeySpace(String),
    #[error("replicas must be at least 1")]
    NoReplicas,
}

impl PartitionMap {
    /// Splits each table's key space `[0, N)` into `min(servers, N)`
    /// contiguous ranges (the last one open-ended) and places `replicas`
    /// copies of each on distinct servers, rotating so that leaders and
    /// replicas spread evenly. Deterministic: the same inputs always give the
    /// same map, which is how a restarted manager recovers it.
    pub fn build(
        tables: &[(String, u64)],
        servers: &[SocketAddr],
        replicas: usize,
    ) -> Result<PartitionMap, MapError> {
        if servers.is_empty() {
            return Err(MapError::NoServers);
        }
        if tables.is_empty() {
            return Err(MapError::NoTables);
        }
        if replicas == 0 {
            return Err(MapError::NoReplicas);
        }
        let replicas = replicas.min(servers.len());
        let server_count = servers.len() as u64;
        let mut map = PartitionMap {
            epoch: 1,
            tables: BTreeMap::new(),
            partitions: BTreeMap::new(),
            servers: (0..).zip(servers.iter().copied()).collect(),
            groups: BTreeMap::new(),
        };
        let mut next_id: PartitionId = 0;
        // `rotation` continues across tables so small tables do not all land
        // on server 0.
        let mut rotation: u64 = 0;
        for (name, key_space) in tables {
            if !crate::key::is_valid_table_name(name) {
                return Err(MapError::BadTableName(name.clone()));
            }
            if map.tables.contains_key(name) {
                return Err(MapError::DuplicateTable(name.clone()));
            }
            if *key_space == 0 {
                return Err(MapError::EmptyKeySpace(name.clone()));
            }
            let count = server_count.min(*key_space);
            let mut ids = Vec::with_capacity(count as usize);
            for i in 0..count {
                // Range i is [i*N/count, (i+1)*N/count); u128 avoids overflow.
                let bound = |i: u64| ((i as u128 * *key_space as u128) / count as u128) as u64;
                let first = (rotation + i) % server_count;
                let partition = Partition {
                    id: next_id,
                    table: name.clone(),
                    start: bound(i),
                    end: (i + 1 < count).then(|| bound(i + 1)),
                    replicas: (0..replicas as u64)
                        .map(|r| (first + r) % server_count)
                        .collect(),
                };
                ids.push(next_id);
                map.groups.insert(
                    next_id,
                    GroupConfig {
                        initial: partition.replicas.clone(),
                        initial_end: partition.end,
                        ..GroupConfig::default()
                    },
                );
                map.partitions.insert(next_id, partition);
                next_id += 1;
            }
            rotation += count;
            map.tables.insert(
                name.clone(),
                Table {
                    name: name.clone(),
                    key_space: *key_space,
                    partitions: ids,
                },
            );
        }
        Ok(map)
    }

    /// Checks a map received from the network before trusting it: every
    /// table's partitions exist, are contiguous from 0 with an open end, and
    /// have replicas on known servers.
    pub fn validate(&self) -> Result<(), String> {
        for table in self.tables.values() {
            if table.partitions.is_empty() {
                return Err(format!("table {} has no partitions", table.name));
            }
            let mut next = 0;
            for (i, id) in table.partitions.iter().enumerate() {
                let p = self
                    .partitions
                    .get(id)
                    .ok_or(format!("table {} lists unknown partition {id}", table.name))?;
                let last = i + 1 == table.partitions.len();
                if p.table != table.name || p.start != next || p.end.is_none() != last {
                    return Err(format!("partition {id} does not tile table {}", table.name));
                }
                if p.replicas.is_empty() || p.replicas.iter().any(|r| !self.servers.contains_key(r))
                {
                    return Err(format!("partition {id} has no replica or an unknown one"));
                }
                let Some(group) = self.groups.get(id) else {
                    return Err(format!("partition {id} has no group configuration"));
                };
                if group
                    .learners
                    .iter()
                    .any(|l| !self.servers.contains_key(l) || p.replicas.contains(l))
                {
                    return Err(format!(
                        "partition {id} has a learner that is unknown or also a voter"
                    ));
                }
                if let Some(end) = p.end {
                    if end <= p.start {
                        return Err(format!("partition {id} is empty"));
                    }
                    next = end;
                }
            }
        }
        Ok(())
    }

    /// Servers holding a replica of `partition`, voting or not.
    pub fn hosts(&self, partition: PartitionId) -> impl Iterator<Item = NodeId> + '_ {
        let voters = self.partitions.get(&partition).map(|p| p.replicas.iter());
        let learners = self.groups.get(&partition).map(|g| g.learners.iter());
        voters
            .into_iter()
            .flatten()
            .chain(learners.into_iter().flatten())
            .copied()
    }

    /// `op` as partition `p` gets it: a SCAN is narrowed to `p`'s range,
    /// so a partition that has split since can tell that the request
    /// covers keys it no longer holds (it refuses, and the client asks for
    /// a newer map) instead of answering for its part only.
    pub fn clip(op: &Op, p: &Partition) -> Op {
        match op {
            Op::Scan { start, end } if start.num <= end.num => Op::Scan {
                start: Key::new(start.table.clone(), start.num.max(p.start)),
                end: Key::new(end.table.clone(), end.num.min(p.last())),
            },
            Op::Export { start, end } if start.num <= end.num => Op::Export {
                start: Key::new(start.table.clone(), start.num.max(p.start)),
                end: Key::new(end.table.clone(), end.num.min(p.last())),
            },
            other => other.clone(),
        }
    }

    /// Adopts the splits a partition's leader reports: every range split
    /// off `parent` that the map does not know yet becomes a partition of
    /// its own (placed on the parent's replicas at the split), and the
    /// parent's range ends at `end`, where it ends now. The map stays a tiling of every
    /// table: each split carves its child from the parent's range as it
    /// was, and a child's own later splits come with the child's report.
    /// `leader` (the reporting parent leader, whose replica of a new
    /// partition campaigns first) goes first in the new partitions'
    /// replicas, where clients look for the leader first. Returns whether
    /// anything changed (the caller bumps the epoch).
    pub fn adopt_splits(
        &mut self,
        parent: PartitionId,
        end: Option<u64>,
        splits: &[SplitOff],
        leader: Option<NodeId>,
    ) -> bool {
        let Some(known) = self.groups.get(&parent).map(|g| g.splits) else {
            return false;
        };
        if splits.len() as u64 <= known {
            return false;
        }
        let Some(p) = self.partitions.get(&parent).cloned() else {
            return false;
        };
        // Sanity: the children and the parent's new range must tile the
        // parent's range as the map has it; otherwise ignore the report
        // (a newer one will come).
        let new: Vec<&SplitOff> = splits[known as usize..].iter().collect();
        let mut pieces: Vec<(u64, Option<u64>)> = new.iter().map(|s| (s.start, s.end)).collect();
        pieces.push((p.start, end));
        pieces.sort();
        let mut next = p.start;
        for (i, (start, piece_end)) in pieces.iter().enumerate() {
            let last = i + 1 == pieces.len();
            if *start != next || (last && *piece_end != p.end) || (!last && piece_end.is_none()) {
                return false;
            }
            if let Some(e) = piece_end {
                if *e <= *start {
                    return false;
                }
                next = *e;
            }
        }
        for s in new {
            if self.partitions.contains_key(&s.child) {
                continue;
            }
            let mut voters = s.voters.clone();
            if let Some(i) = leader.and_then(|l| voters.iter().position(|&v| v == l)) {
                voters[..=i].rotate_right(1);
            }
            self.partitions.insert(
                s.child,
                Partition {
                    id: s.child,
                    table: p.table.clone(),
                    start: s.start,
                    end: s.end,
                    replicas: voters,
                },
            );
            self.groups.insert(
                s.child,
                GroupConfig {
                    // Born from the parent's state, never from an initial
                    // membership: a replica created from the map waits for
                    // a snapshot (see SPLIT_BASE_INDEX).
                    initial: Vec::new(),
                    learners: s.learners.clone(),
                    conf_index: SPLIT_BASE_INDEX,
                    splits: 0,
                    initial_end: s.end,
                },
            );
        }
        if let Some(q) = self.partitions.get_mut(&parent) {
            q.end = end;
        }
        if let Some(g) = self.groups.get_mut(&parent) {
            g.splits = splits.len() as u64;
        }
        if let Some(table) = self.tables.get_mut(&p.table) {
            let mut ids: Vec<PartitionId> = self
                .partitions
                .values()
                .filter(|q| q.table == p.table)
                .map(|q| q.id)
                .collect();
            ids.sort_by_key(|id| self.partitions[id].start);
            table.partitions = ids;
        }
        true
    }

    /// The partition holding `key`, or an error if its table is unknown.
    pub fn partition_of(&self, key: &Key) -> Result<&Partition, OpError> {
        let table = self
            .tables
            .get(&key.table)
            .ok_or_else(|| OpError::UnknownTable(key.table.clone()))?;
        // Partitions are contiguous and in key order: binary search by start.
        let idx = table
            .partitions
            .partition_point(|id| self.partitions[id].start <= key.num);
        Ok(&self.partitions[&table.partitions[idx.saturating_sub(1)]])
    }

    /// The partitions an operation touches, in key order. A SCAN may touch
    /// several; any other operation touches one.
    pub fn partitions_of(&self, op: &Op) -> Result<Vec<&Partition>, OpError> {
        match op {
            Op::Scan { start, end } | Op::Export { start, end } => {
                let first = self.partition_of(start)?;
                if start.num > end.num {
                    // An empty range: ask its start's partition, which answers
                    // with nothing.
                    return Ok(vec![first]);
                }
                let table = &self.tables[&start.table];
                Ok(table
                    .partitions
                    .iter()
                    .map(|id| &self.partitions[id])
                    .filter(|p| p.start <= end.num && p.last() >= start.num)
                    .collect())
            }
            Op::Put { key, .. }
            | Op::Get { key }
            | Op::Swap { key, .. }
            | Op::Delete { key }
            | Op::Check { key, .. } => Ok(vec![self.partition_of(key)?]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addrs(n: u16) -> Vec<SocketAddr> {
        (0..n)
            .map(|i| SocketAddr::from(([127, 0, 0, 1], 23000 + i)))
            .collect()
    }

    #[test]
    fn splits_key_space_into_contiguous_ranges_with_an_open_end() {
        let map = PartitionMap::build(&[("customers".into(), 1000)], &addrs(3), 3).unwrap();
        let ranges: Vec<_> = map.partitions.values().map(|p| (p.start, p.end)).collect();
        assert_eq!(ranges, vec![(0, Some(333)), (333, Some(666)), (666, None)]);
        // Replica sets rotate, so each server is first (where clients look
        // for the leader first) for one range.
        let first: Vec<_> = map.partitions.values().map(|p| p.replicas[0]).collect();
        assert_eq!(first, vec![0, 1, 2]);
        for p in map.partitions.values() {
            let mut r = p.replicas.clone();
            r.sort();
            r.dedup();
            assert_eq!(r.len(), 3, "replicas on distinct servers");
        }
    }

    #[test]
    fn keys_beyond_the_key_space_belong_to_the_last_range() {
        let map = PartitionMap::build(&[("t".into(), 10)], &addrs(2), 1).unwrap();
        assert_eq!(map.partition_of(&Key::new("t", 1_000_000)).unwrap().id, 1);
        assert_eq!(map.partition_of(&Key::new("t", u64::MAX)).unwrap().id, 1);
        assert_eq!(map.partition_of(&Key::new("t", 4)).unwrap().id, 0);
        assert_eq!(map.partition_of(&Key::new("t", 5)).unwrap().id, 1);
        assert!(matches!(
            map.partition_of(&Key::new("nope", 1)),
            Err(OpError::UnknownTable(_))
        ));
    }

    #[test]
    fn a_key_space_smaller_than_the_cluster_gets_fewer_partitions() {
        let map = PartitionMap::build(&[("t".into(), 2)], &addrs(5), 3).unwrap();
        assert_eq!(map.partitions.len(), 2);
    }

    #[test]
    fn built_maps_validate_and_broken_ones_do_not() {
        let map = PartitionMap::build(&[("t".into(), 100), ("u".into(), 3)], &addrs(3), 3).unwrap();
        assert_eq!(map.validate(), Ok(()));
        let mut broken = map.clone();
        broken.partitions.get_mut(&0).unwrap().replicas.clear();
        assert!(broken.validate().is_err());
        let mut broken = map.clone();
        broken.partitions.get_mut(&1).unwrap().start += 1;
        assert!(broken.validate().is_err());
        let mut broken = map;
        broken.servers.remove(&2);
        assert!(broken.validate().is_err());
    }

    #[test]
    fn replicas_are_capped_at_the_server_count() {
        let map = PartitionMap::build(&[("t".into(), 100)], &addrs(2), 3).unwrap();
        assert!(map.partitions.values().all(|p| p.replicas.len() == 2));
    }

    #[test]
    fn rejects_bad_configurations() {
        let s = addrs(1);
        assert_eq!(PartitionMap::build(&[], &s, 1), Err(MapError::NoTables));
        assert_eq!(
            PartitionMap::build(&[("t".into(), 1)], &[], 1),
            Err(MapError::NoServers)
        );
        assert!(matches!(
            PartitionMap::build(&[("t1".into(), 1)], &s, 1),
            Err(MapError::BadTableName(_))
        ));
        assert!(matches!(
            PartitionMap::build(&[("t".into(), 0)], &s, 1),
            Err(MapError::EmptyKeySpace(_))
        ));
        assert!(matches!(
            PartitionMap::build(&[("t".into(), 1), ("t".into(), 2)], &s, 1),
            Err(MapError::DuplicateTable(_))
        ));
    }

    #[test]
    fn scan_touches_every_overlapping_partition_in_order() {
        let map = PartitionMap::build(&[("t".into(), 90)], &addrs(3), 1).unwrap();
        let scan = |a, b| Op::Scan {
            start: Key::new("t", a),
            end: Key::new("t", b),
        };
        let ids = |op| -> Vec<PartitionId> {
            map.partitions_of(&op)
                .unwrap()
                .iter()
                .map(|p| p.id)
                .collect()
        };
        assert_eq!(ids(scan(0, 1000)), vec![0, 1, 2]);
        assert_eq!(ids(scan(29, 30)), vec![0, 1]);
        assert_eq!(ids(scan(30, 59)), vec![1]);
        assert_eq!(ids(scan(50, 10)), vec![1]);
    }

    proptest! {
        #[test]
        fn every_number_has_exactly_one_partition(n in 1u64..10_000, servers in 1u16..8, num: u64) {
            let map = PartitionMap::build(&[("t".into(), n)], &addrs(servers), 3).unwrap();
            let holders: Vec<_> = map.partitions.values().filter(|p| p.contains(num)).collect();
            prop_assert_eq!(holders.len(), 1);
            prop_assert_eq!(map.partition_of(&Key::new("t", num)).unwrap().id, holders[0].id);
        }
    }
}
