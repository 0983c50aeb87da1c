//! Counts of rare internal events (elections, compactions, snapshot sends and
//! installs, checkpoints), so a simulation run can show that it exercised
//! those paths: `sim` prints the totals per run and over all runs.
//!
//! Counting happens only with feature `sim`, per thread (madsim runs each
//! seed on its own thread, so seeds never see each other's counts); in
//! production [`count`] compiles to nothing. Operators get their numbers
//! from logs today (and from metrics once they exist).

/// An event worth counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// A member became leader of its group.
    Election,
    /// A replica dropped its log before an applied index (log compaction).
    Compaction,
    /// A leader sent a snapshot (or its first chunk) to a follower.
    SnapshotSent,
    /// A follower installed a snapshot from its leader.
    SnapshotInstalled,
    /// A durable server completed a checkpoint (snapshots + log purge).
    Checkpoint,
    /// A durable server started with its disk wiped (simulated fault).
    DiskWiped,
    /// A replica dropped an idle client session (by log time).
    SessionExpired,
    /// A client committed a transaction across partitions.
    TxnCommitted,
    /// A client retried a transaction attempt that lost a conflict.
    TxnRetried,
    /// A leader resolved a transaction whose coordinator went silent.
    TxnRecovered,
    /// A request waited in a partition's queue for locks.
    TxnWaited,
    /// A transaction's coordinator crashed at a protocol step (simulated).
    CoordinatorCrash,
    /// A copy of a prepare was sent again late (simulated).
    LatePrepare,
    /// A bank transfer committed (simulation workload).
    BankTransfer,
    /// A read of every bank account was checked against the total.
    BankRead,
    /// A leader started handing its leadership over on an operator's
    /// request (simulated `admin transfer-leader`).
    LeaderTransfer,
    /// A leader proposed a change to its group's membership (add a
    /// learner, promote it, remove a replica).
    MembershipChange,
    /// A server dropped a replica its group had removed.
    ReplicaDropped,
    /// A server was lost for good (simulated).
    ServerLost,
    /// A replica became leader by a leadership transfer (not counted in
    /// `Election`).
    HandedOver,
    /// A partition split in two (counted by the leader that applied it).
    RangeSplit,
    /// A partition split off another elected its first leader (not counted
    /// in `Election`: the split asked for it).
    SplitLeader,
    /// A manager took the lead of a replicated control plane.
    ManagerLeads,
    /// An operator started moving a replica (`admin move`).
    OperatorMove,
}

impl Event {
    pub const ALL: [Event; 24] = [
        Event::Election,
        Event::Compaction,
        Event::SnapshotSent,
        Event::SnapshotInstalled,
        Event::Checkpoint,
        Event::DiskWiped,
        Event::SessionExpired,
        Event::TxnCommitted,
        Event::TxnRetried,
        Event::TxnRecovered,
        Event::TxnWaited,
        Event::CoordinatorCrash,
        Event::LatePrepare,
        Event::BankTransfer,
        Event::BankRead,
        Event::LeaderTransfer,
        Event::MembershipChange,
        Event::ReplicaDropped,
        Event::ServerLost,
        Event::HandedOver,
        Event::RangeSplit,
        Event::SplitLeader,
        Event::ManagerLeads,
        Event::OperatorMove,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Event::Election => "elections",
            Event::Compaction => "compactions",
            Event::SnapshotSent => "snapshots sent",
            Event::SnapshotInstalled => "snapshots installed",
            Event::Checkpoint => "checkpoints",
            Event::DiskWiped => "disk wipes",
            Event::SessionExpired => "session expiries",
            Event::TxnCommitted => "transactions committed",
            Event::TxnRetried => "transaction retries",
            Event::TxnRecovered => "transactions recovered",
            Event::TxnWaited => "lock waits",
            Event::CoordinatorCrash => "coordinator crashes",
            Event::LatePrepare => "late prepares",
            Event::BankTransfer => "bank transfers",
            Event::BankRead => "bank totals checked",
            Event::LeaderTransfer => "leader transfers",
            Event::MembershipChange => "membership changes",
            Event::ReplicaDropped => "replicas dropped",
            Event::ServerLost => "servers lost",
            Event::HandedOver => "leaderships handed over",
            Event::RangeSplit => "ranges split",
            Event::SplitLeader => "first leaders of split ranges",
            Event::ManagerLeads => "control-plane leaderships taken",
            Event::OperatorMove => "replicas moved by an operator",
        }
    }
}

/// Counts per [`Event`], in [`Event::ALL`] order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts(pub [u64; 24]);

impl Counts {
    pub fn get(&self, event: Event) -> u64 {
        self.0[event as usize]
    }

    pub fn add(&mut self, other: &Counts) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, event) in Event::ALL.into_iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{} {}", self.get(event), event.name())?;
        }
        Ok(())
    }
}

#[cfg(feature = "sim")]
thread_local! {
    static COUNTS: std::cell::Cell<Counts> = const { std::cell::Cell::new(Counts([0; 24])) };
}

/// Counts one `event` (a no-op without feature `sim`).
#[inline]
pub fn count(event: Event) {
    #[cfg(feature = "sim")]
    COUNTS.with(|c| {
        let mut counts = c.get();
        counts.0[event as usize] += 1;
        c.set(counts);
    });
    #[cfg(not(feature = "sim"))]
    let _ = event;
}

/// This thread's counts so far.
pub fn snapshot() -> Counts {
    #[cfg(feature = "sim")]
    return COUNTS.with(|c| c.get());
    #[cfg(not(feature = "sim"))]
    Counts::default()
}

/// Zeroes this thread's counts (at the start of a simulated run).
pub fn reset() {
    #[cfg(feature = "sim")]
    COUNTS.with(|c| c.set(Counts::default()));
}
