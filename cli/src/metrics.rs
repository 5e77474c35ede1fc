//! The node's figures in Prometheus text format, over plain HTTP.

use std::sync::Arc;

use octopii::OctopiiNode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Answers every connection with the node's current figures.
pub async fn serve(listener: TcpListener, node: Arc<OctopiiNode>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let node = node.clone();
        tokio::spawn(async move {
            // The request line is not needed: every path gets the figures.
            let mut request = [0; 1024];
            let _ = stream.read(&mut request).await;
            let body = render(&node).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

async fn render(node: &OctopiiNode) -> String {
    let Ok(status) = node.status().await else {
        return "# the node has stopped\n".to_owned();
    };
    let id = status.id;
    let mut text = String::new();
    let mut gauge = |name: &str, help: &str, value: u64| {
        text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{node=\"{id}\"}} {value}\n"
        ));
    };
    gauge("octopii_term", "Current Raft term.", status.term);
    gauge("octopii_is_leader", "1 if this node leads.", u64::from(status.is_leader()));
    gauge("octopii_commit_index", "Highest committed log index known here.", status.commit);
    gauge("octopii_applied_index", "Highest log index applied here.", status.applied);
    gauge("octopii_voters", "Voting members.", status.voters.len() as u64);
    gauge("octopii_learners", "Learners.", status.learners.len() as u64);
    text
}
