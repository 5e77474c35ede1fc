//! The recording state machine: wraps each node's state machine so that the
//! oracle sees every command applied, in order, with its result, and can
//! place every snapshot in the cluster's one committed sequence.
//!
//! `StateMachineTrait::apply` carries no log index, and queries run through
//! the same `apply`. So the recorder counts: its *position* is the number of
//! committed commands its state reflects (0 for an empty state). A snapshot
//! it hands to the core starts with a small header holding that position
//! and a running checksum of every `(command, result)` up to it; restoring
//! one (after a restart, or from a leader) sets the position from the
//! header. Positions are thus comparable across nodes and incarnations: the
//! n-th command any replica applies from a state at position p must be the
//! cluster's command at position p + n.
//!
//! Queries (`Query`, and `LinearizableQuery`, which the replica runs in
//! whatever input resolves its read) also arrive through `apply`. The
//! simulator tags each query it submits with [`QUERY_MARKER`] and its
//! handle; the recorder strips the tag, runs the query, and records it
//! apart, without moving the position.

use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use octopii_core::raft::state_machine::{StateMachine, StateMachineTrait};

/// Marks a snapshot made by the recorder ("Octopii Sim Recorder 1").
const SNAPSHOT_MAGIC: &[u8; 4] = b"OSR1";
/// Header bytes: magic, position (u64), chain checksum (u32).
const SNAPSHOT_HEADER_BYTES: usize = 4 + 8 + 4;
/// Starts every query the simulator submits, followed by the handle (u64,
/// little-endian) and the query itself. Proposals never start with it.
pub(crate) const QUERY_MARKER: &[u8] = b"\xffoctopii-sim-query\xff";

/// Tags `query` as the query of handle `tag`.
pub(crate) fn mark_query(tag: u64, query: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(QUERY_MARKER.len() + 8 + query.len());
    out.put_slice(QUERY_MARKER);
    out.put_u64_le(tag);
    out.put_slice(query);
    out.freeze()
}

/// Splits a tagged query into (tag, query); `None` for anything else.
pub(crate) fn parse_query(command: &[u8]) -> Option<(u64, &[u8])> {
    let rest = command.strip_prefix(QUERY_MARKER)?;
    let (tag, query) = rest.split_first_chunk::<8>()?;
    Some((u64::from_le_bytes(*tag), query))
}

/// One thing a node's state machine did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Record {
    /// A committed command was applied; the state is now at `position`.
    Applied {
        /// Position after the command (its 1-based place in the sequence).
        position: u64,
        /// The command.
        command: Bytes,
        /// What the state machine answered.
        result: Result<Bytes, String>,
    },
    /// A query ran against the state at `position`.
    Queried {
        /// The handle the simulator tagged it with.
        tag: u64,
        /// Position of the state the query saw.
        position: u64,
        /// The query.
        command: Bytes,
        /// The answer.
        result: Result<Bytes, String>,
    },
    /// A snapshot was taken of the state at `position`.
    Snapshot {
        /// Position of the state.
        position: u64,
        /// Chain checksum at that position.
        chain: u32,
        /// CRC32 of the wrapped state machine's snapshot bytes.
        state_crc: u32,
    },
    /// A snapshot was restored: the state is now at `position`.
    Restored {
        /// Position of the restored state.
        position: u64,
        /// Chain checksum recorded in the snapshot.
        chain: u32,
        /// CRC32 of the wrapped state machine's snapshot bytes.
        state_crc: u32,
    },
}

/// Extends the chain checksum by one applied command and its result.
pub(crate) fn chain_next(chain: u32, command: &[u8], result: &Result<Bytes, String>) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(chain);
    hasher.update(&(command.len() as u64).to_le_bytes());
    hasher.update(command);
    match result {
        Ok(bytes) => {
            hasher.update(b"+");
            hasher.update(bytes);
        }
        Err(error) => {
            hasher.update(b"-");
            hasher.update(error.as_bytes());
        }
    }
    hasher.finalize()
}

#[derive(Debug, Default)]
struct RecorderState {
    position: u64,
    chain: u32,
    records: Vec<Record>,
}

/// A state machine that forwards to the node's own and records what it did.
pub(crate) struct Recorder {
    inner: StateMachine,
    state: Mutex<RecorderState>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Recorder").field("position", &self.position()).finish()
    }
}

impl Recorder {
    /// Wraps `inner`, whose state must be empty (position 0).
    pub(crate) fn new(inner: StateMachine) -> Self {
        Self { inner, state: Mutex::new(RecorderState::default()) }
    }

    fn state(&self) -> MutexGuard<'_, RecorderState> {
        // Every update of the state is a few assignments after the wrapped
        // call returned, so a panic cannot leave it half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The wrapped state machine.
    pub(crate) fn inner(&self) -> &StateMachine {
        &self.inner
    }

    /// How many committed commands the state reflects.
    pub(crate) fn position(&self) -> u64 {
        self.state().position
    }

    /// Removes and returns what happened since the last call.
    pub(crate) fn take_records(&self) -> Vec<Record> {
        std::mem::take(&mut self.state().records)
    }
}

/// Splits a recorder snapshot into (position, chain, wrapped bytes).
fn parse_snapshot(data: &[u8]) -> Result<(u64, u32, &[u8]), String> {
    if data.len() < SNAPSHOT_HEADER_BYTES || &data[..4] != SNAPSHOT_MAGIC {
        return Err(String::from("not a simulator snapshot (bad header)"));
    }
    let (position, rest) = data[4..].split_first_chunk::<8>().ok_or("snapshot ends inside its position")?;
    let (chain, rest) = rest.split_first_chunk::<4>().ok_or("snapshot ends inside its checksum")?;
    Ok((u64::from_le_bytes(*position), u32::from_le_bytes(*chain), rest))
}

impl StateMachineTrait for Recorder {
    fn apply(&self, command: &[u8]) -> Result<Bytes, String> {
        let mut state = self.state();
        if let Some((tag, query)) = parse_query(command) {
            let result = self.inner.apply(query);
            let (position, command) = (state.position, Bytes::copy_from_slice(query));
            state.records.push(Record::Queried { tag, position, command, result: result.clone() });
            return result;
        }
        let result = self.inner.apply(command);
        let command = Bytes::copy_from_slice(command);
        state.position += 1;
        state.chain = chain_next(state.chain, &command, &result);
        let position = state.position;
        state.records.push(Record::Applied { position, command, result: result.clone() });
        result
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut state = self.state();
        let data = self.inner.snapshot();
        let (position, chain) = (state.position, state.chain);
        state.records.push(Record::Snapshot { position, chain, state_crc: crc32fast::hash(&data) });
        let mut out = BytesMut::with_capacity(SNAPSHOT_HEADER_BYTES + data.len());
        out.put_slice(SNAPSHOT_MAGIC);
        out.put_u64_le(position);
        out.put_u32_le(chain);
        out.put_slice(&data);
        out.to_vec()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let mut state = self.state();
        let (position, chain, inner) = parse_snapshot(data)?;
        self.inner.restore(inner)?;
        state.position = position;
        state.chain = chain;
        state.records.push(Record::Restored { position, chain, state_crc: crc32fast::hash(inner) });
        Ok(())
    }

    fn compact(&self) -> Result<(), String> {
        self.inner.compact()
    }
}
