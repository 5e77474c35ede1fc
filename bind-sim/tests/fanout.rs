//! One body sent to several addresses through the kernel
//! (`Command::SendChunkToAddresses`), on an in-memory network in virtual
//! time: the peers reached together share one digest, a peer reached late
//! gets a transfer of its own, and an address nobody answers at neither
//! holds the others back nor goes unreported.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use octopii_core::fanout::DIAL_GROUP_WAIT;
use octopii_core::transport::TransportConfig;
use octopii_core::transport::chunk::{ChunkSource, TransferError, TransferReport};
use octopii_core::transport::tls::DevCa;
use octopii_core::transport::{Delivery, Transmit};
use octopii_core::{Command, CommandId, Input, Kernel, Output, Reply};

use common::{address, seed};

/// A received transfer's outcome: the verified size, or why not.
type Verified = Result<u64, TransferError>;

/// Transport-only kernels on a network where a datagram to or from a node
/// of `delays` takes that long (the longer of two), and 1 ms otherwise.
struct Net {
    now: Instant,
    kernels: BTreeMap<u64, Kernel>,
    in_flight: Vec<(Instant, SocketAddr, SocketAddr, Bytes)>,
    delays: BTreeMap<u64, Duration>,
    /// Node 1's replies, with when they came.
    replies: Vec<(Instant, Reply)>,
    /// Each receiver's verified bodies: when each ended, and its outcome.
    received: BTreeMap<u64, Vec<(Instant, Verified)>>,
    /// When each receiver's first transfer began arriving.
    incoming: BTreeMap<u64, Instant>,
}

impl Net {
    fn new(nodes: &[u64], delays: &[(u64, Duration)]) -> Self {
        octopii_sim::crypto::reseed(0);
        let ca = DevCa::from_seed([1; 32]).unwrap();
        let mut kernels = BTreeMap::new();
        for &node in nodes {
            let identity = ca.identity(node, seed(7, node)).unwrap();
            let crypto = octopii_sim::crypto::provider();
            let time = Arc::new(octopii_sim::crypto::SimWallClock);
            let mut config = TransportConfig::new(node, identity, crypto, time, seed(1, node));
            config.idle_timeout = Duration::from_secs(2);
            kernels.insert(node, Kernel::new_transport(config).unwrap());
        }
        Net {
            now: octopii_sim::time::epoch(),
            kernels,
            in_flight: Vec::new(),
            delays: delays.iter().copied().collect(),
            replies: Vec::new(),
            received: BTreeMap::new(),
            incoming: BTreeMap::new(),
        }
    }

    fn delay(&self, from: SocketAddr, to: SocketAddr) -> Duration {
        let of = |at: SocketAddr| {
            self.delays
                .iter()
                .find(|&(&node, _)| address(node) == at)
                .map_or(Duration::from_millis(1), |(_, &delay)| delay)
        };
        of(from).max(of(to))
    }

    fn collect(&mut self) {
        let now = self.now;
        let mut sent = Vec::new();
        for (&node, kernel) in &mut self.kernels {
            while let Some(output) = kernel.poll_output() {
                match output {
                    Output::Transmit(Transmit { destination, contents, .. }) => {
                        sent.push((address(node), destination, contents));
                    }
                    Output::Reply { reply, .. } => self.replies.push((now, reply)),
                    Output::Delivery(Delivery::ChunkIncoming { .. }) => {
                        self.incoming.entry(node).or_insert(now);
                    }
                    Output::Delivery(delivery @ Delivery::ChunkData { .. }) => {
                        kernel.handle_input(now, Input::DeliveriesTaken(delivery.room()));
                    }
                    Output::Delivery(Delivery::ChunkReceived { result, .. }) => {
                        self.received.entry(node).or_default().push((now, result));
                    }
                    _ => {}
                }
            }
        }
        for (from, to, contents) in sent {
            let at = now + self.delay(from, to);
            self.in_flight.push((at, from, to, contents));
        }
        self.in_flight.sort_by_key(|&(at, ..)| at);
    }

    /// Runs until node 1 replies, or `limit` of virtual time has passed.
    fn run_until_reply(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            self.collect();
            if !self.replies.is_empty() {
                return;
            }
            let next_datagram = self.in_flight.first().map(|(at, ..)| *at);
            let next_timer =
                self.kernels.values().filter_map(|kernel| kernel.poll_timeout()).map(|(at, _)| at).min();
            let next = next_datagram.into_iter().chain(next_timer).min().filter(|&at| at <= end);
            let Some(next) = next else { return };
            self.now = self.now.max(next);
            if next_datagram == Some(next) {
                let (_, from, to, contents) = self.in_flight.remove(0);
                if let Some((_, kernel)) = self.kernels.iter_mut().find(|(node, _)| address(**node) == to) {
                    kernel.handle_input(
                        self.now,
                        Input::Datagrams(vec![(from, BytesMut::from(&contents[..]))]),
                    );
                }
            } else {
                let now = self.now;
                for kernel in self.kernels.values_mut() {
                    if kernel.poll_timeout().is_some_and(|(at, _)| at <= now) {
                        kernel.handle_input(now, Input::Timeout);
                    }
                }
            }
        }
    }
}

/// Each destination's outcome as the body size it verified.
fn sizes<T: Copy>(outcomes: &[(T, Result<TransferReport, TransferError>)]) -> Vec<(T, Verified)> {
    outcomes.iter().map(|(to, outcome)| (*to, outcome.clone().map(|report| report.bytes))).collect()
}

fn body() -> Bytes {
    (0..1_000_000u32).map(|index| (index * 13 % 251) as u8).collect()
}

#[test]
fn peers_reached_together_share_a_digest_and_a_late_or_silent_one_holds_nobody_back() {
    // Node 3 is reached some milliseconds after node 2, within the wait;
    // node 4 is 40 ms away, reached long after the group of nodes 2 and 3
    // has left. Nobody listens at node 9's address.
    let delays = [(3, Duration::from_millis(5)), (4, Duration::from_millis(40))];
    let mut net = Net::new(&[1, 2, 3, 4], &delays);
    let body = body();
    let size = body.len() as u64;
    let started = net.now;
    let to = vec![address(2), address(9), address(3), address(4)];
    let command = Command::SendChunkToAddresses { to: to.clone(), source: ChunkSource::Memory(body) };
    net.kernels.get_mut(&1).unwrap().handle_input(started, Input::Command { id: CommandId(1), command });
    net.run_until_reply(Duration::from_secs(30));

    let [(replied, Reply::ChunksSentTo(outcomes))] = &net.replies[..] else { panic!("{:?}", net.replies) };
    let outcomes = sizes(outcomes);
    assert_eq!(outcomes[0], (address(2), Ok(size)));
    assert!(
        matches!(&outcomes[1], (at, Err(TransferError::Unreachable(_))) if *at == address(9)),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], (address(3), Ok(size)));
    assert_eq!(outcomes[3], (address(4), Ok(size)));
    // Two digests: one for the group of nodes 2 and 3, one for node 4.
    let hashed = net.kernels[&1].transport().unwrap().stats().chunk_bytes_hashed;
    assert_eq!(hashed, 2 * size, "nodes 2 and 3 share a digest; node 4 has its own");
    for node in [2, 3, 4] {
        let received = &net.received[&node];
        assert_eq!(received.iter().map(|(_, result)| result.clone()).collect::<Vec<_>>(), [Ok(size)]);
    }
    // The group left within the wait, and did not wait for the silent
    // address's dial, which ends only at the idle timeout.
    for node in [2, 3] {
        let (at, _) = net.received[&node][0];
        assert!(
            at - started < Duration::from_secs(1),
            "node {node} verified its body after {:?}",
            at - started
        );
    }
    assert!(*replied - started >= Duration::from_secs(2), "the reply waited for the silent dial to fail");
}

#[test]
fn peers_all_reached_leave_at_once_with_one_digest() {
    let mut net = Net::new(&[1, 2, 3], &[(3, Duration::from_millis(5))]);
    let body = body();
    let size = body.len() as u64;
    let started = net.now;
    let command =
        Command::SendChunkToAddresses { to: vec![address(3), address(2)], source: ChunkSource::Memory(body) };
    net.kernels.get_mut(&1).unwrap().handle_input(started, Input::Command { id: CommandId(7), command });
    net.run_until_reply(Duration::from_secs(30));

    let [(_, Reply::ChunksSentTo(outcomes))] = &net.replies[..] else { panic!("{:?}", net.replies) };
    let outcomes = sizes(outcomes);
    assert_eq!(outcomes, [(address(3), Ok(size)), (address(2), Ok(size))]);
    assert_eq!(net.kernels[&1].transport().unwrap().stats().chunk_bytes_hashed, size);
    // Once both dials have ended the group leaves: it does not sit out
    // the rest of the wait.
    for (node, at) in &net.incoming {
        assert!(*at - started < DIAL_GROUP_WAIT, "node {node}'s transfer began after {:?}", *at - started);
    }
    assert_eq!(net.incoming.len(), 2);
}

#[test]
fn a_shutdown_answers_the_transfers_it_cuts_short() {
    let mut net = Net::new(&[1, 2], &[(2, Duration::from_millis(5))]);
    let body: Bytes = vec![7u8; 64 << 20].into();
    let started = net.now;
    let command = Command::SendChunkToAddresses { to: vec![address(2)], source: ChunkSource::Memory(body) };
    net.kernels.get_mut(&1).unwrap().handle_input(started, Input::Command { id: CommandId(3), command });
    net.run_until_reply(Duration::from_millis(100));
    assert!(net.replies.is_empty(), "the transfer is still running: {:?}", net.replies);
    let now = net.now;
    net.kernels.get_mut(&1).unwrap().shutdown(now);
    net.run_until_reply(Duration::from_secs(5));
    let [(_, Reply::ChunksSentTo(outcomes))] = &net.replies[..] else { panic!("{:?}", net.replies) };
    assert!(
        matches!(&outcomes[..], [(at, Err(TransferError::Interrupted(_)))] if *at == address(2)),
        "{outcomes:?}"
    );
}

#[test]
fn a_peer_named_twice_gets_the_body_once_and_both_slots_its_outcome() {
    let mut net = Net::new(&[1, 2, 3], &[]);
    let body = body();
    let size = body.len() as u64;
    let to = vec![address(2), address(3), address(2)];
    let command = Command::SendChunkToAddresses { to: to.clone(), source: ChunkSource::Memory(body.clone()) };
    let now = net.now;
    net.kernels.get_mut(&1).unwrap().handle_input(now, Input::Command { id: CommandId(4), command });
    net.run_until_reply(Duration::from_secs(30));
    let [(_, Reply::ChunksSentTo(outcomes))] = &net.replies[..] else { panic!("{:?}", net.replies) };
    let outcomes = sizes(outcomes);
    assert_eq!(outcomes, to.iter().map(|&address| (address, Ok(size))).collect::<Vec<_>>());
    assert_eq!(net.received[&2].len(), 1, "node 2 got the body once");

    // By id, through the same path.
    net.replies.clear();
    let command = Command::SendChunkToMany { to: vec![3, 3], source: ChunkSource::Memory(body) };
    let now = net.now;
    net.kernels.get_mut(&1).unwrap().handle_input(now, Input::Command { id: CommandId(5), command });
    net.run_until_reply(Duration::from_secs(30));
    let [(_, Reply::ChunksSent(outcomes))] = &net.replies[..] else { panic!("{:?}", net.replies) };
    let outcomes = sizes(outcomes);
    assert_eq!(outcomes, [(3, Ok(size)), (3, Ok(size))]);
    assert_eq!(net.received[&3].len(), 2, "node 3 got the first body and this one, once");
}
