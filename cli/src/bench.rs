//! The cluster benchmark: three nodes on loopback over QUIC with fsync on,
//! durable writes of 8-byte keys (10,000 per level) and 256-byte values from 1, 64 and 256
//! concurrent clients, next to what the machine itself gives (one write and
//! fdatasync of the same size on the same filesystem; the same started on
//! three files at once, until two are done, as a commit waits for; one UDP
//! round trip on loopback) and the resident memory of an idle node process. Run it in a
//! release build: `cargo run --release -p octopii-cli --bin octopii -- bench`.

use std::io::Write;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::demo;

/// Value size of every write.
const VALUE_BYTES: usize = 256;
/// Samples of the raw fdatasync and round trip.
const RAW_SAMPLES: usize = 500;

/// Runs the benchmark; `scale` multiplies the number of writes per level.
pub async fn run(scale: f64) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    println!("machine: {} cores; data in {}", std::thread::available_parallelism()?, root.path().display());

    let fsync = synced_writes(root.path(), 1)?;
    let round_trip = median(udp_round_trip()?);
    println!(
        "raw write + fdatasync ({VALUE_BYTES} B): p50 {fsync:?}; UDP loopback round trip: p50 {round_trip:?}"
    );
    // Each write is synced by all three nodes at about the same time, on
    // one disk here, and commits once two of them are done: the cluster's
    // floor even if its software took no time at all.
    let majority = synced_writes(root.path(), 3)?;
    println!("3 raw writes + fdatasyncs started at once, on 3 files: 2 of 3 done after p50 {majority:?}");
    let configs = demo::configs(root.path())?;
    let mut nodes = Vec::new();
    for config in &configs {
        nodes.push(Some(Arc::new(demo::open(config).await?)));
    }
    demo::wait_for_leader(&nodes).await?;
    let value = "x".repeat(VALUE_BYTES);
    println!("{:>8} {:>10} {:>12} {:>12} {:>12}", "clients", "writes", "writes/s", "p50", "p99");
    let mut single_p50 = Duration::ZERO;
    for (level, (clients, writes)) in [(1, 3_000), (64, 60_000), (256, 120_000)].into_iter().enumerate() {
        let writes = ((writes as f64 * scale) as usize).max(clients);
        let prefix = ["p", "q", "r"][level];
        let started = Instant::now();
        let mut latencies = demo::workload(&nodes, writes, clients, prefix, &value).await?;
        let elapsed = started.elapsed();
        latencies.sort_unstable();
        let (p50, p99) = (percentile(&latencies, 50), percentile(&latencies, 99));
        if clients == 1 {
            single_p50 = p50;
        }
        let rate = writes as f64 / elapsed.as_secs_f64();
        println!(
            "{clients:>8} {writes:>10} {rate:>12.0} {:>12} {:>12}",
            format!("{p50:.2?}"),
            format!("{p99:.2?}")
        );
    }
    let ratio = |floor: Duration| single_p50.as_secs_f64() / floor.as_secs_f64();
    let floor = fsync + round_trip;
    println!(
        "1-client p50 / (fdatasync p50 + round trip p50) = {:.2} ({single_p50:.2?} / {floor:.2?})",
        ratio(floor)
    );
    let shared = majority + round_trip;
    println!(
        "1-client p50 / (2 of 3 fdatasyncs at once p50 + round trip p50) = {:.2} ({single_p50:.2?} / {shared:.2?})",
        ratio(shared)
    );
    println!(
        "floor with no software cost: (2 of 3 fdatasyncs at once + round trip) / (fdatasync + round trip) = {:.2}",
        shared.as_secs_f64() / floor.as_secs_f64()
    );
    for node in nodes.into_iter().flatten() {
        node.shutdown();
    }
    match idle_node_rss(root.path()) {
        Ok(kib) => {
            println!("idle node process (one node, its own process): VmRSS {:.1} MiB", kib as f64 / 1024.0)
        }
        Err(error) => println!("idle node RSS not measured: {error:#}"),
    }
    Ok(())
}

fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    sorted[(sorted.len() * percent / 100).min(sorted.len() - 1)]
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    percentile(&samples, 50)
}

/// Writes a record of a write's size and syncs it, as a log does, from
/// `files` threads started together, each on its own file (as the nodes
/// of a cluster on one disk do). Per round, the time from the first start
/// until a majority of the threads are done; the median of the rounds.
fn synced_writes(dir: &Path, files: usize) -> anyhow::Result<Duration> {
    let barrier = Arc::new(std::sync::Barrier::new(files));
    let threads: Vec<_> = (0..files)
        .map(|index| {
            let (dir, barrier) = (dir.join(format!("sync-{files}-{index}")), barrier.clone());
            std::thread::spawn(move || {
                std::fs::create_dir_all(&dir)?;
                // Every thread runs all its rounds, so none waits forever
                // at the barrier for one that failed.
                let mut rounds = Vec::with_capacity(RAW_SAMPLES);
                let file = std::fs::File::create(dir.join("fdatasync.bench"))?;
                let record = vec![7u8; VALUE_BYTES + 64];
                // Allocated and synced first, as the log's segments are:
                // each sync then carries data only.
                file.set_len((RAW_SAMPLES * record.len()) as u64)?;
                file.sync_all()?;
                for index in 0..RAW_SAMPLES {
                    barrier.wait();
                    let started = Instant::now();
                    file.write_all_at(&record, (index * record.len()) as u64)?;
                    file.sync_data()?;
                    rounds.push((started, Instant::now()));
                }
                anyhow::Ok(rounds)
            })
        })
        .collect();
    let mut per_thread = Vec::new();
    for thread in threads {
        per_thread.push(thread.join().map_err(|_| anyhow::anyhow!("a sync thread panicked"))??);
    }
    let rounds = (0..RAW_SAMPLES).map(|round| {
        let started = per_thread.iter().map(|rounds| rounds[round].0).min().expect("one thread at least");
        let mut done: Vec<Instant> = per_thread.iter().map(|rounds| rounds[round].1).collect();
        done.sort_unstable();
        done[files / 2] - started
    });
    Ok(median(rounds.collect()))
}

/// One datagram there and back between two loopback sockets.
fn udp_round_trip() -> anyhow::Result<Vec<Duration>> {
    let (a, b) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    a.connect(b.local_addr()?)?;
    b.connect(a.local_addr()?)?;
    let echo = std::thread::spawn(move || {
        let mut buffer = [0; 512];
        for _ in 0..RAW_SAMPLES {
            let Ok(len) = b.recv(&mut buffer) else { return };
            let _ = b.send(&buffer[..len]);
        }
    });
    let mut buffer = [0; 512];
    let payload = [1u8; VALUE_BYTES];
    let mut samples = Vec::with_capacity(RAW_SAMPLES);
    for _ in 0..RAW_SAMPLES {
        let started = Instant::now();
        a.send(&payload)?;
        a.recv(&mut buffer)?;
        samples.push(started.elapsed());
    }
    let _ = echo.join();
    Ok(samples)
}

/// Starts `octopii node` (this binary) as a cluster of one, lets it settle
/// and reads its resident memory.
fn idle_node_rss(root: &Path) -> anyhow::Result<u64> {
    let dir = root.join("idle");
    std::fs::create_dir_all(&dir)?;
    let config = dir.join("node.toml");
    let mut file = std::fs::File::create(&config)?;
    writeln!(
        file,
        "node_id = 1\nbind_addr = \"127.0.0.1:0\"\nwal_dir = \"{}\"",
        dir.join("node-1").display()
    )?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["node", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .spawn()
        .context("starting a node process")?;
    std::thread::sleep(Duration::from_secs(3));
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
    let _ = child.kill();
    let _ = child.wait();
    let status = status.context("reading /proc/<pid>/status")?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).context("no VmRSS line")?;
    line.split_whitespace().nth(1).context("no VmRSS value")?.parse().context("VmRSS value")
}
