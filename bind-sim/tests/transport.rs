//! The core's transport, several of them talking over an in-memory datagram
//! network in virtual time: handshakes, identity checks, RPC, reconnects,
//! Shipping Lane transfers. Time comes from the simulator's clock and the
//! TLS randomness from its seeded provider, so a run is a function of its
//! seeds. (Hostile bytes on the wire are tested on real sockets, in the
//! bindings' `hostile_peers` tests.)

mod common;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use octopii_core::transport::chunk::{ChunkSource, FileRead, TransferError, TransferId};
use octopii_core::transport::rpc::{
    OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError,
};
use octopii_core::transport::tls::{DevCa, TlsIdentity};
use octopii_core::transport::{
    Delivery, DeliveryBudget, RAFT_INLINE_BYTES_MAX, Room, Transport, TransportConfig, TransportConfigError,
    TransportEvent, TransportOutput,
};
use std::sync::Arc;

use common::{address, seed};

fn config(node: u64, identity: TlsIdentity, peers: &[u64], run: u8) -> TransportConfig {
    let crypto = octopii_sim::crypto::provider();
    let time = Arc::new(octopii_sim::crypto::SimWallClock);
    let mut config = TransportConfig::new(node, identity, crypto, time, seed(run, node));
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
    /// Datagrams larger than this are lost, as on a path with this MTU.
    path_mtu: usize,
}

impl Net {
    fn new(ca: &DevCa, nodes: &[u64]) -> Self {
        octopii_sim::crypto::reseed(0);
        let mut net = Net {
            now: octopii_sim::time::epoch(),
            nodes: BTreeMap::new(),
            in_flight: VecDeque::new(),
            received: BTreeMap::new(),
            delivered: Vec::new(),
            drop: Box::new(|_, _| false),
            path_mtu: usize::MAX,
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
                let lost = (self.drop)(from, to) || contents.len() > self.path_mtu;
                if let (Some((_, transport)), false) = (target, lost) {
                    self.delivered.push((from, to, contents.clone()));
                    transport.handle_datagrams(self.now, [(from, BytesMut::from(&contents[..]))]);
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

/// Nodes 1 and 2, node 2's configuration changed by `receiver`.
fn net_receiving(ca: &DevCa, receiver: impl FnOnce(&mut TransportConfig)) -> Net {
    let mut net = Net::new(ca, &[1, 2]);
    let mut config = config(2, ca.identity(2, seed(7, 2)).unwrap(), &[1, 2], 1);
    receiver(&mut config);
    net.add(2, Transport::new(config).unwrap());
    net
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

/// The data delivered, with its sender.
fn data_from(outputs: &[TransportOutput]) -> Vec<(u64, Bytes)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            TransportOutput::Delivery(Delivery::Data { from, data }) => Some((*from, data.clone())),
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
    assert!(net.take(2).contains(&TransportOutput::Delivery(Delivery::OneWay {
        from: 1,
        message: OneWayMessage::Heartbeat { node_id: 1, timestamp: 5 }
    })));

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
fn a_client_operation_the_node_does_not_know_is_refused_and_the_node_goes_on() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    let now = net.now;
    let bogus = RequestPayload::Custom { operation: "octopii/bogus".into(), data: Bytes::new() };
    net.node(1).request(now, 20, 2, bogus, Duration::from_secs(1));
    net.run_for(Duration::from_millis(200));
    let mut responses = net.take(1).into_iter().filter_map(|output| match output {
        TransportOutput::Response { ticket, result } => Some((ticket, result.unwrap().payload)),
        _ => None,
    });
    let Some((20, ResponsePayload::CustomResponse { success: false, data })) = responses.next() else {
        panic!("the unknown operation was not refused")
    };
    assert_eq!(
        octopii_core::client::ClientReply::decode(&data).unwrap(),
        octopii_core::client::ClientReply::Unknown("octopii/bogus".into())
    );
    // The connection still carries requests both ways.
    let now = net.now;
    let echo = RequestPayload::Custom { operation: "echo".into(), data: Bytes::new() };
    net.node(2).request(now, 21, 1, echo, Duration::from_secs(1));
    net.run_for(Duration::from_millis(200));
    assert!(
        net.take(2)
            .iter()
            .any(|output| matches!(output, TransportOutput::Response { ticket: 21, result: Ok(_) }))
    );
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

/// With the seeded TLS provider and the transports' own seeds, two runs
/// send the same datagrams, byte for byte.
#[test]
fn the_same_seeds_give_the_same_datagrams() {
    let run = || {
        let ca = ca(1);
        let mut net = Net::new(&ca, &[1, 2, 3]);
        let now = net.now;
        net.node(1).send_raft(now, 2, Bytes::from_static(b"x"));
        net.node(3).send_raft(now, 1, Bytes::from_static(b"y"));
        net.node(2).send_raft(now, 1, Bytes::from_static(b"z"));
        net.run_for(Duration::from_secs(3));
        net.delivered.clone()
    };
    let first = run();
    assert!(first.len() > 10);
    assert_eq!(first, run());
}

/// Serves the transports' file reads from in-memory files, like a binding
/// serves them from disk.
fn serve_reads(net: &mut Net, files: &BTreeMap<std::path::PathBuf, Vec<u8>>) -> bool {
    let mut served = false;
    for node in net.nodes.keys().copied().collect::<Vec<_>>() {
        let outputs = net.take(node);
        let mut rest = Vec::new();
        for output in outputs {
            if let TransportOutput::ReadFile { transfer, path, offset, len } = output {
                let now = net.now;
                net.node(node).handle_file_read(now, transfer, Ok(read_piece(&files[&path], offset, len)));
                served = true;
            } else {
                rest.push(output);
            }
        }
        net.received.entry(node).or_default().extend(rest);
    }
    served
}

/// What a read of `len` bytes at `offset` of `file` gives.
fn read_piece(file: &[u8], offset: u64, len: usize) -> FileRead {
    let start = (offset as usize).min(file.len());
    let end = (start + len).min(file.len());
    FileRead { data: Bytes::copy_from_slice(&file[start..end]), file_len: file.len() as u64 }
}

/// The room of `bytes` of transfer pieces.
fn pieces(bytes: u64) -> Room {
    Room { pieces: bytes, messages: 0 }
}

fn received_body(outputs: &[TransportOutput]) -> Body {
    let mut body = Vec::new();
    let mut result = None;
    for output in outputs {
        match output {
            TransportOutput::Delivery(Delivery::ChunkData { data, .. }) => body.extend_from_slice(data),
            TransportOutput::Delivery(Delivery::ChunkReceived { result: done, .. }) => {
                result = Some(done.clone())
            }
            _ => {}
        }
    }
    (body, result)
}

#[test]
fn a_file_is_sent_piece_by_piece_and_verified() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    let content: Vec<u8> = (0..3_000_000u32).map(|index| (index * 7 % 251) as u8).collect();
    let path = std::path::PathBuf::from("/data/file.bin");
    let files = BTreeMap::from([(path.clone(), content.clone())]);
    let now = net.now;
    net.node(1).send_chunk(now, &[(5, 2)], ChunkSource::File(path));
    let mut outputs_1 = Vec::new();
    let mut outputs_2 = Vec::new();
    for _ in 0..10_000 {
        net.run_for(Duration::from_millis(1));
        serve_reads(&mut net, &files);
        outputs_1.extend(net.take(1));
        outputs_2.extend(net.take(2));
        if outputs_1.iter().any(|output| matches!(output, TransportOutput::ChunkSent { .. })) {
            break;
        }
    }
    let sent = outputs_1.iter().find_map(|output| match output {
        TransportOutput::ChunkSent { ticket: 5, result } => Some(result.clone()),
        _ => None,
    });
    assert_eq!(sent.map(|result| result.map(|report| report.bytes)), Some(Ok(content.len() as u64)));
    let (body, result) = received_body(&outputs_2);
    assert_eq!(result, Some(Ok(content.len() as u64)));
    assert!(body == content, "the body arrived intact");
    assert!(outputs_2.iter().any(|output| matches!(
        output,
        TransportOutput::Delivery(Delivery::ChunkIncoming { from: 1, size: 3_000_000, .. })
    )));
}

#[test]
fn a_large_raft_message_rides_a_transfer_stream() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    let snapshot = Bytes::from(vec![9u8; RAFT_INLINE_BYTES_MAX + 1]);
    let now = net.now;
    net.node(1).send_raft(now, 2, Bytes::from_static(b"small"));
    net.node(1).send_raft(now, 2, snapshot.clone());
    net.run_for(Duration::from_secs(2));
    let outputs = net.take(2);
    let got = raft_from(&outputs);
    assert_eq!(got.len(), 2, "both messages arrive");
    assert_eq!(got[0], (1, Bytes::from_static(b"small")));
    assert!(got[1] == (1, snapshot), "the large message arrives intact");
    assert!(
        outputs
            .iter()
            .all(|output| !matches!(output, TransportOutput::Delivery(Delivery::ChunkIncoming { .. })))
    );
}

#[test]
fn a_transfer_above_the_receivers_limit_is_refused() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1]);
    let identity = ca.identity(2, seed(7, 2)).unwrap();
    let mut small = config(2, identity, &[1, 2], 1);
    small.chunk_bytes_max = 1000;
    net.add(2, Transport::new(small).unwrap());
    let now = net.now;
    net.node(1).update_peer_addr(now, 2, address(2));
    net.node(1).send_chunk(now, &[(8, 2)], ChunkSource::Memory(Bytes::from(vec![1u8; 1001])));
    net.run_for(Duration::from_secs(1));
    let sent = net.take(1).into_iter().find_map(|output| match output {
        TransportOutput::ChunkSent { ticket: 8, result } => Some(result),
        _ => None,
    });
    assert_eq!(sent, Some(Err(TransferError::Refused)));
    let (_, result) = received_body(&net.take(2));
    assert_eq!(result, Some(Err(TransferError::TooLarge { size: 1001, max: 1000 })));
}

fn connected(outputs: &[TransportOutput], ticket: u64) -> Option<Result<u64, RpcError>> {
    outputs.iter().find_map(|output| match output {
        TransportOutput::Connected { ticket: answered, result } if *answered == ticket => {
            Some(result.clone())
        }
        _ => None,
    })
}

#[test]
fn a_node_dialed_by_address_is_known_by_its_certificate_and_hello() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[]);
    for node in [1, 2] {
        let mut config = config(node, ca.identity(node, seed(7, node)).unwrap(), &[], 1);
        config.announce_inbound = true;
        net.add(node, Transport::new(config).unwrap());
    }
    let now = net.now;
    net.node(1).connect(now, 7, address(2));
    net.node(1).connect(now, 8, address(2));
    net.run_for(Duration::from_millis(100));
    let outputs = net.take(1);
    assert_eq!(connected(&outputs, 7), Some(Ok(2)));
    assert_eq!(connected(&outputs, 8), Some(Ok(2)), "a second caller shares the dial");
    assert_eq!(net.node(1).peer_addr(2), Some(address(2)));
    let announced = net.take(2);
    assert!(
        announced.contains(&TransportOutput::Delivery(Delivery::Connected { peer: 1, address: address(1) })),
        "{announced:?}"
    );

    let now = net.now;
    net.node(1).connect(now, 9, address(2));
    net.node(1).send_data(now, 2, Bytes::from_static(b"hello, 2")).unwrap();
    net.run_for(Duration::from_millis(100));
    assert_eq!(connected(&net.take(1), 9), Some(Ok(2)), "answered at once when connected");
    assert!(net.take(2).contains(&TransportOutput::Delivery(Delivery::Data {
        from: 1,
        data: Bytes::from_static(b"hello, 2")
    })));
    let now = net.now;
    net.node(2).send_data(now, 1, Bytes::from_static(b"hello, 1")).unwrap();
    net.run_for(Duration::from_millis(100));
    assert!(net.take(1).contains(&TransportOutput::Delivery(Delivery::Data {
        from: 2,
        data: Bytes::from_static(b"hello, 1")
    })));
    assert_eq!(net.node(1).stats().connections_open, 1);
}

#[test]
fn a_dial_by_address_fails_for_an_impostor_another_ca_or_nobody() {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1]);
    // Node 2 holds the cluster's certificate of node 3 and claims to be 2.
    let impostor = ca.identity(3, seed(7, 3)).unwrap();
    net.add(2, Transport::new(config(2, impostor, &[], 1)).unwrap());
    let stranger = DevCa::from_seed([9; 32]).unwrap().identity(4, seed(7, 4)).unwrap();
    net.add(4, Transport::new(config(4, stranger, &[], 1)).unwrap());
    let now = net.now;
    net.node(1).connect(now, 2, address(2));
    net.node(1).connect(now, 4, address(4));
    net.node(1).connect(now, 5, address(5));
    net.run_for(Duration::from_secs(15));
    let outputs = net.take(1);
    for (ticket, expected) in [(2, "does not belong to node 2"), (4, ""), (5, "")] {
        match connected(&outputs, ticket) {
            Some(Err(RpcError::Unreachable { address: dialed, reason })) => {
                assert_eq!(dialed, address(ticket));
                assert!(reason.contains(expected), "{reason}");
            }
            other => panic!("dial of {} answered {other:?}", address(ticket)),
        }
    }
    assert!(net.node(1).peer_status(2).is_none() && net.node(1).peer_status(3).is_none());
}

/// A receiver that does not take what it was given is not given more:
/// with a 1 MiB delivery budget, an 8 MiB transfer stops after about
/// 1 MiB (the rest waits at the sender, held back by QUIC's flow control)
/// and goes on, whole and verified, as the receiver takes its pieces.
/// Raft's own transfers (large messages, snapshots) are not held back.
#[test]
fn a_receiver_that_does_not_take_its_pieces_holds_back_the_sender() {
    const BUDGET: u64 = 1 << 20;
    let ca = ca(1);
    let mut net = net_receiving(&ca, |receiver| receiver.delivery_budget = DeliveryBudget::Pieces(BUDGET));
    let content: Vec<u8> = (0..8_000_000u32).map(|index| (index * 13 % 251) as u8).collect();
    let now = net.now;
    net.node(1).send_chunk(now, &[(5, 2)], ChunkSource::Memory(Bytes::from(content.clone())));
    let mut outputs_1 = Vec::new();
    let mut outputs_2 = Vec::new();
    net.run_for(Duration::from_secs(2));
    outputs_1.extend(net.take(1));
    outputs_2.extend(net.take(2));
    let (held, result) = received_body(&outputs_2);
    assert_eq!(result, None, "the transfer cannot have finished");
    assert!(!outputs_1.iter().any(|output| matches!(output, TransportOutput::ChunkSent { .. })));
    assert!(
        (BUDGET / 2..=BUDGET).contains(&(held.len() as u64)),
        "{} bytes delivered against a budget of {BUDGET}",
        held.len()
    );
    let snapshot = Bytes::from(vec![9u8; RAFT_INLINE_BYTES_MAX + 1]);
    let now = net.now;
    net.node(1).send_raft(now, 2, snapshot.clone());
    net.node(1).send_raft(now, 2, Bytes::from_static(b"heartbeat"));
    net.run_for(Duration::from_secs(1));
    outputs_1.extend(net.take(1));
    outputs_2.extend(net.take(2));
    let raft = raft_from(&outputs_2);
    assert_eq!(raft.len(), 2, "Raft's messages arrived while the budget was spent");
    assert!(raft.contains(&(1, snapshot)) && raft.contains(&(1, Bytes::from_static(b"heartbeat"))));

    // The reader takes what it holds, a piece at a time, and what follows.
    let mut taken = 0;
    for _ in 0..10_000 {
        let (body, _) = received_body(&outputs_2);
        let now = net.now;
        net.node(2).deliveries_taken(now, pieces((body.len() - taken) as u64));
        taken = body.len();
        net.run_for(Duration::from_millis(5));
        outputs_1.extend(net.take(1));
        outputs_2.extend(net.take(2));
        if outputs_1.iter().any(|output| matches!(output, TransportOutput::ChunkSent { .. })) {
            break;
        }
    }
    let (body, result) = received_body(&outputs_2);
    assert_eq!(result, Some(Ok(content.len() as u64)));
    assert!(body == content, "the body arrived whole and in order");
    let sent = outputs_1.iter().find_map(|output| match output {
        TransportOutput::ChunkSent { ticket: 5, result } => Some(result.clone()),
        _ => None,
    });
    assert!(matches!(sent, Some(Ok(_))), "{sent:?}");
}

/// A receiver that holds bodies whole reads a transfer only once its
/// whole body fits: with a 1 MiB budget, three 600 kB transfers sent at
/// once arrive one at a time, each as the receiver takes the one before.
/// Counting pieces instead, all three would be half read and the budget
/// spent with no body whole. A transfer that failed half way gives its
/// room back.
#[test]
fn a_receiver_holding_whole_bodies_reads_a_transfer_only_when_all_of_it_fits() {
    const BUDGET: u64 = 1 << 20;
    const SIZE: usize = 600_000;
    let ca = ca(1);
    let mut net =
        net_receiving(&ca, |receiver| receiver.delivery_budget = DeliveryBudget::WholeBodies(BUDGET));
    let bodies: Vec<Vec<u8>> =
        (0..3u32).map(|body| (0..SIZE as u32).map(|index| (index * 7 + body) as u8).collect()).collect();
    let now = net.now;
    for (ticket, body) in (5..).zip(&bodies) {
        net.node(1).send_chunk(now, &[(ticket, 2)], ChunkSource::Memory(Bytes::from(body.clone())));
    }
    // Each round: run, and check that exactly `done` bodies have arrived,
    // whole, and no piece of the others.
    let mut outputs_1 = Vec::new();
    let mut outputs_2 = Vec::new();
    for done in 1..=3 {
        net.run_for(Duration::from_secs(2));
        outputs_1.extend(net.take(1));
        outputs_2.extend(net.take(2));
        let received = bodies_by_transfer(&outputs_2);
        assert_eq!(received.len(), 3, "every header is read");
        let finished: Vec<&Body> = received.values().filter(|(_, result)| result.is_some()).collect();
        assert_eq!(finished.len(), done, "bodies arrived");
        for (body, result) in &finished {
            assert_eq!(*result, Some(Ok(SIZE as u64)));
            assert!(bodies.contains(body), "a body arrived whole and in order");
        }
        assert!(
            received.values().all(|(body, result)| result.is_some() || body.is_empty()),
            "a transfer that did not fit was read"
        );
        let sent = outputs_1.iter().filter(|output| matches!(output, TransportOutput::ChunkSent { .. }));
        assert_eq!(sent.count(), done);
        // The application takes the body that arrived last.
        let now = net.now;
        net.node(2).deliveries_taken(now, pieces(SIZE as u64));
    }

    // A body cut short by its sender frees its room: the sender goes away
    // half way through a body of the whole budget, and the next body
    // still fits once the application drops the half it was given.
    let mut outputs_2 = Vec::new();
    let now = net.now;
    net.node(1).send_chunk(now, &[(8, 2)], ChunkSource::Memory(Bytes::from(vec![1; BUDGET as usize])));
    for _ in 0..1000 {
        net.run_for(Duration::from_millis(1));
        outputs_2.extend(net.take(2));
        if received_body(&outputs_2).0.len() >= BUDGET as usize / 2 {
            break;
        }
    }
    let now = net.now;
    net.node(1).shutdown(now);
    net.run_for(Duration::from_secs(1));
    outputs_2.extend(net.take(2));
    let (half, result) = received_body(&outputs_2);
    assert!(matches!(result, Some(Err(TransferError::Interrupted(_)))), "{result:?}");
    assert!(half.len() < BUDGET as usize);
    let now = net.now;
    net.node(2).deliveries_taken(now, pieces(half.len() as u64));
    let identity = ca.identity(1, seed(8, 1)).unwrap();
    net.add(1, Transport::new(config(1, identity, &[1, 2], 2)).unwrap());
    let now = net.now;
    net.node(1).send_chunk(now, &[(9, 2)], ChunkSource::Memory(Bytes::from(vec![2; BUDGET as usize])));
    net.run_for(Duration::from_secs(3));
    let sent = net.take(1).into_iter().find_map(|output| match output {
        TransportOutput::ChunkSent { ticket: 9, result } => Some(result),
        _ => None,
    });
    assert!(matches!(sent, Some(Ok(_))), "{sent:?}");
}

/// What arrived of an incoming transfer, and its outcome once it ended.
type Body = (Vec<u8>, Option<Result<u64, TransferError>>);

/// Each incoming transfer's body and outcome.
fn bodies_by_transfer(outputs: &[TransportOutput]) -> BTreeMap<TransferId, Body> {
    let mut transfers = BTreeMap::new();
    for output in outputs {
        match output {
            TransportOutput::Delivery(Delivery::ChunkIncoming { transfer, .. }) => {
                transfers.insert(*transfer, (Vec::new(), None));
            }
            TransportOutput::Delivery(Delivery::ChunkData { transfer, data }) => {
                transfers.entry(*transfer).or_default().0.extend_from_slice(data);
            }
            TransportOutput::Delivery(Delivery::ChunkReceived { transfer, result }) => {
                transfers.entry(*transfer).or_default().1 = Some(result.clone());
            }
            _ => {}
        }
    }
    transfers
}

/// A message larger than the whole budget (here none at all) still arrives
/// when nothing else waits: a stream paused with nothing to take would
/// never resume. The next one waits until it is taken.
#[test]
fn a_message_larger_than_the_budget_arrives_alone() {
    let ca = ca(1);
    let mut net = net_receiving(&ca, |receiver| receiver.delivery_budget = DeliveryBudget::Pieces(0));
    let (first, second) = (Bytes::from(vec![1; 100_000]), Bytes::from(vec![2; 100_000]));
    let now = net.now;
    net.node(1).send_data(now, 2, first.clone()).unwrap();
    net.node(1).send_data(now, 2, second.clone()).unwrap();
    net.run_for(Duration::from_secs(2));
    assert_eq!(data_from(&net.take(2)), [(1, first.clone())]);
    let now = net.now;
    let room = Delivery::Data { from: 1, data: first }.room();
    net.node(2).deliveries_taken(now, room);
    net.run_for(Duration::from_secs(1));
    assert_eq!(data_from(&net.take(2)), [(1, second)]);
}

/// A node whose application reads nothing from peers drops their data
/// and one-way messages and refuses their transfers, so they neither fill
/// memory nor, by filling the delivery budget, hold back Raft.
#[test]
fn a_node_without_application_deliveries_drops_them_and_raft_goes_on() {
    let ca = ca(1);
    let mut net = net_receiving(&ca, |receiver| {
        receiver.application_deliveries = false;
        receiver.delivery_budget = DeliveryBudget::Pieces(1024);
    });
    let now = net.now;
    for _ in 0..10 {
        net.node(1).send_data(now, 2, Bytes::from(vec![1; 4096])).unwrap();
        let message = OneWayMessage::Custom { operation: "note".into(), data: Bytes::from(vec![2; 4096]) };
        net.node(1).send_one_way(now, 2, message).unwrap();
    }
    net.node(1).send_chunk(now, &[(5, 2)], ChunkSource::Memory(Bytes::from(vec![3; 10_000])));
    net.node(1).send_raft(now, 2, Bytes::from_static(b"append"));
    net.run_for(Duration::from_secs(2));
    let outputs = net.take(2);
    assert!(
        !outputs.iter().any(|output| matches!(output, TransportOutput::Delivery(_))),
        "something was delivered"
    );
    assert_eq!(raft_from(&outputs), vec![(1, Bytes::from_static(b"append"))]);
    assert_eq!(net.node(2).stats().messages_dropped, 20);
    let sent = net.take(1).into_iter().find_map(|output| match output {
        TransportOutput::ChunkSent { ticket: 5, result } => Some(result),
        _ => None,
    });
    assert!(matches!(sent, Some(Err(TransferError::Refused))), "{sent:?}");
}

/// Messages count against the delivery budget too: a receiver that does
/// not take the data it was given is not given more (the rest waits at the
/// sender, in QUIC), and gets all of it, in order, as it takes it. The
/// peer's Raft messages ride the same stream and wait behind them.
#[test]
fn a_receiver_that_does_not_take_its_messages_holds_back_the_sender() {
    const BUDGET: u64 = 32 * 1024;
    const MESSAGES: usize = 64;
    let ca = ca(1);
    let mut net = net_receiving(&ca, |receiver| receiver.delivery_budget = DeliveryBudget::Pieces(BUDGET));
    let sent: Vec<Bytes> = (0..MESSAGES).map(|index| Bytes::from(vec![index as u8; 4096])).collect();
    let now = net.now;
    for data in &sent {
        net.node(1).send_data(now, 2, data.clone()).unwrap();
    }
    net.node(1).send_raft(now, 2, Bytes::from_static(b"append"));
    net.run_for(Duration::from_secs(2));
    let mut outputs = net.take(2);
    // The room a message takes, as the receiver reports it taken.
    let room =
        |(from, data): &(u64, Bytes)| Delivery::Data { from: *from, data: data.clone() }.room().messages;
    let held = data_from(&outputs);
    let held_bytes: u64 = held.iter().map(room).sum();
    // At most one message past the budget: the one whose start was read
    // while there was room.
    let most = BUDGET + room(&held[0]);
    assert!(!held.is_empty() && held_bytes <= most, "{held_bytes} bytes delivered against {BUDGET}");
    assert!(raft_from(&outputs).is_empty(), "the Raft message came past the unread data");

    // The reader takes what it holds, and what follows.
    let mut taken = 0;
    for _ in 0..1000 {
        let delivered = data_from(&outputs);
        let messages = delivered[taken..].iter().map(room).sum();
        taken = delivered.len();
        let now = net.now;
        net.node(2).deliveries_taken(now, Room { pieces: 0, messages });
        net.run_for(Duration::from_millis(5));
        outputs.extend(net.take(2));
        if taken == MESSAGES {
            break;
        }
    }
    let received = data_from(&outputs);
    assert!(received.iter().all(|(from, _)| *from == 1), "data from another node");
    let received: Vec<Bytes> = received.into_iter().map(|(_, data)| data).collect();
    assert!(received == sent, "every message arrived, in order");
    assert_eq!(raft_from(&outputs), vec![(1, Bytes::from_static(b"append"))]);
}

#[test]
fn an_mtu_bound_outside_what_udp_carries_is_refused() {
    let ca = ca(1);
    for bound in [0, 1199, 65_528] {
        let mut config = config(1, ca.identity(1, seed(1, 1)).unwrap(), &[], 1);
        config.mtu_max = bound;
        let error = Transport::new(config).unwrap_err();
        assert!(matches!(&error, TransportConfigError::Invalid { field: "mtu_max", .. }), "{bound}: {error}");
    }
    for bound in [1200, 65_527] {
        let mut config = config(1, ca.identity(1, seed(1, 1)).unwrap(), &[], 1);
        config.mtu_max = bound;
        assert!(Transport::new(config).is_ok(), "{bound}");
    }
}

/// Node 1 sends one file to nodes 2 and 3 with one call. The first
/// transfer's reads are served from `first`; the second's from `second`,
/// and, with `second_waits`, only once the first has ended (so it starts
/// after the whole body has been hashed).
fn send_to_two(first: &[u8], second: &[u8], second_waits: bool) -> TwoPeerRun {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2, 3]);
    let path = std::path::PathBuf::from("/data/file.bin");
    let now = net.now;
    net.node(1).send_chunk(now, &[(5, 2), (6, 3)], ChunkSource::File(path));
    let mut first_transfer = None;
    let mut held = Vec::new();
    let mut outcomes = BTreeMap::new();
    let (mut outputs_2, mut outputs_3) = (Vec::new(), Vec::new());
    for _ in 0..20_000 {
        net.run_for(Duration::from_millis(1));
        let mut rest = Vec::new();
        for output in net.take(1) {
            match output {
                TransportOutput::ReadFile { transfer, offset, len, .. } => {
                    let is_first = *first_transfer.get_or_insert(transfer) == transfer;
                    let file = if is_first { first } else { second };
                    if !is_first && second_waits && !outcomes.contains_key(&5) {
                        held.push((transfer, offset, len));
                        continue;
                    }
                    let now = net.now;
                    net.node(1).handle_file_read(now, transfer, Ok(read_piece(file, offset, len)));
                }
                TransportOutput::ChunkSent { ticket, result } => {
                    outcomes.insert(ticket, result.map(|report| report.bytes));
                }
                other => rest.push(other),
            }
        }
        if outcomes.contains_key(&5) {
            for (transfer, offset, len) in held.drain(..) {
                let now = net.now;
                net.node(1).handle_file_read(now, transfer, Ok(read_piece(second, offset, len)));
            }
        }
        net.received.entry(1).or_default().extend(rest);
        outputs_2.extend(net.take(2));
        outputs_3.extend(net.take(3));
        if outcomes.len() == 2 {
            break;
        }
    }
    TwoPeerRun {
        outcomes,
        body_2: received_body(&outputs_2).0,
        body_3: received_body(&outputs_3).0,
        hashed: net.nodes[&1].stats().chunk_bytes_hashed,
    }
}

/// What [`send_to_two`] saw.
struct TwoPeerRun {
    /// Each ticket's outcome (5: to node 2, 6: to node 3).
    outcomes: BTreeMap<u64, Result<u64, TransferError>>,
    body_2: Vec<u8>,
    body_3: Vec<u8>,
    /// Body bytes node 1 hashed.
    hashed: u64,
}

#[test]
fn a_file_sent_to_two_peers_at_once_is_hashed_once_and_verified_by_both() {
    let content: Vec<u8> = (0..1_000_000u32).map(|index| (index * 13 % 251) as u8).collect();
    let size = content.len() as u64;
    for second_waits in [false, true] {
        let TwoPeerRun { outcomes, body_2, body_3, hashed } = send_to_two(&content, &content, second_waits);
        assert_eq!(outcomes, BTreeMap::from([(5, Ok(size)), (6, Ok(size))]), "second waits: {second_waits}");
        assert!(body_2 == content && body_3 == content, "both bodies arrived intact");
        assert_eq!(hashed, size, "the body was hashed once (second waits: {second_waits})");
    }
}

#[test]
fn a_file_that_changes_between_two_peers_reads_fails_the_later_transfer() {
    let content: Vec<u8> = (0..300_000u32).map(|index| (index * 13 % 251) as u8).collect();
    let size = content.len() as u64;
    // Same length, other bytes: the shared digest is the first reading's,
    // so the second receiver refuses what it got.
    let mut rewritten = content.clone();
    rewritten[200_000] ^= 0xFF;
    let TwoPeerRun { outcomes, body_2, .. } = send_to_two(&content, &rewritten, true);
    assert_eq!(outcomes[&5], Ok(size));
    assert!(body_2 == content);
    assert_eq!(outcomes[&6], Err(TransferError::ChecksumMismatch));
    // Another length: the second transfer stops at its first read.
    let TwoPeerRun { outcomes, .. } = send_to_two(&content, &content[..100_000], true);
    assert_eq!(outcomes[&5], Ok(size));
    assert_eq!(outcomes[&6], Err(TransferError::SourceChanged { expected: size }));
}

/// Sends 3 MB from node 1 to node 2 over a path that carries datagrams of
/// at most `path_mtu` bytes; the UDP payload size node 1 uses a second
/// later.
fn transfer_over_path(path_mtu: usize) -> u16 {
    let ca = ca(1);
    let mut net = Net::new(&ca, &[1, 2]);
    net.path_mtu = path_mtu;
    let content: Vec<u8> = (0..3_000_000u32).map(|index| (index * 7 % 251) as u8).collect();
    let now = net.now;
    net.node(1).send_chunk(now, &[(5, 2)], ChunkSource::Memory(Bytes::from(content.clone())));
    let (mut outputs_1, mut outputs_2) = (Vec::new(), Vec::new());
    for _ in 0..20_000 {
        net.run_for(Duration::from_millis(1));
        outputs_1.extend(net.take(1));
        outputs_2.extend(net.take(2));
        if outputs_1.iter().any(|output| matches!(output, TransportOutput::ChunkSent { .. })) {
            break;
        }
    }
    let sent = outputs_1.iter().find_map(|output| match output {
        TransportOutput::ChunkSent { result, .. } => Some(result.clone().map(|report| report.bytes)),
        _ => None,
    });
    assert_eq!(sent, Some(Ok(content.len() as u64)), "path MTU {path_mtu}");
    let (body, received) = received_body(&outputs_2);
    assert_eq!(received, Some(Ok(content.len() as u64)));
    assert!(body == content, "path MTU {path_mtu}: the body arrived intact");
    // Discovery goes on after the transfer: each probe the path drops is
    // sent three times before a smaller size is tried.
    net.run_for(Duration::from_secs(1));
    net.node(1).peer_status(2).and_then(|status| status.link).expect("node 1 is connected to node 2").mtu
}

#[test]
fn mtu_discovery_finds_what_the_path_carries_and_never_exceeds_it() {
    // Nothing in the way: up to the configured bound.
    let bound = config(1, ca(1).identity(1, seed(1, 1)).unwrap(), &[], 1).mtu_max;
    assert_eq!(transfer_over_path(usize::MAX), bound);
    // Ethernet: larger probes are lost, the transfer goes on unharmed at
    // the sizes that pass, and discovery settles at the path's limit.
    assert_eq!(transfer_over_path(1500), 1500);
    // A path that carries only the QUIC minimum.
    assert_eq!(transfer_over_path(1200), 1200);
}
