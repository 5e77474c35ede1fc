//! RPC and a Shipping Lane transfer on one connection at the same time.
//!
//! Node 2 is a small file server. Node 1 asks it for a file with a `fetch`
//! request; the handler answers at once with the file's manifest (name,
//! size, SHA-256) and leaves the sending to a task of node 2's, which
//! pushes the file over a transfer stream. While the body travels, node 1
//! keeps sending `ping` requests on the same connection and they keep being
//! answered: a transfer takes a stream of its own and does not block the
//! messages beside it. At the end node 1 checks the body against the
//! manifest.
//!
//! ```sh
//! cargo run -p octopii-examples --example rpc_shipping_lane
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii::chunk::ChunkSource;
use octopii::rpc::{RequestPayload, ResponsePayload, RpcHandler, RpcRequest};
use octopii::transport::QuicTransport;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};

const FILE_BYTES: usize = 32 << 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What node 2 answers to `fetch`, before the body follows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Manifest {
    name: String,
    size_bytes: u64,
    sha256: [u8; 32],
}

async fn start(root: &Path, id: u64) -> anyhow::Result<Arc<QuicTransport>> {
    let identity = octopii_mio::identity::load_identity(&root.join(format!("node-{id}")), id, None)?;
    let config = octopii_mio::identity::transport_config(id, identity);
    Ok(Arc::new(QuicTransport::new("127.0.0.1:0".parse()?, config).await?))
}

/// A file of `bytes` bytes in `dir`: one random MiB repeated, each copy
/// stamped with its position (the whole from the generator is slow in a
/// debug build).
fn write_file(dir: &Path, bytes: usize) -> anyhow::Result<(PathBuf, Manifest)> {
    let mut block = vec![0; 1 << 20];
    rand::rng().fill_bytes(&mut block);
    let mut contents = Vec::with_capacity(bytes);
    for (index, piece) in (0u64..).zip((0..bytes).step_by(block.len())) {
        block[..8].copy_from_slice(&index.to_le_bytes());
        contents.extend_from_slice(&block[..block.len().min(bytes - piece)]);
    }
    let path = dir.join("dataset.bin");
    std::fs::write(&path, &contents)?;
    let manifest = Manifest {
        name: "dataset.bin".into(),
        size_bytes: bytes as u64,
        sha256: Sha256::digest(&contents).into(),
    };
    Ok((path, manifest))
}

/// Node 2's handler: it runs on the transport's task, so it only answers
/// and queues the transfer (an unbounded channel's `send` never waits).
fn handler(
    manifest: Manifest,
    transfers: mpsc::UnboundedSender<u64>,
) -> impl Fn(RpcRequest) -> ResponsePayload + Send + Sync + 'static {
    move |request| match request.payload {
        RequestPayload::Custom { operation, data } if operation == "fetch" => {
            if data != manifest.name.as_bytes() {
                return ResponsePayload::Error { message: "no such file".into() };
            }
            let Ok(data) = octopii::rpc::serialize(&manifest) else {
                return ResponsePayload::Error { message: "manifest does not encode".into() };
            };
            let _ = transfers.send(request.from);
            ResponsePayload::CustomResponse { success: true, data }
        }
        RequestPayload::Custom { operation, data } if operation == "ping" => {
            ResponsePayload::CustomResponse { success: true, data }
        }
        other => ResponsePayload::Error { message: format!("unknown request {other:?}") },
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let started = Instant::now();
    let (one, two) = (start(root.path(), 1).await?, start(root.path(), 2).await?);
    let (path, manifest) = write_file(root.path(), FILE_BYTES)?;

    // Node 2: the handler, and the task that sends what was asked for to
    // the node that asked, on the connection it came in on.
    let (transfers, mut wanted) = mpsc::unbounded_channel();
    RpcHandler::new(two.clone()).set_request_handler(handler(manifest.clone(), transfers)).await?;
    let sender = {
        let two = two.clone();
        tokio::spawn(async move {
            let (_, peer) = two.accept().await?;
            let requester = wanted.recv().await.ok_or_else(|| anyhow::anyhow!("no fetch came"))?;
            anyhow::ensure!(
                requester == peer.peer_id(),
                "node {requester} asked, node {} dialed",
                peer.peer_id()
            );
            let sent = peer.send_chunk_verified(&ChunkSource::File(path)).await?;
            println!("node 2 sent {} MiB, verified by node {requester}", sent >> 20);
            anyhow::Ok(sent)
        })
    };

    // Node 1 asks for the manifest; the first request also connects.
    let client = RpcHandler::new(one.clone());
    let fetch =
        RequestPayload::Custom { operation: "fetch".into(), data: Bytes::from(manifest.name.clone()) };
    let response = client.request(two.local_addr(), fetch, REQUEST_TIMEOUT).await?;
    let ResponsePayload::CustomResponse { success: true, data } = response.payload else {
        anyhow::bail!("fetch refused: {:?}", response.payload);
    };
    let announced: Manifest = octopii::rpc::deserialize(&data)?;
    println!("manifest: {} ({} MiB)", announced.name, announced.size_bytes >> 20);

    // Pings on the same connection until the body is in.
    let (done, mut receiving) = watch::channel(false);
    let pinger = {
        let (client, server) = (client.clone(), two.local_addr());
        tokio::spawn(async move {
            let (mut answered, mut slowest) = (0u64, Duration::ZERO);
            while !*receiving.borrow_and_update() {
                let data = Bytes::from(answered.to_le_bytes().to_vec());
                let ping = RequestPayload::Custom { operation: "ping".into(), data: data.clone() };
                let asked = Instant::now();
                let response = client.request(server, ping, REQUEST_TIMEOUT).await?;
                let echoed = ResponsePayload::CustomResponse { success: true, data };
                anyhow::ensure!(response.payload == echoed, "ping {answered}: {:?}", response.payload);
                (answered, slowest) = (answered + 1, slowest.max(asked.elapsed()));
                tokio::select! {
                    _ = receiving.changed() => {}
                    () = tokio::time::sleep(Duration::from_millis(5)) => {}
                }
            }
            anyhow::Ok((answered, slowest))
        })
    };

    let receiving_started = Instant::now();
    let link = one.connect(two.local_addr()).await?;
    let body = link
        .recv_chunk_verified()
        .await?
        .ok_or_else(|| anyhow::anyhow!("the transport closed before the body came"))?;
    let elapsed = receiving_started.elapsed();
    done.send(true)?;
    let (answered, slowest) = pinger.await??;
    let sent = sender.await??;

    println!(
        "node 1 received {} MiB in {elapsed:.2?} ({:.0} MiB/s)",
        body.len() >> 20,
        body.len() as f64 / (1 << 20) as f64 / elapsed.as_secs_f64()
    );
    println!("meanwhile {answered} pings were answered on the same connection, the slowest in {slowest:.2?}");
    let digest: [u8; 32] = Sha256::digest(&body).into();
    anyhow::ensure!(
        body.len() as u64 == announced.size_bytes && sent == announced.size_bytes,
        "size differs from the manifest"
    );
    anyhow::ensure!(digest == announced.sha256, "SHA-256 differs from the manifest");
    anyhow::ensure!(answered > 0, "no request was answered while the transfer ran");
    println!("the body matches the manifest's size and SHA-256");

    one.close().await;
    two.close().await;
    println!("done in {:.2?}", started.elapsed());
    Ok(())
}
