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
        Arc::new(Bulky { bytes: state_bytes, applied: Mutex::new(0), snapshots })
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
fn a_snapshot_too_large_for_the_log_is_not_retried_every_threshold_entries() {
    // 9 MiB exceeds a log entry: the attempt fails, and the next waits for
    // as many bytes of commands (before: one more 9 MiB copy every 10
    // entries, 60 in all).
    let taken = snapshots_taken(9 << 20);
    assert!((3..=10).contains(&taken), "{taken} snapshot attempts on 3 nodes");
}
