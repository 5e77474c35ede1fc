//! WAL benchmark: how close `octopii::WriteAheadLog` comes to the disk's own
//! limit, measured in one run on one filesystem.
//!
//! - Raw baseline (the machine's limit): one file opened for append, a loop of
//!   `write_all` of `batch` records of `size` bytes, then `sync_data`
//!   (fdatasync).
//! - WAL: N tokio tasks (2 worker threads), each appending in a closed loop
//!   (it awaits every append), on a fresh log per row.
//!
//! Then it prints the WAL's figures as fractions of the raw ones. Run with
//! `cargo run --release --example wal_bench` (options: `-- --seconds 2 --dir
//! PATH`; the log files go to a temporary directory inside PATH, default the
//! current directory). It prints figures and asserts nothing about speed.
//!
//! Why two ratios: closed-loop appenders split into two halves that take
//! turns. The appenders acknowledged by sync k append again while sync k+1
//! is in flight, so they leave together in sync k+2, and a batch holds about
//! N/2 records, not N. "Same batch" compares the WAL with the raw loop at the
//! batch the WAL achieved (the cost of the WAL's own machinery); "raw at N"
//! compares it with all N records in one sync (what a group commit that
//! waited for every appender could reach, at the price of latency).

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use octopii::{OctopiiError, WalConfig, WriteAheadLog};

const RECORD_SIZES_BYTES: [usize; 3] = [128, 4 * 1024, 64 * 1024];
const WAL_BATCH_RECORDS_MAX: usize = 256;
const WAL_FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const LATENCY_US_MAX: u64 = 60_000_000;
const MIB: f64 = 1024.0 * 1024.0;

/// Measures the WAL against a raw write + fdatasync loop on the same filesystem.
#[derive(Parser)]
struct Args {
    /// Seconds per measured point.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Directory in which the temporary benchmark directory is created.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
}

/// Throughput and latency of one measured point.
#[derive(Clone, Copy)]
struct Figures {
    records_per_second: f64,
    mib_per_second: f64,
    p50_us: u64,
    p99_us: u64,
}

impl Figures {
    fn new(records: u64, size: usize, elapsed: Duration, latencies: &Histogram<u64>) -> Self {
        let seconds = elapsed.as_secs_f64();
        Self {
            records_per_second: records as f64 / seconds,
            mib_per_second: records as f64 * size as f64 / MIB / seconds,
            p50_us: latencies.value_at_quantile(0.5),
            p99_us: latencies.value_at_quantile(0.99),
        }
    }
}

struct WalRow {
    size: usize,
    appenders: usize,
    figures: Figures,
    records_per_batch: f64,
    fsyncs_per_second: f64,
}

impl WalRow {
    /// The batch size the raw loop is run at for the "same batch" ratio.
    fn achieved_batch(&self) -> usize {
        (self.records_per_batch.round() as usize).max(1)
    }
}

/// 64 KiB records stop at 16 appenders: 256 of them would be 16 MiB per batch.
fn appender_counts(size: usize) -> &'static [usize] {
    if size >= 64 * 1024 { &[1, 16] } else { &[1, 16, 256] }
}

fn main() -> Result<(), Box<dyn Error>> {
    let args = Args::parse();
    let duration = Duration::try_from_secs_f64(args.seconds)?;
    let scratch = tempfile::tempdir_in(&args.dir)?;
    let root = scratch.path().canonicalize()?;
    let cpus = std::thread::available_parallelism().map_or_else(|_| "? CPUs".into(), |n| format!("{n} CPUs"));
    let filesystem = filesystem(&root).map(|fs| format!(" ({fs})")).unwrap_or_default();
    println!("wal_bench: {cpus}, dir {}{filesystem}, {:.1} s per point", root.display(), args.seconds);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut wal_rows = Vec::new();
    let mut raw = BTreeMap::new();
    for size in RECORD_SIZES_BYTES {
        for &appenders in appender_counts(size) {
            let dir = root.join(format!("wal-{size}-{appenders}"));
            wal_rows.push(runtime.block_on(measure_wal(&dir, size, appenders, duration))?);
            std::fs::remove_dir_all(&dir)?;
        }
        // The raw points of a record size run right after its WAL rows, so
        // both see about the same background load.
        let mut batches = BTreeSet::from([1]);
        for row in wal_rows.iter().filter(|row| row.size == size) {
            batches.extend([row.appenders, row.achieved_batch()]);
        }
        for batch in batches {
            let path = root.join(format!("raw-{size}-{batch}"));
            raw.insert((size, batch), measure_raw(&path, size, batch, duration)?);
        }
    }
    print_report(&wal_rows, &raw);
    Ok(())
}

async fn measure_wal(
    dir: &Path,
    size: usize,
    appenders: usize,
    duration: Duration,
) -> Result<WalRow, Box<dyn Error>> {
    let config = WalConfig {
        batch_records_max: WAL_BATCH_RECORDS_MAX,
        flush_interval: WAL_FLUSH_INTERVAL,
        ..WalConfig::default()
    };
    let wal = Arc::new(WriteAheadLog::with_config(dir.to_path_buf(), config).await?);
    let payload = Bytes::from(vec![0xA5; size]);
    let before = wal.stats().await?;
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..appenders)
        .map(|_| {
            let wal = Arc::clone(&wal);
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut latencies = latency_histogram();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    wal.append(payload.clone()).await?;
                    latencies.saturating_record(micros(sent.elapsed()));
                }
                Ok::<_, OctopiiError>(latencies)
            })
        })
        .collect();
    let mut latencies = latency_histogram();
    for task in tasks {
        latencies.add(task.await??)?;
    }
    let elapsed = started.elapsed();
    let after = wal.stats().await?;
    Arc::into_inner(wal).expect("every appender task has finished").close().await;
    let batches = after.batches - before.batches;
    let records = after.records - before.records;
    Ok(WalRow {
        size,
        appenders,
        figures: Figures::new(latencies.len(), size, elapsed, &latencies),
        records_per_batch: records as f64 / batches.max(1) as f64,
        fsyncs_per_second: batches as f64 / elapsed.as_secs_f64(),
    })
}

fn measure_raw(path: &Path, size: usize, batch: usize, duration: Duration) -> std::io::Result<Figures> {
    let mut file = OpenOptions::new().create_new(true).append(true).open(path)?;
    let records = vec![0xA5; size * batch];
    let mut latencies = latency_histogram();
    let started = Instant::now();
    while started.elapsed() < duration {
        let sent = Instant::now();
        file.write_all(&records)?;
        file.sync_data()?;
        latencies.saturating_record(micros(sent.elapsed()));
    }
    let elapsed = started.elapsed();
    drop(file);
    std::fs::remove_file(path)?;
    Ok(Figures::new(latencies.len() * batch as u64, size, elapsed, &latencies))
}

fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant bounds are valid")
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// The filesystem holding `dir`: the longest mount point in /proc/mounts
/// that contains it (the last one listed wins when mounts are stacked).
fn filesystem(dir: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let (device, mount_point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            Some((device, PathBuf::from(mount_point.replace("\\040", " ")), kind))
        })
        .filter(|(_, mount_point, _)| dir.starts_with(mount_point))
        .max_by_key(|(_, mount_point, _)| mount_point.as_os_str().len())
        .map(|(device, mount_point, kind)| format!("{kind} on {device} at {}", mount_point.display()))
}

fn size_label(size: usize) -> String {
    if size >= 1024 { format!("{} KiB", size / 1024) } else { format!("{size} B") }
}

fn print_report(wal_rows: &[WalRow], raw: &BTreeMap<(usize, usize), Figures>) {
    println!();
    println!(
        "WAL: octopii::WriteAheadLog, batch_records_max {WAL_BATCH_RECORDS_MAX}, flush interval {} ms, \
         default segment size, N closed-loop appenders",
        WAL_FLUSH_INTERVAL.as_millis()
    );
    println!(
        "{:>7} {:>4} {:>10} {:>8} {:>8} {:>8} {:>9} {:>9}",
        "record", "N", "appends/s", "MiB/s", "p50 µs", "p99 µs", "rec/batch", "fsyncs/s"
    );
    for row in wal_rows {
        let figures = row.figures;
        println!(
            "{:>7} {:>4} {:>10.0} {:>8.1} {:>8} {:>8} {:>9.1} {:>9.0}",
            size_label(row.size),
            row.appenders,
            figures.records_per_second,
            figures.mib_per_second,
            figures.p50_us,
            figures.p99_us,
            row.records_per_batch,
            row.fsyncs_per_second
        );
    }

    println!();
    println!("Raw: write_all(batch records) + fdatasync per iteration, one file opened for append");
    println!(
        "{:>7} {:>5} {:>10} {:>8} {:>8} {:>8}",
        "record", "batch", "records/s", "MiB/s", "p50 µs", "p99 µs"
    );
    for (&(size, batch), figures) in raw {
        println!(
            "{:>7} {:>5} {:>10.0} {:>8.1} {:>8} {:>8}",
            size_label(size),
            batch,
            figures.records_per_second,
            figures.mib_per_second,
            figures.p50_us,
            figures.p99_us
        );
    }

    println!();
    println!("WAL ÷ raw at the same record size");
    println!(
        "{:>7} {:>4} {:>5} {:>10} {:>8} {:>14} {:>15}",
        "record", "N", "batch", "same batch", "raw at N", "p50 ÷ raw p50", "MiB/s ÷ best"
    );
    for row in wal_rows {
        let raw_at = |batch: usize| raw[&(row.size, batch)];
        let ratio = |raw: Figures| row.figures.records_per_second / raw.records_per_second;
        let latency = if row.appenders == 1 {
            format!("{:.2}", row.figures.p50_us as f64 / raw_at(1).p50_us.max(1) as f64)
        } else {
            "-".into()
        };
        let bandwidth = if row.size >= 64 * 1024 {
            let best = raw.range((row.size, 0)..=(row.size, usize::MAX)).map(|(_, raw)| raw.mib_per_second);
            format!("{:.2}", row.figures.mib_per_second / best.fold(f64::MIN_POSITIVE, f64::max))
        } else {
            "-".into()
        };
        println!(
            "{:>7} {:>4} {:>5} {:>10.2} {:>8.2} {:>14} {:>15}",
            size_label(row.size),
            row.appenders,
            row.achieved_batch(),
            ratio(raw_at(row.achieved_batch())),
            ratio(raw_at(row.appenders)),
            latency,
            bandwidth
        );
    }

    println!();
    println!("batch: the WAL's records per batch (records ÷ batches from stats()), rounded.");
    println!("same batch: WAL appends/s ÷ raw records/s at that batch, i.e. the cost of the WAL itself.");
    println!("raw at N: WAL appends/s ÷ raw records/s with all N records in one sync.");
    println!("Closed-loop appenders split into two halves that take turns: those acknowledged by");
    println!("sync k append again while sync k+1 is in flight and leave together in sync k+2, so");
    println!("a batch holds about N/2 records and \"raw at N\" is a ceiling only a group commit");
    println!("that waited for every appender (adding latency) could reach.");
    println!("p50 ÷ raw p50 (N = 1): WAL append latency ÷ one write + fdatasync of one record.");
    println!("MiB/s ÷ best (64 KiB): WAL MiB/s ÷ the best raw MiB/s at 64 KiB in this run (at equal");
    println!("record size the MiB/s ratio to one raw point equals its records/s ratio).");
    println!("Each point is one short run; background load moves them (a ratio above 1 is noise),");
    println!("so repeat a run before trusting a single figure.");
}
