//! A cluster of nodes on tokio tasks for the tests: each with its own port
//! on 127.0.0.1, its data directory and a certificate of one CA.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use octopii::{NodeLoop, NodeOptions};
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::KvStateMachine;
use octopii_core::transport::TransportConfig;
use octopii_core::transport::tls::DevCa;
use octopii_core::{Command, KernelConfig, Reply};
use tokio::time::Instant;

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub ca: DevCa,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, NodeLoop>,
    starts: u8,
}

impl Cluster {
    pub async fn new(ids: &[u64]) -> Self {
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

    /// Options for node `id`, with a certificate of the cluster's CA and a
    /// directory of its own under the cluster's.
    pub fn options(&mut self, id: u64, voters: &[u64]) -> NodeOptions {
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

    pub async fn start(&mut self, id: u64, voters: &[u64]) {
        let options = self.options(id, voters);
        self.nodes.insert(id, NodeLoop::start(options).await.unwrap());
    }

    pub async fn exchange_addresses(&self) {
        let addresses: Vec<(u64, SocketAddr)> =
            self.nodes.values().map(|node| (node.id(), node.local_addr())).collect();
        for node in self.nodes.values() {
            for &(peer, address) in &addresses {
                let reply = node.call(Command::UpdatePeerAddr { node: peer, address }).await.unwrap();
                assert_eq!(reply, Reply::Sent(Ok(())));
            }
        }
    }

    pub async fn leader(&self) -> u64 {
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

    pub async fn propose(&self, command: &str) -> Bytes {
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

    pub async fn read_everywhere(&self, key: &str, expected: &str) {
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
