//! The replicated node inside the kernel: rebuilds its Raft replica from the
//! log after recovery, passes commands to it, and turns its outputs into the
//! kernel's.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use bytes::Bytes;
use raft::eraftpb::ConfChangeType;

use crate::kernel::{Command, Event, Reply};
use crate::raft::records::RaftRecord;
use crate::raft::state_machine::StateMachine;
use crate::raft::{Answer, NodeConfig, NodeError, Replica, ReplicaOutput};
use crate::wal::{Wal, WalEntry, WalError};

/// A membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Add a node that receives the log but does not vote.
    AddLearner,
    /// Add a voter, or promote a learner to voter.
    AddVoter,
    /// Remove a voter or learner.
    Remove,
}

/// Replication progress of one peer, as the leader tracks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerProgress {
    /// Highest log index known to be replicated on the peer.
    pub matched: u64,
    /// Next log index to send to it.
    pub next: u64,
}

/// A node's view of its cluster.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// This node.
    pub id: u64,
    /// Current term.
    pub term: u64,
    /// The leader this node knows of.
    pub leader: Option<u64>,
    /// Highest committed log index known here.
    pub commit: u64,
    /// Highest index applied to the state machine here.
    pub applied: u64,
    /// Voting members.
    pub voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
    /// Each member's progress; only the leader tracks it (empty elsewhere).
    pub progress: BTreeMap<u64, PeerProgress>,
}

impl NodeStatus {
    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.leader == Some(self.id)
    }

    /// Whether this node is the only voter (a cluster of one).
    pub fn is_sole_voter(&self) -> bool {
        self.voters == [self.id]
    }

    /// Whether learner `peer` holds every entry committed so far; only the
    /// leader knows.
    ///
    /// # Errors
    ///
    /// [`NodeError::NotLeader`] on another node, [`NodeError::UnknownPeer`]
    /// if `peer` is not a learner.
    pub fn learner_caught_up(&self, peer: u64) -> Result<bool, NodeError> {
        if !self.is_leader() {
            return Err(NodeError::NotLeader { leader: self.leader });
        }
        if !self.learners.contains(&peer) {
            return Err(NodeError::UnknownPeer(peer));
        }
        Ok(self.progress.get(&peer).is_some_and(|progress| progress.matched >= self.commit))
    }
}

/// What the node hands back to the kernel.
#[derive(Debug)]
pub(crate) enum NodeOutput {
    Send {
        to: u64,
        message: Bytes,
        snapshot: bool,
    },
    Reply {
        ticket: u64,
        reply: Reply,
    },
    Event(Event),
    RemoveWalBefore(u64),
    /// Where members listen (see `ReplicaOutput::PeerAddresses`).
    PeerAddresses(Vec<(u64, core::net::SocketAddr)>),
    /// The node has rebuilt its state (or failed to): queued commands may run.
    Ready,
}

/// The answer to a node command that cannot run.
pub(crate) fn failure_reply(command: &Command, error: NodeError) -> Reply {
    match command {
        Command::Propose(_) => Reply::Proposed(Err(error)),
        Command::Query(_) | Command::LinearizableQuery(_) => Reply::Queried(Err(error)),
        Command::ReadIndex => Reply::ReadIndex(Err(error)),
        Command::ChangeMembership { .. } => Reply::MembershipChanged(Err(error)),
        Command::Status => Reply::Status(Err(error)),
        _ => Reply::Done(Err(error)),
    }
}

/// A membership change waiting for the one in flight.
#[derive(Debug)]
struct QueuedChange {
    ticket: u64,
    change: Membership,
    node: u64,
    /// The members' addresses known when it was asked for.
    addresses: Vec<(u64, core::net::SocketAddr)>,
}

pub(crate) struct Node {
    config: NodeConfig,
    /// Membership changes waiting for the one in flight: Raft takes one at
    /// a time and turns a second into an empty entry.
    conf_queue: VecDeque<QueuedChange>,
    /// The ticket of the membership change in flight.
    conf_in_flight: Option<u64>,
    state_machine: StateMachine,
    replica: Option<Replica>,
    /// Whether requests may run (the replica's incarnation is durable).
    ready: bool,
    failed: Option<NodeError>,
    outputs: VecDeque<NodeOutput>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Node").field("replica", &self.replica).field("failed", &self.failed).finish()
    }
}

impl Node {
    pub(crate) fn new(config: NodeConfig, state_machine: StateMachine) -> Self {
        Self {
            config,
            conf_queue: VecDeque::new(),
            conf_in_flight: None,
            state_machine,
            replica: None,
            ready: false,
            failed: None,
            outputs: VecDeque::new(),
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready || self.failed.is_some()
    }

    /// Lets queued requests run once the replica's incarnation record is
    /// durable.
    fn announce_ready(&mut self, wal: &Wal) {
        let durable = self.replica.as_ref().is_some_and(|replica| wal.durable_next() > replica.incarnation());
        if durable && !self.ready {
            self.ready = true;
            self.outputs.push_back(NodeOutput::Ready);
        }
    }

    pub(crate) fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.replica.as_ref().filter(|_| self.failed.is_none()).map(Replica::poll_timeout)
    }

    /// Stops the node: requests waiting in the replica and every later
    /// request fail with `error`.
    pub(crate) fn fail(&mut self, error: NodeError) {
        if self.failed.is_some() {
            return;
        }
        self.failed = Some(error.clone());
        if let Some(replica) = &mut self.replica {
            replica.abandon(&error);
        }
        for QueuedChange { ticket, .. } in std::mem::take(&mut self.conf_queue) {
            let reply = Reply::MembershipChanged(Err(error.clone()));
            self.outputs.push_back(NodeOutput::Reply { ticket, reply });
        }
        self.drain();
        self.outputs.push_back(NodeOutput::Event(Event::NodeFailed(error)));
        self.outputs.push_back(NodeOutput::Ready);
    }

    /// Writes the latest commit index, which is otherwise written only with
    /// the next records that need a sync (see [`Replica::write_hard_state`]).
    pub(crate) fn write_hard_state(&mut self, now: Instant, wal: &mut Wal) {
        if let (None, Some(replica)) = (&self.failed, &mut self.replica) {
            replica.write_hard_state(now, wal);
        }
    }

    /// Rebuilds the replica from the log read back after recovery.
    pub(crate) fn rebuild(&mut self, now: Instant, read: Result<Vec<WalEntry>, WalError>, wal: &mut Wal) {
        let records: Result<Vec<(u64, RaftRecord)>, NodeError> =
            read.map_err(|error| NodeError::Storage(error.to_string())).and_then(|entries| {
                entries
                    .into_iter()
                    .map(|entry| {
                        let record = RaftRecord::decode(&entry.payload).map_err(|error| {
                            NodeError::Storage(format!("wal entry {}: {error}", entry.seq))
                        })?;
                        Ok((entry.seq, record))
                    })
                    .collect()
            });
        let replica = records.and_then(|records| {
            Replica::recover(self.config.clone(), self.state_machine.clone(), records, now, wal)
        });
        match replica {
            Ok(replica) => {
                self.replica = Some(replica);
                self.drain();
                self.announce_ready(wal);
            }
            Err(error) => self.fail(error),
        }
    }

    /// The replica's view of the cluster, while it runs.
    pub(crate) fn status(&self) -> Option<NodeStatus> {
        self.replica.as_ref().filter(|_| self.failed.is_none() && self.ready).map(Replica::status)
    }

    fn running(&mut self) -> Result<&mut Replica, NodeError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        self.replica.as_mut().ok_or(NodeError::ShuttingDown)
    }

    /// Runs a node command. A membership change carries `addresses`, the
    /// members' addresses known here, to every node (see
    /// `ReplicaOutput::PeerAddresses`).
    pub(crate) fn execute(
        &mut self,
        now: Instant,
        ticket: u64,
        command: Command,
        addresses: Vec<(u64, core::net::SocketAddr)>,
        wal: &mut Wal,
    ) {
        let replica = match self.running() {
            Ok(replica) => replica,
            Err(error) => {
                let reply = failure_reply(&command, error);
                self.outputs.push_back(NodeOutput::Reply { ticket, reply });
                return;
            }
        };
        let immediate = match command {
            Command::Propose(data) => {
                replica.propose(now, ticket, data, wal);
                None
            }
            Command::Query(query) => Some(Reply::Queried(Ok(replica.query(&query)))),
            Command::ReadIndex => {
                replica.read_index(now, ticket, None, wal);
                None
            }
            Command::LinearizableQuery(query) => {
                replica.read_index(now, ticket, Some(query), wal);
                None
            }
            Command::Campaign => {
                replica.campaign(now, wal);
                Some(Reply::Done(Ok(())))
            }
            Command::TransferLeader(node) => Some(Reply::Done(replica.transfer_leader(now, node, wal))),
            Command::ChangeMembership { change, node } => {
                self.conf_queue.push_back(QueuedChange { ticket, change, node, addresses });
                None
            }
            Command::ForceSnapshot(peer) => Some(Reply::Done(replica.force_snapshot(now, peer, wal))),
            Command::Status => Some(Reply::Status(Ok(replica.status()))),
            other => unreachable!("the kernel passes only node commands, not {other:?}"),
        };
        if let Some(reply) = immediate {
            self.outputs.push_back(NodeOutput::Reply { ticket, reply });
        }
        self.settle(now, wal);
    }

    /// Hands the replica's outputs on and starts the next membership change
    /// once none is in flight.
    fn settle(&mut self, now: Instant, wal: &mut Wal) {
        self.drain();
        while self.conf_in_flight.is_none() && self.failed.is_none() {
            let Some(replica) = self.replica.as_mut().filter(|replica| !replica.has_pending_conf()) else {
                return;
            };
            let Some(QueuedChange { ticket, change, node, addresses }) = self.conf_queue.pop_front() else {
                return;
            };
            let change = match change {
                Membership::AddLearner => ConfChangeType::AddLearnerNode,
                Membership::AddVoter => ConfChangeType::AddNode,
                Membership::Remove => ConfChangeType::RemoveNode,
            };
            self.conf_in_flight = Some(ticket);
            replica.change_membership(now, ticket, change, node, &addresses, wal);
            self.drain();
        }
    }

    pub(crate) fn handle_message(&mut self, now: Instant, from: u64, message: &[u8], wal: &mut Wal) {
        if let Ok(replica) = self.running() {
            replica.handle_message(now, from, message, wal);
            self.settle(now, wal);
        }
    }

    pub(crate) fn snapshot_delivered(&mut self, now: Instant, peer: u64, delivered: bool, wal: &mut Wal) {
        if let Ok(replica) = self.running() {
            replica.snapshot_delivered(now, peer, delivered, wal);
            self.settle(now, wal);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant, wal: &mut Wal) {
        if let Ok(replica) = self.running() {
            replica.handle_timeout(now, wal);
            self.settle(now, wal);
        }
    }

    pub(crate) fn handle_durable(&mut self, now: Instant, wal: &mut Wal) {
        if let Ok(replica) = self.running() {
            replica.handle_durable(now, wal);
            self.settle(now, wal);
            self.announce_ready(wal);
        }
    }

    fn drain(&mut self) {
        let Some(replica) = &mut self.replica else { return };
        while let Some(output) = replica.poll_output() {
            let output = match output {
                ReplicaOutput::Fatal(error) => {
                    // Stopping answers what is still waiting (through this
                    // same drain); once stopped, later fatal reports add
                    // nothing.
                    if self.failed.is_none() {
                        self.fail(error);
                        return;
                    }
                    continue;
                }
                ReplicaOutput::Send { to, message, snapshot } => NodeOutput::Send { to, message, snapshot },
                ReplicaOutput::RemoveWalBefore(seq) => NodeOutput::RemoveWalBefore(seq),
                ReplicaOutput::PeerAddresses(addresses) => NodeOutput::PeerAddresses(addresses),
                ReplicaOutput::Event(event) => NodeOutput::Event(Event::Replica(event)),
                ReplicaOutput::Answer { ticket, answer } => {
                    let reply = match answer {
                        Answer::Applied(result) => Reply::Proposed(result),
                        Answer::ReadIndex(result) => Reply::ReadIndex(result),
                        Answer::ConfChanged(result) => {
                            if self.conf_in_flight == Some(ticket) {
                                self.conf_in_flight = None;
                            }
                            Reply::MembershipChanged(result)
                        }
                        Answer::Queried(result) => Reply::Queried(result),
                    };
                    NodeOutput::Reply { ticket, reply }
                }
            };
            self.outputs.push_back(output);
        }
    }
}
