//! The scripting API of [`ClusterSim`]: commands and their outcomes, waiting
//! on conditions with deadlines, faults, and the end-of-run convergence
//! check. Tests never sleep: they run virtual time until a condition holds
//! or a deadline passes.

use std::time::Duration;

use bytes::Bytes;
use octopii_core::raft::state_machine::StateMachine;
use octopii_core::{Command, NodeStatus, Reply};
use rand_chacha::ChaCha8Rng;

use super::{ClusterSim, Kind};
use crate::cluster::network::NetworkConfig;
use crate::cluster::oracle::show;
use crate::cluster::{ClusterConfig, ClusterConfigError, ClusterStats, Handle, Outcome, Violation};
use crate::disk::DiskFaults;

/// How long a helper waits for a node to answer `Status`.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

impl ClusterSim {
    // ----- what the cluster looks like -----------------------------------

    /// The run's seed.
    pub fn seed(&self) -> u64 {
        self.config.seed
    }

    /// The configuration the cluster was made with.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    /// Sets the replay command printed with a violation.
    pub fn set_replay(&mut self, replay: String) {
        self.replay = replay;
    }

    /// The replay command printed with a violation.
    pub fn replay_command(&self) -> &str {
        &self.replay
    }

    /// Every node id ever added, in order.
    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// Whether node `id` is up.
    pub fn is_running(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|node| node.running.is_some())
    }

    /// Whether node `id` was shut down for good with [`ClusterSim::stop`].
    pub fn is_stopped(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|node| node.stopped)
    }

    /// The nodes that are up.
    pub fn running_nodes(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, node)| node.running.is_some()).map(|(&id, _)| id).collect()
    }

    /// Nodes that are up but stopped on a storage failure (they answer
    /// every request with an error until restarted).
    pub fn failed_nodes(&self) -> Vec<u64> {
        let failed = |node: &super::SimNode| node.running.as_ref().is_some_and(|running| running.failed);
        self.nodes.iter().filter(|(_, node)| failed(node)).map(|(&id, _)| id).collect()
    }

    /// The leader: of the running nodes whose latest role event says they
    /// lead, the one with the highest term (a deposed leader cut off from
    /// the others may not know it yet).
    pub fn leader(&self) -> Option<u64> {
        let leading = |(&id, node): (&u64, &super::SimNode)| {
            let role = node.running.as_ref()?.role?;
            role.leader.then_some((role.term, id))
        };
        self.nodes.iter().filter_map(leading).max().map(|(_, id)| id)
    }

    /// The term node `id` last reported.
    pub fn term(&self, id: u64) -> Option<u64> {
        self.nodes.get(&id)?.running.as_ref()?.role.map(|role| role.term)
    }

    /// How many committed commands node `id`'s state machine reflects.
    pub fn applied_position(&self, id: u64) -> Option<u64> {
        Some(self.nodes.get(&id)?.running.as_ref()?.recorder.position())
    }

    /// Length of the committed sequence of state machine commands seen so far.
    pub fn committed_len(&self) -> u64 {
        self.oracle.len()
    }

    /// The committed command at `position` (1-based).
    pub fn committed_command(&self, position: u64) -> Option<Bytes> {
        self.oracle.command_at(position).cloned()
    }

    /// Node `id`'s state machine (the one the factory made), while it is up.
    pub fn state_machine(&self, id: u64) -> Option<StateMachine> {
        Some(self.nodes.get(&id)?.running.as_ref()?.recorder.inner().clone())
    }

    /// The first violation found, if any; the run is not to be trusted past it.
    pub fn violation(&self) -> Option<&Violation> {
        self.violation.as_ref()
    }

    /// CRC32 of the whole trace so far.
    pub fn trace_hash(&self) -> u32 {
        self.trace.hash()
    }

    /// Lines in the trace so far.
    pub fn trace_lines(&self) -> u64 {
        self.trace.lines()
    }

    /// What happened so far.
    pub fn stats(&self) -> ClusterStats {
        let mut stats = self.stats.clone();
        stats.elections = self.oracle.leader_terms();
        stats.committed = self.oracle.len();
        stats.network = self.network.counts;
        for node in self.nodes.values() {
            crate::cluster::add_disk_counts(&mut stats.disk, node.disk.counts());
        }
        stats
    }

    /// The run's random generator, for drivers that script on top.
    pub fn rng(&mut self) -> &mut ChaCha8Rng {
        &mut self.rng
    }

    /// Adds a line to the trace (a driver's decision, say).
    pub fn note(&mut self, line: &str) {
        self.trace(|| line.to_owned());
    }

    /// Records a violation found by a driver's own checks.
    pub fn report(&mut self, message: String) {
        self.violate(message);
    }

    // ----- time ----------------------------------------------------------

    /// Processes events until `done` holds, a violation is found, or
    /// `timeout` of virtual time has passed; returns whether `done` held.
    /// `done` is checked before every event.
    pub fn run_until(&mut self, timeout: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let deadline = self.clock.elapsed().saturating_add(timeout);
        loop {
            if done(self) {
                return true;
            }
            if self.violation.is_some() {
                return false;
            }
            match self.queue.next_at() {
                Some(at) if at <= deadline => self.step(),
                _ => {
                    self.clock.advance_to(deadline);
                    return done(self);
                }
            }
        }
    }

    /// Processes events for `duration` of virtual time (stops early on a
    /// violation).
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    // ----- commands ------------------------------------------------------

    /// Passes `command` to node `id`; a node that is down loses it. Its
    /// outcome is then [`ClusterSim::outcome`]. An acknowledged proposal is
    /// checked to land after every proposal acknowledged before it was
    /// submitted. On a cluster of key-value stores ([`ClusterSim::new`]),
    /// a `LinearizableQuery` of `GET key` is checked like
    /// [`ClusterSim::read`].
    pub fn submit(&mut self, id: u64, command: Command) -> Handle {
        let kind = match &command {
            Command::Propose(_) => Kind::Proposal { floor: 0 },
            Command::LinearizableQuery(query) => {
                let key = query.strip_prefix(b"GET ").map(Bytes::copy_from_slice);
                Kind::Query { key, floor: 0 }
            }
            Command::Query(_) => Kind::Query { key: None, floor: 0 },
            _ => Kind::Plain,
        };
        self.submit_request(id, command, kind)
    }

    /// Starts a linearizable read of `key` on node `id`: `ReadIndex`, then,
    /// once it is answered, `Query("GET key")` on the same node. The
    /// outcome is the `Queried` reply (or the failed `ReadIndex` reply). On
    /// a cluster of key-value stores ([`ClusterSim::new`]) the oracle checks
    /// that it is not older than any write or read of the key that finished
    /// before it started.
    pub fn read(&mut self, id: u64, key: &[u8]) -> Handle {
        let kind = Kind::Read { key: Bytes::copy_from_slice(key), floor: 0, querying: false };
        self.submit_request(id, Command::ReadIndex, kind)
    }

    /// Where command `handle` stands; `None` for a handle never given out.
    pub fn outcome(&self, handle: Handle) -> Option<&Outcome> {
        self.requests.get(&handle).map(|request| &request.outcome)
    }

    /// The reply to `handle`, once given.
    pub fn reply(&self, handle: Handle) -> Option<&Reply> {
        match self.outcome(handle)? {
            Outcome::Replied(reply) => Some(reply),
            Outcome::Pending | Outcome::Lost => None,
        }
    }

    /// Whether `handle` has an outcome (a reply, or lost).
    pub fn is_done(&self, handle: Handle) -> bool {
        self.outcome(handle).is_some_and(|outcome| *outcome != Outcome::Pending)
    }

    /// For an acknowledged proposal, the position it was applied at; for an
    /// answered query or read, the position of the state it saw.
    pub fn position(&self, handle: Handle) -> Option<u64> {
        self.requests.get(&handle)?.position
    }

    /// Handles that got an outcome since the last call, in order.
    pub fn take_completions(&mut self) -> Vec<Handle> {
        std::mem::take(&mut self.completions)
    }

    /// Whether some handle got an outcome since the last `take_completions`.
    pub fn has_completions(&self) -> bool {
        !self.completions.is_empty()
    }

    /// Submits `command` and runs until it has an outcome or `timeout`
    /// passed; returns the reply, if any.
    pub fn call(&mut self, id: u64, command: Command, timeout: Duration) -> Option<Reply> {
        let handle = self.submit(id, command);
        self.run_until(timeout, |sim| sim.is_done(handle));
        self.reply(handle).cloned()
    }

    /// Node `id`'s view of the cluster (waits while it rebuilds its state).
    pub fn status(&mut self, id: u64) -> Option<NodeStatus> {
        match self.call(id, Command::Status, STATUS_TIMEOUT)? {
            Reply::Status(Ok(status)) => Some(status),
            _ => None,
        }
    }

    /// Runs until some node leads, at most `timeout`; returns it.
    pub fn await_leader(&mut self, timeout: Duration) -> Option<u64> {
        self.run_until(timeout, |sim| sim.leader().is_some());
        self.leader()
    }

    /// Proposes `command` to the leader until one acknowledges it, at most
    /// `timeout`: the state machine's result. A retry after a timeout may
    /// apply the command twice; use idempotent commands.
    ///
    /// # Errors
    ///
    /// The last failure, when `timeout` passed first.
    pub fn write(&mut self, command: &[u8], timeout: Duration) -> Result<Result<Bytes, String>, String> {
        let deadline = self.now().saturating_add(timeout);
        let mut last = String::from("no leader");
        while self.now() < deadline && self.violation.is_none() {
            let Some(leader) = self.await_leader(deadline.saturating_sub(self.now())) else { break };
            let handle = self.submit(leader, Command::Propose(Bytes::copy_from_slice(command)));
            self.run_until(deadline.saturating_sub(self.now()), |sim| sim.is_done(handle));
            match self.outcome(handle) {
                Some(Outcome::Replied(Reply::Proposed(Ok(result)))) => return Ok(result.clone()),
                other => last = format!("{other:?} from node {leader}"),
            }
            self.run_for(self.config.tick_interval);
        }
        Err(format!("{} not acknowledged within {timeout:?}: {last}", show(command)))
    }

    // ----- faults --------------------------------------------------------

    /// Cuts every link between nodes of different groups, both ways; nodes
    /// named in no group form one more group. Nodes added later are
    /// connected to every node.
    pub fn partition(&mut self, groups: &[&[u64]]) {
        let ids = self.node_ids();
        let group_of = |id: u64| groups.iter().position(|group| group.contains(&id)).unwrap_or(groups.len());
        for &from in &ids {
            for &to in &ids {
                if group_of(from) != group_of(to) {
                    self.network.cut(from, to);
                }
            }
        }
        self.stats.partitions += 1;
        self.trace(|| format!("partition {groups:?}"));
    }

    /// Cuts node `id` off from every other node, both ways.
    pub fn isolate(&mut self, id: u64) {
        for other in self.node_ids() {
            self.network.cut(id, other);
            self.network.cut(other, id);
        }
        self.stats.isolations += 1;
        self.trace(|| format!("isolate n{id}"));
    }

    /// Cuts the directed link `from -> to` only (an asymmetric fault).
    pub fn cut_link(&mut self, from: u64, to: u64) {
        self.network.cut(from, to);
        self.stats.link_cuts += 1;
        self.trace(|| format!("cut n{from} -> n{to}"));
    }

    /// Restores the directed link `from -> to`.
    pub fn restore_link(&mut self, from: u64, to: u64) {
        self.network.restore(from, to);
        self.trace(|| format!("restore n{from} -> n{to}"));
    }

    /// Loses the next `count` messages sent `from -> to` that are at least
    /// `bytes_min` bytes long (a snapshot, say), then delivers as usual.
    pub fn lose_messages(&mut self, from: u64, to: u64, bytes_min: usize, count: u64) {
        if count > 0 {
            self.network.lose(from, to, bytes_min, count);
            self.trace(|| format!("lose {count} messages n{from} -> n{to} of {bytes_min}+ bytes"));
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        if self.network.is_partitioned() {
            self.stats.heals += 1;
        }
        self.network.heal();
        self.trace(|| String::from("heal"));
    }

    /// Changes the network's delays and random faults (cuts stay).
    ///
    /// # Errors
    ///
    /// The first bad field; the old config stays.
    pub fn set_network(&mut self, config: NetworkConfig) -> Result<(), ClusterConfigError> {
        config.validate().map_err(ClusterConfigError::Network)?;
        self.network.config = config;
        self.trace(|| format!("network {config:?}"));
        Ok(())
    }

    /// Changes the faults of every node's disk.
    ///
    /// # Errors
    ///
    /// A probability out of range.
    pub fn set_disk_faults(&mut self, faults: DiskFaults) -> Result<(), ClusterConfigError> {
        faults.validate()?;
        for node in self.nodes.values_mut() {
            node.disk.set_faults(faults)?;
        }
        self.config.disk_faults = faults;
        self.trace(|| format!("disk faults {faults:?}"));
        Ok(())
    }

    /// Crashes node `id`: the process dies, the disk loses what was not
    /// synced (possibly tearing a write), messages to it are lost, its
    /// pending commands are [`Outcome::Lost`]. Returns whether it was up.
    pub fn crash(&mut self, id: u64) -> bool {
        if !self.take_down(id, "crash") {
            return false;
        }
        self.stats.crashes += 1;
        if let Some(node) = self.nodes.get_mut(&id) {
            node.disk.crash(&mut self.rng);
        }
        true
    }

    /// Starts node `id` again on its disk, with a fresh state machine.
    /// Returns false if it is up, stopped for good, or unknown.
    pub fn restart(&mut self, id: u64) -> bool {
        let startable = self.nodes.get(&id).is_some_and(|node| node.running.is_none() && !node.stopped);
        if startable {
            self.stats.restarts += 1;
            self.start_node(id);
        }
        startable
    }

    /// Shuts node `id` down for good (a removed member, say): its disk is
    /// left as it is and it never restarts. Returns whether it was up.
    pub fn stop(&mut self, id: u64) -> bool {
        let was_up = self.take_down(id, "stop");
        if let Some(node) = self.nodes.get_mut(&id) {
            node.stopped = true;
            self.stats.stops += 1;
        }
        was_up
    }

    /// Starts a new node with an empty disk and no initial voters: it waits
    /// to be added by the leader (`ChangeMembership`).
    ///
    /// # Errors
    ///
    /// An id that is zero or taken, or the cluster is full.
    pub fn add_node(&mut self, id: u64) -> Result<(), ClusterConfigError> {
        self.insert_node(id, Vec::new())?;
        self.stats.nodes_added += 1;
        Ok(())
    }

    // ----- convergence ---------------------------------------------------

    /// The end-of-run check of progress and durability: a leader commits
    /// `marker` (a command of the state machine) within `timeout`; then
    /// every member (voter or learner, per the leader) must be up and reach
    /// the end of the committed sequence; then each member's state must be
    /// byte-identical (by `snapshot()`) to a fresh state machine that
    /// applied the whole sequence, with the same results. Every
    /// acknowledged write sits in that sequence, so it is on every member.
    ///
    /// # Errors
    ///
    /// What did not hold.
    pub fn check_converged(&mut self, marker: &[u8], timeout: Duration) -> Result<(), String> {
        let deadline = self.now().saturating_add(timeout);
        // The marker's own result does not matter, only that it committed.
        let _result = self.write(marker, timeout).map_err(|error| format!("no progress: {error}"))?;
        // Leadership may change right after the marker commits (a leader
        // can step down in the step that applies it): wait for one.
        if !self.run_until(deadline.saturating_sub(self.now()), |sim| sim.leader().is_some()) {
            return Err("no leader after the final write".into());
        }
        let leader = self.leader().ok_or("no leader after the final write")?;
        let status = self.status(leader).ok_or_else(|| format!("leader {leader} did not answer Status"))?;
        let members: Vec<u64> = status.voters.iter().chain(&status.learners).copied().collect();
        if let Some(down) = members.iter().find(|&&id| !self.is_running(id)) {
            return Err(format!("member {down} is down at the end"));
        }
        let caught_up = |sim: &Self| {
            let end = sim.oracle.len();
            members.iter().all(|&id| sim.applied_position(id) == Some(end))
        };
        if !self.run_until(deadline.saturating_sub(self.now()), caught_up) {
            let positions: Vec<(u64, Option<u64>)> =
                members.iter().map(|&id| (id, self.applied_position(id))).collect();
            let end = self.oracle.len();
            return Err(format!("members did not catch up to position {end}: {positions:?}"));
        }
        self.compare_with_model(&members)
    }

    fn compare_with_model(&self, members: &[u64]) -> Result<(), String> {
        let model = (self.factory)(0);
        for (index, (command, result)) in self.oracle.sequence().enumerate() {
            let replayed = model.apply(command);
            if replayed != *result {
                return Err(format!(
                    "the state machine is not deterministic: replaying {} at position {} gave {replayed:?}, \
                     the cluster got {result:?}",
                    show(command),
                    index + 1
                ));
            }
        }
        let expected = model.snapshot();
        for &id in members {
            let state = self.state_machine(id).ok_or_else(|| format!("member {id} is down"))?.snapshot();
            if state != expected {
                return Err(format!(
                    "node {id}'s state ({} bytes, crc {:08x}) differs from the committed sequence's ({} bytes, \
                     crc {:08x})",
                    state.len(),
                    crc32fast::hash(&state),
                    expected.len(),
                    crc32fast::hash(&expected)
                ));
            }
        }
        Ok(())
    }
}
