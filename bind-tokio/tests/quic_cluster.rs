//! Three nodes on tokio tasks, talking QUIC over real UDP sockets on
//! 127.0.0.1: election, replication, a leader killed and restarted, RPC.

mod cluster;

use std::time::Duration;

use bytes::Bytes;
use octopii::{Delivery, NodeLoop, OctopiiError};
use octopii_core::transport::rpc::{
    OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError,
};
use octopii_core::{Command, Reply};
use tokio::time::Instant;

use cluster::{Cluster, WAIT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_node_cluster_elects_replicates_and_survives_a_leader_restart() {
    let mut cluster = Cluster::new(&[1, 2, 3]).await;
    assert_eq!(cluster.propose("SET a 1").await, Bytes::from_static(b"OK"));
    cluster.read_everywhere("a", "1").await;

    let old_leader = cluster.leader().await;
    cluster.nodes.remove(&old_leader).unwrap().shutdown().await;
    assert_eq!(cluster.propose("SET b 2").await, Bytes::from_static(b"OK"));
    assert_ne!(cluster.leader().await, old_leader);

    // The old leader comes back on a new port, from its own log; `shutdown`
    // has released the directory, so it opens at once.
    assert!(cluster.dir.path().join(format!("node-{old_leader}")).join("LOCK").exists());
    cluster.start(old_leader, &[1, 2, 3]).await;
    cluster.exchange_addresses().await;
    cluster.read_everywhere("a", "1").await;
    cluster.read_everywhere("b", "2").await;
    assert_eq!(cluster.propose("SET c 3").await, Bytes::from_static(b"OK"));
    cluster.read_everywhere("c", "3").await;
}

/// A commit index is written with the next records that need a sync, not
/// synced on its own; a node stopped on purpose writes it as it stops, so
/// it restarts, even alone, with every write it applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_on_purpose_restarts_alone_with_all_it_applied() {
    let mut cluster = Cluster::new(&[1, 2, 3]).await;
    for index in 0..20 {
        assert_eq!(cluster.propose(&format!("SET k{index} v{index}")).await, Bytes::from_static(b"OK"));
    }
    let leader = cluster.leader().await;
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in ids {
        cluster.nodes.remove(&id).unwrap().shutdown().await;
    }
    // Alone it cannot be elected: what it answers is what it recovered.
    cluster.start(leader, &[1, 2, 3]).await;
    let node = &cluster.nodes[&leader];
    let reply = node.call(Command::Query(Bytes::from_static(b"GET k19"))).await.unwrap();
    assert_eq!(reply, Reply::Queried(Ok(Ok(Bytes::from_static(b"v19")))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_requests_one_way_messages_and_timeouts_between_nodes() {
    let cluster = Cluster::new(&[1, 2]).await;
    cluster.nodes[&2]
        .set_request_handler(RequestHandler::new(|request| match request.payload {
            RequestPayload::Custom { operation, data } if operation == "upper" => {
                ResponsePayload::CustomResponse {
                    success: true,
                    data: Bytes::from(data.to_ascii_uppercase()),
                }
            }
            RequestPayload::Custom { operation, .. } if operation == "sleep" => {
                // Handlers run on the node's task. A blocking one must say
                // so, or the tasks queued behind it on this worker (node 1's,
                // which should time out meanwhile) wait with it.
                tokio::task::block_in_place(|| std::thread::sleep(Duration::from_millis(400)));
                ResponsePayload::CustomResponse { success: true, data: Bytes::new() }
            }
            _ => ResponsePayload::Error { message: "unknown".into() },
        }))
        .await
        .unwrap();
    let request = async |operation: &str, timeout: Duration| {
        let payload =
            RequestPayload::Custom { operation: operation.into(), data: Bytes::from_static(b"quic") };
        cluster.nodes[&1].call(Command::Request { to: 2, payload, timeout }).await.unwrap()
    };
    let Reply::Response(Ok(response)) = request("upper", WAIT).await else { panic!("no response") };
    assert_eq!(
        response.payload,
        ResponsePayload::CustomResponse { success: true, data: Bytes::from_static(b"QUIC") }
    );
    assert_eq!(
        request("sleep", Duration::from_millis(100)).await,
        Reply::Response(Err(RpcError::TimedOut { timeout_ms: 100 }))
    );

    let message = OneWayMessage::Custom { operation: "note".into(), data: Bytes::from_static(b"hi") };
    let sent = cluster.nodes[&1].call(Command::SendOneWay { to: 2, message: message.clone() }).await.unwrap();
    assert_eq!(sent, Reply::Sent(Ok(())));
    let delivered = tokio::time::timeout(WAIT, cluster.nodes[&2].recv_delivery()).await;
    assert_eq!(delivered, Ok(Some(Delivery::OneWay { from: 1, message })));

    let unknown = cluster.nodes[&1].call(Command::SendData { to: 9, data: Bytes::new() }).await.unwrap();
    assert_eq!(unknown, Reply::Sent(Err(RpcError::UnknownPeer(9))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_its_directory_until_stopped_and_checks_its_config() {
    let mut cluster = Cluster::new(&[1]).await;
    assert_eq!(cluster.propose("SET a 1").await, Bytes::from_static(b"OK"));

    // A second node on the same directory is refused while the first runs.
    let options = cluster.options(1, &[1]);
    let refused = NodeLoop::start(options).await.map(|_| ());
    assert!(matches!(refused, Err(OctopiiError::Io(_))), "{refused:?}");

    // Dropping the handle stops the node too; the directory is released
    // once its disk thread has finished.
    drop(cluster.nodes.remove(&1));
    let deadline = Instant::now() + WAIT;
    loop {
        match NodeLoop::start(cluster.options(1, &[1])).await {
            Ok(node) => {
                cluster.nodes.insert(1, node);
                break;
            }
            Err(error) => assert!(Instant::now() < deadline, "directory never released: {error}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cluster.read_everywhere("a", "1").await;

    let node = cluster.nodes.remove(&1).unwrap();
    node.shutdown().await;
    let reopened = NodeLoop::start(cluster.options(1, &[1])).await.unwrap();
    let mismatched = {
        let mut options = cluster.options(2, &[2]);
        options.node.id = 3;
        NodeLoop::start(options).await.map(|_| ())
    };
    assert!(matches!(mismatched, Err(OctopiiError::NodeConfig(_))), "{mismatched:?}");
    reopened.shutdown().await;
}

/// Sends a file from node 1 to nodes 2 and 3 at once; each receiver hashes
/// what arrives as it arrives (never holding the body) and the digest is
/// compared with the file's. `OCTOPII_TRANSFER_BYTES` sets the size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_gib_file_reaches_two_peers_verified_by_sha256() {
    use octopii_core::transport::chunk::ChunkSource;
    use sha2::{Digest, Sha256};
    use std::io::Write;

    let cluster = Cluster::new(&[1, 2, 3]).await;
    let size: u64 =
        std::env::var("OCTOPII_TRANSFER_BYTES").ok().and_then(|bytes| bytes.parse().ok()).unwrap_or(1 << 30);
    let path = cluster.dir.path().join("payload.bin");
    let expected = tokio::task::block_in_place(|| {
        let mut expected = Sha256::new();
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
        file.flush().unwrap();
        expected.finalize()
    });

    // Both receivers read at once: a node drops deliveries nobody takes.
    let receive = async |peer: u64| {
        let node = &cluster.nodes[&peer];
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        loop {
            let delivery = tokio::time::timeout(WAIT, node.recv_delivery()).await;
            match delivery.expect("transfer stalled").expect("node stopped") {
                Delivery::ChunkIncoming { from, size: announced, .. } => {
                    assert_eq!((from, announced), (1, size));
                }
                Delivery::ChunkData { data, .. } => {
                    received += data.len() as u64;
                    hasher.update(&data);
                }
                Delivery::ChunkReceived { result, .. } => {
                    assert_eq!(result, Ok(size), "node {peer}");
                    break;
                }
                other => panic!("unexpected delivery {other:?}"),
            }
        }
        assert_eq!(received, size, "node {peer} missed bytes");
        hasher.finalize()
    };
    let send = async |peer: u64| {
        let command = Command::SendChunk { to: peer, source: ChunkSource::File(path.clone()) };
        cluster.nodes[&1].call(command).await.unwrap()
    };

    // The receivers notice a stall; the answers must follow soon after.
    let started = Instant::now();
    let mut sends = std::pin::pin!(async { tokio::join!(send(2), send(3)) });
    let mut receives = std::pin::pin!(async { tokio::join!(receive(2), receive(3)) });
    let mut answers = None;
    let (digest_2, digest_3) = loop {
        tokio::select! {
            replies = &mut sends, if answers.is_none() => answers = Some(replies),
            digests = &mut receives => break digests,
        }
    };
    let (sent_2, sent_3) = match answers {
        Some(replies) => replies,
        None => tokio::time::timeout(WAIT, sends).await.expect("transfers not answered"),
    };
    let elapsed = started.elapsed();
    for (peer, reply, digest) in [(2, sent_2, digest_2), (3, sent_3, digest_3)] {
        let Reply::ChunkSent(Ok(report)) = reply else { panic!("transfer to {peer} failed: {reply:?}") };
        assert_eq!(report.bytes, size);
        assert!(digest == expected, "node {peer} received other bytes");
    }
    eprintln!(
        "sent {} MiB to two peers in {:.2?} ({:.0} MiB/s per peer)",
        size >> 20,
        elapsed,
        (size >> 20) as f64 / elapsed.as_secs_f64()
    );
}

/// A receiver that reads nothing until the sender's transfer is verified
/// still finds every piece waiting: before, pieces beyond 4096 waiting
/// were dropped, leaving a body its verdict called verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_loses_no_piece_of_a_transfer() {
    use octopii_core::transport::chunk::ChunkSource;
    let cluster = Cluster::new(&[1, 2]).await;
    let body: Vec<u8> = (0..16u32 << 20).map(|index| (index % 251) as u8).collect();
    let source = ChunkSource::Memory(Bytes::from(body.clone()));
    let reply = cluster.nodes[&1].call(Command::SendChunk { to: 2, source }).await.unwrap();
    assert!(matches!(reply, Reply::ChunkSent(Ok(_))), "{reply:?}");
    let received = receive_body(&cluster.nodes[&2]).await;
    assert!(received == body, "{} of {} bytes arrived", received.len(), body.len());
}

/// A receiver that does not read holds its sender back: with a 1 MiB
/// delivery budget, a 16 MiB transfer waits (in QUIC's flow control, not
/// in the receiver's memory) until the receiver reads, then finishes whole
/// and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_does_not_read_holds_its_sender_back() {
    use octopii_core::transport::chunk::ChunkSource;
    let mut cluster = Cluster::new(&[1]).await;
    let mut options = cluster.options(2, &[]);
    options.transport.delivery_budget = octopii_core::transport::DeliveryBudget::Pieces(1 << 20);
    cluster.nodes.insert(2, NodeLoop::start(options).await.unwrap());
    cluster.exchange_addresses().await;
    let cluster = std::sync::Arc::new(cluster);

    let body: Vec<u8> = (0..16u32 << 20).map(|index| (index % 253) as u8).collect();
    let source = ChunkSource::Memory(Bytes::from(body.clone()));
    let sender = cluster.clone();
    let sending =
        tokio::spawn(async move { sender.nodes[&1].call(Command::SendChunk { to: 2, source }).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!sending.is_finished(), "the transfer finished while nobody read it");

    let received = receive_body(&cluster.nodes[&2]).await;
    assert!(received == body, "{} of {} bytes arrived", received.len(), body.len());
    let reply = tokio::time::timeout(WAIT, sending).await.unwrap().unwrap().unwrap();
    assert!(matches!(reply, Reply::ChunkSent(Ok(_))), "{reply:?}");
}

/// The body of the next transfer `node` receives, once verified.
async fn receive_body(node: &NodeLoop) -> Vec<u8> {
    let mut received = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, node.recv_delivery()).await.unwrap().unwrap() {
            Delivery::ChunkData { data, .. } => received.extend_from_slice(&data),
            Delivery::ChunkReceived { result, .. } => {
                assert_eq!(result, Ok(received.len() as u64));
                return received;
            }
            _ => {}
        }
    }
}
