//! The safety checkers. All state here is harness-owned (it outlives node
//! incarnations) and is fed by the node drivers and the client tasks as
//! events happen, so a violation is reported at the step that causes it.
//!
//! | check | what it verifies |
//! |---|---|
//! | [`Check::ElectionSafety`] | §5.2: at most one leader per term, over the whole run (every node's role and term are recorded after every step/tick/persist). |
//! | [`Check::CommittedChanged`] | §5.4.3 State Machine Safety: every `(index → term, data)` any node ever applied, in any incarnation, agrees with every other application of that index; and every node's whole state machine at an index (a hash chain over every entry applied up to it, see [`chain`]) is the same, whether it got there by applying entries, from a snapshot installed from a leader, or from a snapshot recovered from its disk. A snapshot's `(index, term)` must be the committed entry's, and its register the newest value applied at or below its index. |
//! | [`Check::LogMatching`] | §5.3 Log Matching, spot-checked every few hundred ms over the logs the nodes publish: two logs with the same term at an index agree on every entry up to it that both still hold (a log that starts after a snapshot holds only the snapshot's `(index, term)` there, and nothing below it); and every entry at or below a node's commit index, and the position of the snapshot its log starts after, equals the entry applied at that index. Whenever a node publishes its log (also right after each snapshot install), its terms must not decrease from the snapshot's on. |
//! | [`Check::AckedLost`] | Durability: a proposal the client saw applied (acknowledged) is, after the final heal, applied at the same index on every node (by applying it, or by starting from a verified snapshot at or after its index). |
//! | [`Check::StaleRead`] | ReadIndex linearizability (lite): a read returns the register value at its read index, which must include every value acknowledged before the read was invoked. |
//! | [`Check::Liveness`] | After healing everything: a leader, a committed proposal and converged applied indexes within a bound. |
//! | [`Check::Recovery`] | The driver could rebuild its state from its write-ahead log. |

use distkv::raft::{Entry, EntryData, Index, NodeId, SnapshotMeta, Term};
use std::collections::BTreeMap;
use std::fmt;

/// Which property failed; the name appears in the panic message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Check {
    ElectionSafety,
    CommittedChanged,
    LogMatching,
    AckedLost,
    StaleRead,
    Liveness,
    Recovery,
}

impl Check {
    pub const ALL: [Check; 7] = [
        Check::ElectionSafety,
        Check::CommittedChanged,
        Check::LogMatching,
        Check::AckedLost,
        Check::StaleRead,
        Check::Liveness,
        Check::Recovery,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Check::ElectionSafety => "election-safety",
            Check::CommittedChanged => "committed-entry-changed",
            Check::LogMatching => "log-matching",
            Check::AckedLost => "acknowledged-write-lost",
            Check::StaleRead => "stale-read",
            Check::Liveness => "liveness",
            Check::Recovery => "recovery",
        }
    }

    /// The check named in a panic message, if any (`[name]`).
    pub fn from_message(msg: &str) -> Option<Check> {
        Check::ALL
            .into_iter()
            .find(|c| msg.contains(&format!("[{}]", c.name())))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed check.
#[derive(Debug)]
pub struct Violation {
    pub check: Check,
    pub detail: String,
}

fn violation<T>(check: Check, detail: String) -> Result<T, Violation> {
    Err(Violation { check, detail })
}

/// FNV-1a, for entry fingerprints and the trace hash (deterministic, unlike
/// std's `RandomState`).
#[derive(Clone, Copy, Debug)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// A compact identity of an entry's payload, for log comparisons.
pub fn fingerprint(data: &EntryData) -> u64 {
    let mut h = Fnv::default();
    h.write(&bincode::serialize(data).expect("entry data encodes"));
    h.0
}

/// The state machine's identity at an index: a hash chain over every entry
/// applied up to it, `chain(i) = H(chain(i - 1), index, term, fingerprint)`
/// from [`CHAIN_START`] at index 0. Two nodes at the same index with the
/// same chain applied the same entries in the same order (an entry skipped
/// or applied twice, or a snapshot labelled with the wrong index, changes
/// it), so the register snapshots carry it.
pub fn chain(prev: u64, entry: &Entry) -> u64 {
    let mut h = Fnv(prev);
    h.write(&entry.index.to_le_bytes());
    h.write(&entry.term.to_le_bytes());
    h.write(&fingerprint(&entry.data).to_le_bytes());
    h.0
}

/// The chain of the empty state machine (index 0).
pub const CHAIN_START: u64 = 0xcbf2_9ce4_8422_2325;

/// What a node publishes of its log for the spot checks: the position of
/// the snapshot its log starts after (`(0, 0)`: none), `(term, fingerprint)`
/// of the entries after it, and its commit index at that moment.
#[derive(Clone, Debug, Default)]
pub struct LogImage {
    pub snapshot_index: Index,
    pub snapshot_term: Term,
    /// Entries `snapshot_index + 1 ..= last_index()`.
    pub entries: Vec<(Term, u64)>,
    pub commit: Index,
}

impl LogImage {
    pub fn last_index(&self) -> Index {
        self.snapshot_index + self.entries.len() as Index
    }

    /// `(term, fingerprint)` at `index`; the fingerprint is `None` at the
    /// snapshot's position (only its term is known there).
    fn at(&self, index: Index) -> Option<(Term, Option<u64>)> {
        if index == self.snapshot_index {
            return Some((self.snapshot_term, None));
        }
        if index < self.snapshot_index || index > self.last_index() {
            return None;
        }
        let (term, fp) = self.entries[(index - self.snapshot_index - 1) as usize];
        Some((term, Some(fp)))
    }
}

/// An acknowledged proposal.
#[derive(Clone, Debug)]
pub struct Ack {
    pub value: Vec<u8>,
    pub index: Index,
}

/// A read in flight: what it must at least see.
#[derive(Clone, Debug)]
pub struct ReadToken {
    /// The newest acknowledged value (and its index) when the read was
    /// invoked.
    pub must_see: Option<(Index, Vec<u8>)>,
}

/// What a served read returned: the read index, and the register there (the
/// newest Normal entry at or below it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadResult {
    pub read_index: Index,
    pub value: Option<(Index, Vec<u8>)>,
}

/// Outcome counters (part of the determinism comparison).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub proposals: u64,
    pub acked: u64,
    pub propose_failed: u64,
    pub reads: u64,
    pub reads_ok: u64,
    pub applies: u64,
    pub leaders: u64,
}

#[derive(Default)]
pub struct Checker {
    /// The leader of each term ever seen.
    leaders: BTreeMap<Term, NodeId>,
    /// Every applied entry: index → (term, fingerprint, who applied it first).
    committed: BTreeMap<Index, (Term, u64, NodeId)>,
    /// The state machine's [`chain`] at each index any node reached.
    chains: BTreeMap<Index, u64>,
    /// Normal payloads of applied entries, by index.
    values: BTreeMap<Index, Vec<u8>>,
    acks: Vec<Ack>,
    /// Newest acknowledged value: (index, value).
    newest_ack: Option<(Index, Vec<u8>)>,
    pub counts: Counts,
    trace: Fnv,
}

fn show(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

impl Checker {
    /// Mixes an event into the trace hash (same seed ⇒ same hash).
    pub fn trace(&mut self, at_nanos: u128, event: &str) {
        self.trace.write(&at_nanos.to_le_bytes());
        self.trace.write(event.as_bytes());
    }

    pub fn trace_hash(&self) -> u64 {
        self.trace.0
    }

    pub fn acks(&self) -> &[Ack] {
        &self.acks
    }

    /// (1) Election safety.
    pub fn leader(&mut self, term: Term, id: NodeId) -> Result<bool, Violation> {
        match self.leaders.get(&term) {
            Some(&other) if other != id => violation(
                Check::ElectionSafety,
                format!("two leaders in term {term}: node {other} and node {id}"),
            ),
            Some(_) => Ok(false),
            None => {
                self.leaders.insert(term, id);
                self.counts.leaders += 1;
                Ok(true)
            }
        }
    }

    /// (2) Committed entries never change: `node` applied `entry`, and its
    /// state machine's [`chain`] is now `state`.
    pub fn applied(&mut self, node: NodeId, entry: &Entry, state: u64) -> Result<(), Violation> {
        self.counts.applies += 1;
        let fp = fingerprint(&entry.data);
        self.check_entry(node, entry, fp)?;
        // The state before this entry is known (someone reached index - 1
        // by applying it or from a verified snapshot), so the state after
        // it is too.
        let prev = match entry.index {
            1 => Some(CHAIN_START),
            i => self.chains.get(&(i - 1)).copied(),
        };
        let expected = prev.map_or(state, |prev| chain(prev, entry));
        if state != expected {
            return violation(
                Check::CommittedChanged,
                format!(
                    "node {node} applied index {} (term {}) but its state machine differs from                      the one every other node has there (an entry skipped or applied twice, or                      a wrong snapshot)",
                    entry.index, entry.term
                ),
            );
        }
        self.chains.entry(entry.index).or_insert(expected);
        Ok(())
    }

    /// (2) `node` starts from a snapshot (installed from a leader, taken
    /// locally, or recovered from its disk): its position is a committed
    /// entry's, its register is the newest value applied at or below it,
    /// and its state machine equals every other node's there.
    pub fn snapshot(
        &mut self,
        node: NodeId,
        meta: &SnapshotMeta,
        register: &Option<(Index, Vec<u8>)>,
        state: u64,
        how: &str,
    ) -> Result<(), Violation> {
        let index = meta.index;
        if let Some(&(term, _, first)) = self.committed.get(&index) {
            if term != meta.term {
                return violation(
                    Check::CommittedChanged,
                    format!(
                        "node {node} {how} a snapshot at index {index} term {}, but node {first}                          applied term {term} there",
                        meta.term
                    ),
                );
            }
        }
        match self.chains.get(&index) {
            Some(&c) if c != state => {
                return violation(
                    Check::CommittedChanged,
                    format!(
                        "node {node} {how} a snapshot at index {index} whose state machine                          differs from the one every other node has there (register {:?})",
                        register.as_ref().map(|(i, v)| (i, show(v)))
                    ),
                )
            }
            Some(_) => {
                let expected = self.values.range(..=index).next_back();
                if expected.map(|(i, v)| (*i, v)) != register.as_ref().map(|(i, v)| (*i, v)) {
                    return violation(
                        Check::CommittedChanged,
                        format!(
                            "node {node} {how} a snapshot at index {index} with register {:?},                              but the newest value applied at or below it is {:?}",
                            register.as_ref().map(|(i, v)| (i, show(v))),
                            expected.map(|(i, v)| (i, show(v)))
                        ),
                    );
                }
            }
            None => {
                // Every snapshot is some node's state machine at an index
                // it reached (by applying, or from a snapshot checked here).
                return violation(
                    Check::CommittedChanged,
                    format!(
                        "node {node} {how} a snapshot at index {index}, which no node's state \
                         machine has reached"
                    ),
                );
            }
        }
        Ok(())
    }

    fn check_entry(&mut self, node: NodeId, entry: &Entry, fp: u64) -> Result<(), Violation> {
        match self.committed.get(&entry.index) {
            Some(&(term, f, first)) if (term, f) != (entry.term, fp) => violation(
                Check::CommittedChanged,
                format!(
                    "node {node} applied index {} as (term {}, {:?}) but node {first} applied \
                     it as (term {term}, {:?})",
                    entry.index,
                    entry.term,
                    describe(&entry.data),
                    self.values.get(&entry.index).map(|v| show(v)),
                ),
            ),
            Some(_) => Ok(()),
            None => {
                self.committed.insert(entry.index, (entry.term, fp, node));
                if let EntryData::Normal(v) = &entry.data {
                    self.values.insert(entry.index, v.clone());
                }
                Ok(())
            }
        }
    }

    /// (3) A log's terms never decrease (from the snapshot's on): every
    /// leader appends in its own term, which is above the terms before it,
    /// and a follower's log is a prefix of some leader's. Checked whenever a
    /// node publishes its log (also right after each snapshot install).
    pub fn log_shape(&self, id: NodeId, log: &LogImage) -> Result<(), Violation> {
        let mut prev = log.snapshot_term;
        for (index, &(term, _)) in (log.snapshot_index + 1..).zip(&log.entries) {
            if term < prev {
                return violation(
                    Check::LogMatching,
                    format!(
                        "node {id}'s log has term {term} at index {index} after term {prev} \
                         (snapshot at {} term {})",
                        log.snapshot_index, log.snapshot_term
                    ),
                );
            }
            prev = term;
        }
        Ok(())
    }

    /// (3) Log matching over published logs, plus: entries at or below a
    /// node's commit index (and the snapshot position its log starts
    /// after) equal what was applied there. A log holds nothing below its
    /// snapshot, so two logs are compared only where both hold entries (at
    /// a snapshot position, only the term is known).
    pub fn log_matching(&self, logs: &[(NodeId, &LogImage)]) -> Result<(), Violation> {
        for (id, log) in logs {
            let first = log.snapshot_index.max(1);
            for index in first..=log.commit.min(log.last_index()) {
                let (term, fp) = log.at(index).unwrap();
                if let Some(&(t, f, first)) = self.committed.get(&index) {
                    if t != term || fp.is_some_and(|fp| fp != f) {
                        return violation(
                            Check::LogMatching,
                            format!(
                                "node {id}'s log has term {term} at committed index {index} \
                                 (commit {}, snapshot at {}), but node {first} applied term {t} \
                                 there",
                                log.commit, log.snapshot_index
                            ),
                        );
                    }
                }
            }
        }
        for (x, (a_id, a)) in logs.iter().enumerate() {
            for (b_id, b) in &logs[x + 1..] {
                // Indexes both logs hold (index 0 is everyone's empty start).
                let lo = a.snapshot_index.max(b.snapshot_index).max(1);
                let hi = a.last_index().min(b.last_index());
                let Some(top) = (lo..=hi)
                    .rev()
                    .find(|&i| a.at(i).unwrap().0 == b.at(i).unwrap().0)
                else {
                    continue;
                };
                let differs = |j: Index| {
                    let ((ta, fa), (tb, fb)) = (a.at(j).unwrap(), b.at(j).unwrap());
                    ta != tb || matches!((fa, fb), (Some(fa), Some(fb)) if fa != fb)
                };
                if let Some(j) = (lo..=top).find(|&j| differs(j)) {
                    return violation(
                        Check::LogMatching,
                        format!(
                            "nodes {a_id} and {b_id} both have term {} at index {top}, but differ \
                             at index {j}: {:?} vs {:?} (snapshots at {} and {})",
                            a.at(top).unwrap().0,
                            a.at(j),
                            b.at(j),
                            a.snapshot_index,
                            b.snapshot_index
                        ),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn proposed(&mut self) {
        self.counts.proposals += 1;
    }

    /// A proposal was acknowledged: applied at `index` by its proposer.
    pub fn acked(&mut self, value: &[u8], index: Index) -> Result<(), Violation> {
        self.counts.acked += 1;
        if self.values.get(&index).map(Vec::as_slice) != Some(value) {
            return violation(
                Check::CommittedChanged,
                format!(
                    "value {:?} acknowledged at index {index}, but the applied entry there is {:?}",
                    show(value),
                    self.values.get(&index).map(|v| show(v))
                ),
            );
        }
        self.acks.push(Ack {
            value: value.to_vec(),
            index,
        });
        if self.newest_ack.as_ref().is_none_or(|(i, _)| index > *i) {
            self.newest_ack = Some((index, value.to_vec()));
        }
        Ok(())
    }

    pub fn propose_failed(&mut self) {
        self.counts.propose_failed += 1;
    }

    pub fn read_invoked(&mut self) -> ReadToken {
        self.counts.reads += 1;
        ReadToken {
            must_see: self.newest_ack.clone(),
        }
    }

    /// (5) A read that returned saw every value acknowledged before it was
    /// invoked, and returned the register as it was at its read index.
    pub fn read_returned(
        &mut self,
        node: NodeId,
        token: &ReadToken,
        result: &ReadResult,
    ) -> Result<(), Violation> {
        self.counts.reads_ok += 1;
        let expected = self
            .values
            .range(..=result.read_index)
            .next_back()
            .map(|(i, v)| (*i, v.clone()));
        if let Some((index, value)) = &result.value {
            if self.values.get(index) != Some(value) {
                return violation(
                    Check::CommittedChanged,
                    format!(
                        "node {node} read {:?} at index {index}, but the entry applied there is {:?}",
                        show(value),
                        self.values.get(index).map(|v| show(v))
                    ),
                );
            }
        }
        if result.value != expected {
            return violation(
                Check::StaleRead,
                format!(
                    "node {node} served read index {} with register {:?}, but the newest value \
                     applied at or below it is {:?}",
                    result.read_index,
                    result.value.as_ref().map(|(i, v)| (i, show(v))),
                    expected.as_ref().map(|(i, v)| (i, show(v)))
                ),
            );
        }
        if let Some((must_index, must_value)) = &token.must_see {
            if result.read_index < *must_index {
                return violation(
                    Check::StaleRead,
                    format!(
                        "node {node} served a read at index {} returning {:?}, but {:?} was \
                         acknowledged at index {must_index} before the read was invoked",
                        result.read_index,
                        result.value.as_ref().map(|(i, v)| (i, show(v))),
                        show(must_value)
                    ),
                );
            }
        }
        Ok(())
    }
}

fn describe(data: &EntryData) -> String {
    match data {
        EntryData::Noop => "noop".into(),
        EntryData::Normal(v) => show(v),
        EntryData::ConfChange(c) => format!("{c:?}"),
    }
}
