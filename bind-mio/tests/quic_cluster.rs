//! Three nodes on the blocking loop, talking QUIC over real UDP sockets on
//! 127.0.0.1: election, replication, a leader killed and restarted, RPC.

mod cluster;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii_core::transport::PeerStatus;
use octopii_core::transport::rpc::{
    OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError,
};
use octopii_core::{Command, Reply};
use octopii_mio::driver::Delivery;

use cluster::{Cluster, WAIT};

fn data_dir_exists(path: &Path) -> bool {
    path.join("LOCK").exists() || path.exists()
}

#[test]
fn a_three_node_cluster_elects_replicates_and_survives_a_leader_restart() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    assert_eq!(cluster.propose("SET a 1"), Bytes::from_static(b"OK"));
    cluster.read_everywhere("a", "1");

    let old_leader = cluster.leader();
    cluster.nodes.remove(&old_leader).unwrap().shutdown();
    assert_eq!(cluster.propose("SET b 2"), Bytes::from_static(b"OK"));
    assert_ne!(cluster.leader(), old_leader);

    // The old leader comes back on a new port, from its own log.
    assert!(data_dir_exists(&cluster.dir.path().join(format!("node-{old_leader}"))));
    cluster.start(old_leader, &[1, 2, 3]);
    cluster.exchange_addresses();
    cluster.read_everywhere("a", "1");
    cluster.read_everywhere("b", "2");
    assert_eq!(cluster.propose("SET c 3"), Bytes::from_static(b"OK"));
    cluster.read_everywhere("c", "3");
}

#[test]
fn rpc_requests_one_way_messages_and_timeouts_between_nodes() {
    let cluster = Cluster::new(&[1, 2]);
    cluster.nodes[&2]
        .set_request_handler(RequestHandler::new(|request| match request.payload {
            RequestPayload::Custom { operation, data } if operation == "upper" => {
                ResponsePayload::CustomResponse {
                    success: true,
                    data: Bytes::from(data.to_ascii_uppercase()),
                }
            }
            RequestPayload::Custom { operation, .. } if operation == "sleep" => {
                std::thread::sleep(Duration::from_millis(400));
                ResponsePayload::CustomResponse { success: true, data: Bytes::new() }
            }
            _ => ResponsePayload::Error { message: "unknown".into() },
        }))
        .unwrap();
    let request = |operation: &str, timeout: Duration| {
        let payload =
            RequestPayload::Custom { operation: operation.into(), data: Bytes::from_static(b"quic") };
        cluster.nodes[&1].call(Command::Request { to: 2, payload, timeout }).unwrap()
    };
    let Reply::Response(Ok(response)) = request("upper", WAIT) else { panic!("no response") };
    assert_eq!(
        response.payload,
        ResponsePayload::CustomResponse { success: true, data: Bytes::from_static(b"QUIC") }
    );
    assert_eq!(
        request("sleep", Duration::from_millis(100)),
        Reply::Response(Err(RpcError::TimedOut { timeout_ms: 100 }))
    );

    let message = OneWayMessage::Custom { operation: "note".into(), data: Bytes::from_static(b"hi") };
    let sent = cluster.nodes[&1].call(Command::SendOneWay { to: 2, message: message.clone() }).unwrap();
    assert_eq!(sent, Reply::Sent(Ok(())));
    assert_eq!(cluster.nodes[&2].recv_delivery(WAIT), Some(Delivery::OneWay { from: 1, message }));

    let unknown = cluster.nodes[&1].call(Command::SendData { to: 9, data: Bytes::new() }).unwrap();
    assert_eq!(unknown, Reply::Sent(Err(RpcError::UnknownPeer(9))));
}

/// Sends `path` to `to` from `from`; the receiver hashes what arrives as it
/// arrives (never holding the body) and the digest is compared with the
/// file's.
#[test]
fn a_one_gib_file_reaches_two_peers_verified_by_sha256() {
    use octopii_core::transport::chunk::ChunkSource;
    use sha2::{Digest, Sha256};
    use std::io::Write;

    let cluster = Cluster::new(&[1, 2, 3]);
    let size: u64 =
        std::env::var("OCTOPII_TRANSFER_BYTES").ok().and_then(|bytes| bytes.parse().ok()).unwrap_or(1 << 30);
    let path = cluster.dir.path().join("payload.bin");
    let mut expected = Sha256::new();
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        let mut block = vec![0u8; 1 << 20];
        for index in 0..size.div_ceil(block.len() as u64) {
            for (offset, byte) in block.iter_mut().enumerate() {
                *byte = (index as usize * 31 + offset * 7) as u8;
            }
            let take = (size - index * block.len() as u64).min(block.len() as u64) as usize;
            file.write_all(&block[..take]).unwrap();
            expected.update(&block[..take]);
        }
    }
    let expected = expected.finalize();

    let started = Instant::now();
    let (reply, answer) = std::sync::mpsc::sync_channel(1);
    let command = Command::SendChunkToMany { to: vec![2, 3], source: ChunkSource::File(path.clone()) };
    cluster.nodes[&1].submit(command, Box::new(move |result| drop(reply.send(result)))).unwrap();
    let mut digests = BTreeMap::new();
    for peer in [2u64, 3] {
        let node = &cluster.nodes[&peer];
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        loop {
            match node.recv_delivery(WAIT).expect("transfer stalled") {
                Delivery::ChunkIncoming { from, size: announced, .. } => {
                    assert_eq!((from, announced), (1, size));
                }
                Delivery::ChunkData { data, .. } => {
                    received += data.len() as u64;
                    hasher.update(&data);
                }
                Delivery::ChunkReceived { result, .. } => {
                    assert_eq!(result, Ok(size));
                    break;
                }
                other => panic!("unexpected delivery {other:?}"),
            }
        }
        assert_eq!(received, size);
        digests.insert(peer, hasher.finalize());
    }
    let Reply::ChunksSent(outcomes) = answer.recv_timeout(WAIT).unwrap() else { panic!("another reply") };
    assert_eq!(outcomes.iter().map(|(peer, _)| *peer).collect::<Vec<_>>(), [2, 3]);
    for (peer, outcome) in outcomes {
        assert_eq!(outcome.map(|report| report.bytes), Ok(size), "transfer to {peer}");
        assert!(digests[&peer] == expected, "node {peer} received other bytes");
        // Loopback carries 64 KiB datagrams: MTU discovery goes past
        // Ethernet's 1472 bytes to the configured bound. Several datagrams
        // of that size still travel in one GSO send only up to one UDP
        // payload; a larger send would be refused whole, and the losses
        // would drive the MTU back to 1200.
        let Reply::Peer(Some(PeerStatus { link: Some(link), .. })) =
            cluster.nodes[&1].call(Command::PeerStatus(peer)).unwrap()
        else {
            panic!("node 1 has no connection to {peer}")
        };
        eprintln!("link 1 -> {peer}: MTU {}, {} packets lost", link.mtu, link.lost_packets);
        assert!(link.mtu > 1472, "link 1 -> {peer} stayed at MTU {}", link.mtu);
    }
    let elapsed = started.elapsed();
    eprintln!(
        "sent {} MiB to two peers in {:.2?} ({:.0} MiB/s per peer)",
        size >> 20,
        elapsed,
        (size >> 20) as f64 / elapsed.as_secs_f64()
    );
}
