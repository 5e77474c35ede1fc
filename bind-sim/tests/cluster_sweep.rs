//! Randomized cluster runs of 3, 5 and 7 nodes under every fault profile
//! (none, crash, network, full), over plain messages and over QUIC, checked
//! by the oracles: no violation, and the faults of each profile really
//! happened. `CLUSTER_SEED_COUNT` sweeps
//! more seeds; a failure prints the command that replays it.

mod common;

use common::seeds;
use octopii_sim::cluster::{ClusterFaults, ClusterRunConfig, ClusterSummary, run_cluster};

/// Operations per run: enough for elections, crashes and partitions to
/// interleave with the clients.
const OPS: u64 = 200;

fn sweep(nodes: usize, default_count: u64) {
    sweep_over(nodes, default_count, false);
}

fn sweep_over(nodes: usize, default_count: u64, quic: bool) {
    let mut failures = Vec::new();
    for faults in [ClusterFaults::None, ClusterFaults::Crash, ClusterFaults::Network, ClusterFaults::Full] {
        let mut runs: Vec<ClusterSummary> = Vec::new();
        for seed in seeds(default_count) {
            let config =
                ClusterRunConfig { seed, nodes, faults, ops: OPS, quic, ..ClusterRunConfig::default() };
            let run = run_cluster(&config).expect("a valid config");
            if let Some(violation) = run.violation {
                failures.push(violation.to_string());
            }
            runs.push(run.summary);
        }
        let total = |field: fn(&ClusterSummary) -> u64| runs.iter().map(field).sum::<u64>();
        assert!(total(|run| run.acked) > 0, "{nodes} nodes, {faults}: nothing was acknowledged");
        assert!(total(|run| run.reads_ok) > 0, "{nodes} nodes, {faults}: no read succeeded");
        let crashes = total(|run| run.stats.crashes);
        let lost_messages = total(|run| run.stats.network.dropped + run.stats.network.cut);
        match faults {
            ClusterFaults::None => {
                assert_eq!(crashes + lost_messages, 0, "{nodes} nodes: faults without a profile")
            }
            ClusterFaults::Crash => assert!(crashes > 0, "{nodes} nodes: the crash profile crashed nothing"),
            ClusterFaults::Network => assert!(lost_messages > 0, "{nodes} nodes: the network lost nothing"),
            ClusterFaults::Full => assert!(crashes > 0 && lost_messages > 0, "{nodes} nodes: full was not"),
        }
        println!(
            "{nodes} nodes{}, {faults}: {} runs, {} acked, {} reads, {} elections, {} crashes, {} messages lost",
            if quic { " over QUIC" } else { "" },
            runs.len(),
            total(|run| run.acked),
            total(|run| run.reads_ok),
            total(|run| run.stats.elections),
            crashes,
            lost_messages
        );
    }
    assert!(failures.is_empty(), "{} failing runs:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn three_nodes_under_every_fault_profile() {
    sweep(3, 5);
}

#[test]
fn five_nodes_under_every_fault_profile() {
    sweep(5, 4);
}

#[test]
fn seven_nodes_under_every_fault_profile() {
    sweep(7, 3);
}

/// The same randomized runs with real QUIC and mutual TLS between the nodes:
/// handshakes, retransmissions, reconnects after crashes and partitions.
#[test]
fn three_nodes_over_quic_under_every_fault_profile() {
    sweep_over(3, 3, true);
}
