//! A cluster run is a function of its seed: the same seed gives the same
//! trace hash and summary, in one process and across processes (two epochs
//! of the real clock); different seeds give different runs.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use octopii_sim::cluster::{ClusterConfig, ClusterFaults, ClusterRunConfig, ClusterSim, run_cluster};

fn config(seed: u64, faults: ClusterFaults) -> ClusterRunConfig {
    ClusterRunConfig { seed, faults, ops: 120, ..ClusterRunConfig::default() }
}

/// A scripted run with every kind of fault; returns its trace hash and
/// statistics.
fn scripted(seed: u64, quic: bool) -> (u32, String) {
    let mut sim = ClusterSim::new(ClusterConfig {
        seed,
        nodes: 5,
        snapshot_lag_threshold: 20,
        quic,
        ..ClusterConfig::default()
    })
    .expect("a valid config");
    let leader = sim.await_leader(Duration::from_secs(5)).unwrap_or(1);
    for index in 0..30 {
        let _ = sim.write(format!("SET k{} {index}", index % 7).as_bytes(), Duration::from_secs(5));
        if index == 10 {
            sim.isolate(leader);
        }
        if index == 20 {
            sim.heal();
            sim.crash(leader);
        }
    }
    sim.restart(leader);
    let _ = sim.check_converged(b"SET final 1", Duration::from_secs(20));
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    (sim.trace_hash(), format!("{:?}", sim.stats()))
}

#[test]
fn the_same_seed_replays_exactly() {
    for faults in [ClusterFaults::None, ClusterFaults::Crash, ClusterFaults::Network, ClusterFaults::Full] {
        for seed in [0, 7, 123_456_789] {
            let first = run_cluster(&config(seed, faults)).expect("a valid config");
            let second = run_cluster(&config(seed, faults)).expect("a valid config");
            assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} with {faults}");
            assert_eq!(first.summary, second.summary, "seed {seed} with {faults}");
            assert_eq!(first, second, "violations replay too");
        }
    }
    assert_eq!(scripted(5, false), scripted(5, false));
    // Over QUIC the trace covers every datagram's bytes (length and CRC):
    // the handshakes, the TLS keys and every packet replay exactly.
    assert_eq!(scripted(5, true), scripted(5, true));
    for seed in [3, 11] {
        let quic = ClusterRunConfig { quic: true, ..config(seed, ClusterFaults::Full) };
        let first = run_cluster(&quic).expect("a valid config");
        assert_eq!(first, run_cluster(&quic).expect("a valid config"), "seed {seed} over QUIC");
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let hashes: BTreeSet<u32> = (0..16)
        .map(|seed| run_cluster(&ClusterRunConfig { ops: 60, ..config(seed, ClusterFaults::Full) }))
        .map(|run| run.expect("a valid config").trace_hash)
        .collect();
    assert_eq!(hashes.len(), 16, "a trace hash collided or two seeds ran alike");
    let quiet = run_cluster(&config(1, ClusterFaults::None)).expect("a valid config");
    let faulty = run_cluster(&config(1, ClusterFaults::Full)).expect("a valid config");
    assert_ne!(quiet.trace_hash, faulty.trace_hash, "the fault profile changes the run");
    assert_ne!(scripted(1, false).0, scripted(2, false).0);
    assert_ne!(scripted(1, true).0, scripted(2, true).0);
    assert_ne!(scripted(1, false).0, scripted(1, true).0, "QUIC changes the run");
}

/// Runs the simulator binary with `args`; what it prints.
fn run_command(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_octopii-sim"))
        .args(args)
        .output()
        .expect("the simulator binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("the summary is text")
}

/// The binary prints the summary and hash; two processes must print the same.
#[test]
fn the_command_replays_a_seed_across_processes() {
    let run = || run_command(&["cluster", "--seed", "9", "--ops", "100", "--faults", "full"]);
    let (first, second) = (run(), run());
    assert!(first.contains("trace hash"), "{first}");
    assert_eq!(first, second);
    let in_process = run_cluster(&ClusterRunConfig { seed: 9, ops: 100, ..ClusterRunConfig::default() });
    let hash = in_process.expect("a valid config").trace_hash;
    assert!(first.contains(&format!("{hash:08x}")), "{first}");
}

/// Over QUIC too: two processes (two different real-clock epochs, two
/// address-space layouts) give byte-identical datagrams.
#[test]
fn the_command_replays_a_quic_seed_across_processes() {
    let run = || run_command(&["cluster", "--seed", "9", "--ops", "60", "--faults", "full", "--quic"]);
    let (first, second) = (run(), run());
    assert!(first.contains("trace hash"), "{first}");
    assert_eq!(first, second);
}
