//! The oracles catch what they are for: a state machine that answers
//! differently on different replicas, one whose states drift apart while
//! its answers agree, and a seed and replay command in every report. (The
//! stale-read and ordering checks have unit tests next to the oracle.)

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use octopii_core::raft::state_machine::StateMachineTrait;
use octopii_sim::cluster::{ClusterConfig, ClusterSim, StateMachineFactory};

/// Answers with the id of the node it runs on: replicas disagree.
#[derive(Debug)]
struct Chatty {
    node: u64,
}

impl StateMachineTrait for Chatty {
    fn apply(&self, _command: &[u8]) -> Result<Bytes, String> {
        Ok(Bytes::from(format!("node {}", self.node)))
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&self, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Answers `OK` everywhere but counts in its state how often it ran on
/// each node: the answers agree, the states do not.
#[derive(Debug)]
struct Drifting {
    node: u64,
    applied: Mutex<u64>,
}

impl StateMachineTrait for Drifting {
    fn apply(&self, _command: &[u8]) -> Result<Bytes, String> {
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) += self.node;
        Ok(Bytes::from_static(b"OK"))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.applied.lock().unwrap_or_else(PoisonError::into_inner).to_le_bytes().to_vec()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = data.try_into().map_err(|_| String::from("bad snapshot"))?;
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) = u64::from_le_bytes(bytes);
        Ok(())
    }
}

fn run(factory: StateMachineFactory, threshold: u64) -> ClusterSim {
    let config = ClusterConfig { seed: 3, snapshot_lag_threshold: threshold, ..ClusterConfig::default() };
    let mut sim = ClusterSim::with_state_machines(config, factory).expect("a valid config");
    sim.set_replay(String::from("the oracle test"));
    for index in 0..30 {
        if sim.write(format!("op {index}").as_bytes(), Duration::from_secs(5)).is_err() {
            break;
        }
    }
    sim
}

#[test]
fn replicas_answering_differently_are_caught() {
    let sim = run(Box::new(|node| Arc::new(Chatty { node })), 1000);
    let violation = sim.violation().expect("the agreement oracle fires");
    assert!(violation.message.contains("replicas disagree at position 1"), "{violation}");
    assert_eq!(violation.seed, 3);
    assert_eq!(violation.replay, "the oracle test");
}

#[test]
fn replica_states_drifting_apart_are_caught() {
    // With compaction, two snapshots at one position differ.
    let sim = run(Box::new(|node| Arc::new(Drifting { node, applied: Mutex::new(0) })), 10);
    let violation = sim.violation().expect("the state oracle fires");
    assert!(violation.message.contains("states differ at position"), "{violation}");
    // Without compaction, the end-of-run check compares states.
    let mut sim = run(Box::new(|node| Arc::new(Drifting { node, applied: Mutex::new(0) })), 1000);
    assert!(sim.violation().is_none());
    let error = sim.check_converged(b"op final", Duration::from_secs(10)).expect_err("the states differ");
    assert!(error.contains("differs from the committed sequence"), "{error}");
}
