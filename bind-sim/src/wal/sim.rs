//! The discrete-event loop of a randomized log run: clients, one node (a
//! kernel whose disk operations run on the [`SimDisk`] one at a time with
//! random latencies), crashes and restarts, all on virtual time.
//!
//! Like any binding it decides nothing about the log: it executes the
//! kernel's operations in order and delivers results. The only judgment is
//! the oracle's ([`Model`]), which checks every reply.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use octopii_core::disk::{DiskCompletion, DiskOp};
use octopii_core::wal::{RecoveryError, WalConfig, WalEntry, WalError};
use octopii_core::{CommandId, Event, Input, Kernel, KernelConfig, Output, Reply};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::model::{Issued, Model, Observed};
use super::{FaultProfile, Violation};
use super::{WalRun, WalRunConfig, WalSummary};
use crate::disk::{DiskFaults, INJECTED, SimDisk};
use crate::time::{EventQueue, VirtualClock};
use crate::trace::{Trace, describe_input, describe_op, describe_output, describe_result};

/// The log's flush interval in the simulation: short, so that slow syncs
/// are reported as overdue now and then.
const FLUSH_INTERVAL: Duration = Duration::from_millis(2);
/// Longest pause of a client between two commands, in microseconds.
const CLIENT_PAUSE_US_MAX: u64 = 800;
/// Longest delay between deciding to crash and crashing, in microseconds.
const CRASH_DELAY_US_MAX: u64 = 2_000;
/// Longest a crashed node stays down, in microseconds.
const DOWNTIME_US_MAX: u64 = 2_000;
/// Largest payload a client appends, in bytes (above the segment target, so
/// that some entries fill a segment alone).
const PAYLOAD_BYTES_MAX: usize = 5_000;
/// Events one command may cause on average before the run is declared stuck.
const EVENTS_PER_COMMAND_MAX: u64 = 200;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashMode {
    /// Power loss: the disk loses what was not synced.
    PowerLoss,
    /// The process dies; the page cache (visible bytes) survives.
    Process,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashReason {
    Random,
    AfterFailure,
    /// The second restart of an idempotence check.
    Check,
    /// The restart at the end of the run.
    Final,
}

#[derive(Debug)]
enum SimEvent {
    Client(usize),
    /// Execute `op` now and deliver its completion.
    DiskDue {
        incarnation: u64,
        op: DiskOp,
    },
    Timer {
        incarnation: u64,
    },
    Crash {
        incarnation: u64,
        mode: CrashMode,
        reason: CrashReason,
    },
    Restart {
        check: bool,
    },
    /// The append that shows the log makes progress once faults are healed.
    FinalAppend,
}

/// A double restart in progress, checking that recovery is idempotent.
#[derive(Debug)]
enum Check {
    Idle,
    /// Waiting for the first recovery's read.
    First,
    /// Waiting for the second recovery; it must find exactly this.
    Second {
        next_seq: u64,
        entries: Vec<WalEntry>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Clients issue commands.
    Running,
    /// Faults healed, a last restart and append.
    Finishing,
    Done,
}

/// The running node: a kernel and its disk queue.
#[derive(Debug)]
struct Node {
    kernel: Kernel,
    incarnation: u64,
    disk_queue: VecDeque<DiskOp>,
    disk_busy: bool,
    timer_at: Option<Instant>,
    /// Clients hold back while recovery is being checked.
    quiet: bool,
}

/// One run. See the module documentation.
pub(super) struct WalSim {
    config: WalRunConfig,
    profile: FaultProfile,
    kernel_config: KernelConfig,
    rng: ChaCha8Rng,
    clock: VirtualClock,
    queue: EventQueue<SimEvent>,
    disk: SimDisk,
    node: Option<Node>,
    model: Model,
    trace: Trace,
    summary: WalSummary,
    incarnation: u64,
    next_command: u64,
    next_payload: u64,
    commands_left: u64,
    crash_pending: bool,
    check: Check,
    phase: Phase,
    final_acknowledged: bool,
    last_recovered_next_seq: u64,
    violation: Option<Violation>,
}

impl WalSim {
    pub(super) fn new(config: &WalRunConfig, trace: Trace) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let profile = config.faults.profile();
        let batch_records_max = rng.random_range(1..=16);
        let wal = WalConfig {
            batch_records_max,
            flush_interval: FLUSH_INTERVAL,
            segment_bytes_target: config.segment_bytes_target,
        };
        let disk = SimDisk::new(profile.disk).expect("named fault profiles are valid");
        let summary = WalSummary { seed: config.seed, batch_records_max, ..WalSummary::default() };
        Self {
            config: config.clone(),
            profile,
            kernel_config: KernelConfig { wal },
            rng,
            clock: VirtualClock::new(),
            queue: EventQueue::new(),
            disk,
            node: None,
            model: Model::new(),
            trace,
            summary,
            incarnation: 0,
            next_command: 0,
            next_payload: 0,
            commands_left: config.commands,
            crash_pending: false,
            check: Check::Idle,
            phase: Phase::Running,
            final_acknowledged: false,
            last_recovered_next_seq: 0,
            violation: None,
        }
    }

    pub(super) fn run(mut self) -> WalRun {
        let events_max = self.config.commands.saturating_mul(EVENTS_PER_COMMAND_MAX).saturating_add(100_000);
        self.record(&format!("start {:?}", self.kernel_config));
        self.queue.push(Duration::ZERO, SimEvent::Restart { check: false });
        for client in 0..self.config.clients {
            let at = self.pause();
            self.queue.push(at, SimEvent::Client(client));
        }
        let mut events = 0u64;
        while self.violation.is_none() {
            let Some((at, event)) = self.queue.pop() else {
                if self.on_idle() {
                    continue;
                }
                break;
            };
            events += 1;
            if events > events_max {
                self.violate(format!("no end in sight after {events_max} events"));
                break;
            }
            self.clock.advance_to(at);
            self.handle(event);
        }
        self.summary.virtual_time = self.clock.elapsed();
        self.summary.disk = self.disk.counts();
        self.summary.trace_lines = self.trace.lines();
        WalRun { summary: self.summary, trace_hash: self.trace.hash(), violation: self.violation }
    }

    fn handle(&mut self, event: SimEvent) {
        match event {
            SimEvent::Client(client) => self.on_client(client),
            SimEvent::DiskDue { incarnation, op } => self.on_disk_due(incarnation, op),
            SimEvent::Timer { incarnation } => self.on_timer(incarnation),
            SimEvent::Crash { incarnation, mode, reason } => self.on_crash(incarnation, mode, reason),
            SimEvent::Restart { check } => self.on_restart(check),
            SimEvent::FinalAppend => {
                self.summary.appends += 1;
                let payload = self.payload();
                self.issue(Issued::Append(payload));
            }
        }
    }

    /// Nothing is scheduled. Returns whether the run goes on.
    fn on_idle(&mut self) -> bool {
        if self.model.outstanding() > 0 {
            let count = self.model.outstanding();
            self.violate(format!("{count} commands are still unanswered but nothing is in flight"));
            return false;
        }
        match self.phase {
            Phase::Running => {
                // Heal every fault, then one last restart (a power loss if
                // the run has them) checked twice, and one last append.
                self.phase = Phase::Finishing;
                self.disk.set_faults(DiskFaults::NONE).expect("no faults is a valid profile");
                let mode = if self.profile.crash_per_command > 0.0 {
                    CrashMode::PowerLoss
                } else {
                    CrashMode::Process
                };
                let incarnation = self.incarnation;
                self.record("finishing: faults healed");
                self.queue.push(
                    self.clock.elapsed(),
                    SimEvent::Crash { incarnation, mode, reason: CrashReason::Final },
                );
                true
            }
            Phase::Finishing => {
                if !self.final_acknowledged {
                    self.violate(String::from("the log made no progress after the faults were healed"));
                }
                self.phase = Phase::Done;
                false
            }
            Phase::Done => false,
        }
    }

    fn on_client(&mut self, client: usize) {
        if self.commands_left == 0 || self.phase != Phase::Running {
            return;
        }
        if self.node.as_ref().is_some_and(|node| !node.quiet) {
            self.commands_left -= 1;
            self.summary.commands += 1;
            let issued = self.random_command();
            self.issue(issued);
            if !self.crash_pending && self.chance(self.profile.crash_per_command) {
                let delay = Duration::from_micros(self.rng.random_range(0..=CRASH_DELAY_US_MAX));
                self.schedule_crash(delay, CrashReason::Random);
            }
        }
        let at = self.pause();
        self.queue.push(at, SimEvent::Client(client));
    }

    fn random_command(&mut self) -> Issued {
        let end = self.model.log_end();
        match self.rng.random_range(0..100u32) {
            0..76 => {
                self.summary.appends += 1;
                Issued::Append(self.payload())
            }
            76..84 => {
                self.summary.flushes += 1;
                Issued::Flush
            }
            84..90 => {
                self.summary.reads += 1;
                Issued::ReadAll { recovery: false }
            }
            90..95 => {
                self.summary.truncations += 1;
                // Mostly a short suffix; now and then beyond the end.
                let from_seq = if self.rng.random_bool(0.1) {
                    end + self.rng.random_range(1..=3)
                } else {
                    end.saturating_sub(self.rng.random_range(0..=6))
                };
                Issued::Truncate(from_seq)
            }
            _ => {
                self.summary.removals += 1;
                Issued::RemoveBefore(self.rng.random_range(0..=end))
            }
        }
    }

    /// A unique payload: its number in the first eight bytes, then a
    /// pattern derived from it. A few are empty (they are told apart by
    /// their sequence numbers).
    fn payload(&mut self) -> Bytes {
        let id = self.next_payload;
        self.next_payload += 1;
        let len = match self.rng.random_range(0..100u32) {
            0..8 => return Bytes::new(),
            8..58 => self.rng.random_range(8..=64),
            58..88 => self.rng.random_range(65..=700),
            _ => self.rng.random_range(701..=PAYLOAD_BYTES_MAX),
        };
        let mut payload = BytesMut::with_capacity(len);
        payload.put_u64_le(id);
        payload.extend((8..len).map(|index| (id as u8).wrapping_mul(31).wrapping_add(index as u8)));
        payload.freeze()
    }

    fn issue(&mut self, issued: Issued) {
        if self.node.is_none() {
            return;
        }
        let id = CommandId(self.next_command);
        self.next_command += 1;
        let command = issued.command();
        self.model.issue(id, issued);
        self.feed(Input::Command { id, command });
    }

    /// Passes one input to the kernel and handles every output.
    fn feed(&mut self, input: Input) {
        let Some(node) = self.node.as_mut() else { return };
        let line = format!("in  #{} {}", node.incarnation, describe_input(&input));
        node.kernel.handle_input(self.clock.now(), input);
        let mut outputs = Vec::new();
        while let Some(output) = node.kernel.poll_output() {
            outputs.push(output);
        }
        self.record(&line);
        for output in outputs {
            self.on_output(output);
            if self.violation.is_some() {
                return;
            }
        }
        self.start_disk();
        self.arm_timer();
    }

    fn on_output(&mut self, output: Output) {
        let incarnation = self.incarnation;
        self.record(&format!("out #{incarnation} {}", describe_output(&output)));
        match output {
            Output::Disk(op) => {
                if let Some(node) = self.node.as_mut() {
                    node.disk_queue.push_back(op);
                }
            }
            Output::Reply { id, reply } => self.on_reply(id, reply),
            Output::Event(event) => self.on_event(event),
            other => unreachable!("a standalone log has no network: {other:?}"),
        }
    }

    fn on_reply(&mut self, id: CommandId, reply: Reply) {
        let summary = &mut self.summary;
        match &reply {
            Reply::Appended(Ok(_)) => {
                summary.appends_acknowledged += 1;
                if self.phase == Phase::Finishing {
                    self.final_acknowledged = true;
                }
            }
            Reply::Appended(Err(_)) => summary.appends_failed += 1,
            Reply::Truncated(Ok(_)) => summary.truncations_acknowledged += 1,
            Reply::Truncated(Err(WalError::TruncateBeyondEnd { .. })) => summary.truncations_refused += 1,
            Reply::Removed(Ok(count)) => summary.segments_removed += *count as u64,
            Reply::Entries(Ok(_)) => summary.reads_checked += 1,
            _ => {}
        }
        match self.model.on_reply(id, reply) {
            Err(message) => self.violate(message),
            Ok(Observed::Nothing) => {}
            Ok(Observed::Opened(report)) => {
                self.summary.recoveries += 1;
                self.summary.torn_tails += u64::from(report.torn_tail.is_some());
                self.last_recovered_next_seq = report.next_seq;
                self.summary.next_seq_at_end = report.next_seq;
                if let Check::Second { next_seq, .. } = &self.check
                    && (report.next_seq != *next_seq || report.torn_tail.is_some())
                {
                    let message = format!(
                        "recovery is not idempotent: reopening without writes gave {report:?}, the previous \
                         recovery ended at {next_seq}"
                    );
                    self.violate(message);
                }
            }
            Ok(Observed::RecoveryRead(entries)) => self.on_recovery_read(entries),
            Ok(Observed::RecoveryFailed) => {
                if !self.crash_pending {
                    let delay = Duration::from_micros(self.rng.random_range(0..=1_000));
                    self.schedule_crash(delay, CrashReason::AfterFailure);
                }
            }
        }
    }

    fn on_recovery_read(&mut self, entries: Vec<WalEntry>) {
        self.summary.entries_at_end = entries.len() as u64;
        match std::mem::replace(&mut self.check, Check::Idle) {
            Check::Idle => {}
            Check::First => {
                self.check = Check::Second { next_seq: self.last_recovered_next_seq, entries };
                let incarnation = self.incarnation;
                self.queue.push(
                    self.clock.elapsed(),
                    SimEvent::Crash { incarnation, mode: CrashMode::Process, reason: CrashReason::Check },
                );
            }
            Check::Second { entries: first, .. } => {
                self.summary.idempotence_checks += 1;
                if first != entries {
                    let (before, after) = (first.len(), entries.len());
                    self.violate(format!(
                        "recovery is not idempotent: the first recovery read {before} entries, the second \
                         {after}, with no write in between"
                    ));
                    return;
                }
                if let Some(node) = self.node.as_mut() {
                    node.quiet = false;
                }
                if self.phase == Phase::Finishing {
                    self.queue.push(self.clock.elapsed(), SimEvent::FinalAppend);
                }
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::WalFailed(error) => {
                self.summary.wal_failures += 1;
                if !error.failure.message.contains(INJECTED) {
                    // The kernel asked for something the disk could not do
                    // (a file that exists already, one that is missing, a
                    // read past the end): the log failed by its own fault.
                    self.violate(format!("the log failed on an error the disk did not inject: {error}"));
                    return;
                }
                self.model.on_failed();
                // The log refuses everything until reopened: restart it.
                if !self.crash_pending {
                    let delay = Duration::from_micros(self.rng.random_range(0..=1_000));
                    self.schedule_crash(delay, CrashReason::AfterFailure);
                }
            }
            Event::WalRecoveryFailed(WalError::Recovery(RecoveryError::Corrupted(_))) => {
                self.summary.corruption_detected += 1
            }
            Event::WalRecoveryFailed(_) => {}
            Event::WalSyncOverdue { .. } => self.summary.syncs_overdue += 1,
            Event::WalRecovered(_) => {}
            Event::Replica(_)
            | Event::NodeFailed(_)
            | Event::CompactionFailed(_)
            | Event::Transport(_)
            | Event::FormationStepFailed(_) => {
                self.violate(format!("a standalone log reported a node event: {event:?}"))
            }
        }
    }

    fn schedule_crash(&mut self, delay: Duration, reason: CrashReason) {
        let mode = if self.chance(self.profile.process_crash_share) {
            CrashMode::Process
        } else {
            CrashMode::PowerLoss
        };
        self.crash_pending = true;
        let incarnation = self.incarnation;
        self.queue.push(self.clock.elapsed() + delay, SimEvent::Crash { incarnation, mode, reason });
    }

    fn on_crash(&mut self, incarnation: u64, mode: CrashMode, reason: CrashReason) {
        if matches!(reason, CrashReason::Random | CrashReason::AfterFailure) {
            self.crash_pending = false;
        }
        if self.node.as_ref().is_none_or(|node| node.incarnation != incarnation) {
            return;
        }
        self.node = None;
        self.model.on_crash();
        self.record(&format!("crash #{incarnation} {mode:?} ({reason:?})"));
        match mode {
            CrashMode::PowerLoss => {
                self.summary.crashes += 1;
                let before = self.disk.counts();
                self.disk.crash(&mut self.rng);
                let after = self.disk.counts();
                self.record(&format!(
                    "power loss: {} unsynced writes lost, {} torn",
                    after.unsynced_writes_lost - before.unsynced_writes_lost,
                    after.torn_writes - before.torn_writes
                ));
            }
            CrashMode::Process if reason == CrashReason::Check => {}
            CrashMode::Process => self.summary.process_crashes += 1,
        }
        if reason == CrashReason::AfterFailure {
            self.summary.restarts_after_failure += 1;
        }
        let check = match reason {
            CrashReason::Check | CrashReason::Final => true,
            CrashReason::Random | CrashReason::AfterFailure => {
                // A crash in the middle of a check ends that check.
                self.check = Check::Idle;
                self.chance(self.profile.idempotence_check)
            }
        };
        let downtime = if reason == CrashReason::Check {
            Duration::ZERO
        } else {
            Duration::from_micros(self.rng.random_range(1..=DOWNTIME_US_MAX))
        };
        self.queue.push(self.clock.elapsed() + downtime, SimEvent::Restart { check });
    }

    fn on_restart(&mut self, check: bool) {
        self.incarnation += 1;
        let kernel = match Kernel::new(self.kernel_config.clone()) {
            Ok(kernel) => kernel,
            Err(error) => {
                self.violate(format!("the kernel refused a validated config: {error}"));
                return;
            }
        };
        if check && matches!(self.check, Check::Idle) {
            self.check = Check::First;
        }
        let quiet = !matches!(self.check, Check::Idle);
        self.record(&format!("restart #{} quiet={quiet}", self.incarnation));
        self.node = Some(Node {
            kernel,
            incarnation: self.incarnation,
            disk_queue: VecDeque::new(),
            disk_busy: false,
            timer_at: None,
            quiet,
        });
        self.model.on_restart();
        // The kernel's first operations (the listing) were queued when it
        // was made: collect them like any other outputs.
        self.drain_new_kernel();
        self.issue(Issued::Open);
        self.issue(Issued::ReadAll { recovery: true });
    }

    fn drain_new_kernel(&mut self) {
        let Some(node) = self.node.as_mut() else { return };
        let mut outputs = Vec::new();
        while let Some(output) = node.kernel.poll_output() {
            outputs.push(output);
        }
        for output in outputs {
            self.on_output(output);
        }
        self.start_disk();
    }

    /// Starts the next disk operation if the disk is idle.
    fn start_disk(&mut self) {
        let Some(node) = self.node.as_mut() else { return };
        if node.disk_busy {
            return;
        }
        let Some(op) = node.disk_queue.pop_front() else { return };
        node.disk_busy = true;
        let incarnation = node.incarnation;
        let latency = self.latency(&op);
        self.queue.push(self.clock.elapsed() + latency, SimEvent::DiskDue { incarnation, op });
    }

    fn latency(&mut self, op: &DiskOp) -> Duration {
        let micros = match op {
            DiskOp::List { .. } | DiskOp::Read { .. } => self.rng.random_range(5..=200),
            DiskOp::Create { .. }
            | DiskOp::Remove { .. }
            | DiskOp::Truncate { .. }
            | DiskOp::SyncDirectory { .. } => self.rng.random_range(20..=500),
            DiskOp::Write { data, .. } => self.rng.random_range(10..=400) + data.len() as u64 / 256,
            DiskOp::Sync { .. } if self.rng.random_bool(0.05) => self.rng.random_range(2_000..=8_000),
            DiskOp::Sync { .. } => self.rng.random_range(100..=1_500),
        };
        Duration::from_micros(micros)
    }

    fn on_disk_due(&mut self, incarnation: u64, op: DiskOp) {
        if self.node.as_ref().is_none_or(|node| node.incarnation != incarnation) {
            return;
        }
        let result = self.disk.execute(&op, &mut self.rng);
        self.record(&format!("disk #{incarnation} {} -> {}", describe_op(&op), describe_result(&result)));
        if let Some(node) = self.node.as_mut() {
            node.disk_busy = false;
        }
        self.feed(Input::Disk(DiskCompletion { io: op.io(), result }));
    }

    fn arm_timer(&mut self) {
        let Some(node) = self.node.as_mut() else { return };
        let Some((at, _reason)) = node.kernel.poll_timeout() else { return };
        if node.timer_at != Some(at) {
            node.timer_at = Some(at);
            let incarnation = node.incarnation;
            let due = self.clock.offset_of(at).max(self.clock.elapsed());
            self.queue.push(due, SimEvent::Timer { incarnation });
        }
    }

    fn on_timer(&mut self, incarnation: u64) {
        let now = self.clock.now();
        let Some(node) = self.node.as_mut().filter(|node| node.incarnation == incarnation) else { return };
        if node.kernel.poll_timeout().is_some_and(|(at, _)| at <= now) {
            node.timer_at = None;
            self.feed(Input::Timeout);
        }
    }

    fn pause(&mut self) -> Duration {
        self.clock.elapsed() + Duration::from_micros(self.rng.random_range(0..=CLIENT_PAUSE_US_MAX))
    }

    fn chance(&mut self, probability: f64) -> bool {
        probability > 0.0 && self.rng.random_bool(probability.min(1.0))
    }

    fn record(&mut self, line: &str) {
        self.trace.record(self.clock.elapsed(), line);
    }

    fn violate(&mut self, message: String) {
        if self.violation.is_some() {
            return;
        }
        self.record(&format!("VIOLATION {message}"));
        self.violation = Some(Violation {
            seed: self.config.seed,
            at: self.clock.elapsed(),
            incarnation: self.incarnation,
            message,
            replay: self.config.replay_command(),
            trace_tail: self.trace.tail(),
        });
    }
}
