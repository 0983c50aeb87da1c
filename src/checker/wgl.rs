//! The search core: a Wing–Gong–Lowe linearizability search over one
//! partition's calls, in an interned form (keys and values as small
//! integers), with a fingerprint cache of visited configurations.
//!
//! See the module docs of [`crate::checker`] for the algorithm; this file is
//! the mechanics: the event list (dancing links), the model with its
//! incrementally maintained state hash, and the depth-first search.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

/// An interned value id: 0 is "absent" / `null`, written values are 1..,
/// and [`UNSEEN`] is a key's unknown initial state.
pub(crate) type ValueId = u32;

/// The model state of a key whose initial state is unknown and that no
/// operation has pinned down yet: it may hold any value, or be absent.
pub(crate) const UNSEEN: ValueId = ValueId::MAX;
/// A partition-local key id; ids follow key order, so a SCAN is an id range.
pub(crate) type KeyId = u32;

/// One operation on the model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MOp {
    Put {
        k: KeyId,
        v: ValueId,
    },
    Get {
        k: KeyId,
    },
    Swap {
        k: KeyId,
        v: ValueId,
    },
    Delete {
        k: KeyId,
    },
    /// Keys `lo..hi` (local ids, half-open).
    Scan {
        lo: KeyId,
        hi: KeyId,
    },
    /// CHECK: the key holds `v` (0: absent). A call that takes effect had
    /// every CHECK hold, whether or not its results are known.
    Check {
        k: KeyId,
        v: ValueId,
    },
}

/// An operation's observed result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum MRes {
    /// PUT / DELETE: whether the key was present.
    Found(bool),
    /// GET / SWAP: the (old) value, 0 for `null`.
    Value(ValueId),
    /// SCAN: the present keys and their values, in key order.
    Scan(Vec<(KeyId, ValueId)>),
}

/// One call (command) of a partition's history.
#[derive(Clone, Debug)]
pub(crate) struct MCall {
    /// Position of the command in the input history.
    pub origin: usize,
    pub invoke: u64,
    /// `None`: the outcome is unknown; the call may take effect at any point
    /// after `invoke`, or never.
    pub complete: Option<u64>,
    pub ops: Vec<MOp>,
    /// One per op; `None` when the results are unknown (any are accepted).
    pub results: Option<Vec<MRes>>,
}

impl MCall {
    /// Whether the call writes nothing: a read-only call whose results are
    /// unknown constrains nothing and can be dropped.
    pub fn is_read_only(&self) -> bool {
        self.ops
            .iter()
            .all(|op| matches!(op, MOp::Get { .. } | MOp::Scan { .. } | MOp::Check { .. }))
    }
}

/// A partition: its key count and its calls.
#[derive(Clone, Debug, Default)]
pub(crate) struct Problem {
    pub keys: usize,
    /// Keys start [`UNSEEN`] (unknown initial state) instead of absent.
    pub unseen_start: bool,
    pub calls: Vec<MCall>,
}

impl Problem {
    /// The prefix of this history that ends when the `rank`-th completed
    /// call (in completion order `order`) returns: calls that completed
    /// earlier keep their results; calls invoked by then but completing later
    /// become pending (optional, results unknown); later calls are left out.
    pub fn prefix(&self, order: &[usize], rank: usize) -> Problem {
        let mut included = vec![false; self.calls.len()];
        for &i in &order[..=rank] {
            included[i] = true;
        }
        let cut = self.calls[order[rank]]
            .complete
            .expect("ordered calls completed");
        let calls = self
            .calls
            .iter()
            .zip(included)
            .filter_map(|(call, done)| {
                if done {
                    Some(call.clone())
                } else if call.invoke <= cut && !call.is_read_only() {
                    Some(MCall {
                        complete: None,
                        results: None,
                        ..call.clone()
                    })
                } else {
                    None
                }
            })
            .collect();
        Problem {
            keys: self.keys,
            unseen_start: self.unseen_start,
            calls,
        }
    }

    /// Indices of the completed calls in completion order (ties: by invoke,
    /// then position).
    pub fn completion_order(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.calls.len())
            .filter(|&i| self.calls[i].complete.is_some())
            .collect();
        order.sort_by_key(|&i| (self.calls[i].complete, self.calls[i].invoke, i));
        order
    }
}

/// What a search found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The state budget ran out first.
    GaveUp,
}

/// The shared state budget: configurations visited so far, and the limit.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Budget {
    pub used: u64,
    pub max: u64,
}

// ---------------------------------------------------------------------------
// Fingerprints

use crate::hash::splitmix64 as splitmix;

/// A pseudo-random 128-bit word for `x` in the domain `tag`.
fn h128(tag: u64, x: u64) -> u128 {
    let a = splitmix(splitmix(x ^ tag));
    let b = splitmix(a ^ splitmix(x.rotate_left(29) ^ !tag));
    (u128::from(a) << 64) | u128::from(b)
}

const TAG_CALL: u64 = 0x6361_6c6c_5f5f_5f5f; // "call____"
const TAG_KV: u64 = 0x6b76_5f5f_5f5f_5f5f; // "kv______"

/// The Zobrist word of "key `k` holds value `v`"; absent keys contribute 0.
fn zob_kv(k: KeyId, v: ValueId) -> u128 {
    if v == 0 {
        0
    } else {
        h128(TAG_KV, (u64::from(k) << 32) | u64::from(v))
    }
}

/// Hashes fingerprints (already uniformly random) by their low 64 bits.
#[derive(Default)]
struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u128(&mut self, i: u128) {
        self.0 = i as u64;
    }
}

type FingerprintSet = HashSet<u128, BuildHasherDefault<FingerprintHasher>>;

// ---------------------------------------------------------------------------
// The model: key -> value, with an undo log and a set hash of its contents.

struct Model {
    vals: Vec<ValueId>,
    /// XOR of `zob_kv(k, vals[k])` over all keys.
    hash: u128,
}

impl Model {
    fn new(keys: usize, unseen_start: bool) -> Model {
        if unseen_start {
            Model {
                vals: vec![UNSEEN; keys],
                hash: (0..keys).fold(0, |h, k| h ^ zob_kv(k as KeyId, UNSEEN)),
            }
        } else {
            Model {
                vals: vec![0; keys],
                hash: 0,
            }
        }
    }

    /// Whether a SCAN of keys `lo..hi` can return `rows`; pins down the
    /// unseen keys of the range.
    fn scan(
        &mut self,
        lo: KeyId,
        hi: KeyId,
        rows: &[(KeyId, ValueId)],
        undo: &mut Vec<(KeyId, ValueId)>,
    ) -> bool {
        let mut rows = rows.iter().peekable();
        for k in lo..hi {
            let listed = rows.peek().filter(|(key, _)| *key == k).map(|&&(_, v)| v);
            match (self.vals[k as usize], listed) {
                (UNSEEN, listed) => {
                    self.set(k, listed.unwrap_or(0), undo);
                }
                (0, None) => {}
                (cur, Some(v)) if cur == v && v != 0 => {}
                _ => return false,
            }
            if listed.is_some() {
                rows.next();
            }
        }
        // Rows out of the range, out of order or repeated are left over.
        rows.next().is_none()
    }

    fn set(&mut self, k: KeyId, v: ValueId, undo: &mut Vec<(KeyId, ValueId)>) -> ValueId {
        let old = self.vals[k as usize];
        undo.push((k, old));
        self.vals[k as usize] = v;
        self.hash ^= zob_kv(k, old) ^ zob_kv(k, v);
        old
    }

    fn undo_to(&mut self, undo: &mut Vec<(KeyId, ValueId)>, start: usize) {
        while undo.len() > start {
            let (k, old) = undo.pop().expect("len > start");
            let cur = self.vals[k as usize];
            self.hash ^= zob_kv(k, cur) ^ zob_kv(k, old);
            self.vals[k as usize] = old;
        }
    }

    /// Applies `call`'s ops in order, checking each result it knows. On a
    /// mismatch the state is restored and `false` returned; on success the
    /// writes are in `undo` above its initial length.
    ///
    /// An [`UNSEEN`] key accepts any observation, which then pins it down
    /// (a GET of `x` makes it `x`, a `not_found` or a SCAN without it makes
    /// it absent). A SWAP of an unseen key whose result is unknown leaves it
    /// unseen: it is really "absent, or the new value", so this accepts a
    /// little more than the exact model (never less).
    fn apply(&mut self, call: &MCall, undo: &mut Vec<(KeyId, ValueId)>) -> bool {
        let start = undo.len();
        for (i, op) in call.ops.iter().enumerate() {
            let expected = call.results.as_ref().map(|r| &r[i]);
            let matches = match *op {
                MOp::Put { k, v } => {
                    let old = self.set(k, v, undo);
                    expected.is_none_or(|e| old == UNSEEN || *e == MRes::Found(old != 0))
                }
                MOp::Get { k } => match expected {
                    None => true,
                    Some(MRes::Value(x)) if self.vals[k as usize] == UNSEEN => {
                        self.set(k, *x, undo);
                        true
                    }
                    Some(e) => *e == MRes::Value(self.vals[k as usize]),
                },
                MOp::Swap { k, v } => {
                    let old = self.vals[k as usize];
                    match (old, expected) {
                        (UNSEEN, None) => true,
                        (UNSEEN, Some(MRes::Value(x))) => {
                            // It was `x`, now replaced; or absent, and stays so.
                            self.set(k, if *x == 0 { 0 } else { v }, undo);
                            true
                        }
                        (UNSEEN, Some(_)) => false,
                        (old, expected) => {
                            if old != 0 {
                                self.set(k, v, undo);
                            }
                            expected.is_none_or(|e| *e == MRes::Value(old))
                        }
                    }
                }
                MOp::Delete { k } => {
                    let old = self.vals[k as usize];
                    if old != 0 {
                        self.set(k, 0, undo);
                    }
                    expected.is_none_or(|e| old == UNSEEN || *e == MRes::Found(old != 0))
                }
                MOp::Scan { lo, hi } => match expected {
                    None => true,
                    Some(MRes::Scan(rows)) => self.scan(lo, hi, rows, undo),
                    Some(_) => false,
                },
                MOp::Check { k, v } => match self.vals[k as usize] {
                    UNSEEN => {
                        self.set(k, v, undo);
                        true
                    }
                    now => now == v,
                },
            };
            if !matches {
                self.undo_to(undo, start);
                return false;
            }
        }
        true
    }
}

// ---------------------------------------------------------------------------
// The search

const HEAD: usize = 0;
const TAIL: usize = 1;
const NONE: usize = usize::MAX;

/// The event list: call and return events in time order, doubly linked so a
/// linearized call's events can be lifted out and put back in O(1).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each event: its call, and whether it is the return event.
    call_of: Vec<usize>,
    is_return: Vec<bool>,
    call_entry: Vec<usize>,
    return_entry: Vec<usize>,
}

impl Events {
    fn new(calls: &[MCall]) -> Events {
        // (time, 0 = call / 1 = return, call index). A call and a return at
        // the same instant count as concurrent: the call event goes first.
        let mut events: Vec<(u64, u8, usize)> = Vec::with_capacity(calls.len() * 2);
        for (i, call) in calls.iter().enumerate() {
            events.push((call.invoke, 0, i));
            if let Some(t) = call.complete {
                events.push((t, 1, i));
            }
        }
        events.sort_unstable();
        let n = events.len() + 2;
        let mut ev = Events {
            next: vec![NONE; n],
            prev: vec![NONE; n],
            call_of: vec![NONE; n],
            is_return: vec![false; n],
            call_entry: vec![NONE; calls.len()],
            return_entry: vec![NONE; calls.len()],
        };
        let mut last = HEAD;
        for (j, &(_, kind, call)) in events.iter().enumerate() {
            let e = j + 2;
            ev.call_of[e] = call;
            ev.is_return[e] = kind == 1;
            if kind == 1 {
                ev.return_entry[call] = e;
            } else {
                ev.call_entry[call] = e;
            }
            ev.next[last] = e;
            ev.prev[e] = last;
            last = e;
        }
        ev.next[last] = TAIL;
        ev.prev[TAIL] = last;
        ev
    }

    fn remove(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn restore(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    fn lift(&mut self, call: usize) {
        self.remove(self.call_entry[call]);
        if self.return_entry[call] != NONE {
            self.remove(self.return_entry[call]);
        }
    }

    /// Undoes [`Events::lift`]; lifts must be undone in reverse order.
    fn unlift(&mut self, call: usize) {
        if self.return_entry[call] != NONE {
            self.restore(self.return_entry[call]);
        }
        self.restore(self.call_entry[call]);
    }
}

struct Frame {
    call: usize,
    entry: usize,
    undo_start: usize,
    /// Whether the call was chosen in the pass over optional calls.
    optional_pass: bool,
}

/// The order in which a search tries the minimal calls of a level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Order {
    /// Invoke order, known and unknown outcomes alike: unknown writes are
    /// linearized eagerly, right after their invoke. Good when they mostly
    /// took effect at once (or are overwritten before anyone looks).
    Eager,
    /// Two passes: first the calls with a known outcome, then the optional
    /// ones, each in invoke order. An unknown write is only linearized where
    /// a known call cannot go next without it. Good when many unknown writes
    /// are pending at once and land late.
    KnownFirst,
}

/// Least first budget of each order in [`check_problem`] (it is at least 4
/// states per call); it grows 4x per round.
pub(crate) const FIRST_ROUND_STATES: u64 = 20_000;

/// Decides `problem` with a portfolio: the two [`Order`]s take turns, each
/// restarted with a budget 4x the last, until one reaches a verdict (both
/// searches are complete, so either's verdict is final) or `budget` runs
/// out. Which order is fast depends on how the unknown calls behaved (one
/// can take 100x the states of the other), so this costs at most a small
/// constant factor over the better one.
pub(crate) fn check_problem(problem: &Problem, budget: &mut Budget) -> Verdict {
    // A linearization takes at least one state per known call, so smaller
    // rounds could only give up.
    let mut round = FIRST_ROUND_STATES.max(4 * problem.calls.len() as u64);
    loop {
        for order in [Order::Eager, Order::KnownFirst] {
            let allowance = round.min(budget.max.saturating_sub(budget.used));
            let mut this = Budget {
                used: 0,
                max: allowance,
            };
            let verdict = search(problem, order, &mut this);
            budget.used += this.used.min(allowance);
            if verdict != Verdict::GaveUp {
                return verdict;
            }
            if budget.used >= budget.max {
                return Verdict::GaveUp;
            }
        }
        round = round.saturating_mul(4);
    }
}

/// Searches for a linearization of `problem`'s calls in the given `order`,
/// counting each new configuration against `budget`. The order does not
/// affect the verdict, only the speed.
pub(crate) fn search(problem: &Problem, order: Order, budget: &mut Budget) -> Verdict {
    let two_pass = order == Order::KnownFirst;
    let calls = &problem.calls;
    let mut events = Events::new(calls);
    let zob_call: Vec<u128> = (0..calls.len()).map(|i| h128(TAG_CALL, i as u64)).collect();
    let mut model = Model::new(problem.keys, problem.unseen_start);
    let mut undo: Vec<(KeyId, ValueId)> = Vec::new();
    let mut cache = FingerprintSet::default();
    let mut stack: Vec<Frame> = Vec::new();
    // Calls that must be linearized: those with a known outcome.
    let mut required_left = calls.iter().filter(|c| c.complete.is_some()).count();
    let mut set_hash: u128 = 0;
    let mut entry = events.next[HEAD];
    let mut optional_pass = false;
    loop {
        if required_left == 0 {
            // Whatever is left is optional (unknown outcome): drop it.
            return Verdict::Linearizable;
        }
        if entry != TAIL && !events.is_return[entry] {
            // A minimal call: every call before the first return in the list
            // was invoked before any pending call completed.
            let call = events.call_of[entry];
            if two_pass && calls[call].complete.is_none() != optional_pass {
                entry = events.next[entry];
                continue;
            }
            let undo_start = undo.len();
            if model.apply(&calls[call], &mut undo) {
                let fingerprint = set_hash ^ zob_call[call] ^ model.hash;
                if cache.insert(fingerprint) {
                    budget.used += 1;
                    if budget.used > budget.max {
                        return Verdict::GaveUp;
                    }
                    set_hash ^= zob_call[call];
                    stack.push(Frame {
                        call,
                        entry,
                        undo_start,
                        optional_pass,
                    });
                    events.lift(call);
                    if calls[call].complete.is_some() {
                        required_left -= 1;
                    }
                    entry = events.next[HEAD];
                    optional_pass = false;
                    continue;
                }
                model.undo_to(&mut undo, undo_start);
            }
            entry = events.next[entry];
        } else if two_pass && !optional_pass {
            // Known calls exhausted at this level: now the optional ones.
            optional_pass = true;
            entry = events.next[HEAD];
        } else {
            // The first pending return: its call has to come before anything
            // later, and no candidate worked. Backtrack.
            let Some(frame) = stack.pop() else {
                return Verdict::NotLinearizable;
            };
            model.undo_to(&mut undo, frame.undo_start);
            events.unlift(frame.call);
            set_hash ^= zob_call[frame.call];
            if calls[frame.call].complete.is_some() {
                required_left += 1;
            }
            entry = events.next[frame.entry];
            optional_pass = frame.optional_pass;
        }
    }
}

// ---------------------------------------------------------------------------
// Setting aside unobserved unknown-outcome calls

/// A problem with its unobserved unknown-outcome calls set aside (see
/// [`Problem::without_unobserved_unknowns`]).
pub(crate) struct Pruned {
    pub problem: Problem,
    /// Calls set aside.
    pub set_aside: usize,
    /// Whether `problem` failing proves the original fails too (the original
    /// is linearizable iff `problem` is). When `false`, only `problem`
    /// passing is conclusive.
    pub exact: bool,
}

impl Problem {
    /// The calls with an unknown outcome whose writes no completed result
    /// could have observed: every op is a PUT or SWAP of a `(key, value)`
    /// pair that no completed GET, SWAP or SCAN returned, or a read (whose
    /// unknown result constrains nothing). DELETEs are never set aside (an
    /// absence is observable without any value).
    ///
    /// Soundness (either way): an unknown-outcome call may never have taken
    /// effect, so a linearization of the remaining calls is one of the whole
    /// history in which the set-aside calls did not happen. Passing is
    /// therefore always conclusive.
    ///
    /// Exactness (a failure is conclusive too), proven in the module docs of
    /// [`crate::checker`]: it holds with an empty initial state when, for
    /// every key a set-aside call PUTs, no kept call DELETEs it, no kept
    /// unknown call SWAPs it, and every completed PUT of it that replied
    /// `found` was invoked after some completed PUT of it had completed,
    /// completed before any set-aside PUT of it was invoked, or follows a PUT
    /// of it in the same command — so a set-aside PUT can never be what made
    /// the key present for an observer. Set-aside SWAPs
    /// need no condition: they only replace a present value by an unobserved
    /// one, which changes no later result.
    ///
    /// `None` when no call qualifies.
    pub fn without_unobserved_unknowns(&self) -> Option<Pruned> {
        let mut observed: HashSet<(KeyId, ValueId)> = HashSet::new();
        for call in &self.calls {
            // A CHECK observes its pair even when its call's outcome is
            // unknown: if the call took effect, the pair was there.
            for op in &call.ops {
                if let MOp::Check { k, v } = *op {
                    observed.insert((k, v));
                }
            }
            let Some(results) = &call.results else {
                continue;
            };
            for (op, res) in call.ops.iter().zip(results) {
                match (op, res) {
                    (MOp::Get { k } | MOp::Swap { k, .. }, MRes::Value(v)) => {
                        observed.insert((*k, *v));
                    }
                    (MOp::Scan { .. }, MRes::Scan(rows)) => observed.extend(rows.iter().copied()),
                    _ => {}
                }
            }
        }
        let unobserved = |call: &MCall| {
            call.complete.is_none()
                && call.ops.iter().all(|op| match *op {
                    MOp::Put { k, v } | MOp::Swap { k, v } => !observed.contains(&(k, v)),
                    MOp::Get { .. } | MOp::Scan { .. } | MOp::Check { .. } => true,
                    MOp::Delete { .. } => false,
                })
        };
        let aside: Vec<bool> = self.calls.iter().map(unobserved).collect();
        let set_aside = aside.iter().filter(|&&a| a).count();
        if set_aside == 0 {
            return None;
        }
        let exact = !self.unseen_start && {
            let mut put_keys: Vec<bool> = vec![false; self.keys];
            for (call, _) in self.calls.iter().zip(&aside).filter(|(_, &a)| a) {
                for op in &call.ops {
                    if let MOp::Put { k, .. } = *op {
                        put_keys[k as usize] = true;
                    }
                }
            }
            // Per key: the earliest invoke of a set-aside PUT of it (none of
            // them can take effect before), and the earliest completion of a
            // completed call that PUTs it.
            let mut first_aside_put: Vec<u64> = vec![u64::MAX; self.keys];
            for (call, _) in self.calls.iter().zip(&aside).filter(|(_, &a)| a) {
                for op in &call.ops {
                    if let MOp::Put { k, .. } = *op {
                        let first = &mut first_aside_put[k as usize];
                        *first = (*first).min(call.invoke);
                    }
                }
            }
            let mut first_put_done: Vec<u64> = vec![u64::MAX; self.keys];
            for call in &self.calls {
                if let Some(done) = call.complete {
                    for op in &call.ops {
                        if let MOp::Put { k, .. } = *op {
                            let first = &mut first_put_done[k as usize];
                            *first = (*first).min(done);
                        }
                    }
                }
            }
            self.calls.iter().zip(&aside).all(|(call, &a)| {
                if a {
                    return true;
                }
                let mut put_before: Vec<KeyId> = Vec::new();
                call.ops.iter().enumerate().all(|(i, op)| match *op {
                    MOp::Delete { k } => !put_keys[k as usize],
                    MOp::Swap { k, .. } => call.complete.is_some() || !put_keys[k as usize],
                    MOp::Put { k, .. } => {
                        let found = matches!(
                            call.results.as_ref().map(|r| &r[i]),
                            Some(MRes::Found(true))
                        );
                        let fine = !put_keys[k as usize]
                            || !found
                            || put_before.contains(&k)
                            || call.invoke > first_put_done[k as usize]
                            || call
                                .complete
                                .is_some_and(|c| c < first_aside_put[k as usize]);
                        put_before.push(k);
                        fine
                    }
                    // Every CHECK's pair is observed, so no kept CHECK runs
                    // where the runs differ (there the key holds an
                    // unobserved pair).
                    MOp::Get { .. } | MOp::Scan { .. } | MOp::Check { .. } => true,
                })
            })
        };
        let calls = self
            .calls
            .iter()
            .zip(&aside)
            .filter(|(_, &a)| !a)
            .map(|(call, _)| call.clone())
            .collect();
        Some(Pruned {
            problem: Problem {
                keys: self.keys,
                unseen_start: self.unseen_start,
                calls,
            },
            set_aside,
            exact,
        })
    }
}

/// Which search decided a problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Path {
    /// The search over every call.
    Full,
    /// The search with `set_aside` unobserved unknown-outcome calls left out
    /// (it passed, or it failed, the pruning was exact and trusted).
    Pruned { set_aside: usize },
    /// The full search gave up after the search without `set_aside`
    /// unobserved unknown-outcome calls failed with an exact pruning (not
    /// trusted): the history is in fact not linearizable.
    GaveUpAfterExactFailure { set_aside: usize },
}

/// Decides `problem` in two phases when it has unobserved unknown-outcome
/// calls: first without them (each such call is a free choice of the search,
/// and 20-40 of them can multiply its states by 10^4), then — if that failed
/// or gave up — with every call. With `trust_exact`, a failure with an exact
/// pruning is final instead. The first phase gets half the remaining budget
/// (all of it when its failure is final).
pub(crate) fn decide(
    problem: &Problem,
    budget: &mut Budget,
    prune: bool,
    trust_exact: bool,
) -> (Verdict, Path) {
    let pruned = if prune {
        problem.without_unobserved_unknowns()
    } else {
        None
    };
    let Some(pruned) = pruned else {
        return (check_problem(problem, budget), Path::Full);
    };
    let set_aside = pruned.set_aside;
    let final_failure = pruned.exact && trust_exact;
    let left = budget.max.saturating_sub(budget.used);
    let mut first = Budget {
        used: budget.used,
        max: budget.used
            + if final_failure {
                left
            } else {
                left.div_ceil(2)
            },
    };
    let verdict = check_problem(&pruned.problem, &mut first);
    budget.used = first.used.min(first.max);
    match verdict {
        Verdict::Linearizable => (verdict, Path::Pruned { set_aside }),
        _ if final_failure => (verdict, Path::Pruned { set_aside }),
        // Not conclusive: a set-aside call may be needed (e.g. an unknown PUT
        // whose only trace is a later PUT replying `found`).
        _ => match check_problem(problem, budget) {
            Verdict::GaveUp if verdict == Verdict::NotLinearizable && pruned.exact => {
                (Verdict::GaveUp, Path::GaveUpAfterExactFailure { set_aside })
            }
            full => (full, Path::Full),
        },
    }
}
