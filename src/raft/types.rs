//! Raft's vocabulary: terms, indexes, entries, hard state, messages.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

pub type NodeId = u64;
pub type Term = u64;
pub type Index = u64;

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryData {
    /// Appended by a new leader so it can commit entries of its own term
    /// (§5.4.2) and serve reads (§6.4).
    Noop,
    /// An application command.
    Normal(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A membership change, one server at a time (dissertation §4.1).
    ConfChange(ConfChange),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub term: Term,
    pub index: Index,
    pub data: EntryData,
}

impl Entry {
    /// Bytes of application payload (for message size limits).
    pub fn payload_len(&self) -> usize {
        match &self.data {
            EntryData::Normal(data) => data.len(),
            EntryData::Noop | EntryData::ConfChange(_) => 0,
        }
    }
}

/// One-server-at-a-time membership changes. A change takes effect as soon as
/// its entry is in a server's log (committed or not, §4.1), so a leader
/// allows only one uncommitted change at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConfChange {
    /// A non-voting member that receives the log (to catch up before voting).
    AddLearner(NodeId),
    /// Make a learner (or a new server) a voter.
    AddVoter(NodeId),
    Remove(NodeId),
}

/// The cluster membership.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    pub fn new(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        Membership {
            voters: voters.into_iter().collect(),
            learners: BTreeSet::new(),
        }
    }

    pub fn apply(&mut self, change: &ConfChange) {
        match change {
            ConfChange::AddLearner(id) => {
                if !self.voters.contains(id) {
                    self.learners.insert(*id);
                }
            }
            ConfChange::AddVoter(id) => {
                self.learners.remove(id);
                self.voters.insert(*id);
            }
            ConfChange::Remove(id) => {
                self.voters.remove(id);
                self.learners.remove(id);
            }
        }
    }

    /// Voters and learners: everyone who gets the log.
    pub fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    pub fn contains(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.learners.contains(&id)
    }

    /// Votes needed for a majority of the voters.
    pub fn quorum(&self) -> usize {
        self.voters.len() / 2 + 1
    }
}

/// What must be durable before a server answers anyone (Figure 2,
/// "Persistent state on all servers"). `commit` is kept too so a restarted
/// server can apply what it knows is committed without waiting for a leader.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    pub term: Term,
    pub vote: Option<NodeId>,
    pub commit: Index,
}

/// A snapshot's position and membership; the state machine's bytes travel
/// beside it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    pub index: Index,
    pub term: Term,
    pub membership: Membership,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub meta: SnapshotMeta,
    pub data: Arc<Vec<u8>>,
}

/// One piece of a snapshot in transit. Every chunk names the whole
/// snapshot (`meta`, `len`, `crc`), so a follower can tell the pieces of
/// one transfer from those of another (a new leader, a newer snapshot).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub meta: SnapshotMeta,
    /// Length of the whole snapshot's data, in bytes.
    pub len: u64,
    /// CRC-32 of the whole snapshot's data.
    pub crc: u32,
    /// Where `data` starts in the snapshot's data.
    pub offset: u64,
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// The last chunk: `offset + data.len() == len`.
    pub done: bool,
    /// The sender's commit index when it sent the chunk: a follower whose
    /// log the snapshot brings to it has caught up with a leader (which
    /// lifts the amnesia guard, as an append does).
    pub commit: Index,
}

/// A message between two members of one Raft group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub from: NodeId,
    pub to: NodeId,
    /// The sender's term (for `PreVote`: the term it would campaign in).
    pub term: Term,
    pub body: MessageBody,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MessageBody {
    /// Would you vote for me in `term`? Changes nobody's state (§9.6).
    PreVote {
        last_log_index: Index,
        last_log_term: Term,
    },
    PreVoteResponse {
        granted: bool,
    },
    /// RequestVote (§5.2). `transfer`: sent on a leader's request
    /// (`TimeoutNow`), so a live leader's lease does not block it.
    Vote {
        last_log_index: Index,
        last_log_term: Term,
        transfer: bool,
    },
    VoteResponse {
        granted: bool,
    },
    /// AppendEntries (§5.3).
    Append {
        prev_log_index: Index,
        prev_log_term: Term,
        entries: Vec<Entry>,
        commit: Index,
    },
    /// `Ok`: the follower's log matches through `match_index`.
    /// `Err`: it does not contain `prev_log_index`; `hint_index`/`hint_term`
    /// let the leader skip a whole conflicting term at once.
    AppendResponse(Result<Index, RejectHint>),
    /// Leader liveness, commit index, and ReadIndex confirmation (§6.4):
    /// `read_seq` is echoed back.
    Heartbeat {
        commit: Index,
        read_seq: u64,
    },
    HeartbeatResponse {
        read_seq: u64,
    },
    /// InstallSnapshot (§7), one chunk of it (the paper's `offset`, `data`
    /// and `done`). A leader keeps a small window of chunks in flight; the
    /// follower assembles them in order and installs the snapshot only once
    /// all of it arrived and its length and checksum verify.
    InstallSnapshot(SnapshotChunk),
    /// The follower holds the first `received` bytes of the snapshot at
    /// `index`. `rejected`: the chunk did not start there (a chunk was lost,
    /// or the follower started over), so the leader resends from `received`.
    SnapshotAck {
        index: Index,
        received: u64,
        rejected: bool,
    },
    /// Leadership transfer (dissertation §3.10): start an election now.
    TimeoutNow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectHint {
    /// The index the leader tried (prev_log_index).
    pub rejected: Index,
    /// The follower's last index, or the first index of its conflicting term.
    pub hint_index: Index,
    /// The term of the follower's entry at `hint_index` (0 if none).
    pub hint_term: Term,
}
