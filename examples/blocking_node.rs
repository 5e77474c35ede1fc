//! A replicated node from plain threads, with no async runtime:
//! `octopii_mio::BlockingNode` runs the same node as `octopii::OctopiiNode`
//! on a blocking event loop.
//!
//! Three nodes form a cluster from each other's ids and addresses, threads
//! write to it concurrently, the leader is stopped, the others go on, and
//! the stopped node comes back and catches up.
//!
//! Run: `cargo run -p octopii-examples --example blocking_node`

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use octopii_core::raft::NodeError;
use octopii_mio::{BlockingError, BlockingNode, Config};

const NODES: [u64; 3] = [1, 2, 3];
const WAIT: Duration = Duration::from_secs(10);

fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    // Free loopback ports, so the configs can name each other.
    let addresses: Vec<SocketAddr> = NODES
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0").and_then(|socket| socket.local_addr()))
        .collect::<Result<_, _>>()?;
    let config = |id: u64| Config {
        node_id: id,
        bind_addr: addresses[id as usize - 1],
        peer_ids: NODES
            .iter()
            .filter(|&&peer| peer != id)
            .map(|&peer| (peer, addresses[peer as usize - 1]))
            .collect(),
        wal_dir: root.path().join(format!("node-{id}")),
        ..Config::default()
    };
    let mut nodes: Vec<Option<Arc<BlockingNode>>> = Vec::new();
    for id in NODES {
        let node = BlockingNode::new(&config(id)).with_context(|| format!("node {id}"))?;
        node.start()?;
        nodes.push(Some(Arc::new(node)));
    }
    let leader = leader(&nodes)?;
    println!("three nodes up; node {leader} leads");

    // Four threads, 50 writes each, each write to the leader.
    let running: Vec<Arc<BlockingNode>> = nodes.iter().flatten().cloned().collect();
    let writers: Vec<_> = (0..4)
        .map(|thread| {
            let running = running.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                for index in 0..50 {
                    write(&running, &format!("SET t{thread}-{index} {index}"))?;
                }
                Ok(())
            })
        })
        .collect();
    for writer in writers {
        writer.join().expect("a writer thread does not panic")?;
    }
    println!("4 threads wrote 200 keys");
    drop(running);

    let stopped = NODES.iter().position(|&id| id == leader).expect("a member");
    Arc::into_inner(nodes[stopped].take().expect("running"))
        .context("the leader is shared no more")?
        .shutdown();
    let running: Vec<Arc<BlockingNode>> = nodes.iter().flatten().cloned().collect();
    write(&running, "SET after-stop yes")?;
    drop(running);
    println!("node {leader} stopped; the other two still commit");

    let restarted = BlockingNode::new(&config(leader))?;
    restarted.start()?;
    let deadline = Instant::now() + WAIT;
    while restarted.query(b"GET after-stop")? != "yes" {
        if Instant::now() > deadline {
            bail!("node {leader} did not catch up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(restarted.query(b"GET t3-49")?, "49");
    println!("node {leader} restarted from its log and caught up");
    restarted.shutdown();
    for node in nodes.into_iter().flatten() {
        Arc::into_inner(node).context("no other holder")?.shutdown();
    }
    Ok(())
}

fn leader(nodes: &[Option<Arc<BlockingNode>>]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(node) = nodes.iter().flatten().find(|node| node.is_leader()) {
            return Ok(node.id());
        }
        if Instant::now() > deadline {
            bail!("no leader within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Proposes on the leader, following not-leader answers.
fn write(nodes: &[Arc<BlockingNode>], command: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    let mut target = 0;
    loop {
        match nodes[target % nodes.len()].propose(command.as_bytes().to_vec()) {
            Ok(_) => return Ok(()),
            Err(BlockingError::Node(NodeError::NotLeader { leader })) => {
                target =
                    leader.and_then(|id| nodes.iter().position(|node| node.id() == id)).unwrap_or(target + 1);
                if leader.is_none() {
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Err(BlockingError::Node(NodeError::Dropped)) => {}
            Err(error) => return Err(error.into()),
        }
        if Instant::now() > deadline {
            bail!("{command}: no leader took it within {WAIT:?}");
        }
    }
}
