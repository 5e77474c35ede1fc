//! Shipping Lane: verified transfers of large bodies between nodes.
//!
//! Three QUIC endpoints on 127.0.0.1. Node 1 sends a 64 MiB file to nodes 2
//! and 3 at once, each transfer on a stream of its own: the size, the body
//! (read from the file in bounded pieces), then its SHA-256. Each receiver
//! checks the digest before it hands the body over, and the sender's result
//! says whether it did. Here the receivers also hash what they got
//! themselves and compare with the file's digest. Then node 2 sends a body
//! from memory back to node 1, and a transfer of a missing file shows what
//! a failure looks like.
//!
//! ```sh
//! cargo run -p octopii-examples --example shipping_lane
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use octopii::chunk::ChunkSource;
use octopii::transport::{PeerConnection, QuicTransport};
use rand::RngCore;
use sha2::{Digest, Sha256};

const FILE_BYTES: usize = 64 << 20;
const MEMORY_BYTES: usize = 4 << 20;

/// Starts node `id` on a free port of 127.0.0.1. Its certificate comes from
/// the development CA that nodes with sibling directories in `root` share.
async fn start(root: &Path, id: u64) -> anyhow::Result<Arc<QuicTransport>> {
    let identity = octopii_mio::identity::load_identity(&root.join(format!("node-{id}")), id, None)?;
    let config = octopii_mio::identity::transport_config(id, identity);
    Ok(Arc::new(QuicTransport::new("127.0.0.1:0".parse()?, config).await?))
}

/// `bytes` of test data: one random MiB repeated, each copy stamped with
/// its position so that no two are alike (filling the whole body from the
/// generator is slow in a debug build).
fn body(bytes: usize) -> Vec<u8> {
    let mut block = vec![0; 1 << 20];
    rand::rng().fill_bytes(&mut block);
    let mut body = Vec::with_capacity(bytes);
    for (index, piece) in (0u64..).zip((0..bytes).step_by(block.len())) {
        block[..8].copy_from_slice(&index.to_le_bytes());
        body.extend_from_slice(&block[..block.len().min(bytes - piece)]);
    }
    body
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn mib_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / (1 << 20) as f64 / seconds.max(f64::EPSILON)
}

/// Waits for the next body from `peer` and checks it against `expected`.
async fn receive(node: u64, peer: Arc<PeerConnection>, expected: [u8; 32]) -> anyhow::Result<()> {
    let body = peer
        .recv_chunk_verified()
        .await?
        .ok_or_else(|| anyhow::anyhow!("node {node}: the transport closed before the body came"))?;
    let digest = sha256(&body);
    println!(
        "node {node} received {} MiB from node {}, SHA-256 {}…",
        body.len() >> 20,
        peer.peer_id(),
        &hex(&digest)[..16]
    );
    anyhow::ensure!(digest == expected, "node {node}: the body's SHA-256 differs from the sender's");
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let (one, two, three) =
        (start(root.path(), 1).await?, start(root.path(), 2).await?, start(root.path(), 3).await?);
    for node in [&one, &two, &three] {
        println!("node {} listening on {}", node.node_id(), node.local_addr());
    }

    // A file, and its digest for the receivers to compare.
    let contents = body(FILE_BYTES);
    let expected = sha256(&contents);
    let file = root.path().join("payload.bin");
    std::fs::write(&file, &contents)?;
    drop(contents);
    println!("wrote {} ({} MiB, SHA-256 {}…)", file.display(), FILE_BYTES >> 20, &hex(&expected)[..16]);

    // The receivers wait for node 1 to dial in: `accept` hands over the
    // link to the node that proved its identity. Bodies that arrive before
    // anyone asks for them wait in the link's inbox.
    let receivers: Vec<_> = [two.clone(), three.clone()]
        .into_iter()
        .map(|node| {
            tokio::spawn(async move {
                let (address, peer) = node.accept().await?;
                println!("node {} accepted node {} from {address}", node.node_id(), peer.peer_id());
                receive(node.node_id(), peer, expected).await
            })
        })
        .collect();

    // One call, both peers at once, one result per peer in order.
    let peers = [two.local_addr(), three.local_addr()];
    let results = one.transfer_chunk_to_peers(&ChunkSource::File(file.clone()), &peers).await;
    for result in &results {
        println!(
            "to {}: success {}, {} MiB, checksum verified {}, {:.2?} ({:.0} MiB/s)",
            result.peer,
            result.success,
            result.bytes_transferred >> 20,
            result.checksum_verified,
            result.duration,
            mib_per_s(result.bytes_transferred, result.duration.as_secs_f64()),
        );
        anyhow::ensure!(
            result.success && result.checksum_verified && result.bytes_transferred == FILE_BYTES as u64,
            "transfer to {} failed: {:?}",
            result.peer,
            result.error
        );
    }
    for receiver in receivers {
        receiver.await??;
    }

    // The other direction, from memory. There is one connection per pair
    // of nodes: `connect` returns the link that is already up, on both
    // sides.
    let two_to_one = two.connect(one.local_addr()).await?;
    let one_to_two = one.connect(two.local_addr()).await?;
    let body = Bytes::from(body(MEMORY_BYTES));
    let sending = Instant::now();
    let sent = two_to_one.send_chunk_verified(&ChunkSource::Memory(body.clone())).await?;
    println!("node 2 sent {} MiB from memory to node 1 in {:.2?}, verified", sent >> 20, sending.elapsed());
    anyhow::ensure!(sent == MEMORY_BYTES as u64, "node 1 verified {sent} bytes, not {MEMORY_BYTES}");
    receive(1, one_to_two, sha256(&body)).await?;

    // A failed transfer is a result with an error, not a panic; the link
    // stays up for what comes next.
    let missing = ChunkSource::File(root.path().join("missing.bin"));
    let failed = one.transfer_chunk_to_peers(&missing, &peers[..1]).await;
    println!("a missing file: success {}, error {:?}", failed[0].success, failed[0].error);
    anyhow::ensure!(!failed[0].success && failed[0].error.is_some(), "a missing file cannot be sent");

    for node in [one, two, three] {
        node.close().await;
    }
    println!("done in {:.2?}", started.elapsed());
    Ok(())
}
