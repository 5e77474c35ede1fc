//! The cluster throughput benchmark: three nodes on a fault-free in-memory
//! disk and network with small fixed latencies, `clients` closed-loop
//! clients each proposing a tiny command to the leader and proposing the
//! next one as soon as the last is acknowledged.
//!
//! It reports commits per wall-clock second (how fast the core, raft-rs and
//! the simulator together process a commit on this machine) and the ratio
//! of virtual to wall time. The trace is off: formatting it would dominate.
//! Wall time is read through the simulator's epoch, the only real clock it
//! knows.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use octopii_core::{Command, Reply};

use super::sim::ClusterSim;
use super::{ClusterConfig, DiskLatency, Handle, NetworkConfig};

/// Latency of every disk operation but syncs in the benchmark.
const DISK_OP_LATENCY: Duration = Duration::from_micros(10);
/// Latency of a sync in the benchmark.
const DISK_SYNC_LATENCY: Duration = Duration::from_micros(50);
/// One-way network delay in the benchmark.
const NETWORK_DELAY: Duration = Duration::from_micros(50);

/// One benchmark run's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchConfig {
    /// Closed-loop clients.
    pub clients: usize,
    /// Commits to measure (after the leader is elected).
    pub commits: u64,
    /// Seed of the run.
    pub seed: u64,
}

/// What one benchmark run measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BenchResult {
    /// Closed-loop clients.
    pub clients: usize,
    /// Proposals acknowledged.
    pub commits: u64,
    /// Wall-clock time of the measured part.
    pub wall: Duration,
    /// Virtual time of the measured part.
    pub virtual_time: Duration,
}

impl BenchResult {
    /// Commits per wall-clock second.
    pub fn commits_per_wall_second(&self) -> f64 {
        self.commits as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Commits per virtual second (what the simulated hardware allows).
    pub fn commits_per_virtual_second(&self) -> f64 {
        self.commits as f64 / self.virtual_time.as_secs_f64().max(1e-9)
    }

    /// Virtual seconds simulated per wall-clock second.
    pub fn time_ratio(&self) -> f64 {
        self.virtual_time.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

impl fmt::Display for BenchResult {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "clients {:>4}: {:>7} commits in {:>8.3} s wall = {:>9.0} commits/s wall; {:>9.0} commits/s \
             virtual; virtual/wall time {:.3}",
            self.clients,
            self.commits,
            self.wall.as_secs_f64(),
            self.commits_per_wall_second(),
            self.commits_per_virtual_second(),
            self.time_ratio()
        )
    }
}

/// Runs the benchmark.
///
/// # Errors
///
/// No leader, a violation, or no progress, in words.
pub fn run_bench(config: BenchConfig) -> Result<BenchResult, String> {
    let cluster = ClusterConfig {
        seed: config.seed,
        nodes: 3,
        disk_latency: DiskLatency::fixed(DISK_OP_LATENCY, DISK_SYNC_LATENCY),
        network: NetworkConfig::fixed(NETWORK_DELAY),
        request_timeout: Duration::from_secs(10),
        trace: false,
        ..ClusterConfig::default()
    };
    let mut sim = ClusterSim::new(cluster).map_err(|error| error.to_string())?;
    let leader = sim.await_leader(Duration::from_secs(10)).ok_or("no leader elected")?;
    let start_wall = crate::time::epoch().elapsed();
    let start_virtual = sim.now();
    // Each client proposes the same command each time: made once, each
    // proposal shares its bytes.
    let commands: Vec<Bytes> =
        (0..config.clients).map(|client| Bytes::from(format!("SET b{client} x"))).collect();
    let command = |client: usize| Command::Propose(commands[client].clone());
    // The client waiting on each handle.
    let mut in_flight: BTreeMap<Handle, usize> = BTreeMap::new();
    for client in 0..config.clients {
        in_flight.insert(sim.submit(leader, command(client)), client);
    }
    let mut commits = 0u64;
    while commits < config.commits {
        if !sim.run_until(Duration::from_secs(10), ClusterSim::has_completions) {
            return Err(sim
                .violation()
                .map_or_else(|| String::from("no progress for 10 s"), ToString::to_string));
        }
        for handle in sim.take_completions() {
            let Some(client) = in_flight.remove(&handle) else { continue };
            match sim.reply(handle) {
                Some(Reply::Proposed(Ok(Ok(_)))) => commits += 1,
                other => return Err(format!("a benchmark proposal failed: {other:?}")),
            }
            in_flight.insert(sim.submit(leader, command(client)), client);
        }
    }
    let wall = crate::time::epoch().elapsed().saturating_sub(start_wall);
    Ok(BenchResult { clients: config.clients, commits, wall, virtual_time: sim.now() - start_virtual })
}
