//! The oracle's model of the log: which record every sequence number holds,
//! what each outstanding command must be answered, and what any read or
//! recovery may return.
//!
//! The model relies only on the log's documented contract:
//!
//! - records (entries and truncation markers) get consecutive sequence
//!   numbers in the order their commands run; commands sent while the log
//!   recovers run, in order, right after the `Opened` reply;
//! - a truncation beyond the end is refused (`TruncateBeyondEnd`), and after
//!   a failed write or sync (`WalError::Io`, `Event::WalFailed`) everything
//!   is refused until the log is reopened;
//! - what is durable is always a prefix of the records, and an `Ok` reply
//!   (an append, a truncation, a flush, a read, an opened log) promises that
//!   everything it covers is durable.
//!
//! So the model predicts each record's sequence number when its command
//! runs, and checks every reply against the prediction. A read must return
//! the log as it stands at some durable point `D` between what was already
//! promised and what was assigned (truncation markers applied), less a prefix
//! of entries below the highest removal point (segments removed whole,
//! oldest first). Recovery must come back with a `next_seq` no lower than
//! anything promised and no higher than anything assigned; the records above
//! it were never durable and are forgotten.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use bytes::Bytes;
use octopii_core::wal::{RecoveryError, RecoveryReport, WalEntry, WalError};
use octopii_core::{Command, CommandId, Reply};

use crate::disk::INJECTED;

/// A command as the model remembers it.
#[derive(Clone, Debug)]
pub(crate) enum Issued {
    Open,
    Append(Bytes),
    Truncate(u64),
    Flush,
    /// `recovery` marks the read sent right behind `Open`, which must see
    /// exactly the recovered log.
    ReadAll {
        recovery: bool,
    },
    RemoveBefore(u64),
}

impl Issued {
    /// The command to send to the kernel.
    pub(crate) fn command(&self) -> Command {
        match self {
            Issued::Open => Command::Open,
            Issued::Append(payload) => Command::Append(payload.clone()),
            Issued::Truncate(from_seq) => Command::TruncateFrom(*from_seq),
            Issued::Flush => Command::Flush,
            Issued::ReadAll { .. } => Command::ReadAll,
            Issued::RemoveBefore(seq) => Command::RemoveBefore(*seq),
        }
    }
}

/// Why the model expects a command to be refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Rejection {
    /// The log failed (write or sync) and awaits a reopen.
    Failed,
    /// Recovery failed.
    RecoveryFailed,
    /// The truncation point lies beyond the end.
    BeyondEnd { next_seq: u64 },
}

/// The answer the model expects, fixed when the command runs.
#[derive(Clone, Copy, Debug)]
enum Expect {
    Open,
    /// The record got this sequence number.
    Seq(u64),
    Rejected(Rejection),
    /// Everything below `upto` must be durable when it is answered `Ok`.
    Flush {
        upto: u64,
    },
    /// The read sees the log at a durable point in `lo..=hi`. `settled`
    /// when no removal was in flight as it ran: segments it does not see
    /// are then gone for good.
    Read {
        lo: u64,
        hi: u64,
        settled: bool,
    },
    Remove,
}

#[derive(Debug)]
struct Outstanding {
    issued: Issued,
    /// `None` while the command waits for recovery to finish.
    expect: Option<Expect>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogState {
    /// No node is running.
    Down,
    Recovering,
    Open,
    Failed,
    RecoveryFailed,
}

#[derive(Clone, Debug)]
enum Record {
    Entry(Bytes),
    Truncate { from_seq: u64 },
}

/// What a reply told the simulation, beyond passing the checks.
#[derive(Debug)]
pub(crate) enum Observed {
    Nothing,
    /// The log opened with this report.
    Opened(RecoveryReport),
    /// The read right behind `Open` returned these entries.
    RecoveryRead(Vec<WalEntry>),
    /// Recovery failed on an injected disk error: restart and try again.
    RecoveryFailed,
}

/// The model. See the module documentation.
#[derive(Debug)]
pub(crate) struct Model {
    /// Every record that may be in the log, by sequence number; contiguous.
    records: BTreeMap<u64, Record>,
    /// The sequence number the next record gets (while open).
    next_seq: u64,
    state: LogState,
    /// Every sequence number below this was promised durable (by an
    /// acknowledgement, a read or a recovery).
    promised_next: u64,
    /// Every sequence number below this was acknowledged durable by an
    /// append, truncation or flush reply.
    acknowledged_next: u64,
    /// Entries below the highest removal point requested may be gone.
    removal_point: u64,
    /// The last sequence number acknowledged, to check they only grow.
    last_acknowledged: Option<u64>,
    /// Removals run but not yet answered: their segments may still be on
    /// disk, and come back after a crash.
    removals_in_flight: usize,
    outstanding: BTreeMap<CommandId, Outstanding>,
    /// Commands sent during recovery, in order.
    deferred: Vec<CommandId>,
}

/// The identity a simulated payload carries in its first eight bytes.
pub(crate) fn payload_id(payload: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(payload.get(..8)?.try_into().ok()?))
}

fn describe_entry(seq: u64, payload: &[u8]) -> String {
    match payload_id(payload) {
        Some(id) => format!("seq {seq} (payload #{id}, {} bytes)", payload.len()),
        None => format!("seq {seq} ({} bytes)", payload.len()),
    }
}

impl Model {
    pub(crate) fn new() -> Self {
        Self {
            records: BTreeMap::new(),
            next_seq: 0,
            state: LogState::Down,
            promised_next: 0,
            acknowledged_next: 0,
            removal_point: 0,
            last_acknowledged: None,
            removals_in_flight: 0,
            outstanding: BTreeMap::new(),
            deferred: Vec::new(),
        }
    }

    /// The end of the log as far as the model knows, to aim truncations and
    /// removals near it.
    pub(crate) fn log_end(&self) -> u64 {
        self.next_seq
    }

    /// How many commands await a reply.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// The node died: its outstanding replies are lost.
    pub(crate) fn on_crash(&mut self) {
        self.outstanding.clear();
        self.deferred.clear();
        self.removals_in_flight = 0;
        self.state = LogState::Down;
    }

    /// A new node starts recovering.
    pub(crate) fn on_restart(&mut self) {
        assert!(self.outstanding.is_empty(), "a crash drops every outstanding command");
        self.state = LogState::Recovering;
    }

    /// The kernel reported that the log failed.
    pub(crate) fn on_failed(&mut self) {
        if self.state == LogState::Open {
            self.state = LogState::Failed;
        }
    }

    /// A command is about to be passed to the kernel.
    pub(crate) fn issue(&mut self, id: CommandId, issued: Issued) {
        let waits = self.state == LogState::Recovering && !matches!(issued, Issued::Open);
        let expect = matches!(issued, Issued::Open).then_some(Expect::Open);
        self.outstanding.insert(id, Outstanding { issued, expect });
        if waits {
            self.deferred.push(id);
        } else if expect.is_none() {
            self.run(id);
        }
    }

    /// Fixes what command `id` must be answered, as the kernel runs it now.
    fn run(&mut self, id: CommandId) {
        let state = self.state;
        let outstanding = self.outstanding.get_mut(&id).expect("only outstanding commands run");
        let refused = match state {
            LogState::Failed => Some(Rejection::Failed),
            LogState::RecoveryFailed => Some(Rejection::RecoveryFailed),
            LogState::Open => None,
            LogState::Down | LogState::Recovering => panic!("commands run only once recovery is over"),
        };
        let expect = match (&outstanding.issued, refused) {
            (Issued::Open, _) => Expect::Open,
            (_, Some(rejection)) => Expect::Rejected(rejection),
            (Issued::Append(payload), None) => {
                self.records.insert(self.next_seq, Record::Entry(payload.clone()));
                self.next_seq += 1;
                Expect::Seq(self.next_seq - 1)
            }
            (Issued::Truncate(from_seq), None) if *from_seq > self.next_seq => {
                Expect::Rejected(Rejection::BeyondEnd { next_seq: self.next_seq })
            }
            (Issued::Truncate(from_seq), None) => {
                self.records.insert(self.next_seq, Record::Truncate { from_seq: *from_seq });
                self.next_seq += 1;
                Expect::Seq(self.next_seq - 1)
            }
            (Issued::Flush, None) => Expect::Flush { upto: self.next_seq },
            (Issued::ReadAll { .. }, None) => Expect::Read {
                lo: self.promised_next,
                hi: self.next_seq,
                settled: self.removals_in_flight == 0,
            },
            (Issued::RemoveBefore(seq), None) => {
                self.removal_point = self.removal_point.max(*seq);
                self.removals_in_flight += 1;
                Expect::Remove
            }
        };
        outstanding.expect = Some(expect);
    }

    fn promise(&mut self, upto: u64) {
        self.promised_next = self.promised_next.max(upto);
    }

    fn acknowledge(&mut self, upto: u64) {
        self.acknowledged_next = self.acknowledged_next.max(upto);
        self.promise(upto);
    }

    /// Checks a reply. `Err` is a violation, described.
    pub(crate) fn on_reply(&mut self, id: CommandId, reply: Reply) -> Result<Observed, String> {
        let Some(outstanding) = self.outstanding.remove(&id) else {
            return Err(format!("reply to command #{} which is not outstanding: {reply:?}", id.0));
        };
        let issued = outstanding.issued;
        let Some(expect) = outstanding.expect else {
            return Err(format!("{issued:?} (#{}) answered before recovery finished: {reply:?}", id.0));
        };
        let unexpected =
            |reply: String| format!("{issued:?} (#{}) answered {reply}, expected {expect:?}", id.0);
        match reply {
            Reply::Opened(result) if matches!(issued, Issued::Open) => self.on_opened(result),
            Reply::Appended(result) if matches!(issued, Issued::Append(_)) => {
                let text = format!("Appended({result:?})");
                self.on_sequenced(result, expect).map_err(|()| unexpected(text))
            }
            Reply::Truncated(result) if matches!(issued, Issued::Truncate(_)) => {
                let text = format!("Truncated({result:?})");
                self.on_sequenced(result, expect).map_err(|()| unexpected(text))
            }
            Reply::Flushed(result) if matches!(issued, Issued::Flush) => {
                let fine = match (&result, expect) {
                    (Ok(()), Expect::Flush { upto }) if self.state != LogState::Failed => {
                        self.acknowledge(upto);
                        true
                    }
                    (Err(WalError::Io(_)), Expect::Flush { .. }) => {
                        self.on_failed();
                        true
                    }
                    (Err(error), Expect::Rejected(rejection)) => refusal_matches(error, rejection),
                    _ => false,
                };
                if fine { Ok(Observed::Nothing) } else { Err(unexpected(format!("{result:?}"))) }
            }
            Reply::Entries(result) if matches!(issued, Issued::ReadAll { .. }) => match (result, expect) {
                (Ok(entries), Expect::Read { lo, hi, settled }) => {
                    let durable = self.check_read(&entries, lo, hi).map_err(|problem| {
                        format!("{issued:?} (#{}) returned a log that cannot be: {problem}", id.0)
                    })?;
                    self.promise(durable);
                    if settled {
                        // Whatever the read did not see below its first
                        // entry is removed or truncated for good.
                        self.forget_below(entries.first().map_or(durable, |entry| entry.seq));
                    }
                    match issued {
                        Issued::ReadAll { recovery: true } => Ok(Observed::RecoveryRead(entries)),
                        _ => Ok(Observed::Nothing),
                    }
                }
                (Err(error), Expect::Rejected(rejection)) if refusal_matches(&error, rejection) => {
                    Ok(Observed::Nothing)
                }
                (result, _) => Err(unexpected(format!("{result:?}"))),
            },
            Reply::Removed(result) if matches!(issued, Issued::RemoveBefore(_)) => match (&result, expect) {
                (Ok(_), Expect::Remove) => {
                    self.removals_in_flight -= 1;
                    Ok(Observed::Nothing)
                }
                (Err(error), Expect::Rejected(rejection)) if refusal_matches(error, rejection) => {
                    Ok(Observed::Nothing)
                }
                _ => Err(unexpected(format!("{result:?}"))),
            },
            reply => Err(format!("{issued:?} (#{}) answered with the wrong kind of reply: {reply:?}", id.0)),
        }
    }

    /// An append's or a truncation's reply. `Err(())` when it is wrong.
    fn on_sequenced(&mut self, result: Result<u64, WalError>, expect: Expect) -> Result<Observed, ()> {
        match (result, expect) {
            (Ok(seq), Expect::Seq(predicted)) => {
                let increasing = self.last_acknowledged.is_none_or(|last| seq > last);
                if seq != predicted || !increasing || self.state == LogState::Failed {
                    return Err(());
                }
                self.last_acknowledged = Some(seq);
                self.acknowledge(seq + 1);
                Ok(Observed::Nothing)
            }
            // The batch holding the record failed: it may or may not be on
            // disk, and the log now refuses everything.
            (Err(WalError::Io(_)), Expect::Seq(_)) => {
                self.on_failed();
                Ok(Observed::Nothing)
            }
            (Err(error), Expect::Rejected(rejection)) if refusal_matches(&error, rejection) => {
                Ok(Observed::Nothing)
            }
            _ => Err(()),
        }
    }

    fn on_opened(&mut self, result: Result<RecoveryReport, WalError>) -> Result<Observed, String> {
        let deferred = std::mem::take(&mut self.deferred);
        let report = match result {
            Ok(report) => report,
            Err(error) => {
                self.state = LogState::RecoveryFailed;
                deferred.into_iter().for_each(|id| self.run(id));
                return match error {
                    WalError::Recovery(RecoveryError::Io(io)) if io.failure.message.contains(INJECTED) => {
                        Ok(Observed::RecoveryFailed)
                    }
                    error => Err(format!("recovery failed on a disk that was never damaged: {error}")),
                };
            }
        };
        let recovered = report.next_seq;
        if recovered < self.promised_next {
            let lost: Vec<String> = self
                .records
                .range(recovered..self.promised_next)
                .filter_map(|(seq, record)| match record {
                    Record::Entry(payload) => Some(describe_entry(*seq, payload)),
                    Record::Truncate { .. } => None,
                })
                .take(8)
                .collect();
            let how = if recovered < self.acknowledged_next {
                format!(
                    "acknowledged durable up to {} by append, truncate or flush replies",
                    self.acknowledged_next
                )
            } else {
                String::from("reported durable by a read or an earlier recovery (acknowledged ones survived)")
            };
            return Err(format!(
                "recovery ends the log at {recovered}, but sequence numbers {recovered}..{} were {how}; lost \
                 entries include: {}",
                self.promised_next,
                lost.join(", ")
            ));
        }
        if recovered > self.next_seq {
            return Err(format!(
                "recovery ends the log at {recovered}, but only {} records were ever assigned",
                self.next_seq
            ));
        }
        // Records at or above the recovered end never became durable.
        self.records.split_off(&recovered);
        self.next_seq = recovered;
        self.promised_next = recovered;
        self.state = LogState::Open;
        deferred.into_iter().for_each(|id| self.run(id));
        Ok(Observed::Opened(report))
    }

    /// Drops records below `seq`, which no read can return any more, so that
    /// checking a read costs what the live log holds, not its history.
    fn forget_below(&mut self, seq: u64) {
        self.records = self.records.split_off(&seq);
    }

    /// Finds a durable point `D` in `lo..=hi` at which the log, less a
    /// removed prefix, is exactly `entries`; returns the smallest such `D`.
    fn check_read(&self, entries: &[WalEntry], lo: u64, hi: u64) -> Result<u64, String> {
        let mut view: Vec<(u64, &Bytes)> = Vec::new();
        for (&seq, record) in self.records.range(..hi) {
            if seq >= lo && self.read_matches(&view, entries) {
                return Ok(seq);
            }
            match record {
                Record::Entry(payload) => view.push((seq, payload)),
                Record::Truncate { from_seq } => {
                    while view.last().is_some_and(|(kept, _)| kept >= from_seq) {
                        view.pop();
                    }
                }
            }
        }
        if self.read_matches(&view, entries) {
            return Ok(hi.max(lo));
        }
        Err(self.describe_mismatch(&view, entries, lo, hi))
    }

    /// Whether `entries` is `view` less a prefix that removal may explain.
    fn read_matches(&self, view: &[(u64, &Bytes)], entries: &[WalEntry]) -> bool {
        let Some(removed) = view.len().checked_sub(entries.len()) else { return false };
        if removed > 0 && view[removed - 1].0 >= self.removal_point {
            return false;
        }
        view[removed..]
            .iter()
            .rev()
            .zip(entries.iter().rev())
            .all(|((seq, payload), entry)| *seq == entry.seq && **payload == entry.payload)
    }

    fn describe_mismatch(&self, view: &[(u64, &Bytes)], entries: &[WalEntry], lo: u64, hi: u64) -> String {
        let span = |first: Option<u64>, last: Option<u64>, count: usize| match (first, last) {
            (Some(first), Some(last)) => format!("{count} entries, seqs {first}..={last}"),
            _ => String::from("no entries"),
        };
        let mut text = format!(
            "got {}; the log at durable point {hi} has {} (durable point allowed in {lo}..={hi}, removal \
             point {})",
            span(entries.first().map(|e| e.seq), entries.last().map(|e| e.seq), entries.len()),
            span(view.first().map(|v| v.0), view.last().map(|v| v.0), view.len()),
            self.removal_point,
        );
        let removed = view.len().saturating_sub(entries.len());
        let difference = view[removed..]
            .iter()
            .zip(entries)
            .position(|((seq, payload), entry)| *seq != entry.seq || **payload != entry.payload);
        if let Some(index) = difference {
            let (seq, payload) = view[removed + index];
            let entry = &entries[index];
            let _ = write!(
                text,
                "; first difference: got {}, expected {}",
                describe_entry(entry.seq, &entry.payload),
                describe_entry(seq, payload)
            );
        }
        text
    }
}

/// Whether `error` is the refusal the model predicted.
fn refusal_matches(error: &WalError, rejection: Rejection) -> bool {
    match (error, rejection) {
        (WalError::Io(_), Rejection::Failed) | (WalError::Recovery(_), Rejection::RecoveryFailed) => true,
        // A failed log may check the truncation point before its own state.
        (WalError::TruncateBeyondEnd { .. }, Rejection::Failed | Rejection::RecoveryFailed) => true,
        (WalError::TruncateBeyondEnd { next_seq, .. }, Rejection::BeyondEnd { next_seq: predicted }) => {
            *next_seq == predicted
        }
        _ => false,
    }
}
