//! Three nodes on loopback in this process: a workload, the leader stopped
//! and restarted, every write checked. Keys are 8 bytes: a prefix and the
//! write's number.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use octopii::{Config, NodeError, OctopiiError, OctopiiNode, OctopiiRuntime};

const NODES: [u64; 3] = [1, 2, 3];
const WAIT: Duration = Duration::from_secs(10);
/// Keys one workload writes: write `n` sets key `n % KEYS`, so the state
/// stays a few MiB however long a benchmark runs.
const KEYS: usize = 10_000;

/// Runs the demo.
pub async fn run(writes: usize, clients: usize) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let configs = configs(root.path())?;
    println!("starting {} nodes on loopback, logs in {}", NODES.len(), root.path().display());
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(Some(Arc::new(open(config).await?)));
    }
    let leader = wait_for_leader(&nodes).await?;
    println!("node {leader} leads");

    let started = Instant::now();
    let mut latencies = workload(&nodes, writes, clients.max(1), "a", "v").await?;
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    let percentile = |p: usize| latencies[(latencies.len() * p / 100).min(latencies.len() - 1)];
    println!(
        "{writes} durable writes from {clients} clients in {elapsed:.2?}: {:.0} writes/s, p50 {:?}, p99 {:?}",
        writes as f64 / elapsed.as_secs_f64(),
        percentile(50),
        percentile(99),
    );

    let index = NODES.iter().position(|&id| id == leader).expect("the leader is one of them");
    nodes[index].take().expect("running").shutdown();
    println!("stopped the leader, node {leader}");
    let successor = wait_for_leader(&nodes).await?;
    println!("node {successor} leads now");
    workload(&nodes, 100, 4, "b", "v").await?;
    println!("100 more writes with node {leader} down");

    nodes[index] = Some(Arc::new(open(&configs[index]).await?));
    println!("restarted node {leader} on its log");
    let restarted = nodes[index].clone().expect("just opened");
    let deadline = Instant::now() + WAIT;
    while restarted.query(b"GET b0000099").await? != "v" {
        if Instant::now() > deadline {
            bail!("node {leader} did not catch up within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for node in nodes.iter().flatten() {
        for key in [format!("GET a{:0>7}", (writes - 1) % KEYS), "GET b0000000".to_owned()] {
            let value = node.query(key.as_bytes()).await?;
            if value != "v" {
                bail!("node {} answers {key} with {value:?}", node.id());
            }
        }
    }
    println!("node {leader} caught up; every node holds every write");
    for node in nodes.into_iter().flatten() {
        node.shutdown();
    }
    Ok(())
}

/// Configurations of a three-voter cluster on free loopback ports.
pub fn configs(root: &Path) -> anyhow::Result<Vec<Config>> {
    let addresses: Vec<SocketAddr> = NODES
        .iter()
        .map(|_| UdpSocket::bind("127.0.0.1:0").and_then(|socket| socket.local_addr()))
        .collect::<Result<_, _>>()?;
    Ok(NODES
        .iter()
        .zip(&addresses)
        .map(|(&id, &bind_addr)| Config {
            node_id: id,
            bind_addr,
            peer_ids: NODES
                .iter()
                .zip(&addresses)
                .filter(|&(&peer, _)| peer != id)
                .map(|(&peer, &address)| (peer, address))
                .collect(),
            wal_dir: root.join(format!("node-{id}")),
            ..Config::default()
        })
        .collect())
}

pub async fn open(config: &Config) -> anyhow::Result<OctopiiNode> {
    let runtime = OctopiiRuntime::from_handle(tokio::runtime::Handle::current());
    let node = OctopiiNode::new(config.clone(), runtime)
        .await
        .with_context(|| format!("node {}", config.node_id))?;
    node.start().await?;
    Ok(node)
}

pub async fn wait_for_leader(nodes: &[Option<Arc<OctopiiNode>>]) -> anyhow::Result<u64> {
    let deadline = Instant::now() + WAIT;
    loop {
        for node in nodes.iter().flatten() {
            if node.is_leader().await {
                return Ok(node.id());
            }
        }
        if Instant::now() > deadline {
            bail!("no leader within {WAIT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `<prefix><n % KEYS>` = `value` for n below `writes`, from `clients`
/// tasks, each write to the leader (retried on another after a change of
/// leader); the latency of each.
pub async fn workload(
    nodes: &[Option<Arc<OctopiiNode>>],
    writes: usize,
    clients: usize,
    prefix: &str,
    value: &str,
) -> anyhow::Result<Vec<Duration>> {
    let running: Vec<Arc<OctopiiNode>> = nodes.iter().flatten().cloned().collect();
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let (running, prefix, value) = (running.clone(), prefix.to_owned(), value.to_owned());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            let mut target = 0;
            for index in (client..writes).step_by(clients) {
                let key = index % KEYS;
                let command =
                    format!("SET {prefix}{key:0>width$} {value}", width = 8 - prefix.len()).into_bytes();
                let started = Instant::now();
                write(&running, &mut target, command).await?;
                latencies.push(started.elapsed());
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies = Vec::with_capacity(writes);
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done??);
    }
    Ok(latencies)
}

/// Writes `command` through `nodes[*target]`, following not-leader answers;
/// `target` is left at the node that took it, where the next write goes.
async fn write(nodes: &[Arc<OctopiiNode>], target: &mut usize, command: Vec<u8>) -> anyhow::Result<()> {
    let deadline = Instant::now() + WAIT;
    loop {
        match nodes[*target % nodes.len()].propose(command.clone()).await {
            Ok(_) => return Ok(()),
            Err(OctopiiError::Node(NodeError::NotLeader { leader })) => {
                *target = leader
                    .and_then(|leader| nodes.iter().position(|node| node.id() == leader))
                    .unwrap_or(*target + 1);
                if leader.is_none() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Err(OctopiiError::Node(NodeError::Dropped)) => {}
            Err(error) => return Err(error.into()),
        }
        if Instant::now() > deadline {
            bail!("no leader took the write within {WAIT:?}");
        }
    }
}
