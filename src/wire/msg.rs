//! Typed messages, carried one per frame payload.
//!
//! Encoding is bincode (varint integers) with a byte limit on both encode and
//! decode, so a hostile length inside a payload cannot make the decoder
//! allocate more than a frame can hold.

use super::frame::FRAME_PAYLOAD_LEN_MAX;
use crate::kv::{ApplyError, ExportPage, SessionExpired, StaleRequest, TxnOp, TxnState};
use crate::manager::status::{ClusterStatus, ReplicaStatus};
use crate::map::{NodeId, PartitionId, PartitionMap};
use crate::op::{Op, OpResult};
use crate::raft::{ConfChange, Message as RaftMessage};
use bincode::Options;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// Every message exchanged by distkv processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    /// First payload on every TCP connection: who is calling. `advertise` is
    /// the sender's dialable listen address (servers), or `None` (clients),
    /// in which case replies go back on the same connection.
    Hello { advertise: Option<SocketAddr> },

    /// Client -> manager: send me the partition map.
    GetMap {
        req: u64,
        /// The newest map epoch the client holds (0: none): a restarted
        /// manager numbers its maps above it, so the client takes them.
        epoch: u64,
    },
    /// Manager -> client.
    MapReply { req: u64, map: PartitionMap },

    /// Server -> manager, at start and then as a heartbeat, with the state
    /// of its replicas as of its last tick.
    Register {
        node_id: NodeId,
        addr: SocketAddr,
        /// The epoch of the server's map (0: none yet): a restarted manager
        /// numbers its next map above every epoch servers hold.
        epoch: u64,
        /// Started with `--join`: a manager that does not know `node_id`
        /// adds the server to the cluster instead of refusing it.
        join: bool,
        replicas: Vec<ReplicaStatus>,
    },
    /// Manager -> server: the current map, or why the server was refused.
    RegisterReply {
        result: Result<PartitionMap, String>,
    },

    /// Client -> server: run `ops` (all in `partition`) as one atomic command.
    /// `req` matches the reply to the call; `(session, seq)` makes retries
    /// safe (see `PartitionStore::execute_once`). `sent_ms`: the client's
    /// wall clock (ms since the Unix epoch) when it first sent the command,
    /// the same on every retry (see `kv::Command::sent_ms`).
    Execute {
        req: u64,
        session: u64,
        seq: u64,
        sent_ms: u64,
        partition: PartitionId,
        ops: Vec<Op>,
    },
    /// Server -> client.
    ExecuteReply {
        req: u64,
        result: Result<Vec<OpResult>, ExecError>,
    },

    /// Server -> server: Raft messages of any number of partitions' groups,
    /// batched per destination. `from` is the sending server.
    Raft {
        from: NodeId,
        messages: Vec<(PartitionId, RaftMessage)>,
    },

    /// Client (coordinator) or server (recovery) -> a partition's leader:
    /// one step of a cross-partition transaction (docs/transactions.md).
    Txn {
        req: u64,
        partition: PartitionId,
        op: TxnOp,
    },
    /// Server -> caller: the attempt's state at that partition once the
    /// step is applied (a vote, or its fate).
    TxnReply {
        req: u64,
        result: Result<TxnState, ExecError>,
    },

    /// Admin -> manager: how is the cluster?
    Status { req: u64 },
    /// Manager -> admin.
    StatusReply { req: u64, status: ClusterStatus },
    /// Admin -> a partition's leader: hand the leadership to server `to`.
    TransferLeader {
        req: u64,
        partition: PartitionId,
        to: NodeId,
    },
    /// Manager -> a partition's leader: propose `change` to the group's
    /// membership if it still is `voters` + `learners` (committed, nothing
    /// in flight), so a decision taken on a stale view is refused.
    ChangeReplicas {
        req: u64,
        partition: PartitionId,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        change: ConfChange,
    },
    /// Admin -> manager: drain a server (move its replicas and leaderships
    /// away), stop draining it, or remove it from the cluster (once it
    /// holds nothing).
    ServerAdmin {
        req: u64,
        node: NodeId,
        action: ServerAction,
    },
    /// Server -> admin or manager (and manager -> admin): what it did, or
    /// why not.
    AdminReply {
        req: u64,
        result: Result<String, String>,
    },
    /// Admin or manager -> a partition's leader: split the partition at key
    /// number `at` (`None`: at its middle key), through its log
    /// (ARCHITECTURE.md, "Range splits"). Answered with an `AdminReply`
    /// once the split applied (or was refused).
    SplitPartition {
        req: u64,
        partition: PartitionId,
        at: Option<u64>,
    },
    /// Manager -> client, admin or server: this manager does not lead the
    /// control plane (`manager --peers`); ask `leader` (its client address,
    /// if known), else another manager. Answers `GetMap`, `Status`,
    /// `ServerAdmin` and `MoveReplica` (with their `req`); a `Register` gets
    /// no answer from a manager that does not lead (it only records it).
    NotManagerLeader {
        req: u64,
        leader: Option<SocketAddr>,
    },
    /// Admin -> manager: move partition `partition`'s replica on server
    /// `from` to server `to` (a learner there, promoted once caught up,
    /// then the one on `from` removed). Answered with an `AdminReply` once
    /// the move started (or why not).
    MoveReplica {
        req: u64,
        partition: PartitionId,
        from: NodeId,
        to: NodeId,
    },
    /// Manager -> server: registration accepted, and the server's map
    /// (`epoch`) is current, so none is sent (a `RegisterReply` carries the
    /// map when the server's is older). At 30,000 partitions a map is
    /// about 1.3 MB: sending it with every heartbeat cost the manager most
    /// of its time and bandwidth.
    Registered { epoch: u64 },
    /// Client (`admin backup`) -> any replica of `partition`: a page of the
    /// copy its committed EXPORT attempt `txn` left there (`kv::export`):
    /// the rows with key numbers in `[from, to]`, up to about `max_bytes`
    /// (an empty range only keeps the copy alive). `release`: drop the copy
    /// instead (the backup is done with it).
    ExportRead {
        req: u64,
        partition: PartitionId,
        txn: crate::kv::TxnId,
        from: u64,
        to: u64,
        max_bytes: u32,
        release: bool,
    },
    /// Server -> client.
    ExportReply {
        req: u64,
        result: Result<ExportPage, ExecError>,
    },
}

/// What `admin` asks the manager to do with a server ([`Msg::ServerAdmin`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerAction {
    Drain,
    Undrain,
    Remove,
}

/// Why a server did not execute a command. Unless a variant says otherwise
/// the command was *not* applied. Retrying with the same `(session, seq)` is
/// always safe: a write is applied at most once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ExecError {
    /// This server does not serve that partition (stale map on the client).
    #[error("server {node_id} does not serve partition {partition}")]
    WrongPartition {
        node_id: NodeId,
        partition: PartitionId,
    },
    /// The server has not received its partition map from the manager yet.
    #[error("server {node_id} is starting up and has no partition map yet")]
    NotReady { node_id: NodeId },
    /// The command was refused as a whole.
    #[error(transparent)]
    Rejected(#[from] ApplyError),
    /// A delayed duplicate of a request the session has moved past.
    #[error(transparent)]
    Stale(#[from] StaleRequest),
    /// The partition no longer knows the session (idle longer than the
    /// session TTL) and the request may repeat one it ran before: not
    /// executed now, but an earlier attempt may have been.
    #[error(transparent)]
    SessionExpired(#[from] SessionExpired),
    /// This replica is not its partition's leader; `leader` is the one it
    /// knows of, if any. Not applied.
    #[error("server {node_id} is not the leader of partition {partition} (leader: {})", leader.map_or("unknown".to_string(), |l| format!("server {l}")))]
    NotLeader {
        node_id: NodeId,
        partition: PartitionId,
        leader: Option<NodeId>,
    },
    /// The command was proposed, but this server lost leadership before it
    /// committed: it *may* still be applied by the new leader. Retry with
    /// the same `(session, seq)` to learn the outcome.
    #[error("server {node_id} lost the leadership of partition {partition} while the command was in flight (new leader: {})", leader.map_or("unknown".to_string(), |l| format!("server {l}")))]
    LeaderChanged {
        node_id: NodeId,
        partition: PartitionId,
        leader: Option<NodeId>,
    },
    /// A transaction attempt's record expired at this partition (its
    /// resolution is older than the session TTL): its fate is not known
    /// here any more.
    #[error("partition {partition} no longer remembers transaction {txn}")]
    TxnForgotten { partition: PartitionId, txn: String },
    /// This replica holds no copy for that EXPORT: it has not applied the
    /// prepare yet, or lost the copy (restart, snapshot install), or the
    /// copy expired (one session TTL unused) or its attempt aborted.
    #[error("server {node_id} holds no export of transaction {txn} in partition {partition}")]
    NoExport {
        node_id: NodeId,
        partition: PartitionId,
        txn: String,
    },
}

/// Whether a client (a connection with a client certificate) may send the
/// message in `payload`: requests to the manager and to partitions, and
/// admin requests. Not: Raft, registrations and their replies, membership
/// changes, or anything a server or manager sends. Judged by the variant
/// tag alone (bincode writes it first, one byte below 251), without
/// decoding the rest.
pub fn client_may_send(payload: &[u8]) -> bool {
    // Msg's variants in declaration order; `tests` checks this table.
    const HELLO: u8 = 0;
    const GET_MAP: u8 = 1;
    const EXECUTE: u8 = 5;
    const TXN: u8 = 8;
    const STATUS: u8 = 10;
    const TRANSFER_LEADER: u8 = 12;
    const SERVER_ADMIN: u8 = 14;
    const SPLIT_PARTITION: u8 = 16;
    const MOVE_REPLICA: u8 = 18;
    const EXPORT_READ: u8 = 20;
    matches!(
        payload.first(),
        Some(
            &(HELLO
                | GET_MAP
                | EXECUTE
                | TXN
                | STATUS
                | TRANSFER_LEADER
                | SERVER_ADMIN
                | SPLIT_PARTITION
                | MOVE_REPLICA
                | EXPORT_READ)
        )
    )
}

fn options() -> impl Options {
    bincode::DefaultOptions::new().with_limit(FRAME_PAYLOAD_LEN_MAX as u64)
}

#[derive(Debug, thiserror::Error)]
#[error("malformed message: {0}")]
pub struct MsgError(#[from] bincode::Error);

/// Encodes a message as a frame payload.
pub fn encode_msg(msg: &Msg) -> Result<Vec<u8>, MsgError> {
    Ok(options().serialize(msg)?)
}

/// Decodes a frame payload. Never panics; trailing bytes are an error.
pub fn decode_msg(payload: &[u8]) -> Result<Msg, MsgError> {
    Ok(options().reject_trailing_bytes().deserialize(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Key;
    use proptest::prelude::*;

    fn sample() -> Vec<Msg> {
        let addr: SocketAddr = "127.0.0.1:23000".parse().unwrap();
        let map = PartitionMap::build(&[("t".into(), 10)], &[addr], 1).unwrap();
        vec![
            Msg::Hello {
                advertise: Some(addr),
            },
            Msg::GetMap { req: 1, epoch: 0 },
            Msg::MapReply {
                req: 1,
                map: map.clone(),
            },
            Msg::Register {
                node_id: 0,
                addr,
                epoch: 4,
                join: true,
                replicas: vec![crate::manager::status::ReplicaStatus {
                    partition: 3,
                    role: crate::manager::status::ReplicaRole::Leader,
                    term: 7,
                    leader: Some(0),
                    commit: 12,
                    applied: 11,
                    keys: 5,
                    bytes: 140,
                    config: Some(crate::manager::status::ReportedConfig {
                        conf_index: 9,
                        voters: vec![0, 1, 2],
                        learners: vec![3],
                    }),
                    range: Some(crate::manager::status::ReportedRange {
                        end: Some(40),
                        splits: vec![crate::map::SplitOff {
                            child: crate::map::split_child_id(3, 20),
                            index: 20,
                            start: 40,
                            end: None,
                            voters: vec![0, 1, 2],
                            learners: vec![],
                        }],
                    }),
                }],
            },
            Msg::ServerAdmin {
                req: 12,
                node: 4,
                action: ServerAction::Drain,
            },
            Msg::ChangeReplicas {
                req: 11,
                partition: 3,
                voters: vec![0, 1, 2],
                learners: vec![3],
                change: ConfChange::AddVoter(3),
            },
            Msg::Status { req: 9 },
            Msg::TransferLeader {
                req: 10,
                partition: 3,
                to: 1,
            },
            Msg::AdminReply {
                req: 10,
                result: Err("not the leader".into()),
            },
            Msg::SplitPartition {
                req: 13,
                partition: 3,
                at: Some(500),
            },
            Msg::NotManagerLeader {
                req: 14,
                leader: Some(addr),
            },
            Msg::MoveReplica {
                req: 15,
                partition: 2,
                from: 1,
                to: 3,
            },
            Msg::Registered { epoch: 9 },
            Msg::RegisterReply {
                result: Err("no".into()),
            },
            Msg::Execute {
                req: u64::MAX,
                session: 7,
                seq: 1,
                sent_ms: 1_800_000_000_000,
                partition: 3,
                ops: vec![
                    Op::Put {
                        key: Key::new("t", 1),
                        value: vec![0, 255, 10],
                    },
                    Op::Scan {
                        start: Key::new("t", 0),
                        end: Key::new("t", 9),
                    },
                    Op::Check {
                        key: Key::new("t", 2),
                        expected: None,
                    },
                ],
            },
            Msg::ExecuteReply {
                req: 9,
                result: Ok(vec![
                    OpResult::Get(None),
                    OpResult::Scan(vec![(Key::new("t", 1), b"x".to_vec())]),
                ]),
            },
            Msg::ExecuteReply {
                req: 9,
                result: Err(ExecError::NotReady { node_id: 2 }),
            },
            Msg::ExecuteReply {
                req: 9,
                result: Err(ExecError::Rejected(ApplyError::CheckFailed {
                    op: 1,
                    key: Key::new("t", 2),
                    actual: Some(b"v".to_vec()),
                })),
            },
        ]
    }

    /// Which messages a client certificate may send, decided per variant
    /// (a new variant must be decided here), checked against the tag table
    /// of [`client_may_send`].
    #[test]
    fn clients_may_send_requests_only() {
        fn from_clients(m: &Msg) -> bool {
            match m {
                Msg::Hello { .. }
                | Msg::GetMap { .. }
                | Msg::Execute { .. }
                | Msg::Txn { .. }
                | Msg::Status { .. }
                | Msg::TransferLeader { .. }
                | Msg::ServerAdmin { .. }
                | Msg::SplitPartition { .. }
                | Msg::MoveReplica { .. }
                | Msg::ExportRead { .. } => true,
                Msg::MapReply { .. }
                | Msg::Register { .. }
                | Msg::RegisterReply { .. }
                | Msg::ExecuteReply { .. }
                | Msg::Raft { .. }
                | Msg::TxnReply { .. }
                | Msg::StatusReply { .. }
                | Msg::ChangeReplicas { .. }
                | Msg::AdminReply { .. }
                | Msg::NotManagerLeader { .. }
                | Msg::Registered { .. }
                | Msg::ExportReply { .. } => false,
            }
        }
        let id = crate::kv::TxnId {
            session: 1,
            seq: 2,
            attempt: 0,
        };
        let mut all = sample();
        all.extend([
            Msg::Raft {
                from: 1,
                messages: Vec::new(),
            },
            Msg::Txn {
                req: 1,
                partition: 2,
                op: TxnOp::Resolve { id, commit: true },
            },
            Msg::TxnReply {
                req: 1,
                result: Ok(TxnState::Aborted(crate::kv::AbortReason::Conflict)),
            },
            Msg::ExportRead {
                req: 1,
                partition: 2,
                txn: id,
                from: 0,
                to: u64::MAX,
                max_bytes: 1 << 20,
                release: false,
            },
            Msg::ExportReply {
                req: 1,
                result: Ok(ExportPage {
                    rows: Vec::new(),
                    more: false,
                }),
            },
        ]);
        for m in &all {
            let bytes = encode_msg(m).unwrap();
            assert_eq!(client_may_send(&bytes), from_clients(m), "{m:?}");
        }
        assert!(!client_may_send(&[]));
    }

    #[test]
    fn messages_round_trip() {
        for m in sample() {
            assert_eq!(decode_msg(&encode_msg(&m).unwrap()).unwrap(), m);
        }
    }

    /// CHECK was added as the last variant of `Op`, `OpResult` and
    /// `ApplyError`, so the encodings of the older variants did not change:
    /// an older peer's messages and Raft entries still decode.
    #[test]
    fn check_variants_come_last_so_older_encodings_stay_valid() {
        let code = |op: &Op| options().serialize(op).unwrap()[0];
        let get = Op::Get {
            key: Key::new("t", 1),
        };
        let check = Op::Check {
            key: Key::new("t", 1),
            expected: None,
        };
        assert_eq!((code(&get), code(&check)), (1, 5));
        assert_eq!(options().serialize(&OpResult::Check).unwrap(), [5]);
        let failed = ApplyError::CheckFailed {
            op: 0,
            key: Key::new("t", 1),
            actual: None,
        };
        assert_eq!(options().serialize(&failed).unwrap()[0], 4);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode_msg(&Msg::GetMap { req: 1, epoch: 0 }).unwrap();
        bytes.push(0);
        assert!(decode_msg(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_msg(&bytes);
        }

        #[test]
        fn truncated_messages_are_rejected(idx in 0usize..9, cut in any::<proptest::sample::Index>()) {
            let m = &sample()[idx];
            let bytes = encode_msg(m).unwrap();
            let keep = cut.index(bytes.len());
            prop_assert!(decode_msg(&bytes[..keep]).is_err());
        }
    }
}
