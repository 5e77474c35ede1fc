//! Shipping Lane: large transfers, one bidirectional QUIC stream each,
//! verified end to end by SHA-256.
//!
//! ```text
//! sender -> receiver:  | purpose u8 | size u64 BE | body (size bytes) | SHA-256 of body (32) |
//! receiver -> sender:  | status u8: 0 ok, 1 checksum mismatch, 2 error |
//! ```
//!
//! The purpose byte says who the body is for: the application, or Raft
//! (large Raft messages such as snapshots ride here instead of on the
//! message stream). The sender pulls a file's body through read effects,
//! [`CHUNK_PIECE_BYTES`] at a time with at most [`CHUNK_PIECES_AHEAD_MAX`]
//! pieces held, so a transfer never holds the file in memory; QUIC flow
//! control paces it. The receiver hands the body to the application piece
//! by piece and checks the digest before answering.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use quinn_proto::{StreamId, VarInt};
use sha2::{Digest, Sha256};

use super::TransportOutput;
use crate::disk::IoError;

/// Bytes per file read and per write to the stream.
pub const CHUNK_PIECE_BYTES: usize = 64 * 1024;
/// Pieces a sender holds at most (read, not yet taken by QUIC).
pub const CHUNK_PIECES_AHEAD_MAX: usize = 4;
/// Bytes of the header before the body.
pub const CHUNK_HEADER_BYTES: usize = 9;
/// Bytes of the digest after the body.
pub const CHUNK_DIGEST_BYTES: usize = 32;

const STATUS_OK: u8 = 0;
const STATUS_CHECKSUM_MISMATCH: u8 = 1;
const STATUS_ERROR: u8 = 2;
/// The stream error code for a transfer abandoned by either side.
pub(crate) const STATUS_ERROR_CODE: u32 = STATUS_ERROR as u32;

/// Who a transfer's body is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Purpose {
    Application = 0,
    Raft = 1,
}

/// Identifies one transfer within a transport, in both directions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TransferId(pub u64);

/// What to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkSource {
    /// A file, read piece by piece while it is sent.
    File(PathBuf),
    /// Bytes in memory.
    Memory(Bytes),
}

/// A piece of a file, as read by the binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRead {
    /// The bytes at the requested offset (fewer only at the end of file).
    pub data: Bytes,
    /// The file's length when it was read.
    pub file_len: u64,
}

/// Why a transfer failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// The receiver computed another digest than the sender's.
    #[error("checksum mismatch")]
    ChecksumMismatch,
    /// The receiver refused or could not take the transfer.
    #[error("receiver reported an error")]
    Refused,
    /// The body is larger than the receiver accepts.
    #[error("transfer of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// The announced size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// Reading the source failed.
    #[error("reading the source failed: {0}")]
    Source(IoError),
    /// The source file changed length while it was sent.
    #[error("source changed size during the transfer (expected {expected} bytes)")]
    SourceChanged {
        /// The length when the transfer started.
        expected: u64,
    },
    /// The stream or connection ended before the transfer finished.
    #[error("transfer interrupted: {0}")]
    Interrupted(String),
    /// No connection to the peer could be used.
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The stream broke the transfer protocol.
    #[error("malformed transfer: {0}")]
    Malformed(String),
}

/// A finished transfer, as the sender sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransferReport {
    /// Body bytes sent and verified by the receiver.
    pub bytes: u64,
    /// How long it took.
    pub duration: Duration,
}

enum Body {
    Memory(Bytes),
    File { path: PathBuf, read_offset: u64, reading: bool },
}

/// A transfer this node sends.
pub(crate) struct Outgoing {
    pub(crate) transfer: TransferId,
    pub(crate) ticket: Option<u64>,
    stream: StreamId,
    body: Body,
    purpose: Purpose,
    size: Option<u64>,
    /// Body bytes hashed (read, for files).
    hashed: u64,
    hasher: Sha256,
    /// Bytes for QUIC, in order (header, pieces, digest).
    pending: VecDeque<Bytes>,
    finished: bool,
    started: Instant,
}

impl Outgoing {
    pub(crate) fn new(
        transfer: TransferId,
        ticket: Option<u64>,
        stream: StreamId,
        source: ChunkSource,
        purpose: Purpose,
        now: Instant,
    ) -> Self {
        let (body, size) = match source {
            ChunkSource::Memory(data) => {
                let size = data.len() as u64;
                (Body::Memory(data), Some(size))
            }
            ChunkSource::File(path) => (Body::File { path, read_offset: 0, reading: false }, None),
        };
        let mut outgoing = Self {
            transfer,
            ticket,
            stream,
            body,
            purpose,
            size: None,
            hashed: 0,
            hasher: Sha256::new(),
            pending: VecDeque::new(),
            finished: false,
            started: now,
        };
        if let Some(size) = size {
            outgoing.start(size);
        }
        outgoing
    }

    fn start(&mut self, size: u64) {
        self.size = Some(size);
        let mut header = Vec::with_capacity(CHUNK_HEADER_BYTES);
        header.push(self.purpose as u8);
        header.extend_from_slice(&size.to_be_bytes());
        self.pending.push_back(header.into());
        if let Body::Memory(data) = &self.body {
            self.hasher.update(data);
            self.hashed = size;
            let mut rest = data.clone();
            while !rest.is_empty() {
                self.pending.push_back(rest.split_to(rest.len().min(CHUNK_PIECE_BYTES)));
            }
            self.seal();
        }
    }

    fn seal(&mut self) {
        let digest = std::mem::take(&mut self.hasher).finalize();
        self.pending.push_back(Bytes::copy_from_slice(&digest));
    }

    /// The next file read to ask for, if the window has room.
    pub(crate) fn next_read(&mut self) -> Option<TransportOutput> {
        let Body::File { path, read_offset, reading } = &mut self.body else { return None };
        let done = self.size.is_some_and(|size| *read_offset >= size);
        if *reading || done || self.pending.len() >= CHUNK_PIECES_AHEAD_MAX {
            return None;
        }
        *reading = true;
        let len = match self.size {
            Some(size) => (size - *read_offset).min(CHUNK_PIECE_BYTES as u64) as usize,
            None => CHUNK_PIECE_BYTES,
        };
        Some(TransportOutput::ReadFile {
            transfer: self.transfer,
            path: path.clone(),
            offset: *read_offset,
            len,
        })
    }

    /// A file read finished.
    pub(crate) fn on_read(&mut self, result: Result<FileRead, IoError>) -> Result<(), TransferError> {
        let Body::File { reading, .. } = &mut self.body else {
            return Err(TransferError::Malformed("read result for an in-memory transfer".into()));
        };
        *reading = false;
        let read = result.map_err(TransferError::Source)?;
        let size = match self.size {
            Some(size) => size,
            None => {
                self.start(read.file_len);
                read.file_len
            }
        };
        let Body::File { read_offset, .. } = &mut self.body else { unreachable!("checked above") };
        let expected = (size - *read_offset).min(CHUNK_PIECE_BYTES as u64);
        if read.file_len != size || (read.data.len() as u64) != expected {
            return Err(TransferError::SourceChanged { expected: size });
        }
        *read_offset += expected;
        self.hasher.update(&read.data);
        self.hashed += expected;
        if !read.data.is_empty() {
            self.pending.push_back(read.data);
        }
        if self.hashed == size {
            self.seal();
        }
        Ok(())
    }

    /// Hands pending bytes to QUIC; ends the stream after the digest.
    pub(crate) fn write(&mut self, connection: &mut quinn_proto::Connection) -> Result<(), TransferError> {
        let mut stream = connection.send_stream(self.stream);
        while let Some(front) = self.pending.front_mut() {
            match stream.write(front) {
                Ok(written) if written == front.len() => {
                    self.pending.pop_front();
                }
                Ok(written) => {
                    front.advance(written);
                    return Ok(());
                }
                Err(quinn_proto::WriteError::Blocked) => return Ok(()),
                Err(quinn_proto::WriteError::Stopped(code)) => return Err(refused_or_reset(code)),
                Err(error) => return Err(TransferError::Interrupted(error.to_string())),
            }
        }
        let sealed = self.size.is_some_and(|size| self.hashed == size);
        if sealed && !self.finished {
            stream.finish().map_err(|error| TransferError::Interrupted(error.to_string()))?;
            self.finished = true;
        }
        Ok(())
    }

    /// Reads the receiver's status byte, if it has arrived.
    pub(crate) fn read_status(
        &mut self,
        connection: &mut quinn_proto::Connection,
        now: Instant,
    ) -> Option<Result<TransferReport, TransferError>> {
        let mut stream = connection.recv_stream(self.stream);
        let mut chunks = match stream.read(true) {
            Ok(chunks) => chunks,
            Err(error) => return Some(Err(TransferError::Interrupted(error.to_string()))),
        };
        let outcome = match chunks.next(1) {
            Ok(Some(chunk)) => Some(match chunk.bytes.first() {
                Some(&STATUS_OK) => Ok(TransferReport {
                    bytes: self.size.unwrap_or_default(),
                    duration: now.saturating_duration_since(self.started),
                }),
                Some(&STATUS_CHECKSUM_MISMATCH) => Err(TransferError::ChecksumMismatch),
                _ => Err(TransferError::Refused),
            }),
            Ok(None) => {
                Some(Err(TransferError::Interrupted("receiver ended the stream without a status".into())))
            }
            Err(quinn_proto::ReadError::Blocked) => None,
            Err(quinn_proto::ReadError::Reset(code)) => Some(Err(refused_or_reset(code))),
        };
        let _ = chunks.finalize();
        outcome
    }
}

pub(crate) fn refused_or_reset(code: VarInt) -> TransferError {
    if code.into_inner() == u64::from(STATUS_ERROR) {
        TransferError::Refused
    } else {
        TransferError::Interrupted(format!("stream reset with code {code}"))
    }
}

/// What a receiving stream produced.
pub(crate) enum Received {
    /// The header arrived.
    Started { size: u64 },
    /// Body bytes for the application.
    Data(Bytes),
    /// The transfer ended: verified body size, or why it failed. A Raft
    /// body comes with it.
    Finished { result: Result<u64, TransferError>, raft: Option<Bytes> },
}

/// A transfer this node receives.
pub(crate) struct Incoming {
    pub(crate) transfer: TransferId,
    pub(crate) from: u64,
    pub(crate) stream: StreamId,
    header: Vec<u8>,
    purpose: Purpose,
    size: Option<u64>,
    received: u64,
    hasher: Sha256,
    digest: Vec<u8>,
    raft_body: Vec<u8>,
    size_max: u64,
    done: bool,
}

impl Incoming {
    pub(crate) fn new(transfer: TransferId, from: u64, stream: StreamId, size_max: u64) -> Self {
        Self {
            transfer,
            from,
            stream,
            header: Vec::with_capacity(CHUNK_HEADER_BYTES),
            purpose: Purpose::Application,
            size: None,
            received: 0,
            hasher: Sha256::new(),
            digest: Vec::with_capacity(CHUNK_DIGEST_BYTES),
            raft_body: Vec::new(),
            size_max,
            done: false,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    pub(crate) fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// Reads what has arrived; `out` gets what it means.
    pub(crate) fn read(&mut self, connection: &mut quinn_proto::Connection, out: &mut Vec<Received>) {
        if self.done {
            return;
        }
        let mut failure = None;
        let mut ended = false;
        {
            let mut stream = connection.recv_stream(self.stream);
            let Ok(mut chunks) = stream.read(true) else { return };
            loop {
                match chunks.next(CHUNK_PIECE_BYTES) {
                    Ok(Some(chunk)) => {
                        if let Err(error) = self.consume(chunk.bytes, out) {
                            failure = Some(error);
                            break;
                        }
                    }
                    Ok(None) => {
                        ended = true;
                        break;
                    }
                    Err(quinn_proto::ReadError::Blocked) => break,
                    Err(quinn_proto::ReadError::Reset(code)) => {
                        failure = Some(TransferError::Interrupted(format!("stream reset with code {code}")));
                        break;
                    }
                }
            }
            let _ = chunks.finalize();
        }
        if failure.is_none() && ended && self.digest.len() < CHUNK_DIGEST_BYTES {
            failure = Some(TransferError::Interrupted("stream ended inside the transfer".into()));
        }
        if let Some(error) = failure {
            self.answer(connection, STATUS_ERROR);
            let _ = connection.recv_stream(self.stream).stop(VarInt::from_u32(u32::from(STATUS_ERROR)));
            out.push(Received::Finished { result: Err(error), raft: None });
            return;
        }
        if self.digest.len() == CHUNK_DIGEST_BYTES {
            let computed = std::mem::take(&mut self.hasher).finalize();
            let verified = computed.as_slice() == self.digest.as_slice();
            self.answer(connection, if verified { STATUS_OK } else { STATUS_CHECKSUM_MISMATCH });
            let result = if verified { Ok(self.received) } else { Err(TransferError::ChecksumMismatch) };
            let raft = (verified && self.purpose == Purpose::Raft)
                .then(|| std::mem::take(&mut self.raft_body).into());
            out.push(Received::Finished { result, raft });
        }
    }

    fn consume(&mut self, mut bytes: Bytes, out: &mut Vec<Received>) -> Result<(), TransferError> {
        if self.size.is_none() {
            let take = (CHUNK_HEADER_BYTES - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes.split_to(take));
            if self.header.len() < CHUNK_HEADER_BYTES {
                return Ok(());
            }
            self.purpose = match self.header[0] {
                0 => Purpose::Application,
                1 => Purpose::Raft,
                other => return Err(TransferError::Malformed(format!("unknown purpose {other}"))),
            };
            let size =
                u64::from_be_bytes(self.header[1..].try_into().expect("eight bytes after the purpose"));
            let max = if self.purpose == Purpose::Raft {
                crate::raft::MESSAGE_BYTES_MAX as u64
            } else {
                self.size_max
            };
            if size > max {
                return Err(TransferError::TooLarge { size, max });
            }
            self.size = Some(size);
            out.push(Received::Started { size });
        }
        let size = self.size.expect("set above");
        let body = (size - self.received).min(bytes.len() as u64) as usize;
        if body > 0 {
            let piece = bytes.split_to(body);
            self.hasher.update(&piece);
            self.received += body as u64;
            match self.purpose {
                Purpose::Application => out.push(Received::Data(piece)),
                Purpose::Raft => self.raft_body.extend_from_slice(&piece),
            }
        }
        let take = (CHUNK_DIGEST_BYTES - self.digest.len()).min(bytes.len());
        self.digest.extend_from_slice(&bytes.split_to(take));
        if !bytes.is_empty() {
            return Err(TransferError::Malformed("bytes after the digest".into()));
        }
        Ok(())
    }

    fn answer(&mut self, connection: &mut quinn_proto::Connection, status: u8) {
        self.done = true;
        let mut stream = connection.send_stream(self.stream);
        let _ = stream.write(&[status]);
        let _ = stream.finish();
    }
}
