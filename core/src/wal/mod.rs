//! Walrus, the write-ahead log: group commit, two-phase batches, recovery,
//! rotation, prefix removal and suffix truncation, with no I/O of its own.
//!
//! The log hands out sequence numbers at append time and asks for
//! [`DiskOp`]s; the owner ([`crate::Kernel`]) executes nothing itself either
//! but passes the operations to a binding and feeds the completions back.
//! An append is durable once [`Wal::durable_next`] has passed its sequence
//! number, which happens only after the sync covering it is reported done.
//!
//! Group commit never waits on purpose: when no batch is in flight, an
//! append leaves at once as one write plus one sync; appends arriving while
//! a batch is in flight form the next batch, which leaves when that sync
//! completes. Only one batch is in flight at a time, so when a write or sync
//! fails nothing is ever written on top of it: the log stops accepting work
//! until it is reopened and recovered.

pub mod format;
mod recovery;

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::disk::{DiskCompletion, DiskOp, DiskOpKind, FileName, IoError, IoId};
use format::{BatchRecord, SegmentDamage};

pub use format::{CorruptionReason, ENTRY_BYTES_MAX};

/// Tuning of the log. `Default` gives the spec's defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Most records in one batch (the spec's `wal_batch_size`). Default 100.
    pub batch_records_max: usize,
    /// How long a batch may be in flight before the log reports the sync as
    /// overdue (the spec's `wal_flush_interval_ms`). Batches never wait for
    /// this interval: one leaves as soon as the disk is free. Default 100 ms.
    pub flush_interval: Duration,
    /// A segment is closed and a new one started once it reaches this size.
    /// Default 64 MiB.
    pub segment_bytes_target: u64,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            batch_records_max: 100,
            flush_interval: Duration::from_millis(100),
            segment_bytes_target: 64 * 1024 * 1024,
        }
    }
}

/// A [`WalConfig`] value outside its allowed range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalConfigError {
    /// `batch_records_max` must be in `1..=BATCH_RECORDS_MAX`.
    #[error("batch size {0} is outside 1..={max}", max = format::BATCH_RECORDS_MAX)]
    BatchRecords(usize),
    /// `segment_bytes_target` must be in `4096..=SEGMENT_BYTES_TARGET_MAX`.
    #[error("segment size target {0} is outside 4096..={max}", max = format::SEGMENT_BYTES_TARGET_MAX)]
    SegmentBytes(u64),
    /// `flush_interval` must be non-zero.
    #[error("flush interval must be greater than zero")]
    FlushInterval,
}

impl WalConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first field outside its range.
    pub fn validate(&self) -> Result<(), WalConfigError> {
        if !(1..=format::BATCH_RECORDS_MAX).contains(&self.batch_records_max) {
            return Err(WalConfigError::BatchRecords(self.batch_records_max));
        }
        if !(4096..=format::SEGMENT_BYTES_TARGET_MAX).contains(&self.segment_bytes_target) {
            return Err(WalConfigError::SegmentBytes(self.segment_bytes_target));
        }
        if self.flush_interval.is_zero() {
            return Err(WalConfigError::FlushInterval);
        }
        Ok(())
    }
}

/// Damage found in a committed part of the log. Never repaired by dropping
/// data: the caller decides (a later layer repairs it from peers).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "corrupt wal segment {segment} at byte {offset} ({reason}); sequence numbers from {seq_from}{} may be affected",
    match seq_to { Some(end) => format!(" up to {}", end.saturating_sub(1)), None => String::from(" onwards") }
)]
pub struct Corruption {
    /// The damaged segment file.
    pub segment: FileName,
    /// Byte offset of the damage within it.
    pub offset: u64,
    /// First sequence number that may be affected.
    pub seq_from: u64,
    /// Sequence number after the last one known to be affected, if known.
    pub seq_to: Option<u64>,
    /// What is wrong.
    pub reason: CorruptionReason,
}

impl Corruption {
    fn new(segment: &FileName, damage: SegmentDamage) -> Self {
        Self {
            segment: segment.clone(),
            offset: damage.offset,
            seq_from: damage.seq_from,
            seq_to: damage.seq_to,
            reason: damage.reason,
        }
    }
}

/// Why opening (recovering) the log failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// A disk operation failed.
    #[error("wal recovery: {0}")]
    Io(#[from] IoError),
    /// Committed data is damaged.
    #[error("wal recovery: {0}")]
    Corrupted(#[from] Corruption),
}

/// Why a log operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// The log could not be opened; nothing can be done until it is.
    #[error("{0}")]
    Recovery(#[from] RecoveryError),
    /// A write or sync failed: this operation's data may or may not be on
    /// disk. The log accepts nothing more until it is reopened.
    #[error("wal write failed, reopen to recover: {0}")]
    Io(IoError),
    /// A disk operation of this request (read or remove) failed; the log
    /// itself is still usable.
    #[error("wal {0}")]
    RequestIo(IoError),
    /// A read met damaged, committed data.
    #[error("{0}")]
    Corrupted(#[from] Corruption),
    /// The entry is larger than [`ENTRY_BYTES_MAX`].
    #[error("entry of {len} bytes exceeds the {max}-byte limit", max = ENTRY_BYTES_MAX)]
    EntryTooLarge {
        /// Its size in bytes.
        len: usize,
    },
    /// Every sequence number has been used (only reachable from a file named
    /// or written with a number near `u64::MAX`).
    #[error("the log has used every sequence number")]
    SequenceExhausted,
    /// The log holds a replicated node's state; only the node writes it.
    #[error("the log belongs to the replicated node")]
    OwnedByNode,
    /// The kernel runs a transport alone, without a log.
    #[error("this kernel has no log")]
    NoLog,
    /// A truncation point beyond the end of the log.
    #[error("cannot truncate from sequence {from_seq}: the log ends before {next_seq}")]
    TruncateBeyondEnd {
        /// The requested point.
        from_seq: u64,
        /// The next sequence number the log would assign.
        next_seq: u64,
    },
}

/// What recovery found, reported when the log opens.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// The next sequence number the log will assign.
    pub next_seq: u64,
    /// The unfinished batch dropped from the end of the log, if any: it was
    /// never acknowledged.
    pub torn_tail: Option<TornTail>,
}

/// An unfinished batch cut from the end of the newest segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// The segment it was cut from.
    pub segment: FileName,
    /// Where it was cut (the segment's new length; 0 means removed).
    pub offset: u64,
    /// How many bytes were dropped.
    pub bytes: u64,
}

/// Counters of the log's work since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    /// Batches written; each is one write and one sync.
    pub batches: u64,
    /// Records (entries and truncation markers) in those batches.
    pub records: u64,
    /// Bytes written, headers and commit records included.
    pub bytes_written: u64,
}

/// One entry returned by a read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalEntry {
    /// Its sequence number.
    pub seq: u64,
    /// Its payload.
    pub payload: Bytes,
}

/// Something the log reports to its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WalEvent {
    /// Recovery finished; appends are accepted.
    Recovered(RecoveryReport),
    /// Recovery failed; nothing is accepted.
    RecoveryFailed(RecoveryError),
    /// Every sequence number below `upto` is durable.
    Durable {
        /// Exclusive bound.
        upto: u64,
    },
    /// A write or sync failed; everything not yet durable has failed with it.
    Failed(IoError),
    /// A batch has been in flight longer than the flush interval.
    SyncOverdue {
        /// How long it has been in flight so far.
        elapsed: Duration,
    },
    /// A read requested with `ticket` finished.
    ReadDone {
        /// The caller's ticket.
        ticket: u64,
        /// Committed entries in sequence order, or why not.
        result: Result<Vec<WalEntry>, WalError>,
    },
    /// A prefix removal requested with `ticket` finished.
    Removed {
        /// The caller's ticket.
        ticket: u64,
        /// How many segment files were removed, or why not.
        result: Result<usize, WalError>,
    },
}

#[derive(Clone, Debug)]
struct Segment {
    name: FileName,
    first_seq: u64,
    /// Bytes known durable (end of the last synced commit record).
    durable_len: u64,
    /// Bytes written or in flight.
    written_len: u64,
}

#[derive(Debug)]
enum Phase {
    /// Waiting for the directory listing.
    Listing,
    /// Reading segment `index` of `files`.
    Reading {
        files: Vec<(FileName, u64, u64)>,
        index: usize,
    },
    /// Waiting for this many operations that make the recovered state
    /// durable: cutting a torn tail, syncing every kept segment and the
    /// directory.
    Repairing {
        remaining: usize,
    },
    Open,
    Failed(WalError),
}

#[derive(Debug)]
struct InFlight {
    end_seq: u64,
    segment_len: u64,
    started: Instant,
    overdue_reported: bool,
}

#[derive(Debug)]
enum Purpose {
    Recovery,
    Batch,
    BatchSync,
    /// Read number `index` of a `read_all` request.
    Read {
        ticket: u64,
        index: usize,
    },
    /// `total` is set on the last removal of a request.
    Remove {
        ticket: u64,
        total: Option<usize>,
    },
}

#[derive(Debug)]
struct Submitted {
    purpose: Purpose,
    op: DiskOpKind,
    file: String,
}

#[derive(Debug)]
struct ReadJob {
    /// Name and first sequence number of each segment read.
    segments: Vec<(FileName, u64)>,
    /// Index of the next read to complete.
    next: usize,
    result: Result<Vec<WalEntry>, WalError>,
}

/// The write-ahead log state machine. See the module documentation.
#[derive(Debug)]
pub struct Wal {
    config: WalConfig,
    phase: Phase,
    segments: Vec<Segment>,
    next_seq: u64,
    durable_next: u64,
    pending: VecDeque<BatchRecord>,
    pending_first_seq: u64,
    in_flight: Option<InFlight>,
    next_io: u64,
    purposes: BTreeMap<IoId, Submitted>,
    reads: BTreeMap<u64, ReadJob>,
    removal_errors: BTreeMap<u64, IoError>,
    report: RecoveryReport,
    stats: WalStats,
    /// The time of the latest input, for batches formed when polled.
    now: Option<Instant>,
    ops: VecDeque<DiskOp>,
    events: VecDeque<WalEvent>,
}

impl Wal {
    /// Starts recovery: the first operation asks for the directory listing.
    /// The config must have passed [`WalConfig::validate`].
    pub fn new(config: WalConfig) -> Self {
        assert_eq!(config.validate(), Ok(()), "the caller validates the config");
        let mut wal = Self {
            config,
            phase: Phase::Listing,
            segments: Vec::new(),
            next_seq: 0,
            durable_next: 0,
            pending: VecDeque::new(),
            pending_first_seq: 0,
            in_flight: None,
            next_io: 0,
            purposes: BTreeMap::new(),
            reads: BTreeMap::new(),
            removal_errors: BTreeMap::new(),
            report: RecoveryReport::default(),
            stats: WalStats::default(),
            now: None,
            ops: VecDeque::new(),
            events: VecDeque::new(),
        };
        wal.submit(Purpose::Recovery, |io| DiskOp::List { io });
        wal
    }

    /// Whether recovery is still running.
    pub fn is_recovering(&self) -> bool {
        matches!(self.phase, Phase::Listing | Phase::Reading { .. } | Phase::Repairing { .. })
    }

    /// Every sequence number below this is durable.
    pub fn durable_next(&self) -> u64 {
        self.durable_next
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> WalStats {
        self.stats
    }

    /// The sequence number the next append will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Queues `payload` and returns its sequence number. It is durable once
    /// [`Wal::durable_next`] passes that number.
    ///
    /// # Errors
    ///
    /// [`WalError::EntryTooLarge`] above [`ENTRY_BYTES_MAX`]; the recovery or
    /// I/O error that stopped the log if it is not open.
    pub fn append(&mut self, now: Instant, payload: Bytes) -> Result<u64, WalError> {
        if payload.len() > ENTRY_BYTES_MAX {
            return Err(WalError::EntryTooLarge { len: payload.len() });
        }
        self.push(now, BatchRecord::Entry(payload))
    }

    /// Discards every entry at or above `from_seq` (for a replaced log
    /// suffix). Returns the sequence number of the truncation record; it
    /// takes effect for readers once durable.
    ///
    /// # Errors
    ///
    /// [`WalError::TruncateBeyondEnd`] if `from_seq` is past the end; the
    /// error that stopped the log if it is not open.
    pub fn truncate_from(&mut self, now: Instant, from_seq: u64) -> Result<u64, WalError> {
        if from_seq > self.next_seq {
            return Err(WalError::TruncateBeyondEnd { from_seq, next_seq: self.next_seq });
        }
        self.push(now, BatchRecord::Truncate(from_seq))
    }

    fn push(&mut self, now: Instant, record: BatchRecord) -> Result<u64, WalError> {
        self.check_open()?;
        if self.next_seq == u64::MAX {
            return Err(WalError::SequenceExhausted);
        }
        let seq = self.next_seq;
        if self.pending.is_empty() {
            self.pending_first_seq = seq;
        }
        self.pending.push_back(record);
        self.next_seq += 1;
        self.now = Some(now);
        Ok(seq)
    }

    pub(crate) fn check_open(&self) -> Result<(), WalError> {
        match &self.phase {
            Phase::Open => Ok(()),
            Phase::Failed(error) => Err(error.clone()),
            _ => panic!("the owner queues requests until recovery finishes"),
        }
    }

    /// Reads every committed, non-truncated entry that is durable now.
    /// Completes with [`WalEvent::ReadDone`] carrying `ticket`.
    ///
    /// # Errors
    ///
    /// The error that stopped the log if it is not open.
    pub fn read_all(&mut self, ticket: u64) -> Result<(), WalError> {
        self.check_open()?;
        // All reads are submitted now, so they run before any removal or
        // truncation requested later.
        let readable: Vec<Segment> =
            self.segments.iter().filter(|segment| segment.durable_len > 0).cloned().collect();
        if readable.is_empty() {
            self.events.push_back(WalEvent::ReadDone { ticket, result: Ok(Vec::new()) });
            return Ok(());
        }
        let segments = readable.iter().map(|segment| (segment.name.clone(), segment.first_seq)).collect();
        self.reads.insert(ticket, ReadJob { segments, next: 0, result: Ok(Vec::new()) });
        for (index, segment) in readable.into_iter().enumerate() {
            let (file, len) = (segment.name, segment.durable_len);
            self.submit(Purpose::Read { ticket, index }, |io| DiskOp::Read { io, file, offset: 0, len });
        }
        Ok(())
    }

    /// Removes every segment file whose entries all lie below `seq` (after a
    /// snapshot covers them). The newest segment is never removed. Completes
    /// with [`WalEvent::Removed`] carrying `ticket`.
    ///
    /// # Errors
    ///
    /// The error that stopped the log if it is not open.
    pub fn remove_before(&mut self, ticket: u64, seq: u64) -> Result<(), WalError> {
        self.check_open()?;
        let removable = self.segments.windows(2).take_while(|pair| pair[1].first_seq <= seq).count();
        if removable == 0 {
            self.events.push_back(WalEvent::Removed { ticket, result: Ok(0) });
            return Ok(());
        }
        // Oldest first, so a crash part-way leaves a contiguous suffix.
        let removed: Vec<Segment> = self.segments.drain(..removable).collect();
        for (index, segment) in removed.into_iter().enumerate() {
            let total = (index + 1 == removable).then_some(removable);
            let purpose = Purpose::Remove { ticket, total };
            self.submit(purpose, |io| DiskOp::Remove { io, file: segment.name });
        }
        Ok(())
    }

    /// The next disk operation to execute, if any.
    ///
    /// A batch is formed here, when its write is asked for, rather than at
    /// append time: every append made before the owner polls (all the
    /// commands a binding took in one wake-up, say) leaves in one batch,
    /// and nothing ever waits for more.
    #[must_use]
    pub fn poll_op(&mut self) -> Option<DiskOp> {
        if let Some(now) = self.now {
            self.start_batch(now);
        }
        self.ops.pop_front()
    }

    /// The next event for the owner, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<WalEvent> {
        self.events.pop_front()
    }

    /// When [`Wal::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let in_flight = self.in_flight.as_ref()?;
        (!in_flight.overdue_reported).then(|| in_flight.started + self.config.flush_interval)
    }

    /// Reports a batch in flight for longer than the flush interval.
    pub fn handle_timeout(&mut self, now: Instant) {
        let interval = self.config.flush_interval;
        if let Some(in_flight) = &mut self.in_flight {
            let elapsed = now.saturating_duration_since(in_flight.started);
            if !in_flight.overdue_reported && elapsed >= interval {
                in_flight.overdue_reported = true;
                self.events.push_back(WalEvent::SyncOverdue { elapsed });
            }
        }
    }

    /// Whether `io` is one of this log's operations.
    pub fn owns(&self, io: IoId) -> bool {
        self.purposes.contains_key(&io)
    }

    /// Feeds back the completion of one of this log's operations.
    pub fn handle_completion(&mut self, now: Instant, completion: DiskCompletion) {
        let submitted = self.purposes.remove(&completion.io).expect("the owner routes only our completions");
        let result =
            completion.result.map_err(|failure| IoError { op: submitted.op, file: submitted.file, failure });
        match (submitted.purpose, result) {
            (Purpose::Recovery, result) => self.on_recovery_step(result),
            (Purpose::Batch, Ok(_)) => {}
            (Purpose::BatchSync, Ok(_)) => self.on_batch_durable(now),
            (Purpose::Batch | Purpose::BatchSync, Err(error)) => self.fail_io(error),
            (Purpose::Read { ticket, index }, result) => self.on_read(ticket, index, result),
            (Purpose::Remove { ticket, total }, result) => self.on_removed(ticket, total, result),
        }
    }

    fn submit(&mut self, purpose: Purpose, make: impl FnOnce(IoId) -> DiskOp) {
        let io = IoId(self.next_io);
        self.next_io += 1;
        let op = make(io);
        let file = op.file().map_or_else(|| String::from("the wal directory"), ToString::to_string);
        self.purposes.insert(io, Submitted { purpose, op: op.kind(), file });
        self.ops.push_back(op);
    }

    /// Sends the next batch if none is in flight.
    fn start_batch(&mut self, now: Instant) {
        if self.in_flight.is_some() || self.pending.is_empty() || !matches!(self.phase, Phase::Open) {
            return;
        }
        let mut count = 0;
        let mut bytes = 0;
        let commit_bytes = format::RECORD_HEADER_BYTES + format::COMMIT_BODY_BYTES;
        for record in &self.pending {
            let len = record.encoded_len();
            let fits = bytes + len + commit_bytes <= format::BATCH_BYTES_MAX;
            if count == self.config.batch_records_max || (count > 0 && !fits) {
                break;
            }
            count += 1;
            bytes += len;
        }
        let first_seq = self.pending_first_seq;
        let rotate =
            self.segments.last().is_none_or(|last| last.written_len >= self.config.segment_bytes_target);
        let mut data = BytesMut::with_capacity(bytes + commit_bytes + format::SEGMENT_HEADER_BYTES);
        if rotate {
            let name = FileName::new(&format::segment_name(first_seq)).expect("segment names are valid");
            self.segments.push(Segment { name: name.clone(), first_seq, durable_len: 0, written_len: 0 });
            self.submit(Purpose::Batch, |io| DiskOp::Create { io, file: name });
            format::encode_segment_header(first_seq, &mut data);
        }
        format::encode_batch(first_seq, self.pending.range(..count), &mut data);
        self.pending.drain(..count);
        self.pending_first_seq = first_seq + count as u64;

        let segment = self.segments.last_mut().expect("a segment exists after rotation");
        let offset = segment.written_len;
        segment.written_len += data.len() as u64;
        let (file, segment_len) = (segment.name.clone(), segment.written_len);
        self.stats.batches += 1;
        self.stats.records += count as u64;
        self.stats.bytes_written += data.len() as u64;
        let data = data.freeze();
        self.submit(Purpose::Batch, |io| DiskOp::Write { io, file: file.clone(), offset, data });
        self.submit(Purpose::BatchSync, |io| DiskOp::Sync { io, file });
        self.in_flight = Some(InFlight {
            end_seq: self.pending_first_seq,
            segment_len,
            started: now,
            overdue_reported: false,
        });
    }

    fn on_batch_durable(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        let in_flight = self.in_flight.take().expect("a sync completes only for a batch in flight");
        self.segments.last_mut().expect("a batch was written to a segment").durable_len =
            in_flight.segment_len;
        self.durable_next = in_flight.end_seq;
        self.events.push_back(WalEvent::Durable { upto: self.durable_next });
        self.now = Some(now);
    }

    fn fail_io(&mut self, error: IoError) {
        if !matches!(self.phase, Phase::Open) {
            return;
        }
        self.phase = Phase::Failed(WalError::Io(error.clone()));
        self.pending.clear();
        self.in_flight = None;
        self.events.push_back(WalEvent::Failed(error));
    }
}
