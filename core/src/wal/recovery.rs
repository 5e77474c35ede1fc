//! Recovery (listing, reading and verifying segments, cutting a torn tail,
//! syncing what is kept), reads of the whole log, and prefix removal.

use bytes::Bytes;

use super::format::{self, DecodedRecord};
use super::{
    Corruption, CorruptionReason, Phase, Purpose, RecoveryError, Segment, TornTail, Wal, WalEntry, WalError,
    WalEvent,
};
use crate::disk::{DiskDone, DiskOp, FileName, IoError, ListedFile};

/// Recovery, reads and removals.
impl Wal {
    pub(super) fn on_recovery_step(&mut self, result: Result<DiskDone, IoError>) {
        if matches!(self.phase, Phase::Failed(_)) {
            // Later repairs of a recovery that already failed.
            return;
        }
        let outcome = match (std::mem::replace(&mut self.phase, Phase::Listing), result) {
            (_, Err(error)) => Err(RecoveryError::Io(error)),
            (Phase::Listing, Ok(DiskDone::Listed(listing))) => self.on_listing(listing),
            (Phase::Reading { files, index }, Ok(DiskDone::Read(bytes))) => {
                self.on_segment_read(files, index, &bytes)
            }
            (Phase::Repairing { remaining: 1 }, Ok(DiskDone::Done)) => {
                self.open();
                Ok(())
            }
            (Phase::Repairing { remaining }, Ok(DiskDone::Done)) => {
                self.phase = Phase::Repairing { remaining: remaining - 1 };
                Ok(())
            }
            (phase, Ok(done)) => panic!("recovery got {done:?} while {phase:?}"),
        };
        if let Err(error) = outcome {
            self.phase = Phase::Failed(WalError::Recovery(error.clone()));
            self.events.push_back(WalEvent::RecoveryFailed(error));
        }
    }

    fn on_listing(&mut self, listing: Vec<ListedFile>) -> Result<(), RecoveryError> {
        let mut files: Vec<(FileName, u64, u64)> = listing
            .into_iter()
            .filter_map(|file| Some((format::parse_segment_name(file.name.as_str())?, file)))
            .map(|(seq, file)| (file.name, seq, file.len))
            .collect();
        files.sort_by_key(|&(_, seq, _)| seq);
        if let Some((name, seq, _)) = files.iter().find(|(_, _, len)| *len > format::SEGMENT_BYTES_MAX) {
            return Err(RecoveryError::Corrupted(Corruption {
                segment: name.clone(),
                offset: format::SEGMENT_BYTES_MAX,
                seq_from: *seq,
                seq_to: None,
                reason: CorruptionReason::TooLarge,
            }));
        }
        if files.is_empty() {
            self.open();
            return Ok(());
        }
        self.read_recovery_segment(files, 0);
        Ok(())
    }

    fn read_recovery_segment(&mut self, files: Vec<(FileName, u64, u64)>, index: usize) {
        let (file, _, len) = files[index].clone();
        self.submit(Purpose::Recovery, |io| DiskOp::Read { io, file, offset: 0, len });
        self.phase = Phase::Reading { files, index };
    }

    fn on_segment_read(
        &mut self,
        files: Vec<(FileName, u64, u64)>,
        index: usize,
        bytes: &[u8],
    ) -> Result<(), RecoveryError> {
        let (name, first_seq, _) = files[index].clone();
        if let Some(previous) = self.segments.last() {
            let expected = self.next_seq;
            if first_seq != expected {
                return Err(RecoveryError::Corrupted(Corruption {
                    segment: previous.name.clone(),
                    offset: previous.durable_len,
                    seq_from: expected.min(first_seq),
                    seq_to: Some(expected.max(first_seq)),
                    reason: CorruptionReason::SequenceGap,
                }));
            }
        }
        let is_last = index + 1 == files.len();
        let scan = format::decode_segment(bytes, first_seq, is_last, |_| {})
            .map_err(|damage| Corruption::new(&name, damage))?;
        self.next_seq = scan.end_seq;
        if scan.committed_len > 0 {
            let len = scan.committed_len;
            self.segments.push(Segment { name: name.clone(), first_seq, durable_len: len, written_len: len });
        }
        if !is_last {
            self.read_recovery_segment(files, index + 1);
            return Ok(());
        }
        let mut repairs = 0;
        if scan.torn_bytes > 0 || scan.committed_len == 0 {
            // The unfinished batch (or segment, when even its header never
            // finished, or it is empty) was never acknowledged: cut it off so
            // new batches start at a clean boundary.
            self.report.torn_tail =
                Some(TornTail { segment: name.clone(), offset: scan.committed_len, bytes: scan.torn_bytes });
            let len = scan.committed_len;
            if len == 0 {
                self.submit(Purpose::Recovery, |io| DiskOp::Remove { io, file: name });
            } else {
                self.submit(Purpose::Recovery, |io| DiskOp::Truncate { io, file: name, len });
            }
            repairs += 1;
        }
        // What was read may have lived only in the page cache of a process
        // that crashed before its sync: make it durable before anything is
        // built on it or reported as read.
        let kept: Vec<FileName> = self.segments.iter().map(|segment| segment.name.clone()).collect();
        for file in kept {
            self.submit(Purpose::Recovery, |io| DiskOp::Sync { io, file });
            repairs += 1;
        }
        self.submit(Purpose::Recovery, |io| DiskOp::SyncDirectory { io });
        self.phase = Phase::Repairing { remaining: repairs + 1 };
        Ok(())
    }

    fn open(&mut self) {
        self.phase = Phase::Open;
        self.durable_next = self.next_seq;
        self.pending_first_seq = self.next_seq;
        self.report.segments = self.segments.len();
        self.report.next_seq = self.next_seq;
        self.events.push_back(WalEvent::Recovered(self.report.clone()));
    }

    pub(super) fn on_read(&mut self, ticket: u64, index: usize, result: Result<DiskDone, IoError>) {
        let job = self.reads.get_mut(&ticket).expect("a read job exists while reading");
        assert_eq!(index, job.next, "disk operations complete in the order they were submitted");
        job.next += 1;
        let (name, first_seq) = &job.segments[index];
        if let Ok(entries) = &mut job.result {
            let decoded = match result {
                Ok(DiskDone::Read(bytes)) => decode_entries(name, *first_seq, &bytes, entries),
                Ok(done) => panic!("a read completed with {done:?}"),
                Err(error) => Err(WalError::RequestIo(error)),
            };
            if let Err(error) = decoded {
                job.result = Err(error);
            }
        }
        if job.next == job.segments.len() {
            let job = self.reads.remove(&ticket).expect("checked above");
            self.events.push_back(WalEvent::ReadDone { ticket, result: job.result });
        }
    }

    pub(super) fn on_removed(
        &mut self,
        ticket: u64,
        total: Option<usize>,
        result: Result<DiskDone, IoError>,
    ) {
        if let Err(error) = result {
            self.removal_errors.entry(ticket).or_insert(error);
        }
        let Some(total) = total else { return };
        let result = match self.removal_errors.remove(&ticket) {
            Some(error) => Err(WalError::RequestIo(error)),
            None => Ok(total),
        };
        self.events.push_back(WalEvent::Removed { ticket, result });
    }
}

/// Decodes the durable part of a segment and applies it to `entries`.
fn decode_entries(
    name: &FileName,
    first_seq: u64,
    bytes: &Bytes,
    entries: &mut Vec<WalEntry>,
) -> Result<(), WalError> {
    // Only the durable prefix is read, so it must end on a commit: decode it
    // as a sealed segment, where any unfinished tail is damage.
    let scan = format::decode_segment(bytes, first_seq, false, |record| match record {
        DecodedRecord::Entry { seq, payload } => {
            entries.push(WalEntry { seq, payload: bytes.slice(payload) })
        }
        DecodedRecord::Truncate { from_seq, .. } => {
            let keep = entries.partition_point(|entry| entry.seq < from_seq);
            entries.truncate(keep);
        }
    });
    scan.map(|_| ()).map_err(|damage| WalError::Corrupted(Corruption::new(name, damage)))
}
