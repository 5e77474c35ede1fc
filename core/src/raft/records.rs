//! How Raft state is written into WAL entries: one tag byte, then the
//! protobuf encoding of the piece. Replaying the records in log order
//! rebuilds the replica's state after a restart.
//!
//! A snapshot whose data exceeds [`SNAPSHOT_PART_BYTES`] is written as
//! part records holding its data in order, then a snapshot record with the
//! metadata and empty data, which takes its data from the parts right
//! before it ([`RaftRecord::encode_snapshot`]). Parts not followed by their
//! snapshot record (a crash while writing them) are ignored.

use bytes::Bytes;
use protobuf::{CodedOutputStream, Message};
use raft::eraftpb::{Entry, HardState, Snapshot};

const TAG_ENTRY: u8 = 1;
const TAG_HARD_STATE: u8 = 2;
const TAG_SNAPSHOT: u8 = 3;
const TAG_SNAPSHOT_PART: u8 = 4;

/// The most snapshot data one record holds; a WAL entry holds at most
/// [`crate::wal::ENTRY_BYTES_MAX`].
pub const SNAPSHOT_PART_BYTES: usize = 4 * 1024 * 1024;

/// One piece of durable Raft state.
#[derive(Clone, Debug, PartialEq)]
pub enum RaftRecord {
    /// A log entry; a later entry with the same index replaces it and every
    /// entry after it.
    Entry(Entry),
    /// Term, vote and commit index.
    HardState(HardState),
    /// A snapshot (metadata and the state machine's data); entries it
    /// covers are obsolete.
    Snapshot(Snapshot),
    /// A piece of the data of the snapshot record that follows the parts.
    SnapshotPart(Bytes),
}

/// A WAL entry that is not a valid Raft record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The entry is empty.
    #[error("empty raft record")]
    Empty,
    /// The tag byte is unknown.
    #[error("unknown raft record tag {0}")]
    UnknownTag(u8),
    /// The protobuf body does not decode.
    #[error("raft record does not decode: {0}")]
    Decode(String),
}

/// The tag byte, then `body`'s protobuf encoding, in one allocation of the
/// exact size (`write_to_vec` would grow the vector once more at its end).
fn encode_tagged(tag: u8, body: &impl Message) -> Bytes {
    const FAILED: &str = "encoding a protobuf message into memory of its computed size cannot fail";
    body.check_initialized().expect(FAILED);
    let size = body.compute_size() as usize;
    let mut out = vec![0; 1 + size];
    out[0] = tag;
    let mut stream = CodedOutputStream::bytes(&mut out[1..]);
    body.write_to_with_cached_sizes(&mut stream).expect(FAILED);
    stream.check_eof();
    Bytes::from(out)
}

impl RaftRecord {
    /// The record as a WAL entry payload.
    pub fn encode(&self) -> Bytes {
        match self {
            RaftRecord::Entry(entry) => Self::encode_entry(entry),
            RaftRecord::HardState(hard_state) => Self::encode_hard_state(hard_state),
            RaftRecord::Snapshot(snapshot) => encode_tagged(TAG_SNAPSHOT, snapshot),
            RaftRecord::SnapshotPart(data) => {
                let mut out = Vec::with_capacity(1 + data.len());
                out.push(TAG_SNAPSHOT_PART);
                out.extend_from_slice(data);
                Bytes::from(out)
            }
        }
    }

    /// The records of `snapshot`, in order: one, or parts then the
    /// metadata (see the module documentation).
    pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<Bytes> {
        if snapshot.data.len() <= SNAPSHOT_PART_BYTES {
            return vec![encode_tagged(TAG_SNAPSHOT, snapshot)];
        }
        let mut records: Vec<Bytes> = snapshot
            .data
            .chunks(SNAPSHOT_PART_BYTES)
            .map(|piece| RaftRecord::SnapshotPart(snapshot.data.slice_ref(piece)).encode())
            .collect();
        let mut metadata = snapshot.clone();
        metadata.data = Bytes::new();
        records.push(encode_tagged(TAG_SNAPSHOT, &metadata));
        records
    }

    /// `RaftRecord::Entry(entry).encode()`, without copying the entry.
    pub fn encode_entry(entry: &Entry) -> Bytes {
        encode_tagged(TAG_ENTRY, entry)
    }

    /// `RaftRecord::HardState(hard_state).encode()`, without copying it.
    pub fn encode_hard_state(hard_state: &HardState) -> Bytes {
        encode_tagged(TAG_HARD_STATE, hard_state)
    }

    /// Decodes a WAL entry payload.
    ///
    /// # Errors
    ///
    /// The payload is not a Raft record.
    pub fn decode(payload: &[u8]) -> Result<Self, RecordError> {
        let (&tag, body) = payload.split_first().ok_or(RecordError::Empty)?;
        let decode_error = |error: protobuf::ProtobufError| RecordError::Decode(error.to_string());
        Ok(match tag {
            TAG_ENTRY => RaftRecord::Entry(Entry::parse_from_bytes(body).map_err(decode_error)?),
            TAG_HARD_STATE => RaftRecord::HardState(HardState::parse_from_bytes(body).map_err(decode_error)?),
            TAG_SNAPSHOT => RaftRecord::Snapshot(Snapshot::parse_from_bytes(body).map_err(decode_error)?),
            TAG_SNAPSHOT_PART => RaftRecord::SnapshotPart(Bytes::copy_from_slice(body)),
            other => return Err(RecordError::UnknownTag(other)),
        })
    }
}
