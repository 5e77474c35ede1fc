//! Snapshots are amortized: a state much larger than the commands that
//! change it is not written out every `snapshot_lag_threshold` entries.
//! (Each snapshot writes the whole state to the log; taken every 1000
//! entries of a 60k-key store it made the cluster benchmark copy about
//! 60 bytes of snapshot per byte written.)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use octopii_core::raft::state_machine::StateMachineTrait;
use octopii_sim::cluster::{ClusterConfig, ClusterSim};

/// A state of `bytes` once anything is applied; counts its snapshots.
#[derive(Debug)]
struct Bulky {
    bytes: usize,
    applied: Mutex<u64>,
    snapshots: Arc<AtomicU64>,
    /// Restores from a state of `bytes` (not the empty first one).
    restores: Arc<AtomicU64>,
}

impl StateMachineTrait for Bulky {
    fn apply(&self, _command: &[u8]) -> Result<Bytes, String> {
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Ok(Bytes::from_static(b"OK"))
    }

    fn snapshot(&self) -> Vec<u8> {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        let applied = *self.applied.lock().unwrap_or_else(PoisonError::into_inner);
        // Empty at first (a new cluster's first snapshot), then `bytes`.
        let mut state = vec![0; if applied == 0 { 8 } else { self.bytes }];
        state[..8].copy_from_slice(&applied.to_le_bytes());
        state
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        if data.len() == self.bytes {
            self.restores.fetch_add(1, Ordering::Relaxed);
        }
        let count = data.first_chunk::<8>().ok_or("short snapshot")?;
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) = u64::from_le_bytes(*count);
        Ok(())
    }
}

/// Runs 200 writes of 6-byte commands on 3 nodes with a threshold of 10
/// entries; the number of snapshots taken.
fn snapshots_taken(state_bytes: usize) -> u64 {
    let snapshots = Arc::new(AtomicU64::new(0));
    let counter = snapshots.clone();
    let config = ClusterConfig { seed: 5, snapshot_lag_threshold: 10, ..ClusterConfig::default() };
    let factory = Box::new(move |_node| {
        let snapshots = counter.clone();
        Arc::new(Bulky { bytes: state_bytes, applied: Mutex::new(0), snapshots, restores: Arc::default() })
            as Arc<dyn StateMachineTrait>
    });
    let mut sim = ClusterSim::with_state_machines(config, factory).expect("a valid config");
    sim.set_replay(String::from("the snapshot policy test"));
    for index in 0..200 {
        let answer = sim.write(format!("op {index:03}").as_bytes(), Duration::from_secs(5));
        assert_eq!(answer, Ok(Ok(Bytes::from_static(b"OK"))));
    }
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    snapshots.load(Ordering::Relaxed)
}

#[test]
fn a_large_state_is_not_snapshotted_every_threshold_entries() {
    // Each node takes its first snapshot at 10 entries, then waits for
    // 64 KiB of commands. Every 10 entries would be 20 per node, 60 in
    // all. (The simulator's state oracle takes a few snapshots of its own
    // to compare replicas.)
    let taken = snapshots_taken(64 * 1024);
    assert!((3..=10).contains(&taken), "{taken} snapshots on 3 nodes");
}

#[test]
fn a_snapshot_larger_than_a_log_entry_is_stored_in_parts_and_recovered() {
    // 9 MiB exceeds one log entry (8 MiB): the snapshot is written as part
    // records, and a node restarted after it rebuilds its state from them.
    let config = ClusterConfig { seed: 7, snapshot_lag_threshold: 10, ..ClusterConfig::default() };
    let (snapshots, restores) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counters = (snapshots.clone(), restores.clone());
    let factory = Box::new(move |_node| {
        let (snapshots, restores) = counters.clone();
        Arc::new(Bulky { bytes: 9 << 20, applied: Mutex::new(0), snapshots, restores })
            as Arc<dyn StateMachineTrait>
    });
    let mut sim = ClusterSim::with_state_machines(config, factory).expect("a valid config");
    sim.set_replay(String::from("the large snapshot test"));
    for index in 0..30 {
        let answer = sim.write(format!("op {index:03}").as_bytes(), Duration::from_secs(5));
        assert_eq!(answer, Ok(Ok(Bytes::from_static(b"OK"))));
    }
    assert!(snapshots.load(Ordering::Relaxed) >= 3, "every node took its snapshot");
    for id in sim.node_ids() {
        assert!(sim.crash(id));
        assert!(sim.restart(id));
    }
    sim.check_converged(b"op after restarts", Duration::from_secs(10)).expect("the nodes converge");
    assert_eq!(restores.load(Ordering::Relaxed), 3, "each restarted node restored the 9 MiB snapshot");
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    let state = sim.state_machine(1).expect("node 1 runs").snapshot();
    let applied = u64::from_le_bytes(state[..8].try_into().expect("8 bytes"));
    assert_eq!(applied, 31, "30 writes and the marker, from the parts and the log");
}
