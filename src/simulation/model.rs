//! The checker: a per-key model of what the store may hold, fed with every
//! command's invocation and outcome.
//!
//! Each client owns a disjoint set of keys (key number ≡ client index mod the
//! number of clients) and runs one command at a time, so the history of each
//! key is sequential. For each key the model keeps the SET of values it may
//! hold now (`None` = absent), which captures uncertainty:
//!
//! - a definite reply must be explained by at least one possible state; the set
//!   then narrows to the post-states of the explaining pre-states;
//! - `UnknownOutcome`: the command may or may not have happened, so the set
//!   becomes the union of "not applied" and "applied". It may also still
//!   happen *later*: a request queued at a frozen or cut-off leader can be
//!   proposed and committed seconds after the client gave up and moved on
//!   (even after a read showed it had not happened yet). So the command
//!   stays *pending* on its keys, and every later observation is explained
//!   from the states reachable by letting pending commands land, until the
//!   client's next acknowledged write in the same partition (its group, see
//!   [`Model::set_groups`]) fences them: the partition's session table
//!   refuses a sequence number older than one it applied, so nothing older
//!   can land after that;
//! - `Unavailable`, and `CheckFailed` (a CHECK did not hold): certainly not
//!   applied, nothing changes;
//! - `Rejected`, `Invalid`: the harness only builds valid commands, so
//!   either is reported as a failure;
//! - [`Model::wipe`] models data that is really lost (a store with one copy
//!   in memory whose server died): every key there becomes `{None}` and its
//!   *wipe epoch* is bumped. A command whose keys were wiped while it was in
//!   flight may have executed before the wipe (its reply reflects the
//!   pre-state, the data is gone) or after it, on the empty store (possibly
//!   as a retry of an execution the kill erased), so its reply must be
//!   explained by a pre-state or by `None`, and the key ends as `None` or as
//!   the command applied to `None`.
//!
//! The whole-cluster scenario never wipes: partitions are replicated, and
//! it only injects the crashes docs/protocol.md promises to survive (a minority of
//! each partition's replicas in memory mode; anything, including every
//! server at once, with `--persistence`), so every acknowledged write must
//! survive and the ordinary rules apply unchanged (a reply is only sent
//! once committed; a command without one is an unknown outcome).
//!
//! The model is per key, so it forgets correlations between keys of one
//! multi-key command; that only makes it more permissive, never wrong.
//!
//! SCAN rows are checked structurally (inside the range and the table,
//! strictly ascending, only keys of the key universe, values from the value
//! space), and for the keys the scanning client owns as a read of each key
//! (absent from the rows = `None`); other clients' keys are concurrent and not
//! checked further here. A GET of another client's key is likewise only
//! checked for its value space. Those reads are what the whole-history
//! linearizability check ([`crate::checker`]) adds on top of this model.

use crate::client::ClientError;
use crate::key::Key;
use crate::op::{Op, OpResult};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::time::Duration;

/// A key's content: `None` when absent.
pub type Value = Option<Vec<u8>>;

/// What one operation observed about one key.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Obs {
    /// PUT / DELETE: whether the key existed.
    Found(bool),
    /// GET / SWAP (old value) / SCAN (the row, or `None` when absent).
    Value(Value),
}

/// One operation of a command, as it affects one key.
#[derive(Clone, Debug)]
enum Step {
    Put(Vec<u8>),
    Get,
    Swap(Vec<u8>),
    Delete,
    /// A SCAN whose range covers the key.
    Scan,
    /// A CHECK of this value: in an acknowledged command it observed exactly
    /// that (see [`observed`]).
    Check(Value),
}

impl Step {
    fn is_write(&self) -> bool {
        matches!(self, Step::Put(_) | Step::Swap(_) | Step::Delete)
    }

    /// Applies the step to `state`, returning what it observes.
    fn apply(&self, state: &mut Value) -> Obs {
        match self {
            Step::Put(v) => Obs::Found(state.replace(v.clone()).is_some()),
            Step::Get | Step::Scan | Step::Check(_) => Obs::Value(state.clone()),
            Step::Swap(v) => match state {
                // SWAP on an absent key does nothing and returns null.
                None => Obs::Value(None),
                Some(old) => Obs::Value(Some(std::mem::replace(old, v.clone()))),
            },
            Step::Delete => Obs::Found(state.take().is_some()),
        }
    }
}

/// Runs a key's steps from `pre`: what they observe and the resulting state.
fn run_steps(pre: &Value, steps: &[(usize, Step)]) -> (Vec<Obs>, Value) {
    let mut state = pre.clone();
    let obs = steps.iter().map(|(_, s)| s.apply(&mut state)).collect();
    (obs, state)
}

/// Every state reachable from `possible` by letting any of the `pending`
/// commands land, in any order (a command may count more than once: that
/// only makes the model more permissive). The value space is small, so this
/// stays small.
fn closure(possible: &BTreeSet<Value>, pending: &[Vec<(usize, Step)>]) -> BTreeSet<Value> {
    let mut set = possible.clone();
    loop {
        let reached: Vec<Value> = pending
            .iter()
            .flat_map(|steps| set.iter().map(move |s| run_steps(s, steps).1))
            .collect();
        let before = set.len();
        set.extend(reached);
        if set.len() == before {
            return set;
        }
    }
}

#[derive(Clone, Debug)]
struct KeyState {
    possible: BTreeSet<Value>,
    /// Bumped every time the key's data is wiped.
    wipes: u64,
    /// Steps of unknown-outcome commands that may still land (see the
    /// module docs).
    pending: Vec<Vec<(usize, Step)>>,
    /// The key's partition: an acknowledged write of the owner in it fences
    /// the pending commands of every key in it.
    group: u64,
}

/// What the model knew about one key when a command started.
#[derive(Clone, Debug)]
struct KeyAtInvoke {
    possible: BTreeSet<Value>,
    pending: Vec<Vec<(usize, Step)>>,
    wipes: u64,
    /// The command's operations on this key: (operation index, effect).
    steps: Vec<(usize, Step)>,
}

impl KeyAtInvoke {
    /// The states the command may have started from (wipes aside).
    fn candidates(&self) -> BTreeSet<Value> {
        closure(&self.possible, &self.pending)
    }
}

/// A command in flight: everything needed to check its outcome.
#[derive(Clone, Debug)]
pub struct Invocation {
    client: usize,
    ops: Vec<Op>,
    keys: BTreeMap<Key, KeyAtInvoke>,
    at: Duration,
}

/// Outcome counts, for the summary line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub commands: u64,
    pub ok: u64,
    pub unknown: u64,
    pub unavailable: u64,
}

pub struct Model {
    seed: u64,
    clients: usize,
    values: BTreeSet<Vec<u8>>,
    keys: BTreeMap<Key, KeyState>,
    trace_hash: u64,
    pub counts: Counts,
}

/// Formats a command for messages: `PUT t3 v1; GET t3`.
pub fn fmt_ops(ops: &[Op]) -> String {
    let mut out = String::new();
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        let _ = match op {
            Op::Put { key, value } => {
                write!(out, "PUT {key} {}", String::from_utf8_lossy(value))
            }
            Op::Get { key } => write!(out, "GET {key}"),
            Op::Swap { key, value } => {
                write!(out, "SWAP {key} {}", String::from_utf8_lossy(value))
            }
            Op::Delete { key } => write!(out, "DELETE {key}"),
            Op::Scan { start, end } => write!(out, "SCAN {start} {end}"),
            Op::Check { key, expected } => {
                write!(out, "CHECK {key} {}", fmt_value(expected))
            }
            Op::Export { start, end } => write!(out, "EXPORT {start} {end}"),
        };
    }
    out
}

fn fmt_value(v: &Value) -> String {
    match v {
        Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        None => "null".into(),
    }
}

fn fmt_set(set: &BTreeSet<Value>) -> String {
    let items: Vec<String> = set.iter().map(fmt_value).collect();
    format!("{{{}}}", items.join(", "))
}

fn fmt_obs(obs: &[Obs]) -> String {
    let items: Vec<String> = obs
        .iter()
        .map(|o| match o {
            Obs::Found(true) => "found".to_string(),
            Obs::Found(false) => "not_found".to_string(),
            Obs::Value(v) => fmt_value(v),
        })
        .collect();
    format!("[{}]", items.join(", "))
}

impl Model {
    /// A model where every key of `universe` is absent.
    pub fn new(
        seed: u64,
        clients: usize,
        universe: impl IntoIterator<Item = Key>,
        values: &[Vec<u8>],
    ) -> Model {
        Model {
            seed,
            clients,
            values: values.iter().cloned().collect(),
            keys: universe
                .into_iter()
                .map(|k| {
                    let state = KeyState {
                        possible: BTreeSet::from([None]),
                        wipes: 0,
                        pending: Vec::new(),
                        group: 0,
                    };
                    (k, state)
                })
                .collect(),
            trace_hash: 0,
            counts: Counts::default(),
        }
    }

    /// Puts each key in the group (partition) `group_of` names; by default
    /// every key is in group 0.
    pub fn set_groups(&mut self, group_of: impl Fn(&Key) -> u64) {
        for (key, state) in &mut self.keys {
            state.group = group_of(key);
        }
    }

    /// The client that owns `key` (the only one that writes it).
    pub fn owner(&self, key: &Key) -> usize {
        (key.num % self.clients as u64) as usize
    }

    /// The keys of the universe, in order.
    pub fn universe(&self) -> impl Iterator<Item = &Key> {
        self.keys.keys()
    }

    /// The values `key` may hold now (`None` = absent); empty for a key
    /// outside the universe.
    pub fn possible(&self, key: &Key) -> BTreeSet<Value> {
        self.keys
            .get(key)
            .map(|s| s.possible.clone())
            .unwrap_or_default()
    }

    /// Hash of every outcome seen so far, in order: equal for equal runs.
    pub fn trace_hash(&self) -> u64 {
        self.trace_hash
    }

    /// Adds the values `ops` write to the value space (the workload's
    /// transactions write values unique to the command).
    pub fn allow_values(&mut self, ops: &[Op]) {
        for op in ops {
            if let Op::Put { value, .. } | Op::Swap { value, .. } = op {
                self.values.insert(value.clone());
            }
        }
    }

    /// Records that `client` starts `ops` at simulated time `at`.
    pub fn invoke(&self, client: usize, ops: &[Op], at: Duration) -> Invocation {
        let mut keys: BTreeMap<Key, KeyAtInvoke> = BTreeMap::new();
        let mut add = |key: &Key, i: usize, step: Step| {
            let state = &self.keys[key];
            keys.entry(key.clone())
                .or_insert_with(|| KeyAtInvoke {
                    possible: state.possible.clone(),
                    pending: state.pending.clone(),
                    wipes: state.wipes,
                    steps: Vec::new(),
                })
                .steps
                .push((i, step));
        };
        for (i, op) in ops.iter().enumerate() {
            let step = match op {
                Op::Put { key, value } => Some((key, Step::Put(value.clone()))),
                // Another client's key is concurrent: only the
                // linearizability checker judges that read.
                Op::Get { key } if self.keys.contains_key(key) && self.owner(key) != client => None,
                Op::Get { key } => Some((key, Step::Get)),
                Op::Check { key, .. }
                    if self.keys.contains_key(key) && self.owner(key) != client =>
                {
                    None
                }
                Op::Check { key, expected } => Some((key, Step::Check(expected.clone()))),
                Op::Swap { key, value } => Some((key, Step::Swap(value.clone()))),
                Op::Delete { key } => Some((key, Step::Delete)),
                Op::Scan { start, end } => {
                    let owned: Vec<&Key> = self
                        .keys
                        .range(start.clone()..=end.clone())
                        .map(|(k, _)| k)
                        .filter(|k| self.owner(k) == client)
                        .collect();
                    for k in owned {
                        add(k, i, Step::Scan);
                    }
                    None
                }
                // Only `admin backup` runs EXPORTs; the model has nothing
                // to expect of one.
                Op::Export { .. } => None,
            };
            if let Some((key, step)) = step {
                assert!(
                    self.keys.contains_key(key) && self.owner(key) == client,
                    "harness bug: client {client} uses {key}, which it does not own"
                );
                add(key, i, step);
            }
        }
        Invocation {
            client,
            ops: ops.to_vec(),
            keys,
            at,
        }
    }

    /// The keys' data was lost (e.g. the only copy died): they are absent.
    pub fn wipe(&mut self, keys: impl IntoIterator<Item = Key>) {
        for key in keys {
            if let Some(state) = self.keys.get_mut(&key) {
                state.possible = BTreeSet::from([None]);
                state.pending.clear();
                state.wipes += 1;
            }
        }
    }

    /// Checks a finished command and updates the model. `Err` describes a
    /// violation.
    pub fn complete(
        &mut self,
        inv: &Invocation,
        outcome: &Result<Vec<OpResult>, ClientError>,
        now: Duration,
    ) -> Result<(), String> {
        self.counts.commands += 1;
        {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (self.trace_hash, inv.client, inv.at, now).hash(&mut h);
            format!("{:?} {outcome:?}", inv.ops).hash(&mut h);
            self.trace_hash = h.finish();
        }
        let fail = |what: String| {
            format!(
                "seed {}: client {} command `{}` (invoked at {:?}, completed at {:?}): {what}",
                self.seed,
                inv.client,
                fmt_ops(&inv.ops),
                inv.at,
                now
            )
        };
        match outcome {
            Ok(results) => {
                self.counts.ok += 1;
                self.check_shapes(inv, results).map_err(fail)?;
                let mut updates = Vec::new();
                for (key, at) in &inv.keys {
                    let actual = observed(key, &at.steps, results);
                    let wiped = self.keys[key].wipes != at.wipes;
                    let mut candidates = at.candidates();
                    if wiped {
                        candidates.insert(None);
                    }
                    let mut post = BTreeSet::new();
                    let mut expected = Vec::new();
                    for pre in &candidates {
                        let (obs, after) = run_steps(pre, &at.steps);
                        if obs == actual {
                            post.insert(after);
                        } else {
                            expected.push(format!("from {}: {}", fmt_value(pre), fmt_obs(&obs)));
                        }
                    }
                    if post.is_empty() {
                        return Err(fail(format!(
                            "key {key}: observed {} but the possible states {}{}{} allow only: {}",
                            fmt_obs(&actual),
                            fmt_set(&at.possible),
                            if at.pending.is_empty() {
                                String::new()
                            } else {
                                format!(
                                    " (or {} with {} pending unknown-outcome command(s) landing)",
                                    fmt_set(&at.candidates()),
                                    at.pending.len()
                                )
                            },
                            if wiped {
                                " (or null: its server was killed meanwhile)"
                            } else {
                                ""
                            },
                            expected.join("; ")
                        )));
                    }
                    if wiped {
                        post = BTreeSet::from([None, run_steps(&None, &at.steps).1]);
                    }
                    updates.push((key.clone(), post));
                }
                // An acknowledged write fences the client's pending commands
                // in its partitions: they landed before it, or never will.
                let fenced: BTreeSet<u64> = inv
                    .ops
                    .iter()
                    .filter(|op| op.is_write())
                    .filter_map(|op| match op {
                        Op::Put { key, .. } | Op::Swap { key, .. } | Op::Delete { key } => {
                            Some(self.keys[key].group)
                        }
                        _ => None,
                    })
                    .collect();
                let client = inv.client;
                for (key, state) in self.keys.iter_mut() {
                    let owned = (key.num % self.clients as u64) as usize == client;
                    if owned && fenced.contains(&state.group) && !state.pending.is_empty() {
                        state.possible = closure(&state.possible, &state.pending);
                        state.pending.clear();
                    }
                }
                for (key, post) in updates {
                    self.keys.get_mut(&key).unwrap().possible = post;
                }
                Ok(())
            }
            Err(ClientError::UnknownOutcome(_)) => {
                self.counts.unknown += 1;
                for (key, at) in &inv.keys {
                    let state = self.keys.get_mut(key).unwrap();
                    if state.wipes != at.wipes {
                        state.possible = BTreeSet::from([None, run_steps(&None, &at.steps).1]);
                    } else {
                        let applied: Vec<Value> = at
                            .candidates()
                            .iter()
                            .map(|pre| run_steps(pre, &at.steps).1)
                            .collect();
                        state.possible.extend(applied);
                    }
                    // It may also land later (see the module docs).
                    if at.steps.iter().any(|(_, s)| s.is_write()) {
                        state.pending.push(at.steps.clone());
                    }
                }
                Ok(())
            }
            // Certainly not applied. A wipe meanwhile already reset the keys.
            Err(ClientError::Unavailable(_)) => {
                self.counts.unavailable += 1;
                Ok(())
            }
            // Aborted by a CHECK that did not hold: certainly not applied.
            // (The harness does not generate CHECKs yet; its actual value is
            // not checked against the model.)
            Err(ClientError::CheckFailed { .. }) => Ok(()),
            Err(e) => Err(fail(format!(
                "unexpected error for a valid single-partition command: {e:?}"
            ))),
        }
    }

    /// Result kinds match the operations; SCAN rows are well formed.
    fn check_shapes(&self, inv: &Invocation, results: &[OpResult]) -> Result<(), String> {
        if results.len() != inv.ops.len() {
            return Err(format!(
                "{} results for {} operations: {results:?}",
                results.len(),
                inv.ops.len()
            ));
        }
        for (i, (op, result)) in inv.ops.iter().zip(results).enumerate() {
            let kind_ok = matches!(
                (op, result),
                (Op::Put { .. }, OpResult::Put { .. })
                    | (Op::Get { .. }, OpResult::Get(_))
                    | (Op::Swap { .. }, OpResult::Swap(_))
                    | (Op::Delete { .. }, OpResult::Delete { .. })
                    | (Op::Scan { .. }, OpResult::Scan(_))
                    | (Op::Check { .. }, OpResult::Check)
            );
            if !kind_ok {
                return Err(format!(
                    "operation {i}: result {result:?} of the wrong kind"
                ));
            }
            let value_ok = |v: &Vec<u8>| self.values.contains(v);
            match result {
                OpResult::Get(Some(v)) | OpResult::Swap(Some(v)) if !value_ok(v) => {
                    return Err(format!(
                        "operation {i}: value {:?} was never written",
                        String::from_utf8_lossy(v)
                    ));
                }
                _ => {}
            }
            if let (Op::Scan { start, end }, OpResult::Scan(rows)) = (op, result) {
                let mut prev: Option<&Key> = None;
                for (key, value) in rows {
                    let problem = if key < start || key > end {
                        Some("outside the range")
                    } else if prev.is_some_and(|p| p >= key) {
                        Some("not strictly after the previous row (order or duplicate)")
                    } else if !self.keys.contains_key(key) {
                        Some("never written by anyone")
                    } else if !value_ok(value) {
                        Some("with a value that was never written")
                    } else {
                        None
                    };
                    if let Some(problem) = problem {
                        return Err(format!(
                            "operation {i}: row {key} {} is {problem}; rows: {}",
                            String::from_utf8_lossy(value),
                            rows.iter()
                                .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(v)))
                                .collect::<Vec<_>>()
                                .join(" ")
                        ));
                    }
                    prev = Some(key);
                }
            }
        }
        Ok(())
    }
}

/// What the reply says about `key` for each of its steps.
fn observed(key: &Key, steps: &[(usize, Step)], results: &[OpResult]) -> Vec<Obs> {
    steps
        .iter()
        .map(|(i, step)| match &results[*i] {
            // A CHECK that held read its expected value.
            OpResult::Check => match step {
                Step::Check(expected) => Obs::Value(expected.clone()),
                _ => Obs::Value(None),
            },
            OpResult::Put { found } | OpResult::Delete { found } => Obs::Found(*found),
            OpResult::Get(v) | OpResult::Swap(v) => Obs::Value(v.clone()),
            OpResult::Scan(rows) => {
                Obs::Value(rows.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()))
            }
            // No step is recorded for an EXPORT (above).
            OpResult::Export(_) => Obs::Value(None),
        })
        .collect()
}
