//! Tests of the segment decoder's recovery decision table (clean, torn, cut,
//! zero-padded, damaged and oversize segments) and property tests over
//! randomly encoded batches.
//!
//! Every case runs through [`check`], which also asserts the invariants any
//! decode must keep (see [`check_invariants`]); a failing test lists every
//! failing case by name rather than stopping at the first.

use std::ops::{Range, RangeInclusive};
use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{Bytes, BytesMut};

use super::*;

// ---------------------------------------------------------------------------
// Fixtures: segments written by the encoder, with the layout of each batch.

/// A segment written by the encoder, and where each of its batches lies.
#[derive(Clone, Debug)]
struct Fixture {
    first_seq: u64,
    bytes: Vec<u8>,
    batches: Vec<BatchLayout>,
}

#[derive(Clone, Debug)]
struct BatchLayout {
    /// From the batch's first record to the end of its commit record.
    range: Range<usize>,
    /// Where its commit record starts.
    commit_at: usize,
    first_seq: u64,
    /// What decoding delivers for it.
    records: Vec<DecodedRecord>,
}

impl Fixture {
    /// Encodes a header and `batches`, numbering records from `first_seq`.
    fn new(first_seq: u64, batches: &[Vec<BatchRecord>]) -> Self {
        let mut out = BytesMut::new();
        encode_segment_header(first_seq, &mut out);
        let mut layouts = Vec::new();
        let mut seq = first_seq;
        for records in batches {
            let start = out.len();
            let mut pos = start;
            let mut decoded = Vec::new();
            for (index, record) in records.iter().enumerate() {
                let record_seq = seq + index as u64;
                decoded.push(match record {
                    BatchRecord::Entry(payload) => DecodedRecord::Entry {
                        seq: record_seq,
                        payload: pos + RECORD_HEADER_BYTES..pos + RECORD_HEADER_BYTES + payload.len(),
                    },
                    BatchRecord::Truncate(from_seq) => {
                        DecodedRecord::Truncate { seq: record_seq, from_seq: *from_seq }
                    }
                });
                pos += record.encoded_len();
            }
            encode_batch(seq, records.iter(), &mut out);
            assert_eq!(
                out.len(),
                pos + RECORD_HEADER_BYTES + COMMIT_BODY_BYTES,
                "layout matches the encoder"
            );
            layouts.push(BatchLayout {
                range: start..out.len(),
                commit_at: pos,
                first_seq: seq,
                records: decoded,
            });
            seq += records.len() as u64;
        }
        Self { first_seq, bytes: out.to_vec(), batches: layouts }
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    fn end_seq(&self) -> u64 {
        self.batches.last().map_or(self.first_seq, |batch| batch.first_seq + batch.records.len() as u64)
    }

    /// Records of the first `count` batches.
    fn records_of(&self, count: usize) -> Vec<DecodedRecord> {
        self.batches[..count].iter().flat_map(|batch| batch.records.clone()).collect()
    }

    /// How many whole batches lie within the first `len` bytes.
    fn batches_within(&self, len: usize) -> usize {
        self.batches.iter().take_while(|batch| batch.range.end <= len).count()
    }

    /// The clean decode of the first `kept` batches followed by `torn_bytes`
    /// of anything unfinished.
    fn kept(&self, kept: usize, torn_bytes: usize) -> Expect {
        let committed_len = match kept {
            0 => SEGMENT_HEADER_BYTES,
            _ => self.batches[kept - 1].range.end,
        };
        let end_seq = match kept {
            0 => self.first_seq,
            _ => self.batches[kept - 1].first_seq + self.batches[kept - 1].records.len() as u64,
        };
        Expect::Ok {
            scan: SegmentScan {
                first_seq: self.first_seq,
                end_seq,
                committed_len: committed_len as u64,
                torn_bytes: torn_bytes as u64,
            },
            records: self.records_of(kept),
        }
    }

    /// What the last segment must decode to when the file is cut to `cut`
    /// bytes: the whole batches before the cut, the rest torn.
    fn cut_in_last(&self, cut: usize) -> Expect {
        if cut < SEGMENT_HEADER_BYTES {
            return Expect::header_torn(self.first_seq, cut);
        }
        let kept = self.batches_within(cut);
        let committed = if kept == 0 { SEGMENT_HEADER_BYTES } else { self.batches[kept - 1].range.end };
        self.kept(kept, cut - committed)
    }

    /// A copy of the bytes with one bit flipped.
    fn flipped(&self, byte: usize, bit: u8) -> Vec<u8> {
        let mut bytes = self.bytes.clone();
        bytes[byte] ^= 1 << bit;
        bytes
    }
}

fn entry(payload: &[u8]) -> BatchRecord {
    BatchRecord::Entry(Bytes::copy_from_slice(payload))
}

fn truncate(from_seq: u64) -> BatchRecord {
    BatchRecord::Truncate(from_seq)
}

/// Three batches: one entry; an empty entry, a truncation and an entry; and
/// a final batch of two entries, the last one all zeros.
fn sample(first_seq: u64) -> Fixture {
    Fixture::new(
        first_seq,
        &[
            vec![entry(b"alpha")],
            vec![entry(b""), truncate(first_seq + 1), entry(&[7; 40])],
            vec![entry(b"omega"), entry(&[0; 3])],
        ],
    )
}

/// Two batches whose final one ends in a truncation record.
fn ends_in_truncation(first_seq: u64) -> Fixture {
    Fixture::new(first_seq, &[vec![entry(b"one"), entry(b"two")], vec![truncate(first_seq + 1)]])
}

/// Fixtures every table runs over.
fn fixtures() -> Vec<(&'static str, Fixture)> {
    vec![
        ("header only", Fixture::new(9, &[])),
        ("one entry", Fixture::new(0, &[vec![entry(b"x")]])),
        ("one empty entry", Fixture::new(3, &[vec![entry(b"")]])),
        ("sample", sample(0)),
        ("sample at 1e12", sample(1_000_000_000_000)),
        ("ends in truncation", ends_in_truncation(40)),
    ]
}

/// A segment header with a valid checksum over whatever it is given.
fn raw_header(magic: [u8; 8], version: u32, first_seq: u64) -> Vec<u8> {
    let mut header = Vec::with_capacity(SEGMENT_HEADER_BYTES);
    header.extend_from_slice(&magic);
    header.extend_from_slice(&version.to_le_bytes());
    header.extend_from_slice(&first_seq.to_le_bytes());
    let checksum = crc32fast::hash(&header);
    header.extend_from_slice(&checksum.to_le_bytes());
    header
}

/// A record header with a valid header checksum over whatever it is given.
fn raw_record_header(len: u32, kind: u8, reserved: [u8; 3], body_checksum: u32) -> Vec<u8> {
    let mut header = Vec::with_capacity(RECORD_HEADER_BYTES);
    header.extend_from_slice(&len.to_le_bytes());
    header.push(kind);
    header.extend_from_slice(&reserved);
    header.extend_from_slice(&body_checksum.to_le_bytes());
    let checksum = crc32fast::hash(&header);
    header.extend_from_slice(&checksum.to_le_bytes());
    header
}

/// A record (valid checksums) with any kind byte and body.
fn raw_record(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut record = raw_record_header(body.len() as u32, kind, [0; 3], crc32fast::hash(body));
    record.extend_from_slice(body);
    record
}

/// An intact commit record saying whatever it is given.
fn commit_record(commit: Commit) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode_record(RecordKind::Commit, &commit.encode(), &mut out);
    out.to_vec()
}

/// The commit record the encoder would write for the records in `batch`.
fn honest_commit(first_seq: u64, count: u32, batch: &[u8]) -> Commit {
    Commit { first_seq, count, batch_bytes: batch.len() as u32, batch_checksum: crc32fast::hash(batch) }
}

fn concat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------
// Expectations and the checker.

#[derive(Clone, Debug)]
enum Expect {
    /// Decoding succeeds with exactly this scan and these records.
    Ok { scan: SegmentScan, records: Vec<DecodedRecord> },
    /// Decoding reports damage.
    Damage(DamageExpect),
}

#[derive(Clone, Debug)]
struct DamageExpect {
    /// The reason, when the case pins it down.
    reason: Option<CorruptionReason>,
    offset: RangeInclusive<u64>,
    seq_from: RangeInclusive<u64>,
    /// `seq_to`, when the case pins it down.
    seq_to: Option<Option<u64>>,
    /// Most records that may be delivered before the damage is found.
    delivered_max: usize,
}

impl Expect {
    /// A last segment whose header never finished: nothing committed.
    fn header_torn(first_seq: u64, len: usize) -> Self {
        Expect::Ok {
            scan: SegmentScan { first_seq, end_seq: first_seq, committed_len: 0, torn_bytes: len as u64 },
            records: Vec::new(),
        }
    }

    /// Damage with an exact reason, offset and first affected sequence.
    fn damage(reason: CorruptionReason, offset: usize, seq_from: u64, delivered_max: usize) -> Self {
        Expect::Damage(DamageExpect {
            reason: Some(reason),
            offset: offset as u64..=offset as u64,
            seq_from: seq_from..=seq_from,
            seq_to: None,
            delivered_max,
        })
    }

    /// Damage of any reason within the given bounds.
    fn damage_within(
        offset: RangeInclusive<usize>,
        seq_from: RangeInclusive<u64>,
        delivered_max: usize,
    ) -> Self {
        Expect::Damage(DamageExpect {
            reason: None,
            offset: *offset.start() as u64..=*offset.end() as u64,
            seq_from,
            seq_to: None,
            delivered_max,
        })
    }
}

struct Case {
    name: String,
    bytes: Vec<u8>,
    first_seq: u64,
    is_last: bool,
    expect: Expect,
}

impl Case {
    fn new(name: impl Into<String>, bytes: Vec<u8>, first_seq: u64, is_last: bool, expect: Expect) -> Self {
        Self { name: name.into(), bytes, first_seq, is_last, expect }
    }
}

type Decoded = (Result<SegmentScan, SegmentDamage>, Vec<DecodedRecord>);

/// Decodes, turning a panic into an error message.
fn decode(bytes: &[u8], first_seq: u64, is_last: bool) -> Result<Decoded, String> {
    let mut delivered = Vec::new();
    let result = catch_unwind(AssertUnwindSafe(|| {
        decode_segment(bytes, first_seq, is_last, |record| delivered.push(record))
    }))
    .map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(ToString::to_string))
            .unwrap_or_default();
        format!("decoder panicked: {message}")
    })?;
    Ok((result, delivered))
}

/// What every decode must satisfy, whatever the bytes.
fn check_invariants(bytes: &[u8], first_seq: u64, decoded: &Decoded) -> Result<(), String> {
    let (result, delivered) = decoded;
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|record| match record {
            DecodedRecord::Entry { seq, .. } | DecodedRecord::Truncate { seq, .. } => *seq,
        })
        .collect();
    if seqs.first().is_some_and(|&seq| seq != first_seq) {
        return Err(format!("first delivered seq {:?} is not the segment's first {first_seq}", seqs[0]));
    }
    if seqs.windows(2).any(|pair| pair[1] != pair[0].wrapping_add(1) || pair[1] <= pair[0]) {
        return Err(format!("delivered seqs are not consecutive and increasing: {seqs:?}"));
    }
    // Every delivered byte lies in the committed prefix (or before the damage).
    let valid_end = match result {
        Ok(scan) => scan.committed_len,
        Err(damage) => damage.offset,
    };
    for record in delivered {
        if let DecodedRecord::Entry { payload, .. } = record
            && (payload.start > payload.end || payload.end as u64 > valid_end)
        {
            return Err(format!("payload {payload:?} lies outside the valid prefix of {valid_end} bytes"));
        }
        if let DecodedRecord::Truncate { seq, from_seq } = record
            && from_seq > seq
        {
            return Err(format!("truncation at {seq} reaches forward to {from_seq}"));
        }
    }
    match result {
        Ok(scan) => {
            if scan.committed_len + scan.torn_bytes != bytes.len() as u64 || scan.first_seq != first_seq {
                return Err(format!("scan {scan:?} does not account for {} bytes", bytes.len()));
            }
            let end_seq = seqs.last().map_or(first_seq, |&seq| seq.wrapping_add(1));
            if scan.end_seq != end_seq {
                return Err(format!("scan ends at seq {} but the last delivered is {seqs:?}", scan.end_seq));
            }
        }
        Err(damage) => {
            if damage.offset > bytes.len() as u64 || damage.seq_from < first_seq {
                return Err(format!("damage {damage:?} lies outside the segment"));
            }
            if seqs.last().is_some_and(|&seq| seq >= damage.seq_from) {
                return Err(format!("seq {:?} delivered although damage starts at {damage:?}", seqs.last()));
            }
        }
    }
    Ok(())
}

fn check(case: &Case) -> Result<(), String> {
    let fail = |message: String| {
        format!("{} ({} bytes, is_last {}): {message}", case.name, case.bytes.len(), case.is_last)
    };
    let decoded = decode(&case.bytes, case.first_seq, case.is_last).map_err(fail)?;
    check_invariants(&case.bytes, case.first_seq, &decoded).map_err(fail)?;
    let (result, delivered) = &decoded;
    match (&case.expect, result) {
        (Expect::Ok { scan, records }, Ok(got)) => {
            if got != scan || delivered != records {
                return Err(fail(format!(
                    "expected {scan:?} with {} records, got {got:?} with {} records",
                    records.len(),
                    delivered.len()
                )));
            }
            // Payload ranges must point at the payload bytes themselves.
            if let Some(bad) = records.iter().find(|record| match record {
                DecodedRecord::Entry { payload, .. } => case.bytes.get(payload.clone()).is_none(),
                DecodedRecord::Truncate { .. } => false,
            }) {
                return Err(fail(format!("record {bad:?} points outside the bytes")));
            }
        }
        (Expect::Damage(expect), Err(damage)) => {
            let reason_ok = expect.reason.is_none_or(|reason| reason == damage.reason);
            let seq_to_ok = expect.seq_to.is_none_or(|seq_to| seq_to == damage.seq_to);
            if !reason_ok
                || !seq_to_ok
                || !expect.offset.contains(&damage.offset)
                || !expect.seq_from.contains(&damage.seq_from)
                || delivered.len() > expect.delivered_max
            {
                return Err(fail(format!(
                    "expected {expect:?}, got {damage:?} after {} records",
                    delivered.len()
                )));
            }
        }
        (expect, got) => return Err(fail(format!("expected {expect:?}, got {got:?}"))),
    }
    Ok(())
}

/// Checks every case and reports all failures together.
fn run(cases: &[Case]) {
    assert!(!cases.is_empty(), "a table needs cases");
    let failures: Vec<String> = cases.iter().filter_map(|case| check(case).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed; the first ones:\n{}",
        failures.len(),
        cases.len(),
        failures.iter().take(12).cloned().collect::<Vec<_>>().join("\n")
    );
}

// ---------------------------------------------------------------------------
// The decision table.

#[test]
fn clean_segments_deliver_every_record() {
    let mut cases = Vec::new();
    for (name, fixture) in fixtures() {
        for is_last in [true, false] {
            let expect = fixture.kept(fixture.batches.len(), 0);
            cases.push(Case::new(name, fixture.bytes.clone(), fixture.first_seq, is_last, expect));
        }
    }
    let big = Fixture::new(7, &[vec![entry(&[0xa5; 100_000]), entry(b"after")], vec![entry(&[0; 5000])]]);
    cases.push(Case::new("big entries", big.bytes.clone(), 7, true, big.kept(2, 0)));
    run(&cases);
}

#[test]
fn every_cut_of_the_last_segment_is_a_torn_prefix() {
    let mut cases = Vec::new();
    for (name, fixture) in fixtures() {
        for cut in 0..=fixture.len() {
            let bytes = fixture.bytes[..cut].to_vec();
            let expect = fixture.cut_in_last(cut);
            cases.push(Case::new(format!("{name} cut at {cut}"), bytes, fixture.first_seq, true, expect));
        }
    }
    run(&cases);
}

#[test]
fn trailing_zeros_in_the_last_segment_are_torn() {
    let mut cases = Vec::new();
    for (name, fixture) in fixtures() {
        let first = fixture.first_seq;
        let all = fixture.batches.len();
        for zeros in [1, 15, 16, 17, 35, 36, 37, 512, 4096] {
            let bytes = concat(&[&fixture.bytes, &vec![0; zeros]]);
            cases.push(Case::new(
                format!("{name} + {zeros} zeros"),
                bytes,
                first,
                true,
                fixture.kept(all, zeros),
            ));
        }
        let Some(last) = fixture.batches.last() else { continue };
        // The final batch's bytes all read as zeros, at their full length:
        // the file's length reached the disk, its data did not.
        let mut bytes = fixture.bytes.clone();
        bytes[last.range.clone()].fill(0);
        let expect = fixture.kept(all - 1, last.range.len());
        cases.push(Case::new(format!("{name} final batch zeroed"), bytes, first, true, expect));
    }
    run(&cases);
}

/// The same crash, but the final batch's first bytes reached the disk and
/// the rest reads as zeros: a page or sector boundary can fall anywhere in
/// a record, so the zeros may start in the middle of one.
#[test]
fn a_partly_written_final_batch_padded_with_zeros_is_torn() {
    let mut cases = Vec::new();
    for (name, fixture) in fixtures() {
        let Some(last) = fixture.batches.last() else { continue };
        let all = fixture.batches.len();
        for cut in last.range.start + 1..last.range.end {
            for zeros in [1, 16, 64] {
                let bytes = concat(&[&fixture.bytes[..cut], &vec![0; zeros]]);
                let expect = fixture.kept(all - 1, cut - last.range.start + zeros);
                let case_name = format!("{name} cut at {cut} + {zeros} zeros");
                cases.push(Case::new(case_name, bytes, fixture.first_seq, true, expect));
            }
        }
    }
    // The same for a new segment's header: nothing was committed.
    let header = sample(3).bytes[..SEGMENT_HEADER_BYTES].to_vec();
    for cut in 1..SEGMENT_HEADER_BYTES {
        for zeros in [1, 24, 64] {
            let bytes = concat(&[&header[..cut], &vec![0; zeros]]);
            let expect = Expect::header_torn(3, cut + zeros);
            cases.push(Case::new(format!("header cut at {cut} + {zeros} zeros"), bytes, 3, true, expect));
        }
    }
    run(&cases);
}

#[test]
fn trailing_zeros_in_a_sealed_segment_are_damage() {
    let mut cases = Vec::new();
    for (name, fixture) in fixtures() {
        let records = fixture.records_of(fixture.batches.len()).len();
        for zeros in [1, 16, 100] {
            let bytes = concat(&[&fixture.bytes, &vec![0; zeros]]);
            let len = fixture.len();
            let end_seq = fixture.end_seq();
            let expect = Expect::damage_within(len..=len, end_seq..=end_seq, records);
            cases.push(Case::new(format!("{name} + {zeros} zeros"), bytes, fixture.first_seq, false, expect));
        }
    }
    run(&cases);
}

#[test]
fn every_cut_of_a_sealed_segment_inside_a_batch_is_damage() {
    let mut cases = Vec::new();
    for (name, fixture) in fixtures() {
        let first = fixture.first_seq;
        for cut in 0..=fixture.len() {
            let bytes = fixture.bytes[..cut].to_vec();
            let case_name = format!("{name} cut at {cut}");
            let kept = fixture.batches_within(cut);
            let expect = if cut < SEGMENT_HEADER_BYTES {
                Expect::damage(CorruptionReason::SegmentHeader, 0, first, 0)
            } else if let Some(batch) = fixture.batches.get(kept).filter(|batch| batch.range.start < cut) {
                // Inside batch `kept`: the damage is reported within it.
                Expect::Damage(DamageExpect {
                    reason: Some(CorruptionReason::UnsealedSegment),
                    offset: batch.range.start as u64..=cut as u64,
                    seq_from: batch.first_seq..=batch.first_seq,
                    seq_to: Some(None),
                    delivered_max: fixture.records_of(kept).len(),
                })
            } else {
                // Exactly at a batch boundary nothing shows the cut.
                fixture.kept(kept, 0)
            };
            cases.push(Case::new(case_name, bytes, first, false, expect));
        }
    }
    run(&cases);
}

/// A bit flip anywhere in a committed batch, the final one included, is
/// damage in the last segment as much as in a sealed one: the commit record
/// proves the batch was once complete, so it must never read as torn.
#[test]
fn bit_flips_in_committed_batches_are_damage() {
    let mut cases = Vec::new();
    for (name, fixture) in fixtures() {
        for (index, batch) in fixture.batches.iter().enumerate() {
            let delivered_max = fixture.records_of(index).len();
            for byte in batch.range.clone() {
                let part = if byte >= batch.commit_at { "commit record" } else { "records" };
                for bit in 0..8 {
                    for is_last in [true, false] {
                        let expect = Expect::damage_within(
                            batch.range.start..=byte,
                            fixture.first_seq..=batch.first_seq,
                            delivered_max,
                        );
                        cases.push(Case::new(
                            format!("{name}: batch {index} {part}, byte {byte} bit {bit}"),
                            fixture.flipped(byte, bit),
                            fixture.first_seq,
                            is_last,
                            expect,
                        ));
                    }
                }
            }
        }
    }
    run(&cases);
}

#[test]
fn segment_header_damage() {
    let fixture = sample(5);
    let seq = fixture.first_seq;
    let bad = |offset| Expect::damage(CorruptionReason::SegmentHeader, offset, seq, 0);
    let body = &fixture.bytes[SEGMENT_HEADER_BYTES..];
    let mut cases = Vec::new();
    for is_last in [true, false] {
        for byte in 0..SEGMENT_HEADER_BYTES {
            for bit in 0..8 {
                let name = format!("header byte {byte} bit {bit}");
                cases.push(Case::new(name, fixture.flipped(byte, bit), seq, is_last, bad(0)));
            }
        }
        let cases_for = |name: &str, header: Vec<u8>, expect: Expect| {
            Case::new(name, concat(&[&header, body]), seq, is_last, expect)
        };
        let mut magic = SEGMENT_MAGIC;
        magic[7] = b'!';
        cases.push(cases_for("bad magic, valid checksum", raw_header(magic, FORMAT_VERSION, seq), bad(0)));
        for version in [0, 2, u32::MAX] {
            let expect = Expect::damage(CorruptionReason::UnsupportedVersion(version), 0, seq, 0);
            cases.push(cases_for(
                &format!("version {version}"),
                raw_header(SEGMENT_MAGIC, version, seq),
                expect,
            ));
        }
        for header_seq in [seq - 1, seq + 1, 0, u64::MAX] {
            let expect = Expect::damage(CorruptionReason::SequenceGap, 0, seq, 0);
            let header = raw_header(SEGMENT_MAGIC, FORMAT_VERSION, header_seq);
            cases.push(cases_for(&format!("header names seq {header_seq}"), header, expect));
        }
        // A zeroed header in front of committed batches is damage, even in
        // the last segment: the commit records prove the header was written.
        cases.push(cases_for("zeroed header, intact batches", vec![0; SEGMENT_HEADER_BYTES], bad(0)));
        cases.push(cases_for("garbage header", vec![0xff; SEGMENT_HEADER_BYTES], bad(0)));
    }
    cases.push(Case::new("garbage, shorter than a header", vec![1, 2, 3], seq, false, bad(0)));
    // The last segment's header never finished: nothing was committed.
    for len in [0, 1, 8, 23, 24, 25, 100] {
        let zeros = vec![0; len];
        cases.push(Case::new(
            format!("{len} zeros, last"),
            zeros.clone(),
            seq,
            true,
            Expect::header_torn(seq, len),
        ));
        cases.push(Case::new(format!("{len} zeros, sealed"), zeros, seq, false, bad(0)));
    }
    for len in 1..SEGMENT_HEADER_BYTES {
        let prefix = fixture.bytes[..len].to_vec();
        cases.push(Case::new(
            format!("header cut at {len}, last"),
            prefix,
            seq,
            true,
            Expect::header_torn(seq, len),
        ));
    }
    run(&cases);
}

/// Records with intact checksums that this format never writes are damage,
/// even as the very last bytes of the last segment.
#[test]
fn invalid_records_are_damage() {
    let seq = 20;
    let head = Fixture::new(seq, &[vec![entry(b"kept")]]);
    let at = head.len();
    let next = seq + 1;
    let invalid = |offset| Expect::damage(CorruptionReason::InvalidRecord, offset, next, 1);
    let oversize = raw_record_header(ENTRY_BYTES_MAX as u32 + 1, RecordKind::Entry as u8, [0; 3], 0);
    let largest_header_only = raw_record_header(ENTRY_BYTES_MAX as u32, RecordKind::Entry as u8, [0; 3], 0);
    let tails: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("unknown kind 0", raw_record(0, b"body"), invalid(at)),
        ("unknown kind 9", raw_record(9, b""), invalid(at)),
        (
            "reserved byte set",
            {
                let mut record =
                    raw_record_header(4, RecordKind::Entry as u8, [0, 1, 0], crc32fast::hash(b"body"));
                record.extend_from_slice(b"body");
                record
            },
            invalid(at),
        ),
        ("commit body of 19 bytes", raw_record(RecordKind::Commit as u8, &[0; 19]), invalid(at)),
        ("commit body of 21 bytes", raw_record(RecordKind::Commit as u8, &[0; 21]), invalid(at)),
        ("truncation body of 7 bytes", raw_record(RecordKind::Truncate as u8, &[0; 7]), invalid(at)),
        ("entry longer than the limit", oversize, invalid(at)),
    ];
    let mut cases = Vec::new();
    for (name, tail, expect) in tails {
        for is_last in [true, false] {
            cases.push(Case::new(name, concat(&[&head.bytes, &tail]), seq, is_last, expect.clone()));
        }
    }
    // The largest valid entry cut after its header is an ordinary torn tail.
    let bytes = concat(&[&head.bytes, &largest_header_only]);
    cases.push(Case::new("largest entry, header only", bytes, seq, true, head.kept(1, RECORD_HEADER_BYTES)));
    run(&cases);
}

#[test]
fn truncation_records() {
    let mut cases = Vec::new();
    // A truncation may name its own sequence number or any earlier one.
    for from_seq in [0, 5, 9, 10] {
        let fixture = Fixture::new(
            5,
            &[
                vec![entry(b"a"), entry(b"b")],
                vec![entry(b"c"), entry(b"d")],
                vec![entry(b"e"), truncate(from_seq)],
            ],
        );
        let expect = fixture.kept(3, 0);
        cases.push(Case::new(format!("truncate from {from_seq}"), fixture.bytes, 5, false, expect));
    }
    // Reaching forward past itself is never written.
    for from_seq in [11, 12, u64::MAX] {
        let fixture = Fixture::new(
            5,
            &[
                vec![entry(b"a"), entry(b"b")],
                vec![entry(b"c"), entry(b"d")],
                vec![entry(b"e"), truncate(from_seq)],
            ],
        );
        let batch = &fixture.batches[2];
        let record_at = batch.range.start + RECORD_HEADER_BYTES + 1;
        for is_last in [true, false] {
            let expect = Expect::damage(CorruptionReason::InvalidRecord, record_at, batch.first_seq, 4);
            cases.push(Case::new(
                format!("truncate from {from_seq}"),
                fixture.bytes.clone(),
                5,
                is_last,
                expect,
            ));
        }
    }
    run(&cases);
}

#[test]
fn commit_records_that_do_not_match_their_batch() {
    let seq = 100;
    let head = Fixture::new(seq, &[vec![entry(b"kept")]]);
    let at = head.len();
    let next = seq + 1;
    let records =
        concat(&[&raw_record(RecordKind::Entry as u8, b"p"), &raw_record(RecordKind::Entry as u8, b"q")]);
    let honest = honest_commit(next, 2, &records);
    let mismatch = Expect::damage(CorruptionReason::BatchMismatch, at, next, 1);
    let gap = Expect::damage(CorruptionReason::SequenceGap, at, next, 1);
    let variants: Vec<(&str, Vec<u8>, Expect)> = vec![
        ("count too high", commit_record(Commit { count: 3, ..honest }), mismatch.clone()),
        ("count too low", commit_record(Commit { count: 1, ..honest }), mismatch.clone()),
        (
            "batch bytes wrong",
            commit_record(Commit { batch_bytes: honest.batch_bytes - 1, ..honest }),
            mismatch.clone(),
        ),
        (
            "batch checksum wrong",
            commit_record(Commit { batch_checksum: !honest.batch_checksum, ..honest }),
            mismatch.clone(),
        ),
        ("first seq ahead", commit_record(Commit { first_seq: next + 1, ..honest }), gap.clone()),
        ("first seq behind (overlap)", commit_record(Commit { first_seq: next - 1, ..honest }), gap.clone()),
        ("first seq zero", commit_record(Commit { first_seq: 0, ..honest }), gap),
    ];
    let mut cases = Vec::new();
    for (name, commit, expect) in variants {
        for is_last in [true, false] {
            let bytes = concat(&[&head.bytes, &records, &commit]);
            cases.push(Case::new(name, bytes, seq, is_last, expect.clone()));
        }
    }
    // A commit record with no records before it: an empty batch is never written.
    let empty = commit_record(Commit {
        first_seq: next,
        count: 0,
        batch_bytes: 0,
        batch_checksum: crc32fast::hash(b""),
    });
    for is_last in [true, false] {
        cases.push(Case::new("empty batch", concat(&[&head.bytes, &empty]), seq, is_last, mismatch.clone()));
    }
    // A later batch numbered as if an earlier one were missing.
    let skipping = Fixture::new(seq, &[vec![entry(b"a")]]);
    let mut out = BytesMut::from(&skipping.bytes[..]);
    encode_batch(seq + 5, [entry(b"b")].iter(), &mut out);
    for is_last in [true, false] {
        let expect = Expect::damage(CorruptionReason::SequenceGap, skipping.len(), seq + 1, 1);
        cases.push(Case::new("batch skips seqs", out.to_vec(), seq, is_last, expect));
    }
    run(&cases);
}

/// Damage with intact, committed data after it is never a torn tail.
#[test]
fn damage_before_committed_data() {
    let fixture = sample(0);
    let (first, middle, last) = (&fixture.batches[0], &fixture.batches[1], &fixture.batches[2]);
    let mut cases = Vec::new();
    for is_last in [true, false] {
        // A whole middle batch reads as zeros.
        let mut zeroed = fixture.bytes.clone();
        zeroed[middle.range.clone()].fill(0);
        let expect = Expect::Damage(DamageExpect {
            reason: Some(CorruptionReason::RecordHeader),
            offset: middle.range.start as u64..=middle.range.start as u64,
            seq_from: middle.first_seq..=middle.first_seq,
            seq_to: Some(Some(fixture.end_seq())),
            delivered_max: first.records.len(),
        });
        cases.push(Case::new("middle batch zeroed", zeroed, 0, is_last, expect));
        // A record header, intact, claiming a body that runs past the end of
        // the file. Its checksum vouches for its length, so what follows is
        // its (unfinished) body, even bytes that look like a committed batch:
        // a torn tail in the last segment, damage in a sealed one.
        let liar = raw_record_header(100_000, RecordKind::Entry as u8, [0; 3], 0);
        let bytes = concat(&[&fixture.bytes[..last.range.start], &liar, &fixture.bytes[last.range.clone()]]);
        let expect = if is_last {
            fixture.kept(2, bytes.len() - last.range.start)
        } else {
            Expect::damage(
                CorruptionReason::UnsealedSegment,
                last.range.start,
                last.first_seq,
                fixture.records_of(2).len(),
            )
        };
        cases.push(Case::new("record runs past the end over a commit", bytes, 0, is_last, expect));
    }
    run(&cases);
}

#[test]
fn oversize_segments_are_damage() {
    // Zeroed allocations are not touched until read, and the size check
    // comes before any read.
    let len = usize::try_from(SEGMENT_BYTES_MAX).expect("tests run on 64-bit targets") + 1;
    let mut cases = Vec::new();
    for is_last in [true, false] {
        let expect = Expect::damage(CorruptionReason::TooLarge, 0, 77, 0);
        cases.push(Case::new("one byte over the maximum", vec![0; len], 77, is_last, expect));
    }
    run(&cases);
}

/// A crash while the final batch is being written leaves any prefix of it,
/// whatever its entries hold. An entry whose payload happens to contain an
/// encoded commit record (a log of logs, a snapshot of a segment, or a
/// client that wants to make recovery fail) must still read as torn: the
/// intact header of the unfinished entry says those bytes are payload.
#[test]
fn a_torn_batch_whose_payload_holds_a_commit_record_is_still_torn() {
    let inner = Fixture::new(0, &[vec![entry(b"inner")]]);
    let payload = concat(&[&inner.bytes, b"and more payload after it"]);
    let fixture = Fixture::new(30, &[vec![entry(b"first")], vec![entry(&payload), entry(b"tail")]]);
    let last = &fixture.batches[1];
    let cases: Vec<Case> = (last.range.start + 1..last.range.end)
        .map(|cut| {
            let bytes = fixture.bytes[..cut].to_vec();
            Case::new(format!("cut at {cut}"), bytes, fixture.first_seq, true, fixture.cut_in_last(cut))
        })
        .collect();
    run(&cases);
}

/// Sequence numbers come from file names and headers on disk; numbers that
/// would run past `u64::MAX` are damage, never a panic or a repeated number.
#[test]
fn sequence_numbers_near_u64_max() {
    let mut cases = Vec::new();
    let max = u64::MAX;
    // The last representable batch: one entry numbered u64::MAX - 1.
    let fits = Fixture::new(max - 1, &[vec![entry(b"last")]]);
    cases.push(Case::new("one entry at u64::MAX - 1", fits.bytes.clone(), max - 1, true, fits.kept(1, 0)));
    for is_last in [true, false] {
        // One entry numbered u64::MAX: the sequence number after it does not
        // exist. This is the smallest input that overflows today.
        let mut out = BytesMut::new();
        encode_segment_header(max, &mut out);
        encode_batch(max, [entry(b"")].iter(), &mut out);
        let expect = Expect::damage_within(SEGMENT_HEADER_BYTES..=out.len(), max..=max, 0);
        cases.push(Case::new("one entry at u64::MAX", out.to_vec(), max, is_last, expect));
        // Two entries from u64::MAX: the second has no number.
        let mut out = BytesMut::from(&raw_header(SEGMENT_MAGIC, FORMAT_VERSION, max)[..]);
        encode_batch(max, [entry(b"a"), entry(b"b")].iter(), &mut out);
        let expect = Expect::damage_within(SEGMENT_HEADER_BYTES..=out.len(), max..=max, 0);
        cases.push(Case::new("two entries from u64::MAX", out.to_vec(), max, is_last, expect));
        // Batches of one entry each from u64::MAX - 1: the third would repeat
        // u64::MAX (the commit's end saturates).
        let mut out = BytesMut::new();
        encode_segment_header(max - 1, &mut out);
        for first_seq in [max - 1, max, max] {
            encode_batch(first_seq, [entry(b"x")].iter(), &mut out);
        }
        let expect = Expect::damage_within(SEGMENT_HEADER_BYTES..=out.len(), max - 1..=max, 2);
        cases.push(Case::new("a batch after u64::MAX", out.to_vec(), max - 1, is_last, expect));
    }
    run(&cases);
}

#[path = "format_props.rs"]
mod props;
