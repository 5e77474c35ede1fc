//! How a node takes part in consensus: ids, initial voters, timing,
//! snapshot policy.

use core::net::SocketAddr;
use std::time::Duration;

/// How a node takes part in consensus. `Default` gives a single node with
/// id 1, ticks of 100 ms, elections after 10 to 20 ticks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id, non-zero and unique in the cluster.
    pub id: u64,
    /// Voters of a brand-new cluster, this node included. Used only when
    /// the log is empty; empty means "join an existing cluster" (wait to be
    /// added by its leader).
    pub voters: Vec<u64>,
    /// Seeds election timeouts and request ids.
    pub seed: u64,
    /// Length of one Raft tick.
    pub tick_interval: Duration,
    /// Ticks without a leader before an election (randomized in `[n, 2n)`).
    pub election_ticks: usize,
    /// Ticks between heartbeats; less than `election_ticks`.
    pub heartbeat_ticks: usize,
    /// Take a snapshot and compact the log once this many entries have been
    /// applied since the last one (the spec's default: 1000).
    pub snapshot_lag_threshold: u64,
    /// How long a proposal or read may wait for its answer.
    pub request_timeout: Duration,
    /// Where the nodes this one forms a cluster with listen, when their ids
    /// are not configured: they are dialed to learn who they are, and the
    /// leader brings each into the cluster (a learner, then a voter once
    /// caught up). Needs a transport.
    pub peer_addresses: Vec<SocketAddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            voters: vec![1],
            seed: 0,
            tick_interval: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            snapshot_lag_threshold: 1000,
            request_timeout: Duration::from_secs(10),
            peer_addresses: Vec::new(),
        }
    }
}

/// Why a [`NodeConfig`] is invalid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeConfigError {
    /// Node id 0 is reserved by Raft.
    #[error("node id must be non-zero")]
    ZeroId,
    /// Heartbeats must come more often than elections.
    #[error("heartbeat ticks ({heartbeat}) must be at least 1 and below election ticks ({election})")]
    Ticks {
        /// Configured heartbeat ticks.
        heartbeat: usize,
        /// Configured election ticks.
        election: usize,
    },
    /// A zero tick interval or request timeout.
    #[error("tick interval and request timeout must be non-zero")]
    ZeroDuration,
    /// Initial voters that do not include this node.
    #[error("initial voters {voters:?} do not include this node ({id})")]
    NotAVoter {
        /// This node.
        id: u64,
        /// The configured voters.
        voters: Vec<u64>,
    },
}

impl NodeConfig {
    /// Checks every field.
    ///
    /// # Errors
    ///
    /// The first invalid field.
    pub fn validate(&self) -> Result<(), NodeConfigError> {
        if self.id == 0 {
            return Err(NodeConfigError::ZeroId);
        }
        if self.heartbeat_ticks == 0 || self.heartbeat_ticks >= self.election_ticks {
            return Err(NodeConfigError::Ticks {
                heartbeat: self.heartbeat_ticks,
                election: self.election_ticks,
            });
        }
        if self.tick_interval.is_zero() || self.request_timeout.is_zero() {
            return Err(NodeConfigError::ZeroDuration);
        }
        if !self.voters.is_empty() && !self.voters.contains(&self.id) {
            return Err(NodeConfigError::NotAVoter { id: self.id, voters: self.voters.clone() });
        }
        Ok(())
    }
}
