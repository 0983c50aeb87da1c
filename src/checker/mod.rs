//! A linearizability / strict-serializability checker for distkv histories
//! (docs/protocol.md, "Histories"), used by `benchmark check --history FILE`.
//!
//! ```text
//!  &[HistoryRecord] ──validate──▶ drop `fail` commands and read-only `unknown` ones
//!        │
//!        ▼ union-find over keys: the keys of one command, and every key of the
//!        │ history inside a SCAN's range, belong to the same partition
//!  partitions (one per key when every command touches one key and there is no SCAN)
//!        │ each interned: keys -> ordered small ids, values -> ids
//!        ▼
//!  WGL search per partition (wgl.rs), one shared state budget
//!        │ fail? binary search for the shortest failing prefix
//!        ▼
//!  Outcome::Ok(Report) | Outcome::Violation(Violation) | Outcome::Unknown(GaveUp)
//! ```
//!
//! # The model
//!
//! A sequential map from key to value, starting empty, with the semantics
//! of docs/protocol.md: `PUT` sets the value and returns `found`/`not_found` (whether
//! the key was present); `GET` returns the value or `null`; `SWAP` returns
//! the old value and sets the new one only if the key is present (on an
//! absent key it returns `null` and writes nothing); `DELETE` returns
//! `found`/`not_found` and removes the key; `SCAN start end` returns the
//! present keys `start <= key <= end` in `(table, number)` order with their
//! values. A command is one transaction: all its ops apply atomically, in
//! order, at one instant (a later op sees the earlier ops' writes).
//! `CHECK k expected` is a read that must hold: a command that took effect had
//! `k` hold `expected` (`null`: absent) at that point of it, so an `ok`
//! command's CHECKs (result `"ok"`) are read constraints, and an `unknown`
//! command can only be linearized where its CHECKs hold (if it took effect
//! at all). A command aborted by a CHECK that did not hold is `fail`, so it
//! is dropped like any other. A CHECK observes its `(key, value)` pair for
//! the two-phase check below, even in an `unknown` command.
//!
//! With [`InitialState::Unknown`] (`--initial-state unknown`, for histories
//! recorded on a cluster that already held data) each key starts *unseen*:
//! it may hold any value or be absent, and the first operation that observes
//! it pins it down (a GET of `x` makes it `x`; `not_found`, a `null` SWAP or
//! a SCAN that does not list it make it absent; a PUT or DELETE accepts
//! either `found` or `not_found`). The one approximation: a SWAP with an
//! unknown outcome on an unseen key leaves it unseen (really it is "absent,
//! or the new value"), so that mode may accept slightly more than the exact
//! model — never less.
//!
//! A history is correct when there is a total order of its commands that
//! (1) respects real time — if `a` completed before `b` was invoked, `a`
//! comes first — and (2) replayed on the model gives every recorded result.
//! For one-op commands that is linearizability; for multi-op commands it is
//! strict serializability (each command is one operation on the whole map).
//!
//! # Outcomes
//!
//! - `ok`: took effect between `invoke` and `complete`; its results must be
//!   explained.
//! - `fail`: definitely did not take effect; dropped before checking.
//! - `unknown`: may or may not have taken effect; if it did, at some point
//!   after `invoke` with no upper bound (a timed-out write may land after the
//!   client moved on). Its results are unknown, so any are accepted. Such a
//!   call is *optional*: it can be linearized at any point after its invoke,
//!   or never (the search ends successfully when every `ok` call is
//!   linearized; the remaining unknown calls are dropped). An unknown command
//!   that only reads constrains nothing and is dropped up front.
//!
//! Two events at the same nanosecond count as concurrent (the conservative
//! choice: `a` precedes `b` only if `a.complete < b.invoke`).
//!
//! # The algorithm (Wing & Gong, with Lowe's memoization)
//!
//! The calls' invoke and complete events are kept in a doubly linked list in
//! time order (unknown calls have no complete event). A call can be
//! linearized next iff it is *minimal*: its invoke event comes before the
//! first complete event still in the list, i.e. no pending call completed
//! before it was invoked. The search walks the list from the head: for each
//! minimal call it applies the call to the model and checks the results; if
//! they match and the resulting configuration — (set of linearized calls,
//! model state) — was not visited before, it pushes the call on a stack,
//! lifts its events out of the list and starts again from the head. When it
//! reaches a complete event no candidate worked, so it pops the last call,
//! undoes its effect and puts its events back (backtracking), and tries the
//! next candidate after it. It succeeds when every `ok` call is linearized,
//! and fails when it must backtrack with an empty stack.
//!
//! Which minimal call to try first does not change the verdict, only the
//! speed, and the best order depends on how the unknown calls behaved. Two
//! orders are run as a portfolio (taking turns, restarted with a budget 4x
//! larger each round, until one reaches a verdict): *eager* — invoke order,
//! so unknown writes are linearized right after their invoke (fast when they
//! mostly landed at once or were overwritten unseen) — and *known first* —
//! the minimal calls with a known outcome first, the optional ones only when
//! none of those fits (fast when many unknown writes are pending and land
//! late). On generated histories each order was 50-100x faster than the
//! other on some of them; the portfolio costs a small constant factor over
//! the better one.
//!
//! Memoization (Lowe): two paths that reach the same set of linearized calls
//! with the same model state have the same future, so each configuration is
//! explored once. Configurations are remembered by a 128-bit fingerprint:
//! Zobrist hashing, the XOR of a pseudo-random word per linearized call and
//! per `(key, value)` pair present in the model, both maintained
//! incrementally in O(1) per write. The cache holds 16 bytes per state. A
//! fingerprint collision could only make the search skip a configuration
//! (and so report a violation that is not one); with 128-bit words and
//! millions of states its probability is below 2^-80.
//!
//! # Unobserved unknown writes (two-phase check)
//!
//! Each pending unknown write is a free choice of the search (now, later or
//! never), so 20-40 of them on one partition can multiply its states by
//! 10^4 even when none of them matters. A partition is therefore first
//! checked without its *unobserved* unknown-outcome commands: those whose
//! every op is a PUT or SWAP of a `(key, value)` pair that no completed GET,
//! SWAP or SCAN of the partition returned and no CHECK of it (in any
//! command) names, or a read (unknown results constrain nothing; its CHECKs
//! go away with it). A command with a DELETE is never set aside (absence
//! is observable without any value).
//!
//! - If that passes, the history passes: an unknown-outcome command may not
//!   have happened, so a linearization of the rest is a linearization of the
//!   whole in which the set-aside commands never took effect. This holds
//!   whatever was set aside.
//! - If it fails or gives up, the full search decides — a set-aside command
//!   can be needed without its value being seen: an unknown PUT is the only
//!   thing that makes a later PUT reply `found`, or makes a later unknown
//!   SWAP (which writes only to a present key) take effect. When the pruning
//!   is *exact* (below) the failure does prove a violation; with
//!   [`CheckConfig::trust_exact_pruning`] it is final (no full search), else
//!   the full search still decides, and if it gives up [`GaveUp`] says the
//!   history is in fact not linearizable (the exit code stays 3).
//!
//! Exactness (empty initial state only). Take a linearization `L` of the
//! whole partition and drop the set-aside commands, giving `L'`; compare the
//! two model runs key by key. Where they differ, `L` holds a value written by
//! a set-aside command — an unobserved pair — so no completed GET, SWAP or
//! SCAN of that key runs there in `L` (it would have returned that pair),
//! nor any kept CHECK (it would have named that pair).
//! What remains there: completed PUTs and DELETEs (same results when the key
//! is present in both runs or absent in both), unknown PUTs and DELETEs (both
//! runs agree again afterwards) and unknown SWAPs (agree when presence
//! agrees). A set-aside SWAP writes only over a present value, so presence
//! always agrees. A set-aside PUT can make the key present in `L` while
//! absent in `L'`; that is harmless when the key is never deleted by a kept
//! command, never SWAPped by a kept unknown command, and every completed PUT
//! of it that replied `found` follows a PUT of it in the same command, or was
//! invoked after some completed PUT of it completed (that PUT precedes it in
//! both runs, and with no DELETE the key stays present), or completed before
//! the first set-aside PUT of the key was invoked (it precedes every point
//! where the runs can differ, as a set-aside call takes effect, if at all,
//! after its invoke). Under these conditions `L'` is a linearization of the
//! pruned history, so the pruned history fails only if the whole one does.
//! The conditions are checked per key written by a set-aside PUT. The
//! unknown-initial-state mode never counts as exact.
//!
//! The first phase gets half of the remaining state budget (all of it when
//! its failure is final); the fallback gets what is left. The verdict never
//! changes, only the work: [`Report`] says how many key groups passed this
//! way (`benchmark check` prints it in its second line), and a [`Violation`]
//! how many commands its deciding search set aside.
//!
//! # P-compositionality (partitioning)
//!
//! (In this module a "partition" is a group of keys checked together; the
//! output calls it a *key group*, as it has nothing to do with the
//! cluster's partitions.)
//!
//! Linearizability is *local* (Herlihy & Wing): a history is linearizable
//! iff each object's sub-history is, when every operation touches one object.
//! Here the objects are groups of keys: a union-find joins the keys that one
//! command touches, and a SCAN touches every key of the history inside its
//! range (keys never written are absent in every state, so the SCAN's result
//! about them needs no partner). Each command then operates on exactly one
//! group, the map's specification is the product of the groups'
//! specifications, and so the history is correct iff every group's
//! sub-history is — each group is checked independently with its own model
//! and cache. When every command touches exactly one key and there is no
//! SCAN (YCSB workloads A/B/C/W) every key is its own partition; commands
//! that join keys (transactions across keys, SCANs) merge partitions, down to
//! one whole-map check. Commands that touch no key (a SCAN over a range with
//! no key) form one extra partition. Locality holds for the real-time order
//! used here (strict serializability of one-shot transactions is
//! linearizability of the map-of-groups object), so this is sound and
//! complete, not an approximation.
//!
//! # Complexity
//!
//! Linearizability checking is NP-complete in general (Gibbons & Korach). The search visits
//! each configuration at most once, and a configuration costs O(w + o) work,
//! where w is the number of minimal calls (about the concurrency plus the
//! pending unknown calls) and o the ops of the call tried (SCANs: the range
//! length). The number of configurations is bounded by the number of
//! antichain-closed call sets times model states; for histories from `c`
//! sequential clients without unknown calls that is O(n · 2^c) per state in
//! practice, but each pending unknown write can double it. Every search
//! counts new configurations against one budget (`--max-states`, shared by
//! all partitions), and the checker gives up with [`Outcome::Unknown`]
//! rather than run forever. Memory: 16 bytes per cached state of the largest
//! partition, plus the history. On a violation the checker binary-searches
//! the shortest failing prefix of that partition: O(log n) more searches,
//! each with a fresh budget of the same size.

mod wgl;

#[cfg(test)]
mod tests;

use crate::bench::history::{read_history, HistoryOp, HistoryRecord, HistoryResult, Status};
use crate::key::Key;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;
use wgl::{Budget, KeyId, MCall, MOp, MRes, Path, Problem, ValueId, Verdict};

/// Default search budget: states explored over all partitions (16 bytes of
/// cache each).
pub const DEFAULT_MAX_STATES: u64 = 10_000_000;

/// Most prefix lines a [`Violation`] prints (the ones nearest the culprit).
const VIOLATION_LINES_MAX: usize = 40;
/// Longest value a [`Violation`] prints in full.
const VALUE_SHOWN_MAX: usize = 24;

/// What the store held when the history began.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InitialState {
    /// Nothing: every key absent (a fresh cluster).
    #[default]
    Empty,
    /// Unknown: each key may hold any value or be absent until an operation
    /// observes it (a cluster that already had data, e.g. from an earlier
    /// load run).
    Unknown,
}

/// How to check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckConfig {
    /// What the store held before the first command.
    pub initial: InitialState,
    /// Give up after exploring this many states (over all partitions).
    pub max_states: u64,
    /// Check independent key groups separately (P-compositionality). Turning
    /// it off checks the whole history with the whole-map model; the verdict
    /// is the same, only slower (used by tests to cross-check).
    pub partition: bool,
    /// Check each partition first without its unobserved unknown-outcome
    /// commands (see "Unobserved unknown writes" in the module docs). The
    /// verdict is the same either way; off, only slower (for tests and
    /// timing).
    pub prune: bool,
    /// Take a failure of the pruned check as final when the pruning is exact
    /// (proven not to hide a linearization), instead of running the full
    /// search. Off by default: then the full search always confirms a
    /// violation, and only notes an exact failure when it gives up.
    pub trust_exact_pruning: bool,
}

impl Default for CheckConfig {
    fn default() -> CheckConfig {
        CheckConfig {
            initial: InitialState::Empty,
            max_states: DEFAULT_MAX_STATES,
            partition: true,
            prune: true,
            trust_exact_pruning: false,
        }
    }
}

/// A history that passed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Commands in the history (every status).
    pub commands: usize,
    /// Of which `ok`, `unknown` and `fail` (dropped).
    pub ok: usize,
    pub unknown: usize,
    pub failed: usize,
    /// Independent partitions checked.
    pub partitions: usize,
    /// Configurations the search explored, over all partitions.
    pub states_explored: u64,
    /// Partitions that passed without their unobserved unknown-outcome
    /// commands (those never needed the full search), and how many such
    /// commands they set aside in total.
    pub pruned_partitions: usize,
    pub set_aside: usize,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "OK: {} commands, {} key groups checked, {} states explored",
            self.commands, self.partitions, self.states_explored
        )
    }
}

impl Report {
    /// How the pruned check decided, if it did: `1 key groups passed with 30
    /// unobserved unknown-outcome commands set aside`.
    pub fn pruning_note(&self) -> Option<String> {
        (self.pruned_partitions > 0).then(|| {
            format!(
                "{} key groups passed with {} unobserved unknown-outcome commands set aside",
                self.pruned_partitions, self.set_aside
            )
        })
    }
}

/// One command of a failing prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrefixCall {
    /// Position of the command in the history (0-based, blank lines skipped).
    pub index: usize,
    pub record: HistoryRecord,
    /// Whether its outcome is open in this prefix: `unknown`, or it completes
    /// only after the culprit did (so its results do not constrain it yet).
    pub pending: bool,
}

/// A history that no linearization explains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The keys of the failing partition (one key for a per-key check; empty
    /// for the commands that touch no key).
    pub keys: Vec<Key>,
    /// Commands in the failing partition's sub-history.
    pub partition_commands: usize,
    /// The first completed command whose results no linearization explains.
    pub culprit: usize,
    /// The shortest non-linearizable prefix of the partition's sub-history
    /// (it ends when the culprit completes), by invoke time.
    pub prefix: Vec<PrefixCall>,
    /// Whether `prefix` is proven shortest (`false` when the budget ran out
    /// while minimizing; it is still a failing prefix).
    pub minimal: bool,
    /// Partitions checked, and how many of them failed.
    pub partitions: usize,
    pub failing_partitions: usize,
    pub states_explored: u64,
    /// Unobserved unknown-outcome commands of the failing partition that the
    /// deciding search left out (0: the full search decided). Non-zero only
    /// when leaving them out provably cannot hide a linearization.
    pub set_aside: usize,
}

/// The search gave up: the budget ran out before a verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GaveUp {
    /// The keys of the partition being checked when the budget ran out.
    pub keys: Vec<Key>,
    pub partitions: usize,
    /// Partitions fully checked (all passed) before giving up.
    pub partitions_done: usize,
    pub states_explored: u64,
    pub max_states: u64,
    /// Non-zero when the partition, checked without this many unobserved
    /// unknown-outcome commands, failed with an exact pruning before the
    /// full search gave up: it is in fact not linearizable.
    pub exact_failure_set_aside: usize,
}

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Linearizable (strictly serializable).
    Ok(Report),
    /// Not linearizable.
    Violation(Box<Violation>),
    /// No verdict within the state budget.
    Unknown(GaveUp),
}

impl Outcome {
    /// `Ok(report)` when the history passed, `Err(self)` otherwise.
    pub fn into_result(self) -> Result<Report, Outcome> {
        match self {
            Outcome::Ok(report) => Ok(report),
            other => Err(other),
        }
    }

    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    pub fn is_violation(&self) -> bool {
        matches!(self, Outcome::Violation(_))
    }
}

/// A record that does not follow the history format.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("history command #{index}: {reason}")]
pub struct MalformedHistory {
    pub index: usize,
    pub reason: String,
}

/// Checks `history` (docs/protocol.md, "Histories") for linearizability / strict
/// serializability against the sequential map model. See the module docs.
pub fn check(history: &[HistoryRecord], config: &CheckConfig) -> Result<Outcome, MalformedHistory> {
    for (index, record) in history.iter().enumerate() {
        validate(record).map_err(|reason| MalformedHistory { index, reason })?;
    }
    let count = |s: Status| history.iter().filter(|r| r.status == s).count();
    let (ok, unknown, failed) = (
        count(Status::Ok),
        count(Status::Unknown),
        count(Status::Fail),
    );
    let partitions = Partitions::build(history, config.partition, config.initial);
    let mut budget = Budget {
        used: 0,
        max: config.max_states,
    };
    let mut failing: Vec<(usize, Path)> = Vec::new();
    let (mut pruned_partitions, mut set_aside) = (0, 0);
    for (p, part) in partitions.parts.iter().enumerate() {
        let (verdict, path) = wgl::decide(
            &part.problem,
            &mut budget,
            config.prune,
            config.trust_exact_pruning,
        );
        match verdict {
            Verdict::Linearizable => {
                if let Path::Pruned { set_aside: n } = path {
                    pruned_partitions += 1;
                    set_aside += n;
                }
            }
            Verdict::NotLinearizable => failing.push((p, path)),
            Verdict::GaveUp => {
                if failing.is_empty() {
                    return Ok(Outcome::Unknown(GaveUp {
                        keys: partitions.keys_of(part),
                        partitions: partitions.parts.len(),
                        partitions_done: p,
                        states_explored: budget.max,
                        max_states: config.max_states,
                        exact_failure_set_aside: match path {
                            Path::GaveUpAfterExactFailure { set_aside } => set_aside,
                            _ => 0,
                        },
                    }));
                }
                // A violation is already certain; report it.
                break;
            }
        }
    }
    let states_explored = budget.used.min(budget.max);
    let Some(&(first, path)) = failing.first() else {
        return Ok(Outcome::Ok(Report {
            commands: history.len(),
            ok,
            unknown,
            failed,
            partitions: partitions.parts.len(),
            states_explored,
            pruned_partitions,
            set_aside,
        }));
    };
    let part = &partitions.parts[first];
    let (rank, minimal) = shortest_failing_prefix(&part.problem, config);
    let order = part.problem.completion_order();
    let culprit_call = &part.problem.calls[order[rank]];
    let cut = culprit_call.complete.expect("completed");
    let prefix = prefix_calls(history, &part.problem, &order[..=rank], cut);
    Ok(Outcome::Violation(Box::new(Violation {
        keys: partitions.keys_of(part),
        partition_commands: part.problem.calls.len(),
        culprit: culprit_call.origin,
        prefix,
        minimal,
        partitions: partitions.parts.len(),
        failing_partitions: failing.len(),
        states_explored,
        set_aside: match path {
            Path::Pruned { set_aside } => set_aside,
            _ => 0,
        },
    })))
}

/// The smallest completion rank whose prefix fails (binary search: prefixes
/// of a linearizable history are linearizable), and whether it is proven
/// minimal.
fn shortest_failing_prefix(problem: &Problem, config: &CheckConfig) -> (usize, bool) {
    let order = problem.completion_order();
    // The whole partition fails, and it is equivalent to the prefix ending at
    // the last completion (later invocations are all optional).
    let (mut lo, mut hi) = (0, order.len() - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let mut budget = Budget {
            used: 0,
            max: config.max_states,
        };
        let prefix = problem.prefix(&order, mid);
        match wgl::decide(
            &prefix,
            &mut budget,
            config.prune,
            config.trust_exact_pruning,
        )
        .0
        {
            Verdict::NotLinearizable => hi = mid,
            Verdict::Linearizable => lo = mid + 1,
            Verdict::GaveUp => return (hi, false),
        }
    }
    (hi, true)
}

/// The commands of the prefix ending at `cut` (the completed ones in
/// `completed`, plus those invoked by then), by invoke time.
fn prefix_calls(
    history: &[HistoryRecord],
    problem: &Problem,
    completed: &[usize],
    cut: u64,
) -> Vec<PrefixCall> {
    let done: BTreeSet<usize> = completed.iter().map(|&i| problem.calls[i].origin).collect();
    let mut calls: Vec<PrefixCall> = problem
        .calls
        .iter()
        .filter(|c| done.contains(&c.origin) || c.invoke <= cut)
        .map(|c| PrefixCall {
            index: c.origin,
            record: history[c.origin].clone(),
            pending: !done.contains(&c.origin),
        })
        .collect();
    calls.sort_by_key(|c| (c.record.invoke, c.index));
    calls
}

/// Checks what the JSON reader checks, for records built in code.
fn validate(record: &HistoryRecord) -> Result<(), String> {
    match (record.status, record.complete) {
        (Status::Unknown, Some(_)) => {
            return Err("an unknown outcome has no completion time".into())
        }
        (Status::Ok | Status::Fail, None) => {
            return Err("a known outcome needs its completion time".into())
        }
        (_, Some(complete)) if complete < record.invoke => {
            return Err(format!(
                "completes at {complete} before it is invoked at {}",
                record.invoke
            ))
        }
        _ => {}
    }
    match (record.status, &record.results) {
        (Status::Ok, None) => Err("an ok command needs its results".into()),
        (Status::Ok, Some(results)) => {
            if results.len() != record.ops.len() {
                return Err(format!(
                    "{} results for {} operations",
                    results.len(),
                    record.ops.len()
                ));
            }
            for (op, result) in record.ops.iter().zip(results) {
                let fits = matches!(
                    (op, result),
                    (
                        HistoryOp::Put { .. } | HistoryOp::Delete { .. },
                        HistoryResult::Found(_)
                    ) | (
                        HistoryOp::Get { .. } | HistoryOp::Swap { .. },
                        HistoryResult::Value(_)
                    ) | (HistoryOp::Scan { .. }, HistoryResult::Scan(_))
                        | (HistoryOp::Check { .. }, HistoryResult::CheckOk)
                );
                if !fits {
                    return Err(format!("result {result:?} does not fit operation {op:?}"));
                }
            }
            Ok(())
        }
        (_, Some(_)) => Err("only ok commands have results".into()),
        (_, None) => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// Partitioning

/// Union-find over key ids.
struct UnionFind {
    parent: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> UnionFind {
        UnionFind {
            parent: (0..n).collect(),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (a, b) = (self.find(a), self.find(b));
        if a != b {
            // The smaller id becomes the root, so a root is its group's
            // smallest key.
            let (lo, hi) = (a.min(b), a.max(b));
            self.parent[hi] = lo;
        }
    }
}

/// One independent group of commands.
struct Part {
    /// Global key ids, ascending.
    keys: Vec<usize>,
    problem: Problem,
}

struct Partitions {
    /// Every key of the history, sorted.
    keys: Vec<Key>,
    parts: Vec<Part>,
}

impl Partitions {
    fn keys_of(&self, part: &Part) -> Vec<Key> {
        part.keys.iter().map(|&g| self.keys[g].clone()).collect()
    }

    fn build(history: &[HistoryRecord], partition: bool, initial: InitialState) -> Partitions {
        // The commands that matter: not `fail`, and not read-only unknowns.
        let kept: Vec<usize> = (0..history.len())
            .filter(|&i| {
                let r = &history[i];
                match r.status {
                    Status::Fail => false,
                    Status::Ok => true,
                    Status::Unknown => r.ops.iter().any(|op| {
                        !matches!(
                            op,
                            HistoryOp::Get { .. }
                                | HistoryOp::Scan { .. }
                                | HistoryOp::Check { .. }
                        )
                    }),
                }
            })
            .collect();

        // Every key named by an op or returned by a SCAN.
        let mut key_set: BTreeSet<&Key> = BTreeSet::new();
        for &i in &kept {
            let r = &history[i];
            for op in &r.ops {
                if let Some(key) = op_key(op) {
                    key_set.insert(key);
                }
            }
            for result in r.results.iter().flatten() {
                if let HistoryResult::Scan(rows) = result {
                    key_set.extend(rows.iter().map(|(k, _)| k));
                }
            }
        }
        let keys: Vec<Key> = key_set.into_iter().cloned().collect();
        let key_id = |key: &Key| keys.binary_search(key).expect("interned key");
        let scan_range = |start: &Key, end: &Key| {
            let lo = keys.partition_point(|k| k < start);
            let hi = keys.partition_point(|k| k <= end).max(lo);
            (lo, hi)
        };

        // Join the keys each command touches. `next_unjoined[i]`: the first
        // j >= i not yet joined with j + 1 by a range, so ranges cost O(keys)
        // in total.
        let mut uf = UnionFind::new(keys.len());
        let mut next_unjoined: Vec<usize> = (0..keys.len()).collect();
        fn skip(next: &mut [usize], mut i: usize) -> usize {
            let mut root = i;
            while next[root] != root {
                root = next[root];
            }
            while next[i] != root {
                let n = next[i];
                next[i] = root;
                i = n;
            }
            root
        }
        let mut anchor: Vec<Option<usize>> = Vec::with_capacity(kept.len());
        for &i in &kept {
            let r = &history[i];
            let mut first: Option<usize> = None;
            let mut touch = |uf: &mut UnionFind, k: usize| match first {
                None => first = Some(k),
                Some(f) => uf.union(f, k),
            };
            for op in &r.ops {
                match op {
                    HistoryOp::Scan { start, end } => {
                        let (lo, hi) = scan_range(start, end);
                        if lo < hi {
                            touch(&mut uf, lo);
                            let mut j = skip(&mut next_unjoined, lo);
                            while j + 1 < hi {
                                uf.union(j, j + 1);
                                next_unjoined[j] = j + 1;
                                j = skip(&mut next_unjoined, j + 1);
                            }
                        }
                    }
                    other => touch(&mut uf, key_id(op_key(other).expect("keyed op"))),
                }
            }
            for result in r.results.iter().flatten() {
                if let HistoryResult::Scan(rows) = result {
                    for (k, _) in rows {
                        touch(&mut uf, key_id(k));
                    }
                }
            }
            anchor.push(first);
        }
        if !partition {
            for k in 1..keys.len() {
                uf.union(0, k);
            }
        }

        // Group commands by their keys' root; keyless commands go together
        // (with the single group when not partitioning).
        let mut group_of_root: HashMap<usize, usize> = HashMap::new();
        let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new(); // (keys, commands)
        for k in 0..keys.len() {
            let root = uf.find(k);
            let g = *group_of_root.entry(root).or_insert_with(|| {
                groups.push((Vec::new(), Vec::new()));
                groups.len() - 1
            });
            groups[g].0.push(k);
        }
        let mut keyless: Vec<usize> = Vec::new();
        for (&i, first) in kept.iter().zip(&anchor) {
            match first {
                Some(k) => groups[group_of_root[&uf.find(*k)]].1.push(i),
                None if !partition && !groups.is_empty() => groups[0].1.push(i),
                None => keyless.push(i),
            }
        }
        if !keyless.is_empty() {
            groups.push((Vec::new(), keyless));
        }
        groups.retain(|(_, commands)| !commands.is_empty());

        let mut values = ValueInterner::default();
        let mut local: Vec<KeyId> = vec![0; keys.len()];
        let parts = groups
            .into_iter()
            .map(|(part_keys, commands)| {
                for (l, &g) in part_keys.iter().enumerate() {
                    local[g] = l as KeyId;
                }
                let k = |key: &Key| local[key_id(key)];
                let calls = commands
                    .iter()
                    .map(|&i| {
                        let r = &history[i];
                        let ops = r
                            .ops
                            .iter()
                            .map(|op| match op {
                                HistoryOp::Put { key, value } => MOp::Put {
                                    k: k(key),
                                    v: values.id(value),
                                },
                                HistoryOp::Get { key } => MOp::Get { k: k(key) },
                                HistoryOp::Swap { key, value } => MOp::Swap {
                                    k: k(key),
                                    v: values.id(value),
                                },
                                HistoryOp::Delete { key } => MOp::Delete { k: k(key) },
                                HistoryOp::Check { key, expected } => MOp::Check {
                                    k: k(key),
                                    v: expected.as_deref().map_or(0, |v| values.id(v)),
                                },
                                HistoryOp::Scan { start, end } => {
                                    let (lo, hi) = scan_range(start, end);
                                    MOp::Scan {
                                        lo: part_keys.partition_point(|&g| g < lo) as KeyId,
                                        hi: part_keys.partition_point(|&g| g < hi) as KeyId,
                                    }
                                }
                            })
                            .collect();
                        let results = r.results.as_ref().map(|results| {
                            results
                                .iter()
                                .zip(&r.ops)
                                .map(|(res, op)| match (res, op) {
                                    (HistoryResult::Found(f), _) => MRes::Found(*f),
                                    (HistoryResult::Value(v), _) => {
                                        MRes::Value(v.as_deref().map_or(0, |v| values.id(v)))
                                    }
                                    (HistoryResult::Scan(rows), _) => MRes::Scan(
                                        rows.iter()
                                            .map(|(key, v)| (k(key), values.id(v)))
                                            .collect(),
                                    ),
                                    // An `ok` CHECK read exactly its expected
                                    // value (0: absent); `MOp::Check` demands
                                    // it whatever the result says.
                                    (HistoryResult::CheckOk, op) => {
                                        let expected = match op {
                                            HistoryOp::Check { expected, .. } => expected,
                                            _ => &None,
                                        };
                                        MRes::Value(expected.as_deref().map_or(0, |v| values.id(v)))
                                    }
                                })
                                .collect()
                        });
                        MCall {
                            origin: i,
                            invoke: r.invoke,
                            complete: r.complete,
                            ops,
                            results,
                        }
                    })
                    .collect();
                Part {
                    problem: Problem {
                        keys: part_keys.len(),
                        unseen_start: initial == InitialState::Unknown,
                        calls,
                    },
                    keys: part_keys,
                }
            })
            .collect();
        Partitions { keys, parts }
    }
}

fn op_key(op: &HistoryOp) -> Option<&Key> {
    match op {
        HistoryOp::Put { key, .. }
        | HistoryOp::Get { key }
        | HistoryOp::Swap { key, .. }
        | HistoryOp::Delete { key }
        | HistoryOp::Check { key, .. } => Some(key),
        HistoryOp::Scan { .. } => None,
    }
}

#[derive(Default)]
struct ValueInterner {
    ids: HashMap<String, ValueId>,
}

impl ValueInterner {
    /// The id of `value`: 1.. (0 is `null`).
    fn id(&mut self, value: &str) -> ValueId {
        let next = self.ids.len() as ValueId + 1;
        *self.ids.entry(value.to_string()).or_insert(next)
    }
}

// ---------------------------------------------------------------------------
// Printing

fn short_value(value: &str) -> String {
    if value.chars().count() <= VALUE_SHOWN_MAX {
        value.to_string()
    } else {
        let head: String = value.chars().take(VALUE_SHOWN_MAX).collect();
        format!("{head}…")
    }
}

fn op_text(op: &HistoryOp) -> String {
    match op {
        HistoryOp::Put { key, value } => format!("PUT {key} {}", short_value(value)),
        HistoryOp::Get { key } => format!("GET {key}"),
        HistoryOp::Swap { key, value } => format!("SWAP {key} {}", short_value(value)),
        HistoryOp::Delete { key } => format!("DELETE {key}"),
        HistoryOp::Scan { start, end } => format!("SCAN {start} {end}"),
        HistoryOp::Check { key, expected } => format!(
            "CHECK {key} {}",
            expected.as_deref().map_or("null".into(), short_value)
        ),
    }
}

fn result_text(result: &HistoryResult) -> String {
    match result {
        HistoryResult::Found(true) => "found".into(),
        HistoryResult::Found(false) => "not_found".into(),
        HistoryResult::Value(None) => "null".into(),
        HistoryResult::Value(Some(v)) => short_value(v),
        HistoryResult::CheckOk => "ok".into(),
        HistoryResult::Scan(rows) => {
            let rows: Vec<String> = rows
                .iter()
                .map(|(k, v)| format!("{k}={}", short_value(v)))
                .collect();
            format!("[{}]", rows.join(", "))
        }
    }
}

/// `PUT t1 a -> not_found; GET t2 -> b` (results `?` when unknown).
fn command_text(record: &HistoryRecord) -> String {
    let parts: Vec<String> = record
        .ops
        .iter()
        .enumerate()
        .map(|(i, op)| {
            let result = record
                .results
                .as_ref()
                .map_or("?".to_string(), |r| result_text(&r[i]));
            format!("{} -> {result}", op_text(op))
        })
        .collect();
    parts.join("; ")
}

/// Nanoseconds as microseconds with three decimals.
fn micros(ns: u64) -> String {
    format!("{}.{:03}", ns / 1000, ns % 1000)
}

fn keys_text(keys: &[Key]) -> String {
    const SHOWN: usize = 8;
    match keys {
        [] => "the commands that touch no key".to_string(),
        [key] => format!("key {key}"),
        _ => {
            let shown: Vec<String> = keys.iter().take(SHOWN).map(|k| k.to_string()).collect();
            let more = if keys.len() > SHOWN { ", …" } else { "" };
            format!(
                "keys {}{more} ({} keys checked together: commands or SCANs join them)",
                shown.join(", "),
                keys.len()
            )
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let culprit = self
            .prefix
            .iter()
            .find(|c| c.index == self.culprit)
            .map(|c| c.record.clone());
        writeln!(
            f,
            "VIOLATION: {}: no linearization explains command #{}{}",
            keys_text(&self.keys),
            self.culprit,
            culprit
                .as_ref()
                .map(|r| format!(" (client {}: {})", r.client, command_text(r)))
                .unwrap_or_default()
        )?;
        writeln!(
            f,
            "{} non-linearizable prefix of this key group's {} commands: {} commands, ending when #{} completes{}:",
            if self.minimal { "shortest" } else { "a" },
            self.partition_commands,
            self.prefix.len(),
            self.culprit,
            if self.minimal {
                ""
            } else {
                " (budget ran out while shortening it)"
            }
        )?;
        writeln!(
            f,
            "   (by invoke time; [invoke .. complete] in µs; `pending` = outcome open in this prefix)"
        )?;
        let skipped = self.prefix.len().saturating_sub(VIOLATION_LINES_MAX);
        if skipped > 0 {
            writeln!(f, "   ... {skipped} earlier commands not shown")?;
        }
        for call in &self.prefix[skipped..] {
            let r = &call.record;
            let marker = if call.index == self.culprit {
                ">>"
            } else {
                "  "
            };
            let status = match (r.status, call.pending) {
                (Status::Unknown, _) => "unknown",
                (_, true) => "pending",
                _ => "ok",
            };
            writeln!(
                f,
                "{marker} #{:<6} client {:<4} [{} .. {}] {status:<7} {}",
                call.index,
                r.client,
                micros(r.invoke),
                r.complete.map_or("?".to_string(), micros),
                command_text(r)
            )?;
        }
        write!(
            f,
            "{} of {} key groups failed; {} states explored",
            self.failing_partitions, self.partitions, self.states_explored
        )?;
        if self.set_aside > 0 {
            write!(
                f,
                " (decided without {} unobserved unknown-outcome commands, which provably cannot explain it)",
                self.set_aside
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "UNKNOWN: gave up after {} states (--max-states {}) while checking {}; {} of {} key groups passed before",
            self.states_explored,
            self.max_states,
            keys_text(&self.keys),
            self.partitions_done,
            self.partitions
        )?;
        if self.exact_failure_set_aside > 0 {
            write!(
                f,
                "; but without its {} unobserved unknown-outcome commands it fails, and they provably cannot explain it: it is not linearizable",
                self.exact_failure_set_aside
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok(report) => report.fmt(f),
            Outcome::Violation(violation) => violation.fmt(f),
            Outcome::Unknown(gave_up) => gave_up.fmt(f),
        }
    }
}

// ---------------------------------------------------------------------------
// The `benchmark check` subcommand

/// Flags of `benchmark check`.
#[derive(clap::Args, Debug, Clone)]
pub struct CheckArgs {
    /// The history file to check (JSON lines: docs/protocol.md, "Histories").
    #[arg(long, value_name = "FILE")]
    pub history: PathBuf,
    /// What the store held before the history began: `empty` (a fresh cluster), or `unknown` (each key holds whatever its first observation says, e.g. after an earlier load run).
    #[arg(long, value_enum, default_value_t = InitialState::Empty, value_name = "STATE")]
    pub initial_state: InitialState,
    /// Give up (exit 3) after exploring this many search states over all key groups (16 bytes of memory each).
    #[arg(long, default_value_t = DEFAULT_MAX_STATES, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_states: u64,
    /// Always run the full search: do not first check each key group without its unobserved unknown-outcome commands (same verdict, only slower; for timing and debugging).
    #[arg(long)]
    pub no_prune: bool,
    /// When the check without unobserved unknown-outcome commands fails and setting them aside is provably exact, report the violation at once instead of confirming it with the full search (which may give up).
    #[arg(long, conflicts_with = "no_prune")]
    pub trust_exact_pruning: bool,
}

/// `benchmark check`: reads the history, checks it, prints the verdict on
/// stdout. Exit code: 0 linearizable, 1 violation, 2 unreadable or malformed
/// input, 3 gave up (budget exhausted). Needs no cluster.
pub fn run_check_cli(args: &CheckArgs) -> i32 {
    let started = Instant::now();
    let file = match std::fs::File::open(&args.history) {
        Ok(file) => file,
        Err(e) => {
            eprintln!(
                "error: cannot open history file {}: {e}",
                args.history.display()
            );
            return 2;
        }
    };
    let history = match read_history(std::io::BufReader::new(file)) {
        Ok(history) => history,
        Err(e) => {
            eprintln!("error: {}: {e}", args.history.display());
            return 2;
        }
    };
    let read_s = started.elapsed().as_secs_f64();
    let config = CheckConfig {
        initial: args.initial_state,
        max_states: args.max_states,
        prune: !args.no_prune,
        trust_exact_pruning: args.trust_exact_pruning,
        ..CheckConfig::default()
    };
    let outcome = match check(&history, &config) {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {}: {e}", args.history.display());
            return 2;
        }
    };
    let check_s = started.elapsed().as_secs_f64() - read_s;
    let timing = format!("read in {read_s:.3} s, checked in {check_s:.3} s");
    say(format_args!("{outcome}"));
    match outcome {
        Outcome::Ok(report) => {
            let note = report
                .pruning_note()
                .map_or(String::new(), |note| format!("; {note}"));
            say(format_args!(
                "({} ok, {} unknown, {} failed and dropped{note}; {timing})",
                report.ok, report.unknown, report.failed
            ));
            0
        }
        Outcome::Violation(_) => {
            say(format_args!("({timing})"));
            1
        }
        Outcome::Unknown(_) => 3,
    }
}

/// One line of the verdict on stdout. A reader that went away (`check ... |
/// head`) is not an error of the check: the exit code still tells.
fn say(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}
