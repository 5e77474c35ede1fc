//! The examples of the spec's API documentation, as written there except
//! for imports, each `main` turned into a function a test calls, and checks
//! of what the spec says should happen. They bind the spec's fixed ports
//! (127.0.0.1:5000-5003), so nextest runs them one at a time (see
//! `.config/nextest.toml`); each runs in a temporary directory, where the
//! spec's relative `./data/...` paths land. Run them with nextest: under
//! `cargo test` they would share one process and one working directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use bytes::Bytes;
use octopii::{Config, OctopiiError, OctopiiNode, OctopiiRuntime, Result, StateMachineTrait};
use tokio::time::{Duration, sleep};

type Outcome = std::result::Result<(), Box<dyn std::error::Error>>;

/// Runs the test in a fresh temporary directory.
fn in_temp_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    dir
}

/// Polls `check` until it holds, for at most 10 s.
async fn eventually<F: AsyncFn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        sleep(Duration::from_millis(50)).await;
    }
}

// Quick Example: node 1 lists a peer that never starts; it is the
// initial leader of a cluster of one and commits at once.
async fn quick_example() -> Outcome {
    // Create runtime
    let runtime = OctopiiRuntime::new(4);

    // Configure node
    let config = Config {
        node_id: 1,
        bind_addr: "127.0.0.1:5001".parse()?,
        peers: vec!["127.0.0.1:5002".parse()?],
        wal_dir: "./data/node1".into(),
        is_initial_leader: true,
        ..Default::default()
    };

    // Create and start node
    let node = OctopiiNode::new(config, runtime).await?;
    node.start().await?;

    // Propose a command
    let response = node.propose(b"SET key value".to_vec()).await?;
    println!("Response: {:?}", response);
    assert_eq!(response, Bytes::from_static(b"OK"));

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quick_example_commits_with_its_peer_down() {
    let _dir = in_temp_dir();
    quick_example().await.unwrap();
}

// Example 1: Single-Node Setup.
async fn single_node() -> Outcome {
    let runtime = OctopiiRuntime::new(4);

    let config = Config {
        node_id: 1,
        bind_addr: "127.0.0.1:5000".parse()?,
        peers: vec![],
        is_initial_leader: true,
        ..Default::default()
    };

    let node = OctopiiNode::new(config, runtime).await?;
    node.start().await?;

    // Write
    node.propose(b"SET key1 value1".to_vec()).await?;

    // Read
    let value = node.query(b"GET key1").await?;
    println!("Value: {:?}", String::from_utf8(value.to_vec()));
    assert_eq!(value, Bytes::from_static(b"value1"));

    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_node_writes_and_reads() {
    let _dir = in_temp_dir();
    single_node().await.unwrap();
}

// Example 2: Three-Node Cluster.
async fn start_node(
    node_id: u64,
    port: u16,
    is_leader: bool,
) -> std::result::Result<OctopiiNode, Box<dyn std::error::Error>> {
    let runtime = OctopiiRuntime::new(4);

    let mut peers = vec!["127.0.0.1:5001".parse()?, "127.0.0.1:5002".parse()?, "127.0.0.1:5003".parse()?];

    // Remove self from peers
    let self_addr: SocketAddr = format!("127.0.0.1:{}", port).parse()?;
    peers.retain(|&addr| addr != self_addr);

    let config = Config {
        node_id,
        bind_addr: self_addr,
        peers,
        wal_dir: PathBuf::from(format!("./data/node{}", node_id)),
        is_initial_leader: is_leader,
        ..Default::default()
    };

    let node = OctopiiNode::new(config, runtime).await?;
    node.start().await?;

    Ok(node)
}

async fn three_nodes() -> Outcome {
    // Start three nodes
    let node1 = start_node(1, 5001, true).await?; // Leader
    let node2 = start_node(2, 5002, false).await?;
    let node3 = start_node(3, 5003, false).await?;

    // Wait for cluster to stabilize
    tokio::time::sleep(tokio::time::Duration::from_secs(2)).await;

    // Propose on leader
    node1.propose(b"SET key value".to_vec()).await?;

    // Query from follower
    let value = node2.query(b"GET key").await?;
    println!("Value from follower: {:?}", String::from_utf8(value.to_vec()));

    // What the spec implies: the three form one cluster of three voters,
    // and the followers apply the write.
    eventually("three voters", async || node1.conf_state().await.voters == [1, 2, 3]).await;
    for follower in [&node2, &node3] {
        eventually("the write on a follower", async || {
            follower.query(b"GET key").await.is_ok_and(|value| value == "value")
        })
        .await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_from_addresses_form_one_cluster() {
    let _dir = in_temp_dir();
    three_nodes().await.unwrap();
}

// Example 3: Dynamic Membership. The spec leaves `create_node` to the
// reader: here nodes 1 and 2 know each other's address, node 3 is added by
// hand.
async fn create_node(
    node_id: u64,
    port: u16,
    is_leader: bool,
) -> std::result::Result<OctopiiNode, Box<dyn std::error::Error>> {
    let mut peers: Vec<SocketAddr> = vec!["127.0.0.1:5001".parse()?, "127.0.0.1:5002".parse()?];
    let self_addr: SocketAddr = format!("127.0.0.1:{}", port).parse()?;
    peers.retain(|&addr| addr != self_addr);
    let config = Config {
        node_id,
        bind_addr: self_addr,
        peers,
        wal_dir: PathBuf::from(format!("./data/node{}", node_id)),
        is_initial_leader: is_leader,
        ..Default::default()
    };
    let node = OctopiiNode::new(config, OctopiiRuntime::new(2)).await?;
    node.start().await?;
    Ok(node)
}

async fn dynamic_membership() -> Outcome {
    // Start initial cluster (nodes 1 and 2)
    let node1 = create_node(1, 5001, true).await?;
    let _node2 = create_node(2, 5002, false).await?;

    sleep(Duration::from_secs(1)).await;

    // Add node 3 as learner
    let node3_addr: SocketAddr = "127.0.0.1:5003".parse()?;
    node1.add_learner(3, node3_addr).await?;

    // Start node 3
    let _node3 = create_node(3, 5003, false).await?;

    // Wait for node 3 to catch up
    loop {
        if node1.is_learner_caught_up(3).await? {
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }

    // Promote node 3 to voter
    node1.promote_learner(3).await?;
    println!("Node 3 is now a voting member");

    assert!(node1.conf_state().await.voters.contains(&3));
    eventually("node 2 a voter too", async || node1.conf_state().await.voters == [1, 2, 3]).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_learner_added_by_hand_catches_up_and_is_promoted() {
    let _dir = in_temp_dir();
    dynamic_membership().await.unwrap();
}

// Example 4: Custom State Machine (the registry).
struct RegistryStateMachine {
    registry: RwLock<HashMap<String, String>>,
}

impl StateMachineTrait for RegistryStateMachine {
    fn apply(&self, command: &[u8]) -> std::result::Result<Bytes, String> {
        let cmd_str = String::from_utf8(command.to_vec()).map_err(|e| e.to_string())?;

        let parts: Vec<&str> = cmd_str.split_whitespace().collect();

        match parts.first().copied() {
            Some("REGISTER") if parts.len() == 3 => {
                let key = parts[1].to_string();
                let value = parts[2].to_string();
                self.registry.write().unwrap().insert(key, value);
                Ok(Bytes::from("REGISTERED"))
            }
            Some("LOOKUP") if parts.len() == 2 => {
                let key = parts[1];
                match self.registry.read().unwrap().get(key) {
                    Some(value) => Ok(Bytes::from(value.clone())),
                    None => Ok(Bytes::from("NOT_FOUND")),
                }
            }
            _ => Err("Invalid command".into()),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let registry = self.registry.read().unwrap();
        serde_json::to_vec(&*registry).unwrap()
    }

    fn restore(&self, data: &[u8]) -> std::result::Result<(), String> {
        let registry: HashMap<String, String> = serde_json::from_slice(data).map_err(|e| e.to_string())?;
        *self.registry.write().unwrap() = registry;
        Ok(())
    }
}

async fn registry() -> Outcome {
    let runtime = OctopiiRuntime::new(4);
    let config = Config::default();

    let sm = Arc::new(RegistryStateMachine { registry: RwLock::new(HashMap::new()) });

    let node = OctopiiNode::new_with_state_machine(config, runtime, sm).await?;
    node.start().await?;

    // Register a service
    node.propose(b"REGISTER api-server 192.168.1.100".to_vec()).await?;

    // Lookup a service
    let addr = node.query(b"LOOKUP api-server").await?;
    println!("API Server: {}", String::from_utf8(addr.to_vec())?);
    assert_eq!(addr, "192.168.1.100");

    // A command the state machine refuses is an error; the node goes on.
    let refused = node.propose(b"UNREGISTER api-server".to_vec()).await;
    assert!(matches!(refused, Err(OctopiiError::Rejected(ref message)) if message == "Invalid command"));
    assert_eq!(node.query(b"LOOKUP api-server").await?, "192.168.1.100");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_state_machine_runs_through_a_node() {
    let _dir = in_temp_dir();
    registry().await.unwrap();
}

// The counter of "Custom State Machine Example".
/// A counter: `INCREMENT`, `DECREMENT`, `GET`.
pub struct CounterStateMachine {
    counter: RwLock<i64>,
}

#[allow(clippy::new_without_default)] // as the spec writes it
impl CounterStateMachine {
    /// A counter at zero.
    pub fn new() -> Self {
        Self { counter: RwLock::new(0) }
    }
}

impl StateMachineTrait for CounterStateMachine {
    fn apply(&self, command: &[u8]) -> std::result::Result<Bytes, String> {
        let cmd = String::from_utf8(command.to_vec()).map_err(|e| e.to_string())?;

        match cmd.as_str() {
            "INCREMENT" => {
                let mut counter = self.counter.write().unwrap();
                *counter += 1;
                Ok(Bytes::from(counter.to_string()))
            }
            "DECREMENT" => {
                let mut counter = self.counter.write().unwrap();
                *counter -= 1;
                Ok(Bytes::from(counter.to_string()))
            }
            "GET" => {
                let counter = self.counter.read().unwrap();
                Ok(Bytes::from(counter.to_string()))
            }
            _ => Err("Unknown command".into()),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        let counter = self.counter.read().unwrap();
        counter.to_le_bytes().to_vec()
    }

    fn restore(&self, data: &[u8]) -> std::result::Result<(), String> {
        if data.len() != 8 {
            return Err("Invalid snapshot data".into());
        }
        let bytes: [u8; 8] = data.try_into().map_err(|_| "Invalid snapshot data")?;
        *self.counter.write().unwrap() = i64::from_le_bytes(bytes);
        Ok(())
    }
}

async fn counter() -> Outcome {
    let runtime = OctopiiRuntime::new(2);
    let config = Config { is_initial_leader: true, ..Config::default() };
    let sm = Arc::new(CounterStateMachine::new());
    let node = OctopiiNode::new_with_state_machine(config, runtime, sm).await?;
    node.start().await?;

    assert_eq!(node.propose(b"INCREMENT".to_vec()).await?, "1"); // Returns "1"
    assert_eq!(node.propose(b"INCREMENT".to_vec()).await?, "2"); // Returns "2"
    let count = node.query(b"GET").await?; // Returns "2"
    assert_eq!(count, "2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_counter_state_machine_counts_through_a_node() {
    let _dir = in_temp_dir();
    counter().await.unwrap();
}

// Example 5: Error Handling and Retries. `create_node` is the reader's:
// here a single node.
async fn propose_with_retry(node: &OctopiiNode, command: Vec<u8>, max_retries: usize) -> Result<Bytes> {
    let mut retry_delay = Duration::from_millis(100);

    for attempt in 0..max_retries {
        match node.propose(command.clone()).await {
            Ok(response) => return Ok(response),
            Err(OctopiiError::Rpc(msg)) if attempt + 1 < max_retries => {
                eprintln!("RPC error (attempt {}): {}", attempt + 1, msg);
                sleep(retry_delay).await;
                retry_delay *= 2; // Exponential backoff
            }
            Err(e) => return Err(e),
        }
    }

    Err(OctopiiError::Rpc("Max retries exceeded".into()))
}

async fn retries() -> Outcome {
    let node = OctopiiNode::new(Config::default(), OctopiiRuntime::new(2)).await?;
    node.start().await?;

    match propose_with_retry(&node, b"SET key value".to_vec(), 3).await {
        Ok(response) => println!("Success: {:?}", response),
        Err(e) => eprintln!("Failed after retries: {:?}", e),
    }
    assert_eq!(node.query(b"GET key").await?, "value");

    // After shutdown, requests fail clearly; the port and log are free.
    node.shutdown();
    assert!(matches!(node.propose(b"SET key other".to_vec()).await, Err(OctopiiError::Shutdown)));
    let reopened = OctopiiNode::new(Config::default(), OctopiiRuntime::new(2)).await?;
    reopened.start().await?;
    assert_eq!(reopened.query(b"GET key").await?, "value", "the write survived the restart");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_shutdown_and_reopen_on_the_same_log() {
    let _dir = in_temp_dir();
    retries().await.unwrap();
}
