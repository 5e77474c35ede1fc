//! Snapshots: taking one and compacting the log behind it, installing a
//! leader's, and sending one to a peer on request.

use std::time::Instant;

use bytes::Bytes;
use raft::eraftpb::Snapshot;

use super::records::RaftRecord;
use super::{NodeError, Replica, ReplicaEvent, ReplicaOutput};
use crate::wal::Wal;

impl Replica {
    /// Installs a leader's snapshot. raft-rs has already adopted it, so a
    /// snapshot this node cannot restore or store stops the node rather than
    /// leave raft-rs and the state machine disagreeing.
    pub(super) fn install_snapshot(&mut self, now: Instant, wal: &mut Wal, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        if let Err(error) = self.state_machine.restore(&snapshot.data) {
            let error = NodeError::Storage(format!("state machine refused the snapshot at {index}: {error}"));
            self.outputs.push_back(ReplicaOutput::Fatal(error));
            return;
        }
        if let Err(error) = super::append_snapshot(now, wal, &snapshot) {
            let error = NodeError::Storage(format!("cannot store the snapshot at {index}: {error}"));
            self.outputs.push_back(ReplicaOutput::Fatal(error));
            return;
        }
        self.raw.mut_store().install_snapshot(snapshot);
        self.rewrite_after_snapshot(now, wal);
    }

    /// Writes again, after a snapshot's record, every entry the snapshot
    /// does not cover and the hard state. Recovery then starts at the first
    /// snapshot record it finds: what lies before it is superseded, and may
    /// be partly removed (segments go whole, so the oldest one kept can
    /// begin with entries whose predecessors are gone).
    fn rewrite_after_snapshot(&mut self, now: Instant, wal: &mut Wal) {
        let store = self.raw.store();
        let entries = store.held().iter().map(RaftRecord::encode_entry);
        let payloads: Vec<Bytes> =
            entries.chain(std::iter::once(RaftRecord::encode_hard_state(store.hard_state()))).collect();
        for payload in payloads {
            self.persist(now, wal, payload);
        }
        self.hard_state_unwritten = false;
    }

    /// Takes a snapshot and compacts the log once enough has been applied:
    /// `snapshot_lag_threshold` entries, and as many command bytes as the
    /// last snapshot held. A snapshot writes the whole state, so a large
    /// state taken every few entries would cost far more than the log it
    /// replaces; this way snapshots cost at most as much again as the
    /// commands, and the log stays about as large as the state.
    pub(super) fn maybe_snapshot(&mut self, now: Instant, wal: &mut Wal, applied: u64) {
        let due = self.raw.store().snapshot_index() + self.config.snapshot_lag_threshold;
        if applied >= due.max(self.snapshot_retry_at)
            && self.applied_bytes_since_snapshot >= self.last_snapshot_bytes
        {
            self.take_snapshot(now, wal, applied);
        }
    }

    /// Snapshots the state machine at `applied` and compacts the log
    /// behind it. Returns whether the snapshot was stored.
    pub(super) fn take_snapshot(&mut self, now: Instant, wal: &mut Wal, applied: u64) -> bool {
        let store = self.raw.store();
        if applied <= store.snapshot_index() {
            return true;
        }
        let mut snapshot = Snapshot::default();
        snapshot.data = Bytes::from(self.state_machine.snapshot());
        let metadata = snapshot.mut_metadata();
        metadata.index = applied;
        metadata.term = store.entry(applied).map_or(0, |entry| entry.term);
        metadata.set_conf_state(store.conf_state().clone());
        // Its first record is the compaction point: everything before is
        // covered, its parts must stay.
        let snapshot_seq = match super::append_snapshot(now, wal, &snapshot) {
            Ok(seq) => seq,
            Err(error) => {
                // Typically a state larger than one log entry may be: keep
                // the log, and try again after as many entries once more,
                // and as many command bytes as this attempt copied.
                self.snapshot_retry_at = applied + self.config.snapshot_lag_threshold;
                self.last_snapshot_bytes = snapshot.data.len() as u64;
                self.applied_bytes_since_snapshot = 0;
                let event = ReplicaEvent::SnapshotFailed { index: applied, error: error.to_string() };
                self.outputs.push_back(ReplicaOutput::Event(event));
                return false;
            }
        };
        self.last_snapshot_bytes = snapshot.data.len() as u64;
        self.applied_bytes_since_snapshot = 0;
        self.raw.mut_store().compact(snapshot);
        self.rewrite_after_snapshot(now, wal);
        if let Err(error) = self.state_machine.compact() {
            self.outputs.push_back(ReplicaOutput::Event(ReplicaEvent::CompactFailed { error }));
        }
        // Once the snapshot is durable, nothing before its record is needed.
        self.compaction = Some(snapshot_seq);
        true
    }

    /// Sends `peer` a snapshot of the current state now, whether or not it
    /// lags: the leader snapshots (compacting its log) and marks the peer as
    /// having asked for one, so raft-rs sends it. A peer already past the
    /// snapshot's index ignores it, as Raft requires.
    ///
    /// # Errors
    ///
    /// Not the leader, an unknown peer, nothing applied yet, or a snapshot
    /// that cannot be stored.
    pub fn force_snapshot(&mut self, now: Instant, peer: u64, wal: &mut Wal) -> Result<(), NodeError> {
        if let Some(error) = self.not_leader() {
            return Err(error);
        }
        if peer == self.config.id || self.raw.raft.prs().get(peer).is_none() {
            return Err(NodeError::UnknownPeer(peer));
        }
        let applied = self.raw.raft.raft_log.applied;
        if applied == 0 || !self.take_snapshot(now, wal, applied) {
            return Err(NodeError::Refused(String::from("no snapshot can be taken yet")));
        }
        // The path raft-rs takes when a follower asks for a snapshot.
        let snapshot_index = self.raw.store().snapshot_index();
        let progress = self.raw.raft.mut_prs().get_mut(peer).expect("checked above");
        progress.pending_request_snapshot = snapshot_index;
        self.raw.raft.send_append(peer);
        self.pin_election_timeout();
        self.process(now, wal);
        Ok(())
    }

    /// Removes the WAL segments a durable snapshot made obsolete.
    pub(super) fn compact_wal(&mut self, wal: &mut Wal) {
        let Some(snapshot_seq) = self.compaction else { return };
        if wal.durable_next() > snapshot_seq {
            self.compaction = None;
            self.outputs.push_back(ReplicaOutput::RemoveWalBefore(snapshot_seq));
        }
    }
}
