//! `octopii`: run a node from a TOML file, read and write keys of a running
//! cluster, show its status, or watch a three-node demo in one process.
//!
//! ```text
//! octopii node --config node.toml [--metrics-addr 127.0.0.1:9100]
//! octopii kv --peers 127.0.0.1:5001,127.0.0.1:5002 put KEY VALUE | get KEY | delete KEY
//! octopii cluster --peers 127.0.0.1:5001,127.0.0.1:5002 status
//! octopii demo
//! octopii bench
//! octopii receive --listen 0.0.0.0:5100 --out DIR [--count N]
//! octopii send FILE --to 127.0.0.1:5100
//! ```
//!
//! Clients are nodes of the cluster's TLS world too: with `--cluster-dir`
//! (the directory holding the nodes' data directories, where their
//! development CA lives) the command makes itself a certificate from that
//! CA; with `--tls-ca/--tls-cert/--tls-key` it uses the given files, whose
//! certificate names `node-<client-id>.octopii`. `send` and `receive` prove
//! their identity the same way, so both need certificates of one CA.

mod bench;
mod client;
mod demo;
mod metrics;
mod transfer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use octopii::{Config, OctopiiNode, OctopiiRuntime};

use crate::client::{Client, ClusterArgs, IdentityArgs};

/// Octopii: replicated, crash-safe services on Raft and QUIC.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// Run a node until interrupted (Ctrl-C or SIGTERM).
    Node {
        /// The node's TOML configuration (fields of `octopii::Config`;
        /// `OCTOPII_<FIELD>` variables override it).
        #[arg(long)]
        config: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics.
        #[arg(long)]
        metrics_addr: Option<SocketAddr>,
    },
    /// Write and read keys of a cluster running the key-value state machine.
    Kv {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(subcommand)]
        operation: KvOperation,
    },
    /// Look at a cluster.
    Cluster {
        #[command(flatten)]
        cluster: ClusterArgs,
        #[command(subcommand)]
        operation: ClusterOperation,
    },
    /// The cluster benchmark: three nodes over QUIC with fsync on, durable
    /// writes (8-byte keys, 256-byte values) from 1, 64 and 256 clients,
    /// next to raw fdatasync and loopback round trip; idle node memory.
    /// Run it in a release build.
    Bench {
        /// Multiplies the writes per level (1.0: 3k, 60k, 120k).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// Start three nodes on loopback in this process, run a workload, stop
    /// and restart the leader, and print what happened.
    Demo {
        /// Writes in the workload.
        #[arg(long, default_value_t = 5000)]
        writes: usize,
        /// Concurrent clients.
        #[arg(long, default_value_t = 64)]
        clients: usize,
    },
    /// Send FILE to a node (such as `octopii receive`), or to several at
    /// once, as transfers verified by SHA-256, showing progress on stderr.
    ///
    /// Prints one line to stdout per receiver that has verified the file;
    /// fails if nobody of the cluster answers at an ADDR (then nothing is
    /// sent) or a transfer fails (the others still finish).
    Send {
        /// The file to send (read as it is sent, never held in memory;
        /// hashed once however many receivers).
        file: PathBuf,
        /// A receiver's address; repeat for several.
        #[arg(long, value_name = "ADDR", required = true)]
        to: Vec<SocketAddr>,
        #[command(flatten)]
        identity: IdentityArgs,
    },
    /// Receive transfers and write each verified body to
    /// `DIR/transfer-<k>.bin` (k from 1), showing progress on stderr.
    ///
    /// Prints `listening on ADDR` first, then one line per file written.
    /// Runs until COUNT transfers are written, or until Ctrl-C or SIGTERM.
    /// A body is held in memory until its digest is verified, so bodies
    /// above 1 GiB are refused (`MEMORY_TRANSFER_BYTES_MAX`); it then goes
    /// to a temporary file renamed into place, and an existing file of the
    /// same name is never replaced (the command fails instead).
    Receive {
        /// The address to listen on (port 0 picks a free one).
        #[arg(long, value_name = "ADDR")]
        listen: SocketAddr,
        /// Where the files go (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Stop after this many transfers.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        count: Option<u64>,
        #[command(flatten)]
        identity: IdentityArgs,
    },
}

#[derive(Debug, Subcommand)]
enum KvOperation {
    /// Set KEY to VALUE; returns once a majority holds it durably.
    Put {
        /// The key (no spaces).
        key: String,
        /// The value (no spaces).
        value: String,
    },
    /// Read KEY linearizably (any member answers once it has applied what
    /// the leader had committed).
    Get {
        /// The key.
        key: String,
    },
    /// Remove KEY.
    Delete {
        /// The key.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterOperation {
    /// Each node's view: term, leader, members, commit and applied index,
    /// and the leader's view of each member's progress.
    Status,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Commands::Node { config, metrics_addr } => run_node(config, metrics_addr).await,
        Commands::Kv { cluster, operation } => {
            let client = Client::connect(&cluster).await?;
            let result = match operation {
                KvOperation::Put { key, value } => client.propose(format!("SET {key} {value}")).await,
                KvOperation::Get { key } => client.read(format!("GET {key}")).await,
                KvOperation::Delete { key } => client.propose(format!("DELETE {key}")).await,
            };
            client.close().await;
            println!("{}", String::from_utf8_lossy(&result?));
            Ok(())
        }
        Commands::Cluster { cluster, operation: ClusterOperation::Status } => {
            let client = Client::connect(&cluster).await?;
            let result = client.print_status().await;
            client.close().await;
            result
        }
        Commands::Demo { writes, clients } => demo::run(writes, clients).await,
        Commands::Bench { scale } => bench::run(scale).await,
        Commands::Send { file, mut to, identity } => {
            // A receiver named twice gets the file once.
            let mut seen = std::collections::BTreeSet::new();
            to.retain(|address| seen.insert(*address));
            transfer::send(&file, &to, &identity).await
        }
        Commands::Receive { listen, out, count, identity } => {
            transfer::receive(listen, &out, count, &identity).await
        }
    }
}

async fn run_node(path: PathBuf, metrics_addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let runtime = OctopiiRuntime::from_handle(tokio::runtime::Handle::current());
    let node = Arc::new(OctopiiNode::new(config.clone(), runtime).await?);
    node.start().await?;
    println!("node {} listening on {} (log in {})", node.id(), node.local_addr(), config.wal_dir.display());
    if let Some(address) = metrics_addr {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("metrics address {address}"))?;
        println!("metrics on http://{}/metrics", listener.local_addr()?);
        tokio::spawn(metrics::serve(listener, node.clone()));
    }
    shutdown_signal()?.await;
    println!("node {} stopping", node.id());
    node.shutdown();
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM. The handlers are installed at once, so
/// a signal from then on is caught even before the future is polled.
pub(crate) fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the Ctrl-C handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}
