//! The on-disk format of WAL segments: encoding, and the decoder recovery and
//! reads run over a segment's bytes. `docs/wal.md` draws it byte by byte.
//!
//! A segment is a header followed by batches. A batch is one or more records
//! (entries and truncation markers) followed by a commit record naming the
//! batch. Every record carries a checksum of its header and one of its body;
//! the commit record adds a checksum over the whole batch, so recovery can
//! tell a batch that never finished (a torn tail: drop it) from one that
//! finished and later rotted (corruption: report it, never drop it).

use std::ops::Range;

use bytes::{BufMut, Bytes, BytesMut};

/// Identifies a segment file and its format version.
pub const SEGMENT_MAGIC: [u8; 8] = *b"OCTOWAL\0";
/// The format version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Size of the segment header: magic, version, first sequence, checksum.
pub const SEGMENT_HEADER_BYTES: usize = 24;
/// Size of every record header.
pub const RECORD_HEADER_BYTES: usize = 16;
/// Size of a commit record's body.
pub const COMMIT_BODY_BYTES: usize = 20;
/// Size of a truncation record's body.
pub const TRUNCATE_BODY_BYTES: usize = 8;
/// Largest entry payload accepted by `append`.
pub const ENTRY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest batch (records and commit record) written at once.
pub const BATCH_BYTES_MAX: usize = 2 * ENTRY_BYTES_MAX + 2 * RECORD_HEADER_BYTES + COMMIT_BODY_BYTES;
/// Largest segment size a configuration may target.
pub const SEGMENT_BYTES_TARGET_MAX: u64 = 256 * 1024 * 1024;
/// Largest segment file recovery will read: a segment is rotated once it
/// reaches its target, so it can overshoot by at most one batch.
pub const SEGMENT_BYTES_MAX: u64 =
    SEGMENT_BYTES_TARGET_MAX + SEGMENT_HEADER_BYTES as u64 + BATCH_BYTES_MAX as u64;
/// Most records in one batch.
pub const BATCH_RECORDS_MAX: usize = 64 * 1024;

const _: () = assert!(BATCH_BYTES_MAX >= ENTRY_BYTES_MAX + RECORD_HEADER_BYTES * 2 + COMMIT_BODY_BYTES);
const _: () = assert!(BATCH_BYTES_MAX <= u32::MAX as usize);

/// The kind byte of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A user payload; consumes one sequence number.
    Entry = 1,
    /// Seals the batch before it.
    Commit = 2,
    /// Discards every entry at or above a sequence number; consumes one
    /// sequence number itself.
    Truncate = 3,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(RecordKind::Entry),
            2 => Some(RecordKind::Commit),
            3 => Some(RecordKind::Truncate),
            _ => None,
        }
    }
}

/// The name of the segment whose first record has sequence `first_seq`.
/// Zero-padded so that names sort in sequence order.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

/// The first sequence number encoded in a segment's name, or `None` when the
/// name is not a segment's.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a segment header.
pub fn encode_segment_header(first_seq: u64, out: &mut BytesMut) {
    let start = out.len();
    out.put_slice(&SEGMENT_MAGIC);
    out.put_u32_le(FORMAT_VERSION);
    out.put_u64_le(first_seq);
    let checksum = crc32fast::hash(&out[start..]);
    out.put_u32_le(checksum);
    debug_assert_eq!(out.len() - start, SEGMENT_HEADER_BYTES);
}

/// Appends one record (header and body) to `out`.
pub fn encode_record(kind: RecordKind, body: &[u8], out: &mut BytesMut) {
    assert!(body.len() <= ENTRY_BYTES_MAX, "record bodies are bounded before encoding");
    let start = out.len();
    out.put_u32_le(body.len() as u32);
    out.put_u8(kind as u8);
    out.put_slice(&[0; 3]);
    out.put_u32_le(crc32fast::hash(body));
    let header_checksum = crc32fast::hash(&out[start..start + 12]);
    out.put_u32_le(header_checksum);
    out.put_slice(body);
}

/// The body of a commit record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Sequence number of the batch's first record.
    pub first_seq: u64,
    /// Number of records in the batch.
    pub count: u32,
    /// Number of bytes of the batch's records, headers included.
    pub batch_bytes: u32,
    /// CRC32 over those bytes.
    pub batch_checksum: u32,
}

impl Commit {
    fn encode(&self) -> [u8; COMMIT_BODY_BYTES] {
        let mut body = [0; COMMIT_BODY_BYTES];
        body[0..8].copy_from_slice(&self.first_seq.to_le_bytes());
        body[8..12].copy_from_slice(&self.count.to_le_bytes());
        body[12..16].copy_from_slice(&self.batch_bytes.to_le_bytes());
        body[16..20].copy_from_slice(&self.batch_checksum.to_le_bytes());
        body
    }

    fn decode(body: &[u8]) -> Option<Self> {
        if body.len() != COMMIT_BODY_BYTES {
            return None;
        }
        Some(Self {
            first_seq: u64::from_le_bytes(body[0..8].try_into().ok()?),
            count: u32::from_le_bytes(body[8..12].try_into().ok()?),
            batch_bytes: u32::from_le_bytes(body[12..16].try_into().ok()?),
            batch_checksum: u32::from_le_bytes(body[16..20].try_into().ok()?),
        })
    }

    /// Sequence number after the batch's last record (saturating: the decoder
    /// refuses batches that would reach past `u64::MAX`).
    pub fn end_seq(&self) -> u64 {
        self.first_seq.saturating_add(u64::from(self.count))
    }
}

/// One record of a batch being assembled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchRecord {
    /// A user payload.
    Entry(Bytes),
    /// Discard entries at or above this sequence number.
    Truncate(u64),
}

impl BatchRecord {
    /// Bytes the record takes on disk.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES
            + match self {
                BatchRecord::Entry(payload) => payload.len(),
                BatchRecord::Truncate(_) => TRUNCATE_BODY_BYTES,
            }
    }
}

/// Encodes a batch: its records, then the commit record naming them.
/// `records` must be non-empty and within [`BATCH_BYTES_MAX`].
pub fn encode_batch<'a>(
    first_seq: u64,
    records: impl ExactSizeIterator<Item = &'a BatchRecord>,
    out: &mut BytesMut,
) {
    let count = records.len();
    assert!(count > 0 && count <= BATCH_RECORDS_MAX, "a batch holds 1..=BATCH_RECORDS_MAX records");
    let start = out.len();
    for record in records {
        match record {
            BatchRecord::Entry(payload) => encode_record(RecordKind::Entry, payload, out),
            BatchRecord::Truncate(from_seq) => {
                encode_record(RecordKind::Truncate, &from_seq.to_le_bytes(), out)
            }
        }
    }
    let batch_bytes = out.len() - start;
    assert!(batch_bytes <= BATCH_BYTES_MAX, "batches are bounded before encoding");
    let commit = Commit {
        first_seq,
        count: count as u32,
        batch_bytes: batch_bytes as u32,
        batch_checksum: crc32fast::hash(&out[start..]),
    };
    encode_record(RecordKind::Commit, &commit.encode(), out);
}

/// A committed record delivered by [`decode_segment`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodedRecord {
    /// An entry: its sequence number and where its payload lies in the
    /// segment's bytes.
    Entry {
        /// Sequence number.
        seq: u64,
        /// Byte range of the payload within the segment.
        payload: Range<usize>,
    },
    /// A truncation marker.
    Truncate {
        /// Its own sequence number.
        seq: u64,
        /// Entries at or above this sequence number are discarded.
        from_seq: u64,
    },
}

/// Why a segment's bytes are judged corrupt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CorruptionReason {
    /// The segment header's magic, version or checksum is wrong.
    #[error("bad segment header")]
    SegmentHeader,
    /// The segment was written by a newer format version.
    #[error("unsupported format version {0}")]
    UnsupportedVersion(u32),
    /// A record header's checksum does not match.
    #[error("record header checksum mismatch")]
    RecordHeader,
    /// A record header is intact but describes an impossible record.
    #[error("record header describes an invalid record")]
    InvalidRecord,
    /// A record body's checksum does not match.
    #[error("record body checksum mismatch")]
    RecordBody,
    /// A commit record's checksum over its batch does not match, or it
    /// counts other records than precede it.
    #[error("commit record does not match its batch")]
    BatchMismatch,
    /// Sequence numbers do not follow on from the previous batch or segment.
    #[error("sequence numbers do not follow on")]
    SequenceGap,
    /// A segment other than the last ends without a commit record.
    #[error("segment ends inside a batch but is not the last segment")]
    UnsealedSegment,
    /// The file is larger than any segment this format writes.
    #[error("segment larger than {SEGMENT_BYTES_MAX} bytes")]
    TooLarge,
}

/// Damage found in a segment that is not a torn tail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentDamage {
    /// Byte offset where the damage starts.
    pub offset: u64,
    /// First sequence number that may be affected.
    pub seq_from: u64,
    /// Sequence number after the last one known to be affected, when an
    /// intact commit record after the damage names it.
    pub seq_to: Option<u64>,
    /// What is wrong.
    pub reason: CorruptionReason,
}

/// What [`decode_segment`] learned about a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentScan {
    /// Sequence number of the segment's first record.
    pub first_seq: u64,
    /// Sequence number after its last committed record.
    pub end_seq: u64,
    /// Length of the valid prefix: the end of the last commit record, the
    /// end of the header if no batch committed, or 0 if the header itself
    /// never finished.
    pub committed_len: u64,
    /// Bytes after `committed_len` that belong to a batch that never
    /// finished (only in the last segment); zero when the segment is clean.
    pub torn_bytes: u64,
}

enum RecordError {
    /// The file ends inside the record.
    Incomplete,
    /// The record is damaged or invalid.
    Bad(CorruptionReason),
}

struct RawRecord {
    kind: RecordKind,
    body: Range<usize>,
}

fn parse_record(bytes: &[u8], pos: usize) -> Result<RawRecord, RecordError> {
    let header = bytes.get(pos..pos + RECORD_HEADER_BYTES).ok_or(RecordError::Incomplete)?;
    let read_u32 =
        |at: usize| u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]]);
    if crc32fast::hash(&header[..12]) != read_u32(12) {
        return Err(RecordError::Bad(CorruptionReason::RecordHeader));
    }
    let len = read_u32(0) as usize;
    let kind = RecordKind::from_byte(header[4]);
    let body_len_ok = match kind {
        Some(RecordKind::Entry) => len <= ENTRY_BYTES_MAX,
        Some(RecordKind::Commit) => len == COMMIT_BODY_BYTES,
        Some(RecordKind::Truncate) => len == TRUNCATE_BODY_BYTES,
        None => false,
    };
    let (Some(kind), true, [0, 0, 0]) = (kind, body_len_ok, &header[5..8]) else {
        return Err(RecordError::Bad(CorruptionReason::InvalidRecord));
    };
    let body = pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + len;
    let body_bytes = bytes.get(body.clone()).ok_or(RecordError::Incomplete)?;
    if crc32fast::hash(body_bytes) != read_u32(8) {
        return Err(RecordError::Bad(CorruptionReason::RecordBody));
    }
    Ok(RawRecord { kind, body })
}

/// The first intact commit record starting after `start` that names
/// sequence numbers from `seq` on, found by trying every offset. Its presence
/// proves that data before it was once complete. Each offset costs a few
/// byte comparisons and at most two CRCs of a few bytes, so scanning stays
/// linear whatever the bytes are.
fn find_commit_after(bytes: &[u8], start: usize, seq: u64) -> Option<Commit> {
    let last_start = bytes.len().checked_sub(RECORD_HEADER_BYTES + COMMIT_BODY_BYTES)?;
    let commit_len = (COMMIT_BODY_BYTES as u32).to_le_bytes();
    (start..=last_start)
        .filter(|&pos| bytes[pos..pos + 4] == commit_len && bytes[pos + 4] == RecordKind::Commit as u8)
        .find_map(|pos| match parse_record(bytes, pos) {
            Ok(RawRecord { kind: RecordKind::Commit, body }) => Commit::decode(&bytes[body]),
            _ => None,
        })
        .filter(|commit| commit.end_seq() > seq)
}

/// Length of `bytes` without its trailing zeros: space a crash left
/// allocated but unwritten reads back as zeros.
fn written_len(bytes: &[u8]) -> usize {
    bytes.iter().rposition(|&byte| byte != 0).map_or(0, |last| last + 1)
}

/// Whether the record at `pos` ends past the last non-zero byte: the write
/// that carried it was interrupted and the space after it reads back as
/// zeros. A verified header's length is trusted, so nothing after such a
/// record can be a record of its own.
fn is_cut_short_by_zeros(bytes: &[u8], pos: usize) -> bool {
    let written = written_len(bytes).max(pos);
    matches!(parse_record(&bytes[..written], pos), Err(RecordError::Incomplete))
}

/// Decodes one segment's bytes, calling `visit` for every record of every
/// committed batch, in order.
///
/// `expected_first_seq` is the sequence number the segment's name promises.
/// `is_last` says whether this is the newest segment: only there may a batch
/// be torn by a crash, and only there is an unfinished tail reported as
/// [`SegmentScan::torn_bytes`] rather than as damage.
///
/// # Errors
///
/// [`SegmentDamage`] when the bytes cannot be a crash-torn version of what
/// this format writes: a checksum mismatch with complete data around it, a
/// commit record that does not match its batch, a sequence gap, or damage
/// followed by an intact commit record. Damaged bytes are never skipped.
pub fn decode_segment(
    bytes: &[u8],
    expected_first_seq: u64,
    is_last: bool,
    mut visit: impl FnMut(DecodedRecord),
) -> Result<SegmentScan, SegmentDamage> {
    let damage = |offset: usize, seq_from: u64, reason| SegmentDamage {
        offset: offset as u64,
        seq_from,
        seq_to: None,
        reason,
    };
    if bytes.len() as u64 > SEGMENT_BYTES_MAX {
        return Err(damage(0, expected_first_seq, CorruptionReason::TooLarge));
    }
    if let Err(found) = check_segment_header(bytes, expected_first_seq) {
        // A header that never finished: nothing after it was written either.
        if is_last && written_len(bytes) < SEGMENT_HEADER_BYTES {
            return Ok(SegmentScan {
                first_seq: expected_first_seq,
                end_seq: expected_first_seq,
                committed_len: 0,
                torn_bytes: bytes.len() as u64,
            });
        }
        return Err(found);
    }

    let mut seq = expected_first_seq;
    let mut pos = SEGMENT_HEADER_BYTES;
    let mut batch_start = pos;
    let mut batch: Vec<DecodedRecord> = Vec::new();
    while pos < bytes.len() {
        let record = match parse_record(bytes, pos) {
            Ok(record) => record,
            Err(RecordError::Bad(reason)) if !is_cut_short_by_zeros(bytes, pos) => {
                let mut found = damage(pos, seq, reason);
                found.seq_to = find_commit_after(bytes, pos + 1, seq).map(|commit| commit.end_seq());
                return Err(found);
            }
            // The bytes end inside this record, as an interrupted write
            // leaves them: only the newest segment may end that way.
            Err(_) if is_last => break,
            Err(_) => return Err(damage(pos, seq, CorruptionReason::UnsealedSegment)),
        };
        // Entries and truncations need a sequence number below u64::MAX, so
        // that the number after them exists.
        let record_seq = || {
            let record_seq = seq.checked_add(batch.len() as u64).filter(|&record_seq| record_seq < u64::MAX);
            record_seq.ok_or(damage(batch_start, seq, CorruptionReason::SequenceGap))
        };
        match record.kind {
            RecordKind::Entry => {
                batch.push(DecodedRecord::Entry { seq: record_seq()?, payload: record.body.clone() })
            }
            RecordKind::Truncate => {
                let record_seq = record_seq()?;
                let from_seq = u64::from_le_bytes(
                    bytes[record.body.clone()].try_into().expect("length checked by parse_record"),
                );
                if from_seq > record_seq {
                    return Err(damage(pos, seq, CorruptionReason::InvalidRecord));
                }
                batch.push(DecodedRecord::Truncate { seq: record_seq, from_seq });
            }
            RecordKind::Commit => {
                let commit =
                    Commit::decode(&bytes[record.body.clone()]).expect("length checked by parse_record");
                let matches_batch = commit.count as usize == batch.len()
                    && commit.batch_bytes as usize == pos - batch_start
                    && commit.batch_checksum == crc32fast::hash(&bytes[batch_start..pos])
                    && !batch.is_empty();
                if !matches_batch {
                    return Err(damage(batch_start, seq, CorruptionReason::BatchMismatch));
                }
                if commit.first_seq != seq {
                    return Err(damage(batch_start, seq, CorruptionReason::SequenceGap));
                }
                batch.drain(..).for_each(&mut visit);
                seq = commit.end_seq();
                batch_start = record.body.end;
            }
        }
        pos = record.body.end;
        if pos - batch_start > BATCH_BYTES_MAX || batch.len() > BATCH_RECORDS_MAX {
            return Err(damage(batch_start, seq, CorruptionReason::InvalidRecord));
        }
    }
    if batch_start < bytes.len() && !is_last {
        return Err(damage(batch_start, seq, CorruptionReason::UnsealedSegment));
    }
    Ok(SegmentScan {
        first_seq: expected_first_seq,
        end_seq: seq,
        committed_len: batch_start as u64,
        torn_bytes: (bytes.len() - batch_start) as u64,
    })
}

fn check_segment_header(bytes: &[u8], expected_first_seq: u64) -> Result<(), SegmentDamage> {
    let damage = |reason| SegmentDamage { offset: 0, seq_from: expected_first_seq, seq_to: None, reason };
    let header = bytes.get(..SEGMENT_HEADER_BYTES).ok_or(damage(CorruptionReason::SegmentHeader))?;
    let checksum = u32::from_le_bytes(header[20..24].try_into().expect("slice of 4"));
    if header[..8] != SEGMENT_MAGIC || crc32fast::hash(&header[..20]) != checksum {
        return Err(damage(CorruptionReason::SegmentHeader));
    }
    let version = u32::from_le_bytes(header[8..12].try_into().expect("slice of 4"));
    if version != FORMAT_VERSION {
        return Err(damage(CorruptionReason::UnsupportedVersion(version)));
    }
    let first_seq = u64::from_le_bytes(header[12..20].try_into().expect("slice of 8"));
    if first_seq != expected_first_seq {
        return Err(damage(CorruptionReason::SequenceGap));
    }
    Ok(())
}

#[cfg(test)]
#[path = "format_tests.rs"]
mod tests;
