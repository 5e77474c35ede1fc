//! How Raft state is written into WAL entries: one tag byte, then the
//! protobuf encoding of the piece. Replaying the records in log order
//! rebuilds the replica's state after a restart.

use bytes::{BufMut, Bytes, BytesMut};
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};

const TAG_ENTRY: u8 = 1;
const TAG_HARD_STATE: u8 = 2;
const TAG_SNAPSHOT: u8 = 3;

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

impl RaftRecord {
    /// The record as a WAL entry payload.
    pub fn encode(&self) -> Bytes {
        let (tag, body) = match self {
            RaftRecord::Entry(entry) => (TAG_ENTRY, entry.write_to_bytes()),
            RaftRecord::HardState(hard_state) => (TAG_HARD_STATE, hard_state.write_to_bytes()),
            RaftRecord::Snapshot(snapshot) => (TAG_SNAPSHOT, snapshot.write_to_bytes()),
        };
        let body = body.expect("encoding a protobuf message into memory cannot fail");
        let mut out = BytesMut::with_capacity(1 + body.len());
        out.put_u8(tag);
        out.put_slice(&body);
        out.freeze()
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
            other => return Err(RecordError::UnknownTag(other)),
        })
    }
}
