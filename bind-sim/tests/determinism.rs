//! A run is a function of its seed: the same seed gives the same trace hash
//! and summary, in one process and across processes; different seeds give
//! different runs.

use std::process::Command;

use octopii_sim::wal::{FaultLevel, WalRunConfig, run_corruption, run_wal};

fn config(seed: u64, faults: FaultLevel) -> WalRunConfig {
    WalRunConfig { seed, commands: 250, faults, ..WalRunConfig::default() }
}

#[test]
fn the_same_seed_replays_exactly() {
    for faults in [FaultLevel::None, FaultLevel::Crash, FaultLevel::Full] {
        for seed in [0, 7, 123_456_789] {
            let first = run_wal(&config(seed, faults)).unwrap();
            let second = run_wal(&config(seed, faults)).unwrap();
            assert_eq!(first.trace_hash, second.trace_hash, "seed {seed} at {faults}");
            assert_eq!(first.summary, second.summary, "seed {seed} at {faults}");
            assert_eq!(first, second, "violations replay too");
        }
    }
    assert_eq!(run_corruption(5), run_corruption(5));
}

#[test]
fn different_seeds_give_different_runs() {
    let hashes: std::collections::BTreeSet<u32> =
        (0..24).map(|seed| run_wal(&config(seed, FaultLevel::Full)).unwrap().trace_hash).collect();
    assert_eq!(hashes.len(), 24, "a trace hash collided or two seeds ran alike");
    let quiet = run_wal(&config(1, FaultLevel::None)).unwrap();
    let faulty = run_wal(&config(1, FaultLevel::Full)).unwrap();
    assert_ne!(quiet.trace_hash, faulty.trace_hash, "the fault level changes the run");
}

/// The binary prints the summary and hash; two processes (two epochs of the
/// real clock) must print the same.
#[test]
fn the_command_replays_a_seed_across_processes() {
    let run = || {
        let output = Command::new(env!("CARGO_BIN_EXE_octopii-sim"))
            .args(["wal", "--seed", "11", "--ops", "150", "--faults", "none"])
            .output()
            .expect("the simulator binary runs");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("the summary is text")
    };
    let (first, second) = (run(), run());
    assert!(first.contains("trace hash"), "{first}");
    assert_eq!(first, second);
    let in_process =
        run_wal(&WalRunConfig { seed: 11, commands: 150, faults: FaultLevel::None, ..Default::default() });
    assert!(first.contains(&format!("{:08x}", in_process.unwrap().trace_hash)), "{first}");
}
