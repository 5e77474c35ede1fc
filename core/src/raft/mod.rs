//! Raft in the core: raft-rs's `RawNode` stepped from events, its state made
//! durable through the WAL before anything depending on it leaves, and the
//! user's state machine applied from committed entries.
//!
//! The replica never reads a clock: ticks are computed from the `now` of each
//! call. raft-rs draws election timeouts from OS randomness; after every call
//! into the `RawNode` the replica overrides a freshly drawn timeout with one
//! from its own seeded generator, so a run is a function of its seed.

mod admission;
mod config;
pub mod log_store;
pub mod records;
mod snapshot;
pub mod state_machine;

pub use config::{NodeConfig, NodeConfigError};

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message};
use raft::{RawNode, StateRole};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::wal::Wal;
use log_store::LogStore;
use records::RaftRecord;
use state_machine::StateMachine;

/// Largest Raft message accepted from a peer, in bytes.
pub const MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest command a proposal may carry: it must fit, with its entry's
/// framing, in one WAL entry.
pub const PROPOSAL_BYTES_MAX: usize = crate::wal::ENTRY_BYTES_MAX - 1024;
/// Index and term of the snapshot a new cluster starts from.
const BOOTSTRAP_INDEX: u64 = 1;
/// Most ticks replayed at once after a long pause; later ticks are skipped.
const TICKS_CATCH_UP_MAX: u32 = 1000;
/// Most append messages in flight to one follower. The replica hands each
/// proposal to raft-rs as it comes, so with a wide window every proposal
/// leaves in a message of its own, acknowledged by one of its own; with a
/// narrow one, proposals that come while the window is full leave together
/// in the next message (up to 1 MiB) once an acknowledgement frees a slot.
/// Under load that batching cuts messages per commit from about seven to
/// well under one, and raises throughput; a lone client sees no difference.
const INFLIGHT_APPENDS_MAX: usize = 8;
/// How long a leader waits for the next append to carry a new commit index
/// to the followers before it sends the index on its own.
const COMMIT_BROADCAST_DELAY: Duration = Duration::from_millis(1);

/// Why a proposal, read or membership change failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// Only the leader takes this request; `leader` is the one this node
    /// knows of, if any.
    #[error("not the leader (leader: {leader:?})")]
    NotLeader {
        /// The current leader, if known.
        leader: Option<u64>,
    },
    /// The entry was lost to a change of leader before it committed: it
    /// was not applied; it is safe to retry.
    #[error("dropped by a change of leader; not applied")]
    Dropped,
    /// No answer within the request timeout; the outcome is unknown.
    #[error("timed out; the outcome is unknown")]
    TimedOut,
    /// The node is not part of the cluster's configuration.
    #[error("unknown peer {0}")]
    UnknownPeer(u64),
    /// Raft refused the request.
    #[error("raft refused: {0}")]
    Refused(String),
    /// The log failed; the node must be restarted.
    #[error("storage failed: {0}")]
    Storage(String),
    /// The command is larger than a proposal may be.
    #[error("command of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The node is not running.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// The kernel was built without a node (a standalone log).
    #[error("this kernel runs no replicated node")]
    NotConfigured,
}

/// Something for the kernel to do on the replica's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaOutput {
    /// Send a Raft message to a peer.
    Send {
        /// Peer id.
        to: u64,
        /// Encoded message.
        message: Bytes,
        /// Whether it carries a snapshot: the kernel must then report its
        /// delivery with [`Replica::snapshot_delivered`].
        snapshot: bool,
    },
    /// Remove the WAL segments holding only records below this sequence
    /// number: a durable snapshot covers them.
    RemoveWalBefore(u64),
    /// Where members listen, as the leader knew when it changed the
    /// membership (carried in the change): a node added later can reach
    /// members it was never told of.
    PeerAddresses(Vec<(u64, core::net::SocketAddr)>),
    /// Report this.
    Event(ReplicaEvent),
    /// The replica cannot go on: stop the node with this error.
    Fatal(NodeError),
    /// Answer a request the replica accepted with this ticket.
    Answer {
        /// The ticket the request came with.
        ticket: u64,
        /// The answer.
        answer: Answer,
    },
}

/// Something that happened in the replica, for logs, metrics and the
/// simulator's checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaEvent {
    /// The node's role or known leader changed.
    Role {
        /// Current term.
        term: u64,
        /// Whether this node leads.
        leader: bool,
        /// The leader this node knows of.
        leader_id: Option<u64>,
    },
    /// Entries were applied, up to and including this index.
    Applied {
        /// The highest applied index.
        index: u64,
    },
    /// A local snapshot could not be stored (for instance, larger than a log
    /// entry may be); the log is kept and compaction retried later.
    SnapshotFailed {
        /// The applied index it was taken at.
        index: u64,
        /// Why it could not be stored.
        error: String,
    },
    /// The state machine's `compact` failed after a snapshot; the node
    /// goes on.
    CompactFailed {
        /// The state machine's message.
        error: String,
    },
    /// A peer's message was dropped unseen by raft-rs: no correct peer
    /// sends it, and raft-rs would stop on it.
    MessageRefused {
        /// The peer.
        from: u64,
        /// What was wrong with it.
        reason: String,
    },
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The state machine's result for a committed proposal, or why the
    /// proposal failed.
    Applied(Result<Result<Bytes, String>, NodeError>),
    /// A linearizable read point: the state machine has applied at least
    /// this index, which the leader confirmed with a quorum.
    ReadIndex(Result<u64, NodeError>),
    /// A configuration change was applied; the new voters and learners.
    ConfChanged(Result<(Vec<u64>, Vec<u64>), NodeError>),
    /// A linearizable query's result.
    Queried(Result<Result<Bytes, String>, NodeError>),
}

/// A request waiting for its entry to be applied.
#[derive(Debug)]
struct Waiting {
    ticket: u64,
    /// The log index the entry was proposed at.
    index: u64,
    deadline: Instant,
    conf_change: bool,
}

/// A read waiting for its read index, then for the state machine.
#[derive(Debug)]
struct PendingRead {
    ticket: u64,
    deadline: Instant,
    index: Option<u64>,
    /// For a linearizable query: the command to run once the read index is
    /// applied.
    query: Option<Bytes>,
}

impl PendingRead {
    fn answer(&self, result: Result<u64, NodeError>, state_machine: &StateMachine) -> Answer {
        match &self.query {
            None => Answer::ReadIndex(result),
            Some(query) => Answer::Queried(result.map(|_| state_machine.query(query))),
        }
    }
}

/// Raft state whose persistence is in flight: released once the WAL has made
/// every record up to `wal_seq_end` durable.
#[derive(Debug)]
struct Unpersisted {
    ready: u64,
    wal_seq_end: u64,
    messages: Vec<Message>,
    /// The index of a snapshot this Ready installed: applied once durable.
    snapshot: Option<u64>,
}

/// One node's Raft replica.
pub struct Replica {
    config: NodeConfig,
    raw: RawNode<LogStore>,
    state_machine: StateMachine,
    rng: ChaCha8Rng,
    next_tick: Instant,
    next_request: u64,
    /// See [`encode_context`].
    incarnation: u64,
    proposals: BTreeMap<u64, Waiting>,
    reads: BTreeMap<u64, PendingRead>,
    /// `(deadline, request)` of every request in `proposals` and `reads`
    /// (request numbers are shared): the next timeout and the expired
    /// requests are found without scanning every request.
    deadlines: BTreeSet<(Instant, u64)>,
    /// `(index, request)` of every request in `proposals`: the proposals an
    /// applied entry overwrote are found without scanning every proposal.
    proposal_indexes: BTreeSet<(u64, u64)>,
    unpersisted: VecDeque<Unpersisted>,
    /// The hard state changed in memory (only its commit index: raft-rs
    /// needs no sync for that) and is not in the WAL yet. It goes with the
    /// next records that must be synced, so that a commit never costs a
    /// sync of its own: such a sync would hold back the next proposal's.
    /// Losing it in a crash is harmless; the commit index is learnt again.
    hard_state_unwritten: bool,
    /// The WAL sequence number of a snapshot's record: once it is durable,
    /// segments before it hold nothing still needed.
    compaction: Option<u64>,
    /// No local snapshot before this applied index (after a failed one).
    snapshot_retry_at: u64,
    /// Command bytes applied since the last snapshot, and that snapshot's
    /// size: see `maybe_snapshot`.
    applied_bytes_since_snapshot: u64,
    last_snapshot_bytes: u64,
    /// Peers sent a snapshot since the last report to raft-rs.
    /// Snapshot deliveries to report to raft-rs: peer, and whether the
    /// snapshot arrived.
    snapshot_reports: Vec<(u64, bool)>,
    /// The highest commit index sent to each peer (in appends and
    /// heartbeats).
    commit_sent: BTreeMap<u64, u64>,
    /// When a leader tells peers that hold committed entries, but were not
    /// told they are committed, on its own. raft-rs would send every new
    /// commit index to every follower at once, a message and an answer per
    /// follower per commit; a write then cost twice the messages. With a
    /// steady stream of writes, the next append carries it; when writes
    /// pause, this sends it, so followers apply (and answer local queries)
    /// at most this much later.
    commit_broadcast_at: Option<Instant>,
    outputs: VecDeque<ReplicaOutput>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Replica")
            .field("id", &self.config.id)
            .field("term", &self.raw.raft.term)
            .field("role", &self.raw.raft.state)
            .field("applied", &self.raw.raft.raft_log.applied)
            .finish()
    }
}

/// Appends `snapshot`'s records ([`RaftRecord::encode_snapshot`]); the
/// sequence number of the first.
fn append_snapshot(
    now: Instant,
    wal: &mut Wal,
    snapshot: &raft::eraftpb::Snapshot,
) -> Result<u64, crate::wal::WalError> {
    let mut first = None;
    for record in RaftRecord::encode_snapshot(snapshot) {
        let seq = wal.append(now, record)?;
        first.get_or_insert(seq);
    }
    Ok(first.expect("a snapshot is at least one record"))
}

/// A request's identity in an entry's context: `(proposer, incarnation,
/// request)`, so that results find their request whatever the queue order.
/// The incarnation (the WAL sequence number of a record this run of the node
/// made durable before taking requests) keeps a request of an earlier run,
/// committed after a restart, from answering a new request.
fn encode_context(node: u64, incarnation: u64, request: u64) -> Vec<u8> {
    [node, incarnation, request].iter().flat_map(|part| part.to_le_bytes()).collect()
}

fn decode_context(context: &[u8]) -> Option<(u64, u64, u64)> {
    let parts: &[u8; 24] = context.try_into().ok()?;
    let part = |index: usize| {
        let bytes: [u8; 8] = parts[index * 8..index * 8 + 8].try_into().expect("8 bytes of 24");
        u64::from_le_bytes(bytes)
    };
    Some((part(0), part(1), part(2)))
}

impl Replica {
    /// Rebuilds a replica from the records recovered from its WAL (in log
    /// order, with their sequence numbers), bootstrapping a new cluster if
    /// there are none and the config names voters.
    ///
    /// # Errors
    ///
    /// [`NodeError::Storage`] when the records are inconsistent or the
    /// state machine refuses the snapshot; [`NodeError::Refused`] for a
    /// configuration raft-rs rejects.
    pub fn recover(
        config: NodeConfig,
        state_machine: StateMachine,
        records: impl IntoIterator<Item = (u64, RaftRecord)>,
        now: Instant,
        wal: &mut Wal,
    ) -> Result<Self, NodeError> {
        let mut store = LogStore::default();
        let records: Vec<(u64, RaftRecord)> = records.into_iter().collect();
        let empty = records.is_empty();
        // Each snapshot record is followed by everything it does not cover,
        // so replay starts at the first one: what precedes it is superseded
        // (and its beginning may have been removed by compaction).
        let mut start =
            records.iter().position(|(_, record)| matches!(record, RaftRecord::Snapshot(_))).unwrap_or(0);
        while start > 0 && matches!(records[start - 1].1, RaftRecord::SnapshotPart(_)) {
            start -= 1;
        }
        // Parts of a snapshot's data, gathered until its record.
        let mut parts: Vec<Bytes> = Vec::new();
        for (_, record) in records.into_iter().skip(start) {
            if let RaftRecord::SnapshotPart(data) = record {
                parts.push(data);
                continue;
            }
            let parts = std::mem::take(&mut parts);
            match record {
                RaftRecord::Entry(entry) => {
                    if entry.index <= store.snapshot_index() {
                        continue;
                    }
                    if entry.index > store.last() + 1 {
                        return Err(NodeError::Storage(format!(
                            "log entry {} recovered after entry {}",
                            entry.index,
                            store.last()
                        )));
                    }
                    store.append(vec![entry]);
                }
                RaftRecord::HardState(hard_state) => store.set_hard_state(hard_state),
                RaftRecord::Snapshot(mut snapshot) => {
                    if snapshot.data.is_empty() && !parts.is_empty() {
                        snapshot.data = Bytes::from(parts.concat());
                    }
                    store.install_snapshot(snapshot);
                }
                RaftRecord::SnapshotPart(_) => unreachable!("parts are gathered above"),
            }
        }
        store.limit_commit_to_log();
        let bootstrap = empty && !config.voters.is_empty();
        if bootstrap {
            // A new cluster starts from a snapshot at index 1 holding its
            // voters and the empty state: a node added later lacks that
            // index, so its leader must send it a snapshot, and with it the
            // whole configuration (which no log entry carries).
            let mut snapshot = raft::eraftpb::Snapshot::default();
            snapshot.data = Bytes::from(state_machine.snapshot());
            let metadata = snapshot.mut_metadata();
            metadata.index = BOOTSTRAP_INDEX;
            metadata.term = BOOTSTRAP_INDEX;
            metadata.mut_conf_state().voters = config.voters.clone();
            append_snapshot(now, wal, &snapshot).map_err(|error| NodeError::Storage(error.to_string()))?;
            store.install_snapshot(snapshot);
        }
        // This run's requests are told apart from earlier runs' by the
        // sequence number of this record; the node takes requests only once
        // it is durable, so no two runs share it.
        let incarnation = wal
            .append(now, RaftRecord::HardState(store.hard_state().clone()).encode())
            .map_err(|error| NodeError::Storage(error.to_string()))?;
        if store.snapshot_index() > 0 && !bootstrap {
            state_machine.restore(&store.snapshot_ref().data).map_err(|error| {
                NodeError::Storage(format!("state machine refused the snapshot: {error}"))
            })?;
        }
        let applied = store.snapshot_index();
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: INFLIGHT_APPENDS_MAX,
            check_quorum: true,
            pre_vote: true,
            // A new commit index rides the next append (see
            // `commit_broadcast_at`) instead of a message round of its own.
            skip_bcast_commit: true,
            ..raft::Config::default()
        };
        raft_config.validate().map_err(|error| NodeError::Refused(error.to_string()))?;
        // raft-rs logs through slog; its records go on as `tracing` events
        // of the application's subscriber (none: nothing is formatted).
        let logger = slog::Logger::root(tracing_slog::TracingSlogDrain, slog::o!("node" => config.id));
        let raw = RawNode::new(&raft_config, store, &logger)
            .map_err(|error| NodeError::Refused(error.to_string()))?;
        let seed = config.seed ^ config.id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut replica = Self {
            next_tick: now + config.tick_interval,
            config,
            raw,
            state_machine,
            rng: ChaCha8Rng::seed_from_u64(seed),
            next_request: 0,
            incarnation,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            proposal_indexes: BTreeSet::new(),
            unpersisted: VecDeque::new(),
            hard_state_unwritten: false,
            compaction: None,
            snapshot_retry_at: 0,
            applied_bytes_since_snapshot: 0,
            last_snapshot_bytes: 0,
            snapshot_reports: Vec::new(),
            commit_sent: BTreeMap::new(),
            commit_broadcast_at: None,
            outputs: VecDeque::new(),
        };
        replica.pin_election_timeout();
        // The only voter needs no one's vote: it leads at once instead of
        // after an election timeout.
        if replica.raw.raft.prs().conf().to_conf_state().voters == [replica.config.id] {
            let _ = replica.raw.campaign();
        }
        replica.process(now, wal);
        Ok(replica)
    }

    /// raft-rs draws a new election timeout from OS randomness whenever it
    /// resets its election clock; replace it with one from the seed.
    fn pin_election_timeout(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let ticks = self.config.election_ticks;
            let timeout = ticks + self.rng.random_range(0..ticks);
            self.raw.raft.set_randomized_election_timeout(timeout);
        }
    }

    /// Answers every request still waiting with `error`: the node stops.
    pub fn abandon(&mut self, error: &NodeError) {
        self.deadlines.clear();
        self.proposal_indexes.clear();
        for (_, waiting) in std::mem::take(&mut self.proposals) {
            self.answer_failed(waiting, error.clone());
        }
        for (_, read) in std::mem::take(&mut self.reads) {
            let answer = read.answer(Err(error.clone()), &self.state_machine);
            self.answer(read.ticket, answer);
        }
    }

    /// The WAL sequence number that must be durable before the replica
    /// takes requests; it tells this run's requests from earlier runs'.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<ReplicaOutput> {
        self.outputs.pop_front()
    }

    /// The earliest time the replica needs [`Replica::handle_timeout`].
    pub fn poll_timeout(&self) -> Instant {
        let next = self.commit_broadcast_at.map_or(self.next_tick, |at| at.min(self.next_tick));
        self.deadlines.first().map_or(next, |&(deadline, _)| deadline.min(next))
    }

    fn insert_proposal(&mut self, request: u64, waiting: Waiting) {
        self.deadlines.insert((waiting.deadline, request));
        self.proposal_indexes.insert((waiting.index, request));
        let previous = self.proposals.insert(request, waiting);
        assert!(previous.is_none(), "request numbers are never reused");
    }

    fn remove_proposal(&mut self, request: u64) -> Option<Waiting> {
        let waiting = self.proposals.remove(&request)?;
        self.deadlines.remove(&(waiting.deadline, request));
        self.proposal_indexes.remove(&(waiting.index, request));
        Some(waiting)
    }

    fn insert_read(&mut self, request: u64, read: PendingRead) {
        self.deadlines.insert((read.deadline, request));
        let previous = self.reads.insert(request, read);
        assert!(previous.is_none(), "request numbers are never reused");
    }

    fn remove_read(&mut self, request: u64) -> Option<PendingRead> {
        let read = self.reads.remove(&request)?;
        self.deadlines.remove(&(read.deadline, request));
        Some(read)
    }

    /// Advances Raft's clock to `now` and expires requests.
    pub fn handle_timeout(&mut self, now: Instant, wal: &mut Wal) {
        let mut ticks = 0;
        while now >= self.next_tick && ticks < TICKS_CATCH_UP_MAX {
            self.raw.tick();
            self.pin_election_timeout();
            self.next_tick += self.config.tick_interval;
            ticks += 1;
        }
        if now >= self.next_tick {
            self.next_tick = now + self.config.tick_interval;
        }
        if ticks > 0 {
            // raft-rs drops a read it cannot serve yet (a leader that has not
            // committed in its term, a follower that knows no leader, a lost
            // message): ask again each tick until answered or timed out;
            // raft-rs ignores a read it already holds.
            let unanswered: Vec<u64> =
                self.reads.iter().filter(|(_, read)| read.index.is_none()).map(|(&id, _)| id).collect();
            for request in unanswered {
                self.raw.read_index(encode_context(self.config.id, self.incarnation, request));
                self.pin_election_timeout();
            }
        }
        // A tick may have made the leader step down (it lost its quorum).
        let leading = self.raw.raft.state == StateRole::Leader;
        if self.commit_broadcast_at.is_some_and(|at| at <= now) && leading {
            self.commit_broadcast_at = None;
            let committed = self.raw.raft.raft_log.committed;
            let unaware: Vec<u64> = self.peers_unaware_of_commit().collect();
            for peer in unaware {
                self.raw.raft.send_append(peer);
                // Counted as told even if raft-rs held the append back (a
                // full window of appends in flight): the next heartbeat
                // tells it, and the timer is not set again for it.
                self.commit_sent.insert(peer, committed);
            }
        }
        // Expired proposals are answered first, then expired reads, each in
        // request order.
        let mut expired: Vec<u64> =
            self.deadlines.iter().take_while(|&&(deadline, _)| deadline <= now).map(|&(_, id)| id).collect();
        expired.sort_unstable();
        for &id in &expired {
            if let Some(waiting) = self.remove_proposal(id) {
                self.answer_failed(waiting, NodeError::TimedOut);
            }
        }
        for &id in &expired {
            if let Some(read) = self.remove_read(id) {
                let answer = read.answer(Err(NodeError::TimedOut), &self.state_machine);
                self.answer(read.ticket, answer);
            }
        }
        self.process(now, wal);
    }

    /// Steps a message received from peer `from`. Undecodable or oversized
    /// messages, messages claiming another sender, and messages raft-rs
    /// would stop on (see [`ReplicaEvent::MessageRefused`]) are dropped.
    pub fn handle_message(&mut self, now: Instant, from: u64, bytes: &[u8], wal: &mut Wal) {
        if bytes.len() > MESSAGE_BYTES_MAX {
            return;
        }
        let Ok(message) = Message::parse_from_bytes(bytes) else { return };
        if message.from != from || message.to != self.config.id {
            return;
        }
        if let Some(reason) = admission::refusal(&self.raw, &message) {
            self.outputs.push_back(ReplicaOutput::Event(ReplicaEvent::MessageRefused { from, reason }));
            return;
        }
        // A message from a peer the configuration does not know is refused by
        // raft-rs; nothing to do with the error.
        let _ = self.raw.step(message);
        self.pin_election_timeout();
        self.process(now, wal);
    }

    fn leader(&self) -> Option<u64> {
        let leader = self.raw.raft.leader_id;
        (leader != raft::INVALID_ID).then_some(leader)
    }

    fn not_leader(&self) -> Option<NodeError> {
        (self.raw.raft.state != StateRole::Leader).then(|| NodeError::NotLeader { leader: self.leader() })
    }

    fn answer(&mut self, ticket: u64, answer: Answer) {
        self.outputs.push_back(ReplicaOutput::Answer { ticket, answer });
    }

    fn answer_failed(&mut self, waiting: Waiting, error: NodeError) {
        let answer = match waiting.conf_change {
            true => Answer::ConfChanged(Err(error)),
            false => Answer::Applied(Err(error)),
        };
        self.answer(waiting.ticket, answer);
    }

    /// Proposes `data`; answered with [`Answer::Applied`] once it is applied
    /// here (with the state machine's result), or with why not.
    pub fn propose(&mut self, now: Instant, ticket: u64, data: Bytes, wal: &mut Wal) {
        if data.len() > PROPOSAL_BYTES_MAX {
            let error = NodeError::TooLarge { len: data.len(), max: PROPOSAL_BYTES_MAX };
            return self.answer(ticket, Answer::Applied(Err(error)));
        }
        self.submit(now, ticket, false, wal, |raw, context| raw.propose(context, data.to_vec()));
    }

    /// Whether a membership change is proposed and not yet applied (Raft
    /// takes one at a time).
    pub fn has_pending_conf(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// Proposes a membership change; answered with [`Answer::ConfChanged`].
    pub fn change_membership(
        &mut self,
        now: Instant,
        ticket: u64,
        change: ConfChangeType,
        node: u64,
        addresses: &[(u64, core::net::SocketAddr)],
        wal: &mut Wal,
    ) {
        let is_member = self.raw.raft.prs().get(node).is_some();
        if node == 0 || (change == ConfChangeType::RemoveNode && !is_member) {
            return self.answer(ticket, Answer::ConfChanged(Err(NodeError::UnknownPeer(node))));
        }
        let mut conf_change = ConfChange::default();
        conf_change.set_change_type(change);
        conf_change.node_id = node;
        if !addresses.is_empty() {
            conf_change.context = bincode::serde::encode_to_vec(addresses, bincode::config::standard())
                .expect("addresses always encode")
                .into();
        }
        self.submit(now, ticket, true, wal, |raw, context| raw.propose_conf_change(context, conf_change));
    }

    fn submit(
        &mut self,
        now: Instant,
        ticket: u64,
        conf_change: bool,
        wal: &mut Wal,
        propose: impl FnOnce(&mut RawNode<LogStore>, Vec<u8>) -> raft::Result<()>,
    ) {
        let waiting = Waiting { ticket, index: 0, deadline: now + self.config.request_timeout, conf_change };
        if let Some(error) = self.not_leader() {
            return self.answer_failed(waiting, error);
        }
        let request = self.next_request;
        self.next_request += 1;
        let proposed = propose(&mut self.raw, encode_context(self.config.id, self.incarnation, request));
        self.pin_election_timeout();
        match proposed {
            Ok(()) => {
                let index = self.raw.raft.raft_log.last_index();
                self.insert_proposal(request, Waiting { index, ..waiting });
            }
            Err(raft::Error::ProposalDropped) => self.answer_failed(waiting, NodeError::Dropped),
            Err(error) => self.answer_failed(waiting, NodeError::Refused(error.to_string())),
        }
        self.process(now, wal);
    }

    /// Starts a ReadIndex round; answered with [`Answer::ReadIndex`] once a
    /// quorum confirmed this leadership and the state machine has applied
    /// up to the read index.
    ///
    /// With `query`, the answer is instead [`Answer::Queried`]: the query
    /// run against the state machine at that point, a linearizable read.
    pub fn read_index(&mut self, now: Instant, ticket: u64, query: Option<Bytes>, wal: &mut Wal) {
        let request = self.next_request;
        self.next_request += 1;
        let deadline = now + self.config.request_timeout;
        self.insert_read(request, PendingRead { ticket, deadline, index: None, query });
        self.raw.read_index(encode_context(self.config.id, self.incarnation, request));
        self.pin_election_timeout();
        self.process(now, wal);
    }

    /// Starts an election now.
    pub fn campaign(&mut self, now: Instant, wal: &mut Wal) {
        let _ = self.raw.campaign();
        self.pin_election_timeout();
        self.process(now, wal);
    }

    /// Asks the leader to hand leadership to `node`.
    ///
    /// # Errors
    ///
    /// Not the leader, or `node` is not a voter of the cluster.
    pub fn transfer_leader(&mut self, now: Instant, node: u64, wal: &mut Wal) -> Result<(), NodeError> {
        if let Some(error) = self.not_leader() {
            return Err(error);
        }
        let voters = self.raw.raft.prs().conf().to_conf_state().voters;
        if !voters.contains(&node) {
            return Err(NodeError::UnknownPeer(node));
        }
        self.raw.transfer_leader(node);
        self.pin_election_timeout();
        self.process(now, wal);
        Ok(())
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> crate::node::NodeStatus {
        let raft = &self.raw.raft;
        let conf_state = raft.prs().conf().to_conf_state();
        let progress = match raft.state {
            StateRole::Leader => raft
                .prs()
                .iter()
                .map(|(&id, progress)| {
                    (id, crate::node::PeerProgress { matched: progress.matched, next: progress.next_idx })
                })
                .collect(),
            _ => BTreeMap::new(),
        };
        crate::node::NodeStatus {
            id: self.config.id,
            term: raft.term,
            leader: self.leader(),
            commit: raft.raft_log.committed,
            applied: raft.raft_log.applied,
            voters: conf_state.voters,
            learners: conf_state.learners,
            progress,
        }
    }

    /// Runs a read-only command against the local state machine (no
    /// consensus: it may be stale on a follower).
    pub fn query(&self, command: &[u8]) -> Result<Bytes, String> {
        self.state_machine.query(command)
    }

    /// Called when the WAL reports durability: releases what waited for it.
    pub fn handle_durable(&mut self, now: Instant, wal: &mut Wal) {
        self.process(now, wal);
    }

    /// Hands raft-rs's work to the WAL and the network until it has none.
    fn process(&mut self, now: Instant, wal: &mut Wal) {
        loop {
            // Until a snapshot's delivery is reported, raft-rs holds the peer
            // in its snapshot state and sends it no other snapshot.
            for (peer, delivered) in std::mem::take(&mut self.snapshot_reports) {
                let status =
                    if delivered { raft::SnapshotStatus::Finish } else { raft::SnapshotStatus::Failure };
                self.raw.report_snapshot(peer, status);
                self.pin_election_timeout();
            }
            let mut progressed = false;
            while let Some(front) = self.unpersisted.front() {
                if wal.durable_next() < front.wal_seq_end {
                    break;
                }
                let persisted = self.unpersisted.pop_front().expect("checked above");
                self.raw.on_persist_ready(persisted.ready);
                self.pin_election_timeout();
                // The state machine holds the snapshot's state already; raft-rs
                // learns it is applied only now that it is durable.
                if let Some(index) =
                    persisted.snapshot.filter(|&index| index > self.raw.raft.raft_log.applied)
                {
                    self.raw.advance_apply_to(index);
                    self.outputs.push_back(ReplicaOutput::Event(ReplicaEvent::Applied { index }));
                }
                persisted.messages.into_iter().for_each(|message| self.send(message));
                progressed = true;
            }
            if self.raw.has_ready() {
                self.handle_ready(now, wal);
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        self.resolve_reads();
        self.schedule_commit_broadcast(now);
        if self.raw.store().take_snapshot_wanted() {
            // A peer needs a snapshot the store cannot give (too old, or
            // from before the peer joined): take a fresh one.
            let applied = self.raw.raft.raft_log.applied;
            self.take_snapshot(now, wal, applied);
        }
        self.compact_wal(wal);
    }

    /// Peers that hold every committed entry but were not sent the commit
    /// index: only an append or heartbeat can tell them.
    fn peers_unaware_of_commit(&self) -> impl Iterator<Item = u64> + '_ {
        let committed = self.raw.raft.raft_log.committed;
        self.raw
            .raft
            .prs()
            .iter()
            .filter(move |&(&id, progress)| {
                id != self.config.id
                    && progress.matched >= committed
                    && self.commit_sent.get(&id).is_none_or(|&sent| sent < committed)
            })
            .map(|(&id, _)| id)
    }

    /// Sets the timer of `commit_broadcast_at` if a leader's new commit
    /// index has not reached every peer able to apply it.
    fn schedule_commit_broadcast(&mut self, now: Instant) {
        if self.raw.raft.state != StateRole::Leader {
            self.commit_broadcast_at = None;
            return;
        }
        if self.commit_broadcast_at.is_none() && self.peers_unaware_of_commit().next().is_some() {
            self.commit_broadcast_at = Some(now + COMMIT_BROADCAST_DELAY);
        }
    }

    fn send(&mut self, message: Message) {
        use raft::eraftpb::MessageType::{MsgAppend, MsgHeartbeat};
        if matches!(message.get_msg_type(), MsgAppend | MsgHeartbeat) {
            let sent = self.commit_sent.entry(message.to).or_default();
            *sent = (*sent).max(message.commit);
        }
        let to = message.to;
        let snapshot = message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
        let bytes = message.write_to_bytes().expect("encoding a protobuf message into memory cannot fail");
        self.outputs.push_back(ReplicaOutput::Send { to, message: Bytes::from(bytes), snapshot });
    }

    /// A snapshot sent to `peer` arrived (`delivered`) or was lost. A lost
    /// one is sent again once raft-rs probes the peer; a message network
    /// that cannot tell reports every snapshot delivered, and the peer's
    /// next answer shows whether it still lags.
    pub fn snapshot_delivered(&mut self, now: Instant, peer: u64, delivered: bool, wal: &mut Wal) {
        self.snapshot_reports.push((peer, delivered));
        self.process(now, wal);
    }

    /// Appends a record to the WAL. A record the WAL refuses would leave
    /// raft-rs believing in state that is not stored: the node stops.
    fn persist(&mut self, now: Instant, wal: &mut Wal, payload: Bytes) {
        if let Err(error) = wal.append(now, payload) {
            let error = NodeError::Storage(format!("cannot store raft state: {error}"));
            self.outputs.push_back(ReplicaOutput::Fatal(error));
        }
    }

    fn handle_ready(&mut self, now: Instant, wal: &mut Wal) {
        let mut ready = self.raw.ready();
        if let Some(soft) = ready.ss() {
            let leader_id = (soft.leader_id != raft::INVALID_ID).then_some(soft.leader_id);
            let event = ReplicaEvent::Role {
                term: self.raw.raft.term,
                leader: soft.raft_state == StateRole::Leader,
                leader_id,
            };
            self.outputs.push_back(ReplicaOutput::Event(event));
        }
        ready.take_messages().into_iter().for_each(|message| self.send(message));
        // Before anything is applied: a snapshot taken while applying
        // writes the hard state, and must not write an older commit index
        // than its own.
        if let Some(hard_state) = ready.hs() {
            self.raw.mut_store().set_hard_state(hard_state.clone());
            self.hard_state_unwritten = true;
        }
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        let snapshot_index = snapshot.as_ref().map(|snapshot| snapshot.get_metadata().index);
        if let Some(snapshot) = snapshot {
            self.install_snapshot(now, wal, snapshot);
        }
        self.apply(now, wal, ready.take_committed_entries());
        for read in ready.take_read_states() {
            let request = decode_context(&read.request_ctx)
                .filter(|&(node, incarnation, _)| (node, incarnation) == (self.config.id, self.incarnation))
                .map(|(_, _, request)| request);
            if let Some(pending) = request.and_then(|request| self.reads.get_mut(&request)) {
                pending.index = Some(read.index);
            }
        }
        let entries = ready.take_entries();
        for entry in &entries {
            self.persist(now, wal, RaftRecord::encode_entry(entry));
        }
        self.raw.mut_store().append(entries);
        // New entries, a vote, a term or a snapshot must be durable before
        // this Ready's messages leave; a new commit index alone need not be.
        if ready.must_sync() {
            self.write_hard_state(now, wal);
        }
        let messages = ready.take_persisted_messages();
        self.unpersisted.push_back(Unpersisted {
            ready: ready.number(),
            wal_seq_end: wal.next_seq(),
            messages,
            snapshot: snapshot_index,
        });
        self.raw.advance_append_async(ready);
        self.pin_election_timeout();
    }

    /// Writes the hard state if it changed since it was last written. Its
    /// commit index alone is written only with the next records that need
    /// a sync; writing it when the node is stopped on purpose makes it
    /// restart with everything it applied.
    pub fn write_hard_state(&mut self, now: Instant, wal: &mut Wal) {
        if std::mem::take(&mut self.hard_state_unwritten) {
            let record = RaftRecord::encode_hard_state(self.raw.store().hard_state());
            self.persist(now, wal, record);
        }
    }

    fn apply(&mut self, now: Instant, wal: &mut Wal, entries: Vec<Entry>) {
        let Some(last) = entries.last().map(|entry| entry.index) else { return };
        for entry in entries {
            let ours = decode_context(&entry.context)
                .filter(|&(node, incarnation, _)| (node, incarnation) == (self.config.id, self.incarnation));
            let waiting = ours.and_then(|(_, _, request)| self.remove_proposal(request));
            match entry.get_entry_type() {
                // raft-rs's own entries (a new leader's empty entry, a refused
                // configuration change) carry no context; every proposal does,
                // even an empty one, and is applied on every replica alike.
                EntryType::EntryNormal if entry.context.is_empty() => {}
                EntryType::EntryNormal => {
                    self.applied_bytes_since_snapshot += entry.data.len() as u64;
                    let result = self.state_machine.apply(&entry.data);
                    if let Some(waiting) = waiting {
                        self.answer(waiting.ticket, Answer::Applied(Ok(result)));
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result = self.apply_conf_change(&entry);
                    if let Some(waiting) = waiting {
                        self.answer(waiting.ticket, Answer::ConfChanged(result));
                    }
                }
            }
            self.fail_overwritten(entry.index);
        }
        self.raw.advance_apply_to(last);
        self.outputs.push_back(ReplicaOutput::Event(ReplicaEvent::Applied { index: last }));
        self.maybe_snapshot(now, wal, last);
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(Vec<u64>, Vec<u64>), NodeError> {
        let applied = match entry.get_entry_type() {
            EntryType::EntryConfChangeV2 => ConfChangeV2::parse_from_bytes(&entry.data)
                .map_err(|error| NodeError::Refused(error.to_string()))
                .and_then(|change| {
                    self.raw.apply_conf_change(&change).map_err(|e| NodeError::Refused(e.to_string()))
                }),
            _ => ConfChange::parse_from_bytes(&entry.data)
                .map_err(|error| NodeError::Refused(error.to_string()))
                .and_then(|change| {
                    // An address book that does not decode is ignored: it
                    // only helps reach peers.
                    let config = bincode::config::standard().with_limit::<{ 1 << 20 }>();
                    if let Ok((addresses, _)) = bincode::serde::decode_from_slice(&change.context, config) {
                        self.outputs.push_back(ReplicaOutput::PeerAddresses(addresses));
                    }
                    self.raw.apply_conf_change(&change).map_err(|e| NodeError::Refused(e.to_string()))
                }),
        };
        self.pin_election_timeout();
        let conf_state = applied?;
        let members = (conf_state.voters.clone(), conf_state.learners.clone());
        let removed = !members.0.contains(&self.config.id) && !members.1.contains(&self.config.id);
        self.raw.mut_store().set_conf_state(conf_state);
        if removed && self.raw.raft.state == StateRole::Leader {
            // raft-rs would keep a removed leader leading a configuration
            // it is not part of; step down so the others elect a leader.
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
            self.pin_election_timeout();
        }
        Ok(members)
    }

    /// Proposals expected at or below `index` that were not applied there
    /// were overwritten by another leader's entries; they are answered in
    /// request order.
    fn fail_overwritten(&mut self, index: u64) {
        let mut lost: Vec<u64> = self
            .proposal_indexes
            .iter()
            .take_while(|&&(expected, _)| expected <= index)
            .map(|&(_, id)| id)
            .collect();
        lost.sort_unstable();
        for id in lost {
            let waiting = self.remove_proposal(id).expect("listed above");
            self.answer_failed(waiting, NodeError::Dropped);
        }
    }

    fn resolve_reads(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        let ready: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.index.is_some_and(|i| i <= applied))
            .map(|(&id, _)| id)
            .collect();
        for id in ready {
            let read = self.remove_read(id).expect("listed above");
            let index = read.index.expect("filtered on a known index");
            let answer = read.answer(Ok(index), &self.state_machine);
            self.answer(read.ticket, answer);
        }
    }
}
