//! The write-ahead log end to end: append from many tasks at once, close,
//! reopen, and read everything back.
//!
//! Run with `cargo run --release --example wal`. Pass a directory to keep the
//! log between runs (`cargo run --release --example wal -- ./my-wal`): each
//! run appends more and shows that the earlier entries are still there.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use octopii::WriteAheadLog;

const TASKS: u64 = 64;
const APPENDS_PER_TASK: u64 = 100;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir()?;
    let dir = std::env::args().nth(1).map_or_else(|| scratch.path().join("wal"), PathBuf::from);

    let wal = Arc::new(WriteAheadLog::new(dir.clone(), 100, Duration::from_millis(100)).await?);
    let before = wal.read_all().await?.len();
    println!("opened {} with {before} entries ({:?})", dir.display(), wal.recovery());

    let started = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let wal = Arc::clone(&wal);
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for index in 0..APPENDS_PER_TASK {
                last = wal.append(Bytes::from(format!("task {task} entry {index}"))).await?;
            }
            Ok::<u64, octopii::OctopiiError>(last)
        }));
    }
    let mut highest = 0;
    for task in tasks {
        highest = highest.max(task.await??);
    }
    let elapsed = started.elapsed();
    let stats = wal.stats().await?;
    let appended = TASKS * APPENDS_PER_TASK;
    println!(
        "{appended} durable appends from {TASKS} tasks in {elapsed:.2?} ({:.0}/s), {} fsyncs, {:.1} records per batch, highest offset {highest}",
        appended as f64 / elapsed.as_secs_f64(),
        stats.batches,
        stats.records as f64 / stats.batches.max(1) as f64,
    );

    Arc::into_inner(wal).expect("all tasks finished").close().await;
    let wal = WriteAheadLog::new(dir, 100, Duration::from_millis(100)).await?;
    let entries = wal.read_all().await?;
    println!("reopened: {} entries, the last is {:?}", entries.len(), entries.last());
    assert_eq!(entries.len() as u64, before as u64 + appended, "every acknowledged append is back");
    Ok(())
}
