//! Transports talking over an in-memory datagram network in virtual time:
//! handshakes, identity checks, framing errors, RPC, reconnects.

use std::collections::{BTreeMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustls::pki_types::UnixTime;

use super::rpc::{OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError};
use super::tls::{DevCa, TlsIdentity};
use super::{Transport, TransportConfig, TransportEvent, TransportOutput};

#[derive(Debug)]
struct FixedTime;

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(UnixTime::since_unix_epoch(Duration::from_secs(1_800_000_000)))
    }
}

fn address(node: u64) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::new(10, 0, 0, node as u8), 4000))
}

fn seed(tag: u8, node: u64) -> [u8; 32] {
    let mut seed = [tag; 32];
    seed[..8].copy_from_slice(&node.to_le_bytes());
    seed
}

fn config(node: u64, identity: TlsIdentity, peers: &[u64], run: u8) -> TransportConfig {
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = TransportConfig::new(node, identity, crypto, Arc::new(FixedTime), seed(run, node));
    config.peers = peers.iter().map(|&peer| (peer, address(peer))).collect();
    config
}

/// Nodes on a network that delivers every datagram after one millisecond,
/// unless `drop` says otherwise.
struct Net {
    now: Instant,
    nodes: BTreeMap<u64, Transport>,
    in_flight: VecDeque<(Instant, SocketAddr, SocketAddr, Bytes)>,
    received: BTreeMap<u64, Vec<TransportOutput>>,
    delivered: Vec<(SocketAddr, SocketAddr, Bytes)>,
    drop: Box<dyn Fn(SocketAddr, SocketAddr) -> bool>,
}

impl Net {
    fn new(ca: &DevCa, nodes: &[u64]) -> Self {
        // Any instant will do as the start of virtual time.
        #[allow(clippy::disallowed_methods)]
        let start = Instant::now();
        let mut net = Net {
            now: start,
            nodes: BTreeMap::new(),
            in_flight: VecDeque::new(),
            received: BTreeMap::new(),
            delivered: Vec::new(),
            drop: Box::new(|_, _| false),
        };
        for &node in nodes {
            let identity = ca.identity(node, seed(7, node)).unwrap();
            net.add(node, Transport::new(config(node, identity, nodes, 1)).unwrap());
        }
        net
    }

    fn add(&mut self, node: u64, transport: Transport) {
        self.nodes.insert(node, transport);
    }

    fn collect(&mut self) {
        for (&node, transport) in &mut self.nodes {
            while let Some(output) = transport.poll_output() {
                match output {
                    TransportOutput::Transmit(transmit) => {
                        let at = self.now + Duration::from_millis(1);
                        self.in_flight.push_back((
                            at,
                            address(node),
                            transmit.destination,
                            transmit.contents,
                        ));
                    }
                    other => self.received.entry(node).or_default().push(other),
                }
            }
        }
    }

    /// Runs until `until` of virtual time has passed.
    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        loop {
            self.collect();
            let next_datagram = self.in_flight.front().map(|(at, ..)| *at);
            let next_timer = self.nodes.values().filter_map(Transport::poll_timeout).min();
            let Some(next) = next_datagram.into_iter().chain(next_timer).min().filter(|&at| at <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            if next_datagram == Some(next) {
                let (_, from, to, contents) = self.in_flight.pop_front().unwrap();
                let target = self.nodes.iter_mut().find(|(node, _)| address(**node) == to);
                if let (Some((_, transport)), false) = (target, (self.drop)(from, to)) {
                    self.delivered.push((from, to, contents.clone()));
                    transport.handle_datagram(self.now, from, BytesMut::from(&contents[..]));
                }
            } else {
                for transport in self.nodes.values_mut() {
                    if transport.poll_timeout().is_some_and(|at| at <= self.now) {
                        transport.handle_timeout(self.now);
                    }
                }
            }
        }
    }

    fn node(&mut self, node: u64) -> &mut Transport {
        self.nodes.get_mut(&node).unwrap()
    }

    fn take(&mut self, node: u64) -> Vec<TransportOutput> {
        self.received.remove(&node).unwrap_or_default()
    }
}

fn ca(seed_byte: u8) -> DevCa {
    DevCa::from_seed([seed_byte; 32]).unwrap()
}

fn raft_from(outputs: &[TransportOutput]) -> Vec<(u64, Bytes)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            TransportOutput::Raft { from, message } => Some((*from, message.clone())),
            _ => None,
        })
        .collect()
}

fn refusals(outputs: &[TransportOutput]) -> Vec<String> {
    outputs
        .iter()
        .filter_map(|output| match output {
            TransportOutput::Event(TransportEvent::Refused { reason, .. }) => Some(reason.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn messages_flow_both_ways_over_one_connection() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2, 3]);
    let now = net.now;
    net.node(1).send_raft(now, 2, Bytes::from_static(b"append"));
    net.node(1).send_raft(now, 3, Bytes::from_static(b"append"));
    net.run_for(Duration::from_millis(100));
    let now = net.now;
    net.node(2).send_raft(now, 1, Bytes::from_static(b"ack"));
    net.run_for(Duration::from_millis(100));
    assert_eq!(raft_from(&net.take(2)), vec![(1, Bytes::from_static(b"append"))]);
    assert_eq!(raft_from(&net.take(3)), vec![(1, Bytes::from_static(b"append"))]);
    assert_eq!(raft_from(&net.take(1)), vec![(2, Bytes::from_static(b"ack"))]);
    assert_eq!(net.node(2).stats().connections_open, 1, "node 2 answered on node 1's connection");
}

#[test]
fn simultaneous_dials_settle_on_one_connection_without_losing_frames() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    let now = net.now;
    for index in 0..5u8 {
        net.node(1).send_raft(now, 2, Bytes::from(vec![1, index]));
        net.node(2).send_raft(now, 1, Bytes::from(vec![2, index]));
    }
    net.run_for(Duration::from_secs(1));
    let expected = |from: u8| {
        (0..5u8).map(|index| (u64::from(from), Bytes::from(vec![from, index]))).collect::<Vec<_>>()
    };
    let got_1: Vec<_> = raft_from(&net.take(1));
    let got_2: Vec<_> = raft_from(&net.take(2));
    assert_eq!(got_1, expected(2));
    assert_eq!(got_2, expected(1));
    assert_eq!(net.node(1).stats().connections_open, 1);
    assert_eq!(net.node(2).stats().connections_open, 1);
}

#[test]
fn requests_are_answered_by_the_handler_and_time_out_when_unanswered() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    net.node(2).set_request_handler(RequestHandler::new(|request| match request.payload {
        RequestPayload::Custom { operation, data } if operation == "echo" => {
            ResponsePayload::CustomResponse { success: true, data }
        }
        _ => ResponsePayload::Error { message: "unknown operation".into() },
    }));
    let now = net.now;
    let echo = RequestPayload::Custom { operation: "echo".into(), data: Bytes::from_static(b"ping") };
    net.node(1).request(now, 10, 2, echo, Duration::from_secs(1));
    net.node(1).request(
        now,
        11,
        2,
        RequestPayload::OpenRaft { kind: "x".into(), data: Bytes::new() },
        Duration::from_secs(1),
    );
    net.node(1).send_one_way(now, 2, OneWayMessage::Heartbeat { node_id: 1, timestamp: 5 }).unwrap();
    net.run_for(Duration::from_millis(200));
    let outputs = net.take(1);
    let responses: Vec<_> = outputs
        .iter()
        .filter_map(|output| match output {
            TransportOutput::Response { ticket, result } => Some((*ticket, result.clone().unwrap().payload)),
            _ => None,
        })
        .collect();
    assert_eq!(
        responses,
        vec![
            (10, ResponsePayload::CustomResponse { success: true, data: Bytes::from_static(b"ping") }),
            (11, ResponsePayload::Error { message: "unknown operation".into() }),
        ]
    );
    assert!(net.take(2).contains(&TransportOutput::OneWay {
        from: 1,
        message: OneWayMessage::Heartbeat { node_id: 1, timestamp: 5 }
    }));

    // Node 2 stops answering: the request times out at its deadline.
    net.drop = Box::new(|from, _| from == address(2));
    let sent_at = net.now;
    let echo = RequestPayload::Custom { operation: "echo".into(), data: Bytes::new() };
    net.node(1).request(sent_at, 12, 2, echo, Duration::from_millis(300));
    net.run_for(Duration::from_millis(299));
    assert!(net.take(1).iter().all(|output| !matches!(output, TransportOutput::Response { .. })));
    net.run_for(Duration::from_millis(2));
    let timed_out = net.take(1).into_iter().find_map(|output| match output {
        TransportOutput::Response { ticket: 12, result } => Some(result),
        _ => None,
    });
    assert_eq!(timed_out, Some(Err(RpcError::TimedOut { timeout_ms: 300 })));
}

#[test]
fn a_lost_connection_fails_pending_requests_and_the_peer_is_dialed_again() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    net.node(2).set_request_handler(RequestHandler::new(|_| ResponsePayload::Error { message: "x".into() }));
    let now = net.now;
    net.node(1).send_raft(now, 2, Bytes::from_static(b"hello"));
    net.run_for(Duration::from_millis(100));
    assert!(net.node(1).is_connected(2));
    assert_eq!(raft_from(&net.take(2)), vec![(1, Bytes::from_static(b"hello"))]);
    // Node 2 restarts: a new process with a fresh seed, same identity.
    let identity = ca.identity(2, seed(7, 2)).unwrap();
    net.add(2, Transport::new(config(2, identity, &[1, 2], 2)).unwrap());
    let sent_at = net.now;
    let request = RequestPayload::Custom { operation: "x".into(), data: Bytes::new() };
    net.node(1).request(sent_at, 20, 2, request, Duration::from_secs(30));
    net.run_for(Duration::from_millis(100));
    let outputs = net.take(1);
    let failed = outputs.iter().find_map(|output| match output {
        TransportOutput::Response { ticket: 20, result } => Some(result.clone()),
        _ => None,
    });
    assert!(matches!(failed, Some(Err(RpcError::ConnectionLost { peer: 2, .. }))), "{outputs:?}");
    // The next message dials the restarted node.
    let now = net.now;
    net.node(1).send_raft(now, 2, Bytes::from_static(b"again"));
    net.run_for(Duration::from_secs(3));
    assert_eq!(raft_from(&net.take(2)), vec![(1, Bytes::from_static(b"again"))]);
}

#[test]
fn a_node_with_a_certificate_from_another_ca_cannot_connect() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    let stranger = DevCa::from_seed([9; 32]).unwrap().identity(3, seed(7, 3)).unwrap();
    net.add(3, Transport::new(config(3, stranger, &[1, 2, 3], 1)).unwrap());
    let now = net.now;
    net.node(3).send_raft(now, 1, Bytes::from_static(b"vote for me"));
    net.run_for(Duration::from_secs(1));
    assert!(raft_from(&net.take(1)).is_empty());
    assert!(!net.node(3).is_connected(1));
    assert!(
        net.take(3)
            .iter()
            .any(|output| matches!(output, TransportOutput::Event(TransportEvent::Lost { peer: 1, .. })))
    );
}

#[test]
fn a_node_claiming_another_id_than_its_certificate_names_is_refused() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    // Node 3 holds a valid certificate of the cluster, for node 3, but
    // claims to be node 2.
    let identity = ca.identity(3, seed(7, 3)).unwrap();
    let impostor = Transport::new(config(2, identity, &[1], 1)).unwrap();
    net.nodes.remove(&2);
    net.add(2, impostor);
    let now = net.now;
    net.node(2).send_raft(now, 1, Bytes::from_static(b"from node 2, honest"));
    net.run_for(Duration::from_secs(1));
    let outputs = net.take(1);
    assert!(raft_from(&outputs).is_empty());
    let reasons = refusals(&outputs);
    assert!(reasons.iter().any(|reason| reason.contains("does not belong to node 2")), "{reasons:?}");
}

#[test]
fn a_peer_announcing_a_4_gib_frame_is_disconnected_without_the_allocation() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    let now = net.now;
    net.node(1).send_raft(now, 2, Bytes::from_static(b"first"));
    net.run_for(Duration::from_millis(100));
    // Bytes a hostile peer could write: a header announcing 4 GiB - 1.
    let hostile = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 6, 1, 2, 3]);
    let now = net.now;
    net.node(1).send_frame(now, 2, hostile).unwrap();
    net.node(1).drive_all(now);
    net.run_for(Duration::from_millis(100));
    let outputs = net.take(2);
    assert_eq!(raft_from(&outputs), vec![(1, Bytes::from_static(b"first"))]);
    let reasons = refusals(&outputs);
    assert!(reasons.iter().any(|reason| reason.contains("exceeds")), "{reasons:?}");
    assert!(
        net.take(1)
            .iter()
            .any(|output| matches!(output, TransportOutput::Event(TransportEvent::Lost { peer: 2, .. })))
    );
}

/// With ring's provider, TLS draws OS randomness, so only the shape of the
/// run is reproducible here; the simulator's seeded provider makes the
/// bytes identical too (bind-sim's tests).
#[test]
fn the_same_seeds_give_the_same_datagram_sizes_and_order() {
    let run = || {
        let ca = ca(1);
        let mut net = Net::new(&ca, &[1, 2, 3]);
        let now = net.now;
        net.node(1).send_raft(now, 2, Bytes::from_static(b"x"));
        net.node(3).send_raft(now, 1, Bytes::from_static(b"y"));
        net.node(2).send_raft(now, 1, Bytes::from_static(b"z"));
        net.run_for(Duration::from_secs(3));
        net.delivered.iter().map(|(from, to, contents)| (*from, *to, contents.len())).collect::<Vec<_>>()
    };
    let first = run();
    assert!(first.len() > 10);
    assert_eq!(first, run());
}
