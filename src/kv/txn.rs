//! A partition's side of cross-partition transactions (docs/transactions.md):
//! prepared transactions and the locks they hold, and the remembered fate of
//! resolved ones. All of it is replicated state: it changes only by applying
//! log entries, and it travels in snapshots, so a new leader, a restarted
//! replica and a replica caught up by snapshot all hold the same locks.
//!
//! ```text
//!   (unknown) --Prepare, no conflict--------------> Prepared (locks held, results computed)
//!   (unknown) --Prepare, conflict, younger--------> Aborted(Conflict)        ("die")
//!   (unknown) --Prepare, conflict, older----------> (unknown)  Wait: retried later
//!   (unknown) --Prepare, invalid / CHECK fails----> Aborted(Rejected)
//!   (unknown) --Fence or Resolve(abort)-----------> Aborted(Fenced | Aborted)
//!   Prepared  --Resolve(commit)-------------------> Committed (writes applied, locks released)
//!   Prepared  --Resolve(abort)--------------------> Aborted (locks released)
//! ```
//! A transaction is committed exactly when every participant holds it
//! Prepared (or Committed): no other record decides it. A fence turns
//! "never prepared here" into a durable "never will be", so whoever asks
//! every participant gets the one answer.

use super::{ApplyError, PartitionStore};
use crate::key::Key;
use crate::map::PartitionId;
use crate::op::{Op, OpResult};
use serde::{Deserialize, Serialize};

/// How many session TTLs of log time a partition remembers the fate of a
/// resolved transaction attempt (20 minutes with the default TTL). Longer
/// costs memory (tens of bytes per transaction and participant); shorter
/// narrows the time a participant cut off with a prepared transaction can
/// still learn its fate from the others (after it, recovery never guesses
/// and keeps the locks: docs/transactions.md, "Limits").
pub const MARKER_TTLS: u64 = 4;

/// One attempt of one client command. A command retried after a conflict
/// runs as a new attempt; an attempt's fate never changes once decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TxnId {
    pub session: u64,
    pub seq: u64,
    pub attempt: u32,
}

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}#{}", self.session, self.seq, self.attempt)
    }
}

/// What a coordinator asks one participant to prepare.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    pub id: TxnId,
    /// Age for wait-die: the client's clock when the command's first
    /// attempt was sent. Smaller is older; ties broken by session.
    pub priority_ms: u64,
    /// The client's clock when this attempt was first sent (expiry rule, as
    /// for [`super::Command::sent_ms`]).
    pub sent_ms: u64,
    /// Every partition the command touches, this one included.
    pub participants: Vec<PartitionId>,
    /// This partition's operations, in command order.
    pub ops: Vec<Op>,
    /// The same session's previous transaction, which its coordinator saw
    /// committed (every participant prepared): resolved here first, so
    /// the session does not wait for (or die on) its own locks while the
    /// background resolve is still on its way.
    pub committed_before: Option<TxnId>,
}

impl Prepare {
    fn age(&self) -> (u64, u64, u64) {
        (self.priority_ms, self.id.session, self.id.seq)
    }
}

fn age_of(key: &QueueKey) -> (u64, u64, u64) {
    (key.0, key.1, key.2)
}

/// Why a transaction attempt was aborted at a partition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AbortReason {
    /// It conflicted with an older prepared transaction ("die"): retry.
    Conflict,
    /// Refused as a whole (invalid, a failed CHECK, limits): deterministic.
    Rejected(ApplyError),
    /// Marked aborted by recovery before it prepared here.
    Fenced,
    /// Aborted by its coordinator or by recovery after it prepared.
    Aborted,
    /// Arrived more than half a session TTL after it was sent, unknown here.
    Expired,
    /// Its session ran a later command here: a late duplicate.
    Stale,
}

/// A transaction attempt's state at one partition, as a vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnState {
    /// Locks held; `results` are this partition's results, valid at every
    /// instant until resolution.
    Prepared {
        results: Vec<OpResult>,
    },
    Committed {
        results: Vec<OpResult>,
    },
    Aborted(AbortReason),
}

/// What applying a transaction entry came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The attempt's state here (a vote, or its final fate).
    State(TxnState),
    /// It conflicts with a younger prepared transaction: it waits in the
    /// queue, and its vote comes out of [`PartitionStore::take_finished`].
    Wait,
    /// Resolve or fence of an attempt this partition no longer knows and
    /// cannot decide (its record expired).
    Unknown,
}

/// A request waiting in a partition's queue for locks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) enum Waiting {
    Command(super::Command),
    Prepare(Prepare),
}

/// Queue order: age (the client's clock when the command was first sent),
/// then session, sequence number and attempt.
pub(super) type QueueKey = (u64, u64, u64, u32);

/// Names a queued request, for the leader holding its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum WaitKey {
    Command { session: u64, seq: u64 },
    Txn(TxnId),
}

/// A queued request that finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finished {
    Command {
        key: WaitKey,
        outcome: Result<super::Outcome, super::SessionError>,
    },
    Txn {
        key: WaitKey,
        state: TxnState,
    },
}

impl Waiting {
    fn key(&self) -> QueueKey {
        match self {
            Waiting::Command(c) => (c.sent_ms, c.session, c.seq, 0),
            Waiting::Prepare(p) => (p.priority_ms, p.id.session, p.id.seq, p.id.attempt),
        }
    }

    pub(super) fn ops(&self) -> &[Op] {
        match self {
            Waiting::Command(c) => &c.ops,
            Waiting::Prepare(p) => &p.ops,
        }
    }

    fn wait_key(&self) -> WaitKey {
        match self {
            Waiting::Command(c) => WaitKey::Command {
                session: c.session,
                seq: c.seq,
            },
            Waiting::Prepare(p) => WaitKey::Txn(p.id),
        }
    }
}

/// What the wait-die rule says about a prepare.
enum Decision {
    /// Take the locks now.
    Go,
    /// Wait in the queue (only for younger lock holders).
    Wait,
    /// Abort: an older transaction holds or waits for these keys.
    Die,
}

/// A transaction attempt as a partition records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct TxnRecord {
    pub(super) state: TxnState,
    /// Log time when it was resolved here (expiry, like sessions).
    pub(super) done_ms: u64,
}

/// A transaction entry of the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Prepare(Prepare),
    /// The decision, from the coordinator or from recovery.
    Resolve {
        id: TxnId,
        commit: bool,
    },
    /// Recovery's question "did it prepare here?", which also makes the
    /// answer final: an attempt unknown here is recorded aborted.
    Fence {
        id: TxnId,
        /// When the attempt was sent (from its prepare): a partition that
        /// does not know an attempt this old cannot tell whether it
        /// resolved and forgot it, so it does not guess.
        sent_ms: u64,
    },
    /// Several decisions in one entry (a coordinator's decisions for this
    /// partition gathered while they waited to be sent), each applied as a
    /// [`TxnOp::Resolve`], then optionally a prepare that carries them.
    /// Answered like its prepare, or without one like its last decision.
    Batch {
        decisions: Vec<Resolution>,
        prepare: Option<Prepare>,
    },
}

/// A decided transaction attempt: committed (every participant was seen
/// prepared) or aborted (some participant was seen aborted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub id: TxnId,
    pub commit: bool,
}

/// The id [`TxnOp::id`] gives an empty batch (never sent).
const NO_TXN: TxnId = TxnId {
    session: 0,
    seq: 0,
    attempt: 0,
};

impl TxnOp {
    /// The attempt the step is about (whose state it answers).
    pub fn id(&self) -> TxnId {
        match self {
            TxnOp::Prepare(p) => p.id,
            TxnOp::Resolve { id, .. } | TxnOp::Fence { id, .. } => *id,
            TxnOp::Batch {
                prepare: Some(p), ..
            } => p.id,
            TxnOp::Batch {
                decisions,
                prepare: None,
            } => decisions.last().map_or(NO_TXN, |d| d.id),
        }
    }
}

/// What an operation reads or writes, for conflicts.
enum Footprint<'a> {
    Key(&'a Key),
    Range(&'a Key, &'a Key),
}

fn footprint(op: &Op) -> (Footprint<'_>, bool) {
    match op {
        Op::Put { key, .. } | Op::Swap { key, .. } | Op::Delete { key } => {
            (Footprint::Key(key), true)
        }
        Op::Get { key } | Op::Check { key, .. } => (Footprint::Key(key), false),
        Op::Scan { start, end } | Op::Export { start, end } => {
            (Footprint::Range(start, end), false)
        }
    }
}

fn span<'a>(f: &Footprint<'a>) -> (&'a str, u64, u64) {
    match *f {
        Footprint::Key(k) => (&k.table, k.num, k.num),
        Footprint::Range(s, e) => (&s.table, s.num, e.num),
    }
}

fn overlaps(a: &Footprint<'_>, b: &Footprint<'_>) -> bool {
    let (ta, lo_a, hi_a) = span(a);
    let (tb, lo_b, hi_b) = span(b);
    ta == tb && lo_a <= hi_b && lo_b <= hi_a
}

/// Whether two commands' operations conflict: one writes what the other
/// reads or writes.
pub fn conflicts(a: &[Op], b: &[Op]) -> bool {
    a.iter().any(|x| {
        let (fx, wx) = footprint(x);
        b.iter().any(|y| {
            let (fy, wy) = footprint(y);
            (wx || wy) && overlaps(&fx, &fy)
        })
    })
}

impl PartitionStore {
    /// The prepared transactions whose locks `ops` would conflict with.
    fn holders<'a>(&'a self, ops: &'a [Op]) -> impl Iterator<Item = &'a Prepare> + 'a {
        // Injected bug: prepared transactions hold no locks.
        let no_locks = crate::bug!(TxnNoLocks);
        self.prepared
            .values()
            .filter(move |p| !no_locks && conflicts(&p.ops, ops))
    }

    /// Whether `ops` touch anything a prepared transaction has locked: a
    /// command that does must wait for its resolution.
    pub fn is_blocked(&self, ops: &[Op]) -> bool {
        self.holders(ops).next().is_some()
    }

    /// How many transactions hold locks here.
    pub fn prepared_count(&self) -> usize {
        self.prepared.len()
    }

    /// The attempts prepared here and not resolved yet, with their
    /// participants (recovery's to-do list).
    pub fn prepared_txns(&self) -> impl Iterator<Item = (TxnId, &[PartitionId], u64)> + '_ {
        self.prepared
            .iter()
            .map(|(id, p)| (*id, p.participants.as_slice(), p.sent_ms))
    }

    /// The state of an attempt here, if known.
    pub fn txn_state(&self, id: &TxnId) -> Option<&TxnState> {
        self.txns.get(id).map(|r| &r.state)
    }

    /// Applies a transaction entry (after log time and expiry were advanced
    /// by the caller). Deterministic: every replica decides the same.
    pub fn apply_txn(&mut self, op: &TxnOp, session_ttl_ms: u64) -> TxnOutcome {
        match op {
            TxnOp::Prepare(p) => self.apply_prepare(p, session_ttl_ms),
            TxnOp::Resolve { id, commit } => {
                self.unqueue(*id);
                let outcome = self.resolve(*id, *commit);
                self.drain_queue();
                outcome
            }
            TxnOp::Batch { decisions, prepare } => {
                // Each decision as its own Resolve would apply it; the queue
                // runs once, after all of them released their locks (still
                // oldest first, and in the step that frees its keys).
                let mut outcome = TxnOutcome::Unknown;
                for d in decisions {
                    self.unqueue(d.id);
                    outcome = self.resolve(d.id, d.commit);
                }
                if !decisions.is_empty() {
                    self.drain_queue();
                }
                match prepare {
                    Some(p) => self.apply_prepare(p, session_ttl_ms),
                    None => outcome,
                }
            }
            TxnOp::Fence { id, sent_ms } => {
                self.unqueue(*id);
                let outcome = match self.txns.get(id) {
                    Some(r) => TxnOutcome::State(r.state.clone()),
                    // So old that it may have been resolved here and
                    // forgotten: do not claim it aborted.
                    None if sent_ms
                        .saturating_add(session_ttl_ms.saturating_mul(MARKER_TTLS - 1))
                        < self.log_time_ms =>
                    {
                        TxnOutcome::Unknown
                    }
                    None => self.refuse(*id, AbortReason::Fenced),
                };
                self.drain_queue();
                outcome
            }
        }
    }

    fn apply_prepare(&mut self, p: &Prepare, session_ttl_ms: u64) -> TxnOutcome {
        if let Some(before) = p.committed_before {
            // Only ever the same session's earlier transaction.
            if before.session == p.id.session
                && before.seq < p.id.seq
                && self.prepared.contains_key(&before)
            {
                self.resolve(before, true);
                self.drain_queue();
            }
        }
        if self.is_queued(&WaitKey::Txn(p.id)) {
            return TxnOutcome::Wait;
        }
        self.prepare(p, session_ttl_ms)
    }

    /// Drops waiting prepares of earlier attempts of `id`'s command.
    fn unqueue_earlier(&mut self, id: TxnId) {
        let earlier: Vec<TxnId> = self
            .queue
            .values()
            .filter_map(|w| match w {
                Waiting::Prepare(p)
                    if p.id.session == id.session
                        && p.id.seq == id.seq
                        && p.id.attempt < id.attempt =>
                {
                    Some(p.id)
                }
                _ => None,
            })
            .collect();
        for e in earlier {
            self.unqueue(e);
            self.refuse(e, AbortReason::Aborted);
        }
    }

    /// Drops a waiting prepare of `id` (being aborted or fenced).
    fn unqueue(&mut self, id: TxnId) {
        self.queue
            .retain(|_, w| !matches!(w, Waiting::Prepare(p) if p.id == id));
    }

    fn prepare(&mut self, p: &Prepare, session_ttl_ms: u64) -> TxnOutcome {
        if let Some(r) = self.txns.get(&p.id) {
            return TxnOutcome::State(r.state.clone());
        }
        // A coordinator starts a new attempt only after an earlier one was
        // aborted somewhere: an earlier attempt still prepared here is dead.
        let earlier: Vec<TxnId> = self
            .prepared
            .keys()
            .filter(|id| {
                id.session == p.id.session && id.seq == p.id.seq && id.attempt < p.id.attempt
            })
            .copied()
            .collect();
        let released = !earlier.is_empty();
        for id in earlier {
            self.resolve(id, false);
        }
        self.unqueue_earlier(p.id);
        if released {
            self.drain_queue();
        }
        // Like a single-partition command: once the session ran a later
        // command here, an older one never runs (a late duplicate).
        let last = self.sessions.get(&p.id.session).map(|r| r.seq);
        if last.is_some_and(|last| last > p.id.seq) {
            return self.refuse(p.id, AbortReason::Stale);
        }
        if last.is_none() && p.sent_ms.saturating_add(session_ttl_ms / 2) < self.log_time_ms {
            return self.refuse(p.id, AbortReason::Expired);
        }
        // And once this one is here, older ones of the session are fenced
        // (nothing to replay on a retry: the transaction table answers it).
        if last.is_none_or(|last| last < p.id.seq) {
            self.record(p.id.session, p.id.seq, None);
        }
        if let Err(e) = self.validate(&p.ops) {
            return self.refuse(p.id, AbortReason::Rejected(e));
        }
        if self.split_blocks(&p.ops) {
            // Its keys are about to move to a new partition: retried, it
            // goes there (or here again, if it stays on this side).
            return self.refuse(p.id, AbortReason::Conflict);
        }
        match self.decide(p, None) {
            Decision::Die => self.refuse(p.id, AbortReason::Conflict),
            Decision::Wait => {
                self.kill_younger_waiters(p);
                self.queue.insert(
                    Waiting::Prepare(p.clone()).key(),
                    Waiting::Prepare(p.clone()),
                );
                TxnOutcome::Wait
            }
            Decision::Go => self.take_locks(p),
        }
    }

    /// Wait-die (docs/transactions.md): a transaction never waits for an
    /// older one, so waits cannot form a cycle; one that dies is retried
    /// with its age and becomes the oldest in time, so none starves.
    /// - an older prepared holder of a conflicting lock: die;
    /// - only younger holders: wait;
    /// - a newcomer behind an older waiting request (transaction or
    ///   command) on these keys: die, so it cannot overtake it.
    fn decide(&self, p: &Prepare, queued: Option<QueueKey>) -> Decision {
        let mut held = false;
        for h in self.holders(&p.ops) {
            if h.age() < p.age() {
                return Decision::Die;
            }
            held = true;
        }
        if held {
            return Decision::Wait;
        }
        if queued.is_none()
            && self
                .queue
                .iter()
                .any(|(k, w)| age_of(k) < p.age() && conflicts(w.ops(), &p.ops))
        {
            return Decision::Die;
        }
        Decision::Go
    }

    /// Younger transactions waiting for keys `p` takes or waits for would
    /// wait for an older one: they die.
    fn kill_younger_waiters(&mut self, p: &Prepare) {
        let doomed: Vec<QueueKey> = self
            .queue
            .iter()
            .filter(|(k, w)| {
                matches!(w, Waiting::Prepare(_))
                    && age_of(k) > p.age()
                    && conflicts(w.ops(), &p.ops)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            let Some(Waiting::Prepare(w)) = self.queue.remove(&k) else {
                continue;
            };
            let TxnOutcome::State(state) = self.refuse(w.id, AbortReason::Conflict) else {
                continue;
            };
            self.finished.push(Finished::Txn {
                key: WaitKey::Txn(w.id),
                state,
            });
        }
    }

    /// Whether a command must wait: a prepared transaction holds what it
    /// touches, or an older queued request waits for it.
    pub(super) fn command_must_wait(&self, c: &super::Command, queued: Option<QueueKey>) -> bool {
        let me = Waiting::Command(c.clone()).key();
        self.holders(&c.ops).next().is_some()
            || self
                .queue
                .iter()
                .any(|(k, w)| Some(*k) != queued && *k < me && conflicts(w.ops(), &c.ops))
    }

    /// Queues a command that must wait (unless it is the queued one). Its
    /// session records its sequence number now, as if it ran: a later
    /// command of the session that runs first makes it stale, so it never
    /// runs after a later one.
    pub(super) fn wait(
        &mut self,
        c: &super::Command,
        queued: Option<QueueKey>,
    ) -> super::SessionError {
        if queued.is_none() {
            let w = Waiting::Command(c.clone());
            self.queue.insert(w.key(), w);
            let last = self.sessions.get(&c.session).map(|r| r.seq);
            if last.is_none_or(|last| last < c.seq) {
                self.record(c.session, c.seq, None);
            }
        }
        super::SessionError::Queued
    }

    /// Drops the queued commands of `session`, which expired.
    pub(super) fn expire_queued(&mut self, session: u64, ttl_ms: u64) {
        let doomed: Vec<QueueKey> = self
            .queue
            .iter()
            .filter(|(_, w)| matches!(w, Waiting::Command(c) if c.session == session))
            .map(|(k, _)| *k)
            .collect();
        for k in doomed {
            let Some(Waiting::Command(c)) = self.queue.remove(&k) else {
                continue;
            };
            self.finished.push(Finished::Command {
                key: WaitKey::Command {
                    session,
                    seq: c.seq,
                },
                outcome: Err(super::SessionError::Expired(super::SessionExpired {
                    session,
                    seq: c.seq,
                    partition: self.range.id,
                    ttl_s: ttl_ms / 1000,
                })),
            });
        }
    }

    /// Whether a request is waiting in the queue.
    pub fn is_queued(&self, key: &WaitKey) -> bool {
        self.queue.values().any(|w| w.wait_key() == *key)
    }

    /// How many requests wait in the queue.
    pub fn queued_count(&self) -> usize {
        self.queue.len()
    }

    /// Queued requests that finished while applying the last entries.
    pub fn take_finished(&mut self) -> Vec<Finished> {
        std::mem::take(&mut self.finished)
    }

    /// Runs what can run in the queue, oldest first, after locks were
    /// released, in the same step, so nothing newer overtakes it.
    fn drain_queue(&mut self) {
        loop {
            let mut progressed = false;
            let keys: Vec<QueueKey> = self.queue.keys().copied().collect();
            for k in keys {
                let Some(w) = self.queue.get(&k).cloned() else {
                    continue;
                };
                match w {
                    Waiting::Prepare(p) => match self.decide(&p, Some(k)) {
                        Decision::Wait => {}
                        Decision::Die => {
                            self.queue.remove(&k);
                            if let TxnOutcome::State(state) =
                                self.refuse(p.id, AbortReason::Conflict)
                            {
                                self.finished.push(Finished::Txn {
                                    key: WaitKey::Txn(p.id),
                                    state,
                                });
                            }
                            progressed = true;
                        }
                        Decision::Go => {
                            self.queue.remove(&k);
                            if let TxnOutcome::State(state) = self.take_locks(&p) {
                                self.finished.push(Finished::Txn {
                                    key: WaitKey::Txn(p.id),
                                    state,
                                });
                            }
                            progressed = true;
                        }
                    },
                    Waiting::Command(c) => {
                        if self.command_must_wait(&c, Some(k)) {
                            continue;
                        }
                        self.queue.remove(&k);
                        let outcome = self.run_command(&c, Some(k));
                        if matches!(outcome, Err(super::SessionError::Queued)) {
                            self.queue.insert(k, Waiting::Command(c));
                            continue;
                        }
                        self.finished.push(Finished::Command {
                            key: WaitKey::Command {
                                session: c.session,
                                seq: c.seq,
                            },
                            outcome,
                        });
                        progressed = true;
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    /// Takes `p`'s locks and computes its results.
    fn take_locks(&mut self, p: &Prepare) -> TxnOutcome {
        self.kill_younger_waiters(p);
        // The results, computed without writing anything; the locks keep
        // them true until resolution.
        let results = match self.results_of(&p.ops) {
            Ok(results) => results,
            Err(e) => return self.refuse(p.id, AbortReason::Rejected(e)),
        };
        let state = TxnState::Prepared { results };
        // An EXPORT's copy: the locks keep it equal to the data until the
        // commit, so it is the data at the commit point.
        self.capture_export(p.id, &p.ops);
        self.txns.insert(
            p.id,
            TxnRecord {
                state: state.clone(),
                done_ms: 0,
            },
        );
        self.prepared.insert(p.id, p.clone());
        TxnOutcome::State(state)
    }

    fn refuse(&mut self, id: TxnId, reason: AbortReason) -> TxnOutcome {
        let state = TxnState::Aborted(reason);
        self.record_done(id, state.clone());
        TxnOutcome::State(state)
    }

    fn resolve(&mut self, id: TxnId, commit: bool) -> TxnOutcome {
        let Some(record) = self.txns.get(&id) else {
            if commit {
                // Only an attempt prepared everywhere commits, and a prepared
                // record stays until resolved here: this one expired after
                // it was resolved.
                return TxnOutcome::Unknown;
            }
            return self.refuse(id, AbortReason::Aborted);
        };
        let Some(p) = self.prepared.remove(&id) else {
            if commit && matches!(record.state, TxnState::Aborted(_)) {
                tracing::error!(txn = %id, partition = self.range.id, "commit of an aborted transaction ignored");
            }
            return TxnOutcome::State(record.state.clone());
        };
        let state = if commit {
            let TxnState::Prepared { results } = &record.state else {
                unreachable!("a record with its prepare is prepared")
            };
            let results = results.clone();
            // Cannot fail: validated at prepare, and nothing it touches
            // changed since (locks).
            let applied = self.execute(&p.ops);
            debug_assert_eq!(applied.as_ref(), Ok(&results));
            TxnState::Committed { results }
        } else {
            self.drop_export(id);
            TxnState::Aborted(AbortReason::Aborted)
        };
        self.record_done(id, state.clone());
        TxnOutcome::State(state)
    }

    fn record_done(&mut self, id: TxnId, state: TxnState) {
        let done_ms = self.log_time_ms;
        if let Some(old) = self.txns.insert(id, TxnRecord { state, done_ms }) {
            self.txn_idle.remove(&(old.done_ms, id));
            self.txn_markers.remove(&(old.done_ms, id));
        }
        self.txn_idle.insert((done_ms, id));
    }

    /// Drops resolved transaction records older than `ttl_ms` of log time.
    ///
    /// Two steps: after one TTL a resolved record keeps only its fate (its
    /// results, needed by a retrying coordinator, go; no retry comes that
    /// late); after [`MARKER_TTLS`] TTLs it goes entirely. Until then a
    /// partition that does not know an attempt can be sure it never saw
    /// it, which is what makes a fence's "aborted" safe (recovery of a
    /// participant cut off for a long time still finds the fate here).
    pub(super) fn expire_txns(&mut self, ttl_ms: u64) {
        let horizon = self.log_time_ms.saturating_sub(ttl_ms);
        while let Some(&(done_ms, id)) = self.txn_idle.first() {
            if done_ms >= horizon {
                break;
            }
            self.txn_idle.pop_first();
            if let Some(record) = self.txns.get_mut(&id) {
                match &mut record.state {
                    TxnState::Committed { results } | TxnState::Prepared { results } => {
                        results.clear()
                    }
                    TxnState::Aborted(_) => {}
                }
            }
            self.txn_markers.insert((done_ms, id));
        }
        let horizon = self
            .log_time_ms
            .saturating_sub(ttl_ms.saturating_mul(MARKER_TTLS));
        while let Some(&(done_ms, id)) = self.txn_markers.first() {
            if done_ms >= horizon {
                break;
            }
            self.txn_markers.pop_first();
            self.txns.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::Command;
    use crate::map::Partition;
    use crate::op::parse_op;

    const TTL: u64 = 300_000;

    fn store() -> PartitionStore {
        PartitionStore::new(Partition {
            id: 1,
            table: "t".into(),
            start: 0,
            end: Some(100),
            replicas: vec![0],
        })
    }

    fn ops(lines: &[&str]) -> Vec<Op> {
        lines.iter().map(|l| parse_op(l).unwrap()).collect()
    }

    fn id(session: u64, attempt: u32) -> TxnId {
        TxnId {
            session,
            seq: 1,
            attempt,
        }
    }

    /// A prepare of `lines` by `session`, as old as `priority_ms`.
    fn prepare(session: u64, attempt: u32, priority_ms: u64, lines: &[&str]) -> TxnOp {
        TxnOp::Prepare(Prepare {
            id: id(session, attempt),
            priority_ms,
            sent_ms: 1_000,
            participants: vec![1, 2],
            ops: ops(lines),
            committed_before: None,
        })
    }

    fn apply(s: &mut PartitionStore, op: TxnOp) -> TxnOutcome {
        s.apply_txn_entry(1_000, TTL, &op)
    }

    fn get(s: &PartitionStore, line: &str) -> OpResult {
        s.clone().execute(&ops(&[line])).unwrap().remove(0)
    }

    fn prepared(results: Vec<OpResult>) -> TxnOutcome {
        TxnOutcome::State(TxnState::Prepared { results })
    }

    #[test]
    fn a_prepared_transaction_reads_now_and_writes_only_when_committed() {
        let mut s = store();
        s.execute(&ops(&["PUT t1 old"])).unwrap();
        let out = apply(
            &mut s,
            prepare(7, 0, 10, &["GET t1", "PUT t1 new", "GET t1"]),
        );
        let results = vec![
            OpResult::Get(Some(b"old".to_vec())),
            OpResult::Put { found: true },
            OpResult::Get(Some(b"new".to_vec())),
        ];
        assert_eq!(out, prepared(results.clone()));
        assert_eq!(get(&s, "GET t1"), OpResult::Get(Some(b"old".to_vec())));
        assert!(
            s.is_blocked(&ops(&["GET t1"])),
            "a write lock blocks readers"
        );
        assert!(!s.is_blocked(&ops(&["GET t2"])));
        let done = apply(
            &mut s,
            TxnOp::Resolve {
                id: id(7, 0),
                commit: true,
            },
        );
        assert_eq!(done, TxnOutcome::State(TxnState::Committed { results }));
        assert_eq!(get(&s, "GET t1"), OpResult::Get(Some(b"new".to_vec())));
        assert!(!s.is_blocked(&ops(&["GET t1"])));
        assert_eq!(s.prepared_count(), 0);
    }

    #[test]
    fn an_aborted_transaction_leaves_nothing_and_a_late_prepare_cannot_revive_it() {
        let mut s = store();
        apply(&mut s, prepare(7, 0, 10, &["PUT t1 x"]));
        let out = apply(
            &mut s,
            TxnOp::Resolve {
                id: id(7, 0),
                commit: false,
            },
        );
        assert_eq!(
            out,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Aborted))
        );
        assert_eq!(get(&s, "GET t1"), OpResult::Get(None));
        // A duplicate of the prepare, delivered late.
        let late = apply(&mut s, prepare(7, 0, 10, &["PUT t1 x"]));
        assert_eq!(
            late,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Aborted))
        );
        assert_eq!(s.prepared_count(), 0);
        // An abort that arrives before its prepare fences it just the same.
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(8, 0),
                commit: false,
            },
        );
        let late = apply(&mut s, prepare(8, 0, 10, &["PUT t2 y"]));
        assert_eq!(
            late,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Aborted))
        );
        assert_eq!(get(&s, "GET t2"), OpResult::Get(None));
    }

    #[test]
    fn a_fence_answers_prepared_or_makes_the_attempt_abort_for_good() {
        let mut s = store();
        apply(&mut s, prepare(7, 0, 10, &["PUT t1 x"]));
        let asked = apply(
            &mut s,
            TxnOp::Fence {
                id: id(7, 0),
                sent_ms: 1_000,
            },
        );
        assert!(matches!(
            asked,
            TxnOutcome::State(TxnState::Prepared { .. })
        ));
        let fenced = apply(
            &mut s,
            TxnOp::Fence {
                id: id(9, 0),
                sent_ms: 1_000,
            },
        );
        assert_eq!(
            fenced,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Fenced))
        );
        let late = apply(&mut s, prepare(9, 0, 10, &["PUT t5 x"]));
        assert_eq!(
            late,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Fenced))
        );
    }

    #[test]
    fn wait_die_older_waits_younger_dies_readers_share() {
        let mut s = store();
        // Session 5 is the lock holder, 20 ms old.
        assert!(matches!(
            apply(&mut s, prepare(5, 0, 20, &["PUT t1 a", "GET t3"])),
            TxnOutcome::State(TxnState::Prepared { .. })
        ));
        // Older (10 < 20): waits, nothing recorded.
        assert_eq!(
            apply(&mut s, prepare(6, 0, 10, &["GET t1"])),
            TxnOutcome::Wait
        );
        assert_eq!(s.txn_state(&id(6, 0)), None);
        // Younger (30 > 20): dies.
        assert_eq!(
            apply(&mut s, prepare(7, 0, 30, &["PUT t1 b"])),
            TxnOutcome::State(TxnState::Aborted(AbortReason::Conflict))
        );
        // Two readers of t3 do not conflict.
        assert!(matches!(
            apply(&mut s, prepare(8, 0, 30, &["GET t3"])),
            TxnOutcome::State(TxnState::Prepared { .. })
        ));
        // A SCAN over the written key conflicts; one beside it does not.
        assert_eq!(
            apply(&mut s, prepare(9, 0, 40, &["SCAN t0 t2"])),
            TxnOutcome::State(TxnState::Aborted(AbortReason::Conflict))
        );
        assert!(matches!(
            apply(&mut s, prepare(10, 0, 40, &["SCAN t4 t9"])),
            TxnOutcome::State(TxnState::Prepared { .. })
        ));
        // Single-partition commands on locked keys wait (nothing recorded).
        let c = Command::untimed(11, 1, ops(&["PUT t3 z"]));
        assert!(matches!(
            s.execute_once(&c),
            Err(crate::kv::SessionError::Queued)
        ));
        let c = Command::untimed(12, 1, ops(&["PUT t50 z"]));
        assert!(s.execute_once(&c).is_ok());
    }

    #[test]
    fn waiters_run_oldest_first_in_the_step_that_frees_their_keys() {
        let mut s = store();
        // Holder: session 5, age 20, writes t1.
        apply(&mut s, prepare(5, 0, 20, &["PUT t1 a"]));
        // An older transaction waits; a command waits behind both.
        assert_eq!(
            apply(&mut s, prepare(6, 0, 10, &["GET t1", "PUT t2 b"])),
            TxnOutcome::Wait
        );
        let mut c = Command::untimed(7, 1, ops(&["PUT t1 c"]));
        c.sent_ms = 30;
        assert!(matches!(
            s.execute_once(&c),
            Err(crate::kv::SessionError::Queued)
        ));
        // A newcomer younger than the waiter cannot overtake it, even
        // though no prepared lock blocks it (t2 is only waited for).
        assert_eq!(
            apply(&mut s, prepare(8, 0, 40, &["PUT t2 x"])),
            TxnOutcome::State(TxnState::Aborted(AbortReason::Conflict))
        );
        assert!(s.take_finished().is_empty());
        // The holder commits: the waiter takes its locks at once (and reads
        // the committed value); the command still waits for it.
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(5, 0),
                commit: true,
            },
        );
        let finished = s.take_finished();
        assert_eq!(
            finished,
            vec![Finished::Txn {
                key: WaitKey::Txn(id(6, 0)),
                state: TxnState::Prepared {
                    results: vec![
                        OpResult::Get(Some(b"a".to_vec())),
                        OpResult::Put { found: false }
                    ]
                }
            }]
        );
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(6, 0),
                commit: true,
            },
        );
        let finished = s.take_finished();
        assert_eq!(
            finished,
            vec![Finished::Command {
                key: WaitKey::Command { session: 7, seq: 1 },
                outcome: Ok(Ok(vec![OpResult::Put { found: true }]))
            }]
        );
        assert_eq!(get(&s, "GET t1"), OpResult::Get(Some(b"c".to_vec())));
        assert_eq!(s.queued_count(), 0);
    }

    #[test]
    fn a_waiting_transaction_that_is_fenced_leaves_the_queue_for_good() {
        let mut s = store();
        apply(&mut s, prepare(5, 0, 20, &["PUT t1 a"]));
        assert_eq!(
            apply(&mut s, prepare(6, 0, 10, &["PUT t1 b"])),
            TxnOutcome::Wait
        );
        // A duplicate waits too, without queueing twice.
        assert_eq!(
            apply(&mut s, prepare(6, 0, 10, &["PUT t1 b"])),
            TxnOutcome::Wait
        );
        assert_eq!(s.queued_count(), 1);
        let fenced = apply(
            &mut s,
            TxnOp::Fence {
                id: id(6, 0),
                sent_ms: 1_000,
            },
        );
        assert_eq!(
            fenced,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Fenced))
        );
        assert_eq!(s.queued_count(), 0);
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(5, 0),
                commit: true,
            },
        );
        assert!(s.take_finished().is_empty());
        assert_eq!(get(&s, "GET t1"), OpResult::Get(Some(b"a".to_vec())));
    }

    #[test]
    fn an_older_waiter_makes_younger_waiters_on_its_keys_die() {
        let mut s = store();
        apply(&mut s, prepare(5, 0, 5, &["PUT t1 a"]));
        // Younger than the holder: both die.
        assert!(matches!(
            apply(&mut s, prepare(6, 0, 30, &["PUT t1 b"])),
            TxnOutcome::State(TxnState::Aborted(_))
        ));
        // Holder younger than 7 and 8: both wait, the older one arriving
        // second makes the younger die rather than wait behind it.
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(5, 0),
                commit: true,
            },
        );
        apply(&mut s, prepare(9, 0, 50, &["PUT t1 c"]));
        assert_eq!(
            apply(&mut s, prepare(7, 0, 30, &["PUT t1 d"])),
            TxnOutcome::Wait
        );
        assert_eq!(
            apply(&mut s, prepare(8, 0, 20, &["PUT t1 e"])),
            TxnOutcome::Wait
        );
        assert_eq!(
            s.take_finished(),
            vec![Finished::Txn {
                key: WaitKey::Txn(id(7, 0)),
                state: TxnState::Aborted(AbortReason::Conflict)
            }]
        );
        assert_eq!(s.queued_count(), 1);
    }

    #[test]
    fn a_prepare_carries_its_sessions_previous_commit_and_does_not_trip_on_its_locks() {
        let mut s = store();
        apply(&mut s, prepare(5, 0, 20, &["PUT t1 a"]));
        // The session's next command touches t1 before the background
        // resolve arrived; its prepare says the previous one committed.
        let TxnOp::Prepare(mut next) = prepare(5, 0, 20, &["GET t1", "PUT t1 b"]) else {
            unreachable!()
        };
        next.id.seq = 2;
        next.committed_before = Some(id(5, 0));
        let out = apply(&mut s, TxnOp::Prepare(next));
        assert_eq!(
            out,
            prepared(vec![
                OpResult::Get(Some(b"a".to_vec())),
                OpResult::Put { found: true }
            ])
        );
        assert!(matches!(
            s.txn_state(&id(5, 0)),
            Some(TxnState::Committed { .. })
        ));
        // The resolve that was on its way changes nothing.
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(5, 0),
                commit: true,
            },
        );
        assert_eq!(get(&s, "GET t1"), OpResult::Get(Some(b"a".to_vec())));
    }

    #[test]
    fn a_queued_command_runs_however_long_it_waited_but_never_after_a_later_one() {
        let mut s = store();
        apply(&mut s, prepare(5, 0, 20, &["PUT t1 a"]));
        let mut c = Command::untimed(7, 1, ops(&["PUT t1 c"]));
        (c.sent_ms, c.time_ms, c.session_ttl_ms) = (1_000, 1_000, TTL);
        assert!(matches!(
            s.execute_once(&c),
            Err(crate::kv::SessionError::Queued)
        ));
        // Log time passes the freshness bound (half a TTL) while it waits:
        // it still runs when the lock goes, once.
        let late = 1_000 + TTL / 2 + 1;
        let commit = TxnOp::Resolve {
            id: id(5, 0),
            commit: true,
        };
        assert_eq!(
            s.apply_txn_entry(late, TTL, &commit),
            TxnOutcome::State(TxnState::Committed {
                results: vec![OpResult::Put { found: false }]
            })
        );
        assert_eq!(
            s.take_finished(),
            vec![Finished::Command {
                key: WaitKey::Command { session: 7, seq: 1 },
                outcome: Ok(Ok(vec![OpResult::Put { found: true }]))
            }]
        );
        // A queued command whose session then runs a later command is
        // stale when its turn comes.
        let TxnOp::Prepare(mut holder) = prepare(6, 0, 20, &["PUT t2 a"]) else {
            unreachable!()
        };
        holder.sent_ms = late;
        let held = s.apply_txn_entry(late, TTL, &TxnOp::Prepare(holder));
        assert!(matches!(held, TxnOutcome::State(TxnState::Prepared { .. })));
        let mut c2 = Command::untimed(7, 2, ops(&["PUT t2 x"]));
        (c2.sent_ms, c2.time_ms, c2.session_ttl_ms) = (late, late, TTL);
        assert!(matches!(
            s.execute_once(&c2),
            Err(crate::kv::SessionError::Queued)
        ));
        let mut c3 = Command::untimed(7, 3, ops(&["PUT t3 y"]));
        (c3.sent_ms, c3.time_ms, c3.session_ttl_ms) = (late, late, TTL);
        assert!(s.execute_once(&c3).is_ok());
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(6, 0),
                commit: true,
            },
        );
        let finished = s.take_finished();
        assert!(
            matches!(
                &finished[..],
                [Finished::Command {
                    outcome: Err(crate::kv::SessionError::Stale(_)),
                    ..
                }]
            ),
            "{finished:?}"
        );
        assert_eq!(get(&s, "GET t2"), OpResult::Get(Some(b"a".to_vec())));
    }

    #[test]
    fn a_new_attempt_aborts_the_earlier_one_still_prepared_here() {
        let mut s = store();
        apply(&mut s, prepare(5, 0, 20, &["PUT t1 a"]));
        let out = apply(&mut s, prepare(5, 1, 20, &["PUT t1 a"]));
        assert!(matches!(out, TxnOutcome::State(TxnState::Prepared { .. })));
        assert_eq!(
            s.txn_state(&id(5, 0)),
            Some(&TxnState::Aborted(AbortReason::Aborted))
        );
        assert_eq!(s.prepared_count(), 1);
    }

    #[test]
    fn invalid_or_late_prepares_are_refused_for_good() {
        let mut s = store();
        let out = apply(&mut s, prepare(5, 0, 20, &["PUT t500 a"]));
        assert!(matches!(
            out,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Rejected(
                ApplyError::WrongPartition { .. }
            )))
        ));
        // Log time far past the attempt's send time plus half a TTL.
        s.apply_txn_entry(
            1_000 + TTL,
            TTL,
            &TxnOp::Fence {
                id: id(99, 0),
                sent_ms: 1_000,
            },
        );
        let out = apply(&mut s, prepare(6, 0, 20, &["PUT t1 a"]));
        assert_eq!(
            out,
            TxnOutcome::State(TxnState::Aborted(AbortReason::Expired))
        );
    }

    #[test]
    fn prepared_transactions_never_expire_and_resolved_ones_do() {
        let mut s = store();
        apply(&mut s, prepare(5, 0, 20, &["PUT t1 a"]));
        apply(&mut s, prepare(6, 0, 20, &["PUT t2 a"]));
        let commit = TxnOp::Resolve {
            id: id(6, 0),
            commit: true,
        };
        apply(&mut s, commit.clone());
        let fence = |sent_ms| TxnOp::Fence {
            id: id(99, 0),
            sent_ms,
        };
        s.apply_txn_entry(1_000 + 2 * TTL, TTL, &fence(1_000 + 2 * TTL));
        assert!(matches!(
            s.txn_state(&id(5, 0)),
            Some(TxnState::Prepared { .. })
        ));
        // After one TTL only its fate is left; a duplicate still finds it.
        assert_eq!(
            s.txn_state(&id(6, 0)),
            Some(&TxnState::Committed { results: vec![] })
        );
        let late = s.apply_txn_entry(1_000 + 2 * TTL, TTL, &prepare(6, 0, 20, &["PUT t2 a"]));
        assert_eq!(
            late,
            TxnOutcome::State(TxnState::Committed { results: vec![] })
        );
        // After MARKER_TTLS it is gone, and neither a fence nor a commit
        // guesses at its fate.
        let later = 1_000 + (MARKER_TTLS + 2) * TTL;
        s.apply_txn_entry(later, TTL, &fence(later));
        assert_eq!(s.txn_state(&id(6, 0)), None);
        let asked = TxnOp::Fence {
            id: id(6, 0),
            sent_ms: 1_000,
        };
        assert_eq!(s.apply_txn_entry(later, TTL, &asked), TxnOutcome::Unknown);
        assert_eq!(s.apply_txn_entry(later, TTL, &commit), TxnOutcome::Unknown);
        assert!(matches!(
            s.txn_state(&id(5, 0)),
            Some(TxnState::Prepared { .. })
        ));
    }

    #[test]
    fn locks_and_decisions_survive_a_snapshot_round_trip() {
        let mut s = store();
        apply(&mut s, prepare(5, 0, 20, &["PUT t1 a"]));
        apply(
            &mut s,
            TxnOp::Resolve {
                id: id(6, 0),
                commit: false,
            },
        );
        let bytes = crate::storage::snapshot::encode_store(&s);
        let mut copy = crate::storage::snapshot::decode_store(&bytes).unwrap();
        assert_eq!(copy, s);
        assert!(copy.is_blocked(&ops(&["GET t1"])));
        apply(
            &mut copy,
            TxnOp::Resolve {
                id: id(5, 0),
                commit: true,
            },
        );
        assert_eq!(get(&copy, "GET t1"), OpResult::Get(Some(b"a".to_vec())));
        assert_eq!(
            apply(&mut copy, prepare(6, 0, 20, &["PUT t2 b"])),
            TxnOutcome::State(TxnState::Aborted(AbortReason::Aborted))
        );
    }
}
