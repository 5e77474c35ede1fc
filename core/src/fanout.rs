//! One body sent to several peers: [`Command::SendChunkToMany`] names them
//! by id, [`Command::SendChunkToAddresses`] by address.
//!
//! Transfers started together share one SHA-256 of the body. Peers named
//! by address are dialed first, all at once; those reached within
//! [`DIAL_GROUP_WAIT`] of the first start together, and one reached later
//! starts alone (with a digest of its own) rather than hold the others
//! back. The reply waits until every transfer, or its dial, has ended.
//!
//! A peer named twice (the same id, the same address, or two addresses
//! of one node) gets the body once: the later slots share the first one's
//! transfer and report its outcome.
//!
//! [`Command::SendChunkToMany`]: crate::Command::SendChunkToMany
//! [`Command::SendChunkToAddresses`]: crate::Command::SendChunkToAddresses

use core::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::Reply;
use crate::transport::chunk::{ChunkSource, TransferError, TransferReport};
use crate::transport::rpc::RpcError;

/// How long a send to several addresses waits, after the first peer is
/// reached, for others to be reached too: those share one digest of the
/// body.
pub const DIAL_GROUP_WAIT: Duration = Duration::from_millis(50);

/// How one transfer ended.
pub(crate) type TransferOutcome = Result<TransferReport, TransferError>;

/// Transfers the kernel should start now with one digest: each as
/// (slot, peer id).
pub(crate) type Start = Vec<(usize, u64)>;

/// The transfers of one caller's command.
#[derive(Debug)]
pub(crate) struct Fanout {
    /// Where each transfer goes, in the command's order.
    to: Destinations,
    /// Per slot: whether its address is still being dialed.
    dialing: Vec<bool>,
    /// Per slot: how its transfer (or dial) ended.
    outcomes: Vec<Option<TransferOutcome>>,
    /// Per slot: the peer its own transfer goes to, once known.
    peers: Vec<Option<u64>>,
    /// Per slot: the earlier slot whose transfer to the same peer it shares.
    shares: Vec<Option<usize>>,
    source: ChunkSource,
    /// Peers reached (slot, id) and waiting for their group to leave.
    group: Start,
    /// When the group leaves if some dial is still running.
    group_leaves_at: Option<Instant>,
    /// Whether the group has left: a peer reached from now on starts alone.
    group_left: bool,
}

#[derive(Debug)]
enum Destinations {
    Peers(Vec<u64>),
    Addresses(Vec<SocketAddr>),
}

impl Fanout {
    /// Transfers to peers known by id, all to start at once (returned as
    /// (slot, id)).
    pub(crate) fn to_peers(peers: Vec<u64>, source: ChunkSource) -> (Self, Start) {
        let mut fanout = Self::new(peers.len(), Destinations::Peers(peers.clone()), source, false);
        let start = peers.into_iter().enumerate().filter(|&(slot, peer)| fanout.claim(slot, peer)).collect();
        (fanout, start)
    }

    /// Transfers to the nodes at `addresses`, each dialed first.
    pub(crate) fn to_addresses(addresses: Vec<SocketAddr>, source: ChunkSource) -> Self {
        Self::new(addresses.len(), Destinations::Addresses(addresses), source, true)
    }

    /// `count` transfers to `to`; `dial` says whether each is dialed first
    /// (and the group waits for the dials) or all start at once.
    fn new(count: usize, to: Destinations, source: ChunkSource, dial: bool) -> Self {
        Self {
            dialing: vec![dial; count],
            outcomes: vec![None; count],
            peers: vec![None; count],
            shares: vec![None; count],
            to,
            source,
            group: Vec::new(),
            group_leaves_at: None,
            group_left: !dial,
        }
    }

    /// What every transfer sends.
    pub(crate) fn source(&self) -> &ChunkSource {
        &self.source
    }

    /// The dial of `slot` ended: the transfers to start now, if any.
    pub(crate) fn dialed(&mut self, now: Instant, slot: usize, result: Result<u64, RpcError>) -> Start {
        if !self.dialing.get(slot).copied().unwrap_or(false) {
            return Vec::new();
        }
        self.dialing[slot] = false;
        let mut start = Vec::new();
        match result {
            Err(error) => self.outcomes[slot] = Some(Err(TransferError::Unreachable(error.to_string()))),
            Ok(peer) if !self.claim(slot, peer) => {}
            Ok(peer) if self.group_left => start.push((slot, peer)),
            Ok(peer) => {
                self.group.push((slot, peer));
                self.group_leaves_at.get_or_insert(now + DIAL_GROUP_WAIT);
            }
        }
        if !self.dialing.contains(&true) {
            start.extend(self.leave());
        }
        start
    }

    /// When the waiting group leaves, if one waits.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.group_leaves_at.filter(|_| !self.group_left)
    }

    /// The transfers to start at `now`: the waiting group, once its time
    /// has come.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> Start {
        if self.poll_timeout().is_some_and(|at| at <= now) { self.leave() } else { Vec::new() }
    }

    /// The group leaves now, whatever is still being dialed.
    pub(crate) fn leave(&mut self) -> Start {
        self.group_left = true;
        std::mem::take(&mut self.group)
    }

    /// Whether `slot` sends its own transfer to `peer`: false if an
    /// earlier slot already does, whose transfer it then shares.
    fn claim(&mut self, slot: usize, peer: u64) -> bool {
        let Some(first) = self.peers.iter().position(|&other| other == Some(peer)) else {
            self.peers[slot] = Some(peer);
            return true;
        };
        self.shares[slot] = Some(first);
        self.outcomes[slot] = self.outcomes[first].clone();
        false
    }

    /// The transfer of `slot` ended (for the slots sharing it too).
    pub(crate) fn finished(&mut self, slot: usize, outcome: TransferOutcome) {
        for (other, shares) in self.shares.iter().enumerate() {
            if *shares == Some(slot) {
                self.outcomes[other] = Some(outcome.clone());
            }
        }
        if let Some(slot) = self.outcomes.get_mut(slot) {
            *slot = Some(outcome);
        }
    }

    /// The reply, once every transfer (or its dial) has ended.
    pub(crate) fn reply(&mut self) -> Option<Reply> {
        if self.outcomes.iter().any(Option::is_none) {
            return None;
        }
        let outcomes = std::mem::take(&mut self.outcomes).into_iter().flatten();
        Some(match &self.to {
            Destinations::Peers(peers) => Reply::ChunksSent(peers.iter().copied().zip(outcomes).collect()),
            Destinations::Addresses(addresses) => {
                Reply::ChunksSentTo(addresses.iter().copied().zip(outcomes).collect())
            }
        })
    }
}
