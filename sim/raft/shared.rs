//! Harness-owned state shared by the node drivers, the client tasks, the
//! nemesis and the checkers. It lives outside every simulated node, so it
//! survives kills and restarts (fine in simulation: one OS thread runs the
//! whole world, and nothing here is awaited while locked).

use crate::checker::{Check, Checker, LogImage, ReadResult, Violation};
use distkv::raft::{ConfChange, Index, Membership, NodeId, Role, Term};
use madsim::time::Instant;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// A client request, delivered to a node's current incarnation.
pub enum Request {
    /// Propose `value`; answered once the proposer applied it (with its index).
    Propose {
        value: Vec<u8>,
        reply: oneshot::Sender<Result<Index, String>>,
    },
    /// A ReadIndex read of the register.
    Read {
        reply: oneshot::Sender<Result<ReadResult, String>>,
    },
    /// Hand leadership to `to` (nemesis; no answer).
    Transfer { to: NodeId },
    /// Membership changes (the operator), proposed back to back; answered
    /// at once with each one's index or why it was refused.
    ConfChanges {
        changes: Vec<ConfChange>,
        reply: oneshot::Sender<Vec<Result<Index, String>>>,
    },
}

/// What the harness knows about one node.
#[derive(Default)]
pub struct NodeView {
    /// Running (not killed; may be paused or clogged).
    pub up: bool,
    pub incarnation: u64,
    pub role: Option<Role>,
    pub term: Term,
    /// As leader: each follower's match index (for failure reports and
    /// the operator).
    pub matches: BTreeMap<NodeId, Index>,
    /// The node's commit index and membership (the newest in its log,
    /// committed or not), after its last step.
    pub commit: Index,
    pub membership: Membership,
    /// Whether the newest change of `membership` is committed (as far as
    /// the node knows).
    pub membership_committed: bool,
    pub mailbox: Option<mpsc::UnboundedSender<Request>>,
    /// Highest index applied by the current incarnation.
    pub applied_index: Index,
    /// Normal entries applied by the current incarnation.
    pub applied: BTreeMap<Index, Vec<u8>>,
    /// The snapshot the current incarnation started from or installed last
    /// (checked against every other node's state there): every committed
    /// entry at or below it is in its state machine.
    pub snapshot_index: Index,
    /// The newest published log (kept after a kill: it was a real log).
    pub log: LogImage,
}

pub struct Shared {
    pub seed: u64,
    pub start: Instant,
    /// How to rerun this seed (printed with every failure).
    pub reproduce: String,
    /// `SIM_RAFT_VERBOSE=1`: print every traced event as it happens.
    verbose: bool,
    pub views: Mutex<BTreeMap<NodeId, NodeView>>,
    pub checker: Mutex<Checker>,
    /// Nodes that just installed a snapshot from their leader (the nemesis
    /// crashes some of them at once), and the signal that one did.
    pub installs: Mutex<Vec<NodeId>>,
    pub installed: Notify,
}

impl Shared {
    pub fn new(seed: u64, reproduce: String, n: u64) -> Shared {
        Shared {
            seed,
            start: Instant::now(),
            reproduce,
            verbose: std::env::var_os("SIM_RAFT_VERBOSE").is_some(),
            views: Mutex::new((1..=n).map(|id| (id, NodeView::default())).collect()),
            checker: Mutex::new(Checker::default()),
            installs: Mutex::new(Vec::new()),
            installed: Notify::new(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        Instant::now() - self.start
    }

    /// Reports a violation: panics with the seed, the check's name and how
    /// to reproduce.
    pub fn fail(&self, v: Violation) -> ! {
        panic!(
            "seed {}: [{}] at {:?}: {}\n  reproduce: {}",
            self.seed,
            v.check,
            self.elapsed(),
            v.detail,
            self.reproduce
        )
    }

    pub fn check<T>(&self, r: Result<T, Violation>) -> T {
        r.unwrap_or_else(|v| self.fail(v))
    }

    pub fn fail_with(&self, check: Check, detail: String) -> ! {
        self.fail(Violation { check, detail })
    }

    /// Mixes an event into the trace hash.
    pub fn trace(&self, event: &str) {
        let at = self.elapsed().as_nanos();
        if self.verbose {
            println!("{:>12.6}s {event}", at as f64 / 1e9);
        }
        self.checker.lock().unwrap().trace(at, event);
    }

    /// The node that looks like the current leader: up, leader, highest term.
    pub fn leader(&self) -> Option<NodeId> {
        let views = self.views.lock().unwrap();
        views
            .iter()
            .filter(|(_, v)| v.up && v.role == Some(Role::Leader))
            .max_by_key(|(id, v)| (v.term, **id))
            .map(|(id, _)| *id)
    }

    pub fn mailbox(&self, id: NodeId) -> Option<mpsc::UnboundedSender<Request>> {
        self.views.lock().unwrap()[&id].mailbox.clone()
    }
}
