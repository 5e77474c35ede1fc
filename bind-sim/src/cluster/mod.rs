//! Raft clusters in the simulator: several kernels, each with its own
//! simulated disk and state machine, talking over a simulated network, all
//! on virtual time and one seeded generator, checked by oracles as they run.
//!
//! - [`ClusterSim`] is the cluster with a scripting API for tests: submit
//!   commands, wait on conditions with deadlines, partition the network,
//!   crash and restart nodes, add nodes, and check convergence;
//! - [`run_cluster`] runs a randomized workload (clients, faults,
//!   membership changes) from a seed and reports a [`ClusterSummary`] and
//!   the first [`Violation`], with the command that replays it;
//! - [`bench`](mod@bench) measures how fast the core commits with nothing in
//!   the way.
//!
//! Like every binding, the simulator decides nothing about the protocol:
//! it executes each kernel's disk operations one at a time in the order
//! polled, delivers messages and replies, and fires timers at
//! `poll_timeout`. What it adds is judgment, checked as the run goes:
//!
//! - every replica applies the one committed sequence, with the same
//!   results, and states recorded at one position are byte-identical
//!   (`oracle`, fed by the recording state machine of `recorder`);
//! - at most one leader per term;
//! - an acknowledged proposal lands after every proposal acknowledged
//!   before it was submitted, and a linearizable read of a key sees every
//!   write and read of it that finished before the read started;
//! - every command is answered within the request timeout while its node
//!   is up;
//! - a node stops (`NodeFailed`) or fails to recover its log only on an
//!   injected disk fault;
//!
//! and at the end, after healing, progress and durability
//! ([`ClusterSim::check_converged`]): a leader commits a write, and every
//! member holds the state of the whole committed sequence.

pub mod bench;
mod network;
mod oracle;
mod recorder;
mod sim;
mod workload;

use std::fmt;
use std::time::Duration;

use octopii_core::Reply;
use octopii_core::wal::WalConfig;

pub use network::{NetworkConfig, NetworkCounts};
pub use sim::{ClusterSim, StateMachineFactory};
pub use workload::{
    ClusterFaults, ClusterRun, ClusterRunConfig, ClusterSummary, run_cluster, run_cluster_echoing,
};

use crate::disk::{DiskFaultCounts, DiskFaults, SimDiskError};

/// Most nodes a cluster may have at once (initial and added).
pub const NODES_MAX: usize = 16;

/// How long each kind of disk operation takes: uniform between the bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskLatency {
    /// Shortest operation other than a sync.
    pub op_min: Duration,
    /// Longest operation other than a sync.
    pub op_max: Duration,
    /// Shortest sync.
    pub sync_min: Duration,
    /// Longest sync.
    pub sync_max: Duration,
}

impl DiskLatency {
    /// Every operation completes at once.
    pub const ZERO: Self = Self {
        op_min: Duration::ZERO,
        op_max: Duration::ZERO,
        sync_min: Duration::ZERO,
        sync_max: Duration::ZERO,
    };

    /// Fixed latencies: `op` for everything but syncs, `sync` for syncs.
    pub const fn fixed(op: Duration, sync: Duration) -> Self {
        Self { op_min: op, op_max: op, sync_min: sync, sync_max: sync }
    }
}

impl Default for DiskLatency {
    /// 10 to 200 µs per operation, 100 µs to 2 ms per sync: a fast SSD.
    fn default() -> Self {
        Self {
            op_min: Duration::from_micros(10),
            op_max: Duration::from_micros(200),
            sync_min: Duration::from_micros(100),
            sync_max: Duration::from_millis(2),
        }
    }
}

/// A cluster's parameters; with the state machines, they determine a
/// scripted run completely.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterConfig {
    /// Seed of the run's one random generator (also the nodes' Raft seed).
    /// Default 0.
    pub seed: u64,
    /// Initial voters, with ids `1..=nodes`. Default 3.
    pub nodes: usize,
    /// Length of a Raft tick. Default 10 ms.
    pub tick_interval: Duration,
    /// Ticks without a leader before an election. Default 10.
    pub election_ticks: usize,
    /// Ticks between heartbeats. Default 2.
    pub heartbeat_ticks: usize,
    /// Entries applied between snapshots. Default 1000.
    pub snapshot_lag_threshold: u64,
    /// How long a proposal, read or membership change may wait. Default 2 s.
    pub request_timeout: Duration,
    /// Every node's log tuning. Default: batches of 64 records, segments of
    /// 64 KiB (so that compaction removes files), flush interval 50 ms.
    pub wal: WalConfig,
    /// Every node's disk faults (each node has its own disk). Default none.
    pub disk_faults: DiskFaults,
    /// How long disk operations take. Default [`DiskLatency::default`].
    pub disk_latency: DiskLatency,
    /// The network. Default [`NetworkConfig::default`].
    pub network: NetworkConfig,
    /// Whether to keep the text trace (and its hash). Default true; the
    /// benchmark turns it off.
    pub trace: bool,
    /// Whether nodes talk real QUIC with mutual TLS over simulated UDP
    /// datagrams (each node's kernel runs the core's transport), instead of
    /// handing Raft messages to the network whole. Default false.
    pub quic: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            seed: 0,
            nodes: 3,
            tick_interval: Duration::from_millis(10),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_lag_threshold: 1000,
            request_timeout: Duration::from_secs(2),
            wal: WalConfig {
                batch_records_max: 64,
                flush_interval: Duration::from_millis(50),
                segment_bytes_target: 64 * 1024,
            },
            disk_faults: DiskFaults::NONE,
            disk_latency: DiskLatency::default(),
            network: NetworkConfig::default(),
            trace: true,
            quic: false,
        }
    }
}

/// A [`ClusterConfig`] value outside its range.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterConfigError {
    /// `nodes` must be in `1..=NODES_MAX`.
    #[error("node count {0} is outside 1..={NODES_MAX}")]
    Nodes(usize),
    /// A network probability or delay is out of range.
    #[error("network setting {0} is out of range")]
    Network(&'static str),
    /// A disk fault probability is out of range.
    #[error(transparent)]
    Disk(#[from] SimDiskError),
    /// The kernel refused the derived node or log configuration.
    #[error("invalid kernel config: {0}")]
    Kernel(String),
    /// A node id that is zero or already taken.
    #[error("node id {0} is zero or already in the cluster")]
    NodeId(u64),
}

/// Identifies a command submitted to a [`ClusterSim`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Handle(pub u64);

/// Where a submitted command stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not answered yet.
    Pending,
    /// The node's answer.
    Replied(Reply),
    /// The node was down when the command was submitted, or crashed before
    /// answering: the outcome is unknown.
    Lost,
}

/// What happened in a cluster so far, for people and for comparing runs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Commands submitted by callers.
    pub commands: u64,
    /// Commands answered.
    pub replies: u64,
    /// Commands lost to a crash or to a down node.
    pub lost: u64,
    /// Terms in which some node led.
    pub elections: u64,
    /// Length of the committed sequence of state machine commands.
    pub committed: u64,
    /// Node crashes (power losses).
    pub crashes: u64,
    /// Node starts after a crash.
    pub restarts: u64,
    /// Nodes shut down for good.
    pub stops: u64,
    /// Nodes added to the cluster after the start.
    pub nodes_added: u64,
    /// Partitions into groups.
    pub partitions: u64,
    /// Nodes isolated from all others.
    pub isolations: u64,
    /// Single directed links cut (asymmetric faults).
    pub link_cuts: u64,
    /// Times every link was restored.
    pub heals: u64,
    /// Nodes that stopped on a storage failure.
    pub node_failures: u64,
    /// Snapshots taken by the state machines.
    pub snapshots_taken: u64,
    /// Snapshots restored (after a restart or from a leader).
    pub snapshots_restored: u64,
    /// Local snapshots the log could not store.
    pub snapshots_failed: u64,
    /// Linearizable reads checked by the oracle.
    pub reads_checked: u64,
    /// What the network did.
    pub network: NetworkCounts,
    /// What the disks did, summed over nodes.
    pub disk: DiskFaultCounts,
}

/// A broken correctness property, with what is needed to reproduce it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The run's seed.
    pub seed: u64,
    /// Virtual time of the violation.
    pub at: Duration,
    /// What went wrong.
    pub message: String,
    /// The command that replays the run (for scripted tests, the test to
    /// run with the seed).
    pub replay: String,
    /// The last trace lines before the violation.
    pub trace_tail: Vec<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(formatter, "VIOLATION (seed {}, at {:?}):", self.seed, self.at)?;
        writeln!(formatter, "  {}", self.message)?;
        writeln!(formatter, "replay: {}", self.replay)?;
        writeln!(formatter, "last trace lines:")?;
        for line in &self.trace_tail {
            writeln!(formatter, "  {line}")?;
        }
        Ok(())
    }
}

pub(crate) fn add_disk_counts(total: &mut DiskFaultCounts, counts: DiskFaultCounts) {
    total.write_errors += counts.write_errors;
    total.sync_errors += counts.sync_errors;
    total.crashes += counts.crashes;
    total.unsynced_writes_lost += counts.unsynced_writes_lost;
    total.torn_writes += counts.torn_writes;
    total.bit_flips += counts.bit_flips;
}
