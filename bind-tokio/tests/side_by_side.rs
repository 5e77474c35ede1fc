//! One scripted scenario on both bindings: the tokio `OctopiiNode` and the
//! blocking `octopii_mio::BlockingNode`. Three nodes take writes, lose
//! their leader, get it back, gain a fourth node (learner, then voter),
//! lose the third by removal, and serve reads; both bindings must end in
//! the same state, the one the script expects.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use octopii::{Config, OctopiiError, OctopiiNode, OctopiiRuntime};
use octopii_mio::{BlockingError, BlockingNode};

/// What the script needs of a node, blocking.
trait ScriptNode: Sized {
    fn open(config: &Config) -> Self;
    fn propose(&self, command: &str) -> Result<(), String>;
    fn read(&self, key: &str) -> Option<String>;
    fn linearizable_read(&self, key: &str) -> Result<String, String>;
    fn is_leader(&self) -> bool;
    fn voters(&self) -> Vec<u64>;
    fn add_learner(&self, id: u64, address: SocketAddr) -> Result<(), String>;
    fn caught_up(&self, id: u64) -> bool;
    fn promote(&self, id: u64) -> Result<(), String>;
    fn remove(&self, id: u64) -> Result<(), String>;
    fn stop(self);
}

struct Tokio {
    node: OctopiiNode,
    runtime: OctopiiRuntime,
}

fn text(error: impl std::fmt::Display) -> String {
    error.to_string()
}

impl ScriptNode for Tokio {
    fn open(config: &Config) -> Self {
        let runtime = OctopiiRuntime::new(1);
        let node = runtime.handle().block_on(async {
            let node = OctopiiNode::new(config.clone(), runtime.clone()).await.unwrap();
            node.start().await.unwrap();
            node
        });
        Self { node, runtime }
    }
    fn propose(&self, command: &str) -> Result<(), String> {
        self.runtime.handle().block_on(self.node.propose(command.as_bytes().to_vec())).map(drop).map_err(text)
    }
    fn read(&self, key: &str) -> Option<String> {
        let value = self.runtime.handle().block_on(self.node.query(format!("GET {key}").as_bytes())).ok()?;
        Some(String::from_utf8_lossy(&value).into_owned())
    }
    fn linearizable_read(&self, key: &str) -> Result<String, String> {
        let query = format!("GET {key}");
        let value =
            self.runtime.handle().block_on(self.node.linearizable_query(query.as_bytes())).map_err(text)?;
        Ok(String::from_utf8_lossy(&value).into_owned())
    }
    fn is_leader(&self) -> bool {
        self.runtime.handle().block_on(self.node.is_leader())
    }
    fn voters(&self) -> Vec<u64> {
        self.runtime.handle().block_on(self.node.conf_state()).voters
    }
    fn add_learner(&self, id: u64, address: SocketAddr) -> Result<(), String> {
        self.runtime.handle().block_on(self.node.add_learner(id, address)).map_err(text)
    }
    fn caught_up(&self, id: u64) -> bool {
        matches!(self.runtime.handle().block_on(self.node.is_learner_caught_up(id)), Ok(true))
    }
    fn promote(&self, id: u64) -> Result<(), String> {
        self.runtime.handle().block_on(self.node.promote_learner(id)).map_err(text)
    }
    fn remove(&self, id: u64) -> Result<(), String> {
        self.runtime.handle().block_on(self.node.remove_node(id)).map_err(|error: OctopiiError| text(error))
    }
    fn stop(self) {
        self.node.shutdown();
    }
}

impl ScriptNode for BlockingNode {
    fn open(config: &Config) -> Self {
        let node = BlockingNode::new(config).unwrap();
        node.start().unwrap();
        node
    }
    fn propose(&self, command: &str) -> Result<(), String> {
        BlockingNode::propose(self, command.as_bytes().to_vec()).map(drop).map_err(text)
    }
    fn read(&self, key: &str) -> Option<String> {
        let value = self.query(format!("GET {key}").as_bytes()).ok()?;
        Some(String::from_utf8_lossy(&value).into_owned())
    }
    fn linearizable_read(&self, key: &str) -> Result<String, String> {
        let value = self.linearizable_query(format!("GET {key}").as_bytes()).map_err(text)?;
        Ok(String::from_utf8_lossy(&value).into_owned())
    }
    fn is_leader(&self) -> bool {
        BlockingNode::is_leader(self)
    }
    fn voters(&self) -> Vec<u64> {
        self.status().map(|status| status.voters).unwrap_or_default()
    }
    fn add_learner(&self, id: u64, address: SocketAddr) -> Result<(), String> {
        BlockingNode::add_learner(self, id, address).map_err(text)
    }
    fn caught_up(&self, id: u64) -> bool {
        matches!(self.is_learner_caught_up(id), Ok(true))
    }
    fn promote(&self, id: u64) -> Result<(), String> {
        self.promote_learner(id).map_err(text)
    }
    fn remove(&self, id: u64) -> Result<(), String> {
        self.remove_node(id).map_err(|error: BlockingError| text(error))
    }
    fn stop(self) {
        self.shutdown();
    }
}

const WAIT: Duration = Duration::from_secs(15);

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn address(base: u16, id: u64) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], base + id as u16))
}

fn config(root: &Path, base: u16, id: u64) -> Config {
    let members = [1, 2, 3].into_iter().filter(|&peer| peer != id);
    Config {
        node_id: id,
        bind_addr: address(base, id),
        peer_ids: members.map(|peer| (peer, address(base, peer))).collect(),
        wal_dir: root.join(format!("node-{id}")),
        ..Config::default()
    }
}

fn leader<N: ScriptNode>(nodes: &BTreeMap<u64, N>) -> u64 {
    let mut found = None;
    wait_for("a leader", || {
        found = nodes.iter().find(|(_, node)| node.is_leader()).map(|(&id, _)| id);
        found.is_some()
    });
    found.expect("waited for it")
}

/// Retries on another leader until the write is acknowledged.
fn write<N: ScriptNode>(nodes: &BTreeMap<u64, N>, command: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match nodes[&leader(nodes)].propose(command) {
            Ok(()) => return,
            Err(error) => assert!(Instant::now() < deadline, "{command}: {error}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The script; returns every live node's view of every key, and the
/// voters.
fn scenario<N: ScriptNode>(base: u16) -> (BTreeMap<u64, BTreeMap<String, String>>, Vec<u64>) {
    let root = tempfile::tempdir().unwrap();
    let mut nodes: BTreeMap<u64, N> =
        [1, 2, 3].map(|id| (id, N::open(&config(root.path(), base, id)))).into();
    for index in 0..20 {
        write(&nodes, &format!("SET k{index} first-{index}"));
    }

    let old = leader(&nodes);
    nodes.remove(&old).unwrap().stop();
    for index in 10..30 {
        write(&nodes, &format!("SET k{index} second-{index}"));
    }
    write(&nodes, "DELETE k0");
    nodes.insert(old, N::open(&config(root.path(), base, old)));
    wait_for("the restarted node caught up", || nodes[&old].read("k29").as_deref() == Some("second-29"));

    // Node 4 joins by address: it waits to be added.
    let joining = Config {
        node_id: 4,
        bind_addr: address(base, 4),
        peers: vec![address(base, 1)],
        wal_dir: root.path().join("node-4"),
        ..Config::default()
    };
    nodes.insert(4, N::open(&joining));
    let id = leader(&nodes);
    nodes[&id].add_learner(4, address(base, 4)).unwrap();
    wait_for("node 4 caught up", || nodes[&leader(&nodes)].caught_up(4));
    nodes[&leader(&nodes)].promote(4).unwrap();
    // Node 3 leaves, whether it leads or not (a leader removing itself
    // steps down once the change applies).
    nodes[&leader(&nodes)].remove(3).unwrap();
    nodes.remove(&3).unwrap().stop();
    write(&nodes, "SET after removal");

    let keys: Vec<String> = (0..30).map(|index| format!("k{index}")).chain(["after".to_owned()]).collect();
    let id = leader(&nodes);
    for key in &keys {
        nodes[&id].linearizable_read(key).unwrap();
    }
    let mut views = BTreeMap::new();
    for (&id, node) in &nodes {
        wait_for(&format!("the last write on node {id}, voters {:?}", node.voters()), || {
            node.read("after").as_deref() == Some("removal")
        });
        let view = keys.iter().map(|key| (key.clone(), node.read(key).unwrap())).collect();
        views.insert(id, view);
    }
    let mut voters = nodes[&leader(&nodes)].voters();
    voters.sort_unstable();
    for (_, node) in nodes {
        node.stop();
    }
    (views, voters)
}

#[test]
fn tokio_and_mio_nodes_end_a_scripted_scenario_in_the_same_state() {
    let (tokio_views, tokio_voters) = scenario::<Tokio>(5100);
    let (mio_views, mio_voters) = scenario::<BlockingNode>(5200);

    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for index in 0..30 {
        let value = if index < 10 { format!("first-{index}") } else { format!("second-{index}") };
        expected.insert(format!("k{index}"), value);
    }
    expected.insert("k0".into(), "NOT_FOUND".into());
    expected.insert("after".into(), "removal".into());
    for view in tokio_views.values().chain(mio_views.values()) {
        assert_eq!(view, &expected);
    }
    assert_eq!(tokio_views.keys().collect::<Vec<_>>(), mio_views.keys().collect::<Vec<_>>());
    assert_eq!(tokio_voters, mio_voters);
    assert_eq!(tokio_voters.len(), 3);
    assert!(tokio_voters.contains(&4));
}
