//! Helpers shared by the simulator's tests: which seeds to run, a cluster
//! per seed, failure messages that name the seed and the command replaying
//! it, and the addresses and key seeds of nodes on an in-memory network.
//!
//! `CLUSTER_SEED=N` runs only seed N; `CLUSTER_SEED_COUNT=K` runs K seeds
//! instead of each test's default.

// Each test file uses a different subset of these helpers.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use octopii_core::Reply;
use octopii_sim::cluster::{ClusterConfig, ClusterSim, Handle, Outcome};

/// Where node `node` listens on an in-memory network.
pub fn address(node: u64) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, node as u8), 4000))
}

/// A 32-byte seed for node `node`, told apart by `tag` (keys, TLS, runs).
pub fn seed(tag: u8, node: u64) -> [u8; 32] {
    let mut seed = [tag; 32];
    seed[..8].copy_from_slice(&node.to_le_bytes());
    seed
}

/// A generous deadline for things that take a few election timeouts.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The seeds a test runs: `CLUSTER_SEED` alone if set, else
/// `CLUSTER_SEED_COUNT` (or `default_count`) seeds from 0.
pub fn seeds(default_count: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("CLUSTER_SEED").ok().and_then(|text| text.parse().ok()) {
        return vec![seed];
    }
    let count =
        std::env::var("CLUSTER_SEED_COUNT").ok().and_then(|text| text.parse().ok()).unwrap_or(default_count);
    (0..count).collect()
}

/// Whether the tests of known core bugs run (`OCTOPII_KNOWN_BUGS=1`); a
/// test of a known bug returns at once otherwise, so the suite stays green
/// until the bug is fixed.
pub fn known_bugs() -> bool {
    let enabled = std::env::var("OCTOPII_KNOWN_BUGS").is_ok_and(|value| value == "1");
    if !enabled {
        eprintln!("skipped: a known core bug; run with OCTOPII_KNOWN_BUGS=1");
    }
    enabled
}

/// The command that replays one seed of a scripted test.
pub fn replay(test_file: &str, test: &str, seed: u64) -> String {
    format!("CLUSTER_SEED={seed} cargo test -p octopii-sim --test {test_file} {test} -- --exact")
}

/// A cluster for a scripted test, its replay command set.
pub fn cluster(test_file: &str, test: &str, config: ClusterConfig) -> ClusterSim {
    let seed = config.seed;
    // OCTOPII_TRACE=1 prints the run's trace, to debug one seed.
    let echo = std::env::var_os("OCTOPII_TRACE").is_some();
    let sim = if echo { ClusterSim::new_echoing(config) } else { ClusterSim::new(config) };
    let mut sim = sim.expect("the test's config is valid");
    sim.set_replay(replay(test_file, test, seed));
    sim
}

/// Panics with the violation, if the run found one.
pub fn assert_clean(sim: &ClusterSim) {
    if let Some(violation) = sim.violation() {
        panic!("{violation}");
    }
}

/// Panics, naming the seed and the replay command, unless `ok`.
#[track_caller]
pub fn check(sim: &ClusterSim, ok: bool, what: &str) {
    assert_clean(sim);
    if !ok {
        panic!(
            "seed {}: {what} (at {:?})\nreplay: {}\nstats: {:?}",
            sim.seed(),
            sim.now(),
            sim.replay_command(),
            sim.stats()
        );
    }
}

/// Waits for a leader; panics if none within [`SETTLE`].
#[track_caller]
pub fn leader(sim: &mut ClusterSim) -> u64 {
    let leader = sim.await_leader(SETTLE);
    check(sim, leader.is_some(), "no leader elected");
    leader.unwrap_or_default()
}

/// Proposes `command` until acknowledged; returns the state machine's answer.
#[track_caller]
pub fn write(sim: &mut ClusterSim, command: &str) -> Result<Bytes, String> {
    match sim.write(command.as_bytes(), SETTLE) {
        Ok(result) => result,
        Err(error) => {
            check(sim, false, &error);
            unreachable!("check panics")
        }
    }
}

/// Runs until `handle` has an outcome, at most [`SETTLE`]; returns it.
#[track_caller]
pub fn finish(sim: &mut ClusterSim, handle: Handle) -> Outcome {
    let done = sim.run_until(SETTLE, |sim| sim.is_done(handle));
    check(sim, done, "a command got no outcome");
    sim.outcome(handle).cloned().unwrap_or(Outcome::Lost)
}

/// The value a finished read returned, if it succeeded.
pub fn read_value(outcome: &Outcome) -> Option<Bytes> {
    match outcome {
        Outcome::Replied(Reply::Queried(Ok(Ok(value)))) => Some(value.clone()),
        _ => None,
    }
}

/// Checks that the cluster converges and holds every acknowledged write.
#[track_caller]
pub fn converge(sim: &mut ClusterSim, marker: &str) {
    let result = sim.check_converged(marker.as_bytes(), Duration::from_secs(30));
    if let Err(message) = result {
        check(sim, false, &format!("no convergence: {message}"));
    }
    assert_clean(sim);
}
