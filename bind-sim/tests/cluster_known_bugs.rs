//! Known bugs of the core, each shown by a cluster run that fails today.
//! They run only with `OCTOPII_KNOWN_BUGS=1`, so that the suite stays green
//! until they are fixed; without it each test returns at once. Once a bug
//! is fixed, move its test to `cluster_regressions.rs`.
//!
//! ```text
//! OCTOPII_KNOWN_BUGS=1 cargo test -p octopii-sim --test cluster_known_bugs
//! ```

mod common;

use common::{SETTLE, check, cluster, converge, known_bugs, leader, seeds, write};
use octopii_core::wal::WalConfig;
use octopii_sim::cluster::{ClusterConfig, ClusterFaults, ClusterRunConfig, run_cluster};

const FILE: &str = "cluster_known_bugs";

/// Bug 8. Recovery replays the log's records in order and needs a snapshot
/// before the entries it covers. Compaction writes the new snapshot's
/// record after the entries it covers, then removes the segments before
/// the first entry still needed, among them the one holding the previous
/// snapshot. When the surviving segment starts with entries the new
/// snapshot covers (segments rotate between two snapshots), the next
/// recovery meets those entries with no snapshot before them and refuses
/// the log ("log entry N recovered after entry 0"): the node stops at every
/// start, for good. After a restart of every node the cluster is gone.
#[test]
fn a_node_restarts_after_compaction_removed_a_segment() {
    if !known_bugs() {
        return;
    }
    for seed in seeds(2) {
        let defaults = ClusterConfig::default();
        let config = ClusterConfig {
            seed,
            snapshot_lag_threshold: 20,
            wal: WalConfig { segment_bytes_target: 4096, ..defaults.wal.clone() },
            ..defaults
        };
        let mut sim = cluster(FILE, "a_node_restarts_after_compaction_removed_a_segment", config);
        leader(&mut sim);
        let value = "x".repeat(80);
        for index in 0..150 {
            let _ = write(&mut sim, &format!("SET k{} {value}{index}", index % 10));
        }
        for id in sim.node_ids() {
            sim.crash(id);
        }
        for id in sim.node_ids() {
            sim.restart(id);
        }
        let recovered = sim.run_until(SETTLE, |sim| sim.leader().is_some());
        check(&sim, recovered, "the nodes came back");
        converge(&mut sim, "SET final 1");
    }
}

/// Bug 8 in randomized runs: with 4 KiB segments, logs rotate and compact
/// under every profile, and any restart may meet the bug; for example
/// `cargo run -p octopii-sim -- cluster --seed 0 --nodes 3 --faults full --ops 300 --clients 4 --segment-bytes 4096`
/// (and, with the default 64 KiB segments, longer runs: `--seed 343 --nodes 7
/// --faults full --ops 1000`).
#[test]
fn random_runs_with_small_log_segments() {
    if !known_bugs() {
        return;
    }
    let mut failures = Vec::new();
    for nodes in [3, 5] {
        for faults in [ClusterFaults::Crash, ClusterFaults::Full] {
            for seed in seeds(5) {
                let config = ClusterRunConfig {
                    seed,
                    nodes,
                    faults,
                    segment_bytes: 4096,
                    ..ClusterRunConfig::default()
                };
                let run = run_cluster(&config).expect("a valid config");
                if let Some(violation) = run.violation {
                    failures.push(format!("{}\n  {}", violation.replay, violation.message));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failing runs:\n{}", failures.len(), failures.join("\n"));
}
