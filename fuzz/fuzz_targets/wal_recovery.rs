//! Fuzzes WAL recovery through the `Kernel`: a data directory of a few files
//! with arbitrary names and contents (raw bytes, or encoder-written segments
//! that are cut, padded and edited), and disk operations that fail where the
//! input says.
//!
//! The harness executes every `DiskOp` the kernel emits on an in-memory
//! directory, as a binding would: a read returns exactly the requested bytes
//! or an error, so allocation stays bounded by the input. Recovery must never
//! panic. When it succeeds without an injected fault over a truthful
//! listing, the log must then work: a read returns increasing sequence
//! numbers, an append is durable at the reported next sequence number, and a
//! second kernel recovering the same directory finds nothing torn and the
//! same entries.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::io::ErrorKind;
use std::time::Instant;

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use octopii_core::disk::{DiskCompletion, DiskDone, DiskFailure, DiskOp, FileName, ListedFile};
use octopii_core::wal::format::{BatchRecord, encode_batch, encode_segment_header, segment_name};
use octopii_core::wal::{RecoveryReport, WalConfig, WalEntry, WalError};
use octopii_core::{Command, CommandId, Input, Kernel, KernelConfig, Output, Reply};

/// Bounds on what one input builds.
const FILES_MAX: usize = 5;
const BATCHES_MAX: usize = 6;
const RECORDS_MAX: usize = 6;
const PAYLOAD_BYTES_MAX: usize = 2048;
const EDITS_MAX: usize = 8;
/// Disk operations one pump may execute before the harness calls it a loop.
const OPS_MAX: usize = 10_000;

#[derive(Arbitrary, Debug)]
struct RecoveryInput {
    files: Vec<FileInput>,
    /// Per disk operation during recovery, in order: fail it with this kind.
    faults: Vec<Option<Fault>>,
    /// Appended once the log is open.
    payload: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct FileInput {
    name: NameInput,
    contents: ContentsInput,
    /// A length for the listing other than the file's own.
    listed_len: Option<u64>,
}

#[derive(Arbitrary, Debug)]
enum NameInput {
    /// The segment that follows the previous encoded file.
    Next,
    /// The segment name for this first sequence number.
    Segment(u64),
    /// Any name; names a binding would refuse are left out of the listing.
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum ContentsInput {
    Raw(Vec<u8>),
    Encoded {
        /// A header naming another first sequence number than the file name.
        header_seq: Option<u64>,
        batches: Vec<Vec<RecordInput>>,
        cut: Option<u16>,
        zeros: u8,
        edits: Vec<(u16, u8)>,
    },
}

#[derive(Arbitrary, Debug)]
enum RecordInput {
    Entry(Vec<u8>),
    Truncate(u8),
}

#[derive(Arbitrary, Clone, Copy, Debug)]
enum Fault {
    NotFound,
    PermissionDenied,
    UnexpectedEof,
    Interrupted,
    Other,
}

impl Fault {
    fn failure(self) -> DiskFailure {
        let kind = match self {
            Fault::NotFound => ErrorKind::NotFound,
            Fault::PermissionDenied => ErrorKind::PermissionDenied,
            Fault::UnexpectedEof => ErrorKind::UnexpectedEof,
            Fault::Interrupted => ErrorKind::Interrupted,
            Fault::Other => ErrorKind::Other,
        };
        DiskFailure { kind, message: String::from("injected") }
    }
}

/// Encodes a segment whose records start at `first_seq`; returns its bytes
/// and the sequence number after its last record.
fn encode(first_seq: u64, header_seq: Option<u64>, batches: &[Vec<RecordInput>]) -> (Vec<u8>, u64) {
    let mut out = BytesMut::new();
    encode_segment_header(header_seq.unwrap_or(first_seq), &mut out);
    let mut seq = first_seq;
    for records in batches.iter().take(BATCHES_MAX).filter(|records| !records.is_empty()) {
        let batch_first_seq = seq;
        let batch: Vec<BatchRecord> = records
            .iter()
            .take(RECORDS_MAX)
            .map(|record| {
                let own = seq;
                seq = seq.wrapping_add(1);
                match record {
                    RecordInput::Entry(payload) => {
                        let payload = &payload[..payload.len().min(PAYLOAD_BYTES_MAX)];
                        BatchRecord::Entry(Bytes::copy_from_slice(payload))
                    }
                    RecordInput::Truncate(back) => {
                        BatchRecord::Truncate(own.saturating_sub(u64::from(*back)))
                    }
                }
            })
            .collect();
        encode_batch(batch_first_seq, batch.iter(), &mut out);
    }
    (out.to_vec(), seq)
}

/// The data directory: file contents, and lengths the listing reports
/// instead of the real ones.
#[derive(Default)]
struct Directory {
    files: BTreeMap<String, Vec<u8>>,
    listed_lens: BTreeMap<String, u64>,
}

impl Directory {
    fn build(inputs: &[FileInput]) -> Self {
        let mut directory = Directory::default();
        let mut next_seq = 0u64;
        for input in inputs.iter().take(FILES_MAX) {
            let name = match &input.name {
                NameInput::Next => segment_name(next_seq),
                NameInput::Segment(seq) => segment_name(*seq),
                NameInput::Raw(name) => name.clone(),
            };
            let Some(name) = FileName::new(&name) else { continue };
            let first_seq = octopii_core::wal::format::parse_segment_name(name.as_str()).unwrap_or(next_seq);
            let bytes = match &input.contents {
                ContentsInput::Raw(bytes) => bytes.clone(),
                ContentsInput::Encoded { header_seq, batches, cut, zeros, edits } => {
                    let (mut bytes, end_seq) = encode(first_seq, *header_seq, batches);
                    next_seq = end_seq;
                    let cut = cut.map_or(bytes.len(), |cut| usize::from(cut) % (bytes.len() + 1));
                    bytes.truncate(cut);
                    bytes.resize(cut + usize::from(*zeros), 0);
                    for &(at, value) in edits.iter().take(EDITS_MAX) {
                        if !bytes.is_empty() {
                            let at = usize::from(at) % bytes.len();
                            bytes[at] = value;
                        }
                    }
                    bytes
                }
            };
            let name = name.as_str().to_owned();
            match input.listed_len {
                Some(len) => directory.listed_lens.insert(name.clone(), len),
                None => directory.listed_lens.remove(&name),
            };
            directory.files.insert(name, bytes);
        }
        directory
    }

    /// Whether every listed length is the file's own.
    fn listing_is_truthful(&self) -> bool {
        self.listed_lens
            .iter()
            .all(|(name, len)| self.files.get(name).map(|bytes| bytes.len() as u64) == Some(*len))
    }

    fn execute(&mut self, op: &DiskOp) -> Result<DiskDone, DiskFailure> {
        let missing = || DiskFailure { kind: ErrorKind::NotFound, message: String::from("no such file") };
        match op {
            DiskOp::List { .. } => {
                let listed = self
                    .files
                    .iter()
                    .map(|(name, bytes)| ListedFile {
                        name: FileName::new(name).expect("only valid names are stored"),
                        len: self.listed_lens.get(name).copied().unwrap_or(bytes.len() as u64),
                    })
                    .collect();
                Ok(DiskDone::Listed(listed))
            }
            DiskOp::Read { file, offset, len, .. } => {
                let bytes = self.files.get(file.as_str()).ok_or_else(missing)?;
                let range = usize::try_from(*offset)
                    .ok()
                    .zip(usize::try_from(*len).ok())
                    .and_then(|(offset, len)| Some(offset..offset.checked_add(len)?));
                let read = range.and_then(|range| bytes.get(range)).ok_or_else(|| DiskFailure {
                    kind: ErrorKind::UnexpectedEof,
                    message: String::from("short read"),
                })?;
                Ok(DiskDone::Read(Bytes::copy_from_slice(read)))
            }
            DiskOp::Create { file, .. } => {
                if self.files.contains_key(file.as_str()) {
                    return Err(DiskFailure {
                        kind: ErrorKind::AlreadyExists,
                        message: String::from("exists"),
                    });
                }
                self.files.insert(file.as_str().to_owned(), Vec::new());
                Ok(DiskDone::Done)
            }
            DiskOp::Write { file, offset, data, .. } => {
                let bytes = self.files.get_mut(file.as_str()).ok_or_else(missing)?;
                let offset = usize::try_from(*offset).expect("writes land within the files the kernel wrote");
                if bytes.len() < offset + data.len() {
                    bytes.resize(offset + data.len(), 0);
                }
                bytes[offset..offset + data.len()].copy_from_slice(data);
                Ok(DiskDone::Done)
            }
            DiskOp::Sync { file, .. } => {
                self.files.get(file.as_str()).map(|_| DiskDone::Done).ok_or_else(missing)
            }
            DiskOp::SyncDirectory { .. } => Ok(DiskDone::Done),
            DiskOp::Truncate { file, len, .. } => {
                let bytes = self.files.get_mut(file.as_str()).ok_or_else(missing)?;
                let len = usize::try_from(*len).expect("truncations shorten files");
                assert!(len <= bytes.len(), "recovery only ever shortens a file");
                bytes.truncate(len);
                self.listed_lens.remove(file.as_str());
                Ok(DiskDone::Done)
            }
            DiskOp::Remove { file, .. } => {
                self.files.remove(file.as_str());
                self.listed_lens.remove(file.as_str());
                Ok(DiskDone::Done)
            }
        }
    }
}

/// Runs a kernel against the directory, as a binding would.
struct Harness {
    directory: Directory,
    now: Instant,
    /// Faults for the next operations, in order; none once this runs out.
    faults: VecDeque<Option<Fault>>,
    faults_injected: usize,
    replies: Vec<(CommandId, Reply)>,
}

impl Harness {
    /// Feeds `command`, then executes disk operations until the kernel is idle.
    fn send(&mut self, kernel: &mut Kernel, id: u64, command: Command) -> Reply {
        kernel.handle_input(self.now, Input::Command { id: CommandId(id), command });
        self.pump(kernel);
        let index = self.replies.iter().position(|(reply_id, _)| *reply_id == CommandId(id));
        let (_, reply) = self.replies.remove(index.unwrap_or_else(|| panic!("command {id} got no reply")));
        reply
    }

    fn pump(&mut self, kernel: &mut Kernel) {
        let mut ops = VecDeque::new();
        for _ in 0..OPS_MAX {
            while let Some(output) = kernel.poll_output() {
                match output {
                    Output::Disk(op) => ops.push_back(op),
                    Output::Reply { id, reply } => self.replies.push((id, reply)),
                    Output::Event(_) => {}
                    other => panic!("a standalone log emitted {other:?}"),
                }
            }
            let Some(op) = ops.pop_front() else { return };
            let result = match self.faults.pop_front().flatten() {
                Some(fault) => {
                    self.faults_injected += 1;
                    Err(fault.failure())
                }
                None => self.directory.execute(&op),
            };
            kernel.handle_input(self.now, Input::Disk(DiskCompletion { io: op.io(), result }));
        }
        panic!("the kernel emitted more than {OPS_MAX} disk operations");
    }
}

fn config() -> KernelConfig {
    // The smallest segment target, so appends rotate segments.
    KernelConfig { wal: WalConfig { segment_bytes_target: 4096, ..WalConfig::default() } }
}

fn entries(reply: Reply) -> Vec<WalEntry> {
    match reply {
        Reply::Entries(Ok(entries)) => entries,
        other => panic!("a read of a recovered log failed: {other:?}"),
    }
}

fn check_entries(entries: &[WalEntry], next_seq: u64) {
    for pair in entries.windows(2) {
        assert!(pair[0].seq < pair[1].seq, "entries out of order: {} then {}", pair[0].seq, pair[1].seq);
    }
    if let Some(last) = entries.last() {
        assert!(last.seq < next_seq, "entry {} at or past the next seq {next_seq}", last.seq);
    }
}

fn run(input: RecoveryInput) {
    let directory = Directory::build(&input.files);
    let truthful = directory.listing_is_truthful();
    let mut harness = Harness {
        directory,
        now: Instant::now(),
        faults: input.faults.into_iter().take(64).collect(),
        faults_injected: 0,
        replies: Vec::new(),
    };
    let mut kernel = Kernel::new(config()).expect("the config is valid");
    let opened = harness.send(&mut kernel, 1, Command::Open);
    harness.faults.clear();
    let report: RecoveryReport = match opened {
        Reply::Opened(Ok(report)) => report,
        Reply::Opened(Err(_)) => {
            // A log that failed to open refuses work, at once.
            let reply = harness.send(&mut kernel, 2, Command::Append(Bytes::from_static(b"refused")));
            assert!(matches!(reply, Reply::Appended(Err(_))), "a failed log accepted an append: {reply:?}");
            return;
        }
        other => panic!("open answered with {other:?}"),
    };
    if harness.faults_injected > 0 || !truthful {
        return;
    }
    // Recovery succeeded on an honest directory: the log must now work.
    let before = entries(harness.send(&mut kernel, 2, Command::ReadAll));
    check_entries(&before, report.next_seq);
    let payload = Bytes::copy_from_slice(&input.payload[..input.payload.len().min(PAYLOAD_BYTES_MAX)]);
    let appended = harness.send(&mut kernel, 3, Command::Append(payload.clone()));
    if report.next_seq == u64::MAX {
        // A file named for the last sequence number leaves none to assign.
        assert_eq!(appended, Reply::Appended(Err(WalError::SequenceExhausted)));
        return;
    }
    assert_eq!(appended, Reply::Appended(Ok(report.next_seq)), "append after recovering {report:?}");
    let mut expected = before;
    expected.push(WalEntry { seq: report.next_seq, payload });
    assert_eq!(entries(harness.send(&mut kernel, 4, Command::ReadAll)), expected);

    // Recovering again finds exactly that log, with nothing torn.
    let mut again = Kernel::new(config()).expect("the config is valid");
    let reopened = harness.send(&mut again, 1, Command::Open);
    let Reply::Opened(Ok(second)) = reopened else { panic!("second recovery failed: {reopened:?}") };
    assert_eq!(second.next_seq, report.next_seq + 1, "second recovery: {second:?}");
    assert_eq!(second.torn_tail, None, "second recovery found a torn tail: {second:?}");
    assert_eq!(entries(harness.send(&mut again, 2, Command::ReadAll)), expected);
}

fuzz_target!(|input: RecoveryInput| run(input));
