//! Octopii's deterministic simulator: the core's effects executed on virtual
//! time against a fault-injecting in-memory disk, with crashes, restarts and
//! correctness oracles, every choice drawn from one seeded generator.
//!
//! A run is a pure function of its configuration, seed included, so a
//! failing seed is a complete bug report: the `octopii-sim` command prints
//! the command line that replays it. Like every binding, the simulator
//! decides nothing about the protocol; it executes the kernel's disk
//! operations one at a time in the order polled, delivers replies, and
//! checks them against a model of what the log promised.
//!
//! - [`disk`]: [`SimDisk`], page cache versus durable bytes, failed writes
//!   and syncs, torn writes and lost data at a crash, bit rot;
//! - [`time`]: the virtual clock and the event queue;
//! - [`trace`]: the stable trace whose hash shows two runs are identical;
//! - [`step`]: a kernel driven by hand, one disk operation at a time, for
//!   scripted scenarios;
//! - [`wal`]: randomized log runs with crashes and faults ([`run_wal`]) and
//!   the bit-rot scenario ([`run_corruption`]);
//! - [`crypto`]: a seeded TLS provider, so simulated QUIC is reproducible;
//! - [`cluster`]: Raft clusters of kernels over a simulated network, driven
//!   by scripts ([`ClusterSim`]) or by a randomized workload with faults
//!   ([`run_cluster`]), checked by oracles.

pub mod cluster;
pub mod crypto;
pub mod disk;
pub mod step;
pub mod time;
pub mod trace;
pub mod wal;

pub use cluster::{ClusterConfig, ClusterRun, ClusterRunConfig, ClusterSim, run_cluster};
pub use disk::{DiskFaults, SimDisk};
pub use wal::{FaultLevel, WalRun, WalRunConfig, WalSummary, run_corruption, run_wal};
