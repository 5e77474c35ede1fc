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

/// A 3-node cluster of [`Bulky`] state machines of `state_bytes`, with a
/// snapshot threshold of 10 entries, after `writes` writes of 6-byte
/// commands; with the counts of snapshots taken and large restores.
fn bulky_cluster(
    seed: u64,
    state_bytes: usize,
    writes: usize,
) -> (ClusterSim, Arc<AtomicU64>, Arc<AtomicU64>) {
    let (snapshots, restores) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let counters = (snapshots.clone(), restores.clone());
    let factory = Box::new(move |_node| {
        let (snapshots, restores) = counters.clone();
        Arc::new(Bulky { bytes: state_bytes, applied: Mutex::new(0), snapshots, restores })
            as Arc<dyn StateMachineTrait>
    });
    let config = ClusterConfig { seed, snapshot_lag_threshold: 10, ..ClusterConfig::default() };
    let mut sim = ClusterSim::with_state_machines(config, factory).expect("a valid config");
    sim.set_replay(format!("the snapshot policy test, seed {seed}"));
    for index in 0..writes {
        let answer = sim.write(format!("op {index:03}").as_bytes(), Duration::from_secs(5));
        assert_eq!(answer, Ok(Ok(Bytes::from_static(b"OK"))));
    }
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    (sim, snapshots, restores)
}

#[test]
fn a_large_state_is_not_snapshotted_every_threshold_entries() {
    // Each node takes its first snapshot at 10 entries, then waits for
    // 64 KiB of commands. Every 10 entries would be 20 per node, 60 in
    // all. (The simulator's state oracle takes a few snapshots of its own
    // to compare replicas.)
    let (_sim, snapshots, _) = bulky_cluster(5, 64 * 1024, 200);
    let taken = snapshots.load(Ordering::Relaxed);
    assert!((3..=10).contains(&taken), "{taken} snapshots on 3 nodes");
}

#[test]
fn a_snapshot_larger_than_a_log_entry_is_stored_in_parts_and_recovered() {
    // 9 MiB exceeds one log entry (8 MiB): the snapshot is written as part
    // records, and a node restarted after it rebuilds its state from them.
    let (mut sim, snapshots, restores) = bulky_cluster(7, 9 << 20, 30);
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
