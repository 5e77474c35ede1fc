//! The core's in-memory copy of the Raft log, read by raft-rs through its
//! `Storage` trait. It holds entries before they are durable too (raft-rs's
//! asynchronous persistence requires it); durability is the WAL's business.

use std::cell::Cell;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// Entries after the latest snapshot, the hard state, the configuration and
/// the latest snapshot itself (metadata and data).
#[derive(Debug, Default)]
pub struct LogStore {
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// Entries with indexes `snapshot_index + 1 ..`, contiguous.
    entries: Vec<Entry>,
    /// Set when raft-rs asked for a snapshot the store could not give.
    snapshot_wanted: Cell<bool>,
}

impl LogStore {
    /// Index of the latest snapshot (0 if none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    /// The latest snapshot.
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The persisted-state view raft-rs restarts from.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The voters and learners as last recorded.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// Index of the first entry still held.
    pub fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    /// Index of the last entry (the snapshot's if none after it).
    pub fn last(&self) -> u64 {
        self.entries.last().map_or(self.snapshot_index(), |entry| entry.index)
    }

    /// Number of entries held and their payload bytes.
    pub fn size(&self) -> (usize, u64) {
        let bytes = self.entries.iter().map(|entry| entry.data.len() as u64 + entry.context.len() as u64);
        (self.entries.len(), bytes.sum())
    }

    /// Every entry held, after the latest snapshot.
    pub fn held(&self) -> &[Entry] {
        &self.entries
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let offset = index.checked_sub(self.first())?;
        self.entries.get(usize::try_from(offset).ok()?)
    }

    /// Appends `entries` (contiguous), first discarding any held entry at or
    /// after the first new index: a new leader overwrote them. Entries at or
    /// below the snapshot are ignored: the snapshot already covers them.
    pub fn append(&mut self, entries: Vec<Entry>) {
        let snapshot_index = self.snapshot_index();
        // Entries are contiguous: those the snapshot covers come first.
        let covered = entries.iter().take_while(|entry| entry.index <= snapshot_index).count();
        let Some(first) = entries.get(covered) else { return };
        assert!(
            first.index <= self.last() + 1,
            "raft appends without gaps: {} after {}",
            first.index,
            self.last()
        );
        let keep = (first.index - self.first()) as usize;
        self.entries.truncate(keep);
        self.entries.extend(entries.into_iter().skip(covered));
    }

    /// Whether raft-rs asked for a snapshot the store could not give since
    /// the last call; clears the note.
    pub fn take_snapshot_wanted(&self) -> bool {
        self.snapshot_wanted.replace(false)
    }

    /// Records a new hard state. Its commit index is never taken below the
    /// snapshot's: a commit index is written lazily, so a record read back
    /// after a snapshot's may be older than it, but what a snapshot holds
    /// is committed.
    pub fn set_hard_state(&mut self, mut hard_state: HardState) {
        hard_state.commit = hard_state.commit.max(self.snapshot_index());
        self.hard_state = hard_state;
    }

    /// Takes the commit index down to the last entry held, after recovery.
    /// A commit index is written with whatever record next needed a sync,
    /// so it can name entries that a crash kept from disk (a follower told
    /// of a commit in the same message as the entries, say). Lowering it is
    /// safe: a commit index is only what this node has been told, and the
    /// leader tells it again.
    pub fn limit_commit_to_log(&mut self) {
        self.hard_state.commit = self.hard_state.commit.min(self.last());
    }

    /// Records a new configuration.
    pub fn set_conf_state(&mut self, conf_state: ConfState) {
        self.conf_state = conf_state;
    }

    /// Installs a snapshot (received from a leader, or recovered from disk):
    /// entries it covers are dropped, the configuration is the snapshot's.
    pub fn install_snapshot(&mut self, snapshot: Snapshot) {
        let metadata = snapshot.get_metadata();
        let index = metadata.index;
        if index <= self.snapshot_index() {
            return;
        }
        let matching = self.entry(index).is_some_and(|entry| entry.term == metadata.term);
        if matching {
            let drop = (index + 1 - self.first()) as usize;
            self.entries.drain(..drop);
        } else {
            self.entries.clear();
        }
        self.conf_state = metadata.get_conf_state().clone();
        self.hard_state.term = self.hard_state.term.max(metadata.term);
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.snapshot = snapshot;
    }

    /// Replaces the latest snapshot with one taken locally at an applied
    /// index, and drops the entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        assert!(index <= self.last(), "a local snapshot covers only entries held");
        if index <= self.snapshot_index() {
            return;
        }
        let drop = (index + 1 - self.first()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state.clone(), self.conf_state.clone()))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.first();
        let mut entries = self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.entry(index).map(|entry| entry.term).ok_or(raft::Error::Store(StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    /// The latest snapshot, if it can serve peer `to`: recent enough, and
    /// with a configuration that includes `to` (raft-rs on the receiving
    /// side refuses one that does not). Otherwise "temporarily unavailable",
    /// with a note for the replica to take a fresh one; raft-rs asks again.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let conf_state = self.snapshot.get_metadata().get_conf_state();
        let includes_peer = conf_state.voters.contains(&to) || conf_state.learners.contains(&to);
        if self.snapshot_index() < request_index || self.snapshot_index() == 0 || !includes_peer {
            self.snapshot_wanted.set(true);
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(self.snapshot.clone())
    }
}
