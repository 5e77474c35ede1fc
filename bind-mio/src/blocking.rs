//! The replicated node from plain threads: the same node and semantics as
//! `octopii::OctopiiNode`, on the blocking loop, with no async runtime.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii_core::raft::NodeError;
use octopii_core::raft::state_machine::{KvStateMachine, StateMachine};
use octopii_core::{Command, Membership, NodeStatus, Reply};

use crate::config::{Config, ConfigError};
use crate::node::{LoopError, Node};

/// How long [`BlockingNode::start`] waits for the only voter to lead.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a [`BlockingNode`] call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlockingError {
    /// The configuration is refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The socket or log could not be used, or the node has stopped.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// Raft refused or could not finish the request (not the leader,
    /// dropped by a change of leader, timed out, unknown peer, ...).
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The state machine refused the command, with its message.
    #[error("the state machine refused the command: {0}")]
    Rejected(String),
    /// No such member in that role (promoting a node that is not a
    /// learner, asking whether a non-learner caught up).
    #[error("node {0} is not a member in that role")]
    NodeNotFound(u64),
}

/// The cluster's members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfStateCompat {
    /// Voting members.
    pub voters: Vec<u64>,
    /// Members that receive the log but do not vote.
    pub learners: Vec<u64>,
}

/// A replicated node whose methods block the calling thread until
/// answered. Share it between threads with an `Arc`.
#[derive(Debug)]
pub struct BlockingNode {
    node: Node,
}

impl BlockingNode {
    /// Opens the log in `config.wal_dir`, binds the socket and starts the
    /// node's thread, applying commands to an in-memory [`KvStateMachine`].
    ///
    /// # Errors
    ///
    /// [`BlockingError::Config`] naming a bad field or an unreadable
    /// identity; [`BlockingError::Loop`] if the port or the log is taken.
    pub fn new(config: &Config) -> Result<Self, BlockingError> {
        Self::new_with_state_machine(config, Arc::new(KvStateMachine::in_memory()))
    }

    /// As [`BlockingNode::new`], applying commands to `state_machine`.
    ///
    /// # Errors
    ///
    /// As [`BlockingNode::new`].
    pub fn new_with_state_machine(
        config: &Config,
        state_machine: StateMachine,
    ) -> Result<Self, BlockingError> {
        let mut options = config.node_options(state_machine)?;
        // Nothing here reads what peers send the application.
        options.transport.application_deliveries = false;
        Ok(Self { node: Node::start(options)? })
    }

    /// Waits until the node has rebuilt its state from its log, and, for
    /// the only voter of its cluster, until it leads.
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`] if the log could not be read back or the
    /// only voter did not lead within 10 s.
    pub fn start(&self) -> Result<(), BlockingError> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self.status()?;
            if !status.is_sole_voter() || status.is_leader() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let reason = format!("the only voter did not lead within {START_TIMEOUT:?}");
                return Err(NodeError::Refused(reason).into());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops the node and returns once its port and log are released.
    pub fn shutdown(self) {
        self.node.shutdown();
    }

    /// Replicates `command`; returns the state machine's answer once a
    /// majority holds it durably and this node has applied it.
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`] (not the leader, dropped, timed out, too
    /// large), [`BlockingError::Rejected`].
    pub fn propose(&self, command: Vec<u8>) -> Result<Bytes, BlockingError> {
        let Reply::Proposed(result) = self.node.call(Command::Propose(command.into()))? else {
            unreachable!()
        };
        result?.map_err(BlockingError::Rejected)
    }

    /// Runs a read-only `command` against this node's state machine (may
    /// be stale on a follower).
    ///
    /// # Errors
    ///
    /// [`BlockingError::Rejected`].
    pub fn query(&self, command: &[u8]) -> Result<Bytes, BlockingError> {
        let query = Command::Query(Bytes::copy_from_slice(command));
        let Reply::Queried(result) = self.node.call(query)? else { unreachable!() };
        result?.map_err(BlockingError::Rejected)
    }

    /// A read that sees every write acknowledged before it: the leader
    /// confirms its commit index, and this node (leader or follower)
    /// answers once it has applied that far.
    ///
    /// # Errors
    ///
    /// As [`BlockingNode::propose`].
    pub fn linearizable_query(&self, command: &[u8]) -> Result<Bytes, BlockingError> {
        let query = Command::LinearizableQuery(Bytes::copy_from_slice(command));
        let Reply::Queried(result) = self.node.call(query)? else { unreachable!() };
        result?.map_err(BlockingError::Rejected)
    }

    /// Whether this node leads now.
    pub fn is_leader(&self) -> bool {
        self.status().is_ok_and(|status| status.is_leader())
    }

    /// Whether this node knows of a leader.
    pub fn has_leader(&self) -> bool {
        self.status().is_ok_and(|status| status.leader.is_some())
    }

    /// Starts an election now.
    ///
    /// # Errors
    ///
    /// [`BlockingError::Loop`] once stopped.
    pub fn campaign(&self) -> Result<(), BlockingError> {
        self.done(Command::Campaign)
    }

    /// Hands leadership to voter `peer_id` (leader only).
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`]: not the leader, or not a voter.
    pub fn transfer_leader(&self, peer_id: u64) -> Result<(), BlockingError> {
        self.done(Command::TransferLeader(peer_id))
    }

    /// Adds node `peer_id` at `addr` as a learner (leader only); returns
    /// once the change is applied.
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`]: not the leader, or Raft refused.
    pub fn add_learner(&self, peer_id: u64, addr: SocketAddr) -> Result<(), BlockingError> {
        self.update_peer_addr(peer_id, addr);
        self.change(Membership::AddLearner, peer_id)
    }

    /// Makes learner `peer_id` a voter (leader only).
    ///
    /// # Errors
    ///
    /// [`BlockingError::NodeNotFound`] if it is not a learner.
    pub fn promote_learner(&self, peer_id: u64) -> Result<(), BlockingError> {
        if !self.status()?.learners.contains(&peer_id) {
            return Err(BlockingError::NodeNotFound(peer_id));
        }
        self.change(Membership::AddVoter, peer_id)
    }

    /// Removes voter or learner `peer_id` (leader only).
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`].
    pub fn remove_node(&self, peer_id: u64) -> Result<(), BlockingError> {
        self.change(Membership::Remove, peer_id)
    }

    /// Whether learner `peer_id` holds every committed entry (leader only).
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`] with `NotLeader` on another node;
    /// [`BlockingError::NodeNotFound`] if it is not a learner.
    pub fn is_learner_caught_up(&self, peer_id: u64) -> Result<bool, BlockingError> {
        match self.status()?.learner_caught_up(peer_id) {
            Err(NodeError::UnknownPeer(peer)) => Err(BlockingError::NodeNotFound(peer)),
            result => Ok(result?),
        }
    }

    /// The voters and learners this node knows of (empty if stopped).
    pub fn conf_state(&self) -> ConfStateCompat {
        self.status()
            .map(|status| ConfStateCompat { voters: status.voters, learners: status.learners })
            .unwrap_or_default()
    }

    /// Takes a snapshot and sends it to `peer_id` (leader only).
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`].
    pub fn force_snapshot_to_peer(&self, peer_id: u64) -> Result<(), BlockingError> {
        self.done(Command::ForceSnapshot(peer_id))
    }

    /// A read fence: returns once a quorum confirmed this node leads and it
    /// has applied everything committed before the call.
    ///
    /// # Errors
    ///
    /// As [`BlockingNode::propose`].
    pub fn read_index(&self) -> Result<(), BlockingError> {
        let Reply::ReadIndex(result) = self.node.call(Command::ReadIndex)? else { unreachable!() };
        Ok(result.map(|_| ())?)
    }

    /// How far `peer_id`'s log matches and the next index the leader sends
    /// it; `None` on a follower or for a non-member.
    pub fn peer_progress(&self, peer_id: u64) -> Option<(u64, u64)> {
        let progress = self.status().ok()?.progress.get(&peer_id).copied()?;
        Some((progress.matched, progress.next))
    }

    /// Sets where node `peer_id` listens.
    pub fn update_peer_addr(&self, peer_id: u64, addr: SocketAddr) {
        let _ = self.node.call(Command::UpdatePeerAddr { node: peer_id, address: addr });
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.node.id()
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// This node's view of the cluster (members in `voters`/`learners`).
    ///
    /// # Errors
    ///
    /// [`BlockingError::Node`] if the node failed, [`BlockingError::Loop`]
    /// once stopped.
    pub fn status(&self) -> Result<NodeStatus, BlockingError> {
        let Reply::Status(status) = self.node.call(Command::Status)? else { unreachable!() };
        Ok(status?)
    }

    fn done(&self, command: Command) -> Result<(), BlockingError> {
        let Reply::Done(result) = self.node.call(command)? else { unreachable!() };
        Ok(result?)
    }

    fn change(&self, change: Membership, node: u64) -> Result<(), BlockingError> {
        let command = Command::ChangeMembership { change, node };
        let Reply::MembershipChanged(result) = self.node.call(command)? else { unreachable!() };
        Ok(result.map(|_| ())?)
    }
}
