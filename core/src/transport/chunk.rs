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
//! by piece and checks the digest before answering; its parsing is a
//! [`ChunkDecoder`], which knows nothing of streams.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
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

/// Who a transfer's body is for: the first byte of a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Byte 0: the application's, handed on piece by piece.
    Application = 0,
    /// Byte 1: a Raft message too large for the message stream, collected
    /// whole (up to [`crate::raft::MESSAGE_BYTES_MAX`]) and handed to Raft.
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

/// The SHA-256 of one body, shared by the transfers that send it to
/// several peers at once, so that it is computed once: each piece is
/// hashed by whichever transfer reads it first. Every transfer reads its
/// body in order, in the same pieces, from the start, so none is ever
/// ahead of what has been hashed.
#[derive(Clone, Default)]
pub(crate) struct SharedDigest(Arc<Mutex<BodyDigest>>);

#[derive(Default)]
struct BodyDigest {
    hasher: Sha256,
    /// Body bytes hashed, from the start.
    hashed: u64,
    /// The size the first transfer to learn it saw.
    size: Option<u64>,
    /// Set once the whole body is hashed.
    digest: Option<Bytes>,
}

impl std::fmt::Debug for SharedDigest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.0.lock().expect("a digest lock is never poisoned");
        formatter
            .debug_struct("SharedDigest")
            .field("hashed", &body.hashed)
            .field("size", &body.size)
            .finish()
    }
}

impl SharedDigest {
    /// The digest of an in-memory body, and the bytes this call hashed.
    fn of_memory(&self, data: &Bytes) -> (u64, Bytes) {
        let mut body = self.0.lock().expect("a digest lock is never poisoned");
        if let Some(digest) = &body.digest {
            return (0, digest.clone());
        }
        let digest = Bytes::copy_from_slice(&Sha256::digest(data));
        body.digest = Some(digest.clone());
        (data.len() as u64, digest)
    }

    /// Takes the file piece at `offset` of a body of `size` bytes, as one
    /// transfer read it: the bytes this call hashed, and the digest once
    /// the piece ends the body.
    fn piece(&self, offset: u64, data: &[u8], size: u64) -> Result<(u64, Option<Bytes>), TransferError> {
        let mut body = self.0.lock().expect("a digest lock is never poisoned");
        if *body.size.get_or_insert(size) != size || offset > body.hashed {
            // Another transfer of the same file saw it with another length.
            return Err(TransferError::SourceChanged { expected: body.size.unwrap_or(size) });
        }
        let mut hashed = 0;
        if offset == body.hashed {
            body.hasher.update(data);
            hashed = data.len() as u64;
            body.hashed += hashed;
        }
        if offset + data.len() as u64 != size {
            return Ok((hashed, None));
        }
        let body = &mut *body;
        let digest = body
            .digest
            .get_or_insert_with(|| Bytes::copy_from_slice(&std::mem::take(&mut body.hasher).finalize()));
        Ok((hashed, Some(digest.clone())))
    }
}

/// A transfer this node sends.
pub(crate) struct Outgoing {
    pub(crate) transfer: TransferId,
    pub(crate) ticket: Option<u64>,
    stream: StreamId,
    body: Body,
    purpose: Purpose,
    size: Option<u64>,
    digest: SharedDigest,
    /// Body bytes this transfer hashed itself (others of the same body
    /// hashed the rest).
    pub(crate) hashed: u64,
    /// Whether the digest is queued behind the body.
    sealed: bool,
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
        digest: SharedDigest,
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
            digest,
            hashed: 0,
            sealed: false,
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
            let (hashed, digest) = self.digest.of_memory(data);
            self.hashed = hashed;
            let mut rest = data.clone();
            while !rest.is_empty() {
                self.pending.push_back(rest.split_to(rest.len().min(CHUNK_PIECE_BYTES)));
            }
            self.pending.push_back(digest);
            self.sealed = true;
        }
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
        let (hashed, digest) = self.digest.piece(*read_offset, &read.data, size)?;
        self.hashed += hashed;
        *read_offset += expected;
        if !read.data.is_empty() {
            self.pending.push_back(read.data);
        }
        if let Some(digest) = digest {
            self.pending.push_back(digest);
            self.sealed = true;
        }
        Ok(())
    }

    /// Hands pending bytes to QUIC; ends the stream after the digest.
    pub(crate) fn write(&mut self, connection: &mut quinn_proto::Connection) -> Result<(), TransferError> {
        let mut stream = connection.send_stream(self.stream);
        while !self.pending.is_empty() {
            // The pieces go to quinn as they are, without a copy: quinn
            // takes whole pieces and advances the one it takes in part.
            match stream.write_chunks(self.pending.make_contiguous()) {
                // Write again: only a write that returns `Blocked` makes
                // quinn report `Writable` later; a partial one does not.
                Ok(written) => drop(self.pending.drain(..written.chunks)),
                Err(quinn_proto::WriteError::Blocked) => return Ok(()),
                Err(quinn_proto::WriteError::Stopped(code)) => return Err(refused_or_reset(code)),
                Err(error) => return Err(TransferError::Interrupted(error.to_string())),
            }
        }
        if self.sealed && !self.finished {
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

/// What a [`ChunkDecoder`] found in the bytes pushed to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChunkEvent {
    /// The header arrived and its size is within the limit. Comes once,
    /// before any body bytes.
    Started {
        /// The announced body size.
        size: u64,
    },
    /// The next body bytes of an application transfer. A Raft body is
    /// collected instead: see [`ChunkDecoder::take_raft_body`].
    Data(Bytes),
}

/// The receiving side of the wire format in the module doc, without the
/// stream: it reads the header, hands the body on, hashes it, and compares
/// the digest that follows.
///
/// Push bytes as they arrive, in pieces of any size, with
/// [`ChunkDecoder::push`]. Once [`ChunkDecoder::is_complete`],
/// [`ChunkDecoder::finish`] says whether the body matched its digest, and a
/// verified Raft body can be taken with [`ChunkDecoder::take_raft_body`].
///
/// The decoder never trusts the announced size: it is checked against the
/// limit as soon as the header is in, and never reserved. What it holds
/// grows only with the bytes pushed ([`ChunkDecoder::held_bytes`]).
#[derive(Debug)]
pub struct ChunkDecoder {
    /// The largest application body accepted.
    size_max: u64,
    header: [u8; CHUNK_HEADER_BYTES],
    header_len: usize,
    purpose: Purpose,
    /// Set once the header is in and accepted.
    size: Option<u64>,
    /// Body bytes received.
    received: u64,
    hasher: Sha256,
    digest: [u8; CHUNK_DIGEST_BYTES],
    digest_len: usize,
    /// A Raft transfer's body, until taken.
    raft_body: Option<Vec<u8>>,
    /// Whether the computed digest matched, once the digest is in and
    /// [`ChunkDecoder::finish`] has compared them.
    verified: Option<bool>,
    /// The error that ended the transfer; every later push returns it.
    failure: Option<TransferError>,
}

impl ChunkDecoder {
    /// A decoder for one transfer, accepting application bodies up to
    /// `size_max` bytes. Raft bodies have their own limit,
    /// [`crate::raft::MESSAGE_BYTES_MAX`].
    #[must_use]
    pub fn new(size_max: u64) -> Self {
        Self {
            size_max,
            header: [0; CHUNK_HEADER_BYTES],
            header_len: 0,
            purpose: Purpose::Application,
            size: None,
            received: 0,
            hasher: Sha256::new(),
            digest: [0; CHUNK_DIGEST_BYTES],
            digest_len: 0,
            raft_body: None,
            verified: None,
            failure: None,
        }
    }

    /// Who the body is for: [`Purpose::Application`] until the header says
    /// otherwise.
    #[must_use]
    pub fn purpose(&self) -> Purpose {
        self.purpose
    }

    /// Whether the header (purpose and size) has arrived and been accepted.
    #[must_use]
    pub fn header_read(&self) -> bool {
        self.size.is_some()
    }

    /// Whether all of the transfer, digest included, has arrived.
    #[must_use]
    pub fn is_complete(&self) -> bool {
        self.digest_len == CHUNK_DIGEST_BYTES
    }

    /// Bytes the decoder holds on the heap: the room taken by the Raft body
    /// collected so far (zero for an application transfer, whose body is
    /// handed on). It grows with the bytes pushed, never with the announced
    /// size.
    #[must_use]
    pub fn held_bytes(&self) -> usize {
        self.raft_body.as_ref().map_or(0, Vec::capacity)
    }

    /// Takes bytes that arrived; `events` gets what they mean, in order,
    /// including the events found before an error.
    ///
    /// # Errors
    ///
    /// The transfer is over, and every later push returns the same error:
    /// [`TransferError::Malformed`] for an unknown purpose byte or bytes after
    /// the digest, [`TransferError::TooLarge`] for a size above the limit.
    pub fn push(&mut self, bytes: Bytes, events: &mut Vec<ChunkEvent>) -> Result<(), TransferError> {
        if let Some(error) = &self.failure {
            return Err(error.clone());
        }
        let result = self.consume(bytes, events);
        if let Err(error) = &result {
            self.failure = Some(error.clone());
        }
        result
    }

    fn consume(&mut self, mut bytes: Bytes, events: &mut Vec<ChunkEvent>) -> Result<(), TransferError> {
        if self.size.is_none() {
            let take = (CHUNK_HEADER_BYTES - self.header_len).min(bytes.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&bytes.split_to(take));
            self.header_len += take;
            if self.header_len < CHUNK_HEADER_BYTES {
                return Ok(());
            }
            self.purpose = match self.header[0] {
                0 => Purpose::Application,
                1 => Purpose::Raft,
                other => return Err(TransferError::Malformed(format!("unknown purpose {other}"))),
            };
            let size =
                u64::from_be_bytes(self.header[1..].try_into().expect("eight bytes after the purpose"));
            let max = match self.purpose {
                Purpose::Application => self.size_max,
                Purpose::Raft => crate::raft::MESSAGE_BYTES_MAX as u64,
            };
            if size > max {
                return Err(TransferError::TooLarge { size, max });
            }
            self.size = Some(size);
            if self.purpose == Purpose::Raft {
                // Empty: the body grows as it arrives, whatever the header claims.
                self.raft_body = Some(Vec::new());
            }
            events.push(ChunkEvent::Started { size });
        }
        let size = self.size.expect("set once the header is in");
        let body = (size - self.received).min(bytes.len() as u64) as usize;
        if body > 0 {
            let piece = bytes.split_to(body);
            self.hasher.update(&piece);
            self.received += body as u64;
            match &mut self.raft_body {
                None => events.push(ChunkEvent::Data(piece)),
                Some(raft_body) => raft_body.extend_from_slice(&piece),
            }
        }
        let take = (CHUNK_DIGEST_BYTES - self.digest_len).min(bytes.len());
        self.digest[self.digest_len..self.digest_len + take].copy_from_slice(&bytes.split_to(take));
        self.digest_len += take;
        if !bytes.is_empty() {
            return Err(TransferError::Malformed("bytes after the digest".into()));
        }
        Ok(())
    }

    /// The transfer's outcome: `None` while bytes are missing, then the
    /// verified body size, the same each time it is asked.
    ///
    /// # Errors
    ///
    /// [`TransferError::ChecksumMismatch`] when the body does not match its
    /// digest, or the error a push returned.
    pub fn finish(&mut self) -> Option<Result<u64, TransferError>> {
        if let Some(error) = &self.failure {
            return Some(Err(error.clone()));
        }
        if !self.is_complete() {
            return None;
        }
        let verified = *self.verified.get_or_insert_with(|| {
            let computed = std::mem::take(&mut self.hasher).finalize();
            computed.as_slice() == self.digest
        });
        Some(if verified { Ok(self.received) } else { Err(TransferError::ChecksumMismatch) })
    }

    /// A Raft transfer's body, once [`ChunkDecoder::finish`] has verified
    /// it. `None` for an application transfer, before verification, after a
    /// mismatch or an error, and once taken.
    pub fn take_raft_body(&mut self) -> Option<Bytes> {
        if self.verified != Some(true) || self.failure.is_some() {
            return None;
        }
        self.raft_body.take().map(Bytes::from)
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

/// A transfer this node receives: a [`ChunkDecoder`] fed from its stream.
pub(crate) struct Incoming {
    pub(crate) transfer: TransferId,
    pub(crate) from: u64,
    pub(crate) stream: StreamId,
    decoder: ChunkDecoder,
    /// Whether the receiver made room for the whole body.
    admitted: bool,
    done: bool,
}

impl Incoming {
    pub(crate) fn new(transfer: TransferId, from: u64, stream: StreamId, size_max: u64) -> Self {
        Self { transfer, from, stream, decoder: ChunkDecoder::new(size_max), admitted: false, done: false }
    }

    /// The announced body size, once the header is in.
    pub(crate) fn size(&self) -> Option<u64> {
        self.decoder.size
    }

    pub(crate) fn admitted(&self) -> bool {
        self.admitted
    }

    /// The receiver has made room for the whole body: it is read without
    /// pause from now on.
    pub(crate) fn admit(&mut self) {
        self.admitted = true;
    }

    /// Bytes of the room made for the body that are still held for it: a
    /// Raft body's whole size (it is collected here), an application
    /// body's bytes not yet handed on.
    pub(crate) fn promised(&self) -> u64 {
        match (self.admitted, self.decoder.size, self.decoder.purpose()) {
            (true, Some(size), Purpose::Raft) => size,
            (true, Some(size), Purpose::Application) => size - self.decoder.received,
            _ => 0,
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    pub(crate) fn purpose(&self) -> Purpose {
        self.decoder.purpose()
    }

    /// Reads what has arrived: the header alone if it is not in yet, else
    /// at most `budget` bytes of the body; `out` gets what it means.
    /// Returns whether it stopped at the budget (bytes may be left unread).
    pub(crate) fn read(
        &mut self,
        connection: &mut quinn_proto::Connection,
        mut budget: usize,
        out: &mut Vec<Received>,
    ) -> bool {
        if self.done {
            return false;
        }
        let mut failure = None;
        let mut ended = false;
        let mut paused = false;
        let mut events = Vec::new();
        {
            let mut stream = connection.recv_stream(self.stream);
            let Ok(mut chunks) = stream.read(true) else { return false };
            let header_read = self.decoder.header_read();
            loop {
                // The caller sees the header before it sets the body's budget.
                if !header_read && self.decoder.header_read() {
                    break;
                }
                let max = if header_read {
                    budget.min(CHUNK_PIECE_BYTES)
                } else {
                    CHUNK_HEADER_BYTES - self.decoder.header_len
                };
                if max == 0 {
                    paused = true;
                    break;
                }
                match chunks.next(max) {
                    Ok(Some(chunk)) => {
                        if header_read {
                            budget = budget.saturating_sub(chunk.bytes.len());
                        }
                        if let Err(error) = self.decoder.push(chunk.bytes, &mut events) {
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
        out.extend(events.into_iter().map(|event| match event {
            ChunkEvent::Started { size } => Received::Started { size },
            ChunkEvent::Data(data) => Received::Data(data),
        }));
        if failure.is_none() && ended && !self.decoder.is_complete() {
            failure = Some(TransferError::Interrupted("stream ended inside the transfer".into()));
        }
        if let Some(error) = failure {
            self.answer(connection, STATUS_ERROR);
            let _ = connection.recv_stream(self.stream).stop(VarInt::from_u32(u32::from(STATUS_ERROR)));
            out.push(Received::Finished { result: Err(error), raft: None });
            return false;
        }
        if let Some(result) = self.decoder.finish() {
            let status = match &result {
                Ok(_) => STATUS_OK,
                Err(TransferError::ChecksumMismatch) => STATUS_CHECKSUM_MISMATCH,
                Err(_) => STATUS_ERROR,
            };
            self.answer(connection, status);
            let raft = self.decoder.take_raft_body();
            out.push(Received::Finished { result, raft });
        }
        paused
    }

    fn answer(&mut self, connection: &mut quinn_proto::Connection, status: u8) {
        self.done = true;
        let mut stream = connection.send_stream(self.stream);
        let _ = stream.write(&[status]);
        let _ = stream.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A transfer as the sender writes it.
    fn encode(purpose: u8, body: &[u8]) -> Vec<u8> {
        let mut bytes = vec![purpose];
        bytes.extend_from_slice(&(body.len() as u64).to_be_bytes());
        bytes.extend_from_slice(body);
        bytes.extend_from_slice(&Sha256::digest(body));
        bytes
    }

    /// What a decoder made of `bytes` pushed in pieces of `piece` bytes:
    /// the announced size, the application body, the Raft body and the
    /// outcome.
    struct Decoded {
        started: Option<u64>,
        data: Vec<u8>,
        raft: Option<Bytes>,
        outcome: Option<Result<u64, TransferError>>,
    }

    fn decode(bytes: &[u8], piece: usize, size_max: u64) -> Decoded {
        let mut decoder = ChunkDecoder::new(size_max);
        let mut events = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            if decoder.push(Bytes::copy_from_slice(chunk), &mut events).is_err() {
                break;
            }
        }
        let mut decoded = Decoded { started: None, data: Vec::new(), raft: None, outcome: decoder.finish() };
        for event in events {
            match event {
                ChunkEvent::Started { size } => {
                    assert!(
                        decoded.started.is_none() && decoded.data.is_empty(),
                        "started comes once, first"
                    );
                    decoded.started = Some(size);
                }
                ChunkEvent::Data(data) => decoded.data.extend_from_slice(&data),
            }
        }
        decoded.raft = decoder.take_raft_body();
        decoded
    }

    #[test]
    fn transfers_are_verified_whatever_the_piece_size() {
        let body: Vec<u8> = (0..1000u32).map(|index| index as u8).collect();
        let check = |purpose: u8, body: &[u8]| {
            let bytes = encode(purpose, body);
            for piece in [1, 2, 9, 10, 40, 41, 64, bytes.len()] {
                let decoded = decode(&bytes, piece, body.len() as u64);
                assert_eq!(decoded.started, Some(body.len() as u64), "piece size {piece}");
                assert_eq!(decoded.outcome, Some(Ok(body.len() as u64)), "piece size {piece}");
                if purpose == Purpose::Raft as u8 {
                    assert!(decoded.data.is_empty(), "a raft body is not handed on piece by piece");
                    assert_eq!(decoded.raft.as_deref(), Some(body), "piece size {piece}");
                } else {
                    assert_eq!(decoded.data, body, "piece size {piece}");
                    assert_eq!(decoded.raft, None);
                }
            }
        };
        check(0, &body);
        check(1, &body);
        check(0, &[]);
        check(1, &[]);
    }

    #[test]
    fn bad_transfers_fail() {
        let check = |bytes: &[u8], size_max: u64, expected: Option<Result<u64, TransferError>>| {
            for piece in [1, 3, bytes.len()] {
                let decoded = decode(bytes, piece, size_max);
                assert_eq!(decoded.outcome, expected, "piece size {piece} of {bytes:?}");
                assert_eq!(decoded.raft, None);
            }
        };
        let mut flipped = encode(1, b"raft message");
        flipped[CHUNK_HEADER_BYTES] ^= 1;
        check(&flipped, 100, Some(Err(TransferError::ChecksumMismatch)));
        let mut digest_flipped = encode(0, b"body");
        *digest_flipped.last_mut().unwrap() ^= 0x80;
        check(&digest_flipped, 100, Some(Err(TransferError::ChecksumMismatch)));
        check(&encode(2, b"body"), 100, Some(Err(TransferError::Malformed("unknown purpose 2".into()))));
        check(&encode(0, b"body"), 3, Some(Err(TransferError::TooLarge { size: 4, max: 3 })));
        let max = crate::raft::MESSAGE_BYTES_MAX as u64;
        let mut huge_raft = vec![1];
        huge_raft.extend_from_slice(&(max + 1).to_be_bytes());
        check(&huge_raft, u64::MAX, Some(Err(TransferError::TooLarge { size: max + 1, max })));
        let mut trailing = encode(0, b"body");
        trailing.push(0);
        check(&trailing, 100, Some(Err(TransferError::Malformed("bytes after the digest".into()))));
        let whole = encode(0, b"body");
        check(&whole[..whole.len() - 1], 100, None);
        check(&whole[..4], 100, None);
        check(&[], 100, None);
    }

    #[test]
    fn the_announced_size_is_never_reserved() {
        let mut decoder = ChunkDecoder::new(u64::MAX);
        let mut events = Vec::new();
        let mut header = vec![Purpose::Raft as u8];
        header.extend_from_slice(&(crate::raft::MESSAGE_BYTES_MAX as u64).to_be_bytes());
        decoder.push(header.into(), &mut events).unwrap();
        assert_eq!(events, [ChunkEvent::Started { size: crate::raft::MESSAGE_BYTES_MAX as u64 }]);
        assert_eq!(decoder.held_bytes(), 0);
        decoder.push(Bytes::from_static(&[7; 100]), &mut events).unwrap();
        assert!(decoder.held_bytes() < 1000, "holds {} bytes", decoder.held_bytes());
        assert_eq!(decoder.finish(), None);
    }

    #[test]
    fn a_failed_decoder_stays_failed() {
        let mut decoder = ChunkDecoder::new(100);
        let mut events = Vec::new();
        let error = TransferError::Malformed("unknown purpose 9".into());
        assert_eq!(decoder.push(Bytes::from_static(&[9; 9]), &mut events), Err(error.clone()));
        assert_eq!(decoder.push(Bytes::new(), &mut events), Err(error.clone()));
        assert_eq!(decoder.finish(), Some(Err(error)));
        assert!(events.is_empty());
    }
}
