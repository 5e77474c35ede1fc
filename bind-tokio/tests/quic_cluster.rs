//! Three nodes on tokio tasks, talking QUIC over real UDP sockets on
//! 127.0.0.1: election, replication, a leader killed and restarted, RPC.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use octopii::{Delivery, NodeLoop, NodeOptions, OctopiiError};
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::KvStateMachine;
use octopii_core::transport::TransportConfig;
use octopii_core::transport::rpc::{
    OneWayMessage, RequestHandler, RequestPayload, ResponsePayload, RpcError,
};
use octopii_core::transport::tls::DevCa;
use octopii_core::{Command, KernelConfig, Reply};
use tokio::time::Instant;

const WAIT: Duration = Duration::from_secs(20);

struct Cluster {
    ca: DevCa,
    dir: tempfile::TempDir,
    nodes: BTreeMap<u64, NodeLoop>,
    starts: u8,
}

impl Cluster {
    async fn new(ids: &[u64]) -> Self {
        let mut cluster = Cluster {
            ca: DevCa::from_seed([3; 32]).unwrap(),
            dir: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            starts: 0,
        };
        for &id in ids {
            cluster.start(id, ids).await;
        }
        cluster.exchange_addresses().await;
        cluster
    }

    fn options(&mut self, id: u64, voters: &[u64]) -> NodeOptions {
        self.starts += 1;
        let identity = self.ca.identity(id, [id as u8; 32]).unwrap();
        let crypto = Arc::new(rustls::crypto::ring::default_provider());
        let time = Arc::new(rustls::time_provider::DefaultTimeProvider);
        let transport = TransportConfig::new(id, identity, crypto, time, [self.starts; 32]);
        let node = NodeConfig {
            id,
            voters: voters.to_vec(),
            seed: id,
            tick_interval: Duration::from_millis(20),
            ..NodeConfig::default()
        };
        NodeOptions {
            data_dir: self.dir.path().join(format!("node-{id}")),
            bind_addr: "127.0.0.1:0".parse().unwrap(),
            kernel: KernelConfig::default(),
            node,
            transport,
            state_machine: Arc::new(KvStateMachine::default()),
        }
    }

    async fn start(&mut self, id: u64, voters: &[u64]) {
        let options = self.options(id, voters);
        self.nodes.insert(id, NodeLoop::start(options).await.unwrap());
    }

    async fn exchange_addresses(&self) {
        let addresses: Vec<(u64, SocketAddr)> =
            self.nodes.values().map(|node| (node.id(), node.local_addr())).collect();
        for node in self.nodes.values() {
            for &(peer, address) in &addresses {
                let reply = node.call(Command::UpdatePeerAddr { node: peer, address }).await.unwrap();
                assert_eq!(reply, Reply::Sent(Ok(())));
            }
        }
    }

    async fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            for node in self.nodes.values() {
                if let Reply::Status(Ok(status)) = node.call(Command::Status).await.unwrap()
                    && status.is_leader()
                {
                    return node.id();
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn propose(&self, command: &str) -> Bytes {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader().await;
            let proposal = Command::Propose(Bytes::from(command.to_owned()));
            match self.nodes[&leader].call(proposal).await.unwrap() {
                Reply::Proposed(Ok(Ok(result))) => return result,
                other => assert!(Instant::now() < deadline, "proposal failed: {other:?}"),
            }
        }
    }

    async fn read_everywhere(&self, key: &str, expected: &str) {
        let deadline = Instant::now() + WAIT;
        for node in self.nodes.values() {
            loop {
                let reply = node.call(Command::Query(Bytes::from(format!("GET {key}")))).await.unwrap();
                if reply == Reply::Queried(Ok(Ok(Bytes::from(expected.to_owned())))) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} never applied {key}: {reply:?}", node.id());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

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
