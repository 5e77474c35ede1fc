//! Requests a node must refuse: each gets a clear, typed error, and the
//! cluster keeps running with nothing lost.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use octopii::{Config, NodeError, OctopiiError, OctopiiNode, OctopiiRuntime};

async fn cluster(root: &std::path::Path) -> Vec<OctopiiNode> {
    let addresses: Vec<SocketAddr> =
        (0..3).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let config = Config {
            node_id: id,
            bind_addr: addresses[id as usize - 1],
            peer_ids: (1..=3u64)
                .filter(|&peer| peer != id)
                .map(|peer| (peer, addresses[peer as usize - 1]))
                .collect(),
            wal_dir: root.join(format!("node-{id}")),
            ..Config::default()
        };
        let node = OctopiiNode::new(config, OctopiiRuntime::from_handle(tokio::runtime::Handle::current()))
            .await
            .unwrap();
        node.start().await.unwrap();
        nodes.push(node);
    }
    nodes
}

async fn leader_index(nodes: &[OctopiiNode]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for (index, node) in nodes.iter().enumerate() {
            if node.is_leader().await {
                return index;
            }
        }
        assert!(Instant::now() < deadline, "a leader within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_get_clear_errors_and_the_cluster_goes_on() {
    // Where the test got to, for the output of a run that hangs (one did,
    // once, under load; nextest ends it after 10 minutes).
    let started = Instant::now();
    let step = |what: &str| eprintln!("[{:.2?}] {what}", started.elapsed());
    let root = tempfile::tempdir().unwrap();
    let nodes = cluster(root.path()).await;
    step("cluster started");
    let leader = &nodes[leader_index(&nodes).await];
    step("leader found");
    leader.propose(b"SET before bad-input".to_vec()).await.unwrap();

    // A proposal on a follower names the leader.
    let follower = nodes.iter().find(|node| node.id() != leader.id()).unwrap();
    match follower.propose(b"SET on follower".to_vec()).await {
        Err(OctopiiError::Node(NodeError::NotLeader { leader: Some(id) })) => assert_eq!(id, leader.id()),
        other => panic!("propose on a follower: {other:?}"),
    }
    // A linearizable read on a follower asks the leader for the read index.
    assert_eq!(follower.linearizable_query(b"GET before").await.unwrap(), "bad-input");
    assert!(matches!(
        follower.is_learner_caught_up(2).await,
        Err(OctopiiError::Node(NodeError::NotLeader { .. }))
    ));

    step("follower answers checked");
    // Unknown node ids.
    assert!(matches!(leader.promote_learner(99).await, Err(OctopiiError::NodeNotFound(99))));
    assert!(matches!(leader.is_learner_caught_up(99).await, Err(OctopiiError::NodeNotFound(99))));
    assert!(matches!(leader.remove_node(99).await, Err(OctopiiError::Node(NodeError::UnknownPeer(99)))));
    assert!(leader.transfer_leader(99).await.is_err());
    assert!(leader.force_snapshot_to_peer(99).await.is_err());
    assert_eq!(leader.peer_progress(99).await, None);

    step("unknown ids checked");
    // Commands the state machine refuses, and one too large to propose.
    let rejected = leader.propose(b"FROB x".to_vec()).await;
    assert!(matches!(rejected, Err(OctopiiError::Rejected(_))), "{rejected:?}");
    let huge = leader.propose(vec![b'x'; 64 << 20]).await;
    assert!(matches!(huge, Err(OctopiiError::Node(NodeError::TooLarge { .. }))), "{huge:?}");

    step("refusals checked");
    // The cluster goes on, with everything acknowledged before.
    leader.propose(b"SET after bad-input".to_vec()).await.unwrap();
    for node in &nodes {
        let deadline = Instant::now() + Duration::from_secs(10);
        while node.query(b"GET after").await.unwrap() != "bad-input" {
            assert!(Instant::now() < deadline, "node {} applies the last write", node.id());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(node.query(b"GET before").await.unwrap(), "bad-input");
        assert_eq!(node.conf_state().await.voters, [1, 2, 3]);
    }
    step("last write applied everywhere");
    for node in &nodes {
        node.shutdown();
    }
    step("nodes shut down");
    assert!(matches!(leader.propose(b"SET late x".to_vec()).await, Err(OctopiiError::Shutdown)));
    assert!(matches!(leader.status().await, Err(OctopiiError::Shutdown)));
}
