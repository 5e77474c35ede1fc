//! Simulated runs of the write-ahead log: a randomized workload with crashes
//! and disk faults checked by an oracle ([`run_wal`]), and a scripted
//! bit-rot scenario ([`run_corruption`]).
//!
//! A run is a pure function of its [`WalRunConfig`]: the seed feeds one
//! `ChaCha8Rng` from which every choice is drawn (client timing, payloads,
//! disk latencies, faults, crash points), time is virtual, and the trace of
//! every input and output hashes to [`WalRun::trace_hash`]. A failing seed is
//! therefore a bug report: [`WalRunConfig::replay_command`] replays it.

mod corruption;
mod model;
mod sim;

use std::fmt;
use std::time::Duration;

pub use corruption::{CorruptionRun, run_corruption};

use crate::disk::{DiskFaultCounts, DiskFaults};
use crate::trace::Trace;

/// Most client commands one run may issue.
pub const COMMANDS_MAX: u64 = 10_000_000;
/// Most simulated clients.
pub const CLIENTS_MAX: usize = 64;

/// A named fault profile, as chosen on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum FaultLevel {
    /// No faults: the node restarts cleanly once, at the end.
    None,
    /// Power losses at random points: unsynced writes lost or torn.
    Crash,
    /// Power losses, process crashes (the page cache survives), failed
    /// writes and syncs.
    Full,
}

impl FaultLevel {
    /// The probabilities this level stands for.
    pub fn profile(self) -> FaultProfile {
        match self {
            FaultLevel::None => FaultProfile::NONE,
            FaultLevel::Crash => FaultProfile {
                disk: DiskFaults { torn_write: 0.5, ..DiskFaults::NONE },
                crash_per_command: 0.03,
                process_crash_share: 0.0,
                idempotence_check: 0.3,
            },
            FaultLevel::Full => FaultProfile {
                disk: DiskFaults { write_error: 0.01, sync_error: 0.01, torn_write: 0.5 },
                crash_per_command: 0.03,
                process_crash_share: 0.3,
                idempotence_check: 0.3,
            },
        }
    }

    /// The name the command line accepts.
    pub fn name(self) -> &'static str {
        match self {
            FaultLevel::None => "none",
            FaultLevel::Crash => "crash",
            FaultLevel::Full => "full",
        }
    }
}

impl fmt::Display for FaultLevel {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// Probabilities of the faults a run injects, each in `0.0..=1.0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FaultProfile {
    /// The disk's own faults.
    pub disk: DiskFaults,
    /// After each client command, the chance that the node crashes a little
    /// later (if no crash is pending already).
    pub crash_per_command: f64,
    /// The share of crashes (random ones and restarts after a failed write
    /// or sync) that kill only the process, so the page cache survives; the
    /// rest are power losses.
    pub process_crash_share: f64,
    /// The chance that a restart is followed, with no write in between, by
    /// a second one, to check that recovery is idempotent.
    pub idempotence_check: f64,
}

impl FaultProfile {
    /// No faults at all.
    pub const NONE: Self = Self {
        disk: DiskFaults::NONE,
        crash_per_command: 0.0,
        process_crash_share: 0.0,
        idempotence_check: 0.3,
    };
}

/// One run's parameters; together they determine the run completely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRunConfig {
    /// Seed of the run's random generator. Default 0.
    pub seed: u64,
    /// Client commands to issue (appends, flushes, reads, truncations,
    /// removals). Default 400.
    pub commands: u64,
    /// Simulated clients issuing commands concurrently. Default 4.
    pub clients: usize,
    /// Which faults to inject. Default [`FaultLevel::Full`].
    pub faults: FaultLevel,
    /// The log's segment size target; small, so that segments rotate and
    /// get removed often. Default 4096 (the smallest the log accepts).
    pub segment_bytes_target: u64,
}

impl Default for WalRunConfig {
    fn default() -> Self {
        Self { seed: 0, commands: 400, clients: 4, faults: FaultLevel::Full, segment_bytes_target: 4096 }
    }
}

/// A [`WalRunConfig`] value outside its range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SimConfigError {
    /// `clients` must be in `1..=CLIENTS_MAX`.
    #[error("client count {0} is outside 1..={CLIENTS_MAX}")]
    Clients(usize),
    /// `commands` must be at most `COMMANDS_MAX`.
    #[error("command count {0} exceeds {COMMANDS_MAX}")]
    Commands(u64),
    /// The log refused the derived configuration.
    #[error("invalid wal config: {0}")]
    Wal(#[from] octopii_core::wal::WalConfigError),
}

impl WalRunConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first field out of range.
    pub fn validate(&self) -> Result<(), SimConfigError> {
        if !(1..=CLIENTS_MAX).contains(&self.clients) {
            return Err(SimConfigError::Clients(self.clients));
        }
        if self.commands > COMMANDS_MAX {
            return Err(SimConfigError::Commands(self.commands));
        }
        let wal = octopii_core::wal::WalConfig {
            segment_bytes_target: self.segment_bytes_target,
            ..octopii_core::wal::WalConfig::default()
        };
        wal.validate()?;
        Ok(())
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        format!(
            "cargo run -p octopii-sim -- wal --seed {} --ops {} --faults {} --clients {} --segment-bytes {}",
            self.seed, self.commands, self.faults, self.clients, self.segment_bytes_target
        )
    }
}

/// What happened in a run, for people and for comparing two runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalSummary {
    /// The run's seed.
    pub seed: u64,
    /// Records per batch the log was configured with (drawn from the seed).
    pub batch_records_max: usize,
    /// Client commands issued.
    pub commands: u64,
    /// Appends issued.
    pub appends: u64,
    /// Appends acknowledged (`Ok`).
    pub appends_acknowledged: u64,
    /// Appends answered with an error.
    pub appends_failed: u64,
    /// Truncations issued.
    pub truncations: u64,
    /// Truncations acknowledged.
    pub truncations_acknowledged: u64,
    /// Truncations refused as beyond the end.
    pub truncations_refused: u64,
    /// Flushes issued.
    pub flushes: u64,
    /// Reads issued by clients (the reads after each recovery not included).
    pub reads: u64,
    /// Reads whose entries the oracle checked (recovery reads included).
    pub reads_checked: u64,
    /// Prefix removals issued.
    pub removals: u64,
    /// Segment files those removals deleted.
    pub segments_removed: u64,
    /// Power losses.
    pub crashes: u64,
    /// Process crashes that kept the page cache.
    pub process_crashes: u64,
    /// Restarts caused by a failed write or sync.
    pub restarts_after_failure: u64,
    /// Recoveries that opened the log.
    pub recoveries: u64,
    /// Double restarts that checked recovery is idempotent.
    pub idempotence_checks: u64,
    /// Times the log reported a failed write or sync.
    pub wal_failures: u64,
    /// Syncs reported as overdue.
    pub syncs_overdue: u64,
    /// Recoveries that found and cut a torn tail.
    pub torn_tails: u64,
    /// Recoveries or reads that reported corruption.
    pub corruption_detected: u64,
    /// What the disk did.
    pub disk: DiskFaultCounts,
    /// Entries in the log at the end.
    pub entries_at_end: u64,
    /// The log's next sequence number at the end.
    pub next_seq_at_end: u64,
    /// Virtual time the run took.
    pub virtual_time: Duration,
    /// Lines in the trace.
    pub trace_lines: u64,
}

impl fmt::Display for WalSummary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let disk = &self.disk;
        writeln!(formatter, "seed {} (batch size {})", self.seed, self.batch_records_max)?;
        writeln!(
            formatter,
            "  commands {}: appends {} (acknowledged {}, failed {}), truncations {} (acknowledged {}, \
             refused {}), flushes {}, reads {} (checked {}), removals {} ({} segments)",
            self.commands,
            self.appends,
            self.appends_acknowledged,
            self.appends_failed,
            self.truncations,
            self.truncations_acknowledged,
            self.truncations_refused,
            self.flushes,
            self.reads,
            self.reads_checked,
            self.removals,
            self.segments_removed
        )?;
        writeln!(
            formatter,
            "  crashes {} (process only {}), restarts after failure {}, recoveries {}, idempotence checks {}",
            self.crashes,
            self.process_crashes,
            self.restarts_after_failure,
            self.recoveries,
            self.idempotence_checks
        )?;
        writeln!(
            formatter,
            "  faults: write errors {}, sync errors {}, unsynced writes lost {}, torn writes {}, bit flips {}; \
             wal failures {}, syncs overdue {}",
            disk.write_errors,
            disk.sync_errors,
            disk.unsynced_writes_lost,
            disk.torn_writes,
            disk.bit_flips,
            self.wal_failures,
            self.syncs_overdue
        )?;
        writeln!(
            formatter,
            "  recovery: torn tails {}, corruption detected {}",
            self.torn_tails, self.corruption_detected
        )?;
        write!(
            formatter,
            "  end: {} entries, next seq {}; virtual time {:?}, {} trace lines",
            self.entries_at_end, self.next_seq_at_end, self.virtual_time, self.trace_lines
        )
    }
}

/// A broken correctness property, with what is needed to reproduce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// Virtual time of the violation.
    pub at: Duration,
    /// Which node incarnation (1 is the first boot).
    pub incarnation: u64,
    /// What went wrong.
    pub message: String,
    /// The command that replays the run.
    pub replay: String,
    /// The last trace lines before the violation.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            formatter,
            "VIOLATION (seed {}, incarnation {}, at {:?}):",
            self.seed, self.incarnation, self.at
        )?;
        writeln!(formatter, "  {}", self.message)?;
        writeln!(formatter, "replay: {}   (add --trace to print every step)", self.replay)?;
        writeln!(formatter, "last trace lines:")?;
        for line in &self.trace_tail {
            writeln!(formatter, "  {line}")?;
        }
        Ok(())
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRun {
    /// What happened.
    pub summary: WalSummary,
    /// CRC32 over the whole trace: equal for two runs of the same config.
    pub trace_hash: u32,
    /// The first broken property, if any; the run stops there.
    pub violation: Option<Violation>,
}

/// Runs one simulated workload against the log and checks it.
///
/// # Errors
///
/// An invalid config. A broken property is not an error: it is reported in
/// [`WalRun::violation`].
pub fn run_wal(config: &WalRunConfig) -> Result<WalRun, SimConfigError> {
    config.validate()?;
    Ok(run_catching_panics(config, Trace::new()))
}

/// Like [`run_wal`], printing every trace line to standard error as the run
/// goes (the trace, and so the hash, is the same).
///
/// # Errors
///
/// An invalid config.
pub fn run_wal_echoing(config: &WalRunConfig) -> Result<WalRun, SimConfigError> {
    config.validate()?;
    Ok(run_catching_panics(config, Trace::echoing()))
}

/// Runs the simulation; a panic (in the kernel: bad input must never panic
/// it; or a broken invariant of the simulator) becomes a violation naming
/// the seed, so that a sweep reports it like any other.
fn run_catching_panics(config: &WalRunConfig, trace: Trace) -> WalRun {
    let run =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| sim::WalSim::new(config, trace).run()));
    run.unwrap_or_else(|payload| WalRun {
        summary: WalSummary { seed: config.seed, ..WalSummary::default() },
        trace_hash: 0,
        violation: Some(Violation {
            seed: config.seed,
            at: Duration::ZERO,
            incarnation: 0,
            message: format!("panicked: {}", panic_message(payload.as_ref())),
            replay: config.replay_command(),
            trace_tail: Vec::new(),
        }),
    })
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (payload.downcast_ref::<&str>(), payload.downcast_ref::<String>()) {
        (Some(text), _) => (*text).to_owned(),
        (_, Some(text)) => text.clone(),
        _ => String::from("(a panic without a message)"),
    }
}
