//! The node's top-level state machine: inputs in, outputs out.
//!
//! A binding owns one [`Kernel`] and runs this loop:
//!
//! 1. feed one [`Input`] with [`Kernel::handle_input`] (a command from a
//!    caller, a disk completion, or a timeout once `now` has reached
//!    [`Kernel::poll_timeout`]);
//! 2. drain [`Kernel::poll_output`] until it returns `None`, executing every
//!    [`Output::Disk`] in order and delivering every [`Output::Reply`] to the
//!    caller that sent the command with the same [`CommandId`] (several
//!    inputs may be fed before draining: appends fed together leave in one
//!    log batch);
//! 3. wait for the next input, at most until [`Kernel::poll_timeout`].
//!
//! Disk operations must be executed one at a time in the order they were
//! polled; the kernel relies on that order (a sync covers the writes polled
//! before it).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::disk::{DiskCompletion, DiskOp, IoError};
use crate::wal::{RecoveryReport, Wal, WalConfig, WalConfigError, WalEntry, WalError, WalEvent, WalStats};

/// Everything a kernel needs to start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// The write-ahead log's tuning.
    pub wal: WalConfig,
}

impl KernelConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), WalConfigError> {
        self.wal.validate()
    }
}

/// Chosen by the binding to match a [`Reply`] to the [`Command`] it answers.
/// Ids must be unique among commands not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u64);

/// A request from a user of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Answered with [`Reply::Opened`] once recovery has finished.
    Open,
    /// Append an entry; answered with [`Reply::Appended`] once it is durable.
    Append(Bytes),
    /// Answered with [`Reply::Flushed`] once everything appended before it is
    /// durable.
    Flush,
    /// Answered with [`Reply::Entries`]: every durable entry, oldest first.
    ReadAll,
    /// Discard entries at or above this sequence number; answered with
    /// [`Reply::Truncated`] once that is durable.
    TruncateFrom(u64),
    /// Remove segment files holding only entries below this sequence
    /// number; answered with [`Reply::Removed`].
    RemoveBefore(u64),
    /// Answered at once with [`Reply::Stats`].
    Stats,
}

/// The answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Recovery's report, or why the log could not be opened.
    Opened(Result<RecoveryReport, WalError>),
    /// The entry's sequence number; it is durable.
    Appended(Result<u64, WalError>),
    /// Everything appended before the flush is durable.
    Flushed(Result<(), WalError>),
    /// The log's entries.
    Entries(Result<Vec<WalEntry>, WalError>),
    /// The truncation record's sequence number; it is durable.
    Truncated(Result<u64, WalError>),
    /// How many segment files were removed.
    Removed(Result<usize, WalError>),
    /// The log's counters.
    Stats(WalStats),
}

/// Something that happened, for logs and metrics. Bindings report events;
/// they never act on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The log finished recovery.
    WalRecovered(RecoveryReport),
    /// The log could not be recovered.
    WalRecoveryFailed(WalError),
    /// A write or sync failed; the log accepts nothing until reopened.
    WalFailed(IoError),
    /// A batch has been waiting for its sync longer than the flush interval.
    WalSyncOverdue {
        /// How long so far.
        elapsed: Duration,
    },
}

/// One input to [`Kernel::handle_input`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A user's command.
    Command {
        /// Echoed in the reply.
        id: CommandId,
        /// What to do.
        command: Command,
    },
    /// A disk operation finished.
    Disk(DiskCompletion),
    /// The time from [`Kernel::poll_timeout`] has been reached.
    Timeout,
}

/// One output from [`Kernel::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Execute this, then feed back its completion.
    Disk(DiskOp),
    /// Deliver this to the caller of command `id`.
    Reply {
        /// The command answered.
        id: CommandId,
        /// The answer.
        reply: Reply,
    },
    /// Report this.
    Event(Event),
}

/// Why [`Kernel::poll_timeout`] asks to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerReason {
    /// To report a sync that takes longer than the flush interval.
    WalSyncOverdue,
}

#[derive(Debug)]
struct DurableWaiter {
    /// Reply once every sequence number below this is durable.
    until: u64,
    id: CommandId,
    reply: fn(Result<u64, WalError>) -> Reply,
    seq: u64,
}

/// A node's state machine. See the module documentation for the loop.
#[derive(Debug)]
pub struct Kernel {
    wal: Wal,
    recovered: Option<Result<RecoveryReport, WalError>>,
    queued: VecDeque<(CommandId, Command)>,
    open_waiters: Vec<CommandId>,
    durable_waiters: VecDeque<DurableWaiter>,
    outputs: VecDeque<Output>,
}

impl Kernel {
    /// Creates a kernel; it starts recovering its log at once (the first
    /// outputs are disk operations).
    ///
    /// # Errors
    ///
    /// An invalid config.
    pub fn new(config: KernelConfig) -> Result<Self, WalConfigError> {
        config.validate()?;
        let mut kernel = Self {
            wal: Wal::new(config.wal),
            recovered: None,
            queued: VecDeque::new(),
            open_waiters: Vec::new(),
            durable_waiters: VecDeque::new(),
            outputs: VecDeque::new(),
        };
        kernel.collect(None);
        Ok(kernel)
    }

    /// Consumes one input. Follow it by draining [`Kernel::poll_output`].
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Command { id, command } => {
                if self.wal.is_recovering() {
                    self.queued.push_back((id, command));
                } else {
                    self.execute(now, id, command);
                }
            }
            Input::Disk(completion) => {
                assert!(self.wal.owns(completion.io), "completion for an unknown operation: {completion:?}");
                self.wal.handle_completion(now, completion);
            }
            Input::Timeout => self.wal.handle_timeout(now),
        }
        self.collect(Some(now));
    }

    /// The next output, or `None` when there is nothing more to do until the
    /// next input. Disk operations are produced last and lazily, so inputs
    /// fed before polling share one log batch.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front().or_else(|| self.wal.poll_op().map(Output::Disk))
    }

    /// When to feed [`Input::Timeout`], and why; `None` if no timer is set.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        self.wal.poll_timeout().map(|at| (at, TimerReason::WalSyncOverdue))
    }

    fn reply(&mut self, id: CommandId, reply: Reply) {
        self.outputs.push_back(Output::Reply { id, reply });
    }

    fn execute(&mut self, now: Instant, id: CommandId, command: Command) {
        match command {
            Command::Open => match &self.recovered {
                Some(result) => self.reply(id, Reply::Opened(result.clone())),
                None => self.open_waiters.push(id),
            },
            Command::Append(payload) => {
                let result = self.wal.append(now, payload);
                self.wait_durable(id, result, Reply::Appended);
            }
            Command::TruncateFrom(from_seq) => {
                let result = self.wal.truncate_from(now, from_seq);
                self.wait_durable(id, result, Reply::Truncated);
            }
            Command::Flush => {
                let result = self.wal.check_open().map(|()| self.wal.next_seq().saturating_sub(1));
                let flushed = |result: Result<u64, WalError>| Reply::Flushed(result.map(|_| ()));
                match result {
                    Ok(_) if self.wal.durable_next() == self.wal.next_seq() => {
                        self.reply(id, Reply::Flushed(Ok(())))
                    }
                    result => self.wait_durable(id, result, flushed),
                }
            }
            Command::ReadAll => {
                if let Err(error) = self.wal.read_all(id.0) {
                    self.reply(id, Reply::Entries(Err(error)));
                }
            }
            Command::Stats => self.reply(id, Reply::Stats(self.wal.stats())),
            Command::RemoveBefore(seq) => {
                if let Err(error) = self.wal.remove_before(id.0, seq) {
                    self.reply(id, Reply::Removed(Err(error)));
                }
            }
        }
    }

    /// Holds the reply to a command until sequence number `seq` is durable.
    fn wait_durable(
        &mut self,
        id: CommandId,
        result: Result<u64, WalError>,
        reply: fn(Result<u64, WalError>) -> Reply,
    ) {
        match result {
            Ok(seq) => self.durable_waiters.push_back(DurableWaiter { until: seq + 1, id, reply, seq }),
            Err(error) => self.reply(id, reply(Err(error))),
        }
    }

    /// Turns the log's events into outputs. `now` is `None` only during
    /// construction, when no command can be queued.
    fn collect(&mut self, now: Option<Instant>) {
        while let Some(event) = self.wal.poll_event() {
            self.on_wal_event(now, event);
        }
    }

    fn on_wal_event(&mut self, now: Option<Instant>, event: WalEvent) {
        match event {
            WalEvent::Recovered(report) => {
                self.outputs.push_back(Output::Event(Event::WalRecovered(report.clone())));
                self.finish_recovery(now, Ok(report));
            }
            WalEvent::RecoveryFailed(error) => {
                let error = WalError::Recovery(error);
                self.outputs.push_back(Output::Event(Event::WalRecoveryFailed(error.clone())));
                self.finish_recovery(now, Err(error));
            }
            WalEvent::Durable { upto } => {
                while let Some(waiter) = self.durable_waiters.front().filter(|waiter| waiter.until <= upto) {
                    let (id, reply) = (waiter.id, (waiter.reply)(Ok(waiter.seq)));
                    self.durable_waiters.pop_front();
                    self.reply(id, reply);
                }
            }
            WalEvent::Failed(error) => {
                for waiter in std::mem::take(&mut self.durable_waiters) {
                    self.reply(waiter.id, (waiter.reply)(Err(WalError::Io(error.clone()))));
                }
                self.outputs.push_back(Output::Event(Event::WalFailed(error)));
            }
            WalEvent::SyncOverdue { elapsed } => {
                self.outputs.push_back(Output::Event(Event::WalSyncOverdue { elapsed }));
            }
            WalEvent::ReadDone { ticket, result } => self.reply(CommandId(ticket), Reply::Entries(result)),
            WalEvent::Removed { ticket, result } => self.reply(CommandId(ticket), Reply::Removed(result)),
        }
    }

    fn finish_recovery(&mut self, now: Option<Instant>, result: Result<RecoveryReport, WalError>) {
        for id in std::mem::take(&mut self.open_waiters) {
            self.reply(id, Reply::Opened(result.clone()));
        }
        self.recovered = Some(result);
        let queued = std::mem::take(&mut self.queued);
        if let Some(now) = now {
            for (id, command) in queued {
                self.execute(now, id, command);
            }
        }
    }
}
