//! Hostile peers against nodes on the blocking loop, over real UDP sockets
//! on 127.0.0.1: a node whose certificate another CA issued, and a client
//! with a valid certificate writing frames and transfers no node would
//! write. Its own test binary, so that the memory it measures is not that
//! of the gigabyte transfer in quic_cluster.rs.

mod cluster;
mod hostile;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii_core::transport::chunk::{ChunkSource, TransferError};
use octopii_core::transport::frame::{FRAME_BYTES_MAX, Frame};
use octopii_core::transport::rpc::{
    OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError,
};
use octopii_core::{Command, Reply};
use octopii_mio::Node;
use octopii_mio::driver::Delivery;
use sha2::{Digest, Sha256};

use cluster::{Cluster, WAIT};
use hostile::{HostilePeer, PEAK_GROWTH_MAX, RESIDENT_GROWTH_MAX, process_memory_bytes};

/// quinn's runtime for the hostile peer; its one worker drives the peer's
/// connection between the test's `block_on` calls.
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// Runs `command`, failing the test if it is not answered within twice
/// [`WAIT`] (requests in these tests time out after [`WAIT`]).
fn call(node: &Node, command: Command) -> Reply {
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    node.submit(command, Box::new(move |result| drop(reply.send(result)))).unwrap();
    answer.recv_timeout(2 * WAIT).expect("command not answered")
}

fn custom_request(operation: &str) -> RequestPayload {
    RequestPayload::Custom { operation: operation.into(), data: Bytes::from_static(b"payload") }
}

/// Node 1 answers every request and remembers who sent it.
fn record_requests(node: &Node) -> Arc<Mutex<Vec<u64>>> {
    let senders = Arc::new(Mutex::new(Vec::new()));
    let recorded = senders.clone();
    node.set_request_handler(RequestHandler::new(move |request| {
        recorded.lock().unwrap().push(request.from);
        ResponsePayload::CustomResponse { success: true, data: Bytes::new() }
    }))
    .unwrap();
    senders
}

/// The honest nodes still agree on a new command, and node 2 still reaches
/// node 1 by RPC.
fn assert_cluster_serves(cluster: &Cluster, key: &str) {
    assert_eq!(cluster.propose(&format!("SET {key} 1")), Bytes::from_static(b"OK"));
    cluster.read_everywhere(key, "1");
    let request = Command::Request { to: 1, payload: custom_request("honest"), timeout: WAIT };
    let reply = call(&cluster.nodes[&2], request);
    assert!(matches!(reply, Reply::Response(Ok(_))), "node 2 no longer reaches node 1: {reply:?}");
}

#[test]
fn a_node_with_a_certificate_of_another_ca_gets_nothing_delivered() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let requests_seen = record_requests(&cluster.nodes[&1]);
    let strangers = hostile::stranger_identities(&cluster.ca, 3);
    for (index, (what, identity)) in strangers.into_iter().enumerate() {
        // The stranger claims to be voter 3: its replica campaigns and sends
        // Raft messages to nodes 1 and 2 by itself.
        let mut options = cluster.options(3, &[1, 2, 3]);
        options.transport.identity = identity;
        options.data_dir = cluster.dir.path().join(format!("stranger-{index}"));
        std::fs::create_dir_all(&options.data_dir).unwrap();
        let stranger = Node::start(options).unwrap();
        for peer in [1, 2] {
            let address = cluster.nodes[&peer].local_addr();
            assert_eq!(call(&stranger, Command::UpdatePeerAddr { node: peer, address }), Reply::Sent(Ok(())));
        }

        // Queued frames are accepted locally (they wait for the handshake);
        // what matters is that none arrives.
        let message = OneWayMessage::Custom { operation: "stranger".into(), data: Bytes::new() };
        let one_way = call(&stranger, Command::SendOneWay { to: 1, message });
        assert!(matches!(one_way, Reply::Sent(_)), "{what}: {one_way:?}");
        let data = call(&stranger, Command::SendData { to: 1, data: Bytes::from_static(b"stranger") });
        assert!(matches!(data, Reply::Sent(_)), "{what}: {data:?}");
        let source = ChunkSource::Memory(Bytes::from(vec![7; 100_000]));
        let chunk = call(&stranger, Command::SendChunk { to: 1, source });
        assert!(matches!(chunk, Reply::ChunkSent(Err(_))), "{what}: {chunk:?}");
        let request =
            call(&stranger, Command::Request { to: 1, payload: custom_request("stranger"), timeout: WAIT });
        assert!(
            matches!(request, Reply::Response(Err(RpcError::ConnectionLost { peer: 1, .. }))),
            "{what}: {request:?}"
        );

        // What an honest peer sends next is node 1's first delivery.
        let marker =
            OneWayMessage::Custom { operation: "marker".into(), data: Bytes::from(vec![index as u8]) };
        let sent = call(&cluster.nodes[&2], Command::SendOneWay { to: 1, message: marker.clone() });
        assert_eq!(sent, Reply::Sent(Ok(())));
        assert_eq!(
            cluster.nodes[&1].recv_delivery(WAIT),
            Some(Delivery::OneWay { from: 2, message: marker }),
            "{what}"
        );
        // The stranger is still campaigning.
        assert_cluster_serves(&cluster, &format!("stranger{index}"));
        stranger.shutdown();
    }
    assert_eq!(*requests_seen.lock().unwrap(), [2, 2], "node 1 answered a stranger");
}

/// Hostile bytes after a valid hello on the message stream: each must close
/// the connection with the protocol code, and none may make the node
/// allocate what it announces.
#[test]
fn a_four_gib_length_prefix_closes_the_connection_without_allocating_it() {
    let length_above_max = u32::try_from(FRAME_BYTES_MAX + 1).unwrap().to_be_bytes();
    let cases: [(&str, Vec<u8>); 5] = [
        ("a 4 GiB length prefix", hostile::four_gib_frame()),
        ("a length one above FRAME_BYTES_MAX", [&length_above_max[..], &[6], &[0x5a; 64]].concat()),
        ("an unknown kind", vec![0, 0, 0, 1, 0xff, 0]),
        ("a second hello", Frame::Hello { node_id: 9 }.encode().to_vec()),
        ("a request body that does not decode", [&[0, 0, 0, 11, 3][..], &[0; 8], &[0xff; 3]].concat()),
    ];
    let cluster = Cluster::new(&[1, 2]);
    let runtime = runtime();
    let identity = cluster.ca.identity(9, [9; 32]).unwrap();
    let address = cluster.nodes[&1].local_addr();
    for (what, bytes) in cases {
        let mut peer = runtime.block_on(HostilePeer::connect(&identity, 9, 1, address));
        let resident_before = process_memory_bytes("VmRSS");
        let peak_before = process_memory_bytes("VmPeak");
        let started = Instant::now();
        let error = runtime.block_on(async {
            // The node may close before it has taken every byte.
            let _ = peer.write_messages(&bytes).await;
            peer.closed().await
        });
        let elapsed = started.elapsed();
        let resident_growth = process_memory_bytes("VmRSS").saturating_sub(resident_before);
        let peak_growth = process_memory_bytes("VmPeak").saturating_sub(peak_before);
        eprintln!("{what}: closed in {elapsed:?}, resident +{resident_growth} B, peak +{peak_growth} B");
        hostile::assert_closed_for_protocol(&error);
        assert!(resident_growth < RESIDENT_GROWTH_MAX, "{what}: resident memory grew by {resident_growth} B");
        assert!(peak_growth < PEAK_GROWTH_MAX, "{what}: address space peaked {peak_growth} B higher");
    }
    assert_cluster_serves(&cluster, "after");
    assert_eq!(cluster.nodes[&1].recv_delivery(Duration::ZERO), None, "hostile bytes were delivered");
}

/// A transfer whose body was corrupted on the way: the status byte says
/// checksum mismatch, and the node reports it. The same transfer intact
/// first, so the mismatch is the body's and not the framing's.
#[test]
fn a_corrupted_transfer_body_is_reported_as_a_checksum_mismatch() {
    let body: Vec<u8> = (0..100_000u32).map(|index| (index * 7) as u8).collect();
    let digest: [u8; 32] = Sha256::digest(&body).into();
    let mut corrupted = body.clone();
    corrupted[50_000] ^= 1;
    let size = body.len() as u64;
    let cases =
        [("intact", body, 0, Ok(size)), ("corrupted", corrupted, 1, Err(TransferError::ChecksumMismatch))];
    let cluster = Cluster::new(&[1, 2]);
    let runtime = runtime();
    let identity = cluster.ca.identity(9, [9; 32]).unwrap();
    let node = &cluster.nodes[&1];
    let peer = runtime.block_on(HostilePeer::connect(&identity, 9, 1, node.local_addr()));
    for (what, sent, status, result) in cases {
        assert_eq!(runtime.block_on(peer.transfer(&sent, digest)), [status], "{what}: status byte");
        let mut received = Vec::new();
        let Some(Delivery::ChunkIncoming { from: 9, transfer, size: announced }) = node.recv_delivery(WAIT)
        else {
            panic!("{what}: no transfer announced")
        };
        assert_eq!(announced, size, "{what}");
        loop {
            match node.recv_delivery(WAIT).expect("transfer stalled") {
                Delivery::ChunkData { transfer: of, data } if of == transfer => {
                    received.extend_from_slice(&data)
                }
                Delivery::ChunkReceived { transfer: of, result: reported } if of == transfer => {
                    assert_eq!(reported, result, "{what}");
                    break;
                }
                other => panic!("{what}: unexpected delivery {other:?}"),
            }
        }
        assert!(received == sent, "{what}: other bytes delivered");
    }
    runtime.block_on(peer.close());
    assert_cluster_serves(&cluster, "after");
}

/// A transfer under way when the node closes the connection for a breach
/// of the protocol is reported failed. It was left unanswered, its room in
/// the delivery budget held for good: only connections the peer closed
/// failed their transfers.
#[test]
fn a_transfer_cut_short_by_the_node_closing_the_connection_is_reported() {
    let cluster = Cluster::new(&[1, 2]);
    let runtime = runtime();
    let identity = cluster.ca.identity(9, [9; 32]).unwrap();
    let node = &cluster.nodes[&1];
    let mut peer = runtime.block_on(HostilePeer::connect(&identity, 9, 1, node.local_addr()));
    let _streams = runtime.block_on(peer.begin_transfer(1 << 20, &[7; 1000]));
    let Some(Delivery::ChunkIncoming { from: 9, transfer, .. }) = node.recv_delivery(WAIT) else {
        panic!("no transfer announced")
    };
    let _ = runtime.block_on(peer.write_messages(&Frame::Hello { node_id: 9 }.encode()));
    hostile::assert_closed_for_protocol(&runtime.block_on(peer.closed()));
    loop {
        match node.recv_delivery(WAIT).expect("the cut transfer was not reported") {
            Delivery::ChunkData { transfer: of, .. } if of == transfer => {}
            Delivery::ChunkReceived { transfer: of, result } if of == transfer => {
                assert!(matches!(result, Err(TransferError::Interrupted(_))), "{result:?}");
                break;
            }
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    assert_cluster_serves(&cluster, "after");
}

/// A sender may stop reading the status of its own transfer (quinn does so
/// for a stream dropped unread): the transfer still lands and the
/// connection stays up. The node used to close the whole connection.
#[test]
fn a_sender_that_stops_reading_its_status_keeps_its_connection() {
    let body = b"body".to_vec();
    let digest: [u8; 32] = Sha256::digest(&body).into();
    let cluster = Cluster::new(&[1, 2]);
    let runtime = runtime();
    let identity = cluster.ca.identity(9, [9; 32]).unwrap();
    let node = &cluster.nodes[&1];
    let peer = runtime.block_on(HostilePeer::connect(&identity, 9, 1, node.local_addr()));
    runtime.block_on(peer.transfer_ignoring_status(&body, digest));
    let mut received = Vec::new();
    loop {
        match node.recv_delivery(WAIT).expect("transfer stalled") {
            Delivery::ChunkIncoming { .. } => {}
            Delivery::ChunkData { data, .. } => received.extend_from_slice(&data),
            Delivery::ChunkReceived { result, .. } => {
                assert_eq!(result, Ok(body.len() as u64));
                break;
            }
            other => panic!("unexpected delivery {other:?}"),
        }
    }
    assert_eq!(received, body);
    // The same connection still carries a transfer, answered with status 0.
    assert_eq!(runtime.block_on(peer.transfer(&body, digest)), [0]);
    assert!(!peer.is_closed(), "the node closed the connection");
    runtime.block_on(peer.close());
    assert_cluster_serves(&cluster, "after");
}
