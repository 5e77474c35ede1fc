//! The replicated node an application embeds: a Raft member with a
//! durable log and a state machine, started from a [`Config`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii_core::raft::NodeError;
use octopii_core::raft::state_machine::{KvStateMachine, StateMachine};
use octopii_core::{Command, Membership, NodeStatus, Reply};
use octopii_mio::{ConfStateCompat, Config};
use tokio::runtime::RuntimeFlavor;

use crate::error::{OctopiiError, Result};
use crate::node_loop::NodeLoop;
use crate::runtime::OctopiiRuntime;

/// How long [`OctopiiNode::start`] waits for a new cluster's first node to
/// become leader.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`OctopiiNode::shutdown`] waits for the node to release its
/// port and files.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// A replicated node. Every method may be called from any task; share it
/// with an `Arc`.
#[derive(Debug)]
pub struct OctopiiNode {
    id: u64,
    node: NodeLoop,
    /// Keeps an owned runtime alive as long as the node.
    _runtime: OctopiiRuntime,
}

impl OctopiiNode {
    /// Opens the node's log in `config.wal_dir`, binds its socket and
    /// starts it on `runtime`, applying commands to an in-memory
    /// [`KvStateMachine`] (`SET k v`, `GET k`, `DELETE k`).
    ///
    /// # Errors
    ///
    /// [`OctopiiError::InvalidConfig`] naming a bad field or an identity
    /// that cannot be read; [`OctopiiError::Io`] if the port is taken or
    /// the directory is held by a running node.
    pub async fn new(config: Config, runtime: OctopiiRuntime) -> Result<Self> {
        Self::new_with_state_machine(config, runtime, Arc::new(KvStateMachine::in_memory())).await
    }

    /// As [`OctopiiNode::new`], on a runtime of its own with
    /// `config.worker_threads` workers, waiting on the calling thread.
    ///
    /// # Errors
    ///
    /// As [`OctopiiNode::new`].
    ///
    /// # Panics
    ///
    /// Inside an async context (use [`OctopiiNode::new`] there).
    pub fn new_blocking(config: Config) -> Result<Self> {
        let runtime = OctopiiRuntime::new(config.worker_threads);
        runtime.handle().block_on(Self::new(config, runtime.clone()))
    }

    /// As [`OctopiiNode::new`], applying commands to `state_machine`.
    ///
    /// # Errors
    ///
    /// As [`OctopiiNode::new`].
    pub async fn new_with_state_machine(
        config: Config,
        runtime: OctopiiRuntime,
        state_machine: StateMachine,
    ) -> Result<Self> {
        let mut options = config.node_options(state_machine)?;
        // Nothing here reads what peers send the application.
        options.transport.application_deliveries = false;
        let node = NodeLoop::start_on(options, &runtime.handle())?;
        Ok(Self { id: config.node_id, node, _runtime: runtime })
    }

    /// Waits until the node has rebuilt its state from its log, and, for
    /// the only voter of its cluster (the first node of a new one), until
    /// it leads, so a proposal right after `start` succeeds.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`] if the log could not be read back, or a new
    /// cluster's first node did not win its election within 10 s.
    pub async fn start(&self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let status = self.status().await?;
            if !status.is_sole_voter() || status.is_leader() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let reason = format!("the only voter did not lead within {START_TIMEOUT:?}");
                return Err(OctopiiError::Node(NodeError::Refused(reason)));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops the node: pending requests fail, peers are told, and the log
    /// finishes what it was writing. Outside a runtime, or on a
    /// multi-threaded one, this returns once the port and the log are
    /// released (at most 5 s), so the node can be opened again at once; on
    /// a current-thread runtime it cannot wait, and they are released
    /// shortly after. Later calls fail with [`OctopiiError::Shutdown`].
    pub fn shutdown(&self) {
        let stopped = self.node.request_stop();
        let wait = move || {
            let (done, waited) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = stopped.blocking_recv();
                let _ = done.send(());
            });
            let _ = waited.recv_timeout(SHUTDOWN_TIMEOUT);
        };
        match tokio::runtime::Handle::try_current().map(|handle| handle.runtime_flavor()) {
            Err(_) => wait(),
            Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
            Ok(_) => {}
        }
    }

    /// Replicates `command` and returns what the state machine answered
    /// once a majority holds it durably and this node has applied it.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`]: not the leader (with the leader if known),
    /// dropped by a change of leader (not applied, safe to retry), timed
    /// out (outcome unknown), too large; [`OctopiiError::Rejected`] if the
    /// state machine refused the command (it is still in the log, applied
    /// as a refusal on every node).
    pub async fn propose(&self, command: Vec<u8>) -> Result<Bytes> {
        let Reply::Proposed(result) = self.node.call(Command::Propose(command.into())).await? else {
            unreachable!()
        };
        result?.map_err(OctopiiError::Rejected)
    }

    /// Runs a read-only `command` against this node's state machine. It may
    /// be stale on a follower; see [`OctopiiNode::linearizable_query`].
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Rejected`] if the state machine refused it.
    pub async fn query(&self, command: &[u8]) -> Result<Bytes> {
        let query = Command::Query(Bytes::copy_from_slice(command));
        let Reply::Queried(result) = self.node.call(query).await? else { unreachable!() };
        result?.map_err(OctopiiError::Rejected)
    }

    /// Runs a read-only `command` that sees every write acknowledged before
    /// it: the leader confirms it still leads and names its commit index,
    /// and this node (leader or follower) answers once it has applied that
    /// far.
    ///
    /// # Errors
    ///
    /// As [`OctopiiNode::propose`].
    pub async fn linearizable_query(&self, command: &[u8]) -> Result<Bytes> {
        let query = Command::LinearizableQuery(Bytes::copy_from_slice(command));
        let Reply::Queried(result) = self.node.call(query).await? else { unreachable!() };
        result?.map_err(OctopiiError::Rejected)
    }

    /// Whether this node leads now.
    pub async fn is_leader(&self) -> bool {
        self.status().await.is_ok_and(|status| status.is_leader())
    }

    /// Whether this node knows of a leader.
    pub async fn has_leader(&self) -> bool {
        self.status().await.is_ok_and(|status| status.leader.is_some())
    }

    /// Starts an election now.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Shutdown`] once stopped.
    pub async fn campaign(&self) -> Result<()> {
        self.done(Command::Campaign).await
    }

    /// Hands leadership to voter `peer_id` (leader only); returns once
    /// asked. Watch [`OctopiiNode::is_leader`] for the outcome.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`]: not the leader, or not a voter.
    pub async fn transfer_leader(&self, peer_id: u64) -> Result<()> {
        self.done(Command::TransferLeader(peer_id)).await
    }

    /// Adds node `peer_id`, listening at `addr`, as a learner: it receives
    /// the log but does not vote (leader only). Returns once the change is
    /// applied.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`]: not the leader, or Raft refused the change.
    pub async fn add_learner(&self, peer_id: u64, addr: SocketAddr) -> Result<()> {
        self.update_peer_addr(peer_id, addr).await;
        self.change(Membership::AddLearner, peer_id).await
    }

    /// Makes learner `peer_id` a voter (leader only). Check
    /// [`OctopiiNode::is_learner_caught_up`] first: a voter far behind
    /// weakens the quorum until it catches up.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::NodeNotFound`] if it is not a learner;
    /// [`OctopiiError::Node`] as for [`OctopiiNode::add_learner`].
    pub async fn promote_learner(&self, peer_id: u64) -> Result<()> {
        if !self.status().await?.learners.contains(&peer_id) {
            return Err(OctopiiError::NodeNotFound(peer_id));
        }
        self.change(Membership::AddVoter, peer_id).await
    }

    /// Removes voter or learner `peer_id` from the cluster (leader only).
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`] as for [`OctopiiNode::add_learner`].
    pub async fn remove_node(&self, peer_id: u64) -> Result<()> {
        self.change(Membership::Remove, peer_id).await
    }

    /// Whether learner `peer_id` holds every entry committed so far
    /// (leader only).
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`] with `NotLeader` on another node;
    /// [`OctopiiError::NodeNotFound`] if it is not a learner.
    pub async fn is_learner_caught_up(&self, peer_id: u64) -> Result<bool> {
        match self.status().await?.learner_caught_up(peer_id) {
            Err(NodeError::UnknownPeer(peer)) => Err(OctopiiError::NodeNotFound(peer)),
            result => Ok(result?),
        }
    }

    /// Takes a snapshot now and sends it to `peer_id` (leader only).
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`]: not the leader, unknown peer.
    pub async fn force_snapshot_to_peer(&self, peer_id: u64) -> Result<()> {
        self.done(Command::ForceSnapshot(peer_id)).await
    }

    /// A read fence: returns once a quorum has confirmed this node leads
    /// and it has applied every entry committed before the call, so a
    /// [`OctopiiNode::query`] right after sees every acknowledged write.
    /// `ctx` is not needed and is ignored.
    ///
    /// # Errors
    ///
    /// As [`OctopiiNode::propose`].
    pub async fn read_index(&self, ctx: Vec<u8>) -> Result<()> {
        let _ = ctx;
        let Reply::ReadIndex(result) = self.node.call(Command::ReadIndex).await? else { unreachable!() };
        result.map(|_| ()).map_err(OctopiiError::Node)
    }

    /// The voters and learners this node knows of (empty if stopped).
    pub async fn conf_state(&self) -> ConfStateCompat {
        self.status()
            .await
            .map(|status| ConfStateCompat { voters: status.voters, learners: status.learners })
            .unwrap_or_default()
    }

    /// How far `peer_id`'s log is known to match (`matched`) and the next
    /// index the leader sends it (`next`); `None` on a follower or for a
    /// node not in the cluster.
    pub async fn peer_progress(&self, peer_id: u64) -> Option<(u64, u64)> {
        let progress = self.status().await.ok()?.progress.get(&peer_id).copied()?;
        Some((progress.matched, progress.next))
    }

    /// Sets where node `peer_id` listens; the next message to it uses the
    /// new address.
    pub async fn update_peer_addr(&self, peer_id: u64, addr: SocketAddr) {
        let _ = self.node.call(Command::UpdatePeerAddr { node: peer_id, address: addr }).await;
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The address the node's socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.node.local_addr()
    }

    /// This node's view of the cluster: term, leader, commit and applied
    /// indices, members, and on the leader each member's progress.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Node`] if the node failed, [`OctopiiError::Shutdown`]
    /// once stopped.
    pub async fn status(&self) -> Result<NodeStatus> {
        let Reply::Status(status) = self.node.call(Command::Status).await? else { unreachable!() };
        Ok(status?)
    }

    async fn done(&self, command: Command) -> Result<()> {
        let Reply::Done(result) = self.node.call(command).await? else { unreachable!() };
        Ok(result?)
    }

    async fn change(&self, change: Membership, node: u64) -> Result<()> {
        let command = Command::ChangeMembership { change, node };
        let Reply::MembershipChanged(result) = self.node.call(command).await? else { unreachable!() };
        result.map(|_| ()).map_err(OctopiiError::Node)
    }
}
