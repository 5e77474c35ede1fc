//! Randomized cluster runs: clients issuing key-value proposals and
//! linearizable reads, a nemesis injecting the faults of a profile, and at
//! the end the faults healed and the cluster required to converge.
//!
//! A run is a pure function of its [`ClusterRunConfig`]: every choice (the
//! profile's probabilities, the clients' operations and pauses, the
//! nemesis's moves, disk and network behaviour) is drawn from the cluster's
//! one generator, time is virtual, and the trace hashes to
//! [`ClusterRun::trace_hash`]. [`ClusterRunConfig::replay_command`] replays
//! a failing seed.

mod driver;
mod nemesis;

use std::fmt;
use std::time::Duration;

use super::{ClusterStats, Violation};
use crate::trace::Trace;

/// Most client operations one run may issue.
pub const OPS_MAX: u64 = 1_000_000;
/// Most simulated clients.
pub const CLIENTS_MAX: usize = 256;

/// A named fault profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum ClusterFaults {
    /// Random delays (and so reordering) only.
    None,
    /// Nodes crash (power loss: unsynced writes lost or torn) and restart.
    Crash,
    /// Messages lost, duplicated and held back; partitions, isolated
    /// nodes (the leader too), one-way link cuts.
    Network,
    /// Both, plus failed disk writes and syncs, leader transfers and
    /// membership changes (a new node added as learner, promoted, and a
    /// voter removed).
    Full,
}

impl ClusterFaults {
    /// The name the command line accepts.
    pub fn name(self) -> &'static str {
        match self {
            ClusterFaults::None => "none",
            ClusterFaults::Crash => "crash",
            ClusterFaults::Network => "network",
            ClusterFaults::Full => "full",
        }
    }

    pub(crate) fn crashes(self) -> bool {
        matches!(self, ClusterFaults::Crash | ClusterFaults::Full)
    }

    pub(crate) fn network(self) -> bool {
        matches!(self, ClusterFaults::Network | ClusterFaults::Full)
    }
}

impl fmt::Display for ClusterFaults {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// One run's parameters; together they determine the run completely.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRunConfig {
    /// Seed of the run's generator. Default 0.
    pub seed: u64,
    /// Initial voters. Default 3.
    pub nodes: usize,
    /// Which faults to inject. Default [`ClusterFaults::Full`].
    pub faults: ClusterFaults,
    /// Client operations to issue. Default 300.
    pub ops: u64,
    /// Concurrent clients. Default 4.
    pub clients: usize,
    /// Every node's log segment size target in bytes; `None` draws it from
    /// the seed, between 4 KiB and 64 KiB, so that logs rotate and
    /// compaction removes segments. Default `None`.
    pub segment_bytes: Option<u64>,
    /// Whether nodes talk real QUIC over simulated datagrams
    /// ([`ClusterConfig::quic`](crate::cluster::ClusterConfig::quic)).
    /// Default false.
    pub quic: bool,
}

impl Default for ClusterRunConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 3,
            faults: ClusterFaults::Full,
            ops: 300,
            clients: 4,
            segment_bytes: None,
            quic: false,
        }
    }
}

impl ClusterRunConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first field out of range, in words.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=9).contains(&self.nodes) {
            return Err(format!("node count {} is outside 1..=9", self.nodes));
        }
        if self.ops > OPS_MAX {
            return Err(format!("op count {} exceeds {OPS_MAX}", self.ops));
        }
        if !(1..=CLIENTS_MAX).contains(&self.clients) {
            return Err(format!("client count {} is outside 1..={CLIENTS_MAX}", self.clients));
        }
        let Some(segment_bytes_target) = self.segment_bytes else { return Ok(()) };
        let wal = octopii_core::wal::WalConfig {
            segment_bytes_target,
            ..crate::cluster::ClusterConfig::default().wal
        };
        wal.validate().map_err(|error| format!("invalid log config: {error}"))
    }

    /// The command that replays this run exactly.
    pub fn replay_command(&self) -> String {
        let segment_bytes = self.segment_bytes.map(|bytes| format!(" --segment-bytes {bytes}"));
        format!(
            "cargo run -p octopii-sim -- cluster --seed {} --nodes {} --faults {} --ops {} --clients {}{}{}",
            self.seed,
            self.nodes,
            self.faults,
            self.ops,
            self.clients,
            segment_bytes.unwrap_or_default(),
            if self.quic { " --quic" } else { "" }
        )
    }
}

/// What happened in a run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSummary {
    /// The run's seed.
    pub seed: u64,
    /// Initial voters.
    pub nodes: usize,
    /// The fault profile.
    pub faults: String,
    /// Client operations issued.
    pub ops: u64,
    /// Proposals acknowledged with the state machine's `Ok`.
    pub acked: u64,
    /// Proposals acknowledged with the state machine's error (unknown
    /// commands, on purpose).
    pub apply_errors: u64,
    /// Proposals refused by a follower.
    pub not_leader: u64,
    /// Proposals that timed out or were dropped by a change of leader.
    pub unknown: u64,
    /// Operations lost to a crash or sent to a down node.
    pub lost: u64,
    /// Linearizable reads issued.
    pub reads: u64,
    /// Linearizable reads answered (and checked).
    pub reads_ok: u64,
    /// Leader transfers asked for.
    pub transfers: u64,
    /// Membership changes applied.
    pub membership_changes: u64,
    /// Voters removed and shut down.
    pub nodes_removed: u64,
    /// Everything the cluster counted.
    pub stats: ClusterStats,
    /// Virtual time the run took.
    pub virtual_time: Duration,
    /// Lines in the trace.
    pub trace_lines: u64,
    /// Violations found (0 or 1: the run stops at the first).
    pub violations: u64,
}

impl fmt::Display for ClusterSummary {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stats = &self.stats;
        let (network, disk) = (&stats.network, &stats.disk);
        writeln!(formatter, "seed {} ({} nodes, faults {})", self.seed, self.nodes, self.faults)?;
        writeln!(
            formatter,
            "  ops {}: acked {}, apply errors {}, not leader {}, unknown {}, lost {}; reads {} (answered {}, \
             checked {})",
            self.ops,
            self.acked,
            self.apply_errors,
            self.not_leader,
            self.unknown,
            self.lost,
            self.reads,
            self.reads_ok,
            stats.reads_checked
        )?;
        writeln!(
            formatter,
            "  raft: elections {}, committed {}, snapshots {} taken / {} restored, transfers {}, membership \
             changes {}, nodes added {} / removed {}",
            stats.elections,
            stats.committed,
            stats.snapshots_taken,
            stats.snapshots_restored,
            self.transfers,
            self.membership_changes,
            stats.nodes_added,
            self.nodes_removed
        )?;
        writeln!(
            formatter,
            "  faults: crashes {}, restarts {}, node failures {}, partitions {}, isolations {}, link cuts {}, \
             heals {}",
            stats.crashes,
            stats.restarts,
            stats.node_failures,
            stats.partitions,
            stats.isolations,
            stats.link_cuts,
            stats.heals
        )?;
        writeln!(
            formatter,
            "  network: sent {}, dropped {}, duplicated {}, reordered {}, cut {}, undeliverable {}, oversized {}",
            network.sent,
            network.dropped,
            network.duplicated,
            network.reordered,
            network.cut,
            network.undeliverable,
            network.oversized
        )?;
        writeln!(
            formatter,
            "  disk: write errors {}, sync errors {}, unsynced writes lost {}, torn writes {}",
            disk.write_errors, disk.sync_errors, disk.unsynced_writes_lost, disk.torn_writes
        )?;
        write!(
            formatter,
            "  end: virtual time {:?}, {} trace lines, violations {}",
            self.virtual_time, self.trace_lines, self.violations
        )
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterRun {
    /// What happened.
    pub summary: ClusterSummary,
    /// CRC32 over the whole trace: equal for two runs of the same config.
    pub trace_hash: u32,
    /// The first broken property, if any; the run stops there.
    pub violation: Option<Violation>,
}

/// Runs one randomized cluster workload and checks it.
///
/// # Errors
///
/// An invalid config. A broken property is not an error: it is reported
/// in [`ClusterRun::violation`].
pub fn run_cluster(config: &ClusterRunConfig) -> Result<ClusterRun, String> {
    config.validate()?;
    Ok(run_catching_panics(config, Trace::new()))
}

/// Like [`run_cluster`], printing every trace line to standard error.
///
/// # Errors
///
/// An invalid config.
pub fn run_cluster_echoing(config: &ClusterRunConfig) -> Result<ClusterRun, String> {
    config.validate()?;
    Ok(run_catching_panics(config, Trace::echoing()))
}

/// A panic (in the kernel: bad input must never panic it; or a broken
/// invariant) becomes a violation naming the seed.
fn run_catching_panics(config: &ClusterRunConfig, trace: Trace) -> ClusterRun {
    let run =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| driver::Driver::new(config, trace).run()));
    run.unwrap_or_else(|payload| {
        let summary = ClusterSummary {
            seed: config.seed,
            nodes: config.nodes,
            faults: config.faults.to_string(),
            violations: 1,
            ..ClusterSummary::default()
        };
        let violation = Violation {
            seed: config.seed,
            at: Duration::ZERO,
            message: format!("panicked: {}", crate::wal::panic_message(payload.as_ref())),
            replay: config.replay_command(),
            trace_tail: Vec::new(),
        };
        ClusterRun { summary, trace_hash: 0, violation: Some(violation) }
    })
}
