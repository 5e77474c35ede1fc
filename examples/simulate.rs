//! Deterministic simulation: a whole Raft cluster, its disks and its
//! network on virtual time, every choice drawn from one seeded generator.
//!
//! Part one runs the simulator's randomized workload on three nodes: clients
//! proposing and reading, while a nemesis crashes nodes, partitions the
//! network, fails disk writes and changes the membership, and oracles check
//! every step (one leader per term, one committed sequence, acknowledged
//! writes survive, reads are linearizable). It runs the same seed twice and
//! checks the two runs are identical, down to the hash of their traces.
//!
//! Part two scripts a scenario by hand with `ClusterSim`: crash the leader,
//! keep writing, restart it, and check that every node converged; again
//! twice, compared by trace hash.
//!
//! A run is a function of its seed, so a failing seed is a bug report: the
//! program prints the command that replays it.
//!
//! ```sh
//! cargo run -p octopii-examples --example simulate -- --seed 7
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use octopii_sim::cluster::{ClusterConfig, ClusterFaults, ClusterRunConfig, ClusterSim, run_cluster};

/// How long (in virtual time) a scripted step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// A seeded simulation of a three-node cluster, run twice and compared.
#[derive(Debug, Parser)]
struct Args {
    /// The seed of both parts.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Client operations of the randomized workload.
    #[arg(long, default_value_t = 300)]
    ops: u64,
}

/// The scripted scenario of part two; returns its trace hash and a line of
/// statistics.
fn scripted(seed: u64) -> anyhow::Result<(u32, String)> {
    let mut sim = ClusterSim::new(ClusterConfig { seed, nodes: 3, ..ClusterConfig::default() })?;
    sim.set_replay(format!("cargo run -p octopii-examples --example simulate -- --seed {seed}"));
    let write = |sim: &mut ClusterSim, command: &str| -> anyhow::Result<()> {
        let result = sim.write(command.as_bytes(), STEP_TIMEOUT).map_err(anyhow::Error::msg)?;
        result.map(drop).map_err(|error| anyhow::anyhow!("{command}: the state machine refused: {error}"))
    };

    let leader = sim.await_leader(STEP_TIMEOUT).ok_or_else(|| anyhow::anyhow!("no leader"))?;
    for index in 0..10 {
        write(&mut sim, &format!("SET key{index} {index}"))?;
    }
    // A power loss: what the leader had not synced is lost or torn.
    sim.crash(leader);
    let next = sim.await_leader(STEP_TIMEOUT).ok_or_else(|| anyhow::anyhow!("no leader after the crash"))?;
    for index in 10..20 {
        write(&mut sim, &format!("SET key{index} {index}"))?;
    }
    sim.restart(leader);
    // Every node, the restarted one too, must hold the whole committed
    // sequence and the same state.
    sim.check_converged(b"SET final 1", Duration::from_secs(20)).map_err(anyhow::Error::msg)?;
    if let Some(violation) = sim.violation() {
        anyhow::bail!("{violation}");
    }
    let stats = sim.stats();
    let line = format!(
        "leader {leader} crashed, node {next} took over, {} committed, {} elections, {} messages, virtual time {:.2?}",
        stats.committed,
        stats.elections,
        stats.network.sent,
        sim.now()
    );
    Ok((sim.trace_hash(), line))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();

    // Part one: the randomized workload with every kind of fault.
    let config = ClusterRunConfig {
        seed: args.seed,
        nodes: 3,
        faults: ClusterFaults::Full,
        ops: args.ops,
        ..ClusterRunConfig::default()
    };
    let first = run_cluster(&config).map_err(anyhow::Error::msg)?;
    println!("{}\n  trace hash {:08x}", first.summary, first.trace_hash);
    println!("replay: {}", config.replay_command());
    if let Some(violation) = &first.violation {
        anyhow::bail!("seed {} broke a property:\n{violation}", args.seed);
    }
    let second = run_cluster(&config).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        first == second,
        "seed {} ran differently the second time: trace hash {:08x} then {:08x}",
        args.seed,
        first.trace_hash,
        second.trace_hash
    );
    println!(
        "second run of seed {}: identical (trace hash {:08x}, same summary)",
        args.seed, second.trace_hash
    );

    // Another seed is another run.
    let other = run_cluster(&ClusterRunConfig { seed: args.seed.wrapping_add(1), ..config.clone() })
        .map_err(anyhow::Error::msg)?;
    println!("seed {} for comparison: trace hash {:08x}", args.seed.wrapping_add(1), other.trace_hash);
    anyhow::ensure!(other.trace_hash != first.trace_hash, "two seeds gave the same trace");

    // Part two: a scenario written by hand.
    let (hash, line) = scripted(args.seed)?;
    println!("scripted: {line}\n  trace hash {hash:08x}");
    let (again, _) = scripted(args.seed)?;
    anyhow::ensure!(again == hash, "the scripted run changed: {hash:08x} then {again:08x}");
    println!("scripted again: identical (trace hash {again:08x})");

    println!("done in {:.2?} of real time", started.elapsed());
    Ok(())
}
