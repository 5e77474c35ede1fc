//! A cluster of nodes on the blocking loop for the tests: each with its own
//! port on 127.0.0.1, its data directory and a certificate of one CA.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::KvStateMachine;
use octopii_core::transport::TransportConfig;
use octopii_core::transport::tls::DevCa;
use octopii_core::{Command, KernelConfig, Reply};
use octopii_mio::{Node, NodeOptions};

/// How long a test waits for anything before it fails.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Cluster {
    pub ca: DevCa,
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<u64, Node>,
    starts: u8,
}

impl Cluster {
    pub fn new(ids: &[u64]) -> Self {
        let mut cluster = Cluster {
            ca: DevCa::from_seed([3; 32]).unwrap(),
            dir: tempfile::tempdir().unwrap(),
            nodes: BTreeMap::new(),
            starts: 0,
        };
        for &id in ids {
            cluster.start(id, ids);
        }
        cluster.exchange_addresses();
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

    pub fn start(&mut self, id: u64, voters: &[u64]) {
        let options = self.options(id, voters);
        std::fs::create_dir_all(&options.data_dir).unwrap();
        self.nodes.insert(id, Node::start(options).unwrap());
    }

    pub fn exchange_addresses(&self) {
        let addresses: Vec<(u64, SocketAddr)> =
            self.nodes.values().map(|node| (node.id(), node.local_addr())).collect();
        for node in self.nodes.values() {
            for &(peer, address) in &addresses {
                let reply = node.call(Command::UpdatePeerAddr { node: peer, address }).unwrap();
                assert_eq!(reply, Reply::Sent(Ok(())));
            }
        }
    }

    pub fn leader(&self) -> u64 {
        let deadline = Instant::now() + WAIT;
        loop {
            for node in self.nodes.values() {
                if let Reply::Status(Ok(status)) = node.call(Command::Status).unwrap()
                    && status.is_leader()
                {
                    return node.id();
                }
            }
            assert!(Instant::now() < deadline, "no leader elected");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn propose(&self, command: &str) -> Bytes {
        let deadline = Instant::now() + WAIT;
        loop {
            let leader = self.leader();
            match self.nodes[&leader].call(Command::Propose(Bytes::from(command.to_owned()))).unwrap() {
                Reply::Proposed(Ok(Ok(result))) => return result,
                other => assert!(Instant::now() < deadline, "proposal failed: {other:?}"),
            }
        }
    }

    pub fn read_everywhere(&self, key: &str, expected: &str) {
        let deadline = Instant::now() + WAIT;
        for node in self.nodes.values() {
            loop {
                let reply = node.call(Command::Query(Bytes::from(format!("GET {key}")))).unwrap();
                if reply == Reply::Queried(Ok(Ok(Bytes::from(expected.to_owned())))) {
                    break;
                }
                assert!(Instant::now() < deadline, "node {} never applied {key}: {reply:?}", node.id());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
