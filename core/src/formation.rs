//! Forming a cluster from peer addresses.
//!
//! A node may be told only where its peers listen, not their ids. It dials
//! each address until the node there has proved who it is (see
//! [`crate::transport::Transport::connect`]), so it can reach that node
//! again later. The leader also brings each node found that way into the
//! cluster: first as a learner, then, once the learner has every committed
//! entry, as a voter. Raft takes one membership change at a time, so one
//! step runs at a time. A node removed while this one runs is not brought
//! back.

use core::net::SocketAddr;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::node::{Membership, NodeStatus};

/// How often the leader looks for a step to take.
pub const FORMATION_ROUND: Duration = Duration::from_millis(200);

/// What is known of the node at one configured address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// Not reached yet (dialed again next round).
    Unknown,
    /// A dial is running.
    Dialing,
    /// This node answered.
    Node(u64),
}

/// The state of cluster formation. See the module documentation.
#[derive(Debug)]
pub(crate) struct Formation {
    addresses: BTreeMap<SocketAddr, Found>,
    /// `None` until the first round, which runs on the first input.
    next_round: Option<Instant>,
    /// A membership change is waiting for its answer.
    changing: bool,
    removed: BTreeSet<u64>,
}

impl Formation {
    /// Formation for `addresses`; `None` when there are none.
    pub(crate) fn new(addresses: &[SocketAddr]) -> Option<Self> {
        (!addresses.is_empty()).then(|| Self {
            addresses: addresses.iter().map(|&address| (address, Found::Unknown)).collect(),
            next_round: None,
            changing: false,
            removed: BTreeSet::new(),
        })
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.next_round
    }

    /// Whether a round is due at `now`.
    pub(crate) fn is_due(&self, now: Instant) -> bool {
        self.next_round.is_none_or(|at| at <= now)
    }

    /// Starts this round: returns the addresses to dial now (each marked as
    /// being dialed) and schedules the next round.
    pub(crate) fn start_round(&mut self, now: Instant) -> Vec<SocketAddr> {
        self.next_round = Some(now + FORMATION_ROUND);
        let mut dial = Vec::new();
        for (&address, found) in &mut self.addresses {
            if *found == Found::Unknown {
                *found = Found::Dialing;
                dial.push(address);
            }
        }
        dial
    }

    /// A dial ended: the node that answered, or `None` (dialed again next
    /// round).
    pub(crate) fn dialed(&mut self, address: SocketAddr, node: Option<u64>) {
        if let Some(found) = self.addresses.get_mut(&address) {
            *found = node.map_or(Found::Unknown, Found::Node);
        }
    }

    /// The membership change the leader should make next, if any; the
    /// caller runs it and reports with [`Formation::changed`].
    pub(crate) fn next_change(&mut self, status: &NodeStatus) -> Option<(Membership, u64)> {
        if self.changing || !status.is_leader() {
            return None;
        }
        let found: BTreeSet<u64> = self
            .addresses
            .values()
            .filter_map(|found| match found {
                Found::Node(node) if *node != status.id && !self.removed.contains(node) => Some(*node),
                _ => None,
            })
            .collect();
        let is_member = |node: &u64| status.voters.contains(node) || status.learners.contains(node);
        let change = found
            .iter()
            .find(|node| !is_member(node))
            .map(|&node| (Membership::AddLearner, node))
            .or_else(|| {
                let caught_up = |node: &&u64| {
                    status.learners.contains(node)
                        && status.progress.get(node).is_some_and(|progress| progress.matched >= status.commit)
                };
                found.iter().find(caught_up).map(|&node| (Membership::AddVoter, node))
            });
        self.changing = change.is_some();
        change
    }

    /// The change from [`Formation::next_change`] was answered.
    pub(crate) fn changed(&mut self) {
        self.changing = false;
    }

    /// A user removed `node`: formation leaves it out from now on.
    pub(crate) fn removed(&mut self, node: u64) {
        self.removed.insert(node);
    }
}
