//! The spec's `WriteAheadLog` on tokio: one task owns the kernel, a thread
//! does the disk work, and any number of tasks append concurrently.

use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use octopii_core::disk::DiskCompletion;
use octopii_core::wal::{RecoveryReport, WalConfig, WalEntry, WalStats};
use octopii_core::{Command, Kernel, KernelConfig, Reply};
use octopii_mio::disk::{DiskThread, FileDisk};
use octopii_mio::driver::Driver;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{OctopiiError, Result};

type Request = (Command, oneshot::Sender<Reply>);

/// A write-ahead log in a directory.
///
/// Appends from many tasks share one group commit: whatever arrives while a
/// sync is in flight leaves as the next batch, one write and one sync. Every
/// method returns once its answer is durable. Share it with an `Arc`.
#[derive(Debug)]
pub struct WriteAheadLog {
    requests: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
    recovery: RecoveryReport,
}

impl WriteAheadLog {
    /// Opens (recovering) or creates the log in directory `path`, with at
    /// most `batch_size` records per batch; `flush_interval` is how long a
    /// sync may take before it is logged as slow (batches never wait).
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Config`] for a zero batch size or interval,
    /// [`OctopiiError::Io`] if the directory cannot be created or is in use
    /// by another open log, [`OctopiiError::Wal`] if recovery fails (for
    /// example on corruption of committed data).
    pub async fn new(path: PathBuf, batch_size: usize, flush_interval: Duration) -> Result<Self> {
        let config = WalConfig { batch_records_max: batch_size, flush_interval, ..WalConfig::default() };
        Self::with_config(path, config).await
    }

    /// Like [`WriteAheadLog::new`] with every tuning knob.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::new`].
    pub async fn with_config(path: PathBuf, config: WalConfig) -> Result<Self> {
        let kernel = Kernel::new(KernelConfig { wal: config })?;
        let disk = tokio::task::spawn_blocking(move || FileDisk::open(&path))
            .await
            .map_err(|_| OctopiiError::Shutdown)??;
        let (completions, completion_queue) = mpsc::unbounded_channel();
        let disk = DiskThread::spawn(disk, move |burst| completions.send(burst).is_ok())?;
        let (requests, request_queue) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(Driver::new(kernel, disk), request_queue, completion_queue));
        let mut wal = Self { requests, task, recovery: RecoveryReport::default() };
        let Reply::Opened(report) = wal.call(Command::Open).await? else {
            unreachable!("open answers Opened")
        };
        wal.recovery = report?;
        Ok(wal)
    }

    /// What recovery found when the log was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Appends `data` and returns its offset once it is durable. Offsets
    /// increase, also across reopen.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Wal`] if the entry is too large or the write or sync
    /// failed; after a failure every call fails until the log is reopened.
    pub async fn append(&self, data: Bytes) -> Result<u64> {
        let Reply::Appended(result) = self.call(Command::Append(data)).await? else { unreachable!() };
        Ok(result?)
    }

    /// Returns once everything appended before the call is durable.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::append`].
    pub async fn flush(&self) -> Result<()> {
        let Reply::Flushed(result) = self.call(Command::Flush).await? else { unreachable!() };
        Ok(result?)
    }

    /// Every durable entry's payload, oldest first.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Wal`] if a read fails or meets corruption.
    pub async fn read_all(&self) -> Result<Vec<Bytes>> {
        Ok(self.entries().await?.into_iter().map(|entry| entry.payload).collect())
    }

    /// Every durable entry with its offset, oldest first.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::read_all`].
    pub async fn entries(&self) -> Result<Vec<WalEntry>> {
        let Reply::Entries(result) = self.call(Command::ReadAll).await? else { unreachable!() };
        Ok(result?)
    }

    /// Discards every entry at offset `from` or later, durably.
    ///
    /// # Errors
    ///
    /// As [`WriteAheadLog::append`], or if `from` is past the end.
    pub async fn truncate_from(&self, from: u64) -> Result<()> {
        let Reply::Truncated(result) = self.call(Command::TruncateFrom(from)).await? else { unreachable!() };
        Ok(result.map(|_| ())?)
    }

    /// Removes the segment files that hold only entries below `offset`,
    /// returning how many were removed.
    ///
    /// # Errors
    ///
    /// [`OctopiiError::Wal`] if a removal failed.
    pub async fn remove_before(&self, offset: u64) -> Result<usize> {
        let Reply::Removed(result) = self.call(Command::RemoveBefore(offset)).await? else { unreachable!() };
        Ok(result?)
    }

    /// Counters since the log was opened: batches (one write and one sync
    /// each), records and bytes written.
    ///
    /// # Errors
    ///
    /// Only if the log has shut down.
    pub async fn stats(&self) -> Result<WalStats> {
        let Reply::Stats(stats) = self.call(Command::Stats).await? else { unreachable!() };
        Ok(stats)
    }

    /// Stops the log and waits until its files and directory lock are
    /// released, so the directory can be opened again at once. Dropping the
    /// log also stops it, without waiting.
    pub async fn close(self) {
        let Self { requests, task, .. } = self;
        drop(requests);
        let _ = task.await;
    }

    async fn call(&self, command: Command) -> Result<Reply> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((command, reply)).map_err(|_| OctopiiError::Shutdown)?;
        answer.await.map_err(|_| OctopiiError::Shutdown)
    }
}

/// What woke the loop.
enum Wake {
    Request(Option<Request>),
    Disk(Option<Vec<DiskCompletion>>),
    Timer,
}

async fn run(
    mut driver: Driver,
    mut requests: mpsc::UnboundedReceiver<Request>,
    mut completions: mpsc::UnboundedReceiver<Vec<DiskCompletion>>,
) {
    loop {
        let deadline = driver.next_timeout();
        let wake = tokio::select! {
            request = requests.recv() => Wake::Request(request),
            burst = completions.recv() => Wake::Disk(burst),
            () = sleep_until(deadline) => Wake::Timer,
        };
        let now = Instant::now().into_std();
        let feed = |driver: &mut Driver, (command, reply): Request| {
            let sink = Box::new(move |answer| {
                let _ = reply.send(answer);
            });
            driver.command(now, command, sink);
        };
        // Commands first: appends that arrived while a sync was running must
        // reach the kernel before that sync's completion, so that they leave
        // together as the next batch.
        let mut woken_by_disk = None;
        match wake {
            Wake::Request(None) => break,
            Wake::Disk(None) => {
                tracing::error!("the disk thread has stopped; closing the wal");
                break;
            }
            Wake::Request(Some(request)) => feed(&mut driver, request),
            Wake::Disk(Some(burst)) => woken_by_disk = Some(burst),
            Wake::Timer => {}
        }
        while let Ok(request) = requests.try_recv() {
            feed(&mut driver, request);
        }
        if let Some(burst) = woken_by_disk {
            driver.disk_done(now, burst);
        }
        while let Ok(burst) = completions.try_recv() {
            driver.disk_done(now, burst);
        }
        driver.timeout(now);
    }
    // Joining the disk thread waits for an fsync in progress: keep it off
    // the async threads.
    let _ = tokio::task::spawn_blocking(move || driver.close()).await;
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
