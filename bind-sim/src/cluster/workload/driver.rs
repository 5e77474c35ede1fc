//! The randomized run's driver: the clients, the agenda of their moves and
//! the nemesis's, and the end of the run (faults healed, convergence
//! checked). The nemesis's moves are in [`super::nemesis`].

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use octopii_core::raft::NodeError;
use octopii_core::wal::WalConfig;
use octopii_core::{Command, Reply};
use rand::{Rng, SeedableRng};

use super::nemesis::MembershipTask;
use super::{ClusterFaults, ClusterRun, ClusterRunConfig, ClusterSummary};
use crate::cluster::sim::{ClusterSim, Machines};
use crate::cluster::{ClusterConfig, Handle, NetworkConfig, Outcome};
use crate::disk::DiskFaults;
use crate::time::EventQueue;
use crate::trace::Trace;

/// Keys the clients write and read: few, so that they collide.
const KEYS: u64 = 6;
/// Longest pause of a client between operations, in microseconds: long
/// enough, next to a commit's few milliseconds, that a run spans many
/// election timeouts and the nemesis's moves interleave with the clients.
const CLIENT_PAUSE_US_MAX: u64 = 30_000;
/// Largest log segment size target a run draws, in bytes.
const SEGMENT_BYTES_DRAWN_MAX: u64 = 64 * 1024;
/// Virtual time the healed cluster has to commit a write and converge.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OpKind {
    Write,
    /// A command the state machine refuses: it must answer an error.
    Bad,
    Read,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    Client(usize, OpKind),
    Membership,
    Transfer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Action {
    Client(usize),
    Nemesis,
    Restart(u64),
    Heal,
    MembershipStep,
}

/// The probabilities of a run, drawn from its seed within the profile.
#[derive(Clone, Copy, Debug)]
struct Swarm {
    nemesis_ms_max: u64,
    network: NetworkConfig,
    disk: DiskFaults,
    snapshot_lag_threshold: u64,
    segment_bytes: u64,
}

impl Swarm {
    fn draw(config: &ClusterRunConfig, rng: &mut impl Rng) -> Self {
        let faults = config.faults;
        // Mostly small, so that runs compact their logs and lagging or new
        // nodes catch up by snapshots; now and then the default.
        let snapshot_lag_threshold = match rng.random_bool(0.8) {
            true => rng.random_range(20..=200),
            false => ClusterConfig::default().snapshot_lag_threshold,
        };
        let mut network = NetworkConfig::default();
        if faults.network() {
            network.drop = rng.random_range(0.0..0.1);
            network.duplicate = rng.random_range(0.0..0.1);
            network.reorder = rng.random_range(0.0..0.2);
        }
        let mut disk = DiskFaults::NONE;
        if faults.crashes() {
            disk.torn_write = 0.5;
        }
        if faults == ClusterFaults::Full {
            disk.write_error = rng.random_range(0.0..0.002);
            disk.sync_error = rng.random_range(0.0..0.002);
        }
        // Small segments rotate often, and compaction removes them.
        let segment_bytes =
            config.segment_bytes.unwrap_or_else(|| rng.random_range(4096..=SEGMENT_BYTES_DRAWN_MAX));
        let nemesis_ms_max = rng.random_range(100..=400);
        Self { nemesis_ms_max, network, disk, snapshot_lag_threshold, segment_bytes }
    }
}

pub(super) struct Driver {
    pub(super) config: ClusterRunConfig,
    pub(super) sim: ClusterSim,
    pub(super) agenda: EventQueue<Action>,
    pub(super) clients: Vec<Option<u64>>,
    pub(super) owners: BTreeMap<Handle, Owner>,
    pub(super) ops_left: u64,
    pub(super) busy_clients: usize,
    pub(super) next_value: u64,
    pub(super) voters: Vec<u64>,
    pub(super) next_node: u64,
    pub(super) membership: Option<MembershipTask>,
    pub(super) partitioned: bool,
    /// Longest pause of the nemesis between moves.
    pub(super) nemesis_ms_max: u64,
    pub(super) summary: ClusterSummary,
}

impl Driver {
    pub(super) fn new(config: &ClusterRunConfig, trace: Trace) -> Self {
        // The run's one generator draws the swarm first (it shapes the
        // cluster's config), then goes on in the cluster.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(config.seed);
        let swarm = Swarm::draw(config, &mut rng);
        let defaults = ClusterConfig::default();
        let cluster = ClusterConfig {
            seed: config.seed,
            nodes: config.nodes,
            snapshot_lag_threshold: swarm.snapshot_lag_threshold,
            wal: WalConfig { segment_bytes_target: swarm.segment_bytes, ..defaults.wal.clone() },
            quic: config.quic,
            ..defaults
        };
        let mut sim = ClusterSim::build(cluster, Machines::Kv, trace, rng)
            .expect("a validated run config gives a valid cluster config");
        sim.set_replay(config.replay_command());
        sim.note(&format!("swarm {swarm:?}"));
        sim.set_network(swarm.network).expect("drawn within range");
        sim.set_disk_faults(swarm.disk).expect("drawn within range");
        let mut agenda = EventQueue::new();
        for client in 0..config.clients {
            let at = Duration::from_micros(sim.rng().random_range(0..=CLIENT_PAUSE_US_MAX));
            agenda.push(at, Action::Client(client));
        }
        if config.faults != ClusterFaults::None {
            let at = Duration::from_millis(sim.rng().random_range(20..=swarm.nemesis_ms_max));
            agenda.push(at, Action::Nemesis);
        }
        let summary = ClusterSummary {
            seed: config.seed,
            nodes: config.nodes,
            faults: config.faults.to_string(),
            ..ClusterSummary::default()
        };
        Self {
            config: config.clone(),
            sim,
            agenda,
            clients: vec![None; config.clients],
            owners: BTreeMap::new(),
            ops_left: config.ops,
            busy_clients: config.clients,
            next_value: 0,
            voters: (1..=config.nodes as u64).collect(),
            next_node: config.nodes as u64 + 1,
            membership: None,
            partitioned: false,
            nemesis_ms_max: swarm.nemesis_ms_max,
            summary,
        }
    }

    pub(super) fn run(mut self) -> ClusterRun {
        let time_max = Duration::from_millis(self.config.ops.saturating_mul(200)) + Duration::from_secs(120);
        while self.sim.violation().is_none() {
            for handle in self.sim.take_completions() {
                self.on_completion(handle);
            }
            if self.ops_left == 0 && self.busy_clients == 0 {
                break;
            }
            if self.sim.now() > time_max {
                self.sim.report(format!("the workload did not finish within {time_max:?}"));
                break;
            }
            let now = self.sim.now();
            match self.agenda.next_at() {
                Some(at) if at <= now => {
                    let (_, action) = self.agenda.pop().expect("peeked above");
                    self.act(action);
                }
                next => {
                    let wait = next.map_or(Duration::from_secs(1), |at| at - now);
                    self.sim.run_until(wait, ClusterSim::has_completions);
                }
            }
        }
        self.finish();
        let violation = self.sim.violation().cloned();
        let mut summary = self.summary;
        summary.stats = self.sim.stats();
        summary.virtual_time = self.sim.now();
        summary.trace_lines = self.sim.trace_lines();
        summary.violations = u64::from(violation.is_some());
        ClusterRun { summary, trace_hash: self.sim.trace_hash(), violation }
    }

    /// Heals every fault, restarts every node (after a power loss of the
    /// whole cluster, in profiles with crashes), and requires the cluster to
    /// commit a write and converge on the committed sequence: every
    /// acknowledged write must have survived.
    fn finish(&mut self) {
        if self.sim.violation().is_some() {
            return;
        }
        self.sim.heal();
        self.sim.set_network(NetworkConfig::default()).expect("the default network is valid");
        self.sim.set_disk_faults(DiskFaults::NONE).expect("no faults is valid");
        let everyone = self.config.faults.crashes();
        let down: Vec<u64> = if everyone { self.sim.running_nodes() } else { self.sim.failed_nodes() };
        let what = if everyone { "a power loss everywhere" } else { "failed nodes restarted" };
        self.sim.note(&format!("finishing: faults healed, {what}"));
        for id in down {
            self.sim.crash(id);
        }
        for id in self.sim.node_ids() {
            self.sim.restart(id);
        }
        let marker = format!("SET final {}", self.config.seed);
        if let Err(message) = self.sim.check_converged(marker.as_bytes(), CONVERGE_TIMEOUT) {
            self.sim.report(message);
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::Client(client) => self.client_op(client),
            Action::Nemesis => self.nemesis(),
            Action::Restart(id) => {
                self.sim.restart(id);
            }
            Action::Heal => {
                self.sim.heal();
                self.partitioned = false;
            }
            Action::MembershipStep => self.membership_step(),
        }
    }

    pub(super) fn later(&mut self, delay: Duration, action: Action) {
        self.agenda.push(self.sim.now() + delay, action);
    }

    pub(super) fn random_ms(&mut self, range: std::ops::RangeInclusive<u64>) -> Duration {
        Duration::from_millis(self.sim.rng().random_range(range))
    }

    pub(super) fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.sim.rng().random_range(0..items.len())])
    }

    // ----- clients -------------------------------------------------------

    fn client_op(&mut self, client: usize) {
        if self.ops_left == 0 {
            self.busy_clients -= 1;
            return;
        }
        self.ops_left -= 1;
        self.summary.ops += 1;
        let key = self.sim.rng().random_range(0..KEYS);
        let roll = self.sim.rng().random_range(0..100u32);
        let nodes = self.live_candidates();
        if roll >= 62 {
            self.summary.reads += 1;
            let node = self.pick(&nodes).unwrap_or(1);
            let handle = self.sim.read(node, format!("k{key}").as_bytes());
            self.owners.insert(handle, Owner::Client(client, OpKind::Read));
            return;
        }
        let (command, kind) = match roll {
            0..45 => {
                self.next_value += 1;
                (format!("SET k{key} v{}", self.next_value), OpKind::Write)
            }
            45..55 => (format!("DELETE k{key}"), OpKind::Write),
            55..59 => (format!("GET k{key}"), OpKind::Write),
            _ => (format!("INCR k{key}"), OpKind::Bad),
        };
        let target = match self.clients[client] {
            Some(target) => target,
            None => self.pick(&nodes).unwrap_or(1),
        };
        let handle = self.sim.submit(target, Command::Propose(Bytes::from(command)));
        self.owners.insert(handle, Owner::Client(client, kind));
    }

    /// Nodes a client may address: every node not shut down for good.
    fn live_candidates(&self) -> Vec<u64> {
        self.sim.node_ids().into_iter().filter(|&id| !self.sim.is_stopped(id)).collect()
    }

    fn on_completion(&mut self, handle: Handle) {
        let Some(owner) = self.owners.remove(&handle) else { return };
        let outcome = self.sim.outcome(handle).cloned().unwrap_or(Outcome::Lost);
        match owner {
            Owner::Client(client, kind) => {
                self.on_client_outcome(client, kind, outcome);
                let pause = Duration::from_micros(self.sim.rng().random_range(0..=CLIENT_PAUSE_US_MAX));
                self.later(pause, Action::Client(client));
            }
            Owner::Membership => self.on_membership_outcome(outcome),
            Owner::Transfer => {}
        }
    }

    fn on_client_outcome(&mut self, client: usize, kind: OpKind, outcome: Outcome) {
        let reply = match outcome {
            Outcome::Replied(reply) => reply,
            Outcome::Lost | Outcome::Pending => {
                self.summary.lost += 1;
                self.clients[client] = None;
                return;
            }
        };
        match (kind, reply) {
            (OpKind::Write, Reply::Proposed(Ok(Ok(_)))) => self.summary.acked += 1,
            (OpKind::Bad, Reply::Proposed(Ok(Err(_)))) => self.summary.apply_errors += 1,
            (_, Reply::Proposed(Ok(result))) => {
                self.sim.report(format!("a {kind:?} proposal was answered {result:?} by the state machine"));
            }
            (_, Reply::Proposed(Err(NodeError::NotLeader { leader }))) => {
                self.summary.not_leader += 1;
                self.clients[client] = leader;
            }
            (_, Reply::Proposed(Err(_))) => {
                self.summary.unknown += 1;
                self.clients[client] = None;
            }
            (OpKind::Read, Reply::Queried(Ok(_))) => self.summary.reads_ok += 1,
            (OpKind::Read, _) => {}
            (_, other) => self.sim.report(format!("a proposal was answered with {other:?}")),
        }
    }
}
