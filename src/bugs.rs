//! Deliberately broken modes, compiled only with feature `sim`, that prove
//! the simulations catch real bugs: each switch turns off one safety
//! mechanism, and some seed of the simulation must then fail.
//!
//! Switches are per thread: madsim runs each simulated seed on its own
//! thread, so seeds (and tests running in parallel) never see each other's.

use std::cell::Cell;

/// A bug that can be injected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// The server answers a write before its log record is fsynced.
    AckBeforeFsync,
    /// The partition store ignores its session table: a retried write is
    /// applied again.
    DuplicateApply,
    /// Raft's leader commits what its own log has, without a majority.
    CommitWithoutQuorum,
    /// A restarted Raft member forgets its term and vote.
    ForgetVote,
    /// Reads are served by the local state without ReadIndex.
    StaleRead,
    /// A leader heartbeats only every two election timeouts: followers of
    /// an idle group keep starting elections (safe, but unstable).
    SlowHeartbeat,
    /// A node that installs a snapshot from its leader does not keep it to
    /// send on: as leader it cannot catch up a follower behind it.
    ForgetInstalledSnapshot,
    /// Replicas that start empty (a wiped disk) vote at once, as if they
    /// had never acknowledged anything (no amnesia guard).
    NoAmnesiaGuard,
    /// The Raft-group simulation's driver answers a snapshot request with
    /// its state machine one entry behind the index it names (a follower
    /// that installs it never applies that entry).
    SnapshotOffByOne,
    /// A transaction's coordinator commits once the participants that
    /// answered prepared, counting one that refused (lost a conflict) as
    /// if it had prepared: the others apply their parts, it does not.
    TxnCommitWithoutAllPrepares,
    /// A prepared transaction holds no locks: other commands read and
    /// write its keys between its prepare and its resolution (locks
    /// released before the decision is applied).
    TxnNoLocks,
    /// Recovery commits a transaction as soon as one other participant
    /// says prepared, without hearing from all (a missing prepare).
    TxnRecoverWithMissingPrepare,
    /// Reads (ReadIndex path) ignore the write locks of prepared
    /// transactions: a read after a transaction's reply can miss its write.
    TxnReadIgnoresLocks,
    /// A Raft leader accepts a membership change while an earlier one is
    /// uncommitted, and before it committed an entry of its term (skips
    /// the `ChangeInProgress` and `NotReady` checks): two one-server
    /// changes in flight can leave the old and the new membership with
    /// disjoint majorities.
    ConfChangeUnsafe,
    /// A Raft candidate counts votes, and a leader counts acknowledgements
    /// (for the commit index and ReadIndex), from every node it knows of,
    /// not only the voters of its membership: a learner (or a node that is
    /// no longer a voter) makes up a "majority".
    RemovedMemberVotes,
    /// A replacement replica votes before it has caught up: the leader
    /// adds it straight as a voter (an `AddLearner` taken as `AddVoter`),
    /// so the dead replica it replaces is removed with the new one still
    /// empty and under the amnesia guard.
    AddVoterBeforeCatchUp,
    /// A range split gives the new partition the data as of the entry that
    /// began the split, not as of the entry where it happens (after the
    /// locks on its keys were released): the right half misses the left's
    /// last writes.
    SplitMissesLastWrites,
}

impl Bug {
    pub const ALL: [Bug; 17] = [
        Bug::AckBeforeFsync,
        Bug::DuplicateApply,
        Bug::CommitWithoutQuorum,
        Bug::ForgetVote,
        Bug::StaleRead,
        Bug::SlowHeartbeat,
        Bug::ForgetInstalledSnapshot,
        Bug::NoAmnesiaGuard,
        Bug::SnapshotOffByOne,
        Bug::TxnCommitWithoutAllPrepares,
        Bug::TxnNoLocks,
        Bug::TxnRecoverWithMissingPrepare,
        Bug::TxnReadIgnoresLocks,
        Bug::ConfChangeUnsafe,
        Bug::RemovedMemberVotes,
        Bug::AddVoterBeforeCatchUp,
        Bug::SplitMissesLastWrites,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::DuplicateApply => "duplicate-apply",
            Bug::CommitWithoutQuorum => "commit-without-quorum",
            Bug::ForgetVote => "forget-vote",
            Bug::StaleRead => "stale-read",
            Bug::SlowHeartbeat => "slow-heartbeat",
            Bug::ForgetInstalledSnapshot => "forget-installed-snapshot",
            Bug::NoAmnesiaGuard => "no-amnesia-guard",
            Bug::SnapshotOffByOne => "snapshot-off-by-one",
            Bug::TxnCommitWithoutAllPrepares => "txn-commit-without-all-prepares",
            Bug::TxnNoLocks => "txn-no-locks",
            Bug::TxnRecoverWithMissingPrepare => "txn-recover-with-missing-prepare",
            Bug::TxnReadIgnoresLocks => "txn-read-ignores-locks",
            Bug::ConfChangeUnsafe => "conf-change-unsafe",
            Bug::RemovedMemberVotes => "removed-member-votes",
            Bug::AddVoterBeforeCatchUp => "add-voter-before-catch-up",
            Bug::SplitMissesLastWrites => "split-misses-last-writes",
        }
    }

    pub fn parse(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

thread_local! {
    static ENABLED: Cell<u32> = const { Cell::new(0) };
}

/// Turns `bug` on for this thread.
pub fn enable(bug: Bug) {
    ENABLED.with(|e| e.set(e.get() | bug.bit()));
}

/// Turns every bug off for this thread.
pub fn disable_all() {
    ENABLED.with(|e| e.set(0));
}

/// Whether `bug` is on for this thread.
pub fn enabled(bug: Bug) -> bool {
    ENABLED.with(|e| e.get() & bug.bit() != 0)
}
