//! Fuzzes the WAL segment decoder (`decode_segment`) with arbitrary bytes and
//! with encoder-written segments that are then cut, zero-padded or edited.
//!
//! Every input is decoded as the last segment and as a sealed one, and each
//! decode must keep the invariants in [`check_invariants`]. Encoder-written
//! inputs are also held to the recovery decision table: an undamaged
//! segment, cut anywhere and padded with zeros, is a torn prefix of whole
//! batches in the last segment; edits may stop decoding early but never make
//! it deliver a record that was not written.
#![no_main]

use std::ops::Range;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use octopii_core::wal::format::{
    BatchRecord, DecodedRecord, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentDamage, SegmentScan,
    decode_segment, encode_batch, encode_segment_header,
};

/// Most batches, records per batch and payload bytes an input builds.
const BATCHES_MAX: usize = 8;
const RECORDS_MAX: usize = 8;
const PAYLOAD_BYTES_MAX: usize = 4096;
/// Most single-byte edits. A forged record needs about twenty (its body, the
/// body checksum, the header checksum and the commit record's checksums),
/// so within this bound only a CRC32 collision could deliver an edited
/// record.
const EDITS_MAX: usize = 8;

#[derive(Arbitrary, Debug)]
enum SegmentInput {
    /// Any bytes at all, with any expected first sequence number.
    Raw { expected_first_seq: u64, bytes: Vec<u8> },
    /// A segment the encoder wrote, then cut, padded and edited.
    Encoded {
        first_seq: u64,
        batches: Vec<Vec<RecordInput>>,
        /// Cut the file to this length (modulo its length plus one).
        cut: Option<u16>,
        /// Zero bytes appended after the cut.
        zeros: u8,
        /// Overwrite the byte at this index (modulo the length) with this value.
        edits: Vec<(u16, u8)>,
    },
}

#[derive(Arbitrary, Debug)]
enum RecordInput {
    Entry(Vec<u8>),
    /// A truncation reaching this many sequence numbers back.
    Truncate(u8),
}

/// An encoded segment and what decoding must deliver for each batch.
struct Encoded {
    bytes: Vec<u8>,
    /// End offset of each batch and the records it delivers.
    batches: Vec<(usize, Vec<DecodedRecord>)>,
}

fn encode(first_seq: u64, batches: &[Vec<RecordInput>]) -> Encoded {
    let mut out = BytesMut::new();
    encode_segment_header(first_seq, &mut out);
    let mut seq = first_seq;
    let mut layout = Vec::new();
    for records in batches.iter().take(BATCHES_MAX).filter(|records| !records.is_empty()) {
        let batch_first_seq = seq;
        let mut pos = out.len();
        let mut encoded = Vec::new();
        let mut decoded = Vec::new();
        for record in records.iter().take(RECORDS_MAX) {
            let own = seq;
            seq = seq.wrapping_add(1);
            let record = match record {
                RecordInput::Entry(payload) => {
                    let payload = &payload[..payload.len().min(PAYLOAD_BYTES_MAX)];
                    let start = pos + RECORD_HEADER_BYTES;
                    decoded.push(DecodedRecord::Entry { seq: own, payload: start..start + payload.len() });
                    BatchRecord::Entry(Bytes::copy_from_slice(payload))
                }
                RecordInput::Truncate(back) => {
                    let from_seq = own.saturating_sub(u64::from(*back));
                    decoded.push(DecodedRecord::Truncate { seq: own, from_seq });
                    BatchRecord::Truncate(from_seq)
                }
            };
            pos += record.encoded_len();
            encoded.push(record);
        }
        encode_batch(batch_first_seq, encoded.iter(), &mut out);
        layout.push((out.len(), decoded));
    }
    Encoded { bytes: out.to_vec(), batches: layout }
}

type Decoded = (Result<SegmentScan, SegmentDamage>, Vec<DecodedRecord>);

fn decode(bytes: &[u8], first_seq: u64, is_last: bool) -> Decoded {
    let mut delivered = Vec::new();
    let result = decode_segment(bytes, first_seq, is_last, |record| delivered.push(record));
    (result, delivered)
}

fn seq_of(record: &DecodedRecord) -> u64 {
    match record {
        DecodedRecord::Entry { seq, .. } | DecodedRecord::Truncate { seq, .. } => *seq,
    }
}

/// What every decode must satisfy, whatever the bytes.
fn check_invariants(bytes: &[u8], first_seq: u64, (result, delivered): &Decoded) {
    let len = bytes.len() as u64;
    if let Some(first) = delivered.first() {
        assert_eq!(seq_of(first), first_seq, "the first record has the segment's first seq");
    }
    for pair in delivered.windows(2) {
        let (previous, next) = (seq_of(&pair[0]), seq_of(&pair[1]));
        assert!(previous < next && next - previous == 1, "seqs increase one by one: {previous}, {next}");
    }
    let valid_end = match result {
        Ok(scan) => {
            assert!(scan.committed_len <= len, "committed {} of {len} bytes", scan.committed_len);
            assert_eq!(scan.committed_len + scan.torn_bytes, len, "committed and torn bytes cover the file");
            assert_eq!(scan.first_seq, first_seq);
            let end_seq = delivered.last().map_or(first_seq, |record| seq_of(record).wrapping_add(1));
            assert_eq!(scan.end_seq, end_seq, "the scan ends after the last delivered record");
            scan.committed_len
        }
        Err(damage) => {
            assert!(damage.offset <= len, "damage at {} of {len} bytes", damage.offset);
            assert!(damage.seq_from >= first_seq, "damage {damage:?} before the segment's first seq");
            if let Some(last) = delivered.last() {
                assert!(seq_of(last) < damage.seq_from, "delivered {last:?} at or after damage {damage:?}");
            }
            damage.offset
        }
    };
    for record in delivered {
        match record {
            DecodedRecord::Entry { payload, .. } => {
                let Range { start, end } = payload.clone();
                assert!(start <= end && end as u64 <= valid_end, "payload {payload:?} outside {valid_end}");
            }
            DecodedRecord::Truncate { seq, from_seq } => {
                assert!(from_seq <= seq, "truncation reaches forward")
            }
        }
    }
}

fn check_encoded(
    first_seq: u64,
    batches: &[Vec<RecordInput>],
    cut: Option<u16>,
    zeros: u8,
    edits: &[(u16, u8)],
) {
    let encoded = encode(first_seq, batches);
    let original = encoded.bytes.clone();
    let mut bytes = encoded.bytes;
    let written: Vec<DecodedRecord> =
        encoded.batches.iter().flat_map(|(_, records)| records.clone()).collect();
    let cut = cut.map_or(bytes.len(), |cut| usize::from(cut) % (bytes.len() + 1));
    bytes.truncate(cut);
    bytes.resize(cut + usize::from(zeros), 0);
    // Nothing to edit in an empty file.
    let edits = if bytes.is_empty() { &[] } else { &edits[..edits.len().min(EDITS_MAX)] };
    for &(at, value) in edits {
        let at = usize::from(at) % bytes.len();
        bytes[at] = value;
    }
    for is_last in [true, false] {
        let decoded = decode(&bytes, first_seq, is_last);
        check_invariants(&bytes, first_seq, &decoded);
        let (result, delivered) = &decoded;
        assert!(written.starts_with(delivered), "delivered records that were not written: {delivered:?}");
        // Sequence numbers past u64::MAX are never written: only the
        // invariants hold for such a segment.
        if !edits.is_empty() || first_seq.checked_add(written.len() as u64).is_none() {
            continue;
        }
        // Undamaged: the batches whose bytes are all present are committed.
        // That includes a batch (or header) cut short when the zeros padding
        // the cut happen to equal its missing bytes.
        let intact = |end: usize| bytes.get(..end) == Some(&original[..end]);
        let header_whole = intact(SEGMENT_HEADER_BYTES);
        let kept = match header_whole {
            true => encoded.batches.iter().take_while(|(end, _)| intact(*end)).count(),
            false => 0,
        };
        let committed_len = match kept {
            _ if !header_whole => 0,
            0 => SEGMENT_HEADER_BYTES,
            kept => encoded.batches[kept - 1].0,
        };
        let records: usize = encoded.batches[..kept].iter().map(|(_, records)| records.len()).sum();
        let sealed = committed_len == bytes.len() && header_whole;
        if is_last || sealed {
            let scan = result.as_ref().unwrap_or_else(|damage| {
                panic!("undamaged segment cut at {cut} + {zeros} zeros (is_last {is_last}): {damage:?}")
            });
            assert_eq!(scan.committed_len, committed_len as u64, "cut at {cut} + {zeros} zeros");
            assert_eq!(delivered.len(), records, "cut at {cut} + {zeros} zeros");
        } else {
            assert!(result.is_err(), "a sealed segment ending inside a batch is damage: {result:?}");
        }
    }
}

fuzz_target!(|input: SegmentInput| {
    match input {
        SegmentInput::Raw { expected_first_seq, bytes } => {
            for is_last in [true, false] {
                let decoded = decode(&bytes, expected_first_seq, is_last);
                check_invariants(&bytes, expected_first_seq, &decoded);
            }
        }
        SegmentInput::Encoded { first_seq, batches, cut, zeros, edits } => {
            check_encoded(first_seq, &batches, cut, zeros, &edits)
        }
    }
});
