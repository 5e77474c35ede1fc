//! The node's top-level state machine: inputs in, outputs out.
//!
//! A binding owns one [`Kernel`] and runs this loop:
//!
//! 1. feed one [`Input`] with [`Kernel::handle_input`] (a command from a
//!    caller, a disk completion, or a timeout once `now` has reached
//!    [`Kernel::poll_timeout`]);
//! 2. drain [`Kernel::poll_output`] until it returns `None`, executing every
//!    [`Output::Disk`] in order and delivering every [`Output::Reply`] to the
//!    caller that sent the command with the same [`CommandId`] (several
//!    inputs may be fed before draining: appends fed together leave in one
//!    log batch);
//! 3. wait for the next input, at most until [`Kernel::poll_timeout`].
//!
//! Disk operations must be executed one at a time in the order they were
//! polled; the kernel relies on that order (a sync covers the writes polled
//! before it).

use core::net::SocketAddr;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::client::{ClientOperation, ClientReply};
use crate::disk::{DiskCompletion, DiskOp, IoError};
use crate::fanout::{Fanout, Start};
use crate::formation::Formation;
use crate::node::{Membership, Node, NodeStatus};
use crate::raft::state_machine::StateMachine;
use crate::raft::{NodeConfig, NodeConfigError, NodeError, ReplicaEvent};
use crate::transport::chunk::{ChunkSource, FileRead, TransferError, TransferId, TransferReport};
use crate::transport::rpc::{
    MessageId, OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError, RpcResponse,
};
use crate::transport::{
    Delivery, PeerStatus, Room, Transmit, Transport, TransportConfig, TransportConfigError, TransportEvent,
    TransportOutput,
};
use crate::wal::{RecoveryReport, Wal, WalConfig, WalConfigError, WalEntry, WalError, WalEvent, WalStats};

/// Why a log must exist: nodes, their outputs and log events only exist in
/// a kernel with a log.
const ONLY_NODES: &str = "a node always runs on a log";

/// Everything a kernel needs to start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// The write-ahead log's tuning.
    pub wal: WalConfig,
}

impl KernelConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), WalConfigError> {
        self.wal.validate()
    }
}

/// Chosen by the binding to match a [`Reply`] to the [`Command`] it answers.
/// Ids must be unique among commands not yet answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandId(pub u64);

/// A request from a user of the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Answered with [`Reply::Opened`] once recovery has finished.
    Open,
    /// Append an entry; answered with [`Reply::Appended`] once it is durable.
    Append(Bytes),
    /// Answered with [`Reply::Flushed`] once everything appended before it is
    /// durable.
    Flush,
    /// Answered with [`Reply::Entries`]: every durable entry, oldest first.
    ReadAll,
    /// Discard entries at or above this sequence number; answered with
    /// [`Reply::Truncated`] once that is durable.
    TruncateFrom(u64),
    /// Remove segment files holding only entries below this sequence
    /// number; answered with [`Reply::Removed`].
    RemoveBefore(u64),
    /// Answered at once with [`Reply::Stats`].
    Stats,
    /// Replicate a command; answered with [`Reply::Proposed`] once it is
    /// applied here (leader only).
    Propose(Bytes),
    /// Run a command against the local state machine, without consensus;
    /// answered with [`Reply::Queried`].
    Query(Bytes),
    /// A linearizable read fence: answered with [`Reply::ReadIndex`] once a
    /// quorum confirmed the leader and this node has applied the read index.
    ReadIndex,
    /// A linearizable read: the fence of [`Command::ReadIndex`], then the
    /// command run against the local state machine; answered with
    /// [`Reply::Queried`].
    LinearizableQuery(Bytes),
    /// Start an election now; answered with [`Reply::Done`].
    Campaign,
    /// Hand leadership to this voter (leader only); answered with
    /// [`Reply::Done`] once asked (watch [`Reply::Status`] for the outcome),
    /// or with why not.
    TransferLeader(u64),
    /// Change the membership; answered with [`Reply::MembershipChanged`]
    /// once the change is applied.
    ChangeMembership {
        /// What to do.
        change: Membership,
        /// To which node.
        node: u64,
    },
    /// Send this peer a snapshot now (leader only); answered with
    /// [`Reply::Done`] once it is on its way.
    ForceSnapshot(u64),
    /// Answered at once with [`Reply::Status`].
    Status,
    /// Send an RPC request to a peer; answered with [`Reply::Response`]
    /// when its response arrives, the connection is lost or `timeout`
    /// passes.
    Request {
        /// The peer.
        to: u64,
        /// What to ask.
        payload: RequestPayload,
        /// How long to wait for the response.
        timeout: Duration,
    },
    /// Send a one-way message; answered with [`Reply::Sent`] once queued.
    SendOneWay {
        /// The peer.
        to: u64,
        /// The message.
        message: OneWayMessage,
    },
    /// Send opaque bytes; answered with [`Reply::Sent`] once queued.
    SendData {
        /// The peer.
        to: u64,
        /// The bytes.
        data: Bytes,
    },
    /// Send a file or bytes to a peer on a Shipping Lane stream; answered
    /// with [`Reply::ChunkSent`] once the receiver verified the digest.
    SendChunk {
        /// The peer.
        to: u64,
        /// What to send.
        source: ChunkSource,
    },
    /// Send a file or bytes to several peers at once, each on a stream of
    /// its own and at its own pace; the body's SHA-256 is computed once
    /// for all of them. Answered with [`Reply::ChunksSent`] once every
    /// transfer has ended.
    SendChunkToMany {
        /// The peers.
        to: Vec<u64>,
        /// What to send.
        source: ChunkSource,
    },
    /// Send a file or bytes to the nodes at several addresses, dialing
    /// each first. The peers reached within [`crate::fanout::DIAL_GROUP_WAIT`] of the
    /// first share one SHA-256 of the body; a peer reached later gets a
    /// transfer of its own rather than hold the others back. Answered with
    /// [`Reply::ChunksSentTo`] once every transfer (or its dial) has ended.
    SendChunkToAddresses {
        /// The addresses.
        to: Vec<SocketAddr>,
        /// What to send.
        source: ChunkSource,
    },
    /// Set where a peer listens; answered with [`Reply::Sent`].
    UpdatePeerAddr {
        /// The peer.
        node: u64,
        /// Its address.
        address: SocketAddr,
    },
    /// Dial an address without knowing which node listens there; answered
    /// with [`Reply::Connected`] once the node there has proved who it is.
    Connect(SocketAddr),
    /// Answered at once with [`Reply::Peer`]: what the transport knows of
    /// this node.
    PeerStatus(u64),
}

/// The answer to a [`Command`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Recovery's report, or why the log could not be opened.
    Opened(Result<RecoveryReport, WalError>),
    /// The entry's sequence number; it is durable.
    Appended(Result<u64, WalError>),
    /// Everything appended before the flush is durable.
    Flushed(Result<(), WalError>),
    /// The log's entries.
    Entries(Result<Vec<WalEntry>, WalError>),
    /// The truncation record's sequence number; it is durable.
    Truncated(Result<u64, WalError>),
    /// How many segment files were removed.
    Removed(Result<usize, WalError>),
    /// The log's counters.
    Stats(WalStats),
    /// The state machine's result for the proposal, or why it failed.
    Proposed(Result<Result<Bytes, String>, NodeError>),
    /// The local state machine's answer.
    Queried(Result<Result<Bytes, String>, NodeError>),
    /// The confirmed read index; the state machine has applied it.
    ReadIndex(Result<u64, NodeError>),
    /// The voters and learners after the change.
    MembershipChanged(Result<(Vec<u64>, Vec<u64>), NodeError>),
    /// The request was handed to Raft.
    Done(Result<(), NodeError>),
    /// The node's view of the cluster.
    Status(Result<NodeStatus, NodeError>),
    /// A peer's response to [`Command::Request`].
    Response(Result<RpcResponse, RpcError>),
    /// The message is queued for the peer.
    Sent(Result<(), RpcError>),
    /// The transfer's outcome.
    ChunkSent(Result<TransferReport, TransferError>),
    /// Each peer's transfer outcome, in the order of
    /// [`Command::SendChunkToMany`]'s peers.
    ChunksSent(Vec<(u64, Result<TransferReport, TransferError>)>),
    /// Each address's transfer outcome, in the order of
    /// [`Command::SendChunkToAddresses`]'s addresses; an address no node
    /// answered at fails with [`TransferError::Unreachable`].
    ChunksSentTo(Vec<(SocketAddr, Result<TransferReport, TransferError>)>),
    /// The id of the node at the address dialed.
    Connected(Result<u64, RpcError>),
    /// The peer's address and connection; `None` for a node never heard
    /// of (or no transport).
    Peer(Option<PeerStatus>),
}

/// Something that happened, for logs and metrics. Bindings report events;
/// they never act on them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The log finished recovery.
    WalRecovered(RecoveryReport),
    /// The log could not be recovered.
    WalRecoveryFailed(WalError),
    /// A write or sync failed; the log accepts nothing until reopened.
    WalFailed(IoError),
    /// A batch has been waiting for its sync longer than the flush interval.
    WalSyncOverdue {
        /// How long so far.
        elapsed: Duration,
    },
    /// Something happened in the Raft replica.
    Replica(ReplicaEvent),
    /// Removing log segments behind a snapshot failed; they stay on disk
    /// and are removed after the next snapshot.
    CompactionFailed(WalError),
    /// The node stopped: its storage failed or its state could not be
    /// rebuilt. Every later request fails with this error.
    NodeFailed(NodeError),
    /// Something happened to a connection.
    Transport(TransportEvent),
    /// A membership step of cluster formation failed; the next round tries
    /// again.
    FormationStepFailed(NodeError),
}

/// One input to [`Kernel::handle_input`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A user's command.
    Command {
        /// Echoed in the reply.
        id: CommandId,
        /// What to do.
        command: Command,
    },
    /// A disk operation finished.
    Disk(DiskCompletion),
    /// A Raft message arrived from peer `from` (already authenticated by the
    /// transport as that peer).
    Message {
        /// The sending node.
        from: u64,
        /// The encoded message.
        message: Bytes,
    },
    /// UDP datagrams arrived for the transport: each sender's address and
    /// the datagram. Pass every datagram one read of the socket gave at
    /// once; the transport answers the batch, not each packet.
    Datagrams(Vec<(SocketAddr, BytesMut)>),
    /// A read asked for by [`Output::ReadFile`] finished.
    FileRead {
        /// The transfer it was for.
        transfer: TransferId,
        /// The bytes read and the file's length, or why the read failed.
        result: Result<FileRead, IoError>,
    },
    /// The application took deliveries that took this room (the sum of
    /// their [`Delivery::room`]; see
    /// [`TransportConfig::delivery_budget`](crate::transport::TransportConfig::delivery_budget)).
    DeliveriesTaken(Room),
    /// The time from [`Kernel::poll_timeout`] has been reached.
    Timeout,
}

/// One output from [`Kernel::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Execute this, then feed back its completion.
    Disk(DiskOp),
    /// Deliver this Raft message to node `to` (best effort: Raft retries).
    Send {
        /// The receiving node.
        to: u64,
        /// The encoded message.
        message: Bytes,
    },
    /// Send this datagram from the node's UDP socket.
    Transmit(Transmit),
    /// Read part of a file for an outgoing transfer, then feed
    /// [`Input::FileRead`].
    ReadFile {
        /// The transfer.
        transfer: TransferId,
        /// The file.
        path: std::path::PathBuf,
        /// Where to read.
        offset: u64,
        /// How much (less only at the end of the file).
        len: usize,
    },
    /// Something a peer sent for the application (a message, or a piece or
    /// the outcome of an incoming transfer).
    Delivery(Delivery),
    /// Deliver this to the caller of command `id`.
    Reply {
        /// The command answered.
        id: CommandId,
        /// The answer.
        reply: Reply,
    },
    /// Report this.
    Event(Event),
}

/// Why [`Kernel::poll_timeout`] asks to be woken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerReason {
    /// To report a sync that takes longer than the flush interval.
    WalSyncOverdue,
    /// A Raft tick or a request deadline.
    Replica,
    /// A QUIC timer, an RPC deadline, a reconnect, or transfers to several
    /// addresses leaving together.
    Transport,
    /// The next round of cluster formation (see [`crate::formation`]).
    Formation,
}

#[derive(Debug)]
struct DurableWaiter {
    /// Reply once every sequence number below this is durable.
    until: u64,
    id: CommandId,
    reply: fn(Result<u64, WalError>) -> Reply,
    seq: u64,
}

/// Who a request handed to the log or the replica belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// A caller's command.
    Command(CommandId),
    /// The node reading its log back after recovery.
    NodeRecovery,
    /// The node removing segments a snapshot made obsolete.
    Compaction,
    /// Cluster formation dialing a configured address.
    FormationDial(SocketAddr),
    /// Cluster formation changing the membership.
    FormationChange,
    /// The dial of one address of a caller's
    /// [`Command::SendChunkToAddresses`]: its place in the command's list.
    FanoutDial {
        /// The command.
        id: CommandId,
        /// The address's index in its list.
        slot: usize,
    },
    /// One peer's transfer of a caller's [`Command::SendChunkToMany`] or
    /// [`Command::SendChunkToAddresses`]: its place in the command's list.
    Fanout {
        /// The command.
        id: CommandId,
        /// The peer's index in its list.
        slot: usize,
    },
    /// A client operation of peer `peer`, request `id`.
    Client {
        /// The peer asking.
        peer: u64,
        /// Its request.
        id: MessageId,
    },
}

/// Why a kernel could not be built.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KernelConfigError {
    /// The log's configuration is invalid.
    #[error(transparent)]
    Wal(#[from] WalConfigError),
    /// The node's configuration is invalid.
    #[error(transparent)]
    Node(#[from] NodeConfigError),
    /// The transport's configuration is invalid.
    #[error(transparent)]
    Transport(#[from] TransportConfigError),
    /// The transport's node id differs from the node's.
    #[error("transport is configured for node {transport}, the node is {node}")]
    NodeIdMismatch {
        /// The transport's id.
        transport: u64,
        /// The node's id.
        node: u64,
    },
}

/// Why a transfer cannot start on a kernel without a transport.
fn no_transport() -> TransferError {
    TransferError::Unreachable("no transport configured".into())
}

/// A node's state machine. See the module documentation for the loop.
#[derive(Debug)]
pub struct Kernel {
    /// `None` only in a transport-only kernel ([`Kernel::new_transport`]).
    wal: Option<Wal>,
    node: Option<Node>,
    transport: Option<Transport>,
    formation: Option<Formation>,
    /// Snapshots riding transfers, by transfer: the peer they go to.
    snapshot_transfers: BTreeMap<TransferId, u64>,
    recovered: Option<Result<RecoveryReport, WalError>>,
    queued: VecDeque<(CommandId, Command)>,
    open_waiters: Vec<CommandId>,
    durable_waiters: VecDeque<DurableWaiter>,
    tickets: BTreeMap<u64, Ticket>,
    next_ticket: u64,
    /// Commands sending one body to several peers, still running.
    fanouts: BTreeMap<CommandId, Fanout>,
    outputs: VecDeque<Output>,
}

impl Kernel {
    /// Creates a kernel owning a standalone log; it starts recovering the
    /// log at once (the first outputs are disk operations).
    ///
    /// # Errors
    ///
    /// An invalid config.
    pub fn new(config: KernelConfig) -> Result<Self, WalConfigError> {
        config.validate()?;
        Ok(Self::build(Some(config), None))
    }

    /// Creates a kernel for a replicated node: its log holds the node's Raft
    /// state, rebuilt after recovery, and `state_machine` is the one applied.
    ///
    /// # Errors
    ///
    /// An invalid config.
    pub fn new_node(
        config: KernelConfig,
        node: NodeConfig,
        state_machine: StateMachine,
    ) -> Result<Self, KernelConfigError> {
        config.validate()?;
        node.validate()?;
        Ok(Self::build(Some(config), Some(Node::new(node, state_machine))))
    }

    /// Creates a replicated node that talks to its peers over QUIC: Raft
    /// messages leave as datagrams ([`Output::Transmit`]) instead of
    /// [`Output::Send`], and RPC commands work.
    ///
    /// # Errors
    ///
    /// An invalid config, or a transport for another node id.
    pub fn new_networked_node(
        config: KernelConfig,
        node: NodeConfig,
        state_machine: StateMachine,
        transport: TransportConfig,
    ) -> Result<Self, KernelConfigError> {
        if transport.node_id != node.id {
            return Err(KernelConfigError::NodeIdMismatch { transport: transport.node_id, node: node.id });
        }
        let transport = Transport::new(transport)?;
        let formation = Formation::new(&node.peer_addresses);
        let mut kernel = Self::new_node(config, node, state_machine)?;
        kernel.transport = Some(transport);
        kernel.formation = formation;
        Ok(kernel)
    }

    /// Installs the handler for incoming RPC requests, replacing any earlier
    /// one. Without a handler, requests are answered with an error payload.
    pub fn set_request_handler(&mut self, handler: RequestHandler) {
        if let Some(transport) = &mut self.transport {
            transport.set_request_handler(handler);
        }
    }

    /// Stops serving: pending node requests fail with
    /// [`NodeError::ShuttingDown`], connections close (their close frames
    /// are among the next outputs) and pending RPC requests fail.
    pub fn shutdown(&mut self, now: Instant) {
        if let Some(node) = &mut self.node {
            if let Some(wal) = &mut self.wal {
                node.write_hard_state(now, wal);
            }
            node.fail(NodeError::ShuttingDown);
        }
        if let Some(transport) = &mut self.transport {
            transport.shutdown(now);
        }
        // Transfers waiting for their group to leave fail with the rest.
        let waiting: Vec<(CommandId, Start)> =
            self.fanouts.iter_mut().map(|(&id, fanout)| (id, fanout.leave())).collect();
        for (id, start) in waiting {
            self.start_fanout(now, id, start);
        }
        self.collect(Some(now));
    }

    /// Creates a kernel that runs a QUIC endpoint alone: RPC, messages and
    /// transfers between nodes, with no log and no Raft (log and node
    /// commands fail; Raft messages from peers are dropped).
    ///
    /// # Errors
    ///
    /// An invalid transport config.
    pub fn new_transport(transport: TransportConfig) -> Result<Self, TransportConfigError> {
        let mut kernel = Self::build(None, None);
        kernel.transport = Some(Transport::new(transport)?);
        kernel.recovered = Some(Err(WalError::NoLog));
        Ok(kernel)
    }

    /// The transport, for its counters and connection state.
    #[must_use]
    pub fn transport(&self) -> Option<&Transport> {
        self.transport.as_ref()
    }

    fn build(config: Option<KernelConfig>, node: Option<Node>) -> Self {
        let mut kernel = Self {
            wal: config.map(|config| Wal::new(config.wal)),
            node,
            transport: None,
            formation: None,
            snapshot_transfers: BTreeMap::new(),
            recovered: None,
            queued: VecDeque::new(),
            open_waiters: Vec::new(),
            durable_waiters: VecDeque::new(),
            tickets: BTreeMap::new(),
            next_ticket: 0,
            fanouts: BTreeMap::new(),
            outputs: VecDeque::new(),
        };
        kernel.collect(None);
        kernel
    }

    /// Whether commands can run (the log, and the node if any, recovered).
    fn is_ready(&self) -> bool {
        self.wal.as_ref().is_none_or(|wal| !wal.is_recovering())
            && self.node.as_ref().is_none_or(Node::is_ready)
    }

    /// Consumes one input. Follow it by draining [`Kernel::poll_output`].
    pub fn handle_input(&mut self, now: Instant, input: Input) {
        match input {
            Input::Command { id, command } => {
                if self.is_ready() {
                    self.execute(now, id, command);
                } else {
                    self.queued.push_back((id, command));
                }
            }
            Input::Disk(completion) => {
                let wal = self.wal.as_mut().filter(|wal| wal.owns(completion.io));
                let wal =
                    wal.unwrap_or_else(|| panic!("completion for an unknown operation: {completion:?}"));
                wal.handle_completion(now, completion);
            }
            Input::Message { from, message } => {
                if let (Some(node), Some(wal)) = (&mut self.node, &mut self.wal) {
                    node.handle_message(now, from, &message, wal);
                }
            }
            Input::Datagrams(datagrams) => {
                if let Some(transport) = &mut self.transport {
                    transport.handle_datagrams(now, datagrams);
                }
            }
            Input::FileRead { transfer, result } => {
                if let Some(transport) = &mut self.transport {
                    transport.handle_file_read(now, transfer, result);
                }
            }
            Input::DeliveriesTaken(room) => {
                if let Some(transport) = &mut self.transport {
                    transport.deliveries_taken(now, room);
                }
            }
            Input::Timeout => {
                if let Some(wal) = &mut self.wal {
                    wal.handle_timeout(now);
                    if let Some(node) = &mut self.node {
                        node.handle_timeout(now, wal);
                    }
                }
                if let Some(transport) = &mut self.transport
                    && transport.poll_timeout().is_some_and(|at| at <= now)
                {
                    transport.handle_timeout(now);
                }
                let due: Vec<(CommandId, Start)> =
                    self.fanouts.iter_mut().map(|(&id, fanout)| (id, fanout.handle_timeout(now))).collect();
                for (id, start) in due {
                    self.start_fanout(now, id, start);
                }
            }
        }
        self.form_cluster(now);
        self.collect(Some(now));
    }

    /// Runs a round of cluster formation if one is due: dials the peer
    /// addresses not known yet and, on the leader, takes the next
    /// membership step.
    fn form_cluster(&mut self, now: Instant) {
        let Some(formation) = self.formation.as_mut().filter(|formation| formation.is_due(now)) else {
            return;
        };
        let dials = formation.start_round(now);
        let change =
            self.node.as_ref().and_then(Node::status).and_then(|status| formation.next_change(&status));
        for address in dials {
            let ticket = self.ticket(Ticket::FormationDial(address));
            self.transport.as_mut().expect("formation runs with a transport").connect(now, ticket, address);
        }
        if let Some((change, node)) = change {
            let ticket = self.ticket(Ticket::FormationChange);
            let addresses = self.transport.as_ref().map(Transport::known_addresses).unwrap_or_default();
            let command = Command::ChangeMembership { change, node };
            if let (Some(node), Some(wal)) = (&mut self.node, &mut self.wal) {
                node.execute(now, ticket, command, addresses, wal);
            }
        }
    }

    /// The next output, or `None` when there is nothing more to do until the
    /// next input. Disk operations are produced last and lazily, so inputs
    /// fed before polling share one log batch.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front().or_else(|| self.wal.as_mut()?.poll_op().map(Output::Disk))
    }

    /// When to feed [`Input::Timeout`], and why; `None` if no timer is set.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<(Instant, TimerReason)> {
        let wal = self.wal.as_ref().and_then(Wal::poll_timeout).map(|at| (at, TimerReason::WalSyncOverdue));
        let node = self.node.as_ref().and_then(Node::poll_timeout).map(|at| (at, TimerReason::Replica));
        let transport =
            self.transport.as_ref().and_then(Transport::poll_timeout).map(|at| (at, TimerReason::Transport));
        let formation =
            self.formation.as_ref().and_then(Formation::poll_timeout).map(|at| (at, TimerReason::Formation));
        let fanouts = self
            .fanouts
            .values()
            .filter_map(Fanout::poll_timeout)
            .min()
            .map(|at| (at, TimerReason::Transport));
        [wal, node, transport, formation, fanouts].into_iter().flatten().min_by_key(|&(at, _)| at)
    }

    fn reply(&mut self, id: CommandId, reply: Reply) {
        self.outputs.push_back(Output::Reply { id, reply });
    }

    /// Starts the transfers of fanout `id` in `start`, with one digest.
    fn start_fanout(&mut self, now: Instant, id: CommandId, start: Start) {
        let (Some(transport), Some(fanout)) = (&mut self.transport, self.fanouts.get(&id)) else { return };
        if start.is_empty() {
            return;
        }
        let mut targets = Vec::with_capacity(start.len());
        for (slot, peer) in start {
            targets.push((self.next_ticket, peer));
            self.tickets.insert(self.next_ticket, Ticket::Fanout { id, slot });
            self.next_ticket += 1;
        }
        transport.send_chunk(now, &targets, fanout.source().clone());
    }

    /// Replies to fanout `id` if all its transfers have ended.
    fn answer_fanout(&mut self, id: CommandId) {
        if let Some(reply) = self.fanouts.get_mut(&id).and_then(Fanout::reply) {
            self.fanouts.remove(&id);
            self.reply(id, reply);
        }
    }

    fn ticket(&mut self, owner: Ticket) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.tickets.insert(ticket, owner);
        ticket
    }

    fn execute(&mut self, now: Instant, id: CommandId, command: Command) {
        let command = match self.execute_transport(now, id, command) {
            Some(command) => command,
            None => return,
        };
        let node_command = matches!(
            command,
            Command::Propose(_)
                | Command::Query(_)
                | Command::ReadIndex
                | Command::LinearizableQuery(_)
                | Command::Campaign
                | Command::TransferLeader(_)
                | Command::ChangeMembership { .. }
                | Command::ForceSnapshot(_)
                | Command::Status
        );
        if node_command {
            if let (Command::ChangeMembership { change: Membership::Remove, node }, Some(formation)) =
                (&command, &mut self.formation)
            {
                formation.removed(*node);
            }
            let ticket = self.ticket(Ticket::Command(id));
            match (&mut self.node, &mut self.wal) {
                (Some(node), Some(wal)) => {
                    let addresses = match (&command, &self.transport) {
                        (Command::ChangeMembership { .. }, Some(transport)) => transport.known_addresses(),
                        _ => Vec::new(),
                    };
                    node.execute(now, ticket, command, addresses, wal)
                }
                _ => {
                    self.tickets.remove(&ticket);
                    self.reply(id, crate::node::failure_reply(&command, NodeError::NotConfigured));
                }
            }
            return;
        }
        let log_command = !matches!(command, Command::Open | Command::Stats);
        if log_command && self.node.is_some() {
            let reply = match command {
                Command::Append(_) => Reply::Appended(Err(WalError::OwnedByNode)),
                Command::Flush => Reply::Flushed(Err(WalError::OwnedByNode)),
                Command::ReadAll => Reply::Entries(Err(WalError::OwnedByNode)),
                Command::TruncateFrom(_) => Reply::Truncated(Err(WalError::OwnedByNode)),
                _ => Reply::Removed(Err(WalError::OwnedByNode)),
            };
            return self.reply(id, reply);
        }
        if let Command::Open = command {
            match &self.recovered {
                Some(result) => self.reply(id, Reply::Opened(result.clone())),
                None => self.open_waiters.push(id),
            }
            return;
        }
        let Some(wal) = &mut self.wal else {
            let reply = match command {
                Command::Append(_) => Reply::Appended(Err(WalError::NoLog)),
                Command::Flush => Reply::Flushed(Err(WalError::NoLog)),
                Command::ReadAll => Reply::Entries(Err(WalError::NoLog)),
                Command::TruncateFrom(_) => Reply::Truncated(Err(WalError::NoLog)),
                Command::Stats => Reply::Stats(WalStats::default()),
                _ => Reply::Removed(Err(WalError::NoLog)),
            };
            return self.reply(id, reply);
        };
        match command {
            Command::Append(payload) => {
                let result = wal.append(now, payload);
                self.wait_durable(id, result, Reply::Appended);
            }
            Command::TruncateFrom(from_seq) => {
                let result = wal.truncate_from(now, from_seq);
                self.wait_durable(id, result, Reply::Truncated);
            }
            Command::Flush => {
                let result = wal.check_open().map(|()| wal.next_seq().saturating_sub(1));
                let flushed = |result: Result<u64, WalError>| Reply::Flushed(result.map(|_| ()));
                match result {
                    Ok(_) if wal.durable_next() == wal.next_seq() => self.reply(id, Reply::Flushed(Ok(()))),
                    result => self.wait_durable(id, result, flushed),
                }
            }
            Command::ReadAll => {
                let ticket = self.ticket(Ticket::Command(id));
                if let Err(error) = self.wal.as_mut().expect("checked above").read_all(ticket) {
                    self.tickets.remove(&ticket);
                    self.reply(id, Reply::Entries(Err(error)));
                }
            }
            Command::Stats => {
                let stats = wal.stats();
                self.reply(id, Reply::Stats(stats));
            }
            Command::RemoveBefore(seq) => {
                let ticket = self.ticket(Ticket::Command(id));
                if let Err(error) = self.wal.as_mut().expect("checked above").remove_before(ticket, seq) {
                    self.tickets.remove(&ticket);
                    self.reply(id, Reply::Removed(Err(error)));
                }
            }
            _ => unreachable!("node commands are handled above"),
        }
    }

    /// Runs a transport command; returns any other command untouched.
    fn execute_transport(&mut self, now: Instant, id: CommandId, command: Command) -> Option<Command> {
        let transport_command = matches!(
            command,
            Command::Request { .. }
                | Command::SendOneWay { .. }
                | Command::SendData { .. }
                | Command::SendChunk { .. }
                | Command::SendChunkToMany { .. }
                | Command::SendChunkToAddresses { .. }
                | Command::UpdatePeerAddr { .. }
                | Command::Connect(_)
                | Command::PeerStatus(_)
        );
        if !transport_command {
            return Some(command);
        }
        let Some(transport) = &mut self.transport else {
            let reply = match command {
                Command::Request { .. } => Reply::Response(Err(RpcError::NoTransport)),
                Command::SendChunk { .. } => Reply::ChunkSent(Err(no_transport())),
                Command::SendChunkToMany { to, .. } => {
                    Reply::ChunksSent(to.into_iter().map(|peer| (peer, Err(no_transport()))).collect())
                }
                Command::SendChunkToAddresses { to, .. } => Reply::ChunksSentTo(
                    to.into_iter().map(|address| (address, Err(no_transport()))).collect(),
                ),
                Command::Connect(_) => Reply::Connected(Err(RpcError::NoTransport)),
                Command::PeerStatus(_) => Reply::Peer(None),
                _ => Reply::Sent(Err(RpcError::NoTransport)),
            };
            self.reply(id, reply);
            return None;
        };
        match command {
            Command::Request { to, payload, timeout } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.tickets.insert(ticket, Ticket::Command(id));
                transport.request(now, ticket, to, payload, timeout);
            }
            Command::SendOneWay { to, message } => {
                let result = transport.send_one_way(now, to, message);
                self.reply(id, Reply::Sent(result));
            }
            Command::SendData { to, data } => {
                let result = transport.send_data(now, to, data);
                self.reply(id, Reply::Sent(result));
            }
            Command::SendChunk { to, source } => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.tickets.insert(ticket, Ticket::Command(id));
                transport.send_chunk(now, &[(ticket, to)], source);
            }
            Command::SendChunkToMany { to, source } => {
                if to.is_empty() {
                    self.reply(id, Reply::ChunksSent(Vec::new()));
                    return None;
                }
                let (fanout, start) = Fanout::to_peers(to, source);
                self.fanouts.insert(id, fanout);
                self.start_fanout(now, id, start);
            }
            Command::SendChunkToAddresses { to, source } => {
                if to.is_empty() {
                    self.reply(id, Reply::ChunksSentTo(Vec::new()));
                    return None;
                }
                for (slot, &address) in to.iter().enumerate() {
                    self.tickets.insert(self.next_ticket, Ticket::FanoutDial { id, slot });
                    transport.connect(now, self.next_ticket, address);
                    self.next_ticket += 1;
                }
                self.fanouts.insert(id, Fanout::to_addresses(to, source));
            }
            Command::UpdatePeerAddr { node, address } => {
                transport.update_peer_addr(now, node, address);
                self.reply(id, Reply::Sent(Ok(())));
            }
            Command::Connect(address) => {
                let ticket = self.next_ticket;
                self.next_ticket += 1;
                self.tickets.insert(ticket, Ticket::Command(id));
                transport.connect(now, ticket, address);
            }
            Command::PeerStatus(peer) => {
                let status = transport.peer_status(peer);
                self.reply(id, Reply::Peer(status));
            }
            _ => unreachable!("only transport commands reach here"),
        }
        None
    }

    /// Holds the reply to a command until sequence number `seq` is durable.
    fn wait_durable(
        &mut self,
        id: CommandId,
        result: Result<u64, WalError>,
        reply: fn(Result<u64, WalError>) -> Reply,
    ) {
        match result {
            Ok(seq) => self.durable_waiters.push_back(DurableWaiter { until: seq + 1, id, reply, seq }),
            Err(error) => self.reply(id, reply(Err(error))),
        }
    }

    /// Turns the log's events and the node's work into outputs (disk
    /// operations are polled lazily, see [`Kernel::poll_output`]). `now` is
    /// `None` only during construction, when nothing can be queued yet.
    fn collect(&mut self, now: Option<Instant>) {
        loop {
            if let Some(event) = self.wal.as_mut().and_then(Wal::poll_event) {
                self.on_wal_event(now, event);
                continue;
            }
            if let Some(output) = self.node.as_mut().and_then(Node::poll_output) {
                self.on_node_output(now, output);
                continue;
            }
            let Some(output) = self.transport.as_mut().and_then(Transport::poll_output) else { break };
            self.on_transport_output(now, output);
        }
    }

    fn on_transport_output(&mut self, now: Option<Instant>, output: TransportOutput) {
        match output {
            TransportOutput::Transmit(transmit) => self.outputs.push_back(Output::Transmit(transmit)),
            TransportOutput::Raft { from, message } => {
                let now = now.expect("messages arrive on an input");
                if let (Some(node), Some(wal)) = (&mut self.node, &mut self.wal) {
                    node.handle_message(now, from, &message, wal);
                }
            }
            TransportOutput::Response { ticket, result } => match self.tickets.remove(&ticket) {
                Some(Ticket::Command(id)) => self.reply(id, Reply::Response(result)),
                owner => panic!("transport answered ticket {ticket} owned by {owner:?}"),
            },
            TransportOutput::Delivery(delivery) => self.outputs.push_back(Output::Delivery(delivery)),
            TransportOutput::Event(event) => self.outputs.push_back(Output::Event(Event::Transport(event))),
            TransportOutput::RaftTransferDone { transfer, delivered } => {
                if let (Some(peer), Some(now), Some(node), Some(wal)) =
                    (self.snapshot_transfers.remove(&transfer), now, &mut self.node, &mut self.wal)
                {
                    node.snapshot_delivered(now, peer, delivered, wal);
                }
            }
            TransportOutput::ChunkSent { ticket, result } => match self.tickets.remove(&ticket) {
                Some(Ticket::Command(id)) => self.reply(id, Reply::ChunkSent(result)),
                Some(Ticket::Fanout { id, slot }) => {
                    if let Some(fanout) = self.fanouts.get_mut(&id) {
                        fanout.finished(slot, result);
                    }
                    self.answer_fanout(id);
                }
                owner => panic!("transport answered ticket {ticket} owned by {owner:?}"),
            },
            TransportOutput::ClientRequest { from, id, operation, data } => {
                let now = now.expect("requests arrive on an input");
                let command = match operation {
                    ClientOperation::Propose => Command::Propose(data),
                    ClientOperation::Query => Command::Query(data),
                    ClientOperation::Read => Command::LinearizableQuery(data),
                    ClientOperation::Status => Command::Status,
                };
                let ticket = self.ticket(Ticket::Client { peer: from, id });
                match (&mut self.node, &mut self.wal) {
                    (Some(node), Some(wal)) => node.execute(now, ticket, command, Vec::new(), wal),
                    _ => {
                        self.tickets.remove(&ticket);
                        self.answer_client(now, from, id, ClientReply::Failed("no replicated node".into()));
                    }
                }
            }
            TransportOutput::Connected { ticket, result } => match self.tickets.remove(&ticket) {
                Some(Ticket::Command(id)) => self.reply(id, Reply::Connected(result)),
                Some(Ticket::FormationDial(address)) => {
                    if let Some(formation) = &mut self.formation {
                        formation.dialed(address, result.ok());
                    }
                }
                Some(Ticket::FanoutDial { id, slot }) => {
                    let now = now.expect("dials are answered on an input");
                    let start = self
                        .fanouts
                        .get_mut(&id)
                        .map(|fanout| fanout.dialed(now, slot, result))
                        .unwrap_or_default();
                    self.start_fanout(now, id, start);
                    self.answer_fanout(id);
                }
                owner => panic!("transport answered ticket {ticket} owned by {owner:?}"),
            },
            TransportOutput::ReadFile { transfer, path, offset, len } => {
                self.outputs.push_back(Output::ReadFile { transfer, path, offset, len })
            }
        }
    }

    fn answer_client(&mut self, now: Instant, peer: u64, id: MessageId, answer: ClientReply) {
        let success = matches!(answer, ClientReply::Applied(_) | ClientReply::Status(_));
        let payload = ResponsePayload::CustomResponse { success, data: answer.encode() };
        if let Some(transport) = &mut self.transport {
            transport.respond(now, peer, id, payload);
        }
    }

    fn on_node_output(&mut self, now: Option<Instant>, output: crate::node::NodeOutput) {
        use crate::node::NodeOutput;
        match output {
            NodeOutput::Send { to, message, snapshot } => {
                let now = now.expect("nodes send only in answer to an input");
                let transfer = match &mut self.transport {
                    Some(transport) => transport.send_raft(now, to, message),
                    None => {
                        self.outputs.push_back(Output::Send { to, message });
                        None
                    }
                };
                match (snapshot, transfer) {
                    (false, _) => {}
                    (true, Some(transfer)) => {
                        self.snapshot_transfers.insert(transfer, to);
                    }
                    // Sent whole: nothing reports its delivery.
                    (true, None) => {
                        let node = self.node.as_mut().expect("only a node sends raft messages");
                        node.snapshot_delivered(now, to, true, self.wal.as_mut().expect(ONLY_NODES));
                    }
                }
            }
            NodeOutput::Reply { ticket, reply } => match self.tickets.remove(&ticket) {
                Some(Ticket::Command(id)) => self.reply(id, reply),
                Some(Ticket::Client { peer, id }) => {
                    let now = now.expect("nodes answer on an input");
                    let transport = self.transport.as_ref();
                    let leader_address = |leader| transport.and_then(|transport| transport.peer_addr(leader));
                    let answer = match reply {
                        Reply::Proposed(result) | Reply::Queried(result) => {
                            ClientReply::from_result(result, leader_address)
                        }
                        Reply::Status(Ok(status)) => ClientReply::Status(status),
                        Reply::Status(Err(error)) => ClientReply::Failed(error.to_string()),
                        other => unreachable!("a client operation answered with {other:?}"),
                    };
                    self.answer_client(now, peer, id, answer);
                }
                Some(Ticket::FormationChange) => {
                    if let Some(formation) = &mut self.formation {
                        formation.changed();
                    }
                    if let Reply::MembershipChanged(Err(error)) = reply {
                        self.outputs.push_back(Output::Event(Event::FormationStepFailed(error)));
                    }
                }
                owner => panic!("node answered ticket {ticket} owned by {owner:?}"),
            },
            NodeOutput::Event(event) => self.outputs.push_back(Output::Event(event)),
            NodeOutput::PeerAddresses(addresses) => {
                if let (Some(transport), Some(now)) = (&mut self.transport, now) {
                    for (peer, address) in addresses {
                        transport.learn_peer_addr(now, peer, address);
                    }
                }
            }
            NodeOutput::RemoveWalBefore(seq) => {
                let ticket = self.ticket(Ticket::Compaction);
                if self.wal.as_mut().expect(ONLY_NODES).remove_before(ticket, seq).is_err() {
                    self.tickets.remove(&ticket);
                }
            }
            NodeOutput::Ready => {
                let queued = std::mem::take(&mut self.queued);
                if let Some(now) = now {
                    for (id, command) in queued {
                        self.execute(now, id, command);
                    }
                }
            }
        }
    }

    fn on_wal_event(&mut self, now: Option<Instant>, event: WalEvent) {
        match event {
            WalEvent::Recovered(report) => {
                self.outputs.push_back(Output::Event(Event::WalRecovered(report.clone())));
                self.finish_recovery(now, Ok(report));
            }
            WalEvent::RecoveryFailed(error) => {
                let error = WalError::Recovery(error);
                self.outputs.push_back(Output::Event(Event::WalRecoveryFailed(error.clone())));
                if let Some(node) = &mut self.node {
                    node.fail(NodeError::Storage(error.to_string()));
                }
                self.finish_recovery(now, Err(error));
            }
            WalEvent::Durable { upto } => {
                while let Some(waiter) = self.durable_waiters.front().filter(|waiter| waiter.until <= upto) {
                    let (id, reply) = (waiter.id, (waiter.reply)(Ok(waiter.seq)));
                    self.durable_waiters.pop_front();
                    self.reply(id, reply);
                }
                if let (Some(node), Some(now)) = (&mut self.node, now) {
                    node.handle_durable(now, self.wal.as_mut().expect(ONLY_NODES));
                }
            }
            WalEvent::Failed(error) => {
                for waiter in std::mem::take(&mut self.durable_waiters) {
                    self.reply(waiter.id, (waiter.reply)(Err(WalError::Io(error.clone()))));
                }
                if let Some(node) = &mut self.node {
                    node.fail(NodeError::Storage(error.to_string()));
                }
                self.outputs.push_back(Output::Event(Event::WalFailed(error)));
            }
            WalEvent::SyncOverdue { elapsed } => {
                self.outputs.push_back(Output::Event(Event::WalSyncOverdue { elapsed }));
            }
            WalEvent::ReadDone { ticket, result } => match self.tickets.remove(&ticket) {
                Some(Ticket::Command(id)) => self.reply(id, Reply::Entries(result)),
                Some(Ticket::NodeRecovery) => {
                    let (node, now) = (self.node.as_mut().expect("only a node reads itself back"), now);
                    node.rebuild(
                        now.expect("recovery completes on an input"),
                        result,
                        self.wal.as_mut().expect(ONLY_NODES),
                    );
                }
                owner => panic!("read done for ticket {ticket} owned by {owner:?}"),
            },
            WalEvent::Removed { ticket, result } => match self.tickets.remove(&ticket) {
                Some(Ticket::Command(id)) => self.reply(id, Reply::Removed(result)),
                Some(Ticket::Compaction) => {
                    if let Err(error) = result {
                        self.outputs.push_back(Output::Event(Event::CompactionFailed(error)));
                    }
                }
                owner => panic!("removal done for ticket {ticket} owned by {owner:?}"),
            },
        }
    }

    fn finish_recovery(&mut self, now: Option<Instant>, result: Result<RecoveryReport, WalError>) {
        for id in std::mem::take(&mut self.open_waiters) {
            self.reply(id, Reply::Opened(result.clone()));
        }
        let recovered = result.is_ok();
        self.recovered = Some(result);
        if recovered && self.node.is_some() {
            // The node rebuilds its state from the log before taking commands.
            let ticket = self.ticket(Ticket::NodeRecovery);
            self.wal.as_mut().expect(ONLY_NODES).read_all(ticket).expect("the log has just opened");
            return;
        }
        let queued = std::mem::take(&mut self.queued);
        if let Some(now) = now {
            for (id, command) in queued {
                self.execute(now, id, command);
            }
        }
    }
}
