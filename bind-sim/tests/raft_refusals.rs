//! Raft messages no correct peer sends, fed to a node's kernel: each is
//! refused (reported as `ReplicaEvent::MessageRefused`) instead of stopping
//! the node inside raft-rs, and the node goes on committing writes. Also a
//! log whose commit index runs past its entries, as a crash can leave it:
//! the node restarts instead of stopping on it at every start.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii_core::disk::DiskCompletion;
use octopii_core::raft::records::RaftRecord;
use octopii_core::raft::state_machine::{KvStateMachine, StateMachineTrait};
use octopii_core::raft::{NodeConfig, ReplicaEvent};
use octopii_core::{Command, CommandId, Event, Input, Kernel, KernelConfig, NodeStatus, Output, Reply};
use octopii_sim::{DiskFaults, SimDisk};
use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Message, MessageType, Snapshot};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A kernel on a simulated disk, and what it said.
struct Harness {
    kernel: Kernel,
    disk: SimDisk,
    rng: ChaCha8Rng,
    now: Instant,
    replies: Vec<Reply>,
    refused: Vec<String>,
    next_command: u64,
}

impl Harness {
    fn new(kernel: Kernel, disk: SimDisk) -> Self {
        let mut harness = Harness {
            kernel,
            disk,
            rng: ChaCha8Rng::seed_from_u64(1),
            now: octopii_sim::time::epoch(),
            replies: Vec::new(),
            refused: Vec::new(),
            next_command: 0,
        };
        harness.pump();
        harness
    }

    fn pump(&mut self) {
        while let Some(output) = self.kernel.poll_output() {
            match output {
                Output::Disk(op) => {
                    let result = self.disk.execute(&op, &mut self.rng);
                    self.kernel.handle_input(self.now, Input::Disk(DiskCompletion { io: op.io(), result }));
                }
                Output::Reply { reply, .. } => self.replies.push(reply),
                Output::Event(Event::Replica(ReplicaEvent::MessageRefused { from: 2, reason })) => {
                    self.refused.push(reason);
                }
                _ => {}
            }
        }
    }

    /// Lets `duration` of time pass, timer by timer.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while let Some((at, _)) = self.kernel.poll_timeout().filter(|&(at, _)| at <= end) {
            self.now = self.now.max(at);
            self.kernel.handle_input(self.now, Input::Timeout);
            self.pump();
        }
        self.now = end;
    }

    fn command(&mut self, command: Command) -> Reply {
        self.next_command += 1;
        let id = CommandId(self.next_command);
        self.kernel.handle_input(self.now, Input::Command { id, command });
        self.pump();
        self.run_for(Duration::from_millis(50));
        self.replies.pop().expect("the command was answered")
    }

    fn status(&mut self) -> NodeStatus {
        let Reply::Status(Ok(status)) = self.command(Command::Status) else { panic!("no status") };
        status
    }

    fn deliver_from_peer(&mut self, message: &Message) {
        let message = Bytes::from(message.write_to_bytes().unwrap());
        self.kernel.handle_input(self.now, Input::Message { from: 2, message });
        self.pump();
        self.run_for(Duration::from_millis(500));
    }
}

/// Node 1, the only voter of its cluster, leading and with a write
/// committed.
fn leader() -> Harness {
    let state_machine = Arc::new(KvStateMachine::in_memory());
    let kernel = Kernel::new_node(KernelConfig::default(), NodeConfig::default(), state_machine).unwrap();
    let mut harness = Harness::new(kernel, SimDisk::new(DiskFaults::NONE).unwrap());
    harness.run_for(Duration::from_secs(5));
    assert!(harness.status().is_leader());
    assert!(matches!(harness.command(Command::Propose(Bytes::from("SET a 1"))), Reply::Proposed(Ok(Ok(_)))));
    harness
}

fn message(kind: MessageType, term: u64) -> Message {
    let mut message = Message::default();
    message.set_msg_type(kind);
    message.from = 2;
    message.to = 1;
    message.term = term;
    message
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, ..Entry::default() }
}

/// Feeds `message` to a leader: it is refused for `reason`, and the node
/// still leads and commits.
fn refused(build: impl FnOnce(&NodeStatus) -> Message, reason: &str) {
    let mut node = leader();
    let before = node.status();
    let message = build(&before);
    node.deliver_from_peer(&message);
    assert_eq!(node.refused.len(), 1, "{:?}: {:?}", message.get_msg_type(), node.refused);
    assert!(node.refused[0].contains(reason), "{:?}", node.refused);
    let after = node.status();
    assert!(after.is_leader() && after.term == before.term, "{after:?}");
    assert!(matches!(node.command(Command::Propose(Bytes::from("SET b 2"))), Reply::Proposed(Ok(Ok(_)))));
    assert_eq!(node.command(Command::Query(Bytes::from("GET b"))), Reply::Queried(Ok(Ok(Bytes::from("2")))));
}

#[test]
fn a_proposal_without_entries_is_refused() {
    refused(|status| message(MessageType::MsgPropose, status.term), "a proposal from a peer");
}

#[test]
fn a_heartbeat_committing_past_the_log_is_refused() {
    refused(
        |status| {
            let mut heartbeat = message(MessageType::MsgHeartbeat, status.term + 10);
            heartbeat.commit = 1_000_000;
            heartbeat
        },
        "past the last entry",
    );
}

/// On a leader of several voters raft-rs reads the context at once
/// (`m.entries[0]`); this leader of one only shows the refusal.
#[test]
fn a_read_request_without_its_context_is_refused() {
    refused(|status| message(MessageType::MsgReadIndex, status.term), "context entries");
}

#[test]
fn an_append_rewriting_a_committed_entry_out_of_order_is_refused() {
    refused(
        |status| {
            let mut append = message(MessageType::MsgAppend, status.term + 10);
            (append.index, append.log_term) = (status.commit, status.term);
            append.entries = vec![entry(1, status.term + 10)].into();
            append
        },
        "carries entry 1",
    );
}

#[test]
fn a_snapshot_whose_configuration_has_a_learner_among_its_voters_is_refused() {
    refused(
        |status| {
            let mut install = message(MessageType::MsgSnapshot, status.term + 10);
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = status.commit + 100;
            snapshot.mut_metadata().term = status.term + 10;
            let conf = ConfState { voters: vec![1, 2], learners: vec![2], ..ConfState::default() };
            snapshot.mut_metadata().set_conf_state(conf);
            install.set_snapshot(snapshot);
            install
        },
        "a learner that is also a voter",
    );
}

#[test]
fn an_append_building_on_term_zero_past_the_log_is_refused() {
    refused(
        |status| {
            let mut append = message(MessageType::MsgAppend, status.term + 10);
            (append.index, append.log_term, append.commit) = (status.commit + 5, 0, status.commit + 5);
            append
        },
        "builds on term 0",
    );
}

#[test]
fn a_snapshot_of_term_zero_is_refused() {
    refused(
        |status| {
            let mut install = message(MessageType::MsgSnapshot, status.term + 10);
            let mut snapshot = Snapshot::default();
            snapshot.mut_metadata().index = status.commit + 100;
            snapshot.mut_metadata().mut_conf_state().voters = vec![1];
            install.set_snapshot(snapshot);
            install
        },
        "a snapshot of term 0",
    );
}

/// A follower passes a read request on to its leader; raft-rs stops if the
/// request carries a term.
#[test]
fn a_read_request_carrying_a_term_is_refused_by_a_follower() {
    let mut node = leader();
    let status = node.status();
    let mut heartbeat = message(MessageType::MsgHeartbeat, status.term + 1);
    heartbeat.commit = status.commit;
    node.deliver_from_peer(&heartbeat);
    let follower = node.status();
    assert_eq!((follower.term, follower.leader), (status.term + 1, Some(2)), "{follower:?}");
    let mut read = message(MessageType::MsgReadIndex, follower.term);
    read.entries = vec![Entry { data: Bytes::from("ctx"), ..Entry::default() }].into();
    node.deliver_from_peer(&read);
    assert_eq!(node.refused.len(), 1, "{:?}", node.refused);
    assert!(node.refused[0].contains("carrying term"), "{:?}", node.refused);
    assert_eq!(node.command(Command::Query(Bytes::from("GET a"))), Reply::Queried(Ok(Ok(Bytes::from("1")))));
}

/// What a follower's log holds if it crashes after the batch with a
/// snapshot and a hard state naming commit 10 is durable, and before the
/// batch with entries up to 10 is.
#[test]
fn a_commit_index_past_the_recovered_entries_does_not_stop_the_node() {
    let disk = SimDisk::new(DiskFaults::NONE).unwrap();
    let mut log = Harness::new(Kernel::new(KernelConfig::default()).unwrap(), disk);
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = 4;
    snapshot.mut_metadata().term = 1;
    snapshot.mut_metadata().mut_conf_state().voters = vec![1];
    snapshot.data = Bytes::from(KvStateMachine::in_memory().snapshot());
    let hard_state = HardState { term: 1, commit: 10, ..HardState::default() };
    for record in [RaftRecord::Snapshot(snapshot), RaftRecord::HardState(hard_state)] {
        assert!(matches!(log.command(Command::Append(record.encode())), Reply::Appended(Ok(_))));
    }
    let Harness { disk, .. } = log;

    let state_machine = Arc::new(KvStateMachine::in_memory());
    let kernel = Kernel::new_node(KernelConfig::default(), NodeConfig::default(), state_machine).unwrap();
    let mut node = Harness::new(kernel, disk);
    node.run_for(Duration::from_secs(5));
    let status = node.status();
    assert!(status.is_leader(), "{status:?}");
    assert!(matches!(node.command(Command::Propose(Bytes::from("SET c 3"))), Reply::Proposed(Ok(Ok(_)))));
    assert_eq!(node.command(Command::Query(Bytes::from("GET c"))), Reply::Queried(Ok(Ok(Bytes::from("3")))));
}
