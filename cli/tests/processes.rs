//! The `octopii` binary as an operator runs it: three node processes on
//! loopback from TOML files, written to with `octopii kv`, all killed at
//! once (SIGKILL, no shutdown) and started again: every acknowledged write
//! is still there. Also: a malformed config is refused with the field
//! named, and a status command shows the cluster.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BINARY: &str = env!("CARGO_BIN_EXE_octopii");

fn free_addresses(count: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..count).map(|_| UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
    sockets.iter().map(|socket| socket.local_addr().unwrap()).collect()
}

fn write_config(root: &Path, id: u64, addresses: &[SocketAddr]) -> std::path::PathBuf {
    let mut text = format!(
        "node_id = {id}\nbind_addr = \"{}\"\nwal_dir = \"{}\"\n[peer_ids]\n",
        addresses[id as usize - 1],
        root.join(format!("node-{id}")).display()
    );
    for (index, address) in addresses.iter().enumerate() {
        let peer = index as u64 + 1;
        if peer != id {
            text.push_str(&format!("{peer} = \"{address}\"\n"));
        }
    }
    let path = root.join(format!("node-{id}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn start_node(config: &Path) -> Child {
    Command::new(BINARY)
        .args(["node", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn octopii(root: &Path, addresses: &[SocketAddr], args: &[&str]) -> Output {
    let peers: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    let (group, rest) = args.split_first().unwrap();
    Command::new(BINARY)
        .arg(group)
        .arg("--peers")
        .arg(peers.join(","))
        .arg("--cluster-dir")
        .arg(root)
        .args(rest)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn a_killed_cluster_of_processes_keeps_every_acknowledged_write() {
    let root = tempfile::tempdir().unwrap();
    let addresses = free_addresses(3);
    let configs: Vec<_> = (1..=3).map(|id| write_config(root.path(), id, &addresses)).collect();
    let mut nodes: Vec<Child> = configs.iter().map(|config| start_node(config)).collect();

    let mut acknowledged = Vec::new();
    for index in 0..12 {
        let (key, value) = (format!("key{index}"), format!("value{index}"));
        let output = octopii(root.path(), &addresses, &["kv", "put", &key, &value]);
        assert!(output.status.success(), "put {key}: {}", String::from_utf8_lossy(&output.stderr));
        assert_eq!(stdout(&output), "OK");
        acknowledged.push((key, value));
    }
    let status = octopii(root.path(), &addresses, &["cluster", "status"]);
    assert!(status.status.success());
    assert!(stdout(&status).contains("leader"), "{}", stdout(&status));

    for node in &mut nodes {
        node.kill().unwrap();
        node.wait().unwrap();
    }
    let mut nodes: Vec<Child> = configs.iter().map(|config| start_node(config)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for (key, value) in &acknowledged {
        loop {
            let output = octopii(root.path(), &addresses, &["kv", "get", key]);
            if output.status.success() {
                assert_eq!(&stdout(&output), value, "{key} after the restart");
                break;
            }
            assert!(Instant::now() < deadline, "get {key}: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
    let deleted = octopii(root.path(), &addresses, &["kv", "delete", "key0"]);
    assert_eq!(stdout(&deleted), "OK");
    assert_eq!(stdout(&octopii(root.path(), &addresses, &["kv", "get", "key0"])), "NOT_FOUND");
    for node in &mut nodes {
        node.kill().unwrap();
        node.wait().unwrap();
    }
}

#[test]
fn a_malformed_config_is_refused_with_the_field_named() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("bad.toml");
    std::fs::write(&path, "node_id = 1\nbind_adr = \"127.0.0.1:5000\"\n").unwrap();
    let output = Command::new(BINARY).args(["node", "--config"]).arg(&path).output().unwrap();
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("bind_adr"), "{error}");

    std::fs::write(&path, "node_id = 0\n").unwrap();
    let output = Command::new(BINARY).args(["node", "--config"]).arg(&path).output().unwrap();
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && error.contains("node_id"), "{error}");
}

#[test]
fn a_node_serves_its_figures_as_prometheus_text() {
    use std::io::{Read, Write};
    let root = tempfile::tempdir().unwrap();
    let address = free_addresses(1)[0];
    let config = root.path().join("node.toml");
    let text = format!(
        "node_id = 1\nbind_addr = \"{address}\"\nwal_dir = \"{}\"\n",
        root.path().join("node-1").display()
    );
    std::fs::write(&config, text).unwrap();
    let metrics = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut node = Command::new(BINARY)
        .args(["node", "--config"])
        .arg(&config)
        .arg("--metrics-addr")
        .arg(metrics.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let answer = std::net::TcpStream::connect(metrics).and_then(|mut stream| {
            stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: node\r\n\r\n")?;
            let mut body = String::new();
            stream.read_to_string(&mut body)?;
            Ok(body)
        });
        match answer {
            Ok(body) if body.contains("octopii_is_leader{node=\"1\"} 1") => break body,
            _ => assert!(Instant::now() < deadline, "metrics within 15 s: {answer:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("# TYPE octopii_commit_index gauge"), "{body}");
    node.kill().unwrap();
    node.wait().unwrap();
}
