//! Custom state machines replicated by a simulated cluster: a counter
//! (`INC`/`GET`, the spec's quick start) and a small service registry (the
//! spec's `RegistryStateMachine`: `REGISTER name address`, `LOOKUP name`),
//! each with its own snapshot format, surviving crashes, compaction and a
//! restart of every node. The oracles compare every replica against the
//! committed sequence and, at the end, against a fresh state machine that
//! replayed it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use common::{check, converge, finish, leader, replay, seeds, write};
use octopii_core::raft::state_machine::StateMachineTrait;
use octopii_core::{Command, Reply};
use octopii_sim::cluster::{ClusterConfig, ClusterSim, Outcome, StateMachineFactory};

const FILE: &str = "cluster_state_machines";

/// The spec's counter: `INC` adds one and answers the new value, `GET`
/// answers it; the snapshot is the value as 8 little-endian bytes.
#[derive(Debug, Default)]
struct Counter {
    value: Mutex<i64>,
}

impl StateMachineTrait for Counter {
    fn apply(&self, command: &[u8]) -> Result<Bytes, String> {
        let mut value = self.value.lock().unwrap_or_else(PoisonError::into_inner);
        match command {
            b"INC" => {
                *value += 1;
                Ok(Bytes::from(value.to_string()))
            }
            b"GET" => Ok(Bytes::from(value.to_string())),
            other => Err(format!("unknown command: {}", String::from_utf8_lossy(other))),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.value.lock().unwrap_or_else(PoisonError::into_inner).to_le_bytes().to_vec()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] =
            data.try_into().map_err(|_| format!("a counter snapshot is 8 bytes, not {}", data.len()))?;
        *self.value.lock().unwrap_or_else(PoisonError::into_inner) = i64::from_le_bytes(bytes);
        Ok(())
    }
}

/// The spec's service registry, small: `REGISTER name address` answers
/// `REGISTERED`, `LOOKUP name` the address or `NOT_FOUND`; the snapshot is
/// one `name address` line per entry, in name order.
#[derive(Debug, Default)]
struct Registry {
    entries: Mutex<BTreeMap<String, String>>,
}

impl StateMachineTrait for Registry {
    fn apply(&self, command: &[u8]) -> Result<Bytes, String> {
        let text = std::str::from_utf8(command).map_err(|error| error.to_string())?;
        let parts: Vec<&str> = text.split_whitespace().collect();
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        match parts.as_slice() {
            ["REGISTER", name, address] => {
                entries.insert((*name).to_owned(), (*address).to_owned());
                Ok(Bytes::from_static(b"REGISTERED"))
            }
            ["LOOKUP", name] => Ok(entries
                .get(*name)
                .map_or(Bytes::from_static(b"NOT_FOUND"), |address| Bytes::from(address.clone()))),
            _ => Err(String::from("Invalid command")),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.iter().map(|(name, address)| format!("{name} {address}\n")).collect::<String>().into_bytes()
    }

    fn restore(&self, data: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(data).map_err(|error| error.to_string())?;
        let mut restored = BTreeMap::new();
        for line in text.lines() {
            let (name, address) =
                line.split_once(' ').ok_or_else(|| format!("bad registry line {line:?}"))?;
            restored.insert(name.to_owned(), address.to_owned());
        }
        *self.entries.lock().unwrap_or_else(PoisonError::into_inner) = restored;
        Ok(())
    }
}

fn cluster_with(test: &str, seed: u64, factory: StateMachineFactory) -> ClusterSim {
    let config = ClusterConfig { seed, snapshot_lag_threshold: 10, ..ClusterConfig::default() };
    let mut sim = ClusterSim::with_state_machines(config, factory).expect("the test's config is valid");
    sim.set_replay(replay(FILE, test, seed));
    sim
}

/// A linearizable query of `query` on node `id`: its answer.
fn query(sim: &mut ClusterSim, id: u64, query: &'static [u8]) -> Option<Bytes> {
    let handle = sim.submit(id, Command::LinearizableQuery(Bytes::from_static(query)));
    match finish(sim, handle) {
        Outcome::Replied(Reply::Queried(Ok(Ok(answer)))) => Some(answer),
        _ => None,
    }
}

fn restart_everyone(sim: &mut ClusterSim) {
    for id in sim.node_ids() {
        sim.crash(id);
    }
    for id in sim.node_ids() {
        sim.restart(id);
    }
    leader(sim);
}

#[test]
fn a_counter_is_replicated_and_survives_restarts() {
    for seed in seeds(3) {
        let factory: StateMachineFactory = Box::new(|_| Arc::new(Counter::default()));
        let mut sim = cluster_with("a_counter_is_replicated_and_survives_restarts", seed, factory);
        let first = leader(&mut sim);
        let follower = if first == 1 { 2 } else { 1 };
        for count in 1..=25i64 {
            if count == 8 {
                sim.crash(follower);
            }
            if count == 18 {
                sim.restart(follower);
            }
            // No faults on the way: one proposal, one increment.
            assert_eq!(write(&mut sim, "INC"), Ok(Bytes::from(count.to_string())), "seed {seed}");
        }
        let refused = write(&mut sim, "DOUBLE");
        check(&sim, refused.is_err(), "an unknown command is an error result");
        restart_everyone(&mut sim);
        assert_eq!(write(&mut sim, "GET"), Ok(Bytes::from_static(b"25")), "seed {seed}");
        for id in sim.node_ids() {
            let answer = query(&mut sim, id, b"GET");
            check(
                &sim,
                answer == Some(Bytes::from_static(b"25")),
                &format!("node {id} counts 25: {answer:?}"),
            );
        }
        converge(&mut sim, "GET");
    }
}

#[test]
fn a_service_registry_is_replicated_and_survives_restarts() {
    for seed in seeds(3) {
        let factory: StateMachineFactory = Box::new(|_| Arc::new(Registry::default()));
        let mut sim = cluster_with("a_service_registry_is_replicated_and_survives_restarts", seed, factory);
        leader(&mut sim);
        for index in 0..24 {
            let answer = write(&mut sim, &format!("REGISTER service{} 10.0.0.{index}:80", index % 8));
            assert_eq!(answer, Ok(Bytes::from_static(b"REGISTERED")), "seed {seed}");
            if index == 12 {
                let down = leader(&mut sim);
                sim.crash(down);
                leader(&mut sim);
                sim.restart(down);
            }
        }
        assert_eq!(write(&mut sim, "FORGET service1"), Err(String::from("Invalid command")), "seed {seed}");
        restart_everyone(&mut sim);
        assert_eq!(write(&mut sim, "LOOKUP nobody"), Ok(Bytes::from_static(b"NOT_FOUND")), "seed {seed}");
        for id in sim.node_ids() {
            let answer = query(&mut sim, id, b"LOOKUP service7");
            let expected = Some(Bytes::from_static(b"10.0.0.23:80"));
            check(&sim, answer == expected, &format!("node {id} finds service7: {answer:?}"));
        }
        let stats = sim.stats();
        check(
            &sim,
            stats.snapshots_taken > 3 && stats.snapshots_restored > 0,
            "snapshots were taken and restored",
        );
        converge(&mut sim, "LOOKUP service0");
    }
}
