//! A three-node cluster stepped by hand: instant disk, instant network.
//! Elects a leader, replicates proposals, applies them everywhere, and
//! rebuilds state after a restart of every node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use octopii_core::disk::DiskCompletion;
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::{KvStateMachine, StateMachineTrait};
use octopii_core::{Command, CommandId, Input, Kernel, KernelConfig, Output, Reply};
use octopii_sim::disk::{DiskFaults, SimDisk};
use octopii_sim::time::VirtualClock;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

struct Member {
    kernel: Kernel,
    disk: SimDisk,
    machine: Arc<KvStateMachine>,
    replies: Vec<(CommandId, Reply)>,
}

struct Cluster {
    members: Vec<Member>,
    clock: VirtualClock,
    rng: ChaCha8Rng,
    wire: VecDeque<(u64, u64, Bytes)>,
    next_command: u64,
}

fn config(id: u64) -> NodeConfig {
    NodeConfig {
        id,
        voters: vec![1, 2, 3],
        seed: 7,
        tick_interval: Duration::from_millis(10),
        ..NodeConfig::default()
    }
}

impl Cluster {
    fn new() -> Self {
        let members = (1..=3).map(|id| Self::start(id, SimDisk::new(DiskFaults::NONE).unwrap())).collect();
        Self {
            members,
            clock: VirtualClock::new(),
            rng: ChaCha8Rng::seed_from_u64(1),
            wire: VecDeque::new(),
            next_command: 0,
        }
    }

    fn start(id: u64, disk: SimDisk) -> Member {
        let machine = Arc::new(KvStateMachine::in_memory());
        let kernel = Kernel::new_node(KernelConfig::default(), config(id), machine.clone()).unwrap();
        Member { kernel, disk, machine, replies: Vec::new() }
    }

    fn restart_all(&mut self) {
        for index in 0..self.members.len() {
            let disk =
                std::mem::replace(&mut self.members[index].disk, SimDisk::new(DiskFaults::NONE).unwrap());
            self.members[index] = Self::start(index as u64 + 1, disk);
        }
        self.wire.clear();
    }

    /// Drains every member's outputs, executing disk work at once.
    fn settle(&mut self) {
        let now = self.clock.now();
        loop {
            let mut moved = false;
            for (index, member) in self.members.iter_mut().enumerate() {
                while let Some(output) = member.kernel.poll_output() {
                    moved = true;
                    match output {
                        Output::Disk(op) => {
                            let result = member.disk.execute(&op, &mut self.rng);
                            member
                                .kernel
                                .handle_input(now, Input::Disk(DiskCompletion { io: op.io(), result }));
                        }
                        Output::Send { to, message } => self.wire.push_back((index as u64 + 1, to, message)),
                        Output::Reply { id, reply } => member.replies.push((id, reply)),
                        Output::Event(_) => {}
                    }
                }
            }
            while let Some((from, to, message)) = self.wire.pop_front() {
                moved = true;
                self.members[to as usize - 1].kernel.handle_input(now, Input::Message { from, message });
            }
            if !moved {
                return;
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.clock.elapsed() + duration;
        while self.clock.elapsed() < end {
            self.clock.advance_by(Duration::from_millis(1));
            let now = self.clock.now();
            for member in &mut self.members {
                if member.kernel.poll_timeout().is_some_and(|(at, _)| at <= now) {
                    member.kernel.handle_input(now, Input::Timeout);
                }
            }
            self.settle();
        }
    }

    fn command(&mut self, member: usize, command: Command) -> CommandId {
        let id = CommandId(self.next_command);
        self.next_command += 1;
        self.members[member].kernel.handle_input(self.clock.now(), Input::Command { id, command });
        self.settle();
        id
    }

    fn reply(&self, member: usize, id: CommandId) -> Option<&Reply> {
        self.members[member].replies.iter().find(|(reply_id, _)| *reply_id == id).map(|(_, reply)| reply)
    }

    fn leader(&mut self) -> Option<usize> {
        (0..self.members.len()).find(|&index| {
            let id = self.command(index, Command::Status);
            matches!(self.reply(index, id), Some(Reply::Status(Ok(status))) if status.is_leader())
        })
    }
}

#[test]
fn three_nodes_elect_replicate_and_survive_a_full_restart() {
    let mut cluster = Cluster::new();
    cluster.run_for(Duration::from_secs(2));
    let leader = cluster.leader().expect("a leader is elected");
    let mut proposals = Vec::new();
    for index in 0..50 {
        let id =
            cluster.command(leader, Command::Propose(Bytes::from(format!("SET key{index} value{index}"))));
        proposals.push(id);
    }
    cluster.run_for(Duration::from_millis(500));
    for id in &proposals {
        assert_eq!(cluster.reply(leader, *id), Some(&Reply::Proposed(Ok(Ok(Bytes::from_static(b"OK"))))));
    }
    let follower = (leader + 1) % 3;
    let id = cluster.command(follower, Command::Propose(Bytes::from_static(b"SET x y")));
    assert!(matches!(cluster.reply(follower, id), Some(Reply::Proposed(Err(_)))), "a follower refuses");
    for member in &cluster.members {
        assert_eq!(member.machine.apply(b"GET key49").unwrap(), Bytes::from_static(b"value49"));
    }

    cluster.restart_all();
    cluster.run_for(Duration::from_secs(2));
    for member in &cluster.members {
        assert_eq!(
            member.machine.apply(b"GET key0").unwrap(),
            Bytes::from_static(b"value0"),
            "rebuilt from the log"
        );
        assert_eq!(member.machine.apply(b"GET key49").unwrap(), Bytes::from_static(b"value49"));
    }
    let leader = cluster.leader().expect("a leader after restart");
    let id = cluster.command(leader, Command::Propose(Bytes::from_static(b"SET after restart")));
    cluster.run_for(Duration::from_millis(200));
    assert_eq!(cluster.reply(leader, id), Some(&Reply::Proposed(Ok(Ok(Bytes::from_static(b"OK"))))));
}
