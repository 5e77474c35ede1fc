//! The nemesis of a randomized run: crashes, partitions, isolated nodes,
//! one-way link cuts, leader transfers and membership changes, picked by
//! the fault profile, and the operator's part (restarting crashed and
//! failed nodes, healing the network).

use std::time::Duration;

use octopii_core::{Command, Membership, Reply};
use rand::Rng;
use rand::seq::SliceRandom;

use super::ClusterFaults;
use super::driver::{Action, Driver, Owner};
use crate::cluster::{Handle, Outcome};

/// Nodes the nemesis may add over a run (each replacing a voter).
const NODES_ADDED_MAX: u64 = 3;
/// Attempts at one membership step before the change is abandoned.
const MEMBERSHIP_ATTEMPTS_MAX: u32 = 30;

/// Where a membership change stands: a new node is added as a learner,
/// given time to catch up, promoted, and then a voter is removed (so the
/// voter count stays).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    AddLearner,
    CatchUp,
    AddVoter,
    Remove,
}

#[derive(Debug)]
pub(super) struct MembershipTask {
    node: u64,
    stage: Stage,
    /// The voter to remove once the new node votes.
    victim: Option<u64>,
    pending: Option<Handle>,
    attempts: u32,
}

impl Driver {
    pub(super) fn nemesis(&mut self) {
        let faults = self.config.faults;
        for id in self.sim.failed_nodes() {
            // A node stopped on a storage failure: its operator restarts it.
            self.sim.crash(id);
            let delay = self.random_ms(10..=300);
            self.later(delay, Action::Restart(id));
        }
        let mut moves: Vec<u32> = Vec::new();
        if faults.crashes() {
            moves.extend([0, 0, 0]);
        }
        if faults.network() {
            moves.extend([1, 2, 3]);
        }
        if faults == ClusterFaults::Full {
            moves.extend([4, 5]);
        }
        match self.pick(&moves) {
            Some(0) => self.crash_one(),
            Some(1) => self.partition(),
            Some(2) => self.isolate(),
            Some(3) => self.cut_links(),
            Some(4) => self.transfer(),
            Some(5) => self.start_membership(),
            _ => {}
        }
        let delay = self.random_ms(20..=self.nemesis_ms_max);
        self.later(delay, Action::Nemesis);
    }

    fn crash_one(&mut self) {
        let down = self.voters.iter().filter(|&&id| !self.sim.is_running(id)).count();
        let tolerated = (self.voters.len().saturating_sub(1)) / 2;
        if down >= tolerated {
            return;
        }
        let leader = self.sim.leader();
        let target = match leader {
            Some(leader) if self.sim.rng().random_bool(0.3) => Some(leader),
            _ => {
                let up: Vec<u64> = self.sim.running_nodes();
                self.pick(&up)
            }
        };
        let Some(target) = target else { return };
        self.sim.crash(target);
        let downtime = self.random_ms(20..=1_000);
        self.later(downtime, Action::Restart(target));
    }

    fn schedule_heal(&mut self) {
        self.partitioned = true;
        let delay = self.random_ms(100..=2_500);
        self.later(delay, Action::Heal);
    }

    fn partition(&mut self) {
        if self.partitioned {
            return;
        }
        let mut ids = self.sim.node_ids();
        ids.shuffle(self.sim.rng());
        let split = self.sim.rng().random_range(1..ids.len().max(2));
        let (left, right) = ids.split_at(split.min(ids.len()));
        self.sim.partition(&[left, right]);
        self.schedule_heal();
    }

    fn isolate(&mut self) {
        if self.partitioned {
            return;
        }
        let target = match self.sim.leader() {
            Some(leader) if self.sim.rng().random_bool(0.7) => leader,
            _ => {
                let ids = self.sim.node_ids();
                self.pick(&ids).unwrap_or(1)
            }
        };
        self.sim.isolate(target);
        self.schedule_heal();
    }

    fn cut_links(&mut self) {
        if self.partitioned {
            return;
        }
        let ids = self.sim.node_ids();
        let cuts = self.sim.rng().random_range(1..=3);
        for _ in 0..cuts {
            let (from, to) = (self.pick(&ids).unwrap_or(1), self.pick(&ids).unwrap_or(1));
            if from != to {
                self.sim.cut_link(from, to);
            }
        }
        self.schedule_heal();
    }

    fn transfer(&mut self) {
        let Some(leader) = self.sim.leader() else { return };
        let others: Vec<u64> = self.voters.iter().copied().filter(|&id| id != leader).collect();
        let Some(target) = self.pick(&others) else { return };
        self.summary.transfers += 1;
        let handle = self.sim.submit(leader, Command::TransferLeader(target));
        self.owners.insert(handle, Owner::Transfer);
    }

    fn start_membership(&mut self) {
        if self.membership.is_some() || self.sim.stats().nodes_added >= NODES_ADDED_MAX {
            return;
        }
        let node = self.next_node;
        self.next_node += 1;
        if self.sim.add_node(node).is_err() {
            return;
        }
        let task =
            MembershipTask { node, stage: Stage::AddLearner, victim: None, pending: None, attempts: 0 };
        self.membership = Some(task);
        self.later(Duration::ZERO, Action::MembershipStep);
    }

    fn retry_membership(&mut self) {
        let Some(task) = self.membership.as_mut() else { return };
        task.attempts += 1;
        if task.attempts > MEMBERSHIP_ATTEMPTS_MAX {
            self.sim.note("membership change abandoned");
            self.membership = None;
            return;
        }
        let delay = self.random_ms(50..=300);
        self.later(delay, Action::MembershipStep);
    }

    pub(super) fn membership_step(&mut self) {
        let Some(task) = &self.membership else { return };
        if task.pending.is_some() {
            return;
        }
        let (node, stage, victim) = (task.node, task.stage, task.victim);
        let Some(leader) = self.sim.leader() else { return self.retry_membership() };
        let command = match stage {
            Stage::AddLearner => Command::ChangeMembership { change: Membership::AddLearner, node },
            Stage::CatchUp => {
                let caught_up =
                    self.sim.applied_position(node).is_some_and(|at| at + 5 >= self.sim.committed_len());
                if let Some(task) = self.membership.as_mut().filter(|_| caught_up) {
                    task.stage = Stage::AddVoter;
                    task.attempts = 0;
                    return self.later(Duration::ZERO, Action::MembershipStep);
                }
                return self.retry_membership();
            }
            Stage::AddVoter => Command::ChangeMembership { change: Membership::AddVoter, node },
            Stage::Remove => {
                let victim = victim.or_else(|| {
                    let candidates: Vec<u64> =
                        self.voters.iter().copied().filter(|&id| id != leader && id != node).collect();
                    self.pick(&candidates)
                });
                let Some(victim) = victim else { return self.retry_membership() };
                if let Some(task) = self.membership.as_mut() {
                    task.victim = Some(victim);
                }
                Command::ChangeMembership { change: Membership::Remove, node: victim }
            }
        };
        let handle = self.sim.submit(leader, command);
        self.owners.insert(handle, Owner::Membership);
        if let Some(task) = self.membership.as_mut() {
            task.pending = Some(handle);
        }
    }

    pub(super) fn on_membership_outcome(&mut self, outcome: Outcome) {
        let Some(task) = self.membership.as_mut() else { return };
        task.pending = None;
        let next = match (task.stage, outcome) {
            (stage, Outcome::Replied(Reply::MembershipChanged(Ok((voters, _learners))))) => {
                self.summary.membership_changes += 1;
                self.voters = voters;
                match stage {
                    Stage::AddLearner => Stage::CatchUp,
                    Stage::AddVoter => Stage::Remove,
                    _ => {
                        if let Some(victim) = task.victim {
                            self.sim.stop(victim);
                            self.summary.nodes_removed += 1;
                        }
                        self.membership = None;
                        return;
                    }
                }
            }
            _ => return self.retry_membership(),
        };
        task.stage = next;
        task.attempts = 0;
        self.later(Duration::ZERO, Action::MembershipStep);
    }
}
