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

/// A state of 64 KiB whatever the commands; counts its snapshots.
#[derive(Debug)]
struct Bulky {
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
        let mut state = vec![0; 64 * 1024];
        state[..8]
            .copy_from_slice(&self.applied.lock().unwrap_or_else(PoisonError::into_inner).to_le_bytes());
        state
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let count = data.first_chunk::<8>().ok_or("short snapshot")?;
        *self.applied.lock().unwrap_or_else(PoisonError::into_inner) = u64::from_le_bytes(*count);
        Ok(())
    }
}

#[test]
fn a_large_state_is_not_snapshotted_every_threshold_entries() {
    let snapshots = Arc::new(AtomicU64::new(0));
    let counter = snapshots.clone();
    let config = ClusterConfig { seed: 5, snapshot_lag_threshold: 10, ..ClusterConfig::default() };
    let factory = Box::new(move |_node| {
        Arc::new(Bulky { applied: Mutex::new(0), snapshots: counter.clone() }) as Arc<dyn StateMachineTrait>
    });
    let mut sim = ClusterSim::with_state_machines(config, factory).expect("a valid config");
    sim.set_replay(String::from("the snapshot policy test"));
    for index in 0..200 {
        let answer = sim.write(format!("op {index:03}").as_bytes(), Duration::from_secs(5));
        assert_eq!(answer, Ok(Ok(Bytes::from_static(b"OK"))));
    }
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
    // 200 commands of 6 bytes: each node takes its first snapshot at 10
    // entries, then waits for 64 KiB of commands. Every 10 entries would
    // be 20 per node, 60 in all. (The simulator's state oracle takes a few
    // snapshots of its own to compare replicas.)
    let taken = snapshots.load(Ordering::Relaxed);
    assert!((3..=10).contains(&taken), "{taken} snapshots on 3 nodes");
}
