//! What one write costs the cluster.
//!
//! A commit costs no sync of its own. raft-rs reports a new commit index
//! as a hard state change that needs no sync; written and synced as its
//! own batch, it made every write cost each node two syncs, and the next
//! proposal waited behind the commit's sync (a lone client's latency
//! nearly doubled).
//!
//! Nor does it cost a message round of its own: raft-rs would send each
//! new commit index to every follower at once (and each follower
//! answers). The next append carries it instead, and when writes pause the
//! leader sends it about a millisecond later, so followers still apply
//! promptly.

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

#[test]
fn sequential_writes_cost_one_append_and_one_answer_per_follower() {
    // Heartbeats every 200 ms: few enough not to blur the count.
    let config =
        ClusterConfig { seed: 3, heartbeat_ticks: 20, election_ticks: 60, ..ClusterConfig::default() };
    let mut sim = ClusterSim::new(config).expect("a valid config");
    sim.set_replay("the message cost test".into());
    assert_eq!(sim.write(b"SET warm up", TIMEOUT), Ok(Ok(Bytes::from_static(b"OK"))));
    let (sent_before, started) = (sim.stats().network.sent, sim.now());
    for index in 0..WRITES {
        let answer = sim.write(format!("SET k{index} v").as_bytes(), TIMEOUT);
        assert_eq!(answer, Ok(Ok(Bytes::from_static(b"OK"))));
    }
    let sent = sim.stats().network.sent - sent_before;
    let heartbeat_rounds = ((sim.now() - started).as_millis() / 200 + 1) as u64;
    // Per write: an append to each of the 2 followers and their answers
    // (4); raft-rs's own commit broadcast made it 8. Heartbeats add 4 a
    // round.
    let bound = 4 * WRITES + 4 * heartbeat_rounds + WRITES / 10;
    assert!(sent <= bound, "{sent} messages for {WRITES} writes (bound {bound})");
    assert!(sim.violation().is_none(), "{:?}", sim.violation());
}

#[test]
fn followers_apply_a_lone_write_long_before_the_next_heartbeat() {
    for seed in [4, 5] {
        // Heartbeats every 500 ms; one-way delays up to 2 ms.
        let config =
            ClusterConfig { seed, heartbeat_ticks: 50, election_ticks: 150, ..ClusterConfig::default() };
        let mut sim = ClusterSim::new(config).expect("a valid config");
        sim.set_replay(format!("the lone write test, seed {seed}"));
        assert_eq!(sim.write(b"SET warm up", TIMEOUT), Ok(Ok(Bytes::from_static(b"OK"))));
        sim.run_for(Duration::from_secs(1));
        assert_eq!(sim.write(b"SET lone write", TIMEOUT), Ok(Ok(Bytes::from_static(b"OK"))));
        sim.run_for(Duration::from_millis(6));
        for id in sim.node_ids() {
            let reply = sim.call(id, Command::Query(Bytes::from_static(b"GET lone")), TIMEOUT);
            assert_eq!(
                reply,
                Some(Reply::Queried(Ok(Ok(Bytes::from_static(b"write"))))),
                "seed {seed}: node {id}"
            );
        }
    }
}
