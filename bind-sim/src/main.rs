//! `octopii-sim`: runs, sweeps and replays simulated seeds.
//!
//! `octopii-sim wal --seed N` runs one seed of the log and prints its
//! summary; `octopii-sim cluster --seed N` does the same for a Raft cluster.
//! `--seeds A..B` or `--count K` sweeps; a violation prints the failing
//! seed, what broke and the command that replays it, and the exit status is
//! non-zero. `octopii-sim cluster-bench` measures commits per second of a
//! fault-free three-node cluster.

use std::ops::Range;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use octopii_sim::cluster::bench::{BenchConfig, run_bench};
use octopii_sim::cluster::{ClusterFaults, ClusterRunConfig, run_cluster, run_cluster_echoing};
use octopii_sim::wal::{FaultLevel, WalRunConfig, run_corruption, run_wal, run_wal_echoing};

/// Octopii's deterministic simulator.
#[derive(Debug, Parser)]
#[command(name = "octopii-sim", version, about)]
struct Cli {
    /// What to simulate.
    #[command(subcommand)]
    target: Target,
}

/// The simulated subsystems.
#[derive(Debug, Subcommand)]
enum Target {
    /// The write-ahead log on a faulty disk, with crashes and restarts.
    Wal(WalArgs),
    /// A Raft cluster with clients, crashes, partitions and membership
    /// changes, checked by oracles.
    Cluster(ClusterArgs),
    /// Commits per second of a fault-free three-node cluster.
    ClusterBench(BenchArgs),
}

/// Options of `octopii-sim cluster`.
#[derive(Debug, Args)]
struct ClusterArgs {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep the seeds of a range, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Sweep this many seeds, starting at `--seed` (default 0).
    #[arg(long, conflicts_with = "seeds")]
    count: Option<u64>,
    /// Initial voters.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Fault profile.
    #[arg(long, value_enum, default_value_t = ClusterFaults::Full)]
    faults: ClusterFaults,
    /// Client operations per run.
    #[arg(long, default_value_t = 300)]
    ops: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Every node's log segment size target in bytes (default: drawn from
    /// the seed, 4 KiB to 64 KiB, so that logs rotate and compaction
    /// removes segments).
    #[arg(long = "segment-bytes")]
    segment_bytes: Option<u64>,
    /// Run real QUIC with mutual TLS between the nodes, over simulated
    /// datagrams, instead of handing Raft messages to the network whole.
    #[arg(long)]
    quic: bool,
    /// Print only failures and the totals of a sweep.
    #[arg(long, short)]
    quiet: bool,
    /// Print every trace line to standard error as the run goes.
    #[arg(long)]
    trace: bool,
}

/// Options of `octopii-sim cluster-bench`.
#[derive(Debug, Args)]
struct BenchArgs {
    /// Concurrent closed-loop clients; repeat for several runs.
    #[arg(long, num_args = 1.., default_values_t = [1usize, 64, 256])]
    clients: Vec<usize>,
    /// Commits measured per run.
    #[arg(long, default_value_t = 20_000)]
    commits: u64,
    /// Seed of the runs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// Which scenario of the log to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Random clients, crashes and disk faults, checked by the oracle.
    Random,
    /// Acknowledged batches, one bit flipped in an older one, restart.
    Corruption,
}

/// Options of `octopii-sim wal`.
#[derive(Debug, Args)]
struct WalArgs {
    /// Run this one seed.
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Sweep the seeds of a range, `A..B` (B excluded).
    #[arg(long, value_parser = parse_range)]
    seeds: Option<Range<u64>>,
    /// Sweep this many seeds, starting at `--seed` (default 0).
    #[arg(long, conflicts_with = "seeds")]
    count: Option<u64>,
    /// Client commands per run.
    #[arg(long, default_value_t = 400)]
    ops: u64,
    /// Fault profile.
    #[arg(long, value_enum, default_value_t = FaultLevel::Full)]
    faults: FaultLevel,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// The log's segment size target in bytes.
    #[arg(long = "segment-bytes", default_value_t = 4096)]
    segment_bytes: u64,
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::Random)]
    scenario: Scenario,
    /// Print only failures and the totals of a sweep.
    #[arg(long, short)]
    quiet: bool,
    /// Print every trace line (inputs, outputs, disk operations, crashes)
    /// to standard error as the run goes.
    #[arg(long)]
    trace: bool,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let (start, end) = text.split_once("..").ok_or_else(|| format!("expected A..B, got {text:?}"))?;
    let start: u64 = start.trim().parse().map_err(|error| format!("bad range start {start:?}: {error}"))?;
    let end: u64 = end.trim().parse().map_err(|error| format!("bad range end {end:?}: {error}"))?;
    if start >= end {
        return Err(format!("empty range {start}..{end}"));
    }
    Ok(start..end)
}

/// The seeds `--seed`, `--seeds` and `--count` name.
fn seed_range(seed: Option<u64>, seeds: Option<&Range<u64>>, count: Option<u64>) -> Range<u64> {
    if let Some(range) = seeds {
        return range.clone();
    }
    let start = seed.unwrap_or(0);
    start..start.saturating_add(count.unwrap_or(1).max(1))
}

impl WalArgs {
    fn seeds(&self) -> Range<u64> {
        seed_range(self.seed, self.seeds.as_ref(), self.count)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.target {
        Target::Wal(args) => wal(&args),
        Target::Cluster(args) => cluster(&args),
        Target::ClusterBench(args) => cluster_bench(&args),
    }
}

fn cluster(args: &ClusterArgs) -> ExitCode {
    let seeds = seed_range(args.seed, args.seeds.as_ref(), args.count);
    let sweep = seeds.end - seeds.start > 1;
    let mut failures = Vec::new();
    for seed in seeds.clone() {
        let config = ClusterRunConfig {
            seed,
            nodes: args.nodes,
            faults: args.faults,
            ops: args.ops,
            clients: args.clients,
            segment_bytes: args.segment_bytes,
            quic: args.quic,
        };
        let result = if args.trace { run_cluster_echoing(&config) } else { run_cluster(&config) };
        let run = match result {
            Ok(run) => run,
            Err(error) => {
                eprintln!("invalid options: {error}");
                return ExitCode::from(2);
            }
        };
        if !args.quiet || !sweep {
            println!("{}\n  trace hash {:08x}", run.summary, run.trace_hash);
        }
        if let Some(violation) = &run.violation {
            eprintln!("{violation}");
            failures.push(seed);
        }
    }
    report_sweep(sweep, &seeds, &failures)
}

fn report_sweep(sweep: bool, seeds: &Range<u64>, failures: &[u64]) -> ExitCode {
    if sweep {
        let total = seeds.end - seeds.start;
        let passed = total - failures.len() as u64;
        println!("{passed} of {total} seeds ({}..{}) passed", seeds.start, seeds.end);
    }
    if failures.is_empty() {
        return ExitCode::SUCCESS;
    }
    eprintln!("failing seeds: {failures:?}");
    ExitCode::FAILURE
}

fn cluster_bench(args: &BenchArgs) -> ExitCode {
    println!(
        "cluster-bench: 3 nodes, in-memory disk (10 us per op, 50 us per sync) and network (50 us), no faults, \
         {} commits per run",
        args.commits
    );
    for &clients in &args.clients {
        match run_bench(BenchConfig { clients: clients.max(1), commits: args.commits, seed: args.seed }) {
            Ok(result) => println!("{result}"),
            Err(error) => {
                eprintln!("benchmark with {clients} clients failed: {error}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

fn wal(args: &WalArgs) -> ExitCode {
    let seeds = args.seeds();
    let sweep = seeds.end - seeds.start > 1;
    let mut failures = Vec::new();
    for seed in seeds.clone() {
        let failed = match args.scenario {
            Scenario::Random => {
                let config = WalRunConfig {
                    seed,
                    commands: args.ops,
                    clients: args.clients,
                    faults: args.faults,
                    segment_bytes_target: args.segment_bytes,
                };
                let result = if args.trace { run_wal_echoing(&config) } else { run_wal(&config) };
                let run = match result {
                    Ok(run) => run,
                    Err(error) => {
                        eprintln!("invalid options: {error}");
                        return ExitCode::from(2);
                    }
                };
                if !args.quiet || !sweep {
                    println!("{}\n  trace hash {:08x}", run.summary, run.trace_hash);
                }
                if let Some(violation) = &run.violation {
                    eprintln!("{violation}");
                }
                run.violation.is_some()
            }
            Scenario::Corruption => {
                let run = run_corruption(seed);
                if run.violation.is_some() {
                    eprintln!("{run}");
                } else if !args.quiet || !sweep {
                    println!("{run}");
                }
                run.violation.is_some()
            }
        };
        if failed {
            failures.push(seed);
        }
    }
    report_sweep(sweep, &seeds, &failures)
}
