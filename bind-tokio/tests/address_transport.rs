//! The transport on its own, on 127.0.0.1: nodes reached by address, bytes,
//! verified transfers and RPC between them, refusals and shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use octopii::OctopiiError;
use octopii::chunk::ChunkSource;
use octopii::rpc::{OneWayMessage, RequestPayload, ResponsePayload, RpcError, RpcHandler};
use octopii::transport::QuicTransport;
use octopii_core::transport::TransportConfig;
use octopii_core::transport::tls::DevCa;
use octopii_mio::identity::{load_identity, transport_config};

/// Node `id` of the cluster whose development CA lives in `root`.
fn config(root: &Path, id: u64) -> TransportConfig {
    let identity = load_identity(&root.join(format!("node-{id}")), id, None).unwrap();
    transport_config(id, identity)
}

async fn start(config: TransportConfig) -> Arc<QuicTransport> {
    Arc::new(QuicTransport::new("127.0.0.1:0".parse().unwrap(), config).await.unwrap())
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|index| (index as u8).wrapping_mul(31).wrapping_add(salt)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reached_by_address_exchange_bytes_and_verified_transfers() {
    let root = tempfile::tempdir().unwrap();
    let (one, two, three) = (
        start(config(root.path(), 1)).await,
        start(config(root.path(), 2)).await,
        start(config(root.path(), 3)).await,
    );

    let to_two = one.connect(two.local_addr()).await.unwrap();
    assert_eq!(to_two.peer_id(), 2);
    let (from_address, to_one) = two.accept().await.unwrap();
    assert_eq!((to_one.peer_id(), from_address), (1, one.local_addr()));
    assert!(one.has_active_peer(two.local_addr()).await);
    assert!(!to_two.is_closed().await);
    assert!(to_two.stats().await.is_some_and(|stats| stats.rtt > Duration::ZERO));

    to_two.send(Bytes::from_static(b"ping")).await.unwrap();
    one.send(two.local_addr(), Bytes::from_static(b"ping again")).await.unwrap();
    assert_eq!(to_one.recv().await.unwrap().unwrap(), Bytes::from_static(b"ping"));
    assert_eq!(to_one.recv().await.unwrap().unwrap(), Bytes::from_static(b"ping again"));
    to_one.send(Bytes::from_static(b"pong")).await.unwrap();
    assert_eq!(to_two.recv().await.unwrap().unwrap(), Bytes::from_static(b"pong"));

    let body = Bytes::from(pattern(3 << 20, 1));
    let sent = to_two.send_chunk_verified(&ChunkSource::Memory(body.clone())).await.unwrap();
    assert_eq!(sent, body.len() as u64);
    assert_eq!(to_one.recv_chunk_verified().await.unwrap().unwrap(), body);

    // A file to two nodes at once, one result each, in order.
    let file = root.path().join("payload.bin");
    let contents = pattern(5 << 20, 7);
    std::fs::write(&file, &contents).unwrap();
    let peers = [two.local_addr(), three.local_addr()];
    let results = one.transfer_chunk_to_peers(&ChunkSource::File(file), &peers).await;
    assert_eq!(results.len(), 2);
    for (result, peer) in results.iter().zip(peers) {
        assert_eq!(result.peer, peer);
        assert!(result.success && result.checksum_verified, "{result:?}");
        assert_eq!(result.bytes_transferred, contents.len() as u64);
    }
    assert_eq!(to_one.recv_chunk_verified().await.unwrap().unwrap(), contents);
    let (_, three_to_one) = three.accept().await.unwrap();
    assert_eq!(three_to_one.recv_chunk_verified().await.unwrap().unwrap(), contents);

    // A missing file fails that transfer alone.
    let missing = ChunkSource::File(root.path().join("missing.bin"));
    let results = one.transfer_chunk_to_peers(&missing, &peers[..1]).await;
    assert!(!results[0].success && results[0].error.is_some(), "{results:?}");

    two.close().await;
    assert!(matches!(two.accept().await, Err(OctopiiError::Shutdown)));
    assert!(to_one.recv().await.unwrap().is_none(), "the closed transport's inboxes end");
    assert!(matches!(to_one.send(Bytes::from_static(b"late")).await, Err(OctopiiError::Shutdown)));
    for transport in [one, three] {
        transport.close().await;
    }
}

/// A transport holds received bodies whole until the application takes
/// them, so it holds at most `chunk_bytes_max` of them at once: with a
/// 1 MiB limit, of three 600 kB transfers sent at once one arrives and the
/// others wait at the sender until the application takes a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_nobody_takes_hold_back_further_transfers() {
    const SIZE: usize = 600_000;
    let root = tempfile::tempdir().unwrap();
    let one = start(config(root.path(), 1)).await;
    let mut limited = config(root.path(), 2);
    limited.chunk_bytes_max = 1 << 20;
    let two = start(limited).await;
    let to_two = one.connect(two.local_addr()).await.unwrap();
    let (_, to_one) = two.accept().await.unwrap();

    let bodies: Vec<Bytes> = (0..3).map(|salt| Bytes::from(pattern(SIZE, salt))).collect();
    let mut sending: Vec<_> = bodies
        .iter()
        .map(|body| {
            let (to_two, source) = (to_two.clone(), ChunkSource::Memory(body.clone()));
            tokio::spawn(async move { to_two.send_chunk_verified(&source).await })
        })
        .collect();
    let mut received = Vec::new();
    for round in 0..3 {
        // One transfer finishes; the others stay held back.
        let finished = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                if let Some(index) = sending.iter().position(tokio::task::JoinHandle::is_finished) {
                    break index;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("a transfer finishes");
        assert_eq!(sending.remove(finished).await.unwrap().unwrap(), SIZE as u64);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            sending.iter().all(|handle| !handle.is_finished()),
            "round {round}: a transfer finished while the transport held a body nobody took"
        );
        received.push(to_one.recv_chunk_verified().await.unwrap().unwrap());
    }
    received.sort();
    let mut expected = bodies.clone();
    expected.sort();
    assert!(received == expected, "every body arrived whole");
    for transport in [one, two] {
        transport.close().await;
    }
}

/// Data and one-way messages count against the same limit, and reading
/// them makes room again: with 64 kB of room, 2 MB of each still arrives,
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_read_by_the_application_make_room_for_more() {
    const MESSAGES: usize = 500;
    let root = tempfile::tempdir().unwrap();
    let one = start(config(root.path(), 1)).await;
    let mut limited = config(root.path(), 2);
    limited.chunk_bytes_max = 64 * 1024;
    let two = start(limited).await;
    let to_two = one.connect(two.local_addr()).await.unwrap();
    let (_, to_one) = two.accept().await.unwrap();
    let (rpc_one, rpc_two) = (RpcHandler::new(one.clone()), RpcHandler::new(two.clone()));
    let message = |index: usize| Bytes::from(pattern(4096, index as u8));
    for index in 0..MESSAGES {
        to_two.send(message(index)).await.unwrap();
        let one_way = OneWayMessage::Custom { operation: "note".into(), data: message(index) };
        rpc_one.send_one_way(two.local_addr(), one_way).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(30), async {
        for index in 0..MESSAGES {
            assert_eq!(to_one.recv().await.unwrap().unwrap(), message(index));
            let (from, one_way) = rpc_two.recv_one_way().await.unwrap();
            assert_eq!(
                (from, one_way),
                (1, OneWayMessage::Custom { operation: "note".into(), data: message(index) })
            );
        }
    })
    .await
    .expect("every message arrives");
    for transport in [one, two] {
        transport.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_by_address_answers_times_out_and_carries_one_way_messages() {
    let root = tempfile::tempdir().unwrap();
    let (one, two) = (start(config(root.path(), 1)).await, start(config(root.path(), 2)).await);
    let (client, server) = (RpcHandler::new(one.clone()), RpcHandler::new(two.clone()));
    server
        .set_request_handler(|request| match request.payload {
            RequestPayload::Custom { operation, data } if operation == "echo" => {
                ResponsePayload::CustomResponse { success: true, data }
            }
            RequestPayload::Custom { operation, .. } if operation == "slow" => {
                std::thread::sleep(Duration::from_millis(300));
                ResponsePayload::CustomResponse { success: true, data: Bytes::new() }
            }
            other => ResponsePayload::Error { message: format!("unknown request {other:?}") },
        })
        .await
        .unwrap();

    let echo = RequestPayload::Custom { operation: "echo".into(), data: Bytes::from_static(b"hello") };
    let response = client.request(two.local_addr(), echo, Duration::from_secs(5)).await.unwrap();
    let expected = ResponsePayload::CustomResponse { success: true, data: Bytes::from_static(b"hello") };
    assert_eq!(response.payload, expected);

    let slow = RequestPayload::Custom { operation: "slow".into(), data: Bytes::new() };
    let timed_out = client.request(two.local_addr(), slow, Duration::from_millis(50)).await;
    assert!(
        matches!(timed_out, Err(OctopiiError::Rpc(RpcError::TimedOut { timeout_ms: 50 }))),
        "{timed_out:?}"
    );

    let heartbeat = OneWayMessage::Heartbeat { node_id: 1, timestamp: 42 };
    client.send_one_way(two.local_addr(), heartbeat.clone()).await.unwrap();
    assert_eq!(server.recv_one_way().await, Some((1, heartbeat)));

    // Payloads of custom requests are encoded with the rpc helpers;
    // garbage from a peer is an error, not a panic or a huge allocation.
    let encoded = octopii::rpc::serialize(&(7u64, String::from("seven"))).unwrap();
    let decoded: (u64, String) = octopii::rpc::deserialize(&encoded).unwrap();
    assert_eq!(decoded, (7, "seven".to_owned()));
    assert!(octopii::rpc::deserialize::<Vec<u64>>(&[0xff; 9]).is_err());
    assert!(octopii::rpc::deserialize::<u8>(&[1, 2]).is_err(), "trailing bytes are refused");

    one.close().await;
    two.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_without_a_node_of_the_cluster_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut dialer = config(root.path(), 1);
    dialer.idle_timeout = Duration::from_secs(1);
    let one = start(dialer).await;
    let stranger = DevCa::from_seed([9; 32]).unwrap().identity(2, [2; 32]).unwrap();
    let other_ca = start(transport_config(2, stranger)).await;
    // A socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();

    for address in [other_ca.local_addr(), silent.local_addr().unwrap()] {
        let refused = one.connect(address).await;
        assert!(
            matches!(&refused, Err(OctopiiError::Rpc(RpcError::Unreachable { address: dialed, .. })) if *dialed == address),
            "{refused:?}"
        );
    }
    assert!(!one.has_active_peer(other_ca.local_addr()).await);
    let nobody = tokio::time::timeout(Duration::from_millis(300), other_ca.accept()).await;
    assert!(nobody.is_err(), "the stranger's node accepted nobody");
    one.close().await;
    other_ca.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_address_does_not_hold_back_the_transfers_to_the_others() {
    let root = tempfile::tempdir().unwrap();
    let mut dialer = config(root.path(), 1);
    dialer.idle_timeout = Duration::from_secs(4);
    let (one, two) = (start(dialer).await, start(config(root.path(), 2)).await);
    // Bound and silent: dialing it fails only at the idle timeout.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let body = Bytes::from(pattern(1 << 20, 3));
    let peers = [two.local_addr(), silent.local_addr().unwrap()];
    let sending = {
        let (one, body) = (one.clone(), body.clone());
        tokio::spawn(async move { one.transfer_chunk_to_peers(&ChunkSource::Memory(body), &peers).await })
    };
    let received = tokio::time::timeout(Duration::from_secs(2), async {
        let (_, from_one) = two.accept().await.unwrap();
        from_one.recv_chunk_verified().await.unwrap().unwrap()
    })
    .await
    .expect("node 2 has the body long before the silent address's dial gives up");
    assert_eq!(received, body);
    let results = sending.await.unwrap();
    assert!(results[0].success, "{results:?}");
    assert!(!results[1].success && results[1].error.is_some(), "{results:?}");
    for transport in [one, two] {
        transport.close().await;
    }
}
