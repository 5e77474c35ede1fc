//! Raft proven as clusters in the simulator: elections, replication,
//! catch-up from the log and from a snapshot, restarts, apply errors,
//! membership changes, leader transfer, partitions and reads cut off from
//! the majority. Each test runs over several seeds (`CLUSTER_SEED_COUNT`
//! for more, `CLUSTER_SEED` for one), and the simulator's oracles check
//! every step: one leader per term, replicas agreeing on one committed
//! sequence, acknowledged writes and linearizable reads in real-time
//! order, every command answered within the request timeout, and at the
//! end every member holding every acknowledged write.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{SETTLE, check, cluster, converge, finish, leader, read_value, seeds, write};
use octopii_core::raft::NodeError;
use octopii_core::{Command, Membership, Reply};
use octopii_sim::cluster::{ClusterConfig, ClusterSim, Outcome};

const FILE: &str = "cluster_raft";

fn config(seed: u64) -> ClusterConfig {
    // Odd seeds run real QUIC over the simulated datagram network, even
    // seeds hand messages to the network whole: every scenario runs both.
    ClusterConfig { seed, quic: seed % 2 == 1, ..ClusterConfig::default() }
}

/// A node other than `not`, among the first three.
fn other(not: u64) -> u64 {
    if not == 1 { 2 } else { 1 }
}

fn ok() -> Result<Bytes, String> {
    Ok(Bytes::from_static(b"OK"))
}

/// Runs until every running node has applied the whole committed sequence.
fn all_caught_up(sim: &mut ClusterSim) {
    let done = sim.run_until(SETTLE, |sim| {
        let end = sim.committed_len();
        sim.running_nodes().iter().all(|&id| sim.applied_position(id) == Some(end))
    });
    let positions: Vec<(u64, Option<u64>)> =
        sim.running_nodes().into_iter().map(|id| (id, sim.applied_position(id))).collect();
    let end = sim.committed_len();
    check(sim, done, &format!("the running nodes did not all catch up to {end}: {positions:?}"));
}

#[test]
fn elects_a_leader_and_another_after_it_crashes() {
    for seed in seeds(4) {
        let mut sim = cluster(FILE, "elects_a_leader_and_another_after_it_crashes", config(seed));
        let first = leader(&mut sim);
        let term = sim.term(first).unwrap_or_default();
        assert_eq!(write(&mut sim, "SET a 1"), ok());
        sim.crash(first);
        let elected = sim.run_until(SETTLE, |sim| sim.leader().is_some_and(|leader| leader != first));
        check(&sim, elected, "no new leader after the leader crashed");
        let second = sim.leader().unwrap_or_default();
        check(&sim, sim.term(second) > Some(term), "the new leader's term is not higher");
        assert_eq!(write(&mut sim, "SET a 2"), ok());
        sim.restart(first);
        converge(&mut sim, "SET final 1");
        check(&sim, sim.stats().elections >= 2, "two terms had leaders");
    }
}

#[test]
fn replicates_and_commits_on_every_node() {
    for nodes in [3, 5, 7] {
        for seed in seeds(2) {
            let config = ClusterConfig { nodes, ..config(seed) };
            let mut sim = cluster(FILE, "replicates_and_commits_on_every_node", config);
            let leader = leader(&mut sim);
            for index in 0..30 {
                assert_eq!(write(&mut sim, &format!("SET k{index} v{index}")), ok());
            }
            all_caught_up(&mut sim);
            let follower = other(leader);
            let refused = sim.call(follower, Command::Propose(Bytes::from_static(b"SET x y")), SETTLE);
            let expected = Reply::Proposed(Err(NodeError::NotLeader { leader: Some(leader) }));
            check(&sim, refused == Some(expected), "a follower must refuse and name the leader");
            for id in sim.node_ids() {
                let read = sim.read(id, b"k29");
                let outcome = finish(&mut sim, read);
                check(
                    &sim,
                    read_value(&outcome) == Some(Bytes::from_static(b"v29")),
                    "a read saw the last write",
                );
            }
            converge(&mut sim, "SET final 1");
        }
    }
}

#[test]
fn a_crashed_follower_catches_up_from_the_log() {
    for seed in seeds(3) {
        let mut sim = cluster(FILE, "a_crashed_follower_catches_up_from_the_log", config(seed));
        let follower = other(leader(&mut sim));
        for index in 0..5 {
            assert_eq!(write(&mut sim, &format!("SET a{index} 1")), ok());
        }
        sim.crash(follower);
        for index in 0..40 {
            assert_eq!(write(&mut sim, &format!("SET b{index} 2")), ok());
        }
        let taken = sim.stats().snapshots_taken;
        sim.restart(follower);
        all_caught_up(&mut sim);
        check(
            &sim,
            sim.stats().snapshots_taken == taken,
            "no compaction: the follower caught up from the log",
        );
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn a_follower_down_across_compaction_catches_up_from_a_snapshot() {
    for seed in seeds(3) {
        let config = ClusterConfig { snapshot_lag_threshold: 20, ..config(seed) };
        let mut sim = cluster(FILE, "a_follower_down_across_compaction_catches_up_from_a_snapshot", config);
        let follower = other(leader(&mut sim));
        assert_eq!(write(&mut sim, "SET early 1"), ok());
        sim.crash(follower);
        for index in 0..70 {
            assert_eq!(write(&mut sim, &format!("SET k{} v{index}", index % 9)), ok());
        }
        let restored = sim.stats().snapshots_restored;
        sim.restart(follower);
        all_caught_up(&mut sim);
        // Its own snapshot at recovery, then the leader's.
        check(&sim, sim.stats().snapshots_restored >= restored + 2, "the follower installed a snapshot");
        for index in 0..10 {
            assert_eq!(write(&mut sim, &format!("SET after{index} 1")), ok());
        }
        let read = sim.read(follower, b"early");
        let outcome = finish(&mut sim, read);
        check(&sim, read_value(&outcome) == Some(Bytes::from_static(b"1")), "state from before the snapshot");
        converge(&mut sim, "SET final 1");
    }
}

/// A follower that catches up by a snapshot alone tells raft-rs it applied
/// it: `Status.applied` is right, and its election timeout, alone after the
/// others crash, does not read entries the snapshot compacted (raft-rs
/// panicked there before the core reported the snapshot applied).
#[test]
fn a_follower_restored_from_a_snapshot_has_applied_it() {
    for seed in seeds(3) {
        let config = ClusterConfig { snapshot_lag_threshold: 20, ..config(seed) };
        let mut sim = cluster(FILE, "a_follower_restored_from_a_snapshot_has_applied_it", config);
        let leader = leader(&mut sim);
        let follower = other(leader);
        let third = 6 - leader - follower;
        sim.isolate(follower);
        // One entry per write: the leader snapshots at indexes 21, 41, 61
        // (the bootstrap snapshot is at 1). Ending the log at 61, the
        // follower catches up by that snapshot alone.
        let mut index = 0;
        while sim.status(leader).is_some_and(|status| status.commit < 61) {
            assert_eq!(write(&mut sim, &format!("SET k{index} v")), ok());
            index += 1;
        }
        let commit = sim.status(leader).map(|status| status.commit);
        check(&sim, commit == Some(61), &format!("the log ends at a snapshot: {commit:?}"));
        sim.heal();
        all_caught_up(&mut sim);
        sim.run_for(Duration::from_millis(100));
        let status = sim.status(follower);
        let applied = status.as_ref().is_some_and(|status| status.applied == status.commit);
        check(&sim, applied, &format!("Status says the snapshot is not applied: {status:?}"));
        sim.crash(leader);
        sim.crash(third);
        sim.run_for(Duration::from_secs(2));
        sim.restart(leader);
        sim.restart(third);
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn every_node_restarting_keeps_every_acknowledged_write() {
    for seed in seeds(3) {
        let config = ClusterConfig { snapshot_lag_threshold: 20, ..config(seed) };
        let mut sim = cluster(FILE, "every_node_restarting_keeps_every_acknowledged_write", config);
        leader(&mut sim);
        for index in 0..50 {
            assert_eq!(write(&mut sim, &format!("SET k{} v{index}", index % 17)), ok());
        }
        // A power loss everywhere at once: only synced bytes survive.
        for id in sim.node_ids() {
            sim.crash(id);
        }
        for id in sim.node_ids() {
            sim.restart(id);
        }
        for key in 0..17u64 {
            let last = (0..50u64).filter(|index| index % 17 == key).max().unwrap_or_default();
            let node = 1 + key % 3;
            let read = sim.read(node, format!("k{key}").as_bytes());
            let outcome = finish(&mut sim, read);
            let expected = Bytes::from(format!("v{last}"));
            let survived = read_value(&outcome) == Some(expected);
            check(&sim, survived, &format!("an acknowledged write survived the restart: {outcome:?}"));
        }
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn apply_errors_go_back_to_the_proposer_and_the_cluster_keeps_going() {
    for seed in seeds(3) {
        let mut sim =
            cluster(FILE, "apply_errors_go_back_to_the_proposer_and_the_cluster_keeps_going", config(seed));
        leader(&mut sim);
        let unknown = write(&mut sim, "BOGUS command");
        check(
            &sim,
            unknown.as_ref().is_err_and(|error| error.contains("unknown command")),
            "an error result",
        );
        let no_key = write(&mut sim, "SET");
        check(&sim, no_key.is_err(), "SET without a key is an error result");
        assert_eq!(write(&mut sim, "SET a 1"), ok());
        assert_eq!(write(&mut sim, "GET a"), Ok(Bytes::from_static(b"1")));
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn a_learner_is_added_caught_up_and_promoted() {
    for seed in seeds(3) {
        let config = ClusterConfig { snapshot_lag_threshold: 20, ..config(seed) };
        let mut sim = cluster(FILE, "a_learner_is_added_caught_up_and_promoted", config);
        let first = leader(&mut sim);
        for index in 0..10 {
            assert_eq!(write(&mut sim, &format!("SET k{index} v")), ok());
        }
        sim.add_node(4).expect("id 4 is free");
        let added =
            sim.call(first, Command::ChangeMembership { change: Membership::AddLearner, node: 4 }, SETTLE);
        let learner = matches!(&added, Some(Reply::MembershipChanged(Ok((_, learners)))) if learners == &[4]);
        check(&sim, learner, &format!("node 4 is a learner: {added:?}"));
        // The learner catches up (by a snapshot: the log starts after the
        // bootstrap snapshot), then follows new entries.
        let end = sim.committed_len();
        let caught_up = sim.run_until(SETTLE, |sim| sim.applied_position(4) == Some(end));
        check(&sim, caught_up, "the learner caught up");
        for index in 0..25 {
            assert_eq!(write(&mut sim, &format!("SET more{index} v")), ok());
        }
        all_caught_up(&mut sim);
        let leader = common::leader(&mut sim);
        let promoted =
            sim.call(leader, Command::ChangeMembership { change: Membership::AddVoter, node: 4 }, SETTLE);
        let voter = matches!(&promoted, Some(Reply::MembershipChanged(Ok((voters, learners))))
            if voters.contains(&4) && learners.is_empty());
        check(&sim, voter, &format!("node 4 is a voter: {promoted:?}"));
        // Four voters need three: with one of the first three down, node 4's
        // acknowledgements count.
        let leader = common::leader(&mut sim);
        let down = (1..=3).find(|&id| id != leader).unwrap_or(1);
        sim.crash(down);
        assert_eq!(write(&mut sim, "SET with four 1"), ok());
        sim.restart(down);
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn a_removed_node_leaves_the_configuration() {
    for seed in seeds(3) {
        let mut sim = cluster(FILE, "a_removed_node_leaves_the_configuration", config(seed));
        let leader = leader(&mut sim);
        assert_eq!(write(&mut sim, "SET a 1"), ok());
        let victim = other(leader);
        let removed =
            sim.call(leader, Command::ChangeMembership { change: Membership::Remove, node: victim }, SETTLE);
        let gone =
            matches!(&removed, Some(Reply::MembershipChanged(Ok((voters, _)))) if !voters.contains(&victim));
        check(&sim, gone, &format!("the node left the voters: {removed:?}"));
        // Running on, the removed node must not disturb the others.
        sim.run_for(Duration::from_secs(2));
        sim.stop(victim);
        for index in 0..10 {
            assert_eq!(write(&mut sim, &format!("SET b{index} 2")), ok());
        }
        let leader = common::leader(&mut sim);
        let voters = sim.status(leader).map(|status| status.voters);
        check(
            &sim,
            voters.as_ref().is_some_and(|voters| voters.len() == 2),
            &format!("two voters: {voters:?}"),
        );
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn leadership_moves_to_the_transfer_target() {
    for seed in seeds(3) {
        let mut sim = cluster(FILE, "leadership_moves_to_the_transfer_target", config(seed));
        let leader = leader(&mut sim);
        assert_eq!(write(&mut sim, "SET a 1"), ok());
        let target = other(leader);
        let asked = sim.call(leader, Command::TransferLeader(target), SETTLE);
        check(&sim, asked == Some(Reply::Done(Ok(()))), "the transfer was handed to Raft");
        let moved = sim.run_until(SETTLE, |sim| sim.leader() == Some(target));
        check(&sim, moved, "the target leads");
        let status = sim.status(target);
        check(
            &sim,
            status.as_ref().is_some_and(|status| status.is_leader()),
            "Status on the target says it leads",
        );
        let handle = sim.submit(target, Command::Propose(Bytes::from_static(b"SET a 2")));
        let outcome = finish(&mut sim, handle);
        check(&sim, outcome == Outcome::Replied(Reply::Proposed(Ok(ok()))), "the new leader commits");
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn an_isolated_leader_answers_no_read() {
    for seed in seeds(3) {
        let config = config(seed);
        let request_timeout = config.request_timeout;
        let mut sim = cluster(FILE, "an_isolated_leader_answers_no_read", config);
        let old = leader(&mut sim);
        assert_eq!(write(&mut sim, "SET k before"), ok());
        sim.isolate(old);
        let asked_at = sim.now();
        let fence = sim.submit(old, Command::ReadIndex);
        let read = sim.read(old, b"k");
        let query = sim.submit(old, Command::LinearizableQuery(Bytes::from_static(b"GET k")));
        // The others elect a leader of a higher term and move on.
        let elected = sim.run_until(SETTLE, |sim| sim.leader().is_some_and(|leader| leader != old));
        check(&sim, elected, "the majority elected a new leader");
        assert_eq!(write(&mut sim, "SET k after"), ok());
        for handle in [fence, read, query] {
            let outcome = finish(&mut sim, handle);
            let refused =
                matches!(&outcome, Outcome::Replied(Reply::ReadIndex(Err(_)) | Reply::Queried(Err(_))));
            check(&sim, refused, &format!("the isolated leader must not answer a read: {outcome:?}"));
        }
        check(
            &sim,
            sim.now() <= asked_at + request_timeout + Duration::from_secs(1),
            "bounded by the timeout",
        );
        let fresh = sim.read(sim.leader().unwrap_or(old), b"k");
        let outcome = finish(&mut sim, fresh);
        check(
            &sim,
            read_value(&outcome) == Some(Bytes::from_static(b"after")),
            "the new leader reads the write",
        );
        sim.heal();
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn a_minority_commits_nothing_and_partitions_heal() {
    for seed in seeds(3) {
        let config = ClusterConfig { nodes: 5, ..config(seed) };
        let mut sim = cluster(FILE, "a_minority_commits_nothing_and_partitions_heal", config);
        let old = leader(&mut sim);
        assert_eq!(write(&mut sim, "SET k 0"), ok());
        let buddy = other(old);
        let majority: Vec<u64> = sim.node_ids().into_iter().filter(|&id| id != old && id != buddy).collect();
        sim.partition(&[&[old, buddy], &majority]);
        let stranded = sim.submit(old, Command::Propose(Bytes::from_static(b"SET k minority")));
        let elected =
            sim.run_until(SETTLE, |sim| sim.leader().is_some_and(|leader| majority.contains(&leader)));
        check(&sim, elected, "the majority elected a leader");
        assert_eq!(write(&mut sim, "SET k majority"), ok());
        let outcome = finish(&mut sim, stranded);
        let committed = matches!(&outcome, Outcome::Replied(Reply::Proposed(Ok(_))));
        check(&sim, !committed, &format!("the minority's leader committed: {outcome:?}"));
        // One direction of one link cut: the cluster keeps committing.
        sim.heal();
        let leader = common::leader(&mut sim);
        sim.cut_link(leader, other(leader));
        for index in 0..10 {
            assert_eq!(write(&mut sim, &format!("SET one-way{index} 1")), ok());
        }
        sim.heal();
        converge(&mut sim, "SET final 1");
        let read = sim.read(old, b"k");
        let outcome = finish(&mut sim, read);
        check(
            &sim,
            read_value(&outcome) == Some(Bytes::from_static(b"majority")),
            "the majority's write won",
        );
    }
}

/// A snapshot above the transport's inline limit (1 MiB) travels to a
/// lagging follower on a Shipping Lane stream of its own, verified by
/// SHA-256, over real QUIC with the network's faults.
#[test]
fn a_snapshot_larger_than_a_message_reaches_a_lagging_follower_over_quic() {
    for seed in seeds(2) {
        let config = ClusterConfig { snapshot_lag_threshold: 20, quic: true, ..config(seed) };
        let name = "a_snapshot_larger_than_a_message_reaches_a_lagging_follower_over_quic";
        let mut sim = cluster(FILE, name, config);
        let follower = other(leader(&mut sim));
        sim.crash(follower);
        let value = "v".repeat(100_000);
        for index in 0..40 {
            assert_eq!(write(&mut sim, &format!("SET big{} {value}", index % 25)), ok());
        }
        let restored = sim.stats().snapshots_restored;
        sim.restart(follower);
        all_caught_up(&mut sim);
        check(&sim, sim.stats().snapshots_restored >= restored + 2, "the follower installed a snapshot");
        let read = sim.read(follower, b"big24");
        let outcome = finish(&mut sim, read);
        check(&sim, read_value(&outcome) == Some(Bytes::from(value.clone())), "the snapshot's state");
        converge(&mut sim, "SET final 1");
    }
}

#[test]
fn over_quic_datagrams_grow_to_what_the_network_carries_and_no_further() {
    for seed in seeds(2) {
        // The network drops datagrams above 1500 bytes; the nodes probe up
        // to their default bound, 8952.
        let config = ClusterConfig { quic: true, ..config(seed) };
        let name = "over_quic_datagrams_grow_to_what_the_network_carries_and_no_further";
        let mut sim = cluster(FILE, name, config);
        let leader = leader(&mut sim);
        let value = "v".repeat(10_000);
        for index in 0..20 {
            assert_eq!(write(&mut sim, &format!("SET big{index} {value}")), ok());
        }
        sim.run_for(Duration::from_secs(2));
        check(&sim, sim.stats().network.oversized > 0, "probes above the path's MTU were lost");
        for peer in sim.node_ids().into_iter().filter(|&id| id != leader) {
            let mtu = match sim.call(leader, Command::PeerStatus(peer), SETTLE) {
                Some(Reply::Peer(Some(status))) => status.link.map(|link| link.mtu),
                _ => None,
            };
            let settled = mtu.is_some_and(|mtu| (1452..=1500).contains(&mtu));
            check(&sim, settled, &format!("the link {leader} -> {peer} settled at {mtu:?}"));
        }
        converge(&mut sim, "SET final 1");
    }
}
