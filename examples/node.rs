//! A real three-node cluster on loopback: QUIC with mutual TLS between the
//! nodes, a write-ahead log with fsync under each, Raft deciding.
//!
//! The nodes start on 127.0.0.1 (ports picked by the OS), learn each
//! other's addresses, elect a leader and replicate writes. Then the leader
//! is shut down, the two others elect a new one and keep accepting writes,
//! and the old leader restarts from its own log and catches up.
//!
//! ```sh
//! cargo run --release --example node
//! ```
//!
//! The nodes' certificates come from a development CA made in the data
//! directories' parent on first use (see `octopii_mio::identity`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii::{NodeLoop, NodeOptions};
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::KvStateMachine;
use octopii_core::transport::TransportConfig;
use octopii_core::{Command, KernelConfig, Reply};
use rand::RngCore;

const VOTERS: [u64; 3] = [1, 2, 3];
const WAIT: Duration = Duration::from_secs(10);

async fn start(root: &Path, id: u64) -> anyhow::Result<NodeLoop> {
    let data_dir = root.join(format!("node-{id}"));
    std::fs::create_dir_all(&data_dir)?;
    let identity = octopii_mio::identity::load_identity(&data_dir, id, None)?;
    let mut seed = [0; 32];
    rand::rng().fill_bytes(&mut seed);
    let crypto = Arc::new(rustls::crypto::ring::default_provider());
    let time = Arc::new(rustls::time_provider::DefaultTimeProvider);
    let options = NodeOptions {
        data_dir,
        bind_addr: "127.0.0.1:0".parse()?,
        kernel: KernelConfig::default(),
        node: NodeConfig { id, voters: VOTERS.to_vec(), seed: id, ..NodeConfig::default() },
        transport: TransportConfig::new(id, identity, crypto, time, seed),
        state_machine: Arc::new(KvStateMachine::default()),
    };
    Ok(NodeLoop::start(options).await?)
}

/// Tells every node where every other one listens.
async fn exchange_addresses(nodes: &[&NodeLoop]) -> anyhow::Result<()> {
    for node in nodes {
        for peer in nodes {
            node.call(Command::UpdatePeerAddr { node: peer.id(), address: peer.local_addr() }).await?;
        }
    }
    Ok(())
}

async fn leader(nodes: &[&NodeLoop]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        for node in nodes {
            if let Reply::Status(Ok(status)) = node.call(Command::Status).await?
                && status.is_leader()
            {
                return Ok(node.id());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    anyhow::bail!("no leader within {WAIT:?}")
}

async fn write(nodes: &[&NodeLoop], command: &str) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + WAIT;
    loop {
        let id = leader(nodes).await?;
        let node = nodes.iter().find(|node| node.id() == id).expect("the leader is one of them");
        let started = Instant::now();
        match node.call(Command::Propose(Bytes::from(command.to_owned()))).await? {
            Reply::Proposed(Ok(Ok(_))) => return Ok(started.elapsed()),
            other if Instant::now() > deadline => anyhow::bail!("{command}: {other:?}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn read(node: &NodeLoop, key: &str) -> anyhow::Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let reply = node.call(Command::Query(Bytes::from(format!("GET {key}")))).await?;
        if let Reply::Queried(Ok(Ok(value))) = &reply
            && &value[..] != b"NOT_FOUND"
        {
            return Ok(String::from_utf8_lossy(value).into_owned());
        }
        if Instant::now() > deadline {
            anyhow::bail!("node {} never saw {key}: {reply:?}", node.id());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let mut nodes = Vec::new();
    for id in VOTERS {
        nodes.push(start(root.path(), id).await?);
    }
    exchange_addresses(&nodes.iter().collect::<Vec<_>>()).await?;
    for node in &nodes {
        println!("node {} listening on {}", node.id(), node.local_addr());
    }
    let all: Vec<&NodeLoop> = nodes.iter().collect();
    let first = leader(&all).await?;
    println!("node {first} is the leader");
    for index in 0..5 {
        let latency = write(&all, &format!("SET key{index} value{index}")).await?;
        println!("SET key{index} committed on a majority and applied in {latency:.2?}");
    }
    for node in &all {
        println!("node {} reads key4 = {}", node.id(), read(node, "key4").await?);
    }

    println!("shutting down the leader, node {first}");
    let position = nodes.iter().position(|node| node.id() == first).expect("the leader runs");
    nodes.remove(position).shutdown().await;
    let survivors: Vec<&NodeLoop> = nodes.iter().collect();
    let second = leader(&survivors).await?;
    println!("node {second} took over");
    write(&survivors, "SET after failover").await?;
    println!("SET after committed with two of three nodes");

    println!("restarting node {first} from its own log");
    nodes.push(start(root.path(), first).await?);
    exchange_addresses(&nodes.iter().collect::<Vec<_>>()).await?;
    let back = nodes.last().expect("just pushed");
    println!(
        "node {first} reads key0 = {}, after = {}",
        read(back, "key0").await?,
        read(back, "after").await?
    );
    for node in nodes {
        node.shutdown().await;
    }
    println!("done: every acknowledged write survived the leader's loss");
    Ok(())
}
