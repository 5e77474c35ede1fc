//! A client of a running cluster: a transport of its own, node operations
//! over RPC (see `octopii_core::client`), following the leader.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use octopii::rpc::{RequestPayload, ResponsePayload, RpcHandler};
use octopii::transport::QuicTransport;
use octopii_core::NodeStatus;
use octopii_core::client::{ClientOperation, ClientReply};
use octopii_mio::identity::{TlsFiles, load_identity, transport_config};

/// How long one operation keeps trying nodes before it gives up.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(15);
/// How long one node has to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the cluster is and how to prove membership of its TLS world.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Addresses of the cluster's nodes, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    peers: Vec<SocketAddr>,
    #[command(flatten)]
    identity: IdentityArgs,
}

/// How this command proves membership of the cluster's TLS world: a
/// certificate from the development CA, or the operator's files.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// The directory holding the nodes' data directories: its development
    /// CA issues this command's certificate (in a directory removed on
    /// exit).
    #[arg(long, default_value = ".")]
    cluster_dir: PathBuf,
    /// The cluster CA's certificate (production TLS).
    #[arg(long, requires_all = ["tls_cert", "tls_key", "client_id"])]
    tls_ca: Option<PathBuf>,
    /// This command's certificate, for `node-<client-id>.octopii`.
    #[arg(long, requires = "tls_ca")]
    tls_cert: Option<PathBuf>,
    /// This command's private key.
    #[arg(long, requires = "tls_ca")]
    tls_key: Option<PathBuf>,
    /// The id this command's certificate names (random with the development
    /// CA).
    #[arg(long)]
    client_id: Option<u64>,
}

/// Makes or reads this command's identity and opens an endpoint bound to
/// `bind`. Also returns the per-run certificate directory made in the
/// cluster directory (none with TLS files): hand both to
/// [`close_transport`] when done.
///
/// # Errors
///
/// The certificate cannot be made or read, or `bind` cannot be bound.
pub async fn open_transport(
    args: &IdentityArgs,
    bind: SocketAddr,
) -> anyhow::Result<(Arc<QuicTransport>, Option<PathBuf>)> {
    let id = args.client_id.unwrap_or_else(|| rand::random_range(1 << 62..1 << 63));
    let (identity, identity_dir) = match (&args.tls_ca, &args.tls_cert, &args.tls_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
            (load_identity(&args.cluster_dir, id, Some(&files))?, None)
        }
        _ => {
            let dir = args.cluster_dir.join(format!("client-{id}"));
            let identity = load_identity(&dir, id, None)
                .with_context(|| format!("making a client certificate in {}", dir.display()));
            let identity = identity.inspect_err(|_| remove_identity_dir(Some(&dir)))?;
            (identity, Some(dir))
        }
    };
    match QuicTransport::new(bind, transport_config(id, identity)).await {
        Ok(transport) => Ok((Arc::new(transport), identity_dir)),
        Err(error) => {
            remove_identity_dir(identity_dir.as_deref());
            Err(anyhow::Error::new(error).context(format!("opening an endpoint on {bind}")))
        }
    }
}

/// Closes `transport` and removes the per-run certificate directory that
/// [`open_transport`] made, if any.
pub async fn close_transport(transport: &QuicTransport, identity_dir: Option<PathBuf>) {
    transport.close().await;
    remove_identity_dir(identity_dir.as_deref());
}

/// Removes a per-run certificate directory; one already gone is fine.
fn remove_identity_dir(dir: Option<&Path>) {
    if let Some(dir) = dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A connected client.
pub struct Client {
    transport: Arc<QuicTransport>,
    rpc: RpcHandler,
    peers: Vec<SocketAddr>,
    /// The client's own certificate directory, removed on close.
    identity_dir: Option<PathBuf>,
}

impl Client {
    /// Makes or reads the client's identity and opens its endpoint.
    pub async fn connect(args: &ClusterArgs) -> anyhow::Result<Self> {
        let first = *args.peers.first().context("no peer address given")?;
        let (transport, identity_dir) = open_transport(&args.identity, wildcard_like(first)).await?;
        let rpc = RpcHandler::new(transport.clone());
        Ok(Self { transport, rpc, peers: args.peers.clone(), identity_dir })
    }

    /// Replicates `command`; the state machine's answer.
    pub async fn propose(&self, command: String) -> anyhow::Result<Bytes> {
        self.applied(ClientOperation::Propose, command).await
    }

    /// A linearizable read on the leader.
    pub async fn read(&self, query: String) -> anyhow::Result<Bytes> {
        self.applied(ClientOperation::Read, query).await
    }

    async fn applied(&self, operation: ClientOperation, data: String) -> anyhow::Result<Bytes> {
        match self.call(operation, Bytes::from(data)).await? {
            ClientReply::Applied(answer) => Ok(answer),
            ClientReply::Rejected(message) => bail!("the state machine refused: {message}"),
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// Sends `operation` to the nodes in turn, following not-leader
    /// answers to the leader, until one answers or the time is up.
    async fn call(&self, operation: ClientOperation, data: Bytes) -> anyhow::Result<ClientReply> {
        let deadline = Instant::now() + OPERATION_TIMEOUT;
        let mut targets: VecDeque<SocketAddr> = self.peers.iter().copied().collect();
        let mut last_error = String::from("no node tried");
        while Instant::now() < deadline {
            let Some(address) = targets.pop_front() else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                targets.extend(&self.peers);
                continue;
            };
            match self.ask(address, operation, data.clone()).await {
                Ok(ClientReply::NotLeader { address: hint, leader }) => {
                    last_error = format!("{address}: not the leader (leader: {leader:?})");
                    if let Some(hint) = hint {
                        targets.push_front(hint);
                    }
                }
                Ok(ClientReply::Failed(reason)) => last_error = format!("{address}: {reason}"),
                Ok(reply) => return Ok(reply),
                Err(error) => last_error = format!("{address}: {error:#}"),
            }
        }
        bail!("no node completed the operation within {OPERATION_TIMEOUT:?}; last: {last_error}")
    }

    async fn ask(
        &self,
        address: SocketAddr,
        operation: ClientOperation,
        data: Bytes,
    ) -> anyhow::Result<ClientReply> {
        let payload = RequestPayload::Custom { operation: operation.name().to_owned(), data };
        let response = self.rpc.request(address, payload, REQUEST_TIMEOUT).await?;
        match response.payload {
            ResponsePayload::CustomResponse { data, .. } => {
                ClientReply::decode(&data).map_err(|error| anyhow::anyhow!("bad answer: {error}"))
            }
            ResponsePayload::Error { message } => bail!("{message}"),
            other => bail!("unexpected response {other:?}"),
        }
    }

    /// Prints each node's view of the cluster.
    pub async fn print_status(&self) -> anyhow::Result<()> {
        let mut answered = 0;
        for &address in &self.peers {
            match self.ask(address, ClientOperation::Status, Bytes::new()).await {
                Ok(ClientReply::Status(status)) => {
                    answered += 1;
                    print_status(address, &status);
                }
                Ok(other) => println!("{address}: unexpected answer {other:?}"),
                Err(error) => println!("{address}: unreachable: {error:#}"),
            }
        }
        if answered == 0 {
            bail!("no node answered");
        }
        Ok(())
    }

    /// Closes the endpoint and removes the client's certificate directory.
    pub async fn close(self) {
        close_transport(&self.transport, self.identity_dir).await;
    }
}

fn print_status(address: SocketAddr, status: &NodeStatus) {
    let role = if status.leader == Some(status.id) { "leader" } else { "follower" };
    println!(
        "node {} at {address}: {role}, term {}, leader {}, commit {}, applied {}, voters {:?}, learners {:?}",
        status.id,
        status.term,
        status.leader.map_or("none".to_owned(), |leader| leader.to_string()),
        status.commit,
        status.applied,
        status.voters,
        status.learners,
    );
    for (peer, progress) in &status.progress {
        println!("  peer {peer}: matched {}, next {}", progress.matched, progress.next);
    }
}

/// The unspecified address of `target`'s family, port 0: where a client
/// of `target` binds.
pub fn wildcard_like(target: SocketAddr) -> SocketAddr {
    match target {
        SocketAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    }
}
