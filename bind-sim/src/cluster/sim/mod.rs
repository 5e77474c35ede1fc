//! `ClusterSim`: kernels of a Raft cluster driven by one discrete-event
//! queue on virtual time. This file is the engine; `script.rs` is the API
//! tests script with.
//!
//! Each node is a [`Kernel::new_node`] with its own [`SimDisk`] (kept across
//! crashes) and its own state machine wrapped in a [`Recorder`]. Events are
//! ordered by (virtual time, insertion number) and are of three kinds: a
//! node's disk operation finishes (operations run one at a time per node,
//! in polled order, with seeded latencies), a node's timer fires (armed at
//! `poll_timeout`), a message arrives. After every input the node's outputs
//! are drained; the recorder's log and the outputs go through the oracles.
//! Commands go to the kernel at once: a node still rebuilding its state
//! queues them itself.
//!
//! With [`ClusterConfig::quic`], each kernel also runs the core's QUIC
//! transport: nodes listen on `10.0.<id / 256>.<id % 256>:4000`, prove
//! themselves with certificates of a CA made from the run's seed, and the
//! network carries their datagrams (dropped, delayed, duplicated,
//! reordered, cut like messages). The TLS provider is the simulator's
//! seeded one ([`crate::crypto`]), so the run stays a function of its seed.

mod script;

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::{Ipv4Addr, SocketAddr};

use bytes::{Bytes, BytesMut};
use octopii_core::disk::{DiskCompletion, DiskOp};
use octopii_core::raft::state_machine::{KvStateMachine, StateMachine};
use octopii_core::raft::{NodeConfig, ReplicaEvent};
use octopii_core::transport::TransportConfig;
use octopii_core::transport::tls::DevCa;
use octopii_core::{Command, CommandId, Event, Input, Kernel, KernelConfig, Output, Reply};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::network::Network;
use super::oracle::{Oracle, show};
use super::recorder::{Record, Recorder, mark_query};
use super::{ClusterConfig, ClusterConfigError, ClusterStats, Handle, NODES_MAX, Outcome, Violation};
use crate::disk::{INJECTED, SimDisk};
use crate::time::{EventQueue, VirtualClock};
use crate::trace::{Trace, describe_input, describe_op, describe_output, describe_result};

/// Makes the state machine of a node (given its id) each time it starts;
/// the state must start empty. Called with id 0 for the oracle's model.
pub type StateMachineFactory = Box<dyn Fn(u64) -> StateMachine>;

/// Which state machines a cluster runs.
pub(crate) enum Machines {
    /// A [`KvStateMachine`] per node; the oracle checks reads value by value.
    Kv,
    /// The given factory's.
    Custom(StateMachineFactory),
}

/// The default factory: an empty [`KvStateMachine`] per node.
fn kv_factory() -> StateMachineFactory {
    Box::new(|_| Arc::new(KvStateMachine::in_memory()))
}

/// Events processed without virtual time moving before the run is declared
/// stuck in a loop.
const SAME_INSTANT_EVENTS_MAX: u64 = 2_000_000;
/// Grace beyond the request timeout before an unanswered command is a
/// violation (timeouts are checked on the next tick, and a node that is
/// still recovering queues commands).
const REPLY_SLACK: Duration = Duration::from_millis(500);

#[derive(Debug)]
enum SimEvent {
    DiskDone { node: u64, incarnation: u64, op: DiskOp },
    Timer { node: u64, incarnation: u64 },
    Deliver { from: u64, to: u64, message: Bytes },
    Datagram { from: u64, to: u64, data: Bytes },
}

/// The simulated address of node `id`.
fn node_address(id: u64) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, (id >> 8) as u8, id as u8), 4000))
}

/// The node listening at `address`, if it is a node address.
fn node_at(address: SocketAddr) -> Option<u64> {
    match address {
        SocketAddr::V4(v4) if v4.port() == 4000 && v4.ip().octets()[..2] == [10, 0] => {
            let [_, _, high, low] = v4.ip().octets();
            Some(u64::from(high) << 8 | u64::from(low))
        }
        _ => None,
    }
}

/// 32 seed bytes for `purpose` of node `id` in incarnation `incarnation`.
fn derived_seed(seed: u64, purpose: u8, id: u64, incarnation: u64) -> [u8; 32] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ (u64::from(purpose) << 56) ^ (id << 32) ^ incarnation);
    let mut bytes = [0; 32];
    rng.fill(&mut bytes);
    bytes
}

/// A node's role as its latest `Role` event told it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Role {
    term: u64,
    leader: bool,
}

/// What the oracle checks when a command is answered.
#[derive(Debug)]
enum Kind {
    Plain,
    /// A proposal; it must land after position `floor`.
    Proposal {
        floor: u64,
    },
    /// A query; with `key`, a linearizable `GET key` that must see at least
    /// position `floor`.
    Query {
        key: Option<Bytes>,
        floor: u64,
    },
    /// `ReadIndex`, then (once answered) `GET key` on the same node; the
    /// query must see at least position `floor`.
    Read {
        key: Bytes,
        floor: u64,
        querying: bool,
    },
}

#[derive(Debug)]
struct Request {
    node: u64,
    incarnation: u64,
    command: Command,
    kind: Kind,
    outcome: Outcome,
    /// Where an acknowledged proposal applied, or the state a query saw.
    position: Option<u64>,
}

/// A node that is up.
struct Running {
    kernel: Kernel,
    recorder: Arc<Recorder>,
    disk_queue: VecDeque<DiskOp>,
    disk_busy: bool,
    timer_at: Option<Instant>,
    /// Commands not yet answered.
    outstanding: BTreeSet<Handle>,
    role: Option<Role>,
    failed: bool,
}

struct SimNode {
    /// Initial voters; empty for a node that joins an existing cluster.
    voters: Vec<u64>,
    disk: SimDisk,
    incarnation: u64,
    running: Option<Running>,
    /// Shut down for good.
    stopped: bool,
}

/// Steps that applied more commands than this find an acknowledged
/// proposal's position through an index rather than by scanning.
const STEP_SCAN_COMMANDS_MAX: usize = 8;

/// What one input made the state machine do, for matching replies.
#[derive(Debug, Default)]
struct StepRecords {
    applied: Vec<(u64, Bytes)>,
    /// The position of the last application of each command in `applied`,
    /// built on first use: a leader's step can apply and acknowledge
    /// hundreds of proposals, and scanning for each would be quadratic.
    latest: OnceCell<BTreeMap<Bytes, u64>>,
    /// Queries by tag: the position they saw.
    queried: BTreeMap<u64, u64>,
}

impl StepRecords {
    /// Where this step last applied `command`, if it did.
    fn applied_position(&self, command: &Bytes) -> Option<u64> {
        if self.applied.len() <= STEP_SCAN_COMMANDS_MAX {
            return self.applied.iter().rev().find(|(_, applied)| applied == command).map(|&(at, _)| at);
        }
        let latest = self.latest.get_or_init(|| {
            // Later applications overwrite earlier ones: the last one wins.
            self.applied.iter().map(|(position, applied)| (applied.clone(), *position)).collect()
        });
        latest.get(command).copied()
    }
}

/// A simulated cluster: the engine is described in this module's
/// documentation; the methods tests use are grouped in `script.rs`.
pub struct ClusterSim {
    config: ClusterConfig,
    kernel_config: KernelConfig,
    factory: StateMachineFactory,
    rng: ChaCha8Rng,
    clock: VirtualClock,
    queue: EventQueue<SimEvent>,
    nodes: BTreeMap<u64, SimNode>,
    network: Network,
    oracle: Oracle,
    requests: BTreeMap<Handle, Request>,
    deadlines: BTreeSet<(Duration, Handle)>,
    /// Commands to feed once the current input is done (a read's query).
    follow_ups: VecDeque<(u64, Handle)>,
    completions: Vec<Handle>,
    /// A node's outputs being acted on, kept to reuse its allocation.
    outputs: Vec<Output>,
    next_handle: u64,
    trace: Trace,
    stats: ClusterStats,
    violation: Option<Violation>,
    replay: String,
    same_instant_events: u64,
    /// Whether the nodes run the key-value store, whose reads the oracle
    /// checks value by value (a custom state machine's `GET` may mean
    /// anything).
    kv: bool,
    /// The cluster CA, with [`ClusterConfig::quic`].
    ca: Option<DevCa>,
}

impl std::fmt::Debug for ClusterSim {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ClusterSim")
            .field("seed", &self.config.seed)
            .field("now", &self.clock.elapsed())
            .field("nodes", &self.nodes.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ClusterSim {
    /// A cluster of `config.nodes` voters running `KvStateMachine`s.
    ///
    /// # Errors
    ///
    /// A config value out of range.
    pub fn new(config: ClusterConfig) -> Result<Self, ClusterConfigError> {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self::build(config, Machines::Kv, Trace::new(), rng)
    }

    /// Like [`ClusterSim::new`], printing every trace line to standard
    /// error as the run goes (for debugging a seed).
    ///
    /// # Errors
    ///
    /// A config value out of range.
    pub fn new_echoing(config: ClusterConfig) -> Result<Self, ClusterConfigError> {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self::build(config, Machines::Kv, Trace::echoing(), rng)
    }

    /// A cluster whose nodes run state machines made by `factory`.
    ///
    /// # Errors
    ///
    /// A config value out of range.
    pub fn with_state_machines(
        config: ClusterConfig,
        factory: StateMachineFactory,
    ) -> Result<Self, ClusterConfigError> {
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Self::build(config, Machines::Custom(factory), Trace::new(), rng)
    }

    /// Like [`ClusterSim::with_state_machines`], recording into `trace` (an
    /// echoing one, say) unless the config turns tracing off, and drawing
    /// from `rng`: a driver that drew from the run's generator before the
    /// cluster existed hands it over here, so a run keeps one generator.
    pub(crate) fn build(
        config: ClusterConfig,
        machines: Machines,
        trace: Trace,
        rng: ChaCha8Rng,
    ) -> Result<Self, ClusterConfigError> {
        let (factory, kv) = match machines {
            Machines::Kv => (kv_factory(), true),
            Machines::Custom(factory) => (factory, false),
        };
        if !(1..=NODES_MAX).contains(&config.nodes) {
            return Err(ClusterConfigError::Nodes(config.nodes));
        }
        config.network.validate().map_err(ClusterConfigError::Network)?;
        config.disk_faults.validate()?;
        let kernel_config = KernelConfig { wal: config.wal.clone() };
        kernel_config.validate().map_err(|error| ClusterConfigError::Kernel(error.to_string()))?;
        let voters: Vec<u64> = (1..=config.nodes as u64).collect();
        let trace = if config.trace { trace } else { Trace::default() };
        let ca = if config.quic {
            crate::crypto::reseed(config.seed);
            let ca = DevCa::from_seed(derived_seed(config.seed, 0, 0, 0))
                .map_err(|error| ClusterConfigError::Kernel(error.to_string()))?;
            Some(ca)
        } else {
            None
        };
        let mut sim = Self {
            kernel_config,
            factory,
            rng,
            clock: VirtualClock::new(),
            queue: EventQueue::new(),
            nodes: BTreeMap::new(),
            network: Network::new(config.network),
            oracle: Oracle::default(),
            requests: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            follow_ups: VecDeque::new(),
            completions: Vec::new(),
            outputs: Vec::new(),
            next_handle: 1,
            trace,
            stats: ClusterStats::default(),
            violation: None,
            replay: format!("ClusterSim with seed {}", config.seed),
            same_instant_events: 0,
            kv,
            ca,
            config,
        };
        let node_config = sim.node_config(1, voters.clone());
        node_config.validate().map_err(|error| ClusterConfigError::Kernel(error.to_string()))?;
        let (count, seed) = (voters.len(), sim.config.seed);
        sim.trace(|| format!("start {count} nodes, seed {seed}"));
        for &id in &voters {
            sim.insert_node(id, voters.clone())?;
        }
        Ok(sim)
    }

    fn insert_node(&mut self, id: u64, voters: Vec<u64>) -> Result<(), ClusterConfigError> {
        if id == 0 || self.nodes.contains_key(&id) || self.nodes.len() >= NODES_MAX {
            return Err(ClusterConfigError::NodeId(id));
        }
        let disk = SimDisk::new(self.config.disk_faults)?;
        self.nodes.insert(id, SimNode { voters, disk, incarnation: 0, running: None, stopped: false });
        self.start_node(id);
        Ok(())
    }

    fn node_config(&self, id: u64, voters: Vec<u64>) -> NodeConfig {
        NodeConfig {
            id,
            voters,
            seed: self.config.seed,
            tick_interval: self.config.tick_interval,
            election_ticks: self.config.election_ticks,
            heartbeat_ticks: self.config.heartbeat_ticks,
            snapshot_lag_threshold: self.config.snapshot_lag_threshold,
            request_timeout: self.config.request_timeout,
            peer_addresses: Vec::new(),
        }
    }

    fn start_node(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        node.incarnation += 1;
        let (incarnation, voters) = (node.incarnation, node.voters.clone());
        let recorder = Arc::new(Recorder::new((self.factory)(id)));
        let node_config = self.node_config(id, voters);
        let kernel = match self.transport_config(id, incarnation) {
            None => Kernel::new_node(self.kernel_config.clone(), node_config, recorder.clone()),
            Some(Ok(transport)) => Kernel::new_networked_node(
                self.kernel_config.clone(),
                node_config,
                recorder.clone(),
                transport,
            ),
            Some(Err(error)) => return self.violate(format!("no certificate for node {id}: {error}")),
        };
        let kernel = match kernel {
            Ok(kernel) => kernel,
            Err(error) => return self.violate(format!("the kernel refused a validated config: {error}")),
        };
        let running = Running {
            kernel,
            recorder,
            disk_queue: VecDeque::new(),
            disk_busy: false,
            timer_at: None,
            outstanding: BTreeSet::new(),
            role: None,
            failed: false,
        };
        if let Some(node) = self.nodes.get_mut(&id) {
            node.running = Some(running);
        }
        self.trace(|| format!("n{id}.{incarnation} start"));
        // The kernel queued its first disk operations when it was made.
        self.drain(id);
    }

    /// Node `id`'s transport in incarnation `incarnation`, with QUIC: the
    /// same certificate in every incarnation, fresh QUIC randomness each.
    fn transport_config(
        &self,
        id: u64,
        incarnation: u64,
    ) -> Option<Result<TransportConfig, octopii_core::transport::tls::TlsError>> {
        let ca = self.ca.as_ref()?;
        let seed = self.config.seed;
        Some(ca.identity(id, derived_seed(seed, 1, id, 0)).map(|identity| {
            let crypto = crate::crypto::provider();
            let time = Arc::new(crate::crypto::SimWallClock);
            let mut config =
                TransportConfig::new(id, identity, crypto, time, derived_seed(seed, 2, id, incarnation));
            config.peers = (1..=NODES_MAX as u64).map(|peer| (peer, node_address(peer))).collect();
            config
        }))
    }

    fn running_mut(&mut self, id: u64) -> Option<&mut Running> {
        self.nodes.get_mut(&id)?.running.as_mut()
    }

    // ----- commands ------------------------------------------------------

    fn submit_request(&mut self, id: u64, command: Command, kind: Kind) -> Handle {
        let handle = Handle(self.next_handle);
        self.next_handle += 1;
        self.stats.commands += 1;
        // Queries carry the handle so the recorder can tell them apart.
        let command = match command {
            Command::Query(query) => Command::Query(mark_query(handle.0, &query)),
            Command::LinearizableQuery(query) => Command::LinearizableQuery(mark_query(handle.0, &query)),
            other => other,
        };
        let incarnation = self.nodes.get(&id).map_or(0, |node| node.incarnation);
        let request =
            Request { node: id, incarnation, command, kind, outcome: Outcome::Pending, position: None };
        self.requests.insert(handle, request);
        let Some(running) = self.running_mut(id) else {
            self.trace(|| format!("n{id} down: cmd#{} lost", handle.0));
            self.finish(handle, Outcome::Lost);
            return handle;
        };
        running.outstanding.insert(handle);
        self.feed_command(id, handle);
        self.feed_follow_ups();
        handle
    }

    fn feed_command(&mut self, id: u64, handle: Handle) {
        let now = self.clock.elapsed();
        let Some(request) = self.requests.get_mut(&handle) else { return };
        match &mut request.kind {
            Kind::Proposal { floor } => *floor = self.oracle.proposal_floor(),
            Kind::Query { key: Some(key), floor } | Kind::Read { key, floor, querying: false } => {
                *floor = self.oracle.read_floor(key)
            }
            Kind::Read { .. } | Kind::Query { .. } | Kind::Plain => {}
        }
        let command = request.command.clone();
        self.deadlines.insert((now + self.config.request_timeout + REPLY_SLACK, handle));
        self.feed_one(id, Input::Command { id: CommandId(handle.0), command });
    }

    /// Feeds one input, then any command it made due.
    fn feed(&mut self, id: u64, input: Input) {
        self.feed_one(id, input);
        self.feed_follow_ups();
    }

    fn feed_follow_ups(&mut self) {
        while let Some((id, handle)) = self.follow_ups.pop_front() {
            let current = self.nodes.get(&id).map(|node| node.incarnation);
            let request = self.requests.get(&handle);
            if request.is_some_and(|request| Some(request.incarnation) == current) && self.is_running(id) {
                self.feed_command(id, handle);
            }
        }
    }

    fn feed_one(&mut self, id: u64, input: Input) {
        let now = self.clock.now();
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let incarnation = node.incarnation;
        let Some(running) = node.running.as_mut() else { return };
        let line = self.config.trace.then(|| format!("n{id}.{incarnation} in  {}", describe_input(&input)));
        running.kernel.handle_input(now, input);
        if let Some(line) = line {
            self.trace.record(self.clock.elapsed(), &line);
        }
        self.drain(id);
    }

    /// Drains node `id`'s outputs and its recorder's log and acts on them.
    fn drain(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let incarnation = node.incarnation;
        let Some(running) = node.running.as_mut() else { return };
        let mut outputs = std::mem::take(&mut self.outputs);
        while let Some(output) = running.kernel.poll_output() {
            outputs.push(output);
        }
        let records = running.recorder.take_records();
        let mut step = StepRecords::default();
        for record in &records {
            match record {
                Record::Applied { position, command, .. } => step.applied.push((*position, command.clone())),
                Record::Queried { tag, position, .. } => {
                    step.queried.insert(*tag, *position);
                }
                Record::Snapshot { .. } => self.stats.snapshots_taken += 1,
                Record::Restored { .. } => self.stats.snapshots_restored += 1,
            }
            if let Err(message) = self.oracle.on_record(id, record) {
                self.violate(message);
            }
        }
        for output in outputs.drain(..) {
            if self.config.trace {
                let line = format!("n{id}.{incarnation} out {}", describe_output(&output));
                self.trace.record(self.clock.elapsed(), &line);
            }
            self.on_output(id, output, &step);
        }
        // Handing the buffer back saves an allocation per input; a nested
        // drain (there is none today) would only allocate its own.
        self.outputs = outputs;
        self.start_disk(id);
        self.arm_timer(id);
    }

    fn on_output(&mut self, id: u64, output: Output, step: &StepRecords) {
        match output {
            Output::Disk(op) => {
                if let Some(running) = self.running_mut(id) {
                    running.disk_queue.push_back(op);
                }
            }
            Output::Send { to, message } => {
                let now = self.clock.elapsed();
                let route = self.network.route(&mut self.rng, id, to, message.len());
                for &delay in route.delays() {
                    self.queue
                        .push(now + delay, SimEvent::Deliver { from: id, to, message: message.clone() });
                }
            }
            Output::Transmit(transmit) => {
                let Some(to) = node_at(transmit.destination) else {
                    return self.violate(format!("node {id} sent a datagram to {}", transmit.destination));
                };
                let now = self.clock.elapsed();
                let size = transmit.segment_size.unwrap_or(transmit.contents.len());
                let route = self.network.route_datagram(&mut self.rng, id, to, size);
                for &delay in route.delays() {
                    let data = transmit.contents.clone();
                    self.queue.push(now + delay, SimEvent::Datagram { from: id, to, data });
                }
            }
            Output::Reply { id: command, reply } => self.on_reply(id, Handle(command.0), reply, step),
            Output::Event(event) => self.on_event(id, event),
            other => self.violate(format!("node {id} produced {other:?}, which no simulated node asks for")),
        }
    }

    fn on_reply(&mut self, id: u64, handle: Handle, reply: Reply, step: &StepRecords) {
        let Some(request) = self.requests.get_mut(&handle) else {
            return self.violate(format!("node {id} answered cmd#{} it was never given", handle.0));
        };
        if request.node != id || request.outcome != Outcome::Pending {
            return self.violate(format!("node {id} answered cmd#{} twice or in another's place", handle.0));
        }
        let queried = step.queried.get(&handle.0).copied();
        let checked = match (&mut request.kind, &reply) {
            (Kind::Read { key, querying: querying @ false, .. }, Reply::ReadIndex(Ok(_))) => {
                // The fence passed: read the key on the same node, at once.
                *querying = true;
                let query = [b"GET ".as_slice(), key].concat();
                request.command = Command::Query(mark_query(handle.0, &query));
                self.follow_ups.push_back((id, handle));
                return;
            }
            (Kind::Proposal { floor }, Reply::Proposed(Ok(_))) => {
                let Command::Propose(data) = &request.command else { unreachable!("proposals propose") };
                match step.applied_position(data) {
                    Some(position) => {
                        request.position = Some(position);
                        self.oracle.on_acked(position, *floor, data)
                    }
                    None => Err(format!(
                        "node {id} acknowledged proposal {} (cmd#{}) without applying it in that step",
                        show(data),
                        handle.0
                    )),
                }
            }
            (
                Kind::Read { key, floor, .. } | Kind::Query { key: Some(key), floor },
                Reply::Queried(Ok(result)),
            ) => {
                request.position = queried;
                match queried {
                    Some(position) if self.kv => {
                        self.stats.reads_checked += 1;
                        self.oracle.on_read(key, *floor, position, result)
                    }
                    Some(_) => Ok(()),
                    None => Err(format!("node {id} answered query cmd#{} without running it", handle.0)),
                }
            }
            (Kind::Query { key: None, .. }, Reply::Queried(Ok(_))) => {
                request.position = queried;
                Ok(())
            }
            _ => Ok(()),
        };
        if let Err(message) = checked {
            self.violate(message);
        }
        self.stats.replies += 1;
        self.finish(handle, Outcome::Replied(reply));
    }

    fn finish(&mut self, handle: Handle, outcome: Outcome) {
        let Some(request) = self.requests.get_mut(&handle) else { return };
        if outcome == Outcome::Lost {
            self.stats.lost += 1;
        }
        request.outcome = outcome;
        let node = request.node;
        if let Some(running) = self.running_mut(node) {
            running.outstanding.remove(&handle);
        }
        self.completions.push(handle);
    }

    fn on_event(&mut self, id: u64, event: Event) {
        match event {
            Event::Replica(ReplicaEvent::Role { term, leader, leader_id }) => {
                if let Some(running) = self.running_mut(id) {
                    running.role = Some(Role { term, leader });
                }
                if let Err(message) = self.oracle.on_role(id, term, leader, leader_id) {
                    self.violate(message);
                }
            }
            Event::Replica(ReplicaEvent::SnapshotFailed { .. }) => self.stats.snapshots_failed += 1,
            // Every node here is correct: refusing one's message is a bug,
            // in the refusal or in the sender.
            Event::Replica(ReplicaEvent::MessageRefused { from, reason }) => {
                self.violate(format!("node {id} refused a message from node {from}: {reason}"));
            }
            Event::NodeFailed(error) => {
                if let Some(running) = self.running_mut(id) {
                    running.failed = true;
                }
                self.stats.node_failures += 1;
                // Only an injected disk fault may stop a node: anything else
                // (its own log unreadable after a crash, say) is a bug.
                if !error.to_string().contains(INJECTED) {
                    self.violate(format!("node {id} stopped on an error no fault caused: {error}"));
                }
            }
            Event::WalFailed(error) if !error.failure.message.contains(INJECTED) => {
                self.violate(format!("node {id}'s log failed on an error the disk did not inject: {error}"));
            }
            Event::Transport(octopii_core::transport::TransportEvent::Refused { address, reason }) => {
                // Honest nodes never misbehave towards each other.
                self.violate(format!("node {id} refused a connection from {address}: {reason}"));
            }
            Event::WalRecoveryFailed(error) if !error.to_string().contains(INJECTED) => {
                // The cluster's disks lose only unsynced writes (no bit rot):
                // recovery fails only on an injected error.
                self.violate(format!("node {id}'s log failed to recover after a crash: {error}"));
            }
            _ => {}
        }
    }

    // ----- the event loop ------------------------------------------------

    /// Processes the next event, if any.
    fn step(&mut self) {
        let Some((at, event)) = self.queue.pop() else { return };
        if at > self.clock.elapsed() {
            self.same_instant_events = 0;
        }
        self.same_instant_events += 1;
        if self.same_instant_events > SAME_INSTANT_EVENTS_MAX {
            self.violate(format!("{SAME_INSTANT_EVENTS_MAX} events without virtual time moving: a livelock"));
            return;
        }
        self.clock.advance_to(at);
        self.check_deadlines();
        match event {
            SimEvent::DiskDone { node, incarnation, op } => self.on_disk_done(node, incarnation, op),
            SimEvent::Timer { node, incarnation } => self.on_timer(node, incarnation),
            SimEvent::Deliver { from, to, message } => self.on_deliver(from, to, message),
            SimEvent::Datagram { from, to, data } => self.on_datagram(from, to, &data),
        }
    }

    /// Every command given to a node is answered within the request
    /// timeout (plus grace) while that node stays up: one that is not hangs
    /// its caller. A node stopped on a storage failure answers too.
    fn check_deadlines(&mut self) {
        let now = self.clock.elapsed();
        while let Some(&(at, handle)) = self.deadlines.first() {
            if at > now {
                return;
            }
            self.deadlines.pop_first();
            let Some(request) = self.requests.get(&handle) else { continue };
            let node = self.nodes.get(&request.node);
            let up =
                node.is_some_and(|node| node.incarnation == request.incarnation && node.running.is_some());
            if request.outcome == Outcome::Pending && up {
                let message = format!(
                    "node {} did not answer {:?} (cmd#{}) within the request timeout",
                    request.node, request.command, handle.0
                );
                self.violate(message);
            }
        }
    }

    fn on_disk_done(&mut self, id: u64, incarnation: u64, op: DiskOp) {
        let Some(node) = self.nodes.get_mut(&id).filter(|node| node.incarnation == incarnation) else {
            return;
        };
        let Some(running) = node.running.as_mut() else { return };
        running.disk_busy = false;
        let result = node.disk.execute(&op, &mut self.rng);
        self.trace(|| {
            format!("n{id}.{incarnation} disk {} -> {}", describe_op(&op), describe_result(&result))
        });
        self.feed(id, Input::Disk(DiskCompletion { io: op.io(), result }));
    }

    fn on_timer(&mut self, id: u64, incarnation: u64) {
        let now = self.clock.now();
        let Some(node) = self.nodes.get_mut(&id).filter(|node| node.incarnation == incarnation) else {
            return;
        };
        let Some(running) = node.running.as_mut() else { return };
        if running.kernel.poll_timeout().is_some_and(|(at, _)| at <= now) {
            running.timer_at = None;
            self.feed(id, Input::Timeout);
        }
    }

    fn on_deliver(&mut self, from: u64, to: u64, message: Bytes) {
        if self.arrives(from, to) {
            self.feed(to, Input::Message { from, message });
        }
    }

    fn on_datagram(&mut self, from: u64, to: u64, data: &[u8]) {
        if self.arrives(from, to) {
            self.feed(to, Input::Datagrams(vec![(node_address(from), BytesMut::from(data))]));
        }
    }

    /// Whether something sent from `from` reaches `to` now (running, not
    /// cut off), counted either way.
    fn arrives(&mut self, from: u64, to: u64) -> bool {
        if !self.is_running(to) {
            self.network.counts.undeliverable += 1;
            return false;
        }
        if !self.network.connected(from, to) {
            self.network.counts.cut += 1;
            return false;
        }
        self.network.counts.delivered += 1;
        true
    }

    /// Starts the node's next disk operation if its disk is idle.
    fn start_disk(&mut self, id: u64) {
        let latency = self.config.disk_latency;
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let incarnation = node.incarnation;
        let Some(running) = node.running.as_mut().filter(|running| !running.disk_busy) else { return };
        let Some(op) = running.disk_queue.pop_front() else { return };
        running.disk_busy = true;
        let (min, max) = match op {
            DiskOp::Sync { .. } => (latency.sync_min, latency.sync_max),
            _ => (latency.op_min, latency.op_max),
        };
        let delay = if max > min { self.rng.random_range(min..=max) } else { min };
        self.queue.push(self.clock.elapsed() + delay, SimEvent::DiskDone { node: id, incarnation, op });
    }

    fn arm_timer(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else { return };
        let incarnation = node.incarnation;
        let Some(running) = node.running.as_mut() else { return };
        let Some((at, _)) = running.kernel.poll_timeout() else { return };
        if running.timer_at != Some(at) {
            running.timer_at = Some(at);
            let due = self.clock.offset_of(at).max(self.clock.elapsed());
            self.queue.push(due, SimEvent::Timer { node: id, incarnation });
        }
    }

    fn take_down(&mut self, id: u64, what: &str) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else { return false };
        let Some(running) = node.running.take() else { return false };
        let incarnation = node.incarnation;
        self.trace(|| format!("n{id}.{incarnation} {what}"));
        for handle in running.outstanding {
            self.finish(handle, Outcome::Lost);
        }
        true
    }

    fn trace(&mut self, line: impl FnOnce() -> String) {
        if self.config.trace {
            self.trace.record(self.clock.elapsed(), &line());
        }
    }

    fn violate(&mut self, message: String) {
        if self.violation.is_some() {
            return;
        }
        self.trace(|| format!("VIOLATION {message}"));
        self.violation = Some(Violation {
            seed: self.config.seed,
            at: self.clock.elapsed(),
            message,
            replay: self.replay.clone(),
            trace_tail: self.trace.tail(),
        });
    }
}
