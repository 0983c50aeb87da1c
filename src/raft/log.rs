//! The in-memory Raft log: entries after the last snapshot, plus the
//! snapshot's position. The driver persists what the core hands it; this
//! structure is the core's view, rebuilt from disk at start.

use super::types::{Entry, Index, SnapshotMeta, Term};

#[derive(Clone, Debug, Default)]
pub struct RaftLog {
    /// Position of the last snapshot (entries up to it are compacted away).
    pub snapshot: SnapshotMeta,
    /// Entries `snapshot.index + 1 ..= last_index()`.
    entries: Vec<Entry>,
    /// Highest index known committed.
    pub commit: Index,
    /// Highest index handed to the application.
    pub applied: Index,
    /// Highest index known durable in local storage.
    pub persisted: Index,
}

impl RaftLog {
    pub fn new(snapshot: SnapshotMeta, entries: Vec<Entry>, commit: Index) -> RaftLog {
        let first = snapshot.index + 1;
        assert!(
            entries.iter().zip(first..).all(|(e, i)| e.index == i),
            "log entries must be contiguous after the snapshot"
        );
        let last = snapshot.index + entries.len() as Index;
        RaftLog {
            commit: commit.clamp(snapshot.index, last),
            applied: snapshot.index,
            persisted: last,
            snapshot,
            entries,
        }
    }

    pub fn first_index(&self) -> Index {
        self.snapshot.index + 1
    }

    pub fn last_index(&self) -> Index {
        self.snapshot.index + self.entries.len() as Index
    }

    pub fn last_term(&self) -> Term {
        self.entries.last().map_or(self.snapshot.term, |e| e.term)
    }

    /// The term of the entry at `index`, if the log knows it (the snapshot
    /// position counts).
    pub fn term(&self, index: Index) -> Option<Term> {
        if index == self.snapshot.index {
            return Some(self.snapshot.term);
        }
        if index < self.snapshot.index || index > self.last_index() {
            return None;
        }
        Some(self.entries[(index - self.first_index()) as usize].term)
    }

    pub fn entry(&self, index: Index) -> Option<&Entry> {
        if index < self.first_index() || index > self.last_index() {
            return None;
        }
        Some(&self.entries[(index - self.first_index()) as usize])
    }

    /// Entries `from ..= to`, at most `max` of them.
    pub fn slice(&self, from: Index, to: Index, max: usize) -> Vec<Entry> {
        let to = to.min(self.last_index());
        if from > to || from < self.first_index() {
            return Vec::new();
        }
        let start = (from - self.first_index()) as usize;
        let end = ((to - self.first_index()) as usize + 1).min(start.saturating_add(max));
        self.entries[start..end].to_vec()
    }

    /// Like [`RaftLog::slice`], also stopping before `max_bytes` of entry
    /// payload (but always returning at least one entry if there is one).
    pub fn slice_bytes(&self, from: Index, to: Index, max: usize, max_bytes: usize) -> Vec<Entry> {
        let to = to.min(self.last_index());
        if from > to || from < self.first_index() {
            return Vec::new();
        }
        let start = (from - self.first_index()) as usize;
        let end = ((to - self.first_index()) as usize + 1).min(start.saturating_add(max));
        let mut bytes = 0usize;
        let mut out = Vec::new();
        for e in &self.entries[start..end] {
            bytes += e.payload_len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(e.clone());
        }
        out
    }

    /// Whether a candidate's log is at least as up-to-date as ours (§5.4.1).
    pub fn is_up_to_date(&self, last_index: Index, last_term: Term) -> bool {
        (last_term, last_index) >= (self.last_term(), self.last_index())
    }

    /// Appends as leader.
    pub fn push(&mut self, entry: Entry) {
        assert_eq!(entry.index, self.last_index() + 1);
        self.entries.push(entry);
    }

    /// Follower side of AppendEntries once `prev` matched: skips entries we
    /// already have, truncates at the first conflict (§5.3 step 3; never
    /// below commit), appends the rest. Returns the index of the first entry
    /// written (to persist from there), if any.
    pub fn merge(&mut self, entries: Vec<Entry>) -> Option<Index> {
        let mut written = None;
        for entry in entries {
            if entry.index < self.first_index() {
                continue; // covered by our snapshot
            }
            match self.term(entry.index) {
                Some(t) if t == entry.term => continue,
                Some(_) => {
                    assert!(
                        entry.index > self.commit,
                        "Raft safety: a committed entry ({}) would be overwritten",
                        entry.index
                    );
                    self.entries
                        .truncate((entry.index - self.first_index()) as usize);
                    self.persisted = self.persisted.min(entry.index - 1);
                }
                None => {}
            }
            written.get_or_insert(entry.index);
            self.entries.push(entry);
        }
        written
    }

    /// Replaces everything with a snapshot's position (InstallSnapshot, §7).
    /// Keeps entries after it if they agree with it.
    pub fn restore(&mut self, meta: SnapshotMeta) {
        if self.term(meta.index) == Some(meta.term) {
            let keep = (meta.index + 1).max(self.first_index());
            self.entries.drain(..(keep - self.first_index()) as usize);
        } else {
            self.entries.clear();
        }
        self.commit = self.commit.max(meta.index);
        self.applied = self.applied.max(meta.index);
        self.persisted = self.persisted.max(meta.index);
        self.snapshot = meta;
    }

    /// Drops entries up to `meta.index` (already in a local snapshot).
    pub fn compact(&mut self, meta: SnapshotMeta) {
        assert!(
            meta.index <= self.applied,
            "compacting past what was applied"
        );
        if meta.index <= self.snapshot.index {
            return;
        }
        self.entries
            .drain(..(meta.index - self.first_index() + 1) as usize);
        self.snapshot = meta;
    }
}
