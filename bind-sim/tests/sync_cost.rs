//! A commit costs no sync of its own. raft-rs reports a new commit index
//! as a hard state change that needs no sync; written and synced as its
//! own batch, it made every write cost each node two syncs, and the next
//! proposal waited behind the commit's sync (a lone client's latency
//! nearly doubled).

use std::time::Duration;

use bytes::Bytes;
use octopii_core::wal::WalStats;
use octopii_core::{Command, Reply};
use octopii_sim::cluster::{ClusterConfig, ClusterSim};

const WRITES: u64 = 100;
const TIMEOUT: Duration = Duration::from_secs(5);

fn stats(sim: &mut ClusterSim, id: u64) -> WalStats {
    match sim.call(id, Command::Stats, TIMEOUT) {
        Some(Reply::Stats(stats)) => stats,
        other => panic!("node {id} answered Stats with {other:?}"),
    }
}

#[test]
fn sequential_writes_cost_one_sync_each_on_every_node() {
    for seed in [1, 2] {
        let config = ClusterConfig { seed, quic: seed % 2 == 1, ..ClusterConfig::default() };
        let mut sim = ClusterSim::new(config).expect("a valid config");
        sim.set_replay(format!("the sync cost test, seed {seed}"));
        assert_eq!(sim.write(b"SET warm up", TIMEOUT), Ok(Ok(Bytes::from_static(b"OK"))));
        let before: Vec<WalStats> = sim.node_ids().into_iter().map(|id| stats(&mut sim, id)).collect();
        for index in 0..WRITES {
            let answer = sim.write(format!("SET k{index} v").as_bytes(), TIMEOUT);
            assert_eq!(answer, Ok(Ok(Bytes::from_static(b"OK"))), "seed {seed}");
        }
        for (id, before) in sim.node_ids().into_iter().zip(before) {
            let batches = stats(&mut sim, id).batches - before.batches;
            // One batch per write, a few more for elections or heartbeats
            // that carried news; two per write before the fix.
            assert!(batches <= WRITES + WRITES / 10, "seed {seed}: node {id} synced {batches} batches");
        }
        assert!(sim.violation().is_none(), "{:?}", sim.violation());
    }
}
