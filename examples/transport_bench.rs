//! Transport benchmark: how close Octopii's QUIC transport comes to the
//! machine's own limits, measured in one run on loopback (127.0.0.1).
//!
//! - SHA-256, one core: the `sha2` crate hashing a 256 MiB buffer in 64 KiB
//!   updates. A Shipping Lane transfer is verified end to end by SHA-256
//!   (the sender hashes what it reads, the receiver what arrives), so this is
//!   the ceiling of a verified transfer on one core.
//! - quinn bulk: the `quinn` crate (tokio, rustls with ring, a self-signed
//!   ECDSA certificate) sending `--bytes` from memory on one unidirectional
//!   stream; the server reads to the end. This is what QUIC itself reaches
//!   here, with quinn's own UDP I/O (GSO and GRO where the kernel has them).
//!   It runs twice: with quinn's default transport settings (datagrams up
//!   to 1452 bytes), and with MTU discovery bounded like the nodes'
//!   (`--mtu-max`, at most 6550 for quinn: see `QUINN_MTU_MAX`).
//! - Shipping Lane: `octopii_mio::Node`s with mutual TLS; node 1 sends a file
//!   of `--bytes` with `Command::SendChunkToMany`, to one peer and then to
//!   two peers at once (the aggregate). The receivers drain the deliveries
//!   without hashing again (the core already verifies the digest). Each
//!   node is its own single-voter cluster, so no Raft traffic crosses.
//! - RPC: `Command::Request` echoes from node 1 to node 2 with 1 and with 64
//!   requests outstanding, round trips per second and latency.
//!
//! The Shipping Lane figures are printed as ratios to quinn's and to
//! SHA-256's rate from the same run, and as CPU seconds per GiB (the whole
//! process, both ends) beside quinn's: machines are noisy, and the CPU cost
//! per byte moves least when other processes share the cores. Repeat a run
//! before trusting a single figure. While it measures, it prints each
//! connection's QUIC figures (packets sent and lost, congestion window,
//! round-trip time) and how busy each node's loop thread was: a transfer
//! cannot go faster than its busiest loop. Run with `cargo run --release -p
//! octopii-examples --example transport_bench` (options: `-- --bytes
//! 268435456 --duration 5 --rpc-bytes 64 --dir PATH`, and `--skip-sha`,
//! `--skip-quinn`, `--skip-lane`, `--skip-rpc`). It prints figures and
//! asserts nothing about speed.

use std::collections::BTreeMap;
use std::error::Error;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use octopii_core::raft::NodeConfig;
use octopii_core::raft::state_machine::KvStateMachine;
use octopii_core::transport::chunk::ChunkSource;
use octopii_core::transport::rpc::{RequestHandler, RequestPayload, ResponsePayload};
use octopii_core::transport::tls::DevCa;
use octopii_core::transport::{LinkStats, PeerStatus, TransportConfig};
use octopii_core::{Command, KernelConfig, Reply};
use octopii_mio::driver::Delivery;
use octopii_mio::{Node, NodeOptions};
use sha2::{Digest, Sha256};

const MIB: f64 = 1024.0 * 1024.0;
const SHA_BUFFER_BYTES: usize = 256 * 1024 * 1024;
const SHA_UPDATE_BYTES: usize = 64 * 1024;
/// Bytes per write to quinn's stream, as Octopii writes its pieces.
const QUINN_WRITE_BYTES: usize = 64 * 1024;
const RPC_OUTSTANDING: [usize; 2] = [1, 64];
const RPC_WARMUP_REQUESTS: usize = 1000;
/// Longest wait for anything (a delivery, a reply) before the run fails.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const LATENCY_US_MAX: u64 = 60_000_000;
const NODE_IDS: [u64; 3] = [1, 2, 3];
/// The largest MTU bound quinn can use: it sends up to 10 datagrams in one
/// GSO system call and does not cap their total, so with larger ones the
/// kernel refuses the send (over one UDP payload, 65,507 bytes), the
/// datagrams are lost, and quinn's MTU discovery falls back to 1200.
const QUINN_MTU_MAX: u16 = 6550;

/// Measures Octopii's transport against quinn and SHA-256 on loopback.
#[derive(Parser)]
struct Args {
    /// Bytes per bulk transfer (quinn's, and each Shipping Lane transfer).
    #[arg(long, default_value_t = 1 << 30)]
    bytes: u64,
    /// Seconds per RPC point.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Bytes of each RPC request's payload (echoed back).
    #[arg(long, default_value_t = 64)]
    rpc_bytes: usize,
    /// Directory in which the temporary directory (the file to send, the
    /// nodes' logs) is created. Default: the system's temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Skip the SHA-256 baseline.
    #[arg(long)]
    skip_sha: bool,
    /// Skip quinn's bulk transfer.
    #[arg(long)]
    skip_quinn: bool,
    /// Skip the Shipping Lane transfers.
    #[arg(long)]
    skip_lane: bool,
    /// Skip the RPC round trips.
    #[arg(long)]
    skip_rpc: bool,
    /// The nodes' MTU discovery bound (`TransportConfig::mtu_max`); quinn
    /// runs once at its own default (1452) and once with this bound.
    #[arg(long, default_value_t = 8952)]
    mtu_max: u16,
}

/// One transfer row: bytes moved in a time, and the CPU time the whole
/// process spent meanwhile (every thread: both ends of the transfer).
struct Transfer {
    label: String,
    bytes: u64,
    elapsed: Duration,
    cpu: Option<Duration>,
}

impl Transfer {
    fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / MIB / self.elapsed.as_secs_f64()
    }

    /// CPU seconds per GiB moved: unlike MiB/s, it does not depend on how
    /// much of the machine other processes take.
    fn cpu_seconds_per_gib(&self) -> Option<f64> {
        self.cpu.map(|cpu| cpu.as_secs_f64() / (self.bytes as f64 / (1024.0 * MIB)))
    }
}

/// The CPU time (user and system) this process has used so far, from
/// `/proc/self/stat`; `None` where there is no such file. Linux counts it in
/// clock ticks of 10 ms (`USER_HZ` is 100 on every Linux architecture but
/// alpha and ia64).
fn process_cpu() -> Option<Duration> {
    const TICK: Duration = Duration::from_millis(10);
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it are plain. utime
    // and stime are fields 14 and 15, counted from 1 at the process id.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let user: u32 = fields.next()?.parse().ok()?;
    let system: u32 = fields.next()?.parse().ok()?;
    Some(TICK * user + TICK * system)
}

/// The CPU time (user and system) of each of this process's threads whose
/// name starts with `prefix`, by name, from `/proc/self/task`; empty where
/// there is no such directory.
fn thread_cpu(prefix: &str) -> BTreeMap<String, Duration> {
    const TICK: Duration = Duration::from_millis(10);
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return threads };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let Some((head, tail)) = stat.rsplit_once(')') else { continue };
        let Some((_, name)) = head.split_once('(') else { continue };
        if !name.starts_with(prefix) {
            continue;
        }
        let mut fields = tail.split_whitespace().skip(11);
        let (Some(Ok(user)), Some(Ok(system))) =
            (fields.next().map(str::parse::<u32>), fields.next().map(str::parse::<u32>))
        else {
            continue;
        };
        *threads.entry(name.to_owned()).or_default() += TICK * user + TICK * system;
    }
    threads
}

/// CPU time used since `before`, if both readings exist.
fn cpu_since(before: Option<Duration>) -> Option<Duration> {
    Some(process_cpu()?.saturating_sub(before?))
}

struct RpcRow {
    outstanding: usize,
    round_trips_per_second: f64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    cpu_us_per_round_trip: Option<f64>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let rpc_duration = Duration::try_from_secs_f64(args.duration)?;
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let cpus = std::thread::available_parallelism().map_or_else(|_| "? CPUs".into(), |n| format!("{n} CPUs"));
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|load| {
            load.split_whitespace().next().map(|one_minute| format!(", load average {one_minute}"))
        })
        .unwrap_or_default();
    println!(
        "transport_bench: {cpus}{load}, {} MiB per transfer, loopback 127.0.0.1, dir {}",
        args.bytes as f64 / MIB,
        scratch.path().display()
    );

    let sha = (!args.skip_sha).then(measure_sha256);
    if let Some(sha) = &sha {
        println!("  measured {}", sha.label);
    }
    let mut quinn_rows = Vec::new();
    if !args.skip_quinn {
        quinn_rows.push(measure_quinn(args.bytes, None)?);
        quinn_rows.push(measure_quinn(args.bytes, Some(args.mtu_max.min(QUINN_MTU_MAX)))?);
    }
    for row in &quinn_rows {
        println!("  measured {}", row.label);
    }

    let mut lanes = Vec::new();
    let mut rpc_rows = Vec::new();
    if !(args.skip_lane && args.skip_rpc) {
        let cluster = Cluster::start(scratch.path(), args.mtu_max)?;
        if !args.skip_lane {
            let path = scratch.path().join("payload.bin");
            write_payload(&path, args.bytes)?;
            for (label, peers) in
                [("Shipping Lane, 1 -> 2", &[2][..]), ("Shipping Lane, 1 -> 2 and 3 (sum)", &[2, 3][..])]
            {
                lanes.push(cluster.ship(label, &path, args.bytes, peers)?);
                println!("  measured {label}");
            }
            std::fs::remove_file(&path)?;
        }
        if !args.skip_rpc {
            let payload = Bytes::from(vec![0x5A; args.rpc_bytes]);
            for outstanding in RPC_OUTSTANDING {
                rpc_rows.push(cluster.round_trips(outstanding, rpc_duration, &payload)?);
                println!("  measured RPC with {outstanding} outstanding");
            }
        }
        cluster.shutdown();
    }
    print_report(&args, sha.as_ref(), &quinn_rows, &lanes, &rpc_rows);
    Ok(())
}

fn measure_sha256() -> Transfer {
    let buffer: Vec<u8> = (0..SHA_BUFFER_BYTES).map(|index| (index * 7 + index / 4096) as u8).collect();
    let cpu = process_cpu();
    let started = Instant::now();
    let mut hasher = Sha256::new();
    for update in buffer.chunks(SHA_UPDATE_BYTES) {
        hasher.update(update);
    }
    std::hint::black_box(hasher.finalize());
    Transfer {
        label: "SHA-256, one core (sha2, 64 KiB updates)".to_owned(),
        bytes: buffer.len() as u64,
        elapsed: started.elapsed(),
        cpu: cpu_since(cpu),
    }
}

/// quinn's bulk transfer: a client and a server endpoint in one process on
/// a two-thread tokio runtime, with quinn's default transport settings or
/// with MTU discovery bounded by `mtu_max`. The clock starts once the
/// connection is up and stops when the server has read the end of the
/// stream.
fn measure_quinn(bytes: u64, mtu_max: Option<u16>) -> Result<Transfer, Box<dyn Error>> {
    let mut transport = quinn::TransportConfig::default();
    if let Some(bound) = mtu_max {
        let mut discovery = quinn::MtuDiscoveryConfig::default();
        discovery.upper_bound(bound);
        transport.mtu_discovery_config(Some(discovery));
    }
    let transport = Arc::new(transport);
    // What each endpoint accepts caps what its peer's discovery may use.
    let mut endpoint_config = quinn::EndpointConfig::default();
    if let Some(bound) = mtu_max {
        endpoint_config.max_udp_payload_size(bound)?;
    }
    let label = match mtu_max {
        None => "quinn bulk, 1 uni stream".to_owned(),
        Some(bound) => format!("quinn bulk, MTU bound {bound}"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let (elapsed, cpu) = runtime.block_on(async move {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let certificate = certified.cert.der().clone();
        let key = rustls::pki_types::PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());

        let server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(vec![certificate.clone()], key.into())?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(
            quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
        ));
        server_config.transport_config(transport.clone());
        let runtime = quinn::default_runtime().ok_or("no async runtime for quinn")?;
        let server = quinn::Endpoint::new(
            endpoint_config.clone(),
            Some(server_config),
            std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
            runtime.clone(),
        )?;
        let server_addr = server.local_addr()?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate)?;
        let client_tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut client_config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
        ));
        client_config.transport_config(transport);
        let mut client = quinn::Endpoint::new(
            endpoint_config,
            None,
            std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?,
            runtime,
        )?;
        client.set_default_client_config(client_config);

        let receiver = tokio::spawn(async move {
            let connection = server.accept().await.ok_or("the server endpoint closed")?.await?;
            let mut stream = connection.accept_uni().await?;
            let mut received = 0u64;
            while let Some(chunk) = stream.read_chunk(usize::MAX, true).await? {
                received += chunk.bytes.len() as u64;
            }
            let finished = Instant::now();
            connection.close(0u32.into(), b"done");
            server.wait_idle().await;
            Ok::<_, Box<dyn Error + Send + Sync>>((received, finished))
        });

        let connection = client.connect(server_addr, "localhost")?.await?;
        let block: Vec<u8> = (0..QUINN_WRITE_BYTES).map(|index| (index * 31) as u8).collect();
        let cpu = process_cpu();
        let started = Instant::now();
        let mut stream = connection.open_uni().await?;
        let mut left = bytes;
        while left > 0 {
            let take = left.min(QUINN_WRITE_BYTES as u64) as usize;
            stream.write_all(&block[..take]).await?;
            left -= take as u64;
        }
        stream.finish()?;
        let (received, finished) = receiver.await?.map_err(|error| error.to_string())?;
        let cpu = cpu_since(cpu);
        if received != bytes {
            return Err(format!("quinn's server read {received} of {bytes} bytes").into());
        }
        let stats = connection.stats();
        println!(
            "    quinn: {} packets sent, {} lost, MTU {}, congestion window {} KiB, rtt {:?}",
            stats.path.sent_packets,
            stats.path.lost_packets,
            stats.path.current_mtu,
            stats.path.cwnd / 1024,
            stats.path.rtt,
        );
        client.wait_idle().await;
        Ok::<_, Box<dyn Error>>((finished - started, cpu))
    })?;
    Ok(Transfer { label, bytes, elapsed, cpu })
}

/// Writes `size` bytes of a varied pattern, then syncs them, so the transfer
/// reads from the page cache and not a half-written file.
fn write_payload(path: &Path, size: u64) -> std::io::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0u64;
    for index in 0.. {
        if written == size {
            break;
        }
        for (offset, byte) in block.iter_mut().enumerate() {
            *byte = (index * 31 + offset * 7) as u8;
        }
        let take = (size - written).min(block.len() as u64) as usize;
        file.write_all(&block[..take])?;
        written += take as u64;
    }
    file.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()
}

/// Three nodes on the blocking loop, each its own single-voter cluster (so
/// only the benchmark's traffic crosses), every one knowing the others'
/// addresses and answering RPC requests with their own payload.
struct Cluster {
    nodes: BTreeMap<u64, Node>,
}

impl Cluster {
    fn start(root: &Path, mtu_max: u16) -> Result<Self, Box<dyn Error>> {
        let ca = DevCa::from_seed([3; 32])?;
        let mut nodes = BTreeMap::new();
        for id in NODE_IDS {
            let identity = ca.identity(id, [id as u8; 32])?;
            let crypto = Arc::new(rustls::crypto::ring::default_provider());
            let time = Arc::new(rustls::time_provider::DefaultTimeProvider);
            let mut transport = TransportConfig::new(id, identity, crypto, time, [id as u8; 32]);
            transport.mtu_max = mtu_max;
            let node = NodeConfig { id, voters: vec![id], seed: id, ..NodeConfig::default() };
            let options = NodeOptions {
                data_dir: root.join(format!("node-{id}")),
                bind_addr: (Ipv4Addr::LOCALHOST, 0).into(),
                kernel: KernelConfig::default(),
                node,
                transport,
                state_machine: Arc::new(KvStateMachine::default()),
            };
            std::fs::create_dir_all(&options.data_dir)?;
            let node = Node::start(options)?;
            node.set_request_handler(RequestHandler::new(|request| match request.payload {
                RequestPayload::Custom { data, .. } => {
                    ResponsePayload::CustomResponse { success: true, data }
                }
                _ => ResponsePayload::Error { message: "the benchmark only echoes".into() },
            }))?;
            nodes.insert(id, node);
        }
        let addresses: Vec<(u64, SocketAddr)> =
            nodes.values().map(|node| (node.id(), node.local_addr())).collect();
        for node in nodes.values() {
            for &(peer, address) in addresses.iter().filter(|&&(peer, _)| peer != node.id()) {
                let reply = node.call(Command::UpdatePeerAddr { node: peer, address })?;
                if reply != Reply::Sent(Ok(())) {
                    return Err(
                        format!("node {} cannot learn node {peer}'s address: {reply:?}", node.id()).into()
                    );
                }
            }
        }
        let cluster = Self { nodes };
        // Connections are made on first use: one echo to each peer keeps
        // the handshakes out of the measurements.
        for peer in [2, 3] {
            cluster.echo(1, peer, Bytes::from_static(b"warm up"))?;
        }
        Ok(cluster)
    }

    fn echo(&self, from: u64, to: u64, data: Bytes) -> Result<(), Box<dyn Error>> {
        let payload = RequestPayload::Custom { operation: "echo".into(), data };
        let reply = self.nodes[&from].call(Command::Request { to, payload, timeout: STALL_TIMEOUT })?;
        check_echo(&reply)
    }

    /// Sends the file at `path` from node 1 to every one of `peers` at once;
    /// the clock stops when node 1 has every receiver's verdict.
    fn ship(
        &self,
        label: &'static str,
        path: &Path,
        size: u64,
        peers: &[u64],
    ) -> Result<Transfer, Box<dyn Error>> {
        std::thread::scope(|scope| {
            let receivers: Vec<_> =
                peers.iter().map(|&peer| scope.spawn(move || self.receive(peer, size))).collect();
            let links_before = self.links(peers)?;
            let threads_before = thread_cpu("octopii-node");
            let cpu = process_cpu();
            let started = Instant::now();
            let (reply, answer) = mpsc::sync_channel(1);
            let command = Command::SendChunkToMany {
                to: peers.to_vec(),
                source: ChunkSource::File(path.to_path_buf()),
            };
            self.nodes[&1].submit(command, Box::new(move |result| drop(reply.send(result))))?;
            let Reply::ChunksSent(outcomes) = answer.recv_timeout(STALL_TIMEOUT * peers.len() as u32)? else {
                return Err("node 1 answered with another reply".into());
            };
            for (peer, outcome) in outcomes {
                match outcome {
                    Ok(report) if report.bytes == size => {}
                    other => return Err(format!("transfer to node {peer} failed: {other:?}").into()),
                }
            }
            let elapsed = started.elapsed();
            let cpu = cpu_since(cpu);
            // Which end is busiest: a node's loop is one thread, and a
            // transfer cannot go faster than its busiest loop.
            let busy: Vec<String> = thread_cpu("octopii-node")
                .into_iter()
                .map(|(name, after)| {
                    let spent = after.saturating_sub(threads_before.get(&name).copied().unwrap_or_default());
                    format!("{name} {:.0}%", 100.0 * spent.as_secs_f64() / elapsed.as_secs_f64())
                })
                .collect();
            println!("    loop threads busy: {}", busy.join(", "));
            for receiver in receivers {
                receiver.join().map_err(|_| "a receiver panicked")??;
            }
            for ((peer, before), (_, after)) in links_before.into_iter().zip(self.links(peers)?) {
                println!(
                    "    node 1 -> {peer}: {} packets sent, {} lost, MTU {}, congestion window {} KiB, rtt {:?}",
                    after.sent_packets - before.sent_packets,
                    after.lost_packets - before.lost_packets,
                    after.mtu,
                    after.congestion_window / 1024,
                    after.rtt,
                );
            }
            Ok(Transfer { label: label.to_owned(), bytes: size * peers.len() as u64, elapsed, cpu })
        })
    }

    /// QUIC's figures for node 1's connection to each of `peers`.
    fn links(&self, peers: &[u64]) -> Result<Vec<(u64, LinkStats)>, Box<dyn Error>> {
        peers
            .iter()
            .map(|&peer| match self.nodes[&1].call(Command::PeerStatus(peer))? {
                Reply::Peer(Some(PeerStatus { link: Some(link), .. })) => Ok((peer, link)),
                other => Err(format!("node 1 has no connection to node {peer}: {other:?}").into()),
            })
            .collect()
    }

    /// Drains one transfer's deliveries at `peer`, counting the body.
    fn receive(&self, peer: u64, size: u64) -> Result<(), String> {
        let node = &self.nodes[&peer];
        let mut received = 0u64;
        loop {
            match node.recv_delivery(STALL_TIMEOUT).ok_or_else(|| format!("node {peer}: transfer stalled"))? {
                Delivery::ChunkIncoming { from: 1, size: announced, .. } if announced == size => {}
                Delivery::ChunkData { data, .. } => received += data.len() as u64,
                Delivery::ChunkReceived { result: Ok(verified), .. }
                    if verified == size && received == size =>
                {
                    return Ok(());
                }
                other => return Err(format!("node {peer}: unexpected {other:?} after {received} bytes")),
            }
        }
    }

    /// Echo requests from node 1 to node 2, `outstanding` at a time, for
    /// `duration`; each request's latency runs from its submission to its
    /// reply on node 1's loop.
    fn round_trips(
        &self,
        outstanding: usize,
        duration: Duration,
        data: &Bytes,
    ) -> Result<RpcRow, Box<dyn Error>> {
        for _ in 0..RPC_WARMUP_REQUESTS / outstanding {
            self.echo(1, 2, data.clone())?;
        }
        let (done, completions) = mpsc::channel::<(Duration, Reply)>();
        let submit = || {
            let done = done.clone();
            let payload = RequestPayload::Custom { operation: "echo".into(), data: data.clone() };
            let sent = Instant::now();
            self.nodes[&1].submit(
                Command::Request { to: 2, payload, timeout: STALL_TIMEOUT },
                Box::new(move |reply| drop(done.send((sent.elapsed(), reply)))),
            )
        };
        let mut latencies = Histogram::<u64>::new_with_bounds(1, LATENCY_US_MAX, 3)?;
        let cpu = process_cpu();
        let started = Instant::now();
        let deadline = started + duration;
        for _ in 0..outstanding {
            submit()?;
        }
        let mut in_flight = outstanding;
        while in_flight > 0 {
            let (latency, reply) = completions.recv_timeout(STALL_TIMEOUT)?;
            check_echo(&reply)?;
            latencies.saturating_record(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX));
            if Instant::now() < deadline {
                submit()?;
            } else {
                in_flight -= 1;
            }
        }
        let elapsed = started.elapsed();
        let cpu = cpu_since(cpu);
        Ok(RpcRow {
            outstanding,
            round_trips_per_second: latencies.len() as f64 / elapsed.as_secs_f64(),
            p50_us: latencies.value_at_quantile(0.5),
            p99_us: latencies.value_at_quantile(0.99),
            max_us: latencies.max(),
            cpu_us_per_round_trip: cpu.map(|cpu| cpu.as_secs_f64() * 1e6 / latencies.len() as f64),
        })
    }

    fn shutdown(self) {
        for node in self.nodes.into_values() {
            node.shutdown();
        }
    }
}

fn check_echo(reply: &Reply) -> Result<(), Box<dyn Error>> {
    match reply {
        Reply::Response(Ok(response))
            if matches!(response.payload, ResponsePayload::CustomResponse { success: true, .. }) =>
        {
            Ok(())
        }
        other => Err(format!("echo failed: {other:?}").into()),
    }
}

fn print_report(
    args: &Args,
    sha: Option<&Transfer>,
    quinn_rows: &[Transfer],
    lanes: &[Transfer],
    rpc_rows: &[RpcRow],
) {
    let ratio = |value: Option<f64>, baseline: Option<f64>| match (value, baseline) {
        (Some(value), Some(baseline)) => format!("{:.2}", value / baseline),
        _ => "-".into(),
    };
    let optional = |value: Option<f64>| value.map_or_else(|| "-".into(), |value| format!("{value:.2}"));
    // The baseline: quinn with its own defaults.
    let quinn = quinn_rows.first();
    let rate = |row: Option<&Transfer>| row.map(Transfer::mib_per_second);
    let cost = |row: Option<&Transfer>| row.and_then(Transfer::cpu_seconds_per_gib);
    println!();
    println!(
        "Throughput ({} MiB per transfer; the two-peer row sums both transfers)",
        args.bytes as f64 / MIB
    );
    println!(
        "{:<42} {:>8} {:>8} {:>8} {:>10} {:>10} {:>12}",
        "what", "seconds", "MiB/s", "÷ quinn", "÷ SHA-256", "CPU s/GiB", "CPU ÷ quinn"
    );
    for row in sha.into_iter().chain(quinn_rows).chain(lanes) {
        println!(
            "{:<42} {:>8.2} {:>8.0} {:>8} {:>10} {:>10} {:>12}",
            row.label,
            row.elapsed.as_secs_f64(),
            row.mib_per_second(),
            ratio(Some(row.mib_per_second()), rate(quinn)),
            ratio(Some(row.mib_per_second()), rate(sha)),
            optional(row.cpu_seconds_per_gib()),
            ratio(row.cpu_seconds_per_gib(), cost(quinn)),
        );
    }
    if !rpc_rows.is_empty() {
        println!();
        println!(
            "RPC: Command::Request echo of {} bytes, node 1 -> node 2, {:.1} s per row",
            args.rpc_bytes, args.duration
        );
        println!(
            "{:>11} {:>14} {:>9} {:>9} {:>9} {:>11}",
            "outstanding", "round trips/s", "p50 µs", "p99 µs", "max µs", "CPU µs/rt"
        );
        for row in rpc_rows {
            println!(
                "{:>11} {:>14.0} {:>9} {:>9} {:>9} {:>11}",
                row.outstanding,
                row.round_trips_per_second,
                row.p50_us,
                row.p99_us,
                row.max_us,
                row.cpu_us_per_round_trip.map_or_else(|| "-".into(), |cpu| format!("{cpu:.1}"))
            );
        }
    }
    println!();
    println!("÷ quinn: MiB/s ÷ quinn's bulk MiB/s at its defaults in this run (the issue's target for the");
    println!("Shipping Lane: >= 1.0). The row with quinn's MTU bound raised shows QUIC itself at larger");
    println!("datagrams, as the nodes use (mtu_max; --mtu-max), with no hashing.");
    println!("÷ SHA-256: MiB/s ÷ one core's SHA-256 MiB/s; a verified transfer hashes every byte twice");
    println!("(the sender what it reads, once for all its peers; each receiver what arrives).");
    println!("CPU s/GiB: CPU time of the whole process (both ends, every thread) per GiB moved, from");
    println!("/proc/self/stat in 10 ms ticks; it moves less than MiB/s when other processes load the");
    println!("machine. CPU ÷ quinn: that cost ÷ quinn's (above 1: more work per byte than quinn).");
    println!("CPU µs/rt: the same CPU time per RPC round trip (both nodes and the caller).");
    println!("quinn sends from memory with its own UDP I/O (GSO/GRO); the Shipping Lane reads a file");
    println!("(page cache), hashes it, and waits for the receiver's verdict before the clock stops.");
    println!("Each point is one run; background load moves them, so repeat a run before trusting a figure.");
}
